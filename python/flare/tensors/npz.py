"""numpy arrays as ``.npz`` items: what NVFlare's numpy downloads carry (``np.savez(allow_pickle=False, key=array)``).

The writer lays out the same uncompressed ZIP as ``np.savez`` (a zip64 local header, the ``key.npy`` member, a central
directory), builds it in one buffer and copies the array into it once; the ``.npy`` header is padded so the data
starts 64-byte aligned within the item. The reader walks the central directory itself rather than through
``zipfile``, so that each array is a view over the received buffer, after a CRC check of its bytes. Compressed or
encrypted members, object arrays and anything that does not add up raise ``SerializationError``.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from flare.errors import SerializationError

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_END64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_SIG_LOCAL, _SIG_CENTRAL, _SIG_END, _SIG_END64, _SIG_LOCATOR = (
    0x04034B50, 0x02014B50, 0x06054B50, 0x06064B50, 0x07064B50,
)
# the values np.savez's writer (Python's zipfile) puts there: ZIP 4.5 from Unix, 1980-01-01, mode 0600
_VERSION, _MADE_BY, _DATE, _ATTR = 45, 0x032D, 0x21, 0o600 << 16
# zipfile switches the central directory to zip64 fields beyond 2 GiB; so do we, to write what it writes
_ZIP64_LIMIT = (1 << 31) - 1
_MAX32 = 0xFFFFFFFF


def encode(key: str, array: Any) -> bytearray:
    """The ``.npz`` bytes of ``{key: array}``, loadable by ``np.load``."""
    import numpy as np

    from flare.fobs.numpy_decomposers import _header, _header_text

    if not isinstance(array, np.ndarray):
        raise SerializationError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype.hasobject:
        raise SerializationError("numpy object arrays cannot be sent without pickle")
    name = (key + ".npy").encode("utf-8")
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
    extra_at = _LOCAL.size + len(name)
    npy_at = extra_at + 20
    npy_head = _header(_header_text(array, fortran), npy_at)
    data_at = npy_at + len(npy_head)
    size = len(npy_head) + array.nbytes
    central_at = npy_at + size
    big = size > _ZIP64_LIMIT
    central_extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
    central_len = _CENTRAL.size + len(name) + len(central_extra)
    zip64_end = central_at > _ZIP64_LIMIT
    total = central_at + central_len + (_END64.size + _LOCATOR.size if zip64_end else 0) + _END.size

    out = bytearray(total)
    view = memoryview(out)
    view[npy_at:data_at] = npy_head
    if array.nbytes:
        dest = np.frombuffer(out, dtype=array.dtype, count=array.size, offset=data_at)
        dest = dest.reshape(array.shape[::-1]).T if fortran else dest.reshape(array.shape)
        np.copyto(dest, array, casting="no")
    crc = zlib.crc32(view[npy_at:central_at])
    _LOCAL.pack_into(out, 0, _SIG_LOCAL, _VERSION, 0, 0, 0, _DATE, crc, _MAX32, _MAX32, len(name), 20)
    view[_LOCAL.size : extra_at] = name
    struct.pack_into("<HHQQ", out, extra_at, 1, 16, size, size)
    stored = _MAX32 if big else size
    _CENTRAL.pack_into(
        out, central_at, _SIG_CENTRAL, _MADE_BY, _VERSION, 0, 0, 0, _DATE, crc, stored, stored, len(name),
        len(central_extra), 0, 0, 0, _ATTR, 0,
    )
    at = central_at + _CENTRAL.size
    view[at : at + len(name)] = name
    view[at + len(name) : at + len(name) + len(central_extra)] = central_extra
    at = central_at + central_len
    if zip64_end:
        _END64.pack_into(out, at, _SIG_END64, 44, _VERSION, _VERSION, 0, 0, 1, 1, central_len, central_at)
        _LOCATOR.pack_into(out, at + _END64.size, _SIG_LOCATOR, 0, at, 1)
        at += _END64.size + _LOCATOR.size
    _END.pack_into(out, at, _SIG_END, 0, 0, 1, 1, central_len, min(central_at, _MAX32), 0)
    return out


def decode(buf: Any) -> dict[str, Any]:
    """The arrays of a ``.npz`` item, each a view over ``buf`` (read-only when ``buf`` is)."""
    import numpy as np

    from flare.fobs.numpy_decomposers import parse_npy

    view = memoryview(buf).cast("B")
    out: dict[str, Any] = {}
    for name, start, size, crc in _members(view):
        if not name.endswith(".npy"):
            raise SerializationError(f"npz: member {name!r} is not a .npy array")
        member = view[start : start + size]
        if zlib.crc32(member) != crc:
            raise SerializationError(f"npz: member {name!r} fails its CRC check")
        dtype, shape, fortran, offset = parse_npy(member)
        count = 1
        for n in shape:
            count *= n
        if count == 0:
            array = np.empty(shape, dtype, order="F" if fortran else "C")
        else:
            flat = np.frombuffer(buf, dtype=dtype, count=count, offset=start + offset)
            array = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        key = name[: -len(".npy")]
        if key in out:
            raise SerializationError(f"npz: member {name!r} appears twice")
        out[key] = array
    return out


def _members(view: memoryview) -> list[tuple[str, int, int, int]]:
    """(name, data offset, size, crc) of each member, from the central directory, bounds-checked."""
    total = view.nbytes
    # the end record is the last thing in the file, before a comment of at most 64 KiB
    tail = bytes(view[max(0, total - _END.size - 0xFFFF) :])
    at = tail.rfind(struct.pack("<I", _SIG_END))
    if at < 0 or len(tail) - at < _END.size:
        raise SerializationError("npz: no ZIP end record")
    end_at = total - len(tail) + at
    _, disk, cd_disk, _, count, cd_size, cd_at, _ = _END.unpack_from(view, end_at)
    if disk or cd_disk:
        raise SerializationError("npz: multi-disk archives are not supported")
    if cd_at == _MAX32 or count == 0xFFFF or cd_size == _MAX32:
        loc_at = end_at - _LOCATOR.size
        if loc_at < 0 or struct.unpack_from("<I", view, loc_at)[0] != _SIG_LOCATOR:
            raise SerializationError("npz: zip64 locator missing")
        end64_at = _LOCATOR.unpack_from(view, loc_at)[2]
        if end64_at + _END64.size > loc_at:
            raise SerializationError("npz: zip64 end record out of bounds")
        sig, _, _, _, _, _, _, count, cd_size, cd_at = _END64.unpack_from(view, end64_at)
        if sig != _SIG_END64:
            raise SerializationError("npz: bad zip64 end record")
    if cd_at + cd_size > end_at:
        raise SerializationError("npz: central directory out of bounds")
    members = []
    at = cd_at
    for _ in range(count):
        if at + _CENTRAL.size > cd_at + cd_size:
            raise SerializationError("npz: central directory cut short")
        (sig, _, _, flags, method, _, _, crc, csize, usize, n_name, n_extra, n_comment, _, _, _, local_at) = (
            _CENTRAL.unpack_from(view, at)
        )
        if sig != _SIG_CENTRAL:
            raise SerializationError("npz: bad central directory entry")
        name_at = at + _CENTRAL.size
        if name_at + n_name + n_extra > cd_at + cd_size:
            raise SerializationError("npz: central directory entry out of bounds")
        try:
            name = bytes(view[name_at : name_at + n_name]).decode("utf-8")
        except UnicodeDecodeError:
            raise SerializationError("npz: member name is not UTF-8") from None
        if flags & 1 or method != 0:
            raise SerializationError(f"npz: member {name!r} is encrypted or compressed; only stored members are read")
        csize, usize, local_at = _zip64(bytes(view[name_at + n_name : name_at + n_name + n_extra]), csize, usize,
                                        local_at)
        if csize != usize:
            raise SerializationError(f"npz: member {name!r} has inconsistent sizes")
        if local_at + _LOCAL.size > cd_at:
            raise SerializationError(f"npz: member {name!r} has its local header out of bounds")
        lsig, *_, l_name, l_extra = _LOCAL.unpack_from(view, local_at)
        if lsig != _SIG_LOCAL:
            raise SerializationError(f"npz: member {name!r} has a bad local header")
        start = local_at + _LOCAL.size + l_name + l_extra
        if start + csize > cd_at:
            raise SerializationError(f"npz: member {name!r} runs past its archive")
        members.append((name, start, csize, crc))
        at = name_at + n_name + n_extra + n_comment
    return members


def _zip64(extra: bytes, csize: int, usize: int, offset: int) -> tuple[int, int, int]:
    """Sizes and offset with the zip64 extra field's values where the 32-bit fields say to look there."""
    at = 0
    while at + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        if tag == 1:
            values = [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
            if usize == _MAX32:
                usize = values.pop(0) if values else -1
            if csize == _MAX32:
                csize = values.pop(0) if values else -1
            if offset == _MAX32:
                offset = values.pop(0) if values else -1
            if min(csize, usize, offset) < 0:
                raise SerializationError("npz: zip64 extra field too short")
        at += 4 + length
    return csize, usize, offset
