"""Lazy downloads: a load with ``lazy_download`` pulls nothing and gives placeholders; dumped again with a cell they
point the next receiver at the original owner; ``iter_resolved`` and ``resolve`` pull them; mixed sources; errors.
And the memory contract: a 512 MiB model passes through a process that never holds it."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import sys
import threading

import msgpack
import numpy as np
import pytest

from flare import fobs
from flare.app_common.abstract.fl_model import FLModel
from flare.cellnet import Cell, Message
from flare.errors import DownloadError, SerializationError
from flare.fobs.lazy import LazyDownloadRef, has_lazy, iter_resolved, resolve
from flare.fobs.lobs import _parse
from conftest import ROOT, wait_until

torch = pytest.importorskip("torch")

MIB = 1024 * 1024
NODE = str(ROOT / "tests" / "peers" / "lazy_node.py")
LAZY = {"lazy_download": True}


@pytest.fixture
def cells(monkeypatch):
    """An owner "server" and three cells connected to it; downloads from 1 MiB of arrays or tensors on."""
    monkeypatch.setenv("FLARE_TENSOR_DOWNLOAD_THRESHOLD", str(MIB))
    monkeypatch.setenv("FLARE_NP_DOWNLOAD_THRESHOLD", str(MIB))
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    others = {name: Cell(name, parent_url=server.url).start() for name in ("relay-1", "site-1", "site-2")}
    for cell in others.values():
        assert cell.wait_for_peer("server", 10)
    yield {"server": server, **others}
    for cell in [*others.values(), server]:
        cell.close()


def model(seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    arrays = {f"np{i}": rng.standard_normal((256, 1024)) for i in range(3)}  # 2 MiB each
    arrays["small"] = np.arange(7, dtype=np.int16)
    tensors = {"t0": torch.randn(512, 1024, generator=g), "bf16": torch.randn(1024, 1024, generator=g).bfloat16()}
    return {"arrays": arrays, "tensors": tensors, "round": 4, "again": arrays["np0"]}


def serve(owner: Cell, obj, **ctx):
    """``obj`` dumped on ``owner``'s download path; returns the message and the owner's downloader."""
    ctx = {"cell": owner, **ctx}
    data = fobs.dumps(obj, fobs_ctx=ctx)
    return data, ctx.get("downloader")


def download_datums(data) -> dict[int, dict]:
    """The download datums of a message by datum object type: ``{dot: {"fqcn", "ref_id"}}``."""
    _body, sections = _parse(memoryview(data))
    return {dot: json.loads(bytes(value)) for _marker, dot, _id, value in sections if dot in (3, 6)}


def item_ids(data) -> dict[str, str]:
    """``{key: item id}`` of the arrays in a message's body."""
    doc = msgpack.unpackb(bytes(_parse(memoryview(data))[0]), raw=False)
    return {key: form["__fobs_data__"]["data"] for key, form in doc["arrays"].items()}


def check_same(got, sent):
    for key, value in sent["arrays"].items():
        assert isinstance(got["arrays"][key], np.ndarray) and got["arrays"][key].dtype == value.dtype, key
        assert np.array_equal(got["arrays"][key], value), key
    for key, value in sent["tensors"].items():
        assert isinstance(got["tensors"][key], torch.Tensor) and got["tensors"][key].dtype == value.dtype, key
        assert torch.equal(got["tensors"][key], value), key
    assert np.array_equal(got["again"], sent["again"]) and got["round"] == sent["round"]


def receivers(downloader) -> list[tuple[str, str]]:
    return sorted((who, status) for who, _ref, status in downloader.info()["receivers"])


def test_a_lazy_load_pulls_nothing_and_gives_placeholders(cells):
    sent = model()
    data, downloader = serve(cells["server"], sent)
    refs = download_datums(data)
    got = fobs.loads(data, fobs_ctx={"cell": cells["relay-1"], **LAZY})

    assert got["round"] == 4 and has_lazy(got)
    for key in sent["arrays"]:
        ref = got["arrays"][key]
        assert isinstance(ref, LazyDownloadRef) and ref.kind == "numpy" and ref.cell is cells["relay-1"]
        assert (ref.fqcn, ref.ref_id) == ("server", refs[3]["ref_id"])
    assert {got["tensors"][k].kind for k in sent["tensors"]} == {"torch"}
    assert got["again"].item_id == got["arrays"]["np0"].item_id
    assert downloader.info()["active_receivers"] == 0 and receivers(downloader) == []

    ref = got["arrays"]["np1"]
    assert repr(ref) == f"LazyDownloadRef(numpy {ref.item_id} of {ref.ref_id} on server)"
    with pytest.raises(SerializationError, match="flare.fobs.lazy.resolve"):
        np.asarray(ref)
    with pytest.raises(AttributeError, match="resolve"):
        _ = ref.shape
    assert copy.deepcopy(ref) is ref
    assert receivers(downloader) == []


def test_iter_resolved_yields_every_entry_with_its_dtype(cells):
    sent = model()
    data, downloader = serve(cells["server"], sent, num_receivers=1)
    got = fobs.loads(data, fobs_ctx={"cell": cells["site-1"], **LAZY})
    params = {"step": 7, **got["arrays"], **got["tensors"]}

    pairs = list(iter_resolved(params))
    assert pairs[0] == ("step", 7)  # values that are not lazy come as they are, first
    assert [k for k, _ in pairs[1:]] == [*sent["arrays"], *sent["tensors"]]  # the owner's item order
    check_same({"arrays": dict(pairs[1:5]), "tensors": dict(pairs[5:]), "again": sent["again"], "round": 4}, sent)
    assert dict(pairs)["bf16"].dtype == torch.bfloat16
    assert downloader.wait(10).succeeded() == ["site-1"]
    assert list(iter_resolved({"a": 1, "b": "x"})) == [("a", 1), ("b", "x")]


def test_resolve_fills_nested_structures_and_an_flmodel_in_place(cells):
    sent = model()
    fl_model = FLModel(params=dict(sent["arrays"]), optimizer_params={"m": sent["tensors"]["t0"]}, current_round=2)
    message = {"model": fl_model, "list": [sent["tensors"]["bf16"], 1], "tuple": (sent["arrays"]["np2"], "x")}
    data, downloader = serve(cells["server"], message)
    got = fobs.loads(data, fobs_ctx={"cell": cells["site-1"], **LAZY})
    got_model, got_list = got["model"], got["list"]
    assert has_lazy(got_model) and has_lazy(got["tuple"])

    assert resolve(got) is got and not has_lazy(got)
    assert got["model"] is got_model and got["list"] is got_list  # changed in place; tuples rebuilt
    for key, value in sent["arrays"].items():
        assert np.array_equal(got_model.params[key], value), key
    assert torch.equal(got_model.optimizer_params["m"], sent["tensors"]["t0"])
    assert got_list[0].dtype == torch.bfloat16 and torch.equal(got_list[0], sent["tensors"]["bf16"])
    assert np.array_equal(got["tuple"][0], sent["arrays"]["np2"]) and got["tuple"][1] == "x"
    assert got["tuple"][0] is got_model.params["np2"]  # one item, one value, as an eager load gives
    assert downloader.wait(10).succeeded() == ["site-1"]


def test_what_iter_resolved_did_not_want_is_kept_for_a_later_resolve(cells):
    arrays = model()["arrays"]
    message = FLModel(params={"np0": arrays["np0"], "np1": arrays["np1"]}, optimizer_params={"m": arrays["np2"]})
    data, downloader = serve(cells["server"], message)
    got = fobs.loads(data, fobs_ctx={"cell": cells["site-1"], **LAZY})
    same = {key: np.array_equal(value, arrays[key]) for key, value in iter_resolved(got.params)}
    assert same == {"np0": True, "np1": True}
    assert downloader.wait(10).succeeded() == ["site-1"]  # the whole download, one pull

    assert np.array_equal(resolve(got.optimizer_params)["m"], arrays["np2"])  # kept from that pull
    with pytest.raises(SerializationError, match="pulled already and handed out"):
        resolve(got.params)  # handed out, not kept: folding them must not cost the model's memory


def test_a_relay_cell_passes_a_request_on_and_the_final_receiver_pulls_from_the_owner(cells):
    server, relay, site = cells["server"], cells["relay-1"], cells["site-1"]
    relay.fobs_ctx.update(LAZY)
    relayed, forwarded_sizes, got = [], [], {}

    def on_relay(request: Message):
        relayed.append(request.payload)
        ctx = {"cell": relay}
        forwarded_sizes.append(len(fobs.dumps(request.payload, fobs_ctx=ctx)))  # what the request below sends
        assert "downloader" not in ctx  # nothing served by the relay
        return relay.request("site-1", "t", "model", request.payload, timeout=30).raise_for_status().payload

    relay.register_request_cb("t", "forward", on_relay)
    site.register_request_cb("t", "model", lambda request: got.update(request.payload) or {"ok": True})
    statuses = []
    server.fobs_ctx["download_complete_cb"] = lambda tx_id, status, objects: statuses.append(status)
    sent = model()
    reply = server.request("relay-1", "t", "forward", sent, timeout=60)
    assert reply.ok, reply.error
    check_same(got, sent)
    assert has_lazy(relayed[0]) and max(forwarded_sizes) < 4096
    wait_until(lambda: statuses == ["finished"], 10)  # the one receiver expected was the final one


def test_a_forwarded_message_holds_the_owners_references_item_for_item(cells):
    relay = cells["relay-1"]
    data, downloader = serve(cells["server"], model())
    again = fobs.dumps(fobs.loads(data, fobs_ctx={"cell": relay, **LAZY}), fobs_ctx={"cell": relay})
    assert download_datums(again) == download_datums(data) and item_ids(again) == item_ids(data)
    check_same(fobs.loads(again, fobs_ctx={"cell": cells["site-1"]}), model())
    assert downloader.wait(10).succeeded() == ["site-1"]  # the relay never was a receiver


def test_one_owner_per_type_forwards_even_when_types_come_from_two_owners(cells, caplog):
    numpy_part, _ = serve(cells["server"], {"arrays": model(1)["arrays"]})
    torch_part, _ = serve(cells["site-2"], {"tensors": model(2)["tensors"]})
    relay = cells["relay-1"]
    both = {
        **fobs.loads(numpy_part, fobs_ctx={"cell": relay, **LAZY}),
        **fobs.loads(torch_part, fobs_ctx={"cell": relay, **LAZY}),
    }
    ctx = {"cell": relay}
    with caplog.at_level(logging.WARNING):
        data = fobs.dumps(both, fobs_ctx=ctx)
    assert "downloader" not in ctx and not caplog.records
    datums = download_datums(data)
    assert datums[3]["fqcn"] == "server" and datums[6]["fqcn"] == "site-2"
    got = fobs.loads(data, fobs_ctx={"cell": cells["site-1"]})
    for key, value in model(2)["tensors"].items():
        assert torch.equal(got["tensors"][key], value), key


def test_mixed_sources_of_one_type_are_pulled_and_served_by_the_forwarder(cells, caplog):
    first, _ = serve(cells["server"], {"a": np.full((512, 512), 1.0)})
    second, _ = serve(cells["site-2"], {"b": np.full((512, 512), 2.0)})
    relay = cells["relay-1"]
    lazy_a = fobs.loads(first, fobs_ctx={"cell": relay, **LAZY})["a"]
    lazy_b = fobs.loads(second, fobs_ctx={"cell": relay, **LAZY})["b"]
    mine = np.full((512, 512), 3.0)

    for message in ({"a": lazy_a, "b": lazy_b}, {"a": lazy_a, "mine": mine}):
        ctx = {"cell": relay}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            data = fobs.dumps(message, fobs_ctx=ctx)
        assert "pulled here" in caplog.text and "lazy numpy references" in caplog.text
        assert download_datums(data)[3]["fqcn"] == "relay-1" and ctx["downloader"] is not None
        got = fobs.loads(data, fobs_ctx={"cell": cells["site-1"]})
        for key, value in got.items():
            assert np.array_equal(value, np.full((512, 512), {"a": 1.0, "b": 2.0, "mine": 3.0}[key])), key


def test_a_placeholder_dumped_without_a_cell_is_written_as_its_value(cells):
    sent = model()
    data, _ = serve(cells["server"], sent)
    got = fobs.loads(data, fobs_ctx={"cell": cells["relay-1"], **LAZY})
    native = fobs.dumps(got)
    assert download_datums(native) == {} and len(native) > 10 * MIB
    check_same(fobs.loads(native), sent)
    check_same(resolve(got), sent)  # kept by the placeholders: the owner is not asked twice


def test_pulling_from_an_owner_that_is_gone_fails_naming_it(cells):
    owner = Cell("site-9", parent_url=cells["server"].url).start()
    assert owner.wait_for_peer("server", 10)
    data, _ = serve(owner, {"arrays": model()["arrays"]})
    got = fobs.loads(data, fobs_ctx={"cell": cells["relay-1"], "download_req_timeout": 2, **LAZY})
    ref_id = got["arrays"]["np0"].ref_id
    owner.close()
    with pytest.raises(DownloadError, match=f"{ref_id} of numpy items from site-9"):
        resolve(got)
    with pytest.raises(DownloadError, match="site-9"):
        dict(iter_resolved(got["arrays"]))  # a failed pull may be tried again

    no_cell = fobs.loads(data, fobs_ctx=LAZY)
    with pytest.raises(SerializationError, match="needs a cell"):
        resolve(no_cell)


def test_a_download_nobody_pulls_ends_by_the_owners_idle_timeout(cells, monkeypatch):
    monkeypatch.setenv("FLARE_NP_MIN_DOWNLOAD_TIMEOUT", "1")
    statuses = []
    done = threading.Event()
    callback = lambda tx_id, status, objects: (statuses.append(status), done.set())  # noqa: E731
    data, _ = serve(cells["server"], {"arrays": model()["arrays"]}, download_complete_cb=callback)
    got = fobs.loads(data, fobs_ctx={"cell": cells["relay-1"], **LAZY})
    fobs.dumps(got, fobs_ctx={"cell": cells["relay-1"]})  # forwarded, and nobody pulls
    assert done.wait(10) and statuses == ["timeout"]


def vm_status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ... of a process in KiB."""
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k.startswith("Vm")}


def test_a_512_mib_model_passes_through_a_process_that_never_holds_it(peers):
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    try:
        receiver = peers([sys.executable, NODE, "--fqcn", "site-1", "--parent", server.url])
        relay = peers([sys.executable, NODE, "--fqcn", "relay-1", "--parent", server.url, "--forward-to", "site-1"])
        receiver_pid, relay_pid = receiver.expect("ready")["pid"], relay.expect("ready")["pid"]
        wait_until(lambda: {"relay-1", "site-1"} <= set(server.reachable()), 10)
        sent = {f"layer{i}": np.random.default_rng(i).random(8 * MIB, dtype=np.float32) for i in range(16)}
        digests = {key: hashlib.sha256(value).hexdigest() for key, value in sent.items()}
        statuses = []
        server.fobs_ctx["download_complete_cb"] = lambda tx_id, status, objects: statuses.append(status)

        relay_before, receiver_before = vm_status(relay_pid), vm_status(receiver_pid)
        reply = server.request("relay-1", "lazy", "forward", sent, timeout=120)
        relay_after, receiver_after = vm_status(relay_pid), vm_status(receiver_pid)

        assert reply.ok, (reply.error, relay.tail(), receiver.tail())
        assert reply.payload["lazy"] and reply.payload["digests"] == digests
        assert set(reply.payload["dtypes"].values()) == {"float32"}
        relay_peak = (relay_after["VmHWM"] - relay_before["VmRSS"]) / 1024
        receiver_peak = (receiver_after["VmHWM"] - receiver_before["VmRSS"]) / 1024
        print(f"peak RSS above baseline: pass-through {relay_peak:.1f} MiB, final receiver {receiver_peak:.1f} MiB")
        assert relay_peak <= 64, relay_peak
        wait_until(lambda: statuses == ["finished"], 10)  # one receiver expected, and the final one was it
    finally:
        server.close()
