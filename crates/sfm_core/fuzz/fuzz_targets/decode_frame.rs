//! Feeds arbitrary bytes to the frame decoder, whole and one byte at a time,
//! and to the msgpack value decoder. Besides "no panic", it checks that the
//! two ways of feeding agree and that every decoded frame re-encodes to one
//! that decodes the same.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sfm_core::frame::{decode_value, Frame, FrameCodec};

/// Small enough that refusals are common, large enough for real frames.
const MAX_FRAME: usize = 1 << 20;

/// Frames decoded and the error that stopped decoding, if any, rendered with
/// `Debug` so that NaN header values still compare equal.
fn decode_stream(data: &[u8], piece: usize) -> (Vec<String>, Option<String>) {
    let mut codec = FrameCodec::new(MAX_FRAME);
    let mut src = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in data.chunks(piece) {
        src.extend_from_slice(chunk);
        loop {
            let result = codec.decode(&mut src);
            assert!(src.capacity() <= 2 * MAX_FRAME + data.len(), "over-reserved");
            match result {
                Ok(Some(frame)) => {
                    check_reencode(&frame);
                    frames.push(format!("{frame:?}"));
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
}

/// Minimal msgpack is never longer than what was received, so re-encoding
/// a decoded frame must succeed and decode to the same frame.
fn check_reencode(frame: &Frame) {
    let bytes = frame.encode().expect("a decoded frame re-encodes");
    let again = FrameCodec::new(MAX_FRAME)
        .decode(&mut BytesMut::from(&bytes[..]))
        .expect("a re-encoded frame decodes")
        .expect("a re-encoded frame is complete");
    assert_eq!(format!("{again:?}"), format!("{frame:?}"));
}

fuzz_target!(|data: &[u8]| {
    let whole = decode_stream(data, data.len().max(1));
    let streamed = decode_stream(data, 1);
    assert_eq!(
        whole, streamed,
        "byte-at-a-time decoding disagrees with whole-buffer decoding"
    );
    let _ = decode_value(&Bytes::copy_from_slice(data));
});
