"""Header names shared by the streamers (the ``Streamer.*`` namespace)."""


class Streamer:
    """Keys of the streamers' chunk protocol, carried as stream headers."""

    KEY_FILE_NAME = "Streamer.file_name"
    KEY_DATA = "Streamer.data"
    KEY_DATA_SIZE = "Streamer.size"
    KEY_EOF = "Streamer.eof"
    KEY_OFFSET = "Streamer.offset"
    KEY_CONTAINER_ID = "Streamer.container_id"
    KEY_CONTAINER_KIND = "Streamer.container_kind"
    KEY_ITEM_KEY = "Streamer.item_key"
    KEY_ITEM_INDEX = "Streamer.item_index"
    KEY_ITEM_COUNT = "Streamer.item_count"
    KEY_ENCODING = "Streamer.encoding"
