"""``FileRetriever``: a receiver asks an owner for a file by name, from under the owner's source directory.

The owner answers a retrieval request with a download reference (a one-receiver ``FileDownloader`` transaction)
and the receiver pulls the file. A name that resolves outside the source directory (``..``, an absolute path, a
symlink leading out) or to anything but a regular file is refused with an error saying why.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import msgpack

from flare.cellnet import Cell, Message, ReturnCode
from flare.errors import DownloadError
from flare.streaming.file_download import FileDownloader

log = logging.getLogger(__name__)

CHANNEL = "file_retriever"
DEFAULT_TOPIC = "retrieve_file"


class BadFileRequest(ValueError):
    """A requested file name that may not be served."""


def resolve_in(source_dir: str, file_name: object) -> str:
    """The real path of ``file_name`` under ``source_dir``; raises ``BadFileRequest`` for anything that leaves it
    or is not a regular file."""
    if not isinstance(file_name, str) or not file_name:
        raise BadFileRequest("missing file_name")
    if "\x00" in file_name:
        raise BadFileRequest("file_name contains a NUL byte")
    if os.path.isabs(file_name):
        raise BadFileRequest(f"{file_name!r} is an absolute path; ask for a name relative to the source directory")
    root = os.path.realpath(source_dir)
    path = os.path.realpath(os.path.join(root, file_name))
    if os.path.commonpath([root, path]) != root:
        raise BadFileRequest(f"{file_name!r} resolves outside the source directory")
    if not os.path.isfile(path):
        raise BadFileRequest(f"{file_name!r} is not a file in the source directory")
    return path


class FileRetriever:
    """Serves files under ``source_dir`` (owner side, when ``source_dir`` is given) and retrieves files from other
    cells (``retrieve_file``).

    Parameters
    ----------
    source_dir:
        Directory whose files this cell serves; None: this cell only retrieves.
    topic:
        Topic of retrieval requests, so that several retrievers can share a cell (default ``"retrieve_file"``).
    dest_dir:
        Where retrieved files go by default (default: the temp dir).
    chunk_size:
        Bytes per download reply when serving (default the cell's ``download_chunk_size``).
    timeout:
        Idle seconds after which a retrieval nobody pulls is dropped (default the cell's ``min_download_timeout``).
    """

    def __init__(
        self,
        cell: Cell,
        source_dir: str | os.PathLike[str] | None = None,
        topic: str | None = None,
        dest_dir: str | os.PathLike[str] | None = None,
        chunk_size: int | None = None,
        timeout: float | None = None,
    ):
        self.cell = cell
        self.topic = topic or DEFAULT_TOPIC
        self.source_dir = os.fspath(source_dir) if source_dir is not None else None
        self.dest_dir = os.fspath(dest_dir) if dest_dir is not None else None
        self.chunk_size = chunk_size
        self.timeout = timeout
        if self.source_dir is not None:
            if not os.path.isdir(self.source_dir):
                raise NotADirectoryError(f"source_dir {self.source_dir!r} is not an existing directory")
            cell.register_request_cb(CHANNEL, self.topic, self._serve)

    def _serve(self, request: Message) -> Message:
        assert self.source_dir is not None
        try:
            body = msgpack.unpackb(request.payload, raw=False)
            file_name = body.get("file_name") if isinstance(body, dict) else None
            path = resolve_in(self.source_dir, file_name)
        except (BadFileRequest, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            log.warning("refused file request from %s: %s", request.origin, e)
            return Message.reply(ReturnCode.INVALID_REQUEST, f"file request refused: {e}")
        downloader = FileDownloader(self.cell, timeout=self.timeout, num_receivers=1)
        ref_id = downloader.add_file(path, chunk_size=self.chunk_size)
        reply = {"ref_id": ref_id, "size": os.path.getsize(path)}
        return Message.reply(ReturnCode.OK, payload=msgpack.packb(reply, use_bin_type=True))

    def retrieve_file(
        self,
        from_site: str,
        file_name: str,
        timeout: float = 10.0,
        dest_dir: str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> str:
        """Fetches ``file_name`` from ``from_site``'s source directory into ``dest_dir`` (default the retriever's);
        returns the local path, named as the file's last component. ``timeout`` bounds the request and each
        download reply. Options: ``abort_signal``, ``progress_cb(done, total)``, ``progress_interval``,
        ``max_retries``. A refused name raises ``DownloadError`` with the owner's reason."""
        payload = msgpack.packb({"file_name": file_name}, use_bin_type=True)
        reply = self.cell.request(from_site, CHANNEL, self.topic, payload, timeout=timeout)
        if not reply.ok:
            raise DownloadError(f"cannot retrieve {file_name!r} from {from_site}: {reply.error or reply.return_code}")
        ref_id = msgpack.unpackb(reply.payload, raw=False)["ref_id"]
        return FileDownloader.download_file(
            from_site,
            ref_id,
            timeout,
            self.cell,
            dest_dir if dest_dir is not None else self.dest_dir,
            file_name=os.path.basename(file_name),
            **options,
        )


__all__ = ["BadFileRequest", "FileRetriever", "resolve_in"]
