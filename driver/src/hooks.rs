//! What the incumbent's hooks report, the same for every adapter's hook
//! trait (`handoff_std::Drainable`, the async adapters' `AsyncDrainable`, mio's
//! events).

use handoff_core::DrainReport;

/// The error a hook returns: anything that can say what went wrong.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// What the seal hook reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealReport {
    /// The last revision of each shard, as sealed.
    pub last_revision_per_shard: Vec<u64>,
    /// A fingerprint of the sealed data directory (a hash of its contents).
    pub data_dir_fingerprint: [u8; 32],
}

/// A view of the daemon's state, for logs and checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateSnapshot {
    /// Shards in all.
    pub shard_count: u32,
    /// Client connections open.
    pub open_conns: u32,
    /// The last revision of each shard.
    pub last_revision_per_shard: Vec<u64>,
}

/// A hook the incumbent's machine asks for; the adapter runs it (on a
/// thread, as a future, or as an event for the daemon's loop) while the
/// driver goes on answering the supervisor, and reports with
/// [`crate::IncumbentDriver::hook_done`]. One runs at a time.
#[derive(Clone, Debug)]
pub enum Hook {
    /// Stop accepting, finish in-flight requests, make acknowledged work
    /// durable, by `deadline` if possible. Keep the listeners open: they
    /// are shared with the supervisor and the successor. Open connections
    /// may be passed to the successor through `handover` while the drain
    /// runs (docs/PROTOCOL.md section 11); what is not passed is the
    /// daemon's to finish.
    Drain {
        /// When the drain grace ends.
        deadline: std::time::Instant,
        /// How to pass connections in this handoff (unavailable when a
        /// peer did not offer it).
        handover: crate::passing::Handover,
    },
    /// Flush and close the writer state. On success the driver releases
    /// the data-dir lock.
    Seal,
    /// Undo drain (and seal): reopen the writer state and accept again. The
    /// lock is held. After a seal, reopen it from disk, not from memory: a
    /// successor rolled back during probation (docs/PROTOCOL.md section 10)
    /// served and acknowledged writes in between, and they are on disk only.
    /// Connections passed in the drain are the daemon's to serve again
    /// (see [`crate::Handover::taken_by_successor`]).
    Resume,
}

/// How a [`Hook`] ended. A hook that panicked is an `Err` like any other
/// failure: the machine resumes the daemon as after a failed hook.
#[derive(Debug)]
pub enum HookDone {
    /// The drain's report, or why it failed.
    Drained(Result<DrainReport, String>),
    /// What was sealed, or why the seal failed.
    Sealed(Result<SealReport, String>),
    /// The resume, or why it failed.
    Resumed(Result<(), String>),
}
