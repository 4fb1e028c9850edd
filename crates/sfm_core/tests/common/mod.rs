//! Shared helpers of the loopback integration tests: fast settings, cells wired into trees, handlers, a scripted
//! raw TCP peer that speaks SFM frames by hand, and a frame sink for connection-level tests.
//!
//! Every wait here is bounded; a helper that runs out of time panics with what it was waiting for.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sfm_core::cell::{IncomingRequest, PeerEvent};
use sfm_core::conn::{Connection, FrameSink, LocalEndpoint, Side};
use sfm_core::frame::{encode_value, Frame, FrameCodec, FrameType, Headers, Value};
use sfm_core::{Cell, CommConfig, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Loopback with an ephemeral port.
pub const ANY_PORT: &str = "tcp://127.0.0.1:0";

/// Settings for loopback tests: quick reconnects and connects, default keep-alive (tests that need a short one set
/// it themselves).
pub fn fast_config() -> CommConfig {
    CommConfig {
        connect_timeout: Duration::from_secs(2),
        reconnect_initial_backoff: Duration::from_millis(50),
        reconnect_max_backoff: Duration::from_millis(400),
        send_timeout: Duration::from_secs(5),
        ..CommConfig::default()
    }
}

/// Runs `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// The URL a cell listens on, as a string for `Cell::connect`.
pub async fn listen(cell: &Cell) -> String {
    cell.listen(ANY_PORT).await.expect("listen").to_string()
}

/// A listening `server` and a `relay-1` that listens and is connected to it; returns both and the relay's URL.
pub async fn server_and_relay(cfg: &CommConfig) -> (Cell, Cell, String) {
    let server = Cell::new("server", cfg.clone()).unwrap();
    let server_url = listen(&server).await;
    let relay = Cell::new("relay-1", cfg.clone()).unwrap();
    let relay_url = listen(&relay).await;
    relay.connect(&server_url).unwrap();
    (server, relay, relay_url)
}

/// Starts `from.request(target, "test", topic, payload)` in the background (for requests a test expects to fail).
pub fn spawn_request(
    from: &Cell,
    target: &str,
    topic: &'static str,
    payload: Bytes,
    timeout: Duration,
) -> tokio::task::JoinHandle<Message> {
    let (from, target) = (from.clone(), target.to_string());
    tokio::spawn(async move {
        from.request(&target, "test", topic, Headers::new(), payload, timeout)
            .await
    })
}

/// Waits until `cell` can route to each of `targets` without its parent.
pub async fn wait_peers(cell: &Cell, targets: &[&str]) {
    for t in targets {
        assert!(
            cell.wait_for_peer(t, Duration::from_secs(5)).await,
            "{} never learned a route to {t:?}; reachable: {:?}",
            cell.fqcn(),
            cell.reachable()
        );
    }
}

/// Channel and topic of the echo service every test cell runs.
pub const ECHO: (&str, &str) = ("test", "echo");

/// Header in echo replies naming the cell that answered.
pub const ANSWERED_BY: &str = "answered_by";
/// Header in echo replies listing the cells the request crossed (`cn__route`, names only).
pub const SEEN_ROUTE: &str = "seen_route";

/// Registers on `cell` an echo handler: replies with the request payload, the cell's name and the route the request
/// took.
pub fn serve_echo(cell: &Cell) {
    let me = cell.fqcn().to_string();
    cell.register_request_handler(
        ECHO.0,
        ECHO.1,
        Arc::new(move |req: IncomingRequest| {
            let route: Vec<Value> = req
                .message
                .headers
                .get("cn__route")
                .and_then(Value::as_array)
                .map(|hops| {
                    hops.iter()
                        .filter_map(|h| h.as_array().and_then(|h| h.first()).cloned())
                        .collect()
                })
                .unwrap_or_default();
            let mut headers = Headers::new();
            headers.insert(ANSWERED_BY, me.as_str());
            headers.insert(SEEN_ROUTE, Value::Array(route));
            req.responder.reply(Message::new(headers, req.message.payload.clone()));
        }),
    );
}

/// Sends an echo request and returns the reply.
pub async fn echo(from: &Cell, to: &str, payload: &'static [u8], timeout: Duration) -> Message {
    within(
        timeout + Duration::from_secs(2),
        "an echo reply",
        from.request(to, ECHO.0, ECHO.1, Headers::new(), Bytes::from_static(payload), timeout),
    )
    .await
}

/// Names in the `seen_route` header of an echo reply.
pub fn seen_route(reply: &Message) -> Vec<String> {
    reply
        .headers
        .get(SEEN_ROUTE)
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Collects the peer events of a cell into a channel.
pub fn peer_events(cell: &Cell) -> mpsc::UnboundedReceiver<PeerEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    cell.on_peer_event(Arc::new(move |e| {
        let _ = tx.send(e);
    }));
    rx
}

/// Waits for the first event matching `pred`, skipping others.
pub async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<PeerEvent>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&PeerEvent) -> bool,
) -> PeerEvent {
    within(limit, what, async {
        loop {
            let e = rx.recv().await.expect("peer event channel closed");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
}

/// The frame a raw peer sends to open a connection: HELLO (or READY) with `endpoint_name` and `timestamp`, as
/// NVFlare writes it.
pub fn handshake_frame(kind: FrameType, name: &str) -> Frame {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let body = Value::Map(vec![
        (Value::from("endpoint_name"), Value::from(name)),
        (Value::from("timestamp"), Value::F64(now)),
    ]);
    let mut buf = BytesMut::new();
    encode_value(&body, &mut buf);
    Frame::control(kind, 1, buf.freeze())
}

/// A hand-driven peer on a raw TCP socket, reading with `FrameCodec` and writing encoded frames: lets tests behave
/// in ways a real cell never would (stay silent, stop reading, announce absurd sizes).
pub struct RawPeer {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    seq: u16,
}

impl RawPeer {
    pub fn new(stream: TcpStream) -> Self {
        RawPeer {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new(usize::MAX >> 1),
            seq: 0,
        }
    }

    /// Dials `url` (`tcp://host:port`), sends HELLO as `name` and waits for READY.
    pub async fn dial(url: &str, name: &str) -> (RawPeer, Frame) {
        let addr = url.trim_start_matches("tcp://").to_string();
        let stream = within(Duration::from_secs(5), "raw connect", TcpStream::connect(addr))
            .await
            .expect("connect");
        let mut peer = RawPeer::new(stream);
        peer.send(handshake_frame(FrameType::Hello, name)).await;
        let ready = peer.read_frame(Duration::from_secs(5)).await.expect("READY");
        assert_eq!(ready.frame_type, FrameType::Ready, "expected READY, got {ready:?}");
        (peer, ready)
    }

    /// Writes a frame, numbering it as a real sender would.
    pub async fn send(&mut self, mut frame: Frame) {
        self.seq = self.seq.wrapping_add(1);
        frame.sequence = self.seq;
        let bytes = frame.encode().expect("encode");
        self.send_raw(&bytes).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within(Duration::from_secs(5), "raw write", self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// The next frame, or `None` at end of stream. Panics after `limit`.
    pub async fn read_frame(&mut self, limit: Duration) -> Option<Frame> {
        within(limit, "a frame from the connection", self.next_frame()).await
    }

    /// The next frame, or `None` at end of stream (or on a reset, which a closing peer may cause).
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).expect("peer sent a malformed frame") {
                return Some(frame);
            }
            self.buf.reserve(64 * 1024);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads (and discards) until end of stream; panics after `limit`. Returns the frames seen.
    pub async fn read_until_eof(&mut self, limit: Duration) -> Vec<Frame> {
        within(limit, "end of stream", async {
            let mut frames = Vec::new();
            while let Some(f) = self.next_frame().await {
                frames.push(f);
            }
            frames
        })
        .await
    }
}

/// A `FrameSink` forwarding frames to a channel and recording the close reason.
pub struct TestSink {
    frames: mpsc::UnboundedSender<Frame>,
    closes: mpsc::UnboundedSender<String>,
}

impl FrameSink for TestSink {
    fn on_frame(&self, _conn: &Connection, frame: Frame) {
        let _ = self.frames.send(frame);
    }

    fn on_closed(&self, _conn: &Connection, reason: &str) {
        let _ = self.closes.send(reason.to_string());
    }
}

/// One end is a `Connection`, the other a `RawPeer`, joined on loopback.
pub struct ConnPair {
    pub conn: Connection,
    pub raw: RawPeer,
    pub frames: mpsc::UnboundedReceiver<Frame>,
    pub closes: mpsc::UnboundedReceiver<String>,
}

/// Accepts a raw peer's connection as `local` (passive side): the raw peer sends HELLO and reads READY, then does
/// whatever the test says.
pub async fn conn_pair(config: &CommConfig, local: &str, remote: &str) -> ConnPair {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("tcp://{}", listener.local_addr().unwrap());
    let (frames_tx, frames) = mpsc::unbounded_channel();
    let (closes_tx, closes) = mpsc::unbounded_channel();
    let sink: Arc<dyn FrameSink> = Arc::new(TestSink {
        frames: frames_tx,
        closes: closes_tx,
    });
    let local = LocalEndpoint {
        name: local.to_string(),
        properties: Headers::new(),
    };
    let config = config.clone();
    let accept = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        Connection::establish(stream, Side::Passive, &local, &config, sink).await
    });
    let (raw, _ready) = RawPeer::dial(&url, remote).await;
    let conn = within(Duration::from_secs(5), "establish", accept)
        .await
        .unwrap()
        .expect("establish");
    assert_eq!(conn.peer_name(), remote);
    ConnPair {
        conn,
        raw,
        frames,
        closes,
    }
}
