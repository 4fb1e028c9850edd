//! Where a download's pieces go: the [`Sink`] trait, and sinks for memory and for a file.

use std::future::Future;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::wire::Data;

/// One piece of a download, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Bytes(Bytes),
    Items(Vec<Bytes>),
}

impl Piece {
    pub fn len(&self) -> usize {
        match self {
            Piece::Bytes(b) => b.len(),
            Piece::Items(items) => items.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Data> for Piece {
    fn from(data: Data) -> Self {
        match data {
            Data::Bytes(b) => Piece::Bytes(b),
            Data::Items(items) => Piece::Items(items),
        }
    }
}

/// Where downloaded pieces go. Called in order; an error stops the download.
pub trait Sink: Send {
    /// Before the first piece, with the total size where the owner told it.
    fn begin(&mut self, total_size: Option<u64>) -> impl Future<Output = Result<(), String>> + Send;
    fn put(&mut self, piece: Piece) -> impl Future<Output = Result<(), String>> + Send;
    /// After the last piece.
    fn finish(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Collects a download in memory: one allocation when the size is known up front.
#[derive(Default)]
pub struct MemorySink {
    bytes: Vec<u8>,
    items: Vec<Bytes>,
}

impl MemorySink {
    /// The bytes received; for item sources, the items.
    pub fn into_parts(self) -> (Bytes, Vec<Bytes>) {
        (Bytes::from(self.bytes), self.items)
    }
}

impl Sink for MemorySink {
    async fn begin(&mut self, total_size: Option<u64>) -> Result<(), String> {
        if let Some(total) = total_size {
            let total = usize::try_from(total).map_err(|_| format!("{total} bytes do not fit in memory"))?;
            self.bytes
                .try_reserve_exact(total)
                .map_err(|e| format!("cannot allocate {total} bytes: {e}"))?;
        }
        Ok(())
    }

    async fn put(&mut self, piece: Piece) -> Result<(), String> {
        match piece {
            Piece::Bytes(b) => self.bytes.extend_from_slice(&b),
            Piece::Items(items) => self.items.extend(items),
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Writes a byte download to a file, created (or truncated) at `begin`.
pub struct FileSink {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl FileSink {
    pub fn new(path: &Path) -> Self {
        FileSink {
            path: path.to_path_buf(),
            file: None,
        }
    }
}

impl Sink for FileSink {
    async fn begin(&mut self, total_size: Option<u64>) -> Result<(), String> {
        let file = std::fs::File::create(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Some(total) = total_size {
            // Reserve the length so that a full disk shows up now rather than half way.
            file.set_len(total)
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            file.set_len(0).map_err(|e| format!("{}: {e}", self.path.display()))?;
        }
        self.file = Some(file);
        Ok(())
    }

    async fn put(&mut self, piece: Piece) -> Result<(), String> {
        use std::io::Write;
        let file = self.file.as_mut().ok_or("file not open")?;
        let Piece::Bytes(b) = piece else {
            return Err("an item source cannot be written to a file".into());
        };
        file.write_all(&b).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    async fn finish(&mut self) -> Result<(), String> {
        let file = self.file.take().ok_or("file not open")?;
        file.sync_data().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}
