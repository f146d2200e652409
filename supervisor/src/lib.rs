//! # handoff-supervisor
//!
//! The supervisor operators run in front of a daemon built on
//! [`handoff_std`]: it binds the daemon's listeners once (or adopts them
//! from systemd's socket activation), cold-starts the daemon, restarts it
//! if it dies, and hands it off to a new binary when asked, through its
//! trigger socket, `SIGHUP`, or [`Service::handoff`].
//!
//! The binary `handoff-supervisor` (`run`, `trigger`, `status`) is a thin
//! shell around this library; a program that wants the same behaviour
//! embedded starts a [`Service`] itself:
//!
//! ```no_run
//! use handoff_supervisor::{Config, Service};
//! use std::path::Path;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::load(Path::new("/etc/kv/handoff.toml"))?;
//! let service = Service::start(config)?; // the daemon serves from here on
//! let report = service.handoff(None)?; // to the configured binary
//! println!("{}", report.reply_line());
//! service.shutdown(); // stops the daemon, removes the trigger socket
//! # Ok(())
//! # }
//! ```
//!
//! What runs where:
//! - the caller's thread: [`Service::start`], [`Service::handoff`] (which
//!   blocks for the whole handoff, bounded by `deadline_secs`),
//!   [`Service::shutdown`];
//! - the trigger thread, which checks each peer's credentials as it accepts
//!   it, and one thread per admitted connection (at most 16, of which uids
//!   other than root and ours hold at most 8): the line protocol of
//!   [`client`];
//! - the monitor thread: waits on every daemon's exit (pidfds), reaps the
//!   incumbents handed off from, and restarts a dead incumbent, never
//!   during a handoff, pausing 100 ms doubling to 10 s while it keeps
//!   dying within a second (starting over after a committed handoff).
//!
//! Linux only: pidfds, `SO_PEERCRED`, abstract sockets for `NOTIFY_SOCKET`.

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

mod adopt;
pub mod cli;
pub mod client;
pub mod config;
mod daemon;
mod error;
mod handoff;
mod json;
mod listeners;
#[cfg(feature = "metrics")]
pub mod metrics;
mod monitor;
pub mod notify;
mod service;
mod state;
pub mod text;
mod trigger;
mod trust;

pub use client::{HandoffReply, Reply};
pub use config::{Config, ConfigError, ListenerConfig, ListenerKind};
pub use error::ServiceError;
pub use handoff::HandoffReport;
pub use service::{
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_STARTUP_TIMEOUT, DEFAULT_STOP_GRACE, Service, ServiceBuilder,
};
pub use state::{STATUS_PROBE, Status};
