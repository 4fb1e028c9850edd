"""Federated averaging (McMahan et al., 2017) with NVFlare 2.7's ``FedAvg`` and ``BaseFedAvg`` API.

Each round the server samples clients, sends them the global model and folds each result into running weighted sums
the moment it arrives (``WeightedAggregationHelper``): server memory stays about twice the model whatever the number
of clients. The averaged model replaces the global one (FULL results) or is added to it (DIFF results), is saved,
and may end the run early (``stop_cond``, ``patience``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flare import memory
from flare.apis.fl_constant import FLMetaKey
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.app_common.abstract.model_persistor import ModelPersistor
from flare.errors import ConfigError, JobError
from flare.workflows.aggregation import WeightedAggregationHelper
from flare.workflows.model_controller import ModelController
from flare.workflows.stop_condition import MetricTracker, StopCondition, as_finite, parse_stop_condition

_PT_SUFFIXES = (".pt", ".pth")
_NP_SUFFIXES = (".npy", ".npz", ".safetensors")


class ModelAggregator(Protocol):
    """A custom aggregator, NVFlare's ``ModelAggregator``: it sees each result whole, lazily referenced tensors
    included (resolve them with ``flare.fobs.lazy.iter_resolved``)."""

    def accept_model(self, model: FLModel) -> Any: ...

    def aggregate_model(self) -> FLModel: ...

    def reset_stats(self) -> None: ...


class BaseFedAvg(ModelController):
    """Round settings shared by FedAvg-style workflows.

    Parameters
    ----------
    num_clients
        Clients sampled each round (all of them when fewer are in the job).
    num_rounds
        Rounds to run.
    start_round
        Number of the first round (to continue a run).
    memory_gc_rounds
        Run ``flare.memory.cleanup()`` after every this many rounds (0: never); NVFlare's recipes call it
        ``server_memory_gc_rounds``.
    persistor_id, ignore_result_error, allow_empty_global_weights, task_check_period
        As ``ModelController``.
    """

    def __init__(
        self,
        *,
        num_clients: int = 3,
        num_rounds: int = 5,
        start_round: int = 0,
        memory_gc_rounds: int = 0,
        persistor_id: str = "persistor",
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
    ):
        super().__init__(
            persistor_id=persistor_id,
            ignore_result_error=ignore_result_error,
            allow_empty_global_weights=allow_empty_global_weights,
            task_check_period=task_check_period,
        )
        for name, value, least in (
            ("num_clients", num_clients, 1),
            ("num_rounds", num_rounds, 0),
            ("start_round", start_round, 0),
            ("memory_gc_rounds", memory_gc_rounds, 0),
        ):
            if type(value) is not int or value < least:
                raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.start_round = start_round
        self.memory_gc_rounds = memory_gc_rounds
        self.current_round: int | None = None

    def maybe_cleanup_memory(self) -> None:
        """Runs ``flare.memory.cleanup()`` when this round ends a block of ``memory_gc_rounds`` rounds."""
        if self.current_round is None:
            return
        seconds = memory.maybe_cleanup(self.current_round + 1, self.memory_gc_rounds)
        if seconds is not None:
            self.info(f"round {self.current_round}: memory cleanup took {seconds:.3f} s")


@dataclass
class _RoundState:
    expected: int
    received: int = 0
    aggregated: int = 0
    skipped: int = 0
    params_type: ParamsType | None = None
    all_metrics: bool = True
    error: BaseException | None = None


class FedAvg(BaseFedAvg):
    """FedAvg with streaming aggregation, model selection and early stopping.

    Parameters
    ----------
    num_clients, num_rounds, start_round, memory_gc_rounds, persistor_id
        As ``BaseFedAvg``.
    model
        The initial model: a dict of params or an ``FLModel``. None: the persistor's ``load_model()``.
    save_filename
        Used when the job has no persistor at ``persistor_id``: the file the global model is saved to (relative to
        the job's app directory; ``.pt``/``.pth`` through ``PTFileModelPersistor``, ``.npy``/``.npz``/
        ``.safetensors`` through ``NPModelPersistor``) and loaded from when it exists and ``model`` is None.
    aggregator
        A custom ``ModelAggregator``; None: the built-in streaming weighted average.
    stop_cond
        ``"<metric> <op> <number>"`` (op ``>= > <= < ==``), e.g. ``"accuracy >= 80"``: the run stops after the
        first round whose aggregated metrics meet it.
    patience
        With ``stop_cond``: stop after this many rounds in a row without improving the ``stop_cond`` metric.
    task_name
        Name of the training task sent to clients.
    exclude_vars
        Regular expression: params whose key it matches are not aggregated (the global model keeps them).
    aggregation_weights
        Per-client factor of a result's weight: ``{"site-1": 2.0}``; clients not named weigh 1.0.
    key_metric, key_metric_mode
        The aggregated metric that picks the best model, and whether "max" or "min" is best (None: the direction
        of ``stop_cond`` when it watches ``key_metric``, else "max").
    best_model_filename
        Where the best model is saved; None: ``best_`` and the name the latest model is saved under (e.g.
        ``best_FL_global_model.pt``), so it keeps the persistor's format.
    task_timeout
        Seconds a round waits for its results (0: no limit).
    """

    def __init__(
        self,
        *,
        num_clients: int = 3,
        num_rounds: int = 5,
        start_round: int = 0,
        persistor_id: str = "persistor",
        model: Mapping[str, Any] | FLModel | None = None,
        save_filename: str = "FL_global_model.pt",
        aggregator: ModelAggregator | None = None,
        stop_cond: str | None = None,
        patience: int | None = None,
        task_name: str = "train",
        exclude_vars: str | None = None,
        aggregation_weights: Mapping[str, float] | None = None,
        memory_gc_rounds: int = 0,
        key_metric: str = "accuracy",
        key_metric_mode: str | None = None,
        best_model_filename: str | None = None,
        task_timeout: float = 0,
        ignore_result_error: bool | None = None,
        allow_empty_global_weights: bool = False,
        task_check_period: float = 0.5,
    ):
        super().__init__(
            num_clients=num_clients,
            num_rounds=num_rounds,
            start_round=start_round,
            memory_gc_rounds=memory_gc_rounds,
            persistor_id=persistor_id,
            ignore_result_error=ignore_result_error,
            allow_empty_global_weights=allow_empty_global_weights,
            task_check_period=task_check_period,
        )
        if model is not None and not isinstance(model, (Mapping, FLModel)):
            raise ConfigError(f"model must be a dict of params or an FLModel, got {type(model).__name__}")
        if not save_filename:
            raise ConfigError("save_filename must name a file")
        if patience is not None and (type(patience) is not int or patience < 1):
            raise ConfigError(f"patience must be an int >= 1 or None, got {patience!r}")
        if key_metric_mode not in (None, "max", "min"):
            raise ConfigError(f"key_metric_mode must be 'max', 'min' or None, got {key_metric_mode!r}")
        if not task_timeout >= 0:
            raise ConfigError(f"task_timeout must be >= 0 seconds (0: no limit), got {task_timeout!r}")
        self.model = model
        self.save_filename = save_filename
        self.aggregator = aggregator
        self.stop_cond = stop_cond
        self.stop_condition: StopCondition | None = parse_stop_condition(stop_cond) if stop_cond else None
        self.patience = patience
        self.task_name = task_name
        self.exclude_vars = exclude_vars
        self.aggregation_weights = _checked_weights(aggregation_weights)
        self.key_metric = key_metric
        self.key_metric_mode = key_metric_mode or self._inferred_mode()
        self.best_model_filename = best_model_filename
        self.task_timeout = task_timeout
        try:
            self._params_sum = WeightedAggregationHelper(exclude_vars)
        except re.error as e:
            raise ConfigError(f"exclude_vars {exclude_vars!r} is not a regular expression: {e}") from None
        self._metrics_sum = WeightedAggregationHelper()
        self._round = _RoundState(expected=0)
        self._persistor: ModelPersistor | None = None
        if patience is not None and self.stop_condition is None:
            self.logger.warning("patience=%d has no effect without stop_cond (NVFlare's rule)", patience)
        if aggregator is not None and (exclude_vars or aggregation_weights):
            self.logger.warning("exclude_vars and aggregation_weights apply to the built-in aggregation only")

    def _inferred_mode(self) -> str:
        if self.stop_condition is not None and self.stop_condition.metric == self.key_metric:
            return self.stop_condition.mode or "max"
        return "max"

    # ---- the workflow ----
    def run(self) -> None:
        self.info("Start FedAvg.")
        model = self._initial_model()
        model.start_round = self.start_round
        model.total_rounds = self.num_rounds
        best = MetricTracker(self.key_metric, self.key_metric_mode)
        condition = self.stop_condition
        # patience counts rounds without improving the metric stop_cond watches, as NVFlare does
        progress = MetricTracker(condition.metric, condition.mode or "max") if condition is not None else None
        for self.current_round in range(self.start_round, self.start_round + self.num_rounds):
            self.info(f"Round {self.current_round} started.")
            model.current_round = self.current_round
            clients, min_responses, wait_after_min = self.round_targets()
            self._begin_round(len(clients))
            handle = self.send_model(
                task_name=self.task_name,
                data=model,
                targets=clients,
                min_responses=min_responses,
                timeout=self.task_timeout,
                callback=self._fold_result,
                wait_time_after_min_received=wait_after_min,
            )
            try:
                self.wait_for(handle)
            except JobError:
                if self.abort_signal.triggered:
                    self.info(f"Round {self.current_round}: the job was aborted; finishing FedAvg.")
                    return
                raise
            model = self.update_model(model, self._aggregated_model(model))
            self.info(f"Round {self.current_round} global metrics: {model.metrics}")
            self.save_model(model)
            if best.update(model.metrics):
                self.info(f"New best model: {self.key_metric} = {best.best:g}")
                self.save_model(model, self.best_model_path())
            if progress is not None and self._should_stop(model.metrics, progress):
                self.info(f"Stopping at round {self.current_round} of {self.num_rounds}.")
                break
            self.maybe_cleanup_memory()
        self.info("Finished FedAvg.")

    def round_targets(self) -> tuple[list[str], int, float]:
        """The clients of a round, how many results it needs, and how long it waits for the rest once it has
        them: ``num_clients`` sampled clients, all of them needed."""
        clients = self.sample_clients(self.num_clients)
        return clients, len(clients), 0.0

    def _should_stop(self, metrics: Mapping[str, Any] | None, progress: MetricTracker) -> bool:
        progress.update(metrics)
        if self.stop_condition is not None and self.stop_condition.holds(metrics):
            self.info(f"Early stop condition satisfied: {self.stop_condition}")
            return True
        if self.patience and progress.rounds_without_improvement >= self.patience:
            self.info(f"No improvement of {progress.metric} in {self.patience} rounds (patience)")
            return True
        return False

    def _begin_round(self, expected: int) -> None:
        self._round = _RoundState(expected=expected)
        if self.aggregator is not None:
            self.aggregator.reset_stats()
        else:
            self._params_sum.reset()
            self._metrics_sum.reset()

    def _fold_result(self, result: FLModel) -> None:
        """Runs once per client result, one at a time: folds it into the running sums and lets it go."""
        state = self._round
        client = result.meta.get(FLMetaKey.CLIENT_NAME, "an unnamed client")
        state.received += 1
        if state.error is not None:
            return
        try:
            if self.aggregator is not None:
                self.aggregator.accept_model(result)
                state.aggregated += 1
                return
            try:
                self._fold_params(result, client)
            finally:
                result.params = None  # what was folded is not needed again: let it go now
        except Exception as e:  # kept for run(): raised in the engine's thread it would be lost
            state.error = e

    def _fold_params(self, result: FLModel, client: str) -> None:
        state = self._round
        if not result.params:
            state.skipped += 1
            self.warning(f"Round {self.current_round}: empty result from {client}, skipped.")
            return
        if not isinstance(result.params, Mapping):
            raise JobError(f"{client} sent params of type {type(result.params).__name__}; FedAvg needs a dict")
        params_type = ParamsType(result.params_type or ParamsType.FULL)
        if state.params_type is None:
            state.params_type = params_type
        elif params_type != state.params_type:
            raise JobError(
                f"round {self.current_round}: {client} sent {params_type.value} params, earlier results were "
                f"{state.params_type.value}: give every client the same params_transfer_type"
            )
        weight = self.result_weight(client, result.meta)
        self._params_sum.add(result.params, weight, client)
        state.aggregated += 1
        if not result.metrics:
            state.all_metrics = False
        elif state.all_metrics:
            finite = {key: number for key, value in result.metrics.items() if (number := as_finite(value)) is not None}
            self._metrics_sum.add(finite, weight, client)
        self.info(f"Aggregated {state.aggregated}/{state.expected} results ({client}, weight {weight:g})")

    def result_weight(self, client: str, meta: Mapping[str, Any]) -> float:
        """``aggregation_weights[client]`` (1.0 when not named) times the result's ``NUM_STEPS_CURRENT_ROUND``
        (1.0 when missing, not a number or not positive)."""
        steps: Any = meta.get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)
        try:
            number = float(steps)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number > 0):
            if steps is not None:
                self.warning(
                    f"{client}: {FLMetaKey.NUM_STEPS_CURRENT_ROUND}={steps!r} is not a positive number; 1.0 is used"
                )
            number = 1.0
        return self.aggregation_weights.get(client, 1.0) * number

    def _aggregated_model(self, global_model: FLModel) -> FLModel:
        state = self._round
        if state.error is not None:
            raise state.error
        meta = {"nr_aggregated": state.aggregated, "current_round": self.current_round}
        if self.aggregator is not None:
            if state.aggregated == 0:
                raise JobError(f"round {self.current_round}: no client result came back")
            aggregated = self.aggregator.aggregate_model()
            aggregated.meta = {**(aggregated.meta or {}), **meta}
            return aggregated
        if state.aggregated == 0:
            raise JobError(
                f"round {self.current_round}: none of the {state.received} results had model params "
                f"({state.skipped} empty); the global model cannot be updated"
            )
        params = self._params_sum.get_result(global_model.params, add=state.params_type == ParamsType.DIFF)
        metrics = self._metrics_sum.get_result() if state.all_metrics else None
        return FLModel(params_type=ParamsType.FULL, params=params, metrics=metrics or None, meta=meta)

    def update_model(self, model: FLModel, aggregated: FLModel) -> FLModel:
        """The new global model: FULL params replace the global ones (keys not aggregated keep their value), DIFF
        params are added to them; metrics and meta come from ``aggregated``."""
        params = aggregated.params or {}
        if aggregated.params_type == ParamsType.DIFF:
            adder = WeightedAggregationHelper()
            adder.add(params, 1.0, "the aggregator")
            params = adder.get_result(model.params, add=True)
        return FLModel(
            params_type=ParamsType.FULL,
            params={**(model.params or {}), **params},
            metrics=aggregated.metrics,
            start_round=model.start_round,
            current_round=model.current_round,
            total_rounds=model.total_rounds,
            meta=dict(aggregated.meta),
        )

    # ---- models in and out ----
    def _initial_model(self) -> FLModel:
        if isinstance(self.model, FLModel):
            model = self.model
        elif self.model is not None:
            model = FLModel(params=dict(self.model))
        else:
            model = self.load_model()
        if model.params is None:
            model.params = {}
        self.info(f"Initial model: {len(model.params)} params")
        return model

    def load_model(self) -> FLModel:
        """The persistor's model; without a persistor, the model saved at ``save_filename`` if there is one, else
        an empty model (the first round's results then become the global model)."""
        if self._component_persistor() is not None:
            return self.persistor.load_model()
        path = Path(self.save_filename)
        path = path if path.is_absolute() else self.app_dir / path
        if path.is_file():
            self.info(f"Loading the initial model from {path}")
            loader = self.default_persistor(initial_ckpt=path)
            loader.bind(self.engine)
            return loader.load_model()
        self.warning(
            f"no persistor {self._persistor_id!r}, no model and no {path}: the first round's results become the "
            "global model"
        )
        return FLModel(params={})

    def save_model(self, model: FLModel, filename: str | None = None) -> None:
        """Saves ``model`` with the persistor, to ``filename`` or the persistor's own file."""
        started = time.monotonic()
        path = self.persistor.save_model(model, filename)
        self.info(f"Model saved to {path} in {time.monotonic() - started:.2f} s")

    @property
    def persistor(self) -> ModelPersistor:
        """The job's persistor at ``persistor_id``, else ``default_persistor()``; bound to the job."""
        if self._persistor is None:
            persistor = self._component_persistor() or self.default_persistor()
            if hasattr(persistor, "bind"):
                persistor.bind(self.engine)
            self._persistor = persistor
        return self._persistor

    def _component_persistor(self) -> ModelPersistor | None:
        return self.engine.get_component(self._persistor_id) if self._persistor_id else None

    def default_persistor(self, initial_ckpt: Path | None = None) -> ModelPersistor:
        """The persistor of a job without one: picked by ``save_filename``'s suffix."""
        suffix = Path(self.save_filename).suffix
        if suffix in _PT_SUFFIXES:
            from flare.app_opt.pt.file_model_persistor import PTFileModelPersistor

            return PTFileModelPersistor(model={}, initial_ckpt=initial_ckpt, save_filename=self.save_filename)
        if suffix in _NP_SUFFIXES:
            from flare.app_common.np.np_model_persistor import NPModelPersistor

            return NPModelPersistor(model={}, initial_ckpt=initial_ckpt, save_filename=self.save_filename)
        raise ConfigError(
            f"save_filename {self.save_filename!r} must end with one of {_PT_SUFFIXES + _NP_SUFFIXES}, or give the "
            f"job a persistor with id {self._persistor_id!r}"
        )

    def best_model_path(self) -> str:
        """``best_model_filename``, or ``best_`` and the name the latest model is saved under."""
        if self.best_model_filename:
            return self.best_model_filename
        latest = Path(getattr(self.persistor, "save_filename", None) or self.save_filename)
        return str(latest.with_name(f"best_{latest.name}"))


def _checked_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    checked: dict[str, float] = {}
    for client, weight in (weights or {}).items():
        number = as_finite(weight)
        if number is None or number < 0:
            raise ConfigError(f"aggregation_weights[{client!r}] must be a finite number >= 0, got {weight!r}")
        checked[str(client)] = number
    return checked


__all__ = ["BaseFedAvg", "FedAvg", "ModelAggregator"]
