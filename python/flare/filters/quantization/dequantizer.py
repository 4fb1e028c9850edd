"""``ModelDequantizer``: the filter that restores a quantized model's params where they arrive (NVFlare's class)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from flare.apis.filter import Filter, FilterContext
from flare.app_common.abstract.fl_model import FLModel
from flare.errors import SerializationError
from flare.filters.quantization.ada_quant import AdaQuantizer
from flare.filters.quantization.constants import (
    META_KEYS,
    PROCESSED_ALGORITHM,
    QUANT_STATE,
    QUANTIZED_BITS,
    QUANTIZED_FLAG,
    SOURCE_BITS,
    SOURCE_DATATYPE,
)
from flare.filters.quantization.kernels import dequantize_4bit, dequantize_8bit, dequantize_cast
from flare.filters.quantization.quantizer import canonical_quantization_type
from flare.filters.quantization.tensors import from_numpy, is_torch


class ModelDequantizer(Filter):
    """Restores the params a ``ModelQuantizer`` (flare's or NVFlare's) quantized, to their source type and
    container, and removes the quantization keys from ``meta``. A model not marked quantized passes as it is.

    The state comes from the network: one that does not fit its param raises ``SerializationError`` naming the
    param, before anything is allocated for it.
    """

    def process(self, model: FLModel, context: FilterContext) -> FLModel:
        meta = model.meta
        if not meta.get(QUANTIZED_FLAG) or model.params is None:
            return model
        kind = canonical_quantization_type(meta.get(PROCESSED_ALGORITHM))
        if kind is None:
            raise SerializationError(f"unknown quantization type {meta.get(PROCESSED_ALGORITHM)!r} in the model's meta")
        quant_state = _dict_of(meta.get(QUANT_STATE), QUANT_STATE)
        source_datatype = _dict_of(meta.get(SOURCE_DATATYPE), SOURCE_DATATYPE)
        if not isinstance(model.params, dict):
            raise SerializationError(f"a quantized model's params must be a dict, got {type(model.params).__name__}")
        # the runtime pulls the params before filters run; arrays in meta may still wait on their owner
        from flare.fobs.lazy import resolve

        resolve(quant_state)
        params = {
            name: _dequantize(name, value, kind, source_datatype.get(name), quant_state.get(name) or {})
            for name, value in model.params.items()
        }
        restored = copy.copy(model)
        restored.params = params
        restored.meta = {key: value for key, value in meta.items() if key not in META_KEYS}
        return restored


def _dequantize(name: str, value: Any, kind: str, source: Any, state: Any) -> Any:
    if source not in SOURCE_BITS:  # not a float param: never quantized
        return value
    if not isinstance(state, dict):
        raise SerializationError(f"param {name!r}: quant_state is {type(state).__name__}, not a dict")
    if kind == "adaquant":
        if not state:
            return value
        return _as_source(AdaQuantizer().dequantized(value, state, name), source, is_torch(value))
    if QUANTIZED_BITS[kind] >= SOURCE_BITS[source]:
        return value
    if kind in ("float16", "bfloat16"):
        return dequantize_cast(name, value, kind, source)
    if not state:
        raise SerializationError(f"param {name!r}: {source} quantized to {kind} arrived without its quant_state")
    if kind == "blockwise8":
        return dequantize_8bit(name, value, state, source)
    return dequantize_4bit(name, value, state, kind, source)


def _as_source(values: np.ndarray, source: str, torch: bool) -> Any:
    """float64 values as the source type, in the param's container (numpy has no bfloat16: float32 there)."""
    if not torch:
        return values.astype(np.float16 if source == "float16" else np.float32)
    import torch as torch_module

    return from_numpy(values, True).to(getattr(torch_module, source))


def _dict_of(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SerializationError(f"meta {key!r} is {type(value).__name__}, not a dict")
    return value


__all__ = ["ModelDequantizer"]
