//! The scheduler: what can happen next, and which of it does.
//!
//! Each step, the scheduler lists every action that could happen now (a
//! process carrying out its machine's next output, reading a chunk, firing a
//! due timer or hook, the kernel freeing a dead process's lock, a client
//! write arriving) and picks one at random, so every interleaving of the
//! processes can occur. Only when nothing can happen does the clock jump to
//! the next instant anything is due. A process with outputs still queued
//! takes no input until they are carried out: that is the calling contract
//! every adapter keeps.

use std::time::Duration;

use handoff_core::{Instant, Side};

use super::Role;
use super::daemon::Daemon;
use super::net::Readable;
use super::plan::Trigger;
use super::supervisor::Cold;
use super::world::{Pid, Res, World};

/// A handoff, with every fault, must settle within this much virtual time.
const SETTLE_LIMIT: Duration = Duration::from_secs(30 * 60);
/// And within this many actions.
const ACTION_LIMIT: u32 = 500_000;

/// One thing that can happen now.
#[derive(Clone, Copy, Debug)]
enum Act {
    SupPump,
    SupRead(Side),
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
    Continue(Pid),
    FreeLock,
    ClientWrite,
    ProbationFault,
}

/// The earlier of two instants, either of which may be absent.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Whether `t` is set and has come.
fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

impl World {
    pub(super) fn run_until_settled(&mut self, start: Instant) -> Res {
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
                        for peer in [Side::Incumbent, Side::Successor] {
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
            if due(d.stopped_until, now) {
                v.push(Act::Continue(pid));
            }
            if d.dirty {
                // A hung or stopped process carries out nothing.
                if !d.hung {
                    v.push(Act::Pump(pid));
                }
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
        if due(self.probation_fault_due(), now) {
            v.push(Act::ProbationFault);
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
            // A successor on probation whose supervisor froze for good
            // gives it up after the liveness limit: its timers run.
            add(d.timer());
            add(d.stopped_until);
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
        add(self.probation_fault_due());
        t
    }

    fn perform(&mut self, act: Act) -> Res {
        match act {
            Act::SupPump => self.sup_pump(),
            Act::SupRead(peer) => self.sup_read(peer),
            Act::SupTimeout => self.sup_timeout(),
            Act::SupExitReport => {
                self.sup_reap();
                Ok(())
            }
            Act::SupThaw => {
                self.sup_thaw();
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
                self.sup_unpark();
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
            Act::Continue(pid) => {
                self.successor_continues(pid);
                Ok(())
            }
            Act::ProbationFault => {
                self.strike_probation_fault();
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
}
