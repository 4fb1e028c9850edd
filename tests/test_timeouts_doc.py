"""docs/timeouts.md names every timeout-like setting the code defines."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import ROOT
from flare.config import CommSettings, JobSettings, TensorSettings

PAGE = (ROOT / "docs" / "timeouts.md").read_text()
WAIT_WORDS = ("timeout", "interval", "period", "backoff", "ttl")
SETTINGS = [
    f.name for cls in (CommSettings, TensorSettings, JobSettings) for f in dataclasses.fields(cls)
    if any(word in f.name for word in WAIT_WORDS) and f.name != "streaming_ack_interval"  # bytes, not time
]


def test_every_settings_class_contributes() -> None:
    assert len(SETTINGS) >= 25


@pytest.mark.parametrize("name", SETTINGS)
def test_each_timeout_setting_is_documented(name: str) -> None:
    assert f"`{name}`" in PAGE, f"docs/timeouts.md does not describe {name}"


def test_executor_and_workflow_timeouts_are_documented() -> None:
    import inspect

    from flare.runtime.executor import ScriptExecutor
    from flare.workflows import FedAvg, ScatterAndGather

    for cls in (ScriptExecutor, FedAvg, ScatterAndGather):
        for name in inspect.signature(cls.__init__).parameters:
            if any(word in name for word in WAIT_WORDS) or name.startswith("wait_time"):
                assert f"`{name}`" in PAGE, f"docs/timeouts.md does not describe {cls.__name__}({name})"
