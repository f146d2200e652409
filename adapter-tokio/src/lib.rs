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
//!     AsyncDrainable, DataDirLock, DrainReport, Endpoint, Handover, HookError, ReadyReport, Role,
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
//!     async fn drain(&self, _deadline: std::time::Instant, _handover: Handover) -> Result<DrainReport, HookError> {
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

handoff_driver::async_adapter!(TokioReactor);

pub use listeners::{PassedTokioTcp, TokioListeners};
pub use reactor::TokioReactor;
