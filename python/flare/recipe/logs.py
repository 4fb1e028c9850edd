"""Console logging for the envs: ``log_config`` is ``"concise"``, ``"full"``, ``"verbose"`` or a
``logging.config.dictConfig`` dict."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from flare.errors import ConfigError

_HANDLER_NAME = "flare-console"
_FORMATS = {
    "concise": ("%(asctime)s - %(levelname)s - %(message)s", logging.INFO),
    "full": ("%(asctime)s - %(name)s - %(threadName)s - %(levelname)s - %(message)s", logging.INFO),
    "verbose": ("%(asctime)s - %(name)s - %(threadName)s - %(levelname)s - %(message)s", logging.DEBUG),
}


def configure_console(log_config: Any) -> None:
    if isinstance(log_config, dict):
        logging.config.dictConfig(log_config)
        return
    level_name = log_config or "concise"
    if level_name not in _FORMATS:
        raise ConfigError(f"log_config must be one of {sorted(_FORMATS)} or a dictConfig dict, got {log_config!r}")
    fmt, level = _FORMATS[level_name]
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(fmt))
    handler.setLevel(level)
    if level_name == "concise":
        # the transport's own records stay in the site logs
        handler.addFilter(lambda record: not record.name.startswith(("flare.cellnet", "flare.streaming")))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


__all__ = ["configure_console"]
