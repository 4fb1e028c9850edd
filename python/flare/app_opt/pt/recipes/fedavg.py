"""``FedAvgRecipe`` for PyTorch models, NVFlare 2.7's parameters."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from flare.apis.fl_constant import ExchangeFormat, FrameworkType, TransferType
from flare.errors import ConfigError
from flare.recipe.fedavg import FedAvgRecipeBase, module_file_of

INITIAL_MODEL = "initial_model.pt"


class FedAvgRecipe(FedAvgRecipeBase):
    """Federated averaging of a PyTorch model.

    ``model`` is an ``nn.Module`` or ``{"class_path" (or "path"): "module.Class", "args": {...}}``; its weights
    become the initial global model (``initial_ckpt``, a ``.pt``/``.safetensors`` file, wins when given; an absolute
    path may exist on the server only). The rest are NVFlare's FedAvgRecipe parameters, plus ``quantization``: a
    quantization type (``"float16"``, ``"bfloat16"``, ``"blockwise8"``, ``"float4"``, ``"normfloat4"``/``"nf4"``,
    ``"adaquant"``) for the train task's messages both ways, or None (docs/quantization.md).

    Accepted for NVFlare's signature and without effect here: ``aggregator_data_kind`` (results always carry
    weights or weight differences, by ``params_type``), ``model_locator`` and ``enable_tensor_disk_offload`` (the
    server folds results as they arrive instead of keeping them).
    """

    framework = FrameworkType.PYTORCH
    persistor_path = "flare.app_opt.pt.file_model_persistor.PTFileModelPersistor"
    workflow_path = "flare.app_opt.pt.fedavg.PTFedAvg"
    default_save_filename = "FL_global_model.pt"

    def __init__(
        self,
        *,
        name: str = "fedavg",
        model: Any = None,
        initial_ckpt: str | None = None,
        min_clients: int,
        num_rounds: int = 2,
        train_script: str,
        train_args: str = "",
        aggregator: Any = None,
        aggregator_data_kind: Any = None,
        launch_external_process: bool = False,
        command: str = "python3 -u",
        server_expected_format: str = ExchangeFormat.NUMPY,
        params_transfer_type: str = TransferType.FULL,
        model_persistor: Any = None,
        model_locator: Any = None,
        per_site_config: dict[str, dict] | None = None,
        launch_once: bool = True,
        launch_timeout: float = 300.0,
        shutdown_timeout: float = 0.0,
        key_metric: str = "accuracy",
        key_metric_mode: str | None = None,
        stop_cond: str | None = None,
        patience: int | None = None,
        best_model_filename: str | None = None,
        save_filename: str | None = None,
        exclude_vars: str | None = None,
        aggregation_weights: dict[str, float] | None = None,
        server_memory_gc_rounds: int = 0,
        enable_tensor_disk_offload: bool = False,
        client_memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        quantization: str | None = None,
    ):
        if model is None and initial_ckpt is None and model_persistor is None:
            raise ConfigError("give model (an nn.Module or a class_path dict), initial_ckpt or model_persistor")
        self.model = _instantiate(model) if isinstance(model, dict) else model
        self.initial_ckpt = initial_ckpt
        super().__init__(
            name=name, min_clients=min_clients, num_rounds=num_rounds, train_script=train_script,
            train_args=train_args, aggregator=aggregator, launch_external_process=launch_external_process,
            command=command, server_expected_format=server_expected_format,
            params_transfer_type=params_transfer_type, model_persistor=model_persistor, launch_once=launch_once,
            launch_timeout=launch_timeout, shutdown_timeout=shutdown_timeout, key_metric=key_metric,
            key_metric_mode=key_metric_mode, stop_cond=stop_cond, patience=patience,
            best_model_filename=best_model_filename, save_filename=save_filename, exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights, server_memory_gc_rounds=server_memory_gc_rounds,
            client_memory_gc_rounds=client_memory_gc_rounds, cuda_empty_cache=cuda_empty_cache,
            per_site_config=per_site_config, quantization=quantization,
        )
        source = module_file_of(self.model) if self.model is not None else None
        if source is not None and source.name != Path(train_script).name:
            self.job.add_file(source, server=False)

    def persistor_args(self) -> dict[str, Any]:
        allow_numpy = self.server_expected_format != ExchangeFormat.PYTORCH
        common = {"allow_numpy_conversion": allow_numpy, "save_filename": self.save_filename}
        if self.initial_ckpt is not None:
            ckpt = Path(self.initial_ckpt)
            if not ckpt.is_absolute():
                # a relative checkpoint ships with the job
                if not ckpt.is_file():
                    raise ConfigError(f"initial_ckpt {self.initial_ckpt!r} does not exist")
                self.job.add_file(ckpt, server=True)
                return {"initial_ckpt": ckpt.name, **common}
            return {"initial_ckpt": str(ckpt), **common}
        state_dict = _state_dict_of(self.model)

        def write(path: Path) -> None:
            import torch

            torch.save({"model": state_dict}, path)

        self.job.server_writers[INITIAL_MODEL] = write
        return {"initial_ckpt": INITIAL_MODEL, **common}


def _instantiate(spec: dict[str, Any]) -> Any:
    path = spec.get("class_path") or spec.get("path")
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"model dict needs 'class_path': 'module.Class', got {spec!r}")
    module_name, _, attr = path.rpartition(".")
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model class_path {path!r} cannot be loaded: {e}") from None
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))
    return cls(**(spec.get("args") or {}))


def _state_dict_of(model: Any) -> dict[str, Any]:
    state_dict = getattr(model, "state_dict", None)
    if not callable(state_dict):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    return {k: v.detach().cpu() for k, v in state_dict().items()}


__all__ = ["FedAvgRecipe"]
