//! The incumbent in the caller's mio loop: an [`IncumbentDriver`] whose
//! control listener and current session are registered under the caller's
//! two tokens, whose timers come out through [`MioIncumbent::poll_timeout`],
//! and whose hooks (drain, seal, resume) come out as [`IncumbentEvent`]s
//! that the daemon completes whenever it is ready. Nothing here blocks or
//! spawns a thread.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::Path;

use handoff_core::{DrainReport, IncumbentConfig, IncumbentEnd};
use handoff_driver::{
    Endpoint, Handover, Hook, HookDone, IncumbentDriver, IncumbentIo, Io, SealReport,
    SessionReport, Source,
};
use handoff_os::lock::DataDirLock;
use mio::event::Event;
use mio::{Registry, Token};

use crate::conn::{MioIo, Registered, readiness};

/// Something the daemon must do, or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncumbentEvent {
    /// Stop accepting, finish in-flight requests, make acknowledged work
    /// durable; then call [`MioIncumbent::drained`] (or `drain_failed`).
    /// Keep the listeners open: they are shared. Before `drained`, open
    /// connections may be passed to the successor through `handover`
    /// (docs/PROTOCOL.md section 11): keep each passed one open but
    /// untouched, close it (never shut it down) after
    /// [`IncumbentEnd::Committed`], serve it again after `Resume`.
    Drain {
        /// When the drain grace ends.
        deadline: std::time::Instant,
        /// How to pass connections in this handoff.
        handover: Handover,
    },
    /// Flush and close the writer state; then call [`MioIncumbent::sealed`]
    /// (or `seal_failed`). The lock is released after a successful seal.
    Seal,
    /// Reopen the writer state and accept again (the lock is held); then
    /// call [`MioIncumbent::resumed`] (or `resume_failed`).
    Resume,
    /// A control session ended. After [`IncumbentEnd::Committed`] the
    /// successor serves: finish the open connections and exit. After
    /// `Superseded` or `ResumeFailed`, exit. After `Serving`, go on.
    SessionEnded(IncumbentEnd),
    /// `accept` on the control socket failed in a way that does not pass
    /// (the text says how): no supervisor can reach this incumbent any more.
    /// The lock is still held, so serving on is safe, but no handoff can
    /// happen until the daemon is restarted.
    ControlSocketFailed(String),
}

impl From<SessionReport> for IncumbentEvent {
    fn from(report: SessionReport) -> Self {
        match report {
            SessionReport::Ended(end) => IncumbentEvent::SessionEnded(end),
            SessionReport::ControlSocketFailed(e) => {
                IncumbentEvent::ControlSocketFailed(e.to_string())
            }
        }
    }
}

/// Where the incumbent is in its life.
enum Stage {
    /// Not registered yet: the settings may still change. (Both stages
    /// are boxed, so that the incumbent is small to move whichever it is
    /// in.)
    Unregistered(Box<Endpoint>),
    /// Registered: the driver serves the endpoint.
    Registered {
        driver: Box<IncumbentDriver>,
        tokens: [(Source, Token); 2],
    },
    /// Registering failed after the endpoint was given to a driver that
    /// could not be made; the endpoint, and its lock, are gone.
    Broken,
}

/// The control side of a daemon served from a mio loop.
pub struct MioIncumbent {
    stage: Stage,
    /// What the driver has registered, kept between calls.
    registered: Registered,
    events: VecDeque<IncumbentEvent>,
}

impl fmt::Debug for MioIncumbent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MioIncumbent");
        match &self.stage {
            Stage::Unregistered(ep) => d.field("endpoint", ep),
            Stage::Registered { driver, .. } => d.field("driver", driver),
            Stage::Broken => d.field("broken", &true),
        };
        d.finish_non_exhaustive()
    }
}

/// The driver's [`IncumbentIo`] for one call: the registry, and the event
/// queue the hooks go to (the daemon runs them from its own loop).
struct Glue<'a> {
    io: MioIo<'a>,
    events: &'a mut VecDeque<IncumbentEvent>,
}

impl Io for Glue<'_> {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        self.io.watch(source, fd, write)
    }

    fn unwatch(&mut self, source: Source, fd: BorrowedFd<'_>) {
        self.io.unwatch(source, fd)
    }
}

impl IncumbentIo for Glue<'_> {
    fn run_hook(&mut self, hook: Hook) {
        self.events.push_back(match hook {
            Hook::Drain { deadline, handover } => IncumbentEvent::Drain { deadline, handover },
            Hook::Seal => IncumbentEvent::Seal,
            Hook::Resume => IncumbentEvent::Resume,
        });
    }
}

impl MioIncumbent {
    /// Binds the control socket at `socket_path` for a daemon started cold
    /// that holds `lock`. Replaces a stale socket left at the path.
    pub fn bind_cold_start(socket_path: &Path, lock: DataDirLock) -> io::Result<MioIncumbent> {
        MioIncumbent::new(Endpoint::bind_cold_start(socket_path, lock)?)
    }

    /// Serves `endpoint` (a [`handoff_driver::Endpoint`], or anything that
    /// becomes one, such as a `handoff_std::Incumbent` a successor's
    /// `announce_and_bind` returned), with the timings, build id and
    /// allowed uids set on it. It must hold the data-dir lock.
    pub fn new(endpoint: impl Into<Endpoint>) -> io::Result<MioIncumbent> {
        let endpoint = endpoint.into();
        if !endpoint.holds_lock() {
            return Err(io::Error::other("an incumbent must hold the data-dir lock"));
        }
        Ok(MioIncumbent {
            stage: Stage::Unregistered(Box::new(endpoint)),
            registered: Registered::default(),
            events: VecDeque::new(),
        })
    }

    /// Applies `f` to the endpoint's settings. They are the driver's once
    /// registered, which keeps them for its whole life.
    fn configure(mut self, f: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        if let Stage::Unregistered(ep) = std::mem::replace(&mut self.stage, Stage::Broken) {
            self.stage = Stage::Unregistered(Box::new(f(*ep)));
        }
        self
    }

    /// The build id announced in `Hello`. Set it before
    /// [`MioIncumbent::register`]; afterwards it changes nothing.
    pub fn with_build_id(self, build_id: impl Into<Vec<u8>>) -> Self {
        let build_id = build_id.into();
        self.configure(|ep| ep.with_build_id(build_id))
    }

    /// Also accept supervisors running as these uids (besides ours and
    /// root). Set it before [`MioIncumbent::register`]; afterwards it
    /// changes nothing.
    pub fn with_allowed_uids(self, uids: Vec<u32>) -> Self {
        self.configure(|ep| ep.with_allowed_uids(uids))
    }

    /// Overrides the session timings. Set them before
    /// [`MioIncumbent::register`]; afterwards they change nothing.
    pub fn with_config(self, config: IncumbentConfig) -> Self {
        self.configure(|ep| ep.with_config(config))
    }

    /// Registers the control listener under `listener` and (later) each
    /// session under `session`, and accepts the supervisors already
    /// waiting. Once only: the tokens are the driver's from then on.
    ///
    /// An error means this incumbent cannot be reached by any supervisor
    /// (the listener could not be registered, or `accept` failed for good);
    /// it is then [`MioIncumbent::is_done`].
    pub fn register(
        &mut self,
        registry: &Registry,
        listener: Token,
        session: Token,
    ) -> io::Result<()> {
        let ep = match std::mem::replace(&mut self.stage, Stage::Broken) {
            Stage::Unregistered(ep) => ep,
            other => {
                self.stage = other;
                return Err(io::Error::other("this incumbent is registered already"));
            }
        };
        self.stage = Stage::Registered {
            driver: Box::new(IncumbentDriver::new(*ep)?),
            tokens: [(Source::Listener, listener), (Source::Control, session)],
        };
        let Stage::Registered { driver, tokens } = &mut self.stage else {
            unreachable!("set just above");
        };
        let mut io = Glue {
            io: MioIo {
                registry,
                tokens,
                registered: &mut self.registered,
            },
            events: &mut self.events,
        };
        driver.start(&mut io);
        // What fails at once is the caller's error, not an event it would
        // find only after its first poll.
        while let Some(report) = driver.poll_report() {
            match report {
                SessionReport::ControlSocketFailed(e) => return Err(e),
                other => self.events.push_back(other.into()),
            }
        }
        Ok(())
    }

    /// Runs `f` on the driver with this call's [`IncumbentIo`], then moves
    /// what the driver reports to the event queue, after the hooks it asked
    /// for meanwhile (as they happened: a session ends only once its hook
    /// is done).
    fn drive(&mut self, registry: &Registry, f: impl FnOnce(&mut IncumbentDriver, &mut Glue<'_>)) {
        let Stage::Registered { driver, tokens } = &mut self.stage else {
            return;
        };
        let mut io = Glue {
            io: MioIo {
                registry,
                tokens,
                registered: &mut self.registered,
            },
            events: &mut self.events,
        };
        f(driver, &mut io);
        while let Some(report) = driver.poll_report() {
            self.events.push_back(report.into());
        }
    }

    /// Whether this process holds the data-dir lock.
    pub fn holds_lock(&self) -> bool {
        match &self.stage {
            Stage::Unregistered(ep) => ep.holds_lock(),
            Stage::Registered { driver, .. } => driver.holds_lock(),
            Stage::Broken => false,
        }
    }

    /// Whether the incumbent is over (committed, superseded, unable to
    /// resume, or its control socket failed): it accepts no more sessions.
    pub fn is_done(&self) -> bool {
        match &self.stage {
            Stage::Unregistered(_) => false,
            Stage::Registered { driver, .. } => driver.is_done(),
            Stage::Broken => true,
        }
    }

    /// Handles `event` if it is one of ours; returns whether it was.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        let Stage::Registered { tokens, .. } = &self.stage else {
            return false;
        };
        let Some(&(source, _)) = tokens.iter().find(|(_, t)| *t == event.token()) else {
            return false;
        };
        let (writable, readable) = readiness(event);
        self.drive(registry, |driver, io| {
            if writable {
                driver.handle_writable(io, source);
            }
            if readable {
                driver.handle_readable(io, source);
            }
        });
        true
    }

    /// The next instant at which [`MioIncumbent::handle_timeout`] must be
    /// called (use it for the `Poll::poll` timeout); now while events
    /// wait in [`MioIncumbent::poll_event`], so that a loop that waits
    /// before it looks never sleeps on one.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if !self.events.is_empty() {
            return Some(std::time::Instant::now());
        }
        match &self.stage {
            Stage::Registered { driver, .. } => driver.poll_timeout(),
            _ => None,
        }
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        self.drive(registry, |driver, io| driver.handle_timeout(io));
    }

    /// The next thing for the daemon to do or know.
    pub fn poll_event(&mut self) -> Option<IncumbentEvent> {
        self.events.pop_front()
    }

    fn hook_done(&mut self, registry: &Registry, done: HookDone) {
        self.drive(registry, |driver, io| driver.hook_done(io, done));
    }

    /// The drain finished.
    pub fn drained(&mut self, registry: &Registry, report: DrainReport) {
        self.hook_done(registry, HookDone::Drained(Ok(report)));
    }

    /// The drain failed; a `Resume` follows.
    pub fn drain_failed(&mut self, registry: &Registry) {
        self.hook_done(registry, HookDone::Drained(Err("the drain failed".into())));
    }

    /// The seal finished: the writer state is closed.
    pub fn sealed(&mut self, registry: &Registry, output: &SealReport) {
        self.hook_done(registry, HookDone::Sealed(Ok(output.clone())));
    }

    /// The seal failed (the lock is kept); a `Resume` follows.
    pub fn seal_failed(&mut self, registry: &Registry, error: &str) {
        self.hook_done(registry, HookDone::Sealed(Err(error.to_owned())));
    }

    /// Progress of a long seal (also a heartbeat).
    pub fn seal_progress(&mut self, registry: &Registry, sealed: u32, total: u32, revision: u64) {
        self.drive(registry, |driver, io| {
            driver.seal_progress(io, sealed, total, revision)
        });
    }

    /// The resume finished: the daemon serves again.
    pub fn resumed(&mut self, registry: &Registry) {
        self.hook_done(registry, HookDone::Resumed(Ok(())));
    }

    /// The resume failed: the daemon cannot serve (a `SessionEnded` with
    /// `ResumeFailed` follows).
    pub fn resume_failed(&mut self, registry: &Registry) {
        self.hook_done(
            registry,
            HookDone::Resumed(Err("the resume hook failed".into())),
        );
    }
}
