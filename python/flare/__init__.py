"""flare: a federated-learning runtime with NVIDIA FLARE's user API and a Rust transport core."""

from flare._sfm import __version__
from flare.errors import (
    ConfigError,
    ConnectionClosed,
    FlareError,
    FlareTimeoutError,
    FrameTooLarge,
    JobError,
    ProtocolError,
    SerializationError,
    StallDetected,
    TransportError,
    TypeNotAllowed,
)

__all__ = [
    "__version__",
    "ConfigError",
    "ConnectionClosed",
    "FlareError",
    "FlareTimeoutError",
    "FrameTooLarge",
    "JobError",
    "ProtocolError",
    "SerializationError",
    "StallDetected",
    "TransportError",
    "TypeNotAllowed",
]
