//! Each machine beside its reference model (`handoff_proptests::model`), on
//! arbitrary input sequences: after every input the real machine's step,
//! outputs and next deadline must be the model's.
//!
//! An input sequence is a list of `(guide, choice)` pairs. A low `guide`
//! plays an input that matters in the model's current step: mostly the one
//! the happy path expects, otherwise one of docs/PROTOCOL.md section 4's failures for that step
//! (a close, an abort, a failed hook, a busy lock, a deadline), so that
//! sequences get deep into the handoff and then leave it every way. Any
//! other `guide` plays `choice`: any frame (right or wrong id, version,
//! direction, phase, malformed), any hook result, a close, or time passing
//! by any amount or to the next deadline. Shrinking works on both.

use std::time::Duration;

use handoff_core::{
    IncumbentConfig, IncumbentSession, Instant, MessageKind, Side, SuccessorConfig,
    SuccessorSession, SupervisorConfig, SupervisorHandoff,
};
use handoff_proptests::model::{Frame, VERSION, incumbent, successor, supervisor};
use handoff_proptests::owned::OwnedMessage;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// The id the supervisor side assigns in these tests.
const ID: [u8; 16] = [0x42; 16];
/// An id of some other handoff.
const OTHER_ID: [u8; 16] = [0xee; 16];
/// The pid the successor is spawned with.
const SPAWNED_PID: u32 = 777;
/// Below this, a guide plays the happy path's next input.
const GUIDED: u8 = 110;

/// The input a guide plays: the happy path's for most guides (always for
/// 0 and 1, so an all-guided script walks the happy path to its end), one
/// of the step's other meaningful inputs (docs/PROTOCOL.md section 4's failures) for the rest.
fn guided<C: Clone>(guide: u8, happy: C, others: &[C]) -> C {
    let g = usize::from(guide);
    if g % 3 != 2 || others.is_empty() {
        happy
    } else {
        others[(g / 3) % others.len()].clone()
    }
}

fn start() -> Instant {
    Instant::from_millis(1_000)
}

/// How far time moves: a little, some, or past any budget.
fn advance() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..30, 0u64..3_000, 0u64..90_000]
}

/// A message of `kind` with plain field values and the id `id`.
fn message_of(kind: MessageKind, id: [u8; 16]) -> OwnedMessage {
    use OwnedMessage as M;
    match kind {
        MessageKind::Hello => M::Hello {
            role: Side::Incumbent,
            pid: 1,
            build_id: b"b".to_vec(),
            proto_min: 1,
            proto_max: 1,
            capabilities: 0,
        },
        MessageKind::HelloAck => M::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        MessageKind::PrepareHandoff => M::PrepareHandoff {
            handoff_id: id,
            successor_pid: SPAWNED_PID,
            deadline_ms: 60_000,
            drain_grace_ms: 25_000,
        },
        MessageKind::Drained => M::Drained {
            open_conns_remaining: 0,
            accept_closed: true,
        },
        MessageKind::SealRequest => M::SealRequest { handoff_id: id },
        MessageKind::SealProgress => M::SealProgress {
            shards_sealed: 1,
            shards_total: 2,
            last_revision: 3,
        },
        MessageKind::SealComplete => M::SealComplete {
            handoff_id: id,
            last_revision_per_shard: vec![4, 5],
            data_dir_fingerprint: [6; 32],
        },
        MessageKind::SealFailed => M::SealFailed {
            handoff_id: id,
            error: "disk full".into(),
            partial_state: String::new(),
        },
        MessageKind::Begin => M::Begin { handoff_id: id },
        MessageKind::Ready => M::Ready {
            handoff_id: id,
            listening_on: vec!["127.0.0.1:1".into()],
            healthz_ok: true,
            advertised_revision_per_shard: vec![4, 5],
        },
        MessageKind::Commit => M::Commit { handoff_id: id },
        MessageKind::Abort => M::Abort {
            handoff_id: id,
            reason: "because".into(),
        },
        MessageKind::ResumeAfterAbort => M::ResumeAfterAbort { handoff_id: id },
        MessageKind::Heartbeat => M::Heartbeat { ts_ms: 9 },
        MessageKind::ListenersRequest => M::ListenersRequest { handoff_id: id },
        MessageKind::Listeners => M::Listeners {
            handoff_id: id,
            names: vec!["kv".into()],
        },
        MessageKind::Probation => M::Probation {
            handoff_id: id,
            window_ms: 5_000,
        },
        MessageKind::PassChannel => M::PassChannel { handoff_id: id },
        MessageKind::PassedConnection => M::PassedConnection {
            handoff_id: id,
            state: b"GET k\n".to_vec(),
        },
        MessageKind::PassDone => M::PassDone {
            handoff_id: id,
            count: 2,
        },
        MessageKind::ConnectionsTaken => M::ConnectionsTaken { handoff_id: id },
        MessageKind::ConnectionsPassed => M::ConnectionsPassed {
            handoff_id: id,
            count: 2,
        },
    }
}

/// Any message kind, the extensions included: the models' machines offer
/// no capability, so to them every extension is unexpected.
fn any_kind() -> impl Strategy<Value = MessageKind> {
    let n = MessageKind::ALL.len();
    (0..n + MessageKind::EXTENSIONS.len()).prop_map(move |i| {
        if i < n {
            MessageKind::ALL[i]
        } else {
            MessageKind::EXTENSIONS[i - n]
        }
    })
}

fn msg(message: OwnedMessage) -> Frame {
    Frame::Message {
        version: VERSION,
        message,
    }
}

/// A heartbeat under a version nobody negotiated.
fn wrong_version() -> Frame {
    Frame::Message {
        version: VERSION + 1,
        message: OwnedMessage::Heartbeat { ts_ms: 1 },
    }
}

fn id_choice(right: bool) -> [u8; 16] {
    if right { ID } else { OTHER_ID }
}

/// Where time goes for a time input: `Some(ms)` forward by that much,
/// `None` to the machine's next deadline.
fn time_to(now: Instant, forward: Option<u64>, deadline: Option<Instant>) -> Instant {
    match forward {
        Some(ms) => now + Duration::from_millis(ms),
        None => deadline.map_or(now, |t| t.max(now)),
    }
}

// ================================================================= successor

#[derive(Clone, Debug)]
enum SucChoice {
    HelloAck { good_version: bool },
    Begin { right_id: bool },
    Abort { right_id: bool },
    Heartbeat,
    Unexpected(MessageKind, bool),
    WrongVersion,
    Malformed,
    Closed,
    LockAcquired,
    LockBusy,
    Ready,
    StartFailed,
    Time(Option<u64>),
}

fn suc_choice() -> impl Strategy<Value = SucChoice> {
    use SucChoice::*;
    prop_oneof![
        1 => any::<bool>().prop_map(|good_version| HelloAck { good_version }),
        1 => any::<bool>().prop_map(|right_id| Begin { right_id }),
        1 => any::<bool>().prop_map(|right_id| Abort { right_id }),
        1 => Just(Heartbeat),
        1 => (any_kind(), any::<bool>()).prop_map(|(k, r)| Unexpected(k, r)),
        1 => Just(WrongVersion),
        1 => Just(Malformed),
        1 => Just(Closed),
        1 => Just(LockAcquired),
        1 => Just(LockBusy),
        1 => Just(Ready),
        1 => Just(StartFailed),
        3 => advance().prop_map(|ms| Time(Some(ms))),
        3 => Just(Time(None)),
    ]
}

fn suc_input(
    model: &successor::Model,
    real: &SuccessorSession<Vec<u8>>,
    now: &mut Instant,
    guide: u8,
    choice: &SucChoice,
) -> successor::Input {
    use handoff_core::SuccessorStep as S;
    use successor::Input as I;
    let choice = if guide < GUIDED {
        use SucChoice as C;
        let (happy, others): (C, &[C]) = match model.step {
            S::AwaitingHelloAck => (C::HelloAck { good_version: true }, &[C::Time(None)]),
            S::AwaitingBegin => (
                C::Begin { right_id: true },
                &[
                    C::Heartbeat,
                    C::Time(None),
                    C::Abort { right_id: true },
                    C::Closed,
                ],
            ),
            S::Locking => (C::LockAcquired, &[C::LockBusy, C::Time(None), C::Closed]),
            S::Starting => (
                C::Ready,
                &[
                    C::StartFailed,
                    C::Closed,
                    C::Abort { right_id: true },
                    C::Time(None),
                ],
            ),
            // Unreached: the models run with probation off.
            S::Probation | S::Done => (C::Time(None), &[]),
        };
        guided(guide, happy, others)
    } else {
        choice.clone()
    };
    match choice {
        SucChoice::HelloAck { good_version } => I::Frame(msg(OwnedMessage::HelloAck {
            proto_version_chosen: if good_version { VERSION } else { VERSION + 1 },
            handoff_id: ID,
        })),
        SucChoice::Begin { right_id } => I::Frame(msg(OwnedMessage::Begin {
            handoff_id: id_choice(right_id),
        })),
        SucChoice::Abort { right_id } => I::Frame(msg(OwnedMessage::Abort {
            handoff_id: id_choice(right_id),
            reason: "no".into(),
        })),
        SucChoice::Heartbeat => I::Frame(msg(OwnedMessage::Heartbeat { ts_ms: 5 })),
        SucChoice::Unexpected(k, right) => I::Frame(msg(message_of(k, id_choice(right)))),
        SucChoice::WrongVersion => I::Frame(wrong_version()),
        SucChoice::Malformed => I::Frame(Frame::Malformed),
        SucChoice::Closed => I::Closed,
        SucChoice::LockAcquired => I::LockAcquired,
        SucChoice::LockBusy => I::LockBusy,
        SucChoice::Ready => I::Ready,
        SucChoice::StartFailed => I::StartFailed,
        SucChoice::Time(forward) => {
            *now = time_to(*now, forward, real.poll_timeout());
            I::Timeout(*now)
        }
    }
}

fn suc_apply(
    real: &mut SuccessorSession<Vec<u8>>,
    now: Instant,
    input: &successor::Input,
) -> Vec<successor::Out> {
    use handoff_core::{ReadyReportRef, Revisions, Strings};
    use successor::Input as I;
    match input {
        I::Frame(f) => {
            let bytes = f.bytes();
            let used = real.handle_input(now, &bytes);
            assert_eq!(used, bytes.len(), "one whole frame is taken in one call");
        }
        I::Closed => real.handle_closed(now),
        I::LockAcquired => real.handle_lock_acquired(now),
        I::LockBusy => real.handle_lock_busy(now),
        I::Ready => real.handle_ready(
            now,
            ReadyReportRef {
                listening_on: Strings::from_slice(&["127.0.0.1:1"]),
                healthz_ok: true,
                advertised_revision_per_shard: Revisions::from_slice(&[1]),
            },
        ),
        I::StartFailed => real.handle_start_failed(now),
        I::Timeout(t) => real.handle_timeout(*t),
    }
    std::iter::from_fn(|| real.poll_output().map(|o| successor::observe(&o))).collect()
}

/// Runs `script` on both; returns the model and every output, in order.
fn run_successor(
    script: &[(u8, SucChoice)],
) -> Result<(successor::Model, Vec<successor::Out>), TestCaseError> {
    let mut now = start();
    let mut real: SuccessorSession<Vec<u8>> =
        SuccessorSession::new(now, SuccessorConfig::default(), SPAWNED_PID, b"new");
    let (mut model, first) = successor::Model::new(now);
    let got: Vec<_> =
        std::iter::from_fn(|| real.poll_output().map(|o| successor::observe(&o))).collect();
    prop_assert_eq!(&got, &first);
    let mut all = got;
    for (i, (guide, choice)) in script.iter().enumerate() {
        let before = model.step;
        let input = suc_input(&model, &real, &mut now, *guide, choice);
        let got = suc_apply(&mut real, now, &input);
        let want = model.step(now, &input);
        prop_assert_eq!(&got, &want, "input {} {:?} in {:?}", i, input, before);
        all.extend(got);
        prop_assert_eq!(real.step(), model.step, "after input {} {:?}", i, input);
        prop_assert_eq!(
            real.poll_timeout(),
            model.next_timeout(),
            "after input {}",
            i
        );
        prop_assert_eq!(real.handoff_id().map(|h| *h.as_bytes()), model.id);
    }
    Ok((model, all))
}

// ================================================================= incumbent

#[derive(Clone, Debug)]
enum IncChoice {
    HelloAck {
        good_version: bool,
    },
    Prepare {
        right_id: bool,
        deadline_ms: u64,
        grace_ms: u64,
    },
    Request(MessageKind, bool),
    Heartbeat,
    Unexpected(MessageKind, bool),
    WrongVersion,
    Malformed,
    Closed,
    Drained,
    DrainFailed,
    Sealed,
    SealFailed,
    SealProgress,
    ConnectionsPassed,
    LockAcquired,
    LockBusy,
    Resumed,
    ResumeFailed,
    Time(Option<u64>),
}

fn budget_ms() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..3_000, 0u64..120_000, Just(u64::MAX)]
}

fn inc_choice() -> impl Strategy<Value = IncChoice> {
    use IncChoice::*;
    let requests = prop_oneof![
        Just(MessageKind::SealRequest),
        Just(MessageKind::Commit),
        Just(MessageKind::Abort),
        Just(MessageKind::ResumeAfterAbort),
    ];
    prop_oneof![
        1 => any::<bool>().prop_map(|good_version| HelloAck { good_version }),
        1 => (any::<bool>(), budget_ms(), budget_ms()).prop_map(|(right_id, deadline_ms, grace_ms)| {
            Prepare {
                right_id,
                deadline_ms,
                grace_ms,
            }
        }),
        2 => (requests, any::<bool>()).prop_map(|(k, r)| Request(k, r)),
        1 => Just(Heartbeat),
        1 => (any_kind(), any::<bool>()).prop_map(|(k, r)| Unexpected(k, r)),
        1 => Just(WrongVersion),
        1 => Just(Malformed),
        1 => Just(Closed),
        1 => Just(Drained),
        1 => Just(DrainFailed),
        1 => Just(Sealed),
        1 => Just(SealFailed),
        1 => Just(SealProgress),
        1 => Just(ConnectionsPassed),
        1 => Just(LockAcquired),
        1 => Just(LockBusy),
        1 => Just(Resumed),
        1 => Just(ResumeFailed),
        3 => advance().prop_map(|ms| Time(Some(ms))),
        3 => Just(Time(None)),
    ]
}

fn inc_input(
    model: &incumbent::Model,
    real: &IncumbentSession<Vec<u8>>,
    now: &mut Instant,
    guide: u8,
    choice: &IncChoice,
) -> incumbent::Input {
    use handoff_core::IncumbentStep as S;
    use incumbent::Input as I;
    let choice = if guide < GUIDED {
        use IncChoice as C;
        let abort = C::Request(MessageKind::Abort, true);
        let resume = C::Request(MessageKind::ResumeAfterAbort, true);
        let (happy, others): (C, &[C]) = match model.step {
            S::AwaitingHelloAck => (C::HelloAck { good_version: true }, &[C::Time(None)]),
            S::Idle => (
                C::Prepare {
                    right_id: true,
                    deadline_ms: 60_000,
                    grace_ms: 25_000,
                },
                &[C::Heartbeat, C::Time(None), abort],
            ),
            S::Draining => (
                C::Drained,
                &[C::DrainFailed, C::Closed, C::Time(None), abort],
            ),
            S::Drained => (
                C::Request(MessageKind::SealRequest, true),
                &[abort, C::Time(None), C::Closed],
            ),
            S::Sealing => (
                C::Sealed,
                &[C::SealFailed, C::SealProgress, C::Closed, C::Time(None)],
            ),
            S::Sealed => (
                C::Request(MessageKind::Commit, true),
                &[abort, resume, C::Closed, C::Heartbeat, C::Time(None)],
            ),
            // Both steps of a recovery, so that a guided walk ends.
            S::Recovering if guide % 2 == 0 => (
                C::LockAcquired,
                &[C::LockBusy, C::Time(None), C::Time(Some(2_500))],
            ),
            S::Recovering => (C::Resumed, &[C::ResumeFailed, C::LockBusy]),
            // Unreached: the models run with probation off.
            S::Probation | S::Done => (C::Time(None), &[]),
        };
        guided(guide, happy, others)
    } else {
        choice.clone()
    };
    match choice {
        IncChoice::HelloAck { good_version } => I::Frame(msg(OwnedMessage::HelloAck {
            proto_version_chosen: if good_version { VERSION } else { 0 },
            handoff_id: ID,
        })),
        IncChoice::Prepare {
            right_id,
            deadline_ms,
            grace_ms,
        } => I::Frame(msg(OwnedMessage::PrepareHandoff {
            handoff_id: id_choice(right_id),
            successor_pid: SPAWNED_PID,
            deadline_ms,
            drain_grace_ms: grace_ms,
        })),
        IncChoice::Request(k, right) | IncChoice::Unexpected(k, right) => {
            I::Frame(msg(message_of(k, id_choice(right))))
        }
        IncChoice::Heartbeat => I::Frame(msg(OwnedMessage::Heartbeat { ts_ms: 5 })),
        IncChoice::WrongVersion => I::Frame(wrong_version()),
        IncChoice::Malformed => I::Frame(Frame::Malformed),
        IncChoice::Closed => I::Closed,
        IncChoice::Drained => I::Drained,
        IncChoice::DrainFailed => I::DrainFailed,
        IncChoice::Sealed => I::Sealed,
        IncChoice::SealFailed => I::SealFailed,
        IncChoice::SealProgress => I::SealProgress,
        IncChoice::ConnectionsPassed => I::ConnectionsPassed,
        IncChoice::LockAcquired => I::LockAcquired,
        IncChoice::LockBusy => I::LockBusy,
        IncChoice::Resumed => I::Resumed,
        IncChoice::ResumeFailed => I::ResumeFailed,
        IncChoice::Time(forward) => {
            *now = time_to(*now, forward, real.poll_timeout());
            I::Timeout(*now)
        }
    }
}

fn inc_apply(
    real: &mut IncumbentSession<Vec<u8>>,
    now: Instant,
    input: &incumbent::Input,
) -> Vec<incumbent::Out> {
    use handoff_core::{DrainReport, Revisions, SealFailure, SealReportRef};
    use incumbent::Input as I;
    match input {
        I::Frame(f) => {
            let bytes = f.bytes();
            let used = real.handle_input(now, &bytes);
            assert_eq!(used, bytes.len(), "one whole frame is taken in one call");
        }
        I::Closed => real.handle_closed(now),
        I::Drained => real.handle_drained(
            now,
            DrainReport {
                open_conns_remaining: 0,
                accept_closed: true,
            },
        ),
        I::DrainFailed => real.handle_drain_failed(now),
        I::Sealed => real.handle_sealed(
            now,
            SealReportRef {
                last_revision_per_shard: Revisions::from_slice(&[1, 2]),
                data_dir_fingerprint: [3; 32],
            },
        ),
        I::SealFailed => real.handle_seal_failed(
            now,
            SealFailure {
                error: "disk full",
                partial_state: "",
            },
        ),
        I::SealProgress => real.handle_seal_progress(now, 1, 2, 3),
        I::ConnectionsPassed => real.handle_connections_passed(now, 2),
        I::LockAcquired => real.handle_lock_acquired(now),
        I::LockBusy => real.handle_lock_busy(now),
        I::Resumed => real.handle_resumed(now),
        I::ResumeFailed => real.handle_resume_failed(now),
        I::Timeout(t) => real.handle_timeout(*t),
    }
    std::iter::from_fn(|| real.poll_output().map(|o| incumbent::observe(&o))).collect()
}

/// Runs `script` on both; returns the model and every output, in order.
fn run_incumbent(
    script: &[(u8, IncChoice)],
) -> Result<(incumbent::Model, Vec<incumbent::Out>), TestCaseError> {
    let mut now = start();
    let mut real: IncumbentSession<Vec<u8>> =
        IncumbentSession::new(now, IncumbentConfig::default(), 100, b"old");
    let (mut model, first) = incumbent::Model::new(now);
    let got: Vec<_> =
        std::iter::from_fn(|| real.poll_output().map(|o| incumbent::observe(&o))).collect();
    prop_assert_eq!(&got, &first);
    let mut all = got;
    for (i, (guide, choice)) in script.iter().enumerate() {
        let before = model.step;
        let input = inc_input(&model, &real, &mut now, *guide, choice);
        let got = inc_apply(&mut real, now, &input);
        let want = model.step(now, &input);
        prop_assert_eq!(&got, &want, "input {} {:?} in {:?}", i, input, before);
        all.extend(got);
        prop_assert_eq!(real.step(), model.step, "after input {} {:?}", i, input);
        prop_assert_eq!(
            real.poll_timeout(),
            model.next_timeout(),
            "after input {}",
            i
        );
        prop_assert_eq!(real.handoff_id().map(|h| *h.as_bytes()), model.id);
    }
    Ok((model, all))
}

// ================================================================ supervisor

#[derive(Clone, Debug)]
enum FromO {
    Hello { role_ok: bool, version_ok: bool },
    Drained,
    SealProgress,
    SealComplete { right_id: bool },
    SealFailed { right_id: bool },
    Heartbeat,
    Unexpected(MessageKind, bool),
    WrongVersion,
    Malformed,
}

#[derive(Clone, Debug)]
enum FromN {
    Hello {
        role_ok: bool,
        pid_ok: bool,
        version_ok: bool,
    },
    Ready {
        right_id: bool,
    },
    Heartbeat,
    Unexpected(MessageKind, bool),
    WrongVersion,
    Malformed,
}

#[derive(Clone, Debug)]
enum SupChoice {
    Connected,
    ConnectFailed,
    O(FromO),
    N(FromN),
    Closed(Side),
    Spawned,
    SpawnFailed,
    SuccessorExited,
    JournalFailed,
    Time(Option<u64>),
}

fn from_o() -> impl Strategy<Value = FromO> {
    use FromO::*;
    prop_oneof![
        (any::<bool>(), any::<bool>()).prop_map(|(role_ok, version_ok)| Hello {
            role_ok,
            version_ok
        }),
        Just(Drained),
        Just(SealProgress),
        any::<bool>().prop_map(|right_id| SealComplete { right_id }),
        any::<bool>().prop_map(|right_id| SealFailed { right_id }),
        Just(Heartbeat),
        (any_kind(), any::<bool>()).prop_map(|(k, r)| Unexpected(k, r)),
        Just(WrongVersion),
        Just(Malformed),
    ]
}

fn from_n() -> impl Strategy<Value = FromN> {
    use FromN::*;
    prop_oneof![
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(role_ok, pid_ok, version_ok)| {
            Hello {
                role_ok,
                pid_ok,
                version_ok,
            }
        }),
        any::<bool>().prop_map(|right_id| Ready { right_id }),
        Just(Heartbeat),
        (any_kind(), any::<bool>()).prop_map(|(k, r)| Unexpected(k, r)),
        Just(WrongVersion),
        Just(Malformed),
    ]
}

fn sup_choice() -> impl Strategy<Value = SupChoice> {
    use SupChoice::*;
    prop_oneof![
        1 => Just(Connected),
        1 => Just(ConnectFailed),
        4 => from_o().prop_map(O),
        4 => from_n().prop_map(N),
        1 => Just(Closed(Side::Incumbent)),
        1 => Just(Closed(Side::Successor)),
        1 => Just(Spawned),
        1 => Just(SpawnFailed),
        1 => Just(SuccessorExited),
        1 => Just(JournalFailed),
        3 => advance().prop_map(|ms| Time(Some(ms))),
        3 => Just(Time(None)),
    ]
}

fn hello(role: Side, pid: u32, version_ok: bool) -> OwnedMessage {
    let (proto_min, proto_max) = if version_ok { (0, 3) } else { (2, 5) };
    OwnedMessage::Hello {
        role,
        pid,
        build_id: b"build".to_vec(),
        proto_min,
        proto_max,
        capabilities: 0,
    }
}

fn sup_input(
    model: &supervisor::Model,
    real: &SupervisorHandoff<Vec<u8>>,
    now: &mut Instant,
    guide: u8,
    choice: &SupChoice,
) -> supervisor::Input {
    use handoff_core::SupervisorStep as S;
    use supervisor::Input as I;
    let choice = if guide < GUIDED {
        use SupChoice as C;
        let exited = C::SuccessorExited;
        let (happy, others): (C, &[C]) = match model.step {
            S::ConnectingIncumbent => (C::Connected, &[C::ConnectFailed, C::Time(None)]),
            S::AwaitingIncumbentHello => (
                C::O(FromO::Hello {
                    role_ok: true,
                    version_ok: true,
                }),
                &[C::Time(None), C::Closed(Side::Incumbent)],
            ),
            S::SpawningSuccessor => (C::Spawned, &[C::SpawnFailed, C::Time(None)]),
            S::AwaitingSuccessorHello => (
                C::N(FromN::Hello {
                    role_ok: true,
                    pid_ok: true,
                    version_ok: true,
                }),
                &[exited, C::Closed(Side::Successor), C::Time(None)],
            ),
            S::Draining => (
                C::O(FromO::Drained),
                &[
                    C::O(FromO::Heartbeat),
                    C::Time(None),
                    C::Closed(Side::Incumbent),
                    exited,
                ],
            ),
            S::Sealing => (
                C::O(FromO::SealComplete { right_id: true }),
                &[
                    C::O(FromO::SealFailed { right_id: true }),
                    C::O(FromO::SealProgress),
                    C::Time(None),
                    C::Closed(Side::Incumbent),
                ],
            ),
            S::AwaitingReady => (
                C::N(FromN::Ready { right_id: true }),
                &[
                    C::Time(None),
                    exited,
                    C::Closed(Side::Successor),
                    C::Closed(Side::Incumbent),
                ],
            ),
            S::Aborting => (C::SuccessorExited, &[C::Time(None)]),
            // Unreached: the models run with probation off.
            S::Probation | S::Done => (C::Time(None), &[]),
        };
        guided(guide, happy, others)
    } else {
        choice.clone()
    };
    let id = |right| if right { model.id } else { OTHER_ID };
    match choice {
        SupChoice::Connected => I::Connected,
        SupChoice::ConnectFailed => I::ConnectFailed,
        SupChoice::O(o) => I::Frame(
            Side::Incumbent,
            match o {
                FromO::Hello {
                    role_ok,
                    version_ok,
                } => {
                    let role = if role_ok {
                        Side::Incumbent
                    } else {
                        Side::Successor
                    };
                    msg(hello(role, 100, version_ok))
                }
                FromO::Drained => msg(message_of(MessageKind::Drained, model.id)),
                FromO::SealProgress => msg(message_of(MessageKind::SealProgress, model.id)),
                FromO::SealComplete { right_id } => {
                    msg(message_of(MessageKind::SealComplete, id(right_id)))
                }
                FromO::SealFailed { right_id } => {
                    msg(message_of(MessageKind::SealFailed, id(right_id)))
                }
                FromO::Heartbeat => msg(OwnedMessage::Heartbeat { ts_ms: 5 }),
                FromO::Unexpected(k, right) => msg(message_of(k, id(right))),
                FromO::WrongVersion => wrong_version(),
                FromO::Malformed => Frame::Malformed,
            },
        ),
        SupChoice::N(n) => I::Frame(
            Side::Successor,
            match n {
                FromN::Hello {
                    role_ok,
                    pid_ok,
                    version_ok,
                } => {
                    let role = if role_ok {
                        Side::Successor
                    } else {
                        Side::Incumbent
                    };
                    let pid = if pid_ok { SPAWNED_PID } else { SPAWNED_PID + 1 };
                    msg(hello(role, pid, version_ok))
                }
                FromN::Ready { right_id } => msg(message_of(MessageKind::Ready, id(right_id))),
                FromN::Heartbeat => msg(OwnedMessage::Heartbeat { ts_ms: 5 }),
                FromN::Unexpected(k, right) => msg(message_of(k, id(right))),
                FromN::WrongVersion => wrong_version(),
                FromN::Malformed => Frame::Malformed,
            },
        ),
        SupChoice::Closed(p) => I::Closed(p),
        SupChoice::Spawned => I::Spawned(SPAWNED_PID),
        SupChoice::SpawnFailed => I::SpawnFailed,
        SupChoice::SuccessorExited => I::SuccessorExited,
        SupChoice::JournalFailed => I::JournalFailed,
        SupChoice::Time(forward) => {
            *now = time_to(*now, forward, real.poll_timeout());
            I::Timeout(*now)
        }
    }
}

fn sup_apply(
    real: &mut SupervisorHandoff<Vec<u8>>,
    now: Instant,
    input: &supervisor::Input,
) -> Vec<supervisor::Out> {
    use supervisor::Input as I;
    match input {
        I::Connected => real.handle_connected(now),
        I::ConnectFailed => real.handle_connect_failed(now),
        I::Frame(peer, f) => {
            let bytes = f.bytes();
            let used = real.handle_input(now, *peer, &bytes);
            assert_eq!(used, bytes.len(), "one whole frame is taken in one call");
        }
        I::Closed(peer) => real.handle_closed(now, *peer),
        I::Spawned(pid) => real.handle_spawned(now, *pid),
        I::SpawnFailed => real.handle_spawn_failed(now),
        I::SuccessorExited => real.handle_successor_exited(now),
        I::JournalFailed => real.handle_journal_failed(now),
        I::Timeout(t) => real.handle_timeout(*t),
    }
    std::iter::from_fn(|| real.poll_output().map(|o| supervisor::observe(&o))).collect()
}

/// Runs `script` on both; returns the model and every output, in order.
fn run_supervisor(
    random: [u8; 16],
    script: &[(u8, SupChoice)],
) -> Result<(supervisor::Model, Vec<supervisor::Out>), TestCaseError> {
    let mut now = start();
    let mut real: SupervisorHandoff<Vec<u8>> =
        SupervisorHandoff::new(now, SupervisorConfig::default(), random, 1_700_000_000_000);
    let (mut model, first) = supervisor::Model::new(now, *real.handoff_id().as_bytes());
    let got: Vec<_> =
        std::iter::from_fn(|| real.poll_output().map(|o| supervisor::observe(&o))).collect();
    prop_assert_eq!(&got, &first);
    let mut all = got;
    for (i, (guide, choice)) in script.iter().enumerate() {
        let before = model.step;
        let input = sup_input(&model, &real, &mut now, *guide, choice);
        let got = sup_apply(&mut real, now, &input);
        let want = model.step(now, &input);
        prop_assert_eq!(&got, &want, "input {} {:?} in {:?}", i, input, before);
        all.extend(got);
        prop_assert_eq!(real.step(), model.step, "after input {} {:?}", i, input);
        prop_assert_eq!(
            real.poll_timeout(),
            model.next_timeout(),
            "after input {}",
            i
        );
        prop_assert_eq!(real.successor_pid(), model.successor_pid());
    }
    Ok((model, all))
}

// ===================================================================== tests

proptest! {
    // Regressions are kept next to this file: the default looks for a lib.rs
    // beside an integration test, finds none and warns on every run.
    #![proptest_config(ProptestConfig {
        cases: 3_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_successor_follows_its_transition_table_on_any_input_sequence(
        script in vec((any::<u8>(), suc_choice()), 1..40),
    ) {
        run_successor(&script)?;
    }

    #[test]
    fn the_incumbent_follows_its_transition_table_on_any_input_sequence(
        script in vec((any::<u8>(), inc_choice()), 1..50),
    ) {
        run_incumbent(&script)?;
    }

    #[test]
    fn the_supervisor_follows_its_transition_table_on_any_input_sequence(
        random in any::<[u8; 16]>(),
        script in vec((any::<u8>(), sup_choice()), 1..60),
    ) {
        run_supervisor(random, &script)?;
    }
}

/// A script of nothing but guides walks each happy path to its end, which
/// is what lets random scripts reach the deep rows of each table.
#[test]
fn guided_scripts_walk_each_happy_path_to_its_end() {
    use handoff_core::{IncumbentStep, SuccessorStep, SupervisorStep};

    let (m, outs) = run_successor(&vec![(1, SucChoice::Time(Some(0))); 8]).unwrap();
    assert_eq!(m.step, SuccessorStep::Done);
    assert!(outs.contains(&successor::Out::Transmit(MessageKind::Ready)));
    assert_eq!(
        outs.last(),
        Some(&successor::Out::Authoritative {
            supervisor_gone: false
        })
    );

    let (m, outs) = run_incumbent(&vec![(1, IncChoice::Time(Some(0))); 8]).unwrap();
    assert_eq!(m.step, IncumbentStep::Done);
    assert!(outs.contains(&incumbent::Out::ReleaseLock));
    assert_eq!(
        outs.last(),
        Some(&incumbent::Out::Finished(incumbent::End::Committed))
    );

    let (m, outs) = run_supervisor([9; 16], &vec![(1, SupChoice::Time(Some(0))); 8]).unwrap();
    assert_eq!(m.step, SupervisorStep::Done);
    assert!(outs.contains(&supervisor::Out::Transmit(
        Side::Successor,
        MessageKind::Begin
    )));
    assert_eq!(outs.last(), Some(&supervisor::Out::Finished(Ok(()))));
}
