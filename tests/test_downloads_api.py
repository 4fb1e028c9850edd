"""Pull downloads through the public API, owner and receivers in one process: each kind of source, callbacks and
outcomes, the shared cache producing each item once for 24 receivers, progress, errors, and FileRetriever's refusal
of names that leave its source directory."""

from __future__ import annotations

import os
import threading
import time

import pytest

from flare.apis.signal import Signal
from flare.cellnet import Cell
from flare.config import CommSettings
from flare.errors import ConfigError, DownloadError
from flare.streaming import (
    BadFileRequest,
    FileDownloader,
    FileRetriever,
    ObjectDownloader,
    download_bytes,
    download_items,
    download_object,
    open_download,
)

MIB = 1024 * 1024


def test_bytes_objects_and_items_round_trip_with_outcomes(pair):
    server, site = pair
    done, outcomes, per_receiver = [], [], []
    downloader = ObjectDownloader(
        server, num_receivers=1, transaction_done_cb=lambda tx, status, objects, tag: done.append((status, objects, tag)),
        outcome_cb=outcomes.append, tag="t1",
    )
    data = os.urandom(11 * MIB + 7)
    r_bytes = downloader.add_bytes(data, chunk_size=MIB, downloaded_cb=lambda who, status: per_receiver.append((who, status)))
    r_obj = downloader.add_object({"round": 3, "weights": [1.5, b"\x00\x01"], "name": "fc"})
    r_items = downloader.add_items(lambda i: bytes([i]) * (i + 1), 5, max_chunk_size=4)

    assert bytes(download_bytes("server", r_bytes, cell=site)) == data
    assert download_object("server", r_obj, cell=site) == {"round": 3, "weights": [1.5, b"\x00\x01"], "name": "fc"}
    assert [bytes(x) for x in download_items("server", r_items, cell=site)] == [bytes([i]) * (i + 1) for i in range(5)]

    outcome = downloader.wait(10)
    assert outcome is not None and outcome.status == "finished" and outcome.succeeded() == ["site-1"]
    assert set(outcome.refs) == {r_bytes, r_obj, r_items}
    assert outcomes == [outcome]
    assert done[0][0] == "finished" and len(done[0][1]) == 3 and done[0][2] == "t1"
    time.sleep(0.2)  # receiver callbacks run on the cell's pool
    assert per_receiver == [("site-1", "success")]
    assert downloader.info() is None, "an ended transaction is gone"


def test_24_receivers_share_each_item_a_python_producer_makes(pair):
    server, _ = pair
    sites = [Cell(f"site-{i}", parent_url=server.url).start() for i in range(2, 26)]
    try:
        for s in sites:
            assert s.wait_for_peer("server", 10)
        calls = []
        lock = threading.Lock()

        def produce(index: int) -> bytes:
            with lock:
                calls.append(index)
            time.sleep(0.1)
            return index.to_bytes(4, "big") * 256

        downloader = ObjectDownloader(server, num_receivers=24)
        ref_id = downloader.add_items(produce, 6, max_chunk_size=1)
        results: dict[str, list] = {}

        def pull(cell: Cell) -> None:
            results[cell.fqcn] = [bytes(x) for x in download_items("server", ref_id, cell=cell)]

        started = time.monotonic()
        threads = [threading.Thread(target=pull, args=(s,)) for s in sites]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - started
        assert len(results) == 24
        assert all(items == [i.to_bytes(4, "big") * 256 for i in range(6)] for items in results.values())
        assert sorted(calls) == list(range(6)), "each item made once for all 24 receivers"
        # 6 items x 0.1 s made once each; made per receiver it would be 24 times that.
        assert elapsed < 6 * 0.1 * 4, elapsed
        assert downloader.wait(10).status == "finished"
    finally:
        for s in sites:
            s.close()


def test_progress_reaches_the_total_and_never_goes_back(pair):
    server, site = pair
    downloader = ObjectDownloader(server, num_receivers=1)
    ref_id = downloader.add_bytes(os.urandom(8 * MIB), chunk_size=MIB)
    seen = []
    download_bytes("server", ref_id, cell=site, progress_cb=lambda done, total: seen.append((done, total)),
                   progress_interval=0)
    assert seen[-1] == (8 * MIB, 8 * MIB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_reader_yields_pieces_in_order(pair):
    server, site = pair
    data = os.urandom(6 * MIB)
    downloader = ObjectDownloader(server)
    ref_id = downloader.add_bytes(data, chunk_size=MIB)
    reader = open_download("server", ref_id, cell=site, capacity=1)
    assert b"".join(bytes(p) for p in reader) == data
    assert reader.total_size == len(data)
    downloader.delete_transaction()


def test_files_download_into_a_location_and_failures_leave_nothing(pair, tmp_path):
    server, site = pair
    src = tmp_path / "src.bin"
    data = os.urandom(3 * MIB + 5)
    src.write_bytes(data)
    downloader = FileDownloader(server, num_receivers=1)
    got_cb = []
    ref_id = downloader.add_file(src, chunk_size=MIB, file_downloaded_cb=lambda *a, **k: got_cb.append((a, k)), job="j")
    out = tmp_path / "out"
    out.mkdir()
    path = FileDownloader.download_file("server", ref_id, 10, site, out, file_name="model.bin")
    assert path == str(out / "model.bin") and (out / "model.bin").read_bytes() == data
    time.sleep(0.2)
    assert got_cb == [(("site-1", "success", str(src)), {"job": "j"})]

    with pytest.raises(DownloadError, match="no download reference"):
        FileDownloader.download_file("server", "Rnope", 10, site, out)
    assert os.listdir(out) == ["model.bin"], "a failed download leaves no partial file"
    with pytest.raises(NotADirectoryError):
        FileDownloader.download_file("server", ref_id, 10, site, tmp_path / "missing")
    with pytest.raises(ValueError, match="plain file name"):
        FileDownloader.download_file("server", ref_id, 10, site, out, file_name="../x")
    with pytest.raises(DownloadError, match="missing"):
        downloader.add_file(tmp_path / "missing.bin")


def test_bad_requests_get_errors_that_say_what_to_change(pair):
    server, site = pair
    downloader = ObjectDownloader(server)
    with pytest.raises(DownloadError, match="chunk size"):
        downloader.add_bytes(b"abc", chunk_size=0)
    ref_id = downloader.add_bytes(b"abc")
    with pytest.raises(DownloadError, match="already in use"):
        downloader.add_bytes(b"abc", ref_id=ref_id)
    with pytest.raises(ConfigError, match="cell="):
        download_bytes("server", ref_id)
    with pytest.raises(ConfigError, match="num_receivers"):
        ObjectDownloader(server, num_receivers=-1)
    downloader.delete_transaction()
    with pytest.raises(DownloadError, match=r"ended \(deleted\)"):
        download_bytes("server", ref_id, cell=site)
    with pytest.raises(DownloadError, match="no download transaction"):
        downloader.add_bytes(b"late")


def test_a_transaction_nobody_pulls_from_times_out():
    settings = CommSettings.from_env(min_download_timeout=0.3)
    server = Cell("server", listen="tcp://127.0.0.1:0", settings=settings).start()
    try:
        downloader = ObjectDownloader(server, num_receivers=1)
        downloader.add_bytes(b"never pulled")
        outcome = downloader.wait(10)
        assert outcome is not None and outcome.status == "timeout"
    finally:
        server.close()


def test_environment_sets_download_settings(monkeypatch):
    monkeypatch.setenv("NVFLARE_MIN_DOWNLOAD_TIMEOUT", "42")
    monkeypatch.setenv("FLARE_DOWNLOAD_MAX_RETRIES", "5")
    settings = CommSettings.from_env()
    assert settings.min_download_timeout == 42.0 and settings.download_max_retries == 5
    with pytest.raises(ConfigError, match="download_max_inflight"):
        Cell("x", settings=CommSettings.from_env(download_max_inflight=0))


def test_signal_children_follow_their_parent():
    parent = Signal()
    child = Signal(parent)
    assert not child.triggered
    parent.trigger("stop")
    assert child.triggered and child.core.triggered and child.value == "stop"
    child.reset()
    assert not child.core.triggered


@pytest.fixture
def retriever_setup(pair, tmp_path):
    server, site = pair
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.txt").write_bytes(b"fine")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.txt", root / "escape.txt")
    os.symlink(root / "sub" / "ok.txt", root / "inside.txt")
    FileRetriever(server, source_dir=root)
    dest = tmp_path / "dest"
    dest.mkdir()
    return FileRetriever(site, dest_dir=dest), dest


def test_file_retriever_fetches_files_under_its_source_dir(retriever_setup):
    retriever, dest = retriever_setup
    path = retriever.retrieve_file("server", "sub/ok.txt")
    assert path == str(dest / "ok.txt") and open(path, "rb").read() == b"fine"
    assert open(retriever.retrieve_file("server", "inside.txt"), "rb").read() == b"fine", "a link that stays in"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../secret.txt", "outside the source directory"),
        ("sub/../../secret.txt", "outside the source directory"),
        ("/etc/passwd", "absolute path"),
        ("escape.txt", "outside the source directory"),
        ("sub", "not a file"),
        ("missing.txt", "not a file"),
        ("", "missing file_name"),
    ],
)
def test_file_retriever_refuses_names_that_leave_its_source_dir(retriever_setup, name, why):
    retriever, dest = retriever_setup
    with pytest.raises(DownloadError, match=why):
        retriever.retrieve_file("server", name)
    assert os.listdir(dest) == []


def test_resolve_refuses_nul_bytes(tmp_path):
    from flare.streaming.retriever import resolve_in

    with pytest.raises(BadFileRequest, match="NUL"):
        resolve_in(str(tmp_path), "a\x00b")
