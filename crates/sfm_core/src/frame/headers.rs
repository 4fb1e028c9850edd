//! Frame headers: the msgpack map NVFlare sends between prefix and payload.

mod msgpack;
mod value;

pub use msgpack::encode_value;
pub use value::Value;

use bytes::{BufMut, Bytes, BytesMut};

use super::FrameError;

/// Decodes one msgpack value that must span all of `src`, e.g. the payload of
/// HELLO/READY (a map) or PING/PONG (a map or nil). `Bin` and `Ext` data are
/// slices of `src`.
///
/// Memory use is bounded by the input: at most one `Value` (a few dozen bytes)
/// per input byte, so callers decoding untrusted payloads should cap `src.len()`.
pub fn decode_value(src: &Bytes) -> Result<Value, FrameError> {
    msgpack::decode_exact(src).map_err(|e| FrameError::BadPayload(e.to_string()))
}

/// String-keyed headers in insertion order.
///
/// A frame carries about fifteen of them, so a vector with linear lookup beats
/// a hash map; keeping the order makes our encoding match what a Python sender
/// (dicts keep insertion order) would produce.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    entries: Vec<(String, Value)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// Sets `key`, keeping its position if it is already present (as a Python
    /// dict does) and returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                self.entries.push((key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(pos).1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The msgpack map, or no bytes at all for no headers: NVFlare sends
    /// `header_len = 0` rather than an empty map.
    ///
    /// # Panics
    /// Under the same impossible sizes as [`encode_value`].
    pub fn encode(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode_into(&mut dst);
        dst.freeze()
    }

    /// Like [`Headers::encode`], appending to `dst`; lets the frame encoder
    /// write headers straight after the prefix without an extra copy.
    pub fn encode_into(&self, dst: &mut impl BufMut) {
        if self.is_empty() {
            return;
        }
        msgpack::encode_map_len(self.entries.len(), dst);
        for (k, v) in &self.entries {
            msgpack::encode_str(k, dst);
            encode_value(v, dst);
        }
    }

    /// Parses encoded headers; empty input means no headers. Anything but one
    /// map with string keys, exactly filling `src`, is [`FrameError::BadHeaders`].
    /// A repeated key keeps its first position and its last value, as in Python.
    pub fn decode(src: Bytes) -> Result<Headers, FrameError> {
        if src.is_empty() {
            return Ok(Headers::new());
        }
        let value = msgpack::decode_exact(&src).map_err(|e| FrameError::BadHeaders(e.to_string()))?;
        let Value::Map(pairs) = value else {
            return Err(FrameError::BadHeaders(format!(
                "expected a map at the top level, got {}",
                kind_name(&value)
            )));
        };
        let mut headers = Headers::new();
        for (k, v) in pairs {
            let Value::Str(key) = k else {
                return Err(FrameError::BadHeaders(format!(
                    "header key is {}, not a string",
                    kind_name(&k)
                )));
            };
            headers.insert(key, v);
        }
        Ok(headers)
    }
}

impl FromIterator<(String, Value)> for Headers {
    /// Collects with [`Headers::insert`] semantics, so later duplicates win.
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        for (k, v) in iter {
            headers.insert(k, v);
        }
        headers
    }
}

/// Names a value's msgpack type for error messages.
fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::UInt(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bin(_) => "binary",
        Value::Array(_) => "an array",
        Value::Map(_) => "a map",
        Value::Ext(..) => "an extension",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        let mut h = Headers::new();
        h.insert("a", 1);
        h.insert("b", "x");
        h.insert("c", true);
        h
    }

    #[test]
    fn map_operations_keep_insertion_order() {
        let mut h = sample();
        assert_eq!(h.len(), 3);
        assert_eq!(h.get_str("b"), Some("x"));
        assert_eq!(h.get_str("a"), None);
        assert_eq!(h.insert("a", 2), Some(Value::Int(1)));
        let keys: Vec<_> = h.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(h.remove("b"), Some(Value::from("x")));
        assert_eq!(h.remove("b"), None);
        assert!(!h.contains_key("b"));
        assert!(h.contains_key("c"));
        let collected: Headers = [("k".to_owned(), Value::Nil), ("k".to_owned(), Value::Int(3))]
            .into_iter()
            .collect();
        assert_eq!(collected.len(), 1);
        assert_eq!(collected.get("k"), Some(&Value::Int(3)));
    }

    #[test]
    fn encodes_like_python_and_round_trips() {
        let mut h = Headers::new();
        h.insert("a", 1);
        assert_eq!(&h.encode()[..], [0x81, 0xa1, 0x61, 0x01]);
        let h = sample();
        assert_eq!(Headers::decode(h.encode()), Ok(h));
    }

    #[test]
    fn empty_headers_are_zero_bytes() {
        assert!(Headers::new().encode().is_empty());
        assert_eq!(Headers::decode(Bytes::new()), Ok(Headers::new()));
        // An explicit empty map is accepted too.
        assert_eq!(Headers::decode(Bytes::from_static(&[0x80])), Ok(Headers::new()));
    }

    #[test]
    fn duplicate_keys_keep_first_position_last_value() {
        let src = Bytes::from_static(&[0x83, 0xa1, b'k', 1, 0xa1, b'j', 2, 0xa1, b'k', 3]);
        let h = Headers::decode(src).unwrap();
        let pairs: Vec<_> = h.iter().map(|(k, v)| (k, v.as_i64())).collect();
        assert_eq!(pairs, [("k", Some(3)), ("j", Some(2))]);
    }

    #[test]
    fn malformed_headers_are_refused() {
        let bad = |bytes: &'static [u8]| match Headers::decode(Bytes::from_static(bytes)) {
            Err(FrameError::BadHeaders(msg)) => msg,
            other => panic!("expected BadHeaders for {bytes:02x?}, got {other:?}"),
        };
        assert!(bad(&[0x90]).contains("expected a map"));
        assert!(bad(&[0xc0]).contains("nil"));
        assert!(bad(&[0x81, 0x01, 0x02]).contains("not a string"));
        assert!(bad(&[0x81, 0xa1, b'a']).contains("truncated"));
        assert!(bad(&[0x80, 0x00]).contains("trailing"));
    }

    #[test]
    fn decode_value_reports_bad_payload() {
        assert_eq!(decode_value(&Bytes::from_static(&[0xc0])), Ok(Value::Nil));
        assert!(matches!(decode_value(&Bytes::new()), Err(FrameError::BadPayload(_))));
    }
}
