//! One control connection in a mio loop: reads into an [`Inbox`] the
//! machine takes frames from, and writes whole frames through a buffer that
//! waits for the next writable event when the socket is full, so nothing
//! ever blocks the loop.

use std::io;
use std::os::fd::AsFd;

use handoff_std::conn::{Inbox, MAX_UNSENT, WRITE_TIMEOUT};
use handoff_std::os::control::send_some;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// Bytes are in the inbox.
    Data,
    /// Nothing more for now.
    WouldBlock,
    /// The peer closed, or the socket failed.
    Closed,
}

pub(crate) struct Conn {
    pub(crate) stream: UnixStream,
    pub(crate) token: Token,
    pub(crate) inbox: Inbox,
    out: Vec<u8>,
    sent: usize,
    wants_write: bool,
    /// Since when bytes have waited for the socket to take them.
    stalled_since: Option<std::time::Instant>,
}

impl Conn {
    pub(crate) fn register(
        mut stream: UnixStream,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Conn> {
        registry.register(&mut stream, token, Interest::READABLE)?;
        Ok(Conn {
            stream,
            token,
            inbox: Inbox::new(),
            out: Vec::new(),
            sent: 0,
            wants_write: false,
            stalled_since: None,
        })
    }

    pub(crate) fn deregister(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Reads once into the (empty) inbox.
    pub(crate) fn read(&mut self) -> Read {
        match self.inbox.fill(&mut self.stream) {
            Ok(0) => Read::Closed,
            Ok(_) => Read::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::WouldBlock,
            Err(_) => Read::Closed,
        }
    }

    /// Queues a frame and writes what the socket takes now. A peer that
    /// has left bytes unread for [`WRITE_TIMEOUT`], or so many that the
    /// queue would pass [`MAX_UNSENT`], stopped reading: an error, which
    /// ends the session.
    pub(crate) fn send(&mut self, registry: &Registry, frame: &[u8]) -> io::Result<()> {
        let stalled = self
            .stalled_since
            .is_some_and(|t| t.elapsed() >= WRITE_TIMEOUT);
        if stalled || self.out.len() - self.sent + frame.len() > MAX_UNSENT {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading its control socket",
            ));
        }
        self.out.extend_from_slice(frame);
        self.flush(registry)
    }

    /// Writes what is queued; asks for a writable event if some is left.
    pub(crate) fn flush(&mut self, registry: &Registry) -> io::Result<()> {
        while self.sent < self.out.len() {
            match send_some(self.stream.as_fd(), &self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            self.stalled_since = None;
        } else if self.stalled_since.is_none() {
            self.stalled_since = Some(std::time::Instant::now());
        }
        let want = !self.out.is_empty();
        if want != self.wants_write {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            registry.reregister(&mut self.stream, self.token, interest)?;
            self.wants_write = want;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_stops_reading_ends_the_session_instead_of_growing_a_buffer() {
        let poll = mio::Poll::new().unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut conn = Conn::register(ours, poll.registry(), Token(0)).unwrap();
        // Heartbeat-sized frames to a peer that never reads: the socket
        // buffer fills, then the queue, and then a send fails.
        let frame = [0u8; 14];
        let mut queued = 0usize;
        let failed = (0..1_000_000).find(|_| {
            let r = conn.send(poll.registry(), &frame);
            queued += frame.len();
            r.is_err()
        });
        assert!(
            failed.is_some(),
            "{queued} bytes queued to a peer that reads nothing"
        );
        assert!(conn.out.len() - conn.sent <= MAX_UNSENT);
    }
}
