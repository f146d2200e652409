//! What tokio gives the driver's futures: an `AsyncFd` per watched
//! descriptor and a `Sleep` ([`handoff_driver::reactor::Reactor`]).
//!
//! tokio's readiness is edge-triggered and cached: once an `AsyncFd` says
//! "readable" it goes on saying so until told otherwise. [`Reactor::arm`]
//! clears what is cached and polls again, which registers the waker for
//! the next edge; the driver's futures then ask the kernel what is ready,
//! so nothing cached goes stale and nothing that came meanwhile is lost.
//!
//! `AsyncFd` owns what it registers while the driver keeps the real
//! socket, so each registration is on a duplicate of the descriptor (the
//! same open socket). [`Reactor::remove`] drops the duplicate before the
//! driver closes its socket, so the peer sees the close.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use handoff_driver::Source;
use handoff_driver::reactor::{Reactor, Registrations, Watch, take_readiness};
use tokio::io::unix::AsyncFd;
use tokio::time::Sleep;

/// The [`Reactor`] of this adapter: tokio's I/O driver and timer. The
/// futures that use it must be polled on a tokio runtime with I/O and
/// time enabled (as `#[tokio::main]` and `Builder::enable_all` give),
/// current-thread or multi-thread.
#[derive(Debug, Default)]
pub struct TokioReactor {
    handles: Registrations<AsyncFd<OwnedFd>>,
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

/// One poll of a direction's readiness that clears what tokio had cached
/// (the kernel is asked right after), for [`take_readiness`]. An error
/// means the descriptor is unusable: the kernel check reports it and the
/// driver's own read finds it.
fn clear<T>(polled: Poll<io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, T>>>) -> Poll<()>
where
    T: std::os::fd::AsRawFd,
{
    match polled {
        Poll::Ready(Ok(mut guard)) => {
            guard.clear_ready();
            Poll::Ready(())
        }
        Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
    }
}

impl Reactor for TokioReactor {
    fn add(&mut self, source: Source, fd: BorrowedFd<'_>) -> io::Result<()> {
        // `AsyncFd::new` panics outside a runtime; this is an error the
        // driver turns into a closed connection and a told machine.
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        // The driver made the socket non-blocking, as `AsyncFd` requires
        // (the flag is the open socket's, shared with the duplicate).
        let handle = handoff_os::tokio_fd::register(fd.try_clone_to_owned()?)?;
        self.handles.insert(source, handle);
        Ok(())
    }

    fn remove(&mut self, source: Source) {
        // Dropping the `AsyncFd` deregisters and closes the duplicate.
        self.handles.remove(source);
    }

    fn arm(&mut self, cx: &mut Context<'_>, watches: &[Watch], deadline: Option<Instant>) -> bool {
        for w in watches {
            let Some(h) = self.handles.get(w.source) else {
                continue;
            };
            take_readiness(cx, |cx| clear(h.poll_read_ready(cx)));
            if w.write {
                take_readiness(cx, |cx| clear(h.poll_write_ready(cx)));
            }
        }
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
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn removing_closes_the_duplicate_so_the_peer_sees_eof() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let rt = current_thread();
        let _in_runtime = rt.enter();
        let mut r = TokioReactor::default();
        r.add(Source::Control, ours.as_fd()).unwrap();
        r.remove(Source::Control);
        drop(ours);
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(theirs.read(&mut [0u8; 1]).unwrap(), 0, "EOF");
    }

    #[test]
    fn outside_a_runtime_adding_is_an_error_not_a_panic() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let err = TokioReactor::default()
            .add(Source::Control, ours.as_fd())
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
        r.add(Source::Control, ours.as_fd()).unwrap();
        let watches = [Watch {
            source: Source::Control,
            fd: ours.as_raw_fd(),
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
        let woken = rt.block_on(async {
            tokio::select! {
                w = woken => w,
                _ = tokio::time::sleep(Duration::from_secs(10)) => false,
            }
        });
        assert!(woken, "the byte did not wake the task");
    }

    #[test]
    fn arming_clears_the_readiness_tokio_cached_for_bytes_already_read() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let rt = current_thread();
        let _in_runtime = rt.enter();
        let mut r = TokioReactor::default();
        r.add(Source::Control, ours.as_fd()).unwrap();
        // tokio sees the byte and caches "readable"; "the driver" reads it.
        theirs.write_all(b"a").unwrap();
        rt.block_on(async {
            let mut guard = r
                .handles
                .get(Source::Control)
                .unwrap()
                .readable()
                .await
                .unwrap();
            // Kept, as a caller that knows nothing of it would.
            guard.retain_ready();
        });
        (&ours).read_exact(&mut [0u8; 1]).unwrap();
        let watches = [Watch {
            source: Source::Control,
            fd: ours.as_raw_fd(),
            write: false,
        }];
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        r.arm(&mut cx, &watches, None);
        // Left cached, tokio would report it ready on every turn and the
        // loop would spin; cleared, it waits for the next edge.
        assert!(
            r.handles
                .get(Source::Control)
                .unwrap()
                .poll_read_ready(&mut cx)
                .is_pending()
        );
    }

    #[test]
    fn the_deadline_fires_and_fires_again_when_set_anew() {
        let rt = current_thread();
        let mut r = TokioReactor::default();
        for _ in 0..2 {
            let d = Instant::now() + Duration::from_millis(10);
            rt.block_on(std::future::poll_fn(|cx| {
                if r.arm(cx, &[], Some(d)) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            assert!(Instant::now() >= d);
        }
    }
}
