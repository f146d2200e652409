//! # handoff-core
//!
//! The protocol of zero-downtime binary handoff, with no I/O: the v1 wire
//! codec and one state machine per role. A supervisor holds the listening
//! sockets; the running binary (the *incumbent*) drains, seals its state and
//! releases the data-dir lock; the new binary (the *successor*) takes the
//! lock and serves; any failure rolls back to the incumbent. This crate is
//! `#![no_std]`, never allocates, reads no clock and starts no thread: bytes,
//! events and time go in, actions come out. The adapters (`handoff-std`,
//! `handoff-mio`, `handoff-smol`) or your own event loop carry the actions
//! out.
//!
//! ## The calling contract
//!
//! The three machines, [`SupervisorHandoff`], [`IncumbentSession`] and
//! [`SuccessorSession`], share one shape:
//!
//! 1. **Inputs** are `handle_*(now, …)` calls: bytes from a peer
//!    (`handle_input`, which takes at most one frame per call and returns how
//!    many bytes it consumed), a closed peer (`handle_closed`), a timer
//!    (`handle_timeout`), and the completion of an action you ran
//!    (`handle_drained`, `handle_sealed`, `handle_lock_acquired`,
//!    `handle_spawned`, `handle_successor_exited`, …).
//! 2. **After every input, drain [`poll_output`](IncumbentSession::poll_output)
//!    until it returns `None`**, carrying out each action in order: write
//!    this frame, run the drain hook, release the lock, spawn the successor,
//!    signal it, write the journal, close the connection. A frame lent by
//!    `poll_output` is valid until the next call.
//! 3. **Then wait** for the next input or until
//!    [`poll_timeout`](IncumbentSession::poll_timeout), whichever comes
//!    first, and call `handle_timeout` when that instant is reached.
//!    `poll_timeout` is `None` when nothing is pending; calling
//!    `handle_timeout` early or twice does nothing.
//!
//! Time is [`Instant`], the core's own monotonic nanoseconds from an origin
//! you choose. Heartbeats, liveness limits, deadlines, the drain grace and
//! lock retries are all timers inside the machines, so no adapter needs a
//! heartbeat thread. A hook that takes long (drain, seal, the successor's
//! start-up) runs while you keep feeding inputs and timeouts; the machine
//! sends the heartbeats. A machine ends with one `Finished` output; after it,
//! inputs are ignored. Bad input from a peer (a malformed frame, a wrong id, a
//! message in the wrong direction or phase) is never a panic: it ends the
//! session through the same outputs as any other failure, and an incumbent
//! always ends up serving with its lock, unless it committed or another
//! process holds the lock.
//!
//! ## What a driver must also know
//!
//! - **Order is part of the contract.** Outputs queued ahead of `Close`,
//!   `Disconnect` or `Finished` are carried out first: a `Commit` or an
//!   `Abort` is written before its connection closes. A frame that cannot be
//!   written and is not reported with `handle_closed` must still reach the
//!   peer, whole and in order.
//! - **A lent frame lives until the next `poll_output`.** A driver that
//!   cannot write it at once (a non-blocking socket that took only part)
//!   copies the rest into a buffer of its own. It bounds that buffer and the
//!   time bytes wait in it, and treats a peer that stops reading as closed
//!   (the adapters: 64 KiB and 5 s), so that such a peer can neither stall
//!   the deadlines nor grow memory.
//! - **A lock error is "busy".** `AcquireLock` asks for one non-blocking
//!   attempt. Report any failure, `EWOULDBLOCK` or another error, with
//!   `handle_lock_busy`: the machine asks again every `lock_retry_interval`
//!   (10 ms) until `lock_retry_window` (2 s) has passed, then gives up (the
//!   incumbent ends `Superseded`, the successor fails with
//!   `LockUnavailable`). The incumbent asks for the lock only after it asked
//!   to release it, so a driver reclaims anything tied to the lock (its
//!   control socket path, see below) at each `AcquireLock` it grants.
//! - **A running hook is always waited for.** Whatever happens meanwhile (the
//!   peer closes, a deadline passes), the session decides what to undo but
//!   ends only after the hook's completion is reported: report it even when
//!   the connection is gone.
//! - **`new`'s parameters** are the process's own pid and build id, as the
//!   `Hello` announces them. A build id longer than [`MAX_BUILD_ID_LEN`] is
//!   a caller's error: check it before `new` and refuse it (the project's
//!   drivers fail with `InvalidInput`). The machines cannot fail later
//!   without an allocator, so `new` given one anyway announces an empty
//!   build id rather than none.
//! - **The supervisor talks only to the incumbent it knows.** Call
//!   [`SupervisorHandoff::expect_incumbent`] with its pid, report each
//!   connect with the listener's pid from `SO_PEERCRED`
//!   ([`SupervisorHandoff::handle_connected_to`]), and sort a failed connect
//!   into "nothing listens yet" ([`SupervisorHandoff::handle_connect_refused`]:
//!   a missing path, a refusal, a full queue; retried every 5 ms within the
//!   hello timeout) and anything else
//!   ([`SupervisorHandoff::handle_connect_failed`]).
//! - **What the machines leave to the operating system layer**: which peers
//!   may connect (the incumbent's uid, root and an allow-list, checked by
//!   `SO_PEERCRED` before the session starts), one session at a time, and the
//!   control socket path (bound under a temporary name and renamed into
//!   place; a successor renames its own over it only after `Ready`). The
//!   project's protocol document (`docs/PROTOCOL.md`, sections 5 and 6) says
//!   why.
//!
//! ## A complete driver loop
//!
//! An incumbent's control session over a blocking Unix socket. The hooks run
//! inline to keep it short; a real adapter runs them on another thread or
//! task and keeps this loop turning meanwhile (that is what `handoff-std`
//! does), so that heartbeats and deadlines keep working while a drain takes
//! seconds.
//!
//! ```no_run
//! use std::io::{ErrorKind, Read, Write};
//! use std::os::unix::net::UnixStream;
//! use std::time::Duration;
//!
//! use handoff_core::{
//!     DrainReport, IncumbentConfig, IncumbentEnd, IncumbentOutput, IncumbentSession, Instant,
//!     Revisions, SealReportRef,
//! };
//!
//! /// What the daemon does when asked; a stand-in for your own code.
//! trait Daemon {
//!     fn drain(&mut self, deadline: Instant) -> DrainReport;
//!     fn seal(&mut self) -> Result<([u64; 1], [u8; 32]), ()>;
//!     fn resume(&mut self) -> bool;
//!     fn release_lock(&mut self);
//!     fn try_lock(&mut self) -> bool;
//! }
//!
//! fn run_session(mut sock: UnixStream, daemon: &mut impl Daemon) -> std::io::Result<IncumbentEnd> {
//!     let origin = std::time::Instant::now();
//!     let now = || Instant::from_nanos(origin.elapsed().as_nanos() as u64);
//!     let mut session: IncumbentSession =
//!         IncumbentSession::new(now(), IncumbentConfig::default(), std::process::id(), b"v2");
//!     let mut buf = [0u8; 4096];
//!     // Bytes read but not yet taken by the session: `buf[start..end]`.
//!     let (mut start, mut end) = (0, 0);
//!     loop {
//!         // 2. Carry out every action, in order.
//!         while let Some(output) = session.poll_output() {
//!             match output {
//!                 IncumbentOutput::Transmit(frame) => {
//!                     if sock.write_all(frame).is_err() {
//!                         session.handle_closed(now());
//!                     }
//!                 }
//!                 IncumbentOutput::Drain { deadline } => {
//!                     let report = daemon.drain(deadline);
//!                     session.handle_drained(now(), report);
//!                 }
//!                 IncumbentOutput::Seal => match daemon.seal() {
//!                     Ok((revisions, fingerprint)) => session.handle_sealed(
//!                         now(),
//!                         SealReportRef {
//!                             last_revision_per_shard: Revisions::from_slice(&revisions),
//!                             data_dir_fingerprint: fingerprint,
//!                         },
//!                     ),
//!                     Err(()) => session.handle_seal_failed(
//!                         now(),
//!                         handoff_core::SealFailure { error: "disk full", partial_state: "" },
//!                     ),
//!                 },
//!                 IncumbentOutput::ReleaseLock => daemon.release_lock(),
//!                 IncumbentOutput::AcquireLock => {
//!                     if daemon.try_lock() {
//!                         session.handle_lock_acquired(now());
//!                     } else {
//!                         session.handle_lock_busy(now());
//!                     }
//!                 }
//!                 IncumbentOutput::Resume => {
//!                     if daemon.resume() {
//!                         session.handle_resumed(now());
//!                     } else {
//!                         session.handle_resume_failed(now());
//!                     }
//!                 }
//!                 IncumbentOutput::Close => {
//!                     let _ = sock.shutdown(std::net::Shutdown::Both);
//!                 }
//!                 // Asked for only when the session offered
//!                 // RECLAIM_LISTENERS, which the default configuration
//!                 // does not (the answer needs SCM_RIGHTS, docs section 9).
//!                 IncumbentOutput::SendListeners { .. } => unreachable!(),
//!                 // Likewise PASS_CONNECTIONS (docs section 11).
//!                 IncumbentOutput::PassChannel { .. } => unreachable!(),
//!                 IncumbentOutput::Finished(end) => return Ok(end),
//!             }
//!         }
//!         // 1. Feed the next input: buffered bytes first, one frame at a time.
//!         if start < end {
//!             start += session.handle_input(now(), &buf[start..end]);
//!             continue;
//!         }
//!         // 3. Wait for bytes or the next deadline.
//!         let wait = session
//!             .poll_timeout()
//!             .map(|t| t.saturating_duration_since(now()).max(Duration::from_millis(1)));
//!         sock.set_read_timeout(wait)?;
//!         match sock.read(&mut buf) {
//!             Ok(0) => session.handle_closed(now()),
//!             Ok(n) => (start, end) = (0, n),
//!             Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
//!                 session.handle_timeout(now());
//!             }
//!             Err(e) if e.kind() == ErrorKind::Interrupted => {}
//!             Err(_) => session.handle_closed(now()),
//!         }
//!     }
//! }
//! ```
//!
//! ## The wire
//!
//! [`Message`] is the protocol's fourteen messages, [`encode_frame`] writes
//! one frame into your buffer, and [`FrameDecoder`] reads frames from a byte
//! stream split any way, borrowing strings and lists from its buffer. Frames
//! are exactly those of the `beyond-handoff` 0.1.x crate, so peers built on
//! either interoperate; decoding here is stricter (bytes left over in a frame
//! are an error) but accepts everything the reference sends.
//!
//! ## Buffers
//!
//! Each machine is generic over a [`Buffer`] for its receive buffer, its
//! queue of outgoing frames and the reports it keeps. The default is a
//! 4 KiB array; with the `alloc` feature a `Vec<u8>` grows as needed up to
//! the 1 MiB frame limit, which a supervisor needs to accept anything a
//! reference peer may send.
//!
//! ## Extensions
//!
//! Extensions are negotiated through a bit of [`Capabilities`] (a feature is
//! used only when the peer that must carry it out offered it; a reference
//! peer offers none) and carried by message variants after the fourteen of
//! v1, which a peer only ever sees after it offered the bit:
//!
//! - *reclaiming listeners* (`RECLAIM_LISTENERS`, docs/PROTOCOL.md section
//!   9): a restarted supervisor asks the incumbent for the listener FDs
//!   instead of binding again, an exchange at the start of a session after
//!   `HelloAck`, with one output (`SendListeners`) for the adapter;
//! - *probation* (`PROBATION`, section 10): after `Ready` and its health
//!   gate, the supervisor sends `Probation` and waits a window before
//!   `Commit`, a step between `AwaitingReady` and `Done`; a successor that
//!   fails in it is rolled back through the sealed incumbent's
//!   `ResumeAfterAbort`, and a successor that offered the bit heartbeats
//!   after `Ready` so a frozen one is seen;
//! - *passing connections* (planned): the incumbent hands accepted
//!   connections to the successor during drain, one more output beside
//!   `Drain` and a matching input on the successor.
//!
//! The machines keep each peer's offered capabilities ([`PeerInfo`] on the
//! supervisor's outcome) so each extension is a new step, not a rewrite.
#![no_std]
#![forbid(unsafe_code)]
#![warn(
    clippy::std_instead_of_core,
    clippy::std_instead_of_alloc,
    clippy::alloc_instead_of_core
)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod buffer;
pub mod codec;
pub mod error;
pub mod frame;
pub mod incumbent;
pub mod journal;
pub mod machine;
pub mod message;
pub mod successor;
pub mod supervisor;
pub mod time;
pub mod wire;

pub use buffer::{Buffer, DefaultBuffer};
pub use error::{DecodeError, DecodeErrorKind, EncodeError, FrameError};
pub use frame::{Frame, FrameDecoder, encode_frame, encoded_frame_len};
pub use incumbent::{
    EndCause, IncumbentConfig, IncumbentEnd, IncumbentOutput, IncumbentSession, IncumbentStep,
};
pub use journal::{JournalPhase, JournalRecord};
pub use machine::{
    DrainReport, ReadyReportRef, SealFailure, SealReportRef, ShortText, Violation, defaults,
};
pub use message::{Message, Revisions, RevisionsIter, Strings, StringsIter};
pub use successor::{
    SuccessorConfig, SuccessorEnd, SuccessorFailure, SuccessorOutput, SuccessorSession,
    SuccessorStep,
};
pub use supervisor::{
    AbortReason, HandoffOutcomeRef, IncumbentFate, PeerInfo, PhaseTimings, Signal, SuccessorFate,
    SupervisorConfig, SupervisorHandoff, SupervisorOutput, SupervisorStep,
};
pub use time::Instant;
pub use wire::{
    Capabilities, HandoffId, LEN_PREFIX, MAX_BUILD_ID_LEN, MAX_CONNECTION_STATE, MAX_FRAME_LEN,
    MIN_FRAME_LEN, MessageKind, PROTO_MAX, PROTO_MIN, ProtoVersion, Side, VERSION_FIELD,
    VersionMismatch, negotiate_version,
};
