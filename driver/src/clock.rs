//! Mapping between `std::time::Instant` and the core's [`Instant`].
//!
//! The core counts nanoseconds from an origin the adapter picks; this
//! process picks the first time anyone asks, once, so instants from every
//! machine and thread of the process compare correctly.

use std::sync::OnceLock;
use std::time::Duration;

use handoff_core::Instant;

fn origin() -> std::time::Instant {
    static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// Now, on the core's clock.
pub fn now() -> Instant {
    from_std(std::time::Instant::now())
}

/// A `std` instant on the core's clock (instants before the origin map to
/// the origin).
pub fn from_std(t: std::time::Instant) -> Instant {
    let nanos = t.saturating_duration_since(origin()).as_nanos();
    Instant::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A core instant as a `std` instant.
pub fn to_std(t: Instant) -> std::time::Instant {
    origin() + Duration::from_nanos(t.as_nanos())
}

/// How long from now until `t` (zero if it passed).
pub fn until(t: Instant) -> Duration {
    t.saturating_duration_since(now())
}
