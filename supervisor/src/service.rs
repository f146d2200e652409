//! The service: one supervised daemon with its listeners, its trigger
//! socket and the threads that keep it alive.
//!
//! Who may change what:
//! - `State` (the incumbent, the retired incumbents still exiting, the
//!   binary a restart runs) changes under its mutex, held only briefly.
//! - `handoff_lock` is held for a whole handoff and for a whole restart, so
//!   the two never overlap; a handoff only tries it (a second request gets
//!   "in progress" at once), the monitor waits for it.
//! - Every incumbent change wakes the monitor, which watches the current
//!   set of processes.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use handoff_std::os::control::PeerPolicy;
use handoff_std::os::env::EnvError;
use handoff_std::os::listeners::{InheritedListeners, ListenerError};
use handoff_std::os::process::{ExitWatch, poll_readable};
use handoff_std::os::spawn::PassedListener;
use handoff_std::{
    AbortReason, HandoffOutcome, IncumbentFate, PhaseTimings, SpawnSpec, Supervisor,
    SupervisorError,
};

use crate::client::HandoffReply;
use crate::config::{Config, ListenerKind};
use crate::daemon::{self, Proc, StartError};
use crate::listeners;
use crate::notify::Notifier;
use crate::text::one_line;
use crate::trigger;

/// How long a new daemon may take to answer on its control socket, by
/// default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a trigger client may take to send its request line, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Between `SIGTERM` and `SIGKILL` when the supervisor stops, by default.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// The successor's start-up budget before its `Hello` (capped by the
/// handoff deadline).
const STARTUP_BUDGET: Duration = Duration::from_secs(30);

/// The supervisor's state as the `status` request reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// The serving daemon, if one is running.
    pub incumbent_pid: Option<u32>,
    /// Handoffs run to an outcome (committed or aborted) since start.
    pub handoffs: u64,
    /// Whether a handoff is running now.
    pub in_flight: bool,
    /// Whether the serving daemon answered its control socket with its
    /// `Hello` within [`STATUS_PROBE`]: `false` for a daemon that is alive
    /// but stopped, frozen or hung. `None` when nothing was asked: no
    /// daemon runs, or a handoff (whose session the daemon is in) or a
    /// restart is in progress.
    pub answering: Option<bool>,
}

/// How long `status` waits for the daemon's `Hello` on its control socket.
/// A serving daemon answers in well under a millisecond; this is the
/// margin for a loaded machine, and short enough that `status` itself
/// stays quick.
pub const STATUS_PROBE: Duration = Duration::from_millis(500);

/// How one handoff ended.
#[derive(Clone, Debug)]
pub struct HandoffReport {
    /// The handoff's id (a UUID), as in the logs and the journal.
    pub handoff_id: String,
    /// Whether the successor took over.
    pub committed: bool,
    /// Why not, if it did not.
    pub abort_reason: Option<String>,
    /// From start to outcome, in milliseconds.
    pub duration_ms: f64,
    /// The successor's binary.
    pub binary: PathBuf,
    /// The incumbent handed off from.
    pub incumbent_pid: Option<u32>,
    /// The successor (the incumbent now, if committed).
    pub successor_pid: Option<u32>,
    /// Time spent in each phase.
    pub timings: PhaseTimings,
}

impl HandoffReport {
    /// The trigger protocol's view of it.
    pub fn reply(&self) -> HandoffReply {
        HandoffReply {
            handoff_id: self.handoff_id.clone(),
            committed: self.committed,
            abort_reason: self.abort_reason.clone(),
            duration_ms: self.duration_ms,
        }
    }

    /// The trigger protocol's reply line, without its newline.
    pub fn reply_line(&self) -> String {
        self.reply().to_line()
    }
}

/// Why the service could not start, or a request could not run.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceError {
    /// A listener could not be bound.
    Listener {
        /// Its name.
        name: String,
        /// Its configured address.
        addr: String,
        /// Its kind.
        kind: ListenerKind,
        /// The system's error.
        source: io::Error,
    },
    /// A listener passed by the service manager is unusable.
    Inherited {
        /// Its name.
        name: String,
        /// What is wrong.
        source: ListenerError,
    },
    /// The socket-activation variables are malformed.
    Env(EnvError),
    /// The handoff machinery refused the configuration, or a handoff could
    /// not run.
    Supervisor(SupervisorError),
    /// The trigger socket could not be bound.
    TriggerSocket {
        /// Its path.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The daemon did not come up.
    DaemonStart {
        /// Its binary.
        binary: PathBuf,
        /// What happened.
        reason: String,
    },
    /// A thread or a wake-up pipe could not be created.
    Io(io::Error),
    /// A handoff request named a binary the configuration does not allow.
    BinaryNotAllowed {
        /// The binary asked for.
        binary: PathBuf,
    },
    /// The binary is allowed, but users other than root and the
    /// supervisor's could change the file (or a directory on its way).
    UntrustedBinary {
        /// The binary asked for.
        binary: PathBuf,
        /// Which file or directory, its owner and mode, and the fix.
        reason: String,
    },
    /// Another handoff is running.
    HandoffInProgress,
    /// The daemon is being restarted after it died.
    Restarting,
    /// No daemon runs (it died and its restart is pending).
    NotRunning,
    /// The service is stopping.
    ShuttingDown,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceError::Listener {
                name,
                addr,
                kind,
                source,
            } => {
                write!(f, "cannot bind listener {name:?} ({kind} {addr}): {source}")?;
                if source.kind() == io::ErrorKind::AddrInUse {
                    f.write_str(
                        "; another process holds it: a daemon left running by a supervisor \
                         that was killed, or a second supervisor for this service; stop it \
                         first",
                    )?;
                }
                Ok(())
            }
            ServiceError::Inherited { name, source } => write!(
                f,
                "listener {name:?} from the service manager: {source}; check that its `kind` \
                 in the configuration matches the socket passed as {name:?} (systemd: \
                 ListenStream= for tcp and unix, ListenDatagram= for udp, with \
                 FileDescriptorName={name})"
            ),
            ServiceError::Env(e) => write!(f, "socket activation: {e}"),
            ServiceError::Supervisor(e) => write!(f, "{e}"),
            ServiceError::TriggerSocket { path, source } => {
                write!(
                    f,
                    "cannot bind the trigger socket {}: {source}",
                    path.display()
                )?;
                if source.kind() == io::ErrorKind::NotFound {
                    write!(
                        f,
                        "; create its directory {} first (under systemd: RuntimeDirectory=)",
                        path.parent().unwrap_or(Path::new("/")).display()
                    )?;
                }
                Ok(())
            }
            ServiceError::DaemonStart { binary, reason } => write!(
                f,
                "the daemon {} did not start: {reason} (the configuration's `binary`)",
                binary.display()
            ),
            ServiceError::Io(e) => write!(f, "{e}"),
            ServiceError::BinaryNotAllowed { binary } => write!(
                f,
                "binary {} is not allowed: a handoff may run only the configured `binary` \
                 or one listed in `allowed_binaries` (paths compared as written), as the \
                 configuration read when this supervisor started says; restart it to apply \
                 an edited file",
                binary.display()
            ),
            ServiceError::UntrustedBinary { reason, .. } => f.write_str(reason),
            ServiceError::HandoffInProgress => {
                f.write_str("a handoff is already in progress; wait for its outcome")
            }
            ServiceError::Restarting => {
                f.write_str("the daemon is being restarted after it died; try again shortly")
            }
            ServiceError::NotRunning => f.write_str(
                "no daemon is running (it died; the restart is pending); try again shortly. A \
                 daemon that keeps dying cannot be handed off: install a fixed build at the \
                 configured `binary`, and the next restart runs it",
            ),
            ServiceError::ShuttingDown => f.write_str("the supervisor is shutting down"),
        }
    }
}

impl ServiceError {
    /// Whether the handoff was refused before it started (another one or a
    /// restart runs, the service stops, no daemon runs, the binary is not
    /// allowed): nothing was spawned and systemd was told nothing.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ServiceError::HandoffInProgress
                | ServiceError::Restarting
                | ServiceError::NotRunning
                | ServiceError::ShuttingDown
                | ServiceError::BinaryNotAllowed { .. }
                | ServiceError::UntrustedBinary { .. }
        )
    }
}

impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Listener { source, .. } | ServiceError::TriggerSocket { source, .. } => {
                Some(source)
            }
            ServiceError::Inherited { source, .. } => Some(source),
            ServiceError::Env(e) => Some(e),
            ServiceError::Supervisor(e) => Some(e),
            ServiceError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Locks a mutex, carrying on after a panic elsewhere: the state it guards
/// is replaced whole, never left half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One end of a wake-up pipe, written to say "look again".
#[derive(Debug)]
pub(crate) struct Waker(UnixStream);

impl Waker {
    /// A waker and the end to poll.
    pub(crate) fn pair() -> io::Result<(Waker, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((Waker(tx), rx))
    }

    pub(crate) fn wake(&self) {
        // A full pipe already holds a wake-up.
        let _ = io::Write::write(&mut &self.0, &[1]);
    }
}

/// Empties the polled end of a wake-up pipe.
pub(crate) fn drain_wakes(rx: &UnixStream) {
    let mut sink = [0u8; 64];
    while matches!(io::Read::read(&mut &*rx, &mut sink), Ok(n) if n > 0) {}
}

/// The processes and what the monitor needs to know about them.
#[derive(Debug)]
pub(crate) struct State {
    /// The serving daemon.
    pub(crate) incumbent: Option<Proc>,
    /// Incumbents handed off from, finishing their last connections.
    pub(crate) retired: Vec<Proc>,
    /// Whether the monitor is starting a new daemon now.
    pub(crate) restarting: bool,
    /// What a restart runs: the binary of the last committed handoff, so a
    /// crash never silently downgrades to the configured binary.
    pub(crate) binary: PathBuf,
    /// The pause before the next restart after a quick death; see
    /// `monitor`. Zero again after a committed handoff, and after a daemon
    /// that served past the quick-death limit.
    pub(crate) restart_backoff: Duration,
}

/// How long an incumbent whose session closed during a handoff is given to
/// finish exiting before it is taken for alive.
const EXIT_GRACE: Duration = Duration::from_millis(250);

/// Everything the threads share.
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) supervisor: Supervisor,
    pub(crate) state: Mutex<State>,
    /// Signalled whenever the incumbent changes.
    pub(crate) changed: Condvar,
    pub(crate) handoff_lock: Mutex<()>,
    pub(crate) in_flight: AtomicBool,
    pub(crate) handoffs: AtomicU64,
    pub(crate) stopping: AtomicBool,
    pub(crate) notifier: Notifier,
    pub(crate) policy: PeerPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) startup_timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) monitor_wake: Waker,
}

impl Inner {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Starts `binary` cold on our listeners and waits until it serves.
    pub(crate) fn start_daemon(&self, binary: &Path) -> Result<Proc, StartError> {
        let listeners: Vec<PassedListener<'_>> = self.supervisor.listeners().collect();
        daemon::start(
            &self.config,
            binary,
            &listeners,
            self.startup_timeout,
            self.stop_grace,
            &self.stopping,
        )
    }

    /// Whether the incumbent `pid` has exited (or was reaped, or replaced),
    /// waiting up to `bound` for it. The pidfd is opened while the state
    /// holds the process unreaped, so it names that process and no other.
    fn incumbent_exited(&self, pid: u32, bound: Duration) -> bool {
        let watch = {
            let st = lock(&self.state);
            match st.incumbent.as_ref() {
                Some(p) if p.pid() == pid => ExitWatch::new(pid).ok(),
                _ => return true,
            }
        };
        match watch {
            Some(w) => poll_readable(&[w.as_fd()], Some(bound)).is_ok_and(|r| r[0]),
            // No pidfd (an old kernel): the monitor finds out.
            None => false,
        }
    }

    pub(crate) fn status(&self) -> Status {
        let (incumbent_pid, restarting) = {
            let st = lock(&self.state);
            (st.incumbent.as_ref().map(Proc::pid), st.restarting)
        };
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        // A pid in the state is alive or unreaped, so no other process has
        // it: a `Hello` that names it comes from our daemon. Not asked
        // during a handoff, whose session the daemon serves (one at a time).
        let answering = match incumbent_pid {
            Some(pid) if !in_flight && !restarting => Some(
                crate::daemon::probe(&self.config.control_socket, Instant::now() + STATUS_PROBE)
                    == Some(pid),
            ),
            _ => None,
        };
        Status {
            incumbent_pid,
            handoffs: self.handoffs.load(Ordering::SeqCst),
            in_flight,
            answering,
        }
    }

    pub(crate) fn handoff(&self, binary: Option<&Path>) -> Result<HandoffReport, ServiceError> {
        let binary = match binary {
            None => self.config.binary.clone(),
            Some(b) if self.config.binary_allowed(b) => b.to_path_buf(),
            Some(b) => {
                tracing::warn!(binary = %b.display(), "refused a handoff to a binary not allowed");
                return Err(ServiceError::BinaryNotAllowed {
                    binary: b.to_path_buf(),
                });
            }
        };
        // The file behind the name, as it is now (it may have changed since
        // the configuration was read); `binary` is then run as checked.
        if let Err(e) = crate::trust::check_binary(&binary) {
            tracing::warn!(error = %e, "refused a handoff to an untrusted binary");
            return Err(ServiceError::UntrustedBinary {
                binary,
                reason: e.to_string(),
            });
        }
        if self.stopping() {
            return Err(ServiceError::ShuttingDown);
        }
        let turn = match self.handoff_lock.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(if lock(&self.state).restarting {
                    ServiceError::Restarting
                } else {
                    ServiceError::HandoffInProgress
                });
            }
        };
        // Checked again with the turn held: shutdown takes it too.
        if self.stopping() {
            return Err(ServiceError::ShuttingDown);
        }
        let Some(incumbent_pid) = lock(&self.state).incumbent.as_ref().map(Proc::pid) else {
            return Err(ServiceError::NotRunning);
        };

        self.in_flight.store(true, Ordering::SeqCst);
        struct InFlight<'a>(&'a AtomicBool);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let in_flight = InFlight(&self.in_flight);

        let span = tracing::info_span!(
            "handoff",
            handoff_id = tracing::field::Empty,
            binary = %binary.display()
        );
        let _entered = span.enter();
        tracing::info!(incumbent_pid, "handoff starting");
        self.notifier
            .reloading(&format!("handing off to {}", binary.display()));

        let spec = SpawnSpec {
            binary: binary.clone(),
            args: self.config.args.iter().map(Into::into).collect(),
            env: self
                .config
                .env
                .iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            deadline: self.config.deadline(),
            drain_grace: self.config.drain_grace(),
            startup_budget: STARTUP_BUDGET.min(self.config.deadline()),
        };
        // The handoff reaches only this process: right after the last
        // handoff, the control socket path may still name the old one's
        // socket for a moment.
        self.supervisor.set_incumbent_pid(Some(incumbent_pid));
        let result = self.supervisor.perform_handoff(spec);
        let mut outcome = match result {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "the handoff could not run");
                drop(in_flight);
                drop(turn);
                self.notifier.ready(&format!(
                    "serving: pid {incumbent_pid} (a handoff could not run: {e})"
                ));
                return Err(ServiceError::Supervisor(e));
            }
        };
        span.record("handoff_id", tracing::field::display(&outcome.handoff_id));
        log_phases(&outcome);
        #[cfg(feature = "metrics")]
        crate::metrics::record(&outcome);

        let report = HandoffReport {
            handoff_id: outcome.handoff_id.to_string(),
            committed: outcome.committed(),
            abort_reason: abort_text(&outcome),
            duration_ms: outcome.timings.total.as_secs_f64() * 1e3,
            binary: binary.clone(),
            incumbent_pid: outcome.incumbent_pid.or(Some(incumbent_pid)),
            successor_pid: outcome.successor_pid,
            timings: outcome.timings,
        };
        let serving = match outcome.child.take() {
            Some(child) => {
                let pid = child.id();
                let mut st = lock(&self.state);
                // The old incumbent exits by itself once its last
                // connections are done; the monitor reaps it. It may
                // already be gone (it died after sealing; the monitor
                // reaped it): then there is nothing to retire.
                if let Some(old) = st.incumbent.take() {
                    st.retired.push(old);
                }
                st.incumbent = Some(Proc {
                    child,
                    started: Instant::now(),
                });
                st.binary = binary;
                // A new binary took over: an earlier run of quick deaths
                // says nothing about it.
                st.restart_backoff = Duration::ZERO;
                drop(st);
                tracing::info!(
                    successor_pid = pid,
                    duration_ms = report.duration_ms,
                    "handoff committed; the successor serves"
                );
                format!(
                    "serving: pid {pid} (handoff {} committed)",
                    report.handoff_id
                )
            }
            None => {
                if report.committed {
                    // perform_handoff hands over the child of every
                    // committed handoff; without it the monitor could not
                    // watch the new incumbent.
                    tracing::error!("committed, but the successor's process handle is missing");
                }
                // The session with it was lost: whether the process lives
                // is ours to check, and only an exit makes it gone. A
                // stopped or hung one resumes serving by itself once it
                // runs again.
                let lost = matches!(
                    outcome.incumbent_fate,
                    IncumbentFate::Gone | IncumbentFate::Unresponsive
                );
                if lost {
                    // A closed session is most often an exit on its way.
                    let grace = match outcome.incumbent_fate {
                        IncumbentFate::Gone => EXIT_GRACE,
                        _ => Duration::ZERO,
                    };
                    outcome.incumbent_fate = if self.incumbent_exited(incumbent_pid, grace) {
                        IncumbentFate::Gone
                    } else {
                        IncumbentFate::Unresponsive
                    };
                }
                tracing::warn!(
                    reason = report.abort_reason.as_deref().unwrap_or("unknown"),
                    incumbent_fate = ?outcome.incumbent_fate,
                    duration_ms = report.duration_ms,
                    "handoff aborted; the incumbent serves on"
                );
                let reason = report.abort_reason.as_deref().unwrap_or("unknown");
                match outcome.incumbent_fate {
                    IncumbentFate::Gone => {
                        // The monitor restarts it once this handoff lets go.
                        tracing::warn!(
                            pid = incumbent_pid,
                            "the incumbent exited during the handoff"
                        );
                        format!("handoff aborted ({reason}) and the daemon exited; restarting it")
                    }
                    IncumbentFate::Unresponsive => {
                        tracing::warn!(
                            pid = incumbent_pid,
                            "the incumbent stopped answering during the handoff, but its \
                             process is alive (stopped, frozen or hung?); it serves again by \
                             itself once it runs, and is not restarted"
                        );
                        format!(
                            "pid {incumbent_pid} alive but not answering (handoff aborted: \
                             {reason})"
                        )
                    }
                    _ => format!("serving: pid {incumbent_pid} (handoff aborted: {reason})"),
                }
            }
        };
        // The library finishes removing the journal record in the
        // background; the trigger's answer waits for it, so that an operator
        // who hears the outcome finds nothing pending on disk.
        if outcome.journal_failed || !self.supervisor.flush_journal() {
            let journal = self.config.journal.as_deref().unwrap_or(Path::new(""));
            tracing::warn!(
                journal = %journal.display(),
                "a journal write failed during this handoff: a supervisor restarted after a \
                 crash would not know where a handoff stood; check that the journal's \
                 directory exists and is writable"
            );
        }
        self.handoffs.fetch_add(1, Ordering::SeqCst);
        drop(in_flight);
        // The turn goes before anyone hears of the outcome, so that whoever
        // acts on the news finds it free.
        drop(turn);
        if report.committed {
            self.changed.notify_all();
            self.monitor_wake.wake();
        }
        self.notifier.ready(&serving);
        Ok(report)
    }
}

/// The abort reason as one line of text: the protocol's reason, and what
/// the operating system or the incumbent said about it.
fn abort_text(outcome: &HandoffOutcome) -> Option<String> {
    let reason = outcome.result.as_ref().err()?;
    let mut text = reason.to_string();
    if let (AbortReason::SealFailed, Some(e)) = (reason, &outcome.seal_error) {
        text.push_str(": ");
        text.push_str(e);
    }
    if let Some(d) = &outcome.detail {
        text.push_str(" (");
        text.push_str(d);
        text.push(')');
    }
    Some(one_line(&text).into_owned())
}

/// One event per phase the handoff reached, inside its span.
fn log_phases(outcome: &HandoffOutcome) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let t = &outcome.timings;
    if let Some(d) = t.connect {
        tracing::info!(
            phase = "connect",
            ms = ms(d),
            attempts = outcome.connect_attempts,
            "connected to the incumbent"
        );
    }
    if let Some(d) = t.incumbent_hello {
        tracing::info!(
            phase = "incumbent_hello",
            ms = ms(d),
            incumbent_pid = outcome.incumbent_pid,
            "the incumbent said hello"
        );
    }
    if let Some(d) = t.spawn {
        tracing::info!(
            phase = "spawn",
            ms = ms(d),
            successor_pid = outcome.successor_pid,
            "spawned the successor"
        );
    }
    if let Some(d) = t.successor_hello {
        tracing::info!(
            phase = "successor_hello",
            ms = ms(d),
            "the successor said hello"
        );
    }
    if let Some(d) = t.drain {
        let remaining = outcome.drained.map(|r| r.open_conns_remaining);
        tracing::info!(
            phase = "drain",
            ms = ms(d),
            open_conns_remaining = remaining,
            "the incumbent drained"
        );
    }
    if let Some(d) = t.seal {
        tracing::info!(
            phase = "seal",
            ms = ms(d),
            revisions = ?outcome.sealed_revisions,
            "the incumbent sealed its state and released the lock"
        );
    }
    if let Some(d) = t.begin_to_ready {
        tracing::info!(
            phase = "begin_to_ready",
            ms = ms(d),
            healthz_ok = outcome.healthz_ok,
            listening_on = ?outcome.listening_on,
            "the successor is ready"
        );
    }
    if let Some(d) = t.commit {
        tracing::info!(phase = "commit", ms = ms(d), "committed");
    }
}

/// The Unix listeners' socket files this service created, removed when it
/// ends (or fails to start), if they are still the same files.
#[derive(Debug)]
struct SocketFiles(Vec<(PathBuf, (u64, u64))>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for (path, id) in &self.0 {
            listeners::remove_if_same(path, *id);
        }
    }
}

/// Options of a [`Service`] that are not in the configuration file.
#[derive(Debug)]
pub struct ServiceBuilder {
    config: Config,
    request_timeout: Duration,
    startup_timeout: Duration,
    stop_grace: Duration,
    inherited: Option<InheritedListeners>,
    notifier: Option<Notifier>,
}

impl ServiceBuilder {
    /// How long a trigger client may take to send its request line before
    /// it is dropped (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a cold-started daemon may take to answer on its control
    /// socket (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Between `SIGTERM` and `SIGKILL` when stopping daemons (default
    /// 10 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Listeners passed by the service manager, already taken from the
    /// environment (see [`handoff_std::os::env::take_startup_env`]); each
    /// configured listener of the same name is adopted instead of bound.
    pub fn inherited_listeners(mut self, listeners: InheritedListeners) -> Self {
        self.inherited = Some(listeners);
        self
    }

    /// Where to report readiness (default: [`Notifier::from_env`]).
    pub fn notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Binds the listeners, starts the daemon and the service's threads.
    ///
    /// Without [`ServiceBuilder::inherited_listeners`], a process started
    /// with `LISTEN_FDS` takes its listeners from the environment here,
    /// which edits the environment: in a program with other threads, take
    /// them first thing in `main` and pass them in instead.
    pub fn start(self) -> Result<Service, ServiceError> {
        Service::start_with(self)
    }
}

/// One supervised daemon, kept running and handed off on request.
#[derive(Debug)]
pub struct Service {
    inner: Arc<Inner>,
    listener_addrs: Vec<(String, String)>,
    trigger_wake: Waker,
    threads: Vec<JoinHandle<()>>,
    stopped: bool,
    /// Dropped after `Drop::drop` has stopped the daemons.
    _socket_files: SocketFiles,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Options beyond the configuration file.
    pub fn builder(config: Config) -> ServiceBuilder {
        ServiceBuilder {
            config,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            inherited: None,
            notifier: None,
        }
    }

    /// Starts with the default options: binds (or adopts) the listeners,
    /// cold-starts the daemon, waits until it serves, binds the trigger
    /// socket and starts the trigger server and the monitor.
    pub fn start(config: Config) -> Result<Service, ServiceError> {
        Service::builder(config).start()
    }

    fn start_with(b: ServiceBuilder) -> Result<Service, ServiceError> {
        let config = b.config;
        let inherited = match b.inherited {
            Some(l) => Some(l),
            None if std::env::var_os(handoff_std::os::env::LISTEN_FDS).is_some() => {
                let env = handoff_std::os::env::take_startup_env().map_err(ServiceError::Env)?;
                if env.control.is_some() {
                    tracing::warn!(
                        "started as a handoff successor (HANDOFF_ROLE is set); a supervisor \
                         is not handed off, ignoring its control socket"
                    );
                }
                Some(env.listeners)
            }
            None => None,
        };
        let bound = listeners::open_all(&config.listeners, inherited)?;
        let listener_addrs: Vec<(String, String)> = bound
            .iter()
            .map(|l| (l.name.clone(), l.local_addr.clone()))
            .collect();
        let socket_files = SocketFiles(
            bound
                .iter()
                .filter_map(|l| l.created_file.clone())
                .collect(),
        );
        let mut supervisor =
            Supervisor::new(&config.control_socket).map_err(ServiceError::Supervisor)?;
        for l in bound {
            let fd: OwnedFd = l.fd;
            supervisor = supervisor
                .with_listener(l.name, fd)
                .map_err(ServiceError::Supervisor)?;
        }
        if let Some(journal) = &config.journal {
            supervisor = supervisor.with_journal(journal);
            match supervisor.resume_from_journal() {
                Ok(None) => tracing::debug!(journal = %journal.display(), "no unfinished handoff"),
                Ok(Some(r)) => tracing::warn!(
                    handoff_id = %r.handoff_id,
                    phase = %r.phase,
                    incumbent_pid = r.incumbent_pid,
                    successor_pid = r.successor_pid,
                    after_seal = r.phase.after_seal(),
                    "an earlier supervisor stopped during a handoff; its daemons settle by \
                     themselves (the incumbent resumes, or a ready successor serves on), but \
                     one that still runs keeps the data-dir lock and the daemon started now \
                     cannot take it: stop it if the start fails"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    journal = %journal.display(),
                    "cannot read the journal (if it holds a record, it was left in place); \
                     handoffs go on, but a journal that cannot be written is not kept"
                ),
            }
        }

        let (monitor_wake, monitor_rx) = Waker::pair().map_err(ServiceError::Io)?;
        let (trigger_wake, trigger_rx) = Waker::pair().map_err(ServiceError::Io)?;
        let trigger = trigger::TriggerSocket::bind(&config.trigger_socket, &config.allowed_uids)
            .map_err(|source| ServiceError::TriggerSocket {
                path: config.trigger_socket.clone(),
                source,
            })?;
        let policy = PeerPolicy::with_allowed_uids(config.allowed_uids.clone());
        let binary = config.binary.clone();
        let inner = Arc::new(Inner {
            config,
            supervisor,
            state: Mutex::new(State {
                incumbent: None,
                retired: Vec::new(),
                restarting: false,
                binary: binary.clone(),
                restart_backoff: Duration::ZERO,
            }),
            changed: Condvar::new(),
            handoff_lock: Mutex::new(()),
            in_flight: AtomicBool::new(false),
            handoffs: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            notifier: b.notifier.unwrap_or_else(Notifier::from_env),
            policy,
            request_timeout: b.request_timeout,
            startup_timeout: b.startup_timeout,
            stop_grace: b.stop_grace,
            monitor_wake,
        });

        let proc = inner
            .start_daemon(&binary)
            .map_err(|e| ServiceError::DaemonStart {
                binary: binary.clone(),
                reason: e.to_string(),
            })?;
        let pid = proc.pid();
        tracing::info!(pid, binary = %binary.display(), "the daemon serves");
        lock(&inner.state).incumbent = Some(proc);

        let mut service = Service {
            inner: inner.clone(),
            listener_addrs,
            _socket_files: socket_files,
            trigger_wake,
            threads: Vec::new(),
            stopped: false,
        };
        // From here on, dropping `service` on an error stops the daemon.
        let monitor = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("handoff-monitor".into())
                .spawn(move || crate::monitor::run(&inner, &monitor_rx))
                .map_err(ServiceError::Io)?
        };
        service.threads.push(monitor);
        let server = std::thread::Builder::new()
            .name("trigger-accept".into())
            .spawn(move || trigger.serve(&inner, &trigger_rx))
            .map_err(ServiceError::Io)?;
        service.threads.push(server);

        service
            .inner
            .notifier
            .ready(&format!("serving: {} pid {pid}", binary.display()));
        Ok(service)
    }

    /// Runs one handoff to `binary` (default: the configured binary) and
    /// waits for its outcome. Refused at once if another handoff or a
    /// restart is running, or if `binary` is neither the configured binary
    /// nor in `allowed_binaries`.
    pub fn handoff(&self, binary: Option<&Path>) -> Result<HandoffReport, ServiceError> {
        self.inner.handoff(binary)
    }

    /// The serving pid, the handoff count and whether one runs.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Tells systemd that a reload (`SIGHUP`) was refused, with `why`:
    /// `RELOADING=1` at once followed by `READY=1`. Under
    /// `Type=notify-reload` systemd waits for a `RELOADING=1` after each
    /// `SIGHUP` it sends, and would otherwise wait out its timeout.
    pub fn reload_refused(&self, why: &str) {
        let notifier = &self.inner.notifier;
        notifier.reloading(&format!("reload refused: {why}"));
        let status = self.status();
        let serving = match status.incumbent_pid {
            Some(pid) => format!("serving: pid {pid}"),
            None => "no daemon running".to_owned(),
        };
        notifier.ready(&format!("{serving}; reload refused: {why}"));
    }

    /// Each listener's name and the address it is bound to, as the kernel
    /// reports it (with the port it chose for `:0`), in configuration order.
    pub fn listener_addrs(&self) -> Vec<(String, String)> {
        self.listener_addrs.clone()
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Waits until a daemon other than `not` serves, at most `timeout`;
    /// returns its pid. With `not = None`, waits for any serving daemon.
    pub fn wait_for_incumbent(&self, not: Option<u32>, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.inner.state);
        loop {
            let pid = st.incumbent.as_ref().map(Proc::pid);
            if pid.is_some() && pid != not {
                return pid;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops the service: no more triggers, waits for a handoff in flight
    /// (bounded by its deadline), `SIGTERM` to every daemon (`SIGKILL` after
    /// the stop grace), reaps them, stops the threads and removes the
    /// trigger socket. Dropping the service does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let inner = &self.inner;
        tracing::info!("stopping");
        inner.stopping.store(true, Ordering::SeqCst);
        inner.notifier.stopping("stopping the daemon");
        self.trigger_wake.wake();
        inner.monitor_wake.wake();
        // The monitor may be waiting for a handoff to end before it acts;
        // it sees `stopping` once it gets its turn, and returns.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _turn = lock(&inner.handoff_lock);
        let mut procs: Vec<Proc> = {
            let mut st = lock(&inner.state);
            let mut all: Vec<Proc> = st.incumbent.take().into_iter().collect();
            all.append(&mut st.retired);
            all
        };
        inner.changed.notify_all();
        let mut children: Vec<std::process::Child> = procs.drain(..).map(|p| p.child).collect();
        let pids: Vec<u32> = children.iter().map(std::process::Child::id).collect();
        let statuses = daemon::stop_all(&mut children, inner.stop_grace);
        for (pid, status) in pids.iter().zip(statuses) {
            match status {
                Some(s) => tracing::info!(pid, status = %s, "the daemon stopped"),
                None => tracing::error!(pid, "the daemon did not die even from SIGKILL"),
            }
        }
        tracing::info!("stopped");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
