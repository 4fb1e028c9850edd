"""Files, pushed whole or tailed as they grow."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flare.cellnet import Cell, Message
from flare.errors import ConfigError
from flare.streaming.blob import StreamResult, push_each
from flare.streaming.keys import Streamer

log = logging.getLogger(__name__)


def safe_name(name: str) -> str:
    """A received file name must be a plain base name: nothing that could reach outside the receiver's directory."""
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name or "\0" in name:
        raise ValueError(f"refusing file name {name!r}: only a base name is allowed")
    return name


class FileStreamer:
    """Pushes files to receivers, who write them into a directory of their choosing.

    The file is read and written chunk by chunk: memory on both sides stays within the stream window whatever the
    file's size. The receiver keeps only the base name (header ``Streamer.KEY_FILE_NAME``); a name that would leave
    its directory (``../``, an absolute path, a subdirectory) is refused and the sender's stream fails with the
    reason.
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
            headers[Streamer.KEY_FILE_NAME] = file_name
        return push_each(targets, lambda t: self.cell.send_file(t, channel, topic, path, headers=headers))

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


class LogStreamer:
    """Tails a growing file (a training log) to a receiver, which appends what arrives to its own copy.

    Each new piece travels as a blob with its offset in the file, so the receiver's copy is exact even if a piece is
    retried. ``stop()`` sends what remains and an end-of-file mark.
    """

    def __init__(self, cell: Cell, *, interval: float = 1.0, max_piece: int = 4 * 1024 * 1024):
        if interval <= 0 or max_piece <= 0:
            raise ConfigError("LogStreamer: interval and max_piece must be positive")
        self.cell = cell
        self.interval = interval
        self.max_piece = max_piece
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None

    def start(self, target: str, channel: str, topic: str, path: str | os.PathLike[str]) -> LogStreamer:
        path = Path(path)
        name = safe_name(path.name)
        self._thread = threading.Thread(
            target=self._run, args=(target, channel, topic, path, name), name=f"log-streamer-{name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Sends the rest of the file and the end mark, then returns; raises what stopped the tailing, if anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error

    def _run(self, target: str, channel: str, topic: str, path: Path, name: str) -> None:
        offset = 0
        try:
            while True:
                stopping = self._stop.wait(self.interval)
                offset = self._send_new(target, channel, topic, path, name, offset, eof=stopping)
                if stopping:
                    return
        except Exception as e:  # surfaced by stop()
            log.warning("log streaming of %s stopped: %s", path, e)
            self.error = e

    def _send_new(self, target: str, channel: str, topic: str, path: Path, name: str, offset: int, eof: bool) -> int:
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                piece = f.read(self.max_piece)
                last = eof and len(piece) < self.max_piece
                if piece or last:
                    headers = {Streamer.KEY_FILE_NAME: name, Streamer.KEY_OFFSET: offset,
                               Streamer.KEY_DATA_SIZE: len(piece), Streamer.KEY_EOF: last}
                    self.cell.send_blob(target, channel, topic, piece, headers=headers)
                    offset += len(piece)
                if len(piece) < self.max_piece:
                    return offset

    @staticmethod
    def register_receiver(
        cell: Cell,
        channel: str,
        topic: str,
        dest_dir: str | os.PathLike[str],
        on_eof: Callable[[Path], None] | None = None,
    ) -> None:
        """Appends pieces streamed to (``channel``, ``topic``) to ``dest_dir/<file name>``; ``on_eof(path)`` runs
        when the sender stops."""
        directory = Path(dest_dir)
        directory.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()

        def piece(m: Message) -> None:
            try:
                name = safe_name(m.get_header(Streamer.KEY_FILE_NAME, ""))
            except ValueError as e:
                log.warning("log piece from %s dropped: %s", m.origin, e)
                return
            path = directory / name
            with lock:
                with open(path, "r+b" if path.exists() else "wb") as f:
                    f.seek(m.get_header(Streamer.KEY_OFFSET, 0))
                    f.write(m.payload)
            if m.get_header(Streamer.KEY_EOF) and on_eof is not None:
                on_eof(path)

        cell.register_blob_cb(channel, topic, piece)
