//! The owner side: a cell's download service. Answers download requests from the registered sources, keeps the
//! transaction table, and ends transactions (releasing their sources) when they finish or go idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::cache::ChunkCache;
use super::source::{read_file_chunk, Source};
use super::table::{Lookup, ReceiverEvent, ReceiverStatus, Transactions, TxInfo, TxOutcome};
use super::wire::{self, Data, Layout, Position, Reply, Request};
use super::{DownloadConfig, DownloadError};
use crate::cell::{encoding, keys, Cell, IncomingRequest, Message, PeerEvent, ReturnCode};
use crate::frame::Headers;

/// Called when a receiver finishes (or fails) one reference.
pub type ReceiverCallback = Arc<dyn Fn(ReceiverEvent) + Send + Sync>;
/// Called once when a transaction ends.
pub type DoneCallback = Arc<dyn Fn(TxOutcome) + Send + Sync>;

/// How to set up a transaction.
#[derive(Clone, Default)]
pub struct TransactionOptions {
    /// Id to use; default: a fresh random one.
    pub tx_id: Option<String>,
    /// Idle time after which nobody pulling ends the transaction; default `min_download_timeout`.
    pub timeout: Option<Duration>,
    /// Receivers expected to download every reference; 0 means unknown (the transaction then ends by timeout or
    /// deletion, and chunks leave the cache by TTL or budget only).
    pub num_receivers: usize,
    pub on_receiver: Option<ReceiverCallback>,
    pub on_done: Option<DoneCallback>,
}

/// Items made ahead of the receivers, so that producing overlaps sending.
const ITEM_PREFETCH: u64 = 2;

struct Registered {
    /// Cache namespace of this source.
    number: u64,
    source: Source,
}

struct Callbacks {
    on_receiver: Option<ReceiverCallback>,
    on_done: Option<DoneCallback>,
}

struct ServiceInner {
    cell: Cell,
    config: DownloadConfig,
    table: Mutex<Transactions>,
    sources: Mutex<HashMap<String, Arc<Registered>>>,
    callbacks: Mutex<HashMap<String, Callbacks>>,
    cache: ChunkCache,
    next_source: AtomicU64,
    replies: AtomicU64,
    wake: Arc<Notify>,
    /// `download_send_budget` in KiB: encoded replies hold permits until their last byte is released.
    send_budget: Arc<Semaphore>,
    send_budget_kib: u32,
    reply_buffers: Arc<ReplyBuffers>,
}

/// A cell's download service. Cheap to clone; the service stops when the last clone is dropped.
#[derive(Clone)]
pub struct DownloadService {
    inner: Arc<ServiceInner>,
}

/// A random 128-bit identifier, as 32 hex digits after `prefix`.
fn random_id(prefix: &str) -> String {
    format!("{prefix}{:032x}", rand::random::<u128>())
}

impl DownloadService {
    /// Starts the service on `cell`: registers the download handler and follows peers going away.
    pub fn new(cell: &Cell) -> DownloadService {
        let config = cell.config().download.clone();
        let budget_kib = u32::try_from(config.send_budget / 1024)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let inner = Arc::new(ServiceInner {
            cell: cell.clone(),
            table: Mutex::new(Transactions::new(config.receiver_idle_timeout)),
            sources: Mutex::new(HashMap::new()),
            callbacks: Mutex::new(HashMap::new()),
            cache: ChunkCache::new(config.cache_budget, config.cache_ttl),
            next_source: AtomicU64::new(1),
            replies: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            send_budget: Arc::new(Semaphore::new(budget_kib as usize)),
            send_budget_kib: budget_kib,
            reply_buffers: Arc::new(ReplyBuffers {
                free: Mutex::new(Vec::new()),
                limit: usize::try_from(config.send_budget).unwrap_or(usize::MAX),
            }),
            config,
        });
        let weak = Arc::downgrade(&inner);
        cell.register_request_handler(
            wire::CHANNEL,
            wire::TOPIC,
            Arc::new(move |request: IncomingRequest| match weak.upgrade() {
                Some(inner) => {
                    let handle = inner.cell.runtime().clone();
                    handle.spawn(async move { inner.handle(request).await });
                }
                None => request.responder.reply(Message::error_reply(
                    ReturnCode::ServiceUnavailable,
                    "the download service of this cell has stopped",
                )),
            }),
        );
        let weak = Arc::downgrade(&inner);
        cell.on_peer_event(Arc::new(move |event| {
            if let (PeerEvent::Down { name, reason }, Some(inner)) = (event, weak.upgrade()) {
                inner
                    .table
                    .lock()
                    .expect("table lock")
                    .on_receiver_lost(&name, &format!("connection lost: {reason}"));
                inner.dispatch_events();
            }
        }));
        cell.runtime().spawn(janitor(Arc::downgrade(&inner)));
        DownloadService { inner }
    }

    pub fn new_transaction(&self, options: TransactionOptions) -> String {
        let tx_id = options.tx_id.unwrap_or_else(|| random_id("T"));
        let timeout = options.timeout.unwrap_or(self.inner.config.min_download_timeout);
        self.inner.table.lock().expect("table lock").new_transaction(
            &tx_id,
            timeout,
            options.num_receivers,
            Instant::now(),
        );
        self.inner.callbacks.lock().expect("callbacks lock").insert(
            tx_id.clone(),
            Callbacks {
                on_receiver: options.on_receiver,
                on_done: options.on_done,
            },
        );
        self.inner.wake.notify_one();
        tx_id
    }

    /// Registers `source` in the transaction; returns its reference id (random 128 bits unless given).
    pub fn add_source(&self, tx_id: &str, source: Source, ref_id: Option<String>) -> Result<String, DownloadError> {
        let ref_id = ref_id.unwrap_or_else(|| random_id("R"));
        let mut table = self.inner.table.lock().expect("table lock");
        if !table.contains(tx_id) {
            return Err(DownloadError::NoTransaction(tx_id.to_string()));
        }
        if !table.add_ref(tx_id, &ref_id) {
            return Err(DownloadError::DuplicateRef(ref_id));
        }
        let number = self.inner.next_source.fetch_add(1, Ordering::Relaxed);
        self.inner
            .sources
            .lock()
            .expect("sources lock")
            .insert(ref_id.clone(), Arc::new(Registered { number, source }));
        Ok(ref_id)
    }

    /// Ends a transaction now (status "deleted"); its sources are released. False if there was none.
    pub fn delete_transaction(&self, tx_id: &str) -> bool {
        let outcome = self
            .inner
            .table
            .lock()
            .expect("table lock")
            .delete(tx_id, Instant::now());
        match outcome {
            Some(outcome) => {
                self.inner.release(outcome);
                true
            }
            None => false,
        }
    }

    pub fn transaction_info(&self, tx_id: &str) -> Option<TxInfo> {
        self.inner.table.lock().expect("table lock").info(tx_id)
    }

    /// Bytes of produced chunks the cache holds now.
    pub fn cache_used(&self) -> u64 {
        self.inner.cache.used()
    }

    /// Bytes of encoded replies being sent now (within `download_send_budget`).
    pub fn sending(&self) -> u64 {
        let free = self.inner.send_budget.available_permits() as u64;
        (u64::from(self.inner.send_budget_kib) - free) * 1024
    }

    /// Sources registered and not yet released.
    pub fn live_sources(&self) -> usize {
        self.inner.sources.lock().expect("sources lock").len()
    }
}

impl ServiceInner {
    async fn handle(self: Arc<Self>, request: IncomingRequest) {
        let IncomingRequest { message, responder } = request;
        let receiver = message.header_str(keys::ORIGIN).unwrap_or_default().to_string();
        let req = match Request::decode(&message.payload) {
            Ok(req) => req,
            Err(e) => {
                return responder.reply(Message::error_reply(ReturnCode::InvalidRequest, e.to_string()));
            }
        };
        if req.cancel {
            self.finish(
                &req.ref_id,
                &receiver,
                ReceiverStatus::Failed("cancelled by the receiver".into()),
            );
            return;
        }
        let lookup = self
            .table
            .lock()
            .expect("table lock")
            .on_request(&req.ref_id, &receiver, Instant::now());
        let expected = match lookup {
            Lookup::Active { num_receivers, .. } => num_receivers,
            Lookup::AlreadyDone => return responder.reply(fobs_reply(&Reply::Eof)),
            Lookup::Ended(status) => {
                return responder.reply(Message::error_reply(
                    ReturnCode::InvalidRequest,
                    format!(
                        "download reference {} on {}: its transaction has ended ({})",
                        req.ref_id,
                        self.cell.fqcn(),
                        status.as_str()
                    ),
                ));
            }
            Lookup::Unknown => {
                return responder.reply(Message::error_reply(
                    ReturnCode::InvalidRequest,
                    format!("no download reference {} on {}", req.ref_id, self.cell.fqcn()),
                ));
            }
        };
        let registered = self.sources.lock().expect("sources lock").get(&req.ref_id).cloned();
        let Some(registered) = registered else {
            return responder.reply(Message::error_reply(
                ReturnCode::InvalidRequest,
                format!("download reference {} on {} was released", req.ref_id, self.cell.fqcn()),
            ));
        };
        let reply = match self.serve(&registered, &receiver, req.position, expected).await {
            Ok(reply) => reply,
            Err(reason) => {
                tracing::warn!(ref_id = %req.ref_id, %receiver, "cannot serve download: {reason}");
                Reply::Error
            }
        };
        match &reply {
            Reply::Eof => self.finish(&req.ref_id, &receiver, ReceiverStatus::Success),
            Reply::Error => self.finish(
                &req.ref_id,
                &receiver,
                ReceiverStatus::Failed("the owner failed to produce the data".into()),
            ),
            Reply::Data { .. } => {}
        }
        let n = self.replies.fetch_add(1, Ordering::Relaxed) + 1;
        if self.config.fault_drop_every > 0 && n.is_multiple_of(self.config.fault_drop_every) {
            return responder.discard();
        }
        let Some(permit) = self.room_for(&reply).await else {
            tracing::warn!(ref_id = %req.ref_id, %receiver, "no room to send a download reply; the receiver will retry");
            return responder.discard();
        };
        let mut buf = self.reply_buffers.take();
        reply.encode_into(&mut buf);
        let payload = Bytes::from_owner(Budgeted {
            buf,
            pool: self.reply_buffers.clone(),
            _permit: permit,
        });
        responder.reply(fobs_message(payload));
    }

    /// Waits until the reply fits in `download_send_budget` (a reply larger than the whole budget goes alone), at
    /// most `streaming_per_request_timeout`, after which the requester has given up on it anyway.
    async fn room_for(&self, reply: &Reply) -> Option<OwnedSemaphorePermit> {
        let size = match reply {
            Reply::Data { data, .. } => data.len(),
            Reply::Eof | Reply::Error => 0,
        };
        let kib = u32::try_from(size / 1024 + 1)
            .unwrap_or(u32::MAX)
            .min(self.send_budget_kib);
        let acquire = self.send_budget.clone().acquire_many_owned(kib);
        tokio::time::timeout(self.config.per_request_timeout, acquire)
            .await
            .ok()?
            .ok()
    }

    fn finish(&self, ref_id: &str, receiver: &str, status: ReceiverStatus) {
        self.table
            .lock()
            .expect("table lock")
            .on_done(ref_id, receiver, status, Instant::now());
        self.dispatch_events();
        self.wake.notify_one();
    }

    /// The reply to a receiver at `position` of a source.
    async fn serve(
        self: &Arc<Self>,
        registered: &Registered,
        receiver: &str,
        position: Position,
        expected: usize,
    ) -> Result<Reply, String> {
        let number = registered.number;
        match &registered.source {
            Source::Memory { data, chunk_size } => {
                let size = data.len() as u64;
                let Some(offset) = byte_offset(position, size)? else {
                    return Ok(Reply::Eof);
                };
                let end = (offset + chunk_size).min(size);
                Ok(byte_reply(
                    data.slice(offset as usize..end as usize),
                    offset,
                    size,
                    *chunk_size,
                ))
            }
            Source::File {
                file, size, chunk_size, ..
            } => {
                let Some(offset) = byte_offset(position, *size)? else {
                    return Ok(Reply::Eof);
                };
                let len = (*chunk_size).min(size - offset) as usize;
                let file = file.clone();
                let chunk = self
                    .cache
                    .get((number, offset), async move {
                        tokio::task::spawn_blocking(move || read_file_chunk(&file, offset, len))
                            .await
                            .map_err(|e| format!("file read task failed: {e}"))?
                    })
                    .await?;
                self.cache.served((number, offset), receiver, expected);
                Ok(byte_reply(chunk, offset, *size, *chunk_size))
            }
            Source::Items {
                producer,
                count,
                max_chunk_size,
            } => {
                let first = match position {
                    Position::Start => 0,
                    Position::Items { start, count } => start.saturating_add(count),
                    Position::Offset(_) => return Err("this source is made of items, not bytes".into()),
                };
                if first >= *count {
                    return Ok(Reply::Eof);
                }
                let produce_item = |index: u64| {
                    let producer = producer.clone();
                    async move {
                        tokio::task::spawn_blocking(move || producer.produce(index))
                            .await
                            .map_err(|e| format!("item producer failed: {e}"))?
                    }
                };
                let mut items = Vec::new();
                let mut bytes = 0u64;
                let mut index = first;
                while index < *count {
                    let item = self.cache.get((number, index), produce_item(index)).await?;
                    if !items.is_empty() && bytes + item.len() as u64 > *max_chunk_size {
                        break;
                    }
                    self.cache.served((number, index), receiver, expected);
                    bytes += item.len() as u64;
                    items.push(item);
                    index += 1;
                }
                // Prefetch about one reply's worth: with items as large as a reply (a model's tensors), none, so that
                // an owner never holds more than the items it is sending.
                let per_item = (bytes / items.len().max(1) as u64).max(1);
                let ahead = (*max_chunk_size / per_item).min(ITEM_PREFETCH);
                self.prefetch(number, index, (*count).min(index + ahead), &produce_item);
                Ok(Reply::Data {
                    data: Data::Items(items),
                    next: Position::Items {
                        start: first,
                        count: index - first,
                    },
                    layout: None,
                    cancel_capable: true,
                })
            }
        }
    }

    fn prefetch<F, Fut>(self: &Arc<Self>, number: u64, from: u64, to: u64, produce_item: &F)
    where
        F: Fn(u64) -> Fut,
        Fut: std::future::Future<Output = Result<Bytes, String>> + Send + 'static,
    {
        for index in from..to {
            let (service, produce) = (self.clone(), produce_item(index));
            self.cell.runtime().spawn(async move {
                service.cache.prefetch((number, index), produce).await;
            });
        }
    }

    /// Releases an ended transaction's sources and tells its owner.
    fn release(&self, outcome: TxOutcome) {
        {
            let mut sources = self.sources.lock().expect("sources lock");
            for rid in &outcome.refs {
                if let Some(registered) = sources.remove(rid) {
                    self.cache.drop_source(registered.number);
                }
            }
        }
        self.dispatch_events();
        let callbacks = self.callbacks.lock().expect("callbacks lock").remove(&outcome.tx_id);
        if let Some(on_done) = callbacks.and_then(|c| c.on_done) {
            on_done(outcome);
        }
    }

    fn dispatch_events(&self) {
        let events = self.table.lock().expect("table lock").take_events();
        if events.is_empty() {
            return;
        }
        let callbacks = self.callbacks.lock().expect("callbacks lock");
        for event in events {
            if let Some(cb) = callbacks.get(&event.tx_id).and_then(|c| c.on_receiver.clone()) {
                cb(event);
            }
        }
    }
}

/// An encoded reply and its share of the send budget: when the last slice of the reply is dropped, the budget is
/// returned and the buffer goes back to the pool.
struct Budgeted {
    buf: Vec<u8>,
    pool: Arc<ReplyBuffers>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Budgeted {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Budgeted {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

/// Buffers of sent replies, kept for the next ones: writing a chunk into memory the process already has costs a
/// copy, into fresh memory a page fault per page as well. Keeps at most `download_send_budget` bytes idle.
struct ReplyBuffers {
    free: Mutex<Vec<Vec<u8>>>,
    limit: usize,
}

impl ReplyBuffers {
    fn take(&self) -> Vec<u8> {
        self.free.lock().expect("buffers lock").pop().unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        let mut free = self.free.lock().expect("buffers lock");
        let idle: usize = free.iter().map(Vec::capacity).sum();
        if idle + buf.capacity() <= self.limit {
            free.push(buf);
        }
    }
}

fn fobs_reply(reply: &Reply) -> Message {
    fobs_message(reply.encode())
}

fn fobs_message(payload: Bytes) -> Message {
    let mut headers = Headers::new();
    headers.insert(keys::PAYLOAD_ENCODING, encoding::FOBS);
    Message::new(headers, payload)
}

/// The offset a byte source serves next, or `None` at the end.
fn byte_offset(position: Position, size: u64) -> Result<Option<u64>, String> {
    let offset = match position {
        Position::Start => 0,
        Position::Offset(n) => n,
        Position::Items { .. } => return Err("this source is made of bytes, not items".into()),
    };
    if offset > size {
        return Err(format!("offset {offset} is past the end ({size} bytes)"));
    }
    Ok((offset < size).then_some(offset))
}

fn byte_reply(chunk: Bytes, offset: u64, total_size: u64, chunk_size: u64) -> Reply {
    Reply::Data {
        next: Position::Offset(offset + chunk.len() as u64),
        data: Data::Bytes(chunk),
        layout: Some(Layout { total_size, chunk_size }),
        cancel_capable: true,
    }
}

/// Ends transactions when they finish or go idle, fails idle receivers and ages the cache, until the service
/// is dropped.
async fn janitor(service: Weak<ServiceInner>) {
    loop {
        let Some(inner) = service.upgrade() else { return };
        let now = Instant::now();
        let (ended, next) = inner.table.lock().expect("table lock").poll(now);
        inner.cache.sweep(now);
        for outcome in ended {
            inner.release(outcome);
        }
        inner.dispatch_events();
        // Wake at the next table deadline, and often enough to age the cache.
        let sweep = (inner.config.cache_ttl / 2).max(Duration::from_millis(100));
        let until = next.map_or(now + sweep, |n| n.min(now + sweep));
        let wake = inner.wake.clone();
        drop(inner);
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = wake.notified() => {}
        }
    }
}
