"""Recipes and the environments they run in (NVFlare's ``nvflare.recipe``)."""

from flare.recipe.poc_env import PocEnv
from flare.recipe.prod_env import ProdEnv
from flare.recipe.run import Run
from flare.recipe.sim_env import SimEnv
from flare.recipe.spec import ExecEnv, Recipe
from flare.recipe.utils import add_experiment_tracking

__all__ = ["ExecEnv", "PocEnv", "ProdEnv", "Recipe", "Run", "SimEnv", "add_experiment_tracking"]
