//! A supervisor for many services in one mio loop. Each service is a
//! [`handoff_driver::Supervisor`] (its control socket, listeners, journal
//! and timings); any number of them may be handing off at once, each
//! handoff a [`SupervisorDriver`] whose two connections and successor's
//! pidfd are registered in the caller's `Poll` under tokens from the
//! caller's range. Other threads start handoffs through a [`Remote`] (a
//! channel and a `mio::Waker`).

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff_driver::{
    HandoffOutcome, SharedHandoffSlot, Source, SpawnSpec, Supervisor, SupervisorDriver,
    SupervisorError,
};
use mio::event::Event;
use mio::{Registry, Token, Waker};

use crate::conn::{MioIo, Registered, readiness};

/// Tokens each handoff uses: the incumbent, the successor, its exit.
const TOKENS_PER_HANDOFF: usize = 3;

/// What each of a handoff's tokens stands for, in token order.
const SOURCES: [Source; TOKENS_PER_HANDOFF] = [Source::Incumbent, Source::Successor, Source::Exit];

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
    /// The handoff. Declared before the claim, so dropped first: a loop
    /// dropped with handoffs in flight stops each successor and clears its
    /// journal record while the slot is still held.
    driver: SupervisorDriver<Arc<Supervisor>>,
    /// What the driver has registered, kept between calls.
    registered: Registered,
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

    /// Starts handing off `service` to `spec`. With a journal, this waits
    /// until the previous handoff's last record of this service is on disk.
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
        // The supervisor's own slot, not a flag of this loop's: another
        // adapter (a trigger served on a thread, say) may share this
        // supervisor, and one handoff at a time holds across them.
        let claim = sup.claim_shared()?;
        let Some(slot) = self.runs.iter().position(|r| r.is_none()) else {
            return Err(SupervisorError::Io(io::Error::other(format!(
                "all {} handoff slots are in use; raise max_handoffs",
                self.max_handoffs
            ))));
        };
        self.runs[slot] = Some(Run {
            service,
            driver: SupervisorDriver::new(sup.clone(), spec),
            registered: Registered::default(),
            _claim: claim,
        });
        self.drive(registry, slot, |driver, io| driver.start(io));
        Ok(())
    }

    /// The next thing to report.
    pub fn poll_event(&mut self) -> Option<SupervisorEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of all handoffs in flight; now while events
    /// wait in [`MioSupervisor::poll_event`], so that a loop that waits
    /// before it looks never sleeps on one.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if !self.events.is_empty() {
            return Some(std::time::Instant::now());
        }
        self.runs
            .iter()
            .flatten()
            .filter_map(|r| r.driver.poll_timeout())
            .min()
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        for slot in 0..self.runs.len() {
            self.drive(registry, slot, |driver, io| driver.handle_timeout(io));
        }
    }

    /// Handles `event` if it is one of ours; returns whether it was.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        if self
            .remote
            .as_ref()
            .is_some_and(|r| r.token == event.token())
        {
            self.take_commands(registry);
            return true;
        }
        let token = event.token().0;
        if token < self.token_base
            || token >= self.token_base + TOKENS_PER_HANDOFF * self.max_handoffs
        {
            return false;
        }
        let slot = (token - self.token_base) / TOKENS_PER_HANDOFF;
        let source = SOURCES[(token - self.token_base) % TOKENS_PER_HANDOFF];
        let (writable, readable) = readiness(event);
        // A stale event for a handoff that just ended finds no run, or the
        // next handoff in the slot, which reads nothing from it.
        self.drive(registry, slot, |driver, io| {
            if writable {
                driver.handle_writable(io, source);
            }
            if readable {
                driver.handle_readable(io, source);
            }
        });
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

    /// The tokens of the handoff in `slot`, by source.
    fn tokens(&self, slot: usize) -> [(Source, Token); TOKENS_PER_HANDOFF] {
        let base = self.token_base + slot * TOKENS_PER_HANDOFF;
        std::array::from_fn(|i| (SOURCES[i], Token(base + i)))
    }

    /// Runs `f` on the driver in `slot` with this call's [`MioIo`]; once
    /// the handoff is over, frees the slot and reports its outcome.
    fn drive(
        &mut self,
        registry: &Registry,
        slot: usize,
        f: impl FnOnce(&mut SupervisorDriver<Arc<Supervisor>>, &mut MioIo<'_>),
    ) {
        let tokens = self.tokens(slot);
        let Some(run) = self.runs[slot].as_mut() else {
            return;
        };
        let mut io = MioIo {
            registry,
            tokens: &tokens,
            registered: &mut run.registered,
        };
        f(&mut run.driver, &mut io);
        let Some(outcome) = run.driver.take_outcome() else {
            return;
        };
        let service = run.service;
        // The driver has deregistered everything by now. Dropped before
        // the outcome is reported, so that the supervisor's slot is free
        // for a handoff the caller starts on hearing of it.
        self.runs[slot] = None;
        self.events
            .push_back(SupervisorEvent::Finished(service, Box::new(outcome)));
    }
}
