//! Properties of the streaming [`FrameDecoder`]: any split of the stream
//! decodes to the same messages, lengths are checked from the prefix alone,
//! malformed payloads give a precise error, garbage never panics and always
//! makes progress, and a length error poisons the stream.
//!
//! Randomness comes from a tiny deterministic xorshift generator, so every
//! run sees the same inputs.

use std::panic::{AssertUnwindSafe, catch_unwind};

use handoff_core::{
    Buffer, Capabilities, DecodeError, DecodeErrorKind, FrameDecoder, FrameError, HandoffId,
    LEN_PREFIX, MAX_FRAME_LEN, Message, MessageKind, Revisions, Side, Strings, encode_frame,
    encoded_frame_len,
};

// ---------------------------------------------------------------------------
// Test kit: a PRNG, message samples, frame builders.
// ---------------------------------------------------------------------------

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// A u64 of random bit width, so every varint length appears.
    fn wide(&mut self) -> u64 {
        let shift = self.below(64) as u32;
        self.next() >> shift
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    fn id(&mut self) -> HandoffId {
        HandoffId::from_bytes(core::array::from_fn(|_| self.next() as u8))
    }
}

static BUILD_IDS: [&[u8]; 3] = [b"", b"v2.3.1+git.3f9a1ce2", &[0xff; 40]];
static REVISIONS: [&[u64]; 4] = [&[], &[0], &[0, 127, 128, u64::MAX], &[1 << 40; 50]];
static ADDRESSES: [&[&str]; 3] = [&[], &["0.0.0.0:80"], &["[::]:443", "", "ünïcode:1"]];
static TEXTS: [&str; 4] = [
    "",
    "disk full",
    "ö🚀",
    "a reason longer than one hundred and twenty-seven bytes, so that its length prefix \
     takes two bytes on the wire: ..........",
];

/// A message of the given kind with random field values.
fn random_message(rng: &mut Rng, kind: MessageKind) -> Message<'static> {
    match kind {
        MessageKind::Hello => Message::Hello {
            role: if rng.coin() {
                Side::Incumbent
            } else {
                Side::Successor
            },
            pid: rng.wide() as u32,
            build_id: rng.pick(&BUILD_IDS),
            proto_min: rng.wide() as u16,
            proto_max: rng.wide() as u16,
            capabilities: Capabilities::from_bits(rng.wide()),
        },
        MessageKind::HelloAck => Message::HelloAck {
            proto_version_chosen: rng.wide() as u16,
            handoff_id: rng.id(),
        },
        MessageKind::PrepareHandoff => Message::PrepareHandoff {
            handoff_id: rng.id(),
            successor_pid: rng.wide() as u32,
            deadline_ms: rng.wide(),
            drain_grace_ms: rng.wide(),
        },
        MessageKind::Drained => Message::Drained {
            open_conns_remaining: rng.wide() as u32,
            accept_closed: rng.coin(),
        },
        MessageKind::SealRequest => Message::SealRequest {
            handoff_id: rng.id(),
        },
        MessageKind::SealProgress => Message::SealProgress {
            shards_sealed: rng.wide() as u32,
            shards_total: rng.wide() as u32,
            last_revision: rng.wide(),
        },
        MessageKind::SealComplete => Message::SealComplete {
            handoff_id: rng.id(),
            last_revision_per_shard: Revisions::from_slice(rng.pick(&REVISIONS)),
            data_dir_fingerprint: core::array::from_fn(|_| rng.next() as u8),
        },
        MessageKind::SealFailed => Message::SealFailed {
            handoff_id: rng.id(),
            error: rng.pick(&TEXTS),
            partial_state: rng.pick(&TEXTS),
        },
        MessageKind::Begin => Message::Begin {
            handoff_id: rng.id(),
        },
        MessageKind::Ready => Message::Ready {
            handoff_id: rng.id(),
            listening_on: Strings::from_slice(rng.pick(&ADDRESSES)),
            healthz_ok: rng.coin(),
            advertised_revision_per_shard: Revisions::from_slice(rng.pick(&REVISIONS)),
        },
        MessageKind::Commit => Message::Commit {
            handoff_id: rng.id(),
        },
        MessageKind::Abort => Message::Abort {
            handoff_id: rng.id(),
            reason: rng.pick(&TEXTS),
        },
        MessageKind::ResumeAfterAbort => Message::ResumeAfterAbort {
            handoff_id: rng.id(),
        },
        MessageKind::Heartbeat => Message::Heartbeat { ts_ms: rng.wide() },
        MessageKind::ListenersRequest => Message::ListenersRequest {
            handoff_id: rng.id(),
        },
        MessageKind::Listeners => Message::Listeners {
            handoff_id: rng.id(),
            names: Strings::from_slice(rng.pick(&ADDRESSES)),
        },
        MessageKind::Probation => Message::Probation {
            handoff_id: rng.id(),
            window_ms: rng.wide(),
        },
        MessageKind::PassChannel => Message::PassChannel {
            handoff_id: rng.id(),
        },
        MessageKind::PassedConnection => Message::PassedConnection {
            handoff_id: rng.id(),
            state: rng.pick(&BUILD_IDS),
        },
        MessageKind::PassDone => Message::PassDone {
            handoff_id: rng.id(),
            count: rng.wide() as u32,
        },
        MessageKind::ConnectionsTaken => Message::ConnectionsTaken {
            handoff_id: rng.id(),
        },
        MessageKind::ConnectionsPassed => Message::ConnectionsPassed {
            handoff_id: rng.id(),
            count: rng.wide() as u32,
        },
    }
}

/// One whole frame (prefix included) carrying `msg`.
fn frame_of(msg: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0u8; encoded_frame_len(msg)];
    let n = encode_frame(1, msg, &mut out).expect("encodes");
    assert_eq!(n, out.len());
    out
}

/// A frame with version 1 around an arbitrary payload.
fn frame_with_payload(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(2 + payload.len()).unwrap();
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of `msg` (no prefix, no version).
fn payload_of(msg: &Message<'_>) -> Vec<u8> {
    frame_of(msg)[LEN_PREFIX + 2..].to_vec()
}

/// Decodes one whole frame in one call and returns the payload error.
fn malformed(wire: &[u8]) -> DecodeError {
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(wire);
    assert_eq!(used, wire.len(), "the whole frame is consumed");
    match res {
        Err(FrameError::Malformed(e)) => e,
        Err(other) => panic!("expected a malformed payload, got {other:?}"),
        Ok(frame) => panic!("expected a malformed payload, got {frame:?}"),
    }
}

/// Feeds `chunk` to `dec` one frame per call, checking each decoded message
/// against `expected[*next]` and advancing `next`.
fn feed<B: Buffer>(
    dec: &mut FrameDecoder<B>,
    chunk: &[u8],
    expected: &[Message<'_>],
    next: &mut usize,
) {
    let mut rest = chunk;
    while !rest.is_empty() {
        let (used, res) = dec.decode(rest);
        assert!(
            (1..=rest.len()).contains(&used),
            "consumed {used} of {}",
            rest.len()
        );
        rest = &rest[used..];
        if let Some(frame) = res.expect("a valid stream decodes") {
            assert_eq!(frame.version, 1);
            assert_eq!(Some(&frame.message), expected.get(*next), "frame {next}");
            *next += 1;
        }
    }
}

/// Many frames of all fourteen kinds, back to back.
fn stream_of_all_kinds(rng: &mut Rng, count: usize) -> (Vec<Message<'static>>, Vec<u8>) {
    let messages: Vec<Message<'static>> = (0..count)
        .map(|i| {
            // Every kind at least once, then random kinds.
            let kind = if i < MessageKind::ALL.len() {
                MessageKind::ALL[i]
            } else {
                rng.pick(&MessageKind::ALL)
            };
            random_message(rng, kind)
        })
        .collect();
    let wire = messages.iter().flat_map(frame_of).collect();
    (messages, wire)
}

// ---------------------------------------------------------------------------
// Any split of the stream decodes the same.
// ---------------------------------------------------------------------------

#[test]
fn given_a_stream_of_all_kinds_when_fed_one_byte_at_a_time_then_every_frame_decodes_in_order() {
    let mut rng = Rng::new(1);
    let (expected, wire) = stream_of_all_kinds(&mut rng, 300);
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let mut next = 0;
    for byte in &wire {
        let before = next;
        feed(&mut dec, std::slice::from_ref(byte), &expected, &mut next);
        // A frame is returned exactly at its last byte, never later.
        assert_eq!(next > before, !dec.has_partial());
    }
    assert_eq!(next, expected.len());
    assert!(!dec.has_partial());
}

#[test]
fn given_a_stream_of_all_kinds_when_fed_in_random_chunks_then_every_frame_decodes_in_order() {
    for seed in 1..=20 {
        let mut rng = Rng::new(seed);
        let (expected, wire) = stream_of_all_kinds(&mut rng, 200);
        let mut dec = FrameDecoder::<[u8; 4096]>::new();
        let mut next = 0;
        let mut at = 0;
        while at < wire.len() {
            // Mostly small chunks that cut frames anywhere, sometimes large
            // ones that span several frames.
            let size = if rng.below(8) == 0 {
                rng.between(100, 2_000)
            } else {
                rng.between(1, 40)
            };
            let end = (at + size).min(wire.len());
            feed(&mut dec, &wire[at..end], &expected, &mut next);
            at = end;
        }
        assert_eq!(next, expected.len(), "seed {seed}");
        assert!(!dec.has_partial());
    }
}

#[test]
fn given_a_stream_of_all_kinds_when_fed_all_at_once_then_every_frame_decodes_in_order() {
    let mut rng = Rng::new(1);
    let (expected, wire) = stream_of_all_kinds(&mut rng, 300);
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let mut next = 0;
    feed(&mut dec, &wire, &expected, &mut next);
    assert_eq!(next, expected.len());
    assert!(!dec.has_partial());
}

// ---------------------------------------------------------------------------
// Lengths.
// ---------------------------------------------------------------------------

/// Checks that `len` as a prefix, followed by body bytes, is refused after
/// exactly the four prefix bytes, both in one call and byte by byte.
fn assert_refused_from_the_prefix<B: Buffer>(len: u32, limit: u32) {
    let mut wire = len.to_le_bytes().to_vec();
    wire.extend_from_slice(&[0x0d; 64]);

    let mut dec = FrameDecoder::<B>::new();
    let (used, res) = dec.decode(&wire);
    assert_eq!(used, LEN_PREFIX, "nothing after the prefix is taken");
    assert_eq!(
        res.map(|f| f.is_some()),
        Err(FrameError::TooLarge { len, limit })
    );
    assert!(dec.is_failed());
    assert!(!dec.has_partial(), "no body byte is held");

    let mut dec = FrameDecoder::<B>::new();
    for (i, b) in wire[..3].iter().enumerate() {
        let (used, res) = dec.decode(std::slice::from_ref(b));
        assert_eq!((used, res.map(|f| f.is_some())), (1, Ok(false)), "byte {i}");
    }
    let (used, res) = dec.decode(&wire[3..]);
    assert_eq!(used, 1, "only the last prefix byte is taken");
    assert_eq!(
        res.map(|f| f.is_some()),
        Err(FrameError::TooLarge { len, limit })
    );
}

#[test]
fn given_a_2_mib_length_prefix_then_it_is_refused_after_the_prefix_alone() {
    assert_refused_from_the_prefix::<[u8; 4096]>(2 * 1024 * 1024, 4096);
}

#[test]
fn given_a_length_one_past_the_protocol_limit_then_it_is_refused_after_the_prefix_alone() {
    assert_refused_from_the_prefix::<[u8; 4096]>(MAX_FRAME_LEN + 1, 4096);
    assert_refused_from_the_prefix::<[u8; 4096]>(u32::MAX, 4096);
}

#[test]
fn given_a_fixed_buffer_when_a_length_exceeds_it_then_the_buffer_size_is_the_limit() {
    assert_refused_from_the_prefix::<[u8; 4096]>(4097, 4096);
    assert_refused_from_the_prefix::<[u8; 4096]>(MAX_FRAME_LEN, 4096);
    // A frame that fills the buffer exactly is accepted: an `Abort` has
    // 1 (variant) + 17 (id) + 2 (reason length) payload bytes before its text.
    let reason = "x".repeat(4096 - 2 - 20);
    let msg = Message::Abort {
        handoff_id: HandoffId::from_bytes([0x42; 16]),
        reason: &reason,
    };
    let wire = frame_of(&msg);
    assert_eq!(wire.len(), LEN_PREFIX + 4096);
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(&wire);
    assert_eq!(used, wire.len());
    assert_eq!(res.unwrap().map(|f| f.message), Some(msg));
}

#[test]
fn given_a_fixed_buffer_decoder_then_limit_reports_the_largest_length_it_accepts() {
    // `limit()` is documented as "the largest `frame_len` this decoder
    // accepts", and `new()` as accepting "what the buffer can hold if that is
    // less" than 1 MiB.
    let mut dec = FrameDecoder::<[u8; 64]>::new();
    let limit = dec.limit();
    let prefix = 65u32.to_le_bytes();
    let (_, res) = dec.decode(&prefix);
    assert_eq!(
        res.map(|f| f.is_some()),
        Err(FrameError::TooLarge { len: 65, limit: 64 })
    );
    assert_eq!(limit, 64, "limit() claims {limit} but 65 is refused");
}

/// A `Hello` whose frame length is exactly `frame_len` (near 1 MiB).
#[cfg(feature = "alloc")]
fn hello_with_frame_len(frame_len: u32, build_id: &mut Vec<u8>) -> Message<'_> {
    // Fixed part: variant, role, pid, 3-byte length, proto_min, proto_max,
    // capabilities = 9 bytes of payload, plus the 2-byte version.
    build_id.resize(frame_len as usize - 11, 0xab);
    let msg = Message::Hello {
        role: Side::Successor,
        pid: 1,
        build_id,
        proto_min: 1,
        proto_max: 1,
        capabilities: Capabilities::NONE,
    };
    assert_eq!(encoded_frame_len(&msg), LEN_PREFIX + frame_len as usize);
    msg
}

#[cfg(feature = "alloc")]
#[test]
fn given_a_vec_buffer_when_a_frame_is_exactly_max_frame_len_then_it_is_accepted() {
    let mut build_id = Vec::new();
    let msg = hello_with_frame_len(MAX_FRAME_LEN, &mut build_id);
    let wire = frame_of(&msg);
    let mut dec = FrameDecoder::<Vec<u8>>::new();
    assert_eq!(dec.limit(), MAX_FRAME_LEN);
    let mut decoded = 0;
    for chunk in wire.chunks(64 * 1024 + 3) {
        let (used, res) = dec.decode(chunk);
        assert_eq!(used, chunk.len());
        if let Some(frame) = res.expect("a maximal frame is legal") {
            assert_eq!(frame.message, msg);
            decoded += 1;
        }
    }
    assert_eq!(decoded, 1);
}

#[cfg(feature = "alloc")]
#[test]
fn given_a_vec_buffer_when_a_frame_is_one_byte_past_max_frame_len_then_encoder_and_decoder_refuse_it()
 {
    let mut build_id = Vec::new();
    let over = hello_with_frame_len(MAX_FRAME_LEN + 1, &mut build_id);
    let mut out = vec![0u8; encoded_frame_len(&over)];
    assert_eq!(
        encode_frame(1, &over, &mut out),
        Err(handoff_core::EncodeError::FrameTooLarge {
            len: MAX_FRAME_LEN as usize + 1
        })
    );
    assert_refused_from_the_prefix::<Vec<u8>>(MAX_FRAME_LEN + 1, MAX_FRAME_LEN);
    assert_refused_from_the_prefix::<Vec<u8>>(2 * 1024 * 1024, MAX_FRAME_LEN);
}

#[test]
fn given_a_length_below_two_then_it_is_refused_as_too_short() {
    for len in [0u32, 1] {
        let mut wire = len.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0x01, 0x00, 0x0d, 0x01]);
        let mut dec = FrameDecoder::<[u8; 4096]>::new();
        let (used, res) = dec.decode(&wire);
        assert_eq!(used, LEN_PREFIX);
        assert_eq!(res.map(|f| f.is_some()), Err(FrameError::TooShort { len }));
        assert!(dec.is_failed());
    }
}

#[test]
fn given_a_length_of_exactly_two_then_the_empty_payload_is_malformed_but_the_stream_continues() {
    // The version field alone: a legal length, but no message in it.
    let mut wire = frame_with_payload(&[]);
    assert_eq!(wire.len(), 6);
    let next = Message::Heartbeat { ts_ms: 9 };
    wire.extend_from_slice(&frame_of(&next));

    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(&wire);
    assert_eq!(used, 6);
    let Err(FrameError::Malformed(e)) = res else {
        panic!("expected a malformed payload, got {res:?}");
    };
    assert_eq!(e.kind, DecodeErrorKind::UnexpectedEnd);
    assert_eq!(e.message, None);
    assert!(!dec.is_failed());
    let (used, res) = dec.decode(&wire[6..]);
    assert_eq!(used, wire.len() - 6);
    assert_eq!(res.unwrap().map(|f| f.message), Some(next));
}

// ---------------------------------------------------------------------------
// Malformed payloads.
// ---------------------------------------------------------------------------

#[test]
fn given_bytes_left_inside_a_frame_then_trailing_bytes_are_an_error_naming_the_message() {
    for extra in [1usize, 3, 200] {
        let mut payload = vec![0x0d, 0x01];
        payload.extend(std::iter::repeat_n(0u8, extra));
        let e = malformed(&frame_with_payload(&payload));
        assert_eq!(e.kind, DecodeErrorKind::TrailingBytes(extra));
        assert_eq!(e.message, Some(MessageKind::Heartbeat));
        let text = FrameError::Malformed(e).to_string();
        assert!(text.contains("Heartbeat"), "{text}");
        assert!(text.contains(&extra.to_string()), "{text}");
    }
    // The same for a message with a list: a byte after a complete `Ready`.
    let ready = Message::Ready {
        handoff_id: HandoffId::from_bytes([7; 16]),
        listening_on: Strings::from_slice(&["a", "b"]),
        healthz_ok: true,
        advertised_revision_per_shard: Revisions::from_slice(&[1, 2]),
    };
    let mut payload = payload_of(&ready);
    payload.push(0);
    let e = malformed(&frame_with_payload(&payload));
    assert_eq!(e.kind, DecodeErrorKind::TrailingBytes(1));
    assert_eq!(e.message, Some(MessageKind::Ready));
    assert!(e.to_string().contains("Ready"), "{e}");
}

#[test]
fn given_a_malformed_frame_then_the_decoder_stays_in_sync_for_the_next_frame() {
    let next = Message::Commit {
        handoff_id: HandoffId::from_bytes([3; 16]),
    };
    let mut wire = frame_with_payload(&[0x0d, 0x01, 0xff]);
    wire.extend_from_slice(&frame_of(&next));
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(&wire);
    assert_eq!(used, 9);
    assert!(matches!(res, Err(FrameError::Malformed(_))));
    assert!(!dec.is_failed());
    let (used, res) = dec.decode(&wire[9..]);
    assert_eq!(used, wire.len() - 9);
    assert_eq!(res.unwrap().map(|f| f.message), Some(next));
}

#[test]
fn given_an_unknown_variant_index_then_it_is_reported_with_the_index() {
    for (payload, index) in [
        (vec![22u8], 22u32),
        (vec![0xc8, 0x01], 200),
        (vec![0xff, 0xff, 0xff, 0xff, 0x0f], u32::MAX),
    ] {
        let e = malformed(&frame_with_payload(&payload));
        assert_eq!(e.kind, DecodeErrorKind::UnknownMessage(index));
        assert_eq!(e.message, None);
        assert!(e.to_string().contains(&index.to_string()), "{e}");
    }
    // An index that overflows a u32 is a bad varint, not a wrapped index.
    let e = malformed(&frame_with_payload(&[0xff, 0xff, 0xff, 0xff, 0x10]));
    assert_eq!(e.kind, DecodeErrorKind::BadVarint);
}

#[test]
fn given_a_bool_byte_other_than_zero_or_one_then_it_is_a_bad_bool() {
    // Drained { open_conns_remaining: 5, accept_closed: 2 }
    let e = malformed(&frame_with_payload(&[3, 5, 2]));
    assert_eq!(e.kind, DecodeErrorKind::BadBool(2));
    assert_eq!(e.message, Some(MessageKind::Drained));
    assert_eq!(e.field, "accept_closed");

    // Ready with healthz_ok = 0xff.
    let mut payload = vec![9, 16];
    payload.extend_from_slice(&[1; 16]);
    payload.extend_from_slice(&[0, 0xff, 0]);
    let e = malformed(&frame_with_payload(&payload));
    assert_eq!(e.kind, DecodeErrorKind::BadBool(0xff));
    assert_eq!(e.message, Some(MessageKind::Ready));
    assert_eq!(e.field, "healthz_ok");
}

#[test]
fn given_a_role_other_than_zero_or_one_then_it_is_an_unknown_side() {
    let e = malformed(&frame_with_payload(&[0, 2, 1, 0, 1, 1, 0]));
    assert_eq!(e.kind, DecodeErrorKind::UnknownSide(2));
    assert_eq!(e.message, Some(MessageKind::Hello));
}

#[test]
fn given_a_handoff_id_length_other_than_16_then_it_is_a_bad_handoff_id_length() {
    for len in [0u8, 15, 17, 127] {
        // SealRequest with an id of `len` bytes (and the bytes present).
        let mut payload = vec![4, len];
        payload.extend(std::iter::repeat_n(0x5a, usize::from(len)));
        let e = malformed(&frame_with_payload(&payload));
        assert_eq!(e.kind, DecodeErrorKind::BadHandoffIdLength(u64::from(len)));
        assert_eq!(e.message, Some(MessageKind::SealRequest));
        assert_eq!(e.field, "handoff_id");
    }
}

#[test]
fn given_a_string_that_is_not_utf8_then_it_is_invalid_utf8_naming_the_field() {
    let id = [0x10].into_iter().chain([0x33; 16]);
    // Abort.reason = ff fe
    let payload: Vec<u8> = [11]
        .into_iter()
        .chain(id.clone())
        .chain([2, 0xff, 0xfe])
        .collect();
    let e = malformed(&frame_with_payload(&payload));
    assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8);
    assert_eq!((e.message, e.field), (Some(MessageKind::Abort), "reason"));

    // SealFailed.partial_state = an overlong NUL (c0 80).
    let payload: Vec<u8> = [7]
        .into_iter()
        .chain(id.clone())
        .chain([1, b'e', 2, 0xc0, 0x80])
        .collect();
    let e = malformed(&frame_with_payload(&payload));
    assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8);
    assert_eq!(
        (e.message, e.field),
        (Some(MessageKind::SealFailed), "partial_state")
    );

    // Ready.listening_on[1] = a UTF-16 surrogate (ed a0 80).
    let payload: Vec<u8> = [9]
        .into_iter()
        .chain(id)
        .chain([2, 1, b'a', 3, 0xed, 0xa0, 0x80, 1, 0])
        .collect();
    let e = malformed(&frame_with_payload(&payload));
    assert_eq!(e.kind, DecodeErrorKind::InvalidUtf8);
    assert_eq!(
        (e.message, e.field),
        (Some(MessageKind::Ready), "listening_on")
    );
}

#[test]
fn given_any_strict_prefix_of_a_valid_payload_framed_then_it_is_an_unexpected_end() {
    let mut rng = Rng::new(7);
    for kind in MessageKind::ALL {
        for _ in 0..5 {
            let msg = random_message(&mut rng, kind);
            let payload = payload_of(&msg);
            for cut in 0..payload.len() {
                let e = malformed(&frame_with_payload(&payload[..cut]));
                assert_eq!(
                    e.kind,
                    DecodeErrorKind::UnexpectedEnd,
                    "{msg:?} cut at {cut}"
                );
                let named = if cut == 0 { None } else { Some(kind) };
                assert_eq!(e.message, named, "{msg:?} cut at {cut}");
            }
        }
    }
}

#[test]
fn given_a_frame_whose_bytes_stop_early_then_the_decoder_waits_holding_a_partial_frame() {
    let wire = frame_of(&Message::Heartbeat { ts_ms: u64::MAX });
    let mut dec = FrameDecoder::<[u8; 4096]>::new();
    let (used, res) = dec.decode(&wire[..wire.len() - 1]);
    assert_eq!(
        (used, res.map(|f| f.is_some())),
        (wire.len() - 1, Ok(false))
    );
    assert!(dec.has_partial());
    let (used, res) = dec.decode(&wire[wire.len() - 1..]);
    assert_eq!(used, 1);
    assert_eq!(
        res.unwrap().map(|f| f.message),
        Some(Message::Heartbeat { ts_ms: u64::MAX })
    );
}

// ---------------------------------------------------------------------------
// Garbage.
// ---------------------------------------------------------------------------

/// One garbage input: random bytes, a plausible length then random bytes, or
/// a valid stream with a few bytes corrupted.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => {
            let n = rng.below(300);
            rng.bytes(n)
        }
        1 => {
            let mut out = Vec::new();
            for _ in 0..rng.between(1, 4) {
                let body = rng.below(80);
                let declared = if rng.coin() {
                    body as u32
                } else {
                    rng.below(100) as u32
                };
                out.extend_from_slice(&declared.to_le_bytes());
                out.extend_from_slice(&rng.bytes(body));
            }
            out
        }
        _ => {
            let count = rng.between(1, 4);
            let (_, mut wire) = stream_of_all_kinds(rng, count);
            for _ in 0..rng.between(1, 3) {
                let at = rng.below(wire.len());
                wire[at] ^= 1 << rng.below(8);
                if rng.below(4) == 0 {
                    wire[at] = rng.next() as u8;
                }
            }
            wire
        }
    }
}

/// Feeds `input` split at `cuts`; checks progress and that whatever decodes
/// re-encodes to a message that decodes the same. Returns frames decoded.
fn chew<B: Buffer>(input: &[u8], cuts: &[usize]) -> usize {
    let mut dec = FrameDecoder::<B>::new();
    let mut frames = 0;
    let mut start = 0;
    for &end in cuts.iter().chain([&input.len()]) {
        let mut rest = &input[start..end];
        start = end;
        while !rest.is_empty() {
            let (used, res) = dec.decode(rest);
            assert!((1..=rest.len()).contains(&used), "no progress");
            match res {
                Ok(Some(frame)) => {
                    frames += 1;
                    let again = frame_of(&frame.message);
                    let mut check = FrameDecoder::<B>::new();
                    let (n, back) = check.decode(&again);
                    assert_eq!(n, again.len());
                    assert_eq!(back.unwrap().map(|f| f.message), Some(frame.message));
                }
                Ok(None) => assert_eq!(used, rest.len(), "stopped early without a frame"),
                Err(FrameError::Poisoned) => assert_eq!(used, rest.len()),
                Err(FrameError::TooShort { .. } | FrameError::TooLarge { .. }) => {
                    assert!(dec.is_failed());
                }
                Err(_) => assert!(!dec.is_failed()),
            }
            rest = &rest[used..];
        }
    }
    frames
}

#[test]
fn given_thousands_of_random_inputs_split_anywhere_then_decoding_never_panics_and_always_progresses()
 {
    let mut rng = Rng::new(0xdead_beef);
    let mut frames = 0;
    for case in 0..4_000 {
        let input = garbage(&mut rng);
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(input.len() + 1))
            .collect();
        cuts.sort_unstable();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            chew::<[u8; 4096]>(&input, &cuts) + chew::<[u8; 32]>(&input, &cuts)
        }));
        match outcome {
            Ok(n) => frames += n,
            Err(_) => panic!("case {case}: input {input:02x?} split at {cuts:?}"),
        }
    }
    // The corrupted streams still hold many intact frames: the checks above
    // ran on real messages, not only on errors.
    assert!(frames > 1_000, "only {frames} frames decoded");
}

// ---------------------------------------------------------------------------
// Poisoning.
// ---------------------------------------------------------------------------

#[test]
fn given_a_length_error_then_the_decoder_is_poisoned_and_consumes_all_further_input() {
    let valid = frame_of(&Message::Heartbeat { ts_ms: 1 });
    for bad_prefix in [0u32, 1, MAX_FRAME_LEN + 1, u32::MAX] {
        let mut dec = FrameDecoder::<[u8; 4096]>::new();
        let prefix = bad_prefix.to_le_bytes();
        let (used, res) = dec.decode(&prefix);
        assert_eq!(used, LEN_PREFIX);
        assert!(res.is_err());
        assert!(dec.is_failed());

        // Even a perfectly valid frame is refused, and swallowed whole.
        for input in [valid.as_slice(), &[0x00], &[0xff; 10_000]] {
            let (used, res) = dec.decode(input);
            assert_eq!(used, input.len(), "prefix {bad_prefix}");
            assert_eq!(res.map(|f| f.is_some()), Err(FrameError::Poisoned));
            assert!(dec.is_failed());
            assert!(!dec.has_partial());
        }
        let (used, res) = dec.decode(&[]);
        assert_eq!(
            (used, res.map(|f| f.is_some())),
            (0, Err(FrameError::Poisoned))
        );
        assert!(FrameError::Poisoned.to_string().contains("close"));
    }
}
