"""Objects and containers, serialized with FOBS and streamed.

FOBS checks every type name read from the wire against its allowlist before anything is looked up, so receiving
cannot run code; numpy arrays arrive as views over the received buffer. Bytes-like values travel as they are.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from flare import fobs
from flare.cellnet import Cell, Message
from flare.errors import SerializationError
from flare.streaming.blob import StreamResult, push_each
from flare.streaming.keys import Streamer

log = logging.getLogger(__name__)

_RAW = "raw"
_FOBS = "fobs"


def encode(value: Any) -> tuple[Any, str]:
    """Bytes-like values travel as they are (no copy); anything else as FOBS."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return value, _RAW
    return fobs.dumps(value), _FOBS


def decode(payload: Any, encoding: str | None) -> Any:
    if encoding == _RAW:
        return payload
    if encoding != _FOBS:
        raise SerializationError(f"unknown stream encoding {encoding!r}")
    return fobs.loads(payload)


class ObjectStreamer:
    """Pushes one object, serialized, as a stream."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def send(self, targets: str | Iterable[str], channel: str, topic: str, obj: Any) -> StreamResult:
        payload, encoding = encode(obj)
        headers = {Streamer.KEY_ENCODING: encoding}
        return push_each(targets, lambda t: self.cell.send_blob(t, channel, topic, payload, headers=headers))

    def register_receiver(self, channel: str, topic: str, on_object: Callable[[Any, Message], None]) -> None:
        """``on_object(obj, message)`` for each object received."""

        def received(m: Message) -> None:
            try:
                obj = decode(m.payload, m.get_header(Streamer.KEY_ENCODING, _FOBS))
            except SerializationError as e:
                log.warning("object from %s dropped: %s", m.origin, e)
                return
            on_object(obj, m)

        self.cell.register_blob_cb(channel, topic, received)


class ContainerStreamer:
    """Pushes a dict or list item by item: each item is its own stream, so peak memory on each side is the largest
    item plus the window, not the whole container (the receiver may take items one by one with ``on_item``)."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def send(self, targets: str | Iterable[str], channel: str, topic: str, container: dict | list) -> StreamResult:
        if isinstance(container, dict):
            kind, items = "dict", list(container.items())
        elif isinstance(container, (list, tuple)):
            kind, items = "list", list(enumerate(container))
        else:
            raise SerializationError(f"ContainerStreamer streams a dict or a list, not a {type(container).__name__}")

        def send_all(target: str) -> None:
            cid = uuid.uuid4().hex
            for index, (key, value) in enumerate(items):
                payload, encoding = encode(value)
                headers = {Streamer.KEY_CONTAINER_ID: cid, Streamer.KEY_CONTAINER_KIND: kind,
                           Streamer.KEY_ITEM_KEY: key, Streamer.KEY_ITEM_INDEX: index,
                           Streamer.KEY_ITEM_COUNT: len(items), Streamer.KEY_ENCODING: encoding}
                self.cell.send_blob(target, channel, topic, payload, headers=headers)
            if not items:
                headers = {Streamer.KEY_CONTAINER_ID: cid, Streamer.KEY_CONTAINER_KIND: kind,
                           Streamer.KEY_ITEM_COUNT: 0, Streamer.KEY_EOF: True}
                self.cell.send_blob(target, channel, topic, b"", headers=headers)

        return push_each(targets, send_all)

    def register_receiver(
        self,
        channel: str,
        topic: str,
        *,
        on_item: Callable[[Any, Any, Message], None] | None = None,
        on_container: Callable[[dict | list, str], None] | None = None,
    ) -> None:
        """``on_item(key, value, message)`` as each item arrives; without it, items are gathered and
        ``on_container(container, origin)`` runs once all have arrived."""
        pending: dict[str, dict] = {}
        lock = threading.Lock()  # items of one container may complete on different callback threads

        def received(m: Message) -> None:
            cid, count = m.get_header(Streamer.KEY_CONTAINER_ID), m.get_header(Streamer.KEY_ITEM_COUNT, 0)
            kind = m.get_header(Streamer.KEY_CONTAINER_KIND)
            key = m.get_header(Streamer.KEY_ITEM_KEY)
            # decoded once, for on_item and on_container alike
            value = decode(m.payload, m.get_header(Streamer.KEY_ENCODING)) if count else None
            if count and on_item is not None:
                on_item(key, value, m)
            if on_container is None:
                return
            with lock:
                items = pending.setdefault(cid, {})
                if count:
                    items[m.get_header(Streamer.KEY_ITEM_INDEX)] = (key, value)
                if len(items) != count:
                    return
                del pending[cid]
            ordered = [items[i] for i in range(count)]
            container = dict(ordered) if kind == "dict" else [v for _, v in ordered]
            on_container(container, m.origin)

        self.cell.register_blob_cb(channel, topic, received)
