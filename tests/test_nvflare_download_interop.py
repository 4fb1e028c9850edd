"""NVFlare 2.7.2's pull downloads against ours, both directions, through ``tests/interop/nvflare_download_peer.py``.

A 64 MiB file in NVFlare's 5 MiB chunks from our ``FileDownloader`` to NVFlare's ``download_file``, and from NVFlare's
``ObjectDownloader`` to our ``FileDownloader.download_file``, with each owner's view of how the transaction ended; and
an unknown reference id asked for in each direction, which must fail at once rather than wait out a timeout.

NVFlare's receiver streams every request on channel ``download_service__`` and gets each reply back as a stream on
``return_only``. Ours sends its small requests as plain messages, which NVFlare's cell answers in one message; with a
tiny ``stream_threshold`` they go as streams too, so both of NVFlare's paths are covered.
"""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from flare.cellnet import Cell
from flare.config import CommSettings
from flare.errors import DownloadError
from flare.streaming import FileDownloader
from conftest import ROOT

PEER = str(ROOT / "tests" / "interop" / "nvflare_download_peer.py")
MIB = 1024 * 1024
BIG = 64 * MIB
CHUNK = 5 * MIB  # NVFlare's file chunk: 13 replies for 64 MiB, the last one short


def random_file(path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for offset in range(0, size, MIB):
            block = os.urandom(min(MIB, size - offset))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def flare_server():
    server = Cell("server", listen="tcp://127.0.0.1:0").start()
    yield server
    server.close()


def test_nvflare_downloads_a_file_from_our_owner(flare_server, peers, nvflare_python, tmp_path):
    sha = random_file(tmp_path / "model.bin", BIG)
    downloader = FileDownloader(flare_server, timeout=60, num_receivers=1)
    ref_id = downloader.add_file(tmp_path / "model.bin", chunk_size=CHUNK)
    (tmp_path / "nv").mkdir()
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url,
                "--download-from", "server", "--ref-id", ref_id, "--location", str(tmp_path / "nv"),
                "--timeout", "30", "--linger", "30"])
    got = nv.expect("downloaded", timeout=120)
    assert got["error"] is None, got
    assert got["size"] == BIG and got["sha256"] == sha
    outcome = downloader.wait(30)
    assert outcome is not None, "our owner's transaction did not end"
    assert outcome.status == "finished"
    assert [(r.receiver, r.ref_id, r.status) for r in outcome.receivers] == [("site-1", ref_id, "success")]


@pytest.mark.parametrize("stream_threshold", [None, 16], ids=["plain-requests", "streamed-requests"])
def test_we_download_a_file_from_an_nvflare_owner(peers, nvflare_python, tmp_path, stream_threshold):
    sha = random_file(tmp_path / "model.bin", BIG)
    nv = peers([str(nvflare_python), PEER, "--fqcn", "server", "--listen", "tcp://127.0.0.1:0",
                "--serve-file", str(tmp_path / "model.bin"), "--num-receivers", "1", "--tx-timeout", "60",
                "--linger", "30"])
    url = nv.expect("ready")["url"]
    ref = nv.expect("ref")
    assert ref["sha256"] == sha
    settings = CommSettings.from_env(stream_threshold=stream_threshold) if stream_threshold else None
    client = Cell("site-1", parent_url=url, settings=settings).start()
    try:
        assert client.wait_for_peer("server", 10)
        (tmp_path / "in").mkdir()
        path = FileDownloader.download_file("server", ref["ref_id"], per_request_timeout=30, cell=client,
                                            location=tmp_path / "in", file_name="model.bin")
        assert os.path.getsize(path) == BIG and file_sha256(path) == sha
        assert nv.expect("file_downloaded", timeout=30) == {"event": "file_downloaded", "receiver": "site-1",
                                                            "status": "success"}
        # NVFlare looks at its transactions every 5 s.
        assert nv.expect("tx_done", timeout=30)["status"] == "finished"
    finally:
        client.close()


def test_nvflare_asking_our_owner_for_an_unknown_ref_fails_at_once(flare_server, peers, nvflare_python, tmp_path):
    random_file(tmp_path / "small.bin", MIB)
    downloader = FileDownloader(flare_server, timeout=60, num_receivers=1)
    downloader.add_file(tmp_path / "small.bin")
    nv = peers([str(nvflare_python), PEER, "--fqcn", "site-1", "--parent", flare_server.url,
                "--download-from", "server", "--ref-id", "R-no-such-ref", "--location", str(tmp_path),
                "--timeout", "20", "--linger", "30"])
    got = nv.expect("downloaded", timeout=60)
    # A refusal, not a timeout: NVFlare retries only timeouts, so a slow failure would mean no reply came.
    assert got["error"] and "invalid_request" in got["error"], got
    assert got["elapsed_ms"] < 10_000, got
    assert got["size"] == 0  # NVFlare creates its file before the first request and leaves it on failure


def test_asking_an_nvflare_owner_for_an_unknown_ref_fails_at_once(peers, nvflare_python, tmp_path):
    random_file(tmp_path / "small.bin", MIB)
    nv = peers([str(nvflare_python), PEER, "--fqcn", "server", "--listen", "tcp://127.0.0.1:0",
                "--serve-file", str(tmp_path / "small.bin"), "--linger", "30"])
    url = nv.expect("ready")["url"]
    nv.expect("ref")
    client = Cell("site-1", parent_url=url).start()
    try:
        assert client.wait_for_peer("server", 10)
        (tmp_path / "in").mkdir()
        started = time.monotonic()
        with pytest.raises(DownloadError, match="invalid_request"):
            FileDownloader.download_file("server", "R-no-such-ref", per_request_timeout=20, cell=client,
                                         location=tmp_path / "in")
        assert time.monotonic() - started < 10
        assert os.listdir(tmp_path / "in") == [], "a failed download leaves nothing behind"
    finally:
        client.close()
