"""NVFlare's ``nvflare.app_opt.pt.fedavg_early_stopping`` path: ``PTFedAvgEarlyStopping`` is ``PTFedAvg``, whose
``stop_cond`` and ``patience`` do the early stopping."""

from flare.app_opt.pt.fedavg import PTFedAvg

PTFedAvgEarlyStopping = PTFedAvg

__all__ = ["PTFedAvgEarlyStopping"]
