//! `perform_handoff` as an async fn: a [`SupervisorDriver`] carries the
//! handoff out, and this only waits, on async-io, for what it watches (the
//! two control sockets and a pidfd for the successor's exit) and for its
//! next deadline.

use handoff_driver::{HandoffOutcome, SpawnSpec, Supervisor, SupervisorDriver, SupervisorError};

use crate::watched::{NoExtra, Watched};

/// Runs one handoff of `supervisor`'s daemon to its end, as the blocking
/// adapter's `perform_handoff` does, without blocking the executor (except
/// that, with a journal, the start waits for the previous handoff's last
/// record to be on disk). `Ok` holds the outcome whether it committed or
/// rolled back; `Err` means it could not start (another handoff is in
/// flight).
///
/// Dropping the future before it is done (a timeout around it, a cancelled
/// task) stops the successor, reaps it and clears the journal record; the
/// incumbent, whose session closes with it, resumes by itself.
pub async fn perform_handoff(
    supervisor: &Supervisor,
    spec: SpawnSpec,
) -> Result<HandoffOutcome, SupervisorError> {
    // Locals drop in reverse order: the driver (which stops an abandoned
    // successor) before what it watched, both before the slot is let go,
    // so no second handoff starts while this one is being undone.
    let _slot = supervisor.claim()?;
    let mut io = Watched::default();
    let mut driver = SupervisorDriver::new(supervisor, spec);
    driver.start(&mut io);
    loop {
        if let Some(outcome) = driver.take_outcome() {
            return Ok(outcome);
        }
        let woken = io.wait::<(), NoExtra>(driver.poll_timeout(), None).await;
        for r in woken.ready {
            if !io.is_watching(r.source) {
                continue;
            }
            if r.writable {
                driver.handle_writable(&mut io, r.source);
            }
            if r.readable {
                driver.handle_readable(&mut io, r.source);
            }
        }
        driver.handle_timeout(&mut io);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_handoff_future_can_move_between_threads() {
        // Not polled: only its type is looked at, for executors that move
        // tasks between threads.
        let sup = Supervisor::new("/tmp/handoff-smol-never-bound.sock").unwrap();
        let f = perform_handoff(&sup, SpawnSpec::new("/bin/true"));
        assert_send(&f);
    }
}
