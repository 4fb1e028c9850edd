"""``FLContext``: named properties passed between components, with NVFlare's API and wire form.

NVFlare's context also reaches its engine and shares sticky properties through a context manager; flare's is plain
data: the visibility (private or public) and stickiness of each property are kept and travel with it, but a sticky
property is not carried over into later contexts here.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

# Each property is stored as {VALUE: value, MASK: bits}, as NVFlare stores it: FOBS sends ``props`` as it is.
VALUE = "value"
MASK = "mask"
MASK_STICKY = 1 << 0
MASK_PRIVATE = 1 << 1

# One lock for every context, as in NVFlare: a property's mask is checked and set in one step.
_props_lock = threading.Lock()


class ReservedKey:
    """Property and header names reserved by the runtime (NVFlare's values)."""

    RUN_NUM = "__run_num__"
    IDENTITY_NAME = "__identity_name__"
    PEER_CTX = "__peer_ctx__"
    RC = "__rc__"
    COOKIE_JAR = "__cookie_jar__"
    WORKSPACE_ROOT = "__workspace_root__"
    APP_ROOT = "__app_root__"
    CLIENT_NAME = "__client_name__"
    TASK_NAME = "__task_name__"
    TASK_DATA = "__task_data__"
    TASK_RESULT = "__task_result__"
    TASK_ID = "__task_id__"
    EVENT_ORIGIN_SITE = "__event_origin_site__"
    AUDIT_EVENT_ID = "__audit_event_id__"
    WORKFLOW = "__workflow__"
    RUN_ABORT_SIGNAL = "__run_abort_signal__"
    SHAREABLE = "__shareable__"
    ARGS = "__args__"
    JOB_META = "__job_meta__"
    CURRENT_JOB_ID = "__current_job_id__"
    CUSTOM_PROPS = "__custom_props__"
    PROCESS_TYPE = "__process_type__"


class FLContextKey:
    """Property names that filters and executors read from an ``FLContext`` (NVFlare's values)."""

    TASK_NAME = ReservedKey.TASK_NAME
    TASK_DATA = ReservedKey.TASK_DATA
    TASK_RESULT = ReservedKey.TASK_RESULT
    TASK_ID = ReservedKey.TASK_ID
    CLIENT_NAME = ReservedKey.CLIENT_NAME
    PEER_CONTEXT = ReservedKey.PEER_CTX
    CURRENT_RUN = ReservedKey.RUN_NUM
    CURRENT_JOB_ID = ReservedKey.CURRENT_JOB_ID
    JOB_META = ReservedKey.JOB_META
    WORKSPACE_ROOT = ReservedKey.WORKSPACE_ROOT
    APP_ROOT = ReservedKey.APP_ROOT
    EVENT_ORIGIN_SITE = ReservedKey.EVENT_ORIGIN_SITE
    WORKFLOW = ReservedKey.WORKFLOW
    SHAREABLE = ReservedKey.SHAREABLE
    RUN_ABORT_SIGNAL = ReservedKey.RUN_ABORT_SIGNAL
    ARGS = ReservedKey.ARGS
    CUSTOM_PROPS = ReservedKey.CUSTOM_PROPS
    PROCESS_TYPE = ReservedKey.PROCESS_TYPE
    FILTER_DIRECTION = "__filter_dir__"
    SITE_NAME = "__site_name"


def make_mask(private: bool, sticky: bool) -> int:
    return (MASK_PRIVATE if private else 0) | (MASK_STICKY if sticky else 0)


def is_private(mask: int) -> bool:
    return bool(mask & MASK_PRIVATE)


def is_sticky(mask: int) -> bool:
    return bool(mask & MASK_STICKY)


def _describe(mask: int) -> str:
    return ("private" if is_private(mask) else "public") + (":sticky" if is_sticky(mask) else ":non-sticky")


class FLContext:
    """Named properties, each private (seen only by local components) or public (sent to peers), and sticky or
    not. ``model`` is NVFlare's spare slot for an object travelling with the context; it is None unless set."""

    def __init__(self) -> None:
        self.model: Any = None
        self.props: dict[str, dict[str, Any]] = {}

    def set_prop(self, key: str, value: Any, private: bool = True, sticky: bool = True) -> bool:
        """Sets a property; False (and a warning) if it exists with other visibility or stickiness."""
        if not isinstance(key, str):
            raise ValueError(f"prop key must be str, but got {type(key)}")
        mask = make_mask(private, sticky)
        with _props_lock:
            existing = self.props.get(key)
            if existing is not None and existing[MASK] != mask:
                logger.warning(
                    "property %r already exists as %s, cannot change to %s",
                    key, _describe(existing[MASK]), _describe(mask),
                )
                return False
            self.props[key] = {VALUE: value, MASK: mask}
            return True

    def put(self, key: str, value: Any, private: bool, sticky: bool) -> None:
        """Sets a property whatever it was before."""
        self.props[key] = {VALUE: value, MASK: make_mask(private, sticky)}

    def get_prop(self, key: str, default: Any = None) -> Any:
        prop = self.props.get(key)
        return prop[VALUE] if prop is not None else default

    def get_prop_keys(self) -> list[str]:
        return list(self.props)

    def get_prop_detail(self, key: str) -> dict | None:
        prop = self.props.get(key)
        if prop is None:
            return None
        return {VALUE: prop[VALUE], "private": is_private(prop[MASK]), "sticky": is_sticky(prop[MASK])}

    def remove_prop(self, key: str, force_removal: bool = False) -> None:
        """Removes a property; reserved ones (names starting with "__") only with ``force_removal``."""
        if not isinstance(key, str) or (key.startswith("__") and not force_removal):
            return
        with _props_lock:
            self.props.pop(key, None)

    def public_key_exists(self, key: str) -> bool:
        return key in self.props and not is_private(self.props[key][MASK])

    def get_all_public_props(self) -> dict[str, Any]:
        with _props_lock:
            return {k: p[VALUE] for k, p in self.props.items() if not is_private(p[MASK])}

    def set_public_props(self, metadata: dict) -> None:
        """Replaces every public property with ``metadata``'s items (public, not sticky)."""
        self.props = {k: p for k, p in self.props.items() if is_private(p[MASK])}
        for key, value in metadata.items():
            self.set_prop(key, value, private=False, sticky=False)

    def get_custom_prop(self, key: str, default: Any = None) -> Any:
        props = self.get_prop(ReservedKey.CUSTOM_PROPS)
        return props.get(key, default) if props else default

    def set_custom_prop(self, key: str, value: Any) -> None:
        props = self.get_prop(ReservedKey.CUSTOM_PROPS)
        if not props:
            props = {}
            self.set_prop(ReservedKey.CUSTOM_PROPS, props, private=True, sticky=False)
        props[key] = value

    def set_peer_context(self, ctx: FLContext) -> None:
        self.put(ReservedKey.PEER_CTX, ctx, private=True, sticky=False)

    def get_peer_context(self) -> FLContext | None:
        return self.get_prop(ReservedKey.PEER_CTX)

    def get_job_id(self, default: Any = None) -> Any:
        return self.get_prop(ReservedKey.RUN_NUM, default)

    def get_identity_name(self, default: str = "") -> str:
        return self.get_prop(ReservedKey.IDENTITY_NAME, default)

    def get_process_type(self, default: Any = None) -> Any:
        return self.get_prop(ReservedKey.PROCESS_TYPE, default)

    def get_run_abort_signal(self) -> Any:
        return self.get_prop(ReservedKey.RUN_ABORT_SIGNAL)

    def clone(self) -> FLContext:
        """A new context with the same model and a shallow copy of the properties."""
        with _props_lock:
            new_ctx = FLContext()
            new_ctx.model = self.model
            new_ctx.props = copy.copy(self.props)
            return new_ctx

    def __enter__(self) -> FLContext:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        pass

    def __str__(self) -> str:
        return " ".join(f"{k}: {type(p[VALUE])}" for k, p in self.props.items())


__all__ = ["FLContext", "FLContextKey", "ReservedKey"]
