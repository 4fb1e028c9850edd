"""Quantization filters: model params travel as float16, bfloat16, blockwise 8-bit, FP4, NF4 or ADAQUANT and are
restored where they arrive, so training and aggregation run at the original precision (docs/quantization.md).

``ModelQuantizer`` and ``ModelDequantizer`` are NVFlare's filters, with the same message layout; the 8- and 4-bit
kernels are bitsandbytes' formats, computed on the CPU by flare's Rust kernels (no GPU needed) and by
bitsandbytes itself for tensors on a CUDA device.
"""

from __future__ import annotations

from typing import Any

from flare.filters.quantization.dequantizer import ModelDequantizer
from flare.filters.quantization.quantizer import ModelQuantizer, canonical_quantization_type, message_bytes

DEFAULT_TASKS = ("train",)


def add_quantization_filters(recipe: Any, quantization_type: str,
                             tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS) -> None:
    """Adds the four filters to ``recipe`` where NVFlare places them: quantize what the server sends and what a
    client sends back, dequantize both where they arrive, for ``tasks`` (default ``["train"]``)."""
    quantizer = ModelQuantizer(quantization_type=quantization_type)
    dequantizer = ModelDequantizer()
    tasks = list(tasks)
    recipe.add_server_output_filter(quantizer, tasks=tasks)
    recipe.add_server_input_filter(dequantizer, tasks=tasks)
    recipe.add_client_input_filter(dequantizer, tasks=tasks)
    recipe.add_client_output_filter(quantizer, tasks=tasks)


__all__ = [
    "ModelDequantizer",
    "ModelQuantizer",
    "add_quantization_filters",
    "canonical_quantization_type",
    "message_bytes",
]
