//! The successor's side: from its `Hello` until it is authoritative.
//!
//! [`SuccessorSession`] runs in the new binary over the socketpair it was
//! spawned with. It announces itself once the binary has done whatever
//! start-up work needs no lock (so that work overlaps the old binary still
//! serving), validates the version the supervisor chose, waits for `Begin`,
//! takes the data-dir lock, lets the daemon open its state and start
//! accepting, and reports `Ready`. While it starts up after `Begin` it sends
//! heartbeats, so a slow start is bounded by the supervisor's deadline, not
//! cut by a liveness limit.
//!
//! Once it holds the lock it does not give up because the supervisor died:
//! the incumbent has sealed and released the lock, and the lock decides who
//! serves. Before it holds the lock, a vanished supervisor means the handoff
//! is over and it must exit.

use core::fmt;
use core::time::Duration;

use crate::buffer::{Buffer, DefaultBuffer};
use crate::error::FrameError;
use crate::frame::{Frame, FrameDecoder};
use crate::machine::{
    Beat, Outbox, Popped, ReadyReportRef, ShortText, Violation, defaults, outbox_with_hello,
};
use crate::message::{Message, Revisions, Strings};
use crate::time::{Instant, earliest};
use crate::wire::{
    Capabilities, HandoffId, PROTO_MAX, PROTO_MIN, ProtoVersion, Side, VersionMismatch,
};

/// Timings of the successor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuccessorConfig {
    /// From `Hello` until the supervisor's `HelloAck`.
    pub hello_timeout: Duration,
    /// Silence from a supervisor known to heartbeat, while waiting for
    /// `Begin`, that means it is gone.
    pub liveness: Duration,
    /// How often the supervisor hears from us while we start up.
    pub heartbeat_interval: Duration,
    /// Between attempts at a busy lock after `Begin`.
    pub lock_retry_interval: Duration,
    /// How long a busy lock is retried after `Begin`.
    pub lock_retry_window: Duration,
    /// How often the supervisor hears from us after `Ready` while it keeps
    /// the socket open (we offered [`Capabilities::PROBATION`]): the
    /// supervisor tells a frozen successor from a serving one by this.
    pub probation_heartbeat_interval: Duration,
    /// Features offered in `Hello`. Offer [`Capabilities::PROBATION`] only
    /// if the adapter keeps driving the session after `Ready` (it
    /// heartbeats until the supervisor closes the socket), and
    /// [`Capabilities::PASS_CONNECTIONS`] only if it carries out
    /// [`SuccessorOutput::PassChannel`] and the daemon takes and serves
    /// every connection passed to it.
    pub capabilities: Capabilities,
}

impl Default for SuccessorConfig {
    fn default() -> Self {
        SuccessorConfig {
            hello_timeout: defaults::HELLO_TIMEOUT,
            liveness: defaults::LIVENESS,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            lock_retry_interval: defaults::LOCK_RETRY_INTERVAL,
            lock_retry_window: defaults::LOCK_RETRY_WINDOW,
            probation_heartbeat_interval: defaults::PROBATION_HEARTBEAT_INTERVAL,
            capabilities: Capabilities::NONE,
        }
    }
}

/// Where the successor stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SuccessorStep {
    /// `Hello` sent; waiting for `HelloAck`.
    AwaitingHelloAck,
    /// Waiting for `Begin`.
    AwaitingBegin,
    /// `Begin` received; taking the data-dir lock.
    Locking,
    /// Lock held; the daemon opens its state and starts accepting.
    Starting,
    /// `Ready` sent and `Finished(Authoritative)` emitted: the daemon
    /// serves, and because we offered [`Capabilities::PROBATION`] the
    /// session heartbeats to the supervisor until it closes the socket (or,
    /// having heartbeated itself, falls silent for the liveness limit).
    Probation,
    /// Finished.
    Done,
}

impl SuccessorStep {
    /// What the successor waits for in this step, for messages.
    pub fn awaiting(self) -> &'static str {
        match self {
            SuccessorStep::AwaitingHelloAck => "HelloAck",
            SuccessorStep::AwaitingBegin => "Begin",
            SuccessorStep::Locking => "the data-dir lock",
            SuccessorStep::Starting => "the daemon to start serving",
            SuccessorStep::Probation => "the supervisor to close the socket (probation)",
            SuccessorStep::Done => "nothing (finished)",
        }
    }
}

/// Why the successor must exit without serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SuccessorFailure {
    /// The supervisor aborted the handoff; its reason is
    /// [`SuccessorSession::abort_reason`].
    Aborted,
    /// The supervisor closed the socket (or died) before we held the lock.
    SupervisorGone,
    /// No `HelloAck` within the hello timeout.
    HelloTimeout,
    /// A supervisor known to heartbeat fell silent while we awaited `Begin`.
    SupervisorUnresponsive,
    /// The lock stayed busy for the whole retry window after `Begin`.
    LockUnavailable,
    /// The daemon could not start.
    StartFailed,
    /// The supervisor chose a version we do not speak.
    VersionMismatch(VersionMismatch),
    /// The supervisor broke the protocol.
    Violation(Violation),
}

impl fmt::Display for SuccessorFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuccessorFailure::Aborted => f.write_str("the supervisor aborted the handoff"),
            SuccessorFailure::SupervisorGone => {
                f.write_str("the supervisor went away before this successor held the lock")
            }
            SuccessorFailure::HelloTimeout => {
                f.write_str("the supervisor sent no HelloAck in time")
            }
            SuccessorFailure::SupervisorUnresponsive => {
                f.write_str("the supervisor went silent past the liveness limit")
            }
            SuccessorFailure::LockUnavailable => {
                f.write_str("the data-dir lock stayed held by another process after Begin")
            }
            SuccessorFailure::StartFailed => f.write_str("the daemon could not start"),
            SuccessorFailure::VersionMismatch(m) => fmt::Display::fmt(m, f),
            SuccessorFailure::Violation(v) => {
                write!(f, "protocol violation by the supervisor: {v}")
            }
        }
    }
}

/// How the successor's part ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuccessorEnd {
    /// `Ready` was sent (or, if the supervisor vanished after we took the
    /// lock, would have been): this process is the incumbent now. Take over
    /// the control socket path and serve.
    Authoritative {
        /// Whether the supervisor was gone, so nobody received `Ready`.
        supervisor_gone: bool,
    },
    /// The handoff is off: exit without writing anything.
    Failed(SuccessorFailure),
}

/// An action for the adapter, in order.
#[derive(Debug)]
pub enum SuccessorOutput<'a> {
    /// Write this whole frame to the supervisor.
    Transmit(&'a [u8]),
    /// Try once, without blocking, to take the data-dir lock; report with
    /// [`SuccessorSession::handle_lock_acquired`] or
    /// [`SuccessorSession::handle_lock_busy`].
    AcquireLock,
    /// The lock is held: open the sealed state, take the listeners, start
    /// accepting, then call [`SuccessorSession::handle_ready`] (or
    /// [`SuccessorSession::handle_start_failed`]).
    Start,
    /// The supervisor sent `PassChannel` (we offered
    /// [`Capabilities::PASS_CONNECTIONS`]): take the descriptor passed
    /// beside that frame, and receive the incumbent's connections on it
    /// (docs/PROTOCOL.md section 11). All of them must have arrived, ended
    /// by `PassDone`, before the daemon is told to `Start`; a pass that
    /// broke is a failed start ([`SuccessorSession::handle_start_failed`]).
    PassChannel {
        /// The handoff the connections belong to.
        handoff_id: HandoffId,
        /// The version the channel's frames are written with.
        version: ProtoVersion,
    },
    /// Over; emitted once.
    Finished(SuccessorEnd),
}

#[derive(Clone, Copy, Debug)]
enum Action {
    AcquireLock,
    Start,
    PassChannel(HandoffId, ProtoVersion),
    Finished(SuccessorEnd),
}

struct Core<B: Buffer> {
    cfg: SuccessorConfig,
    step: SuccessorStep,
    out: Outbox<(), Action, B>,
    hello_at: Instant,
    last_rx: Instant,
    version: Option<ProtoVersion>,
    id: Option<HandoffId>,
    supervisor_open: bool,
    supervisor_heartbeats: bool,
    heartbeat: Beat,
    lock_retry_at: Option<Instant>,
    lock_give_up_at: Instant,
    abort_reason: ShortText<256>,
    /// `PassChannel` came (once per handoff).
    channel: bool,
}

/// The successor's state machine. See the crate docs for the calling
/// contract.
pub struct SuccessorSession<B: Buffer = DefaultBuffer> {
    rx: FrameDecoder<B>,
    core: Core<B>,
}

impl<B: Buffer> SuccessorSession<B> {
    /// Announces this successor: the first output is its `Hello`. Create it
    /// once the start-up work that needs no lock is done.
    pub fn new(now: Instant, config: SuccessorConfig, pid: u32, build_id: &[u8]) -> Self {
        let out = outbox_with_hello(Side::Successor, pid, build_id, config.capabilities);
        SuccessorSession {
            rx: FrameDecoder::new(),
            core: Core {
                cfg: config,
                step: SuccessorStep::AwaitingHelloAck,
                out,
                hello_at: now,
                last_rx: now,
                version: None,
                id: None,
                supervisor_open: true,
                supervisor_heartbeats: false,
                heartbeat: Beat::new(config.heartbeat_interval),
                lock_retry_at: None,
                lock_give_up_at: now,
                abort_reason: ShortText::new(),
                channel: false,
            },
        }
    }

    /// Where the successor stands.
    pub fn step(&self) -> SuccessorStep {
        self.core.step
    }

    /// The handoff id, once the supervisor assigned it.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.core.id
    }

    /// The negotiated protocol version, once known.
    pub fn version(&self) -> Option<ProtoVersion> {
        self.core.version
    }

    /// Whether `Finished` has been queued. A session on probation has
    /// finished too; it only heartbeats ([`SuccessorSession::on_probation`]).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.core.step,
            SuccessorStep::Probation | SuccessorStep::Done
        )
    }

    /// Whether the session still heartbeats after `Ready`: keep feeding it
    /// input, closes and timeouts, and sending what it outputs, until this
    /// is false.
    pub fn on_probation(&self) -> bool {
        self.core.step == SuccessorStep::Probation
    }

    /// The reason the supervisor gave in its `Abort` (truncated to 256
    /// bytes), or `""`.
    pub fn abort_reason(&self) -> &str {
        self.core.abort_reason.as_str()
    }

    /// Bytes arrived from the supervisor; at most one frame per call.
    /// Returns how many bytes were consumed.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> usize {
        if !self.core.supervisor_open || self.core.step == SuccessorStep::Done {
            return bytes.len();
        }
        if self.core.step == SuccessorStep::Probation {
            // Authoritative already: nothing the supervisor says changes
            // that (a rollback comes as a signal). Bytes are only drained;
            // they show the supervisor is there.
            self.core.last_rx = now;
            self.core.supervisor_heartbeats = true;
            return bytes.len();
        }
        let (used, frame) = self.rx.decode(bytes);
        self.core.on_frame(now, frame);
        used
    }

    /// The supervisor closed the socket (EOF), or reading or writing failed.
    pub fn handle_closed(&mut self, _now: Instant) {
        self.core.on_closed();
    }

    /// The lock was taken.
    pub fn handle_lock_acquired(&mut self, _now: Instant) {
        let c = &mut self.core;
        if c.step != SuccessorStep::Locking || c.lock_retry_at.is_some() {
            return;
        }
        c.step = SuccessorStep::Starting;
        c.out.act(Action::Start);
    }

    /// The lock is held by another process.
    pub fn handle_lock_busy(&mut self, now: Instant) {
        let c = &mut self.core;
        if c.step != SuccessorStep::Locking || c.lock_retry_at.is_some() {
            return;
        }
        if now >= c.lock_give_up_at {
            c.fail(SuccessorFailure::LockUnavailable);
        } else {
            c.lock_retry_at = Some(now + c.cfg.lock_retry_interval);
        }
    }

    /// The daemon serves: send `Ready`.
    pub fn handle_ready(&mut self, now: Instant, report: ReadyReportRef<'_>) {
        let c = &mut self.core;
        if c.step != SuccessorStep::Starting {
            return;
        }
        let Some(handoff_id) = c.id else { return };
        let ready = Message::Ready {
            handoff_id,
            listening_on: report.listening_on,
            healthz_ok: report.healthz_ok,
            advertised_revision_per_shard: report.advertised_revision_per_shard,
        };
        let supervisor_gone = !c.supervisor_open;
        if c.supervisor_open && !c.send(&ready) {
            // Too large for the frame buffer: the supervisor still needs to
            // hear `Ready`; the lists are for its logs.
            c.send(&Message::Ready {
                handoff_id,
                listening_on: Strings::EMPTY,
                healthz_ok: report.healthz_ok,
                advertised_revision_per_shard: Revisions::EMPTY,
            });
        }
        c.heartbeat.stop();
        c.step = SuccessorStep::Done;
        if c.supervisor_open && c.cfg.capabilities.contains(Capabilities::PROBATION) {
            c.step = SuccessorStep::Probation;
            c.last_rx = now;
            c.heartbeat
                .start_every(now, c.cfg.probation_heartbeat_interval);
        }
        c.out.act(Action::Finished(SuccessorEnd::Authoritative {
            supervisor_gone,
        }));
    }

    /// The daemon could not start; it must exit (which frees the lock).
    pub fn handle_start_failed(&mut self, _now: Instant) {
        if self.core.step == SuccessorStep::Starting {
            self.core.fail(SuccessorFailure::StartFailed);
        }
    }

    /// Time passed. Calling it early, or again, does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        let partial = self.rx.has_partial();
        self.core.on_timeout(now, partial);
    }

    /// The next deadline, or `None` when nothing is pending.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.next_timeout()
    }

    /// The next action, or `None` until the next input.
    pub fn poll_output(&mut self) -> Option<SuccessorOutput<'_>> {
        let popped = self.core.out.pop()?;
        let c = &self.core;
        Some(match popped {
            Popped::Frame { start, len, .. } => SuccessorOutput::Transmit(c.out.frame(start, len)),
            Popped::Do(Action::AcquireLock) => SuccessorOutput::AcquireLock,
            Popped::Do(Action::Start) => SuccessorOutput::Start,
            Popped::Do(Action::PassChannel(handoff_id, version)) => SuccessorOutput::PassChannel {
                handoff_id,
                version,
            },
            Popped::Do(Action::Finished(end)) => SuccessorOutput::Finished(end),
        })
    }
}

impl<B: Buffer> Core<B> {
    fn send(&mut self, msg: &Message<'_>) -> bool {
        self.supervisor_open && self.out.send((), self.version.unwrap_or(PROTO_MAX), msg)
    }

    fn on_closed(&mut self) {
        if !self.supervisor_open {
            return;
        }
        self.supervisor_open = false;
        self.heartbeat.stop();
        match self.step {
            // The lock is ours and the incumbent has sealed: serving is
            // the only way to keep one incumbent. The lock decides.
            SuccessorStep::Starting | SuccessorStep::Done => {}
            // The probation is over (committed, or the supervisor went
            // away); either way this process serves on.
            SuccessorStep::Probation => self.step = SuccessorStep::Done,
            _ => self.fail(SuccessorFailure::SupervisorGone),
        }
    }

    fn fail(&mut self, failure: SuccessorFailure) {
        if matches!(self.step, SuccessorStep::Probation | SuccessorStep::Done) {
            return;
        }
        self.step = SuccessorStep::Done;
        self.heartbeat.stop();
        self.lock_retry_at = None;
        self.out
            .act(Action::Finished(SuccessorEnd::Failed(failure)));
    }

    fn on_frame(&mut self, now: Instant, frame: Result<Option<Frame<'_>>, FrameError>) {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => return self.violation(Violation::Frame(e)),
        };
        self.last_rx = now;
        if let Some(v) = self.version
            && frame.version != v
        {
            return self.violation(Violation::WrongVersion {
                got: frame.version,
                negotiated: v,
            });
        }
        if let (Some(expected), Some(got)) = (self.id, frame.message.handoff_id())
            && got != expected
        {
            return self.violation(Violation::WrongHandoffId { got, expected });
        }
        match (self.step, frame.message) {
            (_, Message::Heartbeat { .. }) => self.supervisor_heartbeats = true,
            (
                SuccessorStep::AwaitingHelloAck,
                Message::HelloAck {
                    proto_version_chosen,
                    handoff_id,
                },
            ) => {
                // The reference successor takes whatever it is told; a
                // version outside our range would mean misreading every
                // later frame.
                if !(PROTO_MIN..=PROTO_MAX).contains(&proto_version_chosen) {
                    return self.fail(SuccessorFailure::VersionMismatch(VersionMismatch {
                        our_min: PROTO_MIN,
                        our_max: PROTO_MAX,
                        their_min: proto_version_chosen,
                        their_max: proto_version_chosen,
                    }));
                }
                self.version = Some(proto_version_chosen);
                self.id = Some(handoff_id);
                self.step = SuccessorStep::AwaitingBegin;
            }
            (SuccessorStep::AwaitingBegin, Message::PassChannel { handoff_id })
                if self
                    .cfg
                    .capabilities
                    .contains(Capabilities::PASS_CONNECTIONS)
                    && !self.channel =>
            {
                self.channel = true;
                let version = self.version.unwrap_or(PROTO_MAX);
                self.out.act(Action::PassChannel(handoff_id, version));
            }
            (SuccessorStep::AwaitingBegin, Message::Begin { .. }) => {
                self.step = SuccessorStep::Locking;
                self.lock_give_up_at = now + self.cfg.lock_retry_window;
                self.out.act(Action::AcquireLock);
                self.heartbeat.start(now);
            }
            (
                SuccessorStep::AwaitingHelloAck
                | SuccessorStep::AwaitingBegin
                | SuccessorStep::Locking
                | SuccessorStep::Starting,
                Message::Abort { reason, .. },
            ) => {
                self.abort_reason = ShortText::from_str_truncated(reason);
                self.fail(SuccessorFailure::Aborted)
            }
            (step, msg) => self.violation(Violation::Unexpected {
                message: msg.kind(),
                awaiting: step.awaiting(),
            }),
        }
    }

    fn violation(&mut self, v: Violation) {
        match self.step {
            // Holding the lock: a garbled supervisor is a gone supervisor.
            SuccessorStep::Starting => {
                self.supervisor_open = false;
                self.heartbeat.stop();
            }
            _ => self.fail(SuccessorFailure::Violation(v)),
        }
    }

    fn liveness_deadline(&self) -> Option<Instant> {
        match self.step {
            SuccessorStep::AwaitingBegin | SuccessorStep::Probation
                if self.supervisor_heartbeats && self.supervisor_open =>
            {
                Some(self.last_rx + self.cfg.liveness)
            }
            _ => None,
        }
    }

    fn step_deadline(&self) -> Option<Instant> {
        match self.step {
            SuccessorStep::AwaitingHelloAck => Some(self.hello_at + self.cfg.hello_timeout),
            SuccessorStep::Locking => self.lock_retry_at,
            _ => None,
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.step == SuccessorStep::Done {
            return None;
        }
        earliest(
            earliest(self.step_deadline(), self.liveness_deadline()),
            self.heartbeat.deadline(),
        )
    }

    fn on_timeout(&mut self, now: Instant, mid_frame: bool) {
        if self.heartbeat.fire(now) && self.supervisor_open {
            let version = self.version.unwrap_or(PROTO_MAX);
            self.out.heartbeat((), version, now);
        }
        if let Some(t) = self.step_deadline()
            && t <= now
        {
            match self.step {
                SuccessorStep::AwaitingHelloAck => self.fail(SuccessorFailure::HelloTimeout),
                SuccessorStep::Locking => {
                    self.lock_retry_at = None;
                    self.out.act(Action::AcquireLock);
                }
                _ => {}
            }
        } else if let Some(t) = self.liveness_deadline()
            && t <= now
        {
            if mid_frame {
                self.last_rx = now;
            } else if self.step == SuccessorStep::Probation {
                // A supervisor silent for good holds nothing: give its
                // socket up as if it had closed it, and serve on.
                self.on_closed();
            } else {
                self.fail(SuccessorFailure::SupervisorUnresponsive);
            }
        }
    }
}
