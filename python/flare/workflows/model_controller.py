"""``ModelController``: the base of server workflows, NVFlare's API. A workflow's ``run()`` reads like the algorithm:
load a model, send it to clients, fold their results, save.

The runtime binds an engine (``ControllerEngine``) before calling ``run()``; the controller never touches cells.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from flare.apis.fl_constant import FLMetaKey
from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel
from flare.errors import JobError

ResultCallback = Callable[[FLModel], None]


class TaskHandle(Protocol):
    """One task sent to some clients."""

    def is_done(self) -> bool:
        """True once every target answered (or was given up on) and every result was handed over."""

    def wait(self, timeout: float | None) -> bool:
        """Waits until done; False if ``timeout`` seconds passed first."""


class ControllerEngine(Protocol):
    """What the runtime gives a controller."""

    job_id: str
    app_dir: Path  # the server's app workspace of this job: models and results are written here
    abort_signal: Signal

    def alive_clients(self) -> list[str]:
        """Names of the clients taking part in the job now."""

    def send_task(
        self,
        task_name: str,
        data: FLModel,
        targets: list[str],
        min_responses: int,
        timeout: float,
        result_cb: Callable[[str, FLModel], None],
        wait_time_after_min_received: float = 0,
    ) -> TaskHandle:
        """Sends ``data`` as task ``task_name`` to ``targets``. ``result_cb(client, result)`` runs once per result,
        one result at a time per task; a result's params may hold ``LazyDownloadRef`` values still to be pulled
        (``flare.fobs.lazy.iter_resolved``). Raises ``JobError`` when fewer than ``min_responses`` results can still
        come (targets lost and no other client to give the task to) or ``timeout`` (> 0) passed first."""

    def get_component(self, component_id: str) -> Any:
        """The job's component with that id (e.g. the persistor); None when there is none."""


class ModelController:
    """Base of FedAvg and other model-based workflows. Subclasses implement ``run()``."""

    def __init__(
        self,
        *,
        persistor_id: str = "persistor",
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
    ):
        self._persistor_id = persistor_id
        self.ignore_result_error = ignore_result_error
        self.allow_empty_global_weights = allow_empty_global_weights
        self._task_check_period = task_check_period
        self._engine: ControllerEngine | None = None
        self._tasks: list[TaskHandle] = []
        self._tasks_lock = threading.Lock()
        self.logger = logging.getLogger(type(self).__name__)

    # ---- bound by the runtime ----
    def bind(self, engine: ControllerEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> ControllerEngine:
        if self._engine is None:
            raise JobError(f"{type(self).__name__} is not bound to a running job: the runtime calls bind() first")
        return self._engine

    @property
    def abort_signal(self) -> Signal:
        return self.engine.abort_signal

    @property
    def app_dir(self) -> Path:
        return self.engine.app_dir

    def run(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    # ---- NVFlare's controller API ----
    def send_model(
        self,
        task_name: str = "train",
        data: FLModel | None = None,
        targets: list[str] | None = None,
        min_responses: int | None = None,
        timeout: float = 0,
        callback: ResultCallback | None = None,
        wait_time_after_min_received: float = 0,
    ) -> TaskHandle:
        """Sends ``data`` to ``targets`` (default: every client) without waiting; ``callback(result)`` runs per
        result, with ``result.meta["client_name"]`` naming its client. The task is done once ``min_responses``
        results are in (default: all targets) and, after that, the others are in or
        ``wait_time_after_min_received`` seconds passed; results after that are discarded."""
        data = data if data is not None else FLModel(params={})
        if not isinstance(data, FLModel):
            raise TypeError(f"data must be an FLModel, got {type(data).__name__}")
        targets = list(targets) if targets is not None else self.engine.alive_clients()
        if not targets:
            raise JobError(f"task {task_name!r}: no clients to send it to")
        min_responses = len(targets) if min_responses is None else min_responses

        def on_result(client: str, result: FLModel) -> None:
            result.meta[FLMetaKey.CLIENT_NAME] = client
            if callback is not None:
                callback(result)

        handle = self.engine.send_task(task_name, data, targets, min_responses, timeout, on_result,
                                       wait_time_after_min_received)
        with self._tasks_lock:
            # finished tasks go: each holds the model it sent
            self._tasks = [t for t in self._tasks if not t.is_done()] + [handle]
        return handle

    def send_model_and_wait(
        self,
        task_name: str = "train",
        data: FLModel | None = None,
        targets: list[str] | None = None,
        min_responses: int | None = None,
        timeout: float = 0,
    ) -> list[FLModel]:
        """Sends and waits for the results; returns them in arrival order."""
        results: list[FLModel] = []
        lock = threading.Lock()

        def collect(result: FLModel) -> None:
            from flare.fobs.lazy import resolve

            resolved = resolve(result)
            with lock:
                results.append(resolved)

        handle = self.send_model(task_name, data, targets, min_responses, timeout, collect)
        self.wait_for(handle)
        return results

    def wait_for(self, handle: TaskHandle) -> None:
        """Waits for a task, checking every ``task_check_period`` seconds; raises ``JobError`` when the job is
        aborted meanwhile."""
        while not handle.wait(self._task_check_period):
            if self.abort_signal.triggered:
                raise JobError("the job was aborted")

    def get_num_standing_tasks(self) -> int:
        """Tasks sent and not yet done."""
        with self._tasks_lock:
            self._tasks = [t for t in self._tasks if not t.is_done()]
            return len(self._tasks)

    def sample_clients(self, num_clients: int | None = None) -> list[str]:
        """``num_clients`` clients picked at random (all of them when None or when there are not more)."""
        clients = self.engine.alive_clients()
        if num_clients is None or num_clients == len(clients):
            return clients
        if num_clients > len(clients):
            self.logger.error(
                "asked for %d clients but only %d are in the job: using all of them", num_clients, len(clients)
            )
            return clients
        random.shuffle(clients)
        return clients[:num_clients]

    def load_model(self) -> FLModel:
        """The initial model from the job's persistor."""
        persistor = self.engine.get_component(self._persistor_id)
        if persistor is None:
            raise JobError(f"no model persistor with id {self._persistor_id!r} in the job's server components")
        return persistor.load_model()

    def save_model(self, model: FLModel) -> None:
        """Saves ``model`` with the job's persistor; a job without one logs that nothing was saved."""
        persistor = self.engine.get_component(self._persistor_id)
        if persistor is None:
            self.logger.warning("no model persistor %r: the model is not saved", self._persistor_id)
            return
        started = time.monotonic()
        persistor.save_model(model)
        self.logger.info("model saved in %.2f s", time.monotonic() - started)

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warning(self, msg: str) -> None:
        self.logger.warning(msg)

    def error(self, msg: str) -> None:
        self.logger.error(msg)

    def panic(self, msg: str) -> None:
        """Ends the job with an error."""
        self.logger.error(msg)
        raise JobError(msg)


__all__ = ["ControllerEngine", "ModelController", "TaskHandle"]
