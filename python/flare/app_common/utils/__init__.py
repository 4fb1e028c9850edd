"""Helpers at NVFlare's ``nvflare.app_common.utils`` paths."""
