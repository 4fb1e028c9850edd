#!/usr/bin/env python3
"""NVFlare 2.7.2's FOBS on one side of flare.fobs: dumps a set of objects to files, or loads files and checks them.

Run with the Python of the test-only NVFlare virtualenv (it needs numpy there too):
    VENV/bin/python nvflare_fobs_peer.py dump DIR    writes DIR/<case>.fobs with nvflare.fuel.utils.fobs.dumps
    VENV/bin/python nvflare_fobs_peer.py load DIR    loads every DIR/<case>.fobs with nvflare.fuel.utils.fobs.loads
                                                     and compares it with the case built here
Output: one JSON object per case on stdout, {"case": NAME, "ok": bool, "error": str|null}.

build_cases() and same() take the classes they need as arguments and import nothing from NVFlare, so the flare side
of the test imports this file and builds the very same cases with flare's FLModel.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import Path

MIB = 1024 * 1024


def build_cases(np, FLModel, ParamsType) -> dict:
    """Every case, by name. Arrays of 12 MiB and more go out of band (NVFlare's datum threshold is 10 MiB)."""
    rng = np.random.default_rng(7)
    arrays = {
        "f32": rng.standard_normal((2, 3)).astype(np.float32),
        "f64": rng.standard_normal(5),
        "f16": np.arange(4, dtype=np.float16),
        "i8": np.arange(-4, 4, dtype=np.int8),
        "u16": np.arange(7, dtype=np.uint16).reshape(7, 1),
        "i64": np.array([[-(2**62), 2**62]], dtype=np.int64),
        "bool": np.array([True, False, True]),
        "c128": np.array([1 + 2j, -3.5j]),
        "be_i4": np.arange(6, dtype=">i4").reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(20, dtype=np.float64).reshape(4, 5)),
        "scalar0d": np.array(3.25, dtype=np.float32),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    big = rng.standard_normal((1536, 2048)).astype(np.float32)  # 12 MiB
    return {
        "builtins": {
            "none": None, "true": True, "int": -5, "big_int": 2**63 - 1, "float": 1.5, "str": "héllo",
            "bytes": b"\x00\x01\xff", "list": [1, "a", [2.5, None]], 7: {"nested": {"k": [True]}},
        },
        "tuple_set": (1, "a", (2, 3), {4, 5}, [(6,)]),
        "datetime": [datetime(2024, 5, 6, 7, 8, 9, 123456),
                     datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))],
        "ordered_dict": OrderedDict([("b", 1), ("a", [1, 2]), ("c", OrderedDict(x=(1,)))]),
        "arrays": arrays,
        "big_array": {"big": big, "small": arrays["f32"]},
        "big_fortran": np.asfortranarray(big[:, :1800]),  # 10.5 MiB
        "big_bytes_text": {"blob": bytes(range(256)) * (11 * MIB // 256), "text": "flare" * (11 * MIB // 5)},
        "scalars": [np.float32(1.25), np.float64(-2.5), np.int32(-7), np.int64(2**40)],
        "fl_model": FLModel(
            params_type=ParamsType.DIFF,
            params={"w": arrays["f32"], "big": big, "b": arrays["f64"]},
            metrics={"acc": 0.9, "loss": np.float32(0.25)},
            start_round=1,
            current_round=3,
            total_rounds=5,
            meta={"site": "site-1", "order": OrderedDict(a=1)},
        ),
    }


# The state compared, for classes that both sides have under one name (NVFlare's FLContext also holds a logger).
COMPARED_ATTRIBUTES = {
    "FLModel": ("params_type", "params", "optimizer_params", "metrics", "start_round", "current_round",
                "total_rounds", "meta"),
    "DXO": ("data_kind", "data", "meta"),
    "FLContext": ("model", "props"),
}


def same(np, a, b, path="$") -> str | None:
    """None when ``a`` and ``b`` hold the same values with the same types (classes compared by name, so NVFlare's
    FLModel matches flare's); otherwise where they differ."""
    ta, tb = type(a).__name__, type(b).__name__
    if ta != tb:
        return f"{path}: {ta} != {tb}"
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        if a.flags.f_contiguous != b.flags.f_contiguous or a.flags.c_contiguous != b.flags.c_contiguous:
            return f"{path}: memory order differs"
        return None if np.array_equal(a, b) else f"{path}: values differ"
    if ta in COMPARED_ATTRIBUTES:
        for key in COMPARED_ATTRIBUTES[ta]:
            found = same(np, getattr(a, key), getattr(b, key), f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(a, dict):
        if list(a) != list(b) if ta == "OrderedDict" else set(a) != set(b):
            return f"{path}: keys {list(a)} != {list(b)}"
        for key in a:
            found = same(np, a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = same(np, x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


def import_nvflare_fobs():
    """nvflare's fobs with its numpy and FLModel decomposers, without running nvflare/__init__.py (which pulls in
    the whole job stack): a bare package module stands in for "nvflare"."""
    # this runs as a script in NVFlare's interpreter, beside bare_nvflare; the tests import this module by path
    from bare_nvflare import install_bare_nvflare

    install_bare_nvflare()
    from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
    from nvflare.app_common.decomposers import common_decomposers, numpy_decomposers
    from nvflare.fuel.utils import fobs

    numpy_decomposers.register()
    common_decomposers.register()
    return fobs, FLModel, ParamsType


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("dump", "load"):
        print(__doc__, file=sys.stderr)
        return 2
    import numpy as np

    fobs, FLModel, ParamsType = import_nvflare_fobs()
    return exchange(argv[0], Path(argv[1]), fobs, np, build_cases(np, FLModel, ParamsType))


def exchange(mode: str, folder: Path, fobs, np, cases: dict) -> int:
    """``dump``: writes each case to ``folder/<case>.fobs``; ``load``: loads each file there and compares it with
    its case. Reports one JSON line per case; 1 if any failed."""
    failures = 0
    if mode == "dump":
        for name, obj in cases.items():
            (folder / f"{name}.fobs").write_bytes(fobs.dumps(obj))
            print(json.dumps({"case": name, "ok": True, "error": None}), flush=True)
        return 0
    for path in sorted(folder.glob("*.fobs")):
        name = path.stem
        try:
            error = same(np, cases[name], fobs.loads(path.read_bytes()))
        except Exception as e:  # reported, not raised: the test shows every case
            error = f"{type(e).__name__}: {e}"
        failures += error is not None
        print(json.dumps({"case": name, "ok": error is None, "error": error}), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
