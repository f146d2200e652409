//! # handoff-smol
//!
//! The async adapter of handoff on `async-io`: [`handoff_driver`]'s roles
//! as futures ([`handoff_driver::reactor`]), with async-io's readiness and
//! timers as their [`SmolReactor`]. They run under smol and under any
//! executor that polls async-io futures, and block nothing. The driver
//! carries out every protocol step (the same for every runtime); this
//! crate is the reactor and nothing more. What a daemon needs is
//! re-exported, so a smol daemon needs only this crate.
//!
//! - [`perform_handoff`]: a supervisor's handoff, given a [`Supervisor`]
//!   for the listeners, journal and timings.
//! - [`serve`]: an incumbent's control sessions over an [`AsyncDrainable`],
//!   whose hooks are async fns that run concurrently with the session.
//! - [`detect_role`] first thing in `main`; then, for a successor,
//!   [`handshake`] → [`HandshookSuccessor::wait_for_begin`] →
//!   [`BegunSuccessor::start_up`] → [`BegunSuccessor::announce_and_bind`],
//!   and [`serve`] the [`Endpoint`] it returns.
//!
//! ```no_run
//! use handoff_smol::os::listeners::Mode;
//! use handoff_smol::{
//!     AsyncDrainable, DataDirLock, DrainReport, Endpoint, HookError, ReadyReport, Role,
//!     SealReport, detect_role, handshake, serve,
//! };
//! use std::path::Path;
//!
//! struct Db;
//! impl AsyncDrainable for Db {
//!     async fn drain(&self, _deadline: std::time::Instant) -> Result<DrainReport, HookError> {
//!         Ok(DrainReport::default())
//!     }
//!     async fn seal(&self) -> Result<SealReport, HookError> {
//!         Ok(SealReport::default())
//!     }
//!     async fn resume_after_abort(&self) -> Result<(), HookError> {
//!         Ok(())
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (data, ctl) = (Path::new("/var/lib/app"), Path::new("/run/app/ctl.sock"));
//!     let role = detect_role()?;
//!     async_io::block_on(async {
//!         let endpoint = match role {
//!             Role::ColdStart { mut listeners } => {
//!                 let lock = DataDirLock::acquire(data)?;
//!                 let _tcp = listeners.take_tcp("app", Mode::NonBlocking)?;
//!                 // open the state, start serving on `_tcp` …
//!                 Endpoint::bind_cold_start(ctl, lock)?
//!             }
//!             Role::Successor(launch) => {
//!                 // warm caches here: the old binary still serves meanwhile
//!                 let mut begun = handshake(launch, b"v2").await?.wait_for_begin(data).await?;
//!                 let _tcp = begun.listeners().take_tcp("app", Mode::NonBlocking)?;
//!                 // open the sealed state, start serving on `_tcp` …
//!                 begun.start_up(async { /* open the state */ }).await?;
//!                 let ready = ReadyReport { healthz_ok: true, ..ReadyReport::default() };
//!                 begun.announce_and_bind(ready, ctl).await?
//!             }
//!         };
//!         serve(endpoint, &Db).await?; // returns once a successor has taken over
//!         Ok(())
//!     })
//! }
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

mod reactor;

use handoff_driver::reactor as roles;

/// The operating-system layer, [`handoff_os`] (listeners, the lock, the
/// control socket, signals).
pub use handoff_os as os;

pub use handoff_core::{
    AbortReason, DrainReport, EndCause, HandoffId, IncumbentConfig, IncumbentEnd, IncumbentFate,
    SuccessorConfig, SuccessorFailure, SuccessorFate, SupervisorConfig,
};
pub use handoff_driver::reactor::AsyncDrainable;
pub use handoff_driver::{
    AnnounceError, Endpoint, HandoffOutcome, HookError, Launch, ReadyReport, Role, SealReport,
    ServeEnd, ServeError, SpawnSpec, StateSnapshot, SuccessorError, Supervisor, SupervisorError,
    detect_role,
};
pub use handoff_os::control::PeerPolicy;
pub use handoff_os::lock::DataDirLock;
pub use reactor::SmolReactor;

/// `Hello` answered; waiting for `Begin` (see [`roles::HandshookSuccessor`]).
pub type HandshookSuccessor = roles::HandshookSuccessor<SmolReactor>;

/// `Begin` received and the lock held (see [`roles::BegunSuccessor`]).
pub type BegunSuccessor = roles::BegunSuccessor<SmolReactor>;

/// Runs one handoff of `supervisor`'s daemon to its end (see
/// [`roles::perform_handoff`]): `Ok` holds the outcome whether it committed
/// or rolled back. Dropping the future stops the successor and reaps it.
pub async fn perform_handoff(
    supervisor: &Supervisor,
    spec: SpawnSpec,
) -> Result<HandoffOutcome, SupervisorError> {
    roles::perform_handoff(SmolReactor::default(), supervisor, spec).await
}

/// Answers supervisors until a handoff commits (see [`roles::serve`]).
/// Take the endpoint from [`Endpoint::bind_cold_start`], from
/// [`BegunSuccessor::announce_and_bind`], or a `handoff_std::Incumbent`.
pub async fn serve(
    incumbent: impl Into<Endpoint>,
    daemon: &impl AsyncDrainable,
) -> Result<ServeEnd, ServeError> {
    roles::serve(SmolReactor::default(), incumbent.into(), daemon).await
}

/// [`serve`] with explicit timings, peer policy and build id, in place of
/// those set on `incumbent`.
pub async fn serve_with(
    incumbent: impl Into<Endpoint>,
    daemon: &impl AsyncDrainable,
    config: IncumbentConfig,
    policy: PeerPolicy,
    build_id: &[u8],
) -> Result<ServeEnd, ServeError> {
    let ep = incumbent.into();
    roles::serve_with(SmolReactor::default(), ep, daemon, config, policy, build_id).await
}

/// Says `Hello` for `successor` (a [`Launch`] from [`detect_role`], or a
/// `handoff_std::Successor`) with `build_id`, and waits for the
/// supervisor's answer (see [`roles::handshake`]).
pub async fn handshake(
    successor: impl Into<Launch>,
    build_id: &[u8],
) -> Result<HandshookSuccessor, SuccessorError> {
    roles::handshake(SmolReactor::default(), successor.into(), build_id).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn assert_send<T: Send>(_: &T) {}

    struct Db;
    impl AsyncDrainable for Db {
        async fn drain(&self, _: std::time::Instant) -> Result<DrainReport, HookError> {
            Ok(DrainReport::default())
        }
        async fn seal(&self) -> Result<SealReport, HookError> {
            Ok(SealReport::default())
        }
        async fn resume_after_abort(&self) -> Result<(), HookError> {
            Ok(())
        }
    }

    #[test]
    fn every_future_can_move_between_threads() {
        // Only the types are looked at (nothing is polled), for executors
        // that move tasks between threads.
        let sup = Supervisor::new("/tmp/handoff-smol-never-bound.sock").unwrap();
        assert_send(&perform_handoff(&sup, SpawnSpec::new("/bin/true")));
        let _ = |ep: Endpoint| assert_send(&serve(ep, &Db));
        let _ = |launch: Launch| assert_send(&handshake(launch, b"v2"));
        let _ = |h: HandshookSuccessor| assert_send(&h.wait_for_begin(Path::new("/")));
        let _ = |b: BegunSuccessor| {
            assert_send(&b.announce_and_bind(ReadyReport::default(), Path::new("/")));
        };
    }
}
