"""Tensor downloads through the public API: a state dict to several receiver cells in this process and to a receiver
process, each item made once for 24 receivers, callbacks, numpy through both item formats, the timeout settings, and
failures reported as NVFlare reports them (an error string and no state dict)."""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np
import pytest

from flare.app_common.np.np_downloader import ArrayDownloader, add_arrays, download_arrays
from flare.app_opt.pt.tensor_downloader import ObjectDownloader, TensorDownloader, add_tensors, download_tensors
from flare.cellnet import Cell
from flare.config import TensorSettings
from flare.errors import ConfigError, SerializationError
from flare.tensors import download_tensors_as_numpy, safetensors
from flare.tensors.downloader import _add_items

torch = pytest.importorskip("torch")


@pytest.fixture
def server():
    cell = Cell("server", listen="tcp://127.0.0.1:0").start()
    yield cell
    cell.close()


@pytest.fixture
def sites(server):
    cells = [Cell(f"site-{i}", parent_url=server.url).start() for i in range(1, 5)]
    for c in cells:
        assert c.wait_for_peer("server", 10)
    yield cells
    for c in cells:
        c.close()


def state_dict() -> dict:
    g = torch.Generator().manual_seed(7)
    base = torch.randn(64, 48, generator=g)
    return {
        "conv.weight": torch.randn(16, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g).to(torch.bfloat16),
        "fc.weight": base.t(),  # not contiguous
        "fc.half": torch.randn(300, 200, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(12),
        "mask": torch.rand(10, generator=g) > 0.5,
        "q": torch.randint(-128, 127, (33,), dtype=torch.int8, generator=g),
    }


def test_a_state_dict_reaches_four_receivers_as_views(server, sites):
    sd = state_dict()
    downloader = TensorDownloader(server, num_receivers=len(sites))
    ref_id = add_tensors(downloader, sd, max_chunk_size=64 * 1024)
    results = [None] * len(sites)

    def pull(i):
        results[i] = download_tensors("server", ref_id, 30, sites[i])

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(sites))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for error, got in results:
        assert error is None
        assert list(got) == list(sd)
        for key, t in sd.items():
            assert got[key].dtype == t.dtype and torch.equal(got[key], t), key
            assert got[key].is_contiguous()
    outcome = downloader.wait(10)
    assert outcome is not None and outcome.status == "finished"
    assert outcome.succeeded() == sorted(s.fqcn for s in sites)


def test_24_receivers_get_each_tensor_made_once(server):
    cells = [Cell(f"site-{i}", parent_url=server.url).start() for i in range(1, 25)]
    try:
        for c in cells:
            assert c.wait_for_peer("server", 10)
        made = []
        lock = threading.Lock()

        def counting_encode(key, value):
            with lock:
                made.append(key)
            return safetensors.encode(key, value)

        sd = {f"layer{i}.weight": torch.full((128, 64), float(i)) for i in range(12)}
        downloader = TensorDownloader(server, num_receivers=len(cells))
        # add_tensors with an encoder that counts, so that each production is seen
        ref_id = _add_items(downloader, sd, counting_encode, 40 * 1024, None)
        errors = []

        def pull(cell):
            error, got = download_tensors("server", ref_id, 30, cell)
            if error or not all(torch.equal(got[k], v) for k, v in sd.items()):
                errors.append((cell.fqcn, error))

        threads = [threading.Thread(target=pull, args=(c,)) for c in cells]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert sorted(made) == sorted(sd), f"each item made once, got {len(made)} productions"
        assert downloader.wait(10).status == "finished"
    finally:
        for c in cells:
            c.close()


def test_callback_sees_each_batch_and_shapes_the_result(server, sites):
    sd = state_dict()
    ref_id = add_tensors(TensorDownloader(server, num_receivers=1), sd, max_chunk_size=1)
    batches = []

    def received(tensors, tag):
        batches.append((tag, sorted(tensors)))
        return {k.upper(): v for k, v in tensors.items()}

    error, got = download_tensors("server", ref_id, 30, sites[0], tensors_received_cb=received, tag="x")
    assert error is None
    assert [keys for _, keys in batches] == [[k] for k in sd], "max_chunk_size=1: one tensor per reply"
    assert all(tag == "x" for tag, _ in batches)
    assert sorted(got) == sorted(k.upper() for k in sd)


def test_numpy_through_both_item_formats(server, sites):
    arrays = {"w": np.random.rand(50, 20).astype(np.float32), "t": np.arange(30.0).reshape(5, 6).T,
              "i": np.arange(7, dtype=np.int64), "e": np.zeros((0, 2))}
    downloader = ArrayDownloader(server, num_receivers=2)
    r_npz = add_arrays(downloader, arrays)
    r_st = add_tensors(downloader, arrays)
    for error, got in (download_arrays("server", r_npz, 30, sites[0]),
                       download_tensors_as_numpy("server", r_st, 30, sites[0])):
        assert error is None
        for key, a in arrays.items():
            assert got[key].dtype == a.dtype and np.array_equal(got[key], a)
            assert not got[key].flags.writeable or not a.size, "views over the received buffer"
    error, got = download_tensors("server", r_st, 30, sites[1])
    assert error is None and torch.equal(got["w"], torch.from_numpy(arrays["w"]))
    assert download_arrays("server", r_npz, 30, sites[1])[0] is None
    assert downloader.wait(10).status == "finished"


def test_failures_come_back_as_an_error_string(server, sites):
    bf16 = add_tensors(ObjectDownloader(server, timeout=30), {"b": torch.zeros(3, dtype=torch.bfloat16)})
    error, got = download_tensors("server", "R-no-such-ref", 10, sites[0])
    assert got is None and "invalid_request" in error
    error, got = download_tensors_as_numpy("server", bf16, 10, sites[0])
    assert got is None and "numpy has no type" in error
    with pytest.raises(SerializationError, match="no safetensors form"):
        add_tensors(ObjectDownloader(server, timeout=30), {"c": torch.zeros(2, dtype=torch.complex128)})
    with pytest.raises(SerializationError, match="names must be str"):
        add_tensors(ObjectDownloader(server, timeout=30), {1: torch.zeros(2)})


def test_timeouts_come_from_the_settings_unless_given(server, monkeypatch):
    assert TensorSettings() == TensorSettings(tensor_min_download_timeout=300.0, np_min_download_timeout=300.0)
    monkeypatch.setenv("NVFLARE_TENSOR_MIN_DOWNLOAD_TIMEOUT", "0.5")
    monkeypatch.setenv("FLARE_NP_MIN_DOWNLOAD_TIMEOUT", "0.7")
    assert TensorSettings.from_env() == TensorSettings(0.5, 0.7)
    with pytest.raises(ConfigError, match="unknown tensor setting"):
        TensorSettings.from_env(tensor_timeout=1)
    started = time.monotonic()
    t = TensorDownloader(server)
    a = ArrayDownloader(server, settings=TensorSettings(np_min_download_timeout=0.5))
    kept = TensorDownloader(server, timeout=60)
    add_tensors(t, {"x": torch.zeros(1)})
    add_arrays(a, {"x": np.zeros(1)})
    add_tensors(kept, {"x": torch.zeros(1)})
    assert t.wait(20).status == "timeout" and a.wait(20).status == "timeout"
    assert time.monotonic() - started < 15
    assert kept.wait(0.5) is None, "an explicit timeout wins over the setting"
    kept.delete_transaction()


RECEIVER = r"""
import json, sys, torch
from flare.cellnet import Cell
from flare.app_opt.pt.tensor_downloader import download_tensors
url, ref_id = sys.argv[1:3]
cell = Cell("site-9", parent_url=url).start()
assert cell.wait_for_peer("server", 20)
print(json.dumps({"event": "ready"}), flush=True)
error, sd = download_tensors("server", ref_id, 30, cell)
print(json.dumps({"event": "downloaded", "error": error,
                  "tensors": {k: [str(v.dtype), list(v.shape), float(v.double().sum())] for k, v in (sd or {}).items()}}),
      flush=True)
sys.stdin.read()
cell.close()
"""


def test_a_receiver_process_downloads_a_state_dict(server, peers):
    sd = state_dict()
    sd["big"] = torch.randn(1024, 1024)  # 4 MiB: several replies
    downloader = TensorDownloader(server, num_receivers=1)
    ref_id = add_tensors(downloader, sd)
    peer = peers([sys.executable, "-c", RECEIVER, server.url, ref_id])
    peer.expect("ready", timeout=60)
    got = peer.expect("downloaded", timeout=60)
    assert got["error"] is None
    expected = {k: [str(v.dtype), list(v.shape), float(v.double().sum())] for k, v in sd.items()}
    assert json.loads(json.dumps(expected)) == got["tensors"]
    assert downloader.wait(10).status == "finished"
