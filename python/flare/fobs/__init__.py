"""FOBS: flare's object serialization, wire-compatible with NVFlare's.

msgpack with registered decomposers; type names read from the wire must be on an allowlist before anything is
looked up for them (no pickle, no import by name); large values travel out of band as datums. See docs/fobs.md.
"""

from __future__ import annotations

from enum import Enum

from flare.fobs.datum import Datum, DatumManager, DatumRef, DatumType
from flare.fobs.decomposer import (
    DataClassDecomposer,
    Decomposer,
    DictDecomposer,
    EnumTypeDecomposer,
    NamedTupleDecomposer,
)
from flare.fobs.lobs import datum_dir, dump, dumpf, dumps, load, loadf, loads
from flare.fobs.registry import REGISTRY


def register(decomposer: Decomposer | type[Decomposer]) -> None:
    """Registers a decomposer (an instance, or a class taking no arguments). Its class may then be sent and
    received. The first registration for a class wins."""
    REGISTRY.register(decomposer)


def register_data_classes(*classes: type) -> None:
    """Lets plain data classes (dataclasses, classes whose state is their ``__dict__``, named tuples) be sent and
    received, rebuilt without calling ``__init__``."""
    REGISTRY.register_data_classes(*classes)


def register_enum_types(*enums: type[Enum]) -> None:
    """Lets Enum classes be sent and received (by member name)."""
    REGISTRY.register_enum_types(*enums)


def add_type_name_whitelist(*names: str) -> None:
    """Allows fully-qualified class names on the wire without registering the classes beforehand.

    Such a class is found only in a module that is already imported (flare never imports a module the wire names),
    and is rebuilt only with a generic decomposer (data class, enum or named tuple).
    """
    REGISTRY.add_type_name_whitelist(*names)


def reset() -> None:
    """Back to the built-in decomposers and allowlist (for tests)."""
    REGISTRY.reset()


def num_decomposers() -> int:
    """How many classes have a decomposer."""
    return REGISTRY.num_decomposers()


__all__ = [
    "DataClassDecomposer",
    "Datum",
    "DatumManager",
    "DatumRef",
    "DatumType",
    "Decomposer",
    "DictDecomposer",
    "EnumTypeDecomposer",
    "NamedTupleDecomposer",
    "add_type_name_whitelist",
    "datum_dir",
    "dump",
    "dumpf",
    "dumps",
    "load",
    "loadf",
    "loads",
    "num_decomposers",
    "register",
    "register_data_classes",
    "register_enum_types",
    "reset",
]
