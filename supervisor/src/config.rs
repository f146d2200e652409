//! The configuration file: the reference supervisor's TOML schema, read
//! strictly. Every table refuses keys it does not know, so a misspelt key is
//! an error that names it instead of a default silently taking its place,
//! and everything that can be checked before a socket is bound or a process
//! spawned is checked here, with the file named in the message.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use handoff_std::os::spawn::validate_listener_names;
use handoff_std::{HealthProbe, ProbeCheck};
use serde::Deserialize;

/// The default of `drain_grace_secs`.
pub const DEFAULT_DRAIN_GRACE_SECS: u64 = 25;
/// The default of `deadline_secs`.
pub const DEFAULT_DEADLINE_SECS: u64 = 60;
/// The default of a listener's `backlog`.
pub const DEFAULT_BACKLOG: u32 = 1024;
/// The default of `probation_ms`: long enough to catch a new binary that
/// dies on its first requests or fails its first few probes, short enough
/// that a rollout of many hosts is not slowed much (README, "Probation").
pub const DEFAULT_PROBATION_MS: u64 = 5_000;

/// The whole configuration of one supervised daemon.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The daemon's control socket, where it answers handoff sessions.
    pub control_socket: PathBuf,
    /// Where the supervisor accepts `handoff` and `status` requests.
    pub trigger_socket: PathBuf,
    /// The daemon's binary: cold starts, restarts and default handoffs run it.
    /// An absolute path to a file that only root and the supervisor's user
    /// can change, checked when the configuration is read and before each
    /// start.
    pub binary: PathBuf,
    /// Its arguments, on every start (cold, restart, successor).
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables added to the supervisor's environment for the daemon, as
    /// `["NAME", "value"]` pairs.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Where the supervisor journals a handoff's progress, so that a
    /// restarted supervisor can say where a crashed one stopped.
    #[serde(default)]
    pub journal: Option<PathBuf>,
    /// How long the incumbent may take to drain, in seconds.
    #[serde(default = "default_drain_grace_secs")]
    pub drain_grace_secs: u64,
    /// How long a whole handoff may take until the successor is ready, in
    /// seconds.
    #[serde(default = "default_deadline_secs")]
    pub deadline_secs: u64,
    /// Users besides the supervisor's own and root who may use the trigger
    /// socket.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// Binaries a `handoff BINARY` request may name besides `binary`, under
    /// the same rule as `binary` (checked when read if they exist, and
    /// before each handoff to them).
    #[serde(default)]
    pub allowed_binaries: Vec<PathBuf>,
    /// The sockets the supervisor binds once and every daemon inherits.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// After the new binary's `Ready`, how long it serves on probation, in
    /// milliseconds, while the old one waits alive to be rolled back to;
    /// 0 commits at `Ready`.
    #[serde(default = "default_probation_ms")]
    pub probation_ms: u64,
    /// The health probe run against the new binary during probation.
    #[serde(default)]
    pub health_probe: Option<ProbeConfig>,
    /// Whether open client connections are passed from the old binary to
    /// the new one when both offer it (docs/PROTOCOL.md section 11); with
    /// `false` the old binary's drain handles them as without passing.
    #[serde(default = "default_pass_connections")]
    pub pass_connections: bool,
}

/// The `[health_probe]` table: exactly one of `exec`, `tcp` or `http`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// A command and its arguments (an absolute path first); exit status
    /// 0 is healthy. It gets `HANDOFF_SUCCESSOR_PID`.
    #[serde(default)]
    pub exec: Option<Vec<String>>,
    /// `IP:port` to connect to.
    #[serde(default)]
    pub tcp: Option<String>,
    /// With `tcp`: bytes to send once connected.
    #[serde(default)]
    pub send: Option<String>,
    /// With `tcp`: bytes the answer must contain.
    #[serde(default)]
    pub expect: Option<String>,
    /// `IP:port` to send `GET <path>` to; 2xx and 3xx are healthy.
    #[serde(default)]
    pub http: Option<String>,
    /// With `http`: the path (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// From one attempt's start to the next, in milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: u64,
    /// How long one attempt may take, in milliseconds.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
    /// Failures in a row that roll the new binary back.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
}

fn default_pass_connections() -> bool {
    true
}

fn default_probation_ms() -> u64 {
    DEFAULT_PROBATION_MS
}

fn default_probe_interval_ms() -> u64 {
    HealthProbe::DEFAULT_INTERVAL.as_millis() as u64
}

fn default_probe_timeout_ms() -> u64 {
    HealthProbe::DEFAULT_TIMEOUT.as_millis() as u64
}

fn default_failure_threshold() -> u32 {
    HealthProbe::DEFAULT_FAILURE_THRESHOLD
}

/// One `[[listeners]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The name the daemon takes it by (`LISTEN_FDNAMES`).
    pub name: String,
    /// `IP:port` for `tcp` and `udp`, a filesystem path for `unix`.
    pub addr: String,
    /// What kind of socket to bind.
    #[serde(default)]
    pub kind: ListenerKind,
    /// The listen queue of a stream socket (`listen(2)`'s backlog).
    #[serde(default = "default_backlog")]
    pub backlog: u32,
}

/// The kind of a listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// A listening TCP socket.
    #[default]
    Tcp,
    /// A listening Unix stream socket.
    Unix,
    /// A bound UDP socket.
    Udp,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Unix => "unix",
            ListenerKind::Udp => "udp",
        })
    }
}

fn default_drain_grace_secs() -> u64 {
    DEFAULT_DRAIN_GRACE_SECS
}

fn default_deadline_secs() -> u64 {
    DEFAULT_DEADLINE_SECS
}

fn default_backlog() -> u32 {
    DEFAULT_BACKLOG
}

/// Why a configuration was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// The text is not TOML, or does not fit the schema (an unknown key, a
    /// missing one, a value of the wrong type).
    Parse {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The values parse but cannot work together.
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl ConfigError {
    fn with_path(self, file: &Path) -> ConfigError {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(file.to_path_buf()),
                message,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: Some(file.to_path_buf()),
                message,
            },
            other => other,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, what) = match self {
            ConfigError::Read { path, source } => {
                return write!(f, "cannot read config file {}: {source}", path.display());
            }
            ConfigError::Parse { path, message } => (path, message),
            ConfigError::Invalid { path, message } => (path, message),
        };
        match path {
            Some(p) => write!(f, "config file {}: ", p.display())?,
            None => f.write_str("config: ")?,
        }
        // toml's messages span several lines (a snippet of the file); the
        // first carries the position and the problem, which is what a log
        // line needs, but the rest helps a person at a terminal.
        f.write_str(what.trim_end())
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: None,
        message: message.into(),
    }
}

impl Config {
    /// Parses and checks a configuration. The check looks at the
    /// filesystem: `binary` and each of `allowed_binaries` must be absolute
    /// paths to files, and those that exist must be safe to run as this
    /// process's user (owned by root or by it, with no group- or
    /// world-writable file or directory on the way; see the README).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: None,
            message: e.to_string(),
        })?;
        config.validate(true)?;
        Ok(config)
    }

    /// Reads, parses and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_str(&text).map_err(|e| e.with_path(path))
    }

    /// [`Config::load`] as `trigger` and `status` need it, to find the
    /// trigger socket: every check but that of the binaries' files, which
    /// is the running supervisor's to make (as its own user, at each start
    /// and handoff). A client judging them by its own uid would refuse a
    /// file that is safe for the supervisor.
    pub fn load_for_client(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })?;
        config.validate(false).map_err(|e| e.with_path(path))?;
        Ok(config)
    }

    /// The drain grace as a duration.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_secs(self.drain_grace_secs)
    }

    /// The handoff deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(self.deadline_secs)
    }

    /// The probation window as a duration.
    pub fn probation(&self) -> Duration {
        Duration::from_millis(self.probation_ms)
    }

    /// The health probe, as the library runs it (checked by
    /// [`Config::load`]: `None` when none is configured or it is invalid).
    pub fn probe(&self) -> Option<HealthProbe> {
        self.health_probe.as_ref().and_then(|p| p.to_probe().ok())
    }

    /// Whether a handoff may run `binary`: the configured binary or one of
    /// `allowed_binaries`, compared as written (component by component, not
    /// through the filesystem: resolving links here would check one file and
    /// then run whatever the link names by the time of the spawn). Being
    /// allowed is not enough to run: the file must also pass the check of
    /// its owner and modes, at the handoff (a trailing `/`, equal here,
    /// fails that).
    pub fn binary_allowed(&self, binary: &Path) -> bool {
        binary == self.binary || self.allowed_binaries.iter().any(|b| b == binary)
    }

    fn validate(&self, check_files: bool) -> Result<(), ConfigError> {
        if self.binary.as_os_str().is_empty() {
            return Err(invalid(
                "`binary` is empty; set it to the path of the daemon to run",
            ));
        }
        for (key, path) in [
            ("control_socket", &self.control_socket),
            ("trigger_socket", &self.trigger_socket),
        ] {
            check_socket_path(path, true)
                .map_err(|problem| invalid(format!("`{key}` {problem}")))?;
        }
        if self.control_socket == self.trigger_socket {
            return Err(invalid(
                "`control_socket` and `trigger_socket` are the same path; the daemon and the \
                 supervisor each need their own socket",
            ));
        }
        if self.deadline_secs == 0 {
            return Err(invalid(
                "`deadline_secs` is 0; a handoff needs at least a second (default 60)",
            ));
        }
        if self.drain_grace_secs > self.deadline_secs {
            return Err(invalid(format!(
                "`drain_grace_secs` ({}) is longer than `deadline_secs` ({}); the deadline \
                 would cut every slow drain short: raise the deadline or lower the grace",
                self.drain_grace_secs, self.deadline_secs
            )));
        }
        for (name, _) in &self.env {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(invalid(format!(
                    "`env` names a variable {name:?}; a name must be non-empty and contain \
                     neither '=' nor NUL"
                )));
            }
        }
        if let Some(arg) = self.args.iter().find(|a| a.contains('\0')) {
            return Err(invalid(format!(
                "`args` holds {arg:?}, which contains a NUL byte and cannot be passed to a program"
            )));
        }
        if self
            .allowed_binaries
            .iter()
            .any(|b| b.as_os_str().is_empty())
        {
            return Err(invalid("`allowed_binaries` holds an empty path"));
        }
        // The files behind the names, as they are now: the supervisor runs
        // them as its own user (root, in production), so one that another
        // user could change is refused here, before anything is bound. A
        // binary this process cannot see (not installed yet, or in a
        // directory a `trigger` or `status` user may not search) is let
        // through: every start and every handoff checks again, and there it
        // must exist and pass.
        let binaries = std::iter::once(("binary", &self.binary)).chain(
            self.allowed_binaries
                .iter()
                .map(|b| ("allowed_binaries", b)),
        );
        for (key, binary) in binaries.filter(|_| check_files) {
            match crate::trust::check_binary(binary) {
                Ok(()) => {}
                Err(e) if e.is_unseen() => {}
                Err(e) => return Err(invalid(format!("`{key}`: {e}"))),
            }
        }
        if let Some(p) = &self.health_probe {
            let probe = p
                .to_probe()
                .map_err(|m| invalid(format!("[health_probe]: {m}")))?;
            if self.probation_ms == 0 {
                return Err(invalid(
                    "[health_probe] is set but `probation_ms` is 0: the probe runs only \
                     during probation; set `probation_ms` (default 5000) or remove the probe",
                ));
            }
            let needs = probe.time_to_fail();
            if self.probation() < needs {
                return Err(invalid(format!(
                    "`probation_ms` ({}) is shorter than the health probe needs to fail \
                     ({} ms: interval_ms × (failure_threshold − 1) + timeout_ms), so a \
                     failing binary would be committed; raise `probation_ms` or probe more often",
                    self.probation_ms,
                    needs.as_millis()
                )));
            }
            if let (Some(command), true) = (probe_command(&probe), check_files) {
                // The probe runs as the supervisor's user, like a binary.
                match crate::trust::check_binary(command) {
                    Ok(()) => {}
                    Err(e) if e.is_unseen() => {}
                    Err(e) => return Err(invalid(format!("[health_probe] exec: {e}"))),
                }
            }
        }
        validate_listener_names(self.listeners.iter().map(|l| l.name.as_str()))
            .map_err(|e| invalid(format!("[[listeners]]: {e}")))?;
        for l in &self.listeners {
            l.validate()?;
            if l.kind == ListenerKind::Unix {
                for (key, path) in [
                    ("control_socket", &self.control_socket),
                    ("trigger_socket", &self.trigger_socket),
                ] {
                    if Path::new(&l.addr) == path.as_path() {
                        return Err(invalid(format!(
                            "listener {:?} and `{key}` are the same path {}; each socket \
                             needs its own",
                            l.name, l.addr
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The longest path a Unix socket can have: `sun_path` less its NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Whether `path` can name a Unix socket; the problem, worded to follow the
/// key's name, if not. `staged`: the socket is bound under a temporary name
/// beside the path first (the control and trigger sockets, not listeners),
/// which must fit too.
fn check_socket_path(path: &Path, staged: bool) -> Result<(), String> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err("is empty; set it to a path such as /run/<app>/<name>.sock".into());
    }
    if bytes.contains(&0) {
        return Err(format!("{} contains a NUL byte", path.display()));
    }
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is {} bytes long, but a Unix socket path holds at most {MAX_SOCKET_PATH}; \
             choose a shorter one, for example under /run",
            path.display(),
            bytes.len()
        ));
    }
    if !staged {
        return Ok(());
    }
    // The library says how long the directory may be for the temporary name.
    handoff_std::os::control::validate_socket_path(path).map_err(|e| e.to_string())
}

/// The command an exec probe runs, which must pass the checks of a binary
/// (it runs as the supervisor's user): when the configuration is read, and
/// before each handoff.
pub(crate) fn probe_command(probe: &HealthProbe) -> Option<&Path> {
    match &probe.check {
        ProbeCheck::Exec { argv } => argv.first().map(Path::new),
        _ => None,
    }
}

impl ProbeConfig {
    /// The library's probe, or what is wrong with this table.
    pub fn to_probe(&self) -> Result<HealthProbe, String> {
        let addr = |key: &str, a: &str| {
            a.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "`{key}` {a:?} is not an IP address and port such as \"127.0.0.1:8080\" \
                     (host names are not resolved)"
                )
            })
        };
        let check = match (&self.exec, &self.tcp, &self.http) {
            (Some(argv), None, None) => {
                let Some(first) = argv.first() else {
                    return Err("`exec` is empty; give the command and its arguments".into());
                };
                if !Path::new(first).is_absolute() {
                    return Err(format!(
                        "`exec` starts with {first:?}; the command must be an absolute path \
                         (it runs as the supervisor's user, without a PATH search)"
                    ));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err("`exec` holds a NUL byte".into());
                }
                ProbeCheck::Exec {
                    argv: argv.iter().map(Into::into).collect(),
                }
            }
            (None, Some(a), None) => ProbeCheck::Tcp {
                address: addr("tcp", a)?,
                send: self.send.clone().unwrap_or_default().into_bytes(),
                expect: self.expect.clone().unwrap_or_default().into_bytes(),
            },
            (None, None, Some(a)) => {
                let path = self.path.clone().unwrap_or_else(|| "/".into());
                if !path.starts_with('/') || path.contains(char::is_whitespace) {
                    return Err(format!(
                        "`path` {path:?} must start with / and hold no spaces or line breaks"
                    ));
                }
                ProbeCheck::Http {
                    address: addr("http", a)?,
                    path,
                }
            }
            _ => {
                return Err(
                    "give exactly one of `exec` (a command), `tcp` (an address) or `http` \
                     (an address)"
                        .into(),
                );
            }
        };
        if (self.send.is_some() || self.expect.is_some()) && self.tcp.is_none() {
            return Err("`send` and `expect` go with `tcp` only".into());
        }
        if self.path.is_some() && self.http.is_none() {
            return Err("`path` goes with `http` only".into());
        }
        if self.interval_ms == 0 || self.timeout_ms == 0 || self.failure_threshold == 0 {
            return Err(
                "`interval_ms`, `timeout_ms` and `failure_threshold` must each be at least 1"
                    .into(),
            );
        }
        Ok(HealthProbe {
            check,
            interval: Duration::from_millis(self.interval_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            failure_threshold: self.failure_threshold,
        })
    }
}

impl ListenerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        match self.kind {
            ListenerKind::Tcp | ListenerKind::Udp => {
                self.addr.parse::<SocketAddr>().map_err(|_| {
                    invalid(format!(
                        "listener {name:?}: addr {:?} is not an IP address and port such as \
                         \"0.0.0.0:8080\" or \"[::1]:8080\" (host names are not resolved)",
                        self.addr
                    ))
                })?;
            }
            ListenerKind::Unix => {
                let path = Path::new(&self.addr);
                if path.as_os_str().as_bytes().first() == Some(&b'@') {
                    return Err(invalid(format!(
                        "listener {name:?}: addr {:?} names an abstract socket, which is not \
                         supported; use a filesystem path",
                        self.addr
                    )));
                }
                // Bound in place (no temporary name), like systemd's.
                check_socket_path(path, false)
                    .map_err(|problem| invalid(format!("listener {name:?}: addr {problem}")))?;
            }
        }
        if self.kind != ListenerKind::Udp
            && (self.backlog == 0 || libc::c_int::try_from(self.backlog).is_err())
        {
            return Err(invalid(format!(
                "listener {name:?}: backlog {} is out of range (1 to {}; default {DEFAULT_BACKLOG})",
                self.backlog,
                libc::c_int::MAX
            )));
        }
        Ok(())
    }
}
