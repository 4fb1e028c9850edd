"""The runtime's parts on their own: task bookkeeping, resends, filters, job folders."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from flare.apis.filter import Filter, FilterContext
from flare.apis.signal import Signal
from flare.app_common.abstract.fl_model import FLModel
from flare.cellnet import Message
from flare.cellnet.message import MessageHeaderKey
from flare.client.exchange import TaskAssignment
from flare.config import RuntimeSettings
from flare.errors import ConfigError, JobError
from flare.runtime import protocol as p
from flare.runtime.filters import SiteFilters
from flare.runtime.job import build, unzip_app
from flare.runtime.task_client import TaskClient
from flare.runtime.tasks import SerializedTask, ServerTask


def plain_dump(data: FLModel, receivers: int) -> SerializedTask:
    return SerializedTask(b"task-bytes-%d" % receivers)


def make_task(targets: list[str], min_responses: int | None = None, timeout: float = 0,
              results: list | None = None) -> ServerTask:
    got = results if results is not None else []
    return ServerTask("train", FLModel(params={}), targets, len(targets) if min_responses is None else min_responses,
                      timeout, lambda client, model: got.append(client), plain_dump)


def test_a_task_is_done_once_every_target_answered() -> None:
    results: list[str] = []
    task = make_task(["a", "b"], results=results)
    assert task.payload_for("a") == b"task-bytes-2" and task.payload_for("c") is None
    assert task.add_result("a", FLModel(params={}), None)
    assert not task.add_result("a", FLModel(params={}), None), "a repeated result counts once"
    assert not task.wait(0.05)
    task.add_result("b", FLModel(params={}), None)
    assert task.wait(2.0) and sorted(results) == ["a", "b"]
    assert task.payload_for("a") is None


def test_a_lost_clients_share_goes_to_a_spare_with_its_own_serialization() -> None:
    task = make_task(["a", "b"])
    assert task.client_lost("b", "gone", spares=["a", "b", "c"]) == "c"
    assert task.payload_for("c") == b"task-bytes-1"
    task.add_result("a", FLModel(params={}), None)
    task.add_result("c", FLModel(params={}), None)
    assert task.wait(2.0)


def test_a_task_that_cannot_get_enough_results_fails_with_the_reasons() -> None:
    task = make_task(["a", "b"])
    task.add_result("a", FLModel(params={}), None)
    task.add_result("b", None, "script crashed: ValueError")
    with pytest.raises(JobError, match="script crashed.*min_clients"):
        task.wait(2.0)


def test_a_task_timeout_counts_idle_time() -> None:
    task = make_task(["a", "b"], timeout=1.0)
    for _ in range(5):  # progress every 0.3 s keeps it alive past its timeout
        time.sleep(0.3)
        assert task.payload_for("b") is not None
    assert not task.wait(0.01)
    task.add_result("a", FLModel(params={}), None)
    time.sleep(1.3)
    with pytest.raises(JobError, match="no progress for 1 s"):
        task.wait(0.01)


class FlakyCell:
    """Answers a request with a timeout ``failures`` times, then with OK; records each payload sent."""

    fqcn = "site-1"

    def __init__(self, failures: int):
        self.failures = failures
        self.fobs_ctx: dict[str, Any] = {}
        self.sent: list[Any] = []

    def request(self, target: str, channel: str, topic: str, payload: Any, *, headers: dict, timeout: float):
        self.sent.append(payload)
        if len(self.sent) <= self.failures:
            return Message({MessageHeaderKey.RETURN_CODE: "timeout"})
        return Message({p.ACCEPTED: True})


def task_client(cell: FlakyCell, **settings: Any) -> TaskClient:
    return TaskClient(cell, "site-1", "job", RuntimeSettings.from_config(settings), Signal())  # type: ignore[arg-type]


def test_a_result_is_sent_again_as_the_same_bytes() -> None:
    cell = FlakyCell(failures=2)
    task_client(cell, max_resends=3).submit(TaskAssignment("train", "t1", FLModel()), FLModel(params={"w": 1.0}))
    assert len(cell.sent) == 3 and all(sent is cell.sent[0] for sent in cell.sent)


def test_resends_give_up_with_an_error_naming_the_settings() -> None:
    cell = FlakyCell(failures=10)
    with pytest.raises(JobError, match="after 2 attempt.*submit_result_timeout or max_resends"):
        task_client(cell, max_resends=1).submit(TaskAssignment("train", "t1", FLModel()), FLModel(params={"w": 1}))


class AddOne(Filter):
    def process(self, model: FLModel, context: FilterContext) -> FLModel:
        model.params = {k: v + 1 for k, v in model.params.items()}
        model.meta["seen"] = (context.task_name, context.direction, context.peer)
        return model


def test_filters_apply_to_their_tasks_and_leave_the_callers_model_alone() -> None:
    config = {"task_result_filters": [{"tasks": ["train"], "filters": [{"path": f"{__name__}.AddOne"}]}]}
    filters = SiteFilters.from_config("site-1", config, server=False)
    original = FLModel(params={"w": 1})
    sent = filters.send(original, "train", "server")
    assert sent.params == {"w": 2} and sent.meta["seen"] == ("train", "out", "server")
    assert original.params == {"w": 1} and "seen" not in original.meta
    assert filters.send(original, "validate", "server") is original
    assert filters.receive(original, "train", "server") is original  # task data filters: none


def test_components_that_cannot_be_built_say_why() -> None:
    with pytest.raises(ConfigError, match="cannot load no_such_module.Thing"):
        build({"id": "x", "path": "no_such_module.Thing"})
    with pytest.raises(ConfigError, match="component x"):
        build({"id": "x", "path": f"{__name__}.AddOne", "args": {"unknown": 1}})


def test_a_deployed_app_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(JobError, match="outside the app folder"):
        unzip_app(archive.getvalue(), tmp_path / "app")
    assert not (tmp_path / "escape.txt").exists()


def test_concurrent_results_reach_the_workflow_one_at_a_time() -> None:
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_cb(client: str, model: FLModel) -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    task = ServerTask("train", FLModel(params={}), ["a", "b", "c"], 3, 0, slow_cb, plain_dump)
    threads = [threading.Thread(target=task.add_result, args=(c, FLModel(params={}), None)) for c in "abc"]
    for t in threads:
        t.start()
    assert task.wait(5.0) and peak[0] == 1


def test_contradicting_timeouts_are_named_together() -> None:
    assert RuntimeSettings.from_config().inconsistencies() == []
    problems = RuntimeSettings.from_config({"np_min_download_timeout": 5}).inconsistencies()
    assert len(problems) == 1
    assert "np_min_download_timeout=5" in problems[0] and "np_streaming_per_request_timeout=600" in problems[0]


def test_a_deployment_without_its_metadata_is_refused_by_field(tmp_path: Path) -> None:
    from flare.runtime.client import FederatedClient

    client = FederatedClient("site-1", "tcp://127.0.0.1:1", tmp_path)
    try:
        with pytest.raises(RuntimeError, match="missing 'job_id'"):
            client._on_deploy(Message({p.APP: "app_client"}, b"zip"))
        with pytest.raises(RuntimeError, match="missing 'app'"):
            client._on_deploy(Message({p.JOB_ID: "j1"}, b"zip"))
    finally:
        client.cell.close()


def test_a_training_process_without_its_job_metadata_names_what_is_missing() -> None:
    from flare.runtime.external import TrainerExchange

    with pytest.raises(RuntimeError, match="missing .*job_id.*connect_url"):
        TrainerExchange({"site_name": "site-1"})


def test_a_setting_of_the_wrong_type_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="heart_beat_interval must be of type float, got str"):
        RuntimeSettings.from_config({"heart_beat_interval": "fast"})
    with pytest.raises(ConfigError, match="max_resends must be of type int"):
        RuntimeSettings.from_config({"max_resends": 2.5})
    assert RuntimeSettings.from_config({"heart_beat_interval": 1}).job.heart_beat_interval == 1
