//! # handoff-mio
//!
//! [`handoff_driver`]'s drivers run from the caller's `mio::Poll`. The
//! drivers carry out the protocol (connects, bounded writes, reads, the
//! lock, spawning, signals, the journal); this crate only registers the
//! descriptors they ask it to watch under the caller's tokens, passes
//! mio's events and the loop's timeouts back to them, and turns the
//! incumbent's hooks into events for the daemon's loop. Nothing here waits
//! on the network or on a peer in the loop; the exceptions are a
//! supervisor with a journal, which writes it on a thread of its own (and,
//! when a handoff starts, waits for the previous handoff's last record to
//! be on disk), and reaping a successor that was sent `SIGKILL`:
//!
//! - [`MioIncumbent`]: the control listener and the current session under
//!   two of the caller's tokens; drain, seal and resume come out as
//!   [`IncumbentEvent`]s the daemon completes when it is ready.
//! - [`MioSuccessor`]: `Hello`, `Begin`, the lock, then `Ready` when the
//!   daemon says so; heartbeats during its start-up come from the loop's
//!   timeouts.
//! - [`MioSupervisor`]: handoffs of many services at once in one loop,
//!   started from the loop or, through a [`Remote`], from other threads.
//!
//! The calling pattern is the same for all three: register, then in the
//! loop pass every event to `handle_event` (it says whether the event was
//! its own), call `handle_timeout` when `poll_timeout()` has passed (use the
//! earliest `poll_timeout()` as the `Poll::poll` timeout), and drain
//! `poll_event`.
//!
//! ```no_run
//! use handoff_core::DrainReport;
//! use handoff_driver::SealReport;
//! use handoff_mio::{IncumbentEvent, MioIncumbent};
//! use handoff_os::lock::DataDirLock;
//! use mio::{Events, Poll, Token};
//! use std::path::Path;
//!
//! # fn main() -> std::io::Result<()> {
//! let mut poll = Poll::new()?;
//! let lock = DataDirLock::acquire(Path::new("/var/lib/app")).map_err(std::io::Error::other)?;
//! let mut control = MioIncumbent::bind_cold_start(Path::new("/run/app/ctl.sock"), lock)?;
//! control.register(poll.registry(), Token(100), Token(101))?;
//! let mut events = Events::with_capacity(64);
//! loop {
//!     let timeout = control.poll_timeout().map(|t| t.saturating_duration_since(std::time::Instant::now()));
//!     if let Err(e) = poll.poll(&mut events, timeout) {
//!         // epoll_wait is not restarted after the process is stopped and
//!         // continued (SIGSTOP, `systemctl freeze`): a wake-up, not a failure.
//!         if e.kind() != std::io::ErrorKind::Interrupted {
//!             return Err(e);
//!         }
//!     }
//!     for event in &events {
//!         if control.handle_event(poll.registry(), event) {
//!             continue;
//!         }
//!         // … the daemon's own sockets …
//!     }
//!     control.handle_timeout(poll.registry());
//!     while let Some(ev) = control.poll_event() {
//!         match ev {
//!             IncumbentEvent::Drain { .. } => {
//!                 // stop accepting; when in-flight requests are done:
//!                 control.drained(poll.registry(), DrainReport::default());
//!             }
//!             IncumbentEvent::Seal => control.sealed(poll.registry(), &SealReport::default()),
//!             IncumbentEvent::Resume => control.resumed(poll.registry()),
//!             IncumbentEvent::SessionEnded(end) if !end.keeps_serving() => return Ok(()),
//!             _ => {}
//!         }
//!     }
//! }
//! # }
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

mod conn;
mod incumbent;
mod successor;
mod supervisor;

pub use incumbent::{IncumbentEvent, MioIncumbent};
pub use successor::{MioSuccessor, PassedTcp, SuccessorEvent};
pub use supervisor::{MioSupervisor, Remote, ServiceId, SupervisorEvent};
