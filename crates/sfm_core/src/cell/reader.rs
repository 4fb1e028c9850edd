//! Reading an incoming stream chunk by chunk as it arrives, instead of waiting for the whole of it. The reader is
//! the flow control: a chunk counts as consumed, and may be acknowledged, only once the application took it, so a
//! slow reader slows the sender down to its pace and memory stays within the window.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::frame::Headers;
use crate::stream::StreamError;

use super::CellInner;

/// What a `StreamReader` receives.
pub(super) enum ReaderItem {
    Data(Bytes),
    End,
    Failed(StreamError),
}

/// Receives each new stream addressed to its (channel, topic). Called on a transport thread: hand the reader off.
pub type ReaderHandler = Arc<dyn Fn(StreamReader) + Send + Sync>;

/// One incoming stream, read in order. Dropping it before the end aborts the stream and tells the sender.
pub struct StreamReader {
    headers: Headers,
    size: Option<u64>,
    rx: mpsc::UnboundedReceiver<ReaderItem>,
    consumed: Arc<AtomicU64>,
    cell: Weak<CellInner>,
    key: (String, u64),
    ended: bool,
}

impl StreamReader {
    pub(super) fn new(
        headers: Headers,
        size: Option<u64>,
        rx: mpsc::UnboundedReceiver<ReaderItem>,
        consumed: Arc<AtomicU64>,
        cell: Weak<CellInner>,
        key: (String, u64),
    ) -> Self {
        StreamReader {
            headers,
            size,
            rx,
            consumed,
            cell,
            key,
            ended: false,
        }
    }

    /// The stream's application headers (as a blob handler would see them).
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    pub(super) fn key(&self) -> &(String, u64) {
        &self.key
    }

    /// The sending cell.
    pub fn origin(&self) -> &str {
        &self.key.0
    }

    /// The size the sender announced, if it did.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The next chunk, or `None` at the end. Waits at most `idle_timeout` for it.
    pub async fn next_chunk(&mut self, idle_timeout: Duration) -> Result<Option<Bytes>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        let item = tokio::time::timeout(idle_timeout, self.rx.recv())
            .await
            .map_err(|_| StreamError::ReadTimeout {
                stream_id: self.key.1,
                timeout: idle_timeout,
                received: self.consumed.load(Ordering::Acquire),
            })?;
        match item {
            Some(ReaderItem::Data(data)) => {
                self.consumed.fetch_add(data.len() as u64, Ordering::AcqRel);
                if let Some(cell) = self.cell.upgrade() {
                    cell.stream_consumed(&self.key);
                }
                Ok(Some(data))
            }
            Some(ReaderItem::End) => {
                self.ended = true;
                Ok(None)
            }
            Some(ReaderItem::Failed(err)) => {
                self.ended = true;
                Err(err)
            }
            None => {
                self.ended = true;
                Err(StreamError::Aborted {
                    by_peer: false,
                    message: "the receiving cell closed".into(),
                })
            }
        }
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(cell) = self.cell.upgrade() {
                cell.abort_incoming(&self.key, "the reader stopped before the end of the stream");
            }
        }
    }
}
