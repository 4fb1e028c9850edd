//! NVFlare's stream wire format: the `sm__STREAM` channel, its topics and the `sm__*` headers of chunk, ACK and
//! error messages (nvflare/fuel/f3/streaming/stream_const.py, byte_streamer.py, byte_receiver.py).
//!
//! Each chunk is its own cell message (one SFM DATA frame): the app's headers, the `sm__*` headers below and the
//! chunk bytes as payload. ACKs and errors are cell messages without payload.
//!
//! | message | topic | headers |
//! |---|---|---|
//! | chunk | `sm__DATA` | `sm__ch sm__tp sm__sz sm__id sm__dt(1/2) sm__sq sm__os sm__rs sm__op sm__cs sm__ws` (+ `sm__ai` on seq 0) |
//! | ACK | `sm__ACK` | `sm__id sm__dt(3) sm__os(consumed offset) sm__sq(last seq)` |
//! | sender error | `sm__DATA` | `sm__id sm__dt(6) sm__os sm__em` |
//! | receiver error | `sm__ERROR` (and `sm__ACK` for legacy senders) | `sm__id sm__dt(6) sm__em sm__et sm__ch sm__tp` |
//!
//! Integers travel as msgpack ints, `sm__rs`/`sm__op` as bools, `sm__ch`/`sm__tp`/`sm__em`/`sm__et` as strings.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame::{Headers, Value};

use super::StreamError;

/// The cell channel all stream traffic uses.
pub const CHANNEL: &str = "sm__STREAM";
/// Topic of chunks, and of errors sent by the sender.
pub const TOPIC_DATA: &str = "sm__DATA";
/// Topic of ACKs (legacy receivers also put errors here).
pub const TOPIC_ACK: &str = "sm__ACK";
/// Topic of errors sent by the receiver.
pub const TOPIC_ERROR: &str = "sm__ERROR";

/// `sm__*` header names (NVFlare's `StreamHeaderKey`).
pub mod keys {
    pub const STREAM_ID: &str = "sm__id";
    pub const DATA_TYPE: &str = "sm__dt";
    /// Total stream size; 0 when empty or unknown.
    pub const SIZE: &str = "sm__sz";
    pub const SEQUENCE: &str = "sm__sq";
    pub const OFFSET: &str = "sm__os";
    pub const ERROR_MSG: &str = "sm__em";
    /// Error class name, e.g. `BlobSizeError`, `StreamError`.
    pub const ERROR_TYPE: &str = "sm__et";
    /// The app's channel and topic the stream is addressed to.
    pub const CHANNEL: &str = "sm__ch";
    pub const TOPIC: &str = "sm__tp";
    pub const RELIABLE: &str = "sm__rs";
    pub const OPTIONAL: &str = "sm__op";
    pub const CHUNK_SIZE: &str = "sm__cs";
    pub const WINDOW_SIZE: &str = "sm__ws";
    /// Sent on seq 0 only.
    pub const ACK_INTERVAL: &str = "sm__ai";
    /// Request id correlating a streamed reply (an app header, copied into receiver errors).
    pub const REQ_ID: &str = "sm__ri";
    pub const PAYLOAD_ENCODING: &str = "sm__pe";
}

/// A stream message's `sm__*` headers, written into a cell message's headers.
pub trait StreamHeaders {
    /// Adds this message's headers to `headers` (an app's headers, for chunks).
    fn write_to(&self, headers: &mut Headers);

    fn to_headers(&self) -> Headers {
        let mut headers = Headers::new();
        self.write_to(&mut headers);
        headers
    }
}

/// `sm__dt` values (RESUME=4 and RESUME_ACK=5 exist in NVFlare but are unused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamDataType {
    Chunk = 1,
    Final = 2,
    Ack = 3,
    Error = 6,
}

impl StreamDataType {
    pub fn as_i64(self) -> i64 {
        self as u8 as i64
    }

    pub fn from_i64(v: i64) -> Option<Self> {
        match v {
            1 => Some(Self::Chunk),
            2 => Some(Self::Final),
            3 => Some(Self::Ack),
            6 => Some(Self::Error),
            _ => None,
        }
    }
}

/// The data type of a chunk message: more to come, or the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChunkKind {
    Chunk,
    Final,
}

impl ChunkKind {
    pub fn data_type(self) -> StreamDataType {
        match self {
            ChunkKind::Chunk => StreamDataType::Chunk,
            ChunkKind::Final => StreamDataType::Final,
        }
    }
}

/// The `sm__*` headers of one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    pub stream_id: u64,
    pub data_type: ChunkKind,
    /// `sm__sz`: total stream size. NVFlare's `Stream` says 0 when unknown, so 0 means "empty or unknown" and the
    /// FINAL chunk is what ends a stream.
    pub total_size: u64,
    pub seq: u64,
    /// Byte offset of this chunk in the stream.
    pub offset: u64,
    pub channel: String,
    pub topic: String,
    /// `sm__cs`/`sm__ws`: NVFlare repeats them on every chunk; legacy senders omit them.
    pub chunk_size: Option<u64>,
    pub window_size: Option<u64>,
    /// `sm__ai`: only on seq 0.
    pub ack_interval: Option<u64>,
    pub reliable: bool,
    pub optional: bool,
}

impl ChunkHeader {
    pub fn is_final(&self) -> bool {
        self.data_type == ChunkKind::Final
    }

    /// Parses and validates the chunk headers of an `sm__DATA` message. An ERROR message (`sm__dt` = 6) is refused
    /// here; use [`DataMessage::from_headers`] to accept both.
    pub fn from_headers(h: &Headers) -> Result<Self, StreamError> {
        let stream_id = req_u64(h, keys::STREAM_ID)?;
        let data_type = match req_u64(h, keys::DATA_TYPE)? {
            1 => ChunkKind::Chunk,
            2 => ChunkKind::Final,
            other => {
                return Err(StreamError::Protocol(format!(
                    "stream {stream_id}: {} is {other}, expected 1 (CHUNK) or 2 (FINAL) on a chunk",
                    keys::DATA_TYPE
                )))
            }
        };
        Ok(ChunkHeader {
            stream_id,
            data_type,
            total_size: opt_u64(h, keys::SIZE)?.unwrap_or(0),
            seq: req_u64(h, keys::SEQUENCE)?,
            offset: req_u64(h, keys::OFFSET)?,
            channel: req_str(h, keys::CHANNEL)?.to_owned(),
            topic: req_str(h, keys::TOPIC)?.to_owned(),
            chunk_size: opt_positive(h, keys::CHUNK_SIZE)?,
            window_size: opt_positive(h, keys::WINDOW_SIZE)?,
            ack_interval: opt_positive(h, keys::ACK_INTERVAL)?,
            reliable: opt_bool(h, keys::RELIABLE)?.unwrap_or(false),
            optional: opt_bool(h, keys::OPTIONAL)?.unwrap_or(false),
        })
    }
}

impl StreamHeaders for ChunkHeader {
    /// Adds the headers to `headers` (normally the app message's own headers), in NVFlare's order.
    fn write_to(&self, headers: &mut Headers) {
        headers.insert(keys::CHANNEL, self.channel.as_str());
        headers.insert(keys::TOPIC, self.topic.as_str());
        headers.insert(keys::SIZE, self.total_size);
        headers.insert(keys::STREAM_ID, self.stream_id);
        headers.insert(keys::DATA_TYPE, self.data_type.data_type().as_i64());
        headers.insert(keys::SEQUENCE, self.seq);
        headers.insert(keys::OFFSET, self.offset);
        headers.insert(keys::RELIABLE, self.reliable);
        headers.insert(keys::OPTIONAL, self.optional);
        if let Some(cs) = self.chunk_size {
            headers.insert(keys::CHUNK_SIZE, cs);
        }
        if let Some(ws) = self.window_size {
            headers.insert(keys::WINDOW_SIZE, ws);
        }
        if let Some(ai) = self.ack_interval {
            headers.insert(keys::ACK_INTERVAL, ai);
        }
    }
}

/// The headers of an ACK: the receiver has consumed `offset` bytes; `seq` is the last chunk it took in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckHeader {
    pub stream_id: u64,
    pub offset: u64,
    /// Always sent by us and by NVFlare; optional on input for legacy receivers.
    pub seq: Option<u64>,
}

impl AckHeader {
    /// Parses an ACK; an ACK that carries an error is refused here, see [`AckMessage::from_headers`].
    pub fn from_headers(h: &Headers) -> Result<Self, StreamError> {
        let stream_id = req_u64(h, keys::STREAM_ID)?;
        if let Some(dt) = opt_u64(h, keys::DATA_TYPE)? {
            if dt != StreamDataType::Ack as u64 {
                return Err(StreamError::Protocol(format!(
                    "stream {stream_id}: {} is {dt} on an ACK, expected 3",
                    keys::DATA_TYPE
                )));
            }
        }
        // NVFlare's receiver starts its seq at -1; treat a negative seq as absent.
        let seq = match h.get(keys::SEQUENCE) {
            None | Some(Value::Nil) => None,
            Some(v) => match v.as_i64() {
                Some(i) if i < 0 => None,
                _ => Some(as_u64(keys::SEQUENCE, v)?),
            },
        };
        Ok(AckHeader {
            stream_id,
            offset: req_u64(h, keys::OFFSET)?,
            seq,
        })
    }
}

impl StreamHeaders for AckHeader {
    fn write_to(&self, headers: &mut Headers) {
        headers.insert(keys::STREAM_ID, self.stream_id);
        headers.insert(keys::DATA_TYPE, StreamDataType::Ack.as_i64());
        headers.insert(keys::OFFSET, self.offset);
        if let Some(seq) = self.seq {
            headers.insert(keys::SEQUENCE, seq);
        }
    }
}

/// The headers of a stream error, from either end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorHeader {
    pub stream_id: u64,
    pub message: String,
    /// `sm__et`: NVFlare's error class name; receivers send it, senders do not.
    pub error_type: Option<String>,
    /// `sm__os`: the sender's offset when it gave up (sender errors only).
    pub offset: Option<u64>,
    /// `sm__ch`/`sm__tp`: the app's channel and topic (receiver errors only).
    pub channel: Option<String>,
    pub topic: Option<String>,
}

impl ErrorHeader {
    /// An error notice for `err` on `stream_id`, typed the way NVFlare's handlers expect (`BlobSizeError` for a
    /// stream too large, `StreamError` otherwise).
    pub fn new(stream_id: u64, err: &StreamError) -> Self {
        ErrorHeader {
            stream_id,
            message: err.to_string(),
            error_type: Some(err.nvflare_error_type().to_owned()),
            offset: None,
            channel: None,
            topic: None,
        }
    }

    /// Parses an error notice. A missing `sm__em` gets NVFlare's default text.
    pub fn from_headers(h: &Headers) -> Result<Self, StreamError> {
        Ok(ErrorHeader {
            stream_id: req_u64(h, keys::STREAM_ID)?,
            message: opt_str(h, keys::ERROR_MSG)?
                .unwrap_or("stream rejected by receiver")
                .to_owned(),
            error_type: opt_str(h, keys::ERROR_TYPE)?.map(str::to_owned),
            offset: opt_u64(h, keys::OFFSET)?,
            channel: opt_str(h, keys::CHANNEL)?.map(str::to_owned),
            topic: opt_str(h, keys::TOPIC)?.map(str::to_owned),
        })
    }
}

impl StreamHeaders for ErrorHeader {
    fn write_to(&self, headers: &mut Headers) {
        headers.insert(keys::STREAM_ID, self.stream_id);
        headers.insert(keys::DATA_TYPE, StreamDataType::Error.as_i64());
        if let Some(os) = self.offset {
            headers.insert(keys::OFFSET, os);
        }
        headers.insert(keys::ERROR_MSG, self.message.as_str());
        if let Some(et) = &self.error_type {
            headers.insert(keys::ERROR_TYPE, et.as_str());
        }
        if let Some(ch) = &self.channel {
            headers.insert(keys::CHANNEL, ch.as_str());
        }
        if let Some(tp) = &self.topic {
            headers.insert(keys::TOPIC, tp.as_str());
        }
    }
}

/// An `sm__DATA` message: a chunk, or the sender's error notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataMessage {
    Chunk(ChunkHeader),
    Error(ErrorHeader),
}

impl DataMessage {
    pub fn from_headers(h: &Headers) -> Result<Self, StreamError> {
        if is_error(h)? {
            ErrorHeader::from_headers(h).map(DataMessage::Error)
        } else {
            ChunkHeader::from_headers(h).map(DataMessage::Chunk)
        }
    }
}

/// An `sm__ACK` message: an ACK, or (from legacy receivers) an error notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckMessage {
    Ack(AckHeader),
    Error(ErrorHeader),
}

impl AckMessage {
    pub fn from_headers(h: &Headers) -> Result<Self, StreamError> {
        if is_error(h)? {
            ErrorHeader::from_headers(h).map(AckMessage::Error)
        } else {
            AckHeader::from_headers(h).map(AckMessage::Ack)
        }
    }
}

/// NVFlare treats a message as an error when it carries `sm__em` or `sm__dt` = ERROR.
fn is_error(h: &Headers) -> Result<bool, StreamError> {
    let em = matches!(h.get(keys::ERROR_MSG), Some(v) if !v.is_nil());
    Ok(em || opt_u64(h, keys::DATA_TYPE)? == Some(StreamDataType::Error as u64))
}

/// Process-unique stream ids, as NVFlare's `gen_stream_id`: a base chosen by the caller (NVFlare: microseconds
/// since the epoch plus a random number below 10^6) plus a counter. Shared by reference across threads.
#[derive(Debug)]
pub struct StreamIdGen {
    next: AtomicU64,
}

impl StreamIdGen {
    pub fn new(base: u64) -> Self {
        StreamIdGen {
            next: AtomicU64::new(base),
        }
    }

    /// The next id. Ids stay below 2^63 (so they encode as msgpack ints Python reads back unchanged) by wrapping.
    pub fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)
    }
}

fn missing(key: &str) -> StreamError {
    StreamError::Protocol(format!("stream message is missing the {key} header"))
}

fn as_u64(key: &str, v: &Value) -> Result<u64, StreamError> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        Value::UInt(u) => Ok(*u),
        Value::Int(i) => Err(StreamError::Protocol(format!(
            "header {key} is {i}, expected a non-negative integer"
        ))),
        other => Err(StreamError::Protocol(format!(
            "header {key} is {other:?}, expected an integer"
        ))),
    }
}

fn opt_u64(h: &Headers, key: &str) -> Result<Option<u64>, StreamError> {
    match h.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => as_u64(key, v).map(Some),
    }
}

fn req_u64(h: &Headers, key: &str) -> Result<u64, StreamError> {
    opt_u64(h, key)?.ok_or_else(|| missing(key))
}

fn opt_positive(h: &Headers, key: &str) -> Result<Option<u64>, StreamError> {
    match opt_u64(h, key)? {
        Some(0) => Err(StreamError::Protocol(format!(
            "header {key} is 0, expected a positive size"
        ))),
        other => Ok(other),
    }
}

fn opt_str<'a>(h: &'a Headers, key: &str) -> Result<Option<&'a str>, StreamError> {
    match h.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(other) => Err(StreamError::Protocol(format!(
            "header {key} is {other:?}, expected a string"
        ))),
    }
}

fn req_str<'a>(h: &'a Headers, key: &str) -> Result<&'a str, StreamError> {
    opt_str(h, key)?.ok_or_else(|| missing(key))
}

fn opt_bool(h: &Headers, key: &str) -> Result<Option<bool>, StreamError> {
    match h.get(key) {
        None | Some(Value::Nil) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(StreamError::Protocol(format!(
            "header {key} is {other:?}, expected a bool"
        ))),
    }
}
