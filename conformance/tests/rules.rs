//! The conformance suite's per-rule scenarios: each rule the drivers keep
//! for every adapter, provoked by a peer this test plays (a supervisor, an
//! incumbent) against a real daemon or supervisor of each runtime in the
//! role the rule is about. The daemons are this test binary re-executed
//! (see `support::daemon`).
//!
//! | rule | roles here |
//! |---|---|
//! | a peer that stops reading is hung up on | incumbent, successor, supervisor |
//! | a peer that never stops sending does not hold off a deadline | successor, supervisor (the incumbent's: `incumbent_adapters.rs`) |
//! | a `Begin` that came in one read with `HelloAck` is acted on at once | successor |
//! | one session at a time | incumbent |
//! | a supervisor of another uid gets nothing | incumbent |
//!
//! The bounded connect and the `Abort` queued before `Ready` are in
//! `conformance.rs` (every combination of runtimes), the path taken back
//! after a failed seal in `incumbent_adapters.rs`, and the killed
//! unwatchable successor in `handoff-driver`'s own tests (a runtime's
//! registration cannot be made to fail from outside).

mod support;

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_core::{
    Capabilities, FrameDecoder, HandoffId, Message, MessageKind, Side, SupervisorConfig,
    encode_frame,
};
use handoff_std::os::lock::DataDirLock;
use handoff_std::os::process::poll_readable;
use handoff_std::os::spawn::PassedListener;
use handoff_std::{AbortReason, Supervisor, spawn_for_handoff};
use support::{BOUND, Rig, Runtime, TempDir, run_handoff, successor_spec, wait_exit};

/// The entry point of every daemon process the suite starts.
#[test]
#[ignore = "runs only as the daemon the suite starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
}

const ID: HandoffId = HandoffId::from_bytes([0x42; 16]);

fn frame(msg: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let n = encode_frame(1, msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn heartbeat() -> Vec<u8> {
    frame(&Message::Heartbeat { ts_ms: 1 })
}

fn send(s: &mut UnixStream, msg: Message<'_>) {
    s.write_all(&frame(&msg)).unwrap();
}

/// Reads until one whole frame is in, within [`BOUND`]; its kind.
fn next_kind(s: &mut UnixStream) -> MessageKind {
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut byte = [0u8; 1];
    // A byte at a time: nothing past the frame is taken off the socket.
    loop {
        let n = match s.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => r.expect("a frame within the bound"),
        };
        assert_eq!(n, 1, "the peer closed before a whole frame");
        let (_, got) = decoder.decode(&byte);
        if let Some(f) = got.expect("a well-formed frame") {
            return f.message.kind();
        }
    }
}

/// The frames of a peer that says `Hello` as `side`, with this process's
/// pid (the one the kernel reports for its socket).
fn hello(side: Side) -> Message<'static> {
    Message::Hello {
        role: side,
        pid: std::process::id(),
        build_id: b"rules",
        proto_min: 1,
        proto_max: 1,
        capabilities: Capabilities::NONE,
    }
}

/// Keeps writing `chunk` every `every` (as a live peer heartbeats) and
/// never reads, until a write fails because the other side hung up; how
/// long that took, or `None` past [`BOUND`].
fn write_until_hung_up(s: &UnixStream, chunk: &[u8], every: Duration) -> Option<Duration> {
    // A write must never wait for long: the other side may have stopped
    // reading too.
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < BOUND {
        match (&*s).write_all(chunk) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(t0.elapsed()),
        }
        if !every.is_zero() {
            // The pace of a peer's heartbeats, not a wait for an event.
            std::thread::sleep(every);
        }
    }
    None
}

// ------------------------------------------------- a peer that stops reading

fn incumbent_hangs_up_on_a_supervisor_that_stops_reading(rt: Runtime) {
    // A slow drain with fast heartbeats: the incumbent writes a frame every
    // 2 ms to a supervisor that reads none of them, but heartbeats itself.
    let rig = Rig::start(
        &format!("stall-o-{}", rt.name()),
        rt,
        "drain-ms=9000,heartbeat-ms=2",
    );
    assert_eq!(rig.request("INC"), "OK 1");
    let mut s = UnixStream::connect(&rig.ctl).unwrap();
    assert_eq!(next_kind(&mut s), MessageKind::Hello);
    send(
        &mut s,
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: ID,
        },
    );
    send(
        &mut s,
        Message::PrepareHandoff {
            handoff_id: ID,
            successor_pid: std::process::id(),
            deadline_ms: 120_000,
            drain_grace_ms: 100_000,
        },
    );
    let took = write_until_hung_up(&s, &heartbeat(), Duration::from_millis(100));
    assert!(
        took.is_some(),
        "{rt:?}: the incumbent kept a session whose supervisor reads nothing"
    );
    // It undoes the handoff (once the drain hook returns) and serves on.
    assert_eq!(rig.request("INC"), "OK 2", "{rt:?}");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent.id()), "{rt:?}");
}

/// A successor of `rt` spawned by this test, which plays its supervisor:
/// the control socket, the process, and what it needs kept alive.
struct Spawned {
    control: UnixStream,
    child: handoff_std::os::spawn::Child,
    _listener: TcpListener,
    dir: TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_successor(tag: &str, rt: Runtime, flags: &str) -> Spawned {
    let dir = TempDir::new(tag);
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let spec = successor_spec(rt, &dir.0.join("ctl.sock"), &data, flags);
    let (control, child) = spawn_for_handoff(
        &spec,
        &[PassedListener {
            name: "main",
            fd: listener.as_fd(),
        }],
    )
    .unwrap();
    Spawned {
        control,
        child,
        _listener: listener,
        dir,
    }
}

/// Plays the supervisor up to `Begin`.
fn begin(s: &mut UnixStream) {
    assert_eq!(next_kind(s), MessageKind::Hello);
    send(
        s,
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: ID,
        },
    );
    s.write_all(&heartbeat()).unwrap();
    send(s, Message::Begin { handoff_id: ID });
}

fn successor_hangs_up_on_a_supervisor_that_stops_reading(rt: Runtime) {
    // A slow start-up with fast heartbeats, to a supervisor that reads none.
    let mut n = spawn_successor(
        &format!("stall-n-{}", rt.name()),
        rt,
        "open-ms=60000,heartbeat-ms=2",
    );
    begin(&mut n.control);
    let took = write_until_hung_up(&n.control, &heartbeat(), Duration::from_millis(100));
    assert!(
        took.is_some(),
        "{rt:?}: the successor kept writing to a supervisor that reads nothing"
    );
}

/// `Begin` in the same read as `HelloAck` (the supervisor was quick, the
/// successor slow to read its answer): the successor must take the lock
/// and announce at once. The blocking adapter once left the `Begun` report
/// of that lock unread until the next heartbeat was due, seconds later.
fn successor_begins_at_once_when_begin_comes_with_the_hello_ack(rt: Runtime) {
    // Heartbeats far apart, so a missed wake-up would show as a wait of
    // seconds.
    let mut n = spawn_successor(
        &format!("early-begin-{}", rt.name()),
        rt,
        "heartbeat-ms=10000",
    );
    assert_eq!(next_kind(&mut n.control), MessageKind::Hello);
    let mut both = frame(&Message::HelloAck {
        proto_version_chosen: 1,
        handoff_id: ID,
    });
    both.extend(frame(&Message::Begin { handoff_id: ID }));
    // One write: the successor's first read takes both frames.
    n.control.write_all(&both).unwrap();
    let started = Instant::now();
    loop {
        match next_kind(&mut n.control) {
            MessageKind::Heartbeat => continue,
            kind => {
                assert_eq!(kind, MessageKind::Ready, "{rt:?}");
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "{rt:?}: Ready took {took:?} after a Begin that came with HelloAck"
    );
}

/// A fake incumbent at a fresh control path, and a supervisor of `rt` for
/// it whose successor is of `succ`.
struct FakeIncumbent {
    listener: UnixListener,
    sup: Arc<Supervisor>,
    dir: TempDir,
    _tcp: TcpListener,
}

fn fake_incumbent(tag: &str, config: SupervisorConfig) -> FakeIncumbent {
    let dir = TempDir::new(tag);
    let ctl = dir.0.join("ctl.sock");
    let listener = UnixListener::bind(&ctl).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let sup = Arc::new(
        Supervisor::new(&ctl)
            .unwrap()
            .with_listener("main", tcp.try_clone().unwrap())
            .unwrap()
            .with_config(config),
    );
    FakeIncumbent {
        listener,
        sup,
        dir,
        _tcp: tcp,
    }
}

/// Runs a handoff of `sup` on a thread; its outcome comes on the channel.
fn handoff_in_background(
    rt: Runtime,
    sup: &Arc<Supervisor>,
    spec: handoff_std::SpawnSpec,
) -> std::sync::mpsc::Receiver<handoff_std::HandoffOutcome> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sup = sup.clone();
    std::thread::spawn(move || {
        let _ = tx.send(run_handoff(rt, &sup, spec));
    });
    rx
}

fn supervisor_hangs_up_on_an_incumbent_that_stops_reading(rt: Runtime) {
    let fake = fake_incumbent(
        &format!("stall-s-{}", rt.name()),
        SupervisorConfig {
            heartbeat_interval: Duration::from_millis(2),
            ..SupervisorConfig::default()
        },
    );
    // The successor takes its time to say `Hello`: meanwhile the
    // supervisor heartbeats the incumbent (once `PrepareHandoff` is out it
    // stops, the incumbent being busy).
    let mut spec = successor_spec(
        Runtime::Std,
        &fake.dir.0.join("ctl.sock"),
        &fake.dir.0.join("data"),
        "startup-ms=60000",
    );
    spec.deadline = Duration::from_secs(120);
    spec.startup_budget = Duration::from_secs(100);
    let handoff = handoff_in_background(rt, &fake.sup, spec);
    let (mut s, _) = fake.listener.accept().unwrap();
    send(&mut s, hello(Side::Incumbent));
    // It heartbeats, so it is alive, but reads nothing: the supervisor's
    // `HelloAck` and heartbeats every 2 ms pile up.
    let took = write_until_hung_up(&s, &heartbeat(), Duration::from_millis(100));
    let outcome = handoff
        .recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{rt:?}: the handoff did not end"));
    assert!(
        took.is_some(),
        "{rt:?}: the supervisor kept writing to an incumbent that reads nothing"
    );
    assert!(
        matches!(outcome.result, Err(AbortReason::IncumbentClosed { .. })),
        "{rt:?}: {:?}",
        outcome.result
    );
    if let Some(pid) = outcome.successor_pid {
        assert!(
            support::wait_gone(pid, BOUND),
            "{rt:?}: the successor runs on"
        );
    }
}

// ------------------------------- a peer that never stops sending

/// Frames for one write of a flood: many, so the socket is never empty.
fn flood() -> Vec<u8> {
    heartbeat().repeat(2048)
}

fn supervisor_keeps_the_drain_deadline_through_a_flood(rt: Runtime) {
    let fake = fake_incumbent(
        &format!("flood-s-{}", rt.name()),
        SupervisorConfig::default(),
    );
    let mut spec = successor_spec(
        Runtime::Std,
        &fake.dir.0.join("ctl.sock"),
        &fake.dir.0.join("data"),
        "",
    );
    spec.deadline = Duration::from_secs(120);
    spec.drain_grace = Duration::from_secs(1);
    let handoff = handoff_in_background(rt, &fake.sup, spec);
    let (mut s, _) = fake.listener.accept().unwrap();
    send(&mut s, hello(Side::Incumbent));
    // Never `Drained`; heartbeats without a pause instead.
    let took = write_until_hung_up(&s, &flood(), Duration::ZERO);
    let outcome = handoff
        .recv_timeout(BOUND)
        .unwrap_or_else(|_| panic!("{rt:?}: the handoff did not end"));
    assert!(took.is_some(), "{rt:?}: the flood held the supervisor off");
    assert_eq!(outcome.result, Err(AbortReason::DrainTimeout), "{rt:?}");
}

fn successor_keeps_its_lock_retries_through_a_flood(rt: Runtime) {
    let mut n = spawn_successor(&format!("flood-n-{}", rt.name()), rt, "");
    // The lock is held (by this process): the successor retries it for
    // two seconds and then gives up, whatever the supervisor sends.
    let _held = DataDirLock::acquire(&n.dir.0.join("data")).unwrap();
    begin(&mut n.control);
    let took = write_until_hung_up(&n.control, &flood(), Duration::ZERO);
    assert!(took.is_some(), "{rt:?}: the flood held the successor off");
    assert!(
        wait_exit(&mut n.child, BOUND).is_some(),
        "{rt:?}: a successor without the lock exits"
    );
}

// ------------------------------------------------ one session at a time

fn incumbent_serves_one_session_at_a_time(rt: Runtime) {
    let rig = Rig::start(&format!("one-{}", rt.name()), rt, "");
    let mut first = UnixStream::connect(&rig.ctl).unwrap();
    assert_eq!(next_kind(&mut first), MessageKind::Hello);
    send(
        &mut first,
        Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: ID,
        },
    );
    let second = UnixStream::connect(&rig.ctl).unwrap();
    // While the first session is open the second waits in the backlog: no
    // `Hello` comes (a bounded look for something that must not happen).
    let early = poll_readable(&[second.as_fd()], Some(Duration::from_millis(500))).unwrap();
    assert_eq!(early, vec![false], "{rt:?}: two sessions at once");
    drop(first);
    let mut second = second;
    assert_eq!(
        next_kind(&mut second),
        MessageKind::Hello,
        "{rt:?}: the next session once the first ended"
    );
    assert_eq!(rig.request("INC"), "OK 1", "{rt:?}");
}

// ------------------------------------------------ peer credentials

/// `nobody`, whom no incumbent here permits.
const STRANGER: u32 = 65534;

fn incumbent_sends_nothing_to_another_uid(rt: Runtime) {
    let rig = Rig::start(&format!("uid-{}", rt.name()), rt, "");
    // Let the kernel pass the connect through the path, so that only the
    // incumbent's own check stands between the stranger and a session.
    for p in [&rig.dir.0, &rig.ctl] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let probe = |uid: u32| -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "daemon_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--quiet",
            ])
            .env("HANDOFF_DAEMON_ARGS", probe_args(&rig.ctl))
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stranger = probe(STRANGER);
    assert!(
        stranger.contains("probe read 0 bytes"),
        "{rt:?}: a supervisor of uid {STRANGER}: {stranger}"
    );
    let root = probe(0);
    assert!(
        !root.contains("probe read 0 bytes") && root.contains("probe read"),
        "{rt:?}: root: {root}"
    );
    assert_eq!(rig.request("INC"), "OK 1", "{rt:?}");
}

fn probe_args(ctl: &Path) -> String {
    format!(
        "probe --control-socket {} --data-dir /nonexistent",
        ctl.display()
    )
}

macro_rules! per_runtime {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                use super::*;
                #[test]
                fn std() {
                    super::$scenario(Runtime::Std)
                }
                #[test]
                fn mio() {
                    super::$scenario(Runtime::Mio)
                }
                #[test]
                fn smol() {
                    super::$scenario(Runtime::Smol)
                }
                #[test]
                fn tokio() {
                    super::$scenario(Runtime::Tokio)
                }
            }
        )*
    };
}

per_runtime!(
    incumbent_hangs_up_on_a_supervisor_that_stops_reading,
    successor_hangs_up_on_a_supervisor_that_stops_reading,
    successor_begins_at_once_when_begin_comes_with_the_hello_ack,
    supervisor_hangs_up_on_an_incumbent_that_stops_reading,
    supervisor_keeps_the_drain_deadline_through_a_flood,
    successor_keeps_its_lock_retries_through_a_flood,
    incumbent_serves_one_session_at_a_time,
    incumbent_sends_nothing_to_another_uid,
);
