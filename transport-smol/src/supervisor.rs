//! `perform_handoff` as an async fn: the supervisor machine driven by
//! async-io readiness of the two control sockets and of a pidfd for the
//! successor's exit, and by async-io timers.

use async_io::Async;
use futures_lite::future;
use handoff_core::{Peer, SupervisorHandoff, SupervisorOutput};
use handoff_std::crash;
use handoff_std::os::process::{EXIT_POLL_INTERVAL, ExitWatch};
use handoff_std::{
    HandoffLedger, HandoffOutcome, LedgerStep, SpawnSpec, Supervisor, SupervisorError, clock,
};

use crate::conn::{AsyncConn, Read, readable, timer};

enum Wake {
    Incumbent,
    Successor,
    Exit,
    Timer,
}

/// Runs one handoff of `supervisor`'s daemon to its end, as
/// [`Supervisor::perform_handoff`] does, without blocking the executor.
pub async fn perform_handoff(
    supervisor: &Supervisor,
    spec: SpawnSpec,
) -> Result<HandoffOutcome, SupervisorError> {
    let _slot = supervisor.claim()?;
    let mut run = Run {
        sup: supervisor,
        machine: supervisor.new_handoff(&spec),
        spec,
        incumbent: None,
        successor: None,
        exit: None,
        // Its journal is written off the executor: an fsync never blocks
        // other tasks. A dropped (cancelled) handoff future drops it, which
        // stops the successor and clears the journal record.
        ledger: HandoffLedger::new(supervisor),
    };
    loop {
        if let Some(outcome) = run.carry_out().await {
            return Ok(outcome);
        }
        if run.feed(Peer::Incumbent) || run.feed(Peer::Successor) {
            continue;
        }
        let wake = future::or(
            future::or(
                async {
                    readable(run.incumbent.as_ref()).await;
                    Wake::Incumbent
                },
                async {
                    readable(run.successor.as_ref()).await;
                    Wake::Successor
                },
            ),
            future::or(
                async {
                    match &run.exit {
                        Some(w) => {
                            let _ = w.readable().await;
                        }
                        None => future::pending::<()>().await,
                    }
                    Wake::Exit
                },
                async {
                    let mut deadline = run.machine.poll_timeout();
                    if run.ledger.has_successor() && run.exit.is_none() {
                        // No pidfd: look at the child this often, as the
                        // blocking adapter does.
                        let soon = clock::now() + EXIT_POLL_INTERVAL;
                        deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                    }
                    timer(deadline).await;
                    Wake::Timer
                },
            ),
        )
        .await;
        match wake {
            Wake::Incumbent => run.read(Peer::Incumbent),
            Wake::Successor => run.read(Peer::Successor),
            Wake::Exit => run.reaped(),
            Wake::Timer => {
                if run.exit.is_none()
                    && let Some(child) = run.ledger.successor()
                    && matches!(child.try_wait(), Ok(Some(_)))
                {
                    run.reaped();
                }
            }
        }
        // After every wake-up, not only the timer's: a peer that never stops
        // sending must not hold off the deadlines (an early call does
        // nothing).
        run.machine.handle_timeout(clock::now());
    }
}

struct Run<'a> {
    sup: &'a Supervisor,
    /// First to drop: an abandoned handoff's successor is stopped before
    /// the incumbent's session closes and it takes the lock back.
    ledger: HandoffLedger<&'a Supervisor>,
    spec: SpawnSpec,
    machine: SupervisorHandoff<Vec<u8>>,
    incumbent: Option<AsyncConn>,
    successor: Option<AsyncConn>,
    exit: Option<Async<ExitWatch>>,
}

impl Run<'_> {
    fn conn(&mut self, peer: Peer) -> &mut Option<AsyncConn> {
        match peer {
            Peer::Incumbent => &mut self.incumbent,
            Peer::Successor => &mut self.successor,
        }
    }

    /// Feeds one frame's worth of bytes already read; whether it did.
    fn feed(&mut self, peer: Peer) -> bool {
        let (conn, machine) = match peer {
            Peer::Incumbent => (&mut self.incumbent, &mut self.machine),
            Peer::Successor => (&mut self.successor, &mut self.machine),
        };
        match conn {
            Some(c) if !c.inbox.is_empty() => {
                let used = machine.handle_input(clock::now(), peer, c.inbox.pending());
                c.inbox.consume(used);
                true
            }
            _ => false,
        }
    }

    fn read(&mut self, peer: Peer) {
        let conn = self.conn(peer);
        let Some(c) = conn.as_mut() else { return };
        match c.read() {
            Read::Data | Read::WouldBlock => {}
            Read::Closed => {
                *conn = None;
                self.machine.handle_closed(clock::now(), peer);
            }
        }
    }

    fn reaped(&mut self) {
        self.exit = None;
        self.ledger.reap();
        self.machine.handle_successor_exited(clock::now());
    }

    async fn carry_out(&mut self) -> Option<HandoffOutcome> {
        while let Some(out) = self.machine.poll_output() {
            let now = clock::now();
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    let connected =
                        Async::<std::os::unix::net::UnixStream>::connect(self.sup.control_socket())
                            .await;
                    self.incumbent = self
                        .ledger
                        .connected(&mut self.machine, connected)
                        .map(AsyncConn::from_async);
                }
                SupervisorOutput::Transmit { to, frame } => {
                    let conn = match to {
                        Peer::Incumbent => &mut self.incumbent,
                        Peer::Successor => &mut self.successor,
                    };
                    let sent = match conn.as_ref() {
                        Some(c) => c.send(frame).await.is_ok(),
                        None => false,
                    };
                    if sent {
                        crash::frame('s', true, frame);
                    } else {
                        *conn = None;
                        self.machine.handle_closed(now, to);
                    }
                }
                SupervisorOutput::SpawnSuccessor => {
                    let spawned = self
                        .ledger
                        .spawn(&mut self.machine, &self.spec, AsyncConn::new);
                    if let Some((conn, pid)) = spawned {
                        self.exit = ExitWatch::new(pid).and_then(Async::new).ok();
                        self.successor = Some(conn);
                    }
                }
                SupervisorOutput::Disconnect(peer) => *self.conn(peer) = None,
                SupervisorOutput::Finished(o) => {
                    let outcome = self.ledger.finish(&o);
                    self.incumbent = None;
                    self.successor = None;
                    self.exit = None;
                    return Some(outcome);
                }
                other => {
                    if self.ledger.carry_out(&other) == LedgerStep::JournalFailed {
                        self.machine.handle_journal_failed(now);
                    }
                }
            }
        }
        None
    }
}
