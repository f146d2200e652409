//! The incumbent's blocking driver: [`Incumbent::serve`] answers the control
//! socket, one supervisor session at a time, until a handoff commits. The
//! daemon's hooks run on a thread of the library's own, so the session keeps
//! answering, heartbeating and watching its deadlines however long a drain
//! or a seal takes; the daemon itself needs no thread for the handoff beyond
//! the one that calls `serve`.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

use handoff_core::{
    EndCause, IncumbentConfig, IncumbentOutput, IncumbentSession, Revisions, SealFailure,
    SealReport, SessionEnd,
};

use crate::clock;
use crate::conn::{self, Inbox};
use crate::crash;
use crate::drainable::{Drainable, HookError, SealOutput, SealProgress, StateSnapshot};
use crate::os::control::{self, AcceptRetry, PeerPolicy, peer_credentials, send_frame};
use crate::os::lock::{DataDirLock, LockError};

/// How `serve` ended without an error: the handoff committed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeEnd {
    /// The successor serves now. Finish the connections still open and exit.
    Committed {
        /// The daemon's state at the end, from [`Drainable::snapshot_state`].
        snapshot: StateSnapshot,
    },
}

/// Why `serve` stopped without a commit.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The data-dir lock could not be taken back after a sealed handoff
    /// failed: another process holds it (the successor won). Stop serving
    /// writes and exit.
    Superseded {
        /// What ended the session.
        cause: EndCause,
        /// Who holds the lock, if its pidfile says.
        holder_pid: Option<u32>,
    },
    /// The resume hook failed after an aborted handoff; the daemon cannot
    /// serve. Exit, so that the supervisor starts it again.
    ResumeFailed {
        /// What ended the session.
        cause: EndCause,
        /// The hook's error.
        error: String,
    },
    /// The control socket failed for good: no supervisor can reach this
    /// daemon. `serve` has consumed the incumbent, and the data-dir lock
    /// with it: stop writing and exit (the supervisor starts the daemon
    /// again), or a cold start elsewhere could take the lock while this
    /// process still writes.
    Io(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Superseded { cause, holder_pid } => {
                write!(f, "superseded after {cause}: the data-dir lock is held by ")?;
                match holder_pid {
                    Some(pid) => write!(f, "pid {pid}"),
                    None => f.write_str("another process"),
                }?;
                f.write_str("; stop serving and exit")
            }
            ServeError::ResumeFailed { cause, error } => write!(
                f,
                "could not resume after {cause}: {error}; exit so the supervisor restarts the daemon"
            ),
            ServeError::Io(e) => write!(f, "control socket: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// The control side of a serving daemon: its control socket and its lock.
pub struct Incumbent {
    listener: UnixListener,
    socket_path: PathBuf,
    data_dir: PathBuf,
    lock: Option<DataDirLock>,
    build_id: Vec<u8>,
    policy: PeerPolicy,
    config: IncumbentConfig,
    sessions: u64,
    last_end: Option<SessionEnd>,
    resume_error: Option<String>,
    /// The identity of the control socket file this incumbent listens on.
    bound: Option<(u64, u64)>,
}

impl fmt::Debug for Incumbent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incumbent")
            .field("socket_path", &self.socket_path)
            .field("data_dir", &self.data_dir)
            .field("holds_lock", &self.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl Incumbent {
    /// Binds the control socket at `socket_path` for a daemon that holds
    /// `lock` and started cold (no predecessor to take over from). Replaces
    /// a stale socket left at the path.
    pub fn bind_cold_start(socket_path: &Path, lock: DataDirLock) -> io::Result<Incumbent> {
        let listener = control::bind_control_socket(socket_path)?;
        Ok(Incumbent::from_parts(listener, socket_path, lock))
    }

    /// An incumbent from a control listener already bound at `socket_path`
    /// and the lock, e.g. after a successor bound the path.
    pub fn from_parts(listener: UnixListener, socket_path: &Path, lock: DataDirLock) -> Self {
        Incumbent {
            listener,
            socket_path: socket_path.to_path_buf(),
            data_dir: lock.data_dir().to_path_buf(),
            lock: Some(lock),
            build_id: Vec::new(),
            policy: PeerPolicy::same_user(),
            config: IncumbentConfig::default(),
            sessions: 0,
            last_end: None,
            resume_error: None,
            bound: control::path_identity(socket_path),
        }
    }

    /// The build id announced in `Hello`.
    pub fn with_build_id(mut self, build_id: impl Into<Vec<u8>>) -> Self {
        self.build_id = build_id.into();
        self
    }

    /// Also accept supervisors running as these uids (besides ours and
    /// root).
    pub fn with_allowed_uids(mut self, uids: Vec<u32>) -> Self {
        self.policy = PeerPolicy::with_allowed_uids(uids);
        self
    }

    /// Overrides the session timings.
    pub fn with_config(mut self, config: IncumbentConfig) -> Self {
        self.config = config;
        self
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Whether this process holds the data-dir lock now.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// The session timings: those given to [`Incumbent::with_config`], or
    /// the defaults.
    pub fn config(&self) -> IncumbentConfig {
        self.config
    }

    /// The build id announced in `Hello` (empty unless set with
    /// [`Incumbent::with_build_id`]).
    pub fn build_id(&self) -> &[u8] {
        &self.build_id
    }

    /// Which supervisors may connect (see [`Incumbent::with_allowed_uids`]).
    pub fn peer_policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// The parts, for an adapter that drives the sessions itself: the control
    /// listener, its path, and the lock. The settings are not among them:
    /// an adapter reads [`Incumbent::config`], [`Incumbent::build_id`] and
    /// [`Incumbent::peer_policy`] first, so that what the daemon set on this
    /// incumbent still holds under the adapter.
    pub fn into_parts(self) -> (UnixListener, PathBuf, Option<DataDirLock>) {
        (self.listener, self.socket_path, self.lock)
    }

    /// How the last control session ended, for logs.
    pub fn last_session_end(&self) -> Option<SessionEnd> {
        self.last_end
    }

    /// Answers supervisors until a handoff commits. Sessions that end any
    /// other way leave the daemon serving (lock held, writer open) and the
    /// next connection is accepted. A connection from a uid the policy does
    /// not permit is closed at once.
    pub fn serve<D: Drainable>(mut self, daemon: &D) -> Result<ServeEnd, ServeError> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) => match control::accept_retry(&e) {
                    AcceptRetry::Now => continue,
                    AcceptRetry::After(pause) => {
                        std::thread::sleep(pause);
                        continue;
                    }
                    AcceptRetry::Fatal => return Err(ServeError::Io(e)),
                },
            };
            let permitted = peer_credentials(&stream).is_ok_and(|c| self.policy.permits(c.uid));
            if !permitted || conn::configure(&stream).is_err() {
                continue;
            }
            self.sessions += 1;
            let end = self.session(stream, daemon);
            self.last_end = Some(end);
            match end {
                SessionEnd::Serving(_) => {}
                SessionEnd::Committed => {
                    return Ok(ServeEnd::Committed {
                        snapshot: daemon.snapshot_state(),
                    });
                }
                SessionEnd::Superseded(cause) => {
                    return Err(ServeError::Superseded {
                        cause,
                        holder_pid: DataDirLock::recorded_holder(&self.data_dir),
                    });
                }
                SessionEnd::ResumeFailed(cause) => {
                    return Err(ServeError::ResumeFailed {
                        cause,
                        error: self.resume_error.take().unwrap_or_default(),
                    });
                }
            }
        }
    }
}

/// A hook's result, sent from its thread to the session loop.
enum HookDone {
    Drained(Result<handoff_core::DrainReport, String>),
    Sealed(Result<SealOutput, String>),
    Resumed(Result<(), String>),
}

/// Runs a hook, turning a panic into an error: a panicking hook must not
/// leave the session waiting forever with the daemon drained.
fn run_hook<T>(f: impl FnOnce() -> Result<T, HookError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hook panicked".to_owned()),
    }
}

/// Wakes the session loop from a hook thread.
#[derive(Clone)]
struct Waker(Arc<UnixStream>);

impl Waker {
    fn wake(&self) {
        // A full pipe already holds a wake-up; nothing is lost.
        let _ = control::send_some(self.0.as_fd(), &[1]);
    }
}

/// A hook for the session's worker thread to run.
enum Job {
    Drain(std::time::Instant),
    Seal,
    Resume,
}

/// What the worker thread needs to run hooks and report back.
struct HookContext<'d, D> {
    daemon: &'d D,
    done: mpsc::Sender<HookDone>,
    progress: mpsc::Sender<(u32, u32, u64)>,
    waker: Waker,
}

/// Runs one hook of `daemon`; seal progress goes to `progress`, `wake`
/// rung after each report.
fn run_job<D: Drainable>(
    daemon: &D,
    job: Job,
    progress: &mpsc::Sender<(u32, u32, u64)>,
    wake: &Waker,
) -> HookDone {
    match job {
        Job::Drain(deadline) => HookDone::Drained(run_hook(|| daemon.drain(deadline))),
        Job::Seal => {
            let progress = SealProgress {
                tx: progress.clone(),
                wake: Box::new({
                    let w = wake.clone();
                    move || w.wake()
                }),
            };
            HookDone::Sealed(run_hook(|| daemon.seal(&progress)))
        }
        Job::Resume => HookDone::Resumed(run_hook(|| daemon.resume_after_abort())),
    }
}

/// Starts the thread that runs this session's hooks one after another (the
/// machine never asks for two at once); `None` if it could not start.
fn start_worker<'scope, D: Drainable>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    hooks: &HookContext<'scope, D>,
) -> Option<mpsc::Sender<Job>> {
    let (jobs, inbox) = mpsc::channel::<Job>();
    let daemon = hooks.daemon;
    let (tx, w, progress_tx) = (
        hooks.done.clone(),
        hooks.waker.clone(),
        hooks.progress.clone(),
    );
    std::thread::Builder::new()
        .name("handoff-hooks".into())
        .spawn_scoped(scope, move || {
            // Ends when the session drops its sender.
            for job in inbox {
                let done = run_job(daemon, job, &progress_tx, &w);
                let _ = tx.send(done);
                w.wake();
            }
        })
        .ok()
        .map(|_| jobs)
}

impl Incumbent {
    /// Hands `job` to the session's worker, starting it if need be. Without
    /// a worker (no thread to be had) the hook runs here, on the session
    /// thread: the session cannot heartbeat meanwhile, but failing the hook
    /// instead would fail the resume too and tell a healthy daemon to exit.
    fn give<'scope, D: Drainable>(
        &mut self,
        worker: &mut Option<Option<mpsc::Sender<Job>>>,
        scope: &'scope std::thread::Scope<'scope, '_>,
        machine: &mut IncumbentSession<Vec<u8>>,
        job: Job,
        hooks: &HookContext<'scope, D>,
    ) {
        let jobs = worker.get_or_insert_with(|| start_worker(scope, hooks));
        let job = match jobs {
            Some(j) => match j.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        let done = run_job(hooks.daemon, job, &hooks.progress, &hooks.waker);
        self.on_hook_done(machine, done);
    }

    fn session<D: Drainable>(&mut self, stream: UnixStream, daemon: &D) -> SessionEnd {
        let (wake_rx, wake_tx) = match UnixStream::pair() {
            Ok(pair) => pair,
            // Without a waker no hook could report back: refuse the session
            // (the supervisor sees EOF and aborts) rather than strand it.
            Err(_) => return SessionEnd::Serving(EndCause::SupervisorClosed),
        };
        let _ = wake_rx.set_nonblocking(true);
        let _ = wake_tx.set_nonblocking(true);
        let waker = Waker(Arc::new(wake_tx));
        let (done_tx, done_rx) = mpsc::channel::<HookDone>();
        let (progress_tx, progress_rx) = mpsc::channel::<(u32, u32, u64)>();

        std::thread::scope(|scope| {
            let mut machine: IncumbentSession<Vec<u8>> = IncumbentSession::new(
                clock::now(),
                self.config,
                std::process::id(),
                &self.build_id,
            );
            let mut stream = Some(stream);
            let mut inbox = Inbox::new();
            let mut wake_rx = wake_rx;
            let hooks = HookContext {
                daemon,
                done: done_tx,
                progress: progress_tx,
                waker,
            };
            // The thread that runs the daemon's hooks; `Some(None)` once
            // starting it failed.
            let mut worker: Option<Option<mpsc::Sender<Job>>> = None;
            loop {
                while let Some(out) = machine.poll_output() {
                    let now = clock::now();
                    match out {
                        IncumbentOutput::Transmit(frame) => {
                            let sent = stream
                                .as_ref()
                                .is_some_and(|s| send_frame(s, frame).is_ok());
                            if sent {
                                crash::frame('o', true, frame);
                            } else {
                                stream = None;
                                machine.handle_closed(now);
                            }
                        }
                        IncumbentOutput::Drain { deadline } => {
                            let job = Job::Drain(clock::to_std(deadline));
                            self.give(&mut worker, scope, &mut machine, job, &hooks);
                        }
                        IncumbentOutput::Seal => {
                            self.give(&mut worker, scope, &mut machine, Job::Seal, &hooks);
                        }
                        IncumbentOutput::ReleaseLock => {
                            self.lock = None;
                            crash::at("o-after-lock-released");
                        }
                        IncumbentOutput::AcquireLock => {
                            match DataDirLock::acquire(&self.data_dir) {
                                Ok(lock) => {
                                    self.lock = Some(lock);
                                    // Taken back (the machine asks only after
                                    // a seal released it): the successor is
                                    // gone, and may have taken the path over
                                    // first (its `Ready` crossed the abort).
                                    // Should the rebind fail, the old
                                    // listener still serves whoever has it.
                                    if let Some(Ok(listener)) = control::reclaim_control_path(
                                        &self.socket_path,
                                        &mut self.bound,
                                    ) {
                                        self.listener = listener;
                                    }
                                    machine.handle_lock_acquired(now);
                                }
                                Err(LockError::Busy { .. } | LockError::HolderAlive { .. }) => {
                                    machine.handle_lock_busy(now)
                                }
                                // Anything else (the directory vanished, no
                                // permission) will not clear by retrying, but
                                // the machine bounds the retries anyway.
                                Err(_) => machine.handle_lock_busy(now),
                            }
                        }
                        IncumbentOutput::Resume => {
                            self.give(&mut worker, scope, &mut machine, Job::Resume, &hooks);
                        }
                        IncumbentOutput::Close => {
                            if let Some(s) = stream.take() {
                                let _ = s.shutdown(std::net::Shutdown::Both);
                            }
                        }
                        IncumbentOutput::Finished(end) => {
                            if end == SessionEnd::Committed {
                                crash::at("o-after-commit-received");
                            }
                            return end;
                        }
                    }
                }
                if !inbox.is_empty() {
                    let used = machine.handle_input(clock::now(), inbox.pending());
                    inbox.consume(used);
                    continue;
                }
                if worker.is_none() {
                    // Started once our `Hello` is out, while the supervisor
                    // spawns the successor, so that no thread is started
                    // between `PrepareHandoff` and `Begin`.
                    worker = Some(start_worker(scope, &hooks));
                }
                let ready = match conn::wait(
                    &[stream.as_ref().map(|s| s.as_fd()), Some(wake_rx.as_fd())],
                    machine.poll_timeout(),
                ) {
                    Ok(r) => r,
                    // poll itself failing is not something a retry fixes
                    // quickly; treat the supervisor as gone so the session
                    // unwinds through the machine's recovery.
                    Err(_) => {
                        stream = None;
                        machine.handle_closed(clock::now());
                        continue;
                    }
                };
                let now = clock::now();
                if ready[0]
                    && let Some(s) = stream.as_mut()
                {
                    match inbox.fill(s) {
                        Ok(n) if n > 0 => {}
                        _ => {
                            stream = None;
                            machine.handle_closed(now);
                        }
                    }
                }
                if ready[1] {
                    let mut sink = [0u8; 64];
                    while matches!(io::Read::read(&mut wake_rx, &mut sink), Ok(n) if n > 0) {}
                    while let Ok((sealed, total, last)) = progress_rx.try_recv() {
                        machine.handle_seal_progress(now, sealed, total, last);
                    }
                    while let Ok(done) = done_rx.try_recv() {
                        self.on_hook_done(&mut machine, done);
                    }
                }
                // Also when something was ready: a peer that never stops
                // sending must not hold off the deadlines (an early call
                // does nothing).
                machine.handle_timeout(clock::now());
            }
        })
    }

    fn on_hook_done(&mut self, machine: &mut IncumbentSession<Vec<u8>>, done: HookDone) {
        let now = clock::now();
        match done {
            HookDone::Drained(Ok(report)) => machine.handle_drained(now, report),
            HookDone::Drained(Err(_)) => machine.handle_drain_failed(now),
            HookDone::Sealed(Ok(sealed)) => machine.handle_sealed(
                now,
                SealReport {
                    last_revision_per_shard: Revisions::from_slice(&sealed.last_revision_per_shard),
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
                self.resume_error = Some(error);
                machine.handle_resume_failed(now);
            }
        }
    }
}
