//! What an owner can serve: bytes in memory, a file, or items made on demand.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::DownloadError;

/// Makes the items of an item source on demand (the tensor layer makes one item per tensor).
pub trait ItemProducer: Send + Sync {
    /// Makes item `index` (`0 ..` the source's item count). Called on a blocking thread, possibly for several
    /// indices at once. Must be repeatable: asked again, it returns the same bytes.
    fn produce(&self, index: u64) -> Result<Bytes, String>;
}

/// A source registered under one reference id.
#[derive(Clone)]
pub enum Source {
    /// Served as slices of the buffer: nothing is produced or cached.
    Memory { data: Bytes, chunk_size: u64 },
    /// Read chunk by chunk with positional reads; chunks go through the shared cache.
    File {
        path: PathBuf,
        file: Arc<File>,
        size: u64,
        chunk_size: u64,
    },
    /// `count` items, made by `producer`, cached; a reply packs items until adding one would pass
    /// `max_chunk_size` (at least one item per reply).
    Items {
        producer: Arc<dyn ItemProducer>,
        count: u64,
        max_chunk_size: u64,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Memory { data, chunk_size } => write!(f, "Memory({} bytes, chunks of {chunk_size})", data.len()),
            Source::File { path, size, .. } => write!(f, "File({}, {size} bytes)", path.display()),
            Source::Items { count, .. } => write!(f, "Items({count})"),
        }
    }
}

fn positive_chunk(chunk_size: u64) -> Result<u64, DownloadError> {
    if chunk_size == 0 {
        return Err(DownloadError::BadSource("chunk size must be greater than zero".into()));
    }
    Ok(chunk_size)
}

impl Source {
    pub fn memory(data: Bytes, chunk_size: u64) -> Result<Source, DownloadError> {
        Ok(Source::Memory {
            data,
            chunk_size: positive_chunk(chunk_size)?,
        })
    }

    /// Opens the file now, so that a missing or unreadable file is an error for the owner, not for receivers.
    pub fn file(path: &Path, chunk_size: u64) -> Result<Source, DownloadError> {
        let file = File::open(path).map_err(|e| DownloadError::BadSource(format!("{}: {e}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(|e| DownloadError::BadSource(format!("{}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(DownloadError::BadSource(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        Ok(Source::File {
            path: path.to_path_buf(),
            file: Arc::new(file),
            size: meta.len(),
            chunk_size: positive_chunk(chunk_size)?,
        })
    }

    pub fn items(producer: Arc<dyn ItemProducer>, count: u64, max_chunk_size: u64) -> Result<Source, DownloadError> {
        Ok(Source::Items {
            producer,
            count,
            max_chunk_size: positive_chunk(max_chunk_size)?,
        })
    }

    /// Total bytes, where known before producing anything.
    pub fn size(&self) -> Option<u64> {
        match self {
            Source::Memory { data, .. } => Some(data.len() as u64),
            Source::File { size, .. } => Some(*size),
            Source::Items { .. } => None,
        }
    }
}

/// Reads `len` bytes at `offset`; a file that shrank under us is an error, not a short chunk.
pub(crate) fn read_file_chunk(file: &File, offset: u64, len: usize) -> Result<Bytes, String> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, offset).map_err(|e| format!("read of {len} bytes at {offset} failed: {e}"))?;
    Ok(Bytes::from(buf))
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}
