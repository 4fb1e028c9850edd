"""Jobs on a POC deployment: the server and each client in a process of its own; clients killed mid-round."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from flare.apis.fl_constant import RunStatus
from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.recipe import PocEnv

JOBS = Path(__file__).parent / "jobs"
FAST_LIVENESS = {"dead_client_grace_period": 1.0, "heart_beat_interval": 0.5}


def recipe_for(tmp_path: Path, min_clients: int, markers: Path) -> NumpyFedAvgRecipe:
    script = tmp_path / "np_client.py"
    shutil.copy(JOBS / "np_client.py", script)
    recipe = NumpyFedAvgRecipe(
        name="poc-test", min_clients=min_clients, num_rounds=3, model=np.zeros(8, np.float32),
        train_script=str(script), train_args=f"--marker_dir {markers} --pause 1.5",
    )
    recipe.add_server_config(FAST_LIVENESS)
    recipe.add_client_config(FAST_LIVENESS)
    return recipe


def kill_first_in_round(env: PocEnv, job_id: str, markers: Path, round_number: int, timeout: float = 60.0,
                        sig: int = signal.SIGKILL) -> str:
    """Sends ``sig`` (default: kills) to the client process of the first site that starts ``round_number``;
    returns its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = env.get_job_status(job_id)
        assert status not in RunStatus.FINAL, f"the job ended {status} early: {env.job_error(job_id)}"
        found = sorted(markers.glob(f"*.round{round_number}"))
        if found:
            site = found[0].name.split(".")[0]
            env.processes[site].send_signal(sig)
            return site
        time.sleep(0.05)
    raise AssertionError(f"no site reached round {round_number}")


@pytest.mark.timeout(180)
def test_a_client_killed_mid_round_with_min_clients_still_met(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    env = PocEnv(num_clients=3, extra={"workspace_root": str(tmp_path / "poc")})
    run = recipe_for(tmp_path, 2, markers).execute(env)
    try:
        killed = kill_first_in_round(env, run.get_job_id(), markers, 1)
        result = run.get_result(timeout=120)
        assert result is not None, "the job did not end"
        assert run.get_status() == RunStatus.FINISHED_COMPLETED
        saved = np.load(next(Path(result).glob("server/*/app_server/FL_global_model.npy")))
        assert saved.shape == (8,) and np.all(saved > 0)
        # the killed site's share of round 1 went to the site that had not been sampled
        assert len(list(markers.glob("*.round1"))) == 3, f"{killed} was killed; markers: {list(markers.iterdir())}"
    finally:
        env.stop()
    assert all(p.poll() is not None for p in env.processes.values())


@pytest.mark.timeout(180)
def test_a_client_killed_with_min_clients_no_longer_met_fails_the_job(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    env = PocEnv(num_clients=2, extra={"workspace_root": str(tmp_path / "poc")})
    run = recipe_for(tmp_path, 2, markers).execute(env)
    try:
        killed = kill_first_in_round(env, run.get_job_id(), markers, 1)
        started = time.monotonic()
        assert run.get_result(timeout=60) is not None, "the job hung"
        assert time.monotonic() - started < 30
        assert run.get_status() == RunStatus.FINISHED_EXECUTION_EXCEPTION
        error = env.job_error(run.get_job_id()) if env._admin else None
    finally:
        env.stop()
    assert error is None or (killed in error and "min_clients" in error)


@pytest.mark.timeout(180)
def test_a_stopped_client_is_reported_and_the_round_goes_on(tmp_path: Path) -> None:
    """SIGSTOP keeps the client's connection open but silences it: the server notices the silence, gives the
    client's share to the spare site, and names the stopped client in its log."""
    markers = tmp_path / "markers"
    markers.mkdir()
    env = PocEnv(num_clients=3, extra={"workspace_root": str(tmp_path / "poc"), "settings": {"heart_beat_interval": 0.3}})
    run = recipe_for(tmp_path, 2, markers).execute(env)
    stopped = None
    try:
        stopped = kill_first_in_round(env, run.get_job_id(), markers, 1, sig=signal.SIGSTOP)
        assert run.get_result(timeout=90, clean_up=False) is not None, "the job hung"
        assert run.get_status() == RunStatus.FINISHED_COMPLETED
        server_log = next((tmp_path / "poc" / "server").glob("*/log.txt")).read_text()
        assert f"{stopped} is lost (silent for more than" in server_log
    finally:
        if stopped is not None:
            env.processes[stopped].send_signal(signal.SIGCONT)
        env.stop()
