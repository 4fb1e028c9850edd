"""Server workflows with NVFlare's API: ``ModelController`` and federated averaging (``FedAvg``, ``BaseFedAvg``)."""

from flare.workflows.fedavg import BaseFedAvg, FedAvg
from flare.workflows.model_controller import ModelController

__all__ = ["BaseFedAvg", "FedAvg", "ModelController"]
