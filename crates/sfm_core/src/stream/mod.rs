//! Push streams, sans-IO: the state of one outgoing stream ([`StreamSender`]) and one incoming stream
//! ([`StreamReceiver`]), fed with events and an explicit `now`, returning what to send and the next deadline.
//!
//! Nothing here does IO, takes a lock or reads a clock; the cell layer drives these machines from its tasks (see
//! ARCHITECTURE.md, "Layers", and STYLE.md, quinn-proto). The wire is NVFlare's chunk protocol ([`wire`]).
//!
//! One stream, as the driver sees it:
//! ```text
//! sender                                                     receiver
//! ------                                                     --------
//! StreamSender::new(id, ch, tp, total, cfg, now)
//! loop: next_chunk() -> plan  (None: window full / done)
//!       commit_chunk(plan, now) -> ChunkHeader
//!       send sm__DATA(header, bytes[plan.offset..+len]) ───►  first chunk of (origin, id): StreamReceiver::new(hdr, cfg, now)
//!                                                            handle_chunk(hdr, payload, now) -> [Delivery]
//!                                                            caller stores each delivery, on_consumed(end, now)
//! handle_ack(offset, now)                      ◄─── sm__ACK   poll_ack() -> AckHeader
//! poll_timeout()/handle_timeout(now): ACK watchdog           poll_timeout()/handle_timeout(now): read timeout
//! poll_error() -> ErrorHeader ──── sm__DATA dt=6 ──────────►  handle_error(msg)
//! handle_error(msg)            ◄─── sm__ERROR (+ sm__ACK) ─── poll_error() -> ErrorHeader
//! ```

mod receiver;
mod sender;
mod window;
pub mod wire;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use receiver::{required_out_of_order, Delivery, ReceiverConfig, ReceiverState, StreamReceiver};
pub use sender::{ChunkPlan, SenderConfig, SenderState, StreamSender};
pub use window::Window;
pub use wire::{
    AckHeader, AckMessage, ChunkHeader, ChunkKind, DataMessage, ErrorHeader, StreamDataType, StreamHeaders, StreamIdGen,
};

use crate::config::ConfigError;

/// Errors of the stream layer. Every message names the setting to change where one would help.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The sender waited for ACKs and none advanced for `timeout`.
    #[error(
        "stream {stream_id}: no ACK progress for {idle:?} while waiting for the receiver ({acked} of {sent} sent \
         bytes acknowledged); the receiver stopped consuming or the link stalled. If the receiver is legitimately \
         slow, raise streaming_ack_progress_timeout (now {timeout:?}) or lower streaming_ack_interval"
    )]
    AckStalled {
        stream_id: u64,
        idle: Duration,
        timeout: Duration,
        acked: u64,
        sent: u64,
    },
    /// `checks` consecutive stall checks, `interval` apart, saw the sender waiting with no ACK progress.
    #[error(
        "stream {stream_id}: stall detected, {checks} consecutive checks {interval:?} apart saw no ACK progress \
         ({acked} of {sent} sent bytes acknowledged); tune sfm_send_stall_consecutive_checks or \
         streaming_stall_check_interval if the receiver is legitimately slow"
    )]
    Stalled {
        stream_id: u64,
        checks: u32,
        interval: Duration,
        acked: u64,
        sent: u64,
    },
    /// The receiver waited for data for `timeout` without any arriving.
    #[error(
        "stream {stream_id}: read timed out, no data for {timeout:?} after {received} bytes; the sender stopped or \
         the link stalled. Raise streaming_read_timeout if the sender is legitimately slow"
    )]
    ReadTimeout {
        stream_id: u64,
        timeout: Duration,
        received: u64,
    },
    /// The stream was aborted, by the other end (`by_peer`) or by this one.
    #[error("stream aborted by {}: {message}", if *by_peer { "the peer" } else { "this side" })]
    Aborted { by_peer: bool, message: String },
    /// The peer broke the protocol: bad or missing headers, data beyond the stream's size, a wrong offset, too many
    /// out-of-order chunks, an ACK beyond what was sent.
    #[error("stream protocol error: {0}")]
    Protocol(String),
    /// The stream is larger than this side accepts.
    #[error("stream of {size} bytes exceeds the limit of {max} bytes; raise {setting} to accept it")]
    TooLarge { size: u64, max: u64, setting: &'static str },
    /// The caller asked for something the stream's state does not allow (a bug in the driver, not the peer).
    #[error("stream {stream_id}: cannot {operation} in state {state}")]
    InvalidState {
        stream_id: u64,
        operation: &'static str,
        state: &'static str,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl StreamError {
    /// NVFlare's error class name for `sm__et`; its sender maps `BlobSizeError` by name.
    pub fn nvflare_error_type(&self) -> &'static str {
        match self {
            StreamError::TooLarge { .. } => "BlobSizeError",
            _ => "StreamError",
        }
    }

    /// A stall of the ACK flow (either rule); with `sfm_close_stalled_connection` the driver closes the connection.
    pub fn is_stall(&self) -> bool {
        matches!(self, StreamError::AckStalled { .. } | StreamError::Stalled { .. })
    }
}

/// Checks a size setting is positive.
pub(crate) fn positive(name: &'static str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError {
            name,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(())
}

/// Checks a duration setting is positive.
pub(crate) fn positive_duration(name: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError {
            name,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(())
}
