//! Cells: endpoints named by FQCN that exchange messages over a tree of connections.
//!
//! A cell may listen for children, connect to a parent, or both (a relay). Requests are routed hop by hop through
//! the cells between origin and destination; replies come back the same way. Handlers run on the caller's choice
//! of executor: the core calls them on a transport thread and they must hand work off at once (the Python binding
//! queues them to its callback pool).

mod dispatch;
mod files;
pub mod fqcn;
mod incoming;
mod message;
mod peers;
mod reader;
mod router;
mod streaming;

pub use files::{safe_file_name, FileHandler, FILE_NAME};
pub use message::{encoding, keys, msg_type, Message, ReturnCode};
pub use reader::{ReaderHandler, StreamReader};
pub use router::{Hop, RoutingTable};
pub use streaming::{BlobHandler, RETURN_CHANNEL};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::{CommConfig, ConfigError};
use crate::conn::{Connection, LocalEndpoint};
use crate::driver::{DriverError, Url};
use crate::frame::{Headers, Value};

/// Errors of the cell layer (setting up a cell; request outcomes are return codes, not errors).
#[derive(Debug, thiserror::Error)]
pub enum CellError {
    #[error("invalid cell name: {0}")]
    InvalidName(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("cell {0:?} is closed")]
    Closed(String),
    #[error("a cell needs a tokio runtime: create it inside one")]
    NoRuntime,
}

/// Handles one incoming request. Called on a transport thread: hand the request off, never block.
pub type RequestHandler = Arc<dyn Fn(IncomingRequest) + Send + Sync>;

/// A change in the set of cells this cell can reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Up(String),
    Down { name: String, reason: String },
}

/// Called on a transport thread for every `PeerEvent`; must not block.
pub type PeerCallback = Arc<dyn Fn(PeerEvent) + Send + Sync>;

/// A request delivered to a handler, with the means to answer it.
pub struct IncomingRequest {
    pub message: Message,
    pub responder: Responder,
}

/// Sends the reply to one request, from any thread. Dropped without `reply`, it answers OK with an empty payload
/// so that the requester never waits for its timeout because a handler forgot to answer.
pub struct Responder {
    cell: Weak<CellInner>,
    request_headers: Option<Headers>,
}

impl Responder {
    /// Whether the requester waits for a reply (false for fire-and-forget).
    pub fn reply_expected(&self) -> bool {
        self.request_headers.is_some()
    }

    pub fn reply(mut self, reply: Message) {
        self.send(reply);
    }

    /// Answers nothing, so the requester waits for its timeout: fault injection for tests of retry paths.
    pub fn discard(mut self) {
        self.request_headers.take();
    }

    fn send(&mut self, reply: Message) {
        let (Some(request_headers), Some(cell)) = (self.request_headers.take(), self.cell.upgrade()) else {
            return;
        };
        let handle = cell.handle.clone();
        handle.spawn(async move { cell.send_reply(&request_headers, reply).await });
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.request_headers.is_some() {
            self.send(Message::default());
        }
    }
}

struct Waiter {
    tx: oneshot::Sender<Message>,
    /// The direct peer the request left through, so that losing it fails the request at once.
    via: Option<String>,
    /// Where the request goes, so that losing the route to it (a leaf behind a relay) fails the request at once.
    target: String,
}

pub(crate) struct CellInner {
    fqcn: String,
    config: CommConfig,
    handle: Handle,
    local: LocalEndpoint,
    routes: Mutex<RoutingTable>,
    conns: Mutex<HashMap<String, Connection>>,
    waiters: Mutex<HashMap<String, Waiter>>,
    handlers: RwLock<HashMap<(String, String), RequestHandler>>,
    peer_callbacks: RwLock<Vec<PeerCallback>>,
    /// Bumped on every change of the reachable set, so waiters can watch it.
    topology: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    streams: streaming::Streams,
    /// Set once `connect` has started the link to a parent.
    parent_link: AtomicBool,
    listen_urls: Mutex<Vec<Url>>,
}

/// A cell. Cheap to clone; all clones are the same cell.
#[derive(Clone)]
pub struct Cell {
    inner: Arc<CellInner>,
}

/// Handshake property telling a peer that this cell understands route advertisements.
pub(crate) const ROUTING_PROPERTY: &str = "flare_routing";
/// Channels NVFlare's `Cell` never streams (its `CHANNELS_TO_EXCLUDE`): an NVFlare peer listens for plain messages
/// there, so we stream on them only what cannot travel as one frame.
const UNSTREAMED_CHANNELS: [&str; 8] = [
    "admin",
    "task",
    "server_parent_listener",
    "client_command",
    "client_sub_worker_command",
    "multi_process_executor",
    "simulator_runner",
    "return_only",
];
/// NVFlare's goodbye request, sent by a stopping cell to each peer.
const BYE_CHANNEL: &str = "cellnet.channel";
const BYE_TOPIC: &str = "bye";
/// Payloads up to this size ride the control lane; larger ones the bulk lane.
const CONTROL_LANE_MAX_PAYLOAD: usize = 16 * 1024;

impl Cell {
    /// Creates a cell inside the current tokio runtime.
    pub fn new(fqcn: &str, config: CommConfig) -> Result<Cell, CellError> {
        let handle = Handle::try_current().map_err(|_| CellError::NoRuntime)?;
        Cell::with_handle(fqcn, config, handle)
    }

    /// Creates a cell whose tasks run on `handle` (for callers outside the runtime, such as bindings).
    pub fn with_handle(fqcn: &str, config: CommConfig, handle: Handle) -> Result<Cell, CellError> {
        let fqcn = fqcn.trim();
        fqcn::validate(fqcn).map_err(CellError::InvalidName)?;
        config.validate()?;
        let mut properties = Headers::new();
        properties.insert(ROUTING_PROPERTY, true);
        // NVFlare announces its name a second time under this property; peers may look it up there.
        properties.insert("fqcn", fqcn);
        let inner = CellInner {
            fqcn: fqcn.to_string(),
            config,
            handle,
            local: LocalEndpoint {
                name: fqcn.to_string(),
                properties,
            },
            routes: Mutex::new(RoutingTable::new(fqcn)),
            conns: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            handlers: RwLock::new(HashMap::new()),
            peer_callbacks: RwLock::new(Vec::new()),
            topology: watch::channel(0).0,
            shutdown: watch::channel(false).0,
            parent_link: AtomicBool::new(false),
            streams: streaming::Streams::new(),
            listen_urls: Mutex::new(Vec::new()),
        };
        let cell = Cell { inner: Arc::new(inner) };
        cell.inner.handle.spawn(streaming::janitor(Arc::downgrade(&cell.inner)));
        // NVFlare cells say goodbye with a request on this channel when they stop; it needs no more than an OK.
        cell.register_request_handler(
            BYE_CHANNEL,
            BYE_TOPIC,
            Arc::new(|request: IncomingRequest| drop(request)),
        );
        Ok(cell)
    }

    pub fn fqcn(&self) -> &str {
        &self.inner.fqcn
    }

    pub fn config(&self) -> &CommConfig {
        &self.inner.config
    }

    pub fn runtime(&self) -> &Handle {
        &self.inner.handle
    }

    /// Listens for child cells on `url` (`tcp://host:0` picks a free port). Returns the bound URL.
    pub async fn listen(&self, url: &str) -> Result<Url, CellError> {
        self.inner.ensure_open()?;
        let (listener, bound) = crate::driver::listen(url).await?;
        self.inner.listen_urls.lock().expect("urls lock").push(bound.clone());
        self.inner
            .handle
            .spawn(peers::accept_loop(self.inner.clone(), listener));
        Ok(bound)
    }

    /// Connects to a parent cell at `url`, in the background, reconnecting with backoff whenever the link drops.
    pub fn connect(&self, url: &str) -> Result<(), CellError> {
        self.inner.ensure_open()?;
        Url::parse(url)?;
        self.inner.parent_link.store(true, Ordering::Relaxed);
        self.inner
            .handle
            .spawn(peers::connect_loop(self.inner.clone(), url.to_string()));
        Ok(())
    }

    pub fn listen_urls(&self) -> Vec<Url> {
        self.inner.listen_urls.lock().expect("urls lock").clone()
    }

    /// Registers the handler for requests on (`channel`, `topic`); topic `*` matches any topic of the channel.
    pub fn register_request_handler(&self, channel: &str, topic: &str, handler: RequestHandler) {
        self.inner
            .handlers
            .write()
            .expect("handlers lock")
            .insert((channel.into(), topic.into()), handler);
    }

    /// Registers the handler of whole blobs sent to (`channel`, `topic`) with `send_blob`; topic `*` matches any.
    pub fn register_blob_handler(&self, channel: &str, topic: &str, handler: BlobHandler) {
        self.inner.streams.register_blob_handler(channel, topic, handler);
    }

    /// Streams `payload` to `target`'s blob handler for (`channel`, `topic`), with `headers`, and returns once the
    /// last chunk has been handed to the network (as NVFlare's `send_blob`). No size ceiling; only idle time counts
    /// against the stream's timeouts.
    pub async fn send_blob(
        &self,
        target: &str,
        channel: &str,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Result<(), crate::stream::StreamError> {
        self.inner
            .send_stream(target, channel, topic, headers, files::Source::Memory(payload))
            .await
    }

    /// Streams the file at `path` to `target`'s file handler for (`channel`, `topic`), read chunk by chunk: memory
    /// stays bounded by the window whatever the file's size. The receiver names the file after `path`'s base name
    /// (header `file_name`) inside its own directory. Returns the number of bytes sent.
    pub async fn send_file(
        &self,
        target: &str,
        channel: &str,
        topic: &str,
        mut headers: Headers,
        path: &std::path::Path,
    ) -> Result<u64, crate::stream::StreamError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !headers.contains_key(FILE_NAME) {
            headers.insert(FILE_NAME, name);
        }
        let source = files::Source::open_file(path)?;
        let len = source.len();
        self.inner.send_stream(target, channel, topic, headers, source).await?;
        Ok(len)
    }

    /// Receives files streamed with `send_file` to (`channel`, `topic`) into `dir`; `handler(headers, path, size)`
    /// runs once a file is complete (it is written as `<name>.part` until then). Names that would leave `dir` are
    /// refused and the sender told why.
    pub fn register_file_handler(&self, channel: &str, topic: &str, dir: std::path::PathBuf, handler: FileHandler) {
        self.inner.streams.register_file_handler(channel, topic, dir, handler);
    }

    /// Hands each new stream to (`channel`, `topic`) to `handler` as a `StreamReader` as soon as its first chunk
    /// arrives; the reader takes chunks in order as they come, and the sender moves at the reader's pace.
    pub fn register_stream_reader(&self, channel: &str, topic: &str, handler: ReaderHandler) {
        self.inner.streams.register_reader_handler(channel, topic, handler);
    }

    /// Streams in progress, as (outgoing, incoming): for diagnostics and tests.
    pub fn stream_counts(&self) -> (usize, usize) {
        self.inner.stream_counts()
    }

    pub fn on_peer_event(&self, callback: PeerCallback) {
        self.inner
            .peer_callbacks
            .write()
            .expect("callbacks lock")
            .push(callback);
    }

    /// Cells with a live connection to this one.
    pub fn peers(&self) -> Vec<String> {
        self.inner.routes.lock().expect("routes lock").direct_peers()
    }

    /// Cells this one has a connection or a learned route to.
    pub fn reachable(&self) -> Vec<String> {
        self.inner.routes.lock().expect("routes lock").reachable()
    }

    pub fn next_hop(&self, target: &str) -> Hop {
        self.inner.routes.lock().expect("routes lock").next_hop(target)
    }

    /// Waits until `target` can be routed to without going through the parent (a connection or a learned route,
    /// or `target` is the parent). Returns false on timeout.
    pub async fn wait_for_peer(&self, target: &str, timeout: Duration) -> bool {
        let mut rx = self.inner.topology.subscribe();
        let known = |inner: &CellInner| {
            let routes = inner.routes.lock().expect("routes lock");
            routes.reachable().iter().any(|r| r == target)
        };
        let wait = async {
            loop {
                if known(&self.inner) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }

    /// Sends a request and waits for its reply. Failures come back as replies with a return code
    /// (`TIMEOUT`, `TARGET_UNREACHABLE`, `COMM_ERROR`, ...) and an error text, never as a hang.
    pub async fn request(
        &self,
        target: &str,
        channel: &str,
        topic: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Message {
        self.inner
            .request(target, channel, topic, headers, payload, timeout)
            .await
    }

    /// Sends the same request to many targets at once; one reply per target.
    pub async fn broadcast(
        &self,
        targets: &[String],
        channel: &str,
        topic: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Vec<(String, Message)> {
        let tasks: Vec<_> = targets
            .iter()
            .map(|t| {
                let inner = self.inner.clone();
                let (t, c, tp, h, p) = (
                    t.clone(),
                    channel.to_string(),
                    topic.to_string(),
                    headers.clone(),
                    payload.clone(),
                );
                self.inner
                    .handle
                    .spawn(async move { inner.request(&t, &c, &tp, h, p, timeout).await })
            })
            .collect();
        let mut replies = Vec::with_capacity(targets.len());
        for (target, task) in targets.iter().zip(tasks) {
            let reply = task.await.unwrap_or_else(|e| {
                Message::error_reply(ReturnCode::ProcessException, format!("request task failed: {e}"))
            });
            replies.push((target.clone(), reply));
        }
        replies
    }

    /// Sends a message that expects no reply to each target. Returns, per target, an empty string once the message
    /// has been handed to the network, or the reason it could not be.
    pub async fn fire_and_forget(
        &self,
        targets: &[String],
        channel: &str,
        topic: &str,
        headers: Headers,
        payload: Bytes,
    ) -> Vec<(String, String)> {
        let mut results = Vec::with_capacity(targets.len());
        for target in targets {
            let msg = self
                .inner
                .new_message(target, channel, topic, headers.clone(), payload.clone(), None);
            let deadline = Instant::now() + self.inner.config.send_timeout;
            let err = match self.inner.send_message(msg, deadline).await {
                Ok(_) => String::new(),
                Err(e) => e.error().unwrap_or("send failed").to_string(),
            };
            results.push((target.clone(), err));
        }
        results
    }

    /// Closes every connection and stops listening and reconnecting. Pending requests fail at once.
    pub fn close(&self) {
        self.inner.close();
    }
}

impl CellInner {
    /// Whether a request of `len` payload bytes travels as a stream rather than a single frame.
    fn should_stream(&self, target: &str, channel: &str, len: usize) -> bool {
        if target == self.fqcn {
            return false;
        }
        let frame_capacity = self.config.max_frame_size.saturating_sub(crate::config::FRAME_OVERHEAD);
        if UNSTREAMED_CHANNELS.contains(&channel) {
            return len > frame_capacity;
        }
        len > self.config.effective_stream_threshold()
    }

    fn ensure_open(&self) -> Result<(), CellError> {
        if *self.shutdown.borrow() {
            return Err(CellError::Closed(self.fqcn.clone()));
        }
        Ok(())
    }

    fn close(&self) {
        self.shutdown.send_replace(true);
        let conns: Vec<Connection> = self.conns.lock().expect("conns lock").values().cloned().collect();
        for conn in conns {
            conn.close(&format!("cell {:?} closed", self.fqcn));
        }
        let waiters: Vec<Waiter> = self
            .waiters
            .lock()
            .expect("waiters lock")
            .drain()
            .map(|(_, w)| w)
            .collect();
        for w in waiters {
            let _ = w.tx.send(Message::error_reply(
                ReturnCode::CommError,
                format!("cell {:?} closed", self.fqcn),
            ));
        }
    }

    /// Headers of a new message from this cell.
    fn new_message(
        &self,
        target: &str,
        channel: &str,
        topic: &str,
        mut headers: Headers,
        payload: Bytes,
        req_id: Option<&str>,
    ) -> Message {
        headers.insert(keys::CHANNEL, channel);
        headers.insert(keys::TOPIC, topic);
        headers.insert(keys::ORIGIN, self.fqcn.as_str());
        headers.insert(keys::FROM, self.fqcn.as_str());
        headers.insert(keys::DESTINATION, target);
        headers.insert(keys::MSG_TYPE, msg_type::REQUEST);
        headers.insert(keys::REPLY_EXPECTED, req_id.is_some());
        if let Some(id) = req_id {
            headers.insert(keys::REQ_ID, id);
        }
        if !headers.contains_key(keys::PAYLOAD_ENCODING) {
            headers.insert(keys::PAYLOAD_ENCODING, encoding::BYTES);
        }
        headers.insert(keys::PAYLOAD_LEN, payload.len() as u64);
        headers.insert(keys::SEND_TIME, unix_now());
        headers.insert(keys::SECURE, false);
        headers.insert(keys::OPTIONAL, false);
        headers.insert(keys::ROUTE, Value::Array(vec![route_entry(&self.fqcn)]));
        Message::new(headers, payload)
    }

    async fn request(
        self: &Arc<Self>,
        target: &str,
        channel: &str,
        topic: &str,
        headers: Headers,
        payload: Bytes,
        timeout: Duration,
    ) -> Message {
        let mut deadline = Instant::now() + timeout;
        let req_id = new_request_id();
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters lock").insert(
            req_id.clone(),
            Waiter {
                tx,
                via: None,
                target: target.to_string(),
            },
        );
        // Removes the waiter however this future ends, dropped by a caller included.
        let _guard = WaiterGuard {
            cell: self,
            req_id: &req_id,
        };
        if self.should_stream(target, channel, payload.len()) {
            // NVFlare's streamed request: the payload goes as a stream carrying `sm__ri`; the reply comes back as a
            // stream on `return_only` with the same `sm__ri`, which is also our waiter's key.
            let mut headers = headers;
            headers.insert(crate::stream::wire::keys::REQ_ID, req_id.as_str());
            streaming::move_encoding_to_stream(&mut headers);
            if let Err(err) = self
                .send_stream(target, channel, topic, headers, files::Source::Memory(payload))
                .await
            {
                return Message::error_reply(
                    stream_return_code(&err),
                    format!("streaming the request to {target:?} failed: {err}"),
                );
            }
            // The stream's own watchdogs governed the send, however long it took; the reply gets the full timeout.
            deadline = Instant::now() + timeout;
        } else {
            let msg = self.new_message(target, channel, topic, headers, payload, Some(&req_id));
            match self.send_message(msg, deadline).await {
                Ok(via) => {
                    if let Some(w) = self.waiters.lock().expect("waiters lock").get_mut(&req_id) {
                        w.via = via;
                    }
                }
                Err(reply) => return reply,
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Message::error_reply(ReturnCode::CommError, format!("cell {:?} closed", self.fqcn)),
            Err(_) => Message::error_reply(
                ReturnCode::Timeout,
                format!("no reply from {target:?} on {channel}/{topic} within {timeout:?}"),
            ),
        }
    }
}

/// The return code of a request whose stream failed.
fn stream_return_code(err: &crate::stream::StreamError) -> ReturnCode {
    use crate::stream::StreamError;
    match err {
        e if e.is_stall() => ReturnCode::Timeout,
        StreamError::ReadTimeout { .. } => ReturnCode::Timeout,
        StreamError::TooLarge { .. } => ReturnCode::MsgTooBig,
        _ => ReturnCode::CommError,
    }
}

struct WaiterGuard<'a> {
    cell: &'a CellInner,
    req_id: &'a str,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.cell.waiters.lock().expect("waiters lock").remove(self.req_id);
    }
}

/// One `cn__route` entry: `[fqcn, unix time]`.
fn route_entry(fqcn: &str) -> Value {
    Value::Array(vec![Value::from(fqcn), Value::F64(unix_now())])
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A random UUID-4 string, the form NVFlare uses for request ids.
fn new_request_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
