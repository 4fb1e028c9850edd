"""FedAvg over a fake engine: streaming weighted means, DIFF, dtypes, weights, early stopping, model selection,
memory hooks; the persistors' file formats; the fold's memory bound."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import flare.memory
from flare.apis.fl_constant import FLMetaKey
from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.app_common.abstract.model_persistor import ModelPersistor
from flare.app_common.np.constants import NPConstants
from flare.app_common.np.np_model_persistor import NPModelPersistor
from flare.app_opt.pt.fedavg import PTFedAvg
from flare.app_opt.pt.fedavg_early_stopping import PTFedAvgEarlyStopping
from flare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from flare.errors import ConfigError, JobError
from flare.workflows import BaseFedAvg, FedAvg, ModelController
from flare.workflows.aggregation import WeightedAggregationHelper
from flare.workflows.stop_condition import parse_stop_condition

STEPS = FLMetaKey.NUM_STEPS_CURRENT_ROUND
Client = Callable[[FLModel], FLModel]


class _Handle:
    def __init__(self, thread: threading.Thread):
        self._thread = thread

    def is_done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


class FakeEngine:
    """Clients are functions of the model they get; their results reach the callback from another thread, one at
    a time, as the runtime delivers them."""

    def __init__(self, app_dir: Path, clients: dict[str, Client], components: dict | None = None):
        self.job_id = "job-1"
        self.app_dir = app_dir
        self.abort_signal = Signal()
        self.clients = clients
        self.components = components or {}
        self.rounds: list[tuple[str, int | None, list[str]]] = []
        self.errors: list[BaseException] = []

    def alive_clients(self) -> list[str]:
        return list(self.clients)

    def send_task(self, task_name, data, targets, min_responses, timeout, result_cb, wait_time_after_min_received=0):
        self.rounds.append((task_name, data.current_round, sorted(targets)))

        def deliver() -> None:
            try:
                for client in targets:
                    result_cb(client, self.clients[client](data))
            except BaseException as e:  # surfaced by the test through engine.errors
                self.errors.append(e)

        thread = threading.Thread(target=deliver)
        thread.start()
        return _Handle(thread)

    def get_component(self, component_id: str):
        return self.components.get(component_id)


class MemoryPersistor(ModelPersistor):
    """Keeps every saved model, by file name."""

    def __init__(self, initial: dict | None = None):
        super().__init__(save_filename="FL_global_model.pt")
        self.initial = initial or {}
        self.saved: list[tuple[str, FLModel]] = []

    def load_model(self) -> FLModel:
        return FLModel(params=dict(self.initial))

    def save_model(self, model: FLModel, filename=None) -> Path:
        name = str(filename or self.save_filename)
        # a snapshot: the workflow goes on updating its model object's round numbers
        snapshot = FLModel(params_type=model.params_type, params=dict(model.params), metrics=model.metrics,
                           current_round=model.current_round, meta=dict(model.meta))
        self.saved.append((name, snapshot))
        return self.save_path(name)

    def last(self, name: str = "FL_global_model.pt") -> FLModel:
        return [m for n, m in self.saved if n == name][-1]


def run_fedavg(tmp_path: Path, clients: dict[str, Client], initial: dict, cls=FedAvg, **settings):
    persistor = MemoryPersistor(initial)
    engine = FakeEngine(tmp_path, clients, {"persistor": persistor})
    settings.setdefault("num_clients", len(clients))
    settings.setdefault("num_rounds", 1)
    workflow = cls(task_check_period=0.01, **settings)
    workflow.bind(engine)
    workflow.run()
    assert not engine.errors
    return workflow, engine, persistor


def sends(params_of: Callable[[FLModel], dict], steps=None, metrics=None, params_type=None) -> Client:
    def client(model: FLModel) -> FLModel:
        meta = {} if steps is None else {STEPS: steps}
        kind = params_type or ParamsType.FULL
        return FLModel(params_type=kind, params=params_of(model), metrics=metrics, meta=meta)

    return client


# ---- the weighted mean ----
def test_full_results_give_the_exact_weighted_mean(tmp_path):
    rng = np.random.default_rng(0)
    values = {f"site-{i}": rng.standard_normal((64, 33)).astype(np.float32) for i in range(1, 4)}
    steps = {"site-1": 1, "site-2": 2, "site-3": 5}
    clients = {name: sends(lambda m, v=v: {"w": v, "b": v[0].astype(np.float64)}, steps[name])
               for name, v in values.items()}
    _, engine, persistor = run_fedavg(tmp_path, clients, {"w": np.zeros((64, 33), np.float32), "b": np.zeros(33)})
    total = sum(steps.values())
    expected = sum(values[n].astype(np.float64) * steps[n] for n in values) / total
    got = persistor.last()
    assert got.params["w"].dtype == np.float32 and got.params["b"].dtype == np.float64
    np.testing.assert_allclose(got.params["w"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got.params["b"], expected[0], rtol=1e-12)
    assert got.meta == {"nr_aggregated": 3, "current_round": 0}
    assert engine.rounds == [("train", 0, ["site-1", "site-2", "site-3"])]


def test_results_are_released_once_folded(tmp_path):
    returned: list[FLModel] = []

    def client(model: FLModel) -> FLModel:
        returned.append(FLModel(params={"w": np.ones(4)}, meta={STEPS: 1}))
        return returned[-1]

    run_fedavg(tmp_path, {"site-1": client, "site-2": client}, {"w": np.zeros(4)}, num_rounds=2)
    assert len(returned) == 4 and all(r.params is None for r in returned)


def test_the_global_model_keeps_its_containers(tmp_path):
    clients = {"site-1": sends(lambda m: {"np": torch.ones(3), "pt": np.ones(3, np.float32)}),
               "site-2": sends(lambda m: {"np": torch.full((3,), 3.0), "pt": np.full(3, 3.0, np.float32)})}
    got = run_fedavg(tmp_path, clients, {"np": np.zeros(3, np.float32), "pt": torch.zeros(3, dtype=torch.float64)})
    params = got[2].last().params
    assert isinstance(params["np"], np.ndarray) and params["np"].dtype == np.float32
    assert params["np"].tolist() == [2.0] * 3
    assert isinstance(params["pt"], torch.Tensor) and params["pt"].dtype == torch.float64
    assert params["pt"].tolist() == [2.0] * 3


def test_a_custom_aggregator_gets_each_result_and_its_diff_is_applied(tmp_path):
    class SumOfDiffs:
        def __init__(self):
            self.accepted: list[str] = []
            self.resets = 0

        def reset_stats(self):
            self.resets += 1
            self.accepted.clear()

        def accept_model(self, model: FLModel):
            self.accepted.append(model.meta[FLMetaKey.CLIENT_NAME])

        def aggregate_model(self) -> FLModel:
            return FLModel(params_type=ParamsType.DIFF, params={"w": np.full(2, float(len(self.accepted)))})

    aggregator = SumOfDiffs()
    clients = {"site-1": sends(lambda m: {"w": np.ones(2)}), "site-2": sends(lambda m: {"w": np.ones(2)})}
    got = run_fedavg(tmp_path, clients, {"w": np.ones(2, np.float32)}, num_rounds=2, aggregator=aggregator)[2].last()
    assert aggregator.resets == 2 and sorted(aggregator.accepted) == ["site-1", "site-2"]
    assert got.params["w"].dtype == np.float32 and got.params["w"].tolist() == [5.0, 5.0]
    assert got.meta == {"nr_aggregated": 2, "current_round": 1}


def test_diff_results_are_added_to_the_global_model(tmp_path):
    start = np.arange(6, dtype=np.float32).reshape(2, 3)
    clients = {
        "site-1": sends(lambda m: {"w": np.full((2, 3), 1.0, np.float32)}, 1, params_type=ParamsType.DIFF),
        "site-2": sends(lambda m: {"w": np.full((2, 3), 4.0, np.float32)}, 3, params_type=ParamsType.DIFF),
    }
    _, _, persistor = run_fedavg(tmp_path, clients, {"w": start, "frozen": np.ones(2)}, num_rounds=2)
    # each round adds (1*1 + 3*4) / 4 = 3.25
    got = persistor.last()
    np.testing.assert_allclose(got.params["w"], start + 6.5)
    np.testing.assert_array_equal(got.params["frozen"], np.ones(2))
    assert got.params_type == ParamsType.FULL


def test_torch_half_precision_dtypes_are_kept_and_summed_in_float32(tmp_path):
    values = [torch.randn(300, 7, dtype=torch.float32) for _ in range(3)]
    # a large value next to small ones: summed in bf16 (fp16) the small ones would vanish, in float32 they count
    for v in values[1:]:
        v[0, 0] = 1.0
    values[0][0, 0] = 2048.0
    clients = {
        f"site-{i}": sends(lambda m, v=v: {"bf": v.to(torch.bfloat16), "h": v.to(torch.float16), "f": v})
        for i, v in enumerate(values)
    }
    initial = {"bf": torch.zeros(300, 7, dtype=torch.bfloat16), "h": torch.zeros(300, 7, dtype=torch.float16),
               "f": torch.zeros(300, 7)}
    _, _, persistor = run_fedavg(tmp_path, clients, initial)
    got = persistor.last().params
    for key, dtype in (("bf", torch.bfloat16), ("h", torch.float16), ("f", torch.float32)):
        assert isinstance(got[key], torch.Tensor) and got[key].dtype == dtype
        exact = (sum(v.to(dtype).double() for v in values) / 3).to(dtype)
        assert got[key][0, 0] == exact[0, 0] == torch.tensor(2050 / 3).to(dtype), key
        tolerance = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-6}[dtype]
        assert torch.allclose(got[key].double(), exact.double(), rtol=tolerance, atol=tolerance), key


def test_int_params_are_averaged_and_rounded_back(tmp_path):
    clients = {
        "site-1": sends(lambda m: {"n": np.array([1, 10, -3], np.int64), "c": torch.tensor([2, 4], dtype=torch.int32)}),
        "site-2": sends(lambda m: {"n": np.array([2, 11, -4], np.int64), "c": torch.tensor([3, 9], dtype=torch.int32)}),
        "site-3": sends(lambda m: {"n": np.array([4, 12, -8], np.int64), "c": torch.tensor([3, 9], dtype=torch.int32)}),
    }
    initial = {"n": np.zeros(3, np.int64), "c": torch.zeros(2, dtype=torch.int32)}
    got = run_fedavg(tmp_path, clients, initial)[2].last().params
    assert got["n"].dtype == np.int64 and got["n"].tolist() == [2, 11, -5]  # means 2.33, 11, -5
    assert got["c"].dtype == torch.int32 and got["c"].tolist() == [3, 7]  # means 2.67, 7.33


def test_aggregation_weights_multiply_the_steps(tmp_path):
    clients = {
        "site-1": sends(lambda m: {"w": np.array([0.0])}, 2),
        "site-2": sends(lambda m: {"w": np.array([10.0])}, 2),
    }
    got = run_fedavg(tmp_path, clients, {"w": np.zeros(1)}, aggregation_weights={"site-2": 4.0})[2].last()
    np.testing.assert_allclose(got.params["w"], [10.0 * 8 / 10])


@pytest.mark.parametrize("bad_steps", [None, "many", -2, 0, math.nan, math.inf])
def test_missing_or_invalid_steps_weigh_one(tmp_path, bad_steps):
    clients = {
        "site-1": sends(lambda m: {"w": np.array([0.0])}, bad_steps),
        "site-2": sends(lambda m: {"w": np.array([6.0])}, 2),
    }
    got = run_fedavg(tmp_path, clients, {"w": np.zeros(1)})[2].last()
    np.testing.assert_allclose(got.params["w"], [4.0])  # (0 * 1 + 6 * 2) / 3


def test_exclude_vars_keeps_the_global_value(tmp_path):
    clients = {"site-1": sends(lambda m: {"bn.mean": np.ones(2), "fc.w": np.ones(2)}),
               "site-2": sends(lambda m: {"bn.mean": np.ones(2) * 3, "fc.w": np.ones(2) * 3})}
    initial = {"bn.mean": np.full(2, 7.0), "fc.w": np.zeros(2)}
    got = run_fedavg(tmp_path, clients, initial, exclude_vars=r"^bn\.")[2].last().params
    np.testing.assert_array_equal(got["bn.mean"], [7.0, 7.0])
    np.testing.assert_array_equal(got["fc.w"], [2.0, 2.0])


def test_empty_results_are_skipped_and_a_round_without_params_fails(tmp_path, caplog):
    clients = {
        "site-1": sends(lambda m: {"w": np.array([2.0])}),
        "site-2": lambda m: FLModel(metrics={"accuracy": 0.1}),
        "site-3": sends(lambda m: {"w": np.array([4.0])}),
    }
    got = run_fedavg(tmp_path, clients, {"w": np.zeros(1)})[2].last()
    np.testing.assert_allclose(got.params["w"], [3.0])
    assert got.meta["nr_aggregated"] == 2
    assert "empty result from site-2" in caplog.text

    with pytest.raises(JobError, match="none of the 2 results had model params"):
        run_fedavg(tmp_path, {"a": lambda m: FLModel(metrics={"x": 1}), "b": lambda m: FLModel(params={})},
                   {"w": np.zeros(1)})


def test_results_that_do_not_fit_fail_the_round(tmp_path):
    mixed = {"site-1": sends(lambda m: {"w": np.ones(2)}),
             "site-2": sends(lambda m: {"w": np.ones(2)}, params_type=ParamsType.DIFF)}
    with pytest.raises(JobError, match="same params_transfer_type"):
        run_fedavg(tmp_path, mixed, {"w": np.zeros(2)})
    shapes = {"site-1": sends(lambda m: {"w": np.ones(2)}), "site-2": sends(lambda m: {"w": np.ones(3)})}
    with pytest.raises(JobError, match=r"'w' from site-2 has shape \(3,\)"):
        run_fedavg(tmp_path, shapes, {"w": np.zeros(2)})
    strings = {"site-1": sends(lambda m: {"w": "text"})}
    with pytest.raises(JobError, match="exclude it with exclude_vars"):
        run_fedavg(tmp_path, strings, {"w": np.zeros(2)})


def test_metrics_are_a_weighted_mean_of_finite_numbers_only_when_all_results_have_them(tmp_path):
    clients = {
        "site-1": sends(lambda m: {"w": np.ones(1)}, 1, metrics={"accuracy": 0.5, "loss": math.nan, "note": "x"}),
        "site-2": sends(lambda m: {"w": np.ones(1)}, 3, metrics={"accuracy": np.float32(0.9), "loss": 2.0}),
    }
    got = run_fedavg(tmp_path, clients, {"w": np.zeros(1)})[2].last()
    assert got.metrics == {"accuracy": pytest.approx((0.5 + 3 * 0.9) / 4), "loss": 2.0}

    clients["site-3"] = sends(lambda m: {"w": np.ones(1)}, 1)
    assert run_fedavg(tmp_path, clients, {"w": np.zeros(1)})[2].last().metrics is None


# ---- model selection and early stopping ----
def scripted(values: list[float], metric: str = "accuracy") -> Client:
    """A client whose metric in round r is values[r]."""
    def client(model: FLModel) -> FLModel:
        round_number = model.current_round
        return FLModel(params={"w": np.full(1, float(round_number))}, metrics={metric: values[round_number]})

    return client


def test_stop_cond_ends_the_run_once_it_holds(tmp_path):
    workflow, engine, _ = run_fedavg(tmp_path, {"site-1": scripted([0.2, 0.5, 0.85, 0.9, 0.95])}, {"w": np.zeros(1)},
                                     num_rounds=5, stop_cond="accuracy >= 0.8")
    assert [r[1] for r in engine.rounds] == [0, 1, 2]
    assert workflow.current_round == 2


def test_patience_stops_after_rounds_without_improvement(tmp_path):
    _, engine, _ = run_fedavg(tmp_path, {"site-1": scripted([0.5, 0.6, 0.6, 0.55, 0.9, 0.9])}, {"w": np.zeros(1)},
                              num_rounds=6, stop_cond="accuracy >= 0.99", patience=2)
    assert [r[1] for r in engine.rounds] == [0, 1, 2, 3]


def test_best_model_is_saved_when_the_key_metric_improves(tmp_path):
    _, _, persistor = run_fedavg(tmp_path, {"site-1": scripted([0.5, 0.7, 0.6, 0.7])}, {"w": np.zeros(1)},
                                 num_rounds=4)
    best = [(m.current_round, m.params["w"][0]) for n, m in persistor.saved if n == "best_FL_global_model.pt"]
    assert best == [(0, 0.0), (1, 1.0)]
    assert [m.current_round for n, m in persistor.saved if n == "FL_global_model.pt"] == [0, 1, 2, 3]

    _, _, persistor = run_fedavg(tmp_path, {"site-1": scripted([3.0, 1.0, 2.0, 0.5], "loss")}, {"w": np.zeros(1)},
                                 num_rounds=4, key_metric="loss", stop_cond="loss < 0.1",
                                 best_model_filename="best.pt")
    assert [m.current_round for n, m in persistor.saved if n == "best.pt"] == [0, 1, 3]  # "min" from stop_cond


def test_without_metrics_every_round_is_saved_and_no_best(tmp_path):
    clients = {"site-1": sends(lambda m: {"w": np.ones(1)})}
    _, _, persistor = run_fedavg(tmp_path, clients, {"w": np.zeros(1)}, num_rounds=3)
    assert [(n, m.current_round) for n, m in persistor.saved] == [("FL_global_model.pt", r) for r in range(3)]


def test_settings_are_checked_when_the_workflow_is_built():
    with pytest.raises(ConfigError, match="stop_cond must read '<metric> <op> <number>'.*'accuracy => 80'"):
        FedAvg(stop_cond="accuracy => 80")
    with pytest.raises(ConfigError, match="stop_cond .*'high' in 'accuracy >= high' is not a number"):
        FedAvg(stop_cond="accuracy >= high")
    with pytest.raises(ConfigError, match="exclude_vars"):
        FedAvg(exclude_vars="([")
    with pytest.raises(ConfigError, match="key_metric_mode"):
        FedAvg(key_metric_mode="highest")
    with pytest.raises(ConfigError, match="aggregation_weights\\['site-1'\\]"):
        FedAvg(aggregation_weights={"site-1": -1})
    with pytest.raises(ConfigError, match="num_clients"):
        BaseFedAvg(num_clients=0)
    with pytest.raises(ConfigError, match="patience"):
        FedAvg(patience=0)
    condition = parse_stop_condition("val_loss<=0.25")
    assert (condition.metric, condition.op, condition.target, condition.mode) == ("val_loss", "<=", 0.25, "min")
    assert FedAvg(stop_cond="accuracy < 3").key_metric_mode == "min"
    assert FedAvg(stop_cond="loss < 3").key_metric_mode == "max"  # the stop metric is not the key metric
    assert isinstance(FedAvg(), ModelController)


def test_memory_cleanup_runs_every_memory_gc_rounds(tmp_path, monkeypatch):
    calls: list[int] = []

    def fake_cleanup(cuda_empty_cache: bool = False) -> float:
        calls.append(len(engine_rounds()))
        return 0.001

    monkeypatch.setattr(flare.memory, "cleanup", fake_cleanup)
    engine_box: list[FakeEngine] = []

    def engine_rounds():
        return engine_box[0].rounds

    persistor = MemoryPersistor({"w": np.zeros(1)})
    engine = FakeEngine(tmp_path, {"site-1": sends(lambda m: {"w": np.ones(1)})}, {"persistor": persistor})
    engine_box.append(engine)
    workflow = FedAvg(num_clients=1, num_rounds=5, memory_gc_rounds=2, task_check_period=0.01)
    workflow.bind(engine)
    workflow.run()
    assert calls == [2, 4]  # after the 2nd and 4th rounds


def test_abort_ends_the_run_quietly(tmp_path):
    release = threading.Event()

    def slow(model: FLModel) -> FLModel:
        release.wait(5)
        return FLModel(params={"w": np.ones(1)})

    persistor = MemoryPersistor({"w": np.zeros(1)})
    engine = FakeEngine(tmp_path, {"site-1": slow}, {"persistor": persistor})
    workflow = FedAvg(num_clients=1, num_rounds=3, task_check_period=0.01)
    workflow.bind(engine)
    threading.Timer(0.1, engine.abort_signal.trigger).start()
    workflow.run()
    release.set()
    assert persistor.saved == [] and len(engine.rounds) == 1


# ---- PyTorch workflow and default persistors ----
def test_pt_fedavg_takes_a_module_and_saves_torch_checkpoints(tmp_path):
    net = torch.nn.Linear(3, 2)
    clients = {"site-1": sends(lambda m: {k: v + 1 for k, v in m.params.items()}),
               "site-2": sends(lambda m: {k: v + 3 for k, v in m.params.items()})}
    engine = FakeEngine(tmp_path, clients)
    workflow = PTFedAvgEarlyStopping(initial_model=net, num_clients=2, num_rounds=2, task_check_period=0.01)
    assert PTFedAvgEarlyStopping is PTFedAvg
    workflow.bind(engine)
    workflow.run()
    saved = torch.load(tmp_path / "FL_global_model.pt", weights_only=True)
    assert set(saved) == {"model"}
    assert torch.allclose(saved["model"]["weight"], net.weight.detach() + 4)
    assert torch.allclose(saved["model"]["bias"], net.bias.detach() + 4)


def test_fedavg_without_persistor_resumes_from_save_filename(tmp_path):
    np.savez(tmp_path / "global.npz", a=np.array([1.0, 2.0]), b=np.array([5.0]))
    engine = FakeEngine(tmp_path, {"site-1": sends(lambda m: {k: v * 2 for k, v in m.params.items()})})
    workflow = FedAvg(num_clients=1, num_rounds=1, save_filename="global.npz", task_check_period=0.01)
    workflow.bind(engine)
    workflow.run()
    with np.load(tmp_path / "global.npz") as saved:
        assert saved["a"].tolist() == [2.0, 4.0] and saved["b"].tolist() == [10.0]
    with pytest.raises(ConfigError, match="save_filename 'model.h5'"):
        FedAvg(save_filename="model.h5").default_persistor()


# ---- persistors ----
class _App:
    def __init__(self, app_dir: Path):
        self.app_dir = app_dir


def test_pt_persistor_round_trips_nvflare_layout_and_hands_out_numpy_views(tmp_path):
    state = {"w": torch.randn(4, 3), "bf": torch.randn(5).to(torch.bfloat16), "n": torch.tensor(7)}
    (tmp_path / "custom").mkdir()
    torch.save({"model": state, "train_conf": {"lr": 0.1}}, tmp_path / "custom" / "init.pt")
    persistor = PTFileModelPersistor(initial_ckpt="init.pt")
    persistor.bind(_App(tmp_path))
    params = persistor.load_model().params
    assert isinstance(params["w"], np.ndarray) and np.array_equal(params["w"], state["w"].numpy())
    assert isinstance(params["bf"], torch.Tensor) and torch.equal(params["bf"], state["bf"])  # numpy has no bf16

    path = persistor.save_model(FLModel(params=params))
    assert path == tmp_path / "FL_global_model.pt"
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {"model"} and all(isinstance(v, torch.Tensor) for v in saved["model"].values())
    assert all(torch.equal(saved["model"][k], state[k]) for k in state)

    torch.save(state, tmp_path / "bare.pth")  # a bare state dict loads too, as torch tensors when asked
    bare = PTFileModelPersistor(initial_ckpt=tmp_path / "bare.pth", allow_numpy_conversion=False)
    bare.bind(_App(tmp_path))
    assert all(isinstance(v, torch.Tensor) for v in bare.load_model().params.values())


def test_numpy_conversion_of_the_pt_persistor_does_not_copy():
    net = torch.nn.Linear(8, 8)
    persistor = PTFileModelPersistor(model=net)
    params = persistor.load_model().params
    assert np.shares_memory(params["weight"], net.weight.detach().numpy())


def test_safetensors_round_trip_with_both_persistors(tmp_path):
    from safetensors.numpy import load_file

    pt = PTFileModelPersistor(model={}, save_filename="m.safetensors", allow_numpy_conversion=False)
    pt.bind(_App(tmp_path))
    state = {"a": torch.randn(3, 2), "b": torch.arange(4).to(torch.bfloat16), "c": np.arange(3, dtype=np.int16)}
    path = pt.save_model(FLModel(params=state))
    loaded = PTFileModelPersistor(initial_ckpt=path, allow_numpy_conversion=False)
    loaded.bind(_App(tmp_path))
    back = loaded.load_model().params
    assert torch.equal(back["a"], state["a"])
    assert back["b"].dtype == torch.bfloat16 and torch.equal(back["b"], state["b"])
    assert back["c"].dtype == torch.int16 and back["c"].tolist() == [0, 1, 2]

    np_persistor = NPModelPersistor(model={}, save_filename="n.safetensors")
    np_persistor.bind(_App(tmp_path))
    arrays = {"x": np.linspace(0, 1, 7, dtype=np.float32), "y": np.eye(2)}
    np_path = np_persistor.save_model(FLModel(params=arrays))
    reference = load_file(str(np_path))  # the reference reader accepts our file
    assert all(np.array_equal(reference[k], arrays[k]) for k in arrays)
    reloaded = NPModelPersistor(initial_ckpt=np_path)
    reloaded.bind(_App(tmp_path))
    params = reloaded.load_model().params
    assert all(np.array_equal(params[k], arrays[k]) for k in arrays)
    params["x"][0] = 42.0  # copy-on-write: the file keeps its value
    assert load_file(str(np_path))["x"][0] == 0.0


def test_np_persistor_round_trips_npy_and_npz(tmp_path):
    persistor = NPModelPersistor(model=[[1, 2, 3], [4, 5, 6]])
    persistor.bind(_App(tmp_path))
    model = persistor.load_model()
    assert set(model.params) == {NPConstants.NUMPY_KEY} and model.params["numpy_key"].dtype == np.float32
    path = persistor.save_model(model)
    assert path == tmp_path / "FL_global_model.npy"
    assert np.load(path).tolist() == [[1, 2, 3], [4, 5, 6]]

    from_npy = NPModelPersistor(initial_ckpt=path)
    from_npy.bind(_App(tmp_path))
    loaded = from_npy.load_model().params["numpy_key"]
    assert type(loaded) is np.ndarray and isinstance(loaded.base, np.memmap)  # a view of the mapped file
    assert loaded.tolist() == [[1, 2, 3], [4, 5, 6]]

    several = {"a": np.arange(3), "b": np.ones((2, 2), np.float16)}
    npz_path = persistor.save_model(FLModel(params=several))  # more than numpy_key: .npz
    assert npz_path == tmp_path / "FL_global_model.npz"
    from_npz = NPModelPersistor(initial_ckpt=npz_path)
    from_npz.bind(_App(tmp_path))
    params = from_npz.load_model().params
    assert params["a"].tolist() == [0, 1, 2] and params["b"].dtype == np.float16

    with pytest.raises(ConfigError, match="initial_ckpt 'missing.npy'"):
        missing = NPModelPersistor(initial_ckpt="missing.npy")
        missing.bind(_App(tmp_path))
        missing.load_model()
    with pytest.raises(ConfigError, match="model .* or initial_ckpt"):
        NPModelPersistor()


# ---- the fold's memory ----
def test_folding_allocates_no_temporary_of_a_whole_tensor():
    n = 16 << 20  # 64 MiB of float32
    first, second = np.ones(n, np.float32), np.full(n, 3.0, np.float32)
    helper = WeightedAggregationHelper()
    helper.add({"w": first}, 1.0, "site-1")  # allocates the 64 MiB sum buffer
    tracemalloc.start()
    try:
        helper.add({"w": second}, 3.0, "site-2")
        helper.add({"w": second}, 0.5, "site-3")
        _, peak = tracemalloc.get_traced_memory()
        result = helper.get_result()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, f"folding peaked at {peak / 2**20:.1f} MiB"  # one 16 MiB scratch slice at most
    assert result["w"].dtype == np.float32
    np.testing.assert_allclose(result["w"][[0, -1]], (1 + 9 + 1.5) / 4.5)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak RSS through Linux's /proc")
def test_folding_torch_bfloat16_into_float32_sums_stays_within_a_slice():
    """torch casts a bfloat16 operand of ``add_`` to float32 as a whole temporary on the CPU; folding slice by slice
    bounds that temporary to one slice (the process's peak RSS is reset just before the fold)."""
    script = textwrap.dedent(
        """
        import json, torch
        from flare.workflows.aggregation import WeightedAggregationHelper

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        value = torch.ones(16 << 20, dtype=torch.bfloat16)  # 32 MiB; its float32 sum is 64 MiB, a slice 16 MiB
        helper = WeightedAggregationHelper()
        helper.add({"w": value}, 1.0, "site-1")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
        helper.add({"w": value}, 2.0, "site-2")
        peak = status("VmHWM") - before
        mean = helper.get_result()["w"]
        print(json.dumps({"peak": peak, "dtype": str(mean.dtype), "value": mean[0].item()}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["peak"] < 24 << 20, f"folding peaked at {result['peak'] / 2**20:.1f} MiB"
    assert result["dtype"] == "torch.bfloat16" and result["value"] == 1.0
