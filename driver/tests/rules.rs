//! The driver's rules that no adapter can be made to break from outside,
//! checked with real processes and sockets and an [`Io`] that refuses what
//! a runtime may refuse. (The rules a peer can provoke are checked on every
//! adapter in every role by the conformance suite in
//! `conformance/tests`.)

use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use handoff_core::{AbortReason, Capabilities, Message, Side, SuccessorConfig, encode_frame};
use handoff_driver::{Io, Source, SpawnSpec, SuccessorDriver, Supervisor, SupervisorDriver};
use handoff_os::process::poll_readable;

/// Watches what it is asked, except the sources it refuses.
struct Refusing {
    refuse: Vec<Source>,
    watched: Vec<Source>,
}

impl Io for Refusing {
    fn watch(&mut self, source: Source, _: BorrowedFd<'_>, _: bool) -> io::Result<()> {
        if self.refuse.contains(&source) {
            return Err(io::Error::other("the event loop refused it"));
        }
        if !self.watched.contains(&source) {
            self.watched.push(source);
        }
        Ok(())
    }

    fn unwatch(&mut self, source: Source, _: BorrowedFd<'_>) {
        self.watched.retain(|s| *s != source);
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("handoff-driver-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's children, zombies included, from every thread's list.
fn children() -> Vec<String> {
    let mut all = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            all.extend(list.split_whitespace().map(str::to_owned));
        }
    }
    all
}

fn hello(role: Side) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = encode_frame(
        1,
        &Message::Hello {
            role,
            pid: std::process::id(),
            build_id: b"test",
            proto_min: 1,
            proto_max: 1,
            capabilities: Capabilities::NONE,
        },
        &mut buf,
    )
    .unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn a_successor_whose_socket_cannot_be_watched_is_killed_and_reaped() {
    let dir = TempDir::new("unwatchable");
    let ctl = dir.0.join("ctl.sock");
    // This test plays the incumbent: it says `Hello` and reads on.
    let listener = UnixListener::bind(&ctl).unwrap();
    let incumbent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&hello(Side::Incumbent)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sink = [0u8; 512];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    let sup = Supervisor::new(&ctl).unwrap();
    let mut spec = SpawnSpec::new("/bin/sleep").arg("30");
    spec.deadline = Duration::from_secs(10);
    let mut io = Refusing {
        refuse: vec![Source::Successor],
        watched: Vec::new(),
    };
    let _slot = sup.claim().unwrap();
    let mut driver = SupervisorDriver::new(&sup, spec);
    driver.start(&mut io);
    let t0 = std::time::Instant::now();
    let outcome = loop {
        if let Some(o) = driver.take_outcome() {
            break o;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no outcome");
        // Nothing here waits on readiness: the incumbent's `Hello` is read
        // when it is there, the rest is the driver's timers.
        driver.handle_readable(&mut io, Source::Incumbent);
        driver.handle_timeout(&mut io);
        std::thread::yield_now();
    };
    assert_eq!(outcome.result, Err(AbortReason::SpawnFailed));
    assert_eq!(outcome.successor_pid, None);
    let detail = outcome.detail.unwrap_or_default();
    assert!(detail.contains("it was stopped"), "{detail}");
    // `SIGKILL` takes effect a moment after `kill` returns, so the driver
    // hands the dying child to a reaper thread rather than wait for it:
    // wait, bounded, for that thread to have reaped it.
    let gone = std::time::Instant::now();
    while !children().is_empty() && gone.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        children(),
        Vec::<String>::new(),
        "the successor runs on (or is an unreaped zombie)"
    );
    assert!(!io.watched.contains(&Source::Successor));
    drop(driver);
    incumbent.join().unwrap();
}

#[test]
fn an_over_long_build_id_is_refused_before_anything_is_sent() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut io = Refusing {
        refuse: Vec::new(),
        watched: Vec::new(),
    };
    let long = vec![b'x'; handoff_core::MAX_BUILD_ID_LEN + 1];
    let e = SuccessorDriver::new(&mut io, ours, SuccessorConfig::default(), &long).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("build id"), "{e}");
    // Nothing reached the supervisor, and our end is closed.
    let ready = poll_readable(
        &[std::os::fd::AsFd::as_fd(&theirs)],
        Some(Duration::from_secs(5)),
    );
    assert_eq!(ready.unwrap(), vec![true]);
    assert_eq!((&theirs).read(&mut [0u8; 64]).unwrap(), 0);

    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fits = vec![b'x'; handoff_core::MAX_BUILD_ID_LEN];
    assert!(SuccessorDriver::new(&mut io, ours, SuccessorConfig::default(), &fits).is_ok());
}
