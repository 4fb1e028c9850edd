"""Early-stopping conditions such as ``"accuracy >= 80"``: a metric name, a comparison and a number, as NVFlare's
``stop_cond`` strings, parsed once, when the workflow is built, so that a typo fails the job before any round; and
``MetricTracker``, which follows a metric's best value for model selection and patience."""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flare.errors import ConfigError

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
# the two-character operators come first so that ">=" is not read as ">" followed by "=80"
_PATTERN = re.compile(r"^\s*([^\s<>=]+)\s*(>=|<=|==|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class StopCondition:
    """``<metric> <op> <target>``; ``holds(metrics)`` tells whether the metrics meet it."""

    metric: str
    op: str
    target: float

    def holds(self, metrics: Mapping[str, Any] | None) -> bool:
        """True when ``metrics`` has the metric and it compares true with the target."""
        value = as_finite((metrics or {}).get(self.metric))
        return value is not None and _OPERATORS[self.op](value, self.target)

    @property
    def mode(self) -> str | None:
        """"max" when the condition asks for a high value, "min" for a low one, None for ``==``."""
        if self.op in (">", ">="):
            return "max"
        if self.op in ("<", "<="):
            return "min"
        return None

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.target:g}"


class MetricTracker:
    """The best value a metric reached over rounds, and how many rounds passed since it last improved.

    ``mode`` "max": higher is better; "min": lower is better. A round whose metrics lack the metric (or hold no
    finite number for it) changes nothing: it can be neither judged nor counted.
    """

    def __init__(self, metric: str, mode: str):
        if mode not in ("max", "min"):
            raise ConfigError(f"key_metric_mode must be 'max' or 'min', got {mode!r}")
        self.metric = metric
        self.mode = mode
        self.best: float | None = None
        self.rounds_without_improvement = 0

    def update(self, metrics: Mapping[str, Any] | None) -> bool:
        """Takes a round's metrics; True when the metric improved on the best so far (the first value does)."""
        value = as_finite((metrics or {}).get(self.metric))
        if value is None:
            return False
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best = value
            self.rounds_without_improvement = 0
            return True
        self.rounds_without_improvement += 1
        return False


def as_finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite real number (numpy scalars included, bools not), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def parse_stop_condition(text: str, setting: str = "stop_cond") -> StopCondition:
    """Parses ``"<metric> <op> <number>"`` with op one of ``>= > <= < ==``; ``ConfigError`` naming ``setting``
    otherwise."""
    usage = (
        f"{setting} must read '<metric> <op> <number>' with <op> one of >=, >, <=, <, == "
        f"(for example 'accuracy >= 80')"
    )
    if not isinstance(text, str):
        raise ConfigError(f"{usage}; got {type(text).__name__} {text!r}")
    match = _PATTERN.match(text)
    if match is None:
        raise ConfigError(f"{usage}; got {text!r}")
    metric, op, number = match.groups()
    try:
        target = float(number)
    except ValueError:
        raise ConfigError(f"{usage}; {number!r} in {text!r} is not a number") from None
    if not math.isfinite(target):
        raise ConfigError(f"{usage}; the target in {text!r} must be a finite number")
    return StopCondition(metric, op, target)


__all__ = ["MetricTracker", "StopCondition", "as_finite", "parse_stop_condition"]
