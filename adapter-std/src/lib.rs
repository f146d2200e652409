//! # handoff-std
//!
//! The blocking adapter of handoff: [`handoff_driver`]'s drivers run on
//! the calling thread with `poll(2)`, and the daemon's hooks on a thread of
//! the library's own. The operating-system layer ([`os`]) and the driver's
//! types are re-exported, so a blocking daemon needs only this crate.
//!
//! - A supervisor holds the listeners and runs handoffs with
//!   [`PerformHandoff::perform_handoff`].
//! - A daemon calls [`detect_role`] first thing in `main`. Started cold, it
//!   takes its [`DataDirLock`], binds its control socket with
//!   [`Incumbent::bind_cold_start`], and runs [`Incumbent::serve`] with its
//!   [`Drainable`] hooks. Started as a successor, it goes
//!   [`Successor::handshake`] → [`HandshookSuccessor::wait_for_begin`] →
//!   [`BegunSuccessor::announce_and_bind`], then serves the same way.
//!
//! ```no_run
//! use handoff_std::{detect_role, DataDirLock, Incumbent, ReadyReport, Role};
//! # use handoff_std::{Drainable, HookError, SealReport, SealProgress, DrainReport};
//! # struct Db;
//! # impl Drainable for Db {
//! #     fn drain(&self, _: std::time::Instant, _: handoff_std::Handover) -> Result<DrainReport, HookError> { Ok(DrainReport::default()) }
//! #     fn seal(&self, _: &SealProgress) -> Result<SealReport, HookError> { Ok(SealReport::default()) }
//! #     fn resume_after_abort(&self) -> Result<(), HookError> { Ok(()) }
//! # }
//! # fn open_db(_: &std::path::Path) -> Db { Db }
//! use handoff_std::os::listeners::Mode;
//! use std::path::Path;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (data, ctl) = (Path::new("/var/lib/kv"), Path::new("/run/kv/ctl.sock"));
//!     let incumbent = match detect_role()? {
//!         Role::ColdStart { mut listeners } => {
//!             let lock = DataDirLock::acquire(data)?;
//!             let _tcp = listeners.take_tcp("kv", Mode::Blocking)?;
//!             // open the state, start serving on `_tcp` …
//!             Incumbent::bind_cold_start(ctl, lock)?
//!         }
//!         Role::Successor(successor) => {
//!             // warm caches here: the old binary still serves meanwhile
//!             let mut begun = successor.handshake(b"v2")?.wait_for_begin(data)?;
//!             let _tcp = begun.listeners().take_tcp("kv", Mode::Blocking)?;
//!             // open the sealed state, start serving on `_tcp` …
//!             begun.announce_and_bind(ReadyReport { healthz_ok: true, ..ReadyReport::default() }, ctl)?
//!         }
//!     };
//!     let db = open_db(data);
//!     incumbent.serve(&db)?; // returns once a successor has taken over
//!     Ok(())
//! }
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

/// The operating-system layer, [`handoff_os`], under its old path.
pub use handoff_os as os;
/// Crash points for tests, [`handoff_os::crash`].
pub use handoff_os::crash;

pub use handoff_driver::clock;
pub mod conn;
mod drainable;
mod incumbent;
mod successor;
mod supervisor;

pub use drainable::{Drainable, HookError, SealProgress, SealReport, StateSnapshot};
pub use handoff_core::{
    AbortReason, Capabilities, DrainReport, EndCause, HandoffId, IncumbentConfig, IncumbentEnd,
    IncumbentFate, JournalPhase, JournalRecord, PhaseTimings, Signal, SuccessorConfig,
    SuccessorFailure, SuccessorFate, SupervisorConfig, SupervisorStep,
};
pub use handoff_driver::{
    AdoptError, Adopted, Endpoint, HandoffOutcome, HandoffSlot, Handover, HealthProbe, Launch,
    PassError, PassedConnection, ProbeCheck, ServeEnd, ServeError, SharedHandoffSlot, SpawnSpec,
    Supervisor, SupervisorError, adopt, adopt_settled, handoff_config, spawn_for_handoff,
};
pub use incumbent::Incumbent;
pub use os::lock::DataDirLock;
pub use successor::{
    AnnounceError, BegunSuccessor, HandshookSuccessor, ReadyReport, Role, Successor,
    SuccessorError, detect_role,
};
pub use supervisor::PerformHandoff;

/// The project README's integrator example, compiled as a doctest so that
/// it cannot drift from this crate's API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExample;
