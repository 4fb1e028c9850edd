"""Kinds of streaming between two processes: a big file (``FileStreamer``) next to a raw TCP file copy, a container
of large items (``ContainerStreamer`` with ``on_item``), and NVFlare's comparison of a regular message, container
streaming and file streaming for the same 1 GiB of model bytes.

    .venv/bin/python benches/bench_stream_kinds.py [--file-gib 4] [--model-mib 1024] [--items 16] [--json out.json]

Cases (each on a fresh process pair: a receiver cell listening, a sender cell connecting to it as its parent):

* **file**: one ``--file-gib`` file (default 4 GiB, written once into a temporary directory under the system temp
  dir) pushed with ``FileStreamer(cell).send``; the receiver's ``FileStreamer.register_receiver`` writes it into a
  directory of its own and calls ``on_file`` when it is complete. Reference: a raw TCP copy of the same file between
  two Python processes (``os.sendfile`` from the file on one side; ``recv_into`` a 1 MiB buffer and ``os.write`` to a
  file on the other, then a 1-byte answer), run before and after flare. Neither side fsyncs. Page cache is flushed (``sync``) before every run.
* **container**: a dict of ``--items`` bytes items of ``--model-mib / --items`` MiB each (default 16 x 64 MiB = 1 GiB),
  allocated by the sender before its baseline, pushed with ``ContainerStreamer(cell).send``; the receiver's ``on_item``
  takes each item's length and drops it.
* **regular**: ``Cell.request`` with the whole ``--model-mib`` payload to a request handler (above ``stream_threshold``
  it travels as a stream and arrives as one buffer), which answers 2 bytes.
* **file (model)**: ``FileStreamer`` of a ``--model-mib`` file.

Timing: from the sender's call until the receiver has everything (its callback's ``time.monotonic()`` stamp), or
until the sender's call returns if that is later. Memory: each process's peak RSS above its own baseline
(``harness.PeakMemory``: VmHWM at the end minus VmRSS just before the transfer).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import MIB, Peers, print_sections

CHANNEL = "bench"
RECEIVER = "server"
SENDER = "site-1"
GIB = 1 << 30
CHUNK = MIB

log = harness.bench_logger("bench_stream_kinds")


# --------------------------------------------------------------------------------------------------------------------
# flare peers


def run_receiver(args: argparse.Namespace) -> None:
    from flare.cellnet import Cell, Message
    from flare.streaming import ContainerStreamer, FileStreamer

    got: list[dict[str, Any]] = []  # one entry per file / item / request, stamped on arrival
    arrived = threading.Condition()

    def record(**entry: Any) -> None:
        entry["t"] = time.monotonic()
        with arrived:
            got.append(entry)
            arrived.notify_all()

    cell = Cell(RECEIVER, listen="tcp://127.0.0.1:0").start()
    cell.register_request_cb(CHANNEL, "echo", lambda request: request.payload)
    if args.case == "file":
        FileStreamer(cell).register_receiver(
            CHANNEL, "file", args.dest, on_file=lambda path, headers: record(nbytes=path.stat().st_size, path=str(path))
        )
    elif args.case == "container":

        def on_item(key: Any, value: Any, msg: Message) -> None:
            record(key=key, nbytes=len(value))  # consumed; the buffer is dropped when this returns

        ContainerStreamer(cell).register_receiver(CHANNEL, "container", on_item=on_item)
    else:  # regular

        def on_request(request: Message) -> bytes:
            record(nbytes=len(request.payload))
            return b"ok"

        cell.register_request_cb(CHANNEL, "model", on_request)
    mem = harness.PeakMemory()
    harness.emit("ready", url=cell.url)

    def collect(expect: int, wait_s: float) -> dict[str, Any]:
        with arrived:
            arrived.wait_for(lambda: len(got) >= expect, timeout=wait_s)
        return {"memory": mem.report(), "got": list(got)}

    def stop() -> dict[str, Any]:
        cell.close()
        return {}

    harness.serve_commands({"baseline": mem.baseline, "collect": collect, "stop": stop}, idle_timeout=10 * args.timeout)


def run_sender(args: argparse.Namespace) -> None:
    from flare.streaming import ContainerStreamer, FileStreamer

    cell = harness.join_cell(SENDER, args.url, RECEIVER, args.timeout)
    container = payload = None
    if args.case == "container":  # allocated and touched before the baseline: the application already holds it
        container = {f"layer{i:02d}": harness.pattern_bytes(args.nbytes // args.items) for i in range(args.items)}
    elif args.case == "regular":
        payload = harness.pattern_bytes(args.nbytes)
    for _ in range(3):  # warm-up: connection, handlers, callback pool
        cell.request(RECEIVER, CHANNEL, "echo", b"x" * 16, timeout=args.timeout).raise_for_status()
    harness.emit("ready")
    if harness.read_command(timeout=args.timeout) is None:
        return
    mem = harness.PeakMemory()
    mem.baseline()
    t0 = time.monotonic()
    if args.case == "file":
        FileStreamer(cell).send(RECEIVER, CHANNEL, "file", args.path).raise_for_errors()
    elif args.case == "container":
        ContainerStreamer(cell).send(RECEIVER, CHANNEL, "container", container).raise_for_errors()
    else:
        reply = cell.request(RECEIVER, CHANNEL, "model", payload, timeout=args.timeout)
        reply.raise_for_status()
    t1 = time.monotonic()
    harness.emit("sent", t0=t0, t1=t1)
    harness.read_command(timeout=10 * args.timeout)  # "finish": stay connected until the receiver has it all
    report = mem.report()
    cell.close()
    harness.emit("result", memory=report)


def flare_pair(case: str, nbytes: int, expect: int, timeout: float, *, path: Path | None = None, dest: Path | None = None, items: int = 1) -> dict[str, Any]:
    common = ["--case", case, "--nbytes", nbytes, "--timeout", timeout, "--items", items]
    with Peers() as peers:
        receiver = peers.start("flare-receiver", "bench_stream_kinds.py", ["receiver", *common, *(["--dest", dest] if dest else [])])
        url = receiver.wait_ready(timeout)["url"]
        sender = peers.start("flare-sender", "bench_stream_kinds.py", ["sender", "--url", url, *common, *(["--path", path] if path else [])])
        sender.wait_ready(timeout)
        receiver.call("baseline", timeout)
        sender.send("go")
        sent = sender.wait_event("sent", timeout)
        rcv = receiver.call("collect", timeout + 5, expect=expect, wait_s=timeout)
        sender.send("finish")
        smem = sender.result(timeout)["memory"]
        receiver.result(timeout, stop=True)
    got = rcv["got"]
    total = sum(g["nbytes"] for g in got)
    if len(got) != expect or total != nbytes:
        raise RuntimeError(f"{case}: receiver got {len(got)} pieces, {total:,} bytes; expected {expect}, {nbytes:,}")
    end = max(sent["t1"], max(g["t"] for g in got))
    return {
        "seconds": end - sent["t0"],
        "call_s": sent["t1"] - sent["t0"],
        "sender_memory": smem,
        "receiver_memory": rcv["memory"],
        "paths": [g["path"] for g in got if "path" in g],
    }


# --------------------------------------------------------------------------------------------------------------------
# raw TCP file copy


def run_raw_recv(args: argparse.Namespace) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    buf = harness.touched_buffer(CHUNK)  # the one receive buffer, touched before the baseline
    harness.emit("ready", port=listener.getsockname()[1])
    listener.settimeout(args.timeout)
    conn, _ = listener.accept()
    conn.settimeout(args.timeout)
    mem = harness.PeakMemory()
    mem.baseline()
    view = memoryview(buf)
    fd = os.open(args.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    left = args.nbytes
    while left:
        n = conn.recv_into(view, min(CHUNK, left))
        if n == 0:
            raise SystemExit("sender closed early")
        off = 0
        while off < n:
            off += os.write(fd, view[off:n])
        left -= n
    os.close(fd)
    conn.sendall(b"k")
    harness.emit("result", memory=mem.report())


def run_raw_send(args: argparse.Namespace) -> None:
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    sock.settimeout(None)  # blocking: os.sendfile on it then never returns EAGAIN
    harness.emit("ready")
    if harness.read_command(timeout=args.timeout) is None:
        return
    mem = harness.PeakMemory()
    mem.baseline()
    t0 = time.monotonic()
    fd = os.open(args.path, os.O_RDONLY)
    size, off = os.fstat(fd).st_size, 0
    while off < size:
        n = os.sendfile(sock.fileno(), fd, off, size - off)
        if n == 0:
            raise SystemExit("sendfile made no progress")
        off += n
    os.close(fd)
    if sock.recv(1) != b"k":
        raise SystemExit("no answer from the receiver")
    t1 = time.monotonic()
    sock.close()
    harness.emit("result", seconds=t1 - t0, memory=mem.report())


def raw_pair(path: Path, dest: Path, nbytes: int, timeout: float) -> dict[str, Any]:
    common = ["--nbytes", nbytes, "--timeout", timeout]
    with Peers() as peers:
        rcv = peers.start("raw-recv", "bench_stream_kinds.py", ["raw-recv", "--dest", dest, *common])
        port = rcv.wait_ready(timeout)["port"]
        snd = peers.start("raw-send", "bench_stream_kinds.py", ["raw-send", "--port", port, "--path", path, *common])
        snd.wait_ready(timeout)
        snd.send("go")
        s = snd.result(timeout)
        r = rcv.result(timeout)
    return {"seconds": s["seconds"], "sender_memory": s["memory"], "receiver_memory": r["memory"], "paths": [str(dest)]}


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator


def write_file(path: Path, nbytes: int) -> None:
    block = harness.pattern_bytes(64 * MIB)
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, len(block))
            f.write(block if n == len(block) else block[:n])
            left -= n


def same_bytes(a: Path, b: str, nbytes: int) -> bool:
    """Spot check: sizes, and 64 KiB at the start, the middle and the end."""
    if os.path.getsize(b) != nbytes:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for off in (0, nbytes // 2, max(0, nbytes - 65536)):
            if os.pread(fa.fileno(), 65536, off) != os.pread(fb.fileno(), 65536, off):
                return False
    return True


def settle(gap: float) -> None:
    os.sync()  # the previous run's dirty pages go to disk now, not during the next measurement
    time.sleep(gap)


def rss(r: dict[str, Any], side: str) -> float:
    return r[f"{side}_memory"]["peak_above_baseline_mib"]


HOW_TO_READ = """\
**How to read these.** Each case runs once on a fresh process pair (this is a 2-CPU VM with a noisy disk: times
move by tens of percent between runs, memory figures barely). RSS+ is each process's peak resident memory above its
own baseline taken just before the transfer; page cache used by the files is not part of it. The file cases read
and write real files in the system temp dir (page cache flushed before each run, no fsync at the end), so they are
bounded by the disk as much as by the transport; the raw TCP copy of the same file, measured in the same run, is the
ceiling for that machine. The last table follows the layout of NVFlare's own comparison of regular messages,
container streaming and file streaming (same 1 GiB of model bytes in each)."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "receiver", "sender", "raw-recv", "raw-send"])
    parser.add_argument("--file-gib", type=float, default=4.0, help="size of the big file (default 4)")
    parser.add_argument("--model-mib", type=int, default=1024, help="model bytes for the comparison (default 1024)")
    parser.add_argument("--items", type=int, default=16, help="container items (default 16)")
    parser.add_argument("--settle", type=float, default=1.0, help="pause after sync before every run, s (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit of every wait, seconds (default 120)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    # peer options
    parser.add_argument("--case", choices=["file", "container", "regular"])
    parser.add_argument("--url")
    parser.add_argument("--port", type=int)
    parser.add_argument("--nbytes", type=int)
    parser.add_argument("--path")
    parser.add_argument("--dest")
    args = parser.parse_args(argv)

    roles = {"receiver": run_receiver, "sender": run_sender, "raw-recv": run_raw_recv, "raw-send": run_raw_send}
    if args.role in roles:
        harness.peer_setup()
        return roles[args.role](args)

    started = time.perf_counter()
    big = int(args.file_gib * GIB)
    model = args.model_mib * MIB
    if model % args.items:
        raise SystemExit("--model-mib must split evenly into --items")
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="flare-bench-kinds-"))
    try:
        src, src_model = tmp / "big.bin", tmp / "model.bin"
        log(f"writing {big:,} B and {model:,} B source files under {tmp}")
        write_file(src, big)
        write_file(src_model, model)

        def file_run(kind: str, path: Path, nbytes: int) -> dict[str, Any]:
            dest = tmp / f"recv-{kind}"
            dest.mkdir()
            settle(args.settle)
            log(f"{kind}: {nbytes:,} B")
            if kind.startswith("raw"):
                r = raw_pair(path, dest / path.name, nbytes, args.timeout)
            else:
                r = flare_pair("file", nbytes, 1, args.timeout, path=path, dest=dest)
            if not r["paths"] or not same_bytes(path, r["paths"][0], nbytes):
                raise RuntimeError(f"{kind}: received file differs from the source")
            shutil.rmtree(dest)
            return r

        results["raw_big"] = file_run("raw", src, big)
        results["flare_big"] = file_run("flare", src, big)
        results["raw_big_after"] = file_run("raw", src, big)  # raw again: disk drift hits both alike
        src.unlink()  # frees its page cache before the in-memory cases
        settle(args.settle)
        log(f"container: {args.items} x {model // args.items:,} B")
        results["container"] = flare_pair("container", model, args.items, args.timeout, items=args.items)
        settle(args.settle)
        log(f"regular: request of {model:,} B")
        results["regular"] = flare_pair("regular", model, 1, args.timeout)
        results["file_model"] = file_run("flare-model", src_model, model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    raw, raw2, fl = results["raw_big"], results["raw_big_after"], results["flare_big"]
    best_raw = min(raw["seconds"], raw2["seconds"])
    size_gib = big / GIB
    goal = 128.0
    worst_file = max(rss(fl, "sender"), rss(fl, "receiver"))
    file_sec = {
        "title": f"One {size_gib:g} GiB file between two processes (`FileStreamer`) vs a raw TCP file copy",
        "headers": ["", "MiB/s", "s", "sender RSS+ MiB", "receiver RSS+ MiB"],
        "digits": [0, 0, 2, 1, 1],
        "rows": [
            ["raw TCP (`sendfile` → `recv_into` + `os.write`), before", harness.mib_per_s(big, raw["seconds"]), raw["seconds"], rss(raw, "sender"), rss(raw, "receiver")],
            ["flare `FileStreamer`", harness.mib_per_s(big, fl["seconds"]), fl["seconds"], rss(fl, "sender"), rss(fl, "receiver")],
            ["raw TCP, after", harness.mib_per_s(big, raw2["seconds"]), raw2["seconds"], rss(raw2, "sender"), rss(raw2, "receiver")],
        ],
        "notes": [
            f"{big:,} bytes, from a file in the system temp dir to a file in another directory there (checked by size "
            "and sampled bytes). flare: `FileStreamer(cell).send` returns once the last chunk is out "
            f"({fl['call_s']:.2f} s); the time runs until the receiver's `on_file`. Raw TCP: until the receiver "
            f"closed the file and answered. The raw copy runs before and after flare (the disk drifts); flare/raw throughput against the faster of the two: {best_raw / fl['seconds']:.2f}. Memory goal for flare: at most {goal:.0f} MiB above baseline on both sides "
            f"(worst {worst_file:,.1f}: " + ("met" if worst_file <= goal else "**not met**") + ")."
        ],
    }
    c = results["container"]
    item_mib = model / args.items / MIB
    cont_sec = {
        "title": f"A container of {args.items} × {item_mib:g} MiB items (`ContainerStreamer`, receiver `on_item`)",
        "headers": ["", "MiB/s", "s", "sender RSS+ MiB", "receiver RSS+ MiB"],
        "digits": [0, 0, 2, 1, 1],
        "rows": [["flare `ContainerStreamer`", harness.mib_per_s(model, c["seconds"]), c["seconds"], rss(c, "sender"), rss(c, "receiver")]],
        "notes": [
            f"A dict of {args.items} `bytes` values ({model / MIB:,.0f} MiB), allocated by the sender before its "
            "baseline; each item is its own stream, and the receiver's `on_item` takes the item's length and drops "
            f"it. Goal for the receiver: about one item plus the window ({item_mib:g}-{item_mib + 36:g} MiB): "
            + ("met" if rss(c, "receiver") <= item_mib + 36 else "**not met**")
            + f" ({rss(c, 'receiver'):,.1f})."
        ],
    }
    fm, rg = results["file_model"], results["regular"]
    cmp_rows = [
        [f"Regular message (`Cell.request`, {model / MIB:,.0f} MiB payload)", rss(rg, "sender"), rss(rg, "receiver"), rg["seconds"]],
        [f"Container streaming ({args.items} × {item_mib:g} MiB, `on_item`)", rss(c, "sender"), rss(c, "receiver"), c["seconds"]],
        [f"File streaming ({model / MIB:,.0f} MiB file)", rss(fm, "sender"), rss(fm, "receiver"), fm["seconds"]],
    ]
    cmp_sec = {
        "title": f"Regular message vs container vs file streaming ({model / MIB:,.0f} MiB of model bytes)",
        "headers": ["method", "sender peak memory above baseline, MiB", "receiver peak memory above baseline, MiB", "time, s"],
        "digits": [0, 1, 1, 2],
        "rows": cmp_rows,
        "notes": [
            "Laid out as NVFlare's table for its streaming APIs. Regular: one request whose handler gets the payload "
            "as one buffer (it travels as a stream above `stream_threshold`) and answers 2 bytes; time until the reply "
            "is back. Container: the case above. File: `FileStreamer` of a file of the same size, written to disk on "
            "the receiver. The sender's payload (regular, container) is allocated before its baseline, as an "
            "application's model already is."
        ],
    }
    secs = [file_sec, cont_sec, cmp_sec]
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_stream_kinds took {elapsed:.1f} s)")
    if args.json:
        for r in results.values():
            r.pop("paths", None)
        title = "Streaming kinds: files, containers and regular messages between two processes"
        harness.write_report(args.json, "bench_stream_kinds", title, elapsed, secs, results, how_to_read=HOW_TO_READ)


if __name__ == "__main__":
    main()
