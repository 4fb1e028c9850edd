"""``@flare.train`` and ``@flare.evaluate``: the receive/send loop body wrapped around a function, as in NVFlare.

The received model is passed as the decorated function's first argument; the wrapper's own arguments follow it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.client.api import ClientAPIError, get_context


def train(_func: Callable | None = None, **_options: Any) -> Callable:
    """Receives the task's model, calls the function with it and sends the ``FLModel`` it returns.

    Metrics an ``@flare.evaluate`` function produced for the same train task are sent with the result. Returns
    None without calling the function once the job has ended.
    """

    def decorator(train_fn: Callable) -> Callable:
        @functools.wraps(train_fn)
        def wrapper(*args: Any, **kwargs: Any) -> FLModel | None:
            ctx = get_context(call="train")
            input_model = ctx.receive()
            if input_model is None:
                return None
            result = train_fn(input_model, *args, **kwargs)
            if not isinstance(result, FLModel):
                raise ClientAPIError(f"the function decorated with @flare.train must return an FLModel, got "
                                     f"{type(result).__name__}")
            if ctx.held_metrics is not None:
                result.metrics = ctx.held_metrics
                ctx.held_metrics = None
            ctx.send(result)
            return result

        return wrapper

    return decorator if _func is None else decorator(_func)


def evaluate(_func: Callable | None = None, **_options: Any) -> Callable:
    """Receives the task's model and calls the function with it; it returns a dict of metrics. On a train task the
    metrics are held and sent with the ``@flare.train`` result (so evaluate runs first); on any other task they
    are sent as the result."""

    def decorator(eval_fn: Callable) -> Callable:
        @functools.wraps(eval_fn)
        def wrapper(*args: Any, **kwargs: Any) -> dict | None:
            ctx = get_context(call="evaluate")
            input_model = ctx.receive()
            if input_model is None:
                return None
            metrics = eval_fn(input_model, *args, **kwargs)
            if not isinstance(metrics, dict):
                raise ClientAPIError(f"the function decorated with @flare.evaluate must return a dict of metrics, "
                                     f"got {type(metrics).__name__}")
            if ctx.task_name == ctx.config.train_task_name:
                ctx.held_metrics = metrics
            else:
                ctx.send(FLModel(metrics=metrics))
            return metrics

        return wrapper

    return decorator if _func is None else decorator(_func)


__all__ = ["evaluate", "train"]
