"""NVFlare's ``nvflare.app_opt.pt.quantization.quantizer`` path (the code is ``flare.filters.quantization``)."""

from flare.filters.quantization import ModelQuantizer

__all__ = ["ModelQuantizer"]
