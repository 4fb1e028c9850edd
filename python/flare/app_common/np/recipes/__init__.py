"""Numpy recipes (NVFlare's ``nvflare.app_common.np.recipes``)."""

from flare.app_common.np.recipes.fedavg import NumpyFedAvgRecipe

__all__ = ["NumpyFedAvgRecipe"]
