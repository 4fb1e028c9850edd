"""A client job's side of the task exchange with the server: ask for tasks, send results (again, when needed)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel
from flare.cellnet import Cell, Message, ReturnCode
from flare.client.exchange import TaskAssignment
from flare.config import RuntimeSettings
from flare.errors import FlareTimeoutError, JobError
from flare.runtime import protocol as p
from flare.runtime.tasks import serialize

log = logging.getLogger(__name__)


class TaskClient:
    """Talks to the server for one job of one site, through the site's cell."""

    def __init__(self, cell: Cell, site: str, job_id: str, settings: RuntimeSettings, abort_signal: Signal):
        self.cell = cell
        self.site = site
        self.job_id = job_id
        self.settings = settings
        self.abort_signal = abort_signal
        self.ended = False
        self.task_ready = threading.Event()  # set when the server says a task waits: ask at once

    def _headers(self, **extra: Any) -> dict[str, Any]:
        return {p.JOB_ID: self.job_id, p.SITE: self.site, **extra}

    def _poll(self) -> tuple[str, Message]:
        """One task request: ``(status, reply)``, status a ``TaskStatus`` value."""
        reply = self.cell.request(
            p.SERVER_FQCN, p.CHANNEL_TASK, p.TOPIC_GET_TASK, None, headers=self._headers(),
            timeout=self.settings.job.get_task_timeout,
        )
        if not reply.ok:
            if reply.return_code in (ReturnCode.TIMEOUT, ReturnCode.TARGET_UNREACHABLE, ReturnCode.COMM_ERROR):
                return p.TaskStatus.WAIT, reply
            raise JobError(f"the server refused a task request: {reply.error or reply.return_code}")
        return reply.get_header(p.TASK_STATUS, p.TaskStatus.WAIT), reply

    def fetch(self, timeout: float | None) -> TaskAssignment | None:
        """The next task for this site: waits, asking every ``task_fetch_interval``, until one comes (None when the
        job is over). ``timeout`` counts the time without a task; None waits as long as the job runs."""
        started = time.monotonic()
        while not self.abort_signal.triggered and not self.ended:
            status, reply = self.poll()
            if status == p.TaskStatus.END:
                self.ended = True
                return None
            if status == p.TaskStatus.READY:
                model = reply.payload
                if not isinstance(model, FLModel):
                    raise JobError(f"the server sent task data of type {type(model).__name__}, not an FLModel")
                return TaskAssignment(reply.get_header(p.TASK_NAME), reply.get_header(p.TASK_ID), model)
            if timeout is not None and time.monotonic() - started > timeout:
                raise FlareTimeoutError(f"no task from the server within {timeout:g} s")
            self.wait_for_task(float(reply.get_header(p.RETRY_AFTER) or self.settings.job.task_fetch_interval))
        return None

    def poll(self) -> tuple[str, Message]:
        self.task_ready.clear()
        return self._poll()

    def wait_for_task(self, seconds: float) -> None:
        """Waits ``seconds`` before asking again, less when the server says a task is ready or on abort."""
        deadline = time.monotonic() + seconds
        while not self.abort_signal.triggered and not self.task_ready.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.task_ready.wait(min(left, 0.05))

    def submit(self, task: TaskAssignment, result: FLModel) -> None:
        """Sends a result and returns once the server has pulled its tensors: they may be the training script's live
        weights, which must not change before then. On a timeout or a lost connection the same bytes are sent again,
        up to ``max_resends`` times."""
        serialized = serialize(self.cell, result, 1, self.settings.tensor)
        # sent as bytes: the server loads them itself, with the job's abort signal on the references they hold
        headers = self._headers(**{p.TASK_ID: task.task_id, p.TASK_NAME: task.name})
        try:
            reply = self._send(headers, serialized.payload, f"the result of task {task.name!r}")
            if reply.get_header(p.ACCEPTED, True):
                serialized.wait_pulled(self.abort_signal)
            else:
                log.info("the server did not take the result of task %r: it came too late", task.name)
        finally:
            serialized.release()

    def report_failure(self, task: TaskAssignment | None, reason: str) -> None:
        """Tells the server this site failed ``task`` (or, with no task, its part of the job)."""
        headers = self._headers(**{p.TASK_ID: task.task_id if task else "", p.REASON: reason})
        try:
            self._send(headers, None, "a failure report")
        except JobError as e:
            log.error("%s", e)

    def _send(self, headers: dict[str, Any], payload: Any, what: str) -> Message:
        return request_with_resends(self.cell, p.SERVER_FQCN, p.CHANNEL_TASK, p.TOPIC_SUBMIT, payload, headers,
                                    self.settings, self.abort_signal, what)


def request_with_resends(cell: Cell, target: str, channel: str, topic: str, payload: Any, headers: dict[str, Any],
                         settings: RuntimeSettings, signal: Signal, what: str) -> Message:
    """A request that is sent again, as the same bytes, after a timeout or a lost connection: each attempt waits
    ``submit_result_timeout``, at most ``max_resends`` more attempts; raises ``JobError`` naming both."""
    job = settings.job
    attempts = job.max_resends + 1
    attempt = 0
    while True:
        attempt += 1
        reply = cell.request(target, channel, topic, payload, headers=headers, timeout=job.submit_result_timeout)
        if reply.ok:
            return reply
        retriable = reply.return_code in (ReturnCode.TIMEOUT, ReturnCode.TARGET_UNREACHABLE, ReturnCode.COMM_ERROR)
        if not retriable or attempt == attempts or signal.triggered:
            raise JobError(
                f"could not deliver {what} to {target} after {attempt} attempt(s): {reply.error or reply.return_code}"
                "; raise submit_result_timeout or max_resends if it is slow to answer"
            )
        log.warning("sending %s again (attempt %d of %d): %s", what, attempt + 1, attempts, reply.return_code)


def pause(signal: Signal, seconds: float) -> None:
    """Sleeps ``seconds``, returning early when ``signal`` is triggered."""
    deadline = time.monotonic() + seconds
    while not signal.triggered:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.05))


__all__ = ["TaskClient", "pause", "request_with_resends"]
