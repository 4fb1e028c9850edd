"""The decomposers every process starts with."""

from __future__ import annotations

import argparse

from flare.fobs.builtin_decomposers import (
    DatetimeDecomposer,
    DatumRefDecomposer,
    OrderedDictDecomposer,
    SetDecomposer,
    TupleDecomposer,
)
from flare.fobs.decomposer import DataClassDecomposer, Decomposer


def builtin_decomposers() -> list[Decomposer]:
    found: list[Decomposer] = [
        TupleDecomposer(),
        SetDecomposer(),
        OrderedDictDecomposer(),
        DatetimeDecomposer(),
        DatumRefDecomposer(),
        DataClassDecomposer(argparse.Namespace),
    ]
    try:
        import numpy  # noqa: F401  (optional: without it, numpy names are allowed but cannot be rebuilt)
    except ImportError:
        pass
    else:
        from flare.fobs.numpy_decomposers import numpy_decomposers

        found += numpy_decomposers()
    from flare.fobs.app_decomposers import app_decomposers

    found += app_decomposers()
    return found
