"""Reusable helpers for flare's benchmarks: peers as separate OS processes, peak memory, the CPU that other processes
take meanwhile, MiB/s, tables, and the raw TCP reference every transport figure is compared with.

Two sides use this module:

* the **orchestrator** (a bench script) starts peers with :class:`Peers` (a context manager that kills whatever is
  still running when it exits), waits for each peer's ``ready`` event, sends it commands and collects its
  ``result``;
* a **peer** (the same bench script run with a role argument, or this module for the raw TCP peers) calls
  :func:`peer_setup` first, announces itself with :func:`emit` ``("ready", ...)``, answers commands read with
  :func:`read_command`, and measures its own memory with :class:`PeakMemory`.

The protocol is one JSON object per line: peers write events (``{"event": "ready", ...}``) on stdout, the
orchestrator writes commands (``{"cmd": "go", ...}``) on the peer's stdin. Other stdout lines are kept (the last
few are shown if the peer fails); stderr is kept the same way. Every wait has a timeout.

Units: sizes in MiB (2**20 bytes) and throughput in **MiB/s** (2**20 bytes per second), everywhere.

Run as a script, this module is the raw TCP peer: ``python harness.py tcp-server`` / ``tcp-client ...``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import platform
import queue
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MIB = 1 << 20
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_PARENT_PID_ENV = "FLARE_BENCH_PARENT_PID"


# --------------------------------------------------------------------------------------------------------------------
# Units and statistics


def mib(nbytes: float) -> float:
    """Bytes to MiB (2**20 bytes)."""
    return nbytes / MIB


def mib_per_s(nbytes: float, seconds: float) -> float:
    """Throughput in MiB/s (2**20 bytes per second); ``inf`` for a zero duration."""
    return nbytes / MIB / seconds if seconds > 0 else float("inf")


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def throughput_summary(nbytes_per_rep: int, seconds: Sequence[float]) -> dict[str, float]:
    """MiB/s over repetitions that each moved ``nbytes_per_rep``: median (the figure to quote), best and worst."""
    rates = [mib_per_s(nbytes_per_rep, s) for s in seconds]
    return {
        "reps": len(rates),
        "median_mib_s": statistics.median(rates),
        "best_mib_s": max(rates),
        "worst_mib_s": min(rates),
        "median_s": statistics.median(seconds),
    }


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Round trips per second (count / total time) and p50/p99/max latency in microseconds."""
    total = sum(seconds)
    return {
        "n": len(seconds),
        "per_s": len(seconds) / total if total > 0 else float("inf"),
        "p50_us": percentile(seconds, 50) * 1e6,
        "p99_us": percentile(seconds, 99) * 1e6,
        "max_us": max(seconds) * 1e6,
    }


# --------------------------------------------------------------------------------------------------------------------
# Memory


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/<pid>/status`` in KiB (``VmRSS``, ``VmHWM``, ...); ``{}`` if the process is gone.

    The orchestrator can read a child's ``VmHWM`` this way (``Peer.status()``), e.g. to check a peer that cannot
    report on its own.
    """
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.startswith("Vm") and value.strip().endswith("kB"):
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return out


def reset_peak_rss() -> bool:
    """Resets this process's ``VmHWM`` to its current ``VmRSS`` (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0).

    False where the kernel or a sandbox refuses; ``VmHWM`` then keeps the peak since the process started.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """A peer's own peak resident memory above its baseline.

    Call :meth:`baseline` after imports and set-up (cells started, connection made, payload buffers allocated),
    right before the measured work, and :meth:`report` at the end. The figure is

        peak above baseline = VmHWM at the end - VmRSS at the baseline

    Why this choice: ``VmHWM`` is the kernel's high-water mark of the resident set, so it catches a peak that lasted
    only microseconds (a 64 MiB frame buffer freed a moment later) without sampling. Subtracting the baseline
    *VmRSS* (what is resident when the work starts), not the baseline VmHWM, makes the figure the memory the work
    itself added: imports, the interpreter and pre-allocated application buffers are not counted, and neither is
    memory that was resident at the baseline and freed later (that can only lower RSS). The one way this could
    overstate is a start-up peak (imports) above anything the work reaches; to rule it out the high-water mark is
    reset to the current RSS at the baseline (:func:`reset_peak_rss`) where the kernel allows, which this report
    says in ``hwm_reset``. Another process's figure can be read from outside with :func:`proc_status`, but only the
    process itself knows when its baseline is, hence the self-report.
    """

    def __init__(self) -> None:
        self.hwm_reset = False
        self.baseline_rss_kib = 0
        self.baseline_hwm_kib = 0
        self.baseline_minflt = 0

    def baseline(self) -> dict[str, Any]:
        self.hwm_reset = reset_peak_rss()
        self.baseline_minflt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        s = proc_status()
        self.baseline_rss_kib, self.baseline_hwm_kib = s.get("VmRSS", 0), s.get("VmHWM", 0)
        return {"baseline_rss_mib": self.baseline_rss_kib / 1024, "hwm_reset": self.hwm_reset}

    def report(self) -> dict[str, Any]:
        s = proc_status()
        end_hwm = s.get("VmHWM", 0)
        return {
            "baseline_rss_mib": self.baseline_rss_kib / 1024,
            "baseline_hwm_mib": self.baseline_hwm_kib / 1024,
            "end_rss_mib": s.get("VmRSS", 0) / 1024,
            "end_hwm_mib": end_hwm / 1024,
            "peak_above_baseline_mib": (end_hwm - self.baseline_rss_kib) / 1024,
            "hwm_reset": self.hwm_reset,
            # page faults that mapped memory since the baseline: a fresh 64 MiB buffer costs 16,384 of them (4 KiB
            # pages) plus the kernel zeroing each page, which shows as time on the receiving side
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - self.baseline_minflt,
        }


# --------------------------------------------------------------------------------------------------------------------
# Other load on the machine


class OtherLoad:
    """CPU time that processes other than this bench and its peers used while it measured: the machine-wide busy
    time (user + nice + system, from ``/proc/stat``) minus this process's and its reaped children's. On a 2-CPU VM
    shared with other work, a run with a few tenths of a CPU-second of it is already suspect; it is reported next to
    the figures instead of being guessed at. Also counts hypervisor steal time."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        busy, steal = (v[0] + v[1] + v[2]) / self.tick, v[7] / self.tick
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            ru = resource.getrusage(who)
            own += ru.ru_utime + ru.ru_stime
        return busy, own, steal

    def wait_quiet(self, max_wait: float, window: float = 0.3, share: float = 0.05) -> float:
        """Waits (at most ``max_wait`` seconds) until other processes use less than ``share`` of one CPU over
        ``window`` seconds, so that a measurement does not start in the middle of someone else's burst; returns
        the seconds waited. Restarts the count."""
        started = time.monotonic()
        while True:
            self.take()
            time.sleep(window)
            if self.take()["other_cpu_s"] <= share * window or time.monotonic() - started >= max_wait:
                return time.monotonic() - started

    def take(self) -> dict[str, float]:
        """Since the previous call (or creation): ``other_cpu_s`` and ``steal_s``; restarts the count."""
        now = self._now()
        (b0, o0, s0), (b1, o1, s1) = self.start, now
        self.start = now
        return {"other_cpu_s": max(0.0, (b1 - b0) - (o1 - o0)), "steal_s": s1 - s0}


# --------------------------------------------------------------------------------------------------------------------
# Peer side


def peer_setup() -> None:
    """First call of every peer: dies with its orchestrator (``PR_SET_PDEATHSIG``), so no peer outlives a crashed or
    killed bench, and turns SIGTERM into a normal exit.

    The parent-death signal fires when the *thread* that started the peer ends: start peers from the main thread
    (or one that outlives them), as :class:`Peers` users here do."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    parent = os.environ.get(_PARENT_PID_ENV)
    if parent and os.getppid() != int(parent):  # the orchestrator died before prctl took effect
        os._exit(1)


def emit(event: str, **data: Any) -> None:
    """Writes one event line for the orchestrator (``{"event": event, **data}``)."""
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


_commands: queue.Queue[str] | None = None


def _stdin_lines() -> queue.Queue[str]:
    """Lines of stdin, read by a daemon thread ("" at end of input), so that waiting for one can time out."""
    global _commands
    if _commands is None:
        _commands = queue.Queue()

        def pump(q: queue.Queue[str]) -> None:
            for line in sys.stdin:
                q.put(line)
            q.put("")

        threading.Thread(target=pump, args=(_commands,), daemon=True, name="bench-commands").start()
    return _commands


def read_command(timeout: float | None = None) -> dict[str, Any] | None:
    """The next command from the orchestrator; None at end of input (the orchestrator closed our stdin or died).

    With ``timeout``, raises ``TimeoutError`` when no line comes in time.
    """
    try:
        line = _stdin_lines().get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no command within {timeout}s") from None
    if not line:
        return None
    return json.loads(line)


def serve_commands(handlers: dict[str, Any], *, idle_timeout: float = 600.0) -> None:
    """Answers commands until ``stop`` or end of input: ``handlers[cmd](**args)`` returns a dict sent back as the
    event named after the command (``{"event": cmd, ...}``). ``stop`` runs ``handlers["stop"]`` if present and sends
    its dict as the ``result`` event."""
    while True:
        command = read_command(timeout=idle_timeout)
        if command is None:
            return
        name = command.pop("cmd")
        if name == "stop":
            emit("result", **(handlers["stop"]() if "stop" in handlers else {}))
            return
        emit(name, **(handlers[name](**command) or {}))


# --------------------------------------------------------------------------------------------------------------------
# Orchestrator side


class PeerError(RuntimeError):
    pass


class Peer:
    """A running peer process; created by :meth:`Peers.start`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path):
        self.name = name
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
            cwd=cwd,
            start_new_session=True,  # a Ctrl-C meant for the bench reaches the peers only through us
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stdout_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        threading.Thread(target=self._read_stdout, daemon=True, name=f"{name}-stdout").start()
        threading.Thread(target=self._read_stderr, daemon=True, name=f"{name}-stderr").start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and "event" in obj:
                self._events.put(obj)
            else:
                self.stdout_tail.append(line.rstrip("\n"))
        self._events.put(None)  # end of output

    def _read_stderr(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def _failure(self, what: str) -> PeerError:
        rc = self.popen.poll()
        state = f"exited with {rc}" if rc is not None else "still running"
        tail = "\n".join(f"    {line}" for line in [*self.stdout_tail, *self.stderr_tail][-30:])
        return PeerError(f"peer {self.name!r} ({state}): {what}\n  last output:\n{tail}")

    def wait_event(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event`` (an ``error`` event, an exit or a timeout raise ``PeerError``)."""
        try:
            obj = self._events.get(timeout=timeout)
        except queue.Empty:
            raise self._failure(f"no {event!r} event within {timeout}s") from None
        if obj is None:
            self.popen.wait(timeout=5)
            raise self._failure(f"ended before its {event!r} event")
        if obj.get("event") != event:
            raise self._failure(f"sent {obj!r} while {event!r} was awaited")
        obj.pop("event")
        return obj

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait_event("ready", timeout)

    def send(self, cmd: str, **args: Any) -> None:
        """Sends a command line to the peer."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._failure(f"cannot take command {cmd!r}") from None

    def call(self, cmd: str, timeout: float, **args: Any) -> dict[str, Any]:
        """Sends ``cmd`` and waits for the event of the same name."""
        self.send(cmd, **args)
        return self.wait_event(cmd, timeout)

    def result(self, timeout: float = 60.0, *, stop: bool = False) -> dict[str, Any]:
        """Waits for the peer's ``result`` event (after sending ``stop`` if asked), then for its exit."""
        if stop:
            self.send("stop")
        out = self.wait_event("result", timeout)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=min(timeout, 10))
        return out

    def status(self) -> dict[str, int]:
        """``/proc/<pid>/status`` of the peer (KiB), read from outside: ``VmHWM`` is its peak since it started."""
        return proc_status(self.pid)

    def kill(self, grace: float = 3.0) -> None:
        """Closes stdin, then SIGTERM, then SIGKILL; each step waits at most ``grace`` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(Exception):
                assert self.popen.stdin is not None
                self.popen.stdin.close()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=grace)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[union-attr]


class Peers(contextlib.AbstractContextManager):
    """Starts peers and guarantees none outlives the ``with`` block (nor the orchestrator: see :func:`peer_setup`).

    >>> with Peers() as peers:
    ...     server = peers.start("server", "bench_cellnet.py", ["server"])
    ...     url = server.wait_ready()["url"]
    """

    def __init__(self, env: dict[str, str] | None = None):
        self.env = {**os.environ, **(env or {})}
        self.peers: list[Peer] = []

    def start(self, name: str, target: str, args: Iterable[str] = (), *, module: bool = False) -> Peer:
        """Starts ``sys.executable`` on ``target``: a script path (relative to ``benches/``) or, with ``module``, a
        module name (``python -m target``)."""
        argv = [sys.executable, "-u"]
        argv += ["-m", target] if module else [str(HERE / target) if not os.path.isabs(target) else target]
        argv += [str(a) for a in args]
        env = {**self.env, _PARENT_PID_ENV: str(os.getpid())}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
        peer = Peer(name, argv, env, REPO)
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in reversed(self.peers):
            peer.kill()
        self.peers.clear()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------------------------
# Tables and the machine


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: floats with ``digits`` decimals and thousands separators, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int | Sequence[int] = 1) -> str:
    """A GitHub-flavoured markdown table; numbers are right-aligned and formatted by :func:`fmt` with ``digits``
    decimals (one number for all columns, or one per column)."""
    rows = [list(r) for r in rows]
    per_col = [digits] * len(headers) if isinstance(digits, int) else list(digits)
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]
    cells = [[fmt(v, per_col[i]) for i, v in enumerate(r)] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))) + " |"

    sep = "| " + " | ".join(("-" * (w - 1) + ":") if numeric[i] else "-" * w for i, w in enumerate(widths)) + " |"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def machine_info() -> dict[str, Any]:
    """CPU count and model, kernel, memory, Python, and the flare build being measured."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 0
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    flare_version = ""
    with contextlib.suppress(Exception):
        import flare

        flare_version = flare.__version__
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "memory_gib": mem_kib / (1 << 20),
        "python": platform.python_version(),
        "flare": flare_version,
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


# --------------------------------------------------------------------------------------------------------------------
# Buffers


def pattern_bytes(nbytes: int) -> bytes:
    """``nbytes`` of a repeating 0..255 pattern, allocated and touched, without a transient second copy (so a
    multi-GiB payload costs its own size once, not twice)."""
    whole = bytes(range(256)) * (nbytes // 256)
    return whole + bytes(range(nbytes % 256)) if nbytes % 256 else whole


def touched_buffer(nbytes: int, step: int = 64 * MIB) -> bytearray:
    """A zeroed ``bytearray`` of ``nbytes`` whose pages are all resident now (written in ``step`` slices, so no
    temporary copy of the whole size is made)."""
    buf = bytearray(nbytes)
    view = memoryview(buf)
    zeros = bytes(min(step, nbytes))
    for off in range(0, nbytes, step):
        n = min(step, nbytes - off)
        view[off : off + n] = zeros if n == len(zeros) else zeros[:n]
    view.release()
    return buf


# --------------------------------------------------------------------------------------------------------------------
# Raw TCP reference


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


def _tcp_server(args: argparse.Namespace) -> None:
    """Accepts one connection; then, per round: receives ``--nbytes`` into a preallocated buffer and answers with 1
    byte, or (``--echo``) sends the same bytes back."""
    # Touched now, so the baseline includes it; before "ready", so that a large buffer's set-up (about a second for
    # 1 GiB) is not timed as part of the client's first round.
    buf = None if args.fresh else touched_buffer(args.nbytes)
    listener = socket.create_server(("127.0.0.1", 0))
    emit("ready", port=listener.getsockname()[1])
    listener.settimeout(args.timeout)
    conn, _ = listener.accept()
    conn.settimeout(args.timeout)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    mem = PeakMemory()
    mem.baseline()
    while True:
        # --fresh: a new, untouched buffer per message (calloc'd: the kernel maps and zeroes its pages as they fill),
        # as a receiver does that allocates each incoming message; freed before the next one.
        view = memoryview(bytearray(args.nbytes) if buf is None else buf)
        try:
            _recv_exact(conn, view[:1])
        except ConnectionError:
            break
        _recv_exact(conn, view[1:])
        conn.sendall(view if args.echo else b"k")
        del view
    emit("result", memory=mem.report())


def _tcp_client(args: argparse.Namespace) -> None:
    """Connects, waits for ``go``, then times ``--reps`` rounds: ``sendall`` of a preallocated buffer, then the
    1-byte answer (or, with ``--echo``, ``recv_into`` the same number of bytes)."""
    payload = pattern_bytes(args.nbytes)
    back = touched_buffer(args.nbytes if args.echo else 1)  # touched now, so the baseline includes it
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=args.timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    emit("ready")
    if read_command(timeout=args.timeout) is None:
        return
    mem = PeakMemory()
    mem.baseline()
    times = []
    for _ in range(args.warmup + args.reps):
        t0 = time.perf_counter()
        view = memoryview(bytearray(len(back)) if args.fresh else back)  # --fresh: see _tcp_server
        sock.sendall(payload)
        _recv_exact(sock, view)
        times.append(time.perf_counter() - t0)
        if args.echo and bytes(view[:4096]) != payload[:4096]:
            raise SystemExit("echo mismatch")
        del view
    sock.close()
    emit("result", seconds=times[args.warmup :], memory=mem.report())


def raw_tcp(
    nbytes: int, reps: int, *, echo: bool = False, fresh: bool = False, warmup: int = 1, timeout: float = 60.0
) -> dict[str, Any]:
    """Raw TCP loopback between two fresh processes (plain blocking sockets, TCP_NODELAY, preallocated buffers):
    ``reps`` timed rounds of ``nbytes`` client -> server, then a 1-byte answer (or the same ``nbytes`` back with
    ``echo``).

    Returns the per-round ``seconds`` plus :func:`throughput_summary` (MiB/s counting ``nbytes`` per round, or
    ``2 * nbytes`` with ``echo``) and :func:`latency_summary`, and each side's :class:`PeakMemory` report.

    With ``fresh`` each message is received into a newly allocated buffer (on the server, and on the client for
    the echoed bytes; allocated inside the timed round trip) instead of one reused buffer: the cost of a receiver
    that allocates per message (page faults and the kernel zeroing new pages).
    """
    common = ["--nbytes", nbytes, "--timeout", timeout] + (["--echo"] if echo else []) + (["--fresh"] if fresh else [])
    with Peers() as peers:
        server = peers.start("tcp-server", "harness.py", ["tcp-server", *common])
        port = server.wait_ready(timeout)["port"]
        client = peers.start("tcp-client", "harness.py", ["tcp-client", "--port", port, "--reps", reps, "--warmup", warmup, *common])
        client.wait_ready(timeout)
        client.send("go")
        res = client.result(timeout)
        srv = server.result(timeout)
    moved = nbytes * (2 if echo else 1)
    return {
        "nbytes": nbytes,
        "echo": echo,
        "seconds": res["seconds"],
        **throughput_summary(moved, res["seconds"]),
        "latency": latency_summary(res["seconds"]),
        "client_memory": res["memory"],
        "server_memory": srv["memory"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Raw TCP peers for the benchmarks (started by raw_tcp()).")
    parser.add_argument("role", choices=["tcp-server", "tcp-client"])
    parser.add_argument("--nbytes", type=int, required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="a new receive buffer per message")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    peer_setup()
    (_tcp_server if args.role == "tcp-server" else _tcp_client)(args)


if __name__ == "__main__":
    main()


def print_sections(sections: list[dict[str, Any]]) -> None:
    """Prints bench sections (title, table, notes) as run_all expects them on stdout."""
    for s in sections:
        print(f"\n### {s['title']}\n")
        print(markdown_table(s["headers"], s["rows"], digits=s.get("digits", 1)))
        for note in s["notes"]:
            print(f"\n{note}")


def bench_logger(name: str) -> Callable[[str], None]:
    """A progress logger for a bench: stderr lines stamped with seconds since the bench started."""
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{name} {time.monotonic() - started:5.1f}s] {msg}", file=sys.stderr, flush=True)

    return log


def write_report(path: Path, bench: str, title: str, elapsed: float, sections: list, results: Any, **extra: Any) -> None:
    """Writes a bench's machine-readable report (what run_all reads back)."""
    doc = {"bench": bench, "title": title, "command": f"benches/{bench}.py " + " ".join(sys.argv[1:]), **extra,
           "elapsed_s": elapsed, "sections": sections, "results": results}
    path.write_text(json.dumps(doc, indent=1))


def join_cell(name: str, parent_url: str, target: str, timeout: float, settings: Any = None) -> Any:
    """A started cell connected to ``parent_url`` that can reach ``target``; exits the peer if it cannot in time."""
    from flare.cellnet import Cell

    cell = Cell(name, parent_url=parent_url, settings=settings).start()
    if not cell.wait_for_peer(target, timeout=timeout):
        raise SystemExit(f"{target!r} not reachable within {timeout}s")
    return cell
