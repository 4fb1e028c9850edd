"""``Run``: a job started by ``recipe.execute(env)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flare.recipe.spec import ExecEnv


class Run:
    def __init__(self, env: ExecEnv, job_id: str):
        self.env = env
        self.job_id = job_id

    def get_job_id(self) -> str:
        return self.job_id

    def get_status(self) -> str | None:
        """The job's status now (``RUNNING``, ``FINISHED:COMPLETED``, ``FINISHED:EXECUTION_EXCEPTION``, ...)."""
        return self.env.get_job_status(self.job_id)

    def get_result(self, timeout: float = 0.0, clean_up: bool = True) -> str | None:
        """Waits for the job to end (``timeout`` seconds, 0: as long as it takes) and returns the folder with its
        results; then, with ``clean_up``, stops the env's server and clients (results stay)."""
        try:
            return self.env.get_job_result(self.job_id, timeout=timeout)
        finally:
            if clean_up:
                self.env.stop(clean_up=True)

    def abort(self) -> None:
        self.env.abort_job(self.job_id)

    def __repr__(self) -> str:
        return f"Run({self.job_id!r})"


__all__ = ["Run"]
