"""PyTorch recipes (NVFlare's ``nvflare.app_opt.pt.recipes``)."""

from flare.app_opt.pt.recipes.fedavg import FedAvgRecipe

__all__ = ["FedAvgRecipe"]
