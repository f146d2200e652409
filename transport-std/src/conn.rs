//! The plumbing the drivers share (the blocking ones here, and the mio and
//! smol adapters for [`Inbox`]): reading a control socket
//! into a buffer the machine takes one frame at a time from, and waiting
//! for readiness or the machine's next deadline.

use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use handoff_core::Instant;

use crate::clock;
use crate::os::process::poll_readable;

/// A write that takes longer than this means the peer stopped reading:
/// frames are small, so a healthy peer's socket buffer always has room.
/// Every adapter ends the session then (std by `SO_SNDTIMEO`, mio by the
/// age of what it holds unsent, smol by a timer raced against the send),
/// so a peer that stops reading can neither stall the machine's deadlines
/// nor grow a buffer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes mio's adapter holds unsent for one peer (the others hold
/// none: std blocks, smol awaits the send): far
/// more than the protocol ever queues at once (a few small frames), so only
/// a peer that stopped reading reaches it, and its session ends.
pub const MAX_UNSENT: usize = 64 * 1024;

/// Bytes read from a peer and not yet taken by the machine (which takes
/// at most one frame per call).
pub struct Inbox {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

impl Inbox {
    /// An empty inbox with a 16 KiB read buffer.
    pub fn new() -> Self {
        Inbox {
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The bytes not yet taken.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// `n` bytes were taken.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Whether everything read was taken.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// One read from a socket `poll` found readable: `Ok(0)` is EOF. Only
    /// when empty.
    pub fn fill(&mut self, stream: &mut impl Read) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        loop {
            match stream.read(&mut self.buf) {
                Ok(n) => {
                    self.end = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// [`configure`]d `stream`, for the places that take it by value.
pub(crate) fn configured(stream: UnixStream) -> io::Result<UnixStream> {
    configure(&stream)?;
    Ok(stream)
}

/// Prepares a control stream: blocking reads (only after `poll`), and a
/// bound on writes.
pub(crate) fn configure(stream: &UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))
}

/// Waits until one of `fds` is readable or `deadline` passes; returns which
/// are readable (none on a timeout).
pub(crate) fn wait(
    fds: &[Option<BorrowedFd<'_>>],
    deadline: Option<Instant>,
) -> io::Result<Vec<bool>> {
    let live: Vec<BorrowedFd<'_>> = fds.iter().flatten().copied().collect();
    let timeout = deadline.map(clock::until);
    let ready = if live.is_empty() {
        // Nothing to watch: only the deadline can end the wait. With neither,
        // the caller's machine would be stuck, which the machines rule out.
        if let Some(t) = timeout {
            std::thread::sleep(t);
        }
        Vec::new()
    } else {
        poll_readable(&live, timeout)?
    };
    let mut it = ready.into_iter();
    Ok(fds
        .iter()
        .map(|fd| fd.is_some() && it.next().unwrap_or(false))
        .collect())
}
