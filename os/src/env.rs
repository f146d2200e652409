//! The variables that tell a process how it was started, read once.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};

use super::listeners::InheritedListeners;
use super::sys::{fd_flags, getsockopt_int, set_cloexec};

/// `LISTEN_FDS`: how many listeners start at FD 3.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// `LISTEN_FDNAMES`: their names, `:`-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// `LISTEN_PID`: the process the listeners are meant for (systemd).
pub const LISTEN_PID: &str = "LISTEN_PID";
/// `HANDOFF_ROLE`: `successor` when spawned by a supervisor for a handoff.
pub const HANDOFF_ROLE: &str = "HANDOFF_ROLE";
/// `HANDOFF_SOCK_FD`: the successor's end of the control socketpair.
pub const HANDOFF_SOCK_FD: &str = "HANDOFF_SOCK_FD";

/// What the environment said, with the descriptors adopted.
#[derive(Debug)]
pub struct StartupEnv {
    /// Listeners passed at FDs 3.. (systemd or a supervisor).
    pub listeners: InheritedListeners,
    /// The control socket, when started as a successor.
    pub control: Option<UnixStream>,
}

/// Why the start-up environment could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnvError {
    /// It was already read in this process.
    AlreadyRead,
    /// A variable holds a value that makes no sense.
    BadValue {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvError::AlreadyRead => f.write_str(
                "the start-up environment was already read in this process; call \
                 take_startup_env once, first thing in main, and pass its result on",
            ),
            EnvError::BadValue {
                var,
                value,
                problem,
            } => write!(
                f,
                "{var}={value:?} {problem}; the process that started this one set it wrongly"
            ),
        }
    }
}

impl std::error::Error for EnvError {}

/// The first inherited listener, as systemd numbers them.
const FIRST_FD: RawFd = 3;

/// Set once the environment was read, whatever came of it.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Reads `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`, `HANDOFF_ROLE` and
/// `HANDOFF_SOCK_FD`, adopts the descriptors they name (close-on-exec from
/// then on), and removes the variables so that nothing this process spawns
/// inherits them. Works once per process; call it first thing in `main`,
/// before any thread starts (it edits the environment).
pub fn take_startup_env() -> Result<StartupEnv, EnvError> {
    // Twice would adopt the same descriptors twice, and two owners of one
    // descriptor close it under each other.
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(EnvError::AlreadyRead);
    }
    let vars = Vars {
        listen_fds: std::env::var_os(LISTEN_FDS),
        listen_fdnames: std::env::var_os(LISTEN_FDNAMES),
        listen_pid: std::env::var_os(LISTEN_PID),
        role: std::env::var_os(HANDOFF_ROLE),
        sock_fd: std::env::var_os(HANDOFF_SOCK_FD),
    };
    // Removed even when they turn out to be unusable: a child must never
    // inherit a descriptor layout that is not its own.
    for var in [
        LISTEN_FDS,
        LISTEN_FDNAMES,
        LISTEN_PID,
        HANDOFF_ROLE,
        HANDOFF_SOCK_FD,
    ] {
        // SAFETY: the environment may only be changed while no other thread
        // reads it; this function is documented to run first thing in
        // `main`, before any thread starts.
        unsafe { std::env::remove_var(var) };
    }
    let layout = parse(&vars, std::process::id())?;
    adopt_layout(layout, &vars)
}

/// Reads the variable `name` and removes it from the environment, so that
/// nothing this process spawns inherits it (`NOTIFY_SOCKET`, say, which
/// must not reach a daemon). Call it first thing in `main`, before any
/// thread starts (it edits the environment), as [`take_startup_env`].
pub fn take_var(name: &str) -> Option<std::ffi::OsString> {
    let value = std::env::var_os(name);
    // SAFETY: the environment may only be changed while no other thread
    // reads it; this function is documented to run first thing in `main`,
    // before any thread starts.
    unsafe { std::env::remove_var(name) };
    value
}

/// The five variables, as found.
#[derive(Debug, Default)]
struct Vars {
    listen_fds: Option<OsString>,
    listen_fdnames: Option<OsString>,
    listen_pid: Option<OsString>,
    role: Option<OsString>,
    sock_fd: Option<OsString>,
}

/// Which descriptor numbers the variables hand to this process, before
/// any of them is checked or adopted.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    listeners: Vec<(String, RawFd)>,
    control: Option<RawFd>,
}

fn bad(var: &'static str, value: &str, problem: &'static str) -> EnvError {
    EnvError::BadValue {
        var,
        value: value.to_owned(),
        problem,
    }
}

/// A variable's text; one that is not UTF-8 is a bad value.
fn text<'a>(var: &'static str, value: Option<&'a OsString>) -> Result<Option<&'a str>, EnvError> {
    value
        .map(|v| {
            v.to_str().ok_or_else(|| EnvError::BadValue {
                var,
                value: v.to_string_lossy().into_owned(),
                problem: "is not valid UTF-8",
            })
        })
        .transpose()
}

/// The most listeners `LISTEN_FDS` may count: far more than any service
/// has, far fewer than would make naming them a danger.
const MAX_LISTEN_FDS: RawFd = 65_536;

/// A plain decimal number: digits only, no sign, no spaces.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads the layout from the variables; touches no descriptor.
fn parse(vars: &Vars, our_pid: u32) -> Result<Layout, EnvError> {
    let listen_fds = text(LISTEN_FDS, vars.listen_fds.as_ref())?;
    let listen_fdnames = text(LISTEN_FDNAMES, vars.listen_fdnames.as_ref())?;
    let listen_pid = text(LISTEN_PID, vars.listen_pid.as_ref())?;
    let role = text(HANDOFF_ROLE, vars.role.as_ref())?;
    let sock_fd = text(HANDOFF_SOCK_FD, vars.sock_fd.as_ref())?;

    // systemd names the process the listeners are for; a LISTEN_PID of
    // another process means an ancestor's listeners leaked through exec,
    // and the descriptors at 3.. are not ours to take.
    let ours = match listen_pid {
        None => true,
        Some(p) => {
            let pid = number(p)
                .filter(|&pid| pid != 0)
                .ok_or_else(|| bad(LISTEN_PID, p, "is not a process id"))?;
            pid == our_pid
        }
    };

    let mut listeners = Vec::new();
    match (listen_fds, listen_fdnames) {
        _ if !ours => {}
        (Some(count_text), names) => {
            let count = number(count_text)
                .and_then(|n| RawFd::try_from(n).ok())
                .ok_or_else(|| {
                    bad(
                        LISTEN_FDS,
                        count_text,
                        "is not a count of descriptors (a decimal number)",
                    )
                })?;
            // Checked before a name is made for each: a hostile count must
            // be an error, not an allocation that aborts the process.
            if count > MAX_LISTEN_FDS {
                return Err(bad(
                    LISTEN_FDS,
                    count_text,
                    "counts more descriptors than a process is passed (at most 65536)",
                ));
            }
            let names: Vec<String> = match names {
                None => (0..count).map(|i| i.to_string()).collect(),
                Some("") if count == 0 => Vec::new(),
                Some(joined) => joined.split(':').map(str::to_owned).collect(),
            };
            if names.len() != count as usize {
                return Err(bad(
                    LISTEN_FDNAMES,
                    listen_fdnames.unwrap_or_default(),
                    "does not hold one name per descriptor that LISTEN_FDS counts",
                ));
            }
            listeners = names.into_iter().zip(FIRST_FD..).collect();
        }
        (None, Some(names)) if !names.is_empty() => {
            return Err(bad(
                LISTEN_FDNAMES,
                names,
                "names listeners, but LISTEN_FDS (their count) is not set",
            ));
        }
        (None, _) => {}
    }

    let control = match role {
        None => None,
        Some("successor") => {
            let value = sock_fd.ok_or_else(|| {
                bad(
                    HANDOFF_SOCK_FD,
                    "",
                    "is not set, but HANDOFF_ROLE=successor needs it to find the control socket",
                )
            })?;
            let fd = number(value)
                .and_then(|n| RawFd::try_from(n).ok())
                .filter(|&fd| fd >= FIRST_FD)
                .ok_or_else(|| {
                    bad(
                        HANDOFF_SOCK_FD,
                        value,
                        "is not a descriptor number of 3 or more",
                    )
                })?;
            if listeners.iter().any(|&(_, l)| l == fd) {
                return Err(bad(
                    HANDOFF_SOCK_FD,
                    value,
                    "names a descriptor that LISTEN_FDS counts as a listener",
                ));
            }
            Some(fd)
        }
        Some(other) => {
            return Err(bad(
                HANDOFF_ROLE,
                other,
                "is not a known role (\"successor\" is the only one; unset means a cold start)",
            ));
        }
    };
    Ok(Layout { listeners, control })
}

/// Whether `fd` is a Unix stream socket.
fn is_unix_stream(fd: BorrowedFd<'_>) -> bool {
    getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).ok() == Some(libc::AF_UNIX)
        && getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
}

/// Checks every descriptor of `layout`, then adopts them all. Nothing is
/// adopted (so nothing closed) unless every check passes.
fn adopt_layout(layout: Layout, vars: &Vars) -> Result<StartupEnv, EnvError> {
    let lossy = |v: &Option<OsString>| {
        v.as_deref()
            .map(|v| v.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let not_open = || {
        bad(
            LISTEN_FDS,
            &lossy(&vars.listen_fds),
            "counts a descriptor that is not open in this process",
        )
    };
    if layout
        .listeners
        .iter()
        .any(|&(_, fd)| fd_flags(fd).is_none())
    {
        return Err(not_open());
    }
    if let Some(fd) = layout.control {
        let value = lossy(&vars.sock_fd);
        if fd_flags(fd).is_none() {
            return Err(bad(
                HANDOFF_SOCK_FD,
                &value,
                "names a descriptor that is not open in this process",
            ));
        }
        // SAFETY: `fd` was just found open, and the environment gave it to
        // this process, whose start-up (before any thread) is the only code
        // that knows its number; it stays open while this borrow lives.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if !is_unix_stream(borrowed) {
            return Err(bad(
                HANDOFF_SOCK_FD,
                &value,
                "names a descriptor that is not a Unix stream socket",
            ));
        }
    }
    let mut listeners = Vec::with_capacity(layout.listeners.len());
    for (name, fd) in layout.listeners {
        listeners.push((name, adopt(fd).ok_or_else(not_open)?));
    }
    // The incumbent offers these to a restarted supervisor
    // (docs/PROTOCOL.md section 9), whatever the daemon does with its own.
    super::fdpass::keep_passed(&listeners);
    let control = match layout.control {
        Some(fd) => Some(UnixStream::from(adopt(fd).ok_or_else(|| {
            bad(
                HANDOFF_SOCK_FD,
                &lossy(&vars.sock_fd),
                "names a descriptor that is not open in this process",
            )
        })?)),
        None => None,
    };
    Ok(StartupEnv {
        listeners: InheritedListeners::from_fds(listeners),
        control,
    })
}

/// Adopts a raw descriptor number the environment named.
fn adopt(fd: i32) -> Option<OwnedFd> {
    fd_flags(fd)?;
    // SAFETY: `fd` is open, and the environment transferred it to this
    // process; the layout names each number once and is adopted once per
    // process (`TAKEN`), so this is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // The parent's dup2 cleared close-on-exec so that it could cross exec;
    // left clear, it would leak into everything this process spawns.
    set_cloexec(owned.as_fd()).ok()?;
    Some(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{send_frame, socketpair};
    use crate::listeners::Mode;
    use crate::spawn::{ChildStdio, Launch, PassedListener, SpawnError, spawn_successor_vfork};
    use crate::sys::is_cloexec;
    use crate::testutil::{TempDir, fd_target, open_fds, read_line_bounded, wait_bounded};
    use std::fs::File;
    use std::io::{self, Read};
    use std::net::TcpListener;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixListener;
    use std::time::Duration;

    const PID: u32 = 4242;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::default();
        for &(name, value) in pairs {
            let slot = match name {
                LISTEN_FDS => &mut v.listen_fds,
                LISTEN_FDNAMES => &mut v.listen_fdnames,
                LISTEN_PID => &mut v.listen_pid,
                HANDOFF_ROLE => &mut v.role,
                HANDOFF_SOCK_FD => &mut v.sock_fd,
                _ => panic!("unknown variable {name}"),
            };
            *slot = Some(value.into());
        }
        v
    }

    fn layout(pairs: &[(&str, &str)]) -> Result<Layout, EnvError> {
        parse(&vars(pairs), PID)
    }

    fn listeners(names: &[&str]) -> Vec<(String, RawFd)> {
        names.iter().map(|n| n.to_string()).zip(3..).collect()
    }

    #[track_caller]
    fn assert_bad(result: Result<Layout, EnvError>, var: &str, value: &str) {
        match result {
            Err(EnvError::BadValue {
                var: v, value: val, ..
            }) => assert_eq!((v, val.as_str()), (var, value)),
            other => panic!("expected BadValue for {var}={value:?}, got {other:?}"),
        }
    }

    #[test]
    fn no_variables_is_a_cold_start_with_nothing() {
        let l = layout(&[]).unwrap();
        assert_eq!(
            l,
            Layout {
                listeners: vec![],
                control: None
            }
        );
    }

    #[test]
    fn listeners_are_numbered_from_3_and_named() {
        let l = layout(&[(LISTEN_FDS, "2"), (LISTEN_FDNAMES, "web:admin")]).unwrap();
        assert_eq!(l.listeners, listeners(&["web", "admin"]));
        assert_eq!(l.control, None);
        // Without names, their positions name them.
        let l = layout(&[(LISTEN_FDS, "3")]).unwrap();
        assert_eq!(l.listeners, listeners(&["0", "1", "2"]));
        let l = layout(&[(LISTEN_FDS, "0"), (LISTEN_FDNAMES, "")]).unwrap();
        assert!(l.listeners.is_empty());
        // systemd gives every socket of one unit the same name.
        let l = layout(&[(LISTEN_FDS, "2"), (LISTEN_FDNAMES, "app.socket:app.socket")]).unwrap();
        assert_eq!(l.listeners, listeners(&["app.socket", "app.socket"]));
    }

    #[test]
    fn a_hostile_listener_count_is_an_error_not_an_abort() {
        assert_bad(
            layout(&[(LISTEN_FDS, "2000000000")]),
            LISTEN_FDS,
            "2000000000",
        );
        assert_bad(layout(&[(LISTEN_FDS, "65537")]), LISTEN_FDS, "65537");
    }

    #[test]
    fn listen_pid_decides_whose_listeners_they_are() {
        let ours = PID.to_string();
        let l = layout(&[(LISTEN_FDS, "1"), (LISTEN_PID, &ours)]).unwrap();
        assert_eq!(l.listeners, listeners(&["0"]));
        // Another process's: not touched, even when otherwise malformed.
        let l = layout(&[
            (LISTEN_FDS, "2"),
            (LISTEN_FDNAMES, "a:b"),
            (LISTEN_PID, "1"),
        ])
        .unwrap();
        assert!(l.listeners.is_empty());
        let l = layout(&[(LISTEN_FDS, "junk"), (LISTEN_PID, "1")]).unwrap();
        assert!(l.listeners.is_empty());
        assert_bad(
            layout(&[(LISTEN_FDS, "1"), (LISTEN_PID, "me")]),
            LISTEN_PID,
            "me",
        );
        assert_bad(layout(&[(LISTEN_PID, "0")]), LISTEN_PID, "0");
    }

    #[test]
    fn malformed_listener_variables_are_bad_values() {
        for count in ["", "x", "-1", "+1", " 1", "1 ", "99999999999", "2147483647"] {
            assert_bad(layout(&[(LISTEN_FDS, count)]), LISTEN_FDS, count);
        }
        assert_bad(
            layout(&[(LISTEN_FDS, "2"), (LISTEN_FDNAMES, "web")]),
            LISTEN_FDNAMES,
            "web",
        );
        assert_bad(
            layout(&[(LISTEN_FDS, "1"), (LISTEN_FDNAMES, "a:b")]),
            LISTEN_FDNAMES,
            "a:b",
        );
        assert_bad(layout(&[(LISTEN_FDNAMES, "web")]), LISTEN_FDNAMES, "web");
        let mut v = vars(&[]);
        v.listen_fds = Some(std::os::unix::ffi::OsStringExt::from_vec(vec![0xff]));
        assert_bad(parse(&v, PID), LISTEN_FDS, "\u{fffd}");
    }

    #[test]
    fn a_successor_needs_a_control_descriptor() {
        let l = layout(&[
            (LISTEN_FDS, "1"),
            (LISTEN_FDNAMES, "web"),
            (HANDOFF_ROLE, "successor"),
            (HANDOFF_SOCK_FD, "4"),
        ])
        .unwrap();
        assert_eq!(l.listeners, listeners(&["web"]));
        assert_eq!(l.control, Some(4));
        assert_bad(layout(&[(HANDOFF_ROLE, "successor")]), HANDOFF_SOCK_FD, "");
        for fd in ["2", "0", "x", "-4", "4294967295"] {
            assert_bad(
                layout(&[(HANDOFF_ROLE, "successor"), (HANDOFF_SOCK_FD, fd)]),
                HANDOFF_SOCK_FD,
                fd,
            );
        }
        // The control socket cannot also be a listener.
        assert_bad(
            layout(&[
                (LISTEN_FDS, "2"),
                (HANDOFF_ROLE, "successor"),
                (HANDOFF_SOCK_FD, "4"),
            ]),
            HANDOFF_SOCK_FD,
            "4",
        );
        // Without a role, a stray HANDOFF_SOCK_FD means nothing.
        assert_eq!(layout(&[(HANDOFF_SOCK_FD, "9")]).unwrap().control, None);
    }

    #[test]
    fn an_unknown_role_is_a_bad_value() {
        for role in ["incumbent", "Successor", ""] {
            assert_bad(layout(&[(HANDOFF_ROLE, role)]), HANDOFF_ROLE, role);
        }
        let text = layout(&[(HANDOFF_ROLE, "boss")]).unwrap_err().to_string();
        assert!(text.contains("HANDOFF_ROLE=\"boss\""), "{text}");
        assert!(text.contains("successor"), "{text}");
    }

    /// Gives up ownership of a descriptor so that adoption can claim it.
    fn raw(fd: impl IntoRawFd) -> RawFd {
        fd.into_raw_fd()
    }

    /// Takes back a descriptor a failed adoption left unowned.
    fn reclaim(fd: RawFd) {
        // SAFETY: the caller gave `fd` up with `raw` and nothing adopted it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }

    #[test]
    fn adoption_claims_open_descriptors_close_on_exec() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        let (ours, theirs) = socketpair().unwrap();
        let (tcp_fd, control_fd) = (raw(tcp), raw(theirs));
        // Inherited descriptors arrive without close-on-exec.
        for fd in [tcp_fd, control_fd] {
            // SAFETY: `fd` is open and unowned; F_SETFD changes a flag only.
            assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        }
        let layout = Layout {
            listeners: vec![("web".into(), tcp_fd)],
            control: Some(control_fd),
        };
        let env = adopt_layout(layout, &Vars::default()).unwrap();
        let mut listeners = env.listeners;
        let control = env.control.unwrap();
        assert_eq!(control.as_raw_fd(), control_fd);
        assert!(is_cloexec(control.as_fd()));
        send_frame(&ours, b"x").unwrap();
        let mut byte = [0];
        (&control).read_exact(&mut byte).unwrap();
        let web = listeners.take_tcp("web", Mode::Blocking).unwrap();
        assert_eq!(web.as_raw_fd(), tcp_fd);
        assert!(is_cloexec(web.as_fd()));
        assert_eq!(web.local_addr().unwrap().port(), port);
    }

    #[test]
    fn a_closed_or_wrong_descriptor_adopts_nothing() {
        // Far above the descriptor limit, so never open.
        const NEVER_OPEN: RawFd = 1 << 24;
        let tcp_fd = raw(TcpListener::bind("127.0.0.1:0").unwrap());
        let v = vars(&[(LISTEN_FDS, "2"), (HANDOFF_SOCK_FD, "7")]);
        let result = adopt_layout(
            Layout {
                listeners: vec![("a".into(), tcp_fd), ("b".into(), NEVER_OPEN)],
                control: None,
            },
            &v,
        );
        assert_bad(result.map(|_| unreachable!()), LISTEN_FDS, "2");
        // The first, valid one was neither adopted nor closed.
        assert!(fd_flags(tcp_fd).is_some());

        let result = adopt_layout(
            Layout {
                listeners: vec![],
                control: Some(NEVER_OPEN),
            },
            &v,
        );
        assert_bad(result.map(|_| unreachable!()), HANDOFF_SOCK_FD, "7");

        // A listener where the control socket should be.
        let result = adopt_layout(
            Layout {
                listeners: vec![],
                control: Some(tcp_fd),
            },
            &v,
        );
        match result {
            Err(EnvError::BadValue { var, problem, .. }) => {
                assert_eq!(var, HANDOFF_SOCK_FD);
                assert!(problem.contains("Unix stream socket"), "{problem}");
            }
            other => panic!("expected BadValue, got {other:?}"),
        }
        assert!(fd_flags(tcp_fd).is_some());
        reclaim(tcp_fd);
    }

    #[test]
    fn already_read_says_to_call_once() {
        let text = EnvError::AlreadyRead.to_string();
        assert!(text.contains("once"), "{text}");
    }

    /// Set by the parent test for the child run of `successor_process_entry`.
    const CHILD_PORT: &str = "HANDOFF_STD_TEST_CHILD_PORT";
    const CHILD_TEST: &str = "env::tests::successor_process_entry";
    const BOUND: Duration = Duration::from_secs(30);

    /// The whole path in two real processes: a supervisor-side
    /// `spawn_successor_vfork` starts this test binary again, running
    /// `successor_process_entry`, which reads its start-up environment for
    /// real (the process environment cannot be edited here, with tests
    /// running on other threads).
    #[test]
    fn a_spawned_successor_adopts_its_listeners_and_control() {
        let dir = TempDir::new("ec");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let unix = UnixListener::bind(dir.path().join("u.sock")).unwrap();
        let (ours, theirs) = socketpair().unwrap();
        let log_path = dir.path().join("child.log");
        let log = File::create(&log_path).unwrap();
        let mut launch = Launch::new(std::env::current_exe().unwrap());
        launch
            .args([
                CHILD_TEST,
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_PORT, tcp.local_addr().unwrap().port().to_string())
            // The reference bug: an inherited LISTEN_PID naming the
            // supervisor made the child drop every listener.
            .env(LISTEN_PID, "1")
            .stdin(ChildStdio::Null)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let listeners = [
            PassedListener {
                name: "web",
                fd: tcp.as_fd(),
            },
            PassedListener {
                name: "admin",
                fd: unix.as_fd(),
            },
        ];
        let mut child = spawn_successor_vfork(launch, &listeners, theirs.as_fd()).unwrap();
        drop(theirs);
        let status = wait_bounded(&mut child, BOUND);
        let output = std::fs::read_to_string(&log_path).unwrap();
        assert!(status.success(), "the successor failed:\n{output}");
        assert!(
            output.contains("1 passed"),
            "the child test did not run:\n{output}"
        );
        ours.set_read_timeout(Some(BOUND)).unwrap();
        let mut got = Vec::new();
        (&ours).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"adopted", "{output}");
    }

    /// The successor's side of the test above; does nothing unless started
    /// by it.
    #[test]
    #[ignore = "runs only in the child that a_spawned_successor_adopts_its_listeners_and_control starts"]
    fn successor_process_entry() {
        let Some(port) = std::env::var_os(CHILD_PORT) else {
            return;
        };
        let env = take_startup_env().expect("the start-up environment is valid");
        assert!(matches!(take_startup_env(), Err(EnvError::AlreadyRead)));
        for var in [
            LISTEN_FDS,
            LISTEN_FDNAMES,
            LISTEN_PID,
            HANDOFF_ROLE,
            HANDOFF_SOCK_FD,
        ] {
            assert!(std::env::var_os(var).is_none(), "{var} was left set");
        }
        let control = env.control.expect("a successor has a control socket");
        assert_eq!(control.as_raw_fd(), 5);
        assert!(is_cloexec(control.as_fd()));
        let mut inherited = env.listeners;
        assert_eq!(inherited.names(), ["web", "admin"]);
        let web = inherited.take_tcp("web", Mode::Blocking).unwrap();
        assert_eq!(web.as_raw_fd(), 3);
        assert!(is_cloexec(web.as_fd()));
        assert_eq!(
            web.local_addr().unwrap().port().to_string(),
            port.to_str().unwrap()
        );
        let admin = inherited.take_unix("admin", Mode::NonBlocking).unwrap();
        assert_eq!(admin.as_raw_fd(), 4);
        assert!(inherited.is_empty());

        // Holes at 4 and 6, inside the next spawn's target range 3..=6:
        // the spawn's own descriptors (its copies of the sources, its
        // streams) land in them in this process, and an exec failure must
        // still come back as the error, not as a started child nor as bytes
        // on the control socket.
        drop(admin);
        assert!(fd_flags(4).is_none() && fd_flags(6).is_none());
        let web_as = |name| PassedListener {
            name,
            fd: web.as_fd(),
        };
        match spawn_successor_vfork(
            Launch::new("/nonexistent/handoff-successor"),
            &[web_as("a"), web_as("b"), web_as("c")],
            control.as_fd(),
        ) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected an exec failure, got {other:?}"),
        }

        // Every source inside the target range 3..=5, in a cycle: 5 -> 3,
        // 3 -> 4, 4 -> 5. Copying one by one without staging would clobber.
        let (spare, _spare_peer) = socketpair().unwrap();
        assert_eq!(spare.as_raw_fd(), 4, "the hole at 4 is reused");
        let mut launch = Launch::new("/bin/sh");
        launch
            .args(["-c", "echo started; read x || true"])
            .stdin(ChildStdio::Piped)
            .stdout(ChildStdio::Piped)
            .stderr(ChildStdio::Null);
        let mut grandchild = spawn_successor_vfork(
            launch,
            &[
                PassedListener {
                    name: "a",
                    fd: control.as_fd(),
                },
                PassedListener {
                    name: "b",
                    fd: web.as_fd(),
                },
            ],
            spare.as_fd(),
        )
        .unwrap();
        let line = read_line_bounded(grandchild.stdout.as_mut().unwrap(), BOUND);
        assert_eq!(line, "started");
        let (gc, me) = (grandchild.id(), std::process::id());
        assert_eq!(open_fds(gc), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(fd_target(gc, 3), fd_target(me, 5));
        assert_eq!(fd_target(gc, 4), fd_target(me, 3));
        assert_eq!(fd_target(gc, 5), fd_target(me, 4));
        drop(grandchild.stdin.take());
        assert!(wait_bounded(&mut grandchild, BOUND).success());

        send_frame(&control, b"adopted").unwrap();
    }
}
