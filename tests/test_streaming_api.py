"""flare.streaming: blobs and files pushed between cells (here two cells of one process over loopback TCP)."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest

from flare.errors import FlareError
from flare.streaming import BlobStreamer, FileStreamer

MIB = 1024 * 1024


def test_blob_streamer_delivers_whole_blobs_with_headers(pair):
    server, client = pair
    got, done = [], threading.Event()
    BlobStreamer(server).register_receiver("s", "blob", lambda m: (got.append(m), done.set()))
    data = os.urandom(10 * MIB + 3)
    result = BlobStreamer(client).send("server", "s", "blob", data, headers={"round": 3})
    assert result.ok and result == {"server": None}
    assert done.wait(10)
    assert bytes(got[0].payload) == data and got[0].headers["round"] == 3 and got[0].origin == "site-1"
    assert memoryview(got[0].payload).readonly


def test_blob_streamer_reports_per_target_failures(pair):
    _, client = pair
    result = BlobStreamer(client).send(["server", "site-9"], "nobody", "home", os.urandom(64 * MIB))
    assert not result.ok
    assert "no blob handler" in str(result["server"]) and "site-9" in str(result["site-9"])
    with pytest.raises(FlareError, match="site-9"):
        result.raise_for_errors()


def test_file_streamer_writes_into_the_receivers_directory(pair, tmp_path):
    server, client = pair
    dest, src = tmp_path / "dest", tmp_path / "src"
    src.mkdir()
    received, done = [], threading.Event()
    FileStreamer(server).register_receiver("s", "file", dest, lambda path, headers: (received.append(path), done.set()))
    content = os.urandom(33 * MIB + 1)
    (src / "model.bin").write_bytes(content)
    assert FileStreamer(client).send("server", "s", "file", src / "model.bin", file_name="global.bin").ok
    assert done.wait(10)
    assert received == [dest / "global.bin"]
    assert hashlib.sha256((dest / "global.bin").read_bytes()).digest() == hashlib.sha256(content).digest()


@pytest.mark.parametrize("name", ["../outside.bin", "/tmp/absolute.bin", "nested/dir.bin"])
def test_file_names_that_leave_the_directory_are_refused(pair, tmp_path, name):
    server, client = pair
    dest = tmp_path / "dest"
    FileStreamer(server).register_receiver("s", "file", dest)
    (tmp_path / "big.bin").write_bytes(os.urandom(40 * MIB))
    result = FileStreamer(client).send("server", "s", "file", tmp_path / "big.bin", file_name=name)
    assert "refusing file name" in str(result["server"])
    assert list(dest.iterdir()) == [] and not (tmp_path / "outside.bin").exists()


def test_missing_file_is_a_clear_error(pair, tmp_path):
    _, client = pair
    with pytest.raises(FileNotFoundError, match="no file to stream"):
        FileStreamer(client).send("server", "s", "file", tmp_path / "nope.bin")


def test_completion_callbacks_can_start_new_transfers(pair):
    """Eight concurrent transfers whose completion callbacks each start another transfer all complete: callbacks run
    on the callback pool, never on the threads that move stream bytes, so a callback may block on a stream."""
    server, client = pair
    returned, done = [], threading.Event()

    def on_return(m):
        returned.append(m.headers["n"])
        if len(returned) == 8:
            done.set()

    def on_blob(m):  # runs on the server's callback pool and blocks there on a new stream back to the client
        server.send_blob("site-1", "s", "back", m.payload, headers={"n": m.headers["n"]})

    server.register_blob_cb("s", "there", on_blob)
    client.register_blob_cb("s", "back", on_return)
    senders = [threading.Thread(target=client.send_blob, args=("server", "s", "there", os.urandom(8 * MIB)),
                                kwargs={"headers": {"n": n}}) for n in range(8)]
    for t in senders:
        t.start()
    for t in senders:
        t.join(30)
    assert done.wait(30), f"only {sorted(returned)} came back"
    assert sorted(returned) == list(range(8))


def test_reader_iterates_chunks_as_they_arrive(pair):
    server, client = pair
    out = {}
    finished = threading.Event()

    def read(reader):
        digest, sizes = hashlib.sha256(), []
        for chunk in reader:
            digest.update(chunk)
            sizes.append(len(chunk))
        out.update(origin=reader.origin, size=reader.size, sha=digest.hexdigest(), chunks=len(sizes),
                   note=reader.headers.get("note"))
        finished.set()

    server.register_stream_cb("s", "read", read)
    data = os.urandom(40 * MIB + 17)
    client.send_blob("server", "s", "read", data, headers={"note": "n"})
    assert finished.wait(20)
    assert out == {"origin": "site-1", "size": len(data), "sha": hashlib.sha256(data).hexdigest(),
                   "chunks": 41, "note": "n"}


def test_closing_a_reader_early_aborts_the_senders_stream(pair):
    server, client = pair
    server.register_stream_cb("s", "read", lambda reader: (reader.read_chunk(), reader.close()))
    with pytest.raises(FlareError, match="reader stopped"):
        client.send_blob("server", "s", "read", os.urandom(64 * MIB))


def test_object_streamer_round_trips_plain_data_safely(pair):
    from flare.streaming import ObjectStreamer

    server, client = pair
    got, done = [], threading.Event()
    ObjectStreamer(server).register_receiver("s", "obj", lambda obj, m: (got.append(obj), done.set()))
    obj = {"round": 2, "metrics": {"acc": 0.91}, "blob": os.urandom(3 * MIB), "names": ["a", "b"]}
    assert ObjectStreamer(client).send("server", "s", "obj", obj).ok
    assert done.wait(10) and got == [obj]
    with pytest.raises(FlareError, match="object cannot be serialized"):
        ObjectStreamer(client).send("server", "s", "obj", object())


def test_container_streamer_sends_item_by_item(pair):
    from flare.streaming import ContainerStreamer

    server, client = pair
    items, whole, done = [], [], threading.Event()
    receiver = ContainerStreamer(server)
    receiver.register_receiver("s", "items", on_item=lambda k, v, m: items.append((k, len(v))))
    receiver.register_receiver("s", "whole", on_container=lambda c, origin: (whole.append((c, origin)), done.set()))
    model = {f"layer{i}": os.urandom(2 * MIB + i) for i in range(6)}
    sender = ContainerStreamer(client)
    assert sender.send("server", "s", "items", model).ok
    assert sender.send("server", "s", "whole", model).ok
    assert done.wait(20)
    assert whole == [(model, "site-1")]
    deadline = time.monotonic() + 10
    while len(items) < 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(items) == sorted((k, len(v)) for k, v in model.items())


def test_log_streamer_tails_a_growing_file(pair, tmp_path):
    from flare.streaming import LogStreamer

    server, client = pair
    dest, done = tmp_path / "logs", threading.Event()
    LogStreamer.register_receiver(server, "s", "log", dest, on_eof=lambda path: done.set())
    log_file = tmp_path / "train.log"
    log_file.write_text("")
    tail = LogStreamer(client, interval=0.05).start("server", "s", "log", log_file)
    with open(log_file, "a") as f:
        for i in range(200):
            f.write(f"step {i} loss {1.0 / (i + 1):.4f}\n")
            f.flush()
            if i % 50 == 0:
                time.sleep(0.1)
    tail.stop()
    assert done.wait(10)
    assert (dest / "train.log").read_text() == log_file.read_text()


def test_an_empty_container_arrives_empty(pair):
    from flare.streaming import ContainerStreamer

    server, client = pair
    got, done = [], threading.Event()
    ContainerStreamer(server).register_receiver("s", "c", on_container=lambda c, o: (got.append(c), done.set()))
    assert ContainerStreamer(client).send("server", "s", "c", []).ok
    assert done.wait(10) and got == [[]]


def test_object_streamer_carries_arrays_and_registered_classes(pair):
    import dataclasses

    import numpy as np

    from flare import fobs
    from flare.streaming import ObjectStreamer

    @dataclasses.dataclass
    class Update:
        round: int
        weights: dict

    fobs.register_data_classes(Update)
    server, client = pair
    got, done = [], threading.Event()
    ObjectStreamer(server).register_receiver("s", "upd", lambda obj, m: (got.append(obj), done.set()))
    weights = {"fc": np.arange(4 * MIB, dtype=np.float32).reshape(1024, -1)}
    assert ObjectStreamer(client).send("server", "s", "upd", Update(3, weights)).ok
    assert done.wait(10)
    received = got[0]
    assert isinstance(received, Update) and received.round == 3
    assert received.weights["fc"].dtype == np.float32 and np.array_equal(received.weights["fc"], weights["fc"])
    assert not received.weights["fc"].flags.owndata, "the array is a view over the received buffer"
