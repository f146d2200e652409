//! What async-io gives the driver's futures
//! ([`handoff_driver::reactor::Reactor`]): an `Async` registration per
//! watched descriptor and a `Timer`.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_io::{Async, Timer};
use futures_lite::Future;
use handoff_driver::reactor::Reactor;

/// The [`Reactor`] of this adapter: async-io's readiness and timers. It
/// works under any executor, as async-io runs its own reactor thread.
#[derive(Debug)]
pub struct SmolReactor {
    timer: Timer,
    /// The deadline `timer` is set to, until it fires.
    armed: Option<Instant>,
}

impl Default for SmolReactor {
    fn default() -> Self {
        SmolReactor {
            timer: Timer::never(),
            armed: None,
        }
    }
}

impl Reactor for SmolReactor {
    type Registration = Async<OwnedFd>;

    fn register(&mut self, fd: OwnedFd) -> io::Result<Async<OwnedFd>> {
        Async::new(fd)
    }

    fn poll_event(&mut self, r: &Async<OwnedFd>, cx: &mut Context<'_>, write: bool) -> Poll<()> {
        // async-io reports each event once, then registers the waker on
        // `Pending`.
        let polled = if write {
            r.poll_writable(cx)
        } else {
            r.poll_readable(cx)
        };
        match polled {
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> bool {
        let Some(d) = deadline else {
            if self.armed.take().is_some() {
                self.timer = Timer::never();
            }
            return false;
        };
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    #[test]
    fn bytes_that_come_after_the_arming_wake_the_task() {
        // The wake-up itself, not the kernel check: a task armed on an
        // empty socket is woken when a byte arrives after it was armed.
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut r = SmolReactor::default();
        let reg = r.register(OwnedFd::from(ours)).unwrap();
        let mut polls = 0;
        let woken = std::future::poll_fn(|cx| {
            polls += 1;
            if polls > 1 {
                return Poll::Ready(true);
            }
            while r.poll_event(&reg, cx, false).is_ready() {}
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
    fn the_deadline_fires_and_fires_again_when_set_anew() {
        let mut r = SmolReactor::default();
        for _ in 0..2 {
            let d = Instant::now() + Duration::from_millis(10);
            let fired = std::future::poll_fn(|cx| {
                if r.poll_deadline(cx, Some(d)) {
                    Poll::Ready(true)
                } else {
                    Poll::Pending
                }
            });
            let gave_up = async {
                Timer::after(Duration::from_secs(10)).await;
                false
            };
            assert!(
                async_io::block_on(futures_lite::future::or(fired, gave_up)),
                "the deadline never fired"
            );
            assert!(Instant::now() >= d);
        }
    }
}
