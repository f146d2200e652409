//! What the smol adapter does for a driver: keep, for each [`Source`] the
//! driver asked it to watch, an async-io handle on the descriptor, and wait
//! until one of them is ready, the driver's next deadline passes, or (for
//! the incumbent) the running hook ends.
//!
//! async-io needs to own what it registers, while the driver keeps the real
//! socket; so each handle is on a duplicate of the descriptor (the same
//! open socket, so the same readiness). [`Io::unwatch`] drops the
//! duplicate, and the driver unwatches before it closes its socket, so a
//! duplicate never keeps a socket open past the driver's close: the peer
//! sees EOF when the driver hangs up.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::Poll;

use async_io::{Async, Timer};
use futures_lite::future;
use handoff_driver::{Io, Source};

/// One watched descriptor.
struct Watch {
    source: Source,
    /// The driver's descriptor number, to tell a new descriptor for the
    /// same source from a change of the write flag on the old one.
    raw: RawFd,
    /// Our duplicate, registered with async-io.
    handle: Async<OwnedFd>,
    /// Whether writability is watched too.
    write: bool,
}

/// The descriptors a driver watches, by source.
#[derive(Default)]
pub(crate) struct Watched {
    watches: Vec<Watch>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.watches.iter().map(|w| (w.source, w.write)))
            .finish()
    }
}

impl Io for Watched {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        if let Some(w) = self.watches.iter_mut().find(|w| w.source == source)
            && w.raw == raw
        {
            // Only the write flag changed: the registration stays.
            w.write = write;
            return Ok(());
        }
        // Another descriptor for this source: the old duplicate goes first.
        self.watches.retain(|w| w.source != source);
        // `Async::new` also makes the descriptor non-blocking, which the
        // driver wants anyway (the flag is the open socket's, shared with
        // the duplicate).
        let handle = Async::new(fd.try_clone_to_owned()?)?;
        self.watches.push(Watch {
            source,
            raw,
            handle,
            write,
        });
        Ok(())
    }

    fn unwatch(&mut self, source: Source, _fd: BorrowedFd<'_>) {
        // Dropping the duplicate deregisters and closes it.
        self.watches.retain(|w| w.source != source);
    }
}

/// A source found ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    /// Which.
    pub(crate) source: Source,
    /// Readable (or hung up, or failed).
    pub(crate) readable: bool,
    /// Has room to write (only for sources watched for writing).
    pub(crate) writable: bool,
}

/// What one [`Watched::wait`] found.
#[derive(Debug)]
pub(crate) struct Woken<T> {
    /// The sources ready, in the order they are watched.
    pub(crate) ready: Vec<Ready>,
    /// The extra future's output, if it completed (it must not be polled
    /// again).
    pub(crate) extra: Option<T>,
}

/// What one of the futures a wait races ended with.
enum Event {
    Readable(Source),
    Writable(Source),
    Deadline,
}

/// A wait with no extra future, for the roles that run no hook.
pub(crate) type NoExtra = future::Pending<()>;

impl Watched {
    /// Whether `source` is watched now: readiness found for a source the
    /// driver has since stopped watching is not passed on.
    pub(crate) fn is_watching(&self, source: Source) -> bool {
        self.watches.iter().any(|w| w.source == source)
    }

    /// Waits until a watched source is ready, `deadline` passes (never if
    /// `None`), or `extra` completes; returns everything found ready at
    /// that moment, so that no source waits behind another that is always
    /// ready. Cancel-safe: nothing is consumed until it returns.
    pub(crate) async fn wait<T, F>(
        &self,
        deadline: Option<std::time::Instant>,
        mut extra: Option<&mut F>,
    ) -> Woken<T>
    where
        F: Future<Output = T> + Unpin,
    {
        let mut racing: Vec<Pin<Box<dyn Future<Output = Event> + Send + '_>>> = Vec::new();
        for w in &self.watches {
            let source = w.source;
            // An error means the descriptor is unusable: passed on as
            // readiness, so the driver's own read or write finds the error
            // and ends what the descriptor was for.
            racing.push(Box::pin(async move {
                let _ = w.handle.readable().await;
                Event::Readable(source)
            }));
            if w.write {
                racing.push(Box::pin(async move {
                    let _ = w.handle.writable().await;
                    Event::Writable(source)
                }));
            }
        }
        let timer = match deadline {
            Some(t) => Timer::at(t),
            None => Timer::never(),
        };
        racing.push(Box::pin(async move {
            timer.await;
            Event::Deadline
        }));
        future::poll_fn(|cx| {
            let mut woken = Woken {
                ready: Vec::new(),
                extra: None,
            };
            let mut deadline_passed = false;
            for f in &mut racing {
                match f.as_mut().poll(cx) {
                    Poll::Ready(Event::Readable(source)) => {
                        mark(&mut woken.ready, source).readable = true
                    }
                    Poll::Ready(Event::Writable(source)) => {
                        mark(&mut woken.ready, source).writable = true
                    }
                    Poll::Ready(Event::Deadline) => deadline_passed = true,
                    Poll::Pending => {}
                }
            }
            if let Some(f) = extra.as_mut()
                && let Poll::Ready(v) = Pin::new(&mut **f).poll(cx)
            {
                woken.extra = Some(v);
            }
            // Every future that completed is reported now and dropped with
            // the others when this returns: none is polled after it
            // completed.
            if deadline_passed || !woken.ready.is_empty() || woken.extra.is_some() {
                Poll::Ready(woken)
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The entry for `source` in `ready`, added if missing.
fn mark(ready: &mut Vec<Ready>, source: Source) -> &mut Ready {
    let i = match ready.iter().position(|r| r.source == source) {
        Some(i) => i,
        None => {
            ready.push(Ready {
                source,
                readable: false,
                writable: false,
            });
            ready.len() - 1
        }
    };
    &mut ready[i]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    #[test]
    fn unwatching_closes_the_duplicate_so_the_peer_sees_eof() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut w = Watched::default();
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        w.unwatch(Source::Control, ours.as_fd());
        drop(ours);
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(theirs.read(&mut [0u8; 1]).unwrap(), 0, "EOF");
    }

    #[test]
    fn a_readable_source_and_the_deadline_end_the_wait() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut w = Watched::default();
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        // Nothing to read: only the deadline ends the wait.
        let t0 = Instant::now();
        let woken =
            async_io::block_on(w.wait::<(), NoExtra>(Some(t0 + Duration::from_millis(50)), None));
        assert!(woken.ready.is_empty());
        assert!(t0.elapsed() >= Duration::from_millis(50));
        // Bytes waiting: the wait ends at once, and says so.
        theirs.write_all(b"x").unwrap();
        let woken = async_io::block_on(w.wait::<(), NoExtra>(None, None));
        assert_eq!(
            woken.ready,
            [Ready {
                source: Source::Control,
                readable: true,
                writable: false
            }]
        );
        // Still unread: a new wait finds it again (readiness is a level,
        // not an edge, for the driver).
        let woken = async_io::block_on(w.wait::<(), NoExtra>(None, None));
        assert_eq!(woken.ready.len(), 1);
    }

    #[test]
    fn writability_is_watched_only_when_asked() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut w = Watched::default();
        w.watch(Source::Control, ours.as_fd(), true).unwrap();
        let woken = async_io::block_on(w.wait::<(), NoExtra>(None, None));
        assert!(woken.ready[0].writable);
        // The same descriptor again: only the flag changes.
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        let woken = async_io::block_on(
            w.wait::<(), NoExtra>(Some(Instant::now() + Duration::from_millis(20)), None),
        );
        assert!(woken.ready.is_empty());
    }

    #[test]
    fn the_extra_future_ends_the_wait_with_its_output() {
        let w = Watched::default();
        let mut extra = Box::pin(async { 7 });
        let woken = async_io::block_on(w.wait(None, Some(&mut extra)));
        assert_eq!(woken.extra, Some(7));
    }
}
