//! The fourteen messages of protocol v1, the project's extensions, and
//! their payload encoding.
//!
//! A decoded [`Message`] borrows from the frame it came from: byte fields and
//! strings are slices of it, and the two list fields ([`Revisions`],
//! [`Strings`]) keep the validated wire bytes and decode elements as they are
//! iterated. So decoding allocates nothing and a message of any size the frame
//! limit allows can be read. The same list types also wrap plain slices, which
//! is how callers build messages to send.

use core::fmt;

use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, DecodeErrorKind};
use crate::wire::{Capabilities, HandoffId, MessageKind, ProtoVersion, Side};

/// One protocol message. Variants are in wire order (the variant index is the
/// first varint of the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// 0, incumbent or successor → supervisor: identity and version range.
    Hello {
        /// Which role the sender plays.
        role: Side,
        /// The sender's process id.
        pid: u32,
        /// An implementation-defined build identifier.
        build_id: &'a [u8],
        /// The oldest version the sender speaks.
        proto_min: ProtoVersion,
        /// The newest version the sender speaks.
        proto_max: ProtoVersion,
        /// Optional features the sender offers.
        capabilities: Capabilities,
    },
    /// 1, supervisor → incumbent or successor: chosen version and handoff id.
    HelloAck {
        /// The version both sides will use.
        proto_version_chosen: ProtoVersion,
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 2, supervisor → incumbent: start draining.
    PrepareHandoff {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// The successor's process id.
        successor_pid: u32,
        /// Time left for the whole handoff, in milliseconds.
        deadline_ms: u64,
        /// Time the incumbent may spend draining, in milliseconds.
        drain_grace_ms: u64,
    },
    /// 3, incumbent → supervisor: drain finished.
    Drained {
        /// Connections still open after the drain.
        open_conns_remaining: u32,
        /// Whether the incumbent stopped accepting.
        accept_closed: bool,
    },
    /// 4, supervisor → incumbent: seal your state and release the lock.
    SealRequest {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 5, incumbent → supervisor: progress of a long seal.
    SealProgress {
        /// Shards sealed so far.
        shards_sealed: u32,
        /// Shards in all.
        shards_total: u32,
        /// The last revision sealed.
        last_revision: u64,
    },
    /// 6, incumbent → supervisor: sealed, lock released.
    SealComplete {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// The last revision of each shard.
        last_revision_per_shard: Revisions<'a>,
        /// A fingerprint of the sealed data directory.
        data_dir_fingerprint: [u8; 32],
    },
    /// 7, incumbent → supervisor: seal failed; lock kept, serving resumed.
    SealFailed {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// What failed.
        error: &'a str,
        /// What was left half done, if anything.
        partial_state: &'a str,
    },
    /// 8, supervisor → successor: take the lock and start serving.
    Begin {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 9, successor → supervisor: serving; the successor is authoritative.
    Ready {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// Addresses the successor serves on.
        listening_on: Strings<'a>,
        /// The successor's own health check.
        healthz_ok: bool,
        /// The revision of each shard the successor opened.
        advertised_revision_per_shard: Revisions<'a>,
    },
    /// 10, supervisor → incumbent: the handoff committed; exit.
    Commit {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 11, supervisor → incumbent or successor: the handoff is abandoned.
    Abort {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// Why, for logs.
        reason: &'a str,
    },
    /// 12, supervisor → incumbent: re-acquire the lock and serve again.
    ResumeAfterAbort {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 13, any direction: the sender is alive.
    Heartbeat {
        /// The sender's clock in milliseconds; receivers do not interpret it.
        ts_ms: u64,
    },
    /// 14 (extension), supervisor → incumbent that offered
    /// [`Capabilities::RECLAIM_LISTENERS`]: pass me your listening sockets.
    ListenersRequest {
        /// The id of this session, from `HelloAck`.
        handoff_id: HandoffId,
    },
    /// 15 (extension), incumbent → supervisor: the listeners' names, in the
    /// order of the descriptors passed with the frame's first byte
    /// (`SCM_RIGHTS`), one each.
    Listeners {
        /// The id of this session.
        handoff_id: HandoffId,
        /// One name per passed descriptor.
        names: Strings<'a>,
    },
    /// 16 (extension), supervisor → sealed incumbent that offered
    /// [`Capabilities::PROBATION`]: the successor sent `Ready` and serves on
    /// probation for this long; stay sealed and alive, heartbeat, and wait
    /// for `Commit` (it passed) or `ResumeAfterAbort` (it was rolled back).
    Probation {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// The window, in milliseconds from receipt.
        window_ms: u64,
    },
    /// 17 (extension), supervisor → incumbent and successor that both
    /// offered [`Capabilities::PASS_CONNECTIONS`]: one end of a socketpair,
    /// passed beside the frame's first byte; the two ends join the two
    /// processes for this handoff's connections (docs/PROTOCOL.md section
    /// 11). Sent before `PrepareHandoff`.
    PassChannel {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 18 (extension), incumbent → successor on the pass channel: one
    /// client connection, passed beside the frame (descriptors of
    /// consecutive frames may travel together, in order, at most
    /// 253 per message, the kernel's limit), and what the successor needs
    /// to serve it on (at least the bytes read and not yet answered).
    PassedConnection {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// At most [`crate::MAX_CONNECTION_STATE`] bytes, the daemon's own.
        state: &'a [u8],
    },
    /// 19 (extension), incumbent → successor on the pass channel: the
    /// last frame; `count` connections were passed in all.
    PassDone {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// How many `PassedConnection` frames came before.
        count: u32,
    },
    /// 20 (extension), successor → incumbent on the pass channel: from
    /// now on this process reads and answers the passed connections
    /// (written just before `Ready`). An incumbent rolled back after it
    /// serves them again without the state it passed.
    ConnectionsTaken {
        /// The id of this handoff.
        handoff_id: HandoffId,
    },
    /// 21 (extension), incumbent → supervisor, just before `Drained`: how
    /// many connections went to the successor.
    ConnectionsPassed {
        /// The id of this handoff.
        handoff_id: HandoffId,
        /// How many.
        count: u32,
    },
}

/// A list of revisions (`Vec<u64>` on the wire): either a caller's slice, or
/// the validated varints of a received frame, decoded while iterating.
#[derive(Clone, Copy)]
pub struct Revisions<'a>(RevisionsRepr<'a>);

#[derive(Clone, Copy)]
enum RevisionsRepr<'a> {
    Slice(&'a [u64]),
    Wire { varints: &'a [u8], len: usize },
}

impl<'a> Revisions<'a> {
    /// Revisions to send.
    pub const fn from_slice(revisions: &'a [u64]) -> Self {
        Revisions(RevisionsRepr::Slice(revisions))
    }

    /// The empty list.
    pub const EMPTY: Revisions<'static> = Revisions(RevisionsRepr::Slice(&[]));

    /// `varints` must hold exactly `len` valid u64 varints.
    pub(crate) fn from_wire(varints: &'a [u8], len: usize) -> Self {
        Revisions(RevisionsRepr::Wire { varints, len })
    }

    /// Number of revisions.
    pub fn len(&self) -> usize {
        match self.0 {
            RevisionsRepr::Slice(s) => s.len(),
            RevisionsRepr::Wire { len, .. } => len,
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The revisions in order.
    pub fn iter(&self) -> RevisionsIter<'a> {
        match self.0 {
            RevisionsRepr::Slice(s) => RevisionsIter(IterRepr::Slice(s.iter())),
            RevisionsRepr::Wire { varints, len } => RevisionsIter(IterRepr::Wire {
                reader: Reader::new(varints),
                left: len,
            }),
        }
    }

    /// The bytes this list occupies on the wire after its length, when it
    /// came from a frame.
    pub(crate) fn wire_bytes(&self) -> Option<&'a [u8]> {
        match self.0 {
            RevisionsRepr::Wire { varints, .. } => Some(varints),
            RevisionsRepr::Slice(_) => None,
        }
    }

    fn encode(&self, w: &mut Writer<'_>) {
        w.varint(self.len() as u64);
        match self.wire_bytes() {
            Some(raw) => w.raw(raw),
            None => self.iter().for_each(|r| w.varint(r)),
        }
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeErrorKind> {
        let len = r.seq_len()?;
        let start = r.position();
        r.skip_u64s(len)?;
        Ok(Revisions::from_wire(r.since(start), len))
    }
}

/// Iterator over [`Revisions`].
pub struct RevisionsIter<'a>(IterRepr<'a, u64>);

enum IterRepr<'a, T> {
    Slice(core::slice::Iter<'a, T>),
    Wire { reader: Reader<'a>, left: usize },
}

impl Iterator for RevisionsIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match &mut self.0 {
            IterRepr::Slice(it) => it.next().copied(),
            IterRepr::Wire { reader, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // Validated when the frame was decoded; `ok()` only guards
                // against a logic error turning into a panic.
                reader.u64().ok()
            }
        }
    }
}

impl PartialEq for Revisions<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Revisions<'_> {}

impl fmt::Debug for Revisions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A list of strings (`Vec<String>` on the wire): either a caller's slice, or
/// the validated bytes of a received frame.
#[derive(Clone, Copy)]
pub struct Strings<'a>(StringsRepr<'a>);

#[derive(Clone, Copy)]
enum StringsRepr<'a> {
    Slice(&'a [&'a str]),
    Wire { bytes: &'a [u8], len: usize },
}

impl<'a> Strings<'a> {
    /// Strings to send.
    pub const fn from_slice(strings: &'a [&'a str]) -> Self {
        Strings(StringsRepr::Slice(strings))
    }

    /// The empty list.
    pub const EMPTY: Strings<'static> = Strings(StringsRepr::Slice(&[]));

    /// `bytes` must hold exactly `len` valid length-prefixed UTF-8 strings.
    pub(crate) fn from_wire(bytes: &'a [u8], len: usize) -> Self {
        Strings(StringsRepr::Wire { bytes, len })
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        match self.0 {
            StringsRepr::Slice(s) => s.len(),
            StringsRepr::Wire { len, .. } => len,
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strings in order.
    pub fn iter(&self) -> StringsIter<'a> {
        match self.0 {
            StringsRepr::Slice(s) => StringsIter(IterRepr::Slice(s.iter())),
            StringsRepr::Wire { bytes, len } => StringsIter(IterRepr::Wire {
                reader: Reader::new(bytes),
                left: len,
            }),
        }
    }

    pub(crate) fn wire_bytes(&self) -> Option<&'a [u8]> {
        match self.0 {
            StringsRepr::Wire { bytes, .. } => Some(bytes),
            StringsRepr::Slice(_) => None,
        }
    }

    fn encode(&self, w: &mut Writer<'_>) {
        w.varint(self.len() as u64);
        match self.wire_bytes() {
            Some(raw) => w.raw(raw),
            None => self.iter().for_each(|s| w.len_prefixed(s.as_bytes())),
        }
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeErrorKind> {
        let len = r.seq_len()?;
        let start = r.position();
        for _ in 0..len {
            r.str()?;
        }
        Ok(Strings::from_wire(r.since(start), len))
    }
}

/// Iterator over [`Strings`].
pub struct StringsIter<'a>(IterRepr<'a, &'a str>);

impl<'a> Iterator for StringsIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match &mut self.0 {
            IterRepr::Slice(it) => it.next().copied(),
            IterRepr::Wire { reader, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                reader.str().ok()
            }
        }
    }
}

impl PartialEq for Strings<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Strings<'_> {}

impl fmt::Debug for Strings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

fn put_id(w: &mut Writer<'_>, id: &HandoffId) {
    w.len_prefixed(id.as_bytes());
}

/// The handoff id's 16 bytes, borrowed from the input. Callers copy them
/// into the message after its other fields: an id held by value across the
/// other reads went through a byte-wise copy on the stack, read back whole,
/// which stalled store forwarding.
#[inline(always)]
fn take_id<'a>(r: &mut Reader<'a>) -> Result<&'a [u8; 16], DecodeErrorKind> {
    r.field("handoff_id");
    // serde's Uuid is a byte string in postcard: a length, which must be 16.
    let len = r.u64()?;
    if len != 16 {
        return Err(DecodeErrorKind::BadHandoffIdLength(len));
    }
    r.array_ref::<16>()
}

impl<'a> Message<'a> {
    /// Which message this is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello { .. } => MessageKind::Hello,
            Message::HelloAck { .. } => MessageKind::HelloAck,
            Message::PrepareHandoff { .. } => MessageKind::PrepareHandoff,
            Message::Drained { .. } => MessageKind::Drained,
            Message::SealRequest { .. } => MessageKind::SealRequest,
            Message::SealProgress { .. } => MessageKind::SealProgress,
            Message::SealComplete { .. } => MessageKind::SealComplete,
            Message::SealFailed { .. } => MessageKind::SealFailed,
            Message::Begin { .. } => MessageKind::Begin,
            Message::Ready { .. } => MessageKind::Ready,
            Message::Commit { .. } => MessageKind::Commit,
            Message::Abort { .. } => MessageKind::Abort,
            Message::ResumeAfterAbort { .. } => MessageKind::ResumeAfterAbort,
            Message::Heartbeat { .. } => MessageKind::Heartbeat,
            Message::ListenersRequest { .. } => MessageKind::ListenersRequest,
            Message::Listeners { .. } => MessageKind::Listeners,
            Message::Probation { .. } => MessageKind::Probation,
            Message::PassChannel { .. } => MessageKind::PassChannel,
            Message::PassedConnection { .. } => MessageKind::PassedConnection,
            Message::PassDone { .. } => MessageKind::PassDone,
            Message::ConnectionsTaken { .. } => MessageKind::ConnectionsTaken,
            Message::ConnectionsPassed { .. } => MessageKind::ConnectionsPassed,
        }
    }

    /// The handoff id the message carries, if it carries one.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        match *self {
            Message::HelloAck { handoff_id, .. }
            | Message::PrepareHandoff { handoff_id, .. }
            | Message::SealRequest { handoff_id }
            | Message::SealComplete { handoff_id, .. }
            | Message::SealFailed { handoff_id, .. }
            | Message::Begin { handoff_id }
            | Message::Ready { handoff_id, .. }
            | Message::Commit { handoff_id }
            | Message::Abort { handoff_id, .. }
            | Message::ResumeAfterAbort { handoff_id }
            | Message::ListenersRequest { handoff_id }
            | Message::Listeners { handoff_id, .. }
            | Message::Probation { handoff_id, .. }
            | Message::PassChannel { handoff_id }
            | Message::PassedConnection { handoff_id, .. }
            | Message::PassDone { handoff_id, .. }
            | Message::ConnectionsTaken { handoff_id }
            | Message::ConnectionsPassed { handoff_id, .. } => Some(handoff_id),
            Message::Hello { .. }
            | Message::Drained { .. }
            | Message::SealProgress { .. }
            | Message::Heartbeat { .. } => None,
        }
    }

    /// Bytes of the payload (the postcard encoding, without frame header).
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::new(&mut []);
        self.write(&mut w);
        w.position()
    }

    /// Writes the payload into `out`; `Err(needed)` if `out` is too short, in
    /// which case `out` holds a partial encoding.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, usize> {
        let mut w = Writer::new(out);
        self.write(&mut w);
        if w.overflowed() {
            Err(w.position())
        } else {
            Ok(w.position())
        }
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) {
        w.varint(u64::from(self.kind().index()));
        match self {
            Message::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => {
                w.varint(u64::from(role.index()));
                w.varint(u64::from(*pid));
                w.len_prefixed(build_id);
                w.varint(u64::from(*proto_min));
                w.varint(u64::from(*proto_max));
                w.varint(capabilities.bits());
            }
            Message::HelloAck {
                proto_version_chosen,
                handoff_id,
            } => {
                w.varint(u64::from(*proto_version_chosen));
                put_id(w, handoff_id);
            }
            Message::PrepareHandoff {
                handoff_id,
                successor_pid,
                deadline_ms,
                drain_grace_ms,
            } => {
                put_id(w, handoff_id);
                w.varint(u64::from(*successor_pid));
                w.varint(*deadline_ms);
                w.varint(*drain_grace_ms);
            }
            Message::Drained {
                open_conns_remaining,
                accept_closed,
            } => {
                w.varint(u64::from(*open_conns_remaining));
                w.bool(*accept_closed);
            }
            Message::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => {
                w.varint(u64::from(*shards_sealed));
                w.varint(u64::from(*shards_total));
                w.varint(*last_revision);
            }
            Message::SealComplete {
                handoff_id,
                last_revision_per_shard,
                data_dir_fingerprint,
            } => {
                put_id(w, handoff_id);
                last_revision_per_shard.encode(w);
                w.raw(data_dir_fingerprint);
            }
            Message::SealFailed {
                handoff_id,
                error,
                partial_state,
            } => {
                put_id(w, handoff_id);
                w.len_prefixed(error.as_bytes());
                w.len_prefixed(partial_state.as_bytes());
            }
            Message::Ready {
                handoff_id,
                listening_on,
                healthz_ok,
                advertised_revision_per_shard,
            } => {
                put_id(w, handoff_id);
                listening_on.encode(w);
                w.bool(*healthz_ok);
                advertised_revision_per_shard.encode(w);
            }
            Message::Abort { handoff_id, reason } => {
                put_id(w, handoff_id);
                w.len_prefixed(reason.as_bytes());
            }
            Message::SealRequest { handoff_id }
            | Message::Begin { handoff_id }
            | Message::Commit { handoff_id }
            | Message::ResumeAfterAbort { handoff_id }
            | Message::ListenersRequest { handoff_id }
            | Message::PassChannel { handoff_id }
            | Message::ConnectionsTaken { handoff_id } => put_id(w, handoff_id),
            Message::PassedConnection { handoff_id, state } => {
                put_id(w, handoff_id);
                w.len_prefixed(state);
            }
            Message::PassDone { handoff_id, count }
            | Message::ConnectionsPassed { handoff_id, count } => {
                put_id(w, handoff_id);
                w.varint(u64::from(*count));
            }
            Message::Heartbeat { ts_ms } => w.varint(*ts_ms),
            Message::Listeners { handoff_id, names } => {
                put_id(w, handoff_id);
                names.encode(w);
            }
            Message::Probation {
                handoff_id,
                window_ms,
            } => {
                put_id(w, handoff_id);
                w.varint(*window_ms);
            }
        }
    }

    /// Decodes one payload, which must hold exactly one message.
    #[inline]
    pub fn decode(payload: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let mut r = Reader::new(payload);
        let mut kind = None;
        Self::read(&mut r, &mut kind).map_err(|e| DecodeError {
            message: kind,
            ..r.error(e)
        })
    }

    /// Reads the variant index (recording it in `kind`), the body and the
    /// end of the payload.
    #[inline]
    fn read(
        r: &mut Reader<'a>,
        kind: &mut Option<MessageKind>,
    ) -> Result<Message<'a>, DecodeErrorKind> {
        let index = r.field("variant").u32()?;
        let k = MessageKind::from_index(index).ok_or(DecodeErrorKind::UnknownMessage(index))?;
        *kind = Some(k);
        let msg = Self::read_body(k, r)?;
        r.finish()?;
        Ok(msg)
    }

    #[inline]
    fn read_body(kind: MessageKind, r: &mut Reader<'a>) -> Result<Message<'a>, DecodeErrorKind> {
        Ok(match kind {
            MessageKind::Hello => {
                let role_index = r.field("role").u32()?;
                let role =
                    Side::from_index(role_index).ok_or(DecodeErrorKind::UnknownSide(role_index))?;
                Message::Hello {
                    role,
                    pid: r.field("pid").u32()?,
                    build_id: r.field("build_id").len_prefixed()?,
                    proto_min: r.field("proto_min").u16()?,
                    proto_max: r.field("proto_max").u16()?,
                    capabilities: Capabilities::from_bits(r.field("capabilities").u64()?),
                }
            }
            MessageKind::HelloAck => Message::HelloAck {
                proto_version_chosen: r.field("proto_version_chosen").u16()?,
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::PrepareHandoff => {
                let id = take_id(r)?;
                Message::PrepareHandoff {
                    successor_pid: r.field("successor_pid").u32()?,
                    deadline_ms: r.field("deadline_ms").u64()?,
                    drain_grace_ms: r.field("drain_grace_ms").u64()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::Drained => Message::Drained {
                open_conns_remaining: r.field("open_conns_remaining").u32()?,
                accept_closed: r.field("accept_closed").bool()?,
            },
            MessageKind::SealRequest => Message::SealRequest {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::SealProgress => Message::SealProgress {
                shards_sealed: r.field("shards_sealed").u32()?,
                shards_total: r.field("shards_total").u32()?,
                last_revision: r.field("last_revision").u64()?,
            },
            MessageKind::SealComplete => {
                let id = take_id(r)?;
                Message::SealComplete {
                    last_revision_per_shard: Revisions::decode(r.field("last_revision_per_shard"))?,
                    data_dir_fingerprint: *r.field("data_dir_fingerprint").array_ref::<32>()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::SealFailed => {
                let id = take_id(r)?;
                Message::SealFailed {
                    error: r.field("error").str()?,
                    partial_state: r.field("partial_state").str()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::Begin => Message::Begin {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::Ready => {
                let id = take_id(r)?;
                Message::Ready {
                    listening_on: Strings::decode(r.field("listening_on"))?,
                    healthz_ok: r.field("healthz_ok").bool()?,
                    advertised_revision_per_shard: Revisions::decode(
                        r.field("advertised_revision_per_shard"),
                    )?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::Commit => Message::Commit {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::Abort => {
                let id = take_id(r)?;
                Message::Abort {
                    reason: r.field("reason").str()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::ResumeAfterAbort => Message::ResumeAfterAbort {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::Heartbeat => Message::Heartbeat {
                ts_ms: r.field("ts_ms").u64()?,
            },
            MessageKind::ListenersRequest => Message::ListenersRequest {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::Listeners => {
                let id = take_id(r)?;
                Message::Listeners {
                    names: Strings::decode(r.field("names"))?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::Probation => {
                let id = take_id(r)?;
                Message::Probation {
                    window_ms: r.field("window_ms").u64()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::PassChannel => Message::PassChannel {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::PassedConnection => {
                let id = take_id(r)?;
                Message::PassedConnection {
                    state: r.field("state").len_prefixed()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::PassDone => {
                let id = take_id(r)?;
                Message::PassDone {
                    count: r.field("count").u32()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
            MessageKind::ConnectionsTaken => Message::ConnectionsTaken {
                handoff_id: HandoffId::from_bytes(*take_id(r)?),
            },
            MessageKind::ConnectionsPassed => {
                let id = take_id(r)?;
                Message::ConnectionsPassed {
                    count: r.field("count").u32()?,
                    handoff_id: HandoffId::from_bytes(*id),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Message<'_>) {
        let mut buf = [0u8; 512];
        let n = msg.encode(&mut buf).unwrap();
        assert_eq!(n, msg.encoded_len());
        let back = Message::decode(&buf[..n]).unwrap();
        assert_eq!(back, msg);
        // Re-encoding a decoded message reproduces the bytes exactly.
        let mut again = [0u8; 512];
        let m = back.encode(&mut again).unwrap();
        assert_eq!(&buf[..n], &again[..m]);
    }

    #[test]
    fn heartbeat_payload_matches_the_protocol_documents_example() {
        let mut buf = [0u8; 8];
        let n = Message::Heartbeat { ts_ms: 1 }.encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x0d, 0x01]);
    }

    #[test]
    fn list_fields_round_trip_from_slices_and_from_the_wire() {
        let id = HandoffId::from_bytes([7; 16]);
        round_trip(Message::Ready {
            handoff_id: id,
            listening_on: Strings::from_slice(&["127.0.0.1:80", "", "ünïcode"]),
            healthz_ok: true,
            advertised_revision_per_shard: Revisions::from_slice(&[0, 1, u64::MAX]),
        });
        round_trip(Message::SealComplete {
            handoff_id: id,
            last_revision_per_shard: Revisions::EMPTY,
            data_dir_fingerprint: [0xaa; 32],
        });
    }

    #[test]
    fn the_extensions_round_trip_after_the_fourteen() {
        let id = HandoffId::from_bytes([9; 16]);
        round_trip(Message::ListenersRequest { handoff_id: id });
        round_trip(Message::Probation {
            handoff_id: id,
            window_ms: 5_000,
        });
        assert_eq!(MessageKind::from_index(16), Some(MessageKind::Probation));
        assert!(MessageKind::Probation.is_extension());
        round_trip(Message::PassChannel { handoff_id: id });
        round_trip(Message::PassedConnection {
            handoff_id: id,
            state: b"GET k\nSET half",
        });
        round_trip(Message::PassedConnection {
            handoff_id: id,
            state: b"",
        });
        round_trip(Message::PassDone {
            handoff_id: id,
            count: 10_000,
        });
        round_trip(Message::ConnectionsTaken { handoff_id: id });
        round_trip(Message::ConnectionsPassed {
            handoff_id: id,
            count: u32::MAX,
        });
        assert_eq!(
            MessageKind::from_index(21),
            Some(MessageKind::ConnectionsPassed)
        );
        assert_eq!(MessageKind::from_index(22), None);
        round_trip(Message::Listeners {
            handoff_id: id,
            names: Strings::from_slice(&["kv", "admin"]),
        });
        let mut buf = [0u8; 64];
        let n = Message::ListenersRequest { handoff_id: id }
            .encode(&mut buf)
            .unwrap();
        assert_eq!(buf[0], 14, "variant index");
        assert_eq!(n, 1 + 1 + 16);
        assert!(MessageKind::Listeners.is_extension());
        assert!(!MessageKind::Heartbeat.is_extension());
        assert_eq!(MessageKind::from_index(15), Some(MessageKind::Listeners));
    }

    #[test]
    fn trailing_bytes_are_an_error_naming_the_message() {
        let err = Message::decode(&[0x0d, 0x01, 0x00]).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::TrailingBytes(1));
        assert_eq!(err.message, Some(MessageKind::Heartbeat));
    }

    #[test]
    fn unknown_variants_and_bad_ids_are_named() {
        assert_eq!(
            Message::decode(&[22]).unwrap_err().kind,
            DecodeErrorKind::UnknownMessage(22)
        );
        let err = Message::decode(&[4, 15, 0]).unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::BadHandoffIdLength(15));
        assert_eq!(err.field, "handoff_id");
    }
}
