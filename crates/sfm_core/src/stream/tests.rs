//! A deterministic harness for push streams (after quinn-proto's `Pair`): one sender and one receiver, virtual
//! time, an in-memory link with latency, bandwidth and jitter (which reorders chunks), and switches to duplicate
//! chunks and to hold or drop ACKs. Every step asserts the window invariant.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::wire::{self, keys};
use super::*;
use crate::frame::{Headers, Value};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// The origin of virtual time: the one clock read in this module, never read again.
fn epoch() -> Instant {
    Instant::now()
}

fn source(len: usize, seed: u64) -> Bytes {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn small_cfg(chunk: u64, window: u64, ack: u64) -> SenderConfig {
    SenderConfig {
        chunk_size: chunk,
        window_size: window,
        ack_interval: ack,
        ..SenderConfig::default()
    }
}

enum ToRx {
    Chunk(ChunkHeader, Bytes),
    Error(ErrorHeader),
}

enum ToTx {
    Ack(AckHeader),
    Error(ErrorHeader),
}

struct Pair {
    now: Instant,
    data: Bytes,
    tx: StreamSender,
    rx: Option<StreamReceiver>,
    rx_cfg: ReceiverConfig,
    sink: Vec<u8>,
    to_rx: Vec<(Instant, u64, ToRx)>,
    to_tx: VecDeque<(Instant, ToTx)>,
    order: u64,
    latency: Duration,
    /// Bytes per second on the data direction; `None` is infinitely fast.
    bandwidth: Option<u64>,
    link_free_at: Instant,
    /// Each chunk is delayed by a pseudo-random extra in `0..jitter`, which reorders them.
    jitter: Duration,
    duplicate: bool,
    hold_acks: bool,
    drop_acks: bool,
    consume: bool,
    rng: u64,
    tx_error: Option<(Instant, StreamError)>,
    rx_error: Option<(Instant, StreamError)>,
    chunks_sent: Vec<ChunkHeader>,
    max_buffered: usize,
}

impl Pair {
    fn new(data: Bytes, cfg: SenderConfig) -> Pair {
        let now = epoch();
        let tx = StreamSender::new(7, "app", "blob", data.len() as u64, cfg, now).unwrap();
        Pair {
            now,
            data,
            tx,
            rx: None,
            rx_cfg: ReceiverConfig::default(),
            sink: Vec::new(),
            to_rx: Vec::new(),
            to_tx: VecDeque::new(),
            order: 0,
            latency: MS,
            bandwidth: None,
            link_free_at: now,
            jitter: Duration::ZERO,
            duplicate: false,
            hold_acks: false,
            drop_acks: false,
            consume: true,
            rng: 0x9e37_79b9_7f4a_7c15,
            tx_error: None,
            rx_error: None,
            chunks_sent: Vec::new(),
            max_buffered: 0,
        }
    }

    fn rand(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn check_invariant(&self) {
        let w = self.tx.window();
        assert!(
            w.outstanding() <= w.size(),
            "window invariant broken: {} unacked > {}",
            w.outstanding(),
            w.size()
        );
        assert!(w.acked() <= w.sent());
    }

    fn send_to_rx(&mut self, msg: ToRx, len: u64) {
        let start = self.now.max(self.link_free_at);
        let wire_time = self
            .bandwidth
            .map_or(Duration::ZERO, |bw| Duration::from_secs_f64(len as f64 / bw as f64));
        self.link_free_at = start + wire_time;
        let extra = if self.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.rand() % self.jitter.as_nanos() as u64)
        };
        self.order += 1;
        self.to_rx
            .push((self.link_free_at + self.latency + extra, self.order, msg));
    }

    fn send_to_tx(&mut self, msg: ToTx) {
        if matches!(msg, ToTx::Ack(_)) && self.drop_acks {
            return;
        }
        self.to_tx.push_back((self.now + self.latency, msg));
    }

    /// Lets the sender send whatever its window allows.
    fn pump_sender(&mut self) {
        while let Some(plan) = self.tx.next_chunk() {
            let header = self.tx.commit_chunk(plan, self.now).unwrap();
            self.check_invariant();
            let payload = self.data.slice(plan.offset as usize..(plan.offset + plan.len) as usize);
            self.chunks_sent.push(header.clone());
            if self.duplicate {
                self.send_to_rx(ToRx::Chunk(header.clone(), payload.clone()), plan.len);
            }
            self.send_to_rx(ToRx::Chunk(header, payload), plan.len);
        }
        if let Some(e) = self.tx.poll_error() {
            self.send_to_rx(ToRx::Error(e), 0);
        }
    }

    fn drain_receiver(&mut self) {
        let Some(rx) = self.rx.as_mut() else { return };
        let mut out = Vec::new();
        while let Some(ack) = rx.poll_ack() {
            out.push(ToTx::Ack(ack));
        }
        if let Some(e) = rx.poll_error() {
            out.push(ToTx::Error(e));
        }
        for m in out {
            self.send_to_tx(m);
        }
    }

    fn deliver_to_rx(&mut self, msg: ToRx) {
        match msg {
            ToRx::Chunk(header, payload) => {
                // Headers travel through the codec, as on the wire.
                let header =
                    ChunkHeader::from_headers(&Headers::decode(header.to_headers().encode()).unwrap()).unwrap();
                if self.rx.is_none() {
                    match StreamReceiver::new(&header, self.rx_cfg.clone(), self.now) {
                        Ok(rx) => self.rx = Some(rx),
                        Err(e) => {
                            self.send_to_tx(ToTx::Error(ErrorHeader::new(header.stream_id, &e)));
                            self.rx_error.get_or_insert((self.now, e));
                            return;
                        }
                    }
                }
                let rx = self.rx.as_mut().unwrap();
                match rx.handle_chunk(&header, payload, self.now) {
                    Ok(deliveries) => {
                        for d in deliveries {
                            let end = d.offset as usize + d.data.len();
                            if self.sink.len() < end {
                                self.sink.resize(end, 0);
                            }
                            self.sink[d.offset as usize..end].copy_from_slice(&d.data);
                            if self.consume {
                                rx.on_consumed(end as u64, self.now).unwrap();
                            }
                        }
                    }
                    Err(e) => {
                        self.rx_error.get_or_insert((self.now, e));
                    }
                }
                self.max_buffered = self.max_buffered.max(rx.buffered_chunks());
            }
            ToRx::Error(e) => {
                if let Some(rx) = self.rx.as_mut() {
                    rx.handle_error(e.message.clone());
                    let err = rx.error().unwrap().clone();
                    self.rx_error.get_or_insert((self.now, err));
                }
            }
        }
        self.drain_receiver();
    }

    fn deliver_to_tx(&mut self, msg: ToTx) {
        match msg {
            ToTx::Ack(ack) => {
                let ack = AckHeader::from_headers(&Headers::decode(ack.to_headers().encode()).unwrap()).unwrap();
                if let Err(e) = self.tx.handle_ack(ack.offset, self.now) {
                    self.tx_error.get_or_insert((self.now, e));
                }
            }
            ToTx::Error(e) => {
                self.tx.handle_error(e.message);
                if let Some(err) = self.tx.error() {
                    self.tx_error.get_or_insert((self.now, err.clone()));
                }
            }
        }
    }

    /// Jumps to the next event and handles everything due then. False when nothing is left to happen.
    fn step(&mut self) -> bool {
        self.pump_sender();
        let next_rx = self.to_rx.iter().map(|(t, _, _)| *t).min();
        let next_tx = if self.hold_acks {
            None
        } else {
            self.to_tx.front().map(|(t, _)| *t)
        };
        let timers = [self.tx.poll_timeout(), self.rx.as_ref().and_then(|r| r.poll_timeout())];
        let Some(next) = [next_rx, next_tx].into_iter().chain(timers).flatten().min() else {
            return false;
        };
        self.now = self.now.max(next);
        if self.tx.poll_timeout().is_some_and(|t| t <= self.now) {
            if let Err(e) = self.tx.handle_timeout(self.now) {
                self.tx_error.get_or_insert((self.now, e));
            }
        }
        if let Some(rx) = self.rx.as_mut() {
            if rx.poll_timeout().is_some_and(|t| t <= self.now) {
                if let Err(e) = rx.handle_timeout(self.now) {
                    self.rx_error.get_or_insert((self.now, e));
                }
            }
        }
        self.drain_receiver();
        while !self.hold_acks && self.to_tx.front().is_some_and(|(t, _)| *t <= self.now) {
            let (_, m) = self.to_tx.pop_front().unwrap();
            self.deliver_to_tx(m);
        }
        loop {
            let due = self
                .to_rx
                .iter()
                .enumerate()
                .filter(|(_, (t, _, _))| *t <= self.now)
                .min_by_key(|(_, (t, o, _))| (*t, *o));
            let Some((i, _)) = due else { break };
            let (_, _, m) = self.to_rx.swap_remove(i);
            self.deliver_to_rx(m);
        }
        self.check_invariant();
        self.pump_sender();
        true
    }

    fn run(&mut self) {
        for _ in 0..10_000_000 {
            if !self.step() {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    fn assert_delivered_exactly(&self) {
        assert_eq!(self.tx_error, None);
        assert_eq!(self.rx_error, None);
        assert!(self.tx.is_complete(), "sender state {:?}", self.tx.state());
        let rx = self.rx.as_ref().expect("receiver created");
        assert!(rx.is_complete(), "receiver state {:?}", rx.state());
        assert_eq!(rx.received(), self.data.len() as u64);
        assert!(self.sink == self.data, "reassembled bytes differ from the source");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// chunking and round trips

#[test]
fn chunking_matches_nvflare() {
    let c = 1000u64;
    let shapes = |total: u64| -> Vec<(u64, u64, bool)> {
        let mut tx = StreamSender::new(1, "c", "t", total, small_cfg(c, 100 * c, c), epoch()).unwrap();
        let mut v = Vec::new();
        while let Some(p) = tx.next_chunk() {
            let h = tx.commit_chunk(p, epoch()).unwrap();
            assert_eq!((h.seq, h.offset, h.is_final()), (p.seq, p.offset, p.is_final));
            v.push((p.offset, p.len, p.is_final));
        }
        assert!(tx.all_sent() && !tx.is_complete());
        v
    };
    assert_eq!(shapes(0), [(0, 0, true)]);
    assert_eq!(shapes(1), [(0, 1, true)]);
    assert_eq!(shapes(c - 1), [(0, c - 1, true)]);
    assert_eq!(shapes(c), [(0, c, true)]);
    assert_eq!(shapes(c + 1), [(0, c, false), (c, 1, true)]);
    assert_eq!(shapes(2 * c), [(0, c, false), (c, c, true)]);
    let many = shapes(10 * c + 7);
    assert_eq!(many.len(), 11);
    assert!(many[..10].iter().all(|&(_, len, fin)| len == c && !fin));
    assert_eq!(many[10], (10 * c, 7, true));
}

#[test]
fn round_trips_of_edge_sizes() {
    let c = 1024usize;
    for size in [0, 1, c - 1, c, c + 1, 10 * c + 7] {
        let mut pair = Pair::new(
            source(size, size as u64 + 1),
            small_cfg(c as u64, 4 * c as u64, 2 * c as u64),
        );
        pair.bandwidth = Some(1_000_000);
        pair.run();
        pair.assert_delivered_exactly();
        let frames = pair.chunks_sent.len();
        assert_eq!(frames, size.div_ceil(c).max(1), "size {size}");
        assert_eq!(pair.chunks_sent.iter().filter(|h| h.is_final()).count(), 1);
        assert!(pair.chunks_sent.last().unwrap().is_final());
        assert_eq!(pair.chunks_sent[0].ack_interval, Some(2 * c as u64));
        assert!(pair.chunks_sent[1..].iter().all(|h| h.ack_interval.is_none()));
    }
}

#[test]
fn reordering_within_the_window_is_reassembled_exactly() {
    let c = 512;
    let mut pair = Pair::new(
        source(200 * c + 13, 3),
        small_cfg(c as u64, 16 * c as u64, 4 * c as u64),
    );
    pair.jitter = 50 * MS;
    pair.run();
    pair.assert_delivered_exactly();
    assert!(
        pair.max_buffered > 3,
        "jitter should have reordered chunks (max buffered {})",
        pair.max_buffered
    );
    assert!(pair.max_buffered <= pair.rx.as_ref().unwrap().max_out_of_order());
}

#[test]
fn duplicates_are_ignored() {
    let c = 256;
    let mut pair = Pair::new(source(37 * c + 5, 4), small_cfg(c as u64, 8 * c as u64, 2 * c as u64));
    pair.duplicate = true;
    pair.jitter = 5 * MS;
    pair.run();
    pair.assert_delivered_exactly();
}

#[test]
fn the_sender_stops_at_a_full_window_until_acks_come() {
    let c = 1000;
    let mut pair = Pair::new(source(100 * c, 5), small_cfg(c as u64, 8 * c as u64, 2 * c as u64));
    pair.hold_acks = true;
    while pair.rx.as_ref().is_none_or(|r| r.received() < 8 * c as u64) {
        assert!(pair.step());
    }
    assert_eq!(pair.tx_error, None);
    assert_eq!(pair.tx.window().sent(), 8 * c as u64);
    assert_eq!(pair.tx.next_chunk(), None);
    assert_eq!(pair.rx.as_ref().unwrap().received(), 8 * c as u64);
    pair.hold_acks = false;
    pair.run();
    pair.assert_delivered_exactly();
}

// ---------------------------------------------------------------------------------------------------------------
// the ACK watchdog and the stall rule

/// A sender with the window full at `t0`.
fn blocked_sender(cfg: SenderConfig, t0: Instant) -> StreamSender {
    let mut tx = StreamSender::new(9, "c", "t", 1 << 30, cfg, t0).unwrap();
    while let Some(p) = tx.next_chunk() {
        let _ = tx.commit_chunk(p, t0).unwrap();
    }
    tx
}

#[test]
fn stalled_acks_trip_the_watchdog_exactly_at_the_timeout_after_the_last_progress() {
    let t0 = epoch();
    let cfg = SenderConfig {
        stall_consecutive_checks: 0,
        ..small_cfg(1000, 8000, 2000)
    };
    let mut tx = blocked_sender(cfg, t0);
    assert_eq!(tx.poll_timeout(), Some(t0 + 60 * S));
    // Progress at t0+10s (still blocked: 500 bytes free, chunks are 1000) re-arms the watchdog.
    tx.handle_ack(500, t0 + 10 * S).unwrap();
    assert_eq!(tx.next_chunk(), None);
    assert_eq!(tx.poll_timeout(), Some(t0 + 70 * S));
    // A stale ACK is not progress.
    tx.handle_ack(300, t0 + 20 * S).unwrap();
    assert_eq!(tx.poll_timeout(), Some(t0 + 70 * S));
    tx.handle_timeout(t0 + 70 * S - Duration::from_nanos(1)).unwrap();
    let err = tx.handle_timeout(t0 + 70 * S).unwrap_err();
    assert!(
        matches!(err, StreamError::AckStalled { idle, acked: 500, sent: 8000, .. } if idle == 60 * S),
        "{err:?}"
    );
    assert!(err.to_string().contains("streaming_ack_progress_timeout"), "{err}");
    assert_eq!(tx.state(), &SenderState::Failed(err.clone()));
    let notice = tx.poll_error().expect("the receiver must be told");
    assert_eq!((notice.stream_id, notice.offset), (9, Some(8000)));
    assert!(notice.message.contains("no ACK progress"));
    assert_eq!(tx.poll_error(), None);
    assert_eq!(tx.poll_timeout(), None);
}

#[test]
fn a_dropped_ack_flow_fails_the_sender_and_then_the_receiver_hears_of_it() {
    let c = 1000;
    let mut pair = Pair::new(source(100 * c, 6), small_cfg(c as u64, 8 * c as u64, 2 * c as u64));
    pair.drop_acks = true;
    pair.latency = 10 * MS;
    let t0 = pair.now;
    pair.run();
    let (t, err) = pair.tx_error.clone().expect("sender must fail");
    // The window filled at t0 and no ACK ever came back.
    assert_eq!(t, t0 + 60 * S);
    assert!(matches!(err, StreamError::AckStalled { .. }), "{err:?}");
    let (t, rx_err) = pair.rx_error.clone().expect("receiver must be told");
    assert_eq!(t, t0 + 60 * S + 10 * MS);
    assert!(matches!(&rx_err, StreamError::Aborted { by_peer: true, message } if message.contains("no ACK progress")));
}

#[test]
fn a_slow_but_moving_transfer_never_times_out() {
    // ACK progress every 0.9 x ack_progress_timeout: the link carries one ACK interval per 54 s.
    let (c, ai) = (1024u64, 4096u64);
    let mut pair = Pair::new(source(1 << 20, 7), small_cfg(c, 16 * c, ai));
    pair.bandwidth = Some(ai * 1000 / 54_000); // 4 KiB per 54 s
    pair.latency = Duration::ZERO;
    let t0 = pair.now;
    pair.run();
    pair.assert_delivered_exactly();
    let took = pair.now - t0;
    assert!(
        took > 200 * 60 * S,
        "the transfer took {took:?}, far longer than the timeout, and never timed out"
    );
}

#[test]
fn slow_consumption_on_the_sender_side_is_not_a_stall() {
    // The sender only waits on the receiver once its window is full; a slow producer is not the receiver's fault.
    let t0 = epoch();
    let mut tx = StreamSender::new(1, "c", "t", 10_000, small_cfg(1000, 8000, 2000), t0).unwrap();
    let p = tx.next_chunk().unwrap();
    let _ = tx.commit_chunk(p, t0).unwrap();
    assert_eq!(tx.poll_timeout(), None);
    tx.handle_timeout(t0 + 3600 * S).unwrap();
    let p = tx.next_chunk().unwrap();
    let _ = tx.commit_chunk(p, t0 + 3600 * S).unwrap();
    assert_eq!(tx.poll_timeout(), None);
}

#[test]
fn consecutive_stall_checks_count_and_reset_on_progress() {
    let t0 = epoch();
    let cfg = SenderConfig {
        stall_check_interval: 5 * S,
        stall_consecutive_checks: 3,
        ..small_cfg(1000, 8000, 2000)
    };
    let mut tx = blocked_sender(cfg, t0);
    assert_eq!(tx.poll_timeout(), Some(t0 + 5 * S));
    tx.handle_timeout(t0 + 5 * S).unwrap();
    assert_eq!(tx.poll_timeout(), Some(t0 + 10 * S));
    tx.handle_timeout(t0 + 10 * S).unwrap();
    // Progress (still blocked) resets the count.
    tx.handle_ack(1, t0 + 12 * S).unwrap();
    assert_eq!(tx.poll_timeout(), Some(t0 + 17 * S));
    tx.handle_timeout(t0 + 17 * S).unwrap();
    tx.handle_timeout(t0 + 22 * S).unwrap();
    tx.handle_timeout(t0 + 27 * S - Duration::from_nanos(1)).unwrap();
    let err = tx.handle_timeout(t0 + 27 * S).unwrap_err();
    assert!(matches!(err, StreamError::Stalled { checks: 3, .. }), "{err:?}");
    assert!(err.is_stall());
    assert!(err.to_string().contains("sfm_send_stall_consecutive_checks"), "{err}");
}

#[test]
fn a_late_timeout_call_counts_every_missed_check_and_the_earlier_rule_wins() {
    let t0 = epoch();
    let cfg = SenderConfig {
        stall_check_interval: 5 * S,
        stall_consecutive_checks: 3,
        ..small_cfg(1000, 8000, 2000)
    };
    let mut tx = blocked_sender(cfg.clone(), t0);
    assert!(matches!(
        tx.handle_timeout(t0 + 100 * S),
        Err(StreamError::Stalled { .. })
    ));
    // With the stall rule slower than the watchdog, the watchdog fires.
    let cfg = SenderConfig {
        stall_check_interval: 30 * S,
        ..cfg
    };
    let mut tx = blocked_sender(cfg, t0);
    assert!(matches!(
        tx.handle_timeout(t0 + 1000 * S),
        Err(StreamError::AckStalled { .. })
    ));
}

#[test]
fn the_final_ack_is_awaited_and_completes_the_sender() {
    let t0 = epoch();
    let mut tx = StreamSender::new(1, "c", "t", 2500, small_cfg(1000, 8000, 2000), t0).unwrap();
    while let Some(p) = tx.next_chunk() {
        let _ = tx.commit_chunk(p, t0).unwrap();
    }
    assert!(tx.all_sent() && !tx.is_complete());
    assert_eq!(
        tx.poll_timeout(),
        Some(t0 + 30 * S),
        "waiting for the final ACK is watched"
    );
    tx.handle_ack(2000, t0 + S).unwrap();
    assert!(!tx.is_complete());
    tx.handle_ack(2500, t0 + 2 * S).unwrap();
    assert!(tx.is_complete());
    assert_eq!(tx.poll_timeout(), None);
    tx.handle_ack(2500, t0 + 3 * S).unwrap(); // late duplicate
                                              // An empty stream completes on the ACK of offset 0 after its FINAL.
    let mut tx = StreamSender::new(2, "c", "t", 0, small_cfg(1000, 8000, 2000), t0).unwrap();
    tx.handle_ack(0, t0).unwrap();
    assert_eq!(tx.state(), &SenderState::Sending);
    let p = tx.next_chunk().unwrap();
    let _ = tx.commit_chunk(p, t0).unwrap();
    tx.handle_ack(0, t0).unwrap();
    assert!(tx.is_complete());
}

// ---------------------------------------------------------------------------------------------------------------
// the receiver

fn chunk(seq: u64, offset: u64, total: u64, is_final: bool) -> ChunkHeader {
    ChunkHeader {
        stream_id: 5,
        data_type: if is_final { ChunkKind::Final } else { ChunkKind::Chunk },
        total_size: total,
        seq,
        offset,
        channel: "app".into(),
        topic: "blob".into(),
        chunk_size: Some(100),
        window_size: Some(400),
        ack_interval: (seq == 0).then_some(200),
        reliable: false,
        optional: false,
    }
}

fn bytes(n: usize) -> Bytes {
    Bytes::from(vec![0xab; n])
}

#[test]
fn the_read_timeout_fires_only_while_idle() {
    let t0 = epoch();
    let h0 = chunk(0, 0, 1000, false);
    let mut rx = StreamReceiver::new(&h0, ReceiverConfig::default(), t0).unwrap();
    assert_eq!(rx.poll_timeout(), Some(t0 + 300 * S));
    let d = rx.handle_chunk(&h0, bytes(100), t0 + 10 * S).unwrap();
    assert_eq!(
        d,
        [Delivery {
            offset: 0,
            data: bytes(100)
        }]
    );
    // Not consumed yet: the wait is on the caller, not the network.
    assert_eq!(rx.poll_timeout(), None);
    rx.handle_timeout(t0 + 10_000 * S).unwrap();
    rx.on_consumed(100, t0 + 1000 * S).unwrap();
    assert_eq!(rx.poll_timeout(), Some(t0 + 1300 * S));
    // Data re-arms it, out-of-order data too.
    let _ = rx
        .handle_chunk(&chunk(2, 200, 1000, false), bytes(100), t0 + 1200 * S)
        .unwrap();
    assert_eq!(rx.poll_timeout(), Some(t0 + 1500 * S));
    rx.handle_timeout(t0 + 1500 * S - Duration::from_nanos(1)).unwrap();
    let err = rx.handle_timeout(t0 + 1500 * S).unwrap_err();
    assert!(matches!(err, StreamError::ReadTimeout { received: 100, .. }), "{err:?}");
    assert!(err.to_string().contains("streaming_read_timeout"), "{err}");
    let notice = rx.poll_error().unwrap();
    assert_eq!(
        (notice.channel.as_deref(), notice.error_type.as_deref()),
        (Some("app"), Some("StreamError"))
    );
    // Later chunks get the cause back.
    assert_eq!(
        rx.handle_chunk(&chunk(1, 100, 1000, false), bytes(100), t0 + 1501 * S),
        Err(err)
    );
}

#[test]
fn acks_follow_consumption_and_the_final_ack_completes() {
    let t0 = epoch();
    let mut rx = StreamReceiver::new(&chunk(1, 100, 350, false), ReceiverConfig::default(), t0).unwrap();
    assert_eq!(rx.ack_interval(), 400, "the default is clamped to sm__ws");
    // seq 1 first (buffered), then seq 0 with sm__ai=200.
    assert!(rx
        .handle_chunk(&chunk(1, 100, 350, false), bytes(100), t0)
        .unwrap()
        .is_empty());
    let d = rx.handle_chunk(&chunk(0, 0, 350, false), bytes(100), t0).unwrap();
    assert_eq!(
        d.iter().map(|d| (d.offset, d.data.len())).collect::<Vec<_>>(),
        [(0, 100), (100, 100)]
    );
    assert_eq!(rx.ack_interval(), 200);
    rx.on_consumed(150, t0).unwrap();
    assert_eq!(rx.poll_ack(), None);
    rx.on_consumed(200, t0).unwrap();
    assert_eq!(
        rx.poll_ack(),
        Some(AckHeader {
            stream_id: 5,
            offset: 200,
            seq: Some(1)
        })
    );
    assert_eq!(rx.poll_ack(), None);
    let d = rx.handle_chunk(&chunk(2, 200, 350, true), bytes(150), t0).unwrap();
    assert_eq!(d.len(), 1);
    assert!(rx.all_received() && !rx.is_complete());
    assert_eq!(rx.poll_ack(), None, "the final ACK waits for consumption");
    rx.on_consumed(350, t0).unwrap();
    assert_eq!(
        rx.poll_ack(),
        Some(AckHeader {
            stream_id: 5,
            offset: 350,
            seq: Some(2)
        })
    );
    assert!(rx.is_complete());
    assert_eq!(rx.poll_ack(), None);
    assert_eq!(rx.poll_timeout(), None);
    // A late duplicate is ignored.
    assert!(rx
        .handle_chunk(&chunk(1, 100, 350, false), bytes(100), t0)
        .unwrap()
        .is_empty());
}

#[test]
fn protocol_violations_fail_the_receiver_with_helpful_text() {
    let t0 = epoch();
    let cfg = ReceiverConfig::default();
    let fails = |first: ChunkHeader, feed: Vec<(ChunkHeader, usize)>| -> String {
        let mut rx = StreamReceiver::new(&first, cfg.clone(), t0).unwrap();
        for (h, n) in feed {
            if let Err(e) = rx.handle_chunk(&h, bytes(n), t0) {
                assert!(matches!(e, StreamError::Protocol(_)), "{e:?}");
                assert!(rx.poll_error().is_some());
                return e.to_string();
            }
        }
        panic!("no error");
    };
    // Overrun: data beyond the declared size.
    let msg = fails(
        chunk(0, 0, 150, false),
        vec![(chunk(0, 0, 150, false), 100), (chunk(1, 100, 150, true), 100)],
    );
    assert!(msg.contains("beyond the declared size of 150 bytes"), "{msg}");
    // Bad offset.
    let msg = fails(
        chunk(0, 0, 1000, false),
        vec![(chunk(0, 0, 1000, false), 100), (chunk(1, 150, 1000, false), 100)],
    );
    assert!(
        msg.contains("offset 150") && msg.contains("100 bytes came before it"),
        "{msg}"
    );
    // FINAL short of the declared size.
    let msg = fails(chunk(0, 0, 1000, true), vec![(chunk(0, 0, 1000, true), 100)]);
    assert!(msg.contains("declared 1000"), "{msg}");
    // Too many out-of-order chunks: sm__ws=400/sm__cs=100 gives max(16, 5) = 16 slots.
    let feed = (1..=17).map(|s| (chunk(s, s * 100, 100_000, false), 100)).collect();
    let msg = fails(chunk(1, 100, 100_000, false), feed);
    assert!(
        msg.contains("too many out-of-order chunks: 16") && msg.contains("streaming_max_out_seq_chunks"),
        "{msg}"
    );
    // Size changed mid-stream, chunk after FINAL.
    let msg = fails(chunk(0, 0, 1000, false), vec![(chunk(0, 0, 999, false), 100)]);
    assert!(msg.contains("sm__sz changed"), "{msg}");
    let msg = fails(
        chunk(0, 0, 0, false),
        vec![(chunk(1, 100, 0, true), 100), (chunk(2, 200, 0, false), 100)],
    );
    assert!(msg.contains("FINAL chunk at seq 1"), "{msg}");
}

#[test]
fn a_stream_larger_than_the_limit_is_refused_before_allocation() {
    let t0 = epoch();
    let cfg = ReceiverConfig {
        max_size: 1000,
        ..ReceiverConfig::default()
    };
    let err = StreamReceiver::new(&chunk(0, 0, 1001, false), cfg.clone(), t0).unwrap_err();
    assert_eq!(
        err,
        StreamError::TooLarge {
            size: 1001,
            max: 1000,
            setting: "streaming_max_blob_size"
        }
    );
    assert!(err.to_string().contains("raise streaming_max_blob_size"), "{err}");
    let notice = ErrorHeader::new(3, &err);
    assert_eq!(notice.error_type.as_deref(), Some("BlobSizeError"));
    // An undeclared size (sm__sz = 0) is checked as data arrives.
    let mut rx = StreamReceiver::new(&chunk(0, 0, 0, false), cfg, t0).unwrap();
    assert_eq!(rx.expected_size(), None);
    let mut h = chunk(0, 0, 0, false);
    h.chunk_size = Some(600);
    h.window_size = Some(6000);
    rx.handle_chunk(&h, bytes(600), t0).unwrap();
    let err = rx.handle_chunk(&chunk(1, 600, 0, false), bytes(600), t0).unwrap_err();
    assert!(matches!(err, StreamError::TooLarge { size: 1200, .. }), "{err:?}");
}

#[test]
fn an_unknown_size_stream_ends_at_its_final_chunk() {
    let mut pair = Pair::new(Bytes::new(), small_cfg(100, 400, 200));
    pair.run();
    pair.assert_delivered_exactly();
    let t0 = epoch();
    let mut rx = StreamReceiver::new(&chunk(0, 0, 0, false), ReceiverConfig::default(), t0).unwrap();
    let _ = rx.handle_chunk(&chunk(0, 0, 0, false), bytes(100), t0).unwrap();
    let _ = rx.handle_chunk(&chunk(1, 100, 0, true), bytes(30), t0).unwrap();
    assert!(rx.all_received());
    assert_eq!(rx.received(), 130);
}

// ---------------------------------------------------------------------------------------------------------------
// errors and aborts

#[test]
fn an_abort_on_either_side_reaches_the_other_with_its_message() {
    let c = 1000;
    let mut pair = Pair::new(source(50 * c, 8), small_cfg(c as u64, 8 * c as u64, 2 * c as u64));
    pair.bandwidth = Some(1_000_000);
    while pair.rx.as_ref().is_none_or(|r| r.received() < 10 * c as u64) {
        assert!(pair.step());
    }
    pair.tx.abort("cancelled by the user");
    pair.run();
    let (_, e) = pair.rx_error.clone().unwrap();
    assert!(matches!(&e, StreamError::Aborted { by_peer: true, message } if message.contains("cancelled by the user")));
    assert_eq!(
        pair.tx.error(),
        Some(&StreamError::Aborted {
            by_peer: false,
            message: "cancelled by the user".into()
        })
    );

    let mut pair = Pair::new(source(50 * c, 9), small_cfg(c as u64, 8 * c as u64, 2 * c as u64));
    pair.bandwidth = Some(1_000_000);
    while pair.rx.as_ref().is_none_or(|r| r.received() < 10 * c as u64) {
        assert!(pair.step());
    }
    pair.rx.as_mut().unwrap().abort("disk full");
    pair.run();
    let (_, e) = pair.tx_error.clone().unwrap();
    assert!(
        matches!(&e, StreamError::Aborted { by_peer: true, message } if message.contains("disk full")),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("stream aborted by the peer"));
}

#[test]
fn a_too_large_stream_is_rejected_and_the_sender_learns_why() {
    let mut pair = Pair::new(source(5000, 10), small_cfg(1000, 4000, 2000));
    pair.rx_cfg.max_size = 4096;
    pair.run();
    let (_, e) = pair.tx_error.clone().unwrap();
    assert!(e.to_string().contains("streaming_max_blob_size"), "{e}");
}

#[test]
fn an_ack_beyond_what_was_sent_is_a_protocol_error() {
    let t0 = epoch();
    let mut tx = blocked_sender(small_cfg(1000, 8000, 2000), t0);
    let err = tx.handle_ack(9000, t0).unwrap_err();
    assert!(
        err.to_string()
            .contains("ACK for offset 9000 is beyond the 8000 bytes sent"),
        "{err}"
    );
    assert!(tx.poll_error().is_some());
    tx.handle_ack(100, t0).unwrap(); // late ACKs after the end are ignored
}

#[test]
fn illegal_transitions_are_errors_not_panics() {
    let t0 = epoch();
    let mut tx = StreamSender::new(1, "c", "t", 1500, small_cfg(1000, 4000, 2000), t0).unwrap();
    let first = tx.next_chunk().unwrap();
    let bogus = ChunkPlan { len: 7, ..first };
    assert!(matches!(
        tx.commit_chunk(bogus, t0),
        Err(StreamError::InvalidState { state: "Sending", .. })
    ));
    let _ = tx.commit_chunk(first, t0).unwrap();
    assert!(tx.commit_chunk(first, t0).is_err(), "a chunk cannot be committed twice");
    let last = tx.next_chunk().unwrap();
    let _ = tx.commit_chunk(last, t0).unwrap();
    let err = tx.commit_chunk(last, t0).unwrap_err();
    assert!(err.to_string().contains("in state AllSent"), "{err}");

    let h = chunk(0, 0, 1000, false);
    let mut rx = StreamReceiver::new(&h, ReceiverConfig::default(), t0).unwrap();
    let _ = rx.handle_chunk(&h, bytes(100), t0).unwrap();
    assert!(matches!(rx.on_consumed(101, t0), Err(StreamError::InvalidState { .. })));
    rx.on_consumed(50, t0).unwrap();
    rx.on_consumed(20, t0).unwrap();
    assert_eq!(rx.consumed(), 50);
}

#[test]
fn configs_are_validated_with_the_setting_named() {
    SenderConfig::default().validate().unwrap();
    ReceiverConfig::default().validate().unwrap();
    let err = SenderConfig {
        window_size: 4 << 20,
        ..SenderConfig::default()
    }
    .validate()
    .unwrap_err();
    assert_eq!(err.name, "streaming_window_size");
    let err = StreamSender::new(
        1,
        "c",
        "t",
        1,
        SenderConfig {
            chunk_size: 0,
            ..SenderConfig::default()
        },
        epoch(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("streaming_chunk_size"), "{err}");
}

#[test]
fn out_of_order_capacity_follows_nvflare() {
    use super::receiver::required_out_of_order;
    let mib = 1 << 20;
    assert_eq!(required_out_of_order(64 * mib, mib), 65);
    assert_eq!(required_out_of_order(16 * mib, mib), 17);
    assert_eq!(required_out_of_order(4 * mib, mib), 16);
    assert_eq!(required_out_of_order(1 << 40, 1), 1024);
    let t0 = epoch();
    let mut legacy = chunk(3, 300, 0, false);
    legacy.chunk_size = None;
    legacy.window_size = None;
    assert_eq!(
        StreamReceiver::new(&legacy, ReceiverConfig::default(), t0)
            .unwrap()
            .max_out_of_order(),
        65
    );
    let cfg = ReceiverConfig {
        max_out_of_order: Some(3),
        ..ReceiverConfig::default()
    };
    assert_eq!(StreamReceiver::new(&legacy, cfg, t0).unwrap().max_out_of_order(), 3);
}

// ---------------------------------------------------------------------------------------------------------------
// wire

#[test]
fn chunk_headers_use_nvflare_names_order_and_types() {
    let h = ChunkHeader {
        stream_id: 1_700_000_000_123_456,
        data_type: ChunkKind::Chunk,
        total_size: 5 << 30,
        seq: 0,
        offset: 0,
        channel: "server_command".into(),
        topic: "submit_update".into(),
        chunk_size: Some(1 << 20),
        window_size: Some(16 << 20),
        ack_interval: Some(4 << 20),
        reliable: false,
        optional: true,
    };
    let headers = h.to_headers();
    let keys_in_order: Vec<&str> = headers.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys_in_order,
        [
            "sm__ch", "sm__tp", "sm__sz", "sm__id", "sm__dt", "sm__sq", "sm__os", "sm__rs", "sm__op", "sm__cs",
            "sm__ws", "sm__ai"
        ]
    );
    assert_eq!(headers.get(keys::SIZE), Some(&Value::Int(5 << 30)));
    assert_eq!(headers.get(keys::DATA_TYPE), Some(&Value::Int(1)));
    assert_eq!(headers.get(keys::STREAM_ID), Some(&Value::Int(1_700_000_000_123_456)));
    assert_eq!(headers.get(keys::RELIABLE), Some(&Value::Bool(false)));
    assert_eq!(headers.get(keys::OPTIONAL), Some(&Value::Bool(true)));
    assert_eq!(headers.get(keys::CHANNEL), Some(&Value::Str("server_command".into())));
    let decoded = Headers::decode(headers.encode()).unwrap();
    assert_eq!(ChunkHeader::from_headers(&decoded).unwrap(), h);
    assert_eq!(
        DataMessage::from_headers(&decoded).unwrap(),
        DataMessage::Chunk(h.clone())
    );

    // A later FINAL chunk carries no sm__ai; app headers already present are kept.
    let fin = ChunkHeader {
        data_type: ChunkKind::Final,
        seq: 9,
        offset: 9 << 20,
        ack_interval: None,
        ..h
    };
    let mut app = Headers::new();
    app.insert("cn__origin", "site-1");
    app.insert(keys::REQ_ID, "r-1");
    fin.write_to(&mut app);
    assert_eq!(app.get(keys::DATA_TYPE), Some(&Value::Int(2)));
    assert!(!app.contains_key(keys::ACK_INTERVAL));
    assert_eq!(app.get_str("cn__origin"), Some("site-1"));
    assert_eq!(ChunkHeader::from_headers(&app).unwrap(), fin);
}

#[test]
fn ack_and_error_headers_round_trip() {
    let ack = AckHeader {
        stream_id: 42,
        offset: 4 << 20,
        seq: Some(3),
    };
    let h = Headers::decode(ack.to_headers().encode()).unwrap();
    assert_eq!(h.get(keys::DATA_TYPE), Some(&Value::Int(3)));
    assert_eq!(AckMessage::from_headers(&h).unwrap(), AckMessage::Ack(ack));
    // NVFlare's receiver starts its seq at -1.
    let mut h = Headers::new();
    h.insert(keys::STREAM_ID, 42);
    h.insert(keys::OFFSET, 0);
    h.insert(keys::SEQUENCE, -1);
    assert_eq!(AckHeader::from_headers(&h).unwrap().seq, None);

    // Receiver errors, as NVFlare sends them on sm__ERROR and sm__ACK.
    let err = ErrorHeader {
        stream_id: 42,
        message: "No callback is registered for a/b".into(),
        error_type: Some("StreamError".into()),
        offset: None,
        channel: Some("a".into()),
        topic: Some("b".into()),
    };
    let h = Headers::decode(err.to_headers().encode()).unwrap();
    assert_eq!(h.get(keys::DATA_TYPE), Some(&Value::Int(6)));
    assert_eq!(
        h.get(keys::ERROR_MSG),
        Some(&Value::Str("No callback is registered for a/b".into()))
    );
    assert_eq!(ErrorHeader::from_headers(&h).unwrap(), err);
    assert_eq!(AckMessage::from_headers(&h).unwrap(), AckMessage::Error(err));
    // Sender errors come on sm__DATA with dt=6, sm__os and sm__em only.
    let mut h = Headers::new();
    h.insert(keys::STREAM_ID, 42);
    h.insert(keys::DATA_TYPE, 6);
    h.insert(keys::OFFSET, 1000);
    h.insert(keys::ERROR_MSG, "boom");
    let DataMessage::Error(e) = DataMessage::from_headers(&h).unwrap() else {
        panic!()
    };
    assert_eq!((e.message.as_str(), e.offset, e.error_type), ("boom", Some(1000), None));
}

#[test]
fn bad_headers_name_the_key() {
    let good = chunk(0, 0, 10, false).to_headers();
    let broken = |f: &dyn Fn(&mut Headers)| {
        let mut h = good.clone();
        f(&mut h);
        ChunkHeader::from_headers(&h).unwrap_err().to_string()
    };
    assert!(broken(&|h| {
        h.remove(keys::STREAM_ID);
    })
    .contains("missing the sm__id header"));
    assert!(broken(&|h| {
        h.remove(keys::OFFSET);
    })
    .contains("sm__os"));
    assert!(broken(&|h| {
        h.insert(keys::SEQUENCE, "3");
    })
    .contains("sm__sq"));
    assert!(broken(&|h| {
        h.insert(keys::SIZE, -1);
    })
    .contains("sm__sz is -1"));
    assert!(broken(&|h| {
        h.insert(keys::RELIABLE, 1);
    })
    .contains("sm__rs"));
    assert!(broken(&|h| {
        h.insert(keys::CHANNEL, 5);
    })
    .contains("sm__ch"));
    assert!(broken(&|h| {
        h.insert(keys::DATA_TYPE, 3);
    })
    .contains("expected 1 (CHUNK) or 2 (FINAL)"));
    assert!(broken(&|h| {
        h.insert(keys::CHUNK_SIZE, 0);
    })
    .contains("sm__cs is 0"));
}

#[test]
fn stream_ids_are_sequential_from_the_base() {
    let ids = StreamIdGen::new(1_700_000_000_000_000);
    assert_eq!(ids.next_id(), 1_700_000_000_000_000);
    assert_eq!(ids.next_id(), 1_700_000_000_000_001);
    let wrap = wire::StreamIdGen::new(i64::MAX as u64);
    assert_eq!(wrap.next_id(), i64::MAX as u64);
    assert_eq!(wrap.next_id(), 0, "ids stay below 2^63");
}

// ---------------------------------------------------------------------------------------------------------------
// property

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_stream_arrives_whole_and_the_window_holds(
        size in 0usize..40_000,
        chunk in 16u64..2048,
        extra_window_chunks in 0u64..12,
        ack_frac in 1u64..=8,
        jitter_ms in 0u64..40,
        duplicate in any::<bool>(),
        seed in any::<u64>(),
        bandwidth in prop::option::of(100_000u64..10_000_000),
    ) {
        // window >= chunk + ack_interval, ack_interval anywhere in 1..=window - chunk.
        let ack = (chunk * ack_frac / 2).max(1);
        let window = chunk + ack + extra_window_chunks * chunk;
        let mut pair = Pair::new(source(size, seed), small_cfg(chunk, window, ack));
        pair.rng = seed;
        pair.jitter = Duration::from_millis(jitter_ms);
        pair.duplicate = duplicate;
        pair.bandwidth = bandwidth;
        pair.run();
        pair.assert_delivered_exactly();
        prop_assert!(pair.max_buffered <= pair.rx.as_ref().unwrap().max_out_of_order());
    }
}
