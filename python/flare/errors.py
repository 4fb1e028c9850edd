"""The one exception tree of flare. The transport core raises these classes too."""


class FlareError(Exception):
    """Root of every error flare raises."""


class TransportError(FlareError):
    """A connection, frame or routing problem."""


class ConnectionClosed(TransportError):
    """The connection or cell is closed."""


class StallDetected(TransportError):
    """A transfer stopped making progress and its connection was closed."""


class FrameTooLarge(TransportError):
    """A frame or message exceeds the configured maximum size."""


class ProtocolError(TransportError):
    """The peer sent something that breaks the wire protocol."""


class DownloadError(TransportError):
    """A pull download failed: the owner refused or could not produce the data, or it could not be stored."""


class DownloadAborted(DownloadError):
    """A download was stopped by its abort signal."""


class FlareTimeoutError(FlareError, TimeoutError):
    """A wait ran out of time; also a builtin ``TimeoutError``."""


class SerializationError(FlareError):
    """An object could not be serialized or deserialized."""


class TypeNotAllowed(SerializationError):
    """A type name read from the wire is not on the allowlist."""


class ConfigError(FlareError, ValueError):
    """A setting is invalid; the message names the setting and what to change."""


class JobError(FlareError):
    """A federated job failed."""


__all__ = [
    "ConfigError",
    "ConnectionClosed",
    "DownloadAborted",
    "DownloadError",
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
