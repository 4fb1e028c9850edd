//! Drives push streams for a cell: sends a payload as chunk messages under the window, feeds incoming chunks and
//! ACKs to the sans-IO machines of `crate::stream`, and delivers what a stream carried: a blob to its handler, a
//! streamed request to the request handler, a streamed reply to its requester (NVFlare's `Cell` protocol: replies
//! to a streamed request come back as a blob on channel `return_only`, topic `<channel>:<topic>`, matched by
//! `sm__ri`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::frame::{Headers, Value};
use crate::stream::wire::{self, keys as sm};
use crate::stream::{AckHeader, AckMessage, ChunkHeader, DataMessage, ErrorHeader, StreamError, StreamIdGen};
use crate::stream::{StreamReceiver, StreamSender};

use super::files::{FileHandler, Finished, ReaderItem, Sink, Source};
use super::reader::{ReaderHandler, StreamReader};
use super::{keys, CellInner, Message};

/// NVFlare's channel for replies to streamed requests.
pub const RETURN_CHANNEL: &str = "return_only";
/// How often receivers are checked for their read timeout.
const JANITOR_PERIOD: Duration = Duration::from_millis(500);
/// How long an ended incoming stream is remembered, so that its chunks still in flight (an abort notice can overtake
/// them on the control lane) are dropped instead of opening the stream again.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Handles a whole blob. Called on a transport thread: hand it off, never block.
pub type BlobHandler = Arc<dyn Fn(Message) + Send + Sync>;

enum SenderEvent {
    Ack(u64),
    PeerError(String),
}

/// What a finished incoming stream is.
enum Purpose {
    Blob(BlobHandler),
    File(FileHandler),
    Reader,
    Request,
    Reply,
}

struct Incoming {
    machine: StreamReceiver,
    sink: Sink,
    headers: Headers,
    purpose: Purpose,
}

pub(super) struct Streams {
    ids: StreamIdGen,
    senders: Mutex<HashMap<u64, mpsc::UnboundedSender<SenderEvent>>>,
    receivers: Mutex<HashMap<(String, u64), Incoming>>,
    /// Incoming streams that failed or were aborted, with when.
    tombstones: Mutex<HashMap<(String, u64), std::time::Instant>>,
    blob_handlers: Mutex<HashMap<(String, String), BlobHandler>>,
    file_handlers: Mutex<HashMap<(String, String), (std::path::PathBuf, FileHandler)>>,
    reader_handlers: Mutex<HashMap<(String, String), ReaderHandler>>,
}

impl Streams {
    pub(super) fn new() -> Self {
        // NVFlare's scheme: a per-process base from the clock plus a random offset, then a counter.
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
        let base = micros.wrapping_add(rand::random::<u64>() % 1_000_000) & (u64::MAX >> 2);
        Streams {
            ids: StreamIdGen::new(base),
            senders: Mutex::new(HashMap::new()),
            receivers: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            blob_handlers: Mutex::new(HashMap::new()),
            file_handlers: Mutex::new(HashMap::new()),
            reader_handlers: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn register_blob_handler(&self, channel: &str, topic: &str, handler: BlobHandler) {
        self.blob_handlers.lock().expect("blob handlers lock").insert((channel.into(), topic.into()), handler);
    }

    pub(super) fn register_file_handler(&self, channel: &str, topic: &str, dir: std::path::PathBuf, handler: FileHandler) {
        self.file_handlers.lock().expect("file handlers lock").insert((channel.into(), topic.into()), (dir, handler));
    }

    fn file_handler(&self, channel: &str, topic: &str) -> Option<(std::path::PathBuf, FileHandler)> {
        self.file_handlers.lock().expect("file handlers lock").get(&(channel.to_string(), topic.to_string())).cloned()
    }

    pub(super) fn register_reader_handler(&self, channel: &str, topic: &str, handler: ReaderHandler) {
        self.reader_handlers.lock().expect("reader handlers lock").insert((channel.into(), topic.into()), handler);
    }

    fn reader_handler(&self, channel: &str, topic: &str) -> Option<ReaderHandler> {
        self.reader_handlers.lock().expect("reader handlers lock").get(&(channel.to_string(), topic.to_string())).cloned()
    }

    fn bury(&self, key: (String, u64)) {
        self.tombstones.lock().expect("tombstones lock").insert(key, now_std());
    }

    fn is_buried(&self, key: &(String, u64)) -> bool {
        self.tombstones.lock().expect("tombstones lock").contains_key(key)
    }

    fn blob_handler(&self, channel: &str, topic: &str) -> Option<BlobHandler> {
        let handlers = self.blob_handlers.lock().expect("blob handlers lock");
        handlers.get(&(channel.to_string(), topic.to_string())).or_else(|| handlers.get(&(channel.to_string(), "*".to_string()))).cloned()
    }
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// Removes a sender's ACK route however its task ends, and tells the receiver when the sender gave up without a
/// word (its future dropped mid-stream), so the receiver frees the stream now rather than at its read timeout.
struct SenderGuard<'a> {
    cell: &'a Arc<CellInner>,
    target: &'a str,
    id: u64,
    ended: bool,
}

impl Drop for SenderGuard<'_> {
    fn drop(&mut self) {
        self.cell.streams.senders.lock().expect("senders lock").remove(&self.id);
        if !self.ended {
            let err = StreamError::Aborted { by_peer: false, message: "the sender stopped before the end".into() };
            self.cell.notify_stream_error(self.target, Some(ErrorHeader::new(self.id, &err)), wire::TOPIC_DATA);
        }
    }
}

impl CellInner {
    /// Sends `payload` to `target` as a stream addressed to the app's `channel`/`topic`, with `headers` on every
    /// chunk. Returns once the last chunk has been handed to the network, the window having bounded what was in
    /// flight all along. Only idle time counts: the ACK-progress watchdog and the stall rule fail a stream whose
    /// receiver stops, never one that keeps moving.
    pub(super) async fn send_stream(
        self: &Arc<Self>,
        target: &str,
        channel: &str,
        topic: &str,
        headers: Headers,
        source: Source,
    ) -> Result<(), StreamError> {
        let streams = &self.streams;
        let id = streams.ids.next_id();
        let (tx, mut events) = mpsc::unbounded_channel();
        streams.senders.lock().expect("senders lock").insert(id, tx);
        let mut guard = SenderGuard { cell: self, target, id, ended: false };
        let mut sender =
            StreamSender::new(id, channel, topic, source.len(), self.config.stream_sender.clone(), now_std())?;
        loop {
            while let Some(plan) = sender.next_chunk() {
                let header = sender.commit_chunk(plan, now_std())?;
                let mut chunk_headers = headers.clone();
                header.write_to(&mut chunk_headers);
                let data = source.chunk(plan.offset, plan.len)?;
                let msg = self.new_message(target, wire::CHANNEL, wire::TOPIC_DATA, chunk_headers, data, None);
                if let Err(reply) = self.queue_message(msg, Instant::now() + self.config.send_timeout).await {
                    let why = reply.error().unwrap_or("chunk not sent").to_string();
                    sender.abort(why.clone());
                    guard.ended = true;
                    self.notify_stream_error(target, sender.poll_error(), wire::TOPIC_DATA);
                    return Err(StreamError::Aborted { by_peer: false, message: why });
                }
            }
            // Done once the FINAL chunk is handed to the network, as in NVFlare, whose receivers never ACK the end
            // of a stream: waiting for that ACK would fail every stream to an NVFlare peer.
            if sender.all_sent() {
                guard.ended = true;
                return Ok(());
            }
            let timer = sender.poll_timeout().map(Instant::from_std);
            let outcome = tokio::select! {
                event = events.recv() => match event {
                    Some(SenderEvent::Ack(offset)) => sender.handle_ack(offset, now_std()),
                    Some(SenderEvent::PeerError(message)) => {
                        sender.handle_error(message.clone());
                        Err(StreamError::Aborted { by_peer: true, message })
                    }
                    None => Err(StreamError::Aborted { by_peer: false, message: "cell closed".into() }),
                },
                _ = sleep_until_opt(timer) => sender.handle_timeout(now_std()),
            };
            if let Err(err) = outcome {
                guard.ended = true;
                if err.is_stall() && self.config.close_stalled_connection {
                    self.close_connection_towards(target, &err.to_string());
                }
                self.notify_stream_error(target, sender.poll_error(), wire::TOPIC_DATA);
                return Err(err);
            }
        }
    }

    /// Closes the connection that messages to `target` leave through (a stalled stream's, on request).
    fn close_connection_towards(&self, target: &str, reason: &str) {
        if let super::Hop::Peer(peer) = self.routes.lock().expect("routes lock").next_hop(target) {
            if let Some(conn) = self.conns.lock().expect("conns lock").get(&peer) {
                conn.close(&format!("stalled stream: {reason} (setting sfm_close_stalled_connection)"));
            }
        }
    }

    fn notify_stream_error(self: &Arc<Self>, target: &str, notice: Option<ErrorHeader>, topic: &'static str) {
        let Some(notice) = notice else { return };
        let topics: &[&'static str] =
            if topic == wire::TOPIC_ERROR { &[wire::TOPIC_ERROR, wire::TOPIC_ACK] } else { &[wire::TOPIC_DATA] };
        for topic in topics {
            self.send_stream_control(target, topic, notice.to_headers());
        }
    }

    /// ACKs and error notices: small messages, sent in the background.
    fn send_stream_control(self: &Arc<Self>, target: &str, topic: &str, headers: Headers) {
        let msg = self.new_message(target, wire::CHANNEL, topic, headers, Bytes::new(), None);
        let inner = self.clone();
        self.handle.spawn(async move {
            let deadline = Instant::now() + inner.config.send_timeout;
            if let Err(e) = inner.send_message(msg, deadline).await {
                tracing::debug!(cell = %inner.fqcn, "stream control message not sent: {:?}", e.error());
            }
        });
    }

    /// Everything on channel `sm__STREAM`.
    pub(super) fn handle_stream_message(self: &Arc<Self>, msg: Message) {
        let origin = msg.header_str(keys::ORIGIN).unwrap_or_default().to_string();
        match msg.header_str(keys::TOPIC) {
            Some(wire::TOPIC_DATA) => match DataMessage::from_headers(&msg.headers) {
                Ok(DataMessage::Chunk(header)) => self.handle_chunk(&origin, header, msg),
                Ok(DataMessage::Error(notice)) => {
                    let key = (origin, notice.stream_id);
                    let removed = self.streams.receivers.lock().expect("receivers lock").remove(&key);
                    self.streams.bury(key);
                    if removed.is_some() {
                        tracing::warn!(cell = %self.fqcn, "incoming stream aborted by its sender: {}", notice.message);
                    }
                }
                Err(e) => tracing::warn!(cell = %self.fqcn, "bad stream chunk from {origin:?}: {e}"),
            },
            Some(wire::TOPIC_ACK) | Some(wire::TOPIC_ERROR) => {
                let event = match AckMessage::from_headers(&msg.headers) {
                    Ok(AckMessage::Ack(AckHeader { stream_id, offset, .. })) => (stream_id, SenderEvent::Ack(offset)),
                    Ok(AckMessage::Error(notice)) => (notice.stream_id, SenderEvent::PeerError(notice.message)),
                    Err(e) => return tracing::warn!(cell = %self.fqcn, "bad stream ACK from {origin:?}: {e}"),
                };
                // ACKs for streams that already ended are normal; nothing to do.
                if let Some(tx) = self.streams.senders.lock().expect("senders lock").get(&event.0) {
                    let _ = tx.send(event.1);
                }
            }
            other => tracing::warn!(cell = %self.fqcn, "unknown stream topic {other:?} from {origin:?}"),
        }
    }

    fn handle_chunk(self: &Arc<Self>, origin: &str, header: ChunkHeader, msg: Message) {
        let key = (origin.to_string(), header.stream_id);
        if self.streams.is_buried(&key) {
            return;
        }
        let mut receivers = self.streams.receivers.lock().expect("receivers lock");
        let mut new_reader = None;
        if !receivers.contains_key(&key) {
            match self.open_incoming(&key, &header, &msg) {
                Ok((incoming, reader)) => {
                    receivers.insert(key.clone(), incoming);
                    new_reader = reader;
                }
                Err(err) => {
                    drop(receivers);
                    self.streams.bury(key);
                    let mut notice = ErrorHeader::new(header.stream_id, &err);
                    notice.channel = Some(header.channel.clone());
                    notice.topic = Some(header.topic.clone());
                    return self.notify_stream_error(origin, Some(notice), wire::TOPIC_ERROR);
                }
            }
        }
        let incoming = receivers.get_mut(&key).expect("just inserted");
        let now = now_std();
        let result = incoming.machine.handle_chunk(&header, msg.payload, now).and_then(|deliveries| {
            for d in deliveries {
                if let Err(e) = incoming.sink.append(d.data) {
                    incoming.machine.abort(e.to_string());
                    return Err(e);
                }
            }
            if incoming.machine.all_received() {
                if let Sink::Reader { tx, .. } = &incoming.sink {
                    let _ = tx.send(ReaderItem::End);
                }
            }
            incoming.machine.on_consumed(incoming.sink.consumed(), now)
        });
        if let Some(ack) = incoming.machine.poll_ack() {
            self.send_stream_control(origin, wire::TOPIC_ACK, ack.to_headers());
        }
        if let Err(err) = result {
            let notice = incoming.machine.poll_error();
            let failed = receivers.remove(&key).expect("present");
            drop(receivers);
            failed.sink.discard(&err);
            self.streams.bury(key);
            tracing::warn!(cell = %self.fqcn, "incoming stream from {origin:?} failed: {err}");
            return self.notify_stream_error(origin, notice, wire::TOPIC_ERROR);
        }
        let done = if incoming.machine.is_complete() { receivers.remove(&key) } else { None };
        drop(receivers);
        if let Some((handler, reader)) = new_reader {
            handler(reader);
        }
        if let Some(done) = done {
            self.deliver_stream(done);
        }
    }

    /// A reader took more of its stream: acknowledge what is due, and retire the stream once it is all taken.
    pub(super) fn stream_consumed(self: &Arc<Self>, key: &(String, u64)) {
        let mut receivers = self.streams.receivers.lock().expect("receivers lock");
        let Some(incoming) = receivers.get_mut(key) else { return };
        let _ = incoming.machine.on_consumed(incoming.sink.consumed(), now_std());
        if let Some(ack) = incoming.machine.poll_ack() {
            self.send_stream_control(&key.0, wire::TOPIC_ACK, ack.to_headers());
        }
        if incoming.machine.is_complete() {
            receivers.remove(key);
        }
    }

    /// Ends an incoming stream from this side (its reader went away) and tells the sender.
    pub(super) fn abort_incoming(self: &Arc<Self>, key: &(String, u64), why: &str) {
        let removed = self.streams.receivers.lock().expect("receivers lock").remove(key);
        let Some(mut incoming) = removed else { return };
        incoming.machine.abort(why.to_string());
        self.streams.bury(key.clone());
        self.notify_stream_error(&key.0, incoming.machine.poll_error(), wire::TOPIC_ERROR);
    }

    fn open_incoming(
        self: &Arc<Self>,
        key: &(String, u64),
        header: &ChunkHeader,
        msg: &Message,
    ) -> Result<(Incoming, Option<(ReaderHandler, StreamReader)>), StreamError> {
        let machine = StreamReceiver::new(header, self.config.stream_receiver.clone(), now_std())?;
        let headers = app_headers(&msg.headers, header);
        let memory = || Sink::memory(machine.expected_size());
        if let Some(handler) = self.streams.reader_handler(&header.channel, &header.topic) {
            let (tx, rx) = mpsc::unbounded_channel();
            let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let reader = StreamReader::new(
                headers.clone(),
                machine.expected_size(),
                rx,
                consumed.clone(),
                Arc::downgrade(self),
                key.clone(),
            );
            let incoming = Incoming { machine, sink: Sink::Reader { tx, consumed }, headers, purpose: Purpose::Reader };
            return Ok((incoming, Some((handler, reader))));
        }
        let (purpose, sink) = if header.channel == RETURN_CHANNEL {
            (Purpose::Reply, memory())
        } else if msg.headers.contains_key(sm::REQ_ID) {
            (Purpose::Request, memory())
        } else if let Some((dir, handler)) = self.streams.file_handler(&header.channel, &header.topic) {
            (Purpose::File(handler), Sink::file(&dir, &headers)?)
        } else if let Some(handler) = self.streams.blob_handler(&header.channel, &header.topic) {
            (Purpose::Blob(handler), memory())
        } else {
            return Err(StreamError::Aborted {
                by_peer: false,
                message: format!(
                    "cell {:?} has no blob handler for channel {:?} topic {:?}",
                    self.fqcn, header.channel, header.topic
                ),
            });
        };
        Ok((Incoming { machine, sink, headers, purpose }, None))
    }

    fn deliver_stream(self: &Arc<Self>, done: Incoming) {
        let payload = match done.sink.finish() {
            Ok(Finished::Memory(bytes)) => bytes,
            Ok(Finished::File { path, size }) => {
                if let Purpose::File(handler) = done.purpose {
                    handler(done.headers, path, size);
                }
                return;
            }
            Ok(Finished::Read) => return,
            Err(e) => return tracing::warn!(cell = %self.fqcn, "received stream could not be stored: {e}"),
        };
        let message = Message::new(done.headers, payload);
        match done.purpose {
            Purpose::Blob(handler) => handler(message),
            Purpose::File(_) | Purpose::Reader => unreachable!("file and reader streams finish above"),
            Purpose::Reply => self.deliver_reply_by(sm::REQ_ID, message),
            Purpose::Request => {
                let mut message = message;
                // A streamed request always expects its reply, as a stream, matched by `sm__ri`.
                if let Some(ri) = message.headers.get(sm::REQ_ID).cloned() {
                    if !message.headers.contains_key(keys::REQ_ID) {
                        message.headers.insert(keys::REQ_ID, ri);
                    }
                    message.headers.insert(keys::REPLY_EXPECTED, true);
                    message.headers.insert(keys::MSG_TYPE, super::msg_type::REQUEST);
                }
                self.dispatch_request(message)
            }
        }
    }

    /// A stream chunk this cell could not forward: tells the stream's sender, which fails at once instead of
    /// waiting for ACKs that cannot come (NVFlare's relays do the same). Returns false for other messages.
    pub(super) fn stream_chunk_undeliverable(self: &Arc<Self>, headers: &Headers, why: &str) -> bool {
        if headers.get_str(keys::CHANNEL) != Some(wire::CHANNEL) {
            return false;
        }
        if let (Ok(DataMessage::Chunk(chunk)), Some(origin)) =
            (DataMessage::from_headers(headers), headers.get_str(keys::ORIGIN))
        {
            let err = StreamError::Aborted { by_peer: true, message: why.to_string() };
            let mut notice = ErrorHeader::new(chunk.stream_id, &err);
            notice.channel = Some(chunk.channel);
            notice.topic = Some(chunk.topic);
            self.notify_stream_error(origin, Some(notice), wire::TOPIC_ERROR);
        }
        true
    }

    /// Streams in progress: (outgoing, incoming).
    pub(super) fn stream_counts(&self) -> (usize, usize) {
        let outgoing = self.streams.senders.lock().expect("senders lock").len();
        (outgoing, self.streams.receivers.lock().expect("receivers lock").len())
    }

    /// Fails incoming streams from a peer that went away, instead of leaving them to their read timeout.
    pub(super) fn drop_incoming_from(&self, origin: &str) {
        let dropped: Vec<Incoming> = self
            .streams
            .receivers
            .lock()
            .expect("receivers lock")
            .extract_if(|(o, _), _| o == origin)
            .map(|(_, incoming)| incoming)
            .collect();
        let gone = StreamError::Aborted { by_peer: true, message: format!("lost the connection to {origin:?}") };
        for incoming in dropped {
            incoming.sink.discard(&gone);
        }
    }
}

/// The app's view of a stream's headers: the first chunk's headers without the per-chunk `sm__*` keys, with
/// channel and topic set back to the app's own.
fn app_headers(chunk: &Headers, header: &ChunkHeader) -> Headers {
    const PER_CHUNK: [&str; 10] =
        [sm::STREAM_ID, sm::DATA_TYPE, sm::SIZE, sm::SEQUENCE, sm::OFFSET, sm::RELIABLE, sm::OPTIONAL, sm::CHUNK_SIZE, sm::WINDOW_SIZE, sm::ACK_INTERVAL];
    let mut headers: Headers =
        chunk.iter().filter(|(k, _)| !PER_CHUNK.contains(k)).map(|(k, v)| (k.to_string(), v.clone())).collect();
    headers.insert(keys::CHANNEL, header.channel.as_str());
    headers.insert(keys::TOPIC, header.topic.as_str());
    headers.insert(keys::PAYLOAD_LEN, Value::from(header.total_size));
    headers
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks incoming streams for their read timeout while the cell lives.
pub(super) async fn janitor(cell: Weak<CellInner>) {
    loop {
        tokio::time::sleep(JANITOR_PERIOD).await;
        let Some(cell) = cell.upgrade() else { return };
        if *cell.shutdown.borrow() {
            return;
        }
        let now = now_std();
        let failed: Vec<((String, u64), Incoming)> = cell
            .streams
            .receivers
            .lock()
            .expect("receivers lock")
            .extract_if(|_, incoming| {
                let due = incoming.machine.poll_timeout().is_some_and(|t| t <= now);
                due && incoming.machine.handle_timeout(now).is_err()
            })
            .collect();
        cell.streams.tombstones.lock().expect("tombstones lock").retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        for (key, mut incoming) in failed {
            let why = incoming.machine.error().cloned().unwrap_or(StreamError::Aborted {
                by_peer: false,
                message: "read timeout".into(),
            });
            cell.notify_stream_error(&key.0, incoming.machine.poll_error(), wire::TOPIC_ERROR);
            incoming.sink.discard(&why);
            cell.streams.bury(key);
        }
    }
}
