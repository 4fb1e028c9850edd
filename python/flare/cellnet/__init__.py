"""The cell network: named endpoints exchanging messages over the Rust transport core."""

from flare.cellnet.cell import Cell
from flare.cellnet.message import Message, MessageHeaderKey, ReturnCode

__all__ = ["Cell", "Message", "MessageHeaderKey", "ReturnCode"]
