//! An incumbent's control sessions as a future over an [`AsyncDrainable`]:
//! an [`IncumbentDriver`] answers the supervisors; this waits on the
//! reactor and runs the daemon's hooks as futures, concurrently with the
//! session in the same task, so heartbeats and deadlines keep going while
//! a drain or a seal awaits.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::FutureExt;
use handoff_core::{DrainReport, IncumbentConfig};
use handoff_os::control::PeerPolicy;

use super::{Driven, Reactor, Watching, dispatch};
use crate::hooks::{Hook, HookDone, HookError, SealReport, StateSnapshot};
use crate::incumbent::{Endpoint, IncumbentDriver, IncumbentIo, ServeEnd, ServeError};
use crate::link::Source;
use crate::passing::Handover;

/// The incumbent's hooks, as async fns (see `handoff_std::Drainable` for
/// what each must do). One runs at a time, concurrently with the control
/// session. When the futures they return are `Send`, so is [`serve`]'s,
/// and it may be spawned on a multi-threaded executor.
pub trait AsyncDrainable {
    /// Stop accepting, finish in-flight requests, make them durable, by
    /// `deadline` if possible. Keep the listeners open: they are shared
    /// with the supervisor and the successor. Open connections may be
    /// passed to the successor through `handover` meanwhile
    /// (docs/PROTOCOL.md section 11).
    fn drain(
        &self,
        deadline: Instant,
        handover: Handover,
    ) -> impl Future<Output = Result<DrainReport, HookError>>;

    /// Flush and close the writer state, so that another process can open
    /// it. On success the data-dir lock is released; on error it is kept
    /// and [`AsyncDrainable::resume_after_abort`] follows.
    fn seal(&self) -> impl Future<Output = Result<SealReport, HookError>>;

    /// Undo drain (and seal): reopen the writer state and accept again.
    /// Runs with the lock held.
    fn resume_after_abort(&self) -> impl Future<Output = Result<(), HookError>>;

    /// The state as it is now.
    fn snapshot_state(&self) -> StateSnapshot {
        StateSnapshot::default()
    }
}

impl<I: IncumbentIo> Driven<I> for IncumbentDriver {
    fn poll_timeout(&self) -> Option<Instant> {
        IncumbentDriver::poll_timeout(self)
    }
    fn handle_readable(&mut self, io: &mut I, source: Source) {
        IncumbentDriver::handle_readable(self, io, source)
    }
    fn handle_writable(&mut self, io: &mut I, source: Source) {
        IncumbentDriver::handle_writable(self, io, source)
    }
    fn handle_timeout(&mut self, io: &mut I) {
        IncumbentDriver::handle_timeout(self, io)
    }
}

/// Answers supervisors on `reactor` until a handoff commits, as the
/// blocking adapter's `Incumbent::serve` does. The timings, build id and
/// peer policy set on `endpoint` hold.
///
/// Sessions that end any other way leave the daemon serving (lock held,
/// writer open) and the next supervisor is accepted. On an error the
/// endpoint, and the data-dir lock with it, is gone: stop writing and exit.
pub async fn serve<R: Reactor>(
    reactor: R,
    endpoint: Endpoint,
    daemon: &impl AsyncDrainable,
) -> Result<ServeEnd, ServeError> {
    let mut driver = IncumbentDriver::new(endpoint).map_err(ServeError::Io)?;
    let mut io = Watching::new(reactor);
    // The hook futures' types are the daemon's (inferred from the
    // assignments below), so the future of `serve` is `Send` exactly when
    // they are.
    let mut hook = Running::Idle;
    driver.start(&mut io);
    loop {
        while let Some(report) = driver.poll_report() {
            if let Some(verdict) = driver.verdict(report) {
                return verdict.map(|()| ServeEnd::Committed {
                    snapshot: daemon.snapshot_state(),
                });
            }
        }
        match io.take_hook() {
            Some(Hook::Drain { deadline, handover }) => {
                hook = Running::Drain(Box::pin(catch(async move {
                    daemon.drain(deadline, handover).await
                })))
            }
            Some(Hook::Seal) => {
                hook = Running::Seal(Box::pin(catch(async { daemon.seal().await })))
            }
            Some(Hook::Resume) => {
                hook = Running::Resume(Box::pin(catch(async { daemon.resume_after_abort().await })))
            }
            None => {}
        }
        let woken = io.wait(driver.poll_timeout(), Some(&mut hook)).await;
        if let Some(done) = woken.extra {
            driver.hook_done(&mut io, done);
        }
        dispatch(&mut driver, &mut io, &woken.ready);
    }
}

/// [`serve`] with explicit timings, peer policy and build id, in place of
/// those set on `endpoint`.
pub async fn serve_with<R: Reactor>(
    reactor: R,
    endpoint: Endpoint,
    daemon: &impl AsyncDrainable,
    config: IncumbentConfig,
    policy: PeerPolicy,
    build_id: &[u8],
) -> Result<ServeEnd, ServeError> {
    let endpoint = endpoint
        .with_config(config)
        .with_peer_policy(policy)
        .with_build_id(build_id);
    serve(reactor, endpoint, daemon).await
}

/// The hook that runs, if any, as one future whatever its kind. A finished
/// hook is replaced by `Idle` before its result is returned, so it is never
/// polled again; `Idle` never completes.
enum Running<A, B, C> {
    Idle,
    Drain(Pin<Box<A>>),
    Seal(Pin<Box<B>>),
    Resume(Pin<Box<C>>),
}

impl<A, B, C> Future for Running<A, B, C>
where
    A: Future<Output = Result<DrainReport, String>>,
    B: Future<Output = Result<SealReport, String>>,
    C: Future<Output = Result<(), String>>,
{
    type Output = HookDone;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HookDone> {
        // Every variant is boxed, so `Running` is `Unpin`.
        let done = match &mut *self {
            Running::Idle => return Poll::Pending,
            Running::Drain(f) => HookDone::Drained(std::task::ready!(f.as_mut().poll(cx))),
            Running::Seal(f) => HookDone::Sealed(std::task::ready!(f.as_mut().poll(cx))),
            Running::Resume(f) => HookDone::Resumed(std::task::ready!(f.as_mut().poll(cx))),
        };
        *self = Running::Idle;
        Poll::Ready(done)
    }
}

/// Runs a hook, turning a panic into an error as the blocking adapter
/// does: a panicking hook must not unwind out of `serve` and drop the lock
/// with the daemon drained; the machine resumes it as after any failed
/// hook. The hook is called inside the future, so a panic while it builds
/// its future is caught too.
async fn catch<T>(f: impl Future<Output = Result<T, HookError>>) -> Result<T, String> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hook panicked".to_owned()),
    }
}
