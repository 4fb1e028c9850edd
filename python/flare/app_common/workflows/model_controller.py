"""NVFlare's ``nvflare.app_common.workflows.model_controller`` path (the code is ``flare.workflows``)."""

from flare.workflows.model_controller import ModelController

__all__ = ["ModelController"]
