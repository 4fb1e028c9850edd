"""Module paths as NVFlare's ``nvflare.app_opt``, so that ported imports only swap the package name."""
