//! Helpers for the os tests: a self-removing temporary directory and a look
//! at another process's descriptor table, and bounded waits on children.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::process::{ChildProcess, ExitWatch, poll_readable};

/// A fresh directory under the system temp dir, removed with its contents
/// on drop.
pub(crate) struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Short names: control-socket tests need room inside sun_path.
        let path = std::env::temp_dir().join(format!("hs-{tag}-{}-{n}", std::process::id()));
        // A crashed earlier run with the same pid may have left it behind.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What `/proc/<pid>/fd/<fd>` points at, e.g. `socket:[1234]`.
pub(crate) fn fd_target(pid: u32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The descriptor numbers open in `pid`, sorted.
pub(crate) fn open_fds(pid: u32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/<pid>/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// Waits for `child` to exit, at most `limit`; kills it and fails the test
/// if it does not.
pub(crate) fn wait_bounded(child: &mut impl ChildProcess, limit: Duration) -> ExitStatus {
    let watch = ExitWatch::new(child.id()).expect("pidfd_open");
    let ready = poll_readable(&[watch.as_fd()], Some(limit)).expect("poll");
    if !ready[0] {
        let _ = child.kill();
        let _ = child.wait();
        panic!("child {} did not exit within {limit:?}", child.id());
    }
    child.wait().expect("wait")
}

/// Reads one line (without its newline) from a pipe, failing the test if
/// none arrives within `limit`.
pub(crate) fn read_line_bounded<R: Read + AsFd>(r: &mut R, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = poll_readable(&[r.as_fd()], Some(left)).expect("poll");
        assert!(ready[0], "no complete line within {limit:?}; got {line:?}");
        let mut byte = [0u8; 1];
        match r.read(&mut byte).expect("read") {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    String::from_utf8(line).expect("UTF-8 line")
}
