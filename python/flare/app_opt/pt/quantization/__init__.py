"""NVFlare's ``nvflare.app_opt.pt.quantization`` path (the code is ``flare.filters.quantization``)."""
