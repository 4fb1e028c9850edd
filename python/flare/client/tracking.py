"""Experiment tracking from a training script, with TensorBoard's ``SummaryWriter`` calls (NVFlare's
``nvflare.client.tracking.SummaryWriter``). Records go through ``flare.client.log`` to the job, which writes them
on the server side; nothing is written locally."""

from __future__ import annotations

from typing import Any

from flare.apis.analytix import AnalyticsDataType, LogWriterName
from flare.client.api import log


class SummaryWriter:
    """A drop-in for ``torch.utils.tensorboard.SummaryWriter``'s scalar calls, sending each record to the job."""

    def add_scalar(self, tag: str, scalar: float, global_step: int | None = None, **kwargs: Any) -> None:
        """Records ``scalar`` under ``tag``; ``kwargs`` travel with it to the receiver."""
        log(key=tag, value=scalar, data_type=AnalyticsDataType.SCALAR, global_step=global_step,
            writer=LogWriterName.TORCH_TB, **kwargs)

    def add_scalars(self, tag: str, scalars: dict, global_step: int | None = None, **kwargs: Any) -> None:
        """Records several scalars, ``{sub_tag: value}``, under the parent ``tag``."""
        log(key=tag, value=scalars, data_type=AnalyticsDataType.SCALARS, global_step=global_step,
            writer=LogWriterName.TORCH_TB, **kwargs)

    def flush(self) -> None:
        """Nothing to do: every record was handed to the job when it was added."""


__all__ = ["SummaryWriter"]
