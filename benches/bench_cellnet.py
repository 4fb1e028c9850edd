"""Cellnet transport between two processes, next to raw TCP loopback measured in the same run.

    .venv/bin/python benches/bench_cellnet.py [--size-mib 64] [--reps 10] [--rtt-n 3000] [--json out.json]

Cases (each on a fresh pair of processes: a server cell listening, a client cell connecting to it as its parent):

* **small round trips**: the client sends ``--rtt-n`` sequential 16-byte requests, the server's handler echoes the
  payload back. Reported: round trips per second, p50/p99 latency. Reference: the same ping-pong over a plain
  socket between two Python processes.
* **upload**: the client sends a ``--size-mib`` request, the handler checks its length and answers with an empty OK
  reply, ``--reps`` times. One-way bulk throughput, the figure to compare with raw TCP ``sendall``.
* **echo**: the same request, and the handler returns the received payload (the zero-copy buffer, as is) as the
  reply: the bytes cross twice, as a model going out to a site and its update coming back. MiB/s counts both
  directions (2 x size per round trip); the raw TCP reference echoes the same bytes the same way.

The bulk cases have two raw TCP references: into one reused, already-touched buffer (the ceiling), and into a fresh
buffer per message (what any receiver that keeps each message as an object of its own pays: page faults and the
kernel zeroing new pages). Minor page faults per message are reported for every variant.

Every peer reports its own peak resident memory above its baseline (``harness.PeakMemory``): the client's baseline
is taken with its payload already allocated, so the figures are what the transport itself added. In this version a
message is one frame, so expect about one message size on the receiving side of each direction.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
from harness import MIB, Peers, print_sections

CHANNEL = "bench"
SERVER = "server"
CLIENT = "site-1"
RTT_BYTES = 16


# --------------------------------------------------------------------------------------------------------------------
# Peers


def _settings(args: argparse.Namespace):
    from flare.config import CommSettings

    # Frames of a whole message must fit: the default max_frame_size (2 GiB - 2 MiB) does; say so explicitly.
    return CommSettings.from_env(max_frame_size=max(CommSettings().max_frame_size, args.nbytes + MIB))


def run_server(args: argparse.Namespace) -> None:
    from flare.cellnet import Cell, Message

    handled = {"n": 0, "bytes": 0}

    def echo(request: Message):
        handled["n"] += 1
        handled["bytes"] += len(request.payload)
        return request.payload  # the received buffer itself: no copy on the way back

    def sink(request: Message):
        handled["n"] += 1
        n = len(request.payload)
        handled["bytes"] += n
        if n != args.nbytes:
            raise ValueError(f"expected {args.nbytes} bytes, got {n}")
        return None  # empty OK reply

    cell = Cell(SERVER, listen="tcp://127.0.0.1:0", settings=_settings(args)).start()
    cell.register_request_cb(CHANNEL, "echo", echo)
    cell.register_request_cb(CHANNEL, "sink", sink)
    mem = harness.PeakMemory()
    harness.emit("ready", url=cell.url)

    def stop() -> dict[str, Any]:
        report = mem.report()  # before close: the figure is about serving, not tearing down
        cell.close()
        return {"memory": report, "handled": handled}

    # The orchestrator sends "stop" once the client is done, up to its own limits later; a dead orchestrator ends
    # this process anyway (end of input, and peer_setup's parent-death signal).
    harness.serve_commands({"baseline": mem.baseline, "stop": stop}, idle_timeout=10 * args.timeout)


def run_client(args: argparse.Namespace) -> None:
    cell = harness.join_cell(CLIENT, args.url, SERVER, args.timeout, settings=_settings(args))
    topic = "sink" if args.mode == "upload" else "echo"
    payload = bytes(range(256)) * (args.nbytes // 256) + bytes(args.nbytes % 256)  # touched before the baseline
    cell.request(SERVER, CHANNEL, "echo", b"warm-up", timeout=args.timeout).raise_for_status()
    harness.emit("ready")
    if harness.read_command(timeout=args.timeout) is None:
        return
    mem = harness.PeakMemory()
    mem.baseline()

    times: list[float] = []
    deadline = time.perf_counter() + args.max_seconds
    for i in range(args.warmup + args.reps):
        t0 = time.perf_counter()
        reply = cell.request(SERVER, CHANNEL, topic, payload, timeout=args.timeout)
        dt = time.perf_counter() - t0
        reply.raise_for_status()
        expected = args.nbytes if topic == "echo" else 0
        if len(reply.payload or b"") != expected:
            raise SystemExit(f"reply of {len(reply.payload or b'')} bytes, expected {expected}")
        if i == 0 and topic == "echo" and memoryview(reply.payload) != payload:
            raise SystemExit("echoed payload differs from what was sent")
        del reply  # a received payload holds its frame: drop it before the next one arrives
        if i >= args.warmup:
            times.append(dt)
            if time.perf_counter() > deadline:
                break
    report = mem.report()
    cell.close()
    harness.emit("result", seconds=times, memory=report)


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator


def flare_pair(mode: str, nbytes: int, reps: int, warmup: int, timeout: float, max_seconds: float) -> dict[str, Any]:
    """Runs one case on a fresh server/client process pair; returns the client's timings and both memory reports."""
    common = ["--nbytes", nbytes, "--timeout", timeout]
    with Peers() as peers:
        server = peers.start("flare-server", "bench_cellnet.py", ["server", *common])
        url = server.wait_ready(timeout)["url"]
        client = peers.start(
            "flare-client",
            "bench_cellnet.py",
            ["client", "--url", url, "--mode", mode, "--reps", reps, "--warmup", warmup, "--max-seconds", max_seconds, *common],
        )
        client.wait_ready(timeout)
        server.call("baseline", timeout)
        client.send("go")
        res = client.result(timeout=max_seconds + timeout)
        srv = server.result(timeout, stop=True)
    if srv["handled"]["n"] < len(res["seconds"]):
        raise RuntimeError(f"server handled {srv['handled']['n']} requests, client timed {len(res['seconds'])}")
    return {"seconds": res["seconds"], "client_memory": res["memory"], "server_memory": srv["memory"]}


def _max_memory(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The report with the highest peak above baseline (one per round; the table shows the worst)."""
    return max(reports, key=lambda m: m["peak_above_baseline_mib"])


def run_benchmarks(args: argparse.Namespace) -> dict[str, Any]:
    """``--rounds`` rounds; in each, every case runs its variants (raw TCP, raw TCP into fresh buffers, flare) back
    to back on fresh processes, rotating which goes first, so that drift of a noisy machine hits all alike. Timings
    are pooled over the rounds; memory is the largest of the rounds."""
    nbytes = int(args.size_mib * MIB)
    t = args.timeout
    # (case, bytes, timed messages per round, warm-up messages, echo, variants)
    cases = [
        ("rtt", RTT_BYTES, args.rtt_n, 200, True, ("raw", "flare")),
        ("upload", nbytes, args.reps, 1, False, ("raw", "raw_fresh", "flare")),
        ("echo", nbytes, args.reps, 1, True, ("raw", "raw_fresh", "flare")),
    ]
    runs: dict[tuple[str, str], dict[str, list]] = {}

    def log(msg: str) -> None:
        print(f"[bench_cellnet] {msg}", file=sys.stderr, flush=True)

    for rnd in range(args.rounds):
        for mode, size, reps, warmup, echo, variants in cases:
            log(f"round {rnd + 1}/{args.rounds}: {mode}, {reps} x {size:,} B")
            k = rnd % len(variants)
            for which in variants[k:] + variants[:k]:
                if which == "flare":
                    r = flare_pair(mode, size, reps, warmup, t, max_seconds=30)
                else:
                    r = harness.raw_tcp(size, reps, echo=echo, fresh=which == "raw_fresh", warmup=warmup, timeout=t)
                dst = runs.setdefault((mode, which), {"seconds": [], "client": [], "server": []})
                dst["seconds"] += r["seconds"]
                for side in ("client", "server"):
                    r[f"{side}_memory"]["faults_per_message"] = r[f"{side}_memory"]["minor_faults"] / (reps + warmup)
                    dst[side].append(r[f"{side}_memory"])

    def memory(mode: str, which: str) -> dict[str, Any]:
        reports = runs[(mode, which)]
        return {
            side: {
                **_max_memory(reports[side]),
                "peak_above_baseline_min_mib": min(m["peak_above_baseline_mib"] for m in reports[side]),
                "faults_per_message": statistics.mean(m["faults_per_message"] for m in reports[side]),
            }
            for side in ("client", "server")
        }

    out: dict[str, Any] = {"rounds": args.rounds, "reps": args.reps, "rtt_n": args.rtt_n}
    out["rtt"] = {
        "raw": harness.latency_summary(runs[("rtt", "raw")]["seconds"]),
        "flare": harness.latency_summary(runs[("rtt", "flare")]["seconds"]),
        "flare_memory": memory("rtt", "flare"),
    }
    for mode, echo in (("upload", False), ("echo", True)):
        moved = nbytes * (2 if echo else 1)
        out[mode] = {
            "nbytes": nbytes,
            "moved_per_round_trip": moved,
            **{w: harness.throughput_summary(moved, runs[(mode, w)]["seconds"]) for w in ("raw", "raw_fresh", "flare")},
            "flare_seconds": runs[(mode, "flare")]["seconds"],
            "flare_memory": memory(mode, "flare"),
            "raw_memory": memory(mode, "raw"),
            "raw_fresh_memory": memory(mode, "raw_fresh"),
        }
    return out


def sections(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The figures as tables: ``[{"title", "headers", "rows", "digits", "notes"}]`` (what ``run_all.py`` renders)."""
    rtt = results["rtt"]
    raw, fl = rtt["raw"], rtt["flare"]
    rtt_rows = [
        ["raw TCP (Python sockets)", raw["n"], raw["per_s"], raw["p50_us"], raw["p99_us"], 1.0],
        ["flare `Cell.request`", fl["n"], fl["per_s"], fl["p50_us"], fl["p99_us"], fl["per_s"] / raw["per_s"]],
    ]
    size = args.size_mib
    bulk_rows = []
    for mode, label in (("upload", f"upload: {size:g} MiB request, empty reply"), ("echo", f"echo: {size:g} MiB each way")):
        r = results[mode]
        bulk_rows.append(
            [
                label,
                r["raw"]["median_mib_s"],
                r["raw_fresh"]["median_mib_s"],
                r["flare"]["median_mib_s"],
                r["flare"]["median_mib_s"] / r["raw"]["median_mib_s"],
                r["flare"]["median_mib_s"] / r["raw_fresh"]["median_mib_s"],
                r["flare"]["median_s"] * 1e3,
                r["flare_memory"]["client"]["peak_above_baseline_mib"],
                r["flare_memory"]["server"]["peak_above_baseline_mib"],
            ]
        )
    fault_rows = []
    for mode in ("upload", "echo"):
        for which, label in (("raw", "raw TCP"), ("raw_fresh", "raw TCP, fresh buffers"), ("flare", "flare")):
            m = results[mode][f"{which}_memory"]
            fault_rows.append([f"{mode}: {label}", m["client"]["faults_per_message"], m["server"]["faults_per_message"]])
    reset = all(m["hwm_reset"] for k in ("upload", "echo", "rtt") for m in results[k]["flare_memory"].values())
    rounds = results["rounds"]
    up = results["upload"]
    return [
        {
            "title": f"Small request/reply round trips ({RTT_BYTES}-byte payload, sequential, two processes)",
            "headers": ["transport", "round trips", "round trips/s", "p50 µs", "p99 µs", "flare/raw (per s)"],
            "digits": [0, 0, 0, 1, 1, 3],
            "rows": rtt_rows,
            "notes": [
                f"{rounds} rounds of {args.rtt_n} timed round trips each (after 200 warm-up ones), pooled. "
                "Raw TCP: a 16-byte ping-pong over one blocking socket between two Python processes. flare: "
                "`Cell.request` to a handler that returns the payload, so each round trip also crosses Python <-> "
                "Rust in both processes and runs the handler on the server's callback pool. "
                "flare's peak RSS above baseline: client {:.1f} MiB, server {:.1f} MiB.".format(
                    rtt["flare_memory"]["client"]["peak_above_baseline_mib"],
                    rtt["flare_memory"]["server"]["peak_above_baseline_mib"],
                ),
            ],
        },
        {
            "title": f"{size:g} MiB messages between two processes",
            "headers": [
                "case",
                "raw TCP MiB/s",
                "raw TCP fresh-buffer MiB/s",
                "flare MiB/s",
                "flare/raw",
                "flare/raw fresh",
                "flare ms/round trip",
                "flare client RSS+ MiB",
                "flare server RSS+ MiB",
            ],
            "digits": [0, 0, 0, 0, 2, 2, 1, 1, 1],
            "rows": bulk_rows,
            "notes": [
                f"Medians of {up['flare']['reps']} messages per column ({rounds} rounds of {args.reps} on fresh "
                "process pairs; one warm-up message per pair not counted). MiB/s = payload MiB moved per round trip "
                "/ its wall time, measured around `Cell.request` (or `sendall` + receive) in the client; echo counts "
                "both directions. **Raw TCP**: `sendall` of a preallocated buffer, `recv_into` a preallocated, "
                "already-touched buffer; the answer is 1 byte (upload) or the same bytes back (echo). **Raw TCP "
                "fresh-buffer**: the same, but each message is received into a newly allocated buffer, as flare's "
                "receiver does (one buffer per frame). flare's slowest/fastest message: "
                f"{up['flare']['worst_mib_s']:,.0f}/{up['flare']['best_mib_s']:,.0f} MiB/s (upload).",
                "RSS+ = the process's peak resident memory above its own baseline (VmHWM at the end - VmRSS right "
                "before the first message; the client's payload is allocated before the baseline), the largest of "
                "the rounds"
                + ("" if reset else "; VmHWM could not be reset at the baseline, so these are upper bounds")
                + ". A 64 MiB request travels as a stream of 1 MiB chunks; the receiving side assembles it in one "
                "buffer allocated at the announced size. The raw TCP "
                "peers add {:.1f} MiB (preallocated) or one message (fresh buffers). flare's RSS+ per round, "
                "smallest-largest: {}.".format(
                    max(m["peak_above_baseline_mib"] for m in up["raw_memory"].values()),
                    "; ".join(
                        f"{mode} {side} {m['peak_above_baseline_min_mib']:.0f}-{m['peak_above_baseline_mib']:.0f} MiB"
                        for mode in ("upload", "echo")
                        for side, m in results[mode]["flare_memory"].items()
                    ),
                ),
            ],
        },
        {
            "title": f"Page faults per {size:g} MiB message (why a fresh buffer costs)",
            "headers": ["case", "client minor faults/msg", "server minor faults/msg"],
            "digits": [0, 0, 0],
            "rows": fault_rows,
            "notes": [
                f"A {size:g} MiB buffer that is new to the process is mapped page by page as the data lands: "
                f"{int(size * MIB) // 4096:,} faults of a 4 KiB page, each zeroed by the kernel, on the receiving "
                "side. Fewer than that for flare means its receive buffer was sometimes reused (the previous "
                "message's buffer had been released before the next frame started)."
            ],
        },
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "server", "client"])
    parser.add_argument("--size-mib", type=float, default=64.0, help="bulk message size (default 64)")
    parser.add_argument("--reps", type=int, default=10, help="bulk messages per case and round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved raw TCP / flare rounds (default 3)")
    parser.add_argument("--rtt-n", type=int, default=3000, help="small round trips per round (default 3000)")
    parser.add_argument("--timeout", type=float, default=60.0, help="limit of every wait, seconds (default 60)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    # peer options
    parser.add_argument("--url")
    parser.add_argument("--mode", choices=["rtt", "upload", "echo"])
    parser.add_argument("--nbytes", type=int)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)

    if args.role == "server":
        harness.peer_setup()
        return run_server(args)
    if args.role == "client":
        harness.peer_setup()
        return run_client(args)

    args.nbytes = int(args.size_mib * MIB)
    started = time.perf_counter()
    results = run_benchmarks(args)
    secs = sections(results, args)
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_cellnet took {elapsed:.1f} s)")
    if args.json:
        title = "Cellnet between two processes vs raw TCP loopback"
        harness.write_report(args.json, "bench_cellnet", title, elapsed, secs, results)


if __name__ == "__main__":
    main()
