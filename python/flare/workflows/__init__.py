"""Server workflows with NVFlare's API: ``ModelController`` and federated averaging (``FedAvg``, ``BaseFedAvg``)."""

from flare.workflows.fedavg import BaseFedAvg, FedAvg
from flare.workflows.model_controller import ModelController
from flare.workflows.scatter_and_gather import ScatterAndGather

__all__ = ["BaseFedAvg", "FedAvg", "ModelController", "ScatterAndGather"]
