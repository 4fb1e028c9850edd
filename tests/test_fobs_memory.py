"""The memory contract of flare.fobs: dumps + loads of large arrays costs one copy (the serialized output), since
loads builds the arrays over it. Run in a process of its own (benches/bench_fobs.py), at 256 MiB to stay quick;
the bench prints the 1 GiB figure."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

MIB_TOTAL = 256


def test_dumps_and_loads_of_256_mib_of_arrays_cost_one_copy(tmp_path):
    out = tmp_path / "fobs.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benches" / "bench_fobs.py"), "--mib", str(MIB_TOTAL), "--json", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT / "benches",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(out.read_text())["results"]
    assert r["values_equal"] and r["arrays_are_views_of_input"]
    # the output itself is one copy (1.0x); 1.1x leaves room for allocator slack
    assert r["peak_above_baseline_mib"] <= 1.1 * r["arrays_mib"], r
