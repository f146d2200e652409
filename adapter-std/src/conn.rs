//! What the blocking adapter does for a driver: keep the table of
//! descriptors the driver asked it to watch, and wait on them with
//! `poll(2)` until one is ready or the driver's next deadline.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use handoff_driver::{Io, Source};
use handoff_os::process::{FdReadiness, poll_ready};

pub use handoff_driver::link::{Inbox, MAX_UNSENT, WRITE_TIMEOUT};

/// What [`Watched::wait`] found: the ready sources, and for each extra
/// descriptor whether it is readable.
pub(crate) type Found = (Vec<(Source, FdReadiness)>, Vec<bool>);

/// The descriptors a driver watches, by source.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    fds: Vec<(Source, RawFd, bool)>,
}

impl Io for Watched {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        self.fds.retain(|(s, _, _)| *s != source);
        self.fds.push((source, fd.as_raw_fd(), write));
        Ok(())
    }

    fn unwatch(&mut self, source: Source, _fd: BorrowedFd<'_>) {
        self.fds.retain(|(s, _, _)| *s != source);
    }
}

impl Watched {
    /// Waits until a watched descriptor or one of `extra` (read only) is
    /// ready, or `deadline` passes. Returns the ready sources and, for
    /// each of `extra`, whether it is readable.
    pub(crate) fn wait(
        &self,
        extra: &[RawFd],
        deadline: Option<std::time::Instant>,
    ) -> io::Result<Found> {
        let mut fds: Vec<(RawFd, bool)> = self.fds.iter().map(|&(_, fd, w)| (fd, w)).collect();
        fds.extend(extra.iter().map(|&fd| (fd, false)));
        let timeout = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        if fds.is_empty() {
            // Nothing to watch: only the deadline can end the wait. With
            // neither, the driver would be stuck, which the machines rule
            // out.
            if let Some(t) = timeout {
                std::thread::sleep(t);
            }
            return Ok((Vec::new(), Vec::new()));
        }
        let ready = poll_ready(&fds, timeout)?;
        let (ours, theirs) = ready.split_at(self.fds.len());
        let sources = self
            .fds
            .iter()
            .zip(ours)
            .filter(|(_, r)| r.readable || r.writable)
            .map(|(&(s, _, _), &r)| (s, r))
            .collect();
        Ok((sources, theirs.iter().map(|r| r.readable).collect()))
    }
}
