"""Quantization filters: every type's round trip within its bound, dtypes and containers kept, NVFlare's meta layout,
message sizes by the formula, states from the network checked, bitsandbytes' output byte for byte, and jobs that
train through quantized messages."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flare import _sfm
from flare.apis.filter import FilterContext, FilterDirection
from flare.app_common.abstract.fl_model import FLModel
from flare.errors import ConfigError, SerializationError
from flare.filters import ModelDequantizer, ModelQuantizer
from flare.filters.quantization import message_bytes

torch = pytest.importorskip("torch", reason="the torch half of these tests needs torch (installed by make test)")

CONTEXT = FilterContext("train", "site-1", "server", FilterDirection.OUT)
TYPES = ["float16", "bfloat16", "blockwise8", "float4", "normfloat4", "adaquant"]
META_KEYS = {"PROCESSED_ALGORITHM", "quant_state", "source_datatype", "quantized_flag"}
DYNAMIC = np.array(_sfm.code_table("dynamic"), np.float32)
FP4 = np.array(_sfm.code_table("fp4"), np.float32)
NF4 = np.array(_sfm.code_table("nf4"), np.float32)
JOBS = Path(__file__).parent / "jobs"


def quantize(params: dict[str, Any], kind: str, meta: dict | None = None) -> FLModel:
    return ModelQuantizer(quantization_type=kind).process(FLModel(params=params, meta=dict(meta or {})), CONTEXT)


def round_trip(params: dict[str, Any], kind: str) -> tuple[FLModel, FLModel]:
    sent = quantize(params, kind, {"kept": 1})
    return sent, ModelDequantizer().process(sent, CONTEXT)


def as_float64(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.double().numpy()
    return np.asarray(value, dtype=np.float64)


def half_widest_gap(table: np.ndarray) -> float:
    return float(np.max(np.diff(np.sort(table)))) / 2


def blockwise_bound(value: np.ndarray, blocksize: int, scaled_bound: float) -> np.ndarray:
    """Per value: its block's absmax times the most a scaled value moves."""
    flat = np.abs(value.reshape(-1))
    blocks = -(-flat.size // blocksize)
    absmax = np.array([flat[i * blocksize:(i + 1) * blocksize].max() for i in range(blocks)])
    return np.repeat(absmax, blocksize)[: flat.size] * scaled_bound * (1 + 1e-5)


def sample_params(rng: np.random.Generator, torch_params: bool, dtype: str) -> dict[str, Any]:
    shapes = {"weight": (37, 129), "bias": (129,), "odd": (5, 1, 3), "one": (1,), "empty": (0, 4)}
    params: dict[str, Any] = {}
    for name, shape in shapes.items():
        values = (rng.standard_normal(shape) * 3).astype(np.float32)
        params[name] = torch.from_numpy(values).to(getattr(torch, dtype)) if torch_params else values.astype(dtype)
    params["steps"] = torch.tensor([7]) if torch_params else np.array([7])
    params["mask"] = torch.tensor([True, False]) if torch_params else np.array([True, False])
    return params


CONTAINERS = [("numpy", "float32"), ("numpy", "float16"), ("torch", "float32"), ("torch", "float16"),
              ("torch", "bfloat16")]


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("container,dtype", CONTAINERS)
def test_round_trip_keeps_dtype_shape_container_and_stays_within_the_bound(kind: str, container: str,
                                                                            dtype: str) -> None:
    params = sample_params(np.random.default_rng(1), container == "torch", dtype)
    sent, restored = round_trip(params, kind)
    assert restored.meta == {"kept": 1}
    for name, original in params.items():
        back = restored.params[name]
        assert type(back) is type(original) and back.dtype == original.dtype, name
        assert tuple(back.shape) == tuple(original.shape), name
        if name in ("steps", "mask"):
            assert back is original  # not floats: untouched
            continue
        x, y = as_float64(original), as_float64(back)
        skipped = sent.meta["quant_state"][name] == {} and kind not in ("float16", "bfloat16", "adaquant")
        if kind in ("float16", "bfloat16") or skipped:
            # a cast is exact: what the source type rounds to in the target, and back
            if dtype == "float32" and kind in ("float16", "bfloat16"):
                expected = torch.from_numpy(x.astype(np.float32)).to(getattr(torch, kind)).double().numpy()
            else:
                expected = x
            np.testing.assert_array_equal(y, expected, err_msg=name)
        elif kind == "blockwise8":
            bound = blockwise_bound(x, 4096, half_widest_gap(DYNAMIC) + 1 / 65535)
            assert np.all(np.abs(x - y).reshape(-1) <= bound + rounding(dtype, y)), name
        elif kind in ("float4", "normfloat4"):
            bound = blockwise_bound(x, 64, half_widest_gap(FP4 if kind == "float4" else NF4))
            assert np.all(np.abs(x - y).reshape(-1) <= bound + rounding(dtype, y)), name
        else:
            state = sent.meta["quant_state"][name]
            step = state["norm"] / state["quantization_level"] if "norm" in state else 0.0
            assert np.all(np.abs(x - y).reshape(-1) <= step / 2 * (1 + 1e-9) + rounding(dtype, y)), name


def rounding(dtype: str, values: np.ndarray) -> np.ndarray:
    """Half a unit in the last place of the source type: restoring rounds to it."""
    bits = {"float32": 24, "float16": 11, "bfloat16": 8}[dtype]
    return np.abs(values.reshape(-1)) * 2.0 ** -bits + (6.0e-8 if dtype == "float16" else 0.0)


def test_float16_saturates_like_nvflare_and_skips_params_already_that_small() -> None:
    params = {"big": np.array([1e6, -1e6, 3.0], np.float32), "half": np.ones(3, np.float16)}
    sent = quantize(params, "float16")
    np.testing.assert_array_equal(sent.params["big"], np.array([65504, -65504, 3], np.float16))
    assert sent.params["half"] is params["half"]
    assert sent.meta["source_datatype"] == {"big": "float32", "half": "float16"}


def test_bfloat16_on_numpy_travels_as_its_bits() -> None:
    values = np.array([1.0, 1.0 + 2**-8, -3.25e-3], np.float32)
    sent = quantize({"w": values}, "bf16")
    assert sent.meta["PROCESSED_ALGORITHM"] == "bfloat16" and sent.params["w"].dtype == np.uint16
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(sent.params["w"], expected)


def test_meta_follows_nvflare_and_the_dequantizer_removes_it() -> None:
    params = {"w": np.ones((3, 4), np.float32), "n": np.array([1])}
    sent, restored = round_trip(params, "NormFloat4")
    assert META_KEYS | {"kept"} == set(sent.meta)
    assert sent.meta["PROCESSED_ALGORITHM"] == "normfloat4" and sent.meta["quantized_flag"] is True
    assert sent.meta["source_datatype"] == {"w": "float32", "n": "int64"}
    state = sent.meta["quant_state"]
    assert state["n"] == {}
    assert set(state["w"]) == {"quant_type", "absmax", "blocksize", "quant_map", "dtype", "shape"}
    assert state["w"]["quant_type"] == "nf4" and state["w"]["blocksize"] == 64 and state["w"]["shape"] == [3, 4]
    assert sent.params["w"].shape == (6, 1) and sent.params["w"].dtype == np.uint8
    assert set(quantize(params, "blockwise8").meta["quant_state"]["w"]) == {"absmax", "code"}
    assert restored.meta == {"kept": 1}
    assert params["w"].dtype == np.float32, "the sender's model is left as it was"


def test_a_quantized_model_is_never_quantized_twice_and_plain_models_pass_the_dequantizer() -> None:
    sent = quantize({"w": np.ones(10, np.float32)}, "blockwise8")
    assert ModelQuantizer("float16").process(sent, CONTEXT) is sent
    plain = FLModel(params={"w": np.ones(3, np.float32)})
    assert ModelDequantizer().process(plain, CONTEXT) is plain
    metrics_only = FLModel(metrics={"accuracy": 1.0})
    assert ModelQuantizer("nf4").process(metrics_only, CONTEXT) is metrics_only


def test_types_are_matched_case_insensitively_and_unknown_ones_refused() -> None:
    assert ModelQuantizer("BLOCKWISE8").quantization_type == "blockwise8"
    assert ModelQuantizer("fp4").quantization_type == "float4"
    with pytest.raises(ConfigError, match="int3"):
        ModelQuantizer("int3")
    with pytest.raises(ValueError, match="'w' is float64"):
        quantize({"w": np.ones(3)}, "float16")


# ---- sizes: the seeds' table ----


def expected_sizes(n: int, kind: str) -> tuple[int, int]:
    """Bytes of one param of n float32 values on the wire, and of its quant_state: one float32 absmax per block
    plus the code table (256 values for 8-bit, 16 for 4-bit)."""
    if kind in ("float16", "bfloat16"):
        return 2 * n, 0
    if kind == "blockwise8":
        return n, 4 * -(-n // 4096) + 4 * 256
    return -(-n // 2), 4 * -(-n // 64) + 4 * 16


def llama_shapes(hidden: int, intermediate: int, kv: int, vocab: int, layers: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden), p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate), p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
        })
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


@pytest.mark.parametrize("kind", ["float16", "bfloat16", "blockwise8", "float4", "normfloat4"])
def test_payload_and_meta_sizes_follow_the_formula_for_a_synthetic_model(kind: str) -> None:
    shapes = llama_shapes(hidden=256, intermediate=1024, kv=64, vocab=2048, layers=2)
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    original, _ = message_bytes(params, {})
    sent = quantize(params, kind)
    payload, meta = message_bytes(sent.params, sent.meta["quant_state"])
    sizes = [expected_sizes(math.prod(shape), kind) for shape in shapes.values()]
    assert (payload, meta) == (sum(s[0] for s in sizes), sum(s[1] for s in sizes))
    assert payload * {"float16": 2, "bfloat16": 2, "blockwise8": 4, "float4": 8, "normfloat4": 8}[kind] == original


def test_the_formula_gives_the_seeds_table_for_a_1b_model() -> None:
    # Llama-3.2-1B's state dict (lm_head listed apart): 1,498,482,688 values, the seeds' 5716.26 MB of float32
    shapes = llama_shapes(hidden=2048, intermediate=8192, kv=512, vocab=128256, layers=16)
    counts = [math.prod(shape) for shape in shapes.values()]
    mb = 1024 * 1024
    assert round(4 * sum(counts) / mb, 2) == 5716.26
    table = {}
    for kind in ("float16", "blockwise8", "normfloat4"):
        payload = sum(expected_sizes(n, kind)[0] for n in counts)
        meta = sum(expected_sizes(n, kind)[1] for n in counts)
        share = 100 * (payload + meta) / (4 * sum(counts))
        table[kind] = (round(payload / mb, 2), round(meta / mb, 2), round(share, 2))
    assert table == {"float16": (2858.13, 0.0, 50.0), "blockwise8": (1429.06, 1.54, 25.03),
                     "normfloat4": (714.53, 89.33, 14.06)}


# ---- states from the network ----


def tampered(kind: str, change) -> FLModel:
    # sorted values: adaquant's integers compress, so its compressed form is what arrives
    sent = quantize({"w": np.linspace(-1, 1, 2100, dtype=np.float32).reshape(300, 7)}, kind)
    change(sent)
    return sent


@pytest.mark.parametrize("kind,change,message", [
    ("blockwise8", lambda m: m.meta["quant_state"]["w"].update(absmax=np.ones(2, np.float32)), "absmax"),
    ("blockwise8", lambda m: m.meta["quant_state"]["w"].update(code=np.ones(255, np.float32)), "code"),
    ("blockwise8", lambda m: m.meta["quant_state"]["w"].update(absmax=np.ones(1, np.float64)), "float32"),
    ("blockwise8", lambda m: m.meta["quant_state"].update(w={}), "without its quant_state"),
    ("blockwise8", lambda m: m.meta["quant_state"]["w"].pop("code"), "'code'"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(shape=[300, 8]), "shape"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(shape=[2**40, 2**40]), "4-bit codes"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(shape="300x7"), "shape"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(quant_type="fp4"), "quant_type"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(blocksize=63), "blocksize"),
    ("normfloat4", lambda m: m.meta["quant_state"]["w"].update(absmax=np.ones(3, np.float32)), "absmax"),
    ("normfloat4", lambda m: m.params.update(w=np.ones(5, np.float32)), "uint8"),
    ("float16", lambda m: m.params.update(w=np.ones(5, np.float32)), "float16"),
    ("adaquant", lambda m: m.meta["quant_state"]["w"].update(tensor_shape=[3, 3]), "bytes"),
    ("adaquant", lambda m: m.meta["quant_state"]["w"].update(new_dtype="<f8"), "new_dtype"),
    ("adaquant", lambda m: m.meta["quant_state"]["w"].update(compressed_tensor=np.zeros(9, np.uint8)), "compressed"),
    ("adaquant", lambda m: m.meta["quant_state"]["w"].update(norm="big"), "norm"),
    ("adaquant", lambda m: m.meta.update(PROCESSED_ALGORITHM="int2"), "int2"),
])
def test_a_state_that_does_not_fit_raises_a_serialization_error_naming_the_param(kind, change, message) -> None:
    model = tampered(kind, change)
    with pytest.raises(SerializationError, match=message) as info:
        ModelDequantizer().process(model, CONTEXT)
    assert "'w'" in str(info.value) or "int2" in str(info.value)


def test_a_decompression_bomb_is_stopped_at_the_declared_size() -> None:
    import bz2

    sent = quantize({"w": np.linspace(0, 1, 3000, dtype=np.float32)}, "adaquant")
    state = sent.meta["quant_state"]["w"]
    assert "compressed_tensor" in state
    state["compressed_tensor"] = np.frombuffer(bz2.compress(bytes(10**7)), dtype=np.uint8)
    with pytest.raises(SerializationError, match="3000 bytes"):
        ModelDequantizer().process(sent, CONTEXT)


def test_kernels_check_their_buffers() -> None:
    data = np.ones(100, np.float32).view(np.uint8)
    codes, absmax = np.empty(100, np.uint8), np.empty(1, np.float32).view(np.uint8)
    with pytest.raises(ValueError, match="codes holds 99 values where 100"):
        _sfm.quantize_blockwise8(data, "float32", codes[:99], absmax)
    with pytest.raises(ValueError, match="read-only"):
        _sfm.quantize_blockwise8(data, "float32", bytes(100), absmax)
    with pytest.raises(ValueError, match="overlaps"):
        _sfm.cast_floats(data, "float32", data, "float32")
    with pytest.raises(TypeError, match="uint8 buffer"):
        _sfm.quantize_blockwise8(np.ones(100, np.float32), "float32", codes, absmax)
    with pytest.raises(ValueError, match="float64"):
        _sfm.quantize_4bit(data, "float64", "nf4", np.empty(50, np.uint8), np.empty(8, np.float32).view(np.uint8))
    with pytest.raises(ValueError, match="even"):
        _sfm.dequantize_4bit(codes[:50], absmax, "nf4", np.empty(400, np.uint8), "float32", 65)
    with pytest.raises(ValueError, match="whole, aligned array of float32"):
        _sfm.quantize_blockwise8(data[1:], "float32", codes, absmax)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kernels_run_in_a_process_forked_after_they_ran() -> None:
    values = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)
    quantize({"w": values}, "nf4")
    pid = os.fork()
    if pid == 0:  # the child: a kernel waiting on threads left in the parent would hang until the alarm
        signal.alarm(20)
        ok = ModelDequantizer().process(quantize({"w": values}, "blockwise8"), CONTEXT).params["w"].shape == (1 << 20,)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---- bitsandbytes, byte for byte ----

bnb_functional = None
if importlib.util.find_spec("bitsandbytes") is not None:
    try:
        import bitsandbytes.functional as bnb_functional  # type: ignore[no-redef]
    except Exception:  # an install that cannot load its library counts as absent
        bnb_functional = None
needs_bnb = pytest.mark.skipif(bnb_functional is None, reason="bitsandbytes is not installed: pip install "
                               "bitsandbytes to compare flare's kernels with its CPU functions")


def tensor_bytes(tensor) -> np.ndarray:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy()


@needs_bnb
def test_code_tables_are_bitsandbytes() -> None:
    np.testing.assert_array_equal(DYNAMIC.view(np.uint32), bnb_functional.create_dynamic_map().numpy().view(np.uint32))
    for name, ours in (("fp4", FP4), ("nf4", NF4)):
        theirs = bnb_functional.get_4bit_type(name, device="cpu").numpy()
        np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


finite_floats = st.floats(-(2.0**100), 2.0**100, allow_nan=False, width=32)


@needs_bnb
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(finite_floats, min_size=1, max_size=700) | st.integers(1, 20000).map(
        lambda n: np.random.default_rng(n).standard_normal(n).astype(np.float32).tolist()),
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    blocksize8=st.sampled_from([64, 256, 4096]),
    blocksize4=st.sampled_from([32, 64, 128]),
    scale=st.floats(1e-6, 1e4),
)
def test_cpu_output_equals_bitsandbytes_byte_for_byte(values, dtype, blocksize8, blocksize4, scale) -> None:
    x = (torch.tensor(values, dtype=torch.float32) * scale).to(getattr(torch, dtype))
    if not torch.isfinite(x).all():
        return  # float16 overflow: bitsandbytes' blocks of inf and NaN are not a format to compare
    n = x.numel()
    codes, absmax = np.empty(n, np.uint8), np.empty(-(-n // blocksize8), np.float32)
    _sfm.quantize_blockwise8(tensor_bytes(x), dtype, codes, absmax.view(np.uint8), blocksize8)
    q, state = bnb_functional.quantize_blockwise(x, blocksize=blocksize8)
    np.testing.assert_array_equal(codes, q.numpy())
    np.testing.assert_array_equal(absmax.view(np.uint32), state.absmax.numpy().view(np.uint32))
    out = torch.empty(n, dtype=x.dtype)
    _sfm.dequantize_blockwise8(codes, absmax.view(np.uint8), DYNAMIC.view(np.uint8), tensor_bytes(out), dtype,
                               blocksize8)
    np.testing.assert_array_equal(tensor_bytes(out), tensor_bytes(bnb_functional.dequantize_blockwise(q, state)))
    for quant_type, table in (("fp4", FP4), ("nf4", NF4)):
        packed, absmax = np.empty((n + 1) // 2, np.uint8), np.empty(-(-n // blocksize4), np.float32)
        _sfm.quantize_4bit(tensor_bytes(x), dtype, quant_type, packed, absmax.view(np.uint8), blocksize4)
        q, state = bnb_functional.quantize_4bit(x, blocksize=blocksize4, quant_type=quant_type)
        np.testing.assert_array_equal(packed, q.numpy().reshape(-1))
        np.testing.assert_array_equal(absmax.view(np.uint32), state.absmax.numpy().view(np.uint32))
        if n % 2:
            continue  # bitsandbytes dequantizes odd counts through torch.compile: slow, and the values are the same
        out = torch.empty(n, dtype=x.dtype)
        _sfm.dequantize_4bit(packed, absmax.view(np.uint8), quant_type, tensor_bytes(out), dtype, blocksize4)
        theirs = bnb_functional.dequantize_4bit(q, state).reshape(-1)
        # equal values; not bytes, as bitsandbytes' CPU kernel gives FP4's code 8 as -0.0 on some paths and as
        # +0.0 (its table's value, and ours) on others
        assert torch.equal(out, theirs)


cuda = torch.cuda.is_available() and bnb_functional is not None


@pytest.mark.skipif(not cuda, reason="needs a CUDA GPU and bitsandbytes: compares flare's CPU kernels with "
                    "bitsandbytes' CUDA kernels, which NVFlare uses")
def test_cpu_kernels_agree_with_bitsandbytes_cuda() -> None:
    x = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)) * 3
    n = x.numel()
    codes, absmax = np.empty(n, np.uint8), np.empty(-(-n // 4096), np.float32)
    _sfm.quantize_blockwise8(tensor_bytes(x), "float32", codes, absmax.view(np.uint8))
    q, state = bnb_functional.quantize_blockwise(x.cuda())
    np.testing.assert_allclose(absmax, state.absmax.cpu().numpy(), rtol=0)
    assert np.mean(codes == q.cpu().numpy()) > 0.99  # the two bitsandbytes kernels differ near midpoints
    ours = ModelDequantizer().process(quantize({"w": x}, "blockwise8"), CONTEXT).params["w"]
    theirs = bnb_functional.dequantize_blockwise(torch.from_numpy(codes).cuda(), state.__class__(
        absmax=torch.from_numpy(absmax).cuda(), code=torch.from_numpy(DYNAMIC).cuda(), blocksize=4096,
        dtype=torch.float32)).cpu()
    assert torch.equal(ours, theirs), "bitsandbytes on CUDA decodes flare's codes to the same values"
    for kind, quant_type in (("float4", "fp4"), ("normfloat4", "nf4")):
        sent = quantize({"w": x}, kind)
        q, state = bnb_functional.quantize_4bit(x.cuda(), quant_type=quant_type)
        # CUDA gives small negatives FP4's -0 code where the CPU gives +0, and divides nothing: a few codes differ
        assert np.mean(sent.params["w"].numpy().reshape(-1) == q.cpu().numpy().reshape(-1)) > 0.99
        theirs = bnb_functional.dequantize_4bit(sent.params["w"].cuda(), state.__class__(
            absmax=sent.meta["quant_state"]["w"]["absmax"].cuda(), shape=x.shape, blocksize=64, quant_type=quant_type,
            code=torch.from_numpy(FP4 if quant_type == "fp4" else NF4).cuda(), dtype=torch.float32)).cpu()
        assert torch.equal(ModelDequantizer().process(sent, CONTEXT).params["w"], theirs)
    on_gpu = quantize({"w": x.cuda()}, "nf4")
    back = ModelDequantizer().process(on_gpu, CONTEXT).params["w"]
    assert back.device.type == "cpu" and torch.allclose(back, x, atol=float(x.abs().max()) * 0.14)


# ---- recipes and jobs ----


def test_the_recipe_argument_adds_the_four_filters_where_nvflare_puts_them(tmp_path: Path) -> None:
    from flare.app_common.np.recipes import NumpyFedAvgRecipe

    script = tmp_path / "np_client.py"
    shutil.copy(JOBS / "np_client.py", script)
    recipe = NumpyFedAvgRecipe(name="q", min_clients=2, model={"w": np.zeros(4, np.float32)},
                               train_script=str(script), quantization="nf4")
    job = recipe.export(tmp_path / "out")
    assert job == tmp_path / "out" / "q"
    quantizer = {"path": "flare.filters.quantization.quantizer.ModelQuantizer",
                 "args": {"quantization_type": "normfloat4"}}
    dequantizer = {"path": "flare.filters.quantization.dequantizer.ModelDequantizer", "args": {}}
    server = json.loads((job / "app_server/config/config_fed_server.json").read_text())
    client = json.loads((job / "app_client/config/config_fed_client.json").read_text())
    assert server["task_data_filters"] == [{"tasks": ["train"], "filters": [quantizer]}]
    assert server["task_result_filters"] == [{"tasks": ["train"], "filters": [dequantizer]}]
    assert client["task_data_filters"] == [{"tasks": ["train"], "filters": [dequantizer]}]
    assert client["task_result_filters"] == [{"tasks": ["train"], "filters": [quantizer]}]
    with pytest.raises(ConfigError, match="quantization_type 'int2'"):
        NumpyFedAvgRecipe(name="q", min_clients=2, model={"w": np.zeros(4, np.float32)}, train_script=str(script),
                          quantization="int2")


@pytest.mark.timeout(180)
def test_a_numpy_job_averages_through_blockwise8_with_states_pulled_by_download(tmp_path: Path) -> None:
    from flare.apis.fl_constant import RunStatus
    from flare.app_common.np.recipes import NumpyFedAvgRecipe
    from flare.recipe import SimEnv

    script = tmp_path / "np_client.py"
    shutil.copy(JOBS / "np_client.py", script)
    start = {"w": np.random.default_rng(0).standard_normal((300, 50)).astype(np.float32), "b": np.ones(5, np.float32)}
    recipe = NumpyFedAvgRecipe(name="q", min_clients=2, num_rounds=2, model=start, train_script=str(script),
                               quantization="blockwise8")
    # every array goes by download, the quant_state in meta too
    recipe.add_server_config({"np_download_threshold": 0})
    recipe.add_client_config({"np_download_threshold": 0})
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path / "ws")))
    assert run.get_status() == RunStatus.FINISHED_COMPLETED
    saved = list(Path(run.get_result()).glob("server/*/app_server/FL_global_model.npz"))
    with np.load(saved[0]) as result:
        for name, values in start.items():
            # site i adds i and reports i steps: the weighted mean moves 5/3 a round; each of the 4 hops of the
            # 2 rounds costs at most one blockwise-8 step of the largest magnitude
            expected = values + 2 * 5 / 3
            bound = 4 * float(np.abs(expected).max() + 4) * (half_widest_gap(DYNAMIC) + 1 / 65535)
            assert result[name].dtype == np.float32 and np.max(np.abs(result[name] - expected)) <= bound


@pytest.mark.timeout(600)
def test_hello_pt_with_nf4_reaches_85_percent_validation_accuracy() -> None:
    from test_examples_hello import load_example_module, run_job

    from conftest import ROOT

    result = run_job("hello-pt", "--n_clients", "2", "--num_rounds", "3", "--quantization", "nf4")
    saved = sorted(result.glob("server/*/app_server/FL_global_model.pt"), key=lambda p: p.stat().st_mtime)
    example = ROOT / "examples" / "hello-pt"
    model = load_example_module("hello_pt_model", example / "model.py").SimpleNetwork()
    client = load_example_module("hello_pt_client", example / "client.py")
    state = torch.load(saved[-1], weights_only=True)["model"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    _, validation = client.load_data("site-1", 2)
    accuracy = client.evaluate(model, torch.utils.data.DataLoader(validation, batch_size=256))
    assert accuracy >= 0.85, accuracy
