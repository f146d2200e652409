//! `serve` as an async fn over an [`AsyncDrainable`]: the incumbent's
//! sessions on async-io, with the daemon's hooks as futures that run
//! concurrently with the session in the same task, so heartbeats and
//! deadlines keep working while a drain or a seal awaits.

use std::future::Future;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use async_io::Async;
use futures_lite::{FutureExt, future};
use handoff_core::{
    DrainReport, IncumbentConfig, IncumbentOutput, IncumbentSession, Revisions, SealFailure,
    SealReport, SessionEnd,
};
use handoff_std::os::control::{
    AcceptRetry, PeerPolicy, accept_retry, path_identity, peer_credentials, reclaim_control_path,
};
use handoff_std::os::lock::DataDirLock;
use handoff_std::{
    HookError, Incumbent, SealOutput, ServeEnd, ServeError, StateSnapshot, clock, crash,
};

use crate::conn::{AsyncConn, Read, readable, timer};

/// The incumbent's hooks, as async fns (see `handoff_std::Drainable` for
/// what each must do). One runs at a time, concurrently with the control
/// session.
pub trait AsyncDrainable {
    /// Stop accepting, finish in-flight requests, make them durable.
    fn drain(
        &self,
        deadline: std::time::Instant,
    ) -> impl Future<Output = Result<DrainReport, HookError>>;

    /// Flush and close the writer state.
    fn seal(&self) -> impl Future<Output = Result<SealOutput, HookError>>;

    /// Reopen the writer state and accept again.
    fn resume_after_abort(&self) -> impl Future<Output = Result<(), HookError>>;

    /// The state as it is now.
    fn snapshot_state(&self) -> StateSnapshot {
        StateSnapshot::default()
    }
}

enum HookDone {
    Drained(Result<DrainReport, String>),
    Sealed(Result<SealOutput, String>),
    Resumed(Result<(), String>),
}

type Hook<'a> = Pin<Box<dyn Future<Output = HookDone> + 'a>>;

enum Wake {
    Input,
    Hook(HookDone),
    Timer,
}

/// Answers supervisors until a handoff commits, as
/// [`handoff_std::Incumbent::serve`] does, on async-io. Take the
/// `Incumbent` from `bind_cold_start` or from a successor's
/// `announce_and_bind`; the timings, build id and allowed uids set on it
/// hold here too.
pub async fn serve<D: AsyncDrainable>(
    incumbent: Incumbent,
    daemon: &D,
) -> Result<ServeEnd, ServeError> {
    let (config, policy) = (incumbent.config(), incumbent.peer_policy().clone());
    let build_id = incumbent.build_id().to_vec();
    serve_with(incumbent, daemon, config, policy, &build_id).await
}

/// [`serve`] with explicit timings, peer policy and build id, in place of
/// those set on `incumbent`.
pub async fn serve_with<D: AsyncDrainable>(
    incumbent: Incumbent,
    daemon: &D,
    config: IncumbentConfig,
    policy: PeerPolicy,
    build_id: &[u8],
) -> Result<ServeEnd, ServeError> {
    let (listener, path, lock) = incumbent.into_parts();
    let bound = path_identity(&path);
    let Some(lock) = lock else {
        return Err(ServeError::Io(io::Error::other(
            "an incumbent must hold the data-dir lock",
        )));
    };
    let data_dir = lock.data_dir().to_path_buf();
    let mut state = State {
        path,
        bound,
        reclaimed: None,
        lock: Some(lock),
        data_dir,
        resume_error: None,
    };
    let mut listener = Async::new(listener).map_err(ServeError::Io)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => match accept_retry(&e) {
                AcceptRetry::Now => continue,
                AcceptRetry::After(pause) => {
                    async_io::Timer::after(pause).await;
                    continue;
                }
                AcceptRetry::Fatal => return Err(ServeError::Io(e)),
            },
        };
        let stream: UnixStream = match stream.into_inner() {
            Ok(s) => s,
            Err(_) => continue,
        };
        if !peer_credentials(&stream).is_ok_and(|c| policy.permits(c.uid)) {
            continue;
        }
        let Ok(conn) = AsyncConn::new(stream) else {
            continue;
        };
        match session(&mut state, conn, daemon, config, build_id).await {
            SessionEnd::Serving(_) => {
                // Bound when the lock was taken back (see `session`).
                if let Some(new) = state.reclaimed.take()
                    && let Ok(new) = Async::new(new)
                {
                    listener = new;
                }
            }
            SessionEnd::Committed => {
                return Ok(ServeEnd::Committed {
                    snapshot: daemon.snapshot_state(),
                });
            }
            SessionEnd::Superseded(cause) => {
                return Err(ServeError::Superseded {
                    cause,
                    holder_pid: DataDirLock::recorded_holder(&state.data_dir),
                });
            }
            SessionEnd::ResumeFailed(cause) => {
                return Err(ServeError::ResumeFailed {
                    cause,
                    error: state.resume_error.take().unwrap_or_default(),
                });
            }
        }
    }
}

struct State {
    /// The control socket path, and the identity of the socket file we
    /// listen on there.
    path: std::path::PathBuf,
    bound: Option<(u64, u64)>,
    /// A new control listener bound at the path when the lock was taken
    /// back after a seal, for `serve` to accept on from then on.
    reclaimed: Option<UnixListener>,
    lock: Option<DataDirLock>,
    data_dir: std::path::PathBuf,
    resume_error: Option<String>,
}

/// Runs a hook, turning a panic into an error as the blocking adapter does:
/// a panicking hook must not unwind out of `serve` and drop the lock with
/// the daemon drained; the machine resumes it as after any failed hook.
async fn run_hook<T>(f: impl Future<Output = Result<T, HookError>>) -> Result<T, String> {
    match AssertUnwindSafe(f).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hook panicked".to_owned()),
    }
}

async fn session<D: AsyncDrainable>(
    state: &mut State,
    conn: AsyncConn,
    daemon: &D,
    config: IncumbentConfig,
    build_id: &[u8],
) -> SessionEnd {
    let mut machine: IncumbentSession<Vec<u8>> =
        IncumbentSession::new(clock::now(), config, std::process::id(), build_id);
    let mut conn = Some(conn);
    let mut hook: Option<Hook<'_>> = None;
    loop {
        while let Some(out) = machine.poll_output() {
            let now = clock::now();
            match out {
                IncumbentOutput::Transmit(frame) => {
                    let sent = match conn.as_ref() {
                        Some(c) => c.send(frame).await.is_ok(),
                        None => false,
                    };
                    if sent {
                        crash::frame('o', true, frame);
                    } else {
                        conn = None;
                        machine.handle_closed(now);
                    }
                }
                IncumbentOutput::Drain { deadline } => {
                    let deadline = clock::to_std(deadline);
                    hook = Some(Box::pin(async move {
                        HookDone::Drained(run_hook(daemon.drain(deadline)).await)
                    }));
                }
                IncumbentOutput::Seal => {
                    hook = Some(Box::pin(async move {
                        HookDone::Sealed(run_hook(daemon.seal()).await)
                    }));
                }
                IncumbentOutput::Resume => {
                    hook = Some(Box::pin(async move {
                        HookDone::Resumed(run_hook(daemon.resume_after_abort()).await)
                    }));
                }
                IncumbentOutput::ReleaseLock => {
                    state.lock = None;
                    crash::at("o-after-lock-released");
                }
                IncumbentOutput::AcquireLock => match DataDirLock::acquire(&state.data_dir) {
                    Ok(lock) => {
                        state.lock = Some(lock);
                        // Taken back (the machine asks only after a seal
                        // released it): the successor is gone, and may have
                        // taken the path over first (its `Ready` crossed the
                        // abort). Should the rebind fail, the old listener
                        // still serves whoever has it.
                        if let Some(Ok(new)) = reclaim_control_path(&state.path, &mut state.bound) {
                            state.reclaimed = Some(new);
                        }
                        machine.handle_lock_acquired(now);
                    }
                    Err(_) => machine.handle_lock_busy(now),
                },
                IncumbentOutput::Close => conn = None,
                IncumbentOutput::Finished(end) => {
                    if end == SessionEnd::Committed {
                        crash::at("o-after-commit-received");
                    }
                    return end;
                }
            }
        }
        if let Some(c) = conn.as_mut()
            && !c.inbox.is_empty()
        {
            let used = machine.handle_input(clock::now(), c.inbox.pending());
            c.inbox.consume(used);
            continue;
        }
        let deadline = machine.poll_timeout();
        let wake = future::or(
            async {
                readable(conn.as_ref()).await;
                Wake::Input
            },
            future::or(
                async {
                    match hook.as_mut() {
                        Some(h) => Wake::Hook(h.await),
                        None => future::pending().await,
                    }
                },
                async {
                    timer(deadline).await;
                    Wake::Timer
                },
            ),
        )
        .await;
        let now = clock::now();
        match wake {
            Wake::Input => {
                if let Some(c) = conn.as_mut() {
                    match c.read() {
                        Read::Data | Read::WouldBlock => {}
                        Read::Closed => {
                            conn = None;
                            machine.handle_closed(now);
                        }
                    }
                }
            }
            Wake::Hook(done) => {
                hook = None;
                match done {
                    HookDone::Drained(Ok(report)) => machine.handle_drained(now, report),
                    HookDone::Drained(Err(_)) => machine.handle_drain_failed(now),
                    HookDone::Sealed(Ok(sealed)) => machine.handle_sealed(
                        now,
                        SealReport {
                            last_revision_per_shard: Revisions::from_slice(
                                &sealed.last_revision_per_shard,
                            ),
                            data_dir_fingerprint: sealed.data_dir_fingerprint,
                        },
                    ),
                    HookDone::Sealed(Err(error)) => machine.handle_seal_failed(
                        now,
                        SealFailure {
                            error: &error,
                            partial_state: "",
                        },
                    ),
                    HookDone::Resumed(Ok(())) => machine.handle_resumed(now),
                    HookDone::Resumed(Err(error)) => {
                        state.resume_error = Some(error);
                        machine.handle_resume_failed(now);
                    }
                }
            }
            Wake::Timer => {}
        }
        // After every wake-up, not only the timer's: a peer that never stops
        // sending must not hold off the deadlines (an early call does
        // nothing).
        machine.handle_timeout(clock::now());
    }
}
