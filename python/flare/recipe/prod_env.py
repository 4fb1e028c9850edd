"""``ProdEnv``: submitting to a provisioned deployment. Not available yet."""

from __future__ import annotations

from flare.errors import ConfigError


class ProdEnv:
    """NVFlare's production env (a startup kit, an admin login). Deployment tooling comes later; until then this
    raises at once instead of failing half-way."""

    def __init__(self, startup_kit_location: str, login_timeout: float = 5.0, username: str = "admin@nvidia.com",
                 study: str = "default", extra: dict | None = None):
        raise ConfigError(
            "ProdEnv is not yet supported: provisioning and startup kits come with the deployment tooling. "
            "Run the job with SimEnv (one process) or PocEnv (a server and client processes on this machine)."
        )


__all__ = ["ProdEnv"]
