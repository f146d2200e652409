//! The control socket and the socketpair.
#![allow(unsafe_code)]

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::sys::{cvt, parent_dir};

/// Bytes a socket path may have: `sun_path` less its terminating NUL.
// SAFETY: `sockaddr_un` is integers and a byte array, for which all zeroes
// is a valid value; only the array's length is used.
const MAX_PATH_LEN: usize = unsafe { std::mem::zeroed::<libc::sockaddr_un>() }
    .sun_path
    .len()
    - 1;

/// Fails with a clear message if `path` does not fit in `sockaddr_un`.
pub fn validate_socket_path(path: &Path) -> io::Result<()> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the control socket path is empty; configure a path such as /run/<app>/control.sock",
        ));
    }
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "control socket path {} contains a NUL byte, which a socket path cannot hold",
                path.display()
            ),
        ));
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "control socket path {} is {} bytes long, but a Unix socket path can be at \
                 most {MAX_PATH_LEN} bytes (sockaddr_un); choose a shorter path, for \
                 example under /run",
                path.display(),
                bytes.len()
            ),
        ));
    }
    // `bind_control_socket` binds under a temporary name in a directory
    // beside `path` first; it must fit too, whatever the pid.
    let dir_len = parent_dir(path).as_os_str().as_bytes().len();
    if dir_len + STAGING_NAME_MAX > MAX_PATH_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the directory of socket path {} is {dir_len} bytes long; a socket \
                 is bound there under a temporary name first, which leaves at most {} bytes \
                 for the directory: choose a shorter one, for example under /run",
                path.display(),
                MAX_PATH_LEN - STAGING_NAME_MAX
            ),
        ));
    }
    Ok(())
}

/// The longest the temporary name can add to the directory's path:
/// `/.hb-<pid>-<n>/s`, with a pid of up to 7 digits (Linux's `pid_max` is
/// at most 2^22) and a per-process counter of up to 6.
const STAGING_NAME_MAX: usize = "/.hb-".len() + 7 + 1 + 6 + "/s".len();

/// A fresh private directory beside `path` for binding under a temporary
/// name: unique per process (pid) and per call (counter), and short, since
/// the temporary path must fit in `sun_path` too.
fn staging_dir(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    parent_dir(path).join(format!(".hb-{}-{n}", std::process::id()))
}

/// Binds a Unix stream listener at `path`: first under a temporary name in
/// the same directory, mode 0600, then renamed over `path`, so the path
/// always names a live socket (the old one until the rename, then this one)
/// and never a socket others could reach.
pub fn bind_control_socket(path: &Path) -> io::Result<UnixListener> {
    stage_control_socket(path)?.install()
}

/// A control socket bound under its temporary name, not yet renamed over
/// its path; see [`stage_control_socket`]. Dropped uninstalled, it removes
/// its temporary name.
#[derive(Debug)]
pub struct StagedControlSocket {
    listener: Option<UnixListener>,
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
}

/// The first half of [`bind_control_socket`]: everything that can fail for
/// a bad path, a lack of room or of permission. A successor does this
/// before it sends `Ready`, so that only the rename is left once it is
/// authoritative.
pub fn stage_control_socket(path: &Path) -> io::Result<StagedControlSocket> {
    validate_socket_path(path)?;
    // bind(2) creates the socket with mode 0777 & ~umask, and changing the
    // umask is process-wide, so the temporary name lives in a 0700
    // directory: nobody else can reach it before the chmod below. The
    // directory sits beside `path`, so the rename stays on one filesystem.
    let dir = staging_dir(path);
    // Left behind by a crashed process that had our pid.
    let _ = fs::remove_dir_all(&dir);
    let tmp = dir.join("s");
    validate_socket_path(&tmp).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the temporary name for the control socket is too long: {e}"),
        )
    })?;
    fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let mut staged = StagedControlSocket {
        listener: None,
        dir,
        tmp,
        path: path.to_path_buf(),
    };
    staged.listener = Some(UnixListener::bind(&staged.tmp)?);
    fs::set_permissions(&staged.tmp, fs::Permissions::from_mode(0o600))?;
    Ok(staged)
}

impl StagedControlSocket {
    /// The path the socket will be renamed over.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`StagedControlSocket::install`] for a successor past `Ready`, the
    /// one that every adapter's successor takes the path over with: it
    /// passes the crash point `successor-before-control-path-taken` first.
    pub fn install_as_successor(self) -> io::Result<UnixListener> {
        crate::crash::at("successor-before-control-path-taken");
        self.install()
    }

    /// Renames the socket over its path and returns its listener.
    pub fn install(mut self) -> io::Result<UnixListener> {
        fs::rename(&self.tmp, &self.path)?;
        let _ = fs::remove_dir(&self.dir);
        self.listener
            .take()
            .ok_or_else(|| io::Error::other("the staged control socket is gone"))
    }
}

impl Drop for StagedControlSocket {
    fn drop(&mut self) {
        if self.listener.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Connects to the Unix stream socket at `path`, giving up after
/// `timeout`. A plain blocking connect waits without end while the
/// listener's accept queue is full (an incumbent busy in a session, with
/// earlier attempts piled up behind it). A connect cut short by the process
/// being stopped and continued (a debugger, `systemctl freeze`) is tried
/// again with the time left.
pub fn connect_within(path: &Path, timeout: std::time::Duration) -> io::Result<UnixStream> {
    let (addr, len) = socket_address(path)?;
    let until = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: plain socket call; the descriptor is owned at once.
        let fd =
            cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `fd` was just made and belongs to nobody else.
        let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // Linux bounds a blocking Unix connect by the send timeout (zero
        // is refused, hence the floor).
        let left = until.saturating_duration_since(std::time::Instant::now());
        sock.set_write_timeout(Some(left.max(std::time::Duration::from_millis(1))))?;
        // SAFETY: `addr` is a valid `sockaddr_un` of at least `len` bytes.
        let ret = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        match cvt(ret) {
            Ok(_) => {
                // Sends on the session are bounded by the protocol, not by
                // this.
                sock.set_write_timeout(None)?;
                return Ok(sock);
            }
            // A timed connect is not restarted after a stop and continue;
            // a fresh socket starts from a clean state.
            Err(e) if e.kind() == io::ErrorKind::Interrupted && !left.is_zero() => continue,
            Err(e) => {
                return Err(match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINPROGRESS | libc::EINTR) => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} did not take the connection within {timeout:?} (its accept queue is full)",
                            path.display()
                        ),
                    ),
                    _ => e,
                });
            }
        }
    }
}

/// `path` as a `sockaddr_un` and the length to pass with it.
fn socket_address(path: &Path) -> io::Result<(libc::sockaddr_un, usize)> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_PATH_LEN || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} cannot name a Unix socket", path.display()),
        ));
    }
    // SAFETY: all zeroes is a valid `sockaddr_un`; the path fits (checked
    // above) and leaves the terminating NUL in place.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    Ok((addr, len))
}

/// Connects to the Unix stream socket at `path` without waiting: the
/// returned stream is non-blocking. A listener whose accept queue is full
/// is `WouldBlock` at once (a Unix connect either completes or fails; it is
/// never left in progress), which [`is_not_listening`] counts as "not
/// there yet", so an event loop retries it on a timer of its own instead of
/// stalling on it.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let (addr, len) = socket_address(path)?;
    // SAFETY: plain socket call; the descriptor is owned at once.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: `fd` was just made and belongs to nobody else.
    let sock = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    loop {
        // SAFETY: `addr` is a valid `sockaddr_un` of at least `len` bytes.
        let ret = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                len as libc::socklen_t,
            )
        };
        match cvt(ret) {
            Ok(_) => return Ok(sock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed connect to a control socket means only that nothing
/// listens at the path right now: the path is missing, names a socket whose
/// listener closed, or its accept queue is full (what a blocking connect
/// bounded by [`connect_within`] and a non-blocking one report). A daemon
/// about to take the path over makes any of these go away; a permission or
/// a path that is not a socket does not.
pub fn is_not_listening(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::NotFound
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
    ) || matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS))
}

/// Who is at the other end of a Unix socket, as the kernel saw it at
/// connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its pid.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its group id.
    pub gid: u32,
}

/// The peer's credentials (`SO_PEERCRED`).
pub fn peer_credentials(sock: &impl AsFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live locals and `len` is the size of
    // `cred`, so the kernel writes at most that many bytes into it.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    Ok(PeerCredentials {
        // A pid from the kernel is never negative.
        pid: cred.pid as u32,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Which file `path` names now (device and inode), to tell later whether
/// it was replaced.
pub fn path_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// For an incumbent that took the lock back after a seal: if the control
/// socket path no longer names the socket it listens on (`bound` is that
/// socket file's identity), binds a new one there and returns it.
///
/// A successor whose `Ready` crossed the abort takes the path over before
/// it is stopped; the incumbent, which holds the lock again (so that
/// successor is gone), would otherwise be out of every later supervisor's
/// reach.
pub fn reclaim_control_path(
    path: &Path,
    bound: &mut Option<(u64, u64)>,
) -> Option<io::Result<UnixListener>> {
    if bound.is_some() && path_identity(path) == *bound {
        return None;
    }
    let listener = bind_control_socket(path);
    if listener.is_ok() {
        *bound = path_identity(path);
    }
    Some(listener)
}

/// What an incumbent does after `accept` on its control socket failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcceptRetry {
    /// The connection went away before it was taken, or a signal came:
    /// accept the next one now.
    Now,
    /// The process or the system is short of descriptors or memory for a
    /// moment: try again after this pause, which lets it pass without
    /// spinning.
    After(std::time::Duration),
    /// The listener itself failed: report it.
    Fatal,
}

/// How to go on after `accept` on a control socket failed with `e`. Every
/// adapter follows it, so that none stops being reachable for handoffs
/// over a passing shortage.
pub fn accept_retry(e: &io::Error) -> AcceptRetry {
    match e.raw_os_error() {
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO) => AcceptRetry::Now,
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            AcceptRetry::After(std::time::Duration::from_millis(50))
        }
        _ => AcceptRetry::Fatal,
    }
}

/// Which peers may speak on a control socket: our own uid, root, and an
/// allow-list.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allowed_uids: Vec<u32>,
}

impl PeerPolicy {
    /// Our uid and root only.
    pub fn same_user() -> Self {
        PeerPolicy::default()
    }

    /// Also these uids.
    pub fn with_allowed_uids(allowed_uids: Vec<u32>) -> Self {
        PeerPolicy { allowed_uids }
    }

    /// Whether `uid` may connect.
    pub fn permits(&self, uid: u32) -> bool {
        // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
        let euid = unsafe { libc::geteuid() };
        // Root is allowed because it could ptrace or signal us anyway.
        uid == euid || uid == 0 || self.allowed_uids.contains(&uid)
    }
}

/// Writes one whole frame with `send(MSG_NOSIGNAL)`: a dead peer is
/// `EPIPE`, never a signal. Loops over partial writes (a blocking socket
/// writes all; a non-blocking one may return `WouldBlock` after a part, in
/// which case the error says how much was written: use it only on blocking
/// sockets or with frames that fit the socket buffer).
pub fn send_frame(sock: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let mut sent = 0;
    while sent < frame.len() {
        let ret = send_once(sock.as_fd(), &frame[sent..]);
        if ret < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if sent > 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!(
                            "the socket would block after {sent} of {} bytes of a frame; \
                             the stream is now mid-frame",
                            frame.len()
                        ),
                    ));
                }
                _ => return Err(e),
            }
        }
        if ret == 0 {
            // Cannot happen for a non-empty send on a stream socket; guards
            // against spinning forever if it ever does.
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += ret as usize;
    }
    Ok(())
}

/// One `send(MSG_NOSIGNAL)` of as much of `buf` as the socket takes now:
/// for event loops, which keep the rest for the next writable event. A dead
/// peer is `EPIPE`, never a signal; `EINTR` is retried.
pub fn send_some(sock: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    loop {
        let ret = send_once(sock, buf);
        if ret >= 0 {
            return Ok(ret as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn send_once(sock: BorrowedFd<'_>, buf: &[u8]) -> isize {
    // SAFETY: `buf` is a live slice and the length passed is its length, so
    // the kernel reads only bytes we own; `sock` is borrowed, so open.
    unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    }
}

/// A connected pair of Unix stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(UnixStream, UnixStream)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is a live array of the two ints socketpair writes.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: the kernel just created both descriptors for us and nothing
    // else knows their numbers, so each gets exactly one owner.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((UnixStream::from(a), UnixStream::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::is_cloexec;
    use crate::testutil::TempDir;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A listener with the smallest accept queue, filled by connections
    /// nobody accepts (returned, to keep them queued), and the error of the
    /// connect that found no room.
    fn full_queue(tag: &str) -> (TempDir, PathBuf, UnixListener, Vec<UnixStream>, io::Error) {
        let dir = TempDir::new(tag);
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: listen on our own listening socket only changes its queue.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut queued = Vec::new();
        let err = loop {
            match connect_within(&path, std::time::Duration::from_millis(50)) {
                Ok(s) => queued.push(s),
                Err(e) => break e,
            }
            assert!(queued.len() < 64, "the queue never filled");
        };
        (dir, path, listener, queued, err)
    }

    #[test]
    fn a_connect_to_a_full_accept_queue_gives_up_in_time() {
        let (_dir, path, listener, queued, err) = full_queue("connect-full");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        // Once there is room, it connects, and sends are not time-bounded.
        drop(queued);
        while listener.set_nonblocking(true).is_ok() && listener.accept().is_ok() {}
        let s = connect_within(&path, std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(s.write_timeout().unwrap(), None);
    }

    /// Sets by the handler below; says an interrupting signal was taken.
    static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    extern "C" fn note_interrupt(_: libc::c_int) {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn a_connect_interrupted_while_waiting_for_room_tries_again() {
        // What a stop and continue does to a timed connect (EINTR), done
        // to one thread: a signal whose handler is installed without
        // SA_RESTART, sent while the thread waits in connect.
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = note_interrupt as *const () as libc::sighandler_t;
            assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
        }
        let (_dir, path, listener, _queued, _) = full_queue("connect-eintr");
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            // SAFETY: pthread_self has no preconditions.
            tid_tx
                .send((unsafe { libc::gettid() }, unsafe { libc::pthread_self() }))
                .unwrap();
            connect_within(&p, std::time::Duration::from_secs(20))
        });
        let (tid, thread) = tid_rx.recv().unwrap();
        // Wait (bounded) until the thread is inside connect(2).
        let syscall = format!("/proc/self/task/{tid}/syscall");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while fs::read_to_string(&syscall).ok().and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|n| n.parse::<i64>().ok())
        }) != Some(libc::SYS_connect)
        {
            assert!(
                std::time::Instant::now() < until,
                "the thread never waited in connect"
            );
            std::thread::yield_now();
        }
        // SAFETY: `thread` is alive: it is joined below.
        assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
        while !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(
                std::time::Instant::now() < until,
                "the signal never arrived"
            );
            std::thread::yield_now();
        }
        // The connect was cut short; now make room: the retry gets in.
        let _first = listener.accept().unwrap();
        let s = waiter
            .join()
            .unwrap()
            .expect("connected after the interruption");
        assert_eq!(s.write_timeout().unwrap(), None);
    }

    #[test]
    fn a_passing_accept_failure_is_retried_and_a_broken_listener_reported() {
        let err = io::Error::from_raw_os_error;
        for e in [libc::ECONNABORTED, libc::EINTR, libc::EPROTO] {
            assert_eq!(accept_retry(&err(e)), AcceptRetry::Now, "errno {e}");
        }
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                matches!(accept_retry(&err(e)), AcceptRetry::After(p) if !p.is_zero()),
                "errno {e}"
            );
        }
        for e in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK] {
            assert_eq!(accept_retry(&err(e)), AcceptRetry::Fatal, "errno {e}");
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_path_limit_is_sun_path_less_its_nul() {
        assert_eq!(MAX_PATH_LEN, 107);
        let ok = PathBuf::from(format!("/{}", "a".repeat(MAX_PATH_LEN - 1)));
        validate_socket_path(&ok).unwrap();
        let long = PathBuf::from(format!("/{}", "a".repeat(MAX_PATH_LEN)));
        let err = validate_socket_path(&long).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(text.contains(&*long.to_string_lossy()), "{text}");
        assert!(text.contains("108 bytes") && text.contains("107"), "{text}");
        assert!(validate_socket_path(Path::new("")).is_err());
        // An overlong path is refused before anything is created.
        assert!(bind_control_socket(&long).is_err());
    }

    #[test]
    fn bound_socket_is_private_and_leaves_no_temporary_name() {
        let tmp = TempDir::new("cb");
        let path = tmp.path().join("ctl.sock");
        let listener = bind_control_socket(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(entries(tmp.path()), vec!["ctl.sock"]);
        assert!(is_cloexec(listener.as_fd()));
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        send_frame(&client, b"ping").unwrap();
        let mut buf = [0; 4];
        (&server).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[test]
    fn rebinding_replaces_the_socket_in_place() {
        let tmp = TempDir::new("cr");
        let path = tmp.path().join("ctl.sock");
        let old = bind_control_socket(&path).unwrap();
        let old_ino = fs::metadata(&path).unwrap().ino();
        let new = bind_control_socket(&path).unwrap();
        assert_ne!(fs::metadata(&path).unwrap().ino(), old_ino);
        assert_eq!(entries(tmp.path()), vec!["ctl.sock"]);
        // Connections now reach the new listener, not the old one.
        old.set_nonblocking(true).unwrap();
        let _client = UnixStream::connect(&path).unwrap();
        new.accept().unwrap();
        assert_eq!(old.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_failed_bind_cleans_up_after_itself() {
        let tmp = TempDir::new("cf");
        // A non-empty directory where the socket should go: the rename fails.
        let path = tmp.path().join("ctl.sock");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"").unwrap();
        assert!(bind_control_socket(&path).is_err());
        assert_eq!(entries(tmp.path()), vec!["ctl.sock"]);
        // A missing directory fails too, without creating anything.
        let missing = tmp.path().join("no/such/dir/ctl.sock");
        assert!(bind_control_socket(&missing).is_err());
        assert!(!tmp.path().join("no").exists());
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, b) = socketpair().unwrap();
        let cred = peer_credentials(&a).unwrap();
        assert_eq!(cred.pid, std::process::id());
        // SAFETY: getuid/getgid take nothing and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert_eq!(cred.uid, uid);
        assert_eq!(cred.gid, gid);
        assert_eq!(peer_credentials(&b).unwrap(), cred);
        assert!(PeerPolicy::same_user().permits(cred.uid));
    }

    #[test]
    fn policy_admits_self_root_and_the_allow_list_only() {
        // SAFETY: geteuid takes nothing and cannot fail.
        let me = unsafe { libc::geteuid() };
        let stranger = (1..u32::MAX).find(|&u| u != me && u != 4711).unwrap();
        let policy = PeerPolicy::same_user();
        assert!(policy.permits(me));
        assert!(policy.permits(0));
        assert!(!policy.permits(stranger));
        assert!(!policy.permits(4711) || me == 4711);
        let policy = PeerPolicy::with_allowed_uids(vec![4711]);
        assert!(policy.permits(4711));
        assert!(!policy.permits(stranger));
    }

    #[test]
    fn sending_to_a_closed_peer_is_epipe_not_sigpipe() {
        let (a, b) = socketpair().unwrap();
        // Shut down as well as dropped: a process another test thread is
        // forking may hold a copy of `b` until its exec, but shutdown acts
        // on the socket itself.
        b.shutdown(std::net::Shutdown::Both).unwrap();
        drop(b);
        let err = send_frame(&a, b"hello").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        // Still alive: SIGPIPE would have killed the test process.
    }

    #[test]
    fn a_large_frame_is_written_whole() {
        let (a, b) = socketpair().unwrap();
        let frame: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            (&b).read_to_end(&mut got).unwrap();
            got
        });
        send_frame(&a, &frame).unwrap();
        drop(a);
        assert!(reader.join().unwrap() == frame);
    }

    #[test]
    fn a_nonblocking_socket_reports_a_partial_frame() {
        let (a, _b) = socketpair().unwrap();
        a.set_nonblocking(true).unwrap();
        let frame = vec![0u8; 64 << 20];
        let err = send_frame(&a, &frame).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("bytes of a frame"), "{err}");
    }

    #[test]
    fn socketpair_ends_are_connected_and_close_on_exec() {
        let (a, b) = socketpair().unwrap();
        assert!(is_cloexec(a.as_fd()) && is_cloexec(b.as_fd()));
        (&a).write_all(b"x").unwrap();
        let mut buf = [0];
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"x");
    }
}
