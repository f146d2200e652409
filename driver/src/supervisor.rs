//! The supervisor's side: [`Supervisor`] (one daemon's control socket,
//! listeners, journal and timings) and [`SupervisorDriver`], which carries
//! out one handoff's outputs for every adapter. An adapter creates the
//! driver, watches what it asks ([`Io`]) and passes on readiness and time;
//! the blocking adapter runs it with `poll(2)`, mio in the caller's loop,
//! smol and tokio as a future ([`crate::reactor::perform_handoff`]).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handoff_core::{
    AbortReason, DrainReport, HandoffId, IncumbentFate, JournalRecord, PhaseTimings, Side,
    SuccessorFate, SupervisorConfig, SupervisorHandoff, SupervisorOutput, defaults,
};

use handoff_os::control;
use handoff_os::crash;
use handoff_os::journal::{Journal, JournalError, JournalWriter};
use handoff_os::process::{EXIT_POLL_INTERVAL, ExitWatch, kill_and_reap, send_signal};
use handoff_os::spawn::{
    Child, ChildStdio, Launch, PassedListener, SpawnError, spawn_successor_vfork,
    validate_listener_names,
};

use crate::clock;
use crate::link::{Io, Link, READ_BUDGET, Read, Source};
use crate::probe::{HealthProbe, ProbeRunner, Verdict};

/// How often a running health probe's verdicts are looked at.
const PROBE_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What to run as the successor, and the budgets of its handoff.
#[derive(Clone, Debug)]
pub struct SpawnSpec {
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables added to the supervisor's environment for it.
    pub env: Vec<(OsString, OsString)>,
    /// The whole handoff, from start until `Ready`.
    pub deadline: Duration,
    /// The incumbent's drain.
    pub drain_grace: Duration,
    /// The successor's start-up before its `Hello` (bounded by `deadline`).
    pub startup_budget: Duration,
    /// How long the successor serves on probation after `Ready` before
    /// `Commit` (docs/PROTOCOL.md section 10); zero commits at `Ready`.
    pub probation: Duration,
    /// The health probe run against the successor while on probation.
    pub probe: Option<HealthProbe>,
    /// Whether the incumbent's open connections are passed to the
    /// successor when both offer it (docs/PROTOCOL.md section 11). On by
    /// default.
    pub pass_connections: bool,
}

impl SpawnSpec {
    /// `binary` with no arguments and the default budgets (deadline 60 s,
    /// drain grace 25 s, start-up 30 s).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        SpawnSpec {
            binary: binary.into(),
            args: Vec::new(),
            env: Vec::new(),
            deadline: defaults::DEADLINE,
            drain_grace: defaults::DRAIN_GRACE,
            startup_budget: defaults::STARTUP_BUDGET,
            probation: Duration::ZERO,
            probe: None,
            pass_connections: true,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds a variable.
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// How a handoff ended, with everything the peers reported.
#[derive(Debug)]
pub struct HandoffOutcome {
    /// The handoff.
    pub handoff_id: HandoffId,
    /// `Ok` if it committed, otherwise why not.
    pub result: Result<(), AbortReason>,
    /// More about the failure from the operating system (a spawn or connect
    /// error), when there is any.
    pub detail: Option<String>,
    /// The successor, now the incumbent: yours to wait on. `None` unless
    /// committed (an aborted successor was stopped and reaped).
    pub child: Option<Child>,
    /// The incumbent's pid, as it announced it.
    pub incumbent_pid: Option<u32>,
    /// The successor's pid.
    pub successor_pid: Option<u32>,
    /// What the incumbent's `Drained` said.
    pub drained: Option<DrainReport>,
    /// The revisions the incumbent sealed.
    pub sealed_revisions: Option<Vec<u64>>,
    /// The fingerprint of the sealed data directory.
    pub fingerprint: Option<[u8; 32]>,
    /// Why the seal failed, in the incumbent's words.
    pub seal_error: Option<String>,
    /// Where the successor listens, as it reported.
    pub listening_on: Option<Vec<String>>,
    /// The successor's health check.
    pub healthz_ok: Option<bool>,
    /// The revisions the successor opened.
    pub advertised_revisions: Option<Vec<u64>>,
    /// What became of the incumbent.
    pub incumbent_fate: IncumbentFate,
    /// What became of the successor.
    pub successor_fate: SuccessorFate,
    /// Whether a journal write failed.
    pub journal_failed: bool,
    /// How many connects it took to reach the incumbent (more than one when
    /// the control socket path did not yet name the incumbent's socket).
    pub connect_attempts: u32,
    /// The probation window the successor served, if it was put on
    /// probation (the incumbent offered it and the spec asked for one).
    pub probation_window: Option<Duration>,
    /// How the health probe failed, when it rolled the successor back.
    pub probe_failure: Option<String>,
    /// Health probe attempts that passed during probation.
    pub probes_passed: u32,
    /// How many open connections the incumbent passed to the successor
    /// (`None`: nothing was set up for passing, because a peer did not
    /// offer it or the spec turned it off; docs/PROTOCOL.md section 11).
    pub connections_passed: Option<u32>,
    /// Time spent in each phase.
    pub timings: PhaseTimings,
}

impl HandoffOutcome {
    /// Whether the handoff committed.
    pub fn committed(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether the successor served (it sent `Ready`) and was then rolled
    /// back to the incumbent.
    pub fn rolled_back(&self) -> bool {
        self.result.is_err() && self.listening_on.is_some()
    }
}

/// Why a handoff could not even run.
#[derive(Debug)]
#[non_exhaustive]
pub enum SupervisorError {
    /// Another handoff is in flight on this supervisor.
    HandoffInProgress,
    /// A listener name is unusable (empty, duplicated, or contains `:`).
    Listener(SpawnError),
    /// The control socket path is unusable.
    SocketPath(io::Error),
    /// Waiting on the sockets failed.
    Io(io::Error),
    /// The journal could not be read.
    Journal(JournalError),
}

impl fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorError::HandoffInProgress => f.write_str(
                "a handoff is already in progress on this supervisor; wait for its outcome",
            ),
            SupervisorError::Listener(e) => write!(f, "listener: {e}"),
            SupervisorError::SocketPath(e) => write!(f, "control socket path: {e}"),
            SupervisorError::Io(e) => write!(f, "waiting on the handoff's sockets: {e}"),
            SupervisorError::Journal(e) => write!(f, "journal: {e}"),
        }
    }
}

impl std::error::Error for SupervisorError {}

/// One supervised daemon: its control socket, the listeners it inherits,
/// its journal.
pub struct Supervisor {
    control_socket: PathBuf,
    listeners: Vec<(String, OwnedFd)>,
    journal: Option<Journal>,
    config: SupervisorConfig,
    in_flight: AtomicBool,
    /// The pid of the process serving now, 0 while unknown: set by the
    /// caller for a daemon it started, and to the successor at each commit.
    incumbent_pid: AtomicU32,
    /// The writer of the last handoff's journal, still removing the record
    /// in the background; see [`Supervisor::defer_journal`].
    journal_tail: Mutex<Option<JournalWriter>>,
    /// A deferred journal operation failed since the last
    /// [`Supervisor::flush_journal`].
    journal_lost: AtomicBool,
    /// The successor serving on probation now, 0 if none.
    on_probation: AtomicU32,
}

impl fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Supervisor")
            .field("control_socket", &self.control_socket)
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor for the daemon whose control socket is at
    /// `control_socket`.
    pub fn new(control_socket: impl Into<PathBuf>) -> Result<Self, SupervisorError> {
        let control_socket = control_socket.into();
        control::validate_socket_path(&control_socket).map_err(SupervisorError::SocketPath)?;
        Ok(Supervisor {
            control_socket,
            listeners: Vec::new(),
            journal: None,
            config: SupervisorConfig::default(),
            in_flight: AtomicBool::new(false),
            incumbent_pid: AtomicU32::new(0),
            journal_tail: Mutex::new(None),
            journal_lost: AtomicBool::new(false),
            on_probation: AtomicU32::new(0),
        })
    }

    /// Adds a listener the successor inherits as `name`. The supervisor owns
    /// it from now on and keeps it open across handoffs, so the kernel's
    /// accept queue survives every swap.
    pub fn with_listener(
        mut self,
        name: impl Into<String>,
        listener: impl Into<OwnedFd>,
    ) -> Result<Self, SupervisorError> {
        let name = name.into();
        let names = self.listeners.iter().map(|(n, _)| n.as_str());
        validate_listener_names(names.chain(std::iter::once(name.as_str())))
            .map_err(SupervisorError::Listener)?;
        self.listeners.push((name, listener.into()));
        Ok(self)
    }

    /// Records each acknowledged step in a journal at `path`.
    pub fn with_journal(mut self, path: impl Into<PathBuf>) -> Self {
        self.journal = Some(Journal::new(path));
        self
    }

    /// Overrides the protocol timings (liveness, heartbeats, hello timeout,
    /// kill grace). The budgets come from each [`SpawnSpec`].
    pub fn with_config(mut self, config: SupervisorConfig) -> Self {
        self.config = config;
        self
    }

    /// The control socket path.
    pub fn control_socket(&self) -> &Path {
        &self.control_socket
    }

    /// Names the process that serves now (a daemon the caller started, or
    /// restarted after it died); `None` if it is not known. A handoff then
    /// talks only to that process: a socket of another process at the
    /// control path (the previous incumbent's, still there right after a
    /// commit) is hung up on and tried again within the hello timeout, like
    /// a path that names no live socket (which is retried whether a pid is
    /// known or not). Each committed handoff sets it to
    /// its successor by itself.
    pub fn set_incumbent_pid(&self, pid: Option<u32>) {
        self.incumbent_pid
            .store(pid.unwrap_or(0), Ordering::Release);
    }

    /// The successor of the handoff in flight while it serves on probation
    /// (docs/PROTOCOL.md section 10): its pid. `None` outside probation.
    pub fn successor_on_probation(&self) -> Option<u32> {
        match self.on_probation.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The process that serves now, as far as this supervisor knows: see
    /// [`Supervisor::set_incumbent_pid`].
    pub fn incumbent_pid(&self) -> Option<u32> {
        match self.incumbent_pid.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The core machine for one handoff to `spec`, for an adapter that runs
    /// the handoff itself: this supervisor's timings with the spec's
    /// budgets, a fresh id, and the incumbent it expects.
    pub fn new_handoff(&self, spec: &SpawnSpec) -> SupervisorHandoff<Vec<u8>> {
        let mut machine = SupervisorHandoff::new(
            clock::now(),
            handoff_config(self.config, spec),
            random_bytes(),
            unix_millis(),
        );
        if let Some(pid) = self.incumbent_pid() {
            machine.expect_incumbent(pid);
        }
        machine
    }

    /// The listeners, in the order the successor receives them.
    pub fn listeners(&self) -> impl Iterator<Item = PassedListener<'_>> {
        self.listeners.iter().map(|(name, fd)| PassedListener {
            name,
            fd: fd.as_fd(),
        })
    }

    /// Takes this supervisor's one in-flight slot, for an adapter that runs
    /// the handoff itself; released when the slot is dropped. A second claim
    /// meanwhile is `HandoffInProgress`.
    pub fn claim(&self) -> Result<HandoffSlot<'_>, SupervisorError> {
        self.in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| HandoffSlot(&self.in_flight))
            .map_err(|_| SupervisorError::HandoffInProgress)
    }

    /// [`Supervisor::claim`] for an adapter that keeps the supervisor in an
    /// `Arc` and the slot beside it (an event loop's handoff state).
    pub fn claim_shared(self: &Arc<Self>) -> Result<SharedHandoffSlot, SupervisorError> {
        self.in_flight
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map(|_| SharedHandoffSlot(self.clone()))
            .map_err(|_| SupervisorError::HandoffInProgress)
    }

    /// The journal, if any.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The protocol timings (the budgets come from each [`SpawnSpec`]).
    pub fn config(&self) -> SupervisorConfig {
        self.config
    }

    /// Starts the journal writer for a new handoff (for an adapter that runs
    /// the handoff itself), once the previous handoff's journal operations
    /// are on disk, so records of two handoffs never interleave. `None`
    /// without a journal, or if the writer's thread could not start.
    pub fn start_journal(&self) -> Option<JournalWriter> {
        let journal = self.journal.clone()?;
        self.wait_for_journal_tail();
        JournalWriter::start(journal).ok()
    }

    /// Takes a finished handoff's journal writer, whose last operation (the
    /// record's removal) is then completed in the background: the outcome
    /// is final before the journal is, and nobody waits for an fsync to
    /// learn it. The next handoff, [`Supervisor::flush_journal`],
    /// [`Supervisor::resume_from_journal`] and dropping the supervisor wait
    /// for it. Returns whether a journal operation is already known to have
    /// failed.
    pub fn defer_journal(&self, writer: JournalWriter) -> bool {
        let failed = writer.failed();
        self.wait_for_journal_tail();
        *lock_ignoring_poison(&self.journal_tail) = Some(writer);
        failed
    }

    /// Waits until the journal operations of past handoffs are on disk;
    /// `false` if any of them failed since the last call (the outcome of a
    /// handoff reports only the failures known when it returned).
    pub fn flush_journal(&self) -> bool {
        self.wait_for_journal_tail();
        !self.journal_lost.swap(false, Ordering::AcqRel)
    }

    fn wait_for_journal_tail(&self) {
        let tail = lock_ignoring_poison(&self.journal_tail).take();
        if let Some(writer) = tail
            && !writer.finish()
        {
            self.journal_lost.store(true, Ordering::Release);
        }
    }

    /// After a restart: reads what a crashed handoff left in the journal,
    /// and clears it. The peers need nothing from us: the incumbent undoes
    /// the handoff by itself when its session ends, and a successor that
    /// took the lock serves on. Returns the record, for the operator.
    pub fn resume_from_journal(&self) -> Result<Option<JournalRecord>, SupervisorError> {
        let Some(journal) = &self.journal else {
            return Ok(None);
        };
        self.wait_for_journal_tail();
        let record = journal.read().map_err(SupervisorError::Journal)?;
        if record.is_some() {
            journal
                .delete()
                .map_err(|e| SupervisorError::Journal(JournalError::Io(e)))?;
        }
        Ok(record)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // A record left behind would be reported as an interrupted handoff
        // by the next supervisor.
        self.wait_for_journal_tail();
    }
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data is an `Option` that is only ever taken or replaced whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn random_bytes() -> [u8; 16] {
    let mut buf = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut buf))
        .is_err()
    {
        // Unique enough for an id if the entropy source is missing: the
        // time and our pid. It is an identifier, not a secret.
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        buf[..16].copy_from_slice(&(t ^ u128::from(std::process::id())).to_le_bytes());
    }
    buf
}

/// A supervisor's in-flight slot, held while a handoff runs.
#[derive(Debug)]
pub struct HandoffSlot<'a>(&'a AtomicBool);

impl Drop for HandoffSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A supervisor's in-flight slot that owns a handle on it; see
/// [`Supervisor::claim_shared`].
#[derive(Debug)]
pub struct SharedHandoffSlot(Arc<Supervisor>);

impl Drop for SharedHandoffSlot {
    fn drop(&mut self) {
        self.0.in_flight.store(false, Ordering::Release);
    }
}

/// The core configuration of one handoff: the supervisor's timings with the
/// spec's budgets.
pub fn handoff_config(base: SupervisorConfig, spec: &SpawnSpec) -> SupervisorConfig {
    SupervisorConfig {
        deadline: spec.deadline,
        drain_grace: spec.drain_grace,
        startup_budget: spec.startup_budget,
        probation: spec.probation,
        pass_connections: base.pass_connections && spec.pass_connections,
        ..base
    }
}

/// Milliseconds since the Unix epoch, for the journal.
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Spawns `spec` as the successor of a handoff: makes the control
/// socketpair, passes the child its end and `listeners`, and returns our end
/// with the child. Shared by every adapter. The child's standard input is
/// `/dev/null` (a daemon reads none, and must not share the supervisor's
/// terminal); its output and error go where the supervisor's go.
///
/// The spawn is the unforked one ([`spawn_successor_vfork`]): a supervisor
/// holds a daemon's worth of state or a fleet of services, and a fork
/// would copy its page tables on the handoff's critical path.
pub fn spawn_for_handoff(
    spec: &SpawnSpec,
    listeners: &[PassedListener<'_>],
) -> Result<(UnixStream, Child), SpawnError> {
    let (ours, theirs) = control::socketpair().map_err(SpawnError::Io)?;
    let mut launch = Launch::new(&spec.binary);
    launch
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(ChildStdio::Null);
    let child = spawn_successor_vfork(launch, listeners, theirs.as_fd())?;
    // Our copy of the child's end closes here, so the child's exit is an
    // EOF on ours.
    drop(theirs);
    Ok((ours, child))
}

impl HandoffOutcome {
    /// The owned form of the core's outcome; `child` is attached by the
    /// caller. Shared by every adapter.
    pub fn from_core(
        o: &handoff_core::HandoffOutcomeRef<'_>,
        detail: Option<String>,
    ) -> HandoffOutcome {
        HandoffOutcome {
            handoff_id: o.handoff_id,
            result: o.result,
            detail,
            child: None,
            incumbent_pid: o.incumbent.pid,
            successor_pid: o.successor.pid,
            drained: o.drained,
            sealed_revisions: o.sealed.map(|s| s.last_revision_per_shard.iter().collect()),
            fingerprint: o.sealed.map(|s| s.data_dir_fingerprint),
            seal_error: o.seal_failure.map(|f| f.error.to_owned()),
            listening_on: o
                .ready
                .map(|r| r.listening_on.iter().map(str::to_owned).collect()),
            healthz_ok: o.ready.map(|r| r.healthz_ok),
            advertised_revisions: o
                .ready
                .map(|r| r.advertised_revision_per_shard.iter().collect()),
            incumbent_fate: o.incumbent_fate,
            successor_fate: o.successor_fate,
            journal_failed: o.journal_failed,
            connect_attempts: o.connect_attempts,
            probation_window: o.probation_window,
            probe_failure: o.probe_failure.map(str::to_owned),
            probes_passed: 0,
            connections_passed: o.connections_passed,
            timings: o.timings,
        }
    }
}

/// What one handoff keeps besides its connections: the successor process,
/// the journal writer, the clock of the whole handoff and the detail of an
/// error met outside the protocol.
///
/// Dropped before the handoff finished (an I/O error, a cancelled future, a
/// loop dropped with handoffs in flight), it kills and reaps the successor
/// and clears the journal record: nothing outlives an abandoned handoff, and
/// the incumbent, whose session closes with it, resumes by itself.
///
/// `S` is how the ledger reaches its [`Supervisor`]: `&Supervisor` or
/// `Arc<Supervisor>`.
pub(crate) struct HandoffLedger<S: std::ops::Deref<Target = Supervisor>> {
    sup: S,
    started: std::time::Instant,
    journal: Option<JournalWriter>,
    child: Option<Child>,
    detail: Option<String>,
}

impl<S: std::ops::Deref<Target = Supervisor>> fmt::Debug for HandoffLedger<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandoffLedger")
            .field("successor", &self.child.as_ref().map(Child::id))
            .field("journal", &self.journal.is_some())
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

/// What [`HandoffLedger::carry_out`] did with an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LedgerStep {
    /// Carried out.
    Done,
    /// A journal is configured but its writer could not start: tell the
    /// machine (`handle_journal_failed`).
    JournalFailed,
    /// Not one it carries out (it needs a connection, or ends the handoff):
    /// the adapter's.
    NotMine,
}

impl<S: std::ops::Deref<Target = Supervisor>> HandoffLedger<S> {
    /// Starts the books of a new handoff of `sup`: its clock, and its
    /// journal writer once the previous handoff's journal is on disk.
    pub(crate) fn new(sup: S) -> Self {
        // Without a writer thread the handoff goes on unjournaled and says
        // so in its outcome; the journal is for diagnosis only.
        let journal = sup.start_journal();
        HandoffLedger {
            sup,
            started: std::time::Instant::now(),
            journal,
            child: None,
            detail: None,
        }
    }

    /// The supervisor.
    pub(crate) fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    /// Carries out `SpawnSuccessor` for every adapter: spawns `spec` with
    /// `listeners`, gives our end of its socketpair to `register` (the
    /// adapter's: configure it, register it with its event loop), and
    /// reports to `machine`. A successor whose socket cannot be registered
    /// is killed and reaped at once and reported as not spawned: a process
    /// nobody can talk to must not run on beside the incumbent. Returns the
    /// registered connection and the successor's pid.
    pub(crate) fn spawn<C>(
        &mut self,
        machine: &mut SupervisorHandoff<Vec<u8>>,
        spec: &SpawnSpec,
        register: impl FnOnce(UnixStream) -> io::Result<C>,
    ) -> Option<(C, u32)> {
        let listeners: Vec<PassedListener<'_>> = self.sup.listeners().collect();
        let spawned = spawn_for_handoff(spec, &listeners)
            .map_err(|e| e.to_string())
            .and_then(|(ours, child)| match register(ours) {
                Ok(conn) => Ok((conn, child)),
                Err(e) => {
                    kill_and_reap(child);
                    Err(format!("{e} (registering its socket; it was stopped)"))
                }
            });
        match spawned {
            Ok((conn, child)) => {
                let pid = child.id();
                self.child = Some(child);
                crash::at("supervisor-after-spawn");
                machine.handle_spawned(clock::now(), pid);
                Some((conn, pid))
            }
            Err(e) => {
                self.note(format!("spawning {}: {e}", spec.binary.display()));
                machine.handle_spawn_failed(clock::now());
                None
            }
        }
    }

    /// Whether a successor process is ours to watch.
    pub(crate) fn has_successor(&self) -> bool {
        self.child.is_some()
    }

    /// The successor process, while it is ours.
    pub(crate) fn successor(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The successor exited (its pidfd or its socket said so): reaps it.
    pub(crate) fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Notes an error met outside the protocol (a connect or a spawn that
    /// failed), for the outcome's `detail`.
    pub(crate) fn note(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    /// Reports the result of the connect that `ConnectIncumbent` asked for
    /// to `machine`, and returns the connection to keep (`None` if there is
    /// none; a connection to another process's socket is kept only until
    /// the machine's `Disconnect`). The one place that sorts a failed
    /// connect into "not there yet, try again" and "give up", for every
    /// adapter.
    pub(crate) fn connected<C: AsFd>(
        &mut self,
        machine: &mut SupervisorHandoff<Vec<u8>>,
        result: io::Result<C>,
    ) -> Option<C> {
        let now = clock::now();
        let path = self.sup.control_socket();
        match result {
            Ok(conn) => {
                // An earlier attempt's error says nothing about this one.
                self.detail = None;
                match control::peer_credentials(&conn) {
                    Ok(cred) => machine.handle_connected_to(now, cred.pid),
                    Err(_) => machine.handle_connected(now),
                }
                Some(conn)
            }
            Err(e) => {
                self.note(format!("connecting to {}: {e}", path.display()));
                if control::is_not_listening(&e) {
                    machine.handle_connect_refused(now);
                } else {
                    machine.handle_connect_failed(now);
                }
                None
            }
        }
    }

    /// Carries out the outputs that need no connection: signals to the
    /// successor and the journal's records.
    pub(crate) fn carry_out(&mut self, out: &SupervisorOutput<'_>) -> LedgerStep {
        match out {
            SupervisorOutput::Signal(signal) => {
                if let Some(child) = &self.child {
                    let _ = send_signal(child.id(), *signal);
                }
                LedgerStep::Done
            }
            SupervisorOutput::WriteJournal(record) => match &self.journal {
                Some(j) => {
                    j.write(*record);
                    LedgerStep::Done
                }
                None if self.sup.journal().is_some() => LedgerStep::JournalFailed,
                None => LedgerStep::Done,
            },
            SupervisorOutput::ClearJournal => {
                if let Some(j) = &self.journal {
                    j.clear();
                }
                LedgerStep::Done
            }
            _ => LedgerStep::NotMine,
        }
    }

    /// The owned outcome of a finished handoff, with its total time and
    /// whether its journal failed. The journal's last operation completes in
    /// the background ([`Supervisor::defer_journal`]). A committed successor
    /// goes to the outcome; any other is killed if still running and reaped:
    /// the machine finishes an abort only once it is gone or SIGKILL went
    /// unanswered, and a zombie is never left either way.
    pub(crate) fn finish(&mut self, o: &handoff_core::HandoffOutcomeRef<'_>) -> HandoffOutcome {
        self.sup.on_probation.store(0, Ordering::Release);
        let mut outcome = HandoffOutcome::from_core(o, self.detail.take());
        outcome.timings = outcome.timings.with_total(self.started.elapsed());
        if let Some(j) = self.journal.take()
            && self.sup.defer_journal(j)
        {
            outcome.journal_failed = true;
        }
        if let Some(child) = self.child.take() {
            if o.result.is_ok() {
                self.sup.set_incumbent_pid(Some(child.id()));
                outcome.child = Some(child);
            } else {
                kill_and_reap(child);
            }
        }
        outcome
    }

    /// The successor `pid` serves on probation.
    pub(crate) fn on_probation(&self, pid: u32) {
        self.sup.on_probation.store(pid, Ordering::Release);
    }
}

impl<S: std::ops::Deref<Target = Supervisor>> Drop for HandoffLedger<S> {
    fn drop(&mut self) {
        self.sup.on_probation.store(0, Ordering::Release);
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
        if let Some(journal) = self.journal.take() {
            journal.clear();
            self.sup.defer_journal(journal);
        }
    }
}

/// One handoff, carried out for any adapter: the core machine, its two
/// connections, the successor and its exit, the journal. The adapter
/// watches what the driver asks through [`Io`] and passes on readiness
/// ([`SupervisorDriver::handle_readable`], [`SupervisorDriver::handle_writable`])
/// and time ([`SupervisorDriver::handle_timeout`] whenever
/// [`SupervisorDriver::poll_timeout`] passes, and after every wake-up),
/// until [`SupervisorDriver::take_outcome`] has the outcome.
///
/// Rules every adapter follows because they are here:
///
/// - the connect to the incumbent never waits: a full accept queue, a
///   missing path and a refused connect are retried by the machine within
///   the hello timeout (docs/PROTOCOL.md section 6.4);
/// - writes are queued and bounded ([`crate::link::WRITE_TIMEOUT`],
///   [`crate::link::MAX_UNSENT`]): a peer that stops reading is hung up on;
/// - a successor whose connection cannot be watched is killed and reaped at
///   once, and reported as not spawned;
/// - the deadlines are looked at after every wake-up, so a peer that never
///   stops sending cannot hold them off.
///
/// Dropped before the outcome (an I/O error, a cancelled future, a loop
/// dropped with handoffs in flight), it kills and reaps the successor and
/// clears the journal record: nothing outlives an abandoned handoff, and
/// the incumbent, whose session closes with it, resumes by itself.
///
/// `S` is how the driver reaches its [`Supervisor`]: `&Supervisor` or
/// `Arc<Supervisor>`. Claim the supervisor's slot ([`Supervisor::claim`])
/// first.
pub struct SupervisorDriver<S: std::ops::Deref<Target = Supervisor>> {
    /// First to drop: an abandoned handoff's successor is stopped before
    /// the incumbent's session closes and it takes the lock back.
    ledger: HandoffLedger<S>,
    spec: SpawnSpec,
    machine: SupervisorHandoff<Vec<u8>>,
    incumbent: Option<Link>,
    successor: Option<Link>,
    exit: Option<ExitWatch>,
    outcome: Option<HandoffOutcome>,
    finished: bool,
    /// Connections whose read budget ran out with bytes still waiting.
    unread: [bool; 2],
    /// The health probe, while the successor is on probation.
    probe: Option<ProbeRunner>,
    probe_started: bool,
    probes_passed: u32,
    /// The pass channel's second end, between its two `PassChannel`s.
    channel_end: Option<OwnedFd>,
}

impl<S: std::ops::Deref<Target = Supervisor>> fmt::Debug for SupervisorDriver<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorDriver")
            .field("step", &self.machine.step())
            .field("ledger", &self.ledger)
            .finish_non_exhaustive()
    }
}

fn index(peer: Side) -> usize {
    match peer {
        Side::Incumbent => 0,
        Side::Successor => 1,
    }
}

impl<S: std::ops::Deref<Target = Supervisor>> SupervisorDriver<S> {
    /// A new handoff of `sup`'s daemon to `spec`: a fresh id, the
    /// supervisor's timings with the spec's budgets, the incumbent it
    /// expects, and a journal writer once the previous handoff's journal is
    /// on disk. Nothing happens until [`SupervisorDriver::start`].
    pub fn new(sup: S, spec: SpawnSpec) -> Self {
        // A test's misspelt crash point stops the process here, not never.
        crash::check();
        let machine = sup.new_handoff(&spec);
        SupervisorDriver {
            ledger: HandoffLedger::new(sup),
            spec,
            machine,
            incumbent: None,
            successor: None,
            exit: None,
            outcome: None,
            finished: false,
            unread: [false; 2],
            probe: None,
            probe_started: false,
            probes_passed: 0,
            channel_end: None,
        }
    }

    /// The supervisor.
    pub fn supervisor(&self) -> &Supervisor {
        self.ledger.supervisor()
    }

    /// Carries out the first outputs (the connect to the incumbent).
    pub fn start(&mut self, io: &mut impl Io) {
        self.settle(io);
    }

    /// Whether the handoff is over (its outcome may already be taken).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The outcome, once the handoff is over; `None` before and after it
    /// was taken.
    pub fn take_outcome(&mut self) -> Option<HandoffOutcome> {
        self.outcome.take()
    }

    /// When [`SupervisorDriver::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if self.finished {
            return None;
        }
        if self.unread.contains(&true) {
            return Some(std::time::Instant::now());
        }
        let mut t = self.machine.poll_timeout();
        for link in [&self.incumbent, &self.successor].into_iter().flatten() {
            t = earliest(t, link.stall_deadline());
        }
        if self.ledger.has_successor() && self.exit.is_none() {
            // No pidfd on this kernel: look at the child this often.
            t = earliest(t, Some(clock::now() + EXIT_POLL_INTERVAL));
        }
        if self.probe.is_some() {
            // The probe's thread answers over a channel, looked at this often.
            t = earliest(t, Some(clock::now() + PROBE_POLL_INTERVAL));
        }
        t.map(clock::to_std)
    }

    /// `source` is readable (or hung up).
    pub fn handle_readable(&mut self, io: &mut impl Io, source: Source) {
        match source {
            Source::Incumbent => self.read(io, Side::Incumbent),
            Source::Successor => self.read(io, Side::Successor),
            Source::Exit => {
                // Only while watched: readiness left over from a batch the
                // adapter collected earlier says nothing about a successor
                // whose exit was already handled.
                if let Some(watch) = self.exit.take() {
                    io.unwatch(Source::Exit, watch.as_fd());
                    self.ledger.reap();
                    self.machine.handle_successor_exited(clock::now());
                }
            }
            Source::Listener | Source::Control => {}
        }
        self.after_wake(io);
    }

    /// `source` has room to write.
    pub fn handle_writable(&mut self, io: &mut impl Io, source: Source) {
        let peer = match source {
            Source::Incumbent => Side::Incumbent,
            Source::Successor => Side::Successor,
            _ => return,
        };
        let now = clock::now();
        if let Some(link) = self.link(peer).as_mut()
            && link.flush(io, now).is_err()
        {
            self.hang_up(io, peer);
        }
        self.after_wake(io);
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, io: &mut impl Io) {
        if self.finished {
            return;
        }
        let now = clock::now();
        for peer in [Side::Incumbent, Side::Successor] {
            if self.link(peer).as_ref().is_some_and(|l| l.stalled(now)) {
                self.hang_up(io, peer);
            }
        }
        if self.exit.is_none()
            && let Some(child) = self.ledger.successor()
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            // No pidfd on this kernel: the child is looked at on every
            // timeout instead.
            self.ledger.reap();
            self.machine.handle_successor_exited(now);
        }
        for peer in [Side::Incumbent, Side::Successor] {
            if std::mem::take(&mut self.unread[index(peer)]) {
                self.read(io, peer);
            }
        }
        self.after_wake(io);
    }

    fn after_wake(&mut self, io: &mut impl Io) {
        if self.finished {
            return;
        }
        // On probation the window's end commits: a successor that died
        // while this process was not running (stopped, descheduled) must be
        // seen dead first, whatever order the wake-up's events came in.
        if self.machine.on_probation()
            && let Some(watch) = self.exit.take_if(|w| w.has_exited())
        {
            io.unwatch(Source::Exit, watch.as_fd());
            self.ledger.reap();
            self.machine.handle_successor_exited(clock::now());
        }
        // After every wake-up, not only the timer's: a peer that never
        // stops sending must not hold off the deadlines (an early call does
        // nothing).
        self.machine.handle_timeout(clock::now());
        self.settle(io);
        if self.watch_probation() {
            self.settle(io);
        }
    }

    /// Starts the health probe when the successor goes on probation and
    /// passes its verdicts to the machine; whether the machine was told
    /// something (its outputs then wait).
    fn watch_probation(&mut self) -> bool {
        if self.finished || !self.machine.on_probation() {
            return false;
        }
        let now = clock::now();
        if !self.probe_started {
            self.probe_started = true;
            if let Some(pid) = self.machine.successor_pid() {
                self.ledger.on_probation(pid);
            }
            if let (Some(probe), Some(pid)) =
                (self.spec.probe.clone(), self.machine.successor_pid())
            {
                match ProbeRunner::start(probe, pid) {
                    Ok(runner) => self.probe = Some(runner),
                    Err(e) => {
                        // Unprobed is not "healthy": the successor goes.
                        self.machine
                            .handle_probe_failed(now, &format!("the probe could not start: {e}"));
                        return true;
                    }
                }
            }
        }
        let Some(runner) = &self.probe else {
            return false;
        };
        while let Some(verdict) = runner.poll() {
            match verdict {
                Verdict::Passed => self.probes_passed += 1,
                Verdict::Failed(detail) => {
                    self.probe = None;
                    self.machine.handle_probe_failed(now, &detail);
                    return true;
                }
            }
        }
        false
    }

    fn link(&mut self, peer: Side) -> &mut Option<Link> {
        match peer {
            Side::Incumbent => &mut self.incumbent,
            Side::Successor => &mut self.successor,
        }
    }

    /// The connection to `peer` failed or its peer stopped reading: close
    /// it and tell the machine.
    fn hang_up(&mut self, io: &mut impl Io, peer: Side) {
        if let Some(link) = self.link(peer).take() {
            link.close(io);
        }
        self.machine.handle_closed(clock::now(), peer);
    }

    /// Reads what `peer` sent, up to the read budget, and hands it to the
    /// machine frame by frame.
    fn read(&mut self, io: &mut impl Io, peer: Side) {
        let mut budget = READ_BUDGET;
        loop {
            if self.finished {
                return;
            }
            let Some(link) = self.link(peer).as_mut() else {
                return;
            };
            if link.inbox.is_empty() {
                if budget == 0 {
                    self.unread[index(peer)] = true;
                    return;
                }
                match link.read() {
                    Read::Data(n) => budget = budget.saturating_sub(n),
                    Read::WouldBlock => return,
                    Read::Closed => {
                        self.hang_up(io, peer);
                        self.settle(io);
                        return;
                    }
                }
            }
            self.settle(io);
        }
    }

    /// Carries out every output, feeding bytes already read one frame at a
    /// time, until the machine waits for something.
    fn settle(&mut self, io: &mut impl Io) {
        loop {
            self.carry_out(io);
            if self.finished {
                return;
            }
            let fed = [Side::Incumbent, Side::Successor].into_iter().any(|peer| {
                let link = match peer {
                    Side::Incumbent => &mut self.incumbent,
                    Side::Successor => &mut self.successor,
                };
                match link {
                    Some(l) if !l.inbox.is_empty() => {
                        let machine = &mut self.machine;
                        l.feed("supervisor", |b| {
                            machine.handle_input(clock::now(), peer, b)
                        });
                        true
                    }
                    _ => false,
                }
            });
            if !fed {
                return;
            }
        }
    }

    /// Carries out every queued output.
    fn carry_out(&mut self, io: &mut impl Io) {
        while let Some(out) = self.machine.poll_output() {
            let now = clock::now();
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    let path = self.ledger.supervisor().control_socket();
                    let result = control::connect_nonblocking(path);
                    let Some(stream) = self.ledger.connected(&mut self.machine, result) else {
                        continue;
                    };
                    // The machine connects again only after it let go of
                    // the last connection, but a watch must never leak.
                    if let Some(old) = self.incumbent.take() {
                        old.close(io);
                    }
                    match Link::open(io, Source::Incumbent, stream) {
                        Ok(link) => self.incumbent = Some(link),
                        Err(e) => {
                            self.ledger
                                .note(format!("watching the connection to the incumbent: {e}"));
                            self.machine.handle_closed(now, Side::Incumbent);
                        }
                    }
                }
                SupervisorOutput::Transmit { to, frame } => {
                    // Fields, not `link()`: `frame` borrows the machine.
                    let link = match to {
                        Side::Incumbent => &mut self.incumbent,
                        Side::Successor => &mut self.successor,
                    };
                    let sent = match link.as_mut() {
                        Some(l) => l.send(io, now, frame).is_ok(),
                        None => false,
                    };
                    if sent {
                        crash::sent("supervisor", frame);
                    } else {
                        if let Some(l) = link.take() {
                            l.close(io);
                        }
                        self.machine.handle_closed(now, to);
                    }
                }
                SupervisorOutput::TransmitWithChannelEnd { to, frame } => {
                    // One socketpair per handoff: its first end goes with
                    // the first `PassChannel`, the other with the second,
                    // and this process keeps neither. Without a pair the
                    // frames go bare; the successor, sent no channel, fails
                    // its start and the handoff is undone.
                    let end = match self.channel_end.take() {
                        Some(end) => Some(end),
                        None => UnixStream::pair().ok().map(|(a, b)| {
                            self.channel_end = Some(b.into());
                            OwnedFd::from(a)
                        }),
                    };
                    let link = match to {
                        Side::Incumbent => &mut self.incumbent,
                        Side::Successor => &mut self.successor,
                    };
                    let sent = match link.as_mut() {
                        Some(l) => l
                            .send_with_fds(io, now, frame, end.into_iter().collect())
                            .is_ok(),
                        None => false,
                    };
                    if !sent {
                        if let Some(l) = link.take() {
                            l.close(io);
                        }
                        self.machine.handle_closed(now, to);
                    }
                }
                SupervisorOutput::SpawnSuccessor => {
                    let spawned = self.ledger.spawn(&mut self.machine, &self.spec, |stream| {
                        Link::open(io, Source::Successor, stream)
                    });
                    if let Some((link, pid)) = spawned {
                        // Without a pidfd (old kernels) the child is looked
                        // at on every timeout, and its exit also shows as
                        // EOF on the socketpair.
                        self.exit = ExitWatch::new(pid)
                            .ok()
                            .filter(|w| io.watch(Source::Exit, w.as_fd(), false).is_ok());
                        self.successor = Some(link);
                    }
                }
                SupervisorOutput::Disconnect(peer) => {
                    let link = match peer {
                        Side::Incumbent => &mut self.incumbent,
                        Side::Successor => &mut self.successor,
                    };
                    if let Some(l) = link.take() {
                        l.close(io);
                    }
                }
                SupervisorOutput::Finished(o) => {
                    // Stops the probe's thread.
                    self.probe = None;
                    let mut outcome = self.ledger.finish(&o);
                    outcome.probes_passed = self.probes_passed;
                    for link in [self.incumbent.take(), self.successor.take()]
                        .into_iter()
                        .flatten()
                    {
                        link.close(io);
                    }
                    if let Some(watch) = self.exit.take() {
                        io.unwatch(Source::Exit, watch.as_fd());
                    }
                    self.outcome = Some(outcome);
                    self.finished = true;
                    return;
                }
                other => {
                    if self.ledger.carry_out(&other) == LedgerStep::JournalFailed {
                        self.machine.handle_journal_failed(now);
                    }
                }
            }
        }
    }
}

fn earliest(
    a: Option<handoff_core::Instant>,
    b: Option<handoff_core::Instant>,
) -> Option<handoff_core::Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
