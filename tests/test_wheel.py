"""The wheel in dist/ (made by `make wheel`) installs into a fresh venv with no Rust toolchain and imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT


def newest_wheel():
    wheels = sorted((ROOT / "dist").glob("flare_fl-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        pytest.fail("no wheel in dist/: `make test` builds it (make wheel)")
    return wheels[-1]


def test_wheel_is_abi3_manylinux():
    name = newest_wheel().name
    assert "-abi3-" in name and "manylinux" in name, name


def test_wheel_installs_and_imports_without_rust(tmp_path):
    wheel = newest_wheel()
    with zipfile.ZipFile(wheel) as zf:
        assert any(n.startswith("flare/_sfm") for n in zf.namelist())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # A PATH with no cargo/rustc on it, and no network: installing must need neither.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"}
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--disable-pip-version-check",
                          str(wheel)], env=env, capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import flare, flare._sfm; print(flare.__version__)"],
        env=env, capture_output=True, text=True, timeout=60, cwd=str(tmp_path),
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == flare_version()


def flare_version() -> str:
    import flare

    return flare.__version__
