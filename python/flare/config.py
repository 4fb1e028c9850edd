"""Settings. One object per concern, NVFlare's names, documented defaults, environment overrides.

Every transport setting can be overridden by the environment as ``NVFLARE_<NAME>`` (NVFlare's convention, so
existing deployments keep working) or ``FLARE_<NAME>``; the latter wins. Explicit arguments win over both.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from flare import _sfm
from flare.errors import ConfigError

_CORE_DEFAULTS: dict[str, Any] = _sfm.default_comm_config()
_S = TypeVar("_S", bound="_EnvSettings")


class _EnvSettings:
    """``from_env`` and ``as_dict`` for a frozen settings dataclass; ``_concern`` names it in errors."""

    _concern: ClassVar[str]

    @classmethod
    def from_env(cls: type[_S], **overrides: Any) -> _S:
        """Defaults, then ``NVFLARE_<NAME>`` / ``FLARE_<NAME>`` from the environment, then ``overrides``."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        values: dict[str, Any] = {}
        for name, field in known.items():
            for prefix in ("NVFLARE_", "FLARE_"):
                raw = os.environ.get(prefix + name.upper())
                if raw is not None:
                    values[name] = _parse(name, raw, field.type)
        for name, value in overrides.items():
            if name not in known:
                raise ConfigError(f"unknown {cls._concern} setting {name!r}; known: {', '.join(sorted(known))}")
            values[name] = _checked(name, value, known[name].type)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class CommSettings(_EnvSettings):
    """Transport settings of one cell. Durations are in seconds.

    Attributes
    ----------
    max_frame_size:
        Largest frame sent or accepted; a prefix announcing more is refused before any allocation
        (default 2 GiB - 2 MiB, NVFlare's limit).
    heartbeat_interval:
        Idle time after which a connection sends a PING (default 60).
    heartbeat_timeout:
        Silence after which a peer is declared dead and its connection closed (default 180). PINGs are answered by
        transport threads, so Python code holding the GIL does not make its process look dead.
    streaming_send_timeout:
        Longest a frame write may make no progress before its connection is closed (default 30).
    connect_timeout:
        TCP connect plus handshake (default 10).
    reconnect_initial_backoff, reconnect_max_backoff:
        A child's wait before reconnecting to its parent, doubling from the first to the second (default 1 and 10).
    tcp_no_delay:
        Disable Nagle's algorithm (default True).
    tcp_notsent_lowat:
        Most bytes the kernel may hold unsent on a connection (default 256 KiB; 0: the kernel's default); bulk beyond
        it waits in the connection's lanes, where control frames overtake it.
    receive_huge_pages:
        Ask for transparent huge pages on large receive buffers (default False): fewer page faults where memory is
        plentiful, slower on hosts that reclaim freed memory eagerly.
    control_queue_frames:
        Frames that may wait in a connection's control lane (default 1024).
    bulk_queue_bytes:
        Payload bytes that may wait in a connection's bulk lane (default 64 MiB).
    max_hops:
        Cells a message may cross before it is dropped as a routing loop (default 16).
    stream_threshold:
        Request and reply payloads larger than this travel as streams of chunks (default 1 MiB); so does anything
        too large for one frame, on any channel.
    streaming_chunk_size:
        Bytes per stream chunk (default 1 MiB, as NVFlare).
    streaming_window_size:
        Bytes a stream may have sent and not yet acknowledged (default 16 MiB); bounds each side's in-flight memory.
    streaming_ack_interval:
        Consumed bytes after which a receiver acknowledges (default 4 MiB); window >= chunk + interval.
    streaming_ack_progress_timeout:
        Longest a sender waits for acknowledgements that do not advance before failing the stream with
        ``StallDetected`` (default 60). Only waiting time counts: a transfer that keeps moving never times out.
    streaming_stall_check_interval, sfm_send_stall_consecutive_checks:
        The stall rule: that many consecutive checks, one interval apart, without ACK progress fail the stream
        (defaults 30 and 3; 0 checks turns the rule off).
    sfm_close_stalled_connection:
        Close the connection of a stalled stream; its pending sends fail and a child reconnects (default False).
    streaming_read_timeout:
        Longest a receiver waits for the next chunk of an unfinished stream (default 300).
    streaming_max_blob_size:
        Largest stream accepted (default: no limit of our own).
    streaming_max_out_seq_chunks:
        Out-of-order chunks buffered per stream (default 0: derived from the sender's window, as NVFlare).
    download_chunk_size:
        Bytes per reply when this cell serves a file or buffer for download (default 5 MiB, NVFlare's file chunk).
    download_cache_budget:
        Most bytes of produced chunks an owner keeps for further receivers (default 256 MiB); past it the least
        recently used go, and are produced again if asked for.
    download_send_budget:
        Bytes of download replies an owner holds while sending them (default 64 MiB); further replies wait.
    download_cache_ttl:
        A cached chunk nobody asked for in this long is dropped (default 60).
    min_download_timeout:
        Idle time after which a download transaction nobody pulls from ends with status "timeout", unless the
        owner gave a timeout of its own (default 300).
    download_receiver_idle_timeout:
        A receiver that stopped pulling for this long is marked failed and its state on the owner freed (default
        300); a receiver whose connection drops is freed at once.
    streaming_per_request_timeout:
        Longest a receiver waits for one download reply (default 600, as NVFlare).
    download_max_retries:
        Retries of a download request that timed out or lost its connection (default 3).
    download_retry_backoff, download_retry_max_backoff:
        Wait before the first retry, doubling on each further one up to the maximum (defaults 2 and 60).
    download_max_inflight:
        Requests a receiver keeps in flight for one file or buffer (default 4).
    download_fault_drop_every:
        Test-only fault injection: an owner drops every n-th download reply (default 0: never).
    callback_pool_size:
        Threads that run this cell's Python callbacks (default 8).
    """

    max_frame_size: int = _CORE_DEFAULTS["max_frame_size"]
    heartbeat_interval: float = _CORE_DEFAULTS["heartbeat_interval"]
    heartbeat_timeout: float = _CORE_DEFAULTS["heartbeat_timeout"]
    streaming_send_timeout: float = _CORE_DEFAULTS["streaming_send_timeout"]
    connect_timeout: float = _CORE_DEFAULTS["connect_timeout"]
    reconnect_initial_backoff: float = _CORE_DEFAULTS["reconnect_initial_backoff"]
    reconnect_max_backoff: float = _CORE_DEFAULTS["reconnect_max_backoff"]
    tcp_no_delay: bool = _CORE_DEFAULTS["tcp_no_delay"]
    tcp_notsent_lowat: int = _CORE_DEFAULTS["tcp_notsent_lowat"]
    receive_huge_pages: bool = _CORE_DEFAULTS["receive_huge_pages"]
    control_queue_frames: int = _CORE_DEFAULTS["control_queue_frames"]
    bulk_queue_bytes: int = _CORE_DEFAULTS["bulk_queue_bytes"]
    max_hops: int = _CORE_DEFAULTS["max_hops"]
    stream_threshold: int = _CORE_DEFAULTS["stream_threshold"]
    streaming_chunk_size: int = _CORE_DEFAULTS["streaming_chunk_size"]
    streaming_window_size: int = _CORE_DEFAULTS["streaming_window_size"]
    streaming_ack_interval: int = _CORE_DEFAULTS["streaming_ack_interval"]
    streaming_ack_progress_timeout: float = _CORE_DEFAULTS["streaming_ack_progress_timeout"]
    streaming_stall_check_interval: float = _CORE_DEFAULTS["streaming_stall_check_interval"]
    sfm_send_stall_consecutive_checks: int = _CORE_DEFAULTS["sfm_send_stall_consecutive_checks"]
    sfm_close_stalled_connection: bool = _CORE_DEFAULTS["sfm_close_stalled_connection"]
    streaming_read_timeout: float = _CORE_DEFAULTS["streaming_read_timeout"]
    streaming_max_blob_size: int = _CORE_DEFAULTS["streaming_max_blob_size"]
    streaming_max_out_seq_chunks: int = _CORE_DEFAULTS["streaming_max_out_seq_chunks"]
    download_chunk_size: int = _CORE_DEFAULTS["download_chunk_size"]
    download_cache_budget: int = _CORE_DEFAULTS["download_cache_budget"]
    download_send_budget: int = _CORE_DEFAULTS["download_send_budget"]
    download_cache_ttl: float = _CORE_DEFAULTS["download_cache_ttl"]
    min_download_timeout: float = _CORE_DEFAULTS["min_download_timeout"]
    download_receiver_idle_timeout: float = _CORE_DEFAULTS["download_receiver_idle_timeout"]
    streaming_per_request_timeout: float = _CORE_DEFAULTS["streaming_per_request_timeout"]
    download_max_retries: int = _CORE_DEFAULTS["download_max_retries"]
    download_retry_backoff: float = _CORE_DEFAULTS["download_retry_backoff"]
    download_retry_max_backoff: float = _CORE_DEFAULTS["download_retry_max_backoff"]
    download_max_inflight: int = _CORE_DEFAULTS["download_max_inflight"]
    download_fault_drop_every: int = _CORE_DEFAULTS["download_fault_drop_every"]
    callback_pool_size: int = 8

    _concern: ClassVar[str] = "transport"


@dataclass(frozen=True)
class TensorSettings(_EnvSettings):
    """Settings of tensor downloads (``flare.tensors``). Durations are in seconds.

    Attributes
    ----------
    tensor_min_download_timeout:
        Idle time after which a transaction of torch tensors nobody pulls from ends, when its owner gave no timeout
        (default 300, NVFlare's name).
    np_min_download_timeout:
        The same for numpy arrays (default 300).
    tensor_download_chunk_size, np_download_chunk_size:
        Most bytes of items one download reply packs (default 2 MiB, NVFlare's). 0 or less turns the transparent
        download path (docs/fobs.md) off for the type, as in NVFlare: arrays and tensors then always travel inside
        the message.
    tensor_download_threshold, np_download_threshold:
        Bytes of torch tensors (numpy arrays) a cell message must hold for them to go by download rather than inside
        the message (default 10 MiB; 0 downloads any, as NVFlare does).
    tensor_streaming_per_request_timeout, np_streaming_per_request_timeout:
        A receiver's wait for each reply while it downloads what a message refers to (default 600).
    """

    _concern: ClassVar[str] = "tensor"

    tensor_min_download_timeout: float = 300.0
    np_min_download_timeout: float = 300.0
    tensor_download_chunk_size: int = 2 * 1024 * 1024
    np_download_chunk_size: int = 2 * 1024 * 1024
    tensor_download_threshold: int = 10 * 1024 * 1024
    np_download_threshold: int = 10 * 1024 * 1024
    tensor_streaming_per_request_timeout: float = 600.0
    np_streaming_per_request_timeout: float = 600.0


@dataclass(frozen=True)
class JobSettings(_EnvSettings):
    """Settings of the job runtime (``flare.runtime``): task exchange, liveness, resends. Durations are in seconds.
    Set per job with ``recipe.add_client_config({...})`` / ``add_server_config({...})`` or by environment.

    Attributes
    ----------
    get_task_timeout:
        A client's wait for the server's answer to one task request (default 300, NVFlare's
        ``communication_timeout``).
    task_fetch_interval:
        How long a client waits before asking again when the server has no task for it yet (default 0.5).
    submit_result_timeout:
        A client's wait for the server to accept one result (default 60; NVFlare's ``submit_task_result_timeout``
        is accepted as another name). The result's tensors are pulled afterwards, under the download timeouts.
    max_resends:
        How often a result is sent again after a timeout or a lost connection (default 3). Every attempt sends the
        same serialized bytes.
    heart_beat_interval:
        How often a client tells the server it is alive (default 10).
    dead_client_grace_period:
        How long the server waits for a client that went silent (no heartbeat, connection lost) before it drops the
        client from the job and gives its tasks to others (default 60).
    client_register_interval:
        Time between a client's attempts to register while the server is not reachable (default 2).
    registration_timeout:
        How long a client keeps trying to register before it gives up (default 300).
    wait_for_clients_timeout:
        How long the server waits at job start for ``min_clients`` clients (default 300).
    deploy_timeout:
        How long the server waits for a client to acknowledge a job's deployment (default 60). All clients are
        deployed to at once.
    strict_start_job_reply_check:
        If true, a client that does not acknowledge the deployment in ``deploy_timeout`` is left out of the job,
        with a warning naming it, and the job runs if ``min_clients`` (and every required site) are still there;
        if false (default, NVFlare's), it stays in the job.
    sync_client_jobs_require_previous_report:
        If true (default), a client that has not yet asked for a task of the job is not declared dead for being
        silent (a slow start is not a death); a lost connection still counts.
    """

    _concern: ClassVar[str] = "job"

    get_task_timeout: float = 300.0
    task_fetch_interval: float = 0.5
    submit_result_timeout: float = 60.0
    max_resends: int = 3
    heart_beat_interval: float = 10.0
    dead_client_grace_period: float = 60.0
    client_register_interval: float = 2.0
    registration_timeout: float = 300.0
    wait_for_clients_timeout: float = 300.0
    deploy_timeout: float = 60.0
    strict_start_job_reply_check: bool = False
    sync_client_jobs_require_previous_report: bool = True


# NVFlare's names for settings that are named otherwise here
_ALIASES = {"submit_task_result_timeout": "submit_result_timeout"}


@dataclass(frozen=True)
class RuntimeSettings:
    """The settings of one site's part in a job: from defaults, the environment and the job's configuration."""

    job: JobSettings
    comm: CommSettings
    tensor: TensorSettings

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None) -> RuntimeSettings:
        """Routes each key of ``config`` (``add_client_config`` / ``add_server_config`` entries) to the settings
        that own it; an unknown key raises ``ConfigError`` listing the known ones."""
        owners: list[type[_EnvSettings]] = [JobSettings, CommSettings, TensorSettings]
        known = {f.name: owner for owner in owners for f in fields(owner)}  # type: ignore[arg-type]
        per_owner: dict[type, dict[str, Any]] = {owner: {} for owner in owners}
        for key, value in (config or {}).items():
            name = _ALIASES.get(key, key)
            owner = known.get(name)
            if owner is None:
                raise ConfigError(f"unknown job setting {key!r}; known: {', '.join(sorted(known))}")
            per_owner[owner][name] = value
        return cls(
            job=JobSettings.from_env(**per_owner[JobSettings]),
            comm=CommSettings.from_env(**per_owner[CommSettings]),
            tensor=TensorSettings.from_env(**per_owner[TensorSettings]),
        )

    def inconsistencies(self) -> list[str]:
        """Timeouts that contradict each other, each naming both settings (warned about at job start)."""
        found = []
        pairs = [
            ("min_download_timeout", self.comm.min_download_timeout,
             "streaming_per_request_timeout", self.comm.streaming_per_request_timeout),
            ("np_min_download_timeout", self.tensor.np_min_download_timeout,
             "np_streaming_per_request_timeout", self.tensor.np_streaming_per_request_timeout),
            ("tensor_min_download_timeout", self.tensor.tensor_min_download_timeout,
             "tensor_streaming_per_request_timeout", self.tensor.tensor_streaming_per_request_timeout),
        ]
        defaults = {**CommSettings().as_dict(), **TensorSettings().as_dict()}
        for short_name, short, long_name, long in pairs:
            # NVFlare's own defaults are such a pair (300 and 600); warn only where a job or the environment chose
            if short < long and (short, long) != (defaults[short_name], defaults[long_name]):
                found.append(
                    f"{short_name}={short:g} is shorter than {long_name}={long:g}: an owner may drop a transaction "
                    f"while its receiver still waits for a reply; raise {short_name}"
                )
        job = self.job
        if job.get_task_timeout < job.task_fetch_interval:
            found.append(f"get_task_timeout={job.get_task_timeout:g} is shorter than "
                         f"task_fetch_interval={job.task_fetch_interval:g}")
        return found


def _checked(name: str, value: Any, kind: Any) -> Any:
    """``value`` if it has the setting's type (an int where a float is wanted is fine), else ``ConfigError``."""
    kind = kind if isinstance(kind, str) else kind.__name__
    if value is None and "None" in kind:
        return value
    base = kind.replace("| None", "").strip()
    expected = {"bool": (bool,), "int": (int,), "float": (int, float)}.get(base)
    if expected is None:
        return value
    if isinstance(value, expected) and (base == "bool" or not isinstance(value, bool)):
        return value
    raise ConfigError(f"setting {name} must be of type {base}, got {type(value).__name__} {value!r}")


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = kind if isinstance(kind, str) else kind.__name__
    try:
        if kind == "bool":
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return int(raw) if kind == "int" else float(raw)
    except ValueError:
        raise ConfigError(f"environment setting {name.upper()}={raw!r} is not a valid {kind}") from None


__all__ = ["CommSettings", "JobSettings", "RuntimeSettings", "TensorSettings"]
