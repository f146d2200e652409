//! The reference's metrics, through the `metrics` facade: the embedding
//! program installs whatever exporter it likes, and without one every call
//! here is a no-op.

use handoff_std::{AbortReason, HandoffOutcome, IncumbentFate};

/// Handoffs run to an outcome.
pub const HANDOFFS_TOTAL: &str = "handoff_handoffs_total";
/// Handoffs that did not commit.
pub const FAILURES_TOTAL: &str = "handoff_failures_total";
/// Aborted handoffs after which the incumbent resumed serving.
pub const ROLLED_BACK_TOTAL: &str = "handoff_rolled_back_total";
/// Handoffs aborted because the incumbent could not seal.
pub const SEAL_FAILURES_TOTAL: &str = "handoff_seal_failures_total";
/// Whole handoffs, start to outcome.
pub const DURATION_SECONDS: &str = "handoff_duration_seconds";
/// `PrepareHandoff` until `Drained`.
pub const DRAIN_SECONDS: &str = "handoff_drain_seconds";
/// `SealRequest` until `SealComplete`.
pub const SEAL_SECONDS: &str = "handoff_seal_seconds";
/// `Begin` until `Ready`.
pub const BEGIN_TO_READY_SECONDS: &str = "handoff_begin_to_ready_seconds";

/// Records one handoff's outcome.
pub(crate) fn record(outcome: &HandoffOutcome) {
    metrics::counter!(HANDOFFS_TOTAL).increment(1);
    if let Err(reason) = &outcome.result {
        metrics::counter!(FAILURES_TOTAL).increment(1);
        if matches!(
            outcome.incumbent_fate,
            IncumbentFate::ToldToResume | IncumbentFate::ResumedAfterSealFailure
        ) {
            metrics::counter!(ROLLED_BACK_TOTAL).increment(1);
        }
        if matches!(reason, AbortReason::SealFailed) {
            metrics::counter!(SEAL_FAILURES_TOTAL).increment(1);
        }
    }
    let t = &outcome.timings;
    metrics::histogram!(DURATION_SECONDS).record(t.total.as_secs_f64());
    for (name, d) in [
        (DRAIN_SECONDS, t.drain),
        (SEAL_SECONDS, t.seal),
        (BEGIN_TO_READY_SECONDS, t.begin_to_ready),
    ] {
        if let Some(d) = d {
            metrics::histogram!(name).record(d.as_secs_f64());
        }
    }
}
