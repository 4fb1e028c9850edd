"""NVFlare's ``nvflare.app_common.workflows.fedavg`` path (the code is ``flare.workflows.fedavg``)."""

from flare.workflows.fedavg import BaseFedAvg, FedAvg

__all__ = ["BaseFedAvg", "FedAvg"]
