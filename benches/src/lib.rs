//! # handoff-benches
//!
//! The benchmarks of this workspace, each run side by side with the
//! reference implementation, `beyond-handoff` 0.1.4 (lib `handoff`), in one
//! process or one run so that both see the same machine in the same state:
//!
//! - `cargo bench --bench codec`: encoding and decoding the ten frames of
//!   one handoff, ours against the reference;
//! - `cargo bench --bench handoff`: 50 + 50 interleaved handoffs of two tiny
//!   TCP daemons (one on `handoff-std`, one on the reference), with a client
//!   connecting throughout to measure the accept gap, and the floor of
//!   spawning and starting a process;
//! - `cargo bench --bench alloc`: heap allocations of the core machines over
//!   a whole handoff and per decoded frame, which must be zero;
//! - `cargo bench --bench rollback`: the time from a successor's death on
//!   probation to the old process's first answer (the reference has no
//!   probation).
//!
//! This library is their shared plumbing: the frames ([`frames`]), the
//! answer server both daemons run ([`echo`]), a counting allocator
//! ([`counting`]), the daemons' command line ([`daemon`]), statistics
//! ([`stats`]) and a description of the machine ([`machine`]).

pub mod counting;
pub mod daemon;
pub mod echo;
pub mod frames;
pub mod machine;
pub mod stats;
