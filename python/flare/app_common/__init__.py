"""Module paths as NVFlare's ``nvflare.app_common``, so that ported imports only swap the package name."""
