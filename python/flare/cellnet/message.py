"""Cell messages, return codes and the header names NVFlare's cellnet uses."""

from __future__ import annotations

from enum import Enum
from typing import Any

from flare import _sfm, fobs

Buffer = Any  # bytes, bytearray, memoryview or flare._sfm.Payload travel as they are; other objects as FOBS


class ReturnCode(str, Enum):
    """Outcome of a request (NVFlare's return code strings)."""

    OK = "ok"
    TIMEOUT = "timeout"
    INVALID_TARGET = "invalid_target"
    TARGET_UNREACHABLE = "target_unreachable"
    COMM_ERROR = "comm_error"
    MSG_TOO_BIG = "msg_too_big"
    FILTER_ERROR = "filter_error"
    INVALID_REQUEST = "invalid_request"
    PROCESS_EXCEPTION = "process_exception"
    AUTHENTICATION_ERROR = "authentication_error"
    SERVICE_UNAVAILABLE = "service_unavailable"
    INVALID_SESSION = "invalid_session"
    ABORT_RUN = "abort_run"
    UNAUTHENTICATED = "unauthenticated"


class MessageHeaderKey:
    """Header names (NVFlare's ``cn__*`` keys)."""

    MSG_TYPE = "cn__msg_type"
    REQ_ID = "cn__req_id"
    REPLY_EXPECTED = "cn__reply_expected"
    TOPIC = "cn__topic"
    CHANNEL = "cn__channel"
    ORIGIN = "cn__origin"
    DESTINATION = "cn__destination"
    FROM_CELL = "cn__from"
    TO_CELL = "cn__to"
    RETURN_CODE = "cn__return_code"
    ERROR = "cn__error"
    PAYLOAD_ENCODING = "cn__payload_encoding"
    ROUTE = "cn__route"
    RETURN_REASON = "cn__return_reason"


class Message:
    """Headers plus a payload.

    A received payload is a read-only buffer over the received bytes (no copy): use ``memoryview(msg.payload)``,
    ``bytes(msg.payload)`` or ``numpy.frombuffer(msg.payload, ...)``.
    """

    __slots__ = ("headers", "payload")

    def __init__(self, headers: dict[str, Any] | None = None, payload: Buffer | None = None):
        self.headers: dict[str, Any] = dict(headers or {})
        self.payload = payload

    @classmethod
    def reply(cls, return_code: ReturnCode | str = ReturnCode.OK, error: str = "", payload: Buffer | None = None):
        """A reply with a return code, for handlers that need to say more than "ok"."""
        headers = {MessageHeaderKey.RETURN_CODE: ReturnCode(return_code).value}
        if error:
            headers[MessageHeaderKey.ERROR] = error
        return cls(headers, payload)

    @property
    def return_code(self) -> ReturnCode | str:
        rc = self.headers.get(MessageHeaderKey.RETURN_CODE, ReturnCode.OK.value)
        try:
            return ReturnCode(rc)
        except ValueError:
            return rc

    @property
    def ok(self) -> bool:
        return self.return_code == ReturnCode.OK

    @property
    def error(self) -> str:
        return self.headers.get(MessageHeaderKey.ERROR) or ""

    def get_header(self, key: str, default: Any = None) -> Any:
        return self.headers.get(key, default)

    @property
    def channel(self) -> str | None:
        return self.headers.get(MessageHeaderKey.CHANNEL)

    @property
    def topic(self) -> str | None:
        return self.headers.get(MessageHeaderKey.TOPIC)

    @property
    def origin(self) -> str | None:
        return self.headers.get(MessageHeaderKey.ORIGIN)

    def raise_for_status(self) -> Message:
        """Raises if the return code is not OK; returns the message otherwise."""
        from flare.cellnet.cell import error_for_reply

        if not self.ok:
            raise error_for_reply(self)
        return self

    def __repr__(self) -> str:
        size = len(self.payload) if self.payload is not None else 0
        return f"Message(rc={self.headers.get(MessageHeaderKey.RETURN_CODE, 'ok')!r}, payload={size} bytes)"


__all__ = ["Message", "MessageHeaderKey", "ReturnCode"]


class Encoding:
    """Values of ``cn__payload_encoding`` (NVFlare's)."""

    BYTES = "bytes"
    FOBS = "fobs"
    NONE = "none"


_RAW_TYPES = (bytes, bytearray, memoryview, _sfm.Payload)


def fobs_ctx_of(cell: Any, num_receivers: int | None = None) -> dict[str, Any] | None:
    """The FOBS context of a cell's payloads: the cell's own ``fobs_ctx`` entries, and the cell itself, through which
    large arrays and tensors are served and fetched by download (docs/fobs.md)."""
    if cell is None:
        return None
    ctx = {**cell.fobs_ctx, "cell": cell}
    if num_receivers is not None and "num_receivers" not in cell.fobs_ctx:
        ctx["num_receivers"] = num_receivers  # a transaction sent to several targets ends once all have pulled
    return ctx


def encode_payload(
    payload: Any, headers: dict[str, Any] | None, cell: Any = None, num_receivers: int | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """As NVFlare's cells do: bytes-like payloads travel as they are, any other object as FOBS (its encoding named
    in ``cn__payload_encoding``, so that the receiver, NVFlare's or ours, loads it back)."""
    if payload is None or isinstance(payload, _RAW_TYPES):
        return payload, headers
    encoded = fobs.dumps(payload, fobs_ctx=fobs_ctx_of(cell, num_receivers))
    return encoded, {**(headers or {}), MessageHeaderKey.PAYLOAD_ENCODING: Encoding.FOBS}


def decode_payload(headers: dict[str, Any], payload: Any, cell: Any = None) -> Any:
    """The payload as its sender meant it: FOBS-encoded payloads are loaded (arrays as views over the received
    buffer, or downloaded when the sender served them by reference), others stay the received buffer."""
    encoding = headers.get(MessageHeaderKey.PAYLOAD_ENCODING)
    if encoding == Encoding.FOBS:
        return fobs.loads(payload, fobs_ctx=fobs_ctx_of(cell))
    if encoding == Encoding.NONE:
        return None
    return payload
