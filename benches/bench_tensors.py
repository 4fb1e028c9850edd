"""A state dict from a server process to several client processes: one regular message versus the TensorDownloader.

    .venv/bin/python benches/bench_tensors.py [--mib 2048] [--tensors 64] [--clients 4] [--reps 3] [--json out.json]
    .venv/bin/python benches/bench_tensors.py --mib 128 --reps 1      # a quick check, ~40 s (mostly process start)

Processes: one **server** process (a cell listening) and ``--clients`` **client** processes (default 4), each one
cell connected to the server. The server builds a state dict of ``--tensors`` float32 torch tensors (default 64)
holding ``--mib`` MiB in all (default 2048), tensor i filled with the value i, before its baseline: an application's
model is resident before it is sent. Every case runs ``--reps`` times (default 3), each time on fresh processes, in
an order rotated between repetitions.

Cases:

* **regular message**: ``Cell.broadcast(clients, ..., payload=state_dict)``: the payload is FOBS-serialized once
  (arrays out of band) and the same bytes are streamed to every client, which gets the loaded dict in its request
  handler (arrays as views over its one receive buffer). The server sends ``{key: tensor.numpy()}``, numpy views of
  the same tensors (no copy), and clients get numpy arrays: FOBS dumps torch tensors into twice their size and loads
  them as copies in this build, which would take about 22 GiB at 2 GiB and 4 clients, nearly all of this machine;
  ``--regular-tensors torch`` sends the tensors themselves. The path that sends large arrays and tensors of a cell
  message by download (docs/fobs.md) is turned off for this case (``FLARE_TENSOR_DOWNLOAD_CHUNK_SIZE=0``, the same
  for numpy), so the bytes travel inside the message. A broadcast serializes once for all clients, the cheapest way
  to send the same message to all of them (one ``request`` per client would serialize once per client).
* **regular message by download**: the same ``broadcast`` of the torch state dict with default settings: FOBS
  serves the tensors in a download transaction (safetensors items, as ``add_tensors``) and the message carries only
  the reference; each client's FOBS load downloads them before its handler runs.
* **TensorDownloader**: the server makes a ``TensorDownloader(cell, num_receivers=N)``, ``add_tensors`` of the torch
  state dict, and broadcasts ``{"ref_id", "fqcn"}`` (a few hundred bytes); each client's handler starts
  ``download_tensors(fqcn, ref_id, timeout, cell)`` on a thread of its own and gets torch tensors, views over the
  received replies. Each tensor is one safetensors item, made when first asked for and shared by every client
  through the server's chunk cache (``download_cache_budget``).

Every client keeps the dict it got until the end of the run (a client that dropped it would look cheaper than one
that trains on it) and checks it: the number of entries, the bytes, and the first and last value of every tensor.

Timing: wall time from the server starting its send (just before ``broadcast``, or before making the downloader)
to the last client holding the whole state dict (its request handler called with it, or ``download_tensors``
returned), all processes stamping ``time.monotonic()`` (one clock on one machine); the median of the repetitions.

Memory (``harness.PeakMemory``): the server's peak RSS above its baseline, taken with the state dict resident, so
the model itself is not counted; the goal for it is the chunk cache budget plus the replies being sent
(``download_send_budget``), which is the issue's "the model plus the cache budget" with the bound
``docs/downloads.md`` gives for replies in flight. The same peak above the server's RSS before the model was made is
shown too (model included). Each client's peak RSS above its baseline (cell connected, torch imported, nothing
received yet); its goal is the model plus 64 MiB: the model must end up in the client, nothing else may pile up.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import harness
from harness import MIB, Peers, print_sections

SERVER = "server"
CHANNEL = "bench"
MODEL_TOPIC = "model"
REF_TOPIC = "ref"
CASES = ("regular", "via-download", "downloader")
# the switch that keeps arrays and tensors inside a cell message (docs/fobs.md), for the regular case's server
INLINE_ENV = {"FLARE_TENSOR_DOWNLOAD_CHUNK_SIZE": "0", "FLARE_NP_DOWNLOAD_CHUNK_SIZE": "0"}
CLIENT_SLACK_MIB = 64.0
SAMPLE_S = 0.02
QUIET_MAX_WAIT, QUIET_BUDGET = 10.0, 60.0  # s: waiting for a quiet machine, before one run and in all

log = harness.bench_logger("bench_tensors")


def settings() -> Any:
    """Every cell's settings: the defaults, or the environment's (``FLARE_*``), the same for both cases."""
    from flare.config import CommSettings

    return CommSettings.from_env()


def cpu_s() -> float:
    """CPU time (user + system) of this process so far, all its threads, the transport's included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def client_names(n: int) -> list[str]:
    return [f"site-{i}" for i in range(1, n + 1)]


def fobs_takes_torch() -> bool:
    """Whether this build's FOBS serializes torch tensors (a torch decomposer registered)."""
    import torch

    from flare import fobs
    from flare.errors import SerializationError

    try:
        fobs.loads(fobs.dumps({"probe": torch.zeros(2)}))
    except SerializationError:
        return False
    return True


def check_state_dict(sd: Any, tensors: int, nbytes: int) -> list[str]:
    """What is wrong with a received state dict: entry count, total bytes, and the value i at both ends of tensor
    i (the server's fill)."""
    if not isinstance(sd, dict):
        return [f"got {type(sd).__name__}, not a dict"]
    problems = []
    if len(sd) != tensors:
        problems.append(f"{len(sd)} of {tensors} tensors")
    total = 0
    for i in range(tensors):
        t = sd.get(f"layer{i}.weight")
        if t is None:
            problems.append(f"layer{i}.weight missing")
            continue
        flat = t.reshape(-1)
        total += flat.shape[0] * 4
        if float(flat[0]) != float(i) or float(flat[-1]) != float(i):
            problems.append(f"layer{i}.weight holds {float(flat[0])}..{float(flat[-1])}, not {i}")
    if total != nbytes:
        problems.append(f"{total:,} of {nbytes:,} bytes")
    return problems[:5]


# --------------------------------------------------------------------------------------------------------------------
# Peers


class Sampler:
    """Samples the server's chunk cache every ``SAMPLE_S``, keeping its largest size: VmHWM gives the peak, this
    says how much of it the cache was."""

    def __init__(self, downloader: Any = None) -> None:
        self.downloader = downloader
        self.cache_mib = 0.0
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
            if self.downloader is not None:
                # the service's own figure; no public accessor on the downloader for it
                self.cache_mib = max(self.cache_mib, harness.mib(self.downloader._service.cache_used))


def run_server(args: argparse.Namespace) -> None:
    import torch

    from flare.cellnet import Cell
    from flare.tensors import TensorDownloader, add_tensors

    cell = Cell(SERVER, listen="tcp://127.0.0.1:0", settings=settings()).start()
    names = client_names(args.clients)
    harness.emit("ready", url=cell.url)
    state: dict[str, Any] = {}

    def prepare() -> dict[str, Any]:
        for name in names:
            if not cell.wait_for_peer(name, timeout=args.timeout):
                raise SystemExit(f"client {name} not connected within {args.timeout}s")
        torch_ok = fobs_takes_torch()
        state["pre_model_rss_kib"] = harness.proc_status().get("VmRSS", 0)
        per = args.nbytes // args.tensors // 4
        # filled now, so every page is resident before the baseline, as a trained model's are
        sd = {f"layer{i}.weight": torch.full((per,), float(i), dtype=torch.float32) for i in range(args.tensors)}
        state["sd"] = sd
        # numpy views share the tensors' memory: the regular case sends the same bytes without a copy of its own
        as_torch = torch_ok and (args.case != "regular" or args.regular_tensors == "torch")
        state["payload"] = sd if as_torch else {k: t.numpy() for k, t in sd.items()}
        state["mem"] = harness.PeakMemory()
        state["mem"].baseline()
        state["cpu0"] = cpu_s()
        return {"torch_payload": as_torch}

    def run() -> dict[str, Any]:
        mem: harness.PeakMemory = state["mem"]
        out: dict[str, Any] = {}
        if args.case in ("regular", "via-download"):
            with Sampler() as sampler:
                t0 = time.monotonic()
                replies = cell.broadcast(names, CHANNEL, MODEL_TOPIC, payload=state["payload"], timeout=args.timeout)
                out["t_sent"] = time.monotonic()
            out["errors"] = [f"{n}: {r.return_code} {r.error}" for n, r in replies.items() if not r.ok]
        else:
            d = TensorDownloader(cell, num_receivers=len(names))
            with Sampler(d) as sampler:
                t0 = time.monotonic()
                ref_id = add_tensors(d, state["sd"])
                replies = cell.broadcast(names, CHANNEL, REF_TOPIC, payload={"ref_id": ref_id, "fqcn": cell.fqcn},
                                         timeout=args.timeout)
                out["t_sent"] = time.monotonic()
                outcome = d.wait(args.timeout)
            out["errors"] = [f"{n}: {r.return_code} {r.error}" for n, r in replies.items() if not r.ok]
            if outcome is None:
                out["errors"].append("transaction still running")
            else:
                if outcome.status != "finished":
                    out["errors"].append(f"transaction ended {outcome.status!r}")
                out["errors"] += [f"{r.receiver}: {r.status} {r.reason}" for r in outcome.receivers
                                  if r.status != "success"]
        out.update(t0=t0, t_done=time.monotonic(), memory=mem.report(), cache_mib=sampler.cache_mib,
                   cpu_s=cpu_s() - state["cpu0"])
        return out

    def stop() -> dict[str, Any]:
        cell.close()
        return {"pre_model_rss_mib": state.get("pre_model_rss_kib", 0) / 1024}

    harness.serve_commands({"prepare": prepare, "run": run, "stop": stop}, idle_timeout=10 * args.timeout)


def run_client(args: argparse.Namespace) -> None:
    import torch

    from flare import fobs
    from flare.tensors import download_tensors

    # Loading the first message registers torch's decomposers; one tiny round trip does it before the baseline, so
    # that the client's figure is the model's, not the decomposers'.
    fobs.loads(fobs.dumps(torch.zeros(1)))

    held: dict[str, Any] = {}
    got = threading.Event()

    def have(sd: Any, error: str = "") -> None:
        # stamped first: checking the dict is the bench's work, not the transfer's
        held.update(t_have=time.monotonic(), sd=sd, error=error)
        got.set()

    def on_model(msg: Any) -> bytes:
        have(msg.payload)
        return b"ok"

    def on_ref(msg: Any) -> bytes:
        ref = msg.payload

        def pull() -> None:
            try:
                error, sd = download_tensors(ref["fqcn"], ref["ref_id"], args.timeout, cell)
            except Exception as e:  # reported with the result, not raised in a thread
                error, sd = f"{type(e).__name__}: {e}", None
            have(sd, error or "")

        threading.Thread(target=pull, daemon=True, name="download").start()
        return b"ok"

    cell = harness.join_cell(args.name, args.url, SERVER, args.timeout, settings=settings())
    cell.register_request_cb(CHANNEL, MODEL_TOPIC, on_model)
    cell.register_request_cb(CHANNEL, REF_TOPIC, on_ref)
    mem = harness.PeakMemory()
    cpu0 = [0.0]
    harness.emit("ready")

    def baseline() -> dict[str, Any]:
        out = mem.baseline()
        cpu0[0] = cpu_s()
        return out

    def collect(wait_s: float) -> dict[str, Any]:
        got.wait(wait_s)
        report, cpu = mem.report(), cpu_s() - cpu0[0]
        if not got.is_set():
            return {"error": f"no state dict within {wait_s}s", "memory": report, "cpu_s": cpu}
        sd = held["sd"]
        problems = [held["error"]] if held["error"] else check_state_dict(sd, args.tensors, args.nbytes)
        kind = type(next(iter(sd.values()))).__module__.split(".")[0] if isinstance(sd, dict) and sd else "none"
        return {"t_have": held["t_have"], "error": "; ".join(problems), "kind": kind, "memory": report, "cpu_s": cpu}

    def stop() -> dict[str, Any]:
        held.clear()
        cell.close()
        return {}

    harness.serve_commands({"baseline": baseline, "collect": collect, "stop": stop}, idle_timeout=10 * args.timeout)


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator


def run_case(case: str, args: argparse.Namespace, nbytes: int) -> dict[str, Any]:
    """One case on fresh processes: the server, then the clients (each joins the server)."""
    common = ["--timeout", args.timeout, "--nbytes", nbytes, "--tensors", args.tensors]
    with Peers(env=INLINE_ENV if case == "regular" else None) as peers:
        server = peers.start("server", "bench_tensors.py", ["server", "--case", case, "--clients", args.clients,
                                                            "--regular-tensors", args.regular_tensors, *common])
        url = server.wait_ready(args.timeout)["url"]
        clients = [peers.start(name, "bench_tensors.py", ["client", "--name", name, "--url", url, *common])
                   for name in client_names(args.clients)]
        for c in clients:
            c.wait_ready(args.timeout)
        prep = server.call("prepare", args.timeout)
        for c in clients:
            c.call("baseline", args.timeout)
        ran = server.call("run", args.timeout + 30)
        deadline = time.monotonic() + args.timeout
        got = [c.call("collect", args.timeout + 30, wait_s=max(1.0, deadline - time.monotonic())) for c in clients]
        server_end = server.result(args.timeout, stop=True)
        for c in clients:
            c.result(args.timeout, stop=True)

    problems = list(ran["errors"]) + [f"{c.name}: {g['error']}" for c, g in zip(clients, got) if g["error"]]
    if problems:
        raise RuntimeError(f"{case}: " + "; ".join(problems[:10]))
    end = max(g["t_have"] for g in got)
    return {
        "case": case,
        "seconds": end - ran["t0"],
        "per_client_s": sorted(g["t_have"] - ran["t0"] for g in got),
        "send_returned_s": ran["t_sent"] - ran["t0"],
        "torch_payload": prep["torch_payload"],
        "client_kind": sorted({g["kind"] for g in got}),
        "server_memory": ran["memory"],
        "server_pre_model_rss_mib": server_end["pre_model_rss_mib"],
        "server_cache_mib": ran["cache_mib"],
        "client_memory": [g["memory"] for g in got],
        "server_cpu_s": ran["cpu_s"],
        "clients_cpu_s": sum(g["cpu_s"] for g in got),
    }


HOW_TO_READ = """\
**How to read these.** One server process sends one state dict to N client processes, each a cell with its own
connection to the server, all on this machine's two CPUs. Regular message: the dict is FOBS-serialized once into one
buffer and that buffer is streamed to every client at once; each client receives it into one buffer of the whole
size and gets the arrays as views over it (it sends numpy views of the tensors: FOBS in this build dumps torch
tensors into twice their size and loads them as copies). TensorDownloader: the server serves the tensors by
reference, each one serialized when first asked for and kept in its chunk cache while other clients still need it;
each client pulls them one by one and gets tensors as views over the replies. Regular message by download: the same
`broadcast` with default settings, where FOBS serves the tensors that way by itself and each client's load pulls
them. Server RSS+ leaves the model out (it was resident before
the baseline): what sending it cost. The speed of this machine drifts by tens of percent from run to run; memory
figures barely."""


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over its repetitions: the median wall time, and the worst memory of the server and of any client."""
    by_time = sorted(runs, key=lambda r: r["seconds"])
    worst = max(runs, key=lambda r: r["server_memory"]["peak_above_baseline_mib"])
    clients = [m["peak_above_baseline_mib"] for r in runs for m in r["client_memory"]]
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "all_seconds": [r["seconds"] for r in runs],
        "per_client_s": sorted(t for r in runs for t in r["per_client_s"]),
        "mid": by_time[(len(by_time) - 1) // 2],
        "server": worst,
        "server_rss": worst["server_memory"]["peak_above_baseline_mib"],
        "server_above_pre_model": worst["server_memory"]["end_hwm_mib"] - worst["server_pre_model_rss_mib"],
        "client_rss_max": max(clients),
        "client_rss_min": min(clients),
        "server_cpu_s": statistics.median(r["server_cpu_s"] for r in runs),
        "clients_cpu_s": statistics.median(r["clients_cpu_s"] for r in runs),
        "others_cpu_s": max(r["others_cpu_s"] for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "server", "client"])
    parser.add_argument("--mib", type=int, default=2048, help="state dict size in MiB (default 2048)")
    parser.add_argument("--tensors", type=int, default=64, help="tensors in the state dict (default 64)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every case, order rotated (default 3)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--regular-tensors", choices=["numpy", "torch"], default="numpy",
                        help="what the regular case sends inside the message (default numpy: see the docstring)")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit of every wait, seconds (default 300)")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    # peer options
    parser.add_argument("--case", choices=CASES)
    parser.add_argument("--url")
    parser.add_argument("--name")
    parser.add_argument("--nbytes", type=int)
    args = parser.parse_args(argv)

    if args.role != "bench":
        harness.peer_setup()
        return (run_server if args.role == "server" else run_client)(args)

    started = time.perf_counter()
    if args.mib * MIB % (args.tensors * 4):
        raise SystemExit(f"--mib {args.mib} does not split into {args.tensors} float32 tensors")
    nbytes = args.mib * MIB
    n = args.clients
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    cfg = settings()
    budget_mib, send_mib = harness.mib(cfg.download_cache_budget), harness.mib(cfg.download_send_budget)
    model_mib = harness.mib(nbytes)

    results: dict[str, Any] = {"runs": {case: [] for case in cases}}
    load = harness.OtherLoad()
    waited: list[float] = []
    for rep in range(args.reps):
        # rotated, so that no case always runs first (cold memory) or right after the same neighbour
        for case in cases[rep % len(cases):] + cases[: rep % len(cases)]:
            waited.append(load.wait_quiet(max(0.0, min(QUIET_MAX_WAIT, QUIET_BUDGET - sum(waited)))))
            log(f"{case} ({rep + 1}/{args.reps}): {nbytes:,} B in {args.tensors} tensors to {n} clients")
            r = run_case(case, args, nbytes)
            r["others_cpu_s"] = load.take()["other_cpu_s"]
            results["runs"][case].append(r)
            log(f"{case}: {r['seconds']:.1f} s, server RSS+ {r['server_memory']['peak_above_baseline_mib']:,.1f} MiB, "
                f"clients RSS+ up to {max(m['peak_above_baseline_mib'] for m in r['client_memory']):,.1f} MiB")

    summary = {case: summarize(results["runs"][case]) for case in cases}
    results["summary"] = summary
    def payload(case: str) -> str:
        runs = results["runs"].get(case, [])
        return "torch tensors" if runs and runs[0]["torch_payload"] else "numpy views of the tensors"

    labels = {
        "regular": f"regular message, {payload('regular')} inside it (`Cell.broadcast`, download path off)",
        "via-download": f"regular message, {payload('via-download')} by download (`Cell.broadcast`, default "
        "settings)",
        "downloader": "TensorDownloader (`add_tensors` / `download_tensors`, torch tensors)",
    }
    server_goal, client_goal = budget_mib + send_mib, model_mib + CLIENT_SLACK_MIB
    rows, goals, times = [], [], []
    for case in cases:
        sm = summary[case]
        per = sm["per_client_s"]
        rows.append([
            labels[case],
            sm["seconds"],
            per[0],
            per[-1],
            sm["server_rss"],
            server_goal,
            sm["server_above_pre_model"],
            sm["client_rss_min"],
            sm["client_rss_max"],
            client_goal,
        ])
        goals.append(f"{case}: server {sm['server_rss']:,.0f} of {server_goal:,.0f} "
                     + ("met" if sm["server_rss"] <= server_goal else "**not met**")
                     + f", clients up to {sm['client_rss_max']:,.0f} of {client_goal:,.0f} "
                     + ("met" if sm["client_rss_max"] <= client_goal else "**not met**"))
        times.append(f"{case} " + ", ".join(f"{s:.1f}" for s in sm["all_seconds"]))
    size = f"{model_mib:,.0f} MiB"
    notes = [
        f"{args.tensors} float32 tensors, {size} in all, from 1 server process to {n} client processes; "
        f"{args.reps} repetitions of every case on fresh processes, order rotated. Wall s: from the server starting "
        "its send to the last client holding the whole dict, the median of the repetitions ("
        + "; ".join(times) + "); client s: every client of every repetition, the same start to that client holding "
        "it. Server RSS+: peak above its baseline taken with the model already resident, the worst repetition; its "
        f"goal is download_cache_budget ({budget_mib:g} MiB) plus download_send_budget ({send_mib:g} MiB), the "
        "replies being sent. Server above pre-model: the same peak above its RSS before the model was made, model "
        f"included. Client RSS+: each client process above its own baseline, the least and the most over all clients "
        f"and repetitions; its goal is the model plus {CLIENT_SLACK_MIB:g} MiB. Goals: " + "; ".join(goals) + ".",
    ]
    if "regular" in summary:
        reg = summary["regular"]

        def less(a: float, b: float) -> str:
            return f"{(1 - b / a) * 100:.0f}%" if a > 0 else "n/a"

        for case in (c for c in cases if c != "regular"):
            other = summary[case]
            notes.append(
                f"{case} vs regular: server peak (model included) "
                f"{less(reg['server_above_pre_model'], other['server_above_pre_model'])} lower, server peak above "
                f"baseline {less(reg['server_rss'], other['server_rss'])} lower, the worst client "
                f"{less(reg['client_rss_max'], other['client_rss_max'])} lower, wall time "
                f"{other['seconds'] / reg['seconds']:.2f} x the regular message's."
            )
        notes.append("NVFlare reports a 20-50% reduction of peak memory for its TensorDownloader.")
    main_sec = {
        "title": f"A {size} state dict ({args.tensors} tensors) from 1 server to {n} clients: regular message vs "
        "TensorDownloader",
        "headers": ["case", "wall s", "client s min", "client s max", "server RSS+ MiB", "server goal MiB",
                    "server above pre-model MiB", "client RSS+ MiB min", "client RSS+ MiB max", "client goal MiB"],
        "digits": [0, 2, 2, 2, 1, 0, 1, 1, 1, 0],
        "rows": rows,
        "notes": notes,
    }
    gib_delivered = n * nbytes / (1 << 30)
    cpu_rows = []
    for case in cases:
        sm = summary[case]
        cpu_rows.append([
            labels[case],
            sm["mid"]["send_returned_s"],
            sm["server"]["server_cache_mib"] if case == "downloader" else None,
            sm["server"]["server_memory"]["minor_faults"],
            sm["server_cpu_s"],
            sm["clients_cpu_s"],
            (sm["server_cpu_s"] + sm["clients_cpu_s"]) / gib_delivered,
            sm["others_cpu_s"],
        ])
    cpu_sec = {
        "title": "What the server held, and the CPU it all took",
        "headers": ["case", "send call returned after s", "chunk cache peak MiB", "server minor faults",
                    "server CPU s", "clients CPU s", "CPU s per GiB delivered", "others' CPU s"],
        "digits": [0, 2, 1, 0, 1, 1, 2, 2],
        "rows": cpu_rows,
        "notes": [
            "Send call returned: `broadcast` of the model (it returns with the clients' replies, sent once their "
            "handlers have the dict), or of the reference (returns at once; the clients then pull), the median "
            "repetition. Chunk cache peak: sampled every "
            f"{SAMPLE_S * 1000:.0f} ms in the server, the repetition with its largest peak (budget {budget_mib:g} "
            "MiB); minor faults: the 4 KiB pages the server mapped while sending (memory allocated and touched). "
            "CPU: user + system seconds of the server and of all clients together while sending, medians of the "
            f"repetitions; per GiB delivered divides their sum by {gib_delivered:g} GiB. Others' CPU s: CPU time of "
            "processes outside this bench while a case ran (the worst repetition; `harness.OtherLoad`). Each run "
            f"starts once the machine is quiet, waiting at most {QUIET_MAX_WAIT:g} s for it ({sum(waited):.1f} s of "
            "such waiting in this run)."
        ],
    }
    secs = [main_sec, cpu_sec]
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_tensors took {elapsed:.1f} s)")
    if args.json:
        title = f"Tensors: a {size} state dict to {n} clients, regular message vs TensorDownloader"
        harness.write_report(args.json, "bench_tensors", title, elapsed, secs, results, how_to_read=HOW_TO_READ)


if __name__ == "__main__":
    main()
