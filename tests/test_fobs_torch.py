"""torch tensors through FOBS: every dtype in NVFlare's native form, large ones as views over the input, through cell
requests, and torch left unimported until a tensor is met."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import msgpack
import pytest

from flare import fobs
from flare.cellnet import Message
from flare.fobs.lobs import HEADER
from flare.tensors import safetensors as st

torch = pytest.importorskip("torch")
reference = pytest.importorskip("safetensors.torch")

MIB = 1024 * 1024
DTYPES = [getattr(torch, d.torch) for d in st.DTYPES.values() if d.torch and hasattr(torch, d.torch)]


def sample(dtype, shape=(3, 5)):
    n = 1
    for s in shape:
        n *= s
    raw = torch.arange(n, dtype=torch.float32).reshape(shape) % 7 - 2
    if dtype == torch.bool:
        return raw > 0
    if dtype == torch.complex64:
        return torch.complex(raw, -raw)
    return raw.to(dtype)


def same(a, b) -> bool:
    # float8 has no equality kernel: compare the bytes, which is what the wire carries anyway
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8))


def address_range(buf: bytearray) -> tuple[int, int]:
    start = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    return start, start + len(buf)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_round_trips_small_and_large(dtype):
    small = sample(dtype)
    large = sample(dtype, (1024, 1025))  # at least 1 MiB: out of band with a 1 MiB threshold
    odd = sample(dtype, (4, 6)).t()  # strided
    for value in (small, large, odd, sample(dtype, ()), sample(dtype, (0, 3))):
        got = fobs.loads(bytearray(fobs.dumps({"v": value}, max_value_size=MIB)))["v"]
        assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
        assert same(got, value), (dtype, value.shape)


def test_native_form_is_nvflares():
    t = sample(torch.bfloat16)
    data = fobs.dumps(t)
    _marker, _dot, size = HEADER.unpack_from(data, 0)
    body = msgpack.unpackb(data[HEADER.size : HEADER.size + size], raw=False)
    assert body["__fobs_type__"] == "torch.Tensor"
    assert body["__fobs_dc__"] == "nvflare.app_opt.pt.decomposers.TensorDecomposer"
    assert body["__fobs_data__"]["type"] == "native"
    loaded = reference.load(body["__fobs_data__"]["data"])
    assert list(loaded) == ["t"] and torch.equal(loaded["t"], t)


def test_a_payload_of_the_reference_writer_loads():
    t = sample(torch.float16, (4, 4))
    wrapped = {
        "__fobs_type__": "torch.Tensor",
        "__fobs_data__": {"type": "native", "data": reference.save({"t": t})},
        "__fobs_dc__": "nvflare.app_opt.pt.decomposers.TensorDecomposer",
    }
    body = msgpack.packb(wrapped, use_bin_type=True)
    got = fobs.loads(HEADER.pack(100, 0, len(body)) + body)
    assert torch.equal(got, t)
    got.add_(1)  # a tensor from the body is a copy of its own, writable


def test_large_tensors_are_views_over_the_input_aligned():
    model = {f"layer{i}": torch.randn(512, 1024) for i in range(3)}
    model["bf16"] = torch.randn(1024, 1024).to(torch.bfloat16)
    buf = bytearray(fobs.dumps(model, max_value_size=MIB))  # 2 MiB each: below the default 10 MiB threshold
    lo, hi = address_range(buf)
    got = fobs.loads(buf)
    for key, value in model.items():
        t = got[key]
        assert torch.equal(t, value)
        assert lo <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= hi, key
        assert (t.data_ptr() - lo) % 64 == 0, key  # aligned within the output, as arrays are
    got["layer0"][0, 0] = 42.0  # a view over a writable input is writable
    assert got["layer0"][0, 0] == 42.0


def test_buffer_list_pieces_are_the_tensors_own_memory():
    t = torch.randn(1024, 512)
    pieces = fobs.dumps({"t": t}, max_value_size=MIB, buffer_list=True)
    views = [p for p in pieces if isinstance(p, memoryview) and p.nbytes == t.numel() * 4]
    assert len(views) == 1
    import numpy as np

    assert np.frombuffer(views[0], np.uint8).ctypes.data == t.data_ptr()
    assert torch.equal(fobs.loads(b"".join(pieces))["t"], t)


def test_torch_is_imported_only_when_a_tensor_is_met(tmp_path):
    path = tmp_path / "t.fobs"
    fobs.dumpf({"t": sample(torch.float32)}, str(path))
    code = f"""
import sys
from flare import fobs
import numpy
fobs.loads(fobs.dumps({{"a": 1, "n": numpy.zeros(3)}}))
assert "torch" not in sys.modules, "torch imported by plain FOBS use"
got = fobs.loadf({str(path)!r})
assert "torch" in sys.modules and got["t"].shape == (3, 5)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_dtype_through_a_cell_request(pair):
    server, client = pair
    server.register_request_cb("t", "echo", lambda req: {"echo": req.payload, "n": len(req.payload)})
    payload = {str(d): sample(d) for d in DTYPES}
    reply = client.request("server", "t", "echo", payload)
    assert reply.ok, reply.error
    assert reply.payload["n"] == len(DTYPES)
    for key, value in payload.items():
        assert same(reply.payload["echo"][key], value), key


def test_a_state_dict_as_a_cell_payload(pair):
    server, client = pair
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 1024))
    state = model.state_dict()  # 16 MiB in all, two tensors of 8 MiB
    state["half"] = torch.randn(2048, 2048).to(torch.bfloat16)
    got = {}

    def handler(req: Message):
        got.update(req.payload)
        return {"sum": float(sum(t.double().sum() for t in req.payload.values()))}

    server.register_request_cb("t", "model", handler)
    reply = client.request("server", "t", "model", state, timeout=30)
    assert reply.ok, reply.error
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key
    assert reply.payload["sum"] == pytest.approx(float(sum(t.double().sum() for t in state.values())))
