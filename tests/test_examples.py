"""The examples run as documented."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / path)], capture_output=True, text=True, timeout=120)


def test_hello_cellnet_demo():
    out = run("examples/hello-cellnet/run.py")
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("[site-1] -> server: hello site-1", "[site-1] -> site-2: hello site-1, this is site-2",
                 "[site-2] -> site-1: hello site-2, this is site-1"):
        assert line in out.stdout, out.stdout
    assert out.stdout.rstrip().endswith("done")


def test_embed_python_kv_service():
    out = run("examples/embed-python/kv_service.py")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "keys: ['alpha', 'beta']; beta: 1000000 bytes" in out.stdout
