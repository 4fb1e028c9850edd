//! The pull protocol on the wire, as NVFlare 2.7 speaks it.
//!
//! A receiver sends requests on channel [`CHANNEL`], topic [`TOPIC`]; each body is a FOBS-encoded dict: the LOBS
//! main-section header (marker, dot, size) followed by msgpack. Request `{"ref_id", "state"}` (no state on the
//! first request); reply `{"status": "ok" | "eof" | "error", "state", "data"}`. The state is what the owner wants
//! echoed back: `{"received_bytes": n}` for byte sources (NVFlare's file downloads), `{"start": s, "count": c}`
//! for item sources (NVFlare's cacheable objects; `data` is then a list of items).
//!
//! Our owners add `total_size` and `chunk_size` to byte replies; NVFlare ignores them, our receivers use them to
//! ask for several chunks at once.

use bytes::{BufMut, Bytes};

use crate::frame::{decode_value, encode_value, Value};

pub const CHANNEL: &str = "download_service__";
pub const TOPIC: &str = "download_service__download";

/// LOBS section header: marker (1 byte), dot (1 byte), size (8 bytes, big-endian).
const SECTION_HEADER_LEN: usize = 10;
const MARKER_MAIN: u8 = 100;

mod key {
    pub const REF_ID: &str = "ref_id";
    pub const STATE: &str = "state";
    pub const STATUS: &str = "status";
    pub const DATA: &str = "data";
    pub const TOTAL_SIZE: &str = "total_size";
    pub const CHUNK_SIZE: &str = "chunk_size";
    pub const RECEIVED_BYTES: &str = "received_bytes";
    pub const START: &str = "start";
    pub const COUNT: &str = "count";
    pub const CANCEL: &str = "cancel";
    pub const CANCEL_CAPABLE: &str = "cancel_capable";
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum WireError {
    #[error("download message is not FOBS-encoded: {0}")]
    NotFobs(String),
    #[error("download message carries out-of-band datums, which this peer does not accept; lower the owner's chunk size below 10 MiB")]
    Datums,
    #[error("malformed download message: {0}")]
    Malformed(String),
}

/// Where a receiver stands, as told by the state it echoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// First request: no state.
    Start,
    /// Byte sources: the receiver has the first `n` bytes.
    Offset(u64),
    /// Item sources: the receiver last got items `start .. start + count`.
    Items { start: u64, count: u64 },
}

impl Position {
    pub fn to_value(self) -> Option<Value> {
        let pair = |k: &str, v: u64| (Value::from(k), Value::from(v));
        match self {
            Position::Start => None,
            Position::Offset(n) => Some(Value::Map(vec![pair(key::RECEIVED_BYTES, n)])),
            Position::Items { start, count } => {
                Some(Value::Map(vec![pair(key::START, start), pair(key::COUNT, count)]))
            }
        }
    }

    fn from_value(state: Option<&Value>) -> Result<Position, WireError> {
        let Some(state) = state.filter(|s| !s.is_nil()) else {
            return Ok(Position::Start);
        };
        let number = |k: &str| -> Result<Option<u64>, WireError> {
            match state.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_i64()
                    .and_then(|n| u64::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| WireError::Malformed(format!("state {k:?} must be a non-negative integer"))),
            }
        };
        if let Some(n) = number(key::RECEIVED_BYTES)? {
            return Ok(Position::Offset(n));
        }
        match (number(key::START)?, number(key::COUNT)?) {
            (Some(start), Some(count)) => Ok(Position::Items { start, count }),
            (None, None) if state.as_map().is_some_and(|m| m.is_empty()) => Ok(Position::Start),
            _ => Err(WireError::Malformed(
                "state must hold received_bytes, or start and count".into(),
            )),
        }
    }
}

/// A request for the next piece of a source, or (`cancel`, sent without expecting a reply) word that the receiver
/// gave up, so the owner frees its state at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub ref_id: String,
    pub position: Position,
    pub cancel: bool,
}

impl Request {
    pub fn encode(&self) -> Bytes {
        let mut map = vec![(Value::from(key::REF_ID), Value::from(self.ref_id.as_str()))];
        if let Some(state) = self.position.to_value() {
            map.push((Value::from(key::STATE), state));
        }
        if self.cancel {
            map.push((Value::from(key::CANCEL), Value::Bool(true)));
        }
        fobs_encode(&Value::Map(map))
    }

    pub fn decode(payload: &Bytes) -> Result<Request, WireError> {
        let body = fobs_decode(payload)?;
        let ref_id = body
            .get(key::REF_ID)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| WireError::Malformed("missing ref_id".into()))?
            .to_string();
        let position = Position::from_value(body.get(key::STATE))?;
        let cancel = body.get(key::CANCEL).and_then(Value::as_bool).unwrap_or(false);
        Ok(Request {
            ref_id,
            position,
            cancel,
        })
    }
}

/// What a reply carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    Bytes(Bytes),
    Items(Vec<Bytes>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Bytes(b) => b.len(),
            Data::Items(items) => items.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// A piece of the source and the state to echo next.
    Data {
        data: Data,
        next: Position,
        /// Byte sources of ours tell their size and chunk size, so that receivers can pipeline.
        layout: Option<Layout>,
        /// The owner understands a receiver's cancel message (NVFlare 2.7.2 owners do not: to them it is a new
        /// request).
        cancel_capable: bool,
    },
    /// The receiver has everything.
    Eof,
    /// The owner could not produce the piece.
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub total_size: u64,
    pub chunk_size: u64,
}

impl Reply {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    /// Appends the encoded reply to `out`, so that an owner can reuse its buffers.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let status = |s: &str| (Value::from(key::STATUS), Value::from(s));
        let map = match self {
            Reply::Eof => vec![status("eof")],
            Reply::Error => vec![status("error")],
            Reply::Data {
                data,
                next,
                layout,
                cancel_capable,
            } => {
                let data = match data {
                    Data::Bytes(b) => Value::Bin(b.clone()),
                    Data::Items(items) => Value::Array(items.iter().cloned().map(Value::Bin).collect()),
                };
                let mut map = vec![status("ok")];
                if let Some(state) = next.to_value() {
                    map.push((Value::from(key::STATE), state));
                }
                map.push((Value::from(key::DATA), data));
                if let Some(layout) = layout {
                    map.push((Value::from(key::TOTAL_SIZE), Value::from(layout.total_size)));
                    map.push((Value::from(key::CHUNK_SIZE), Value::from(layout.chunk_size)));
                }
                if *cancel_capable {
                    map.push((Value::from(key::CANCEL_CAPABLE), Value::Bool(true)));
                }
                map
            }
        };
        fobs_encode_into(&Value::Map(map), out);
    }

    pub fn decode(payload: &Bytes) -> Result<Reply, WireError> {
        let body = fobs_decode(payload)?;
        match body.get(key::STATUS).and_then(Value::as_str) {
            Some("eof") => return Ok(Reply::Eof),
            Some("error") => return Ok(Reply::Error),
            Some("ok") => {}
            other => return Err(WireError::Malformed(format!("unknown status {other:?}"))),
        }
        let data = match body.get(key::DATA) {
            Some(Value::Bin(b)) => Data::Bytes(b.clone()),
            Some(Value::Array(items)) => Data::Items(
                items
                    .iter()
                    .map(|v| v.as_bytes().cloned())
                    .collect::<Option<_>>()
                    .ok_or_else(|| WireError::Malformed("items must be bytes".into()))?,
            ),
            _ => return Err(WireError::Malformed("data must be bytes or a list of bytes".into())),
        };
        let next = Position::from_value(body.get(key::STATE))?;
        let size = |k: &str| body.get(k).and_then(Value::as_i64).and_then(|n| u64::try_from(n).ok());
        let layout = match (size(key::TOTAL_SIZE), size(key::CHUNK_SIZE)) {
            (Some(total_size), Some(chunk_size)) if chunk_size > 0 => Some(Layout { total_size, chunk_size }),
            _ => None,
        };
        let cancel_capable = body.get(key::CANCEL_CAPABLE).and_then(Value::as_bool).unwrap_or(false);
        Ok(Reply::Data {
            data,
            next,
            layout,
            cancel_capable,
        })
    }
}

/// A FOBS body with one main section and no datums.
fn fobs_encode(value: &Value) -> Bytes {
    let mut out = Vec::new();
    fobs_encode_into(value, &mut out);
    Bytes::from(out)
}

/// Encodes in place after what `out` holds: a chunk's bytes are copied once.
fn fobs_encode_into(value: &Value, out: &mut Vec<u8>) {
    out.reserve(SECTION_HEADER_LEN + 64 + encoded_data_len(value));
    let start = out.len();
    out.put_u8(MARKER_MAIN);
    out.put_u8(0);
    out.put_u64(0);
    encode_value(value, out);
    let size = (out.len() - start - SECTION_HEADER_LEN) as u64;
    out[start + 2..start + SECTION_HEADER_LEN].copy_from_slice(&size.to_be_bytes());
}

/// Bytes of binary data in a value: what dominates its encoded size.
fn encoded_data_len(value: &Value) -> usize {
    match value {
        Value::Bin(b) => b.len(),
        Value::Array(items) => items.iter().map(encoded_data_len).sum(),
        Value::Map(pairs) => pairs.iter().map(|(_, v)| encoded_data_len(v)).sum(),
        _ => 0,
    }
}

fn fobs_decode(payload: &Bytes) -> Result<Value, WireError> {
    if payload.len() < SECTION_HEADER_LEN || payload[0] != MARKER_MAIN {
        return Err(WireError::NotFobs(format!(
            "expected a main section header, got {} bytes",
            payload.len()
        )));
    }
    let size = u64::from_be_bytes(payload[2..SECTION_HEADER_LEN].try_into().expect("8 bytes"));
    let end = (SECTION_HEADER_LEN as u64).saturating_add(size);
    if end > payload.len() as u64 {
        return Err(WireError::NotFobs(format!(
            "main section of {size} bytes overruns the {}-byte body",
            payload.len()
        )));
    }
    if end < payload.len() as u64 {
        return Err(WireError::Datums);
    }
    decode_value(&payload.slice(SECTION_HEADER_LEN..)).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_each_position() {
        for position in [
            Position::Start,
            Position::Offset(5 << 20),
            Position::Items { start: 3, count: 2 },
        ] {
            for cancel in [false, true] {
                let req = Request {
                    ref_id: "R1".into(),
                    position,
                    cancel,
                };
                assert_eq!(Request::decode(&req.encode()).unwrap(), req);
            }
        }
    }

    #[test]
    fn reply_round_trips() {
        let replies = [
            Reply::Eof,
            Reply::Error,
            Reply::Data {
                data: Data::Bytes(Bytes::from_static(b"abc")),
                next: Position::Offset(3),
                layout: Some(Layout {
                    total_size: 10,
                    chunk_size: 3,
                }),
                cancel_capable: true,
            },
            Reply::Data {
                data: Data::Items(vec![Bytes::from_static(b"a"), Bytes::new()]),
                next: Position::Items { start: 0, count: 2 },
                layout: None,
                cancel_capable: false,
            },
        ];
        for reply in replies {
            assert_eq!(Reply::decode(&reply.encode()).unwrap(), reply);
        }
    }

    #[test]
    fn request_matches_nvflare_bytes() {
        // fobs.dumps({"ref_id": "R1", "state": {"received_bytes": 5}}) from NVFlare 2.7.2.
        let mut expected = vec![100u8, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let body = b"\x82\xa6ref_id\xa2R1\xa5state\x81\xaereceived_bytes\x05";
        expected[9] = body.len() as u8;
        expected.extend_from_slice(body);
        let req = Request {
            ref_id: "R1".into(),
            position: Position::Offset(5),
            cancel: false,
        };
        assert_eq!(&req.encode()[..], &expected[..]);
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(matches!(
            Request::decode(&Bytes::from_static(b"xx")),
            Err(WireError::NotFobs(_))
        ));
        let mut with_datum = Request {
            ref_id: "R".into(),
            position: Position::Start,
            cancel: false,
        }
        .encode()
        .to_vec();
        with_datum.extend_from_slice(&[102, 0, 0, 0, 0, 0, 0, 0, 0, 16]);
        assert_eq!(Request::decode(&Bytes::from(with_datum)), Err(WireError::Datums));
        // A size that overflows when the header is added.
        let mut huge = vec![100u8, 0];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            Request::decode(&Bytes::from(huge)),
            Err(WireError::NotFobs(_))
        ));
        let bad_state = fobs_encode(&Value::Map(vec![
            (Value::from("ref_id"), Value::from("R")),
            (
                Value::from("state"),
                Value::Map(vec![(Value::from("received_bytes"), Value::from(-1i64))]),
            ),
        ]));
        assert!(matches!(Request::decode(&bad_state), Err(WireError::Malformed(_))));
    }
}
