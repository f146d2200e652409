//! The simulated world's core: the state every process shares (the daemons,
//! the supervisor, the connections between them, the data-dir lock, the
//! disk, client writes, the virtual clock), the handoff it runs, and the
//! faults it injects (crashes, the kernel ending a process, and what
//! strikes a successor on probation).
//!
//! The other jobs live beside it, each adding to [`World`]:
//! `scheduler.rs` picks what happens next, `supervisor.rs` models the
//! supervisor process, `daemon.rs` the daemon processes, and
//! `invariants.rs` checks what must hold.

use std::collections::VecDeque;
use std::time::Duration;

use handoff_core::{FrameDecoder, Instant, JournalRecord};

use super::daemon::Daemon;
use super::net::{Conn, ConnId};
use super::plan::{Plan, ProbationFault, Trigger};
use super::supervisor::{Outcome, Run, Sup, Supervisor};
use super::{CrashPoint, Options, Role, Stats};
use crate::rng::Rng;

/// A process id in the simulation.
pub(crate) type Pid = u32;

const FIRST_PID: Pid = 100;
/// A machine asked for the same instant this often without moving on.
pub(super) const SAME_INSTANT_TIMEOUTS: u32 = 8;

/// Bookkeeping of the handoff in progress.
pub(super) struct Ctx {
    pub(super) plan: Plan,
    pub(super) actions: u32,
    frames: [u32; 3],
    pub(super) o_pid: Pid,
    pub(super) n_pid: Option<Pid>,
    /// The planned crashes that struck.
    pub(super) crashed: Vec<Role>,
    pub(super) froze: bool,
    pub(super) outcome: Option<Outcome>,
    /// When the supervisor put the successor on probation.
    pub(super) probation_since: Option<Instant>,
    /// When the planned probation fault is due (set with the probation).
    pub(super) probation_fault_at: Option<Instant>,
    /// The probation fault that struck.
    pub(super) probation_fault: Option<ProbationFault>,
    /// Writes the successor acknowledged while on probation.
    pub(super) probation_acks: Vec<u32>,
}

/// A lock table with one lock: the data-dir `flock`.
#[derive(Debug, Default)]
pub(super) struct Lock {
    pub(super) holder: Option<Pid>,
    /// A dead holder's FD closes at this instant.
    pub(super) free_at: Option<Instant>,
}

/// What an action or a check returns: an error says what went wrong.
pub(super) type Res = Result<(), String>;

/// The whole simulated system.
pub(crate) struct World {
    pub(super) now: Instant,
    pub(super) rng: Rng,
    pub(super) options: Options,
    trace: Vec<String>,
    pub(super) stats: Stats,
    pub(super) daemons: Vec<Daemon>,
    pub(super) conns: Vec<Conn>,
    pub(super) sup: Supervisor,
    pub(super) lock: Lock,
    /// The daemon the control socket path names.
    pub(super) control_owner: Option<Pid>,
    /// Durable state: every acknowledged write, in order.
    pub(super) disk: Vec<u32>,
    pub(super) acked: Vec<u32>,
    next_write: u32,
    pub(super) pending_writes: VecDeque<Instant>,
    pub(super) journal: Option<JournalRecord>,
    pub(super) ctx: Option<Ctx>,
    started: Instant,
    /// The init system stops every process of the service when the
    /// supervisor dies (systemd's default `KillMode=control-group`);
    /// otherwise the daemons outlive it as orphans.
    pub(super) init_kills_orphans: bool,
}

/// The message a frame carries, for the trace.
pub(super) fn frame_name(frame: &[u8]) -> String {
    let mut dec: FrameDecoder<Vec<u8>> = FrameDecoder::new();
    match dec.decode(frame).1 {
        Ok(Some(f)) => format!("{:?}", f.message),
        Ok(None) => "a partial frame".into(),
        Err(e) => format!("a bad frame ({e})"),
    }
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

    pub(super) fn log(&mut self, line: impl FnOnce() -> String) {
        if self.options.trace {
            let l = line();
            self.trace.push(format!("{:>16?}  {l}", self.now));
        }
    }

    pub(super) fn d(&self, pid: Pid) -> &Daemon {
        &self.daemons[(pid - FIRST_PID) as usize]
    }

    pub(super) fn dm(&mut self, pid: Pid) -> &mut Daemon {
        &mut self.daemons[(pid - FIRST_PID) as usize]
    }

    pub(super) fn alive(&self, pid: Pid) -> bool {
        self.d(pid).alive
    }

    pub(super) fn new_daemon(&mut self) -> Pid {
        let pid = FIRST_PID + self.daemons.len() as Pid;
        let d = Daemon::new(pid, self.sup.generation, self.now);
        self.daemons.push(d);
        pid
    }

    pub(super) fn new_conn(&mut self, d_pid: Pid) -> ConnId {
        self.conns.push(Conn::new(d_pid));
        self.conns.len() - 1
    }

    pub(super) fn plan(&self) -> &Plan {
        &self.ctx.as_ref().expect("a handoff is in progress").plan
    }

    pub(super) fn net_delay(&mut self) -> Duration {
        let max = self
            .ctx
            .as_ref()
            .map_or(Duration::ZERO, |c| c.plan.max_net_delay);
        Duration::from_nanos(self.rng.below(max.as_nanos() as u64 + 1))
    }

    pub(super) fn close_s(&mut self, conn: ConnId) {
        let delay = self.net_delay();
        let now = self.now;
        self.conns[conn].close_s(now, delay);
    }

    pub(super) fn close_d(&mut self, conn: ConnId) {
        let delay = self.net_delay();
        let now = self.now;
        self.conns[conn].close_d(now, delay);
    }

    pub(super) fn chunk(&mut self, available: usize) -> usize {
        let bytewise = self.ctx.as_ref().map_or(0, |c| c.plan.bytewise_reads);
        if self.rng.chance(bytewise) {
            1
        } else {
            self.rng.between(1, available as u64) as usize
        }
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
        self.sup.run = Some(Run::new(m));
        self.ctx = Some(Ctx {
            plan,
            actions: 0,
            frames: [0; 3],
            o_pid: o,
            n_pid: None,
            crashed: Vec::new(),
            froze: false,
            outcome: None,
            probation_since: None,
            probation_fault_at: None,
            probation_fault: None,
            probation_acks: Vec::new(),
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

    // -------------------------------------------------------------- crashes

    /// Counts a frame `role` wrote, and crashes it if the plan says so.
    pub(super) fn count_frame(&mut self, role: Role) {
        let ctx = self.ctx.as_mut().expect("in a handoff");
        ctx.frames[role.index()] += 1;
        let n = ctx.frames[role.index()];
        if ctx.plan.crashes.contains(&(role, Trigger::AfterFrames(n))) {
            self.crash(role);
        }
    }

    /// Injects the planned crash of `role`, if it can still crash.
    pub(super) fn crash(&mut self, role: Role) {
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
    pub(super) fn kill(&mut self, pid: Pid, why: &str) {
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

    // ------------------------------------------------------------ probation

    /// After the supervisor read: if `Ready` just put the successor on
    /// probation, note when, queue the writes aimed at the window and
    /// schedule its fault.
    pub(super) fn note_probation(&mut self) {
        if !self.sup_on_probation() {
            return;
        }
        let now = self.now;
        let ctx = self.ctx.as_mut().expect("in a handoff");
        if ctx.probation_since.is_some() {
            return;
        }
        ctx.probation_since = Some(now);
        ctx.probation_fault_at = ctx.plan.probation.fault.map(|(_, after)| now + after);
        let writes: Vec<Instant> = ctx.plan.probation.writes.iter().map(|d| now + *d).collect();
        let fault = ctx.plan.probation.fault;
        self.stats.probations += 1;
        for t in writes {
            let i = self.pending_writes.partition_point(|w| *w <= t);
            self.pending_writes.insert(i, t);
        }
        self.log(|| format!("S puts the successor on probation; planned fault: {fault:?}"));
    }

    /// When the planned probation fault strikes, while it still can: the
    /// supervisor has the successor on probation and the successor lives (a
    /// failed probe also needs a supervisor that acts).
    pub(super) fn probation_fault_due(&self) -> Option<Instant> {
        let ctx = self.ctx.as_ref()?;
        let at = ctx.probation_fault_at?;
        let (fault, _) = ctx.plan.probation.fault?;
        let n = ctx.n_pid?;
        let ready = ctx.probation_fault.is_none()
            && self.sup_on_probation()
            && self.alive(n)
            && (fault != ProbationFault::ProbeFails || self.sup_can_act());
        ready.then_some(at)
    }

    /// The planned probation fault strikes.
    pub(super) fn strike_probation_fault(&mut self) {
        let now = self.now;
        let ctx = self.ctx.as_mut().expect("in a handoff");
        let (fault, _) = ctx.plan.probation.fault.expect("a planned fault");
        let n = ctx.n_pid.expect("a successor");
        ctx.probation_fault = Some(fault);
        self.stats.probation_faults[fault.index()] += 1;
        match fault {
            ProbationFault::Kill => self.kill(n, "crashes on probation"),
            ProbationFault::Freeze(lasts) => {
                let d = self.dm(n);
                d.stopped_until = Some(now + lasts);
                d.hung = true;
                self.log(|| format!("pid {n} is stopped on probation for {lasts:?}"));
            }
            ProbationFault::ProbeFails => {
                let run = self.sup.run.as_mut().expect("a run");
                run.m.handle_probe_failed(now, "GET /healthz: 503, 3 times");
                run.dirty = true;
                self.log(|| format!("S's health probe of pid {n} fails"));
            }
        }
    }

    // ------------------------------------------------------------- the lock

    /// Tries the lock once for `pid`, as `flock(LOCK_EX | LOCK_NB)`.
    pub(super) fn try_lock(&mut self, pid: Pid) -> bool {
        if self.lock.holder.is_none() {
            self.lock.holder = Some(pid);
            self.dm(pid).holds_lock = true;
            true
        } else {
            self.lock.holder == Some(pid)
        }
    }

    // ------------------------------------------------------------- clients

    pub(super) fn client_write(&mut self) -> Res {
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
                // The successor serves on probation: a rollback must keep
                // this write.
                let on_probation = self.sup_on_probation()
                    && self.ctx.as_ref().is_some_and(|c| c.n_pid == Some(pid));
                if on_probation {
                    self.ctx
                        .as_mut()
                        .expect("in a handoff")
                        .probation_acks
                        .push(id);
                    self.stats.probation_writes_acked += 1;
                }
                self.log(|| format!("pid {pid} acknowledges write {id}"));
                Ok(())
            }
            many => Err(format!("invariant 3: pids {many:?} all accept writes")),
        }
    }
}
