"""The Client API: what a training script calls to take part in a federated job (``import flare.client as flare``).

Call order::

    flare.init()
    while flare.is_running():           # fetches the next task; False once the job has ended
        model = flare.receive()         # the task's model, params in the script's format
        ...                             # train and/or evaluate
        flare.send(flare.FLModel(...))  # the result of this task, exactly once

State lives in an ``APIContext``, one per task exchange (the runtime binds one per client site), so that two sites
running the same script in two threads of one process do not share a task. Every function finds the context of the
calling thread's exchange, or takes one explicitly as ``ctx``.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from enum import Enum
from typing import Any

from flare.apis.analytix import AnalyticsDataType
from flare.apis.fl_constant import FLMetaKey, TransferType
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.client.converter import ParamsConverter, params_diff
from flare.client.exchange import TaskAssignment, TaskExchange, find_exchange
from flare.errors import JobError

logger = logging.getLogger(__name__)


class ClientAPIError(JobError, RuntimeError):
    """A Client API call that cannot be served: no running job, or a call out of order. Also a ``RuntimeError``,
    which is what NVFlare raises for these."""


def _no_job(call: str) -> ClientAPIError:
    return ClientAPIError(f"flare.{call}() found no running job: run this script through a recipe or job (for "
                          "example FedAvgRecipe(train_script=...) executed in a SimEnv), not on its own")


class APIContext:
    """The Client API state of one job in one process: the task being worked on and how params are converted.

    Created by ``flare.init()``; holds its exchange weakly, so a finished job's context goes with its exchange.
    """

    def __init__(self, exchange: TaskExchange, rank: str):
        self.rank = rank
        self.config = exchange.config
        self.site_name = exchange.site_name
        self.job_id = exchange.job_id
        self._exchange_ref = weakref.ref(exchange)
        self._converter = ParamsConverter(self.config.server_expected_format, self.config.params_exchange_format)
        self._task: TaskAssignment | None = None  # received, its result not sent yet
        self._last_answered: str | None = None  # "'name' (task id)", for the error of a second send
        self.task_name: str | None = None  # of the last task received
        self._diff_base: dict | None = None  # the received params, kept only for transfer type DIFF
        self._job_ended = False
        self._sends = 0
        self.held_metrics: dict | None = None  # from @flare.evaluate during a train task, sent with its result

    @property
    def exchange(self) -> TaskExchange:
        exchange = self._exchange_ref()
        if exchange is None:
            raise ClientAPIError(f"the job {self.job_id} of this Client API context has ended")
        return exchange

    def receive(self, timeout: float | None = None) -> FLModel | None:
        if self._task is not None:
            return self._task.model
        if self._job_ended:
            return None
        task = self.exchange.fetch_task(timeout)
        if task is None:
            self._job_ended = True
            logger.info("%s: the job %s has ended", self.site_name, self.job_id)
            return None
        model = task.model
        model.params = self._converter.to_script(model.params)
        model.meta.setdefault(FLMetaKey.JOB_ID, self.job_id)
        model.meta.setdefault(FLMetaKey.SITE_NAME, self.site_name)
        diff_wanted = self.config.transfer_type == TransferType.DIFF and isinstance(model.params, dict)
        self._diff_base = dict(model.params) if diff_wanted else None
        self._task = task
        self.task_name = task.name
        return model

    def send(self, model: FLModel, clear_cache: bool = True) -> None:
        if not isinstance(model, FLModel):
            raise TypeError(f"flare.send() expects an FLModel, got {type(model).__name__}")
        task = self._check_sendable(model)
        result = self._to_server(model)
        self.exchange.submit_result(task, result)
        self._task = None
        self._last_answered = f"'{task.name}' ({task.task_id})"
        self._diff_base = None
        if clear_cache:
            for sent_or_received in (model, task.model):
                sent_or_received.params = None
                sent_or_received.optimizer_params = None
        self._sends += 1
        self._maybe_cleanup_memory()

    def is_running(self) -> bool:
        return self._task is not None or self.receive() is not None

    def log(self, key: str, value: Any, data_type: AnalyticsDataType | str, **kwargs: Any) -> None:
        self.require_rank_zero("log")
        plain_kwargs = {name: arg.value if isinstance(arg, Enum) else arg for name, arg in kwargs.items()}
        self.exchange.log(key, value, AnalyticsDataType(data_type).value, **plain_kwargs)

    def clear(self) -> None:
        """Forgets the received model: the next ``receive()`` fetches the next task, leaving this one unanswered."""
        self._task = None
        self._diff_base = None
        self.held_metrics = None

    def _check_sendable(self, model: FLModel) -> TaskAssignment:
        if self._task is None:
            if self._job_ended:
                raise ClientAPIError("flare.send(): the job has ended, so there is no task to send a result for")
            if self._last_answered is not None:
                raise ClientAPIError(f"flare.send() was already called for task {self._last_answered}: call "
                                     "flare.receive() for the next task first")
            raise ClientAPIError("flare.send() was called before flare.receive(): call flare.receive() first and "
                                 "send the result of the task it returns")
        if model.params is None and model.metrics is None:
            raise ClientAPIError("flare.send(): the model has neither params nor metrics, so there is nothing to send")
        return self._task

    def _to_server(self, model: FLModel) -> FLModel:
        """The result as the server expects it: DIFF when configured, then converted to the server's format."""
        params, params_type = model.params, model.params_type
        if self._diff_base is not None and params is not None and params_type in (None, ParamsType.FULL):
            try:
                params = params_diff(params, self._diff_base)
            except (KeyError, TypeError, RuntimeError, ValueError) as e:
                raise ClientAPIError(f"flare.send(): computing the DIFF to the received model failed: {e}") from e
            params_type = ParamsType.DIFF
        return FLModel(
            params_type=params_type,
            params=self._converter.to_server(params),
            optimizer_params=model.optimizer_params,
            metrics=model.metrics,
            start_round=model.start_round,
            current_round=model.current_round,
            total_rounds=model.total_rounds,
            meta=model.meta,
        )

    def _maybe_cleanup_memory(self) -> None:
        every = self.config.memory_gc_rounds
        if every > 0 and self._sends % every == 0:
            from flare.memory import cleanup

            cleanup(cuda_empty_cache=self.config.cuda_empty_cache)

    def require_rank_zero(self, call: str) -> None:
        if self.rank != "0":
            raise ClientAPIError(f"only rank 0 can call flare.{call}(), this process is rank {self.rank}")


_contexts_lock = threading.Lock()
_contexts: dict[int, APIContext] = {}  # by id of the exchange; an entry leaves when its exchange is collected


def _context_of(exchange: TaskExchange) -> APIContext | None:
    with _contexts_lock:
        ctx = _contexts.get(id(exchange))
    return ctx if ctx is not None and ctx._exchange_ref() is exchange else None


def _forget(key: int, ctx: APIContext) -> None:
    with _contexts_lock:
        if _contexts.get(key) is ctx:
            del _contexts[key]


def init(rank: str | int | None = None, config_file: str | None = None) -> APIContext:
    """Joins the running job: finds the task exchange the runtime provides to this thread or process.

    Parameters
    ----------
    rank
        The local rank of this process when the script runs several (multi-GPU); default: env ``RANK``, else "0".
        Task queries and ``log`` are for rank 0 only.
    config_file
        Accepted for NVFlare compatibility: the runtime hands the configuration over with the job, so there is no
        file to read.

    Calling it again in the same job returns the same context. Raises ``ClientAPIError`` (a ``RuntimeError``) when
    the script was not started by a job.
    """
    exchange = find_exchange()
    if exchange is None:
        raise _no_job("init")
    rank = os.environ.get("RANK", "0") if rank is None else str(rank)
    with _contexts_lock:
        ctx = _contexts.get(id(exchange))
        if ctx is None or ctx._exchange_ref() is not exchange:
            ctx = APIContext(exchange, rank)
            _contexts[id(exchange)] = ctx
            weakref.finalize(exchange, _forget, id(exchange), ctx)
    return ctx


def get_context(ctx: APIContext | None = None, call: str = "get_context") -> APIContext:
    """``ctx`` if given, else the context ``flare.init()`` made for this thread's job."""
    if ctx is not None:
        return ctx
    exchange = find_exchange()
    if exchange is None:
        raise _no_job(call)
    found = _context_of(exchange)
    if found is None:
        raise ClientAPIError(f"flare.{call}() was called before flare.init(): call flare.init() first")
    return found


def receive(timeout: float | None = None, ctx: APIContext | None = None) -> FLModel | None:
    """The model of the current task, fetching the next task when the last one was answered; the same model until
    ``send()``. None once the job has ended. Raises ``FlareTimeoutError`` when ``timeout`` seconds pass first."""
    return get_context(ctx, "receive").receive(timeout)


def send(model: FLModel, clear_cache: bool = True, ctx: APIContext | None = None) -> None:
    """Sends ``model`` as the result of the current task, once per task.

    With transfer type DIFF, FULL params are sent as their difference to the received ones. With ``clear_cache``,
    the params and optimizer params of ``model`` and of the received model are dropped once handed over, so their
    memory can go.
    """
    get_context(ctx, "send").send(model, clear_cache)


def system_info(ctx: APIContext | None = None) -> dict:
    """``{"job_id": ..., "site_name": ...}``."""
    local = get_context(ctx, "system_info")
    return {FLMetaKey.JOB_ID: local.job_id, FLMetaKey.SITE_NAME: local.site_name}


def get_config(ctx: APIContext | None = None) -> dict:
    """The Client API configuration, laid out as NVFlare's (``TASK_EXCHANGE`` section and job keys)."""
    local = get_context(ctx, "get_config")
    config = local.config
    return {
        **config.extra,
        "TASK_EXCHANGE": {
            "exchange_format": config.params_exchange_format,
            "server_expected_format": config.server_expected_format,
            "transfer_type": config.transfer_type,
            "train_with_eval": config.train_with_eval,
            "train_task_name": config.train_task_name,
            "eval_task_name": config.eval_task_name,
            "submit_model_task_name": config.submit_model_task_name,
            "memory_gc_rounds": config.memory_gc_rounds,
            "cuda_empty_cache": config.cuda_empty_cache,
        },
        "TASK_NAME": local.task_name,
        "SITE_NAME": local.site_name,
        "JOB_ID": local.job_id,
    }


def get_job_id(ctx: APIContext | None = None) -> str:
    return get_context(ctx, "get_job_id").job_id


def get_site_name(ctx: APIContext | None = None) -> str:
    return get_context(ctx, "get_site_name").site_name


def get_task_name(ctx: APIContext | None = None) -> str | None:
    """The name of the last task received (None before the first); rank 0 only."""
    local = get_context(ctx, "get_task_name")
    local.require_rank_zero("get_task_name")
    return local.task_name


def is_running(ctx: APIContext | None = None) -> bool:
    """True while there is a task to work on: waits for the next one when the last was answered; False once the job
    has ended."""
    return get_context(ctx, "is_running").is_running()


def _is_task(configured_name: str, call: str, ctx: APIContext | None) -> bool:
    local = get_context(ctx, call)
    local.require_rank_zero(call)
    return local.task_name == getattr(local.config, configured_name)


def is_train(ctx: APIContext | None = None) -> bool:
    """Whether the current task is the configured train task; rank 0 only."""
    return _is_task("train_task_name", "is_train", ctx)


def is_evaluate(ctx: APIContext | None = None) -> bool:
    """Whether the current task is the configured evaluate task; rank 0 only."""
    return _is_task("eval_task_name", "is_evaluate", ctx)


def is_submit_model(ctx: APIContext | None = None) -> bool:
    """Whether the current task is the configured submit-model task; rank 0 only."""
    return _is_task("submit_model_task_name", "is_submit_model", ctx)


def log(key: str, value: Any, data_type: AnalyticsDataType | str, ctx: APIContext | None = None,
        **kwargs: Any) -> None:
    """Records a tracking value (what ``SummaryWriter`` calls); rank 0 only. ``kwargs`` travel with it."""
    get_context(ctx, "log").log(key, value, data_type, **kwargs)


def clear(ctx: APIContext | None = None) -> None:
    """Forgets the received model, so the next ``receive()`` fetches the next task."""
    get_context(ctx, "clear").clear()


def shutdown(ctx: APIContext | None = None) -> None:
    """Ends this script's part in the job: closes the exchange and forgets the context."""
    local = get_context(ctx, "shutdown")
    exchange = local._exchange_ref()
    if exchange is not None:
        _forget(id(exchange), local)
        exchange.close()


__all__ = [
    "APIContext",
    "ClientAPIError",
    "clear",
    "get_config",
    "get_context",
    "get_job_id",
    "get_site_name",
    "get_task_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "log",
    "receive",
    "send",
    "shutdown",
    "system_info",
]
