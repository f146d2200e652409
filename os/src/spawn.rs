//! Spawning the successor with inherited listeners (docs/PROTOCOL.md section 5.1).
//!
//! The child gets the listeners at FDs `3, 4, …` in order, its end of the
//! control socketpair right after them, and the variables `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, `HANDOFF_ROLE=successor` and `HANDOFF_SOCK_FD`. Every
//! other descriptor is close-on-exec. A `LISTEN_PID` in the supervisor's own
//! environment (it may itself have been socket-activated) is removed: left
//! in place it would name the supervisor, and a systemd-style child would
//! then ignore every listener it was given.
//!
//! [`spawn_successor_vfork`] and [`spawn_cold_vfork`] start it without
//! forking: `clone(CLONE_VM | CLONE_VFORK)` on a stack of its own, the way
//! glibc's `posix_spawn` works, so this process's page tables are not
//! copied and the spawn costs the same however much memory the supervisor
//! holds. They take a [`Launch`] (program, arguments, environment, working
//! directory, standard streams: what this spawn can honour, all of it
//! readable) and return this module's [`Child`], because std has no way to
//! make its own `Child` for a process std did not start.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, ExitStatus, Output};
use std::sync::atomic::{AtomicI32, Ordering};

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
    /// The system refused (clone, exec, dup), or an argument, variable or
    /// path holds a NUL byte.
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

/// The descriptor number after `n` listeners, if it can be numbered.
fn target_after(n: usize) -> Result<RawFd, SpawnError> {
    RawFd::try_from(n)
        .ok()
        .and_then(|n| FIRST_FD.checked_add(n))
        // The sources are lifted to numbers from this one up, above every
        // target.
        .filter(|&fd| fd < RawFd::MAX)
        .ok_or_else(|| {
            SpawnError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many listeners to number their descriptors",
            ))
        })
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
            // flag word; in the child, which shares no descriptor table,
            // nothing else can close it.
            cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// What to run, and the process started.
// ---------------------------------------------------------------------------

/// Where one of the child's standard streams comes from ([`Launch`]).
/// `std::process::Stdio` cannot be read back once made, which is why this
/// module has its own.
#[derive(Debug, Default)]
#[non_exhaustive]
pub enum ChildStdio {
    /// The parent's own descriptor, as it is (the default, as with
    /// `Command`).
    #[default]
    Inherit,
    /// `/dev/null`, opened for reading (stdin) or writing (stdout, stderr).
    Null,
    /// A new pipe; the parent's end is in [`Child::stdin`],
    /// [`Child::stdout`] or [`Child::stderr`].
    Piped,
    /// This descriptor (a file, a socket, one end of a pipe); the parent's
    /// copy is closed once the child has it.
    Fd(OwnedFd),
}

impl From<OwnedFd> for ChildStdio {
    fn from(fd: OwnedFd) -> ChildStdio {
        ChildStdio::Fd(fd)
    }
}

impl From<std::fs::File> for ChildStdio {
    fn from(file: std::fs::File) -> ChildStdio {
        ChildStdio::Fd(file.into())
    }
}

/// What to run: the part of a `std::process::Command` that this spawn
/// honours, every piece of it readable (a `Command`'s standard streams,
/// `env_clear`, `pre_exec`, uid and gid cannot be read back from it, so a
/// `Command` cannot be taken here without silently dropping some of them).
///
/// What is not here (uid, gid, groups, process group, session, `arg0`,
/// `pre_exec`) has no place between this spawn's clone and exec, which
/// runs in the supervisor's memory; a daemon that needs them is given a
/// wrapper that sets them and execs it (`setpriv`, `runuser`) as its
/// program.
///
/// As with `Command`: `argv[0]` is the program as given; a program without
/// a `/` is looked up in the `PATH` the child will have (`/bin:/usr/bin`
/// if it has none), the way `execvp` does, after changing to
/// [`current_dir`](Launch::current_dir), so a relative program or `PATH`
/// entry is taken from there; a file without a `#!` line that the kernel
/// refuses (`ENOEXEC`) is run with `/bin/sh`, as `execvp` does.
#[derive(Debug)]
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    /// Changes to the inherited environment: `None` removes the variable.
    env: BTreeMap<OsString, Option<OsString>>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: ChildStdio,
    stdout: ChildStdio,
    stderr: ChildStdio,
}

impl Launch {
    /// Runs `program` with no arguments, this process's environment and
    /// working directory, and its standard streams inherited.
    pub fn new(program: impl AsRef<OsStr>) -> Launch {
        Launch {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            env_clear: false,
            cwd: None,
            stdin: ChildStdio::Inherit,
            stdout: ChildStdio::Inherit,
            stderr: ChildStdio::Inherit,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Launch {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Launch
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable in the child's environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Launch {
        self.env
            .insert(key.as_ref().to_owned(), Some(value.as_ref().to_owned()));
        self
    }

    /// Sets variables in the child's environment.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Launch
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    /// Removes a variable from the child's environment.
    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Launch {
        self.env.insert(key.as_ref().to_owned(), None);
        self
    }

    /// Starts the child's environment empty instead of from this process's;
    /// forgets the changes made so far, as `Command::env_clear` does.
    pub fn env_clear(&mut self) -> &mut Launch {
        self.env.clear();
        self.env_clear = true;
        self
    }

    /// The child's working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Launch {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// The child's standard input.
    pub fn stdin(&mut self, stdio: impl Into<ChildStdio>) -> &mut Launch {
        self.stdin = stdio.into();
        self
    }

    /// The child's standard output.
    pub fn stdout(&mut self, stdio: impl Into<ChildStdio>) -> &mut Launch {
        self.stdout = stdio.into();
        self
    }

    /// The child's standard error.
    pub fn stderr(&mut self, stdio: impl Into<ChildStdio>) -> &mut Launch {
        self.stderr = stdio.into();
        self
    }

    /// The program, as given to [`Launch::new`].
    pub fn get_program(&self) -> &OsStr {
        &self.program
    }
}

/// A process started by this module: the handle `std::process::Child`
/// would be (std offers no way to make one of those for a process it did not
/// start itself), with the same fields and methods, and the same
/// semantics. Dropping it neither kills nor reaps the process.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    /// Set once reaped: from then on the pid may name another process.
    status: Option<ExitStatus>,
    /// Our end of the child's standard input, if it is [`ChildStdio::Piped`].
    pub stdin: Option<ChildStdin>,
    /// Our end of the child's standard output, if piped.
    pub stdout: Option<ChildStdout>,
    /// Our end of the child's standard error, if piped.
    pub stderr: Option<ChildStderr>,
}

impl Child {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Sends `SIGKILL`. Once the child has been reaped this does nothing and
    /// succeeds: its pid may already belong to another process.
    pub fn kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: kill takes two integers. The pid is our unreaped child's
        // (a zombie at worst), so it cannot name another process.
        cvt(unsafe { libc::kill(self.pid, libc::SIGKILL) }).map(drop)
    }

    /// Waits for the child to exit and reaps it; closes our end of its
    /// standard input first, so a child reading it to the end can finish.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = reap(self.pid, 0)?.ok_or_else(|| io::Error::other("waitpid returned 0"))?;
        self.status = Some(status);
        Ok(status)
    }

    /// Reaps the child if it has exited, without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        let status = reap(self.pid, libc::WNOHANG)?;
        self.status = status;
        Ok(status)
    }

    /// Closes our end of its standard input, reads its standard output and
    /// error to the end (both at once, so neither pipe can fill up and stall
    /// the child) and waits for it.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        drop(self.stdin.take());
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        match (self.stdout.take(), self.stderr.take()) {
            (None, None) => {}
            (Some(mut out), None) => {
                out.read_to_end(&mut stdout)?;
            }
            (None, Some(mut err)) => {
                err.read_to_end(&mut stderr)?;
            }
            (Some(mut out), Some(mut err)) => std::thread::scope(|s| {
                let errs = s.spawn(|| err.read_to_end(&mut stderr));
                out.read_to_end(&mut stdout)?;
                errs.join()
                    .map_err(|_| io::Error::other("the stderr reader panicked"))??;
                Ok::<_, io::Error>(())
            })?,
        }
        let status = self.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// `waitpid` on `pid`, retried on `EINTR`; `None` if `WNOHANG` found it
/// still running.
fn reap(pid: libc::pid_t, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut raw: libc::c_int = 0;
        // SAFETY: `raw` is a live local for the kernel to write the status
        // into; the pid is our own child's.
        match unsafe { libc::waitpid(pid, &mut raw, flags) } {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(Some(ExitStatus::from_raw(raw))),
        }
    }
}

/// Spawns `launch` as the successor: `listeners` at FDs `3..3+n`,
/// `control` at `3+n`, `HANDOFF_ROLE=successor` and `HANDOFF_SOCK_FD`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` set (over any the launch sets) and
/// `LISTEN_PID` removed; every other descriptor above 2 close-on-exec.
///
/// Without forking this process: `clone(CLONE_VM | CLONE_VFORK)` runs the
/// child on a stack of its own in our memory, with this thread suspended
/// until it has called `exec` (or failed to), so no page table is copied —
/// the cost of a fork grows with the supervisor's memory, this one's does
/// not. Between clone and exec only system calls run.
///
/// The child's signal mask is empty; a signal this process catches starts
/// at its default action, one it ignores stays ignored (`SIGPIPE` aside,
/// which starts at its default, as with `Command`). An `exec` failure comes
/// back as the `errno` it failed with (a missing program is
/// `ErrorKind::NotFound`), the child already reaped.
pub fn spawn_successor_vfork(
    launch: Launch,
    listeners: &[PassedListener<'_>],
    control: BorrowedFd<'_>,
) -> Result<Child, SpawnError> {
    spawn_vfork(
        launch,
        listeners,
        Some(control),
        #[cfg(test)]
        None,
    )
}

/// Spawns `launch` cold, as systemd's socket activation would: `listeners`
/// at FDs `3..3+n` with `LISTEN_FDS` and `LISTEN_FDNAMES`, and none of the
/// successor's variables (removed if this process or the launch has them),
/// so the child starts as an ordinary first incumbent. `LISTEN_PID` is
/// removed too (the child would otherwise compare it with its own pid and
/// ignore the listeners). Unforked, with the same guarantees as
/// [`spawn_successor_vfork`].
pub fn spawn_cold_vfork(
    launch: Launch,
    listeners: &[PassedListener<'_>],
) -> Result<Child, SpawnError> {
    spawn_vfork(
        launch,
        listeners,
        None,
        #[cfg(test)]
        None,
    )
}

/// The child's stack. Nothing deep runs there (system calls, a loop over
/// the signals), so this is ample; the guard page below it turns an
/// overflow into a fault in the child instead of a write into our memory.
const CHILD_STACK: usize = 64 * 1024;

/// The size of the kernel's signal set, which its signal calls insist on:
/// 64 signals, 128 on MIPS.
#[cfg(any(target_arch = "mips", target_arch = "mips64"))]
const KERNEL_SIGSET_BYTES: usize = 16;
#[cfg(not(any(target_arch = "mips", target_arch = "mips64")))]
const KERNEL_SIGSET_BYTES: usize = 8;

/// A kernel signal set big enough for every architecture.
type KernelSigset = [u64; 2];

/// A test's pause in the child, just before it unblocks signals and execs:
/// it writes its pid to `notify`, then waits for a byte on `resume`.
#[cfg(test)]
#[derive(Clone, Copy, Debug)]
struct Pause {
    notify: RawFd,
    resume: RawFd,
}

/// Everything the child reads, prepared by the parent: the child may not
/// allocate or take a lock, since it runs in our memory while our other
/// threads go on. It writes only `error` and `sh_argv[1]`.
struct Plan<'a> {
    /// Paths to try `execve` on, in order (more than one for a `PATH`
    /// search).
    candidates: &'a [CString],
    /// Null-terminated.
    argv: &'a [*const libc::c_char],
    /// Null-terminated.
    envp: &'a [*const libc::c_char],
    /// `/bin/sh`, a slot for the script's path, then `argv[1..]` and a null:
    /// the `ENOEXEC` fallback.
    sh_argv: &'a [Cell<*const libc::c_char>],
    /// The descriptors to put at 0, 1 and 2 (-1: leave as is).
    stdio: [RawFd; 3],
    /// The descriptors to put at 3, 4, … in order.
    fds: &'a [RawFd],
    /// Every source above sits at this number or higher, above every
    /// target, so no `dup2` overwrites one still to be copied; from here up
    /// everything is made close-on-exec.
    above_targets: RawFd,
    scan_limit: RawFd,
    cwd: Option<&'a CStr>,
    /// The highest signal number.
    sigmax: libc::c_int,
    /// Zero, or the `errno` the child failed with.
    error: AtomicI32,
    #[cfg(test)]
    pause: Option<Pause>,
}

/// The shell `execvp` runs a file in when the kernel will not exec it.
const SH: &CStr = c"/bin/sh";

/// The spawn; `control` is the successor's socket (`None`: cold).
fn spawn_vfork(
    launch: Launch,
    listeners: &[PassedListener<'_>],
    control: Option<BorrowedFd<'_>>,
    #[cfg(test)] pause: Option<Pause>,
) -> Result<Child, SpawnError> {
    validate_listener_names(listeners.iter().map(|l| l.name))?;
    let count = listeners.len() + usize::from(control.is_some());
    let above_targets = target_after(count)?;
    let Launch {
        program,
        args,
        env,
        env_clear,
        cwd,
        stdin,
        stdout,
        stderr,
    } = launch;

    // The environment, argv and the paths to try, as C strings, now: the
    // child may not allocate.
    let names: Vec<&str> = listeners.iter().map(|l| l.name).collect();
    let mut handoff_vars: Vec<(&str, Option<String>)> = vec![
        (LISTEN_FDS, Some(listeners.len().to_string())),
        (LISTEN_FDNAMES, Some(names.join(":"))),
        (LISTEN_PID, None),
    ];
    match control {
        Some(_) => handoff_vars.extend([
            (HANDOFF_ROLE, Some("successor".to_owned())),
            (HANDOFF_SOCK_FD, Some((above_targets - 1).to_string())),
        ]),
        None => handoff_vars.extend([(HANDOFF_ROLE, None), (HANDOFF_SOCK_FD, None)]),
    }
    let child_env = child_environment(env_clear, env, handoff_vars);
    let path_var = child_env.get(OsStr::new("PATH")).cloned();
    let env_strings = child_env
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            c_string(kv)
        })
        .collect::<io::Result<Vec<CString>>>()
        .map_err(SpawnError::Io)?;
    let envp = null_terminated(&env_strings);
    let program_c = c_string(program.as_bytes().to_vec()).map_err(SpawnError::Io)?;
    let arg_strings = args
        .iter()
        .map(|a| c_string(a.as_bytes().to_vec()))
        .collect::<io::Result<Vec<CString>>>()
        .map_err(SpawnError::Io)?;
    let argv: Vec<*const libc::c_char> = std::iter::once(program_c.as_ptr())
        .chain(arg_strings.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let sh_argv: Vec<Cell<*const libc::c_char>> = [SH.as_ptr(), std::ptr::null()]
        .into_iter()
        .chain(arg_strings.iter().map(|a| a.as_ptr()))
        .chain(std::iter::once(std::ptr::null()))
        .map(Cell::new)
        .collect();
    let candidates = exec_candidates(&program, path_var.as_deref()).map_err(SpawnError::Io)?;
    let cwd = cwd
        .map(|d| c_string(d.into_os_string().into_vec()))
        .transpose()
        .map_err(SpawnError::Io)?;

    // Every source the child copies from sits above every target, in the
    // parent already, so the child only has to dup2 (and a source at 0, 1
    // or 2 is not overwritten by the stdio setup).
    let lifted: Vec<OwnedFd> = listeners
        .iter()
        .map(|l| l.fd)
        .chain(control)
        .map(|fd| dup_at_least(fd, above_targets))
        .collect::<io::Result<_>>()
        .map_err(SpawnError::Io)?;
    let fds: Vec<RawFd> = lifted.iter().map(|f| f.as_raw_fd()).collect();
    let (in_child, in_ours) = prepare_stdio(stdin, true, above_targets).map_err(SpawnError::Io)?;
    let (out_child, out_ours) =
        prepare_stdio(stdout, false, above_targets).map_err(SpawnError::Io)?;
    let (err_child, err_ours) =
        prepare_stdio(stderr, false, above_targets).map_err(SpawnError::Io)?;
    let raw = |f: &Option<OwnedFd>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
    #[cfg(test)]
    let (pause, _pause_fds) = lift_pause(pause, above_targets).map_err(SpawnError::Io)?;
    let plan = Plan {
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
        sh_argv: &sh_argv,
        stdio: [raw(&in_child), raw(&out_child), raw(&err_child)],
        fds: &fds,
        above_targets,
        scan_limit: fd_scan_limit(),
        cwd: cwd.as_deref(),
        sigmax: libc::SIGRTMAX(),
        error: AtomicI32::new(0),
        #[cfg(test)]
        pause,
    };
    let pid = clone_vfork(&plan).map_err(SpawnError::Io)?;
    let errno = plan.error.load(Ordering::Acquire);
    if errno != 0 {
        // The child has already exited: CLONE_VFORK resumed us only then.
        // Reaped here, it leaves no zombie.
        let _ = reap(pid, 0);
        return Err(SpawnError::Io(io::Error::from_raw_os_error(errno)));
    }
    Ok(Child {
        pid,
        status: None,
        stdin: in_ours.map(ChildStdin::from),
        stdout: out_ours.map(ChildStdout::from),
        stderr: err_ours.map(ChildStderr::from),
    })
    // Our copies of the child's descriptors close here.
}

/// The environment the child gets: ours (unless cleared), then the
/// caller's changes, then the handoff's variables, which win.
fn child_environment(
    clear: bool,
    changes: BTreeMap<OsString, Option<OsString>>,
    handoff: Vec<(&str, Option<String>)>,
) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = if clear {
        BTreeMap::new()
    } else {
        std::env::vars_os().collect()
    };
    let handoff = handoff
        .into_iter()
        .map(|(k, v)| (OsString::from(k), v.map(OsString::from)));
    for (k, v) in changes.into_iter().chain(handoff) {
        match v {
            Some(v) => env.insert(k, v),
            None => env.remove(&k),
        };
    }
    env
}

/// A C string, or the error `Command` gives for a NUL inside.
fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// Pointers to `strings`, then a null.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths `execvp` would try for `program`: itself if it has a `/`;
/// otherwise each `PATH` entry joined with it, an empty entry meaning the
/// working directory (the program's bare name), and `/bin:/usr/bin` if there
/// is no `PATH`. An empty program is not found, as with `execvp`.
fn exec_candidates(program: &OsStr, path: Option<&OsStr>) -> io::Result<Vec<CString>> {
    let name = program.as_bytes();
    if name.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    if name.contains(&b'/') {
        return Ok(vec![c_string(name.to_vec())?]);
    }
    let path = path.map_or(&b"/bin:/usr/bin"[..], OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let mut full = dir.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(name);
            c_string(full)
        })
        .collect()
}

/// A close-on-exec copy of `fd` at `min` or above; `fd` stays as it is.
fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `fd` is borrowed, so open; F_DUPFD_CLOEXEC only makes a new
    // descriptor.
    let copy = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: `copy` was just made and has no other owner.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `fd` itself if it sits at `min` or above, else a copy there (and `fd`
/// closed).
fn lift(fd: OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= min {
        Ok(fd)
    } else {
        dup_at_least(fd.as_fd(), min)
    }
}

/// The descriptor the child puts at its stream (lifted to `min` or above)
/// and, for a pipe, our end.
fn prepare_stdio(
    stdio: ChildStdio,
    child_reads: bool,
    min: RawFd,
) -> io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    match stdio {
        ChildStdio::Inherit => Ok((None, None)),
        ChildStdio::Null => {
            let access = if child_reads {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY
            };
            // SAFETY: the path is a NUL-terminated literal; open only makes
            // a new descriptor.
            let fd = cvt(unsafe { libc::open(c"/dev/null".as_ptr(), access | libc::O_CLOEXEC) })?;
            // SAFETY: `fd` was just opened and has no other owner.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok((Some(lift(fd, min)?), None))
        }
        ChildStdio::Piped => {
            let mut ends = [-1; 2];
            // SAFETY: `ends` is a live array of two ints for the kernel to
            // fill.
            cvt(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) })?;
            // SAFETY: both ends were just made and have no other owner.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
            let (theirs, ours) = if child_reads {
                (read, write)
            } else {
                (write, read)
            };
            Ok((Some(lift(theirs, min)?), Some(ours)))
        }
        ChildStdio::Fd(fd) => Ok((Some(lift(fd, min)?), None)),
    }
}

/// The test pause's descriptors, lifted out of the child's way.
#[cfg(test)]
fn lift_pause(pause: Option<Pause>, min: RawFd) -> io::Result<(Option<Pause>, Vec<OwnedFd>)> {
    let Some(p) = pause else {
        return Ok((None, Vec::new()));
    };
    // SAFETY: the test keeps both descriptors open for the whole spawn.
    let (n, r) = unsafe {
        (
            BorrowedFd::borrow_raw(p.notify),
            BorrowedFd::borrow_raw(p.resume),
        )
    };
    let (n, r) = (dup_at_least(n, min)?, dup_at_least(r, min)?);
    let lifted = Pause {
        notify: n.as_raw_fd(),
        resume: r.as_raw_fd(),
    };
    Ok((Some(lifted), vec![n, r]))
}

/// This thread's signal mask, all blocked until dropped, when it is put
/// back. Set with the raw system call: glibc's `sigprocmask` leaves its own
/// two internal signals unblocked.
struct AllSignalsBlocked {
    old: KernelSigset,
}

impl AllSignalsBlocked {
    fn new() -> io::Result<AllSignalsBlocked> {
        let all: KernelSigset = [u64::MAX; 2];
        let mut old: KernelSigset = [0; 2];
        // SAFETY: both sets are live and at least KERNEL_SIGSET_BYTES long;
        // the kernel reads one and writes the other. SIGKILL and SIGSTOP are
        // left out by the kernel itself.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as libc::c_long,
                all.as_ptr(),
                old.as_mut_ptr(),
                KERNEL_SIGSET_BYTES,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(AllSignalsBlocked { old })
    }
}

impl Drop for AllSignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask read in `new`, a live set of the
        // kernel's size; the old-set pointer is null, which is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK as libc::c_long,
                self.old.as_ptr(),
                std::ptr::null_mut::<KernelSigset>(),
                KERNEL_SIGSET_BYTES,
            );
        }
    }
}

/// The child's stack: an anonymous mapping with a guard page at its low
/// end, unmapped on drop.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> io::Result<ChildStack> {
        // SAFETY: sysconf takes a constant and returns a number.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a fresh private anonymous mapping; no address is given, so
        // nothing existing is replaced.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping just made, which nothing
        // uses yet.
        cvt(unsafe { libc::mprotect(base, page, libc::PROT_NONE) })?;
        Ok(stack)
    }

    /// The initial stack pointer: the high end (stacks grow down on every
    /// architecture Linux runs Rust on), page-aligned and so 16-aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is `len` long.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by nothing now: the child
        // has exec'd or exited before clone returned.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Starts the child on `plan` and returns its pid once it has exec'd or
/// exited (`plan.error` says which).
fn clone_vfork(plan: &Plan<'_>) -> io::Result<libc::pid_t> {
    let stack = ChildStack::new()?;
    // With every signal blocked in this thread, the child starts with them
    // all blocked, so no handler of ours can run in it (on its stack, in our
    // memory) before it has set them back to their defaults.
    let blocked = AllSignalsBlocked::new()?;
    // SAFETY: `child_main` is an extern "C" fn that never unwinds and only
    // makes async-signal-safe calls; `stack.top()` is the high end of a
    // writable mapping that outlives the child's use of it (CLONE_VFORK
    // holds this thread until the child has exec'd or exited, and the
    // mapping is unmapped after); `plan` outlives this call for the same
    // reason, and the child only reads it, but for `error` (atomic) and
    // `sh_argv` (cells no one else touches meanwhile). SIGCHLD makes the
    // child's exit reapable with waitpid like any child's.
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::from_ref(plan).cast_mut().cast(),
        )
    };
    let cloned = if pid == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    drop(blocked);
    drop(stack);
    cloned
}

/// The child, between clone and exec. It shares our memory (and the
/// suspended thread's thread-local storage, so `errno` is that thread's),
/// so it makes system calls only: no allocation, no lock, nothing that can
/// panic.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&Plan` clone_vfork passed, alive until this
    // child has exec'd or exited.
    let plan = unsafe { &*arg.cast_const().cast::<Plan<'_>>() };
    let errno = child_run(plan);
    plan.error.store(
        if errno == 0 { libc::EINVAL } else { errno },
        Ordering::Release,
    );
    // SAFETY: _exit ends this process at once, running nothing of ours.
    unsafe { libc::_exit(127) }
}

/// `errno`, which in the child is the suspended parent thread's.
fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns this thread's errno slot, always
    // valid to read.
    unsafe { *libc::__errno_location() }
}

/// The child's steps; returns only on failure, with the `errno`.
fn child_run(plan: &Plan<'_>) -> libc::c_int {
    if let Err(e) = reset_signal_handlers(plan.sigmax) {
        return e;
    }
    for (target, &source) in (0..).zip(plan.stdio.iter()) {
        if source >= 0 {
            if let Err(e) = dup2_retry(source, target) {
                return e;
            }
        }
    }
    for (target, &source) in (FIRST_FD..).zip(plan.fds.iter()) {
        if let Err(e) = dup2_retry(source, target) {
            return e;
        }
    }
    if let Err(e) = mark_cloexec_from(plan.above_targets, plan.scan_limit) {
        return e.raw_os_error().unwrap_or(libc::EINVAL);
    }
    if let Some(dir) = plan.cwd {
        // SAFETY: `dir` is a C string the parent keeps alive.
        if unsafe { libc::chdir(dir.as_ptr()) } != 0 {
            return errno();
        }
    }
    #[cfg(test)]
    if let Some(p) = plan.pause {
        pause_for_test(p);
    }
    // Last before exec, so that a signal pending meanwhile is acted on at its
    // default (the handlers are gone), never by a handler of ours.
    let none: KernelSigset = [0; 2];
    // SAFETY: `none` is a live set of at least the kernel's size; the
    // old-set pointer is null.
    let unblocked = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK as libc::c_long,
            none.as_ptr(),
            std::ptr::null_mut::<KernelSigset>(),
            KERNEL_SIGSET_BYTES,
        )
    };
    if unblocked != 0 {
        return errno();
    }
    exec_like_execvp(plan)
}

/// `dup2`, retried on `EINTR`. It clears close-on-exec on `target`.
fn dup2_retry(source: RawFd, target: RawFd) -> Result<(), libc::c_int> {
    loop {
        // SAFETY: `source` is a descriptor the parent keeps open (so open in
        // the child's copy of the table); dup2 replaces `target`, which is
        // the child's to fill.
        if unsafe { libc::dup2(source, target) } != -1 {
            return Ok(());
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Sets every caught signal back to its default, and `SIGPIPE` too (as
/// `Command` does); ignored ones stay ignored, as exec leaves them.
fn reset_signal_handlers(sigmax: libc::c_int) -> Result<(), libc::c_int> {
    for sig in 1..=sigmax {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: `old` is a live sigaction for the query to fill; the new
        // action is null, so nothing changes.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            // glibc refuses its own internal signals (cancellation, setxid)
            // and has handlers for them: reset those with the system call.
            reset_with_syscall(sig);
            continue;
        }
        let h = old.sa_sigaction;
        if h == libc::SIG_DFL || (h == libc::SIG_IGN && sig != libc::SIGPIPE) {
            continue;
        }
        // SAFETY: all zeros with SIG_DFL is a valid sigaction.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: `dfl` is a live, initialised sigaction; no old action is
        // asked for.
        if unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) } != 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// Sets `sig` to its default with the raw `rt_sigaction`, whose all-zero
/// action is `SIG_DFL` with no flags on every architecture (the handler is
/// 0 wherever the fields sit). Best effort: a failure leaves a signal nobody
/// sends to this process.
fn reset_with_syscall(sig: libc::c_int) {
    // Larger than the kernel's sigaction anywhere.
    let dfl = [0u64; 6];
    // SAFETY: `dfl` is a live, zeroed buffer at least as large as the
    // kernel's struct sigaction; the old-action pointer is null.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::c_long::from(sig),
            dfl.as_ptr(),
            std::ptr::null_mut::<u64>(),
            KERNEL_SIGSET_BYTES,
        );
    }
}

/// The test's pause: our pid to `notify`, then wait for a byte on `resume`.
#[cfg(test)]
fn pause_for_test(p: Pause) {
    // SAFETY: getpid takes nothing.
    let pid = unsafe { libc::getpid() }.to_ne_bytes();
    // SAFETY: `pid` is a live buffer of its length; the descriptor is the
    // test's pipe, kept open by it.
    unsafe { libc::write(p.notify, pid.as_ptr().cast(), pid.len()) };
    let mut byte = 0u8;
    // SAFETY: `byte` is a live one-byte buffer; the test's pipe, as above.
    unsafe { libc::read(p.resume, (&raw mut byte).cast(), 1) };
}

/// `execve` on each candidate in turn, with `execvp`'s rules: a refused
/// format (`ENOEXEC`) is run with `/bin/sh`; a missing file, directory or
/// device moves on to the next; a permission error moves on but is the one
/// reported if nothing runs; any other error stops the search.
fn exec_like_execvp(plan: &Plan<'_>) -> libc::c_int {
    let mut saw_eacces = false;
    let mut last = libc::ENOENT;
    for path in plan.candidates {
        // SAFETY: `path`, `argv` and `envp` are C strings and
        // null-terminated arrays of them that the parent keeps alive;
        // execve returns only on failure.
        unsafe { libc::execve(path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
        let mut e = errno();
        if e == libc::ENOEXEC {
            if let Some(slot) = plan.sh_argv.get(1) {
                slot.set(path.as_ptr());
            }
            // SAFETY: as above; `sh_argv` is a null-terminated array of C
            // strings (a Cell has its content's layout).
            unsafe {
                libc::execve(
                    SH.as_ptr(),
                    plan.sh_argv.as_ptr().cast::<*const libc::c_char>(),
                    plan.envp.as_ptr(),
                )
            };
            e = errno();
        }
        match e {
            libc::EACCES => saw_eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return e,
        }
        last = e;
    }
    if saw_eacces { libc::EACCES } else { last }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::socketpair;
    use crate::sys::is_cloexec;
    use crate::testutil::{TempDir, fd_target, open_fds, read_line_bounded, wait_bounded};
    use std::fs::File;
    use std::io::Write;
    use std::net::TcpListener;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Duration;

    const BOUND: Duration = Duration::from_secs(20);

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
        // The program would fail the test if it ran.
        assert!(matches!(
            spawn_successor_vfork(Launch::new("/bin/false"), &[passed], theirs.as_fd()),
            Err(SpawnError::BadListenerName { .. })
        ));
        assert!(matches!(
            spawn_cold_vfork(Launch::new("/bin/false"), &[passed]),
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

    /// A shell that prints the handoff variables on one line, then waits
    /// for its stdin to close so its descriptors can be inspected.
    fn reporting_launch() -> Launch {
        let mut launch = Launch::new("/bin/sh");
        launch
            .args([
                "-c",
                r#"echo "$LISTEN_FDS|$LISTEN_FDNAMES|${HANDOFF_ROLE-unset}|${HANDOFF_SOCK_FD-unset}|${LISTEN_PID-unset}"; read x || true"#,
            ])
            .stdin(ChildStdio::Piped)
            .stdout(ChildStdio::Piped)
            .stderr(ChildStdio::Null);
        launch
    }

    #[test]
    fn successor_gets_exactly_its_fds_and_variables() {
        let dir = TempDir::new("spv");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let unix = UnixListener::bind(dir.path().join("u.sock")).unwrap();
        let (_ours, theirs) = socketpair().unwrap();
        let mut launch = reporting_launch();
        launch.env(LISTEN_PID, "1");
        let leak = leaky_fd();
        let mut child = spawn_successor_vfork(
            launch,
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
            let got = fd_target(pid, target).unwrap();
            assert!(got.starts_with("socket:["), "{got}");
            assert_eq!(Some(got), fd_target(me, source), "fd {target}");
        }
        assert_eq!(fd_target(pid, 2).as_deref(), Some("/dev/null"));
        assert!(is_cloexec(tcp.as_fd()) && is_cloexec(theirs.as_fd()));
        drop(child.stdin.take());
        assert!(wait_bounded(&mut child, BOUND).success());
    }

    #[test]
    fn a_cold_start_has_no_successor_variables() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut launch = reporting_launch();
        // As if this process were itself a successor.
        launch
            .env(HANDOFF_ROLE, "successor")
            .env(HANDOFF_SOCK_FD, "9");
        let mut child = spawn_cold_vfork(
            launch,
            &[PassedListener {
                name: "main",
                fd: tcp.as_fd(),
            }],
        )
        .unwrap();
        let line = read_line_bounded(child.stdout.as_mut().unwrap(), BOUND);
        assert_eq!(line, "1|main|unset|unset|unset");
        assert_eq!(open_fds(child.id()), vec![0, 1, 2, 3]);
        drop(child.stdin.take());
        assert!(wait_bounded(&mut child, BOUND).success());
    }

    #[test]
    fn with_no_listeners_the_control_socket_is_fd_3() {
        let (_ours, theirs) = socketpair().unwrap();
        let mut child = spawn_successor_vfork(reporting_launch(), &[], theirs.as_fd()).unwrap();
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
    fn exec_failures_come_back_with_their_errno() {
        let (_ours, theirs) = socketpair().unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let passed = [PassedListener {
            name: "web",
            fd: tcp.as_fd(),
        }];
        let dir = TempDir::new("spe");
        let not_executable = dir.path().join("plain");
        std::fs::write(&not_executable, "echo hi\n").unwrap();
        for (program, kind) in [
            (
                OsString::from("/nonexistent/handoff-successor"),
                io::ErrorKind::NotFound,
            ),
            (
                OsString::from("handoff-no-such-program-on-path"),
                io::ErrorKind::NotFound,
            ),
            (OsString::from(""), io::ErrorKind::NotFound),
            (
                not_executable.clone().into_os_string(),
                io::ErrorKind::PermissionDenied,
            ),
        ] {
            match spawn_successor_vfork(Launch::new(&program), &passed, theirs.as_fd()) {
                Err(SpawnError::Io(e)) => assert_eq!(e.kind(), kind, "{program:?}: {e}"),
                other => panic!("{program:?}: expected Io, got {other:?}"),
            }
        }
        let mut nul = Launch::new("/bin/true");
        nul.arg("a\0b");
        match spawn_cold_vfork(nul, &[]) {
            Err(SpawnError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    /// The `Sig*` lines of `/proc/<pid>/status`, by name.
    fn signal_lines(pid: u32) -> BTreeMap<String, u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                let k = k.strip_prefix("Sig")?;
                Some((k.to_owned(), u64::from_str_radix(v.trim(), 16).ok()?))
            })
            .collect()
    }

    fn bit(sig: libc::c_int) -> u64 {
        1 << (sig - 1)
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    /// Stops the child just before it unblocks signals and execs, and
    /// looks at it there: everything blocked (the parent blocked all around
    /// the clone), no handler left (ours would run in our memory), SIGPIPE
    /// back at its default, an ignored signal still ignored.
    #[test]
    fn between_clone_and_exec_no_handler_of_ours_can_run() {
        let caught = libc::SIGRTMIN() + 7;
        let ignored = libc::SIGRTMIN() + 8;
        // SAFETY: a handler that does nothing, for a signal no other test
        // uses; then SIG_IGN for another such signal.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(libc::sigaction(caught, &sa, std::ptr::null_mut()), 0);
            sa.sa_sigaction = libc::SIG_IGN;
            assert_eq!(libc::sigaction(ignored, &sa, std::ptr::null_mut()), 0);
        }
        let me = signal_lines(std::process::id());
        assert_ne!(me["Cgt"] & bit(caught), 0);
        assert_ne!(me["Ign"] & bit(libc::SIGPIPE), 0, "std ignores SIGPIPE");

        let (notify_r, notify_w) = UnixStream::pair().unwrap();
        let (resume_r, mut resume_w) = UnixStream::pair().unwrap();
        let pause = Pause {
            notify: notify_w.as_raw_fd(),
            resume: resume_r.as_raw_fd(),
        };
        let mut launch = Launch::new("grep");
        launch
            .args(["^Sig", "/proc/self/status"])
            .stdout(ChildStdio::Piped);
        let spawner = std::thread::spawn(move || {
            let child = spawn_vfork(launch, &[], None, Some(pause));
            drop((notify_w, resume_r));
            child
        });
        notify_r.set_read_timeout(Some(BOUND)).unwrap();
        let mut pid = [0u8; 4];
        (&notify_r).read_exact(&mut pid).unwrap();
        let pid = u32::from_ne_bytes(pid);
        let paused = signal_lines(pid);
        resume_w.write_all(b"x").unwrap();
        let child = spawner.join().unwrap().unwrap();
        assert_eq!(child.id(), pid);

        let unblockable = bit(libc::SIGKILL) | bit(libc::SIGSTOP);
        let all = u64::MAX >> (64 - libc::SIGRTMAX());
        assert_eq!(paused["Blk"], all & !unblockable, "{paused:x?}");
        assert_eq!(paused["Cgt"], 0, "{paused:x?}");
        assert_eq!(paused["Ign"] & bit(libc::SIGPIPE), 0, "{paused:x?}");
        assert_ne!(paused["Ign"] & bit(ignored), 0, "{paused:x?}");

        // And after exec: nothing blocked, the same ignored.
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let after: BTreeMap<&str, u64> = std::str::from_utf8(&out.stdout)
            .unwrap()
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((
                    k.strip_prefix("Sig")?,
                    u64::from_str_radix(v.trim(), 16).ok()?,
                ))
            })
            .collect();
        assert_eq!(after["Blk"], 0, "{after:x?}");
        assert_eq!(after["Cgt"] & bit(caught), 0, "{after:x?}");
        assert_eq!(after["Ign"] & bit(libc::SIGPIPE), 0, "{after:x?}");
        assert_ne!(after["Ign"] & bit(ignored), 0, "{after:x?}");
    }

    #[test]
    fn exec_candidates_follow_execvp() {
        let c = |p: &str, path: Option<&str>| -> Vec<String> {
            exec_candidates(OsStr::new(p), path.map(OsStr::new))
                .unwrap()
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect()
        };
        assert_eq!(c("./x", Some("/a")), ["./x"]);
        assert_eq!(c("/bin/sh", None), ["/bin/sh"]);
        assert_eq!(c("sh", None), ["/bin/sh", "/usr/bin/sh"]);
        assert_eq!(c("sh", Some("/a::/b/")), ["/a/sh", "sh", "/b//sh"]);
        assert_eq!(c("sh", Some("")), ["sh"]);
        let empty = exec_candidates(OsStr::new(""), None).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn the_child_environment_applies_changes_then_the_handoff_variables() {
        let mut changes = BTreeMap::new();
        changes.insert(OsString::from("A"), Some(OsString::from("1")));
        changes.insert(OsString::from(LISTEN_FDS), Some(OsString::from("99")));
        changes.insert(OsString::from("GONE"), None);
        let env = child_environment(
            true,
            changes,
            vec![(LISTEN_FDS, Some("2".into())), (LISTEN_PID, None)],
        );
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(env, [("A", "1"), (LISTEN_FDS, "2")]);
    }
}
