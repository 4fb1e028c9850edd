//! The msgpack data model, as NVFlare's Python peers produce it.

use bytes::Bytes;

/// One msgpack value.
///
/// Integers have one canonical form so that decoded values compare equal to
/// what the sender meant: every integer that fits in `i64` is `Int`, and `UInt`
/// only holds values above `i64::MAX`. The decoder always produces that form;
/// a hand-built `UInt(5)` still encodes correctly but decodes back as `Int(5)`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    F32(f32),
    F64(f64),
    Str(String),
    /// A slice of the received buffer (no copy).
    Bin(Bytes),
    Array(Vec<Value>),
    /// Key/value pairs in wire order; keys may be any value, as msgpack allows.
    Map(Vec<(Value, Value)>),
    /// Extension type and data (a slice of the received buffer).
    Ext(i8, Bytes),
}

impl Value {
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer, if it is one and fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            Value::UInt(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    /// Any number as `f64`; Python peers send floats (e.g. `timestamp`) as
    /// float64 but whole numbers as integers, so both are accepted.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            Value::Int(v) => Some(*v as f64),
            Value::UInt(v) => Some(*v as f64),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Looks up a string key in a map (the HELLO/READY payloads are such maps).
    /// `None` if this is not a map or the key is absent; the last duplicate wins,
    /// as in a Python dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// Lets a bare integer literal (which defaults to `i32`) be used as a value.
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v.into())
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

/// Keeps the canonical form: `UInt` only above `i64::MAX`.
impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Value::UInt(v), Value::Int)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

impl From<Bytes> for Value {
    fn from(v: Bytes) -> Self {
        Value::Bin(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accessors() {
        assert_eq!(Value::from("x").as_str(), Some("x"));
        assert_eq!(Value::from(true).as_bool(), Some(true));
        assert_eq!(Value::from(7).as_i64(), Some(7));
        assert_eq!(Value::UInt(7).as_i64(), Some(7));
        assert_eq!(Value::UInt(u64::MAX).as_i64(), None);
        assert_eq!(Value::from(u64::MAX), Value::UInt(u64::MAX));
        assert_eq!(Value::from(5u64), Value::Int(5));
        assert_eq!(Value::from(2).as_f64(), Some(2.0));
        assert_eq!(Value::F32(0.5).as_f64(), Some(0.5));
        assert_eq!(Value::from(1.5).as_f64(), Some(1.5));
        assert_eq!(Value::Nil.as_str(), None);
        assert!(Value::Nil.is_nil());
        let arr = Value::from(vec![Value::Nil]);
        assert_eq!(arr.as_array(), Some(&[Value::Nil][..]));
        assert_eq!(
            Value::from(Bytes::from_static(b"b")).as_bytes().map(|b| &b[..]),
            Some(&b"b"[..])
        );
    }

    #[test]
    fn map_get_finds_last_string_key() {
        let m = Value::Map(vec![
            (Value::Int(1), Value::from("int key")),
            (Value::from("k"), Value::from(1)),
            (Value::from("k"), Value::from(2)),
        ]);
        assert_eq!(m.get("k"), Some(&Value::Int(2)));
        assert_eq!(m.get("missing"), None);
        assert_eq!(Value::Nil.get("k"), None);
    }
}
