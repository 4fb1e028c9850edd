"""Tensors to and from bytes without copies, and tensor downloads.

``flare.tensors.safetensors`` writes and reads the safetensors format for one numpy array or torch tensor (every
torch dtype safetensors knows, bfloat16 and float8 included); ``flare.tensors.npz`` the ``.npz`` items of NVFlare's
numpy downloads. Decoding gives views over the input buffer. ``flare.tensors.downloader`` serves a state dict one
tensor per item through the download service. Neither numpy nor torch is imported until a tensor of theirs is met.
"""

from flare.tensors.downloader import (
    ArrayDownloader,
    TensorDownloader,
    add_arrays,
    add_tensors,
    download_arrays,
    download_tensors,
    download_tensors_as_numpy,
)

__all__ = [
    "ArrayDownloader",
    "TensorDownloader",
    "add_arrays",
    "add_tensors",
    "download_arrays",
    "download_tensors",
    "download_tensors_as_numpy",
]
