//! What a daemon sets on a handoff-std `Incumbent` still holds once
//! `MioIncumbent::from_std` has taken it over: a supervisor that connects
//! reads the build id and the capabilities of the config in the `Hello`.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use handoff_core::{Capabilities, FrameDecoder, Message};
use handoff_mio::MioIncumbent;
use handoff_std::{DataDirLock, Incumbent, IncumbentConfig};
use mio::{Events, Poll, Token};

const BOUND: Duration = Duration::from_secs(10);

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn from_std_keeps_the_build_id_and_the_config() {
    let dir = TempDir(std::env::temp_dir().join(format!("hm-from-std-{}", std::process::id())));
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
    let mut control = MioIncumbent::from_std(incumbent).unwrap();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    control
        .register(poll.registry(), Token(1), Token(2))
        .unwrap();

    let mut supervisor = UnixStream::connect(&ctl).unwrap();
    supervisor.set_nonblocking(true).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 512];
    let until = Instant::now() + BOUND;
    let (build_id, capabilities) = loop {
        assert!(Instant::now() < until, "no Hello within {BOUND:?}");
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        control.handle_timeout(poll.registry());
        let n = match supervisor.read(&mut buf) {
            Ok(0) => panic!("the incumbent closed the session before its Hello"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("reading the Hello: {e}"),
        };
        // The decoder keeps a partial frame; the Hello is the first frame.
        let (_, frame) = decoder.decode(&buf[..n]);
        if let Some(frame) = frame.expect("a well-formed frame") {
            match frame.message {
                Message::Hello {
                    build_id,
                    capabilities,
                    ..
                } => break (build_id.to_vec(), capabilities),
                other => panic!("expected Hello, got {other:?}"),
            }
        }
    };
    assert_eq!(build_id, b"build-7");
    assert_eq!(capabilities, offered);
}
