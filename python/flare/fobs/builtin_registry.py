"""The decomposers every process starts with."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable

from flare.fobs.builtin_decomposers import (
    DatetimeDecomposer,
    DatumRefDecomposer,
    OrderedDictDecomposer,
    SetDecomposer,
    TupleDecomposer,
)
from flare.fobs.decomposer import DataClassDecomposer, Decomposer
from flare.fobs.via_downloader import TENSOR_DOWNLOAD


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


TENSOR_TYPE = "torch.Tensor"


def deferred_decomposers() -> dict[str, tuple[Callable[[], list[Decomposer]], tuple[int, ...]]]:
    """Decomposers of installed packages that are not imported until needed: wire type name -> (factory, dots the
    factory's decomposers handle). torch takes seconds to import, so it is looked for here, not imported."""
    found: dict[str, tuple[Callable[[], list[Decomposer]], tuple[int, ...]]] = {}
    if "torch" in sys.modules or importlib.util.find_spec("torch") is not None:

        def torch_factory() -> list[Decomposer]:
            from flare.fobs.torch_decomposers import torch_decomposers

            return torch_decomposers()

        found[TENSOR_TYPE] = (torch_factory, (TENSOR_DOWNLOAD,))
    return found
