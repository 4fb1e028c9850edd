"""``ScriptExecutor``: runs a site's training script for a job, in the client process or as a process of its own,
and connects it to the task exchange (NVFlare's ScriptRunner / ClientAPIExecutor arguments)."""

from __future__ import annotations

import logging
import runpy
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare.apis.fl_constant import ExchangeFormat, FrameworkType, TransferType
from flare.app_common.abstract.fl_model import FLModel
from flare.client.exchange import ClientAPIConfig, TaskAssignment, bound
from flare.errors import ConfigError, JobError
from flare.runtime.protocol import SERVER_FQCN

if TYPE_CHECKING:
    from flare.runtime.client_job import ClientJob

log = logging.getLogger(__name__)

_EXCHANGE_FORMATS = {
    FrameworkType.PYTORCH: ExchangeFormat.PYTORCH,
    FrameworkType.NUMPY: ExchangeFormat.NUMPY,
    FrameworkType.TENSORFLOW: ExchangeFormat.KERAS_LAYER_WEIGHTS,
    FrameworkType.RAW: ExchangeFormat.RAW,
}


class ScriptExecutor:
    """Runs ``script`` with ``script_args`` for every task of the job. Arguments are NVFlare's ScriptRunner's."""

    def __init__(
        self,
        script: str,
        script_args: str = "",
        launch_external_process: bool = False,
        command: str = "python3 -u",
        framework: str = FrameworkType.PYTORCH,
        server_expected_format: str = ExchangeFormat.NUMPY,
        params_transfer_type: str = TransferType.FULL,
        launch_once: bool = True,
        launch_timeout: float = 300.0,
        shutdown_timeout: float = 0.0,
        memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        train_task_name: str = "train",
        evaluate_task_name: str = "validate",
        submit_model_task_name: str = "submit_model",
    ):
        if framework not in _EXCHANGE_FORMATS:
            raise ConfigError(f"framework must be one of {sorted(_EXCHANGE_FORMATS)}, got {framework!r}")
        if str(params_transfer_type).upper() not in (TransferType.FULL, TransferType.DIFF):
            raise ConfigError(f"params_transfer_type must be FULL or DIFF, got {params_transfer_type!r}")
        if server_expected_format not in (ExchangeFormat.NUMPY, ExchangeFormat.PYTORCH, ExchangeFormat.RAW):
            raise ConfigError(f"server_expected_format must be 'numpy' or 'pytorch', got {server_expected_format!r}")
        self.script = script
        self.script_args = script_args
        self.launch_external_process = launch_external_process
        self.command = command
        self.launch_once = launch_once
        self.launch_timeout = launch_timeout
        self.shutdown_timeout = shutdown_timeout
        self.api_config = ClientAPIConfig(
            params_exchange_format=_EXCHANGE_FORMATS[framework],
            server_expected_format=server_expected_format,
            transfer_type=str(params_transfer_type).upper(),
            train_task_name=train_task_name,
            eval_task_name=evaluate_task_name,
            submit_model_task_name=submit_model_task_name,
            memory_gc_rounds=memory_gc_rounds,
            cuda_empty_cache=cuda_empty_cache,
        )

    def script_path(self, job: ClientJob) -> Path:
        path = job.app_dir / "custom" / self.script
        if not path.is_file():
            raise JobError(f"the training script {self.script!r} is not in the job's custom folder ({path.parent})")
        return path

    def run(self, job: ClientJob) -> None:
        """Runs the script until the job ends for this site."""
        if self.launch_external_process:
            from flare.runtime.external import run_external

            run_external(self, job)
            return
        path = self.script_path(job)
        exchange = InProcessExchange(job, self.api_config)
        self.repeat_until_job_ends(job, lambda: _run_script_in_thread(path, self.script_args, exchange, job))

    def repeat_until_job_ends(self, job: ClientJob, run_script: Callable[[], None]) -> None:
        """Runs the script once (``launch_once``), or again after each run, until the job ends for this site."""
        while True:
            run_script()
            if job.tasks.ended or job.abort_signal.triggered:
                return
            if self.launch_once:
                raise JobError(
                    f"the training script {self.script} ended while the job still runs: it must loop "
                    "'while flare.is_running()' (or set launch_once=False to start it for each task)"
                )


class InProcessExchange:
    """The task exchange of a script running in the client process: tasks are pulled in full before the script
    sees them; results go to the server from here."""

    def __init__(self, job: ClientJob, config: ClientAPIConfig):
        self.job = job
        self.site_name = job.site
        self.job_id = job.job_id
        self.config = config

    def fetch_task(self, timeout: float | None) -> TaskAssignment | None:
        from flare.fobs.lazy import resolve

        task = self.job.fetch(timeout)
        if task is not None:
            resolve(task.model)
            task.model = self.job.filters.receive(task.model, task.name, SERVER_FQCN)
        return task

    def submit_result(self, task: TaskAssignment, result: FLModel) -> None:
        self.job.submit(task, self.job.filters.send(result, task.name, SERVER_FQCN))

    def log(self, key: str, value: Any, data_type: str, **kwargs: Any) -> None:
        self.job.record_metric({"site": self.site_name, "key": key, "value": value, "type": str(data_type), **kwargs})

    def close(self) -> None:
        """Nothing to release: the job owns the connection."""


class _ThreadArgv(list):  # type: ignore[type-arg]
    """``sys.argv`` while in-process scripts run: each script thread sees its own arguments, so that sites of one
    simulation with different ``train_args`` do not see each other's."""

    def __init__(self, default: list[str]):
        super().__init__(default)
        self.local = threading.local()

    def _current(self) -> list[str]:
        return getattr(self.local, "argv", None) or list(super().__iter__())

    def __getitem__(self, index: Any) -> Any:
        return self._current()[index]

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Any:
        return iter(self._current())

    def __repr__(self) -> str:
        return repr(self._current())


_argv_lock = threading.Lock()


def _run_script_in_thread(path: Path, script_args: str, exchange: InProcessExchange, job: ClientJob) -> None:
    import shlex

    failure: list[BaseException] = []

    def target() -> None:
        with _argv_lock:
            if not isinstance(sys.argv, _ThreadArgv):
                sys.argv = _ThreadArgv(sys.argv)
        sys.argv.local.argv = [str(path), *shlex.split(script_args)]  # type: ignore[attr-defined]
        try:
            with bound(exchange):
                runpy.run_path(str(path), run_name="__main__")
        except SystemExit as e:
            if e.code not in (None, 0):
                failure.append(JobError(f"the training script exited with {e.code}"))
        except BaseException as e:  # the script's failure is the site's failure, reported with its text
            log.exception("%s: the training script failed", job.site)
            failure.append(e)

    from flare.runtime.sitelog import start_thread

    thread = start_thread(target, f"{job.site}-script")
    while thread.is_alive():
        thread.join(0.2)
        if job.abort_signal.triggered and thread.is_alive():
            # a thread cannot be stopped from outside: the script sees the end at its next flare call
            job.tasks.ended = True
    if failure:
        e = failure[0]
        raise JobError(f"the training script {path.name} failed: {type(e).__name__}: {e}") from e


__all__ = ["InProcessExchange", "ScriptExecutor"]
