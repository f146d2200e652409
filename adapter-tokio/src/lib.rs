//! # handoff-tokio
//!
//! The tokio adapter of handoff: [`handoff_driver`]'s roles as futures
//! ([`handoff_driver::reactor`]) with tokio's I/O driver and timer as their
//! [`TokioReactor`], and inherited listeners as tokio's sockets
//! ([`TokioListeners`]), already non-blocking and registered. The driver
//! carries out every protocol step, the same for every runtime; this crate
//! is the reactor and the listener types, nothing more. What a daemon
//! needs is re-exported, so a tokio daemon needs only this crate.
//!
//! The futures run on the current-thread and the multi-thread runtime,
//! which must have I/O and time enabled (`#[tokio::main]` and
//! `Builder::enable_all` do). None blocks a worker thread: the hooks are
//! async fns polled in the same task as the control session (put blocking
//! work in `spawn_blocking`). [`perform_handoff`]'s future is `Send`, so a
//! supervisor spawns one task per service and runs their handoffs
//! concurrently; [`serve`]'s is `Send` when the hooks' futures are.
//!
//! A complete daemon: role detection, the hooks, serving.
//!
//! ```no_run
//! use handoff_tokio::{
//!     AsyncDrainable, DataDirLock, DrainReport, Endpoint, HookError, ReadyReport, Role,
//!     SealReport, TokioListeners, detect_role, handshake, serve,
//! };
//! use std::path::Path;
//! use std::sync::Arc;
//! use tokio::sync::Notify;
//!
//! /// The daemon's state, shared with its accept loop.
//! struct Db {
//!     stop_accepting: Notify,
//! }
//!
//! impl AsyncDrainable for Db {
//!     async fn drain(&self, _deadline: std::time::Instant) -> Result<DrainReport, HookError> {
//!         self.stop_accepting.notify_waiters(); // the listener stays open
//!         // … finish the requests in flight, make them durable …
//!         Ok(DrainReport::default())
//!     }
//!     async fn seal(&self) -> Result<SealReport, HookError> {
//!         // … flush, close the writer state …
//!         Ok(SealReport::default())
//!     }
//!     async fn resume_after_abort(&self) -> Result<(), HookError> {
//!         // … reopen the writer state, accept again …
//!         Ok(())
//!     }
//! }
//!
//! async fn accept_loop(listener: tokio::net::TcpListener, db: Arc<Db>) {
//!     loop {
//!         tokio::select! {
//!             Ok((_conn, _peer)) = listener.accept() => { /* spawn a task per client */ }
//!             _ = db.stop_accepting.notified() => return,
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (data, ctl) = (Path::new("/var/lib/app"), Path::new("/run/app/ctl.sock"));
//!     let db = Arc::new(Db { stop_accepting: Notify::new() });
//!     let endpoint = match detect_role()? {
//!         Role::ColdStart { mut listeners } => {
//!             let lock = DataDirLock::acquire(data)?;
//!             let tcp = listeners.take_tokio_tcp("app")?;
//!             // open the state …
//!             tokio::spawn(accept_loop(tcp, db.clone()));
//!             Endpoint::bind_cold_start(ctl, lock)?
//!         }
//!         Role::Successor(launch) => {
//!             // warm caches here: the old binary still serves meanwhile
//!             let mut begun = handshake(launch, b"v2").await?.wait_for_begin(data).await?;
//!             let tcp = begun.listeners().take_tokio_tcp("app")?;
//!             begun.start_up(async { /* open the sealed state */ }).await?;
//!             tokio::spawn(accept_loop(tcp, db.clone()));
//!             let ready = ReadyReport { healthz_ok: true, ..ReadyReport::default() };
//!             begun.announce_and_bind(ready, ctl).await?
//!         }
//!     };
//!     serve(endpoint, &*db).await?; // returns once a successor has taken over
//!     Ok(())
//! }
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

mod listeners;
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
pub use listeners::TokioListeners;
pub use reactor::TokioReactor;

/// `Hello` answered; waiting for `Begin` (see [`roles::HandshookSuccessor`]).
pub type HandshookSuccessor = roles::HandshookSuccessor<TokioReactor>;

/// `Begin` received and the lock held (see [`roles::BegunSuccessor`]).
pub type BegunSuccessor = roles::BegunSuccessor<TokioReactor>;

/// Runs one handoff of `supervisor`'s daemon to its end (see
/// [`roles::perform_handoff`]): `Ok` holds the outcome whether it committed
/// or rolled back. Dropping the future (a cancelled task, a timeout around
/// it) stops the successor and reaps it.
pub async fn perform_handoff(
    supervisor: &Supervisor,
    spec: SpawnSpec,
) -> Result<HandoffOutcome, SupervisorError> {
    roles::perform_handoff(TokioReactor::default(), supervisor, spec).await
}

/// Answers supervisors until a handoff commits (see [`roles::serve`]).
/// Take the endpoint from [`Endpoint::bind_cold_start`], from
/// [`BegunSuccessor::announce_and_bind`], or a `handoff_std::Incumbent`.
pub async fn serve(
    incumbent: impl Into<Endpoint>,
    daemon: &impl AsyncDrainable,
) -> Result<ServeEnd, ServeError> {
    roles::serve(TokioReactor::default(), incumbent.into(), daemon).await
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
    roles::serve_with(
        TokioReactor::default(),
        ep,
        daemon,
        config,
        policy,
        build_id,
    )
    .await
}

/// Says `Hello` for `successor` (a [`Launch`] from [`detect_role`], or a
/// `handoff_std::Successor`) with `build_id`, and waits for the
/// supervisor's answer (see [`roles::handshake`]).
pub async fn handshake(
    successor: impl Into<Launch>,
    build_id: &[u8],
) -> Result<HandshookSuccessor, SuccessorError> {
    roles::handshake(TokioReactor::default(), successor.into(), build_id).await
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
    fn every_future_can_be_spawned_on_the_multi_thread_runtime() {
        // Only the types are looked at (nothing is polled): `tokio::spawn`
        // needs `Send` futures.
        let sup = Supervisor::new("/tmp/handoff-tokio-never-bound.sock").unwrap();
        assert_send(&perform_handoff(&sup, SpawnSpec::new("/bin/true")));
        let _ = |ep: Endpoint| assert_send(&serve(ep, &Db));
        let _ = |launch: Launch| assert_send(&handshake(launch, b"v2"));
        let _ = |h: HandshookSuccessor| assert_send(&h.wait_for_begin(Path::new("/")));
        let _ = |b: BegunSuccessor| {
            assert_send(&b.announce_and_bind(ReadyReport::default(), Path::new("/")));
        };
    }
}
