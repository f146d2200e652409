//! What one simulated handoff will suffer, drawn from the case's PRNG before
//! it starts: the supervisor's budgets, how each daemon behaves, the network
//! delays, and which fault strikes when.
//!
//! Most handoffs are healthy or meet one fault, so that every step is
//! reached often; the probabilities are chosen for coverage of the crash
//! points, not to imitate production.

use std::time::Duration;

use handoff_core::SupervisorConfig;

use super::Role;
use crate::rng::Rng;

/// How the incumbent's daemon behaves during this handoff.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IncumbentBehaviour {
    pub(crate) drain_time: Duration,
    pub(crate) drain_fails: bool,
    pub(crate) seal_time: Duration,
    pub(crate) seal_fails: bool,
    pub(crate) seal_progress_every: Option<Duration>,
    pub(crate) resume_time: Duration,
    pub(crate) resume_fails: bool,
}

impl IncumbentBehaviour {
    /// A daemon that does everything quickly and well.
    pub(crate) fn healthy() -> Self {
        IncumbentBehaviour {
            drain_time: Duration::from_millis(3),
            drain_fails: false,
            seal_time: Duration::from_millis(2),
            seal_fails: false,
            seal_progress_every: None,
            resume_time: Duration::from_millis(1),
            resume_fails: false,
        }
    }
}

/// How the successor binary behaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SuccessorBehaviour {
    /// Start-up work before its `Hello`.
    pub(crate) startup: Duration,
    /// Its start-up never ends: no `Hello`, ever.
    pub(crate) never_hello: bool,
    /// Announces a pid other than its own.
    pub(crate) lie_about_pid: bool,
    /// From `Start` (lock held) until it serves.
    pub(crate) after_begin: Duration,
    /// After `Start` the whole process hangs: no reads, no timers.
    pub(crate) hang_after_begin: bool,
    pub(crate) start_fails: bool,
    pub(crate) ignores_term: bool,
}

impl SuccessorBehaviour {
    /// A successor that starts and serves quickly.
    pub(crate) fn healthy() -> Self {
        SuccessorBehaviour {
            startup: Duration::from_millis(1),
            never_hello: false,
            lie_about_pid: false,
            after_begin: Duration::from_millis(2),
            hang_after_begin: false,
            start_fails: false,
            ignores_term: false,
        }
    }
}

/// When an injected crash strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Right after the role wrote its n-th frame of this handoff.
    AfterFrames(u32),
    /// After the world's n-th action of this handoff, if the role is alive.
    AtAction(u32),
}

/// A supervisor that stops in its tracks with its sockets open.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Freeze {
    pub(crate) at_action: u32,
    /// How long; `None` for good: nothing ever thaws or kills it, and the
    /// daemons must get out of its way by themselves (docs/PROTOCOL.md section 4).
    pub(crate) lasts: Option<Duration>,
    /// At the end of the freeze a watchdog kills it rather than it thawing.
    pub(crate) then_killed: bool,
}

/// Everything drawn for one handoff.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) supervisor: SupervisorConfig,
    pub(crate) incumbent: IncumbentBehaviour,
    pub(crate) successor: SuccessorBehaviour,
    pub(crate) spawn_fails: bool,
    /// Crashes to inject: usually none or one, sometimes two of different
    /// roles (a crash during the recovery from another).
    pub(crate) crashes: Vec<(Role, Trigger)>,
    pub(crate) freeze: Option<Freeze>,
    /// The longest delay of one write on any connection.
    pub(crate) max_net_delay: Duration,
    /// Per mille of reads that take a single byte.
    pub(crate) bytewise_reads: u64,
    /// How long a dead process's lock FD takes to close, at most.
    pub(crate) max_lock_release_delay: Duration,
    /// How long before a parent hears that its child exited, at most.
    pub(crate) max_exit_report_delay: Duration,
    /// From a supervisor's death until its restart.
    pub(crate) supervisor_restart_delay: Duration,
    /// Client writes, as offsets from the start of the handoff.
    pub(crate) writes: Vec<Duration>,
    /// A journal write fails (reported to the machine).
    pub(crate) journal_fails: bool,
}

fn short_or_long(rng: &mut Rng, long_per_mille: u64, short_ms: u64, long_ms: u64) -> Duration {
    if rng.chance(long_per_mille) {
        rng.millis(short_ms, long_ms)
    } else {
        rng.millis(0, short_ms)
    }
}

impl Plan {
    /// A handoff with no fault at all: it must commit.
    pub(crate) fn healthy() -> Self {
        Plan {
            supervisor: SupervisorConfig::default(),
            incumbent: IncumbentBehaviour::healthy(),
            successor: SuccessorBehaviour::healthy(),
            spawn_fails: false,
            crashes: Vec::new(),
            freeze: None,
            max_net_delay: Duration::from_millis(1),
            bytewise_reads: 100,
            max_lock_release_delay: Duration::ZERO,
            max_exit_report_delay: Duration::ZERO,
            supervisor_restart_delay: Duration::from_millis(500),
            writes: vec![Duration::ZERO, Duration::from_millis(4)],
            journal_fails: false,
        }
    }

    /// A random handoff.
    pub(crate) fn random(rng: &mut Rng) -> Self {
        let deadline = rng.millis(8_000, 60_000);
        let supervisor = SupervisorConfig {
            deadline,
            drain_grace: rng.millis(1_000, 25_000),
            startup_budget: rng.millis(1_000, 30_000),
            ..SupervisorConfig::default()
        };
        let mut incumbent = IncumbentBehaviour {
            drain_time: short_or_long(rng, 120, 300, 40_000),
            drain_fails: rng.chance(20),
            seal_time: short_or_long(rng, 120, 300, 70_000),
            seal_fails: rng.chance(50),
            seal_progress_every: rng.chance(200).then(|| rng.millis(500, 5_000)),
            resume_time: rng.millis(0, 50),
            resume_fails: rng.chance(15),
        };
        let mut successor = SuccessorBehaviour {
            startup: short_or_long(rng, 100, 300, 40_000),
            never_hello: rng.chance(30),
            lie_about_pid: rng.chance(10),
            after_begin: short_or_long(rng, 100, 300, 70_000),
            hang_after_begin: rng.chance(30),
            start_fails: rng.chance(30),
            ignores_term: rng.chance(150),
        };
        let mut crashes = Vec::new();
        let mut draw_crash = |rng: &mut Rng| {
            let role = match rng.below(3) {
                0 => Role::Supervisor,
                1 => Role::Incumbent,
                _ => Role::Successor,
            };
            let trigger = if rng.chance(500) {
                Trigger::AfterFrames(rng.between(1, 9) as u32)
            } else {
                Trigger::AtAction(rng.below(160) as u32)
            };
            if !crashes.iter().any(|(r, _)| *r == role) {
                crashes.push((role, trigger));
            }
        };
        if rng.chance(550) {
            draw_crash(rng);
            if rng.chance(120) {
                draw_crash(rng);
            }
        }
        let freeze = (crashes.is_empty() && rng.chance(80)).then(|| Freeze {
            at_action: rng.below(120) as u32,
            lasts: (!rng.chance(250)).then(|| rng.millis(500, 120_000)),
            then_killed: rng.chance(500),
        });
        let frozen_for_good = freeze.is_some_and(|f| f.lasts.is_none());
        let supervisor_may_vanish = frozen_for_good
            || freeze.is_some_and(|f| f.then_killed)
            || crashes.iter().any(|(r, _)| *r == Role::Supervisor);
        if supervisor_may_vanish {
            // A successor stuck for ever, whose supervisor is gone, can only
            // be ended by a person: no protocol can break its flock or its
            // start-up. Such a pair is outside what invariant 7 promises.
            successor.never_hello = false;
            successor.hang_after_begin = false;
        }
        if frozen_for_good {
            // Both leave nobody serving until the supervisor binary starts
            // a daemon again (a daemon whose resume fails exits; a
            // successor that fails to start after the incumbent gave way to
            // its lock exits), which a supervisor frozen for good never will.
            incumbent.resume_fails = false;
            successor.start_fails = false;
        }
        let max_net_delay = match rng.below(10) {
            0 => Duration::ZERO,
            1..=5 => rng.millis(0, 5),
            6..=8 => rng.millis(0, 100),
            _ => rng.millis(0, 2_500),
        };
        // Half the writes land while the handoff is in its first moments,
        // where a write acknowledged at the wrong time would be lost.
        let writes = (0..rng.below(12))
            .map(|_| {
                if rng.chance(500) {
                    rng.millis(0, 300)
                } else {
                    rng.millis(0, 90_000)
                }
            })
            .collect();
        Plan {
            supervisor,
            incumbent,
            successor,
            spawn_fails: rng.chance(15),
            crashes,
            freeze,
            max_net_delay,
            bytewise_reads: [0, 50, 300, 1000][rng.index(4)],
            max_lock_release_delay: rng.millis(0, 300),
            max_exit_report_delay: rng.millis(0, 50),
            supervisor_restart_delay: rng.millis(100, 5_000),
            writes,
            journal_fails: rng.chance(20),
        }
    }
}
