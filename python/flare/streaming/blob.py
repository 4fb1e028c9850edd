"""Blobs: bytes-like objects pushed whole."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flare.cellnet import Cell, Message
from flare.errors import FlareError


class StreamResult(dict):
    """Per-target outcome of a push: ``{target: None}`` on success, or the exception that target's stream raised."""

    @property
    def ok(self) -> bool:
        return all(err is None for err in self.values())

    def raise_for_errors(self) -> StreamResult:
        failed = {t: e for t, e in self.items() if e is not None}
        if failed:
            raise FlareError("; ".join(f"{t}: {e}" for t, e in failed.items()))
        return self


def targets_of(targets: str | Iterable[str]) -> list[str]:
    return [targets] if isinstance(targets, str) else list(targets)


def push_each(targets: str | Iterable[str], send: Callable[[str], Any]) -> StreamResult:
    """Runs ``send(target)`` for each target in turn, collecting each outcome."""
    result = StreamResult()
    for target in targets_of(targets):
        try:
            send(target)
            result[target] = None
        except FlareError as e:
            result[target] = e
    return result


class BlobStreamer:
    """Pushes bytes-like objects as streams; receivers get each whole blob as one buffer (no copy)."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def send(
        self, targets: str | Iterable[str], channel: str, topic: str, blob: Any, *, headers: dict | None = None
    ) -> StreamResult:
        """Streams ``blob`` to each target in turn; returns each target's outcome (never raises for a target)."""
        return push_each(targets, lambda t: self.cell.send_blob(t, channel, topic, blob, headers=headers))

    def register_receiver(self, channel: str, topic: str, on_blob: Callable[[Message], None]) -> None:
        """``on_blob(message)`` runs for each blob once it is complete; ``message.payload`` is the whole blob."""
        self.cell.register_blob_cb(channel, topic, on_blob)
