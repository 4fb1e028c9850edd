"""Constant names shared by the runtime, the workflows and the Client API; the values are NVFlare's."""

from __future__ import annotations

# NVFlare's code imports these from nvflare.apis.fl_constant; they live beside the classes that use them
from flare.apis.fl_context import FLContextKey, ReservedKey
from flare.apis.shareable import ReturnCode


class FLMetaKey:
    """Keys of ``FLModel.meta`` (and of ``flare.client.system_info()``)."""

    NUM_STEPS_CURRENT_ROUND = "NUM_STEPS_CURRENT_ROUND"
    PROCESSED_ALGORITHM = "PROCESSED_ALGORITHM"
    PROCESSED_KEYS = "PROCESSED_KEYS"
    INITIAL_METRICS = "initial_metrics"
    FILTER_HISTORY = "filter_history"
    CONFIGS = "configs"
    VALIDATE_TYPE = "validate_type"
    CURRENT_ROUND = "current_round"
    TOTAL_ROUNDS = "total_rounds"
    JOB_ID = "job_id"
    SITE_NAME = "site_name"
    CLIENT_NAME = "client_name"


class RunStatus:
    """What ``Run.get_status()`` reports: NVFlare's job status strings."""

    SUBMITTED = "SUBMITTED"
    DISPATCHED = "DISPATCHED"
    RUNNING = "RUNNING"
    FINISHED_COMPLETED = "FINISHED:COMPLETED"
    FINISHED_ABORTED = "FINISHED:ABORTED"
    FINISHED_EXECUTION_EXCEPTION = "FINISHED:EXECUTION_EXCEPTION"
    FINISHED_ABNORMAL = "FINISHED:ABNORMAL"

    FINAL = frozenset({FINISHED_COMPLETED, FINISHED_ABORTED, FINISHED_EXECUTION_EXCEPTION, FINISHED_ABNORMAL})


class ExchangeFormat:
    """How parameters look on each side of the Client API: ``params_exchange_format`` (what the training script
    sees) and ``server_expected_format`` (what the server holds)."""

    RAW = "raw"
    PYTORCH = "pytorch"
    NUMPY = "numpy"
    KERAS_LAYER_WEIGHTS = "keras_layer_weights"


class TransferType:
    """What a client sends back: the whole model, or its difference to the model it received."""

    FULL = "FULL"
    DIFF = "DIFF"


class FrameworkType:
    """The training framework a script runner is configured for; picks ``params_exchange_format``."""

    RAW = "raw"
    NUMPY = "numpy"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"


__all__ = [
    "ExchangeFormat", "FLContextKey", "FLMetaKey", "FrameworkType", "ReservedKey", "ReturnCode", "RunStatus",
    "TransferType",
]
