"""``Shareable``: the dict exchanged between server and clients in NVFlare's task API, with its headers.

Headers live under the ``"__headers__"`` key of the dict itself, so a Shareable travels as the plain dict it is
(NVFlare sends it through its DictDecomposer, and so does flare.fobs).
"""

from __future__ import annotations

import copy
from typing import Any

from flare.apis.fl_context import FLContext, ReservedKey


class ReturnCode:
    """What a task's result or a request's reply reports in its ``"__rc__"`` header (NVFlare's values)."""

    OK = "OK"
    BAD_PEER_CONTEXT = "BAD_PEER_CONTEXT"
    BAD_REQUEST_DATA = "BAD_REQUEST_DATA"
    BAD_TASK_DATA = "BAD_TASK_DATA"
    COMMUNICATION_ERROR = "COMMUNICATION_ERROR"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    EXECUTION_EXCEPTION = "EXECUTION_EXCEPTION"
    EXECUTION_RESULT_ERROR = "EXECUTION_RESULT_ERROR"
    HANDLER_EXCEPTION = "HANDLER_EXCEPTION"
    MISSING_PEER_CONTEXT = "MISSING_PEER_CONTEXT"
    RUN_MISMATCH = "RUN_MISMATCH"
    TASK_ABORTED = "TASK_ABORTED"
    TASK_DATA_FILTER_ERROR = "TASK_DATA_FILTER_ERROR"
    TASK_RESULT_FILTER_ERROR = "TASK_RESULT_FILTER_ERROR"
    TASK_UNKNOWN = "TASK_UNKNOWN"
    TASK_UNSUPPORTED = "TASK_UNSUPPORTED"
    TOPIC_UNKNOWN = "TOPIC_UNKNOWN"
    MODEL_UNRECOGNIZED = "MODEL_UNRECOGNIZED"
    VALIDATE_TYPE_UNKNOWN = "VALIDATE_TYPE_UNKNOWN"
    EMPTY_RESULT = "EMPTY_RESULT"
    UNSAFE_JOB = "UNSAFE_JOB"
    EARLY_TERMINATION = "EARLY_TERMINATION"
    SERVER_NOT_READY = "SERVER_NOT_READY"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"


class ReservedHeaderKey:
    """Header names the runtime reserves (NVFlare's values)."""

    HEADERS = "__headers__"
    TOPIC = "__topic__"
    RC = ReservedKey.RC
    COOKIE_JAR = ReservedKey.COOKIE_JAR
    PEER_PROPS = "__peer_props__"
    REPLY_IS_LATE = "__reply_is_late__"
    TASK_NAME = ReservedKey.TASK_NAME
    TASK_ID = ReservedKey.TASK_ID
    WORKFLOW = ReservedKey.WORKFLOW
    AUDIT_EVENT_ID = ReservedKey.AUDIT_EVENT_ID
    CONTENT_TYPE = "__content_type__"
    TASK_OPERATOR = "__task_operator__"
    ERROR = "__error__"
    PEER_CTX = ReservedKey.PEER_CTX
    MSG_ROOT_ID = "__msg_root_id__"
    MSG_ROOT_TTL = "__msg_root_ttl__"
    PASS_THROUGH = "__pass_through__"


class Shareable(dict):
    """A dict of anything serializable, plus headers (``set_header``/``get_header``) kept under ``"__headers__"``.

    As in NVFlare, ``Shareable(data)`` copies ``data``'s items but starts with empty headers.
    """

    def __init__(self, data: dict | None = None):
        super().__init__()
        if data:
            self.update(data)
        self[ReservedHeaderKey.HEADERS] = {}

    def set_header(self, key: str, value: Any) -> None:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not headers:
            headers = {}
            self[ReservedHeaderKey.HEADERS] = headers
        headers[key] = value

    def get_header(self, key: str, default: Any = None) -> Any:
        headers = self.get(ReservedHeaderKey.HEADERS)
        if not headers:
            return default
        if not isinstance(headers, dict):
            raise ValueError(f"header object must be a dict, but got {type(headers)}")
        return headers.get(key, default)

    def get_return_code(self, default: str = ReturnCode.OK) -> str:
        return self.get_header(ReservedHeaderKey.RC, default)

    def set_return_code(self, rc: str) -> None:
        self.set_header(ReservedHeaderKey.RC, rc)

    def add_cookie(self, name: str, data: Any) -> None:
        """Adds a cookie, which the server sets and the client echoes back in its result."""
        jar = self.get_cookie_jar()
        if not jar:
            jar = {}
            self.set_cookie_jar(jar)
        jar[name] = data

    def get_cookie_jar(self) -> dict | None:
        return self.get_header(ReservedHeaderKey.COOKIE_JAR)

    def set_cookie_jar(self, jar: dict) -> None:
        self.set_header(ReservedHeaderKey.COOKIE_JAR, jar)

    def get_cookie(self, name: str, default: Any = None) -> Any:
        jar = self.get_cookie_jar()
        return jar.get(name, default) if jar else default

    def set_peer_props(self, props: dict) -> None:
        self.set_header(ReservedHeaderKey.PEER_PROPS, props)

    def get_peer_props(self) -> dict | None:
        return self.get_header(ReservedHeaderKey.PEER_PROPS)

    def get_peer_prop(self, key: str, default: Any) -> Any:
        props = self.get_peer_props()
        return props.get(key, default) if isinstance(props, dict) else default

    def set_peer_context(self, peer_ctx: FLContext) -> None:
        self.set_header(ReservedHeaderKey.PEER_CTX, peer_ctx)

    def get_peer_context(self) -> FLContext | None:
        return self.get_header(ReservedHeaderKey.PEER_CTX)

    def to_bytes(self) -> bytes:
        from flare import fobs

        return fobs.dumps(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Any:
        """The object FOBS finds in ``data`` (a Shareable if one was dumped)."""
        from flare import fobs

        return fobs.loads(data)


def make_reply(rc: str, headers: dict | None = None) -> Shareable:
    """An empty Shareable with return code ``rc`` and the given headers."""
    reply = Shareable()
    reply.set_return_code(rc)
    if isinstance(headers, dict):
        for key, value in headers.items():
            reply.set_header(key, value)
    return reply


def make_copy(source: Shareable, exclude_headers: list[str] | None = None) -> Shareable:
    """A copy sharing ``source``'s content, with its headers deep-copied (less ``exclude_headers``)."""
    if not isinstance(source, Shareable):
        raise TypeError(f"source must be a Shareable, got {type(source).__name__}")
    result = copy.copy(source)
    headers = copy.deepcopy(source.get(ReservedHeaderKey.HEADERS) or {})
    for key in exclude_headers or ():
        headers.pop(key, None)
    result[ReservedHeaderKey.HEADERS] = headers
    return result


__all__ = ["ReservedHeaderKey", "ReturnCode", "Shareable", "make_copy", "make_reply"]
