"""``FedJobConfig``: a job being put together by a recipe, written out as a job folder (``flare.runtime.job``)."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flare.errors import ConfigError
from flare.runtime.job import ALL_SITES, CLIENT_CONFIG, META_FILE, SERVER_CONFIG

SERVER_APP = "app_server"
CLIENT_APP = "app_client"

FileWriter = Callable[[Path], None]


class FedJobConfig:
    """Server and client configurations, the files each app ships, and per-site differences."""

    def __init__(self, name: str, min_clients: int):
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ConfigError(f"name must be a plain job name, got {name!r}")
        if type(min_clients) is not int or min_clients < 1:
            raise ConfigError(f"min_clients must be a positive int, got {min_clients!r}")
        self.name = name
        self.min_clients = min_clients
        self.server: dict[str, Any] = {"format_version": 2, "workflows": [], "components": []}
        self.client: dict[str, Any] = {"format_version": 2, "executors": []}
        self.site_clients: dict[str, dict[str, Any]] = {}  # site -> its own client configuration
        self.server_files: list[tuple[Path, str]] = []
        self.client_files: list[tuple[Path, str]] = []
        self.server_writers: dict[str, FileWriter] = {}  # file name in custom/ -> writes it at export

    def client_config_for(self, site: str | None) -> dict[str, Any]:
        """The configuration a site runs (None: every site without one of its own); made on first use."""
        if site is None:
            return self.client
        if site not in self.site_clients:
            self.site_clients[site] = copy.deepcopy(self.client)
        return self.site_clients[site]

    def add_file(self, source: str | Path, *, server: bool, dest: str | None = None) -> None:
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"file {source} does not exist")
        (self.server_files if server else self.client_files).append((path, dest or path.name))

    def export(self, job_root: str | Path) -> Path:
        """Writes ``<job_root>/<name>/`` and returns it."""
        job_dir = Path(job_root) / self.name
        if job_dir.exists():
            shutil.rmtree(job_dir)
        deploy_map: dict[str, list[str]] = {SERVER_APP: ["server"], CLIENT_APP: [ALL_SITES]}
        self._write_app(job_dir / SERVER_APP, SERVER_CONFIG, self.server, self.server_files)
        for name, writer in self.server_writers.items():
            writer(job_dir / SERVER_APP / "custom" / name)
        self._write_app(job_dir / CLIENT_APP, CLIENT_CONFIG, self.client, self.client_files)
        for site, config in self.site_clients.items():
            app = f"app_{site}"
            self._write_app(job_dir / app, CLIENT_CONFIG, config, self.client_files)
            deploy_map[app] = [site]
        meta = {"name": self.name, "min_clients": self.min_clients, "deploy_map": deploy_map}
        (job_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        return job_dir

    @staticmethod
    def _write_app(app_dir: Path, config_name: str, config: dict[str, Any], files: list[tuple[Path, str]]) -> None:
        (app_dir / "config").mkdir(parents=True)
        custom = app_dir / "custom"
        custom.mkdir()
        try:
            text = json.dumps(config, indent=2)
        except TypeError as e:
            raise ConfigError(f"the job configuration holds a value that cannot be written to {config_name}: {e}")
        (app_dir / "config" / config_name).write_text(text)
        for source, dest in files:
            if source.is_dir():
                shutil.copytree(source, custom / dest, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(source, custom / dest)


__all__ = ["CLIENT_APP", "FedJobConfig", "SERVER_APP"]
