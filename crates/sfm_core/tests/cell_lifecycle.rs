//! Cells coming and going: disconnect detection, reconnecting to a restarted parent, keep-alive against raw peers
//! that stay silent or answer PINGs, and pending requests failing as soon as their path is lost.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sfm_core::cell::{Hop, IncomingRequest, PeerEvent};
use sfm_core::frame::{Frame, FrameType, Headers};
use sfm_core::{Cell, CommConfig, Message, ReturnCode};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);

fn is_down(name: &'static str) -> impl Fn(&PeerEvent) -> bool {
    move |e| matches!(e, PeerEvent::Down { name: n, .. } if n == name)
}

fn is_up(name: &'static str) -> impl Fn(&PeerEvent) -> bool {
    move |e| matches!(e, PeerEvent::Up(n) if n == name)
}

/// A handler that takes requests and never answers them (the responder is leaked, since dropping it would answer
/// OK); each request's payload is reported on the returned channel.
fn black_hole(cell: &Cell) -> mpsc::UnboundedReceiver<Bytes> {
    let (tx, rx) = mpsc::unbounded_channel();
    cell.register_request_handler(
        "test",
        "black_hole",
        Arc::new(move |req: IncomingRequest| {
            let _ = tx.send(req.message.payload.clone());
            std::mem::forget(req.responder);
        }),
    );
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_leaf_goes_down_and_its_route_disappears() {
    let cfg = fast_config();
    let (server, relay, relay_url) = server_and_relay(&cfg).await;
    let site1 = Cell::new("site-1", cfg.clone()).unwrap();
    site1.connect(&server.listen_urls()[0].to_string()).unwrap();
    let site2 = Cell::new("site-2", cfg.clone()).unwrap();
    site2.connect(&relay_url).unwrap();
    let mut events = peer_events(&server);
    wait_peers(&server, &["relay-1", "site-1", "site-2"]).await;

    // A direct child.
    let started = Instant::now();
    site1.close();
    let e = next_event(&mut events, T, "site-1 to go down", is_down("site-1")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let PeerEvent::Down { reason, .. } = e else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    assert!(!server.peers().contains(&"site-1".to_string()), "{:?}", server.peers());
    assert!(!server.reachable().contains(&"site-1".to_string()));
    assert!(matches!(server.next_hop("site-1"), Hop::Unreachable(_)));
    let r = echo(&server, "site-1", b"x", T).await;
    assert_eq!(r.return_code(), ReturnCode::TargetUnreachable, "{:?}", r.error());

    // A leaf behind the relay: the relay withdraws its route.
    let mut relay_events = peer_events(&relay);
    site2.close();
    next_event(
        &mut relay_events,
        T,
        "site-2 to go down at the relay",
        is_down("site-2"),
    )
    .await;
    next_event(&mut events, T, "site-2 to go down at the server", is_down("site-2")).await;
    assert!(
        !server.reachable().contains(&"site-2".to_string()),
        "{:?}",
        server.reachable()
    );
    assert!(matches!(server.next_hop("site-2"), Hop::Unreachable(_)));
    assert_eq!(server.reachable(), ["relay-1"]);

    // The relay itself: everything behind it goes with it.
    let site3 = Cell::new("site-3", cfg).unwrap();
    site3.connect(&relay_url).unwrap();
    wait_peers(&server, &["site-3"]).await;
    relay.close();
    next_event(&mut events, T, "relay-1 to go down", is_down("relay-1")).await;
    next_event(&mut events, T, "site-3 to go down", is_down("site-3")).await;
    assert!(server.reachable().is_empty(), "{:?}", server.reachable());
    site3.close();
    server.close();
}

/// Listens on a fixed port, retrying while the previous owner's listener is still being dropped.
async fn listen_on(cell: &Cell, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match cell.listen(url).await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot listen again on {url}: {e}"),
        }
    }
}

fn serve_incarnation(cell: &Cell, n: i64) {
    cell.register_request_handler(
        "test",
        "who",
        Arc::new(move |req: IncomingRequest| {
            let mut h = Headers::new();
            h.insert("incarnation", n);
            req.responder.reply(Message::new(h, Bytes::new()));
        }),
    );
}

async fn ask_incarnation(from: &Cell, to: &str, timeout: Duration) -> Message {
    within(
        timeout + T,
        "reply",
        from.request(to, "test", "who", Headers::new(), Bytes::new(), timeout),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_reconnects_to_a_restarted_parent() {
    let cfg = fast_config();
    let max_backoff = cfg.reconnect_max_backoff;
    let server = Cell::new("server", cfg.clone()).unwrap();
    serve_incarnation(&server, 1);
    let url = listen(&server).await;
    let child = Cell::new("site-1", cfg.clone()).unwrap();
    serve_echo(&child);
    let mut child_events = peer_events(&child);
    child.connect(&url).unwrap();
    wait_peers(&server, &["site-1"]).await;
    let r = ask_incarnation(&child, "server", T).await;
    assert_eq!(r.headers.get("incarnation").and_then(|v| v.as_i64()), Some(1));

    server.close();
    next_event(&mut child_events, T, "the child to lose its parent", is_down("server")).await;
    // Stay away long enough for the child's backoff to reach its maximum.
    tokio::time::sleep(max_backoff + Duration::from_millis(300)).await;

    // A request made while the parent is away waits for the link instead of failing at once.
    let waiting = {
        let child = child.clone();
        tokio::spawn(async move { ask_incarnation(&child, "server", Duration::from_secs(8)).await })
    };

    let server = Cell::new("server", cfg).unwrap();
    serve_incarnation(&server, 2);
    listen_on(&server, &url).await;
    let restarted = Instant::now();
    assert!(
        server
            .wait_for_peer("site-1", max_backoff + Duration::from_secs(2))
            .await,
        "the child did not come back"
    );
    let took = restarted.elapsed();
    assert!(
        took <= max_backoff + Duration::from_secs(1),
        "reconnected {took:?} after the restart"
    );
    next_event(
        &mut child_events,
        T,
        "the child to see its parent again",
        is_up("server"),
    )
    .await;

    let r = within(T, "the waiting request", waiting).await.unwrap();
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    assert_eq!(r.headers.get("incarnation").and_then(|v| v.as_i64()), Some(2));
    let r = ask_incarnation(&child, "server", T).await;
    assert_eq!(r.headers.get("incarnation").and_then(|v| v.as_i64()), Some(2));
    let r = echo(&server, "site-1", b"back", T).await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    child.close();
    server.close();
}

fn keepalive_config() -> CommConfig {
    CommConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(700),
        ..fast_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_is_declared_dead_after_heartbeat_timeout() {
    let cfg = keepalive_config();
    let server = Cell::new("server", cfg.clone()).unwrap();
    let url = listen(&server).await;
    let mut events = peer_events(&server);
    let (mut raw, _) = RawPeer::dial(&url, "site-silent").await;
    let handshake_done = Instant::now();
    next_event(&mut events, T, "the raw peer to be up", is_up("site-silent")).await;
    // The raw peer reads what comes (PINGs) but never sends anything back.
    let reader = tokio::spawn(async move {
        let frames = raw.read_until_eof(Duration::from_secs(10)).await;
        (frames, Instant::now())
    });

    let e = next_event(
        &mut events,
        cfg.heartbeat_timeout + T,
        "the silent peer to go down",
        is_down("site-silent"),
    )
    .await;
    let took = handshake_done.elapsed();
    let PeerEvent::Down { reason, .. } = e else {
        unreachable!()
    };
    assert!(reason.contains("heartbeat_timeout"), "{reason}");
    assert!(
        took >= cfg.heartbeat_timeout - Duration::from_millis(50),
        "declared dead early, after {took:?}"
    );
    assert!(
        took <= cfg.heartbeat_timeout + Duration::from_secs(1),
        "declared dead late, after {took:?}"
    );
    assert!(!server.peers().contains(&"site-silent".to_string()));

    let (frames, eof_at) = within(T, "the raw peer to see the end", reader).await.unwrap();
    assert!(eof_at.duration_since(handshake_done) <= cfg.heartbeat_timeout + Duration::from_secs(1));
    let pings = frames.iter().filter(|f| f.frame_type == FrameType::Ping).count();
    assert!(pings >= 1, "the server never pinged the silent peer: {frames:?}");
    assert!(frames.iter().all(|f| f.frame_type == FrameType::Ping), "{frames:?}");
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_answering_pings_stays_connected() {
    let cfg = keepalive_config();
    let server = Cell::new("server", cfg.clone()).unwrap();
    let url = listen(&server).await;
    let mut events = peer_events(&server);
    let (mut raw, _) = RawPeer::dial(&url, "site-chatty").await;
    next_event(&mut events, T, "the raw peer to be up", is_up("site-chatty")).await;
    let answering = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(f) = raw.next_frame().await {
            if f.frame_type == FrameType::Ping {
                pings += 1;
                raw.send(Frame::control(
                    FrameType::Pong,
                    f.stream_id,
                    Bytes::from_static(&[0xc0]),
                ))
                .await;
            }
        }
        pings
    });

    let watch = cfg.heartbeat_timeout * 3;
    let quiet = tokio::time::timeout(watch, async {
        loop {
            if let Some(PeerEvent::Down { name, reason }) = events.recv().await {
                return (name, reason);
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "a peer answering PINGs was dropped: {quiet:?}");
    assert!(server.peers().contains(&"site-chatty".to_string()));

    server.close();
    let pings = within(T, "the raw peer to see the end", answering).await.unwrap();
    // One PING per heartbeat_interval of silence.
    assert!(pings >= 3, "only {pings} PINGs in {watch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_fail_fast_when_the_connection_drops() {
    let cfg = fast_config();
    let server = Cell::new("server", cfg.clone()).unwrap();
    let url = listen(&server).await;
    let mut server_hole = black_hole(&server);
    let site1 = Cell::new("site-1", cfg.clone()).unwrap();
    let mut site_hole = black_hole(&site1);
    site1.connect(&url).unwrap();
    wait_peers(&server, &["site-1"]).await;
    let timeout = Duration::from_secs(20);

    // The server waits on site-1, and site-1 on the server.
    let from_server = spawn_request(&server, "site-1", "black_hole", Bytes::from_static(b"s"), timeout);
    let from_site = spawn_request(&site1, "server", "black_hole", Bytes::from_static(b"c"), timeout);
    within(T, "site-1 to get the request", site_hole.recv()).await.unwrap();
    within(T, "the server to get the request", server_hole.recv())
        .await
        .unwrap();

    // The TCP connection goes away (site-1 stops).
    let dropped = Instant::now();
    site1.close();
    for (who, task) in [("server", from_server), ("site-1", from_site)] {
        let r = within(T, "the pending request to fail", task).await.unwrap();
        let took = dropped.elapsed();
        assert_eq!(r.return_code(), ReturnCode::CommError, "{who}: {:?}", r.error());
        assert!(
            took < Duration::from_secs(2),
            "{who}'s request failed {took:?} after the drop, not promptly"
        );
    }
    server.close();
}

/// Which cell disappears while the server waits for site-2's reply through relay-1.
enum Lost {
    /// The server's own connection to the relay drops.
    Relay,
    /// The leaf goes, the relay stays: the server hears of it only through the relay's route withdrawal.
    Leaf,
}

async fn pending_request_through_a_relay_fails_fast(lost: Lost) {
    let cfg = fast_config();
    let (server, relay, relay_url) = server_and_relay(&cfg).await;
    let site2 = Cell::new("site-2", cfg.clone()).unwrap();
    let mut hole = black_hole(&site2);
    site2.connect(&relay_url).unwrap();
    wait_peers(&server, &["site-2"]).await;
    let timeout = Duration::from_secs(20);
    let pending = spawn_request(&server, "site-2", "black_hole", Bytes::new(), timeout);
    within(T, "site-2 to get the request", hole.recv()).await.unwrap();

    let dropped = Instant::now();
    match lost {
        Lost::Relay => relay.close(),
        Lost::Leaf => site2.close(),
    }
    let r = within(T, "the pending request to fail", pending).await.unwrap();
    assert_eq!(r.return_code(), ReturnCode::CommError, "{:?}", r.error());
    if let Lost::Leaf = lost {
        assert!(r.error().unwrap_or_default().contains("site-2"), "{:?}", r.error());
    }
    assert!(
        dropped.elapsed() < Duration::from_secs(2),
        "failed {:?} after the drop",
        dropped.elapsed()
    );
    for cell in [site2, relay, server] {
        cell.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_through_a_relay_fail_fast_when_the_path_drops() {
    pending_request_through_a_relay_fails_fast(Lost::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_request_to_a_leaf_behind_a_relay_fails_fast_when_the_leaf_drops() {
    pending_request_through_a_relay_fails_fast(Lost::Leaf).await;
}
