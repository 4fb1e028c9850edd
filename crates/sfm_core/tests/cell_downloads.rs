//! Pull downloads between cells over loopback: byte, file and item sources, many receivers of one source, the
//! shared cache producing each chunk once, retries of dropped replies, abort, refusals, receivers that go away and
//! transactions that end.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sfm_core::cell::{Cell, ReturnCode};
use sfm_core::download::{
    download, AbortSignal, DownloadError, DownloadOptions, DownloadReader, DownloadService, FileSink, ItemProducer,
    MemorySink, Piece, ReceiverStatus, Source, TransactionOptions, TxOutcome, TxStatus,
};
use sfm_core::CommConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use common::*;

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1024 * 1024;

fn pattern(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

/// An owner "server" and `n` receivers "site-1".. connected to it.
async fn owner_and_receivers(cfg: CommConfig, n: usize) -> (Cell, Vec<Cell>) {
    let server = Cell::new("server", cfg.clone()).unwrap();
    let url = listen(&server).await;
    let mut sites = Vec::new();
    for i in 1..=n {
        let site = Cell::new(&format!("site-{i}"), cfg.clone()).unwrap();
        site.connect(&url).unwrap();
        wait_peers(&site, &["server"]).await;
        sites.push(site);
    }
    (server, sites)
}

fn options(cell: &Cell) -> DownloadOptions {
    DownloadOptions::from_config(&cell.config().download)
}

async fn pull_bytes(cell: &Cell, rid: &str, opts: DownloadOptions) -> Result<(Bytes, u64), DownloadError> {
    let mut sink = MemorySink::default();
    let stats = download(cell, "server", rid, &mut sink, opts).await?;
    Ok((sink.into_parts().0, stats.retries))
}

/// Every site pulls `rid` into memory, each in a task of its own.
fn spawn_pulls(sites: &[Cell], rid: &str) -> Vec<JoinHandle<Result<(Bytes, u64), DownloadError>>> {
    sites
        .iter()
        .map(|site| {
            let (site, rid) = (site.clone(), rid.to_string());
            tokio::spawn(async move { pull_bytes(&site, &rid, options(&site)).await })
        })
        .collect()
}

/// Polls `condition` until it holds, failing the test after `T`.
async fn until(what: &str, condition: impl Fn() -> bool) {
    within(T, what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A transaction whose end is sent to the returned channel.
fn transaction(
    service: &DownloadService,
    num_receivers: usize,
    timeout: Duration,
) -> (String, mpsc::UnboundedReceiver<TxOutcome>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let id = service.new_transaction(TransactionOptions {
        num_receivers,
        timeout: Some(timeout),
        on_done: Some(Arc::new(move |outcome| {
            let _ = tx.send(outcome);
        })),
        ..Default::default()
    });
    (id, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_receivers_pull_one_buffer_and_the_transaction_finishes() {
    let cfg = fast_config();
    let (server, sites) = owner_and_receivers(cfg, 3).await;
    let service = DownloadService::new(&server);
    let (tx, mut done) = transaction(&service, 3, T);
    let data = pattern(20 * MIB + 123);
    let rid = service
        .add_source(&tx, Source::memory(data.clone(), MIB as u64).unwrap(), None)
        .unwrap();
    assert_eq!(rid.len(), 33, "R + 128 random bits in hex");

    let pulls = spawn_pulls(&sites, &rid);
    for pull in pulls {
        let (got, _) = within(T, "download", pull).await.unwrap().unwrap();
        assert!(got == data, "downloaded bytes differ");
    }
    let outcome = within(T, "transaction end", done.recv()).await.unwrap();
    assert_eq!(outcome.status, TxStatus::Finished);
    assert_eq!(outcome.receivers.len(), 3);
    assert!(outcome.receivers.iter().all(|(_, _, s)| *s == ReceiverStatus::Success));
    assert_eq!(
        service.live_sources(),
        0,
        "sources are released when the transaction ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_is_pulled_into_a_file() {
    let dir = std::env::temp_dir().join(format!("flare-dl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, dst) = (dir.join("src.bin"), dir.join("dst.bin"));
    let data = pattern(7 * MIB + MIB / 2);
    std::fs::write(&src, &data).unwrap();

    let (server, sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let (tx, _done) = transaction(&service, 1, T);
    let rid = service
        .add_source(&tx, Source::file(&src, 2 * MIB as u64).unwrap(), None)
        .unwrap();
    let mut sink = FileSink::new(&dst);
    let stats = within(
        T,
        "download",
        download(&sites[0], "server", &rid, &mut sink, options(&sites[0])),
    )
    .await
    .unwrap();
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(std::fs::read(&dst).unwrap() == data);
    assert!(Source::file(&dir.join("missing"), MIB as u64).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

struct SlowItems {
    calls: AtomicUsize,
    delay: Duration,
}

impl ItemProducer for SlowItems {
    fn produce(&self, index: u64) -> Result<Bytes, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        Ok(Bytes::from(vec![index as u8; 1000]))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_four_receivers_share_each_produced_item() {
    const ITEMS: u64 = 8;
    let delay = Duration::from_millis(100);
    let (server, sites) = owner_and_receivers(fast_config(), 24).await;
    let service = DownloadService::new(&server);
    let (tx, mut done) = transaction(&service, 24, T);
    let producer = Arc::new(SlowItems {
        calls: AtomicUsize::new(0),
        delay,
    });
    // One item per reply, so that every item is asked for by every receiver.
    let rid = service
        .add_source(&tx, Source::items(producer.clone(), ITEMS, 1).unwrap(), None)
        .unwrap();

    let started = Instant::now();
    let pulls: Vec<_> = sites
        .iter()
        .map(|site| {
            let (site, rid) = (site.clone(), rid.clone());
            tokio::spawn(async move {
                let mut sink = MemorySink::default();
                download(&site, "server", &rid, &mut sink, options(&site))
                    .await
                    .map(|_| sink.into_parts().1)
            })
        })
        .collect();
    for pull in pulls {
        let items = within(T, "download", pull).await.unwrap().unwrap();
        assert_eq!(items.len(), ITEMS as usize);
        assert!(items
            .iter()
            .enumerate()
            .all(|(i, item)| item[..] == [i as u8; 1000][..]));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        producer.calls.load(Ordering::SeqCst),
        ITEMS as usize,
        "each item produced once"
    );
    // Sequential production is ITEMS x delay (prefetch overlaps some); 24 separate productions would be 24 times
    // that.
    assert!(
        elapsed < delay * ITEMS as u32 * 3,
        "24 receivers took {elapsed:?}; single-flight production should take about {:?}",
        delay * ITEMS as u32
    );
    assert_eq!(within(T, "end", done.recv()).await.unwrap().status, TxStatus::Finished);
    assert_eq!(service.cache_used(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_replies_are_recovered_by_retries() {
    let mut cfg = fast_config();
    cfg.download.fault_drop_every = 3;
    let (server, sites) = owner_and_receivers(cfg, 1).await;
    let service = DownloadService::new(&server);
    let (tx, _done) = transaction(&service, 1, T);
    let data = pattern(6 * MIB);
    let rid = service
        .add_source(&tx, Source::memory(data.clone(), MIB as u64).unwrap(), None)
        .unwrap();
    let mut opts = options(&sites[0]);
    opts.per_request_timeout = Duration::from_millis(500);
    opts.retry.initial_backoff = Duration::from_millis(20);
    let (got, retries) = within(T, "download", pull_bytes(&sites[0], &rid, opts)).await.unwrap();
    assert!(got == data);
    assert!(
        retries >= 2,
        "every third reply was dropped, yet only {retries} retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_run_out_with_an_error_that_names_the_settings() {
    let mut cfg = fast_config();
    cfg.download.fault_drop_every = 1;
    let (server, sites) = owner_and_receivers(cfg, 1).await;
    let service = DownloadService::new(&server);
    let (tx, _done) = transaction(&service, 1, T);
    let rid = service
        .add_source(&tx, Source::memory(pattern(10), 4).unwrap(), None)
        .unwrap();
    let mut opts = options(&sites[0]);
    opts.per_request_timeout = Duration::from_millis(100);
    opts.retry.initial_backoff = Duration::from_millis(10);
    let err = within(T, "download", pull_bytes(&sites[0], &rid, opts))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::TimedOut { attempts: 4, .. }), "{err}");
    assert!(err.to_string().contains("streaming_per_request_timeout"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_stops_a_download_at_once_and_the_owner_frees_the_receiver() {
    let (server, sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let (tx, _done) = transaction(&service, 1, T);
    let producer = Arc::new(SlowItems {
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(3),
    });
    let rid = service
        .add_source(&tx, Source::items(producer, 4, 1).unwrap(), None)
        .unwrap();
    let opts = options(&sites[0]);
    let abort = opts.abort.clone();
    let (site, r) = (sites[0].clone(), rid.clone());
    let pull = tokio::spawn(async move { pull_bytes(&site, &r, opts).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.transaction_info(&tx).unwrap().active_receivers, 1);
    let aborted_at = Instant::now();
    abort.trigger();
    let err = within(T, "aborted download", pull).await.unwrap().unwrap_err();
    assert!(matches!(err, DownloadError::Aborted { .. }), "{err}");
    assert!(aborted_at.elapsed() < Duration::from_millis(500));
    until("owner to free the receiver", || {
        service.transaction_info(&tx).unwrap().active_receivers == 0
    })
    .await;
    assert!(!AbortSignal::new().is_triggered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_goes_away_is_freed_on_the_owner() {
    let (server, sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let tx = service.new_transaction(TransactionOptions {
        num_receivers: 1,
        on_receiver: Some(Arc::new(move |e| seen.lock().unwrap().push(e))),
        ..Default::default()
    });
    let producer = Arc::new(SlowItems {
        calls: AtomicUsize::new(0),
        delay: Duration::from_secs(2),
    });
    let rid = service
        .add_source(&tx, Source::items(producer, 4, 1).unwrap(), None)
        .unwrap();
    let (site, r) = (sites[0].clone(), rid.clone());
    let _pull = tokio::spawn(async move { pull_bytes(&site, &r, options(&site)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.transaction_info(&tx).unwrap().active_receivers, 1);
    sites[0].close();
    until("owner to free the lost receiver", || {
        service.transaction_info(&tx).unwrap().active_receivers == 0
    })
    .await;
    let events = events.lock().unwrap();
    assert!(matches!(&events[0].status, ReceiverStatus::Failed(why) if why.contains("connection lost")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_and_ended_references_are_refused_clearly() {
    let (server, sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let err = pull_bytes(&sites[0], "Rnope", options(&sites[0])).await.unwrap_err();
    match &err {
        DownloadError::Refused { code, error, .. } => {
            assert_eq!(*code, ReturnCode::InvalidRequest);
            assert!(error.contains("no download reference Rnope"), "{error}");
        }
        other => panic!("unexpected {other}"),
    }
    let (tx, mut done) = transaction(&service, 1, T);
    let rid = service
        .add_source(&tx, Source::memory(pattern(10), 4).unwrap(), None)
        .unwrap();
    assert!(matches!(
        service.add_source(&tx, Source::memory(pattern(1), 4).unwrap(), Some(rid.clone())),
        Err(DownloadError::DuplicateRef(_))
    ));
    assert!(service.delete_transaction(&tx));
    assert_eq!(within(T, "end", done.recv()).await.unwrap().status, TxStatus::Deleted);
    let err = pull_bytes(&sites[0], &rid, options(&sites[0])).await.unwrap_err();
    assert!(err.to_string().contains("has ended (deleted)"), "{err}");
    assert!(matches!(
        service.add_source(&tx, Source::memory(pattern(1), 4).unwrap(), None),
        Err(DownloadError::NoTransaction(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_nobody_pulls_from_times_out_and_releases_its_sources() {
    let (server, _sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let (tx, mut done) = transaction(&service, 2, Duration::from_millis(300));
    service
        .add_source(&tx, Source::memory(pattern(10), 4).unwrap(), None)
        .unwrap();
    let outcome = within(T, "timeout", done.recv()).await.unwrap();
    assert_eq!(outcome.status, TxStatus::Timeout);
    assert_eq!(service.live_sources(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_gets_pieces_in_order_and_can_stop_early() {
    let (server, sites) = owner_and_receivers(fast_config(), 1).await;
    let service = DownloadService::new(&server);
    let (tx, _done) = transaction(&service, 0, T);
    let data = pattern(9 * MIB);
    let rid = service
        .add_source(&tx, Source::memory(data.clone(), MIB as u64).unwrap(), None)
        .unwrap();
    let mut reader = DownloadReader::start(&sites[0], "server", &rid, options(&sites[0]), 2);
    let mut got = Vec::new();
    while let Some(piece) = within(T, "piece", reader.next()).await.unwrap() {
        let Piece::Bytes(b) = piece else {
            panic!("bytes expected")
        };
        got.extend_from_slice(&b);
    }
    assert_eq!(reader.total_size(), Some(data.len() as u64));
    assert!(got == data);
    assert_eq!(reader.stats().unwrap().bytes, data.len() as u64);

    // a signal shared with other work (a job's abort signal) stays as it was when a reader stops early
    let shared = AbortSignal::new();
    let mut with_shared = options(&sites[0]);
    with_shared.abort = shared.clone();
    let mut early = DownloadReader::start(&sites[0], "server", &rid, with_shared, 1);
    within(T, "first piece", early.next()).await.unwrap().unwrap();
    drop(early);
    assert!(!shared.is_triggered());

    // and triggering it still stops a reader
    let mut with_shared = options(&sites[0]);
    with_shared.abort = shared.clone();
    let mut stopped = DownloadReader::start(&sites[0], "server", &rid, with_shared, 1);
    shared.trigger();
    let mut outcome = Ok(None);
    for _ in 0..20 {
        outcome = within(T, "end", stopped.next()).await;
        if !matches!(outcome, Ok(Some(_))) {
            break;
        }
    }
    assert!(matches!(outcome, Err(DownloadError::Aborted { .. })), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_wait_for_room_in_the_send_budget_and_return_it() {
    let mut cfg = fast_config();
    cfg.download.send_budget = 1536 * 1024;
    let (server, sites) = owner_and_receivers(cfg, 3).await;
    let service = DownloadService::new(&server);
    let (tx, mut done) = transaction(&service, 3, T);
    let data = pattern(12 * MIB);
    let rid = service
        .add_source(&tx, Source::memory(data.clone(), MIB as u64).unwrap(), None)
        .unwrap();
    let pulls = spawn_pulls(&sites, &rid);
    let watcher = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..400 {
                most = most.max(service.sending());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            most
        })
    };
    for pull in pulls {
        assert!(within(T, "download", pull).await.unwrap().unwrap().0 == data);
    }
    assert_eq!(within(T, "end", done.recv()).await.unwrap().status, TxStatus::Finished);
    assert!(
        watcher.await.unwrap() <= 1536 * 1024,
        "at most one 1 MiB reply fits in 1.5 MiB"
    );
    until("budget to come back", || service.sending() == 0).await;
}
