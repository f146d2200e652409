//! `serve` as an async fn over an [`AsyncDrainable`]: an
//! [`IncumbentDriver`] answers the supervisors, and this waits on async-io
//! for what it watches and runs the daemon's hooks as futures, concurrently
//! with the session in the same task, so heartbeats and deadlines keep
//! working while a drain or a seal awaits.

use std::future::Future;
use std::io;
use std::os::fd::BorrowedFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures_lite::FutureExt;
use handoff_core::{DrainReport, IncumbentConfig};
use handoff_driver::{
    Endpoint, Hook, HookDone, HookError, IncumbentDriver, IncumbentIo, Io, SealReport, ServeEnd,
    ServeError, Source, StateSnapshot,
};
use handoff_os::control::PeerPolicy;

use crate::watched::Watched;

/// The incumbent's hooks, as async fns (see `handoff_std::Drainable` for
/// what each must do). One runs at a time, concurrently with the control
/// session.
pub trait AsyncDrainable {
    /// Stop accepting, finish in-flight requests, make them durable, by
    /// `deadline` if possible. Keep the listeners open: they are shared
    /// with the supervisor and the successor.
    fn drain(
        &self,
        deadline: std::time::Instant,
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

/// Answers supervisors until a handoff commits, as the blocking adapter's
/// `Incumbent::serve` does, on async-io. Take the endpoint from
/// [`Endpoint::bind_cold_start`], from a successor's
/// [`crate::BegunSuccessor::announce_and_bind`], or a `handoff_std::Incumbent`; the
/// timings, build id and peer policy set on it hold here too.
///
/// Sessions that end any other way leave the daemon serving (lock held,
/// writer open) and the next supervisor is accepted. On an error the
/// endpoint, and the data-dir lock with it, is gone: stop writing and exit.
pub async fn serve(
    incumbent: impl Into<Endpoint>,
    daemon: &impl AsyncDrainable,
) -> Result<ServeEnd, ServeError> {
    run(incumbent.into(), daemon).await
}

/// [`serve`] with explicit timings, peer policy and build id, in place of
/// those set on `incumbent`.
pub async fn serve_with(
    incumbent: impl Into<Endpoint>,
    daemon: &impl AsyncDrainable,
    config: IncumbentConfig,
    policy: PeerPolicy,
    build_id: &[u8],
) -> Result<ServeEnd, ServeError> {
    let ep = incumbent
        .into()
        .with_config(config)
        .with_peer_policy(policy)
        .with_build_id(build_id);
    run(ep, daemon).await
}

/// A running hook, as a future.
type HookFuture<'d> = Pin<Box<dyn Future<Output = HookDone> + 'd>>;

/// What the driver is given as its [`IncumbentIo`]: the descriptors, and
/// the hook it asked for, which the serve loop turns into a future.
#[derive(Debug, Default)]
struct Glue {
    watched: Watched,
    requested: Option<Hook>,
}

impl Io for Glue {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        self.watched.watch(source, fd, write)
    }

    fn unwatch(&mut self, source: Source, fd: BorrowedFd<'_>) {
        self.watched.unwatch(source, fd)
    }
}

impl IncumbentIo for Glue {
    fn run_hook(&mut self, hook: Hook) {
        // The driver never asks for a second hook before the first is done.
        debug_assert!(self.requested.is_none(), "two hooks at once");
        self.requested = Some(hook);
    }
}

async fn run(ep: Endpoint, daemon: &impl AsyncDrainable) -> Result<ServeEnd, ServeError> {
    let mut driver = IncumbentDriver::new(ep).map_err(ServeError::Io)?;
    let mut io = Glue::default();
    let mut hook: Option<HookFuture<'_>> = None;
    driver.start(&mut io);
    loop {
        while let Some(report) = driver.poll_report() {
            if let Some(verdict) = driver.verdict(report) {
                return verdict.map(|()| ServeEnd::Committed {
                    snapshot: daemon.snapshot_state(),
                });
            }
        }
        if let Some(h) = io.requested.take() {
            hook = Some(start_hook(daemon, h));
        }
        let woken = io.watched.wait(driver.poll_timeout(), hook.as_mut()).await;
        if let Some(done) = woken.extra {
            // Completed: never polled again.
            hook = None;
            driver.hook_done(&mut io, done);
        }
        for r in woken.ready {
            if !io.watched.is_watching(r.source) {
                continue;
            }
            if r.writable {
                driver.handle_writable(&mut io, r.source);
            }
            if r.readable {
                driver.handle_readable(&mut io, r.source);
            }
        }
        driver.handle_timeout(&mut io);
    }
}

/// The future of the daemon's hook for `hook`.
fn start_hook<'d>(daemon: &'d impl AsyncDrainable, hook: Hook) -> HookFuture<'d> {
    match hook {
        Hook::Drain { deadline } => Box::pin(async move {
            HookDone::Drained(catch(async move { daemon.drain(deadline).await }).await)
        }),
        Hook::Seal => {
            Box::pin(
                async move { HookDone::Sealed(catch(async move { daemon.seal().await }).await) },
            )
        }
        Hook::Resume => Box::pin(async move {
            HookDone::Resumed(catch(async move { daemon.resume_after_abort().await }).await)
        }),
    }
}

/// Runs a hook, turning a panic into an error as the blocking adapter does:
/// a panicking hook must not unwind out of `serve` and drop the lock with
/// the daemon drained; the machine resumes it as after any failed hook.
/// The hook is called inside the future, so a panic while it builds its
/// future is caught too.
async fn catch<T>(f: impl Future<Output = Result<T, HookError>>) -> Result<T, String> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hook panicked".to_owned()),
    }
}
