//! Processes spawned by handoff-std start with an empty signal mask,
//! whatever the spawning thread blocks, and with their descriptors where
//! the protocol puts them.
#![allow(unsafe_code)]

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use handoff_std::SpawnSpec;
use handoff_std::os::spawn::{ChildStdio, Launch, PassedListener, spawn_cold_vfork};

const BOUND: Duration = Duration::from_secs(20);

/// The hexadecimal mask of a `SigBlk:` line.
fn sigblk(status_line: &str) -> &str {
    status_line.trim().trim_start_matches("SigBlk:").trim()
}

/// Blocks SIGTERM in this thread only, as a supervisor that takes it with
/// `sigwait` does in all of its threads.
fn block_sigterm_here() {
    // SAFETY: `set` is a live sigset_t; this thread blocks SIGTERM for
    // itself only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = me.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    assert_ne!(sigblk(line), "0000000000000000", "the test blocks nothing");
}

/// A child started with the spawning thread's mask would ignore the
/// SIGTERM meant to stop it: the handoff's successor, spawned the way every
/// adapter spawns it, must start with nothing blocked, its listener at 3 and
/// its control socket at 4.
#[test]
fn a_successor_starts_with_an_empty_signal_mask_and_its_descriptors_at_3() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let want = std::fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            block_sigterm_here();
            // The child reports on its control socket (4), since its
            // standard output is the test runner's.
            let spec = SpawnSpec::new("/bin/sh").arg("-c").arg(
                "grep SigBlk /proc/self/status >&4; readlink /proc/self/fd/3 >&4; \
                 echo \"$LISTEN_FDS $LISTEN_FDNAMES $HANDOFF_SOCK_FD\" >&4",
            );
            let passed = [PassedListener {
                name: "main",
                fd: listener.as_fd(),
            }];
            let (mut ours, mut child) = handoff_std::spawn_for_handoff(&spec, &passed).unwrap();
            ours.set_read_timeout(Some(BOUND)).unwrap();
            let mut said = String::new();
            ours.read_to_string(&mut said).unwrap();
            assert!(child.wait().unwrap().success(), "{said}");
            let lines: Vec<&str> = said.lines().collect();
            assert_eq!(lines.len(), 3, "{said}");
            assert_eq!(sigblk(lines[0]), "0000000000000000", "{said}");
            assert_eq!(lines[1], want.to_string_lossy(), "the listener at 3");
            assert_eq!(lines[2], "1 main 4", "{said}");
        });
    });
}

/// The same for a cold start (the supervisor binary's first start and its
/// restarts).
#[test]
fn a_cold_start_starts_with_an_empty_signal_mask() {
    std::thread::scope(|s| {
        s.spawn(|| {
            block_sigterm_here();
            let mut launch = Launch::new("grep");
            launch
                .args(["SigBlk", "/proc/self/status"])
                .stdout(ChildStdio::Piped);
            let out = spawn_cold_vfork(launch, &[])
                .unwrap()
                .wait_with_output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(
                sigblk(&String::from_utf8_lossy(&out.stdout)),
                "0000000000000000"
            );
        });
    });
}
