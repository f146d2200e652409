//! The invariant checks: docs/PROTOCOL.md section 7's invariants 1, 2 and 5
//! (and the single-writer rule behind invariant 3) after every action, and
//! once a handoff has settled, invariants 6 and 7 and that no acknowledged
//! write was lost (those a successor acknowledged on probation included:
//! after a rollback the incumbent must serve them), that the control socket
//! path names the daemon that serves, and that a successor killed or
//! failing its health probe on probation was rolled back. The adapters
//! check what they can at the moment they act (a lock released without a
//! seal, a state opened without the lock); these check the whole world.

use handoff_core::SuccessorStep;

use super::daemon::Daemon;
use super::plan::ProbationFault;
use super::world::{Pid, Res, World};

impl World {
    /// What must hold after every action.
    pub(super) fn check_invariants(&mut self) -> Res {
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
    pub(super) fn check_settled(&mut self) -> Res {
        self.stats.invariant_checks += 7;
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
        // A successor on probation gives a supervisor frozen for good up
        // after the liveness limit; settled, none is left heartbeating.
        if self.d(p).suc.as_ref().is_some_and(|m| m.on_probation()) {
            return Err(format!(
                "the serving pid {p} is still on probation once settled"
            ));
        }
        if self.lock.holder != Some(p) {
            return Err(format!(
                "the serving pid {p} is not the lock's holder {:?}",
                self.lock.holder
            ));
        }
        // The next handoff must reach it: a rolled-back successor had
        // renamed its control socket over the path, and the incumbent that
        // took its lock back took the path back too.
        if self.control_owner != Some(p) || !self.d(p).control {
            return Err(format!(
                "the control socket path names pid {:?}, not the serving pid {p}",
                self.control_owner
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
                // Struck early enough in the window to be heard of in it
                // (a freeze may pass unseen: it is not judged here).
                Some(Ok(()))
                    if matches!(
                        ctx.probation_fault,
                        Some(ProbationFault::Kill | ProbationFault::ProbeFails)
                    ) =>
                {
                    return Err(format!(
                        "committed, though the successor met {:?} on probation",
                        ctx.probation_fault
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
        // Every write acknowledged on probation is in the state checked
        // above; count those that a rollback had to keep.
        if ctx
            .outcome
            .is_some_and(|o| o.probation_window.is_some() && o.result.is_err())
            && p == ctx.o_pid
        {
            self.stats.probation_writes_kept += ctx.probation_acks.len() as u64;
        }
        self.log(|| format!("settled: pid {p} serves with every acknowledged write"));
        Ok(())
    }
}
