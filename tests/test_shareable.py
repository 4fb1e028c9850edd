"""Shareable, DXO and FLContext: their NVFlare API, FLModelUtils' mapping to and from FLModel, FOBS round trips, and
NVFlare 2.7.2's FOBS on the other side (``tests/interop/nvflare_shareable_peer.py`` holds the interop cases)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from flare import fobs
from flare.apis import dxo as dxo_module
from flare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from flare.apis.fl_context import FLContext, FLContextKey, ReservedKey
from flare.apis.shareable import ReservedHeaderKey, ReturnCode, Shareable, make_copy, make_reply
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.app_common.utils.fl_model_utils import FLModelUtils
from flare.errors import SerializationError
from flare.fobs import lobs
from test_fobs_interop import run_peer as run_fobs_peer
from test_fobs_security import lobs as lobs_input
from test_fobs_security import wrap

INTEROP = ROOT / "tests" / "interop"


def _load_by_path(name: str):
    spec = importlib.util.spec_from_file_location(name, INTEROP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fobs_peer = _load_by_path("nvflare_fobs_peer")
shareable_peer = _load_by_path("nvflare_shareable_peer")

FLARE_API = SimpleNamespace(
    Shareable=Shareable, DXO=DXO, DataKind=DataKind, FLContext=FLContext, ReturnCode=ReturnCode,
    make_reply=make_reply, FLModel=FLModel, ParamsType=ParamsType, FLModelUtils=FLModelUtils,
)


@pytest.fixture(autouse=True)
def fresh_registry():
    fobs.reset()
    yield
    fobs.reset()


def same(a, b) -> None:
    difference = fobs_peer.same(np, a, b)
    assert difference is None, difference


# Shareable


def test_shareable_headers_return_code_and_cookies():
    s = Shareable({"x": 1, ReservedHeaderKey.HEADERS: {"dropped": True}})
    assert s == {"x": 1, "__headers__": {}}  # NVFlare's constructor starts with empty headers too
    assert s.get_header("missing", 7) == 7
    assert s.get_return_code() == ReturnCode.OK
    s.set_return_code(ReturnCode.TASK_ABORTED)
    s.set_header("k", [1])
    s.add_cookie("round", 3)
    s.add_cookie("job", "j1")
    assert s.get_return_code() == "TASK_ABORTED"
    assert s.get_header("k") == [1]
    assert s.get_cookie("round") == 3 and s.get_cookie("nope", "d") == "d"
    assert s.get_cookie_jar() == {"round": 3, "job": "j1"}
    assert s["__headers__"]["__rc__"] == "TASK_ABORTED"

    s.set_peer_props({"site": "site-1"})
    assert s.get_peer_props() == {"site": "site-1"} and s.get_peer_prop("site", None) == "site-1"
    assert s.get_peer_prop("other", "d") == "d"
    peer = FLContext()
    s.set_peer_context(peer)
    assert s.get_peer_context() is peer

    s[ReservedHeaderKey.HEADERS] = ["not", "a", "dict"]
    with pytest.raises(ValueError, match="must be a dict"):
        s.get_header("k")


def test_make_reply_and_make_copy():
    reply = make_reply(ReturnCode.EXECUTION_EXCEPTION, headers={"a": 1})
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and reply.get_header("a") == 1
    assert make_reply(ReturnCode.OK, headers=None) == {"__headers__": {"__rc__": "OK"}}

    source = Shareable({"content": {"w": [1, 2]}})
    source.set_header("nested", {"k": "v"})
    source.set_header("drop", 1)
    copied = make_copy(source, exclude_headers=["drop"])
    assert type(copied) is Shareable
    assert copied["content"] is source["content"]  # the content is shared, the headers are not
    assert copied.get_header("nested") == {"k": "v"} and copied.get_header("nested") is not source.get_header("nested")
    assert copied.get_header("drop") is None and source.get_header("drop") == 1
    with pytest.raises(TypeError):
        make_copy({"plain": "dict"})


# DXO


def test_dxo_validation_and_meta_props():
    assert DXO(DataKind.WEIGHTS, data=None).data == {}
    assert DXO(DataKind.APP_DEFINED, data=[1, 2]).data == [1, 2]
    with pytest.raises(ValueError, match="expect dict"):
        DXO(DataKind.WEIGHTS, data=[1, 2])
    with pytest.raises(ValueError, match="invalid props"):
        DXO(DataKind.WEIGHTS, data={}, meta=["x"])

    d = DXO(DataKind.METRICS, data={"acc": 1.0})
    assert d.get_meta_prop("k", "default") == "default"
    d.set_meta_prop("k", 1)
    d.set_meta_prop("gone", 2)
    d.remove_meta_props(["gone", "never-there"])
    assert d.get_meta_props() == {"k": 1}
    extra = {"nested": {"a": 1}}
    d.update_meta_props(extra)
    extra["nested"]["a"] = 2
    assert d.get_meta_prop("nested") == {"a": 1}  # a deep copy was taken
    d.add_filter_history("first")
    d.add_filter_history(["second", "third"])
    d.add_filter_history("")
    assert d.get_filter_history() == ["first", "second", "third"]
    assert d.get_meta_prop(MetaKey.FILTER_HISTORY) == d.get_filter_history()


def test_dxo_in_and_out_of_a_shareable(tmp_path):
    d = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(3)}, meta={"m": 1})
    s = d.to_shareable()
    assert s.get_header(ReservedHeaderKey.CONTENT_TYPE) == "DXO"
    assert s["DXO"] == {"kind": DataKind.WEIGHT_DIFF, "data": d.data, "meta": {"m": 1}}
    back = from_shareable(s)
    assert back.data_kind == DataKind.WEIGHT_DIFF and back.data is d.data and back.meta == {"m": 1}

    kept = Shareable({"other": 1})
    assert d.update_shareable(kept) is kept and kept["other"] == 1

    with pytest.raises(ValueError, match="content_type"):
        from_shareable(Shareable({"DXO": d.to_dict()}))
    empty = Shareable()
    empty.set_header(ReservedHeaderKey.CONTENT_TYPE, "DXO")
    with pytest.raises(ValueError, match="missing content"):
        from_shareable(empty)
    empty["DXO"] = ["not", "a", "dict"]
    with pytest.raises(ValueError, match="encoded as dict"):
        from_shareable(empty)

    same(d, dxo_module.from_bytes(d.to_bytes()))
    path = tmp_path / "dxo.fobs"
    d.to_file(str(path))
    same(d, dxo_module.from_file(str(path)))
    with pytest.raises(ValueError, match="valid DXO"):
        dxo_module.from_bytes(fobs.dumps({"not": "a dxo"}))
    same(s, Shareable.from_bytes(s.to_bytes()))


# FLContext


def test_fl_context_props_keep_visibility_and_stickiness():
    ctx = FLContext()
    assert ctx.set_prop("a", 1, private=False, sticky=False)
    assert ctx.set_prop("b", [2])  # private and sticky by default, as in NVFlare
    assert ctx.get_prop("a") == 1 and ctx.get_prop("missing", "d") == "d"
    assert not ctx.set_prop("a", 3, private=True, sticky=False)  # visibility cannot change
    assert ctx.get_prop("a") == 1
    assert ctx.set_prop("a", 4, private=False, sticky=False)
    assert ctx.get_prop_detail("a") == {"value": 4, "private": False, "sticky": False}
    assert ctx.get_prop_detail("missing") is None
    assert ctx.props["b"] == {"value": [2], "mask": 3}
    assert ctx.get_prop_keys() == ["a", "b"]
    assert ctx.public_key_exists("a") and not ctx.public_key_exists("b")
    assert ctx.get_all_public_props() == {"a": 4}
    with pytest.raises(ValueError):
        ctx.set_prop(1, "key must be str")

    ctx.set_public_props({"c": 5})
    assert ctx.get_all_public_props() == {"c": 5} and ctx.get_prop("b") == [2]

    ctx.put(FLContextKey.TASK_NAME, "train", private=True, sticky=False)
    ctx.remove_prop(FLContextKey.TASK_NAME)  # reserved: kept unless forced
    assert ctx.get_prop(FLContextKey.TASK_NAME) == "train"
    ctx.remove_prop(FLContextKey.TASK_NAME, force_removal=True)
    assert ctx.get_prop(FLContextKey.TASK_NAME) is None

    ctx.set_custom_prop("x", 1)
    assert ctx.get_custom_prop("x") == 1 and ctx.get_custom_prop("y", 2) == 2
    ctx.put(ReservedKey.RUN_NUM, "job-1", private=False, sticky=True)
    ctx.put(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    assert ctx.get_job_id() == "job-1" and ctx.get_identity_name() == "site-1"
    assert FLContext().get_identity_name() == "" and FLContext().get_process_type() is None

    peer = FLContext()
    ctx.set_peer_context(peer)
    assert ctx.get_peer_context() is peer and ctx.get_prop(FLContextKey.PEER_CONTEXT) is peer
    with ctx.clone() as clone:
        assert clone.props == ctx.props and clone.props is not ctx.props
        clone.set_prop("only-in-clone", 1)
    assert ctx.get_prop("only-in-clone") is None


# FLModelUtils


def test_params_become_a_weights_dxo_with_round_headers():
    params = {"w": np.arange(4.0)}
    model = FLModel(params=params, current_round=2, total_rounds=5, meta={"NUM_STEPS_CURRENT_ROUND": 10})
    s = FLModelUtils.to_shareable(model)
    d = from_shareable(s)
    assert d.data_kind == DataKind.WEIGHTS and d.data is params
    assert d.meta == {"NUM_STEPS_CURRENT_ROUND": 10}
    assert (s.get_header("start_round"), s.get_header("current_round"), s.get_header("num_rounds")) == (0, 2, 5)

    back = FLModelUtils.from_shareable(s)
    assert back.params_type == ParamsType.FULL and back.params is params and back.metrics is None
    assert (back.start_round, back.current_round, back.total_rounds) == (0, 2, 5)
    assert back.meta == {"NUM_STEPS_CURRENT_ROUND": 10}


def test_diff_with_metrics_and_metrics_alone():
    model = FLModel(params_type=ParamsType.DIFF, params={"w": np.ones(2)}, metrics={"acc": 0.5}, start_round=None,
                    meta={MetaKey.VALIDATE_TYPE: "before_train_validate"})
    s = FLModelUtils.to_shareable(model)
    d = from_shareable(s)
    assert d.data_kind == DataKind.WEIGHT_DIFF
    assert d.meta == {"initial_metrics": {"acc": 0.5}, "validate_type": "before_train_validate"}
    assert s.get_header("_validate_type") == "before_train_validate" and s.get_header("start_round") is None
    back = FLModelUtils.from_shareable(s)
    assert back.params_type == ParamsType.DIFF and back.metrics == {"acc": 0.5} and back.start_round is None

    s = FLModelUtils.to_shareable(FLModel(metrics={"loss": 0.1}))
    assert from_shareable(s).data_kind == DataKind.METRICS and from_shareable(s).data == {"loss": 0.1}
    back = FLModelUtils.from_shareable(s)
    assert back.params is None and back.params_type is None and back.metrics == {"loss": 0.1}

    with pytest.raises(ValueError, match="without params and metrics"):
        FLModelUtils.to_shareable(FLModel())


def test_from_shareable_reads_headers_other_kinds_and_model_requests():
    s = DXO(DataKind.COLLECTION, data={"x": 1}).to_shareable()
    s.set_header("job_id", "job-1")
    s.set_header("site_name", "site-2")
    back = FLModelUtils.from_shareable(s, FLContext())
    assert back.params_type == ParamsType.FULL and back.params == {"x": 1}
    assert back.meta == {"job_id": "job-1", "site_name": "site-2"}

    request = Shareable()
    request.set_header("submit_model_name", "best")
    back = FLModelUtils.from_shareable(request)
    assert back.params is None and back.meta == {"submit_model_name": "best"}


def test_fl_model_in_one_dxo_and_model_updates():
    model = FLModel(params={"w": 1.0}, metrics={"acc": 1.0}, optimizer_params={"lr": 0.1}, current_round=1)
    d = FLModelUtils.to_dxo(model)
    assert d.data_kind == DataKind.FL_MODEL
    assert set(d.data) == {"params_type", "params", "metrics", "optimizer_params", "start_round", "current_round",
                           "meta"}
    same(model, FLModelUtils.from_dxo(d))
    with pytest.raises(ValueError, match="data_kind"):
        FLModelUtils.from_dxo(DXO(DataKind.WEIGHTS, data={}))

    FLModelUtils.set_meta_prop(model, "k", 1)
    assert FLModelUtils.get_meta_prop(model, "k") == 1 and FLModelUtils.get_configs(model) is None
    with pytest.raises(TypeError):
        FLModelUtils.get_meta_prop({"not": "a model"}, "k")

    base = FLModel(params={"w": np.ones(2)}, meta={"a": 1})
    FLModelUtils.update_model(base, FLModel(params_type=ParamsType.DIFF, params={"w": np.ones(2)}, meta={"b": 2}),
                              replace_meta=False)
    assert np.array_equal(base.params["w"], [2.0, 2.0]) and base.meta == {"a": 1, "b": 2}
    FLModelUtils.update_model(base, FLModel(params={"w": np.zeros(2)}, metrics={"acc": 0.3}))
    assert np.array_equal(base.params["w"], [0.0, 0.0]) and base.metrics == {"acc": 0.3} and base.meta == {}
    with pytest.raises(RuntimeError):
        FLModelUtils.update_model(FLModel(metrics={"acc": 1.0}), base)


# FOBS


def test_a_shareable_with_large_arrays_in_a_dxo_round_trips_out_of_band():
    big = np.arange(3 * 1024 * 1024, dtype=np.float32).reshape(1024, 3072)  # 12 MiB
    task = DXO(DataKind.WEIGHTS, data={"big": big, "small": np.ones(3)}, meta={"k": "v"}).to_shareable()
    task.set_return_code(ReturnCode.OK)
    peer = FLContext()
    peer.set_prop("site", "site-1", private=False, sticky=False)
    task.set_peer_context(peer)

    data = fobs.dumps(task)
    body, sections = lobs._parse(memoryview(data))
    assert [marker for marker, *_ in sections] == [lobs.MARKER_BLOB]
    for name in (b"nvflare.apis.shareable.Shareable", b"nvflare.fuel.utils.fobs.decomposer.DictDecomposer",
                 b"nvflare.apis.dxo.DataKind", b"nvflare.apis.fl_context.FLContext",
                 b"nvflare.apis.utils.decomposers.flare_decomposers.ContextDecomposer"):
        assert name in bytes(body), name
    assert b"flare.apis" not in bytes(body).replace(b"nvflare.apis", b"")

    got = fobs.loads(data)
    same(task, got)
    assert type(got) is Shareable and type(got.get_peer_context()) is FLContext
    loaded = from_shareable(got)
    assert loaded.data_kind is DataKind.WEIGHTS
    assert np.may_share_memory(loaded.data["big"], np.frombuffer(data, np.uint8))  # built over the input


def test_dxo_and_fl_context_round_trip_as_objects():
    inner = DXO(DataKind.APP_DEFINED, data=[1, (2, 3)])
    outer = DXO(DataKind.COLLECTION, data={"inner": inner, "w": DXO("WEIGHTS", data={"w": np.ones(2)})})
    body, _ = lobs._parse(memoryview(fobs.dumps(outer)))
    assert b"nvflare.apis.utils.decomposers.flare_decomposers.DXODecomposer" in bytes(body)
    got = fobs.loads(fobs.dumps(outer))
    same(outer, got)
    assert type(got.data["inner"]) is DXO and type(got.data["w"].data_kind) is str

    ctx = FLContext()
    ctx.model = {"anything": 1}
    ctx.set_prop("nested", FLContext(), private=True, sticky=False)
    ctx.set_prop("kind", DataKind.METRICS, private=False)
    same(ctx, fobs.loads(fobs.dumps(ctx)))


@pytest.mark.parametrize(
    "payload",
    [
        wrap("nvflare.apis.fl_context.FLContext", [None]),
        wrap("nvflare.apis.fl_context.FLContext", [None, ["not", "a", "map"]]),
        wrap("nvflare.apis.fl_context.FLContext", [None, {"k": {"value": 1}}]),
        wrap("nvflare.apis.fl_context.FLContext", [None, {"k": {"value": 1, "mask": "3"}}]),
        wrap("nvflare.apis.dxo.DXO", ["WEIGHTS", {}]),
        wrap("nvflare.apis.dxo.DXO", ["WEIGHTS", {}, ["data", "not", "a", "dict"]]),
        wrap("nvflare.apis.shareable.Shareable", ["not", "a", "map"],
             "nvflare.fuel.utils.fobs.decomposer.DictDecomposer"),
    ],
)
def test_malformed_payloads_are_refused(payload):
    with pytest.raises(SerializationError):
        fobs.loads(lobs_input(payload))


# NVFlare on the other side


def run_peer(nvflare_python, *args) -> dict[str, dict]:
    return run_fobs_peer(nvflare_python, *args, peer_path=INTEROP / "nvflare_shareable_peer.py")


@pytest.fixture
def cases():
    return shareable_peer.build_cases(np, FLARE_API)


def test_nvflare_dumps_flare_loads(nvflare_python, tmp_path, cases):
    reported = run_peer(nvflare_python, "dump", tmp_path)
    assert set(reported) == set(cases)
    for name, expected in cases.items():
        same(expected, fobs.loads((tmp_path / f"{name}.fobs").read_bytes()))
    # NVFlare's FLModelUtils output reads back as the FLModel it came from
    got = FLModelUtils.from_shareable(fobs.loads((tmp_path / "fl_model_utils_params.fobs").read_bytes()))
    assert got.params_type == ParamsType.DIFF and got.metrics == {"acc": 0.5} and got.total_rounds == 5


def test_flare_dumps_nvflare_loads(nvflare_python, tmp_path, cases):
    for name, obj in cases.items():
        (tmp_path / f"{name}.fobs").write_bytes(fobs.dumps(obj))
    reported = run_peer(nvflare_python, "load", tmp_path)
    assert set(reported) == set(cases)
    failed = {name: r["error"] for name, r in reported.items() if not r["ok"]}
    assert not failed, failed
