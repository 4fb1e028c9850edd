"""Streams (``Cell.send_blob``) between two processes, next to raw TCP loopback measured in the same run.

    .venv/bin/python benches/bench_streams.py [--size-mib 1024] [--reps 3] [--json out.json]
    .venv/bin/python benches/bench_streams.py --huge [--huge-gib 5]     # the 5 GiB case only; not in the default run

Cases (flare on fresh processes: a receiver cell listening, a sender cell connecting to it as its parent):

* **blob**: the sender streams one ``--size-mib`` payload with ``Cell.send_blob`` (chunks under the flow-control
  window); the receiver's blob handler gets it as one buffer and checks its CRC-32 after the timing. ``--reps``
  rounds; in each, every variant runs once on a fresh process pair, interleaved, rotating which goes first:
  raw TCP (``sendall`` into one preallocated, already-touched buffer, answered with one byte: the ceiling), raw TCP
  fresh-buffer (the same into a newly allocated buffer, as the blob receiver's is), flare (plus a second, "warm"
  blob on the same pair once the first is in), and, with ``--thp-diagnostic`` (default), flare with transparent huge
  pages disabled in the receiver. Each side reports its peak RSS above its own baseline (``harness.PeakMemory``);
  the sender's payload is allocated before its baseline.
* **round trips under load**: ``--rtt-n`` sequential 16-byte requests (echoed by the receiver's request handler)
  with nothing else on the connection, then requests sent back to back while ``--hol-blobs`` blobs stream over the
  same connection in the same direction (from a second thread of the sender). Only round trips that start and end
  inside a transfer count. Reference: two Python processes with two sockets, bulk on one and the ping-pongs on the
  other (no head-of-line blocking possible: what the loaded machine itself adds).
* **huge** (``--huge``, not part of the default run): one ``--huge-gib`` blob (default 5 GiB, above NVFlare's 4 GiB
  stream ceiling), with both raw TCP references; about 2 x the size in memory for each pair of processes.

Timing: MiB/s = payload MiB / the time from the ``send_blob`` call until the receiver's blob handler has the whole
blob (both processes stamp ``time.monotonic()``, CLOCK_MONOTONIC, one clock on one machine), or until ``send_blob``
returns if that is later (it returns once its last chunk is handed to the network, so usually a little before the
handler runs; the difference is reported). Raw TCP: ``sendall`` plus the receiver's 1-byte answer. Both end when the
receiver holds every byte. Every run starts after a ``--settle`` pause and once the machine is quiet (see
:class:`Settle`); CPU time that other processes took meanwhile is reported next to the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import harness
from harness import MIB, OtherLoad, Peers, print_sections

CHANNEL = "bench"
RECEIVER = "server"
SENDER = "site-1"
RTT_BYTES = 16
GIB = 1 << 30
TAIL_S = 1.0  # round trips timed after the last send_blob returned


log = harness.bench_logger("bench_streams")


# --------------------------------------------------------------------------------------------------------------------
# Peers


def run_receiver(args: argparse.Namespace) -> None:
    if args.no_thp:
        # PR_SET_THP_DISABLE: the transport's MADV_HUGEPAGE advice on receive buffers is then ignored (diagnostic)
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(41, 1, 0, 0, 0) != 0:
            raise SystemExit("prctl(PR_SET_THP_DISABLE) failed")
    from flare.cellnet import Cell, Message

    blobs: list[dict[str, Any]] = []
    arrived = threading.Condition()

    def on_blob(blob: Message) -> None:
        t = time.monotonic()  # CLOCK_MONOTONIC: comparable with the sender's stamps (same machine)
        n = len(blob.payload)
        crc = None
        if args.verify:
            view = memoryview(blob.payload)  # no copy: crc32 reads the received buffer in place
            crc = zlib.crc32(view)
            view.release()
        with arrived:
            blobs.append({"t": t, "nbytes": n, "crc": crc})
            arrived.notify_all()

    cell = Cell(RECEIVER, listen="tcp://127.0.0.1:0").start()
    cell.register_blob_cb(CHANNEL, "blob", on_blob)
    cell.register_request_cb(CHANNEL, "echo", lambda request: request.payload)
    mem = harness.PeakMemory()
    harness.emit("ready", url=cell.url)

    def collect(expect: int, wait_s: float) -> dict[str, Any]:
        with arrived:
            arrived.wait_for(lambda: len(blobs) >= expect, timeout=wait_s)
        report = mem.report()  # before close: the figure is about receiving, not tearing down
        return {"memory": report, "blobs": list(blobs)}

    def stop() -> dict[str, Any]:
        cell.close()
        return {}

    harness.serve_commands({"baseline": mem.baseline, "collect": collect, "stop": stop}, idle_timeout=10 * args.timeout)


def run_sender(args: argparse.Namespace) -> None:
    from flare.cellnet import ReturnCode

    cell = harness.join_cell(SENDER, args.url, RECEIVER, args.timeout)
    payload = harness.pattern_bytes(args.nbytes)  # allocated and touched before the baseline
    small = b"x" * RTT_BYTES
    for _ in range(200 if args.mode == "hol" else 3):  # warm-up: connection, handlers, callback pool
        cell.request(RECEIVER, CHANNEL, "echo", small, timeout=args.timeout).raise_for_status()
    harness.emit("ready")
    if harness.read_command(timeout=args.timeout) is None:
        return

    def rtt() -> tuple[float, float, str]:
        t0 = time.monotonic()
        reply = cell.request(RECEIVER, CHANNEL, "echo", small, timeout=args.timeout)
        t1 = time.monotonic()
        ok = "" if reply.return_code == ReturnCode.OK and len(reply.payload or b"") == RTT_BYTES else str(reply.error or reply.return_code)
        return t0, t1, ok

    def finish(**sent: Any) -> None:
        """Reports the timings, then stays connected until the orchestrator has heard from the receiver: chunks
        still queued when ``send_blob`` returns must not be cut off by closing the cell."""
        harness.emit("sent", **sent)
        harness.read_command(timeout=10 * args.timeout)  # "finish", or end of input
        report = mem.report()
        cell.close()
        harness.emit("result", memory=report)

    mem = harness.PeakMemory()
    if args.mode == "blob":
        mem.baseline()
        transfers = []
        for i in range(args.blobs):
            if i and harness.read_command(timeout=args.timeout) is None:  # "again": the previous one is in
                return
            t0 = time.monotonic()
            cell.send_blob(RECEIVER, CHANNEL, "blob", payload)
            transfers.append([t0, time.monotonic()])
            harness.emit("blob_sent")
        return finish(transfers=transfers, errors=[])

    # hol: idle round trips first, then round trips while blobs stream on the same connection
    idle = [rtt() for _ in range(args.rtt_n)]
    mem.baseline()
    transfers: list[list[float]] = []
    errors: list[str] = []

    def stream() -> None:
        try:
            for _ in range(args.blobs):
                t0 = time.monotonic()
                cell.send_blob(RECEIVER, CHANNEL, "blob", payload)
                transfers.append([t0, time.monotonic()])
        except Exception as e:  # reported, not raised: the orchestrator shows it
            errors.append(f"{type(e).__name__}: {e}")

    streamer = threading.Thread(target=stream, name="blob-sender")
    streamer.start()
    busy = []
    while streamer.is_alive():
        busy.append(rtt())
    # send_blob may return with its last chunks (up to a window plus the bulk lane) still queued: keep timing a
    # moment longer, so that the end of the last transfer is covered too (the receiver's stamps say when it ended)
    tail = time.monotonic() + TAIL_S
    while time.monotonic() < tail:
        busy.append(rtt())
    streamer.join()
    finish(idle=idle, busy=busy, transfers=transfers, errors=errors)


def _recv_exact(sock, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


def run_raw_hol_server(args: argparse.Namespace) -> None:
    """The raw TCP reference for round trips under load: two sockets between the same two processes, one carrying
    ``--nbytes`` messages (into one preallocated buffer, answered with 1 byte), the other 16-byte ping-pongs; a
    thread each. What the machine itself adds to a small round trip while a bulk transfer runs, with no head-of-line
    blocking at all (the small messages never share a socket with the bulk bytes)."""
    import socket

    # One preallocated, touched buffer (as "raw TCP" in the blob table): first touches of fresh memory on this VM
    # stall whole vCPUs at random, which is noise here, not the contention this reference is for.
    big = memoryview(harness.touched_buffer(args.nbytes))

    listener = socket.create_server(("127.0.0.1", 0))
    harness.emit("ready", port=listener.getsockname()[1])
    listener.settimeout(args.timeout)
    bulk, _ = listener.accept()
    ping, _ = listener.accept()
    for sock in (bulk, ping):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def serve_bulk() -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                _recv_exact(bulk, big)
                bulk.sendall(b"k")

    threading.Thread(target=serve_bulk, daemon=True).start()
    small = memoryview(bytearray(RTT_BYTES))
    with contextlib.suppress(ConnectionError, OSError):
        while True:
            _recv_exact(ping, small)
            ping.sendall(small)
    harness.emit("result")


def run_raw_hol_client(args: argparse.Namespace) -> None:
    import socket

    bulk = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    ping = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    for sock in (bulk, ping):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = harness.pattern_bytes(args.nbytes)
    small, back = b"x" * RTT_BYTES, memoryview(bytearray(RTT_BYTES))

    def rtt() -> tuple[float, float, str]:
        t0 = time.monotonic()
        ping.sendall(small)
        _recv_exact(ping, back)
        return t0, time.monotonic(), ""

    for _ in range(200):
        rtt()
    harness.emit("ready")
    if harness.read_command(timeout=args.timeout) is None:
        return
    idle = [rtt() for _ in range(args.rtt_n)]
    transfers: list[list[float]] = []

    def stream() -> None:
        ack = bytearray(1)
        for _ in range(args.blobs):
            t0 = time.monotonic()
            bulk.sendall(payload)
            _recv_exact(bulk, memoryview(ack))
            transfers.append([t0, time.monotonic()])

    streamer = threading.Thread(target=stream)
    streamer.start()
    busy = []
    while streamer.is_alive():
        busy.append(rtt())
    streamer.join()
    bulk.close()
    ping.close()
    harness.emit("result", idle=idle, busy=busy, transfers=transfers)


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator


@functools.lru_cache
def pattern_crc(nbytes: int) -> int:
    """CRC-32 of ``harness.pattern_bytes(nbytes)``, computed from one MiB at a time (the pattern repeats every 256
    bytes, so every whole MiB is the same), without holding the payload here."""
    block, crc = harness.pattern_bytes(MIB), 0
    for _ in range(nbytes // MIB):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(harness.pattern_bytes(nbytes % MIB), crc)


def flare_pair(
    mode: str, nbytes: int, timeout: float, *, blobs: int = 1, rtt_n: int = 0, no_thp: bool = False
) -> dict[str, Any]:
    """One case on a fresh receiver/sender process pair; returns the sender's result and the receiver's blobs and
    memory report."""
    common = ["--nbytes", nbytes, "--timeout", timeout]
    extra = (["--verify"] if mode == "blob" else []) + (["--no-thp"] if no_thp else [])
    with Peers() as peers:
        receiver = peers.start("flare-receiver", "bench_streams.py", ["receiver", *common, *extra])
        url = receiver.wait_ready(timeout)["url"]
        sender = peers.start(
            "flare-sender", "bench_streams.py", ["sender", "--url", url, "--mode", mode, "--blobs", blobs, "--rtt-n", rtt_n, *common]
        )
        sender.wait_ready(timeout)
        receiver.call("baseline", timeout)
        sender.send("go")
        if mode == "blob":  # one blob at a time: the next starts once the receiver's handler has the previous one
            for i in range(blobs):
                sender.wait_event("blob_sent", timeout)
                rcv = receiver.call("collect", timeout + 5, expect=i + 1, wait_s=timeout)
                if i == 0:
                    first_memory = rcv["memory"]  # the figure for the memory goal: one blob in the receiver
                if i + 1 < blobs:
                    sender.send("again")
        res = sender.wait_event("sent", timeout * (blobs + 1))
        if mode != "blob":
            rcv = receiver.call("collect", timeout * blobs + 5, expect=blobs, wait_s=timeout * blobs)
            first_memory = rcv["memory"]
        sender.send("finish")
        res["memory"] = sender.result(timeout)["memory"]
        receiver.result(timeout, stop=True)
    if res.get("errors"):
        raise RuntimeError("send_blob failed: " + "; ".join(res["errors"]))
    got = rcv["blobs"]
    if len(got) != blobs or any(b["nbytes"] != nbytes for b in got):
        raise RuntimeError(f"receiver got {[b['nbytes'] for b in got]}, expected {blobs} x {nbytes}")
    if mode == "blob" and any(b["crc"] != pattern_crc(nbytes) for b in got):
        raise RuntimeError("received blob differs from what was sent (CRC-32)")
    return {**res, "receiver_memory": first_memory, "received": got}


def _raw(nbytes: int, fresh: bool, timeout: float) -> dict[str, Any]:
    r = harness.raw_tcp(nbytes, 1, fresh=fresh, warmup=0, timeout=timeout)
    return {"seconds": r["seconds"][0], "sender_memory": r["client_memory"], "receiver_memory": r["server_memory"]}


def _flare_blob(nbytes: int, timeout: float, no_thp: bool = False, warm: bool = False) -> dict[str, Any]:
    """One blob on a fresh pair; with ``warm``, a second one on the same pair once the first is in, timed on its
    own: its receive buffer reuses the memory the first one just freed."""
    r = flare_pair("blob", nbytes, timeout, no_thp=no_thp, blobs=2 if warm else 1)
    # each lasts until the blob is in the receiver's handler (and send_blob has returned): what raw TCP's 1-byte
    # answer marks
    seconds = [max(t1, got["t"]) - t0 for (t0, t1), got in zip(r["transfers"], r["received"])]
    (t0, t1), delivered = r["transfers"][0], r["received"][0]["t"]
    return {
        "seconds": seconds[0],
        "warm_seconds": seconds[1] if warm else None,
        "send_blob_s": t1 - t0,
        "handler_lag_s": delivered - t1,
        "sender_memory": r["memory"],
        "receiver_memory": r["receiver_memory"],
    }


BLOB_VARIANTS = ("raw", "raw_fresh", "flare", "flare_nothp")


def run_blob(
    nbytes: int, reps: int, timeout: float, label: str, settle: Settle, variants: tuple[str, ...] = BLOB_VARIANTS
) -> dict[str, list[dict[str, Any]]]:
    """``reps`` rounds; in each, every variant runs once on fresh processes, rotating which goes first, so that
    drift of a noisy machine hits all alike."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for rnd in range(reps):
        k = rnd % len(variants)
        for which in variants[k:] + variants[:k]:
            settle.wait()
            log(f"{label} {rnd + 1}/{reps}: {which}, {nbytes:,} B")
            if which.startswith("flare"):
                r = _flare_blob(nbytes, timeout, no_thp=which == "flare_nothp", warm=which == "flare")
            else:
                r = _raw(nbytes, which == "raw_fresh", timeout)
            runs[which].append({**r, **settle.load.take()})
    return runs


class Settle:
    """Before each measured run: wait ``gap`` seconds, then for the machine to be quiet (:meth:`OtherLoad.wait_quiet`).

    Why the gap: this VM returns free memory to its host (virtio-balloon free page reporting, in 2 MiB blocks, about
    2 s after it is freed), and touching memory the host has taken back is several times slower than touching
    memory it still backs. A run right after another that freed a GiB would get warm memory, one after a pause cold
    memory; with the same pause before every run, every variant starts from the same (cold) state, which is also
    what a receiver sees that gets a blob now and then."""

    def __init__(self, gap: float, max_wait: float = 10.0, budget: float = 30.0):
        self.gap, self.max_wait, self.budget = gap, max_wait, budget
        self.load = OtherLoad()
        self.waited: list[float] = []  # beyond the gap, per run

    def wait(self) -> None:
        """The gap, then up to ``max_wait`` s for quiet, at most ``budget`` s of such waiting in all (past that, runs
        start anyway and their "others' CPU" figures tell)."""
        time.sleep(self.gap)
        waited = self.load.wait_quiet(max(0.0, min(self.max_wait, self.budget - sum(self.waited))))
        self.waited.append(waited)


def raw_hol_pair(nbytes: int, timeout: float, *, blobs: int, rtt_n: int) -> dict[str, Any]:
    common = ["--nbytes", nbytes, "--timeout", timeout]
    with Peers() as peers:
        server = peers.start("raw-hol-server", "bench_streams.py", ["raw-hol-server", *common])
        port = server.wait_ready(timeout)["port"]
        client = peers.start("raw-hol-client", "bench_streams.py", ["raw-hol-client", "--port", port, "--blobs", blobs, "--rtt-n", rtt_n, *common])
        client.wait_ready(timeout)
        client.send("go")
        res = client.result(timeout * (blobs + 1))
    return res


def _inside(busy: list, spans: list) -> list[float]:
    """Round-trip times of those that started and ended inside one of the transfer spans."""
    return [t1 - t0 for (t0, t1, _) in busy if any(s0 <= t0 and t1 <= s1 for s0, s1 in spans)]


def run_hol(nbytes: int, blobs: int, rtt_n: int, timeout: float, settle: Settle, *, no_thp: bool = False) -> dict[str, Any]:
    """Round trips idle and while blobs stream: raw TCP (bulk and pings on two sockets) and flare (one connection)."""
    out: dict[str, Any] = {"blobs": blobs, "nbytes": nbytes, "other_cpu_s": 0.0}
    for which in ("raw", "flare"):
        settle.wait()
        log(f"round trips, {which}: {rtt_n} idle, then during {blobs} x {nbytes:,} B")
        if which == "raw":
            r = raw_hol_pair(nbytes, timeout, blobs=blobs, rtt_n=rtt_n)
            spans = r["transfers"]
        else:
            r = flare_pair("hol", nbytes, timeout, blobs=blobs, rtt_n=rtt_n, no_thp=no_thp)
            failed = [ok for (_, _, ok) in r["idle"] + r["busy"] if ok]
            if failed:
                raise RuntimeError(f"{len(failed)} round trips failed, e.g. {failed[0]!r}")
            # a transfer lasts from its send_blob call until the receiver's handler has the blob (or send_blob
            # returned, if later)
            spans = [[t0, max(t1, got["t"])] for (t0, t1), got in zip(r["transfers"], r["received"])]
            out["sender_memory"], out["receiver_memory"] = r["memory"], r["receiver_memory"]
        inside = _inside(r["busy"], spans)
        out[which] = {
            "idle": harness.latency_summary([t1 - t0 for (t0, t1, _) in r["idle"]]),
            "busy": harness.latency_summary(inside) if inside else None,
            "busy_total": len(r["busy"]),
            "blob_mib_s": [harness.mib_per_s(nbytes, s1 - s0) for s0, s1 in spans],
        }
        out["other_cpu_s"] += settle.load.take()["other_cpu_s"]
    return out


# --------------------------------------------------------------------------------------------------------------------
# Tables


def _window_mib() -> tuple[float, float]:
    from flare.config import CommSettings

    s = CommSettings.from_env()
    return s.streaming_window_size / MIB, s.streaming_chunk_size / MIB


def _lag_text(lags_ms: list[float]) -> str:
    """When the handler ran relative to ``send_blob``'s return (negative: before it), as words."""

    def one(ms: float) -> str:
        return f"{abs(ms):.1f} ms {'before' if ms < 0 else 'after'}"

    lo, hi = min(lags_ms), max(lags_ms)
    return f"{one(lo)} to {one(hi)} `send_blob` returned" if hi - lo >= 0.05 else f"{one(lo)} `send_blob` returned"


def blob_section(runs: dict[str, list[dict[str, Any]]], nbytes: int, title: str, gap: float) -> dict[str, Any]:
    window, chunk = _window_mib()
    size = nbytes / MIB
    rate = {w: [harness.mib_per_s(nbytes, r["seconds"]) for r in runs[w]] for w in runs}
    med = {w: statistics.median(v) for w, v in rate.items()}
    rss = {side: [r[f"{side}_memory"]["peak_above_baseline_mib"] for r in runs["flare"]] for side in ("sender", "receiver")}
    nothp = "flare_nothp" in runs

    warm = [harness.mib_per_s(nbytes, r["warm_seconds"]) for r in runs["flare"] if r.get("warm_seconds")]
    has_warm = len(warm) == len(runs["flare"])

    def row(label: str, get) -> list[Any]:
        r = [label, get(rate["raw"]), get(rate["raw_fresh"]), get(rate["flare"])]
        r += [r[3] / r[1], r[3] / r[2]]
        if has_warm:
            r += [get(warm), get(warm) / r[1]]
        if nothp:
            r.append(get(rate["flare_nothp"]))
        return r

    rows = [row("median", statistics.median) + [statistics.median(rss["sender"]), statistics.median(rss["receiver"]), None]]
    for i in range(len(runs["flare"])):
        rows.append(
            row(f"repetition {i + 1}", lambda v, i=i: v[i])
            + [rss["sender"][i], rss["receiver"][i], sum(runs[w][i]["other_cpu_s"] for w in runs)]
        )
    recv_goal, send_goal = size + 2 * window, 2 * window
    worst_recv, worst_send = max(rss["receiver"]), max(rss["sender"])
    ratio = med["flare"] / med["raw"]
    lags = [r["handler_lag_s"] * 1e3 for r in runs["flare"]]
    reset = all(r[f"{s}_memory"]["hwm_reset"] for r in runs["flare"] for s in ("sender", "receiver"))
    raw_rss = max(r["receiver_memory"]["peak_above_baseline_mib"] for r in runs["raw_fresh"])

    def faults(w: str) -> str:
        return f"{statistics.mean(r['receiver_memory']['minor_faults'] for r in runs[w]):,.0f}"

    headers = ["", "raw TCP MiB/s", "raw TCP fresh-buffer MiB/s", "flare MiB/s", "flare/raw", "flare/raw fresh"]
    digits = [0, 0, 0, 0, 2, 2]
    if has_warm:
        headers += ["flare, warm receiver MiB/s", "warm/raw"]
        digits += [0, 2]
    if nothp:
        headers.append("flare, receiver without huge pages MiB/s")
        digits.append(0)
    headers += ["flare sender RSS+ MiB", "flare receiver RSS+ MiB", "others' CPU s"]
    digits += [1, 1, 2]
    notes = [
        f"{len(runs['flare'])} repetitions; in each, every column on a fresh process pair, interleaved, each run "
        f"after a {gap:g} s pause (see \"how to read\"). flare: `send_blob` of {size:,.0f} MiB in {chunk:g} MiB "
        f"chunks under a {window:g} MiB window, timed from the call until the receiver's blob handler has the whole "
        "blob (both processes stamp CLOCK_MONOTONIC) or `send_blob` returns, whichever is later; the handler "
        f"started {_lag_text(lags)}. Raw TCP: `sendall` of the same bytes, `recv_into` one preallocated, "
        "already-touched buffer, then a 1-byte answer; fresh-buffer: the same into a new buffer per message (4 KiB "
        "pages). The blob is checked by CRC-32 on the receiver after the timing. Goal flare/raw >= 0.80: "
        + ("**met**" if ratio >= 0.8 else f"**not met** ({ratio:.2f})")
        + ".",
        "RSS+ = the process's peak resident memory above its own baseline (VmHWM at the end - VmRSS right before "
        "the transfer; the sender's payload is allocated before its baseline)"
        + ("" if reset else "; VmHWM could not be reset at the baseline, so these are upper bounds")
        + f". Goals: receiver <= payload + 2 windows = {recv_goal:,.0f} MiB (worst {worst_recv:,.1f}: "
        + ("met" if worst_recv <= recv_goal else "**not met**")
        + f"); sender <= 2 windows = {send_goal:,.0f} MiB (worst {worst_send:,.1f}: "
        + ("met" if worst_send <= send_goal else "**not met**")
        + f"). The raw TCP fresh-buffer receiver adds {raw_rss:,.0f} MiB. Minor page faults per blob on the "
        f"receiver: flare {faults('flare')} (4 KiB pages unless the setting `receive_huge_pages` is on), raw TCP "
        f"fresh-buffer {faults('raw_fresh')}"
        + (f", flare without huge pages {faults('flare_nothp')}" if nothp else "")
        + ".",
        "Others' CPU s: CPU time that other processes on the machine used during the repetition's runs "
        "(machine-wide busy time minus the bench's own processes'); more than a few tenths of a second means the "
        "figures of that repetition are disturbed.",
    ]
    if has_warm:
        notes.insert(
            1,
            "**flare, warm receiver**: on the same process pair, right after the first blob is in (and freed), a "
            "second `send_blob` of the same size, timed the same way. Its receive buffer mostly lands on memory the "
            "process just gave back, which the host still backs (the kernel picks the pages, so not always): about "
            "the transport's pace once first-touch costs are out of the way, and what a receiver that gets blobs back "
            "to back sees.",
        )
    if nothp:
        notes.insert(
            1,
            "**flare, receiver without huge pages** is a diagnostic: the same flare build, with transparent huge "
            "pages turned off in the receiving process (`prctl(PR_SET_THP_DISABLE)`), which matters only when the "
            "setting `receive_huge_pages` is on. On a VM that returns freed memory to its host (this one), a fresh "
            "2 MiB huge page is often memory the host must fault in again, which is why that setting is off by "
            "default; compare this column with raw TCP fresh-buffer.",
        )
    return {"title": title, "headers": headers, "digits": digits, "rows": rows, "notes": notes}


def hol_section(h: dict[str, Any], rtt_n: int) -> dict[str, Any]:
    size = h["nbytes"] / MIB
    raw, fl = h["raw"], h["flare"]

    def row(label: str, s: dict[str, Any] | None, rates: list[float] | None = None) -> list[Any]:
        bulk = ", ".join(f"{r:,.0f}" for r in rates) if rates else "—"
        if s is None:
            return [label, 0, None, None, None, bulk]
        return [label, s["n"], s["p50_us"], s["p99_us"], s["max_us"], bulk]

    rows = [
        row("raw TCP, idle socket", raw["idle"]),
        row(f"raw TCP, second socket while {size:,.0f} MiB streams on the first", raw["busy"], raw["blob_mib_s"]),
        row("flare, nothing else in flight", fl["idle"]),
        row(f"flare, same connection while a {size:,.0f} MiB blob streams", fl["busy"], fl["blob_mib_s"]),
    ]
    busy = fl["busy"]
    return {
        "title": f"Small round trips ({RTT_BYTES} bytes) while {size:,.0f} MiB blobs stream",
        "headers": ["case", "round trips", "p50 µs", "p99 µs", "max µs", "bulk MiB/s meanwhile"],
        "digits": [0, 0, 1, 1, 1, 0],
        "rows": rows,
        "notes": [
            f"flare: one process pair, one connection. The sender times {rtt_n:,} sequential `Cell.request`s of "
            f"{RTT_BYTES} bytes (echoed by the receiver's request handler), then sends them back to back from its main "
            f"thread while a second thread streams {h['blobs']} blob{'s' if h['blobs'] != 1 else ''} of {size:,.0f} MiB with `send_blob` to the same "
            "receiver, in the same direction: requests ride the control lane, chunks the bulk lane, but both share "
            "one TCP connection (and its kernel buffers). Only round trips that started and ended inside a transfer "
            f"count ({busy['n'] if busy else 0:,} of {fl['busy_total']:,} timed). Raw TCP: the same two Python "
            "processes pattern with two sockets, bulk `sendall` into a preallocated buffer on one, 16-byte ping-pongs on the "
            "other: no head-of-line blocking at all, so its loaded row is what this machine itself adds to a round "
            "trip while a bulk transfer keeps both CPUs busy. A request that had to wait behind 1 GiB on one plain "
            "socket would take the whole transfer. "
            f"Other processes used {h['other_cpu_s']:.2f} CPU-s during this case."
        ],
    }


def huge_section(runs: dict[str, list[dict[str, Any]]], nbytes: int) -> dict[str, Any]:
    window, _ = _window_mib()
    rate = {w: harness.mib_per_s(nbytes, runs[w][0]["seconds"]) for w in runs}
    f = runs["flare"][0]
    return {
        "title": f"One {nbytes / GIB:g} GiB blob (above NVFlare's 4 GiB stream ceiling)",
        "headers": ["", "raw TCP MiB/s", "raw TCP fresh-buffer MiB/s", "flare MiB/s", "flare/raw", "flare/raw fresh", "flare s", "flare sender RSS+ MiB", "flare receiver RSS+ MiB"],
        "digits": [0, 0, 0, 0, 2, 2, 2, 1, 1],
        "rows": [
            [
                "one run",
                rate["raw"],
                rate["raw_fresh"],
                rate["flare"],
                rate["flare"] / rate["raw"],
                rate["flare"] / rate["raw_fresh"],
                f["seconds"],
                f["sender_memory"]["peak_above_baseline_mib"],
                f["receiver_memory"]["peak_above_baseline_mib"],
            ]
        ],
        "notes": [
            f"`python benches/bench_streams.py --huge`: {nbytes:,} bytes in one `send_blob`, checked by CRC-32 on the "
            f"receiver. Memory goals as above: receiver <= {nbytes / MIB + 2 * window:,.0f} MiB, sender <= "
            f"{2 * window:,.0f} MiB above baseline. Other processes used "
            + ", ".join(f"{runs[w][0]['other_cpu_s']:.2f}" for w in ("raw", "raw_fresh", "flare"))
            + " CPU-s during the raw, raw fresh-buffer and flare runs."
        ],
    }


HOW_TO_READ = """\
**How to read these.** A blob is one `Cell.send_blob` call: the payload leaves as 1 MiB chunks under a 16 MiB
window of unacknowledged bytes, and the receiver's handler gets it as one buffer, allocated once at the announced
size. flare/raw compares it with the best two Python processes do on loopback with plain sockets into a buffer they
already touched (measured in the same run, interleaved); "raw TCP fresh-buffer" receives into a new buffer, as the
blob receiver must, so the gap between the two raw columns is what mapping 1 GiB of fresh pages costs on this
machine, and flare/raw fresh is the transport's own share. This VM hands freed memory back to its host (virtio-balloon
free page reporting, 2 MiB blocks, about 2 s after they are freed); touching such memory again is slow, slowest for
2 MiB huge pages, so every run starts after the same pause and sees the same cold memory, the state of a receiver
that gets a blob now and then; a receiver that reuses memory within a second or two is faster than shown. The
diagnostic column "flare, receiver without huge pages" shows how much of flare's figure is that first touch. RSS+
is each process's peak above its own baseline: the receiver necessarily holds the whole blob, so its goal is the
blob plus two windows; the sender sends from the caller's buffer and should add at most two windows. The round-trip
table asks whether small requests wait behind bulk data on the same connection (head-of-line blocking): compare
flare's loaded row with raw TCP's, whose pings have a socket of their own and so show only what the busy machine
itself adds."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "receiver", "sender", "raw-hol-server", "raw-hol-client"])
    parser.add_argument("--size-mib", type=float, default=1024.0, help="blob size (default 1024)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of the blob case (default 3)")
    parser.add_argument("--hol-blobs", type=int, default=1, help="blobs streamed during the round trips (default 1)")
    parser.add_argument("--rtt-n", type=int, default=2000, help="idle round trips (default 2000)")
    parser.add_argument("--huge", action="store_true", help="run only the huge case (one --huge-gib blob)")
    parser.add_argument("--huge-gib", type=float, default=5.0, help="size of the --huge blob (default 5)")
    parser.add_argument("--settle", type=float, default=2.0, help="pause before every measured run, s (default 2)")
    parser.add_argument(
        "--thp-diagnostic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run flare with huge pages off in the receiver (default on)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="limit of every wait, seconds (default 60)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    # peer options
    parser.add_argument("--url")
    parser.add_argument("--port", type=int)
    parser.add_argument("--mode", choices=["blob", "hol"])
    parser.add_argument("--nbytes", type=int)
    parser.add_argument("--blobs", type=int, default=1)
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--no-thp", action="store_true", help="receiver: transparent huge pages off (prctl)")
    args = parser.parse_args(argv)

    if args.role == "receiver":
        harness.peer_setup()
        return run_receiver(args)
    if args.role == "sender":
        harness.peer_setup()
        return run_sender(args)
    if args.role == "raw-hol-server":
        harness.peer_setup()
        return run_raw_hol_server(args)
    if args.role == "raw-hol-client":
        harness.peer_setup()
        return run_raw_hol_client(args)

    started = time.perf_counter()
    results: dict[str, Any] = {}
    settle = Settle(args.settle)
    if args.huge:
        nbytes = int(args.huge_gib * GIB)
        timeout = max(args.timeout, 300.0)
        runs = run_blob(nbytes, 1, timeout, "huge", settle, variants=("raw", "raw_fresh", "flare"))
        results["huge"] = runs
        secs = [huge_section(runs, nbytes)]
        title = f"Streams: one {args.huge_gib:g} GiB blob vs raw TCP loopback"
    else:
        nbytes = int(args.size_mib * MIB)
        variants = BLOB_VARIANTS if args.thp_diagnostic else tuple(v for v in BLOB_VARIANTS if v != "flare_nothp")
        runs = run_blob(nbytes, args.reps, args.timeout, "blob", settle, variants=variants)
        hol = run_hol(nbytes, args.hol_blobs, args.rtt_n, args.timeout, settle)
        results.update(blob=runs, hol=hol)
        secs = [
            blob_section(runs, nbytes, f"{args.size_mib:,.0f} MiB blob between two processes (`Cell.send_blob`)", args.settle),
            hol_section(hol, args.rtt_n),
        ]
        title = "Streams: blobs between two processes vs raw TCP loopback"
    results["settle_waits_s"] = settle.waited
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_streams took {elapsed:.1f} s)")
    if args.json:
        harness.write_report(args.json, "bench_streams", title, elapsed, secs, results, how_to_read=HOW_TO_READ)


if __name__ == "__main__":
    main()
