"""Arrays and tensors by reference: NVFlare's download path inside FOBS.

When a dump's FOBS context holds a cell (``fobs_ctx["cell"]``; cell payloads carry theirs) and downloads are on for
the type (``<prefix>download_chunk_size`` > 0, NVFlare's switch), each numpy array or torch tensor is written as
``{"type": "ref", "data": "T<n>"}`` and collected. After the body is written, if the type's items add up to at least
``<prefix>download_threshold`` bytes, they are served in one download transaction on that cell (``add_arrays``'
``.npz`` items for numpy, ``add_tensors``' safetensors items for torch, as NVFlare's downloadables make them), and
the message carries a TEXT datum with dot NUMPY_DOWNLOAD (3) or TENSOR_DOWNLOAD (6) holding
``{"fqcn": <owner>, "ref_id": <uuid>}``. Below the threshold the body is written again with the type in its native
form, so a small message costs no round trips.

On load, the datum is handled before the body is read: the receiver, whose FOBS context must hold its cell,
downloads the items and each reference is filled in with its array or tensor (views over the received buffers).
With ``fobs_ctx["lazy_download"]`` the load pulls nothing and each reference becomes a
``flare.fobs.lazy.LazyDownloadRef``; dumping those again with a cell forwards the owner's download (see lazy.py).

Prefixes are NVFlare's: ``np_`` for numpy, ``tensor_`` for torch; settings are ``flare.config.TensorSettings``.
"""

from __future__ import annotations

import json
import logging
import uuid
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, TypeVar

from flare.errors import SerializationError
from flare.fobs.datum import Datum, DatumManager, DatumRef, DatumType
from flare.fobs.decomposer import Decomposer
from flare.fobs.lazy import LazyDownloadRef, Source, values_of

log = logging.getLogger(__name__)

NUMPY_DOWNLOAD = 3
TENSOR_DOWNLOAD = 6

# fobs_ctx keys, NVFlare's names
CELL = "cell"
NUM_RECEIVERS = "num_receivers"
DOWNLOAD_REQ_TIMEOUT = "download_req_timeout"
ABORT_SIGNAL = "abort_signal"
DOWNLOAD_COMPLETE_CB = "download_complete_cb"
TENSOR_SETTINGS = "tensor_settings"  # a flare.config.TensorSettings for this call (a job's)
NATIVE = "native"  # True: every array and tensor of this dump in its native form
LAZY_DOWNLOAD = "lazy_download"  # True: a load pulls nothing; references become flare.fobs.lazy.LazyDownloadRef

_STATE = "via_downloader"  # manager.state key: per-type items of this dump
_FORCE_NATIVE = "via_downloader_native"  # manager.state key: prefixes a second pass writes natively
_RESOLVED = "via_downloader_resolved"  # manager.state key: values a second pass writes for lazy references
_ENC_TYPE, _ENC_DATA, _NATIVE, _REF = "type", "data", "native", "ref"
_FQCN, _REF_ID = "fqcn", "ref_id"


@dataclass(frozen=True)
class Kind:
    """What differs between numpy arrays and torch tensors on this path."""

    prefix: str
    dot: int
    name: str
    type_name: str  # on the wire


NUMPY = Kind("np_", NUMPY_DOWNLOAD, "numpy", "numpy.ndarray")
TENSOR = Kind("tensor_", TENSOR_DOWNLOAD, "torch", "torch.Tensor")
_KINDS = {NUMPY.dot: NUMPY, TENSOR.dot: TENSOR}


class _Items:
    """The arrays or tensors of one type met in one dump, each once however often it appears, and the lazy
    references among them."""

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}
        self.values: dict[str, Any] = {}
        self.nbytes = 0
        self.lazy: list[LazyDownloadRef] = []

    def add(self, target: Any, nbytes: int) -> str:
        item_id = self.ids.get(id(target))
        if item_id is None:
            item_id = f"T{len(self.values)}"
            self.ids[id(target)] = item_id
            self.values[item_id] = target  # also keeps id(target) from being reused during the dump
            self.nbytes += nbytes
        return item_id

    def add_lazy(self, ref: LazyDownloadRef) -> str:
        self.lazy.append(ref)
        return ref.item_id

    def lazy_sources(self) -> set[tuple[str, str]]:
        return {(ref.fqcn, ref.ref_id) for ref in self.lazy}

    def forwards(self) -> bool:
        """All of them are lazy references into one owner's download: the message points there again, as it is."""
        return not self.values and len(self.lazy_sources()) == 1


_SETTINGS = "via_downloader_settings"  # manager.state key: the settings, read once per dump or load


def _settings(manager: DatumManager) -> Any:
    """The tensor settings: the context's ``tensor_settings`` (a job's), else defaults and environment, read on the
    first array or tensor of a call, not on each."""
    settings = manager.state.get(_SETTINGS)
    if settings is None:
        settings = manager.fobs_ctx.get(TENSOR_SETTINGS)
        if settings is None:
            from flare.config import TensorSettings

            settings = TensorSettings.from_env()
        manager.state[_SETTINGS] = settings
    return settings


def _on_download_path(manager: DatumManager, kind: Kind) -> bool:
    ctx = manager.fobs_ctx
    if not ctx.get(CELL) or ctx.get(NATIVE) or kind.prefix in manager.state.get(_FORCE_NATIVE, ()):
        return False
    return getattr(_settings(manager), kind.prefix + "download_chunk_size") > 0


def _items_of(manager: DatumManager, kind: Kind) -> _Items:
    found = manager.state.setdefault(_STATE, {})
    if not found:
        manager.post_cbs.append(_finish)
    return found.setdefault(kind, _Items())


def as_ref(target: Any, nbytes: int, manager: DatumManager | None, kind: Kind) -> dict | None:
    """The reference that stands for ``target`` in the body, or None when it goes in its native form."""
    if manager is None or not _on_download_path(manager, kind):
        return None
    return {_ENC_TYPE: _REF, _ENC_DATA: _items_of(manager, kind).add(target, nbytes)}


def forward_ref(lazy: LazyDownloadRef, manager: DatumManager | None) -> dict | None:
    """The reference a lazy placeholder is written as again, or None when its value is to be written instead."""
    kind = lazy.source.kind
    if manager is None or not _on_download_path(manager, kind) or lazy.key in manager.state.get(_RESOLVED, {}):
        return None
    return {_ENC_TYPE: _REF, _ENC_DATA: _items_of(manager, kind).add_lazy(lazy)}


def lazy_value(lazy: LazyDownloadRef, manager: DatumManager | None) -> Any:
    """The array or tensor a lazy placeholder stands for: resolved after a first pass, or pulled now."""
    resolved = manager.state.get(_RESOLVED, {}) if manager is not None else {}
    if lazy.key in resolved:
        return resolved[lazy.key]
    return values_of([lazy])[lazy.key]


def _resolve_mixed(found: dict[Kind, _Items]) -> dict:
    """Pulls the lazy references of each type that cannot forward its owner's download as it is (a message has one
    download per type): they join this process's own arrays. Values by ``LazyDownloadRef.key``."""
    resolved: dict = {}
    for kind, items in found.items():
        if not items.lazy or items.forwards():
            continue
        sources = sorted(f"{ref_id} on {fqcn}" for fqcn, ref_id in items.lazy_sources())
        log.warning(
            "one message holds %d lazy %s references from %s and %d %s values of this process: the references are "
            "pulled here and sent as this process's own (a message carries one download per type)",
            len(items.lazy), kind.name, ", ".join(sources), len(items.values), kind.name,
        )
        values = values_of(items.lazy)
        items.nbytes += sum(int(value.nbytes) for value in values.values())
        resolved.update(values)
    return resolved


def _finish(manager: DatumManager) -> dict | None:
    """After the body: serves what crossed the threshold and forwards lazy references; asks for a second pass for
    the rest (types written natively, lazy references pulled here)."""
    from flare.streaming.download import ObjectDownloader
    from flare.tensors.downloader import add_arrays, add_tensors

    found: dict[Kind, _Items] = manager.state.get(_STATE, {})
    settings = _settings(manager)
    resolved = _resolve_mixed(found)
    small = {
        k.prefix
        for k, items in found.items()
        if not items.forwards() and items.nbytes < getattr(settings, k.prefix + "download_threshold")
    }
    if small or resolved:
        return {_FORCE_NATIVE: small, _RESOLVED: resolved, _SETTINGS: settings}
    ctx = manager.fobs_ctx
    cell = ctx[CELL]
    served = {kind: items for kind, items in found.items() if not items.forwards()}
    for kind, items in found.items():
        if kind not in served:
            # the next receiver pulls from the owner: no transaction here, and no receiver added there
            owner = items.lazy[0]
            manager.add_datum(Datum(DatumType.TEXT, json.dumps({_FQCN: owner.fqcn, _REF_ID: owner.ref_id}), kind.dot))
    if not served:
        return None
    timeout = max(getattr(settings, k.prefix + "min_download_timeout") for k in served)
    downloader = ObjectDownloader(
        cell,
        timeout=timeout,
        num_receivers=ctx.get(NUM_RECEIVERS) or 1,
        transaction_done_cb=ctx.get(DOWNLOAD_COMPLETE_CB),
    )
    for kind, items in served.items():
        ref_id = str(uuid.uuid4())
        add = add_arrays if kind is NUMPY else add_tensors
        chunk = int(getattr(settings, kind.prefix + "download_chunk_size"))
        add(downloader, items.values, max_chunk_size=chunk, ref_id=ref_id)
        ref = json.dumps({_FQCN: cell.fqcn, _REF_ID: ref_id})
        manager.add_datum(Datum(DatumType.TEXT, ref, kind.dot))
    ctx["downloader"] = downloader
    return None


def download(datum: Datum, manager: DatumManager) -> None:
    """Pulls the items a download datum names; the references in the body are then filled in from them. A lazy
    load pulls nothing: the references become placeholders of the owner's download."""
    from flare.tensors.downloader import download_arrays, download_tensors

    kind = _KINDS.get(datum.dot)
    if kind is None:
        raise SerializationError(f"datum object type {datum.dot} is not a download")
    try:
        ref = json.loads(datum.value)
        fqcn, ref_id = ref[_FQCN], ref[_REF_ID]
        if not isinstance(fqcn, str) or not isinstance(ref_id, str):
            raise TypeError("fqcn and ref_id must be strings")
    except (ValueError, TypeError, KeyError) as e:
        raise SerializationError(f"download datum: bad reference ({type(e).__name__}: {e})") from None
    ctx = manager.fobs_ctx
    cell = ctx.get(CELL)
    timeout = ctx.get(DOWNLOAD_REQ_TIMEOUT) or getattr(_settings(manager), kind.prefix + "streaming_per_request_timeout")
    if ctx.get(LAZY_DOWNLOAD):
        manager.state.setdefault(_STATE, {})[kind] = Source(fqcn, ref_id, kind, cell, timeout, ctx.get(ABORT_SIGNAL))
        return
    if cell is None:
        raise SerializationError(
            f"the payload's arrays or tensors are to be downloaded from {fqcn}, and loading it needs a cell: "
            "pass fobs_ctx={'cell': cell}"
        )
    fetch = download_arrays if kind is NUMPY else download_tensors
    error, items = fetch(fqcn, ref_id, timeout, cell, abort_signal=ctx.get(ABORT_SIGNAL))
    if error or items is None:
        raise SerializationError(f"failed to download {ref_id} from {fqcn}: {error}")
    manager.state.setdefault(_STATE, {})[kind] = items


def from_ref(item_id: Any, manager: DatumManager | None, kind: Kind) -> Any:
    """The downloaded array or tensor a reference names; on a lazy load, its placeholder."""
    items = manager.state.get(_STATE, {}).get(kind) if manager is not None else None
    if items is None:
        raise SerializationError(f"a reference to {item_id!r} without a download datum for it")
    if not isinstance(item_id, str):
        raise SerializationError(f"the download holds no item {item_id!r}")
    if isinstance(items, Source):
        return LazyDownloadRef(items, item_id)
    found = items.get(item_id)
    if found is None:
        raise SerializationError(f"the download holds no item {item_id!r}")
    return found


T = TypeVar("T")


class ViaDownloaderDecomposer(Decomposer[T]):
    """NVFlare's decomposer shape for arrays and tensors: a reference on the download path, else
    ``{"type": "native", "data": <bytes>}``, the bytes in the body or, from the datum threshold on, in a datum
    written straight from the object's memory. Subclasses say how one type is sized, written and read back.

    A ``LazyDownloadRef`` standing for this type is written here too: as its reference again, or as its value."""

    accepts_buffers = True
    kind: Kind
    label: str  # names the type in errors
    header_estimate = 128  # bytes the native form adds to the data, for the datum threshold

    @abstractmethod
    def nbytes(self, target: T) -> int:
        """Bytes of the object's data."""

    @abstractmethod
    def datum_value(self, target: T) -> Any:
        """What a datum writes for the object (its parts written without a copy)."""

    @abstractmethod
    def native_bytes(self, target: T) -> bytes:
        """The native form, for the message body."""

    @abstractmethod
    def from_native(self, payload: bytes | memoryview, copy: bool) -> T:
        """The object in a native form: a view over ``payload``, or a writable copy."""

    def validate(self, target: T) -> None:
        """Refuses an object that cannot travel; by default every one can."""

    def supported_dots(self) -> list[int]:
        return [self.kind.dot]

    def process_datum(self, datum: Datum, manager: DatumManager) -> None:
        download(datum, manager)

    def decompose(self, target: T, manager: DatumManager | None = None) -> Any:
        if isinstance(target, LazyDownloadRef):
            forwarded = forward_ref(target, manager)
            if forwarded is not None:
                return forwarded
            target = lazy_value(target, manager)
        self.validate(target)
        nbytes = self.nbytes(target)
        ref = as_ref(target, nbytes, manager, self.kind)
        if ref is not None:
            return ref
        if manager is not None and nbytes + self.header_estimate >= manager.threshold:
            datum = Datum(DatumType.BLOB, self.datum_value(target))
            manager.add_datum(datum)
            return {_ENC_TYPE: _NATIVE, _ENC_DATA: DatumRef(datum.datum_id, True)}
        return {_ENC_TYPE: _NATIVE, _ENC_DATA: self.native_bytes(target)}

    def recompose(self, data: Any, manager: DatumManager | None = None) -> T:
        if not isinstance(data, dict):
            raise SerializationError(f"{self.label}: expected a map")
        kind, payload = data.get(_ENC_TYPE), data.get(_ENC_DATA)
        if kind == _REF:
            return from_ref(payload, manager, self.kind)
        if kind != _NATIVE or not isinstance(payload, (bytes, memoryview)):
            raise SerializationError(f"{self.label}: unknown encoding {kind!r}")
        # an out-of-band section arrives as a memoryview into the input: build over it. Bytes from the msgpack body
        # are immutable and small: copy, so that the result is writable like np.load's.
        return self.from_native(payload, copy=isinstance(payload, bytes))
