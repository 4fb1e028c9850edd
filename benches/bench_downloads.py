"""Pull downloads: one owner and many receivers of one large source, next to the same bytes pushed to each receiver,
and raw TCP loopback measured in the same run.

    .venv/bin/python benches/bench_downloads.py [--mib 1024] [--receivers 24] [--procs 4] [--reps 3] [--json out.json]
    .venv/bin/python benches/bench_downloads.py --mib 64 --receivers 4 --reps 1     # a quick check, seconds

Processes: one **owner** process (a cell listening) and ``--procs`` **receiver** processes (default 4) that host the
``--receivers`` receiver cells between them (default 24: 6 cells per process, each connected to the owner as its
child). 24 Python processes would add 24 interpreters and 24 transport runtimes competing for this machine's two
CPUs; a few processes with several cells each keep every receiver a cell of its own, with its own connection, at a
fraction of that overhead. Every case runs ``--reps`` times (default 3), each time on fresh processes, in an order
rotated between repetitions.

Cases:

* **pull, memory source**: ``ObjectDownloader(cell, num_receivers=N).add_bytes(buf)`` of a ``--mib`` buffer that the
  owner allocated and touched before its baseline (served as slices of that buffer, no cache).
* **pull, file source**: ``FileDownloader(cell, num_receivers=N).add_file(path)`` of a ``--mib`` file written into the
  system temp dir before the run (so it is in the page cache: a warm file); chunks go through the owner's shared
  chunk cache (``download_cache_budget``).
* **push**: the owner calls ``Cell.send_blob`` of its one buffer to every receiver at once, one thread per receiver
  (N concurrent streams of the same bytes).
* **owner memory vs replies in flight** (diagnostic; ``--no-diagnostic`` skips it): the memory-source pull again,
  with a ``--diag-mib`` source (default 256), once per setting in ``DIAG_SETTINGS`` of ``download_send_budget``,
  ``download_max_inflight`` and ``download_chunk_size``: the owner's peak next to the bytes its replies may hold
  while they are sent, the smaller of N x requests in flight x chunk size and the send budget.

Every receiver consumes its bytes piece by piece and drops them (pull: iterating ``open_download``; push: a stream
callback iterating the reader), so receivers hold no whole copy; each checks that every piece continues the source's
byte pattern where it should (first and last bytes of each piece), and the byte count. ``--verify`` also CRC-32s
every byte (costs CPU the transfers would otherwise have).

Timing: aggregate MiB/s = N x size / wall time, the median of the repetitions. Wall time: pull, from the first
receiver's ``open_download`` call to the last receiver's last byte; push, from the owner starting its sends to the
last receiver's last byte (or the last ``send_blob`` returning, if later). Per receiver: pull, its ``open_download``
call to its last byte; push, the ``send_blob`` call for it to its last byte. All processes stamp
``time.monotonic()`` (one clock on one machine).

Memory: the owner's peak RSS above its baseline (``harness.PeakMemory``: VmHWM at the end minus VmRSS just before
the transfers, with the source already resident for the memory and push cases), and above its RSS before the source
was allocated; the goal is the cache budget plus the source. Each receiver process reports its own peak above its
baseline (for all its cells together).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import harness
from harness import MIB, Peers, print_sections

OWNER = "server"
CHANNEL = "bench"
PUSH_TOPIC = "push"
SAMPLE_S = 0.02
CASES = ("pull-memory", "pull-file", "push")
QUIET_MAX_WAIT, QUIET_BUDGET = 10.0, 60.0  # s: waiting for a quiet machine, before one run and in all
# (download_send_budget MiB, download_max_inflight, download_chunk_size MiB): the default, a budget below and one
# above what 24 receivers have in flight by default (480 MiB), and few enough requests in flight to stay below it
DIAG_SETTINGS = ((64.0, 4, 5.0), (16.0, 4, 5.0), (1024.0, 4, 5.0), (64.0, 1, 1.0))

log = harness.bench_logger("bench_downloads")


def settings(args: argparse.Namespace) -> Any:
    """Settings of every cell in a run (owner and receivers alike): the defaults, or the environment's, with the
    download settings given on the command line."""
    from flare.config import CommSettings

    overrides: dict[str, Any] = {}
    if args.chunk_mib:
        overrides["download_chunk_size"] = int(args.chunk_mib * MIB)
    if args.cache_mib is not None:
        overrides["download_cache_budget"] = int(args.cache_mib * MIB)
    if args.inflight:
        overrides["download_max_inflight"] = args.inflight
    if args.send_mib:
        overrides["download_send_budget"] = int(args.send_mib * MIB)
    return CommSettings.from_env(**overrides)


def cpu_s() -> float:
    """CPU time (user + system) of this process so far, all its threads, the transport's included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def receiver_names(n: int) -> list[str]:
    return [f"site-{i}" for i in range(1, n + 1)]


class PatternCheck:
    """Checks that consecutive pieces continue ``harness.pattern_bytes`` (byte at offset o is o % 256) by their
    first and last bytes, counting bytes; with ``crc``, also CRC-32s everything."""

    def __init__(self, crc: bool) -> None:
        self.offset = 0
        self.bad = 0
        self.crc = 0 if crc else None

    def feed(self, piece: Any) -> None:
        view = memoryview(piece)
        n = len(view)
        if n:
            if view[0] != self.offset % 256 or view[n - 1] != (self.offset + n - 1) % 256:
                self.bad += 1
            if self.crc is not None:
                self.crc = zlib.crc32(view, self.crc)
        view.release()
        self.offset += n


def pattern_crc(nbytes: int) -> int:
    """CRC-32 of ``harness.pattern_bytes(nbytes)``, one MiB at a time (every whole MiB of the pattern is the same)."""
    block, crc = harness.pattern_bytes(MIB), 0
    for _ in range(nbytes // MIB):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(harness.pattern_bytes(nbytes % MIB), crc)


# --------------------------------------------------------------------------------------------------------------------
# Peers


class Sampler:
    """Samples, every ``SAMPLE_S``, the owner's RSS, its chunk cache and how many receivers the transaction counts as
    active, keeping the largest of each: VmHWM gives the peak, this says what was behind it."""

    def __init__(self, downloader: Any = None) -> None:
        self.downloader = downloader
        self.max = {"rss_mib": 0.0, "cache_mib": 0.0, "active_receivers": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            m = self.max
            m["rss_mib"] = max(m["rss_mib"], harness.proc_status().get("VmRSS", 0) / 1024)
            if self.downloader is not None:
                # the service's own figure; no public accessor on the downloader for it
                m["cache_mib"] = max(m["cache_mib"], harness.mib(self.downloader._service.cache_used))
                info = self.downloader.info()
                if info:
                    m["active_receivers"] = max(m["active_receivers"], info["active_receivers"])


def run_owner(args: argparse.Namespace) -> None:
    from flare.cellnet import Cell
    from flare.streaming import FileDownloader, ObjectDownloader

    cell = Cell(OWNER, listen="tcp://127.0.0.1:0", settings=settings(args)).start()
    names = receiver_names(args.receivers)
    harness.emit("ready", url=cell.url)
    state: dict[str, Any] = {}

    def prepare() -> dict[str, Any]:
        for name in names:
            if not cell.wait_for_peer(name, timeout=args.timeout):
                raise SystemExit(f"receiver {name} not connected within {args.timeout}s")
        state["pre_source_rss_kib"] = harness.proc_status().get("VmRSS", 0)
        out: dict[str, Any] = {}
        if args.case == "pull-file":
            d = FileDownloader(cell, num_receivers=args.receivers)
            out["rid"] = d.add_file(args.path)
        else:
            state["buf"] = harness.pattern_bytes(args.nbytes)  # the application's model: resident before the baseline
            if args.case == "pull-memory":
                d = ObjectDownloader(cell, num_receivers=args.receivers)
                out["rid"] = d.add_bytes(state["buf"])
        if args.case != "push":
            state["downloader"] = d
        state["mem"] = harness.PeakMemory()
        state["mem"].baseline()
        state["cpu0"] = cpu_s()
        return out

    def run() -> dict[str, Any]:
        mem: harness.PeakMemory = state["mem"]
        if args.case == "push":
            buf = state["buf"]
            sends: dict[str, list[float]] = {}
            errors: list[str] = []

            def push(name: str) -> None:
                t0 = time.monotonic()
                try:
                    cell.send_blob(name, CHANNEL, PUSH_TOPIC, buf)
                except Exception as e:  # reported with the result, not raised in a thread
                    errors.append(f"{name}: {type(e).__name__}: {e}")
                sends[name] = [t0, time.monotonic()]

            with Sampler() as sampler:
                t0 = time.monotonic()
                threads = [threading.Thread(target=push, args=(n,), name=f"push-{n}") for n in names]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            return {"t0": t0, "sends": sends, "errors": errors, "memory": mem.report(), "samples": sampler.max,
                    "cpu_s": cpu_s() - state["cpu0"]}
        d = state["downloader"]
        with Sampler(d) as sampler:
            outcome = d.wait(args.timeout)
        t_done = time.monotonic()
        report, cpu = mem.report(), cpu_s() - state["cpu0"]
        if outcome is None:
            return {"status": "still running", "receivers": [], "memory": report, "samples": sampler.max, "cpu_s": cpu}
        return {
            "cpu_s": cpu,
            "status": outcome.status,
            "t_done": t_done,
            "receivers": [[r.receiver, r.status, r.reason] for r in outcome.receivers],
            "memory": report,
            "samples": sampler.max,
        }

    def stop() -> dict[str, Any]:
        cell.close()
        return {"pre_source_rss_mib": state.get("pre_source_rss_kib", 0) / 1024}

    harness.serve_commands({"prepare": prepare, "run": run, "stop": stop}, idle_timeout=10 * args.timeout)


def run_receivers(args: argparse.Namespace) -> None:
    first = args.first
    names = [f"site-{i}" for i in range(first, first + args.cells)]
    cfg = settings(args)
    records: list[dict[str, Any]] = []
    done = threading.Condition()

    def record(**entry: Any) -> None:
        with done:
            records.append(entry)
            done.notify_all()

    def on_stream(name: str):
        def read(reader: Any) -> None:
            t_first = time.monotonic()
            check = PatternCheck(args.verify)
            error = ""
            try:
                for chunk in reader:
                    check.feed(chunk)
            except Exception as e:  # the orchestrator reports it
                error = f"{type(e).__name__}: {e}"
            record(name=name, t_first=t_first, t_end=time.monotonic(), nbytes=check.offset, bad=check.bad,
                   crc=check.crc, error=error)

        return read

    cells = {}
    for name in names:
        cell = harness.join_cell(name, args.url, OWNER, args.timeout, settings=cfg)
        cell.register_stream_cb(CHANNEL, PUSH_TOPIC, on_stream(name))
        cells[name] = cell
    mem = harness.PeakMemory()
    cpu0 = [0.0]
    harness.emit("ready")

    def baseline() -> dict[str, Any]:
        out = mem.baseline()
        cpu0[0] = cpu_s()
        return out

    def pull(rid: str) -> dict[str, Any]:
        from flare.streaming import open_download

        def one(name: str) -> None:
            check = PatternCheck(args.verify)
            error = ""
            t0 = time.monotonic()
            try:
                reader = open_download(OWNER, rid, cell=cells[name])
                for piece in reader:
                    check.feed(piece)
            except Exception as e:  # the orchestrator reports it
                error = f"{type(e).__name__}: {e}"
            record(name=name, t0=t0, t_end=time.monotonic(), nbytes=check.offset, bad=check.bad, crc=check.crc,
                   error=error)

        for name in names:
            threading.Thread(target=one, args=(name,), daemon=True, name=f"pull-{name}").start()
        return {}

    def collect(wait_s: float) -> dict[str, Any]:
        with done:
            done.wait_for(lambda: len(records) >= len(names), timeout=wait_s)
        return {"records": list(records), "memory": mem.report(), "cpu_s": cpu_s() - cpu0[0]}

    def stop() -> dict[str, Any]:
        for cell in cells.values():
            cell.close()
        return {}

    harness.serve_commands(
        {"baseline": baseline, "pull": pull, "collect": collect, "stop": stop}, idle_timeout=10 * args.timeout
    )


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator


def peer_options(args: argparse.Namespace) -> list[Any]:
    out: list[Any] = ["--timeout", args.timeout]
    if args.chunk_mib:
        out += ["--chunk-mib", args.chunk_mib]
    if args.cache_mib is not None:
        out += ["--cache-mib", args.cache_mib]
    if args.inflight:
        out += ["--inflight", args.inflight]
    if args.send_mib:
        out += ["--send-mib", args.send_mib]
    if args.verify:
        out.append("--verify")
    return out


def run_case(case: str, args: argparse.Namespace, nbytes: int, path: Path | None) -> dict[str, Any]:
    """One case on fresh processes: the owner, then the receiver processes (their cells join the owner)."""
    n, procs = args.receivers, min(args.procs, args.receivers)
    common = peer_options(args)
    with Peers() as peers:
        source = ["--path", path] if path else []
        owner = peers.start("owner", "bench_downloads.py", [
            "owner", "--case", case, "--nbytes", nbytes, "--receivers", n, *source, *common])
        url = owner.wait_ready(args.timeout)["url"]
        groups, first = [], 1
        for p in range(procs):
            cells = n // procs + (1 if p < n % procs else 0)
            groups.append(peers.start(f"receivers-{p + 1}", "bench_downloads.py", [
                "receivers", "--url", url, "--first", first, "--cells", cells, *common]))
            first += cells
        for g in groups:
            g.wait_ready(args.timeout)
        prep = owner.call("prepare", args.timeout)
        for g in groups:
            g.call("baseline", args.timeout)
        owner.send("run")
        if case != "push":
            for g in groups:
                g.call("pull", args.timeout, rid=prep["rid"])
        ran = owner.wait_event("run", args.timeout + 30)
        records, rmem, rcpu = [], [], 0.0
        for g in groups:
            got = g.call("collect", args.timeout + 30, wait_s=args.timeout)
            records += got["records"]
            rmem.append(got["memory"])
            rcpu += got["cpu_s"]
        owner_end = owner.result(args.timeout, stop=True)
        for g in groups:
            g.result(args.timeout, stop=True)

    problems = [f"{r['name']}: {r['error']}" for r in records if r["error"]]
    problems += [f"{r['name']}: got {r['nbytes']:,} of {nbytes:,} bytes" for r in records if r["nbytes"] != nbytes]
    problems += [f"{r['name']}: {r['bad']} pieces out of pattern" for r in records if r["bad"]]
    if args.verify:
        want = pattern_crc(nbytes)
        problems += [f"{r['name']}: CRC mismatch" for r in records if r["crc"] != want]
    if len(records) != n:
        problems.append(f"{len(records)} of {n} receivers reported")
    if case == "push":
        problems += ran["errors"]
        t_start = ran["t0"]
        per = [r["t_end"] - ran["sends"][r["name"]][0] for r in records]
        end = max([r["t_end"] for r in records] + [s[1] for s in ran["sends"].values()])
    else:
        if ran["status"] != "finished":
            problems.append(f"transaction ended {ran['status']!r}")
        problems += [f"{who}: {status} {reason}" for who, status, reason in ran["receivers"] if status != "success"]
        t_start = min(r["t0"] for r in records)
        per = [r["t_end"] - r["t0"] for r in records]
        end = max(r["t_end"] for r in records)
    if problems:
        raise RuntimeError(f"{case}: " + "; ".join(problems[:10]))
    wall = end - t_start
    return {
        "case": case,
        "seconds": wall,
        "aggregate_mib_s": harness.mib_per_s(n * nbytes, wall),
        "per_receiver_s": sorted(per),
        "owner_memory": ran["memory"],
        "owner_pre_source_rss_mib": owner_end["pre_source_rss_mib"],
        "owner_samples": ran["samples"],
        "transaction_done_after_s": ran["t_done"] - t_start if "t_done" in ran else None,
        "receiver_memory": rmem,
        "owner_cpu_s": ran["cpu_s"],
        "receivers_cpu_s": rcpu,
    }


def write_file(path: Path, nbytes: int) -> None:
    block = harness.pattern_bytes(64 * MIB)
    with open(path, "wb") as f:
        left = nbytes
        while left:
            k = min(left, len(block))
            f.write(block if k == len(block) else block[:k])
            left -= k


HOW_TO_READ = """\
**How to read these.** One owner process serves one source to N receiver cells (several cells per receiver
process, each with its own connection to the owner); every receiver takes its bytes piece by piece and drops them.
Pull: each receiver downloads at its own pace (`open_download`, a few requests in flight), so receivers finish over
a spread of times; push: the owner streams the same buffer to every receiver at once (`send_blob`, one thread each).
All of it shares this machine's two CPUs, so aggregate MiB/s is bounded by the CPU time it takes to move N copies of
the bytes through loopback TCP. Raw TCP between one pair of Python processes, measured in the same run, is the
reference for the speed of one copy; N connections at once can exceed it, since one pair leaves part of the two
CPUs idle. The owner's figure that matters is its memory: its peak RSS above its RSS before the source existed
should stay within the download cache budget plus the source, whatever N is. Each case runs `--reps` times (3) on
fresh processes, in rotated order: the speed of this machine drifts by tens of percent from run to run, its memory
figures barely."""


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over its repetitions: the median aggregate (and that repetition's wall time), every receiver's time
    pooled, and the worst memory."""
    by_rate = sorted(runs, key=lambda r: r["aggregate_mib_s"])
    mid = by_rate[(len(by_rate) - 1) // 2]
    worst = max(runs, key=lambda r: r["owner_memory"]["peak_above_baseline_mib"])
    return {
        "aggregate_mib_s": statistics.median(r["aggregate_mib_s"] for r in runs),
        "rates": [r["aggregate_mib_s"] for r in runs],
        "seconds": mid["seconds"],
        "per_receiver_s": sorted(t for r in runs for t in r["per_receiver_s"]),
        "owner": worst,
        "receiver_rss": max(m["peak_above_baseline_mib"] for r in runs for m in r["receiver_memory"]),
        "owner_cpu_s": statistics.median(r["owner_cpu_s"] for r in runs),
        "receivers_cpu_s": statistics.median(r["receivers_cpu_s"] for r in runs),
        "others_cpu_s": max(r["others_cpu_s"] for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "owner", "receivers"])
    parser.add_argument("--mib", type=int, default=1024, help="source size in MiB (default 1024)")
    parser.add_argument("--receivers", type=int, default=24, help="receiver cells (default 24)")
    parser.add_argument("--procs", type=int, default=4, help="processes the receiver cells are spread over (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every case, order rotated (default 3)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--chunk-mib", type=float, help="download_chunk_size in MiB (default: the setting's)")
    parser.add_argument("--cache-mib", type=float, help="download_cache_budget in MiB (default: the setting's)")
    parser.add_argument("--inflight", type=int, help="download_max_inflight (default: the setting's)")
    parser.add_argument("--send-mib", type=float, help="download_send_budget in MiB (default: the setting's)")
    parser.add_argument("--verify", action="store_true", help="receivers CRC-32 every byte")
    parser.add_argument("--raw-reps", type=int, default=3, help="raw TCP rounds, before and after (default 3)")
    parser.add_argument("--no-diagnostic", dest="diagnostic", action="store_false",
                        help="skip the owner-memory-vs-requests-in-flight runs")
    parser.add_argument("--diag-mib", type=int, default=256, help="source size of the diagnostic runs (default 256)")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit of every wait, seconds (default 300)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    # peer options
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--url")
    parser.add_argument("--nbytes", type=int)
    parser.add_argument("--path")
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--cells", type=int, default=1)
    args = parser.parse_args(argv)

    if args.role != "bench":
        harness.peer_setup()
        return (run_owner if args.role == "owner" else run_receivers)(args)

    started = time.perf_counter()
    nbytes = args.mib * MIB
    n = args.receivers
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    cfg = settings(args)
    budget_mib, chunk_mib = harness.mib(cfg.download_cache_budget), harness.mib(cfg.download_chunk_size)
    raw_bytes = min(nbytes, 1024 * MIB)

    results: dict[str, Any] = {"runs": {case: [] for case in cases}}
    load = harness.OtherLoad()
    waited: list[float] = []

    def quiet_wait() -> None:
        """Starts a run once other processes leave the CPUs alone (or gives up, within a total), so that it does not
        begin in someone else's burst; what they take during the run is reported with it."""
        waited.append(load.wait_quiet(max(0.0, min(QUIET_MAX_WAIT, QUIET_BUDGET - sum(waited)))))

    log(f"raw TCP: {args.raw_reps} x {raw_bytes:,} B")
    results["raw_before"] = harness.raw_tcp(raw_bytes, args.raw_reps)
    tmp = Path(tempfile.mkdtemp(prefix="flare-bench-downloads-"))
    try:
        path = None
        if "pull-file" in cases:
            path = tmp / "source.bin"
            log(f"writing the {nbytes:,} B source file under {tmp}")
            write_file(path, nbytes)
            os.sync()
        for rep in range(args.reps):
            # rotated, so that no case always runs first (cold memory) or right after the same neighbour
            for case in cases[rep % len(cases):] + cases[: rep % len(cases)]:
                quiet_wait()
                log(f"{case} ({rep + 1}/{args.reps}): {n} receivers x {nbytes:,} B")
                r = run_case(case, args, nbytes, path if case == "pull-file" else None)
                r["others_cpu_s"] = load.take()["other_cpu_s"]
                results["runs"][case].append(r)
                log(f"{case}: {r['aggregate_mib_s']:,.0f} MiB/s aggregate, {r['seconds']:.1f} s, owner RSS+ "
                    f"{r['owner_memory']['peak_above_baseline_mib']:,.1f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    diag: list[dict[str, Any]] = []
    if args.diagnostic:
        for send, inflight, chunk in DIAG_SETTINGS:
            opts = argparse.Namespace(**{**vars(args), "send_mib": send, "inflight": inflight, "chunk_mib": chunk})
            quiet_wait()
            log(f"diagnostic: pull-memory, download_send_budget {send:g} MiB, download_max_inflight {inflight}, "
                f"download_chunk_size {chunk:g} MiB")
            r = run_case("pull-memory", opts, args.diag_mib * MIB, None)
            r["others_cpu_s"] = load.take()["other_cpu_s"]
            diag.append({"send_mib": send, "inflight": inflight, "chunk_mib": chunk, **r})
    results["diagnostic"] = diag
    log(f"raw TCP again: {args.raw_reps} x {raw_bytes:,} B")
    results["raw_after"] = harness.raw_tcp(raw_bytes, args.raw_reps)

    raw_best = max(results["raw_before"]["median_mib_s"], results["raw_after"]["median_mib_s"])
    labels = {
        "pull-memory": "pull, memory source (`ObjectDownloader.add_bytes`)",
        "pull-file": "pull, file source (`FileDownloader.add_file`)",
        "push": f"push, {n} concurrent `send_blob` of the same buffer",
    }
    summary = {case: summarize(results["runs"][case]) for case in cases}
    results["summary"] = summary
    rows, goals, rates = [], [], []
    for case in cases:
        sm = summary[case]
        m = sm["owner"]["owner_memory"]
        source = 0.0 if case == "pull-file" else harness.mib(nbytes)
        above_start = m["end_hwm_mib"] - sm["owner"]["owner_pre_source_rss_mib"]
        goal = budget_mib + source
        goals.append(f"{case} {above_start:,.0f} of {goal:,.0f}: " + ("met" if above_start <= goal else "**not met**"))
        rates.append(f"{case} " + ", ".join(f"{x:,.0f}" for x in sm["rates"]))
        per = sm["per_receiver_s"]
        rows.append([
            labels[case],
            sm["aggregate_mib_s"],
            sm["aggregate_mib_s"] / raw_best,
            sm["seconds"],
            per[0],
            statistics.median(per),
            per[-1],
            source,
            m["peak_above_baseline_mib"],
            above_start,
            goal,
            sm["receiver_rss"],
        ])
    size = f"{nbytes / MIB:,.0f} MiB"
    procs = min(args.procs, n)
    main_sec = {
        "title": f"1 owner and {n} receivers of a {size} source: pull vs push",
        "headers": ["case", "aggregate MiB/s", "vs raw TCP", "wall s", "receiver s min", "median", "max",
                    "source MiB", "owner RSS+ MiB", "owner peak above pre-source MiB", "goal MiB",
                    "receiver process RSS+ MiB"],
        "digits": [0, 0, 2, 2, 2, 2, 2, 0, 1, 1, 0, 1],
        "rows": rows,
        "notes": [
            f"{n} receiver cells in {procs} processes, each cell its own connection to the owner. {args.reps} "
            "repetitions of every case on fresh processes, order rotated; aggregate MiB/s = "
            f"{n} x {size} / wall time, the median of the repetitions ({'; '.join(rates)}), wall s that repetition's; "
            "vs raw TCP divides it by one raw TCP pair's MiB/s (below), the speed of one copy on loopback. Receiver "
            "s: every receiver of every repetition, pull from its `open_download` call to its last byte, push from "
            "its `send_blob` call to its last byte; wall time runs from the first of those starts to the last byte "
            f"in. Settings: download_chunk_size {chunk_mib:g} MiB, download_cache_budget {budget_mib:g} MiB, "
            f"download_send_budget {harness.mib(cfg.download_send_budget):g} MiB, "
            f"download_max_inflight {cfg.download_max_inflight}, streaming_window_size "
            f"{harness.mib(cfg.streaming_window_size):g} MiB.",
            "Owner RSS+ is its peak above its baseline taken just before the transfers (the memory and push sources "
            "are already resident then), the worst repetition; owner peak above pre-source is the same peak above "
            "its RSS before the source was allocated, and its goal is the cache budget plus the source resident in "
            "memory (0 for the file, read chunk by chunk from the page cache): " + "; ".join(goals) + ". The bound "
            "`docs/downloads.md` gives adds the replies being sent, within download_send_budget. Receiver process "
            f"RSS+: the worst receiver process ({n // procs}-{-(-n // procs)} cells) above its own baseline.",
        ],
    }
    gib_delivered = n * nbytes / (1 << 30)
    owner_rows = []
    for case in cases:
        sm = summary[case]
        s = sm["owner"]["owner_samples"]
        owner_rows.append([
            labels[case],
            s["rss_mib"] - sm["owner"]["owner_memory"]["baseline_rss_mib"],
            s["cache_mib"] if case == "pull-file" else None,
            s["active_receivers"] if case != "push" else None,
            sm["owner"]["owner_memory"]["minor_faults"],
            sm["owner_cpu_s"],
            sm["receivers_cpu_s"],
            (sm["owner_cpu_s"] + sm["receivers_cpu_s"]) / gib_delivered,
            sm["others_cpu_s"],
        ])
    owner_sec = {
        "title": "What the owner held, and the CPU it all took",
        "headers": ["case", "largest sampled owner RSS+ MiB", "chunk cache peak MiB", "most active receivers",
                    "owner minor faults", "owner CPU s", "receivers CPU s", "CPU s per GiB delivered",
                    "others' CPU s"],
        "digits": [0, 1, 1, 0, 0, 1, 1, 2, 2],
        "rows": owner_rows,
        "notes": [
            f"From the repetition with the owner's largest peak: sampled every {SAMPLE_S * 1000:.0f} ms in the "
            "owner, its RSS above baseline, the bytes its chunk cache held (file source only; budget "
            f"{budget_mib:g} MiB) and how many receivers its transaction counted as active; its minor page faults "
            "during the transfers (4 KiB pages it mapped: memory allocated and touched to serve). CPU: user + "
            "system seconds of the owner process and of all receiver processes together during the transfers "
            f"(medians of the repetitions); per GiB delivered divides their sum by {gib_delivered:g} GiB. The machine "
            "has 2 CPUs, so CPU s / wall s near 2 means the transfer was CPU-bound. Others' CPU s: CPU time that "
            "processes outside this bench used while a case ran (the worst repetition; `harness.OtherLoad`); more "
            "than a few tenths of a second means that case's speed is disturbed. Each run starts once the machine "
            f"is quiet, waiting at most {QUIET_MAX_WAIT:g} s for it ({sum(waited):.1f} s of such waiting in this run)."
        ],
    }
    raw_rows = [
        ["raw TCP, before", results["raw_before"]["median_mib_s"], results["raw_before"]["best_mib_s"]],
        ["raw TCP, after", results["raw_after"]["median_mib_s"], results["raw_after"]["best_mib_s"]],
    ]
    raw_sec = {
        "title": "Reference: raw TCP loopback, one pair of Python processes",
        "headers": ["", "median MiB/s", "best MiB/s"],
        "digits": [0, 0, 0],
        "rows": raw_rows,
        "notes": [
            f"`harness.raw_tcp`: {args.raw_reps} rounds of {raw_bytes / MIB:,.0f} MiB, `sendall` of a preallocated "
            "buffer into one preallocated, already-touched buffer and a 1-byte answer, before and after the flare "
            "cases; the faster median is the reference above."
        ],
    }
    secs = [main_sec, owner_sec]
    if diag:
        diag_rows = []
        for d in diag:
            in_flight = n * d["inflight"] * d["chunk_mib"]
            bound = min(in_flight, d["send_mib"])
            rss_plus = d["owner_memory"]["peak_above_baseline_mib"]
            diag_rows.append([d["send_mib"], d["inflight"], d["chunk_mib"], in_flight, bound, rss_plus,
                              rss_plus / bound, d["aggregate_mib_s"], d["others_cpu_s"]])
        secs.append({
            "title": f"Diagnostic: the owner's memory vs its replies in flight (pull, memory source, {n} receivers)",
            "headers": ["download_send_budget MiB", "download_max_inflight", "download_chunk_size MiB",
                        f"{n} x in flight x chunk MiB", "replies may hold MiB", "owner RSS+ MiB", "RSS+ / may hold",
                        "aggregate MiB/s", "others' CPU s"],
            "digits": [0, 0, 0, 0, 0, 1, 2, 0, 2],
            "rows": diag_rows,
            "notes": [
                f"One run each, {args.diag_mib:,} MiB memory source (`add_bytes`, nothing to cache), on fresh "
                "processes. A memory source is served as slices of the caller's buffer, but each reply is encoded "
                "into a buffer of its own that lives until it is sent: at most one chunk for each request in flight "
                f"({n} receivers x download_max_inflight x download_chunk_size), and no more than "
                "download_send_budget at once (further replies wait for room). \"Replies may hold\" is the smaller "
                "of the two; RSS+ / may hold well above 1 would mean the owner holds memory that neither bound "
                "covers. Aggregate MiB/s is what a smaller budget costs in speed."
            ],
        })
    secs.append(raw_sec)
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_downloads took {elapsed:.1f} s)")
    if args.json:
        for key in ("raw_before", "raw_after"):
            results[key].pop("seconds", None)
        title = f"Pull downloads: 1 owner and {n} receivers vs push"
        harness.write_report(args.json, "bench_downloads", title, elapsed, secs, results, how_to_read=HOW_TO_READ)


if __name__ == "__main__":
    main()
