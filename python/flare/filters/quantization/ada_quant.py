"""``AdaQuantizer``: NVFlare's ADAQUANT (https://arxiv.org/abs/2208.05174), on the CPU, in float64.

Each param is shifted by its minimum, scaled by its largest shifted value (``norm``) and rounded to one of
``2**k - 1`` levels, where ``k`` grows with the norm and the source's bits (``weight`` trades size for error); the
integers take 1 or 2 bytes and are bz2-compressed when that is smaller. The state and its keys are NVFlare's, so
either side may be NVFlare. Where NVFlare's arithmetic breaks, this one does not: a param whose range needs fewer
than one bit still gets one level (NVFlare's gets zero levels and divides by zero), and one that would need more
than 16 bits travels unchanged (NVFlare raises).
"""

from __future__ import annotations

import bz2
import math
from typing import Any

import numpy as np

from flare.errors import SerializationError
from flare.filters.quantization.tensors import from_numpy, is_torch, shape_of, to_numpy

_COMPRESS_LEVEL = 1
_DTYPES: dict[str, np.dtype] = {"u1": np.dtype("u1"), "<u2": np.dtype("<u2")}


class AdaQuantizer:
    def __init__(self, weight: float = 0.01, compression: bool = True) -> None:
        self.weight = weight
        self.compression = compression

    def quantize(self, values: Any) -> tuple[Any, dict[str, Any]]:
        """The quantized values (same container as ``values``) and their state; ``values`` itself and an empty
        state when quantizing would not save bits."""
        torch = is_torch(values)
        element_bits = values.element_size() * 8 if torch else values.itemsize * 8
        shifted = to_numpy(values).astype(np.float64).reshape(-1)
        offset = -float(shifted.min()) if shifted.size else 0.0
        shifted += offset
        norm = float(np.abs(shifted).max()) if shifted.size else 0.0
        levels = math.ceil(max(1.0, math.sqrt(norm * element_bits * math.log(4) / self.weight)))
        bits = max(1, math.ceil(math.log2(levels)))
        if bits >= element_bits or bits > 16:
            return values, {}
        state: dict[str, Any] = {"offset": offset, "tensor_shape": shape_of(values)}
        if norm == 0.0:
            return from_numpy(np.zeros(1, dtype=bool), torch), state
        level = 2**bits - 1
        new_dtype = "u1" if bits <= 8 else "<u2"
        np.abs(shifted, out=shifted)
        shifted /= norm
        shifted *= level
        np.round(shifted, out=shifted)
        np.clip(shifted, 0, level, out=shifted)
        quantized = shifted.astype(_DTYPES[new_dtype])
        state.update({"quantization_level": level, "norm": norm})
        if self.compression:
            compressed = bz2.compress(quantized.tobytes(), _COMPRESS_LEVEL)
            if len(compressed) < quantized.nbytes:
                state.update({"compressed_tensor": np.frombuffer(compressed, dtype=np.uint8), "new_dtype": new_dtype})
                return from_numpy(np.zeros(1, dtype=bool), torch), state
        return from_numpy(quantized, torch), state

    def dequantized(self, quantized: Any, state: dict[str, Any], name: str = "") -> np.ndarray:
        """The float64 values a state and its quantized values stand for (NVFlare's method name). ``name`` is
        the param's, for errors: the state comes from the network and is checked before it is used."""
        shape = state.get("tensor_shape")
        if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
            raise SerializationError(f"param {name!r}: adaquant tensor_shape {shape!r} is not a list of sizes")
        offset = _number(name, state, "offset")
        if "norm" not in state:
            return np.full(shape, -offset, dtype=np.float64)
        norm = _number(name, state, "norm")
        level = _number(name, state, "quantization_level")
        count = math.prod(shape)
        if "compressed_tensor" in state:
            integers = _decompressed(name, state, count)
        else:
            integers = to_numpy(quantized).reshape(-1)
            if integers.dtype not in _DTYPES.values() or integers.size != count:
                raise SerializationError(
                    f"param {name!r}: adaquant values are {integers.size} {integers.dtype} where {count} 1- or "
                    f"2-byte unsigned integers are expected"
                )
        values = integers.astype(np.float64).reshape(shape)
        if level == 0:  # NVFlare's quantizer sends zero levels for a param of (almost) one value
            values[...] = 0.0
        else:
            values *= norm / level
        values -= offset
        return values


def _number(name: str, state: dict[str, Any], key: str) -> float:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise SerializationError(f"param {name!r}: adaquant {key} is {value!r}, not a number")
    return float(value)


def _decompressed(name: str, state: dict[str, Any], count: int) -> np.ndarray:
    new_dtype = state.get("new_dtype")
    dtype = _DTYPES.get(new_dtype) if isinstance(new_dtype, str) else None
    if dtype is None:
        raise SerializationError(f"param {name!r}: adaquant new_dtype {state.get('new_dtype')!r} is not u1 or <u2")
    compressed = state["compressed_tensor"]
    if not (isinstance(compressed, np.ndarray) or is_torch(compressed)):
        raise SerializationError(f"param {name!r}: adaquant compressed_tensor is {type(compressed).__name__}")
    expected = count * dtype.itemsize
    decompressor = bz2.BZ2Decompressor()
    try:
        # at most one byte past the expected size: a state cannot make this allocate more than its shape says
        raw = decompressor.decompress(to_numpy(compressed).tobytes(), max_length=expected + 1)
    except (OSError, ValueError) as e:
        raise SerializationError(f"param {name!r}: adaquant compressed_tensor: {e}") from None
    if len(raw) != expected or not decompressor.eof:
        raise SerializationError(
            f"param {name!r}: adaquant compressed_tensor holds other than {expected} bytes for shape "
            f"{state.get('tensor_shape')}"
        )
    return np.frombuffer(raw, dtype=dtype)
