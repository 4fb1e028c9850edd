//! The receiver side: pulls one reference from its owner into a sink, retrying requests that time out or lose
//! their connection.
//!
//! Byte sources whose owner tells their layout (ours do) are pulled with several requests in flight; the pieces
//! still reach the sink in order. Other sources (NVFlare's, item sources) are pulled one request at a time, each
//! echoing the state of the previous reply.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::retry::RetryPolicy;
use super::sink::{Piece, Sink};
use super::wire::{self, Data, Layout, Position, Reply, Request};
use super::{DownloadConfig, DownloadError};
use crate::cell::{encoding, keys, Cell, ReturnCode};
use crate::frame::Headers;

/// Stops a download at once, from any thread; retries and backoff waits included.
#[derive(Clone, Debug)]
pub struct AbortSignal {
    state: Arc<watch::Sender<bool>>,
}

impl Default for AbortSignal {
    fn default() -> Self {
        AbortSignal {
            state: Arc::new(watch::channel(false).0),
        }
    }
}

impl AbortSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn trigger(&self) {
        self.state.send_replace(true);
    }

    /// Clears the signal, for reuse by later downloads.
    pub fn reset(&self) {
        self.state.send_replace(false);
    }

    pub fn is_triggered(&self) -> bool {
        *self.state.borrow()
    }

    /// Resolves once triggered.
    pub async fn triggered(&self) {
        let mut rx = self.state.subscribe();
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// Called with (bytes received, total bytes if known).
pub type ProgressCallback = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// How to download.
#[derive(Clone)]
pub struct DownloadOptions {
    pub per_request_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_inflight: usize,
    pub abort: AbortSignal,
    pub progress: Option<ProgressCallback>,
    /// Least time between two progress calls (the last one, at the end, always comes).
    pub progress_interval: Duration,
}

impl DownloadOptions {
    pub fn from_config(config: &DownloadConfig) -> Self {
        DownloadOptions {
            per_request_timeout: config.per_request_timeout,
            retry: config.retry_policy(),
            max_inflight: config.max_inflight,
            abort: AbortSignal::new(),
            progress: None,
            progress_interval: Duration::from_secs(1),
        }
    }
}

/// What a finished download did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DownloadStats {
    pub bytes: u64,
    pub total_size: Option<u64>,
    pub requests: u64,
    pub retries: u64,
}

/// What a [`DownloadReader`] gets from its download task.
enum Event {
    Begin(Option<u64>),
    Piece(Piece),
}

/// Hands pieces to a [`DownloadReader`]; waits when the reader is `capacity` pieces behind.
struct ChannelSink {
    tx: mpsc::Sender<Result<Event, DownloadError>>,
}

impl ChannelSink {
    async fn send(&mut self, event: Event) -> Result<(), String> {
        self.tx
            .send(Ok(event))
            .await
            .map_err(|_| "the reader was closed".to_string())
    }
}

impl Sink for ChannelSink {
    async fn begin(&mut self, total_size: Option<u64>) -> Result<(), String> {
        self.send(Event::Begin(total_size)).await
    }

    async fn put(&mut self, piece: Piece) -> Result<(), String> {
        self.send(Event::Piece(piece)).await
    }

    async fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A download read piece by piece as it arrives. Dropping it aborts the download.
pub struct DownloadReader {
    rx: mpsc::Receiver<Result<Event, DownloadError>>,
    total_size: Option<u64>,
    abort: AbortSignal,
    stats: Arc<Mutex<Option<DownloadStats>>>,
}

impl DownloadReader {
    /// Starts pulling `ref_id` from `owner`; at most `capacity` pieces wait unread.
    pub fn start(cell: &Cell, owner: &str, ref_id: &str, mut options: DownloadOptions, capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        // The reader stops its download with a signal of its own: the caller's may be shared (a job's abort
        // signal), and dropping one reader must not trigger it for everything else that watches it.
        let abort = AbortSignal::new();
        let caller = std::mem::replace(&mut options.abort, abort.clone());
        let stop = abort.clone();
        cell.runtime().spawn(async move {
            tokio::select! {
                _ = caller.triggered() => stop.trigger(),
                _ = stop.triggered() => {}
            }
        });
        let stats = Arc::new(Mutex::new(None));
        let (cell, owner, ref_id, done) = (cell.clone(), owner.to_string(), ref_id.to_string(), stats.clone());
        cell.runtime().clone().spawn(async move {
            let mut sink = ChannelSink { tx: tx.clone() };
            match download(&cell, &owner, &ref_id, &mut sink, options).await {
                Ok(s) => *done.lock().expect("stats lock") = Some(s),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
            }
        });
        DownloadReader {
            rx,
            total_size: None,
            abort,
            stats,
        }
    }

    /// The next piece, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Piece>, DownloadError> {
        loop {
            match self.rx.recv().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(Event::Begin(total))) => self.total_size = total,
                Some(Ok(Event::Piece(piece))) => return Ok(Some(piece)),
            }
        }
    }

    /// The total size, once the first piece arrived and if the owner told it.
    pub fn total_size(&self) -> Option<u64> {
        self.total_size
    }

    /// What the download did, once it ended successfully.
    pub fn stats(&self) -> Option<DownloadStats> {
        self.stats.lock().expect("stats lock").clone()
    }
}

impl Drop for DownloadReader {
    fn drop(&mut self) {
        self.abort.trigger();
    }
}

/// Pulls `ref_id` from `owner` into `sink`. On failure or abort the owner is told (best effort), so it frees the
/// receiver's state at once.
pub async fn download<S: Sink>(
    cell: &Cell,
    owner: &str,
    ref_id: &str,
    sink: &mut S,
    options: DownloadOptions,
) -> Result<DownloadStats, DownloadError> {
    let asker = Arc::new(Asker {
        cell: cell.clone(),
        owner: owner.to_string(),
        ref_id: ref_id.to_string(),
        requests: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        owner_ignores_cancel: AtomicBool::new(false),
        options,
    });
    let mut run = Run {
        asker: asker.clone(),
        bytes: 0,
        total_size: None,
        last_progress: None,
    };
    let outcome = run.drive(sink).await;
    match outcome {
        Ok(()) => Ok(DownloadStats {
            bytes: run.bytes,
            total_size: run.total_size,
            requests: asker.requests.load(Ordering::Relaxed),
            retries: asker.retries.load(Ordering::Relaxed),
        }),
        Err(e) => {
            asker.cancel();
            Err(e)
        }
    }
}

/// Sends the requests of one download.
struct Asker {
    cell: Cell,
    owner: String,
    ref_id: String,
    requests: AtomicU64,
    retries: AtomicU64,
    /// Set when the owner's replies show it would take a cancel message for a new request (NVFlare 2.7.2). Before
    /// any reply it is unknown, and a cancel costs such an owner one chunk read at worst.
    owner_ignores_cancel: AtomicBool,
    options: DownloadOptions,
}

impl Asker {
    fn headers() -> Headers {
        let mut headers = Headers::new();
        headers.insert(keys::PAYLOAD_ENCODING, encoding::FOBS);
        headers
    }

    fn aborted(&self) -> DownloadError {
        DownloadError::Aborted {
            ref_id: self.ref_id.clone(),
        }
    }

    /// Asks for the piece at `position`, retrying transient failures as the policy allows.
    async fn ask(&self, position: Position) -> Result<Reply, DownloadError> {
        let payload = Request {
            ref_id: self.ref_id.clone(),
            position,
            cancel: false,
        }
        .encode();
        let abort = &self.options.abort;
        let mut retry = 0;
        loop {
            if abort.is_triggered() {
                return Err(self.aborted());
            }
            let request = self.cell.request(
                &self.owner,
                wire::CHANNEL,
                wire::TOPIC,
                Self::headers(),
                payload.clone(),
                self.options.per_request_timeout,
            );
            let reply = tokio::select! {
                reply = request => reply,
                _ = abort.triggered() => return Err(self.aborted()),
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            match reply.return_code() {
                ReturnCode::Ok => {
                    return Reply::decode(&reply.payload).map_err(|e| DownloadError::Protocol {
                        ref_id: self.ref_id.clone(),
                        reason: e.to_string(),
                    })
                }
                code if RetryPolicy::is_transient(&code) => {
                    retry += 1;
                    let Some(wait) = self.options.retry.backoff(retry) else {
                        return Err(self.gave_up(code, reply.error(), retry));
                    };
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        ref_id = %self.ref_id, owner = %self.owner,
                        "download request failed ({code}: {}); retry {retry} of {} in {wait:?}",
                        reply.error().unwrap_or(""),
                        self.options.retry.max_retries
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abort.triggered() => return Err(self.aborted()),
                    }
                }
                code => {
                    return Err(DownloadError::Refused {
                        ref_id: self.ref_id.clone(),
                        owner: self.owner.clone(),
                        error: reply
                            .error()
                            .filter(|e| !e.is_empty())
                            .unwrap_or("the owner gave no reason (an unknown or ended reference, for NVFlare owners)")
                            .to_string(),
                        code,
                    })
                }
            }
        }
    }

    /// The error of a request whose last allowed attempt failed with the transient `code`.
    fn gave_up(&self, code: ReturnCode, error: Option<&str>, attempts: u32) -> DownloadError {
        if code == ReturnCode::Timeout {
            return DownloadError::TimedOut {
                ref_id: self.ref_id.clone(),
                owner: self.owner.clone(),
                timeout: self.options.per_request_timeout,
                attempts,
            };
        }
        DownloadError::Refused {
            ref_id: self.ref_id.clone(),
            owner: self.owner.clone(),
            error: format!(
                "{} (still failing after {attempts} attempts; raise download_max_retries or download_retry_backoff \
                 to wait longer for the owner to come back)",
                error
                    .filter(|e| !e.is_empty())
                    .unwrap_or("the owner could not be reached")
            ),
            code,
        }
    }

    /// Tells the owner this receiver gave up, without waiting for anything, unless the owner does not understand it.
    fn cancel(&self) {
        if self.owner_ignores_cancel.load(Ordering::Relaxed) {
            return;
        }
        let payload = Request {
            ref_id: self.ref_id.clone(),
            position: Position::Start,
            cancel: true,
        }
        .encode();
        let (cell, owner) = (self.cell.clone(), self.owner.clone());
        self.cell.runtime().spawn(async move {
            cell.fire_and_forget(&[owner], wire::CHANNEL, wire::TOPIC, Self::headers(), payload)
                .await;
        });
    }
}

/// The state of one download while it runs.
struct Run {
    asker: Arc<Asker>,
    bytes: u64,
    total_size: Option<u64>,
    last_progress: Option<Instant>,
}

impl Run {
    fn protocol(&self, reason: impl Into<String>) -> DownloadError {
        DownloadError::Protocol {
            ref_id: self.asker.ref_id.clone(),
            reason: reason.into(),
        }
    }

    fn sink_error(&self, reason: String) -> DownloadError {
        DownloadError::Sink {
            ref_id: self.asker.ref_id.clone(),
            reason,
        }
    }

    async fn drive<S: Sink>(&mut self, sink: &mut S) -> Result<(), DownloadError> {
        let (data, next, layout) = match self.asker.ask(Position::Start).await? {
            Reply::Eof => {
                self.total_size = Some(0);
                sink.begin(Some(0)).await.map_err(|e| self.sink_error(e))?;
                return self.finish(sink).await;
            }
            Reply::Error => return Err(self.producer_failed()),
            Reply::Data {
                data,
                next,
                layout,
                cancel_capable,
            } => {
                self.asker
                    .owner_ignores_cancel
                    .store(!cancel_capable, Ordering::Relaxed);
                (data, next, layout)
            }
        };
        self.total_size = layout.map(|l| l.total_size);
        sink.begin(self.total_size).await.map_err(|e| self.sink_error(e))?;
        let pipelined = match (&data, layout, next) {
            (Data::Bytes(b), Some(layout), Position::Offset(n)) => {
                n == b.len() as u64 && self.asker.options.max_inflight > 1 && n < layout.total_size
            }
            _ => false,
        };
        self.deliver(sink, data.into()).await?;
        if pipelined {
            self.pipelined(sink, next, layout.expect("checked")).await
        } else {
            self.sequential(sink, next).await
        }
    }

    fn producer_failed(&self) -> DownloadError {
        DownloadError::ProducerFailed {
            ref_id: self.asker.ref_id.clone(),
        }
    }

    async fn sequential<S: Sink>(&mut self, sink: &mut S, mut next: Position) -> Result<(), DownloadError> {
        loop {
            match self.asker.ask(next).await? {
                Reply::Eof => return self.finish(sink).await,
                Reply::Error => return Err(self.producer_failed()),
                Reply::Data { data, next: n, .. } => {
                    if n == next {
                        return Err(self.protocol("the owner's state did not advance"));
                    }
                    self.deliver(sink, data.into()).await?;
                    next = n;
                }
            }
        }
    }

    /// Keeps up to `max_inflight` chunk requests going; hands chunks to the sink in order.
    async fn pipelined<S: Sink>(&mut self, sink: &mut S, next: Position, layout: Layout) -> Result<(), DownloadError> {
        let Position::Offset(start) = next else {
            unreachable!("pipelining starts from a byte offset")
        };
        let Layout { total_size, chunk_size } = layout;
        let mut to_ask = (start..total_size).step_by(chunk_size as usize);
        let mut in_flight: JoinSet<(u64, Result<Reply, DownloadError>)> = JoinSet::new();
        let mut arrived: BTreeMap<u64, Bytes> = BTreeMap::new();
        let mut next_to_deliver = start;
        loop {
            while in_flight.len() < self.asker.options.max_inflight {
                let Some(offset) = to_ask.next() else { break };
                let asker = self.asker.clone();
                in_flight.spawn(async move { (offset, asker.ask(Position::Offset(offset)).await) });
            }
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (offset, reply) = joined.map_err(|e| self.protocol(format!("request task failed: {e}")))?;
            let expected_len = chunk_size.min(total_size - offset);
            match reply? {
                Reply::Data {
                    data: Data::Bytes(b),
                    next: Position::Offset(end),
                    ..
                } if b.len() as u64 == expected_len && end == offset + expected_len => {
                    arrived.insert(offset, b);
                }
                Reply::Error => return Err(self.producer_failed()),
                _ => return Err(self.protocol(format!("unexpected reply for the chunk at {offset}"))),
            }
            while let Some(b) = arrived.remove(&next_to_deliver) {
                next_to_deliver += b.len() as u64;
                self.deliver(sink, Piece::Bytes(b)).await?;
            }
        }
        // Asking past the end tells the owner this receiver has everything.
        match self.asker.ask(Position::Offset(total_size)).await? {
            Reply::Eof => self.finish(sink).await,
            _ => Err(self.protocol("the owner did not confirm the end")),
        }
    }

    async fn deliver<S: Sink>(&mut self, sink: &mut S, piece: Piece) -> Result<(), DownloadError> {
        self.bytes += piece.len() as u64;
        sink.put(piece).await.map_err(|e| self.sink_error(e))?;
        let now = Instant::now();
        let due = self
            .last_progress
            .is_none_or(|at| now.saturating_duration_since(at) >= self.asker.options.progress_interval);
        if due {
            self.report_progress(now);
        }
        Ok(())
    }

    fn report_progress(&mut self, now: Instant) {
        self.last_progress = Some(now);
        if let Some(progress) = &self.asker.options.progress {
            progress(self.bytes, self.total_size);
        }
    }

    async fn finish<S: Sink>(&mut self, sink: &mut S) -> Result<(), DownloadError> {
        if let Some(total) = self.total_size {
            if self.bytes != total {
                return Err(self.protocol(format!("got {} of {total} bytes", self.bytes)));
            }
        }
        sink.finish().await.map_err(|e| self.sink_error(e))?;
        self.report_progress(Instant::now());
        Ok(())
    }
}
