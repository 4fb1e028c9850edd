"""flare.fobs: round trips, registration, and large values out of band (built over the input without copies)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import io
import math
from collections import OrderedDict, namedtuple
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flare import fobs
from flare.errors import SerializationError, TypeNotAllowed
from flare.fobs import lobs

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def fresh_registry():
    fobs.reset()
    yield
    fobs.reset()


def same(a, b) -> bool:
    """Equal values with exactly the same types all the way down (True is not 1, a tuple is not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        # bit for bit: NaN and NaT compare unequal to themselves
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def round_trip(obj, **kwargs):
    return fobs.loads(fobs.dumps(obj, **kwargs))


# hashable leaves (set members, dict keys) and every leaf msgpack carries as itself
keys = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8).filter(lambda s: not s.startswith("__fobs")))
hashable = st.one_of(st.none(), st.booleans(), keys, st.floats(allow_nan=False), st.binary(max_size=16))
leaves = st.one_of(
    hashable,
    st.floats(),
    st.datetimes(timezones=st.one_of(st.none(), st.just(timezone.utc))),
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(keys, inner, max_size=5),
        st.lists(st.tuples(keys, inner), max_size=4).map(OrderedDict),
        st.frozensets(hashable, max_size=4).map(set),
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_round_trip_of_nested_structures(obj):
    assert same(round_trip(obj), obj)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hnp.arrays(
    dtype=st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(min_len=1), hnp.unicode_string_dtypes(min_len=1)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
))
def test_round_trip_of_numpy_arrays(array):
    back = round_trip({"a": array})["a"]
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert back.flags.writeable


def test_builtin_types_keep_their_types():
    obj = {
        "tuple": (1, (2, 3)),
        "set": {1, 2},
        "od": OrderedDict([("b", 1), ("a", 2)]),
        "dt": datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-3))),
        "ns": argparse.Namespace(lr=0.1, name="x"),
        "scalars": [np.float32(1.5), np.float64(2.5), np.int32(-3), np.int64(2**40), np.uint8(7), np.bool_(True),
                    np.float16(0.5)],
        7: None,
    }
    back = round_trip(obj)
    assert same(back, obj) and list(back["od"]) == ["b", "a"]
    # bytearray and memoryview go as msgpack bin, which reads back as bytes (as in NVFlare)
    assert round_trip([bytearray(b"ab"), memoryview(b"cd")]) == [b"ab", b"cd"]


@dataclasses.dataclass
class Point:
    x: int
    y: list


@dataclasses.dataclass(frozen=True, slots=True)
class Frozen:
    a: int
    b: str


Pair = namedtuple("Pair", "left right")


class Color(enum.Enum):
    RED = 1
    GREEN = "g"


class Plain:
    def __init__(self):
        self.value = (1, 2)


def test_registered_classes_round_trip_and_unregistered_ones_are_refused():
    objs = [Point(1, [Color.GREEN]), Frozen(2, "b"), Pair(Point(0, []), 3), Plain()]
    data = fobs.dumps(objs)  # sending needs no registration (as in NVFlare)
    with pytest.raises(TypeNotAllowed, match="test_fobs.Color"):  # the innermost is met first
        fobs.loads(data)
    fobs.register_data_classes(Point, Frozen, Pair, Plain)
    fobs.register_enum_types(Color)
    back = fobs.loads(data)
    assert back[:3] == objs[:3] and type(back[2]) is Pair and back[3].value == (1, 2)
    fobs.reset()
    with pytest.raises(TypeNotAllowed):
        fobs.loads(data)


def test_a_class_that_was_only_sent_is_not_receivable():
    data = fobs.dumps(Plain())
    before = fobs.num_decomposers()
    with pytest.raises(TypeNotAllowed):
        fobs.loads(data)
    fobs.register_data_classes(Plain)
    assert fobs.num_decomposers() == before  # the on-the-fly entry became the registered one
    assert fobs.loads(data).value == (1, 2)


def test_whitelisted_names_are_found_in_imported_modules_only():
    data = fobs.dumps([Point(1, []), Color.RED])
    fobs.add_type_name_whitelist(f"{__name__}.Point", f"{__name__}.Color")
    back = fobs.loads(data)
    assert back == [Point(1, []), Color.RED]


class Celsius:
    def __init__(self, degrees: float):
        self.degrees = degrees


class CelsiusDecomposer(fobs.Decomposer):
    def supported_type(self):
        return Celsius

    def decompose(self, target, manager=None):
        return [target.degrees, b"x" * 2048]

    def recompose(self, data, manager=None):
        assert data[1] == b"x" * 2048  # an out-of-band value comes back in place before recompose
        return Celsius(data[0])


def test_custom_decomposer():
    fobs.register(CelsiusDecomposer)
    fobs.register(CelsiusDecomposer())  # first registration wins, no error
    back = round_trip({"t": Celsius(21.5)}, max_value_size=1024)
    assert isinstance(back["t"], Celsius) and back["t"].degrees == 21.5
    with pytest.raises(TypeError):
        fobs.register(object())  # type: ignore[arg-type]


def test_large_values_travel_as_datums():
    blob, text = bytes(range(256)) * 8, "é" * 2000
    obj = {"blob": blob, "text": text, "small": b"s", "nested": [(blob,)], "array": np.arange(512.0)}
    data = fobs.dumps(obj, max_value_size=1024)
    body, sections = lobs._parse(memoryview(data))
    assert bytes(range(256)) not in body and "éé".encode() not in body
    assert sorted(m for m, *_ in sections) == [lobs.MARKER_TEXT, lobs.MARKER_BLOB, lobs.MARKER_BLOB,
                                               lobs.MARKER_BLOB]
    assert same(fobs.loads(data), obj)
    assert obj["nested"][0][0] is blob  # the caller's object is untouched


def test_arrays_out_of_band_are_views_of_the_input_with_their_layout():
    c = np.arange(2048, dtype=np.float64).reshape(32, 64)
    f = np.asfortranarray(c[:, :48])
    strided = c[::2, ::3]  # neither C nor Fortran contiguous: sent as C order
    big_endian = np.arange(1024, dtype=">i4")
    obj = {"c": c, "f": f, "strided": strided, "be": big_endian}
    data = bytearray(fobs.dumps(obj, max_value_size=1024))
    back = fobs.loads(data)
    wire = np.frombuffer(data, dtype=np.uint8)
    for key, array in obj.items():
        assert same(back[key], array), key
        assert np.may_share_memory(back[key], wire), key
        assert back[key].flags.aligned and back[key].flags.writeable
    assert back["f"].flags.f_contiguous and not back["f"].flags.c_contiguous
    assert back["be"].dtype.byteorder == ">"
    # over immutable bytes the views are read-only
    assert not fobs.loads(bytes(data))["c"].flags.writeable


def test_datum_data_is_64_byte_aligned_in_the_output():
    data = fobs.dumps({"a": np.ones(3000), "b": np.ones(777, np.float32), "t": "x" * 5000}, max_value_size=1024)
    back = fobs.loads(data)
    base = np.frombuffer(data, np.uint8).ctypes.data
    assert (back["a"].ctypes.data - base) % 64 == 0 and (back["b"].ctypes.data - base) % 64 == 0


def test_streams_and_files(tmp_path):
    obj = {"a": np.arange(5000, dtype=np.int16), "b": b"z" * 3000, "c": (1, "two")}
    stream = io.BytesIO()
    fobs.dump(obj, stream, max_value_size=1024)
    stream.seek(0)
    back = fobs.load(stream)
    assert same(back, obj) and back["a"].flags.writeable and back["a"].flags.aligned
    path = tmp_path / "obj.fobs"
    fobs.dumpf(obj, str(path), max_value_size=1024)
    assert same(fobs.loadf(str(path)), obj)
    assert same(fobs.loads(b"".join(fobs.dumps(obj, max_value_size=1024, buffer_list=True))), obj)


class Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._src = io.BytesIO(data)

    def readable(self):
        return True

    def readinto(self, b):
        return self._src.readinto(b)


def test_load_from_an_unseekable_stream():
    obj = {"a": np.arange(3000.0), "s": "t" * 2000}
    assert same(fobs.load(Unseekable(fobs.dumps(obj, max_value_size=1024))), obj)


def test_app_datums_and_file_datums(tmp_path, monkeypatch):
    monkeypatch.setenv("FLARE_DATUM_DIR", str(tmp_path / "datums"))
    src = tmp_path / "weights.bin"
    src.write_bytes(b"w" * 5000)
    obj = {"file": fobs.Datum.file_datum(str(src)), "blob": fobs.Datum.blob_datum(b"b" * 10)}
    back = fobs.loads(fobs.dumps(obj))
    assert back["file"].datum_type is fobs.DatumType.FILE
    with open(back["file"].value, "rb") as f:
        assert f.read() == b"w" * 5000
    assert back["blob"].datum_type is fobs.DatumType.BLOB and back["blob"].value == b"b" * 10


def test_threshold_limits_and_unserializable_objects():
    with pytest.raises(ValueError):
        fobs.dumps(1, max_value_size=10)
    with pytest.raises(SerializationError):
        fobs.dumps(lambda: 0)
    with pytest.raises(SerializationError):
        fobs.dumps(2**64)
    with pytest.raises(SerializationError, match="pickle"):
        fobs.dumps(np.array([object()]))
    with pytest.raises(TypeError):
        fobs.loads("not bytes")


def test_fl_model_round_trip():
    from flare.app_common.abstract.fl_model import FLModel, ParamsType

    model = FLModel(params={"w": np.ones((300, 10))}, metrics={"acc": 0.5}, current_round=2, meta={"k": (1,)})
    back = round_trip(model, max_value_size=1024)
    assert back.params_type is ParamsType.FULL and same(back.params, model.params)
    assert (back.metrics, back.start_round, back.current_round, back.total_rounds, back.meta) == (
        {"acc": 0.5}, 0, 2, None, {"k": (1,)})
    with pytest.raises(ValueError):
        FLModel(params_type="DIFF")


class Flags(dict):
    pass


def test_objects_built_on_c_types_are_not_sent_as_empty_shells():
    for obj in (Flags(a=1), ValueError("x"), np.ma.masked_array([1, 2])):
        with pytest.raises(SerializationError, match="register"):
            fobs.dumps(obj)
    fobs.register(fobs.DictDecomposer(Flags))
    back = round_trip(Flags(a=1))
    assert type(back) is Flags and back == {"a": 1}
