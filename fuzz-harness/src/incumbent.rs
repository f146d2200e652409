//! The incumbent target: a script of inputs against one session, with every
//! output checked against what the session was asked, what it received and
//! the step it was in. The rules come from docs/PROTOCOL.md sections 3 and 4 and the
//! session's own docs: the lock is released only right after a successful
//! seal and only once, `SealComplete` follows the release, every hook is
//! asked for once and in order, nothing is sent after the connection
//! closes, the daemon is resumed only with the lock, and the session ends
//! once, never while a hook it asked for still runs. The session offers
//! `PASS_CONNECTIONS` too: the pass channel is taken once, in `Idle`, and
//! `ConnectionsPassed` goes out only during the drain, with a channel and
//! nothing to undo, once, with the count the hook reported.

use std::time::Duration;

use super::shadow::{Received, Shadow, consumed, sent};
use super::{
    Chunk, Clocked, FuzzBuffer, INCUMBENT_BUILD_ID, INCUMBENT_PID, IncumbentInput, MACHINE,
    PLACEHOLDER_ID, SHADOW, StepEnd, check_step_end, clock, clocked_driver, held,
};
use handoff_core::Instant;
use handoff_core::MessageKind;
use handoff_core::{Capabilities, HandoffId, PROTO_MAX, PROTO_MIN, Side};
use handoff_core::{DrainReport, SealFailure, SealReportRef};
use handoff_core::{
    IncumbentConfig, IncumbentEnd, IncumbentOutput, IncumbentSession, IncumbentStep,
};
use handoff_core::{Message, Revisions};

/// Runs `script` against a fresh session with buffers `B`.
pub(super) fn run<B: FuzzBuffer>(script: &[IncumbentInput]) {
    // As a driver configures it for a daemon that passes its connections:
    // the listener reclaim (every driver) and the connection passing
    // offered.
    let cfg = IncumbentConfig {
        capabilities: Capabilities::RECLAIM_LISTENERS.union(Capabilities::PASS_CONNECTIONS),
        ..IncumbentConfig::default()
    };
    let now = Instant::ZERO;
    let mut d = Driver {
        m: IncumbentSession::<B>::new(now, cfg, INCUMBENT_PID, INCUMBENT_BUILD_ID),
        check: Check::<B>::new(cfg, now),
    };
    d.settle(Call::New, None, IncumbentStep::AwaitingHelloAck, None);
    for input in script {
        d.apply(input);
    }
    drop(d);
    if B::GROWS {
        assert_eq!(held(MACHINE), 0, "a dropped session still books bytes");
    }
}

/// The kind of input a step was, as far as the rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    New,
    Input,
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
    Timeout,
}

/// One step as the rules see it.
struct Ctx<'a> {
    call: Call,
    input: Option<&'a IncumbentInput>,
    before: IncumbentStep,
    now: Instant,
    received: Received,
    /// The input answered a request the session had made.
    answered: bool,
    /// The handoff id the session knows after the step.
    id: Option<HandoffId>,
}

struct Driver<B: FuzzBuffer> {
    m: IncumbentSession<B>,
    check: Check<B>,
}

impl<B: FuzzBuffer> Driver<B> {
    fn apply(&mut self, input: &IncumbentInput) {
        let now = self.check.now;
        let i = Some(input);
        match input {
            IncumbentInput::Bytes(Chunk(bytes)) => self.feed(bytes, i),
            IncumbentInput::Frame(msg) => {
                let id = self.m.handoff_id().unwrap_or(PLACEHOLDER_ID);
                self.feed(&msg.to_frame(PROTO_MAX, id, INCUMBENT_PID), i);
            }
            IncumbentInput::FrameWithVersion(v, msg) => {
                let id = self.m.handoff_id().unwrap_or(PLACEHOLDER_ID);
                self.feed(&msg.to_frame(*v, id, INCUMBENT_PID), i);
            }
            IncumbentInput::Closed => self.call(Call::Closed, i, |m| m.handle_closed(now)),
            IncumbentInput::Drained {
                open_conns_remaining,
                accept_closed,
            } => self.call(Call::Drained, i, |m| {
                m.handle_drained(
                    now,
                    DrainReport {
                        open_conns_remaining: *open_conns_remaining,
                        accept_closed: *accept_closed,
                    },
                )
            }),
            IncumbentInput::DrainFailed => {
                self.call(Call::DrainFailed, i, |m| m.handle_drain_failed(now))
            }
            IncumbentInput::Sealed {
                revisions,
                fingerprint,
            } => self.call(Call::Sealed, i, |m| {
                m.handle_sealed(
                    now,
                    SealReportRef {
                        last_revision_per_shard: Revisions::from_slice(revisions),
                        data_dir_fingerprint: [*fingerprint; 32],
                    },
                )
            }),
            IncumbentInput::SealFailed {
                error,
                partial_state,
            } => {
                let (error, partial_state) = (error.text(), partial_state.text());
                self.call(Call::SealFailed, i, |m| {
                    m.handle_seal_failed(
                        now,
                        SealFailure {
                            error: &error,
                            partial_state: &partial_state,
                        },
                    )
                })
            }
            IncumbentInput::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => self.call(Call::SealProgress, i, |m| {
                m.handle_seal_progress(now, *shards_sealed, *shards_total, *last_revision)
            }),
            IncumbentInput::LockAcquired => {
                self.call(Call::LockAcquired, i, |m| m.handle_lock_acquired(now))
            }
            IncumbentInput::LockBusy => self.call(Call::LockBusy, i, |m| m.handle_lock_busy(now)),
            IncumbentInput::Resumed => self.call(Call::Resumed, i, |m| m.handle_resumed(now)),
            IncumbentInput::ResumeFailed => {
                self.call(Call::ResumeFailed, i, |m| m.handle_resume_failed(now))
            }
            IncumbentInput::Clock(c) => clock(self, *c),
            IncumbentInput::ConnectionsPassed { count } => {
                self.call(Call::ConnectionsPassed, i, |m| {
                    m.handle_connections_passed(now, *count)
                })
            }
        }
    }

    fn feed(&mut self, bytes: &[u8], input: Option<&IncumbentInput>) {
        let now = self.check.now;
        let mut rest = bytes;
        loop {
            let before = self.m.step();
            let timeout = self.m.poll_timeout();
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
        input: Option<&IncumbentInput>,
        f: impl FnOnce(&mut IncumbentSession<B>),
    ) {
        let before = self.m.step();
        let timeout = self.m.poll_timeout();
        f(&mut self.m);
        self.settle(call, input, before, timeout);
    }

    /// Drains the outputs of the step just taken and checks them and the
    /// session's state after it.
    fn settle(
        &mut self,
        call: Call,
        input: Option<&IncumbentInput>,
        before: IncumbentStep,
        timeout_before: Option<Instant>,
    ) {
        let after = self.m.step();
        let received = std::mem::replace(&mut self.check.received, Received::Nothing);
        // Whether a count reported now must go to the supervisor: during
        // the drain, with a channel, and with nothing to undo (which would
        // have closed the connection).
        let count_due = call == Call::ConnectionsPassed
            && self.check.channel
            && self.check.drain_out
            && !self.check.count_reported
            && self.check.listening();
        let answered = self.check.answer(call);
        let c = Ctx {
            call,
            input,
            before,
            now: self.check.now,
            received,
            answered,
            id: self.m.handoff_id(),
        };
        self.check.step_start();
        let mut outputs = 0;
        while let Some(out) = self.m.poll_output() {
            outputs += 1;
            self.check.output(&c, out);
        }
        self.check.step_end(&c);
        assert!(
            self.check.count_sent || !count_due,
            "a count reported during the drain, with a channel and nothing to undo, was not sent"
        );

        let spurious = matches!(
            call,
            Call::Drained
                | Call::DrainFailed
                | Call::Sealed
                | Call::SealFailed
                | Call::LockAcquired
                | Call::LockBusy
                | Call::Resumed
                | Call::ResumeFailed
        ) && !answered;
        let timeout_after = self.m.poll_timeout();
        check_step_end(StepEnd {
            machine: "session",
            call: &call,
            legal: legal_transition(before, after),
            inert: spurious
                || (call == Call::SealProgress && !self.check.seal_out)
                || (call == Call::ConnectionsPassed && !count_due),
            early_timeout: call == Call::Timeout && timeout_before.is_none_or(|t| t > c.now),
            outputs,
            before,
            after,
            timeout_before,
            timeout_after,
            finished: self.m.is_finished(),
            done: after == IncumbentStep::Done,
            saw_finished: self.check.finished,
            // With growing buffers: the receive buffer holds what the
            // shadow holds, the frame queue at most one step's frames.
            bound: B::GROWS.then(|| held(SHADOW) + self.check.outbox_peak),
        });
    }
}

clocked_driver!(|d, now| d.call(Call::Timeout, None, |m| m.handle_timeout(now)));

fn legal_transition(before: IncumbentStep, after: IncumbentStep) -> bool {
    use IncumbentStep::*;
    before == after
        || matches!(
            (before, after),
            (AwaitingHelloAck, Idle | Done)
                | (Idle, Draining | Done)
                | (Draining, Drained | Recovering)
                | (Drained, Sealing | Recovering)
                | (Sealing, Sealed | Recovering)
                | (Sealed, Done | Recovering)
                | (Recovering, Done)
        )
}

/// What the checker knows of the session: what it asked for and was not yet
/// answered, what it sent, and whether it still reads from the supervisor.
struct Check<B: FuzzBuffer> {
    cfg: IncumbentConfig,
    now: Instant,
    shadow: Shadow<B::Shadow>,
    received: Received,
    drain_out: bool,
    seal_out: bool,
    acquire_out: bool,
    resume_out: bool,
    drain_asked: bool,
    seal_asked: bool,
    resume_asked: bool,
    drained_sent: bool,
    seal_complete_sent: bool,
    seal_failed_sent: bool,
    lock_held: bool,
    lock_released: u32,
    /// When the session first asked to re-take a released lock.
    lock_retry_from: Option<Instant>,
    closed: bool,
    finished: bool,
    /// The earliest a heartbeat may go out is one interval after this.
    beat_from: Option<Instant>,
    /// `ReleaseLock` came out; `SealComplete` must be next.
    expect_seal_complete: bool,
    /// `PassChannel` was taken (`IncumbentOutput::PassChannel`).
    channel: bool,
    /// `ConnectionsPassed` went out in the current step.
    count_sent: bool,
    /// `ConnectionsPassed` went out in this session (once at most).
    count_reported: bool,
    step_bytes: usize,
    outbox_peak: usize,
}

impl<B: FuzzBuffer> Check<B> {
    fn new(cfg: IncumbentConfig, now: Instant) -> Self {
        Check {
            cfg,
            now,
            shadow: Shadow::new(),
            received: Received::Nothing,
            drain_out: false,
            seal_out: false,
            acquire_out: false,
            resume_out: false,
            drain_asked: false,
            seal_asked: false,
            resume_asked: false,
            drained_sent: false,
            seal_complete_sent: false,
            seal_failed_sent: false,
            lock_held: true,
            lock_released: 0,
            lock_retry_from: None,
            closed: false,
            finished: false,
            beat_from: None,
            expect_seal_complete: false,
            channel: false,
            count_sent: false,
            count_reported: false,
            step_bytes: 0,
            outbox_peak: 0,
        }
    }

    /// Whether the session still decodes what the supervisor sends.
    fn listening(&self) -> bool {
        !self.closed && !self.finished
    }

    /// Marks the request `call` answers as answered; whether there was one.
    fn answer(&mut self, call: Call) -> bool {
        let take = |flag: &mut bool| std::mem::replace(flag, false);
        match call {
            Call::Drained | Call::DrainFailed => take(&mut self.drain_out),
            Call::Sealed | Call::SealFailed => take(&mut self.seal_out),
            Call::LockAcquired => {
                let answered = take(&mut self.acquire_out);
                if answered {
                    self.lock_held = true;
                }
                answered
            }
            Call::LockBusy => take(&mut self.acquire_out),
            Call::Resumed | Call::ResumeFailed => take(&mut self.resume_out),
            _ => false,
        }
    }

    fn step_start(&mut self) {
        self.step_bytes = 0;
        self.count_sent = false;
    }

    fn step_end(&mut self, c: &Ctx<'_>) {
        assert!(
            !self.expect_seal_complete,
            "ReleaseLock without SealComplete after it"
        );
        self.outbox_peak = self.outbox_peak.max(self.step_bytes);
        if c.call == Call::New {
            assert!(self.step_bytes > 0, "a new session must send Hello");
        }
    }

    fn output(&mut self, c: &Ctx<'_>, out: IncumbentOutput<'_>) {
        assert!(!self.finished, "{out:?} after Finished");
        if self.expect_seal_complete {
            assert!(
                matches!(&out, IncumbentOutput::Transmit(f) if sent(f).kind() == MessageKind::SealComplete),
                "{out:?} between ReleaseLock and SealComplete"
            );
        }
        match out {
            IncumbentOutput::Transmit(frame) => self.transmit(c, frame),
            IncumbentOutput::SendListeners {
                handoff_id,
                version,
            } => {
                assert_eq!(c.before, IncumbentStep::Idle, "SendListeners outside Idle");
                assert!(
                    c.received
                        .valid(MessageKind::ListenersRequest, c.id)
                        .is_some(),
                    "SendListeners without ListenersRequest: {:?}",
                    c.received
                );
                assert_eq!(Some(handoff_id), c.id, "SendListeners for another id");
                assert_eq!(version, PROTO_MAX, "SendListeners with another version");
                assert!(self.listening(), "SendListeners after Close");
            }
            IncumbentOutput::PassChannel {
                handoff_id,
                version,
            } => {
                assert_eq!(c.before, IncumbentStep::Idle, "PassChannel outside Idle");
                assert!(
                    self.cfg
                        .capabilities
                        .contains(Capabilities::PASS_CONNECTIONS),
                    "PassChannel taken without PASS_CONNECTIONS offered"
                );
                assert!(
                    c.received.valid(MessageKind::PassChannel, c.id).is_some(),
                    "PassChannel output without a PassChannel frame: {:?}",
                    c.received
                );
                assert!(!self.channel, "a second pass channel in one session");
                assert_eq!(Some(handoff_id), c.id, "PassChannel for another id");
                assert_eq!(version, PROTO_MAX, "PassChannel with another version");
                assert!(self.listening(), "PassChannel after Close");
                self.channel = true;
            }
            IncumbentOutput::Drain { deadline } => {
                assert_eq!(c.before, IncumbentStep::Idle, "Drain outside Idle");
                let Some(Message::PrepareHandoff {
                    deadline_ms,
                    drain_grace_ms,
                    ..
                }) = c.received.valid(MessageKind::PrepareHandoff, c.id)
                else {
                    panic!("Drain without PrepareHandoff: {:?}", c.received)
                };
                assert!(!self.drain_asked, "a second Drain in one session");
                let grace = Duration::from_millis(drain_grace_ms.min(deadline_ms));
                assert!(
                    deadline >= c.now && deadline <= c.now + grace,
                    "drain deadline {deadline:?} outside the grace {grace:?} from {:?}",
                    c.now
                );
                self.drain_asked = true;
                self.drain_out = true;
                self.beat_from = Some(c.now);
            }
            IncumbentOutput::Seal => {
                assert_eq!(c.before, IncumbentStep::Drained, "Seal outside Drained");
                assert!(
                    c.received.valid(MessageKind::SealRequest, c.id).is_some(),
                    "Seal without SealRequest"
                );
                assert!(self.drained_sent && !self.seal_asked);
                self.seal_asked = true;
                self.seal_out = true;
                self.beat_from = Some(c.now);
            }
            IncumbentOutput::ReleaseLock => {
                assert!(
                    c.call == Call::Sealed && c.answered,
                    "ReleaseLock other than right after a successful seal ({:?})",
                    c.call
                );
                assert_eq!(c.before, IncumbentStep::Sealing);
                assert!(
                    self.lock_held,
                    "ReleaseLock twice without AcquireLock between"
                );
                self.lock_held = false;
                self.lock_released += 1;
                assert_eq!(
                    self.lock_released, 1,
                    "the lock released twice in one session"
                );
                self.expect_seal_complete = true;
            }
            IncumbentOutput::AcquireLock => {
                assert!(!self.lock_held, "AcquireLock while holding the lock");
                assert!(!self.acquire_out, "AcquireLock while one is unanswered");
                assert!(
                    matches!(c.before, IncumbentStep::Sealed | IncumbentStep::Recovering),
                    "AcquireLock in {:?}",
                    c.before
                );
                assert!(self.closed, "recovering with the connection still open");
                self.acquire_out = true;
                self.lock_retry_from.get_or_insert(c.now);
            }
            IncumbentOutput::Resume => {
                assert!(self.lock_held, "Resume without the lock");
                assert!(self.drain_asked, "Resume of a daemon never drained");
                assert!(!self.resume_asked, "a second Resume");
                assert!(
                    !self.drain_out && !self.seal_out,
                    "Resume while a hook runs"
                );
                assert!(self.closed, "recovering with the connection still open");
                self.resume_asked = true;
                self.resume_out = true;
            }
            IncumbentOutput::Close => {
                assert!(!self.closed, "Close twice");
                self.closed = true;
            }
            IncumbentOutput::Finished(end) => self.finish(c, end),
        }
    }

    fn transmit(&mut self, c: &Ctx<'_>, frame: &[u8]) {
        assert!(self.listening(), "a frame after Close");
        self.step_bytes += frame.len();
        let msg = sent(frame);
        match msg {
            Message::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => {
                assert_eq!(c.call, Call::New, "Hello after the start");
                assert_eq!(role, Side::Incumbent);
                assert_eq!(pid, INCUMBENT_PID);
                assert_eq!(build_id, INCUMBENT_BUILD_ID);
                assert_eq!((proto_min, proto_max), (PROTO_MIN, PROTO_MAX));
                assert_eq!(capabilities, self.cfg.capabilities);
            }
            Message::ConnectionsPassed { handoff_id, count } => {
                assert!(
                    c.call == Call::ConnectionsPassed,
                    "ConnectionsPassed other than on the hook's count"
                );
                assert_eq!(
                    c.input,
                    Some(&IncumbentInput::ConnectionsPassed { count }),
                    "ConnectionsPassed reports another count than the hook's"
                );
                assert_eq!(c.before, IncumbentStep::Draining);
                assert!(self.channel, "ConnectionsPassed without a pass channel");
                assert!(self.drain_out, "ConnectionsPassed after the drain ended");
                assert_eq!(Some(handoff_id), c.id, "ConnectionsPassed for another id");
                assert!(!self.count_reported, "a second ConnectionsPassed");
                self.count_sent = true;
                self.count_reported = true;
            }
            Message::Drained {
                open_conns_remaining,
                accept_closed,
            } => {
                assert!(c.call == Call::Drained && c.answered, "Drained unasked");
                assert_eq!(
                    c.input,
                    Some(&IncumbentInput::Drained {
                        open_conns_remaining,
                        accept_closed
                    }),
                    "Drained reports other than the hook's figures"
                );
                assert!(!self.drained_sent, "Drained twice");
                self.drained_sent = true;
            }
            Message::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => {
                assert!(self.seal_out, "SealProgress while not sealing");
                assert_eq!(
                    c.input,
                    Some(&IncumbentInput::SealProgress {
                        shards_sealed,
                        shards_total,
                        last_revision
                    })
                );
                self.beat_from = Some(c.now);
            }
            Message::SealComplete {
                handoff_id,
                last_revision_per_shard,
                data_dir_fingerprint,
            } => {
                assert!(
                    self.expect_seal_complete,
                    "SealComplete without ReleaseLock first"
                );
                self.expect_seal_complete = false;
                assert!(!self.seal_complete_sent);
                self.seal_complete_sent = true;
                assert_eq!(Some(handoff_id), c.id, "SealComplete for another handoff");
                let Some(IncumbentInput::Sealed {
                    revisions,
                    fingerprint,
                }) = c.input
                else {
                    panic!("SealComplete outside a seal report")
                };
                assert!(
                    last_revision_per_shard.iter().eq(revisions.iter().copied()),
                    "SealComplete revisions differ from the hook's"
                );
                assert_eq!(data_dir_fingerprint, [*fingerprint; 32]);
            }
            Message::SealFailed {
                handoff_id,
                error,
                partial_state,
            } => {
                assert_eq!(Some(handoff_id), c.id, "SealFailed for another handoff");
                assert!(
                    matches!(c.call, Call::Sealed | Call::SealFailed) && c.answered,
                    "SealFailed outside a seal's end"
                );
                assert!(!self.seal_failed_sent, "SealFailed twice");
                self.seal_failed_sent = true;
                if let Some(IncumbentInput::SealFailed {
                    error: e,
                    partial_state: p,
                }) = c.input
                {
                    let (e, p): (String, String) = (e.text(), p.text());
                    // Reports too large for a frame are cut, never changed.
                    assert!(e.starts_with(error), "SealFailed error is not the hook's");
                    assert!(p.starts_with(partial_state));
                } else {
                    assert!(!error.is_empty(), "a seal failure without a reason");
                }
            }
            Message::Heartbeat { ts_ms } => {
                assert_eq!(c.call, Call::Timeout, "a heartbeat outside a timeout");
                assert!(
                    self.drain_out || self.seal_out,
                    "a heartbeat while no hook runs"
                );
                let from = self.beat_from.expect("a hook started the heartbeat");
                assert!(
                    c.now >= from + self.cfg.heartbeat_interval,
                    "heartbeat at {:?}, less than an interval after {from:?}",
                    c.now
                );
                assert_eq!(ts_ms, c.now.as_millis());
                self.beat_from = Some(c.now);
            }
            other => panic!("the incumbent sent {:?}", other.kind()),
        }
    }

    fn finish(&mut self, c: &Ctx<'_>, end: IncumbentEnd) {
        assert!(
            !self.drain_out && !self.seal_out,
            "Finished while a hook runs"
        );
        assert!(
            !self.acquire_out && !self.resume_out,
            "Finished with a request unanswered"
        );
        match end {
            IncumbentEnd::Committed => {
                assert_eq!(c.before, IncumbentStep::Sealed);
                assert!(
                    c.received.valid(MessageKind::Commit, c.id).is_some(),
                    "Committed without Commit"
                );
                assert!(!self.lock_held && self.seal_complete_sent);
            }
            IncumbentEnd::Serving(_) => {
                assert!(self.lock_held, "serving without the lock");
                if self.drain_asked {
                    assert!(
                        c.call == Call::Resumed && c.answered,
                        "serving again without a resume"
                    );
                } else {
                    assert!(matches!(
                        c.before,
                        IncumbentStep::AwaitingHelloAck | IncumbentStep::Idle
                    ));
                }
            }
            IncumbentEnd::Superseded(_) => {
                assert!(!self.lock_held);
                assert!(c.call == Call::LockBusy && c.answered, "superseded unasked");
                let from = self.lock_retry_from.expect("the lock was asked for");
                assert!(
                    c.now >= from + self.cfg.lock_retry_window,
                    "gave up the lock before the retry window"
                );
            }
            IncumbentEnd::ResumeFailed(_) => {
                assert!(self.lock_held);
                assert!(c.call == Call::ResumeFailed && c.answered);
            }
        }
        self.finished = true;
    }
}
