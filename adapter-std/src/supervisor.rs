//! The supervisor's blocking adapter: [`PerformHandoff::perform_handoff`]
//! runs one handoff to its end on the calling thread, with `poll(2)` over
//! what the [`SupervisorDriver`] watches (the two control sockets and a
//! pidfd for the successor's exit), so it needs no thread, no signal
//! handler and no sleep.

use handoff_driver::{HandoffOutcome, SpawnSpec, Supervisor, SupervisorDriver, SupervisorError};

use crate::conn::Watched;

/// Runs handoffs on the calling thread.
pub trait PerformHandoff {
    /// Runs one handoff to its end. `Ok` holds the outcome whether it
    /// committed or rolled back; `Err` means it could not start (another is
    /// in flight) or the wait itself failed. With a journal, the record's
    /// final removal may still be reaching the disk when this returns; see
    /// [`Supervisor::flush_journal`].
    fn perform_handoff(&self, spec: SpawnSpec) -> Result<HandoffOutcome, SupervisorError>;
}

impl PerformHandoff for Supervisor {
    fn perform_handoff(&self, spec: SpawnSpec) -> Result<HandoffOutcome, SupervisorError> {
        let _slot = self.claim()?;
        let mut io = Watched::default();
        let mut driver = SupervisorDriver::new(self, spec);
        driver.start(&mut io);
        loop {
            if let Some(outcome) = driver.take_outcome() {
                return Ok(outcome);
            }
            let (ready, _) = io
                .wait(&[], driver.poll_timeout())
                .map_err(SupervisorError::Io)?;
            for (source, r) in ready {
                if r.writable {
                    driver.handle_writable(&mut io, source);
                }
                if r.readable {
                    driver.handle_readable(&mut io, source);
                }
            }
            driver.handle_timeout(&mut io);
        }
    }
}
