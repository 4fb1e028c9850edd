"""The safetensors and ``.npz`` item codecs of ``flare.tensors``: every torch dtype safetensors knows round trips
byte-identical with the reference writer, decoding is a view over the input, strided and Fortran-ordered inputs
come back equal, and malformed items are refused with ``SerializationError``."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from flare.errors import SerializationError
from flare.tensors import npz
from flare.tensors import safetensors as st

torch = pytest.importorskip("torch")
reference = pytest.importorskip("safetensors.torch")

TORCH_DTYPES = [getattr(torch, d.torch) for d in st.DTYPES.values() if hasattr(torch, d.torch or "")]


def sample(dtype, shape=(3, 5)):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape) * 4).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, dtype=torch.int64).to(dtype)


def same(a, b) -> bool:
    # float8 kinds have no equality kernel: compare their bytes
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8)) \
        if a.element_size() == 1 and a.dtype.is_floating_point else a.dtype == b.dtype and torch.equal(a, b)


def address_range(buf) -> tuple[int, int]:
    view = np.frombuffer(buf, dtype=np.uint8)
    return view.ctypes.data, view.ctypes.data + view.nbytes


def test_the_table_covers_every_torch_dtype_safetensors_knows():
    names = {str(t).removeprefix("torch.") for t in reference._TYPES.values()}
    assert names <= {d.torch for d in st.DTYPES.values()}, names


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_torch_round_trip_is_byte_identical_with_the_reference(dtype):
    t = sample(dtype)
    ours = bytes(st.encode("model.layer1.weight", t))
    assert ours == reference.save({"model.layer1.weight": t})
    back = st.decode_torch(ours)["model.layer1.weight"]
    assert same(back, t)
    assert same(reference.load(ours)["model.layer1.weight"], t)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_decoded_tensor_lies_inside_the_received_buffer(dtype):
    buf = bytearray(st.encode("w", sample(dtype, (64, 33))))
    lo, hi = address_range(buf)
    back = st.decode_torch(buf)["w"]
    assert lo <= back.data_ptr() and back.data_ptr() + back.numel() * back.element_size() <= hi
    assert back.is_contiguous()


def test_strided_inputs_are_made_contiguous_by_the_one_copy():
    base = torch.arange(4 * 6 * 5, dtype=torch.float32).reshape(4, 6, 5)
    for t in (base.transpose(0, 2), base[:, ::2, 1:], base.permute(1, 0, 2), base[1:]):
        assert not t.is_contiguous() or t.storage_offset()
        back = st.decode_torch(st.encode("x", t))["x"]
        assert back.is_contiguous() and torch.equal(back, t)
    leaf = torch.ones(3, requires_grad=True)
    assert torch.equal(st.decode_torch(st.encode("g", leaf))["g"], torch.ones(3))


def test_empty_and_scalar_tensors():
    for t in (torch.zeros(0, 4), torch.tensor(3.5, dtype=torch.bfloat16), torch.zeros(2, 0, dtype=torch.int8)):
        data = bytes(st.encode("e", t))
        assert data == reference.save({"e": t})
        assert same(st.decode_torch(data)["e"], t)


def test_unknown_torch_dtypes_are_refused_when_added():
    for dtype in (torch.complex128, torch.float8_e8m0fnu):
        t = torch.zeros(2, dtype=dtype)
        with pytest.raises(SerializationError, match="no safetensors form"):
            st.encode("x", t)


NUMPY_DTYPES = [d.numpy for d in st.DTYPES.values() if d.numpy]


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_numpy_round_trip_agrees_with_torch(name):
    a = sample(getattr(torch, st._BY_NUMPY[name].torch), (4, 7)).numpy()
    data = st.encode("a", a)
    assert bytes(data) == reference.save({"a": torch.from_numpy(a)})
    back = st.decode_numpy(data)["a"]
    assert back.dtype == a.dtype and np.array_equal(back, a)
    lo, hi = address_range(data)
    assert lo <= back.ctypes.data < hi


def test_numpy_big_endian_fortran_and_strided_inputs():
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    for a in (base.astype(">f8"), np.asfortranarray(base), base[::2, 3:], base.T):
        back = st.decode_numpy(st.encode("a", a))["a"]
        assert back.flags.c_contiguous and np.array_equal(back, a)
    with pytest.raises(SerializationError, match="no safetensors form"):
        st.encode("s", np.array(["x"]))
    with pytest.raises(SerializationError, match="no safetensors form"):
        st.encode("o", np.array([object()]))


def test_bfloat16_does_not_decode_to_numpy():
    with pytest.raises(SerializationError, match="numpy has no type"):
        st.decode_numpy(st.encode("b", torch.zeros(2, dtype=torch.bfloat16)))


def item(doc, data=b"", n=None) -> bytes:
    text = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    return struct.pack("<Q", len(text) if n is None else n) + text + data


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x01\x02", "too short"),
        (item(b"{}", n=1 << 40), "does not fit"),
        (item(b"{}", n=100), "does not fit"),
        (item(b"[1]"), "not a JSON object"),
        (item(b'{"a": '), "unreadable"),
        (item(b'{"a": NaN}'), "unreadable"),
        (item(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": 1}', b"\0" * 4), "unreadable"),
        (item({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
        (item({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "needs 8 bytes"),
        (item({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "needs 4 bytes"),
        (item({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 4), "does not start"),
        (item({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12), "cover 4 of 12"),
        (item({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "bad shape"),
        (item({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4), "bad shape"),
        (item({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4), "bad data_offsets"),
        (item({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "exactly dtype"),
        (item({"a": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 4]}}, b"\0" * 4), "needs"),
        (item({"__metadata__": {"k": 1}}), "__metadata__"),
    ],
)
def test_malformed_safetensors_are_refused(data, message):
    for decode in (st.decode_torch, st.decode_numpy):
        with pytest.raises(SerializationError, match=message):
            decode(data)


def test_every_cut_of_an_item_is_refused():
    data = bytes(st.encode("w", torch.randn(5, 3)))
    for cut in range(len(data)):
        with pytest.raises(SerializationError):
            st.decode_torch(data[:cut])


def test_metadata_from_other_writers_is_accepted():
    t = torch.arange(6, dtype=torch.int16)
    data = reference.save({"w": t, "b": torch.ones(2)}, metadata={"format": "pt"})
    got = st.decode_torch(data)
    assert torch.equal(got["w"], t) and torch.equal(got["b"], torch.ones(2))


def savez(**arrays) -> bytes:
    out = io.BytesIO()
    np.savez(out, allow_pickle=False, **arrays)
    return out.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(40, dtype=">i4")[::3],
        np.zeros((0, 5), dtype=np.int16),
        np.array(7, dtype=np.uint64),
        np.array([True, False]),
        np.arange(6, dtype=np.complex128),
    ],
    ids=["f32", "fortran", "big-endian-strided", "empty", "scalar", "bool", "complex128"],
)
def test_npz_items_load_in_numpy_and_numpy_items_load_here(array):
    ours = npz.encode("layer.w", array)
    with np.load(io.BytesIO(bytes(ours)), allow_pickle=False) as z:
        assert z.files == ["layer.w"] and np.array_equal(z["layer.w"], array)
    for data in (ours, savez(**{"layer.w": array})):
        back = npz.decode(data)["layer.w"]
        assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)


def test_npz_decode_is_a_view_and_data_is_aligned_in_the_item():
    data = npz.encode("w", np.random.rand(100, 30))
    lo, hi = address_range(data)
    back = npz.decode(data)["w"]
    assert lo <= back.ctypes.data < hi and (back.ctypes.data - lo) % 64 == 0


def test_npz_refuses_compressed_corrupt_and_object_members():
    packed = io.BytesIO()
    np.savez_compressed(packed, w=np.zeros(100))
    with pytest.raises(SerializationError, match="compressed"):
        npz.decode(packed.getvalue())
    data = bytearray(npz.encode("w", np.arange(100.0)))
    data[200] ^= 0xFF
    with pytest.raises(SerializationError, match="CRC"):
        npz.decode(data)
    with pytest.raises(SerializationError, match="object"):
        npz.encode("o", np.array([None, 1], dtype=object))
    good = bytes(npz.encode("w", np.arange(10.0)))
    for cut in range(0, len(good), 7):
        with pytest.raises(SerializationError):
            npz.decode(good[:cut])
