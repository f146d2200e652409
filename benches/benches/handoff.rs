//! Handoff latency and accept gap, ours against the reference, in one run.
//!
//! Two tiny daemons answer `PING` with `PONG` over TCP: `handoff-bench-ours`
//! on `handoff-std` and `handoff-bench-reference` on `beyond-handoff`
//! 0.1.4, with hooks that return at once. Each has its own listener, data
//! directory and control socket, and its own supervisor in this process:
//! `handoff_std::Supervisor` and `handoff::Supervisor`. The run alternates
//! between them, 50 handoffs each (ours, reference, ours, …), timing each
//! `perform_handoff` call.
//!
//! It runs twice. First the protocol alone: no journal, and the data
//! directories and control sockets on tmpfs (`/dev/shm`, unless
//! `HANDOFF_BENCH_DIR` names another directory), so that disk noise cannot
//! drown the difference between the implementations. Then as deployed:
//! each supervisor with a journal (as handoff-supervisor runs with a
//! `journal` configured), data directories and journals on the disk (the
//! temp dir). What each file-system step costs on disk is also measured
//! separately, in the temp dir (`TMPDIR`, else `/tmp`), for both libraries.
//!
//! A client thread connects without pause to the daemon whose turn it is:
//! a new connection, one `PING`, the `PONG`, close. The longest time from
//! the start of `connect` to the answer, over the connections that overlap
//! a handoff, is that handoff's accept gap: connections wait in the
//! kernel's queue from the drain until the successor accepts.
//!
//! The floor is the cost of spawning and starting the successor binary:
//! the bench spawns it in a mode that writes one byte as soon as it knows
//! its role and exits, and times spawn to that byte: through
//! `handoff_std::spawn_for_handoff` (listener and socketpair passed as in a
//! handoff), under the client's load like the handoffs and with the client
//! paused, with a plain `Command::spawn` (client paused), and back to back
//! after the handoffs. The first is the floor the targets use: spawned in
//! the same conditions as the handoffs' successors.
//!
//! Where the time goes: the mean of each phase of our `PhaseTimings`, beside
//! the reference's own phase timings (read from the `tracing` events its
//! supervisor emits), how long each successor's `announce_and_bind` took
//! (the daemons report it), and the file-system steps (data-dir lock,
//! control socket, journal record) of both libraries timed in the temp
//! dir.
//!
//! Also printed: the supervisor's heap allocations per handoff (a counting
//! allocator, this thread only) and the targets.
//!
//! Run with `cargo bench --bench handoff` (`HANDOFF_BENCH_ROUNDS=n` for
//! fewer rounds, `HANDOFF_BENCH_DIR=/tmp` to hand off on the disk). It exits non-zero if a handoff fails, never because a
//! target is missed.

use handoff_std::PerformHandoff;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use handoff_benches::counting::{CountingAlloc, thread_allocations};
use handoff_benches::daemon::{Args, FLOOR_ENV, LISTENER, READY_LINE, TRACE_ENV};
use handoff_benches::echo;
use handoff_benches::machine::{Machine, filesystem_of};
use handoff_benches::stats::{Ratio, Secs, Summary, mean, quantile, verdict};
use handoff_std::os::process::wait_exit;
use handoff_std::os::spawn::{PassedListener, spawn_cold};
use handoff_std::{JournalPhase, JournalRecord, PhaseTimings};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const OURS_BIN: &str = env!("CARGO_BIN_EXE_handoff-bench-ours");
const REFERENCE_BIN: &str = env!("CARGO_BIN_EXE_handoff-bench-reference");

/// Handoffs per implementation.
const ROUNDS: usize = 50;
/// Timings of each file-system step, per library.
const FS_ROUNDS: usize = 30;
/// Budgets far above what a handoff takes here: a stuck run fails in
/// seconds instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Any single wait of the harness itself.
const PATIENCE: Duration = Duration::from_secs(10);
/// Answers the client must get from a daemon before its handoff starts,
/// so the handoff begins under a steady stream of connections.
const WARM_REQUESTS: u64 = 3;

/// The targets.
const LATENCY_TARGET: f64 = 0.5;
const FLOOR_TARGET: f64 = 2.0;
const GAP_TARGET: f64 = 0.5;

type Error = Box<dyn std::error::Error>;

fn rounds() -> usize {
    handoff_benches::stats::rounds(ROUNDS)
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds since this process's origin: a clock both threads share.
fn now_ns() -> u64 {
    origin().elapsed().as_nanos() as u64
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ours,
    Reference,
}

impl Side {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Side::Ours => "ours",
            Side::Reference => "reference",
        }
    }
}

/// Collects the `*_seconds` fields of the reference supervisor's `tracing`
/// events (`handoff.drained`, `handoff.seal_complete`, `handoff.ready`,
/// `handoff.commit`): its only record of its phases. Nothing else is
/// formatted or kept, so the events cost it next to nothing.
struct PhaseProbe {
    seen: Mutex<Vec<(&'static str, f64)>>,
}

impl PhaseProbe {
    fn install() -> Result<&'static PhaseProbe, Error> {
        static PROBE: OnceLock<&'static PhaseProbe> = OnceLock::new();
        let probe = *PROBE.get_or_init(|| {
            Box::leak(Box::new(PhaseProbe {
                // Far more than one handoff's fields (`take` empties it
                // after each): the reference's allocations per handoff are
                // counted, and the probe's own must not be among them.
                seen: Mutex::new(Vec::with_capacity(256)),
            }))
        });
        tracing::subscriber::set_global_default(Forward(probe))
            .map_err(|e| format!("installing the tracing probe: {e}"))?;
        Ok(probe)
    }

    /// The fields seen since the last call.
    fn take(&self) -> BTreeMap<&'static str, f64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let fields = seen.iter().copied().collect();
        seen.clear();
        fields
    }
}

struct Forward(&'static PhaseProbe);

struct Fields<'a>(&'a mut Vec<(&'static str, f64)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name().ends_with("_seconds") && self.0.len() < self.0.capacity() {
            self.0.push((field.name(), value));
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn Debug) {}
}

impl tracing::Subscriber for Forward {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_event() && metadata.target().starts_with("handoff.")
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut seen = self.0.seen.lock().unwrap_or_else(|e| e.into_inner());
        event.record(&mut Fields(&mut seen));
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

enum Sup {
    // Boxed: ours is the larger by far, and the enum is built once.
    Ours(Box<handoff_std::Supervisor>),
    Reference(handoff::Supervisor),
}

/// One implementation's daemon and supervisor.
struct Setup {
    side: Side,
    args: Args,
    trace: PathBuf,
    addr: SocketAddr,
    /// Kept open for the whole run: the reference's supervisor only holds
    /// its number, and the floor probes pass it.
    listener: TcpListener,
    sup: Sup,
    incumbent: Option<Child>,
    /// The control socket's inode when the last handoff started: the next
    /// one waits until the successor has bound a new one.
    last_socket: Option<u64>,
}

impl Setup {
    fn start(side: Side, root: &Path, journal: bool) -> Result<Setup, Error> {
        let dir = root.join(side.name());
        std::fs::create_dir_all(&dir)?;
        let args = Args {
            control_socket: dir.join("ctl.sock"),
            data_dir: dir.join("data"),
        };
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut cmd = Command::new(binary(side));
        cmd.args(args.to_args()).stdout(Stdio::piped());
        let passed = [PassedListener {
            name: LISTENER,
            fd: listener.as_fd(),
        }];
        let mut child = spawn_cold(cmd, &passed)?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != READY_LINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the {} daemon did not start: {line:?}", side.name()).into());
        }
        let sup = match side {
            Side::Ours => {
                let s = handoff_std::Supervisor::new(&args.control_socket)?
                    .with_listener(LISTENER, listener.try_clone()?)?;
                Sup::Ours(Box::new(if journal {
                    s.with_journal(dir.join("journal"))
                } else {
                    s
                }))
            }
            Side::Reference => {
                let s = handoff::Supervisor::new(&args.control_socket)?
                    .with_listener(LISTENER, listener.as_raw_fd());
                Sup::Reference(if journal {
                    s.with_journal(dir.join("journal"))
                } else {
                    s
                })
            }
        };
        Ok(Setup {
            side,
            args,
            trace: dir.join("trace"),
            addr,
            listener,
            sup,
            incumbent: Some(child),
            last_socket: None,
        })
    }

    fn socket_inode(&self) -> Option<u64> {
        std::fs::metadata(&self.args.control_socket)
            .ok()
            .map(|m| m.ino())
    }

    /// Waits until the previous handoff's successor serves the control
    /// socket: it binds the path only after `Ready`, when the supervisor
    /// has already returned.
    fn wait_until_bound(&self) -> Result<(), Error> {
        let Some(old) = self.last_socket else {
            return Ok(());
        };
        wait_for(|| self.socket_inode().is_some_and(|ino| ino != old)).map_err(|_| {
            format!(
                "{}: the successor never bound the control socket",
                self.side.name()
            )
            .into()
        })
    }

    /// One handoff: its wall time, this thread's allocations during it, and
    /// our phase timings (ours only).
    fn handoff(&mut self) -> Result<Handoff, Error> {
        self.last_socket = self.socket_inode();
        let args = self.args.to_args();
        let (took, allocations, timings, child) = match &self.sup {
            Sup::Ours(sup) => {
                let mut spec = handoff_std::SpawnSpec::new(OURS_BIN).env(TRACE_ENV, &self.trace);
                spec.args = args;
                spec.deadline = DEADLINE;
                spec.drain_grace = DRAIN_GRACE;
                spec.startup_budget = DEADLINE;
                let allocs = thread_allocations();
                let start = Instant::now();
                let outcome = sup.perform_handoff(spec)?;
                let took = start.elapsed();
                let allocations = thread_allocations() - allocs;
                if !outcome.committed() {
                    return Err(format!(
                        "our handoff did not commit: {:?} {:?}",
                        outcome.result, outcome.detail
                    )
                    .into());
                }
                (took, allocations, Some(outcome.timings), outcome.child)
            }
            Sup::Reference(sup) => {
                let mut spec = handoff::SpawnSpec::new(REFERENCE_BIN);
                spec.args = args
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                spec.env = vec![(
                    TRACE_ENV.to_owned(),
                    self.trace.to_string_lossy().into_owned(),
                )];
                spec.deadline = DEADLINE;
                spec.drain_grace = DRAIN_GRACE;
                let allocs = thread_allocations();
                let start = Instant::now();
                let outcome = sup.perform_handoff(spec)?;
                let took = start.elapsed();
                let allocations = thread_allocations() - allocs;
                if !outcome.committed {
                    return Err(format!(
                        "the reference's handoff did not commit: {:?}",
                        outcome.abort_reason
                    )
                    .into());
                }
                (took, allocations, None, outcome.child)
            }
        };
        let child = child.ok_or("a committed handoff returned no child")?;
        if let Some(old) = self.incumbent.replace(child) {
            reap(old)?;
        }
        Ok(Handoff {
            took,
            allocations,
            timings,
        })
    }

    /// The `announce_us` lines the successors wrote, in seconds.
    fn announce_times(&self) -> Vec<f64> {
        std::fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" announce_us "))
            .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
            .map(|us| us / 1e6)
            .collect()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.incumbent.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop();
    }
}

fn binary(side: Side) -> &'static str {
    match side {
        Side::Ours => OURS_BIN,
        Side::Reference => REFERENCE_BIN,
    }
}

/// The old incumbent exits by itself after `Commit`.
fn reap(mut child: Child) -> Result<(), Error> {
    match wait_exit(&mut child, PATIENCE) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("a committed incumbent exited with {status}").into()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err("a committed incumbent did not exit".into())
        }
    }
}

/// Polls `cond` every 100 µs until it holds; `Err` after [`PATIENCE`].
fn wait_for(mut cond: impl FnMut() -> bool) -> Result<(), ()> {
    let give_up = Instant::now() + PATIENCE;
    while !cond() {
        if Instant::now() > give_up {
            return Err(());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

struct Handoff {
    took: Duration,
    allocations: u64,
    timings: Option<PhaseTimings>,
}

/// One client connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    side: usize,
    start: u64,
    end: u64,
    ok: bool,
}

/// The client thread's target while the floor is measured at rest.
const PAUSED: usize = 2;

/// The client thread: connects without pause to the daemon of `target`.
struct Client {
    target: AtomicUsize,
    stop: AtomicBool,
    idle: AtomicBool,
    answered: AtomicU64,
    /// Start time of the last connection that ended.
    last_start: AtomicU64,
    /// The client thread, to wake it from a pause.
    thread: OnceLock<std::thread::Thread>,
}

impl Client {
    fn spawn(addrs: [SocketAddr; 2]) -> (Arc<Client>, JoinHandle<Vec<Conn>>) {
        let client = Arc::new(Client {
            target: AtomicUsize::new(PAUSED),
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            last_start: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let c = client.clone();
        let thread = std::thread::spawn(move || {
            let _ = c.thread.set(std::thread::current());
            let mut log = Vec::with_capacity(1 << 16);
            while !c.stop.load(Ordering::Relaxed) {
                let side = c.target.load(Ordering::Acquire);
                if side == PAUSED {
                    c.idle.store(true, Ordering::Release);
                    // Parked, not polling: the floor measured meanwhile
                    // should not share the CPU with a busy loop.
                    std::thread::park_timeout(Duration::from_millis(50));
                    continue;
                }
                c.idle.store(false, Ordering::Release);
                let start = now_ns();
                let ok = echo::ping(addrs[side], PATIENCE).is_ok();
                let end = now_ns();
                log.push(Conn {
                    side,
                    start,
                    end,
                    ok,
                });
                c.last_start.store(start, Ordering::Release);
                if ok {
                    c.answered.fetch_add(1, Ordering::Release);
                }
            }
            log
        });
        (client, thread)
    }

    /// Switches to `side` and waits for a few answers from it.
    fn aim(&self, side: Side) -> Result<(), Error> {
        self.target.store(side.index(), Ordering::Release);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
        // The connection in flight may still be to the other daemon.
        let from = self.answered.load(Ordering::Acquire) + 1;
        wait_for(|| self.answered.load(Ordering::Acquire) >= from + WARM_REQUESTS)
            .map_err(|_| format!("the {} daemon does not answer", side.name()).into())
    }

    /// Stops connecting, once the connection in flight is over.
    fn pause(&self) -> Result<(), Error> {
        self.idle.store(false, Ordering::Release);
        self.target.store(PAUSED, Ordering::Release);
        wait_for(|| self.idle.load(Ordering::Acquire))
            .map_err(|_| Error::from("the client did not pause"))
    }

    /// Waits until a connection that started at `t` or later has ended, so
    /// every connection that overlapped the handoff has been answered.
    fn settle(&self, t: u64) -> Result<u64, Error> {
        wait_for(|| self.last_start.load(Ordering::Acquire) >= t)
            .map_err(|_| Error::from("the client stalled after a handoff"))?;
        Ok(now_ns())
    }
}

/// Spawn to first byte of the successor binary in its floor mode, passed
/// the listener and a socketpair exactly as in a handoff.
fn floor_as_handoff(listener: &TcpListener) -> Result<f64, Error> {
    let spec = handoff_std::SpawnSpec::new(OURS_BIN).env(FLOOR_ENV, "1");
    let passed = [PassedListener {
        name: LISTENER,
        fd: listener.as_fd(),
    }];
    let start = Instant::now();
    let (control, mut child): (UnixStream, Child) = handoff_std::spawn_for_handoff(&spec, &passed)?;
    control.set_read_timeout(Some(PATIENCE))?;
    let mut byte = [0u8; 1];
    (&control).read_exact(&mut byte)?;
    let took = start.elapsed();
    child.wait()?;
    Ok(took.as_secs_f64())
}

/// The same with a plain `Command::spawn` (no descriptors passed, which
/// lets std use `posix_spawn`), the byte coming on stdout.
fn floor_plain() -> Result<f64, Error> {
    let start = Instant::now();
    let mut child = Command::new(OURS_BIN)
        .env(FLOOR_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()?;
    let mut byte = [0u8; 1];
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_exact(&mut byte)?;
    let took = start.elapsed();
    child.wait()?;
    Ok(took.as_secs_f64())
}

/// The file-system steps of a handoff, each library's own code, timed in
/// `root`; seconds per call, `[ours, reference]` for each of [`FS_STEPS`].
fn fs_steps(root: &Path) -> Result<[[Vec<f64>; 2]; 4], Error> {
    let dir = root.join("fs");
    let (ours_dir, ref_dir) = (dir.join("ours"), dir.join("reference"));
    std::fs::create_dir_all(&ours_dir)?;
    std::fs::create_dir_all(&ref_dir)?;
    let record = JournalRecord {
        handoff_id: handoff_core::HandoffId::from_bytes([7; 16]),
        phase: JournalPhase::Sealing,
        incumbent_pid: std::process::id(),
        successor_pid: Some(std::process::id() + 1),
        started_at_unix_ms: 1_767_225_600_000,
    };
    let their_record = handoff::state::StateJournal {
        handoff_id: handoff::HandoffId(uuid::Uuid::from_bytes([7; 16])),
        phase: handoff::state::Phase::Sealing,
        incumbent_pid: std::process::id(),
        successor_pid: Some(std::process::id() + 1),
        started_at_unix_ms: 1_767_225_600_000,
    };
    let journal = handoff_std::os::journal::Journal::new(ours_dir.join("journal"));
    let their_journal = ref_dir.join("journal");
    let (socket, their_socket) = (ours_dir.join("ctl.sock"), ref_dir.join("ctl.sock"));
    let mut out: [[Vec<f64>; 2]; 4] = Default::default();
    let secs = |start: Instant| start.elapsed().as_secs_f64();
    for _ in 0..FS_ROUNDS {
        let t = Instant::now();
        let lock = handoff_std::DataDirLock::acquire(&ours_dir)?;
        out[0][0].push(secs(t));
        let t = Instant::now();
        drop(lock);
        out[1][0].push(secs(t));
        let t = Instant::now();
        let lock = handoff::DataDirLock::acquire(&ref_dir)?;
        out[0][1].push(secs(t));
        let t = Instant::now();
        drop(lock);
        out[1][1].push(secs(t));
        let t = Instant::now();
        drop(handoff_std::os::control::bind_control_socket(&socket)?);
        out[2][0].push(secs(t));
        let t = Instant::now();
        drop(handoff::bind_socket(&their_socket)?);
        out[2][1].push(secs(t));
        let t = Instant::now();
        journal.write(&record)?;
        out[3][0].push(secs(t));
        let t = Instant::now();
        their_record.write_atomic(&their_journal)?;
        out[3][1].push(secs(t));
    }
    Ok(out)
}

/// What [`fs_steps`] times, and where each falls in a handoff.
const FS_STEPS: [&str; 4] = [
    "lock acquire (successor, begin → ready)",
    "lock release (incumbent, in seal)",
    "control socket bind (successor, after Ready)",
    "journal record write (supervisor; 2 fsyncs)",
];

/// Everything measured, per side where it applies.
#[derive(Default)]
struct Results {
    took: [Vec<f64>; 2],
    allocations: [Vec<f64>; 2],
    /// Per handoff: `(side, start, settled)` in `now_ns` time.
    windows: Vec<(usize, u64, u64)>,
    timings: Vec<PhaseTimings>,
    reference_phases: Vec<BTreeMap<&'static str, f64>>,
    announce: [Vec<f64>; 2],
    floor_loaded: Vec<f64>,
    floor_idle: Vec<f64>,
    floor_plain: Vec<f64>,
    /// Back to back, after the handoffs: the processor warm and busy with
    /// nothing else.
    floor_hot: Vec<f64>,
    fs: [[Vec<f64>; 2]; 4],
}

fn main() -> ExitCode {
    origin();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Where the daemons keep their data directories and control sockets:
/// `HANDOFF_BENCH_DIR`, else tmpfs if there is one, else the temp dir.
fn handoff_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HANDOFF_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if filesystem_of(shm) == "tmpfs" {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn run() -> Result<(), Error> {
    let machine = Machine::detect();
    let probe = PhaseProbe::install()?;
    // Two configurations, one after the other: the protocol alone (tmpfs,
    // no journal), and as deployed (the data directories and each
    // supervisor's journal on the disk, as handoff-supervisor runs with a
    // `journal` configured).
    let configs = [
        (
            "protocol alone: no journal, data on tmpfs",
            handoff_dir(),
            false,
        ),
        (
            "as deployed: a journal for each supervisor, data and journal on disk",
            std::env::temp_dir(),
            true,
        ),
    ];
    for (title, base, journal) in configs {
        let name = format!("hbb-{}-{}", std::process::id(), u8::from(journal));
        let (root, disk) = (base.join(&name), std::env::temp_dir().join(&name));
        for dir in [&root, &disk] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let result = measure(&root, &disk, probe, journal);
        for dir in [&root, &disk] {
            let _ = std::fs::remove_dir_all(dir);
        }
        let (results, conns) = result?;
        println!();
        println!("== {title}");
        report(&machine, &results, &conns, [&root, &disk]);
    }
    Ok(())
}

fn measure(
    root: &Path,
    disk: &Path,
    probe: &PhaseProbe,
    journal: bool,
) -> Result<(Results, Vec<Conn>), Error> {
    let mut setups = [
        Setup::start(Side::Ours, root, journal)?,
        Setup::start(Side::Reference, root, journal)?,
    ];
    let (client, client_thread) = Client::spawn([setups[0].addr, setups[1].addr]);
    let mut results = Results::default();
    let outcome = (|| -> Result<(), Error> {
        for _ in 0..rounds() {
            for setup in &mut setups {
                match setup.side {
                    Side::Ours => {
                        client.pause()?;
                        results.floor_idle.push(floor_as_handoff(&setup.listener)?);
                        results.floor_plain.push(floor_plain()?);
                        client.aim(setup.side)?;
                        results
                            .floor_loaded
                            .push(floor_as_handoff(&setup.listener)?);
                    }
                    Side::Reference => client.aim(setup.side)?,
                }
                setup.wait_until_bound()?;
                probe.take();
                let start = now_ns();
                let h = setup.handoff()?;
                let settled = client.settle(start + h.took.as_nanos() as u64)?;
                let i = setup.side.index();
                results.took[i].push(h.took.as_secs_f64());
                results.allocations[i].push(h.allocations as f64);
                results.windows.push((i, start, settled));
                results.timings.extend(h.timings);
                if setup.side == Side::Reference {
                    results.reference_phases.push(probe.take());
                }
            }
        }
        client.pause()?;
        for _ in 0..rounds() {
            results
                .floor_hot
                .push(floor_as_handoff(&setups[0].listener)?);
        }
        results.fs = fs_steps(disk)?;
        Ok(())
    })();
    client.stop.store(true, Ordering::Relaxed);
    let conns = client_thread
        .join()
        .map_err(|_| "the client thread panicked")?;
    for setup in &mut setups {
        setup.stop();
    }
    outcome?;
    for setup in &setups {
        results.announce[setup.side.index()] = setup.announce_times();
    }
    Ok((results, conns))
}

/// Per handoff, the longest connect-to-answer of the connections to its
/// daemon that overlapped it, and how many of them failed.
fn accept_gaps(results: &Results, conns: &[Conn]) -> ([Vec<f64>; 2], [usize; 2]) {
    let mut gaps: [Vec<f64>; 2] = Default::default();
    let mut errors = [0; 2];
    for &(side, start, settled) in &results.windows {
        let mut longest = 0u64;
        for c in conns
            .iter()
            .filter(|c| c.side == side && c.start <= settled && c.end >= start)
        {
            if c.ok {
                longest = longest.max(c.end - c.start);
            } else {
                errors[side] += 1;
            }
        }
        gaps[side].push(longest as f64 / 1e9);
    }
    (gaps, errors)
}

fn p50(v: &[f64]) -> f64 {
    quantile(v, 0.5).unwrap_or(f64::NAN)
}

fn avg(v: &[f64]) -> f64 {
    mean(v).unwrap_or(f64::NAN)
}

fn row(label: &str, a: f64, b: f64) {
    println!(
        "  {:<46} {:>11} {:>11} {:>8}",
        label,
        Secs(a).to_string(),
        Secs(b).to_string(),
        Ratio::of(a, b).to_string()
    );
}

fn report(machine: &Machine, results: &Results, conns: &[Conn], [root, disk]: [&Path; 2]) {
    let (Some(ours), Some(theirs)) = (Summary::of(&results.took[0]), Summary::of(&results.took[1]))
    else {
        println!("handoff: nothing measured");
        return;
    };
    let (gaps, errors) = accept_gaps(results, conns);
    let gap = [Summary::of(&gaps[0]), Summary::of(&gaps[1])];
    let floor = p50(&results.floor_loaded);
    let floor_idle = p50(&results.floor_idle);
    let idle: Vec<f64> = conns
        .iter()
        .filter(|c| {
            c.ok && !results
                .windows
                .iter()
                .any(|&(_, s, e)| c.start <= e && c.end >= s)
        })
        .map(|c| (c.end - c.start) as f64 / 1e9)
        .collect();

    println!();
    println!(
        "handoff: {} + {} handoffs, interleaved (ours, reference, ours, …), a client connecting throughout",
        ours.n, theirs.n
    );
    println!("  machine: {machine}");
    let dir = root.parent().unwrap_or(root);
    println!(
        "  data dirs and control sockets in {} ({}; HANDOFF_BENCH_DIR to move them)",
        dir.display(),
        filesystem_of(dir)
    );
    println!(
        "  {:<46} {:>11} {:>11} {:>8}",
        "", "ours", "reference", "ratio"
    );
    row("handoff latency p50", ours.p50, theirs.p50);
    row("handoff latency p99", ours.p99, theirs.p99);
    row("handoff latency max", ours.max, theirs.max);
    if let [Some(g0), Some(g1)] = gap {
        row("accept gap, longest over all handoffs", g0.max, g1.max);
        row("accept gap, p50 of each handoff's longest", g0.p50, g1.p50);
    }
    let allocs = [avg(&results.allocations[0]), avg(&results.allocations[1])];
    println!(
        "  {:<46} {:>11.0} {:>11.0} {:>8}",
        "supervisor heap allocations per handoff",
        allocs[0],
        allocs[1],
        Ratio::of(allocs[0], allocs[1]).to_string()
    );
    println!(
        "  client: {} connections ({} overlapping a handoff), failed: ours {}, reference {}; \
         connect-to-answer between handoffs p50 {}",
        conns.len(),
        conns.len() - idle.len(),
        errors[0],
        errors[1],
        Secs(p50(&idle)),
    );
    println!(
        "  floor, spawn to first byte of the successor binary (p50 of {}):",
        results.floor_loaded.len()
    );
    println!(
        "    {:<62} {:>11}",
        "as in a handoff (spawn_for_handoff), client connecting",
        Secs(floor).to_string()
    );
    println!(
        "    {:<62} {:>11}",
        "as in a handoff (spawn_for_handoff), client paused",
        Secs(floor_idle).to_string()
    );
    println!(
        "    {:<62} {:>11}",
        "plain Command::spawn (no fds passed), client paused",
        Secs(p50(&results.floor_plain)).to_string()
    );
    println!(
        "    {:<62} {:>11}",
        "as in a handoff, back to back after the run (a warm processor)",
        Secs(p50(&results.floor_hot)).to_string()
    );
    println!(
        "  handoff p50 / floor: ours {:.2}×, reference {:.2}× (against the paused floor: {:.2}×, {:.2}×)",
        ours.p50 / floor,
        theirs.p50 / floor,
        ours.p50 / floor_idle,
        theirs.p50 / floor_idle,
    );

    phases(results);

    let disk = disk.parent().unwrap_or(disk);
    println!(
        "  file-system steps, each library's own code, in {} ({}; p50 of {FS_ROUNDS}):",
        disk.display(),
        filesystem_of(disk)
    );
    for (name, [a, b]) in FS_STEPS.iter().zip(&results.fs) {
        row(&format!("  {name}"), p50(a), p50(b));
    }

    let latency = ours.p50 / theirs.p50;
    println!("  targets:");
    println!(
        "    handoff latency p50 ≤ {LATENCY_TARGET} × the reference's: {latency:.3}× — {}",
        verdict(latency <= LATENCY_TARGET)
    );
    let vs_floor = ours.p50 / floor;
    println!(
        "    handoff latency p50 ≤ {FLOOR_TARGET} × the floor: {vs_floor:.2}× — {}",
        verdict(vs_floor <= FLOOR_TARGET)
    );
    if let [Some(g0), Some(g1)] = gap {
        let r = g0.max / g1.max;
        println!(
            "    accept gap (longest) ≤ {GAP_TARGET} × the reference's: {r:.3}× — {}",
            verdict(r <= GAP_TARGET)
        );
    }
    if errors.iter().any(|&e| e > 0) {
        println!(
            "  WARNING: client connections failed during handoffs; a listener must never close"
        );
    }
}

/// Where the time goes: the mean of each phase of our `PhaseTimings`, the
/// reference's phases from its events, and the successors' announce.
fn phases(results: &Results) {
    let timings = &results.timings;
    if timings.is_empty() {
        return;
    }
    let ours = |f: fn(&PhaseTimings) -> Option<Duration>| -> f64 {
        avg(&timings
            .iter()
            .map(|t| f(t).map_or(0.0, |d| d.as_secs_f64()))
            .collect::<Vec<_>>())
    };
    let theirs = |name: &str| -> f64 {
        avg(&results
            .reference_phases
            .iter()
            .filter_map(|p| p.get(name).copied())
            .collect::<Vec<_>>())
    };
    let total = ours(|t| Some(t.total));
    let wall = [avg(&results.took[0]), avg(&results.took[1])];
    let (t_drain, t_seal, t_ready, t_total) = (
        theirs("drain_seconds"),
        theirs("seal_seconds"),
        theirs("begin_to_ready_seconds"),
        theirs("total_seconds"),
    );
    let before = [
        ("connect", ours(|t| t.connect)),
        ("incumbent hello", ours(|t| t.incumbent_hello)),
        ("spawn", ours(|t| t.spawn)),
        (
            "successor hello (its start-up)",
            ours(|t| t.successor_hello),
        ),
    ];
    let until_prepare: f64 = before.iter().map(|(_, v)| v).sum();
    println!(
        "  where the time goes: mean per handoff ({} of ours from PhaseTimings, {} of the reference's from its tracing events)",
        timings.len(),
        results.reference_phases.len()
    );
    println!(
        "    {:<42} {:>11} {:>6} {:>11}",
        "phase", "ours", "share", "reference"
    );
    let line = |name: &str, v: f64, r: Option<f64>| {
        println!(
            "    {:<42} {:>11} {:>5.1}% {:>11}",
            name,
            Secs(v).to_string(),
            100.0 * v / total,
            r.map_or(String::new(), |r| Secs(r).to_string())
        );
    };
    for (name, v) in before {
        line(name, v, None);
    }
    line(
        "  = until PrepareHandoff",
        until_prepare,
        Some(t_total - t_drain - t_seal - t_ready),
    );
    line(
        "drain (PrepareHandoff → Drained)",
        ours(|t| t.drain),
        Some(t_drain),
    );
    line(
        "seal (SealRequest → SealComplete)",
        ours(|t| t.seal),
        Some(t_seal),
    );
    line("begin → ready", ours(|t| t.begin_to_ready), Some(t_ready));
    let announce = [avg(&results.announce[0]), avg(&results.announce[1])];
    line(
        "  of which the successor's announce_and_bind",
        announce[0],
        Some(announce[1]),
    );
    let spread = |v: &[f64]| {
        format!(
            "p50 {}, p90 {}, max {}",
            Secs(p50(v)),
            Secs(quantile(v, 0.9).unwrap_or(f64::NAN)),
            Secs(handoff_benches::stats::max(v).unwrap_or(f64::NAN))
        )
    };
    println!(
        "      (announce_and_bind sends Ready, then binds the control socket: ours {}; reference {})",
        spread(&results.announce[0]),
        spread(&results.announce[1])
    );
    line("commit (Ready → finished)", ours(|t| t.commit), None);
    line("total", total, Some(t_total));
    println!(
        "    {:<42} {:>11}        {:>11}",
        "perform_handoff wall time",
        Secs(wall[0]).to_string(),
        Secs(wall[1]).to_string()
    );
}
