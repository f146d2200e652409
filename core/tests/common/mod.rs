//! A small deterministic world for scenario tests: the three machines, the
//! byte streams between them, a flock table, processes that start, crash and
//! exit, daemon hooks that take time, and a virtual clock that jumps to the
//! next deadline. Nothing here sleeps; time only moves when nothing else can.
//!
//! After every step the world checks the invariants it can see: at most one
//! process holds the data-dir lock, nobody has its writer open without the
//! lock, and the incumbent releases the lock only after a successful seal.
#![allow(dead_code, unreachable_pub)]

pub mod peers;

use std::collections::VecDeque;
use std::time::Duration;

use handoff_core::{
    AbortReason, DrainReport, HandoffId, IncumbentConfig, IncumbentEnd, IncumbentFate,
    IncumbentOutput, IncumbentSession, Instant, JournalPhase, JournalRecord, LEN_PREFIX, Message,
    MessageKind, ProtoVersion, ReadyReportRef, Revisions, SealFailure, SealReportRef, Side, Signal,
    Strings, SuccessorConfig, SuccessorEnd, SuccessorFate, SuccessorOutput, SuccessorSession,
    SupervisorConfig, SupervisorHandoff, SupervisorOutput, VERSION_FIELD,
};

pub const O_PID: u32 = 1000;
pub const N_PID: u32 = 2000;
pub const REVISIONS: [u64; 3] = [0, 41, u64::MAX];
pub const FINGERPRINT: [u8; 32] = [0xab; 32];

/// Who holds the data-dir lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Incumbent(u32),
    Successor,
}

/// One direction of a stream socket: bytes in flight, then maybe EOF.
#[derive(Default, Debug)]
pub struct Pipe {
    pub bytes: VecDeque<u8>,
    /// The writer closed its end; the reader sees EOF once `bytes` is empty.
    pub closed: bool,
    /// EOF was delivered.
    pub eof_seen: bool,
}

impl Pipe {
    fn reset(&mut self) {
        *self = Pipe::default();
    }
}

/// The supervisor's outcome, copied out of the machine.
#[derive(Clone, Debug)]
pub struct OwnedOutcome {
    pub result: Result<(), AbortReason>,
    pub incumbent_fate: IncumbentFate,
    pub successor_fate: SuccessorFate,
    pub incumbent_pid: Option<u32>,
    pub incumbent_build_id: Vec<u8>,
    pub successor_pid: Option<u32>,
    pub drained: Option<DrainReport>,
    pub sealed_revisions: Option<Vec<u64>>,
    pub fingerprint: Option<[u8; 32]>,
    pub seal_error: Option<String>,
    pub ready_listening_on: Option<Vec<String>>,
    pub ready_healthz_ok: Option<bool>,
    pub ready_revisions: Option<Vec<u64>>,
    pub seal_progress: Option<(u32, u32, u64)>,
    pub probation_window: Option<Duration>,
    pub probe_failure: Option<String>,
    pub rolled_back: bool,
    pub timings: handoff_core::PhaseTimings,
    pub journal_failed: bool,
    pub connections_passed: Option<u32>,
}

impl OwnedOutcome {
    pub fn committed(&self) -> bool {
        self.result.is_ok()
    }

    pub fn reason(&self) -> AbortReason {
        self.result.expect_err("the handoff committed")
    }
}

/// How the incumbent daemon behaves.
#[derive(Clone, Copy, Debug)]
pub struct IncumbentBehavior {
    pub drain_time: Duration,
    pub seal_time: Duration,
    pub seal_fails: bool,
    pub resume_fails: bool,
    /// Sends `SealProgress` this often while sealing.
    pub seal_progress_every: Option<Duration>,
    /// With a pass channel, the drain passes this many connections and
    /// reports them just before `Drained`.
    pub passes: u32,
}

impl Default for IncumbentBehavior {
    fn default() -> Self {
        IncumbentBehavior {
            drain_time: Duration::from_millis(3),
            seal_time: Duration::from_millis(2),
            seal_fails: false,
            resume_fails: false,
            seal_progress_every: None,
            passes: 2,
        }
    }
}

/// How the successor binary behaves.
#[derive(Clone, Copy, Debug)]
pub struct SuccessorBehavior {
    /// Start-up work before its `Hello`.
    pub startup: Duration,
    /// From `Start` (lock held) until it serves.
    pub after_begin: Duration,
    pub crash_before_hello: bool,
    pub never_hello: bool,
    pub crash_after_begin: bool,
    pub hang_after_begin: bool,
    pub ignores_term: bool,
    pub start_fails: bool,
    pub healthz_ok: bool,
    /// Advertise these revisions in `Ready` instead of the sealed ones.
    pub advertised: Option<&'static [u64]>,
    /// Announce this pid instead of its own.
    pub lie_about_pid: bool,
}

impl Default for SuccessorBehavior {
    fn default() -> Self {
        SuccessorBehavior {
            startup: Duration::from_millis(1),
            after_begin: Duration::from_millis(2),
            crash_before_hello: false,
            never_hello: false,
            crash_after_begin: false,
            hang_after_begin: false,
            ignores_term: false,
            start_fails: false,
            healthz_ok: true,
            advertised: None,
            lie_about_pid: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Drain,
    Seal,
    SealProgress,
    Resume,
}

pub struct IncumbentProc {
    pub pid: u32,
    pub alive: bool,
    pub accepting: bool,
    pub writer_open: bool,
    pub holds_lock: bool,
    pub session: Option<IncumbentSession>,
    pub ends: Vec<IncumbentEnd>,
    pub behavior: IncumbentBehavior,
    /// The pass channel the session took, with its id and version.
    pub pass_channel: Option<(HandoffId, ProtoVersion)>,
    hooks: Vec<(Instant, Hook)>,
}

impl IncumbentProc {
    /// Serving as the incumbent: lock held, writer open, accepting.
    pub fn serving(&self) -> bool {
        self.alive && self.holds_lock && self.writer_open && self.accepting
    }
}

pub struct SuccessorProc {
    pub pid: u32,
    pub alive: bool,
    pub exit_reported: bool,
    pub session: Option<SuccessorSession>,
    pub hello_at: Option<Instant>,
    pub serve_at: Option<Instant>,
    pub holds_lock: bool,
    pub writer_open: bool,
    pub end: Option<SuccessorEnd>,
    pub behavior: SuccessorBehavior,
    /// The whole process is stuck: it reads nothing and times nothing out.
    pub hung: bool,
    /// The pass channel the session took, with its id and version.
    pub pass_channel: Option<(HandoffId, ProtoVersion)>,
}

impl SuccessorProc {
    pub fn serving(&self) -> bool {
        self.alive
            && self.holds_lock
            && self.writer_open
            && matches!(self.end, Some(SuccessorEnd::Authoritative { .. }))
    }
}

/// The whole world.
pub struct World {
    pub now: Instant,
    pub supervisor: Option<SupervisorHandoff>,
    pub supervisor_alive: bool,
    /// The supervisor stopped reading, writing and timing out, with its
    /// sockets still open.
    pub supervisor_frozen: bool,
    pub incumbent: IncumbentProc,
    pub successor: Option<SuccessorProc>,
    pub lock: Option<Holder>,
    /// A dead process's lock stays held this long (its FD closing).
    pub lock_release_delay: Duration,
    lock_free_at: Option<Instant>,
    pub s_to_o: Pipe,
    pub o_to_s: Pipe,
    pub s_to_n: Pipe,
    pub n_to_s: Pipe,
    /// Bytes fed per `handle_input` call; 1 feeds byte by byte.
    pub chunk: usize,
    pub journal: Option<JournalRecord>,
    pub journal_log: Vec<JournalPhase>,
    pub outcome: Option<OwnedOutcome>,
    /// Every frame the supervisor wrote, in order.
    pub supervisor_sent: Vec<SentFrame>,
    pub trace: Vec<String>,
    pub successor_behavior: SuccessorBehavior,
    pub spawn_fails: bool,
    pub signals: Vec<Signal>,
    pub incumbent_cfg: IncumbentConfig,
    pub successor_cfg: SuccessorConfig,
    /// Frames each role has sent, for crash-point tests.
    pub frames_sent: [usize; 3],
    /// Crash this role right after it sent this many frames.
    pub crash_after_frames: Option<(Role, usize)>,
    pub steps: usize,
}

/// A frame the supervisor wrote, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentFrame {
    pub to: Side,
    pub kind: MessageKind,
    /// Written as `TransmitWithChannelEnd`: an end of the pass channel
    /// beside it.
    pub channel_end: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Supervisor = 0,
    Incumbent = 1,
    Successor = 2,
}

impl World {
    /// A serving incumbent holding the lock, and no supervisor yet.
    pub fn new() -> Self {
        World {
            now: Instant::from_millis(1_000),
            supervisor: None,
            supervisor_alive: false,
            supervisor_frozen: false,
            incumbent: IncumbentProc {
                pid: O_PID,
                alive: true,
                accepting: true,
                writer_open: true,
                holds_lock: true,
                session: None,
                ends: Vec::new(),
                behavior: IncumbentBehavior::default(),
                pass_channel: None,
                hooks: Vec::new(),
            },
            successor: None,
            lock: Some(Holder::Incumbent(O_PID)),
            lock_release_delay: Duration::ZERO,
            lock_free_at: None,
            s_to_o: Pipe::default(),
            o_to_s: Pipe::default(),
            s_to_n: Pipe::default(),
            n_to_s: Pipe::default(),
            chunk: usize::MAX,
            journal: None,
            journal_log: Vec::new(),
            outcome: None,
            supervisor_sent: Vec::new(),
            trace: Vec::new(),
            successor_behavior: SuccessorBehavior::default(),
            spawn_fails: false,
            signals: Vec::new(),
            incumbent_cfg: IncumbentConfig::default(),
            successor_cfg: SuccessorConfig::default(),
            frames_sent: [0; 3],
            crash_after_frames: None,
            steps: 0,
        }
    }

    /// Starts a handoff with this configuration.
    pub fn start_handoff(&mut self, cfg: SupervisorConfig) {
        self.supervisor = Some(SupervisorHandoff::new(
            self.now,
            cfg,
            [0x5a; 16],
            1_700_000_000_000,
        ));
        self.supervisor_alive = true;
        self.outcome = None;
    }

    /// A whole handoff with this configuration: started, run until nothing
    /// is left to happen, its outcome.
    pub fn handoff(&mut self, cfg: SupervisorConfig) -> OwnedOutcome {
        self.start_handoff(cfg);
        self.run();
        self.outcome.clone().expect("the supervisor finished")
    }

    /// The frames the supervisor wrote to `to`, in order.
    pub fn sent_to(&self, to: Side) -> Vec<MessageKind> {
        self.supervisor_sent
            .iter()
            .filter(|f| f.to == to)
            .map(|f| f.kind)
            .collect()
    }

    /// Runs until nothing is left to happen, or panics after many steps.
    pub fn run(&mut self) {
        for _ in 0..200_000 {
            if !self.step() {
                return;
            }
        }
        panic!(
            "the world did not settle; trace:\n{}",
            self.trace.join("\n")
        );
    }

    /// Runs until `cond` holds (checked after every step).
    pub fn run_until(&mut self, mut cond: impl FnMut(&World) -> bool) {
        for _ in 0..200_000 {
            if cond(self) {
                return;
            }
            if !self.step() {
                assert!(
                    cond(self),
                    "settled before the condition held; trace:\n{}",
                    self.trace.join("\n")
                );
                return;
            }
        }
        panic!("condition never held; trace:\n{}", self.trace.join("\n"));
    }

    fn log(&mut self, s: String) {
        self.trace.push(format!("{:?} {s}", self.now));
    }

    /// One step: carry out outputs, deliver bytes, fire due events; if none
    /// of that did anything, jump the clock to the next deadline. Returns
    /// false once nothing can ever happen again.
    pub fn step(&mut self) -> bool {
        self.steps += 1;
        let progressed = self.pump_supervisor()
            | self.pump_incumbent()
            | self.pump_successor()
            | self.deliver()
            | self.fire_due();
        self.check_invariants();
        if progressed {
            return true;
        }
        match self.next_event() {
            Some(t) => {
                assert!(
                    t >= self.now,
                    "a deadline in the past: {t:?} < {:?}",
                    self.now
                );
                self.now = t;
                self.fire_timeouts();
                true
            }
            None => false,
        }
    }

    fn next_event(&self) -> Option<Instant> {
        let mut ts = Vec::new();
        if self.supervisor_alive
            && !self.supervisor_frozen
            && let Some(s) = &self.supervisor
        {
            ts.extend(s.poll_timeout());
        }
        if self.incumbent.alive {
            if let Some(s) = &self.incumbent.session {
                ts.extend(s.poll_timeout());
            }
            ts.extend(self.incumbent.hooks.iter().map(|h| h.0));
        }
        if let Some(n) = &self.successor
            && n.alive
            && !n.hung
        {
            if let Some(s) = &n.session {
                ts.extend(s.poll_timeout());
            }
            ts.extend(n.hello_at);
            ts.extend(n.serve_at);
        }
        ts.extend(self.lock_free_at);
        ts.into_iter().min()
    }

    fn fire_timeouts(&mut self) {
        let now = self.now;
        if self.supervisor_alive
            && !self.supervisor_frozen
            && let Some(s) = &mut self.supervisor
        {
            s.handle_timeout(now);
        }
        if self.incumbent.alive
            && let Some(s) = &mut self.incumbent.session
        {
            s.handle_timeout(now);
        }
        if let Some(n) = &mut self.successor
            && n.alive
            && !n.hung
            && let Some(s) = &mut n.session
        {
            s.handle_timeout(now);
        }
    }

    fn fire_due(&mut self) -> bool {
        let now = self.now;
        let mut did = false;
        if let Some(t) = self.lock_free_at
            && t <= now
        {
            self.lock_free_at = None;
            self.lock = None;
            did = true;
        }
        // Incumbent hooks.
        if self.incumbent.alive {
            while let Some(i) = self.incumbent.hooks.iter().position(|h| h.0 <= now) {
                let (_, hook) = self.incumbent.hooks.remove(i);
                self.complete_hook(hook);
                did = true;
            }
        }
        // Successor process milestones.
        let mut spawn_session = false;
        let mut serve = false;
        if let Some(n) = &mut self.successor
            && n.alive
        {
            if n.hello_at.is_some_and(|t| t <= now) {
                n.hello_at = None;
                spawn_session = true;
            }
            if n.serve_at.is_some_and(|t| t <= now) {
                n.serve_at = None;
                serve = true;
            }
        }
        if spawn_session {
            did = true;
            let b = self.successor_behavior;
            if b.crash_before_hello {
                self.log("successor crashes during start-up".into());
                self.kill_successor();
            } else if !b.never_hello {
                let pid = if b.lie_about_pid { N_PID + 1 } else { N_PID };
                let cfg = self.successor_cfg;
                let n = self.successor.as_mut().unwrap();
                n.session = Some(SuccessorSession::new(now, cfg, pid, b"new-build"));
            }
        }
        if serve {
            did = true;
            let b = self.successor_behavior;
            if b.crash_after_begin {
                self.log("successor crashes after Begin".into());
                self.kill_successor();
            } else if b.start_fails {
                let n = self.successor.as_mut().unwrap();
                n.session.as_mut().unwrap().handle_start_failed(now);
            } else {
                let n = self.successor.as_mut().unwrap();
                assert!(
                    n.holds_lock,
                    "invariant 5: the successor opens state only with the lock"
                );
                n.writer_open = true;
                let listening = ["127.0.0.1:7000", "[::1]:7000"];
                n.session.as_mut().unwrap().handle_ready(
                    now,
                    ReadyReportRef {
                        listening_on: Strings::from_slice(&listening),
                        healthz_ok: b.healthz_ok,
                        advertised_revision_per_shard: Revisions::from_slice(
                            b.advertised.unwrap_or(&REVISIONS),
                        ),
                    },
                );
            }
        }
        did
    }

    fn complete_hook(&mut self, hook: Hook) {
        let now = self.now;
        let b = self.incumbent.behavior;
        let o = &mut self.incumbent;
        let Some(s) = o.session.as_mut() else { return };
        match hook {
            Hook::Drain => {
                if o.pass_channel.is_some() {
                    s.handle_connections_passed(now, b.passes);
                }
                s.handle_drained(
                    now,
                    DrainReport {
                        open_conns_remaining: 2,
                        accept_closed: true,
                    },
                )
            }
            Hook::SealProgress => {
                s.handle_seal_progress(now, 1, 4, 40);
                if let Some(every) = b.seal_progress_every
                    && o.hooks.iter().any(|h| h.1 == Hook::Seal)
                {
                    o.hooks.push((now + every, Hook::SealProgress));
                }
            }
            Hook::Seal => {
                if b.seal_fails {
                    s.handle_seal_failed(
                        now,
                        SealFailure {
                            error: "disk full",
                            partial_state: "shard 2 of 4",
                        },
                    );
                } else {
                    o.writer_open = false;
                    s.handle_sealed(
                        now,
                        SealReportRef {
                            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
                            data_dir_fingerprint: FINGERPRINT,
                        },
                    );
                }
            }
            Hook::Resume => {
                if b.resume_fails {
                    s.handle_resume_failed(now);
                } else {
                    assert!(o.holds_lock, "the incumbent resumes only with the lock");
                    o.writer_open = true;
                    o.accepting = true;
                    s.handle_resumed(now);
                }
            }
        }
    }

    fn count_frame(&mut self, role: Role) {
        self.frames_sent[role as usize] += 1;
        if let Some((r, n)) = self.crash_after_frames
            && r == role
            && self.frames_sent[role as usize] == n
        {
            self.crash_after_frames = None;
            self.log(format!("crash injected: {role:?} after its frame {n}"));
            match role {
                Role::Supervisor => self.kill_supervisor(),
                Role::Incumbent => self.kill_incumbent(),
                Role::Successor => self.kill_successor(),
            }
        }
    }

    fn pump_supervisor(&mut self) -> bool {
        if !self.supervisor_alive || self.supervisor_frozen {
            return false;
        }
        let mut did = false;
        loop {
            if !self.supervisor_alive {
                return did;
            }
            let now = self.now;
            let Some(s) = self.supervisor.as_mut() else {
                return did;
            };
            let Some(out) = s.poll_output() else {
                return did;
            };
            did = true;
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    if self.incumbent.alive && self.incumbent.session.is_none() {
                        self.s_to_o.reset();
                        self.o_to_s.reset();
                        let cfg = self.incumbent_cfg;
                        self.incumbent.session =
                            Some(IncumbentSession::new(now, cfg, O_PID, b"old-build"));
                        self.log("S connects to O".into());
                        self.supervisor.as_mut().unwrap().handle_connected(now);
                    } else {
                        self.supervisor.as_mut().unwrap().handle_connect_failed(now);
                    }
                }
                SupervisorOutput::Transmit { to, frame }
                | SupervisorOutput::TransmitWithChannelEnd { to, frame } => {
                    let channel_end =
                        matches!(out, SupervisorOutput::TransmitWithChannelEnd { .. });
                    let frame = frame.to_vec();
                    let kind = Message::decode(&frame[LEN_PREFIX + VERSION_FIELD..])
                        .expect("the supervisor writes frames that decode")
                        .kind();
                    self.supervisor_sent.push(SentFrame {
                        to,
                        kind,
                        channel_end,
                    });
                    let pipe = match to {
                        Side::Incumbent => &mut self.s_to_o,
                        Side::Successor => &mut self.s_to_n,
                    };
                    if !pipe.closed {
                        pipe.bytes.extend(&frame);
                    }
                    self.log(format!("S -> {to:?} {} bytes", frame.len()));
                    self.count_frame(Role::Supervisor);
                }
                SupervisorOutput::SpawnSuccessor => {
                    if self.spawn_fails {
                        self.supervisor.as_mut().unwrap().handle_spawn_failed(now);
                    } else {
                        self.s_to_n.reset();
                        self.n_to_s.reset();
                        let b = self.successor_behavior;
                        self.successor = Some(SuccessorProc {
                            pid: N_PID,
                            alive: true,
                            exit_reported: false,
                            session: None,
                            hello_at: Some(now + b.startup),
                            serve_at: None,
                            holds_lock: false,
                            writer_open: false,
                            end: None,
                            behavior: b,
                            hung: false,
                            pass_channel: None,
                        });
                        self.log("S spawns N".into());
                        self.supervisor.as_mut().unwrap().handle_spawned(now, N_PID);
                    }
                }
                SupervisorOutput::Signal(sig) => {
                    self.signals.push(sig);
                    self.log(format!("S signals N: {sig:?}"));
                    let ignores = self.successor_behavior.ignores_term;
                    if sig == Signal::Kill || !ignores {
                        self.kill_successor();
                    }
                }
                SupervisorOutput::Disconnect(peer) => {
                    self.log(format!("S disconnects {peer:?}"));
                    match peer {
                        Side::Incumbent => self.s_to_o.closed = true,
                        Side::Successor => self.s_to_n.closed = true,
                    }
                }
                SupervisorOutput::WriteJournal(rec) => {
                    self.journal = Some(rec);
                    self.journal_log.push(rec.phase);
                }
                SupervisorOutput::ClearJournal => self.journal = None,
                SupervisorOutput::Finished(o) => {
                    let owned = OwnedOutcome {
                        result: o.result,
                        incumbent_fate: o.incumbent_fate,
                        successor_fate: o.successor_fate,
                        incumbent_pid: o.incumbent.pid,
                        incumbent_build_id: o.incumbent.build_id.to_vec(),
                        successor_pid: o.successor.pid,
                        drained: o.drained,
                        sealed_revisions: o
                            .sealed
                            .map(|s| s.last_revision_per_shard.iter().collect()),
                        fingerprint: o.sealed.map(|s| s.data_dir_fingerprint),
                        seal_error: o.seal_failure.map(|f| f.error.to_string()),
                        ready_listening_on: o
                            .ready
                            .map(|r| r.listening_on.iter().map(String::from).collect()),
                        ready_healthz_ok: o.ready.map(|r| r.healthz_ok),
                        ready_revisions: o
                            .ready
                            .map(|r| r.advertised_revision_per_shard.iter().collect()),
                        seal_progress: o.seal_progress,
                        probation_window: o.probation_window,
                        probe_failure: o.probe_failure.map(str::to_owned),
                        rolled_back: o.rolled_back(),
                        timings: o.timings,
                        journal_failed: o.journal_failed,
                        connections_passed: o.connections_passed,
                    };
                    self.log(format!("S finished: {:?}", owned.result));
                    self.outcome = Some(owned);
                    self.s_to_o.closed = true;
                    self.s_to_n.closed = true;
                }
            }
        }
    }

    fn pump_incumbent(&mut self) -> bool {
        let mut did = false;
        loop {
            let now = self.now;
            let o = &mut self.incumbent;
            if !o.alive {
                return did;
            }
            let Some(s) = o.session.as_mut() else {
                return did;
            };
            let Some(out) = s.poll_output() else {
                return did;
            };
            did = true;
            match out {
                IncumbentOutput::Transmit(frame) => {
                    if !self.o_to_s.closed {
                        self.o_to_s.bytes.extend(frame);
                    }
                    self.count_frame(Role::Incumbent);
                }
                IncumbentOutput::Drain { deadline } => {
                    assert!(deadline >= now);
                    o.accepting = false;
                    o.hooks.push((now + o.behavior.drain_time, Hook::Drain));
                }
                IncumbentOutput::Seal => {
                    o.hooks.push((now + o.behavior.seal_time, Hook::Seal));
                    if let Some(every) = o.behavior.seal_progress_every {
                        o.hooks.push((now + every, Hook::SealProgress));
                    }
                }
                IncumbentOutput::SendListeners { .. } => {
                    panic!("the scenario world's incumbent offers no capability")
                }
                IncumbentOutput::PassChannel {
                    handoff_id,
                    version,
                } => {
                    assert!(o.pass_channel.is_none(), "a second pass channel");
                    o.pass_channel = Some((handoff_id, version));
                    self.log("O takes the pass channel".into());
                }
                IncumbentOutput::ReleaseLock => {
                    assert!(o.holds_lock, "released a lock it does not hold");
                    assert!(
                        !o.writer_open,
                        "invariant 2: lock released before a successful seal"
                    );
                    o.holds_lock = false;
                    self.lock = None;
                    self.log("O releases the lock".into());
                }
                IncumbentOutput::AcquireLock => {
                    if self.lock.is_none() {
                        self.lock = Some(Holder::Incumbent(o.pid));
                        o.holds_lock = true;
                        o.session.as_mut().unwrap().handle_lock_acquired(now);
                        self.log("O re-acquires the lock".into());
                    } else {
                        o.session.as_mut().unwrap().handle_lock_busy(now);
                    }
                }
                IncumbentOutput::Resume => o.hooks.push((now, Hook::Resume)),
                IncumbentOutput::Close => self.o_to_s.closed = true,
                IncumbentOutput::Finished(end) => {
                    o.ends.push(end);
                    o.session = None;
                    o.hooks.clear();
                    self.log(format!("O session finished: {end:?}"));
                    self.o_to_s.closed = true;
                    match end {
                        IncumbentEnd::Serving(_) => {}
                        // It finishes its connections and exits.
                        _ => self.kill_incumbent(),
                    }
                }
            }
        }
    }

    fn pump_successor(&mut self) -> bool {
        let mut did = false;
        loop {
            let now = self.now;
            let Some(n) = self.successor.as_mut() else {
                return did;
            };
            if !n.alive || n.hung {
                return did;
            }
            let Some(s) = n.session.as_mut() else {
                return did;
            };
            let Some(out) = s.poll_output() else {
                return did;
            };
            did = true;
            match out {
                SuccessorOutput::Transmit(frame) => {
                    if !self.n_to_s.closed {
                        self.n_to_s.bytes.extend(frame);
                    }
                    self.count_frame(Role::Successor);
                }
                SuccessorOutput::AcquireLock => {
                    assert!(
                        !s.on_probation(),
                        "a successor on probation asks for nothing"
                    );
                    if self.lock.is_none() {
                        self.lock = Some(Holder::Successor);
                        n.holds_lock = true;
                        n.session.as_mut().unwrap().handle_lock_acquired(now);
                        self.log("N acquires the lock".into());
                    } else {
                        n.session.as_mut().unwrap().handle_lock_busy(now);
                    }
                }
                SuccessorOutput::PassChannel {
                    handoff_id,
                    version,
                } => {
                    assert!(n.pass_channel.is_none(), "a second pass channel");
                    n.pass_channel = Some((handoff_id, version));
                }
                SuccessorOutput::Start => {
                    if n.behavior.hang_after_begin {
                        n.hung = true;
                    } else {
                        n.serve_at = Some(now + n.behavior.after_begin);
                    }
                }
                SuccessorOutput::Finished(end) => {
                    n.end = Some(end);
                    // On probation the session lives on, heartbeating.
                    if !n.session.as_ref().is_some_and(|s| s.on_probation()) {
                        n.session = None;
                        self.n_to_s.closed = true;
                    }
                    self.log(format!("N finished: {end:?}"));
                    if let SuccessorEnd::Failed(_) = end {
                        self.kill_successor();
                    }
                }
            }
        }
    }

    /// Delivers at most one chunk per connection direction, then EOFs.
    fn deliver(&mut self) -> bool {
        let now = self.now;
        let chunk = self.chunk;
        let mut did = false;
        // Supervisor <- incumbent, successor.
        if self.supervisor_alive && !self.supervisor_frozen {
            did |= feed(&mut self.o_to_s, chunk, |bytes| match bytes {
                Some(b) => self
                    .supervisor
                    .as_mut()
                    .unwrap()
                    .handle_input(now, Side::Incumbent, b),
                None => {
                    self.supervisor
                        .as_mut()
                        .unwrap()
                        .handle_closed(now, Side::Incumbent);
                    0
                }
            });
            did |= feed(&mut self.n_to_s, chunk, |bytes| match bytes {
                Some(b) => self
                    .supervisor
                    .as_mut()
                    .unwrap()
                    .handle_input(now, Side::Successor, b),
                None => {
                    self.supervisor
                        .as_mut()
                        .unwrap()
                        .handle_closed(now, Side::Successor);
                    0
                }
            });
        }
        // Incumbent <- supervisor.
        if self.incumbent.alive
            && let Some(s) = self.incumbent.session.as_mut()
        {
            did |= feed(&mut self.s_to_o, chunk, |bytes| match bytes {
                Some(b) => s.handle_input(now, b),
                None => {
                    s.handle_closed(now);
                    0
                }
            });
        }
        // Successor <- supervisor.
        if let Some(n) = self.successor.as_mut()
            && n.alive
            && !n.hung
            && let Some(s) = n.session.as_mut()
        {
            did |= feed(&mut self.s_to_n, chunk, |bytes| match bytes {
                Some(b) => s.handle_input(now, b),
                None => {
                    s.handle_closed(now);
                    0
                }
            });
        }
        // Exit of the successor, reported to a live supervisor (its parent).
        if self.supervisor_alive
            && !self.supervisor_frozen
            && let Some(n) = self.successor.as_mut()
            && !n.alive
            && !n.exit_reported
        {
            n.exit_reported = true;
            self.supervisor
                .as_mut()
                .unwrap()
                .handle_successor_exited(now);
            did = true;
        }
        did
    }

    /// Freezes the supervisor: it stops reading, writing and timing out,
    /// but its sockets stay open.
    pub fn freeze_supervisor(&mut self) {
        self.log("supervisor freezes".into());
        self.supervisor_frozen = true;
    }

    /// What the supervisor binary does when no incumbent is left: start the
    /// daemon again, cold, with a new pid. It takes the lock if it is free.
    /// Freezes the successor process (`SIGSTOP`): it reads, writes and
    /// times out nothing, but holds its lock and sockets. `SIGKILL` still
    /// ends it.
    pub fn freeze_successor(&mut self) {
        self.log("successor freezes".into());
        if let Some(n) = self.successor.as_mut() {
            n.hung = true;
        }
    }

    pub fn restart_incumbent(&mut self) {
        assert!(!self.incumbent.alive);
        let pid = self.incumbent.pid + 1;
        let free = self.lock.is_none();
        self.incumbent = IncumbentProc {
            pid,
            alive: true,
            accepting: free,
            writer_open: free,
            holds_lock: free,
            session: None,
            ends: Vec::new(),
            behavior: IncumbentBehavior::default(),
            pass_channel: None,
            hooks: Vec::new(),
        };
        if free {
            self.lock = Some(Holder::Incumbent(pid));
        }
        self.log(format!("incumbent restarted cold as pid {pid}"));
    }

    pub fn kill_supervisor(&mut self) {
        if !self.supervisor_alive {
            return;
        }
        self.log("supervisor dies".into());
        self.supervisor_alive = false;
        self.s_to_o.closed = true;
        self.s_to_n.closed = true;
    }

    pub fn kill_incumbent(&mut self) {
        let o = &mut self.incumbent;
        if !o.alive {
            return;
        }
        o.alive = false;
        o.session = None;
        o.hooks.clear();
        o.writer_open = false;
        o.accepting = false;
        self.o_to_s.closed = true;
        if o.holds_lock {
            o.holds_lock = false;
            self.release_dead_lock();
        }
        self.log("incumbent exits".into());
    }

    pub fn kill_successor(&mut self) {
        let Some(n) = self.successor.as_mut() else {
            return;
        };
        if !n.alive {
            return;
        }
        n.alive = false;
        n.session = None;
        n.writer_open = false;
        n.hello_at = None;
        n.serve_at = None;
        self.n_to_s.closed = true;
        let held = n.holds_lock;
        n.holds_lock = false;
        if held {
            self.release_dead_lock();
        }
        self.log("successor exits".into());
    }

    fn release_dead_lock(&mut self) {
        if self.lock_release_delay.is_zero() {
            self.lock = None;
        } else {
            self.lock_free_at = Some(self.now + self.lock_release_delay);
        }
    }

    fn check_invariants(&self) {
        let o = &self.incumbent;
        let o_lock = o.alive && o.holds_lock;
        let n_lock = self
            .successor
            .as_ref()
            .is_some_and(|n| n.alive && n.holds_lock);
        assert!(
            !(o_lock && n_lock),
            "invariant 1: two lock holders\n{}",
            self.trace.join("\n")
        );
        if o_lock {
            assert_eq!(self.lock, Some(Holder::Incumbent(o.pid)));
        }
        if n_lock {
            assert_eq!(self.lock, Some(Holder::Successor));
        }
        assert!(
            !o.writer_open || o.holds_lock || !o.alive,
            "incumbent writes without the lock"
        );
        if let Some(n) = &self.successor {
            assert!(
                !n.writer_open || n.holds_lock || !n.alive,
                "invariant 5: successor writes without the lock"
            );
        }
    }

    /// Exactly one process serves as the incumbent, holding the lock.
    pub fn serving_count(&self) -> usize {
        usize::from(self.incumbent.serving())
            + usize::from(self.successor.as_ref().is_some_and(|n| n.serving()))
    }

    /// The system looks as it did before the handoff: the old binary
    /// serves with its lock, the successor is gone, the journal is clear.
    pub fn assert_rolled_back(&self) {
        assert!(
            self.incumbent.serving(),
            "the incumbent must serve again with its lock; trace:\n{}",
            self.trace.join("\n")
        );
        assert_eq!(self.lock, Some(Holder::Incumbent(O_PID)));
        if let Some(n) = &self.successor {
            assert!(!n.alive, "the successor must be stopped");
        }
        if self.supervisor_alive {
            // A dead supervisor leaves its journal for its restart to read.
            assert_eq!(self.journal, None, "no journal entry may be left");
        }
        assert_eq!(self.serving_count(), 1);
    }

    /// The handoff went through: the successor serves, the old one exited.
    pub fn assert_handed_off(&self) {
        let n = self.successor.as_ref().expect("a successor");
        assert!(
            n.serving(),
            "the successor must serve; trace:\n{}",
            self.trace.join("\n")
        );
        assert!(
            !self.incumbent.alive,
            "the old incumbent exits after Commit"
        );
        assert_eq!(self.lock, Some(Holder::Successor));
        assert_eq!(self.journal, None);
        assert_eq!(self.serving_count(), 1);
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds one chunk of `pipe` (or its EOF) through `f`, which returns how
/// many bytes it consumed.
fn feed(pipe: &mut Pipe, chunk: usize, mut f: impl FnMut(Option<&[u8]>) -> usize) -> bool {
    if !pipe.bytes.is_empty() {
        let n = chunk.min(pipe.bytes.len());
        let bytes: Vec<u8> = pipe.bytes.iter().take(n).copied().collect();
        let used = f(Some(&bytes));
        assert!(used >= 1, "handle_input made no progress");
        pipe.bytes.drain(..used.min(n));
        return true;
    }
    if pipe.closed && !pipe.eof_seen {
        pipe.eof_seen = true;
        f(None);
        return true;
    }
    false
}
