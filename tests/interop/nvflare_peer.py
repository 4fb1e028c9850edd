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
streams):
  topic "echo"     replies with the request payload reversed, header
                   "answered_by" = this cell's FQCN, return code "ok".
  topic "noreply"  the callback returns None (NVFlare then sends no reply at all).

Requests
  --request-to TARGET --count N --size BYTES  sends N requests with random payloads
  of SIZE bytes to TARGET on (channel, "echo") and checks the reply (rc "ok" and
  payload == request reversed).

Output: one JSON object per line on stdout (flushed), e.g.
  {"event": "ready", "fqcn": "server", "role": "listen", "url": "tcp://127.0.0.1:40123"}
  {"event": "connected", "peer": "site-1"}
  {"event": "echo", "origin": "site-1", "size": 5}
  {"event": "reply", "i": 0, "rc": "ok", "ok": true, "size": 5, "answered_by": "server", ...}
  {"event": "done", "count": 3, "failures": 0}
  {"event": "exit", "reason": "stdin_eof", "code": 0}
Errors are reported as {"event": "error", "message": ...}. NVFlare's own logging
goes to stderr.

Exit: on stdin EOF (unless --ignore-stdin), SIGTERM/SIGINT, or --linger SECONDS
after the work is done (after "done" when requesting, after "ready" otherwise).
--max-runtime is a hard safety limit. Exit code 0 on success, 1 if any request
failed, 2 on setup errors (bad args, cannot listen/connect in time).
Note: a background job of a non-interactive shell gets stdin=/dev/null, which is
an immediate EOF: use --ignore-stdin (with --linger) there.
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlparse

# Keep stdout for our JSON events only: anything else that prints goes to stderr.
_EVENT_OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
sys.stdout = sys.stderr
_event_lock = threading.Lock()

ECHO_TOPIC = "echo"
NOREPLY_TOPIC = "noreply"
ANSWERED_BY = "answered_by"


def emit(event: str, **fields):
    rec = {"event": event}
    rec.update(fields)
    line = json.dumps(rec, default=str)
    with _event_lock:
        _EVENT_OUT.write(line + "\n")
        _EVENT_OUT.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Real NVFlare CoreCell peer for interop tests")
    p.add_argument("--fqcn", required=True, help="FQCN of this cell, e.g. server or site-1")
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument("--listen", metavar="URL", help="listen on URL (root server cell), e.g. tcp://127.0.0.1:0")
    role.add_argument("--parent", metavar="URL", help="connect to URL as a client/child cell")
    p.add_argument("--channel", default="task", help="channel for callbacks and requests (default: task)")
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
        "default: the --request-to target",
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
    return args


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


class Peer:
    def __init__(self, args):
        self.args = args
        self.cell = None
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
        emit("echo", origin=origin, size=len(data))
        return Message(headers={ANSWERED_BY: self.args.fqcn}, payload=data[::-1])

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
        cell = self.cell
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
        from nvflare.fuel.f3.cellnet.core_cell import CoreCell
        from nvflare.fuel.f3.cellnet.fqcn import FQCN, FqcnInfo

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
            self.cell = CoreCell(fqcn=a.fqcn, root_url=url, secure=False, credentials={})
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
                self.cell = CoreCell(fqcn=a.fqcn, root_url=url, secure=False, credentials={})
            else:
                # child cell (e.g. server.job1 / site-1.job1): internal connector to its parent
                self.cell = CoreCell(fqcn=a.fqcn, root_url=None, secure=False, credentials={}, parent_url=url)
            role = "connect"

        cell = self.cell
        cell.register_request_cb(channel=a.channel, topic=ECHO_TOPIC, cb=self._echo_cb)
        cell.register_request_cb(channel=a.channel, topic=NOREPLY_TOPIC, cb=self._noreply_cb)
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
                emit("ready", fqcn=a.fqcn, role=role, url=url, pid=os.getpid(), nvflare=self.nvflare_version)
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
        failures = 0
        for i in range(a.count):
            if self.stop_event.is_set():
                failures += a.count - i
                emit("error", message=f"interrupted after {i} of {a.count} requests")
                break
            payload = a.payload.encode("utf-8") if a.payload is not None else os.urandom(a.size)
            t0 = time.perf_counter()
            try:
                reply = self.cell.send_request(
                    channel=a.channel,
                    topic=a.request_topic,
                    target=a.request_to,
                    request=Message(headers={}, payload=payload),
                    timeout=a.timeout,
                )
            except Exception as ex:  # never let one request kill the peer
                failures += 1
                emit("reply", i=i, rc=None, ok=False, error=f"{type(ex).__name__}: {ex}")
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
            rec = {
                "i": i,
                "rc": rc,
                "size": len(body) if isinstance(body, (bytes, bytearray, memoryview)) else None,
                "answered_by": reply.get_header(ANSWERED_BY),
                "elapsed_ms": elapsed_ms,
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
        if not ok:
            if not self.stop_event.is_set():  # else: asked to stop (stdin EOF, signal) while starting
                self.request_exit("setup_failed", 2)
        elif a.request_to:
            waits = a.wait_for if a.wait_for is not None else [a.request_to]
            if not self.wait_for_peers(waits):
                self.request_exit("peers_missing", 2)
            else:
                failures = self.run_requests()
                if failures:
                    self.exit_code = 1
        elif a.wait_for:
            if not self.wait_for_peers(a.wait_for):
                self.request_exit("peers_missing", 2)

        if not self.stop_event.is_set() and a.linger is not None:
            if not self.stop_event.wait(a.linger):
                self.request_exit("linger")
        self.stop_event.wait()
        return self.shutdown()

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


def import_nvflare_f3() -> str:
    """Import nvflare.fuel.f3 without running nvflare/__init__.py.

    The package __init__ pulls in the whole job/simulator stack (grpcio, requests,
    psutil, PyYAML, ...). The cell layer needs only msgpack and cryptography, so we
    register a bare package module for "nvflare" pointing at the installed package
    directory and import the submodules from there.
    """
    import importlib.metadata
    import importlib.util
    import types

    if "nvflare" not in sys.modules:
        spec = importlib.util.find_spec("nvflare")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("package 'nvflare' is not installed")
        pkg = types.ModuleType("nvflare")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        pkg.__spec__ = spec
        sys.modules["nvflare"] = pkg
    import nvflare.fuel.f3.cellnet.core_cell  # noqa: F401

    try:
        return importlib.metadata.version("nvflare")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv=None):
    args = parse_args(argv)
    if args.heartbeat_interval is not None:
        # read by NVFlare's HeartbeatMonitor via ConfigService (env NVFLARE_<NAME>)
        os.environ["NVFLARE_HEARTBEAT_INTERVAL"] = str(args.heartbeat_interval)
    level = logging.WARNING if args.verbose == 0 else (logging.INFO if args.verbose == 1 else logging.DEBUG)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.verbose == 0:
        # drivers whose optional deps (grpcio, aiohttp) are not installed are skipped with a warning: we use tcp only
        logging.getLogger("nvflare.fuel.f3.drivers.driver_manager").setLevel(logging.ERROR)

    peer = Peer(args)

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
