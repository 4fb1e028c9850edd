"""Tensor downloads: a state dict served one tensor per item, each item made on demand, once for all receivers.

Owner::

    downloader = TensorDownloader(cell, num_receivers=4)   # timeout: tensor_min_download_timeout unless given
    ref_id = add_tensors(downloader, model.state_dict())   # send ref_id and cell.fqcn to the receivers

Receiver::

    error, state_dict = download_tensors("server", ref_id, per_request_timeout=60, cell=cell)

Items travel on NVFlare's cacheable-object protocol, as NVFlare's ``TensorDownloadable`` (safetensors of
``{key: tensor}``) and ``ArrayDownloadable`` (``.npz`` of ``{key: array}``) make them, so either side may be NVFlare.
The owner keeps a reference to each tensor, not a serialized copy: an item is made when first asked for, kept in
the transport's chunk cache while receivers need it, and made again only if the cache had to drop it. Received
tensors and arrays are views over the received buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from flare.apis.signal import Signal
from flare.cellnet import Cell
from flare.config import TensorSettings
from flare.errors import ConfigError, FlareError, SerializationError
from flare.streaming.download import ObjectDownloader, open_download
from flare.tensors import npz, safetensors

log = logging.getLogger(__name__)

# NVFlare's default reply size for tensor and array items
MAX_CHUNK_SIZE = 2 * 1024 * 1024

ItemsCallback = Callable[..., Any]


class TensorDownloader(ObjectDownloader):
    """An ``ObjectDownloader`` whose transaction timeout, when none is given, is ``tensor_min_download_timeout``."""

    _setting = "tensor_min_download_timeout"

    def __init__(
        self,
        cell: Cell,
        timeout: float | None = None,
        num_receivers: int = 0,
        *,
        settings: TensorSettings | None = None,
        **kwargs: Any,
    ):
        if timeout is None:
            timeout = getattr(settings or TensorSettings.from_env(), self._setting)
        super().__init__(cell, timeout=timeout, num_receivers=num_receivers, **kwargs)


class ArrayDownloader(TensorDownloader):
    """An ``ObjectDownloader`` whose transaction timeout, when none is given, is ``np_min_download_timeout``."""

    _setting = "np_min_download_timeout"


def add_tensors(
    downloader: ObjectDownloader,
    tensors: Mapping[str, Any],
    max_chunk_size: int = MAX_CHUNK_SIZE,
    ref_id: str | None = None,
) -> str:
    """Serves a state dict of torch tensors or numpy arrays, one safetensors item per entry; returns its ref id.

    The tensors are borrowed: keep them unchanged until the transaction ends. A reply packs items up to
    ``max_chunk_size`` bytes, at least one."""
    return _add_items(downloader, tensors, safetensors.encode, max_chunk_size, ref_id)


def add_arrays(
    downloader: ObjectDownloader,
    arrays: Mapping[str, Any],
    max_chunk_size: int = MAX_CHUNK_SIZE,
    ref_id: str | None = None,
) -> str:
    """Serves a dict of numpy arrays, one ``.npz`` item per entry, as NVFlare's ``add_arrays``; returns its ref id."""
    return _add_items(downloader, arrays, npz.encode, max_chunk_size, ref_id)


def _add_items(
    downloader: ObjectDownloader,
    tensors: Mapping[str, Any],
    encode: Callable[[str, Any], bytearray],
    max_chunk_size: int,
    ref_id: str | None,
) -> str:
    if not isinstance(tensors, Mapping):
        raise SerializationError(f"expected a dict of tensors, got {type(tensors).__name__}")
    keys = list(tensors)
    for key in keys:
        if not isinstance(key, str):
            raise SerializationError(f"tensor names must be str, got {type(key).__name__} {key!r}")
        if encode is safetensors.encode:
            safetensors.dtype_of(tensors[key])  # an unsupported entry fails here, not in a receiver's request
    # a snapshot of the entries: a later change to the dict must not shift which item is which
    values = [tensors[k] for k in keys]

    def produce(index: int) -> bytearray:
        return encode(keys[index], values[index])

    return downloader.add_items(produce, len(keys), max_chunk_size=max_chunk_size, ref_id=ref_id)


def download_tensors(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None,
    cell: Cell,
    secure: bool = False,
    optional: bool = False,
    abort_signal: Signal | None = None,
    tensors_received_cb: ItemsCallback | None = None,
    **cb_kwargs: Any,
) -> tuple[str | None, dict[str, Any] | None]:
    """Downloads a state dict served with ``add_tensors``: ``(None, state_dict)``, or ``(error, None)``.

    Tensors are torch tensors over the received buffers: clone one before changing it in place. With
    ``tensors_received_cb``, it is called as ``cb(tensors, **cb_kwargs)`` with each batch of tensors as it arrives,
    and what it returns (if a dict) is what the result collects. ``secure`` and ``optional`` are NVFlare's and
    have no effect here."""
    return _download(
        from_fqcn, ref_id, per_request_timeout, cell, abort_signal, safetensors.decode_torch, tensors_received_cb,
        cb_kwargs,
    )


def download_tensors_as_numpy(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None,
    cell: Cell,
    abort_signal: Signal | None = None,
    tensors_received_cb: ItemsCallback | None = None,
    **cb_kwargs: Any,
) -> tuple[str | None, dict[str, Any] | None]:
    """As ``download_tensors``, with numpy arrays (read-only views) instead of torch tensors: no torch needed.
    Tensors of a dtype numpy lacks (bfloat16, float8) fail the download."""
    return _download(
        from_fqcn, ref_id, per_request_timeout, cell, abort_signal, safetensors.decode_numpy, tensors_received_cb,
        cb_kwargs,
    )


def download_arrays(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None,
    cell: Cell,
    secure: bool = False,
    optional: bool = False,
    abort_signal: Signal | None = None,
    arrays_received_cb: ItemsCallback | None = None,
    **cb_kwargs: Any,
) -> tuple[str | None, dict[str, Any] | None]:
    """Downloads arrays served with ``add_arrays`` (ours or NVFlare's): ``(None, arrays)`` or ``(error, None)``.
    The arrays are read-only views over the received buffers; ``arrays_received_cb`` as in ``download_tensors``."""
    return _download(
        from_fqcn, ref_id, per_request_timeout, cell, abort_signal, npz.decode, arrays_received_cb, cb_kwargs
    )


def _download(
    from_fqcn: str,
    ref_id: str,
    per_request_timeout: float | None,
    cell: Cell,
    abort_signal: Signal | None,
    decode: Callable[[Any], dict[str, Any]],
    received_cb: ItemsCallback | None,
    cb_kwargs: dict[str, Any],
) -> tuple[str | None, dict[str, Any] | None]:
    if received_cb is not None and not callable(received_cb):
        raise ConfigError("the received callback must be callable")
    result: dict[str, Any] = {}
    try:
        reader = open_download(from_fqcn, ref_id, per_request_timeout, cell, abort_signal=abort_signal)
        try:
            # each piece is one reply's items: decoding it while the next is in flight overlaps the two
            for piece in reader:
                if not isinstance(piece, list):
                    raise SerializationError(f"{ref_id} on {from_fqcn} is not a list of items")
                batch: dict[str, Any] = {}
                for item in piece:
                    batch.update(decode(item))
                if received_cb is None:
                    result.update(batch)
                    continue
                returned = received_cb(batch, **cb_kwargs)
                if isinstance(returned, dict):
                    result.update(returned)
        finally:
            reader.close()
    except FlareError as e:
        log.error("failed to download tensors %s from %s: %s", ref_id, from_fqcn, e)
        return f"{type(e).__name__}: {e}", None
    return None, result


__all__ = [
    "MAX_CHUNK_SIZE",
    "ArrayDownloader",
    "TensorDownloader",
    "add_arrays",
    "add_tensors",
    "download_arrays",
    "download_tensors",
    "download_tensors_as_numpy",
]
