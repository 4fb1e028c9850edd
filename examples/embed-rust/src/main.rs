//! sfm_core embedded in a Rust program, no Python: a server cell runs a small key-value service, a client cell
//! connects to it over TCP on loopback, stores and reads a few keys, and prints what it got.
//!
//! Exits 0 when every reply is as expected, 1 otherwise; the whole run is bounded by `OVERALL_LIMIT`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sfm_core::cell::IncomingRequest;
use sfm_core::frame::Headers;
use sfm_core::{Cell, CommConfig, Message, ReturnCode};

/// Channel of the key-value service; topics `put`, `get` and `upper` (uppercases the payload).
const CHANNEL: &str = "kv";
/// Header carrying the key of `put` and `get`.
const KEY: &str = "key";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const OVERALL_LIMIT: Duration = Duration::from_secs(30);

/// Registers the service on `cell`. Handlers run on transport threads: this one only touches a map, so it answers
/// inline; real work would be handed to another task with the `Responder`.
fn serve_kv(cell: &Cell) {
    let store: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
    cell.register_request_handler(
        CHANNEL,
        "*",
        Arc::new(move |req: IncomingRequest| {
            let topic = req.message.header_str("cn__topic").unwrap_or_default().to_string();
            let key = req.message.header_str(KEY).map(str::to_string);
            let reply = match (topic.as_str(), key) {
                ("put", Some(key)) => {
                    store.lock().unwrap().insert(key, req.message.payload.clone());
                    Message::default()
                }
                ("get", Some(key)) => match store.lock().unwrap().get(&key) {
                    Some(value) => Message::new(Headers::new(), value.clone()),
                    None => Message::error_reply(ReturnCode::InvalidRequest, format!("no key {key:?}")),
                },
                ("upper", _) => Message::new(Headers::new(), Bytes::from(req.message.payload.to_ascii_uppercase())),
                _ => Message::error_reply(ReturnCode::InvalidRequest, format!("bad request: topic {topic:?}")),
            };
            req.responder.reply(reply);
        }),
    );
}

async fn call(client: &Cell, topic: &str, key: Option<&str>, payload: &str) -> Message {
    let mut headers = Headers::new();
    if let Some(key) = key {
        headers.insert(KEY, key);
    }
    client
        .request(
            "server",
            CHANNEL,
            topic,
            headers,
            Bytes::copy_from_slice(payload.as_bytes()),
            REQUEST_TIMEOUT,
        )
        .await
}

async fn run() -> Result<(), String> {
    let config = CommConfig {
        connect_timeout: Duration::from_secs(5),
        ..CommConfig::default()
    };

    let server = Cell::new("server", config.clone()).map_err(|e| e.to_string())?;
    serve_kv(&server);
    let url = server.listen("tcp://127.0.0.1:0").await.map_err(|e| e.to_string())?;
    println!("server listening on {url}");

    let client = Cell::new("site-1", config).map_err(|e| e.to_string())?;
    client.connect(&url.to_string()).map_err(|e| e.to_string())?;
    if !client.wait_for_peer("server", Duration::from_secs(10)).await {
        return Err("site-1 could not connect to the server".into());
    }
    println!("site-1 connected");

    let mut failures = Vec::new();
    let mut check = |what: String, reply: &Message, expected: Option<&str>| {
        let rc = reply.return_code();
        let body = String::from_utf8_lossy(&reply.payload).into_owned();
        println!(
            "{what:<28} -> {rc}: {}",
            reply.error().map(str::to_string).unwrap_or_else(|| format!("{body:?}"))
        );
        let ok = match expected {
            Some(want) => rc == ReturnCode::Ok && body == want,
            None => rc != ReturnCode::Ok,
        };
        if !ok {
            failures.push(what);
        }
    };

    for (key, value) in [("colour", "blue"), ("shape", "round")] {
        let r = call(&client, "put", Some(key), value).await;
        check(format!("put {key}={value}"), &r, Some(""));
    }
    for (key, value) in [("colour", "blue"), ("shape", "round")] {
        let r = call(&client, "get", Some(key), "").await;
        check(format!("get {key}"), &r, Some(value));
    }
    let r = call(&client, "upper", None, "hello, flare").await;
    check("upper \"hello, flare\"".into(), &r, Some("HELLO, FLARE"));
    // Failures are replies with a return code, not hangs: a missing key, and a cell that does not exist.
    let r = call(&client, "get", Some("size"), "").await;
    check("get size (missing)".into(), &r, None);
    let r = client
        .request("site-99", CHANNEL, "get", Headers::new(), Bytes::new(), REQUEST_TIMEOUT)
        .await;
    check("get from site-99 (no cell)".into(), &r, None);

    client.close();
    server.close();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("unexpected replies: {}", failures.join(", ")))
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("embed-rust: cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async { tokio::time::timeout(OVERALL_LIMIT, run()).await });
    // Don't wait for background tasks (reconnect loops, readers) to notice the cells closed.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(Ok(())) => {
            println!("embed-rust: all replies as expected");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("embed-rust: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("embed-rust: did not finish within {OVERALL_LIMIT:?}");
            ExitCode::FAILURE
        }
    }
}
