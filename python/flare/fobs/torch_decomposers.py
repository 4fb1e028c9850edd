"""torch tensors, in NVFlare's form: ``{"type": "native", "data": <safetensors bytes of {"t": tensor}>}``.

The registry imports this module only once torch is in use (a tensor is dumped, or a payload names
``torch.Tensor``), so that importing flare never imports torch. Every dtype safetensors knows travels as itself,
bfloat16 and float8 included; tensors arrive on the CPU.

When the safetensors form reaches the datum threshold it goes as a datum section written straight from the
tensor's memory, its header padded with spaces so the data lands 64-byte aligned in the output, and the receiver
builds the tensor over the input buffer.
"""

from __future__ import annotations

from typing import Any

import torch

from flare.errors import SerializationError
from flare.fobs.decomposer import Decomposer
from flare.fobs.via_downloader import TENSOR, ViaDownloaderDecomposer
from flare.tensors import safetensors

_KEY = "t"  # the one key NVFlare's form holds
_ALIGN = 64


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes, row-major, as a view of CPU memory: no copy for a contiguous CPU tensor."""
    flat = tensor.detach()
    if flat.device.type != "cpu":
        flat = flat.cpu()
    flat = flat.contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    # a uint8 view exists for every dtype (bfloat16 and float8 have no numpy type of their own)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


class SafetensorsValue:
    """A tensor waiting to be written as a datum: safetensors header plus the tensor's own memory."""

    def __init__(self, tensor: torch.Tensor):
        self.dtype = safetensors.dtype_of(tensor)
        self.shape = tuple(int(n) for n in tensor.shape)
        self.data = tensor_bytes(tensor)
        self.tensor = tensor  # the memory above may belong to it: keep it alive until written

    def parts(self, offset: int) -> list[Any]:
        nbytes = self.data.nbytes
        head = safetensors.header([(_KEY, self.dtype, self.shape, 0, nbytes)])
        # JSON allows trailing spaces: widen the header so the data starts on an aligned address of the output
        pad = -(offset + len(head)) % _ALIGN
        if pad:
            text = head[8:] + b" " * pad
            head = len(text).to_bytes(8, "little") + text
        return [head, self.data]


def native_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(safetensors.encode(_KEY, tensor))


def tensor_from_native(payload: Any, copy: bool) -> torch.Tensor:
    """The tensor in safetensors bytes holding ``{"t": tensor}``: a view over ``payload``, or a writable copy."""
    if copy:
        payload = bytearray(payload)
    tensors = safetensors.decode_torch(payload)
    if list(tensors) != [_KEY]:
        raise SerializationError(f"torch tensor: expected one tensor named {_KEY!r}, got {sorted(tensors)!r}")
    return tensors[_KEY]


class TensorDecomposer(ViaDownloaderDecomposer[torch.Tensor]):
    kind = TENSOR
    label = "torch tensor"

    def supported_type(self) -> type[torch.Tensor]:
        return torch.Tensor

    def nbytes(self, target: torch.Tensor) -> int:
        return int(target.numel() * target.element_size())

    def datum_value(self, target: torch.Tensor) -> SafetensorsValue:
        return SafetensorsValue(target)

    def native_bytes(self, target: torch.Tensor) -> bytes:
        return native_bytes(target)

    def from_native(self, payload: bytes | memoryview, copy: bool) -> torch.Tensor:
        return tensor_from_native(payload, copy=copy)


def torch_decomposers() -> list[Decomposer]:
    return [TensorDecomposer()]
