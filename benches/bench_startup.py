"""Startup with many clients: a server process, N light clients (several per process, each with its own cell and
connection), one FedAvg round of a tiny numpy model. Prints the time from launching the clients to all registered,
from the job's start to its first task, the whole job, and the server's peak RSS above its baseline.

    .venv/bin/python benches/bench_startup.py [--clients 16 64 144] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import numpy as np

from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.cellnet import Cell
from flare.runtime import protocol as p

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "tests" / "peers" / "many_clients.py"
SCRIPT = REPO / "tests" / "jobs" / "np_client.py"
CLIENTS_PER_PROCESS = 36
log = harness.bench_logger("bench_startup")


def start_server(workspace: Path) -> tuple[subprocess.Popen, str]:
    url_file = workspace / "server.url"
    server = subprocess.Popen([sys.executable, "-m", "flare.runtime", "server", "--workspace",
                               str(workspace / "server"), "--url-file", str(url_file), "--log-config", "concise"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not url_file.exists():
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit("the server process did not start")
        time.sleep(0.05)
    return server, url_file.read_text().strip()


def run(clients: int, workspace: Path) -> dict:
    server, url = start_server(workspace)
    groups: list[subprocess.Popen] = []
    admin = Cell("admin-bench", parent_url=url).start()
    try:
        admin.wait_for_peer(p.SERVER_FQCN, 30)
        baseline = harness.proc_status(server.pid)["VmHWM"]
        launched = time.monotonic()
        for first in range(1, clients + 1, CLIENTS_PER_PROCESS):
            count = min(CLIENTS_PER_PROCESS, clients - first + 1)
            groups.append(subprocess.Popen(
                [sys.executable, str(PEER), "--server", url, "--workspace", str(workspace / "clients"),
                 "--first", str(first), "--count", str(count), "--sites-on-host", str(clients)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
        for group in groups:
            if '"ready"' not in group.stdout.readline():
                raise SystemExit("a client group did not start")
        registered = time.monotonic() - launched
        script = workspace / "np_client.py"
        shutil.copy(SCRIPT, script)
        recipe = NumpyFedAvgRecipe(name=f"startup-{clients}", min_clients=clients, num_rounds=1,
                                   model=np.zeros(16, np.float32), train_script=str(script))
        job_dir = recipe.export(workspace / "jobs")
        submitted = time.monotonic()
        reply = admin.request(p.SERVER_FQCN, p.CHANNEL_ADMIN, p.TOPIC_SUBMIT_JOB, {"job_dir": str(job_dir)},
                              timeout=30).raise_for_status()
        job_id = reply.payload["job_id"]
        while True:
            state = admin.request(p.SERVER_FQCN, p.CHANNEL_ADMIN, p.TOPIC_JOB_STATUS, {"job_id": job_id},
                                  timeout=30).raise_for_status().payload
            if state["status"].startswith("FINISHED"):
                break
            time.sleep(0.1)
        job_seconds = time.monotonic() - submitted
        peak = harness.proc_status(server.pid)["VmHWM"]
        return {"clients": clients, "registered_s": registered, "first_task_s": state["startup_s"],
                "job_s": job_seconds, "status": state["status"], "running": len(state["clients"]),
                "server_peak_above_baseline_mib": (peak - baseline) / 1024, "server_baseline_mib": baseline / 1024}
    finally:
        admin.close()
        for group in groups:
            group.stdin.close()
        for group in groups:
            try:
                group.wait(30)
            except subprocess.TimeoutExpired:
                group.kill()
        server.terminate()
        server.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64, 144])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = []
    for count in args.clients:
        with tempfile.TemporaryDirectory(prefix="flare-startup-") as tmp:
            log(f"{count} clients")
            results.append(run(count, Path(tmp)))
            log(json.dumps(results[-1]))
    section = {
        "title": "Startup with many clients (one FedAvg round, tiny model; clients in groups of "
                 f"{CLIENTS_PER_PROCESS} per process)",
        "headers": ["clients", "launch to all registered, s", "job start to first task, s", "whole job, s",
                    "clients running the job", "server peak above baseline, MiB", "server baseline, MiB"],
        "digits": [0, 2, 2, 2, 0, 1, 1],
        "rows": [[r["clients"], r["registered_s"], r["first_task_s"], r["job_s"], r["running"],
                  r["server_peak_above_baseline_mib"], r["server_baseline_mib"]] for r in results],
        "notes": ["The job starts once min_clients (all of them here) are registered; \"first task\" includes "
                  "deploying the job's app to every client at once."],
    }
    harness.print_sections([section])
    if args.json:
        harness.write_report(args.json, "bench_startup", "Startup with many clients", time.perf_counter() - started,
                             [section], results)
    return 0 if all(r["status"] == "FINISHED:COMPLETED" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
