//! The incumbent's side: one control session with a supervisor.
//!
//! [`IncumbentSession`] runs one accepted control connection. It announces
//! itself, and when a handoff comes it asks the daemon to drain, then to seal
//! (and then to release the data-dir lock), and waits for `Commit`. Unlike the
//! reference, it never trusts the supervisor to come back: it keeps its own
//! copy of the handoff deadline and a liveness limit, so a supervisor that
//! dies, hangs or goes silent with the socket still open can never leave the
//! daemon drained or sealed. Every way out of a session other than `Commit`
//! puts the daemon back where it was (lock held, serving) before
//! [`IncumbentOutput::Finished`] is emitted, or says plainly that it cannot.

use core::fmt;
use core::time::Duration;

use crate::buffer::{Buffer, DefaultBuffer};
use crate::error::FrameError;
use crate::frame::{Frame, FrameDecoder};
use crate::machine::{
    Beat, DrainReport, Outbox, Popped, SealFailure, SealReportRef, ShortText, Violation, defaults,
    outbox_with_hello,
};
use crate::message::Message;
use crate::time::{Instant, earliest};
use crate::wire::{
    Capabilities, HandoffId, PROTO_MAX, PROTO_MIN, ProtoVersion, Side, VersionMismatch,
};

/// Timings of the incumbent's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncumbentConfig {
    /// From connection until the supervisor's `HelloAck`.
    pub hello_timeout: Duration,
    /// Silence from the supervisor, while it owes an answer, that ends the
    /// session.
    pub liveness: Duration,
    /// How often the supervisor hears from us while a hook runs.
    pub heartbeat_interval: Duration,
    /// The supervisor's allowance for replies in flight (its drain budget is
    /// `drain_grace` plus this).
    pub wire_slack: Duration,
    /// How far past `deadline_ms` to wait before resuming on our own.
    pub deadline_slack: Duration,
    /// Between attempts at a busy lock when resuming.
    pub lock_retry_interval: Duration,
    /// How long a busy lock is retried before concluding another process
    /// legitimately holds it.
    pub lock_retry_window: Duration,
    /// Features offered in `Hello`. Offer
    /// [`Capabilities::RECLAIM_LISTENERS`] only if the adapter carries out
    /// [`IncumbentOutput::SendListeners`]. Offering
    /// [`Capabilities::PROBATION`] asks nothing more of the adapter: a
    /// rollback during probation is a `Resume` after the lock is retaken,
    /// as after any abort past the seal, except that the resume hook must
    /// reopen the state from disk (the successor wrote to it). Offer
    /// [`Capabilities::PASS_CONNECTIONS`] only if the adapter carries out
    /// [`IncumbentOutput::PassChannel`] and reports the count with
    /// [`IncumbentSession::handle_connections_passed`].
    pub capabilities: Capabilities,
}

impl Default for IncumbentConfig {
    fn default() -> Self {
        IncumbentConfig {
            hello_timeout: defaults::HELLO_TIMEOUT,
            liveness: defaults::LIVENESS,
            heartbeat_interval: defaults::HEARTBEAT_INTERVAL,
            wire_slack: defaults::WIRE_SLACK,
            deadline_slack: defaults::INCUMBENT_DEADLINE_SLACK,
            lock_retry_interval: defaults::LOCK_RETRY_INTERVAL,
            lock_retry_window: defaults::LOCK_RETRY_WINDOW,
            capabilities: Capabilities::NONE,
        }
    }
}

/// Where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IncumbentStep {
    /// `Hello` sent; waiting for `HelloAck`.
    AwaitingHelloAck,
    /// Waiting for `PrepareHandoff`.
    Idle,
    /// The drain hook runs.
    Draining,
    /// `Drained` sent; waiting for `SealRequest`.
    Drained,
    /// The seal hook runs.
    Sealing,
    /// Sealed and the lock released; waiting for `Commit`.
    Sealed,
    /// Sealed, and the successor serves on probation (`Probation` came):
    /// alive and heartbeating, waiting for `Commit` or `ResumeAfterAbort`.
    Probation,
    /// Undoing the handoff: re-taking the lock, resuming.
    Recovering,
    /// Finished.
    Done,
}

impl IncumbentStep {
    /// What the session waits for in this step, for messages.
    pub fn awaiting(self) -> &'static str {
        match self {
            IncumbentStep::AwaitingHelloAck => "HelloAck",
            IncumbentStep::Idle => "PrepareHandoff",
            IncumbentStep::Draining => "the drain hook",
            IncumbentStep::Drained => "SealRequest",
            IncumbentStep::Sealing => "the seal hook",
            IncumbentStep::Sealed => "Commit, Probation or ResumeAfterAbort",
            IncumbentStep::Probation => {
                "Commit or ResumeAfterAbort (the successor is on probation)"
            }
            IncumbentStep::Recovering => "the resume",
            IncumbentStep::Done => "nothing (the session is over)",
        }
    }
}

/// Why a session ended without `Commit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndCause {
    /// The supervisor closed the connection (or died).
    SupervisorClosed,
    /// The supervisor aborted the handoff.
    HandoffAborted,
    /// Our seal hook failed; the lock was kept.
    SealFailed,
    /// Our drain hook failed.
    DrainFailed,
    /// No `HelloAck` within the hello timeout.
    HelloTimeout,
    /// The supervisor owed an answer and was silent for the liveness limit.
    SupervisorUnresponsive,
    /// The handoff's deadline (plus slack) passed.
    DeadlineExceeded,
    /// The drain hook ran past the drain grace; the supervisor has given up.
    DrainOverGrace,
    /// The supervisor chose a version we do not speak.
    VersionMismatch(VersionMismatch),
    /// The supervisor broke the protocol.
    Violation(Violation),
}

impl fmt::Display for EndCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndCause::SupervisorClosed => f.write_str("the supervisor closed the connection"),
            EndCause::HandoffAborted => f.write_str("the supervisor aborted the handoff"),
            EndCause::SealFailed => f.write_str("the seal hook failed; the lock was kept"),
            EndCause::DrainFailed => f.write_str("the drain hook failed"),
            EndCause::HelloTimeout => f.write_str("the supervisor sent no HelloAck in time"),
            EndCause::SupervisorUnresponsive => {
                f.write_str("the supervisor went silent past the liveness limit")
            }
            EndCause::DeadlineExceeded => f.write_str("the handoff deadline passed"),
            EndCause::DrainOverGrace => f.write_str("the drain hook ran past the drain grace"),
            EndCause::VersionMismatch(m) => fmt::Display::fmt(m, f),
            EndCause::Violation(v) => write!(f, "protocol violation by the supervisor: {v}"),
        }
    }
}

/// How a session ended: what the daemon must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncumbentEnd {
    /// The handoff committed: the successor serves. Finish the connections
    /// still open and exit.
    Committed,
    /// No handoff, or it was undone: the lock is held and the daemon serves
    /// as before. Accept the next session.
    Serving(EndCause),
    /// After sealing, the lock could not be taken back: another process
    /// holds it (a successor that became the incumbent). Stop serving writes
    /// and exit.
    Superseded(EndCause),
    /// The lock is held again but the resume hook failed: the daemon cannot
    /// serve. Exit so that the supervisor restarts it.
    ResumeFailed(EndCause),
}

impl IncumbentEnd {
    /// Whether the daemon goes on serving as the incumbent.
    pub fn keeps_serving(&self) -> bool {
        matches!(self, IncumbentEnd::Serving(_))
    }
}

impl fmt::Display for IncumbentEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IncumbentEnd::Committed => {
                f.write_str("handoff committed; exit after the open connections")
            }
            IncumbentEnd::Serving(c) => write!(f, "still serving: {c}"),
            IncumbentEnd::Superseded(c) => write!(
                f,
                "superseded: the data-dir lock is held by another process after {c}"
            ),
            IncumbentEnd::ResumeFailed(c) => write!(f, "could not resume serving after {c}"),
        }
    }
}

/// An action for the adapter, in order.
#[derive(Debug)]
pub enum IncumbentOutput<'a> {
    /// Write this whole frame to the supervisor; a failed write is reported
    /// with [`IncumbentSession::handle_closed`].
    Transmit(&'a [u8]),
    /// Run the drain hook: stop accepting, finish in-flight work, fsync; by
    /// `deadline` if possible. Report with [`IncumbentSession::handle_drained`]
    /// or [`IncumbentSession::handle_drain_failed`]. Keep feeding inputs and
    /// timeouts while it runs.
    Drain {
        /// When the drain grace ends.
        deadline: Instant,
    },
    /// Run the seal hook: flush and close the writer state. Report with
    /// [`IncumbentSession::handle_sealed`] or
    /// [`IncumbentSession::handle_seal_failed`].
    Seal,
    /// Release the data-dir lock (the seal succeeded).
    ReleaseLock,
    /// Try once, without blocking, to take the data-dir lock; report with
    /// [`IncumbentSession::handle_lock_acquired`] or
    /// [`IncumbentSession::handle_lock_busy`].
    AcquireLock,
    /// Run the resume hook: reopen the writer state and accept again. Report
    /// with [`IncumbentSession::handle_resumed`] or
    /// [`IncumbentSession::handle_resume_failed`].
    Resume,
    /// The supervisor asked for the listening sockets (it offered nothing
    /// the session depends on, and it may ask only because this incumbent
    /// offered [`Capabilities::RECLAIM_LISTENERS`]): write a
    /// `Message::Listeners` frame with this id, naming the listeners, with
    /// their descriptors passed beside its first byte. The session then
    /// waits for what comes next, as it did before.
    SendListeners {
        /// The session's id, for the answer.
        handoff_id: HandoffId,
        /// The version to write the answer's frame with.
        version: ProtoVersion,
    },
    /// The supervisor sent `PassChannel` (we offered
    /// [`Capabilities::PASS_CONNECTIONS`]): take the descriptor passed
    /// beside that frame. During the drain the daemon passes connections
    /// on it, each with its state, then `PassDone` (docs/PROTOCOL.md
    /// section 11); report the count with
    /// [`IncumbentSession::handle_connections_passed`] before the drain's
    /// end. Keep every passed connection's own descriptor until the
    /// session ends: `Committed` closes it, any other end serves it again.
    PassChannel {
        /// The handoff the connections belong to.
        handoff_id: HandoffId,
        /// The version the channel's frames are written with.
        version: ProtoVersion,
    },
    /// Close the control connection now; the session goes on without it.
    Close,
    /// The session is over; close the connection if still open. Emitted once.
    Finished(IncumbentEnd),
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Drain(Instant),
    Seal,
    ReleaseLock,
    AcquireLock,
    Resume,
    SendListeners(HandoffId, ProtoVersion),
    PassChannel(HandoffId, ProtoVersion),
    Close,
    Finished(IncumbentEnd),
}

/// What a recovering session waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    Lock,
    LockRetryAt(Instant),
    Resume,
}

#[derive(Clone, Copy, Debug)]
struct Handoff {
    /// `deadline_ms` past receipt, plus our slack.
    deadline_at: Instant,
    /// The drain grace, plus the supervisor's slack and one more.
    drain_watchdog: Instant,
}

struct Core<B: Buffer> {
    cfg: IncumbentConfig,
    step: IncumbentStep,
    out: Outbox<(), Action, B>,
    started: Instant,
    last_rx: Instant,
    version: Option<ProtoVersion>,
    id: Option<HandoffId>,
    supervisor_open: bool,
    /// The supervisor has sent heartbeats, so silence from it means
    /// something even while it waits on the successor. A reference
    /// supervisor sends none, and is then bounded by the deadline alone.
    supervisor_heartbeats: bool,
    handoff: Option<Handoff>,
    heartbeat: Beat,
    /// Decided while a hook ran: undo the handoff once it returns.
    pending: Option<EndCause>,
    cause: EndCause,
    recovery: Recovery,
    lock_give_up_at: Instant,
    /// `PassChannel` came (once per session).
    channel: bool,
    /// `ConnectionsPassed` was queued (once per session).
    passed_reported: bool,
}

/// The incumbent's state machine for one control session. See the crate
/// docs for the calling contract.
pub struct IncumbentSession<B: Buffer = DefaultBuffer> {
    rx: FrameDecoder<B>,
    core: Core<B>,
}

impl<B: Buffer> IncumbentSession<B> {
    /// Starts a session on a freshly accepted connection: the first output
    /// is this incumbent's `Hello`.
    pub fn new(now: Instant, config: IncumbentConfig, pid: u32, build_id: &[u8]) -> Self {
        let out = outbox_with_hello(Side::Incumbent, pid, build_id, config.capabilities);
        IncumbentSession {
            rx: FrameDecoder::new(),
            core: Core {
                cfg: config,
                step: IncumbentStep::AwaitingHelloAck,
                out,
                started: now,
                last_rx: now,
                version: None,
                id: None,
                supervisor_open: true,
                supervisor_heartbeats: false,
                handoff: None,
                heartbeat: Beat::new(config.heartbeat_interval),
                pending: None,
                cause: EndCause::SupervisorClosed,
                recovery: Recovery::Resume,
                lock_give_up_at: now,
                channel: false,
                passed_reported: false,
            },
        }
    }

    /// Where the session stands.
    pub fn step(&self) -> IncumbentStep {
        self.core.step
    }

    /// The handoff id the supervisor assigned, once known.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.core.id
    }

    /// Whether `Finished` has been queued.
    pub fn is_finished(&self) -> bool {
        self.core.step == IncumbentStep::Done
    }

    /// Bytes arrived from the supervisor; at most one frame is taken per
    /// call. Returns how many bytes were consumed.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) -> usize {
        if !self.core.supervisor_open
            || matches!(
                self.core.step,
                IncumbentStep::Recovering | IncumbentStep::Done
            )
        {
            return bytes.len();
        }
        let (used, frame) = self.rx.decode(bytes);
        self.core.on_frame(now, frame);
        used
    }

    /// The supervisor closed the connection (EOF), or reading or writing it
    /// failed.
    pub fn handle_closed(&mut self, now: Instant) {
        let c = &mut self.core;
        if !c.supervisor_open {
            return;
        }
        c.close_early();
        c.fail(now, EndCause::SupervisorClosed);
    }

    /// The drain hook finished.
    pub fn handle_drained(&mut self, now: Instant, report: DrainReport) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Draining {
            return;
        }
        c.heartbeat.stop();
        if let Some(cause) = c.pending.take() {
            return c.recover(now, cause, false);
        }
        c.send(&Message::Drained {
            open_conns_remaining: report.open_conns_remaining,
            accept_closed: report.accept_closed,
        });
        c.step = IncumbentStep::Drained;
        c.last_rx = now;
    }

    /// `count` connections went to the successor over the pass channel,
    /// `PassDone` last. Call it when the drain hook finished, before
    /// [`IncumbentSession::handle_drained`]: the supervisor hears the count
    /// just before `Drained`. Ignored without a `PassChannel`, after the
    /// first call, or once the session is closed (the frame has nowhere to
    /// go).
    pub fn handle_connections_passed(&mut self, _now: Instant, count: u32) {
        let c = &mut self.core;
        // Once: a second count would be a second `ConnectionsPassed`, which
        // the supervisor takes for a violation.
        if c.step != IncumbentStep::Draining || !c.channel || c.passed_reported {
            return;
        }
        c.passed_reported = true;
        if let Some(handoff_id) = c.id {
            c.send(&Message::ConnectionsPassed { handoff_id, count });
        }
    }

    /// The drain hook failed. The daemon is resumed.
    pub fn handle_drain_failed(&mut self, now: Instant) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Draining {
            return;
        }
        c.heartbeat.stop();
        let cause = c.pending.take().unwrap_or(EndCause::DrainFailed);
        c.recover(now, cause, false);
    }

    /// The seal hook finished: the writer state is flushed and closed. The
    /// lock is released next, then `SealComplete` is sent.
    pub fn handle_sealed(&mut self, now: Instant, report: SealReportRef<'_>) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Sealing {
            return;
        }
        c.heartbeat.stop();
        if let Some(cause) = c.pending.take() {
            // The handoff died while we sealed: keep the lock and reopen.
            return c.recover(now, cause, false);
        }
        let Some(handoff_id) = c.id else { return };
        let complete = Message::SealComplete {
            handoff_id,
            last_revision_per_shard: report.last_revision_per_shard,
            data_dir_fingerprint: report.data_dir_fingerprint,
        };
        if !c.out.fits(&complete) {
            // Releasing the lock with no way to say so would strand both
            // binaries; report a failed seal and keep serving instead.
            c.send(&Message::SealFailed {
                handoff_id,
                error: "the seal report does not fit in one frame",
                partial_state: "",
            });
            return c.recover(now, EndCause::SealFailed, false);
        }
        c.out.act(Action::ReleaseLock);
        c.send(&complete);
        c.step = IncumbentStep::Sealed;
        c.last_rx = now;
    }

    /// The seal hook failed; the lock is still held. `SealFailed` is sent
    /// and the daemon resumed.
    pub fn handle_seal_failed(&mut self, now: Instant, failure: SealFailure<'_>) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Sealing {
            return;
        }
        c.heartbeat.stop();
        if let Some(cause) = c.pending.take() {
            return c.recover(now, cause, false);
        }
        if let Some(handoff_id) = c.id {
            let msg = Message::SealFailed {
                handoff_id,
                error: failure.error,
                partial_state: failure.partial_state,
            };
            if c.out.fits(&msg) {
                c.send(&msg);
            } else {
                let error = ShortText::<1024>::from_str_truncated(failure.error);
                let partial = ShortText::<1024>::from_str_truncated(failure.partial_state);
                c.send(&Message::SealFailed {
                    handoff_id,
                    error: error.as_str(),
                    partial_state: partial.as_str(),
                });
            }
        }
        c.recover(now, EndCause::SealFailed, false);
    }

    /// The seal hook made progress; the supervisor is told (which also
    /// serves as a heartbeat).
    pub fn handle_seal_progress(
        &mut self,
        now: Instant,
        shards_sealed: u32,
        shards_total: u32,
        last_revision: u64,
    ) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Sealing || !c.supervisor_open || c.pending.is_some() {
            return;
        }
        c.send(&Message::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        });
        c.heartbeat.start(now);
    }

    /// The lock was taken.
    pub fn handle_lock_acquired(&mut self, _now: Instant) {
        let c = &mut self.core;
        if c.step == IncumbentStep::Recovering && c.recovery == Recovery::Lock {
            c.recovery = Recovery::Resume;
            c.out.act(Action::Resume);
        }
    }

    /// The lock is held by another process.
    pub fn handle_lock_busy(&mut self, now: Instant) {
        let c = &mut self.core;
        if c.step != IncumbentStep::Recovering || c.recovery != Recovery::Lock {
            return;
        }
        if now >= c.lock_give_up_at {
            let cause = c.cause;
            c.end(IncumbentEnd::Superseded(cause));
        } else {
            c.recovery = Recovery::LockRetryAt(now + c.cfg.lock_retry_interval);
        }
    }

    /// The resume hook finished: the daemon serves again.
    pub fn handle_resumed(&mut self, _now: Instant) {
        let c = &mut self.core;
        if c.step == IncumbentStep::Recovering && c.recovery == Recovery::Resume {
            let cause = c.cause;
            c.end(IncumbentEnd::Serving(cause));
        }
    }

    /// The resume hook failed.
    pub fn handle_resume_failed(&mut self, _now: Instant) {
        let c = &mut self.core;
        if c.step == IncumbentStep::Recovering && c.recovery == Recovery::Resume {
            let cause = c.cause;
            c.end(IncumbentEnd::ResumeFailed(cause));
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
    pub fn poll_output(&mut self) -> Option<IncumbentOutput<'_>> {
        let popped = self.core.out.pop()?;
        let c = &self.core;
        Some(match popped {
            Popped::Frame { start, len, .. } => IncumbentOutput::Transmit(c.out.frame(start, len)),
            Popped::Do(a) => match a {
                Action::Drain(deadline) => IncumbentOutput::Drain { deadline },
                Action::Seal => IncumbentOutput::Seal,
                Action::ReleaseLock => IncumbentOutput::ReleaseLock,
                Action::AcquireLock => IncumbentOutput::AcquireLock,
                Action::Resume => IncumbentOutput::Resume,
                Action::SendListeners(handoff_id, version) => IncumbentOutput::SendListeners {
                    handoff_id,
                    version,
                },
                Action::PassChannel(handoff_id, version) => IncumbentOutput::PassChannel {
                    handoff_id,
                    version,
                },
                Action::Close => IncumbentOutput::Close,
                Action::Finished(end) => IncumbentOutput::Finished(end),
            },
        })
    }
}

impl<B: Buffer> Core<B> {
    fn send(&mut self, msg: &Message<'_>) {
        if self.supervisor_open {
            let _ = self.out.send((), self.version.unwrap_or(PROTO_MAX), msg);
        }
    }

    fn close_early(&mut self) {
        self.heartbeat.stop();
        if self.supervisor_open {
            self.supervisor_open = false;
            self.out.act(Action::Close);
        }
    }

    fn end(&mut self, end: IncumbentEnd) {
        self.step = IncumbentStep::Done;
        self.heartbeat.stop();
        // `Finished` closes the connection; nothing more goes out.
        self.supervisor_open = false;
        self.out.act(Action::Finished(end));
    }

    /// Undo the handoff: take the lock back if it was released, then resume.
    fn recover(&mut self, now: Instant, cause: EndCause, need_lock: bool) {
        self.close_early();
        self.cause = cause;
        self.step = IncumbentStep::Recovering;
        if need_lock {
            self.recovery = Recovery::Lock;
            self.lock_give_up_at = now + self.cfg.lock_retry_window;
            self.out.act(Action::AcquireLock);
        } else {
            self.recovery = Recovery::Resume;
            self.out.act(Action::Resume);
        }
    }

    /// The session cannot go on; leave the daemon as it was before.
    fn fail(&mut self, now: Instant, cause: EndCause) {
        match self.step {
            IncumbentStep::AwaitingHelloAck | IncumbentStep::Idle => {
                self.end(IncumbentEnd::Serving(cause))
            }
            IncumbentStep::Draining | IncumbentStep::Sealing => {
                // The hook cannot be interrupted; undo once it returns.
                self.pending.get_or_insert(cause);
                self.close_early();
            }
            IncumbentStep::Drained => self.recover(now, cause, false),
            IncumbentStep::Sealed | IncumbentStep::Probation => self.recover(now, cause, true),
            IncumbentStep::Recovering | IncumbentStep::Done => {}
        }
    }

    fn on_frame(&mut self, now: Instant, frame: Result<Option<Frame<'_>>, FrameError>) {
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => return self.violation(now, Violation::Frame(e)),
        };
        self.last_rx = now;
        if let Some(v) = self.version
            && frame.version != v
        {
            return self.violation(
                now,
                Violation::WrongVersion {
                    got: frame.version,
                    negotiated: v,
                },
            );
        }
        if let (Some(expected), Some(got)) = (self.id, frame.message.handoff_id())
            && got != expected
        {
            return self.violation(now, Violation::WrongHandoffId { got, expected });
        }
        match (self.step, frame.message) {
            (_, Message::Heartbeat { .. }) => self.supervisor_heartbeats = true,
            (
                IncumbentStep::AwaitingHelloAck,
                Message::HelloAck {
                    proto_version_chosen,
                    handoff_id,
                },
            ) => {
                if !(PROTO_MIN..=PROTO_MAX).contains(&proto_version_chosen) {
                    return self.fail(
                        now,
                        EndCause::VersionMismatch(VersionMismatch {
                            our_min: PROTO_MIN,
                            our_max: PROTO_MAX,
                            their_min: proto_version_chosen,
                            their_max: proto_version_chosen,
                        }),
                    );
                }
                self.version = Some(proto_version_chosen);
                self.id = Some(handoff_id);
                self.step = IncumbentStep::Idle;
            }
            (
                IncumbentStep::Idle,
                Message::PrepareHandoff {
                    deadline_ms,
                    drain_grace_ms,
                    ..
                },
            ) => {
                let drain_until = now + Duration::from_millis(drain_grace_ms.min(deadline_ms));
                self.handoff = Some(Handoff {
                    deadline_at: now + Duration::from_millis(deadline_ms) + self.cfg.deadline_slack,
                    drain_watchdog: drain_until + self.cfg.wire_slack + self.cfg.wire_slack,
                });
                self.step = IncumbentStep::Draining;
                self.out.act(Action::Drain(drain_until));
                self.heartbeat.start(now);
            }
            (IncumbentStep::Idle, Message::ListenersRequest { handoff_id })
                if self
                    .cfg
                    .capabilities
                    .contains(Capabilities::RECLAIM_LISTENERS) =>
            {
                let version = self.version.unwrap_or(PROTO_MAX);
                self.out.act(Action::SendListeners(handoff_id, version));
            }
            (IncumbentStep::Idle, Message::PassChannel { handoff_id })
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
            (IncumbentStep::Drained, Message::SealRequest { .. }) => {
                self.step = IncumbentStep::Sealing;
                self.out.act(Action::Seal);
                self.heartbeat.start(now);
            }
            (IncumbentStep::Sealed, Message::Probation { window_ms, .. })
                if self.cfg.capabilities.contains(Capabilities::PROBATION) =>
            {
                // Our own deadline now covers the window, plus what the
                // supervisor takes to stop a failed successor before it
                // tells us to resume; past it we try the lock ourselves.
                let until = now + Duration::from_millis(window_ms) + self.cfg.deadline_slack;
                if let Some(h) = self.handoff.as_mut() {
                    h.deadline_at = h.deadline_at.max(until);
                }
                self.step = IncumbentStep::Probation;
                self.heartbeat.start(now);
            }
            (IncumbentStep::Sealed | IncumbentStep::Probation, Message::Commit { .. }) => {
                self.end(IncumbentEnd::Committed)
            }
            (
                IncumbentStep::Idle
                | IncumbentStep::Draining
                | IncumbentStep::Drained
                | IncumbentStep::Sealing
                | IncumbentStep::Sealed
                | IncumbentStep::Probation,
                Message::Abort { .. } | Message::ResumeAfterAbort { .. },
            ) => self.fail(now, EndCause::HandoffAborted),
            (step, msg) => self.violation(
                now,
                Violation::Unexpected {
                    message: msg.kind(),
                    awaiting: step.awaiting(),
                },
            ),
        }
    }

    fn violation(&mut self, now: Instant, v: Violation) {
        self.close_early();
        self.fail(now, EndCause::Violation(v));
    }

    fn liveness_deadline(&self) -> Option<Instant> {
        if !self.supervisor_open {
            return None;
        }
        match self.step {
            IncumbentStep::Idle | IncumbentStep::Drained => Some(self.last_rx + self.cfg.liveness),
            IncumbentStep::Sealed | IncumbentStep::Probation if self.supervisor_heartbeats => {
                Some(self.last_rx + self.cfg.liveness)
            }
            _ => None,
        }
    }

    fn step_deadline(&self) -> Option<Instant> {
        let h = self.handoff;
        match self.step {
            IncumbentStep::AwaitingHelloAck => Some(self.started + self.cfg.hello_timeout),
            IncumbentStep::Drained | IncumbentStep::Sealed | IncumbentStep::Probation => {
                h.map(|h| h.deadline_at)
            }
            IncumbentStep::Draining if self.pending.is_none() => {
                h.map(|h| h.deadline_at.min(h.drain_watchdog))
            }
            IncumbentStep::Sealing if self.pending.is_none() => h.map(|h| h.deadline_at),
            IncumbentStep::Recovering => match self.recovery {
                Recovery::LockRetryAt(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        if self.step == IncumbentStep::Done {
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
                IncumbentStep::AwaitingHelloAck => self.fail(now, EndCause::HelloTimeout),
                IncumbentStep::Draining => {
                    let h = self.handoff.map(|h| h.drain_watchdog);
                    let cause = if h.is_some_and(|w| w <= now) {
                        EndCause::DrainOverGrace
                    } else {
                        EndCause::DeadlineExceeded
                    };
                    self.fail(now, cause);
                }
                IncumbentStep::Recovering => {
                    self.recovery = Recovery::Lock;
                    self.out.act(Action::AcquireLock);
                }
                _ => self.fail(now, EndCause::DeadlineExceeded),
            }
        } else if let Some(t) = self.liveness_deadline()
            && t <= now
        {
            if mid_frame {
                // The supervisor is writing a frame right now.
                self.last_rx = now;
            } else {
                self.close_early();
                self.fail(now, EndCause::SupervisorUnresponsive);
            }
        }
    }
}
