"""A flare cell in a process of its own, remote-controlled through the cell network itself.

Started by the multi-process tests. Prints one JSON line ``{"event": "ready", ...}`` once it listens/connects, then
serves requests on channel ``test`` until its stdin closes:

- ``echo``: replies with the payload reversed and header ``answered_by``;
- ``ask``: JSON ``{"target", "topic", "payload", "timeout"}``: sends that request itself and replies with the
  outcome as JSON (how the tests make one leaf talk to another);
- ``broadcast``: JSON ``{"targets", "timeout"}``: broadcasts ``echo`` and replies with each target's return code;
- ``reachable``: replies with the cells this one can reach and the peer events it saw;
- ``hold_gil``: JSON ``{"seconds"}``: holds the GIL for that long in one C call (a training step that never
  releases it), then replies;
- ``send_blob``: JSON ``{"target", "size"}``: streams that many random bytes to the target's ``test/blob`` and
  replies with their sha256, or the error;
- ``blobs``: replies with the blobs received so far (origin, size, sha256).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import threading
import time

from flare.cellnet import Cell, Message, ReturnCode
from flare.config import CommSettings


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fqcn", required=True)
    ap.add_argument("--listen")
    ap.add_argument("--parent")
    ap.add_argument("--heartbeat-interval", type=float, default=0.5)
    ap.add_argument("--heartbeat-timeout", type=float, default=2.0)
    ap.add_argument("--ack-progress-timeout", type=float, default=60.0)
    ap.add_argument("--close-stalled", action="store_true")
    args = ap.parse_args()

    settings = CommSettings.from_env(
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        reconnect_initial_backoff=0.2,
        reconnect_max_backoff=1.0,
        streaming_ack_progress_timeout=args.ack_progress_timeout,
        sfm_close_stalled_connection=args.close_stalled,
    )
    cell = Cell(args.fqcn, listen=args.listen, parent_url=args.parent, settings=settings)
    events: list[list] = []
    cell.on_peer_event(lambda kind, name, reason: events.append([kind, name, reason, time.time()]))

    def echo(req: Message):
        return Message({"answered_by": cell.fqcn}, bytes(req.payload)[::-1])

    def ask(req: Message):
        order = json.loads(bytes(req.payload))
        started = time.monotonic()
        payload = os.urandom(order["size"]) if "size" in order else order.get("payload", "").encode()
        reply = cell.request(
            order["target"], "test", order.get("topic", "echo"), payload, timeout=order.get("timeout", 5.0),
        )
        if "size" in order:
            return json.dumps({
                "rc": str(reply.headers.get("cn__return_code")), "error": reply.error, "size": len(reply.payload),
                "sha256": hashlib.sha256(reply.payload).hexdigest(),
                "expected": hashlib.sha256(payload[::-1]).hexdigest(),
            }).encode()
        return json.dumps({
            "rc": reply.return_code.value if isinstance(reply.return_code, ReturnCode) else reply.return_code,
            "error": reply.error,
            "payload": bytes(reply.payload).decode(errors="replace"),
            "answered_by": reply.get_header("answered_by"),
            "elapsed": time.monotonic() - started,
        }).encode()

    def broadcast(req: Message):
        order = json.loads(bytes(req.payload))
        replies = cell.broadcast(order["targets"], "test", "echo", b"ping", timeout=order.get("timeout", 5.0))
        return json.dumps({t: [str(m.headers.get("cn__return_code")), m.error] for t, m in replies.items()}).encode()

    def reachable(_req: Message):
        return json.dumps({"reachable": cell.reachable(), "peers": cell.peers(), "events": events}).encode()

    def hold_gil(req: Message):
        seconds = json.loads(bytes(req.payload))["seconds"]
        # PyDLL calls keep the GIL for the whole call, unlike CDLL: nothing else in this process runs Python code.
        libc = ctypes.PyDLL(None)
        libc.usleep(ctypes.c_uint(int(seconds * 1_000_000)))
        return b"held"

    blobs: list[dict] = []
    cell.register_blob_cb("test", "blob", lambda m: blobs.append(
        {"origin": m.origin, "size": len(m.payload), "sha256": hashlib.sha256(m.payload).hexdigest()}))

    def send_blob(req: Message):
        order = json.loads(bytes(req.payload))
        data = os.urandom(order["size"])
        started = time.monotonic()
        try:
            cell.send_blob(order["target"], "test", "blob", data)
            error = None
        except Exception as e:  # reported to the test, which asserts on the class and text
            error = f"{type(e).__name__}: {e}"
        return json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "error": error,
                           "elapsed": time.monotonic() - started}).encode()

    def received(_req: Message):
        return json.dumps(blobs).encode()

    for topic, cb in [("send_blob", send_blob), ("blobs", received), ("echo", echo), ("ask", ask), ("broadcast", broadcast), ("reachable", reachable),
                      ("hold_gil", hold_gil)]:
        cell.register_request_cb("test", topic, cb)
    cell.start()
    print(json.dumps({"event": "ready", "fqcn": cell.fqcn, "url": cell.url, "pid": os.getpid()}), flush=True)

    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    cell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
