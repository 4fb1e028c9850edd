"""``Recipe``: a federated job described by its parameters, run in an execution environment (``SimEnv``,
``PocEnv``) or exported as a job folder. NVFlare's methods and signatures."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from flare.errors import ConfigError
from flare.recipe.job_builder import FedJobConfig
from flare.recipe.run import Run

_FILTER_KEYS = {"task_data_filters", "task_result_filters"}


class ExecEnv(ABC):
    """Where a job runs. ``deploy`` starts it; the rest follow it by id."""

    @abstractmethod
    def deploy(self, job: FedJobConfig) -> str:
        """Starts the job; returns its id."""

    @abstractmethod
    def get_job_status(self, job_id: str) -> str | None:
        """NVFlare's status string (``RUNNING``, ``FINISHED:COMPLETED``, ...)."""

    @abstractmethod
    def abort_job(self, job_id: str) -> None: ...

    @abstractmethod
    def get_job_result(self, job_id: str, timeout: float = 0.0) -> str | None:
        """Waits for the job to end (``timeout`` 0: as long as it takes); the folder holding its results."""

    @abstractmethod
    def stop(self, clean_up: bool = False) -> None:
        """Stops what the env started."""


class Recipe:
    """Base of the recipes: holds the job being built; subclasses fill it from their parameters."""

    def __init__(self, job: FedJobConfig):
        self.job = job

    # ---- running ----
    def execute(self, env: ExecEnv, server_exec_params: dict | None = None,
                client_exec_params: dict | None = None) -> Run:
        """Runs the job in ``env``. ``python job.py --export [--export-dir DIR]`` exports it instead (to
        ``./fl_job`` by default) and exits."""
        if "--export" in sys.argv:
            args = sys.argv
            target = args[args.index("--export-dir") + 1] if "--export-dir" in args else "fl_job"
            path = self.export(target, server_exec_params, client_exec_params)
            print(f"job exported to {path}")
            raise SystemExit(0)
        return self.run(env, server_exec_params, client_exec_params)

    def run(self, env: ExecEnv, server_exec_params: dict | None = None,
            client_exec_params: dict | None = None) -> Run:
        """Runs the job in ``env``; returns a ``Run`` to follow it."""
        self._apply_exec_params(server_exec_params, client_exec_params)
        job_id = env.deploy(self.job)
        return Run(env, job_id)

    def export(self, job_dir: str | Path, server_exec_params: dict | None = None,
               client_exec_params: dict | None = None, env: ExecEnv | None = None) -> Path:
        """Writes the job folder ``<job_dir>/<name>``; returns its path."""
        self._apply_exec_params(server_exec_params, client_exec_params)
        return self.job.export(job_dir)

    def _apply_exec_params(self, server: dict | None, client: dict | None) -> None:
        if server:
            self.add_server_config(server)
        if client:
            self.add_client_config(client)

    # ---- configuration ----
    def add_client_config(self, config: dict[str, Any], clients: list[str] | None = None) -> None:
        """Runtime settings for clients (all, or ``clients``), e.g. ``{"get_task_timeout": 300}``; see
        docs/settings.md. Checked now: an unknown name raises ``ConfigError``."""
        _check_settings(config)
        for site in clients or [None]:
            self.job.client_config_for(site).update(config)

    def add_server_config(self, config: dict[str, Any]) -> None:
        """Runtime settings for the server, e.g. ``{"dead_client_grace_period": 30}``."""
        _check_settings(config)
        self.job.server.update(config)

    def set_per_site_config(self, config: dict[str, dict[str, Any]]) -> None:
        """Per-site values of the client executor's arguments, e.g. ``{"site-1": {"train_args": "--lr 0.1"}}``."""
        for site, values in config.items():
            executor = self.job.client_config_for(site)["executors"][0]["executor"]["args"]
            for key, value in values.items():
                executor[_EXECUTOR_ARG_NAMES.get(key, key)] = value

    def add_client_input_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """A filter applied to task data as a client receives it."""
        self._add_filter(self.job.client, "task_data_filters", filter, tasks)

    def add_client_output_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """A filter applied to results as a client sends them."""
        self._add_filter(self.job.client, "task_result_filters", filter, tasks)

    def add_server_input_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """A filter applied to results as the server receives them."""
        self._add_filter(self.job.server, "task_result_filters", filter, tasks)

    def add_server_output_filter(self, filter: Any, tasks: list[str] | None = None) -> None:
        """A filter applied to task data as the server sends it."""
        self._add_filter(self.job.server, "task_data_filters", filter, tasks)

    @staticmethod
    def _add_filter(config: dict[str, Any], key: str, filter: Any, tasks: list[str] | None) -> None:
        spec = component_spec(filter)
        config.setdefault(key, []).append({"tasks": list(tasks) if tasks else ["*"], "filters": [spec]})

    def add_client_file(self, file_path: str, clients: list[str] | None = None) -> None:
        self.job.add_file(file_path, server=False)

    def add_server_file(self, file_path: str) -> None:
        self.job.add_file(file_path, server=True)

    def add_decomposers(self, decomposers: list[Any]) -> None:
        """FOBS decomposers (objects or class paths) registered on every site when the job starts."""
        names = [d if isinstance(d, str) else f"{type(d).__module__}.{type(d).__qualname__}" for d in decomposers]
        for config in (self.job.server, self.job.client):
            config.setdefault("decomposers", []).extend(names)

    def enable_log_streaming(self, *file_names: str) -> None:
        """Site logs are written to each site's job workspace already; kept for NVFlare's API."""

    def enable_tensor_streaming(self, format: str = "pytorch", tasks: list[str] | None = None,
                                tensor_send_timeout: float = 30.0,
                                wait_send_task_data_all_clients_timeout: float = 300.0) -> None:
        """Tensors always travel one by one by download here (docs/tensors.md); kept for NVFlare's API."""


_EXECUTOR_ARG_NAMES = {"train_script": "script", "train_args": "script_args"}


def component_spec(obj: Any) -> dict[str, Any]:
    """A component written into a job configuration: its class path and the arguments it was built with (a
    component must keep them as ``self.<name>`` or in ``self.config_args``)."""
    if isinstance(obj, dict) and ("path" in obj or "class_path" in obj):
        return obj
    args = getattr(obj, "config_args", None)
    if args is None:
        import inspect

        params = inspect.signature(type(obj).__init__).parameters
        args = {n: getattr(obj, n) for n in params if n != "self" and hasattr(obj, n)}
    return {"path": f"{type(obj).__module__}.{type(obj).__qualname__}", "args": dict(args)}


def _check_settings(config: dict[str, Any]) -> None:
    from flare.config import RuntimeSettings

    if not isinstance(config, dict):
        raise ConfigError(f"a config must be a dict, got {type(config).__name__}")
    RuntimeSettings.from_config(config)


__all__ = ["ExecEnv", "Recipe", "component_spec"]
