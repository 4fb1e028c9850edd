"""NVFlare's ``nvflare.app_opt.pt.tensor_downloader``: ``add_tensors`` and ``download_tensors``, implemented in
``flare.tensors.downloader``."""

from flare.streaming.download import ObjectDownloader
from flare.tensors.downloader import TensorDownloader, add_tensors, download_tensors

__all__ = ["ObjectDownloader", "TensorDownloader", "add_tensors", "download_tensors"]
