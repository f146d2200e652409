// The one unsafe call is tokio's, explained where it is made.
#![allow(unsafe_code)]
//! A descriptor registered with tokio's reactor. tokio's
//! `AsyncFd::register` is an `unsafe fn`: the caller promises the
//! descriptor stays open, and the same, for as long as the registration
//! lives. An [`OwnedFd`] keeps that promise by construction, which is what
//! this wraps, so handoff-tokio needs no unsafe code of its own.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

/// Registers `fd` with the current tokio runtime's reactor, for
/// readability and writability. Panics, as tokio does, outside a runtime
/// with I/O enabled: check `tokio::runtime::Handle::try_current` first.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`. An `OwnedFd` closes its descriptor
    // only when dropped, which the `AsyncFd` does after deregistering, and
    // its `as_raw_fd` always returns the one descriptor it was made with;
    // so the descriptor stays open and the same while it is registered.
    let registered = unsafe { AsyncFd::register(fd) };
    registered.map_err(io::Error::from)
}
