"""Holding up under faults: a connection cut mid-download, jobs aborted in every phase, bad input at every public
boundary. Each case is light enough for a small machine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from flare.apis.fl_constant import RunStatus
from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.cellnet import Cell, ReturnCode
from flare.config import CommSettings, RuntimeSettings
from flare.errors import JobError
from flare.recipe import PocEnv
from flare.runtime import protocol as p
from flare.runtime.client import FederatedClient
from flare.runtime.server import FederatedServer
from flare.streaming import ObjectDownloader, download_bytes
from flare.tensors import add_arrays, download_arrays
from conftest import wait_until
from tcp_proxy import TcpProxy

MIB = 1024 * 1024
CUT_SECONDS = 2.5
# reconnect soon after the link is back, and retry across a cut of CUT_SECONDS
QUICK_RECOVERY = {"reconnect_initial_backoff": 0.2, "reconnect_max_backoff": 0.5, "download_retry_backoff": 0.5}


@pytest.fixture
def owner_behind_proxy():
    """An owner cell "server", and a receiver "site-1" that reaches it only through a ``TcpProxy``."""
    owner = Cell("server", listen="tcp://127.0.0.1:0").start()
    proxy = TcpProxy(int(owner.url.rsplit(":", 1)[1])).start()
    receiver = Cell("site-1", parent_url=proxy.url, settings=CommSettings.from_env(**QUICK_RECOVERY)).start()
    assert receiver.wait_for_peer("server", 10)
    yield owner, proxy, receiver
    receiver.close()
    proxy.close()
    owner.close()


class CutOnce:
    """Cuts the proxy's connections once, the first time it is called past ``threshold``."""

    def __init__(self, proxy: TcpProxy, threshold: int):
        self.proxy = proxy
        self.threshold = threshold
        self.at: int | None = None

    def __call__(self, done: int) -> None:
        if self.at is None and done >= self.threshold:
            self.at = done
            self.proxy.cut(CUT_SECONDS)


@pytest.mark.timeout(60)
def test_a_byte_download_survives_its_connection_dropping_for_seconds(owner_behind_proxy):
    owner, proxy, receiver = owner_behind_proxy
    data = os.urandom(128 * MIB)
    downloader = ObjectDownloader(owner, num_receivers=1)
    ref_id = downloader.add_bytes(data)
    cut = CutOnce(proxy, len(data) // 3)
    received = download_bytes("server", ref_id, cell=receiver, progress_cb=lambda done, _total: cut(done),
                              progress_interval=0.0)
    assert cut.at is not None and proxy.cuts >= 1, "the link was never cut"
    assert cut.at < len(data), "the cut came after the last byte"
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    outcome = downloader.wait(10)
    assert outcome is not None and outcome.status == "finished" and outcome.succeeded() == ["site-1"]


@pytest.mark.timeout(60)
def test_a_model_download_survives_its_connection_dropping_for_seconds(owner_behind_proxy):
    """The path the FedAvg runtime takes for numpy weights: ``add_arrays`` items, pulled one reply at a time."""
    owner, proxy, receiver = owner_behind_proxy
    rng = np.random.default_rng(7)
    arrays = {f"layer{i}.weight": rng.standard_normal(MIB, dtype=np.float32) for i in range(16)}  # 64 MiB
    downloader = ObjectDownloader(owner, num_receivers=1)
    ref_id = add_arrays(downloader, arrays)
    cut = CutOnce(proxy, 4)
    arrived: list[str] = []
    arrived_lock = threading.Lock()

    def on_arrays(batch: dict) -> dict:
        with arrived_lock:
            arrived.extend(batch)
            cut(len(arrived))
        return batch

    error, received = download_arrays("server", ref_id, None, receiver, arrays_received_cb=on_arrays)
    assert error is None, error
    assert cut.at is not None and cut.at < len(arrays), "the cut did not happen mid-download"
    assert received.keys() == arrays.keys()
    for name, array in arrays.items():
        assert np.array_equal(received[name], array), name
    outcome = downloader.wait(10)
    assert outcome is not None and outcome.status == "finished"


# ---- jobs aborted in every phase ----
JOBS = Path(__file__).parent / "jobs"


def _good_job(tmp_path: Path) -> Path:
    """A one-round numpy FedAvg job folder for two clients, scripts in the client process."""
    script = tmp_path / "np_client.py"
    shutil.copy(JOBS / "np_client.py", script)
    recipe = NumpyFedAvgRecipe(name="good", min_clients=2, num_rounds=1, model=np.zeros(4, np.float32),
                               train_script=str(script))
    return recipe.export(tmp_path / "jobs")


BIG_MODEL_MIB = 256
# every process of an aborted job must be gone this long after the abort / after env.stop(): the client stops a
# training process within max(shutdown_timeout, 5 s), and PocEnv kills what is left after 10 s, which must not happen
EXIT_BOUND = 8.0
LEFTOVER_PATTERNS = ("*.part", "*.partial", "*.tmp", "client_api_bootstrap_*.json")


class AbortedJob:
    """A FedAvg job on a PocEnv (server and two client processes) whose training scripts run as processes of their
    own and mark their phases (``tests/jobs/phase_client.py``)."""

    def __init__(self, tmp_path: Path, model_mib: int):
        self.markers = tmp_path / "markers"
        self.markers.mkdir()
        self.workspace = tmp_path / "poc"
        script = tmp_path / "phase_client.py"
        shutil.copy(JOBS / "phase_client.py", script)
        model = {f"layer{i}": np.zeros(MIB // 4, np.float32) for i in range(model_mib)}
        recipe = NumpyFedAvgRecipe(
            name="chaos-abort", min_clients=2, num_rounds=2, model=model, train_script=str(script),
            train_args=f"--marker_dir {self.markers}", launch_external_process=True,
        )
        self.env = PocEnv(num_clients=2, extra={"workspace_root": str(self.workspace)})
        self.run = recipe.execute(self.env)
        self.processes = dict(self.env.processes)

    def marker(self, site: str, phase: str) -> Path:
        return self.markers / f"{site}.{phase}"

    def first_in(self, phase: str, timeout: float = 30.0) -> tuple[str, int]:
        """The site whose script reached ``phase`` first, and the script's pid."""
        found: list[Path] = []

        def reached() -> bool:
            status = self.run.get_status()
            assert status not in RunStatus.FINAL, f"the job ended {status} before {phase}"
            found[:] = sorted(self.markers.glob(f"site-*.{phase}"))
            return bool(found)

        wait_until(reached, timeout, step=0.01)
        return found[0].name.split(".")[0], int(found[0].read_text())

    def abort(self) -> str | None:
        """Aborts the job; returns its final status, once it has one."""
        self.run.abort()
        wait_until(lambda: self.run.get_status() in RunStatus.FINAL, EXIT_BOUND)
        return self.run.get_status()

    def training_processes(self) -> list[int]:
        """Processes alive now whose command line names this job's marker folder: its training scripts."""
        tag = str(self.markers).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if tag in (entry / "cmdline").read_bytes() and _state(int(entry.name)) not in ("Z", None):
                    pids.append(int(entry.name))
            except OSError:
                continue  # exited while we looked
        return pids

    def stop(self) -> float:
        """Stops the env; returns how long that took."""
        started = time.monotonic()
        self.env.stop()
        return time.monotonic() - started

    def leftovers(self) -> list[Path]:
        return [path for pattern in LEFTOVER_PATTERNS for path in self.workspace.rglob(pattern)]

    def check_all_gone(self, stop_seconds: float) -> None:
        assert stop_seconds < EXIT_BOUND, f"env.stop() took {stop_seconds:.1f} s"
        for name, process in self.processes.items():
            # 0, or the SIGTERM of env.stop() landing while the process was already exiting; never a crash or a kill
            assert process.returncode in (0, -signal.SIGTERM), f"{name} exited with {process.returncode}"
        assert self.training_processes() == [], "training processes outlived the job"
        assert self.leftovers() == []


def _state(pid: int) -> str | None:
    """The process's state letter (``Z`` for a zombie), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _grows(pid: int, mib: float, unless: Path) -> bool:
    """Waits until the memory of process ``pid`` grows by ``mib``: bytes of a model are arriving there. False when
    ``unless`` appears first (the transfer ended before it could be seen)."""
    baseline = _rss_mib(pid)
    wait_until(lambda: _rss_mib(pid) > baseline + mib or unless.exists(), 30, step=0.01)
    return not unless.exists()


@pytest.fixture
def poc_job(tmp_path):
    """Starts an ``AbortedJob``; its env is stopped when the test ends, whatever happened."""
    started: list[AbortedJob] = []

    def start(model_mib: int) -> AbortedJob:
        started.append(AbortedJob(tmp_path, model_mib))
        return started[-1]

    yield start
    for job in started:
        job.stop()


def _abort_and_check(job: AbortedJob) -> None:
    status = job.abort()
    assert status == RunStatus.FINISHED_ABORTED, f"{status}: {job.env.job_error(job.run.get_job_id())}"
    # the clients stop their training scripts on the abort, before anyone stops the env
    wait_until(lambda: job.training_processes() == [], EXIT_BOUND)
    job.check_all_gone(job.stop())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("moment", ["right after its submission", "as its training scripts start"])
def test_a_job_aborted_during_startup_ends_cleanly(poc_job, moment):
    job = poc_job(model_mib=1)
    if moment == "as its training scripts start":
        job.first_in("started")
    _abort_and_check(job)


@pytest.mark.timeout(90)
def test_a_job_aborted_while_clients_pull_the_model_ends_cleanly(poc_job):
    job = poc_job(model_mib=BIG_MODEL_MIB)
    site, pid = job.first_in("receiving")
    assert _grows(pid, 32, unless=job.marker(site, "received")), "the model arrived before it was seen arriving"
    _abort_and_check(job)
    assert not job.marker(site, "received").exists(), "the abort did not stop the download"


@pytest.mark.timeout(90)
def test_a_job_aborted_while_the_server_pulls_results_ends_cleanly(poc_job):
    job = poc_job(model_mib=BIG_MODEL_MIB)
    site, _pid = job.first_in("sending")
    # the server folds a result into its running sums as the result's tensors arrive
    server_pid = job.processes["server"].pid
    assert _grows(server_pid, 32, unless=job.marker(site, "sent")), "the result arrived before it was seen arriving"
    _abort_and_check(job)
    # a script's send returns once the server has pulled its result: this one never got there
    assert not job.marker(site, "sent").exists(), "the server had the whole result before the abort"


@pytest.mark.timeout(30)
def test_a_job_aborted_while_it_waits_for_its_clients_ends_at_once(tmp_path):
    server = FederatedServer(tmp_path / "server")
    server.start()
    try:
        job_id = server.submit_job(_good_job(tmp_path))
        job = server.job(job_id)
        wait_until(lambda: job.status == RunStatus.DISPATCHED, 10)
        server.abort_job(job_id)
        assert job.join(2.0), "the aborted job still waits for clients that never come"
        assert job.status == RunStatus.FINISHED_ABORTED
    finally:
        server.close()


def _thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            continue  # the thread ended while we looked
    return names


@pytest.mark.timeout(30)
def test_a_client_process_stopped_while_it_registers_exits_at_once(tmp_path):
    with socket.socket() as unused:  # a port nobody listens on: registration goes on until registration_timeout
        unused.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{unused.getsockname()[1]}"
    client = subprocess.Popen([sys.executable, "-m", "flare.runtime", "client", "--name", "site-1", "--server", url,
                               "--workspace", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # its cell's transport threads run: it is trying to reach the server
        wait_until(lambda: "flare-transport" in _thread_names(client.pid), 20)
        client.terminate()
        started = time.monotonic()
        assert client.wait(5) == 0
        assert time.monotonic() - started < 2.0
    finally:
        client.kill()
        client.wait()


# ---- bad input at every public boundary ----
HANDSHAKE_TIMEOUT = 1.0
# a server that refuses frames over 256 KiB (a stream chunk plus its headers must still fit)
SMALL_FRAMES = {"max_frame_size": 256 * 1024, "streaming_chunk_size": 128 * 1024,
                "streaming_window_size": 1024 * 1024, "streaming_ack_interval": 256 * 1024}


def _prefix(length: int, header_length: int, frame_type: int) -> bytes:
    """An SFM frame prefix (docs/cellnet.md, "Wire")."""
    return struct.pack(">IHBBHHHH", length, header_length, frame_type, 0, 0, 1, 0, 0)


MALFORMED = {
    "not SFM at all": b"GET / HTTP/1.1\r\nHost: flare\r\n\r\n",
    "a frame announcing 4 GiB": _prefix(0xFFFFFFF0, 0, 1),
    "headers longer than the frame": _prefix(40, 100, 4) + bytes(24),
    "a handshake that is not msgpack": _prefix(40, 0, 4) + b"\xc1" * 24,
    "a handshake that never ends": _prefix(100, 0, 4),
}


@pytest.fixture
def federation(tmp_path):
    """A server in this process (small frames, quick handshakes) with two clients, and a "probe" cell of its own."""
    settings = RuntimeSettings.from_config({**SMALL_FRAMES, "connect_timeout": HANDSHAKE_TIMEOUT})
    server = FederatedServer(tmp_path / "server", settings=settings)
    url = server.start()
    clients = [FederatedClient(f"site-{i}", url, tmp_path / f"site-{i}", settings=settings) for i in (1, 2)]
    for client in clients:
        client.start()
    probe = Cell("probe", parent_url=url, settings=settings.comm).start()
    assert probe.wait_for_peer("server", 10)
    yield server, probe
    probe.close()
    for client in clients:
        client.close()
    server.close()


def _still_serving(server: FederatedServer, probe: Cell) -> None:
    """The server answers requests and keeps its clients."""
    reply = probe.request("server", p.CHANNEL_ADMIN, p.TOPIC_JOB_STATUS, {"job_id": "none"}, timeout=5.0)
    assert reply.return_code == ReturnCode.PROCESS_EXCEPTION and "no job 'none'" in reply.error
    assert server.clients() == ["site-1", "site-2"]


@pytest.mark.timeout(30)
def test_malformed_bytes_close_only_their_own_connection(federation):
    server, probe = federation
    host, port = server.url.removeprefix("tcp://").rsplit(":", 1)
    for what, data in MALFORMED.items():
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            started = time.monotonic()
            raw.sendall(data)
            assert raw.recv(1) == b"", f"{what}: the server answered instead of closing"
            assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 2, f"{what}: closed too late"
        _still_serving(server, probe)


@pytest.mark.timeout(30)
def test_a_request_to_an_unknown_cell_fails_at_once_naming_it(federation):
    server, probe = federation
    started = time.monotonic()
    reply = probe.request("site-99", p.CHANNEL_TASK, p.TOPIC_GET_TASK, None, timeout=20.0)
    assert reply.return_code == ReturnCode.TARGET_UNREACHABLE and "site-99" in reply.error
    assert time.monotonic() - started < 2.0, "the request waited instead of failing"
    _still_serving(server, probe)


@pytest.mark.timeout(30)
def test_an_oversized_frame_drops_only_its_senders_connection_with_the_reason_logged(federation, capfd):
    server, probe = federation
    sender = Cell("big-sender", parent_url=server.url).start()  # default limits: it sends frames the server refuses
    try:
        assert sender.wait_for_peer("server", 10)
        started = time.monotonic()
        reply = sender.request("server", p.CHANNEL_ADMIN, p.TOPIC_JOB_STATUS, {"job_id": "x" * 512 * 1024},
                               timeout=20.0)
        assert reply.return_code == ReturnCode.COMM_ERROR, (reply.return_code, reply.error)
        assert time.monotonic() - started < 2.0, "the sender waited out its timeout"
        assert "max_frame_size" in capfd.readouterr().err, "the server did not say why it closed the connection"
        _still_serving(server, probe)
        # the sender reconnects, and a message within the limit goes through
        assert sender.wait_for_peer("server", 10)
        reply = sender.request("server", p.CHANNEL_ADMIN, p.TOPIC_JOB_STATUS, {"job_id": "none"}, timeout=5.0)
        assert "no job 'none'" in reply.error
    finally:
        sender.close()


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _server_args(config: dict) -> dict:
    return config["workflows"][0]["args"]


BAD_SERVER_CONFIGS = {
    "num_rounds": lambda config: _server_args(config).update(num_rounds="three"),
    "workflows": lambda config: config.update(workflows=config["workflows"][0]),
    "components": lambda config: config.update(components={"persistor": "NPModelPersistor"}),
}
BAD_METAS = {
    "min_clients": lambda meta: meta.update(min_clients=-1),
    "deploy_map": lambda meta: meta.pop("deploy_map"),
}


@pytest.mark.timeout(60)
def test_job_configs_with_wrong_types_fail_naming_the_field_and_the_next_job_runs(federation, tmp_path):
    server, _probe = federation
    good = _good_job(tmp_path)
    for field, change in BAD_SERVER_CONFIGS.items():
        bad = shutil.copytree(good, tmp_path / "bad" / field)
        _edit_json(bad / "app_server" / "config" / "config_fed_server.json", change)
        job = server.job(server.submit_job(bad))
        assert job.join(10), f"{field}: the job did not end"
        assert job.status == RunStatus.FINISHED_EXECUTION_EXCEPTION, f"{field}: {job.status}"
        assert field in job.error, f"{field}: {job.error}"
    for field, change in BAD_METAS.items():
        bad = shutil.copytree(good, tmp_path / "bad" / field)
        _edit_json(bad / "meta.json", change)
        with pytest.raises(JobError, match=field):
            server.submit_job(bad)
    job = server.job(server.submit_job(good))
    assert job.join(30), "the good job did not end"
    assert job.status == RunStatus.FINISHED_COMPLETED, job.error
