//! Reference models of the three machines' transition tables.
//!
//! Each model is a plain, allocation-happy restatement of docs/PROTOCOL.md sections 3
//! and 4 and of the timing contract the machines document (their config
//! fields and `defaults`): "in step S, on input I, move to S' and emit these
//! kinds of outputs; the next deadline is T". It knows nothing of frames
//! beyond the decoded message, keeps its deadlines as plain instants, and
//! is written as tables of cases rather than the machines' own structure, so
//! that a slip in one is unlikely to be repeated in the other. The
//! model-based tests run a model beside the real machine on arbitrary input
//! sequences and compare step, outputs and next deadline after every input.
//!
//! Times use the machines' default configuration.

use std::time::Duration;

use handoff_core::{
    AbortReason, EndCause, FrameDecoder, IncumbentEnd, IncumbentOutput, IncumbentStep, Instant,
    JournalPhase, MessageKind, Side, Signal, SuccessorEnd, SuccessorFailure, SuccessorOutput,
    SuccessorStep, SupervisorOutput, SupervisorStep,
};

use crate::owned::OwnedMessage;

const HEARTBEAT: Duration = Duration::from_secs(2);
const LIVENESS: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const WIRE_SLACK: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(60);
const DRAIN_GRACE: Duration = Duration::from_secs(25);
const STARTUP_BUDGET: Duration = Duration::from_secs(30);
const KILL_GRACE: Duration = Duration::from_secs(2);
const LOCK_RETRY: Duration = Duration::from_millis(10);
const LOCK_WINDOW: Duration = Duration::from_secs(2);
const INCUMBENT_DEADLINE_SLACK: Duration = Duration::from_secs(6);

/// The one protocol version that exists.
pub const VERSION: u16 = 1;

/// A frame as it reaches a machine.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A well-formed frame.
    Message {
        /// Its version field.
        version: u16,
        /// Its message.
        message: OwnedMessage,
    },
    /// A frame of valid length whose payload does not decode.
    Malformed,
}

impl Frame {
    /// The bytes a peer would write.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Frame::Message { version, message } => message.frame(*version),
            // Variant 99 does not exist; the length is right, so the
            // stream stays in sync.
            Frame::Malformed => vec![3, 0, 0, 0, 1, 0, 99],
        }
    }
}

fn id_of(m: &OwnedMessage) -> Option<[u8; 16]> {
    m.with_message(|m| m.handoff_id().map(|h| *h.as_bytes()))
}

fn min(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

/// The kind of message in a frame a machine wrote.
fn frame_kind(frame: &[u8]) -> MessageKind {
    let mut dec: FrameDecoder<Vec<u8>> = FrameDecoder::new();
    match dec.decode(frame) {
        (n, Ok(Some(f))) if n == frame.len() => f.message.kind(),
        other => panic!("a machine wrote a frame that does not decode whole: {other:?}"),
    }
}

// =================================================================== successor

/// The successor's model.
pub mod successor {
    use super::*;

    /// What the successor is fed.
    #[derive(Clone, Debug)]
    pub enum Input {
        /// A frame from the supervisor.
        Frame(Frame),
        /// The supervisor closed the socket.
        Closed,
        /// The lock was taken.
        LockAcquired,
        /// The lock is busy.
        LockBusy,
        /// The daemon serves.
        Ready,
        /// The daemon could not start.
        StartFailed,
        /// Time passes to this instant, and the timeout is called.
        Timeout(Instant),
    }

    /// Why it failed, without details.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // the variants are `SuccessorFailure`'s
    pub enum Failure {
        Aborted,
        SupervisorGone,
        HelloTimeout,
        SupervisorUnresponsive,
        LockUnavailable,
        StartFailed,
        VersionMismatch,
        Violation,
    }

    /// An output, as far as the table cares.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // each is the machine's output of the same name
    pub enum Out {
        Transmit(MessageKind),
        AcquireLock,
        Start,
        Authoritative { supervisor_gone: bool },
        Failed(Failure),
    }

    /// Reads a real output as the model's.
    pub fn observe(out: &SuccessorOutput<'_>) -> Out {
        match out {
            SuccessorOutput::Transmit(f) => Out::Transmit(frame_kind(f)),
            SuccessorOutput::AcquireLock => Out::AcquireLock,
            SuccessorOutput::Start => Out::Start,
            // The model's sessions offer no capability, so a `PassChannel`
            // is a violation and this never comes.
            SuccessorOutput::PassChannel { .. } => {
                panic!("PassChannel from a session that offered no capability")
            }
            SuccessorOutput::Finished(SuccessorEnd::Authoritative { supervisor_gone }) => {
                Out::Authoritative {
                    supervisor_gone: *supervisor_gone,
                }
            }
            SuccessorOutput::Finished(SuccessorEnd::Failed(f)) => Out::Failed(match f {
                SuccessorFailure::Aborted => Failure::Aborted,
                SuccessorFailure::SupervisorGone => Failure::SupervisorGone,
                SuccessorFailure::HelloTimeout => Failure::HelloTimeout,
                SuccessorFailure::SupervisorUnresponsive => Failure::SupervisorUnresponsive,
                SuccessorFailure::LockUnavailable => Failure::LockUnavailable,
                SuccessorFailure::StartFailed => Failure::StartFailed,
                SuccessorFailure::VersionMismatch(_) => Failure::VersionMismatch,
                SuccessorFailure::Violation(_) => Failure::Violation,
                _ => panic!("a successor failure the model does not know: {f:?}"),
            }),
        }
    }

    /// The model.
    #[derive(Clone, Debug)]
    pub struct Model {
        /// Where it stands.
        pub step: SuccessorStep,
        /// The handoff id, once told.
        pub id: Option<[u8; 16]>,
        open: bool,
        heard_heartbeat: bool,
        hello_at: Instant,
        last_heard: Instant,
        beat_at: Option<Instant>,
        lock_asked: bool,
        lock_retry_at: Option<Instant>,
        lock_give_up_at: Instant,
    }

    impl Model {
        /// A successor that just said `Hello`, and that output.
        pub fn new(now: Instant) -> (Self, Vec<Out>) {
            let m = Model {
                step: SuccessorStep::AwaitingHelloAck,
                id: None,
                open: true,
                heard_heartbeat: false,
                hello_at: now,
                last_heard: now,
                beat_at: None,
                lock_asked: false,
                lock_retry_at: None,
                lock_give_up_at: now,
            };
            (m, vec![Out::Transmit(MessageKind::Hello)])
        }

        /// The next deadline.
        pub fn next_timeout(&self) -> Option<Instant> {
            use SuccessorStep::*;
            let step = match self.step {
                AwaitingHelloAck => Some(self.hello_at + HELLO_TIMEOUT),
                Locking => self.lock_retry_at,
                _ => None,
            };
            let liveness = (self.step == AwaitingBegin && self.heard_heartbeat && self.open)
                .then_some(self.last_heard + LIVENESS);
            min(min(step, liveness), self.beat_at)
        }

        fn finish(&mut self, out: &mut Vec<Out>, o: Out) {
            self.step = SuccessorStep::Done;
            self.beat_at = None;
            self.lock_retry_at = None;
            out.push(o);
        }

        /// Feeds one input; returns the outputs, in order.
        pub fn step(&mut self, now: Instant, input: &Input) -> Vec<Out> {
            use SuccessorStep::*;
            let mut out = Vec::new();
            if self.step == Done {
                return out;
            }
            match input {
                Input::Frame(f) => {
                    if self.open {
                        self.on_frame(now, f, &mut out);
                    }
                }
                Input::Closed => {
                    if self.open {
                        self.open = false;
                        self.beat_at = None;
                        // Holding the lock, it serves whatever the
                        // supervisor does: the lock decides (docs/PROTOCOL.md section 4).
                        if self.step != Starting {
                            self.finish(&mut out, Out::Failed(Failure::SupervisorGone));
                        }
                    }
                }
                Input::LockAcquired => {
                    if self.step == Locking && self.lock_asked {
                        self.lock_asked = false;
                        self.step = Starting;
                        out.push(Out::Start);
                    }
                }
                Input::LockBusy => {
                    if self.step == Locking && self.lock_asked {
                        self.lock_asked = false;
                        if now >= self.lock_give_up_at {
                            self.finish(&mut out, Out::Failed(Failure::LockUnavailable));
                        } else {
                            self.lock_retry_at = Some(now + LOCK_RETRY);
                        }
                    }
                }
                Input::Ready => {
                    if self.step == Starting {
                        if self.open {
                            out.push(Out::Transmit(MessageKind::Ready));
                        }
                        let gone = !self.open;
                        self.finish(
                            &mut out,
                            Out::Authoritative {
                                supervisor_gone: gone,
                            },
                        );
                    }
                }
                Input::StartFailed => {
                    if self.step == Starting {
                        self.finish(&mut out, Out::Failed(Failure::StartFailed));
                    }
                }
                Input::Timeout(_) => self.on_timeout(now, &mut out),
            }
            out
        }

        fn violation(&mut self, out: &mut Vec<Out>) {
            if self.step == SuccessorStep::Starting {
                // A garbled supervisor is a gone one; the lock is ours.
                self.open = false;
                self.beat_at = None;
            } else {
                self.finish(out, Out::Failed(Failure::Violation));
            }
        }

        fn on_frame(&mut self, now: Instant, f: &Frame, out: &mut Vec<Out>) {
            use SuccessorStep::*;
            let Frame::Message { version, message } = f else {
                return self.violation(out);
            };
            self.last_heard = now;
            if self.id.is_some() && *version != VERSION {
                return self.violation(out);
            }
            if let (Some(ours), Some(theirs)) = (self.id, id_of(message))
                && ours != theirs
            {
                return self.violation(out);
            }
            match (self.step, message) {
                (_, OwnedMessage::Heartbeat { .. }) => self.heard_heartbeat = true,
                (
                    AwaitingHelloAck,
                    OwnedMessage::HelloAck {
                        proto_version_chosen,
                        handoff_id,
                    },
                ) => {
                    if *proto_version_chosen != VERSION {
                        self.finish(out, Out::Failed(Failure::VersionMismatch));
                    } else {
                        self.id = Some(*handoff_id);
                        self.step = AwaitingBegin;
                    }
                }
                (AwaitingBegin, OwnedMessage::Begin { .. }) => {
                    self.step = Locking;
                    self.lock_asked = true;
                    self.lock_give_up_at = now + LOCK_WINDOW;
                    self.beat_at = Some(now + HEARTBEAT);
                    out.push(Out::AcquireLock);
                }
                (_, OwnedMessage::Abort { .. }) => {
                    self.finish(out, Out::Failed(Failure::Aborted));
                }
                _ => self.violation(out),
            }
        }

        fn on_timeout(&mut self, now: Instant, out: &mut Vec<Out>) {
            use SuccessorStep::*;
            if due(self.beat_at, now) {
                self.beat_at = Some(now + HEARTBEAT);
                if self.open {
                    out.push(Out::Transmit(MessageKind::Heartbeat));
                }
            }
            match self.step {
                AwaitingHelloAck if self.hello_at + HELLO_TIMEOUT <= now => {
                    self.finish(out, Out::Failed(Failure::HelloTimeout));
                }
                Locking if due(self.lock_retry_at, now) => {
                    self.lock_retry_at = None;
                    self.lock_asked = true;
                    out.push(Out::AcquireLock);
                }
                AwaitingBegin
                    if self.heard_heartbeat && self.open && self.last_heard + LIVENESS <= now =>
                {
                    self.finish(out, Out::Failed(Failure::SupervisorUnresponsive));
                }
                _ => {}
            }
        }
    }
}

// =================================================================== incumbent

/// The incumbent's model.
pub mod incumbent {
    use super::*;

    /// What the incumbent's session is fed.
    #[derive(Clone, Debug)]
    #[allow(missing_docs)] // each is the `handle_*` call of the same name
    pub enum Input {
        Frame(Frame),
        Closed,
        Drained,
        DrainFailed,
        Sealed,
        SealFailed,
        SealProgress,
        ConnectionsPassed,
        LockAcquired,
        LockBusy,
        Resumed,
        ResumeFailed,
        /// Time passes to this instant, and the timeout is called.
        Timeout(Instant),
    }

    /// Why a session ended, without details.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // the variants are `EndCause`'s
    pub enum Cause {
        SupervisorClosed,
        HandoffAborted,
        SealFailed,
        DrainFailed,
        HelloTimeout,
        SupervisorUnresponsive,
        DeadlineExceeded,
        DrainOverGrace,
        VersionMismatch,
        Violation,
    }

    /// How a session ended.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // the variants are `IncumbentEnd`'s
    pub enum End {
        Committed,
        Serving(Cause),
        Superseded(Cause),
        ResumeFailed(Cause),
    }

    /// An output, as far as the table cares.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // each is the machine's output of the same name
    pub enum Out {
        Transmit(MessageKind),
        /// Drain, by this deadline.
        Drain(Instant),
        Seal,
        ReleaseLock,
        AcquireLock,
        Resume,
        Close,
        Finished(End),
    }

    fn cause(c: &EndCause) -> Cause {
        match c {
            EndCause::SupervisorClosed => Cause::SupervisorClosed,
            EndCause::HandoffAborted => Cause::HandoffAborted,
            EndCause::SealFailed => Cause::SealFailed,
            EndCause::DrainFailed => Cause::DrainFailed,
            EndCause::HelloTimeout => Cause::HelloTimeout,
            EndCause::SupervisorUnresponsive => Cause::SupervisorUnresponsive,
            EndCause::DeadlineExceeded => Cause::DeadlineExceeded,
            EndCause::DrainOverGrace => Cause::DrainOverGrace,
            EndCause::VersionMismatch(_) => Cause::VersionMismatch,
            EndCause::Violation(_) => Cause::Violation,
            _ => panic!("an end cause the model does not know: {c:?}"),
        }
    }

    /// Reads a real output as the model's.
    pub fn observe(out: &IncumbentOutput<'_>) -> Out {
        match out {
            IncumbentOutput::Transmit(f) => Out::Transmit(frame_kind(f)),
            IncumbentOutput::Drain { deadline } => Out::Drain(*deadline),
            IncumbentOutput::Seal => Out::Seal,
            IncumbentOutput::ReleaseLock => Out::ReleaseLock,
            IncumbentOutput::AcquireLock => Out::AcquireLock,
            IncumbentOutput::Resume => Out::Resume,
            IncumbentOutput::Close => Out::Close,
            // The model's sessions offer no capability, so a
            // `ListenersRequest` is a violation and this never comes.
            IncumbentOutput::SendListeners { .. } => {
                panic!("SendListeners from a session that offered no capability")
            }
            // Nor is a `PassChannel` accepted.
            IncumbentOutput::PassChannel { .. } => {
                panic!("PassChannel from a session that offered no capability")
            }
            IncumbentOutput::Finished(end) => Out::Finished(match end {
                IncumbentEnd::Committed => End::Committed,
                IncumbentEnd::Serving(c) => End::Serving(cause(c)),
                IncumbentEnd::Superseded(c) => End::Superseded(cause(c)),
                IncumbentEnd::ResumeFailed(c) => End::ResumeFailed(cause(c)),
            }),
        }
    }

    /// What a recovering session waits for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Waiting {
        Lock,
        LockRetry(Instant),
        Resume,
    }

    /// The model.
    #[derive(Clone, Debug)]
    pub struct Model {
        /// Where it stands.
        pub step: IncumbentStep,
        /// The handoff id, once told.
        pub id: Option<[u8; 16]>,
        open: bool,
        heard_heartbeat: bool,
        started: Instant,
        last_heard: Instant,
        deadline_at: Option<Instant>,
        drain_watchdog: Option<Instant>,
        beat_at: Option<Instant>,
        /// Failed while a hook ran: undo once it returns.
        pending: Option<Cause>,
        cause: Cause,
        waiting: Waiting,
        lock_give_up_at: Instant,
    }

    impl Model {
        /// A session that just said `Hello`, and that output.
        pub fn new(now: Instant) -> (Self, Vec<Out>) {
            let m = Model {
                step: IncumbentStep::AwaitingHelloAck,
                id: None,
                open: true,
                heard_heartbeat: false,
                started: now,
                last_heard: now,
                deadline_at: None,
                drain_watchdog: None,
                beat_at: None,
                pending: None,
                cause: Cause::SupervisorClosed,
                waiting: Waiting::Resume,
                lock_give_up_at: now,
            };
            (m, vec![Out::Transmit(MessageKind::Hello)])
        }

        fn step_deadline(&self) -> Option<Instant> {
            use IncumbentStep::*;
            match self.step {
                AwaitingHelloAck => Some(self.started + HELLO_TIMEOUT),
                Drained | Sealed => self.deadline_at,
                Draining if self.pending.is_none() => min(self.deadline_at, self.drain_watchdog),
                Sealing if self.pending.is_none() => self.deadline_at,
                Recovering => match self.waiting {
                    Waiting::LockRetry(t) => Some(t),
                    _ => None,
                },
                _ => None,
            }
        }

        fn liveness(&self) -> Option<Instant> {
            use IncumbentStep::*;
            let watched = match self.step {
                Idle | Drained => true,
                // A supervisor that never heartbeats (the reference) is
                // held to the deadline alone once sealed.
                Sealed => self.heard_heartbeat,
                _ => false,
            };
            (self.open && watched).then_some(self.last_heard + LIVENESS)
        }

        /// The next deadline.
        pub fn next_timeout(&self) -> Option<Instant> {
            if self.step == IncumbentStep::Done {
                return None;
            }
            min(min(self.step_deadline(), self.liveness()), self.beat_at)
        }

        fn close(&mut self, out: &mut Vec<Out>) {
            self.beat_at = None;
            if self.open {
                self.open = false;
                out.push(Out::Close);
            }
        }

        fn end(&mut self, out: &mut Vec<Out>, end: End) {
            self.step = IncumbentStep::Done;
            self.beat_at = None;
            self.open = false;
            out.push(Out::Finished(end));
        }

        fn undo(&mut self, now: Instant, out: &mut Vec<Out>, cause: Cause, retake_lock: bool) {
            self.close(out);
            self.cause = cause;
            self.step = IncumbentStep::Recovering;
            if retake_lock {
                self.waiting = Waiting::Lock;
                self.lock_give_up_at = now + LOCK_WINDOW;
                out.push(Out::AcquireLock);
            } else {
                self.waiting = Waiting::Resume;
                out.push(Out::Resume);
            }
        }

        /// The handoff cannot go on: put the daemon back as it was.
        fn fail(&mut self, now: Instant, out: &mut Vec<Out>, cause: Cause) {
            use IncumbentStep::*;
            match self.step {
                AwaitingHelloAck | Idle => self.end(out, End::Serving(cause)),
                Draining | Sealing => {
                    if self.pending.is_none() {
                        self.pending = Some(cause);
                    }
                    self.close(out);
                }
                Drained => self.undo(now, out, cause, false),
                Sealed | Probation => self.undo(now, out, cause, true),
                Recovering | Done => {}
            }
        }

        fn violation(&mut self, now: Instant, out: &mut Vec<Out>) {
            self.close(out);
            self.fail(now, out, Cause::Violation);
        }

        /// Feeds one input; returns the outputs, in order.
        pub fn step(&mut self, now: Instant, input: &Input) -> Vec<Out> {
            use IncumbentStep::*;
            let mut out = Vec::new();
            if self.step == Done {
                return out;
            }
            let o = &mut out;
            match input {
                Input::Frame(f) => {
                    if self.open && self.step != Recovering {
                        self.on_frame(now, f, o);
                    }
                }
                Input::Closed => {
                    if self.open {
                        self.close(o);
                        self.fail(now, o, Cause::SupervisorClosed);
                    }
                }
                Input::Drained => {
                    if self.step == Draining {
                        self.beat_at = None;
                        match self.pending.take() {
                            Some(c) => self.undo(now, o, c, false),
                            None => {
                                o.push(Out::Transmit(MessageKind::Drained));
                                self.step = Drained;
                                self.last_heard = now;
                            }
                        }
                    }
                }
                Input::DrainFailed => {
                    if self.step == Draining {
                        self.beat_at = None;
                        let c = self.pending.take().unwrap_or(Cause::DrainFailed);
                        self.undo(now, o, c, false);
                    }
                }
                Input::Sealed => {
                    if self.step == Sealing {
                        self.beat_at = None;
                        match self.pending.take() {
                            // Died while sealing: the lock was never let go.
                            Some(c) => self.undo(now, o, c, false),
                            None => {
                                // docs/PROTOCOL.md section 3.1, step 7: release, then say so.
                                o.push(Out::ReleaseLock);
                                o.push(Out::Transmit(MessageKind::SealComplete));
                                self.step = Sealed;
                                self.last_heard = now;
                            }
                        }
                    }
                }
                Input::SealFailed => {
                    if self.step == Sealing {
                        self.beat_at = None;
                        match self.pending.take() {
                            Some(c) => self.undo(now, o, c, false),
                            None => {
                                o.push(Out::Transmit(MessageKind::SealFailed));
                                self.undo(now, o, Cause::SealFailed, false);
                            }
                        }
                    }
                }
                Input::SealProgress => {
                    if self.step == Sealing && self.open && self.pending.is_none() {
                        o.push(Out::Transmit(MessageKind::SealProgress));
                        self.beat_at = Some(now + HEARTBEAT);
                    }
                }
                // No `PassChannel` is ever taken (the sessions offer no
                // capability), so there is no count to send.
                Input::ConnectionsPassed => {}
                Input::LockAcquired => {
                    if self.step == Recovering && self.waiting == Waiting::Lock {
                        self.waiting = Waiting::Resume;
                        o.push(Out::Resume);
                    }
                }
                Input::LockBusy => {
                    if self.step == Recovering && self.waiting == Waiting::Lock {
                        if now >= self.lock_give_up_at {
                            let c = self.cause;
                            self.end(o, End::Superseded(c));
                        } else {
                            self.waiting = Waiting::LockRetry(now + LOCK_RETRY);
                        }
                    }
                }
                Input::Resumed => {
                    if self.step == Recovering && self.waiting == Waiting::Resume {
                        let c = self.cause;
                        self.end(o, End::Serving(c));
                    }
                }
                Input::ResumeFailed => {
                    if self.step == Recovering && self.waiting == Waiting::Resume {
                        let c = self.cause;
                        self.end(o, End::ResumeFailed(c));
                    }
                }
                Input::Timeout(_) => self.on_timeout(now, o),
            }
            out
        }

        fn on_frame(&mut self, now: Instant, f: &Frame, out: &mut Vec<Out>) {
            use IncumbentStep::*;
            let Frame::Message { version, message } = f else {
                return self.violation(now, out);
            };
            self.last_heard = now;
            if self.id.is_some() && *version != VERSION {
                return self.violation(now, out);
            }
            if let (Some(ours), Some(theirs)) = (self.id, id_of(message))
                && ours != theirs
            {
                return self.violation(now, out);
            }
            match (self.step, message) {
                (_, OwnedMessage::Heartbeat { .. }) => self.heard_heartbeat = true,
                (
                    AwaitingHelloAck,
                    OwnedMessage::HelloAck {
                        proto_version_chosen,
                        handoff_id,
                    },
                ) => {
                    if *proto_version_chosen == VERSION {
                        self.id = Some(*handoff_id);
                        self.step = Idle;
                    } else {
                        self.fail(now, out, Cause::VersionMismatch);
                    }
                }
                (
                    Idle,
                    OwnedMessage::PrepareHandoff {
                        deadline_ms,
                        drain_grace_ms,
                        ..
                    },
                ) => {
                    // docs/PROTOCOL.md section 3.2: the incumbent keeps its own copy of the
                    // deadline, and bounds the drain by its grace plus the
                    // supervisor's slack and one more.
                    let drain_until = now + Duration::from_millis(*drain_grace_ms.min(deadline_ms));
                    self.deadline_at =
                        Some(now + Duration::from_millis(*deadline_ms) + INCUMBENT_DEADLINE_SLACK);
                    self.drain_watchdog = Some(drain_until + WIRE_SLACK + WIRE_SLACK);
                    self.step = Draining;
                    self.beat_at = Some(now + HEARTBEAT);
                    out.push(Out::Drain(drain_until));
                }
                (Drained, OwnedMessage::SealRequest { .. }) => {
                    self.step = Sealing;
                    self.beat_at = Some(now + HEARTBEAT);
                    out.push(Out::Seal);
                }
                (Sealed, OwnedMessage::Commit { .. }) => self.end(out, End::Committed),
                (
                    Idle | Draining | Drained | Sealing | Sealed,
                    OwnedMessage::Abort { .. } | OwnedMessage::ResumeAfterAbort { .. },
                ) => self.fail(now, out, Cause::HandoffAborted),
                _ => self.violation(now, out),
            }
        }

        fn on_timeout(&mut self, now: Instant, out: &mut Vec<Out>) {
            use IncumbentStep::*;
            if due(self.beat_at, now) {
                self.beat_at = Some(now + HEARTBEAT);
                if self.open {
                    out.push(Out::Transmit(MessageKind::Heartbeat));
                }
            }
            if due(self.step_deadline(), now) {
                match self.step {
                    AwaitingHelloAck => self.fail(now, out, Cause::HelloTimeout),
                    Draining => {
                        let c = if due(self.drain_watchdog, now) {
                            Cause::DrainOverGrace
                        } else {
                            Cause::DeadlineExceeded
                        };
                        self.fail(now, out, c);
                    }
                    Recovering => {
                        self.waiting = Waiting::Lock;
                        out.push(Out::AcquireLock);
                    }
                    _ => self.fail(now, out, Cause::DeadlineExceeded),
                }
            } else if due(self.liveness(), now) {
                self.close(out);
                self.fail(now, out, Cause::SupervisorUnresponsive);
            }
        }
    }
}

// ================================================================== supervisor

/// The supervisor's model.
pub mod supervisor {
    use super::*;

    /// What the supervisor's handoff is fed.
    #[derive(Clone, Debug)]
    #[allow(missing_docs)] // each is the `handle_*` call of the same name
    pub enum Input {
        Connected,
        ConnectFailed,
        Frame(Side, Frame),
        Closed(Side),
        Spawned(u32),
        SpawnFailed,
        SuccessorExited,
        JournalFailed,
        /// Time passes to this instant, and the timeout is called.
        Timeout(Instant),
    }

    /// Why a handoff aborted: the reason's name, and its step if it has one.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Reason {
        /// The variant's name.
        pub name: &'static str,
        /// The step it names, or the peer it blames.
        pub detail: Option<&'static str>,
    }

    fn reason(name: &'static str) -> Reason {
        Reason { name, detail: None }
    }

    fn reason_at(name: &'static str, step: SupervisorStep) -> Reason {
        Reason {
            name,
            detail: Some(step_name(step)),
        }
    }

    fn step_name(step: SupervisorStep) -> &'static str {
        use SupervisorStep::*;
        match step {
            ConnectingIncumbent => "ConnectingIncumbent",
            AwaitingIncumbentHello => "AwaitingIncumbentHello",
            SpawningSuccessor => "SpawningSuccessor",
            AwaitingSuccessorHello => "AwaitingSuccessorHello",
            Draining => "Draining",
            Sealing => "Sealing",
            AwaitingReady => "AwaitingReady",
            Probation => "Probation",
            Aborting => "Aborting",
            Done => "Done",
        }
    }

    fn peer_name(p: Side) -> &'static str {
        match p {
            Side::Incumbent => "incumbent",
            Side::Successor => "successor",
        }
    }

    fn observe_reason(r: &AbortReason) -> Reason {
        use AbortReason as A;
        match r {
            A::IncumbentUnreachable => reason("IncumbentUnreachable"),
            A::IncumbentHelloTimeout => reason("IncumbentHelloTimeout"),
            A::IncumbentClosed { step } => reason_at("IncumbentClosed", *step),
            A::IncumbentUnresponsive { step } => reason_at("IncumbentUnresponsive", *step),
            A::SpawnFailed => reason("SpawnFailed"),
            A::SuccessorStartupTimeout => reason("SuccessorStartupTimeout"),
            A::SuccessorClosed { step } => reason_at("SuccessorClosed", *step),
            A::SuccessorExited { step } => reason_at("SuccessorExited", *step),
            A::DrainTimeout => reason("DrainTimeout"),
            A::SealFailed => reason("SealFailed"),
            A::SealTimeout => reason("SealTimeout"),
            A::ReadyTimeout => reason("ReadyTimeout"),
            A::DeadlineExceeded { step } => reason_at("DeadlineExceeded", *step),
            A::VersionMismatch { peer, .. } => Reason {
                name: "VersionMismatch",
                detail: Some(peer_name(*peer)),
            },
            A::ProtocolViolation { peer, .. } => Reason {
                name: "ProtocolViolation",
                detail: Some(peer_name(*peer)),
            },
            _ => panic!("an abort reason the model does not know: {r:?}"),
        }
    }

    /// An output, as far as the table cares.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[allow(missing_docs)] // each is the machine's output of the same name
    pub enum Out {
        Connect,
        Transmit(Side, MessageKind),
        Spawn,
        Signal(Signal),
        Disconnect(Side),
        Journal(JournalPhase),
        ClearJournal,
        Finished(Result<(), Reason>),
    }

    /// Reads a real output as the model's.
    pub fn observe(out: &SupervisorOutput<'_>) -> Out {
        match out {
            SupervisorOutput::ConnectIncumbent => Out::Connect,
            SupervisorOutput::Transmit { to, frame } => Out::Transmit(*to, frame_kind(frame)),
            // The model's peers offer no capability in their `Hello`, so
            // no pass channel is ever set up.
            SupervisorOutput::TransmitWithChannelEnd { to, frame } => panic!(
                "{:?} with a channel end to the {to}, though the peers offered nothing",
                frame_kind(frame)
            ),
            SupervisorOutput::SpawnSuccessor => Out::Spawn,
            SupervisorOutput::Signal(s) => Out::Signal(*s),
            SupervisorOutput::Disconnect(p) => Out::Disconnect(*p),
            SupervisorOutput::WriteJournal(r) => Out::Journal(r.phase),
            SupervisorOutput::ClearJournal => Out::ClearJournal,
            SupervisorOutput::Finished(o) => {
                Out::Finished(o.result.as_ref().map(|_| ()).map_err(observe_reason))
            }
        }
    }

    #[derive(Clone, Debug, Default)]
    struct IncumbentSide {
        open: bool,
        negotiated: bool,
        prepared: bool,
        sealed: bool,
        seal_failed: bool,
        last_heard: Option<Instant>,
    }

    #[derive(Clone, Debug, Default)]
    struct SuccessorSide {
        pid: Option<u32>,
        spawn_pending: bool,
        open: bool,
        negotiated: bool,
        exited: bool,
        killed: bool,
        given_up: bool,
    }

    /// The model.
    #[derive(Clone, Debug)]
    pub struct Model {
        /// Where it stands.
        pub step: SupervisorStep,
        /// The handoff id.
        pub id: [u8; 16],
        deadline_at: Instant,
        connected_at: Option<Instant>,
        spawned_at: Option<Instant>,
        successor_hello_at: Option<Instant>,
        o: IncumbentSide,
        n: SuccessorSide,
        beat_incumbent: Option<Instant>,
        beat_successor: Option<Instant>,
        kill_at: Option<Instant>,
        journaled: bool,
        abort_reason: Option<Reason>,
    }

    impl Model {
        /// A handoff started at `now` with handoff id `id`, and its first
        /// output.
        pub fn new(now: Instant, id: [u8; 16]) -> (Self, Vec<Out>) {
            let m = Model {
                step: SupervisorStep::ConnectingIncumbent,
                id,
                deadline_at: now + DEADLINE,
                connected_at: None,
                spawned_at: None,
                successor_hello_at: None,
                o: IncumbentSide::default(),
                n: SuccessorSide::default(),
                beat_incumbent: None,
                beat_successor: None,
                kill_at: None,
                journaled: false,
                abort_reason: None,
            };
            (m, vec![Out::Connect])
        }

        /// The successor's pid, once spawned.
        pub fn successor_pid(&self) -> Option<u32> {
            self.n.pid
        }

        fn step_deadline(&self) -> Option<Instant> {
            use SupervisorStep::*;
            let d = self.deadline_at;
            let after = |mark: Option<Instant>, budget: Duration| mark.map(|t| t + budget);
            match self.step {
                ConnectingIncumbent | SpawningSuccessor => Some(d),
                AwaitingIncumbentHello => min(after(self.connected_at, HELLO_TIMEOUT), Some(d)),
                AwaitingSuccessorHello => min(after(self.spawned_at, STARTUP_BUDGET), Some(d)),
                Draining => min(after(self.successor_hello_at, DRAIN_GRACE), Some(d))
                    .map(|t| t + WIRE_SLACK),
                Sealing | AwaitingReady => Some(d + WIRE_SLACK),
                // The model runs with probation off: never reached.
                Probation | Aborting | Done => None,
            }
        }

        fn liveness(&self) -> Option<Instant> {
            use SupervisorStep::*;
            match self.step {
                Draining | Sealing if self.o.open => self.o.last_heard.map(|t| t + LIVENESS),
                _ => None,
            }
        }

        /// The next deadline.
        pub fn next_timeout(&self) -> Option<Instant> {
            if self.step == SupervisorStep::Done {
                return None;
            }
            [
                self.step_deadline(),
                self.liveness(),
                self.beat_incumbent,
                self.beat_successor,
                self.kill_at,
            ]
            .into_iter()
            .fold(None, min)
        }

        fn disconnect(&mut self, out: &mut Vec<Out>, peer: Side) {
            let open = match peer {
                Side::Incumbent => &mut self.o.open,
                Side::Successor => &mut self.n.open,
            };
            if std::mem::take(open) {
                out.push(Out::Disconnect(peer));
            }
        }

        fn journal(&mut self, out: &mut Vec<Out>, phase: JournalPhase) {
            self.journaled = true;
            out.push(Out::Journal(phase));
        }

        fn finish(&mut self, out: &mut Vec<Out>, result: Result<(), Reason>) {
            self.step = SupervisorStep::Done;
            self.beat_incumbent = None;
            self.beat_successor = None;
            self.kill_at = None;
            out.push(Out::Finished(result));
        }

        fn commit(&mut self, out: &mut Vec<Out>) {
            // docs/PROTOCOL.md section 3.1, step 10: from Ready the successor is authoritative;
            // Commit to the old binary is best effort.
            if self.o.open {
                out.push(Out::Transmit(Side::Incumbent, MessageKind::Commit));
            }
            self.disconnect(out, Side::Incumbent);
            self.disconnect(out, Side::Successor);
            // Nothing is left to recover: the record goes, with no
            // `Committed` record before it.
            out.push(Out::ClearJournal);
            self.finish(out, Ok(()));
        }

        fn stop_successor(&mut self, now: Instant, out: &mut Vec<Out>) {
            if self.n.open && self.n.negotiated {
                out.push(Out::Transmit(Side::Successor, MessageKind::Abort));
            }
            self.disconnect(out, Side::Successor);
            out.push(Out::Signal(Signal::Terminate));
            self.kill_at = Some(now + KILL_GRACE);
        }

        /// docs/PROTOCOL.md section 4: roll back. The incumbent is told to resume at once if it
        /// still holds its lock; if it sealed, only once the successor can
        /// no longer hold the lock.
        fn abort(&mut self, now: Instant, out: &mut Vec<Out>, why: Reason) {
            use SupervisorStep::*;
            if matches!(self.step, Aborting | Done) {
                return;
            }
            self.step = Aborting;
            self.abort_reason = Some(why);
            self.beat_incumbent = None;
            self.beat_successor = None;
            if self.o.open && !self.o.sealed {
                if self.o.prepared && !self.o.seal_failed {
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::Abort));
                }
                self.disconnect(out, Side::Incumbent);
            }
            if self.n.pid.is_some() && !self.n.exited {
                self.stop_successor(now, out);
            }
            self.try_finish_abort(out);
        }

        fn try_finish_abort(&mut self, out: &mut Vec<Out>) {
            if self.step != SupervisorStep::Aborting || self.n.spawn_pending {
                return;
            }
            if self.n.pid.is_some() && !self.n.exited && !self.n.given_up {
                return;
            }
            self.kill_at = None;
            if self.o.sealed && self.o.open {
                if self.journaled {
                    self.journal(out, JournalPhase::ResumingAfterAbort);
                }
                out.push(Out::Transmit(
                    Side::Incumbent,
                    MessageKind::ResumeAfterAbort,
                ));
                self.disconnect(out, Side::Incumbent);
            }
            self.disconnect(out, Side::Successor);
            if self.journaled {
                out.push(Out::ClearJournal);
            }
            let why = self.abort_reason.expect("aborting has a reason");
            self.finish(out, Err(why));
        }

        /// Feeds one input; returns the outputs, in order.
        pub fn step(&mut self, now: Instant, input: &Input) -> Vec<Out> {
            use SupervisorStep::*;
            let mut out = Vec::new();
            if self.step == Done {
                return out;
            }
            let o = &mut out;
            match input {
                Input::Connected => {
                    if self.step == ConnectingIncumbent {
                        self.connected_at = Some(now);
                        self.o.open = true;
                        self.o.last_heard = Some(now);
                        self.step = AwaitingIncumbentHello;
                    }
                }
                Input::ConnectFailed => {
                    if self.step == ConnectingIncumbent {
                        self.abort(now, o, reason("IncumbentUnreachable"));
                    }
                }
                Input::Frame(Side::Incumbent, f) => {
                    if self.o.open {
                        self.on_incumbent_frame(now, f, o);
                    }
                }
                Input::Frame(Side::Successor, f) => {
                    if self.n.open {
                        self.on_successor_frame(now, f, o);
                    }
                }
                Input::Closed(Side::Incumbent) => {
                    if self.o.open {
                        self.disconnect(o, Side::Incumbent);
                        match self.step {
                            Done => {}
                            Aborting | AwaitingReady => self.beat_incumbent = None,
                            step => self.abort(now, o, reason_at("IncumbentClosed", step)),
                        }
                    }
                }
                Input::Closed(Side::Successor) => {
                    if self.n.open {
                        self.disconnect(o, Side::Successor);
                        match self.step {
                            Done | Aborting => {}
                            step => self.abort(now, o, reason_at("SuccessorClosed", step)),
                        }
                    }
                }
                Input::Spawned(pid) => {
                    if self.n.spawn_pending {
                        self.n.spawn_pending = false;
                        self.n.pid = Some(*pid);
                        self.n.open = true;
                        self.spawned_at = Some(now);
                        match self.step {
                            SpawningSuccessor => {
                                self.step = AwaitingSuccessorHello;
                                self.beat_incumbent = Some(now + HEARTBEAT);
                            }
                            Aborting => {
                                self.stop_successor(now, o);
                                self.try_finish_abort(o);
                            }
                            _ => {}
                        }
                    }
                }
                Input::SpawnFailed => {
                    if self.n.spawn_pending {
                        self.n.spawn_pending = false;
                        self.spawned_at = Some(now);
                        match self.step {
                            SpawningSuccessor => self.abort(now, o, reason("SpawnFailed")),
                            Aborting => self.try_finish_abort(o),
                            _ => {}
                        }
                    }
                }
                Input::SuccessorExited => {
                    if self.n.pid.is_some() && !self.n.exited {
                        self.n.exited = true;
                        match self.step {
                            Done => {}
                            Aborting => self.try_finish_abort(o),
                            step => self.abort(now, o, reason_at("SuccessorExited", step)),
                        }
                    }
                }
                Input::JournalFailed => {}
                Input::Timeout(_) => self.on_timeout(now, o),
            }
            out
        }

        /// The frame is well formed, of the negotiated version and of this
        /// handoff; `Err(())` if not.
        fn admissible(&self, negotiated: bool, f: &Frame) -> Result<OwnedMessage, ()> {
            let Frame::Message { version, message } = f else {
                return Err(());
            };
            if negotiated && *version != VERSION {
                return Err(());
            }
            if id_of(message).is_some_and(|id| id != self.id) {
                return Err(());
            }
            Ok(message.clone())
        }

        fn incumbent_violation(&mut self, now: Instant, out: &mut Vec<Out>) {
            use SupervisorStep::*;
            match self.step {
                Aborting | Done => {}
                // Sealed: the lock is free and the successor has Begin; a
                // broken incumbent changes nothing.
                AwaitingReady => {
                    self.beat_incumbent = None;
                    self.disconnect(out, Side::Incumbent);
                }
                _ => {
                    self.disconnect(out, Side::Incumbent);
                    self.abort(
                        now,
                        out,
                        Reason {
                            name: "ProtocolViolation",
                            detail: Some("incumbent"),
                        },
                    );
                }
            }
        }

        fn successor_violation(&mut self, now: Instant, out: &mut Vec<Out>) {
            self.abort(
                now,
                out,
                Reason {
                    name: "ProtocolViolation",
                    detail: Some("successor"),
                },
            );
        }

        fn on_incumbent_frame(&mut self, now: Instant, f: &Frame, out: &mut Vec<Out>) {
            use SupervisorStep::*;
            let malformed = matches!(f, Frame::Malformed);
            if matches!(self.step, Aborting | Done) && !malformed {
                return;
            }
            if !malformed {
                self.o.last_heard = Some(now);
            }
            let Ok(msg) = self.admissible(self.o.negotiated, f) else {
                return self.incumbent_violation(now, out);
            };
            match (self.step, &msg) {
                (_, OwnedMessage::Heartbeat { .. }) => {}
                (
                    AwaitingIncumbentHello,
                    OwnedMessage::Hello {
                        role,
                        proto_min,
                        proto_max,
                        ..
                    },
                ) => {
                    if *role != Side::Incumbent {
                        return self.incumbent_violation(now, out);
                    }
                    if !(*proto_min..=*proto_max).contains(&VERSION) {
                        self.disconnect(out, Side::Incumbent);
                        return self.abort(
                            now,
                            out,
                            Reason {
                                name: "VersionMismatch",
                                detail: Some("incumbent"),
                            },
                        );
                    }
                    self.o.negotiated = true;
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::HelloAck));
                    // Announces that this supervisor heartbeats.
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::Heartbeat));
                    self.step = SpawningSuccessor;
                    self.n.spawn_pending = true;
                    out.push(Out::Spawn);
                }
                (Draining, OwnedMessage::Drained { .. }) => {
                    self.journal(out, JournalPhase::Draining);
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::SealRequest));
                    self.step = Sealing;
                }
                (Draining | Sealing, OwnedMessage::SealProgress { .. }) => {}
                (Sealing, OwnedMessage::SealComplete { .. }) => {
                    self.o.sealed = true;
                    // One record for the seal and the `Begin` sent with it.
                    out.push(Out::Transmit(Side::Successor, MessageKind::Begin));
                    self.journal(out, JournalPhase::AwaitingReady);
                    self.step = AwaitingReady;
                    self.beat_successor = None;
                    self.beat_incumbent = Some(now + HEARTBEAT);
                }
                (Sealing, OwnedMessage::SealFailed { .. }) => {
                    self.o.seal_failed = true;
                    self.abort(now, out, reason("SealFailed"));
                }
                _ => self.incumbent_violation(now, out),
            }
        }

        fn on_successor_frame(&mut self, now: Instant, f: &Frame, out: &mut Vec<Out>) {
            use SupervisorStep::*;
            if matches!(self.step, Aborting | Done) {
                return;
            }
            let Ok(msg) = self.admissible(self.n.negotiated, f) else {
                return self.successor_violation(now, out);
            };
            match (self.step, &msg) {
                (_, OwnedMessage::Heartbeat { .. }) => {}
                (
                    AwaitingSuccessorHello,
                    OwnedMessage::Hello {
                        role,
                        pid,
                        proto_min,
                        proto_max,
                        ..
                    },
                ) => {
                    if *role != Side::Successor || Some(*pid) != self.n.pid {
                        return self.successor_violation(now, out);
                    }
                    if !(*proto_min..=*proto_max).contains(&VERSION) {
                        return self.abort(
                            now,
                            out,
                            Reason {
                                name: "VersionMismatch",
                                detail: Some("successor"),
                            },
                        );
                    }
                    self.n.negotiated = true;
                    self.successor_hello_at = Some(now);
                    out.push(Out::Transmit(Side::Successor, MessageKind::HelloAck));
                    out.push(Out::Transmit(Side::Successor, MessageKind::Heartbeat));
                    self.journal(out, JournalPhase::Negotiating);
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::PrepareHandoff));
                    self.o.prepared = true;
                    self.o.last_heard = Some(now);
                    self.step = Draining;
                    self.beat_incumbent = None;
                    self.beat_successor = Some(now + HEARTBEAT);
                }
                (AwaitingReady, OwnedMessage::Ready { .. }) => self.commit(out),
                _ => self.successor_violation(now, out),
            }
        }

        fn on_timeout(&mut self, now: Instant, out: &mut Vec<Out>) {
            use SupervisorStep::*;
            if due(self.kill_at, now) {
                if !self.n.killed {
                    self.n.killed = true;
                    out.push(Out::Signal(Signal::Kill));
                    self.kill_at = Some(now + KILL_GRACE);
                } else {
                    self.n.given_up = true;
                    self.try_finish_abort(out);
                }
            }
            if due(self.step_deadline(), now) {
                let step = self.step;
                let before_deadline = self.deadline_at > now;
                let why = match step {
                    AwaitingIncumbentHello if before_deadline => reason("IncumbentHelloTimeout"),
                    AwaitingSuccessorHello if before_deadline => reason("SuccessorStartupTimeout"),
                    Draining => reason("DrainTimeout"),
                    Sealing => reason("SealTimeout"),
                    AwaitingReady => reason("ReadyTimeout"),
                    _ => reason_at("DeadlineExceeded", step),
                };
                self.abort(now, out, why);
            } else if due(self.liveness(), now) {
                let step = self.step;
                self.disconnect(out, Side::Incumbent);
                self.abort(now, out, reason_at("IncumbentUnresponsive", step));
            }
            // A heartbeat is not queued behind another frame to the same
            // peer: any frame proves liveness.
            let queued = |out: &Vec<Out>, p: Side| {
                out.iter()
                    .any(|o| matches!(o, Out::Transmit(to, _) if *to == p))
            };
            if due(self.beat_incumbent, now) {
                self.beat_incumbent = Some(now + HEARTBEAT);
                if self.o.open && !queued(out, Side::Incumbent) {
                    out.push(Out::Transmit(Side::Incumbent, MessageKind::Heartbeat));
                }
            }
            if due(self.beat_successor, now) {
                self.beat_successor = Some(now + HEARTBEAT);
                if self.n.open && !queued(out, Side::Successor) {
                    out.push(Out::Transmit(Side::Successor, MessageKind::Heartbeat));
                }
            }
        }
    }
}
