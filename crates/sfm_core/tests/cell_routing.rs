//! Routing through a tree of real cells on loopback:
//!
//! ```text
//!                 server
//!                   |
//!                relay-1
//!           /       |        \
//!       site-1    site-2   relay-1.site-3
//!          |
//!    site-1.job-7
//! ```
//! Request/reply between any two cells, broadcast, fire-and-forget, and the failure replies (unreachable target,
//! timeout, no handler, message too big) with their timing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sfm_core::cell::IncomingRequest;
use sfm_core::frame::{Headers, Value};
use sfm_core::{Cell, CommConfig, ReturnCode};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(5);

struct Tree {
    server: Cell,
    relay: Cell,
    site1: Cell,
    site2: Cell,
    site3: Cell,
    job7: Cell,
}

impl Tree {
    fn all(&self) -> [&Cell; 6] {
        [
            &self.server,
            &self.relay,
            &self.site1,
            &self.site2,
            &self.site3,
            &self.job7,
        ]
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for c in self.all() {
            c.close();
        }
    }
}

/// Builds the tree above, each cell running the echo service, and waits until the server has learned every cell.
async fn tree() -> Tree {
    let cfg = fast_config();
    let new = |name: &str| {
        let c = Cell::new(name, cfg.clone()).unwrap();
        serve_echo(&c);
        c
    };
    let server = new("server");
    let server_url = listen(&server).await;
    let relay = new("relay-1");
    let relay_url = listen(&relay).await;
    relay.connect(&server_url).unwrap();
    let site1 = new("site-1");
    let site1_url = listen(&site1).await;
    site1.connect(&relay_url).unwrap();
    let site2 = new("site-2");
    site2.connect(&relay_url).unwrap();
    let site3 = new("relay-1.site-3");
    site3.connect(&relay_url).unwrap();
    let job7 = new("site-1.job-7");
    job7.connect(&site1_url).unwrap();

    let tree = Tree {
        server,
        relay,
        site1,
        site2,
        site3,
        job7,
    };
    // The server learns the leaves from route advertisements, the relay's and site-1's own.
    wait_peers(
        &tree.server,
        &["relay-1", "site-1", "site-2", "relay-1.site-3", "site-1.job-7"],
    )
    .await;
    wait_peers(
        &tree.relay,
        &["server", "site-1", "site-2", "relay-1.site-3", "site-1.job-7"],
    )
    .await;
    for leaf in [&tree.site1, &tree.site2, &tree.site3] {
        wait_peers(leaf, &["relay-1"]).await;
    }
    wait_peers(&tree.job7, &["site-1"]).await;
    tree
}

fn assert_echo(reply: &sfm_core::Message, from: &str, to: &str, route: &[&str]) {
    assert_eq!(
        reply.return_code(),
        ReturnCode::Ok,
        "{from} -> {to}: {:?}",
        reply.error()
    );
    assert_eq!(reply.header_str(ANSWERED_BY), Some(to), "{from} -> {to}");
    assert_eq!(&reply.payload[..], b"ping", "{from} -> {to}");
    assert_eq!(seen_route(reply), route, "route of {from} -> {to}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_to_leaf_through_the_relay() {
    let t = tree().await;
    let r = echo(&t.site1, "site-2", b"ping", T).await;
    assert_echo(&r, "site-1", "site-2", &["site-1", "relay-1"]);
    let r = echo(&t.site2, "relay-1.site-3", b"ping", T).await;
    assert_echo(&r, "site-2", "relay-1.site-3", &["site-2", "relay-1"]);
    let r = echo(&t.site3, "site-1", b"ping", T).await;
    assert_echo(&r, "relay-1.site-3", "site-1", &["relay-1.site-3", "relay-1"]);
    // The reply's own headers come back too.
    assert_eq!(r.header_str("cn__msg_type"), Some("reply"));
    assert_eq!(r.header_str("cn__origin"), Some("site-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_to_server_and_server_to_leaf() {
    let t = tree().await;
    for leaf in [&t.site1, &t.site2, &t.site3] {
        let r = echo(leaf, "server", b"ping", T).await;
        assert_echo(&r, leaf.fqcn(), "server", &[leaf.fqcn(), "relay-1"]);
        let r = echo(&t.server, leaf.fqcn(), b"ping", T).await;
        assert_echo(&r, "server", leaf.fqcn(), &["server", "relay-1"]);
    }
    let r = echo(&t.relay, "server", b"ping", T).await;
    assert_echo(&r, "relay-1", "server", &["relay-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_of_a_leaf_is_reached_in_three_hops() {
    let t = tree().await;
    let r = echo(&t.site2, "site-1.job-7", b"ping", T).await;
    assert_echo(&r, "site-2", "site-1.job-7", &["site-2", "relay-1", "site-1"]);
    let r = echo(&t.server, "site-1.job-7", b"ping", T).await;
    assert_echo(&r, "server", "site-1.job-7", &["server", "relay-1", "site-1"]);
    let r = echo(&t.job7, "site-2", b"ping", T).await;
    assert_echo(&r, "site-1.job-7", "site-2", &["site-1.job-7", "site-1", "relay-1"]);
    let r = echo(&t.job7, "server", b"ping", T).await;
    assert_echo(&r, "site-1.job-7", "server", &["site-1.job-7", "site-1", "relay-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_gives_one_result_per_target() {
    let t = tree().await;
    let targets: Vec<String> = ["site-1", "site-2", "relay-1.site-3", "site-1.job-7", "site-99"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let started = Instant::now();
    let replies = within(
        T,
        "broadcast",
        t.server
            .broadcast(&targets, ECHO.0, ECHO.1, Headers::new(), Bytes::from_static(b"ping"), T),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "broadcast took {:?}",
        started.elapsed()
    );
    let names: Vec<&str> = replies.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        targets.iter().map(String::as_str).collect::<Vec<_>>(),
        "one result per target, in order"
    );
    for (target, reply) in &replies[..4] {
        assert_eq!(reply.return_code(), ReturnCode::Ok, "{target}: {:?}", reply.error());
        assert_eq!(reply.header_str(ANSWERED_BY), Some(target.as_str()));
    }
    let (_, unreachable) = &replies[4];
    assert_eq!(unreachable.return_code(), ReturnCode::TargetUnreachable);
    assert!(
        unreachable.error().unwrap_or_default().contains("site-99"),
        "{:?}",
        unreachable.error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_target_fails_fast_naming_it() {
    let t = tree().await;
    let timeout = Duration::from_secs(10);
    // Unknown at the server itself, after climbing to it from a leaf, and below the relay (a name in its family).
    let cases = [
        (&t.server, "site-99"),
        (&t.site1, "nosuch.cell"),
        (&t.server, "relay-1.site-9"),
        (&t.job7, "site-42"),
    ];
    for (from, target) in cases {
        let started = Instant::now();
        let r = echo(from, target, b"ping", timeout).await;
        let took = started.elapsed();
        assert_eq!(
            r.return_code(),
            ReturnCode::TargetUnreachable,
            "{} -> {target}: {:?}",
            from.fqcn(),
            r.error()
        );
        let err = r.error().unwrap_or_default();
        assert!(err.contains(target), "error text {err:?} does not name {target:?}");
        assert!(
            took < Duration::from_secs(1),
            "{} -> {target} took {took:?} of its {timeout:?}",
            from.fqcn()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_that_never_replies_times_out() {
    let t = tree().await;
    t.site2.register_request_handler(
        "test",
        "black_hole",
        Arc::new(|req: IncomingRequest| {
            // Keep the responder alive forever: dropping it would answer an empty OK.
            std::mem::forget(req.responder);
        }),
    );
    let timeout = Duration::from_millis(600);
    let started = Instant::now();
    let r = within(
        timeout + Duration::from_secs(3),
        "the timeout reply",
        t.site1
            .request("site-2", "test", "black_hole", Headers::new(), Bytes::new(), timeout),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.return_code(), ReturnCode::Timeout, "{:?}", r.error());
    assert!(took >= timeout, "timed out early, after {took:?}");
    assert!(
        took <= timeout + Duration::from_secs(1),
        "timed out late, after {took:?}"
    );
    assert!(r.error().unwrap_or_default().contains("site-2"), "{:?}", r.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_is_delivered() {
    let t = tree().await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    for cell in [&t.site1, &t.site2, &t.site3, &t.job7] {
        let (tx, me) = (tx.clone(), cell.fqcn().to_string());
        cell.register_request_handler(
            "test",
            "notify",
            Arc::new(move |req: IncomingRequest| {
                let _ = tx.send((me.clone(), req.responder.reply_expected(), req.message.payload.clone()));
            }),
        );
    }
    let targets: Vec<String> = ["site-1", "site-2", "relay-1.site-3", "site-1.job-7", "site-99"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let results = within(
        T,
        "fire_and_forget",
        t.server
            .fire_and_forget(&targets, "test", "notify", Headers::new(), Bytes::from_static(b"news")),
    )
    .await;
    for (target, err) in &results[..4] {
        assert_eq!(err, "", "{target}");
    }
    assert_eq!(results[4].0, "site-99");
    assert!(results[4].1.contains("site-99"), "{:?}", results[4].1);

    let mut got = Vec::new();
    for _ in 0..4 {
        let (who, reply_expected, payload) = within(T, "a fire-and-forget delivery", rx.recv()).await.unwrap();
        assert!(!reply_expected, "{who} was asked for a reply");
        assert_eq!(&payload[..], b"news");
        got.push(who);
    }
    got.sort();
    assert_eq!(got, ["relay-1.site-3", "site-1", "site-1.job-7", "site-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_without_handler_is_a_process_exception() {
    let t = tree().await;
    let started = Instant::now();
    let r = within(
        T,
        "reply",
        t.site1
            .request("site-2", "nosuch", "topic", Headers::new(), Bytes::new(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::ProcessException);
    let err = r.error().unwrap_or_default();
    assert!(err.contains("no handler") && err.contains("nosuch"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));

    // A wildcard topic catches what has no handler of its own.
    t.site2.register_request_handler(
        "nosuch",
        "*",
        Arc::new(|req: IncomingRequest| {
            let mut h = Headers::new();
            h.insert("topic_seen", req.message.header_str("cn__topic").unwrap_or_default());
            req.responder.reply(sfm_core::Message::new(h, Bytes::new()));
        }),
    );
    let r = within(
        T,
        "reply",
        t.site1
            .request("site-2", "nosuch", "topic", Headers::new(), Bytes::new(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    assert_eq!(r.header_str("topic_seen"), Some("topic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_headers_and_large_payloads_cross_the_tree() {
    let t = tree().await;
    // 3 MiB: rides the bulk lane on every hop.
    let payload = Bytes::from((0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut headers = Headers::new();
    headers.insert("app_key", Value::Array(vec![Value::from(1), Value::from("two")]));
    let r = within(
        T,
        "reply",
        t.site3
            .request("site-1.job-7", ECHO.0, ECHO.1, headers, payload.clone(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    assert_eq!(r.payload, payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_and_forget_over_max_frame_size_is_refused_and_the_link_survives() {
    // Requests and replies above a frame travel as streams (tests/cell_streams.rs); a fire-and-forget message is
    // one frame, so it is refused with the setting to change.
    let stream_sender = sfm_core::stream::SenderConfig {
        chunk_size: 16 * 1024,
        ack_interval: 16 * 1024,
        window_size: 64 * 1024,
        ..Default::default()
    };
    let cfg = CommConfig {
        max_frame_size: 128 * 1024,
        stream_sender,
        ..fast_config()
    };
    let server = Cell::new("server", cfg.clone()).unwrap();
    serve_echo(&server);
    let url = listen(&server).await;
    let client = Cell::new("site-1", cfg).unwrap();
    client.connect(&url).unwrap();
    wait_peers(&client, &["server"]).await;
    let big = Bytes::from(vec![0u8; 256 * 1024]);
    let sent = within(
        T,
        "send",
        client.fire_and_forget(&["server".to_string()], ECHO.0, ECHO.1, Headers::new(), big),
    )
    .await;
    assert!(sent[0].1.contains("max_frame_size"), "{:?}", sent);
    // The connection survives a refused message.
    let r = echo(&client, "server", b"ping", T).await;
    assert_eq!(r.return_code(), ReturnCode::Ok);
    client.close();
    server.close();
}
