"""Datums: values that travel out of band, next to the msgpack body rather than inside it.

On dump, every bytes-like or str value at least ``threshold`` long (10 MiB by default, as in NVFlare) is moved to a
datum section and replaced in the body by a :class:`DatumRef`; numpy arrays that large put their data there too.
On load, the references are resolved against the sections of the same input, as views where that saves a copy.
"""

from __future__ import annotations

import uuid
from enum import Enum
from typing import Any

from flare.errors import SerializationError

TEN_MEGA = 10 * 1024 * 1024
MIN_THRESHOLD = 1024


class DatumType(Enum):
    TEXT = 1
    BLOB = 2
    FILE = 3


class Datum:
    """A value sent as its own section: text, bytes, or the contents of a file (``value`` is then its path).

    An application may put a Datum in what it sends; the receiver gets it back as a Datum. A FILE datum is written
    to a file on the receiving side (see :func:`flare.fobs.lobs.datum_dir`).
    """

    def __init__(self, datum_type: DatumType, value: Any, dot: int = 0):
        self.datum_id = str(uuid.uuid4())
        self.datum_type = datum_type
        self.value = value
        self.dot = dot

    @staticmethod
    def blob_datum(blob: bytes | bytearray | memoryview, dot: int = 0) -> Datum:
        return Datum(DatumType.BLOB, blob, dot)

    @staticmethod
    def text_datum(text: str, dot: int = 0) -> Datum:
        return Datum(DatumType.TEXT, text, dot)

    @staticmethod
    def file_datum(path: str, dot: int = 0) -> Datum:
        return Datum(DatumType.FILE, path, dot)

    def __repr__(self) -> str:
        return f"Datum({self.datum_type.name}, id={self.datum_id}, dot={self.dot})"


class DatumRef:
    """What the body holds in place of a datum. ``unwrap``: the receiver gets the value rather than the Datum."""

    def __init__(self, datum_id: str, unwrap: bool = False):
        self.datum_id = datum_id
        self.unwrap = unwrap


class _Resolved:
    """A DatumRef read from the body, bound to its datum; replaced by the value before anyone sees it."""

    __slots__ = ("datum", "unwrap")

    def __init__(self, datum: Datum, unwrap: bool):
        self.datum = datum
        self.unwrap = unwrap


class DatumManager:
    """Per-call state of one dump or load: the datums, the threshold and the caller's FOBS context."""

    def __init__(self, threshold: int | None = None, fobs_ctx: dict | None = None):
        if threshold is None:
            threshold = TEN_MEGA
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise TypeError(f"max_value_size must be an int, got {type(threshold).__name__}")
        if threshold < MIN_THRESHOLD:
            raise ValueError(f"max_value_size must be at least {MIN_THRESHOLD}, got {threshold}")
        self.threshold = threshold
        self.fobs_ctx = fobs_ctx if fobs_ctx is not None else {}
        self.datums: dict[str, Datum] = {}
        # decomposers' per-call state, and callbacks run after the body is written: ``cb(manager)`` may add datums,
        # or return a dict to seed ``state`` of a second pass that writes the body again
        self.state: dict[str, Any] = {}
        self.post_cbs: list[Any] = []
        # references read but not yet replaced by their values; lets a load skip the walks when there are none
        self._pending = 0

    def get_fobs_context(self) -> dict:
        return self.fobs_ctx

    def add_datum(self, datum: Datum) -> None:
        if datum.datum_id in self.datums:
            raise SerializationError(f"datum {datum.datum_id} appears twice")
        self.datums[datum.datum_id] = datum

    def get_datum(self, datum_id: str) -> Datum | None:
        return self.datums.get(datum_id)

    def register_post_cb(self, cb: Any) -> None:
        self.post_cbs.append(cb)

    def run_post_cbs(self) -> dict | None:
        """Runs the post callbacks once each; the state seed for a second pass, if one asked for it."""
        seed: dict = {}
        for cb in self.post_cbs:
            asked = cb(self)
            if asked:
                seed.update(asked)
        self.post_cbs = []
        return seed or None

    # dump side

    def externalize(self, data: Any) -> Any:
        """``data`` with large values and Datum objects replaced by references; containers are copied only where
        something in them changed, so the caller's objects stay as they were."""
        kind = type(data)
        if kind is dict:
            changed = None
            for key, value in data.items():
                new = self.externalize(value)
                if new is not value:
                    if changed is None:
                        changed = dict(data)
                    changed[key] = new
            return data if changed is None else changed
        if kind is list:
            changed_list = None
            for i, value in enumerate(data):
                new = self.externalize(value)
                if new is not value:
                    if changed_list is None:
                        changed_list = list(data)
                    changed_list[i] = new
            return data if changed_list is None else changed_list
        if kind in (bytes, bytearray, memoryview, str):
            size = data.nbytes if kind is memoryview else len(data)
            if size < self.threshold:
                return data
            datum = Datum(DatumType.TEXT, data) if kind is str else Datum(DatumType.BLOB, data)
            self.add_datum(datum)
            return DatumRef(datum.datum_id, True)
        if kind is Datum:
            self.add_datum(data)
            return DatumRef(data.datum_id, False)
        return data

    # load side

    def resolve(self, ref: DatumRef) -> _Resolved:
        """Binds a reference read from the body to its datum."""
        datum = self.datums.get(ref.datum_id) if isinstance(ref.datum_id, str) else None
        if datum is None:
            raise SerializationError(f"the body refers to datum {ref.datum_id!r}, which the input does not hold")
        self._pending += 1
        return _Resolved(datum, bool(ref.unwrap))

    def has_pending(self) -> bool:
        return self._pending > 0

    def internalize(self, data: Any, buffers: bool = False) -> Any:
        """``data`` with resolved references replaced by their values, in place (a load owns what it decoded).

        With ``buffers``, out-of-band bytes come as memoryviews over the input instead of copies.
        """
        if self._pending == 0:
            return data
        kind = type(data)
        if kind is _Resolved:
            return self._value_of(data, buffers)
        if kind is dict:
            for key, value in data.items():
                if type(value) in (dict, list, _Resolved):
                    data[key] = self.internalize(value, buffers)
        elif kind is list:
            for i, value in enumerate(data):
                if type(value) in (dict, list, _Resolved):
                    data[i] = self.internalize(value, buffers)
        return data

    def check_all_resolved(self) -> None:
        if self._pending:
            raise SerializationError("a datum reference sits where it cannot be resolved (a map key?)")

    def _value_of(self, ref: _Resolved, buffers: bool) -> Any:
        self._pending -= 1
        datum = ref.datum
        if datum.datum_type is DatumType.FILE or not ref.unwrap:
            if datum.datum_type is DatumType.BLOB and type(datum.value) is not bytes:
                datum.value = bytes(datum.value)  # a Datum handed to the application owns its bytes
            return datum
        value = datum.value
        if datum.datum_type is DatumType.BLOB and not buffers and type(value) is not bytes:
            return bytes(value)
        return value
