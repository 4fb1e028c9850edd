"""``ScatterAndGather``: NVFlare's classic workflow. Every round goes to every client of the job; the round goes on
once ``min_clients`` results are in and the others had ``wait_time_after_min_received`` seconds more, with a warning
naming the clients that are missing. Results are folded as they arrive, as in FedAvg."""

from __future__ import annotations

from typing import Any

from flare.app_common.abstract.fl_model import FLModel
from flare.errors import ConfigError, JobError
from flare.workflows.fedavg import FedAvg


class ScatterAndGather(FedAvg):
    """NVFlare's ``ScatterAndGather`` arguments. ``aggregator_id`` names a job component used as the aggregator when
    there is one (else the built-in weighted average); ``shareable_generator_id`` is accepted for configurations
    written for NVFlare and has no use here (models travel as ``FLModel``), nor has ``snapshot_every_n_rounds``
    (jobs are not snapshotted for resumption yet)."""

    def __init__(
        self,
        min_clients: int = 1000,
        num_rounds: int = 5,
        start_round: int = 0,
        wait_time_after_min_received: float = 10,
        aggregator_id: str = "aggregator",
        persistor_id: str = "",
        shareable_generator_id: str = "shareable_generator",
        train_task_name: str = "train",
        train_timeout: float = 0,
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
        persist_every_n_rounds: int = 1,
        snapshot_every_n_rounds: int = 1,
        memory_gc_rounds: int = 1,
        enable_tensor_disk_offload: bool = False,
        **fedavg_args: Any,
    ):
        if type(min_clients) is not int or min_clients < 1:
            raise ConfigError(f"min_clients must be a positive int, got {min_clients!r}")
        if not wait_time_after_min_received >= 0:
            raise ConfigError(f"wait_time_after_min_received must be >= 0, got {wait_time_after_min_received!r}")
        if type(persist_every_n_rounds) is not int or persist_every_n_rounds < 0:
            raise ConfigError(f"persist_every_n_rounds must be an int >= 0, got {persist_every_n_rounds!r}")
        super().__init__(
            num_clients=min_clients, num_rounds=num_rounds, start_round=start_round,
            persistor_id=persistor_id or "persistor", task_name=train_task_name, task_timeout=train_timeout,
            ignore_result_error=ignore_result_error, allow_empty_global_weights=allow_empty_global_weights,
            task_check_period=task_check_period, memory_gc_rounds=memory_gc_rounds, **fedavg_args,
        )
        self.min_clients = min_clients
        self.wait_time_after_min_received = wait_time_after_min_received
        self.aggregator_id = aggregator_id
        self.persist_every_n_rounds = persist_every_n_rounds
        self.snapshot_every_n_rounds = snapshot_every_n_rounds

    def run(self) -> None:
        if self.aggregator is None:
            self.aggregator = self.engine.get_component(self.aggregator_id)
        super().run()

    def round_targets(self) -> tuple[list[str], int, float]:
        clients = self.engine.alive_clients()
        if not clients:
            raise JobError("no clients are left in the job")
        needed = min(self.min_clients, len(clients))
        if needed < self.min_clients:
            self.info(f"{len(clients)} clients in the job, fewer than min_clients={self.min_clients}: all are needed")
        return clients, needed, float(self.wait_time_after_min_received)

    def save_model(self, model: FLModel, filename: str | None = None) -> None:
        """The latest model is saved every ``persist_every_n_rounds`` rounds (0: never) and at the last round; a
        best model whenever it improves."""
        n = self.persist_every_n_rounds
        last = self.current_round == self.start_round + self.num_rounds - 1
        if filename is None and not last and (n == 0 or (self.current_round + 1) % n):
            return
        super().save_model(model, filename)


__all__ = ["ScatterAndGather"]
