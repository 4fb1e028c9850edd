//! SFM frames as NVFlare lays them out on the wire.
//!
//! ```text
//! 0        4       6      7        8       10       12          14         16
//! +--------+-------+------+--------+-------+--------+-----------+----------+----------------+---------+
//! | length | h_len | type | rsvd=0 | flags | app_id | stream_id | sequence | headers (h_len)| payload |
//! +--------+-------+------+--------+-------+--------+-----------+----------+----------------+---------+
//!   u32 BE   u16     u8     u8       u16     u16      u16         u16        msgpack map
//! ```
//! `length` counts the whole frame, prefix included.

mod codec;
mod headers;
mod prefix;

pub use codec::FrameCodec;
pub use headers::{decode_value, encode_value, Headers, Value};
pub use prefix::Prefix;

use bytes::Bytes;

/// Length of the fixed prefix.
pub const PREFIX_LEN: usize = 16;
/// NVFlare's largest frame: 2 GiB - 2 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 2 * 1024 * 1024 * 1024 - 2 * 1024 * 1024;
/// Largest encoded header map accepted.
pub const MAX_HEADER_SIZE: usize = 1024 * 1024;

/// Frame type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    Data,
    Frag,
    Ack,
    Hello,
    Ready,
    Ping,
    Pong,
    /// A type byte this implementation does not know; the connection logs and skips it.
    Unknown(u8),
}

impl FrameType {
    pub fn as_u8(self) -> u8 {
        match self {
            FrameType::Data => 1,
            FrameType::Frag => 2,
            FrameType::Ack => 3,
            FrameType::Hello => 4,
            FrameType::Ready => 5,
            FrameType::Ping => 6,
            FrameType::Pong => 7,
            FrameType::Unknown(v) => v,
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => FrameType::Data,
            2 => FrameType::Frag,
            3 => FrameType::Ack,
            4 => FrameType::Hello,
            5 => FrameType::Ready,
            6 => FrameType::Ping,
            7 => FrameType::Pong,
            other => FrameType::Unknown(other),
        }
    }
}

/// Errors of the frame layer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame prefix needs {PREFIX_LEN} bytes, got {0}")]
    PrefixTooShort(usize),
    #[error("frame length {0} is shorter than the {PREFIX_LEN}-byte prefix")]
    LengthTooSmall(u32),
    #[error("frame of {length} bytes exceeds the maximum frame size of {max} bytes (setting max_frame_size)")]
    TooLarge { length: u64, max: usize },
    #[error("header length {header_len} does not fit in a frame of {length} bytes")]
    HeaderOverrun { header_len: usize, length: usize },
    #[error("encoded headers of {0} bytes exceed the {MAX_HEADER_SIZE}-byte limit")]
    HeadersTooLarge(usize),
    #[error("malformed headers: {0}")]
    BadHeaders(String),
    #[error("encoded headers of {0} bytes do not fit the 16-bit header length field")]
    HeadersTooLong(usize),
    #[error("frame body of {got} bytes does not match the {expected} bytes its prefix announces")]
    BodyLength { expected: usize, got: usize },
    #[error("malformed msgpack payload: {0}")]
    BadPayload(String),
}

/// One SFM frame. The payload is a slice of the received buffer (no copy).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    pub frame_type: FrameType,
    pub flags: u16,
    pub app_id: u16,
    pub stream_id: u16,
    pub sequence: u16,
    pub headers: Headers,
    pub payload: Bytes,
}
