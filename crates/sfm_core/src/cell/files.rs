//! Where a stream's bytes come from and go to: memory, or a file read and written chunk by chunk, so that a file of
//! any size crosses with memory bounded by the window, never by the file.

use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::frame::Headers;
use crate::stream::StreamError;

/// Header naming the file a file stream carries (a base name; the receiver chooses the directory).
pub const FILE_NAME: &str = "Streamer.file_name";

/// Handles a received file: its headers, where it was written, and its size. Called on a transport thread.
pub type FileHandler = Arc<dyn Fn(Headers, PathBuf, u64) + Send + Sync>;

/// The bytes a stream sends.
pub(super) enum Source {
    Memory(Bytes),
    File { file: File, len: u64, path: PathBuf },
}

impl Source {
    pub(super) fn open_file(path: &Path) -> Result<Source, StreamError> {
        let file = File::open(path).map_err(|e| io_error("cannot open", path, &e))?;
        let len = file.metadata().map_err(|e| io_error("cannot stat", path, &e))?.len();
        Ok(Source::File {
            file,
            len,
            path: path.to_path_buf(),
        })
    }

    pub(super) fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    /// `len` bytes at `offset`: a slice of memory (no copy), or a fresh read of the file.
    pub(super) fn chunk(&self, offset: u64, len: u64) -> Result<Bytes, StreamError> {
        match self {
            Source::Memory(b) => Ok(b.slice(offset as usize..(offset + len) as usize)),
            Source::File { file, path, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; len as usize];
                file.read_exact_at(&mut buf, offset)
                    .map_err(|e| io_error("cannot read", path, &e))?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// Where an incoming stream's bytes go.
pub(super) enum Sink {
    Memory(BytesMut),
    File {
        file: File,
        partial: PathBuf,
        target: PathBuf,
        written: u64,
    },
}

impl Sink {
    pub(super) fn memory(expected: Option<u64>, huge_pages: bool) -> Sink {
        let mut buf = match expected {
            Some(size) => BytesMut::with_capacity(size as usize),
            None => BytesMut::new(),
        };
        if huge_pages {
            crate::conn::advise_huge_pages(&mut buf);
        }
        Sink::Memory(buf)
    }

    /// A file named by the stream's `file_name` header inside `dir`, written as `<name>.part` until complete.
    pub(super) fn file(dir: &Path, headers: &Headers) -> Result<Sink, StreamError> {
        let name = headers.get_str(FILE_NAME).unwrap_or_default();
        let name = safe_file_name(name)?;
        let target = dir.join(name);
        let partial = dir.join(format!("{name}.part"));
        let file = File::create(&partial).map_err(|e| io_error("cannot create", &partial, &e))?;
        Ok(Sink::File {
            file,
            partial,
            target,
            written: 0,
        })
    }

    pub(super) fn append(&mut self, data: &[u8]) -> Result<(), StreamError> {
        match self {
            Sink::Memory(buf) => buf.extend_from_slice(data),
            Sink::File {
                file, partial, written, ..
            } => {
                file.write_all(data)
                    .map_err(|e| io_error("cannot write", partial, &e))?;
                *written += data.len() as u64;
            }
        }
        Ok(())
    }

    /// Removes what a failed stream left behind.
    pub(super) fn discard(self) {
        if let Sink::File { partial, .. } = self {
            let _ = std::fs::remove_file(partial);
        }
    }
}

/// What a finished sink holds.
pub(super) enum Finished {
    Memory(Bytes),
    File { path: PathBuf, size: u64 },
}

impl Sink {
    pub(super) fn finish(self) -> Result<Finished, StreamError> {
        match self {
            Sink::Memory(buf) => Ok(Finished::Memory(buf.freeze())),
            Sink::File {
                file,
                partial,
                target,
                written,
            } => {
                file.sync_all().map_err(|e| io_error("cannot flush", &partial, &e))?;
                drop(file);
                std::fs::rename(&partial, &target).map_err(|e| io_error("cannot rename", &partial, &e))?;
                Ok(Finished::File {
                    path: target,
                    size: written,
                })
            }
        }
    }
}

/// A received file name must be a plain base name: nothing that could reach outside the receiver's directory.
pub fn safe_file_name(name: &str) -> Result<&str, StreamError> {
    let refuse = |why: &str| StreamError::Aborted {
        by_peer: false,
        message: format!("refusing file name {name:?}: {why}"),
    };
    if name.is_empty() {
        return Err(refuse(&format!("a file stream needs a {FILE_NAME:?} header")));
    }
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(_)), None) if !name.contains(['/', '\\', '\0']) => Ok(name),
        _ => Err(refuse(
            "only a base name is allowed (no directories, '..' or absolute paths)",
        )),
    }
}

fn io_error(what: &str, path: &Path, err: &std::io::Error) -> StreamError {
    StreamError::Aborted {
        by_peer: false,
        message: format!("{what} {}: {err}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_base_names_are_accepted() {
        assert!(safe_file_name("model.pt").is_ok());
        assert!(safe_file_name("a..b").is_ok());
        for bad in ["", "..", ".", "../x", "/etc/passwd", "a/b", "a\\b", "x\0y"] {
            let err = safe_file_name(bad).unwrap_err().to_string();
            assert!(err.contains("refusing"), "{bad:?}: {err}");
        }
    }
}
