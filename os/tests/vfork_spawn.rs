//! The unforked spawn path (`spawn_successor_vfork`, `spawn_cold_vfork`)
//! with real processes, in a binary of its own: some tests look at the whole
//! process (no child left unreaped, descriptors 0 and 3.. swapped for a
//! moment, signal dispositions), so they take turns on one lock and no
//! other test binary's threads run beside them.
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use handoff_os::process::{ExitWatch, poll_readable};
use handoff_os::spawn::{
    Child, ChildStdio, Launch, PassedListener, SpawnError, spawn_cold_vfork, spawn_successor_vfork,
};

const BOUND: Duration = Duration::from_secs(20);

static TURN: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("hvf-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes an executable (or, with `mode` 0o644, a plain) file.
fn script(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// Waits at most `BOUND` for `child` to exit (killing it and failing
/// otherwise), then collects what it wrote to its pipes.
fn output_within(mut child: Child) -> (ExitStatus, String, String) {
    let watch = ExitWatch::new(child.id()).unwrap();
    drop(child.stdin.take());
    if !poll_readable(&[watch.as_fd()], Some(BOUND)).unwrap()[0] {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child {} did not exit within {BOUND:?}", child.id());
    }
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status, text(out.stdout), text(out.stderr))
}

/// The standard output of a successful run of `launch`, spawned cold.
fn run(mut launch: Launch) -> String {
    launch.stdout(ChildStdio::Piped);
    let (status, out, err) = output_within(spawn_cold_vfork(launch, &[]).unwrap());
    assert!(status.success(), "{status:?}: {err}");
    out
}

fn io_error(r: Result<Child, SpawnError>) -> io::Error {
    match r {
        Err(SpawnError::Io(e)) => e,
        Err(other) => panic!("expected an I/O error, got {other}"),
        Ok(child) => panic!("expected an error, got child {}", child.id()),
    }
}

/// Whether this process has any child at all, running or a zombie.
fn has_children() -> bool {
    // SAFETY: `info` is a live siginfo_t for the kernel to fill; WNOWAIT
    // leaves any child as it is.
    let ret = unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    let e = io::Error::last_os_error();
    assert!(
        ret == 0 || e.raw_os_error() == Some(libc::ECHILD),
        "waitid: {e}"
    );
    ret == 0
}

#[test]
fn a_missing_program_is_not_found_and_leaves_no_zombie() {
    let _turn = turn();
    assert!(!has_children(), "an earlier test left a child");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_ours, theirs) = UnixStream::pair().unwrap();
    let passed = [PassedListener {
        name: "web",
        fd: tcp.as_fd(),
    }];
    for program in ["/nonexistent/handoff-successor", "handoff-not-on-any-path"] {
        let e = io_error(spawn_successor_vfork(
            Launch::new(program),
            &passed,
            theirs.as_fd(),
        ));
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{program}: {e}");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{program}");
        // The child that failed to exec was reaped before the spawn
        // returned.
        assert!(!has_children(), "{program}: a child is left over");
    }
}

#[test]
fn concurrent_spawns_of_a_missing_program_all_report_it() {
    let _turn = turn();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..50 {
                        let passed = [PassedListener {
                            name: "a",
                            fd: tcp.as_fd(),
                        }];
                        let e = io_error(spawn_cold_vfork(
                            Launch::new("/nonexistent/handoff-successor"),
                            &passed,
                        ));
                        assert_eq!(e.kind(), io::ErrorKind::NotFound);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    });
    assert!(!has_children());
}

/// The `Sig*` lines a child prints of its own status, as numbers.
fn child_signal_lines(successor: bool) -> BTreeMap<String, u64> {
    let mut launch = Launch::new("grep");
    launch
        .args(["^Sig", "/proc/self/status"])
        .stdout(ChildStdio::Piped);
    let child = if successor {
        let (_ours, theirs) = UnixStream::pair().unwrap();
        spawn_successor_vfork(launch, &[], theirs.as_fd()).unwrap()
    } else {
        spawn_cold_vfork(launch, &[]).unwrap()
    };
    let (status, out, _) = output_within(child);
    assert!(status.success());
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((
                k.strip_prefix("Sig")?.to_owned(),
                u64::from_str_radix(v.trim(), 16).ok()?,
            ))
        })
        .collect()
}

fn bit(sig: libc::c_int) -> u64 {
    1 << (sig - 1)
}

/// A supervisor that takes SIGTERM with `sigwait` blocks it in its threads;
/// a daemon that inherited that mask could not be stopped with it.
#[test]
fn the_child_starts_with_an_empty_signal_mask_whatever_the_parent_blocks() {
    let _turn = turn();
    std::thread::spawn(|| {
        // SAFETY: `set` is a live sigset_t; this thread blocks the signals
        // for itself only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGRTMIN() + 3);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let me = fs::read_to_string("/proc/thread-self/status").unwrap();
        assert!(!me.contains("SigBlk:\t0000000000000000"), "{me}");
        for successor in [false, true] {
            let lines = child_signal_lines(successor);
            assert_eq!(lines["Blk"], 0, "successor: {successor}: {lines:x?}");
        }
    })
    .join()
    .unwrap();
}

extern "C" fn do_nothing(_: libc::c_int) {}

/// What exec leaves and what `Command` adds: a caught signal starts at its
/// default, an ignored one stays ignored, SIGPIPE (which std ignores) starts
/// at its default.
#[test]
fn caught_signals_start_at_default_ignored_ones_stay_ignored_but_sigpipe() {
    let _turn = turn();
    let caught = libc::SIGRTMIN() + 5;
    let ignored = libc::SIGRTMIN() + 6;
    // SAFETY: a handler that does nothing and SIG_IGN, for two signals
    // nothing else in this binary uses.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = do_nothing as extern "C" fn(libc::c_int) as libc::sighandler_t;
        assert_eq!(libc::sigaction(caught, &sa, std::ptr::null_mut()), 0);
        sa.sa_sigaction = libc::SIG_IGN;
        assert_eq!(libc::sigaction(ignored, &sa, std::ptr::null_mut()), 0);
    }
    let me = fs::read_to_string("/proc/self/status").unwrap();
    assert!(me.contains("SigIgn:"), "{me}");
    let lines = child_signal_lines(true);
    assert_eq!(lines["Cgt"] & bit(caught), 0, "{lines:x?}");
    assert_ne!(lines["Ign"] & bit(ignored), 0, "{lines:x?}");
    assert_eq!(lines["Ign"] & bit(libc::SIGPIPE), 0, "{lines:x?}");
}

#[test]
fn argv_environment_and_working_directory_arrive() {
    let _turn = turn();
    let dir = TempDir::new("cwd");
    let real_dir = fs::canonicalize(&dir.0).unwrap();

    let mut launch = Launch::new("sh");
    launch
        .args([
            "-c",
            r#"printf '%s|' "$0" "$1" "$2" "$GIVEN" "${HOME-unset}" "$(pwd -P)""#,
            "zero",
            "one two",
            "",
        ])
        .env("GIVEN", "yes")
        .env_remove("HOME")
        .current_dir(&dir.0);
    assert_eq!(
        run(launch),
        format!("zero|one two||yes|unset|{}|", real_dir.display())
    );

    // Cleared: nothing of ours but what was set, and the listener variables.
    let mut cleared = Launch::new("/usr/bin/env");
    cleared.env("STALE", "x").env_clear().env("ONLY", "1");
    assert_eq!(run(cleared), "LISTEN_FDNAMES=\nLISTEN_FDS=0\nONLY=1\n");

    // A relative program is found from the new working directory.
    script(&dir.0, "here", "#!/bin/sh\necho here\n", 0o755);
    let mut relative = Launch::new("./here");
    relative.current_dir(&dir.0);
    assert_eq!(run(relative), "here\n");
}

#[test]
fn a_program_is_looked_up_in_the_childs_path_as_execvp_would() {
    let _turn = turn();
    let dir = TempDir::new("path");
    let (first, second) = (dir.0.join("a"), dir.0.join("b"));
    fs::create_dir_all(&first).unwrap();
    fs::create_dir_all(&second).unwrap();
    script(
        &second,
        "with-shebang",
        "#!/bin/sh\necho shebang \"$1\"\n",
        0o755,
    );
    // No #! line: the kernel refuses it, and execvp runs it with /bin/sh.
    script(&second, "plain-script", "echo plain \"$1\"\n", 0o755);
    // Not executable in the first directory: passed over for the second.
    script(&first, "both", "#!/bin/sh\necho first\n", 0o644);
    script(&second, "both", "#!/bin/sh\necho second\n", 0o755);
    script(&first, "only-plain", "#!/bin/sh\necho no\n", 0o644);
    let path = format!("{}:{}", first.display(), second.display());

    let with_path = |program: &str| {
        let mut l = Launch::new(program);
        l.arg("x").env("PATH", &path);
        l
    };
    assert_eq!(run(with_path("with-shebang")), "shebang x\n");
    assert_eq!(run(with_path("plain-script")), "plain x\n");
    assert_eq!(run(with_path("both")), "second\n");
    let e = io_error(spawn_cold_vfork(with_path("only-plain"), &[]));
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    // Our own PATH does not have these.
    let e = io_error(spawn_cold_vfork(Launch::new("with-shebang"), &[]));
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(!has_children());
}

#[test]
fn standard_streams_are_set_as_asked() {
    let _turn = turn();
    let dir = TempDir::new("stdio");
    let input = dir.0.join("in");
    fs::write(&input, "from a file\n").unwrap();
    let log = dir.0.join("log");

    let mut launch = Launch::new("/bin/sh");
    launch
        .args(["-c", "cat; echo to-err >&2; readlink /proc/self/fd/0 >&2"])
        .stdin(fs::File::open(&input).unwrap())
        .stdout(ChildStdio::Piped)
        .stderr(ChildStdio::Piped);
    let (status, out, err) = output_within(spawn_cold_vfork(launch, &[]).unwrap());
    assert!(status.success());
    assert_eq!(out, "from a file\n");
    assert_eq!(err, format!("to-err\n{}\n", input.display()));

    // Piped stdin, output to a file, stderr to /dev/null.
    let mut launch = Launch::new("/bin/sh");
    launch
        .args(["-c", "cat; echo gone >&2"])
        .stdin(ChildStdio::Piped)
        .stdout(fs::File::create(&log).unwrap())
        .stderr(ChildStdio::Null);
    let mut child = spawn_cold_vfork(launch, &[]).unwrap();
    child
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let (status, _, _) = output_within(child);
    assert!(status.success());
    assert_eq!(fs::read_to_string(&log).unwrap(), "piped in\n");
}

#[test]
fn kill_wait_and_try_wait_behave_as_with_std() {
    let _turn = turn();
    let mut launch = Launch::new("cat");
    launch.stdin(ChildStdio::Piped).stdout(ChildStdio::Null);
    let mut child = spawn_cold_vfork(launch, &[]).unwrap();
    // Blocked reading the pipe we hold open.
    assert_eq!(child.try_wait().unwrap(), None);
    child.kill().unwrap();
    let watch = ExitWatch::new(child.id()).unwrap();
    assert!(poll_readable(&[watch.as_fd()], Some(BOUND)).unwrap()[0]);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(child.try_wait().unwrap(), Some(status));
    // Reaped: its pid is no longer ours to signal.
    child.kill().unwrap();
    assert!(!has_children());
}

/// What `/proc/<pid>/fd/<fd>` points at.
fn fd_target(pid: u32, fd: RawFd) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()
}

/// Puts a close-on-exec copy of `fd` at each number of `at` for the length
/// of `f`, then puts back what was there.
fn with_fds_at<T>(fds: &[BorrowedFd<'_>], at: &[RawFd], f: impl FnOnce() -> T) -> T {
    let saved: Vec<Option<OwnedFd>> = at
        .iter()
        .map(|&n| {
            // SAFETY: F_DUPFD_CLOEXEC on a number that may not be open makes
            // a new descriptor or fails with EBADF.
            let copy = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 100) };
            // SAFETY: just made, no other owner.
            (copy >= 0).then(|| unsafe { OwnedFd::from_raw_fd(copy) })
        })
        .collect();
    for (fd, &n) in fds.iter().zip(at) {
        // SAFETY: dup3 replaces `n`, whose old occupant was saved above; only
        // this test (holding the turn) uses these numbers meanwhile.
        assert_eq!(unsafe { libc::dup3(fd.as_raw_fd(), n, libc::O_CLOEXEC) }, n);
    }
    let out = f();
    for (saved, &n) in saved.iter().zip(at) {
        // SAFETY: puts back the saved descriptor (or closes the number we
        // filled); nothing else uses it meanwhile.
        unsafe {
            match saved {
                Some(s) => assert_eq!(libc::dup3(s.as_raw_fd(), n, libc::O_CLOEXEC), n),
                None => assert_eq!(libc::close(n), 0),
            }
        }
    }
    out
}

/// Sources sitting where the child's targets and standard streams go must
/// each reach their own target: a listener at 0 (a process started with its
/// standard input closed binds its first socket there) with the child's
/// stdin set to /dev/null, and sources at 3..=5 in a cycle (5 -> 3, 3 -> 4,
/// 4 -> 5).
#[test]
fn sources_where_the_targets_go_are_not_clobbered() {
    let _turn = turn();
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_ours, control) = UnixStream::pair().unwrap();
    let me = std::process::id();
    let (want_a, want_b, want_c) = (
        fd_target(me, a.as_raw_fd()).unwrap(),
        fd_target(me, b.as_raw_fd()).unwrap(),
        fd_target(me, control.as_raw_fd()).unwrap(),
    );
    let report = || {
        let mut launch = Launch::new("/bin/sh");
        launch
            .args([
                "-c",
                "for n in 0 3 4 5; do readlink /proc/self/fd/$n; done; ls /proc/self/fd | wc -l",
            ])
            .stdin(ChildStdio::Null)
            .stdout(ChildStdio::Piped)
            .stderr(ChildStdio::Null);
        launch
    };
    let spawned = with_fds_at(&[a.as_fd(), b.as_fd(), control.as_fd()], &[5, 3, 4], || {
        // SAFETY: 5, 3 and 4 hold copies of the sockets for the whole
        // closure.
        let (at5, at3, at4) = unsafe {
            (
                BorrowedFd::borrow_raw(5),
                BorrowedFd::borrow_raw(3),
                BorrowedFd::borrow_raw(4),
            )
        };
        spawn_successor_vfork(
            report(),
            &[
                PassedListener { name: "a", fd: at5 },
                PassedListener { name: "b", fd: at3 },
            ],
            at4,
        )
    });
    let (status, out, _) = output_within(spawned.unwrap());
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    let path = |p: &PathBuf| p.display().to_string();
    // 0..=5 and the one `ls` opens to list them.
    assert_eq!(
        lines,
        [
            "/dev/null",
            &path(&want_a),
            &path(&want_b),
            &path(&want_c),
            "7"
        ]
    );

    let spawned = with_fds_at(&[a.as_fd()], &[0], || {
        // SAFETY: 0 holds a copy of the listener for the whole closure.
        let at0 = unsafe { BorrowedFd::borrow_raw(0) };
        spawn_cold_vfork(report(), &[PassedListener { name: "a", fd: at0 }])
    });
    let (status, out, _) = output_within(spawned.unwrap());
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"/dev/null"));
    assert_eq!(lines.get(1), Some(&path(&want_a).as_str()));
}

/// Set for the child run of `crossed_standard_streams_entry`: the file it
/// gives its child as stdin.
const CROSSED_INPUT: &str = "HANDOFF_VFORK_TEST_CROSSED_INPUT";

/// A child's stdin coming from our descriptor 1 and its stdout going to our
/// descriptor 0: set up one after the other without care, the first `dup2`
/// (onto 0) would overwrite the stdout source. Run in a copy of this test
/// binary, since it swaps that process's own 0 and 1.
#[test]
fn crossed_standard_streams_reach_their_own_numbers() {
    let _turn = turn();
    let dir = TempDir::new("crossed");
    let input = dir.0.join("in");
    fs::write(&input, "crossed\n").unwrap();
    let mut launch = Launch::new(std::env::current_exe().unwrap());
    launch
        .args([
            "crossed_standard_streams_entry",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CROSSED_INPUT, &input)
        .stdin(ChildStdio::Null)
        .stdout(ChildStdio::Piped)
        .stderr(ChildStdio::Piped);
    let (status, out, err) = output_within(spawn_cold_vfork(launch, &[]).unwrap());
    assert!(status.success(), "{out}\n{err}");
    assert!(
        out.contains("1 passed"),
        "the child test did not run:\n{out}"
    );
}

/// The child side of the test above; does nothing unless started by it.
#[test]
#[ignore = "runs only in the child that crossed_standard_streams_reach_their_own_numbers starts"]
fn crossed_standard_streams_entry() {
    let Some(input) = std::env::var_os(CROSSED_INPUT) else {
        return;
    };
    let file = fs::File::open(input).unwrap();
    let (mut theirs_r, ours_w) = UnixStream::pair().unwrap();
    let spawned = with_fds_at(&[file.as_fd(), ours_w.as_fd()], &[1, 0], || {
        // SAFETY: 1 and 0 hold copies of the file and the socket for the
        // whole closure; the spawn takes them over and closes them, and
        // `with_fds_at` puts the saved ones back over the numbers.
        let (at1, at0) = unsafe { (OwnedFd::from_raw_fd(1), OwnedFd::from_raw_fd(0)) };
        let mut launch = Launch::new("cat");
        launch.stdin(at1).stdout(at0).stderr(ChildStdio::Null);
        spawn_cold_vfork(launch, &[])
    });
    drop(ours_w);
    let child = spawned.unwrap();
    let (status, _, _) = output_within(child);
    assert!(status.success());
    theirs_r.set_read_timeout(Some(BOUND)).unwrap();
    let mut got = String::new();
    io::Read::read_to_string(&mut theirs_r, &mut got).unwrap();
    assert_eq!(got, "crossed\n");
}
