//! # handoff-driver
//!
//! The one place where each role's outputs are carried out, for every
//! runtime. [`handoff_core`]'s machines decide what happens; a driver here
//! does it through [`handoff_os`] (connects that never wait, bounded
//! writes, reads, the data-dir lock, the control path, spawning, signals,
//! the journal) and asks its adapter only to watch descriptors
//! ([`Io`]), run the incumbent's hooks ([`IncumbentIo`]) and keep time.
//! The blocking (`handoff-std`), mio (`handoff-mio`), smol (`handoff-smol`)
//! and tokio (`handoff-tokio`) adapters are that glue and nothing more, so a rule
//! decided here holds under each of them:
//!
//! | rule | where |
//! |---|---|
//! | the connect to the incumbent never waits; retried within the hello timeout | [`SupervisorDriver`] with the core |
//! | a peer that stops reading is hung up on after [`link::WRITE_TIMEOUT`] or [`link::MAX_UNSENT`] | [`link`] |
//! | an `Abort` the supervisor queued before the daemon's `Ready` wins | [`SuccessorDriver::ready`] |
//! | a spawned successor whose socket cannot be watched is killed and reaped | [`SupervisorDriver`] |
//! | the deadlines are looked at after every wake-up | every driver's `handle_*` |
//! | peer credentials, one session at a time, the control path taken back after a failed seal | [`IncumbentDriver`] |
//! | connections passed in batches before `Drained`; all of them received before `Begun`; `ConnectionsTaken` before `Ready`; a broken pass undoes the handoff | [`passing`], [`IncumbentDriver`], [`SuccessorDriver`] |
//!
//! For async runtimes, [`reactor`] holds the three roles as futures over a
//! [`reactor::Reactor`] (register a descriptor, poll it for an event, poll
//! a timer): the smol and tokio adapters are a reactor each, and
//! [`async_adapter!`] makes the roles' entry points with it filled in.
//!
//! The calling pattern is the same for the three drivers: create, `start`,
//! then pass on readiness (`handle_readable`, `handle_writable`) and time
//! (`handle_timeout` once `poll_timeout` has passed), and look at what the
//! driver reports. Nothing in a driver blocks, except that a supervisor
//! with a journal waits, when a handoff starts, for the previous
//! handoff's last record to be on disk, and that passing connections
//! (docs/PROTOCOL.md section 11) waits: the incumbent's driver writes the
//! last batch and `PassDone` when the drain hook is reported done (each
//! write waits for room at most [`passing::PASS_WRITE_TIMEOUT`]; the
//! successor reads on a thread of its own, so only a stopped one makes it
//! wait), and the successor's driver waits after `Begin` for the last
//! connection to arrive (at most [`passing::PASS_ARRIVAL_TIMEOUT`]; they
//! were all written before `Drained`).
//!
//! docs/PROTOCOL.md is the protocol these follow; ARCHITECTURE.md maps the
//! crates to it.

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

pub mod adopt;
pub mod clock;

// For `async_adapter!`, whose expansion in an adapter names these crates
// through this one.
#[doc(hidden)]
pub use handoff_core as __core;
#[doc(hidden)]
pub use handoff_os as __os;
mod hooks;
pub mod incumbent;
pub mod link;
pub mod passing;
pub mod probe;
pub mod reactor;
pub mod successor;
pub mod supervisor;

pub use adopt::{AdoptError, Adopted, adopt, adopt_settled};
pub use hooks::{Hook, HookDone, HookError, SealReport, StateSnapshot};
pub use incumbent::{Endpoint, IncumbentDriver, IncumbentIo, ServeEnd, ServeError, SessionReport};
pub use link::{Inbox, Io, Source};
pub use passing::{Handover, PassError, PassedConnection};
pub use probe::{HealthProbe, ProbeCheck};
pub use successor::{
    AnnounceError, Launch, ReadyReport, Role, SuccessorDriver, SuccessorError, SuccessorReport,
    detect_role,
};
pub use supervisor::{
    HandoffOutcome, HandoffSlot, SharedHandoffSlot, SpawnSpec, Supervisor, SupervisorDriver,
    SupervisorError, handoff_config, spawn_for_handoff,
};
