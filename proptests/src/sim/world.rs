//! The simulated world: the supervisor process with its monitor, daemon
//! processes that are successors and then incumbents, the connections
//! between them, the data-dir lock, the disk, client writes, and a virtual
//! clock.
//!
//! Each step, the scheduler lists every action that could happen now (a
//! process carrying out its machine's next output, reading a chunk, firing a
//! due timer or hook, the kernel freeing a dead process's lock, a client
//! write arriving) and picks one at random, so every interleaving of the
//! processes can occur. Only when nothing can happen does the clock jump to
//! the next instant anything is due. A process with outputs still queued
//! takes no input until they are carried out: that is the calling contract
//! every adapter keeps.
//!
//! The daemon is deliberately simple and correct: it acknowledges a client
//! write only while it holds the lock, accepts and has its writer open, and
//! an acknowledged write is durable (as with a write-ahead log); sealing
//! flushes and closes the writer; a successor and a restarted daemon open
//! the state on disk; an incumbent that resumes after a seal reopens it.
//! So any lost write, second writer or early lock release is the machines'
//! doing, or a planted [`Sabotage`].
//!
//! The supervisor process behaves as the `handoff-supervisor` binary does
//! around the machine: its monitor starts a daemon cold when the one it
//! watches has died outside a handoff (pausing 100 ms doubling to 10 s while
//! starts keep failing); after its own death the init system restarts it,
//! and it reads and deletes the journal, then starts a daemon cold. Its
//! children outlive it unless the case's init system stops the whole
//! service with it (systemd's default): half the cases each way.

use std::collections::VecDeque;
use std::time::Duration;

use handoff_core::{
    AbortReason, DrainReport, FrameDecoder, IncumbentConfig, IncumbentOutput, IncumbentSession,
    Instant, JournalRecord, Peer, ReadyReport, Revisions, SealFailure, SealReport, SessionEnd,
    Signal, Strings, SuccessorConfig, SuccessorEnd, SuccessorOutput, SuccessorSession,
    SuccessorStep, SupervisorHandoff, SupervisorOutput,
};

use super::net::{Conn, ConnId, Readable};
use super::plan::{IncumbentBehaviour, Plan, SuccessorBehaviour, Trigger};
use super::{CrashPoint, Options, Role, Sabotage, Stats};
use crate::rng::Rng;

type Sup = SupervisorHandoff<Vec<u8>>;
type Inc = IncumbentSession<Vec<u8>>;
type Suc = SuccessorSession<Vec<u8>>;

/// A process id in the simulation.
pub(crate) type Pid = u32;

const FIRST_PID: Pid = 100;
/// A lying successor announces its pid plus this.
const LIE_OFFSET: u32 = 50_000;
/// A cold-started daemon's start-up before it tries the lock.
const COLD_STARTUP_MAX_MS: u64 = 300;
/// A cold-started daemon refuses a lock held by a live process at once, and
/// waits this long for one held by a dead process to be freed, trying this
/// often (`DataDirLock::acquire_or_break_stale` in `handoff-std`).
const COLD_LOCK_WINDOW: Duration = Duration::from_secs(1);
const COLD_LOCK_RETRY: Duration = Duration::from_millis(100);
/// The supervisor binary's restart pacing (`supervisor/src/monitor.rs`).
const QUICK_DEATH: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A committed incumbent finishes its last connections within this.
const RETIRE_MAX_MS: u64 = 2_000;
/// A handoff, with every fault, must settle within this much virtual time.
const SETTLE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// And within this many actions.
const ACTION_LIMIT: u32 = 500_000;
/// A machine asked for the same instant this often without moving on.
const SAME_INSTANT_TIMEOUTS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Drain,
    Seal,
    Progress,
    Resume,
}

/// A daemon process: a successor first (if spawned for a handoff), then an
/// incumbent serving the control socket; or an incumbent from a cold start.
struct Daemon {
    pid: Pid,
    alive: bool,
    /// The supervisor generation that spawned it.
    parent: u32,
    started: Instant,
    died: Option<Instant>,
    ib: IncumbentBehaviour,
    sb: SuccessorBehaviour,
    holds_lock: bool,
    /// The open writer state: the ids of the writes it holds.
    writer: Option<Vec<u32>>,
    accepting: bool,
    /// It serves the control socket.
    control: bool,
    /// Its machine may have outputs queued.
    dirty: bool,
    inc: Option<(ConnId, Inc)>,
    backlog: VecDeque<ConnId>,
    hooks: Vec<(Instant, Hook)>,
    /// The seal hook of the current session succeeded.
    sealed_ok: bool,
    suc: Option<Suc>,
    suc_conn: Option<ConnId>,
    hello_at: Option<Instant>,
    serve_at: Option<Instant>,
    hung: bool,
    /// The state it would open if it opened it now: only a sabotaged
    /// successor keeps a stale copy.
    stale_disk: Option<Vec<u32>>,
    cold_at: Option<Instant>,
    cold_give_up: Instant,
    retire_at: Option<Instant>,
    exit_report_at: Option<Instant>,
    exit_reported: bool,
    same_instant_timeouts: (Instant, u32),
}

impl Daemon {
    fn new(pid: Pid, parent: u32, now: Instant) -> Self {
        Daemon {
            pid,
            alive: true,
            parent,
            started: now,
            died: None,
            ib: IncumbentBehaviour::healthy(),
            sb: SuccessorBehaviour::healthy(),
            holds_lock: false,
            writer: None,
            accepting: false,
            control: false,
            dirty: false,
            inc: None,
            backlog: VecDeque::new(),
            hooks: Vec::new(),
            sealed_ok: false,
            suc: None,
            suc_conn: None,
            hello_at: None,
            serve_at: None,
            hung: false,
            stale_disk: None,
            cold_at: None,
            cold_give_up: now,
            retire_at: None,
            exit_report_at: None,
            exit_reported: false,
            same_instant_timeouts: (Instant::ZERO, 0),
        }
    }

    /// Serving as the incumbent: lock, writer, accepting, not retiring.
    fn serving(&self) -> bool {
        self.alive
            && self.holds_lock
            && self.writer.is_some()
            && self.accepting
            && self.retire_at.is_none()
    }

    fn timer(&self) -> Option<Instant> {
        let inc = self.inc.as_ref().and_then(|(_, m)| m.poll_timeout());
        let suc = if self.hung {
            None
        } else {
            self.suc.as_ref().and_then(Suc::poll_timeout)
        };
        earliest(inc, suc)
    }

    fn next_hook(&self) -> Option<Instant> {
        self.hooks.iter().map(|h| h.0).min()
    }

    /// What it is doing, for crash points.
    fn step_name(&self) -> String {
        if let Some((_, m)) = &self.inc {
            return format!("{:?}", m.step());
        }
        if let Some(m) = &self.suc {
            return format!("{:?}", m.step());
        }
        if self.hello_at.is_some() {
            "StartingUp".into()
        } else if self.sb.never_hello && !self.control {
            "StartUpNeverEnds".into()
        } else if self.retire_at.is_some() {
            "Retiring".into()
        } else if self.serving() {
            "ServingWithoutSession".into()
        } else {
            "Other".into()
        }
    }
}

/// A cold start the supervisor is waiting on.
#[derive(Clone, Copy, Debug)]
struct Cold {
    /// For a restarted supervisor (its own start-up), not its monitor.
    at_restart: bool,
    due: Instant,
    pid: Option<Pid>,
    backoff: Duration,
}

/// The supervisor's one handoff in flight.
struct Run {
    m: Sup,
    dirty: bool,
    o_conn: Option<ConnId>,
    n_conn: Option<ConnId>,
    n_pid: Option<Pid>,
    finished: bool,
    journal_failure_reported: bool,
    same_instant_timeouts: (Instant, u32),
}

impl Run {
    fn conn(&self, peer: Peer) -> Option<ConnId> {
        match peer {
            Peer::Incumbent => self.o_conn,
            Peer::Successor => self.n_conn,
        }
    }
}

/// The supervisor process: its handoff and its monitor.
struct Supervisor {
    generation: u32,
    alive: bool,
    /// A restarted supervisor's cold start found a daemon of its
    /// predecessor serving, so the binary reported it and exited. The init
    /// system restarts it again and again, each start failing the same way
    /// while that daemon serves; the simulation parks it instead and
    /// restarts it once no daemon serves.
    parked: bool,
    frozen_until: Option<Instant>,
    /// Frozen for good: it never acts again, and its sockets stay open.
    frozen_for_good: bool,
    killed_at_thaw: bool,
    restart_at: Option<Instant>,
    /// The daemon it watches (the service's `incumbent`).
    tracked: Option<Pid>,
    run: Option<Run>,
    cold: Option<Cold>,
}

/// The supervisor's final word on a handoff.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    result: Result<(), AbortReason>,
}

/// Bookkeeping of the handoff in progress.
struct Ctx {
    plan: Plan,
    actions: u32,
    frames: [u32; 3],
    o_pid: Pid,
    n_pid: Option<Pid>,
    /// The planned crashes that struck.
    crashed: Vec<Role>,
    froze: bool,
    outcome: Option<Outcome>,
}

/// A lock table with one lock: the data-dir `flock`.
#[derive(Debug, Default)]
struct Lock {
    holder: Option<Pid>,
    /// A dead holder's FD closes at this instant.
    free_at: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
enum Act {
    SupPump,
    SupRead(Peer),
    SupTimeout,
    SupExitReport,
    SupThaw,
    SupMonitor,
    SupCold,
    SupRestart,
    SupUnpark,
    Pump(Pid),
    Read(Pid),
    Timeout(Pid),
    Hook(Pid),
    Hello(Pid),
    Serve(Pid),
    ColdTry(Pid),
    Retire(Pid),
    Accept(Pid),
    FreeLock,
    ClientWrite,
}

// Outputs copied out of the machines: an output borrows its machine, and
// carrying it out needs the whole world.
enum SupOut {
    Connect,
    Transmit(Peer, Vec<u8>),
    Spawn,
    Signal(Signal),
    Disconnect(Peer),
    Journal(JournalRecord),
    ClearJournal,
    Finished(Outcome),
}

enum IncOut {
    Transmit(Vec<u8>),
    Drain,
    Seal,
    ReleaseLock,
    AcquireLock,
    Resume,
    Close,
    Finished(SessionEnd),
}

enum SucOut {
    Transmit(Vec<u8>),
    AcquireLock,
    Start,
    Finished(SuccessorEnd),
}

type Res = Result<(), String>;

/// The whole simulated system.
pub(crate) struct World {
    now: Instant,
    rng: Rng,
    options: Options,
    trace: Vec<String>,
    stats: Stats,
    daemons: Vec<Daemon>,
    conns: Vec<Conn>,
    sup: Supervisor,
    lock: Lock,
    /// The daemon the control socket path names.
    control_owner: Option<Pid>,
    /// Durable state: every acknowledged write, in order.
    disk: Vec<u32>,
    acked: Vec<u32>,
    next_write: u32,
    pending_writes: VecDeque<Instant>,
    journal: Option<JournalRecord>,
    ctx: Option<Ctx>,
    started: Instant,
    /// The init system stops every process of the service when the
    /// supervisor dies (systemd's default `KillMode=control-group`);
    /// otherwise the daemons outlive it as orphans.
    init_kills_orphans: bool,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

fn next_backoff(prev: Duration) -> Duration {
    if prev.is_zero() {
        FIRST_BACKOFF
    } else {
        (prev * 2).min(MAX_BACKOFF)
    }
}

/// The message a frame carries, for the trace.
fn frame_name(frame: &[u8]) -> String {
    let mut dec: FrameDecoder<Vec<u8>> = FrameDecoder::new();
    match dec.decode(frame).1 {
        Ok(Some(f)) => format!("{:?}", f.message),
        Ok(None) => "a partial frame".into(),
        Err(e) => format!("a bad frame ({e})"),
    }
}

fn reason_name(reason: &AbortReason) -> String {
    let text = format!("{reason:?}");
    let end = text.find([' ', '{', '(']).unwrap_or(text.len());
    let mut name = text[..end].to_string();
    // The step matters for the reasons that carry one.
    if let Some(i) = text.find("step: ") {
        let rest = &text[i + 6..];
        let e = rest.find([' ', '}', ',']).unwrap_or(rest.len());
        name.push('@');
        name.push_str(&rest[..e]);
    }
    name
}

impl World {
    /// A serving incumbent, cold-started by a live supervisor.
    pub(crate) fn new(mut rng: Rng, options: Options) -> Self {
        let now = Instant::from_millis(1_000);
        let init_kills_orphans = rng.chance(500);
        let mut w = World {
            now,
            rng,
            options,
            trace: Vec::new(),
            stats: Stats::default(),
            daemons: Vec::new(),
            conns: Vec::new(),
            sup: Supervisor {
                generation: 1,
                alive: true,
                parked: false,
                frozen_until: None,
                frozen_for_good: false,
                killed_at_thaw: false,
                restart_at: None,
                tracked: None,
                run: None,
                cold: None,
            },
            lock: Lock::default(),
            control_owner: None,
            disk: Vec::new(),
            acked: Vec::new(),
            next_write: 1,
            pending_writes: VecDeque::new(),
            journal: None,
            ctx: None,
            started: now,
            init_kills_orphans,
        };
        let pid = w.new_daemon();
        let d = w.dm(pid);
        d.holds_lock = true;
        d.writer = Some(Vec::new());
        d.accepting = true;
        d.control = true;
        w.lock.holder = Some(pid);
        w.control_owner = Some(pid);
        w.sup.tracked = Some(pid);
        w.log(|| {
            format!(
                "pid {pid} serves; when the supervisor dies, the init system {}",
                if init_kills_orphans {
                    "stops its daemons too"
                } else {
                    "leaves its daemons running"
                }
            )
        });
        w
    }

    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// The counts and the trace, once the case is over.
    pub(crate) fn finish(mut self) -> (Stats, Vec<String>) {
        self.stats.virtual_time = self.now - self.started;
        (self.stats, self.trace)
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.options.trace {
            let l = line();
            self.trace.push(format!("{:>16?}  {l}", self.now));
        }
    }

    fn d(&self, pid: Pid) -> &Daemon {
        &self.daemons[(pid - FIRST_PID) as usize]
    }

    fn dm(&mut self, pid: Pid) -> &mut Daemon {
        &mut self.daemons[(pid - FIRST_PID) as usize]
    }

    fn alive(&self, pid: Pid) -> bool {
        self.d(pid).alive
    }

    fn new_daemon(&mut self) -> Pid {
        let pid = FIRST_PID + self.daemons.len() as Pid;
        let d = Daemon::new(pid, self.sup.generation, self.now);
        self.daemons.push(d);
        pid
    }

    fn new_conn(&mut self, d_pid: Pid) -> ConnId {
        self.conns.push(Conn::new(d_pid));
        self.conns.len() - 1
    }

    fn plan(&self) -> &Plan {
        &self.ctx.as_ref().expect("a handoff is in progress").plan
    }

    fn net_delay(&mut self) -> Duration {
        let max = self
            .ctx
            .as_ref()
            .map_or(Duration::ZERO, |c| c.plan.max_net_delay);
        Duration::from_nanos(self.rng.below(max.as_nanos() as u64 + 1))
    }

    fn close_s(&mut self, conn: ConnId) {
        let delay = self.net_delay();
        let now = self.now;
        self.conns[conn].close_s(now, delay);
    }

    fn close_d(&mut self, conn: ConnId) {
        let delay = self.net_delay();
        let now = self.now;
        self.conns[conn].close_d(now, delay);
    }

    // ------------------------------------------------------------ handoffs

    /// Whether the supervisor can start a handoff now: it is alive and
    /// watching a daemon that serves.
    pub(crate) fn can_hand_off(&self) -> bool {
        let s = &self.sup;
        s.alive
            && s.frozen_until.is_none()
            && !s.frozen_for_good
            && s.cold.is_none()
            && s.run.as_ref().is_none_or(|r| r.finished)
            && s.tracked.is_some_and(|p| self.d(p).serving())
    }

    /// Runs one handoff under `plan` until the world has settled, then
    /// checks what a settled world must satisfy.
    pub(crate) fn hand_off(&mut self, plan: Plan) -> Res {
        let o = self.sup.tracked.expect("can_hand_off was checked");
        self.dm(o).ib = plan.incumbent;
        let start = self.now;
        self.pending_writes = {
            let mut w: Vec<Instant> = plan.writes.iter().map(|d| start + *d).collect();
            w.sort();
            w.into()
        };
        let mut random = [0u8; 16];
        random[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        random[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let m = Sup::new(start, plan.supervisor, random, 1_700_000_000_000);
        self.log(|| {
            format!(
                "handoff {} starts: O is pid {o}; plan {plan:?}",
                m.handoff_id()
            )
        });
        self.sup.run = Some(Run {
            m,
            dirty: true,
            o_conn: None,
            n_conn: None,
            n_pid: None,
            finished: false,
            journal_failure_reported: false,
            same_instant_timeouts: (Instant::ZERO, 0),
        });
        self.ctx = Some(Ctx {
            plan,
            actions: 0,
            frames: [0; 3],
            o_pid: o,
            n_pid: None,
            crashed: Vec::new(),
            froze: false,
            outcome: None,
        });
        self.stats.handoffs += 1;
        self.run_until_settled(start)?;
        let took = self.now - start;
        self.stats.longest_settle = self.stats.longest_settle.max(took);
        if self.ctx.as_ref().is_some_and(|c| c.crashed.len() > 1) {
            self.stats.double_crashes += 1;
        }
        self.check_settled()
    }

    fn run_until_settled(&mut self, start: Instant) -> Res {
        loop {
            self.check_invariants()?;
            let acts = self.ready_actions();
            if acts.is_empty() {
                match self.next_event() {
                    None => return Ok(()),
                    Some(t) if t <= self.now => {
                        return Err(format!(
                            "the simulation is stuck: something is due at {t:?} but nothing can run"
                        ));
                    }
                    Some(t) if t > start + SETTLE_LIMIT => {
                        return Err(format!(
                            "invariant 7: the world did not settle within {SETTLE_LIMIT:?} \
                             (next event at {t:?})"
                        ));
                    }
                    Some(t) => self.now = t,
                }
                continue;
            }
            let act = acts[self.rng.index(acts.len())];
            self.stats.actions += 1;
            self.perform(act)?;
            let ctx = self.ctx.as_mut().expect("in a handoff");
            ctx.actions += 1;
            let n = ctx.actions;
            if n > ACTION_LIMIT {
                return Err(format!(
                    "the handoff did not settle within {ACTION_LIMIT} actions"
                ));
            }
            let due: Vec<Role> = ctx
                .plan
                .crashes
                .iter()
                .filter(|(_, t)| *t == Trigger::AtAction(n))
                .map(|(r, _)| *r)
                .collect();
            for role in due {
                self.crash(role);
            }
            if let Some(f) = self.ctx.as_ref().and_then(|c| c.plan.freeze)
                && f.at_action == n
                && self.sup_can_act()
            {
                match f.lasts {
                    Some(d) => self.sup.frozen_until = Some(self.now + d),
                    None => self.sup.frozen_for_good = true,
                }
                self.sup.killed_at_thaw = f.then_killed;
                self.ctx.as_mut().expect("in a handoff").froze = true;
                self.stats.freezes += 1;
                self.log(|| match f.lasts {
                    Some(d) if f.then_killed => {
                        format!("S freezes with its sockets open; a watchdog kills it in {d:?}")
                    }
                    Some(d) => format!("S freezes with its sockets open for {d:?}"),
                    None => "S freezes for good with its sockets open".into(),
                });
            }
        }
    }

    // ------------------------------------------------------------ scheduler

    fn sup_can_act(&self) -> bool {
        self.sup.alive && self.sup.frozen_until.is_none() && !self.sup.frozen_for_good
    }

    fn exit_report_time(&self) -> Option<Instant> {
        let run = self.sup.run.as_ref()?;
        if run.finished {
            return None;
        }
        let d = self.d(run.n_pid?);
        (!d.alive && !d.exit_reported && d.parent == self.sup.generation)
            .then_some(d.exit_report_at)
            .flatten()
    }

    fn monitor_ready(&self) -> bool {
        let s = &self.sup;
        self.sup_can_act()
            && !s.parked
            && s.cold.is_none()
            && s.run.as_ref().is_none_or(|r| r.finished)
            && s.tracked.is_none_or(|p| !self.alive(p))
    }

    fn cold_ready(&self) -> bool {
        if !self.sup_can_act() {
            return false;
        }
        match self.sup.cold {
            Some(Cold { pid: None, due, .. }) => due <= self.now,
            Some(Cold { pid: Some(p), .. }) => self.d(p).serving() || !self.alive(p),
            None => false,
        }
    }

    fn ready_actions(&self) -> Vec<Act> {
        let now = self.now;
        let mut v = Vec::new();
        let s = &self.sup;
        if s.frozen_for_good {
            // It never acts again.
        } else if s.alive {
            if due(s.frozen_until, now) {
                v.push(Act::SupThaw);
            } else if s.frozen_until.is_none() {
                if let Some(run) = &s.run {
                    if run.dirty {
                        v.push(Act::SupPump);
                    } else if !run.finished {
                        for peer in [Peer::Incumbent, Peer::Successor] {
                            if let Some(c) = run.conn(peer)
                                && self.conns[c].to_s.readable(now) != Readable::Nothing
                            {
                                v.push(Act::SupRead(peer));
                            }
                        }
                        if due(run.m.poll_timeout(), now) {
                            v.push(Act::SupTimeout);
                        }
                        if due(self.exit_report_time(), now) {
                            v.push(Act::SupExitReport);
                        }
                    }
                }
                if self.monitor_ready() {
                    v.push(Act::SupMonitor);
                }
                if self.cold_ready() {
                    v.push(Act::SupCold);
                }
            }
        } else if s.parked {
            if !self.daemons.iter().any(Daemon::serving) {
                v.push(Act::SupUnpark);
            }
        } else if due(s.restart_at, now) {
            v.push(Act::SupRestart);
        }
        for d in self.daemons.iter().filter(|d| d.alive) {
            let pid = d.pid;
            if d.dirty {
                v.push(Act::Pump(pid));
                continue;
            }
            if self.daemon_readable(d) {
                v.push(Act::Read(pid));
            }
            if due(d.timer(), now) {
                v.push(Act::Timeout(pid));
            }
            if due(d.next_hook(), now) {
                v.push(Act::Hook(pid));
            }
            if due(d.hello_at, now) {
                v.push(Act::Hello(pid));
            }
            if due(d.serve_at, now) && !d.hung {
                v.push(Act::Serve(pid));
            }
            if due(d.cold_at, now) {
                v.push(Act::ColdTry(pid));
            }
            if due(d.retire_at, now) {
                v.push(Act::Retire(pid));
            }
            if d.control && d.inc.is_none() && !d.backlog.is_empty() && d.serving() {
                v.push(Act::Accept(pid));
            }
        }
        if due(self.lock.free_at, now) {
            v.push(Act::FreeLock);
        }
        if self.pending_writes.front().is_some_and(|t| *t <= now) {
            v.push(Act::ClientWrite);
        }
        v
    }

    fn daemon_readable(&self, d: &Daemon) -> bool {
        let now = self.now;
        if let Some((c, _)) = &d.inc {
            return self.conns[*c].to_d.readable(now) != Readable::Nothing;
        }
        if let (Some(_), Some(c)) = (&d.suc, d.suc_conn)
            && !d.hung
        {
            return self.conns[c].to_d.readable(now) != Readable::Nothing;
        }
        false
    }

    /// The earliest instant anything is due, `None` if nothing ever is.
    fn next_event(&self) -> Option<Instant> {
        let now = self.now;
        let mut t: Option<Instant> = None;
        let mut add = |x: Option<Instant>| t = earliest(t, x);
        let s = &self.sup;
        if s.frozen_for_good {
            // Nothing of it is ever due again.
        } else if s.alive {
            if s.frozen_until.is_some() {
                add(s.frozen_until);
            } else {
                if let Some(run) = &s.run
                    && !run.finished
                {
                    add(run.m.poll_timeout());
                    for c in [run.o_conn, run.n_conn].into_iter().flatten() {
                        add(self.conns[c].to_s.next_at(now));
                    }
                    add(self.exit_report_time());
                }
                if let Some(Cold { pid: None, due, .. }) = s.cold {
                    add(Some(due));
                }
            }
        } else if !s.parked {
            add(s.restart_at);
        }
        for d in self.daemons.iter().filter(|d| d.alive) {
            add(d.timer());
            add(d.next_hook());
            add(d.hello_at);
            if !d.hung {
                add(d.serve_at);
            }
            add(d.cold_at);
            add(d.retire_at);
            if let Some((c, _)) = &d.inc {
                add(self.conns[*c].to_d.next_at(now));
            }
            if let (Some(_), Some(c)) = (&d.suc, d.suc_conn)
                && !d.hung
            {
                add(self.conns[c].to_d.next_at(now));
            }
        }
        add(self.lock.free_at);
        add(self.pending_writes.front().copied());
        t
    }

    fn perform(&mut self, act: Act) -> Res {
        match act {
            Act::SupPump => self.sup_pump(),
            Act::SupRead(peer) => self.sup_read(peer),
            Act::SupTimeout => self.sup_timeout(),
            Act::SupExitReport => {
                let now = self.now;
                let run = self.sup.run.as_mut().expect("a run");
                let n = run.n_pid.expect("a successor");
                run.m.handle_successor_exited(now);
                run.dirty = true;
                self.dm(n).exit_reported = true;
                self.log(|| format!("S reaps N (pid {n})"));
                Ok(())
            }
            Act::SupThaw => {
                self.sup.frozen_until = None;
                if self.sup.killed_at_thaw {
                    self.log(|| "a watchdog kills the frozen S".into());
                    self.crash_supervisor();
                } else {
                    self.log(|| "S thaws".into());
                }
                Ok(())
            }
            Act::SupMonitor => {
                self.monitor();
                Ok(())
            }
            Act::SupCold => self.cold_progress(),
            Act::SupRestart => {
                self.restart_supervisor();
                Ok(())
            }
            Act::SupUnpark => {
                let delay = self
                    .ctx
                    .as_ref()
                    .map_or(Duration::from_secs(1), |c| c.plan.supervisor_restart_delay);
                self.sup.parked = false;
                self.sup.restart_at = Some(self.now + delay);
                self.log(|| {
                    "no daemon serves: the init system's next restart of S will start one".into()
                });
                Ok(())
            }
            Act::Pump(pid) => self.daemon_pump(pid),
            Act::Read(pid) => self.daemon_read(pid),
            Act::Timeout(pid) => self.daemon_timeout(pid),
            Act::Hook(pid) => self.daemon_hook(pid),
            Act::Hello(pid) => {
                self.successor_hello(pid);
                Ok(())
            }
            Act::Serve(pid) => self.successor_serve(pid),
            Act::ColdTry(pid) => {
                self.cold_try(pid);
                Ok(())
            }
            Act::Retire(pid) => {
                self.kill(pid, "exits after its last connections (retired)");
                Ok(())
            }
            Act::Accept(pid) => {
                self.accept(pid);
                Ok(())
            }
            Act::FreeLock => {
                let holder = self.lock.holder.take();
                self.lock.free_at = None;
                self.log(|| format!("the kernel frees the lock of dead pid {holder:?}"));
                Ok(())
            }
            Act::ClientWrite => self.client_write(),
        }
    }

    // ----------------------------------------------------------- supervisor

    fn sup_pump(&mut self) -> Res {
        let run = self.sup.run.as_mut().expect("a run");
        let out = match run.m.poll_output() {
            None => {
                run.dirty = false;
                return Ok(());
            }
            Some(SupervisorOutput::ConnectIncumbent) => SupOut::Connect,
            Some(SupervisorOutput::Transmit { to, frame }) => SupOut::Transmit(to, frame.to_vec()),
            Some(SupervisorOutput::SpawnSuccessor) => SupOut::Spawn,
            Some(SupervisorOutput::Signal(s)) => SupOut::Signal(s),
            Some(SupervisorOutput::Disconnect(p)) => SupOut::Disconnect(p),
            Some(SupervisorOutput::WriteJournal(r)) => SupOut::Journal(r),
            Some(SupervisorOutput::ClearJournal) => SupOut::ClearJournal,
            Some(SupervisorOutput::Finished(o)) => SupOut::Finished(Outcome { result: o.result }),
        };
        let now = self.now;
        match out {
            SupOut::Connect => {
                let owner = self
                    .control_owner
                    .filter(|p| self.d(*p).alive && self.d(*p).control);
                match owner {
                    Some(p) => {
                        let c = self.new_conn(p);
                        self.dm(p).backlog.push_back(c);
                        let run = self.sup.run.as_mut().expect("a run");
                        run.o_conn = Some(c);
                        run.m.handle_connected(now);
                        self.log(|| format!("S connects to the control socket of pid {p}"));
                    }
                    None => {
                        self.sup
                            .run
                            .as_mut()
                            .expect("a run")
                            .m
                            .handle_connect_failed(now);
                        self.log(|| "S cannot connect: nobody serves the control socket".into());
                    }
                }
            }
            SupOut::Transmit(peer, frame) => {
                let run = self.sup.run.as_ref().expect("a run");
                let c = run.conn(peer).ok_or("S transmits to a peer it never had")?;
                if !self.conns[c].s_open {
                    return Err(format!("S transmits to the {peer} after disconnecting it"));
                }
                let delay = self.net_delay();
                self.conns[c].to_d.write(now, delay, &frame);
                self.log(|| format!("S -> {peer}: {}", frame_name(&frame)));
                self.count_frame(Role::Supervisor);
            }
            SupOut::Spawn => {
                if self.plan().spawn_fails {
                    self.sup
                        .run
                        .as_mut()
                        .expect("a run")
                        .m
                        .handle_spawn_failed(now);
                    self.log(|| "S cannot spawn the successor".into());
                } else {
                    let pid = self.new_daemon();
                    let c = self.new_conn(pid);
                    let sb = self.plan().successor;
                    let stale = (self.options.sabotage == Sabotage::SuccessorOpensStaleState)
                        .then(|| self.disk.clone());
                    let d = self.dm(pid);
                    d.sb = sb;
                    d.suc_conn = Some(c);
                    d.hello_at = Some(now + sb.startup);
                    d.stale_disk = stale;
                    let run = self.sup.run.as_mut().expect("a run");
                    run.n_pid = Some(pid);
                    run.n_conn = Some(c);
                    run.m.handle_spawned(now, pid);
                    self.ctx.as_mut().expect("in a handoff").n_pid = Some(pid);
                    self.log(|| format!("S spawns N as pid {pid}"));
                }
            }
            SupOut::Signal(sig) => {
                let n = self.sup.run.as_ref().and_then(|r| r.n_pid);
                self.log(|| format!("S signals N (pid {n:?}): {sig:?}"));
                if let Some(n) = n
                    && self.alive(n)
                {
                    let ignores = self.d(n).sb.ignores_term;
                    match sig {
                        Signal::Terminate if ignores => {
                            self.log(|| "N ignores SIGTERM".into());
                        }
                        _ => self.kill(n, "killed by the supervisor's signal"),
                    }
                }
            }
            SupOut::Disconnect(peer) => {
                if let Some(c) = self.sup.run.as_ref().and_then(|r| r.conn(peer)) {
                    self.close_s(c);
                }
                self.log(|| format!("S disconnects the {peer}"));
            }
            SupOut::Journal(rec) => {
                self.journal = Some(rec);
                self.log(|| format!("S journals {}", rec.phase));
                let fails = self.plan().journal_fails;
                let run = self.sup.run.as_mut().expect("a run");
                if fails && !run.journal_failure_reported {
                    run.journal_failure_reported = true;
                    run.m.handle_journal_failed(now);
                }
            }
            SupOut::ClearJournal => {
                self.journal = None;
                self.log(|| "S clears the journal".into());
            }
            SupOut::Finished(outcome) => {
                let run = self.sup.run.as_mut().expect("a run");
                run.finished = true;
                let conns = [run.o_conn, run.n_conn];
                let n_pid = run.n_pid;
                for c in conns.into_iter().flatten() {
                    self.close_s(c);
                }
                match outcome.result {
                    Ok(()) => {
                        self.stats.committed += 1;
                        self.sup.tracked = n_pid;
                    }
                    Err(reason) => {
                        self.stats.aborted += 1;
                        *self
                            .stats
                            .abort_reasons
                            .entry(reason_name(&reason))
                            .or_default() += 1;
                    }
                }
                self.ctx.as_mut().expect("in a handoff").outcome = Some(outcome);
                self.log(|| format!("S finishes: {:?}", outcome.result));
            }
        }
        // A frame written may have set off the supervisor's own crash.
        if let Some(run) = self.sup.run.as_mut() {
            run.dirty = true;
        }
        Ok(())
    }

    fn sup_read(&mut self, peer: Peer) -> Res {
        let now = self.now;
        let c = self
            .sup
            .run
            .as_ref()
            .and_then(|r| r.conn(peer))
            .ok_or("no conn")?;
        match self.conns[c].to_s.readable(now) {
            Readable::Bytes(n) => {
                let take = self.chunk(n);
                let bytes = self.conns[c].to_s.peek(now, take);
                let run = self.sup.run.as_mut().expect("a run");
                let used = run.m.handle_input(now, peer, &bytes);
                run.dirty = true;
                if used == 0 || used > bytes.len() {
                    return Err(format!(
                        "the supervisor consumed {used} of {} bytes",
                        bytes.len()
                    ));
                }
                self.conns[c].to_s.consume(used);
            }
            Readable::Eof => {
                self.conns[c].to_s.take_eof();
                let run = self.sup.run.as_mut().expect("a run");
                run.m.handle_closed(now, peer);
                run.dirty = true;
                self.log(|| format!("S reads EOF from the {peer}"));
            }
            Readable::Nothing => {}
        }
        Ok(())
    }

    fn sup_timeout(&mut self) -> Res {
        let now = self.now;
        let run = self.sup.run.as_mut().expect("a run");
        run.same_instant_timeouts = match run.same_instant_timeouts {
            (t, n) if t == now => (t, n + 1),
            _ => (now, 1),
        };
        if run.same_instant_timeouts.1 > SAME_INSTANT_TIMEOUTS {
            return Err(format!(
                "the supervisor keeps asking for a timeout at {now:?} that does not clear"
            ));
        }
        run.m.handle_timeout(now);
        run.dirty = true;
        Ok(())
    }

    fn count_frame(&mut self, role: Role) {
        let ctx = self.ctx.as_mut().expect("in a handoff");
        ctx.frames[role.index()] += 1;
        let n = ctx.frames[role.index()];
        if ctx.plan.crashes.contains(&(role, Trigger::AfterFrames(n))) {
            self.crash(role);
        }
    }

    /// The supervisor binary's monitor: the daemon it watched is gone and
    /// no handoff runs, so it starts one cold, pausing while it keeps dying.
    fn monitor(&mut self) {
        let now = self.now;
        let (pause, backoff) = match self.sup.tracked {
            Some(p) => {
                let d = self.d(p);
                let uptime = d.died.unwrap_or(now) - d.started;
                if uptime < QUICK_DEATH {
                    let b = next_backoff(Duration::ZERO);
                    (b, b)
                } else {
                    (Duration::ZERO, Duration::ZERO)
                }
            }
            None => (Duration::ZERO, Duration::ZERO),
        };
        let gone = self.sup.tracked.take();
        self.sup.cold = Some(Cold {
            at_restart: false,
            due: now + pause,
            pid: None,
            backoff,
        });
        self.log(|| format!("S's monitor: pid {gone:?} is gone; a cold start in {pause:?}"));
    }

    fn cold_progress(&mut self) -> Res {
        let now = self.now;
        let cold = self.sup.cold.expect("a cold start");
        match cold.pid {
            None => {
                let pid = self.new_daemon();
                let startup = self.rng.millis(0, COLD_STARTUP_MAX_MS);
                let d = self.dm(pid);
                d.cold_at = Some(now + startup);
                d.cold_give_up = now + startup + COLD_LOCK_WINDOW;
                self.sup.cold = Some(Cold {
                    pid: Some(pid),
                    ..cold
                });
                self.log(|| format!("S starts a daemon cold as pid {pid}"));
            }
            Some(p) if self.d(p).serving() => {
                self.sup.tracked = Some(p);
                self.sup.cold = None;
                self.stats.cold_starts += 1;
                self.log(|| format!("S: the cold-started pid {p} serves"));
            }
            Some(p) => {
                let other_serves = self.daemons.iter().any(|d| d.pid != p && d.serving());
                if cold.at_restart && other_serves {
                    // `Service::start` fails and the binary exits: a daemon
                    // of the dead supervisor serves, and an operator is told.
                    self.sup.alive = false;
                    self.sup.parked = true;
                    self.sup.cold = None;
                    self.stats.orphans_left_serving += 1;
                    self.log(|| {
                        "S's cold start failed: an orphan serves; S reports it and exits \
                         (its restarts are parked while the orphan serves)"
                            .into()
                    });
                } else {
                    let backoff = next_backoff(cold.backoff);
                    self.sup.cold = Some(Cold {
                        due: now + backoff,
                        pid: None,
                        backoff,
                        ..cold
                    });
                    self.log(|| format!("S: cold start of pid {p} failed; again in {backoff:?}"));
                }
            }
        }
        Ok(())
    }

    fn restart_supervisor(&mut self) {
        let s = &mut self.sup;
        s.generation += 1;
        s.alive = true;
        s.restart_at = None;
        s.frozen_until = None;
        s.run = None;
        s.tracked = None;
        s.cold = Some(Cold {
            at_restart: true,
            due: self.now,
            pid: None,
            backoff: Duration::ZERO,
        });
        self.stats.supervisor_restarts += 1;
        // `resume_from_journal`: read it, log it, delete it.
        let found = self.journal.take();
        if found.is_some() {
            self.stats.journals_found += 1;
        }
        self.log(|| format!("S restarts; the journal it finds: {found:?}"));
    }

    fn crash_supervisor(&mut self) {
        let conns: Vec<ConnId> = self
            .sup
            .run
            .as_ref()
            .map(|r| [r.o_conn, r.n_conn].into_iter().flatten().collect())
            .unwrap_or_default();
        for c in conns {
            self.close_s(c);
        }
        let delay = self
            .ctx
            .as_ref()
            .map_or(Duration::from_secs(1), |c| c.plan.supervisor_restart_delay);
        let s = &mut self.sup;
        if s.run.as_ref().is_some_and(|r| !r.finished) {
            self.stats.unfinished += 1;
        }
        s.alive = false;
        s.frozen_until = None;
        s.run = None;
        s.cold = None;
        s.tracked = None;
        s.restart_at = Some(self.now + delay);
        self.log(|| "S dies".into());
        if self.init_kills_orphans {
            let alive: Vec<Pid> = self
                .daemons
                .iter()
                .filter(|d| d.alive)
                .map(|d| d.pid)
                .collect();
            self.stats.orphans_stopped_by_init += alive.len() as u64;
            for pid in alive {
                self.kill(pid, "is stopped by the init system with its supervisor");
            }
        }
    }

    // -------------------------------------------------------------- crashes

    fn crash(&mut self, role: Role) {
        let ctx = self.ctx.as_ref().expect("in a handoff");
        if ctx.crashed.contains(&role) {
            return;
        }
        let frames_sent = ctx.frames[role.index()];
        let target = match role {
            Role::Supervisor => None,
            Role::Incumbent => Some(ctx.o_pid),
            Role::Successor => ctx.n_pid,
        };
        let step = match role {
            Role::Supervisor => {
                if !self.sup_can_act() {
                    return;
                }
                match &self.sup.run {
                    Some(r) if !r.finished => format!("{:?}", r.m.step()),
                    _ => "AfterTheHandoff".into(),
                }
            }
            _ => match target {
                Some(p) if self.alive(p) => self.d(p).step_name(),
                _ => return,
            },
        };
        self.stats.crashes[role.index()] += 1;
        self.stats.crash_points.insert(CrashPoint {
            role,
            step: step.clone(),
            frames_sent,
        });
        self.ctx.as_mut().expect("in a handoff").crashed.push(role);
        self.log(|| format!("CRASH injected: {role:?} in {step} after {frames_sent} frames"));
        match target {
            None => self.crash_supervisor(),
            Some(p) => self.kill(p, "crashes"),
        }
    }

    /// A process ends, by crash, signal or exit: the kernel closes its
    /// sockets and, a little later, its lock FD.
    fn kill(&mut self, pid: Pid, why: &str) {
        if !self.alive(pid) {
            return;
        }
        let now = self.now;
        let (lock_delay, report_delay) = match &self.ctx {
            Some(c) => (c.plan.max_lock_release_delay, c.plan.max_exit_report_delay),
            None => (Duration::ZERO, Duration::ZERO),
        };
        let lock_delay = Duration::from_nanos(self.rng.below(lock_delay.as_nanos() as u64 + 1));
        let report_delay = Duration::from_nanos(self.rng.below(report_delay.as_nanos() as u64 + 1));
        let d = self.dm(pid);
        d.alive = false;
        d.died = Some(now);
        let mut conns: Vec<ConnId> = d.backlog.drain(..).collect();
        conns.extend(d.inc.take().map(|(c, _)| c));
        conns.extend(d.suc_conn);
        d.suc = None;
        d.hooks.clear();
        d.writer = None;
        d.accepting = false;
        d.control = false;
        d.dirty = false;
        d.hello_at = None;
        d.serve_at = None;
        d.cold_at = None;
        d.retire_at = None;
        d.exit_report_at = Some(now + report_delay);
        let held = std::mem::take(&mut d.holds_lock);
        for c in conns {
            self.close_d(c);
        }
        if held {
            if lock_delay.is_zero() {
                self.lock.holder = None;
            } else {
                self.lock.free_at = Some(now + lock_delay);
            }
        }
        self.log(|| format!("pid {pid} {why} and is gone"));
    }

    // --------------------------------------------------------------- daemons

    fn accept(&mut self, pid: Pid) {
        let now = self.now;
        let d = self.dm(pid);
        let c = d.backlog.pop_front().expect("a queued connection");
        let m = Inc::new(now, IncumbentConfig::default(), pid, b"old-build");
        d.inc = Some((c, m));
        d.sealed_ok = false;
        d.dirty = true;
        self.log(|| format!("pid {pid} accepts a control session"));
    }

    fn chunk(&mut self, available: usize) -> usize {
        let bytewise = self.ctx.as_ref().map_or(0, |c| c.plan.bytewise_reads);
        if self.rng.chance(bytewise) {
            1
        } else {
            self.rng.between(1, available as u64) as usize
        }
    }

    fn daemon_read(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let d = self.d(pid);
        let c = match (&d.inc, d.suc_conn) {
            (Some((c, _)), _) => *c,
            (None, Some(c)) => c,
            (None, None) => return Err("a daemon reads with no connection".into()),
        };
        match self.conns[c].to_d.readable(now) {
            Readable::Bytes(n) => {
                let take = self.chunk(n);
                let bytes = self.conns[c].to_d.peek(now, take);
                let d = self.dm(pid);
                let used = match (&mut d.inc, &mut d.suc) {
                    (Some((_, m)), _) => m.handle_input(now, &bytes),
                    (None, Some(m)) => m.handle_input(now, &bytes),
                    _ => return Err("no machine".into()),
                };
                d.dirty = true;
                if used == 0 || used > bytes.len() {
                    return Err(format!(
                        "pid {pid} consumed {used} of {} bytes",
                        bytes.len()
                    ));
                }
                self.conns[c].to_d.consume(used);
            }
            Readable::Eof => {
                self.conns[c].to_d.take_eof();
                let d = self.dm(pid);
                match (&mut d.inc, &mut d.suc) {
                    (Some((_, m)), _) => m.handle_closed(now),
                    (None, Some(m)) => m.handle_closed(now),
                    _ => {}
                }
                d.dirty = true;
                self.log(|| format!("pid {pid} reads EOF from S"));
            }
            Readable::Nothing => {}
        }
        Ok(())
    }

    fn daemon_timeout(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let d = self.dm(pid);
        d.same_instant_timeouts = match d.same_instant_timeouts {
            (t, n) if t == now => (t, n + 1),
            _ => (now, 1),
        };
        if d.same_instant_timeouts.1 > SAME_INSTANT_TIMEOUTS {
            return Err(format!(
                "pid {pid} keeps asking for a timeout at {now:?} that does not clear"
            ));
        }
        match (&mut d.inc, &mut d.suc) {
            (Some((_, m)), _) => m.handle_timeout(now),
            (None, Some(m)) => m.handle_timeout(now),
            _ => {}
        }
        d.dirty = true;
        Ok(())
    }

    fn daemon_hook(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let disk_len = self.disk.len() as u64;
        let disk = self.disk.clone();
        let d = self.dm(pid);
        let i = (0..d.hooks.len())
            .min_by_key(|&i| d.hooks[i].0)
            .expect("a due hook");
        let (_, hook) = d.hooks.remove(i);
        let b = d.ib;
        let Some((_, m)) = d.inc.as_mut() else {
            return Ok(());
        };
        d.dirty = true;
        let line = match hook {
            Hook::Drain if b.drain_fails => {
                m.handle_drain_failed(now);
                "the drain hook fails"
            }
            Hook::Drain => {
                m.handle_drained(
                    now,
                    DrainReport {
                        open_conns_remaining: 0,
                        accept_closed: true,
                    },
                );
                "the drain hook is done"
            }
            Hook::Seal => {
                d.hooks.retain(|h| h.1 != Hook::Progress);
                if b.seal_fails {
                    m.handle_seal_failed(
                        now,
                        SealFailure {
                            error: "disk full",
                            partial_state: "shard 2 of 4",
                        },
                    );
                    "the seal hook fails"
                } else {
                    // Every acknowledged write is durable already; sealing
                    // closes the writer so that no more are taken.
                    d.writer = None;
                    d.sealed_ok = true;
                    m.handle_sealed(
                        now,
                        SealReport {
                            last_revision_per_shard: Revisions::from_slice(&[disk_len]),
                            data_dir_fingerprint: [0x5e; 32],
                        },
                    );
                    "the seal hook is done: the writer is closed"
                }
            }
            Hook::Progress => {
                m.handle_seal_progress(now, 1, 4, disk_len);
                if let Some(every) = b.seal_progress_every {
                    d.hooks.push((now + every, Hook::Progress));
                }
                "the seal hook reports progress"
            }
            Hook::Resume if b.resume_fails => {
                m.handle_resume_failed(now);
                "the resume hook fails"
            }
            Hook::Resume => {
                if !d.holds_lock {
                    return Err(format!(
                        "invariant 1: pid {pid} resumes serving without the data-dir lock"
                    ));
                }
                if d.writer.is_none() {
                    d.writer = Some(disk);
                }
                d.accepting = true;
                m.handle_resumed(now);
                "the resume hook is done: serving again"
            }
        };
        self.log(|| format!("pid {pid}: {line}"));
        Ok(())
    }

    fn daemon_pump(&mut self, pid: Pid) -> Res {
        let d = self.dm(pid);
        if let Some((_, m)) = d.inc.as_mut() {
            let out = match m.poll_output() {
                None => {
                    d.dirty = false;
                    return Ok(());
                }
                Some(IncumbentOutput::Transmit(f)) => IncOut::Transmit(f.to_vec()),
                Some(IncumbentOutput::Drain { .. }) => IncOut::Drain,
                Some(IncumbentOutput::Seal) => IncOut::Seal,
                Some(IncumbentOutput::ReleaseLock) => IncOut::ReleaseLock,
                Some(IncumbentOutput::AcquireLock) => IncOut::AcquireLock,
                Some(IncumbentOutput::Resume) => IncOut::Resume,
                Some(IncumbentOutput::Close) => IncOut::Close,
                Some(IncumbentOutput::Finished(end)) => IncOut::Finished(end),
            };
            return self.incumbent_output(pid, out);
        }
        if let Some(m) = d.suc.as_mut() {
            let out = match m.poll_output() {
                None => {
                    d.dirty = false;
                    return Ok(());
                }
                Some(SuccessorOutput::Transmit(f)) => SucOut::Transmit(f.to_vec()),
                Some(SuccessorOutput::AcquireLock) => SucOut::AcquireLock,
                Some(SuccessorOutput::Start) => SucOut::Start,
                Some(SuccessorOutput::Finished(end)) => SucOut::Finished(end),
            };
            return self.successor_output(pid, out);
        }
        d.dirty = false;
        Ok(())
    }

    /// Tries the lock once for `pid`, as `flock(LOCK_EX | LOCK_NB)`.
    fn try_lock(&mut self, pid: Pid) -> bool {
        if self.lock.holder.is_none() {
            self.lock.holder = Some(pid);
            self.dm(pid).holds_lock = true;
            true
        } else {
            self.lock.holder == Some(pid)
        }
    }

    /// A daemon's adapter answering its machine's `AcquireLock`: one try
    /// of the lock, or none at all when `sabotaged` (it claims the lock
    /// without taking it). Returns whether it reports the lock taken.
    fn lock_attempt(&mut self, pid: Pid, sabotaged: bool) -> bool {
        let got = sabotaged || self.try_lock(pid);
        self.log(|| {
            format!(
                "pid {pid} tries the lock: {}",
                if got { "taken" } else { "busy" }
            )
        });
        got
    }

    fn incumbent_output(&mut self, pid: Pid, out: IncOut) -> Res {
        let now = self.now;
        let is_o = self.ctx.as_ref().is_some_and(|c| c.o_pid == pid);
        match out {
            IncOut::Transmit(frame) => {
                let (c, _) = self.d(pid).inc.as_ref().expect("a session");
                let c = *c;
                if self.conns[c].d_open {
                    let delay = self.net_delay();
                    self.conns[c].to_s.write(now, delay, &frame);
                }
                self.log(|| format!("pid {pid} -> S: {}", frame_name(&frame)));
                if is_o {
                    self.count_frame(Role::Incumbent);
                }
            }
            IncOut::Drain => {
                let d = self.dm(pid);
                d.accepting = false;
                d.hooks.push((now + d.ib.drain_time, Hook::Drain));
                self.log(|| format!("pid {pid} stops accepting and drains"));
            }
            IncOut::Seal => {
                let d = self.dm(pid);
                d.hooks.push((now + d.ib.seal_time, Hook::Seal));
                if let Some(every) = d.ib.seal_progress_every {
                    d.hooks.push((now + every, Hook::Progress));
                }
                self.log(|| format!("pid {pid} seals"));
            }
            IncOut::ReleaseLock => {
                let d = self.d(pid);
                if !d.sealed_ok || d.writer.is_some() {
                    return Err(format!(
                        "invariant 2: pid {pid} releases the lock without a successful seal"
                    ));
                }
                if !d.holds_lock || self.lock.holder != Some(pid) {
                    return Err(format!("pid {pid} releases a lock it does not hold"));
                }
                self.dm(pid).holds_lock = false;
                self.lock.holder = None;
                self.log(|| format!("pid {pid} releases the lock"));
            }
            IncOut::AcquireLock => {
                let got =
                    self.lock_attempt(pid, self.options.sabotage == Sabotage::IncumbentSkipsRelock);
                let (_, m) = self.dm(pid).inc.as_mut().expect("a session");
                if got {
                    m.handle_lock_acquired(now);
                } else {
                    m.handle_lock_busy(now);
                }
            }
            IncOut::Resume => {
                let d = self.dm(pid);
                d.hooks.push((now + d.ib.resume_time, Hook::Resume));
                self.log(|| format!("pid {pid} resumes"));
            }
            IncOut::Close => {
                let (c, _) = self.d(pid).inc.as_ref().expect("a session");
                let c = *c;
                self.close_d(c);
                self.log(|| format!("pid {pid} closes its control connection"));
            }
            IncOut::Finished(end) => {
                let d = self.dm(pid);
                let (c, _) = d.inc.take().expect("a session");
                d.hooks.clear();
                d.sealed_ok = false;
                self.close_d(c);
                self.log(|| format!("pid {pid}'s session ends: {end:?}"));
                let d = self.dm(pid);
                match end {
                    SessionEnd::Serving(_) => {
                        if !d.serving() {
                            return Err(format!(
                                "pid {pid}'s session ended {end:?} but it does not serve \
                                 (lock {}, writer {}, accepting {})",
                                d.holds_lock,
                                d.writer.is_some(),
                                d.accepting
                            ));
                        }
                    }
                    SessionEnd::Committed => {
                        if d.holds_lock || d.writer.is_some() {
                            return Err(format!(
                                "pid {pid} committed still holding the lock or its writer"
                            ));
                        }
                        d.accepting = false;
                        d.control = false;
                        let retire = self.rng.millis(0, RETIRE_MAX_MS);
                        self.dm(pid).retire_at = Some(now + retire);
                    }
                    SessionEnd::Superseded(_) | SessionEnd::ResumeFailed(_) => {
                        self.kill(pid, "exits after its session");
                    }
                }
            }
        }
        if self.alive(pid) && self.d(pid).inc.is_some() {
            self.dm(pid).dirty = true;
        }
        Ok(())
    }

    fn successor_hello(&mut self, pid: Pid) {
        let now = self.now;
        let d = self.dm(pid);
        d.hello_at = None;
        if d.sb.never_hello {
            self.log(|| format!("pid {pid}'s start-up never ends"));
            return;
        }
        let announced = if d.sb.lie_about_pid {
            pid + LIE_OFFSET
        } else {
            pid
        };
        d.suc = Some(Suc::new(
            now,
            SuccessorConfig::default(),
            announced,
            b"new-build",
        ));
        d.dirty = true;
        self.log(|| format!("pid {pid} is started up and says Hello"));
    }

    fn successor_output(&mut self, pid: Pid, out: SucOut) -> Res {
        let now = self.now;
        let is_n = self.ctx.as_ref().is_some_and(|c| c.n_pid == Some(pid));
        match out {
            SucOut::Transmit(frame) => {
                let c = self.d(pid).suc_conn.expect("a socketpair");
                if self.conns[c].d_open {
                    let delay = self.net_delay();
                    self.conns[c].to_s.write(now, delay, &frame);
                }
                self.log(|| format!("pid {pid} -> S: {}", frame_name(&frame)));
                if is_n {
                    self.count_frame(Role::Successor);
                }
            }
            SucOut::AcquireLock => {
                let got =
                    self.lock_attempt(pid, self.options.sabotage == Sabotage::SuccessorSkipsLock);
                let m = self.dm(pid).suc.as_mut().expect("a session");
                if got {
                    m.handle_lock_acquired(now);
                } else {
                    m.handle_lock_busy(now);
                }
            }
            SucOut::Start => {
                let d = self.dm(pid);
                if !d.holds_lock {
                    return Err(format!(
                        "invariant 5: successor pid {pid} is told to open the state without the lock"
                    ));
                }
                if d.sb.hang_after_begin {
                    d.hung = true;
                    self.log(|| format!("pid {pid} hangs while starting"));
                } else {
                    d.serve_at = Some(now + d.sb.after_begin);
                    self.log(|| format!("pid {pid} opens the sealed state"));
                }
            }
            SucOut::Finished(end) => {
                let d = self.dm(pid);
                d.suc = None;
                let c = d.suc_conn.expect("a socketpair");
                self.close_d(c);
                self.log(|| format!("pid {pid} as successor ends: {end:?}"));
                match end {
                    SuccessorEnd::Authoritative { .. } => {
                        let d = self.dm(pid);
                        if !d.serving() {
                            return Err(format!("pid {pid} is authoritative but does not serve"));
                        }
                        d.control = true;
                        self.control_owner = Some(pid);
                    }
                    SuccessorEnd::Failed(_) => self.kill(pid, "exits without serving"),
                }
            }
        }
        if self.alive(pid) && self.d(pid).suc.is_some() {
            self.dm(pid).dirty = true;
        }
        Ok(())
    }

    fn successor_serve(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let disk = self.disk.clone();
        let d = self.dm(pid);
        d.serve_at = None;
        let Some(m) = d.suc.as_mut() else {
            return Ok(());
        };
        d.dirty = true;
        if d.sb.start_fails {
            m.handle_start_failed(now);
            self.log(|| format!("pid {pid} cannot start"));
            return Ok(());
        }
        if !d.holds_lock {
            return Err(format!(
                "invariant 5: successor pid {pid} opens the state without the lock"
            ));
        }
        d.writer = Some(d.stale_disk.take().unwrap_or(disk));
        d.accepting = true;
        let listening = ["127.0.0.1:7000"];
        m.handle_ready(
            now,
            ReadyReport {
                listening_on: Strings::from_slice(&listening),
                healthz_ok: true,
                advertised_revision_per_shard: Revisions::from_slice(&[0]),
            },
        );
        self.log(|| format!("pid {pid} serves and reports Ready"));
        Ok(())
    }

    fn cold_try(&mut self, pid: Pid) {
        let now = self.now;
        self.dm(pid).cold_at = None;
        if self.try_lock(pid) {
            let disk = self.disk.clone();
            let d = self.dm(pid);
            d.writer = Some(disk);
            d.accepting = true;
            d.control = true;
            self.control_owner = Some(pid);
            self.log(|| format!("cold pid {pid} takes the lock and serves"));
        } else if self.lock.holder.is_some_and(|h| self.alive(h)) {
            self.kill(pid, "refuses to start: a live process holds the lock");
        } else if now >= self.d(pid).cold_give_up {
            self.kill(
                pid,
                "gives up its cold start: a dead holder's lock stays busy",
            );
        } else {
            self.dm(pid).cold_at = Some(now + COLD_LOCK_RETRY);
        }
    }

    fn client_write(&mut self) -> Res {
        self.pending_writes.pop_front();
        let writers: Vec<Pid> = self
            .daemons
            .iter()
            .filter(|d| d.alive && d.accepting && d.writer.is_some())
            .map(|d| d.pid)
            .collect();
        match writers.as_slice() {
            [] => {
                self.log(|| "a client write finds nobody accepting; it is not acknowledged".into());
                Ok(())
            }
            [pid] => {
                let pid = *pid;
                if !self.d(pid).holds_lock {
                    return Err(format!("pid {pid} acknowledges a write without the lock"));
                }
                let id = self.next_write;
                self.next_write += 1;
                self.disk.push(id);
                self.acked.push(id);
                self.dm(pid).writer.as_mut().expect("a writer").push(id);
                self.stats.writes_acked += 1;
                self.log(|| format!("pid {pid} acknowledges write {id}"));
                Ok(())
            }
            many => Err(format!("invariant 3: pids {many:?} all accept writes")),
        }
    }

    // ----------------------------------------------------------- invariants

    /// What must hold after every action.
    fn check_invariants(&mut self) -> Res {
        let alive_holders: Vec<Pid> = self
            .daemons
            .iter()
            .filter(|d| d.alive && d.holds_lock)
            .map(|d| d.pid)
            .collect();
        self.stats.invariant_checks += 1;
        if alive_holders.len() > 1 {
            return Err(format!(
                "invariant 1: pids {alive_holders:?} all hold the data-dir lock"
            ));
        }
        self.stats.invariant_checks += 1;
        if let Some(&p) = alive_holders.first()
            && self.lock.holder != Some(p)
        {
            return Err(format!(
                "invariant 1: pid {p} believes it holds the lock, the kernel says {:?}",
                self.lock.holder
            ));
        }
        for d in self.daemons.iter().filter(|d| d.alive) {
            self.stats.invariant_checks += 2;
            if d.writer.is_some() && !d.holds_lock {
                let role = if d.suc.is_some() {
                    "invariant 5: successor"
                } else {
                    "invariant 1: daemon"
                };
                return Err(format!(
                    "{role} pid {} has its writer open without the lock",
                    d.pid
                ));
            }
            if d.accepting && d.writer.is_none() {
                return Err(format!("pid {} accepts with no state open", d.pid));
            }
        }
        Ok(())
    }

    /// A successor left waiting for `Begin` by a supervisor frozen for
    /// good before its first heartbeat: it holds nothing, and cannot tell
    /// this supervisor from a reference one that never heartbeats (docs/PROTOCOL.md section 4
    /// asks only the incumbent to guard against a silent supervisor).
    fn stranded_by_frozen_supervisor(&self, d: &Daemon) -> bool {
        self.sup.frozen_for_good
            && !d.holds_lock
            && d.writer.is_none()
            && d.suc
                .as_ref()
                .is_some_and(|m| m.step() == SuccessorStep::AwaitingBegin)
    }

    /// What must hold once a handoff and everything it set off are over.
    fn check_settled(&mut self) -> Res {
        self.stats.invariant_checks += 6;
        let serving: Vec<Pid> = self
            .daemons
            .iter()
            .filter(|d| d.serving())
            .map(|d| d.pid)
            .collect();
        let [p] = serving[..] else {
            return Err(format!(
                "invariant 7: {} daemons serve once settled: {serving:?}",
                serving.len()
            ));
        };
        let mut stranded = Vec::new();
        for d in self.daemons.iter().filter(|d| d.alive && d.pid != p) {
            if !self.stranded_by_frozen_supervisor(d) {
                return Err(format!(
                    "invariant 6/7: pid {} is still alive beside the serving pid {p} ({})",
                    d.pid,
                    d.step_name()
                ));
            }
            stranded.push(d.pid);
        }
        self.stats.successors_stranded += stranded.len() as u64;
        if self.lock.holder != Some(p) {
            return Err(format!(
                "the serving pid {p} is not the lock's holder {:?}",
                self.lock.holder
            ));
        }
        // A frozen supervisor holds its ends open, and so does a daemon
        // it stranded; every other end must be closed.
        let frozen = self.sup.frozen_for_good;
        if let Some(c) = self
            .conns
            .iter()
            .position(|c| (c.s_open && !frozen) || (c.d_open && !stranded.contains(&c.d_pid)))
        {
            return Err(format!(
                "invariant 6: connection {c} to pid {} is left open (supervisor end {}, \
                 daemon end {})",
                self.conns[c].d_pid, self.conns[c].s_open, self.conns[c].d_open
            ));
        }
        let state = self
            .d(p)
            .writer
            .as_ref()
            .expect("a serving daemon has a writer");
        if let Some(lost) = self.acked.iter().find(|w| !state.contains(w)) {
            return Err(format!(
                "invariant 3: acknowledged write {lost} is missing from the state pid {p} serves"
            ));
        }
        if self.sup_can_act() {
            if self.journal.is_some() {
                return Err(format!(
                    "invariant 6: the journal is left behind: {:?}",
                    self.journal
                ));
            }
            if self.sup.tracked != Some(p) {
                return Err(format!(
                    "the supervisor watches pid {:?} but pid {p} serves",
                    self.sup.tracked
                ));
            }
        }
        let ctx = self.ctx.as_ref().expect("in a handoff");
        let clean = ctx.crashed.is_empty() && !ctx.froze && !ctx.plan.incumbent.resume_fails;
        if clean {
            self.stats.invariant_checks += 1;
            match ctx.outcome.map(|o| o.result) {
                Some(Ok(())) if Some(p) != ctx.n_pid => {
                    return Err(format!(
                        "committed, but pid {p} serves instead of the successor {:?}",
                        ctx.n_pid
                    ));
                }
                Some(Err(reason)) if p != ctx.o_pid => {
                    return Err(format!(
                        "invariant 6: aborted ({reason}), but pid {p} serves instead of the \
                         incumbent pid {}",
                        ctx.o_pid
                    ));
                }
                Some(Err(_)) => {
                    // docs/PROTOCOL.md section 4: the supervisor stopped and reaped the
                    // successor before it finished.
                    if let Some(n) = ctx.n_pid
                        && !self.d(n).exit_reported
                    {
                        return Err(format!(
                            "invariant 6: the aborted successor pid {n} was never reaped"
                        ));
                    }
                }
                None => return Err("with no crash, the supervisor never finished".into()),
                _ => {}
            }
        }
        self.log(|| format!("settled: pid {p} serves with every acknowledged write"));
        Ok(())
    }
}
