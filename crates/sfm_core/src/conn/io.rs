//! Reading and writing whole frames on a TCP stream.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::frame::{Frame, FrameCodec, FrameType, Prefix, PREFIX_LEN};

use super::ConnError;

/// Read-ahead for small frames; a large frame gets exactly its own size reserved by the codec.
const READ_AHEAD: usize = 64 * 1024;
/// Buffers at least this large ask the kernel for transparent huge pages: a 64 MiB frame then costs tens of page
/// faults instead of tens of thousands.
const HUGE_PAGE_THRESHOLD: usize = 4 * 1024 * 1024;

#[cfg(target_os = "linux")]
pub(crate) fn advise_huge_pages(buf: &mut BytesMut) {
    const HUGE_PAGE: usize = 2 * 1024 * 1024;
    if buf.capacity() < HUGE_PAGE_THRESHOLD {
        return;
    }
    let start = buf.as_mut_ptr() as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let end = (start + buf.capacity()) & !(HUGE_PAGE - 1);
    if end > aligned {
        // SAFETY: the range lies inside the allocation `buf` owns; MADV_HUGEPAGE changes no contents. A failure
        // (kernel without THP) is harmless, so its result is ignored.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages(_buf: &mut BytesMut) {}

/// Caps what the kernel holds unsent (TCP_NOTSENT_LOWAT), so that queued bulk waits in our lanes instead.
#[cfg(target_os = "linux")]
pub(super) fn limit_unsent(stream: &tokio::net::TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    if bytes == 0 {
        return;
    }
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: a plain setsockopt on a socket we own, with a correctly sized int; failure only loses the cap.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn limit_unsent(_stream: &tokio::net::TcpStream, _bytes: usize) {}

/// Payloads up to this size are copied next to the head and written in one call; larger ones are written from
/// their own buffer, with no copy.
const COALESCE_LIMIT: usize = 16 * 1024;

pub(super) struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
    huge_pages: bool,
}

impl FrameReader {
    pub(super) fn new(rd: OwnedReadHalf, max_frame_size: usize, huge_pages: bool) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_frame_size),
            huge_pages,
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub(super) async fn next(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if self.buf.len() >= PREFIX_LEN {
                let prefix = Prefix::decode(&self.buf[..PREFIX_LEN])?;
                prefix.validate(self.codec.max_frame_size())?;
                if prefix.length as usize > READ_AHEAD {
                    return self.read_large(prefix).await.map(Some);
                }
            }
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(READ_AHEAD);
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Io(format!(
                        "connection ended inside a frame ({} bytes pending)",
                        self.buf.len()
                    )))
                };
            }
        }
    }

    async fn fill(&mut self) -> Result<usize, ConnError> {
        self.rd
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| ConnError::Io(e.to_string()))
    }

    /// A frame larger than the read-ahead gets a buffer of exactly its own size, which becomes the payload the
    /// application holds: the shared read-ahead buffer never grows to the size of the largest frame seen.
    async fn read_large(&mut self, prefix: Prefix) -> Result<Frame, ConnError> {
        let body_len = prefix.body_len();
        let _ = self.buf.split_to(PREFIX_LEN);
        let mut body = BytesMut::with_capacity(body_len);
        if self.huge_pages {
            advise_huge_pages(&mut body);
        }
        let already = self.buf.len().min(body_len);
        body.extend_from_slice(&self.buf.split_to(already));
        while body.len() < body_len {
            let want = body_len - body.len();
            let n = self
                .rd
                .read_buf(&mut (&mut body).limit(want))
                .await
                .map_err(|e| ConnError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ConnError::Io(format!(
                    "connection ended inside a frame ({} of {body_len} bytes received)",
                    body.len()
                )));
            }
        }
        Ok(FrameCodec::decode_body(&prefix, body.freeze())?)
    }

    /// The next frame, which must be of type `kind` (handshake).
    pub(super) async fn next_of(&mut self, kind: FrameType) -> Result<Frame, ConnError> {
        match self.next().await? {
            Some(frame) if frame.frame_type == kind => Ok(frame),
            Some(frame) => Err(ConnError::Handshake(format!(
                "expected {kind:?}, got {:?}",
                frame.frame_type
            ))),
            None => Err(ConnError::Handshake(format!(
                "connection closed while waiting for {kind:?}"
            ))),
        }
    }
}

pub(super) struct FrameWriter {
    wr: OwnedWriteHalf,
    max_frame_size: usize,
    /// Longest a single write call may make no progress.
    stall_timeout: Duration,
    sequence: u16,
    /// Peer name for error messages, known once the handshake is done.
    pub(super) peer: String,
}

impl FrameWriter {
    pub(super) fn new(wr: OwnedWriteHalf, max_frame_size: usize, stall_timeout: Duration) -> Self {
        FrameWriter {
            wr,
            max_frame_size,
            stall_timeout,
            sequence: 0,
            peer: String::new(),
        }
    }

    /// Writes one frame, numbering it with the connection's sequence counter (first frame = 1, as NVFlare).
    /// Fails with `WriteStalled` only when the socket accepts nothing for `stall_timeout`: a slow but moving write
    /// never times out.
    pub(super) async fn write(&mut self, mut frame: Frame) -> Result<(), ConnError> {
        self.sequence = self.sequence.wrapping_add(1);
        frame.sequence = self.sequence;
        let mut head = frame.encode_head_checked(self.max_frame_size)?;
        if frame.payload.len() <= COALESCE_LIMIT {
            head.extend_from_slice(&frame.payload);
            self.write_all(&head).await
        } else {
            self.write_all(&head).await?;
            self.write_all(&frame.payload).await
        }
    }

    async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), ConnError> {
        while !buf.is_empty() {
            let n = tokio::time::timeout(self.stall_timeout, self.wr.write(buf))
                .await
                .map_err(|_| ConnError::WriteStalled {
                    peer: self.peer.clone(),
                    timeout: self.stall_timeout,
                })?
                .map_err(|e| ConnError::Io(e.to_string()))?;
            if n == 0 {
                return Err(ConnError::Io("socket accepted no bytes".into()));
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    pub(super) async fn shutdown(&mut self) {
        let _ = self.wr.shutdown().await;
    }
}
