//! Processes spawned by handoff-std start with an empty signal mask,
//! whatever the spawning thread blocks.
#![allow(unsafe_code)]

use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use handoff_std::os::control::socketpair;
use handoff_std::os::spawn::{spawn_cold, spawn_successor};

/// The `SigBlk` line of a child that reports its own status.
fn reported_sigblk(mut child: std::process::Child) -> String {
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child.wait().unwrap();
    out.trim().trim_start_matches("SigBlk:").trim().to_owned()
}

fn reporter() -> Command {
    let mut cmd = Command::new("grep");
    cmd.args(["SigBlk", "/proc/self/status"])
        .stdout(Stdio::piped());
    cmd
}

/// A supervisor that takes SIGTERM with `sigwait` blocks it in its
/// threads, and std passes the forking thread's mask on to the child: the
/// spawns must empty it, or a daemon started from such a thread could not
/// be stopped with SIGTERM.
#[test]
fn spawned_processes_start_with_an_empty_signal_mask() {
    std::thread::spawn(|| {
        // SAFETY: `set` is a live sigset_t; this thread blocks SIGTERM for
        // itself only.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        let cold = spawn_cold(reporter(), &[]).unwrap();
        assert_eq!(reported_sigblk(cold), "0000000000000000", "spawn_cold");
        let (_ours, theirs) = socketpair().unwrap();
        let successor = spawn_successor(reporter(), &[], theirs.as_fd()).unwrap();
        assert_eq!(
            reported_sigblk(successor),
            "0000000000000000",
            "spawn_successor"
        );
    })
    .join()
    .unwrap();
}
