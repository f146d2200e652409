//! # handoff-conformance
//!
//! Nothing to link against: this package holds the suite in `tests/`,
//! which runs every process-level scenario with each adapter (std, mio,
//! smol, tokio) in each role and across them. It depends on all four
//! adapters, so no adapter has to depend on the others to be tested
//! against them.
//!
//! - `tests/conformance.rs`: the scenarios, per combination of runtimes;
//! - `tests/incumbent_adapters.rs`: what each incumbent adapter must do
//!   between sessions (reclaim, floods);
//! - `tests/rules.rs`: the driver's rules as a hostile peer provokes them,
//!   in every role;
//! - `tests/concurrent.rs`: one async supervisor running several
//!   services' handoffs at once;
//! - `tests/crash_points.rs`: every crash point fires where its name
//!   says, in every role, on every adapter.
//!
//! The daemons are the test binaries re-executed (`tests/support`).

#![forbid(unsafe_code)]
