//! The codec targets. `frame_decoder` feeds one byte stream to decoders of
//! every buffer kind in many splits and requires the same frames and errors
//! at the same stream offsets from each; `message_roundtrip` requires that
//! whatever decodes re-encodes to bytes that decode to the same message.

use arbitrary::{Arbitrary, Unstructured};

use super::{MACHINE, MachineVec, Unparse, held, unparse_enum};
use handoff_core::FrameError;
use handoff_core::JournalRecord;
use handoff_core::Message;
use handoff_core::MessageKind;
use handoff_core::{Buffer, DefaultBuffer};
use handoff_core::{Frame, FrameDecoder, encode_frame, encoded_frame_len};
use handoff_core::{LEN_PREFIX, MAX_FRAME_LEN, MIN_FRAME_LEN, VERSION_FIELD};

/// Which decoder reads the stream.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderChoice {
    /// The machines' default: a 4 KiB array.
    Default,
    /// A 64-byte array: the buffer, not the protocol, sets the limit.
    Small,
    /// A `Vec` that grows up to the 1 MiB protocol limit.
    Growable,
    /// A `Vec` with `FrameDecoder::with_limit`.
    GrowableWithLimit(u32),
    /// The 4 KiB array with `FrameDecoder::with_limit`.
    DefaultWithLimit(u32),
}

unparse_enum!(DecoderChoice {
    Default,
    Small,
    Growable,
    GrowableWithLimit(l),
    DefaultWithLimit(l),
});

/// How the `frame_decoder` target reads its bytes: this header, then the
/// rest of the input is the byte stream.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct FrameDecoderInput {
    /// The decoder under test.
    pub decoder: DecoderChoice,
    /// Sizes of the pieces the stream is fed in, cycled: `size % 1024 + 1`
    /// bytes, and a call with no bytes after the piece when bit 15 is set.
    pub pieces: Vec<u16>,
}

impl Unparse for FrameDecoderInput {
    fn unparse(&self, out: &mut Vec<u8>) {
        self.decoder.unparse(out);
        self.pieces.unparse(out);
    }
}

impl FrameDecoderInput {
    /// The whole fuzz input for this header and stream.
    pub fn with_stream(&self, stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.unparse(&mut out);
        out.extend_from_slice(stream);
        out
    }
}

/// What a decoder reported, and where in the stream it had read to.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame {
        end: usize,
        version: u16,
        message: Vec<u8>,
    },
    Error {
        end: usize,
        error: FrameError,
    },
}

/// Feeds `stream` to `dec` in pieces of the sizes `pieces` yields, checking
/// each call, and returns what it reported.
fn decode_stream<B: Buffer>(
    mut dec: FrameDecoder<B>,
    stream: &[u8],
    tracked: bool,
    mut pieces: impl FnMut() -> (usize, bool),
) -> Vec<Event> {
    let limit = dec.limit() as usize;
    assert!((MIN_FRAME_LEN as usize..=MAX_FRAME_LEN as usize).contains(&limit));
    let mut events = Vec::new();
    let (mut pos, mut frame_start, mut failed) = (0, 0, false);
    let mut admitted = 0;
    while pos < stream.len() {
        let (size, then_empty) = pieces();
        let input = &stream[pos..pos.saturating_add(size).min(stream.len())];
        let (used, res) = dec.decode(input);
        assert!(
            (1..=input.len()).contains(&used),
            "consumed {used} of {} bytes",
            input.len()
        );
        let end = pos + used;
        let prefix = |at: usize| {
            let p = &stream[at..at + LEN_PREFIX];
            u32::from_le_bytes([p[0], p[1], p[2], p[3]])
        };
        match res {
            Ok(None) => {
                assert!(!failed);
                // "Need more" with bytes left over would strand a whole frame.
                assert_eq!(used, input.len(), "Ok(None) left input unread");
            }
            Ok(Some(Frame { version, message })) => {
                assert!(!failed);
                let frame_len = end - frame_start - LEN_PREFIX;
                assert!(
                    (MIN_FRAME_LEN as usize..=limit).contains(&frame_len),
                    "a frame of length {frame_len} past the limit {limit}"
                );
                assert_eq!(prefix(frame_start) as usize, frame_len);
                admitted = admitted.max(frame_len);
                let head = frame_start + LEN_PREFIX;
                assert_eq!(
                    version,
                    u16::from_le_bytes([stream[head], stream[head + 1]])
                );
                let payload = &stream[head + VERSION_FIELD..end];
                assert_eq!(Message::decode(payload), Ok(message));
                events.push(Event::Frame {
                    end,
                    version,
                    message: encode_message(&message),
                });
                frame_start = end;
            }
            Err(FrameError::Poisoned) => {
                assert!(failed, "Poisoned before any framing error");
                assert_eq!(used, input.len());
            }
            Err(error @ (FrameError::TooShort { len } | FrameError::TooLarge { len, .. })) => {
                assert!(!failed);
                assert_eq!(
                    end - frame_start,
                    LEN_PREFIX,
                    "a bad length is refused from its prefix alone"
                );
                assert_eq!(prefix(frame_start), len);
                match error {
                    FrameError::TooShort { .. } => assert!(len < MIN_FRAME_LEN),
                    _ => {
                        assert!(
                            len as usize > limit,
                            "{len} refused under the limit {limit}"
                        );
                        assert_eq!(
                            error,
                            FrameError::TooLarge {
                                len,
                                limit: limit as u32
                            }
                        );
                    }
                }
                assert!(dec.is_failed());
                failed = true;
                events.push(Event::Error { end, error });
            }
            Err(FrameError::Malformed(e)) => {
                assert!(!failed);
                let frame_len = end - frame_start - LEN_PREFIX;
                assert!((MIN_FRAME_LEN as usize..=limit).contains(&frame_len));
                assert_eq!(prefix(frame_start) as usize, frame_len);
                admitted = admitted.max(frame_len);
                let payload = &stream[frame_start + LEN_PREFIX + VERSION_FIELD..end];
                assert_eq!(Message::decode(payload), Err(e));
                // A bad payload keeps the stream in sync.
                assert!(!dec.is_failed());
                events.push(Event::Error {
                    end,
                    error: FrameError::Malformed(e),
                });
                frame_start = end;
            }
            // The enum is open to additions; one this checker has no rule
            // for must be given one before it can pass.
            Err(other) => panic!("a frame error the checker has no rule for: {other:?}"),
        }
        pos = end;
        assert_eq!(dec.has_partial(), !failed && frame_start < pos);
        if !failed && pos >= frame_start + LEN_PREFIX {
            // Mid-body: this frame's length was admitted.
            admitted = admitted.max(prefix(frame_start) as usize);
        }
        if tracked {
            // A length is checked before its body is stored, and the buffer
            // grows to the longest admitted frame, no further.
            assert!(
                held(MACHINE) <= admitted && admitted <= limit,
                "the decoder holds {} bytes; the longest frame admitted is {admitted}, the limit {limit}",
                held(MACHINE)
            );
        }
        if then_empty {
            check_empty_call(&mut dec, failed);
        }
    }
    check_empty_call(&mut dec, failed);
    events
}

fn check_empty_call<B: Buffer>(dec: &mut FrameDecoder<B>, failed: bool) {
    let (used, res) = dec.decode(&[]);
    assert_eq!(used, 0);
    if failed {
        assert_eq!(res, Err(FrameError::Poisoned));
    } else {
        assert_eq!(res, Ok(None), "no bytes cannot make a frame");
    }
}

/// Every split of interest for one decoder kind: the fuzzer's pieces, the
/// whole stream at once, and byte by byte must all report the same.
fn all_splits<B: Buffer>(
    new: impl Fn() -> FrameDecoder<B>,
    tracked: bool,
    stream: &[u8],
    pieces: &[u16],
) -> Vec<Event> {
    let mut i = 0;
    let fuzzed = decode_stream(new(), stream, tracked, || {
        let p = pieces.get(i % pieces.len().max(1)).copied().unwrap_or(0);
        i += 1;
        (usize::from(p) % 1024 + 1, p & 0x8000 != 0)
    });
    let whole = decode_stream(new(), stream, tracked, || (usize::MAX, false));
    assert_eq!(fuzzed, whole, "a different split gave different frames");
    let bytewise = decode_stream(new(), stream, tracked, || (1, false));
    assert_eq!(
        fuzzed, bytewise,
        "byte-by-byte feeding gave different frames"
    );
    fuzzed
}

/// The `frame_decoder` target.
pub fn frame_decoder(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(input) = FrameDecoderInput::arbitrary(&mut u) else {
        return;
    };
    let stream = u.take_rest();
    let pieces = &input.pieces;
    match input.decoder {
        DecoderChoice::Default => {
            let fixed = all_splits(FrameDecoder::<DefaultBuffer>::new, false, stream, pieces);
            // A growable buffer held to the same limit is indistinguishable.
            let grown = all_splits(
                || FrameDecoder::<MachineVec>::with_limit(4096),
                true,
                stream,
                pieces,
            );
            assert_eq!(fixed, grown, "array and Vec buffers disagree");
        }
        DecoderChoice::Small => {
            let dec = FrameDecoder::<[u8; 64]>::new();
            assert_eq!(dec.limit(), 64);
            all_splits(FrameDecoder::<[u8; 64]>::new, false, stream, pieces);
        }
        DecoderChoice::Growable => {
            assert_eq!(FrameDecoder::<MachineVec>::new().limit(), MAX_FRAME_LEN);
            all_splits(FrameDecoder::<MachineVec>::new, true, stream, pieces);
        }
        DecoderChoice::GrowableWithLimit(l) => {
            let want = l.clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
            assert_eq!(FrameDecoder::<MachineVec>::with_limit(l).limit(), want);
            all_splits(
                || FrameDecoder::<MachineVec>::with_limit(l),
                true,
                stream,
                pieces,
            );
        }
        DecoderChoice::DefaultWithLimit(l) => {
            let want = l.min(4096).clamp(MIN_FRAME_LEN, MAX_FRAME_LEN);
            assert_eq!(FrameDecoder::<DefaultBuffer>::with_limit(l).limit(), want);
            all_splits(
                || FrameDecoder::<DefaultBuffer>::with_limit(l),
                false,
                stream,
                pieces,
            );
        }
    }
    assert_eq!(held(MACHINE), 0, "a dropped decoder still books bytes");
}

fn encode_message(msg: &Message<'_>) -> Vec<u8> {
    let mut out = vec![0; msg.encoded_len()];
    let n = msg.encode(&mut out).expect("sized by encoded_len");
    assert_eq!(n, out.len(), "encoded_len disagrees with encode");
    out
}

/// The `message_roundtrip` target: the bytes as one message payload (and as
/// a journal record).
pub fn message_roundtrip(data: &[u8]) {
    match Message::decode(data) {
        Ok(msg) => {
            let once = encode_message(&msg);
            let again = Message::decode(&once)
                .unwrap_or_else(|e| panic!("{msg:?} re-encoded does not decode: {e}"));
            assert_eq!(again, msg, "decode, encode, decode changed the message");
            assert_eq!(encode_message(&again), once, "re-encoding is not stable");
            assert_eq!(again.handoff_id(), msg.handoff_id());
            assert_eq!(
                MessageKind::from_index(msg.kind().index()),
                Some(msg.kind())
            );
            // Framed, it comes back whole from a decoder that can hold it.
            let mut frame = vec![0; encoded_frame_len(&msg)];
            match encode_frame(1, &msg, &mut frame) {
                Ok(n) => {
                    assert_eq!(n, frame.len());
                    let mut dec = FrameDecoder::<Vec<u8>>::new();
                    let (used, res) = dec.decode(&frame);
                    assert_eq!(used, frame.len());
                    let got = res.expect("an encoded frame decodes").expect("whole");
                    assert_eq!(got.version, 1);
                    assert_eq!(got.message, msg);
                }
                Err(e) => assert!(
                    frame.len() > LEN_PREFIX + MAX_FRAME_LEN as usize,
                    "a frame within the limit failed to encode: {e}"
                ),
            }
            let _ = format!("{msg:?}");
        }
        Err(e) => {
            let _ = format!("{e}");
        }
    }
    if let Ok(record) = JournalRecord::decode(data) {
        let mut buf = [0; JournalRecord::MAX_LEN];
        let n = record.encode(&mut buf);
        assert_eq!(JournalRecord::decode(&buf[..n]), Ok(record));
    }
}
