//! A deterministic, always-on cousin of the cargo-fuzz target: 100,000+
//! hostile inputs from a fixed seed, checking that the decoder never panics,
//! never loops, and never reserves memory for a frame it must refuse.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use sfm_core::frame::{
    decode_value, encode_value, Frame, FrameCodec, FrameError, FrameType, Headers, Prefix, Value, PREFIX_LEN,
};

/// Small limit so that "too large" is easy to announce and cheap to check.
const MAX_FRAME: usize = 64 * 1024;

/// xorshift64*: deterministic across platforms and crate versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Fewer than `max` random bytes.
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn value(&mut self, depth: usize) -> Value {
        let kinds = if depth == 0 { 9 } else { 11 };
        match self.below(kinds) {
            0 => Value::Nil,
            1 => Value::Bool(self.next() & 1 == 1),
            2 => Value::Int(self.next() as i64 >> self.below(64)),
            3 => Value::UInt(self.next() | 1 << 63),
            // No NaN: frames are compared for equality.
            4 => Value::F64(self.next() as i64 as f64 / 3.0),
            5 => Value::F32(self.next() as i32 as f32 / 3.0),
            6 => Value::Str("s".repeat(self.below(40))),
            7 => Value::Bin(self.bytes_below(40).into()),
            8 => Value::Ext(self.next() as i8, self.bytes_below(20).into()),
            9 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
            _ => Value::Map(
                (0..self.below(4))
                    .map(|_| (self.value(depth - 1), self.value(depth - 1)))
                    .collect(),
            ),
        }
    }

    fn frame(&mut self) -> Bytes {
        let headers: Headers = (0..self.below(6)).map(|i| (format!("h{i}"), self.value(2))).collect();
        let payload = self.bytes_below(300);
        let frame = Frame {
            frame_type: FrameType::from_u8(self.next() as u8),
            flags: self.next() as u16,
            app_id: self.next() as u16,
            stream_id: self.next() as u16,
            sequence: self.next() as u16,
            headers,
            payload: payload.into(),
        };
        assert!(
            frame.encode_head_checked(MAX_FRAME).is_ok(),
            "generated frames fit the limit"
        );
        frame.encode().expect("generated frames fit the limit")
    }

    /// Random msgpack-ish tokens, favouring headers that claim huge lengths.
    fn msgpack_soup(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..self.below(30) {
            let huge = [0xffu8, 0xff, 0xff, 0xff];
            match self.below(8) {
                0 => out.extend_from_slice(&[0xdd]),
                1 => out.extend_from_slice(&[0xdf]),
                2 => out.extend_from_slice(&[0xdb]),
                3 => out.extend_from_slice(&[0xc6]),
                4 => out.extend_from_slice(&[0xc9]),
                5 => out.push(0x80 | self.below(16) as u8),
                6 => out.push(0x90 | self.below(16) as u8),
                _ => out.push(self.next() as u8),
            }
            if self.below(2) == 0 {
                out.extend_from_slice(&huge);
            } else {
                out.extend(self.bytes_below(6));
            }
        }
        out
    }
}

fn prefix(length: u32, header_len: u16) -> Vec<u8> {
    let mut out = Vec::new();
    Prefix {
        length,
        header_len,
        frame_type: 1,
        ..Prefix::default()
    }
    .encode(&mut out);
    out
}

/// Wraps `body` in a prefix that announces it exactly, so the headers decoder sees it.
fn framed(header_len: usize, body: &[u8]) -> Vec<u8> {
    let header_len = header_len.min(body.len()).min(usize::from(u16::MAX)) as u16;
    let mut out = prefix((PREFIX_LEN + body.len()) as u32, header_len);
    out.extend_from_slice(body);
    out
}

/// Runs the codec over `input`, whole or in random pieces, returning the
/// frames decoded or the first error. Checks on every call that the buffer
/// never grew beyond what the frame limit allows.
fn run_codec(input: &[u8], mut pieces: Option<&mut Rng>) -> Result<Vec<Frame>, FrameError> {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let take = match pieces.as_deref_mut() {
            Some(rng) => 1 + rng.below(rest.len()),
            None => rest.len(),
        };
        let (piece, tail) = rest.split_at(take);
        src.extend_from_slice(piece);
        rest = tail;
        loop {
            let result = codec.decode(&mut src);
            let capacity = src.capacity();
            assert!(
                capacity <= 2 * MAX_FRAME + input.len(),
                "capacity {capacity} after {result:?}"
            );
            match result? {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
    }
    Ok(frames)
}

/// Runs `check` and, if it panics, names the input that did it.
fn guarded(input: &[u8], check: impl FnOnce()) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(check)) {
        let shown = &input[..input.len().min(64)];
        panic!(
            "decoder panicked on input ({} bytes) starting {shown:02x?}: {panic:?}",
            input.len()
        );
    }
}

#[test]
fn hostile_inputs_never_panic() {
    let mut rng = Rng(0x5eed_f1a3_0000_0001);
    let mut pieces = Rng(0x0dd_c0ffee);
    let mut count = 0usize;

    // Pure noise, to the codec (whole and in pieces) and to the value decoder.
    for _ in 0..20_000 {
        let input = rng.bytes_below(80);
        guarded(&input, || {
            let _ = run_codec(&input, None);
            let _ = decode_value(&Bytes::copy_from_slice(&input));
        });
        count += 1;
    }

    // Noise behind a consistent prefix, so it reaches the headers decoder.
    for _ in 0..20_000 {
        let body = rng.bytes_below(200);
        let input = framed(rng.below(body.len() + 1), &body);
        guarded(&input, || drop(run_codec(&input, Some(&mut pieces))));
        count += 1;
    }

    // Valid frames cut short: always "need more", never an error.
    for _ in 0..15_000 {
        let frame = rng.frame();
        let cut = rng.below(frame.len());
        let input = &frame[..cut];
        guarded(input, || assert_eq!(run_codec(input, Some(&mut pieces)), Ok(vec![])));
        count += 1;
    }

    // Valid frames with bytes flipped, inserted or deleted.
    for _ in 0..20_000 {
        let mut input = rng.frame().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            match rng.below(3) {
                0 => input[at] ^= 1 << rng.below(8),
                1 => input.insert(at, rng.next() as u8),
                _ => drop(input.remove(at)),
            }
        }
        guarded(&input, || drop(run_codec(&input, None)));
        count += 1;
    }

    // Prefixes announcing more than the limit: refused, nothing reserved.
    for _ in 0..10_000 {
        let length = (MAX_FRAME as u32 + 1).saturating_add(rng.next() as u32 % (u32::MAX - MAX_FRAME as u32));
        let mut input = prefix(length, rng.next() as u16);
        input.extend(rng.bytes_below(32));
        guarded(&input, || {
            let mut src = BytesMut::from(&input[..]);
            let capacity = src.capacity();
            let refused = FrameCodec::new(MAX_FRAME).decode(&mut src);
            assert!(matches!(refused, Err(FrameError::TooLarge { .. })), "{refused:?}");
            assert_eq!(src.capacity(), capacity, "reserved for a refused frame");
            assert!(capacity < 64, "test input itself is small");
        });
        count += 1;
    }

    // Header lengths beyond the frame, and short lengths.
    for _ in 0..5_000 {
        let length = rng.below(MAX_FRAME) as u32;
        let header_len = rng.next() as u16;
        let input = prefix(length, header_len);
        guarded(&input, || {
            let result = FrameCodec::new(MAX_FRAME).decode(&mut BytesMut::from(&input[..]));
            let body = (length as usize).saturating_sub(PREFIX_LEN);
            match result {
                Err(FrameError::LengthTooSmall(_)) => assert!((length as usize) < PREFIX_LEN),
                Err(FrameError::HeaderOverrun { .. }) => assert!(usize::from(header_len) > body),
                Ok(None) => {
                    assert!(usize::from(header_len) <= body && length as usize > PREFIX_LEN)
                }
                Ok(Some(_)) => assert_eq!((length, header_len), (PREFIX_LEN as u32, 0)),
                other => panic!("unexpected {other:?}"),
            }
        });
        count += 1;
    }

    // msgpack claiming huge arrays, maps, strings, binaries and extensions.
    for _ in 0..15_000 {
        let soup = rng.msgpack_soup();
        let input = framed(soup.len(), &soup);
        guarded(&input, || {
            let _ = run_codec(&input, None);
            let _ = decode_value(&Bytes::copy_from_slice(&soup));
        });
        count += 1;
    }

    // Deep nesting: 100,000 single-element arrays, as a value and as headers.
    for n in [100, 65_535, 100_000] {
        let nested = vec![0x91u8; n];
        guarded(&nested, || {
            assert!(matches!(
                decode_value(&Bytes::from(nested.clone())),
                Err(FrameError::BadPayload(_))
            ));
            let mut map = vec![0x81, 0xa1, b'k'];
            map.extend_from_slice(&nested[..n.min(60_000)]);
            let input = framed(map.len(), &map);
            assert!(matches!(run_codec(&input, None), Err(FrameError::BadHeaders(_))));
        });
        count += 1;
    }

    assert!(count >= 100_000, "only {count} inputs");
}

#[test]
fn valid_frames_survive_the_same_harness() {
    let mut rng = Rng(42);
    let mut pieces = Rng(7);
    for _ in 0..2_000 {
        let mut bytes = rng.frame().to_vec();
        bytes.extend_from_slice(&rng.frame());
        let whole = run_codec(&bytes, None).expect("valid frames");
        let streamed = run_codec(&bytes, Some(&mut pieces)).expect("valid frames");
        assert_eq!(whole.len(), 2);
        assert_eq!(whole, streamed);
    }
}

#[test]
fn hello_payload_is_readable() {
    let mut payload = BytesMut::new();
    let hello = Value::Map(vec![
        (Value::from("endpoint_name"), Value::from("site-1")),
        (Value::from("timestamp"), Value::from(1_700_000_000.25)),
    ]);
    encode_value(&hello, &mut payload);
    let frame = Frame::control(FrameType::Hello, 1, payload.freeze());
    let decoded = run_codec(&frame.encode().unwrap(), None).unwrap();
    let value = decode_value(&decoded[0].payload).unwrap();
    assert_eq!(value.get("endpoint_name").and_then(Value::as_str), Some("site-1"));
    assert_eq!(value.get("timestamp").and_then(Value::as_f64), Some(1_700_000_000.25));
}
