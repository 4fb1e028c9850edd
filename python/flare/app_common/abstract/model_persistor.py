"""``ModelPersistor``: where a workflow's initial model comes from and where its models go, as NVFlare's
``nvflare.app_common.abstract.model_persistor``.

A persistor is bound to the running job (``bind(engine)``) to learn the job's app directory: relative checkpoint
paths resolve against ``<app_dir>/custom`` and then ``<app_dir>``; relative save names are written under
``<app_dir>``. Saves write a temporary file and rename it over the target, so a reader never sees half a model and
a checkpoint still mapped into memory (large files are loaded with ``mmap``) is not overwritten under it.

The safetensors helpers here serve every persistor: a file of many tensors, written from numpy arrays or torch
tensors and read back as views over a copy-on-write mapping of the file.
"""

from __future__ import annotations

import mmap
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from flare.app_common.abstract.fl_model import FLModel
from flare.errors import ConfigError, JobError, SerializationError
from flare.tensors import safetensors


class PersistorEngine(Protocol):
    """What a persistor needs from the running job."""

    app_dir: Path


class ModelPersistor(ABC):
    """Loads the initial model and saves the workflow's models.

    Parameters
    ----------
    initial_ckpt
        The checkpoint to start from: absolute, or relative to ``<app_dir>/custom`` then ``<app_dir>``.
    save_filename
        The file ``save_model`` writes when not given another name: absolute, or relative to ``<app_dir>``.
    """

    def __init__(self, *, initial_ckpt: str | os.PathLike | None = None, save_filename: str | os.PathLike):
        if not str(save_filename):
            raise ConfigError(f"{type(self).__name__}: save_filename must name a file")
        self.initial_ckpt = initial_ckpt
        self.save_filename = str(save_filename)
        self._app_dir: Path | None = None

    def bind(self, engine: PersistorEngine) -> None:
        """Called by the runtime (or the workflow) before the first load or save."""
        self._app_dir = Path(engine.app_dir)

    @property
    def app_dir(self) -> Path:
        if self._app_dir is None:
            raise JobError(f"{type(self).__name__} is not bound to a job: call bind(engine) first")
        return self._app_dir

    @abstractmethod
    def load_model(self) -> FLModel:
        """The initial model."""

    @abstractmethod
    def save_model(self, model: FLModel, filename: str | os.PathLike | None = None) -> Path:
        """Writes ``model`` to ``filename`` (default: ``save_filename``); returns the path written."""

    def checkpoint_path(self, ckpt: str | os.PathLike) -> Path:
        """Where ``ckpt`` is: absolute as given, else the first of ``<app_dir>/custom/ckpt``, ``<app_dir>/ckpt``
        that exists; ``ConfigError`` naming ``initial_ckpt`` when none does."""
        path = Path(ckpt).expanduser()
        candidates = [path] if path.is_absolute() else [self.app_dir / "custom" / path, self.app_dir / path]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        tried = ", ".join(str(c) for c in candidates)
        raise ConfigError(f"initial_ckpt {str(ckpt)!r} of {type(self).__name__} is not a file (looked at {tried})")

    def save_path(self, filename: str | os.PathLike | None) -> Path:
        """Where a save named ``filename`` (default: ``save_filename``) goes."""
        path = Path(filename if filename is not None else self.save_filename).expanduser()
        return path if path.is_absolute() else self.app_dir / path


@contextmanager
def atomic_write(path: Path) -> Iterator[IO[bytes]]:
    """A file object whose content replaces ``path`` only when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with open(partial, "wb") as f:
            yield f
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_safetensors(path: Path, params: Mapping[str, Any]) -> None:
    """Writes ``params`` (numpy arrays and torch tensors, mixed as they come) as one safetensors file, each tensor
    copied once, straight from its memory to the file."""
    entries, values, offset = [], [], 0
    for key, value in params.items():
        if not isinstance(key, str):
            raise JobError(f"safetensors needs string keys; parameter {key!r} is a {type(key).__name__}")
        kind = safetensors.dtype_of(value)
        shape = tuple(int(n) for n in value.shape)
        nbytes = _numel(shape) * kind.itemsize
        entries.append((key, kind, shape, offset, offset + nbytes))
        values.append(value)
        offset += nbytes
    with atomic_write(path) as f:
        f.write(safetensors.header(entries))
        for value in values:
            f.write(_contiguous_bytes(value))


def load_safetensors(path: Path, as_torch: bool) -> dict[str, Any]:
    """The tensors of a safetensors file as views over a copy-on-write mapping of it: nothing is read until used,
    and changing a tensor changes this process's copy only."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise SerializationError(f"{path} is empty, not a safetensors file")
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        return safetensors.decode_torch(mapped) if as_torch else safetensors.decode_numpy(mapped)
    except SerializationError as e:
        raise SerializationError(f"{path}: {e}") from None


def _contiguous_bytes(value: Any) -> memoryview:
    """The little-endian bytes of an array or tensor, without a copy when it is contiguous, on the CPU and
    little-endian already."""
    if safetensors.is_torch(value):
        flat = value.detach().cpu().contiguous().reshape(-1)
        import torch

        return flat.view(torch.uint8).numpy().data
    import numpy as np

    flat = np.ascontiguousarray(value).reshape(-1)
    if flat.dtype.byteorder == ">":
        flat = flat.astype(flat.dtype.newbyteorder("<"))
    return flat.view(np.uint8).data


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for n in shape:
        count *= n
    return count


__all__ = ["ModelPersistor", "PersistorEngine", "atomic_write", "load_safetensors", "save_safetensors"]
