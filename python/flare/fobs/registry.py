"""Which decomposer serves which class, and which type names may be read from the wire.

Two tables, kept apart on purpose:
- dump: class -> decomposer. Besides what was registered, an Enum or plain data object met while dumping gets a
  generic decomposer here on the fly (as NVFlare does), which lets it be sent; it does not let it be received.
- load: wire name -> decomposer, only for registered classes. A name read from the wire is checked against the
  allowlist before anything else, then looked up here. A name that is allowed (add_type_name_whitelist) but not
  registered is looked up in modules already imported, never imported.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
import types
from enum import Enum
from collections.abc import Callable
from typing import Any, NamedTuple

from flare.errors import SerializationError, TypeNotAllowed
from flare.fobs.decomposer import (
    DataClassDecomposer,
    Decomposer,
    EnumTypeDecomposer,
    NamedTupleDecomposer,
)
from flare.fobs.names import (
    NVFLARE_BUILTIN_TYPES,
    TYPE_ALIASES,
    canonical_decomposer_name,
    canonical_type_name,
    class_name,
    quoted,
    wire_decomposer_name,
    wire_type_name,
)


class Entry(NamedTuple):
    decomposer: Decomposer
    type_name: str  # written as __fobs_type__
    decomposer_name: str  # written as __fobs_dc__


_DATA_CLASS = "flare.fobs.decomposer.DataClassDecomposer"
_ENUM = "flare.fobs.decomposer.EnumTypeDecomposer"
_NAMED_TUPLE = "flare.fobs.decomposer.NamedTupleDecomposer"
# what a class found through the allowlist may be rebuilt with: the generic decomposers only
_GENERIC = {_DATA_CLASS, _ENUM, _NAMED_TUPLE}


class Registry:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._dump: dict[type, Entry] = {}
        self._auto: set[type] = set()  # dump-only entries made on the fly
        self._load: dict[str, Decomposer] = {}
        self._allowed: set[str] = set()
        self._decomposer_names: set[str] = set()  # flare names of the decomposers registered
        self._dots: dict[int, Decomposer] = {}
        self._builtins_done = False
        # decomposers of optional packages too heavy to import up front (torch), added when first needed
        self._deferred: dict[str, Callable[[], list[Decomposer]]] = {}
        self._deferred_dots: dict[int, str] = {}

    # registration

    def register(self, decomposer: Decomposer | type[Decomposer]) -> None:
        instance = decomposer() if inspect.isclass(decomposer) else decomposer
        if not isinstance(instance, Decomposer):
            raise TypeError(f"{type(instance).__name__} is not a flare.fobs.Decomposer")
        target = instance.supported_type()
        if not isinstance(target, type):
            raise TypeError(f"{type(instance).__name__}.supported_type() must return a class")
        with self._lock:
            self._ensure_builtins()
            self._add(instance, target)

    def _add(self, instance: Decomposer, target: type, loadable: bool = True) -> None:
        # first registration wins, as in NVFlare; one made on the fly while dumping gives way to a real one
        if target in self._dump and target not in self._auto:
            return
        self._auto.discard(target)
        own = class_name(target)
        own_dc = class_name(type(instance))
        self._dump[target] = Entry(instance, wire_type_name(own), wire_decomposer_name(own_dc))
        if not loadable:
            # sending a class does not make it receivable
            self._auto.add(target)
            return
        for name in {own, wire_type_name(own)}:
            self._load[name] = instance
            self._allowed.add(name)
        self._decomposer_names.add(own_dc)
        for dot in instance.supported_dots() or ():
            if isinstance(dot, int) and 0 < dot < 256:
                self._dots.setdefault(dot, instance)

    def register_data_classes(self, *classes: type) -> None:
        for cls in classes:
            if issubclass(cls, tuple) and hasattr(cls, "_fields"):
                self.register(NamedTupleDecomposer(cls))
            else:
                self.register(DataClassDecomposer(cls))

    def register_enum_types(self, *enums: type[Enum]) -> None:
        for enum_type in enums:
            if not (isinstance(enum_type, type) and issubclass(enum_type, Enum)):
                raise TypeError(f"{enum_type!r} is not an Enum class")
            self.register(EnumTypeDecomposer(enum_type))

    def add_type_name_whitelist(self, *names: str) -> None:
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"type names must be non-empty strings, got {name!r}")
        with self._lock:
            self._ensure_builtins()
            self._allowed.update(names)

    def reset(self) -> None:
        with self._lock:
            self._dump.clear()
            self._auto.clear()
            self._load.clear()
            self._allowed.clear()
            self._decomposer_names.clear()
            self._dots.clear()
            self._deferred.clear()
            self._deferred_dots.clear()
            self._builtins_done = False
            self._ensure_builtins()

    def num_decomposers(self) -> int:
        with self._lock:
            self._ensure_builtins()
            return len(self._dump)

    def dot_handler(self, dot: int) -> Decomposer | None:
        # A process's first FOBS call may be the load of a message whose datums name a download: the built-in
        # and deferred decomposers must be known before the body is ever looked at.
        with self._lock:
            self._ensure_builtins()
            found = self._dots.get(dot)
            if found is None and dot in self._deferred_dots:
                self._load_deferred(self._deferred_dots[dot])
                found = self._dots.get(dot)
        return found

    def _load_deferred(self, type_name: str) -> bool:
        """Adds the deferred decomposers serving ``type_name``; False if there are none."""
        factory = self._deferred.pop(type_name, None)
        if factory is None:
            return False
        for dot in [d for d, name in self._deferred_dots.items() if name == type_name]:
            del self._deferred_dots[dot]
        for instance in factory():
            self._add(instance, instance.supported_type())
        return True

    def _ensure_builtins(self) -> None:
        if self._builtins_done:
            return
        self._builtins_done = True
        self._allowed.update(NVFLARE_BUILTIN_TYPES)
        from flare.fobs.builtin_registry import builtin_decomposers, deferred_decomposers

        for instance in builtin_decomposers():
            self._add(instance, instance.supported_type())
        for type_name, (factory, dots) in deferred_decomposers().items():
            self._allowed.add(type_name)
            self._deferred[type_name] = factory
            for dot in dots:
                self._deferred_dots[dot] = type_name

    # dump side

    def for_dump(self, obj: Any) -> Entry:
        cls = type(obj)
        entry = self._dump.get(cls)
        if entry is not None:
            return entry
        with self._lock:
            self._ensure_builtins()
            entry = self._dump.get(cls)
            if entry is not None:
                return entry
            if self._deferred and self._load_deferred(class_name(cls)):
                return self._dump[cls]
            stands_for = getattr(cls, "fobs_stands_for", None)
            if stands_for is not None:
                # a placeholder (flare.fobs.lazy.LazyDownloadRef) is written by the decomposer of the type it stands
                # for, so that a receiver cannot tell the two apart
                return self._dump[self.for_load(stands_for(obj), None).supported_type()]
            instance = _generic_for(obj)
            if instance is None:
                raise SerializationError(
                    f"{class_name(cls)} cannot be serialized: register a decomposer for it "
                    "(flare.fobs.register) or register it as a data class (flare.fobs.register_data_classes)"
                )
            self._add(instance, cls, loadable=False)
            return self._dump[cls]

    # load side

    def for_load(self, type_name: Any, decomposer_name: Any) -> Decomposer:
        """The decomposer that rebuilds a wrapped object read from the wire; refuses anything not allowed."""
        if not self._builtins_done:
            with self._lock:
                self._ensure_builtins()
        if not isinstance(type_name, str):
            raise TypeNotAllowed(f"type name {quoted(type_name)} is not a string")
        if type_name in self._deferred:
            with self._lock:
                self._load_deferred(type_name)
        dc_name = None
        if decomposer_name is not None:
            if not isinstance(decomposer_name, str):
                raise TypeNotAllowed(f"decomposer name {quoted(decomposer_name)} is not a string")
            dc_name = canonical_decomposer_name(decomposer_name)
            if dc_name not in self._decomposer_names and dc_name not in _GENERIC:
                raise TypeNotAllowed(
                    f"decomposer {quoted(decomposer_name)} (for type {quoted(type_name)}) is not registered"
                )
        if type_name not in self._allowed and canonical_type_name(type_name) not in self._allowed:
            raise TypeNotAllowed(
                f"type {quoted(type_name)} is not allowed; use flare.fobs.register, register_data_classes, "
                "register_enum_types or add_type_name_whitelist to allow it"
            )
        found = self._load.get(type_name) or self._load.get(canonical_type_name(type_name))
        if found is not None:
            return found
        with self._lock:
            return self._from_loaded_module(type_name, dc_name)

    def _from_loaded_module(self, type_name: str, dc_name: str | None) -> Decomposer:
        found = self._load.get(type_name)
        if found is not None:
            return found
        if type_name in NVFLARE_BUILTIN_TYPES or type_name in TYPE_ALIASES:
            # NVFlare's own classes are reached through the alias table only, never through nvflare's modules
            raise TypeNotAllowed(f"type {quoted(type_name)} (an NVFlare class) has no counterpart in flare")
        cls = _loaded_class(type_name)
        if cls is None:
            raise TypeNotAllowed(
                f"type {quoted(type_name)} is allowed but its module is not imported; flare never imports a "
                "module named by the wire: import it, or register the class"
            )
        if dc_name in (None, _ENUM) and issubclass(cls, Enum):
            instance: Decomposer = EnumTypeDecomposer(cls)
        elif dc_name == _DATA_CLASS and not issubclass(cls, Enum):
            instance = DataClassDecomposer(cls)
        elif dc_name == _NAMED_TUPLE and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            instance = NamedTupleDecomposer(cls)
        else:
            raise TypeNotAllowed(
                f"type {quoted(type_name)} with decomposer {quoted(dc_name)}: only registered decomposers rebuild it"
            )
        self._add(instance, cls)
        self._load[type_name] = instance
        return instance


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: the class was defined in Python


def _generic_for(obj: Any) -> Decomposer | None:
    cls = type(obj)
    if isinstance(obj, Enum):
        return EnumTypeDecomposer(cls)
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):
        return NamedTupleDecomposer(cls)
    if callable(obj) or isinstance(obj, types.ModuleType):
        return None
    # a class built on a C type (a torch tensor, an exception, a dict subclass) keeps its state outside __dict__:
    # its attributes alone would arrive as an empty shell
    if any(base is not object and not base.__flags__ & _HEAP_TYPE for base in cls.__mro__):
        return None
    if dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
        return DataClassDecomposer(cls)
    return None


def _loaded_class(name: str) -> type | None:
    """The class ``name`` denotes in a module that is already imported, or None. Reads module and class dicts only,
    so no module ``__getattr__`` (which may import) runs."""
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:split]))
        if module is None:
            continue
        obj: Any = module
        for attr in parts[split:]:
            namespace = getattr(obj, "__dict__", None)
            obj = namespace.get(attr) if isinstance(namespace, (dict, types.MappingProxyType)) else None
            if obj is None:
                break
        if isinstance(obj, type) and class_name(obj) == name:
            return obj
        return None
    return None


REGISTRY = Registry()
