"""Bindings of flare's Rust transport core. Use `flare.cellnet`; this module is its engine."""

import os
import pathlib
from collections.abc import Callable
from typing import Any, final

__version__: str
__all__ = [
    "AbortSignal",
    "Cell",
    "DownloadReader",
    "DownloadService",
    "Payload",
    "StreamReader",
    "__version__",
    "cast_floats",
    "code_table",
    "configure_runtime",
    "default_comm_config",
    "dequantize_4bit",
    "dequantize_blockwise8",
    "download",
    "quantize_4bit",
    "quantize_blockwise8",
]

_HeadersDict = dict[str, Any]

@final
class Payload:
    """A received payload: a read-only buffer over the received bytes (no copy)."""

    def __len__(self) -> int: ...
    def __bytes__(self) -> bytes: ...
    def __eq__(self, value: object, /) -> bool: ...

@final
class StreamReader:
    """An incoming stream, read chunk by chunk in order as it arrives; iterate it, or call `read_chunk`."""

    @property
    def headers(self) -> _HeadersDict: ...
    @property
    def origin(self) -> str: ...
    @property
    def size(self) -> int | None: ...
    def read_chunk(self, timeout: float | None = None) -> Payload | None:
        """The next chunk, or None at the end; waits at most `timeout` seconds (default streaming_read_timeout)."""
    def __iter__(self) -> StreamReader: ...
    def __next__(self) -> Payload: ...
    def close(self) -> None:
        """Stops reading; a stream not read to its end is aborted and its sender told."""

@final
class Cell:
    """A core cell. `settings` holds transport settings (seconds for durations) and `callback_pool_size`."""

    def __new__(cls, fqcn: str, settings: dict[str, Any] | None = None) -> Cell: ...
    @property
    def fqcn(self) -> str: ...
    def listen(self, url: str) -> str:
        """Listens for children on `url`; returns the bound URL (port 0 picks one)."""
    def connect(self, url: str) -> None:
        """Connects to a parent in the background; reconnects with backoff when the link drops."""
    def register_request_cb(
        self, channel: str, topic: str, callback: Callable[[_HeadersDict, Payload], tuple[Any, Any] | None]
    ) -> None:
        """`callback(headers, payload) -> None | (headers | None, payload | None)`, run on the callback pool."""
    def register_blob_cb(self, channel: str, topic: str, callback: Callable[[_HeadersDict, Payload], None]) -> None:
        """`callback(headers, payload)` for each whole blob sent to (channel, topic), run on the callback pool."""
    def send_blob(
        self, target: str, channel: str, topic: str, payload: Any = None, headers: _HeadersDict | None = None
    ) -> None:
        """Streams `payload` to `target`'s blob callback; returns once the last chunk is handed to the network."""
    def register_stream_cb(self, channel: str, topic: str, callback: Callable[[StreamReader], None]) -> None:
        """`callback(reader)` for each new stream to (channel, topic), as soon as its first chunk arrives."""
    def send_file(
        self, target: str, channel: str, topic: str, path: str | os.PathLike[str], headers: _HeadersDict | None = None
    ) -> int:
        """Streams a file chunk by chunk to `target`'s file callback; returns the bytes sent."""
    def register_file_cb(
        self,
        channel: str,
        topic: str,
        directory: str | os.PathLike[str],
        callback: Callable[[_HeadersDict, pathlib.Path, int], None],
    ) -> None:
        """Writes files streamed to (channel, topic) into `directory`; `callback(headers, path, size)` when done."""
    def on_peer_event(self, callback: Callable[[str, str, str], None]) -> None:
        """`callback(event, name, reason)` with event "up" or "down", run on the callback pool."""
    def request(
        self,
        target: str,
        channel: str,
        topic: str,
        payload: Any = None,
        headers: _HeadersDict | None = None,
        timeout: float = 10.0,
    ) -> tuple[_HeadersDict, Payload]:
        """Sends a request; returns the reply's headers and payload. `cn__return_code` says how it went."""
    def broadcast(
        self,
        targets: list[str],
        channel: str,
        topic: str,
        payload: Any = None,
        headers: _HeadersDict | None = None,
        timeout: float = 10.0,
    ) -> list[tuple[str, tuple[_HeadersDict, Payload]]]:
        """Sends one request to each target concurrently."""
    def fire_and_forget(
        self,
        targets: list[str],
        channel: str,
        topic: str,
        payload: Any = None,
        headers: _HeadersDict | None = None,
    ) -> list[tuple[str, str]]:
        """Sends without waiting for replies; per target "" or the reason it was not sent."""
    def peers(self) -> list[str]: ...
    def reachable(self) -> list[str]: ...
    def wait_for_peer(self, name: str, timeout: float) -> bool: ...
    def close(self) -> None: ...

@final
class AbortSignal:
    """Stops the downloads it was given to, at once, from any thread."""

    def __new__(cls) -> AbortSignal: ...
    def trigger(self) -> None: ...
    def reset(self) -> None: ...
    @property
    def triggered(self) -> bool: ...

@final
class DownloadService:
    """The owner side of a cell's downloads; every instance for one cell is the same service."""

    def __new__(cls, cell: Cell) -> DownloadService: ...
    def new_transaction(
        self,
        timeout: float | None = None,
        num_receivers: int = 0,
        tx_id: str | None = None,
        on_receiver: Callable[[str, str, str, str, str], None] | None = None,
        on_done: Callable[[str, str, list[str], list[tuple[str, str, str, str]]], None] | None = None,
    ) -> str: ...
    def add_bytes(self, tx_id: str, data: Any, chunk_size: int | None = None, ref_id: str | None = None) -> str: ...
    def add_file(
        self, tx_id: str, path: str | os.PathLike[str], chunk_size: int | None = None, ref_id: str | None = None
    ) -> str: ...
    def add_items(
        self,
        tx_id: str,
        produce: Callable[[int], Any],
        count: int,
        max_chunk_size: int | None = None,
        ref_id: str | None = None,
    ) -> str: ...
    def delete_transaction(self, tx_id: str) -> bool: ...
    def transaction_info(self, tx_id: str) -> dict[str, Any] | None: ...
    @property
    def cache_used(self) -> int: ...
    @property
    def live_sources(self) -> int: ...

@final
class DownloadReader:
    """One reference pulled piece by piece, in order."""

    def __new__(
        cls,
        cell: Cell,
        owner: str,
        ref_id: str,
        per_request_timeout: float | None = None,
        max_retries: int | None = None,
        max_inflight: int | None = None,
        abort: AbortSignal | None = None,
        capacity: int = 4,
    ) -> DownloadReader: ...
    @property
    def total_size(self) -> int | None: ...
    def read(self) -> Payload | list[Payload] | None: ...
    def __iter__(self) -> DownloadReader: ...
    def __next__(self) -> Payload | list[Payload]: ...
    def close(self) -> None: ...

def download(
    cell: Cell,
    owner: str,
    ref_id: str,
    path: str | os.PathLike[str] | None = None,
    per_request_timeout: float | None = None,
    max_retries: int | None = None,
    max_inflight: int | None = None,
    abort: AbortSignal | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    progress_interval: float = 1.0,
) -> tuple[Payload | None, list[Payload], dict[str, Any]]:
    """Pulls one reference into memory or into the file at `path`."""

def configure_runtime(worker_threads: int) -> None:
    """Sets the number of transport threads, before the first cell of the process starts."""

def default_comm_config() -> dict[str, Any]:
    """The transport's default settings."""

# Quantization kernels (docs/quantization.md). Arrays cross as C-contiguous uint8 buffers (a byte view of a numpy
# array or CPU tensor) with their float type named: "float32", "float16" or "bfloat16". Outputs are buffers the
# caller allocated, filled with the GIL released. Sizes are checked: a mismatch raises ValueError.

def quantize_blockwise8(data: Any, dtype: str, codes: Any, absmax: Any, blocksize: int = 4096) -> None:
    """bitsandbytes' blockwise 8-bit quantization (dynamic map): one code byte per value into `codes`, one float32
    absmax per block into `absmax`."""

def dequantize_blockwise8(codes: Any, absmax: Any, code: Any, out: Any, dtype: str, blocksize: int = 4096) -> None:
    """Fills `out` (`dtype` values, one per code) with `code[codes[i]] * absmax[i // blocksize]`; `code` holds the
    256 float32 values of the map."""

def quantize_4bit(data: Any, dtype: str, quant_type: str, packed: Any, absmax: Any, blocksize: int = 64) -> None:
    """bitsandbytes' blockwise 4-bit quantization, `quant_type` "fp4" or "nf4": two codes per byte of `packed`
    (first value in the high nibble), one float32 absmax per block into `absmax`."""

def dequantize_4bit(packed: Any, absmax: Any, quant_type: str, out: Any, dtype: str, blocksize: int = 64) -> None:
    """Fills `out` (`dtype` values; its length is the value count) from 4-bit `packed` codes and their absmax."""

def cast_floats(source: Any, source_dtype: str, target: Any, target_dtype: str) -> None:
    """Converts `source` into `target` element by element, rounding to nearest even; float16 saturates at ±65504."""

def code_table(name: str) -> list[float]:
    """bitsandbytes' code table "dynamic" (8-bit, 256 values), "fp4" or "nf4" (16 values), as float32 values."""
