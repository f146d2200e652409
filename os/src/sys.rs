//! Small wrappers shared by the other os modules: descriptor flags, socket
//! options and directory fsync.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

/// Turns the C convention (-1 and `errno`) into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The descriptor flags of `fd`, or `None` if no such descriptor is open.
/// Takes a raw number because its purpose is to check numbers that arrived
/// from outside (the environment) before anything claims them.
pub(crate) fn fd_flags(fd: RawFd) -> Option<libc::c_int> {
    // SAFETY: F_GETFD only reads the flag word of a descriptor table entry;
    // on a number that is not open it fails with EBADF and touches nothing.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    (flags != -1).then_some(flags)
}

/// Sets `FD_CLOEXEC`, keeping the other descriptor flags.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `fd` is borrowed, so it stays open for the call; F_GETFD reads
    // only its flag word.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: as above; F_SETFD writes only this descriptor's flag word.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
    }
    Ok(())
}

/// Whether `FD_CLOEXEC` is set.
#[cfg(test)]
pub(crate) fn is_cloexec(fd: BorrowedFd<'_>) -> bool {
    fd_flags(fd.as_raw_fd()).is_some_and(|f| f & libc::FD_CLOEXEC != 0)
}

/// Turns `O_NONBLOCK` on or off. The flag lives on the open file
/// description, so every descriptor sharing it (a parent's copy included)
/// sees the change.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: `fd` is borrowed, so it stays open; F_GETFL reads its status
    // flags and nothing else.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let wanted = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if wanted != flags {
        // SAFETY: as above; F_SETFL changes only the status flags.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, wanted) })?;
    }
    Ok(())
}

/// Whether `O_NONBLOCK` is set.
#[cfg(test)]
pub(crate) fn is_nonblocking(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: `fd` is borrowed and open; F_GETFL only reads.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags != -1 && flags & libc::O_NONBLOCK != 0
}

/// An `int`-valued socket option.
pub(crate) fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals and `len` is the size of
    // `value`, so the kernel writes at most that many bytes into it.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast::<libc::c_void>(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// The directory a path's last component lives in (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes renames and unlinks in `dir` durable: without it a crash can undo
/// a rename whose file contents were already synced.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
