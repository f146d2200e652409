//! The successor target: a script of inputs against one session, with every
//! output checked. The rules are docs/PROTOCOL.md's invariant 5 (section 7) and section 3's order: the
//! lock is asked for only after `Begin`, `Start` (opening state, the first
//! write) only after the lock was granted, `Ready` only after `Start` and
//! only to a supervisor still there, heartbeats only while starting up after
//! `Begin`, and the session ends once, for a reason the step can give. The
//! session offers `PASS_CONNECTIONS`: the pass channel is taken once, and
//! only while waiting for `Begin`.

use super::shadow::{Received, Shadow, consumed, sent};
use super::{
    Chunk, Clocked, FuzzBuffer, MACHINE, PLACEHOLDER_ID, SHADOW, SUCCESSOR_BUILD_ID, SUCCESSOR_PID,
    StepEnd, SuccessorInput, check_step_end, clock, clocked_driver, held,
};
use handoff_core::Instant;
use handoff_core::MessageKind;
use handoff_core::ReadyReportRef;
use handoff_core::{Capabilities, HandoffId, PROTO_MAX, PROTO_MIN, Side};
use handoff_core::{Message, Revisions, Strings};
use handoff_core::{
    SuccessorConfig, SuccessorEnd, SuccessorFailure, SuccessorOutput, SuccessorSession,
    SuccessorStep,
};

/// Runs `script` against a fresh session with buffers `B`.
pub(super) fn run<B: FuzzBuffer>(script: &[SuccessorInput]) {
    // As a driver configures it for a daemon that takes passed connections.
    let cfg = SuccessorConfig {
        capabilities: Capabilities::PASS_CONNECTIONS,
        ..SuccessorConfig::default()
    };
    let now = Instant::ZERO;
    let mut d = Driver {
        m: SuccessorSession::<B>::new(now, cfg, SUCCESSOR_PID, SUCCESSOR_BUILD_ID),
        check: Check::<B>::new(cfg, now),
    };
    d.settle(Call::New, None, SuccessorStep::AwaitingHelloAck, None);
    for input in script {
        d.apply(input);
    }
    drop(d);
    if B::GROWS {
        assert_eq!(held(MACHINE), 0, "a dropped session still books bytes");
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    New,
    Input,
    Closed,
    LockAcquired,
    LockBusy,
    Ready,
    StartFailed,
    Timeout,
}

struct Ctx<'a> {
    call: Call,
    input: Option<&'a SuccessorInput>,
    before: SuccessorStep,
    now: Instant,
    received: Received,
    answered: bool,
    /// The handoff id the session knew before the step.
    id_before: Option<HandoffId>,
    /// The handoff id the session knows after the step.
    id: Option<HandoffId>,
}

struct Driver<B: FuzzBuffer> {
    m: SuccessorSession<B>,
    check: Check<B>,
}

impl<B: FuzzBuffer> Driver<B> {
    fn apply(&mut self, input: &SuccessorInput) {
        let now = self.check.now;
        let i = Some(input);
        match input {
            SuccessorInput::Bytes(Chunk(bytes)) => self.feed(bytes, i),
            SuccessorInput::Frame(msg) => {
                let id = self.m.handoff_id().unwrap_or(PLACEHOLDER_ID);
                self.feed(&msg.to_frame(PROTO_MAX, id, SUCCESSOR_PID), i);
            }
            SuccessorInput::FrameWithVersion(v, msg) => {
                let id = self.m.handoff_id().unwrap_or(PLACEHOLDER_ID);
                self.feed(&msg.to_frame(*v, id, SUCCESSOR_PID), i);
            }
            SuccessorInput::Closed => self.call(Call::Closed, i, |m| m.handle_closed(now)),
            SuccessorInput::LockAcquired => {
                self.call(Call::LockAcquired, i, |m| m.handle_lock_acquired(now))
            }
            SuccessorInput::LockBusy => self.call(Call::LockBusy, i, |m| m.handle_lock_busy(now)),
            SuccessorInput::Ready {
                listening_on,
                healthz_ok,
                revisions,
            } => {
                let texts: Vec<String> = listening_on.iter().map(Chunk::text).collect();
                let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
                self.call(Call::Ready, i, |m| {
                    m.handle_ready(
                        now,
                        ReadyReportRef {
                            listening_on: Strings::from_slice(&strs),
                            healthz_ok: *healthz_ok,
                            advertised_revision_per_shard: Revisions::from_slice(revisions),
                        },
                    )
                })
            }
            SuccessorInput::StartFailed => {
                self.call(Call::StartFailed, i, |m| m.handle_start_failed(now))
            }
            SuccessorInput::Clock(c) => clock(self, *c),
        }
    }

    fn feed(&mut self, bytes: &[u8], input: Option<&SuccessorInput>) {
        let now = self.check.now;
        let mut rest = bytes;
        loop {
            let before = self.m.step();
            let timeout = self.m.poll_timeout();
            self.check.id_before = self.m.handoff_id();
            let used = self.m.handle_input(now, rest);
            let listening = self.check.listening();
            self.check.received = consumed(used, rest, listening.then_some(&mut self.check.shadow));
            self.settle(Call::Input, input, before, timeout);
            rest = &rest[used..];
            if rest.is_empty() {
                return;
            }
        }
    }

    fn call(
        &mut self,
        call: Call,
        input: Option<&SuccessorInput>,
        f: impl FnOnce(&mut SuccessorSession<B>),
    ) {
        let before = self.m.step();
        let timeout = self.m.poll_timeout();
        self.check.id_before = self.m.handoff_id();
        f(&mut self.m);
        self.settle(call, input, before, timeout);
    }

    fn settle(
        &mut self,
        call: Call,
        input: Option<&SuccessorInput>,
        before: SuccessorStep,
        timeout_before: Option<Instant>,
    ) {
        let after = self.m.step();
        let received = std::mem::replace(&mut self.check.received, Received::Nothing);
        let answered = self.check.answer(call);
        let c = Ctx {
            call,
            input,
            before,
            now: self.check.now,
            received,
            answered,
            id_before: self.check.id_before,
            id: self.m.handoff_id(),
        };
        self.check.step_bytes = 0;
        let mut outputs = 0;
        while let Some(out) = self.m.poll_output() {
            outputs += 1;
            self.check.output(&c, out);
        }
        self.check.step_end(&c, outputs);

        let spurious = matches!(
            call,
            Call::LockAcquired | Call::LockBusy | Call::Ready | Call::StartFailed
        ) && !answered;
        let timeout_after = self.m.poll_timeout();
        check_step_end(StepEnd {
            machine: "session",
            call: &call,
            legal: legal_transition(before, after),
            inert: spurious,
            early_timeout: call == Call::Timeout && timeout_before.is_none_or(|t| t > c.now),
            outputs,
            before,
            after,
            timeout_before,
            timeout_after,
            finished: self.m.is_finished(),
            done: after == SuccessorStep::Done,
            saw_finished: self.check.finished,
            bound: B::GROWS.then(|| held(SHADOW) + self.check.outbox_peak),
        });
    }
}

clocked_driver!(|d, now| d.call(Call::Timeout, None, |m| m.handle_timeout(now)));

fn legal_transition(before: SuccessorStep, after: SuccessorStep) -> bool {
    use SuccessorStep::*;
    before == after
        || matches!(
            (before, after),
            (AwaitingHelloAck, AwaitingBegin | Done)
                | (AwaitingBegin, Locking | Done)
                | (Locking, Starting | Done)
                | (Starting, Done)
        )
}

struct Check<B: FuzzBuffer> {
    cfg: SuccessorConfig,
    now: Instant,
    created: Instant,
    shadow: Shadow<B::Shadow>,
    received: Received,
    id_before: Option<HandoffId>,
    /// The supervisor closed, or broke the protocol once the lock was held.
    gone: bool,
    finished: bool,
    /// When `Begin` was taken.
    begun: Option<Instant>,
    acquire_out: bool,
    /// A busy lock is to be tried again when the retry timer fires.
    retry_due: bool,
    lock_held: bool,
    start_out: bool,
    ready_sent: bool,
    /// `PassChannel` was taken (`SuccessorOutput::PassChannel`).
    channel: bool,
    beat_from: Option<Instant>,
    step_bytes: usize,
    outbox_peak: usize,
}

impl<B: FuzzBuffer> Check<B> {
    fn new(cfg: SuccessorConfig, now: Instant) -> Self {
        Check {
            cfg,
            now,
            created: now,
            shadow: Shadow::new(),
            received: Received::Nothing,
            id_before: None,
            gone: false,
            finished: false,
            begun: None,
            acquire_out: false,
            retry_due: false,
            lock_held: false,
            start_out: false,
            ready_sent: false,
            channel: false,
            beat_from: None,
            step_bytes: 0,
            outbox_peak: 0,
        }
    }

    fn listening(&self) -> bool {
        !self.gone && !self.finished
    }

    fn answer(&mut self, call: Call) -> bool {
        let take = |flag: &mut bool| std::mem::replace(flag, false);
        match call {
            Call::LockAcquired | Call::LockBusy => take(&mut self.acquire_out),
            Call::Ready | Call::StartFailed => take(&mut self.start_out),
            _ => false,
        }
    }

    /// The model of what a frame does to a session that holds the lock: a
    /// heartbeat nothing, `Abort` ends it, anything else means the
    /// supervisor is as good as gone.
    fn breaks_contact_while_starting(c: &Ctx<'_>) -> bool {
        match c.received.message() {
            None => matches!(c.received, Received::Broken(_)),
            Some((version, msg)) => {
                let id_ok = match (msg.handoff_id(), c.id_before) {
                    (Some(got), Some(want)) => got == want,
                    _ => true,
                };
                version != PROTO_MAX
                    || !id_ok
                    || !matches!(msg.kind(), MessageKind::Heartbeat | MessageKind::Abort)
            }
        }
    }

    fn step_end(&mut self, c: &Ctx<'_>, outputs: usize) {
        self.outbox_peak = self.outbox_peak.max(self.step_bytes);
        if c.call == Call::Closed {
            self.gone = true;
        }
        if c.call == Call::Input
            && c.before == SuccessorStep::Starting
            && !self.finished
            && Self::breaks_contact_while_starting(c)
        {
            assert_eq!(
                outputs, 0,
                "a garbled supervisor after the lock changed something"
            );
            self.gone = true;
        }
        if c.call == Call::LockBusy && c.answered && !self.finished {
            self.retry_due = true;
        }
        if c.call == Call::New {
            assert!(self.step_bytes > 0, "a new session must send Hello");
        }
        if c.received.valid(MessageKind::Begin, c.id_before).is_some()
            && c.before == SuccessorStep::AwaitingBegin
        {
            assert!(self.acquire_out, "Begin did not ask for the lock");
        }
    }

    fn output(&mut self, c: &Ctx<'_>, out: SuccessorOutput<'_>) {
        assert!(!self.finished, "{out:?} after Finished");
        match out {
            SuccessorOutput::Transmit(frame) => self.transmit(c, frame),
            SuccessorOutput::AcquireLock => {
                assert!(!self.acquire_out, "AcquireLock while one is unanswered");
                assert!(!self.lock_held, "AcquireLock while holding the lock");
                let on_begin = c.before == SuccessorStep::AwaitingBegin
                    && c.received.valid(MessageKind::Begin, c.id_before).is_some();
                let on_retry =
                    c.before == SuccessorStep::Locking && c.call == Call::Timeout && self.retry_due;
                assert!(
                    on_begin || on_retry,
                    "AcquireLock without Begin or a retry due"
                );
                if on_begin {
                    self.begun = Some(c.now);
                    self.beat_from = Some(c.now);
                }
                self.retry_due = false;
                self.acquire_out = true;
            }
            SuccessorOutput::Start => {
                assert!(
                    c.call == Call::LockAcquired && c.answered,
                    "Start before the lock was granted"
                );
                assert_eq!(c.before, SuccessorStep::Locking);
                assert!(!self.lock_held, "Start twice");
                self.lock_held = true;
                self.start_out = true;
            }
            SuccessorOutput::PassChannel {
                handoff_id,
                version,
            } => {
                assert_eq!(
                    c.before,
                    SuccessorStep::AwaitingBegin,
                    "PassChannel other than while waiting for Begin"
                );
                assert!(
                    self.cfg
                        .capabilities
                        .contains(Capabilities::PASS_CONNECTIONS),
                    "PassChannel taken without PASS_CONNECTIONS offered"
                );
                assert!(
                    c.received
                        .valid(MessageKind::PassChannel, c.id_before)
                        .is_some(),
                    "PassChannel output without a PassChannel frame: {:?}",
                    c.received
                );
                assert!(!self.channel, "a second pass channel in one session");
                assert_eq!(Some(handoff_id), c.id, "PassChannel for another id");
                assert_eq!(version, PROTO_MAX, "PassChannel with another version");
                assert!(
                    self.listening(),
                    "PassChannel from a supervisor that is gone"
                );
                self.channel = true;
            }
            SuccessorOutput::Finished(end) => self.finish(c, end),
        }
    }

    fn transmit(&mut self, c: &Ctx<'_>, frame: &[u8]) {
        assert!(self.listening(), "a frame to a supervisor that is gone");
        self.step_bytes += frame.len();
        match sent(frame) {
            Message::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => {
                assert_eq!(c.call, Call::New, "Hello after the start");
                assert_eq!(role, Side::Successor);
                assert_eq!(pid, SUCCESSOR_PID);
                assert_eq!(build_id, SUCCESSOR_BUILD_ID);
                assert_eq!((proto_min, proto_max), (PROTO_MIN, PROTO_MAX));
                assert_eq!(capabilities, self.cfg.capabilities);
            }
            Message::Ready {
                handoff_id,
                listening_on,
                healthz_ok,
                advertised_revision_per_shard,
            } => {
                assert!(
                    c.call == Call::Ready && c.answered,
                    "Ready before the daemon served"
                );
                assert!(self.lock_held, "Ready without Start");
                assert!(!self.ready_sent, "Ready twice");
                self.ready_sent = true;
                assert_eq!(Some(handoff_id), c.id, "Ready for another handoff");
                let Some(SuccessorInput::Ready {
                    listening_on: l,
                    healthz_ok: h,
                    revisions: r,
                }) = c.input
                else {
                    unreachable!("checked by the call")
                };
                assert_eq!(healthz_ok, *h);
                // Lists too large for a frame are dropped, never changed.
                if !(listening_on.is_empty() && advertised_revision_per_shard.is_empty()) {
                    let texts: Vec<String> = l.iter().map(Chunk::text).collect();
                    assert!(listening_on.iter().eq(texts.iter().map(String::as_str)));
                    assert!(advertised_revision_per_shard.iter().eq(r.iter().copied()));
                }
            }
            Message::Heartbeat { ts_ms } => {
                assert_eq!(c.call, Call::Timeout, "a heartbeat outside a timeout");
                assert!(self.begun.is_some(), "a heartbeat before Begin");
                let from = self.beat_from.expect("Begin started the heartbeat");
                assert!(
                    c.now >= from + self.cfg.heartbeat_interval,
                    "heartbeat at {:?}, less than an interval after {from:?}",
                    c.now
                );
                assert_eq!(ts_ms, c.now.as_millis());
                self.beat_from = Some(c.now);
            }
            other => panic!("the successor sent {:?}", other.kind()),
        }
    }

    fn finish(&mut self, c: &Ctx<'_>, end: SuccessorEnd) {
        // A failed successor exits, which frees a lock it may be getting
        // meanwhile; so ending with `AcquireLock` unanswered is fine.
        match end {
            SuccessorEnd::Authoritative { supervisor_gone } => {
                assert!(self.lock_held, "authoritative without the lock");
                assert!(
                    c.call == Call::Ready && c.answered,
                    "authoritative before serving"
                );
                assert_eq!(supervisor_gone, self.gone);
                assert_eq!(
                    self.ready_sent, !self.gone,
                    "Ready sent iff someone listens"
                );
            }
            SuccessorEnd::Failed(f) => match f {
                SuccessorFailure::Aborted => assert!(
                    c.received.valid(MessageKind::Abort, c.id_before).is_some(),
                    "Aborted without Abort"
                ),
                SuccessorFailure::SupervisorGone => {
                    assert_eq!(c.call, Call::Closed);
                    assert!(
                        !self.lock_held,
                        "gave up a lock it holds because the supervisor went"
                    );
                }
                SuccessorFailure::HelloTimeout => {
                    assert_eq!(c.call, Call::Timeout);
                    assert_eq!(c.before, SuccessorStep::AwaitingHelloAck);
                    assert!(c.now >= self.created + self.cfg.hello_timeout);
                }
                SuccessorFailure::SupervisorUnresponsive => {
                    assert_eq!(c.call, Call::Timeout);
                    assert_eq!(c.before, SuccessorStep::AwaitingBegin);
                    assert!(c.now >= self.created + self.cfg.liveness);
                }
                SuccessorFailure::LockUnavailable => {
                    assert!(c.call == Call::LockBusy && c.answered);
                    let begun = self.begun.expect("Begin came first");
                    assert!(
                        c.now >= begun + self.cfg.lock_retry_window,
                        "gave up the lock before the retry window"
                    );
                }
                SuccessorFailure::StartFailed => {
                    assert!(c.call == Call::StartFailed && c.answered);
                }
                SuccessorFailure::VersionMismatch(_) => {
                    assert_eq!(c.before, SuccessorStep::AwaitingHelloAck);
                    assert!(c.received.is(MessageKind::HelloAck));
                }
                SuccessorFailure::Violation(_) => {
                    assert_eq!(c.call, Call::Input);
                    assert_ne!(c.before, SuccessorStep::Starting);
                }
                // The enum is open to additions; one this checker has no
                // rule for must be given one before it can pass.
                other => panic!("a failure the checker has no rule for: {other:?}"),
            },
        }
        self.finished = true;
    }
}
