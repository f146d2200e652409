//! The supervisor target: a script of inputs from both peers and the
//! adapter against one handoff, with every output checked. The rules are
//! docs/PROTOCOL.md sections 3 and 4 and invariants 1, 2 and 6 (section 7) as far as the supervisor
//! decides them: only supervisor messages, each to the peer it is for and
//! only while connected; the successor is spawned only after the
//! incumbent's `Hello` and the incumbent drained only after the successor's;
//! `Begin` only on `SealComplete`, `Commit` only on `Ready`;
//! `ResumeAfterAbort` only once the successor can no longer hold the lock;
//! `SIGKILL` only a grace after `SIGTERM`; the journal in phase order and
//! cleared before the end; and an outcome that matches what happened, with
//! no connection or spawn left behind. Connection passing: `PassChannel`
//! goes out, always with a channel end and nothing else does, to the
//! successor and then the incumbent, on the successor's `Hello` and before
//! `PrepareHandoff`, exactly when both `Hello`s offered `PASS_CONNECTIONS`;
//! the first `ConnectionsPassed` of the drain after it is the outcome's
//! count, and any other during the drain ends the handoff as a violation.

use super::shadow::{Received, Shadow, consumed, millis, sent};
use super::{
    Chunk, Clocked, FuzzBuffer, FuzzPeer, FuzzPid, INCUMBENT_PID, MACHINE, SHADOW,
    SUPERVISOR_RANDOM, SUPERVISOR_STARTED_UNIX_MS, StepEnd, SupervisorInput, check_step_end, clock,
    clocked_driver, held,
};
use handoff_core::Instant;
use handoff_core::Message;
use handoff_core::MessageKind;
use handoff_core::defaults;
use handoff_core::{
    AbortReason, Capabilities, HandoffOutcomeRef, IncumbentFate, Side, Signal, SuccessorFate,
    SupervisorConfig, SupervisorHandoff, SupervisorOutput, SupervisorStep, Violation,
};
use handoff_core::{HandoffId, PROTO_MAX};
use handoff_core::{JournalPhase, JournalRecord};

/// Runs `script` against a fresh handoff with buffers `B`.
pub(super) fn run<B: FuzzBuffer>(script: &[SupervisorInput]) {
    let cfg = SupervisorConfig::default();
    let now = Instant::ZERO;
    let mut m =
        SupervisorHandoff::<B>::new(now, cfg, SUPERVISOR_RANDOM, SUPERVISOR_STARTED_UNIX_MS);
    // As every adapter over a supervisor that knows its daemon: only this
    // process is the incumbent.
    m.expect_incumbent(INCUMBENT_PID);
    let id = m.handoff_id();
    let mut d = Driver {
        m,
        check: Check::<B>::new(cfg, now, id),
    };
    d.settle(Call::New, SupervisorStep::ConnectingIncumbent, None);
    for input in script {
        d.apply(input);
    }
    drop(d);
    if B::GROWS {
        assert_eq!(held(MACHINE), 0, "a dropped handoff still books bytes");
    }
}

fn peer(p: FuzzPeer) -> Side {
    match p {
        FuzzPeer::Incumbent => Side::Incumbent,
        FuzzPeer::Successor => Side::Successor,
    }
}

fn slot(p: Side) -> usize {
    match p {
        Side::Incumbent => 0,
        Side::Successor => 1,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    New,
    Input(Side),
    Closed(Side),
    Connected,
    /// Connected, and the listener is (`true`) or is not the incumbent.
    ConnectedTo(bool),
    ConnectFailed,
    ConnectRefused,
    Spawned(u32),
    SpawnFailed,
    SuccessorExited,
    JournalFailed,
    Timeout,
}

/// One step as the rules see it, with what it delivered already judged
/// against the step it arrived in.
struct Ctx {
    call: Call,
    after: SupervisorStep,
    now: Instant,
    incumbent_pid: Option<u32>,
    /// The incumbent's acceptable `Hello` arrived.
    incumbent_hello: bool,
    /// The successor's acceptable `Hello` arrived.
    successor_hello: bool,
    drained: bool,
    seal_complete: bool,
    seal_failed: bool,
    ready: bool,
    /// `Ready` arrived and passes the gate (docs/PROTOCOL.md section
    /// 10.2): healthy, and no shard behind the seal. With probation off (as
    /// here) the handoff commits on exactly that.
    ready_ok: bool,
    /// What the `Hello` this step delivered offered, if one came.
    hello_offer: Option<Capabilities>,
    /// A valid `ConnectionsPassed` came from the incumbent during the drain
    /// and is not the one the supervisor takes: a violation.
    count_refused: bool,
}

struct Driver<B: FuzzBuffer> {
    m: SupervisorHandoff<B>,
    check: Check<B>,
}

impl<B: FuzzBuffer> Driver<B> {
    fn apply(&mut self, input: &SupervisorInput) {
        let now = self.check.now;
        match input {
            SupervisorInput::Bytes(p, Chunk(bytes)) => self.feed(peer(*p), bytes),
            SupervisorInput::Frame(p, msg) => {
                let pid = self.expected_pid(peer(*p));
                self.feed(peer(*p), &msg.to_frame(PROTO_MAX, self.check.id, pid));
            }
            SupervisorInput::FrameWithVersion(p, v, msg) => {
                let pid = self.expected_pid(peer(*p));
                self.feed(peer(*p), &msg.to_frame(*v, self.check.id, pid));
            }
            SupervisorInput::Closed(p) => {
                let p = peer(*p);
                self.call(Call::Closed(p), |m| m.handle_closed(now, p))
            }
            SupervisorInput::Connected => self.call(Call::Connected, |m| m.handle_connected(now)),
            SupervisorInput::ConnectFailed => {
                self.call(Call::ConnectFailed, |m| m.handle_connect_failed(now))
            }
            SupervisorInput::ConnectedTo(pid) => {
                let (is_incumbent, pid) = match *pid {
                    FuzzPid::Expected => (true, INCUMBENT_PID),
                    FuzzPid::Other(p) => (p == INCUMBENT_PID, p),
                };
                self.call(Call::ConnectedTo(is_incumbent), |m| {
                    m.handle_connected_to(now, pid)
                })
            }
            SupervisorInput::ConnectRefused => {
                self.call(Call::ConnectRefused, |m| m.handle_connect_refused(now))
            }
            SupervisorInput::Spawned(pid) => {
                self.call(Call::Spawned(*pid), |m| m.handle_spawned(now, *pid))
            }
            SupervisorInput::SpawnFailed => {
                self.call(Call::SpawnFailed, |m| m.handle_spawn_failed(now))
            }
            SupervisorInput::SuccessorExited => {
                self.call(Call::SuccessorExited, |m| m.handle_successor_exited(now))
            }
            SupervisorInput::JournalFailed => {
                self.call(Call::JournalFailed, |m| m.handle_journal_failed(now))
            }
            SupervisorInput::Clock(c) => clock(self, *c),
        }
    }

    /// The pid a peer's `Hello` announces when the fuzzer says `Expected`.
    fn expected_pid(&self, from: Side) -> u32 {
        match from {
            Side::Incumbent => INCUMBENT_PID,
            Side::Successor => self.m.successor_pid().unwrap_or(0),
        }
    }

    fn feed(&mut self, from: Side, bytes: &[u8]) {
        let now = self.check.now;
        let mut rest = bytes;
        loop {
            let before = self.m.step();
            let timeout = self.m.poll_timeout();
            let used = self.m.handle_input(now, from, rest);
            let listening = self.check.listening(from);
            let shadow = match from {
                Side::Incumbent => &mut self.check.shadow_o,
                Side::Successor => &mut self.check.shadow_n,
            };
            self.check.received = consumed(used, rest, listening.then_some(shadow));
            self.settle(Call::Input(from), before, timeout);
            rest = &rest[used..];
            if rest.is_empty() {
                return;
            }
        }
    }

    fn call(&mut self, call: Call, f: impl FnOnce(&mut SupervisorHandoff<B>)) {
        let before = self.m.step();
        let timeout = self.m.poll_timeout();
        f(&mut self.m);
        self.settle(call, before, timeout);
    }

    fn settle(&mut self, call: Call, before: SupervisorStep, timeout_before: Option<Instant>) {
        let after = self.m.step();
        let received = std::mem::replace(&mut self.check.received, Received::Nothing);
        let answered = self.check.answer(call);
        let c = self
            .check
            .judge(call, before, after, &received, self.m.incumbent_pid());
        self.check.step_bytes = 0;
        self.check.helloack_now = [false; 2];
        let mut outputs = 0;
        while let Some(out) = self.m.poll_output() {
            outputs += 1;
            self.check.output(&c, out);
        }
        assert!(
            !self.check.expect_finished,
            "ClearJournal not followed by Finished"
        );
        assert!(
            !self.check.expect_resume,
            "journal says resuming, but no ResumeAfterAbort followed"
        );
        self.check
            .after_connect_step(&c, answered, self.m.poll_timeout());
        if c.count_refused {
            assert!(
                matches!(c.after, SupervisorStep::Aborting | SupervisorStep::Done),
                "a ConnectionsPassed the supervisor cannot take did not end the handoff"
            );
            assert!(
                !self.check.open[0],
                "the incumbent's connection kept after its violation"
            );
        }
        self.check.outbox_peak = self.check.outbox_peak.max(self.check.step_bytes);
        if call == Call::New {
            assert_eq!(outputs, 1, "a new handoff asks to connect, and only that");
        }

        let spurious = matches!(
            call,
            Call::Connected
                | Call::ConnectedTo(_)
                | Call::ConnectFailed
                | Call::ConnectRefused
                | Call::Spawned(_)
                | Call::SpawnFailed
                | Call::SuccessorExited
                | Call::Closed(_)
        ) && !answered;
        let timeout_after = self.m.poll_timeout();
        check_step_end(StepEnd {
            machine: "handoff",
            call: &call,
            legal: legal_transition(before, after),
            inert: spurious || call == Call::JournalFailed,
            early_timeout: call == Call::Timeout && timeout_before.is_none_or(|t| t > c.now),
            outputs,
            before,
            after,
            timeout_before,
            timeout_after,
            finished: self.m.is_finished(),
            done: after == SupervisorStep::Done,
            saw_finished: self.check.finished,
            // With growing buffers: receive buffers as large as the
            // shadows', one step's frames, and copies of what the peers
            // sent for the outcome.
            bound: B::GROWS.then(|| {
                held(SHADOW)
                    + self.check.outbox_peak
                    + self.check.shadow_o.consumed
                    + self.check.shadow_n.consumed
            }),
        });
    }
}

fn rank(step: SupervisorStep) -> u8 {
    use SupervisorStep::*;
    match step {
        ConnectingIncumbent => 0,
        AwaitingIncumbentHello => 1,
        SpawningSuccessor => 2,
        AwaitingSuccessorHello => 3,
        Draining => 4,
        Sealing => 5,
        AwaitingReady => 6,
        Probation => 7,
        Aborting => 8,
        Done => 9,
    }
}

clocked_driver!(|d, now| d.call(Call::Timeout, |m| m.handle_timeout(now)));

/// Forward one step at a time, or into the abort, or to the end.
fn legal_transition(before: SupervisorStep, after: SupervisorStep) -> bool {
    use SupervisorStep::*;
    before == after
        || (before != Done && after == Done)
        || (!matches!(before, Aborting | Done) && after == Aborting)
        || (rank(after) == rank(before) + 1 && rank(after) <= rank(Probation))
}

fn phase_rank(p: JournalPhase) -> u8 {
    match p {
        JournalPhase::Negotiating => 0,
        JournalPhase::Draining => 1,
        JournalPhase::Sealing => 2,
        JournalPhase::AwaitingReady => 3,
        JournalPhase::Committed | JournalPhase::ResumingAfterAbort => 4,
    }
}

struct Check<B: FuzzBuffer> {
    cfg: SupervisorConfig,
    now: Instant,
    started: Instant,
    id: HandoffId,
    shadow_o: Shadow<B::Shadow>,
    shadow_n: Shadow<B::Shadow>,
    received: Received,
    finished: bool,
    connect_out: bool,
    /// A connect that missed the incumbent asked for another at this time.
    connect_retry_at: Option<Instant>,
    /// The reason a miss past the hello timeout must end the handoff with.
    missed: Option<AbortReason>,
    open: [bool; 2],
    spawn_out: bool,
    spawn_asked: bool,
    successor_pid: Option<u32>,
    successor_exited: bool,
    helloack: [bool; 2],
    /// `HelloAck` went to this peer in the current step.
    helloack_now: [bool; 2],
    prepare_sent: bool,
    seal_request_sent: bool,
    sealed: bool,
    seal_failed: bool,
    begin_sent: bool,
    commit_sent: bool,
    abort_sent: [bool; 2],
    resume_sent: bool,
    terminate_at: Option<Instant>,
    kill_at: Option<Instant>,
    journal: Vec<JournalPhase>,
    cleared: bool,
    journal_failed: bool,
    expect_finished: bool,
    expect_resume: bool,
    beat_from: [Option<Instant>; 2],
    /// The heartbeat that must follow a `HelloAck` at once, to tell the
    /// peer this supervisor heartbeats.
    announce_beat: [bool; 2],
    step_bytes: usize,
    outbox_peak: usize,
    /// What the incumbent's `SealComplete` reported, for the gate.
    sealed_revisions: Vec<u64>,
    /// What each peer's accepted `Hello` offered.
    offers: [Capabilities; 2],
    /// `PassChannel` went to this peer.
    pass_sent: [bool; 2],
    /// The count of the `ConnectionsPassed` the supervisor took.
    connections_passed: Option<u32>,
    /// A `ConnectionsPassed` it could not take came during the drain.
    count_refused: bool,
}

impl<B: FuzzBuffer> Check<B> {
    fn new(cfg: SupervisorConfig, now: Instant, id: HandoffId) -> Self {
        Check {
            cfg,
            now,
            started: now,
            id,
            shadow_o: Shadow::new(),
            shadow_n: Shadow::new(),
            received: Received::Nothing,
            finished: false,
            connect_out: false,
            connect_retry_at: None,
            missed: None,
            open: [false; 2],
            spawn_out: false,
            spawn_asked: false,
            successor_pid: None,
            successor_exited: false,
            helloack: [false; 2],
            helloack_now: [false; 2],
            prepare_sent: false,
            seal_request_sent: false,
            sealed: false,
            seal_failed: false,
            begin_sent: false,
            commit_sent: false,
            abort_sent: [false; 2],
            resume_sent: false,
            terminate_at: None,
            kill_at: None,
            journal: Vec::new(),
            cleared: false,
            journal_failed: false,
            expect_finished: false,
            expect_resume: false,
            beat_from: [None; 2],
            announce_beat: [false; 2],
            step_bytes: 0,
            outbox_peak: 0,
            sealed_revisions: Vec::new(),
            offers: [Capabilities::NONE; 2],
            pass_sent: [false; 2],
            connections_passed: None,
            count_refused: false,
        }
    }

    fn listening(&self, p: Side) -> bool {
        self.open[slot(p)] && !self.finished
    }

    /// Whether the successor may be running (and so may hold, or soon
    /// take, the data-dir lock).
    fn successor_may_live(&self, now: Instant) -> bool {
        self.spawn_out
            || (self.successor_pid.is_some()
                && !self.successor_exited
                && self.kill_at.is_none_or(|k| now < k + self.cfg.kill_grace))
    }

    fn answer(&mut self, call: Call) -> bool {
        match call {
            Call::Connected | Call::ConnectedTo(_) | Call::ConnectFailed | Call::ConnectRefused => {
                let answered = self.connect_out && !self.finished;
                self.connect_out = false;
                if answered && matches!(call, Call::Connected | Call::ConnectedTo(_)) {
                    self.open[0] = true;
                }
                answered
            }
            Call::Spawned(pid) => {
                let answered = std::mem::replace(&mut self.spawn_out, false);
                if answered {
                    self.successor_pid = Some(pid);
                    self.open[1] = true;
                }
                answered
            }
            Call::SpawnFailed => std::mem::replace(&mut self.spawn_out, false),
            Call::SuccessorExited => {
                let answered = self.successor_pid.is_some() && !self.successor_exited;
                self.successor_exited |= answered;
                answered
            }
            Call::Closed(p) => self.open[slot(p)] && !self.finished,
            Call::JournalFailed => {
                if !self.finished {
                    self.journal_failed = true;
                }
                false
            }
            _ => false,
        }
    }

    /// Decides which of the messages the handoff acts on this step carried.
    fn judge(
        &mut self,
        call: Call,
        before: SupervisorStep,
        after: SupervisorStep,
        received: &Received,
        incumbent_pid: Option<u32>,
    ) -> Ctx {
        let from = match call {
            Call::Input(p) => Some(p),
            _ => None,
        };
        let id = Some(self.id);
        // A peer's first frame may carry any version field: nothing is
        // negotiated yet.
        let hello = |side: Side, pid: Option<u32>| match received.message() {
            Some((
                _,
                Message::Hello {
                    role,
                    pid: announced,
                    proto_min,
                    proto_max,
                    ..
                },
            )) => {
                role == side
                    && pid.is_none_or(|p| p == announced)
                    && proto_min <= PROTO_MAX
                    && proto_max >= PROTO_MAX
            }
            _ => false,
        };
        let o = from == Some(Side::Incumbent);
        let n = from == Some(Side::Successor);
        let from_o = |step: SupervisorStep, kind: MessageKind| {
            o && before == step && received.valid(kind, id).is_some()
        };
        let ctx = Ctx {
            call,
            after,
            now: self.now,
            incumbent_pid,
            incumbent_hello: o
                && before == SupervisorStep::AwaitingIncumbentHello
                && hello(Side::Incumbent, Some(INCUMBENT_PID)),
            successor_hello: n
                && before == SupervisorStep::AwaitingSuccessorHello
                && hello(Side::Successor, self.successor_pid),
            drained: from_o(SupervisorStep::Draining, MessageKind::Drained),
            seal_complete: from_o(SupervisorStep::Sealing, MessageKind::SealComplete),
            seal_failed: from_o(SupervisorStep::Sealing, MessageKind::SealFailed),
            ready: n
                && before == SupervisorStep::AwaitingReady
                && received.valid(MessageKind::Ready, id).is_some(),
            ready_ok: false,
            hello_offer: match received.message() {
                Some((_, Message::Hello { capabilities, .. })) => Some(capabilities),
                _ => None,
            },
            count_refused: false,
        };
        let mut ctx = ctx;
        if from_o(SupervisorStep::Draining, MessageKind::ConnectionsPassed)
            && let Some(Message::ConnectionsPassed { count, .. }) =
                received.valid(MessageKind::ConnectionsPassed, id)
        {
            if self.pass_sent == [true; 2] && self.connections_passed.is_none() {
                self.connections_passed = Some(count);
            } else {
                ctx.count_refused = true;
                self.count_refused = true;
            }
        }
        if ctx.seal_complete
            && let Some(Message::SealComplete {
                last_revision_per_shard,
                ..
            }) = received.valid(MessageKind::SealComplete, id)
        {
            self.sealed_revisions = last_revision_per_shard.iter().collect();
        }
        if ctx.ready
            && let Some(Message::Ready {
                healthz_ok,
                advertised_revision_per_shard,
                ..
            }) = received.valid(MessageKind::Ready, id)
        {
            let advertised: Vec<u64> = advertised_revision_per_shard.iter().collect();
            let sealed = &self.sealed_revisions;
            let behind = !sealed.is_empty()
                && sealed.len() == advertised.len()
                && sealed.iter().zip(&advertised).any(|(s, a)| a < s);
            ctx.ready_ok = healthz_ok && !behind;
        }
        self.sealed |= ctx.seal_complete;
        self.seal_failed |= ctx.seal_failed;
        ctx
    }

    fn output(&mut self, c: &Ctx, out: SupervisorOutput<'_>) {
        assert!(!self.finished, "{out:?} after Finished");
        if self.expect_finished {
            assert!(
                matches!(out, SupervisorOutput::Finished(_)),
                "{out:?} between ClearJournal and Finished"
            );
        }
        if self.expect_resume {
            assert!(
                matches!(&out, SupervisorOutput::Transmit { frame, .. } if sent(frame).kind() == MessageKind::ResumeAfterAbort),
                "{out:?} after the resuming journal entry"
            );
        }
        match out {
            SupervisorOutput::ConnectIncumbent => {
                let retry_due = self.connect_retry_at.take().is_some_and(|t| t <= c.now);
                assert!(
                    c.call == Call::New || (c.call == Call::Timeout && retry_due),
                    "ConnectIncumbent other than at the start or a due retry"
                );
                assert!(!self.connect_out, "ConnectIncumbent twice");
                self.connect_out = true;
            }
            SupervisorOutput::Transmit { to, frame } => self.transmit(c, to, frame, false),
            SupervisorOutput::TransmitWithChannelEnd { to, frame } => {
                self.transmit(c, to, frame, true)
            }
            SupervisorOutput::SpawnSuccessor => {
                assert!(
                    self.helloack_now[0],
                    "SpawnSuccessor other than on the incumbent's Hello"
                );
                assert!(!self.spawn_asked, "a second SpawnSuccessor");
                self.spawn_asked = true;
                self.spawn_out = true;
            }
            SupervisorOutput::Signal(Signal::Terminate) => {
                assert!(
                    self.successor_pid.is_some() && !self.successor_exited,
                    "SIGTERM to no live successor"
                );
                assert!(self.terminate_at.is_none(), "SIGTERM twice");
                assert!(
                    !c.ready_ok,
                    "SIGTERM to a successor whose Ready passed the gate"
                );
                assert!(matches!(
                    c.after,
                    SupervisorStep::Aborting | SupervisorStep::Done
                ));
                self.terminate_at = Some(c.now);
            }
            SupervisorOutput::Signal(Signal::Kill) => {
                let term = self.terminate_at.expect("SIGKILL without SIGTERM first");
                assert!(
                    c.now >= term + self.cfg.kill_grace,
                    "SIGKILL within the grace after SIGTERM"
                );
                assert!(self.kill_at.is_none(), "SIGKILL twice");
                assert!(!self.successor_exited, "SIGKILL to a reaped pid");
                assert_eq!(c.call, Call::Timeout);
                self.kill_at = Some(c.now);
            }
            SupervisorOutput::Disconnect(p) => {
                assert!(
                    self.open[slot(p)],
                    "Disconnect({p:?}) of a closed connection"
                );
                self.open[slot(p)] = false;
            }
            SupervisorOutput::WriteJournal(record) => self.journal_entry(c, record),
            SupervisorOutput::ClearJournal => {
                assert!(
                    !self.journal.is_empty(),
                    "ClearJournal with nothing written"
                );
                assert!(!self.cleared, "ClearJournal twice");
                self.cleared = true;
                self.expect_finished = true;
            }
            SupervisorOutput::Finished(outcome) => self.finish(c, &outcome),
        }
    }

    /// Whether both peers' `Hello`s offered connection passing and the
    /// configuration allows it.
    fn passing(&self) -> bool {
        self.cfg.pass_connections
            && self
                .offers
                .iter()
                .all(|o| o.contains(Capabilities::PASS_CONNECTIONS))
    }

    fn transmit(&mut self, c: &Ctx, to: Side, frame: &[u8], with_channel_end: bool) {
        assert!(
            self.open[slot(to)],
            "a frame to the {to} while not connected"
        );
        self.step_bytes += frame.len();
        let msg = sent(frame);
        assert_eq!(
            with_channel_end,
            msg.kind() == MessageKind::PassChannel,
            "{:?} to the {to}: a channel end goes with PassChannel and nothing else",
            msg.kind()
        );
        let announce = std::mem::take(&mut self.announce_beat[slot(to)]);
        assert!(
            !announce || matches!(msg, Message::Heartbeat { .. }),
            "{:?} to the {to} right after its HelloAck, not a heartbeat",
            msg.kind()
        );
        if let Some(got) = msg.handoff_id() {
            assert_eq!(got, self.id, "{:?} for another handoff", msg.kind());
        }
        match (to, msg) {
            (
                _,
                Message::HelloAck {
                    proto_version_chosen,
                    ..
                },
            ) => {
                let hello = match to {
                    Side::Incumbent => c.incumbent_hello,
                    Side::Successor => c.successor_hello,
                };
                assert!(hello, "HelloAck to the {to} without its Hello");
                assert_eq!(proto_version_chosen, PROTO_MAX);
                let s = slot(to);
                assert!(!self.helloack[s], "HelloAck to the {to} twice");
                self.offers[s] = c.hello_offer.expect("a Hello came");
                self.helloack[s] = true;
                self.helloack_now[s] = true;
                self.beat_from[s] = Some(c.now);
                self.announce_beat[s] = true;
            }
            (
                Side::Incumbent,
                Message::PrepareHandoff {
                    successor_pid,
                    deadline_ms,
                    drain_grace_ms,
                    ..
                },
            ) => {
                assert!(
                    self.helloack_now[1],
                    "PrepareHandoff before the successor said Hello"
                );
                assert!(!self.prepare_sent, "PrepareHandoff twice");
                assert_eq!(
                    self.pass_sent,
                    [self.passing(); 2],
                    "PassChannel to both peers must precede PrepareHandoff exactly when both offered PASS_CONNECTIONS"
                );
                self.prepare_sent = true;
                assert_eq!(Some(successor_pid), self.successor_pid);
                assert_eq!(drain_grace_ms, millis(self.cfg.drain_grace));
                let left = (self.started + self.cfg.deadline).saturating_duration_since(c.now);
                assert_eq!(
                    deadline_ms,
                    millis(left),
                    "PrepareHandoff misstates the time left"
                );
            }
            (_, Message::PassChannel { .. }) => {
                assert!(
                    self.passing(),
                    "PassChannel to the {to} though not both peers offered PASS_CONNECTIONS"
                );
                assert!(
                    self.helloack_now[1],
                    "PassChannel other than on the successor's Hello"
                );
                assert!(!self.prepare_sent, "PassChannel after PrepareHandoff");
                assert!(!self.pass_sent[slot(to)], "PassChannel to the {to} twice");
                if to == Side::Incumbent {
                    assert!(
                        self.pass_sent[1],
                        "PassChannel to the incumbent before the successor"
                    );
                }
                self.pass_sent[slot(to)] = true;
            }
            (Side::Incumbent, Message::SealRequest { .. }) => {
                assert!(c.drained, "SealRequest without Drained");
                assert!(self.prepare_sent && !self.seal_request_sent);
                self.seal_request_sent = true;
            }
            (Side::Successor, Message::Begin { .. }) => {
                assert!(c.seal_complete, "Begin before SealComplete");
                assert!(self.seal_request_sent && !self.begin_sent);
                self.begin_sent = true;
            }
            (Side::Incumbent, Message::Commit { .. }) => {
                assert!(c.ready_ok, "Commit without a Ready that passed the gate");
                assert!(self.begin_sent && !self.commit_sent);
                self.commit_sent = true;
            }
            (Side::Incumbent, Message::Abort { .. }) => {
                assert!(self.prepare_sent, "Abort to an incumbent never prepared");
                assert!(
                    !self.sealed && !self.seal_failed,
                    "Abort to an incumbent that sealed or failed to"
                );
                assert!(!self.commit_sent && !self.abort_sent[0]);
                self.abort_sent[0] = true;
            }
            (Side::Successor, Message::Abort { .. }) => {
                assert!(self.helloack[1], "Abort to a successor before its HelloAck");
                assert!(!c.ready_ok && !self.abort_sent[1]);
                self.abort_sent[1] = true;
            }
            (Side::Incumbent, Message::ResumeAfterAbort { .. }) => {
                self.expect_resume = false;
                assert!(
                    self.sealed,
                    "ResumeAfterAbort to an incumbent that did not seal"
                );
                assert!(
                    !self.successor_may_live(c.now),
                    "ResumeAfterAbort while the successor may still be alive"
                );
                assert!(!self.resume_sent && !self.commit_sent);
                self.resume_sent = true;
            }
            (_, Message::Heartbeat { ts_ms }) if announce => {
                assert_eq!(ts_ms, c.now.as_millis());
            }
            (_, Message::Heartbeat { ts_ms }) => {
                assert_eq!(c.call, Call::Timeout, "a heartbeat outside a timeout");
                assert!(self.helloack[slot(to)], "a heartbeat before HelloAck");
                let from = self.beat_from[slot(to)].expect("set with HelloAck");
                assert!(
                    c.now >= from + self.cfg.heartbeat_interval,
                    "heartbeat to the {to} at {:?}, less than an interval after {from:?}",
                    c.now
                );
                assert_eq!(ts_ms, c.now.as_millis());
                self.beat_from[slot(to)] = Some(c.now);
            }
            (to, other) => panic!("the supervisor sent {:?} to the {to}", other.kind()),
        }
    }

    /// After a step's outputs: a connect that missed the incumbent is
    /// retried after the interval while the hello timeout from the start
    /// lasts, and ends the handoff after it; a due retry is asked for.
    fn after_connect_step(&mut self, c: &Ctx, answered: bool, timeout: Option<Instant>) {
        let miss = match c.call {
            Call::ConnectedTo(false) => Some(AbortReason::ControlSocketNotIncumbent {
                listener_pid: 0,
                incumbent_pid: INCUMBENT_PID,
            }),
            Call::ConnectRefused => Some(AbortReason::IncumbentUnreachable),
            _ => None,
        };
        if let Some(reason) = miss.filter(|_| answered) {
            assert!(
                !self.open[0],
                "a connection to another process's socket kept"
            );
            let retry_at = c.now + defaults::CONNECT_RETRY_INTERVAL;
            let give_up_at =
                (self.started + self.cfg.hello_timeout).min(self.started + self.cfg.deadline);
            if retry_at < give_up_at {
                assert_eq!(
                    c.after,
                    SupervisorStep::ConnectingIncumbent,
                    "a missed connect within the hello timeout gave up"
                );
                assert!(
                    timeout.is_some_and(|t| t <= retry_at),
                    "no timer for the connect retry"
                );
                self.connect_retry_at = Some(retry_at);
            } else {
                assert!(
                    matches!(c.after, SupervisorStep::Aborting | SupervisorStep::Done),
                    "a missed connect past the hello timeout did not end the handoff"
                );
                self.missed = Some(reason);
            }
        }
        if c.call == Call::Timeout
            && c.after == SupervisorStep::ConnectingIncumbent
            && !self.connect_out
        {
            assert!(
                self.connect_retry_at.is_some_and(|t| t > c.now),
                "a due connect retry was not asked for"
            );
        }
    }

    fn journal_entry(&mut self, c: &Ctx, r: JournalRecord) {
        assert!(!self.cleared, "a journal entry after ClearJournal");
        assert_eq!(r.handoff_id, self.id);
        assert_eq!(r.incumbent_pid, c.incumbent_pid.unwrap_or(0));
        assert_eq!(r.successor_pid, self.successor_pid);
        assert_eq!(r.started_at_unix_ms, SUPERVISOR_STARTED_UNIX_MS);
        if let Some(last) = self.journal.last() {
            assert!(
                phase_rank(r.phase) > phase_rank(*last),
                "journal phase {:?} after {last:?}",
                r.phase
            );
        }
        match r.phase {
            JournalPhase::Negotiating => assert!(self.helloack_now[1]),
            JournalPhase::Draining => assert!(c.drained),
            // The supervisor records neither `Sealing` (superseded at once by
            // `AwaitingReady`, in the same step) nor `Committed` (cleared at
            // once): both would be fsyncs for nothing.
            JournalPhase::Sealing | JournalPhase::Committed => {
                panic!("a {:?} record, which the supervisor never writes", r.phase)
            }
            JournalPhase::AwaitingReady => assert!(self.begin_sent && c.seal_complete),
            JournalPhase::ResumingAfterAbort => {
                assert!(self.journal.contains(&JournalPhase::AwaitingReady));
                self.expect_resume = true;
            }
        }
        self.journal.push(r.phase);
    }

    fn finish(&mut self, c: &Ctx, o: &HandoffOutcomeRef<'_>) {
        self.expect_finished = false;
        assert!(!self.spawn_out, "Finished with a spawn in flight");
        assert!(
            !self.open[0] && !self.open[1],
            "Finished with a connection open"
        );
        assert_eq!(o.handoff_id, self.id);
        assert_eq!(
            o.committed(),
            c.ready_ok,
            "committed other than on a Ready that passed the gate"
        );
        match (self.missed, o.result) {
            (
                Some(AbortReason::ControlSocketNotIncumbent { .. }),
                Err(AbortReason::ControlSocketNotIncumbent { incumbent_pid, .. }),
            ) => assert_eq!(incumbent_pid, INCUMBENT_PID),
            (Some(missed), Err(got)) => assert_eq!(got, missed, "the reason a connect gave up"),
            (Some(_), Ok(())) => panic!("committed after the connect gave up"),
            (None, _) => {}
        }
        assert_eq!(o.journal_failed, self.journal_failed);
        assert_eq!(
            o.connections_passed, self.connections_passed,
            "the outcome's count of passed connections"
        );
        if self.count_refused {
            // It ended the drain, so it is the reason.
            assert!(
                matches!(
                    o.result,
                    Err(AbortReason::ProtocolViolation {
                        peer: Side::Incumbent,
                        violation: Violation::Unexpected {
                            message: MessageKind::ConnectionsPassed,
                            ..
                        },
                    })
                ),
                "a refused ConnectionsPassed ended the handoff for {:?}",
                o.result
            );
        }
        assert_eq!(
            self.cleared,
            !self.journal.is_empty(),
            "a journal left behind"
        );
        assert_eq!(o.successor.pid, self.successor_pid);
        assert_eq!(o.incumbent.pid, c.incumbent_pid);
        assert_eq!(o.sealed.is_some(), self.sealed);
        assert_eq!(
            o.timings.total,
            c.now.saturating_duration_since(self.started),
            "the outcome's total time"
        );
        if o.committed() {
            assert!(self.begin_sent);
            assert_eq!(o.successor_fate, SuccessorFate::Serving);
            assert!(
                self.terminate_at.is_none(),
                "a committed successor was signalled"
            );
            assert_eq!(self.journal.last(), Some(&JournalPhase::AwaitingReady));
            let fate = if self.commit_sent {
                IncumbentFate::Committed
            } else {
                IncumbentFate::Gone
            };
            assert_eq!(o.incumbent_fate, fate);
            return self.finished = true;
        }
        assert!(!self.commit_sent);
        let successor_fate = match self.successor_pid {
            None => SuccessorFate::NotSpawned,
            Some(_) if self.successor_exited => SuccessorFate::Exited,
            Some(_) => {
                assert!(
                    !self.successor_may_live(c.now),
                    "an aborted handoff ended with its successor maybe alive"
                );
                SuccessorFate::Unconfirmed
            }
        };
        assert_eq!(o.successor_fate, successor_fate);
        match o.incumbent_fate {
            IncumbentFate::Untouched => assert!(!self.prepare_sent),
            IncumbentFate::ToldToResume => {
                if self.sealed {
                    assert!(self.resume_sent, "a sealed incumbent not told to resume");
                } else {
                    assert!(self.abort_sent[0], "told to resume without Abort");
                }
            }
            IncumbentFate::ResumedAfterSealFailure => assert!(self.seal_failed),
            IncumbentFate::Gone | IncumbentFate::Unresponsive => assert!(self.prepare_sent),
            IncumbentFate::Committed => panic!("an aborted handoff says Committed"),
        }
        if self.prepare_sent && !self.seal_failed {
            // docs/PROTOCOL.md section 4: every abort leaves the incumbent serving,
            // unless it vanished on its own.
            assert!(matches!(
                o.incumbent_fate,
                IncumbentFate::ToldToResume | IncumbentFate::Gone | IncumbentFate::Unresponsive
            ));
        }
        self.finished = true;
    }
}
