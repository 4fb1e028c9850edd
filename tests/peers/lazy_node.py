"""A cell process that loads its messages lazily, for the pass-through memory test.

Connects to ``--parent`` as ``--fqcn`` with ``fobs_ctx["lazy_download"]`` set, resets its peak RSS (VmHWM) once
connected and prints ``{"event": "ready", "pid": <pid>}``. Then, on channel ``lazy``:

- ``--forward-to NAME``: a request on topic ``forward`` is sent on as it was loaded (placeholders and all) to NAME on
  topic ``model``; the reply is NAME's, plus ``"lazy": true`` if the message arrived as placeholders;
- otherwise a request on topic ``model`` is read entry by entry with ``iter_resolved`` and answered with
  ``{"digests": {key: sha256}, "dtypes": {key: dtype}}``.

Stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from flare.cellnet import Cell, Message
from flare.fobs.lazy import has_lazy, iter_resolved


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fqcn", required=True)
    ap.add_argument("--parent", required=True)
    ap.add_argument("--forward-to")
    args = ap.parse_args()

    cell = Cell(args.fqcn, parent_url=args.parent).start()
    cell.fobs_ctx["lazy_download"] = True

    def forward(request: Message) -> dict:
        reply = cell.request(args.forward_to, "lazy", "model", request.payload, timeout=120).raise_for_status()
        return {**reply.payload, "lazy": has_lazy(request.payload)}

    def fold(request: Message) -> dict:
        digests, dtypes = {}, {}
        for key, value in iter_resolved(request.payload):
            digests[key] = hashlib.sha256(value).hexdigest()
            dtypes[key] = str(value.dtype)
        return {"digests": digests, "dtypes": dtypes}

    if args.forward_to:
        cell.register_request_cb("lazy", "forward", forward)
    else:
        cell.register_request_cb("lazy", "model", fold)
    if not cell.wait_for_peer("server", 10):
        emit("error", error="server not reachable")
        return 1
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to the current RSS: start-up peaks are not the test's business
    emit("ready", pid=os.getpid())
    sys.stdin.read()
    cell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
