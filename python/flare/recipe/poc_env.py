"""``PocEnv``: the server and each client as separate processes on this machine, talking over loopback TCP,
started by the env and stopped by it (``run.get_result()`` or ``env.stop()``)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from flare.apis.fl_constant import RunStatus
from flare.cellnet import Cell
from flare.errors import ConfigError, JobError
from flare.recipe.job_builder import FedJobConfig
from flare.recipe.sim_env import site_names
from flare.recipe.spec import ExecEnv
from flare.runtime import protocol as p

log = logging.getLogger(__name__)
START_TIMEOUT = 60.0


class PocEnv(ExecEnv):
    """Runs a job on a proof-of-concept deployment: a server process and ``num_clients`` client processes.

    Results and each process's log are under ``workspace_root`` (default ``/tmp/flare/poc``, or ``extra=
    {"workspace_root": ...}``). ``gpu_ids``, ``use_he``, ``docker_image``, ``project_conf_path``, ``username`` and
    ``study`` are NVFlare's parameters; only their defaults are supported here.
    """

    def __init__(self, *, num_clients: int = 2, clients: list[str] | None = None, gpu_ids: list[int] | None = None,
                 use_he: bool = False, docker_image: str | None = None, project_conf_path: str = "",
                 username: str = "admin@nvidia.com", study: str = "default", extra: dict | None = None):
        if use_he or docker_image or project_conf_path:
            raise ConfigError("PocEnv does not support use_he, docker_image or project_conf_path yet")
        self.sites = site_names(0 if clients else num_clients, clients)
        self.extra = dict(extra or {})
        self.workspace_root = Path(self.extra.pop("workspace_root", "/tmp/flare/poc"))
        self.job_settings: dict[str, Any] = self.extra.pop("settings", {})
        self.processes: dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]
        self._admin: Cell | None = None
        self._final: dict[str, str] = {}

    # ---- processes ----
    def start(self) -> None:
        """Starts the server and client processes (``deploy`` does this when needed)."""
        if self._admin is not None:
            return
        self.workspace_root.mkdir(parents=True, exist_ok=True)
        url_file = self.workspace_root / "server.url"
        url_file.unlink(missing_ok=True)
        self._spawn("server", ["server", "--workspace", str(self.workspace_root / "server"),
                               "--url-file", str(url_file)])
        deadline = time.monotonic() + START_TIMEOUT
        while not url_file.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                self.stop()
                raise JobError(f"the server process did not start within {START_TIMEOUT:g} s; see its log")
            time.sleep(0.05)
        url = url_file.read_text().strip()
        for site in self.sites:
            self._spawn(site, ["client", "--name", site, "--server", url,
                               "--workspace", str(self.workspace_root / site),
                               "--sites-on-host", str(len(self.sites))])
        self._admin = Cell(f"admin-{os.getpid()}", parent_url=url).start()
        if not self._admin.wait_for_peer(p.SERVER_FQCN, START_TIMEOUT):
            self.stop()
            raise JobError("could not connect to the server process")

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self.workspace_root / f"{name}.process.log"
        env = {**os.environ, **{f"FLARE_{k.upper()}": str(v) for k, v in self.job_settings.items()}}
        with open(log_path, "ab") as out:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "flare.runtime", *args], stdout=out, stderr=subprocess.STDOUT, env=env,
                close_fds=True,
            )

    def _check_alive(self) -> None:
        server = self.processes.get("server")
        if server is not None and server.poll() is not None:
            raise JobError(f"the server process exited with {server.returncode}; see "
                           f"{self.workspace_root / 'server.process.log'}")

    def _admin_request(self, topic: str, payload: dict[str, Any], timeout: float = 30.0) -> Any:
        if self._admin is None:
            raise JobError("the POC deployment is not running")
        reply = self._admin.request(p.SERVER_FQCN, p.CHANNEL_ADMIN, topic, payload, timeout=timeout)
        reply.raise_for_status()
        return reply.payload

    # ---- ExecEnv ----
    def deploy(self, job: FedJobConfig) -> str:
        if len(self.sites) < job.min_clients:
            raise ConfigError(f"the job needs min_clients={job.min_clients} but PocEnv has {len(self.sites)} clients")
        self.start()
        job_dir = job.export(self.workspace_root / "jobs")
        return self._admin_request(p.TOPIC_SUBMIT_JOB, {"job_dir": str(job_dir.resolve())})["job_id"]

    def get_job_status(self, job_id: str) -> str | None:
        if job_id in self._final:
            return self._final[job_id]
        return self._admin_request(p.TOPIC_JOB_STATUS, {"job_id": job_id})["status"]

    def job_error(self, job_id: str) -> str | None:
        return self._admin_request(p.TOPIC_JOB_STATUS, {"job_id": job_id})["error"]

    def abort_job(self, job_id: str) -> None:
        self._admin_request(p.TOPIC_ABORT_JOB, {"job_id": job_id})

    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        deadline = time.monotonic() + timeout if timeout > 0 else None
        while True:
            self._check_alive()
            state = self._admin_request(p.TOPIC_JOB_STATUS, {"job_id": job_id})
            if state["status"] in RunStatus.FINAL:
                self._final[job_id] = state["status"]
                if state["status"] != RunStatus.FINISHED_COMPLETED:
                    log.error("job %s ended %s: %s", job_id, state["status"], state["error"])
                return str(self.workspace_root)
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.2)

    def stop(self, clean_up: bool = False) -> None:
        if self._admin is not None:
            try:
                self._admin_request(p.TOPIC_SHUTDOWN, {}, timeout=5.0)
            except Exception as e:  # the server may be gone already; the processes are stopped below either way
                log.debug("shutdown request: %s", e)
            self._admin.close()
            self._admin = None
        for name, process in self.processes.items():
            if process.poll() is None:
                process.terminate()
        for name, process in self.processes.items():
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 10 s: killing it", name)
                process.kill()
                process.wait()
        self.processes = {}


__all__ = ["PocEnv"]
