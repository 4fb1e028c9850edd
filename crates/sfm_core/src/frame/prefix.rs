//! The fixed 16-byte frame prefix, `struct.Struct(">IHBBHHHH")` in NVFlare.

use bytes::BufMut;

use super::{FrameError, FrameType, MAX_HEADER_SIZE, PREFIX_LEN};

/// The decoded prefix, field for field as on the wire.
///
/// `frame_type` stays a raw byte here so that a prefix re-encodes to exactly
/// the bytes it was read from; [`Prefix::kind`] interprets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix {
    /// Total frame length, prefix included.
    pub length: u32,
    /// Length of the msgpack headers that follow the prefix (0 = none).
    pub header_len: u16,
    pub frame_type: u8,
    /// Always 0 from NVFlare; ignored on receipt.
    pub reserved: u8,
    pub flags: u16,
    pub app_id: u16,
    pub stream_id: u16,
    pub sequence: u16,
}

impl Prefix {
    /// Writes the 16 prefix bytes, big-endian.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.length);
        dst.put_u16(self.header_len);
        dst.put_u8(self.frame_type);
        dst.put_u8(self.reserved);
        dst.put_u16(self.flags);
        dst.put_u16(self.app_id);
        dst.put_u16(self.stream_id);
        dst.put_u16(self.sequence);
    }

    /// Reads a prefix from the first 16 bytes of `src`; later bytes are ignored.
    ///
    /// This only parses; [`Prefix::validate`] decides whether the frame is acceptable.
    pub fn decode(src: &[u8]) -> Result<Prefix, FrameError> {
        let b: &[u8; PREFIX_LEN] = src
            .get(..PREFIX_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::PrefixTooShort(src.len()))?;
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        Ok(Prefix {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            header_len: u16_at(4),
            frame_type: b[6],
            reserved: b[7],
            flags: u16_at(8),
            app_id: u16_at(10),
            stream_id: u16_at(12),
            sequence: u16_at(14),
        })
    }

    /// The frame type this prefix announces.
    pub fn kind(&self) -> FrameType {
        FrameType::from_u8(self.frame_type)
    }

    /// Number of bytes after the prefix (headers + payload); 0 if `length` is bogus.
    pub fn body_len(&self) -> usize {
        (self.length as usize).saturating_sub(PREFIX_LEN)
    }

    /// Checks the announced sizes before any buffer is sized from them, so that a
    /// hostile length costs nothing. Readers that read prefix and body separately
    /// must call this before allocating the body.
    pub fn validate(&self, max_frame_size: usize) -> Result<(), FrameError> {
        let length = self.length as usize;
        let header_len = self.header_len as usize;
        if length < PREFIX_LEN {
            return Err(FrameError::LengthTooSmall(self.length));
        }
        if length > max_frame_size {
            return Err(FrameError::TooLarge {
                length: u64::from(self.length),
                max: max_frame_size,
            });
        }
        if header_len > length - PREFIX_LEN {
            return Err(FrameError::HeaderOverrun { header_len, length });
        }
        if header_len > MAX_HEADER_SIZE {
            return Err(FrameError::HeadersTooLarge(header_len));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: Prefix = Prefix {
        length: 0x0102_0304,
        header_len: 0x0506,
        frame_type: 1,
        reserved: 0,
        flags: 0x8000,
        app_id: 1,
        stream_id: 17,
        sequence: 0xfffe,
    };

    #[rustfmt::skip]
    const SAMPLE_BYTES: [u8; 16] = [
        0x01, 0x02, 0x03, 0x04, // length
        0x05, 0x06,             // header_len
        0x01,                   // type = DATA
        0x00,                   // reserved
        0x80, 0x00,             // flags = OOB
        0x00, 0x01,             // app_id
        0x00, 0x11,             // stream_id
        0xff, 0xfe,             // sequence
    ];

    #[test]
    fn encodes_big_endian_layout() {
        let mut out = Vec::new();
        SAMPLE.encode(&mut out);
        assert_eq!(out, SAMPLE_BYTES);
    }

    #[test]
    fn decodes_and_round_trips() {
        assert_eq!(Prefix::decode(&SAMPLE_BYTES), Ok(SAMPLE));
        let mut with_tail = SAMPLE_BYTES.to_vec();
        with_tail.extend_from_slice(b"body");
        assert_eq!(Prefix::decode(&with_tail), Ok(SAMPLE));
        assert_eq!(SAMPLE.kind(), FrameType::Data);
    }

    #[test]
    fn short_input_is_an_error() {
        assert_eq!(Prefix::decode(&SAMPLE_BYTES[..15]), Err(FrameError::PrefixTooShort(15)));
        assert_eq!(Prefix::decode(&[]), Err(FrameError::PrefixTooShort(0)));
    }

    #[test]
    fn validate_checks_in_order() {
        let p = |length, header_len| Prefix {
            length,
            header_len,
            ..Prefix::default()
        };
        assert_eq!(p(16, 0).validate(16), Ok(()));
        assert_eq!(p(15, 0).validate(100), Err(FrameError::LengthTooSmall(15)));
        assert_eq!(
            p(101, 0).validate(100),
            Err(FrameError::TooLarge { length: 101, max: 100 })
        );
        assert_eq!(
            p(20, 5).validate(100),
            Err(FrameError::HeaderOverrun {
                header_len: 5,
                length: 20
            })
        );
        assert_eq!(p(20, 4).validate(100), Ok(()));
        assert_eq!(p(u32::MAX, 0).body_len(), u32::MAX as usize - 16);
        assert_eq!(p(3, 0).body_len(), 0);
    }
}
