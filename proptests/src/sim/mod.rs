//! The deterministic simulation of whole handoffs.
//!
//! A case is a world (`world.rs`) with a serving incumbent under a
//! supervisor, and one to four handoffs in a row, each with its own randomly
//! drawn plan (`plan.rs`): budgets, daemon behaviour, network delays, and
//! usually at most one injected fault (a crash of any role at any step, a
//! frozen supervisor). About half the handoffs run with probation, and may
//! meet a fault of their own during the window: the successor killed,
//! stopped as by `SIGSTOP`, or failing the supervisor's health probe.
//! Everything random comes from one SplitMix64 stream seeded by the case's
//! number, so a seed replays exactly.
//!
//! The world checks docs/PROTOCOL.md section 7's invariants 1, 2 and 5 (and the
//! single-writer rule behind invariant 3) after every action, and once each
//! handoff has settled, invariants 6 and 7 and that no acknowledged write
//! was lost. A failure is returned, not panicked, so that the runner can
//! replay the seed with the trace switched on.
//!
//! The world is split by job: `world.rs` holds the shared state, the
//! handoff and the injected faults; `scheduler.rs` picks each next action
//! and moves the clock; `supervisor.rs` is the supervisor process around
//! `SupervisorHandoff` (monitor, cold starts, restarts);
//! `daemon.rs` the successor and incumbent processes around
//! `SuccessorSession` and `IncumbentSession`; `invariants.rs` the checks;
//! `net.rs` the byte pipes between them.

mod daemon;
mod invariants;
mod net;
mod plan;
mod scheduler;
mod supervisor;
mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::rng::Rng;

/// One of the three protocol roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The supervisor process (S).
    Supervisor,
    /// The daemon serving when the handoff began (O).
    Incumbent,
    /// The daemon spawned for the handoff (N).
    Successor,
}

impl Role {
    /// All three, in the order of docs/PROTOCOL.md section 1's table.
    pub const ALL: [Role; 3] = [Role::Supervisor, Role::Incumbent, Role::Successor];

    fn index(self) -> usize {
        self as usize
    }
}

/// Where a crash struck: the role, the step its machine was in, and how
/// many frames that role had written in this handoff.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CrashPoint {
    /// Who crashed.
    pub role: Role,
    /// The role's step (its machine's step, or what the process was doing
    /// outside a machine).
    pub step: String,
    /// Frames the role had written in this handoff.
    pub frames_sent: u32,
}

/// A bug planted in the simulated adapter or daemon, to show that the
/// checks catch it. The real machines are never changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sabotage {
    /// None: the world behaves as a correct adapter and daemon.
    #[default]
    None,
    /// The incumbent's adapter answers `AcquireLock` with "acquired"
    /// without taking the lock.
    IncumbentSkipsRelock,
    /// The successor's adapter answers `AcquireLock` with "acquired"
    /// without taking the lock.
    SuccessorSkipsLock,
    /// The successor opens the state as it was when it was spawned, not the
    /// sealed state.
    SuccessorOpensStaleState,
    /// The incumbent resumes after a seal with the state it had sealed
    /// instead of reopening the state on disk, so that it misses what a
    /// successor acknowledged before it was rolled back.
    IncumbentResumesSealedState,
}

/// How to run a case.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Record a human-readable trace of every action.
    pub trace: bool,
    /// Only healthy handoffs: no fault, no slow hook, small delays.
    pub healthy: bool,
    /// A planted bug (see [`Sabotage`]).
    pub sabotage: Sabotage,
}

/// What the simulation counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cases run.
    pub cases: u64,
    /// Handoffs started (a supervisor machine created).
    pub handoffs: u64,
    /// Handoffs that committed.
    pub committed: u64,
    /// Handoffs that aborted (the supervisor finished with an abort).
    pub aborted: u64,
    /// Handoffs whose supervisor died before finishing.
    pub unfinished: u64,
    /// Crashes injected, per role (supervisor, incumbent, successor).
    pub crashes: [u64; 3],
    /// Every distinct crash point reached.
    pub crash_points: BTreeSet<CrashPoint>,
    /// Supervisors frozen with their sockets open.
    pub freezes: u64,
    /// Supervisors restarted after dying.
    pub supervisor_restarts: u64,
    /// Restarted supervisors that found a journal left by a dead one.
    pub journals_found: u64,
    /// Daemons cold-started by the supervisor because none served.
    pub cold_starts: u64,
    /// Restarted supervisors whose cold start found an orphaned daemon of
    /// their predecessor serving (the system serves; the new supervisor
    /// reports it and exits, as the real binary does).
    pub orphans_left_serving: u64,
    /// Daemons the init system stopped along with a dead supervisor.
    pub orphans_stopped_by_init: u64,
    /// Successors left waiting for `Begin` by a supervisor frozen for good
    /// before it ever heartbeated them (they hold nothing; see the report).
    pub successors_stranded: u64,
    /// Handoffs in which two roles crashed.
    pub double_crashes: u64,
    /// The longest a handoff took to settle, faults and recovery included.
    pub longest_settle: Duration,
    /// Invariant checks evaluated.
    pub invariant_checks: u64,
    /// Scheduler actions taken.
    pub actions: u64,
    /// Client writes acknowledged.
    pub writes_acked: u64,
    /// Aborted handoffs, by reason.
    pub abort_reasons: BTreeMap<String, u64>,
    /// Handoffs whose supervisor put the successor on probation.
    pub probations: u64,
    /// Handoffs committed at `Ready` (probation off, or not offered by the
    /// incumbent).
    pub committed_at_ready: u64,
    /// Handoffs committed when the probation window ran out.
    pub probation_passed: u64,
    /// Handoffs committed before the window ran out, with the incumbent
    /// gone (nothing left to roll back to).
    pub probation_cut_short: u64,
    /// Handoffs rolled back during probation.
    pub probation_rollbacks: u64,
    /// Handoffs rolled back at `Ready` without probation (the health gate,
    /// or an abort racing the `Ready`).
    pub rolled_back_at_ready: u64,
    /// Faults struck during probation: kills, freezes, failed probes.
    pub probation_faults: [u64; 3],
    /// Handoffs committed although the successor was frozen on probation
    /// (its freeze outlasted the window or it did not heartbeat).
    pub frozen_successors_committed: u64,
    /// Client writes a successor acknowledged on probation.
    pub probation_writes_acked: u64,
    /// Of those, the writes of successors rolled back: the incumbent
    /// serves them again.
    pub probation_writes_kept: u64,
    /// Virtual time simulated.
    pub virtual_time: Duration,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &Stats) {
        self.cases += other.cases;
        self.handoffs += other.handoffs;
        self.committed += other.committed;
        self.aborted += other.aborted;
        self.unfinished += other.unfinished;
        for i in 0..3 {
            self.crashes[i] += other.crashes[i];
        }
        self.crash_points.extend(other.crash_points.iter().cloned());
        self.freezes += other.freezes;
        self.supervisor_restarts += other.supervisor_restarts;
        self.journals_found += other.journals_found;
        self.cold_starts += other.cold_starts;
        self.orphans_left_serving += other.orphans_left_serving;
        self.orphans_stopped_by_init += other.orphans_stopped_by_init;
        self.successors_stranded += other.successors_stranded;
        self.double_crashes += other.double_crashes;
        self.longest_settle = self.longest_settle.max(other.longest_settle);
        self.invariant_checks += other.invariant_checks;
        self.actions += other.actions;
        self.writes_acked += other.writes_acked;
        for (k, v) in &other.abort_reasons {
            *self.abort_reasons.entry(k.clone()).or_default() += v;
        }
        self.probations += other.probations;
        self.committed_at_ready += other.committed_at_ready;
        self.probation_passed += other.probation_passed;
        self.probation_cut_short += other.probation_cut_short;
        self.probation_rollbacks += other.probation_rollbacks;
        self.rolled_back_at_ready += other.rolled_back_at_ready;
        for i in 0..3 {
            self.probation_faults[i] += other.probation_faults[i];
        }
        self.frozen_successors_committed += other.frozen_successors_committed;
        self.probation_writes_acked += other.probation_writes_acked;
        self.probation_writes_kept += other.probation_writes_kept;
        self.virtual_time += other.virtual_time;
    }

    /// Aborts for `reason` (as the statistics name it, e.g.
    /// `SuccessorExited@Probation`).
    pub fn aborts_for(&self, reason: &str) -> u64 {
        self.abort_reasons.get(reason).copied().unwrap_or(0)
    }

    /// Distinct crash points reached by `role`.
    pub fn crash_points_of(&self, role: Role) -> usize {
        self.crash_points.iter().filter(|p| p.role == role).count()
    }

    /// Distinct (role, step) pairs reached by crashes of `role`.
    pub fn crash_steps_of(&self, role: Role) -> BTreeSet<&str> {
        self.crash_points
            .iter()
            .filter(|p| p.role == role)
            .map(|p| p.step.as_str())
            .collect()
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} cases, {} handoffs: {} committed, {} aborted, {} cut short by a dead supervisor",
            self.cases, self.handoffs, self.committed, self.aborted, self.unfinished
        )?;
        for role in Role::ALL {
            writeln!(
                f,
                "  {role:?}: {} crashes at {} distinct (step, frames sent) points over {} steps: {:?}",
                self.crashes[role.index()],
                self.crash_points_of(role),
                self.crash_steps_of(role).len(),
                self.crash_steps_of(role)
            )?;
        }
        writeln!(
            f,
            "  {} freezes, {} supervisor restarts ({} found a journal), {} cold starts, \
             {} orphans left serving, {} orphans stopped by the init system, \
             {} successors stranded by a supervisor frozen for good",
            self.freezes,
            self.supervisor_restarts,
            self.journals_found,
            self.cold_starts,
            self.orphans_left_serving,
            self.orphans_stopped_by_init,
            self.successors_stranded
        )?;
        writeln!(
            f,
            "  {} handoffs with two crashes; the longest took {:.1} s of virtual time to settle",
            self.double_crashes,
            self.longest_settle.as_secs_f64()
        )?;
        writeln!(
            f,
            "  probation: {} handoffs on probation ({} committed after the window, {} committed \
             early with the incumbent gone, {} rolled back); {} committed at Ready, {} rolled \
             back at Ready",
            self.probations,
            self.probation_passed,
            self.probation_cut_short,
            self.probation_rollbacks,
            self.committed_at_ready,
            self.rolled_back_at_ready
        )?;
        writeln!(
            f,
            "  on probation: {} successors killed, {} frozen ({} committed anyway), {} probes \
             failed; {} writes acknowledged, {} of them kept through a rollback",
            self.probation_faults[0],
            self.probation_faults[1],
            self.frozen_successors_committed,
            self.probation_faults[2],
            self.probation_writes_acked,
            self.probation_writes_kept,
        )?;
        writeln!(
            f,
            "  {} invariant checks over {} actions, {} writes acknowledged, {:.1} h of virtual time",
            self.invariant_checks,
            self.actions,
            self.writes_acked,
            self.virtual_time.as_secs_f64() / 3600.0
        )?;
        write!(f, "  abort reasons: {:?}", self.abort_reasons)
    }
}

/// The result of one case.
#[derive(Debug)]
pub struct CaseReport {
    /// The seed that replays it.
    pub seed: u64,
    /// The first invariant broken, with where and when.
    pub failure: Option<String>,
    /// What was counted.
    pub stats: Stats,
    /// The actions taken, if [`Options::trace`] was set.
    pub trace: Vec<String>,
}

/// Runs the case `seed`.
pub fn run_case(seed: u64, options: Options) -> CaseReport {
    let mut rng = Rng::new(seed);
    let world_rng = rng.fork();
    let mut w = world::World::new(world_rng, options);
    let handoffs = rng.between(1, 4);
    let mut failure = None;
    for _ in 0..handoffs {
        if !w.can_hand_off() {
            break;
        }
        let plan = if options.healthy {
            plan::Plan::healthy(&mut rng)
        } else {
            plan::Plan::random(&mut rng)
        };
        if let Err(e) = w.hand_off(plan) {
            failure = Some(format!("{e} (at {:?})", w.now()));
            break;
        }
    }
    let (mut stats, trace) = w.finish();
    stats.cases = 1;
    CaseReport {
        seed,
        failure,
        stats,
        trace,
    }
}
