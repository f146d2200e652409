//! The codec under arbitrary values: every one of the fourteen messages and
//! of the project's extensions round-trips, a stream of frames decodes the
//! same however it is split, and every one of the fourteen is byte for byte
//! what the reference crate (`beyond-handoff` 0.1.4, lib `handoff`) writes,
//! in both directions.

use std::io::Cursor;

use handoff::frame::{read_message, write_message};
use handoff::protocol::{
    Capabilities as RefCapabilities, HandoffId as RefHandoffId, Message as Ref, Side as RefSide,
};
use handoff_core::{FrameDecoder, MAX_CONNECTION_STATE, Message, MessageKind, Side};
use handoff_proptests::owned::OwnedMessage;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

// ---------------------------------------------------------------- strategies

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Incumbent), Just(Side::Successor)]
}

/// Integers biased towards the varint width boundaries, where an encoder
/// that gets the continuation bit wrong shows it.
fn u64_edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        (0u32..64).prop_map(|b| 1u64 << b),
        (1u32..64).prop_map(|b| (1u64 << b) - 1),
        Just(u64::MAX),
        0u64..300,
    ]
}

fn u32_edgy() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..32).prop_map(|b| 1u32 << b),
        Just(u32::MAX),
        0u32..300,
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9:.\\[\\]]{0,24}",
        Just(String::new())
    ]
}

/// Any of the fourteen messages, every field arbitrary.
fn message() -> impl Strategy<Value = OwnedMessage> {
    let id = any::<[u8; 16]>;
    prop_oneof![
        (
            side(),
            any::<u32>(),
            vec(any::<u8>(), 0..64),
            any::<u16>(),
            any::<u16>(),
            u64_edgy()
        )
            .prop_map(
                |(role, pid, build_id, proto_min, proto_max, capabilities)| {
                    OwnedMessage::Hello {
                        role,
                        pid,
                        build_id,
                        proto_min,
                        proto_max,
                        capabilities,
                    }
                }
            ),
        (any::<u16>(), id()).prop_map(|(proto_version_chosen, handoff_id)| {
            OwnedMessage::HelloAck {
                proto_version_chosen,
                handoff_id,
            }
        }),
        (id(), u32_edgy(), u64_edgy(), u64_edgy()).prop_map(
            |(handoff_id, successor_pid, deadline_ms, drain_grace_ms)| {
                OwnedMessage::PrepareHandoff {
                    handoff_id,
                    successor_pid,
                    deadline_ms,
                    drain_grace_ms,
                }
            }
        ),
        (u32_edgy(), any::<bool>()).prop_map(|(open_conns_remaining, accept_closed)| {
            OwnedMessage::Drained {
                open_conns_remaining,
                accept_closed,
            }
        }),
        id().prop_map(|handoff_id| OwnedMessage::SealRequest { handoff_id }),
        (u32_edgy(), u32_edgy(), u64_edgy()).prop_map(
            |(shards_sealed, shards_total, last_revision)| OwnedMessage::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            }
        ),
        (id(), vec(u64_edgy(), 0..48), any::<[u8; 32]>()).prop_map(
            |(handoff_id, last_revision_per_shard, data_dir_fingerprint)| {
                OwnedMessage::SealComplete {
                    handoff_id,
                    last_revision_per_shard,
                    data_dir_fingerprint,
                }
            }
        ),
        (id(), text(), text()).prop_map(|(handoff_id, error, partial_state)| {
            OwnedMessage::SealFailed {
                handoff_id,
                error,
                partial_state,
            }
        }),
        id().prop_map(|handoff_id| OwnedMessage::Begin { handoff_id }),
        (
            id(),
            vec(text(), 0..8),
            any::<bool>(),
            vec(u64_edgy(), 0..48)
        )
            .prop_map(
                |(handoff_id, listening_on, healthz_ok, advertised_revision_per_shard)| {
                    OwnedMessage::Ready {
                        handoff_id,
                        listening_on,
                        healthz_ok,
                        advertised_revision_per_shard,
                    }
                }
            ),
        id().prop_map(|handoff_id| OwnedMessage::Commit { handoff_id }),
        (id(), text()).prop_map(|(handoff_id, reason)| OwnedMessage::Abort { handoff_id, reason }),
        id().prop_map(|handoff_id| OwnedMessage::ResumeAfterAbort { handoff_id }),
        u64_edgy().prop_map(|ts_ms| OwnedMessage::Heartbeat { ts_ms }),
    ]
}

/// The fourteen of v1 and this project's extensions, which the reference
/// has no form for.
fn any_message() -> impl Strategy<Value = OwnedMessage> {
    let id = any::<[u8; 16]>;
    prop_oneof![
        14 => message(),
        1 => id().prop_map(|handoff_id| OwnedMessage::ListenersRequest { handoff_id }),
        1 => (id(), vec(text(), 0..4))
            .prop_map(|(handoff_id, names)| OwnedMessage::Listeners { handoff_id, names }),
        1 => (id(), any::<u64>())
            .prop_map(|(handoff_id, window_ms)| OwnedMessage::Probation { handoff_id, window_ms }),
        1 => id().prop_map(|handoff_id| OwnedMessage::PassChannel { handoff_id }),
        1 => (id(), connection_state())
            .prop_map(|(handoff_id, state)| OwnedMessage::PassedConnection { handoff_id, state }),
        1 => (id(), u32_edgy())
            .prop_map(|(handoff_id, count)| OwnedMessage::PassDone { handoff_id, count }),
        1 => id().prop_map(|handoff_id| OwnedMessage::ConnectionsTaken { handoff_id }),
        1 => (id(), u32_edgy())
            .prop_map(|(handoff_id, count)| OwnedMessage::ConnectionsPassed { handoff_id, count }),
    ]
}

/// A passed connection's state: usually short, sometimes empty, now and
/// then the whole `MAX_CONNECTION_STATE` (its length prefix takes three
/// varint bytes; one byte repeated, which is cheap to make and to shrink).
fn connection_state() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..200),
        1 => Just(Vec::new()),
        1 => any::<u8>().prop_map(|b| vec![b; MAX_CONNECTION_STATE]),
    ]
}

fn kind_of(m: &OwnedMessage) -> MessageKind {
    m.with_message(|m| m.kind())
}

// ------------------------------------------------------- the reference side

fn ref_id(b: &[u8; 16]) -> RefHandoffId {
    RefHandoffId(Uuid::from_bytes(*b))
}

/// The same logical message as the reference crate's type.
fn to_reference(m: &OwnedMessage) -> Ref {
    match m.clone() {
        OwnedMessage::Hello {
            role,
            pid,
            build_id,
            proto_min,
            proto_max,
            capabilities,
        } => Ref::Hello {
            role: match role {
                Side::Incumbent => RefSide::Incumbent,
                Side::Successor => RefSide::Successor,
            },
            pid,
            build_id,
            proto_min,
            proto_max,
            capabilities: RefCapabilities {
                reserved: capabilities,
            },
        },
        OwnedMessage::HelloAck {
            proto_version_chosen,
            handoff_id,
        } => Ref::HelloAck {
            proto_version_chosen,
            handoff_id: ref_id(&handoff_id),
        },
        OwnedMessage::PrepareHandoff {
            handoff_id,
            successor_pid,
            deadline_ms,
            drain_grace_ms,
        } => Ref::PrepareHandoff {
            handoff_id: ref_id(&handoff_id),
            successor_pid,
            deadline_ms,
            drain_grace_ms,
        },
        OwnedMessage::Drained {
            open_conns_remaining,
            accept_closed,
        } => Ref::Drained {
            open_conns_remaining,
            accept_closed,
        },
        OwnedMessage::SealRequest { handoff_id } => Ref::SealRequest {
            handoff_id: ref_id(&handoff_id),
        },
        OwnedMessage::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        } => Ref::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        },
        OwnedMessage::SealComplete {
            handoff_id,
            last_revision_per_shard,
            data_dir_fingerprint,
        } => Ref::SealComplete {
            handoff_id: ref_id(&handoff_id),
            last_revision_per_shard,
            data_dir_fingerprint,
        },
        OwnedMessage::SealFailed {
            handoff_id,
            error,
            partial_state,
        } => Ref::SealFailed {
            handoff_id: ref_id(&handoff_id),
            error,
            partial_state,
        },
        OwnedMessage::Begin { handoff_id } => Ref::Begin {
            handoff_id: ref_id(&handoff_id),
        },
        OwnedMessage::Ready {
            handoff_id,
            listening_on,
            healthz_ok,
            advertised_revision_per_shard,
        } => Ref::Ready {
            handoff_id: ref_id(&handoff_id),
            listening_on,
            healthz_ok,
            advertised_revision_per_shard,
        },
        OwnedMessage::Commit { handoff_id } => Ref::Commit {
            handoff_id: ref_id(&handoff_id),
        },
        OwnedMessage::Abort { handoff_id, reason } => Ref::Abort {
            handoff_id: ref_id(&handoff_id),
            reason,
        },
        OwnedMessage::ResumeAfterAbort { handoff_id } => Ref::ResumeAfterAbort {
            handoff_id: ref_id(&handoff_id),
        },
        OwnedMessage::Heartbeat { ts_ms } => Ref::Heartbeat { ts_ms },
        OwnedMessage::ListenersRequest { .. }
        | OwnedMessage::Listeners { .. }
        | OwnedMessage::Probation { .. }
        | OwnedMessage::PassChannel { .. }
        | OwnedMessage::PassedConnection { .. }
        | OwnedMessage::PassDone { .. }
        | OwnedMessage::ConnectionsTaken { .. }
        | OwnedMessage::ConnectionsPassed { .. } => {
            unreachable!("an extension has no reference form; `message()` makes none")
        }
    }
}

/// A reference message read back into ours, field by field (the reference
/// type has no `PartialEq`).
fn from_reference(r: Ref) -> OwnedMessage {
    let id = |h: RefHandoffId| *h.0.as_bytes();
    match r {
        Ref::Hello {
            role,
            pid,
            build_id,
            proto_min,
            proto_max,
            capabilities,
        } => OwnedMessage::Hello {
            role: match role {
                RefSide::Incumbent => Side::Incumbent,
                RefSide::Successor => Side::Successor,
            },
            pid,
            build_id,
            proto_min,
            proto_max,
            capabilities: capabilities.reserved,
        },
        Ref::HelloAck {
            proto_version_chosen,
            handoff_id,
        } => OwnedMessage::HelloAck {
            proto_version_chosen,
            handoff_id: id(handoff_id),
        },
        Ref::PrepareHandoff {
            handoff_id,
            successor_pid,
            deadline_ms,
            drain_grace_ms,
        } => OwnedMessage::PrepareHandoff {
            handoff_id: id(handoff_id),
            successor_pid,
            deadline_ms,
            drain_grace_ms,
        },
        Ref::Drained {
            open_conns_remaining,
            accept_closed,
        } => OwnedMessage::Drained {
            open_conns_remaining,
            accept_closed,
        },
        Ref::SealRequest { handoff_id } => OwnedMessage::SealRequest {
            handoff_id: id(handoff_id),
        },
        Ref::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        } => OwnedMessage::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        },
        Ref::SealComplete {
            handoff_id,
            last_revision_per_shard,
            data_dir_fingerprint,
        } => OwnedMessage::SealComplete {
            handoff_id: id(handoff_id),
            last_revision_per_shard,
            data_dir_fingerprint,
        },
        Ref::SealFailed {
            handoff_id,
            error,
            partial_state,
        } => OwnedMessage::SealFailed {
            handoff_id: id(handoff_id),
            error,
            partial_state,
        },
        Ref::Begin { handoff_id } => OwnedMessage::Begin {
            handoff_id: id(handoff_id),
        },
        Ref::Ready {
            handoff_id,
            listening_on,
            healthz_ok,
            advertised_revision_per_shard,
        } => OwnedMessage::Ready {
            handoff_id: id(handoff_id),
            listening_on,
            healthz_ok,
            advertised_revision_per_shard,
        },
        Ref::Commit { handoff_id } => OwnedMessage::Commit {
            handoff_id: id(handoff_id),
        },
        Ref::Abort { handoff_id, reason } => OwnedMessage::Abort {
            handoff_id: id(handoff_id),
            reason,
        },
        Ref::ResumeAfterAbort { handoff_id } => OwnedMessage::ResumeAfterAbort {
            handoff_id: id(handoff_id),
        },
        Ref::Heartbeat { ts_ms } => OwnedMessage::Heartbeat { ts_ms },
    }
}

// ----------------------------------------------------------------- helpers

/// Feeds `stream` to a fresh decoder in the pieces `cuts` gives (each cut a
/// piece length, the last piece whatever is left), collecting the frames.
fn decode_in_pieces(stream: &[u8], cuts: &[usize]) -> Vec<(u16, OwnedMessage)> {
    let mut dec: FrameDecoder<Vec<u8>> = FrameDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut cuts = cuts.iter().copied();
    while pos < stream.len() {
        let len = cuts
            .next()
            .unwrap_or(stream.len())
            .clamp(1, stream.len() - pos);
        let mut piece = &stream[pos..pos + len];
        pos += len;
        while !piece.is_empty() {
            let (used, frame) = dec.decode(piece);
            assert!(
                used > 0 && used <= piece.len(),
                "consumed {used} of {}",
                piece.len()
            );
            piece = &piece[used..];
            if let Some(f) = frame.expect("a valid stream never errors") {
                out.push((f.version, OwnedMessage::from_message(&f.message)));
            }
        }
    }
    assert!(!dec.has_partial(), "a whole stream leaves nothing buffered");
    out
}

fn payload(m: &OwnedMessage) -> Vec<u8> {
    m.with_message(|msg| {
        let mut out = vec![0; msg.encoded_len()];
        let n = msg.encode(&mut out).expect("encoded_len is enough");
        assert_eq!(n, out.len());
        out
    })
}

// ------------------------------------------------------------------- tests

proptest! {
    // Regressions are kept next to this file: the default looks for a lib.rs
    // beside an integration test, finds none and warns on every run.
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_message_decodes_to_itself_and_reencodes_to_the_same_bytes(m in any_message()) {
        let bytes = payload(&m);
        let decoded = Message::decode(&bytes).expect("our own encoding decodes");
        prop_assert_eq!(decoded.kind(), kind_of(&m));
        let back = OwnedMessage::from_message(&decoded);
        prop_assert_eq!(&back, &m);
        // The decoded form (which borrows the wire bytes) re-encodes exactly.
        let mut again = vec![0; decoded.encoded_len()];
        let n = decoded.encode(&mut again).expect("room for it");
        prop_assert_eq!(&again[..n], &bytes[..]);
        // And so does the message rebuilt from owned data.
        prop_assert_eq!(payload(&back), bytes);
    }

    #[test]
    fn any_message_in_a_frame_decodes_with_its_version(m in any_message(), version in any::<u16>()) {
        let frame = m.frame(version);
        let got = decode_in_pieces(&frame, &[]);
        prop_assert_eq!(got, vec![(version, m)]);
    }

    #[test]
    fn a_stream_of_frames_split_anywhere_decodes_to_the_same_messages(
        msgs in vec((any::<u16>(), any_message()), 1..10),
        cuts in vec(1usize..40, 0..200),
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|(v, m)| m.frame(*v)).collect();
        let whole = decode_in_pieces(&stream, &[]);
        prop_assert_eq!(&whole, &msgs);
        let split = decode_in_pieces(&stream, &cuts);
        prop_assert_eq!(&split, &msgs);
        let bytewise = decode_in_pieces(&stream, &vec![1; stream.len()]);
        prop_assert_eq!(&bytewise, &msgs);
    }

    #[test]
    fn any_message_is_byte_for_byte_the_reference_frame(m in message(), version in any::<u16>()) {
        let ours = m.frame(version);
        let mut theirs = Vec::new();
        write_message(&mut theirs, version, &to_reference(&m)).expect("the reference encodes it");
        prop_assert_eq!(&ours, &theirs);
    }

    #[test]
    fn the_reference_frame_decodes_here_and_ours_decodes_there(
        m in message(),
        version in any::<u16>(),
    ) {
        let mut theirs = Vec::new();
        write_message(&mut theirs, version, &to_reference(&m)).expect("the reference encodes it");
        prop_assert_eq!(decode_in_pieces(&theirs, &[]), vec![(version, m.clone())]);

        let ours = m.frame(version);
        let (v, read) = read_message(&mut Cursor::new(&ours)).expect("the reference reads ours");
        prop_assert_eq!(v, version);
        prop_assert_eq!(from_reference(read), m);
    }
}

#[test]
fn the_strategy_reaches_all_fourteen_messages() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2_000 {
        let m = message().new_tree(&mut runner).unwrap().current();
        seen.insert(kind_of(&m));
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        MessageKind::ALL.to_vec()
    );
}

#[test]
fn the_strategy_with_extensions_reaches_every_message() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4_000 {
        let m = any_message().new_tree(&mut runner).unwrap().current();
        seen.insert(kind_of(&m));
    }
    let mut every: Vec<MessageKind> = MessageKind::ALL.to_vec();
    every.extend(MessageKind::EXTENSIONS);
    every.sort();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), every);
}
