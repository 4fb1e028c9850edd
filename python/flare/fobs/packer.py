"""The msgpack body: objects wrapped as NVFlare does, with the allowlist applied as it is read."""

from __future__ import annotations

from typing import Any

import msgpack

from flare.errors import SerializationError
from flare.fobs.datum import DatumManager
from flare.fobs.names import FOBS_DATA, FOBS_DECOMPOSER, FOBS_TYPE, quoted
from flare.fobs.registry import REGISTRY


def encode_body(obj: Any, manager: DatumManager) -> bytes:
    """``obj`` as a msgpack body; its large values become datums of ``manager``."""

    def wrap(target: Any) -> dict:
        entry = REGISTRY.for_dump(target)
        data = manager.externalize(entry.decomposer.decompose(target, manager))
        return {FOBS_TYPE: entry.type_name, FOBS_DATA: data, FOBS_DECOMPOSER: entry.decomposer_name}

    try:
        # strict_types: tuples, sets, dict and list subclasses and numpy scalars all reach wrap(), as in NVFlare
        return msgpack.packb(manager.externalize(obj), default=wrap, strict_types=True, use_bin_type=True)
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"cannot serialize {type(obj).__name__}: {type(e).__name__}: {e}") from None


def _refuse_ext(code: int, data: bytes) -> Any:
    raise SerializationError(f"msgpack extension type {code} is not part of FOBS")


def decode_body(body: Any, manager: DatumManager) -> Any:
    """The object in a msgpack body. Every wrapped object's type name passes the allowlist before anything is
    looked up for it; maps are rebuilt innermost first, so a refused name deep inside stops the load at once."""

    def unwrap(obj: dict) -> Any:
        if FOBS_TYPE not in obj:
            return obj
        type_name = obj[FOBS_TYPE]
        decomposer = REGISTRY.for_load(type_name, obj.get(FOBS_DECOMPOSER))
        if FOBS_DATA not in obj:
            raise SerializationError(f"wrapped {quoted(type_name)} has no {FOBS_DATA}")
        data = obj[FOBS_DATA]
        if manager.has_pending():
            data = manager.internalize(data, decomposer.accepts_buffers)
        try:
            return decomposer.recompose(data, manager)
        except SerializationError:
            raise
        except Exception as e:
            raise SerializationError(f"cannot rebuild {quoted(type_name)}: {type(e).__name__}: {e}") from None

    try:
        result = msgpack.unpackb(body, strict_map_key=False, object_hook=unwrap, ext_hook=_refuse_ext, raw=False)
        result = manager.internalize(result)
    except SerializationError:
        raise
    except Exception as e:
        raise SerializationError(f"invalid FOBS body: {type(e).__name__}: {e}") from None
    manager.check_all_resolved()
    return result
