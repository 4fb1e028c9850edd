"""The Client API (``import flare.client as flare``) against an in-memory task exchange: call order, conversion at
its boundary, DIFF, cache clearing, per-thread contexts, task kinds, tracking and memory cleanup."""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import flare.client as flare
from flare.apis.fl_constant import ExchangeFormat, TransferType
from flare.client.exchange import ClientAPIConfig, TaskAssignment, bound
from flare.client.tracking import SummaryWriter
from flare.errors import FlareError, FlareTimeoutError, JobError

TORCH_SCRIPT = dict(params_exchange_format=ExchangeFormat.PYTORCH, server_expected_format=ExchangeFormat.NUMPY)
NUMPY_SCRIPT = dict(params_exchange_format=ExchangeFormat.NUMPY, server_expected_format=ExchangeFormat.NUMPY)


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@dataclass
class FakeExchange:
    """A task exchange over a list of tasks: hands them out in order, then says the job ended."""

    tasks: list[TaskAssignment]
    config: ClientAPIConfig = field(default_factory=ClientAPIConfig)
    site_name: str = "site-1"
    job_id: str = "job-1"
    results: list[tuple[TaskAssignment, flare.FLModel]] = field(default_factory=list)
    logs: list[tuple[str, Any, str, dict]] = field(default_factory=list)
    closed: bool = False

    def fetch_task(self, timeout: float | None) -> TaskAssignment | None:
        return self.tasks.pop(0) if self.tasks else None

    def submit_result(self, task: TaskAssignment, result: flare.FLModel) -> None:
        self.results.append((task, result))

    def log(self, key: str, value: Any, data_type: str, **kwargs: Any) -> None:
        self.logs.append((key, value, data_type, kwargs))

    def close(self) -> None:
        self.closed = True


def task(params: Any = None, name: str = "train", round_: int = 0, **model_fields: Any) -> TaskAssignment:
    return TaskAssignment(name=name, task_id=f"{name}-{round_}",
                          model=flare.FLModel(params=params, current_round=round_, total_rounds=3, **model_fields))


def exchange(*tasks: TaskAssignment, **config: Any) -> FakeExchange:
    return FakeExchange(tasks=list(tasks), config=ClientAPIConfig(**config))


def test_full_loop_over_three_rounds(torch):
    fake = exchange(*(task({"w": np.full(3, r, dtype=np.float32)}, round_=r) for r in range(3)), **TORCH_SCRIPT)
    seen_rounds = []
    with bound(fake):
        flare.init()
        while flare.is_running():
            model = flare.receive()
            assert isinstance(model.params["w"], torch.Tensor)
            seen_rounds.append(model.current_round)
            flare.send(flare.FLModel(params={"w": model.params["w"] + 1}, metrics={"loss": 0.5},
                                     current_round=model.current_round))
        assert flare.receive() is None
        assert not flare.is_running()
    assert seen_rounds == [0, 1, 2]
    assert [t.task_id for t, _ in fake.results] == ["train-0", "train-1", "train-2"]
    for r, (_, result) in enumerate(fake.results):
        assert isinstance(result.params["w"], np.ndarray)
        np.testing.assert_array_equal(result.params["w"], np.full(3, r + 1, dtype=np.float32))
        assert result.params_type == flare.ParamsType.FULL
        assert result.metrics == {"loss": 0.5} and result.current_round == r


def test_receive_returns_the_same_model_until_send():
    fake = exchange(task({"w": np.ones(2)}, round_=0), task({"w": np.ones(2)}, round_=1), **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        first = flare.receive()
        assert flare.receive() is first and flare.is_running()
        assert first.meta["job_id"] == "job-1" and first.meta["site_name"] == "site-1"
        flare.send(flare.FLModel(metrics={"acc": 1.0}))
        assert flare.receive().current_round == 1


def test_numpy_to_pytorch_shares_memory_and_keeps_dtypes(torch):
    server_params = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f16": np.arange(4, dtype=np.float16),
        "i64": np.arange(3, dtype=np.int64),
        "bf16": torch.arange(4, dtype=torch.bfloat16),  # numpy has no bfloat16: the server holds a tensor
        "fp8": torch.ones(2, dtype=torch.float8_e4m3fn),
        "count": 7,
    }
    fake = exchange(task(dict(server_params)), **TORCH_SCRIPT)
    with bound(fake):
        flare.init()
        params = flare.receive().params
        for key in ("f32", "f16", "i64"):
            assert params[key].dtype == torch.from_numpy(server_params[key]).dtype
            assert np.shares_memory(params[key].numpy(), server_params[key]), key
        assert params["bf16"] is server_params["bf16"] and params["count"] == 7

        sent = {"f32": params["f32"] * 2, "f16": params["f16"].float(), "i64": params["i64"],
                "fp8": params["fp8"], "bf16": params["bf16"].float(),
                "new_bf16": torch.ones(2, dtype=torch.bfloat16)}
        flare.send(flare.FLModel(params=sent), clear_cache=False)
    result = fake.results[0][1].params
    assert isinstance(result["f32"], np.ndarray) and np.shares_memory(result["f32"], sent["f32"].numpy())
    assert result["f16"].dtype == np.float16  # the server's dtype is restored
    assert np.shares_memory(result["i64"], server_params["i64"])  # the round trip made no copy
    assert result["bf16"].dtype == torch.bfloat16  # back to the tensor the server held
    assert result["fp8"].dtype == torch.float8_e4m3fn
    assert result["fp8"].data_ptr() == server_params["fp8"].data_ptr()  # carried as a tensor, not copied
    assert isinstance(result["new_bf16"], torch.Tensor) and result["new_bf16"].dtype == torch.bfloat16


def test_pytorch_server_and_numpy_script_round_trip(torch):
    server_params = {"w": torch.arange(4, dtype=torch.float32), "bf16": torch.ones(3, dtype=torch.bfloat16)}
    fake = exchange(task(dict(server_params)), params_exchange_format=ExchangeFormat.NUMPY,
                    server_expected_format=ExchangeFormat.PYTORCH)
    with bound(fake):
        flare.init()
        params = flare.receive().params
        assert np.shares_memory(params["w"], server_params["w"].numpy())
        assert params["bf16"].dtype == np.float32  # what a numpy script can hold
        flare.send(flare.FLModel(params={"w": params["w"] + 1, "bf16": params["bf16"] * 2}))
    result = fake.results[0][1].params
    assert result["w"].dtype == torch.float32 and result["w"].tolist() == [1, 2, 3, 4]
    assert result["bf16"].dtype == torch.bfloat16 and result["bf16"].tolist() == [2, 2, 2]


def test_read_only_arrays_are_copied_for_torch(torch):
    frozen = np.ones(3, dtype=np.float32)
    frozen.flags.writeable = False
    fake = exchange(task({"w": frozen}), **TORCH_SCRIPT)
    with bound(fake):
        flare.init()
        tensor = flare.receive().params["w"]
    tensor += 1  # training in place must not write into the server's memory
    assert frozen.tolist() == [1, 1, 1]


@pytest.mark.parametrize("formats", [NUMPY_SCRIPT, dict(params_exchange_format=ExchangeFormat.RAW)])
def test_same_format_or_raw_is_identity(formats):
    params = {"w": np.ones(2)}
    fake = exchange(task(params), **formats)
    with bound(fake):
        flare.init()
        received = flare.receive().params
        assert received is params
        sent = {"w": np.zeros(2)}
        flare.send(flare.FLModel(params=sent), clear_cache=False)
    assert fake.results[0][1].params is sent


def test_diff_numpy():
    fake = exchange(task({"w": np.array([1.0, 2.0, 3.0])}), transfer_type=TransferType.DIFF, **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        model = flare.receive()
        flare.send(flare.FLModel(params={"w": model.params["w"] * 2}))
    result = fake.results[0][1]
    assert result.params_type == flare.ParamsType.DIFF
    np.testing.assert_array_equal(result.params["w"], [1.0, 2.0, 3.0])


def test_diff_pytorch_script_against_numpy_server(torch):
    fake = exchange(task({"w": np.array([1.0, 2.0], dtype=np.float32)}), transfer_type=TransferType.DIFF,
                    **TORCH_SCRIPT)
    with bound(fake):
        flare.init()
        model = flare.receive()
        flare.send(flare.FLModel(params={"w": model.params["w"] + torch.tensor([0.5, 1.5])}))
    result = fake.results[0][1]
    assert result.params_type == flare.ParamsType.DIFF
    assert isinstance(result.params["w"], np.ndarray) and result.params["w"].tolist() == [0.5, 1.5]


def test_diff_leaves_a_sent_diff_alone_and_names_a_missing_key():
    fake = exchange(task({"w": np.ones(2)}, round_=0), task({"w": np.ones(2)}, round_=1),
                    transfer_type=TransferType.DIFF, **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        flare.receive()
        own_diff = {"w": np.full(2, 0.25)}
        flare.send(flare.FLModel(params=own_diff, params_type=flare.ParamsType.DIFF))
        assert fake.results[0][1].params["w"].tolist() == [0.25, 0.25]
        flare.receive()
        with pytest.raises(flare.ClientAPIError, match="'extra' was not in the received model"):
            flare.send(flare.FLModel(params={"w": np.ones(2), "extra": np.ones(1)}))


def test_received_params_are_kept_only_for_diff():
    fake = exchange(task({"w": np.ones(2)}), **NUMPY_SCRIPT)
    with bound(fake):
        ctx = flare.init()
        flare.receive()
        assert ctx._diff_base is None


def test_clear_cache_drops_sent_and_received_params():
    fake = exchange(task({"w": np.ones(2)}, round_=0), task({"w": np.ones(2)}, round_=1), **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        received = flare.receive()
        sent = flare.FLModel(params={"w": np.zeros(2)}, optimizer_params={"lr": 0.1})
        flare.send(sent)
        assert sent.params is None and sent.optimizer_params is None and received.params is None
        assert fake.results[0][1].params["w"].tolist() == [0, 0]  # dropped after it was handed over

        received = flare.receive()
        kept = flare.FLModel(params={"w": np.zeros(2)})
        flare.send(kept, clear_cache=False)
        assert kept.params is not None and received.params is not None


def test_calls_before_init_or_without_a_job():
    with pytest.raises(flare.ClientAPIError, match="found no running job: run this script through a recipe"):
        flare.init()
    with bound(exchange(task({"w": np.ones(1)}))):
        for call in (flare.receive, lambda: flare.send(flare.FLModel(metrics={"a": 1})), flare.is_running):
            with pytest.raises(RuntimeError, match=r"before flare.init\(\): call flare.init\(\) first"):
                call()


def test_out_of_order_sends():
    fake = exchange(task({"w": np.ones(1)}), **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        with pytest.raises(RuntimeError, match=r"before flare.receive\(\): call flare.receive\(\) first"):
            flare.send(flare.FLModel(metrics={"a": 1.0}))
        flare.receive()
        with pytest.raises(TypeError, match="expects an FLModel, got dict"):
            flare.send({"w": np.ones(1)})
        with pytest.raises(RuntimeError, match="neither params nor metrics"):
            flare.send(flare.FLModel())
        flare.send(flare.FLModel(metrics={"a": 1.0}))
        with pytest.raises(RuntimeError, match=r"already called for task 'train' \(train-0\)"):
            flare.send(flare.FLModel(metrics={"a": 1.0}))
        assert not flare.is_running()
        with pytest.raises(RuntimeError, match="the job has ended"):
            flare.send(flare.FLModel(metrics={"a": 1.0}))
    assert len(fake.results) == 1


def test_client_api_error_is_both_flare_and_runtime_error():
    assert issubclass(flare.ClientAPIError, JobError) and issubclass(flare.ClientAPIError, FlareError)
    assert issubclass(flare.ClientAPIError, RuntimeError)


def test_receive_timeout_propagates():
    class SlowExchange(FakeExchange):
        def fetch_task(self, timeout):
            raise FlareTimeoutError(f"no task within {timeout} s")

    with bound(SlowExchange(tasks=[])):
        flare.init()
        with pytest.raises(TimeoutError, match="no task within 0.1 s"):
            flare.receive(timeout=0.1)


def test_two_sites_in_two_threads_have_their_own_context():
    both_received = threading.Barrier(2, timeout=10)
    exchanges = {site: FakeExchange(tasks=[task({"w": np.full(2, i, dtype=np.float64)}, round_=r)
                                           for r in range(3)],
                                    site_name=site, config=ClientAPIConfig(**NUMPY_SCRIPT))
                 for i, site in enumerate(("site-1", "site-2"))}
    errors: list[BaseException] = []

    def run_script(site: str) -> None:
        try:
            with bound(exchanges[site]):
                flare.init()
                while flare.is_running():
                    model = flare.receive()
                    both_received.wait()  # both sites hold a task at once
                    name = flare.system_info()["site_name"]
                    flare.send(flare.FLModel(params={"w": model.params["w"] + 10}, metrics={"site": name}))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run_script, args=(site,)) for site in exchanges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert not errors, errors
    for i, (site, fake) in enumerate(exchanges.items()):
        assert len(fake.results) == 3
        for _, result in fake.results:
            assert result.metrics == {"site": site}
            assert result.params["w"].tolist() == [i + 10, i + 10]


@pytest.mark.parametrize("name, expected", [("train", (True, False, False)), ("validate", (False, True, False)),
                                            ("submit_model", (False, False, True)), ("other", (False, False, False))])
def test_task_kinds(name, expected):
    with bound(exchange(task({"w": np.ones(1)}, name=name))):
        flare.init()
        assert flare.get_task_name() is None
        flare.receive()
        assert flare.get_task_name() == name
        assert (flare.is_train(), flare.is_evaluate(), flare.is_submit_model()) == expected


def test_task_kinds_follow_configured_names():
    with bound(exchange(task({"w": np.ones(1)}, name="fit"), train_task_name="fit")):
        flare.init()
        flare.receive()
        assert flare.is_train()


def test_rank_zero_only_calls(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with bound(exchange(task({"w": np.ones(1)}))):
        flare.init()
        for call in (flare.get_task_name, flare.is_train, flare.is_evaluate, flare.is_submit_model,
                     lambda: flare.log("k", 1.0, flare.AnalyticsDataType.SCALAR)):
            with pytest.raises(RuntimeError, match="only rank 0 can call"):
                call()


def test_system_info_and_config():
    fake = exchange(task({"w": np.ones(1)}), transfer_type=TransferType.DIFF, **NUMPY_SCRIPT)
    fake.site_name, fake.job_id = "site-7", "job-42"
    with bound(fake):
        ctx = flare.init(rank=0)
        assert flare.init() is ctx and ctx.rank == "0"
        assert flare.system_info() == {"job_id": "job-42", "site_name": "site-7"}
        assert (flare.get_job_id(), flare.get_site_name()) == ("job-42", "site-7")
        flare.receive()
        config = flare.get_config()
        assert config["TASK_EXCHANGE"]["transfer_type"] == "DIFF"
        assert config["TASK_EXCHANGE"]["exchange_format"] == "numpy"
        assert (config["TASK_NAME"], config["SITE_NAME"], config["JOB_ID"]) == ("train", "site-7", "job-42")


def test_clear_and_shutdown():
    fake = exchange(task({"w": np.ones(1)}, round_=0), task({"w": np.ones(1)}, round_=1), **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        assert flare.receive().current_round == 0
        flare.clear()
        assert flare.receive().current_round == 1
        flare.shutdown()
        assert fake.closed
        with pytest.raises(RuntimeError, match=r"call flare.init\(\) first"):
            flare.receive()


def test_summary_writer_and_log_reach_the_exchange():
    fake = exchange(task({"w": np.ones(1)}))
    with bound(fake):
        flare.init()
        writer = SummaryWriter()
        writer.add_scalar("loss", 0.25, global_step=3)
        writer.add_scalars("acc", {"train": 0.9, "val": 0.8}, 4, extra="x")
        writer.flush()
        flare.log("note", "hello", flare.AnalyticsDataType.TEXT)
    assert fake.logs == [
        ("loss", 0.25, "SCALAR", {"global_step": 3, "writer": "TORCH_TENSORBOARD"}),
        ("acc", {"train": 0.9, "val": 0.8}, "SCALARS", {"global_step": 4, "writer": "TORCH_TENSORBOARD",
                                                         "extra": "x"}),
        ("note", "hello", "TEXT", {}),
    ]


def test_memory_gc_rounds_calls_cleanup(monkeypatch):
    calls = []
    fake_memory = types.ModuleType("flare.memory")
    fake_memory.cleanup = lambda cuda_empty_cache=False: calls.append(cuda_empty_cache) or 0.0
    monkeypatch.setitem(sys.modules, "flare.memory", fake_memory)
    fake = exchange(*(task({"w": np.ones(1)}, round_=r) for r in range(5)), memory_gc_rounds=2,
                    cuda_empty_cache=True, **NUMPY_SCRIPT)
    with bound(fake):
        flare.init()
        sends_seen = []
        while flare.is_running():
            flare.receive()
            flare.send(flare.FLModel(metrics={"a": 1.0}))
            sends_seen.append(len(calls))
    assert sends_seen == [0, 1, 1, 2, 2]
    assert calls == [True, True]


def test_memory_cleanup_is_off_by_default(monkeypatch):
    calls = []
    fake_memory = types.ModuleType("flare.memory")
    fake_memory.cleanup = lambda cuda_empty_cache=False: calls.append(cuda_empty_cache) or 0.0
    monkeypatch.setitem(sys.modules, "flare.memory", fake_memory)
    with bound(exchange(task({"w": np.ones(1)}))):
        flare.init()
        flare.receive()
        flare.send(flare.FLModel(metrics={"a": 1.0}))
    assert calls == []


def test_train_and_evaluate_decorators():
    fake = exchange(task({"w": np.ones(2)}, name="train", round_=0), task({"w": np.ones(2)}, name="validate",
                                                                           round_=1), **NUMPY_SCRIPT)

    @flare.evaluate
    def evaluate(model, scale=1.0):
        return {"mean": float(model.params["w"].mean()) * scale}

    @flare.train
    def train(model, step=1.0):
        return flare.FLModel(params={"w": model.params["w"] + step})

    with bound(fake):
        flare.init()
        assert evaluate(scale=2.0) == {"mean": 2.0}  # a train task: held for the train result
        assert train(step=0.5).params is None  # sent, then the cache was cleared
        assert evaluate() == {"mean": 1.0}  # an evaluate task: sent on its own
        assert train() is None  # the job has ended
    (_, trained), (_, validated) = fake.results
    assert trained.params["w"].tolist() == [1.5, 1.5] and trained.metrics == {"mean": 2.0}
    assert validated.params is None and validated.metrics == {"mean": 1.0}


def test_decorators_check_what_the_function_returns():
    with bound(exchange(task({"w": np.ones(1)}, name="validate"))):
        flare.init()
        with pytest.raises(RuntimeError, match="@flare.evaluate must return a dict of metrics, got float"):
            flare.evaluate(lambda model: 0.5)()
        with pytest.raises(RuntimeError, match="@flare.train must return an FLModel, got NoneType"):
            flare.train(lambda model: None)()


def test_unsupported_format_is_a_config_error():
    with bound(exchange(task({"w": np.ones(1)}), params_exchange_format=ExchangeFormat.KERAS_LAYER_WEIGHTS)):
        with pytest.raises(ValueError, match="params_exchange_format='keras_layer_weights' is not supported"):
            flare.init()
