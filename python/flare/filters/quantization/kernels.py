"""Quantizing one param and restoring it, per type: float16/bfloat16 casts, bitsandbytes' blockwise 8-bit and
4-bit (FP4, NF4). The state each returns is the one NVFlare puts in ``quant_state`` for the param.

A CPU array goes through flare's Rust kernels (``flare._sfm``), which produce bitsandbytes' CPU output byte for
byte, with the GIL released; they read the input in place (a strided or misaligned one is copied first). A tensor
on a CUDA device goes through bitsandbytes' own CUDA functions when bitsandbytes imports (else it is copied to the
CPU first); its outputs come back to the CPU.

Restoring checks the state against the values before anything is allocated: the state comes from the network,
and one that does not fit raises ``SerializationError`` naming the param.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from flare import _sfm
from flare.errors import SerializationError
from flare.filters.quantization.constants import BLOCKSIZE_4BIT, BLOCKSIZE_8BIT, FOUR_BIT_TYPES
from flare.filters.quantization.tensors import (
    byte_view,
    dtype_name,
    from_numpy,
    is_cuda,
    is_torch,
    new_array,
    numel,
    shape_of,
)

# 4-bit block sizes bitsandbytes accepts; a state from the network naming another is refused
_FOUR_BIT_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


# ---- float16 and bfloat16 ----


def quantize_cast(value: Any, target: str) -> Any:
    """``value`` (float32) cast to ``target``; float16 saturates at ±65504 (NVFlare clamps, then casts)."""
    if is_cuda(value):
        import torch

        if target == "float16":
            info = torch.finfo(torch.float16)
            return value.clamp(info.min, info.max).to(torch.float16)
        return value.to(torch.bfloat16)
    out, out_bytes = new_array(shape_of(value), target, is_torch(value))
    _sfm.cast_floats(byte_view(value), dtype_name(value), out_bytes, target)
    return out


def dequantize_cast(name: str, value: Any, stored: str, target: str) -> Any:
    """``value``, holding ``stored`` values (float16 or bfloat16), as a new array of ``target``."""
    value = _on_cpu(value)
    found = dtype_name(value)
    if found != stored and not (stored == "bfloat16" and found == "uint16" and not is_torch(value)):
        raise SerializationError(f"param {name!r}: expected {stored} values, got {found}")
    out, out_bytes = new_array(shape_of(value), _storable(target, value), is_torch(value))
    _sfm.cast_floats(byte_view(value), stored, out_bytes, _storable(target, value))
    return out


# ---- blockwise 8-bit ----


def quantize_8bit(value: Any) -> tuple[Any, dict[str, Any]]:
    """One code per value (uint8, the param's shape) and the state ``{"absmax", "code"}``."""
    if is_cuda(value) and (bnb := _bitsandbytes()) is not None:
        codes, state = bnb.quantize_blockwise(value)
        return codes.cpu(), {"absmax": state.absmax.cpu(), "code": state.code.cpu()}
    value = _on_cpu(value)
    torch = is_torch(value)
    codes, codes_bytes = new_array(shape_of(value), "uint8", torch)
    absmax, absmax_bytes = new_array([_blocks(numel(value), BLOCKSIZE_8BIT)], "float32", torch)
    _sfm.quantize_blockwise8(byte_view(value), dtype_name(value), codes_bytes, absmax_bytes, BLOCKSIZE_8BIT)
    return codes, {"absmax": absmax, "code": from_numpy(code_table("dynamic"), torch)}


def dequantize_8bit(name: str, value: Any, state: dict[str, Any], target: str) -> Any:
    """The codes ``value`` of param ``name`` restored to ``target`` with their ``state``."""
    value = _on_cpu(value)
    _expect_dtype(name, "values", value, "uint8")
    absmax = _state_array(name, state, "absmax", "float32", _blocks(numel(value), BLOCKSIZE_8BIT))
    code = _state_array(name, state, "code", "float32", 256)
    out, out_bytes = new_array(shape_of(value), _storable(target, value), is_torch(value))
    _sfm.dequantize_blockwise8(
        byte_view(value), byte_view(absmax), byte_view(code), out_bytes, _storable(target, value), BLOCKSIZE_8BIT
    )
    return out


# ---- 4-bit: float4 (FP4) and normfloat4 (NF4) ----


def quantize_4bit(value: Any, quantization_type: str) -> tuple[Any, dict[str, Any]]:
    """Two codes per byte (uint8 of shape ``[ceil(n / 2), 1]``, as bitsandbytes packs them) and the state of
    bitsandbytes' ``QuantState.as_dict()``: quant_type, absmax, blocksize, quant_map, dtype, shape."""
    quant_type = FOUR_BIT_TYPES[quantization_type]
    if is_cuda(value) and (bnb := _bitsandbytes()) is not None:
        packed, state = bnb.quantize_4bit(value, blocksize=BLOCKSIZE_4BIT, quant_type=quant_type)
        state_dict = state.as_dict()
        return packed.cpu(), {
            **{k: v.cpu() if is_torch(v) else v for k, v in state_dict.items()},
            "shape": shape_of(value),
        }
    value = _on_cpu(value)
    torch = is_torch(value)
    n = numel(value)
    packed, packed_bytes = new_array([(n + 1) // 2, 1], "uint8", torch)
    absmax, absmax_bytes = new_array([_blocks(n, BLOCKSIZE_4BIT)], "float32", torch)
    _sfm.quantize_4bit(byte_view(value), dtype_name(value), quant_type, packed_bytes, absmax_bytes, BLOCKSIZE_4BIT)
    return packed, {
        "quant_type": quant_type,
        "absmax": absmax,
        "blocksize": BLOCKSIZE_4BIT,
        "quant_map": from_numpy(code_table(quant_type), torch),
        "dtype": dtype_name(value),
        "shape": shape_of(value),
    }


def dequantize_4bit(name: str, value: Any, state: dict[str, Any], quantization_type: str, target: str) -> Any:
    """The packed codes ``value`` of param ``name`` restored to ``target`` with their ``state``."""
    quant_type = FOUR_BIT_TYPES[quantization_type]
    if state.get("quant_type") != quant_type:
        raise SerializationError(
            f"param {name!r}: quant_type {state.get('quant_type')!r} does not match {quantization_type} "
            f"({quant_type!r})"
        )
    blocksize = state.get("blocksize")
    if blocksize not in _FOUR_BIT_BLOCKSIZES:
        raise SerializationError(f"param {name!r}: blocksize {blocksize!r} is not one of {_FOUR_BIT_BLOCKSIZES}")
    shape = state.get("shape")
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise SerializationError(f"param {name!r}: shape {shape!r} is not a list of non-negative ints")
    n = math.prod(shape)
    value = _on_cpu(value)
    _expect_dtype(name, "values", value, "uint8")
    if numel(value) != (n + 1) // 2:
        raise SerializationError(
            f"param {name!r}: {numel(value)} bytes of 4-bit codes for shape {list(shape)} ({n} values) where "
            f"{(n + 1) // 2} are needed"
        )
    absmax = _state_array(name, state, "absmax", "float32", _blocks(n, blocksize))
    out, out_bytes = new_array(list(shape), _storable(target, value), is_torch(value))
    _sfm.dequantize_4bit(byte_view(value), byte_view(absmax), quant_type, out_bytes, _storable(target, value),
                         blocksize)
    return out


def code_table(name: str) -> np.ndarray:
    """bitsandbytes' code table "dynamic", "fp4" or "nf4" as a new float32 array."""
    return np.array(_sfm.code_table(name), dtype=np.float32)


def _blocks(n: int, blocksize: int) -> int:
    return -(-n // blocksize)


def _storable(target: str, value: Any) -> str:
    """numpy has no bfloat16: a numpy param whose source was bfloat16 comes back as float32."""
    return "float32" if target == "bfloat16" and not is_torch(value) else target


def _on_cpu(value: Any) -> Any:
    return value.cpu() if is_cuda(value) else value


def _expect_dtype(name: str, what: str, value: Any, dtype: str) -> None:
    if not (isinstance(value, np.ndarray) or is_torch(value)) or dtype_name(value) != dtype:
        found = dtype_name(value) if hasattr(value, "dtype") else type(value).__name__
        raise SerializationError(f"param {name!r}: {what} must be a {dtype} array, got {found}")


def _state_array(name: str, state: dict[str, Any], key: str, dtype: str, count: int) -> Any:
    if key not in state:
        raise SerializationError(f"param {name!r}: quant_state has no {key!r}")
    array = state[key]
    _expect_dtype(name, f"quant_state[{key!r}]", array, dtype)
    if numel(array) != count:
        raise SerializationError(f"param {name!r}: quant_state[{key!r}] holds {numel(array)} values, expected {count}")
    return _on_cpu(array)


@functools.cache
def _bitsandbytes() -> Any:
    """``bitsandbytes.functional``, or None where it does not import."""
    try:
        import bitsandbytes.functional as bnb
    except Exception:  # a broken install must not stop the CPU path
        return None
    return bnb
