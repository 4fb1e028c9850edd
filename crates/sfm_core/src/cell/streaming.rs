//! Drives push streams for a cell: sends a payload as chunk messages under the window, routes incoming chunks and
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

use crate::frame::Headers;
use crate::stream::wire;
use crate::stream::{
    AckHeader, AckMessage, DataMessage, ErrorHeader, StreamError, StreamHeaders, StreamIdGen, StreamSender,
};

use super::files::{FileHandler, Source};
use super::incoming::Incoming;
use super::reader::ReaderHandler;
use super::{encoding, keys, CellInner, Message};

/// NVFlare's channel for replies to streamed requests.
pub const RETURN_CHANNEL: &str = "return_only";
/// How often receivers are checked for their read timeout.
const JANITOR_PERIOD: Duration = Duration::from_millis(500);
/// How long an ended incoming stream is remembered, so that its chunks still in flight (an abort notice can overtake
/// them on the control lane) are dropped instead of opening the stream again.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Moves a message's payload encoding to the stream that carries it. NVFlare decodes a stream's assembled payload
/// by `sm__pe`, and each chunk by the chunk's own `cn__payload_encoding`: left on the chunks, a "fobs" encoding
/// makes NVFlare decode every raw chunk as FOBS, and the assembled payload would stay undecoded bytes.
pub(super) fn move_encoding_to_stream(headers: &mut Headers) {
    let message_encoding = headers.remove(keys::PAYLOAD_ENCODING);
    if !headers.contains_key(wire::keys::PAYLOAD_ENCODING) {
        let stream_encoding = message_encoding.unwrap_or_else(|| encoding::BYTES.into());
        headers.insert(wire::keys::PAYLOAD_ENCODING, stream_encoding);
    }
}

/// Handles a whole blob. Called on a transport thread: hand it off, never block.
pub type BlobHandler = Arc<dyn Fn(Message) + Send + Sync>;

enum SenderEvent {
    Ack(u64),
    PeerError(String),
}

pub(super) struct Streams {
    ids: StreamIdGen,
    senders: Mutex<HashMap<u64, mpsc::UnboundedSender<SenderEvent>>>,
    pub(super) receivers: Mutex<HashMap<(String, u64), Incoming>>,
    /// Incoming streams that failed or were aborted, with when.
    tombstones: Mutex<HashMap<(String, u64), std::time::Instant>>,
    blob_handlers: Mutex<HashMap<(String, String), BlobHandler>>,
    file_handlers: Mutex<HashMap<(String, String), (std::path::PathBuf, FileHandler)>>,
    reader_handlers: Mutex<HashMap<(String, String), ReaderHandler>>,
}

impl Streams {
    pub(super) fn new() -> Self {
        // NVFlare's scheme: a per-process base from the clock plus a random offset, then a counter.
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
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
        self.blob_handlers
            .lock()
            .expect("blob handlers lock")
            .insert((channel.into(), topic.into()), handler);
    }

    pub(super) fn register_file_handler(
        &self,
        channel: &str,
        topic: &str,
        dir: std::path::PathBuf,
        handler: FileHandler,
    ) {
        self.file_handlers
            .lock()
            .expect("file handlers lock")
            .insert((channel.into(), topic.into()), (dir, handler));
    }

    pub(super) fn file_handler(&self, channel: &str, topic: &str) -> Option<(std::path::PathBuf, FileHandler)> {
        self.file_handlers
            .lock()
            .expect("file handlers lock")
            .get(&(channel.to_string(), topic.to_string()))
            .cloned()
    }

    pub(super) fn register_reader_handler(&self, channel: &str, topic: &str, handler: ReaderHandler) {
        self.reader_handlers
            .lock()
            .expect("reader handlers lock")
            .insert((channel.into(), topic.into()), handler);
    }

    pub(super) fn reader_handler(&self, channel: &str, topic: &str) -> Option<ReaderHandler> {
        self.reader_handlers
            .lock()
            .expect("reader handlers lock")
            .get(&(channel.to_string(), topic.to_string()))
            .cloned()
    }

    pub(super) fn bury(&self, key: (String, u64)) {
        self.tombstones.lock().expect("tombstones lock").insert(key, now_std());
    }

    pub(super) fn is_buried(&self, key: &(String, u64)) -> bool {
        self.tombstones.lock().expect("tombstones lock").contains_key(key)
    }

    pub(super) fn blob_handler(&self, channel: &str, topic: &str) -> Option<BlobHandler> {
        let handlers = self.blob_handlers.lock().expect("blob handlers lock");
        handlers
            .get(&(channel.to_string(), topic.to_string()))
            .or_else(|| handlers.get(&(channel.to_string(), "*".to_string())))
            .cloned()
    }
}

pub(super) fn now_std() -> std::time::Instant {
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
            let err = StreamError::Aborted {
                by_peer: false,
                message: "the sender stopped before the end".into(),
            };
            self.cell
                .notify_stream_error(self.target, Some(ErrorHeader::new(self.id, &err)), wire::TOPIC_DATA);
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
        let mut guard = SenderGuard {
            cell: self,
            target,
            id,
            ended: false,
        };
        let mut sender = StreamSender::new(
            id,
            channel,
            topic,
            source.len(),
            self.config.stream_sender.clone(),
            now_std(),
        )?;
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
                    return Err(StreamError::Aborted {
                        by_peer: false,
                        message: why,
                    });
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
                conn.close(&format!(
                    "stalled stream: {reason} (setting sfm_close_stalled_connection)"
                ));
            }
        }
    }

    pub(super) fn notify_stream_error(
        self: &Arc<Self>,
        target: &str,
        notice: Option<ErrorHeader>,
        topic: &'static str,
    ) {
        let Some(notice) = notice else { return };
        let topics: &[&'static str] = if topic == wire::TOPIC_ERROR {
            &[wire::TOPIC_ERROR, wire::TOPIC_ACK]
        } else {
            &[wire::TOPIC_DATA]
        };
        for topic in topics {
            self.send_stream_control(target, topic, notice.to_headers());
        }
    }

    /// ACKs and error notices: small messages, sent in the background.
    pub(super) fn send_stream_control(self: &Arc<Self>, target: &str, topic: &str, headers: Headers) {
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
                    if let Some(incoming) = removed {
                        tracing::warn!(cell = %self.fqcn, "incoming stream aborted by its sender: {}", notice.message);
                        incoming.fail(StreamError::Aborted {
                            by_peer: true,
                            message: notice.message,
                        });
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

    /// A stream chunk this cell could not forward: tells the stream's sender, which fails at once instead of
    /// waiting for ACKs that cannot come (NVFlare's relays do the same). Returns false for other messages.
    pub(super) fn stream_chunk_undeliverable(self: &Arc<Self>, headers: &Headers, why: &str) -> bool {
        if headers.get_str(keys::CHANNEL) != Some(wire::CHANNEL) {
            return false;
        }
        if let (Ok(DataMessage::Chunk(chunk)), Some(origin)) =
            (DataMessage::from_headers(headers), headers.get_str(keys::ORIGIN))
        {
            let err = StreamError::Aborted {
                by_peer: true,
                message: why.to_string(),
            };
            let mut notice = ErrorHeader::new(chunk.stream_id, &err);
            notice.message = why.to_string();
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
        cell.streams
            .tombstones
            .lock()
            .expect("tombstones lock")
            .retain(|_, at| now.duration_since(*at) < TOMBSTONE_TTL);
        for (key, mut incoming) in failed {
            let why = incoming.machine.error().cloned().unwrap_or(StreamError::Aborted {
                by_peer: false,
                message: "read timeout".into(),
            });
            cell.notify_stream_error(&key.0, incoming.machine.poll_error(), wire::TOPIC_ERROR);
            incoming.fail(why);
            cell.streams.bury(key);
        }
    }
}
