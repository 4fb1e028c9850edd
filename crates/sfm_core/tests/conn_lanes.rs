//! One connection against a scripted raw peer on loopback: bounded `send_frame`, a stalled writer closing the
//! connection, the control lane overtaking queued bulk, and the frame size limit on receive.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use sfm_core::conn::{ConnError, Lane};
use sfm_core::frame::{Frame, FrameType, Headers, Prefix, Value};
use sfm_core::CommConfig;
use tokio::time::Instant as TokioInstant;

const MIB: usize = 1024 * 1024;

fn data(i: i64, payload: Bytes) -> Frame {
    let mut h = Headers::new();
    h.insert("i", i);
    Frame::data(1, 17, h, payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_frame_never_waits_past_its_deadline_and_a_stalled_writer_closes() {
    let send_timeout = Duration::from_millis(1500);
    let cfg = CommConfig {
        send_timeout,
        ..fast_config()
    };
    // The raw peer completes the handshake and then never reads again: the socket buffers fill up.
    let mut pair = conn_pair(&cfg, "server", "site-1").await;
    let chunk = Bytes::from(vec![7u8; MIB]);
    let budget = Duration::from_millis(200);
    let slack = Duration::from_millis(150);

    let mut first_timeout = None;
    for i in 0..256 {
        let started = Instant::now();
        let result = pair
            .conn
            .send_frame(data(i, chunk.clone()), Lane::Bulk, TokioInstant::now() + budget)
            .await;
        let took = started.elapsed();
        assert!(
            took <= budget + slack,
            "send_frame #{i} blocked {took:?}, past its {budget:?} deadline"
        );
        match result {
            Ok(()) => {}
            Err(ConnError::SendTimeout { peer, .. }) => {
                assert_eq!(peer, "site-1");
                first_timeout = Some(Instant::now());
                break;
            }
            Err(e) => panic!("send_frame #{i}: unexpected {e}"),
        }
    }
    let stalled_since = first_timeout.expect("a peer that never reads never made send_frame time out");

    // The control lane cannot get past a frame stuck mid-write either, but its caller is not held past the deadline.
    let started = Instant::now();
    let ping = Frame::control(FrameType::Ping, 18, Bytes::from_static(&[0xc0]));
    let result = pair
        .conn
        .send_frame(ping, Lane::Control, TokioInstant::now() + budget)
        .await;
    assert!(
        started.elapsed() <= budget + slack,
        "control send blocked {:?}",
        started.elapsed()
    );
    assert!(matches!(result, Err(ConnError::SendTimeout { .. })), "{result:?}");

    // The frame stuck in the writer makes no progress: after send_timeout the connection is closed, since a
    // half-written frame cannot be resumed.
    within(
        send_timeout + Duration::from_secs(2),
        "the stalled connection to close",
        pair.conn.closed(),
    )
    .await;
    let closed_after = stalled_since.elapsed();
    assert!(
        closed_after <= send_timeout + Duration::from_secs(1),
        "closed {closed_after:?} after the stall was seen"
    );
    let reason = pair.conn.close_reason().unwrap();
    assert!(reason.contains("streaming_send_timeout"), "{reason}");
    let reported = within(Duration::from_secs(2), "on_closed", pair.closes.recv())
        .await
        .unwrap();
    assert_eq!(reported, reason);

    // Later sends fail at once.
    let started = Instant::now();
    let result = pair
        .conn
        .send_frame(data(0, Bytes::new()), Lane::Control, TokioInstant::now() + budget)
        .await;
    assert!(matches!(result, Err(ConnError::Closed { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(50));
    drop(pair.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_moving_peer_never_times_out() {
    // send_timeout bounds the time without progress, not the time a frame takes: one big frame that a reader drains
    // in small sips, taking well over send_timeout in all, must go through and leave the connection open.
    let send_timeout = Duration::from_millis(800);
    let cfg = CommConfig {
        send_timeout,
        ..fast_config()
    };
    let mut pair = conn_pair(&cfg, "server", "site-1").await;
    let size = 24 * MIB;
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 128 * 1024];
        let mut total = 0usize;
        while total < size {
            tokio::time::sleep(Duration::from_millis(10)).await;
            match pair.raw.stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    });
    let started = Instant::now();
    let deadline = TokioInstant::now() + Duration::from_secs(20);
    pair.conn
        .send_frame(data(0, Bytes::from(vec![1u8; size])), Lane::Bulk, deadline)
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took > send_timeout,
        "the peer was not slow enough to prove anything ({took:?})"
    );
    assert!(!pair.conn.is_closed(), "{:?}", pair.conn.close_reason());
    let total = within(Duration::from_secs(20), "the reader", reader).await.unwrap();
    assert!(total >= size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_frames_overtake_queued_bulk() {
    let cfg = fast_config();
    let mut pair = conn_pair(&cfg, "server", "site-1").await;
    let chunk = Bytes::from(vec![3u8; MIB]);
    let deadline = TokioInstant::now() + Duration::from_secs(30);
    let bulk = 64;
    for i in 0..bulk {
        pair.conn
            .send_frame_nowait(data(i, chunk.clone()), Lane::Bulk, deadline)
            .unwrap();
    }
    // Let the writer get going: it is now stuck in the middle of the bulk queue, the socket buffers full.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut h = Headers::new();
    h.insert("control", true);
    pair.conn
        .send_frame_nowait(
            Frame::data(1, 18, h, Bytes::from_static(b"urgent")),
            Lane::Control,
            deadline,
        )
        .unwrap();

    // Only now does the peer start reading.
    let mut order = Vec::new();
    within(Duration::from_secs(20), "all frames", async {
        while order.len() < bulk as usize + 1 {
            let f = pair.raw.next_frame().await.expect("connection ended early");
            order.push(f);
        }
    })
    .await;
    let pos = order
        .iter()
        .position(|f| f.headers.get("control").is_some())
        .expect("control frame never arrived");
    let behind = bulk as usize - pos;
    eprintln!("control frame written at position {pos} of {}", bulk + 1);
    assert!(
        behind > bulk as usize / 2,
        "control frame came at position {pos}: only {behind} of {bulk} bulk frames behind it"
    );
    assert_eq!(&order[pos].payload[..], b"urgent");
    // Bulk frames keep their own order, and every frame carries the next connection sequence number (READY was 1).
    let bulk_ids: Vec<i64> = order
        .iter()
        .filter_map(|f| f.headers.get("i").and_then(Value::as_i64))
        .collect();
    assert_eq!(bulk_ids, (0..bulk).collect::<Vec<_>>());
    let seqs: Vec<u16> = order.iter().map(|f| f.sequence).collect();
    assert_eq!(seqs, (2..2 + bulk as u16 + 1).collect::<Vec<_>>());
    assert!(order
        .iter()
        .all(|f| f.payload.len() == MIB || f.headers.get("control").is_some()));
    pair.conn.close("test over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_max_frame_size_closes_the_connection() {
    let max = 64 * 1024;
    let cfg = CommConfig {
        max_frame_size: max,
        ..fast_config()
    };
    let mut pair = conn_pair(&cfg, "server", "site-1").await;

    // A frame of exactly max_frame_size bytes is fine.
    let header_len = data(0, Bytes::new()).encode().unwrap().len();
    let exact = data(0, Bytes::from(vec![5u8; max - header_len]));
    assert_eq!(exact.encode().unwrap().len(), max);
    pair.raw.send(exact).await;
    let got = within(Duration::from_secs(2), "the max-size frame", pair.frames.recv())
        .await
        .unwrap();
    assert_eq!(got.payload.len(), max - header_len);

    // A prefix announcing 1 GiB is refused as soon as it arrives; the body never comes.
    let mut prefix = Vec::new();
    Prefix {
        length: 1 << 30,
        frame_type: 1,
        app_id: 1,
        stream_id: 17,
        sequence: 3,
        ..Prefix::default()
    }
    .encode(&mut prefix);
    let sent = Instant::now();
    pair.raw.send_raw(&prefix).await;
    within(Duration::from_secs(2), "the connection to close", pair.conn.closed()).await;
    assert!(sent.elapsed() < Duration::from_secs(1));
    let reason = pair.conn.close_reason().unwrap();
    assert!(reason.contains("max_frame_size"), "{reason}");
    assert!(reason.contains(&(1u64 << 30).to_string()), "{reason}");
    let reported = within(Duration::from_secs(2), "on_closed", pair.closes.recv())
        .await
        .unwrap();
    assert_eq!(reported, reason);
    // The peer sees the end of the stream, and nothing more was delivered.
    pair.raw.read_until_eof(Duration::from_secs(2)).await;
    assert!(pair.frames.try_recv().is_err());

    // One byte over the limit, announced by a real frame, is refused too.
    let mut pair = conn_pair(&cfg, "server", "site-2").await;
    pair.raw
        .send(data(1, Bytes::from(vec![5u8; max - header_len + 1])))
        .await;
    within(Duration::from_secs(2), "the connection to close", pair.conn.closed()).await;
    assert!(pair.conn.close_reason().unwrap().contains("max_frame_size"));
    assert!(pair.frames.try_recv().is_err());
}
