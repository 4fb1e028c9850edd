"""NVFlare's ``nvflare.app_common.workflows.scatter_and_gather`` path (the code is ``flare.workflows``)."""

from flare.workflows.scatter_and_gather import ScatterAndGather

__all__ = ["ScatterAndGather"]
