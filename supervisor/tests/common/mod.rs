//! A supervised deployment in miniature: a temporary directory with the
//! configuration, the test daemon as the supervised binary, and helpers
//! that wait on events with a bound (never a sleep).
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use handoff_std::os::process::{wait_exit, wait_gone};

use handoff_std::os::process::ChildProcess;
use handoff_std::os::spawn::{ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_supervisor::notify::Notifier;
use handoff_supervisor::{Config, Service};

/// Long enough for a loaded CI machine, short enough to fail fast.
pub const BOUND: Duration = Duration::from_secs(20);

/// The trigger-request timeout the tests give their services.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff-supervisor-test-daemon")
}

pub fn supervisor_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff-supervisor")
}

/// A directory removed at the end of the test, readable by every user (the
/// tests that run a client as another uid need to reach into it).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hsup-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // /run: root's, mode 0755, and short (Unix socket paths must fit
        // in 108 bytes). /tmp would do as well (the supervisor accepts a
        // sticky directory whose entries are ours), but /run keeps the
        // scripts the tests list in `allowed_binaries` off a directory
        // every user can write. A user who may not write there (or a
        // system without it) gets the build's own temporary directory.
        let mut p = PathBuf::from("/run").join(&name);
        let _ = fs::remove_dir_all(&p);
        if fs::create_dir(&p).is_err() {
            p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&name);
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        kill_strays(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Kills every process whose command line names `dir`: the daemons of a
/// supervisor that a failed test left behind (a passing test leaves none,
/// and checks that it does). The directory's name is unique to the test.
fn kill_strays(dir: &Path) {
    // With its slash: `/tmp/x-1` must not match `/tmp/x-12`.
    let mut needle = dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmdline
            .windows(needle.len())
            .any(|w| w == needle.as_slice())
        {
            eprintln!("killing pid {pid}, left behind by this test");
            let _ = handoff_std::os::process::send_signal(pid, handoff_std::Signal::Kill);
        }
    }
}

/// One deployment's paths.
pub struct Layout {
    pub dir: TempDir,
    pub ctl: PathBuf,
    pub trigger: PathBuf,
    pub data: PathBuf,
    pub journal: PathBuf,
    pub config_file: PathBuf,
}

impl Layout {
    pub fn new(tag: &str) -> Layout {
        let dir = TempDir::new(tag);
        let p = dir.path().to_path_buf();
        Layout {
            ctl: p.join("ctl.sock"),
            trigger: p.join("trigger.sock"),
            data: p.join("data"),
            journal: p.join("journal"),
            config_file: p.join("supervisor.toml"),
            dir,
        }
    }

    /// The configuration: the test daemon on one TCP listener `main` at
    /// `addr`, then `extra` TOML lines (top-level keys only). Probation is
    /// 200 ms unless `extra` sets `probation_ms`: every handoff goes through
    /// it, without the default's 5 s.
    pub fn config_text(&self, addr: &str, extra: &str) -> String {
        let probation = if extra.contains("probation_ms") {
            ""
        } else {
            "probation_ms = 200"
        };
        format!(
            r#"control_socket = "{ctl}"
trigger_socket = "{trigger}"
binary = "{bin}"
args = ["--control-socket", "{ctl}", "--data-dir", "{data}"]
journal = "{journal}"
deadline_secs = 20
drain_grace_secs = 10
{probation}
{extra}

[[listeners]]
name = "main"
addr = "{addr}"
"#,
            ctl = self.ctl.display(),
            trigger = self.trigger.display(),
            bin = daemon_bin(),
            data = self.data.display(),
            journal = self.journal.display(),
        )
    }

    /// Writes the configuration file and returns the configuration.
    pub fn write_config(&self, addr: &str, extra: &str) -> Config {
        let text = self.config_text(addr, extra);
        fs::write(&self.config_file, &text).unwrap();
        Config::from_toml_str(&text).unwrap()
    }

    /// A successor that exits at once: the test daemon with its
    /// exit-at-once variable set.
    pub fn failing_successor(&self) -> PathBuf {
        self.script(
            "failing-successor",
            &format!(
                "export SUPERVISOR_TEST_DAEMON_EXIT=1\nexec {} \"$@\"\n",
                daemon_bin()
            ),
        )
    }

    /// A successor that takes `secs` to start (its `Hello` comes late).
    pub fn slow_successor(&self, secs: u32) -> PathBuf {
        self.script(
            "slow-successor",
            &format!("sleep {secs}\nexec {} \"$@\"\n", daemon_bin()),
        )
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

/// Starts a service in this process on `127.0.0.1:0`, with the short
/// request timeout and `extra` configuration lines.
pub fn start_service(layout: &Layout, extra: &str) -> Service {
    start_service_with(layout, extra, REQUEST_TIMEOUT, Notifier::disabled())
}

/// Starts a service for `config` as the tests do (the short request
/// timeout, a 5 s stop grace, no notifications), which may fail.
pub fn try_start(config: Config) -> Result<Service, handoff_supervisor::ServiceError> {
    Service::builder(config)
        .request_timeout(REQUEST_TIMEOUT)
        .stop_grace(Duration::from_secs(5))
        .notifier(Notifier::disabled())
        .start()
}

pub fn start_service_with(
    layout: &Layout,
    extra: &str,
    request_timeout: Duration,
    notifier: Notifier,
) -> Service {
    let config = layout.write_config("127.0.0.1:0", extra);
    Service::builder(config)
        .request_timeout(request_timeout)
        .stop_grace(Duration::from_secs(5))
        .notifier(notifier)
        .start()
        .expect("the service starts")
}

/// The address of the service's listener `main`.
pub fn main_addr(service: &Service) -> String {
    service
        .listener_addrs()
        .into_iter()
        .find(|(n, _)| n == "main")
        .map(|(_, a)| a)
        .expect("listener main")
}

/// Sends `PING` on a new connection; the pid that answered.
pub fn ping(addr: &str) -> u32 {
    let mut s = TcpStream::connect(addr).expect("the port never refuses");
    s.set_read_timeout(Some(BOUND)).unwrap();
    writeln!(s, "PING").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    reply
        .trim()
        .strip_prefix("PONG ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
}

/// The `SigBlk` line of a process's status.
pub fn sigblk(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:").map(|v| v.trim().to_owned()))
        .unwrap()
}

/// Runs the supervisor binary with `args` and returns its output, within
/// `BOUND` (killed and failed otherwise).
pub fn run_cli(args: &[&str]) -> Output {
    run_command(Command::new(supervisor_bin()).args(args))
}

pub fn run_command(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on threads: a full pipe would otherwise stall the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = match wait_exit(&mut child, BOUND) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {BOUND:?}");
        }
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Whether the tests that run a client as another user can run: root, and
/// `setpriv` present.
pub fn can_switch_user() -> Result<PathBuf, String> {
    // SAFETY: geteuid takes nothing and cannot fail.
    #[allow(unsafe_code)]
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(format!("not running as root (euid {euid})"));
    }
    ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| "setpriv is not installed (util-linux)".to_owned())
}

/// Copies the program `from` to `to`, mode 0755. Copied by another process:
/// a file this one had open for writing would be inherited by a child that
/// another test thread is forking, and executing the copy would then fail
/// with ETXTBSY.
pub fn copy_program(from: &Path, to: &Path) {
    let status = Command::new("cp").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp failed");
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `setpriv` running `args` of the supervisor binary as nobody (65534).
/// The binary is copied into `dir` first: the build directory may lie
/// where nobody cannot reach (a checkout under /root).
pub fn as_nobody(setpriv: &Path, dir: &Path, args: &[&str]) -> Command {
    let copy = dir.join("handoff-supervisor");
    if !copy.exists() {
        copy_program(Path::new(supervisor_bin()), &copy);
    }
    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&copy)
        .args(args);
    cmd
}

/// A datagram socket standing in for systemd's notification socket.
pub struct NotifySocket {
    pub sock: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`.
    pub env_value: String,
}

impl NotifySocket {
    /// On a path inside `dir`.
    pub fn at_path(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            env_value: path.display().to_string(),
        }
    }

    /// In the abstract namespace (`@name`).
    pub fn abstract_named(tag: &str) -> NotifySocket {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hsup-notify-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        NotifySocket {
            sock,
            env_value: format!("@{name}"),
        }
    }

    pub fn notifier(&self) -> Notifier {
        Notifier::for_socket(std::ffi::OsStr::new(&self.env_value))
    }

    /// The next message, within `BOUND`. A receive with a timeout is not
    /// restarted after the test process is stopped and continued (a frozen
    /// cgroup, a debugger): its `EINTR` is retried with the time left.
    pub fn next(&self) -> String {
        let until = Instant::now() + BOUND;
        let mut buf = [0u8; 4096];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification within {BOUND:?}");
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no notification within {BOUND:?}: {e}"),
            }
        }
    }

    /// Reads messages until one has the line `line`; returns it.
    pub fn wait_for(&self, line: &str) -> String {
        let until = Instant::now() + BOUND;
        loop {
            assert!(Instant::now() < until, "no {line:?} within {BOUND:?}");
            let msg = self.next();
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }
}

/// Writes `layout`'s configuration (listener on a port the kernel picks,
/// `extra` lines) and starts `handoff-supervisor run` with it; returns once
/// it told its service manager `READY=1`.
pub fn start_running(layout: &Layout, extra: &str) -> (RunningSupervisor, NotifySocket) {
    layout.write_config("127.0.0.1:0", extra);
    let notify = NotifySocket::at_path(layout.dir.path());
    let sup = RunningSupervisor::start(layout, &notify, None);
    notify.wait_for("READY=1");
    (sup, notify)
}

/// A `handoff-supervisor run` process, stopped (and its log shown, if the
/// test failed) at the end.
pub struct RunningSupervisor {
    /// A plain `Command`'s child, or the unforked spawn's when
    /// socket-activated: one box holds either.
    pub child: Box<dyn ChildProcess + Send + Sync>,
    pub log: PathBuf,
}

impl RunningSupervisor {
    /// Starts `run` with `layout`'s configuration file and `NOTIFY_SOCKET`
    /// set to `notify`: plainly (no `LISTEN_FDS` at all), or, given
    /// `activated_with`, as systemd's socket activation would, that
    /// listener at FD 3 named `main`.
    pub fn start(
        layout: &Layout,
        notify: &NotifySocket,
        activated_with: Option<&TcpListener>,
    ) -> RunningSupervisor {
        let log = layout.dir.path().join("supervisor.log");
        let args = ["run", "--config"].map(std::ffi::OsStr::new);
        let config = layout.config_file.as_os_str();
        let level = ["--log-level", "debug"].map(std::ffi::OsStr::new);
        let stderr = fs::File::create(&log).unwrap();
        let child: Box<dyn ChildProcess + Send + Sync> = match activated_with {
            None => {
                let mut cmd = Command::new(supervisor_bin());
                cmd.args(args)
                    .arg(config)
                    .args(level)
                    .env("NOTIFY_SOCKET", &notify.env_value)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr);
                Box::new(cmd.spawn().unwrap())
            }
            Some(listener) => {
                let mut launch = Launch::new(supervisor_bin());
                launch
                    .args(args)
                    .arg(config)
                    .args(level)
                    .env("NOTIFY_SOCKET", &notify.env_value)
                    .stdin(ChildStdio::Null)
                    .stdout(ChildStdio::Null)
                    .stderr(stderr);
                let passed = [PassedListener {
                    name: "main",
                    fd: listener.as_fd(),
                }];
                Box::new(spawn_cold_vfork(launch, &passed).unwrap())
            }
        };
        RunningSupervisor { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`libc::SIGHUP`, …).
    pub fn signal(&self, signal: libc::c_int) {
        send(self.pid(), signal);
    }
}

/// `kill(pid, signal)`, which must succeed.
pub fn send(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).unwrap();
    assert!(pid > 0);
    // SAFETY: kill takes integers only; `pid` is positive, so it names one
    // process.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for RunningSupervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first, so that the daemons it started go too.
            send(self.child.id(), libc::SIGTERM);
            if wait_exit(&mut self.child, BOUND).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- supervisor log ---\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// A JSON object printed by `--json`, parsed by a real parser (so invalid
/// output fails the test).
pub fn parse_json_object(text: &str) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(text.trim()) {
        Ok(serde_json::Value::Object(members)) => members,
        Ok(other) => panic!("not a JSON object: {other}"),
        Err(e) => panic!("invalid JSON ({e}): {text}"),
    }
}

/// The member `key` of a parsed object.
pub fn member<'a>(
    members: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> &'a serde_json::Value {
    members
        .get(key)
        .unwrap_or_else(|| panic!("no member {key}"))
}

/// Whether `s` looks like a hyphenated UUID.
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}
