//! The supervisor's blocking driver: [`Supervisor::perform_handoff`] runs
//! one handoff to its end on the calling thread, with `poll(2)` over the two
//! control sockets and a pidfd for the successor's exit, so it needs no
//! thread, no signal handler and no sleep.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handoff_core::{
    AbortReason, DrainReport, HandoffId, IncumbentFate, JournalRecord, Peer, PhaseTimings,
    SuccessorFate, SupervisorConfig, SupervisorHandoff, SupervisorOutput, defaults,
};

use crate::clock;
use crate::conn::{self, Inbox};
use crate::crash;
use crate::os::control::{self, send_frame};
use crate::os::journal::{Journal, JournalError, JournalWriter};
use crate::os::process::{EXIT_POLL_INTERVAL, ExitWatch, kill_and_reap, send_signal};
use crate::os::spawn::{PassedListener, SpawnError, spawn_successor, validate_listener_names};

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
    /// Time spent in each phase.
    pub timings: PhaseTimings,
}

impl HandoffOutcome {
    /// Whether the handoff committed.
    pub fn committed(&self) -> bool {
        self.result.is_ok()
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

    /// Runs one handoff to its end. `Ok` holds the outcome whether it
    /// committed or rolled back; `Err` means it could not start (another is
    /// in flight) or the wait itself failed. With a journal, the record's
    /// final removal may still be reaching the disk when this returns; see
    /// [`Supervisor::flush_journal`].
    pub fn perform_handoff(&self, spec: SpawnSpec) -> Result<HandoffOutcome, SupervisorError> {
        let _slot = self.claim()?;
        Run::new(self, spec).run()
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

fn random_bytes() -> [u8; 16] {
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
pub fn spawn_for_handoff(
    spec: &SpawnSpec,
    listeners: &[PassedListener<'_>],
) -> Result<(UnixStream, Child), SpawnError> {
    let (ours, theirs) = control::socketpair().map_err(SpawnError::Io)?;
    let mut cmd = Command::new(&spec.binary);
    cmd.args(&spec.args).stdin(std::process::Stdio::null());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = spawn_successor(cmd, listeners, theirs.as_fd())?;
    // Our copy of the child's end closes here, so the child's exit is an
    // EOF on ours.
    drop(theirs);
    Ok((ours, child))
}

impl HandoffOutcome {
    /// The owned form of the core's outcome; `child` is attached by the
    /// caller. Shared by every adapter.
    pub fn from_core(o: &handoff_core::Outcome<'_>, detail: Option<String>) -> HandoffOutcome {
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
            timings: o.timings,
        }
    }
}

/// What one handoff keeps besides its connections, the same under every
/// adapter: the successor process, the journal writer, the clock of the
/// whole handoff and the detail of an error met outside the protocol.
/// An adapter keeps one per handoff in flight, passes it the outputs that
/// need no connection ([`HandoffLedger::carry_out`]) and the finish
/// ([`HandoffLedger::finish`]).
///
/// Dropped before the handoff finished (an I/O error, a cancelled future, a
/// loop dropped with handoffs in flight), it kills and reaps the successor
/// and clears the journal record: nothing outlives an abandoned handoff, and
/// the incumbent, whose session closes with it, resumes by itself.
///
/// `S` is how the ledger reaches its [`Supervisor`]: `&Supervisor` or
/// `Arc<Supervisor>`.
pub struct HandoffLedger<S: std::ops::Deref<Target = Supervisor>> {
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
pub enum LedgerStep {
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
    pub fn new(sup: S) -> Self {
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
    pub fn supervisor(&self) -> &Supervisor {
        &self.sup
    }

    /// Carries out `SpawnSuccessor` for every adapter: spawns `spec` with
    /// `listeners`, gives our end of its socketpair to `register` (the
    /// adapter's: configure it, register it with its event loop), and
    /// reports to `machine`. A successor whose socket cannot be registered
    /// is killed and reaped at once and reported as not spawned: a process
    /// nobody can talk to must not run on beside the incumbent. Returns the
    /// registered connection and the successor's pid.
    pub fn spawn<C>(
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
                crash::at("s-after-spawn");
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
    pub fn has_successor(&self) -> bool {
        self.child.is_some()
    }

    /// The successor process, while it is ours.
    pub fn successor(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// The successor exited (its pidfd or its socket said so): reaps it.
    pub fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Notes an error met outside the protocol (a connect or a spawn that
    /// failed), for the outcome's `detail`.
    pub fn note(&mut self, detail: String) {
        self.detail = Some(detail);
    }

    /// Reports the result of the connect that `ConnectIncumbent` asked for
    /// to `machine`, and returns the connection to keep (`None` if there is
    /// none; a connection to another process's socket is kept only until
    /// the machine's `Disconnect`). The one place that sorts a failed
    /// connect into "not there yet, try again" and "give up", for every
    /// adapter.
    pub fn connected<C: AsFd>(
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
    pub fn carry_out(&mut self, out: &SupervisorOutput<'_>) -> LedgerStep {
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
    pub fn finish(&mut self, o: &handoff_core::Outcome<'_>) -> HandoffOutcome {
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
}

impl<S: std::ops::Deref<Target = Supervisor>> Drop for HandoffLedger<S> {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            kill_and_reap(child);
        }
        if let Some(journal) = self.journal.take() {
            journal.clear();
            self.sup.defer_journal(journal);
        }
    }
}

/// The state of one `perform_handoff` call.
struct Run<'a> {
    sup: &'a Supervisor,
    /// Before the connections: an abandoned handoff's successor is stopped
    /// before the incumbent's session closes and it takes the lock back.
    ledger: HandoffLedger<&'a Supervisor>,
    spec: SpawnSpec,
    machine: SupervisorHandoff<Vec<u8>>,
    incumbent: Option<UnixStream>,
    successor: Option<UnixStream>,
    exit_watch: Option<ExitWatch>,
    inbox_incumbent: Inbox,
    inbox_successor: Inbox,
}

impl<'a> Run<'a> {
    fn new(sup: &'a Supervisor, spec: SpawnSpec) -> Self {
        Run {
            sup,
            ledger: HandoffLedger::new(sup),
            machine: sup.new_handoff(&spec),
            spec,
            incumbent: None,
            successor: None,
            exit_watch: None,
            inbox_incumbent: Inbox::new(),
            inbox_successor: Inbox::new(),
        }
    }

    fn run(mut self) -> Result<HandoffOutcome, SupervisorError> {
        loop {
            if let Some(outcome) = self.carry_out() {
                return Ok(outcome);
            }
            // Bytes already read go in first, one frame per call.
            if !self.inbox_incumbent.is_empty() {
                let used = self.machine.handle_input(
                    clock::now(),
                    Peer::Incumbent,
                    self.inbox_incumbent.pending(),
                );
                self.inbox_incumbent.consume(used);
                continue;
            }
            if !self.inbox_successor.is_empty() {
                let used = self.machine.handle_input(
                    clock::now(),
                    Peer::Successor,
                    self.inbox_successor.pending(),
                );
                self.inbox_successor.consume(used);
                continue;
            }
            self.wait()?;
        }
    }

    fn wait(&mut self) -> Result<(), SupervisorError> {
        let mut deadline = self.machine.poll_timeout();
        if self.ledger.has_successor() && self.exit_watch.is_none() {
            // No pidfd on this kernel: look at the child at least this often.
            let soon = clock::now() + EXIT_POLL_INTERVAL;
            deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        let ready = conn::wait(
            &[
                self.incumbent.as_ref().map(|s| s.as_fd()),
                self.successor.as_ref().map(|s| s.as_fd()),
                self.exit_watch.as_ref().map(|w| w.as_fd()),
            ],
            deadline,
        )
        .map_err(SupervisorError::Io)?;
        let now = clock::now();
        if ready[0] {
            self.read(Peer::Incumbent);
        }
        if ready[1] {
            self.read(Peer::Successor);
        }
        if ready[2] {
            self.reap(now);
        }
        if self.exit_watch.is_none()
            && let Some(child) = self.ledger.successor()
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            self.reap(now);
        }
        // Also when something was ready: a peer that never stops sending
        // must not hold off the deadlines (an early call does nothing).
        self.machine.handle_timeout(clock::now());
        Ok(())
    }

    fn read(&mut self, peer: Peer) {
        let (stream, inbox) = match peer {
            Peer::Incumbent => (&mut self.incumbent, &mut self.inbox_incumbent),
            Peer::Successor => (&mut self.successor, &mut self.inbox_successor),
        };
        let Some(s) = stream.as_mut() else { return };
        match inbox.fill(s) {
            Ok(0) | Err(_) => {
                *stream = None;
                self.machine.handle_closed(clock::now(), peer);
            }
            Ok(_) => {}
        }
    }

    /// The successor exited: reap it and say so.
    fn reap(&mut self, now: handoff_core::Instant) {
        self.exit_watch = None;
        self.ledger.reap();
        self.machine.handle_successor_exited(now);
    }

    /// Carries out every queued output; returns the outcome once finished.
    fn carry_out(&mut self) -> Option<HandoffOutcome> {
        while let Some(out) = self.machine.poll_output() {
            let now = clock::now();
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    let bound = self.sup.config.hello_timeout;
                    let result = control::connect_within(&self.sup.control_socket, bound)
                        .and_then(conn::configured);
                    self.incumbent = self.ledger.connected(&mut self.machine, result);
                }
                SupervisorOutput::Transmit { to, frame } => {
                    let stream = match to {
                        Peer::Incumbent => self.incumbent.as_ref(),
                        Peer::Successor => self.successor.as_ref(),
                    };
                    let sent = stream.is_some_and(|s| send_frame(s, frame).is_ok());
                    if sent {
                        crash::frame('s', true, frame);
                    } else {
                        self.machine.handle_closed(now, to);
                    }
                }
                SupervisorOutput::SpawnSuccessor => {
                    let spawned =
                        self.ledger
                            .spawn(&mut self.machine, &self.spec, conn::configured);
                    if let Some((conn, pid)) = spawned {
                        // Without a pidfd (old kernels) the exit still shows
                        // as EOF on the socketpair, and the final reap waits
                        // for it.
                        self.exit_watch = ExitWatch::new(pid).ok();
                        self.successor = Some(conn);
                    }
                }
                SupervisorOutput::Disconnect(peer) => match peer {
                    Peer::Incumbent => self.incumbent = None,
                    Peer::Successor => self.successor = None,
                },
                SupervisorOutput::Finished(o) => {
                    let outcome = self.ledger.finish(&o);
                    self.incumbent = None;
                    self.successor = None;
                    self.exit_watch = None;
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
