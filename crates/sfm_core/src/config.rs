//! Transport settings. One struct, NVFlare's names where NVFlare has the setting, documented defaults.

use std::time::Duration;

use crate::download::DownloadConfig;
use crate::frame::DEFAULT_MAX_FRAME_SIZE;
use crate::stream::{ReceiverConfig, SenderConfig};

/// Most bytes a frame adds to its payload: the prefix and headers, whose length field is 16 bits.
pub const FRAME_OVERHEAD: usize = crate::frame::PREFIX_LEN + u16::MAX as usize;

/// Settings of connections and cells. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CommConfig {
    /// Largest frame accepted or sent (`max_frame_size`, default 2 GiB - 2 MiB, NVFlare's limit). A prefix that
    /// announces more is refused before anything is allocated.
    pub max_frame_size: usize,
    /// Idle time after which a PING is sent on a connection (`heartbeat_interval`, default 60 s, as NVFlare).
    pub heartbeat_interval: Duration,
    /// Silence after which a peer is declared dead and its connection closed (`heartbeat_timeout`, default 180 s).
    /// Any received frame counts as life; PINGs are answered by the transport threads, never by Python code.
    pub heartbeat_timeout: Duration,
    /// Longest time one frame may take to be written (`streaming_send_timeout`, default 30 s). A write that makes
    /// no progress for that long closes the connection, since a half-written frame cannot be resumed.
    pub send_timeout: Duration,
    /// Time allowed for TCP connect plus the HELLO/READY handshake (`connect_timeout`, default 10 s).
    pub connect_timeout: Duration,
    /// First wait before a child reconnects to its parent (`reconnect_initial_backoff`, default 1 s); doubles on
    /// each failure up to `reconnect_max_backoff` (default 10 s).
    pub reconnect_initial_backoff: Duration,
    pub reconnect_max_backoff: Duration,
    /// Disable Nagle on TCP sockets (`tcp_no_delay`, default true).
    pub tcp_no_delay: bool,
    /// Most bytes the kernel may hold unsent on a connection (`tcp_notsent_lowat`, default 256 KiB; 0 leaves the
    /// kernel's default). Bulk data beyond it waits in the connection's own lanes, where control frames overtake it.
    pub tcp_notsent_lowat: usize,
    /// Ask for transparent huge pages on large receive buffers (`receive_huge_pages`, default false). Fewer page
    /// faults when memory is plentiful; on hosts that reclaim freed memory eagerly (ballooned VMs) a cold huge page
    /// costs more than it saves.
    pub receive_huge_pages: bool,
    /// Frames that may wait in a connection's control lane (`control_queue_frames`, default 1024).
    pub control_queue_frames: usize,
    /// Payload bytes that may wait in a connection's bulk lane (`bulk_queue_bytes`, default 64 MiB); senders wait
    /// (up to their deadline) for room.
    pub bulk_queue_bytes: usize,
    /// Most cells a message may cross before it is dropped as a routing loop (`max_hops`, default 16).
    pub max_hops: usize,
    /// Request and reply payloads larger than this travel as streams of chunks (`stream_threshold`, default
    /// 1 MiB), so a message's size is never capped by `max_frame_size` and bulk never blocks control traffic.
    pub stream_threshold: usize,
    /// How this cell sends streams: chunk size, window, ACK interval, ACK-progress watchdog, stall rule.
    pub stream_sender: SenderConfig,
    /// How this cell receives streams: size limit, read timeout, out-of-order tolerance.
    pub stream_receiver: ReceiverConfig,
    /// Close the connection a stalled stream was using (`sfm_close_stalled_connection`, default false, as
    /// NVFlare): its pending sends fail with a stall error and a child reconnects.
    pub close_stalled_connection: bool,
    /// Pull downloads served and made by this cell: chunk size, cache budget, transaction and request timeouts,
    /// retries.
    pub download: DownloadConfig,
}

impl Default for CommConfig {
    fn default() -> Self {
        CommConfig {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            heartbeat_interval: Duration::from_secs(60),
            heartbeat_timeout: Duration::from_secs(180),
            send_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            reconnect_initial_backoff: Duration::from_secs(1),
            reconnect_max_backoff: Duration::from_secs(10),
            tcp_no_delay: true,
            tcp_notsent_lowat: 256 * 1024,
            receive_huge_pages: false,
            control_queue_frames: 1024,
            bulk_queue_bytes: 64 * 1024 * 1024,
            max_hops: 16,
            stream_threshold: 1024 * 1024,
            stream_sender: SenderConfig::default(),
            stream_receiver: ReceiverConfig::default(),
            close_stalled_connection: false,
            download: DownloadConfig::default(),
        }
    }
}

/// A setting that does not make sense, with the name of the setting to change.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    pub name: &'static str,
    pub reason: String,
}

impl CommConfig {
    /// Checks relations between settings; returns the first problem found.
    /// Payloads above this size are streamed: the configured threshold, lowered if needed so that no single-frame
    /// message can exceed `max_frame_size`.
    pub fn effective_stream_threshold(&self) -> usize {
        self.stream_threshold
            .min(self.max_frame_size.saturating_sub(FRAME_OVERHEAD))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("heartbeat_timeout", self.heartbeat_timeout),
            ("send_timeout", self.send_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial_backoff", self.reconnect_initial_backoff),
            ("reconnect_max_backoff", self.reconnect_max_backoff),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError {
                    name,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(ConfigError {
                name: "heartbeat_timeout",
                reason: format!(
                    "{:?} must exceed heartbeat_interval ({:?}) or live peers would be declared dead between pings",
                    self.heartbeat_timeout, self.heartbeat_interval
                ),
            });
        }
        if self.reconnect_max_backoff < self.reconnect_initial_backoff {
            return Err(ConfigError {
                name: "reconnect_max_backoff",
                reason: "must be at least reconnect_initial_backoff".into(),
            });
        }
        if self.max_frame_size < crate::frame::PREFIX_LEN || self.max_frame_size > u32::MAX as usize {
            return Err(ConfigError {
                name: "max_frame_size",
                reason: format!("must be between {} and {} bytes", crate::frame::PREFIX_LEN, u32::MAX),
            });
        }
        self.stream_sender.validate()?;
        self.stream_receiver.validate()?;
        self.download.validate()?;
        if self.stream_sender.chunk_size.saturating_add(FRAME_OVERHEAD as u64) > self.max_frame_size as u64 {
            return Err(ConfigError {
                name: "streaming_chunk_size",
                reason: format!(
                    "a chunk plus its headers must fit in max_frame_size ({})",
                    self.max_frame_size
                ),
            });
        }
        if self.control_queue_frames == 0 || self.bulk_queue_bytes == 0 || self.max_hops == 0 {
            return Err(ConfigError {
                name: "control_queue_frames/bulk_queue_bytes/max_hops",
                reason: "must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        CommConfig::default().validate().unwrap();
    }

    #[test]
    fn timeout_not_above_interval_names_the_setting() {
        let cfg = CommConfig {
            heartbeat_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.name, "heartbeat_timeout");
    }
}
