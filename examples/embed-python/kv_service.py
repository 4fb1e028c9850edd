"""A tiny key-value service built on flare.cellnet alone.

    python examples/embed-python/kv_service.py

One cell serves ``put``/``get``/``keys`` on channel ``kv``; values are raw bytes and travel without copies. A client
cell stores a few values and reads them back. Run as is, it starts both and checks the answers.
"""

from __future__ import annotations

import sys
import threading

from flare.cellnet import Cell, Message, ReturnCode


class KeyValueService:
    """Keys ride in a header, values are the payload."""

    def __init__(self, cell: Cell):
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        cell.register_request_cb("kv", "put", self.put)
        cell.register_request_cb("kv", "get", self.get)
        cell.register_request_cb("kv", "keys", self.keys)

    def put(self, request: Message) -> Message:
        key = request.get_header("key")
        if not key:
            return Message.reply(ReturnCode.INVALID_REQUEST, "put needs a 'key' header")
        with self._lock:
            self._data[key] = bytes(request.payload)
        return Message.reply()

    def get(self, request: Message) -> Message:
        with self._lock:
            value = self._data.get(request.get_header("key"))
        if value is None:
            return Message.reply(ReturnCode.INVALID_REQUEST, f"no key {request.get_header('key')!r}")
        return Message.reply(payload=value)

    def keys(self, _request: Message) -> bytes:
        with self._lock:
            return "\n".join(sorted(self._data)).encode()


def main() -> int:
    with Cell("server", listen="tcp://127.0.0.1:0") as server:
        KeyValueService(server)
        with Cell("site-1", parent_url=server.url) as client:
            assert client.wait_for_peer("server", 10), "server not reachable"
            for key, value in {"alpha": b"1", "beta": b"\x00" * 1_000_000}.items():
                client.request("server", "kv", "put", value, headers={"key": key}).raise_for_status()
            keys = bytes(client.request("server", "kv", "keys").raise_for_status().payload).decode().split()
            beta = client.request("server", "kv", "get", headers={"key": "beta"}).raise_for_status()
            missing = client.request("server", "kv", "get", headers={"key": "gamma"})
            print(f"keys: {keys}; beta: {len(beta.payload)} bytes; gamma: {missing.return_code.value} ({missing.error})")
            ok = keys == ["alpha", "beta"] and len(beta.payload) == 1_000_000 and not missing.ok
    print("ok" if ok else "unexpected answers")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
