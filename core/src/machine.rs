//! What the three machines share: the ordered queue of outputs with the
//! outgoing frames it lends out, the protocol-violation type, the reports the
//! peers exchange, and the default timings.

use crate::buffer::Buffer;
use crate::error::{EncodeError, FrameError};
use crate::frame::{encode_frame, encoded_frame_len};
use crate::message::{Message, Revisions, Strings};
use crate::time::Instant;
use crate::wire::{HandoffId, LEN_PREFIX, MAX_FRAME_LEN, MessageKind, ProtoVersion, Side};
use core::fmt;
use core::time::Duration;

/// Default timings, shared by the three machines' configurations. They are
/// the reference's, so mixed deployments behave alike.
pub mod defaults {
    use core::time::Duration;

    /// A side running a long hook sends a heartbeat this often.
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
    /// Silence from a peer that owes an answer for this long means it is dead
    /// or hung. Five heartbeat intervals of margin.
    pub const LIVENESS: Duration = Duration::from_secs(10);
    /// A peer's `Hello` or `HelloAck` is due this soon after connecting.
    /// The supervisor also keeps trying to reach the incumbent's control
    /// socket this long from the start of a handoff.
    pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
    /// Between two attempts to connect to an incumbent whose control socket
    /// path does not yet name its socket (a new incumbent taking the path
    /// over right after `Commit`, or the old one's socket still there).
    pub const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(5);
    /// Added to a budget before giving up on a reply already on the wire.
    pub const WIRE_SLACK: Duration = Duration::from_secs(1);
    /// The whole handoff (the supervisor binary's default).
    pub const DEADLINE: Duration = Duration::from_secs(60);
    /// The incumbent's drain (the supervisor binary's default).
    pub const DRAIN_GRACE: Duration = Duration::from_secs(25);
    /// How long the successor may start up before its `Hello`.
    pub const STARTUP_BUDGET: Duration = Duration::from_secs(30);
    /// Between `SIGTERM` and `SIGKILL` for a successor being stopped, and
    /// again between `SIGKILL` and giving up on its exit being reported.
    pub const KILL_GRACE: Duration = Duration::from_secs(2);
    /// Between two attempts at a busy data-dir lock.
    pub const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);
    /// How long a busy data-dir lock is retried. A stopped successor's lock
    /// file descriptor closes within milliseconds of its exit.
    pub const LOCK_RETRY_WINDOW: Duration = Duration::from_secs(2);
    /// How far past the supervisor's deadline an incumbent waits before it
    /// resumes on its own: the supervisor's own slack, plus stopping the
    /// successor with TERM then KILL.
    pub const INCUMBENT_DEADLINE_SLACK: Duration = Duration::from_secs(6);
    /// How often a successor on probation (docs/PROTOCOL.md section 10)
    /// heartbeats: often, because silence is how a frozen successor is
    /// told from one that serves, and the window is short.
    pub const PROBATION_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
    /// Silence from a successor on probation that means it is frozen or
    /// hung: eight of its heartbeat intervals.
    pub const PROBATION_LIVENESS: Duration = Duration::from_secs(2);
}

/// A peer broke the protocol. The session closes; no state changes beyond
/// the recovery the role defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// The byte stream did not frame or decode.
    Frame(FrameError),
    /// A message this role never receives, or not at this point.
    Unexpected {
        /// The message received.
        message: MessageKind,
        /// What the receiver was waiting for.
        awaiting: &'static str,
    },
    /// A message carrying another handoff's id.
    WrongHandoffId {
        /// The id received.
        got: HandoffId,
        /// The id of this handoff.
        expected: HandoffId,
    },
    /// A `Hello` announcing the other role.
    WrongRole {
        /// The role announced.
        got: Side,
    },
    /// A successor's `Hello` from a pid other than the child spawned.
    WrongPid {
        /// The pid announced.
        announced: u32,
        /// The pid expected: the successor the supervisor spawned, or the
        /// incumbent it knows serves.
        expected: u32,
    },
    /// A frame whose version field differs from the negotiated version.
    WrongVersion {
        /// The frame's version field.
        got: ProtoVersion,
        /// The negotiated version.
        negotiated: ProtoVersion,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Frame(e) => write!(f, "bad frame: {e}"),
            Violation::Unexpected { message, awaiting } => {
                write!(f, "unexpected {message} while awaiting {awaiting}")
            }
            Violation::WrongHandoffId { got, expected } => {
                write!(
                    f,
                    "message for handoff {got}, but this handoff is {expected}"
                )
            }
            Violation::WrongRole { got } => write!(f, "peer announced itself as the {got}"),
            Violation::WrongPid {
                announced,
                expected,
            } => write!(
                f,
                "its Hello announced pid {announced}, not the expected pid {expected}"
            ),
            Violation::WrongVersion { got, negotiated } => write!(
                f,
                "frame of protocol version {got} after version {negotiated} was negotiated"
            ),
        }
    }
}

impl core::error::Error for Violation {}

/// What the incumbent's drain hook reports (`Drained`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when the drain ended.
    pub open_conns_remaining: u32,
    /// Whether the incumbent stopped accepting.
    pub accept_closed: bool,
}

/// What the incumbent's seal hook reports (`SealComplete`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealReportRef<'a> {
    /// The last revision of each shard.
    pub last_revision_per_shard: Revisions<'a>,
    /// A fingerprint of the sealed data directory.
    pub data_dir_fingerprint: [u8; 32],
}

/// Why a seal failed (`SealFailed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealFailure<'a> {
    /// What failed.
    pub error: &'a str,
    /// What was left half done.
    pub partial_state: &'a str,
}

/// What the successor reports when it serves (`Ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyReportRef<'a> {
    /// Addresses it serves on.
    pub listening_on: Strings<'a>,
    /// Its own health check.
    pub healthz_ok: bool,
    /// The revision of each shard it opened.
    pub advertised_revision_per_shard: Revisions<'a>,
}

/// A small fixed-capacity text, for reasons copied out of frames or
/// formatted without a heap. Truncates at a character boundary.
#[derive(Clone, Copy)]
pub struct ShortText<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> ShortText<N> {
    /// The empty text.
    pub const fn new() -> Self {
        ShortText {
            bytes: [0; N],
            len: 0,
        }
    }

    /// A copy of `s`, truncated to fit.
    pub fn from_str_truncated(s: &str) -> Self {
        let mut t = Self::new();
        t.push_truncated(s);
        t
    }

    fn push_truncated(&mut self, s: &str) {
        let room = N - self.len;
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }

    /// `value`'s `Display` text, truncated to fit.
    pub fn display(value: &dyn fmt::Display) -> Self {
        let mut t = Self::new();
        // Truncation is not an error for a text meant for logs.
        let _ = fmt::write(&mut t, format_args!("{value}"));
        t
    }
}

impl<const N: usize> Default for ShortText<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for ShortText<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_truncated(s);
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for ShortText<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> PartialEq for ShortText<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl<const N: usize> Eq for ShortText<N> {}

/// Capacity of the output queue. Every input queues a handful of outputs at
/// most and adapters drain the queue after each input; timers never queue a
/// heartbeat behind another frame to the same peer, so the queue cannot
/// fill even if an adapter polls late.
const QUEUE: usize = 24;

#[derive(Clone, Copy, Debug)]
enum Item<P, A> {
    Frame { to: P, start: usize, len: usize },
    Do(A),
}

/// The ordered outputs of a machine. Frames are encoded at once into one
/// buffer; the queue holds where each lies, and a polled frame stays valid
/// until the next poll.
pub(crate) struct Outbox<P, A, B> {
    items: [Option<Item<P, A>>; QUEUE],
    head: usize,
    len: usize,
    frames: B,
    frames_end: usize,
    frames_queued: usize,
}

/// One output taken from the queue.
pub(crate) enum Popped<P, A> {
    Frame { to: P, start: usize, len: usize },
    Do(A),
}

impl<P: Copy + PartialEq, A: Copy, B: Buffer> Outbox<P, A, B> {
    pub(crate) fn new() -> Self {
        Outbox {
            items: [None; QUEUE],
            head: 0,
            len: 0,
            frames: B::empty(),
            frames_end: 0,
            frames_queued: 0,
        }
    }

    fn push(&mut self, item: Item<P, A>) {
        if self.len == QUEUE {
            // The module docs explain why this cannot happen; if it ever
            // did, dropping the newest output is the least harmful option.
            debug_assert!(false, "output queue overflow");
            return;
        }
        self.items[(self.head + self.len) % QUEUE] = Some(item);
        self.len += 1;
    }

    pub(crate) fn act(&mut self, action: A) {
        self.push(Item::Do(action));
    }

    /// Whether `msg` can be queued: it is within the protocol's frame limit
    /// and the frame buffer can hold it.
    pub(crate) fn fits(&mut self, msg: &Message<'_>) -> bool {
        let len = encoded_frame_len(msg);
        len <= LEN_PREFIX + MAX_FRAME_LEN as usize && self.frames.grow(self.frames_end + len)
    }

    /// Encodes and queues one frame; `false` if the frame buffer cannot hold
    /// it (only possible with a fixed buffer and a caller-sized message).
    pub(crate) fn send(&mut self, to: P, version: ProtoVersion, msg: &Message<'_>) -> bool {
        let start = self.frames_end;
        // Encode straight into the spare room; only a frame that does not
        // fit there costs a second pass, after the buffer has grown.
        let spare = self.frames.bytes_mut().get_mut(start..).unwrap_or_default();
        let n = match encode_frame(version, msg, spare) {
            Ok(n) => n,
            Err(EncodeError::BufferTooSmall { needed }) => {
                if !self.frames.grow(start + needed) {
                    return false;
                }
                match encode_frame(version, msg, &mut self.frames.bytes_mut()[start..]) {
                    Ok(n) => n,
                    Err(_) => return false,
                }
            }
            Err(_) => return false,
        };
        self.frames_end += n;
        self.frames_queued += 1;
        self.push(Item::Frame { to, start, len: n });
        true
    }

    fn frame_queued_to(&self, to: P) -> bool {
        (0..self.len).any(|i| {
            matches!(self.items[(self.head + i) % QUEUE], Some(Item::Frame { to: t, .. }) if t == to)
        })
    }

    /// Queues a heartbeat, unless a frame to `to` is already waiting: any
    /// frame proves liveness, and heartbeats must not pile up behind an
    /// adapter that polls late.
    pub(crate) fn heartbeat(&mut self, to: P, version: ProtoVersion, now: Instant) {
        if !self.frame_queued_to(to) {
            let _ = self.send(
                to,
                version,
                &Message::Heartbeat {
                    ts_ms: now.as_millis(),
                },
            );
        }
    }

    pub(crate) fn pop(&mut self) -> Option<Popped<P, A>> {
        if self.frames_queued == 0 {
            // No frame is queued and the one lent by the previous poll is
            // no longer borrowed: the frame area can be reused from the start.
            self.frames_end = 0;
        }
        if self.len == 0 {
            return None;
        }
        let item = self.items[self.head].take();
        self.head = (self.head + 1) % QUEUE;
        self.len -= 1;
        match item? {
            Item::Frame { to, start, len } => {
                self.frames_queued -= 1;
                Some(Popped::Frame { to, start, len })
            }
            Item::Do(a) => Some(Popped::Do(a)),
        }
    }

    pub(crate) fn frame(&self, start: usize, len: usize) -> &[u8] {
        &self.frames.bytes()[start..start + len]
    }
}

/// A new outbox holding this side's `Hello`, the first frame an incumbent
/// or a successor sends.
pub(crate) fn outbox_with_hello<A: Copy, B: Buffer>(
    role: Side,
    pid: u32,
    build_id: &[u8],
    capabilities: crate::wire::Capabilities,
) -> Outbox<(), A, B> {
    let mut out = Outbox::new();
    let hello = |build_id| Message::Hello {
        role,
        pid,
        build_id,
        proto_min: crate::wire::PROTO_MIN,
        proto_max: crate::wire::PROTO_MAX,
        capabilities,
    };
    let fits = build_id.len() <= crate::wire::MAX_BUILD_ID_LEN;
    if !fits || !out.send((), crate::wire::PROTO_MAX, &hello(build_id)) {
        // A build id over the limit (a caller's error, see the crate docs)
        // or too long for the frame buffer: announce without it rather than
        // not at all.
        let _ = out.send((), crate::wire::PROTO_MAX, &hello(&[]));
    }
    out
}

/// The periodic heartbeat timer of one peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Beat {
    next: Option<Instant>,
    interval: Duration,
}

impl Beat {
    pub(crate) fn new(interval: Duration) -> Self {
        Beat {
            next: None,
            interval,
        }
    }

    /// Beats from now on, the first one an interval from now.
    pub(crate) fn start(&mut self, now: Instant) {
        self.next = Some(now + self.interval);
    }

    /// Beats every `interval` from now on.
    pub(crate) fn start_every(&mut self, now: Instant, interval: Duration) {
        self.interval = interval;
        self.start(now);
    }

    pub(crate) fn stop(&mut self) {
        self.next = None;
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether a beat is due at `now`; if so, the next one is scheduled.
    pub(crate) fn fire(&mut self, now: Instant) -> bool {
        match self.next {
            Some(t) if t <= now => {
                self.next = Some(now + self.interval);
                true
            }
            _ => false,
        }
    }
}
