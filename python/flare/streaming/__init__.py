"""User-level streaming over cells, after NVFlare's streamers: blobs, files, objects, containers and growing logs
pushed to one or more receivers; bytes, objects, items and files pulled by each receiver at its own pace.

A sender streams to named target cells; a receiver registers where streams on a channel/topic go. Memory: a blob is
held once on each side; a file is read and written chunk by chunk, so it never needs to fit in memory; a container
travels item by item.
"""

from flare.streaming.blob import BlobStreamer, StreamResult
from flare.streaming.download import (
    DownloadStatus,
    ObjectDownloader,
    ReceiverOutcome,
    TransactionDoneStatus,
    TransactionOutcome,
    download_bytes,
    download_items,
    download_object,
    open_download,
)
from flare.streaming.file_download import FileDownloader
from flare.streaming.files import FileStreamer, LogStreamer
from flare.streaming.keys import Streamer
from flare.streaming.objects import ContainerStreamer, ObjectStreamer
from flare.streaming.progress import ProgressLog, TerminalProgress
from flare.streaming.retriever import BadFileRequest, FileRetriever

__all__ = [
    "BadFileRequest",
    "BlobStreamer",
    "ContainerStreamer",
    "DownloadStatus",
    "FileDownloader",
    "FileRetriever",
    "FileStreamer",
    "LogStreamer",
    "ObjectDownloader",
    "ObjectStreamer",
    "ProgressLog",
    "ReceiverOutcome",
    "StreamResult",
    "Streamer",
    "TerminalProgress",
    "TransactionDoneStatus",
    "TransactionOutcome",
    "download_bytes",
    "download_items",
    "download_object",
    "open_download",
]
