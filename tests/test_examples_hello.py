"""hello-pt and hello-numpy run as their READMEs say, and what they train is checked here, independently."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

torch = pytest.importorskip("torch", reason="hello-pt needs torch (installed by make test)")


def run_job(example: str, *args: str) -> Path:
    out = subprocess.run([sys.executable, "job.py", *args], cwd=ROOT / "examples" / example, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Job Status is: FINISHED:COMPLETED" in out.stdout, out.stdout[-3000:]
    found = re.search(r"Result can be found in : (\S+)", out.stdout)
    assert found, out.stdout[-2000:]
    return Path(found.group(1))


def load_example_module(name: str, path: Path):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("external", [False, True], ids=["in-process", "external-process"])
def test_hello_pt_reaches_90_percent_validation_accuracy(external: bool) -> None:
    result = run_job("hello-pt", "--n_clients", "2", "--num_rounds", "3",
                     *(["--launch_external_process"] if external else []))
    saved = sorted(result.glob("server/*/app_server/FL_global_model.pt"), key=lambda p: p.stat().st_mtime)
    assert saved, f"no global model under {result}"
    example = ROOT / "examples" / "hello-pt"
    model_module = load_example_module("hello_pt_model", example / "model.py")
    client = load_example_module("hello_pt_client", example / "client.py")
    model = model_module.SimpleNetwork()
    state = torch.load(saved[-1], weights_only=True)["model"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    _, validation = client.load_data("site-1", 2)
    loader = torch.utils.data.DataLoader(validation, batch_size=256)
    accuracy = client.evaluate(model, loader)
    assert accuracy >= 0.90, accuracy


@pytest.mark.timeout(300)
def test_hello_numpy_runs_and_saves_its_model() -> None:
    result = run_job("hello-numpy")
    saved = sorted(result.glob("server/*/app_server/FL_global_model.npy"), key=lambda p: p.stat().st_mtime)
    assert saved, f"no global model under {result}"
    final = np.load(saved[-1])
    assert final.shape == (3, 3) and np.all(np.isfinite(final))
