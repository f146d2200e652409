//! The data-dir lock: an exclusive, non-blocking `flock` on
//! `<data_dir>/.handoff.lock`, plus `<data_dir>/.handoff.pid` naming the
//! holder. The kernel's lock is the truth; the pidfile is only for people
//! and for refusing to "break" a lock a live process holds. The lock file is
//! never removed: removing and recreating it would let two processes each
//! hold a lock on a different file.
#![allow(unsafe_code)]

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::process::pid_alive;
use super::sys::cvt;

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = ".handoff.lock";
/// The name of the pidfile inside the data directory.
pub const PID_FILE: &str = ".handoff.pid";

/// Where the pidfile is written before it is renamed into place. Only the
/// flock holder writes it, so one fixed name cannot have two writers.
const PID_TEMP_FILE: &str = ".handoff.pid.tmp";

/// How long `acquire_or_break_stale` waits for the kernel to release the
/// flock of a holder that is already dead (its descriptors close as it exits).
const STALE_WAIT: Duration = Duration::from_secs(1);

/// Why the lock was not taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// Another process holds it.
    Busy {
        /// The holder, if the pidfile names one.
        holder_pid: Option<u32>,
    },
    /// `acquire_or_break_stale` found the holder alive and left it alone.
    HolderAlive {
        /// The live holder.
        holder_pid: u32,
    },
    /// The system refused (open, flock, write).
    Io(io::Error),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Busy {
                holder_pid: Some(pid),
            } => write!(
                f,
                "the data directory is locked by another process (the pidfile names pid \
                 {pid}); stop that instance or hand off to it instead of starting a second one"
            ),
            LockError::Busy { holder_pid: None } => f.write_str(
                "the data directory is locked by another process (the pidfile names none); \
                 find it with `fuser` or `lsof` on the lock file and stop it, or hand off to it",
            ),
            LockError::HolderAlive { holder_pid } => write!(
                f,
                "the data-dir lock is held and its recorded holder, pid {holder_pid}, is \
                 alive; refusing to break it: stop that process first"
            ),
            LockError::Io(e) => write!(
                f,
                "could not take the data-dir lock: {e}; check that the data directory is \
                 on a local filesystem and writable by this user"
            ),
        }
    }
}

impl std::error::Error for LockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LockError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> Self {
        LockError::Io(e)
    }
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct DataDirLock {
    data_dir: PathBuf,
    /// The open lock file carrying the flock; std opens it close-on-exec.
    file: File,
    /// Why the pidfile could not be written, if it could not.
    pidfile_error: Option<io::Error>,
}

impl DataDirLock {
    /// Takes the lock without waiting; creates the directory and lock file
    /// if missing, then writes the pidfile atomically. The pidfile is only
    /// a diagnostic: if it cannot be written (a full disk) the lock is held
    /// all the same, the stale pidfile is removed so that it names nobody,
    /// and [`DataDirLock::pidfile_error`] says why. A lock refused over a
    /// pidfile would leave nobody serving after a failed handoff on a full
    /// disk: the successor could not take it, nor the old binary take it back.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LockError> {
        fs::create_dir_all(data_dir)?;
        // Never truncated: the file's contents mean nothing, and it may be
        // another process's locked file. Mode 0600 because anyone who can
        // open it can flock it and keep us from starting.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(data_dir.join(LOCK_FILE))?;
        loop {
            // SAFETY: `file` is open for the whole call and flock only
            // changes the lock state of its open file description.
            let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            match cvt(ret) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(LockError::Busy {
                        holder_pid: Self::recorded_holder(data_dir),
                    });
                }
                Err(e) => return Err(LockError::Io(e)),
            }
        }
        let pidfile_error = write_pidfile(data_dir, std::process::id()).err();
        if pidfile_error.is_some() {
            let _ = fs::remove_file(data_dir.join(PID_FILE));
        }
        Ok(DataDirLock {
            data_dir: data_dir.to_path_buf(),
            file,
            pidfile_error,
        })
    }

    /// Why the pidfile naming this process could not be written, if it
    /// could not (the lock is held regardless; log it).
    pub fn pidfile_error(&self) -> Option<&io::Error> {
        self.pidfile_error.as_ref()
    }

    /// Like [`DataDirLock::acquire`], but if the lock is busy and the
    /// pidfile's process is dead, waits (bounded) for the kernel to release
    /// it. A live holder is refused; the lock file is never unlinked.
    pub fn acquire_or_break_stale(data_dir: &Path) -> Result<DataDirLock, LockError> {
        let give_up = Instant::now() + STALE_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            match Self::acquire(data_dir) {
                Err(LockError::Busy { holder_pid }) => {
                    // Checked on every attempt: another process may have
                    // taken the lock legitimately while we waited.
                    if let Some(pid) = holder_pid.filter(|&p| pid_alive(p)) {
                        return Err(LockError::HolderAlive { holder_pid: pid });
                    }
                    // The named holder is dead (or none is named), yet the
                    // flock is held: its descriptors are still closing, or a
                    // child inherited one. Only the kernel may release it.
                    let now = Instant::now();
                    if now >= give_up {
                        return Err(LockError::Busy { holder_pid });
                    }
                    std::thread::sleep(pause.min(give_up - now));
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The pid the pidfile names, if any.
    pub fn recorded_holder(data_dir: &Path) -> Option<u32> {
        let text = fs::read_to_string(data_dir.join(PID_FILE)).ok()?;
        // 0 is never a process; kill(0, …) would address our own group.
        text.trim().parse().ok().filter(|&pid| pid != 0)
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // Done while we still hold the flock, so no other process can have
        // written the pidfile since we read it: a successor's is never
        // removed.
        if Self::recorded_holder(&self.data_dir) == Some(std::process::id()) {
            let _ = fs::remove_file(self.data_dir.join(PID_FILE));
        }
        // Unlocked explicitly rather than by closing `file`: a thread of
        // ours that forked between our open and its exec holds a copy of
        // the descriptor, and the lock would last until that copy closed.
        // LOCK_UN releases it for every copy at once.
        // SAFETY: `file` is open until after this function returns; flock
        // changes only the lock state of its open file description.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Writes `pid` to the pidfile atomically: a temp file renamed over it,
/// so a reader sees either the old pidfile or the new one, never a torn one.
/// Not fsynced: the kernel's flock is the truth, and a crash makes any
/// pidfile stale whether it reached the disk or not (the flock is gone with
/// the process), so durability would buy nothing and cost two fsyncs on
/// the successor's way to `Ready`.
fn write_pidfile(data_dir: &Path, pid: u32) -> io::Result<()> {
    let tmp = data_dir.join(PID_TEMP_FILE);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        writeln!(file, "{pid}")?;
        fs::rename(&tmp, data_dir.join(PID_FILE))
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::fd::RawFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    fn lock_inode(dir: &Path) -> u64 {
        fs::metadata(dir.join(LOCK_FILE)).unwrap().ino()
    }

    /// A `read`-blocked shell that holds the flock of `dir`'s lock file
    /// through an inherited descriptor; it exits when its stdin closes.
    fn child_holding_lock(dir: &Path) -> Child {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .unwrap();
        // SAFETY: `file` is open; flock changes only its lock state.
        let ret = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(ret, 0, "the test lock must be free");
        let fd: RawFd = file.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read x"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        // SAFETY: the closure runs between fork and exec and calls only
        // fcntl, which is async-signal-safe; it allocates nothing. Clearing
        // close-on-exec on the child's copy of the descriptor (the parent's
        // stays as it is) lets the shell inherit the flocked file.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        // Now only the child's copy holds the lock.
        drop(file);
        child
    }

    /// The pid of a process that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_pidfile_that_cannot_be_written_does_not_cost_the_lock() {
        let dir = TempDir::new("lock-full");
        let data = dir.path().join("data");
        fs::create_dir_all(&data).unwrap();
        // An earlier holder's pidfile, and a disk with no room for ours.
        fs::write(data.join(PID_FILE), "12345\n").unwrap();
        std::os::unix::fs::symlink("/dev/full", data.join(PID_TEMP_FILE)).unwrap();
        let lock = DataDirLock::acquire(&data).expect("the flock is free");
        assert_eq!(
            lock.pidfile_error().and_then(io::Error::raw_os_error),
            Some(libc::ENOSPC)
        );
        // Held all the same, and no pidfile names someone else.
        assert!(matches!(
            DataDirLock::acquire(&data),
            Err(LockError::Busy { holder_pid: None })
        ));
        assert!(!data.join(PID_FILE).exists());
        assert!(!data.join(PID_TEMP_FILE).exists());
    }

    #[test]
    fn acquire_writes_the_pidfile_and_drop_removes_it() {
        let tmp = TempDir::new("lk1");
        let dir = tmp.path().join("data");
        let lock = DataDirLock::acquire(&dir).unwrap();
        assert_eq!(lock.data_dir(), dir);
        assert_eq!(DataDirLock::recorded_holder(&dir), Some(std::process::id()));
        assert!(!dir.join(PID_TEMP_FILE).exists());
        let ino = lock_inode(&dir);
        drop(lock);
        assert_eq!(DataDirLock::recorded_holder(&dir), None);
        assert!(!dir.join(PID_FILE).exists());
        // The lock file stays, same inode, and the lock is free again.
        assert_eq!(lock_inode(&dir), ino);
        drop(DataDirLock::acquire(&dir).unwrap());
        assert_eq!(lock_inode(&dir), ino);
    }

    #[test]
    fn a_second_acquire_in_the_same_process_is_busy() {
        let tmp = TempDir::new("lk2");
        let lock = DataDirLock::acquire(tmp.path()).unwrap();
        match DataDirLock::acquire(tmp.path()) {
            Err(LockError::Busy { holder_pid }) => {
                assert_eq!(holder_pid, Some(std::process::id()));
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        // Ourselves, alive: not to be broken either.
        match DataDirLock::acquire_or_break_stale(tmp.path()) {
            Err(LockError::HolderAlive { holder_pid }) => {
                assert_eq!(holder_pid, std::process::id());
            }
            other => panic!("expected HolderAlive, got {other:?}"),
        }
        // The refused attempts left the holder's pidfile alone.
        assert_eq!(
            DataDirLock::recorded_holder(tmp.path()),
            Some(std::process::id())
        );
        drop(lock);
    }

    #[test]
    fn a_live_holder_is_refused_and_a_dead_one_released() {
        let tmp = TempDir::new("lk3");
        let dir = tmp.path();
        let mut child = child_holding_lock(dir);
        fs::write(dir.join(PID_FILE), format!("{}\n", child.id())).unwrap();
        let ino = lock_inode(dir);
        match DataDirLock::acquire(dir) {
            Err(LockError::Busy { holder_pid }) => assert_eq!(holder_pid, Some(child.id())),
            other => panic!("expected Busy, got {other:?}"),
        }
        match DataDirLock::acquire_or_break_stale(dir) {
            Err(LockError::HolderAlive { holder_pid }) => assert_eq!(holder_pid, child.id()),
            other => panic!("expected HolderAlive, got {other:?}"),
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Not `acquire`: a process another test thread is forking right now
        // may still hold a copy of the lock file for the moment until its
        // exec, which is the case the bounded wait exists for.
        let lock = DataDirLock::acquire_or_break_stale(dir).unwrap();
        assert_eq!(DataDirLock::recorded_holder(dir), Some(std::process::id()));
        assert_eq!(lock_inode(dir), ino, "the lock file must never be replaced");
        drop(lock);
    }

    #[test]
    fn a_stale_pidfile_with_a_free_lock_is_taken_over() {
        let tmp = TempDir::new("lk4");
        let dead = dead_pid();
        fs::write(tmp.path().join(PID_FILE), format!("{dead}\n")).unwrap();
        let lock = DataDirLock::acquire_or_break_stale(tmp.path()).unwrap();
        assert_eq!(
            DataDirLock::recorded_holder(tmp.path()),
            Some(std::process::id())
        );
        drop(lock);
    }

    #[test]
    fn a_dead_named_holder_is_waited_out_until_the_kernel_releases() {
        let tmp = TempDir::new("lk5");
        let dir = tmp.path();
        let mut child = child_holding_lock(dir);
        // The pidfile names a dead process while a live one still holds the
        // flock through an inherited descriptor: the stale case.
        fs::write(dir.join(PID_FILE), format!("{}\n", dead_pid())).unwrap();
        let ino = lock_inode(dir);
        // Closing the shell's stdin makes it exit, which releases the flock
        // while acquire_or_break_stale is retrying (or before it starts).
        drop(child.stdin.take());
        let lock = DataDirLock::acquire_or_break_stale(dir).unwrap();
        assert_eq!(lock_inode(dir), ino);
        child.wait().unwrap();
        drop(lock);
    }

    #[test]
    fn a_lock_never_released_stays_busy_after_the_bounded_wait() {
        let tmp = TempDir::new("lk6");
        let dir = tmp.path();
        let mut child = child_holding_lock(dir);
        let dead = dead_pid();
        fs::write(dir.join(PID_FILE), format!("{dead}\n")).unwrap();
        let start = Instant::now();
        match DataDirLock::acquire_or_break_stale(dir) {
            Err(LockError::Busy { holder_pid }) => assert_eq!(holder_pid, Some(dead)),
            other => panic!("expected Busy, got {other:?}"),
        }
        let waited = start.elapsed();
        assert!(
            waited >= STALE_WAIT && waited < STALE_WAIT * 5,
            "{waited:?}"
        );
        assert!(dir.join(LOCK_FILE).exists());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn drop_releases_the_lock_even_while_a_forked_copy_lives() {
        let tmp = TempDir::new("lk9");
        let lock = DataDirLock::acquire(tmp.path()).unwrap();
        // A child that kept a copy of the lock's descriptor, as a process
        // forked by another thread does until it execs.
        let fd = lock.file.as_raw_fd();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read x"]).stdin(Stdio::piped());
        // SAFETY: the closure runs between fork and exec, calls only the
        // async-signal-safe fcntl and allocates nothing; it clears
        // close-on-exec on the child's copy only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(lock);
        let again = DataDirLock::acquire(tmp.path());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(again.is_ok(), "still locked after drop: {again:?}");
    }

    #[test]
    fn drop_leaves_a_pidfile_naming_another_process() {
        let tmp = TempDir::new("lk7");
        let lock = DataDirLock::acquire(tmp.path()).unwrap();
        // As if a successor had already written its pid.
        fs::write(tmp.path().join(PID_FILE), "1\n").unwrap();
        drop(lock);
        assert_eq!(DataDirLock::recorded_holder(tmp.path()), Some(1));
    }

    #[test]
    fn unreadable_pidfiles_name_no_one() {
        let tmp = TempDir::new("lk8");
        assert_eq!(DataDirLock::recorded_holder(tmp.path()), None);
        for junk in ["", "0\n", "abc\n", "-5\n", "99999999999\n"] {
            fs::write(tmp.path().join(PID_FILE), junk).unwrap();
            assert_eq!(DataDirLock::recorded_holder(tmp.path()), None, "{junk:?}");
        }
        fs::write(tmp.path().join(PID_FILE), " 77 \n").unwrap();
        assert_eq!(DataDirLock::recorded_holder(tmp.path()), Some(77));
    }

    #[test]
    fn errors_say_what_to_do() {
        let busy = LockError::Busy {
            holder_pid: Some(12),
        }
        .to_string();
        assert!(busy.contains("12") && busy.contains("stop"), "{busy}");
        let alive = LockError::HolderAlive { holder_pid: 34 }.to_string();
        assert!(
            alive.contains("34") && alive.contains("refusing"),
            "{alive}"
        );
    }
}
