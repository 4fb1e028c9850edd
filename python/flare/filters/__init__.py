"""Filters applied to task data and results where they enter or leave a site (``flare.apis.filter.Filter``)."""

from flare.filters.quantization import ModelDequantizer, ModelQuantizer

__all__ = ["ModelDequantizer", "ModelQuantizer"]
