"""The safetensors format for single tensors, numpy or torch, written and read without the ``safetensors`` package.

Layout: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON (``{"key": {"dtype": "F32", "shape": [2, 3],
"data_offsets": [0, 24]}}``, padded with spaces to a multiple of 8, as the reference writer does, so the data after
it is 8-byte aligned within the item), then the tensor bytes, row-major and little-endian.

Encoding writes the header into a buffer of the final size and copies the tensor into it once, whatever its layout
or device: a strided tensor is made contiguous by that same copy. Decoding returns views over the input buffer
(``numpy.frombuffer``, ``torch.frombuffer``): no byte is copied. Malformed input raises ``SerializationError``.

numpy and torch are imported only when a tensor of theirs is met, so this module needs neither.
"""

from __future__ import annotations

import json
import struct
import sys
import warnings
from dataclasses import dataclass
from typing import Any

from flare.errors import SerializationError

# safetensors' own reader refuses larger headers; a length beyond it is a corrupt or hostile item
MAX_HEADER = 100_000_000
_ALIGN = 8
_METADATA = "__metadata__"


@dataclass(frozen=True)
class DType:
    name: str  # safetensors' name
    itemsize: int
    numpy: str | None  # numpy's name where numpy has the type
    torch: str | None  # attribute of the torch module


# Every dtype safetensors and torch share. numpy lacks the bfloat16 and float8 kinds: those decode to torch only.
DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("BOOL", 1, "bool", "bool"),
        DType("U8", 1, "uint8", "uint8"),
        DType("I8", 1, "int8", "int8"),
        DType("F8_E4M3", 1, None, "float8_e4m3fn"),
        DType("F8_E5M2", 1, None, "float8_e5m2"),
        DType("F8_E4M3FNUZ", 1, None, "float8_e4m3fnuz"),
        DType("F8_E5M2FNUZ", 1, None, "float8_e5m2fnuz"),
        DType("I16", 2, "int16", "int16"),
        DType("U16", 2, "uint16", "uint16"),
        DType("F16", 2, "float16", "float16"),
        DType("BF16", 2, None, "bfloat16"),
        DType("I32", 4, "int32", "int32"),
        DType("U32", 4, "uint32", "uint32"),
        DType("F32", 4, "float32", "float32"),
        DType("I64", 8, "int64", "int64"),
        DType("U64", 8, "uint64", "uint64"),
        DType("F64", 8, "float64", "float64"),
        DType("C64", 8, "complex64", "complex64"),
    )
}
_BY_NUMPY = {d.numpy: d for d in DTYPES.values() if d.numpy}


@dataclass(frozen=True)
class Entry:
    """One tensor in an item: where its bytes lie, relative to the start of the item."""

    key: str
    dtype: DType
    shape: tuple[int, ...]
    start: int
    end: int


def is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def dtype_of(value: Any) -> DType:
    """The safetensors dtype of a numpy array or torch tensor; SerializationError if the format has none."""
    if is_torch(value):
        name = str(value.dtype).removeprefix("torch.")
        for d in DTYPES.values():
            if d.torch == name:
                return d
        raise SerializationError(f"torch dtype {value.dtype} has no safetensors form")
    np = _numpy()
    if not isinstance(value, np.ndarray):
        raise SerializationError(f"expected a numpy array or torch tensor, got {type(value).__name__}")
    kind = value.dtype
    if kind.fields is not None or kind.subdtype is not None or kind.hasobject:
        raise SerializationError(f"numpy dtype {kind} has no safetensors form")
    found = _BY_NUMPY.get(kind.name)  # the name leaves byte order out: encode writes little-endian
    if found is None:
        raise SerializationError(f"numpy dtype {kind} has no safetensors form")
    return found


def header(entries: list[tuple[str, DType, tuple[int, ...], int, int]]) -> bytes:
    """Length prefix and JSON header, spaced as the reference writer spaces it: compact separators, raw UTF-8."""
    doc = {
        key: {"dtype": d.name, "shape": list(shape), "data_offsets": [start, end]}
        for key, d, shape, start, end in entries
    }
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return struct.pack("<Q", len(text)) + text


def encoded_size(key: str, value: Any) -> int:
    d = dtype_of(value)
    shape = tuple(int(n) for n in value.shape)
    nbytes = _numel(shape) * d.itemsize
    return len(header([(key, d, shape, 0, nbytes)])) + nbytes


def encode(key: str, value: Any) -> bytearray:
    """The safetensors bytes of ``{key: value}``: one buffer, the tensor copied into it once."""
    d = dtype_of(value)
    shape = tuple(int(n) for n in value.shape)
    nbytes = _numel(shape) * d.itemsize
    head = header([(key, d, shape, 0, nbytes)])
    out = bytearray(len(head) + nbytes)
    out[: len(head)] = head
    if nbytes:
        if is_torch(value):
            torch = sys.modules["torch"]
            dest = torch.frombuffer(out, dtype=value.dtype, offset=len(head), count=_numel(shape))
            # copy_ reads any layout and device, so a strided or GPU tensor needs no copy of its own first
            dest.view(shape).copy_(value.detach())
        else:
            np = _numpy()
            dest = np.frombuffer(out, dtype=np.dtype(d.numpy).newbyteorder("<"), offset=len(head))
            np.copyto(dest.reshape(shape), value, casting="equiv")
    return out


def parse(buf: Any) -> tuple[list[Entry], dict[str, str]]:
    """The tensors an item holds and its ``__metadata__``; checks every offset against the buffer."""
    view = memoryview(buf).cast("B")
    if view.nbytes < 8:
        raise SerializationError(f"safetensors: {view.nbytes} bytes is too short for a header length")
    (n,) = struct.unpack_from("<Q", view, 0)
    if n > MAX_HEADER or 8 + n > view.nbytes:
        raise SerializationError(f"safetensors: header of {n} bytes does not fit a {view.nbytes}-byte item")
    raw = bytes(view[8 : 8 + n])
    if not raw.startswith(b"{"):
        raise SerializationError("safetensors: the header is not a JSON object")
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise SerializationError(f"safetensors: unreadable header ({e})") from None
    if not isinstance(doc, dict):
        raise SerializationError("safetensors: the header is not a JSON object")
    metadata = doc.pop(_METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SerializationError("safetensors: __metadata__ must map strings to strings")
    data_start, data_size = 8 + n, view.nbytes - 8 - n
    entries = [_entry(key, info, data_start) for key, info in doc.items()]
    # like the reference reader: the tensors tile the data exactly, no gap, no overlap, nothing after
    covered = 0
    for ent in sorted(entries, key=lambda x: (x.start, x.end)):
        if ent.start - data_start != covered:
            raise SerializationError(f"safetensors: tensor {ent.key!r} does not start where the previous one ended")
        covered = ent.end - data_start
    if covered != data_size:
        raise SerializationError(f"safetensors: tensors cover {covered} of {data_size} data bytes")
    return entries, metadata


def _entry(key: str, info: Any, data_start: int) -> Entry:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise SerializationError(f"safetensors: tensor {key!r} needs exactly dtype, shape and data_offsets")
    d = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if d is None:
        raise SerializationError(f"safetensors: tensor {key!r} has unknown dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not isinstance(shape, list) or len(shape) > 64 or not all(type(x) is int and x >= 0 for x in shape):
        raise SerializationError(f"safetensors: tensor {key!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(x) is int and x >= 0 for x in offsets)
        or offsets[0] > offsets[1]
    ):
        raise SerializationError(f"safetensors: tensor {key!r} has bad data_offsets {offsets!r}")
    if (offsets[1] - offsets[0]) != _numel(shape) * d.itemsize:
        raise SerializationError(
            f"safetensors: tensor {key!r} of shape {shape} and dtype {d.name} needs {_numel(shape) * d.itemsize}"
            f" bytes, its offsets span {offsets[1] - offsets[0]}"
        )
    return Entry(key, d, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def decode_torch(buf: Any) -> dict[str, Any]:
    """The tensors of an item as torch tensors over ``buf``'s memory (read-only memory stays read-only: clone a
    tensor before changing it in place)."""
    import torch

    entries, _ = parse(buf)
    out: dict[str, Any] = {}
    for e in entries:
        kind = getattr(torch, e.dtype.torch or "", None)
        if kind is None:
            raise SerializationError(f"safetensors: this torch has no dtype for {e.dtype.name}")
        count = _numel(e.shape)
        if count == 0:
            out[e.key] = torch.empty(e.shape, dtype=kind)
            continue
        with warnings.catch_warnings():
            # torch warns that it cannot mark a tensor read-only; the docstring says so instead
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(buf, dtype=kind, count=count, offset=e.start)
        out[e.key] = flat.view(e.shape)
    return out


def decode_numpy(buf: Any) -> dict[str, Any]:
    """The tensors of an item as numpy arrays over ``buf``'s memory (read-only when ``buf`` is)."""
    np = _numpy()
    entries, _ = parse(buf)
    out: dict[str, Any] = {}
    for e in entries:
        if e.dtype.numpy is None:
            raise SerializationError(
                f"safetensors: tensor {e.key!r} is {e.dtype.name}, which numpy has no type for; decode it with torch"
            )
        kind = np.dtype(e.dtype.numpy).newbyteorder("<")
        count = _numel(e.shape)
        if count == 0:
            out[e.key] = np.empty(e.shape, dtype=kind)
            continue
        out[e.key] = np.frombuffer(buf, dtype=kind, count=count, offset=e.start).reshape(e.shape)
    return out


def _numel(shape: Any) -> int:
    count = 1
    for n in shape:
        count *= int(n)
    return count


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _numpy() -> Any:
    import numpy

    return numpy
