"""The filters of a job's configuration, applied to the tasks they name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flare.apis.filter import Filter, FilterContext, FilterDirection
from flare.app_common.abstract.fl_model import FLModel
from flare.errors import ConfigError, JobError
from flare.runtime.job import build

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    tasks: tuple[str, ...]
    filter: Filter

    def applies_to(self, task_name: str) -> bool:
        return "*" in self.tasks or task_name in self.tasks


class FilterChain:
    """Filters in configuration order; ``apply`` runs those for the task."""

    def __init__(self, entries: list[_Entry]):
        self._entries = entries

    @classmethod
    def from_config(cls, items: list[dict[str, Any]] | None) -> FilterChain:
        """From ``[{"tasks": [...], "filters": [component spec, ...]}, ...]``; the specs are built here."""
        entries = []
        for item in items or []:
            tasks = tuple(item.get("tasks") or ["*"])
            for spec in item.get("filters", []):
                instance = build(spec)
                if not callable(getattr(instance, "process", None)):
                    raise ConfigError(f"filter {spec.get('path')} has no process(model, context) method")
                entries.append(_Entry(tasks, instance))
        return cls(entries)

    def applies_to(self, task_name: str) -> bool:
        return any(entry.applies_to(task_name) for entry in self._entries)

    def apply(self, model: FLModel, context: FilterContext) -> FLModel:
        for entry in self._entries:
            if not entry.applies_to(context.task_name):
                continue
            name = type(entry.filter).__name__
            try:
                model = entry.filter.process(model, context)
            except Exception as e:
                raise JobError(f"filter {name} failed on task {context.task_name!r}: {type(e).__name__}: {e}") from e
            if not isinstance(model, FLModel):
                raise JobError(f"filter {name} returned {type(model).__name__}, not an FLModel")
        return model


class SiteFilters:
    """A site's two chains for one job: on the way in (task data for a client, results for the server) and out."""

    def __init__(self, site: str, incoming: FilterChain, outgoing: FilterChain):
        self.site = site
        self.incoming = incoming
        self.outgoing = outgoing

    @classmethod
    def from_config(cls, site: str, config: dict[str, Any], server: bool) -> SiteFilters:
        data = FilterChain.from_config(config.get("task_data_filters"))
        results = FilterChain.from_config(config.get("task_result_filters"))
        return cls(site, results, data) if server else cls(site, data, results)

    def receive(self, model: FLModel, task_name: str, peer: str) -> FLModel:
        """``model`` as it arrived from ``peer``, filtered; its tensors are pulled first when a filter is to run."""
        if not self.incoming.applies_to(task_name):
            return model
        from flare.fobs.lazy import resolve

        resolve(model)
        return self.incoming.apply(model, FilterContext(task_name, self.site, peer, FilterDirection.IN))

    def send(self, model: FLModel, task_name: str, peer: str) -> FLModel:
        """``model`` about to leave for ``peer``, filtered. Filters get a copy of the model with its own params
        dict, so that one replacing entries leaves the caller's model as it was."""
        if not self.outgoing.applies_to(task_name):
            return model
        copied = FLModel(params_type=model.params_type, params=dict(model.params) if model.params else model.params,
                         optimizer_params=model.optimizer_params, metrics=model.metrics, start_round=model.start_round,
                         current_round=model.current_round, total_rounds=model.total_rounds, meta=dict(model.meta))
        return self.outgoing.apply(copied, FilterContext(task_name, self.site, peer, FilterDirection.OUT))


__all__ = ["FilterChain", "SiteFilters"]
