"""The seam between the Client API (``flare.client``) and the runtime that carries its tasks.

The Client API asks an exchange for tasks and hands it results; the runtime provides the exchange: in the client
process itself (the script runs in a thread of the job), or over a cell from an external training process. The
Client API finds its exchange with ``find_exchange()``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from flare.apis.fl_constant import ExchangeFormat, TransferType
from flare.app_common.abstract.fl_model import FLModel

BOOTSTRAP_ENV = "FLARE_CLIENT_API_BOOTSTRAP"


@dataclass(frozen=True)
class ClientAPIConfig:
    """How the Client API converts and names things for one job (NVFlare's TASK_EXCHANGE keys)."""

    params_exchange_format: str = ExchangeFormat.RAW
    server_expected_format: str = ExchangeFormat.NUMPY
    transfer_type: str = TransferType.FULL
    train_task_name: str = "train"
    eval_task_name: str = "validate"
    submit_model_task_name: str = "submit_model"
    train_with_eval: bool = False
    memory_gc_rounds: int = 0
    cuda_empty_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskAssignment:
    """One task for the training script: its name, id and model, as the server sent them."""

    name: str
    task_id: str
    model: FLModel


class TaskExchange(Protocol):
    """What the runtime provides to the Client API."""

    site_name: str
    job_id: str
    config: ClientAPIConfig

    def fetch_task(self, timeout: float | None) -> TaskAssignment | None:
        """The next task, waiting up to ``timeout`` seconds (None: until one comes or the job ends). None when the
        job has ended; raises ``FlareTimeoutError`` when the time ran out."""

    def submit_result(self, task: TaskAssignment, result: FLModel) -> None:
        """Delivers the result of ``task``; raises ``JobError`` when it cannot be delivered."""

    def log(self, key: str, value: Any, data_type: str, **kwargs: Any) -> None:
        """Records a metric (``SummaryWriter`` and ``flare.log`` end here)."""

    def close(self) -> None:
        """Ends the exchange; further calls raise."""


_local = threading.local()
_process_lock = threading.Lock()
_process_exchanges: list[TaskExchange] = []


@contextmanager
def bound(exchange: TaskExchange) -> Iterator[TaskExchange]:
    """Makes ``exchange`` the one the Client API finds in this thread (and, while it is the only one, in threads
    this process starts without their own)."""
    previous = getattr(_local, "exchange", None)
    _local.exchange = exchange
    with _process_lock:
        _process_exchanges.append(exchange)
    try:
        yield exchange
    finally:
        _local.exchange = previous
        with _process_lock:
            _process_exchanges.remove(exchange)


def find_exchange() -> TaskExchange | None:
    """The exchange of this thread, else the only one of this process, else the external one the runtime described
    in ``FLARE_CLIENT_API_BOOTSTRAP`` (connected on first use); None when there is none."""
    exchange = getattr(_local, "exchange", None)
    if exchange is not None:
        return exchange
    with _process_lock:
        if len(_process_exchanges) == 1:
            return _process_exchanges[0]
        if _process_exchanges:
            return None
    path = os.environ.get(BOOTSTRAP_ENV)
    if not path:
        return None
    from flare.runtime.external import connect_from_bootstrap

    exchange = connect_from_bootstrap(path)
    with _process_lock:
        _process_exchanges.append(exchange)
    return exchange


__all__ = ["BOOTSTRAP_ENV", "ClientAPIConfig", "TaskAssignment", "TaskExchange", "bound", "find_exchange"]
