//! The supervisor process: what drives handoff-core's `SupervisorHandoff`
//! in the simulated world, and the process around it.
//!
//! The supervisor process behaves as the `handoff-supervisor` binary does
//! around the machine: its monitor starts a daemon cold when the one it
//! watches has died outside a handoff (pausing 100 ms doubling to 10 s while
//! starts keep failing); after its own death the init system restarts it,
//! and it reads and deletes the journal, then starts a daemon cold. Its
//! children outlive it unless the case's init system stops the whole
//! service with it (systemd's default): half the cases each way.

use std::time::Duration;

use handoff_core::{
    AbortReason, Instant, JournalRecord, Side, Signal, SupervisorHandoff, SupervisorOutput,
};

use super::daemon::{COLD_LOCK_WINDOW, COLD_STARTUP_MAX_MS};
use super::net::{ConnId, Readable};
use super::plan::ProbationFault;
use super::world::{Pid, Res, SAME_INSTANT_TIMEOUTS, World, frame_name};
use super::{Role, Sabotage};

pub(super) type Sup = SupervisorHandoff<Vec<u8>>;

// The supervisor binary's restart pacing, modelled here. The binary's own
// are private items of `supervisor/src/monitor.rs` (`QUICK_DEATH`,
// `FIRST_BACKOFF`, `MAX_BACKOFF`, `next_backoff`), and this crate does not
// depend on `handoff-supervisor`, so this is the simulation's one copy of
// them: change it when they change.

/// A daemon that dies sooner than this after it started is failing at
/// start (`QUICK_DEATH` in `supervisor/src/monitor.rs`).
const QUICK_DEATH: Duration = Duration::from_secs(1);
/// The first pause after a quick death (`FIRST_BACKOFF` there).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between restarts (`MAX_BACKOFF` there).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The pause before the next cold start, after one of `prev`
/// (`next_backoff` in `supervisor/src/monitor.rs`).
fn next_backoff(prev: Duration) -> Duration {
    if prev.is_zero() {
        FIRST_BACKOFF
    } else {
        (prev * 2).min(MAX_BACKOFF)
    }
}

/// A cold start the supervisor is waiting on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cold {
    /// For a restarted supervisor (its own start-up), not its monitor.
    at_restart: bool,
    pub(super) due: Instant,
    pub(super) pid: Option<Pid>,
    backoff: Duration,
}

/// The supervisor's one handoff in flight.
pub(super) struct Run {
    pub(super) m: Sup,
    pub(super) dirty: bool,
    pub(super) o_conn: Option<ConnId>,
    pub(super) n_conn: Option<ConnId>,
    pub(super) n_pid: Option<Pid>,
    pub(super) finished: bool,
    journal_failure_reported: bool,
    same_instant_timeouts: (Instant, u32),
}

impl Run {
    /// A handoff just begun, with outputs to carry out.
    pub(super) fn new(m: Sup) -> Self {
        Run {
            m,
            dirty: true,
            o_conn: None,
            n_conn: None,
            n_pid: None,
            finished: false,
            journal_failure_reported: false,
            same_instant_timeouts: (Instant::ZERO, 0),
        }
    }

    pub(super) fn conn(&self, peer: Side) -> Option<ConnId> {
        match peer {
            Side::Incumbent => self.o_conn,
            Side::Successor => self.n_conn,
        }
    }
}

/// The supervisor process: its handoff and its monitor.
pub(super) struct Supervisor {
    pub(super) generation: u32,
    pub(super) alive: bool,
    /// A restarted supervisor's cold start found a daemon of its
    /// predecessor serving, so the binary reported it and exited. The init
    /// system restarts it again and again, each start failing the same way
    /// while that daemon serves; the simulation parks it instead and
    /// restarts it once no daemon serves.
    pub(super) parked: bool,
    pub(super) frozen_until: Option<Instant>,
    /// Frozen for good: it never acts again, and its sockets stay open.
    pub(super) frozen_for_good: bool,
    pub(super) killed_at_thaw: bool,
    pub(super) restart_at: Option<Instant>,
    /// The daemon it watches (the service's `incumbent`).
    pub(super) tracked: Option<Pid>,
    pub(super) run: Option<Run>,
    pub(super) cold: Option<Cold>,
}

/// The supervisor's final word on a handoff.
#[derive(Clone, Copy, Debug)]
pub(super) struct Outcome {
    pub(super) result: Result<(), AbortReason>,
    /// The successor served (sent `Ready`) and was rolled back.
    pub(super) rolled_back: bool,
    /// The window, if the successor was put on probation.
    pub(super) probation_window: Option<Duration>,
    /// How long the probation lasted, if there was one.
    pub(super) probation: Option<Duration>,
}

// An output copied out of the machine: an output borrows its machine, and
// carrying it out needs the whole world.
enum SupOut {
    Connect,
    Transmit(Side, Vec<u8>),
    Spawn,
    Signal(Signal),
    Disconnect(Side),
    Journal(JournalRecord),
    ClearJournal,
    Finished(Outcome),
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
    // ------------------------------------------------- when it can act

    pub(super) fn sup_can_act(&self) -> bool {
        self.sup.alive && self.sup.frozen_until.is_none() && !self.sup.frozen_for_good
    }

    /// The supervisor's handoff has the successor on probation.
    pub(super) fn sup_on_probation(&self) -> bool {
        self.sup
            .run
            .as_ref()
            .is_some_and(|r| !r.finished && r.m.on_probation())
    }

    pub(super) fn exit_report_time(&self) -> Option<Instant> {
        let run = self.sup.run.as_ref()?;
        if run.finished {
            return None;
        }
        let d = self.d(run.n_pid?);
        (!d.alive && !d.exit_reported && d.parent == self.sup.generation)
            .then_some(d.exit_report_at)
            .flatten()
    }

    pub(super) fn monitor_ready(&self) -> bool {
        let s = &self.sup;
        self.sup_can_act()
            && !s.parked
            && s.cold.is_none()
            && s.run.as_ref().is_none_or(|r| r.finished)
            && s.tracked.is_none_or(|p| !self.alive(p))
    }

    pub(super) fn cold_ready(&self) -> bool {
        if !self.sup_can_act() {
            return false;
        }
        match self.sup.cold {
            Some(Cold { pid: None, due, .. }) => due <= self.now,
            Some(Cold { pid: Some(p), .. }) => self.d(p).serving() || !self.alive(p),
            None => false,
        }
    }

    // ---------------------------------------------------- its machine

    pub(super) fn sup_pump(&mut self) -> Res {
        let run = self.sup.run.as_mut().expect("a run");
        let out = match run.m.poll_output() {
            None => {
                run.dirty = false;
                return Ok(());
            }
            Some(SupervisorOutput::ConnectIncumbent) => SupOut::Connect,
            Some(SupervisorOutput::Transmit { to, frame }) => SupOut::Transmit(to, frame.to_vec()),
            // The simulated daemons never offer `PASS_CONNECTIONS`.
            Some(SupervisorOutput::TransmitWithChannelEnd { to, frame }) => {
                return Err(format!(
                    "S passes a channel end to the {to} ({}) though no daemon offers PASS_CONNECTIONS",
                    frame_name(frame)
                ));
            }
            Some(SupervisorOutput::SpawnSuccessor) => SupOut::Spawn,
            Some(SupervisorOutput::Signal(s)) => SupOut::Signal(s),
            Some(SupervisorOutput::Disconnect(p)) => SupOut::Disconnect(p),
            Some(SupervisorOutput::WriteJournal(r)) => SupOut::Journal(r),
            Some(SupervisorOutput::ClearJournal) => SupOut::ClearJournal,
            Some(SupervisorOutput::Finished(o)) => SupOut::Finished(Outcome {
                result: o.result,
                rolled_back: o.rolled_back(),
                probation_window: o.probation_window,
                probation: o.timings.probation,
            }),
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
                    let d = self.d(n);
                    let (ignores, stopped) = (d.sb.ignores_term, d.stopped_until.is_some());
                    match sig {
                        Signal::Terminate if ignores => {
                            self.log(|| "N ignores SIGTERM".into());
                        }
                        Signal::Terminate if stopped => {
                            // A stopped process acts on it when continued.
                            self.dm(n).term_pending = true;
                            self.log(|| "N is stopped: SIGTERM stays pending".into());
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
                self.count_probation_outcome(&outcome);
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

    /// Counts how a handoff ended with respect to probation.
    fn count_probation_outcome(&mut self, o: &Outcome) {
        let st = &mut self.stats;
        match (o.probation_window, o.result.is_ok()) {
            (None, true) => st.committed_at_ready += 1,
            (Some(w), true) if o.probation.is_some_and(|p| p >= w) => st.probation_passed += 1,
            (Some(_), true) => st.probation_cut_short += 1,
            (Some(_), false) => st.probation_rollbacks += 1,
            (None, false) if o.rolled_back => st.rolled_back_at_ready += 1,
            (None, false) => {}
        }
        let ctx = self.ctx.as_ref().expect("in a handoff");
        if o.result.is_ok() && matches!(ctx.probation_fault, Some(ProbationFault::Freeze(_))) {
            st.frozen_successors_committed += 1;
        }
    }

    pub(super) fn sup_read(&mut self, peer: Side) -> Res {
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
                // `Ready` may have put the successor on probation.
                self.note_probation();
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

    pub(super) fn sup_timeout(&mut self) -> Res {
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

    /// The successor's exit reaches the supervisor (it reaps N).
    pub(super) fn sup_reap(&mut self) {
        let now = self.now;
        let run = self.sup.run.as_mut().expect("a run");
        let n = run.n_pid.expect("a successor");
        run.m.handle_successor_exited(now);
        run.dirty = true;
        self.dm(n).exit_reported = true;
        self.log(|| format!("S reaps N (pid {n})"));
    }

    /// A frozen supervisor's freeze ends: it thaws, or a watchdog kills it.
    pub(super) fn sup_thaw(&mut self) {
        self.sup.frozen_until = None;
        if self.sup.killed_at_thaw {
            self.log(|| "a watchdog kills the frozen S".into());
            self.crash_supervisor();
        } else {
            self.log(|| "S thaws".into());
        }
    }

    // ------------------------------------ its monitor, death and restarts

    /// The supervisor binary's monitor: the daemon it watched is gone and
    /// no handoff runs, so it starts one cold, pausing while it keeps dying.
    pub(super) fn monitor(&mut self) {
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

    pub(super) fn cold_progress(&mut self) -> Res {
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

    pub(super) fn restart_supervisor(&mut self) {
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

    /// No daemon serves any more, so the parked supervisor's next restart
    /// by the init system would succeed: schedule it.
    pub(super) fn sup_unpark(&mut self) {
        let delay = self
            .ctx
            .as_ref()
            .map_or(Duration::from_secs(1), |c| c.plan.supervisor_restart_delay);
        self.sup.parked = false;
        self.sup.restart_at = Some(self.now + delay);
        self.log(|| "no daemon serves: the init system's next restart of S will start one".into());
    }

    pub(super) fn crash_supervisor(&mut self) {
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
}
