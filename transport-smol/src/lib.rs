//! # handoff-smol
//!
//! [`handoff_core`]'s machines as async fns on `async-io`, with the
//! operating-system layer of [`handoff_std::os`]: they run under smol and
//! under any executor that polls async-io futures, and block nothing.
//!
//! - [`perform_handoff`]: a supervisor's handoff, given a
//!   [`handoff_std::Supervisor`] for the listeners, journal and timings.
//! - [`serve`]: an incumbent's control sessions over an [`AsyncDrainable`],
//!   whose hooks are async fns that run concurrently with the session.
//! - [`handshake`] → [`Handshook::wait_for_begin`] → [`Begun::start_up`] →
//!   [`Begun::announce_and_bind`]: the successor.
//!
//! ```no_run
//! use handoff_smol::{AsyncDrainable, serve};
//! use handoff_std::{DataDirLock, DrainReport, HookError, Incumbent, SealOutput};
//! use std::path::Path;
//!
//! struct Db;
//! impl AsyncDrainable for Db {
//!     async fn drain(&self, _deadline: std::time::Instant) -> Result<DrainReport, HookError> {
//!         Ok(DrainReport::default())
//!     }
//!     async fn seal(&self) -> Result<SealOutput, HookError> {
//!         Ok(SealOutput::default())
//!     }
//!     async fn resume_after_abort(&self) -> Result<(), HookError> {
//!         Ok(())
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! async_io::block_on(async {
//!     let lock = DataDirLock::acquire(Path::new("/var/lib/app"))?;
//!     let incumbent = Incumbent::bind_cold_start(Path::new("/run/app/ctl.sock"), lock)?;
//!     serve(incumbent, &Db).await?;
//!     Ok(())
//! })
//! # }
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

mod conn;
mod incumbent;
mod successor;
mod supervisor;

pub use incumbent::{AsyncDrainable, serve, serve_with};
pub use successor::{Begun, Handshook, handshake};
pub use supervisor::perform_handoff;
