//! [`ServiceError`]: why the service could not start or a request could
//! not run, with the operator's fix in its message where there is one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use handoff_std::SupervisorError;
use handoff_std::os::env::EnvError;
use handoff_std::os::listeners::ListenerError;

use crate::config::ListenerKind;

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
    /// A daemon serves the control socket (left by a supervisor that
    /// crashed) but cannot be adopted; it was left serving as it was.
    Adopt {
        /// The control socket.
        control_socket: PathBuf,
        /// The daemon's pid, if one answered.
        pid: Option<u32>,
        /// Why not.
        reason: String,
    },
    /// The adopted daemon's listeners are not the configured ones; it was
    /// left serving as it was.
    AdoptMismatch {
        /// The daemon's pid.
        pid: u32,
        /// What differs.
        detail: String,
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
            ServiceError::Adopt {
                control_socket,
                pid,
                reason,
            } => {
                write!(
                    f,
                    "a daemon serves the control socket {} but cannot be adopted: {reason}. ",
                    control_socket.display()
                )?;
                match pid {
                    Some(pid) => write!(
                        f,
                        "It serves on, untouched. To supervise it, stop it (kill {pid}) and \
                         start the supervisor again, which starts the daemon afresh; or run \
                         a daemon build that offers its listeners"
                    ),
                    None => f.write_str(
                        "Nothing was changed; check the control socket's permissions and \
                         that it is a socket",
                    ),
                }
            }
            ServiceError::AdoptMismatch { pid, detail } => write!(
                f,
                "pid {pid} serves the control socket, but its listeners do not match the \
                 configuration: {detail}. It serves on, untouched. Start the supervisor with \
                 the configuration that daemon was started with, or stop it (kill {pid}) and \
                 start the supervisor again"
            ),
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
