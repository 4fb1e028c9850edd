"""The LOBS layout around the msgpack body, as NVFlare writes it: a sequence of sections.

Each section starts with a 10-byte header, ``struct ">BBQ"``: marker, datum object type (dot), size. The first
section (marker 100) is the msgpack body. Each datum follows as its own section: marker 101 (UTF-8 text),
102 (bytes) or 103 (file contents), then 16 bytes of the datum's UUID, then the value; its size counts the UUID.

Sizes read from the input are checked against what the input holds before anything is allocated for them.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import uuid
from typing import IO, Any

from flare.errors import SerializationError
from flare.fobs.datum import Datum, DatumManager, DatumType
from flare.fobs.packer import decode_body, encode_body
from flare.fobs.registry import REGISTRY

HEADER = struct.Struct(">BBQ")
MARKER_MAIN = 100
MARKER_TEXT = 101
MARKER_BLOB = 102
MARKER_FILE = 103
DATUM_ID_LEN = 16

_MARKERS = {DatumType.TEXT: MARKER_TEXT, DatumType.BLOB: MARKER_BLOB, DatumType.FILE: MARKER_FILE}
_TYPES = {marker: datum_type for datum_type, marker in _MARKERS.items()}
_COPY_CHUNK = 16 * 1024 * 1024
_ALIGN = 64  # the alignment arrays are written with (see numpy_decomposers)


def datum_dir() -> str:
    """Where received FILE datums are written: ``FLARE_DATUM_DIR``, else NVFlare's ``NVFLARE_DATUM_DIR``, else
    ``flare/datums`` under the system's temporary directory."""
    path = os.environ.get("FLARE_DATUM_DIR") or os.environ.get("NVFLARE_DATUM_DIR")
    if not path:
        path = os.path.join(tempfile.gettempdir(), "flare", "datums")
    os.makedirs(path, exist_ok=True)
    return path


class _FilePart:
    """A file's contents, copied into the output only when written."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise SerializationError(f"file datum: {path} is not a file")
        self.path = path
        self.size = os.path.getsize(path)


def _nbytes(part: Any) -> int:
    if isinstance(part, memoryview):
        return part.nbytes
    if isinstance(part, _FilePart):
        return part.size
    return len(part)


def _value_parts(datum: Datum, offset: int) -> list[Any]:
    value = datum.value
    if datum.datum_type is DatumType.TEXT:
        return [value.encode("utf-8")]
    if datum.datum_type is DatumType.FILE:
        return [_FilePart(value)]
    parts = getattr(value, "parts", None)
    if parts is not None:
        return list(parts(offset))  # an array written from its own memory
    return [value]


def _sections(obj: Any, max_value_size: int | None, fobs_ctx: dict | None) -> list[Any]:
    manager = DatumManager(max_value_size, fobs_ctx)
    body = encode_body(obj, manager)
    seed = manager.run_post_cbs()
    if seed:
        # a post callback chose differently for part of the body (arrays too small to download): write it again
        manager = DatumManager(max_value_size, fobs_ctx)
        manager.state.update(seed)
        body = encode_body(obj, manager)
        if manager.run_post_cbs():
            raise SerializationError("the second pass over the body asked for a third")
    out: list[Any] = [HEADER.pack(MARKER_MAIN, 0, len(body)), body]
    offset = HEADER.size + len(body)
    for datum in manager.datums.values():
        if not isinstance(datum.dot, int) or not 0 <= datum.dot < 256:
            raise SerializationError(f"datum object type must be 0..255, got {datum.dot!r}")
        start = offset + HEADER.size + DATUM_ID_LEN
        parts = _value_parts(datum, start)
        size = sum(_nbytes(p) for p in parts)
        out.append(HEADER.pack(_MARKERS[datum.datum_type], datum.dot, DATUM_ID_LEN + size))
        out.append(uuid.UUID(datum.datum_id).bytes)
        out += parts
        offset = start + size
    return out


def _read_file(part: _FilePart) -> bytes:
    with open(part.path, "rb") as f:
        data = f.read()
    if len(data) != part.size:
        raise SerializationError(f"file datum: {part.path} changed while it was being sent")
    return data


def dumps(
    obj: Any, *, max_value_size: int | None = None, fobs_ctx: dict | None = None, buffer_list: bool = False
) -> Any:
    """Serializes ``obj``. Bytes-like and str values of at least ``max_value_size`` (10 MiB by default), and numpy
    arrays that large, go out of band as datums.

    With ``buffer_list``, returns the output as a list of bytes-like pieces instead of one ``bytes``: array data then
    stays where it is (the pieces are views of the arrays) until the caller writes it.
    """
    parts = [_read_file(p) if isinstance(p, _FilePart) else p for p in _sections(obj, max_value_size, fobs_ctx)]
    if buffer_list:
        return parts
    return b"".join(parts)  # sized once: the output is the only copy made


def dump(obj: Any, stream: IO[bytes], *, max_value_size: int | None = None, fobs_ctx: dict | None = None) -> None:
    """Serializes ``obj`` to a binary stream, piece by piece (no whole copy in memory)."""
    for part in _sections(obj, max_value_size, fobs_ctx):
        if isinstance(part, _FilePart):
            with open(part.path, "rb") as f:
                shutil.copyfileobj(f, stream, _COPY_CHUNK)
        else:
            stream.write(part)


def dumpf(obj: Any, path: str, **kwargs: Any) -> None:
    with open(path, "wb") as f:
        dump(obj, f, **kwargs)


# load side


def _parse(buf: memoryview) -> tuple[memoryview, list[tuple[int, int, str, memoryview]]]:
    """The body and the datum sections of an input held in memory, as views into it."""
    total = buf.nbytes
    if total < HEADER.size:
        raise SerializationError("FOBS input too short")
    marker, _dot, size = HEADER.unpack_from(buf, 0)
    if marker != MARKER_MAIN:
        raise SerializationError(f"FOBS input starts with marker {marker}, not {MARKER_MAIN}")
    pos = HEADER.size
    if size == 0 or size > total - pos:
        raise SerializationError(f"FOBS body of {size} bytes in an input of {total}")
    body = buf[pos : pos + size]
    pos += size
    datums = []
    while pos < total:
        if total - pos < HEADER.size:
            raise SerializationError("FOBS input ends inside a section header")
        marker, dot, size = HEADER.unpack_from(buf, pos)
        pos += HEADER.size
        if marker not in _TYPES:
            raise SerializationError(f"unknown FOBS section marker {marker}")
        if size < DATUM_ID_LEN or size > total - pos:
            raise SerializationError(f"datum section of {size} bytes where {total - pos} remain")
        datum_id = str(uuid.UUID(bytes=bytes(buf[pos : pos + DATUM_ID_LEN])))
        datums.append((marker, dot, datum_id, buf[pos + DATUM_ID_LEN : pos + size]))
        pos += size
    return body, datums


def _load(body: Any, sections: list[tuple[int, int, str, memoryview]], fobs_ctx: dict | None) -> Any:
    manager = DatumManager(fobs_ctx=fobs_ctx)
    for marker, dot, datum_id, value in sections:
        datum_type = _TYPES[marker]
        if datum_type is DatumType.TEXT:
            try:
                datum = Datum(datum_type, str(value, "utf-8"), dot)
            except UnicodeDecodeError:
                raise SerializationError("text datum is not UTF-8") from None
        elif datum_type is DatumType.BLOB:
            datum = Datum(datum_type, value, dot)
        else:
            path = os.path.join(datum_dir(), f"{datum_id}.dat")  # the name is a parsed UUID: no path tricks
            with open(path, "wb") as f:
                f.write(value)
            datum = Datum(datum_type, path, dot)
        datum.datum_id = datum_id
        manager.add_datum(datum)
    for datum in list(manager.datums.values()):
        if datum.dot:
            handler = REGISTRY.dot_handler(datum.dot)
            if handler is None:
                raise SerializationError(f"no decomposer handles datum object type {datum.dot}")
            handler.process_datum(datum, manager)
    return decode_body(body, manager)


def loads(data: Any, *, fobs_ctx: dict | None = None) -> Any:
    """Deserializes FOBS bytes.

    ``data`` is any bytes-like object. Arrays that came out of band are views into it, with no copy: writable when
    ``data`` is (bytearray, writable memoryview), read-only over ``bytes``; they keep ``data`` alive.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"loads needs a bytes-like object, got {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    body, sections = _parse(view)
    return _load(body, sections, fobs_ctx)


def _remaining(stream: IO[bytes]) -> int | None:
    try:
        if not stream.seekable():
            return None
        pos = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(pos)
        return end - pos
    except (AttributeError, OSError, ValueError):
        return None


def _read_block(stream: IO[bytes], size: int, what: str, pad: int = 0) -> memoryview:
    """Exactly ``size`` bytes, placed ``pad`` bytes into a new buffer (so that arrays keep the alignment they were
    written with); never allocates more than the stream turns out to hold, plus one chunk."""
    remaining = _remaining(stream)
    if remaining is not None:
        if size > remaining:
            raise SerializationError(f"{what} of {size} bytes where {remaining} remain")
        buf = bytearray(pad + size)
        view = memoryview(buf)[pad:]
        got = 0
        readinto = getattr(stream, "readinto", None)
        while got < size:
            if readinto is not None:
                n = readinto(view[got:])
            else:
                chunk = stream.read(size - got)
                n = len(chunk)
                view[got : got + n] = chunk
            if not n:
                raise SerializationError(f"{what} cut short")
            got += n
        return view
    buf = bytearray(pad)
    while len(buf) < pad + size:
        chunk = stream.read(min(pad + size - len(buf), _COPY_CHUNK))
        if not chunk:
            raise SerializationError(f"{what} cut short")
        buf += chunk
    return memoryview(buf)[pad:]


def load(stream: IO[bytes], *, fobs_ctx: dict | None = None) -> Any:
    """Deserializes from a binary stream. Each datum is read into a buffer of its own, and arrays are built over
    those buffers (writable, no second copy)."""
    head = stream.read(HEADER.size)
    if len(head) != HEADER.size:
        raise SerializationError("FOBS stream too short")
    marker, _dot, size = HEADER.unpack(head)
    if marker != MARKER_MAIN or size == 0:
        raise SerializationError(f"FOBS stream starts with marker {marker} and size {size}")
    body = _read_block(stream, size, "FOBS body")
    offset = HEADER.size + size
    sections = []
    while True:
        head = stream.read(HEADER.size)
        if not head:
            break
        if len(head) != HEADER.size:
            raise SerializationError("FOBS stream ends inside a section header")
        marker, dot, size = HEADER.unpack(head)
        if marker not in _TYPES or size < DATUM_ID_LEN:
            raise SerializationError(f"bad datum section: marker {marker}, size {size}")
        datum_id = str(uuid.UUID(bytes=bytes(_read_block(stream, DATUM_ID_LEN, "datum id"))))
        offset += HEADER.size + DATUM_ID_LEN
        value = _read_block(stream, size - DATUM_ID_LEN, "datum section", pad=offset % _ALIGN)
        offset += size - DATUM_ID_LEN
        sections.append((marker, dot, datum_id, value))
    return _load(body, sections, fobs_ctx)


def loadf(path: str, **kwargs: Any) -> Any:
    with open(path, "rb") as f:
        return load(f, **kwargs)
