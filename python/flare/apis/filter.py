"""``Filter``: a step applied to task data or results where they enter or leave a site (NVFlare's concept).

Filters see the ``FLModel`` with its tensors in memory. Four places take them, as in NVFlare: the server's task data
(output) and results (input), a client's task data (input) and results (output); the recipe's
``add_server_output_filter`` etc. say which tasks each applies to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from flare.app_common.abstract.fl_model import FLModel


class FilterDirection:
    IN = "in"
    OUT = "out"


@dataclass(frozen=True)
class FilterContext:
    """Where a filter runs: the task, the site doing the filtering, the site the model came from or goes to
    (the peer), and whether it is entering or leaving the site."""

    task_name: str
    site_name: str
    peer: str
    direction: str


class Filter(ABC):
    @abstractmethod
    def process(self, model: FLModel, context: FilterContext) -> FLModel:
        """The model to use from here on (this one changed, or a new one)."""


__all__ = ["Filter", "FilterContext", "FilterDirection"]
