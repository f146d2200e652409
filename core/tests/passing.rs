//! Connection passing (`Capabilities::PASS_CONNECTIONS`, messages 17 to
//! 21): the supervisor gives both peers an end of the pass channel only
//! when both offered the bit and its configuration allows it, and a peer
//! that did not offer it sees exactly the frames it saw before; each
//! machine takes `PassChannel` once, in one step, only if it offered the
//! bit; the incumbent reports the count just before `Drained`, and only
//! with a channel and nothing to undo; and the three messages of the
//! channel itself are violations on every control session
//! (docs/PROTOCOL.md section 4, last row). Through the simulated world of
//! `common` and, message by message, through each machine alone
//! (`common::peers`).

mod common;

use common::peers::*;
use common::*;
use handoff_core::{
    AbortReason, Capabilities, DrainReport, EndCause, HandoffId, IncumbentConfig, IncumbentEnd,
    IncumbentFate, IncumbentOutput, IncumbentSession, IncumbentStep, Message, MessageKind, Side,
    Signal, SuccessorConfig, SuccessorEnd, SuccessorFailure, SuccessorStep, SupervisorConfig,
    SupervisorHandoff, SupervisorStep, Violation,
};

const PASS: Capabilities = Capabilities::PASS_CONNECTIONS;

/// A world whose incumbent and successor offer `incumbent` and
/// `successor`.
fn world(incumbent: Capabilities, successor: Capabilities) -> World {
    let mut w = World::new();
    w.incumbent_cfg.capabilities = incumbent;
    w.successor_cfg.capabilities = successor;
    w
}

fn passing_off() -> SupervisorConfig {
    SupervisorConfig {
        pass_connections: false,
        ..SupervisorConfig::default()
    }
}

fn unexpected(kind: MessageKind) -> impl Fn(&Violation) -> bool {
    move |v| matches!(v, Violation::Unexpected { message, .. } if *message == kind)
}

// ------------------------------------------------------------ the world

#[test]
fn both_offering_get_a_channel_end_successor_first_then_incumbent_right_before_prepare() {
    for passes in [0, 5] {
        let mut w = world(PASS, PASS);
        w.incumbent.behavior.passes = passes;
        let out = w.handoff(SupervisorConfig::default());
        assert!(out.committed(), "{:?}\n{}", out.result, w.trace.join("\n"));
        w.assert_handed_off();

        let with_end: Vec<_> = w.supervisor_sent.iter().filter(|f| f.channel_end).collect();
        assert_eq!(
            with_end.iter().map(|f| (f.to, f.kind)).collect::<Vec<_>>(),
            [
                (Side::Successor, MessageKind::PassChannel),
                (Side::Incumbent, MessageKind::PassChannel),
            ],
        );
        // Back to back, and `PrepareHandoff` at once after them.
        let at = w
            .supervisor_sent
            .iter()
            .position(|f| f.kind == MessageKind::PassChannel)
            .unwrap();
        assert_eq!(
            w.supervisor_sent[at..at + 3]
                .iter()
                .map(|f| (f.to, f.kind, f.channel_end))
                .collect::<Vec<_>>(),
            [
                (Side::Successor, MessageKind::PassChannel, true),
                (Side::Incumbent, MessageKind::PassChannel, true),
                (Side::Incumbent, MessageKind::PrepareHandoff, false),
            ]
        );
        assert_eq!(
            w.sent_to(Side::Successor)[..3],
            [
                MessageKind::HelloAck,
                MessageKind::Heartbeat,
                MessageKind::PassChannel
            ]
        );

        // Each machine took its end, for this handoff, at version 1.
        let id = w.supervisor.as_ref().unwrap().handoff_id();
        assert_eq!(w.incumbent.pass_channel, Some((id, 1)));
        assert_eq!(w.successor.as_ref().unwrap().pass_channel, Some((id, 1)));
        // The count the drain reported is the outcome's.
        assert_eq!(out.connections_passed, Some(passes));
    }
}

#[test]
fn without_both_offers_or_with_passing_off_every_peer_gets_the_frames_it_got_before() {
    let mut plain = World::new();
    let before = plain.handoff(SupervisorConfig::default());
    assert!(before.committed());
    assert!(!plain.supervisor_sent.is_empty());
    let cases = [
        ("only the incumbent offers", PASS, Capabilities::NONE, true),
        ("only the successor offers", Capabilities::NONE, PASS, true),
        ("both offer, passing is off", PASS, PASS, false),
    ];
    for (case, o, n, on) in cases {
        let mut w = world(o, n);
        let cfg = SupervisorConfig {
            pass_connections: on,
            ..SupervisorConfig::default()
        };
        let out = w.handoff(cfg);
        assert!(out.committed(), "{case}: {:?}", out.result);
        w.assert_handed_off();
        assert_eq!(w.supervisor_sent, plain.supervisor_sent, "{case}");
        assert!(w.supervisor_sent.iter().all(|f| !f.channel_end), "{case}");
        assert_eq!(w.incumbent.pass_channel, None, "{case}");
        assert_eq!(w.successor.as_ref().unwrap().pass_channel, None, "{case}");
        assert_eq!(out.connections_passed, None, "{case}");
        assert_eq!(out.timings.total, before.timings.total, "{case}");
    }
}

#[test]
fn a_peer_that_offers_nothing_sees_no_extension_frame_whatever_the_other_offers() {
    let everything = Capabilities::from_bits(u64::MAX);
    for (o, n, plain) in [
        (Capabilities::NONE, everything, Side::Incumbent),
        (everything, Capabilities::NONE, Side::Successor),
    ] {
        let mut w = world(o, n);
        let out = w.handoff(SupervisorConfig::default());
        assert!(out.committed(), "{:?}", out.result);
        let sent = w.sent_to(plain);
        assert!(!sent.is_empty());
        assert!(
            sent.iter().all(|k| !k.is_extension()),
            "the {plain} offered nothing, yet got {sent:?}"
        );
        assert!(w.supervisor_sent.iter().all(|f| !f.channel_end));
        assert_eq!(out.connections_passed, None);
    }
}

#[test]
fn connections_passed_without_a_channel_ends_the_handoff_as_the_incumbents_violation() {
    // docs/PROTOCOL.md section 4, last row: a message in the wrong step is
    // a violation; the session closes, and the incumbent recovers by
    // itself (it resumes once its drain hook returns); the successor is
    // stopped as in every abort.
    let mut w = World::new();
    w.start_handoff(SupervisorConfig::default());
    w.run_until(|w| {
        w.supervisor
            .as_ref()
            .is_some_and(|s| s.step() == SupervisorStep::Draining)
    });
    let id = w.supervisor.as_ref().unwrap().handoff_id();
    w.o_to_s.bytes.extend(frame(Message::ConnectionsPassed {
        handoff_id: id,
        count: 3,
    }));
    w.run();
    let out = w.outcome.clone().expect("the supervisor finished");

    match out.result {
        Err(AbortReason::ProtocolViolation {
            peer: Side::Incumbent,
            violation:
                Violation::Unexpected {
                    message: MessageKind::ConnectionsPassed,
                    awaiting,
                },
        }) => assert_eq!(awaiting, SupervisorStep::Draining.awaiting()),
        other => panic!("{other:?}\n{}", w.trace.join("\n")),
    }
    assert_eq!(out.connections_passed, None);
    // The supervisor closed the session instead of answering it: no
    // `Abort`, no `SealRequest` to the incumbent.
    assert_eq!(
        *w.sent_to(Side::Incumbent).last().unwrap(),
        MessageKind::PrepareHandoff
    );
    assert_eq!(out.incumbent_fate, IncumbentFate::Gone);
    assert_eq!(
        w.incumbent.ends,
        vec![IncumbentEnd::Serving(EndCause::SupervisorClosed)]
    );
    assert_eq!(w.signals, vec![Signal::Terminate]);
    w.assert_rolled_back();
}

// ------------------------------------------------------- the supervisor

/// A supervisor configured with `cfg` whose incumbent offered `o` and
/// whose successor offered `n`, up to the successor's `Hello`; and that
/// `Hello`'s outputs.
fn supervisor_after_hellos(
    cfg: SupervisorConfig,
    o: Capabilities,
    n: Capabilities,
) -> (SupervisorHandoff, Vec<SOut>) {
    let mut s = connected_supervisor_with(cfg);
    assert_eq!(
        feed_supervisor(
            &mut s,
            t(2),
            Side::Incumbent,
            &hello_offering(Side::Incumbent, 7, 1, 1, o)
        ),
        [
            SOut::Frame(Side::Incumbent, MessageKind::HelloAck),
            SOut::Frame(Side::Incumbent, MessageKind::Heartbeat),
            SOut::Spawn,
        ]
    );
    s.handle_spawned(t(3), 99);
    let outs = feed_supervisor(
        &mut s,
        t(4),
        Side::Successor,
        &hello_offering(Side::Successor, 99, 1, 1, n),
    );
    assert_eq!(s.step(), SupervisorStep::Draining);
    (s, outs)
}

#[test]
fn the_supervisor_sends_pass_channel_with_a_channel_end_on_the_successors_hello() {
    let (_, outs) = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS);
    assert_eq!(
        outs,
        [
            SOut::Frame(Side::Successor, MessageKind::HelloAck),
            SOut::Frame(Side::Successor, MessageKind::Heartbeat),
            SOut::Journal,
            SOut::FrameWithChannelEnd(Side::Successor, MessageKind::PassChannel),
            SOut::FrameWithChannelEnd(Side::Incumbent, MessageKind::PassChannel),
            SOut::Frame(Side::Incumbent, MessageKind::PrepareHandoff),
        ]
    );
    // Other bits beside it change nothing.
    let (_, again) = supervisor_after_hellos(
        SupervisorConfig::default(),
        Capabilities::from_bits(!0),
        PASS,
    );
    assert_eq!(again, outs);
}

#[test]
fn the_supervisor_sends_no_pass_channel_unless_both_offer_and_it_is_on() {
    let without = [
        SOut::Frame(Side::Successor, MessageKind::HelloAck),
        SOut::Frame(Side::Successor, MessageKind::Heartbeat),
        SOut::Journal,
        SOut::Frame(Side::Incumbent, MessageKind::PrepareHandoff),
    ];
    let other_bits = Capabilities::RECLAIM_LISTENERS.union(Capabilities::PROBATION);
    for (cfg, o, n) in [
        (SupervisorConfig::default(), PASS, Capabilities::NONE),
        (SupervisorConfig::default(), Capabilities::NONE, PASS),
        (SupervisorConfig::default(), other_bits, other_bits),
        (passing_off(), PASS, PASS),
    ] {
        let (_, outs) = supervisor_after_hellos(cfg, o, n);
        assert_eq!(outs, without, "O offers {o:?}, N offers {n:?}");
    }
}

#[test]
fn the_first_count_of_the_drain_is_the_outcomes_and_a_second_is_a_violation() {
    let count = |s: &SupervisorHandoff, n: u32| {
        frame(Message::ConnectionsPassed {
            handoff_id: s.handoff_id(),
            count: n,
        })
    };
    // With a channel: taken silently, and reported.
    let (mut s, _) = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS);
    let f = count(&s, 4);
    assert_eq!(feed_supervisor(&mut s, t(5), Side::Incumbent, &f), []);
    assert_eq!(s.step(), SupervisorStep::Draining);
    let drained = frame(Message::Drained {
        open_conns_remaining: 0,
        accept_closed: true,
    });
    let outs = feed_supervisor(&mut s, t(6), Side::Incumbent, &drained);
    assert!(outs.contains(&SOut::Frame(Side::Incumbent, MessageKind::SealRequest)));
    s.handle_closed(t(7), Side::Incumbent);
    drain_supervisor(&mut s);
    s.handle_successor_exited(t(8));
    let mut reported = None;
    while let Some(o) = s.poll_output() {
        if let handoff_core::SupervisorOutput::Finished(o) = o {
            reported = Some(o.connections_passed);
        }
    }
    assert_eq!(reported, Some(Some(4)));

    // The abort for a violation by the incumbent while it drains: its
    // session closed unanswered, the successor told and stopped, and the
    // violation the outcome's reason once the successor is gone.
    let violation = |s: &mut SupervisorHandoff, outs: Vec<SOut>| {
        assert_eq!(
            outs,
            [
                SOut::Disconnect(Side::Incumbent),
                SOut::Frame(Side::Successor, MessageKind::Abort),
                SOut::Disconnect(Side::Successor),
                SOut::Signal(Signal::Terminate),
            ]
        );
        assert_eq!(s.step(), SupervisorStep::Aborting);
        s.handle_successor_exited(t(9));
        let v = violation_of(&drain_supervisor(s), Side::Incumbent);
        assert!(unexpected(MessageKind::ConnectionsPassed)(&v), "{v:?}");
    };
    // A second count.
    let (mut s, _) = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS);
    let f = count(&s, 4);
    assert_eq!(feed_supervisor(&mut s, t(5), Side::Incumbent, &f), []);
    let outs = feed_supervisor(&mut s, t(6), Side::Incumbent, &f);
    violation(&mut s, outs);
    // No channel: the first count is already one.
    let (mut s, _) = supervisor_after_hellos(SupervisorConfig::default(), PASS, Capabilities::NONE);
    let f = count(&s, 0);
    let outs = feed_supervisor(&mut s, t(5), Side::Incumbent, &f);
    violation(&mut s, outs);
}

#[test]
fn the_channels_own_messages_and_pass_channel_are_violations_from_either_peer() {
    let id = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS)
        .0
        .handoff_id();
    let from_peer = [
        frame(Message::PassChannel { handoff_id: id }),
        frame(Message::PassedConnection {
            handoff_id: id,
            state: b"GET k\n",
        }),
        frame(Message::PassDone {
            handoff_id: id,
            count: 1,
        }),
        frame(Message::ConnectionsTaken { handoff_id: id }),
    ];
    for peer in [Side::Incumbent, Side::Successor] {
        for f in &from_peer {
            let kind = decode_one(f).kind();
            let (mut s, _) = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS);
            let mut outs = feed_supervisor(&mut s, t(5), peer, f);
            // Run the abort to its end: the successor exits.
            s.handle_successor_exited(t(6));
            outs.extend(drain_supervisor(&mut s));
            let v = violation_of(&outs, peer);
            assert!(unexpected(kind)(&v), "{kind:?} from the {peer}: {v:?}");
        }
    }
    // The count goes to the supervisor from the incumbent only.
    let (mut s, _) = supervisor_after_hellos(SupervisorConfig::default(), PASS, PASS);
    let f = frame(Message::ConnectionsPassed {
        handoff_id: id,
        count: 1,
    });
    let mut outs = feed_supervisor(&mut s, t(5), Side::Successor, &f);
    s.handle_successor_exited(t(6));
    outs.extend(drain_supervisor(&mut s));
    let v = violation_of(&outs, Side::Successor);
    assert!(unexpected(MessageKind::ConnectionsPassed)(&v), "{v:?}");
}

// -------------------------------------------------------- the incumbent

fn passing_incumbent() -> IncumbentSession {
    idle_incumbent_with(IncumbentConfig {
        capabilities: PASS,
        ..IncumbentConfig::default()
    })
}

fn pass_channel(id: HandoffId) -> Vec<u8> {
    frame(Message::PassChannel { handoff_id: id })
}

/// The messages of the pass channel, and the count the incumbent sends:
/// none of them goes to an incumbent or a successor on its control
/// session.
fn not_for_a_session() -> Vec<Vec<u8>> {
    vec![
        frame(Message::PassedConnection {
            handoff_id: ID,
            state: b"GET k\n",
        }),
        frame(Message::PassDone {
            handoff_id: ID,
            count: 1,
        }),
        frame(Message::ConnectionsTaken { handoff_id: ID }),
        frame(Message::ConnectionsPassed {
            handoff_id: ID,
            count: 1,
        }),
    ]
}

#[test]
fn an_incumbent_that_offered_the_bit_takes_one_pass_channel_while_idle() {
    let mut s = passing_incumbent();
    assert_eq!(
        feed_incumbent(&mut s, t(2), &pass_channel(ID)),
        [IOut::PassChannel(ID)]
    );
    assert_eq!(s.step(), IncumbentStep::Idle);
    assert_eq!(s.handoff_id(), Some(ID));
    // The handoff goes on as ever.
    assert_eq!(
        feed_incumbent(&mut s, t(3), &prepare(60_000, 25_000)),
        [IOut::Drain]
    );

    // A second one is a violation; the session ends, the daemon serves.
    let mut s = passing_incumbent();
    feed_incumbent(&mut s, t(2), &pass_channel(ID));
    let outs = feed_incumbent(&mut s, t(3), &pass_channel(ID));
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert_eq!(outs[0], IOut::Close);
    assert!(unexpected(MessageKind::PassChannel)(&violation_end(&outs)));
}

#[test]
fn an_incumbent_refuses_pass_channel_without_the_bit_before_hello_ack_or_for_another_id() {
    // Not offered (another bit is).
    let reclaiming = idle_incumbent_with(IncumbentConfig {
        capabilities: Capabilities::RECLAIM_LISTENERS,
        ..IncumbentConfig::default()
    });
    for mut s in [idle_incumbent(), reclaiming] {
        let outs = feed_incumbent(&mut s, t(2), &pass_channel(ID));
        assert_eq!(outs[0], IOut::Close);
        assert!(unexpected(MessageKind::PassChannel)(&violation_end(&outs)));
    }
    // Offered, before HelloAck.
    let cfg = IncumbentConfig {
        capabilities: PASS,
        ..IncumbentConfig::default()
    };
    let mut s = IncumbentSession::new(t(0), cfg, 7, b"b");
    drain_incumbent(&mut s);
    let outs = feed_incumbent(&mut s, t(1), &pass_channel(ID));
    assert!(unexpected(MessageKind::PassChannel)(&violation_end(&outs)));
    // Offered, for another handoff.
    let mut s = passing_incumbent();
    let outs = feed_incumbent(&mut s, t(2), &pass_channel(OTHER_ID));
    assert!(matches!(
        violation_end(&outs),
        Violation::WrongHandoffId { got: OTHER_ID, .. }
    ));
}

#[test]
fn pass_channel_during_the_drain_is_a_violation_undone_once_the_hook_returns() {
    let mut s = passing_incumbent();
    assert_eq!(
        feed_incumbent(&mut s, t(2), &prepare(60_000, 25_000)),
        [IOut::Drain]
    );
    assert_eq!(
        feed_incumbent(&mut s, t(3), &pass_channel(ID)),
        [IOut::Close]
    );
    // The count is not sent on a session being undone.
    s.handle_connections_passed(t(4), 2);
    assert_eq!(drain_incumbent(&mut s), []);
    s.handle_drained(t(5), DrainReport::default());
    assert_eq!(drain_incumbent(&mut s), [IOut::Resume]);
    s.handle_resumed(t(6));
    let outs = drain_incumbent(&mut s);
    assert!(unexpected(MessageKind::PassChannel)(&violation_end(&outs)));
}

/// The frames of `s`'s outputs, decoded whole, in order (every output must
/// be a frame).
fn frames_of(s: &mut IncumbentSession) -> Vec<(MessageKind, Option<u32>)> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        let IncumbentOutput::Transmit(f) = o else {
            panic!("{o:?} where only frames were expected");
        };
        v.push(match decode_one(f) {
            Message::ConnectionsPassed { handoff_id, count } => {
                assert_eq!(handoff_id, ID);
                (MessageKind::ConnectionsPassed, Some(count))
            }
            m => (m.kind(), None),
        });
    }
    v
}

#[test]
fn the_count_goes_out_once_just_before_drained_only_with_a_channel_and_nothing_to_undo() {
    // With a channel: the count, then `Drained`.
    let mut s = passing_incumbent();
    feed_incumbent(&mut s, t(2), &pass_channel(ID));
    // Not while idle: there is no drain yet.
    s.handle_connections_passed(t(2), 9);
    assert_eq!(frames_of(&mut s), []);
    feed_incumbent(&mut s, t(3), &prepare(60_000, 25_000));
    s.handle_connections_passed(t(4), 7);
    // Once: a second count would be a violation at the supervisor.
    s.handle_connections_passed(t(4), 8);
    s.handle_drained(t(4), DrainReport::default());
    assert_eq!(
        frames_of(&mut s),
        [
            (MessageKind::ConnectionsPassed, Some(7)),
            (MessageKind::Drained, None)
        ]
    );
    // Nor after the drain.
    s.handle_connections_passed(t(5), 8);
    assert_eq!(frames_of(&mut s), []);

    // Offered, but no channel came: no count.
    let mut s = passing_incumbent();
    feed_incumbent(&mut s, t(3), &prepare(60_000, 25_000));
    s.handle_connections_passed(t(4), 7);
    s.handle_drained(t(4), DrainReport::default());
    assert_eq!(frames_of(&mut s), [(MessageKind::Drained, None)]);

    // A channel, then an abort during the drain: no count, the daemon
    // resumes once the hook returns.
    let mut s = passing_incumbent();
    feed_incumbent(&mut s, t(2), &pass_channel(ID));
    feed_incumbent(&mut s, t(3), &prepare(60_000, 25_000));
    let abort = frame(Message::Abort {
        handoff_id: ID,
        reason: "no",
    });
    assert_eq!(feed_incumbent(&mut s, t(4), &abort), [IOut::Close]);
    s.handle_connections_passed(t(5), 7);
    assert_eq!(drain_incumbent(&mut s), []);
    s.handle_drained(t(5), DrainReport::default());
    assert_eq!(drain_incumbent(&mut s), [IOut::Resume]);
}

#[test]
fn the_channels_messages_and_the_count_are_violations_on_an_incumbents_session() {
    for f in not_for_a_session() {
        let kind = decode_one(&f).kind();
        // Idle, with the channel taken.
        let mut s = passing_incumbent();
        feed_incumbent(&mut s, t(2), &pass_channel(ID));
        let outs = feed_incumbent(&mut s, t(3), &f);
        assert!(
            unexpected(kind)(&violation_end(&outs)),
            "{kind:?}: {outs:?}"
        );
        // Draining: undone once the hook returns.
        let mut s = passing_incumbent();
        feed_incumbent(&mut s, t(2), &pass_channel(ID));
        feed_incumbent(&mut s, t(3), &prepare(60_000, 25_000));
        assert_eq!(feed_incumbent(&mut s, t(4), &f), [IOut::Close], "{kind:?}");
        s.handle_drained(t(5), DrainReport::default());
        assert_eq!(drain_incumbent(&mut s), [IOut::Resume]);
    }
}

// -------------------------------------------------------- the successor

fn passing_successor() -> handoff_core::SuccessorSession {
    acked_successor_with(SuccessorConfig {
        capabilities: PASS,
        ..SuccessorConfig::default()
    })
}

fn violation_failure(outs: &[NOut]) -> Violation {
    match outs.last() {
        Some(NOut::Finished(SuccessorEnd::Failed(SuccessorFailure::Violation(v)))) => *v,
        other => panic!("expected a violation ending, got {other:?} in {outs:?}"),
    }
}

#[test]
fn a_successor_that_offered_the_bit_takes_one_pass_channel_before_begin() {
    let mut s = passing_successor();
    assert_eq!(
        feed_successor(&mut s, t(2), &pass_channel(ID)),
        [NOut::PassChannel(ID)]
    );
    assert_eq!(s.step(), SuccessorStep::AwaitingBegin);
    assert_eq!(s.handoff_id(), Some(ID));
    let begin = frame(Message::Begin { handoff_id: ID });
    assert_eq!(feed_successor(&mut s, t(3), &begin), [NOut::AcquireLock]);

    // A second one is a violation.
    let mut s = passing_successor();
    feed_successor(&mut s, t(2), &pass_channel(ID));
    let outs = feed_successor(&mut s, t(3), &pass_channel(ID));
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert!(unexpected(MessageKind::PassChannel)(&violation_failure(
        &outs
    )));
}

#[test]
fn a_successor_refuses_pass_channel_without_the_bit_or_after_begin() {
    let mut s = acked_successor();
    let outs = feed_successor(&mut s, t(2), &pass_channel(ID));
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert!(unexpected(MessageKind::PassChannel)(&violation_failure(
        &outs
    )));

    let mut s = passing_successor();
    let begin = frame(Message::Begin { handoff_id: ID });
    assert_eq!(feed_successor(&mut s, t(2), &begin), [NOut::AcquireLock]);
    let outs = feed_successor(&mut s, t(3), &pass_channel(ID));
    assert!(unexpected(MessageKind::PassChannel)(&violation_failure(
        &outs
    )));
}

#[test]
fn the_channels_messages_and_the_count_are_violations_on_a_successors_session() {
    for f in not_for_a_session() {
        let kind = decode_one(&f).kind();
        let mut s = passing_successor();
        feed_successor(&mut s, t(2), &pass_channel(ID));
        let outs = feed_successor(&mut s, t(3), &f);
        assert!(
            unexpected(kind)(&violation_failure(&outs)),
            "{kind:?}: {outs:?}"
        );
    }
}
