//! Errors of the codec. Each is a small `Copy` value that says what was wrong
//! and where, so an adapter can log it and a test can match it.

use core::fmt;

use crate::wire::MessageKind;

/// Why a message payload could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeError {
    /// The message being decoded, once its variant index was read.
    pub message: Option<MessageKind>,
    /// The field being read when the error was found.
    pub field: &'static str,
    /// What was wrong.
    pub kind: DecodeErrorKind,
}

/// What was wrong with a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The payload ended inside a field.
    UnexpectedEnd,
    /// A varint was longer than its type allows or overflowed it.
    BadVarint,
    /// A variant index past the last message this version knows (13).
    UnknownMessage(u32),
    /// A `Side` variant index other than 0 or 1.
    UnknownSide(u32),
    /// A journal phase index past the last phase (5).
    UnknownPhase(u32),
    /// A boolean byte other than 0 or 1.
    BadBool(u8),
    /// An option tag other than 0 or 1.
    BadOption(u8),
    /// A handoff id whose length byte is not 16.
    BadHandoffIdLength(u64),
    /// A string that is not UTF-8.
    InvalidUtf8,
    /// Bytes left in the frame after a complete message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message {
            Some(m) => write!(f, "malformed {} (field `{}`): ", m.name(), self.field)?,
            None => write!(f, "malformed message (field `{}`): ", self.field)?,
        }
        match self.kind {
            DecodeErrorKind::UnexpectedEnd => f.write_str("the frame ends inside this field"),
            DecodeErrorKind::BadVarint => f.write_str("varint is too long or overflows its type"),
            DecodeErrorKind::UnknownMessage(i) => write!(
                f,
                "unknown message variant {i} (protocol v1 defines 0..=13)"
            ),
            DecodeErrorKind::UnknownSide(i) => write!(f, "unknown role {i} (0 or 1 expected)"),
            DecodeErrorKind::UnknownPhase(i) => {
                write!(f, "unknown journal phase {i} (0..=5 expected)")
            }
            DecodeErrorKind::BadBool(b) => write!(f, "boolean byte {b:#04x} (0 or 1 expected)"),
            DecodeErrorKind::BadOption(b) => write!(f, "option tag {b:#04x} (0 or 1 expected)"),
            DecodeErrorKind::BadHandoffIdLength(n) => {
                write!(f, "handoff id of {n} bytes (16 expected)")
            }
            DecodeErrorKind::InvalidUtf8 => f.write_str("string is not valid UTF-8"),
            DecodeErrorKind::TrailingBytes(n) => {
                write!(f, "{n} byte(s) left over after a complete message")
            }
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why the frame decoder returned no frame. After a bad length the byte
/// stream cannot be trusted and the decoder refuses further input; a
/// malformed payload leaves the boundaries intact. The machines close the
/// session on either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// `frame_len` below 2: not even the version field fits.
    TooShort {
        /// The declared length.
        len: u32,
    },
    /// `frame_len` above the limit (1 MiB, or less if the buffer is smaller).
    /// Reported from the prefix alone, before any body byte is buffered.
    TooLarge {
        /// The declared length.
        len: u32,
        /// The largest length this decoder accepts.
        limit: u32,
    },
    /// The frame was complete but its payload was not a valid message.
    Malformed(DecodeError),
    /// Input after an earlier length error: the stream is out of sync.
    Poisoned,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooShort { len } => write!(
                f,
                "frame length {len} is below the minimum of 2 (the version field)"
            ),
            FrameError::TooLarge { len, limit } => write!(
                f,
                "frame length {len} exceeds the limit of {limit} bytes; refused before reading it"
            ),
            FrameError::Malformed(e) => fmt::Display::fmt(e, f),
            FrameError::Poisoned => {
                f.write_str("input after a framing error; the session must close")
            }
        }
    }
}

impl core::error::Error for FrameError {}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too small; `needed` bytes would fit the frame.
    BufferTooSmall {
        /// Bytes the whole frame needs.
        needed: usize,
    },
    /// The frame would exceed the protocol's 1 MiB limit.
    FrameTooLarge {
        /// The `frame_len` it would have.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::BufferTooSmall { needed } => {
                write!(f, "output buffer too small: the frame needs {needed} bytes")
            }
            EncodeError::FrameTooLarge { len } => write!(
                f,
                "message too large: frame length {len} exceeds the 1 MiB protocol limit"
            ),
        }
    }
}

impl core::error::Error for EncodeError {}
