//! Descriptors passed over Unix sockets (`SCM_RIGHTS`): how an incumbent
//! hands its listening sockets to a restarted supervisor (docs/PROTOCOL.md
//! section 9) and how the supervisor stores them with systemd
//! (`FDSTORE=1`). The listeners this process was started with are kept
//! here too ([`passed_listeners`]), so the incumbent can offer them whatever
//! the daemon did with its own copies.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use crate::sys::cvt;

/// The most descriptors the kernel passes in one message (`SCM_MAX_FD`).
pub const MAX_FDS: usize = 253;

/// Room for the control message of `n` descriptors, as `CMSG_SPACE` has it.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) as usize }
}

/// Sends `buf` with `fds` attached to its first byte, on a connected socket
/// (stream or datagram), without `SIGPIPE`. Returns how many bytes went: on
/// a stream socket fewer than `buf.len()` may, and the descriptors travel
/// with the first of them. An empty `fds` is a plain send.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message; the kernel passes at most {MAX_FDS}",
                fds.len()
            ),
        ));
    }
    // u64 words keep the buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; cmsg_space(fds.len()).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_space(fds.len()) as _;
        // SAFETY: `msg_control` points at `control`, which has room for one
        // header and `fds.len()` descriptors (CMSG_SPACE), so CMSG_FIRSTHDR
        // is non-null and CMSG_DATA has room for the copy.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, all
        // alive for the call; the kernel only reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// What [`recv_with_fds`] read.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer (0: the peer closed, on a stream).
    pub len: usize,
    /// The descriptors that came with them, close-on-exec, in order.
    pub fds: Vec<OwnedFd>,
    /// The kernel had more descriptors than `max_fds` room for, and closed
    /// the rest (`MSG_CTRUNC`): what was sent did not arrive whole.
    pub truncated: bool,
}

/// Reads once into `buf`, taking up to `max_fds` descriptors passed with
/// those bytes. They arrive close-on-exec (`MSG_CMSG_CLOEXEC`), so none can
/// leak into a process spawned meanwhile, and each is owned by the result:
/// dropping it closes them. A plain read of the same bytes would have the
/// kernel close the descriptors instead.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8], max_fds: usize) -> io::Result<Received> {
    let max_fds = max_fds.min(MAX_FDS);
    let mut control = vec![0u64; cmsg_space(max_fds.max(1)).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = if max_fds == 0 { 0 } else { cmsg_space(max_fds) } as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both
        // alive and writable for the call, with their true lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    if msg.msg_controllen > 0 {
        // SAFETY: the kernel filled `control` with `msg_controllen` bytes of
        // well-formed control messages; the CMSG_* macros walk them within
        // that length. Each SCM_RIGHTS descriptor is new in this process and
        // owned by nobody else, so taking ownership of it is sound.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..bytes / size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    // The control buffer is rounded up to alignment, and may have held a
    // descriptor more than asked for: that one is closed, and counted as a
    // truncation like those the kernel closed.
    let mut truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if fds.len() > max_fds {
        fds.truncate(max_fds);
        truncated = true;
    }
    Ok(Received {
        len: n,
        fds,
        truncated,
    })
}

/// The listeners this process was started with, kept by
/// [`crate::env::take_startup_env`]: a duplicate of each, by name, in
/// descriptor order, whatever the daemon then does with its own.
static PASSED: OnceLock<Vec<(String, OwnedFd)>> = OnceLock::new();

/// Keeps duplicates of `listeners` as the ones this process was passed.
/// Only the first call counts (the start-up environment is read once).
pub(crate) fn keep_passed(listeners: &[(String, OwnedFd)]) {
    let copies = listeners
        .iter()
        .filter_map(|(name, fd)| Some((name.clone(), copy_high(fd.as_fd()).ok()?)))
        .collect();
    let _ = PASSED.set(copies);
}

/// The lowest descriptor number a kept copy takes, if the limit allows:
/// above the numbers a daemon's own start-up uses, so that keeping the
/// copies leaves its descriptor layout as it would be without them.
const KEPT_FROM: libc::c_int = 1024;

/// A close-on-exec duplicate of `fd` at [`KEPT_FROM`] or above, or at the
/// lowest free number when the descriptor limit is lower than that.
fn copy_high(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes an open descriptor and an integer and
    // returns a new descriptor or -1; no memory is passed.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, KEPT_FROM) };
    if raw < 0 {
        return fd.try_clone_to_owned();
    }
    // SAFETY: the kernel just made `raw` for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The listening sockets this process was started with (by a supervisor or
/// systemd, at descriptors 3.. with `LISTEN_FDS`), by name, in order: what
/// an incumbent offers a restarted supervisor. Empty before
/// [`crate::env::take_startup_env`] ran, or if nothing was passed.
pub fn passed_listeners() -> &'static [(String, OwnedFd)] {
    PASSED.get().map(Vec::as_slice).unwrap_or(&[])
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: `fd` is open for the borrow; `st` is a valid buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Checks that `fd` is a socket this process can pass: open and a socket.
pub fn is_socket(fd: BorrowedFd<'_>) -> bool {
    fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFSOCK)
}

/// Whether `fd` is a TCP stream socket (IPv4 or IPv6) that is not
/// listening: what a passed client connection must be before a successor
/// makes a `TcpStream` of it.
pub fn is_tcp_stream(fd: BorrowedFd<'_>) -> bool {
    let opt = |name| crate::sys::getsockopt_int(fd, libc::SOL_SOCKET, name).ok();
    matches!(opt(libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
        && opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && opt(libc::SO_PROTOCOL) == Some(libc::IPPROTO_TCP)
        && opt(libc::SO_ACCEPTCONN) == Some(0)
}

/// Which open file `fd` is, as `(device, inode)`: equal for every
/// descriptor of one socket in any process (passed, duplicated or stored),
/// different for another socket bound to the same address. How a receiver
/// tells a socket it holds already from a new one, as systemd does for its
/// fd store.
pub fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    fstat(fd).map(|st| (st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::is_cloexec;
    use std::net::TcpListener;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn same_socket(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
        let id = |fd: BorrowedFd<'_>| {
            // SAFETY: as in `is_socket`.
            let mut st: libc::stat = unsafe { zeroed() };
            // SAFETY: `fd` is open; `st` is a valid buffer.
            unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
            (st.st_dev, st.st_ino)
        };
        id(a) == id(b)
    }

    #[test]
    fn descriptors_cross_a_stream_with_their_bytes_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let n = send_with_fds(a.as_fd(), b"hello", &[l1.as_fd(), l2.as_fd()]).unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf, 8).unwrap();
        assert_eq!(&buf[..got.len], b"hello");
        assert!(!got.truncated);
        assert_eq!(got.fds.len(), 2);
        assert!(same_socket(got.fds[0].as_fd(), l1.as_fd()));
        assert!(same_socket(got.fds[1].as_fd(), l2.as_fd()));
        assert!(got.fds.iter().all(|fd| is_cloexec(fd.as_fd())));
        // A copy of a listener accepts what the original's queue holds.
        let addr = l1.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let copy = TcpListener::from(got.fds.into_iter().next().unwrap());
        assert!(copy.accept().is_ok());
    }

    #[test]
    fn more_descriptors_than_room_is_reported_not_hidden() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        send_with_fds(a.as_fd(), b"x", &[l.as_fd(), l.as_fd(), l.as_fd()]).unwrap();
        let mut buf = [0u8; 4];
        let got = recv_with_fds(b.as_fd(), &mut buf, 1).unwrap();
        assert!(got.truncated);
        assert!(got.fds.len() <= 1);
    }

    #[test]
    fn too_many_descriptors_are_refused_before_sending() {
        let (a, _b) = UnixStream::pair().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..=MAX_FDS).map(|_| l.as_fd()).collect();
        let e = send_with_fds(a.as_fd(), b"x", &many).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn only_a_connected_tcp_socket_is_a_tcp_stream() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        assert!(is_tcp_stream(client.as_fd()));
        assert!(is_tcp_stream(server.as_fd()));
        assert!(!is_tcp_stream(l.as_fd()), "a listener");
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(!is_tcp_stream(a.as_fd()), "a Unix socket");
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_tcp_stream(f.as_fd()), "a file");
    }

    #[test]
    fn is_socket_tells_sockets_from_files() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(is_socket(l.as_fd()));
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(!is_socket(f.as_fd()));
    }
}
