//! Each machine against a peer that sends whatever it likes: garbage, huge
//! lengths, other handoffs' ids, messages in the wrong direction or phase.
//! The rule (docs/PROTOCOL.md section 4, last row): a clear error, the session closes,
//! nothing else changes; an incumbent always ends up serving with its lock.

use handoff_core::{
    AbortReason, Capabilities, DrainReport, EndCause, FrameError, HandoffId, IncumbentConfig,
    IncumbentEnd, IncumbentSession, IncumbentStep, Instant, Message, MessageKind, ReadyReportRef,
    Revisions, SealReportRef, Side, Signal, Strings, SuccessorEnd, SuccessorFailure,
    SupervisorConfig, SupervisorHandoff, SupervisorStep, Violation, defaults,
};

mod common;

use common::peers::*;

// ------------------------------------------------------------ the incumbent

/// An incumbent that drained and waits for `SealRequest`.
fn drained_incumbent() -> IncumbentSession {
    let mut s = idle_incumbent();
    assert_eq!(
        feed_incumbent(&mut s, t(2), &prepare(60_000, 25_000)),
        vec![IOut::Drain]
    );
    s.handle_drained(t(3), DrainReport::default());
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Frame(MessageKind::Drained)]
    );
    s
}

/// An idle session whose `Hello` offered listener reclaim, as every
/// driver's does.
fn reclaiming_incumbent() -> IncumbentSession {
    idle_incumbent_with(IncumbentConfig {
        capabilities: Capabilities::RECLAIM_LISTENERS,
        ..IncumbentConfig::default()
    })
}

#[test]
fn an_incumbent_that_offers_reclaim_answers_listeners_request_and_stays_idle() {
    let mut s = reclaiming_incumbent();
    let ask = frame(Message::ListenersRequest { handoff_id: ID });
    assert_eq!(
        feed_incumbent(&mut s, t(2), &ask),
        vec![IOut::SendListeners(ID)]
    );
    assert_eq!(s.step(), IncumbentStep::Idle);
    // Asked again, answered again; and a handoff can still follow.
    assert_eq!(
        feed_incumbent(&mut s, t(3), &ask),
        vec![IOut::SendListeners(ID)]
    );
    assert_eq!(
        feed_incumbent(&mut s, t(4), &prepare(60_000, 25_000)),
        vec![IOut::Drain]
    );
    // Once draining, a ListenersRequest is out of place.
    let outs = feed_incumbent(&mut s, t(5), &ask);
    assert!(!outs.iter().any(|o| matches!(o, IOut::SendListeners(_))));
}

#[test]
fn listeners_request_is_a_violation_unless_offered_or_before_hello_ack_or_for_another_id() {
    // Not offered: the plain v1 incumbent.
    let mut s = idle_incumbent();
    let ask = frame(Message::ListenersRequest { handoff_id: ID });
    let outs = feed_incumbent(&mut s, t(2), &ask);
    assert!(matches!(violation_end(&outs), Violation::Unexpected { .. }));
    // Offered, but before HelloAck.
    let cfg = IncumbentConfig {
        capabilities: Capabilities::RECLAIM_LISTENERS,
        ..IncumbentConfig::default()
    };
    let mut s = IncumbentSession::new(t(0), cfg, 7, b"b");
    drain_incumbent(&mut s);
    let outs = feed_incumbent(&mut s, t(1), &ask);
    assert!(matches!(violation_end(&outs), Violation::Unexpected { .. }));
    // Offered, with another session's id.
    let mut s = reclaiming_incumbent();
    let other = frame(Message::ListenersRequest {
        handoff_id: HandoffId::from_bytes([0xee; 16]),
    });
    let outs = feed_incumbent(&mut s, t(2), &other);
    assert!(matches!(
        violation_end(&outs),
        Violation::WrongHandoffId { .. }
    ));
}

#[test]
fn incumbent_given_http_garbage_closes_the_session_and_serves_on() {
    let mut s = IncumbentSession::new(t(0), IncumbentConfig::default(), 7, b"b");
    drain_incumbent(&mut s);
    let outs = feed_incumbent(&mut s, t(1), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(
        violation_end(&outs),
        Violation::Frame(FrameError::TooLarge { .. })
    ));
    assert!(
        !outs.contains(&IOut::Drain),
        "nothing happened to the daemon"
    );
}

#[test]
fn incumbent_refuses_a_2_mib_frame_from_its_length_alone() {
    let mut s = idle_incumbent();
    let len = (2u32 << 20).to_le_bytes();
    let used = s.handle_input(t(2), &len);
    assert_eq!(used, 4, "nothing after the prefix is read");
    let outs = drain_incumbent(&mut s);
    // The default 4 KiB buffer sets the limit; it is refused all the same.
    assert_eq!(
        violation_end(&outs),
        Violation::Frame(FrameError::TooLarge {
            len: 2 << 20,
            limit: 4096
        })
    );
}

#[test]
fn incumbent_rejects_a_prepare_for_another_handoff() {
    let mut s = idle_incumbent();
    let bad = frame(Message::PrepareHandoff {
        handoff_id: OTHER_ID,
        successor_pid: 9,
        deadline_ms: 1,
        drain_grace_ms: 1,
    });
    let outs = feed_incumbent(&mut s, t(2), &bad);
    assert_eq!(
        violation_end(&outs),
        Violation::WrongHandoffId {
            got: OTHER_ID,
            expected: ID
        }
    );
    assert!(!outs.contains(&IOut::Drain));
}

#[test]
fn a_second_prepare_with_another_id_while_draining_is_rejected_and_the_incumbent_resumes() {
    let mut s = idle_incumbent();
    assert_eq!(
        feed_incumbent(&mut s, t(2), &prepare(60_000, 25_000)),
        vec![IOut::Drain]
    );
    let second = frame(Message::PrepareHandoff {
        handoff_id: OTHER_ID,
        successor_pid: 10,
        deadline_ms: 60_000,
        drain_grace_ms: 1,
    });
    // The drain hook is still running: the session closes now and the
    // daemon is resumed as soon as the hook returns.
    assert_eq!(feed_incumbent(&mut s, t(3), &second), vec![IOut::Close]);
    s.handle_drained(t(4), DrainReport::default());
    assert_eq!(drain_incumbent(&mut s), vec![IOut::Resume]);
    s.handle_resumed(t(5));
    let outs = drain_incumbent(&mut s);
    assert!(matches!(
        violation_end(&outs),
        Violation::WrongHandoffId { got: OTHER_ID, .. }
    ));
}

#[test]
fn incumbent_rejects_a_message_in_the_wrong_direction() {
    let mut s = idle_incumbent();
    let outs = feed_incumbent(
        &mut s,
        t(2),
        &frame(Message::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        }),
    );
    assert_eq!(
        violation_end(&outs),
        Violation::Unexpected {
            message: MessageKind::Drained,
            awaiting: "PrepareHandoff"
        }
    );
}

#[test]
fn incumbent_rejects_seal_request_before_prepare() {
    let mut s = idle_incumbent();
    let outs = feed_incumbent(
        &mut s,
        t(2),
        &frame(Message::SealRequest { handoff_id: ID }),
    );
    assert!(matches!(
        violation_end(&outs),
        Violation::Unexpected {
            message: MessageKind::SealRequest,
            ..
        }
    ));
}

#[test]
fn a_commit_before_the_seal_is_a_violation_and_the_drained_incumbent_resumes() {
    let mut s = drained_incumbent();
    let outs = feed_incumbent(&mut s, t(4), &frame(Message::Commit { handoff_id: ID }));
    assert_eq!(outs, vec![IOut::Close, IOut::Resume]);
    s.handle_resumed(t(5));
    let outs = drain_incumbent(&mut s);
    assert!(matches!(
        violation_end(&outs),
        Violation::Unexpected {
            message: MessageKind::Commit,
            awaiting: "SealRequest"
        }
    ));
}

#[test]
fn a_malformed_frame_after_the_seal_makes_the_incumbent_retake_its_lock() {
    let mut s = drained_incumbent();
    assert_eq!(
        feed_incumbent(
            &mut s,
            t(4),
            &frame(Message::SealRequest { handoff_id: ID })
        ),
        vec![IOut::Seal]
    );
    s.handle_sealed(
        t(5),
        SealReportRef {
            last_revision_per_shard: Revisions::from_slice(&[1]),
            data_dir_fingerprint: [0; 32],
        },
    );
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::ReleaseLock, IOut::Frame(MessageKind::SealComplete)]
    );
    // A frame whose payload has a byte too many.
    let mut bad = frame(Message::Commit { handoff_id: ID });
    bad.push(0);
    bad[0] += 1;
    let outs = feed_incumbent(&mut s, t(6), &bad);
    assert_eq!(outs, vec![IOut::Close, IOut::AcquireLock]);
    s.handle_lock_acquired(t(7));
    assert_eq!(drain_incumbent(&mut s), vec![IOut::Resume]);
    s.handle_resumed(t(8));
    let outs = drain_incumbent(&mut s);
    match violation_end(&outs) {
        Violation::Frame(FrameError::Malformed(e)) => {
            assert!(e.to_string().contains("Commit"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn incumbent_refuses_a_version_it_does_not_speak() {
    let mut s = IncumbentSession::new(t(0), IncumbentConfig::default(), 7, b"b");
    drain_incumbent(&mut s);
    let outs = feed_incumbent(
        &mut s,
        t(1),
        &frame_v(
            2,
            Message::HelloAck {
                proto_version_chosen: 2,
                handoff_id: ID,
            },
        ),
    );
    assert!(matches!(
        outs.last(),
        Some(IOut::Finished(IncumbentEnd::Serving(EndCause::VersionMismatch(m)))) if m.their_min == 2
    ));
}

#[test]
fn incumbent_rejects_a_frame_of_another_version_after_negotiation() {
    let mut s = idle_incumbent();
    let outs = feed_incumbent(&mut s, t(2), &frame_v(3, Message::Heartbeat { ts_ms: 0 }));
    assert_eq!(
        violation_end(&outs),
        Violation::WrongVersion {
            got: 3,
            negotiated: 1
        }
    );
}

#[test]
fn incumbent_closes_an_idle_session_whose_supervisor_went_silent() {
    let mut s = idle_incumbent();
    // Heartbeats keep it open.
    for k in 1..=10 {
        feed_incumbent(
            &mut s,
            t(k * 5_000),
            &frame(Message::Heartbeat { ts_ms: k }),
        );
        s.handle_timeout(t(k * 5_000));
        assert!(drain_incumbent(&mut s).is_empty());
    }
    assert_eq!(s.poll_timeout(), Some(t(60_000)));
    s.handle_timeout(t(60_000));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![
            IOut::Close,
            IOut::Finished(IncumbentEnd::Serving(EndCause::SupervisorUnresponsive))
        ]
    );
}

#[test]
fn incumbent_ends_a_session_that_never_acks_its_hello() {
    let mut s = IncumbentSession::new(t(0), IncumbentConfig::default(), 7, b"b");
    drain_incumbent(&mut s);
    assert_eq!(s.poll_timeout(), Some(t(5_000)));
    s.handle_timeout(t(4_999));
    assert!(
        drain_incumbent(&mut s).is_empty(),
        "an early timeout does nothing"
    );
    s.handle_timeout(t(5_000));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Finished(IncumbentEnd::Serving(
            EndCause::HelloTimeout
        ))]
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn incumbent_enforces_the_deadline_against_a_supervisor_that_heartbeats_but_never_acts() {
    let mut s = drained_incumbent();
    // Prepare said 60 s; the incumbent waits that plus its slack, whatever
    // the heartbeats say.
    let mut now = 3;
    loop {
        now += 2_000;
        if let Some(deadline) = s.poll_timeout()
            && deadline <= t(now)
        {
            s.handle_timeout(deadline);
            break;
        }
        feed_incumbent(&mut s, t(now), &frame(Message::Heartbeat { ts_ms: now }));
    }
    assert_eq!(drain_incumbent(&mut s), vec![IOut::Close, IOut::Resume]);
    assert!(now > 62_000 && now < 70_000, "gave up at {now} ms");
    s.handle_resumed(t(now));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Finished(IncumbentEnd::Serving(
            EndCause::DeadlineExceeded
        ))]
    );
}

#[test]
fn a_sealed_incumbent_resumes_at_the_deadline_when_a_silent_supervisor_never_heartbeat() {
    // A reference supervisor never heartbeats, so silence after the seal
    // can be it waiting on a slow successor: the incumbent waits out the
    // deadline it was given (plus slack), no longer, then takes its lock
    // back.
    let mut s = drained_incumbent();
    feed_incumbent(
        &mut s,
        t(4),
        &frame(Message::SealRequest { handoff_id: ID }),
    );
    s.handle_sealed(
        t(5),
        SealReportRef {
            last_revision_per_shard: Revisions::EMPTY,
            data_dir_fingerprint: [0; 32],
        },
    );
    drain_incumbent(&mut s);
    let deadline = s.poll_timeout().expect("the deadline is armed");
    assert!(deadline > t(60_000) && deadline <= t(2 + 60_000 + 6_000));
    s.handle_timeout(deadline);
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Close, IOut::AcquireLock]
    );
    s.handle_lock_acquired(deadline);
    assert_eq!(drain_incumbent(&mut s), vec![IOut::Resume]);
    s.handle_resumed(deadline);
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Finished(IncumbentEnd::Serving(
            EndCause::DeadlineExceeded
        ))]
    );
}

#[test]
fn incumbent_heartbeats_while_a_hook_runs_and_never_queues_them_up() {
    let mut s = idle_incumbent();
    feed_incumbent(&mut s, t(2), &prepare(60_000, 25_000));
    // The adapter forgets to poll for a long time: heartbeats coalesce.
    for k in 1..=12 {
        s.handle_timeout(t(2 + 2_000 * k));
    }
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Frame(MessageKind::Heartbeat)]
    );
    s.handle_timeout(t(2 + 2_000 * 13));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Frame(MessageKind::Heartbeat)]
    );
}

#[test]
fn a_drain_past_its_grace_closes_the_session_and_resumes_when_the_hook_returns() {
    let mut s = idle_incumbent();
    feed_incumbent(&mut s, t(0), &prepare(60_000, 1_000));
    // Grace 1 s, plus twice the supervisor's 1 s slack.
    let mut closed_at = None;
    for ms in (0..=4_000).step_by(100) {
        s.handle_timeout(t(ms));
        if drain_incumbent(&mut s).contains(&IOut::Close) {
            closed_at = Some(ms);
            break;
        }
    }
    assert_eq!(closed_at, Some(3_000));
    s.handle_drained(t(9_000), DrainReport::default());
    assert_eq!(drain_incumbent(&mut s), vec![IOut::Resume]);
    s.handle_resumed(t(9_001));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Finished(IncumbentEnd::Serving(
            EndCause::DrainOverGrace
        ))]
    );
}

#[test]
fn after_finishing_the_incumbent_ignores_everything() {
    let mut s = idle_incumbent();
    feed_incumbent(
        &mut s,
        t(2),
        &frame(Message::Abort {
            handoff_id: ID,
            reason: "x",
        }),
    );
    assert!(s.is_finished());
    let junk = [0xffu8; 64];
    assert_eq!(s.handle_input(t(3), &junk), 64);
    s.handle_closed(t(3));
    s.handle_timeout(t(999_999));
    assert!(drain_incumbent(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_sealed_incumbent_whose_lock_stays_taken_reports_it_is_superseded() {
    let mut s = drained_incumbent();
    feed_incumbent(
        &mut s,
        t(4),
        &frame(Message::SealRequest { handoff_id: ID }),
    );
    s.handle_sealed(
        t(5),
        SealReportRef {
            last_revision_per_shard: Revisions::EMPTY,
            data_dir_fingerprint: [0; 32],
        },
    );
    drain_incumbent(&mut s);
    s.handle_closed(t(6));
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Close, IOut::AcquireLock]
    );
    // Busy at every retry for the whole 2 s window.
    let mut now = t(6);
    let mut attempts = 1;
    loop {
        s.handle_lock_busy(now);
        if let Some(IOut::Finished(end)) = drain_incumbent(&mut s).pop() {
            assert_eq!(end, IncumbentEnd::Superseded(EndCause::SupervisorClosed));
            break;
        }
        now = s.poll_timeout().expect("a retry is scheduled");
        s.handle_timeout(now);
        assert_eq!(drain_incumbent(&mut s), vec![IOut::AcquireLock]);
        attempts += 1;
    }
    assert!(attempts > 100, "retried every 10 ms: {attempts}");
    assert!(now >= t(2_006));
}

// ----------------------------------------------------------- the supervisor

/// A supervisor whose successor said `Hello`: the incumbent is draining.
fn draining_supervisor() -> SupervisorHandoff {
    let mut s = connected_supervisor();
    feed_supervisor(
        &mut s,
        t(2),
        Side::Incumbent,
        &hello(Side::Incumbent, 7, 1, 1),
    );
    s.handle_spawned(t(3), 99);
    let outs = feed_supervisor(
        &mut s,
        t(4),
        Side::Successor,
        &hello(Side::Successor, 99, 1, 1),
    );
    assert_eq!(
        outs,
        vec![
            SOut::Frame(Side::Successor, MessageKind::HelloAck),
            SOut::Frame(Side::Successor, MessageKind::Heartbeat),
            SOut::Journal,
            SOut::Frame(Side::Incumbent, MessageKind::PrepareHandoff),
        ]
    );
    s
}

#[test]
fn supervisor_given_garbage_instead_of_hello_aborts_without_spawning() {
    let mut s = connected_supervisor();
    let outs = feed_supervisor(
        &mut s,
        t(2),
        Side::Incumbent,
        &[0x05, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff],
    );
    assert!(!outs.contains(&SOut::Spawn));
    assert!(outs.contains(&SOut::Disconnect(Side::Incumbent)));
    assert!(matches!(
        violation_of(&outs, Side::Incumbent),
        Violation::Frame(FrameError::Malformed(_))
    ));
}

#[test]
fn supervisor_refuses_a_2_mib_frame_from_its_length_alone() {
    let mut s = connected_supervisor();
    let outs = feed_supervisor(&mut s, t(2), Side::Incumbent, &(2u32 << 20).to_le_bytes());
    assert_eq!(
        violation_of(&outs, Side::Incumbent),
        Violation::Frame(FrameError::TooLarge {
            len: 2 << 20,
            limit: 4096
        })
    );
}

#[test]
fn supervisor_accepts_heartbeats_at_any_point_even_before_hello() {
    let mut s = connected_supervisor();
    let hb = frame(Message::Heartbeat { ts_ms: 5 });
    assert!(feed_supervisor(&mut s, t(2), Side::Incumbent, &hb).is_empty());
    let outs = feed_supervisor(
        &mut s,
        t(3),
        Side::Incumbent,
        &hello(Side::Incumbent, 7, 1, 1),
    );
    assert_eq!(
        outs,
        vec![
            SOut::Frame(Side::Incumbent, MessageKind::HelloAck),
            // At once: the incumbent learns this supervisor heartbeats.
            SOut::Frame(Side::Incumbent, MessageKind::Heartbeat),
            SOut::Spawn
        ]
    );
    s.handle_spawned(t(4), 99);
    assert!(feed_supervisor(&mut s, t(5), Side::Successor, &hb).is_empty());
    assert!(feed_supervisor(&mut s, t(5), Side::Incumbent, &hb).is_empty());
}

#[test]
fn supervisor_rejects_an_incumbent_that_announces_itself_as_successor() {
    let mut s = connected_supervisor();
    let outs = feed_supervisor(
        &mut s,
        t(2),
        Side::Incumbent,
        &hello(Side::Successor, 7, 1, 1),
    );
    assert_eq!(
        violation_of(&outs, Side::Incumbent),
        Violation::WrongRole {
            got: Side::Successor
        }
    );
}

#[test]
fn supervisor_closes_on_a_version_mismatch_before_any_handoff_begins() {
    let mut s = connected_supervisor();
    let outs = feed_supervisor(
        &mut s,
        t(2),
        Side::Incumbent,
        &hello(Side::Incumbent, 7, 2, 3),
    );
    assert!(!outs.contains(&SOut::Spawn));
    assert!(matches!(
        outs.last(),
        Some(SOut::Finished(Err(AbortReason::VersionMismatch { peer: Side::Incumbent, mismatch })))
            if mismatch.their_min == 2
    ));
}

#[test]
fn supervisor_rejects_a_supervisor_only_message_from_the_incumbent() {
    let mut s = draining_supervisor();
    let begin = frame(Message::Begin {
        handoff_id: s.handoff_id(),
    });
    let outs = feed_supervisor(&mut s, t(5), Side::Incumbent, &begin);
    assert!(outs.contains(&SOut::Disconnect(Side::Incumbent)));
    // The successor is stopped and the handoff ends only once it exited.
    assert!(outs.contains(&SOut::Signal(Signal::Terminate)));
    assert!(!outs.iter().any(|o| matches!(o, SOut::Finished(_))));
    s.handle_successor_exited(t(6));
    let outs = drain_supervisor(&mut s);
    assert!(matches!(
        violation_of(&outs, Side::Incumbent),
        Violation::Unexpected {
            message: MessageKind::Begin,
            ..
        }
    ));
}

#[test]
fn supervisor_checks_the_handoff_id_of_seal_complete() {
    let mut s = draining_supervisor();
    let id = s.handoff_id();
    feed_supervisor(
        &mut s,
        t(5),
        Side::Incumbent,
        &frame(Message::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        }),
    );
    let bad = frame(Message::SealComplete {
        handoff_id: OTHER_ID,
        last_revision_per_shard: Revisions::EMPTY,
        data_dir_fingerprint: [0; 32],
    });
    let outs = feed_supervisor(&mut s, t(6), Side::Incumbent, &bad);
    assert!(!outs.contains(&SOut::Frame(Side::Successor, MessageKind::Begin)));
    s.handle_successor_exited(t(7));
    let outs = drain_supervisor(&mut s);
    assert_eq!(
        violation_of(&outs, Side::Incumbent),
        Violation::WrongHandoffId {
            got: OTHER_ID,
            expected: id
        }
    );
}

#[test]
fn a_ready_with_the_wrong_id_is_an_abort_and_the_sealed_incumbent_is_told_to_resume() {
    let mut s = draining_supervisor();
    let id = s.handoff_id();
    feed_supervisor(
        &mut s,
        t(5),
        Side::Incumbent,
        &frame(Message::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        }),
    );
    let complete = frame(Message::SealComplete {
        handoff_id: id,
        last_revision_per_shard: Revisions::EMPTY,
        data_dir_fingerprint: [0; 32],
    });
    let outs = feed_supervisor(&mut s, t(6), Side::Incumbent, &complete);
    assert!(outs.contains(&SOut::Frame(Side::Successor, MessageKind::Begin)));
    let ready = frame(Message::Ready {
        handoff_id: OTHER_ID,
        listening_on: Strings::EMPTY,
        healthz_ok: true,
        advertised_revision_per_shard: Revisions::EMPTY,
    });
    let outs = feed_supervisor(&mut s, t(7), Side::Successor, &ready);
    assert_eq!(
        outs,
        vec![
            SOut::Frame(Side::Successor, MessageKind::Abort),
            SOut::Disconnect(Side::Successor),
            SOut::Signal(Signal::Terminate),
        ],
        "the incumbent waits until the successor is gone"
    );
    s.handle_successor_exited(t(8));
    let outs = drain_supervisor(&mut s);
    assert_eq!(
        &outs[..4],
        &[
            SOut::Journal,
            SOut::Frame(Side::Incumbent, MessageKind::ResumeAfterAbort),
            SOut::Disconnect(Side::Incumbent),
            SOut::ClearJournal,
        ]
    );
    assert!(matches!(
        violation_of(&outs, Side::Successor),
        Violation::WrongHandoffId { got: OTHER_ID, .. }
    ));
}

#[test]
fn supervisor_rejects_a_message_in_the_wrong_direction_from_the_successor() {
    let mut s = draining_supervisor();
    let outs = feed_supervisor(
        &mut s,
        t(5),
        Side::Successor,
        &frame(Message::Drained {
            open_conns_remaining: 0,
            accept_closed: false,
        }),
    );
    // The drained incumbent holds its lock: it is told to resume at once.
    assert!(outs.contains(&SOut::Frame(Side::Incumbent, MessageKind::Abort)));
    s.handle_successor_exited(t(6));
    let outs = drain_supervisor(&mut s);
    assert!(matches!(
        violation_of(&outs, Side::Successor),
        Violation::Unexpected {
            message: MessageKind::Drained,
            ..
        }
    ));
}

#[test]
fn an_incumbent_silent_while_it_owes_drained_is_declared_gone_at_the_liveness_limit() {
    let mut s = draining_supervisor();
    // Heartbeats from it keep it alive.
    let hb = frame(Message::Heartbeat { ts_ms: 1 });
    feed_supervisor(&mut s, t(8_000), Side::Incumbent, &hb);
    s.handle_timeout(t(17_000));
    assert!(
        !drain_supervisor(&mut s)
            .iter()
            .any(|o| matches!(o, SOut::Finished(_)))
    );
    s.handle_timeout(t(18_000));
    let outs = drain_supervisor(&mut s);
    assert!(outs.contains(&SOut::Disconnect(Side::Incumbent)));
    assert!(outs.contains(&SOut::Signal(Signal::Terminate)));
    s.handle_successor_exited(t(18_001));
    assert!(matches!(
        drain_supervisor(&mut s).last(),
        Some(SOut::Finished(Err(
            AbortReason::IncumbentUnresponsive { .. }
        )))
    ));
}

// ------------------------------------------------------------ the successor

#[test]
fn successor_validates_the_version_the_supervisor_chose() {
    let mut s = fresh_successor();
    let outs = feed_successor(
        &mut s,
        t(1),
        &frame(Message::HelloAck {
            proto_version_chosen: 7,
            handoff_id: ID,
        }),
    );
    assert!(matches!(
        outs.as_slice(),
        [NOut::Finished(SuccessorEnd::Failed(SuccessorFailure::VersionMismatch(m)))] if m.their_max == 7
    ));
}

#[test]
fn successor_refuses_a_begin_for_another_handoff() {
    let mut s = acked_successor();
    let outs = feed_successor(
        &mut s,
        t(2),
        &frame(Message::Begin {
            handoff_id: OTHER_ID,
        }),
    );
    assert_eq!(
        outs,
        vec![NOut::Finished(SuccessorEnd::Failed(
            SuccessorFailure::Violation(Violation::WrongHandoffId {
                got: OTHER_ID,
                expected: ID
            })
        ))]
    );
}

#[test]
fn successor_exits_on_garbage_before_it_holds_the_lock() {
    let mut s = fresh_successor();
    let outs = feed_successor(&mut s, t(1), &[1, 0, 0, 0, 0]);
    assert!(matches!(
        outs.as_slice(),
        [NOut::Finished(SuccessorEnd::Failed(
            SuccessorFailure::Violation(Violation::Frame(FrameError::TooShort { len: 1 }))
        ))]
    ));
}

#[test]
fn successor_told_to_abort_exits_and_keeps_the_reason() {
    let mut s = acked_successor();
    let outs = feed_successor(
        &mut s,
        t(2),
        &frame(Message::Abort {
            handoff_id: ID,
            reason: "seal failed: disk full",
        }),
    );
    assert_eq!(
        outs,
        vec![NOut::Finished(SuccessorEnd::Failed(
            SuccessorFailure::Aborted
        ))]
    );
    assert_eq!(s.abort_reason(), "seal failed: disk full");
}

#[test]
fn successor_waits_for_begin_from_a_silent_reference_supervisor_without_a_deadline() {
    // A reference supervisor never heartbeats a waiting successor; only
    // its EOF (or its abort) ends the wait.
    let s = acked_successor();
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn successor_heartbeats_while_it_starts_up_after_begin() {
    let mut s = acked_successor();
    assert_eq!(
        feed_successor(&mut s, t(10), &frame(Message::Begin { handoff_id: ID })),
        vec![NOut::AcquireLock]
    );
    s.handle_lock_acquired(t(11));
    assert_eq!(drain_successor(&mut s), vec![NOut::Start]);
    let mut beats = 0;
    while let Some(next) = s.poll_timeout() {
        if next > t(30_000) {
            break;
        }
        s.handle_timeout(next);
        for o in drain_successor(&mut s) {
            assert_eq!(o, NOut::Frame(MessageKind::Heartbeat));
            beats += 1;
        }
    }
    assert_eq!(beats, 14, "one every 2 s for 30 s");
    s.handle_ready(
        t(30_000),
        ReadyReportRef {
            listening_on: Strings::from_slice(&["127.0.0.1:1"]),
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::EMPTY,
        },
    );
    assert_eq!(
        drain_successor(&mut s),
        vec![
            NOut::Frame(MessageKind::Ready),
            NOut::Finished(SuccessorEnd::Authoritative {
                supervisor_gone: false
            })
        ]
    );
}

#[test]
fn successor_gives_up_on_a_lock_that_stays_busy() {
    let mut s = acked_successor();
    feed_successor(&mut s, t(10), &frame(Message::Begin { handoff_id: ID }));
    let mut now = t(10);
    loop {
        s.handle_lock_busy(now);
        let outs = drain_successor(&mut s);
        if let Some(NOut::Finished(end)) = outs.last() {
            assert_eq!(
                *end,
                SuccessorEnd::Failed(SuccessorFailure::LockUnavailable)
            );
            break;
        }
        // Heartbeats may interleave; the next lock attempt comes on time.
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        assert!(drain_successor(&mut s).contains(&NOut::AcquireLock));
    }
    assert!(now >= t(2_010));
}

#[test]
fn successor_holding_the_lock_serves_on_when_the_supervisor_vanishes() {
    let mut s = acked_successor();
    feed_successor(&mut s, t(10), &frame(Message::Begin { handoff_id: ID }));
    s.handle_lock_acquired(t(11));
    drain_successor(&mut s);
    s.handle_closed(t(12));
    assert!(drain_successor(&mut s).is_empty(), "no reason to exit");
    s.handle_ready(
        t(13),
        ReadyReportRef {
            listening_on: Strings::EMPTY,
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::EMPTY,
        },
    );
    assert_eq!(
        drain_successor(&mut s),
        vec![NOut::Finished(SuccessorEnd::Authoritative {
            supervisor_gone: true
        })]
    );
}

#[test]
fn successor_without_the_lock_exits_when_the_supervisor_vanishes() {
    let mut s = acked_successor();
    s.handle_closed(t(5));
    assert_eq!(
        drain_successor(&mut s),
        vec![NOut::Finished(SuccessorEnd::Failed(
            SuccessorFailure::SupervisorGone
        ))]
    );
}

#[test]
fn timeouts_called_early_or_twice_do_nothing() {
    let mut s = acked_successor();
    feed_successor(&mut s, t(10), &frame(Message::Begin { handoff_id: ID }));
    s.handle_lock_acquired(t(11));
    drain_successor(&mut s);
    let next = s.poll_timeout().unwrap();
    s.handle_timeout(Instant::from_nanos(next.as_nanos() - 1_000_000));
    assert!(drain_successor(&mut s).is_empty());
    s.handle_timeout(next);
    assert_eq!(
        drain_successor(&mut s),
        vec![NOut::Frame(MessageKind::Heartbeat)]
    );
    s.handle_timeout(next);
    assert!(drain_successor(&mut s).is_empty());
}

// ------------------------------------- reaching the incumbent after a commit

/// A supervisor that expects its incumbent to be pid 7 and was asked to
/// connect once.
fn supervisor_expecting_pid_7() -> SupervisorHandoff {
    let mut s = SupervisorHandoff::new(t(0), SupervisorConfig::default(), [1; 16], 0);
    s.expect_incumbent(7);
    assert_eq!(drain_supervisor(&mut s), vec![SOut::Connect]);
    s
}

#[test]
fn a_control_socket_of_another_process_is_hung_up_on_and_tried_again() {
    // Right after a commit the path still names the old incumbent's socket.
    let mut s = supervisor_expecting_pid_7();
    s.handle_connected_to(t(1), 6);
    assert_eq!(
        drain_supervisor(&mut s),
        vec![SOut::Disconnect(Side::Incumbent)]
    );
    assert_eq!(s.step(), SupervisorStep::ConnectingIncumbent);
    let retry = s.poll_timeout().unwrap();
    assert!(retry <= t(1) + defaults::CONNECT_RETRY_INTERVAL);
    // A report in the pause answers nothing.
    s.handle_connect_failed(t(2));
    assert!(drain_supervisor(&mut s).is_empty());
    assert_eq!(s.step(), SupervisorStep::ConnectingIncumbent);
    s.handle_timeout(retry);
    assert_eq!(drain_supervisor(&mut s), vec![SOut::Connect]);
    // Then nothing listens for a while (the old socket closed), then the
    // new incumbent has taken the path over.
    s.handle_connect_refused(t(10));
    assert!(drain_supervisor(&mut s).is_empty());
    let retry = s.poll_timeout().unwrap();
    s.handle_timeout(retry);
    assert_eq!(drain_supervisor(&mut s), vec![SOut::Connect]);
    s.handle_connected_to(t(20), 7);
    assert_eq!(s.step(), SupervisorStep::AwaitingIncumbentHello);
    let outs = feed_supervisor(
        &mut s,
        t(21),
        Side::Incumbent,
        &hello(Side::Incumbent, 7, 1, 1),
    );
    assert!(outs.contains(&SOut::Spawn), "{outs:?}");
    assert_eq!(s.outcome().connect_attempts, 3);
}

#[test]
fn a_path_that_never_names_the_incumbent_gives_up_at_the_hello_timeout() {
    let cfg = SupervisorConfig::default();
    let mut s = supervisor_expecting_pid_7();
    let mut now = t(1);
    let mut attempts = 1;
    loop {
        s.handle_connected_to(now, 6);
        let outs = drain_supervisor(&mut s);
        if let Some(SOut::Finished(result)) = outs.last() {
            assert_eq!(
                *result,
                Err(AbortReason::ControlSocketNotIncumbent {
                    listener_pid: 6,
                    incumbent_pid: 7
                })
            );
            break;
        }
        assert_eq!(outs, vec![SOut::Disconnect(Side::Incumbent)]);
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        assert_eq!(drain_supervisor(&mut s), vec![SOut::Connect]);
        attempts += 1;
        assert!(attempts < 10_000, "it never gave up");
    }
    assert!(now + defaults::CONNECT_RETRY_INTERVAL >= t(0) + cfg.hello_timeout);
    assert!(now < t(0) + cfg.hello_timeout);
    assert_eq!(s.outcome().connect_attempts, attempts);
}

#[test]
fn a_path_that_nobody_listens_on_is_unreachable_after_the_hello_timeout() {
    let mut s = supervisor_expecting_pid_7();
    s.handle_connect_refused(t(4_999));
    assert_eq!(
        drain_supervisor(&mut s),
        vec![SOut::Finished(Err(AbortReason::IncumbentUnreachable))]
    );
}

#[test]
fn a_connect_error_that_retrying_cannot_mend_aborts_at_once() {
    let mut s = supervisor_expecting_pid_7();
    s.handle_connect_failed(t(1));
    assert_eq!(
        drain_supervisor(&mut s),
        vec![SOut::Finished(Err(AbortReason::IncumbentUnreachable))]
    );
}

#[test]
fn an_incumbent_hello_from_another_pid_than_expected_aborts() {
    let mut s = supervisor_expecting_pid_7();
    s.handle_connected_to(t(1), 7);
    let outs = feed_supervisor(
        &mut s,
        t(2),
        Side::Incumbent,
        &hello(Side::Incumbent, 8, 1, 1),
    );
    assert_eq!(
        violation_of(&outs, Side::Incumbent),
        Violation::WrongPid {
            announced: 8,
            expected: 7
        }
    );
}
