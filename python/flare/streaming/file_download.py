"""Files pulled by their receivers, chunk by chunk: neither side ever holds the whole file in memory."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from flare.cellnet import Cell
from flare.streaming.download import ObjectDownloader, pull


class FileDownloader(ObjectDownloader):
    """The owner side of file downloads (a transaction, as ``ObjectDownloader``), and ``download_file`` for
    receivers.

    Owner::

        downloader = FileDownloader(cell, num_receivers=8)
        ref_id = downloader.add_file("/data/model.bin")

    Receiver::

        path = FileDownloader.download_file("server", ref_id, cell=cell, location="/tmp/in")
    """

    def add_file(
        self,
        file_name: str | os.PathLike[str],
        chunk_size: int | None = None,
        ref_id: str | None = None,
        file_downloaded_cb: Callable[..., None] | None = None,
        **cb_kwargs: Any,
    ) -> str:
        """Serves the file (opened now: a missing file is an error here, not for the receivers), in chunks of
        ``chunk_size`` (default the cell's ``download_chunk_size``). ``file_downloaded_cb(to_receiver, status,
        file_name, **cb_kwargs)`` runs as each receiver finishes or fails it (NVFlare's signature)."""
        path = os.fspath(file_name)
        rid = self._service.add_file(self.tx_id, path, chunk_size, ref_id)
        if file_downloaded_cb is not None:
            self._receiver_cbs[rid] = lambda receiver, status: file_downloaded_cb(receiver, status, path, **cb_kwargs)
        self._objects.append(path)
        return rid

    @staticmethod
    def download_file(
        from_fqcn: str,
        ref_id: str,
        per_request_timeout: float | None = None,
        cell: Cell | None = None,
        location: str | os.PathLike[str] | None = None,
        *,
        file_name: str | None = None,
        **options: Any,
    ) -> str:
        """Pulls the file into directory ``location`` (default: the temp dir) as ``file_name`` (default: a fresh
        unique name); returns its path. The data lands in a hidden partial file first and takes its name only when
        complete, so a failed download leaves nothing behind. Options: ``abort_signal``, ``progress_cb(done,
        total)``, ``progress_interval``, ``max_retries``."""
        directory = os.fspath(location) if location is not None else tempfile.gettempdir()
        if not os.path.isdir(directory):
            raise NotADirectoryError(f"download location {directory!r} is not an existing directory")
        name = file_name or str(uuid.uuid4())
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"file_name must be a plain file name, not {name!r}")
        final = os.path.join(directory, name)
        partial = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            pull(from_fqcn, ref_id, per_request_timeout, cell, path=partial, **options)
            os.replace(partial, final)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        return final


__all__ = ["FileDownloader"]
