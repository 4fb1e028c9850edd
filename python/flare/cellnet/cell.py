"""``Cell``: an endpoint of the cell network, over the Rust transport core."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from flare import _sfm
from flare.cellnet.message import Buffer, Message, ReturnCode, decode_payload, encode_payload
from flare.config import CommSettings
from flare.errors import ConnectionClosed, FlareError, FlareTimeoutError, FrameTooLarge, TransportError

log = logging.getLogger(__name__)

RequestCallback = Callable[[Message], "Message | Buffer | None"]
PeerCallback = Callable[[str, str, str], None]


class Cell:
    """A cell named by its FQCN (``server``, ``site-1``, ``site-1.job-7``, ``relay-1``).

    A cell listens for children (``listen=``), connects to a parent (``parent_url=``), or both, which makes it a
    relay. Requests reach any cell of the tree through the cells between. Payloads cross into the transport and back
    without copies; every blocking call releases the GIL; callbacks run on a pool of their own threads.

    Parameters
    ----------
    fqcn:
        The cell's name; an invalid one raises ``ConfigError`` saying what is wrong.
    listen:
        URL to accept children on, e.g. ``"tcp://127.0.0.1:0"`` (port 0 picks a free port; see ``url``).
    parent_url:
        URL of the parent cell; the cell reconnects with backoff whenever the link drops.
    settings:
        ``CommSettings``; default: ``CommSettings.from_env()``.
    """

    def __init__(
        self,
        fqcn: str,
        *,
        listen: str | None = None,
        parent_url: str | None = None,
        settings: CommSettings | None = None,
    ):
        self.settings = settings or CommSettings.from_env()
        self._core = _sfm.Cell(fqcn, self.settings.as_dict())
        self._listen = listen
        self._parent_url = parent_url
        self._started = False
        self.url: str | None = None
        # given to FOBS with every payload (NVFlare's keys: num_receivers, download_complete_cb, ...)
        self.fobs_ctx: dict[str, Any] = {}

    @property
    def fqcn(self) -> str:
        return self._core.fqcn

    def start(self) -> Cell:
        """Starts listening and connecting. Idempotent; returns the cell."""
        if not self._started:
            self._started = True
            if self._listen:
                self.url = self._core.listen(self._listen)
            if self._parent_url:
                self._core.connect(self._parent_url)
        return self

    def register_request_cb(self, channel: str, topic: str, cb: RequestCallback) -> None:
        """Answers requests on (``channel``, ``topic``); topic ``"*"`` matches any topic of the channel.

        ``cb(request: Message)`` returns a ``Message`` (its headers may carry a return code, see
        ``Message.reply``), a bytes-like payload for an OK reply, or None for an empty OK reply. An exception becomes
        a ``PROCESS_EXCEPTION`` reply carrying its text.
        """

        def handle(headers: dict[str, Any], payload: Any) -> tuple[dict | None, Any] | None:
            try:
                result = cb(Message(headers, decode_payload(headers, payload, self)))
                if result is None:
                    return None
                if isinstance(result, Message):
                    payload, reply_headers = encode_payload(result.payload, result.headers, self)
                    return reply_headers, payload
                payload, reply_headers = encode_payload(result, None, self)
                return reply_headers, payload
            except Exception as e:  # a handler's failure is the requester's answer, not the transport's problem
                log.exception("request handler for %s/%s failed", channel, topic)
                return Message.reply(ReturnCode.PROCESS_EXCEPTION, f"{type(e).__name__}: {e}").headers, None

        self._core.register_request_cb(channel, topic, handle)

    def register_blob_cb(self, channel: str, topic: str, cb: Callable[[Message], None]) -> None:
        """Receives whole blobs sent with ``send_blob`` to (``channel``, ``topic``): ``cb(blob: Message)``.

        The payload is one buffer, allocated once at the announced size and filled as chunks arrive.
        """

        def handle(headers: dict[str, Any], payload: Any) -> None:
            try:
                cb(Message(headers, decode_payload(headers, payload, self)))
            except Exception:
                log.exception("blob handler for %s/%s failed", channel, topic)

        self._core.register_blob_cb(channel, topic, handle)

    def send_blob(
        self,
        target: str,
        channel: str,
        topic: str,
        payload: Buffer,
        *,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Streams ``payload`` to ``target`` in chunks under a flow-control window; returns once the last chunk
        has been handed to the network (the receiver's handler runs when the whole blob is in). No size limit of
        its own. Raises ``StallDetected`` when the receiver stops
        acknowledging for ``streaming_ack_progress_timeout``, ``TransportError`` when the stream is aborted (the
        message says why, e.g. no blob handler on the receiver).
        """
        payload, headers = encode_payload(payload, headers, self)
        self._core.send_blob(target, channel, topic, payload, headers)

    def register_stream_cb(self, channel: str, topic: str, cb: Callable[[Any], None]) -> None:
        """Reads streams to (``channel``, ``topic``) as they arrive: ``cb(reader)`` runs (on the callback pool) when
        a stream's first chunk lands; iterate ``reader`` for its chunks, in order, each a zero-copy buffer. The
        sender moves at the reader's pace; closing the reader early aborts the stream."""
        self._core.register_stream_cb(channel, topic, cb)

    def send_file(
        self, target: str, channel: str, topic: str, path: str | os.PathLike[str], *, headers: dict[str, Any] | None = None
    ) -> int:
        """Streams a file, read chunk by chunk, to ``target``'s file receiver; returns the bytes sent. The
        receiver names it by the header ``file_name`` (default: the file's base name)."""
        return self._core.send_file(target, channel, topic, os.fspath(path), headers)

    def register_file_cb(
        self, channel: str, topic: str, directory: str | os.PathLike[str], cb: Callable[[dict[str, Any], str, int], None]
    ) -> None:
        """Writes files streamed to (``channel``, ``topic``) into ``directory``; ``cb(headers, path, size)`` runs
        once each is complete (it is ``<name>.part`` until then)."""
        self._core.register_file_cb(channel, topic, os.fspath(directory), cb)

    def on_peer_event(self, cb: PeerCallback) -> None:
        """``cb(event, name, reason)`` with event ``"up"`` or ``"down"`` whenever a cell becomes (un)reachable."""
        self._core.on_peer_event(cb)

    def request(
        self,
        target: str,
        channel: str,
        topic: str,
        payload: Buffer | None = None,
        *,
        headers: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """Sends a request and waits up to ``timeout`` seconds for the reply.

        Failures are replies too: check ``reply.return_code`` (``TIMEOUT``, ``TARGET_UNREACHABLE``, ``COMM_ERROR``,
        ...) and ``reply.error``, or call ``reply.raise_for_status()``.
        """
        payload, headers = encode_payload(payload, headers, self)
        h, p = self._core.request(target, channel, topic, payload, headers, timeout)
        return Message(h, decode_payload(h, p, self))

    def broadcast(
        self,
        targets: Iterable[str],
        channel: str,
        topic: str,
        payload: Buffer | None = None,
        *,
        headers: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Message]:
        """Sends the request to every target at once; returns each target's reply."""
        targets = list(targets)
        payload, headers = encode_payload(payload, headers, self, len(targets))
        replies = self._core.broadcast(targets, channel, topic, payload, headers, timeout)
        return {target: Message(h, decode_payload(h, p, self)) for target, (h, p) in replies}

    def fire_and_forget(
        self,
        targets: str | Iterable[str],
        channel: str,
        topic: str,
        payload: Buffer | None = None,
        *,
        headers: dict[str, Any] | None = None,
    ) -> dict[str, str]:
        """Sends without waiting for replies; returns ``{target: ""}`` when sent, or the reason it was not."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        payload, headers = encode_payload(payload, headers, self, len(targets))
        return dict(self._core.fire_and_forget(targets, channel, topic, payload, headers))

    def peers(self) -> list[str]:
        """Cells with a live connection to this one."""
        return self._core.peers()

    def reachable(self) -> list[str]:
        """Cells this one has a connection or a learned route to."""
        return self._core.reachable()

    def wait_for_peer(self, name: str, timeout: float = 10.0) -> bool:
        """Waits until ``name`` is connected or routed to; False if not within ``timeout`` seconds."""
        return self._core.wait_for_peer(name, timeout)

    def close(self) -> None:
        """Closes connections; pending requests fail at once."""
        self._core.close()

    def __enter__(self) -> Cell:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Cell({self.fqcn!r}, url={self.url!r})"


def error_for_reply(reply: Message) -> FlareError:
    """The exception that a failed reply stands for."""
    rc = reply.return_code
    text = f"{rc.value if isinstance(rc, ReturnCode) else rc}: {reply.error or 'no details'}"
    if rc == ReturnCode.TIMEOUT:
        return FlareTimeoutError(text)
    if rc == ReturnCode.MSG_TOO_BIG:
        return FrameTooLarge(text)
    if rc in (ReturnCode.TARGET_UNREACHABLE, ReturnCode.COMM_ERROR):
        return ConnectionClosed(text) if "closed" in (reply.error or "") else TransportError(text)
    return FlareError(text)


__all__ = ["Cell"]
