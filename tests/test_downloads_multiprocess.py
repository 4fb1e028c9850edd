"""Pull downloads across processes: an owner cell in this process, receivers as processes of their own.

One owner and eight receivers of a 256 MiB file; a slow receiver next to fast ones; a receiver killed mid-download;
dropped replies recovered by retries; abort.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time

import pytest

from flare.cellnet import Cell
from flare.config import CommSettings
from flare.streaming import FileDownloader, ObjectDownloader
from conftest import ROOT, wait_until

MIB = 1024 * 1024
NODE = str(ROOT / "tests" / "peers" / "download_node.py")


def receiver(peers, name: str, url: str, ref_id: str, **opts):
    argv = [sys.executable, NODE, "--fqcn", name, "--parent", url, "--ref-id", ref_id]
    for key, value in opts.items():
        if key == "settings":
            for setting in value:
                argv += ["--setting", setting]
        else:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    peer = peers(argv)
    peer.expect("ready", timeout=30)
    return peer


@pytest.fixture
def owner():
    """Starts the owner cell "server" with the given settings; closed when the test ends."""
    started: list[Cell] = []

    def start(**settings) -> Cell:
        cell = Cell("server", listen="tcp://127.0.0.1:0", settings=CommSettings.from_env(**settings)).start()
        started.append(cell)
        return cell

    yield start
    for cell in started:
        cell.close()


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "model.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(256):
            block = os.urandom(MIB)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()


def test_eight_receivers_pull_one_256_mib_file(peers, owner, big_file, tmp_path):
    path, sha = big_file
    server = owner()
    downloader = FileDownloader(server, num_receivers=8)
    ref_id = downloader.add_file(path)
    out = tmp_path / "out"
    out.mkdir()
    nodes = [receiver(peers, f"site-{i}", server.url, ref_id, to_file=out) for i in range(1, 9)]
    results = [n.expect("done", timeout=240) for n in nodes]
    assert all(r["sha256"] == sha and r["size"] == 256 * MIB for r in results), results
    outcome = downloader.wait(30)
    assert outcome is not None and outcome.status == "finished"
    assert outcome.succeeded() == sorted(f"site-{i}" for i in range(1, 9))


def test_a_slow_receiver_does_not_slow_the_fast_ones(peers, owner):
    server = owner()
    data = os.urandom(16 * MIB)
    downloader = ObjectDownloader(server, num_receivers=4)
    ref_id = downloader.add_bytes(data, chunk_size=MIB)
    slow = receiver(peers, "site-slow", server.url, ref_id, piece_delay=0.25)
    fast = [receiver(peers, f"site-{i}", server.url, ref_id) for i in range(1, 4)]
    fast_results = [f.expect("done", timeout=60) for f in fast]
    slow_result = slow.expect("done", timeout=60)
    sha = hashlib.sha256(data).hexdigest()
    assert all(r["sha256"] == sha for r in fast_results + [slow_result])
    # The slow one takes >= 16 pieces x 0.25 s; pulling, the fast ones never wait for it.
    assert slow_result["elapsed"] >= 4.0
    assert max(r["elapsed"] for r in fast_results) < slow_result["elapsed"] / 3, (fast_results, slow_result)


def test_a_receiver_killed_mid_download_is_freed_on_the_owner(peers, owner):
    server = owner()
    downloader = ObjectDownloader(server, num_receivers=2)
    ref_id = downloader.add_bytes(os.urandom(32 * MIB), chunk_size=MIB)
    doomed = receiver(peers, "site-1", server.url, ref_id, piece_delay=0.5)
    doomed.expect("started", timeout=30)
    wait_until(lambda: downloader.info()["active_receivers"] == 1, 10)
    doomed.proc.send_signal(signal.SIGKILL)
    wait_until(lambda: downloader.info()["active_receivers"] == 0, 10)
    statuses = {(r[0], r[2]) for r in downloader.info()["receivers"]}
    assert ("site-1", "failed") in statuses
    # The transaction goes on for the others.
    survivor = receiver(peers, "site-2", server.url, ref_id)
    assert survivor.expect("done", timeout=60)["size"] == 32 * MIB


def test_dropped_replies_are_recovered_by_retries(peers, owner, tmp_path):
    server = owner(download_fault_drop_every=5)
    data = os.urandom(24 * MIB)
    downloader = ObjectDownloader(server, num_receivers=1)
    ref_id = downloader.add_bytes(data, chunk_size=MIB)
    node = receiver(peers, "site-1", server.url, ref_id, to_file=tmp_path,
                    settings=["streaming_per_request_timeout=1.0", "download_retry_backoff=0.05"])
    result = node.expect("done", timeout=60)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert result["retries"] >= 4, result
    assert downloader.wait(10).status == "finished"


def test_abort_stops_a_download_promptly(peers, owner):
    server = owner()
    downloader = ObjectDownloader(server, num_receivers=1)

    def slow_item(index: int) -> bytes:
        time.sleep(30)
        return bytes(10)

    ref_id = downloader.add_items(slow_item, 3)
    node = receiver(peers, "site-1", server.url, ref_id, abort_after=1.0)
    failed = node.expect("failed", timeout=20)
    assert failed["kind"] == "DownloadAborted", failed
    assert failed["elapsed"] < 2.5, failed
    wait_until(lambda: downloader.info()["active_receivers"] == 0, 10)
    downloader.delete_transaction()
