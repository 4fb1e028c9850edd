"""One job on the server: its workspace, components and workflow, the clients taking part, and its tasks."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare import fobs
from flare.apis.fl_constant import RunStatus
from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel
from flare.cellnet import Message, ReturnCode
from flare.cellnet.message import Encoding, MessageHeaderKey, fobs_ctx_of
from flare.config import RuntimeSettings
from flare.errors import FlareError, JobError
from flare.fobs.via_downloader import ABORT_SIGNAL
from flare.runtime import protocol as p
from flare.runtime.job import SERVER_CONFIG, build, importable, read_config, read_meta, settings_of, zip_app
from flare.runtime.filters import SiteFilters
from flare.runtime.sitelog import site_log, start_thread
from flare.runtime.tasks import SerializedTask, ServerTask, serialize

if TYPE_CHECKING:
    from flare.runtime.server import FederatedServer

log = logging.getLogger(__name__)

SERVER_APP = "app_server"


class ServerJob:
    """A job as the server runs it; the ``ControllerEngine`` its workflow is bound to."""

    def __init__(self, server: FederatedServer, job_id: str, job_dir: Path):
        self.server = server
        self.job_id = job_id
        self.job_dir = job_dir
        self.meta = read_meta(job_dir)
        self.app_dir = job_dir.parent / SERVER_APP
        self.abort_signal = Signal()
        self.status = RunStatus.SUBMITTED
        self.error: str | None = None
        self._clients: list[str] = []  # taking part, in order of joining
        self._lost: set[str] = set()
        self._reported: set[str] = set()  # clients seen running the job (they asked for a task)
        # monotonic times, for startup figures
        self.started_at: float | None = None
        self.first_task_at: float | None = None
        self.ended_at: float | None = None
        self._tasks: list[ServerTask] = []
        self._components: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._settings = server.settings  # until the job's own configuration is read
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def startup_seconds(self) -> float | None:
        """From the job's start to its first task handed out; None until then."""
        if self.started_at is None or self.first_task_at is None:
            return None
        return self.first_task_at - self.started_at

    # ---- ControllerEngine ----
    def alive_clients(self) -> list[str]:
        with self._lock:
            return [c for c in self._clients if c not in self._lost]

    def get_component(self, component_id: str) -> Any:
        return self._components.get(component_id)

    def send_task(self, task_name, data, targets, min_responses, timeout, result_cb,  # type: ignore[no-untyped-def]
                  wait_time_after_min_received=0.0) -> ServerTask:
        if self.abort_signal.triggered:
            raise JobError("the job was aborted")
        unknown = [t for t in targets if t not in self.alive_clients()]
        if unknown:
            raise JobError(f"task {task_name!r}: {', '.join(unknown)} not in the job (clients: {self.alive_clients()})")
        data = self.filters.send(data, task_name, ",".join(targets))

        def on_result(client: str, result: FLModel) -> None:
            result_cb(client, self.filters.receive(result, task_name, client))

        task = ServerTask(task_name, data, list(targets), min_responses, timeout, on_result, self._serialize,
                          wait_time_after_min_received)
        with self._lock:
            self._tasks = [t for t in self._tasks if not t.is_done()] + [task]
        self.server.cell.fire_and_forget(targets, p.CHANNEL_TASK, p.TOPIC_TASK_READY, None,
                                         headers={p.JOB_ID: self.job_id})
        return task

    def _serialize(self, data: FLModel, num_receivers: int) -> SerializedTask:
        return serialize(self.server.cell, data, num_receivers, self.settings.tensor)

    # ---- from the server's handlers ----
    def next_task(self, site: str) -> Message:
        self._reported.add(site)
        if self.status in RunStatus.FINAL:
            return Message({p.TASK_STATUS: p.TaskStatus.END, p.REASON: self.status})
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            payload = task.payload_for(site)
            if payload is not None:
                self.first_task_at = self.first_task_at or time.monotonic()
                headers = {
                    p.TASK_STATUS: p.TaskStatus.READY,
                    p.TASK_ID: task.task_id,
                    p.TASK_NAME: task.name,
                    MessageHeaderKey.PAYLOAD_ENCODING: Encoding.FOBS,
                }
                return Message(headers, payload)
        return Message({p.TASK_STATUS: p.TaskStatus.WAIT, p.RETRY_AFTER: self.settings.job.task_fetch_interval})

    def accept_result(self, site: str, task_id: str, result: Any, error: str | None) -> bool:
        """Hands a result to its task; False when it does not count (late, repeated, for a task that ended)."""
        with self._lock:
            tasks = list(self._tasks)
        if not task_id:  # the site's job failed outside any task
            self.client_lost(site, error or "its job ended")
            return False
        if error is None and result is not None and not isinstance(result, FLModel):
            result = self._load_result(site, result)
            if isinstance(result, FlareError):
                error = f"its result cannot be read: {result}"
        if error is None and not isinstance(result, FLModel):
            error = f"sent a result of type {type(result).__name__}, not an FLModel"
        for task in tasks:
            if task.task_id == task_id:
                if task.add_result(site, result if error is None else None, error):
                    return True
                log.info("discarded a late or repeated result of %s for task %s", site, task.name)
                return False
        log.info("discarded a result of %s for a task no longer running (%s)", site, task_id[:8])
        return False

    def _load_result(self, site: str, payload: Any) -> Any:
        """A result's FOBS bytes, loaded with references to its tensors (pulled while the workflow folds them, and
        stopped when the job is aborted)."""
        ctx = {**(fobs_ctx_of(self.server.cell) or {}), ABORT_SIGNAL: self.abort_signal}
        try:
            return fobs.loads(payload, fobs_ctx=ctx)
        except FlareError as e:
            log.warning("the result of %s cannot be read: %s", site, e)
            return e

    def client_joined(self, site: str) -> None:
        """A client registered while the job runs: it takes part from now on."""
        if self.status not in (RunStatus.DISPATCHED, RunStatus.RUNNING):
            return
        with self._lock:
            self._lost.discard(site)
        # A client registers once per start, so a known one restarted and lost its job. Not on the caller's
        # thread: that is the handler of the client's registration, which the deployment needs.
        start_thread(self._deploy, f"deploy-{site}", [site])

    def client_lost(self, site: str, reason: str, silent_only: bool = False) -> None:
        """``site`` is gone (``silent_only``: it has been quiet but its connection is up) and stops counting for
        this job; a quiet site that never asked for a task yet is spared (``sync_client_jobs_require_previous_report``)."""
        if self.status in RunStatus.FINAL:
            return
        if silent_only and site not in self._reported and self.settings.job.sync_client_jobs_require_previous_report:
            return
        with self._lock:
            if site not in self._clients or site in self._lost:
                return
            self._lost.add(site)
            tasks = list(self._tasks)
        spares = self.alive_clients()
        for task in tasks:
            spare = task.client_lost(site, reason, spares)
            if spare is not None:
                self.server.cell.fire_and_forget(spare, p.CHANNEL_TASK, p.TOPIC_TASK_READY, None,
                                                 headers={p.JOB_ID: self.job_id})

    def abort(self, reason: str) -> None:
        if self.status in RunStatus.FINAL:
            return
        self.error = reason
        self.abort_signal.trigger(reason)
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.abort(f"the job was aborted: {reason}")

    # ---- the job's life ----
    @property
    def settings(self) -> RuntimeSettings:
        return self._settings

    def _run(self) -> None:
        self.started_at = time.monotonic()
        with site_log("server", self.job_dir.parent / "log.txt"):
            try:
                controller = self._prepare()
                self.status = RunStatus.RUNNING
                with importable(self.app_dir / "custom"):
                    controller.run()
                if self.abort_signal.triggered:
                    self.status = RunStatus.FINISHED_ABORTED
                else:
                    self.status = RunStatus.FINISHED_COMPLETED
                log.info("job %s finished", self.job_id)
            except Exception as e:
                if self.abort_signal.triggered:
                    self.status = RunStatus.FINISHED_ABORTED
                else:
                    self.error = f"{type(e).__name__}: {e}" if not isinstance(e, FlareError) else str(e)
                    log.error("job %s failed: %s\n%s", self.job_id, self.error, traceback.format_exc())
                    self.status = RunStatus.FINISHED_EXECUTION_EXCEPTION
            finally:
                self.ended_at = time.monotonic()
                self._end_clients()

    def _prepare(self) -> Any:
        import shutil

        shutil.copytree(self.job_dir / SERVER_APP, self.app_dir, dirs_exist_ok=True)
        config = read_config(self.app_dir, SERVER_CONFIG)
        self._settings = RuntimeSettings.from_config({**settings_of(config)})
        for problem in self._settings.inconsistencies():
            log.warning("job %s: %s", self.job_id, problem)
        with importable(self.app_dir / "custom"):
            self.filters = SiteFilters.from_config("server", config, server=True)
            for spec in config.get("components", []):
                self._components[spec["id"]] = build(spec)
            workflows = config.get("workflows", [])
            if len(workflows) != 1:
                raise JobError(f"{SERVER_CONFIG} must name exactly one workflow, found {len(workflows)}")
            controller = build(workflows[0])
        for component in [*self._components.values(), controller]:
            bind = getattr(component, "bind", None)
            if callable(bind):
                bind(self)
        # from here on a client that registers is deployed to as it comes (client_joined)
        self.status = RunStatus.DISPATCHED
        clients = self.server.wait_for_clients(self.meta.min_clients, self._settings.job.wait_for_clients_timeout,
                                               self.abort_signal)
        self._deploy(clients)
        self._check_participants()
        return controller

    def _deploy(self, clients: list[str]) -> None:
        """Sends each client its app, all at once, and decides who takes part (``strict_start_job_reply_check``)."""
        settings = self.settings.job
        by_app: dict[str, list[str]] = {}
        for site in clients:
            by_app.setdefault(self.meta.app_for(site), []).append(site)
        joined, silent, refused = [], [], []
        for app, sites in by_app.items():
            replies = self.server.cell.broadcast(
                sites, p.CHANNEL_SITE, p.TOPIC_DEPLOY, zip_app(self.job_dir / app),
                headers={p.JOB_ID: self.job_id, p.APP: app}, timeout=settings.deploy_timeout,
            )
            for site, reply in replies.items():
                if reply.ok:
                    joined.append(site)
                elif reply.return_code == ReturnCode.TIMEOUT:
                    silent.append(site)
                else:
                    refused.append(f"{site} ({reply.error or reply.return_code})")
        if refused:
            log.error("could not deploy the job to %s", ", ".join(refused))
        if silent:
            if settings.strict_start_job_reply_check:
                log.warning("left out of the job: %s did not acknowledge it in deploy_timeout=%g s",
                            ", ".join(silent), settings.deploy_timeout)
            else:
                log.warning("%s did not acknowledge the job in deploy_timeout=%g s; kept in it "
                            "(strict_start_job_reply_check is off)", ", ".join(silent), settings.deploy_timeout)
                joined.extend(silent)
        with self._lock:
            for site in joined:
                if site not in self._clients:
                    self._clients.append(site)

    def _check_participants(self) -> None:
        running = self.alive_clients()
        missing = [site for site in self.meta.required_sites if site not in running]
        if missing:
            raise JobError(f"required site(s) {', '.join(missing)} are not running the job")
        if len(running) < self.meta.min_clients:
            raise JobError(
                f"the job runs on {len(running)} clients ({', '.join(running) or 'none'}), fewer than "
                f"min_clients={self.meta.min_clients}; raise deploy_timeout if clients are slow to start"
            )

    def _end_clients(self) -> None:
        with self._lock:
            tasks, clients = list(self._tasks), list(self._clients)
        for task in tasks:
            task.abort("the job ended")
        topic = p.TOPIC_ABORT if self.status == RunStatus.FINISHED_ABORTED else p.TOPIC_END
        if clients:
            self.server.cell.fire_and_forget(clients, p.CHANNEL_SITE, topic, None,
                                             headers={p.JOB_ID: self.job_id, p.REASON: self.status})


__all__ = ["ServerJob"]
