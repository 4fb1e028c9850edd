"""flare.fobs against NVFlare 2.7.2's FOBS, both ways: files dumped by one side are loaded by the other and compared
with the same cases built locally (``tests/interop/nvflare_fobs_peer.py`` holds the cases and the comparison)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import numpy as np
import pytest

from conftest import ROOT
from flare import fobs
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.fobs import lobs

PEER_PATH = ROOT / "tests" / "interop" / "nvflare_fobs_peer.py"
_spec = importlib.util.spec_from_file_location("nvflare_fobs_peer", PEER_PATH)
peer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peer)


def run_peer(nvflare_python, *args, peer_path=PEER_PATH) -> dict[str, dict]:
    probe = subprocess.run([str(nvflare_python), "-c", "import numpy"], capture_output=True)
    if probe.returncode:
        pytest.fail(f"numpy is missing from {nvflare_python}: run `{nvflare_python} -m pip install numpy`")
    proc = subprocess.run([str(nvflare_python), str(peer_path), *args], capture_output=True, text=True, timeout=120)
    results = {}
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        results[record["case"]] = record
    assert results, f"the NVFlare peer reported nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return results


@pytest.fixture
def cases():
    fobs.reset()
    return peer.build_cases(np, FLModel, ParamsType)


def test_nvflare_dumps_flare_loads(nvflare_python, tmp_path, cases):
    reported = run_peer(nvflare_python, "dump", tmp_path)
    assert set(reported) == set(cases)
    for name, expected in cases.items():
        data = (tmp_path / f"{name}.fobs").read_bytes()
        got = fobs.loads(data)
        assert peer.same(np, expected, got) is None, (name, peer.same(np, expected, got))
    # the big array came as a datum, and was built over the input without a copy
    data = (tmp_path / "big_array.fobs").read_bytes()
    _, sections = lobs._parse(memoryview(data))
    assert [marker for marker, *_ in sections] == [lobs.MARKER_BLOB]
    got = fobs.loads(data)
    assert np.may_share_memory(got["big"], np.frombuffer(data, np.uint8))


def test_flare_dumps_nvflare_loads(nvflare_python, tmp_path, cases):
    for name, obj in cases.items():
        (tmp_path / f"{name}.fobs").write_bytes(fobs.dumps(obj))
    reported = run_peer(nvflare_python, "load", tmp_path)
    assert set(reported) == set(cases)
    failed = {name: r["error"] for name, r in reported.items() if not r["ok"]}
    assert not failed, failed


def test_flare_writes_nvflare_names(cases):
    body, _ = lobs._parse(memoryview(fobs.dumps(cases["fl_model"])))
    text = bytes(body)
    for name in (b"nvflare.app_common.abstract.fl_model.FLModel",
                 b"nvflare.app_common.decomposers.common_decomposers.FLModelDecomposer",
                 b"nvflare.app_common.abstract.fl_model.ParamsType",
                 b"nvflare.fuel.utils.fobs.datum.DatumRef",
                 b"nvflare.app_common.decomposers.numpy_decomposers.NumpyArrayDecomposer",
                 b"nvflare.fuel.utils.fobs.decomposers.core_decomposers.TupleDecomposer"):
        assert name in text, name
    assert b"flare.fobs" not in text.replace(b"nvflare.fuel.utils.fobs", b"")
