//! What the three machine checkers share: a shadow of the machine's frame
//! decoder, which sees exactly the bytes the machine decodes and so tells
//! the checker which message (if any) each input carried, and the strict
//! reading of every frame a machine sends.

use std::time::Duration;

use handoff_core::Buffer;
use handoff_core::FrameDecoder;
use handoff_core::FrameError;
use handoff_core::Message;
use handoff_core::MessageKind;
use handoff_core::{HandoffId, LEN_PREFIX, MAX_FRAME_LEN, PROTO_MAX, VERSION_FIELD};

/// What one `handle_input` call delivered to the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// No whole frame yet (or the machine was not reading).
    Nothing,
    /// The stream broke.
    Broken(FrameError),
    /// A frame: its version field and its payload (re-encoded).
    Frame { version: u16, payload: Vec<u8> },
}

impl Received {
    /// The frame's version and message, if one arrived.
    pub(crate) fn message(&self) -> Option<(u16, Message<'_>)> {
        match self {
            Received::Frame { version, payload } => Some((
                *version,
                Message::decode(payload).expect("a message re-encoded by the shadow decodes"),
            )),
            _ => None,
        }
    }

    /// The message if it is of `kind` and passes the checks every machine
    /// makes of a frame: version 1 once a version is negotiated (which is
    /// when the id becomes known), and `id` if it carries one.
    pub(crate) fn valid(&self, kind: MessageKind, id: Option<HandoffId>) -> Option<Message<'_>> {
        let (version, msg) = self.message()?;
        let id_ok = match (msg.handoff_id(), id) {
            (Some(got), Some(want)) => got == want,
            _ => true,
        };
        let version_ok = id.is_none() || version == PROTO_MAX;
        (msg.kind() == kind && version_ok && id_ok).then_some(msg)
    }

    /// Whether a message of `kind` arrived, whatever its version and id.
    pub(crate) fn is(&self, kind: MessageKind) -> bool {
        self.message().is_some_and(|(_, m)| m.kind() == kind)
    }
}

/// The checker's copy of a machine's decoder. Same buffer limit, same
/// bytes, so the same frames and the same consumed counts.
pub(crate) struct Shadow<B: Buffer> {
    dec: FrameDecoder<B>,
    /// Bytes consumed so far: a bound on what the machine may copy out of
    /// frames into its reports.
    pub(crate) consumed: usize,
}

impl<B: Buffer> Shadow<B> {
    pub(crate) fn new() -> Self {
        Shadow {
            dec: FrameDecoder::new(),
            consumed: 0,
        }
    }

    /// Decodes as the machine's decoder does; returns the bytes consumed.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> (usize, Received) {
        let (used, res) = self.dec.decode(bytes);
        self.consumed += used;
        let received = match res {
            Ok(None) => Received::Nothing,
            Err(e) => Received::Broken(e),
            Ok(Some(frame)) => {
                let mut payload = vec![0; frame.message.encoded_len()];
                let n = frame
                    .message
                    .encode(&mut payload)
                    .expect("sized by encoded_len");
                payload.truncate(n);
                Received::Frame {
                    version: frame.version,
                    payload,
                }
            }
        };
        (used, received)
    }
}

/// Checks what one `handle_input` call took of `rest` and returns what it
/// delivered: nothing of no bytes; otherwise at least a byte, and exactly
/// what the machine's `shadow` takes while the machine listens (`Some`),
/// or all of `rest` once it no longer does.
pub(crate) fn consumed<B: Buffer>(
    used: usize,
    rest: &[u8],
    shadow: Option<&mut Shadow<B>>,
) -> Received {
    if rest.is_empty() {
        assert_eq!(used, 0, "handle_input consumed {used} of no bytes");
        return Received::Nothing;
    }
    assert!(
        (1..=rest.len()).contains(&used),
        "handle_input consumed {used} of {} bytes",
        rest.len()
    );
    match shadow {
        Some(shadow) => {
            let (expected, received) = shadow.feed(rest);
            assert_eq!(
                used, expected,
                "the machine framed differently from its decoder"
            );
            received
        }
        None => {
            assert_eq!(
                used,
                rest.len(),
                "input the machine no longer reads must be swallowed whole"
            );
            Received::Nothing
        }
    }
}

/// Reads a frame a machine sent: exactly one whole frame of version 1 whose
/// payload decodes strictly. Anything else is a broken rule.
pub(crate) fn sent(frame: &[u8]) -> Message<'_> {
    assert!(
        frame.len() >= LEN_PREFIX + VERSION_FIELD,
        "a sent frame of {} bytes is shorter than its header",
        frame.len()
    );
    let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
    assert!(len <= MAX_FRAME_LEN, "a sent frame of length {len}");
    assert_eq!(
        len as usize + LEN_PREFIX,
        frame.len(),
        "a sent frame's length field does not match its size"
    );
    let version = u16::from_le_bytes([frame[4], frame[5]]);
    assert_eq!(version, PROTO_MAX, "a sent frame of version {version}");
    Message::decode(&frame[LEN_PREFIX + VERSION_FIELD..])
        .unwrap_or_else(|e| panic!("a sent frame does not decode: {e}"))
}

/// Whole milliseconds, saturating, as the machines compute them.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
