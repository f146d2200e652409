//! The incumbent side of the adapters against a test supervisor speaking
//! over a real control socket (here, beside the cross-adapter conformance
//! suite):
//! - what a daemon sets on a handoff-std `Incumbent` still holds once an
//!   adapter takes it over (`MioIncumbent::new`, `handoff_smol::serve`,
//!   `handoff_tokio::serve`):
//!   the build id and the capabilities of the config are in the `Hello`;
//! - a hook that panics is a failed hook in the std, smol and tokio adapters: the
//!   daemon resumes, keeps its lock and stays reachable for handoffs;
//! - an incumbent that resumes after a seal takes its control socket path
//!   back from a successor that took it over before it was stopped;
//! - a supervisor that never stops sending heartbeats cannot hold off the
//!   incumbent's own deadline.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, FutureExt};
use handoff_core::{Capabilities, FrameDecoder, HandoffId, Message, encode_frame};
use handoff_mio::MioIncumbent;
use handoff_smol::AsyncDrainable;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, IncumbentConfig, SealProgress,
    SealReport,
};
use mio::{Events, Poll, Token};

const BOUND: Duration = Duration::from_secs(10);
const BUILD_ID: &[u8] = b"build-7";
const OFFERED: Capabilities = Capabilities::RECLAIM_LISTENERS;
/// What the `Hello` announces: the configured bits, and those the shared
/// driver carries out for every adapter (it adds `PROBATION` and
/// `PASS_CONNECTIONS`).
const ANNOUNCED: Capabilities = OFFERED
    .union(Capabilities::PROBATION)
    .union(Capabilities::PASS_CONNECTIONS);

/// A data directory and control socket, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn control(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }

    /// A cold-started incumbent with a build id and a config of its own.
    fn incumbent(&self) -> Incumbent {
        let lock = DataDirLock::acquire(&self.0.join("data")).unwrap();
        Incumbent::bind_cold_start(&self.control(), lock)
            .unwrap()
            .with_build_id(BUILD_ID.to_vec())
            .with_config(IncumbentConfig {
                capabilities: OFFERED,
                ..IncumbentConfig::default()
            })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Feeds what the supervisor read; the build id and capabilities once the
/// first frame, which must be the `Hello`, is whole.
fn hello(decoder: &mut FrameDecoder, read: &[u8]) -> Option<(Vec<u8>, Capabilities)> {
    assert!(
        !read.is_empty(),
        "the incumbent closed the session before its Hello"
    );
    let (_, frame) = decoder.decode(read);
    match frame.expect("a well-formed frame")?.message {
        Message::Hello {
            build_id,
            capabilities,
            ..
        } => Some((build_id.to_vec(), capabilities)),
        other => panic!("expected Hello, got {other:?}"),
    }
}

/// Serves `incumbent` from a mio loop until a supervisor connecting now
/// reads its `Hello`; what that `Hello` announced.
fn mio_hello(incumbent: Incumbent, control_path: &std::path::Path) -> (Vec<u8>, Capabilities) {
    let mut control = MioIncumbent::new(incumbent).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    control
        .register(poll.registry(), Token(1), Token(2))
        .unwrap();
    let mut supervisor = UnixStream::connect(control_path).unwrap();
    supervisor.set_nonblocking(true).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    let until = Instant::now() + BOUND;
    loop {
        assert!(Instant::now() < until, "no Hello within {BOUND:?}");
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            // epoll_wait is not restarted after a stop and continue.
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        }
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        control.handle_timeout(poll.registry());
        while control.poll_event().is_some() {}
        let n = match supervisor.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("reading the Hello: {e}"),
        };
        if let Some(got) = hello(&mut decoder, &buf[..n]) {
            return got;
        }
    }
}

#[test]
fn mio_new_keeps_the_build_id_and_the_config() {
    let dir = TempDir::new("mio-settings");
    let got = mio_hello(dir.incumbent(), &dir.control());
    assert_eq!(got, (BUILD_ID.to_vec(), ANNOUNCED));
}

#[test]
fn mio_survives_a_backlog_of_connections_that_closed() {
    // A local user queues a full backlog of connections on the control
    // socket and closes them all before the incumbent gets to them. Each
    // becomes a session that ends at its first write; the next is accepted
    // after it. Done by recursion, that took a stack frame chain per
    // connection and overflowed (seen as a crashed daemon); on a thread
    // with a small stack it fails at once.
    let dir = TempDir::new("mio-backlog");
    let control_path = dir.control();
    let incumbent = dir.incumbent();
    let closed: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&control_path).unwrap())
        .collect();
    drop(closed);
    // Then a real supervisor connects: it must get the Hello.
    let served = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || mio_hello(incumbent, &control_path))
        .unwrap();
    served.join().expect("the incumbent served on");
}

/// No hook is asked for: the test supervisor only reads the `Hello`.
struct NoHooks;

impl AsyncDrainable for NoHooks {
    async fn drain(
        &self,
        _deadline: Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        unreachable!("no handoff is started")
    }
    async fn seal(&self) -> Result<SealReport, HookError> {
        unreachable!("no handoff is started")
    }
    async fn resume_after_abort(&self) -> Result<(), HookError> {
        unreachable!("no handoff is started")
    }
}

#[test]
fn smol_serve_keeps_the_build_id_and_the_config() {
    let dir = TempDir::new("smol-settings");
    let incumbent = dir.incumbent();
    let serving = async {
        let end = handoff_smol::serve(incumbent, &NoHooks).await;
        panic!("serve returned without a handoff: {end:?}");
    };
    let supervisor = async {
        let mut stream = Async::<UnixStream>::connect(dir.control()).await.unwrap();
        let mut decoder: FrameDecoder = FrameDecoder::new();
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if let Some(got) = hello(&mut decoder, &buf[..n]) {
                return got;
            }
        }
    };
    let bounded = async {
        Timer::after(BOUND).await;
        panic!("no Hello within {BOUND:?}");
    };
    let got = async_io::block_on(supervisor.or(serving).or(bounded));
    assert_eq!(got, (BUILD_ID.to_vec(), ANNOUNCED));
}

#[test]
fn tokio_serve_keeps_the_build_id_and_the_config() {
    use tokio::io::AsyncReadExt as _;
    let dir = TempDir::new("tokio-settings");
    let incumbent = dir.incumbent();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let supervisor = async {
            let mut stream = tokio::net::UnixStream::connect(dir.control())
                .await
                .unwrap();
            let mut decoder: FrameDecoder = FrameDecoder::new();
            let mut buf = [0u8; 512];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if let Some(got) = hello(&mut decoder, &buf[..n]) {
                    return got;
                }
            }
        };
        tokio::select! {
            got = supervisor => got,
            end = handoff_tokio::serve(incumbent, &NoHooks) => {
                panic!("serve returned without a handoff: {end:?}")
            }
            _ = tokio::time::sleep(BOUND) => panic!("no Hello within {BOUND:?}"),
        }
    });
    assert_eq!(got, (BUILD_ID.to_vec(), ANNOUNCED));
}

/// A daemon whose drain hook panics; it counts the resumes that follow.
#[derive(Default)]
struct PanickingDrain {
    resumed: std::sync::atomic::AtomicU32,
}

impl PanickingDrain {
    fn resume(&self) -> Result<(), HookError> {
        self.resumed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

impl Drainable for PanickingDrain {
    fn drain(
        &self,
        _deadline: Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        panic!("a bug in the drain hook (on purpose)")
    }
    fn seal(&self, _progress: &SealProgress) -> Result<SealReport, HookError> {
        unreachable!("the drain never finishes")
    }
    fn resume_after_abort(&self) -> Result<(), HookError> {
        self.resume()
    }
}

impl AsyncDrainable for PanickingDrain {
    async fn drain(
        &self,
        _deadline: Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        panic!("a bug in the drain hook (on purpose)")
    }
    async fn seal(&self) -> Result<SealReport, HookError> {
        unreachable!("the drain never finishes")
    }
    async fn resume_after_abort(&self) -> Result<(), HookError> {
        self.resume()
    }
}

/// Plays a supervisor up to `PrepareHandoff` and reads until the incumbent
/// closes the session.
fn prepare_and_wait_for_the_end(dir: &TempDir) {
    let mut s = UnixStream::connect(dir.control()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let id = HandoffId::from_bytes([7; 16]);
    let mut out = [0u8; 128];
    for msg in [
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        Message::PrepareHandoff {
            handoff_id: id,
            successor_pid: 1,
            deadline_ms: 60_000,
            drain_grace_ms: 30_000,
        },
    ] {
        let n = encode_frame(1, &msg, &mut out).unwrap();
        s.write_all(&out[..n]).unwrap();
    }
    let mut sink = [0u8; 256];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            // Not restarted after a stop and continue, as it has a timeout.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the session did not end within {BOUND:?}: {e}"),
        }
    }
}

fn a_panicking_drain_is_a_failed_drain(tag: &str, serve: fn(Incumbent, &PanickingDrain)) {
    let dir = TempDir::new(tag);
    let incumbent = dir.incumbent();
    let daemon = std::sync::Arc::new(PanickingDrain::default());
    let (ended_tx, ended) = mpsc::channel();
    let d = daemon.clone();
    std::thread::spawn(move || {
        // Whatever way serve ends (it should not), the test hears of it.
        let _guard = Ended(ended_tx);
        serve(incumbent, &d);
    });
    prepare_and_wait_for_the_end(&dir);
    // Still reachable: the next supervisor gets a Hello.
    let mut s = UnixStream::connect(dir.control()).expect("the incumbent still listens");
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    loop {
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("a Hello from the incumbent"),
        };
        if hello(&mut decoder, &buf[..n]).is_some() {
            break;
        }
    }
    assert!(
        ended.try_recv().is_err(),
        "serve ended after the hook panicked"
    );
    assert_eq!(
        daemon.resumed.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the daemon was resumed once"
    );
    // Still the writer: nobody else can take the lock.
    assert!(
        DataDirLock::acquire(&dir.0.join("data")).is_err(),
        "the data-dir lock was let go"
    );
}

/// Tells the test when the serving thread ends, even by a panic.
struct Ended(mpsc::Sender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// The std adapter serving `daemon` until it ends (how, on stderr).
fn serve_std<D: Drainable>(incumbent: Incumbent, daemon: &D) {
    let end = incumbent.serve(daemon);
    eprintln!("std serve ended: {end:?}");
}

/// The smol adapter serving `daemon` until it ends (how, on stderr).
fn serve_smol<D: AsyncDrainable>(incumbent: Incumbent, daemon: &D) {
    let end = async_io::block_on(handoff_smol::serve(incumbent, daemon));
    eprintln!("smol serve ended: {end:?}");
}

/// The tokio adapter serving `daemon` until it ends (how, on stderr), on
/// the multi-thread runtime (its I/O and timers on the workers).
fn serve_tokio<D: AsyncDrainable>(incumbent: Incumbent, daemon: &D) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let end = rt.block_on(handoff_tokio::serve(incumbent, daemon));
    eprintln!("tokio serve ended: {end:?}");
}

#[test]
fn tokio_a_panicking_hook_is_a_failed_hook() {
    a_panicking_drain_is_a_failed_drain("tokio-panic", serve_tokio);
}

#[test]
fn std_a_panicking_hook_is_a_failed_hook() {
    a_panicking_drain_is_a_failed_drain("std-panic", serve_std);
}

#[test]
fn smol_a_panicking_hook_is_a_failed_hook() {
    a_panicking_drain_is_a_failed_drain("smol-panic", serve_smol);
}

/// A daemon whose hooks all succeed at once; it says when it resumed.
struct Prompt(std::sync::Mutex<mpsc::Sender<()>>);

impl Prompt {
    fn resumed(&self) -> Result<(), HookError> {
        let _ = self.0.lock().unwrap().send(());
        Ok(())
    }
}

impl Drainable for Prompt {
    fn drain(
        &self,
        _deadline: Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        Ok(DrainReport::default())
    }
    fn seal(&self, _progress: &SealProgress) -> Result<SealReport, HookError> {
        Ok(SealReport::default())
    }
    fn resume_after_abort(&self) -> Result<(), HookError> {
        self.resumed()
    }
}

impl AsyncDrainable for Prompt {
    async fn drain(
        &self,
        _deadline: Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        Ok(DrainReport::default())
    }
    async fn seal(&self) -> Result<SealReport, HookError> {
        Ok(SealReport::default())
    }
    async fn resume_after_abort(&self) -> Result<(), HookError> {
        self.resumed()
    }
}

/// Reads frames from the incumbent until one of `kind` arrives.
fn expect(s: &mut UnixStream, decoder: &mut FrameDecoder, kind: handoff_core::MessageKind) {
    let mut buf = [0u8; 512];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            let (used, frame) = decoder.decode(&pending);
            let got = frame
                .expect("a well-formed frame")
                .map(|f| f.message.kind());
            pending.drain(..used);
            if got == Some(kind) {
                return;
            }
        }
        let n = match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("the incumbent answers"),
        };
        assert!(n > 0, "the session closed before {kind:?}");
        pending.extend_from_slice(&buf[..n]);
    }
}

fn send(s: &mut UnixStream, msg: Message<'_>) {
    let mut out = [0u8; 256];
    let n = encode_frame(1, &msg, &mut out).unwrap();
    s.write_all(&out[..n]).unwrap();
}

/// Serves `incumbent` with [`Prompt`] on a thread, then plays a supervisor
/// up to `Drained` of a handoff with `deadline_ms`. Returns its end of the
/// session, the decoder of what it reads, and the resume signal.
fn drained(
    dir: &TempDir,
    incumbent: Incumbent,
    serve: fn(Incumbent, &Prompt),
    id: HandoffId,
    deadline_ms: u64,
) -> (UnixStream, FrameDecoder, mpsc::Receiver<()>) {
    let (resumed_tx, resumed) = mpsc::channel();
    std::thread::spawn(move || serve(incumbent, &Prompt(std::sync::Mutex::new(resumed_tx))));
    let mut s = UnixStream::connect(dir.control()).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    expect(&mut s, &mut decoder, handoff_core::MessageKind::Hello);
    send(
        &mut s,
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
    );
    send(
        &mut s,
        Message::PrepareHandoff {
            handoff_id: id,
            successor_pid: 1,
            deadline_ms,
            drain_grace_ms: deadline_ms * 2 / 3,
        },
    );
    expect(&mut s, &mut decoder, handoff_core::MessageKind::Drained);
    (s, decoder, resumed)
}

fn the_path_is_taken_back_after_an_aborted_seal(tag: &str, serve: fn(Incumbent, &Prompt)) {
    use handoff_core::MessageKind;
    let dir = TempDir::new(tag);
    let id = HandoffId::from_bytes([9; 16]);
    // A supervisor takes the handoff as far as the seal.
    let (mut s, mut decoder, resumed) = drained(&dir, dir.incumbent(), serve, id, 60_000);
    send(&mut s, Message::SealRequest { handoff_id: id });
    expect(&mut s, &mut decoder, MessageKind::SealComplete);

    // The successor's Ready crossed the abort: it took the lock, bound the
    // path, and was stopped.
    let successor_lock = DataDirLock::acquire(&dir.0.join("data")).unwrap();
    drop(handoff_std::os::control::bind_control_socket(&dir.control()).unwrap());
    drop(successor_lock);

    // The supervisor tells the incumbent to resume; it takes the lock back
    // first, then resumes the daemon.
    send(&mut s, Message::ResumeAfterAbort { handoff_id: id });
    resumed.recv_timeout(BOUND).expect("the daemon resumes");

    // The next supervisor reaches the incumbent at the path again.
    let mut next = UnixStream::connect(dir.control()).expect("the path names a live socket");
    next.set_read_timeout(Some(BOUND)).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    expect(&mut next, &mut decoder, MessageKind::Hello);
    assert!(
        DataDirLock::acquire(&dir.0.join("data")).is_err(),
        "the incumbent holds the lock again"
    );
}

#[test]
fn tokio_takes_its_control_path_back_after_an_aborted_seal() {
    the_path_is_taken_back_after_an_aborted_seal("tokio-reclaim", serve_tokio);
}

#[test]
fn std_takes_its_control_path_back_after_an_aborted_seal() {
    the_path_is_taken_back_after_an_aborted_seal("std-reclaim", serve_std);
}

#[test]
fn smol_takes_its_control_path_back_after_an_aborted_seal() {
    the_path_is_taken_back_after_an_aborted_seal("smol-reclaim", serve_smol);
}

#[test]
fn mio_takes_its_control_path_back_after_an_aborted_seal() {
    the_path_is_taken_back_after_an_aborted_seal("mio-reclaim", serve_mio);
}

fn a_heartbeat_flood_does_not_hold_off_the_deadline(tag: &str, serve: fn(Incumbent, &Prompt)) {
    let dir = TempDir::new(tag);
    let incumbent = dir.incumbent().with_config(IncumbentConfig {
        deadline_slack: Duration::from_millis(100),
        ..IncumbentConfig::default()
    });
    let id = HandoffId::from_bytes([5; 16]);
    let (s, _decoder, resumed) = drained(&dir, incumbent, serve, id, 300);

    // No SealRequest ever comes; heartbeats do, without a pause.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (mut s, stop) = (s.try_clone().unwrap(), stop.clone());
        std::thread::spawn(move || {
            // Many frames per write, so the socket is never found empty.
            let mut frame = [0u8; 32];
            let n = encode_frame(1, &Message::Heartbeat { ts_ms: 1 }, &mut frame).unwrap();
            let batch: Vec<u8> = frame[..n].repeat(4096);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(&batch).is_err() {
                    return;
                }
            }
        })
    };
    // Past deadline_ms and its slack, the incumbent resumes by itself.
    let outcome = resumed.recv_timeout(BOUND);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(s);
    flood.join().unwrap();
    outcome.expect("the incumbent resumes at its deadline despite the flood");
}

#[test]
fn tokio_a_heartbeat_flood_does_not_hold_off_the_deadline() {
    a_heartbeat_flood_does_not_hold_off_the_deadline("tokio-flood", serve_tokio);
}

#[test]
fn std_a_heartbeat_flood_does_not_hold_off_the_deadline() {
    a_heartbeat_flood_does_not_hold_off_the_deadline("std-flood", serve_std);
}

#[test]
fn smol_a_heartbeat_flood_does_not_hold_off_the_deadline() {
    a_heartbeat_flood_does_not_hold_off_the_deadline("smol-flood", serve_smol);
}

/// The mio adapter serving `daemon` from a loop that calls
/// `handle_timeout` only when `poll` found nothing to do: the deadlines
/// must still run while events never stop coming.
fn serve_mio(incumbent: Incumbent, daemon: &Prompt) {
    use handoff_mio::IncumbentEvent;
    let mut control = MioIncumbent::new(incumbent).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    control
        .register(poll.registry(), Token(1), Token(2))
        .unwrap();
    while !control.is_done() {
        let timeout = control
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        }
        if events.is_empty() {
            control.handle_timeout(poll.registry());
        }
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        while let Some(event) = control.poll_event() {
            match event {
                IncumbentEvent::Drain { .. } => {
                    control.drained(poll.registry(), DrainReport::default())
                }
                IncumbentEvent::Seal => control.sealed(poll.registry(), &SealReport::default()),
                IncumbentEvent::Resume => {
                    let _ = daemon.resumed();
                    control.resumed(poll.registry());
                }
                IncumbentEvent::SessionEnded(end) => eprintln!("mio session ended: {end:?}"),
                IncumbentEvent::ControlSocketFailed(e) => panic!("control socket: {e}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn mio_a_heartbeat_flood_does_not_hold_off_the_deadline() {
    a_heartbeat_flood_does_not_hold_off_the_deadline("mio-flood", serve_mio);
}
