//! A small msgpack codec, written here rather than taken from a crate so that
//! decoding hostile input has bounds we can see: allocation is capped by the
//! bytes actually present, nesting is capped by [`MAX_DEPTH`], and every
//! truncation is an error rather than a panic.
//!
//! Encoding picks the same (smallest) formats as Python's `msgpack.packb` with
//! `use_bin_type=True`, so our headers are byte-identical to NVFlare's.

use std::ops::Range;

use bytes::{BufMut, Bytes};

use super::Value;

/// Deepest container nesting the decoder accepts. Headers are flat maps in
/// practice; the limit only keeps the recursive decoder off the stack's end.
const MAX_DEPTH: usize = 64;

/// Why a msgpack buffer was refused. Turned into a [`super::super::FrameError`]
/// at the edge, where it is known whether it was headers or payload.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub(super) enum MsgpackError {
    #[error("truncated at byte {offset}: {needed} more bytes needed")]
    Truncated { offset: usize, needed: usize },
    #[error("containers nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("string at byte {0} is not valid UTF-8")]
    InvalidUtf8(usize),
    #[error("reserved marker 0xc1 at byte {0}")]
    ReservedMarker(usize),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Appends the msgpack encoding of `v` to `dst`.
///
/// # Panics
/// If a string, binary, extension, array or map holds 2^32 or more
/// bytes/items: msgpack cannot represent it. Such values never come from the
/// decoder, only from local code.
pub fn encode_value(v: &Value, dst: &mut impl BufMut) {
    match v {
        Value::Nil => dst.put_u8(0xc0),
        Value::Bool(false) => dst.put_u8(0xc2),
        Value::Bool(true) => dst.put_u8(0xc3),
        Value::Int(i) => match u64::try_from(*i) {
            Ok(u) => put_uint(u, dst),
            Err(_) => put_negative(*i, dst),
        },
        Value::UInt(u) => put_uint(*u, dst),
        Value::F32(f) => {
            dst.put_u8(0xca);
            dst.put_f32(*f);
        }
        Value::F64(f) => {
            dst.put_u8(0xcb);
            dst.put_f64(*f);
        }
        Value::Str(s) => encode_str(s, dst),
        Value::Bin(b) => {
            put_len(b.len(), None, Some(0xc4), [0xc5, 0xc6], dst);
            dst.put_slice(b);
        }
        Value::Array(items) => {
            put_len(items.len(), Some((0x90, 15)), None, [0xdc, 0xdd], dst);
            items.iter().for_each(|item| encode_value(item, dst));
        }
        Value::Map(pairs) => {
            encode_map_len(pairs.len(), dst);
            for (k, v) in pairs {
                encode_value(k, dst);
                encode_value(v, dst);
            }
        }
        Value::Ext(ty, data) => {
            match data.len() {
                1 => dst.put_u8(0xd4),
                2 => dst.put_u8(0xd5),
                4 => dst.put_u8(0xd6),
                8 => dst.put_u8(0xd7),
                16 => dst.put_u8(0xd8),
                n => put_len(n, None, Some(0xc7), [0xc8, 0xc9], dst),
            }
            dst.put_i8(*ty);
            dst.put_slice(data);
        }
    }
}

/// A string; also used for header keys, which are kept as `String`, not `Value`.
pub(super) fn encode_str(s: &str, dst: &mut impl BufMut) {
    put_len(s.len(), Some((0xa0, 31)), Some(0xd9), [0xda, 0xdb], dst);
    dst.put_slice(s.as_bytes());
}

/// A map header for `len` pairs; the pairs follow.
pub(super) fn encode_map_len(len: usize, dst: &mut impl BufMut) {
    put_len(len, Some((0x80, 15)), None, [0xde, 0xdf], dst);
}

fn put_uint(u: u64, dst: &mut impl BufMut) {
    if u < 0x80 {
        dst.put_u8(u as u8);
    } else if let Ok(v) = u8::try_from(u) {
        dst.put_u8(0xcc);
        dst.put_u8(v);
    } else if let Ok(v) = u16::try_from(u) {
        dst.put_u8(0xcd);
        dst.put_u16(v);
    } else if let Ok(v) = u32::try_from(u) {
        dst.put_u8(0xce);
        dst.put_u32(v);
    } else {
        dst.put_u8(0xcf);
        dst.put_u64(u);
    }
}

/// `i` is negative here; non-negative values use the unsigned formats, as in Python.
fn put_negative(i: i64, dst: &mut impl BufMut) {
    if i >= -32 {
        dst.put_i8(i as i8);
    } else if let Ok(v) = i8::try_from(i) {
        dst.put_u8(0xd0);
        dst.put_i8(v);
    } else if let Ok(v) = i16::try_from(i) {
        dst.put_u8(0xd1);
        dst.put_i16(v);
    } else if let Ok(v) = i32::try_from(i) {
        dst.put_u8(0xd2);
        dst.put_i32(v);
    } else {
        dst.put_u8(0xd3);
        dst.put_i64(i);
    }
}

/// Writes a length header: the fix form `(base, max)` if it has one and `len`
/// fits, then the 8-bit form if the type has one, then 16 and 32 bits.
fn put_len(len: usize, fix: Option<(u8, usize)>, m8: Option<u8>, [m16, m32]: [u8; 2], dst: &mut impl BufMut) {
    match (fix, m8) {
        (Some((base, max)), _) if len <= max => dst.put_u8(base | len as u8),
        (_, Some(m8)) if len <= 0xff => {
            dst.put_u8(m8);
            dst.put_u8(len as u8);
        }
        _ if len <= 0xffff => {
            dst.put_u8(m16);
            dst.put_u16(len as u16);
        }
        _ => {
            let len = u32::try_from(len).expect("msgpack lengths are limited to 2^32 - 1");
            dst.put_u8(m32);
            dst.put_u32(len);
        }
    }
}

/// Decodes exactly one value spanning all of `src`.
pub(super) fn decode_exact(src: &Bytes) -> Result<Value, MsgpackError> {
    let mut reader = Reader { src, pos: 0 };
    let value = reader.value(0)?;
    match reader.remaining() {
        0 => Ok(value),
        n => Err(MsgpackError::Trailing(n)),
    }
}

struct Reader<'a> {
    src: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.src.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>, MsgpackError> {
        if n > self.remaining() {
            return Err(MsgpackError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(start..self.pos)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MsgpackError> {
        let range = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(&self.src[range]);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, MsgpackError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, MsgpackError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, MsgpackError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, MsgpackError> {
        self.array().map(u64::from_be_bytes)
    }

    /// Reads a big-endian length of `width` bytes (1, 2 or 4).
    fn len(&mut self, width: usize) -> Result<usize, MsgpackError> {
        Ok(match width {
            1 => self.u8()?.into(),
            2 => self.u16()?.into(),
            _ => self.u32()? as usize,
        })
    }

    /// The next `n` bytes as a zero-copy slice of the input.
    fn slice(&mut self, n: usize) -> Result<Bytes, MsgpackError> {
        let range = self.take(n)?;
        Ok(self.src.slice(range))
    }

    fn value(&mut self, depth: usize) -> Result<Value, MsgpackError> {
        let at = self.pos;
        let marker = self.u8()?;
        Ok(match marker {
            0x00..=0x7f => Value::Int(marker.into()),
            0x80..=0x8f => self.map(usize::from(marker & 0x0f), depth)?,
            0x90..=0x9f => self.seq(usize::from(marker & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(marker & 0x1f))?,
            0xc0 => Value::Nil,
            0xc1 => return Err(MsgpackError::ReservedMarker(at)),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Value::Bin(self.slice(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                self.ext(n)?
            }
            0xca => Value::F32(f32::from_bits(self.u32()?)),
            0xcb => Value::F64(f64::from_bits(self.u64()?)),
            0xcc => Value::Int(self.u8()?.into()),
            0xcd => Value::Int(self.u16()?.into()),
            0xce => Value::Int(self.u32()?.into()),
            0xcf => Value::from(self.u64()?),
            0xd0 => Value::Int(i8::from_be_bytes(self.array()?).into()),
            0xd1 => Value::Int(i16::from_be_bytes(self.array()?).into()),
            0xd2 => Value::Int(i32::from_be_bytes(self.array()?).into()),
            0xd3 => Value::Int(i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => self.ext(1 << (marker - 0xd4))?,
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                self.str(n)?
            }
            0xdc | 0xdd => {
                let n = self.len(2 << (marker - 0xdc))?;
                self.seq(n, depth)?
            }
            0xde | 0xdf => {
                let n = self.len(2 << (marker - 0xde))?;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::Int((marker as i8).into()),
        })
    }

    fn str(&mut self, n: usize) -> Result<Value, MsgpackError> {
        let range = self.take(n)?;
        let start = range.start;
        std::str::from_utf8(&self.src[range])
            .map(|s| Value::Str(s.to_owned()))
            .map_err(|_| MsgpackError::InvalidUtf8(start))
    }

    fn ext(&mut self, n: usize) -> Result<Value, MsgpackError> {
        let ty = i8::from_be_bytes(self.array()?);
        Ok(Value::Ext(ty, self.slice(n)?))
    }

    fn nested(depth: usize) -> Result<usize, MsgpackError> {
        match depth + 1 {
            d if d > MAX_DEPTH => Err(MsgpackError::TooDeep),
            d => Ok(d),
        }
    }

    /// An array of `n` items. Every item takes at least one byte, so the
    /// capacity is capped by what is left: a header claiming 2^32 items in a
    /// short buffer allocates nothing large and fails on the first missing item.
    fn seq(&mut self, n: usize, depth: usize) -> Result<Value, MsgpackError> {
        let depth = Self::nested(depth)?;
        let mut items = Vec::with_capacity(n.min(self.remaining()));
        for _ in 0..n {
            items.push(self.value(depth)?);
        }
        Ok(Value::Array(items))
    }

    /// A map of `n` pairs; each pair takes at least two bytes (see [`Self::seq`]).
    fn map(&mut self, n: usize, depth: usize) -> Result<Value, MsgpackError> {
        let depth = Self::nested(depth)?;
        let mut pairs = Vec::with_capacity(n.min(self.remaining() / 2));
        for _ in 0..n {
            let k = self.value(depth)?;
            let v = self.value(depth)?;
            pairs.push((k, v));
        }
        Ok(Value::Map(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(v, &mut out);
        out
    }

    fn dec(bytes: &[u8]) -> Result<Value, MsgpackError> {
        decode_exact(&Bytes::copy_from_slice(bytes))
    }

    /// Checks the exact bytes Python's msgpack produces, and that they decode back.
    fn check(v: Value, expected: &[u8]) {
        assert_eq!(enc(&v), expected, "encoding {v:?}");
        assert_eq!(dec(expected), Ok(v));
    }

    #[test]
    fn scalars_match_python_msgpack() {
        check(Value::Nil, &[0xc0]);
        check(Value::Bool(false), &[0xc2]);
        check(Value::Bool(true), &[0xc3]);
        check(Value::Int(0), &[0x00]);
        check(Value::Int(127), &[0x7f]);
        check(Value::Int(128), &[0xcc, 0x80]);
        check(Value::Int(300), &[0xcd, 0x01, 0x2c]);
        check(Value::Int(70_000), &[0xce, 0x00, 0x01, 0x11, 0x70]);
        check(Value::Int(1 << 32), &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
        check(
            Value::UInt(u64::MAX),
            &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        );
        check(Value::Int(-1), &[0xff]);
        check(Value::Int(-32), &[0xe0]);
        check(Value::Int(-33), &[0xd0, 0xdf]);
        check(Value::Int(-129), &[0xd1, 0xff, 0x7f]);
        check(Value::Int(-40_000), &[0xd2, 0xff, 0xff, 0x63, 0xc0]);
        check(Value::Int(i64::MIN), &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        check(Value::F64(1.5), &[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        check(Value::F32(1.5), &[0xca, 0x3f, 0xc0, 0, 0]);
    }

    #[test]
    fn strings_and_binaries_pick_smallest_header() {
        check(Value::from(""), &[0xa0]);
        check(Value::from("a"), &[0xa1, 0x61]);
        let s31 = "x".repeat(31);
        assert_eq!(enc(&Value::from(s31.as_str()))[0], 0xbf);
        let s40 = "x".repeat(40);
        assert_eq!(enc(&Value::from(s40.as_str()))[..2], [0xd9, 0x28]);
        let s300 = "x".repeat(300);
        assert_eq!(enc(&Value::from(s300.as_str()))[..3], [0xda, 0x01, 0x2c]);
        let s70k = "x".repeat(70_000);
        assert_eq!(enc(&Value::from(s70k.as_str()))[..5], [0xdb, 0, 1, 0x11, 0x70]);
        check(Value::Bin(Bytes::from_static(b"ab")), &[0xc4, 0x02, b'a', b'b']);
        let b300 = Bytes::from(vec![7u8; 300]);
        assert_eq!(enc(&Value::Bin(b300))[..3], [0xc5, 0x01, 0x2c]);
    }

    #[test]
    fn containers_and_ext() {
        let map = Value::Map(vec![(Value::from("a"), Value::Int(1))]);
        check(map, &[0x81, 0xa1, 0x61, 0x01]);
        check(Value::Array(vec![]), &[0x90]);
        check(Value::Array(vec![Value::Nil; 15]), &[&[0x9f][..], &[0xc0; 15]].concat());
        let a16 = enc(&Value::Array(vec![Value::Nil; 16]));
        assert_eq!(a16[..3], [0xdc, 0x00, 0x10]);
        let m16 = enc(&Value::Map(vec![(Value::Nil, Value::Nil); 16]));
        assert_eq!(m16[..3], [0xde, 0x00, 0x10]);
        check(
            Value::Ext(-1, Bytes::from_static(&[1, 2, 3, 4])),
            &[0xd6, 0xff, 1, 2, 3, 4],
        );
        check(Value::Ext(5, Bytes::from_static(&[9; 3])), &[0xc7, 0x03, 0x05, 9, 9, 9]);
        check(Value::Ext(5, Bytes::new()), &[0xc7, 0x00, 0x05]);
    }

    #[test]
    fn decodes_non_minimal_forms() {
        assert_eq!(dec(&[0xcc, 0x01]), Ok(Value::Int(1)));
        assert_eq!(dec(&[0xd3, 0, 0, 0, 0, 0, 0, 0, 2]), Ok(Value::Int(2)));
        assert_eq!(dec(&[0xdd, 0, 0, 0, 1, 0xc0]), Ok(Value::Array(vec![Value::Nil])));
        assert_eq!(dec(&[0xdf, 0, 0, 0, 0]), Ok(Value::Map(vec![])));
        assert_eq!(dec(&[0xdb, 0, 0, 0, 1, b'z']), Ok(Value::from("z")));
        assert_eq!(dec(&[0xc6, 0, 0, 0, 1, 8]), Ok(Value::Bin(Bytes::from_static(&[8]))));
        assert_eq!(
            dec(&[0xc9, 0, 0, 0, 1, 2, 8]),
            Ok(Value::Ext(2, Bytes::from_static(&[8])))
        );
    }

    #[test]
    fn bin_is_a_slice_of_the_input() {
        let src = Bytes::from_static(&[0xc4, 0x02, b'h', b'i']);
        let Ok(Value::Bin(b)) = decode_exact(&src) else {
            panic!("not bin")
        };
        assert_eq!(b.as_ptr(), src[2..].as_ptr());
    }

    #[test]
    fn hostile_input_is_refused() {
        assert_eq!(dec(&[]), Err(MsgpackError::Truncated { offset: 0, needed: 1 }));
        assert_eq!(dec(&[0xc1]), Err(MsgpackError::ReservedMarker(0)));
        assert_eq!(dec(&[0xc0, 0xc0]), Err(MsgpackError::Trailing(1)));
        assert_eq!(dec(&[0xa2, 0xff, 0xfe]), Err(MsgpackError::InvalidUtf8(1)));
        assert_eq!(
            dec(&[0xdb, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::Truncated {
                offset: 5,
                needed: u32::MAX as usize
            })
        );
        // 2^32 - 1 elements announced, one present: fails on the second.
        assert!(matches!(
            dec(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            Err(MsgpackError::Truncated { offset: 6, .. })
        ));
        assert!(matches!(
            dec(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(MsgpackError::Truncated { .. })
        ));
        assert_eq!(dec(&[0x91; 100_000]), Err(MsgpackError::TooDeep));
        let mut ok_depth = vec![0x91; MAX_DEPTH - 1];
        ok_depth.push(0x90);
        assert!(dec(&ok_depth).is_ok());
        assert_eq!(
            dec(&[0xcd, 0x01]),
            Err(MsgpackError::Truncated { offset: 1, needed: 1 })
        );
    }
}
