//! The supervisor's side of one handoff.
//!
//! [`SupervisorHandoff`] drives one handoff from connecting to the incumbent
//! until it either commits or has rolled everything back. It talks to two
//! peers, the incumbent (over its control socket) and the successor (over the
//! socketpair it was spawned with), and asks its adapter to connect, spawn,
//! signal, journal and disconnect. It gives up on a step when that step's
//! budget runs out, when the peer that owes an answer falls silent for the
//! liveness limit, when a peer closes or breaks the protocol, or when the
//! successor exits, and every way out of a started handoff ends with the
//! successor stopped and reaped and the incumbent told to serve again, before
//! [`SupervisorOutput::Finished`] is emitted.

use core::fmt;
use core::time::Duration;

use crate::buffer::{Buffer, DefaultBuffer};
use crate::error::FrameError;
use crate::frame::{Frame, FrameDecoder};
use crate::journal::{JournalPhase, JournalRecord};
use crate::machine::{
    Beat, DrainReport, Outbox, Popped, ReadyReportRef, SealFailure, SealReportRef, ShortText,
    Violation, defaults,
};
use crate::message::{Message, Revisions, Strings};
use crate::time::{Instant, earliest};
use crate::wire::{
    Capabilities, HandoffId, LEN_PREFIX, MessageKind, PROTO_MAX, PROTO_MIN, ProtoVersion, Side,
    VERSION_FIELD, VersionMismatch, negotiate_version,
};

/// How long a successor on probation that closed its socket is given for
/// its exit to be reported, before the close itself rolls it back.
const CLOSE_BEFORE_EXIT: Duration = Duration::from_millis(250);

/// A signal for the successor process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `SIGTERM`: exit now, cleanly.
    Terminate,
    /// `SIGKILL`: it did not exit within the grace.
    Kill,
}

/// Budgets and timings of one handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// The whole handoff, from start until `Ready`.
    pub deadline: Duration,
    /// The incumbent's drain.
    pub drain_grace: Duration,
    /// From spawning the successor until its `Hello`: the start-up work it
    /// does while the incumbent still serves. Bounded by `deadline`.
    pub startup_budget: Duration,
    /// From connecting until the incumbent's `Hello`.
    pub hello_timeout: Duration,
    /// Silence from the incumbent, while it owes an answer, that means it is
    /// dead or hung.
    pub liveness: Duration,
    /// How often a peer waiting on this supervisor hears from it.
    pub heartbeat_interval: Duration,
    /// Added to the drain, seal and ready budgets for a reply already sent.
    pub wire_slack: Duration,
    /// Between `SIGTERM` and `SIGKILL` when stopping the successor.
    pub kill_grace: Duration,
    /// After `Ready`, how long the successor serves on probation before
    /// `Commit` (docs/PROTOCOL.md section 10): while it lasts the sealed
    /// incumbent stays alive, and a successor that exits, freezes or fails
    /// its health probe is rolled back to it. Zero, or an incumbent that
    /// did not offer [`Capabilities::PROBATION`], commits at `Ready`.
    pub probation: Duration,
    /// Silence from a successor on probation that offered
    /// [`Capabilities::PROBATION`] (it heartbeats) that rolls it back.
    pub probation_liveness: Duration,
    /// Whether open connections are passed from the incumbent to the
    /// successor when both offer [`Capabilities::PASS_CONNECTIONS`]
    /// (docs/PROTOCOL.md section 11). On by default; off, both get
    /// today's drain.
    pub pass_connections: bool,
    /// Features this supervisor offers. Nothing reads it: `HelloAck` has
    /// no field for it, so only the peers' offers decide.
    pub capabilities: Capabilities,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            deadline: defaults::DEADLINE,
            drain_grace: defaults::DRAIN_GRACE,
            startup_budget: defaults::STARTUP_BUDGET,
            hello_timeout: defaults::HELLO_TIMEOUT,
            liveness: defaults::LIVENESS,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            wire_slack: defaults::WIRE_SLACK,
            kill_grace: defaults::KILL_GRACE,
            // The library's default is the protocol alone; the supervisor
            // binary turns probation on by default (its README says why).
            probation: Duration::ZERO,
            probation_liveness: defaults::PROBATION_LIVENESS,
            pass_connections: true,
            capabilities: Capabilities::NONE,
        }
    }
}

/// Where a handoff stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SupervisorStep {
    /// Waiting for the adapter to connect to the incumbent.
    ConnectingIncumbent,
    /// Waiting for the incumbent's `Hello`.
    AwaitingIncumbentHello,
    /// Waiting for the adapter to spawn the successor.
    SpawningSuccessor,
    /// Waiting for the successor's `Hello` (its start-up).
    AwaitingSuccessorHello,
    /// `PrepareHandoff` sent; waiting for `Drained`.
    Draining,
    /// `SealRequest` sent; waiting for `SealComplete` or `SealFailed`.
    Sealing,
    /// `Begin` sent; waiting for `Ready`.
    AwaitingReady,
    /// `Ready` received; the successor serves on probation while the sealed
    /// incumbent waits, alive, for `Commit` or `ResumeAfterAbort`.
    Probation,
    /// Rolling back: waiting for the successor to exit.
    Aborting,
    /// Finished, committed or aborted.
    Done,
}

impl SupervisorStep {
    /// What the supervisor waits for in this step, for messages.
    pub fn awaiting(self) -> &'static str {
        match self {
            SupervisorStep::ConnectingIncumbent => "the connection to the incumbent",
            SupervisorStep::AwaitingIncumbentHello => "the incumbent's Hello",
            SupervisorStep::SpawningSuccessor => "the successor to be spawned",
            SupervisorStep::AwaitingSuccessorHello => "the successor's Hello",
            SupervisorStep::Draining => "Drained",
            SupervisorStep::Sealing => "SealComplete or SealFailed",
            SupervisorStep::AwaitingReady => "Ready",
            SupervisorStep::Probation => "the end of the probation window",
            SupervisorStep::Aborting => "the successor to exit",
            SupervisorStep::Done => "nothing (the handoff is over)",
        }
    }
}

/// Why a handoff did not commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbortReason {
    /// The incumbent's control socket could not be reached.
    IncumbentUnreachable,
    /// Until the hello timeout ran out, the control socket path named a
    /// socket that another process listens on, not the incumbent's.
    ControlSocketNotIncumbent {
        /// The process that listens there (`SO_PEERCRED`).
        listener_pid: u32,
        /// The incumbent the handoff is from.
        incumbent_pid: u32,
    },
    /// The incumbent sent no `Hello` within the hello timeout.
    IncumbentHelloTimeout,
    /// The incumbent closed the connection or died.
    IncumbentClosed {
        /// The step the handoff was in.
        step: SupervisorStep,
    },
    /// The incumbent owed an answer and sent nothing for the liveness limit.
    IncumbentUnresponsive {
        /// The step the handoff was in.
        step: SupervisorStep,
    },
    /// The successor could not be spawned.
    SpawnFailed,
    /// The successor sent no `Hello` within its start-up budget.
    SuccessorStartupTimeout,
    /// The successor closed its socket before `Ready`.
    SuccessorClosed {
        /// The step the handoff was in.
        step: SupervisorStep,
    },
    /// The successor exited before `Ready`.
    SuccessorExited {
        /// The step the handoff was in.
        step: SupervisorStep,
    },
    /// The incumbent did not report `Drained` within the drain grace.
    DrainTimeout,
    /// The incumbent could not seal; it kept the lock and serves on.
    SealFailed,
    /// The incumbent did not finish sealing by the deadline.
    SealTimeout,
    /// The successor did not report `Ready` by the deadline.
    ReadyTimeout,
    /// The handoff's deadline passed.
    DeadlineExceeded {
        /// The step the handoff was in.
        step: SupervisorStep,
    },
    /// A peer speaks no protocol version in common with this supervisor.
    VersionMismatch {
        /// The peer.
        peer: Side,
        /// Both ranges.
        mismatch: VersionMismatch,
    },
    /// A peer broke the protocol.
    ProtocolViolation {
        /// The peer.
        peer: Side,
        /// What it did.
        violation: Violation,
    },
    /// The successor's `Ready` said `healthz_ok = false`.
    Unhealthy,
    /// The successor's `Ready` advertised an older revision of a shard than
    /// the incumbent sealed: it did not see every acknowledged write.
    RevisionsBehind {
        /// The first such shard (its index in the lists).
        shard: u32,
        /// The revision the incumbent sealed.
        sealed: u64,
        /// The revision the successor advertised.
        advertised: u64,
    },
    /// The successor on probation stopped heartbeating for the probation
    /// liveness limit: it is frozen or hung.
    SuccessorUnresponsive,
    /// The health probe the supervisor runs against the successor failed
    /// during probation; the outcome's `probe_failure` says how.
    HealthProbeFailed,
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::IncumbentUnreachable => {
                f.write_str("the incumbent's control socket could not be reached")
            }
            AbortReason::ControlSocketNotIncumbent {
                listener_pid,
                incumbent_pid,
            } => write!(
                f,
                "the control socket path names a socket of pid {listener_pid}, not of the \
                 incumbent (pid {incumbent_pid}); another process took the path"
            ),
            AbortReason::IncumbentHelloTimeout => {
                f.write_str("the incumbent sent no Hello within the hello timeout")
            }
            AbortReason::IncumbentClosed { step } => write!(
                f,
                "the incumbent closed its connection while the supervisor awaited {}",
                step.awaiting()
            ),
            AbortReason::IncumbentUnresponsive { step } => write!(
                f,
                "the incumbent went silent past the liveness limit while the supervisor awaited {}",
                step.awaiting()
            ),
            AbortReason::SpawnFailed => f.write_str("the successor could not be spawned"),
            AbortReason::SuccessorStartupTimeout => {
                f.write_str("the successor sent no Hello within its start-up budget")
            }
            AbortReason::SuccessorClosed {
                step: SupervisorStep::Probation,
            } => f.write_str(
                "successor closed its socket during probation (it died or dropped its session)",
            ),
            AbortReason::SuccessorClosed { step } => write!(
                f,
                "the successor closed its socket while the supervisor awaited {}",
                step.awaiting()
            ),
            AbortReason::SuccessorExited {
                step: SupervisorStep::Probation,
            } => f.write_str("successor exited during probation"),
            AbortReason::SuccessorExited { step } => write!(
                f,
                "the successor exited while the supervisor awaited {}",
                step.awaiting()
            ),
            AbortReason::DrainTimeout => {
                f.write_str("the incumbent did not report Drained within the drain grace")
            }
            AbortReason::SealFailed => f.write_str("seal failed"),
            AbortReason::SealTimeout => {
                f.write_str("the incumbent did not finish sealing by the deadline")
            }
            AbortReason::ReadyTimeout => {
                f.write_str("the successor did not report Ready by the deadline")
            }
            AbortReason::DeadlineExceeded { step } => write!(
                f,
                "the handoff deadline passed while the supervisor awaited {}",
                step.awaiting()
            ),
            AbortReason::VersionMismatch { peer, mismatch } => write!(f, "{peer}: {mismatch}"),
            AbortReason::ProtocolViolation { peer, violation } => {
                write!(f, "protocol violation by the {peer}: {violation}")
            }
            AbortReason::Unhealthy => f.write_str("the successor reported healthz_ok=false"),
            AbortReason::RevisionsBehind {
                shard,
                sealed,
                advertised,
            } => write!(
                f,
                "revisions behind: shard {shard} advertised {advertised}, sealed at {sealed}"
            ),
            AbortReason::SuccessorUnresponsive => {
                f.write_str("successor stopped heartbeating during probation (frozen or hung)")
            }
            AbortReason::HealthProbeFailed => f.write_str("health probe failed"),
        }
    }
}

/// How long each step took; `None` for steps not reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseTimings {
    /// Start until connected to the incumbent.
    pub connect: Option<Duration>,
    /// Connected until the incumbent's `Hello`.
    pub incumbent_hello: Option<Duration>,
    /// Asking for the spawn until it was reported done.
    pub spawn: Option<Duration>,
    /// Spawned until the successor's `Hello` (its start-up).
    pub successor_hello: Option<Duration>,
    /// `PrepareHandoff` until `Drained`.
    pub drain: Option<Duration>,
    /// `SealRequest` until `SealComplete`.
    pub seal: Option<Duration>,
    /// `Begin` until `Ready`.
    pub begin_to_ready: Option<Duration>,
    /// `Ready` until the probation ended, by its window running out or by
    /// a failure that rolled the successor back.
    pub probation: Option<Duration>,
    /// After `Ready` (and probation) until finished (commit and journal).
    pub commit: Option<Duration>,
    /// Start until finished.
    pub total: Duration,
}

impl PhaseTimings {
    /// The timings with `total` as measured by the adapter, from the start
    /// to the moment it carried out `Finished`: the core stamps `Finished`
    /// when it queues it, before the adapter ran the outputs queued ahead
    /// of it (the last journal write, `Commit`), which the adapter's clock
    /// includes. `commit` becomes what is left after `Ready`.
    pub fn with_total(mut self, total: Duration) -> PhaseTimings {
        self.total = total.max(self.total);
        if self.commit.is_some() {
            let before: Duration = [
                self.connect,
                self.incumbent_hello,
                self.spawn,
                self.successor_hello,
                self.drain,
                self.seal,
                self.begin_to_ready,
                self.probation,
            ]
            .iter()
            .flatten()
            .sum();
            self.commit = Some(self.total.saturating_sub(before));
        }
        self
    }
}

/// What became of the successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuccessorFate {
    /// Never spawned.
    NotSpawned,
    /// Committed: it serves; the caller owns the process from here.
    Serving,
    /// Stopped (or died) and its exit was reported.
    Exited,
    /// Sent `SIGKILL`, but no exit was reported within the grace.
    Unconfirmed,
}

/// What became of the incumbent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncumbentFate {
    /// Never asked to drain; it serves as before.
    Untouched,
    /// Told to resume (`Abort` or `ResumeAfterAbort`).
    ToldToResume,
    /// It resumed by itself after its seal failed.
    ResumedAfterSealFailure,
    /// Sent `Commit`: it exits after its last connections.
    Committed,
    /// It closed, died or broke the protocol after this handoff started
    /// changing it; whoever runs it must check it.
    Gone,
    /// It fell silent past the liveness limit while it owed an answer,
    /// after this handoff started changing it. Its process may well be
    /// alive (stopped, frozen, hung): it resumes by itself at its own
    /// deadline once it runs again, so it must not be taken for dead.
    Unresponsive,
}

/// What one peer said about itself in `Hello`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo<'a> {
    /// Its pid.
    pub pid: Option<u32>,
    /// Its build id.
    pub build_id: &'a [u8],
    /// The features it offered.
    pub capabilities: Capabilities,
    /// The version negotiated with it.
    pub version: Option<ProtoVersion>,
}

/// The result of one handoff, with everything the peers reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandoffOutcomeRef<'a> {
    /// The handoff.
    pub handoff_id: HandoffId,
    /// `Ok` if committed, otherwise why not.
    pub result: Result<(), AbortReason>,
    /// The incumbent's `Hello`.
    pub incumbent: PeerInfo<'a>,
    /// The successor's `Hello` (and pid once spawned).
    pub successor: PeerInfo<'a>,
    /// What the incumbent's `Drained` said.
    pub drained: Option<DrainReport>,
    /// The last `SealProgress`: shards sealed, shards in all, last revision.
    pub seal_progress: Option<(u32, u32, u64)>,
    /// What the incumbent's `SealComplete` said.
    pub sealed: Option<SealReportRef<'a>>,
    /// What the incumbent's `SealFailed` said.
    pub seal_failure: Option<SealFailure<'a>>,
    /// What the successor's `Ready` said.
    pub ready: Option<ReadyReportRef<'a>>,
    /// What became of the incumbent.
    pub incumbent_fate: IncumbentFate,
    /// What became of the successor.
    pub successor_fate: SuccessorFate,
    /// Whether a journal write was reported failed.
    pub journal_failed: bool,
    /// Whether a report did not fit the report buffer and was cut (only
    /// with a fixed-size buffer).
    pub reports_truncated: bool,
    /// How many times the adapter was asked to connect to the incumbent
    /// (more than one when the control socket path did not yet name the
    /// incumbent's socket).
    pub connect_attempts: u32,
    /// The probation window the successor served, if it was put on
    /// probation (`None`: committed at `Ready`, or never got there).
    pub probation_window: Option<Duration>,
    /// What the health probe said when it failed
    /// ([`AbortReason::HealthProbeFailed`]).
    pub probe_failure: Option<&'a str>,
    /// How many connections the incumbent passed to the successor, as it
    /// reported before `Drained` (`None`: no pass channel was set up, or
    /// the incumbent never said).
    pub connections_passed: Option<u32>,
    /// How long each step took.
    pub timings: PhaseTimings,
}

impl HandoffOutcomeRef<'_> {
    /// Whether the handoff committed.
    pub fn committed(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether the successor had sent `Ready` (it served) and the handoff
    /// was then undone: rolled back to the incumbent.
    pub fn rolled_back(&self) -> bool {
        self.result.is_err() && self.ready.is_some()
    }
}

/// An action for the adapter, in the order it must be carried out.
// `Finished` is large, but it is emitted once per handoff and a core without
// an allocator cannot box it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SupervisorOutput<'a> {
    /// Connect to the incumbent's control socket; report with
    /// [`SupervisorHandoff::handle_connected_to`] (or
    /// [`SupervisorHandoff::handle_connected`] where the listener's pid
    /// cannot be known), [`SupervisorHandoff::handle_connect_refused`] or
    /// [`SupervisorHandoff::handle_connect_failed`]. Emitted again, after a
    /// pause, while the path does not yet name the incumbent's socket.
    ConnectIncumbent,
    /// Write this whole frame to the peer; a failed write is reported with
    /// [`SupervisorHandoff::handle_closed`].
    Transmit {
        /// The peer.
        to: Side,
        /// One complete frame.
        frame: &'a [u8],
    },
    /// Write this whole `PassChannel` frame to the peer with one end of a
    /// socketpair passed beside its first byte (`SCM_RIGHTS`): the first
    /// such output makes the pair and sends one end, the second (to the
    /// other peer) sends the other; this process keeps neither
    /// (docs/PROTOCOL.md section 11). A failed write is reported as for
    /// `Transmit`.
    TransmitWithChannelEnd {
        /// The peer.
        to: Side,
        /// One complete frame.
        frame: &'a [u8],
    },
    /// Make the socketpair and spawn the successor with the listeners
    /// (docs/PROTOCOL.md section 5.1); report with [`SupervisorHandoff::handle_spawned`]
    /// or [`SupervisorHandoff::handle_spawn_failed`], and later its exit with
    /// [`SupervisorHandoff::handle_successor_exited`].
    SpawnSuccessor,
    /// Signal the successor process.
    Signal(Signal),
    /// Close the connection to this peer; nothing more will be sent to it.
    Disconnect(Side),
    /// Write this journal record atomically; report a failure with
    /// [`SupervisorHandoff::handle_journal_failed`]. Nothing in the protocol
    /// waits for it (the journal is for diagnosis after a crash), so an
    /// adapter may write it in the background, in order: handoff-std does,
    /// which keeps the fsyncs off the handoff's critical path.
    WriteJournal(JournalRecord),
    /// Delete the journal.
    ClearJournal,
    /// The handoff is over; close whatever is still open. Emitted once.
    Finished(HandoffOutcomeRef<'a>),
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Connect,
    Spawn,
    Signal(Signal),
    Disconnect(Side),
    Journal(JournalRecord),
    ClearJournal,
    Finished,
}

#[derive(Clone, Copy, Debug, Default)]
struct Span {
    start: usize,
    len: usize,
    /// Elements, for list fields.
    count: usize,
}

/// Keeps copies of what peers reported, for the outcome.
struct Stash<B> {
    buf: B,
    used: usize,
    truncated: bool,
}

impl<B: Buffer> Stash<B> {
    fn put(&mut self, bytes: &[u8], count: usize) -> Span {
        let end = self.used + bytes.len();
        if !self.buf.grow(end) {
            self.truncated = true;
            return Span::default();
        }
        self.buf.bytes_mut()[self.used..end].copy_from_slice(bytes);
        let span = Span {
            start: self.used,
            len: bytes.len(),
            count,
        };
        self.used = end;
        span
    }

    fn get(&self, span: Span) -> &[u8] {
        self.buf
            .bytes()
            .get(span.start..span.start + span.len)
            .unwrap_or(&[])
    }

    fn str(&self, span: Span) -> &str {
        core::str::from_utf8(self.get(span)).unwrap_or("")
    }

    /// A list kept by `put`; a list that did not fit reads as empty.
    fn revisions(&self, span: Span) -> Revisions<'_> {
        Revisions::from_wire(self.get(span), span.count)
    }

    fn strings(&self, span: Span) -> Strings<'_> {
        Strings::from_wire(self.get(span), span.count)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Marks {
    connected: Option<Instant>,
    incumbent_hello: Option<Instant>,
    spawned: Option<Instant>,
    successor_hello: Option<Instant>,
    drained: Option<Instant>,
    sealed: Option<Instant>,
    ready: Option<Instant>,
    probation_end: Option<Instant>,
    finished: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct IncumbentPeer {
    open: bool,
    version: Option<ProtoVersion>,
    pid: Option<u32>,
    capabilities: Capabilities,
    build_id: Span,
    last_rx: Instant,
    prepared: bool,
    sealed: bool,
    seal_failed: bool,
    fate: IncumbentFate,
}

#[derive(Clone, Copy, Debug)]
struct SuccessorPeer {
    pid: Option<u32>,
    spawn_pending: bool,
    open: bool,
    version: Option<ProtoVersion>,
    capabilities: Capabilities,
    build_id: Span,
    exited: bool,
    kill_sent: bool,
    given_up: bool,
    last_rx: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
struct Reports {
    drained: Option<DrainReport>,
    seal_progress: Option<(u32, u32, u64)>,
    seal: Option<(Span, [u8; 32])>,
    seal_failure: Option<(Span, Span)>,
    ready: Option<(Span, bool, Span)>,
    connections_passed: Option<u32>,
}

/// Everything but the two decoders, so a decoded frame (which borrows a
/// decoder) can be handled with `&mut` access to the rest.
struct Core<B: Buffer> {
    cfg: SupervisorConfig,
    id: HandoffId,
    started: Instant,
    started_unix_ms: u64,
    deadline_at: Instant,
    step: SupervisorStep,
    out: Outbox<Side, Action, B>,
    stash: Stash<B>,
    o: IncumbentPeer,
    n: SuccessorPeer,
    beat_incumbent: Beat,
    beat_successor: Beat,
    kill_at: Option<Instant>,
    /// The process the handoff is from, when the adapter knows it.
    expected_incumbent: Option<u32>,
    /// When to ask for the next connect to the incumbent.
    connect_retry_at: Option<Instant>,
    connect_attempts: u32,
    abort: Option<AbortReason>,
    journaled: bool,
    journal_failed: bool,
    marks: Marks,
    reports: Reports,
    /// `PassChannel` went to both peers.
    pass_channel: bool,
    /// A successor on probation closed its socket: when to stop waiting
    /// for its exit and roll back for the close.
    closed_on_probation_until: Option<Instant>,
    probe_failure: Option<Span>,
}

/// The supervisor's state machine for one handoff. See the crate docs for
/// the calling contract.
pub struct SupervisorHandoff<B: Buffer = DefaultBuffer> {
    rx_incumbent: FrameDecoder<B>,
    rx_successor: FrameDecoder<B>,
    core: Core<B>,
}

impl<B: Buffer> SupervisorHandoff<B> {
    /// Starts a handoff at `now`: the first output asks to connect to the
    /// incumbent. `random` becomes the handoff id (a v4 UUID);
    /// `started_at_unix_ms` is the wall-clock time, for the journal.
    pub fn new(
        now: Instant,
        config: SupervisorConfig,
        random: [u8; 16],
        started_at_unix_ms: u64,
    ) -> Self {
        let mut out = Outbox::new();
        out.act(Action::Connect);
        SupervisorHandoff {
            rx_incumbent: FrameDecoder::new(),
            rx_successor: FrameDecoder::new(),
            core: Core {
                cfg: config,
                id: HandoffId::from_random_bytes(random),
                started: now,
                started_unix_ms: started_at_unix_ms,
                deadline_at: now + config.deadline,
                step: SupervisorStep::ConnectingIncumbent,
                out,
                stash: Stash {
                    buf: B::empty(),
                    used: 0,
                    truncated: false,
                },
                o: IncumbentPeer {
                    open: false,
                    version: None,
                    pid: None,
                    capabilities: Capabilities::NONE,
                    build_id: Span::default(),
                    last_rx: now,
                    prepared: false,
                    sealed: false,
                    seal_failed: false,
                    fate: IncumbentFate::Untouched,
                },
                n: SuccessorPeer {
                    pid: None,
                    spawn_pending: false,
                    open: false,
                    version: None,
                    capabilities: Capabilities::NONE,
                    build_id: Span::default(),
                    exited: false,
                    kill_sent: false,
                    given_up: false,
                    last_rx: now,
                },
                beat_incumbent: Beat::new(config.heartbeat_interval),
                beat_successor: Beat::new(config.heartbeat_interval),
                kill_at: None,
                expected_incumbent: None,
                connect_retry_at: None,
                connect_attempts: 1,
                abort: None,
                journaled: false,
                journal_failed: false,
                marks: Marks::default(),
                reports: Reports::default(),
                pass_channel: false,
                closed_on_probation_until: None,
                probe_failure: None,
            },
        }
    }

    /// The id of this handoff.
    pub fn handoff_id(&self) -> HandoffId {
        self.core.id
    }

    /// Where the handoff stands.
    pub fn step(&self) -> SupervisorStep {
        self.core.step
    }

    /// The successor's pid, once spawned.
    pub fn successor_pid(&self) -> Option<u32> {
        self.core.n.pid
    }

    /// The incumbent's pid, once it said `Hello`.
    pub fn incumbent_pid(&self) -> Option<u32> {
        self.core.o.pid
    }

    /// Whether `Finished` has been queued; inputs are ignored from then on.
    pub fn is_finished(&self) -> bool {
        self.core.step == SupervisorStep::Done
    }

    /// Names the process this handoff is from: the supervisor's own child,
    /// or the successor of its last committed handoff. Call it before
    /// carrying out the first output. From then on a control socket that
    /// another process listens on is not the incumbent's
    /// ([`SupervisorHandoff::handle_connected_to`]), and a `Hello` that
    /// announces another pid is a protocol violation.
    pub fn expect_incumbent(&mut self, pid: u32) {
        self.core.expected_incumbent = Some(pid);
    }

    /// The connection to the incumbent is open, and the listener's pid is
    /// not known. Same as [`SupervisorHandoff::handle_connected_to`] without
    /// its check.
    pub fn handle_connected(&mut self, now: Instant) {
        let c = &mut self.core;
        if !c.awaiting_connect() {
            return;
        }
        c.marks.connected = Some(now);
        c.o.open = true;
        c.o.last_rx = now;
        c.step = SupervisorStep::AwaitingIncumbentHello;
    }

    /// The connection to the control socket is open, and the kernel says
    /// `listener_pid` listens on it (`SO_PEERCRED`). If that is not the
    /// expected incumbent ([`SupervisorHandoff::expect_incumbent`]), the path
    /// still names another process's socket: the machine asks to close the
    /// connection (`Disconnect`) and to connect again after a pause, until
    /// the hello timeout from the start has passed.
    pub fn handle_connected_to(&mut self, now: Instant, listener_pid: u32) {
        let c = &mut self.core;
        if !c.awaiting_connect() {
            return;
        }
        match c.expected_incumbent {
            Some(incumbent_pid) if incumbent_pid != listener_pid => {
                // Never open for the machine: the adapter only drops it.
                c.out.act(Action::Disconnect(Side::Incumbent));
                c.missed_incumbent(
                    now,
                    AbortReason::ControlSocketNotIncumbent {
                        listener_pid,
                        incumbent_pid,
                    },
                );
            }
            _ => self.handle_connected(now),
        }
    }

    /// Nothing listens at the control socket path right now: the path is
    /// missing, names a socket nobody listens on any more, or its accept
    /// queue is full. Right after a handoff the new incumbent may be about
    /// to take the path over, so the machine asks to connect again after a
    /// pause, until the hello timeout from the start has passed.
    pub fn handle_connect_refused(&mut self, now: Instant) {
        if self.core.awaiting_connect() {
            self.core
                .missed_incumbent(now, AbortReason::IncumbentUnreachable);
        }
    }

    /// The incumbent's control socket could not be reached, for a reason
    /// that trying again will not change (permissions, not a socket).
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if self.core.awaiting_connect() {
            self.core.abort(now, AbortReason::IncumbentUnreachable);
        }
    }

    /// Bytes arrived from a peer. At most one frame is taken per call; the
    /// return value is how many bytes were consumed (at least one if `bytes`
    /// is not empty). Poll the outputs, then call again with the rest.
    pub fn handle_input(&mut self, now: Instant, from: Side, bytes: &[u8]) -> usize {
        if self.core.step == SupervisorStep::Done {
            return bytes.len();
        }
        match from {
            Side::Incumbent => {
                if !self.core.o.open {
                    return bytes.len();
                }
                let (used, frame) = self.rx_incumbent.decode(bytes);
                self.core.on_incumbent_frame(now, frame);
                used
            }
            Side::Successor => {
                if !self.core.n.open {
                    return bytes.len();
                }
                let (used, frame) = self.rx_successor.decode(bytes);
                self.core.on_successor_frame(now, frame);
                used
            }
        }
    }

    /// The peer closed its end (EOF), or reading or writing it failed.
    pub fn handle_closed(&mut self, now: Instant, peer: Side) {
        self.core.on_closed(now, peer);
    }

    /// The successor was spawned with this pid.
    pub fn handle_spawned(&mut self, now: Instant, pid: u32) {
        self.core.on_spawned(now, pid);
    }

    /// The successor could not be spawned.
    pub fn handle_spawn_failed(&mut self, now: Instant) {
        let c = &mut self.core;
        if !c.n.spawn_pending {
            return;
        }
        c.n.spawn_pending = false;
        c.marks.spawned = Some(now);
        match c.step {
            SupervisorStep::SpawningSuccessor => c.abort(now, AbortReason::SpawnFailed),
            SupervisorStep::Aborting => c.try_finish_abort(now),
            _ => {}
        }
    }

    /// The successor process exited and was reaped.
    pub fn handle_successor_exited(&mut self, now: Instant) {
        self.core.on_successor_exited(now);
    }

    /// The health probe the adapter runs against the successor during
    /// probation failed (past its failure threshold); `detail` says how
    /// (kept, cut if the report buffer is full). The successor is rolled
    /// back. Outside probation it does nothing.
    pub fn handle_probe_failed(&mut self, now: Instant, detail: &str) {
        let c = &mut self.core;
        if c.step != SupervisorStep::Probation {
            return;
        }
        c.probe_failure = Some(c.stash.put(detail.as_bytes(), 0));
        c.abort(now, AbortReason::HealthProbeFailed);
    }

    /// Whether the successor serves on probation right now (the adapter
    /// runs its health probe meanwhile).
    pub fn on_probation(&self) -> bool {
        self.core.step == SupervisorStep::Probation
    }

    /// A journal write or delete failed. The handoff goes on (the journal is
    /// for diagnosis after a crash, and every peer recovers without it); the
    /// outcome reports it.
    pub fn handle_journal_failed(&mut self, _now: Instant) {
        self.core.journal_failed = true;
    }

    /// Time passed. Calling it early, or again, does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let partial = self.rx_incumbent.has_partial();
        self.core.on_timeout(now, partial);
    }

    /// The next deadline, or `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.next_timeout()
    }

    /// The next action, or `None` until the next input.
    pub fn poll_output(&mut self) -> Option<SupervisorOutput<'_>> {
        let popped = self.core.out.pop()?;
        let c = &self.core;
        Some(match popped {
            Popped::Frame { to, start, len } => {
                let frame = c.out.frame(start, len);
                // The variant index is the payload's first varint; 17 fits
                // in its first byte.
                let kind = frame.get(LEN_PREFIX + VERSION_FIELD).copied();
                if kind == Some(MessageKind::PassChannel.index() as u8) {
                    SupervisorOutput::TransmitWithChannelEnd { to, frame }
                } else {
                    SupervisorOutput::Transmit { to, frame }
                }
            }
            Popped::Do(action) => match action {
                Action::Connect => SupervisorOutput::ConnectIncumbent,
                Action::Spawn => SupervisorOutput::SpawnSuccessor,
                Action::Signal(s) => SupervisorOutput::Signal(s),
                Action::Disconnect(p) => SupervisorOutput::Disconnect(p),
                Action::Journal(r) => SupervisorOutput::WriteJournal(r),
                Action::ClearJournal => SupervisorOutput::ClearJournal,
                Action::Finished => SupervisorOutput::Finished(c.outcome()),
            },
        })
    }

    /// The outcome so far (final once `Finished` was emitted).
    pub fn outcome(&self) -> HandoffOutcomeRef<'_> {
        self.core.outcome()
    }
}

impl<B: Buffer> Core<B> {
    fn send(&mut self, to: Side, msg: &Message<'_>) {
        let version = match to {
            Side::Incumbent => self.o.version,
            Side::Successor => self.n.version,
        };
        // Frames here are the supervisor's own small messages; they fit any
        // buffer the frame limit allows.
        let _ = self.out.send(to, version.unwrap_or(PROTO_MAX), msg);
    }

    fn disconnect(&mut self, peer: Side) {
        let open = match peer {
            Side::Incumbent => &mut self.o.open,
            Side::Successor => &mut self.n.open,
        };
        if *open {
            *open = false;
            self.out.act(Action::Disconnect(peer));
        }
    }

    fn journal(&mut self, phase: JournalPhase) {
        self.journaled = true;
        self.out.act(Action::Journal(JournalRecord {
            handoff_id: self.id,
            phase,
            incumbent_pid: self.o.pid.unwrap_or(0),
            successor_pid: self.n.pid,
            started_at_unix_ms: self.started_unix_ms,
        }));
    }

    fn finish(&mut self, now: Instant) {
        self.marks.finished = Some(now);
        self.step = SupervisorStep::Done;
        self.beat_incumbent.stop();
        self.beat_successor.stop();
        self.kill_at = None;
        self.out.act(Action::Finished);
    }

    /// Checks what every frame from a negotiated peer must satisfy.
    fn check_frame(
        &self,
        negotiated: Option<ProtoVersion>,
        frame: &Frame<'_>,
    ) -> Result<(), Violation> {
        if let Some(v) = negotiated
            && frame.version != v
        {
            return Err(Violation::WrongVersion {
                got: frame.version,
                negotiated: v,
            });
        }
        if let Some(got) = frame.message.handoff_id()
            && got != self.id
        {
            return Err(Violation::WrongHandoffId {
                got,
                expected: self.id,
            });
        }
        Ok(())
    }

    fn on_incumbent_frame(&mut self, now: Instant, frame: Result<Option<Frame<'_>>, FrameError>) {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => return self.incumbent_violation(now, Violation::Frame(e)),
        };
        if matches!(self.step, SupervisorStep::Aborting | SupervisorStep::Done) {
            // Rolling back: nothing the incumbent says changes that.
            return;
        }
        self.o.last_rx = now;
        if let Err(v) = self.check_frame(self.o.version, &frame) {
            return self.incumbent_violation(now, v);
        }
        match (self.step, frame.message) {
            (_, Message::Heartbeat { .. }) => {}
            (
                SupervisorStep::AwaitingIncumbentHello,
                Message::Hello {
                    role,
                    pid,
                    build_id,
                    proto_min,
                    proto_max,
                    capabilities,
                },
            ) => {
                if role != Side::Incumbent {
                    return self.incumbent_violation(now, Violation::WrongRole { got: role });
                }
                if let Some(expected) = self.expected_incumbent
                    && pid != expected
                {
                    return self.incumbent_violation(
                        now,
                        Violation::WrongPid {
                            announced: pid,
                            expected,
                        },
                    );
                }
                let version = match negotiate_version(PROTO_MIN, PROTO_MAX, proto_min, proto_max) {
                    Ok(v) => v,
                    Err(mismatch) => {
                        self.disconnect(Side::Incumbent);
                        return self.abort(
                            now,
                            AbortReason::VersionMismatch {
                                peer: Side::Incumbent,
                                mismatch,
                            },
                        );
                    }
                };
                self.o.version = Some(version);
                self.o.pid = Some(pid);
                self.o.capabilities = capabilities;
                self.o.build_id = self.stash.put(build_id, 0);
                self.marks.incumbent_hello = Some(now);
                self.send(
                    Side::Incumbent,
                    &Message::HelloAck {
                        proto_version_chosen: version,
                        handoff_id: self.id,
                    },
                );
                // A heartbeat at once tells the incumbent that this
                // supervisor heartbeats, so it holds us to the liveness limit
                // from the start instead of only to the deadline (as it must
                // a reference supervisor, which never heartbeats).
                self.send(
                    Side::Incumbent,
                    &Message::Heartbeat {
                        ts_ms: now.as_millis(),
                    },
                );
                self.step = SupervisorStep::SpawningSuccessor;
                self.n.spawn_pending = true;
                self.out.act(Action::Spawn);
            }
            (SupervisorStep::Draining, Message::ConnectionsPassed { count, .. })
                if self.pass_channel && self.reports.connections_passed.is_none() =>
            {
                self.reports.connections_passed = Some(count);
            }
            (
                SupervisorStep::Draining,
                Message::Drained {
                    open_conns_remaining,
                    accept_closed,
                },
            ) => {
                self.reports.drained = Some(DrainReport {
                    open_conns_remaining,
                    accept_closed,
                });
                self.marks.drained = Some(now);
                self.journal(JournalPhase::Draining);
                self.send(
                    Side::Incumbent,
                    &Message::SealRequest {
                        handoff_id: self.id,
                    },
                );
                self.step = SupervisorStep::Sealing;
            }
            (
                SupervisorStep::Draining | SupervisorStep::Sealing,
                Message::SealProgress {
                    shards_sealed,
                    shards_total,
                    last_revision,
                },
            ) => {
                self.reports.seal_progress = Some((shards_sealed, shards_total, last_revision));
            }
            (
                SupervisorStep::Sealing,
                Message::SealComplete {
                    last_revision_per_shard,
                    data_dir_fingerprint,
                    ..
                },
            ) => {
                self.o.sealed = true;
                let raw = last_revision_per_shard.wire_bytes().unwrap_or(&[]);
                let span = self.stash.put(raw, last_revision_per_shard.len());
                self.reports.seal = Some((span, data_dir_fingerprint));
                self.marks.sealed = Some(now);
                // One record for the seal and the `Begin` that follows at
                // once: a separate `Sealing` would be overwritten within the
                // same step, at the cost of two more fsyncs on the critical
                // path.
                self.send(
                    Side::Successor,
                    &Message::Begin {
                        handoff_id: self.id,
                    },
                );
                self.journal(JournalPhase::AwaitingReady);
                self.step = SupervisorStep::AwaitingReady;
                // The successor starts up now and heartbeats by itself; the
                // incumbent waits on us for Commit and hears from us.
                self.beat_successor.stop();
                self.beat_incumbent.start(now);
            }
            (
                SupervisorStep::Sealing,
                Message::SealFailed {
                    error,
                    partial_state,
                    ..
                },
            ) => {
                self.o.seal_failed = true;
                self.o.fate = IncumbentFate::ResumedAfterSealFailure;
                let e = self.stash.put(error.as_bytes(), 0);
                let p = self.stash.put(partial_state.as_bytes(), 0);
                self.reports.seal_failure = Some((e, p));
                self.abort(now, AbortReason::SealFailed);
            }
            (step, msg) => self.incumbent_violation(
                now,
                Violation::Unexpected {
                    message: msg.kind(),
                    awaiting: step.awaiting(),
                },
            ),
        }
    }

    fn incumbent_violation(&mut self, now: Instant, violation: Violation) {
        match self.step {
            SupervisorStep::Aborting | SupervisorStep::Done => {}
            SupervisorStep::Probation => {
                // Nothing left to roll back to: the successor keeps the
                // lock and is committed now.
                self.o.fate = IncumbentFate::Gone;
                self.disconnect(Side::Incumbent);
                self.commit(now);
            }
            SupervisorStep::AwaitingReady => {
                // Sealed: the lock is free and the successor has `Begin`; a
                // broken incumbent is as good as a dead one from here on.
                self.o.fate = IncumbentFate::Gone;
                self.beat_incumbent.stop();
                self.disconnect(Side::Incumbent);
            }
            _ => {
                if self.o.prepared {
                    self.o.fate = IncumbentFate::Gone;
                }
                self.disconnect(Side::Incumbent);
                self.abort(
                    now,
                    AbortReason::ProtocolViolation {
                        peer: Side::Incumbent,
                        violation,
                    },
                );
            }
        }
    }

    fn on_successor_frame(&mut self, now: Instant, frame: Result<Option<Frame<'_>>, FrameError>) {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => return self.successor_violation(now, Violation::Frame(e)),
        };
        if matches!(self.step, SupervisorStep::Aborting | SupervisorStep::Done) {
            return;
        }
        if let Err(v) = self.check_frame(self.n.version, &frame) {
            return self.successor_violation(now, v);
        }
        self.n.last_rx = now;
        match (self.step, frame.message) {
            (_, Message::Heartbeat { .. }) => {}
            (
                SupervisorStep::AwaitingSuccessorHello,
                Message::Hello {
                    role,
                    pid,
                    build_id,
                    proto_min,
                    proto_max,
                    capabilities,
                },
            ) => {
                if role != Side::Successor {
                    return self.successor_violation(now, Violation::WrongRole { got: role });
                }
                let expected = self.n.pid.unwrap_or(0);
                if pid != expected {
                    return self.successor_violation(
                        now,
                        Violation::WrongPid {
                            announced: pid,
                            expected,
                        },
                    );
                }
                let version = match negotiate_version(PROTO_MIN, PROTO_MAX, proto_min, proto_max) {
                    Ok(v) => v,
                    Err(mismatch) => {
                        return self.abort(
                            now,
                            AbortReason::VersionMismatch {
                                peer: Side::Successor,
                                mismatch,
                            },
                        );
                    }
                };
                self.n.version = Some(version);
                self.n.capabilities = capabilities;
                self.n.build_id = self.stash.put(build_id, 0);
                self.marks.successor_hello = Some(now);
                self.send(
                    Side::Successor,
                    &Message::HelloAck {
                        proto_version_chosen: version,
                        handoff_id: self.id,
                    },
                );
                // Likewise for the successor: one that never heard a
                // heartbeat waits for `Begin` without a limit, and a
                // supervisor frozen before its first beat would strand it.
                self.send(
                    Side::Successor,
                    &Message::Heartbeat {
                        ts_ms: now.as_millis(),
                    },
                );
                self.journal(JournalPhase::Negotiating);
                let both = self.o.capabilities.intersection(capabilities);
                if self.cfg.pass_connections && both.contains(Capabilities::PASS_CONNECTIONS) {
                    // The successor first: it starts receiving before the
                    // incumbent can start passing.
                    self.pass_channel = true;
                    self.send(
                        Side::Successor,
                        &Message::PassChannel {
                            handoff_id: self.id,
                        },
                    );
                    self.send(
                        Side::Incumbent,
                        &Message::PassChannel {
                            handoff_id: self.id,
                        },
                    );
                }
                let left = self.deadline_at.saturating_duration_since(now);
                self.send(
                    Side::Incumbent,
                    &Message::PrepareHandoff {
                        handoff_id: self.id,
                        successor_pid: pid,
                        deadline_ms: millis(left),
                        drain_grace_ms: millis(self.cfg.drain_grace),
                    },
                );
                self.o.prepared = true;
                self.o.last_rx = now;
                self.step = SupervisorStep::Draining;
                // The incumbent is busy now and heartbeats to us; the
                // successor waits for `Begin` and hears from us.
                self.beat_incumbent.stop();
                self.beat_successor.start(now);
            }
            (
                SupervisorStep::AwaitingReady,
                Message::Ready {
                    listening_on,
                    healthz_ok,
                    advertised_revision_per_shard,
                    ..
                },
            ) => {
                let l = self
                    .stash
                    .put(listening_on.wire_bytes().unwrap_or(&[]), listening_on.len());
                let r = self.stash.put(
                    advertised_revision_per_shard.wire_bytes().unwrap_or(&[]),
                    advertised_revision_per_shard.len(),
                );
                self.reports.ready = Some((l, healthz_ok, r));
                self.marks.ready = Some(now);
                self.on_ready(now, healthz_ok);
            }
            (step, msg) => self.successor_violation(
                now,
                Violation::Unexpected {
                    message: msg.kind(),
                    awaiting: step.awaiting(),
                },
            ),
        }
    }

    fn successor_violation(&mut self, now: Instant, violation: Violation) {
        if matches!(self.step, SupervisorStep::Aborting | SupervisorStep::Done) {
            return;
        }
        self.abort(
            now,
            AbortReason::ProtocolViolation {
                peer: Side::Successor,
                violation,
            },
        );
    }

    /// The health gate at `Ready`, then probation or the commit.
    fn on_ready(&mut self, now: Instant, healthz_ok: bool) {
        if !healthz_ok {
            return self.abort(now, AbortReason::Unhealthy);
        }
        if let Some(behind) = self.revisions_behind() {
            return self.abort(now, behind);
        }
        let window = self.cfg.probation;
        if window.is_zero()
            || !self.o.open
            || !self.o.capabilities.contains(Capabilities::PROBATION)
        {
            // A reference incumbent, or probation off: today's commit.
            return self.commit(now);
        }
        self.send(
            Side::Incumbent,
            &Message::Probation {
                handoff_id: self.id,
                window_ms: millis(window),
            },
        );
        self.step = SupervisorStep::Probation;
        // The successor, still connected, hears from us: one that offered
        // probation ends its session if we fall silent for good.
        self.beat_successor.start(now);
        self.n.last_rx = now;
        self.o.last_rx = now;
    }

    /// The first shard whose advertised revision is below the sealed one.
    /// Judged only where both sides report revisions for the same number
    /// of shards: a different count is a different layout, not a lag.
    fn revisions_behind(&self) -> Option<AbortReason> {
        let (sealed, _) = self.reports.seal?;
        let (_, _, advertised) = self.reports.ready?;
        let sealed = self.stash.revisions(sealed);
        let advertised = self.stash.revisions(advertised);
        if sealed.is_empty() || sealed.len() != advertised.len() {
            return None;
        }
        sealed
            .iter()
            .zip(advertised.iter())
            .enumerate()
            .find(|(_, (s, a))| a < s)
            .map(|(i, (sealed, advertised))| AbortReason::RevisionsBehind {
                shard: u32::try_from(i).unwrap_or(u32::MAX),
                sealed,
                advertised,
            })
    }

    fn commit(&mut self, now: Instant) {
        // From `Ready` on, the successor holds the lock and serves: it is the
        // incumbent now, whatever happens to the old one.
        if self.o.open {
            self.send(
                Side::Incumbent,
                &Message::Commit {
                    handoff_id: self.id,
                },
            );
            self.o.fate = IncumbentFate::Committed;
        } else if self.o.fate != IncumbentFate::Unresponsive {
            self.o.fate = IncumbentFate::Gone;
        }
        self.end_probation(now);
        self.disconnect(Side::Incumbent);
        self.disconnect(Side::Successor);
        // Nothing is left to recover once `Commit` is out: the record goes
        // (a `Committed` record deleted right after would be two fsyncs for
        // nothing).
        self.out.act(Action::ClearJournal);
        self.finish(now);
    }

    /// Whether a connect was asked for and not yet reported: a report in
    /// the pause before a retry answers nothing.
    fn awaiting_connect(&self) -> bool {
        self.step == SupervisorStep::ConnectingIncumbent && self.connect_retry_at.is_none()
    }

    /// A connect attempt did not reach the incumbent: try again after a
    /// pause while the hello timeout from the start lasts, else give up
    /// with `reason`.
    fn missed_incumbent(&mut self, now: Instant, reason: AbortReason) {
        let give_up_at = (self.started + self.cfg.hello_timeout).min(self.deadline_at);
        let retry_at = now + defaults::CONNECT_RETRY_INTERVAL;
        if retry_at < give_up_at {
            self.connect_retry_at = Some(retry_at);
        } else {
            self.abort(now, reason);
        }
    }

    fn abort(&mut self, now: Instant, reason: AbortReason) {
        if matches!(self.step, SupervisorStep::Aborting | SupervisorStep::Done) {
            return;
        }
        self.connect_retry_at = None;
        self.end_probation(now);
        self.abort = Some(reason);
        self.step = SupervisorStep::Aborting;
        self.beat_incumbent.stop();
        self.beat_successor.stop();
        let text: ShortText<192> = ShortText::display(&reason);

        // An incumbent that drained but did not seal holds its lock: it can
        // serve again at once, without waiting for the successor to go.
        if self.o.open && !self.o.sealed {
            if self.o.prepared && !self.o.seal_failed {
                self.send(
                    Side::Incumbent,
                    &Message::Abort {
                        handoff_id: self.id,
                        reason: text.as_str(),
                    },
                );
                self.o.fate = IncumbentFate::ToldToResume;
            }
            self.disconnect(Side::Incumbent);
        }

        if self.n.pid.is_some() && !self.n.exited {
            self.stop_successor(now, text.as_str());
        }
        self.try_finish_abort(now);
    }

    /// When the probation window ends, while the step is `Probation`.
    fn probation_until(&self) -> Option<Instant> {
        match (self.step, self.marks.ready) {
            (SupervisorStep::Probation, Some(ready)) => Some(ready + self.cfg.probation),
            _ => None,
        }
    }

    /// Called as the step leaves `Probation` (or `AwaitingReady`, which
    /// never began it), to commit or roll back.
    fn end_probation(&mut self, now: Instant) {
        self.closed_on_probation_until = None;
        if self.step == SupervisorStep::Probation {
            self.marks.probation_end = Some(now);
        }
    }

    fn stop_successor(&mut self, now: Instant, reason: &str) {
        if self.n.open && self.n.version.is_some() {
            self.send(
                Side::Successor,
                &Message::Abort {
                    handoff_id: self.id,
                    reason,
                },
            );
        }
        self.disconnect(Side::Successor);
        self.out.act(Action::Signal(Signal::Terminate));
        self.kill_at = Some(now + self.cfg.kill_grace);
    }

    /// Ends the abort once the successor can no longer hold the lock.
    fn try_finish_abort(&mut self, now: Instant) {
        if self.step != SupervisorStep::Aborting || self.n.spawn_pending {
            return;
        }
        if self.n.pid.is_some() && !self.n.exited && !self.n.given_up {
            return;
        }
        self.kill_at = None;
        if self.o.sealed && self.o.open {
            if self.journaled {
                self.journal(JournalPhase::ResumingAfterAbort);
            }
            self.send(
                Side::Incumbent,
                &Message::ResumeAfterAbort {
                    handoff_id: self.id,
                },
            );
            self.o.fate = IncumbentFate::ToldToResume;
            self.disconnect(Side::Incumbent);
        }
        self.disconnect(Side::Successor);
        if self.journaled {
            self.out.act(Action::ClearJournal);
        }
        self.finish(now);
    }

    fn on_closed(&mut self, now: Instant, peer: Side) {
        match peer {
            Side::Incumbent => {
                if !self.o.open {
                    return;
                }
                self.disconnect(Side::Incumbent);
                match self.step {
                    SupervisorStep::Done => {}
                    SupervisorStep::Probation => {
                        // The old process is gone: nothing to roll back
                        // to, so the successor is committed now.
                        self.o.fate = IncumbentFate::Gone;
                        self.commit(now);
                    }
                    SupervisorStep::Aborting | SupervisorStep::AwaitingReady => {
                        // Sealed or rolling back: nothing more is needed from
                        // it, but it did not get told to resume.
                        if self.o.prepared {
                            self.o.fate = IncumbentFate::Gone;
                        }
                        self.beat_incumbent.stop();
                    }
                    step => {
                        if self.o.prepared {
                            self.o.fate = IncumbentFate::Gone;
                        }
                        self.abort(now, AbortReason::IncumbentClosed { step });
                    }
                }
            }
            Side::Successor => {
                if !self.n.open {
                    return;
                }
                self.disconnect(Side::Successor);
                match self.step {
                    SupervisorStep::Done | SupervisorStep::Aborting => {}
                    // Only a successor that offered probation promised to
                    // keep its socket open after `Ready`; another may close
                    // it, and its exit is still watched.
                    SupervisorStep::Probation
                        if !self.n.capabilities.contains(Capabilities::PROBATION) => {}
                    // A process that dies closes its socket a moment before
                    // its exit is reported: wait that moment, so that the
                    // outcome says it exited.
                    SupervisorStep::Probation => {
                        self.closed_on_probation_until = Some(now + CLOSE_BEFORE_EXIT);
                    }
                    step => self.abort(now, AbortReason::SuccessorClosed { step }),
                }
            }
        }
    }

    fn on_spawned(&mut self, now: Instant, pid: u32) {
        if !self.n.spawn_pending {
            return;
        }
        self.n.spawn_pending = false;
        self.n.pid = Some(pid);
        self.n.open = true;
        self.marks.spawned = Some(now);
        match self.step {
            SupervisorStep::SpawningSuccessor => {
                self.step = SupervisorStep::AwaitingSuccessorHello;
                // The incumbent waits for `PrepareHandoff` while the
                // successor starts up, however long its budget.
                self.beat_incumbent.start(now);
            }
            SupervisorStep::Aborting => {
                self.stop_successor(now, "handoff aborted while spawning");
                self.try_finish_abort(now);
            }
            _ => {}
        }
    }

    fn on_successor_exited(&mut self, now: Instant) {
        if self.n.pid.is_none() || self.n.exited {
            return;
        }
        self.n.exited = true;
        match self.step {
            SupervisorStep::Done => {}
            SupervisorStep::Aborting => self.try_finish_abort(now),
            step => self.abort(now, AbortReason::SuccessorExited { step }),
        }
    }

    /// The step's own budget.
    fn step_deadline(&self) -> Option<Instant> {
        let c = &self.cfg;
        let at = |mark: Option<Instant>, d: Duration| mark.unwrap_or(self.started) + d;
        match self.step {
            SupervisorStep::ConnectingIncumbent | SupervisorStep::SpawningSuccessor => {
                Some(self.deadline_at)
            }
            SupervisorStep::AwaitingIncumbentHello => {
                Some(at(self.marks.connected, c.hello_timeout).min(self.deadline_at))
            }
            SupervisorStep::AwaitingSuccessorHello => {
                Some(at(self.marks.spawned, c.startup_budget).min(self.deadline_at))
            }
            SupervisorStep::Draining => Some(
                at(self.marks.successor_hello, c.drain_grace).min(self.deadline_at) + c.wire_slack,
            ),
            SupervisorStep::Sealing | SupervisorStep::AwaitingReady => {
                Some(self.deadline_at + c.wire_slack)
            }
            // The window's end is no budget running out: it commits (see
            // `on_timeout`).
            SupervisorStep::Probation | SupervisorStep::Aborting | SupervisorStep::Done => None,
        }
    }

    /// When silence from the incumbent means it is gone: only while it owes
    /// an answer (it heartbeats while its hooks run), and on probation,
    /// where an incumbent that offered it heartbeats too.
    fn liveness_deadline(&self) -> Option<Instant> {
        match self.step {
            SupervisorStep::Draining | SupervisorStep::Sealing if self.o.open => {
                Some(self.o.last_rx + self.cfg.liveness)
            }
            SupervisorStep::Probation if self.o.open => Some(self.o.last_rx + self.cfg.liveness),
            _ => None,
        }
    }

    /// When silence from a successor on probation that heartbeats means it
    /// is frozen.
    fn successor_liveness_deadline(&self) -> Option<Instant> {
        match self.step {
            SupervisorStep::Probation
                if self.n.open && self.n.capabilities.contains(Capabilities::PROBATION) =>
            {
                Some(self.n.last_rx + self.cfg.probation_liveness)
            }
            _ => None,
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.step == SupervisorStep::Done {
            return None;
        }
        let t = earliest(self.step_deadline(), self.liveness_deadline());
        let t = earliest(t, self.successor_liveness_deadline());
        let t = earliest(t, self.closed_on_probation_until);
        // While a closed successor's exit is awaited, the window's end is
        // not a timer (it would be a past instant, polled in a loop).
        let t = earliest(
            t,
            self.probation_until()
                .filter(|_| self.closed_on_probation_until.is_none()),
        );
        let t = earliest(t, self.beat_incumbent.deadline());
        let t = earliest(t, self.beat_successor.deadline());
        let t = earliest(t, self.connect_retry_at);
        earliest(t, self.kill_at)
    }

    fn on_timeout(&mut self, now: Instant, incumbent_mid_frame: bool) {
        if self.step == SupervisorStep::Done {
            return;
        }
        if let Some(t) = self.successor_liveness_deadline()
            && t <= now
        {
            self.abort(now, AbortReason::SuccessorUnresponsive);
        }
        if let Some(t) = self.closed_on_probation_until
            && t <= now
        {
            self.abort(
                now,
                AbortReason::SuccessorClosed {
                    step: SupervisorStep::Probation,
                },
            );
        }
        if self.step == SupervisorStep::Probation
            && self.probation_until().is_some_and(|t| t <= now)
            // A successor whose socket just closed is not committed while
            // its exit may still be on the way.
            && self.closed_on_probation_until.is_none()
        {
            // The window ran out with the successor alive, heartbeating
            // and healthy: it passed.
            self.commit(now);
            return;
        }
        if let Some(t) = self.connect_retry_at
            && t <= now
        {
            self.connect_retry_at = None;
            self.connect_attempts = self.connect_attempts.saturating_add(1);
            self.out.act(Action::Connect);
        }
        if let Some(t) = self.kill_at
            && t <= now
        {
            if !self.n.kill_sent {
                self.n.kill_sent = true;
                self.out.act(Action::Signal(Signal::Kill));
                self.kill_at = Some(now + self.cfg.kill_grace);
            } else {
                self.n.given_up = true;
                self.try_finish_abort(now);
            }
        }
        if let Some(t) = self.step_deadline()
            && t <= now
        {
            let step = self.step;
            let reason = match step {
                SupervisorStep::AwaitingIncumbentHello if self.deadline_at > now => {
                    AbortReason::IncumbentHelloTimeout
                }
                SupervisorStep::AwaitingSuccessorHello if self.deadline_at > now => {
                    AbortReason::SuccessorStartupTimeout
                }
                SupervisorStep::Draining => AbortReason::DrainTimeout,
                SupervisorStep::Sealing => AbortReason::SealTimeout,
                SupervisorStep::AwaitingReady => AbortReason::ReadyTimeout,
                _ => AbortReason::DeadlineExceeded { step },
            };
            self.abort(now, reason);
        } else if let Some(t) = self.liveness_deadline()
            && t <= now
        {
            if incumbent_mid_frame {
                // It is writing right now: alive. The step budget still
                // bounds a peer that trickles bytes.
                self.o.last_rx = now;
            } else if self.step == SupervisorStep::Probation {
                // Frozen with its lock released: it cannot be rolled back
                // to, so the successor is committed now.
                self.o.fate = IncumbentFate::Unresponsive;
                self.disconnect(Side::Incumbent);
                self.commit(now);
                return;
            } else {
                let step = self.step;
                self.o.fate = IncumbentFate::Unresponsive;
                self.disconnect(Side::Incumbent);
                self.abort(now, AbortReason::IncumbentUnresponsive { step });
            }
        }
        if self.beat_incumbent.fire(now) {
            self.beat(now, Side::Incumbent);
        }
        if self.beat_successor.fire(now) {
            self.beat(now, Side::Successor);
        }
    }

    fn beat(&mut self, now: Instant, to: Side) {
        let (open, version) = match to {
            Side::Incumbent => (self.o.open, self.o.version),
            Side::Successor => (self.n.open, self.n.version),
        };
        if open {
            self.out.heartbeat(to, version.unwrap_or(PROTO_MAX), now);
        }
    }

    fn outcome(&self) -> HandoffOutcomeRef<'_> {
        let m = &self.marks;
        let between = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a)),
            _ => None,
        };
        let end = m.finished;
        let timings = PhaseTimings {
            connect: between(Some(self.started), m.connected),
            incumbent_hello: between(m.connected, m.incumbent_hello),
            spawn: between(m.incumbent_hello, m.spawned),
            successor_hello: between(m.spawned, m.successor_hello),
            drain: between(m.successor_hello, m.drained),
            seal: between(m.drained, m.sealed),
            begin_to_ready: between(m.sealed, m.ready),
            probation: between(m.ready, m.probation_end),
            commit: if self.abort.is_none() {
                between(m.probation_end.or(m.ready), end)
            } else {
                None
            },
            total: end
                .unwrap_or(self.started)
                .saturating_duration_since(self.started),
        };
        let successor_fate = if self.n.pid.is_none() {
            SuccessorFate::NotSpawned
        } else if self.n.exited {
            SuccessorFate::Exited
        } else if self.n.given_up {
            SuccessorFate::Unconfirmed
        } else {
            SuccessorFate::Serving
        };
        let r = &self.reports;
        HandoffOutcomeRef {
            handoff_id: self.id,
            result: match self.abort {
                Some(reason) => Err(reason),
                None => Ok(()),
            },
            incumbent: PeerInfo {
                pid: self.o.pid,
                build_id: self.stash.get(self.o.build_id),
                capabilities: self.o.capabilities,
                version: self.o.version,
            },
            successor: PeerInfo {
                pid: self.n.pid,
                build_id: self.stash.get(self.n.build_id),
                capabilities: self.n.capabilities,
                version: self.n.version,
            },
            drained: r.drained,
            seal_progress: r.seal_progress,
            sealed: r.seal.map(|(span, fp)| SealReportRef {
                last_revision_per_shard: self.stash.revisions(span),
                data_dir_fingerprint: fp,
            }),
            seal_failure: r.seal_failure.map(|(e, p)| SealFailure {
                error: self.stash.str(e),
                partial_state: self.stash.str(p),
            }),
            ready: r.ready.map(|(l, healthz_ok, revs)| ReadyReportRef {
                listening_on: self.stash.strings(l),
                healthz_ok,
                advertised_revision_per_shard: self.stash.revisions(revs),
            }),
            incumbent_fate: self.o.fate,
            successor_fate,
            journal_failed: self.journal_failed,
            reports_truncated: self.stash.truncated,
            connect_attempts: self.connect_attempts,
            probation_window: m.probation_end.map(|_| self.cfg.probation),
            probe_failure: self.probe_failure.map(|s| self.stash.str(s)),
            connections_passed: r.connections_passed,
            timings,
        }
    }
}

/// Whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
