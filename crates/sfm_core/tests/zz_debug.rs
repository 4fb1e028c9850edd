mod common;
use common::*;
use bytes::Bytes;
use sfm_core::{Cell, CommConfig};
use sfm_core::frame::Headers;
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbg() {
    let _ = tracing_subscriber::fmt().with_env_filter("debug").try_init();
    let cfg = CommConfig { max_frame_size: 64 * 1024, ..fast_config() };
    let server = Cell::new("server", cfg.clone()).unwrap();
    serve_echo(&server);
    let url = listen(&server).await;
    let client = Cell::new("site-1", cfg).unwrap();
    client.connect(&url).unwrap();
    wait_peers(&client, &["server"]).await;
    eprintln!("connected");
    let big = Bytes::from(vec![0u8; 128 * 1024]);
    let r = client.request("server", ECHO.0, ECHO.1, Headers::new(), big, Duration::from_secs(5)).await;
    eprintln!("{:?}", r);
}
