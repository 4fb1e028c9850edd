"""Arrays and tensors by reference inside cell messages (NVFlare's ViaDownloader path): the message stays small, the
receiver downloads and fills them in, the owner's transaction finishes; thresholds and the off switch."""

from __future__ import annotations

import json
import threading

import msgpack
import numpy as np
import pytest

from flare import fobs
from flare.cellnet import Message
from flare.cellnet import cell as cell_module
from flare.errors import SerializationError
from flare.fobs.lobs import MARKER_TEXT, _parse

torch = pytest.importorskip("torch")

MIB = 1024 * 1024


@pytest.fixture
def pair(pair, monkeypatch):
    """conftest's pair, with the download path taken from 1 MiB of arrays or tensors on."""
    monkeypatch.setenv("FLARE_TENSOR_DOWNLOAD_THRESHOLD", str(MIB))
    monkeypatch.setenv("FLARE_NP_DOWNLOAD_THRESHOLD", str(MIB))
    return pair


@pytest.fixture
def wire_sizes(monkeypatch):
    """The size of every payload a cell hands to the transport."""
    sizes: list[int] = []
    encode = cell_module.encode_payload

    def spy(*args, **kwargs):
        payload, headers = encode(*args, **kwargs)
        sizes.append(0 if payload is None else len(payload))
        return payload, headers

    monkeypatch.setattr(cell_module, "encode_payload", spy)
    return sizes


def model():
    rng = np.random.default_rng(3)
    arrays = {f"np{i}": rng.standard_normal((256, 1024)) for i in range(3)}  # 2 MiB each
    arrays["small"] = np.arange(7, dtype=np.int16)
    tensors = {f"t{i}": torch.randn(512, 1024) for i in range(2)}
    tensors["bf16"] = torch.randn(1024, 1024).to(torch.bfloat16)
    return {"arrays": arrays, "tensors": tensors, "round": 4, "again": arrays["np0"]}


def check_same(got, sent):
    assert got["round"] == sent["round"]
    for key, value in sent["arrays"].items():
        assert isinstance(got["arrays"][key], np.ndarray) and np.array_equal(got["arrays"][key], value), key
    for key, value in sent["tensors"].items():
        assert isinstance(got["tensors"][key], torch.Tensor) and torch.equal(got["tensors"][key], value), key
    assert np.array_equal(got["again"], sent["again"])


def test_large_arrays_and_tensors_go_by_download(pair, wire_sizes):
    server, client = pair
    done = threading.Event()
    statuses = []
    client.fobs_ctx["download_complete_cb"] = lambda tx_id, status, objects, **kw: (statuses.append(status), done.set())
    got = {}

    def handler(req: Message):
        got.update(req.payload)
        return {"keys": sorted(req.payload)}

    server.register_request_cb("t", "model", handler)
    sent = model()
    reply = client.request("server", "t", "model", sent, timeout=30)
    assert reply.ok, reply.error
    check_same(got, sent)
    assert done.wait(10) and statuses == ["finished"]
    assert wire_sizes[0] < 4096, wire_sizes  # 14 MiB of arrays and tensors, a message of a few hundred bytes


def test_a_reply_carries_them_the_other_way(pair, wire_sizes):
    server, client = pair
    sent = model()
    server.register_request_cb("t", "get", lambda req: sent)
    reply = client.request("server", "t", "get", {"want": "model"}, timeout=30)
    assert reply.ok, reply.error
    check_same(reply.payload, sent)
    assert max(wire_sizes) < 4096, wire_sizes


def test_the_message_holds_nvflares_download_datums(pair):
    server, _client = pair
    sent = model()
    data = fobs.dumps(sent, fobs_ctx={"cell": server})
    body, sections = _parse(memoryview(data))
    dots = {}
    for marker, dot, _datum_id, value in sections:
        assert marker == MARKER_TEXT
        ref = json.loads(bytes(value))
        assert set(ref) == {"fqcn", "ref_id"} and ref["fqcn"] == "server"
        dots[dot] = ref
    assert set(dots) == {3, 6}  # NUMPY_DOWNLOAD, TENSOR_DOWNLOAD
    doc = msgpack.unpackb(bytes(body), raw=False)
    forms = [doc["arrays"][k]["__fobs_data__"] for k in sent["arrays"]]
    assert all(f["type"] == "ref" and f["data"].startswith("T") for f in forms)
    assert doc["again"]["__fobs_data__"] == doc["arrays"]["np0"]["__fobs_data__"]  # one item, however often sent
    with pytest.raises(SerializationError, match="needs a cell"):
        fobs.loads(data)


def test_below_the_threshold_or_switched_off_they_travel_inside(pair, wire_sizes, monkeypatch):
    server, client = pair
    server.register_request_cb("t", "echo", lambda req: {"ok": True, "n": len(req.payload["arrays"])})
    small = {"arrays": {"a": np.ones(1000)}, "tensors": {"t": torch.ones(1000)}, "round": 1, "again": np.ones(3)}
    assert client.request("server", "t", "echo", small).payload["n"] == 1
    assert wire_sizes[0] > 12000  # 12 KB of arrays and tensors inside the message

    monkeypatch.setenv("FLARE_NP_DOWNLOAD_CHUNK_SIZE", "0")
    monkeypatch.setenv("FLARE_TENSOR_DOWNLOAD_CHUNK_SIZE", "0")
    wire_sizes.clear()
    sent = model()
    got = {}
    server.register_request_cb("t", "model", lambda req: got.update(req.payload))
    assert client.request("server", "t", "model", sent, timeout=30).ok
    check_same(got, sent)
    assert wire_sizes[0] > 14 * MIB


def test_a_failed_download_fails_the_load(pair):
    server, client = pair
    data = fobs.dumps(model(), fobs_ctx={"cell": server})
    with pytest.raises(SerializationError, match="failed to download"):
        fobs.loads(data.replace(b'"server"', b'"nobody"'), fobs_ctx={"cell": client, "download_req_timeout": 2})


def test_a_fresh_process_loads_downloads_before_any_other_fobs_call(pair, tmp_path):
    # The receiver's first FOBS call is the load of a message naming downloads: its decomposers, torch's included,
    # must be found from the datums alone.
    import subprocess
    import sys

    server, _ = pair
    data = fobs.dumps(model(), fobs_ctx={"cell": server, "num_receivers": 1})
    (tmp_path / "msg.fobs").write_bytes(data)
    script = f"""
import sys
from flare import fobs
from flare.cellnet import Cell
cell = Cell("site-9", parent_url={server.url!r}).start()
assert cell.wait_for_peer("server", 10)
got = fobs.loads(open(sys.argv[1], "rb").read(), fobs_ctx={{"cell": cell}})
print(sorted(got["arrays"]), sorted(got["tensors"]))
cell.close()
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "msg.fobs")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sent = model()
    assert done.stdout.strip() == f"{sorted(sent['arrays'])} {sorted(sent['tensors'])}"
