//! The operating-system layer: every mechanism a handoff needs from Unix,
//! independent of how the protocol is driven, so the blocking, mio and smol
//! adapters share one implementation of each.
//!
//! - [`spawn`]: start the successor with the listeners at FDs 3.. and its end
//!   of the control socketpair after them, systemd-style;
//! - [`env`](mod@env): read (once) and remove the variables that tell a process which
//!   role it was started in;
//! - [`listeners`]: adopt inherited listeners by name and type;
//! - [`lock`]: the data-dir lock (`flock` plus a diagnostic pidfile);
//! - [`control`]: the control socket (private bind, peer credentials,
//!   whole-frame writes without `SIGPIPE`);
//! - [`journal`]: the supervisor's journal, written atomically;
//! - [`process`]: signals and waiting for a child's exit without a thread.
//!
//! Unsafe code lives only here, one block per system call, each with its
//! `// SAFETY:` comment.

pub mod control;
pub mod env;
pub mod journal;
pub mod listeners;
pub mod lock;
pub mod process;
pub mod spawn;
mod sys;
#[cfg(test)]
mod testutil;
