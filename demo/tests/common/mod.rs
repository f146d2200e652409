//! What the demo's process tests share: temporary directories, one test
//! at a time, and finding, reaping and adopting the daemons' processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, mpsc};
use std::time::Duration;

/// Long enough for a loaded machine, short enough to fail fast.
pub(crate) const BOUND: Duration = Duration::from_secs(20);

/// One process test at a time.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory removed at the end of the test.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // Short: a Unix socket path must fit in 108 bytes.
        let p = PathBuf::from("/tmp").join(format!(
            "kvd-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads one line from a child's stdout within `BOUND`.
pub(crate) fn read_line_bounded(stdout: std::process::ChildStdout) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(BOUND).ok().filter(|l| !l.is_empty())
}

/// `(pid, ppid, zombie)` of every process whose command line contains
/// `needle`.
pub(crate) fn processes_with(needle: &str) -> Vec<(u32, u32, bool)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let (Ok(cmdline), Ok(stat)) = (
            std::fs::read(e.path().join("cmdline")),
            std::fs::read_to_string(e.path().join("stat")),
        ) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains(needle) {
            continue;
        }
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let zombie = fields.next() == Some("Z");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        found.push((pid, ppid, zombie));
    }
    found
}

/// Kills and reaps every process whose command line names `ctl`: the
/// daemons of a deployment, our children or orphans we adopted as a
/// subreaper, which a failed test would otherwise leave behind.
pub(crate) fn kill_daemons_of(ctl: &std::path::Path) {
    let needle = ctl.to_string_lossy().into_owned();
    for (pid, _, _) in processes_with(&needle) {
        let _ = handoff_std::os::process::send_signal(pid, handoff_std::Signal::Kill);
        handoff_std::os::process::wait_gone(pid, BOUND);
        reap(pid);
    }
}

/// Reaps an exited process that is our child only by adoption (we are a
/// subreaper), so there is no `Child` for it.
pub(crate) fn reap(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: waitpid on one pid with a null status pointer and WNOHANG.
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG)
    };
}

/// Orphans of a killed supervisor come back to this process, so the test
/// can reap them and tell a live process from a zombie.
pub(crate) fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag, no pointer.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0);
    });
}
pub(crate) mod deployment;
