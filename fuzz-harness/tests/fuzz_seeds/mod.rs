//! Seed inputs for the fuzz targets, made from real handoffs.
//!
//! A small deterministic world runs the three machines against each other
//! (byte pipes, a lock, daemon hooks that take time, processes that exit, a
//! clock that jumps to the next deadline) and records every input each
//! machine is given, in the script form its fuzz target reads. The byte
//! streams on the four pipes seed the codec targets. Scenarios cover the
//! happy path and the aborts of docs/PROTOCOL.md section 4, so the fuzzer starts from
//! every step of the protocol rather than having to find its way there.

use std::collections::BTreeSet;

use handoff_core::{
    Capabilities, DrainReport, HandoffId, IncumbentConfig, IncumbentOutput, IncumbentSession,
    Instant, JournalPhase, JournalRecord, Message, MessageKind, ReadyReportRef, Revisions,
    SealFailure, SealReportRef, Side, Signal, Strings, SuccessorConfig, SuccessorEnd,
    SuccessorOutput, SuccessorSession, SupervisorConfig, SupervisorHandoff, SupervisorOutput,
    encode_frame,
};
use handoff_fuzz_harness::{
    Chunk, DecoderChoice, FrameDecoderInput, FuzzClock, FuzzId, FuzzMessage, FuzzPeer, FuzzPid,
    INCUMBENT_BUILD_ID, INCUMBENT_PID, IncumbentInput, SUCCESSOR_BUILD_ID, SUCCESSOR_PID,
    SUPERVISOR_RANDOM, SUPERVISOR_STARTED_UNIX_MS, SuccessorInput, SupervisorInput, unparse_script,
};

/// One seed file: target, file name, contents.
pub(crate) type Seed = (&'static str, String, Vec<u8>);

const REVISIONS: [u64; 4] = [17, 0, 4_000_000_000, 3];
const FINGERPRINT: u8 = 0xf1;
const MS: u64 = 1_000_000;

/// How one recorded handoff goes.
#[derive(Clone, Copy, Default)]
struct Scenario {
    name: &'static str,
    connect_fails: bool,
    spawn_fails: bool,
    /// Bytes per delivery; 0 delivers everything waiting.
    chunk: usize,
    drain_ms: u64,
    drain_fails: bool,
    seal_ms: u64,
    seal_progress_ms: Option<u64>,
    seal_fails: bool,
    resume_fails: bool,
    startup_ms: u64,
    crash_before_hello: bool,
    start_ms: u64,
    start_fails: bool,
    never_ready: bool,
    crash_after_begin: bool,
    ignores_term: bool,
    /// A dead process's lock stays held this long.
    lock_linger_ms: u64,
    /// The supervisor dies right after sending this many frames.
    supervisor_dies_after: Option<usize>,
    incumbent_dies_after_seal: bool,
    /// Both peers offer `PASS_CONNECTIONS`; the drain passes
    /// [`PASSED`] connections and says so before `Drained`.
    passes: bool,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "happy",
        ..base()
    },
    Scenario {
        name: "happy-slow-hooks",
        drain_ms: 5_000,
        seal_ms: 7_000,
        seal_progress_ms: Some(1_500),
        startup_ms: 4_500,
        start_ms: 3_000,
        ..base()
    },
    Scenario {
        name: "happy-3-byte-reads",
        chunk: 3,
        ..base()
    },
    Scenario {
        name: "happy-1-byte-reads",
        chunk: 1,
        drain_ms: 2_500,
        ..base()
    },
    Scenario {
        name: "incumbent-unreachable",
        connect_fails: true,
        ..base()
    },
    Scenario {
        name: "spawn-fails",
        spawn_fails: true,
        ..base()
    },
    Scenario {
        name: "drain-fails",
        drain_fails: true,
        ..base()
    },
    Scenario {
        name: "drain-past-grace",
        drain_ms: 40_000,
        ..base()
    },
    Scenario {
        name: "seal-fails",
        seal_fails: true,
        seal_ms: 2_500,
        ..base()
    },
    Scenario {
        name: "resume-fails",
        seal_fails: true,
        resume_fails: true,
        ..base()
    },
    Scenario {
        name: "successor-crashes-in-startup",
        crash_before_hello: true,
        startup_ms: 1_000,
        ..base()
    },
    Scenario {
        name: "successor-start-fails",
        start_fails: true,
        start_ms: 500,
        ..base()
    },
    Scenario {
        name: "successor-crashes-after-begin",
        crash_after_begin: true,
        start_ms: 300,
        lock_linger_ms: 30,
        ..base()
    },
    Scenario {
        name: "successor-never-ready",
        never_ready: true,
        ..base()
    },
    Scenario {
        name: "successor-ignores-sigterm",
        never_ready: true,
        ignores_term: true,
        ..base()
    },
    Scenario {
        name: "lock-lingers",
        lock_linger_ms: 25,
        start_fails: true,
        ..base()
    },
    Scenario {
        name: "supervisor-dies-after-prepare",
        supervisor_dies_after: Some(3),
        drain_ms: 1_000,
        ..base()
    },
    Scenario {
        name: "supervisor-dies-after-seal-request",
        supervisor_dies_after: Some(4),
        seal_ms: 1_000,
        ..base()
    },
    Scenario {
        name: "supervisor-dies-after-begin",
        supervisor_dies_after: Some(5),
        start_ms: 1_000,
        ..base()
    },
    Scenario {
        name: "incumbent-dies-after-seal",
        incumbent_dies_after_seal: true,
        start_ms: 2_000,
        ..base()
    },
    Scenario {
        name: "happy-passing-connections",
        passes: true,
        drain_ms: 800,
        ..base()
    },
];

/// Connections a passing drain hands over.
const PASSED: u32 = 3;

const fn base() -> Scenario {
    Scenario {
        name: "",
        connect_fails: false,
        spawn_fails: false,
        chunk: 0,
        drain_ms: 0,
        drain_fails: false,
        seal_ms: 0,
        seal_progress_ms: None,
        seal_fails: false,
        resume_fails: false,
        startup_ms: 200,
        crash_before_hello: false,
        start_ms: 0,
        start_fails: false,
        never_ready: false,
        crash_after_begin: false,
        ignores_term: false,
        lock_linger_ms: 0,
        supervisor_dies_after: None,
        incumbent_dies_after_seal: false,
        passes: false,
    }
}

/// What the scenario's daemons offer in their `Hello`.
fn offered(sc: &Scenario) -> Capabilities {
    if sc.passes {
        Capabilities::PASS_CONNECTIONS
    } else {
        Capabilities::NONE
    }
}

/// A machine's recorded script, with the clock moves between its inputs.
struct Rec<T> {
    script: Vec<T>,
    at: Instant,
    clock: fn(FuzzClock) -> T,
    done: bool,
}

impl<T> Rec<T> {
    fn new(clock: fn(FuzzClock) -> T) -> Self {
        Rec {
            script: Vec::new(),
            at: Instant::ZERO,
            clock,
            done: false,
        }
    }

    /// The machine under record was created at `now`: its driver's zero.
    fn start(&mut self, now: Instant) {
        self.at = now;
    }

    fn push(&mut self, now: Instant, input: T) {
        let gap = now.as_nanos() - self.at.as_nanos();
        if gap > 0 {
            self.script.push((self.clock)(FuzzClock::Nanos(gap)));
            self.at = now;
        }
        self.script.push(input);
    }
}

#[derive(Default)]
struct Pipe {
    bytes: Vec<u8>,
    eof: bool,
    eof_seen: bool,
    /// Everything ever written, for the codec seeds.
    log: Vec<u8>,
}

impl Pipe {
    fn write(&mut self, frame: &[u8]) {
        if !self.eof {
            self.bytes.extend_from_slice(frame);
            self.log.extend_from_slice(frame);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Incumbent,
    Successor,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Drained,
    Sealed,
    SealProgress,
    SuccessorHello,
    SuccessorServes,
    SuccessorExits,
    IncumbentDies,
}

struct World {
    sc: Scenario,
    now: Instant,
    sup: Option<SupervisorHandoff>,
    sup_alive: bool,
    sup_frames: usize,
    inc: Option<IncumbentSession>,
    inc_alive: bool,
    /// The incumbent took a pass channel.
    inc_channel: bool,
    suc: Option<SuccessorSession>,
    suc_alive: bool,
    lock: Option<Holder>,
    lock_free_at: Option<Instant>,
    events: Vec<(Instant, Ev)>,
    s_o: Pipe,
    o_s: Pipe,
    s_n: Pipe,
    n_s: Pipe,
    rec_sup: Rec<SupervisorInput>,
    rec_inc: Rec<IncumbentInput>,
    rec_suc: Rec<SuccessorInput>,
}

/// What one handoff left behind.
struct Recorded {
    supervisor: Vec<SupervisorInput>,
    incumbent: Vec<IncumbentInput>,
    successor: Vec<SuccessorInput>,
    streams: [(&'static str, Vec<u8>); 4],
}

fn record(sc: Scenario) -> Recorded {
    let now = Instant::ZERO;
    let mut w = World {
        sc,
        now,
        sup: Some(SupervisorHandoff::new(
            now,
            SupervisorConfig::default(),
            SUPERVISOR_RANDOM,
            SUPERVISOR_STARTED_UNIX_MS,
        )),
        sup_alive: true,
        sup_frames: 0,
        inc: None,
        inc_alive: true,
        inc_channel: false,
        suc: None,
        suc_alive: false,
        lock: Some(Holder::Incumbent),
        lock_free_at: None,
        events: Vec::new(),
        s_o: Pipe::default(),
        o_s: Pipe::default(),
        s_n: Pipe::default(),
        n_s: Pipe::default(),
        rec_sup: Rec::new(SupervisorInput::Clock),
        rec_inc: Rec::new(IncumbentInput::Clock),
        rec_suc: Rec::new(SuccessorInput::Clock),
    };
    let mut settled = false;
    for _ in 0..100_000 {
        if w.step() {
            continue;
        }
        if !w.advance() {
            settled = true;
            break;
        }
    }
    assert!(settled, "scenario {} never settled", sc.name);
    Recorded {
        supervisor: w.rec_sup.script,
        incumbent: w.rec_inc.script,
        successor: w.rec_suc.script,
        streams: [
            ("supervisor-to-incumbent", w.s_o.log),
            ("incumbent-to-supervisor", w.o_s.log),
            ("supervisor-to-successor", w.s_n.log),
            ("successor-to-supervisor", w.n_s.log),
        ],
    }
}

/// An output of the supervisor, copied out of its borrow.
enum SupOut {
    Connect,
    Transmit(Side, Vec<u8>),
    Spawn,
    Signal(Signal),
    Disconnect(Side),
    Finished,
}

enum IncOut {
    Transmit(Vec<u8>),
    Drain,
    Seal,
    ReleaseLock,
    AcquireLock,
    Resume,
    PassChannel,
    Close,
    Finished,
}

enum SucOut {
    Transmit(Vec<u8>),
    AcquireLock,
    Start,
    Finished(bool),
}

impl World {
    fn step(&mut self) -> bool {
        self.pump_supervisor()
            | self.pump_incumbent()
            | self.pump_successor()
            | self.deliver()
            | self.fire_events()
    }

    fn schedule(&mut self, after_ms: u64, ev: Ev) {
        self.events
            .push((Instant::from_nanos(self.now.as_nanos() + after_ms * MS), ev));
    }

    fn lock_free(&self) -> bool {
        self.lock.is_none() && self.lock_free_at.is_none()
    }

    fn release(&mut self, holder: Holder, linger_ms: u64) {
        if self.lock == Some(holder) {
            if linger_ms == 0 {
                self.lock = None;
            } else {
                self.lock_free_at = Some(Instant::from_nanos(self.now.as_nanos() + linger_ms * MS));
            }
        }
    }

    /// Jumps the clock to the next deadline or event and fires what is
    /// due; false once nothing can ever happen again.
    fn advance(&mut self) -> bool {
        let mut next: Vec<Instant> = self.events.iter().map(|e| e.0).collect();
        next.extend(self.lock_free_at);
        if self.sup_alive
            && let Some(s) = &self.sup
            && !self.rec_sup.done
        {
            next.extend(s.poll_timeout());
        }
        if self.inc_alive
            && let Some(s) = &self.inc
            && !self.rec_inc.done
        {
            next.extend(s.poll_timeout());
        }
        if self.suc_alive
            && let Some(s) = &self.suc
            && !self.rec_suc.done
        {
            next.extend(s.poll_timeout());
        }
        let Some(t) = next.into_iter().min() else {
            return false;
        };
        self.now = self.now.max(t);
        let now = self.now;
        if self.lock_free_at.is_some_and(|t| t <= now) {
            self.lock_free_at = None;
            self.lock = None;
        }
        if self.sup_alive
            && let Some(s) = &mut self.sup
            && s.poll_timeout().is_some_and(|t| t <= now)
        {
            self.rec_sup
                .push(now, SupervisorInput::Clock(FuzzClock::Timeout));
            s.handle_timeout(now);
        }
        if self.inc_alive
            && let Some(s) = &mut self.inc
            && s.poll_timeout().is_some_and(|t| t <= now)
        {
            self.rec_inc
                .push(now, IncumbentInput::Clock(FuzzClock::Timeout));
            s.handle_timeout(now);
        }
        if self.suc_alive
            && let Some(s) = &mut self.suc
            && s.poll_timeout().is_some_and(|t| t <= now)
        {
            self.rec_suc
                .push(now, SuccessorInput::Clock(FuzzClock::Timeout));
            s.handle_timeout(now);
        }
        true
    }

    fn pump_supervisor(&mut self) -> bool {
        if !self.sup_alive {
            return false;
        }
        let Some(s) = self.sup.as_mut() else {
            return false;
        };
        let mut outs = Vec::new();
        while let Some(o) = s.poll_output() {
            outs.push(match o {
                SupervisorOutput::ConnectIncumbent => SupOut::Connect,
                // The channel end itself is not modelled: the fuzz targets
                // see frames only.
                SupervisorOutput::Transmit { to, frame }
                | SupervisorOutput::TransmitWithChannelEnd { to, frame } => {
                    SupOut::Transmit(to, frame.to_vec())
                }
                SupervisorOutput::SpawnSuccessor => SupOut::Spawn,
                SupervisorOutput::Signal(sig) => SupOut::Signal(sig),
                SupervisorOutput::Disconnect(p) => SupOut::Disconnect(p),
                SupervisorOutput::WriteJournal(_) | SupervisorOutput::ClearJournal => continue,
                SupervisorOutput::Finished(_) => SupOut::Finished,
            });
        }
        let did = !outs.is_empty();
        let now = self.now;
        for o in outs {
            if !self.sup_alive {
                break;
            }
            match o {
                SupOut::Connect => {
                    if self.sc.connect_fails {
                        self.rec_sup.push(now, SupervisorInput::ConnectFailed);
                        self.sup.as_mut().unwrap().handle_connect_failed(now);
                    } else {
                        let cfg = IncumbentConfig {
                            capabilities: offered(&self.sc),
                            ..IncumbentConfig::default()
                        };
                        self.inc = Some(IncumbentSession::new(
                            now,
                            cfg,
                            INCUMBENT_PID,
                            INCUMBENT_BUILD_ID,
                        ));
                        self.rec_inc.start(now);
                        self.rec_sup.push(now, SupervisorInput::Connected);
                        self.sup.as_mut().unwrap().handle_connected(now);
                    }
                }
                SupOut::Transmit(to, frame) => {
                    match to {
                        Side::Incumbent => self.s_o.write(&frame),
                        Side::Successor => self.s_n.write(&frame),
                    }
                    self.sup_frames += 1;
                    if self.sc.supervisor_dies_after == Some(self.sup_frames) {
                        // Its sockets close with it.
                        self.sup_alive = false;
                        self.s_o.eof = true;
                        self.s_n.eof = true;
                    }
                }
                SupOut::Spawn => {
                    if self.sc.spawn_fails {
                        self.rec_sup.push(now, SupervisorInput::SpawnFailed);
                        self.sup.as_mut().unwrap().handle_spawn_failed(now);
                    } else {
                        self.suc_alive = true;
                        self.rec_sup
                            .push(now, SupervisorInput::Spawned(SUCCESSOR_PID));
                        self.sup
                            .as_mut()
                            .unwrap()
                            .handle_spawned(now, SUCCESSOR_PID);
                        self.schedule(self.sc.startup_ms, Ev::SuccessorHello);
                    }
                }
                SupOut::Signal(sig) => {
                    if sig == Signal::Kill || !self.sc.ignores_term {
                        self.schedule(5, Ev::SuccessorExits);
                    }
                }
                SupOut::Disconnect(p) => match p {
                    Side::Incumbent => self.s_o.eof = true,
                    Side::Successor => self.s_n.eof = true,
                },
                SupOut::Finished => self.rec_sup.done = true,
            }
        }
        did
    }

    fn pump_incumbent(&mut self) -> bool {
        if !self.inc_alive {
            return false;
        }
        let Some(s) = self.inc.as_mut() else {
            return false;
        };
        let mut outs = Vec::new();
        while let Some(o) = s.poll_output() {
            outs.push(match o {
                IncumbentOutput::Transmit(f) => IncOut::Transmit(f.to_vec()),
                IncumbentOutput::Drain { .. } => IncOut::Drain,
                IncumbentOutput::Seal => IncOut::Seal,
                IncumbentOutput::ReleaseLock => IncOut::ReleaseLock,
                IncumbentOutput::AcquireLock => IncOut::AcquireLock,
                IncumbentOutput::Resume => IncOut::Resume,
                IncumbentOutput::PassChannel { .. } => IncOut::PassChannel,
                IncumbentOutput::Close => IncOut::Close,
                IncumbentOutput::Finished(_) => IncOut::Finished,
                // The seed world's supervisor never asks for listeners.
                IncumbentOutput::SendListeners { .. } => {
                    unreachable!("no ListenersRequest is sent")
                }
            });
        }
        let did = !outs.is_empty();
        let now = self.now;
        for o in outs {
            let sc = self.sc;
            match o {
                IncOut::Transmit(f) => self.o_s.write(&f),
                IncOut::Drain => self.schedule(sc.drain_ms, Ev::Drained),
                IncOut::Seal => {
                    if let Some(every) = sc.seal_progress_ms {
                        let mut at = every;
                        while at < sc.seal_ms {
                            self.schedule(at, Ev::SealProgress);
                            at += every;
                        }
                    }
                    self.schedule(sc.seal_ms, Ev::Sealed);
                }
                IncOut::ReleaseLock => {
                    self.release(Holder::Incumbent, 0);
                    if sc.incumbent_dies_after_seal {
                        self.schedule(1, Ev::IncumbentDies);
                    }
                }
                IncOut::AcquireLock => {
                    let free = self.lock_free();
                    let s = self.inc.as_mut().unwrap();
                    if free {
                        self.lock = Some(Holder::Incumbent);
                        self.rec_inc.push(now, IncumbentInput::LockAcquired);
                        s.handle_lock_acquired(now);
                    } else {
                        self.rec_inc.push(now, IncumbentInput::LockBusy);
                        s.handle_lock_busy(now);
                    }
                }
                IncOut::Resume => {
                    let s = self.inc.as_mut().unwrap();
                    if sc.resume_fails {
                        self.rec_inc.push(now, IncumbentInput::ResumeFailed);
                        s.handle_resume_failed(now);
                    } else {
                        self.rec_inc.push(now, IncumbentInput::Resumed);
                        s.handle_resumed(now);
                    }
                }
                IncOut::PassChannel => self.inc_channel = true,
                IncOut::Close => {
                    self.o_s.eof = true;
                    // Nothing more is read from the supervisor.
                    self.s_o.eof = true;
                    self.s_o.eof_seen = true;
                }
                IncOut::Finished => self.rec_inc.done = true,
            }
        }
        did
    }

    fn pump_successor(&mut self) -> bool {
        if !self.suc_alive {
            return false;
        }
        let Some(s) = self.suc.as_mut() else {
            return false;
        };
        let mut outs = Vec::new();
        while let Some(o) = s.poll_output() {
            outs.push(match o {
                SuccessorOutput::Transmit(f) => SucOut::Transmit(f.to_vec()),
                SuccessorOutput::AcquireLock => SucOut::AcquireLock,
                SuccessorOutput::Start => SucOut::Start,
                // The connections come on the channel, which the fuzz
                // targets do not see.
                SuccessorOutput::PassChannel { .. } => continue,
                SuccessorOutput::Finished(end) => {
                    SucOut::Finished(matches!(end, SuccessorEnd::Failed(_)))
                }
            });
        }
        let did = !outs.is_empty();
        let now = self.now;
        for o in outs {
            match o {
                SucOut::Transmit(f) => self.n_s.write(&f),
                SucOut::AcquireLock => {
                    let free = self.lock_free();
                    let s = self.suc.as_mut().unwrap();
                    if free {
                        self.lock = Some(Holder::Successor);
                        self.rec_suc.push(now, SuccessorInput::LockAcquired);
                        s.handle_lock_acquired(now);
                    } else {
                        self.rec_suc.push(now, SuccessorInput::LockBusy);
                        s.handle_lock_busy(now);
                    }
                }
                SucOut::Start => {
                    if !self.sc.never_ready {
                        self.schedule(self.sc.start_ms, Ev::SuccessorServes);
                    }
                }
                SucOut::Finished(failed) => {
                    self.rec_suc.done = true;
                    if failed {
                        self.schedule(0, Ev::SuccessorExits);
                    }
                }
            }
        }
        did
    }

    /// Feeds one read's worth of one pipe to its reader.
    fn deliver(&mut self) -> bool {
        let now = self.now;
        let chunk = if self.sc.chunk == 0 {
            usize::MAX
        } else {
            self.sc.chunk
        };
        // Supervisor to incumbent.
        if self.inc_alive
            && !self.rec_inc.done
            && let Some(s) = self.inc.as_mut()
        {
            let p = &mut self.s_o;
            if !p.bytes.is_empty() {
                let n = chunk.min(p.bytes.len());
                let used = s.handle_input(now, &p.bytes[..n]);
                self.rec_inc
                    .push(now, IncumbentInput::Bytes(Chunk(p.bytes[..used].to_vec())));
                p.bytes.drain(..used);
                return true;
            }
            if p.eof && !p.eof_seen {
                p.eof_seen = true;
                self.rec_inc.push(now, IncumbentInput::Closed);
                s.handle_closed(now);
                return true;
            }
        }
        // Supervisor to successor.
        if self.suc_alive
            && !self.rec_suc.done
            && let Some(s) = self.suc.as_mut()
        {
            let p = &mut self.s_n;
            if !p.bytes.is_empty() {
                let n = chunk.min(p.bytes.len());
                let used = s.handle_input(now, &p.bytes[..n]);
                self.rec_suc
                    .push(now, SuccessorInput::Bytes(Chunk(p.bytes[..used].to_vec())));
                p.bytes.drain(..used);
                return true;
            }
            if p.eof && !p.eof_seen {
                p.eof_seen = true;
                self.rec_suc.push(now, SuccessorInput::Closed);
                s.handle_closed(now);
                return true;
            }
        }
        // Both peers to the supervisor.
        if self.sup_alive
            && !self.rec_sup.done
            && let Some(s) = self.sup.as_mut()
        {
            for (peer, fp, p) in [
                (Side::Incumbent, FuzzPeer::Incumbent, &mut self.o_s),
                (Side::Successor, FuzzPeer::Successor, &mut self.n_s),
            ] {
                if !p.bytes.is_empty() {
                    let n = chunk.min(p.bytes.len());
                    let used = s.handle_input(now, peer, &p.bytes[..n]);
                    self.rec_sup.push(
                        now,
                        SupervisorInput::Bytes(fp, Chunk(p.bytes[..used].to_vec())),
                    );
                    p.bytes.drain(..used);
                    return true;
                }
                if p.eof && !p.eof_seen {
                    p.eof_seen = true;
                    self.rec_sup.push(now, SupervisorInput::Closed(fp));
                    s.handle_closed(now, peer);
                    return true;
                }
            }
        }
        false
    }

    fn fire_events(&mut self) -> bool {
        let now = self.now;
        let Some(i) = self.events.iter().position(|e| e.0 <= now) else {
            return false;
        };
        let (_, ev) = self.events.remove(i);
        let sc = self.sc;
        match ev {
            Ev::Drained | Ev::Sealed | Ev::SealProgress if !self.inc_alive => {}
            Ev::Drained => {
                let s = self.inc.as_mut().unwrap();
                if sc.drain_fails {
                    self.rec_inc.push(now, IncumbentInput::DrainFailed);
                    s.handle_drain_failed(now);
                } else {
                    // Passed connections are not left open.
                    let open_conns_remaining = if self.inc_channel { 0 } else { 3 };
                    if self.inc_channel {
                        self.rec_inc
                            .push(now, IncumbentInput::ConnectionsPassed { count: PASSED });
                        s.handle_connections_passed(now, PASSED);
                    }
                    let report = DrainReport {
                        open_conns_remaining,
                        accept_closed: true,
                    };
                    self.rec_inc.push(
                        now,
                        IncumbentInput::Drained {
                            open_conns_remaining,
                            accept_closed: true,
                        },
                    );
                    s.handle_drained(now, report);
                }
            }
            Ev::SealProgress => {
                let s = self.inc.as_mut().unwrap();
                self.rec_inc.push(
                    now,
                    IncumbentInput::SealProgress {
                        shards_sealed: 1,
                        shards_total: 4,
                        last_revision: 17,
                    },
                );
                s.handle_seal_progress(now, 1, 4, 17);
            }
            Ev::Sealed => {
                let s = self.inc.as_mut().unwrap();
                if sc.seal_fails {
                    self.rec_inc.push(
                        now,
                        IncumbentInput::SealFailed {
                            error: Chunk(b"disk full".to_vec()),
                            partial_state: Chunk(b"shard 2 of 4".to_vec()),
                        },
                    );
                    s.handle_seal_failed(
                        now,
                        SealFailure {
                            error: "disk full",
                            partial_state: "shard 2 of 4",
                        },
                    );
                } else {
                    self.rec_inc.push(
                        now,
                        IncumbentInput::Sealed {
                            revisions: REVISIONS.to_vec(),
                            fingerprint: FINGERPRINT,
                        },
                    );
                    s.handle_sealed(
                        now,
                        SealReportRef {
                            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
                            data_dir_fingerprint: [FINGERPRINT; 32],
                        },
                    );
                }
            }
            Ev::IncumbentDies => {
                self.inc_alive = false;
                self.o_s.eof = true;
                self.rec_inc.done = true;
            }
            Ev::SuccessorHello => {
                if !self.suc_alive {
                } else if sc.crash_before_hello {
                    self.schedule(0, Ev::SuccessorExits);
                } else {
                    let cfg = SuccessorConfig {
                        capabilities: offered(&sc),
                        ..SuccessorConfig::default()
                    };
                    self.suc = Some(SuccessorSession::new(
                        now,
                        cfg,
                        SUCCESSOR_PID,
                        SUCCESSOR_BUILD_ID,
                    ));
                    self.rec_suc.start(now);
                }
            }
            Ev::SuccessorServes => {
                if !self.suc_alive {
                } else if sc.crash_after_begin {
                    self.schedule(0, Ev::SuccessorExits);
                } else {
                    let s = self.suc.as_mut().unwrap();
                    if sc.start_fails {
                        self.rec_suc.push(now, SuccessorInput::StartFailed);
                        s.handle_start_failed(now);
                    } else {
                        let listening = ["127.0.0.1:7000", "[::1]:7000"];
                        self.rec_suc.push(
                            now,
                            SuccessorInput::Ready {
                                listening_on: listening
                                    .iter()
                                    .map(|l| Chunk(l.as_bytes().to_vec()))
                                    .collect(),
                                healthz_ok: true,
                                revisions: REVISIONS.to_vec(),
                            },
                        );
                        s.handle_ready(
                            now,
                            ReadyReportRef {
                                listening_on: Strings::from_slice(&listening),
                                healthz_ok: true,
                                advertised_revision_per_shard: Revisions::from_slice(&REVISIONS),
                            },
                        );
                    }
                }
            }
            Ev::SuccessorExits => {
                if self.suc_alive {
                    self.suc_alive = false;
                    self.rec_suc.done = true;
                    self.n_s.eof = true;
                    self.release(Holder::Successor, sc.lock_linger_ms);
                    if self.sup_alive
                        && !self.rec_sup.done
                        && let Some(s) = self.sup.as_mut()
                    {
                        self.rec_sup.push(now, SupervisorInput::SuccessorExited);
                        s.handle_successor_exited(now);
                    }
                }
            }
        }
        true
    }
}

fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0; 64 * 1024];
    let n = encode_frame(1, msg, &mut out).unwrap();
    out.truncate(n);
    out
}

/// One message of each of the fourteen kinds.
fn all_messages() -> Vec<Vec<u8>> {
    let id = HandoffId::from_random_bytes(SUPERVISOR_RANDOM);
    let listening = ["127.0.0.1:7000", "[::1]:7000"];
    let msgs = [
        Message::Hello {
            role: Side::Successor,
            pid: SUCCESSOR_PID,
            build_id: SUCCESSOR_BUILD_ID,
            proto_min: 1,
            proto_max: 1,
            capabilities: Capabilities::PROBATION,
        },
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        Message::PrepareHandoff {
            handoff_id: id,
            successor_pid: SUCCESSOR_PID,
            deadline_ms: 59_000,
            drain_grace_ms: 25_000,
        },
        Message::Drained {
            open_conns_remaining: 2,
            accept_closed: true,
        },
        Message::SealRequest { handoff_id: id },
        Message::SealProgress {
            shards_sealed: 1,
            shards_total: 4,
            last_revision: 300,
        },
        Message::SealComplete {
            handoff_id: id,
            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
            data_dir_fingerprint: [FINGERPRINT; 32],
        },
        Message::SealFailed {
            handoff_id: id,
            error: "disk full",
            partial_state: "shard 2 of 4",
        },
        Message::Begin { handoff_id: id },
        Message::Ready {
            handoff_id: id,
            listening_on: Strings::from_slice(&listening),
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::from_slice(&REVISIONS),
        },
        Message::Commit { handoff_id: id },
        Message::Abort {
            handoff_id: id,
            reason: "seal failed",
        },
        Message::ResumeAfterAbort { handoff_id: id },
        Message::Heartbeat { ts_ms: u64::MAX },
    ];
    msgs.iter().map(frame).collect()
}

/// The first variant index that names no message: past the fourteen and
/// every extension.
const UNKNOWN_VARIANT: u8 = (MessageKind::ALL.len() + MessageKind::EXTENSIONS.len()) as u8;

/// The messages that travel only on the pass channel, which no recorded
/// stream carries: their payloads seed the codec target.
fn channel_messages() -> Vec<Vec<u8>> {
    let id = HandoffId::from_random_bytes(SUPERVISOR_RANDOM);
    [
        Message::PassedConnection {
            handoff_id: id,
            state: b"GET k\r\nSET k 5\r\nhel",
        },
        Message::PassDone {
            handoff_id: id,
            count: PASSED,
        },
        Message::ConnectionsTaken { handoff_id: id },
    ]
    .iter()
    .map(frame)
    .collect()
}

fn name_of(frame: &[u8]) -> &'static str {
    Message::decode(&frame[6..]).unwrap().kind().name()
}

/// Hand-written hostile streams: lengths past every limit, garbage, and
/// frames cut short or padded.
fn hostile_streams() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    v.push(("length-2-mib", (2u32 << 20).to_le_bytes().to_vec()));
    v.push((
        "length-1-mib-plus-1",
        ((1u32 << 20) + 1).to_le_bytes().to_vec(),
    ));
    let mut at_limit = (1u32 << 20).to_le_bytes().to_vec();
    at_limit.extend_from_slice(&[1, 0, 13, 1]);
    v.push(("length-1-mib-announced", at_limit));
    v.push(("length-4097", 4097u32.to_le_bytes().to_vec()));
    v.push(("length-1", [1, 0, 0, 0, 1, 0].to_vec()));
    v.push(("length-0", [0, 0, 0, 0].to_vec()));
    v.push((
        "http-garbage",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ));
    v.push(("version-only", [2, 0, 0, 0, 1, 0].to_vec()));
    v.push(("trailing-byte", [5, 0, 0, 0, 1, 0, 13, 1, 0].to_vec()));
    v.push((
        "unknown-variant",
        [3, 0, 0, 0, 1, 0, UNKNOWN_VARIANT].to_vec(),
    ));
    v.push((
        "overlong-varint",
        [
            13, 0, 0, 0, 1, 0, 13, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
        ]
        .to_vec(),
    ));
    let mut cut = all_messages()[9].clone();
    cut.truncate(cut.len() - 3);
    v.push(("ready-cut-short", cut));
    // A frame exactly filling the default 4 KiB buffer, then one a byte
    // past it.
    for (name, reason_len) in [
        ("frame-4096", 4096 - 2 - 1 - 17 - 2),
        ("frame-4097", 4097 - 2 - 1 - 17 - 2),
    ] {
        let reason = "r".repeat(reason_len);
        let f = frame(&Message::Abort {
            handoff_id: HandoffId::from_bytes([7; 16]),
            reason: &reason,
        });
        v.push((name, f));
    }
    v
}

/// Message payloads that do not decode, one per way of failing.
fn malformed_payloads() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", vec![]),
        ("unknown-variant", vec![UNKNOWN_VARIANT]),
        ("variant-overlong", vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        ("bad-id-length", vec![4, 15, 0]),
        ("bad-bool", vec![3, 1, 2]),
        ("bad-role", vec![0, 2, 1, 0, 1, 1, 0]),
        ("invalid-utf8", {
            let mut p = vec![11, 16];
            p.extend_from_slice(&[9; 16]);
            p.extend_from_slice(&[2, 0xc3, 0x28]);
            p
        }),
        ("trailing-bytes", vec![13, 1, 0]),
        (
            "truncated-list",
            vec![6, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 1],
        ),
        ("u16-overflow", vec![1, 0xff, 0xff, 0x04]),
    ]
}

fn journal_records() -> Vec<(&'static str, Vec<u8>)> {
    let id = HandoffId::from_random_bytes(SUPERVISOR_RANDOM);
    [
        (
            "journal-negotiating",
            JournalPhase::Negotiating,
            Some(SUCCESSOR_PID),
        ),
        ("journal-resuming", JournalPhase::ResumingAfterAbort, None),
    ]
    .into_iter()
    .map(|(name, phase, successor_pid)| {
        let mut buf = [0; JournalRecord::MAX_LEN];
        let n = JournalRecord {
            handoff_id: id,
            phase,
            incumbent_pid: INCUMBENT_PID,
            successor_pid,
            started_at_unix_ms: SUPERVISOR_STARTED_UNIX_MS,
        }
        .encode(&mut buf);
        (name, buf[..n].to_vec())
    })
    .collect()
}

/// Every payload in a stream of whole frames.
fn payloads(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = stream;
    while rest.len() >= 6 {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        if rest.len() < 4 + len {
            break;
        }
        out.push(rest[6..4 + len].to_vec());
        rest = &rest[4 + len..];
    }
    out
}

/// Scripts of structured frames rather than recorded bytes: what a
/// mutation of a message field starts from.
fn structured_scripts() -> Vec<Seed> {
    let id = FuzzId::Current;
    let incumbent = vec![
        IncumbentInput::Frame(FuzzMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        }),
        IncumbentInput::Frame(FuzzMessage::PrepareHandoff {
            handoff_id: id,
            successor_pid: SUCCESSOR_PID,
            deadline_ms: 60_000,
            drain_grace_ms: 25_000,
        }),
        IncumbentInput::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        },
        IncumbentInput::Frame(FuzzMessage::SealRequest { handoff_id: id }),
        IncumbentInput::Clock(FuzzClock::TimeoutAtDeadline),
        IncumbentInput::Sealed {
            revisions: vec![1, 2],
            fingerprint: 9,
        },
        IncumbentInput::Frame(FuzzMessage::ResumeAfterAbort { handoff_id: id }),
        IncumbentInput::LockBusy,
        IncumbentInput::Clock(FuzzClock::TimeoutAtDeadline),
        IncumbentInput::LockAcquired,
        IncumbentInput::Resumed,
    ];
    let successor = vec![
        SuccessorInput::Frame(FuzzMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        }),
        SuccessorInput::Frame(FuzzMessage::Heartbeat { ts_ms: 5 }),
        SuccessorInput::Frame(FuzzMessage::Begin { handoff_id: id }),
        SuccessorInput::LockBusy,
        SuccessorInput::Clock(FuzzClock::TimeoutAtDeadline),
        SuccessorInput::LockAcquired,
        SuccessorInput::Clock(FuzzClock::Seconds(3)),
        SuccessorInput::Clock(FuzzClock::Timeout),
        SuccessorInput::Ready {
            listening_on: vec![Chunk(b"0.0.0.0:80".to_vec())],
            healthz_ok: false,
            revisions: vec![],
        },
    ];
    let o = FuzzPeer::Incumbent;
    let n = FuzzPeer::Successor;
    let supervisor = vec![
        SupervisorInput::Connected,
        SupervisorInput::Frame(
            o,
            FuzzMessage::Hello {
                successor: false,
                pid: FuzzPid::Other(INCUMBENT_PID),
                build_id: Chunk(b"old".to_vec()),
                proto_min: 1,
                proto_max: 3,
                capabilities: 0,
            },
        ),
        SupervisorInput::Spawned(SUCCESSOR_PID),
        SupervisorInput::Frame(
            n,
            FuzzMessage::Hello {
                successor: true,
                pid: FuzzPid::Expected,
                build_id: Chunk(b"new".to_vec()),
                proto_min: 1,
                proto_max: 1,
                capabilities: 0,
            },
        ),
        SupervisorInput::Frame(
            o,
            FuzzMessage::Drained {
                open_conns_remaining: 0,
                accept_closed: true,
            },
        ),
        SupervisorInput::Frame(
            o,
            FuzzMessage::SealComplete {
                handoff_id: id,
                last_revision_per_shard: vec![7],
                data_dir_fingerprint: 1,
            },
        ),
        SupervisorInput::Clock(FuzzClock::TimeoutAtDeadline),
        SupervisorInput::Clock(FuzzClock::TimeoutAtDeadline),
        SupervisorInput::Clock(FuzzClock::TimeoutAtDeadline),
        SupervisorInput::SuccessorExited,
    ];
    // The control socket path names another process's socket, then no
    // live socket, then the incumbent's: each miss is retried.
    let path_taken_late = vec![
        SupervisorInput::ConnectRefused,
        SupervisorInput::Clock(FuzzClock::Timeout),
        SupervisorInput::ConnectedTo(FuzzPid::Other(1)),
        SupervisorInput::Clock(FuzzClock::Timeout),
        SupervisorInput::ConnectedTo(FuzzPid::Expected),
        SupervisorInput::Frame(
            o,
            FuzzMessage::Hello {
                successor: false,
                pid: FuzzPid::Expected,
                build_id: Chunk(b"old".to_vec()),
                proto_min: 1,
                proto_max: 1,
                capabilities: 0,
            },
        ),
        SupervisorInput::Spawned(SUCCESSOR_PID),
    ];
    // Nothing listens until past the hello timeout: the handoff gives up.
    let path_never_taken = vec![
        SupervisorInput::ConnectRefused,
        SupervisorInput::Clock(FuzzClock::Seconds(6)),
        SupervisorInput::Clock(FuzzClock::Timeout),
        SupervisorInput::ConnectedTo(FuzzPid::Other(1)),
    ];
    let mut seeds = vec![
        (
            "supervisor",
            "structured-path-taken-late".into(),
            unparse_script(&path_taken_late),
        ),
        (
            "supervisor",
            "structured-path-never-taken".into(),
            unparse_script(&path_never_taken),
        ),
        (
            "incumbent",
            "structured-seal-then-resume".into(),
            unparse_script(&incumbent),
        ),
        (
            "successor",
            "structured-busy-lock-then-ready".into(),
            unparse_script(&successor),
        ),
        (
            "supervisor",
            "structured-ready-timeout".into(),
            unparse_script(&supervisor),
        ),
    ];
    seeds.extend(passing_scripts());
    seeds
}

/// Connection passing written frame by frame: a supervisor whose peers
/// both offer it hears the count twice (the second is a violation); the
/// same with no peer offering it (the first is); an incumbent takes the
/// channel, reports a count before and during the drain; a successor is
/// sent the channel twice (the second is a violation).
fn passing_scripts() -> Vec<Seed> {
    let id = FuzzId::Current;
    let hello = |successor: bool, capabilities: u64| FuzzMessage::Hello {
        successor,
        pid: FuzzPid::Expected,
        build_id: Chunk(b"b".to_vec()),
        proto_min: 1,
        proto_max: 1,
        capabilities,
    };
    let count = SupervisorInput::Frame(
        FuzzPeer::Incumbent,
        FuzzMessage::ConnectionsPassed {
            handoff_id: id,
            count: PASSED,
        },
    );
    let supervisor = |capabilities: u64, counts: usize| {
        let mut v = vec![
            SupervisorInput::Connected,
            SupervisorInput::Frame(FuzzPeer::Incumbent, hello(false, capabilities)),
            SupervisorInput::Spawned(SUCCESSOR_PID),
            SupervisorInput::Frame(FuzzPeer::Successor, hello(true, capabilities)),
        ];
        v.extend(std::iter::repeat_n(count.clone(), counts));
        v.push(SupervisorInput::Clock(FuzzClock::TimeoutAtDeadline));
        v.push(SupervisorInput::Clock(FuzzClock::TimeoutAtDeadline));
        v.push(SupervisorInput::SuccessorExited);
        v
    };
    let pass = Capabilities::PASS_CONNECTIONS.bits();
    let incumbent = vec![
        IncumbentInput::Frame(FuzzMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        }),
        IncumbentInput::ConnectionsPassed { count: 1 },
        IncumbentInput::Frame(FuzzMessage::PassChannel { handoff_id: id }),
        IncumbentInput::Frame(FuzzMessage::PrepareHandoff {
            handoff_id: id,
            successor_pid: SUCCESSOR_PID,
            deadline_ms: 60_000,
            drain_grace_ms: 25_000,
        }),
        IncumbentInput::ConnectionsPassed { count: PASSED },
        IncumbentInput::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        },
        IncumbentInput::ConnectionsPassed { count: PASSED },
        IncumbentInput::Frame(FuzzMessage::SealRequest { handoff_id: id }),
    ];
    let successor = vec![
        SuccessorInput::Frame(FuzzMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        }),
        SuccessorInput::Frame(FuzzMessage::PassChannel { handoff_id: id }),
        SuccessorInput::Frame(FuzzMessage::PassChannel { handoff_id: id }),
    ];
    vec![
        (
            "supervisor",
            "structured-count-twice".into(),
            unparse_script(&supervisor(pass, 2)),
        ),
        (
            "supervisor",
            "structured-count-without-channel".into(),
            unparse_script(&supervisor(0, 1)),
        ),
        (
            "incumbent",
            "structured-pass-channel-and-count".into(),
            unparse_script(&incumbent),
        ),
        (
            "successor",
            "structured-pass-channel-twice".into(),
            unparse_script(&successor),
        ),
    ]
}

/// Every seed, named after what it holds.
pub(crate) fn seeds() -> Vec<Seed> {
    let mut seeds: Vec<Seed> = Vec::new();
    let mut payload_set = BTreeSet::new();
    let frames = all_messages();
    let decoders = [
        DecoderChoice::Default,
        DecoderChoice::Growable,
        DecoderChoice::Small,
        DecoderChoice::GrowableWithLimit(64),
    ];
    for (i, f) in frames.iter().enumerate() {
        let header = FrameDecoderInput {
            decoder: decoders[i % decoders.len()],
            pieces: vec![(i as u16) % 7, 0x8003],
        };
        seeds.push((
            "frame_decoder",
            format!("message-{:02}-{}", i, name_of(f)),
            header.with_stream(f),
        ));
        payload_set.insert(f[6..].to_vec());
    }
    let everything: Vec<u8> = frames.concat();
    for (name, decoder) in [
        ("all-14-messages", DecoderChoice::Default),
        ("all-14-messages-small-buffer", DecoderChoice::Small),
        (
            "all-14-messages-limit-40",
            DecoderChoice::DefaultWithLimit(40),
        ),
    ] {
        let header = FrameDecoderInput {
            decoder,
            pieces: vec![1, 2, 5, 0x800a],
        };
        seeds.push((
            "frame_decoder",
            name.into(),
            header.with_stream(&everything),
        ));
    }
    for (name, stream) in hostile_streams() {
        for (suffix, decoder) in [
            ("", DecoderChoice::Default),
            ("-growable", DecoderChoice::Growable),
        ] {
            let header = FrameDecoderInput {
                decoder,
                pieces: vec![2],
            };
            seeds.push((
                "frame_decoder",
                format!("{name}{suffix}"),
                header.with_stream(&stream),
            ));
        }
    }
    for sc in SCENARIOS {
        let r = record(*sc);
        for (target, script) in [
            ("supervisor", unparse_script(&r.supervisor)),
            ("incumbent", unparse_script(&r.incumbent)),
            ("successor", unparse_script(&r.successor)),
        ] {
            if !script.is_empty() {
                seeds.push((target, sc.name.into(), script));
            }
        }
        for (stream_name, stream) in &r.streams {
            for p in payloads(stream) {
                payload_set.insert(p);
            }
            // The codec targets get the streams of the happy path and the
            // aborts after the seal: the most varied traffic.
            if stream.is_empty()
                || !matches!(
                    sc.name,
                    "happy"
                        | "successor-start-fails"
                        | "seal-fails"
                        | "supervisor-dies-after-begin"
                )
            {
                continue;
            }
            let header = FrameDecoderInput {
                decoder: DecoderChoice::Default,
                pieces: vec![7, 1, 300, 0x8002],
            };
            seeds.push((
                "frame_decoder",
                format!("{}-{stream_name}", sc.name),
                header.with_stream(stream),
            ));
        }
    }
    for f in channel_messages() {
        payload_set.insert(f[6..].to_vec());
    }
    seeds.extend(structured_scripts());
    for (name, stream) in hostile_streams().into_iter().take(8) {
        seeds.push((
            "incumbent",
            format!("hostile-{name}"),
            unparse_script(&[
                IncumbentInput::Frame(FuzzMessage::HelloAck {
                    proto_version_chosen: 1,
                    handoff_id: FuzzId::Current,
                }),
                IncumbentInput::Bytes(Chunk(stream.clone())),
            ]),
        ));
        seeds.push((
            "successor",
            format!("hostile-{name}"),
            unparse_script(&[SuccessorInput::Bytes(Chunk(stream.clone()))]),
        ));
        seeds.push((
            "supervisor",
            format!("hostile-{name}"),
            unparse_script(&[
                SupervisorInput::Connected,
                SupervisorInput::Bytes(FuzzPeer::Incumbent, Chunk(stream)),
            ]),
        ));
    }
    // Two of each kind are enough; heartbeats alone differ by the dozen.
    let mut per_kind = std::collections::BTreeMap::<&str, usize>::new();
    for p in payload_set {
        let kind = Message::decode(&p).unwrap().kind().name();
        let n = per_kind.entry(kind).or_default();
        *n += 1;
        if *n <= 2 {
            seeds.push(("message_roundtrip", format!("payload-{kind}-{n}"), p));
        }
    }
    for (name, p) in malformed_payloads().into_iter().chain(journal_records()) {
        seeds.push(("message_roundtrip", name.into(), p));
    }
    seeds
}

/// The scripts of every scenario, for the round trip through `arbitrary`.
pub(crate) fn scripts() -> (
    Vec<SupervisorInput>,
    Vec<IncumbentInput>,
    Vec<SuccessorInput>,
) {
    let (mut s, mut i, mut n) = (Vec::new(), Vec::new(), Vec::new());
    for sc in SCENARIOS {
        let r = record(*sc);
        s.extend(r.supervisor);
        i.extend(r.incumbent);
        n.extend(r.successor);
    }
    (s, i, n)
}
