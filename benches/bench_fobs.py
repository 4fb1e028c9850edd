"""FOBS memory: dumps and loads of an object holding large numpy arrays, in one process.

    .venv/bin/python benches/bench_fobs.py [--mib 1024] [--arrays 16] [--json out.json]

The arrays are allocated before the baseline, as an application's model already is, so "peak above baseline" is
what serialization itself added. dumps writes the output once (the arrays' bytes go straight from their memory into
it); loads builds the arrays over that output without copying. The floor is therefore one copy of the arrays: the
serialized bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import harness
from flare import fobs

MIB = 1024 * 1024

HOW_TO_READ = (
    "Peak above baseline: VmHWM at the end minus VmRSS after the arrays were made (harness.PeakMemory). The "
    "serialized output is one copy of the arrays, so a figure close to the arrays' size means no other copy was made."
)


def run(total_mib: int, count: int) -> dict:
    per = total_mib * MIB // count // 4
    arrays = {f"layer{i}.weight": np.full(per, i, dtype=np.float32) for i in range(count)}
    total = sum(a.nbytes for a in arrays.values())
    peak = harness.PeakMemory()
    peak.baseline()
    t0 = time.perf_counter()
    data = fobs.dumps({"params": arrays, "round": 3})
    t1 = time.perf_counter()
    back = fobs.loads(data)
    t2 = time.perf_counter()
    mem = peak.report()
    wire = np.frombuffer(data, dtype=np.uint8)
    views = all(np.may_share_memory(a, wire) for a in back["params"].values())
    same = all(np.array_equal(arrays[k], v) for k, v in back["params"].items())
    return {
        "arrays_mib": total / MIB,
        "serialized_mib": len(data) / MIB,
        "peak_above_baseline_mib": mem["peak_above_baseline_mib"],
        "beyond_arrays_mib": mem["peak_above_baseline_mib"],
        "hwm_reset": mem["hwm_reset"],
        "dumps_s": t1 - t0,
        "loads_s": t2 - t1,
        "arrays_are_views_of_input": views,
        "values_equal": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="total size of the arrays, MiB")
    parser.add_argument("--arrays", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results and tables here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    r = run(args.mib, args.arrays)
    section = {
        "title": f"flare.fobs dumps + loads of {r['arrays_mib']:.0f} MiB of numpy arrays ({args.arrays} arrays)",
        "headers": ["arrays, MiB", "serialized, MiB", "peak above baseline, MiB", "dumps, s", "loads, s",
                    "loaded arrays are views of the input"],
        "digits": [0, 1, 1, 3, 3, 0],
        "rows": [[r["arrays_mib"], r["serialized_mib"], r["peak_above_baseline_mib"], r["dumps_s"], r["loads_s"],
                  "yes" if r["arrays_are_views_of_input"] else "no"]],
        "notes": [],
    }
    harness.print_sections([section])
    elapsed = time.perf_counter() - started
    if args.json:
        harness.write_report(args.json, "bench_fobs", "FOBS serialization memory", elapsed, [section], r,
                             how_to_read=HOW_TO_READ)
    return 0 if r["values_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
