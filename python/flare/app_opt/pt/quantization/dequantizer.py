"""NVFlare's ``nvflare.app_opt.pt.quantization.dequantizer`` path (the code is ``flare.filters.quantization``)."""

from flare.filters.quantization import ModelDequantizer

__all__ = ["ModelDequantizer"]
