"""The federated server: registers clients, watches that they are alive, deploys and runs jobs, hands out tasks
and takes results."""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flare.apis.fl_constant import RunStatus
from flare.apis.signal import Signal
from flare.cellnet import Cell, Message, ReturnCode
from flare.config import JobSettings, RuntimeSettings
from flare.errors import JobError
from flare.fobs.via_downloader import LAZY_DOWNLOAD
from flare.runtime import protocol as p
from flare.runtime.protocol import HEARTBEAT_INTERVAL
from flare.runtime.server_job import ServerJob

log = logging.getLogger(__name__)


class ClientRecord:
    def __init__(self, name: str, heartbeat_interval: float):
        self.name = name
        self.heartbeat_interval = heartbeat_interval  # the client's own: silence is judged against it
        self.last_seen = time.monotonic()
        self.down_since: float | None = None
        self.alive = True


class FederatedServer:
    """The server of a federation: one cell that clients connect to, and the jobs it runs.

    Parameters
    ----------
    workspace:
        Folder for the server's part of every job (``<workspace>/<job_id>/``).
    listen:
        URL clients connect to; port 0 picks a free one (see ``url``).
    settings:
        ``RuntimeSettings``; default: defaults and environment.
    """

    def __init__(self, workspace: str | Path, *, listen: str = "tcp://127.0.0.1:0",
                 settings: RuntimeSettings | None = None):
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.settings = settings or RuntimeSettings.from_config()
        self.cell = Cell(p.SERVER_FQCN, listen=listen, settings=self.settings.comm)
        # results arrive with references to their tensors; workflows pull them as they fold them
        self.cell.fobs_ctx[LAZY_DOWNLOAD] = True
        self._clients: dict[str, ClientRecord] = {}
        self._lock = threading.Lock()
        self._jobs: dict[str, ServerJob] = {}
        self._closed = threading.Event()
        self.closed = self._closed  # set once the node shuts down
        # set by an admin's shutdown request; whoever runs the node closes it, after the request's reply is out
        self.shutdown_requested = threading.Event()
        self._monitor = threading.Thread(target=self._watch_clients, name="client-monitor", daemon=True)
        self.url: str | None = None

    def start(self) -> str:
        """Starts listening; returns the URL clients connect to."""
        for topic, cb in ((p.TOPIC_REGISTER, self._on_register), (p.TOPIC_HEARTBEAT, self._on_heartbeat)):
            self.cell.register_request_cb(p.CHANNEL_SITE, topic, cb)
        self.cell.register_request_cb(p.CHANNEL_TASK, p.TOPIC_GET_TASK, self._on_get_task)
        self.cell.register_request_cb(p.CHANNEL_TASK, p.TOPIC_SUBMIT, self._on_submit)
        self.cell.register_request_cb(p.CHANNEL_ADMIN, "*", self._on_admin)
        self.cell.on_peer_event(self._on_peer_event)
        self.cell.start()
        self.url = self.cell.url
        self._monitor.start()
        log.info("server listening on %s", self.url)
        return self.url  # type: ignore[return-value]

    # ---- clients ----
    def clients(self) -> list[str]:
        """Names of the clients registered and alive, in registration order."""
        with self._lock:
            return [c.name for c in self._clients.values() if c.alive]

    def wait_for_clients(self, count: int, timeout: float, abort_signal: Signal | None = None) -> list[str]:
        """The registered clients, once there are ``count``; raises ``JobError`` after ``timeout`` seconds, on
        shutdown, or once ``abort_signal`` is triggered."""
        deadline = time.monotonic() + timeout
        while True:
            clients = self.clients()
            if len(clients) >= count:
                return clients
            if abort_signal is not None and abort_signal.triggered:
                raise JobError("the job was aborted while it waited for its clients")
            if time.monotonic() > deadline:
                raise JobError(
                    f"{len(clients)} of the {count} clients the job needs registered within {timeout:g} s "
                    f"({', '.join(clients) or 'none'}); start more clients, lower min_clients, or raise "
                    "wait_for_clients_timeout"
                )
            if self._closed.wait(0.05):
                raise JobError("the server was shut down")

    def _seen(self, name: str) -> ClientRecord | None:
        with self._lock:
            record = self._clients.get(name)
            if record is not None and record.alive:
                record.last_seen = time.monotonic()
                record.down_since = None
            return record

    def _on_register(self, msg: Message) -> Any:
        name = msg.get_header(p.SITE) or msg.origin
        with self._lock:
            record = self._clients.get(name)
            rejoined = record is not None and not record.alive
            interval = float(msg.get_header(HEARTBEAT_INTERVAL) or self.settings.job.heart_beat_interval)
            self._clients[name] = ClientRecord(name, interval)
        log.info("client %s %s", name, "re-registered" if rejoined else "registered")
        for job in list(self._jobs.values()):
            job.client_joined(name)
        return {"ok": True}

    def _on_heartbeat(self, msg: Message) -> Any:
        if self._seen(msg.get_header(p.SITE) or msg.origin) is None:
            return Message.reply(ReturnCode.INVALID_REQUEST, "not registered")
        return None

    def _on_peer_event(self, event: str, name: str, reason: str) -> None:
        with self._lock:
            record = self._clients.get(name)
            if record is None or not record.alive:
                return
            if event == "down":
                record.down_since = time.monotonic()
                log.info("lost the connection to %s (%s)", name, reason or "closed")
            else:
                record.down_since = None
                record.last_seen = time.monotonic()

    def _watch_clients(self) -> None:
        """Drops clients that stay disconnected or silent too long. A job may allow less time than the server
        (its ``dead_client_grace_period``): it stops counting on such a client sooner."""
        while not self._closed.wait(0.1):
            now = time.monotonic()
            with self._lock:
                records = [r for r in self._clients.values() if r.alive]
            for job in list(self._jobs.values()):
                for record in records:
                    reason = self._silence(record, now, job.settings.job)
                    if reason is not None:
                        job.client_lost(record.name, reason, silent_only=record.down_since is None)
            for record in records:
                reason = self._silence(record, now, self.settings.job)
                if reason is None:
                    continue
                with self._lock:
                    record.alive = False
                log.warning("client %s is dead: %s (dead_client_grace_period)", record.name, reason)

    @staticmethod
    def _silence(record: ClientRecord, now: float, settings: JobSettings) -> str | None:
        """Why the client counts as dead under ``settings``, or None while it does not."""
        grace = settings.dead_client_grace_period
        down_since = record.down_since
        if down_since is not None and now - down_since > grace:
            return f"disconnected for more than {grace:g} s"
        silence = max(grace, 3 * record.heartbeat_interval)
        if now - record.last_seen > silence:
            return f"silent for more than {silence:g} s"
        return None

    # ---- jobs ----
    def submit_job(self, job_dir: str | Path, job_id: str | None = None) -> str:
        """Copies a job folder into the workspace and starts it; returns the job id."""
        job_id = job_id or str(uuid.uuid4())
        target = self.workspace / job_id / "job"
        shutil.copytree(job_dir, target, dirs_exist_ok=True)
        job = ServerJob(self, job_id, target)
        with self._lock:
            self._jobs[job_id] = job
        job.start()
        return job_id

    def job(self, job_id: str) -> ServerJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobError(f"no job {job_id!r} on this server")
        return job

    def job_status(self, job_id: str) -> str:
        return self.job(job_id).status

    def abort_job(self, job_id: str) -> None:
        self.job(job_id).abort("aborted by request")

    def _job_of(self, msg: Message) -> ServerJob | None:
        return self._jobs.get(msg.get_header(p.JOB_ID))

    def _on_get_task(self, msg: Message) -> Any:
        site = msg.get_header(p.SITE) or msg.origin
        self._seen(site)
        job = self._job_of(msg)
        if job is None:
            return Message({p.TASK_STATUS: p.TaskStatus.END, p.REASON: "no such job"})
        return job.next_task(site)

    def _on_submit(self, msg: Message) -> Any:
        site = msg.get_header(p.SITE) or msg.origin
        self._seen(site)
        job = self._job_of(msg)
        if job is None:
            return Message.reply(ReturnCode.INVALID_REQUEST, f"no job {msg.get_header(p.JOB_ID)!r}")
        error = msg.get_header(p.REASON)
        accepted = job.accept_result(site, msg.get_header(p.TASK_ID) or "", msg.payload, error)
        return Message({p.ACCEPTED: accepted})

    def _on_admin(self, msg: Message) -> Any:
        topic = msg.topic
        if topic == p.TOPIC_SUBMIT_JOB:
            return {"job_id": self.submit_job(msg.payload["job_dir"], msg.payload.get("job_id"))}
        if topic == p.TOPIC_JOB_STATUS:
            job = self.job(msg.payload["job_id"])
            return {"status": job.status, "error": job.error, "app_dir": str(job.app_dir),
                    "clients": job.alive_clients(), "registered": self.clients(), "startup_s": job.startup_seconds()}
        if topic == p.TOPIC_ABORT_JOB:
            self.abort_job(msg.payload["job_id"])
            return None
        if topic == p.TOPIC_SHUTDOWN:
            self.shutdown_requested.set()
            return None
        return Message.reply(ReturnCode.INVALID_REQUEST, f"unknown admin command {topic!r}")

    def close(self) -> None:
        """Aborts running jobs and closes the cell."""
        if self._closed.is_set():
            return
        self._closed.set()
        for job in list(self._jobs.values()):
            if job.status not in RunStatus.FINAL:
                job.abort("the server is shutting down")
        for job in list(self._jobs.values()):
            job.join(5.0)
        self.cell.close()


__all__ = ["FederatedServer"]
