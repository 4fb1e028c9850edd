"""Server-side tasks: who gets a task, which results count, and when the task is done.

A task's data is serialized once per receiver group (its tensors served by one download transaction that all of
them pull from); a client that joins later (replacing one that was lost) gets a serialization of its own. Results
are handed to the workflow one at a time by the task's own thread, so that the workflow can fold them as they
arrive, tensor by tensor.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.errors import JobError
from flare.runtime.sitelog import start_thread

log = logging.getLogger(__name__)

Dump = Callable[[FLModel, int], "SerializedTask"]
_NOTHING_YET: Any = object()  # no result arrived within a poll of the results queue


@dataclass
class SerializedTask:
    """Task data as sent: the bytes, and the download transaction serving its tensors (None when it has none)."""

    payload: bytes
    downloader: Any = None

    def wait_pulled(self, signal: Any) -> None:
        """Waits until the receivers pulled the tensors, or the transaction ended otherwise (nobody pulled for its
        download timeout, or it was deleted): bounded by idle time, not by the model's size."""
        while self.downloader is not None and self.downloader.wait(0.5) is None and not signal.triggered:
            pass

    def release(self) -> None:
        if self.downloader is not None:
            self.downloader.delete_transaction()
            self.downloader = None


def serialize(cell: Any, obj: Any, num_receivers: int, tensor_settings: Any) -> SerializedTask:
    """``obj`` as FOBS bytes for ``num_receivers`` receivers; its large tensors served by download from ``cell``
    (the bytes can be sent again and again: they refer to one transaction)."""
    from flare import fobs
    from flare.cellnet.message import fobs_ctx_of

    from flare.fobs.via_downloader import TENSOR_SETTINGS

    ctx = fobs_ctx_of(cell, num_receivers) or {}
    ctx[TENSOR_SETTINGS] = tensor_settings
    payload = fobs.dumps(obj, fobs_ctx=ctx)
    return SerializedTask(payload, ctx.get("downloader"))


class ServerTask:
    """One task sent to some clients; the ``TaskHandle`` a workflow waits on."""

    def __init__(
        self,
        name: str,
        data: FLModel,
        targets: list[str],
        min_responses: int,
        timeout: float,
        result_cb: Callable[[str, FLModel], None],
        dump: Dump,
        wait_after_min: float = 0.0,
    ):
        if min_responses > len(targets):
            raise JobError(
                f"task {name!r}: {min_responses} results wanted from {len(targets)} clients; lower min_responses"
            )
        self.task_id = str(uuid.uuid4())
        self.name = name
        self._data = data
        self._dump = dump
        self._min_responses = max(min_responses, 0)
        self._timeout = timeout
        self._result_cb = result_cb
        self._wait_after_min = wait_after_min
        self._lock = threading.Lock()
        self._pending: set[str] = set(targets)  # assigned, no result yet
        self._answered: set[str] = set()
        self._given_up: dict[str, str] = {}  # client -> why
        self._serialized: dict[str, SerializedTask] = {}  # client -> what it is sent
        self._shared = dump(data, len(targets))
        for client in targets:
            self._serialized[client] = self._shared
        self._results: queue.Queue[tuple[str, FLModel] | None] = queue.Queue()
        self._last_progress = time.monotonic()
        self._done = threading.Event()
        self.error: str | None = None
        self._worker = start_thread(self._deliver, f"task-{name}-{self.task_id[:8]}")
        if self._min_responses == 0:
            self._finish(None)

    # ---- TaskHandle ----
    def is_done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        """True once done, False if still running after ``timeout`` seconds; raises ``JobError`` if it failed."""
        if not self._done.wait(timeout):
            self._check_timeout()
            if not self._done.is_set():
                return False
        if self.error is not None:
            raise JobError(self.error)
        return True

    # ---- from the runtime ----
    def payload_for(self, client: str) -> bytes | None:
        """The serialized task for ``client``, or None when it has nothing to do for this task."""
        with self._lock:
            if client not in self._pending or self._done.is_set():
                return None
            self._last_progress = time.monotonic()
            return self._serialized[client].payload

    def add_result(self, client: str, result: FLModel | None, error: str | None) -> bool:
        """Accepts a client's result (or its failure); False when it does not count (late, duplicate, unknown)."""
        with self._lock:
            if client not in self._pending or self._done.is_set():
                return False
            self._pending.discard(client)
            self._last_progress = time.monotonic()
            if error is not None:
                self._given_up[client] = error
            else:
                self._answered.add(client)
        if error is not None:
            log.warning("task %s: %s failed: %s", self.name, client, error)
            self._check_feasible()
        else:
            self._results.put((client, result))  # type: ignore[arg-type]
        return True

    def client_lost(self, client: str, reason: str, spares: list[str]) -> str | None:
        """``client`` is gone: its share goes to one of ``spares`` (clients not yet in this task), if any; returns
        the client that took it over."""
        with self._lock:
            if client not in self._pending or self._done.is_set():
                return None
            self._pending.discard(client)
            self._given_up[client] = reason
            spare = next((c for c in spares if c not in self._serialized), None)
        if spare is not None:
            log.warning("task %s: %s is lost (%s); giving its share to %s", self.name, client, reason, spare)
            with self._lock:
                data = self._data
            if data is None:  # finished meanwhile
                return None
            serialized = self._dump(data, 1)
            with self._lock:
                self._serialized[spare] = serialized
                self._pending.add(spare)
            return spare
        self._check_feasible()
        return None

    def abort(self, reason: str) -> None:
        self._finish(reason)

    # ---- internals ----
    def _check_feasible(self) -> None:
        with self._lock:
            possible = len(self._answered) + len(self._pending)
            reasons = "; ".join(f"{c}: {why}" for c, why in self._given_up.items())
        if possible < self._min_responses:
            self._finish(
                f"task {self.name!r} cannot get the {self._min_responses} results it needs: only {possible} clients "
                f"are left ({reasons}). Start more clients or lower min_clients."
            )

    def _check_timeout(self) -> None:
        if self._timeout <= 0 or self._done.is_set():
            return
        with self._lock:
            idle = time.monotonic() - self._last_progress
            answered = len(self._answered)
        if idle > self._timeout:
            self._finish(
                f"task {self.name!r}: no progress for {self._timeout:g} s ({answered} of {self._min_responses} "
                "results in); raise the task timeout"
            )

    def _deliver(self) -> None:
        delivered = 0
        min_reached_at: float | None = None
        while True:
            try:
                item = self._results.get(timeout=0.1 if min_reached_at is not None else None)
            except queue.Empty:
                item = _NOTHING_YET
            if item is None:
                return
            if item is not _NOTHING_YET:
                client, result = item
                try:
                    self._result_cb(client, result)
                except Exception as e:  # the workflow's failure ends the task with its reason
                    log.exception("task %s: handling the result of %s failed", self.name, client)
                    self._finish(f"task {self.name!r}: handling the result of {client} failed: {type(e).__name__}: {e}")
                    return
                delivered += 1
                with self._lock:
                    self._last_progress = time.monotonic()
            if delivered < self._min_responses:
                continue
            # enough results: wait a little for the others, then the rest is late (the workflow has moved on)
            min_reached_at = min_reached_at or time.monotonic()
            with self._lock:
                waiting = sorted(self._pending)
            if not waiting and self._results.empty():
                self._finish(None)
                return
            if time.monotonic() - min_reached_at >= self._wait_after_min:
                if waiting:
                    log.warning("task %s: going on without %s (%d results of at least %d in)", self.name,
                                ", ".join(waiting), delivered, self._min_responses)
                self._finish(None)
                return

    def _finish(self, error: str | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.error = error
            serialized = list({id(s): s for s in self._serialized.values()}.values())
            self._pending.clear()
            self._data = None  # kept only to serialize the task again for a spare client
        for s in serialized:
            s.release()
        self._results.put(None)
        self._done.set()


__all__ = ["SerializedTask", "ServerTask", "serialize"]
