//! # handoff-demo
//!
//! The live-upgrade demo of the handoff project: a real key-value daemon,
//! [`kvd`], that is handed off between binaries under load without losing
//! an acknowledged write, and the load generator, [`loadgen`], that proves
//! it.
//!
//! - [`store`] keeps the state in a data dir: a snapshot and a write-ahead
//!   log ([`wal`]) with group commit; [`hash`] is the checksum and
//!   fingerprint they use.
//! - [`kvd`] is the daemon: a line protocol over TCP, and the
//!   [`handoff_std::Drainable`] hooks that drain, seal and resume it.
//! - [`loadgen`] runs client threads against it and reads every
//!   acknowledged write back.

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![cfg_attr(not(test), forbid(unsafe_code))]

pub mod hash;
pub mod kvd;
pub mod loadgen;
pub mod store;
pub mod wal;
