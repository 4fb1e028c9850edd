//! Push streams between cells over loopback: blobs of awkward sizes, streamed requests and replies (through a
//! relay too), concurrent streams, control traffic during a large stream, and a receiver that stops ACKing.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sfm_core::cell::{Cell, Message, ReturnCode};
use sfm_core::frame::Headers;
use sfm_core::stream::StreamError;
use sfm_core::CommConfig;
use tokio::sync::mpsc;

use common::*;

const T: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

fn pattern(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

async fn server_and_client(cfg: CommConfig) -> (Cell, Cell) {
    let server = Cell::new("server", cfg.clone()).unwrap();
    serve_echo(&server);
    let url = listen(&server).await;
    let client = Cell::new("site-1", cfg).unwrap();
    serve_echo(&client);
    client.connect(&url).unwrap();
    wait_peers(&client, &["server"]).await;
    wait_peers(&server, &["site-1"]).await;
    (server, client)
}

fn blob_sink(cell: &Cell) -> mpsc::UnboundedReceiver<Message> {
    let (tx, rx) = mpsc::unbounded_channel();
    cell.register_blob_handler(
        "test",
        "blob",
        Arc::new(move |m: Message| {
            let _ = tx.send(m);
        }),
    );
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_awkward_size_arrive_whole() {
    let (server, client) = server_and_client(fast_config()).await;
    let mut got = blob_sink(&server);
    let chunk = client.config().stream_sender.chunk_size as usize;
    for (i, len) in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 10 * chunk + 7]
        .into_iter()
        .enumerate()
    {
        let payload = pattern(len, i as u8);
        let mut headers = Headers::new();
        headers.insert("n", i as i64);
        within(
            T,
            "blob sent",
            client.send_blob("server", "test", "blob", headers, payload.clone()),
        )
        .await
        .unwrap();
        let m = within(T, "blob received", got.recv()).await.unwrap();
        assert_eq!(m.payload.len(), len);
        assert!(m.payload == payload, "blob {i} of {len} bytes differs");
        assert_eq!(m.headers.get("n").and_then(|v| v.as_i64()), Some(i as i64));
        assert_eq!(m.header_str("cn__origin"), Some("site-1"));
    }
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_without_handler_fails_the_sender_with_the_reason() {
    let (server, client) = server_and_client(fast_config()).await;
    // Larger than the window, so the receiver's refusal arrives while the sender still waits for ACKs (a blob
    // that fits in the window is all sent before the refusal can arrive, as with NVFlare).
    let err = within(
        T,
        "send",
        client.send_blob("server", "nobody", "home", Headers::new(), pattern(64 * MIB, 1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, StreamError::Aborted { by_peer: true, .. }), "{err}");
    assert!(err.to_string().contains("no blob handler"), "{err}");
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_and_replies_travel_as_streams_through_a_relay() {
    let cfg = fast_config();
    let (server, relay, relay_url) = server_and_relay(&cfg).await;
    let leaves: Vec<Cell> = ["site-1", "site-2"]
        .iter()
        .map(|n| Cell::new(n, cfg.clone()).unwrap())
        .collect();
    for leaf in &leaves {
        serve_echo(leaf);
        leaf.connect(&relay_url).unwrap();
    }
    wait_peers(&server, &["site-1", "site-2"]).await;
    let payload = pattern(9 * MIB + 3, 7);
    let r = within(
        T,
        "reply",
        leaves[0].request("site-2", ECHO.0, ECHO.1, Headers::new(), payload.clone(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    assert_eq!(r.header_str(ANSWERED_BY), Some("site-2"));
    assert!(r.payload == payload, "echoed payload differs");
    for c in leaves.iter().chain([&relay, &server]) {
        c.close();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_a_frame_goes_as_a_stream() {
    let cfg = CommConfig {
        max_frame_size: 256 * 1024,
        stream_sender: sfm_core::stream::SenderConfig {
            chunk_size: 64 * 1024,
            ack_interval: 64 * 1024,
            window_size: 512 * 1024,
            ..Default::default()
        },
        ..fast_config()
    };
    let (server, client) = server_and_client(cfg).await;
    let big = pattern(3 * MIB, 3);
    let r = within(
        T,
        "reply",
        client.request("server", ECHO.0, ECHO.1, Headers::new(), big.clone(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    assert!(r.payload == big);
    // Even on a channel NVFlare never streams, what cannot be one frame is streamed rather than refused.
    server.register_request_handler(
        "task",
        "echo",
        Arc::new(|req: sfm_core::cell::IncomingRequest| {
            let payload = req.message.payload.clone();
            req.responder.reply(Message::new(Headers::new(), payload));
        }),
    );
    let r = within(
        T,
        "reply",
        client.request("server", "task", "echo", Headers::new(), big.clone(), T),
    )
    .await;
    assert_eq!(r.return_code(), ReturnCode::Ok, "{:?}", r.error());
    assert!(r.payload == big);
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_share_a_connection() {
    let (server, client) = server_and_client(fast_config()).await;
    let mut got = blob_sink(&server);
    let sends: Vec<_> = (0..8u8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut h = Headers::new();
                h.insert("i", i as i64);
                client
                    .send_blob("server", "test", "blob", h, pattern(4 * MIB + i as usize, i))
                    .await
            })
        })
        .collect();
    for s in sends {
        within(T, "send", s).await.unwrap().unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..8 {
        let m = within(T, "blob", got.recv()).await.unwrap();
        let i = m.headers.get("i").and_then(|v| v.as_i64()).unwrap() as u8;
        assert!(m.payload == pattern(4 * MIB + i as usize, i), "stream {i} corrupted");
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<u8>>());
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_keep_flowing_during_a_large_stream() {
    let (server, client) = server_and_client(fast_config()).await;
    let mut got = blob_sink(&server);
    let sender = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send_blob("server", "test", "blob", Headers::new(), pattern(256 * MIB, 9))
                .await
        })
    };
    let mut worst = Duration::ZERO;
    let mut during = 0;
    while !sender.is_finished() {
        let started = Instant::now();
        let r = echo(&client, "server", b"ping", T).await;
        assert_eq!(r.return_code(), ReturnCode::Ok);
        worst = worst.max(started.elapsed());
        during += 1;
    }
    within(T, "send", sender).await.unwrap().unwrap();
    assert_eq!(within(T, "blob", got.recv()).await.unwrap().payload.len(), 256 * MIB);
    assert!(during >= 3, "only {during} round trips completed during the stream");
    assert!(
        worst < Duration::from_secs(1),
        "a small request took {worst:?} during the stream"
    );
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_acking_is_detected_and_its_connection_closed() {
    let mut cfg = fast_config();
    cfg.stream_sender.ack_progress_timeout = Duration::from_secs(1);
    cfg.close_stalled_connection = true;
    let server = Cell::new("server", cfg).unwrap();
    let url = listen(&server).await;
    // A peer that completes the handshake and reads everything, but never ACKs.
    let (mut silent, _) = RawPeer::dial(&url, "site-1").await;
    wait_peers(&server, &["site-1"]).await;
    let started = Instant::now();
    let sending = server.send_blob("site-1", "test", "blob", Headers::new(), pattern(64 * MIB, 5));
    let drain = silent.read_until_eof(T);
    let (result, frames) = tokio::join!(within(T, "stall", sending), drain);
    let err = result.unwrap_err();
    assert!(matches!(err, StreamError::AckStalled { .. }), "{err}");
    assert!(err.to_string().contains("streaming_ack_progress_timeout"), "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "stall reported after {took:?}"
    );
    let data_bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
    assert!(
        data_bytes <= 17 * MIB,
        "the sender sent {data_bytes} bytes with no ACK: more than its window"
    );
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_giving_up_mid_stream_never_wedge_the_receiver() {
    let (server, client) = server_and_client(fast_config()).await;
    let mut got = blob_sink(&server);
    let race = async {
        for i in 0..1000u32 {
            let payload = pattern(MIB + (i as usize % 7) * 65_537, i as u8);
            // Give up after a few microseconds to a few milliseconds: the abort lands while the receiver is mid-way.
            let give_up = Duration::from_micros(50 + (i as u64 * 37) % 3000);
            let _ = tokio::time::timeout(
                give_up,
                client.send_blob("server", "test", "blob", Headers::new(), payload),
            )
            .await;
        }
    };
    within(Duration::from_secs(120), "1,000 abandoned streams", race).await;
    // Every abandoned stream is freed on both sides, by the abort notice, not by a read timeout.
    within(T, "streams to drain", async {
        while client.stream_counts() != (0, 0) || server.stream_counts() != (0, 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let last = pattern(5 * MIB, 42);
    let mut marked = Headers::new();
    marked.insert("last", true);
    within(
        T,
        "a blob after the race",
        client.send_blob("server", "test", "blob", marked, last.clone()),
    )
    .await
    .unwrap();
    let arrived = within(T, "the last blob", async {
        loop {
            let m = got.recv().await.unwrap();
            if m.headers.contains_key("last") {
                return m;
            }
        }
    })
    .await;
    assert!(arrived.payload == last);
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_keeps_its_payload_encoding_on_the_stream_not_on_the_chunks() {
    use sfm_core::cell::keys;
    use sfm_core::stream::wire;
    // NVFlare decodes every chunk by its own cn__payload_encoding and the assembled payload by sm__pe.
    let server = Cell::new("server", fast_config()).unwrap();
    let url = listen(&server).await;
    let (mut raw, _) = RawPeer::dial(&url, "site-1").await;
    wait_peers(&server, &["site-1"]).await;
    let mut headers = Headers::new();
    headers.insert(keys::PAYLOAD_ENCODING, "fobs");
    let asking = server.request(
        "site-1",
        "test",
        "echo",
        headers,
        pattern(2 * MIB, 3),
        Duration::from_secs(1),
    );
    let first_chunk = async {
        loop {
            let frame = raw.next_frame().await.expect("a chunk");
            if frame.headers.get_str(keys::CHANNEL) == Some(wire::CHANNEL) {
                return frame;
            }
        }
    };
    let (_, chunk) = tokio::join!(asking, within(T, "the first chunk", first_chunk));
    assert_eq!(chunk.headers.get_str(keys::PAYLOAD_ENCODING), Some("bytes"));
    assert_eq!(chunk.headers.get_str(wire::keys::PAYLOAD_ENCODING), Some("fobs"));
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_message_arrives_with_the_encoding_it_was_sent_with() {
    use sfm_core::cell::{keys, IncomingRequest};
    let (server, client) = server_and_client(fast_config()).await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    server.register_request_handler(
        "test",
        "encoded",
        Arc::new(move |req: IncomingRequest| {
            let _ = tx.send(req.message.header_str(keys::PAYLOAD_ENCODING).map(str::to_string));
        }),
    );
    let mut headers = Headers::new();
    headers.insert(keys::PAYLOAD_ENCODING, "fobs");
    let reply = client
        .request("server", "test", "encoded", headers, pattern(3 * MIB, 5), T)
        .await;
    assert_eq!(reply.return_code(), ReturnCode::Ok);
    let seen = within(T, "the request", seen.recv()).await.unwrap();
    assert_eq!(seen.as_deref(), Some("fobs"));
    client.close();
    server.close();
}

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flare-{tag}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_to_disk_and_names_cannot_escape_the_directory() {
    let (server, client) = server_and_client(fast_config()).await;
    let (src, dest) = (scratch_dir("src"), scratch_dir("dest"));
    let (tx, mut files) = mpsc::unbounded_channel();
    server.register_file_handler(
        "test",
        "file",
        dest.clone(),
        Arc::new(move |h: Headers, path, size| {
            let _ = tx.send((h, path, size));
        }),
    );
    let content = pattern(20 * MIB + 11, 4);
    let path = src.join("weights.bin");
    std::fs::write(&path, &content).unwrap();
    let sent = within(
        T,
        "file sent",
        client.send_file("server", "test", "file", Headers::new(), &path),
    )
    .await
    .unwrap();
    assert_eq!(sent, content.len() as u64);
    let (headers, got, size) = within(T, "file received", files.recv()).await.unwrap();
    assert_eq!((got.clone(), size), (dest.join("weights.bin"), content.len() as u64));
    assert_eq!(headers.get_str(sfm_core::cell::FILE_NAME), Some("weights.bin"));
    assert!(std::fs::read(&got).unwrap() == content);
    assert!(!dest.join("weights.bin.part").exists());

    for evil in ["../escape.bin", "/tmp/abs.bin", "sub/dir.bin", ".."] {
        let mut h = Headers::new();
        h.insert(sfm_core::cell::FILE_NAME, evil);
        let err = within(T, "refusal", client.send_file("server", "test", "file", h, &path))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refusing file name"), "{evil}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(&dest).unwrap().count(),
        1,
        "only the good file is in the directory"
    );
    assert!(!src.join("escape.bin").exists() && !std::env::temp_dir().join("escape.bin").exists());
    let _ = (std::fs::remove_dir_all(&src), std::fs::remove_dir_all(&dest));
    client.close();
    server.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_takes_chunks_as_they_arrive_and_paces_the_sender() {
    let (server, client) = server_and_client(fast_config()).await;
    let (tx, mut readers) = mpsc::unbounded_channel();
    server.register_stream_reader(
        "test",
        "read",
        Arc::new(move |r: sfm_core::cell::StreamReader| {
            let _ = tx.send(r);
        }),
    );
    let payload = pattern(64 * MIB + 5, 8);
    let sending = {
        let (client, payload) = (client.clone(), payload.clone());
        tokio::spawn(async move {
            client
                .send_blob("server", "test", "read", Headers::new(), payload)
                .await
        })
    };
    let mut reader = within(T, "a reader", readers.recv()).await.unwrap();
    assert_eq!((reader.origin(), reader.size()), ("site-1", Some(64 * MIB as u64 + 5)));
    // Nothing is taken yet: the sender is held by its window, however long the reader waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sending.is_finished(), "the sender finished with nobody reading");
    let mut got = Vec::with_capacity(payload.len());
    while let Some(chunk) = reader.next_chunk(T).await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == payload, "chunks out of order or lost");
    within(T, "send", sending).await.unwrap().unwrap();
    within(T, "streams to drain", async {
        while server.stream_counts() != (0, 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // A reader that stops early aborts the stream; the sender learns why.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .send_blob("server", "test", "read", Headers::new(), pattern(64 * MIB, 1))
                .await
        })
    };
    let mut reader = within(T, "a reader", readers.recv()).await.unwrap();
    reader.next_chunk(T).await.unwrap().unwrap();
    drop(reader);
    let err = within(T, "the sender to fail", sending).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("reader stopped"), "{err}");
    client.close();
    server.close();
}
