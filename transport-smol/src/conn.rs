//! One control connection on async-io: reads into an [`Inbox`] the machine
//! takes frames from; writes whole frames with `MSG_NOSIGNAL`, awaiting
//! writability instead of blocking.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;

use async_io::Async;
use handoff_std::conn::{Inbox, WRITE_TIMEOUT};
use handoff_std::os::control::send_some;

pub(crate) struct AsyncConn {
    pub(crate) stream: Async<UnixStream>,
    pub(crate) inbox: Inbox,
}

/// What a read found.
pub(crate) enum Read {
    Data,
    WouldBlock,
    Closed,
}

impl AsyncConn {
    pub(crate) fn new(stream: UnixStream) -> io::Result<AsyncConn> {
        Ok(AsyncConn::from_async(Async::new(stream)?))
    }

    pub(crate) fn from_async(stream: Async<UnixStream>) -> AsyncConn {
        AsyncConn {
            stream,
            inbox: Inbox::new(),
        }
    }

    /// Writes all of `frame`, within [`WRITE_TIMEOUT`]: a peer that stopped
    /// reading must not hold the machine's deadlines off for as long as it
    /// likes. A timeout is an error, which ends the session.
    pub(crate) async fn send(&self, frame: &[u8]) -> io::Result<()> {
        let write = async {
            let mut sent = 0;
            while sent < frame.len() {
                sent += self
                    .stream
                    .write_with(|s| send_some(s.as_fd(), &frame[sent..]))
                    .await?;
            }
            Ok::<(), io::Error>(())
        };
        let stall = async {
            async_io::Timer::after(WRITE_TIMEOUT).await;
            Err::<(), _>(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading its control socket",
            ))
        };
        futures_lite::future::or(write, stall).await
    }

    /// One non-blocking read into the (empty) inbox.
    pub(crate) fn read(&mut self) -> Read {
        let mut stream = self.stream.get_ref();
        match self.inbox.fill(&mut stream) {
            Ok(0) => Read::Closed,
            Ok(_) => Read::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Read::WouldBlock,
            Err(_) => Read::Closed,
        }
    }
}

/// Resolves when `conn` is readable, never if there is none.
pub(crate) async fn readable(conn: Option<&AsyncConn>) {
    match conn {
        Some(c) => {
            let _ = c.stream.readable().await;
        }
        None => futures_lite::future::pending().await,
    }
}

/// Resolves at `deadline`, never if there is none.
pub(crate) async fn timer(deadline: Option<handoff_core::Instant>) {
    match deadline {
        Some(t) => {
            async_io::Timer::at(handoff_std::clock::to_std(t)).await;
        }
        None => futures_lite::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_stops_reading_cannot_hold_a_send_beyond_the_write_timeout() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let conn = AsyncConn::new(ours).unwrap();
        let started = std::time::Instant::now();
        let outcome = async_io::block_on(futures_lite::future::or(
            async {
                // Sends until one fails: the socket buffer fills, and the
                // send after that waits for room that never comes.
                loop {
                    if let Err(e) = conn.send(&[0u8; 1024]).await {
                        return Some(e);
                    }
                }
            },
            async {
                async_io::Timer::after(WRITE_TIMEOUT * 4).await;
                None
            },
        ));
        let e = outcome.expect("the send waited on past four write timeouts");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= WRITE_TIMEOUT);
    }
}
