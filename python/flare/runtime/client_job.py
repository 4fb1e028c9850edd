"""One job on a client: its app, its settings, its executor, and its exchange with the training script."""

from __future__ import annotations

import json
import logging
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare.apis.fl_constant import RunStatus
from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel
from flare.client.exchange import TaskAssignment
from flare.config import RuntimeSettings
from flare.errors import ConfigError, FlareError
from flare.runtime.job import CLIENT_CONFIG, build, importable, read_config, settings_of
from flare.runtime.filters import SiteFilters
from flare.runtime.sitelog import site_log
from flare.runtime.task_client import TaskClient

if TYPE_CHECKING:
    from flare.runtime.client import FederatedClient

log = logging.getLogger(__name__)


class ClientJob:
    """A deployed job on a site; runs in a thread of the client process."""

    def __init__(self, client: FederatedClient, job_id: str, job_dir: Path):
        self.client = client
        self.site = client.name
        self.job_id = job_id
        self.job_dir = job_dir
        self.app_dir = job_dir / f"app_{client.name}"
        self.abort_signal = Signal()
        self.status = RunStatus.SUBMITTED
        self.error: str | None = None
        self.current_task: TaskAssignment | None = None
        self._metrics_lock = threading.Lock()
        self._holds_slot = False
        self._thread = threading.Thread(target=self._run, name=f"{self.site}-job-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self, reason: str) -> None:
        if self.is_alive() and not self.abort_signal.triggered:
            log.warning("%s: job %s aborted: %s", self.site, self.job_id, reason)
            self.abort_signal.trigger(reason)

    def server_ended(self) -> None:
        """The server says the job is over; the script learns it at its next task request."""
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.ended = True
            tasks.task_ready.set()

    def task_ready(self) -> None:
        tasks = getattr(self, "tasks", None)
        if tasks is not None:
            tasks.task_ready.set()

    # ---- what the exchanges use ----
    def fetch(self, timeout: float | None) -> TaskAssignment | None:
        task = self.tasks.fetch(timeout)
        if task is not None and self.client.task_slots is not None and not self._holds_slot:
            self.client.task_slots.acquire()
            self._holds_slot = True
        self.current_task = task
        return task

    def submit(self, task: TaskAssignment, result: FLModel) -> None:
        try:
            self.tasks.submit(task, result)
        finally:
            self._release_slot()
            if self.current_task is task:
                self.current_task = None

    def _release_slot(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self.client.task_slots.release()  # type: ignore[union-attr]

    def record_metric(self, record: dict[str, Any]) -> None:
        """Appends a metric to the site's ``metrics.jsonl`` in the job workspace."""
        line = json.dumps(record, default=str)
        with self._metrics_lock, open(self.job_dir / "metrics.jsonl", "a") as out:
            out.write(line + "\n")

    # ---- the job's life ----
    def _run(self) -> None:
        with site_log(self.site, self.job_dir / "log.txt"):
            try:
                config = read_config(self.app_dir, CLIENT_CONFIG)
                self.settings = RuntimeSettings.from_config(settings_of(config))
                for problem in self.settings.inconsistencies():
                    log.warning("%s: job %s: %s", self.site, self.job_id, problem)
                self.tasks = TaskClient(self.client.cell, self.site, self.job_id, self.settings, self.abort_signal)
                self.config = config
                with importable(self.app_dir / "custom"):
                    executor = self._executor(config)
                    self.filters = SiteFilters.from_config(self.site, config, server=False)
                self.status = RunStatus.RUNNING
                executor.run(self)
                self.status = RunStatus.FINISHED_ABORTED if self.abort_signal.triggered else RunStatus.FINISHED_COMPLETED
            except Exception as e:
                if self.abort_signal.triggered:
                    self.status = RunStatus.FINISHED_ABORTED
                    return
                self.error = str(e) if isinstance(e, FlareError) else f"{type(e).__name__}: {e}"
                log.error("%s: job %s failed: %s\n%s", self.site, self.job_id, self.error, traceback.format_exc())
                self.status = RunStatus.FINISHED_EXECUTION_EXCEPTION
                if hasattr(self, "tasks"):
                    self.tasks.report_failure(self.current_task, self.error)
            finally:
                self._release_slot()

    def _executor(self, config: dict[str, Any]) -> Any:
        entries = config.get("executors") or []
        if len(entries) != 1 or "executor" not in entries[0]:
            raise ConfigError(f"{CLIENT_CONFIG} must name one executor: {{'executors': [{{'executor': {{...}}}}]}}")
        return build(entries[0]["executor"])



__all__ = ["ClientJob"]
