//! Protocol identities: versions, roles, handoff ids and capabilities.
//!
//! These are the small value types every message carries. Their wire forms
//! follow postcard's rules as the reference crate's serde derives produce
//! them, so a `HandoffId` is a length byte `0x10` and 16 raw bytes, and
//! `Capabilities` is one varint.

use core::fmt;

/// A protocol version number.
pub type ProtoVersion = u16;

/// The oldest protocol version this build speaks.
pub const PROTO_MIN: ProtoVersion = 1;
/// The newest protocol version this build speaks.
pub const PROTO_MAX: ProtoVersion = 1;

/// The largest legal `frame_len` (the bytes after the length prefix): 1 MiB.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
/// The smallest legal `frame_len`: the version field alone.
pub const MIN_FRAME_LEN: u32 = 2;
/// The longest build id a `Hello` carries: one that fits a `Hello` in the
/// smallest frame buffer ([`crate::DefaultBuffer`]) with room to spare. It
/// is for the operator's logs, so a few dozen bytes (a version, a commit)
/// are what it is for. A driver refuses a longer one with an error (see
/// the crate docs).
pub const MAX_BUILD_ID_LEN: usize = 1024;

/// The most bytes of state passed with one connection
/// (docs/PROTOCOL.md section 11): the bytes read and not yet answered, and
/// whatever else the daemon needs to go on serving it. A sender refuses a
/// larger state, and a receiver takes one for a broken pass.
pub const MAX_CONNECTION_STATE: usize = 64 * 1024;

/// Bytes of the `frame_len` prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes of the `proto_version` field.
pub const VERSION_FIELD: usize = 2;

/// The identity a peer announces in `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The running (old) binary.
    Incumbent,
    /// The newly spawned binary.
    Successor,
}

impl Side {
    pub(crate) fn index(self) -> u32 {
        match self {
            Side::Incumbent => 0,
            Side::Successor => 1,
        }
    }

    pub(crate) fn from_index(i: u32) -> Option<Side> {
        match i {
            0 => Some(Side::Incumbent),
            1 => Some(Side::Successor),
            _ => None,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Incumbent => "incumbent",
            Side::Successor => "successor",
        })
    }
}

/// The identifier of one handoff, chosen by the supervisor (a UUID).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HandoffId(uuid::Uuid);

impl HandoffId {
    /// A fresh version-4 id from 16 random bytes the caller supplies (the
    /// core has no randomness of its own). The version and variant bits are
    /// set as RFC 9562 requires, so 122 of the bits are the caller's.
    pub fn from_random_bytes(random: [u8; 16]) -> Self {
        HandoffId(uuid::Builder::from_random_bytes(random).into_uuid())
    }

    /// The id with exactly these 16 bytes, as they appear on the wire.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        HandoffId(uuid::Uuid::from_bytes(bytes))
    }

    /// The 16 bytes of the id, as they appear on the wire.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id as a [`uuid::Uuid`].
    pub const fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl From<uuid::Uuid> for HandoffId {
    fn from(u: uuid::Uuid) -> Self {
        HandoffId(u)
    }
}

impl fmt::Display for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandoffId({self})")
    }
}

/// Feature bits a peer offers in `Hello`.
///
/// A feature is used only when both sides offer it; a reference peer offers
/// nothing, so nothing beyond plain v1 is ever assumed of it. Of the three
/// bits defined, all three are implemented.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Capabilities {
    bits: u64,
}

impl Capabilities {
    /// No optional feature.
    pub const NONE: Capabilities = Capabilities { bits: 0 };
    /// A restarted supervisor reclaims the listening sockets from the
    /// incumbent instead of binding them again: an incumbent that offers it
    /// answers `ListenersRequest` (docs/PROTOCOL.md section 9).
    pub const RECLAIM_LISTENERS: Capabilities = Capabilities { bits: 1 << 0 };
    /// After `Ready`, a probation window in which the sealed incumbent stays
    /// alive and can take the lock back if the successor fails
    /// (docs/PROTOCOL.md section 10). An incumbent that offers it accepts
    /// `Probation`; a successor that offers it heartbeats after `Ready`
    /// until the supervisor closes its socket, so a frozen one is seen.
    pub const PROBATION: Capabilities = Capabilities { bits: 1 << 1 };
    /// During the drain the incumbent passes open client connections to
    /// the successor, each with a bounded state (docs/PROTOCOL.md section
    /// 11), over a socketpair the supervisor gives both with `PassChannel`.
    /// Used only when both offer it. An incumbent that offers it accepts
    /// `PassChannel` before `PrepareHandoff`; a successor that offers it
    /// accepts `PassChannel` before `Begin` and takes every connection
    /// passed to it.
    pub const PASS_CONNECTIONS: Capabilities = Capabilities { bits: 1 << 2 };

    /// The capability set with exactly these bits.
    pub const fn from_bits(bits: u64) -> Self {
        Capabilities { bits }
    }

    /// The raw bits (the `reserved` field of the wire struct).
    pub const fn bits(self) -> u64 {
        self.bits
    }

    /// Whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.bits & other.bits == other.bits
    }

    /// The bits set in both: what two peers may actually use.
    pub const fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities {
            bits: self.bits & other.bits,
        }
    }

    /// The bits set in either.
    pub const fn union(self, other: Capabilities) -> Capabilities {
        Capabilities {
            bits: self.bits | other.bits,
        }
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capabilities({:#x})", self.bits)
    }
}

/// Two version ranges with nothing in common.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionMismatch {
    /// Our lowest version.
    pub our_min: ProtoVersion,
    /// Our highest version.
    pub our_max: ProtoVersion,
    /// The peer's lowest version.
    pub their_min: ProtoVersion,
    /// The peer's highest version.
    pub their_max: ProtoVersion,
}

impl fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no common protocol version: we speak {}..={}, the peer speaks {}..={}; \
             upgrade the older side",
            self.our_min, self.our_max, self.their_min, self.their_max
        )
    }
}

impl core::error::Error for VersionMismatch {}

/// The highest version in both ranges. An empty peer range (`min > max`)
/// never matches.
pub fn negotiate_version(
    our_min: ProtoVersion,
    our_max: ProtoVersion,
    their_min: ProtoVersion,
    their_max: ProtoVersion,
) -> Result<ProtoVersion, VersionMismatch> {
    let lo = our_min.max(their_min);
    let hi = our_max.min(their_max);
    if lo > hi {
        Err(VersionMismatch {
            our_min,
            our_max,
            their_min,
            their_max,
        })
    } else {
        Ok(hi)
    }
}

/// The name of a message without its fields: for errors, logs and tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)] // the variants are the messages documented on `Message`
pub enum MessageKind {
    Hello,
    HelloAck,
    PrepareHandoff,
    Drained,
    SealRequest,
    SealProgress,
    SealComplete,
    SealFailed,
    Begin,
    Ready,
    Commit,
    Abort,
    ResumeAfterAbort,
    Heartbeat,
    /// An extension of this project (docs/PROTOCOL.md section 9), sent only
    /// to an incumbent that offered [`Capabilities::RECLAIM_LISTENERS`].
    ListenersRequest,
    /// An extension of this project: the incumbent's answer to
    /// `ListenersRequest`, with the descriptors passed beside it.
    Listeners,
    /// An extension of this project (docs/PROTOCOL.md section 10): the
    /// successor serves on probation; sent only to an incumbent that
    /// offered [`Capabilities::PROBATION`].
    Probation,
    /// An extension of this project (docs/PROTOCOL.md section 11): one end
    /// of the socketpair connections are passed over, beside the frame;
    /// sent only to peers that offered [`Capabilities::PASS_CONNECTIONS`].
    PassChannel,
    /// An extension (section 11), on the pass channel only: one client
    /// connection, passed beside the frame, and its state.
    PassedConnection,
    /// An extension (section 11), on the pass channel only: no more
    /// connections follow; how many were passed.
    PassDone,
    /// An extension (section 11), on the pass channel only: the successor
    /// serves the passed connections from now on.
    ConnectionsTaken,
    /// An extension (section 11): the incumbent tells the supervisor how
    /// many connections it passed, before `Drained`.
    ConnectionsPassed,
}

impl MessageKind {
    /// All fourteen, in wire order.
    pub const ALL: [MessageKind; 14] = [
        MessageKind::Hello,
        MessageKind::HelloAck,
        MessageKind::PrepareHandoff,
        MessageKind::Drained,
        MessageKind::SealRequest,
        MessageKind::SealProgress,
        MessageKind::SealComplete,
        MessageKind::SealFailed,
        MessageKind::Begin,
        MessageKind::Ready,
        MessageKind::Commit,
        MessageKind::Abort,
        MessageKind::ResumeAfterAbort,
        MessageKind::Heartbeat,
    ];

    /// The extensions, which follow the fourteen in wire order. Each is
    /// sent only to a peer whose `Hello` offered the capability it belongs
    /// to, so a reference peer, which offers none, never sees one.
    pub const EXTENSIONS: [MessageKind; 8] = [
        MessageKind::ListenersRequest,
        MessageKind::Listeners,
        MessageKind::Probation,
        MessageKind::PassChannel,
        MessageKind::PassedConnection,
        MessageKind::PassDone,
        MessageKind::ConnectionsTaken,
        MessageKind::ConnectionsPassed,
    ];

    /// The variant index on the wire.
    pub fn index(self) -> u32 {
        self as u32
    }

    /// The kind with this variant index: one of the fourteen of v1 or an
    /// extension.
    pub fn from_index(index: u32) -> Option<MessageKind> {
        let i = index as usize;
        match MessageKind::ALL.get(i) {
            Some(k) => Some(*k),
            None => MessageKind::EXTENSIONS
                .get(i - MessageKind::ALL.len())
                .copied(),
        }
    }

    /// Whether this is one of the project's extensions rather than one of
    /// the reference's fourteen.
    pub fn is_extension(self) -> bool {
        self.index() as usize >= MessageKind::ALL.len()
    }

    /// The message's name as the protocol spells it.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "Hello",
            MessageKind::HelloAck => "HelloAck",
            MessageKind::PrepareHandoff => "PrepareHandoff",
            MessageKind::Drained => "Drained",
            MessageKind::SealRequest => "SealRequest",
            MessageKind::SealProgress => "SealProgress",
            MessageKind::SealComplete => "SealComplete",
            MessageKind::SealFailed => "SealFailed",
            MessageKind::Begin => "Begin",
            MessageKind::Ready => "Ready",
            MessageKind::Commit => "Commit",
            MessageKind::Abort => "Abort",
            MessageKind::ResumeAfterAbort => "ResumeAfterAbort",
            MessageKind::Heartbeat => "Heartbeat",
            MessageKind::ListenersRequest => "ListenersRequest",
            MessageKind::Listeners => "Listeners",
            MessageKind::Probation => "Probation",
            MessageKind::PassChannel => "PassChannel",
            MessageKind::PassedConnection => "PassedConnection",
            MessageKind::PassDone => "PassDone",
            MessageKind::ConnectionsTaken => "ConnectionsTaken",
            MessageKind::ConnectionsPassed => "ConnectionsPassed",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        assert_eq!(negotiate_version(1, 3, 2, 5), Ok(3));
        assert_eq!(negotiate_version(1, 5, 3, 4), Ok(4));
        assert_eq!(negotiate_version(1, 1, 1, 1), Ok(1));
    }

    #[test]
    fn negotiation_rejects_disjoint_and_empty_ranges() {
        assert!(negotiate_version(1, 1, 2, 2).is_err());
        assert!(negotiate_version(1, 1, 1, 0).is_err());
    }

    #[test]
    fn random_ids_are_version_4_and_keep_the_callers_entropy() {
        let id = HandoffId::from_random_bytes([0xff; 16]);
        assert_eq!(id.as_uuid().get_version_num(), 4);
        let other = HandoffId::from_random_bytes([0x00; 16]);
        assert_ne!(id, other);
    }

    #[test]
    fn capabilities_negotiate_by_intersection() {
        let ours = Capabilities::PROBATION.union(Capabilities::RECLAIM_LISTENERS);
        let theirs = Capabilities::PROBATION;
        assert_eq!(ours.intersection(theirs), Capabilities::PROBATION);
        assert!(!Capabilities::NONE.contains(Capabilities::PROBATION));
    }
}
