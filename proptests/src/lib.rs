//! # handoff-proptests
//!
//! Evidence for docs/PROTOCOL.md section 7 (the invariants), beyond what examples can give: property
//! tests of the codec and of each machine, and a deterministic simulation
//! of whole handoffs with crashes injected at every step.
//!
//! - [`owned`]: the fourteen messages with owned fields, so that generated
//!   values can be lent to the codec as borrowed [`handoff_core::Message`]s.
//! - [`model`]: a small reference model of each machine's transition table,
//!   written from docs/PROTOCOL.md sections 3 and 4, that the model-based tests run
//!   beside the real machines.
//! - [`sim`]: the simulated world (processes that crash and restart, byte
//!   pipes with delay and arbitrary chunking, a flock table, hooks that take
//!   time, a virtual clock) and the invariant checks.
//! - [`rng`]: the seeded PRNG every simulated schedule is drawn from.
//!
//! The tests live in `tests/`: `messages.rs` (round trips, chunk-split
//! invariance, wire equality with `beyond-handoff`), `models.rs` and
//! `simulation.rs`. `SIM_CASES=<n>` runs more simulated cases,
//! `SIM_SEED=<n>` replays one case with its trace.

pub mod model;
pub mod owned;
pub mod rng;
pub mod sim;
