//! Incoming streams. Every stream is read by a `StreamReader`: the application's own (a stream reader handler), or
//! a task of the cell that stores the chunks in memory or a file and delivers the result (a blob, a file, a streamed
//! request or reply). The connection's reader task only feeds chunks to the stream's state machine and hands them
//! on, so it keeps draining the socket, and control frames behind a large stream are dispatched at once; a chunk
//! counts as consumed, and is acknowledged, once the stream's reader has taken it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::frame::{Headers, Value};
use crate::stream::wire::{self, keys as sm};
use crate::stream::{ChunkHeader, ErrorHeader, StreamError, StreamHeaders, StreamReceiver};

use super::files::{FileHandler, Finished, Sink};
use super::reader::{ReaderHandler, ReaderItem, StreamReader};
use super::streaming::{now_std, BlobHandler, RETURN_CHANNEL};
use super::{keys, msg_type, CellInner, Message};

/// The cell's own readers wait without limit: the read timeout is enforced on the stream itself (the janitor).
const NO_IDLE_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One stream being received.
pub(super) struct Incoming {
    pub(super) machine: StreamReceiver,
    tx: mpsc::UnboundedSender<ReaderItem>,
    consumed: Arc<AtomicU64>,
    end_sent: bool,
}

impl Incoming {
    /// Ends the stream for its reader with `why`.
    pub(super) fn fail(self, why: StreamError) {
        let _ = self.tx.send(ReaderItem::Failed(why));
    }
}

/// What a finished stream is for, when the cell reads it itself.
enum Purpose {
    Blob(BlobHandler),
    File(FileHandler),
    Request,
    Reply,
}

/// Who will read a stream about to be opened.
enum Target {
    App(ReaderHandler),
    Cell(Sink, Purpose),
}

/// Who reads a newly opened stream, with its reader.
enum Opened {
    App(ReaderHandler, StreamReader),
    Cell(StreamReader, Sink, Purpose),
}

impl CellInner {
    pub(super) fn handle_chunk(self: &Arc<Self>, origin: &str, header: ChunkHeader, msg: Message) {
        let key = (origin.to_string(), header.stream_id);
        if self.streams.is_buried(&key) {
            return;
        }
        let mut receivers = self.streams.receivers.lock().expect("receivers lock");
        let mut opened = None;
        if !receivers.contains_key(&key) {
            match self.open_incoming(&key, &header, &msg) {
                Ok((incoming, reader)) => {
                    receivers.insert(key.clone(), incoming);
                    opened = Some(reader);
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
        let incoming = receivers.get_mut(&key).expect("present");
        let now = now_std();
        let result = incoming
            .machine
            .handle_chunk(&header, msg.payload, now)
            .map(|deliveries| {
                for d in deliveries {
                    let _ = incoming.tx.send(ReaderItem::Data(d.data));
                }
            });
        if result.is_ok() && incoming.machine.all_received() && !incoming.end_sent {
            incoming.end_sent = true;
            let _ = incoming.tx.send(ReaderItem::End);
        }
        let _ = incoming
            .machine
            .on_consumed(incoming.consumed.load(Ordering::Acquire), now);
        if let Some(ack) = incoming.machine.poll_ack() {
            self.send_stream_control(origin, wire::TOPIC_ACK, ack.to_headers());
        }
        if let Err(err) = result {
            let mut failed = receivers.remove(&key).expect("present");
            drop(receivers);
            let notice = failed.machine.poll_error();
            failed.fail(err.clone());
            self.streams.bury(key);
            tracing::warn!(cell = %self.fqcn, "incoming stream from {origin:?} failed: {err}");
            return self.notify_stream_error(origin, notice, wire::TOPIC_ERROR);
        }
        if incoming.machine.is_complete() {
            receivers.remove(&key);
        }
        drop(receivers);
        match opened {
            Some(Opened::App(handler, reader)) => handler(reader),
            Some(Opened::Cell(reader, sink, purpose)) => {
                self.handle
                    .spawn(read_into(Arc::downgrade(self), reader, sink, purpose));
            }
            None => {}
        }
    }

    fn open_incoming(
        self: &Arc<Self>,
        key: &(String, u64),
        header: &ChunkHeader,
        msg: &Message,
    ) -> Result<(Incoming, Opened), StreamError> {
        let machine = StreamReceiver::new(header, self.config.stream_receiver.clone(), now_std())?;
        let headers = app_headers(&msg.headers, header);
        let size = machine.expected_size();
        // Decide who reads before making the reader: a reader dropped unused would abort the stream, and that
        // takes the receivers' lock, which our caller holds.
        let memory = || Sink::memory(size, self.config.receive_huge_pages);
        let target = if let Some(handler) = self.streams.reader_handler(&header.channel, &header.topic) {
            Target::App(handler)
        } else if header.channel == RETURN_CHANNEL {
            Target::Cell(memory(), Purpose::Reply)
        } else if msg.headers.contains_key(sm::REQ_ID) {
            Target::Cell(memory(), Purpose::Request)
        } else if let Some((dir, handler)) = self.streams.file_handler(&header.channel, &header.topic) {
            Target::Cell(Sink::file(&dir, &headers)?, Purpose::File(handler))
        } else if let Some(handler) = self.streams.blob_handler(&header.channel, &header.topic) {
            Target::Cell(memory(), Purpose::Blob(handler))
        } else {
            return Err(StreamError::Aborted {
                by_peer: false,
                message: format!(
                    "cell {:?} has no blob handler for channel {:?} topic {:?}",
                    self.fqcn, header.channel, header.topic
                ),
            });
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let consumed = Arc::new(AtomicU64::new(0));
        let reader = StreamReader::new(headers, size, rx, consumed.clone(), Arc::downgrade(self), key.clone());
        let opened = match target {
            Target::App(handler) => Opened::App(handler, reader),
            Target::Cell(sink, purpose) => Opened::Cell(reader, sink, purpose),
        };
        Ok((
            Incoming {
                machine,
                tx,
                consumed,
                end_sent: false,
            },
            opened,
        ))
    }

    /// A reader took more of its stream: acknowledge what is due, and retire the stream once it is all taken.
    pub(super) fn stream_consumed(self: &Arc<Self>, key: &(String, u64)) {
        let mut receivers = self.streams.receivers.lock().expect("receivers lock");
        let Some(incoming) = receivers.get_mut(key) else { return };
        let _ = incoming
            .machine
            .on_consumed(incoming.consumed.load(Ordering::Acquire), now_std());
        if let Some(ack) = incoming.machine.poll_ack() {
            self.send_stream_control(&key.0, wire::TOPIC_ACK, ack.to_headers());
        }
        if incoming.machine.is_complete() {
            receivers.remove(key);
        }
    }

    /// Ends an incoming stream from this side (its reader went away, or storing failed) and tells the sender.
    pub(super) fn abort_incoming(self: &Arc<Self>, key: &(String, u64), why: &str) {
        let removed = self.streams.receivers.lock().expect("receivers lock").remove(key);
        let Some(mut incoming) = removed else { return };
        incoming.machine.abort(why.to_string());
        self.streams.bury(key.clone());
        self.notify_stream_error(&key.0, incoming.machine.poll_error(), wire::TOPIC_ERROR);
        incoming.fail(StreamError::Aborted {
            by_peer: false,
            message: why.to_string(),
        });
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
        for incoming in dropped {
            incoming.fail(StreamError::Aborted {
                by_peer: true,
                message: format!("lost the connection to {origin:?}"),
            });
        }
    }

    fn deliver(self: &Arc<Self>, purpose: Purpose, headers: Headers, finished: Finished) {
        let payload = match finished {
            Finished::File { path, size } => {
                if let Purpose::File(handler) = purpose {
                    handler(headers, path, size);
                }
                return;
            }
            Finished::Memory(bytes) => bytes,
        };
        let mut message = Message::new(headers, payload);
        match purpose {
            Purpose::Blob(handler) => handler(message),
            Purpose::File(_) => unreachable!("file streams finish as files"),
            Purpose::Reply => self.deliver_reply_by(sm::REQ_ID, message),
            Purpose::Request => {
                // A streamed request always expects its reply, as a stream, matched by `sm__ri`.
                if let Some(ri) = message.headers.get(sm::REQ_ID).cloned() {
                    if !message.headers.contains_key(keys::REQ_ID) {
                        message.headers.insert(keys::REQ_ID, ri);
                    }
                    message.headers.insert(keys::REPLY_EXPECTED, true);
                    message.headers.insert(keys::MSG_TYPE, msg_type::REQUEST);
                }
                self.dispatch_request(message)
            }
        }
    }
}

/// The cell's own reader: stores a stream's chunks as they come, then delivers the whole.
async fn read_into(cell: Weak<CellInner>, mut reader: StreamReader, mut sink: Sink, purpose: Purpose) {
    loop {
        match reader.next_chunk(NO_IDLE_LIMIT).await {
            // File writes are brief blocking calls on a runtime thread, bounded by the chunk size.
            Ok(Some(data)) => {
                if let Err(e) = sink.append(&data) {
                    if let Some(cell) = cell.upgrade() {
                        cell.abort_incoming(reader.key(), &e.to_string());
                    }
                    return sink.discard();
                }
            }
            Ok(None) => break,
            Err(_) => return sink.discard(),
        }
    }
    let headers = reader.headers().clone();
    let Some(cell) = cell.upgrade() else { return };
    match sink.finish() {
        Ok(finished) => cell.deliver(purpose, headers, finished),
        Err(e) => tracing::warn!(cell = %cell.fqcn, "received stream could not be stored: {e}"),
    }
}

/// The app's view of a stream's headers: the first chunk's headers without the per-chunk `sm__*` keys, with
/// channel and topic set back to the app's own.
fn app_headers(chunk: &Headers, header: &ChunkHeader) -> Headers {
    const PER_CHUNK: [&str; 10] = [
        sm::STREAM_ID,
        sm::DATA_TYPE,
        sm::SIZE,
        sm::SEQUENCE,
        sm::OFFSET,
        sm::RELIABLE,
        sm::OPTIONAL,
        sm::CHUNK_SIZE,
        sm::WINDOW_SIZE,
        sm::ACK_INTERVAL,
    ];
    let mut headers: Headers = chunk
        .iter()
        .filter(|(k, _)| !PER_CHUNK.contains(k))
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    headers.insert(keys::CHANNEL, header.channel.as_str());
    headers.insert(keys::TOPIC, header.topic.as_str());
    headers.insert(keys::PAYLOAD_LEN, Value::from(header.total_size));
    // The whole payload is encoded as the stream says; the chunks' own encoding only describes each chunk.
    if let Some(encoding) = chunk.get(sm::PAYLOAD_ENCODING) {
        headers.insert(keys::PAYLOAD_ENCODING, encoding.clone());
    }
    headers
}
