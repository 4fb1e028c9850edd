"""What the FedAvg recipes share: the server's FedAvg workflow and persistor, and the clients' script runner."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from flare.apis.fl_constant import ExchangeFormat, TransferType
from flare.errors import ConfigError
from flare.recipe.job_builder import FedJobConfig
from flare.recipe.spec import Recipe, component_spec

PERSISTOR_ID = "persistor"


class FedAvgRecipeBase(Recipe):
    """Builds the job; subclasses say how the model becomes the persistor's initial checkpoint."""

    framework: str
    persistor_path: str
    workflow_path = "flare.workflows.fedavg.FedAvg"
    default_save_filename: str

    def __init__(
        self,
        *,
        name: str,
        min_clients: int,
        num_rounds: int,
        train_script: str,
        train_args: str,
        aggregator: Any,
        launch_external_process: bool,
        command: str,
        server_expected_format: str,
        params_transfer_type: str,
        model_persistor: Any,
        launch_once: bool,
        launch_timeout: float,
        shutdown_timeout: float,
        key_metric: str,
        key_metric_mode: str | None,
        stop_cond: str | None,
        patience: int | None,
        best_model_filename: str | None,
        save_filename: str | None,
        exclude_vars: str | None,
        aggregation_weights: dict[str, float] | None,
        server_memory_gc_rounds: int,
        client_memory_gc_rounds: int,
        cuda_empty_cache: bool,
        per_site_config: dict[str, dict] | None,
        quantization: str | None = None,
    ):
        super().__init__(FedJobConfig(name, min_clients))
        if type(num_rounds) is not int or num_rounds < 1:
            raise ConfigError(f"num_rounds must be a positive int, got {num_rounds!r}")
        script = Path(train_script)
        if not script.is_file():
            raise ConfigError(f"train_script {train_script!r} does not exist (relative to {Path.cwd()})")
        if str(params_transfer_type).upper() not in (TransferType.FULL, TransferType.DIFF):
            raise ConfigError(f"params_transfer_type must be FULL or DIFF, got {params_transfer_type!r}")
        if server_expected_format not in (ExchangeFormat.NUMPY, ExchangeFormat.PYTORCH):
            raise ConfigError(f"server_expected_format must be 'numpy' or 'pytorch', got {server_expected_format!r}")
        for field, value in (("server_memory_gc_rounds", server_memory_gc_rounds),
                             ("client_memory_gc_rounds", client_memory_gc_rounds)):
            if type(value) is not int or value < 0:
                raise ConfigError(f"{field} must be a non-negative int, got {value!r}")
        self.server_expected_format = server_expected_format
        self.save_filename = save_filename or self.default_save_filename
        workflow_args: dict[str, Any] = {
            "num_clients": min_clients,
            "num_rounds": num_rounds,
            "persistor_id": PERSISTOR_ID,
            "task_name": "train",
            "stop_cond": stop_cond,
            "patience": patience,
            "key_metric": key_metric,
            "key_metric_mode": key_metric_mode,
            "exclude_vars": exclude_vars,
            "aggregation_weights": aggregation_weights,
            "memory_gc_rounds": server_memory_gc_rounds,
            "best_model_filename": best_model_filename,
        }
        if aggregator is not None:
            workflow_args["aggregator"] = component_spec(aggregator)
        self.job.server["workflows"].append({"id": "controller", "path": self.workflow_path,
                                             "args": _drop_none(workflow_args)})
        if model_persistor is not None:
            persistor = component_spec(model_persistor)
        else:
            persistor = {"path": self.persistor_path, "args": self.persistor_args()}
        self.job.server["components"].append({"id": PERSISTOR_ID, **persistor})
        self.job.client["executors"].append({"tasks": ["*"], "executor": {
            "path": "flare.runtime.executor.ScriptExecutor",
            "args": {
                "script": script.name,
                "script_args": train_args,
                "launch_external_process": launch_external_process,
                "command": command,
                "framework": self.framework,
                "server_expected_format": server_expected_format,
                "params_transfer_type": str(params_transfer_type).upper(),
                "launch_once": launch_once,
                "launch_timeout": launch_timeout,
                "shutdown_timeout": shutdown_timeout,
                "memory_gc_rounds": client_memory_gc_rounds,
                "cuda_empty_cache": cuda_empty_cache,
            },
        }})
        self.job.add_file(script, server=False)
        if per_site_config:
            self.set_per_site_config(per_site_config)
        if quantization is not None:
            from flare.filters.quantization import add_quantization_filters

            add_quantization_filters(self, quantization)

    def persistor_args(self) -> dict[str, Any]:
        raise NotImplementedError


def module_file_of(obj: Any) -> Path | None:
    """The source file that defines ``obj``'s class, when it is a user module (shipped with the job so that the
    training script can import it, as NVFlare does)."""
    module = inspect.getmodule(type(obj))
    path = getattr(module, "__file__", None)
    if not path or module is None or module.__name__.startswith(("flare.", "torch", "numpy")):
        return None
    return Path(path)


def _drop_none(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


__all__ = ["FedAvgRecipeBase", "PERSISTOR_ID", "module_file_of"]
