"""flare.fobs against hostile input: names that would run code, deep nesting, crafted datums, and cut or
corrupted bytes. Everything is refused with a SerializationError, and canaries prove nothing ran."""

from __future__ import annotations

import io
import os
import struct
import sys
import uuid

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flare import fobs
from flare.errors import SerializationError, TypeNotAllowed

DATA_CLASS_DC = "nvflare.fuel.utils.fobs.decomposer.DataClassDecomposer"
HEADER = struct.Struct(">BBQ")
# stdlib modules with side effects on import (antigravity opens a browser, this prints), never imported by tests
UNIMPORTED = ["antigravity", "this", "turtledemo.clock"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    fobs.reset()
    monkeypatch.setenv("FLARE_DATUM_DIR", str(tmp_path / "datums"))
    yield
    fobs.reset()


class Canary:
    """Named by crafted payloads; any construction or state restore would set the flag."""

    ran = False

    def __new__(cls, *args, **kwargs):
        Canary.ran = True
        return super().__new__(cls)

    def __setstate__(self, state):
        Canary.ran = True


def wrap(type_name, data, dc=None):
    obj = {"__fobs_type__": type_name, "__fobs_data__": data}
    if dc is not None:
        obj["__fobs_dc__"] = dc
    return obj


def lobs(body, datums=()):
    """A LOBS input around a raw msgpack body; datums are (marker, dot, uuid str, value bytes)."""
    raw = msgpack.packb(body, use_bin_type=True)
    out = [HEADER.pack(100, 0, len(raw)), raw]
    for marker, dot, datum_id, value in datums:
        out += [HEADER.pack(marker, dot, 16 + len(value)), uuid.UUID(datum_id).bytes, value]
    return b"".join(out)


def datum_ref(datum_id, unwrap=True, dc=DATA_CLASS_DC):
    return wrap("nvflare.fuel.utils.fobs.datum.DatumRef", {"data": {"datum_id": datum_id, "unwrap": unwrap}}, dc)


@pytest.fixture
def canary_file(tmp_path):
    path = tmp_path / "canary"
    yield path
    assert not path.exists(), "a crafted payload ran a command"
    assert not Canary.ran, "a crafted payload built a refused class"


def hostile_payloads(canary_file):
    cmd = f"touch {canary_file}"
    canary = f"{__name__}.Canary"
    return {
        "os.system": wrap("os.system", cmd),
        "os.system with dc": wrap("os.system", {"data": {"x": cmd}}, DATA_CLASS_DC),
        "posix.system": wrap("posix.system", cmd, "nvflare.fuel.utils.fobs.decomposer.EnumTypeDecomposer"),
        "subprocess.Popen": wrap("subprocess.Popen", {"data": {"args": ["sh", "-c", cmd]}}, DATA_CLASS_DC),
        "builtins.eval": wrap("builtins.eval", f"__import__('os').system('{cmd}')"),
        "eval": wrap("eval", cmd),
        "canary class": wrap(canary, {"data": {}}, DATA_CLASS_DC),
        "allowed type, decomposer os.system": wrap("tuple", [cmd], "os.system"),
        "allowed type, decomposer Popen": wrap("datetime.datetime", "2020-01-01", "subprocess.Popen"),
        "type name not a string": wrap(["os", "system"], cmd),
        "NVFlare name with no flare class": wrap("nvflare.apis.workspace.Workspace", [cmd], DATA_CLASS_DC),
        "deep": _nest(wrap("os.system", cmd), 200),
        "deep in a tuple": _nest(wrap("tuple", [wrap("subprocess.Popen", {"data": {}}, DATA_CLASS_DC)]), 100),
        "inside a DatumRef id": datum_ref(wrap("os.system", cmd)),
        "DatumRef with a foreign decomposer": datum_ref(str(uuid.uuid4()), dc="subprocess.Popen"),
        "under an int key": {"k": {1: wrap("os.system", cmd)}},
        **{f"unimported {m}": wrap(f"{m}.Anything", {"data": {}}, DATA_CLASS_DC) for m in UNIMPORTED},
    }


def _nest(obj, depth):
    for i in range(depth):
        obj = [obj] if i % 2 else {"k": obj}
    return obj


def test_hostile_type_names_are_refused_before_lookup(canary_file):
    before = set(sys.modules)
    for name, body in hostile_payloads(canary_file).items():
        with pytest.raises(TypeNotAllowed) as info:
            fobs.loads(lobs(body))
        if "not a string" not in name:
            assert "not allowed" in str(info.value) or "not registered" in str(info.value) or \
                "no counterpart" in str(info.value), name
    for module in UNIMPORTED:
        assert module not in sys.modules
    assert set(sys.modules) - before == set()


def test_refused_names_are_named_in_the_error(canary_file):
    with pytest.raises(TypeNotAllowed, match="subprocess.Popen"):
        fobs.loads(lobs(wrap("subprocess.Popen", {"data": {}}, DATA_CLASS_DC)))
    with pytest.raises(TypeNotAllowed, match="'os.system'"):
        fobs.loads(lobs(wrap("tuple", [1], "os.system")))


def test_whitelisting_never_imports(canary_file):
    fobs.add_type_name_whitelist("this.Zen", "antigravity.fly", "os.system", "subprocess.Popen", f"{__name__}.nope")
    for name in ("this.Zen", "antigravity.fly"):
        with pytest.raises(TypeNotAllowed, match="not imported"):
            fobs.loads(lobs(wrap(name, {"data": {}}, DATA_CLASS_DC)))
    assert "this" not in sys.modules and "antigravity" not in sys.modules
    # a function is no class, and Popen with a decomposer nobody registered is not rebuilt either
    with pytest.raises(TypeNotAllowed):
        fobs.loads(lobs(wrap("os.system", f"touch {canary_file}")))
    with pytest.raises(TypeNotAllowed):
        fobs.loads(lobs(wrap("subprocess.Popen", ["sh"], "flare.fobs.builtin_decomposers.TupleDecomposer")))
    with pytest.raises(TypeNotAllowed):
        fobs.loads(lobs(wrap(f"{__name__}.nope", {"data": {}}, DATA_CLASS_DC)))


def test_crafted_datums_are_refused(canary_file):
    did = str(uuid.uuid4())
    array = {"type": "native", "data": datum_ref(did)}
    object_npy = (b"\x93NUMPY\x01\x00" + struct.pack("<H", 60)
                  + b"{'descr': '|O', 'fortran_order': False, 'shape': (1,), }".ljust(59) + b"\n" + b"\0" * 8)
    code_npy = (b"\x93NUMPY\x01\x00" + struct.pack("<H", 90)
                + f"{{'descr': __import__('os').system('touch {canary_file}'), 'shape': ()}}".encode().ljust(89)
                + b"\n")
    cases = {
        "object dtype": lobs(wrap("numpy.ndarray", array), [(102, 0, did, object_npy)]),
        "code in the npy header": lobs(wrap("numpy.ndarray", array), [(102, 0, did, code_npy)]),
        "shape larger than the data": lobs(
            wrap("numpy.ndarray", array), [(102, 0, did, object_npy.replace(b"|O", b"<f8").replace(b"(1,)", b"(9,)"))]
        ),
        "reference to a missing datum": lobs({"a": datum_ref(str(uuid.uuid4()))}, [(102, 0, did, b"x")]),
        "datum object type without a handler": lobs({"a": datum_ref(did)}, [(102, 7, did, b"x")]),
        "unknown marker": lobs({"a": 1}, [(104, 0, did, b"x")]),
        "duplicate datum": lobs({"a": datum_ref(did)}, [(102, 0, did, b"x"), (102, 0, did, b"y")]),
        "text not utf-8": lobs({"a": datum_ref(did)}, [(101, 0, did, b"\xff\xfe")]),
        "datum ref as a map key": _map_with_key(msgpack.packb(datum_ref(did)), [(102, 0, did, b"x")]),
        "huge announced body": HEADER.pack(100, 0, 2**63) + b"\x80",
        "huge announced datum": lobs({"a": 1})[:] + HEADER.pack(102, 0, 2**64 - 1) + uuid.UUID(did).bytes,
        "main marker twice": lobs({"a": 1}) + lobs({"b": 2}),
        "ext type": HEADER.pack(100, 0, 3) + b"\xd4\x05\x00",
    }
    for name, data in cases.items():
        with pytest.raises(SerializationError):
            fobs.loads(data)
        with pytest.raises(SerializationError):
            fobs.load(io.BytesIO(data))


def _map_with_key(packed_key: bytes, datums) -> bytes:
    """A body {KEY: 1} where KEY is a packed map (a Python dict cannot be a key, so msgpack bytes are spliced)."""
    body = b"\x81" + packed_key + b"\x01"
    out = [HEADER.pack(100, 0, len(body)), body]
    for marker, dot, datum_id, value in datums:
        out += [HEADER.pack(marker, dot, 16 + len(value)), uuid.UUID(datum_id).bytes, value]
    return b"".join(out)


def valid_payloads():
    obj = {
        "t": (1, "two", [3.0, None]),
        "s": {1, 2},
        "a": np.arange(300, dtype=np.float32).reshape(10, 30),
        "b": b"\x01" * 1500,
        "x": "é" * 700,
        "dt": __import__("datetime").datetime(2024, 1, 1),
    }
    return [fobs.dumps(obj, max_value_size=1024), fobs.dumps({"small": (1, 2), "n": np.int64(3)})]


PAYLOADS = valid_payloads()


def loads_or_refuses(data: bytes) -> None:
    try:
        fobs.loads(data)
    except SerializationError:
        pass


def test_every_prefix_is_refused():
    for payload in PAYLOADS:
        for n in range(len(payload)):
            with pytest.raises(SerializationError):
                fobs.loads(payload[:n])


@settings(max_examples=400, deadline=2000)
@given(st.data())
def test_corrupted_bytes_raise_serialization_error_or_decode(data):
    payload = bytearray(data.draw(st.sampled_from(PAYLOADS)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(payload) - 1), st.integers(1, 255)), min_size=1,
                               max_size=6))
    for pos, xor in flips:
        payload[pos] ^= xor
    loads_or_refuses(bytes(payload))


@settings(max_examples=200, deadline=2000)
@given(st.binary(max_size=64))
def test_random_bodies_raise_serialization_error_or_decode(body):
    loads_or_refuses(HEADER.pack(100, 0, len(body)) + body)


def test_nothing_was_imported_by_the_fuzzing():
    for module in UNIMPORTED:
        assert module not in sys.modules
    assert not os.path.exists("canary")


def test_the_canary_would_notice():
    """The positive control: once its name is allowed, rebuilding a Canary does trip the flag."""
    fobs.add_type_name_whitelist(f"{__name__}.Canary")
    try:
        assert isinstance(fobs.loads(lobs(wrap(f"{__name__}.Canary", {"data": {}}, DATA_CLASS_DC))), Canary)
        assert Canary.ran
    finally:
        Canary.ran = False
