"""numpy arrays and scalars, in NVFlare's forms.

An array travels as ``{"type": "native", "data": <.npy bytes>}``, the ``.npy`` format that ``np.save`` writes
(``allow_pickle=False``: object arrays are refused). When those bytes reach the datum threshold they go as a datum
section, written straight from the array's memory, and the receiver builds the array over its input buffer. Our
``.npy`` header is padded so that the data starts 64-byte aligned within the serialized output. A scalar travels as
its ``.item()``.
"""

from __future__ import annotations

import ast
import struct
from typing import Any

import numpy as np

from flare.errors import SerializationError
from flare.fobs.datum import DatumManager
from flare.fobs.decomposer import Decomposer
from flare.fobs.via_downloader import NUMPY, ViaDownloaderDecomposer

_MAGIC = b"\x93NUMPY"
_ALIGN = 64
# numpy refuses larger headers too: literal_eval over a crafted one is the only cost a header can cause
_MAX_HEADER = 10000
_ENCODING = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}


class NpyValue:
    """An array waiting to be written as a datum: ``.npy`` header plus the array's own memory, no copy."""

    def __init__(self, array: np.ndarray):
        fortran = array.flags.f_contiguous and not array.flags.c_contiguous
        if fortran:
            flat = array.T.reshape(-1)
        else:
            flat = np.ascontiguousarray(array).reshape(-1)  # copies only a non-contiguous array
        self.header_text = _header_text(array, fortran)
        self.data = flat.view(np.uint8).data
        self.array = array  # the memory above belongs to it: keep it alive until written

    def parts(self, offset: int) -> list[Any]:
        """The bytes to write when the value starts at ``offset`` of the output."""
        return [_header(self.header_text, offset), self.data]


def _header_text(array: np.ndarray, fortran: bool) -> str:
    descr = np.lib.format.dtype_to_descr(array.dtype)
    return repr({"descr": descr, "fortran_order": bool(fortran), "shape": tuple(array.shape)})


def _header(text: str, offset: int) -> bytes:
    """Magic, version, length and the header dict, padded with spaces so the data after it is aligned."""
    raw = text.encode("latin1")
    for version, (fmt, _encoding) in sorted(_ENCODING.items())[:2]:
        prefix = len(_MAGIC) + 2 + struct.calcsize(fmt)
        end = offset + prefix + len(raw) + 1
        pad = -end % _ALIGN
        length = len(raw) + pad + 1
        if length < (1 << (8 * struct.calcsize(fmt))):
            return _MAGIC + bytes((version, 0)) + struct.pack(fmt, length) + raw + b" " * pad + b"\n"
    raise SerializationError("numpy array header too long")


def npy_bytes(array: np.ndarray) -> bytes:
    """The whole ``.npy`` form of a small array, for the msgpack body."""
    value = NpyValue(array)
    header, data = value.parts(0)
    return header + data.tobytes()


def parse_npy(buf: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """dtype, shape, Fortran order and data offset of ``.npy`` bytes; checks the data is all there."""
    view = memoryview(buf)
    if view.nbytes < len(_MAGIC) + 4 or bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise SerializationError("numpy array: not .npy data")
    version = view[len(_MAGIC)]
    if version not in _ENCODING:
        raise SerializationError(f"numpy array: unknown .npy version {version}")
    fmt, encoding = _ENCODING[version]
    start = len(_MAGIC) + 2
    (length,) = struct.unpack_from(fmt, view, start)
    start += struct.calcsize(fmt)
    if length > _MAX_HEADER or start + length > view.nbytes:
        raise SerializationError("numpy array: .npy header too long or cut short")
    try:
        header = ast.literal_eval(bytes(view[start : start + length]).decode(encoding))
    except (ValueError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise SerializationError(f"numpy array: unreadable .npy header ({type(e).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise SerializationError("numpy array: .npy header has the wrong keys")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape) or len(shape) > 64:
        raise SerializationError(f"numpy array: bad shape {shape!r}")
    if not isinstance(fortran, bool):
        raise SerializationError("numpy array: bad fortran_order")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception:
        raise SerializationError(f"numpy array: bad dtype {header['descr']!r}") from None
    if dtype.hasobject:
        raise SerializationError("numpy array: object arrays are refused (they would need pickle)")
    count = 1
    for n in shape:
        count *= n
    data_offset = start + length
    if count * dtype.itemsize != view.nbytes - data_offset or (dtype.itemsize == 0 and count):
        raise SerializationError(
            f"numpy array: {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
            f"the input holds {view.nbytes - data_offset}"
        )
    return dtype, shape, fortran, data_offset


def array_from_npy(buf: bytes | memoryview, copy: bool) -> np.ndarray:
    """The array in ``.npy`` bytes: a view over ``buf`` (writable when ``buf`` is), or a writable copy."""
    dtype, shape, fortran, offset = parse_npy(buf)
    count = 1
    for n in shape:
        count *= n
    if count == 0:
        return np.empty(shape, dtype, order="F" if fortran else "C")
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return array.copy(order="K") if copy else array


class NumpyArrayDecomposer(ViaDownloaderDecomposer[np.ndarray]):
    kind = NUMPY
    label = "numpy array"

    def supported_type(self) -> type[np.ndarray]:
        return np.ndarray

    def validate(self, target: np.ndarray) -> None:
        if target.dtype.hasobject:
            raise SerializationError("numpy object arrays cannot be serialized without pickle")

    def nbytes(self, target: np.ndarray) -> int:
        return int(target.nbytes)

    def datum_value(self, target: np.ndarray) -> NpyValue:
        return NpyValue(target)

    def native_bytes(self, target: np.ndarray) -> bytes:
        return npy_bytes(target)

    def from_native(self, payload: bytes | memoryview, copy: bool) -> np.ndarray:
        return array_from_npy(payload, copy=copy)


class NumpyScalarDecomposer(Decomposer[Any]):
    """A numpy scalar as the Python number ``.item()`` gives."""

    def __init__(self, scalar_type: type | None = None):
        if scalar_type is not None:
            self.scalar_type = scalar_type

    scalar_type: type

    def supported_type(self) -> type:
        return self.scalar_type

    def decompose(self, target: Any, manager: DatumManager | None = None) -> Any:
        return target.item()

    def recompose(self, data: Any, manager: DatumManager | None = None) -> Any:
        if type(data) not in (int, float, bool):
            raise SerializationError(f"{self.scalar_type.__name__}: expected a number, got {type(data).__name__}")
        try:
            return self.scalar_type(data)
        except (OverflowError, ValueError) as e:
            raise SerializationError(f"{self.scalar_type.__name__}: {e}") from None


# NVFlare has a decomposer class per scalar type for these four; the names matter on the wire.
class Float32ScalarDecomposer(NumpyScalarDecomposer):
    scalar_type = np.float32


class Float64ScalarDecomposer(NumpyScalarDecomposer):
    scalar_type = np.float64


class Int32ScalarDecomposer(NumpyScalarDecomposer):
    scalar_type = np.int32


class Int64ScalarDecomposer(NumpyScalarDecomposer):
    scalar_type = np.int64


_OTHER_SCALARS = (np.float16, np.int8, np.int16, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)


def numpy_decomposers() -> list[Decomposer]:
    found: list[Decomposer] = [
        NumpyArrayDecomposer(),
        Float32ScalarDecomposer(),
        Float64ScalarDecomposer(),
        Int32ScalarDecomposer(),
        Int64ScalarDecomposer(),
    ]
    found += [NumpyScalarDecomposer(t) for t in _OTHER_SCALARS]
    return found
