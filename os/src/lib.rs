//! # handoff-os
//!
//! The operating-system layer of handoff (docs/PROTOCOL.md section 5 and 6):
//! every mechanism a handoff needs from Unix, independent of how the
//! protocol is driven, so the blocking, mio, smol and tokio adapters and the
//! supervisor binary share one implementation of each.
//!
//! - [`spawn`]: start the successor with the listeners at FDs 3.. and its end
//!   of the control socketpair after them, systemd-style;
//! - [`env`](mod@env): read (once) and remove the variables that tell a process which
//!   role it was started in;
//! - [`listeners`]: adopt inherited listeners by name and type;
//! - [`lock`]: the data-dir lock (`flock` plus a diagnostic pidfile);
//! - [`control`]: the control socket (private bind, peer credentials,
//!   whole-frame writes without `SIGPIPE`);
//! - [`fdpass`]: descriptors passed over Unix sockets (`SCM_RIGHTS`), and
//!   the listeners this process was started with, kept to be offered;
//! - [`journal`]: the supervisor's journal, written atomically;
//! - [`process`]: signals and waiting for a child's exit without a thread,
//!   the process's own ids and clock;
//! - [`signals`]: signals blocked in every thread and taken with `sigwait`;
//! - [`crash`]: crash points for tests (`HANDOFF_CRASH_AT`);
//! - `tokio_fd` (feature `tokio`): a descriptor registered with tokio's
//!   reactor, for handoff-tokio.
//!
//! Unsafe code of the project's libraries and binaries lives only here (the
//! benchmarks' counting allocator and echo server aside), one block per
//! system call, each with its `// SAFETY:` comment. Linux only.

pub mod control;
pub mod crash;
pub mod env;
pub mod fdpass;
pub mod journal;
pub mod listeners;
pub mod lock;
pub mod process;
pub mod signals;
pub mod spawn;
mod sys;
#[cfg(test)]
mod testutil;
#[cfg(feature = "tokio")]
pub mod tokio_fd;
