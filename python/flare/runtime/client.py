"""The federated client of a site: registers with the server, keeps telling it that the site is alive, and runs the
jobs the server deploys to it."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from flare.cellnet import Cell, Message, ReturnCode
from flare.config import RuntimeSettings
from flare.errors import JobError
from flare.fobs.via_downloader import LAZY_DOWNLOAD
from flare.runtime import protocol as p
from flare.runtime.client_job import ClientJob
from flare.runtime.job import unzip_app

log = logging.getLogger(__name__)


class FederatedClient:
    """One site. Its cell connects to the server and listens on loopback for the site's training processes.

    Parameters
    ----------
    name:
        The site's name (``site-1``), its cell's FQCN.
    server_url:
        The server's URL (``tcp://host:port``).
    workspace:
        Folder for the site's part of every job (``<workspace>/<job_id>/``).
    settings:
        ``RuntimeSettings``; default: defaults and environment.
    task_slots:
        Shared by the sites of a simulation to cap how many work on a task at once.
    sites_on_host:
        How many sites share this machine (SimEnv, PocEnv): their training processes split its CPU threads.
    """

    def __init__(self, name: str, server_url: str, workspace: str | Path, *,
                 settings: RuntimeSettings | None = None, task_slots: threading.Semaphore | None = None,
                 sites_on_host: int = 1):
        self.name = name
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.settings = settings or RuntimeSettings.from_config()
        self.cell = Cell(name, parent_url=server_url, listen="tcp://127.0.0.1:0", settings=self.settings.comm)
        # task data arrives with references: a script in this process pulls it, an external one pulls it itself
        self.cell.fobs_ctx[LAZY_DOWNLOAD] = True
        self.jobs: dict[str, ClientJob] = {}
        self._deploy_lock = threading.Lock()
        self.task_slots = task_slots
        self.sites_on_host = max(1, sites_on_host)
        self._closed = threading.Event()
        self.closed = self._closed  # set once the node shuts down
        self._heartbeat = threading.Thread(target=self._beat, name=f"{name}-heartbeat", daemon=True)

    def start(self) -> None:
        """Connects and registers; raises ``JobError`` when the server cannot be reached in
        ``registration_timeout``."""
        for topic, cb in ((p.TOPIC_DEPLOY, self._on_deploy), (p.TOPIC_ABORT, self._on_abort),
                          (p.TOPIC_END, self._on_end)):
            self.cell.register_request_cb(p.CHANNEL_SITE, topic, cb)
        self.cell.register_request_cb(p.CHANNEL_TASK, p.TOPIC_TASK_READY, self._on_task_ready)
        self.cell.start()
        self._register()
        self._heartbeat.start()

    def _register(self) -> None:
        job = self.settings.job
        deadline = time.monotonic() + job.registration_timeout
        while not self._closed.is_set():
            headers = {p.SITE: self.name, p.HEARTBEAT_INTERVAL: job.heart_beat_interval}
            reply = self.cell.request(p.SERVER_FQCN, p.CHANNEL_SITE, p.TOPIC_REGISTER, None, headers=headers,
                                      timeout=job.client_register_interval + 5)
            if reply.ok:
                log.info("%s registered with the server", self.name)
                return
            if time.monotonic() > deadline:
                raise JobError(
                    f"{self.name} could not register with the server within {job.registration_timeout:g} s: "
                    f"{reply.error or reply.return_code}; check the server URL or raise registration_timeout"
                )
            self._closed.wait(job.client_register_interval)

    def _beat(self) -> None:
        interval = self.settings.job.heart_beat_interval
        while not self._closed.wait(interval):
            self.cell.fire_and_forget(p.SERVER_FQCN, p.CHANNEL_SITE, p.TOPIC_HEARTBEAT, None,
                                      headers={p.SITE: self.name})

    def _on_deploy(self, msg: Message) -> Any:
        for field in (p.JOB_ID, p.APP):
            if not msg.get_header(field):
                raise RuntimeError(f"job metadata is missing {field!r}: the deployment cannot be run")
        if msg.payload is None:
            raise RuntimeError("job metadata is missing the app: the deployment carries no files")
        job_id = msg.get_header(p.JOB_ID)
        # one at a time: a site that registers while a job starts is deployed to by the job's start and as it
        # joins, at once, and two jobs of one id would run two training scripts
        with self._deploy_lock:
            previous = self.jobs.get(job_id)
            if previous is not None and previous.is_alive():
                return None  # already running it: a repeated deployment
            job_dir = self.workspace / job_id
            unzip_app(msg.payload, job_dir / f"app_{self.name}")
            job = ClientJob(self, job_id, job_dir)
            self.jobs[job_id] = job
            job.start()
        return None

    def _job(self, msg: Message) -> ClientJob | None:
        return self.jobs.get(msg.get_header(p.JOB_ID))

    def _on_abort(self, msg: Message) -> Any:
        job = self._job(msg)
        if job is None:
            return Message.reply(ReturnCode.INVALID_REQUEST, "no such job")
        job.abort(msg.get_header(p.REASON) or "aborted by the server")
        return None

    def _on_task_ready(self, msg: Message) -> Any:
        job = self._job(msg)
        if job is not None:
            job.task_ready()
        return None

    def _on_end(self, msg: Message) -> Any:
        job = self._job(msg)
        if job is not None:
            job.server_ended()
        return None

    def wait_jobs(self, timeout: float) -> bool:
        """Waits for the site's jobs to end; False if some still run after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        return all(job.join(max(deadline - time.monotonic(), 0.0)) for job in list(self.jobs.values()))

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for job in list(self.jobs.values()):
            job.abort("the client is shutting down")
        for job in list(self.jobs.values()):
            job.join(5.0)
        self.cell.close()


__all__ = ["FederatedClient"]
