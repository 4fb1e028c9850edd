"""Pull downloads: an owner registers data under reference ids; each receiver pulls it at its own pace.

Push moves every receiver in lock-step; pull lets a slow receiver be slow alone. The owner's transport produces
each chunk once for all receivers (a shared cache within ``download_cache_budget``), ends a transaction when every
expected receiver has everything or nobody pulled for its timeout, and then releases the data. Receivers retry
requests that time out or lose their connection (``download_max_retries``, with doubling backoff) and stop at once on their abort signal.

Owner::

    downloader = ObjectDownloader(cell, num_receivers=2)
    ref_id = downloader.add_bytes(model_bytes)          # send ref_id (and cell.fqcn) to the receivers
    outcome = downloader.wait(600)                      # TransactionOutcome, each receiver's status

Receiver::

    data = download_bytes("server", ref_id, cell=cell)  # a read-only buffer, no copy
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flare import _sfm, fobs
from flare.apis.signal import Signal
from flare.cellnet import Cell
from flare.errors import ConfigError
from flare.streaming.progress import ProgressCallback, ProgressLog

log = logging.getLogger(__name__)


class TransactionDoneStatus:
    """How a transaction ended (NVFlare's names)."""

    FINISHED = "finished"
    TIMEOUT = "timeout"
    DELETED = "deleted"


class DownloadStatus:
    """How one receiver fared with one reference (NVFlare's names)."""

    SUCCESS = "success"
    FAILED = "failed"


@dataclass(frozen=True)
class ReceiverOutcome:
    receiver: str
    ref_id: str
    status: str
    reason: str = ""


@dataclass(frozen=True)
class TransactionOutcome:
    """A transaction that ended, with every receiver's status per reference."""

    tx_id: str
    status: str
    refs: tuple[str, ...]
    receivers: tuple[ReceiverOutcome, ...]

    def succeeded(self) -> list[str]:
        """Receivers that got every reference."""
        names = {r.receiver for r in self.receivers}
        return sorted(
            n for n in names if all(self._status(n, ref) == DownloadStatus.SUCCESS for ref in self.refs)
        )

    def _status(self, receiver: str, ref_id: str) -> str | None:
        for r in self.receivers:
            if r.receiver == receiver and r.ref_id == ref_id:
                return r.status
        return None


ReceiverCallback = Callable[[str, str], None]


class ObjectDownloader:
    """The owner side of one download transaction on ``cell``.

    Parameters
    ----------
    timeout:
        Idle seconds after which a transaction nobody pulls from ends with status "timeout"; default the cell's
        ``min_download_timeout``.
    num_receivers:
        Receivers expected to download every reference (0: unknown). With it known, the transaction finishes as
        soon as all have everything, and each chunk leaves the cache once all were served it.
    transaction_done_cb:
        ``cb(tx_id, status, objects, **cb_kwargs)`` once when the transaction ends (NVFlare's signature);
        ``objects`` are what was added, in order.
    outcome_cb:
        ``cb(outcome: TransactionOutcome)`` once when the transaction ends, with each receiver's status.
    """

    def __init__(
        self,
        cell: Cell,
        timeout: float | None = None,
        num_receivers: int = 0,
        tx_id: str | None = None,
        transaction_done_cb: Callable[..., None] | None = None,
        outcome_cb: Callable[[TransactionOutcome], None] | None = None,
        **cb_kwargs: Any,
    ):
        if num_receivers < 0:
            raise ConfigError(f"num_receivers must be >= 0 (0: unknown), not {num_receivers}")
        self.cell = cell
        self._service = _sfm.DownloadService(cell._core)
        self._objects: list[Any] = []
        self._receiver_cbs: dict[str, ReceiverCallback] = {}
        self._done = threading.Event()
        self._outcome: TransactionOutcome | None = None
        self._transaction_done_cb = transaction_done_cb
        self._outcome_cb = outcome_cb
        self._cb_kwargs = cb_kwargs
        self.tx_id: str = self._service.new_transaction(
            timeout=timeout,
            num_receivers=num_receivers,
            tx_id=tx_id,
            on_receiver=self._on_receiver,
            on_done=self._on_done,
        )

    def add_bytes(
        self,
        data: Any,
        *,
        chunk_size: int | None = None,
        ref_id: str | None = None,
        downloaded_cb: ReceiverCallback | None = None,
    ) -> str:
        """Serves a bytes-like object (borrowed, not copied: keep it unchanged until the transaction ends).
        ``downloaded_cb(receiver, status)`` runs as each receiver finishes or fails it."""
        rid = self._service.add_bytes(self.tx_id, data, chunk_size, ref_id)
        return self._added(rid, data, downloaded_cb)

    def add_object(
        self,
        obj: Any,
        *,
        chunk_size: int | None = None,
        ref_id: str | None = None,
        downloaded_cb: ReceiverCallback | None = None,
    ) -> str:
        """Serves ``obj`` serialized with FOBS (see docs/fobs.md for the types it covers); receivers get it back with
        ``download_object``."""
        payload = fobs.dumps(obj)
        rid = self._service.add_bytes(self.tx_id, payload, chunk_size, ref_id)
        return self._added(rid, obj, downloaded_cb)

    def add_items(
        self,
        produce_item: Callable[[int], Any],
        num_items: int,
        *,
        max_chunk_size: int | None = None,
        ref_id: str | None = None,
        downloaded_cb: ReceiverCallback | None = None,
    ) -> str:
        """Serves ``num_items`` items made on demand by ``produce_item(index) -> bytes-like``, each made once for all
        receivers (it must return the same bytes if asked again). A reply packs items up to ``max_chunk_size``
        bytes (default the cell's ``download_chunk_size``); receivers get the list with ``download_items``."""
        rid = self._service.add_items(self.tx_id, produce_item, num_items, max_chunk_size, ref_id)
        return self._added(rid, produce_item, downloaded_cb)

    def _added(self, rid: str, obj: Any, downloaded_cb: ReceiverCallback | None) -> str:
        self._objects.append(obj)
        if downloaded_cb is not None:
            self._receiver_cbs[rid] = downloaded_cb
        return rid

    def delete_transaction(self) -> None:
        """Ends the transaction now (status "deleted"); receivers still pulling are refused."""
        self._service.delete_transaction(self.tx_id)

    def wait(self, timeout: float) -> TransactionOutcome | None:
        """Waits up to ``timeout`` seconds for the transaction to end; its outcome, or None if still running."""
        self._done.wait(timeout)
        return self._outcome

    def info(self) -> dict[str, Any] | None:
        """References, expected and active receivers, and statuses of the running transaction; None once ended."""
        return self._service.transaction_info(self.tx_id)

    def _on_receiver(self, tx_id: str, ref_id: str, receiver: str, status: str, reason: str) -> None:
        if status != DownloadStatus.SUCCESS:
            log.warning("download %s to %s failed: %s", ref_id, receiver, reason)
        cb = self._receiver_cbs.get(ref_id)
        if cb is not None:
            cb(receiver, status)

    def _on_done(self, tx_id: str, status: str, refs: list[str], receivers: list[tuple[str, str, str, str]]) -> None:
        self._outcome = TransactionOutcome(
            tx_id=tx_id,
            status=status,
            refs=tuple(refs),
            receivers=tuple(ReceiverOutcome(*r) for r in receivers),
        )
        try:
            if self._transaction_done_cb is not None:
                self._transaction_done_cb(tx_id, status, list(self._objects), **self._cb_kwargs)
            if self._outcome_cb is not None:
                self._outcome_cb(self._outcome)
        finally:
            self._objects.clear()
            self._done.set()


def _core_of(cell: Cell | None) -> _sfm.Cell:
    if cell is None:
        raise ConfigError("a download needs the cell to pull through: pass cell=")
    return cell._core


def _abort_of(signal: Signal | None) -> _sfm.AbortSignal | None:
    return signal.core if signal is not None else None


def pull(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None,
    cell: Cell | None,
    *,
    path: str | None = None,
    abort_signal: Signal | None = None,
    progress_cb: ProgressCallback | None = None,
    progress_interval: float = 5.0,
    max_retries: int | None = None,
) -> tuple[Any, list[Any], dict[str, Any]]:
    """Pulls one reference into memory, or into the file at ``path``; returns ``(payload, items, stats)``.
    Without a ``progress_cb``, long downloads log their progress."""
    progress = progress_cb or ProgressLog(f"download {ref_id[:13]} from {from_fqcn}", log)
    return _sfm.download(
        _core_of(cell),
        from_fqcn,
        ref_id,
        path=path,
        per_request_timeout=per_request_timeout,
        max_retries=max_retries,
        abort=_abort_of(abort_signal),
        progress=progress,
        progress_interval=progress_interval,
    )


def download_bytes(
    from_fqcn: str, ref_id: str, per_request_timeout: float | None = None, cell: Cell | None = None, **options: Any
) -> Any:
    """The bytes served under ``ref_id`` by ``from_fqcn``, as a read-only buffer (no copy). Options:
    ``abort_signal``, ``progress_cb(done, total)``, ``progress_interval``, ``max_retries``."""
    payload, _, _ = pull(from_fqcn, ref_id, per_request_timeout, cell, **options)
    return payload


def download_object(
    from_fqcn: str, ref_id: str, per_request_timeout: float | None = None, cell: Cell | None = None, **options: Any
) -> Any:
    """The object served with ``ObjectDownloader.add_object``; arrays in it are views over the downloaded buffer."""
    return fobs.loads(download_bytes(from_fqcn, ref_id, per_request_timeout, cell, **options))


def download_items(
    from_fqcn: str, ref_id: str, per_request_timeout: float | None = None, cell: Cell | None = None, **options: Any
) -> list[Any]:
    """The items served with ``ObjectDownloader.add_items``, each a read-only buffer."""
    _, items, _ = pull(from_fqcn, ref_id, per_request_timeout, cell, **options)
    return items


def open_download(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None = None,
    cell: Cell | None = None,
    *,
    abort_signal: Signal | None = None,
    max_retries: int | None = None,
    capacity: int = 4,
) -> _sfm.DownloadReader:
    """Pulls ``ref_id`` piece by piece: iterate the reader for buffers (byte sources) or lists of item buffers, in
    order, as they arrive; at most ``capacity`` pieces wait unread. ``close()`` stops the download."""
    return _sfm.DownloadReader(
        _core_of(cell),
        from_fqcn,
        ref_id,
        per_request_timeout=per_request_timeout,
        max_retries=max_retries,
        abort=_abort_of(abort_signal),
        capacity=capacity,
    )


__all__ = [
    "DownloadStatus",
    "ObjectDownloader",
    "ReceiverOutcome",
    "TransactionDoneStatus",
    "TransactionOutcome",
    "download_bytes",
    "download_items",
    "download_object",
    "open_download",
]
