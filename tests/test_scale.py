"""Many clients: 144 sites join a job, two of them never acknowledge it; the job runs with the rest."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from flare.apis.fl_constant import RunStatus
from flare.app_common.np.recipes import NumpyFedAvgRecipe
from flare.config import RuntimeSettings
from flare.runtime.server import FederatedServer

PEER = str(ROOT / "tests" / "peers" / "many_clients.py")
JOBS = Path(__file__).parent / "jobs"


def start_clients(peers, url: str, workspace: Path, total: int, processes: int, silent: list[str]) -> None:
    per_process = -(-total // processes)
    group = []
    for first in range(1, total + 1, per_process):
        count = min(per_process, total - first + 1)
        group.append(peers([sys.executable, PEER, "--server", url, "--workspace", str(workspace), "--first",
                            str(first), "--count", str(count), "--silent", ",".join(silent),
                            "--sites-on-host", str(total)]))
    for peer in group:
        peer.expect("ready", timeout=120)


@pytest.mark.timeout(300)
def test_144_clients_two_silent_at_start_the_job_runs_with_142(tmp_path: Path, peers) -> None:
    total, silent = 144, ["site-7", "site-100"]
    server = FederatedServer(tmp_path / "server", settings=RuntimeSettings.from_config({"callback_pool_size": 8}))
    url = server.start()
    try:
        launched = time.monotonic()
        start_clients(peers, url, tmp_path / "clients", total, processes=4, silent=silent)
        registered = time.monotonic() - launched
        assert len(server.clients()) == total

        script = tmp_path / "np_client.py"
        shutil.copy(JOBS / "np_client.py", script)
        recipe = NumpyFedAvgRecipe(name="scale", min_clients=140, num_rounds=1, model=np.zeros(4, np.float32),
                                   train_script=str(script))
        recipe.add_server_config({"strict_start_job_reply_check": True, "deploy_timeout": 10})
        job_id = server.submit_job(recipe.export(tmp_path / "jobs"))
        job = server.job(job_id)
        assert job.join(240), "the job did not end"
        assert job.status == RunStatus.FINISHED_COMPLETED, job.error
        running = job.alive_clients()
        assert len(running) == total - len(silent) and not set(silent) & set(running)
        print(f"\n{total} clients: registered {registered:.1f} s after launch; first task "
              f"{job.first_task_at - launched:.1f} s after launch; job {job.ended_at - job.started_at:.1f} s")
    finally:
        server.close()
