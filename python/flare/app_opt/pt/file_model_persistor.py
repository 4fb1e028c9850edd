"""``PTFileModelPersistor``: PyTorch models in ``.pt``/``.pth`` or ``.safetensors`` files, at NVFlare's path.

Saves use NVFlare's layout, ``torch.save({"model": state_dict}, path)``; loads accept that layout or a bare state
dict. ``.pt`` files are loaded with ``weights_only=True`` (no pickled code runs) and memory-mapped
(``mmap=True``, copy-on-write) so that a large checkpoint is not read into memory twice; ``.safetensors`` files are
mapped the same way.

The server holds numpy arrays when its clients exchange numpy (NVFlare's ``server_expected_format="numpy"``, the
default): with ``allow_numpy_conversion`` the loaded tensors are handed over as ``tensor.numpy()``, views of the same
memory. Tensors of dtypes numpy lacks (bfloat16, float8) stay torch tensors. Saving turns numpy arrays back into
tensors with ``torch.from_numpy``, again without a copy.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.app_common.abstract.model_persistor import (
    ModelPersistor,
    atomic_write,
    load_safetensors,
    save_safetensors,
)
from flare.errors import ConfigError
from flare.tensors.safetensors import is_torch

SUFFIXES = (".pt", ".pth", ".safetensors")
MODEL_KEY = "model"  # NVFlare's key of the state dict in a saved checkpoint


class PTFileModelPersistor(ModelPersistor):
    """Loads and saves PyTorch state dicts.

    Parameters
    ----------
    model
        An ``nn.Module`` (its ``state_dict()``) or a state dict: the initial model when there is no
        ``initial_ckpt``.
    initial_ckpt
        A ``.pt``/``.pth`` or ``.safetensors`` checkpoint to start from; its weights win over ``model``'s.
    save_filename
        Where ``save_model`` writes by default, relative to the job's app directory; its suffix picks the format.
    allow_numpy_conversion
        Hand the loaded parameters to the workflow as numpy arrays (views, no copy) where numpy has their dtype.
    """

    def __init__(
        self,
        *,
        model: Any = None,
        initial_ckpt: str | os.PathLike | None = None,
        save_filename: str | os.PathLike = "FL_global_model.pt",
        allow_numpy_conversion: bool = True,
    ):
        super().__init__(initial_ckpt=initial_ckpt, save_filename=save_filename)
        for setting, name in (("save_filename", save_filename), ("initial_ckpt", initial_ckpt)):
            if name is not None and Path(name).suffix not in SUFFIXES:
                raise ConfigError(f"PTFileModelPersistor {setting} {str(name)!r} must end with one of {SUFFIXES}")
        if model is None and initial_ckpt is None:
            raise ConfigError("PTFileModelPersistor needs model (an nn.Module or state dict) or initial_ckpt")
        self.model = model
        self.allow_numpy_conversion = allow_numpy_conversion

    def load_model(self) -> FLModel:
        if self.initial_ckpt is not None:
            params = load_state_dict(self.checkpoint_path(self.initial_ckpt))
        else:
            params = state_dict_of(self.model)
        if self.allow_numpy_conversion:
            params = {key: _numpy_view(value) for key, value in params.items()}
        return FLModel(params=params)

    def save_model(self, model: FLModel, filename: str | os.PathLike | None = None) -> Path:
        path = self.save_path(filename)
        params = {key: _as_tensor(value) for key, value in (model.params or {}).items()}
        if path.suffix in (".pt", ".pth"):
            import torch

            with atomic_write(path) as f:
                torch.save({MODEL_KEY: params}, f)
        elif path.suffix == ".safetensors":
            save_safetensors(path, params)
        else:
            raise ConfigError(f"PTFileModelPersistor cannot save {path.name}: use a name ending with {SUFFIXES}")
        return path


def state_dict_of(model: Any) -> dict[str, Any]:
    """The parameters of an ``nn.Module`` (detached, sharing its memory) or a state dict, as a dict."""
    import torch

    if isinstance(model, torch.nn.Module):
        return dict(model.state_dict())
    if isinstance(model, Mapping):
        return dict(model)
    raise ConfigError(f"model must be a torch.nn.Module or a state dict, got {type(model).__name__}")


def load_state_dict(path: Path) -> dict[str, Any]:
    """The state dict in a ``.pt``/``.pth`` file (NVFlare's ``{"model": state_dict}`` or a bare state dict) or a
    ``.safetensors`` file, as torch tensors on the CPU."""
    if path.suffix == ".safetensors":
        return load_safetensors(path, as_torch=True)
    if path.suffix not in (".pt", ".pth"):
        raise ConfigError(f"{path.name}: PyTorch models load from files ending with one of {SUFFIXES}")
    import torch

    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except RuntimeError:  # files in torch's legacy (pre-zip) format cannot be mapped
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(loaded, Mapping) and isinstance(loaded.get(MODEL_KEY), Mapping):
        loaded = loaded[MODEL_KEY]
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"{path} holds a {type(loaded).__name__}, not a state dict (or {{'model': state_dict}})")
    return dict(loaded)


def _numpy_view(value: Any) -> Any:
    if not is_torch(value):
        return value
    value = value.detach()
    if value.device.type != "cpu":
        return value
    try:
        return value.numpy()
    except TypeError:  # bfloat16, float8: numpy has no such dtype
        return value


def _as_tensor(value: Any) -> Any:
    import numpy as np

    if not isinstance(value, np.ndarray):
        return value
    if value.dtype.byteorder == ">":
        value = value.astype(value.dtype.newbyteorder("<"))
    import torch

    with warnings.catch_warnings():
        # torch warns that read-only arrays give writable tensors; these are only written to a file
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(value)


__all__ = ["MODEL_KEY", "PTFileModelPersistor", "load_state_dict", "state_dict_of"]
