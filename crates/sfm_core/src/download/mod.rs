//! Pull downloads: an owner registers sources under reference ids (RIDs) in a transaction; each receiver pulls
//! them chunk by chunk, at its own pace, by request/reply.
//!
//! ```text
//! owner                                                     receiver
//! -----                                                     --------
//! DownloadService::new_transaction(opts) -> tx_id
//! add_source(tx_id, Source) -> rid   ── rid travels in an app message ──►
//!                                    ◄── Request{rid, state}          download(cell, owner, rid, sink, opts)
//! table: receiver active; cache: produce chunk once (single-flight)
//! Reply{ok, data, next state} ──────────────────────────────────────►  sink.write_at / sink.items
//!                                    ◄── Request{rid, state=end}
//! Reply{eof}; table: receiver done ─────────────────────────────────►  sink.finish
//! every ref done by every expected receiver, or idle timeout: the transaction ends, sources are released, the
//! owner's callback gets each receiver's status
//! ```
//!
//! The protocol logic lives in sans-IO parts ([`table`]: transactions and receivers, [`retry`]: the retry rule,
//! [`wire`]: message bodies); [`service`] and [`client`] drive them with tokio.

mod cache;
pub mod client;
pub mod retry;
pub mod service;
mod sink;
pub mod source;
pub mod table;
pub mod wire;

use std::time::Duration;

pub use client::{download, AbortSignal, DownloadOptions, DownloadReader, DownloadStats, ProgressCallback};
pub use retry::RetryPolicy;
pub use service::{DownloadService, TransactionOptions};
pub use sink::{FileSink, MemorySink, Piece, Sink};
pub use source::{ItemProducer, Source};
pub use table::{ReceiverStatus, TxInfo, TxOutcome, TxStatus};

use crate::cell::ReturnCode;
use crate::config::ConfigError;

/// Settings of downloads, owner and receiver side. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadConfig {
    /// Bytes per reply for byte sources (`download_chunk_size`, default 5 MiB, NVFlare's file chunk).
    pub chunk_size: u64,
    /// Most bytes of produced chunks the owner keeps for other receivers (`download_cache_budget`, default
    /// 256 MiB). Past it, the least recently used chunks are dropped; a chunk asked for again is produced again.
    pub cache_budget: u64,
    /// Bytes of encoded replies an owner holds while they are being sent (`download_send_budget`, default 64 MiB).
    /// Further replies wait for room, so that many receivers pulling at once cost latency, not memory.
    pub send_budget: u64,
    /// A cached chunk nobody asked for in this long is dropped (`download_cache_ttl`, default 60 s).
    pub cache_ttl: Duration,
    /// Idle time after which a transaction nobody pulls from ends with status "timeout", when its owner gave no
    /// timeout of its own (`min_download_timeout`, default 300 s).
    pub min_download_timeout: Duration,
    /// A receiver that has not pulled for this long is marked failed and its state on the owner freed
    /// (`download_receiver_idle_timeout`, default 300 s). A receiver whose connection drops is freed at once.
    pub receiver_idle_timeout: Duration,
    /// Longest wait for one reply (`streaming_per_request_timeout`, default 600 s, as NVFlare).
    pub per_request_timeout: Duration,
    /// Retries of a request that timed out or lost its connection (`download_max_retries`, default 3).
    pub max_retries: u32,
    /// Wait before the first retry (`download_retry_backoff`, default 2 s); doubles on each further retry, up to
    /// `download_retry_max_backoff` (default 60 s).
    pub retry_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// Requests a receiver keeps in flight for one byte source (`download_max_inflight`, default 4).
    pub max_inflight: usize,
    /// Test-only fault injection: the owner drops every n-th reply (`download_fault_drop_every`, default 0: never).
    pub fault_drop_every: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            chunk_size: 5 * 1024 * 1024,
            cache_budget: 256 * 1024 * 1024,
            send_budget: 64 * 1024 * 1024,
            cache_ttl: Duration::from_secs(60),
            min_download_timeout: Duration::from_secs(300),
            receiver_idle_timeout: Duration::from_secs(300),
            per_request_timeout: Duration::from_secs(600),
            max_retries: 3,
            retry_backoff: Duration::from_secs(2),
            retry_max_backoff: Duration::from_secs(60),
            max_inflight: 4,
            fault_drop_every: 0,
        }
    }
}

impl DownloadConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("download_cache_ttl", self.cache_ttl),
            ("min_download_timeout", self.min_download_timeout),
            ("download_receiver_idle_timeout", self.receiver_idle_timeout),
            ("streaming_per_request_timeout", self.per_request_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(ConfigError {
                    name,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if self.send_budget < 1024 {
            return Err(ConfigError {
                name: "download_send_budget",
                reason: "must be at least 1 KiB".into(),
            });
        }
        if self.chunk_size == 0 {
            return Err(ConfigError {
                name: "download_chunk_size",
                reason: "must be greater than zero".into(),
            });
        }
        if self.max_inflight == 0 {
            return Err(ConfigError {
                name: "download_max_inflight",
                reason: "must be at least 1".into(),
            });
        }
        if self.retry_max_backoff < self.retry_backoff {
            return Err(ConfigError {
                name: "download_retry_max_backoff",
                reason: "must be at least download_retry_backoff".into(),
            });
        }
        Ok(())
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            initial_backoff: self.retry_backoff,
            max_backoff: self.retry_max_backoff,
        }
    }
}

/// Why a download or an owner-side call failed. Messages name the setting to change where one would help.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DownloadError {
    #[error("download of {ref_id} aborted")]
    Aborted { ref_id: String },
    #[error(
        "download of {ref_id} from {owner}: no reply within {timeout:?} after {attempts} attempts; raise \
         streaming_per_request_timeout or download_max_retries if the owner is slow"
    )]
    TimedOut {
        ref_id: String,
        owner: String,
        timeout: Duration,
        attempts: u32,
    },
    #[error("download of {ref_id} from {owner} refused ({code}): {error}")]
    Refused {
        ref_id: String,
        owner: String,
        code: ReturnCode,
        error: String,
    },
    #[error("download of {ref_id}: the owner failed to produce the data")]
    ProducerFailed { ref_id: String },
    #[error("download of {ref_id}: {reason}")]
    Protocol { ref_id: String, reason: String },
    #[error("download of {ref_id}: cannot store the data: {reason}")]
    Sink { ref_id: String, reason: String },
    #[error("no download transaction {0:?} (it ended, or was never created)")]
    NoTransaction(String),
    #[error("reference id {0:?} is already in use")]
    DuplicateRef(String),
    #[error("cannot add source: {0}")]
    BadSource(String),
}
