//! The handoff procedure: one handoff from the incumbent to a new binary,
//! run on the caller's thread ([`Service::handoff`](crate::Service::handoff))
//! or a trigger connection's. It checks the binary, takes the handoff turn,
//! runs the protocol through `handoff_std`'s supervisor, puts the successor
//! in the incumbent's place when it commits, finds out what became of the
//! incumbent when it aborts, logs each phase and tells systemd the outcome.

use handoff_std::PerformHandoff;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::TryLockError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use handoff_std::os::process::poll_readable;
use handoff_std::{AbortReason, HandoffOutcome, IncumbentFate, PhaseTimings, SpawnSpec};

use crate::client::HandoffReply;
use crate::daemon::Proc;
use crate::error::ServiceError;
use crate::state::{Inner, lock};
use crate::text::one_line;

/// The successor's start-up budget before its `Hello` (capped by the
/// handoff deadline).
const STARTUP_BUDGET: Duration = Duration::from_secs(30);

/// How long an incumbent whose session closed during a handoff is given to
/// finish exiting before it is taken for alive.
const EXIT_GRACE: Duration = Duration::from_millis(250);

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
    /// Whether the new binary served (it sent `Ready`) and was rolled back
    /// to the old one.
    pub rolled_back: bool,
    /// Health probe attempts that passed during probation.
    pub probes_passed: u32,
    /// Open connections the old binary passed to the new one, if passing
    /// was set up.
    pub connections_passed: Option<u32>,
    /// Time spent in each phase; `probation` is how long the new binary
    /// served on probation, if it was put on probation (the old one
    /// offered it and `probation_ms` is not 0).
    pub timings: PhaseTimings,
}

impl HandoffReport {
    /// The trigger protocol's view of it.
    pub fn reply(&self) -> HandoffReply {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        HandoffReply {
            handoff_id: self.handoff_id.clone(),
            committed: self.committed,
            abort_reason: self.abort_reason.clone(),
            rolled_back: self.rolled_back,
            phases_ms: phases(&self.timings)
                .into_iter()
                .map(|(name, d)| (name.to_owned(), ms(d)))
                .collect(),
            connections_passed: self.connections_passed,
            duration_ms: self.duration_ms,
        }
    }

    /// The trigger protocol's reply line, without its newline.
    pub fn reply_line(&self) -> String {
        self.reply().to_line()
    }
}

impl Inner {
    /// Whether the incumbent `pid` has exited (or was reaped, or replaced),
    /// waiting up to `bound` for it. The pidfd is opened while the state
    /// holds the process unreaped, so it names that process and no other.
    fn incumbent_exited(&self, pid: u32, bound: Duration) -> bool {
        let watch = {
            let st = lock(&self.state);
            match st.incumbent.as_ref() {
                Some(p) if p.pid() == pid => p.exit_watch(),
                _ => return true,
            }
        };
        match watch {
            Some(w) => poll_readable(&[w.as_fd()], Some(bound)).is_ok_and(|r| r[0]),
            // No pidfd (an old kernel): no way to tell from here; the
            // session's end is taken for an exit, as the library reports
            // it, and the monitor restarts it only if it did exit.
            None => true,
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
            probation: self.config.probation(),
            probe: self.config.probe(),
            pass_connections: self.config.pass_connections,
        };
        if let Some(command) = spec.probe.as_ref().and_then(crate::config::probe_command)
            && let Err(e) = crate::trust::check_binary(command)
        {
            // Checked again as for the binary: the probe runs as our user.
            tracing::warn!(error = %e, "refused a handoff: the health probe's command is untrusted");
            return Err(ServiceError::UntrustedBinary {
                binary: command.to_path_buf(),
                reason: e.to_string(),
            });
        }
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
            rolled_back: outcome.rolled_back(),
            probes_passed: outcome.probes_passed,
            connections_passed: outcome.connections_passed,
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
                st.incumbent = Some(Proc::child(child));
                st.binary = binary;
                // A new binary took over: an earlier run of quick deaths
                // says nothing about it.
                st.restart_backoff = Duration::ZERO;
                drop(st);
                tracing::info!(
                    successor_pid = pid,
                    duration_ms = report.duration_ms,
                    probation_ms = report.timings.probation.map(|d| d.as_secs_f64() * 1e3),
                    probes_passed = report.probes_passed,
                    connections_passed = report.connections_passed,
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
                if report.rolled_back {
                    tracing::warn!(
                        reason = report.abort_reason.as_deref().unwrap_or("unknown"),
                        successor_pid = report.successor_pid,
                        incumbent_fate = ?outcome.incumbent_fate,
                        duration_ms = report.duration_ms,
                        "the new binary served and was rolled back; the old one serves again"
                    );
                } else {
                    tracing::warn!(
                        reason = report.abort_reason.as_deref().unwrap_or("unknown"),
                        incumbent_fate = ?outcome.incumbent_fate,
                        duration_ms = report.duration_ms,
                        "handoff aborted; the incumbent serves on"
                    );
                }
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
    if let (AbortReason::HealthProbeFailed, Some(e)) = (reason, &outcome.probe_failure) {
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

/// Each phase the handoff reached, in order, with its time.
fn phases(t: &PhaseTimings) -> Vec<(&'static str, Duration)> {
    [
        ("connect", t.connect),
        ("incumbent_hello", t.incumbent_hello),
        ("spawn", t.spawn),
        ("successor_hello", t.successor_hello),
        ("drain", t.drain),
        ("seal", t.seal),
        ("begin_to_ready", t.begin_to_ready),
        ("probation", t.probation),
        ("commit", t.commit),
    ]
    .into_iter()
    .filter_map(|(name, d)| d.map(|d| (name, d)))
    .collect()
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
    if let Some(d) = t.probation {
        tracing::info!(
            phase = "probation",
            ms = ms(d),
            probes_passed = outcome.probes_passed,
            "probation over"
        );
    }
    if let Some(d) = t.commit {
        tracing::info!(phase = "commit", ms = ms(d), "committed");
    }
}
