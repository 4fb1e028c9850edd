//! The sending end of one push stream: chunking, the byte window and the ACK watchdog.

use std::time::{Duration, Instant};

use crate::config::ConfigError;

use super::window::{Window, WindowError};
use super::wire::{ChunkHeader, ChunkKind, ErrorHeader};
use super::{positive, positive_duration, StreamError};

const MIB: u64 = 1024 * 1024;

/// Settings of a stream sender. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderConfig {
    /// Bytes per chunk message (`streaming_chunk_size`, default 1 MiB, as NVFlare). Every non-final chunk is
    /// exactly this long.
    pub chunk_size: u64,
    /// Most bytes sent and not yet ACKed (`streaming_window_size`, default 16 MiB; NVFlare's is 64 MiB). Bounds the
    /// memory a stream holds in flight on each side (the budget is "payload + 2 windows").
    pub window_size: u64,
    /// Consumed bytes after which the receiver ACKs (`streaming_ack_interval`, default 4 MiB), sent to the receiver
    /// as `sm__ai`. A quarter of the window: the sender keeps ¾ of a window flowing while an ACK travels back, an ACK
    /// costs one small message per 4 chunks, and it equals NVFlare's receiver-side fallback. Must satisfy
    /// `chunk_size + ack_interval <= window_size`, so that whenever the window is too full for the next chunk the
    /// receiver has an ACK due once it consumes what it has: the window can never deadlock.
    pub ack_interval: u64,
    /// Longest wait for ACKs without progress (`streaming_ack_progress_timeout`, default 60 s, as NVFlare) before
    /// the stream fails with [`StreamError::AckStalled`]. Counts only time spent waiting on the receiver (window
    /// full, or everything sent and the final ACK outstanding), so a slow producer never trips it; every ACK that
    /// advances re-arms it, so a slow but moving transfer never times out.
    pub ack_progress_timeout: Duration,
    /// Period of the consecutive-stall rule (`streaming_stall_check_interval`, default 30 s). While the sender
    /// waits on ACKs, each period without ACK progress counts one stalled check; progress resets the count.
    /// 30 s × 3 checks = 90 s, longer than `ack_progress_timeout`: with defaults the 60 s watchdog governs and the
    /// rule never fails a transfer whose ACKs keep coming; shorten it to detect stalls sooner at the risk of
    /// failing transfers on slow links (with a 4 MiB ACK interval, a 15 s rule fails links below ~280 KB/s).
    pub stall_check_interval: Duration,
    /// Consecutive stalled checks that make a stall, [`StreamError::Stalled`] (`sfm_send_stall_consecutive_checks`,
    /// default 3, as NVFlare). 0 turns the rule off.
    pub stall_consecutive_checks: u32,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            chunk_size: MIB,
            window_size: 16 * MIB,
            ack_interval: 4 * MIB,
            ack_progress_timeout: Duration::from_secs(60),
            stall_check_interval: Duration::from_secs(30),
            stall_consecutive_checks: 3,
        }
    }
}

impl SenderConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive("streaming_chunk_size", self.chunk_size)?;
        positive("streaming_window_size", self.window_size)?;
        positive("streaming_ack_interval", self.ack_interval)?;
        positive_duration("streaming_ack_progress_timeout", self.ack_progress_timeout)?;
        positive_duration("streaming_stall_check_interval", self.stall_check_interval)?;
        if self
            .chunk_size
            .checked_add(self.ack_interval)
            .is_none_or(|need| need > self.window_size)
        {
            return Err(ConfigError {
                name: "streaming_window_size",
                reason: format!(
                    "{} bytes is less than streaming_chunk_size ({}) + streaming_ack_interval ({}); the window could \
                     fill before the receiver owes an ACK and the stream would stall",
                    self.window_size, self.chunk_size, self.ack_interval
                ),
            });
        }
        Ok(())
    }
}

/// The next chunk to send: `len` bytes of the source at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPlan {
    pub seq: u64,
    pub offset: u64,
    pub len: u64,
    pub is_final: bool,
}

/// Lifecycle of a sender.
///
/// ```text
///              commit_chunk (CHUNK)
///                 ┌──────┐
///                 ▼      │
///   new ──────► Sending ─┴── commit_chunk (FINAL) ──► AllSent ── ACK of total size ──► Complete
///                 │                                      │
///                 └── watchdog / bad ACK / peer error / abort ──► Failed(cause)
/// ```
/// `AllSent` is where NVFlare's non-reliable sender reports success (the final chunk handed off); `Complete` means
/// the receiver has consumed everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderState {
    Sending,
    AllSent,
    Complete,
    Failed(StreamError),
}

impl SenderState {
    fn name(&self) -> &'static str {
        match self {
            SenderState::Sending => "Sending",
            SenderState::AllSent => "AllSent",
            SenderState::Complete => "Complete",
            SenderState::Failed(_) => "Failed",
        }
    }
}

/// Deadlines of the sender, a table indexed by [`Timer`] (STYLE.md, "timers as data").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timer {
    /// `wait_anchor + ack_progress_timeout`.
    AckProgress = 0,
    /// The next consecutive-stall check.
    StallCheck = 1,
}

#[derive(Clone, Copy, Debug, Default)]
struct TimerTable([Option<Instant>; 2]);

impl TimerTable {
    fn get(&self, t: Timer) -> Option<Instant> {
        self.0[t as usize]
    }
    fn set(&mut self, t: Timer, at: Option<Instant>) {
        self.0[t as usize] = at;
    }
    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

/// One outgoing stream of `total_size` bytes. See the module docs for the driver loop.
#[derive(Debug)]
pub struct StreamSender {
    id: u64,
    channel: String,
    topic: String,
    optional: bool,
    total: u64,
    cfg: SenderConfig,
    window: Window,
    next_seq: u64,
    state: SenderState,
    /// While waiting on ACKs: when the wait began or last saw progress.
    wait_anchor: Option<Instant>,
    stall_checks: u32,
    timers: TimerTable,
    error_notice: Option<ErrorHeader>,
}

impl StreamSender {
    /// A stream of `total_size` bytes to the app's `channel`/`topic`.
    pub fn new(
        stream_id: u64,
        channel: impl Into<String>,
        topic: impl Into<String>,
        total_size: u64,
        cfg: SenderConfig,
        _now: Instant,
    ) -> Result<Self, StreamError> {
        cfg.validate()?;
        Ok(StreamSender {
            id: stream_id,
            channel: channel.into(),
            topic: topic.into(),
            optional: false,
            total: total_size,
            window: Window::new(cfg.window_size),
            cfg,
            next_seq: 0,
            state: SenderState::Sending,
            wait_anchor: None,
            stall_checks: 0,
            timers: TimerTable::default(),
            error_notice: None,
        })
    }

    /// Marks the stream optional (`sm__op`): its failures are logged quietly by NVFlare peers.
    pub fn with_optional(mut self, optional: bool) -> Self {
        self.optional = optional;
        self
    }

    pub fn stream_id(&self) -> u64 {
        self.id
    }

    pub fn total_size(&self) -> u64 {
        self.total
    }

    pub fn config(&self) -> &SenderConfig {
        &self.cfg
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    pub fn state(&self) -> &SenderState {
        &self.state
    }

    /// The final chunk has been handed off (NVFlare's non-reliable success point).
    pub fn all_sent(&self) -> bool {
        matches!(self.state, SenderState::AllSent | SenderState::Complete)
    }

    /// The receiver has ACKed the whole stream.
    pub fn is_complete(&self) -> bool {
        self.state == SenderState::Complete
    }

    pub fn error(&self) -> Option<&StreamError> {
        match &self.state {
            SenderState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The chunk after the last one committed, whether or not the window has room for it.
    fn upcoming(&self) -> Option<ChunkPlan> {
        if self.state != SenderState::Sending {
            return None;
        }
        let offset = self.window.sent();
        let remaining = self.total - offset;
        // The last data always goes in a FINAL chunk: a total that is a multiple of chunk_size ends with a full
        // FINAL, and an empty stream is one empty FINAL.
        let is_final = remaining <= self.cfg.chunk_size;
        let len = if is_final { remaining } else { self.cfg.chunk_size };
        Some(ChunkPlan {
            seq: self.next_seq,
            offset,
            len,
            is_final,
        })
    }

    /// The next chunk to send, or `None` when the window is full (wait for an ACK or a timeout) or everything has
    /// been sent.
    pub fn next_chunk(&self) -> Option<ChunkPlan> {
        self.upcoming().filter(|p| self.window.can_send(p.len))
    }

    /// Takes window space for `plan` (from [`next_chunk`](Self::next_chunk)) and returns the headers to send it
    /// with; send the frame next. If the send then fails, call [`abort`](Self::abort).
    pub fn commit_chunk(&mut self, plan: ChunkPlan, now: Instant) -> Result<ChunkHeader, StreamError> {
        if self.upcoming() != Some(plan) {
            return Err(self.invalid("commit a chunk other than the next one"));
        }
        match self.window.on_sent(plan.len) {
            Ok(()) => {}
            Err(WindowError::Full { .. }) => return Err(self.invalid("commit a chunk the window has no room for")),
            Err(WindowError::Overflow) => return Err(self.invalid("commit beyond 2^64 bytes")),
        }
        self.next_seq += 1;
        if plan.is_final {
            self.state = SenderState::AllSent;
        }
        self.rearm(now, false);
        Ok(ChunkHeader {
            stream_id: self.id,
            data_type: if plan.is_final {
                ChunkKind::Final
            } else {
                ChunkKind::Chunk
            },
            total_size: self.total,
            seq: plan.seq,
            offset: plan.offset,
            channel: self.channel.clone(),
            topic: self.topic.clone(),
            chunk_size: Some(self.cfg.chunk_size),
            window_size: Some(self.cfg.window_size),
            ack_interval: (plan.seq == 0).then_some(self.cfg.ack_interval),
            reliable: false,
            optional: self.optional,
        })
    }

    /// An ACK: the receiver has consumed `offset` bytes. Older ACKs are ignored, as are late ACKs after the stream
    /// ended; an ACK beyond what was sent fails the stream (and [`poll_error`](Self::poll_error) has the notice).
    pub fn handle_ack(&mut self, offset: u64, now: Instant) -> Result<(), StreamError> {
        if !matches!(self.state, SenderState::Sending | SenderState::AllSent) {
            return Ok(());
        }
        let progressed = match self.window.on_ack(offset) {
            Ok(p) => p,
            Err(e) => {
                let e = match e {
                    StreamError::Protocol(m) => StreamError::Protocol(format!("stream {}: {m}", self.id)),
                    other => other,
                };
                self.fail(e.clone(), true);
                return Err(e);
            }
        };
        if self.state == SenderState::AllSent && offset == self.total {
            self.state = SenderState::Complete;
        }
        self.rearm(now, progressed);
        Ok(())
    }

    /// The receiver reported an error: the stream fails with [`StreamError::Aborted`] `{ by_peer: true }`.
    pub fn handle_error(&mut self, message: impl Into<String>) {
        if matches!(self.state, SenderState::Sending | SenderState::AllSent) {
            self.fail(
                StreamError::Aborted {
                    by_peer: true,
                    message: message.into(),
                },
                false,
            );
        }
    }

    /// Gives up locally (cancel, send failure): the stream fails and the receiver is to be told.
    pub fn abort(&mut self, message: impl Into<String>) {
        if matches!(self.state, SenderState::Sending | SenderState::AllSent) {
            self.fail(
                StreamError::Aborted {
                    by_peer: false,
                    message: message.into(),
                },
                true,
            );
        }
    }

    /// The error notice the receiver must get after a local failure, once: send it on `sm__DATA`.
    #[must_use]
    pub fn poll_error(&mut self) -> Option<ErrorHeader> {
        self.error_notice.take()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Runs the ACK watchdog and the consecutive-stall rule. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), StreamError> {
        let Some(anchor) = self.wait_anchor else { return Ok(()) };
        let ack_due = self.timers.get(Timer::AckProgress).filter(|d| *d <= now);
        while let Some(check) = self.timers.get(Timer::StallCheck).filter(|t| *t <= now) {
            if ack_due.is_some_and(|d| d <= check) {
                break; // the watchdog fired first
            }
            self.stall_checks += 1;
            if self.stall_checks >= self.cfg.stall_consecutive_checks {
                let e = StreamError::Stalled {
                    stream_id: self.id,
                    checks: self.stall_checks,
                    interval: self.cfg.stall_check_interval,
                    acked: self.window.acked(),
                    sent: self.window.sent(),
                };
                self.fail(e.clone(), true);
                return Err(e);
            }
            self.timers.set(Timer::StallCheck, self.stall_check_at(anchor));
        }
        if ack_due.is_some() {
            let e = StreamError::AckStalled {
                stream_id: self.id,
                idle: now.saturating_duration_since(anchor),
                timeout: self.cfg.ack_progress_timeout,
                acked: self.window.acked(),
                sent: self.window.sent(),
            };
            self.fail(e.clone(), true);
            return Err(e);
        }
        Ok(())
    }

    /// Whether the sender is waiting on the receiver: the window has no room for the next chunk, or everything is
    /// sent and the final ACK is outstanding.
    fn waiting_on_acks(&self) -> bool {
        match self.state {
            SenderState::Sending => self.upcoming().is_some_and(|p| !self.window.can_send(p.len)),
            SenderState::AllSent => true,
            SenderState::Complete | SenderState::Failed(_) => false,
        }
    }

    /// Re-arms the timers after an event: a wait starts now, progress restarts it, the end of a wait disarms them.
    fn rearm(&mut self, now: Instant, progressed: bool) {
        if !self.waiting_on_acks() {
            self.wait_anchor = None;
        } else if progressed || self.wait_anchor.is_none() {
            self.wait_anchor = Some(now);
        } else {
            return; // still waiting, no progress: deadlines stand
        }
        self.stall_checks = 0;
        let anchor = self.wait_anchor;
        self.timers.set(
            Timer::AckProgress,
            anchor.and_then(|a| a.checked_add(self.cfg.ack_progress_timeout)),
        );
        self.timers
            .set(Timer::StallCheck, anchor.and_then(|a| self.stall_check_at(a)));
    }

    /// When the next stall check falls, given the count so far.
    fn stall_check_at(&self, anchor: Instant) -> Option<Instant> {
        if self.cfg.stall_consecutive_checks == 0 {
            return None;
        }
        let k = self.stall_checks.checked_add(1)?;
        anchor.checked_add(self.cfg.stall_check_interval.checked_mul(k)?)
    }

    fn fail(&mut self, cause: StreamError, notify_peer: bool) {
        if notify_peer {
            self.error_notice = Some(ErrorHeader {
                stream_id: self.id,
                message: cause.to_string(),
                error_type: None,
                offset: Some(self.window.sent()),
                channel: None,
                topic: None,
            });
        }
        self.state = SenderState::Failed(cause);
        self.wait_anchor = None;
        self.timers = TimerTable::default();
    }

    fn invalid(&self, operation: &'static str) -> StreamError {
        StreamError::InvalidState {
            stream_id: self.id,
            operation,
            state: self.state.name(),
        }
    }
}
