//! What a daemon sets on a handoff-std `Incumbent` still holds once an
//! adapter takes it over (`MioIncumbent::from_std`, `handoff_smol::serve`):
//! a supervisor that connects reads the build id and the capabilities of the
//! config in the `Hello`. (Both adapters are tested here, where the
//! cross-adapter conformance suite lives.)

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, FutureExt};
use handoff_core::{Capabilities, FrameDecoder, Message};
use handoff_mio::MioIncumbent;
use handoff_smol::AsyncDrainable;
use handoff_std::{DataDirLock, DrainReport, HookError, Incumbent, IncumbentConfig, SealOutput};
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
