//! The sender's byte window as plain counters (STYLE.md, "windows as numbers").
//!
//! `acked <= sent` always; `sent - acked <= size` whenever the sender only sends what [`Window::can_send`] allows.

use super::StreamError;

/// Bytes sent, bytes acknowledged (max-merged, as NVFlare's `offset_ack`) and the most that may be unacknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    size: u64,
    sent: u64,
    acked: u64,
}

impl Window {
    pub fn new(size: u64) -> Self {
        Window {
            size,
            sent: 0,
            acked: 0,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn sent(&self) -> u64 {
        self.sent
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Bytes sent and not yet acknowledged.
    pub fn outstanding(&self) -> u64 {
        self.sent - self.acked
    }

    /// Bytes that may still be sent before the window is full.
    pub fn available(&self) -> u64 {
        self.size.saturating_sub(self.outstanding())
    }

    /// Whether `len` more bytes fit. An empty send (the empty FINAL of a zero-length stream) always fits.
    pub fn can_send(&self, len: u64) -> bool {
        len <= self.available()
    }

    /// Records `len` bytes handed to the transport. Refuses what does not fit, so the invariant cannot break.
    pub fn on_sent(&mut self, len: u64) -> Result<(), WindowError> {
        if !self.can_send(len) {
            return Err(WindowError::Full {
                len,
                available: self.available(),
            });
        }
        self.sent = self.sent.checked_add(len).ok_or(WindowError::Overflow)?;
        Ok(())
    }

    /// Merges an ACK of `offset` consumed bytes. Returns whether it advanced; an older ACK (below or at the
    /// previous one) is ignored; one beyond what was sent is a protocol error.
    pub fn on_ack(&mut self, offset: u64) -> Result<bool, StreamError> {
        if offset > self.sent {
            return Err(StreamError::Protocol(format!(
                "ACK for offset {offset} is beyond the {} bytes sent",
                self.sent
            )));
        }
        if offset <= self.acked {
            return Ok(false);
        }
        self.acked = offset;
        Ok(true)
    }
}

/// Why [`Window::on_sent`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowError {
    Full { len: u64, available: u64 },
    Overflow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_limits() {
        let mut w = Window::new(10);
        assert!(w.can_send(10));
        assert!(!w.can_send(11));
        w.on_sent(6).unwrap();
        assert_eq!((w.sent(), w.outstanding(), w.available()), (6, 6, 4));
        assert_eq!(w.on_sent(5), Err(WindowError::Full { len: 5, available: 4 }));
        w.on_sent(4).unwrap();
        assert!(w.can_send(0));
        assert!(!w.can_send(1));
    }

    #[test]
    fn acks_are_max_merged_and_bounded_by_sent() {
        let mut w = Window::new(10);
        w.on_sent(8).unwrap();
        assert_eq!(w.on_ack(5), Ok(true));
        assert_eq!(w.on_ack(3), Ok(false));
        assert_eq!(w.on_ack(5), Ok(false));
        assert_eq!(w.acked(), 5);
        assert_eq!(w.available(), 7);
        let err = w.on_ack(9).unwrap_err();
        assert!(err.to_string().contains("beyond the 8 bytes sent"), "{err}");
        assert_eq!(w.acked(), 5);
    }

    #[test]
    fn overflow_is_refused() {
        let mut w = Window::new(u64::MAX);
        w.on_sent(u64::MAX).unwrap();
        w.on_ack(u64::MAX).unwrap();
        assert_eq!(w.on_sent(1), Err(WindowError::Overflow));
    }
}
