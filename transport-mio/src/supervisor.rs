//! A supervisor for many services in one mio loop. Each service is a
//! [`handoff_std::Supervisor`] (its control socket, listeners, journal and
//! timings); any number of them may be handing off at once, each handoff a
//! core machine with its two connections and a pidfd for its successor
//! registered in the caller's `Poll` under tokens from the caller's range.
//! Other threads start handoffs through a [`Remote`] (a channel and a
//! `mio::Waker`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff_core::{Peer, SupervisorHandoff, SupervisorOutput};
use handoff_std::crash;
use handoff_std::os::process::{EXIT_POLL_INTERVAL, ExitWatch};
use handoff_std::{
    HandoffLedger, HandoffOutcome, LedgerStep, SharedHandoffSlot, SpawnSpec, Supervisor,
    SupervisorError, clock,
};
use mio::event::Event;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token, Waker};

use crate::conn::{Conn, Read};

/// Tokens each handoff uses: the incumbent, the successor, its exit.
const TOKENS_PER_HANDOFF: usize = 3;

/// A service added to a [`MioSupervisor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub usize);

/// What a [`MioSupervisor`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A handoff ended (committed or rolled back).
    Finished(ServiceId, Box<HandoffOutcome>),
    /// A handoff asked for through a [`Remote`] could not start.
    Rejected(ServiceId, SupervisorError),
}

struct Run {
    service: ServiceId,
    spec: SpawnSpec,
    machine: SupervisorHandoff<Vec<u8>>,
    /// Dropped with the run (a loop dropped with handoffs in flight), it
    /// stops the successor and clears the journal record; first, so that
    /// the successor is gone before the incumbent's session closes and it
    /// takes the lock back.
    ledger: HandoffLedger<Arc<Supervisor>>,
    incumbent: Option<Conn>,
    successor: Option<Conn>,
    exit: Option<ExitWatch>,
    /// The supervisor's in-flight slot, given back when the run ends.
    _claim: SharedHandoffSlot,
}

/// The loop's end of the [`Remote`] channel.
struct RemoteEnd {
    token: Token,
    rx: Mutex<mpsc::Receiver<(ServiceId, SpawnSpec)>>,
    tx: mpsc::Sender<(ServiceId, SpawnSpec)>,
    waker: Arc<Waker>,
}

/// Many services' handoffs in one event loop.
pub struct MioSupervisor {
    services: Vec<Arc<Supervisor>>,
    busy: Vec<bool>,
    runs: Vec<Option<Run>>,
    token_base: usize,
    max_handoffs: usize,
    events: VecDeque<SupervisorEvent>,
    remote: Option<RemoteEnd>,
}

impl std::fmt::Debug for MioSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MioSupervisor")
            .field("services", &self.services.len())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Starts handoffs on a [`MioSupervisor`] from other threads.
#[derive(Clone, Debug)]
pub struct Remote {
    tx: mpsc::Sender<(ServiceId, SpawnSpec)>,
    waker: Arc<Waker>,
}

impl Remote {
    /// Asks the loop to hand off `service` to `spec`. The result comes out
    /// of the loop as a [`SupervisorEvent`].
    pub fn handoff(&self, service: ServiceId, spec: SpawnSpec) -> io::Result<()> {
        self.tx
            .send((service, spec))
            .map_err(|_| io::Error::other("the supervisor loop is gone"))?;
        self.waker.wake()
    }
}

impl MioSupervisor {
    /// A supervisor whose handoffs use tokens `token_base ..
    /// token_base + 3 * max_handoffs` (three per concurrent handoff).
    pub fn new(token_base: usize, max_handoffs: usize) -> MioSupervisor {
        MioSupervisor {
            services: Vec::new(),
            busy: Vec::new(),
            runs: (0..max_handoffs).map(|_| None).collect(),
            token_base,
            max_handoffs,
            events: VecDeque::new(),
            remote: None,
        }
    }

    /// Adds a service (shared, so the same `Supervisor` may also be used by
    /// other adapters between this loop's handoffs).
    pub fn add_service(&mut self, service: impl Into<Arc<Supervisor>>) -> ServiceId {
        self.services.push(service.into());
        self.busy.push(false);
        ServiceId(self.services.len() - 1)
    }

    /// A service.
    pub fn service(&self, id: ServiceId) -> &Supervisor {
        &self.services[id.0]
    }

    /// How many services there are.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// How many handoffs are in flight.
    pub fn in_flight(&self) -> usize {
        self.runs.iter().filter(|r| r.is_some()).count()
    }

    /// A handle for other threads, waking the loop under `token`.
    pub fn remote(&mut self, registry: &Registry, token: Token) -> io::Result<Remote> {
        if let Some(end) = &self.remote {
            return Ok(Remote {
                tx: end.tx.clone(),
                waker: end.waker.clone(),
            });
        }
        let waker = Arc::new(Waker::new(registry, token)?);
        let (tx, rx) = mpsc::channel();
        self.remote = Some(RemoteEnd {
            token,
            rx: Mutex::new(rx),
            tx: tx.clone(),
            waker: waker.clone(),
        });
        Ok(Remote { tx, waker })
    }

    /// Starts handing off `service` to `spec`.
    pub fn start_handoff(
        &mut self,
        registry: &Registry,
        service: ServiceId,
        spec: SpawnSpec,
    ) -> Result<(), SupervisorError> {
        let Some(sup) = self.services.get(service.0) else {
            return Err(SupervisorError::Io(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no service {}", service.0),
            )));
        };
        if self.busy[service.0] {
            return Err(SupervisorError::HandoffInProgress);
        }
        // The supervisor's own slot too: another adapter (a trigger served on
        // a thread, say) may share this supervisor.
        let claim = sup.claim_shared()?;
        let Some(slot) = self.runs.iter().position(|r| r.is_none()) else {
            return Err(SupervisorError::Io(io::Error::other(format!(
                "all {} handoff slots are in use; raise max_handoffs",
                self.max_handoffs
            ))));
        };
        let machine = sup.new_handoff(&spec);
        self.busy[service.0] = true;
        self.runs[slot] = Some(Run {
            service,
            spec,
            machine,
            incumbent: None,
            successor: None,
            exit: None,
            // Its journal is written off the loop: fsyncs never stall other
            // services.
            ledger: HandoffLedger::new(sup.clone()),
            _claim: claim,
        });
        self.pump(registry, slot);
        Ok(())
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<SupervisorEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of all handoffs in flight.
    pub fn timeout(&self) -> Option<std::time::Instant> {
        // A successor whose exit cannot be watched (no pidfd) is looked at
        // this often, as the blocking adapter does.
        let poll_child = self
            .runs
            .iter()
            .flatten()
            .any(|r| r.ledger.has_successor() && r.exit.is_none())
            .then(|| std::time::Instant::now() + EXIT_POLL_INTERVAL);
        self.runs
            .iter()
            .flatten()
            .filter_map(|r| r.machine.poll_timeout())
            .min()
            .map(clock::to_std)
            .into_iter()
            .chain(poll_child)
            .min()
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        let now = clock::now();
        for slot in 0..self.runs.len() {
            if let Some(run) = self.runs[slot].as_mut() {
                if run.exit.is_none()
                    && let Some(child) = run.ledger.successor()
                    && matches!(child.try_wait(), Ok(Some(_)))
                {
                    // No pidfd on this kernel: the child is looked at on
                    // every timeout instead.
                    run.ledger.reap();
                    run.machine.handle_successor_exited(now);
                }
                run.machine.handle_timeout(now);
                self.pump(registry, slot);
            }
        }
    }

    /// Handles `event` if it is one of ours; returns whether it was.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        let token = event.token().0;
        if self
            .remote
            .as_ref()
            .is_some_and(|r| r.token == event.token())
        {
            self.take_commands(registry);
            return true;
        }
        if token < self.token_base
            || token >= self.token_base + TOKENS_PER_HANDOFF * self.max_handoffs
        {
            return false;
        }
        let slot = (token - self.token_base) / TOKENS_PER_HANDOFF;
        let which = (token - self.token_base) % TOKENS_PER_HANDOFF;
        let Some(run) = self.runs[slot].as_mut() else {
            // A stale event for a handoff that just ended.
            return true;
        };
        match which {
            0 | 1 => {
                let peer = if which == 0 {
                    Peer::Incumbent
                } else {
                    Peer::Successor
                };
                if event.is_writable() {
                    let (conn, machine) = split(run, peer);
                    if let Some(c) = conn.as_mut()
                        && c.flush(registry).is_err()
                    {
                        if let Some(c) = conn.take() {
                            c.deregister(registry);
                        }
                        machine.handle_closed(clock::now(), peer);
                    }
                }
                self.read(registry, slot, peer);
            }
            _ => {
                if let Some(watch) = run.exit.take() {
                    let _ = registry.deregister(&mut SourceFd(&watch.as_fd().as_raw_fd()));
                }
                run.ledger.reap();
                run.machine.handle_successor_exited(clock::now());
            }
        }
        // After every wake-up, as every adapter does: a peer that never
        // stops sending must not hold off the deadlines, whatever the
        // caller's loop does (an early call does nothing).
        if let Some(run) = self.runs[slot].as_mut() {
            run.machine.handle_timeout(clock::now());
        }
        self.pump(registry, slot);
        true
    }

    fn take_commands(&mut self, registry: &Registry) {
        let Some(end) = &self.remote else { return };
        let pending: Vec<(ServiceId, SpawnSpec)> = match end.rx.lock() {
            Ok(rx) => rx.try_iter().collect(),
            Err(_) => return,
        };
        for (service, spec) in pending {
            if let Err(e) = self.start_handoff(registry, service, spec) {
                self.events.push_back(SupervisorEvent::Rejected(service, e));
            }
        }
    }

    fn read(&mut self, registry: &Registry, slot: usize, peer: Peer) {
        loop {
            let Some(run) = self.runs[slot].as_mut() else {
                return;
            };
            let (conn, machine) = split(run, peer);
            let Some(c) = conn.as_mut() else { return };
            if c.inbox.is_empty() {
                match c.read() {
                    Read::Data => {}
                    Read::WouldBlock => return,
                    Read::Closed => {
                        if let Some(c) = conn.take() {
                            c.deregister(registry);
                        }
                        machine.handle_closed(clock::now(), peer);
                        self.pump(registry, slot);
                        return;
                    }
                }
            }
            let used = machine.handle_input(clock::now(), peer, c.inbox.pending());
            c.inbox.consume(used);
            self.pump(registry, slot);
        }
    }

    fn token(&self, slot: usize, which: usize) -> Token {
        Token(self.token_base + slot * TOKENS_PER_HANDOFF + which)
    }

    /// Carries out the outputs of the handoff in `slot`.
    fn pump(&mut self, registry: &Registry, slot: usize) {
        loop {
            let tokens = (
                self.token(slot, 0),
                self.token(slot, 1),
                self.token(slot, 2),
            );
            let Some(run) = self.runs[slot].as_mut() else {
                return;
            };
            let sup = &self.services[run.service.0];
            let Some(out) = run.machine.poll_output() else {
                return;
            };
            let now = clock::now();
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    let connected = mio::net::UnixStream::connect(sup.control_socket());
                    run.incumbent =
                        run.ledger
                            .connected(&mut run.machine, connected)
                            .and_then(|s| match Conn::register(s, registry, tokens.0) {
                                Ok(conn) => Some(conn),
                                Err(e) => {
                                    run.ledger.note(format!("registering the connection: {e}"));
                                    run.machine.handle_closed(now, Peer::Incumbent);
                                    None
                                }
                            });
                }
                SupervisorOutput::Transmit { to, frame } => {
                    // Fields, not a helper: `frame` borrows the machine.
                    let conn = match to {
                        Peer::Incumbent => &mut run.incumbent,
                        Peer::Successor => &mut run.successor,
                    };
                    let failed = match conn.as_mut() {
                        Some(c) => c.send(registry, frame).is_err(),
                        None => true,
                    };
                    if failed {
                        if let Some(c) = conn.take() {
                            c.deregister(registry);
                        }
                        run.machine.handle_closed(now, to);
                    } else {
                        crash::frame('s', true, frame);
                    }
                }
                SupervisorOutput::SpawnSuccessor => {
                    let spawned = run.ledger.spawn(&mut run.machine, &run.spec, |stream| {
                        stream.set_nonblocking(true)?;
                        Conn::register(mio::net::UnixStream::from_std(stream), registry, tokens.1)
                    });
                    if let Some((conn, pid)) = spawned {
                        run.exit = ExitWatch::new(pid).ok().filter(|w| {
                            registry
                                .register(
                                    &mut SourceFd(&w.as_fd().as_raw_fd()),
                                    tokens.2,
                                    Interest::READABLE,
                                )
                                .is_ok()
                        });
                        run.successor = Some(conn);
                    }
                }
                SupervisorOutput::Disconnect(peer) => {
                    if let Some(c) = split(run, peer).0.take() {
                        c.deregister(registry);
                    }
                }
                SupervisorOutput::Finished(o) => {
                    let outcome = run.ledger.finish(&o);
                    let Some(mut run) = self.runs[slot].take() else {
                        return;
                    };
                    for conn in [run.incumbent.take(), run.successor.take()]
                        .into_iter()
                        .flatten()
                    {
                        conn.deregister(registry);
                    }
                    if let Some(watch) = run.exit.take() {
                        let _ = registry.deregister(&mut SourceFd(&watch.as_fd().as_raw_fd()));
                    }
                    self.busy[run.service.0] = false;
                    self.events
                        .push_back(SupervisorEvent::Finished(run.service, Box::new(outcome)));
                    return;
                }
                other => {
                    if run.ledger.carry_out(&other) == LedgerStep::JournalFailed {
                        run.machine.handle_journal_failed(now);
                    }
                }
            }
        }
    }
}

/// The connection to `peer` and the machine, borrowed apart.
fn split(run: &mut Run, peer: Peer) -> (&mut Option<Conn>, &mut SupervisorHandoff<Vec<u8>>) {
    match peer {
        Peer::Incumbent => (&mut run.incumbent, &mut run.machine),
        Peer::Successor => (&mut run.successor, &mut run.machine),
    }
}
