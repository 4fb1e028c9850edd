"""User-level streaming over cells: blobs and files pushed to one or more receivers.

These are the push half of NVFlare's streamers (``FileStreamer``, blob streaming), at the cell level: a sender
streams to named target cells, a receiver registers where streams on a channel/topic go. Memory: a blob is held
once on each side; a file is read and written chunk by chunk, so it never needs to fit in memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flare.cellnet import Cell, Message
from flare.errors import FlareError

log = logging.getLogger(__name__)

__all__ = ["BlobStreamer", "FileStreamer", "StreamResult"]


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


def _targets(targets: str | Iterable[str]) -> list[str]:
    return [targets] if isinstance(targets, str) else list(targets)


class BlobStreamer:
    """Pushes bytes-like objects as streams; receivers get each whole blob as one buffer (no copy)."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def send(
        self, targets: str | Iterable[str], channel: str, topic: str, blob: Any, *, headers: dict | None = None
    ) -> StreamResult:
        """Streams ``blob`` to each target in turn; returns each target's outcome (never raises for a target)."""
        result = StreamResult()
        for target in _targets(targets):
            try:
                self.cell.send_blob(target, channel, topic, blob, headers=headers)
                result[target] = None
            except FlareError as e:
                result[target] = e
        return result

    def register_receiver(self, channel: str, topic: str, on_blob: Callable[[Message], None]) -> None:
        """``on_blob(message)`` runs for each blob once it is complete; ``message.payload`` is the whole blob."""
        self.cell.register_blob_cb(channel, topic, on_blob)


class FileStreamer:
    """Pushes files to receivers, who write them into a directory of their choosing.

    The receiver keeps only the file's base name (header ``file_name``); a name that would leave its directory
    (``../``, an absolute path, a subdirectory) is refused and the sender's stream fails with the reason.
    """

    def __init__(self, cell: Cell):
        self.cell = cell

    def send(
        self,
        targets: str | Iterable[str],
        channel: str,
        topic: str,
        file_path: str | os.PathLike[str],
        *,
        file_name: str | None = None,
        headers: dict | None = None,
    ) -> StreamResult:
        """Streams the file to each target in turn; ``file_name`` renames it on the receiving side."""
        path = Path(file_path)
        if not path.is_file():
            raise FileNotFoundError(f"no file to stream at {path}")
        headers = dict(headers or {})
        if file_name is not None:
            headers["file_name"] = file_name
        result = StreamResult()
        for target in _targets(targets):
            try:
                self.cell.send_file(target, channel, topic, path, headers=headers)
                result[target] = None
            except FlareError as e:
                result[target] = e
        return result

    def register_receiver(
        self,
        channel: str,
        topic: str,
        dest_dir: str | os.PathLike[str],
        on_file: Callable[[Path, dict[str, Any]], None] | None = None,
    ) -> None:
        """Writes files streamed to (``channel``, ``topic``) into ``dest_dir`` (created if missing);
        ``on_file(path, headers)`` runs when each is complete."""
        directory = Path(dest_dir)
        directory.mkdir(parents=True, exist_ok=True)

        def done(headers: dict[str, Any], path: Any, size: int) -> None:
            log.info("received %s (%d bytes) from %s", path, size, headers.get("cn__origin"))
            if on_file is not None:
                try:
                    on_file(Path(path), headers)
                except Exception:
                    log.exception("file callback for %s/%s failed", channel, topic)

        self.cell.register_file_cb(channel, topic, directory, done)
