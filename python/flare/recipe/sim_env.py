"""``SimEnv``: the server and every client in this process, each with a cell of its own on loopback TCP. The job
runs to its end inside ``recipe.execute(env)``, as NVFlare's simulator does."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from flare.apis.fl_constant import RunStatus
from flare.errors import ConfigError, JobError
from flare.recipe.job_builder import FedJobConfig
from flare.recipe.logs import configure_console
from flare.recipe.spec import ExecEnv

log = logging.getLogger(__name__)


def site_names(num_clients: int, clients: list[str] | None) -> list[str]:
    if clients:
        if num_clients and num_clients != len(clients):
            raise ConfigError(f"num_clients={num_clients} but {len(clients)} clients named; give one or match them")
        if len(set(clients)) != len(clients):
            raise ConfigError(f"client names must be unique: {clients}")
        return list(clients)
    if num_clients < 1:
        raise ConfigError("give num_clients (a positive int) or clients (a list of site names)")
    return [f"site-{i}" for i in range(1, num_clients + 1)]


class SimEnv(ExecEnv):
    """Runs a job's server and ``num_clients`` clients (or the ``clients`` named) in this process.

    ``num_threads`` caps how many sites work on a task at the same time (default: all). Results are written under
    ``workspace_root/<job name>/`` (``server/<job id>/app_server/`` holds the global model). ``log_config``:
    ``"concise"`` (default), ``"full"`` or ``"verbose"``.
    """

    def __init__(self, *, num_clients: int = 0, clients: list[str] | None = None, num_threads: int | None = None,
                 gpu_config: str | None = None, log_config: str | dict | None = None,
                 workspace_root: str = "/tmp/flare/simulation", extra: dict | None = None):
        self.sites = site_names(num_clients, clients)
        if num_threads is not None and num_threads < 1:
            raise ConfigError(f"num_threads must be at least 1, got {num_threads}")
        self.num_threads = num_threads or len(self.sites)
        self.log_config = log_config
        self.workspace_root = Path(workspace_root)
        self.extra = extra or {}
        self._server: Any = None
        self._clients: list[Any] = []
        self._results: dict[str, Path] = {}
        self._final: dict[str, str] = {}

    def deploy(self, job: FedJobConfig) -> str:
        from flare.runtime.client import FederatedClient
        from flare.runtime.server import FederatedServer

        configure_console(self.log_config)
        if len(self.sites) < job.min_clients:
            raise ConfigError(f"the job needs min_clients={job.min_clients} but SimEnv has {len(self.sites)} clients")
        workspace = self.workspace_root / job.name
        job_dir = job.export(workspace / "jobs")
        self.stop()
        self._server = FederatedServer(workspace / "server")
        url = self._server.start()
        slots = threading.Semaphore(self.num_threads)
        try:
            for site in self.sites:
                client = FederatedClient(site, url, workspace / site, task_slots=slots,
                                         sites_on_host=len(self.sites))
                self._clients.append(client)
                client.start()
            job_id = self._server.submit_job(job_dir)
            self._results[job_id] = workspace
            self._server.job(job_id).join(None)
            for client in self._clients:
                client.wait_jobs(60.0)
        except BaseException:
            self.stop()
            raise
        status = self._server.job_status(job_id)
        self._final[job_id] = status
        if status != RunStatus.FINISHED_COMPLETED:
            log.error("job %s ended %s: %s", job.name, status, self._server.job(job_id).error)
        return job_id

    def get_job_status(self, job_id: str) -> str | None:
        if job_id in self._final:
            return self._final[job_id]
        return self._server.job_status(job_id) if self._server else None

    def job_error(self, job_id: str) -> str | None:
        return self._server.job(job_id).error if self._server else None

    def abort_job(self, job_id: str) -> None:
        if self._server is not None:
            self._server.abort_job(job_id)

    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        if job_id not in self._results:
            raise JobError(f"no job {job_id!r} ran in this SimEnv")
        return str(self._results[job_id])

    def stop(self, clean_up: bool = False) -> None:
        for client in self._clients:
            client.close()
        self._clients = []
        if self._server is not None:
            self._server.close()
            self._server = None


__all__ = ["SimEnv"]
