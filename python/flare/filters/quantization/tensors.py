"""numpy arrays and torch tensors as the kernels see them: a dtype name, raw bytes, and new arrays of either kind.

A param keeps its container through quantization and back: numpy in, numpy out; a torch tensor in, torch tensors
out (on the CPU). numpy has no bfloat16, so bfloat16 values in a numpy container are stored as their uint16 bits.
torch is used only when a param already is a tensor: flare's filters work without it.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

# numpy dtype holding each type's values
_NUMPY_STORAGE = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "uint8": np.uint8,
    "uint16": np.uint16,
}


def is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_torch(value)


def is_cuda(value: Any) -> bool:
    return is_torch(value) and value.is_cuda


def dtype_name(value: Any) -> str:
    """numpy's and torch's common name of the element type: "float32", "bfloat16", "int64", "bool", ..."""
    if is_torch(value):
        return str(value.dtype).removeprefix("torch.")
    return value.dtype.name


def shape_of(value: Any) -> list[int]:
    return [int(d) for d in value.shape]


def numel(value: Any) -> int:
    return math.prod(value.shape)


def nbytes(value: Any) -> int:
    if is_torch(value):
        return value.numel() * value.element_size()
    return int(value.nbytes)


def byte_view(value: Any) -> np.ndarray:
    """The bytes of an array or CPU tensor as a flat uint8 numpy array: a view, or a copy of a value that is
    strided, not aligned for its type (arrays received over the network may start anywhere in their buffer) or not
    in the machine's byte order."""
    if is_torch(value):
        if value.numel() == 0:  # torch cannot view an empty tensor's bytes
            return np.empty(0, dtype=np.uint8)
        tensor = value.detach()
        if tensor.data_ptr() % tensor.element_size():
            tensor = tensor.clone()
        flat = tensor.contiguous().reshape(-1)
        return flat.view(sys.modules["torch"].uint8).numpy()
    array = np.asarray(value)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.require(array, requirements=["C", "A"]).reshape(-1).view(np.uint8)


def new_array(shape: list[int], dtype: str, torch: bool) -> tuple[Any, np.ndarray]:
    """An uninitialized array of ``dtype`` (a numpy one, or a CPU tensor when ``torch``) and its bytes to fill.
    A numpy container of ``bfloat16`` holds uint16 bits."""
    array = np.empty(shape, dtype=_NUMPY_STORAGE[dtype])
    bytes_to_fill = array.reshape(-1).view(np.uint8)
    if not torch:
        return array, bytes_to_fill
    import torch as torch_module

    tensor = torch_module.from_numpy(array)
    if dtype == "bfloat16":
        tensor = tensor.view(torch_module.bfloat16)
    return tensor, bytes_to_fill


def from_numpy(array: np.ndarray, torch: bool) -> Any:
    """``array`` as a CPU tensor (sharing its memory) when ``torch``, else itself."""
    if not torch:
        return array
    import torch as torch_module

    return torch_module.from_numpy(array)


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array of ``value``'s values (a CPU tensor's memory, shared; bfloat16 widened to float32)."""
    if not is_torch(value):
        return np.asarray(value)
    value = value.detach().cpu()
    if dtype_name(value) == "bfloat16":
        value = value.float()
    return value.numpy()
