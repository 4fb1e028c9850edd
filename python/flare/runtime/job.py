"""Job folders: what a recipe exports and what the runtime deploys and runs.

Layout, as NVFlare's::

    <job>/meta.json                              {"name", "min_clients", "required_sites", "deploy_map": {app: [sites]}}
    <job>/app_server/config/config_fed_server.json
    <job>/app_client/config/config_fed_client.json   (or app_<site> for a site of its own)
    <job>/<app>/custom/                          the training script and whatever it imports

A configuration names its components as ``{"id": ..., "path": "module.Class", "args": {...}}``; an ``args`` value of
that shape is built too. Keys other than the structural ones are runtime settings (``flare.config.RuntimeSettings``).
A job folder is code its submitter wrote (it ships the training script), so importing the classes it names is no
more than running that code; nothing read from the network names a class outside a job.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare.errors import ConfigError, JobError

META_FILE = "meta.json"
SERVER_CONFIG = "config_fed_server.json"
CLIENT_CONFIG = "config_fed_client.json"
ALL_SITES = "@ALL"
# keys of a configuration that hold lists of objects: component specs, or filter entries
LIST_KEYS = ("workflows", "components", "executors", "task_data_filters", "task_result_filters")
# keys of a configuration that are not settings
STRUCTURE_KEYS = frozenset(
    {"format_version", "workflows", "components", "executors", "task_data_filters", "task_result_filters",
     "decomposers", "min_clients", "experiment_tracking"}
)


@dataclass(frozen=True)
class JobMeta:
    """``min_clients`` (NVFlare's ``min_sites`` is read too): fewer clients running the job fail it.
    ``required_sites`` (or ``mandatory_clients``): sites whose absence fails the job whatever the count."""

    name: str
    min_clients: int
    deploy_map: dict[str, list[str]]
    required_sites: tuple[str, ...] = ()

    def app_for(self, site: str) -> str:
        """The app folder a site runs: its own when the deploy map names it, else the one for every client."""
        for app, sites in self.deploy_map.items():
            if site in sites:
                return app
        for app, sites in self.deploy_map.items():
            if ALL_SITES in sites and app != "app_server":
                return app
        raise JobError(f"the job's deploy_map {self.deploy_map} has no app for {site!r}")


def read_meta(job_dir: Path) -> JobMeta:
    path = job_dir / META_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobError(f"{job_dir} is not a job folder: it has no {META_FILE}") from None
    except ValueError as e:
        raise JobError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise JobError(f"{path} must hold a JSON object")
    for key in ("name", "deploy_map"):
        if key not in meta:
            raise JobError(f"{path} has no {key!r}")
    min_clients = meta.get("min_clients", meta.get("min_sites", 1))
    if type(min_clients) is not int or min_clients < 1:
        raise JobError(f"{path}: min_clients must be a positive int, got {min_clients!r}")
    required = meta.get("required_sites", meta.get("mandatory_clients")) or []
    deploy_map = meta["deploy_map"]
    if not isinstance(deploy_map, dict) or not all(isinstance(v, list) for v in deploy_map.values()):
        raise JobError(f"{path}: deploy_map must map app names to lists of sites, got {deploy_map!r}")
    if not isinstance(required, list) or not all(isinstance(site, str) for site in required):
        raise JobError(f"{path}: required_sites must be a list of site names, got {required!r}")
    return JobMeta(str(meta["name"]), min_clients, dict(deploy_map), tuple(required))


def read_config(app_dir: Path, file_name: str) -> dict[str, Any]:
    path = app_dir / "config" / file_name
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise JobError(f"the app {app_dir.name} has no config/{file_name}") from None
    except ValueError as e:
        raise JobError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise JobError(f"{path} must hold a JSON object")
    for key in LIST_KEYS:
        value = config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
            raise JobError(f"{path}: {key!r} must be a list of objects, got {json.dumps(value)[:80]}")
    return config


def settings_of(config: dict[str, Any]) -> dict[str, Any]:
    """The runtime settings a configuration carries (``add_client_config`` / ``add_server_config``)."""
    return {k: v for k, v in config.items() if k not in STRUCTURE_KEYS}


def is_component_spec(value: Any) -> bool:
    return isinstance(value, dict) and ("path" in value or "class_path" in value) and set(value) <= {
        "id", "path", "class_path", "args", "name"}


def build(spec: dict[str, Any]) -> Any:
    """The object a component spec describes; nested specs in its args are built first."""
    path = spec.get("path") or spec.get("class_path")
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"component {spec.get('id', '?')}: 'path' must be 'module.Class', got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"component {spec.get('id', '?')}: cannot load {path}: {e}") from None
    args = {k: build(v) if is_component_spec(v) else v for k, v in (spec.get("args") or {}).items()}
    try:
        return cls(**args)
    except TypeError as e:
        raise ConfigError(f"component {spec.get('id', '?')} ({path}): {e}") from None


@contextmanager
def importable(custom_dir: Path) -> Iterator[None]:
    """Lets a job's components and scripts import the modules its ``custom`` folder ships."""
    entry = str(custom_dir)
    added = custom_dir.is_dir() and entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def zip_app(app_dir: Path) -> bytes:
    """An app folder as a zip archive, for deployment to a site."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, _dirs, files in os.walk(app_dir):
            for name in files:
                full = Path(root, name)
                if "__pycache__" in full.parts:
                    continue
                archive.write(full, full.relative_to(app_dir).as_posix())
    return out.getvalue()


def unzip_app(data: Any, target: Path) -> None:
    """Extracts a deployed app; refuses entries that would land outside ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    root = target.resolve()
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        for entry in archive.infolist():
            destination = (target / entry.filename).resolve()
            if root not in destination.parents and destination != root:
                raise JobError(f"deployed app entry {entry.filename!r} points outside the app folder")
        archive.extractall(target)


__all__ = [
    "ALL_SITES", "CLIENT_CONFIG", "JobMeta", "SERVER_CONFIG", "build", "importable", "read_config", "read_meta",
    "settings_of", "unzip_app", "zip_app",
]
