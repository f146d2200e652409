//! What tokio gives the driver's futures
//! ([`handoff_driver::reactor::Reactor`]): an `AsyncFd` per watched
//! descriptor and a `Sleep`.
//!
//! tokio's readiness is edge-triggered and cached: once an `AsyncFd` says
//! "readable" it goes on saying so until told otherwise. Each poll here
//! clears what was cached and polls again, which registers the waker for
//! the next edge; the driver's futures then ask the kernel what is ready,
//! so nothing cached goes stale and nothing that came meanwhile is lost.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use handoff_driver::reactor::Reactor;
use tokio::io::unix::AsyncFd;
use tokio::time::Sleep;

/// The [`Reactor`] of this adapter: tokio's I/O driver and timer. The
/// futures that use it must be polled on a tokio runtime with I/O and
/// time enabled (as `#[tokio::main]` and `Builder::enable_all` give),
/// current-thread or multi-thread.
#[derive(Debug, Default)]
pub struct TokioReactor {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The deadline `sleep` is set to, until it fires.
    armed: Option<Instant>,
}

/// The error for a future polled outside a tokio runtime, where tokio
/// would panic.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::other(
        "handoff-tokio: no tokio runtime here; poll its futures on a tokio runtime \
         with I/O and time enabled (#[tokio::main], or Builder::enable_all)",
    )
}

impl Reactor for TokioReactor {
    type Registration = AsyncFd<OwnedFd>;

    fn register(&mut self, fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
        // Registering panics outside a runtime; this is an error the
        // driver turns into a closed connection and a told machine.
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        handoff_os::tokio_fd::register(fd)
    }

    fn poll_event(&mut self, r: &AsyncFd<OwnedFd>, cx: &mut Context<'_>, write: bool) -> Poll<()> {
        let polled = if write {
            r.poll_write_ready(cx)
        } else {
            r.poll_read_ready(cx)
        };
        match polled {
            Poll::Ready(Ok(mut guard)) => {
                guard.clear_ready();
                Poll::Ready(())
            }
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }

    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> bool {
        let Some(d) = deadline else {
            self.armed = None;
            return false;
        };
        let when = tokio::time::Instant::from_std(d);
        match self.sleep.as_mut() {
            // Set to this deadline already: left as it is.
            Some(_) if self.armed == Some(d) => {}
            Some(s) => s.as_mut().reset(when),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(when))),
        }
        self.armed = Some(d);
        let fired = self
            .sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready());
        if fired {
            self.armed = None;
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn outside_a_runtime_registering_is_an_error_not_a_panic() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let err = TokioReactor::default()
            .register(OwnedFd::from(ours))
            .unwrap_err();
        assert!(err.to_string().contains("no tokio runtime"), "{err}");
    }

    #[test]
    fn a_byte_after_the_arming_wakes_the_task() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let rt = current_thread();
        let _in_runtime = rt.enter();
        let mut r = TokioReactor::default();
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
        let woken = rt.block_on(async {
            tokio::select! {
                w = woken => w,
                _ = tokio::time::sleep(Duration::from_secs(10)) => false,
            }
        });
        assert!(woken, "the byte did not wake the task");
    }

    #[test]
    fn polling_clears_the_readiness_tokio_cached_for_bytes_already_read() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let rt = current_thread();
        let _in_runtime = rt.enter();
        let mut r = TokioReactor::default();
        // The same socket, for reading what tokio saw.
        let reader = ours.try_clone().unwrap();
        let reg = r.register(OwnedFd::from(ours)).unwrap();
        // tokio sees the byte and caches "readable"; "the driver" reads it.
        theirs.write_all(b"a").unwrap();
        rt.block_on(async {
            let mut guard = reg.readable().await.unwrap();
            // Kept, as a caller that knows nothing of it would.
            guard.retain_ready();
        });
        (&reader).read_exact(&mut [0u8; 1]).unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // The cached event is taken once …
        assert!(r.poll_event(&reg, &mut cx, false).is_ready());
        // … and then gone: left cached, tokio would report it on every
        // turn and the loop would spin; cleared, it waits for the next
        // edge.
        assert!(r.poll_event(&reg, &mut cx, false).is_pending());
    }

    #[test]
    fn the_deadline_fires_and_fires_again_when_set_anew() {
        let rt = current_thread();
        let mut r = TokioReactor::default();
        for _ in 0..2 {
            let d = Instant::now() + Duration::from_millis(10);
            let fired = std::future::poll_fn(|cx| {
                if r.poll_deadline(cx, Some(d)) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let bounded =
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), fired).await });
            assert!(bounded.is_ok(), "the deadline never fired");
            assert!(Instant::now() >= d);
        }
    }
}
