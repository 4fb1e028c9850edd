"""FedAvg jobs with a large model on a POC deployment: wall time and each process's peak memory.

    .venv/bin/python benches/bench_fedavg.py [--mib 1024] [--layers 8] [--cases numpy,torch,torch-numpy-server]
    .venv/bin/python benches/bench_fedavg.py --mib 128 --cases numpy --raw-reps 1   # a quick check
    .venv/bin/python benches/bench_fedavg.py --workspace DIR                       # keep the POC workspaces and logs

Processes: ``PocEnv(num_clients=2)``: a server process and two client processes (site-1, site-2) on loopback TCP,
started fresh for every case; each site runs ``fedavg_client.py`` in its own process (the recipe's default), which
adds 1 in place to every array or tensor it gets and sends the same objects back. 2 rounds.

Cases (the model: ``--layers`` float32 entries holding ``--mib`` MiB in all, entry i filled with i):

* **numpy**: ``NumpyFedAvgRecipe`` with a dict of numpy arrays;
* **torch**: ``FedAvgRecipe`` with ``fedavg_model.FlatLayers`` (an ``nn.Module`` of nothing but those weights) and
  ``server_expected_format="pytorch"``: torch tensors end to end;
* **torch-numpy-server**: the same with the recipe's default ``server_expected_format="numpy"``: the server holds
  numpy arrays and each site converts at ``receive`` and ``send``.

Before the measured job every case runs the same recipe once with a tiny model, so that the libraries a job imports
(torch alone is about 500 MiB resident) and the runtime's one-time set-up are in the baseline and the figures are the
model's. Memory, per process, read from outside (``harness.proc_status``): baseline = VmHWM right before the measured
job is deployed; peak = VmHWM once it has ended (before the processes stop); the figure is peak - baseline. A thread
also samples every process's VmRSS every 50 ms, to say when the peak happened; each process's CPU time and minor page
faults over the job come from ``/proc/<pid>/stat``.

Time: wall = deploy (``recipe.execute(env)``) to the final status seen by polling every 50 ms, less the export of
the job folder (``recipe.job.export``, timed on its own: it writes the initial model, a file of the model's size).
Phases come from the server's job log. Reference: raw TCP loopback between two Python processes (``harness.raw_tcp``,
1 GiB rounds, before and after the jobs; the faster median counts), into a preallocated buffer and, as a second
reference, into a fresh buffer per message. A FedAvg round moves the model from the server to each client and back,
so the job moves 2 rounds x 2 clients x 2 directions x the model; "raw time" is those bytes at raw TCP speed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import harness
from harness import MIB, print_sections

CASES = ("numpy", "torch", "torch-numpy-server")
CLIENTS = 2
ROUNDS = 2
PROCESSES = ("server", *(f"site-{i}" for i in range(1, CLIENTS + 1)))
CLIENT_SCRIPT = harness.HERE / "fedavg_client.py"
WARMUP_NUMEL = 1024
SAMPLE_S = 0.05
POLL_S = 0.05
SERVER_SLACK_MIB = 128.0
CLIENT_SLACK_MIB = 128.0
RAW_TIME_LIMIT = 3.0
QUIET_MAX_WAIT = 10.0  # s: waiting for a quiet machine before a measured job
PAGE = os.sysconf("SC_PAGE_SIZE")
CLIENT_LINE = re.compile(r"fedavg_client (site-\d+) round (\d+): (\d+) (\w+) entries, (\d+) read-only copied")
# the workflow's records in the server's job log (its logger is named after the workflow class: FedAvg, PTFedAvg)
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - \w*FedAvg - .*?INFO - (.*)$", re.MULTILINE)
SAVED = re.compile(r"Model saved to .* in ([\d.]+) s")

log = harness.bench_logger("bench_fedavg")


def numpy_model(layers: int, numel: int) -> dict[str, Any]:
    import numpy as np

    return {f"layers.{i}.weight": np.full(numel, i, dtype=np.float32) for i in range(layers)}


def make_recipe(case: str, layers: int, numel: int) -> Any:
    """The recipe of ``case`` with a model of ``layers`` entries of ``numel`` float32 each."""
    if case == "numpy":
        from flare.app_common.np.recipes import NumpyFedAvgRecipe

        return NumpyFedAvgRecipe(name="bench-fedavg", min_clients=CLIENTS, num_rounds=ROUNDS,
                                 model=numpy_model(layers, numel), train_script=str(CLIENT_SCRIPT))
    from fedavg_model import FlatLayers

    from flare.app_opt.pt.recipes import FedAvgRecipe

    server_format = "pytorch" if case == "torch" else "numpy"
    return FedAvgRecipe(name="bench-fedavg", min_clients=CLIENTS, num_rounds=ROUNDS, model=FlatLayers(layers, numel),
                        train_script=str(CLIENT_SCRIPT), server_expected_format=server_format)


def cpu_and_faults(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds and minor page faults of a process so far (its exited threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


class RssSampler:
    """Samples the VmRSS of the given processes every ``SAMPLE_S`` seconds: ``(seconds since start, MiB)`` each."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self.started = time.monotonic()

    def __enter__(self) -> RssSampler:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            now = time.monotonic() - self.started
            for name, pid in self.pids.items():
                self.samples[name].append((now, harness.proc_status(pid).get("VmRSS", 0) / 1024))
            if self._stop.wait(SAMPLE_S):
                return

    def largest(self, name: str) -> tuple[float, float]:
        """The largest sample of ``name``: (seconds since start, MiB)."""
        return max(self.samples[name], key=lambda s: s[1])


def run_job(env: Any, recipe: Any, timeout: float) -> dict[str, Any]:
    """Deploys the recipe's job on the running ``env`` and waits for its final status; times the export apart.

    Times are seconds after the deploy call, export excluded (it runs first, inside deploy)."""
    from flare.apis.fl_constant import RunStatus

    export = recipe.job.export
    export_s: list[float] = []

    def timed_export(job_root: Any) -> Path:
        t0 = time.monotonic()
        path = export(job_root)
        export_s.append(time.monotonic() - t0)
        return path

    recipe.job.export = timed_export
    t0, wall_t0 = time.monotonic(), time.time()
    run = recipe.execute(env)
    t_submitted = time.monotonic()
    deadline = t0 + timeout
    while (status := env.get_job_status(run.get_job_id())) not in RunStatus.FINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the job did not end within {timeout:g} s (status {status})")
        time.sleep(POLL_S)
    t_end = time.monotonic()
    if status != RunStatus.FINISHED_COMPLETED:
        raise RuntimeError(f"the job ended {status}: {env.job_error(run.get_job_id())}")
    exported = sum(export_s)
    return {
        "job_id": run.get_job_id(),
        "export_s": exported,
        "submitted_s": t_submitted - t0 - exported,
        "wall_s": t_end - t0 - exported,
        "t0": t0,
        "wall_t0": wall_t0 + exported,
    }


def server_phases(workspace: Path, job_id: str, wall_t0: float) -> dict[str, Any]:
    """When the server's workflow started, had its initial model, began each round and saved, from its job log:
    seconds after ``wall_t0`` (the deploy, export excluded)."""
    text = (workspace / "server" / job_id / "log.txt").read_text(errors="replace")
    events: list[tuple[float, str]] = []
    for stamp, message in LOG_LINE.findall(text):
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() - wall_t0
        events.append((at, message))

    def first(prefix: str) -> float | None:
        return next((at for at, message in events if message.startswith(prefix)), None)

    return {
        "started": first("Start FedAvg"),
        "rounds": [first(f"Round {r} started") for r in range(ROUNDS)],
        "finished": first("Finished FedAvg"),
        "saving_s": sum((float(m[1]) for _, message in events if (m := SAVED.match(message))), 0.0),
    }


def check_global_model(workspace: Path, job_id: str, layers: int) -> list[str]:
    """What is wrong with the saved global model: every entry i must hold i + ROUNDS (each round adds 1)."""
    found = sorted((workspace / "server" / job_id).rglob("FL_global_model.*"))
    if not found:
        return ["no FL_global_model saved"]
    path = found[0]
    if path.suffix == ".pt":
        import torch

        loaded = torch.load(path, mmap=True, weights_only=True)
        entries = {k: v.numpy() for k, v in loaded.get("model", loaded).items()}
    else:
        import numpy as np

        entries = np.load(path)
    problems = []
    for i in range(layers):
        value = entries[f"layers.{i}.weight"]
        ends = (float(value[0]), float(value[-1]))
        if ends != (i + ROUNDS, i + ROUNDS):
            problems.append(f"layers.{i}.weight holds {ends[0]}..{ends[1]}, not {i + ROUNDS}")
    return problems[:5]


def client_reports(workspace: Path, log_offsets: dict[str, int]) -> list[dict[str, Any]]:
    """What each site's training script said it got, from the sites' logs past ``log_offsets`` (the measured job's
    part)."""
    out = []
    for name, offset in log_offsets.items():
        with open(workspace / f"{name}.process.log", "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        out += [{"site": m[1], "round": int(m[2]), "entries": int(m[3]), "kind": m[4], "copied": int(m[5])}
                for m in CLIENT_LINE.finditer(text)]
    return out


def run_case(case: str, args: argparse.Namespace, root: Path, load: harness.OtherLoad) -> dict[str, Any]:
    """One case on a fresh POC deployment: the warm-up job, then the measured one."""
    from flare.recipe import PocEnv

    workspace = root / case
    numel = args.mib * MIB // args.layers // 4
    model_mib = harness.mib(numel * 4 * args.layers)
    env = PocEnv(num_clients=CLIENTS, extra={"workspace_root": str(workspace)})
    try:
        env.start()
        pids = {name: env.processes[name].pid for name in PROCESSES}
        log(f"{case}: warm-up job ({args.layers} x {WARMUP_NUMEL} float32)")
        run_job(env, make_recipe(case, args.layers, WARMUP_NUMEL), args.timeout)
        log(f"{case}: building the {model_mib:,.0f} MiB model")
        recipe = make_recipe(case, args.layers, numel)
        log_offsets = {name: (workspace / f"{name}.process.log").stat().st_size for name in PROCESSES[1:]}
        # started once other processes leave the CPUs alone, so that the job does not begin in someone's burst
        quiet_wait_s = load.wait_quiet(QUIET_MAX_WAIT)
        baseline = {name: harness.proc_status(pid) for name, pid in pids.items()}
        cpu0 = {name: cpu_and_faults(pid) for name, pid in pids.items()}
        log(f"{case}: measured job")
        with RssSampler(pids) as sampler:
            timing = run_job(env, recipe, args.timeout)
        others = load.take()["other_cpu_s"]
        peak = {name: harness.proc_status(pid) for name, pid in pids.items()}
        cpu1 = {name: cpu_and_faults(pid) for name, pid in pids.items()}
        del recipe
        problems = check_global_model(workspace, timing["job_id"], args.layers)
        if problems:
            raise RuntimeError(f"{case}: " + "; ".join(problems))
        phases = server_phases(workspace, timing["job_id"], timing["wall_t0"])
    finally:
        env.stop()
    processes = {}
    for name in PROCESSES:
        at, largest = sampler.largest(name)
        user, system, faults = (after - before for after, before in zip(cpu1[name], cpu0[name]))
        processes[name] = {
            "baseline_hwm_mib": baseline[name]["VmHWM"] / 1024,
            "baseline_rss_mib": baseline[name]["VmRSS"] / 1024,
            "peak_hwm_mib": peak[name]["VmHWM"] / 1024,
            "end_rss_mib": peak[name]["VmRSS"] / 1024,
            "peak_above_baseline_mib": (peak[name]["VmHWM"] - baseline[name]["VmHWM"]) / 1024,
            "largest_sample_mib": largest,
            "largest_sample_at_s": at - (timing["t0"] - sampler.started) - timing["export_s"],
            "user_s": user,
            "system_s": system,
            "minor_faults": faults,
        }
    # the POC processes are this bench's children but not reaped yet: OtherLoad counts them as others
    others -= sum(p["user_s"] + p["system_s"] for p in processes.values())
    return {"case": case, "model_mib": model_mib, **timing, "phases": phases, "processes": processes,
            "others_cpu_s": max(0.0, others), "quiet_wait_s": quiet_wait_s,
            "clients": client_reports(workspace, log_offsets), "rss_samples": sampler.samples}


def times_model(mib_value: float, model_mib: float) -> str:
    return f"{mib_value:,.1f} ({mib_value / model_mib:.2f} x)"


LABELS = {
    "numpy": "numpy: `NumpyFedAvgRecipe`, dict of arrays",
    "torch": "torch: `FedAvgRecipe`, `server_expected_format=\"pytorch\"`",
    "torch-numpy-server": "torch: `FedAvgRecipe`, `server_expected_format=\"numpy\"` (default)",
}

HOW_TO_READ = f"""\
**How to read these.** The issue's benchmark: a FedAvg job of {CLIENTS} clients and {ROUNDS} rounds on a `PocEnv`
(the server and each client a process of its own, loopback TCP) with a model of 8 float32 arrays or tensors, each site
adding 1 in place to what it gets and sending the same objects back (`benches/fedavg_client.py`). Goals: the server's
peak resident memory at most 2 x model + {SERVER_SLACK_MIB:g} MiB above its baseline, each client's at most model +
{CLIENT_SLACK_MIB:g} MiB, and the wall time at most {RAW_TIME_LIMIT:g} x the time raw TCP loopback takes to move the
bytes the job moves ({ROUNDS} rounds x {CLIENTS} clients x 2 directions x the model). Every figure comes from one run
on the machine above; this VM maps fresh memory slowly (each new page is a fault, and memory it handed back to its
host comes back slower still), so a process that allocates its buffers anew for every message pays for it in time:
the fresh-buffer raw TCP reference and each process's page faults show how much."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="model size in MiB (default 1024)")
    parser.add_argument("--layers", type=int, default=8, help="arrays or tensors the model has (default 8)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--raw-reps", type=int, default=3, help="raw TCP rounds of each kind, before and after "
                        "(default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="limit of each job, seconds (default 300)")
    parser.add_argument("--workspace", type=Path, help="keep the POC workspaces (logs, results) here")
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if unknown := set(cases) - set(CASES):
        raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
    raw_bytes = min(args.mib * MIB, 1024 * MIB)
    results: dict[str, Any] = {}

    def measure_raw(when: str) -> None:
        log(f"raw TCP {when}: {args.raw_reps} x {raw_bytes:,} B, preallocated and fresh buffers")
        results[f"raw_{when}"] = harness.raw_tcp(raw_bytes, args.raw_reps)
        results[f"raw_fresh_{when}"] = harness.raw_tcp(raw_bytes, args.raw_reps, fresh=True)

    measure_raw("before")
    root = args.workspace or Path(tempfile.mkdtemp(prefix="flare-bench-fedavg-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = []
    load = harness.OtherLoad()
    try:
        for case in cases:
            r = run_case(case, args, root, load)
            log(f"{case}: {r['wall_s']:.1f} s (export {r['export_s']:.1f} s), RSS+ "
                + ", ".join(f"{n} {p['peak_above_baseline_mib']:,.0f} MiB" for n, p in r["processes"].items()))
            runs.append(r)
    finally:
        if args.workspace is None:
            shutil.rmtree(root, ignore_errors=True)
    measure_raw("after")
    results["runs"] = runs
    raw_mib_s = max(results["raw_before"]["median_mib_s"], results["raw_after"]["median_mib_s"])
    fresh_mib_s = max(results["raw_fresh_before"]["median_mib_s"], results["raw_fresh_after"]["median_mib_s"])

    size = f"{args.mib:,} MiB"
    rows, goals, phase_rows, process_rows, got = [], [], [], [], []
    for r in runs:
        model_mib = r["model_mib"]
        moved_mib = ROUNDS * CLIENTS * 2 * model_mib
        raw_s, fresh_s = moved_mib / raw_mib_s, moved_mib / fresh_mib_s
        procs = r["processes"]
        rows.append([LABELS[r["case"]], r["wall_s"], raw_s, r["wall_s"] / raw_s, r["wall_s"] / fresh_s,
                     moved_mib / r["wall_s"],
                     *(times_model(procs[n]["peak_above_baseline_mib"], model_mib) for n in PROCESSES)])
        verdicts = [("wall time", r["wall_s"] / raw_s, RAW_TIME_LIMIT, "x the raw-loopback time")]
        verdicts += [(n, procs[n]["peak_above_baseline_mib"],
                      2 * model_mib + SERVER_SLACK_MIB if n == "server" else model_mib + CLIENT_SLACK_MIB, "MiB")
                     for n in PROCESSES]
        goals.append(f"{r['case']}: " + "; ".join(
            f"{what} {value:,.2f} of {limit:,.2f} {unit}: " + ("met" if value <= limit else "**missed**")
            for what, value, limit, unit in verdicts))
        ph = r["phases"]
        round_starts = [*ph["rounds"], ph["finished"]]
        phase_rows.append([r["case"], r["export_s"], r["submitted_s"], ph["started"], ph["rounds"][0],
                           *(b - a if a is not None and b is not None else None
                             for a, b in zip(round_starts, round_starts[1:])),
                           ph["saving_s"], r["wall_s"], r["others_cpu_s"]])
        for n in PROCESSES:
            p = procs[n]
            process_rows.append([r["case"], n, p["baseline_rss_mib"], p["baseline_hwm_mib"], p["peak_hwm_mib"],
                                 p["peak_above_baseline_mib"], p["largest_sample_at_s"], p["end_rss_mib"],
                                 p["user_s"], p["system_s"], p["minor_faults"],
                                 p["minor_faults"] * PAGE / (1 << 30)])
        reports = r["clients"]
        kind = reports[0]["kind"] if reports else "?"
        got.append(f"{r['case']}: {sum(c['entries'] for c in reports)} {kind} entries, "
                   f"{sum(c['copied'] for c in reports)} of them read-only numpy arrays that had to be copied")

    main_sec = {
        "title": f"FedAvg, {CLIENTS} clients, {ROUNDS} rounds, a {size} model of {args.layers} float32 entries",
        "headers": ["case", "wall s", "raw-loopback time s", "ratio", "ratio to fresh-buffer raw", "job MiB/s",
                    "server RSS+ MiB (x model)", "site-1 RSS+ MiB (x model)", "site-2 RSS+ MiB (x model)"],
        "digits": [0, 1, 1, 2, 2, 0, 0, 0, 0],
        "rows": rows,
        "notes": [
            f"One job per case on a fresh `PocEnv`, after a warm-up job of the same recipe with a tiny model (so "
            "that imports, torch's included, are in the baseline). Wall s: `recipe.execute(env)` to the final status "
            "(polled every 50 ms), less the export of the job folder, which writes the initial model (below). "
            f"Raw-loopback time: the {ROUNDS} x {CLIENTS} x 2 x {size} the job moves at raw TCP loopback speed "
            f"({raw_mib_s:,.0f} MiB/s, preallocated buffers; the goal's reference); ratio = wall / raw time; ratio to "
            f"fresh-buffer raw: the same against raw TCP into a new buffer per message ({fresh_mib_s:,.0f} MiB/s). "
            "Job MiB/s: those bytes / wall s. RSS+: the process's peak (VmHWM after the job) above its VmHWM right "
            "before the job was deployed, and that as a multiple of the model.",
            f"Goals: wall time at most {RAW_TIME_LIMIT:g} x the raw-loopback time; the server at most 2 x model + "
            f"{SERVER_SLACK_MIB:g} MiB, each client at most model + {CLIENT_SLACK_MIB:g} MiB. "
            + " ".join(g + "." for g in goals),
            "What the sites' script got, over both rounds: " + "; ".join(got) + ". `fedavg_client.py` copies a "
            "read-only numpy array, one at a time, before adding to it in place. Torch tensors are added to in place "
            "as they come; those of the torch case are views over the received buffers, which flare hands out "
            "read-only, but torch does not enforce that (`flare.tensors.safetensors.decode_torch`).",
        ],
    }
    phase_sec = {
        "title": "Where the time goes",
        "headers": ["case", "export s", "submit s", "workflow started at s", "round 0 started at s",
                    *(f"round {r} s" for r in range(ROUNDS)), "saving s", "wall s", "others' CPU s"],
        "digits": [0, *[1] * (ROUNDS + 7)],
        "rows": phase_rows,
        "notes": [
            "Seconds after the deploy call, the export excluded (it runs first, inside deploy, and is not in wall "
            "s). Submit: until the server accepted the job (it copies the job folder). The workflow starts once the "
            "server's job is set up and deployed to the clients; round 0 starts once the initial model is loaded. "
            "Round r s: from its start to the next round's (or the end of the workflow): sending the model, the "
            "clients' work, their results folded in, and the model saved (saving s, both rounds). From the server's "
            "job log. Others' CPU s: CPU time that processes outside this bench and its POC processes used during "
            "the job (`harness.OtherLoad`; this machine is shared); each job starts once the machine is quiet, "
            f"waiting at most {QUIET_MAX_WAIT:g} s for it (" + ", ".join(f"{r['case']} {r['quiet_wait_s']:.1f} s"
                                                                        for r in runs) + ")."
        ],
    }
    process_sec = {
        "title": "Memory, CPU and page faults per process",
        "headers": ["case", "process", "baseline RSS MiB", "baseline HWM MiB", "peak HWM MiB", "RSS+ MiB",
                    "largest RSS sample at s", "RSS after the job MiB", "user s", "system s", "minor faults",
                    "GiB faulted in"],
        "digits": [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1],
        "rows": process_rows,
        "notes": [
            "Read from outside (`/proc/<pid>/status` and `/proc/<pid>/stat`) during the measured job. Largest RSS "
            f"sample at s: when the {SAMPLE_S * 1000:.0f} ms samples of VmRSS peaked, seconds after the deploy "
            "(export excluded). CPU and minor faults: over the job, all threads of the process; a minor fault maps "
            f"one {PAGE // 1024} KiB page of memory the process touches for the first time, so GiB faulted in is "
            "how much fresh memory it wrote to (the model moves 4 x through each client and 8 x through the server "
            "in these jobs)."
        ],
    }
    raw_rows = [[label, results[key]["median_mib_s"], results[key]["best_mib_s"]]
                for label, key in (("raw TCP, before", "raw_before"), ("raw TCP, after", "raw_after"),
                                   ("raw TCP fresh-buffer, before", "raw_fresh_before"),
                                   ("raw TCP fresh-buffer, after", "raw_fresh_after"))]
    raw_sec = {
        "title": "Reference: raw TCP loopback, one pair of Python processes",
        "headers": ["", "median MiB/s", "best MiB/s"],
        "digits": [0, 0, 0],
        "rows": raw_rows,
        "notes": [
            f"`harness.raw_tcp`: {args.raw_reps} rounds of {raw_bytes / MIB:,.0f} MiB, `sendall` of a preallocated "
            "buffer and a 1-byte answer, received into one preallocated, already-touched buffer (raw TCP) or into a "
            "new buffer per message (fresh-buffer), before and after the jobs; the faster median of each is the "
            "reference above."
        ],
    }
    secs = [main_sec, phase_sec, process_sec, raw_sec]
    elapsed = time.perf_counter() - started
    print_sections(secs)
    print(f"\n(bench_fedavg took {elapsed:.1f} s)")
    if args.json:
        for key in ("raw_before", "raw_after", "raw_fresh_before", "raw_fresh_after"):
            results[key].pop("seconds", None)
        harness.write_report(args.json, "bench_fedavg", "FedAvg jobs", elapsed, secs, results,
                             how_to_read=HOW_TO_READ)


if __name__ == "__main__":
    main()
