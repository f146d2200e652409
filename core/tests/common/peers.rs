//! One machine at a time, driven by hand: frames in, outputs read back as
//! plain values. The kit of `hostile_peers.rs` (each machine against a peer
//! that sends whatever it likes) and `passing.rs` (the connection-passing
//! extension, message by message).

use handoff_core::{
    AbortReason, Capabilities, EndCause, HandoffId, IncumbentConfig, IncumbentEnd, IncumbentOutput,
    IncumbentSession, Instant, Message, MessageKind, Side, Signal, SuccessorConfig, SuccessorEnd,
    SuccessorOutput, SuccessorSession, SupervisorConfig, SupervisorHandoff, SupervisorOutput,
    Violation, encode_frame,
};

pub const ID: HandoffId = HandoffId::from_bytes([0x11; 16]);
pub const OTHER_ID: HandoffId = HandoffId::from_bytes([0x22; 16]);

pub fn t(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

pub fn frame(msg: Message<'_>) -> Vec<u8> {
    frame_v(1, msg)
}

pub fn frame_v(version: u16, msg: Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = encode_frame(version, &msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

pub fn decode_one(bytes: &[u8]) -> Message<'_> {
    Message::decode(&bytes[6..]).unwrap()
}

// ------------------------------------------------------------ the incumbent

#[derive(Debug, PartialEq)]
pub enum IOut {
    Frame(MessageKind),
    Drain,
    Seal,
    ReleaseLock,
    AcquireLock,
    Resume,
    Close,
    SendListeners(HandoffId),
    PassChannel(HandoffId),
    Finished(IncumbentEnd),
}

pub fn drain_incumbent(s: &mut IncumbentSession) -> Vec<IOut> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        v.push(match o {
            IncumbentOutput::Transmit(f) => IOut::Frame(decode_one(f).kind()),
            IncumbentOutput::Drain { .. } => IOut::Drain,
            IncumbentOutput::Seal => IOut::Seal,
            IncumbentOutput::ReleaseLock => IOut::ReleaseLock,
            IncumbentOutput::AcquireLock => IOut::AcquireLock,
            IncumbentOutput::Resume => IOut::Resume,
            IncumbentOutput::Close => IOut::Close,
            IncumbentOutput::SendListeners {
                handoff_id,
                version,
            } => {
                assert_eq!(version, 1);
                IOut::SendListeners(handoff_id)
            }
            IncumbentOutput::PassChannel {
                handoff_id,
                version,
            } => {
                assert_eq!(version, 1);
                IOut::PassChannel(handoff_id)
            }
            IncumbentOutput::Finished(e) => IOut::Finished(e),
        });
    }
    v
}

/// Feeds all of `bytes`, one frame per call, collecting outputs.
pub fn feed_incumbent(s: &mut IncumbentSession, now: Instant, mut bytes: &[u8]) -> Vec<IOut> {
    let mut outs = Vec::new();
    while !bytes.is_empty() {
        let used = s.handle_input(now, bytes);
        assert!(used >= 1);
        bytes = &bytes[used..];
        outs.extend(drain_incumbent(s));
    }
    outs
}

/// An incumbent session past `HelloAck`, idle.
pub fn idle_incumbent() -> IncumbentSession {
    idle_incumbent_with(IncumbentConfig::default())
}

/// The same, configured with `cfg`.
pub fn idle_incumbent_with(cfg: IncumbentConfig) -> IncumbentSession {
    let mut s = IncumbentSession::new(t(0), cfg, 7, b"b");
    assert_eq!(
        drain_incumbent(&mut s),
        vec![IOut::Frame(MessageKind::Hello)]
    );
    let ack = frame(Message::HelloAck {
        proto_version_chosen: 1,
        handoff_id: ID,
    });
    assert_eq!(feed_incumbent(&mut s, t(1), &ack), vec![]);
    s
}

pub fn prepare(deadline_ms: u64, drain_grace_ms: u64) -> Vec<u8> {
    frame(Message::PrepareHandoff {
        handoff_id: ID,
        successor_pid: 9,
        deadline_ms,
        drain_grace_ms,
    })
}

pub fn violation_end(outs: &[IOut]) -> Violation {
    match outs.last() {
        Some(IOut::Finished(IncumbentEnd::Serving(EndCause::Violation(v)))) => *v,
        other => panic!("expected a violation ending, got {other:?} in {outs:?}"),
    }
}

// ----------------------------------------------------------- the supervisor

#[derive(Debug, PartialEq)]
pub enum SOut {
    Connect,
    Frame(Side, MessageKind),
    /// A frame with one end of the pass channel beside it.
    FrameWithChannelEnd(Side, MessageKind),
    Spawn,
    Signal(Signal),
    Disconnect(Side),
    Journal,
    ClearJournal,
    Finished(Result<(), AbortReason>),
}

pub fn drain_supervisor(s: &mut SupervisorHandoff) -> Vec<SOut> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        v.push(match o {
            SupervisorOutput::ConnectIncumbent => SOut::Connect,
            SupervisorOutput::Transmit { to, frame } => SOut::Frame(to, decode_one(frame).kind()),
            SupervisorOutput::TransmitWithChannelEnd { to, frame } => {
                SOut::FrameWithChannelEnd(to, decode_one(frame).kind())
            }
            SupervisorOutput::SpawnSuccessor => SOut::Spawn,
            SupervisorOutput::Signal(sig) => SOut::Signal(sig),
            SupervisorOutput::Disconnect(p) => SOut::Disconnect(p),
            SupervisorOutput::WriteJournal(_) => SOut::Journal,
            SupervisorOutput::ClearJournal => SOut::ClearJournal,
            SupervisorOutput::Finished(o) => SOut::Finished(o.result),
        });
    }
    v
}

pub fn feed_supervisor(
    s: &mut SupervisorHandoff,
    now: Instant,
    from: Side,
    mut bytes: &[u8],
) -> Vec<SOut> {
    let mut outs = Vec::new();
    while !bytes.is_empty() {
        let used = s.handle_input(now, from, bytes);
        assert!(used >= 1);
        bytes = &bytes[used..];
        outs.extend(drain_supervisor(s));
    }
    outs
}

pub fn hello(role: Side, pid: u32, min: u16, max: u16) -> Vec<u8> {
    hello_offering(role, pid, min, max, Capabilities::NONE)
}

/// A `Hello` that offers `capabilities`.
pub fn hello_offering(
    role: Side,
    pid: u32,
    min: u16,
    max: u16,
    capabilities: Capabilities,
) -> Vec<u8> {
    frame(Message::Hello {
        role,
        pid,
        build_id: b"x",
        proto_min: min,
        proto_max: max,
        capabilities,
    })
}

pub fn connected_supervisor() -> SupervisorHandoff {
    connected_supervisor_with(SupervisorConfig::default())
}

/// The same, configured with `cfg`.
pub fn connected_supervisor_with(cfg: SupervisorConfig) -> SupervisorHandoff {
    let mut s = SupervisorHandoff::new(t(0), cfg, [1; 16], 0);
    assert_eq!(drain_supervisor(&mut s), vec![SOut::Connect]);
    s.handle_connected(t(1));
    s
}

pub fn violation_of(outs: &[SOut], peer: Side) -> Violation {
    match outs.last() {
        Some(SOut::Finished(Err(AbortReason::ProtocolViolation { peer: p, violation })))
            if *p == peer =>
        {
            *violation
        }
        other => panic!("expected a violation by the {peer}, got {other:?} in {outs:?}"),
    }
}

// ------------------------------------------------------------ the successor

#[derive(Debug, PartialEq)]
pub enum NOut {
    Frame(MessageKind),
    AcquireLock,
    Start,
    PassChannel(HandoffId),
    Finished(SuccessorEnd),
}

pub fn drain_successor(s: &mut SuccessorSession) -> Vec<NOut> {
    let mut v = Vec::new();
    while let Some(o) = s.poll_output() {
        v.push(match o {
            SuccessorOutput::Transmit(f) => NOut::Frame(decode_one(f).kind()),
            SuccessorOutput::AcquireLock => NOut::AcquireLock,
            SuccessorOutput::Start => NOut::Start,
            SuccessorOutput::PassChannel {
                handoff_id,
                version,
            } => {
                assert_eq!(version, 1);
                NOut::PassChannel(handoff_id)
            }
            SuccessorOutput::Finished(e) => NOut::Finished(e),
        });
    }
    v
}

pub fn feed_successor(s: &mut SuccessorSession, now: Instant, mut bytes: &[u8]) -> Vec<NOut> {
    let mut outs = Vec::new();
    while !bytes.is_empty() {
        let used = s.handle_input(now, bytes);
        bytes = &bytes[used..];
        outs.extend(drain_successor(s));
    }
    outs
}

pub fn fresh_successor() -> SuccessorSession {
    fresh_successor_with(SuccessorConfig::default())
}

/// The same, configured with `cfg`.
pub fn fresh_successor_with(cfg: SuccessorConfig) -> SuccessorSession {
    let mut s = SuccessorSession::new(t(0), cfg, 99, b"n");
    assert_eq!(
        drain_successor(&mut s),
        vec![NOut::Frame(MessageKind::Hello)]
    );
    s
}

pub fn acked_successor() -> SuccessorSession {
    acked_successor_with(SuccessorConfig::default())
}

/// The same, configured with `cfg`.
pub fn acked_successor_with(cfg: SuccessorConfig) -> SuccessorSession {
    let mut s = fresh_successor_with(cfg);
    let ack = frame(Message::HelloAck {
        proto_version_chosen: 1,
        handoff_id: ID,
    });
    assert!(feed_successor(&mut s, t(1), &ack).is_empty());
    s
}
