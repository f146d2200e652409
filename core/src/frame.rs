//! Framing: `u32 frame_len` (LE), `u16 proto_version` (LE), payload.
//!
//! [`FrameDecoder`] is a two-state machine (reading the 4-byte prefix, then
//! reading `frame_len` bytes) over a [`Buffer`], modelled on tokio-util's
//! length-delimited codec and postcard's accumulator. It accepts the stream in
//! any split, one byte at a time included; checks the prefix before it
//! buffers a single body byte, so an oversized length costs nothing; returns a
//! frame as soon as its last byte arrives; and after a bad length refuses the
//! rest of the stream, since the frame boundaries can no longer be trusted.

use crate::buffer::{Buffer, DefaultBuffer};
use crate::codec::Writer;
use crate::error::{EncodeError, FrameError};
use crate::message::Message;
use crate::wire::{LEN_PREFIX, MAX_FRAME_LEN, MIN_FRAME_LEN, ProtoVersion, VERSION_FIELD};

/// One decoded frame, borrowing the decoder's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The `proto_version` field.
    pub version: ProtoVersion,
    /// The message.
    pub message: Message<'a>,
}

/// Total bytes of the frame that carries `msg` (prefix included).
pub fn encoded_frame_len(msg: &Message<'_>) -> usize {
    LEN_PREFIX + VERSION_FIELD + msg.encoded_len()
}

/// Writes one whole frame into `out` and returns its length.
pub fn encode_frame(
    version: ProtoVersion,
    msg: &Message<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    const HEAD: usize = LEN_PREFIX + VERSION_FIELD;
    // One pass: the payload is written after the header's room, then the
    // header, now that the length is known. A writer past the end of `out`
    // only counts, so an overflow still yields the size needed.
    let payload_len = match out.get_mut(HEAD..) {
        Some(rest) => {
            let mut w = Writer::new(rest);
            msg.write(&mut w);
            w.position()
        }
        None => msg.encoded_len(),
    };
    let inner = VERSION_FIELD + payload_len;
    if inner > MAX_FRAME_LEN as usize {
        return Err(EncodeError::FrameTooLarge { len: inner });
    }
    let total = LEN_PREFIX + inner;
    if total > out.len() {
        return Err(EncodeError::BufferTooSmall { needed: total });
    }
    out[..LEN_PREFIX].copy_from_slice(&(inner as u32).to_le_bytes());
    out[LEN_PREFIX..HEAD].copy_from_slice(&version.to_le_bytes());
    Ok(total)
}

/// Where a complete frame's body (version field and payload) lies.
#[derive(Clone, Copy)]
enum Body {
    /// In the caller's input, after the length prefix; this many bytes.
    InInput(usize),
    /// At the start of the decoder's buffer; this many bytes.
    Buffered(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading the length prefix; this many of its bytes are in `header`.
    Header(u8),
    /// Reading a body of `len` bytes; `filled` are in the buffer.
    Body { len: usize, filled: usize },
    /// A frame of `len` bytes was returned; the next call starts afresh.
    Delivered,
    /// The stream is out of sync.
    Failed,
}

/// A streaming frame decoder over a bounded buffer.
pub struct FrameDecoder<B: Buffer = DefaultBuffer> {
    buf: B,
    limit: u32,
    header: [u8; LEN_PREFIX],
    state: State,
}

impl<B: Buffer> Default for FrameDecoder<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Buffer> FrameDecoder<B> {
    /// A decoder accepting frames up to the protocol limit (1 MiB), or what
    /// the buffer can hold if that is less.
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// A decoder accepting `frame_len` up to `limit`, never above 1 MiB nor
    /// above what the buffer can hold.
    pub fn with_limit(limit: u32) -> Self {
        let buf = B::empty();
        let room = u32::try_from(buf.max_len()).unwrap_or(u32::MAX);
        FrameDecoder {
            limit: limit.min(room).clamp(MIN_FRAME_LEN, MAX_FRAME_LEN),
            buf,
            header: [0; LEN_PREFIX],
            state: State::Header(0),
        }
    }

    /// The largest `frame_len` this decoder accepts.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Whether part of a frame is buffered: the peer is mid-write.
    pub fn has_partial(&self) -> bool {
        match self.state {
            State::Header(n) => n > 0,
            State::Body { .. } => true,
            State::Delivered | State::Failed => false,
        }
    }

    /// Whether an error has stopped this decoder.
    pub fn is_failed(&self) -> bool {
        self.state == State::Failed
    }

    /// Consumes bytes from `input` up to the end of the next frame. Returns
    /// how many bytes were consumed and either the frame (valid until the
    /// next call; it borrows `input` or this decoder's buffer), `None` if
    /// all of `input` was consumed without completing one, or the error that
    /// ended the stream. Call again with the rest of the input.
    pub fn decode<'a>(
        &'a mut self,
        input: &'a [u8],
    ) -> (usize, Result<Option<Frame<'a>>, FrameError>) {
        // Finding the frame and decoding it are kept apart so the message
        // is decoded in one place, straight into the caller's result.
        let (used, found) = self.find(input);
        let body = match found {
            Ok(Some(Body::InInput(len))) => &input[LEN_PREFIX..LEN_PREFIX + len],
            Ok(Some(Body::Buffered(len))) => &self.buf.bytes()[..len],
            Ok(None) => return (used, Ok(None)),
            Err(e) => return (used, Err(e)),
        };
        (used, frame_of(body))
    }

    /// Consumes input up to the end of the next frame and says where its
    /// body is.
    fn find(&mut self, input: &[u8]) -> (usize, Result<Option<Body>, FrameError>) {
        if self.state == State::Delivered {
            self.state = State::Header(0);
        }
        // The common case, a whole frame in the input and nothing buffered,
        // is decoded where it lies: no copy into the buffer. Anything else
        // (a partial frame, a bad length) takes the general path below,
        // which reports errors the same way.
        if self.state == State::Header(0)
            && let Some(prefix) = input.first_chunk::<LEN_PREFIX>()
        {
            let len = u32::from_le_bytes(*prefix);
            if (MIN_FRAME_LEN..=self.limit).contains(&len)
                && input.len() - LEN_PREFIX >= len as usize
            {
                self.state = State::Delivered;
                return (
                    LEN_PREFIX + len as usize,
                    Ok(Some(Body::InInput(len as usize))),
                );
            }
        }
        let mut used = 0;
        loop {
            match self.state {
                State::Failed => return (input.len(), Err(FrameError::Poisoned)),
                // Left at the top of this call; a frame ends the call.
                State::Delivered => return (used, Ok(None)),
                State::Header(have) => {
                    let have = usize::from(have);
                    let take = (LEN_PREFIX - have).min(input.len() - used);
                    self.header[have..have + take].copy_from_slice(&input[used..used + take]);
                    used += take;
                    let have = have + take;
                    if have < LEN_PREFIX {
                        self.state = State::Header(have as u8);
                        return (used, Ok(None));
                    }
                    let len = u32::from_le_bytes(self.header);
                    if let Err(e) = self.admit(len) {
                        self.state = State::Failed;
                        return (used, Err(e));
                    }
                    self.state = State::Body {
                        len: len as usize,
                        filled: 0,
                    };
                }
                State::Body { len, filled } => {
                    let take = (len - filled).min(input.len() - used);
                    self.buf.bytes_mut()[filled..filled + take]
                        .copy_from_slice(&input[used..used + take]);
                    used += take;
                    let filled = filled + take;
                    if filled < len {
                        self.state = State::Body { len, filled };
                        return (used, Ok(None));
                    }
                    // The length was valid, so the stream stays in sync even if
                    // this payload is malformed: the next call starts a new frame.
                    self.state = State::Delivered;
                    return (used, Ok(Some(Body::Buffered(len))));
                }
            }
        }
    }

    /// Checks a length prefix and makes room for the body.
    fn admit(&mut self, len: u32) -> Result<(), FrameError> {
        if len < MIN_FRAME_LEN {
            return Err(FrameError::TooShort { len });
        }
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if !self.buf.grow(len as usize) {
            let limit = self.buf.bytes().len().min(self.limit as usize) as u32;
            return Err(FrameError::TooLarge { len, limit });
        }
        Ok(())
    }
}

/// Decodes a frame body (version field and payload).
#[inline]
fn frame_of(body: &[u8]) -> Result<Option<Frame<'_>>, FrameError> {
    let version = u16::from_le_bytes([body[0], body[1]]);
    match Message::decode(&body[VERSION_FIELD..]) {
        Ok(message) => Ok(Some(Frame { version, message })),
        Err(e) => Err(FrameError::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HandoffId;

    #[test]
    fn heartbeat_frame_matches_the_protocol_documents_example() {
        let mut out = [0u8; 16];
        let n = encode_frame(1, &Message::Heartbeat { ts_ms: 1 }, &mut out).unwrap();
        assert_eq!(&out[..n], &[0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x0d, 0x01]);
    }

    #[test]
    fn a_too_small_output_buffer_reports_the_size_needed() {
        let mut out = [0u8; 4];
        assert_eq!(
            encode_frame(1, &Message::Heartbeat { ts_ms: 1 }, &mut out),
            Err(EncodeError::BufferTooSmall { needed: 8 })
        );
    }

    #[test]
    fn a_frame_split_into_single_bytes_decodes_once_at_its_last_byte() {
        let mut wire = [0u8; 64];
        let msg = Message::Commit {
            handoff_id: HandoffId::from_bytes([3; 16]),
        };
        let n = encode_frame(1, &msg, &mut wire).unwrap();
        let mut dec: FrameDecoder<[u8; 64]> = FrameDecoder::new();
        for (i, b) in wire[..n].iter().enumerate() {
            let (used, res) = dec.decode(core::slice::from_ref(b));
            assert_eq!(used, 1);
            let frame = res.unwrap();
            assert_eq!(frame.is_some(), i == n - 1, "byte {i}");
            if let Some(f) = frame {
                assert_eq!(f.message, msg);
            }
        }
    }

    #[test]
    fn an_oversized_length_is_refused_from_the_prefix_alone() {
        let mut dec: FrameDecoder<[u8; 64]> = FrameDecoder::new();
        let prefix = (2u32 * 1024 * 1024).to_le_bytes();
        let (used, res) = dec.decode(&prefix);
        assert_eq!(used, 4);
        assert!(matches!(res, Err(FrameError::TooLarge { len, .. }) if len == 2 * 1024 * 1024));
        // Everything after is refused: the stream is out of sync.
        assert_eq!(dec.decode(&[1, 2, 3]), (3, Err(FrameError::Poisoned)));
    }

    #[test]
    fn the_limit_is_the_smaller_of_the_protocol_and_the_buffer() {
        let mut dec: FrameDecoder<[u8; 16]> = FrameDecoder::new();
        let prefix = 17u32.to_le_bytes();
        let (_, res) = dec.decode(&prefix);
        assert_eq!(res, Err(FrameError::TooLarge { len: 17, limit: 16 }));
        assert_eq!(dec.limit(), 16);
        let dec: FrameDecoder<[u8; 16]> = FrameDecoder::with_limit(8);
        assert_eq!(dec.limit(), 8);
        let dec: FrameDecoder<[u8; 16]> = FrameDecoder::with_limit(u32::MAX);
        assert_eq!(dec.limit(), 16);
    }

    #[test]
    fn a_length_below_the_version_field_is_refused() {
        let mut dec: FrameDecoder<[u8; 16]> = FrameDecoder::new();
        let prefix = 1u32.to_le_bytes();
        let (_, res) = dec.decode(&prefix);
        assert_eq!(res, Err(FrameError::TooShort { len: 1 }));
    }
}
