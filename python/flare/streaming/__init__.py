"""User-level streaming over cells, after NVFlare's streamers: blobs, files, objects, containers and growing logs
pushed to one or more receivers.

A sender streams to named target cells; a receiver registers where streams on a channel/topic go. Memory: a blob is
held once on each side; a file is read and written chunk by chunk, so it never needs to fit in memory; a container
travels item by item.
"""

from flare.streaming.blob import BlobStreamer, StreamResult
from flare.streaming.files import FileStreamer, LogStreamer
from flare.streaming.keys import Streamer
from flare.streaming.objects import ContainerStreamer, ObjectStreamer

__all__ = ["BlobStreamer", "ContainerStreamer", "FileStreamer", "LogStreamer", "ObjectStreamer", "StreamResult", "Streamer"]
