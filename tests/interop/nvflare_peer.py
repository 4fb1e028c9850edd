#!/usr/bin/env python3
"""A real NVFlare CoreCell acting as a peer for flare's interop tests.

Run it with the Python of a virtualenv that has the `nvflare` package installed
(a test-only dependency). Minimal install, enough for the TCP driver because this
script skips nvflare/__init__.py (see import_nvflare_f3):
    python3 -m venv VENV && VENV/bin/pip install --no-deps nvflare==2.7.2 msgpack cryptography cffi
It is not imported by anything: it talks to the test harness through stdout/stdin only.

Roles
  --listen tcp://127.0.0.1:PORT   root server cell (FQCN must be "server"): listens
                                  on the url. PORT 0 = pick a free port; the chosen
                                  url is reported in the "ready" event.
  --parent tcp://127.0.0.1:PORT   client cell: connects to that url. A generation-1
                                  name (e.g. "site-1") connects as a client root
                                  (CoreCell root_url); a dotted name (e.g.
                                  "server.job1", "site-1.job1") connects as a child
                                  cell (CoreCell parent_url).

Callbacks registered on --channel (default "task", a channel NVFlare's Cell never
streams; "aux_communication" with --streamed):
  topic "echo"     replies with the request payload reversed, header
                   "answered_by" = this cell's FQCN, return code "ok".
  topic "noreply"  the callback returns None (NVFlare then sends no reply at all;
                   on a streamed channel NVFlare's blob Adapter fails on the None
                   and logs an error, which also means no reply).
  topic "blob"     (--streamed only) register_blob_cb: every blob received is
                   reported as a "blob" event with its size and sha256.

Requests
  --request-to TARGET --count N --size BYTES  sends N requests with random payloads
  of SIZE bytes to TARGET on (channel, "echo") and checks the reply (rc "ok" and
  payload == request reversed).

Streaming (NVFlare's chunk protocol, channel "sm__STREAM")
  --streamed         use NVFlare's streaming Cell (nvflare.fuel.f3.cellnet.cell.Cell)
                     instead of a bare CoreCell. Requests and callbacks on a channel
                     that Cell streams (any channel except admin, task,
                     server_parent_listener, client_command, client_sub_worker_command,
                     multi_process_executor, simulator_runner, return_only) then go as
                     blobs: the request as chunks on sm__STREAM/sm__DATA with sm__ri and
                     sm__pe, the reply as a blob on channel "return_only", topic
                     "<channel>:<topic>". A plain (non-streamed) request on the channel
                     is still answered by the CoreCell callback.
  --blob-to TARGET   (implies --streamed) send --count blobs of --size random bytes
                     with Cell.send_blob(channel, --blob-topic, TARGET) and wait for each
                     future (progress timeout --timeout).
  --header K=V       app header added to every request and blob sent (repeatable).
  --comm-config K=V  NVFlare comm config var, set as env NVFLARE_<K> before NVFlare
                     loads (repeatable), e.g. streaming_chunk_size=65536,
                     streaming_window_size=..., streaming_ack_interval=...

Output: one JSON object per line on stdout (flushed), e.g.
  {"event": "ready", "fqcn": "server", "role": "listen", "url": "tcp://127.0.0.1:40123"}
  {"event": "connected", "peer": "site-1"}
  {"event": "echo", "origin": "site-1", "size": 5, "sha256": "..", "streamed": false}
   (streamed: true adds "stream_headers": {sm__* of the request's first chunk, sm__pe removed})
  {"event": "reply", "i": 0, "rc": "ok", "ok": true, "size": 5, "answered_by": "server",
   "sha256": <of the reply payload>, "request_sha256": .., "streamed": true, "headers": {..}, ...}
  {"event": "done", "count": 3, "failures": 0}                      (after the requests)
  {"event": "blob_sent", "i": 0, "size": N, "sha256": "..", "elapsed_ms": 12.3, "error": null}
  {"event": "blobs_done", "count": 3, "failures": 0}                (after the blobs)
  {"event": "blob", "origin": "site-1", "channel": .., "topic": "blob", "size": N,
   "sha256": "..", "elapsed_ms": .., "headers": {app headers}, "stream_headers": {sm__*}}
   (a failed incoming blob: {"event": "blob", "origin": .., "error": "..."})
  {"event": "exit", "reason": "stdin_eof", "code": 0}
Errors are reported as {"event": "error", "message": ...}. NVFlare's own logging
goes to stderr.

Exit: on stdin EOF (unless --ignore-stdin), SIGTERM/SIGINT, or --linger SECONDS
after the work is done (after "done"/"blobs_done" when sending, after "ready" otherwise).
--max-runtime is a hard safety limit. Exit code 0 on success, 1 if any request
or blob failed, 2 on setup errors (bad args, cannot listen/connect in time).
Note: a background job of a non-interactive shell gets stdin=/dev/null, which is
an immediate EOF: use --ignore-stdin (with --linger) there.
"""

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlparse

from bare_nvflare import install_bare_nvflare

# Keep stdout for our JSON events only: anything else that prints goes to stderr.
_EVENT_OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr
_event_lock = threading.Lock()

ECHO_TOPIC = "echo"
NOREPLY_TOPIC = "noreply"
BLOB_TOPIC = "blob"
ANSWERED_BY = "answered_by"
DEFAULT_CHANNEL = "task"  # NVFlare's Cell never streams it
DEFAULT_STREAMED_CHANNEL = "aux_communication"  # NVFlare's Cell streams it

BYTES_TYPES = (bytes, bytearray, memoryview)


def sha256_hex(data) -> str:
    return hashlib.sha256(data).hexdigest()


def jsonable(value):
    """A header value as JSON: bytes as "<N bytes>", tuples as lists, unknown types as str."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BYTES_TYPES):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return str(value)


def split_headers(headers):
    """(app headers without binary values, sm__* stream headers, cn__* cell headers), JSON-safe."""
    app, stream, cell = {}, {}, {}
    for k, v in (headers or {}).items():
        k = str(k)
        if k.startswith("sm__"):
            stream[k] = jsonable(v)
        elif k.startswith("cn__"):
            cell[k] = jsonable(v)
        elif not isinstance(v, BYTES_TYPES):
            app[k] = jsonable(v)
    return app, stream, cell


def emit(event: str, **fields):
    rec = {"event": event}
    rec.update(fields)
    line = json.dumps(rec, default=str)
    with _event_lock:
        _EVENT_OUT.write(line + "\n")
        _EVENT_OUT.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Real NVFlare CoreCell (or streaming Cell) peer for interop tests")
    p.add_argument("--fqcn", required=True, help="FQCN of this cell, e.g. server or site-1")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--listen", metavar="URL", help="listen on URL (root server cell), e.g. tcp://127.0.0.1:0")
    role.add_argument("--parent", metavar="URL", help="connect to URL as a client/child cell")
    p.add_argument(
        "--channel",
        default=None,
        help=f"channel for callbacks, requests and blobs (default: {DEFAULT_CHANNEL}; "
        f"{DEFAULT_STREAMED_CHANNEL} with --streamed)",
    )
    p.add_argument(
        "--streamed",
        action="store_true",
        help="use NVFlare's streaming Cell instead of a bare CoreCell (requests on stream channels go as blobs)",
    )
    p.add_argument(
        "--blob-to", metavar="TARGET", help="send --count blobs of --size bytes to TARGET (implies --streamed)"
    )
    p.add_argument("--blob-topic", default=BLOB_TOPIC, help=f"topic of blobs sent and received (default {BLOB_TOPIC})")
    p.add_argument(
        "--header",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="app header (string value) added to every request and blob sent (repeatable)",
    )
    p.add_argument(
        "--comm-config",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="NVFlare comm config var, exported as env NVFLARE_<NAME> before NVFlare loads (repeatable)",
    )
    p.add_argument("--request-to", metavar="TARGET", help="send echo requests to this FQCN")
    p.add_argument(
        "--request-topic",
        default=ECHO_TOPIC,
        help="topic of the requests (default echo; any other topic only records the reply, no payload check)",
    )
    p.add_argument("--count", type=int, default=1, help="number of requests (default 1)")
    p.add_argument("--size", type=int, default=1024, help="payload size in bytes (default 1024)")
    p.add_argument("--payload", default=None, help="use this UTF-8 text as every request payload (overrides --size)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)")
    p.add_argument(
        "--wait-for",
        metavar="FQCN",
        action="append",
        default=None,
        help="before sending, wait until this cell is directly connected (repeatable); "
        "default: the --request-to and --blob-to targets",
    )
    p.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to become ready / see peers")
    p.add_argument("--linger", type=float, default=None, help="exit this many seconds after the work is done")
    p.add_argument("--ignore-stdin", action="store_true", help="do not exit on stdin EOF")
    p.add_argument("--max-runtime", type=float, default=900.0, help="hard limit on total runtime (default 900 s)")
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=None,
        help="set NVFLARE_HEARTBEAT_INTERVAL (seconds; NVFlare checks every 5 s)",
    )
    p.add_argument("--verbose", "-v", action="count", default=0, help="-v: INFO, -vv: DEBUG NVFlare logs")
    args = p.parse_args(argv)
    if args.count < 0 or args.size < 0:
        p.error("--count and --size must be >= 0")
    if args.blob_to:
        args.streamed = True
    if args.channel is None:
        args.channel = DEFAULT_STREAMED_CHANNEL if args.streamed else DEFAULT_CHANNEL
    headers = {}
    for item in args.header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            p.error(f"--header wants KEY=VALUE, got {item!r}")
        headers[key] = value
    args.headers = headers
    args.comm_env = comm_env(p, args.comm_config)
    return args


def comm_env(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """``--comm-config NAME=VALUE`` options as the ``NVFLARE_<NAME>`` environment NVFlare reads them from."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--comm-config wants NAME=VALUE, got {item!r}")
        env["NVFLARE_" + key.upper()] = value
    return env


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True if something is bound to host:port (probe by binding without SO_REUSEADDR)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return False
    except OSError:
        return True
    finally:
        s.close()


def wait_stream_future(future, timeout, stop_event=None):
    """Wait for an NVFlare StreamFuture like NVFlare's Cell does: fail after `timeout` seconds WITHOUT progress.

    Returns (ok, error string or None).
    """
    last = future.get_progress()
    while True:
        try:
            error = future.exception(timeout)
            break
        except TimeoutError:
            if stop_event is not None and stop_event.is_set():
                return False, "interrupted"
            progress = future.get_progress()
            if progress == last:
                return False, f"no progress for {timeout}s at {progress} of {future.get_size()} bytes"
            last = progress
    if error is not None:
        return False, f"{type(error).__name__}: {error}"
    return True, None


class Peer:
    def __init__(self, args):
        self.args = args
        self.cell = None  # CoreCell, or NVFlare's streaming Cell with --streamed
        self.core = None  # the CoreCell (== self.cell without --streamed)
        self.stop_event = threading.Event()
        self.exit_reason = None
        self.exit_code = 0
        self.nvflare_version = None

    # ----- lifecycle -------------------------------------------------------

    def request_exit(self, reason: str, code: int = None):
        if self.exit_reason is None:
            self.exit_reason = reason
        if code is not None and self.exit_code == 0:
            self.exit_code = code
        self.stop_event.set()

    def watch_stdin(self):
        try:
            while True:
                chunk = sys.stdin.buffer.read1(4096) if hasattr(sys.stdin.buffer, "read1") else sys.stdin.read(1)
                if not chunk:
                    break
        except Exception:
            pass
        self.request_exit("stdin_eof")

    def watchdog(self):
        if not self.stop_event.wait(self.args.max_runtime):
            emit("error", message=f"max runtime {self.args.max_runtime}s exceeded")
            self.request_exit("max_runtime", 3)

    # ----- callbacks -------------------------------------------------------

    def _echo_cb(self, request):
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
        from nvflare.fuel.f3.cellnet.utils import make_reply
        from nvflare.fuel.f3.message import Message

        origin = request.get_header(MessageHeaderKey.ORIGIN)
        payload = request.payload
        if payload is None:
            payload = b""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            emit("echo", origin=origin, ok=False, payload_type=type(payload).__name__)
            return make_reply(ReturnCode.INVALID_REQUEST, error="echo payload must be bytes")
        data = bytes(payload)
        # NVFlare's blob Adapter hands us the headers of the stream's first chunk (sm__* included)
        streamed = request.get_header("sm__id") is not None
        rec = {"origin": origin, "size": len(data), "sha256": sha256_hex(data), "streamed": streamed}
        if streamed:
            # sm__pe is gone: NVFlare's Adapter removes it when it decodes the payload
            rec["stream_headers"] = split_headers(request.headers)[1]
        emit("echo", **rec)
        return Message(headers={ANSWERED_BY: self.args.fqcn}, payload=data[::-1])

    def _blob_cb(self, future, *args, **kwargs):
        """register_blob_cb callback: called when the first chunk arrives; future.result() is the whole blob."""
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey

        headers = future.get_headers() or {}
        origin = headers.get(MessageHeaderKey.ORIGIN)
        app, stream, _cell = split_headers(headers)
        rec = {"origin": origin, "channel": stream.get("sm__ch"), "topic": stream.get("sm__tp")}
        t0 = time.perf_counter()
        ok, error = wait_stream_future(future, self.args.timeout, self.stop_event)
        rec["elapsed_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
        if not ok:
            emit("blob", error=error, **rec)
            return
        try:
            data = future.result(0)
        except Exception as ex:
            emit("blob", error=f"{type(ex).__name__}: {ex}", **rec)
            return
        if data is None:
            data = b""
        emit("blob", size=len(data), sha256=sha256_hex(data), headers=app, stream_headers=stream, **rec)

    def _noreply_cb(self, request):
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey

        emit("noreply", origin=request.get_header(MessageHeaderKey.ORIGIN))
        return None

    def _connected_cb(self, agent, *args, **kwargs):
        emit("connected", peer=agent.get_fqcn())

    def _disconnected_cb(self, agent, *args, **kwargs):
        emit("disconnected", peer=agent.get_fqcn())

    # ----- setup -------------------------------------------------------------

    def _listener_bound(self, url: str) -> bool:
        """Best effort: has NVFlare's listener for url actually bound its socket?"""
        cell = self.core  # NVFlare's Cell answers any unknown attribute with a function: use the CoreCell
        try:
            listener = cell.ext_listeners.get(url)
            conn_mgr = cell.communicator.conn_manager
            connector = conn_mgr.connectors.get(listener.handle)
            server = getattr(connector.driver, "server", None)
            return server is not None
        except Exception:
            # internals differ in this nvflare version: fall back to probing the port
            u = urlparse(url)
            return port_in_use(u.hostname, u.port)

    def start(self) -> bool:
        a = self.args
        from nvflare.fuel.f3.cellnet.fqcn import FQCN, FqcnInfo

        if a.streamed:
            # Cell(*args, **kwargs) builds its CoreCell from the same arguments and adds the streaming layer
            from nvflare.fuel.f3.cellnet.cell import Cell as CellClass
        else:
            from nvflare.fuel.f3.cellnet.core_cell import CoreCell as CellClass

        err = FQCN.validate(a.fqcn)
        if err:
            emit("error", message=f"invalid fqcn {a.fqcn!r}: {err}")
            return False
        info = FqcnInfo(a.fqcn)

        if a.listen:
            u = urlparse(a.listen)
            if u.scheme not in ("tcp",) or not u.hostname or u.port is None:
                emit("error", message=f"--listen must be tcp://HOST:PORT, got {a.listen!r}")
                return False
            if not (info.is_root and info.is_on_server):
                emit("error", message=f"--listen requires the root server FQCN 'server', got {a.fqcn!r}")
                return False
            port = u.port or free_port(u.hostname)
            url = f"tcp://{u.hostname}:{port}"
            self.cell = CellClass(fqcn=a.fqcn, root_url=url, secure=False, credentials={})
            role = "listen"
        else:
            u = urlparse(a.parent)
            if u.scheme not in ("tcp",) or not u.hostname or not u.port:
                emit("error", message=f"--parent must be tcp://HOST:PORT, got {a.parent!r}")
                return False
            url = a.parent
            if info.is_root:
                if info.is_on_server:
                    emit("error", message="a connecting cell cannot be the root server 'server'")
                    return False
                # client root (e.g. site-1): backbone external connector to the server
                self.cell = CellClass(fqcn=a.fqcn, root_url=url, secure=False, credentials={})
            else:
                # child cell (e.g. server.job1 / site-1.job1): internal connector to its parent
                self.cell = CellClass(fqcn=a.fqcn, root_url=None, secure=False, credentials={}, parent_url=url)
            role = "connect"

        cell = self.cell
        self.core = cell.core_cell if a.streamed else cell
        # channel as KEYWORD: NVFlare's Cell picks streamed/plain by kwargs["channel"] (a streamed channel gets
        # both the CoreCell callback and a blob callback through its Adapter)
        cell.register_request_cb(channel=a.channel, topic=ECHO_TOPIC, cb=self._echo_cb)
        cell.register_request_cb(channel=a.channel, topic=NOREPLY_TOPIC, cb=self._noreply_cb)
        if a.streamed:
            cell.register_blob_cb(a.channel, a.blob_topic, self._blob_cb)
        cell.set_cell_connected_cb(self._connected_cb)
        cell.set_cell_disconnected_cb(self._disconnected_cb)
        cell.start()

        deadline = time.time() + a.connect_timeout
        while not self.stop_event.is_set():
            if role == "listen":
                ready = cell.is_backbone_ready() and self._listener_bound(url)
            else:
                ready = cell.is_backbone_ready()
            if ready:
                emit(
                    "ready",
                    fqcn=a.fqcn,
                    role=role,
                    url=url,
                    pid=os.getpid(),
                    nvflare=self.nvflare_version,
                    streamed=a.streamed,
                    channel=a.channel,
                )
                return True
            if time.time() > deadline:
                what = f"listen on {url}" if role == "listen" else f"connect to {url}"
                emit("error", message=f"could not {what} within {a.connect_timeout}s")
                return False
            time.sleep(0.05)
        return False

    # ----- requests ----------------------------------------------------------

    def wait_for_peers(self, names) -> bool:
        deadline = time.time() + self.args.connect_timeout
        missing = list(names)
        while missing and not self.stop_event.is_set():
            missing = [n for n in missing if not self.cell.is_cell_connected(n)]
            if not missing:
                break
            if time.time() > deadline:
                emit("error", message=f"peers not connected within {self.args.connect_timeout}s: {missing}")
                return False
            time.sleep(0.05)
        return not missing

    def run_requests(self) -> int:
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey, ReturnCode
        from nvflare.fuel.f3.message import Message

        a = self.args
        streamed = a.streamed and is_stream_channel(a.channel)
        failures = 0
        for i in range(a.count):
            if self.stop_event.is_set():
                failures += a.count - i
                emit("error", message=f"interrupted after {i} of {a.count} requests")
                break
            payload = a.payload.encode("utf-8") if a.payload is not None else os.urandom(a.size)
            t0 = time.perf_counter()
            try:
                # keywords: NVFlare's Cell streams the request when kwargs["channel"] is a stream channel
                reply = self.cell.send_request(
                    channel=a.channel,
                    topic=a.request_topic,
                    target=a.request_to,
                    request=Message(headers=dict(a.headers), payload=payload),
                    timeout=a.timeout,
                )
            except Exception as ex:  # never let one request kill the peer
                failures += 1
                emit("reply", i=i, rc=None, ok=False, error=f"{type(ex).__name__}: {ex}", streamed=streamed)
                continue
            elapsed_ms = round((time.perf_counter() - t0) * 1000.0, 3)
            if reply is None:
                failures += 1
                emit("reply", i=i, rc=None, ok=False, error="no reply object", elapsed_ms=elapsed_ms)
                continue
            rc = reply.get_header(MessageHeaderKey.RETURN_CODE, ReturnCode.OK)
            body = reply.payload
            if body is None:
                body = b""
            is_bytes = isinstance(body, BYTES_TYPES)
            rec = {
                "i": i,
                "rc": rc,
                "size": len(body) if is_bytes else None,
                "answered_by": reply.get_header(ANSWERED_BY),
                "elapsed_ms": elapsed_ms,
                "sha256": sha256_hex(body) if is_bytes else None,
                "request_sha256": sha256_hex(payload),
                "streamed": streamed,
                "headers": jsonable(dict(reply.headers or {})),
            }
            error = reply.get_header(MessageHeaderKey.ERROR)
            if error:
                rec["error"] = error
            ok = rc == ReturnCode.OK
            if ok and not isinstance(body, (bytes, bytearray, memoryview)):
                ok = False
                rec["error"] = f"reply payload is {type(body).__name__}, expected bytes"
            elif ok and a.request_topic == ECHO_TOPIC and bytes(body) != payload[::-1]:
                ok = False
                rec["error"] = "reply payload is not the request reversed"
            if not ok:
                failures += 1
            emit("reply", ok=ok, **rec)
        emit("done", count=a.count, failures=failures)
        return failures

    def run_blobs(self) -> int:
        from nvflare.fuel.f3.message import Message

        a = self.args
        failures = 0
        for i in range(a.count):
            if self.stop_event.is_set():
                failures += a.count - i
                emit("error", message=f"interrupted after {i} of {a.count} blobs")
                break
            payload = a.payload.encode("utf-8") if a.payload is not None else os.urandom(a.size)
            rec = {"i": i, "size": len(payload), "sha256": sha256_hex(payload)}
            t0 = time.perf_counter()
            try:
                # a real StreamCell method (no channel dispatch): always streamed, on any channel
                future = self.cell.send_blob(
                    channel=a.channel,
                    topic=a.blob_topic,
                    target=a.blob_to,
                    message=Message(headers=dict(a.headers), payload=payload),
                )
                # done when the FINAL chunk has been handed to the transport (NVFlare does not wait for a last ACK)
                ok, error = wait_stream_future(future, a.timeout, self.stop_event)
            except Exception as ex:
                ok, error = False, f"{type(ex).__name__}: {ex}"
            rec["elapsed_ms"] = round((time.perf_counter() - t0) * 1000.0, 3)
            if not ok:
                failures += 1
            emit("blob_sent", error=error, **rec)
        emit("blobs_done", count=a.count, failures=failures)
        return failures

    # ----- main ----------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        threading.Thread(target=self.watchdog, name="peer-watchdog", daemon=True).start()
        if not a.ignore_stdin:
            threading.Thread(target=self.watch_stdin, name="peer-stdin", daemon=True).start()

        try:
            ok = self.start()
        except Exception as ex:
            emit("error", message=f"start failed: {type(ex).__name__}: {ex}")
            ok = False
        if ok:
            self.work()
        elif not self.stop_event.is_set():  # not when asked to stop (stdin EOF, signal) while starting
            self.request_exit("setup_failed", 2)

        if not self.stop_event.is_set() and a.linger is not None:
            if not self.stop_event.wait(a.linger):
                self.request_exit("linger")
        self.stop_event.wait()
        return self.shutdown()

    def work(self):
        """What the peer does once ready (subclasses replace it): requests and blobs, or waiting for peers."""
        a = self.args
        waits = a.wait_for if a.wait_for is not None else [t for t in (a.request_to, a.blob_to) if t]
        if waits and not self.wait_for_peers(waits):
            return self.request_exit("peers_missing", 2)
        failures = self.run_requests() if a.request_to else 0
        if a.blob_to and not self.stop_event.is_set():
            failures += self.run_blobs()
        if failures:
            self.exit_code = 1

    def shutdown(self) -> int:
        code = self.exit_code
        if self.cell is not None:
            t = threading.Thread(target=self._stop_cell, name="peer-stop", daemon=True)
            t.start()
            t.join(5.0)
            if t.is_alive():
                emit("error", message="cell.stop() did not finish in 5s")
        emit("exit", reason=self.exit_reason, code=code)
        return code

    def _stop_cell(self):
        try:
            self.cell.stop()
        except Exception as ex:
            emit("error", message=f"cell.stop failed: {type(ex).__name__}: {ex}")


def is_stream_channel(channel: str) -> bool:
    """Does NVFlare's Cell stream requests on this channel? (its own rule, or a copy of it)"""
    try:
        from nvflare.fuel.f3.cellnet.cell import _is_stream_channel

        return _is_stream_channel(channel)
    except ImportError:
        excluded = (
            "admin",
            "task",
            "server_parent_listener",
            "client_command",
            "client_sub_worker_command",
            "multi_process_executor",
            "simulator_runner",
            "return_only",
        )
        return bool(channel) and channel not in excluded


def import_nvflare_f3() -> str:
    """Import nvflare.fuel.f3 without running nvflare/__init__.py.

    The package __init__ pulls in the whole job/simulator stack (grpcio, requests,
    psutil, PyYAML, ...). The cell layer needs only msgpack and cryptography, so we
    register a bare package module for "nvflare" pointing at the installed package
    directory and import the submodules from there.
    """
    import importlib.metadata

    install_bare_nvflare()
    import nvflare.fuel.f3.cellnet.cell  # noqa: F401  (streaming Cell; imports core_cell)

    try:
        return importlib.metadata.version("nvflare")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None, parse=parse_args, peer_class=Peer):
    args = parse(argv)
    # before NVFlare loads: its CommConfigurator reads env NVFLARE_<NAME> (and caches what it read)
    os.environ.update(args.comm_env)
    if args.heartbeat_interval is not None:
        # read by NVFlare's HeartbeatMonitor via ConfigService (env NVFLARE_<NAME>)
        os.environ["NVFLARE_HEARTBEAT_INTERVAL"] = str(args.heartbeat_interval)
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.verbose == 0:
        # drivers whose optional deps (grpcio, aiohttp) are not installed are skipped with a warning: we use tcp only
        logging.getLogger("nvflare.fuel.f3.drivers.driver_manager").setLevel(logging.ERROR)

    peer = peer_class(args)

    def on_signal(signum, _frame):
        peer.request_exit(f"signal_{signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        version = import_nvflare_f3()
    except ImportError as ex:
        emit("error", message=f"cannot import nvflare's f3 ({ex}); run with the interop venv's python")
        code = 2
    else:
        peer.nvflare_version = version
        try:
            code = peer.run()
        except Exception as ex:
            emit("error", message=f"unexpected: {type(ex).__name__}: {ex}")
            code = 2
    try:
        _EVENT_OUT.flush()
        sys.stderr.flush()
    finally:
        # NVFlare leaves non-daemon threads (thread pools, socket servers) behind: don't wait for them
        os._exit(code)


if __name__ == "__main__":
    main()
