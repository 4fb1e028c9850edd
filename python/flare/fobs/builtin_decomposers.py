"""Decomposers for the standard-library types msgpack has no form for (NVFlare's core decomposers)."""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

from flare.errors import SerializationError
from flare.fobs.datum import DatumManager, DatumRef
from flare.fobs.decomposer import Decomposer


def _require_list(data: Any, what: str) -> list:
    if not isinstance(data, list):
        raise SerializationError(f"{what}: expected a list, got {type(data).__name__}")
    return data


class TupleDecomposer(Decomposer[tuple]):
    def supported_type(self) -> type[tuple]:
        return tuple

    def decompose(self, target: tuple, manager: DatumManager | None = None) -> Any:
        return list(target)

    def recompose(self, data: Any, manager: DatumManager | None = None) -> tuple:
        return tuple(_require_list(data, "tuple"))


class SetDecomposer(Decomposer[set]):
    def supported_type(self) -> type[set]:
        return set

    def decompose(self, target: set, manager: DatumManager | None = None) -> Any:
        return list(target)

    def recompose(self, data: Any, manager: DatumManager | None = None) -> set:
        try:
            return set(_require_list(data, "set"))
        except TypeError as e:  # an unhashable member, which only a crafted payload holds
            raise SerializationError(f"set: {e}") from None


class OrderedDictDecomposer(Decomposer[OrderedDict]):
    """Items as a list of [key, value] pairs (NVFlare sends each pair as a tuple)."""

    def supported_type(self) -> type[OrderedDict]:
        return OrderedDict

    def decompose(self, target: OrderedDict, manager: DatumManager | None = None) -> Any:
        return list(target.items())

    def recompose(self, data: Any, manager: DatumManager | None = None) -> OrderedDict:
        result: OrderedDict = OrderedDict()
        for pair in _require_list(data, "OrderedDict"):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise SerializationError("OrderedDict: each item must be a [key, value] pair")
            try:
                result[pair[0]] = pair[1]
            except TypeError as e:
                raise SerializationError(f"OrderedDict: {e}") from None
        return result


class DatetimeDecomposer(Decomposer[datetime]):
    """ISO 8601 text; a time zone offset survives as a fixed offset."""

    def supported_type(self) -> type[datetime]:
        return datetime

    def decompose(self, target: datetime, manager: DatumManager | None = None) -> Any:
        return target.isoformat()

    def recompose(self, data: Any, manager: DatumManager | None = None) -> datetime:
        if not isinstance(data, str):
            raise SerializationError("datetime: expected ISO 8601 text")
        try:
            return datetime.fromisoformat(data)
        except ValueError as e:
            raise SerializationError(f"datetime: {e}") from None


class DatumRefDecomposer(Decomposer[DatumRef]):
    """A reference to a datum of the same input, in NVFlare's DataClassDecomposer form."""

    def supported_type(self) -> type[DatumRef]:
        return DatumRef

    def decompose(self, target: DatumRef, manager: DatumManager | None = None) -> Any:
        return {"data": {"datum_id": target.datum_id, "unwrap": target.unwrap}}

    def recompose(self, data: Any, manager: DatumManager | None = None) -> Any:
        fields = data.get("data") if isinstance(data, dict) else None
        if not isinstance(fields, dict) or not isinstance(fields.get("datum_id"), str):
            raise SerializationError("DatumRef: expected {'data': {'datum_id': str, 'unwrap': bool}}")
        if manager is None:
            raise SerializationError("DatumRef outside of a load")
        return manager.resolve(DatumRef(fields["datum_id"], bool(fields.get("unwrap", False))))
