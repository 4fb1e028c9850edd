//! The receiving end of one push stream: reassembly in sequence order, ACKs by consumed offset, the read timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::ConfigError;

use super::wire::{AckHeader, ChunkHeader, ErrorHeader};
use super::{positive, positive_duration, StreamError};

const MIB: u64 = 1024 * 1024;
/// NVFlare's floor and peer-derived cap on buffered out-of-order chunks (byte_receiver.py).
const MIN_OUT_OF_ORDER: usize = 16;
const MAX_PEER_DERIVED_OUT_OF_ORDER: usize = 1024;
/// Window and chunk size assumed for senders that send no `sm__ws`/`sm__cs` (NVFlare's defaults).
const LEGACY_WINDOW: u64 = 64 * MIB;
const LEGACY_CHUNK: u64 = MIB;

/// Settings of a stream receiver. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Largest stream accepted (`streaming_max_blob_size`). Default: no ceiling of our own (NVFlare's is 4 GiB);
    /// a declared size above it is refused before anything is allocated, an undeclared one once data passes it.
    pub max_size: u64,
    /// Longest wait for data while the caller has consumed everything delivered (`streaming_read_timeout`, default
    /// 300 s, as NVFlare). Any chunk with new data re-arms it; time the caller takes to consume does not count.
    pub read_timeout: Duration,
    /// ACK interval for senders that send no `sm__ai` (`streaming_ack_interval`, default 4 MiB: NVFlare's receiver
    /// fallback, small enough for legacy senders' windows).
    pub default_ack_interval: u64,
    /// Out-of-order chunks buffered before the stream fails (`streaming_max_out_seq_chunks`). `None` (default)
    /// derives it from the sender's window as NVFlare does: `max(16, min(ceil(ws / cs) + 1, 1024))`.
    pub max_out_of_order: Option<usize>,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            max_size: u64::MAX,
            read_timeout: Duration::from_secs(300),
            default_ack_interval: 4 * MIB,
            max_out_of_order: None,
        }
    }
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive_duration("streaming_read_timeout", self.read_timeout)?;
        positive("streaming_ack_interval", self.default_ack_interval)?;
        if self.max_out_of_order == Some(0) {
            return Err(ConfigError {
                name: "streaming_max_out_seq_chunks",
                reason: "must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

/// NVFlare's out-of-order tolerance for a sender window: one slot per chunk the window holds, plus the FINAL.
pub fn required_out_of_order(window_size: u64, chunk_size: u64) -> usize {
    if chunk_size == 0 {
        return MIN_OUT_OF_ORDER;
    }
    let chunks = window_size.div_ceil(chunk_size).saturating_add(1);
    let capped = usize::try_from(chunks)
        .unwrap_or(usize::MAX)
        .min(MAX_PEER_DERIVED_OUT_OF_ORDER);
    capped.max(MIN_OUT_OF_ORDER)
}

/// Bytes that arrived in order: store them at `offset` (a slice of the received frame, no copy), then report with
/// [`StreamReceiver::on_consumed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub offset: u64,
    pub data: Bytes,
}

/// Lifecycle of a receiver.
///
/// ```text
///   new ──► Receiving ── FINAL reached in order ──► Received ── all consumed, final ACK polled ──► Complete
///              │                                        │
///              └── bad chunk / read timeout / peer error / abort ──► Failed(cause)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverState {
    Receiving,
    /// Every byte has been delivered; the final ACK waits for the caller to consume them.
    Received,
    Complete,
    Failed(StreamError),
}

impl ReceiverState {
    fn name(&self) -> &'static str {
        match self {
            ReceiverState::Receiving => "Receiving",
            ReceiverState::Received => "Received",
            ReceiverState::Complete => "Complete",
            ReceiverState::Failed(_) => "Failed",
        }
    }
}

#[derive(Debug)]
struct Pending {
    offset: u64,
    is_final: bool,
    data: Bytes,
}

/// One incoming stream. The caller keys receivers by (origin FQCN, stream id), creates one on the first chunk of an
/// unknown key (any seq: frames may be processed out of order) and then feeds every chunk, that first one included,
/// to [`handle_chunk`](Self::handle_chunk).
#[derive(Debug)]
pub struct StreamReceiver {
    id: u64,
    channel: String,
    topic: String,
    total: u64,
    cfg: ReceiverConfig,
    max_out_of_order: usize,
    window_hint: Option<u64>,
    ack_interval: u64,
    ack_interval_from_sender: bool,
    next_seq: u64,
    last_seq: Option<u64>,
    final_seq: Option<u64>,
    delivered: u64,
    out_of_order: BTreeMap<u64, Pending>,
    consumed: u64,
    acked: u64,
    reack: bool,
    state: ReceiverState,
    /// When the receiver last had reason to expect data: a chunk arrived, or the caller caught up.
    idle_since: Instant,
    error_notice: Option<ErrorHeader>,
}

impl StreamReceiver {
    /// A receiver for the stream `first` belongs to. Refuses a declared size above `max_size` (and a bad config)
    /// before anything is allocated; send [`ErrorHeader::new`] for the refusal to the sender.
    pub fn new(first: &ChunkHeader, cfg: ReceiverConfig, now: Instant) -> Result<Self, StreamError> {
        cfg.validate()?;
        if first.total_size > cfg.max_size {
            return Err(StreamError::TooLarge {
                size: first.total_size,
                max: cfg.max_size,
                setting: "streaming_max_blob_size",
            });
        }
        let max_out_of_order = cfg
            .max_out_of_order
            .unwrap_or_else(|| match (first.window_size, first.chunk_size) {
                (Some(ws), Some(cs)) => required_out_of_order(ws, cs),
                _ => required_out_of_order(LEGACY_WINDOW, LEGACY_CHUNK),
            });
        let mut rx = StreamReceiver {
            id: first.stream_id,
            channel: first.channel.clone(),
            topic: first.topic.clone(),
            total: first.total_size,
            ack_interval: cfg.default_ack_interval,
            cfg,
            max_out_of_order,
            window_hint: first.window_size,
            ack_interval_from_sender: false,
            next_seq: 0,
            last_seq: None,
            final_seq: None,
            delivered: 0,
            out_of_order: BTreeMap::new(),
            consumed: 0,
            acked: 0,
            reack: false,
            state: ReceiverState::Receiving,
            idle_since: now,
            error_notice: None,
        };
        rx.adopt_ack_interval(first);
        Ok(rx)
    }

    pub fn stream_id(&self) -> u64 {
        self.id
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The size the sender declared, if it declared one (`sm__sz` > 0): allocate the buffer or file once.
    pub fn expected_size(&self) -> Option<u64> {
        (self.total > 0).then_some(self.total)
    }

    /// Bytes delivered in order so far.
    pub fn received(&self) -> u64 {
        self.delivered
    }

    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The ACK interval in force (the sender's `sm__ai`, clamped to its window, or the default).
    pub fn ack_interval(&self) -> u64 {
        self.ack_interval
    }

    pub fn max_out_of_order(&self) -> usize {
        self.max_out_of_order
    }

    pub fn buffered_chunks(&self) -> usize {
        self.out_of_order.len()
    }

    pub fn state(&self) -> &ReceiverState {
        &self.state
    }

    /// Every byte has been delivered.
    pub fn all_received(&self) -> bool {
        matches!(self.state, ReceiverState::Received | ReceiverState::Complete)
    }

    /// Every byte delivered and consumed, and the final ACK handed out.
    pub fn is_complete(&self) -> bool {
        self.state == ReceiverState::Complete
    }

    pub fn error(&self) -> Option<&StreamError> {
        match &self.state {
            ReceiverState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Takes one chunk; returns the bytes now deliverable in order (none while a gap remains). A protocol
    /// violation fails the stream and [`poll_error`](Self::poll_error) has the notice for the sender. After the
    /// stream ended, duplicates are ignored; after a failure, the cause is returned again.
    pub fn handle_chunk(
        &mut self,
        header: &ChunkHeader,
        payload: Bytes,
        now: Instant,
    ) -> Result<Vec<Delivery>, StreamError> {
        match &self.state {
            ReceiverState::Failed(e) => return Err(e.clone()),
            ReceiverState::Received | ReceiverState::Complete if header.seq < self.next_seq => {
                self.reack |= header.reliable;
                return Ok(Vec::new());
            }
            _ => {}
        }
        match self.accept(header, payload, now) {
            Ok(d) => Ok(d),
            Err(e) => {
                self.fail(e.clone(), true);
                Err(e)
            }
        }
    }

    fn accept(&mut self, h: &ChunkHeader, payload: Bytes, now: Instant) -> Result<Vec<Delivery>, StreamError> {
        let id = self.id;
        let proto = |msg: String| StreamError::Protocol(format!("stream {id}: {msg}"));
        if h.stream_id != id {
            return Err(proto(format!("chunk of stream {} fed to this receiver", h.stream_id)));
        }
        if h.total_size != self.total {
            return Err(proto(format!(
                "sm__sz changed from {} to {} at seq {}",
                self.total, h.total_size, h.seq
            )));
        }
        self.adopt_ack_interval(h);
        if h.seq < self.next_seq {
            self.reack |= h.reliable; // a reliable sender resends until ACKed: tell it again
            return Ok(Vec::new());
        }
        let len = payload.len() as u64;
        let end = h
            .offset
            .checked_add(len)
            .ok_or_else(|| proto(format!("chunk seq {} offset {} overflows", h.seq, h.offset)))?;
        if self.total > 0 && end > self.total {
            return Err(proto(format!(
                "chunk seq {} carries bytes {}..{end}, beyond the declared size of {} bytes (sm__sz)",
                h.seq, h.offset, self.total
            )));
        }
        if end > self.cfg.max_size {
            return Err(StreamError::TooLarge {
                size: end,
                max: self.cfg.max_size,
                setting: "streaming_max_blob_size",
            });
        }
        if let Some(f) = self.final_seq {
            if h.seq > f || (h.is_final() && h.seq != f) {
                return Err(proto(format!(
                    "chunk seq {} conflicts with the FINAL chunk at seq {f}",
                    h.seq
                )));
            }
        }
        if h.is_final() {
            if let Some((&beyond, _)) = self.out_of_order.range(h.seq + 1..).next() {
                return Err(proto(format!(
                    "FINAL chunk at seq {} but seq {beyond} already arrived",
                    h.seq
                )));
            }
            self.final_seq = Some(h.seq);
        }
        if h.seq > self.next_seq {
            if !self.out_of_order.contains_key(&h.seq) {
                if self.out_of_order.len() >= self.max_out_of_order {
                    return Err(proto(format!(
                        "too many out-of-order chunks: {} buffered while waiting for seq {} (sender window sm__ws={:?}, \
                         chunk sm__cs={:?}); raise streaming_max_out_seq_chunks if the sender's window needs more",
                        self.out_of_order.len(),
                        self.next_seq,
                        self.window_hint,
                        h.chunk_size
                    )));
                }
                self.out_of_order.insert(
                    h.seq,
                    Pending {
                        offset: h.offset,
                        is_final: h.is_final(),
                        data: payload,
                    },
                );
                self.idle_since = now;
            }
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        self.deliver(h.seq, h.offset, h.is_final(), payload, &mut out)?;
        while let Some(p) = self.out_of_order.remove(&self.next_seq) {
            self.deliver(self.next_seq, p.offset, p.is_final, p.data, &mut out)?;
        }
        self.idle_since = now;
        Ok(out)
    }

    fn deliver(
        &mut self,
        seq: u64,
        offset: u64,
        is_final: bool,
        data: Bytes,
        out: &mut Vec<Delivery>,
    ) -> Result<(), StreamError> {
        if offset != self.delivered {
            return Err(StreamError::Protocol(format!(
                "stream {}: chunk seq {seq} has offset {offset} (sm__os) but {} bytes came before it",
                self.id, self.delivered
            )));
        }
        let end = self.delivered + data.len() as u64;
        if is_final && self.total > 0 && end != self.total {
            return Err(StreamError::Protocol(format!(
                "stream {}: FINAL chunk seq {seq} ends at {end} bytes but the sender declared {} (sm__sz)",
                self.id, self.total
            )));
        }
        if !data.is_empty() {
            out.push(Delivery { offset, data });
        }
        self.delivered = end;
        self.last_seq = Some(seq);
        self.next_seq = seq + 1;
        if is_final {
            self.state = ReceiverState::Received;
        }
        Ok(())
    }

    /// `sm__ai` comes on seq 0 only; clamp it to the sender's window as NVFlare does.
    fn adopt_ack_interval(&mut self, h: &ChunkHeader) {
        if !self.ack_interval_from_sender {
            if let (0, Some(ai)) = (h.seq, h.ack_interval) {
                self.ack_interval = ai;
                self.ack_interval_from_sender = true;
            }
        }
        if let Some(ws) = self.window_hint {
            self.ack_interval = self.ack_interval.min(ws);
        }
    }

    /// The caller has stored or read everything before `offset`. Lower offsets than before are ignored; offsets
    /// beyond what was delivered are a driver bug.
    pub fn on_consumed(&mut self, offset: u64, now: Instant) -> Result<(), StreamError> {
        if let ReceiverState::Failed(e) = &self.state {
            return Err(e.clone());
        }
        if offset > self.delivered {
            return Err(StreamError::InvalidState {
                stream_id: self.id,
                operation: "consume bytes that were not delivered",
                state: self.state.name(),
            });
        }
        if offset > self.consumed {
            self.consumed = offset;
            if self.consumed == self.delivered {
                self.idle_since = now; // caught up: from now on the wait is for the network
            }
        }
        Ok(())
    }

    /// An ACK to send on `sm__ACK`, when one is due: `ack_interval` bytes consumed since the last, the whole
    /// stream consumed (the final ACK, which completes the receiver), or a reliable sender's resend to answer.
    #[must_use]
    pub fn poll_ack(&mut self) -> Option<AckHeader> {
        let final_due = self.state == ReceiverState::Received && self.consumed == self.delivered;
        let interval_due = self.consumed - self.acked >= self.ack_interval;
        let reack = std::mem::take(&mut self.reack) && self.last_seq.is_some();
        if matches!(self.state, ReceiverState::Failed(_)) || !(final_due || interval_due || reack) {
            return None;
        }
        self.acked = self.acked.max(self.consumed);
        if final_due {
            self.state = ReceiverState::Complete;
        }
        Some(AckHeader {
            stream_id: self.id,
            offset: self.consumed,
            seq: self.last_seq,
        })
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: only while waiting for data with
    /// everything delivered consumed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == ReceiverState::Receiving && self.consumed == self.delivered {
            self.idle_since.checked_add(self.cfg.read_timeout)
        } else {
            None
        }
    }

    /// Fails the stream with [`StreamError::ReadTimeout`] if the read deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), StreamError> {
        match self.poll_timeout() {
            Some(deadline) if deadline <= now => {
                let e = StreamError::ReadTimeout {
                    stream_id: self.id,
                    timeout: self.cfg.read_timeout,
                    received: self.delivered,
                };
                self.fail(e.clone(), true);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// The sender reported an error: the stream fails with [`StreamError::Aborted`] `{ by_peer: true }`.
    pub fn handle_error(&mut self, message: impl Into<String>) {
        if matches!(self.state, ReceiverState::Receiving | ReceiverState::Received) {
            self.fail(
                StreamError::Aborted {
                    by_peer: true,
                    message: message.into(),
                },
                false,
            );
        }
    }

    /// Gives up locally (the consumer failed or was cancelled): the stream fails and the sender is to be told.
    pub fn abort(&mut self, message: impl Into<String>) {
        if matches!(self.state, ReceiverState::Receiving | ReceiverState::Received) {
            self.fail(
                StreamError::Aborted {
                    by_peer: false,
                    message: message.into(),
                },
                true,
            );
        }
    }

    /// The error notice the sender must get after a local failure, once: send it on `sm__ERROR` and, for legacy NVFlare
    /// senders that read errors only from ACKs, also on `sm__ACK` (copy the first chunk's `sm__ri` into it if it had one).
    #[must_use]
    pub fn poll_error(&mut self) -> Option<ErrorHeader> {
        self.error_notice.take()
    }

    fn fail(&mut self, cause: StreamError, notify_peer: bool) {
        if notify_peer {
            let mut notice = ErrorHeader::new(self.id, &cause);
            notice.channel = Some(self.channel.clone());
            notice.topic = Some(self.topic.clone());
            self.error_notice = Some(notice);
        }
        self.out_of_order.clear();
        self.state = ReceiverState::Failed(cause);
    }
}
