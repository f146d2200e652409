//! What every thread of the service shares: the processes ([`State`])
//! under their mutex, and the rest of [`Inner`], which the caller's thread,
//! the trigger threads and the monitor each hold through an `Arc`; the
//! lock helper and the wake-up pipes they signal each other with; and the
//! [`Status`] snapshot of it all that `status` reports.
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
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use handoff_std::Supervisor;
use handoff_std::os::control::PeerPolicy;
use handoff_std::os::spawn::PassedListener;

use crate::config::Config;
use crate::daemon::{self, Proc, StartError};
use crate::notify::Notifier;

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
    /// The new binary's pid while a handoff holds it on probation.
    pub on_probation: Option<u32>,
}

/// How long `status` waits for the daemon's `Hello` on its control socket.
/// A serving daemon answers in well under a millisecond; this is the
/// margin for a loaded machine, and short enough that `status` itself
/// stays quick.
pub const STATUS_PROBE: Duration = Duration::from_millis(500);

/// Locks a mutex, carrying on after a panic elsewhere: the state it guards
/// is replaced whole, never left half-updated.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One end of a wake-up pipe, written to say "look again".
#[derive(Debug)]
pub(crate) struct LoopWaker(UnixStream);

impl LoopWaker {
    /// A waker and the end to poll.
    pub(crate) fn pair() -> io::Result<(LoopWaker, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((LoopWaker(tx), rx))
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
    pub(crate) monitor_wake: LoopWaker,
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
            Some(pid) if !in_flight && !restarting => Some(self.answers(pid)),
            _ => None,
        };
        Status {
            incumbent_pid,
            handoffs: self.handoffs.load(Ordering::SeqCst),
            in_flight,
            answering,
            on_probation: self.supervisor.successor_on_probation(),
        }
    }
}

impl Inner {
    /// The serving daemon's pid, without asking it anything.
    pub(crate) fn incumbent_pid(&self) -> Option<u32> {
        lock(&self.state).incumbent.as_ref().map(Proc::pid)
    }

    /// Whether `pid` answers the control socket with its `Hello` within
    /// [`STATUS_PROBE`]. Right after a commit the path may still name the
    /// old daemon's socket, or none, until the new one renames its own over
    /// it (docs/PROTOCOL.md section 6.3): that is tried again, as a handoff
    /// does, until the bound.
    fn answers(&self, pid: u32) -> bool {
        let until = Instant::now() + STATUS_PROBE;
        loop {
            if crate::daemon::probe(&self.config.control_socket, until) == Some(pid) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(handoff_core::defaults::CONNECT_RETRY_INTERVAL.min(left));
        }
    }
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not `status()`: that asks the daemon.
        f.debug_struct("Inner")
            .field("config", &self.config)
            .field("incumbent_pid", &self.incumbent_pid())
            .finish_non_exhaustive()
    }
}
