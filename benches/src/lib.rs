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
//!   connecting throughout to measure the accept gap, the floor of
//!   spawning and starting a process and the accept gap's floor; then ours
//!   alone passing its open connections, with none and with 10,000 idle;
//! - `cargo bench --bench alloc`: heap allocations of the core machines over
//!   a whole handoff and per decoded frame, which must be zero;
//! - `cargo bench --bench rollback`: the time from a successor's death on
//!   probation to the old process's first answer (the reference has no
//!   probation);
//! - `cargo bench --bench services`: 1,000 idle services under one mio
//!   supervisor loop, their memory and one handoff among them.
//!
//! This library is their shared plumbing: the frames ([`frames`]), the
//! answer server both daemons run ([`echo`]), the server that keeps its
//! connections and passes them ([`held`]), the processes that measure the
//! accept gap's floor ([`relay`]), a counting allocator
//! ([`counting`]), the daemons' command line ([`daemon`]), statistics
//! ([`stats`]) and a description of the machine ([`machine`]).

pub mod counting;
pub mod daemon;
pub mod echo;
pub mod frames;
pub mod held;
pub mod machine;
pub mod relay;
pub mod stats;
