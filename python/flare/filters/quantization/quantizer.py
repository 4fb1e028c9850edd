"""``ModelQuantizer``: the filter that quantizes a model's params before they leave a site (NVFlare's class)."""

from __future__ import annotations

import copy
import logging
from typing import Any

from flare.apis.filter import Filter, FilterContext
from flare.app_common.abstract.fl_model import FLModel
from flare.errors import ConfigError
from flare.filters.quantization.ada_quant import AdaQuantizer
from flare.filters.quantization.constants import (
    ALIASES,
    PROCESSED_ALGORITHM,
    QUANT_STATE,
    QUANTIZATION_TYPE,
    QUANTIZED_BITS,
    QUANTIZED_FLAG,
    SOURCE_BITS,
    SOURCE_DATATYPE,
)
from flare.filters.quantization.kernels import quantize_4bit, quantize_8bit, quantize_cast
from flare.filters.quantization.tensors import dtype_name, is_array, nbytes

log = logging.getLogger(__name__)

_MB = 1024 * 1024


class ModelQuantizer(Filter):
    """Quantizes the float params of a model (numpy arrays or torch tensors of float32, float16 or bfloat16) to
    ``quantization_type``, and records in ``meta`` what the receiving ``ModelDequantizer`` needs to restore them.

    Parameters
    ----------
    quantization_type
        ``"float16"``, ``"bfloat16"``, ``"blockwise8"``, ``"float4"``, ``"normfloat4"`` or ``"adaquant"``, in any
        case; ``"fp16"``, ``"bf16"``, ``"fp4"`` and ``"nf4"`` are accepted too. A param already at or below the
        type's bits (float16 to float16, say) is left as it is; params that are not floats (ints, bools) pass
        untouched. A model marked quantized already is passed on as it is.
    """

    def __init__(self, quantization_type: str = "float16"):
        canonical = canonical_quantization_type(quantization_type)
        if canonical is None:
            names = ", ".join(t.lower() for t in QUANTIZATION_TYPE)
            raise ConfigError(
                f"quantization_type {quantization_type!r} is not one of {names} (or fp16, bf16, fp4, nf4)"
            )
        self.quantization_type = canonical

    def process(self, model: FLModel, context: FilterContext) -> FLModel:
        if model.params is None or model.meta.get(QUANTIZED_FLAG):
            return model
        if not isinstance(model.params, dict):
            raise TypeError(f"quantization needs params as a dict of arrays, got {type(model.params).__name__}")
        params: dict[str, Any] = {}
        quant_state: dict[str, dict[str, Any]] = {}
        source_datatype: dict[str, str] = {}
        for name, value in model.params.items():
            params[name], quant_state[name], source_datatype[name] = self._quantize(name, value)
        quantized = copy.copy(model)
        quantized.params = params
        quantized.meta = {
            **model.meta,
            PROCESSED_ALGORITHM: self.quantization_type,
            QUANT_STATE: quant_state,
            SOURCE_DATATYPE: source_datatype,
            QUANTIZED_FLAG: True,
        }
        if log.isEnabledFor(logging.INFO):
            before, _ = message_bytes(model.params, {})
            after, meta = message_bytes(params, quant_state)
            log.info("%s: quantized to %s: %.2f MB -> %.2f MB + %.2f MB of quant_state", context.task_name,
                     self.quantization_type, before / _MB, after / _MB, meta / _MB)
        return quantized

    def _quantize(self, name: str, value: Any) -> tuple[Any, dict[str, Any], str]:
        """The value to send, its state (empty when left as it is) and its source type."""
        if not is_array(value):
            return value, {}, type(value).__name__
        source = dtype_name(value)
        if source not in SOURCE_BITS:
            if "float" in source or "complex" in source:
                raise ValueError(
                    f"param {name!r} is {source}: quantization takes float32, float16 and bfloat16 params; cast "
                    "the model to float32 or leave quantization off"
                )
            return value, {}, source
        kind = self.quantization_type
        if kind == "adaquant":
            quantized, state = AdaQuantizer().quantize(value)
            return quantized, state, source
        if QUANTIZED_BITS[kind] >= SOURCE_BITS[source]:
            return value, {}, source
        if kind in ("float16", "bfloat16"):
            return quantize_cast(value, kind), {}, source
        if kind == "blockwise8":
            quantized, state = quantize_8bit(value)
        else:
            quantized, state = quantize_4bit(value, kind)
        return quantized, state, source


def canonical_quantization_type(name: Any) -> str | None:
    """The lower-case name of a quantization type given in any case or by its short name; None if unknown."""
    if not isinstance(name, str):
        return None
    lowered = name.lower()
    lowered = ALIASES.get(lowered, lowered)
    return lowered if lowered.upper() in QUANTIZATION_TYPE else None


def message_bytes(params: dict[str, Any], quant_state: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """The bytes of a model's arrays and of the arrays in its ``quant_state`` (scales and code tables), counted
    as NVFlare counts them."""
    payload = sum(nbytes(value) for value in params.values() if is_array(value))
    meta = sum(nbytes(item) for state in quant_state.values() for item in state.values() if is_array(item))
    return payload, meta


__all__ = ["ModelQuantizer", "canonical_quantization_type", "message_bytes"]
