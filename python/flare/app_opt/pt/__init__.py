"""PyTorch parts at NVFlare's ``nvflare.app_opt.pt`` paths. torch is imported only when a tensor is met."""
