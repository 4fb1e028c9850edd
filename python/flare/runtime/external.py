"""Training scripts in a process of their own (``launch_external_process=True``).

The client job starts the script with ``subprocess`` (posix_spawn where the platform has it, never a bare fork of
the threaded client) and tells it, in a bootstrap file named by ``FLARE_CLIENT_API_BOOTSTRAP``, how to reach the
site's cell. The script's cell is a child of the site's (``site-1.trainer-<n>``). The client job only forwards:
task data reaches the script with references to the server's tensors, which the script pulls itself, and results
reach the server with references to the script's tensors, which the server pulls; the client process never holds a
model. The script's stdout and stderr go to the site's job log.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare.app_common.abstract.fl_model import FLModel
from flare.cellnet import Cell, Message, ReturnCode
from flare.cellnet.message import Encoding, MessageHeaderKey
from flare.client.exchange import BOOTSTRAP_ENV, ClientAPIConfig, TaskAssignment
from flare.config import RuntimeSettings
from flare.errors import FlareTimeoutError, JobError
from flare.fobs.lazy import resolve
from flare.fobs.via_downloader import LAZY_DOWNLOAD
from flare.runtime import protocol as p
from flare.runtime.filters import SiteFilters
from flare.runtime.sitelog import start_thread
from flare.runtime.task_client import pause, request_with_resends
from flare.runtime.tasks import serialize

if TYPE_CHECKING:
    from flare.runtime.client_job import ClientJob
    from flare.runtime.executor import ScriptExecutor

log = logging.getLogger(__name__)
_trainer_seq = iter(range(1, 1 << 62))


# ---- client job side ----
class _TrainerProxy:
    """Serves a training process's requests on the site's cell by forwarding them to the server."""

    def __init__(self, job: ClientJob, config: ClientAPIConfig):
        self.job = job
        self.config = config
        self.connected = threading.Event()
        self.tasks: dict[str, TaskAssignment] = {}

    def on_fetch(self, msg: Message) -> Any:
        self.connected.set()
        if self.job.abort_signal.triggered:
            return Message({p.TASK_STATUS: p.TaskStatus.END})
        if self.job.tasks.ended:
            return Message({p.TASK_STATUS: p.TaskStatus.END})
        tasks = self.job.tasks
        status, reply = tasks.poll()
        if status == p.TaskStatus.WAIT:
            # one trainer per site: holding its request a little lets it start the moment the task is ready
            tasks.wait_for_task(float(reply.get_header(p.RETRY_AFTER) or tasks.settings.job.task_fetch_interval))
            status, reply = tasks.poll()
        if status == p.TaskStatus.END:
            self.job.tasks.ended = True
        if status != p.TaskStatus.READY:
            return Message({p.TASK_STATUS: status, p.RETRY_AFTER: reply.get_header(p.RETRY_AFTER)})
        task = TaskAssignment(reply.get_header(p.TASK_NAME), reply.get_header(p.TASK_ID), reply.payload)
        self.tasks[task.task_id] = task
        self.job.current_task = task
        # the model still holds references to the server's tensors: re-encoded as they are, the script pulls them
        return Message({p.TASK_STATUS: p.TaskStatus.READY, p.TASK_ID: task.task_id, p.TASK_NAME: task.name},
                       task.model)

    def on_result(self, msg: Message) -> Any:
        task = self.tasks.pop(msg.get_header(p.TASK_ID), None)
        if task is None:
            return Message.reply(ReturnCode.INVALID_REQUEST, "no such task")
        if not isinstance(msg.payload, FLModel):
            return Message.reply(ReturnCode.INVALID_REQUEST, f"a result must be an FLModel, got {type(msg.payload)}")
        self.job.submit(task, msg.payload)
        return None

    def on_log(self, msg: Message) -> Any:
        record = msg.payload if isinstance(msg.payload, dict) else {"value": msg.payload}
        self.job.record_metric({"site": self.job.site, **record})
        return None


def run_external(executor: ScriptExecutor, job: ClientJob) -> None:
    """Starts the script as a process (once, or once per task with ``launch_once=False``) and serves it until the
    job ends for this site."""
    script = executor.script_path(job)
    proxy = _TrainerProxy(job, executor.api_config)
    cell = job.client.cell
    channel = f"{p.CHANNEL_TRAINER}.{job.job_id}"
    cell.register_request_cb(channel, p.TOPIC_FETCH, proxy.on_fetch)
    cell.register_request_cb(channel, p.TOPIC_RESULT, proxy.on_result)
    cell.register_request_cb(channel, p.TOPIC_LOG, proxy.on_log)
    executor.repeat_until_job_ends(job, lambda: _run_process(executor, job, script, proxy, channel))


def _run_process(executor: ScriptExecutor, job: ClientJob, script: Path, proxy: _TrainerProxy, channel: str) -> None:
    trainer = f"{job.site}.trainer-{next(_trainer_seq)}"
    bootstrap = job.job_dir / f"client_api_bootstrap_{trainer.rsplit('-', 1)[1]}.json"
    fd = os.open(bootstrap, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({
            "schema_version": 1,
            "connect_url": job.client.cell.url,
            "cj_fqcn": job.site,
            "trainer_fqcn": trainer,
            "channel": channel,
            "job_id": job.job_id,
            "site_name": job.site,
            "task_exchange": asdict(executor.api_config),
            "settings": {k: v for k, v in job.settings.job.as_dict().items()},
            "comm_settings": job.settings.comm.as_dict(),
            "tensor_settings": job.settings.tensor.as_dict(),
            # filters run where the tensors are: in the training process
            "task_data_filters": job.config.get("task_data_filters", []),
            "task_result_filters": job.config.get("task_result_filters", []),
        }, out)
    argv = [*_command(executor.command), str(script.relative_to(job.app_dir)), *shlex.split(executor.script_args)]
    env = {**os.environ, BOOTSTRAP_ENV: str(bootstrap)}
    if "OMP_NUM_THREADS" not in env and job.client.sites_on_host > 1:
        # several sites' scripts on one machine: each using every core makes all of them crawl
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // job.client.sites_on_host))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(job.app_dir / "custom"), env.get("PYTHONPATH")]))
    log.info("%s: starting %s", job.site, " ".join(argv))
    proxy.connected.clear()
    try:
        process = subprocess.Popen(argv, cwd=job.app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   close_fds=True)
    except OSError as e:
        raise JobError(f"could not start the training script with {argv[0]!r}: {e}; check the 'command' setting")
    relay = start_thread(_relay_output, f"{job.site}-script-output", process, job.site)
    started = time.monotonic()
    try:
        while process.poll() is None:
            if job.abort_signal.triggered:
                break
            if not proxy.connected.is_set() and time.monotonic() - started > executor.launch_timeout:
                raise JobError(
                    f"the training script did not connect within launch_timeout={executor.launch_timeout:g} s"
                )
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            _stop(process, executor.shutdown_timeout)
        relay.join(5.0)
        bootstrap.unlink(missing_ok=True)
    if process.returncode and not job.abort_signal.triggered:
        raise JobError(f"the training script {script.name} exited with code {process.returncode}; see the site log")


def _command(command: str) -> list[str]:
    """The command's words; a bare ``python``/``python3`` (NVFlare's default ``python3 -u``) means the interpreter
    running this site, so that the script sees the same packages."""
    words = shlex.split(command)
    if not words:
        raise JobError("the 'command' setting of the script runner is empty")
    if words[0] in ("python", "python3"):
        words[0] = sys.executable
    return words


def _stop(process: subprocess.Popen, grace: float) -> None:  # type: ignore[type-arg]
    process.terminate()
    try:
        process.wait(max(grace, 5.0))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _relay_output(process: subprocess.Popen, site: str) -> None:  # type: ignore[type-arg]
    script_log = logging.getLogger(f"flare.script.{site}")
    assert process.stdout is not None
    for line in iter(process.stdout.readline, b""):
        text = line.decode(errors="replace").rstrip()
        script_log.info("%s", text)
        print(f"[{site}] {text}", flush=True)


# ---- training process side ----
class TrainerExchange:
    """The task exchange of a training script in its own process, over a cell that is a child of the site's."""

    REQUIRED = ("site_name", "job_id", "task_exchange", "cj_fqcn", "channel", "trainer_fqcn", "connect_url")

    def __init__(self, boot: dict[str, Any]):
        missing = [field for field in self.REQUIRED if not boot.get(field)]
        if missing:
            raise RuntimeError(f"the Client API bootstrap is missing {', '.join(missing)}: the job metadata of this "
                               "training process is incomplete")
        self.site_name = boot["site_name"]
        self.job_id = boot["job_id"]
        self.config = ClientAPIConfig(**boot["task_exchange"])
        self.settings = RuntimeSettings.from_config(
            {**boot.get("settings", {}), **boot.get("comm_settings", {}), **boot.get("tensor_settings", {})}
        )
        self._parent = boot["cj_fqcn"]
        self._channel = boot["channel"]
        self.cell = Cell(boot["trainer_fqcn"], parent_url=boot["connect_url"], settings=self.settings.comm)
        self.cell.fobs_ctx[LAZY_DOWNLOAD] = True
        self.cell.start()
        if not self.cell.wait_for_peer(self._parent, timeout=60.0):
            raise JobError(f"the training process could not reach its site {self._parent} at {boot['connect_url']}")
        self._closed = False
        self.filters = SiteFilters.from_config(self.site_name, boot, server=False)
        from flare.apis.signal import Signal

        self._stop = Signal()

    def _request(self, topic: str, payload: Any, headers: dict[str, Any], timeout: float) -> Message:
        if self._closed:
            raise JobError("the task exchange is closed")
        return self.cell.request(self._parent, self._channel, topic, payload, headers=headers, timeout=timeout)

    def fetch_task(self, timeout: float | None) -> TaskAssignment | None:
        started = time.monotonic()
        job = self.settings.job
        while True:
            reply = self._request(p.TOPIC_FETCH, None, {}, job.get_task_timeout + 5)
            if not reply.ok:
                raise JobError(f"the site did not answer a task request: {reply.error or reply.return_code}")
            status = reply.get_header(p.TASK_STATUS)
            if status == p.TaskStatus.END:
                return None
            if status == p.TaskStatus.READY:
                # the task is taken at once and its tensors pulled after: a long download cannot time out the fetch
                name = reply.get_header(p.TASK_NAME)
                model = self.filters.receive(resolve(reply.payload), name, p.SERVER_FQCN)
                return TaskAssignment(name, reply.get_header(p.TASK_ID), model)
            if timeout is not None and time.monotonic() - started > timeout:
                raise FlareTimeoutError(f"no task within {timeout:g} s")
            pause(self._stop, float(reply.get_header(p.RETRY_AFTER) or job.task_fetch_interval))

    def submit_result(self, task: TaskAssignment, result: FLModel) -> None:
        result = self.filters.send(result, task.name, p.SERVER_FQCN)
        serialized = serialize(self.cell, result, 1, self.settings.tensor)
        headers = {p.TASK_ID: task.task_id, MessageHeaderKey.PAYLOAD_ENCODING: Encoding.FOBS}
        try:
            if self._closed:
                raise JobError("the task exchange is closed")
            request_with_resends(self.cell, self._parent, self._channel, p.TOPIC_RESULT, serialized.payload, headers,
                                 self.settings, self._stop, f"the result of task {task.name!r}")
            serialized.wait_pulled(self._stop)  # the script's live weights must not change before the server has them
        finally:
            serialized.release()

    def log(self, key: str, value: Any, data_type: str, **kwargs: Any) -> None:
        record = {"key": key, "value": value, "type": str(data_type), **kwargs}
        self.cell.fire_and_forget(self._parent, self._channel, p.TOPIC_LOG, record)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cell.close()


def connect_from_bootstrap(path: str) -> TrainerExchange:
    try:
        boot = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise JobError(f"cannot read the Client API bootstrap file {path}: {e}") from None
    exchange = TrainerExchange(boot)
    import atexit

    atexit.register(exchange.close)
    return exchange


__all__ = ["TrainerExchange", "connect_from_bootstrap", "run_external"]
