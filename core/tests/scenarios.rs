//! The handoff as docs/PROTOCOL.md sections 3 and 4 describe it, row by row, with the
//! three real machines in a simulated world (see `common`). Each test names
//! the row it covers.

mod common;

use std::time::Duration;

use common::*;
use handoff_core::{
    AbortReason, DrainReport, EndCause, IncumbentEnd, IncumbentFate, IncumbentStep, JournalPhase,
    Signal, SuccessorEnd, SuccessorFailure, SuccessorFate, SuccessorStep, SupervisorConfig,
    SupervisorStep, Violation,
};

fn handoff_with(w: &mut World, cfg: SupervisorConfig) -> OwnedOutcome {
    w.start_handoff(cfg);
    w.run();
    w.outcome.clone().expect("the supervisor finished")
}

fn handoff(w: &mut World) -> OwnedOutcome {
    handoff_with(w, SupervisorConfig::default())
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------- section 3

#[test]
fn happy_path_commits_and_the_successor_serves_with_the_lock() {
    let mut w = World::new();
    let out = handoff(&mut w);

    assert!(out.committed(), "{:?}", out.result);
    w.assert_handed_off();
    assert_eq!(out.incumbent_fate, IncumbentFate::Committed);
    assert_eq!(out.successor_fate, SuccessorFate::Serving);
    assert_eq!(w.incumbent.ends, vec![IncumbentEnd::Committed]);
    let n = w.successor.as_ref().unwrap();
    assert_eq!(
        n.end,
        Some(SuccessorEnd::Authoritative {
            supervisor_gone: false
        })
    );
    assert_eq!(
        w.journal_log,
        vec![
            JournalPhase::Negotiating,
            JournalPhase::Draining,
            JournalPhase::AwaitingReady,
        ]
    );
}

#[test]
fn after_ready_the_outcome_carries_everything_the_peers_reported() {
    let mut w = World::new();
    let out = handoff(&mut w);
    assert_eq!(out.incumbent_pid, Some(O_PID));
    assert_eq!(out.incumbent_build_id, b"old-build");
    assert_eq!(out.successor_pid, Some(N_PID));
    assert_eq!(
        out.drained,
        Some(DrainReport {
            open_conns_remaining: 2,
            accept_closed: true
        })
    );
    assert_eq!(out.sealed_revisions.as_deref(), Some(&REVISIONS[..]));
    assert_eq!(out.fingerprint, Some(FINGERPRINT));
    assert_eq!(out.ready_revisions.as_deref(), Some(&REVISIONS[..]));
    assert_eq!(out.ready_healthz_ok, Some(true));
    assert_eq!(
        out.ready_listening_on,
        Some(vec!["127.0.0.1:7000".to_string(), "[::1]:7000".to_string()])
    );
}

#[test]
fn the_outcome_times_every_phase() {
    let mut w = World::new();
    w.successor_behavior.startup = Duration::from_millis(40);
    w.successor_behavior.after_begin = Duration::from_millis(30);
    w.incumbent.behavior.drain_time = Duration::from_millis(20);
    w.incumbent.behavior.seal_time = Duration::from_millis(10);
    let t = handoff(&mut w).timings;
    assert_eq!(t.successor_hello, Some(Duration::from_millis(40)));
    assert_eq!(t.drain, Some(Duration::from_millis(20)));
    assert_eq!(t.seal, Some(Duration::from_millis(10)));
    assert_eq!(t.begin_to_ready, Some(Duration::from_millis(30)));
    assert_eq!(t.total, Duration::from_millis(100));
    for phase in [t.connect, t.incumbent_hello, t.spawn, t.commit] {
        assert_eq!(
            phase,
            Some(Duration::ZERO),
            "the simulation has no I/O delay"
        );
    }
}

#[test]
fn happy_path_fed_one_byte_at_a_time_commits_the_same_way() {
    let mut whole = World::new();
    let a = handoff(&mut whole);
    let mut bytewise = World::new();
    bytewise.chunk = 1;
    let b = handoff(&mut bytewise);
    bytewise.assert_handed_off();
    assert_eq!(a.result, b.result);
    assert_eq!(a.sealed_revisions, b.sealed_revisions);
    assert_eq!(a.ready_listening_on, b.ready_listening_on);
    assert_eq!(whole.journal_log, bytewise.journal_log);
}

#[test]
fn happy_path_fed_in_odd_chunks_commits() {
    for chunk in [2, 3, 5, 7, 13] {
        let mut w = World::new();
        w.chunk = chunk;
        assert!(handoff(&mut w).committed(), "chunk size {chunk}");
        w.assert_handed_off();
    }
}

#[test]
fn step2_the_handoff_id_is_a_fresh_v4_uuid_both_peers_learn() {
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.successor
            .as_ref()
            .and_then(|n| n.session.as_ref())
            .is_some_and(|s| s.step() == SuccessorStep::AwaitingBegin)
    });
    let id = w.supervisor.as_ref().unwrap().handoff_id();
    assert_eq!(id.as_uuid().get_version_num(), 4);
    let o = w.incumbent.session.as_ref().unwrap();
    let n = w.successor.as_ref().unwrap().session.as_ref().unwrap();
    assert_eq!(o.handoff_id(), Some(id));
    assert_eq!(n.handoff_id(), Some(id));
}

#[test]
fn step3_a_successor_may_start_up_slowly_while_the_incumbent_serves() {
    // 20 s of start-up before `Hello`: past the reference's 5 s hello limit
    // and the 10 s liveness limit, within our 30 s start-up budget.
    let mut w = World::new();
    w.successor_behavior.startup = secs(20);
    w.start_handoff(SupervisorConfig::default());
    let t0 = w.now;
    w.run_until(|w| w.now >= t0 + secs(15));
    assert!(
        w.incumbent.serving(),
        "the old binary serves during the start-up"
    );
    assert_eq!(
        w.incumbent.session.as_ref().unwrap().step(),
        IncumbentStep::Idle,
        "heartbeats from the supervisor keep the idle session alive"
    );
    w.run();
    assert!(w.outcome.as_ref().unwrap().committed());
    w.assert_handed_off();
}

#[test]
fn step3_a_successor_that_never_says_hello_is_stopped_at_its_startup_budget() {
    let mut w = World::new();
    w.successor_behavior.never_hello = true;
    let cfg = SupervisorConfig {
        startup_budget: secs(8),
        ..SupervisorConfig::default()
    };
    let t0 = w.now;
    let out = handoff_with(&mut w, cfg);
    assert_eq!(out.reason(), AbortReason::SuccessorStartupTimeout);
    assert_eq!(w.signals, vec![Signal::Terminate]);
    assert_eq!(out.successor_fate, SuccessorFate::Exited);
    assert_eq!(out.incumbent_fate, IncumbentFate::Untouched);
    assert!(w.now >= t0 + secs(8) && w.now < t0 + secs(9));
    w.assert_rolled_back();
}

#[test]
fn step3_the_startup_budget_is_bounded_by_the_deadline() {
    let mut w = World::new();
    w.successor_behavior.never_hello = true;
    let cfg = SupervisorConfig {
        startup_budget: secs(600),
        deadline: secs(20),
        ..SupervisorConfig::default()
    };
    let out = handoff_with(&mut w, cfg);
    assert!(matches!(
        out.reason(),
        AbortReason::DeadlineExceeded {
            step: SupervisorStep::AwaitingSuccessorHello
        }
    ));
    w.assert_rolled_back();
}

#[test]
fn step3_a_successor_hello_from_another_pid_aborts() {
    let mut w = World::new();
    w.successor_behavior.lie_about_pid = true;
    let out = handoff(&mut w);
    assert!(matches!(
        out.reason(),
        AbortReason::ProtocolViolation {
            violation: Violation::WrongPid {
                announced,
                expected: N_PID
            },
            ..
        } if announced == N_PID + 1
    ));
    w.assert_rolled_back();
}

#[test]
fn step4_the_incumbent_stops_accepting_while_it_drains() {
    let mut w = World::new();
    w.incumbent.behavior.drain_time = secs(1);
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| !w.incumbent.accepting);
    let step = w.incumbent.session.as_ref().unwrap().step();
    assert_eq!(step, IncumbentStep::Draining);
    assert!(w.incumbent.holds_lock, "draining keeps the lock");
    w.run();
    w.assert_handed_off();
}

#[test]
fn step5_the_lock_is_released_before_seal_complete_reaches_the_supervisor() {
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| w.supervisor.as_ref().unwrap().step() == SupervisorStep::AwaitingReady);
    assert!(!w.incumbent.holds_lock);
    assert!(!w.incumbent.writer_open, "sealed: the writer is closed");
}

#[test]
fn step6_the_successor_holds_no_lock_until_begin() {
    let mut w = World::new();
    w.incumbent.behavior.seal_time = secs(3);
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.incumbent
            .session
            .as_ref()
            .is_some_and(|s| s.step() == IncumbentStep::Sealing)
    });
    let n = w.successor.as_ref().unwrap();
    assert!(!n.holds_lock && !n.writer_open);
    w.run();
    w.assert_handed_off();
}

#[test]
fn heartbeats_keep_a_long_drain_alive_past_the_liveness_limit() {
    let mut w = World::new();
    w.incumbent.behavior.drain_time = secs(20);
    assert!(handoff(&mut w).committed());
    w.assert_handed_off();
}

#[test]
fn heartbeats_keep_a_long_seal_alive_past_the_liveness_limit() {
    let mut w = World::new();
    w.incumbent.behavior.seal_time = secs(40);
    assert!(handoff(&mut w).committed());
    w.assert_handed_off();
}

#[test]
fn seal_progress_reaches_the_supervisor() {
    let mut w = World::new();
    w.incumbent.behavior.seal_time = secs(25);
    w.incumbent.behavior.seal_progress_every = Some(secs(5));
    let out = handoff(&mut w);
    assert!(out.committed());
    assert_eq!(out.seal_progress, Some((1, 4, 40)));
}

#[test]
fn a_slow_successor_is_bounded_by_the_deadline_not_cut_by_the_liveness_limit() {
    // 25 s from `Begin` to `Ready`: the reference would cut it at 10 s.
    let mut w = World::new();
    w.successor_behavior.after_begin = secs(25);
    assert!(handoff(&mut w).committed());
    w.assert_handed_off();
}

#[test]
fn a_drain_longer_than_its_grace_aborts_and_the_incumbent_serves_on() {
    let mut w = World::new();
    w.incumbent.behavior.drain_time = secs(40);
    let cfg = SupervisorConfig {
        drain_grace: secs(10),
        ..SupervisorConfig::default()
    };
    let out = handoff_with(&mut w, cfg);
    assert_eq!(out.reason(), AbortReason::DrainTimeout);
    assert_eq!(out.incumbent_fate, IncumbentFate::ToldToResume);
    w.assert_rolled_back();
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::HandoffAborted)]
    );
}

// ---------------------------------------------------------------- section 4

#[test]
fn successor_dies_before_hello_rolls_back_without_touching_the_incumbent() {
    let mut w = World::new();
    w.successor_behavior.crash_before_hello = true;
    let out = handoff(&mut w);
    assert!(matches!(
        out.reason(),
        AbortReason::SuccessorExited { .. } | AbortReason::SuccessorClosed { .. }
    ));
    assert_eq!(out.incumbent_fate, IncumbentFate::Untouched);
    assert_eq!(out.successor_fate, SuccessorFate::Exited);
    w.assert_rolled_back();
}

#[test]
fn successor_dies_after_begin_and_the_incumbent_retakes_a_lock_still_closing() {
    let mut w = World::new();
    w.successor_behavior.crash_after_begin = true;
    // The dead successor's lock FD takes 300 ms to close: the incumbent
    // must retry rather than give up.
    w.lock_release_delay = Duration::from_millis(300);
    let out = handoff(&mut w);
    assert!(matches!(
        out.reason(),
        AbortReason::SuccessorExited {
            step: SupervisorStep::AwaitingReady
        } | AbortReason::SuccessorClosed {
            step: SupervisorStep::AwaitingReady
        }
    ));
    assert_eq!(out.incumbent_fate, IncumbentFate::ToldToResume);
    w.assert_rolled_back();
    assert_eq!(
        w.journal_log.last(),
        Some(&JournalPhase::ResumingAfterAbort)
    );
}

#[test]
fn successor_that_cannot_start_exits_and_the_incumbent_resumes() {
    let mut w = World::new();
    w.successor_behavior.start_fails = true;
    let out = handoff(&mut w);
    assert!(!out.committed());
    assert_eq!(
        w.successor.as_ref().unwrap().end,
        Some(SuccessorEnd::Failed(SuccessorFailure::StartFailed))
    );
    w.assert_rolled_back();
}

#[test]
fn no_ready_by_the_deadline_sends_abort_then_term_then_kill() {
    let mut w = World::new();
    w.successor_behavior.hang_after_begin = true;
    w.successor_behavior.ignores_term = true;
    let cfg = SupervisorConfig {
        deadline: secs(30),
        ..SupervisorConfig::default()
    };
    let out = handoff_with(&mut w, cfg);
    assert_eq!(out.reason(), AbortReason::ReadyTimeout);
    assert_eq!(w.signals, vec![Signal::Terminate, Signal::Kill]);
    assert_eq!(out.successor_fate, SuccessorFate::Exited);
    w.assert_rolled_back();
}

#[test]
fn a_successor_that_obeys_term_is_not_killed() {
    let mut w = World::new();
    w.successor_behavior.hang_after_begin = true;
    let cfg = SupervisorConfig {
        deadline: secs(30),
        ..SupervisorConfig::default()
    };
    let out = handoff_with(&mut w, cfg);
    assert_eq!(out.reason(), AbortReason::ReadyTimeout);
    assert_eq!(w.signals, vec![Signal::Terminate]);
    w.assert_rolled_back();
}

#[test]
fn seal_failure_keeps_the_lock_resumes_and_aborts_the_successor() {
    let mut w = World::new();
    w.incumbent.behavior.seal_fails = true;
    let out = handoff(&mut w);
    assert_eq!(out.reason(), AbortReason::SealFailed);
    assert_eq!(out.seal_error.as_deref(), Some("disk full"));
    assert_eq!(out.incumbent_fate, IncumbentFate::ResumedAfterSealFailure);
    assert!(
        !w.trace.iter().any(|l| l.contains("O releases the lock")),
        "invariant 2: no successful seal, no release"
    );
    w.assert_rolled_back();
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::SealFailed)]
    );
}

#[test]
fn supervisor_killed_after_each_of_its_frames_recovers_to_one_incumbent() {
    let mut probe = World::new();
    handoff(&mut probe);
    let frames = probe.frames_sent[Role::Supervisor as usize];
    assert!(
        frames >= 6,
        "HelloAck x2, Prepare, SealRequest, Begin, Commit"
    );
    for k in 1..=frames {
        let mut w = World::new();
        w.crash_after_frames = Some((Role::Supervisor, k));
        w.start_handoff(SupervisorConfig::default());
        w.run();
        assert_eq!(
            w.serving_count(),
            1,
            "supervisor killed after its frame {k}:\n{}",
            w.trace.join("\n")
        );
        // Nobody is left waiting: the successor either serves or exited.
        if let Some(n) = &w.successor {
            assert!(
                n.serving() || !n.alive,
                "frame {k}: a successor left hanging"
            );
        }
    }
}

#[test]
fn supervisor_dies_while_the_incumbent_is_sealed_and_the_successor_not_begun() {
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.incumbent
            .session
            .as_ref()
            .is_some_and(|s| s.step() == IncumbentStep::Sealed)
    });
    w.kill_supervisor();
    w.run();
    w.assert_rolled_back();
    assert_eq!(
        w.successor.as_ref().unwrap().end,
        Some(SuccessorEnd::Failed(SuccessorFailure::SupervisorGone))
    );
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::SupervisorClosed)]
    );
}

#[test]
fn supervisor_dies_after_begin_and_the_successor_holding_the_lock_takes_over() {
    let mut w = World::new();
    w.successor_behavior.after_begin = secs(1);
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| w.successor.as_ref().is_some_and(|n| n.holds_lock));
    w.kill_supervisor();
    w.run();
    assert_eq!(
        w.successor.as_ref().unwrap().end,
        Some(SuccessorEnd::Authoritative {
            supervisor_gone: true
        })
    );
    assert!(matches!(
        w.incumbent.ends.as_slice(),
        [IncumbentEnd::Superseded(EndCause::SupervisorClosed)]
    ));
    assert_eq!(w.serving_count(), 1);
}

#[test]
fn incumbent_killed_after_each_of_its_frames_recovers_to_one_incumbent() {
    let mut probe = World::new();
    handoff(&mut probe);
    let frames = probe.frames_sent[Role::Incumbent as usize];
    assert!(frames >= 3, "Hello, Drained, SealComplete");
    for k in 1..=frames {
        let mut w = World::new();
        w.crash_after_frames = Some((Role::Incumbent, k));
        let out = handoff(&mut w);
        if w.serving_count() == 0 {
            // Nobody serves: what the supervisor binary does next is start
            // the daemon again, and it must find the lock free.
            assert!(!out.committed());
            w.restart_incumbent();
        }
        assert_eq!(w.serving_count(), 1, "incumbent killed after its frame {k}");
        assert_eq!(w.journal, None);
    }
}

#[test]
fn incumbent_dies_after_seal_complete_and_the_successor_still_commits() {
    let mut w = World::new();
    w.successor_behavior.after_begin = Duration::from_millis(50);
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| w.supervisor.as_ref().unwrap().step() == SupervisorStep::AwaitingReady);
    w.kill_incumbent();
    w.run();
    let out = w.outcome.clone().unwrap();
    assert!(out.committed());
    assert_eq!(out.incumbent_fate, IncumbentFate::Gone);
    assert!(w.successor.as_ref().unwrap().serving());
    assert_eq!(w.serving_count(), 1);
}

#[test]
fn successor_killed_after_each_of_its_frames_recovers_to_one_incumbent() {
    let mut probe = World::new();
    probe.successor_behavior.after_begin = secs(5);
    handoff(&mut probe);
    let frames = probe.frames_sent[Role::Successor as usize];
    assert!(frames >= 3, "Hello, heartbeats, Ready");
    for k in 1..=frames {
        let mut w = World::new();
        w.successor_behavior.after_begin = secs(5);
        w.crash_after_frames = Some((Role::Successor, k));
        let out = handoff(&mut w);
        if out.committed() {
            // It died after `Ready`: the supervisor binary restarts the
            // daemon, which finds the dead successor's lock free.
            assert_eq!(w.serving_count(), 0);
            w.restart_incumbent();
        } else {
            w.assert_rolled_back();
        }
        assert_eq!(w.serving_count(), 1, "successor killed after its frame {k}");
    }
}

#[test]
fn a_silent_supervisor_cannot_strand_a_drained_incumbent() {
    let mut w = World::new();
    w.incumbent.behavior.drain_time = secs(1);
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.incumbent
            .session
            .as_ref()
            .is_some_and(|s| s.step() == IncumbentStep::Drained)
    });
    w.freeze_supervisor();
    let frozen_at = w.now;
    w.run();
    assert!(w.incumbent.serving());
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::SupervisorUnresponsive)]
    );
    assert_eq!(w.now, frozen_at + secs(10), "resumed at the liveness limit");
}

#[test]
fn a_silent_supervisor_cannot_strand_a_sealed_incumbent() {
    // Our supervisor heartbeats the incumbent from its HelloAck on; having
    // heard that, the incumbent holds it to the liveness limit even after
    // sealing. (A reference supervisor, which never heartbeats, is held to
    // the deadline instead: see hostile_peers.)
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.incumbent
            .session
            .as_ref()
            .is_some_and(|s| s.step() == IncumbentStep::Sealed)
    });
    w.freeze_supervisor();
    let frozen_at = w.now;
    w.run();
    assert!(w.incumbent.serving());
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::SupervisorUnresponsive)]
    );
    assert!(w.now <= frozen_at + secs(10));
}

#[test]
fn a_successor_waiting_for_begin_gives_up_on_a_silent_heartbeating_supervisor() {
    let mut w = World::new();
    w.incumbent.behavior.drain_time = secs(5);
    w.start_handoff(SupervisorConfig::default());
    // The supervisor heartbeats the successor while the incumbent drains.
    w.run_until(|w| w.now >= Instant::from_millis(1_000) + secs(3));
    w.freeze_supervisor();
    w.run();
    assert_eq!(
        w.successor.as_ref().unwrap().end,
        Some(SuccessorEnd::Failed(
            SuccessorFailure::SupervisorUnresponsive
        ))
    );
    assert!(!w.successor.as_ref().unwrap().alive);
    assert!(w.incumbent.serving());
}

#[test]
fn a_dead_incumbent_socket_aborts_the_handoff() {
    let mut w = World::new();
    w.incumbent.alive = false;
    w.incumbent.holds_lock = false;
    w.lock = None;
    let out = handoff(&mut w);
    assert_eq!(out.reason(), AbortReason::IncumbentUnreachable);
    assert_eq!(out.successor_fate, SuccessorFate::NotSpawned);
    assert!(w.signals.is_empty());
}

#[test]
fn a_spawn_failure_aborts_before_the_incumbent_is_touched() {
    let mut w = World::new();
    w.spawn_fails = true;
    let out = handoff(&mut w);
    assert_eq!(out.reason(), AbortReason::SpawnFailed);
    assert_eq!(out.incumbent_fate, IncumbentFate::Untouched);
    w.assert_rolled_back();
}

#[test]
fn journal_failures_do_not_stop_the_handoff_and_are_reported() {
    // The world never fails a journal write; drive the input directly.
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    let now = w.now;
    w.supervisor.as_mut().unwrap().handle_journal_failed(now);
    w.run();
    let out = w.outcome.clone().unwrap();
    assert!(out.committed());
    assert!(out.journal_failed);
}

use handoff_core::Instant;
