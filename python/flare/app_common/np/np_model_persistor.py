"""``NPModelPersistor``: numpy models in ``.npy``, ``.npz`` or ``.safetensors`` files.

A model with one array is ``{"numpy_key": array}`` (``NPConstants.NUMPY_KEY``), as in NVFlare's numpy examples; it
is saved as ``.npy``. Any other dict of arrays needs ``.npz`` (uncompressed ``np.savez``) or ``.safetensors``; a
``.npy`` save name is then swapped for ``.npz``.

Loading does not read a file twice over: ``.npy`` is mapped copy-on-write (``mmap_mode="c"``) and so is
``.safetensors``, so pages are read when used and shared with the page cache until written; ``.npz`` members are read
straight into their arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.app_common.abstract.model_persistor import (
    ModelPersistor,
    atomic_write,
    load_safetensors,
    save_safetensors,
)
from flare.app_common.np.constants import NPConstants
from flare.errors import ConfigError

SUFFIXES = (".npy", ".npz", ".safetensors")


class NPModelPersistor(ModelPersistor):
    """Loads and saves numpy models.

    Parameters
    ----------
    model
        The initial model when there is no ``initial_ckpt``: an array or nested list (becomes
        ``{"numpy_key": array}``; lists as float32) or a dict of arrays.
    initial_ckpt
        A ``.npy``, ``.npz`` or ``.safetensors`` file to start from; its weights win over ``model``.
    save_filename
        Where ``save_model`` writes by default, relative to the job's app directory; its suffix picks the format.
    """

    def __init__(
        self,
        *,
        model: Any = None,
        initial_ckpt: str | os.PathLike | None = None,
        save_filename: str | os.PathLike = "FL_global_model.npy",
    ):
        super().__init__(initial_ckpt=initial_ckpt, save_filename=save_filename)
        for setting, name in (("save_filename", save_filename), ("initial_ckpt", initial_ckpt)):
            if name is not None and Path(name).suffix not in SUFFIXES:
                raise ConfigError(f"NPModelPersistor {setting} {str(name)!r} must end with one of {SUFFIXES}")
        if model is None and initial_ckpt is None:
            raise ConfigError("NPModelPersistor needs model (an array or dict of arrays) or initial_ckpt")
        self.model = model

    def load_model(self) -> FLModel:
        if self.initial_ckpt is not None:
            return FLModel(params=load_arrays(self.checkpoint_path(self.initial_ckpt)))
        return FLModel(params=_as_params(self.model))

    def save_model(self, model: FLModel, filename: str | os.PathLike | None = None) -> Path:
        import numpy as np

        path = self.save_path(filename)
        params = dict(model.params or {})
        if path.suffix == ".safetensors":  # takes torch tensors as they are, bfloat16 included
            save_safetensors(path, params)
            return path
        params = {key: np.asarray(value) for key, value in params.items()}
        if path.suffix == ".npy":
            if set(params) == {NPConstants.NUMPY_KEY}:
                with atomic_write(path) as f:
                    np.save(f, params[NPConstants.NUMPY_KEY], allow_pickle=False)
                return path
            path = path.with_suffix(".npz")
        if path.suffix == ".npz":
            with atomic_write(path) as f:
                np.savez(f, allow_pickle=False, **params)
        else:
            raise ConfigError(f"NPModelPersistor cannot save {path.name}: name a file ending with one of {SUFFIXES}")
        return path


def load_arrays(path: Path) -> dict[str, Any]:
    """The arrays of a ``.npy`` (as ``{"numpy_key": array}``), ``.npz`` or ``.safetensors`` file."""
    import numpy as np

    if path.suffix == ".npy":
        try:
            # a plain ndarray over the mapping: np.memmap is a subclass that serializers do not know
            array = np.asarray(np.load(path, mmap_mode="c", allow_pickle=False))
        except ValueError:  # an array of no elements cannot be mapped
            array = np.load(path, allow_pickle=False)
        return {NPConstants.NUMPY_KEY: array}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    if path.suffix == ".safetensors":
        return load_safetensors(path, as_torch=False)
    raise ConfigError(f"{path.name}: numpy models load from files ending with one of {SUFFIXES}")


def _as_params(model: Any) -> dict[str, Any]:
    import numpy as np

    if isinstance(model, dict):
        return {str(key): np.asarray(value) for key, value in model.items()}
    if isinstance(model, np.ndarray):
        return {NPConstants.NUMPY_KEY: model}
    return {NPConstants.NUMPY_KEY: np.asarray(model, dtype=np.float32)}


__all__ = ["NPModelPersistor", "load_arrays"]
