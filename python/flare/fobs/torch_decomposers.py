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
from flare.fobs.datum import Datum, DatumManager, DatumRef, DatumType
from flare.fobs.decomposer import Decomposer
from flare.fobs.via_downloader import TENSOR, as_ref, download, from_ref
from flare.tensors import safetensors

_KEY = "t"  # the one key NVFlare's form holds
_ALIGN = 64
_ENC_TYPE, _ENC_DATA, _NATIVE, _REF = "type", "data", "native", "ref"


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


class TensorDecomposer(Decomposer[torch.Tensor]):
    accepts_buffers = True

    def supported_type(self) -> type[torch.Tensor]:
        return torch.Tensor

    def supported_dots(self) -> list[int]:
        return [TENSOR.dot]

    def process_datum(self, datum: Datum, manager: DatumManager) -> None:
        download(datum, manager)

    def decompose(self, target: torch.Tensor, manager: DatumManager | None = None) -> Any:
        ref = as_ref(target, target.numel() * target.element_size(), manager, TENSOR)
        if ref is not None:
            return ref
        if manager is not None and target.numel() * target.element_size() + 128 >= manager.threshold:
            datum = Datum(DatumType.BLOB, SafetensorsValue(target))
            manager.add_datum(datum)
            return {_ENC_TYPE: _NATIVE, _ENC_DATA: DatumRef(datum.datum_id, True)}
        return {_ENC_TYPE: _NATIVE, _ENC_DATA: native_bytes(target)}

    def recompose(self, data: Any, manager: DatumManager | None = None) -> torch.Tensor:
        if not isinstance(data, dict):
            raise SerializationError("torch tensor: expected a map")
        kind, payload = data.get(_ENC_TYPE), data.get(_ENC_DATA)
        if kind == _REF:
            return from_ref(payload, manager, TENSOR)
        if kind != _NATIVE or not isinstance(payload, (bytes, memoryview)):
            raise SerializationError(f"torch tensor: unknown encoding {kind!r}")
        # as for numpy arrays: over an out-of-band section without a copy, small body bytes copied to be writable
        return tensor_from_native(payload, copy=isinstance(payload, bytes))


def torch_decomposers() -> list[Decomposer]:
    return [TensorDecomposer()]
