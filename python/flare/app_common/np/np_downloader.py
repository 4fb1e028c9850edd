"""NVFlare's ``nvflare.app_common.np.np_downloader``: ``add_arrays`` and ``download_arrays``, implemented in
``flare.tensors.downloader``."""

from flare.streaming.download import ObjectDownloader
from flare.tensors.downloader import ArrayDownloader, add_arrays, download_arrays

__all__ = ["ArrayDownloader", "ObjectDownloader", "add_arrays", "download_arrays"]
