//! A supervisor's handoff as a future: a [`SupervisorDriver`] carries it
//! out; this waits on the reactor for what it watches (the two control
//! sockets, the successor's pidfd) and for its next deadline.

use std::ops::Deref;
use std::time::Instant;

use super::{Driven, Reactor, Watching, turn};
use crate::link::{Io, Source};
use crate::supervisor::{HandoffOutcome, SpawnSpec, Supervisor, SupervisorDriver, SupervisorError};

impl<S: Deref<Target = Supervisor>, I: Io> Driven<I> for SupervisorDriver<S> {
    fn poll_timeout(&self) -> Option<Instant> {
        SupervisorDriver::poll_timeout(self)
    }
    fn handle_readable(&mut self, io: &mut I, source: Source) {
        SupervisorDriver::handle_readable(self, io, source)
    }
    fn handle_writable(&mut self, io: &mut I, source: Source) {
        SupervisorDriver::handle_writable(self, io, source)
    }
    fn handle_timeout(&mut self, io: &mut I) {
        SupervisorDriver::handle_timeout(self, io)
    }
}

/// Runs one handoff of `supervisor`'s daemon to its end on `reactor`,
/// without blocking the executor (except that, with a journal, the start
/// waits for the previous handoff's last record to be on disk). `Ok` holds
/// the outcome whether it committed or rolled back; `Err` means it could
/// not start (another handoff of this supervisor is in flight).
///
/// Dropping the future before it is done (a timeout around it, a
/// cancelled task) stops the successor, reaps it and clears the journal
/// record; the incumbent, whose session closes with it, resumes by itself.
/// Handoffs of different supervisors (different services) run
/// concurrently on one executor, each as its own future.
pub async fn perform_handoff<R: Reactor>(
    reactor: R,
    supervisor: &Supervisor,
    spec: SpawnSpec,
) -> Result<HandoffOutcome, SupervisorError> {
    // Locals drop in reverse order: the driver (which stops an abandoned
    // successor) before what it watched, both before the slot is let go,
    // so no second handoff starts while this one is being undone.
    let _slot = supervisor.claim()?;
    let mut io = Watching::new(reactor);
    let mut driver = SupervisorDriver::new(supervisor, spec);
    driver.start(&mut io);
    loop {
        if let Some(outcome) = driver.take_outcome() {
            return Ok(outcome);
        }
        turn(&mut driver, &mut io).await;
    }
}
