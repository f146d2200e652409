//! The monitor thread: waits on the exit of every daemon process we own,
//! reaps retired incumbents as they finish, and restarts the incumbent when
//! it dies outside a handoff. It sleeps in `poll(2)` on pidfds and a wake-up
//! pipe, so it costs nothing while all is well and reacts at once.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use handoff_std::os::process::{ExitWatch, poll_readable};

use crate::daemon::{Ended, StartError};
use crate::state::{Inner, drain_wakes, lock};

/// A daemon that dies sooner than this after it began to serve is failing
/// at start, and restarting it at once would spin. One that served longer
/// was healthy: its death starts the count of quick deaths anew.
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// The first pause after a quick death.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between restarts. While a daemon keeps dying at start
/// nobody is served either way; the pause only bounds the CPU and log a
/// crash loop costs. Longer would leave the service down that much longer
/// after the cause is fixed (a new build installed, a full disk freed),
/// since the next attempt waits out the pause; 10 s keeps a crash loop to
/// a few starts a minute and the outage after a fix under 10 s.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often to look at a process that no pidfd watches (kernels before
/// 5.3).
const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// The pause before the next restart, after one of `prev`.
pub(crate) fn next_backoff(prev: Duration) -> Duration {
    if prev.is_zero() {
        FIRST_BACKOFF
    } else {
        (prev * 2).min(MAX_BACKOFF)
    }
}

/// The thread's body; returns once the service is stopping.
pub(crate) fn run(inner: &Inner, wake: &UnixStream) {
    let mut watches: Vec<(u32, Option<ExitWatch>)> = Vec::new();
    loop {
        if inner.stopping() {
            return;
        }
        let incumbent = {
            let st = lock(&inner.state);
            let incumbent = st.incumbent.as_ref().map(|p| p.pid());
            let procs: Vec<&crate::daemon::Proc> =
                st.retired.iter().chain(st.incumbent.as_ref()).collect();
            // A watch is kept exactly as long as its process is in the
            // state; each names that process only (see `Proc::exit_watch`).
            watches.retain(|(pid, _)| procs.iter().any(|p| p.pid() == *pid));
            for p in procs {
                if !watches.iter().any(|(pid, _)| *pid == p.pid()) {
                    watches.push((p.pid(), p.exit_watch()));
                }
            }
            incumbent
        };
        let mut fds: Vec<BorrowedFd<'_>> = vec![wake.as_fd()];
        fds.extend(
            watches
                .iter()
                .filter_map(|(_, w)| w.as_ref().map(AsFd::as_fd)),
        );
        let timeout = watches
            .iter()
            .any(|(_, w)| w.is_none())
            .then_some(FALLBACK_POLL);
        if let Err(e) = poll_readable(&fds, timeout) {
            tracing::error!(error = %e, "the monitor cannot wait on its daemons; retrying");
            std::thread::sleep(FALLBACK_POLL);
        }
        drain_wakes(wake);
        if inner.stopping() {
            return;
        }
        reap_retired(inner);
        if let Some(exit) = incumbent_exit(inner, incumbent) {
            recover(inner, wake, &exit);
        }
    }
}

/// How the incumbent ended.
struct Exit {
    pid: u32,
    status: Ended,
    uptime: Duration,
}

/// Reaps the incumbents handed off from that have finished.
fn reap_retired(inner: &Inner) {
    let mut st = lock(&inner.state);
    st.retired.retain_mut(|p| match p.try_ended() {
        Ok(Some(status)) => {
            tracing::info!(pid = p.pid(), %status, "the incumbent handed off from has exited");
            false
        }
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(pid = p.pid(), error = %e, "cannot wait on a retired incumbent");
            false
        }
    });
}

/// If the incumbent we were watching (`watched`) is still the incumbent and
/// has exited, reaps it, takes it out of the state and says how it ended.
fn incumbent_exit(inner: &Inner, watched: Option<u32>) -> Option<Exit> {
    let mut st = lock(&inner.state);
    let p = st.incumbent.as_mut()?;
    if Some(p.pid()) != watched {
        // A handoff replaced it since; the old one is retired now.
        return None;
    }
    let status = p.try_ended().ok()??;
    let p = st.incumbent.take()?;
    drop(st);
    inner.changed.notify_all();
    Some(Exit {
        pid: p.pid(),
        status,
        uptime: p.started.elapsed(),
    })
}

/// After the incumbent exited: waits for a handoff in flight to end (it may
/// have committed, and then its successor serves and there is nothing to
/// do), then starts a new incumbent, pausing first while the daemon keeps
/// dying at start, until one serves or the service stops.
fn recover(inner: &Inner, wake: &UnixStream, exit: &Exit) {
    {
        let _turn = lock(&inner.handoff_lock);
        if inner.stopping() {
            return;
        }
        if let Some(new) = lock(&inner.state).incumbent.as_ref() {
            tracing::debug!(
                pid = exit.pid,
                %exit.status,
                successor_pid = new.pid(),
                "the incumbent exited as a handoff committed"
            );
            return;
        }
    }
    tracing::warn!(
        pid = exit.pid,
        status = %exit.status,
        uptime_s = exit.uptime.as_secs_f64(),
        "the daemon exited outside a handoff; restarting it"
    );
    inner.notifier.status(&format!(
        "the daemon (pid {}) exited ({}); restarting it",
        exit.pid, exit.status
    ));
    let mut quick = exit.uptime < QUICK_DEATH;
    if !quick {
        lock(&inner.state).restart_backoff = Duration::ZERO;
    }
    loop {
        if quick {
            // Kept in the shared state: a committed handoff resets it.
            let backoff = {
                let mut st = lock(&inner.state);
                st.restart_backoff = next_backoff(st.restart_backoff);
                st.restart_backoff
            };
            tracing::info!(
                pause_ms = backoff.as_millis() as u64,
                "the daemon keeps dying at start; pausing before the restart"
            );
            if !pause(inner, wake, backoff) {
                return;
            }
        }
        let _turn = lock(&inner.handoff_lock);
        let binary = {
            let mut st = lock(&inner.state);
            if inner.stopping() || st.incumbent.is_some() {
                return;
            }
            st.restarting = true;
            st.binary.clone()
        };
        let result = inner.start_daemon(&binary);
        match result {
            Ok(proc) => {
                let pid = proc.pid();
                tracing::info!(pid, binary = %binary.display(), "restarted the daemon");
                lock(&inner.state).incumbent = Some(proc);
                // The turn goes before anyone hears of the new daemon, so
                // that whoever acts on the news finds the turn free.
                drop(_turn);
                lock(&inner.state).restarting = false;
                inner.changed.notify_all();
                inner.notifier.status(&format!(
                    "serving: {} pid {pid} (restarted)",
                    binary.display()
                ));
                return;
            }
            Err(StartError::Stopping) => {
                lock(&inner.state).restarting = false;
                return;
            }
            Err(e) => {
                lock(&inner.state).restarting = false;
                tracing::error!(binary = %binary.display(), error = %e, "the restart failed");
                quick = true;
            }
        }
    }
}

/// Waits `how_long` unless the service stops first; `false` if it did.
fn pause(inner: &Inner, wake: &UnixStream, how_long: Duration) -> bool {
    let until = Instant::now() + how_long;
    loop {
        if inner.stopping() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        // Any wake-up is a reason to look at `stopping`; the others (none
        // are expected while no daemon runs) are harmless to swallow.
        if poll_readable(&[wake.as_fd()], Some(left)).is_err() {
            std::thread::sleep(left.min(FALLBACK_POLL));
        }
        drain_wakes(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_10_s() {
        let mut b = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(
            seen,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
    }
}
