//! Property tests: any frame survives encode → decode, whether the bytes
//! arrive at once, in arbitrary pieces, or several frames back to back.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use sfm_core::frame::{decode_value, encode_value, Frame, FrameCodec, FrameType, Headers, Prefix, Value, PREFIX_LEN};

/// Scalars in their canonical decoded form: `UInt` only above `i64::MAX`,
/// and no NaN (which never compares equal to itself).
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-40i64..300).prop_map(Value::Int),
        (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::UInt),
        any::<f32>().prop_filter("NaN", |f| !f.is_nan()).prop_map(Value::F32),
        any::<f64>().prop_filter("NaN", |f| !f.is_nan()).prop_map(Value::F64),
        ".{0,40}".prop_map(Value::Str),
        (250..300usize).prop_map(|n| Value::Str("é".repeat(n / 2))),
        bytes(300).prop_map(Value::Bin),
        (any::<i8>(), bytes(20)).prop_map(|(t, b)| Value::Ext(t, b)),
    ]
}

/// Values nested up to four levels, with containers large enough to need
/// the 16-bit length forms.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 20, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..20).prop_map(Value::Array),
            vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
        ]
    })
}

/// Header maps that fit the 16-bit `header_len` field.
fn headers() -> impl Strategy<Value = Headers> {
    vec(("[a-z_]{1,12}", value()), 0..16)
        .prop_map(|entries| entries.into_iter().collect::<Headers>())
        .prop_filter("headers must fit in 64 KiB", |h| {
            h.encode().len() <= usize::from(u16::MAX)
        })
}

/// Up to `max` pseudo-random bytes, generated from a seed because drawing
/// each byte from proptest is slow in debug builds.
fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    (0..=max, any::<u64>()).prop_map(|(len, seed)| {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

prop_compose! {
    fn frame()(ty in any::<u8>(), flags in any::<u16>(), app_id in any::<u16>(), stream_id in any::<u16>(),
               sequence in any::<u16>(), headers in headers(), payload in bytes(64 * 1024)) -> Frame {
        Frame { frame_type: FrameType::from_u8(ty), flags, app_id, stream_id, sequence, headers, payload }
    }
}

/// Chunk sizes: mostly tiny (splitting inside the prefix and headers), some large.
fn chunks() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1usize..20, 1usize..70_000], 1..20)
}

/// Feeds `bytes` to a fresh codec in pieces of the given sizes (cycled),
/// collecting every frame decoded along the way.
fn decode_in_pieces(bytes: &[u8], sizes: &[usize]) -> Result<(Vec<Frame>, usize), TestCaseError> {
    let mut codec = FrameCodec::default();
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        src.extend_from_slice(piece);
        rest = tail;
        while let Some(frame) = codec.decode(&mut src).map_err(|e| TestCaseError::fail(e.to_string()))? {
            frames.push(frame);
        }
    }
    Ok((frames, src.len()))
}

proptest! {
    // ChaCha, the default generator, dominates the run time of debug builds.
    #![proptest_config(ProptestConfig { rng_algorithm: RngAlgorithm::XorShift, ..ProptestConfig::default() })]

    #[test]
    fn whole_frame_round_trips(frame in frame()) {
        let bytes = frame.encode().unwrap();
        let head = frame.encode_head().unwrap();
        prop_assert_eq!(&bytes[..head.len()], &head[..]);
        prop_assert_eq!(bytes.len(), head.len() + frame.payload.len());

        let mut src = BytesMut::from(&bytes[..]);
        prop_assert_eq!(FrameCodec::default().decode(&mut src).unwrap(), Some(frame.clone()));
        prop_assert!(src.is_empty());

        // The same frame through the prefix-then-body path.
        let prefix = Prefix::decode(&bytes).unwrap();
        prefix.validate(bytes.len()).unwrap();
        prop_assert_eq!(FrameCodec::decode_body(&prefix, bytes.slice(PREFIX_LEN..)).unwrap(), frame);
    }

    #[test]
    fn split_frames_decode_the_same(frames in vec(frame(), 1..4), sizes in chunks()) {
        let mut bytes = Vec::new();
        for frame in &frames {
            bytes.extend_from_slice(&frame.encode().unwrap());
        }
        let (decoded, left) = decode_in_pieces(&bytes, &sizes)?;
        prop_assert_eq!(left, 0);
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn values_and_headers_round_trip(v in value(), h in headers()) {
        let mut buf = BytesMut::new();
        encode_value(&v, &mut buf);
        prop_assert_eq!(decode_value(&buf.freeze()).unwrap(), v);
        prop_assert_eq!(Headers::decode(h.encode()).unwrap(), h);
    }
}
