"""The ``flare download`` and ``flare retrieve`` commands against an owner cell in this process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flare.cellnet import Cell
from flare.streaming import FileDownloader, FileRetriever

MIB = 1024 * 1024


@pytest.fixture
def server():
    cell = Cell("server", listen="tcp://127.0.0.1:0").start()
    yield cell
    cell.close()


def flare_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flare", *args], capture_output=True, text=True, timeout=120)


def test_download_writes_the_file_and_shows_progress(server, tmp_path):
    data = os.urandom(12 * MIB)
    (tmp_path / "model.bin").write_bytes(data)
    ref_id = FileDownloader(server, num_receivers=1).add_file(tmp_path / "model.bin", chunk_size=MIB)
    out = tmp_path / "out"
    out.mkdir()
    done = flare_cli("download", ref_id, "--parent", server.url, "--out", str(out), "--name", "got.bin")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / "got.bin")
    assert (out / "got.bin").read_bytes() == data
    assert "100%" in done.stderr and "12.0/12.0 MiB" in done.stderr, done.stderr


def test_retrieve_fetches_by_name_and_reports_refusals(server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "log.txt").write_text("hello")
    FileRetriever(server, source_dir=src)
    out = tmp_path / "out"
    out.mkdir()
    ok = flare_cli("retrieve", "log.txt", "--parent", server.url, "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert (out / "log.txt").read_text() == "hello"
    refused = flare_cli("retrieve", "../src/../../etc/passwd", "--parent", server.url, "--out", str(out))
    assert refused.returncode == 1
    assert "outside the source directory" in refused.stderr
