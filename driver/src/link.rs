//! One control connection as every runtime drives it: bytes read into an
//! [`Inbox`] the machine takes one frame at a time from, and frames written
//! through a bounded queue that waits for writability instead of blocking.
//!
//! The adapter only watches the descriptor ([`Io`]); the reads, the writes
//! and the rule for a peer that stops reading are here, once:
//!
//! - a write never blocks: what the socket does not take now waits in the
//!   queue, and the adapter is asked to watch for writability;
//! - bytes left unsent for [`WRITE_TIMEOUT`], or a queue that would pass
//!   [`MAX_UNSENT`], mean the peer stopped reading: the connection is
//!   closed and the machine told, so such a peer can neither stall the
//!   deadlines nor grow a buffer.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use handoff_core::Instant;
use handoff_os::control::send_some;
use handoff_os::fdpass::{recv_with_fds, send_with_fds};

/// How long bytes may wait for a peer to read them. Frames are small, so a
/// healthy peer's socket buffer always has room; a write that waits this
/// long means the peer stopped reading, and the session ends.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes held unsent for one peer: far more than the protocol
/// ever queues at once (a few small frames), so only a peer that stopped
/// reading reaches it, and its session ends.
pub const MAX_UNSENT: usize = 64 * 1024;

/// The most bytes one call reads from one connection before it lets the
/// loop do other work: a peer that never stops sending is served in turns
/// (the driver's next timeout is then "now"), not for as long as it likes.
pub(crate) const READ_BUDGET: usize = 256 * 1024;

/// The descriptors a driver asks its adapter to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The incumbent's control listener (watched only between sessions:
    /// one session at a time).
    Listener,
    /// The incumbent's session with a supervisor, or the successor's
    /// connection to its supervisor.
    Control,
    /// The supervisor's connection to the incumbent.
    Incumbent,
    /// The supervisor's connection to the successor.
    Successor,
    /// The successor's exit (a pidfd), for the supervisor.
    Exit,
}

/// What an adapter does for a driver: watch descriptors. Everything else a
/// role needs (connecting, reading, writing, the lock, spawning, signals,
/// the journal) the driver does itself through `handoff-os`, the same for
/// every runtime.
///
/// When a watched descriptor is ready the adapter calls the driver's
/// `handle_readable` or `handle_writable` with its [`Source`], and once
/// the driver's `poll_timeout` has passed, its `handle_timeout` (calling
/// it early or twice does nothing, so a loop may as well call it after
/// every wake-up). The drivers run the machine's timers after every
/// `handle_*` themselves: an adapter whose loop calls `handle_timeout`
/// only when its wait timed out still has the deadlines kept while a peer
/// floods it.
pub trait Io {
    /// Watch `fd` as `source`: for readability, and for writability too
    /// when `write` is set. Called again, with the same descriptor, when
    /// `write` changes. An error fails what the descriptor was for (the
    /// connection is closed, the machine told).
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()>;

    /// Stop watching `source`. Its descriptor may be closed right after.
    fn unwatch(&mut self, source: Source, fd: BorrowedFd<'_>);
}

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

    /// One read: `Ok(0)` is EOF. Only when empty.
    pub fn fill(&mut self, stream: &mut impl io::Read) -> io::Result<usize> {
        self.fill_with(|buf| stream.read(buf))
    }

    /// One read by `read` into the buffer: `Ok(0)` is EOF. Only when empty.
    pub(crate) fn fill_with(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        debug_assert!(self.is_empty());
        self.start = 0;
        self.end = 0;
        loop {
            match read(&mut self.buf) {
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

/// What a read found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Bytes are in the inbox.
    Data(usize),
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed, or the socket failed.
    Closed,
}

/// One watched, non-blocking control connection.
pub(crate) struct Link {
    stream: UnixStream,
    source: Source,
    pub(crate) inbox: Inbox,
    /// Where each frame the machine takes ends, for the crash points.
    received: handoff_os::crash::Received,
    out: Vec<u8>,
    sent: usize,
    /// Descriptors to pass with the byte at this offset of `out` (the first
    /// of a `Listeners` frame): written with that byte, never before it.
    attached: Option<(usize, Vec<OwnedFd>)>,
    /// Whether the adapter watches for writability now.
    writing: bool,
    /// Since when bytes have waited for the socket to take them.
    stalled_since: Option<Instant>,
    /// Whether reads take a descriptor passed beside the bytes (the
    /// incumbent's and the successor's link to the supervisor, for
    /// `PassChannel`); others have the kernel close any.
    takes_fd: bool,
    /// The last descriptor that came, not yet claimed; an older one is
    /// closed when another comes.
    fd_in: Option<OwnedFd>,
}

impl Link {
    /// Offers the machine what was read and not yet taken; `take` returns
    /// how many bytes it took (at most one frame). The one place each
    /// driver feeds its machine, so `<role>-after-<message>-received` is
    /// reached here, once the machine has the frame and before anything
    /// that follows from it is carried out.
    pub(crate) fn feed(&mut self, role: &str, take: impl FnOnce(&[u8]) -> usize) {
        let pending = self.inbox.pending();
        let used = take(pending).min(pending.len());
        self.received.took(role, &pending[..used]);
        self.inbox.consume(used);
    }

    /// Makes `stream` non-blocking and has the adapter watch it.
    pub(crate) fn open(io: &mut impl Io, source: Source, stream: UnixStream) -> io::Result<Link> {
        stream.set_nonblocking(true)?;
        io.watch(source, stream.as_fd(), false)?;
        Ok(Link {
            stream,
            source,
            inbox: Inbox::new(),
            received: handoff_os::crash::Received::default(),
            out: Vec::new(),
            sent: 0,
            attached: None,
            writing: false,
            stalled_since: None,
            takes_fd: false,
            fd_in: None,
        })
    }

    /// From now on, reads keep one descriptor passed beside the bytes, for
    /// [`Link::take_fd`]. Close-on-exec, as every received one.
    pub(crate) fn accept_fd(&mut self) {
        self.takes_fd = true;
    }

    /// The descriptor that came with the frame just handed to the machine
    /// (a peer passes one only beside a frame that carries one), if any.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd_in.take()
    }

    /// Stops watching and closes, after one last try to write what is
    /// queued: the machine's `Close`, `Disconnect` and end come after the
    /// frames queued before them (a `Commit`, an `Abort`), which must reach
    /// the peer first. Anything the socket still refuses then sits behind
    /// a full socket buffer, hundreds of kilobytes of frames the peer has
    /// not read: a peer that stopped reading, which gets no more.
    pub(crate) fn close(mut self, io: &mut impl Io) {
        while self.sent < self.out.len() {
            match self.write_some() {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        io.unwatch(self.source, self.stream.as_fd());
    }

    /// Stops the adapter watching this connection, which stays open, for a
    /// driver that drives it on its own from now on (a successor's session
    /// on probation, driven by a thread of its own).
    pub(crate) fn detach(mut self, io: &mut impl Io) -> Link {
        io.unwatch(self.source, self.stream.as_fd());
        self.writing = false;
        self
    }

    /// The connection's descriptor, to wait on.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    /// One write of what is queued: up to the byte descriptors are attached
    /// to, or from it with them.
    fn write_some(&mut self) -> io::Result<usize> {
        let fd = self.stream.as_fd();
        let n = match &self.attached {
            Some((at, fds)) if *at == self.sent => {
                let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                let n = send_with_fds(fd, &self.out[self.sent..], &fds)?;
                if n > 0 {
                    self.attached = None;
                }
                n
            }
            Some((at, _)) => send_some(fd, &self.out[self.sent..*at])?,
            None => send_some(fd, &self.out[self.sent..])?,
        };
        self.sent += n;
        Ok(n)
    }

    /// Like [`Link::send`], with `fds` passed beside the frame's first byte
    /// (`SCM_RIGHTS`). One such frame waits at a time.
    pub(crate) fn send_with_fds(
        &mut self,
        io: &mut impl Io,
        now: Instant,
        frame: &[u8],
        fds: Vec<OwnedFd>,
    ) -> io::Result<()> {
        if self.attached.is_some() {
            return Err(io::Error::other("descriptors already wait to be sent"));
        }
        if self.stalled(now) || self.out.len() - self.sent + frame.len() > MAX_UNSENT {
            return Err(stopped_reading());
        }
        if !fds.is_empty() && !frame.is_empty() {
            self.attached = Some((self.out.len(), fds));
        }
        self.out.extend_from_slice(frame);
        self.flush(io, now)
    }

    /// Queues a whole frame and writes what the socket takes now. An error
    /// means the connection is over (the peer stopped reading, or the
    /// socket failed).
    pub(crate) fn send(&mut self, io: &mut impl Io, now: Instant, frame: &[u8]) -> io::Result<()> {
        if self.stalled(now) || self.out.len() - self.sent + frame.len() > MAX_UNSENT {
            return Err(stopped_reading());
        }
        self.out.extend_from_slice(frame);
        self.flush(io, now)
    }

    /// Writes what is queued; asks the adapter to watch for writability
    /// while some is left.
    pub(crate) fn flush(&mut self, io: &mut impl Io, now: Instant) -> io::Result<()> {
        while self.sent < self.out.len() {
            match self.write_some() {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.stalled_since = None;
        } else if self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
        let want = self.sent < self.out.len();
        if want != self.writing {
            io.watch(self.source, self.stream.as_fd(), want)?;
            self.writing = want;
        }
        Ok(())
    }

    /// Whether bytes have waited past [`WRITE_TIMEOUT`].
    pub(crate) fn stalled(&self, now: Instant) -> bool {
        self.stall_deadline().is_some_and(|t| now >= t)
    }

    /// When waiting bytes will have waited too long.
    pub(crate) fn stall_deadline(&self) -> Option<Instant> {
        self.stalled_since.map(|t| t + WRITE_TIMEOUT)
    }

    /// One read into the (empty) inbox.
    pub(crate) fn read(&mut self) -> Read {
        let filled = if self.takes_fd {
            let (fd, kept) = (self.stream.as_fd(), &mut self.fd_in);
            self.inbox.fill_with(|buf| {
                let got = recv_with_fds(fd, buf, 1)?;
                if let Some(new) = got.fds.into_iter().next() {
                    *kept = Some(new);
                }
                Ok(got.len)
            })
        } else {
            self.inbox.fill(&mut (&self.stream))
        };
        match filled {
            Ok(0) => Read::Closed,
            Ok(n) => Read::Data(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::WouldBlock,
            Err(_) => Read::Closed,
        }
    }
}

/// Refuses a build id the `Hello` would not carry (see
/// [`handoff_core::MAX_BUILD_ID_LEN`]).
pub(crate) fn check_build_id(build_id: &[u8]) -> io::Result<()> {
    if build_id.len() > handoff_core::MAX_BUILD_ID_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the build id is {} bytes; a Hello carries at most {} (use a version or a commit id)",
                build_id.len(),
                handoff_core::MAX_BUILD_ID_LEN
            ),
        ));
    }
    Ok(())
}

fn stopped_reading() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the peer stopped reading its control socket",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Watches nothing; counts what it was asked.
    #[derive(Default)]
    struct Counting {
        write_on: usize,
        write_off: usize,
    }

    impl Io for Counting {
        fn watch(&mut self, _: Source, _: BorrowedFd<'_>, write: bool) -> io::Result<()> {
            if write {
                self.write_on += 1;
            } else {
                self.write_off += 1;
            }
            Ok(())
        }
        fn unwatch(&mut self, _: Source, _: BorrowedFd<'_>) {}
    }

    #[test]
    fn a_peer_that_stops_reading_ends_the_link_instead_of_growing_a_buffer() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut io = Counting::default();
        let mut link = Link::open(&mut io, Source::Control, ours).unwrap();
        let now = crate::clock::now();
        let frame = [0u8; 14];
        let failed = (0..1_000_000).find(|_| link.send(&mut io, now, &frame).is_err());
        assert!(failed.is_some(), "a peer that reads nothing took it all");
        assert!(link.out.len() - link.sent <= MAX_UNSENT);
        assert_eq!(io.write_on, 1, "writability asked for once");
    }

    #[test]
    fn bytes_left_unsent_past_the_write_timeout_fail_the_next_send() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut io = Counting::default();
        let mut link = Link::open(&mut io, Source::Control, ours).unwrap();
        let t0 = crate::clock::now();
        while link.stall_deadline().is_none() {
            link.send(&mut io, t0, &[0u8; 4096]).unwrap();
        }
        assert!(!link.stalled(t0 + (WRITE_TIMEOUT - Duration::from_millis(1))));
        assert!(link.stalled(t0 + WRITE_TIMEOUT));
        assert!(link.send(&mut io, t0 + WRITE_TIMEOUT, &[0u8; 1]).is_err());
    }
}
