"""Jobs end to end in SimEnv: recipes, the runtime, the Client API and FedAvg together."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from flare.apis.fl_constant import RunStatus
from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.errors import ConfigError
from flare.recipe import ProdEnv, SimEnv

JOBS = Path(__file__).parent / "jobs"


def np_recipe(tmp_path: Path, **kwargs) -> NumpyFedAvgRecipe:
    script = tmp_path / "np_client.py"
    shutil.copy(JOBS / "np_client.py", script)
    defaults = dict(name="np-test", min_clients=2, num_rounds=2, model={"a": np.zeros((4, 3), np.float32),
                    "b": np.ones(5, np.float32)}, train_script=str(script))
    return NumpyFedAvgRecipe(**{**defaults, **kwargs})


def expected_after(rounds: int, start: np.ndarray, weights: dict[int, int]) -> np.ndarray:
    """Each round every site i sends global + i with weight i: the weighted mean adds sum(i*i)/sum(i)."""
    step = sum(i * i for i in weights) / sum(weights)
    return start + rounds * step


@pytest.mark.timeout(120)
@pytest.mark.parametrize("external", [False, True])
def test_numpy_fedavg_is_the_exact_weighted_mean(tmp_path: Path, external: bool) -> None:
    recipe = np_recipe(tmp_path, launch_external_process=external)
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path / "ws")))
    assert run.get_status() == RunStatus.FINISHED_COMPLETED
    result = Path(run.get_result())
    saved = list(result.glob("server/*/app_server/FL_global_model.npz"))
    assert len(saved) == 1, list(result.rglob("*"))
    with np.load(saved[0]) as arrays:
        np.testing.assert_allclose(arrays["a"], expected_after(2, np.zeros((4, 3)), {1: 1, 2: 2}), rtol=1e-6)
        np.testing.assert_allclose(arrays["b"], expected_after(2, np.ones(5), {1: 1, 2: 2}), rtol=1e-6)
    # every site has a job log
    assert list(result.glob("site-1/*/log.txt")) and list(result.glob("server/*/log.txt"))


@pytest.mark.timeout(120)
def test_a_failing_script_ends_the_job_with_its_error(tmp_path: Path) -> None:
    recipe = np_recipe(tmp_path, train_args="--fail_round 1")
    run = recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path / "ws")))
    assert run.get_status() == RunStatus.FINISHED_EXECUTION_EXCEPTION
    error = run.env.job_error(run.get_job_id())
    assert "fails on purpose in round 1" in error and "min_clients" in error
    run.get_result()


def test_unknown_settings_are_refused_by_name(tmp_path: Path) -> None:
    recipe = np_recipe(tmp_path)
    recipe.add_client_config({"get_task_timeout": 30, "submit_task_result_timeout": 20})
    with pytest.raises(ConfigError, match="get_tsak_timeout"):
        recipe.add_client_config({"get_tsak_timeout": 30})


def test_prod_env_says_it_is_not_supported_yet() -> None:
    with pytest.raises(ConfigError, match="not yet supported"):
        ProdEnv("startup")


def test_export_writes_a_job_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = np_recipe(tmp_path)
    recipe.add_server_config({"dead_client_grace_period": 5})
    monkeypatch.setattr(sys, "argv", ["job.py", "--export", "--export-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        recipe.execute(SimEnv(num_clients=2))
    assert exit_info.value.code == 0
    job = tmp_path / "out" / "np-test"
    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 2 and meta["deploy_map"]["app_client"] == ["@ALL"]
    server = json.loads((job / "app_server/config/config_fed_server.json").read_text())
    assert server["dead_client_grace_period"] == 5
    assert server["workflows"][0]["args"]["num_rounds"] == 2
    assert (job / "app_server/custom/initial_model.npz").is_file()
    assert (job / "app_client/custom/np_client.py").is_file()


def test_sim_env_checks_its_arguments() -> None:
    with pytest.raises(ConfigError, match="num_clients"):
        SimEnv()
    with pytest.raises(ConfigError, match="unique"):
        SimEnv(clients=["a", "a"])
    assert SimEnv(clients=["red", "blue"]).sites == ["red", "blue"]
    assert os.fspath(SimEnv(num_clients=1).workspace_root)
