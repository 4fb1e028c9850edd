"""The Client API's configuration names under NVFlare's module path (``nvflare.client.config``)."""

from flare.apis.fl_constant import ExchangeFormat, TransferType
from flare.client.exchange import ClientAPIConfig

__all__ = ["ClientAPIConfig", "ExchangeFormat", "TransferType"]
