"""``DXO``, NVFlare's Data Exchange Object: a kind of data (weights, weight differences, metrics, ...), the data
itself and meta properties. In a Shareable it sits under the ``"DXO"`` key as ``{"kind", "data", "meta"}``."""

from __future__ import annotations

import copy
from enum import Enum
from typing import Any

from flare.apis.fl_constant import FLMetaKey
from flare.apis.shareable import ReservedHeaderKey, Shareable


class DataKind(str, Enum):
    FL_MODEL = "FL_MODEL"
    WEIGHTS = "WEIGHTS"
    WEIGHT_DIFF = "WEIGHT_DIFF"
    METRICS = "METRICS"
    ANALYTIC = "ANALYTIC"
    COLLECTION = "COLLECTION"  # a dict or list of DXOs
    STATISTICS = "STATISTICS"
    PSI = "PSI"
    APP_DEFINED = "APP_DEFINED"  # data of any form the application defines


class MetaKey(FLMetaKey):
    """Keys of ``DXO.meta``."""


_KEY_KIND = "kind"
_KEY_DATA = "data"
_KEY_META = "meta"
_KEY_DXO = "DXO"
_CONTENT_TYPE_DXO = "DXO"


class DXO:
    """Data of one kind with its meta properties.

    Parameters
    ----------
    data_kind
        A ``DataKind`` (or any string, as NVFlare allows).
    data
        A dict, or anything for ``DataKind.APP_DEFINED``; None becomes ``{}``.
    meta
        A dict of properties; None becomes ``{}``.

    Raises ``ValueError`` when the data or meta have the wrong type.
    """

    def __init__(self, data_kind: DataKind | str, data: Any, meta: dict | None = None):
        self.data_kind = data_kind
        self.data = {} if data is None else data
        self.meta = {} if meta is None else meta
        err = self.validate()
        if err:
            raise ValueError(f"invalid DXO: {err}")

    def validate(self) -> str:
        """What is wrong with this DXO, or "" when nothing is."""
        if self.data is None:
            return "missing data"
        if self.data_kind != DataKind.APP_DEFINED and not isinstance(self.data, dict):
            return f"invalid data: expect dict but got {type(self.data)}"
        if self.meta is not None and not isinstance(self.meta, dict):
            return f"invalid props: expect dict but got {type(self.meta)}"
        return ""

    def get_meta_prop(self, key: str, default: Any = None) -> Any:
        if self.meta and isinstance(self.meta, dict):
            return self.meta.get(key, default)
        return default

    def set_meta_prop(self, key: str, value: Any) -> None:
        if self.meta is None:
            self.meta = {}
        self.meta[key] = value

    def remove_meta_props(self, keys: list[str]) -> None:
        if self.meta and keys:
            for key in keys:
                self.meta.pop(key, None)

    def get_meta_props(self) -> dict:
        return self.meta

    def update_meta_props(self, meta: dict) -> None:
        """Adds a deep copy of ``meta``'s items to this DXO's meta."""
        self.meta.update(copy.deepcopy(meta))

    def add_filter_history(self, filter_name: str | list[str]) -> None:
        """Records the filters that processed the data, in ``meta["filter_history"]``."""
        if not filter_name:
            return
        history = self.get_meta_prop(MetaKey.FILTER_HISTORY)
        if not history:
            history = []
            self.set_meta_prop(MetaKey.FILTER_HISTORY, history)
        if isinstance(filter_name, str):
            history.append(filter_name)
        else:
            history.extend(filter_name)

    def get_filter_history(self) -> list[str] | None:
        return self.get_meta_prop(MetaKey.FILTER_HISTORY)

    def to_dict(self) -> dict:
        return {_KEY_KIND: self.data_kind, _KEY_DATA: self.data, _KEY_META: self.meta}

    def update_shareable(self, s: Shareable) -> Shareable:
        """Puts this DXO into ``s`` (marking its content type) and returns ``s``."""
        s.set_header(ReservedHeaderKey.CONTENT_TYPE, _CONTENT_TYPE_DXO)
        s[_KEY_DXO] = self.to_dict()
        return s

    def to_shareable(self) -> Shareable:
        return self.update_shareable(Shareable())

    def to_bytes(self) -> bytes:
        from flare import fobs

        return fobs.dumps(self)

    def to_file(self, file_path: str) -> None:
        from flare import fobs

        fobs.dumpf(self, file_path)

    def __repr__(self) -> str:
        keys = list(self.data) if isinstance(self.data, dict) else type(self.data).__name__
        return f"DXO(kind={self.data_kind!s}, data={keys}, meta={list(self.meta or ())})"


def from_shareable(s: Shareable) -> DXO:
    """The DXO that ``s`` carries; ``ValueError`` if it carries none."""
    content_type = s.get_header(ReservedHeaderKey.CONTENT_TYPE)
    if content_type != _CONTENT_TYPE_DXO:
        raise ValueError(f"the shareable is not a valid DXO - expect content_type DXO but got {content_type}")
    encoded = s.get(_KEY_DXO)
    if not encoded:
        raise ValueError("the shareable is not a valid DXO - missing content")
    if not isinstance(encoded, dict):
        raise ValueError(f"the shareable is not a valid DXO - should be encoded as dict but got {type(encoded)}")
    return from_dict(encoded)


def from_dict(encoded: dict) -> DXO:
    if not isinstance(encoded, dict):
        raise ValueError(f"encoded value must be dict but got {type(encoded)}")
    kind: Any = encoded.get(_KEY_KIND)  # not checked, as in NVFlare
    return DXO(data_kind=kind, data=encoded.get(_KEY_DATA), meta=encoded.get(_KEY_META))


def from_bytes(data: bytes) -> DXO:
    """The DXO that ``DXO.to_bytes`` wrote."""
    from flare import fobs

    found = fobs.loads(data)
    if not isinstance(found, DXO):
        raise ValueError(f"Data bytes are from type {type(found)} and do not represent a valid DXO instance.")
    return found


def from_file(file_path: str) -> DXO:
    """The DXO that ``DXO.to_file`` wrote."""
    from flare import fobs

    found = fobs.loadf(file_path)
    if not isinstance(found, DXO):
        raise ValueError(f"{file_path} holds a {type(found)}, not a DXO")
    return found


__all__ = ["DXO", "DataKind", "MetaKey", "from_bytes", "from_dict", "from_file", "from_shareable"]
