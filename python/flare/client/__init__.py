"""The Client API, as NVFlare's ``nvflare.client``: ``import flare.client as flare``.

See ``flare.client.api`` for the call order and docs/client_api.md for the exchange formats.
"""

from flare.apis.analytix import AnalyticsDataType
from flare.app_common.abstract.fl_model import FLModel, ParamsType
from flare.client.api import (
    APIContext,
    ClientAPIError,
    clear,
    get_config,
    get_job_id,
    get_site_name,
    get_task_name,
    init,
    is_evaluate,
    is_running,
    is_submit_model,
    is_train,
    log,
    receive,
    send,
    shutdown,
    system_info,
)
from flare.client.decorator import evaluate, train

__all__ = [
    "APIContext",
    "AnalyticsDataType",
    "ClientAPIError",
    "FLModel",
    "ParamsType",
    "clear",
    "evaluate",
    "get_config",
    "get_job_id",
    "get_site_name",
    "get_task_name",
    "init",
    "is_evaluate",
    "is_running",
    "is_submit_model",
    "is_train",
    "log",
    "receive",
    "send",
    "shutdown",
    "system_info",
    "train",
]
