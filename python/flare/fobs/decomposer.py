"""The Decomposer contract, and the generic decomposers that serve a class given at construction."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from enum import Enum
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from flare.errors import SerializationError

if TYPE_CHECKING:
    from flare.fobs.datum import Datum, DatumManager

T = TypeVar("T")

# Keys of DataClassDecomposer's map, as NVFlare writes them.
DATA_CONTENT = "data"
DICT_CONTENT = "dict"


class Decomposer(ABC, Generic[T]):
    """Takes objects of one class apart into msgpack-native values, and builds them back.

    Subclass it for a class of your own and pass it to :func:`flare.fobs.register`. ``decompose`` returns values
    msgpack knows (None, bool, int, float, str, bytes, list, dict) or objects that have a decomposer of their own;
    ``recompose`` gets back what ``decompose`` returned, with nested objects already rebuilt. Large bytes and str
    values anywhere in the result travel out of band on their own: a decomposer does not need to handle them.

    Decomposers are shared by every call, possibly from several threads at once: keep per-call state in
    ``manager.get_fobs_context()``, never on the decomposer.
    """

    # A decomposer that sets this gets out-of-band bytes as memoryviews into the received buffer, so it can build
    # its object over them without a copy (numpy arrays do). Every other decomposer gets ``bytes``.
    accepts_buffers: bool = False

    @abstractmethod
    def supported_type(self) -> type[T]:
        """The class this decomposer serves (exactly that class; subclasses need their own)."""

    @abstractmethod
    def decompose(self, target: T, manager: DatumManager | None = None) -> Any:
        """Returns ``target`` as serializable values."""

    @abstractmethod
    def recompose(self, data: Any, manager: DatumManager | None = None) -> T:
        """Builds the object back from what :meth:`decompose` returned."""

    def supported_dots(self) -> list[int] | None:
        """Datum object types (small positive ints) whose datums this decomposer processes on load, if any."""
        return None

    def process_datum(self, datum: Datum, manager: DatumManager) -> None:
        """Called on load, before the main body is decoded, for each datum of a type from :meth:`supported_dots`."""


def _require_class_dict(data: Any, what: str) -> dict:
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise SerializationError(f"{what}: expected a map of attribute names, got {type(data).__name__}")
    return data


class DataClassDecomposer(Decomposer[T]):
    """Plain data classes: the instance's attributes as a map; rebuilt without calling ``__init__``.

    Serves ``@dataclass`` classes (with or without ``__slots__``) and any class whose state is its ``__dict__``.
    A dict subclass also carries its items.
    """

    def __init__(self, data_type: type[T]):
        self.data_type = data_type
        # dataclasses with __slots__ keep their fields outside __dict__
        self._slot_fields = (
            tuple(f.name for f in dataclasses.fields(data_type))  # type: ignore[arg-type]
            if dataclasses.is_dataclass(data_type) and "__dict__" not in dir(data_type)
            else ()
        )

    def supported_type(self) -> type[T]:
        return self.data_type

    def decompose(self, target: T, manager: DatumManager | None = None) -> Any:
        data: dict[str, Any] = {}
        if self._slot_fields:
            data[DATA_CONTENT] = {name: getattr(target, name) for name in self._slot_fields}
        elif hasattr(target, "__dict__"):
            # a copy: the caller's object is never changed, even while large values are moved out of band
            data[DATA_CONTENT] = dict(vars(target))
        if isinstance(target, dict):
            data[DICT_CONTENT] = dict(target)
        return data

    def recompose(self, data: Any, manager: DatumManager | None = None) -> T:
        what = self.data_type.__qualname__
        data = _require_class_dict(data, what)
        instance = self.data_type.__new__(self.data_type)  # type: ignore[call-overload]
        attrs = _require_class_dict(data.get(DATA_CONTENT) or {}, what)
        if self._slot_fields:
            for name, value in attrs.items():
                if name not in self._slot_fields:
                    raise SerializationError(f"{what} has no field {name!r}")
                object.__setattr__(instance, name, value)
        elif attrs:
            try:
                instance.__dict__.update(attrs)
            except AttributeError:
                raise SerializationError(f"{what} instances have no __dict__ to restore") from None
        items = data.get(DICT_CONTENT)
        if items:
            if not isinstance(instance, dict) or not isinstance(items, dict):
                raise SerializationError(f"{what}: dict items for a class that is not a dict")
            instance.update(items)
        return instance


class NamedTupleDecomposer(Decomposer[T]):
    """Named tuples: the field values as a list, rebuilt through the class."""

    def __init__(self, data_type: type[T]):
        if not (issubclass(data_type, tuple) and hasattr(data_type, "_fields")):
            raise TypeError(f"{data_type} is not a named tuple")
        self.data_type = data_type

    def supported_type(self) -> type[T]:
        return self.data_type

    def decompose(self, target: T, manager: DatumManager | None = None) -> Any:
        return list(target)  # type: ignore[call-overload]

    def recompose(self, data: Any, manager: DatumManager | None = None) -> T:
        fields = self.data_type._fields  # type: ignore[attr-defined]
        if not isinstance(data, list) or len(data) != len(fields):
            raise SerializationError(f"{self.data_type.__qualname__}: expected {len(fields)} field values")
        return self.data_type._make(data)  # type: ignore[attr-defined,no-any-return]


class EnumTypeDecomposer(Decomposer[Enum]):
    """Enum members by name."""

    def __init__(self, data_type: type[Enum]):
        if not (isinstance(data_type, type) and issubclass(data_type, Enum)):
            raise TypeError(f"{data_type} is not an enum")
        self.data_type = data_type

    def supported_type(self) -> type[Enum]:
        return self.data_type

    def decompose(self, target: Enum, manager: DatumManager | None = None) -> Any:
        return target.name

    def recompose(self, data: Any, manager: DatumManager | None = None) -> Enum:
        members = self.data_type.__members__
        if not isinstance(data, str) or data not in members:
            raise SerializationError(f"{self.data_type.__qualname__} has no member {data!r}")
        return members[data]


class DictDecomposer(Decomposer[dict]):
    """Dict subclasses whose state is their items (NVFlare's Shareable and Learnable are)."""

    def __init__(self, dict_type: type[dict]):
        if not issubclass(dict_type, dict):
            raise TypeError(f"{dict_type} is not a dict subclass")
        self.dict_type = dict_type

    def supported_type(self) -> type[dict]:
        return self.dict_type

    def decompose(self, target: dict, manager: DatumManager | None = None) -> Any:
        return dict(target)

    def recompose(self, data: Any, manager: DatumManager | None = None) -> dict:
        if not isinstance(data, dict):
            raise SerializationError(f"{self.dict_type.__qualname__}: expected a map")
        obj = self.dict_type()
        obj.update(data)
        return obj
