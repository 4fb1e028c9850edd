"""NVFlare's ``nvflare.app_common.workflows`` path; the workflows live in ``flare.workflows``."""
