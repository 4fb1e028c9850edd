"""FLModel: what the Client API and the workflows exchange, with NVFlare's fields.

Kept free of imports from the rest of flare: serialization registers its decomposer, not the other way round.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class ParamsType(str, Enum):
    """Whether ``params`` holds the whole model or a difference to the global one."""

    FULL = "FULL"
    DIFF = "DIFF"


def _check_count(name: str, value: Any) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")


class FLModel:
    """Model parameters and what travels with them.

    Parameters
    ----------
    params_type
        ``ParamsType`` or its value; defaults to FULL when ``params`` is given.
    params
        The model parameters (for example a dict of arrays); required when ``params_type`` is FULL or DIFF.
    optimizer_params
        Optimizer state, when it has to travel.
    metrics
        A dict of evaluation results.
    start_round, current_round, total_rounds
        Round numbers: non-negative ints or None.
    meta
        A dict of anything else; empty by default.
    """

    def __init__(
        self,
        params_type: ParamsType | str | None = None,
        params: Any = None,
        optimizer_params: Any = None,
        metrics: dict | None = None,
        start_round: int | None = 0,
        current_round: int | None = None,
        total_rounds: int | None = None,
        meta: dict | None = None,
    ):
        if params_type is None:
            if params is not None:
                params_type = ParamsType.FULL
        else:
            params_type = ParamsType(params_type)
            if params is None:
                raise ValueError(f"params must be given when params_type is {params_type.value}")
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"metrics must be a dict, got {type(metrics).__name__}")
        if meta is not None and not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        for name, value in (("start_round", start_round), ("current_round", current_round),
                            ("total_rounds", total_rounds)):
            _check_count(name, value)
        self.params_type = params_type
        self.params = params
        self.optimizer_params = optimizer_params
        self.metrics = metrics
        self.start_round = start_round
        self.current_round = current_round
        self.total_rounds = total_rounds
        self.meta = {} if meta is None else meta

    def summary(self) -> dict:
        """Sizes and round numbers, for logs: never the parameters themselves."""
        result: dict[str, Any] = {}
        for key in ("params", "optimizer_params", "metrics", "meta"):
            value = getattr(self, key)
            if value:
                result[key] = len(value) if isinstance(value, dict) else type(value)
        for key in ("params_type", "start_round", "current_round", "total_rounds"):
            value = getattr(self, key)
            if value:
                result[key] = value
        return result

    def __repr__(self) -> str:
        return f"FLModel({self.summary()})"


__all__ = ["FLModel", "ParamsType"]
