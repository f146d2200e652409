//! Processes: signals, and a pollable handle on a child's exit.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use handoff_core::Signal;

use super::sys::cvt;

/// The pid as `kill(2)` wants it. 0 and values past `i32::MAX` (negative
/// once cast) would address a whole process group, never one process.
fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{pid} is not a process id (1..={} expected)",
                libc::pid_t::MAX
            ),
        )),
    }
}

/// How often an adapter looks at a child whose exit it cannot watch (no
/// pidfd on this kernel): a dead successor is noticed within this.
pub const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// A child of this process, to signal and reap: std's `Child` (a `Command`
/// spawned, such as a health probe) and [`crate::spawn::Child`] (a daemon
/// started by the unforked spawn). The waits and kills below take either,
/// so each is written once.
///
/// Its methods mean what `std::process::Child`'s of the same names do.
pub trait ChildProcess {
    /// The process id; it names this child until the child is reaped.
    fn id(&self) -> u32;
    /// Sends `SIGKILL`; does nothing once the child has been reaped.
    fn kill(&mut self) -> io::Result<()>;
    /// Reaps the child if it has exited, without waiting.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;
    /// Waits for the child to exit and reaps it.
    fn wait(&mut self) -> io::Result<ExitStatus>;
}

impl ChildProcess for std::process::Child {
    fn id(&self) -> u32 {
        std::process::Child::id(self)
    }

    fn kill(&mut self) -> io::Result<()> {
        std::process::Child::kill(self)
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        std::process::Child::try_wait(self)
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        std::process::Child::wait(self)
    }
}

impl ChildProcess for crate::spawn::Child {
    fn id(&self) -> u32 {
        crate::spawn::Child::id(self)
    }

    fn kill(&mut self) -> io::Result<()> {
        crate::spawn::Child::kill(self)
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        crate::spawn::Child::try_wait(self)
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        crate::spawn::Child::wait(self)
    }
}

/// A boxed child, so that children of both kinds can be kept in one place
/// (a `Box<dyn ChildProcess + Send>`, say) and still be handed to the
/// functions below.
impl<C: ChildProcess + ?Sized> ChildProcess for Box<C> {
    fn id(&self) -> u32 {
        (**self).id()
    }

    fn kill(&mut self) -> io::Result<()> {
        (**self).kill()
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        (**self).try_wait()
    }

    fn wait(&mut self) -> io::Result<ExitStatus> {
        (**self).wait()
    }
}

/// Kills `child` and reaps it without waiting on it: a process that does
/// not die at once (`SIGKILL` is held off while it is stuck in the kernel,
/// in uninterruptible I/O) is reaped by a thread of its own, so that no
/// caller's loop hangs on it and no zombie is left when it does die.
pub fn kill_and_reap<C: ChildProcess + Send + 'static>(mut child: C) {
    let _ = child.kill();
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(child)));
    let theirs = slot.clone();
    let reaper = std::thread::Builder::new()
        .name("handoff-reaper".into())
        .spawn(move || {
            if let Some(mut c) = theirs.lock().ok().and_then(|mut c| c.take()) {
                let _ = c.wait();
            }
        });
    if reaper.is_err() {
        // No thread to be had: waiting here is the one way left not to
        // leave a zombie.
        if let Some(mut c) = slot.lock().ok().and_then(|mut c| c.take()) {
            let _ = c.wait();
        }
    }
}

/// Sends `signal` to `pid`. A process already gone is not an error.
pub fn send_signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = checked_pid(pid)?;
    let signo = match signal {
        Signal::Terminate => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill takes plain integers; `pid` is positive, so it addresses
    // exactly one process.
    match cvt(unsafe { libc::kill(pid, signo) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether a process with this pid exists (it may be a zombie).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = checked_pid(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that `pid` exists and may be signalled;
    // `pid` is positive, so no process group is addressed.
    match cvt(unsafe { libc::kill(pid, 0) }) {
        Ok(_) => true,
        // It exists but belongs to someone we may not signal.
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

/// A descriptor that becomes readable when the process exits (Linux
/// `pidfd_open`), so an event loop can wait for a child without a thread or
/// a `SIGCHLD` handler.
#[derive(Debug)]
pub struct ExitWatch {
    fd: OwnedFd,
}

impl ExitWatch {
    /// Watches `pid`, which must be our child (or any process on Linux).
    pub fn new(pid: u32) -> io::Result<ExitWatch> {
        let pid = checked_pid(pid)?;
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new
        // descriptor or -1; no memory is passed.
        let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = libc::c_int::try_from(ret).map_err(|_| io::Error::other("bad pidfd"))?;
        // SAFETY: the kernel just returned this descriptor to us and nothing
        // else knows its number, so we are its only owner. It is
        // close-on-exec by the kernel's default for pidfds.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(ExitWatch { fd })
    }

    /// A second watch on the same process (the pidfd duplicated), for a
    /// loop that polls it while its owner keeps the first.
    pub fn try_clone(&self) -> io::Result<ExitWatch> {
        Ok(ExitWatch {
            fd: self.fd.try_clone()?,
        })
    }

    /// Whether the process has exited (a zombie counts), without waiting.
    pub fn has_exited(&self) -> bool {
        poll_readable(&[self.fd.as_fd()], Some(Duration::ZERO)).is_ok_and(|r| r[0])
    }

    /// Sends `signal` to exactly the process this watch names
    /// (`pidfd_send_signal`): unlike a signal by pid, it can never reach
    /// another process that was given the pid after this one exited, which
    /// matters for a process that is not our child (an adopted daemon),
    /// whose pid we cannot keep from reuse by not reaping it. One already
    /// gone is not an error.
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        let signo = match signal {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: pidfd_send_signal takes the pidfd, a signal number, a null
        // siginfo (the kernel fills in a plain kill's) and flags 0.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signo,
                std::ptr::null::<libc::siginfo_t>(),
                0 as libc::c_uint,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        Err(e)
    }
}

impl AsFd for ExitWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Waits up to `bound` for process `pid` (our child or not) to exit; `true`
/// once it has (a zombie counts: it no longer runs), or if it cannot be
/// watched because it is already gone.
pub fn wait_gone(pid: u32, bound: Duration) -> bool {
    match ExitWatch::new(pid) {
        Ok(watch) => poll_readable(&[watch.as_fd()], Some(bound)).is_ok_and(|r| r[0]),
        Err(_) => true,
    }
}

/// Waits up to `bound` for our child to exit and reaps it; `None` if it is
/// still running at the bound (or cannot be watched).
pub fn wait_exit<C: ChildProcess + ?Sized>(child: &mut C, bound: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let watch = ExitWatch::new(child.id()).ok()?;
    let ready = poll_readable(&[watch.as_fd()], Some(bound)).ok()?;
    if ready[0] { child.wait().ok() } else { None }
}

/// `poll(2)`'s timeout for `left`: rounded up to whole milliseconds, since
/// rounding down would turn a short wait into a busy loop of zero-timeout
/// polls (and return before the caller's deadline).
fn timeout_ms(left: Duration) -> libc::c_int {
    let ms = left.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// `poll(2)` over `fds`; returns, for each, whether it is ready (readable,
/// hung up or in error). `None` waits forever. `EINTR` is retried with the
/// time left.
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    // Borrowed for the whole call, so the numbers stay theirs throughout.
    let raw: Vec<(std::os::fd::RawFd, bool)> =
        fds.iter().map(|fd| (fd.as_raw_fd(), false)).collect();
    Ok(poll_ready(&raw, timeout)?
        .into_iter()
        .map(|r| r.readable)
        .collect())
}

/// What [`poll_ready`] found for one descriptor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdReadiness {
    /// Readable, hung up or in error: a read will not wait.
    pub readable: bool,
    /// Room to write (or in error: a write will not wait).
    pub writable: bool,
}

/// `poll(2)` over `fds`, each watched for reading and, when its flag is
/// set, for writing too; `None` waits forever. `EINTR` is retried with the
/// time left.
///
/// Raw descriptors, not borrowed ones, so that a loop can keep a table of
/// what its driver asked it to watch without owning or borrowing the
/// sockets: polling a descriptor that was closed meanwhile reports
/// `POLLNVAL` (ready), and the driver's read then finds nothing.
pub fn poll_ready(
    fds: &[(std::os::fd::RawFd, bool)],
    timeout: Option<Duration>,
) -> io::Result<Vec<FdReadiness>> {
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, write)| libc::pollfd {
            fd,
            events: if write {
                libc::POLLIN | libc::POLLOUT
            } else {
                libc::POLLIN
            },
            revents: 0,
        })
        .collect();
    // A deadline too far to represent is as good as none.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => timeout_ms(d.saturating_duration_since(Instant::now())),
        };
        // SAFETY: `pollfds` is a live, initialised array of exactly
        // `pollfds.len()` entries; the kernel only reads the descriptor
        // numbers and writes `revents` (a closed one is `POLLNVAL`).
        let ret = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as libc::nfds_t, ms) };
        match cvt(ret) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let failed = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    Ok(pollfds
        .iter()
        .map(|p| FdReadiness {
            readable: p.revents & (libc::POLLIN | failed) != 0,
            writable: p.revents & (libc::POLLOUT | failed) != 0,
        })
        .collect())
}

/// This process's effective user id: whose files it may trust, and whom a
/// peer must be (besides root) to talk to it.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd's `MONOTONIC_USEC`
/// is read on (std's `Instant` does not expose its value).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec for the kernel to fill;
    // CLOCK_MONOTONIC always exists on Linux, so this cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    const BOUND: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn exit_watch_becomes_ready_when_the_child_exits() {
        let mut child = Command::new("/bin/true").spawn().unwrap();
        let watch = ExitWatch::new(child.id()).unwrap();
        let ready = poll_readable(&[watch.as_fd()], BOUND).unwrap();
        assert_eq!(ready, vec![true]);
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn sigterm_ends_a_child_and_its_watch_reports_it() {
        let mut child = Command::new("/bin/sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(pid_alive(pid));
        let watch = ExitWatch::new(pid).unwrap();
        assert_eq!(
            poll_readable(&[watch.as_fd()], Some(Duration::ZERO)).unwrap(),
            vec![false],
            "a sleeping child must not look exited"
        );
        send_signal(pid, Signal::Terminate).unwrap();
        assert_eq!(poll_readable(&[watch.as_fd()], BOUND).unwrap(), vec![true]);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: the pid is gone, and signalling it is still not an error.
        assert!(!pid_alive(pid));
        send_signal(pid, Signal::Kill).unwrap();
    }

    #[test]
    fn sigkill_is_delivered_as_sigkill() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        send_signal(child.id(), Signal::Kill).unwrap();
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    /// The waits and kills take either kind of child, boxed or not.
    #[test]
    fn the_helpers_take_std_and_unforked_children_alike() {
        use crate::spawn::{Launch, spawn_cold_vfork};
        let mut sleep = Launch::new("/bin/sleep");
        sleep.arg("30");
        let mut children: Vec<Box<dyn ChildProcess + Send>> = vec![
            Box::new(Command::new("/bin/sleep").arg("30").spawn().unwrap()),
            Box::new(spawn_cold_vfork(sleep, &[]).unwrap()),
        ];
        for child in &mut children {
            assert!(wait_exit(child, Duration::from_millis(20)).is_none());
            child.kill().unwrap();
            let status = wait_exit(child, BOUND.unwrap()).expect("killed");
            assert_eq!(status.signal(), Some(libc::SIGKILL));
            // Reaped: killing it again reaches no other process.
            child.kill().unwrap();
        }

        // One that has already exited is reaped by kill_and_reap itself.
        let done = spawn_cold_vfork(Launch::new("/bin/true"), &[]).unwrap();
        let pid = done.id();
        let watch = ExitWatch::new(pid).unwrap();
        assert_eq!(poll_readable(&[watch.as_fd()], BOUND).unwrap(), vec![true]);
        kill_and_reap(done);
        assert!(!pid_alive(pid), "a zombie was left");
    }

    #[test]
    fn group_addressing_pids_are_refused() {
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
        assert_eq!(
            send_signal(0, Signal::Terminate).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            send_signal(u32::MAX, Signal::Kill).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(ExitWatch::new(0).is_err());
        assert!(pid_alive(std::process::id()));
    }

    #[test]
    fn poll_reports_each_descriptor_separately() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        use std::io::Write;
        (&b).write_all(b"x").unwrap();
        let ready = poll_readable(&[a.as_fd(), c.as_fd()], BOUND).unwrap();
        assert_eq!(ready, vec![true, false]);
        drop(b);
        // A hung-up peer counts as ready.
        let (e, f) = UnixStream::pair().unwrap();
        // Shut down, not only dropped: a copy in a process another test
        // thread is forking would keep it open until that process execs.
        f.shutdown(std::net::Shutdown::Both).unwrap();
        drop(f);
        assert_eq!(
            poll_readable(&[e.as_fd()], Some(Duration::ZERO)).unwrap(),
            vec![true]
        );
    }

    #[test]
    fn poll_never_returns_before_a_sub_millisecond_timeout() {
        let (a, _b) = UnixStream::pair().unwrap();
        for wait in [Duration::from_micros(1), Duration::from_micros(1500)] {
            let start = Instant::now();
            assert_eq!(
                poll_readable(&[a.as_fd()], Some(wait)).unwrap(),
                vec![false]
            );
            assert!(start.elapsed() >= wait, "returned early for {wait:?}");
        }
    }

    #[test]
    fn timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(2)), 2);
        assert_eq!(timeout_ms(Duration::from_micros(2001)), 3);
        assert_eq!(timeout_ms(Duration::MAX), libc::c_int::MAX);
    }
}
