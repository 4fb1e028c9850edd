//! Turning bytes into frames and back.
//!
//! Decoding follows tokio-util's `Decoder` contract (`Ok(None)` = need more
//! bytes) and its length-delimited codec's rule: check the announced length
//! against the limit before reserving anything, so a hostile prefix cannot
//! make us allocate.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Frame, FrameError, FrameType, Headers, Prefix, DEFAULT_MAX_FRAME_SIZE, PREFIX_LEN};

/// Incremental frame decoder for a byte stream (TCP).
///
/// After an error the stream is out of step and must be closed; the codec
/// does not try to resynchronize.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_size: usize,
    /// Prefix of the frame whose body is still arriving, already validated
    /// and with room reserved for the rest, so later calls only wait.
    pending: Option<Prefix>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FrameCodec {
    /// A decoder refusing frames longer than `max_frame_size` bytes (prefix included).
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            max_frame_size,
            pending: None,
        }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Takes one complete frame off the front of `src`, or returns `Ok(None)`
    /// if more bytes are needed.
    ///
    /// As soon as the prefix is in, it is validated, and `src` gets exactly
    /// one `reserve` for the rest of the frame so the reader can fill it without
    /// regrowing. The frame's bytes are then split off and frozen: the payload
    /// is a slice of them, not a copy.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let prefix = match self.pending {
            Some(prefix) => prefix,
            None if src.len() < PREFIX_LEN => return Ok(None),
            None => {
                let prefix = Prefix::decode(src)?;
                prefix.validate(self.max_frame_size)?;
                prefix
            }
        };
        let length = prefix.length as usize;
        if src.len() < length {
            if self.pending.is_none() {
                src.reserve(length - src.len());
                self.pending = Some(prefix);
            }
            return Ok(None);
        }
        self.pending = None;
        let body = src.split_to(length).freeze().split_off(PREFIX_LEN);
        Self::decode_body(&prefix, body).map(Some)
    }

    /// Builds a frame from a prefix and the `length - 16` bytes that follow
    /// it, for readers that read the two separately (after calling
    /// [`Prefix::validate`] with their size limit).
    pub fn decode_body(prefix: &Prefix, mut body: Bytes) -> Result<Frame, FrameError> {
        // The size limit is the reader's business; here only consistency counts.
        prefix.validate(usize::MAX)?;
        if body.len() != prefix.body_len() {
            return Err(FrameError::BodyLength {
                expected: prefix.body_len(),
                got: body.len(),
            });
        }
        let headers = Headers::decode(body.split_to(prefix.header_len.into()))?;
        Ok(Frame {
            frame_type: prefix.kind(),
            flags: prefix.flags,
            app_id: prefix.app_id,
            stream_id: prefix.stream_id,
            sequence: prefix.sequence,
            headers,
            payload: body,
        })
    }
}

impl Frame {
    /// A DATA frame; the connection sets `sequence` when it sends.
    pub fn data(app_id: u16, stream_id: u16, headers: Headers, payload: Bytes) -> Frame {
        Frame {
            frame_type: FrameType::Data,
            flags: 0,
            app_id,
            stream_id,
            sequence: 0,
            headers,
            payload,
        }
    }

    /// A HELLO/READY/PING/PONG-style frame: app 0, no headers, `payload`
    /// usually a msgpack map or nil.
    pub fn control(frame_type: FrameType, stream_id: u16, payload: Bytes) -> Frame {
        Frame {
            frame_type,
            ..Frame::data(0, stream_id, Headers::new(), payload)
        }
    }

    /// [`Frame::encode_head_checked`] against NVFlare's maximum frame size.
    pub fn encode_head(&self) -> Result<BytesMut, FrameError> {
        self.encode_head_checked(DEFAULT_MAX_FRAME_SIZE)
    }

    /// Prefix and headers, with `length` counting the payload too, so a writer
    /// can send this and then the payload itself, never copying the payload.
    pub fn encode_head_checked(&self, max_frame_size: usize) -> Result<BytesMut, FrameError> {
        let mut head = BytesMut::with_capacity(PREFIX_LEN + 64 * self.headers.len());
        head.put_bytes(0, PREFIX_LEN);
        self.headers.encode_into(&mut head);
        let header_len = head.len() - PREFIX_LEN;
        let header_len = u16::try_from(header_len).map_err(|_| FrameError::HeadersTooLong(header_len))?;
        let length = head.len() as u64 + self.payload.len() as u64;
        let too_large = FrameError::TooLarge {
            length,
            max: max_frame_size,
        };
        if length > max_frame_size as u64 {
            return Err(too_large);
        }
        let length = u32::try_from(length).map_err(|_| too_large)?;
        let prefix = Prefix {
            length,
            header_len,
            frame_type: self.frame_type.as_u8(),
            reserved: 0,
            flags: self.flags,
            app_id: self.app_id,
            stream_id: self.stream_id,
            sequence: self.sequence,
        };
        prefix.encode(&mut &mut head[..PREFIX_LEN]);
        Ok(head)
    }

    /// The whole frame in one buffer (copies the payload; for tests and small frames).
    pub fn encode(&self) -> Result<Bytes, FrameError> {
        let mut buf = self.encode_head()?;
        buf.extend_from_slice(&self.payload);
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Value;

    fn sample() -> Frame {
        let mut headers = Headers::new();
        headers.insert("a", 1);
        let mut frame = Frame::data(1, 17, headers, Bytes::from_static(b"payload"));
        frame.sequence = 3;
        frame
    }

    #[rustfmt::skip]
    const SAMPLE_BYTES: &[u8] = &[
        0, 0, 0, 27,  0, 4,  1,  0,  0, 0,  0, 1,  0, 17,  0, 3,
        0x81, 0xa1, b'a', 0x01,
        b'p', b'a', b'y', b'l', b'o', b'a', b'd',
    ];

    fn prefix_bytes(length: u32, header_len: u16) -> BytesMut {
        let mut b = BytesMut::new();
        Prefix {
            length,
            header_len,
            frame_type: 1,
            ..Prefix::default()
        }
        .encode(&mut b);
        b
    }

    #[test]
    fn encodes_known_bytes_and_decodes_back() {
        let frame = sample();
        assert_eq!(&frame.encode().unwrap()[..], SAMPLE_BYTES);
        let head = frame.encode_head().unwrap();
        assert_eq!(&head[..], &SAMPLE_BYTES[..20]);
        let mut src = BytesMut::from(SAMPLE_BYTES);
        assert_eq!(FrameCodec::default().decode(&mut src), Ok(Some(frame)));
        assert!(src.is_empty());
    }

    #[test]
    fn control_frame_has_no_headers() {
        let ping = Frame::control(FrameType::Ping, 18, Bytes::from_static(&[0xc0]));
        let bytes = ping.encode().unwrap();
        assert_eq!(&bytes[..], [0, 0, 0, 17, 0, 0, 6, 0, 0, 0, 0, 0, 0, 18, 0, 0, 0xc0]);
        let decoded = FrameCodec::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert_eq!(crate::frame::decode_value(&decoded.payload), Ok(Value::Nil));
    }

    #[test]
    fn prefix_only_frame_and_unknown_type() {
        let mut src = prefix_bytes(16, 0);
        src[6] = 200;
        let frame = FrameCodec::default().decode(&mut src).unwrap().unwrap();
        assert_eq!(frame.frame_type, FrameType::Unknown(200));
        assert!(frame.headers.is_empty() && frame.payload.is_empty());
        assert_eq!(frame.encode().unwrap()[6], 200);
    }

    #[test]
    fn streaming_reserves_once_and_slices_payload() {
        let frame = Frame::data(1, 17, Headers::new(), Bytes::from(vec![9u8; 10_000]));
        let bytes = frame.encode().unwrap();
        let mut codec = FrameCodec::default();
        let mut src = BytesMut::new();
        src.extend_from_slice(&bytes[..20]);
        assert_eq!(codec.decode(&mut src), Ok(None));
        assert!(src.capacity() >= bytes.len());
        let base = src.as_ptr();
        for chunk in bytes[20..].chunks(999) {
            assert_eq!(codec.decode(&mut src), Ok(None));
            src.extend_from_slice(chunk);
        }
        assert_eq!(src.as_ptr(), base, "buffer regrew");
        let decoded = codec.decode(&mut src).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert_eq!(decoded.payload.as_ptr(), base.wrapping_add(PREFIX_LEN));
    }

    #[test]
    fn back_to_back_frames() {
        let mut src = BytesMut::new();
        src.extend_from_slice(SAMPLE_BYTES);
        src.extend_from_slice(SAMPLE_BYTES);
        src.extend_from_slice(&SAMPLE_BYTES[..5]);
        let mut codec = FrameCodec::default();
        assert_eq!(codec.decode(&mut src), Ok(Some(sample())));
        assert_eq!(codec.decode(&mut src), Ok(Some(sample())));
        assert_eq!(codec.decode(&mut src), Ok(None));
        assert_eq!(src.len(), 5);
    }

    #[test]
    fn bad_prefixes_are_refused_before_reserving() {
        let mut codec = FrameCodec::new(1000);
        let mut check = |mut src: BytesMut, err| {
            let cap = src.capacity();
            assert_eq!(codec.decode(&mut src), Err(err));
            assert_eq!(src.capacity(), cap);
        };
        check(prefix_bytes(15, 0), FrameError::LengthTooSmall(15));
        check(
            prefix_bytes(u32::MAX, 0),
            FrameError::TooLarge {
                length: u32::MAX.into(),
                max: 1000,
            },
        );
        check(
            prefix_bytes(20, 5),
            FrameError::HeaderOverrun {
                header_len: 5,
                length: 20,
            },
        );
    }

    #[test]
    fn bad_headers_surface_after_the_frame_is_complete() {
        let mut src = prefix_bytes(17, 1);
        src.put_u8(0xc1);
        assert!(matches!(
            FrameCodec::default().decode(&mut src),
            Err(FrameError::BadHeaders(_))
        ));
    }

    #[test]
    fn decode_body_checks_consistency() {
        let prefix = Prefix::decode(SAMPLE_BYTES).unwrap();
        let body = Bytes::from_static(&SAMPLE_BYTES[PREFIX_LEN..]);
        assert_eq!(FrameCodec::decode_body(&prefix, body.clone()), Ok(sample()));
        assert_eq!(
            FrameCodec::decode_body(&prefix, body.slice(1..)),
            Err(FrameError::BodyLength { expected: 11, got: 10 })
        );
        let overrun = Prefix {
            header_len: 12,
            ..prefix
        };
        assert!(matches!(
            FrameCodec::decode_body(&overrun, body),
            Err(FrameError::HeaderOverrun { .. })
        ));
    }

    #[test]
    fn encode_enforces_limits() {
        let frame = sample();
        assert_eq!(
            frame.encode_head_checked(26),
            Err(FrameError::TooLarge { length: 27, max: 26 })
        );
        assert!(frame.encode_head_checked(27).is_ok());
        let mut headers = Headers::new();
        headers.insert("big", "x".repeat(70_000));
        let frame = Frame::data(1, 17, headers, Bytes::new());
        assert!(matches!(frame.encode_head(), Err(FrameError::HeadersTooLong(n)) if n > 70_000));
    }
}
