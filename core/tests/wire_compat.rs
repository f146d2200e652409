//! Wire compatibility with the reference implementation, `beyond-handoff`
//! 0.1.4 (lib `handoff`): every message encodes to the same bytes in both
//! crates, each side decodes the other's frames to the same values, and the
//! supervisor journal record is byte-for-byte the reference's `StateJournal`.
//!
//! Each message scenario builds one logical message twice (ours and the
//! reference's) and hands both to [`assert_wire_compatible`].

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use handoff::frame::{read_message, write_message};
use handoff::protocol::{
    Capabilities as RefCapabilities, HandoffId as RefHandoffId, Message as Ref, Side as RefSide,
};
use handoff::state::{Phase as RefPhase, StateJournal};
use handoff_core::{
    Capabilities, FrameDecoder, HandoffId, JournalPhase, JournalRecord, Message, MessageKind,
    Revisions, Side, Strings, encode_frame,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Shared, non-trivial field values.
// ---------------------------------------------------------------------------

/// A random-looking id (not a valid v4 UUID on purpose: the bytes are opaque).
const ID: [u8; 16] = [
    0x3f, 0x9a, 0x1c, 0xe2, 0x07, 0xb4, 0x4d, 0x81, 0x95, 0x6e, 0x20, 0xd3, 0xff, 0x00, 0x58, 0xc7,
];

/// Revisions at every varint width boundary that matters.
const REVISIONS: [u64; 8] = [0, 1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX];

/// Addresses, including an empty string and non-ASCII ones.
const LISTENING_ON: [&str; 5] = [
    "127.0.0.1:8080",
    "[::1]:443",
    "unix:/run/dæmon/äbc.sock",
    "",
    "ünïcödé-🚀:9000",
];

/// Bytes that are not UTF-8, with the edge values 0x00, 0x7f, 0x80, 0xff.
const BUILD_ID: &[u8] = b"\x00\x7f\x80\xffgit-3f9a1ce2-dirty";

fn fingerprint() -> [u8; 32] {
    let fp: [u8; 32] =
        core::array::from_fn(|i| (i as u8).wrapping_mul(73).wrapping_add(0x11) ^ 0xa5);
    assert!(fp.iter().any(|&b| b != fp[0]), "the fingerprint must vary");
    fp
}

fn our_id() -> HandoffId {
    HandoffId::from_bytes(ID)
}

fn their_id() -> RefHandoffId {
    RefHandoffId(Uuid::from_bytes(ID))
}

// ---------------------------------------------------------------------------
// The reference's message, read field by field into ours.
// ---------------------------------------------------------------------------

fn id_of(id: &RefHandoffId) -> HandoffId {
    HandoffId::from_bytes(*id.0.as_bytes())
}

/// Calls `f` with the reference message `theirs` rewritten as one of ours,
/// field by field (the reference type has no `PartialEq`; this mapping is
/// written out by hand so that it checks every field independently).
fn with_ours<R>(theirs: &Ref, f: impl FnOnce(Message<'_>) -> R) -> R {
    match theirs {
        Ref::Hello {
            role,
            pid,
            build_id,
            proto_min,
            proto_max,
            capabilities,
        } => f(Message::Hello {
            role: match role {
                RefSide::Incumbent => Side::Incumbent,
                RefSide::Successor => Side::Successor,
            },
            pid: *pid,
            build_id: build_id.as_slice(),
            proto_min: *proto_min,
            proto_max: *proto_max,
            capabilities: Capabilities::from_bits(capabilities.reserved),
        }),
        Ref::HelloAck {
            proto_version_chosen,
            handoff_id,
        } => f(Message::HelloAck {
            proto_version_chosen: *proto_version_chosen,
            handoff_id: id_of(handoff_id),
        }),
        Ref::PrepareHandoff {
            handoff_id,
            successor_pid,
            deadline_ms,
            drain_grace_ms,
        } => f(Message::PrepareHandoff {
            handoff_id: id_of(handoff_id),
            successor_pid: *successor_pid,
            deadline_ms: *deadline_ms,
            drain_grace_ms: *drain_grace_ms,
        }),
        Ref::Drained {
            open_conns_remaining,
            accept_closed,
        } => f(Message::Drained {
            open_conns_remaining: *open_conns_remaining,
            accept_closed: *accept_closed,
        }),
        Ref::SealRequest { handoff_id } => f(Message::SealRequest {
            handoff_id: id_of(handoff_id),
        }),
        Ref::SealProgress {
            shards_sealed,
            shards_total,
            last_revision,
        } => f(Message::SealProgress {
            shards_sealed: *shards_sealed,
            shards_total: *shards_total,
            last_revision: *last_revision,
        }),
        Ref::SealComplete {
            handoff_id,
            last_revision_per_shard,
            data_dir_fingerprint,
        } => f(Message::SealComplete {
            handoff_id: id_of(handoff_id),
            last_revision_per_shard: Revisions::from_slice(last_revision_per_shard),
            data_dir_fingerprint: *data_dir_fingerprint,
        }),
        Ref::SealFailed {
            handoff_id,
            error,
            partial_state,
        } => f(Message::SealFailed {
            handoff_id: id_of(handoff_id),
            error,
            partial_state,
        }),
        Ref::Begin { handoff_id } => f(Message::Begin {
            handoff_id: id_of(handoff_id),
        }),
        Ref::Ready {
            handoff_id,
            listening_on,
            healthz_ok,
            advertised_revision_per_shard,
        } => {
            let addrs: Vec<&str> = listening_on.iter().map(String::as_str).collect();
            f(Message::Ready {
                handoff_id: id_of(handoff_id),
                listening_on: Strings::from_slice(&addrs),
                healthz_ok: *healthz_ok,
                advertised_revision_per_shard: Revisions::from_slice(advertised_revision_per_shard),
            })
        }
        Ref::Commit { handoff_id } => f(Message::Commit {
            handoff_id: id_of(handoff_id),
        }),
        Ref::Abort { handoff_id, reason } => f(Message::Abort {
            handoff_id: id_of(handoff_id),
            reason,
        }),
        Ref::ResumeAfterAbort { handoff_id } => f(Message::ResumeAfterAbort {
            handoff_id: id_of(handoff_id),
        }),
        Ref::Heartbeat { ts_ms } => f(Message::Heartbeat { ts_ms: *ts_ms }),
    }
}

fn reference_frame(version: u16, msg: &Ref) -> Vec<u8> {
    let mut out = Vec::new();
    write_message(&mut out, version, msg).expect("the reference encodes the message");
    out
}

fn our_frame(version: u16, msg: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; handoff_core::encoded_frame_len(msg)];
    let n = encode_frame(version, msg, &mut out).expect("we encode the message");
    assert_eq!(n, out.len(), "encode_frame agrees with encoded_frame_len");
    out
}

/// The whole compatibility check for one message built in both crates:
/// 1. the two values are the same logical message (field by field);
/// 2. both crates write the same frame bytes;
/// 3. our decoder reads the reference's frame back to our message;
/// 4. the reference reads our frame back to the same field values.
fn assert_wire_compatible(ours: Message<'_>, theirs: Ref) {
    assert_eq!(ours.kind().name(), handoff::protocol::short_name(&theirs));
    with_ours(&theirs, |t| {
        assert_eq!(t, ours, "the scenario must build the same message twice")
    });

    let our_bytes = our_frame(1, &ours);
    let their_bytes = reference_frame(1, &theirs);
    assert_eq!(
        our_bytes,
        their_bytes,
        "{} frame differs from the reference",
        ours.kind()
    );

    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(&their_bytes);
    assert_eq!(
        used,
        their_bytes.len(),
        "the whole reference frame is taken"
    );
    let frame = res
        .expect("our decoder accepts the reference's frame")
        .expect("one complete frame");
    assert_eq!(frame.version, 1);
    assert_eq!(frame.message, ours);

    let mut cursor = Cursor::new(our_bytes.as_slice());
    let (version, back) = read_message(&mut cursor).expect("the reference reads our frame");
    assert_eq!(version, 1);
    assert_eq!(cursor.position() as usize, our_bytes.len());
    with_ours(&back, |b| {
        assert_eq!(b, ours, "the reference read other values")
    });
}

// ---------------------------------------------------------------------------
// One scenario per message.
// ---------------------------------------------------------------------------

#[test]
fn hello_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Hello {
            role: Side::Successor,
            pid: 4_194_303,
            build_id: BUILD_ID,
            proto_min: 1,
            proto_max: 300,
            capabilities: Capabilities::from_bits(0b101 | 1 << 40),
        },
        Ref::Hello {
            role: RefSide::Successor,
            pid: 4_194_303,
            build_id: BUILD_ID.to_vec(),
            proto_min: 1,
            proto_max: 300,
            capabilities: RefCapabilities {
                reserved: 0b101 | 1 << 40,
            },
        },
    );
}

#[test]
fn hello_from_an_incumbent_with_no_capabilities_matches_the_reference() {
    assert_wire_compatible(
        Message::Hello {
            role: Side::Incumbent,
            pid: 1,
            build_id: b"v0.1.4",
            proto_min: 1,
            proto_max: 1,
            capabilities: Capabilities::NONE,
        },
        Ref::Hello {
            role: RefSide::Incumbent,
            pid: 1,
            build_id: b"v0.1.4".to_vec(),
            proto_min: 1,
            proto_max: 1,
            capabilities: RefCapabilities::default(),
        },
    );
}

#[test]
fn hello_ack_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::HelloAck {
            proto_version_chosen: 129,
            handoff_id: our_id(),
        },
        Ref::HelloAck {
            proto_version_chosen: 129,
            handoff_id: their_id(),
        },
    );
}

#[test]
fn prepare_handoff_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::PrepareHandoff {
            handoff_id: our_id(),
            successor_pid: 65_537,
            deadline_ms: 30_000,
            drain_grace_ms: u64::MAX,
        },
        Ref::PrepareHandoff {
            handoff_id: their_id(),
            successor_pid: 65_537,
            deadline_ms: 30_000,
            drain_grace_ms: u64::MAX,
        },
    );
}

#[test]
fn drained_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Drained {
            open_conns_remaining: 128,
            accept_closed: true,
        },
        Ref::Drained {
            open_conns_remaining: 128,
            accept_closed: true,
        },
    );
}

#[test]
fn seal_request_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::SealRequest {
            handoff_id: our_id(),
        },
        Ref::SealRequest {
            handoff_id: their_id(),
        },
    );
}

#[test]
fn seal_progress_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::SealProgress {
            shards_sealed: 127,
            shards_total: u32::MAX,
            last_revision: 1 << 56,
        },
        Ref::SealProgress {
            shards_sealed: 127,
            shards_total: u32::MAX,
            last_revision: 1 << 56,
        },
    );
}

#[test]
fn seal_complete_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::SealComplete {
            handoff_id: our_id(),
            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
            data_dir_fingerprint: fingerprint(),
        },
        Ref::SealComplete {
            handoff_id: their_id(),
            last_revision_per_shard: REVISIONS.to_vec(),
            data_dir_fingerprint: fingerprint(),
        },
    );
}

#[test]
fn seal_failed_frame_matches_the_reference() {
    let error = "fsync(\"/var/lib/dæmon/shard-7\") failed: No space left on device (os error 28)";
    let partial = "shards 0..=6 sealed; shard 7 half-written — ⚠";
    assert_wire_compatible(
        Message::SealFailed {
            handoff_id: our_id(),
            error,
            partial_state: partial,
        },
        Ref::SealFailed {
            handoff_id: their_id(),
            error: error.to_owned(),
            partial_state: partial.to_owned(),
        },
    );
}

#[test]
fn begin_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Begin {
            handoff_id: our_id(),
        },
        Ref::Begin {
            handoff_id: their_id(),
        },
    );
}

#[test]
fn ready_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Ready {
            handoff_id: our_id(),
            listening_on: Strings::from_slice(&LISTENING_ON),
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::from_slice(&REVISIONS),
        },
        Ref::Ready {
            handoff_id: their_id(),
            listening_on: LISTENING_ON.iter().map(|s| s.to_string()).collect(),
            healthz_ok: true,
            advertised_revision_per_shard: REVISIONS.to_vec(),
        },
    );
}

#[test]
fn commit_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Commit {
            handoff_id: our_id(),
        },
        Ref::Commit {
            handoff_id: their_id(),
        },
    );
}

#[test]
fn abort_frame_matches_the_reference() {
    // A reason longer than 127 bytes takes a two-byte length.
    let reason = "successor failed its health check: ".repeat(5) + "déjà vu";
    assert!(reason.len() > 127);
    assert_wire_compatible(
        Message::Abort {
            handoff_id: our_id(),
            reason: &reason,
        },
        Ref::Abort {
            handoff_id: their_id(),
            reason: reason.clone(),
        },
    );
}

#[test]
fn resume_after_abort_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::ResumeAfterAbort {
            handoff_id: our_id(),
        },
        Ref::ResumeAfterAbort {
            handoff_id: their_id(),
        },
    );
}

#[test]
fn heartbeat_frame_matches_the_reference() {
    assert_wire_compatible(
        Message::Heartbeat {
            ts_ms: 1_718_000_000_123,
        },
        Ref::Heartbeat {
            ts_ms: 1_718_000_000_123,
        },
    );
}

// ---------------------------------------------------------------------------
// The example of docs/PROTOCOL.md section 2.1, and extreme values.
// ---------------------------------------------------------------------------

#[test]
fn heartbeat_of_one_encodes_as_the_protocol_documents_example_in_both_crates() {
    const EXAMPLE: [u8; 8] = [0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0d, 0x01];
    assert_eq!(our_frame(1, &Message::Heartbeat { ts_ms: 1 }), EXAMPLE);
    assert_eq!(reference_frame(1, &Ref::Heartbeat { ts_ms: 1 }), EXAMPLE);
    assert_wire_compatible(Message::Heartbeat { ts_ms: 1 }, Ref::Heartbeat { ts_ms: 1 });
}

/// Every message with its fields at their extremes: maximal integers, empty
/// strings, empty lists, an all-zero and an all-0xff id.
fn extreme_reference_messages() -> Vec<Ref> {
    let zero = RefHandoffId(Uuid::from_bytes([0; 16]));
    let ones = RefHandoffId(Uuid::from_bytes([0xff; 16]));
    vec![
        Ref::Hello {
            role: RefSide::Incumbent,
            pid: u32::MAX,
            build_id: Vec::new(),
            proto_min: u16::MAX,
            proto_max: 0,
            capabilities: RefCapabilities { reserved: u64::MAX },
        },
        Ref::HelloAck {
            proto_version_chosen: u16::MAX,
            handoff_id: ones,
        },
        Ref::PrepareHandoff {
            handoff_id: zero,
            successor_pid: u32::MAX,
            deadline_ms: u64::MAX,
            drain_grace_ms: 0,
        },
        Ref::Drained {
            open_conns_remaining: u32::MAX,
            accept_closed: false,
        },
        Ref::SealRequest { handoff_id: ones },
        Ref::SealProgress {
            shards_sealed: u32::MAX,
            shards_total: 0,
            last_revision: u64::MAX,
        },
        Ref::SealComplete {
            handoff_id: zero,
            last_revision_per_shard: Vec::new(),
            data_dir_fingerprint: [0xff; 32],
        },
        Ref::SealComplete {
            handoff_id: ones,
            last_revision_per_shard: vec![u64::MAX; 300],
            data_dir_fingerprint: [0; 32],
        },
        Ref::SealFailed {
            handoff_id: zero,
            error: String::new(),
            partial_state: String::new(),
        },
        Ref::Begin { handoff_id: zero },
        Ref::Ready {
            handoff_id: ones,
            listening_on: Vec::new(),
            healthz_ok: false,
            advertised_revision_per_shard: Vec::new(),
        },
        Ref::Ready {
            handoff_id: zero,
            listening_on: vec![String::new(); 3],
            healthz_ok: true,
            advertised_revision_per_shard: vec![0; 3],
        },
        Ref::Commit { handoff_id: ones },
        Ref::Abort {
            handoff_id: zero,
            reason: String::new(),
        },
        Ref::ResumeAfterAbort { handoff_id: ones },
        Ref::Heartbeat { ts_ms: u64::MAX },
        Ref::Heartbeat { ts_ms: 0 },
    ]
}

#[test]
fn frames_the_reference_writes_with_extreme_values_round_trip_through_our_codec() {
    let messages = extreme_reference_messages();
    let kinds: std::collections::BTreeSet<&str> =
        messages.iter().map(handoff::protocol::short_name).collect();
    assert_eq!(kinds.len(), 14, "every message kind is covered");

    for version in [0, 1, u16::MAX] {
        for theirs in &messages {
            let wire = reference_frame(version, theirs);
            let mut dec = FrameDecoder::<[u8; 4096]>::new();
            let (used, res) = dec.decode(&wire);
            assert_eq!(used, wire.len());
            let frame = res
                .unwrap_or_else(|e| panic!("{theirs:?} (v{version}) rejected: {e}"))
                .expect("a complete frame");
            assert_eq!(frame.version, version);
            with_ours(theirs, |expected| assert_eq!(frame.message, expected));
            // Re-encoding what we decoded gives the reference's bytes back.
            assert_eq!(our_frame(frame.version, &frame.message), wire, "{theirs:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Random messages of every kind.
// ---------------------------------------------------------------------------

/// xorshift64*: deterministic, good enough to vary field values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A u64 of random bit width, so every varint length appears.
    fn wide(&mut self) -> u64 {
        let shift = self.below(64) as u32;
        self.next() >> shift
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn text(&mut self, max_chars: usize) -> String {
        let n = self.below(max_chars + 1);
        (0..n)
            .map(|_| {
                let limit = [0x80, 0x800, 0x1_0000, 0x11_0000][self.below(4)];
                char::from_u32(self.below(limit) as u32).unwrap_or('\u{fffd}')
            })
            .collect()
    }

    fn id(&mut self) -> RefHandoffId {
        RefHandoffId(Uuid::from_bytes(core::array::from_fn(|_| {
            self.next() as u8
        })))
    }

    fn revisions(&mut self) -> Vec<u64> {
        (0..self.below(20)).map(|_| self.wide()).collect()
    }
}

fn random_reference_message(rng: &mut Rng, kind: usize) -> Ref {
    match kind {
        0 => Ref::Hello {
            role: if rng.below(2) == 0 {
                RefSide::Incumbent
            } else {
                RefSide::Successor
            },
            pid: rng.wide() as u32,
            build_id: rng.bytes(200),
            proto_min: rng.wide() as u16,
            proto_max: rng.wide() as u16,
            capabilities: RefCapabilities {
                reserved: rng.wide(),
            },
        },
        1 => Ref::HelloAck {
            proto_version_chosen: rng.wide() as u16,
            handoff_id: rng.id(),
        },
        2 => Ref::PrepareHandoff {
            handoff_id: rng.id(),
            successor_pid: rng.wide() as u32,
            deadline_ms: rng.wide(),
            drain_grace_ms: rng.wide(),
        },
        3 => Ref::Drained {
            open_conns_remaining: rng.wide() as u32,
            accept_closed: rng.below(2) == 1,
        },
        4 => Ref::SealRequest {
            handoff_id: rng.id(),
        },
        5 => Ref::SealProgress {
            shards_sealed: rng.wide() as u32,
            shards_total: rng.wide() as u32,
            last_revision: rng.wide(),
        },
        6 => Ref::SealComplete {
            handoff_id: rng.id(),
            last_revision_per_shard: rng.revisions(),
            data_dir_fingerprint: core::array::from_fn(|_| rng.next() as u8),
        },
        7 => Ref::SealFailed {
            handoff_id: rng.id(),
            error: rng.text(100),
            partial_state: rng.text(100),
        },
        8 => Ref::Begin {
            handoff_id: rng.id(),
        },
        9 => Ref::Ready {
            handoff_id: rng.id(),
            listening_on: (0..rng.below(6)).map(|_| rng.text(30)).collect(),
            healthz_ok: rng.below(2) == 1,
            advertised_revision_per_shard: rng.revisions(),
        },
        10 => Ref::Commit {
            handoff_id: rng.id(),
        },
        11 => Ref::Abort {
            handoff_id: rng.id(),
            reason: rng.text(200),
        },
        12 => Ref::ResumeAfterAbort {
            handoff_id: rng.id(),
        },
        13 => Ref::Heartbeat { ts_ms: rng.wide() },
        _ => unreachable!("v1 has 14 messages"),
    }
}

#[test]
fn randomly_generated_messages_of_every_kind_are_wire_compatible() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        for (kind, expected) in MessageKind::ALL.iter().enumerate() {
            let theirs = random_reference_message(&mut rng, kind);
            with_ours(&theirs, |ours| {
                assert_eq!(ours.kind(), *expected, "round {round}");
                assert_wire_compatible(ours, theirs.clone());
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Differential decoding: both decoders accept and reject the same payloads.
// ---------------------------------------------------------------------------

/// A frame (version 1) around an arbitrary payload.
fn frame_with_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(2 + payload.len())
        .unwrap()
        .to_le_bytes()
        .to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Decodes one well-framed payload with both crates and checks that they
/// agree: the same value when both accept, and, when only the reference
/// accepts, that our only objection is bytes left over (the reference
/// ignores them); when only we accept, that it is one of our extensions.
/// Returns whether we accepted.
fn assert_decoders_agree(payload: &[u8]) -> bool {
    let wire = frame_with_payload(payload);
    let theirs = read_message(&mut Cursor::new(wire.as_slice()));
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, ours) = dec.decode(&wire);
    assert_eq!(used, wire.len());
    match (ours, theirs) {
        (Ok(Some(frame)), Ok((_, t))) => {
            with_ours(&t, |t| {
                assert_eq!(frame.message, t, "payload {payload:02x?}")
            });
            true
        }
        // The project's extensions (variants 14 and 15), which the
        // reference does not know: they go only to peers that offered them.
        (Ok(Some(frame)), Err(_)) if frame.message.kind().is_extension() => true,
        (Ok(Some(frame)), Err(e)) => {
            panic!(
                "we accept {:?} that the reference rejects ({e}): payload {payload:02x?}",
                frame.message
            )
        }
        (Err(handoff_core::FrameError::Malformed(e)), Ok((_, t))) => {
            assert!(
                matches!(e.kind, handoff_core::DecodeErrorKind::TrailingBytes(_)),
                "the reference accepts {t:?} but we reject it ({e}): payload {payload:02x?}"
            );
            false
        }
        (Err(handoff_core::FrameError::Malformed(_)), Err(_)) => false,
        (other, _) => panic!("unexpected outcome {other:?} for payload {payload:02x?}"),
    }
}

#[test]
fn given_varints_at_and_past_their_type_limits_then_both_decoders_agree() {
    let id = [0x10].into_iter().chain(ID);
    let cases: Vec<(Vec<u8>, bool)> = vec![
        // Hello.proto_min: u16::MAX in three bytes is legal, 65_536 is not.
        (vec![0, 0, 1, 0, 0xff, 0xff, 0x03, 1, 0], true),
        (vec![0, 0, 1, 0, 0x80, 0x80, 0x04, 1, 0], false),
        // A non-minimal varint (1 in two bytes) is accepted by both.
        (vec![0, 0, 0x81, 0x00, 0, 1, 1, 0], true),
        // Hello.pid: u32::MAX in five bytes is legal, a sixth byte is not.
        (vec![0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 1, 1, 0], true),
        (vec![0, 1, 0xff, 0xff, 0xff, 0xff, 0x1f, 0, 1, 1, 0], false),
        (
            vec![0, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00, 0, 1, 1, 0],
            false,
        ),
        // Heartbeat.ts_ms: u64::MAX in ten bytes; a last byte of 2 overflows.
        (
            [13].into_iter().chain([0xff; 9]).chain([0x01]).collect(),
            true,
        ),
        (
            [13].into_iter().chain([0xff; 9]).chain([0x02]).collect(),
            false,
        ),
        (
            [13].into_iter().chain([0x80; 10]).chain([0]).collect(),
            false,
        ),
        // The variant index is a u32 varint too.
        (vec![0x8d, 0x00, 0x01], true),
        (vec![0x8d, 0x80, 0x80, 0x80, 0x10, 0x01], false),
        // Bool, role, id length, UTF-8.
        (vec![3, 0, 2], false),
        (vec![0, 2, 1, 0, 1, 1, 0], false),
        ([4, 15].into_iter().chain([0; 15]).collect(), false),
        (
            [11].into_iter()
                .chain(id.clone())
                .chain([2, 0xc3, 0xa9])
                .collect(),
            true,
        ),
        (
            [11].into_iter().chain(id).chain([2, 0xc3, 0x28]).collect(),
            false,
        ),
    ];
    for (payload, accepted) in cases {
        assert_eq!(
            assert_decoders_agree(&payload),
            accepted,
            "payload {payload:02x?}"
        );
    }
}

#[test]
fn given_thousands_of_corrupted_reference_frames_then_both_decoders_accept_and_reject_alike() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut accepted = 0;
    let mut cases = 0;
    for _ in 0..300 {
        for kind in 0..MessageKind::ALL.len() {
            let theirs = random_reference_message(&mut rng, kind);
            let mut payload = reference_frame(1, &theirs)[6..].to_vec();
            match rng.below(5) {
                // Change one to three bytes.
                0 | 1 => {
                    for _ in 0..=rng.below(3) {
                        let at = rng.below(payload.len());
                        payload[at] = if rng.below(2) == 0 {
                            payload[at] ^ (1 << rng.below(8))
                        } else {
                            rng.next() as u8
                        };
                    }
                }
                // Insert a byte.
                2 => {
                    let at = rng.below(payload.len() + 1);
                    payload.insert(at, rng.next() as u8);
                }
                // Delete a byte.
                3 => {
                    let at = rng.below(payload.len());
                    payload.remove(at);
                }
                // Cut or extend the end.
                _ => {
                    if rng.below(2) == 0 {
                        payload.truncate(rng.below(payload.len()));
                    } else {
                        let extra = rng.bytes(4);
                        payload.extend_from_slice(&extra);
                    }
                }
            }
            cases += 1;
            accepted += usize::from(assert_decoders_agree(&payload));
        }
    }
    // Both outcomes were exercised.
    assert!(accepted > cases / 20, "{accepted} of {cases} accepted");
    assert!(
        accepted < cases - cases / 20,
        "{accepted} of {cases} accepted"
    );
}

// ---------------------------------------------------------------------------
// The journal record.
// ---------------------------------------------------------------------------

/// A file under the temp dir with a name no other test (or test process)
/// uses; removed, with the reference's `.tmp` sibling, when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        TempFile(std::env::temp_dir().join(format!(
            "handoff-core-wire-compat-{}-{nanos}-{n}-{tag}.bin",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("bin.tmp"));
    }
}

fn journal_pairs() -> Vec<(JournalRecord, StateJournal)> {
    let cases = [
        (JournalPhase::Negotiating, RefPhase::Negotiating, 1, None, 0),
        (
            JournalPhase::Draining,
            RefPhase::Draining,
            127,
            Some(128),
            1_718_000_000_123,
        ),
        (
            JournalPhase::Sealing,
            RefPhase::Sealing,
            4_194_303,
            None,
            1 << 35,
        ),
        (
            JournalPhase::AwaitingReady,
            RefPhase::AwaitingReady,
            65_536,
            Some(0),
            127,
        ),
        (
            JournalPhase::Committed,
            RefPhase::Committed,
            0,
            Some(2_147_483_647),
            128,
        ),
        (
            JournalPhase::ResumingAfterAbort,
            RefPhase::ResumingAfterAbort,
            u32::MAX,
            Some(u32::MAX),
            u64::MAX,
        ),
    ];
    cases
        .into_iter()
        .map(|(ours, theirs, incumbent_pid, successor_pid, started)| {
            (
                JournalRecord {
                    handoff_id: our_id(),
                    phase: ours,
                    incumbent_pid,
                    successor_pid,
                    started_at_unix_ms: started,
                },
                StateJournal {
                    handoff_id: their_id(),
                    phase: theirs,
                    incumbent_pid,
                    successor_pid,
                    started_at_unix_ms: started,
                },
            )
        })
        .collect()
}

#[test]
fn journal_records_of_all_six_phases_match_the_reference_state_journal() {
    let pairs = journal_pairs();
    assert_eq!(pairs.len(), 6);
    for (ours, theirs) in &pairs {
        let mut buf = [0u8; JournalRecord::MAX_LEN];
        let n = ours.encode(&mut buf);
        let our_bytes = &buf[..n];

        // The reference's file holds exactly our encoding, and we read it.
        let file = TempFile::new(&format!("ref-{}", ours.phase));
        theirs
            .write_atomic(file.path())
            .expect("the reference writes its journal");
        let their_bytes = std::fs::read(file.path()).expect("the journal file exists");
        assert_eq!(our_bytes, their_bytes.as_slice(), "phase {}", ours.phase);
        assert_eq!(JournalRecord::decode(&their_bytes), Ok(*ours));

        // The reference reads the file we write.
        let file = TempFile::new(&format!("ours-{}", ours.phase));
        std::fs::write(file.path(), our_bytes).expect("write our journal");
        let back = StateJournal::read(file.path())
            .expect("the reference parses our journal")
            .expect("the journal file exists");
        assert_eq!(back.handoff_id, theirs.handoff_id);
        assert_eq!(back.phase, theirs.phase);
        assert_eq!(back.incumbent_pid, theirs.incumbent_pid);
        assert_eq!(back.successor_pid, theirs.successor_pid);
        assert_eq!(back.started_at_unix_ms, theirs.started_at_unix_ms);
    }
}

#[test]
fn journal_temp_files_are_removed_after_the_comparison() {
    let path = {
        let file = TempFile::new("cleanup");
        let (_, theirs) = &journal_pairs()[0];
        theirs.write_atomic(file.path()).unwrap();
        assert!(file.path().exists());
        file.path().to_path_buf()
    };
    assert!(!path.exists());
    assert!(!path.with_extension("bin.tmp").exists());
}

/// The reference's reading of a journal file holding `bytes`, next to ours:
/// the same record when both accept; when only the reference accepts, our
/// only objection is bytes left over. Returns whether we accepted.
fn assert_journal_readers_agree(file: &TempFile, bytes: &[u8]) -> bool {
    std::fs::write(file.path(), bytes).expect("write the journal file");
    let theirs = StateJournal::read(file.path()).map(|j| j.expect("the file exists"));
    match (JournalRecord::decode(bytes), theirs) {
        (Ok(ours), Ok(theirs)) => {
            assert_eq!(ours.handoff_id, id_of(&theirs.handoff_id), "{bytes:02x?}");
            assert_eq!(ours.phase as usize, theirs.phase as usize, "{bytes:02x?}");
            assert_eq!(ours.incumbent_pid, theirs.incumbent_pid, "{bytes:02x?}");
            assert_eq!(ours.successor_pid, theirs.successor_pid, "{bytes:02x?}");
            assert_eq!(
                ours.started_at_unix_ms, theirs.started_at_unix_ms,
                "{bytes:02x?}"
            );
            true
        }
        (Ok(ours), Err(e)) => {
            panic!("we read {ours:?} from a journal the reference rejects ({e}): {bytes:02x?}")
        }
        (Err(e), Ok(theirs)) => {
            assert!(
                matches!(e.kind, handoff_core::DecodeErrorKind::TrailingBytes(_)),
                "the reference reads {theirs:?} but we reject it ({e}): {bytes:02x?}"
            );
            false
        }
        (Err(_), Err(_)) => false,
    }
}

#[test]
fn given_corrupted_journal_files_then_both_readers_accept_and_reject_alike() {
    let file = TempFile::new("corrupt");
    let mut rng = Rng(0x5eed_0f7e_5700_1234);
    let (mut accepted, mut cases) = (0, 0);
    for (ours, _) in journal_pairs() {
        let mut buf = [0u8; JournalRecord::MAX_LEN];
        let n = ours.encode(&mut buf);
        assert!(assert_journal_readers_agree(&file, &buf[..n]));
        for _ in 0..60 {
            let mut bytes = buf[..n].to_vec();
            match rng.below(4) {
                0 | 1 => {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                2 => {
                    bytes.truncate(rng.below(bytes.len()));
                }
                _ => {
                    let at = rng.below(bytes.len() + 1);
                    bytes.insert(at, rng.next() as u8);
                }
            }
            cases += 1;
            accepted += usize::from(assert_journal_readers_agree(&file, &bytes));
        }
    }
    assert!(accepted > 0 && accepted < cases, "{accepted} of {cases}");
}
