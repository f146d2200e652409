//! The three roles as futures, for every async runtime: the loops that
//! wait on what a driver watches and pass it on, written once over a
//! [`Reactor`], the little an async runtime must provide (register a
//! descriptor, arm a waker for it and for a deadline).
//!
//! An async adapter (`handoff-smol`, `handoff-tokio`) implements
//! [`Reactor`] on its runtime's readiness and timer types, and
//! [`crate::async_adapter`] gives it its public face: [`perform_handoff`],
//! [`serve`] and [`handshake`] with its reactor filled in, and the types a
//! daemon needs. Nothing else in it runs the protocol.
//!
//! Readiness is taken as a hint. After arming its wakers the loop asks the
//! kernel (one `poll(2)` with no timeout) which watched descriptors are
//! ready now, and only those are passed to the driver. So a runtime whose
//! readiness is edge-triggered and cached (tokio) and one that re-arms on
//! every poll (async-io) behave the same: bytes the driver left unread
//! (it reads at most a budget per turn) are found again on the next turn,
//! and an event that came between the arming and the check is not lost,
//! because the arming came first.

mod entry;
mod incumbent;
mod successor;
mod supervisor;

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use handoff_os::process::poll_ready;

use crate::hooks::Hook;
use crate::incumbent::IncumbentIo;
use crate::link::{Io, Source};

pub use incumbent::{AsyncDrainable, serve, serve_with};
pub use successor::{BegunSuccessor, HandshookSuccessor, handshake};
pub use supervisor::perform_handoff;

/// A descriptor a driver watches, as the loop passes it to
/// [`Reactor::arm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    /// What the descriptor is for.
    pub source: Source,
    /// The driver's descriptor (owned by the driver; valid until the
    /// source is removed).
    pub fd: RawFd,
    /// Whether the driver waits for room to write, as well as for bytes.
    pub write: bool,
}

/// What an async runtime gives the futures of this module.
///
/// The loop keeps the table of what is watched; the reactor keeps, per
/// [`Source`], whatever its runtime needs to be woken by that descriptor
/// (a registration, a duplicate it owns), and a timer.
pub trait Reactor {
    /// Registers `fd` for `source`, replacing what was registered for it.
    /// An error fails what the descriptor was for (the driver closes it
    /// and tells its machine), so a runtime that cannot take it is an
    /// error here, never a panic.
    fn add(&mut self, source: Source, fd: BorrowedFd<'_>) -> io::Result<()>;

    /// Forgets `source`. Its descriptor is closed right after, so nothing
    /// of it may be kept open (the peer must see the close).
    fn remove(&mut self, source: Source);

    /// Arranges for `cx` to be woken when any of `watches` may have become
    /// readable (or writable, for those with `write` set), or when
    /// `deadline` passes. Readiness the runtime has cached is to be
    /// cleared here (the loop asks the kernel right after). Returns whether
    /// the runtime's timer says `deadline` has passed.
    fn arm(&mut self, cx: &mut Context<'_>, watches: &[Watch], deadline: Option<Instant>) -> bool;
}

/// For [`Reactor::arm`]: takes the readiness a runtime reports for one
/// direction of one descriptor until it says `Pending`, which leaves the
/// task's waker registered for the next event. `poll_take` polls once and
/// consumes what it found (`Ready`), or registers the waker (`Pending`).
/// A descriptor that keeps reporting is left to the next turn, with the
/// task woken to come back, so this never loops for long.
pub fn take_readiness(
    cx: &mut Context<'_>,
    mut poll_take: impl FnMut(&mut Context<'_>) -> Poll<()>,
) {
    for _ in 0..4 {
        if poll_take(cx).is_pending() {
            return;
        }
    }
    cx.waker().wake_by_ref();
}

/// A reactor's registrations, one per [`Source`]: what `add` replaces,
/// `remove` drops (closing whatever the registration owns) and `arm`
/// looks up.
#[derive(Debug)]
pub struct Registrations<H> {
    entries: Vec<(Source, H)>,
}

impl<H> Default for Registrations<H> {
    fn default() -> Self {
        Registrations {
            entries: Vec::new(),
        }
    }
}

impl<H> Registrations<H> {
    /// Keeps `handle` for `source`, dropping the one it had.
    pub fn insert(&mut self, source: Source, handle: H) {
        self.remove(source);
        self.entries.push((source, handle));
    }

    /// Drops the registration of `source`.
    pub fn remove(&mut self, source: Source) {
        self.entries.retain(|(s, _)| *s != source);
    }

    /// The registration of `source`.
    pub fn get(&self, source: Source) -> Option<&H> {
        self.entries
            .iter()
            .find(|(s, _)| *s == source)
            .map(|(_, h)| h)
    }
}

/// A source found ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    pub(crate) source: Source,
    /// Readable, hung up, or failed.
    pub(crate) readable: bool,
    /// Has room to write (only for sources watched for writing).
    pub(crate) writable: bool,
}

/// What one wait found.
pub(crate) struct Woken<T> {
    /// The sources ready, in the order they are watched.
    pub(crate) ready: Vec<Ready>,
    /// The extra future's output, if it completed (it is not polled
    /// again).
    pub(crate) extra: Option<T>,
}

/// The [`Io`] the drivers are given: the table of what they watch, over a
/// runtime's [`Reactor`]; and, for the incumbent, the hook it asked for.
#[derive(Debug)]
pub struct Watching<R> {
    reactor: R,
    watches: Vec<Watch>,
    requested: Option<Hook>,
}

impl<R: Reactor> Watching<R> {
    pub(crate) fn new(reactor: R) -> Self {
        Watching {
            reactor,
            watches: Vec::new(),
            requested: None,
        }
    }

    /// Whether `source` is watched now: readiness found for a source the
    /// driver stopped watching meanwhile is not passed on.
    pub(crate) fn is_watching(&self, source: Source) -> bool {
        self.watches.iter().any(|w| w.source == source)
    }

    /// The hook the incumbent driver asked for, once.
    pub(crate) fn take_hook(&mut self) -> Option<Hook> {
        self.requested.take()
    }

    /// Waits until a watched source is ready, `deadline` passes (never if
    /// `None`), or `extra` completes; returns everything ready at that
    /// moment, so no source waits behind another that is always ready.
    /// Cancel-safe: nothing is consumed until it returns.
    pub(crate) async fn wait<T, F>(
        &mut self,
        deadline: Option<Instant>,
        mut extra: Option<&mut F>,
    ) -> Woken<T>
    where
        F: Future<Output = T> + Unpin,
    {
        std::future::poll_fn(|cx| {
            let mut extra_done = None;
            if let Some(f) = extra.as_mut()
                && let Poll::Ready(v) = Pin::new(&mut **f).poll(cx)
            {
                extra_done = Some(v);
            }
            let fired = self.reactor.arm(cx, &self.watches, deadline);
            let ready = self.ready_now();
            let passed = fired || deadline.is_some_and(|d| Instant::now() >= d);
            if passed || !ready.is_empty() || extra_done.is_some() {
                Poll::Ready(Woken {
                    ready,
                    extra: extra_done,
                })
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// What the kernel says is ready now, without waiting.
    fn ready_now(&self) -> Vec<Ready> {
        if self.watches.is_empty() {
            return Vec::new();
        }
        let fds: Vec<(RawFd, bool)> = self.watches.iter().map(|w| (w.fd, w.write)).collect();
        // poll(2) fails only for want of memory or a table past the
        // descriptor limit; the runtime's own wake-ups still come then, and
        // the next turn asks again.
        let Ok(found) = poll_ready(&fds, Some(std::time::Duration::ZERO)) else {
            return Vec::new();
        };
        self.watches
            .iter()
            .zip(found)
            .filter_map(|(w, r)| {
                let writable = w.write && r.writable;
                (r.readable || writable).then_some(Ready {
                    source: w.source,
                    readable: r.readable,
                    writable,
                })
            })
            .collect()
    }
}

impl<R: Reactor> Io for Watching<R> {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        if let Some(w) = self.watches.iter_mut().find(|w| w.source == source)
            && w.fd == raw
        {
            // Only the write flag changed: the registration stays.
            w.write = write;
            return Ok(());
        }
        self.watches.retain(|w| w.source != source);
        self.reactor.add(source, fd)?;
        self.watches.push(Watch {
            source,
            fd: raw,
            write,
        });
        Ok(())
    }

    fn unwatch(&mut self, source: Source, _fd: BorrowedFd<'_>) {
        self.watches.retain(|w| w.source != source);
        self.reactor.remove(source);
    }
}

impl<R: Reactor> IncumbentIo for Watching<R> {
    fn run_hook(&mut self, hook: Hook) {
        // The driver never asks for a second hook before the first is done.
        debug_assert!(self.requested.is_none(), "two hooks at once");
        self.requested = Some(hook);
    }
}

/// The calls every driver answers to, so one function passes readiness
/// and time on for all three.
pub(crate) trait Driven<I> {
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_readable(&mut self, io: &mut I, source: Source);
    fn handle_writable(&mut self, io: &mut I, source: Source);
    fn handle_timeout(&mut self, io: &mut I);
}

/// Passes what `ready` holds to `driver` (writes first, so a queued frame
/// goes out before the read that may end the session), then lets it look
/// at its deadlines, as after every wake-up.
pub(crate) fn dispatch<R, D>(driver: &mut D, io: &mut Watching<R>, ready: &[Ready])
where
    R: Reactor,
    D: Driven<Watching<R>>,
{
    for r in ready {
        if !io.is_watching(r.source) {
            continue;
        }
        if r.writable {
            driver.handle_writable(io, r.source);
        }
        if r.readable {
            driver.handle_readable(io, r.source);
        }
    }
    driver.handle_timeout(io);
}

/// One turn of a role that runs no hook: wait, then pass it all on.
pub(crate) async fn turn<R, D>(driver: &mut D, io: &mut Watching<R>)
where
    R: Reactor,
    D: Driven<Watching<R>>,
{
    let woken = io
        .wait::<(), std::future::Pending<()>>(driver.poll_timeout(), None)
        .await;
    dispatch(driver, io, &woken.ready);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    /// A reactor that never wakes anyone: only the kernel check and the
    /// clock end a wait, which is what these tests look at.
    #[derive(Default)]
    struct Inert {
        added: Vec<Source>,
    }

    impl Reactor for Inert {
        fn add(&mut self, source: Source, _: BorrowedFd<'_>) -> io::Result<()> {
            self.added.push(source);
            Ok(())
        }
        fn remove(&mut self, source: Source) {
            self.added.retain(|s| *s != source);
        }
        fn arm(&mut self, _: &mut Context<'_>, _: &[Watch], _: Option<Instant>) -> bool {
            false
        }
    }

    fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
        let mut f = std::pin::pin!(f);
        f.as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[test]
    fn bytes_left_unread_are_found_again_even_if_the_runtime_said_nothing() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut w = Watching::new(Inert::default());
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        assert!(poll_once(w.wait::<(), std::future::Pending<()>>(None, None)).is_pending());
        theirs.write_all(b"x").unwrap();
        for _ in 0..2 {
            // Level, not edge: unread, it is reported on every turn.
            let Poll::Ready(woken) = poll_once(w.wait::<(), std::future::Pending<()>>(None, None))
            else {
                panic!("readable bytes not found")
            };
            assert_eq!(woken.ready.len(), 1);
            assert!(woken.ready[0].readable && !woken.ready[0].writable);
        }
    }

    #[test]
    fn writability_is_reported_only_when_watched_and_a_new_fd_re_registers() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let mut w = Watching::new(Inert::default());
        w.watch(Source::Control, ours.as_fd(), true).unwrap();
        let Poll::Ready(woken) = poll_once(w.wait::<(), std::future::Pending<()>>(None, None))
        else {
            panic!("a fresh socket has room")
        };
        assert!(woken.ready[0].writable);
        // Same descriptor, flag off: nothing to report, nothing re-added.
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        assert!(poll_once(w.wait::<(), std::future::Pending<()>>(None, None)).is_pending());
        assert_eq!(w.reactor.added, [Source::Control]);
        let (other, _o) = UnixStream::pair().unwrap();
        w.watch(Source::Control, other.as_fd(), false).unwrap();
        assert_eq!(w.reactor.added, [Source::Control, Source::Control]);
        w.unwatch(Source::Control, other.as_fd());
        assert!(w.reactor.added.is_empty() && !w.is_watching(Source::Control));
    }

    #[test]
    fn a_passed_deadline_and_a_finished_extra_end_the_wait() {
        let mut w = Watching::new(Inert::default());
        let past = Instant::now() - Duration::from_millis(1);
        assert!(poll_once(w.wait::<(), std::future::Pending<()>>(Some(past), None)).is_ready());
        let later = Instant::now() + Duration::from_secs(60);
        assert!(poll_once(w.wait::<(), std::future::Pending<()>>(Some(later), None)).is_pending());
        let mut extra = std::future::ready(7);
        let Poll::Ready(woken) = poll_once(w.wait(Some(later), Some(&mut extra))) else {
            panic!("the extra future was ready")
        };
        assert_eq!(woken.extra, Some(7));
    }
}
