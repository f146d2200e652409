//! Starting after a crash: a daemon left serving by a supervisor that died
//! is adopted, not fought. Before it binds anything, the service asks the
//! control socket who serves there; a daemon that answers gives its
//! listening sockets over (`handoff_std::adopt`, docs/PROTOCOL.md section
//! 9), they are checked against the configuration, and the daemon is
//! watched, handed off and stopped as if this supervisor had started it.
//! The journal the dead supervisor left says which handoff was in flight;
//! it is compared with what is found, for the log.

use std::path::PathBuf;
use std::time::Duration;

use handoff_std::os::process::pid_alive;
use handoff_std::{AdoptError, Adopted, JournalRecord};

use crate::config::Config;
use crate::error::ServiceError;

/// Finds the daemon serving `config`'s control socket and adopts it, or
/// `None` if nothing serves there (then the caller starts one). Trying for
/// at most `bound` while what answers is in transition; a daemon that
/// cannot be adopted (it does not offer its listeners, or breaks the
/// exchange) is an error that names its pid and what to do, and is left
/// serving as it was.
pub(crate) fn find(
    config: &Config,
    record: Option<&JournalRecord>,
    bound: Duration,
) -> Result<Option<Adopted>, ServiceError> {
    let path = &config.control_socket;
    // The processes of an interrupted handoff: while one runs, an empty
    // control socket may be a moment in which the path changes hands
    // (docs/PROTOCOL.md section 6.3), not an absence.
    let journal_pids: Vec<u32> = record
        .map(|r| {
            std::iter::once(r.incumbent_pid)
                .chain(r.successor_pid)
                .collect()
        })
        .unwrap_or_default();
    if !journal_pids.is_empty() {
        tracing::debug!(
            pids = ?journal_pids,
            "the journal names processes of an interrupted handoff; waiting for the control \
             socket to settle while one runs"
        );
    }
    handoff_std::adopt_settled(path, &journal_pids, bound).map_err(|e| refused(path, &e))
}

fn refused(path: &std::path::Path, e: &AdoptError) -> ServiceError {
    ServiceError::Adopt {
        control_socket: path.to_path_buf(),
        pid: e.pid(),
        reason: e.to_string(),
    }
}

/// Says in the log how the handoff the journal records ended, now that
/// `pid` is found serving.
pub(crate) fn reconcile(record: Option<&JournalRecord>, pid: u32) {
    let Some(r) = record else {
        tracing::info!(pid, "adopted the daemon serving the control socket");
        return;
    };
    let outcome = if r.successor_pid == Some(pid) {
        "its successor took over (it was Ready, and is authoritative from then on)"
    } else if r.incumbent_pid == pid {
        "it was undone: the incumbent serves on"
    } else {
        "neither of its processes serves: this one came later"
    };
    tracing::warn!(
        pid,
        handoff_id = %r.handoff_id,
        phase = %r.phase,
        incumbent_pid = r.incumbent_pid,
        successor_pid = r.successor_pid,
        "the last supervisor stopped during handoff {}: {outcome}; adopted pid {pid}",
        r.handoff_id
    );
    for other in std::iter::once(r.incumbent_pid).chain(r.successor_pid) {
        if other != pid && pid_alive(other) {
            tracing::info!(
                pid = other,
                "a process of that handoff still runs; if it is the other daemon it exits by \
                 itself (it no longer holds the data-dir lock)"
            );
        }
    }
}

/// The binary `pid` runs, if it is one this configuration may run, so that
/// a restart of an adopted daemon keeps its build; otherwise the
/// configured `binary`, and a warning.
pub(crate) fn binary_of(config: &Config, pid: u32) -> PathBuf {
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) if config.binary_allowed(&exe) || exe == config.binary => exe,
        Ok(exe) => {
            tracing::warn!(
                pid,
                exe = %exe.display(),
                binary = %config.binary.display(),
                "the adopted daemon runs a binary that is neither `binary` nor in \
                 `allowed_binaries`; a restart will run `binary`"
            );
            config.binary.clone()
        }
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot read the adopted daemon's binary");
            config.binary.clone()
        }
    }
}
