//! What async-io gives the driver's futures: a registration per watched
//! descriptor and a timer ([`handoff_driver::reactor::Reactor`]).
//!
//! async-io owns what it registers, while the driver keeps the real
//! socket; so each registration is on a duplicate of the descriptor (the
//! same open socket, so the same readiness). [`Reactor::remove`] drops the
//! duplicate, and the driver removes a source before it closes its socket,
//! so a duplicate never keeps a socket open past the driver's close: the
//! peer sees EOF when the driver hangs up.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::Context;
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::Future;
use handoff_driver::Source;
use handoff_driver::reactor::{Reactor, Registrations, Watch, take_readiness};

/// The [`Reactor`] of this adapter: async-io's readiness and timers. It
/// works under any executor, as async-io runs its own reactor thread.
#[derive(Debug)]
pub struct SmolReactor {
    handles: Registrations<Async<OwnedFd>>,
    timer: Timer,
    /// The deadline `timer` is set to.
    armed: Option<Instant>,
}

impl Default for SmolReactor {
    fn default() -> Self {
        SmolReactor {
            handles: Registrations::default(),
            timer: Timer::never(),
            armed: None,
        }
    }
}

impl Reactor for SmolReactor {
    fn add(&mut self, source: Source, fd: BorrowedFd<'_>) -> io::Result<()> {
        // `Async::new` also makes the descriptor non-blocking, which the
        // driver has already done (the flag is the open socket's, shared
        // with the duplicate).
        let handle = Async::new(fd.try_clone_to_owned()?)?;
        self.handles.insert(source, handle);
        Ok(())
    }

    fn remove(&mut self, source: Source) {
        // Dropping the duplicate deregisters and closes it.
        self.handles.remove(source);
    }

    fn arm(&mut self, cx: &mut Context<'_>, watches: &[Watch], deadline: Option<Instant>) -> bool {
        for w in watches {
            let Some(h) = self.handles.get(w.source) else {
                continue;
            };
            // async-io reports each event once, then registers the waker
            // on `Pending`; an error is left to the kernel check and the
            // driver's own read.
            take_readiness(cx, |cx| h.poll_readable(cx).map(drop));
            if w.write {
                take_readiness(cx, |cx| h.poll_writable(cx).map(drop));
            }
        }
        match deadline {
            Some(d) => {
                if self.armed != Some(d) {
                    self.timer.set_at(d);
                    self.armed = Some(d);
                }
                let fired = Pin::new(&mut self.timer).poll(cx).is_ready();
                if fired {
                    // A fired timer stays quiet until set again.
                    self.armed = None;
                }
                fired
            }
            None => {
                if self.armed.take().is_some() {
                    self.timer = Timer::never();
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn removing_closes_the_duplicate_so_the_peer_sees_eof() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut r = SmolReactor::default();
        r.add(Source::Control, ours.as_fd()).unwrap();
        r.remove(Source::Control);
        drop(ours);
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(theirs.read(&mut [0u8; 1]).unwrap(), 0, "EOF");
    }

    #[test]
    fn bytes_that_come_after_the_arming_wake_the_task() {
        // The wake-up itself, not the kernel check: a task armed on an
        // empty socket is woken when a byte arrives after it was armed.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut r = SmolReactor::default();
        r.add(Source::Control, ours.as_fd()).unwrap();
        let watches = [Watch {
            source: Source::Control,
            fd: std::os::fd::AsRawFd::as_raw_fd(&ours),
            write: false,
        }];
        let mut polls = 0;
        let woken = std::future::poll_fn(|cx| {
            polls += 1;
            if polls > 1 {
                return Poll::Ready(true);
            }
            r.arm(cx, &watches, None);
            theirs.write_all(b"x").unwrap();
            Poll::Pending
        });
        let gave_up = async {
            Timer::after(Duration::from_secs(10)).await;
            false
        };
        assert!(
            async_io::block_on(futures_lite::future::or(woken, gave_up)),
            "the byte did not wake the task"
        );
    }

    #[test]
    fn the_deadline_fires_once_and_again_when_set_anew() {
        let mut r = SmolReactor::default();
        let d = Instant::now() + Duration::from_millis(10);
        async_io::block_on(std::future::poll_fn(|cx| {
            if r.arm(cx, &[], Some(d)) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        assert!(Instant::now() >= d);
    }
}
