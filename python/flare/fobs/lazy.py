"""Lazy downloads: arrays and tensors that a message serves by download, left on their owner until needed.

Loading with ``fobs_ctx={"cell": cell, "lazy_download": True}`` (or a cell whose ``fobs_ctx`` holds the key) pulls
nothing: each array or tensor the message names by download becomes a :class:`LazyDownloadRef`, a placeholder that
knows its owner, the owner's reference id and its item. Such a process can:

- **pass the message on**: dumped again with a cell in the context (any cell payload), the placeholders are written
  as the same references and the message points at the original owner, so the next receiver pulls from there and
  this process never holds the data (docs/fobs.md, "Lazy downloads");
- **fold the model tensor by tensor**: :func:`iter_resolved` pulls a dict's entries reply by reply;
- **materialize it**: :func:`resolve` replaces every placeholder in a structure by its value.

The owner serves each receiver once, so each owner reference is pulled at most once per load (again only after a
pull that failed): items pulled but not handed out by :func:`iter_resolved` are kept by the load's placeholders for
a later :func:`resolve`.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flare.app_common.abstract.fl_model import FLModel
from flare.errors import DownloadError, FlareError, SerializationError

if TYPE_CHECKING:
    from flare.apis.signal import Signal
    from flare.cellnet import Cell
    from flare.fobs.via_downloader import Kind

# (owner fqcn, owner ref id, item id): one array or tensor, however many placeholders stand for it
ItemKey = tuple[str, str, str]


class Source:
    """The owner's download behind one type of a lazy load, pulled at most once."""

    def __init__(
        self, fqcn: str, ref_id: str, kind: Kind, cell: Cell | None, timeout: float | None, abort_signal: Signal | None
    ):
        self.fqcn = fqcn
        self.ref_id = ref_id
        self.kind = kind
        self.cell = cell
        self.timeout = timeout
        self.abort_signal = abort_signal
        self._lock = threading.Lock()
        self._pulled = False
        self._kept: dict[str, Any] = {}

    def batches(self, handed_out: Collection[str] = ()) -> Iterator[dict[str, Any]]:
        """The items by id, one download reply at a time. The first complete pull from the owner keeps the items
        not in ``handed_out``; a later call gives what was kept. A pull that failed or was left early may be tried
        again (the owner starts a receiver that asks again from the beginning)."""
        with self._lock:
            pulled, self._pulled = self._pulled, True
        if pulled:
            yield self._kept
            return
        complete = False
        try:
            yield from self._pull(handed_out)
            complete = True
        finally:
            if not complete:
                self._kept.clear()
                self._pulled = False

    def _pull(self, handed_out: Collection[str]) -> Iterator[dict[str, Any]]:
        if self.cell is None:
            raise SerializationError(f"{self}: pulling needs a cell; load with fobs_ctx={{'cell': cell, ...}}")
        from flare.streaming.download import open_download
        from flare.tensors import npz, safetensors

        decode = npz.decode if self.kind.name == "numpy" else safetensors.decode_torch
        try:
            reader = open_download(self.fqcn, self.ref_id, self.timeout, self.cell, abort_signal=self.abort_signal)
            try:
                for piece in reader:
                    if not isinstance(piece, list):
                        raise SerializationError("a download reply is not a list of items")
                    batch: dict[str, Any] = {}
                    for item in piece:
                        batch.update(decode(item))
                    self._kept.update((k, v) for k, v in batch.items() if k not in handed_out)
                    yield batch
            finally:
                reader.close()
        except SerializationError as e:
            raise SerializationError(f"{self}: {e}") from None
        except FlareError as e:
            raise DownloadError(f"{self} failed: {type(e).__name__}: {e}") from e

    def __str__(self) -> str:
        return f"lazy download {self.ref_id} of {self.kind.name} items from {self.fqcn}"


class LazyDownloadRef:
    """An array or tensor left on its owner: ``fqcn`` and ``ref_id`` name the owner's download, ``item_id`` the item
    in it, ``kind`` is ``"numpy"`` or ``"torch"``, ``cell`` the cell it is pulled through (that of the load).

    It holds no data. Dumped with a cell in the FOBS context it is written as the owner's reference again; without
    one, it is pulled and written as its value. Anywhere else, resolve it first (:func:`resolve`,
    :func:`iter_resolved`): it is not an array, and using it as one raises ``SerializationError``.
    """

    __slots__ = ("item_id", "source")

    def __init__(self, source: Source, item_id: str):
        self.source = source
        self.item_id = item_id

    @property
    def fqcn(self) -> str:
        return self.source.fqcn

    @property
    def ref_id(self) -> str:
        return self.source.ref_id

    @property
    def kind(self) -> str:
        return self.source.kind.name

    @property
    def cell(self) -> Cell | None:
        return self.source.cell

    @property
    def key(self) -> ItemKey:
        return self.source.fqcn, self.source.ref_id, self.item_id

    def fobs_stands_for(self) -> str:
        """The wire type name FOBS writes this as (with that type's decomposer)."""
        return self.source.kind.type_name

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise SerializationError(f"{self!r} is not an array yet: call flare.fobs.lazy.resolve on what holds it")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(
            f"{self!r} has no attribute {name!r}: it stands for a {self.kind} value not pulled yet; "
            "call flare.fobs.lazy.resolve on what holds it"
        )

    def __copy__(self) -> LazyDownloadRef:
        return self

    def __deepcopy__(self, memo: dict) -> LazyDownloadRef:
        return self

    def __repr__(self) -> str:
        return f"LazyDownloadRef({self.kind} {self.item_id} of {self.ref_id} on {self.fqcn})"


def has_lazy(obj: Any) -> bool:
    """Whether ``obj`` holds a ``LazyDownloadRef`` (in dicts, lists, tuples, an FLModel's params and
    optimizer_params)."""
    return next(_lazy_refs(obj), None) is not None


def iter_resolved(params: Mapping) -> Iterator[tuple[Any, Any]]:
    """Every ``(key, value)`` of ``params``, lazy values pulled from their owners.

    Values that are not lazy come first, as they are; then the lazy ones, in the order the owner's replies bring
    them, each reply decoded and handed out before the next is taken. A consumer that folds each value and drops it
    holds the few replies in flight (a reply packs items up to the owner's ``<prefix>download_chunk_size``, 2 MiB by
    default, and holds at least one), never the model. Raises ``DownloadError`` or ``SerializationError`` naming
    the owner and reference when a pull fails.
    """
    wanted: dict[tuple[str, str], tuple[Source, dict[str, list[Any]]]] = {}
    for key, value in params.items():
        if isinstance(value, LazyDownloadRef):
            _, keys = wanted.setdefault((value.fqcn, value.ref_id), (value.source, {}))
            keys.setdefault(value.item_id, []).append(key)
        else:
            yield key, value
    for source, keys in wanted.values():
        for batch in source.batches(handed_out=frozenset(keys)):
            for item_id, value in batch.items():
                for key in keys.pop(item_id, ()):
                    yield key, value
        _check_all_there(source, keys)


def resolve(obj: Any) -> Any:
    """``obj`` with every ``LazyDownloadRef`` replaced by its value: numpy arrays and torch tensors as an eager load
    gives them (read-only views over the received buffers). Dicts, lists and an FLModel's params and
    optimizer_params are changed in place, tuples rebuilt; each owner's download is pulled once."""
    refs = list(_lazy_refs(obj))
    if not refs:
        return obj
    return _replaced(obj, values_of(refs))


def values_of(refs: Iterable[LazyDownloadRef]) -> dict[ItemKey, Any]:
    """The values of ``refs``, by ``LazyDownloadRef.key``, each owner's download pulled once."""
    wanted: dict[tuple[str, str], tuple[Source, set[str]]] = {}
    for ref in refs:
        wanted.setdefault((ref.fqcn, ref.ref_id), (ref.source, set()))[1].add(ref.item_id)
    values: dict[ItemKey, Any] = {}
    for source, item_ids in wanted.values():
        missing = set(item_ids)
        for batch in source.batches():
            for item_id in item_ids & batch.keys():
                values[source.fqcn, source.ref_id, item_id] = batch[item_id]
                missing.discard(item_id)
        _check_all_there(source, missing)
    return values


def _check_all_there(source: Source, missing: Collection[str]) -> None:
    if missing:
        raise SerializationError(
            f"{source} holds no items {sorted(missing)}: pulled already and handed out (an owner serves each "
            "receiver once; resolve everything that needs them in one call), or never served"
        )


def _lazy_refs(obj: Any) -> Iterator[LazyDownloadRef]:
    if isinstance(obj, LazyDownloadRef):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _lazy_refs(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _lazy_refs(value)
    elif isinstance(obj, FLModel):
        yield from _lazy_refs(obj.params)
        yield from _lazy_refs(obj.optimizer_params)


def _replaced(obj: Any, values: dict[ItemKey, Any]) -> Any:
    if isinstance(obj, LazyDownloadRef):
        return values[obj.key]
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _replaced(value, values)
    elif isinstance(obj, list):
        obj[:] = [_replaced(value, values) for value in obj]
    elif isinstance(obj, tuple):
        items = [_replaced(value, values) for value in obj]
        if all(new is old for new, old in zip(items, obj)):
            return obj
        make = getattr(type(obj), "_make", type(obj))  # a named tuple takes its fields by position
        return make(items)
    elif isinstance(obj, FLModel):
        obj.params = _replaced(obj.params, values)
        obj.optimizer_params = _replaced(obj.optimizer_params, values)
    return obj


__all__ = ["LazyDownloadRef", "has_lazy", "iter_resolved", "resolve"]
