//! `perform_handoff` as an async fn: the supervisor machine driven by
//! async-io readiness of the two control sockets and of a pidfd for the
//! successor's exit, and by async-io timers.

use std::process::Child;

use async_io::Async;
use futures_lite::future;
use handoff_core::{Peer, SupervisorHandoff, SupervisorOutput};
use handoff_std::crash;
use handoff_std::os::journal::JournalWriter;
use handoff_std::os::process::{EXIT_POLL_INTERVAL, ExitWatch, kill_and_reap, send_signal};
use handoff_std::os::spawn::PassedListener;
use handoff_std::{
    HandoffOutcome, SpawnSpec, Supervisor, SupervisorError, clock, handoff_config, random_id_bytes,
    spawn_for_handoff, unix_millis,
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
        machine: SupervisorHandoff::new(
            clock::now(),
            handoff_config(supervisor.config(), &spec),
            random_id_bytes(),
            unix_millis(),
        ),
        spec,
        incumbent: None,
        successor: None,
        child: None,
        exit: None,
        detail: None,
        started: std::time::Instant::now(),
        // Written off the executor: an fsync never blocks other tasks.
        journal: supervisor.start_journal(),
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
                    if run.child.is_some() && run.exit.is_none() {
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
                    && let Some(child) = run.child.as_mut()
                    && matches!(child.try_wait(), Ok(Some(_)))
                {
                    run.reaped();
                }
            }
        }
        // After every wake-up, not only the timer's: a peer that never stops
        // sending must not hold off the deadlines (the machine ignores an
        // early call).
        let now = clock::now();
        if run.machine.poll_timeout().is_some_and(|t| t <= now) {
            run.machine.handle_timeout(now);
        }
    }
}

struct Run<'a> {
    sup: &'a Supervisor,
    spec: SpawnSpec,
    machine: SupervisorHandoff<Vec<u8>>,
    incumbent: Option<AsyncConn>,
    successor: Option<AsyncConn>,
    child: Option<Child>,
    exit: Option<Async<ExitWatch>>,
    detail: Option<String>,
    journal: Option<JournalWriter>,
    started: std::time::Instant,
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
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.machine.handle_successor_exited(clock::now());
    }

    async fn carry_out(&mut self) -> Option<HandoffOutcome> {
        while let Some(out) = self.machine.poll_output() {
            let now = clock::now();
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    let connected =
                        Async::<std::os::unix::net::UnixStream>::connect(self.sup.control_socket())
                            .await
                            .map(AsyncConn::from_async);
                    match connected {
                        Ok(c) => {
                            self.incumbent = Some(c);
                            self.machine.handle_connected(now);
                        }
                        Err(e) => {
                            self.detail = Some(format!(
                                "connecting to {}: {e}",
                                self.sup.control_socket().display()
                            ));
                            self.machine.handle_connect_failed(now);
                        }
                    }
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
                    let listeners: Vec<PassedListener<'_>> = self.sup.listeners().collect();
                    let spawned = spawn_for_handoff(&self.spec, &listeners)
                        .map_err(|e| e.to_string())
                        .and_then(|(s, child)| match AsyncConn::new(s) {
                            Ok(conn) => Ok((conn, child)),
                            // Spawned but unreachable: it must not run on.
                            Err(e) => {
                                kill_and_reap(child);
                                Err(e.to_string())
                            }
                        });
                    match spawned {
                        Ok((conn, child)) => {
                            let pid = child.id();
                            self.exit = ExitWatch::new(pid).and_then(Async::new).ok();
                            self.successor = Some(conn);
                            self.child = Some(child);
                            crash::at("s-after-spawn");
                            self.machine.handle_spawned(now, pid);
                        }
                        Err(e) => {
                            self.detail =
                                Some(format!("spawning {}: {e}", self.spec.binary.display()));
                            self.machine.handle_spawn_failed(now);
                        }
                    }
                }
                SupervisorOutput::Signal(signal) => {
                    if let Some(child) = &self.child {
                        let _ = send_signal(child.id(), signal);
                    }
                }
                SupervisorOutput::Disconnect(peer) => *self.conn(peer) = None,
                SupervisorOutput::WriteJournal(record) => match &self.journal {
                    Some(j) => j.write(record),
                    None if self.sup.journal().is_some() => self.machine.handle_journal_failed(now),
                    None => {}
                },
                SupervisorOutput::ClearJournal => {
                    if let Some(j) = &self.journal {
                        j.clear();
                    }
                }
                SupervisorOutput::Finished(o) => {
                    let committed = o.result.is_ok();
                    let mut outcome = HandoffOutcome::from_core(&o, self.detail.take());
                    outcome.timings = outcome.timings.with_total(self.started.elapsed());
                    if let Some(j) = self.journal.take()
                        && self.sup.defer_journal(j)
                    {
                        outcome.journal_failed = true;
                    }
                    self.incumbent = None;
                    self.successor = None;
                    self.exit = None;
                    if let Some(child) = self.child.take() {
                        if committed {
                            outcome.child = Some(child);
                        } else {
                            kill_and_reap(child);
                        }
                    }
                    return Some(outcome);
                }
            }
        }
        None
    }
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        // A dropped future (cancelled handoff) must not leave a successor.
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
    }
}
