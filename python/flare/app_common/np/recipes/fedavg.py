"""``NumpyFedAvgRecipe``: federated averaging of numpy models, NVFlare 2.7's parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flare.apis.fl_constant import ExchangeFormat, FrameworkType, TransferType
from flare.app_common.np.constants import NPConstants
from flare.errors import ConfigError
from flare.recipe.fedavg import FedAvgRecipeBase

INITIAL_SINGLE = "initial_model.npy"
INITIAL_DICT = "initial_model.npz"


class NumpyFedAvgRecipe(FedAvgRecipeBase):
    """Federated averaging of a numpy model: ``model`` is a nested list, an array (carried as
    ``{"numpy_key": array}``, NVFlare's key) or a dict of arrays; or ``initial_ckpt`` names a ``.npy`` / ``.npz``
    file. Results are saved as ``FL_global_model.npy`` (one array) or ``.npz`` (a dict). ``quantization`` names a
    quantization type for the train task's messages both ways (docs/quantization.md). ``aggregator_data_kind`` is
    accepted for NVFlare's signature and has no effect (results carry weights or differences by ``params_type``)."""

    framework = FrameworkType.NUMPY
    persistor_path = "flare.app_common.np.np_model_persistor.NPModelPersistor"

    def __init__(
        self,
        *,
        name: str = "fedavg",
        model: Any = None,
        initial_model: Any = None,
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
        client_memory_gc_rounds: int = 0,
        cuda_empty_cache: bool = False,
        quantization: str | None = None,
    ):
        import numpy as np

        model = model if model is not None else initial_model
        if model is None and initial_ckpt is None and model_persistor is None:
            raise ConfigError("give model (a list, an array or a dict of arrays), initial_ckpt or model_persistor")
        if model is not None and not isinstance(model, dict):
            try:
                model = {NPConstants.NUMPY_KEY: np.asarray(model, dtype=np.float32 if isinstance(model, list)
                                                           else None)}
            except ValueError as e:
                raise ConfigError(f"model must be a rectangular nested list or an array: {e}") from None
        elif isinstance(model, dict):
            model = {str(k): np.asarray(v) for k, v in model.items()}
        self.params = model
        self.initial_ckpt = initial_ckpt
        single = model is None or list(model) == [NPConstants.NUMPY_KEY]
        if initial_ckpt is not None:
            single = Path(initial_ckpt).suffix == ".npy"
        self.default_save_filename = "FL_global_model.npy" if single else "FL_global_model.npz"
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

    def persistor_args(self) -> dict[str, Any]:
        import numpy as np

        save = {"save_filename": self.save_filename}
        if self.initial_ckpt is not None:
            ckpt = Path(self.initial_ckpt)
            if ckpt.is_absolute():
                return {"initial_ckpt": str(ckpt), **save}
            if not ckpt.is_file():
                raise ConfigError(f"initial_ckpt {self.initial_ckpt!r} does not exist")
            self.job.add_file(ckpt, server=True)
            return {"initial_ckpt": ckpt.name, **save}
        params = self.params
        assert params is not None
        if list(params) == [NPConstants.NUMPY_KEY]:
            array = params[NPConstants.NUMPY_KEY]
            self.job.server_writers[INITIAL_SINGLE] = lambda path: np.save(path, array)
            return {"initial_ckpt": INITIAL_SINGLE, **save}

        def write(path: Path) -> None:
            with open(path, "wb") as out:
                np.savez(out, **params)

        self.job.server_writers[INITIAL_DICT] = write
        return {"initial_ckpt": INITIAL_DICT, **save}


__all__ = ["NumpyFedAvgRecipe"]
