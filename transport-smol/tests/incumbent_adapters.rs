//! The incumbent side of the adapters against a test supervisor speaking
//! over a real control socket (here, beside the cross-adapter conformance
//! suite):
//! - what a daemon sets on a handoff-std `Incumbent` still holds once an
//!   adapter takes it over (`MioIncumbent::from_std`, `handoff_smol::serve`):
//!   the build id and the capabilities of the config are in the `Hello`;
//! - a hook that panics is a failed hook in the std and smol adapters: the
//!   daemon resumes, keeps its lock and stays reachable for handoffs.

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
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, IncumbentConfig, SealOutput,
    SealProgress,
};
use mio::{Events, Poll, Token};

const BOUND: Duration = Duration::from_secs(10);
const BUILD_ID: &[u8] = b"build-7";
const OFFERED: Capabilities = Capabilities::RECLAIM_LISTENERS;

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

#[test]
fn mio_from_std_keeps_the_build_id_and_the_config() {
    let dir = TempDir::new("mio-settings");
    let mut control = MioIncumbent::from_std(dir.incumbent()).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    control
        .register(poll.registry(), Token(1), Token(2))
        .unwrap();

    let mut supervisor = UnixStream::connect(dir.control()).unwrap();
    supervisor.set_nonblocking(true).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    let until = Instant::now() + BOUND;
    let got = loop {
        assert!(Instant::now() < until, "no Hello within {BOUND:?}");
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        control.handle_timeout(poll.registry());
        let n = match supervisor.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("reading the Hello: {e}"),
        };
        if let Some(got) = hello(&mut decoder, &buf[..n]) {
            break got;
        }
    };
    assert_eq!(got, (BUILD_ID.to_vec(), OFFERED));
}

/// No hook is asked for: the test supervisor only reads the `Hello`.
struct NoHooks;

impl AsyncDrainable for NoHooks {
    async fn drain(&self, _deadline: Instant) -> Result<DrainReport, HookError> {
        unreachable!("no handoff is started")
    }
    async fn seal(&self) -> Result<SealOutput, HookError> {
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
    assert_eq!(got, (BUILD_ID.to_vec(), OFFERED));
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
    fn drain(&self, _deadline: Instant) -> Result<DrainReport, HookError> {
        panic!("a bug in the drain hook (on purpose)")
    }
    fn seal(&self, _progress: &SealProgress) -> Result<SealOutput, HookError> {
        unreachable!("the drain never finishes")
    }
    fn resume_after_abort(&self) -> Result<(), HookError> {
        self.resume()
    }
}

impl AsyncDrainable for PanickingDrain {
    async fn drain(&self, _deadline: Instant) -> Result<DrainReport, HookError> {
        panic!("a bug in the drain hook (on purpose)")
    }
    async fn seal(&self) -> Result<SealOutput, HookError> {
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
        let n = s.read(&mut buf).expect("a Hello from the incumbent");
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

#[test]
fn std_a_panicking_hook_is_a_failed_hook() {
    a_panicking_drain_is_a_failed_drain("std-panic", |incumbent, daemon| {
        let end = incumbent.serve(daemon);
        panic!("serve returned: {end:?}");
    });
}

#[test]
fn smol_a_panicking_hook_is_a_failed_hook() {
    a_panicking_drain_is_a_failed_drain("smol-panic", |incumbent, daemon| {
        let end = async_io::block_on(handoff_smol::serve(incumbent, daemon));
        panic!("serve returned: {end:?}");
    });
}
