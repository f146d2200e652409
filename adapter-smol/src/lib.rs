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
//!     AsyncDrainable, DataDirLock, DrainReport, Endpoint, Handover, HookError, ReadyReport, Role,
//!     SealReport, detect_role, handshake, serve,
//! };
//! use std::path::Path;
//!
//! struct Db;
//! impl AsyncDrainable for Db {
//!     async fn drain(&self, _deadline: std::time::Instant, _handover: Handover) -> Result<DrainReport, HookError> {
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

handoff_driver::async_adapter!(SmolReactor);

pub use reactor::SmolReactor;

/// A connection the incumbent passed (docs/PROTOCOL.md section 11), as
/// async-io's socket type.
pub trait PassedAsyncTcp {
    /// The connection as an `Async<TcpStream>` (non-blocking, registered
    /// with async-io's reactor), and the state the incumbent passed with
    /// it; an error if it is not a connected TCP socket (the descriptor is
    /// then closed, which its client does not see while the incumbent
    /// holds its own).
    fn into_async_tcp(self) -> std::io::Result<(async_io::Async<std::net::TcpStream>, Vec<u8>)>;
}

impl PassedAsyncTcp for handoff_driver::PassedConnection {
    fn into_async_tcp(self) -> std::io::Result<(async_io::Async<std::net::TcpStream>, Vec<u8>)> {
        let (stream, state) = self.into_tcp()?;
        Ok((async_io::Async::new(stream)?, state))
    }
}
