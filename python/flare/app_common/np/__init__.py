"""numpy parts at NVFlare's ``nvflare.app_common.np`` paths."""
