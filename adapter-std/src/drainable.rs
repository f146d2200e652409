//! What a daemon implements to be handed off: the hooks the incumbent runs.

use std::sync::mpsc;

use handoff_core::DrainReport;

use handoff_driver::Handover;
pub use handoff_driver::{HookError, SealReport, StateSnapshot};

/// The incumbent's hooks. They run on a thread of the library's own while
/// the control loop keeps answering the supervisor, sending heartbeats and
/// watching deadlines, so a hook may take as long as its budget allows.
/// Only one hook runs at a time.
pub trait Drainable: Sync {
    /// Stop accepting new connections, finish the requests already read,
    /// make what was acknowledged durable (fsync), by `deadline` if possible.
    /// Keep the listeners open: they are shared with the supervisor and the
    /// successor.
    ///
    /// Open connections may be passed to the successor meanwhile, each
    /// with the bytes read from it and not yet answered, through
    /// `handover` (from any thread; docs/PROTOCOL.md section 11). A passed
    /// connection is not read or written again, but stays open: closed
    /// (never shut down) when `serve` returns `Committed`, served again
    /// after [`Drainable::resume_after_abort`]. When the handoff passes
    /// nothing, [`Handover::pass`] says so, and the drain is as before.
    fn drain(
        &self,
        deadline: std::time::Instant,
        handover: Handover,
    ) -> Result<DrainReport, HookError>;

    /// Flush and close the writer state so that another process can open
    /// it. On success the library releases the data-dir lock and tells the
    /// supervisor; on error the lock is kept and [`Drainable::resume_after_abort`]
    /// follows. `progress` may be used to report progress of a long seal.
    fn seal(&self, progress: &SealProgress) -> Result<SealReport, HookError>;

    /// Undo drain (and seal): reopen the writer state and accept again. Runs
    /// with the lock held. Serve the connections passed in the drain again:
    /// from the state that was passed, or, if
    /// [`Handover::taken_by_successor`], from what they deliver next.
    fn resume_after_abort(&self) -> Result<(), HookError>;

    /// The state as it is now.
    fn snapshot_state(&self) -> StateSnapshot {
        StateSnapshot::default()
    }
}

/// Reports seal progress to the supervisor (each report also counts as a
/// heartbeat).
pub struct SealProgress {
    tx: mpsc::Sender<(u32, u32, u64)>,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl SealProgress {
    /// A reporter that sends each report on `tx` and then calls `wake`, for
    /// adapters that run the seal hook themselves.
    pub fn new(tx: mpsc::Sender<(u32, u32, u64)>, wake: Box<dyn Fn() + Send + Sync>) -> Self {
        SealProgress { tx, wake }
    }

    /// `shards_sealed` of `shards_total` are sealed, up to `last_revision`.
    pub fn report(&self, shards_sealed: u32, shards_total: u32, last_revision: u64) {
        if self
            .tx
            .send((shards_sealed, shards_total, last_revision))
            .is_ok()
        {
            (self.wake)();
        }
    }
}
