"""Names of NVFlare's numpy workflows (``nvflare.app_common.np.constants``)."""


class NPConstants:
    """``NUMPY_KEY``: the key of the single array in a numpy model's params, ``{"numpy_key": array}``."""

    NUMPY_KEY = "numpy_key"


__all__ = ["NPConstants"]
