"""Runs every benchmark, prints the figures, and rewrites ``docs/benchmarks.md``.

    make bench                               # = .venv/bin/python benches/run_all.py (after `make build`)
    .venv/bin/python benches/run_all.py --no-docs          # print only
    .venv/bin/python benches/run_all.py --only bench_cellnet

Benchmarks are ``benches/bench_*.py`` scripts (each run in a process of its own with ``--json FILE``; it prints its
tables and writes ``{"title", "command", "sections": [{"title", "headers", "rows", "digits", "notes"}]}``) and
``benches/test_bench_*.py`` pytest-benchmark files (run with ``-p no:cacheprovider --benchmark-only``; skipped with
a note where pytest-benchmark is not installed). They print figures and assert nothing about speed. If one fails,
the others still run, the script exits 1 and ``docs/benchmarks.md`` is left as it was.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from harness import markdown_table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOC = REPO / "docs" / "benchmarks.md"
SCRIPT_TIMEOUT = 600
PYTEST_TIMEOUT = 300

HOW_TO_READ = """\
**How to read these.** Every figure comes from one run on the machine above, a small shared VM whose speed drifts
from minute to minute, so absolute numbers move between runs by tens of percent; the **ratios within one run**
(flare and raw TCP measured back to back, in interleaved rounds) are what to compare, across runs and across
changes. MiB/s is 2**20 bytes per second of payload. "Raw TCP" is the ceiling for two Python processes on loopback:
plain blocking sockets, one preallocated buffer on each side; "raw TCP fresh-buffer" receives each message into a
new buffer, which is what a receiver that keeps each message as its own object (flare: one buffer per message,
allocated at the announced size) pays in page faults. "RSS+" is a process's peak resident memory above its own baseline taken just
before the measured work; in this version expect about one message on the receiving side of each direction and
nothing on the sending side (payloads are sent from the caller's buffer without a copy). The small round trips are
bounded by thread hand-offs, not bytes: compare them with earlier runs of the same table, not with raw TCP alone.
The in-process table (pytest-benchmark) has both cells in one process; use it to spot regressions in flare's own
path, and the two-process tables for what a deployment sees."""


def log(msg: str) -> None:
    print(f"[run_all] {msg}", file=sys.stderr, flush=True)


def run_script(script: Path, out_dir: Path) -> dict[str, Any]:
    """Runs one ``bench_*.py`` (its stdout is shown only if it fails; progress on stderr); returns its JSON."""
    out = out_dir / f"{script.stem}.json"
    argv = [sys.executable, str(script), "--json", str(out)]
    log(f"running {script.name}")
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, timeout=SCRIPT_TIMEOUT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-5000:])
        raise RuntimeError(f"{script.name} exited with {proc.returncode}")
    doc = json.loads(out.read_text())
    doc.setdefault("elapsed_s", time.perf_counter() - started)
    doc["command"] = f"python benches/{script.name}"
    return doc


def run_pytest_benchmarks(files: list[Path], out_dir: Path) -> dict[str, Any] | None:
    """Runs the pytest-benchmark files; returns a section document, or None when pytest-benchmark is missing."""
    if importlib.util.find_spec("pytest_benchmark") is None:
        log("pytest-benchmark is not installed: skipping " + ", ".join(f.name for f in files))
        return None
    out = out_dir / "pytest-benchmark.json"
    rel = [str(f.relative_to(REPO)) for f in files]
    argv = [sys.executable, "-m", "pytest", *rel, "-p", "no:cacheprovider", "--benchmark-only", f"--benchmark-json={out}"]
    log("running " + " ".join(rel))
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, timeout=PYTEST_TIMEOUT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-5000:])
        raise RuntimeError(f"pytest benchmarks exited with {proc.returncode}")
    data = json.loads(out.read_text())
    rows = []
    for b in data["benchmarks"]:
        st, extra = b["stats"], b.get("extra_info", {})
        rows.append(
            [
                f"`{b['name']}`",
                st["rounds"],
                st["median"] * 1e6,
                st["mean"] * 1e6,
                st["iqr"] * 1e6,
                1.0 / st["median"],
                extra.get("mib_per_s"),
                extra.get("peak_rss_above_baseline_mib"),
            ]
        )
    return {
        "bench": "pytest-benchmark",
        "title": "In-process timings (pytest-benchmark)",
        "command": "python -m pytest " + " ".join(rel) + " -p no:cacheprovider --benchmark-only",
        "elapsed_s": time.perf_counter() - started,
        "sections": [
            {
                "title": "Two cells in one process over TCP loopback",
                "headers": ["benchmark", "rounds", "median µs", "mean µs", "IQR µs", "ops/s (median)", "MiB/s", "RSS+ MiB"],
                "digits": [0, 0, 1, 1, 1, 1, 0, 1],
                "rows": rows,
                "notes": [
                    "`test_small_round_trip`: 16-byte request echoed back; `test_bulk[upload_64MiB]`: 64 MiB request, "
                    "empty reply; `test_bulk[echo_64MiB]`: 64 MiB echoed back (MiB/s counts both ways). RSS+ is the "
                    "whole process (both cells) above its baseline."
                ],
            }
        ],
    }


def render_doc(machine: dict[str, Any], command: str, docs: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` (what `make bench` runs) on {machine['date']}; run it again to refresh this page.",
        "The scripts are in `benches/`: `harness.py` (processes, memory, tables, the raw TCP reference), "
        + ", ".join(f"`{p.name}`" for p in sorted(HERE.glob("bench_*.py")) + sorted(HERE.glob("test_bench_*.py")))
        + ", and `run_all.py`.",
        "",
        "## Machine",
        "",
        markdown_table(
            ["", ""],
            [
                ["CPUs", f"{machine['cpus']} ({machine['cpus_usable']} usable by this process)"],
                ["CPU model", machine["cpu_model"]],
                ["kernel", machine["kernel"]],
                ["memory", f"{machine['memory_gib']:.1f} GiB"],
                ["Python", machine["python"]],
                ["flare", f"{machine['flare']} from `{machine['flare_path']}`"],
                ["source", f"git `{machine['commit']}`"],
                ["date", machine["date"]],
            ],
        ),
        "",
        HOW_TO_READ,
        "",
    ]
    for doc in docs:
        lines += [f"## {doc['title']}", "", f"`{doc['command']}` ({doc['elapsed_s']:.0f} s)", ""]
        if doc.get("how_to_read"):  # a bench's own reading notes, where the page-wide ones above do not cover it
            lines += [doc["how_to_read"], ""]
        for sec in doc["sections"]:
            lines += [f"### {sec['title']}", "", markdown_table(sec["headers"], sec["rows"], digits=sec.get("digits", 1)), ""]
            for note in sec.get("notes", []):
                lines += [note, ""]
    if skipped:
        lines += ["## Not run", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", action="append", default=[], help="run only benches whose file name contains this (docs untouched)"
    )
    parser.add_argument("--no-docs", action="store_true", help="print the figures, leave docs/benchmarks.md alone")
    parser.add_argument("--output", type=Path, default=DOC, help="where to write the page (default docs/benchmarks.md)")
    args = parser.parse_args(argv)

    def wanted(p: Path) -> bool:
        return not args.only or any(o in p.name for o in args.only)

    scripts = [p for p in sorted(HERE.glob("bench_*.py")) if wanted(p)]
    pytest_files = [p for p in sorted(HERE.glob("test_bench_*.py")) if wanted(p)]
    machine = harness.machine_info()
    try:
        import flare

        where = Path(flare.__file__).resolve().parent
        # Relative to the checkout when flare is installed from it (editable), so the page names no local paths.
        machine["flare_path"] = str(where.relative_to(HERE.parent)) if where.is_relative_to(HERE.parent) else "site-packages"

    except ImportError:
        machine["flare_path"] = "not importable"
    started = time.perf_counter()
    docs: list[dict[str, Any]] = []
    skipped: list[str] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flare-bench-") as tmp:
        for script in scripts:
            try:
                docs.append(run_script(script, Path(tmp)))
            except Exception as e:  # one bench failing must not hide the others' figures
                failed.append(f"{script.name}: {e}")
                log(f"FAILED {script.name}: {e}")
        if pytest_files:
            try:
                doc = run_pytest_benchmarks(pytest_files, Path(tmp))
                if doc is None:
                    skipped.append(
                        ", ".join(f"`{f.name}`" for f in pytest_files)
                        + ": pytest-benchmark is not installed (`pip install pytest-benchmark`)."
                    )
                else:
                    docs.append(doc)
            except Exception as e:
                failed.append(f"pytest benchmarks: {e}")
                log(f"FAILED pytest benchmarks: {e}")

    command = "python benches/run_all.py" + "".join(f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:]))
    page = render_doc(machine, command, docs, skipped)
    print("\n" + "=" * 100 + "\n")
    print(page)
    log(f"all benches took {time.perf_counter() - started:.0f} s")
    if failed:
        log("failed: " + "; ".join(failed) + f" — {args.output} left unchanged")
        return 1
    if args.only and args.output == DOC:
        log(f"--only: {DOC.relative_to(REPO)} left unchanged (give --output to write a partial page elsewhere)")
    elif not args.no_docs:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
