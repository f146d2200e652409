//! What a daemon sets on a handoff-std `Incumbent` still holds under
//! `handoff_smol::serve`: a supervisor that connects reads the build id and
//! the capabilities of the config in the `Hello`.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use futures_lite::{AsyncReadExt, FutureExt};
use handoff_core::{Capabilities, FrameDecoder, Message};
use handoff_smol::AsyncDrainable;
use handoff_std::{DataDirLock, DrainReport, HookError, Incumbent, IncumbentConfig, SealOutput};

const BOUND: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
fn serve_keeps_the_build_id_and_the_config() {
    let dir = TempDir(std::env::temp_dir().join(format!("hs-settings-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let ctl = dir.0.join("ctl.sock");
    let lock = DataDirLock::acquire(&dir.0.join("data")).unwrap();
    let offered = Capabilities::RECLAIM_LISTENERS;
    let incumbent = Incumbent::bind_cold_start(&ctl, lock)
        .unwrap()
        .with_build_id(b"build-7".to_vec())
        .with_config(IncumbentConfig {
            capabilities: offered,
            ..IncumbentConfig::default()
        });

    let serving = async {
        let end = handoff_smol::serve(incumbent, &NoHooks).await;
        panic!("serve returned without a handoff: {end:?}");
    };
    let supervisor = async {
        let mut stream = Async::<UnixStream>::connect(&ctl).await.unwrap();
        let mut decoder: FrameDecoder = FrameDecoder::new();
        let mut buf = [0u8; 512];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the incumbent closed the session before its Hello");
            // The decoder keeps a partial frame; the Hello is the first frame.
            let (_, frame) = decoder.decode(&buf[..n]);
            if let Some(frame) = frame.expect("a well-formed frame") {
                match frame.message {
                    Message::Hello {
                        build_id,
                        capabilities,
                        ..
                    } => return (build_id.to_vec(), capabilities),
                    other => panic!("expected Hello, got {other:?}"),
                }
            }
        }
    };
    let bounded = async {
        Timer::after(BOUND).await;
        panic!("no Hello within {BOUND:?}");
    };
    let (build_id, capabilities) = async_io::block_on(supervisor.or(serving).or(bounded));
    assert_eq!(build_id, b"build-7");
    assert_eq!(capabilities, offered);
}
