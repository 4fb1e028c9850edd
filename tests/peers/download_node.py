"""A download receiver in a process of its own, for the multi-process download tests.

Connects to ``--parent`` as ``--fqcn``, pulls ``--ref-id`` from ``--owner`` and prints JSON lines:
``{"event": "ready"}`` once connected, ``{"event": "started"}`` at the first piece, then either
``{"event": "done", "sha256", "size", "elapsed", "retries"}`` or ``{"event": "failed", "error", "kind", "elapsed"}``.

- ``--to-file DIR``: pulled into a file in DIR (hashed, then removed), reporting the retries it took;
- otherwise the reference is read piece by piece (``open_download``), hashed and dropped; ``--piece-delay S``
  sleeps after each piece (a slow consumer);
- ``--abort-after S``: triggers the download's abort signal S seconds after the start;
- ``--setting NAME=VALUE``: a transport setting of this cell (repeatable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time

from flare.apis.signal import Signal
from flare.cellnet import Cell
from flare.config import CommSettings
from flare.streaming import open_download
from flare.streaming.download import pull


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def parse_setting(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    return name, float(value) if "." in value else int(value)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fqcn", required=True)
    ap.add_argument("--parent", required=True)
    ap.add_argument("--owner", default="server")
    ap.add_argument("--ref-id", required=True)
    ap.add_argument("--to-file")
    ap.add_argument("--piece-delay", type=float, default=0.0)
    ap.add_argument("--abort-after", type=float)
    ap.add_argument("--setting", action="append", default=[])
    args = ap.parse_args()

    settings = CommSettings.from_env(**dict(parse_setting(s) for s in args.setting))
    cell = Cell(args.fqcn, parent_url=args.parent, settings=settings).start()
    if not cell.wait_for_peer(args.owner, 10):
        emit("failed", error=f"{args.owner} not reachable", kind="setup", elapsed=0.0)
        return 1
    emit("ready")
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()

    abort = Signal()
    if args.abort_after is not None:
        threading.Timer(args.abort_after, abort.trigger).start()
    started = time.monotonic()
    digest = hashlib.sha256()
    size = 0
    retries = None
    try:
        if args.to_file:
            emit("started")
            path = os.path.join(args.to_file, args.fqcn)
            _, _, stats = pull(args.owner, args.ref_id, None, cell, path=path, abort_signal=abort)
            retries = stats["retries"]
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    size += len(block)
            os.remove(path)
        else:
            reader = open_download(args.owner, args.ref_id, cell=cell, abort_signal=abort, capacity=1)
            for piece in reader:
                if size == 0:
                    emit("started")
                digest.update(piece)
                size += len(piece)
                time.sleep(args.piece_delay)
    except Exception as e:  # reported to the test, which asserts on the class and text
        emit("failed", error=str(e), kind=type(e).__name__, elapsed=time.monotonic() - started)
    else:
        emit("done", sha256=digest.hexdigest(), size=size, elapsed=time.monotonic() - started, retries=retries)
    sys.stdin.read()
    cell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
