//! The fuzzing harness: everything the cargo-fuzz targets in `fuzz/` and
//! their corpus replay test share, outside the core library (it needs only
//! the core's public API, and changes whenever the machines do).
//!
//! Each target's whole body is one function here taking the fuzzer's raw
//! bytes ([`frame_decoder`], [`message_roundtrip`], [`supervisor()`],
//! [`incumbent()`], [`successor()`]), so a stable-toolchain test runs every
//! corpus file through exactly the code the fuzzer runs. The machine targets
//! read the bytes as a script of inputs ([`IncumbentInput`],
//! [`SuccessorInput`], [`SupervisorInput`], through `arbitrary`), apply it to
//! a fresh machine with the default 4 KiB array buffers and again with
//! growable `Vec` buffers, drain every output after every input, and check
//! after every step that each output was legal for the step the machine was
//! in and that no buffer grew past what the step can justify. A broken rule
//! is a panic, which is what a fuzzer reports.
//!
//! Seed inputs are made from recorded handoffs: [`Unparse`] writes a script
//! as the very bytes `arbitrary` reads back into it.

use std::cell::Cell;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use handoff_core::Instant;
use handoff_core::{Buffer, DefaultBuffer};
use handoff_core::{Capabilities, HandoffId, Side};
use handoff_core::{Message, Revisions, Strings};
use handoff_core::{encode_frame, encoded_frame_len};

mod incumbent;
mod shadow;
mod successor;
mod supervisor;
mod wire;

pub use wire::{DecoderChoice, FrameDecoderInput, frame_decoder, message_roundtrip};

/// Inputs read from one fuzz case at most: a longer script adds run time,
/// not states.
pub const MAX_INPUTS: usize = 1024;
/// The pid the incumbent under test announces.
pub const INCUMBENT_PID: u32 = 4242;
/// The build id the incumbent under test announces.
pub const INCUMBENT_BUILD_ID: &[u8] = b"incumbent-build";
/// The pid the successor under test announces (and the pid a recorded
/// supervisor spawned).
pub const SUCCESSOR_PID: u32 = 4343;
/// The build id the successor under test announces.
pub const SUCCESSOR_BUILD_ID: &[u8] = b"successor-build";
/// The random bytes of the supervisor's handoff id.
pub const SUPERVISOR_RANDOM: [u8; 16] = [0x5a; 16];
/// The wall-clock start the supervisor writes into its journal.
pub const SUPERVISOR_STARTED_UNIX_MS: u64 = 1_700_000_000_000;
/// The id an incumbent or successor is addressed with before it learns one.
pub const PLACEHOLDER_ID: HandoffId = HandoffId::from_bytes([0x11; 16]);

/// A target body: the fuzzer's bytes in, a panic on any broken rule.
pub type Target = fn(&[u8]);

/// Every target by its cargo-fuzz name, for the corpus replay test.
pub const TARGETS: [(&str, Target); 5] = [
    ("frame_decoder", frame_decoder),
    ("message_roundtrip", message_roundtrip),
    ("supervisor", supervisor),
    ("incumbent", incumbent),
    ("successor", successor),
];

/// The `incumbent` target: the bytes as a script of [`IncumbentInput`]s,
/// applied to a fresh session with array buffers, then with `Vec` buffers.
pub fn incumbent(data: &[u8]) {
    let script: Vec<IncumbentInput> = parse_script(data);
    incumbent::run::<DefaultBuffer>(&script);
    incumbent::run::<MachineVec>(&script);
}

/// The `successor` target: the bytes as a script of [`SuccessorInput`]s,
/// applied to a fresh session with array buffers, then with `Vec` buffers.
pub fn successor(data: &[u8]) {
    let script: Vec<SuccessorInput> = parse_script(data);
    successor::run::<DefaultBuffer>(&script);
    successor::run::<MachineVec>(&script);
}

/// The `supervisor` target: the bytes as a script of [`SupervisorInput`]s,
/// applied to a fresh handoff with array buffers, then with `Vec` buffers.
pub fn supervisor(data: &[u8]) {
    let script: Vec<SupervisorInput> = parse_script(data);
    supervisor::run::<DefaultBuffer>(&script);
    supervisor::run::<MachineVec>(&script);
}

/// Reads inputs until the bytes run out (or [`MAX_INPUTS`]).
pub fn parse_script<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Vec<T> {
    let mut u = Unstructured::new(data);
    let mut script = Vec::new();
    while !u.is_empty() && script.len() < MAX_INPUTS {
        match T::arbitrary(&mut u) {
            Ok(input) => script.push(input),
            Err(_) => break,
        }
    }
    script
}

/// The bytes [`parse_script`] reads back into `script`.
pub fn unparse_script<T: Unparse>(script: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for input in script {
        input.unparse(&mut out);
    }
    out
}

/// Writes a value as the bytes its `Arbitrary` impl reads back into the same
/// value (arbitrary 1.x: integers little-endian, `bool` one byte, each `Vec`
/// element after a `1` byte and a `0` byte at the end, an enum variant as the
/// `u32` that the derive scales onto the variant count).
pub trait Unparse {
    /// Appends the bytes to `out`.
    fn unparse(&self, out: &mut Vec<u8>);
}

macro_rules! unparse_int {
    ($($t:ty),*) => {$(
        impl Unparse for $t {
            fn unparse(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
unparse_int!(u8, u16, u32, u64);

impl Unparse for bool {
    fn unparse(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Unparse> Unparse for Vec<T> {
    fn unparse(&self, out: &mut Vec<u8>) {
        for item in self {
            out.push(1);
            item.unparse(out);
        }
        out.push(0);
    }
}

impl<T: Unparse> Unparse for Option<T> {
    fn unparse(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => {
                out.push(1);
                v.unparse(out);
            }
            None => out.push(0),
        }
    }
}

/// The derive picks variant `(x as u64 * count) >> 32` for the `u32` `x` it
/// reads; this writes the smallest `x` that picks `index`.
fn variant(out: &mut Vec<u8>, index: u32, count: u32) {
    let x = (u64::from(index) << 32).div_ceil(u64::from(count));
    out.extend_from_slice(&(x as u32).to_le_bytes());
}

/// Implements [`Unparse`] for an enum with a derived `Arbitrary`: list every
/// variant in declaration order, naming its fields in declaration order
/// (`Tuple(a, b)`, `Struct { x, y }`); each variant is written as its index,
/// then its fields.
macro_rules! unparse_enum {
    ($ty:ident { $($v:ident $(($($t:ident),*))? $({ $($f:ident),* })?),* $(,)? }) => {
        impl Unparse for $ty {
            fn unparse(&self, out: &mut Vec<u8>) {
                const VARIANTS: &[&str] = &[$(stringify!($v)),*];
                let index = |name: &str| {
                    let i = VARIANTS.iter().position(|&v| v == name);
                    i.expect("a listed variant") as u32
                };
                match self {
                    $($ty::$v $(($($t),*))? $({ $($f),* })? => {
                        $crate::variant(out, index(stringify!($v)), VARIANTS.len() as u32);
                        $($($t.unparse(out);)*)?
                        $($($f.unparse(out);)*)?
                    })*
                }
            }
        }
    };
}
pub(crate) use unparse_enum;

/// Bytes whose length the fuzzer picks: a `u16` length, then that many bytes
/// (fewer if the input ends first). Cheaper to mutate than a `Vec<u8>`, which
/// spends a continuation byte on every element.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chunk(pub Vec<u8>);

impl<'a> Arbitrary<'a> for Chunk {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = usize::from(u16::arbitrary(u)?).min(u.len());
        Ok(Chunk(u.bytes(len)?.to_vec()))
    }
}

impl Unparse for Chunk {
    fn unparse(&self, out: &mut Vec<u8>) {
        let len = u16::try_from(self.0.len()).expect("a chunk holds at most 65535 bytes");
        len.unparse(out);
        out.extend_from_slice(&self.0);
    }
}

impl Chunk {
    /// The bytes as text; invalid UTF-8 is replaced, so any chunk is a string.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// A handoff id in a message the fuzzer writes.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzId {
    /// The id of the handoff under test (or [`PLACEHOLDER_ID`] before the
    /// machine knows one): what a well-behaved peer sends.
    Current,
    /// Sixteen copies of this byte: some other handoff.
    Other(u8),
}

unparse_enum!(FuzzId { Current, Other(b) });

/// A pid in a `Hello` the fuzzer writes.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzPid {
    /// The pid the receiver expects (the supervisor's spawned child).
    Expected,
    /// Any other pid.
    Other(u32),
}

unparse_enum!(FuzzPid { Expected, Other(p) });

/// A whole protocol message the fuzzer writes field by field, so the
/// machines see well-framed messages with the right ids far more often than
/// raw bytes would give them.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are `Message`'s, documented there
pub enum FuzzMessage {
    /// `Message::Hello`; `successor` picks the role.
    Hello {
        successor: bool,
        pid: FuzzPid,
        build_id: Chunk,
        proto_min: u16,
        proto_max: u16,
        capabilities: u64,
    },
    /// `Message::HelloAck`.
    HelloAck {
        proto_version_chosen: u16,
        handoff_id: FuzzId,
    },
    /// `Message::PrepareHandoff`.
    PrepareHandoff {
        handoff_id: FuzzId,
        successor_pid: u32,
        deadline_ms: u64,
        drain_grace_ms: u64,
    },
    /// `Message::Drained`.
    Drained {
        open_conns_remaining: u32,
        accept_closed: bool,
    },
    /// `Message::SealRequest`.
    SealRequest { handoff_id: FuzzId },
    /// `Message::SealProgress`.
    SealProgress {
        shards_sealed: u32,
        shards_total: u32,
        last_revision: u64,
    },
    /// `Message::SealComplete`.
    SealComplete {
        handoff_id: FuzzId,
        last_revision_per_shard: Vec<u64>,
        /// Repeated 32 times.
        data_dir_fingerprint: u8,
    },
    /// `Message::SealFailed`.
    SealFailed {
        handoff_id: FuzzId,
        error: Chunk,
        partial_state: Chunk,
    },
    /// `Message::Begin`.
    Begin { handoff_id: FuzzId },
    /// `Message::Ready`.
    Ready {
        handoff_id: FuzzId,
        listening_on: Vec<Chunk>,
        healthz_ok: bool,
        advertised_revision_per_shard: Vec<u64>,
    },
    /// `Message::Commit`.
    Commit { handoff_id: FuzzId },
    /// `Message::Abort`.
    Abort { handoff_id: FuzzId, reason: Chunk },
    /// `Message::ResumeAfterAbort`.
    ResumeAfterAbort { handoff_id: FuzzId },
    /// `Message::Heartbeat`.
    Heartbeat { ts_ms: u64 },
    /// `Message::ListenersRequest` (an extension).
    ListenersRequest { handoff_id: FuzzId },
    /// `Message::PassChannel` (an extension).
    PassChannel { handoff_id: FuzzId },
    /// `Message::PassedConnection` (an extension, pass channel only).
    PassedConnection { handoff_id: FuzzId, state: Chunk },
    /// `Message::PassDone` (an extension, pass channel only).
    PassDone { handoff_id: FuzzId, count: u32 },
    /// `Message::ConnectionsTaken` (an extension, pass channel only).
    ConnectionsTaken { handoff_id: FuzzId },
    /// `Message::ConnectionsPassed` (an extension).
    ConnectionsPassed { handoff_id: FuzzId, count: u32 },
}

unparse_enum!(FuzzMessage {
    Hello { successor, pid, build_id, proto_min, proto_max, capabilities },
    HelloAck { proto_version_chosen, handoff_id },
    PrepareHandoff { handoff_id, successor_pid, deadline_ms, drain_grace_ms },
    Drained { open_conns_remaining, accept_closed },
    SealRequest { handoff_id },
    SealProgress { shards_sealed, shards_total, last_revision },
    SealComplete { handoff_id, last_revision_per_shard, data_dir_fingerprint },
    SealFailed { handoff_id, error, partial_state },
    Begin { handoff_id },
    Ready { handoff_id, listening_on, healthz_ok, advertised_revision_per_shard },
    Commit { handoff_id },
    Abort { handoff_id, reason },
    ResumeAfterAbort { handoff_id },
    Heartbeat { ts_ms },
    ListenersRequest { handoff_id },
    PassChannel { handoff_id },
    PassedConnection { handoff_id, state },
    PassDone { handoff_id, count },
    ConnectionsTaken { handoff_id },
    ConnectionsPassed { handoff_id, count },
});

impl FuzzMessage {
    /// The message as one frame with this version field, `Current` ids
    /// replaced by `id` and the `Expected` pid by `pid`; empty if it exceeds
    /// the protocol's frame limit.
    pub fn to_frame(&self, version: u16, id: HandoffId, pid: u32) -> Vec<u8> {
        let id_of = |i: &FuzzId| match *i {
            FuzzId::Current => id,
            FuzzId::Other(b) => HandoffId::from_bytes([b; 16]),
        };
        let frame = |msg: &Message<'_>| {
            let mut out = vec![0; encoded_frame_len(msg)];
            match encode_frame(version, msg, &mut out) {
                Ok(n) => out.truncate(n),
                Err(_) => out.clear(),
            }
            out
        };
        match self {
            FuzzMessage::Hello {
                successor,
                pid: announced,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => frame(&Message::Hello {
                role: if *successor {
                    Side::Successor
                } else {
                    Side::Incumbent
                },
                pid: match *announced {
                    FuzzPid::Expected => pid,
                    FuzzPid::Other(p) => p,
                },
                build_id: &build_id.0,
                proto_min: *proto_min,
                proto_max: *proto_max,
                capabilities: Capabilities::from_bits(*capabilities),
            }),
            FuzzMessage::HelloAck {
                proto_version_chosen,
                handoff_id,
            } => frame(&Message::HelloAck {
                proto_version_chosen: *proto_version_chosen,
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::PrepareHandoff {
                handoff_id,
                successor_pid,
                deadline_ms,
                drain_grace_ms,
            } => frame(&Message::PrepareHandoff {
                handoff_id: id_of(handoff_id),
                successor_pid: *successor_pid,
                deadline_ms: *deadline_ms,
                drain_grace_ms: *drain_grace_ms,
            }),
            FuzzMessage::Drained {
                open_conns_remaining,
                accept_closed,
            } => frame(&Message::Drained {
                open_conns_remaining: *open_conns_remaining,
                accept_closed: *accept_closed,
            }),
            FuzzMessage::SealRequest { handoff_id } => frame(&Message::SealRequest {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::SealProgress {
                shards_sealed,
                shards_total,
                last_revision,
            } => frame(&Message::SealProgress {
                shards_sealed: *shards_sealed,
                shards_total: *shards_total,
                last_revision: *last_revision,
            }),
            FuzzMessage::SealComplete {
                handoff_id,
                last_revision_per_shard,
                data_dir_fingerprint,
            } => frame(&Message::SealComplete {
                handoff_id: id_of(handoff_id),
                last_revision_per_shard: Revisions::from_slice(last_revision_per_shard),
                data_dir_fingerprint: [*data_dir_fingerprint; 32],
            }),
            FuzzMessage::SealFailed {
                handoff_id,
                error,
                partial_state,
            } => frame(&Message::SealFailed {
                handoff_id: id_of(handoff_id),
                error: &error.text(),
                partial_state: &partial_state.text(),
            }),
            FuzzMessage::Begin { handoff_id } => frame(&Message::Begin {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::Ready {
                handoff_id,
                listening_on,
                healthz_ok,
                advertised_revision_per_shard,
            } => {
                let texts: Vec<String> = listening_on.iter().map(Chunk::text).collect();
                let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
                frame(&Message::Ready {
                    handoff_id: id_of(handoff_id),
                    listening_on: Strings::from_slice(&strs),
                    healthz_ok: *healthz_ok,
                    advertised_revision_per_shard: Revisions::from_slice(
                        advertised_revision_per_shard,
                    ),
                })
            }
            FuzzMessage::Commit { handoff_id } => frame(&Message::Commit {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::Abort { handoff_id, reason } => frame(&Message::Abort {
                handoff_id: id_of(handoff_id),
                reason: &reason.text(),
            }),
            FuzzMessage::ResumeAfterAbort { handoff_id } => frame(&Message::ResumeAfterAbort {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::Heartbeat { ts_ms } => frame(&Message::Heartbeat { ts_ms: *ts_ms }),
            FuzzMessage::ListenersRequest { handoff_id } => frame(&Message::ListenersRequest {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::PassChannel { handoff_id } => frame(&Message::PassChannel {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::PassedConnection { handoff_id, state } => {
                frame(&Message::PassedConnection {
                    handoff_id: id_of(handoff_id),
                    state: &state.0,
                })
            }
            FuzzMessage::PassDone { handoff_id, count } => frame(&Message::PassDone {
                handoff_id: id_of(handoff_id),
                count: *count,
            }),
            FuzzMessage::ConnectionsTaken { handoff_id } => frame(&Message::ConnectionsTaken {
                handoff_id: id_of(handoff_id),
            }),
            FuzzMessage::ConnectionsPassed { handoff_id, count } => {
                frame(&Message::ConnectionsPassed {
                    handoff_id: id_of(handoff_id),
                    count: *count,
                })
            }
        }
    }
}

/// Time passing, as the fuzzer schedules it.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzClock {
    /// The clock moves on this many milliseconds.
    Millis(u16),
    /// The clock moves on this many seconds.
    Seconds(u16),
    /// The clock moves on this many nanoseconds (saturating at the end of
    /// time).
    Nanos(u64),
    /// `handle_timeout` now, due or not (an early call must do nothing).
    Timeout,
    /// The clock moves to `poll_timeout` if that is later, then
    /// `handle_timeout`.
    TimeoutAtDeadline,
}

unparse_enum!(FuzzClock { Millis(v), Seconds(v), Nanos(v), Timeout, TimeoutAtDeadline });

/// One input to an incumbent session.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum IncumbentInput {
    /// Bytes from the supervisor, fed until all are consumed.
    Bytes(Chunk),
    /// A whole frame from the supervisor, version 1.
    Frame(FuzzMessage),
    /// A whole frame from the supervisor with this version field.
    FrameWithVersion(u16, FuzzMessage),
    /// The supervisor closed the connection.
    Closed,
    /// The drain hook finished.
    Drained {
        /// Reported as `open_conns_remaining`.
        open_conns_remaining: u32,
        /// Reported as `accept_closed`.
        accept_closed: bool,
    },
    /// The drain hook failed.
    DrainFailed,
    /// The seal hook finished.
    Sealed {
        /// The last revision of each shard.
        revisions: Vec<u64>,
        /// The fingerprint, this byte 32 times.
        fingerprint: u8,
    },
    /// The seal hook failed.
    SealFailed {
        /// What failed.
        error: Chunk,
        /// What was left half done.
        partial_state: Chunk,
    },
    /// The seal hook made progress.
    SealProgress {
        /// Shards sealed so far.
        shards_sealed: u32,
        /// Shards in all.
        shards_total: u32,
        /// The last revision sealed.
        last_revision: u64,
    },
    /// The lock was taken.
    LockAcquired,
    /// The lock is held by another process.
    LockBusy,
    /// The resume hook finished.
    Resumed,
    /// The resume hook failed.
    ResumeFailed,
    /// Time passes.
    Clock(FuzzClock),
    /// The drain hook passed this many connections to the successor
    /// (`handle_connections_passed`).
    ConnectionsPassed {
        /// Reported as `count`.
        count: u32,
    },
}

unparse_enum!(IncumbentInput {
    Bytes(c),
    Frame(m),
    FrameWithVersion(v, m),
    Closed,
    Drained { open_conns_remaining, accept_closed },
    DrainFailed,
    Sealed { revisions, fingerprint },
    SealFailed { error, partial_state },
    SealProgress { shards_sealed, shards_total, last_revision },
    LockAcquired,
    LockBusy,
    Resumed,
    ResumeFailed,
    Clock(c),
    ConnectionsPassed { count },
});

/// One input to a successor session.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum SuccessorInput {
    /// Bytes from the supervisor, fed until all are consumed.
    Bytes(Chunk),
    /// A whole frame from the supervisor, version 1.
    Frame(FuzzMessage),
    /// A whole frame from the supervisor with this version field.
    FrameWithVersion(u16, FuzzMessage),
    /// The supervisor closed the socket.
    Closed,
    /// The lock was taken.
    LockAcquired,
    /// The lock is held by another process.
    LockBusy,
    /// The daemon serves.
    Ready {
        /// Addresses it serves on.
        listening_on: Vec<Chunk>,
        /// Its own health check.
        healthz_ok: bool,
        /// The revision of each shard it opened.
        revisions: Vec<u64>,
    },
    /// The daemon could not start.
    StartFailed,
    /// Time passes.
    Clock(FuzzClock),
}

unparse_enum!(SuccessorInput {
    Bytes(c),
    Frame(m),
    FrameWithVersion(v, m),
    Closed,
    LockAcquired,
    LockBusy,
    Ready { listening_on, healthz_ok, revisions },
    StartFailed,
    Clock(c),
});

/// One of the supervisor's two peers, as the fuzzer names it.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FuzzPeer {
    /// The incumbent's control connection.
    Incumbent,
    /// The successor's socketpair.
    Successor,
}

unparse_enum!(FuzzPeer {
    Incumbent,
    Successor
});

/// One input to a supervisor's handoff.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum SupervisorInput {
    /// Bytes from a peer, fed until all are consumed.
    Bytes(FuzzPeer, Chunk),
    /// A whole frame from a peer, version 1.
    Frame(FuzzPeer, FuzzMessage),
    /// A whole frame from a peer with this version field.
    FrameWithVersion(FuzzPeer, u16, FuzzMessage),
    /// The peer closed its end.
    Closed(FuzzPeer),
    /// The connection to the incumbent is open.
    Connected,
    /// The incumbent could not be reached.
    ConnectFailed,
    /// The successor was spawned with this pid.
    Spawned(u32),
    /// The successor could not be spawned.
    SpawnFailed,
    /// The successor exited and was reaped.
    SuccessorExited,
    /// A journal write failed.
    JournalFailed,
    /// Time passes.
    Clock(FuzzClock),
    /// A connection to the control socket is open; `Expected` means the
    /// kernel names the expected incumbent as its listener.
    ConnectedTo(FuzzPid),
    /// Nothing listens at the control socket path right now.
    ConnectRefused,
}

unparse_enum!(SupervisorInput {
    Bytes(p, c),
    Frame(p, m),
    FrameWithVersion(p, v, m),
    Closed(p),
    Connected,
    ConnectFailed,
    Spawned(pid),
    SpawnFailed,
    SuccessorExited,
    JournalFailed,
    Clock(c),
    ConnectedTo(p),
    ConnectRefused,
});

std::thread_local! {
    /// Bytes held by live [`TrackedVec`]s, per ledger. Per thread, because
    /// the replay test runs targets on several threads at once.
    static LEDGERS: [Cell<usize>; 2] = const { [Cell::new(0), Cell::new(0)] };
}

/// The ledger of the buffers of the machine under test.
const MACHINE: usize = 0;
/// The ledger of the checker's own copies of the machine's decoders.
const SHADOW: usize = 1;

/// Bytes currently held by the `Vec` buffers of one ledger.
fn held(ledger: usize) -> usize {
    LEDGERS.with(|l| l[ledger].get())
}

/// A `Vec<u8>` buffer that books every byte it holds on a ledger, so a
/// driver can bound what a machine keeps without seeing its insides.
pub struct TrackedVec<const LEDGER: usize>(Vec<u8>);

/// The growable buffer the machines are fuzzed with.
pub type MachineVec = TrackedVec<MACHINE>;
/// The growable buffer of the checker's shadow decoders.
type ShadowVec = TrackedVec<SHADOW>;

impl<const LEDGER: usize> Buffer for TrackedVec<LEDGER> {
    fn empty() -> Self {
        TrackedVec(Vec::new())
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }

    fn grow(&mut self, len: usize) -> bool {
        let before = self.0.len();
        let grown = Buffer::grow(&mut self.0, len);
        let after = self.0.len();
        LEDGERS.with(|l| l[LEDGER].set(l[LEDGER].get() + after - before));
        grown
    }
}

impl<const LEDGER: usize> Drop for TrackedVec<LEDGER> {
    fn drop(&mut self) {
        LEDGERS.with(|l| l[LEDGER].set(l[LEDGER].get() - self.0.len()));
    }
}

/// A buffer type a machine is fuzzed with, and the type of the checker's
/// shadow decoder that must accept exactly the same frames.
pub(crate) trait FuzzBuffer: Buffer {
    /// Same limit as `Self`, booked on the shadow ledger if it grows.
    type Shadow: Buffer;
    /// Whether buffers grow (and are booked on the ledgers).
    const GROWS: bool;
}

impl FuzzBuffer for DefaultBuffer {
    type Shadow = DefaultBuffer;
    const GROWS: bool = false;
}

impl FuzzBuffer for MachineVec {
    type Shadow = ShadowVec;
    const GROWS: bool = true;
}

/// Deadlines saturate at [`Instant::MAX`], so within this much of it a
/// due timer can stay due; checks that need time to move on stop there.
const END_OF_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whether `now` is far enough from the end of time for deadlines to lie
/// strictly ahead of it.
pub(crate) fn time_moves(now: Instant) -> bool {
    now.saturating_add(END_OF_TIME) < Instant::MAX
}

/// The clock after `c` (for the two advancing kinds; timeouts leave it).
pub(crate) fn advance(now: Instant, c: FuzzClock) -> Instant {
    match c {
        FuzzClock::Millis(ms) => now + Duration::from_millis(u64::from(ms)),
        FuzzClock::Seconds(s) => now + Duration::from_secs(u64::from(s)),
        FuzzClock::Nanos(n) => Instant::from_nanos(now.as_nanos().saturating_add(n)),
        FuzzClock::Timeout | FuzzClock::TimeoutAtDeadline => now,
    }
}

/// How many times `handle_timeout` may be needed at one instant before no
/// timer is due any more. More means a driver loop would spin.
pub(crate) const TIMEOUT_ROUNDS: usize = 16;

/// Implements [`Clocked`] for a target's `Driver<B>`, whose machine is in
/// `m` and whose clock is `check.now`; `$step` is its checked
/// `handle_timeout` call, with the driver as `$d` and the instant as `$now`.
macro_rules! clocked_driver {
    (|$d:ident, $now:ident| $step:expr) => {
        impl<B: FuzzBuffer> Clocked for Driver<B> {
            fn now_mut(&mut self) -> &mut Instant {
                &mut self.check.now
            }

            fn deadline(&self) -> Option<Instant> {
                self.m.poll_timeout()
            }

            fn timeout_step(&mut self, $now: Instant) {
                let $d = self;
                $step
            }
        }
    };
}
pub(crate) use clocked_driver;

/// What the clock handling shared by the three drivers needs of each.
pub(crate) trait Clocked {
    /// The driver's clock.
    fn now_mut(&mut self) -> &mut Instant;
    /// The machine's `poll_timeout`.
    fn deadline(&self) -> Option<Instant>;
    /// Calls the machine's `handle_timeout(now)` and checks the step as
    /// any other.
    fn timeout_step(&mut self, now: Instant);
}

/// Applies a clock input: time moves on, and for the two timeout kinds the
/// driver calls `handle_timeout` as a driver loop would.
pub(crate) fn clock<D: Clocked>(d: &mut D, c: FuzzClock) {
    let now = d.now_mut();
    *now = advance(*now, c);
    match c {
        FuzzClock::Timeout => timeout(d),
        FuzzClock::TimeoutAtDeadline => {
            if let Some(t) = d.deadline() {
                let now = d.now_mut();
                *now = (*now).max(t);
            }
            timeout(d);
        }
        _ => {}
    }
}

/// `handle_timeout` as a driver loop calls it: again while a deadline is
/// still due, which must stop after a few rounds.
fn timeout<D: Clocked>(d: &mut D) {
    let now = *d.now_mut();
    for round in 0.. {
        d.timeout_step(now);
        match d.deadline() {
            Some(t) if t <= now && time_moves(now) => assert!(
                round < TIMEOUT_ROUNDS,
                "handle_timeout({now:?}) leaves a deadline at {t:?} due round after round"
            ),
            _ => return,
        }
    }
}

/// One step of a machine, as the checks every machine shares see it.
pub(crate) struct StepEnd<'a, S> {
    /// "session" or "handoff", for the messages.
    pub machine: &'static str,
    /// The call the step was, for the messages.
    pub call: &'a dyn std::fmt::Debug,
    /// The role's transition table allows `before -> after`.
    pub legal: bool,
    /// The call answered nothing the machine asked for (or is one the
    /// machine must ignore in this state): it may neither act nor move.
    pub inert: bool,
    /// The call was `handle_timeout` before any deadline was due.
    pub early_timeout: bool,
    /// How many outputs the step produced.
    pub outputs: usize,
    /// The machine's step before and after.
    pub before: S,
    /// See `before`.
    pub after: S,
    /// `poll_timeout` before and after the step.
    pub timeout_before: Option<Instant>,
    /// See `timeout_before`.
    pub timeout_after: Option<Instant>,
    /// The machine's `is_finished`.
    pub finished: bool,
    /// Its step after is `Done`.
    pub done: bool,
    /// The checker saw `Finished` come out.
    pub saw_finished: bool,
    /// With growing buffers, the most bytes the machine may hold.
    pub bound: Option<usize>,
}

/// The checks after a step that hold for every machine: a legal
/// transition; an inert call or an early `handle_timeout` does nothing;
/// `Done` exactly once `Finished` came out, and then no timer; no more
/// bytes held than the frames account for.
pub(crate) fn check_step_end<S: PartialEq + std::fmt::Debug>(s: StepEnd<'_, S>) {
    let StepEnd {
        machine,
        call,
        before,
        after,
        ..
    } = &s;
    assert!(s.legal, "{before:?} -> {after:?} on {call:?}");
    if s.inert {
        assert_eq!(
            s.outputs, 0,
            "{call:?} answered nothing the {machine} asked, yet it acted"
        );
        assert_eq!(before, after);
    }
    if s.early_timeout {
        assert_eq!(s.outputs, 0, "an early handle_timeout acted");
        assert_eq!(before, after, "an early handle_timeout moved the {machine}");
        assert_eq!(s.timeout_after, s.timeout_before);
    }
    assert_eq!(s.finished, s.saw_finished);
    assert_eq!(s.done, s.saw_finished);
    if s.saw_finished {
        assert_eq!(s.timeout_after, None, "a finished {machine} wants a timer");
    }
    if let Some(bound) = s.bound {
        let holds = held(MACHINE);
        assert!(
            holds <= bound,
            "the {machine} holds {holds} bytes, more than the {bound} its frames account for"
        );
    }
}
