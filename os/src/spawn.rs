//! Spawning the successor with inherited listeners (docs/PROTOCOL.md section 5.1).
//!
//! The child gets the listeners at FDs `3, 4, …` in order, its end of the
//! control socketpair right after them, and the variables `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `HANDOFF_ROLE=successor` and `HANDOFF_SOCK_FD`. Every
//! other descriptor is close-on-exec. A `LISTEN_PID` in the supervisor's own
//! environment (it may itself have been socket-activated) is removed: left
//! in place it would name the supervisor, and a systemd-style child would
//! then ignore every listener it was given.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, PoisonError};

use super::env::{HANDOFF_ROLE, HANDOFF_SOCK_FD, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID};
use super::sys::cvt;

/// The first inherited descriptor, as systemd numbers them.
const FIRST_FD: RawFd = 3;

/// A listener to pass: its name (for `LISTEN_FDNAMES`) and descriptor.
#[derive(Clone, Copy, Debug)]
pub struct PassedListener<'a> {
    /// Unique, non-empty, without `:`.
    pub name: &'a str,
    /// The listening socket; the parent keeps it open.
    pub fd: BorrowedFd<'a>,
}

/// Why a successor could not be spawned.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// A listener name is empty or contains `:` (the `LISTEN_FDNAMES`
    /// separator).
    BadListenerName {
        /// The name.
        name: String,
    },
    /// Two listeners share a name.
    DuplicateListenerName {
        /// The name.
        name: String,
    },
    /// The system refused (fork, exec, dup).
    Io(io::Error),
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpawnError::BadListenerName { name } if name.is_empty() => f.write_str(
                "a listener has an empty name; give every listener a non-empty name, which \
                 the successor uses to take it",
            ),
            SpawnError::BadListenerName { name } if name.contains('\0') => write!(
                f,
                "listener name {name:?} contains a NUL byte, which cannot pass through the \
                 environment; rename the listener"
            ),
            SpawnError::BadListenerName { name } => write!(
                f,
                "listener name {name:?} contains ':', which separates the names in \
                 LISTEN_FDNAMES; rename the listener"
            ),
            SpawnError::DuplicateListenerName { name } => write!(
                f,
                "two listeners are named {name:?}; give each a unique name so the successor \
                 can take each one by name"
            ),
            SpawnError::Io(e) => write!(f, "could not spawn the process: {e}"),
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks that listener names are unique, non-empty and free of `:`.
pub fn validate_listener_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), SpawnError> {
    let mut seen = HashSet::new();
    for name in names {
        // A NUL would make the whole environment unrepresentable at exec.
        if name.is_empty() || name.contains([':', '\0']) {
            return Err(SpawnError::BadListenerName {
                name: name.to_owned(),
            });
        }
        if !seen.insert(name) {
            return Err(SpawnError::DuplicateListenerName {
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

/// Spawns `cmd` as the successor: `listeners` at FDs `3..3+n`, `control` at
/// `3+n`, the handoff variables set and `LISTEN_PID` removed. Between fork
/// and exec only async-signal-safe calls run.
pub fn spawn_successor(
    mut cmd: Command,
    listeners: &[PassedListener<'_>],
    control: BorrowedFd<'_>,
) -> Result<Child, SpawnError> {
    validate_listener_names(listeners.iter().map(|l| l.name))?;
    let control_fd = target_after(listeners.len())?;
    cmd.env(HANDOFF_ROLE, "successor")
        .env(HANDOFF_SOCK_FD, control_fd.to_string());
    spawn_with_fds(cmd, listeners, Some(control))
}

/// Spawns `cmd` cold, as systemd's socket activation would: `listeners` at
/// FDs `3..3+n` with `LISTEN_FDS` and `LISTEN_FDNAMES`, and none of the
/// successor's variables (removed if this process has them), so the child
/// starts as an ordinary first incumbent. `LISTEN_PID` is removed too (the
/// child would otherwise compare it with its own pid and ignore the
/// listeners).
pub fn spawn_cold(mut cmd: Command, listeners: &[PassedListener<'_>]) -> Result<Child, SpawnError> {
    validate_listener_names(listeners.iter().map(|l| l.name))?;
    target_after(listeners.len())?;
    cmd.env_remove(HANDOFF_ROLE).env_remove(HANDOFF_SOCK_FD);
    spawn_with_fds(cmd, listeners, None)
}

/// The descriptor number after `n` listeners, if it can be numbered.
fn target_after(n: usize) -> Result<RawFd, SpawnError> {
    RawFd::try_from(n)
        .ok()
        .and_then(|n| FIRST_FD.checked_add(n))
        // The child stages copies at numbers above the last target.
        .filter(|&fd| fd < RawFd::MAX)
        .ok_or_else(|| {
            SpawnError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners to number their descriptors",
            ))
        })
}

/// The part both spawns share: the listener variables, and the descriptors
/// put in place between fork and exec.
fn spawn_with_fds(
    mut cmd: Command,
    listeners: &[PassedListener<'_>],
    control: Option<BorrowedFd<'_>>,
) -> Result<Child, SpawnError> {
    let names: Vec<&str> = listeners.iter().map(|l| l.name).collect();
    cmd.env(LISTEN_FDS, listeners.len().to_string())
        .env(LISTEN_FDNAMES, names.join(":"))
        .env_remove(LISTEN_PID);

    // One spawn at a time in this process: a spawn that releases its
    // placeholders (below) while another is about to make its exec-error
    // pipe would open a hole for that pipe in the other's target range.
    // Held until this spawn has dropped its own placeholders.
    static SPAWNING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = SPAWNING.lock().unwrap_or_else(PoisonError::into_inner);

    // Everything the child needs is computed here, in the parent: after
    // fork, a multi-threaded process may not allocate or take locks.
    let mut fds: Vec<RawFd> = listeners
        .iter()
        .map(|l| l.fd.as_raw_fd())
        .chain(control.map(|c| c.as_raw_fd()))
        .collect();
    // A source at 0, 1 or 2 (a process started with its standard streams
    // closed binds its first socket there) would be replaced by std's own
    // stdio setup in the child, which runs before `place_fds`: move it up.
    let mut lifted = Vec::new();
    for fd in fds.iter_mut().filter(|fd| **fd < FIRST_FD) {
        // SAFETY: `*fd` is borrowed by the caller for this whole call, so
        // open; F_DUPFD_CLOEXEC only makes a new descriptor.
        let copy = cvt(unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, FIRST_FD) })
            .map_err(SpawnError::Io)?;
        // SAFETY: `copy` was just made and is owned by nobody else.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        *fd = copy.as_raw_fd();
        lifted.push(copy);
    }
    let scan_limit = fd_scan_limit();
    let placeholders = match listeners.first().map(|l| l.fd).or(control) {
        Some(any) => {
            let last = FIRST_FD + fds.len() as RawFd - 1;
            occupy_free_slots(any, last).map_err(SpawnError::Io)?
        }
        None => Vec::new(),
    };
    // SAFETY: the closure runs in the child between fork and exec. It only
    // calls fcntl, dup2, close and the close_range syscall, all
    // async-signal-safe; it allocates nothing (the Vec was allocated above
    // and is only written in place) and takes no lock. The descriptors it
    // names are borrowed by the caller for this whole call, so they are
    // open in the parent at fork and hence in the child.
    unsafe {
        cmd.pre_exec(move || {
            unblock_all_signals()?;
            place_fds(&mut fds, scan_limit)
        });
    }
    let child = cmd.spawn().map_err(SpawnError::Io);
    drop(placeholders);
    drop(lifted);
    child
}

/// Fills every free descriptor number in `3..=last` with a close-on-exec
/// copy of `any`, held until the spawn returns.
///
/// `Command::spawn` creates a close-on-exec pipe just before it forks, and
/// the child writes an exec failure to it. Created while a number in the
/// target range is free, the pipe would sit there, `place_fds` would
/// overwrite it, and the parent would then see the pipe close as if exec had
/// succeeded, while an exec error went into a listener or the control
/// socket. With the range full, the pipe lands above it. Spawns through
/// this module take turns, so one cannot free a slot in another's range;
/// another thread of the program closing one of its own descriptors in the
/// range before the pipe is made can still open a hole, and std offers no
/// way to close that race.
fn occupy_free_slots(any: BorrowedFd<'_>, last: RawFd) -> io::Result<Vec<OwnedFd>> {
    let mut held = Vec::new();
    let mut next = FIRST_FD;
    while next <= last {
        // SAFETY: `any` is borrowed, so open; F_DUPFD_CLOEXEC makes a new
        // descriptor at the lowest free number >= `next` and touches
        // nothing else.
        let fd = cvt(unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, next) })?;
        // SAFETY: `fd` was just created and nothing else knows it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if fd > last {
            break;
        }
        held.push(owned);
        next = fd + 1;
    }
    Ok(held)
}

/// How far the close-on-exec fallback scans when `close_range` is missing:
/// the descriptor limit, read now because `getrlimit` is not on the list of
/// async-signal-safe functions.
fn fd_scan_limit() -> RawFd {
    const CAP: RawFd = 1 << 20;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a live `rlimit` for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return CAP;
    }
    RawFd::try_from(lim.rlim_cur).map_or(CAP, |n| n.min(CAP))
}

/// In the child: empties the signal mask. std leaves the forking thread's
/// mask in place, and a supervisor typically blocks SIGTERM, SIGHUP and
/// SIGINT to take them with `sigwait`: a child that inherited that mask
/// would ignore the SIGTERM meant to stop it. Async-signal-safe.
fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: `set` is a live local initialised by sigemptyset before
    // sigprocmask reads it; the old-mask pointer is null, which is allowed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        cvt(libc::sigprocmask(
            libc::SIG_SETMASK,
            &set,
            std::ptr::null_mut(),
        ))?;
    }
    Ok(())
}

/// In the child: moves `fds[i]` to `3 + i` without close-on-exec and marks
/// every descriptor above them close-on-exec. Async-signal-safe: system
/// calls only, `fds` rewritten in place.
fn place_fds(fds: &mut [RawFd], scan_limit: RawFd) -> io::Result<()> {
    // The targets are 3..3+len; staging copies go above them, so a source
    // that already sits at some target survives until it has been copied.
    let above_targets = FIRST_FD + fds.len() as RawFd;
    for slot in fds.iter_mut() {
        // SAFETY: `*slot` is open (see spawn_successor); F_DUPFD_CLOEXEC
        // only allocates a new descriptor number >= `above_targets`.
        *slot = cvt(unsafe { libc::fcntl(*slot, libc::F_DUPFD_CLOEXEC, above_targets) })?;
    }
    for (target, &staged) in (FIRST_FD..).zip(fds.iter()) {
        // dup2 clears close-on-exec on the target, which is what lets it
        // survive exec.
        // SAFETY: `staged` is the copy made above; dup2 atomically replaces
        // `target`, whose previous occupant is either a source (copied
        // already) or a descriptor the successor must not get anyway.
        while cvt(unsafe { libc::dup2(staged, target) }).is_err() {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
    for &staged in fds.iter() {
        // SAFETY: the staging copies are ours and not used again.
        unsafe { libc::close(staged) };
    }
    mark_cloexec_from(above_targets, scan_limit)
}

/// Sets close-on-exec on every descriptor numbered `first` or more, so
/// nothing the parent forgot to mark leaks into the successor.
fn mark_cloexec_from(first: RawFd, scan_limit: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on the
    // descriptors in the range; it takes integers only.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    // ENOSYS: kernel before 5.9; EINVAL: before 5.11, which lacks the flag;
    // EPERM: a seccomp filter (older container runtimes) that refuses
    // syscalls it does not know.
    if !matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EINVAL | libc::EPERM)
    ) {
        return Err(e);
    }
    set_cloexec_by_scan(first, scan_limit)
}

/// The fallback of `mark_cloexec_from`: one descriptor at a time, over
/// `first..end`.
fn set_cloexec_by_scan(first: RawFd, end: RawFd) -> io::Result<()> {
    for fd in first..end {
        // SAFETY: F_GETFD on any number only reads a flag word, failing with
        // EBADF if it is not open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            // SAFETY: `fd` was open just now and F_SETFD changes only its
            // flag word; in the forked child nothing else can close it.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::socketpair;
    use crate::sys::is_cloexec;
    use crate::testutil::{TempDir, fd_target, open_fds, read_line_bounded, wait_bounded};
    use std::fs::File;
    use std::net::TcpListener;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::process::Stdio;
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(20);

    /// A shell that prints the handoff variables on one line, then waits
    /// for its stdin to close so its descriptors can be inspected.
    fn reporting_shell() -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            r#"echo "$LISTEN_FDS|$LISTEN_FDNAMES|$HANDOFF_ROLE|$HANDOFF_SOCK_FD|${LISTEN_PID-unset}"; read x || true"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        cmd
    }

    /// A copy of `/dev/null` without close-on-exec, as a careless library
    /// might leave in the supervisor.
    fn leaky_fd() -> OwnedFd {
        let file = File::open("/dev/null").unwrap();
        // SAFETY: `file` is open; dup returns a new descriptor (without
        // close-on-exec) or -1.
        let raw = unsafe { libc::dup(file.as_raw_fd()) };
        assert!(raw >= 0, "dup failed");
        // SAFETY: `raw` was just created and has no other owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        assert!(!is_cloexec(fd.as_fd()));
        fd
    }

    #[test]
    fn successor_gets_exactly_its_fds_and_variables() {
        let dir = TempDir::new("sp");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let unix = UnixListener::bind(dir.path().join("u.sock")).unwrap();
        let (_ours, theirs) = socketpair().unwrap();
        let mut cmd = reporting_shell();
        // As if the supervisor itself had been socket-activated.
        cmd.env(LISTEN_PID, "1");
        let leak = leaky_fd();
        let mut child = spawn_successor(
            cmd,
            &[
                PassedListener {
                    name: "web",
                    fd: tcp.as_fd(),
                },
                PassedListener {
                    name: "admin",
                    fd: unix.as_fd(),
                },
            ],
            theirs.as_fd(),
        )
        .unwrap();
        drop(leak);
        let line = read_line_bounded(child.stdout.as_mut().unwrap(), BOUND);
        assert_eq!(line, "2|web:admin|successor|5|unset");

        let (pid, me) = (child.id(), std::process::id());
        assert_eq!(
            open_fds(pid),
            vec![0, 1, 2, 3, 4, 5],
            "extra or missing fds"
        );
        let expected = [tcp.as_raw_fd(), unix.as_raw_fd(), theirs.as_raw_fd()];
        for (target, source) in (3..).zip(expected) {
            let theirs = fd_target(pid, target).unwrap();
            assert!(theirs.starts_with("socket:["), "{theirs}");
            assert_eq!(Some(theirs), fd_target(me, source), "fd {target}");
        }
        // The parent's descriptors are untouched.
        assert!(is_cloexec(tcp.as_fd()) && is_cloexec(theirs.as_fd()));

        drop(child.stdin.take());
        assert!(wait_bounded(&mut child, BOUND).success());
    }

    #[test]
    fn with_no_listeners_the_control_socket_is_fd_3() {
        let (_ours, theirs) = socketpair().unwrap();
        let mut child = spawn_successor(reporting_shell(), &[], theirs.as_fd()).unwrap();
        let line = read_line_bounded(child.stdout.as_mut().unwrap(), BOUND);
        assert_eq!(line, "0||successor|3|unset");
        assert_eq!(open_fds(child.id()), vec![0, 1, 2, 3]);
        assert_eq!(
            fd_target(child.id(), 3),
            fd_target(std::process::id(), theirs.as_raw_fd())
        );
        drop(child.stdin.take());
        assert!(wait_bounded(&mut child, BOUND).success());
    }

    #[test]
    fn an_exec_failure_is_reported() {
        let (_ours, theirs) = socketpair().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = spawn_successor(
            Command::new("/nonexistent/handoff-successor"),
            &[PassedListener {
                name: "web",
                fd: tcp.as_fd(),
            }],
            theirs.as_fd(),
        )
        .unwrap_err();
        match err {
            SpawnError::Io(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn listener_names_are_checked_before_anything_runs() {
        assert!(validate_listener_names(["web", "admin", "a.b-c_d"]).is_ok());
        assert!(validate_listener_names([]).is_ok());
        for (names, bad) in [
            (&["web", ""][..], ""),
            (&["we:b"][..], "we:b"),
            (&["nul\0"][..], "nul\0"),
        ] {
            match validate_listener_names(names.iter().copied()) {
                Err(SpawnError::BadListenerName { name }) => assert_eq!(name, bad),
                other => panic!("{names:?}: expected BadListenerName, got {other:?}"),
            }
        }
        match validate_listener_names(["web", "admin", "web"]) {
            Err(SpawnError::DuplicateListenerName { name }) => assert_eq!(name, "web"),
            other => panic!("expected DuplicateListenerName, got {other:?}"),
        }

        let (_ours, theirs) = socketpair().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let passed = PassedListener {
            name: "a:b",
            fd: tcp.as_fd(),
        };
        // The command would fail the test if it ran.
        let cmd = Command::new("/bin/false");
        assert!(matches!(
            spawn_successor(cmd, &[passed], theirs.as_fd()),
            Err(SpawnError::BadListenerName { .. })
        ));
    }

    #[test]
    fn errors_say_what_to_do() {
        let colon = SpawnError::BadListenerName { name: "a:b".into() }.to_string();
        assert!(
            colon.contains("\"a:b\"") && colon.contains("LISTEN_FDNAMES"),
            "{colon}"
        );
        let empty = SpawnError::BadListenerName { name: "".into() }.to_string();
        assert!(empty.contains("empty"), "{empty}");
        let dup = SpawnError::DuplicateListenerName { name: "web".into() }.to_string();
        assert!(dup.contains("\"web\"") && dup.contains("unique"), "{dup}");
    }

    #[test]
    fn the_scan_fallback_sets_close_on_exec() {
        let leak = leaky_fd();
        let fd = leak.as_raw_fd();
        // Only this one descriptor: the others belong to concurrent tests.
        set_cloexec_by_scan(fd, fd + 1).unwrap();
        assert!(is_cloexec(leak.as_fd()));
    }

    #[test]
    fn placeholders_fill_only_free_slots_in_the_target_range() {
        let (a, _b) = socketpair().unwrap();
        let held = occupy_free_slots(a.as_fd(), 40).unwrap();
        let nums: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
        assert!(nums.iter().all(|n| (3..=40).contains(n)), "{nums:?}");
        assert!(nums.windows(2).all(|w| w[0] < w[1]), "{nums:?}");
        assert!(held.iter().all(|f| is_cloexec(f.as_fd())));
        // That they leave no slot free is checked in a process whose
        // descriptors no other test thread opens and closes:
        // env::tests::successor_process_entry.
    }
}
