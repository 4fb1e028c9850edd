"""Kinds of experiment-tracking records and the writers that produce them; the values are NVFlare's.

The Client API hands these to the runtime as their string values, so that a record crosses processes as plain data.
"""

from __future__ import annotations

from enum import Enum


class AnalyticsDataType(Enum):
    """What a tracking record holds (the ``data_type`` of ``flare.client.log``)."""

    SCALARS = "SCALARS"
    SCALAR = "SCALAR"
    IMAGE = "IMAGE"
    TEXT = "TEXT"
    METRIC = "METRIC"
    METRICS = "METRICS"
    PARAMETER = "PARAMETER"
    PARAMETERS = "PARAMETERS"
    TAG = "TAG"
    TAGS = "TAGS"


class LogWriterName(Enum):
    """Which tracking API a record imitates (the ``writer`` of a record), so the receiver writes it the same way."""

    TORCH_TB = "TORCH_TENSORBOARD"
    MLFLOW = "MLFLOW"
    WANDB = "WEIGHTS_AND_BIASES"


__all__ = ["AnalyticsDataType", "LogWriterName"]
