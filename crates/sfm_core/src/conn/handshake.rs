//! HELLO / READY: the side that dialed sends HELLO with its endpoint name, the listener answers READY with its own.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::cell::fqcn;
use crate::frame::{decode_value, encode_value, Frame, FrameType, Headers, Value};

use super::ConnError;

/// Handshake key of the endpoint name (NVFlare's `HandshakeKeys.ENDPOINT_NAME`).
pub const ENDPOINT_NAME: &str = "endpoint_name";
/// Handshake key of the sender's wall clock (`HandshakeKeys.TIMESTAMP`).
pub const TIMESTAMP: &str = "timestamp";
/// A handshake carries a name and a few properties; anything larger is refused before it is decoded.
const MAX_HANDSHAKE_PAYLOAD: usize = 64 * 1024;
/// NVFlare sends handshake frames on stream 1.
const HANDSHAKE_STREAM_ID: u16 = 1;

/// Which side of the TCP connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Dialed the peer; sends HELLO first.
    Active,
    /// Accepted the connection; answers READY.
    Passive,
}

/// Who we are on a connection: our FQCN plus extra properties announced in the handshake.
#[derive(Clone, Debug, Default)]
pub struct LocalEndpoint {
    pub name: String,
    pub properties: Headers,
}

pub(super) fn handshake_frame(kind: FrameType, local: &LocalEndpoint) -> Frame {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut entries = vec![
        (Value::from(ENDPOINT_NAME), Value::from(local.name.as_str())),
        (Value::from(TIMESTAMP), Value::F64(now)),
    ];
    entries.extend(
        local
            .properties
            .iter()
            .map(|(k, v)| (Value::Str(k.to_string()), v.clone())),
    );
    let mut buf = BytesMut::new();
    encode_value(&Value::Map(entries), &mut buf);
    Frame::control(kind, HANDSHAKE_STREAM_ID, buf.freeze())
}

/// Reads the peer's name and properties from a HELLO or READY payload and checks the name.
pub(super) fn parse_peer(frame: &Frame, local_name: &str) -> Result<(String, Headers), ConnError> {
    let bad = |reason: String| ConnError::Handshake(reason);
    if frame.payload.len() > MAX_HANDSHAKE_PAYLOAD {
        return Err(bad(format!(
            "{:?} payload of {} bytes is too large",
            frame.frame_type,
            frame.payload.len()
        )));
    }
    let value = decode_value(&frame.payload).map_err(|e| bad(format!("bad {:?} payload: {e}", frame.frame_type)))?;
    let Value::Map(entries) = value else {
        return Err(bad(format!("{:?} payload is not a map", frame.frame_type)));
    };
    let mut props = Headers::new();
    for (k, v) in entries {
        if let Value::Str(k) = k {
            props.insert(k, v);
        }
    }
    let name = props
        .get_str(ENDPOINT_NAME)
        .ok_or_else(|| bad(format!("{:?} carries no {ENDPOINT_NAME}", frame.frame_type)))?
        .trim()
        .to_string();
    fqcn::validate(&name).map_err(|e| bad(format!("peer endpoint name {name:?} is invalid: {e}")))?;
    if name == local_name {
        return Err(bad(format!("peer uses our own name {name:?}")));
    }
    Ok((name, props))
}

pub(super) fn ping_payload() -> Bytes {
    // msgpack nil, as NVFlare sends for a PING or PONG without data.
    Bytes::from_static(&[0xc0])
}
