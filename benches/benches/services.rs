//! Many services in one supervisor loop: what each idle service costs the
//! supervising process, and whether one service's handoff slows down when
//! the loop holds a thousand.
//!
//! The services are real daemons: 1,000 `handoff-bench-ours` processes (a
//! `handoff-std` daemon answering `PING` with `PONG`), each started cold
//! with its own listener on `127.0.0.1:0`, its own data directory and
//! control socket under one directory on tmpfs (`/dev/shm`, else the temp
//! dir). They start in batches of [`BATCH`]: a batch is spawned, then its
//! `ready` lines are awaited, so a batch's daemons start up side by side.
//! The supervisor is this process: one `handoff_mio::MioSupervisor` in one
//! `mio::Poll`, with a `handoff_std::Supervisor` per service that owns the
//! service's listener (as a supervisor must, so the accept queue outlives
//! every swap).
//!
//! Memory. This process also spawned the daemons, and spawning leaves its
//! own traces (allocator arenas, the children's handles), so the figure
//! that belongs to the services is a difference: the supervisor's resident
//! set (`/proc/self/smaps_rollup`, Rss and Pss) and its live heap bytes (a
//! counting allocator) with all daemons up but no supervisor state yet,
//! against the same after the 1,000 `Supervisor`s were made and added to
//! the loop and the loop ran idle for a moment. Divided by 1,000, that is
//! the cost of one supervised idle service; the target's verdict takes the
//! larger of the resident and the heap figure (the resident one alone can
//! hide memory reused from the allocator's free lists). The whole process's
//! growth from its start, spawning included, is printed beside it, and so
//! are the descriptors and threads the process holds per service and the
//! registrations in the loop's epoll set while idle. The daemons are child
//! processes: their memory is not the supervisor's and is not counted.
//!
//! Latency. Each round hands off one service (rotating over
//! [`ROTATION`]) twice, once in a fresh loop holding only that service
//! ("alone") and once in the loop holding all 1,000 ("among"), the order
//! alternating between rounds; each handoff is timed from `start_handoff`
//! to its `Finished` event, and its successor is a new `handoff-bench-ours`.
//! Every handoff must commit and its old process exit. For context, the
//! same number of handoffs of one service run before the other 999
//! daemons exist ("solo"). The target compares the p50 among the 1,000
//! with the p50 alone.
//!
//! At the end all daemons get `SIGTERM`, then `SIGKILL` if they have not
//! exited within a bound; a guard does the same on any error.
//!
//! Run with `cargo bench --bench services` (`HANDOFF_BENCH_ROUNDS=n` for
//! another number of rounds; 20 by default). It exits non-zero if a
//! handoff fails, never because a target is missed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use handoff_benches::daemon::{Args, LISTENER, READY_LINE};
use handoff_benches::machine::{Machine, filesystem_of, raise_nofile};
use handoff_benches::stats::{Secs, Summary, quantile, verdict};
use handoff_mio::{MioSupervisor, ServiceId, SupervisorEvent};
use handoff_std::os::process::{kill_and_reap, poll_readable, send_signal, wait_exit};
use handoff_std::os::spawn::{Child, ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_std::{HandoffOutcome, Signal, SpawnSpec, Supervisor};
use mio::{Events, Poll};

#[global_allocator]
static ALLOC: LiveBytes = LiveBytes;

const OURS_BIN: &str = env!("CARGO_BIN_EXE_handoff-bench-ours");

/// Supervised daemons.
const SERVICES: usize = 1_000;
/// Daemons spawned before their `ready` lines are awaited.
const BATCH: usize = 100;
/// The services whose handoffs are timed, one per round in turn.
const ROTATION: [usize; 4] = [0, 333, 666, 999];
/// Handoffs per configuration.
const ROUNDS: usize = 20;
/// Concurrent handoffs each loop allows (the same in every loop, so the
/// loops differ only in the services they hold).
const MAX_HANDOFFS: usize = 4;
/// The first of the loops' handoff tokens.
const TOKEN_BASE: usize = 16;
/// How long the loop with all services runs idle before it is measured.
const IDLE_LOOP: Duration = Duration::from_millis(300);
/// Budgets far above what a handoff takes here: a stuck run fails in
/// seconds instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Any single wait of the harness itself.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long the daemons get to exit after `SIGTERM`.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The targets: memory per idle service, and a handoff among the
/// 1,000 against the same handoff alone.
const MEMORY_TARGET_KIB: f64 = 64.0;
const LATENCY_TARGET: f64 = 1.2;

type Error = Box<dyn std::error::Error>;

/// Bytes allocated and not yet freed, by every thread.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, keeping [`LIVE`] up to date.
struct LiveBytes;

#[allow(unsafe_code)]
// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees are this allocator's; the count on
// the side is one atomic integer and never allocates.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which
        // is `System::alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, hence from `System`, with
        // this `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and `new_size` is the caller's, valid by
        // `GlobalAlloc::realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // On failure the old block stays, and so does its count.
            LIVE.fetch_add(new_size, Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

fn rounds() -> usize {
    handoff_benches::stats::rounds(ROUNDS)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("services: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let start = Snapshot::take(None);
    let machine = Machine::detect();
    // Per daemon: its listener, and its stdout pipe while it starts.
    let nofile = raise_nofile((SERVICES + BATCH + 256) as libc::rlim_t)?;
    let shm = Path::new("/dev/shm");
    let base = if filesystem_of(shm) == "tmpfs" {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!("hbs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let mut fleet = Fleet {
        root,
        services: Vec::with_capacity(SERVICES),
    };
    let result = measure(&mut fleet, start);
    let teardown = fleet.stop();
    drop(fleet);
    let results = result?;
    report(&machine, &base, nofile, &results, &teardown);
    Ok(())
}

/// What this process holds at one moment.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    /// Resident set, KiB.
    rss: u64,
    /// Proportional set, KiB (`None` without `smaps_rollup`).
    pss: Option<u64>,
    /// Live heap bytes.
    heap: usize,
    /// Open descriptors.
    fds: usize,
    threads: usize,
    /// Descriptors registered in the given epoll set.
    registered: Option<usize>,
}

impl Snapshot {
    fn take(epoll: Option<&Poll>) -> Snapshot {
        let heap = LIVE.load(Ordering::Relaxed);
        let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
        let field = |text: &str, name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        let rss = field(&rollup, "Rss:")
            .or_else(|| {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                field(&status, "VmRSS:")
            })
            .unwrap_or(0);
        let count = |dir: &str| std::fs::read_dir(dir).map_or(0, |d| d.count());
        let registered = epoll.and_then(|p| {
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", p.as_raw_fd())).ok()?;
            Some(info.lines().filter(|l| l.starts_with("tfd:")).count())
        });
        Snapshot {
            rss,
            pss: field(&rollup, "Pss:"),
            heap,
            // Less the descriptor that reads the directory.
            fds: count("/proc/self/fd").saturating_sub(1),
            threads: count("/proc/self/task"),
            registered,
        }
    }
}

/// One supervised daemon.
struct Service {
    args: Args,
    /// The listener, until the service's `Supervisor` takes it.
    listener: Option<TcpListener>,
    /// The process serving now.
    child: Option<Child>,
    /// The control socket's inode when its last handoff started: the next
    /// one waits until the successor has bound a new one.
    last_socket: Option<u64>,
}

impl Service {
    fn socket_inode(&self) -> Option<u64> {
        std::fs::metadata(&self.args.control_socket)
            .ok()
            .map(|m| m.ino())
    }

    /// Waits until the previous handoff's successor serves the control
    /// socket (it binds the path after `Ready`, when the supervisor has
    /// already reported the commit), so no timed handoff waits for it.
    fn wait_until_bound(&self) -> Result<(), Error> {
        let Some(old) = self.last_socket else {
            return Ok(());
        };
        let give_up = Instant::now() + PATIENCE;
        while self.socket_inode().is_none_or(|ino| ino == old) {
            if Instant::now() > give_up {
                return Err(format!(
                    "{}: the successor never bound the control socket",
                    self.args.control_socket.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// A supervisor for this service, owning `listener`, that talks only to
    /// the process serving now.
    fn supervisor(&self, listener: TcpListener) -> Result<Arc<Supervisor>, Error> {
        let sup = Supervisor::new(&self.args.control_socket)?.with_listener(LISTENER, listener)?;
        sup.set_incumbent_pid(self.child.as_ref().map(Child::id));
        Ok(Arc::new(sup))
    }

    fn spec(&self) -> SpawnSpec {
        let mut spec = SpawnSpec::new(OURS_BIN);
        spec.args = self.args.to_args();
        spec.deadline = DEADLINE;
        spec.drain_grace = DRAIN_GRACE;
        spec.startup_budget = DEADLINE;
        spec
    }
}

/// All daemons, stopped when dropped (and their directory removed).
struct Fleet {
    root: PathBuf,
    services: Vec<Service>,
}

/// How the daemons went at the end.
#[derive(Debug, Default)]
struct Teardown {
    daemons: usize,
    /// Exited within [`TERM_GRACE`] of `SIGTERM`.
    terminated: usize,
    /// Were sent `SIGKILL`.
    killed: usize,
    took: Duration,
}

impl Fleet {
    /// Starts daemons until there are `total`, [`BATCH`] at a time.
    fn grow(&mut self, total: usize) -> Result<(), Error> {
        while self.services.len() < total {
            let end = total.min(self.services.len() + BATCH);
            let mut starting = Vec::with_capacity(BATCH);
            for i in self.services.len()..end {
                let dir = self.root.join(i.to_string());
                std::fs::create_dir_all(&dir)?;
                let args = Args {
                    control_socket: dir.join("ctl.sock"),
                    data_dir: dir.join("data"),
                };
                let listener = TcpListener::bind("127.0.0.1:0")?;
                let mut cmd = Launch::new(OURS_BIN);
                cmd.args(args.to_args())
                    .stdin(ChildStdio::Null)
                    .stdout(ChildStdio::Piped);
                let passed = [PassedListener {
                    name: LISTENER,
                    fd: listener.as_fd(),
                }];
                let mut child = spawn_cold_vfork(cmd, &passed)?;
                let stdout = child.stdout.take();
                self.services.push(Service {
                    args,
                    listener: Some(listener),
                    child: Some(child),
                    last_socket: None,
                });
                starting.push((i, stdout.ok_or("no stdout")?));
            }
            let give_up = Instant::now() + PATIENCE;
            for (i, stdout) in starting {
                await_ready(i, stdout, give_up)?;
            }
        }
        Ok(())
    }

    /// `SIGTERM` to every daemon, `SIGKILL` to those still running after
    /// [`TERM_GRACE`]; all are reaped. Calling it again does nothing.
    fn stop(&mut self) -> Teardown {
        let started = Instant::now();
        let mut running: Vec<Child> = self
            .services
            .iter_mut()
            .filter_map(|s| s.child.take())
            .collect();
        let daemons = running.len();
        for child in &running {
            let _ = send_signal(child.id(), Signal::Terminate);
        }
        let give_up = started + TERM_GRACE;
        while !running.is_empty() && Instant::now() < give_up {
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            std::thread::sleep(Duration::from_millis(2));
        }
        let killed = running.len();
        for mut child in running {
            let _ = child.kill();
            let _ = child.wait();
        }
        Teardown {
            daemons,
            terminated: daemons - killed,
            killed,
            took: started.elapsed(),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits until daemon `i` prints its `ready` line; its stdout is closed
/// after (it prints nothing else).
fn await_ready(i: usize, stdout: ChildStdout, give_up: Instant) -> Result<(), Error> {
    let left = give_up.saturating_duration_since(Instant::now());
    if !poll_readable(&[stdout.as_fd()], Some(left))?[0] {
        return Err(format!("daemon {i} did not start within {PATIENCE:?}").into());
    }
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != READY_LINE {
        return Err(format!("daemon {i} did not start: {line:?}").into());
    }
    Ok(())
}

/// One supervisor loop: a `Poll`, its events and a `MioSupervisor`.
struct Loop {
    poll: Poll,
    events: Events,
    sup: MioSupervisor,
    /// Events that were not the supervisor's (there should be none).
    foreign: usize,
    /// Events seen in all.
    seen: usize,
}

impl Loop {
    fn new() -> Result<Loop, Error> {
        Ok(Loop {
            poll: Poll::new()?,
            events: Events::with_capacity(1024),
            sup: MioSupervisor::new(TOKEN_BASE, MAX_HANDOFFS),
            foreign: 0,
            seen: 0,
        })
    }

    /// One turn: wait up to `timeout`, pass on the events and the time.
    fn turn(&mut self, timeout: Duration) -> Result<(), Error> {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            // epoll_wait is not restarted after the process is stopped and
            // continued: a wake-up, not a failure.
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}").into());
            }
        }
        for event in &self.events {
            self.seen += 1;
            if !self.sup.handle_event(self.poll.registry(), event) {
                self.foreign += 1;
            }
        }
        self.sup.handle_timeout(self.poll.registry());
        Ok(())
    }

    /// Runs the loop for `how_long` with nothing in flight; returns what it
    /// reported meanwhile, which should be nothing.
    fn idle(&mut self, how_long: Duration) -> Result<usize, Error> {
        let until = Instant::now() + how_long;
        let mut reported = 0;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let next = self
                .sup
                .poll_timeout()
                .map_or(left, |t| t.saturating_duration_since(Instant::now()));
            self.turn(next.min(left).min(Duration::from_millis(20)))?;
            while self.sup.poll_event().is_some() {
                reported += 1;
            }
        }
        Ok(reported)
    }

    /// Runs the loop until `id`'s handoff finishes.
    fn finish(&mut self, id: ServiceId) -> Result<Box<HandoffOutcome>, Error> {
        let give_up = Instant::now() + PATIENCE;
        loop {
            // Anything but this handoff's end is a failure of the run.
            if let Some(event) = self.sup.poll_event() {
                match event {
                    SupervisorEvent::Finished(s, outcome) if s == id => return Ok(outcome),
                    SupervisorEvent::Finished(s, outcome) => {
                        return Err(format!(
                            "service {} finished a handoff nobody started: {:?}",
                            s.0, outcome.result
                        )
                        .into());
                    }
                    SupervisorEvent::Rejected(s, e) => {
                        return Err(format!("service {}: handoff rejected: {e}", s.0).into());
                    }
                    other => return Err(format!("unexpected event {other:?}").into()),
                }
            }
            let now = Instant::now();
            if now >= give_up {
                return Err(format!("service {}: the handoff did not finish", id.0).into());
            }
            let until = self.sup.poll_timeout().map_or(give_up, |t| t.min(give_up));
            self.turn(until.saturating_duration_since(now))?;
        }
    }

    /// Hands `service` (`id` in this loop) off to a new daemon; checks that
    /// it committed and that the old process exited.
    fn handoff(&mut self, service: &mut Service, id: ServiceId) -> Result<Sample, Error> {
        service.wait_until_bound()?;
        service.last_socket = service.socket_inode();
        let spec = service.spec();
        let started = Instant::now();
        self.sup
            .start_handoff(self.poll.registry(), id, spec)
            .map_err(|e| format!("service {}: start_handoff: {e}", id.0))?;
        let mut outcome = self.finish(id)?;
        let took = started.elapsed();
        if !outcome.committed() {
            return Err(format!(
                "service {}: the handoff did not commit: {:?} {:?}",
                id.0, outcome.result, outcome.detail
            )
            .into());
        }
        let successor = outcome
            .child
            .take()
            .ok_or("a committed handoff returned no child")?;
        let old = service.child.replace(successor);
        reap(old.ok_or("the service had no incumbent")?)?;
        Ok(Sample {
            took: took.as_secs_f64(),
            total: outcome.timings.total.as_secs_f64(),
        })
    }
}

/// The old incumbent exits by itself after `Commit`.
fn reap(mut child: Child) -> Result<(), Error> {
    match wait_exit(&mut child, PATIENCE) {
        Some(status) if status.success() => Ok(()),
        Some(status) => Err(format!("a committed incumbent exited with {status}").into()),
        None => {
            kill_and_reap(child);
            Err("a committed incumbent did not exit".into())
        }
    }
}

/// One timed handoff, in seconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// `start_handoff` to the `Finished` event.
    took: f64,
    /// The supervisor's own `PhaseTimings::total`.
    total: f64,
}

/// Everything measured.
struct Results {
    fleet_start: Duration,
    start: Snapshot,
    /// After the solo handoffs, before the other daemons.
    before_fleet: Snapshot,
    /// All daemons up, no supervisor state.
    fleet_up: Snapshot,
    /// All services added, the loop run idle.
    added: Snapshot,
    /// After the latency rounds.
    after: Snapshot,
    idle_events: usize,
    idle_reported: usize,
    solo: Vec<Sample>,
    alone: Vec<Sample>,
    among: Vec<Sample>,
}

fn measure(fleet: &mut Fleet, start: Snapshot) -> Result<Results, Error> {
    let n = rounds();

    // One daemon, handed off in a loop of its own before the others exist.
    fleet.grow(1)?;
    let mut solo = Vec::with_capacity(n);
    {
        let service = &mut fleet.services[0];
        let listener = service
            .listener
            .as_ref()
            .ok_or("no listener")?
            .try_clone()?;
        let sup = service.supervisor(listener)?;
        let mut lp = Loop::new()?;
        let id = lp.sup.add_service(sup);
        for _ in 0..n {
            solo.push(lp.handoff(service, id)?);
        }
    }
    let before_fleet = Snapshot::take(None);

    let started = Instant::now();
    fleet.grow(SERVICES)?;
    let fleet_start = started.elapsed();

    // The supervisor state, from here on: a `Supervisor` per service, owning
    // its listener, all in one loop.
    let fleet_up = Snapshot::take(None);
    let mut all = Loop::new()?;
    let mut rotation = Vec::with_capacity(ROTATION.len());
    for (i, service) in fleet.services.iter_mut().enumerate() {
        let listener = service.listener.take().ok_or("no listener")?;
        let sup = service.supervisor(listener)?;
        if ROTATION.contains(&i) {
            rotation.push((i, sup.clone()));
        }
        let id = all.sup.add_service(sup);
        assert_eq!(id, ServiceId(i), "services are numbered in order");
    }
    let idle_reported = all.idle(IDLE_LOOP)?;
    let idle_events = all.seen;
    let added = Snapshot::take(Some(&all.poll));
    if all.sup.service_count() != SERVICES {
        return Err(format!("the loop holds {} services", all.sup.service_count()).into());
    }

    // The same service alone in a fresh loop and among all, in turn.
    let (mut alone, mut among) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for round in 0..n {
        let (i, sup) = &rotation[round % rotation.len()];
        let service = &mut fleet.services[*i];
        for among_first in [round % 2 == 1, round % 2 == 0] {
            if among_first {
                among.push(all.handoff(service, ServiceId(*i))?);
            } else {
                let mut lp = Loop::new()?;
                let id = lp.sup.add_service(sup.clone());
                alone.push(lp.handoff(service, id)?);
            }
        }
    }
    if all.foreign > 0 {
        return Err(format!("{} events in the loop were not its own", all.foreign).into());
    }
    let after = Snapshot::take(Some(&all.poll));
    Ok(Results {
        fleet_start,
        start,
        before_fleet,
        fleet_up,
        added,
        after,
        idle_events,
        idle_reported,
        solo,
        alone,
        among,
    })
}

fn p50(v: &[f64]) -> f64 {
    quantile(v, 0.5).unwrap_or(f64::NAN)
}

fn kib(bytes: usize) -> f64 {
    bytes as f64 / 1024.0
}

fn report(
    machine: &Machine,
    base: &Path,
    (soft, hard): (libc::rlim_t, libc::rlim_t),
    r: &Results,
    teardown: &Teardown,
) {
    println!();
    println!(
        "== many services: one mio supervisor loop, {SERVICES} idle handoff-bench-ours daemons"
    );
    println!("  machine: {machine}");
    println!(
        "  data dirs and control sockets in {} ({}); RLIMIT_NOFILE {soft} soft, {hard} hard",
        base.display(),
        filesystem_of(base)
    );
    println!(
        "  fleet: {} daemons started cold in {:.2} s ({} at a time, plus one before for the solo rounds); \
         stopped in {}: {} by SIGTERM, {} by SIGKILL",
        teardown.daemons,
        r.fleet_start.as_secs_f64(),
        BATCH,
        Secs::from(teardown.took),
        teardown.terminated,
        teardown.killed
    );

    println!("  the supervising process (the daemons are its children, not counted):");
    println!(
        "    {:<52} {:>10} {:>10} {:>12} {:>6} {:>8}",
        "", "RSS", "PSS", "heap live", "fds", "threads"
    );
    let line = |label: &str, s: &Snapshot| {
        println!(
            "    {:<52} {:>6} KiB {:>10} {:>8.0} KiB {:>6} {:>8}",
            label,
            s.rss,
            s.pss.map_or("-".into(), |p| format!("{p} KiB")),
            kib(s.heap),
            s.fds,
            s.threads
        );
    };
    line("at start", &r.start);
    line("after the solo handoffs, before the fleet", &r.before_fleet);
    line(
        &format!("{SERVICES} daemons up, no supervisor state yet"),
        &r.fleet_up,
    );
    line(
        &format!("{SERVICES} services added, loop idle {IDLE_LOOP:?}"),
        &r.added,
    );
    line("after the latency rounds", &r.after);

    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / SERVICES as f64;
    let rss_state = per(r.added.rss, r.fleet_up.rss);
    let pss_state = match (r.added.pss, r.fleet_up.pss) {
        (Some(a), Some(b)) => format!("{:.2} KiB", per(a, b)),
        _ => "-".into(),
    };
    let heap_state = kib(r.added.heap.saturating_sub(r.fleet_up.heap)) / SERVICES as f64;
    let rss_whole = per(r.added.rss, r.start.rss);
    let heap_whole = kib(r.added.heap.saturating_sub(r.start.heap)) / SERVICES as f64;
    println!("  per service ({SERVICES}):");
    println!(
        "    supervisor state (services added − daemons up): RSS {rss_state:.2} KiB, PSS {pss_state}, heap live {:.0} B",
        heap_state * 1024.0
    );
    println!(
        "    whole process (services added − start, spawning the daemons included): RSS {rss_whole:.2} KiB, heap live {:.0} B",
        heap_whole * 1024.0
    );
    println!(
        "    descriptors: {:.3} (each service's listener, owned by its Supervisor); threads: {:+}",
        r.added.fds.saturating_sub(r.start.fds) as f64 / SERVICES as f64,
        r.added.threads as i64 - r.start.threads as i64
    );
    println!(
        "    registrations in the loop's epoll set while idle: {}; after the rounds: {}; \
         events while idle: {}, reported: {}",
        r.added.registered.map_or("-".into(), |n| n.to_string()),
        r.after.registered.map_or("-".into(), |n| n.to_string()),
        r.idle_events,
        r.idle_reported
    );

    let took = |v: &[Sample]| v.iter().map(|s| s.took).collect::<Vec<f64>>();
    let total = |v: &[Sample]| v.iter().map(|s| s.total).collect::<Vec<f64>>();
    println!(
        "  handoff latency, start_handoff → Finished (rotating over services {ROTATION:?}; \
         alone and among interleaved, the order alternating):"
    );
    println!(
        "    {:<52} {:>4} {:>11} {:>11} {:>11} {:>13}",
        "", "n", "p50", "p99", "max", "total p50"
    );
    let row = |label: &str, v: &[Sample]| {
        let Some(s) = Summary::of(&took(v)) else {
            return;
        };
        println!(
            "    {:<52} {:>4} {:>11} {:>11} {:>11} {:>13}",
            label,
            s.n,
            Secs(s.p50).to_string(),
            Secs(s.p99).to_string(),
            Secs(s.max).to_string(),
            Secs(p50(&total(v))).to_string()
        );
    };
    row("alone: a fresh loop holding only that service", &r.alone);
    row(&format!("among: the loop holding all {SERVICES}"), &r.among);
    row("solo: service 0 alone, before the fleet existed", &r.solo);
    println!("    (total: the supervisor's PhaseTimings::total)");
    let (alone, among, solo) = (
        p50(&took(&r.alone)),
        p50(&took(&r.among)),
        p50(&took(&r.solo)),
    );
    let ratio = among / alone;
    println!(
        "    p50 among / alone: {ratio:.3}×; among / solo: {:.3}×; alone / solo: {:.3}×",
        among / solo,
        alone / solo
    );

    let memory = rss_state.max(heap_state);
    println!("  targets:");
    println!(
        "    supervisor memory per idle service ≤ {MEMORY_TARGET_KIB} KiB (the larger of its RSS and live-heap growth): \
         {memory:.2} KiB — {}",
        verdict(memory <= MEMORY_TARGET_KIB)
    );
    println!(
        "      (the whole process's RSS growth per service, spawning included: {rss_whole:.2} KiB, {:.3}× the target)",
        rss_whole / MEMORY_TARGET_KIB
    );
    println!(
        "    handoff latency p50 among {SERVICES} ≤ {LATENCY_TARGET} × alone: {ratio:.3}× — {}",
        verdict(ratio <= LATENCY_TARGET)
    );
}
