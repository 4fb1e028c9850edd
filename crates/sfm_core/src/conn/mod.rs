//! One link to a peer: a reader task, a writer task that serves the control lane before the bulk lane, and a
//! keep-alive timer. Tasks run on tokio threads and never touch Python, so a process whose Python code holds the
//! GIL still answers PINGs and keeps its connections.

mod handshake;
mod io;
mod keepalive;

pub use handshake::{LocalEndpoint, Side, ENDPOINT_NAME};
pub(crate) use io::advise_huge_pages;
pub use keepalive::{KeepAlive, KeepAliveAction};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::CommConfig;
use crate::frame::{Frame, FrameError, FrameType, Headers};

use io::{FrameReader, FrameWriter};

/// Which queue a frame waits in. The writer always drains `Control` first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Heartbeats, ACKs, small requests and replies.
    Control,
    /// Payload-carrying frames.
    Bulk,
}

/// Errors of the connection layer.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ConnError {
    #[error("connection to {peer:?} is closed: {reason}")]
    Closed { peer: String, reason: String },
    #[error("sending to {peer:?} did not complete within {timeout:?}")]
    SendTimeout { peer: String, timeout: Duration },
    #[error(
        "writing to {peer:?} made no progress for {timeout:?} (setting streaming_send_timeout); connection closed"
    )]
    WriteStalled { peer: String, timeout: Duration },
    #[error("frame refused: {0}")]
    Frame(#[from] FrameError),
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error("i/o error: {0}")]
    Io(String),
}

/// Receives what a connection reads. Implementations must return quickly: they run on the reader task.
pub trait FrameSink: Send + Sync + 'static {
    /// Called once the handshake is done and before the first frame is read, so that the owner can register the
    /// connection before anything that arrives on it needs an answer.
    fn on_open(&self, _conn: &Connection) {}
    fn on_frame(&self, conn: &Connection, frame: Frame);
    /// Called exactly once, when the connection closes for any reason.
    fn on_closed(&self, conn: &Connection, reason: &str);
}

struct Outgoing {
    frame: Frame,
    deadline: Instant,
    done: Option<oneshot::Sender<Result<(), ConnError>>>,
    _budget: Option<OwnedSemaphorePermit>,
}

struct Inner {
    id: u64,
    side: Side,
    peer_name: String,
    peer_props: Headers,
    remote_addr: Option<SocketAddr>,
    config: CommConfig,
    control_tx: mpsc::Sender<Outgoing>,
    bulk_tx: mpsc::UnboundedSender<Outgoing>,
    bulk_budget: Arc<Semaphore>,
    next_stream_id: AtomicU16,
    keepalive: Mutex<KeepAlive>,
    closed: watch::Sender<Option<Arc<str>>>,
}

/// A cheap handle to an established connection.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.inner.id)
            .field("peer", &self.inner.peer_name)
            .finish()
    }
}

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);
/// NVFlare reserves stream ids up to 16.
const RESERVED_STREAM_ID: u16 = 16;

impl Connection {
    /// Runs the handshake on a fresh socket, then starts the reader, writer and keep-alive tasks.
    pub async fn establish(
        stream: TcpStream,
        side: Side,
        local: &LocalEndpoint,
        config: &CommConfig,
        sink: Arc<dyn FrameSink>,
    ) -> Result<Connection, ConnError> {
        let _ = stream.set_nodelay(config.tcp_no_delay);
        io::limit_unsent(&stream, config.tcp_notsent_lowat);
        let remote_addr = stream.peer_addr().ok();
        let (rd, wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, config.max_frame_size, config.receive_huge_pages);
        let mut writer = FrameWriter::new(wr, config.max_frame_size, config.send_timeout);
        let handshake = async {
            match side {
                Side::Active => {
                    writer
                        .write(handshake::handshake_frame(FrameType::Hello, local))
                        .await?;
                    let ready = reader.next_of(FrameType::Ready).await?;
                    handshake::parse_peer(&ready, &local.name)
                }
                Side::Passive => {
                    let hello = reader.next_of(FrameType::Hello).await?;
                    let peer = handshake::parse_peer(&hello, &local.name)?;
                    writer
                        .write(handshake::handshake_frame(FrameType::Ready, local))
                        .await?;
                    Ok(peer)
                }
            }
        };
        let (peer_name, peer_props) =
            tokio::time::timeout(config.connect_timeout, handshake)
                .await
                .map_err(|_| {
                    ConnError::Handshake(format!(
                        "no handshake within {:?} (setting connect_timeout)",
                        config.connect_timeout
                    ))
                })??;

        writer.peer = peer_name.clone();
        let (control_tx, control_rx) = mpsc::channel(config.control_queue_frames);
        let (bulk_tx, bulk_rx) = mpsc::unbounded_channel();
        let (closed, _) = watch::channel(None);
        let conn = Connection {
            inner: Arc::new(Inner {
                id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
                side,
                peer_name,
                peer_props,
                remote_addr,
                config: config.clone(),
                control_tx,
                bulk_tx,
                bulk_budget: Arc::new(Semaphore::new(config.bulk_queue_bytes.min(u32::MAX as usize))),
                next_stream_id: AtomicU16::new(RESERVED_STREAM_ID),
                keepalive: Mutex::new(KeepAlive::new(
                    config.heartbeat_interval,
                    config.heartbeat_timeout,
                    Instant::now().into_std(),
                )),
                closed,
            }),
        };
        sink.on_open(&conn);
        tokio::spawn(conn.clone().run_writer(writer, control_rx, bulk_rx));
        tokio::spawn(conn.clone().run_reader(reader, sink.clone()));
        tokio::spawn(conn.clone().run_keepalive(sink));
        Ok(conn)
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn side(&self) -> Side {
        self.inner.side
    }

    /// The peer's FQCN from its HELLO or READY.
    pub fn peer_name(&self) -> &str {
        &self.inner.peer_name
    }

    /// Everything the peer announced in its handshake.
    pub fn peer_properties(&self) -> &Headers {
        &self.inner.peer_props
    }

    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.borrow().is_some()
    }

    /// Next stream id for an outgoing DATA frame (NVFlare's per-endpoint counter, skipping reserved ids).
    pub fn next_stream_id(&self) -> u16 {
        loop {
            let id = self
                .inner
                .next_stream_id
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(1);
            if id > RESERVED_STREAM_ID {
                return id;
            }
        }
    }

    /// Queues `frame` on `lane` and waits until it has been written. Never waits past `deadline`: a frame still
    /// queued then is dropped unsent, and the caller gets `SendTimeout` (a frame already being written finishes or
    /// fails on its own, under `send_timeout`).
    pub async fn send_frame(&self, frame: Frame, lane: Lane, deadline: Instant) -> Result<(), ConnError> {
        let started = Instant::now();
        let timed_out = || ConnError::SendTimeout {
            peer: self.inner.peer_name.clone(),
            timeout: deadline.saturating_duration_since(started),
        };
        let (done_tx, done_rx) = oneshot::channel();
        let enqueue = self.enqueue(frame, lane, deadline, Some(done_tx));
        tokio::time::timeout_at(deadline, enqueue)
            .await
            .map_err(|_| timed_out())??;
        match tokio::time::timeout_at(deadline, done_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(timed_out()),
        }
    }

    /// Queues `frame` on `lane`, waiting (until `deadline`) only for room in the lane, not for the write. The frame
    /// then waits in its lane as long as the connection lives: stream chunks use this, their window bounding what
    /// is queued and their ACK watchdog catching a receiver that stops.
    pub async fn queue_frame(&self, frame: Frame, lane: Lane, deadline: Instant) -> Result<(), ConnError> {
        let started = Instant::now();
        let far = started + Duration::from_secs(365 * 24 * 3600);
        tokio::time::timeout_at(deadline, self.enqueue(frame, lane, far, None))
            .await
            .map_err(|_| ConnError::SendTimeout {
                peer: self.inner.peer_name.clone(),
                timeout: deadline.saturating_duration_since(started),
            })?
    }

    /// Queues a frame without waiting for it to be written (PONGs, fire-and-forget). The control lane refuses when
    /// full rather than blocking.
    pub fn send_frame_nowait(&self, frame: Frame, lane: Lane, deadline: Instant) -> Result<(), ConnError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let out = Outgoing {
            frame,
            deadline,
            done: None,
            _budget: None,
        };
        match lane {
            Lane::Control => self.inner.control_tx.try_send(out).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ConnError::SendTimeout {
                    peer: self.inner.peer_name.clone(),
                    timeout: Duration::ZERO,
                },
                mpsc::error::TrySendError::Closed(_) => self.closed_error(),
            }),
            Lane::Bulk => self.inner.bulk_tx.send(out).map_err(|_| self.closed_error()),
        }
    }

    async fn enqueue(
        &self,
        frame: Frame,
        lane: Lane,
        deadline: Instant,
        done: Option<oneshot::Sender<Result<(), ConnError>>>,
    ) -> Result<(), ConnError> {
        if self.is_closed() {
            return Err(self.closed_error());
        }
        match lane {
            Lane::Control => {
                let out = Outgoing {
                    frame,
                    deadline,
                    done,
                    _budget: None,
                };
                self.inner.control_tx.send(out).await.map_err(|_| self.closed_error())
            }
            Lane::Bulk => {
                // The bulk lane is bounded in bytes, not frames: a frame bigger than the whole budget takes all of it.
                let cost = frame
                    .payload
                    .len()
                    .clamp(1, self.inner.config.bulk_queue_bytes)
                    .min(u32::MAX as usize);
                let permit = self
                    .inner
                    .bulk_budget
                    .clone()
                    .acquire_many_owned(cost as u32)
                    .await
                    .map_err(|_| self.closed_error())?;
                let out = Outgoing {
                    frame,
                    deadline,
                    done,
                    _budget: Some(permit),
                };
                self.inner.bulk_tx.send(out).map_err(|_| self.closed_error())
            }
        }
    }

    /// Closes the connection; pending and later sends fail with `Closed`. Only the first reason is kept.
    pub fn close(&self, reason: &str) {
        self.inner.closed.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(Arc::from(reason));
            true
        });
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.closed.borrow().as_deref().map(str::to_string)
    }

    /// Resolves when the connection has closed.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.subscribe();
        let _ = rx.wait_for(|r| r.is_some()).await;
    }

    fn closed_error(&self) -> ConnError {
        ConnError::Closed {
            peer: self.inner.peer_name.clone(),
            reason: self.close_reason().unwrap_or_else(|| "closing".into()),
        }
    }

    async fn run_reader(self, mut reader: FrameReader, sink: Arc<dyn FrameSink>) {
        loop {
            let next = tokio::select! {
                next = reader.next() => next,
                _ = self.closed() => return,
            };
            match next {
                Ok(Some(frame)) => {
                    self.inner
                        .keepalive
                        .lock()
                        .expect("keepalive lock")
                        .on_receive(Instant::now().into_std());
                    self.dispatch(frame, &sink);
                }
                Ok(None) => return self.close("peer closed the connection"),
                Err(e) => {
                    // the peer broke the protocol (a malformed or oversized frame): its side only sees the
                    // connection drop, so the reason must show here
                    tracing::warn!(peer = %self.inner.peer_name, "closing the connection: {e}");
                    return self.close(&e.to_string());
                }
            }
        }
    }

    fn dispatch(&self, frame: Frame, sink: &Arc<dyn FrameSink>) {
        match frame.frame_type {
            FrameType::Data => sink.on_frame(self, frame),
            FrameType::Ping => {
                let pong = Frame::control(FrameType::Pong, self.next_stream_id(), handshake::ping_payload());
                let deadline = Instant::now() + self.inner.config.send_timeout;
                if let Err(e) = self.send_frame_nowait(pong, Lane::Control, deadline) {
                    tracing::warn!(peer = %self.inner.peer_name, "cannot answer PING: {e}");
                }
            }
            FrameType::Pong | FrameType::Hello | FrameType::Ready => {}
            other => tracing::debug!(peer = %self.inner.peer_name, "ignoring unsupported frame type {other:?}"),
        }
    }

    async fn run_writer(
        self,
        mut writer: FrameWriter,
        mut control_rx: mpsc::Receiver<Outgoing>,
        mut bulk_rx: mpsc::UnboundedReceiver<Outgoing>,
    ) {
        loop {
            let out = tokio::select! {
                biased;
                _ = self.closed() => break,
                Some(out) = control_rx.recv() => out,
                Some(out) = bulk_rx.recv() => out,
                else => break,
            };
            let Outgoing {
                frame,
                deadline,
                done,
                _budget,
            } = out;
            if Instant::now() >= deadline {
                if let Some(done) = done {
                    let _ = done.send(Err(ConnError::SendTimeout {
                        peer: self.inner.peer_name.clone(),
                        timeout: Duration::ZERO,
                    }));
                }
                continue;
            }
            let result = tokio::select! {
                result = writer.write(frame) => result,
                // A frame cut off mid-write is harmless here: the connection is going away.
                _ = self.closed() => break,
            };
            let fatal = matches!(result, Err(ConnError::Io(_)) | Err(ConnError::WriteStalled { .. }));
            if let Err(e) = &result {
                if fatal {
                    self.close(&e.to_string());
                }
            }
            if let Some(done) = done {
                let _ = done.send(result);
            }
        }
        writer.shutdown().await;
    }

    /// Drives the keep-alive state machine and reports the close to the sink, exactly once.
    async fn run_keepalive(self, sink: Arc<dyn FrameSink>) {
        loop {
            let deadline = self.inner.keepalive.lock().expect("keepalive lock").next_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(Instant::from_std(deadline)) => {}
                _ = self.closed() => break,
            }
            let action = self
                .inner
                .keepalive
                .lock()
                .expect("keepalive lock")
                .poll(Instant::now().into_std());
            match action {
                KeepAliveAction::Wait => {}
                KeepAliveAction::SendPing => {
                    let ping = Frame::control(FrameType::Ping, self.next_stream_id(), handshake::ping_payload());
                    let deadline = Instant::now() + self.inner.config.send_timeout;
                    let _ = self.send_frame_nowait(ping, Lane::Control, deadline);
                }
                KeepAliveAction::PeerDead { silent_for } => {
                    self.close(&format!(
                        "no frame from {:?} for {:.1}s (setting heartbeat_timeout = {:?})",
                        self.inner.peer_name,
                        silent_for.as_secs_f64(),
                        self.inner.config.heartbeat_timeout
                    ));
                    break;
                }
            }
        }
        let reason = self.close_reason().unwrap_or_else(|| "closed".into());
        sink.on_closed(&self, &reason);
    }
}
