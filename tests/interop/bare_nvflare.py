"""Importing parts of the installed nvflare package without running nvflare/__init__.py, which pulls in the whole
job stack (grpcio, requests, psutil, PyYAML, ...). Free of side effects, for the NVFlare peer scripts beside it."""

from __future__ import annotations

import sys


def install_bare_nvflare() -> None:
    """Registers a bare package module for "nvflare" pointing at the installed package, so that its submodules
    import without running nvflare/__init__.py."""
    import importlib.util
    import types

    if "nvflare" not in sys.modules:
        spec = importlib.util.find_spec("nvflare")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("package 'nvflare' is not installed")
        pkg = types.ModuleType("nvflare")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__spec__ = spec
        sys.modules["nvflare"] = pkg
