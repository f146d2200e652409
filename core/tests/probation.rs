//! Probation and the health gate (docs/PROTOCOL.md section 10) with the
//! three real machines in the simulated world of `common`: every way a
//! successor can fail after `Ready` ends with the old process serving with
//! its lock, and a successor that does not fail is committed after the
//! window.

mod common;

use std::time::Duration;

use common::*;
use handoff_core::{
    AbortReason, Capabilities, EndCause, IncumbentEnd, IncumbentFate, Instant, Signal,
    SuccessorEnd, SupervisorConfig, SupervisorStep,
};

const WINDOW: Duration = Duration::from_secs(5);

/// A world whose incumbent and successor both offer probation.
fn world() -> World {
    let mut w = World::new();
    w.incumbent_cfg.capabilities = Capabilities::PROBATION;
    w.successor_cfg.capabilities = Capabilities::PROBATION;
    w
}

fn cfg() -> SupervisorConfig {
    SupervisorConfig {
        probation: WINDOW,
        ..SupervisorConfig::default()
    }
}

fn on_probation(w: &World) -> bool {
    w.supervisor
        .as_ref()
        .is_some_and(|s| s.step() == SupervisorStep::Probation)
}

/// Runs a handoff until the successor is on probation, then `ms` more.
fn until_probation(w: &mut World, ms: u64) {
    w.start_handoff(cfg());
    w.run_until(on_probation);
    let t = w.now + Duration::from_millis(ms);
    w.run_until(|w| w.now >= t);
    assert!(on_probation(w), "still on probation {ms} ms after Ready");
}

fn finish(w: &mut World) -> OwnedOutcome {
    w.run();
    w.outcome.clone().expect("the supervisor finished")
}

/// Rolled back: the old process serves with its lock, the successor is
/// gone, and the outcome says it served first.
fn assert_rolled_back_with(w: &World, out: &OwnedOutcome, reason: AbortReason) {
    let died = AbortReason::SuccessorExited {
        step: SupervisorStep::Probation,
    };
    let closed = AbortReason::SuccessorClosed {
        step: SupervisorStep::Probation,
    };
    // A killed successor's socket closes as it exits; which of the two the
    // supervisor hears first is a race, and both mean it died.
    if reason == died && out.result == Err(closed) {
        return assert_rolled_back_with(w, out, closed);
    }
    assert_eq!(out.result, Err(reason), "{}", w.trace.join("\n"));
    assert!(out.rolled_back);
    w.assert_rolled_back();
    assert_eq!(out.incumbent_fate, IncumbentFate::ToldToResume);
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::HandoffAborted)]
    );
}

#[test]
fn a_successor_that_does_not_fail_is_committed_after_the_window() {
    let mut w = world();
    w.start_handoff(cfg());
    w.run_until(on_probation);
    let ready_at = w.now;
    // The old process is still alive, sealed, without the lock.
    assert!(w.incumbent.alive);
    assert!(!w.incumbent.holds_lock);
    let out = finish(&mut w);

    assert!(out.committed(), "{:?}", out.result);
    w.assert_handed_off();
    assert_eq!(out.probation_window, Some(WINDOW));
    assert_eq!(out.timings.probation, Some(WINDOW));
    assert!(w.now >= ready_at + WINDOW);
    assert_eq!(out.incumbent_fate, IncumbentFate::Committed);
    assert_eq!(w.incumbent.ends, vec![IncumbentEnd::Committed]);
    assert!(!out.rolled_back);
}

#[test]
fn without_probation_on_both_sides_the_handoff_commits_at_ready() {
    // An incumbent that does not offer probation (a reference one): the
    // window is not used, whatever the supervisor's configuration.
    let mut w = World::new();
    w.successor_cfg.capabilities = Capabilities::PROBATION;
    w.start_handoff(cfg());
    let out = finish(&mut w);
    assert!(out.committed());
    w.assert_handed_off();
    assert_eq!(out.probation_window, None);
    assert_eq!(out.timings.probation, None);

    // Probation off in the supervisor: likewise.
    let mut w = world();
    w.start_handoff(SupervisorConfig::default());
    let out = finish(&mut w);
    assert!(out.committed());
    assert_eq!(out.probation_window, None);
}

#[test]
fn a_successor_killed_50ms_after_ready_is_rolled_back() {
    let mut w = world();
    until_probation(&mut w, 50);
    w.kill_successor();
    let out = finish(&mut w);
    assert_rolled_back_with(
        &w,
        &out,
        AbortReason::SuccessorExited {
            step: SupervisorStep::Probation,
        },
    );
    assert!(out.timings.probation.unwrap() < WINDOW);
}

#[test]
fn a_frozen_successor_is_killed_and_rolled_back() {
    let mut w = world();
    until_probation(&mut w, 300);
    w.freeze_successor();
    // A stopped process does not act on SIGTERM; SIGKILL ends it.
    w.successor_behavior.ignores_term = true;
    let frozen_at = w.now;
    let out = finish(&mut w);
    assert_rolled_back_with(&w, &out, AbortReason::SuccessorUnresponsive);
    assert_eq!(w.signals, vec![Signal::Terminate, Signal::Kill]);
    // Seen within the probation liveness limit of its last heartbeat.
    let seen = frozen_at + SupervisorConfig::default().probation_liveness;
    assert!(out.timings.probation.is_some());
    assert!(w.now <= seen + 2 * SupervisorConfig::default().kill_grace + WINDOW);
}

#[test]
fn a_failed_health_probe_rolls_back_with_its_detail() {
    let mut w = world();
    until_probation(&mut w, 1_000);
    let now = w.now;
    w.supervisor
        .as_mut()
        .unwrap()
        .handle_probe_failed(now, "exec `check`: exit status 3");
    let out = finish(&mut w);
    assert_rolled_back_with(&w, &out, AbortReason::HealthProbeFailed);
    assert_eq!(
        out.probe_failure.as_deref(),
        Some("exec `check`: exit status 3")
    );
}

#[test]
fn a_probe_failure_outside_probation_changes_nothing() {
    let mut w = world();
    w.start_handoff(cfg());
    let now = w.now;
    w.supervisor
        .as_mut()
        .unwrap()
        .handle_probe_failed(now, "too early");
    let out = finish(&mut w);
    assert!(out.committed());
    assert_eq!(out.probe_failure, None);
}

#[test]
fn ready_with_healthz_false_is_rolled_back_with_or_without_probation() {
    for probation in [true, false] {
        let mut w = if probation { world() } else { World::new() };
        w.successor_behavior.healthz_ok = false;
        w.start_handoff(cfg());
        let out = finish(&mut w);
        assert_rolled_back_with(&w, &out, AbortReason::Unhealthy);
        assert_eq!(out.ready_healthz_ok, Some(false));
    }
}

#[test]
fn ready_advertising_revisions_behind_the_seal_is_rolled_back() {
    // The seal reported [0, 41, MAX]; shard 1 is one behind.
    let mut w = world();
    w.successor_behavior.advertised = Some(&[0, 40, u64::MAX]);
    w.start_handoff(cfg());
    let out = finish(&mut w);
    assert_rolled_back_with(
        &w,
        &out,
        AbortReason::RevisionsBehind {
            shard: 1,
            sealed: 41,
            advertised: 40,
        },
    );
    assert!(
        out.result
            .unwrap_err()
            .to_string()
            .starts_with("revisions behind: shard 1")
    );
}

#[test]
fn revisions_ahead_or_of_another_layout_are_not_judged_behind() {
    for advertised in [&[0, 41, u64::MAX, 7][..], &[5, 50, u64::MAX][..], &[][..]] {
        let mut w = world();
        w.successor_behavior.advertised = Some(advertised);
        w.start_handoff(cfg());
        let out = finish(&mut w);
        assert!(out.committed(), "{advertised:?}: {:?}", out.result);
    }
}

#[test]
fn the_incumbent_dying_during_probation_commits_at_once() {
    let mut w = world();
    until_probation(&mut w, 100);
    let t = w.now;
    w.kill_incumbent();
    let out = finish(&mut w);
    assert!(out.committed());
    w.assert_handed_off();
    assert_eq!(out.incumbent_fate, IncumbentFate::Gone);
    // Nothing to roll back to, so no reason to wait out the window.
    assert!(out.timings.probation.unwrap() < WINDOW);
    assert!(w.now < t + WINDOW);
}

#[test]
fn the_supervisor_dying_during_probation_leaves_the_successor_serving() {
    let mut w = world();
    until_probation(&mut w, 100);
    w.kill_supervisor();
    w.run();
    // The old process cannot take the lock from the live successor.
    assert!(!w.incumbent.alive);
    assert!(matches!(
        w.incumbent.ends.as_slice(),
        [IncumbentEnd::Superseded(_)]
    ));
    assert!(w.successor.as_ref().unwrap().serving());
    assert_eq!(w.serving_count(), 1);
}

#[test]
fn a_window_longer_than_the_deadline_is_covered_by_the_incumbents_own_deadline() {
    // Without the incumbent extending its deadline on `Probation`, it would
    // give up at deadline + slack (16 s) and the rollback would find
    // nobody to resume.
    let mut w = world();
    let cfg = SupervisorConfig {
        deadline: Duration::from_secs(10),
        probation: Duration::from_secs(30),
        ..SupervisorConfig::default()
    };
    w.start_handoff(cfg);
    w.run_until(on_probation);
    let t = w.now + Duration::from_secs(25);
    w.run_until(|w| w.now >= t);
    assert!(w.incumbent.alive, "{}", w.trace.join("\n"));
    w.kill_successor();
    let out = finish(&mut w);
    assert_rolled_back_with(
        &w,
        &out,
        AbortReason::SuccessorExited {
            step: SupervisorStep::Probation,
        },
    );
}

#[test]
fn a_successor_on_probation_heartbeats_until_the_supervisor_closes() {
    let mut w = world();
    w.start_handoff(cfg());
    w.run_until(on_probation);
    let before = w.frames_sent[Role::Successor as usize];
    let t = w.now + Duration::from_secs(2);
    w.run_until(|w| w.now >= t);
    let beats = w.frames_sent[Role::Successor as usize] - before;
    // Every 250 ms: about eight in two seconds.
    assert!((7..=9).contains(&beats), "{beats} heartbeats");
    let out = finish(&mut w);
    assert!(out.committed());
    let n = w.successor.as_ref().unwrap();
    assert_eq!(
        n.end,
        Some(SuccessorEnd::Authoritative {
            supervisor_gone: false
        })
    );
    assert!(n.session.is_none() || !n.session.as_ref().unwrap().on_probation());
}

/// A world on probation whose successor's socket closes 100 ms before the
/// window ends (its process still running); returns when it was `Ready`.
fn close_just_before_the_end(w: &mut World) -> Instant {
    w.start_handoff(cfg());
    w.run_until(on_probation);
    let ready = w.now;
    let t = ready + (WINDOW - Duration::from_millis(250));
    w.run_until(|w| w.now >= t);
    // Nothing is due until the next heartbeat, at the window's end.
    w.now = ready + (WINDOW - Duration::from_millis(100));
    w.n_to_s.closed = true;
    ready
}

#[test]
fn a_successor_whose_socket_closes_at_the_windows_end_is_not_committed() {
    // The supervisor waits for an exit past the end instead of committing,
    // and without one the close rolls it back.
    let mut w = world();
    close_just_before_the_end(&mut w);
    let out = finish(&mut w);
    assert!(!out.committed(), "{}", w.trace.join("\n"));
    assert_eq!(
        out.result,
        Err(AbortReason::SuccessorClosed {
            step: SupervisorStep::Probation
        })
    );
    assert!(out.rolled_back);
}

#[test]
fn a_successor_on_probation_stops_heartbeating_to_a_supervisor_frozen_for_good() {
    let mut w = world();
    w.start_handoff(cfg());
    w.run_until(on_probation);
    w.freeze_supervisor();
    // It settles: the successor gives the silent supervisor up after the
    // liveness limit, and serves on holding the lock.
    w.run();
    let n = w.successor.as_ref().unwrap();
    assert!(n.serving());
    assert!(!n.session.as_ref().is_some_and(|s| s.on_probation()));
}

#[test]
fn the_windows_end_is_no_busy_timer_while_a_closed_successors_exit_is_awaited() {
    let mut w = world();
    let ready = close_just_before_the_end(&mut w);
    w.run_until(|w| w.now >= ready + WINDOW);
    let s = w.supervisor.as_ref().unwrap();
    let next = s.poll_timeout().expect("the close's own timer");
    assert!(next > w.now, "a timer in the past: {next:?} at {:?}", w.now);
}
