//! The three roles as futures, for every async runtime: the loops that
//! wait on what a driver watches and pass it on, written once over a
//! [`Reactor`], the little an async runtime must provide (register a
//! descriptor, poll it once for an event, poll a timer).
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
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
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

/// What an async runtime gives the futures of this module: a registration
/// of a descriptor with its reactor, one poll of a registration for one
/// direction, and a timer.
///
/// The futures keep the table of what is watched. For each watched
/// descriptor they give the runtime a duplicate (the same open socket, so
/// the same readiness) to own and register, since runtimes own what they
/// register while the driver keeps the real socket; and they drop the
/// registration, closing the duplicate, before the driver closes its own,
/// so the peer sees the close.
pub trait Reactor {
    /// The runtime's registration of one descriptor; it owns the
    /// duplicate it was made from, and dropping it deregisters and closes
    /// that.
    type Registration;

    /// Registers `fd` (already non-blocking). An error fails what the
    /// descriptor was for (the driver closes it and tells its machine), so
    /// a runtime that cannot take it is an error here, never a panic.
    fn register(&mut self, fd: OwnedFd) -> io::Result<Self::Registration>;

    /// Polls `registration` once for readability (or writability, with
    /// `write`): `Ready` if the runtime reports an event, which this call
    /// consumes (readiness the runtime had cached is cleared: the kernel
    /// is asked right after); `Pending` with `cx`'s waker registered for
    /// the next event otherwise. Errors are `Pending` too: the kernel check
    /// reports a failed descriptor, and the driver's own read finds why.
    fn poll_event(
        &mut self,
        registration: &Self::Registration,
        cx: &mut Context<'_>,
        write: bool,
    ) -> Poll<()>;

    /// Arranges for `cx` to be woken at `deadline` (never if `None`), and
    /// returns whether the runtime's timer says it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Option<Instant>) -> bool;
}

/// Takes the events the reactor reports for one direction of one
/// registration until it says `Pending`, which leaves the task's waker
/// registered for the next. One that keeps reporting is left to the next
/// turn, with the task woken to come back, so this never loops for long.
fn take_events<R: Reactor>(
    reactor: &mut R,
    registration: &R::Registration,
    cx: &mut Context<'_>,
    write: bool,
) {
    for _ in 0..4 {
        if reactor.poll_event(registration, cx, write).is_pending() {
            return;
        }
    }
    cx.waker().wake_by_ref();
}

/// One descriptor a driver watches.
struct Watch<G> {
    source: Source,
    /// The driver's descriptor (valid until it is unwatched).
    fd: RawFd,
    /// Whether the driver waits for room to write, as well as for bytes.
    write: bool,
    /// The runtime's registration of our duplicate.
    registration: G,
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
pub struct Watching<R: Reactor> {
    reactor: R,
    watches: Vec<Watch<R::Registration>>,
    requested: Option<Hook>,
}

impl<R: Reactor> std::fmt::Debug for Watching<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.watches.iter().map(|w| (w.source, w.write)))
            .finish()
    }
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
            for w in &self.watches {
                take_events(&mut self.reactor, &w.registration, cx, false);
                if w.write {
                    take_events(&mut self.reactor, &w.registration, cx, true);
                }
            }
            let fired = self.reactor.poll_deadline(cx, deadline);
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
        // Another descriptor for this source: the old registration goes
        // first.
        self.watches.retain(|w| w.source != source);
        let registration = self.reactor.register(fd.try_clone_to_owned()?)?;
        self.watches.push(Watch {
            source,
            fd: raw,
            write,
            registration,
        });
        Ok(())
    }

    fn unwatch(&mut self, source: Source, _fd: BorrowedFd<'_>) {
        // Dropping the registration closes our duplicate.
        self.watches.retain(|w| w.source != source);
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
    /// clock end a wait, which is what these tests look at. It counts the
    /// registrations alive.
    #[derive(Default)]
    struct Inert {
        alive: std::rc::Rc<()>,
    }

    impl Reactor for Inert {
        type Registration = (OwnedFd, std::rc::Rc<()>);
        fn register(&mut self, fd: OwnedFd) -> io::Result<Self::Registration> {
            Ok((fd, self.alive.clone()))
        }
        fn poll_event(&mut self, _: &Self::Registration, _: &mut Context<'_>, _: bool) -> Poll<()> {
            Poll::Pending
        }
        fn poll_deadline(&mut self, _: &mut Context<'_>, _: Option<Instant>) -> bool {
            false
        }
    }

    impl Inert {
        fn registrations(&self) -> usize {
            std::rc::Rc::strong_count(&self.alive) - 1
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
        assert_eq!(w.reactor.registrations(), 1);
        let (other, _o) = UnixStream::pair().unwrap();
        w.watch(Source::Control, other.as_fd(), false).unwrap();
        assert_eq!(w.reactor.registrations(), 1, "the old one was dropped");
        w.unwatch(Source::Control, other.as_fd());
        assert_eq!(w.reactor.registrations(), 0);
        assert!(!w.is_watching(Source::Control));
    }

    #[test]
    fn unwatching_closes_the_duplicate_so_the_peer_sees_eof() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let mut w = Watching::new(Inert::default());
        w.watch(Source::Control, ours.as_fd(), false).unwrap();
        w.unwatch(Source::Control, ours.as_fd());
        drop(ours);
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut b = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut theirs, &mut b).unwrap(), 0, "EOF");
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
