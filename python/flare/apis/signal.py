"""``Signal``: a flag that tells running work to stop, as NVFlare's ``nvflare.apis.signal.Signal``.

Triggering it also stops, at once, every download it was given to: the transport core watches the same flag, so a
download blocked in a request or a retry wait does not have to wake up and poll it.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from flare import _sfm


class Signal:
    """Set once by ``trigger``; ``triggered`` stays true until ``reset``. A child signal (``Signal(parent)``) is
    triggered whenever its parent is."""

    def __init__(self, parent: Signal | None = None):
        self.value: Any = None
        self.trigger_time: float | None = None
        self.parent = parent
        self._core = _sfm.AbortSignal()
        self._children: weakref.WeakSet[Signal] = weakref.WeakSet()
        if parent is not None:
            parent._children.add(self)
            if parent.triggered:
                self._core.trigger()

    def trigger(self, value: Any = True) -> None:
        self.value = value
        self.trigger_time = time.time()
        self._core.trigger()
        for child in list(self._children):
            child.trigger(value)

    def reset(self, value: Any = None) -> None:
        self.value = value
        self.trigger_time = None
        self._core.reset()

    @property
    def triggered(self) -> bool:
        return self._core.triggered or (self.parent is not None and self.parent.triggered)

    @property
    def core(self) -> _sfm.AbortSignal:
        """The flag the transport core watches."""
        return self._core


__all__ = ["Signal"]
