//! `kvd`: the key-value daemon of the demo, handed off with handoff-std
//! (or, with `--runtime`, handoff-mio, handoff-smol or handoff-tokio).
//!
//! ```text
//! kvd --control-socket PATH --data-dir PATH [--listen ADDR] [--version V]
//! kvd supervise --control-socket PATH --data-dir PATH --binary PATH
//!               [--version V] [--journal PATH]
//! ```
//!
//! Line protocol over TCP, one request line, one answer line:
//!
//! | request | answer |
//! |---|---|
//! | `SET <key> <value>` | `OK <revision>`, sent only once the write is in the log and fsynced |
//! | `GET <key>` | `VALUE <value>` or `NONE` |
//! | `VERSION` | `VERSION <v> <pid>` |
//! | anything else | `ERR <why>` |
//! | anything, while a daemon that cannot pass its connections hands over | `RETRY` (not executed: send it again on a new connection) |
//!
//! A key is 1 to 1024 bytes without spaces or control characters; a value
//! is the rest of the line after the key and its space (1 to 61440 bytes,
//! no control characters).
//!
//! A `SET` the log cannot take (the disk is full, an I/O error) is answered
//! `ERR write not saved: ...` and not executed; every later `SET` tries the
//! log again, so writes resume by themselves once space is back. Reads go on
//! meanwhile, and a handoff still goes through (the seal needs no new
//! space). The data files are created `0600`.
//!
//! During a handoff the incumbent stops accepting (the listener stays open:
//! the supervisor and the successor share it) and answers the requests it
//! is executing. Then each open connection is passed to the successor
//! (docs/PROTOCOL.md section 11) with the bytes read from it and not
//! answered, a request stopped by the drain included; its thread keeps the
//! descriptor, untouched, until the handoff ends: closed (never shut down)
//! after a commit, served again after a resume, from the passed bytes
//! unless the successor took the connections. The successor serves the
//! passed connections once its `Ready` is out, starting from those bytes,
//! so the client sees nothing. Without passing (a reference peer,
//! `pass_connections = false`, a state over the limit), every open
//! connection gets `RETRY` unprompted (or as the answer to the request the
//! drain stopped), its side shut down, and reads discarded until the client
//! closes or a short linger ends: a client whose next request crosses the
//! close reads `RETRY` instead of an EOF, and no request goes unanswered.
//! The successor reads the state before its `Hello`, while the old process
//! still serves (writing nothing, without the lock: [`Store::preload`]);
//! once it holds the data-dir lock it reads only what was logged since
//! ([`crate::store::Preloaded::open`]), so the pause does not grow with
//! the state. The seal does not grow with it either: it writes no
//! snapshot (the log is compacted in the background while serving). The
//! successor executes writes only once its `Ready` is sent: until then it
//! answers reads and holds writes, so that if the handoff fails it gives
//! the lock back having written nothing.
//!
//! `supervise` runs one handoff as a supervisor process (the listener comes
//! inherited as `kv`, as from systemd), for tests that kill the supervisor.

use handoff_std::PerformHandoff;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use handoff_std::os::listeners::Mode;
use handoff_std::os::process::poll_readable;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, Handover, HookError, Incumbent, PassError,
    PassedConnection, Role, SealProgress, SealReport, ServeEnd, ServeError, SpawnSpec,
    StateSnapshot, Supervisor, detect_role,
};

use crate::store::{CompactionEvent, Preloaded, Store, StoreConfig, StoreError};

mod runtimes;

/// The name of the listener kvd takes from its supervisor.
pub const LISTENER_NAME: &str = "kv";
/// How long a closing connection waits for the client to close first.
pub const LINGER: Duration = Duration::from_secs(2);
/// The longest request line, newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// The stack of a connection's thread.
const CONN_STACK: usize = 128 * 1024;
/// How long writing an answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the seal waits for writes already executing to finish.
const SEAL_WAIT: Duration = Duration::from_secs(10);

/// The usage text.
pub const USAGE: &str = "\
usage: kvd --control-socket PATH --data-dir PATH [--listen ADDR] [--version V]
           [--runtime std|mio|smol|tokio] [--fault FAULT]
       kvd supervise --control-socket PATH --data-dir PATH --binary PATH
                     [--version V] [--journal PATH]

Serves SET/GET/VERSION over TCP on the listener inherited as `kv` (from a
supervisor or systemd), or on --listen ADDR when started cold without one.
--version is the build id announced to the supervisor and answered to VERSION.
--runtime picks the adapter that drives the handoff (default std).
--fault makes a successor fail after it took over, to show probation:
  crash-after-ready=MS  SIGKILL itself MS milliseconds after serving as the successor
  unhealthy             report healthz_ok=false in Ready
  revisions-behind      advertise one revision less than it opened
`supervise` runs one handoff to --binary as a supervisor process.";

/// The daemon's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeArgs {
    /// `--control-socket`.
    pub control_socket: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--listen`, used on a cold start without an inherited listener.
    pub listen: Option<SocketAddr>,
    /// `--version`: the build id.
    pub version: String,
    /// `--runtime`: which adapter drives the handoff (the data plane is
    /// the same threads in every runtime).
    pub runtime: Runtime,
    /// `--fault`: how a successor fails after taking over (for the
    /// probation demo and tests); a cold start ignores it.
    pub fault: Option<Fault>,
}

/// A failure kvd can be told to show as a successor, after `Begin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `SIGKILL` itself this long after it started serving (after `Ready`).
    CrashAfterReady(Duration),
    /// Report `healthz_ok = false` in `Ready`.
    Unhealthy,
    /// Advertise one revision less than the state it opened.
    RevisionsBehind,
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Fault, String> {
        match s {
            "unhealthy" => Ok(Fault::Unhealthy),
            "revisions-behind" => Ok(Fault::RevisionsBehind),
            _ => match s.strip_prefix("crash-after-ready=") {
                Some(ms) => ms
                    .parse()
                    .map(|ms| Fault::CrashAfterReady(Duration::from_millis(ms)))
                    .map_err(|_| format!("--fault {s:?}: expected crash-after-ready=MS")),
                None => Err(format!(
                    "--fault {s:?}: expected crash-after-ready=MS, unhealthy or revisions-behind"
                )),
            },
        }
    }
}

/// The adapter that drives kvd's side of a handoff.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// handoff-std: `Incumbent::serve` and the blocking typestates.
    #[default]
    Std,
    /// handoff-mio: a mio loop; the hooks run on threads that wake it.
    Mio,
    /// handoff-smol: async fns on async-io; the hooks run on threads the
    /// futures await.
    Smol,
    /// handoff-tokio: async fns spawned on a multi-thread tokio runtime;
    /// the hooks run on its blocking pool.
    Tokio,
}

impl std::str::FromStr for Runtime {
    type Err = String;
    fn from_str(s: &str) -> Result<Runtime, String> {
        match s {
            "std" => Ok(Runtime::Std),
            "mio" => Ok(Runtime::Mio),
            "smol" => Ok(Runtime::Smol),
            "tokio" => Ok(Runtime::Tokio),
            other => Err(format!(
                "--runtime {other:?}: expected std, mio, smol or tokio"
            )),
        }
    }
}

/// The `supervise` subcommand's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperviseArgs {
    /// `--control-socket` of the running kvd.
    pub control_socket: PathBuf,
    /// `--data-dir` passed to the successor.
    pub data_dir: PathBuf,
    /// `--binary`: the successor.
    pub binary: PathBuf,
    /// `--version` passed to the successor.
    pub version: Option<String>,
    /// `--journal`.
    pub journal: Option<PathBuf>,
}

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Run one handoff as a supervisor.
    Supervise(SuperviseArgs),
    /// Print the usage.
    Help,
}

/// The version a kvd announces without `--version`.
pub fn default_version() -> String {
    format!("kvd-{}", env!("CARGO_PKG_VERSION"))
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, String> {
    let (supervise, flags) = match args.first().map(String::as_str) {
        Some("supervise") => (true, &args[1..]),
        _ => (false, args),
    };
    let mut control_socket = None;
    let mut data_dir = None;
    let mut listen = None;
    let mut version = None;
    let mut binary = None;
    let mut journal = None;
    let mut runtime = None;
    let mut fault = None;
    let mut it = flags.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(Command::Help);
        }
        let slot = match (flag.as_str(), supervise) {
            ("--control-socket", _) => &mut control_socket,
            ("--data-dir", _) => &mut data_dir,
            ("--version", _) => &mut version,
            ("--listen", false) => &mut listen,
            ("--runtime", false) => &mut runtime,
            ("--fault", false) => &mut fault,
            ("--binary", true) => &mut binary,
            ("--journal", true) => &mut journal,
            _ => return Err(format!("unknown argument {flag:?}")),
        };
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    let control_socket = PathBuf::from(control_socket.ok_or("--control-socket is required")?);
    let data_dir = PathBuf::from(data_dir.ok_or("--data-dir is required")?);
    if supervise {
        return Ok(Command::Supervise(SuperviseArgs {
            control_socket,
            data_dir,
            binary: PathBuf::from(binary.ok_or("--binary is required")?),
            version,
            journal: journal.map(PathBuf::from),
        }));
    }
    let listen = listen
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("--listen {a:?}: {e} (expected e.g. 127.0.0.1:7000)"))
        })
        .transpose()?;
    let version = version.unwrap_or_else(default_version);
    if version.is_empty() || version.contains(char::is_whitespace) {
        return Err("--version must be non-empty and without spaces".into());
    }
    let runtime = runtime.map(|r| r.parse()).transpose()?.unwrap_or_default();
    let fault = fault.map(|f| f.parse()).transpose()?;
    Ok(Command::Serve(ServeArgs {
        control_socket,
        data_dir,
        listen,
        version,
        runtime,
        fault,
    }))
}

/// Runs kvd with `args` (the program name first); returns the exit status.
pub fn main_with_args(args: Vec<String>) -> i32 {
    match parse_args(args.get(1..).unwrap_or(&[])) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            0
        }
        Ok(Command::Serve(a)) => serve(&a),
        Ok(Command::Supervise(a)) => supervise(&a),
        Err(e) => {
            eprintln!("kvd: {e}\n{USAGE}");
            2
        }
    }
}

fn log(msg: std::fmt::Arguments<'_>) {
    eprintln!("kvd[{}]: {msg}", std::process::id());
}

/// Cold start or successor, then serve until a successor takes over.
fn serve(args: &ServeArgs) -> i32 {
    // First, before any thread: it edits the environment.
    let role = match detect_role() {
        Ok(r) => r,
        Err(e) => {
            log(format_args!("{e}"));
            return 2;
        }
    };
    let successor = match role {
        Role::ColdStart { listeners } => return cold_start(args, listeners),
        Role::Successor(successor) => successor,
    };
    // Before `Hello`, on every runtime: the old binary serves meanwhile,
    // and after `Begin` only what it wrote since is left to read.
    let preloaded = runtimes::preload(args);
    match args.runtime {
        // kvd serves every connection the incumbent passes it.
        Runtime::Std => take_over(args, successor.accepting_connections(), preloaded),
        Runtime::Mio => runtimes::take_over_mio(args, successor, preloaded),
        Runtime::Smol => {
            runtimes::take_over_smol(args, successor.accepting_connections(), preloaded)
        }
        Runtime::Tokio => {
            runtimes::take_over_tokio(args, successor.accepting_connections(), preloaded)
        }
    }
}

/// How kvd's store compacts: the defaults, and a log line for each
/// compaction that finished or failed (a failure changes nothing on disk
/// and is tried again later, so it is only said).
fn store_config() -> StoreConfig {
    StoreConfig {
        on_compaction: Some(Arc::new(|event: &CompactionEvent| match event {
            CompactionEvent::Finished {
                revision,
                snapshot_bytes,
                took,
                leftover,
            } => {
                log(format_args!(
                    "compacted the log into a snapshot at revision {revision} ({snapshot_bytes} \
                     bytes, {:.0} ms){}",
                    took.as_secs_f64() * 1000.0,
                    leftover
                        .as_ref()
                        .map(|l| format!("; {l}"))
                        .unwrap_or_default()
                ));
            }
            CompactionEvent::Failed { error } => log(format_args!(
                "compacting the log failed ({error}); nothing changed on disk, the log is \
                 complete, and the compaction is tried again as the log grows"
            )),
            _ => {}
        })),
        ..StoreConfig::default()
    }
}

fn cold_start(
    args: &ServeArgs,
    mut listeners: handoff_std::os::listeners::InheritedListeners,
) -> i32 {
    let listener = if listeners.names().contains(&LISTENER_NAME) {
        match listeners.take_tcp(LISTENER_NAME, Mode::Blocking) {
            Ok(l) => l,
            Err(e) => {
                log(format_args!("inherited listener: {e}"));
                return 2;
            }
        }
    } else if let Some(addr) = args.listen {
        match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                log(format_args!("cannot listen on {addr}: {e}"));
                return 2;
            }
        }
    } else {
        log(format_args!(
            "no listener: none was inherited as {LISTENER_NAME:?} (from a supervisor or \
             systemd) and no --listen ADDR was given"
        ));
        return 2;
    };
    let lock = match DataDirLock::acquire_or_break_stale(&args.data_dir) {
        Ok(l) => l,
        Err(e) => {
            log(format_args!("data dir {}: {e}", args.data_dir.display()));
            return 3;
        }
    };
    if let Some(e) = lock.pidfile_error() {
        log(format_args!(
            "data dir {}: holding the lock, but the pidfile naming us could not be written: {e}",
            args.data_dir.display()
        ));
    }
    let store = match Store::open_with(&args.data_dir, store_config()) {
        Ok(s) => s,
        Err(e) => {
            log(format_args!("opening the state: {e}"));
            return 3;
        }
    };
    let incumbent = match Incumbent::bind_cold_start(&args.control_socket, lock) {
        Ok(i) => i.with_build_id(args.version.as_bytes()),
        Err(e) => {
            log(format_args!(
                "control socket {}: {e}",
                args.control_socket.display()
            ));
            return 3;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let daemon = match Daemon::start(args, store, Phase::Serving, listener) {
        Ok(d) => d,
        Err(e) => {
            log(format_args!("starting: {e}"));
            return 3;
        }
    };
    // Whoever started us cold may wait for this line. A closed stdout must
    // not stop the daemon, hence no println!.
    let mut out = io::stdout();
    let _ = writeln!(out, "ready {} {addr}", std::process::id());
    let _ = out.flush();
    run_incumbent(args, &daemon, incumbent)
}

fn take_over(
    args: &ServeArgs,
    successor: handoff_std::Successor,
    preloaded: Option<Preloaded>,
) -> i32 {
    let handshook = match successor.handshake(args.version.as_bytes()) {
        Ok(h) => h,
        Err(e) => {
            log(format_args!("successor: {e}"));
            return 4;
        }
    };
    // The lock is ours from here: only now may the sealed state be opened
    // (what the preload read is caught up).
    let mut begun = match handshook.wait_for_begin(&args.data_dir) {
        Ok(b) => b,
        Err(e) => {
            log(format_args!("successor: {e}"));
            return 4;
        }
    };
    // Served once `Ready` is out; dropped (closed, never shut down) if the
    // handoff fails before, and their clients see nothing.
    let passed = begun.take_connections();
    let (daemon, readiness) = match runtimes::start_successor(args, begun.listeners(), preloaded) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match begun.announce_and_bind(readiness, &args.control_socket) {
        Ok(incumbent) => {
            daemon.set_phase(Phase::Serving);
            daemon.serve_passed(passed);
            run_incumbent(
                args,
                &daemon,
                incumbent.with_build_id(args.version.as_bytes()),
            )
        }
        Err(e) => {
            // The lock went back with `begun`; no write was executed (they
            // wait for `Serving`). Send our clients back to the listener.
            log(format_args!("successor: {e}"));
            daemon.close(LINGER + Duration::from_secs(1));
            4
        }
    }
}

fn run_incumbent(args: &ServeArgs, daemon: &Arc<Daemon>, incumbent: Incumbent) -> i32 {
    let served = match args.runtime {
        Runtime::Std => incumbent.serve(&**daemon),
        Runtime::Mio => runtimes::serve_mio(daemon, incumbent),
        Runtime::Smol => runtimes::serve_smol(daemon, incumbent),
        Runtime::Tokio => runtimes::serve_tokio(daemon, incumbent),
    };
    finish(daemon, served)
}

/// After serving: close what is left, and the exit status.
fn finish(daemon: &Arc<Daemon>, served: Result<ServeEnd, ServeError>) -> i32 {
    // The process exits next. Freeing a sealed state of a million keys one
    // allocation at a time would only take a core from the successor; the
    // exit frees it at once. (A sealed store has no thread left.)
    if let Some(sealed) = lock_state(&daemon.state).sealed.take() {
        std::mem::forget(sealed);
    }
    match served {
        Ok(ServeEnd::Committed { .. }) => {
            // The successor serves; our connections were sent RETRY at the
            // drain and only linger now.
            daemon.close(LINGER + Duration::from_secs(1));
            0
        }
        Ok(other) => {
            log(format_args!("serve ended: {other:?}"));
            daemon.close(LINGER + Duration::from_secs(1));
            0
        }
        Err(e) => {
            log(format_args!("{e}"));
            daemon.close(LINGER + Duration::from_secs(1));
            5
        }
    }
}

/// Why a connection's serving period ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeriodEnd {
    /// The client closed, or the connection failed.
    Closed,
    /// The daemon drains: pass the connection, or tell the client to retry.
    Drained,
}

/// Where the daemon stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A successor before `Ready`: reads served, writes held.
    Starting,
    /// Accepting and executing everything.
    Serving,
    /// Drained: not accepting; every request is answered `RETRY`.
    Draining,
    /// The store is sealed (closed); as `Draining`.
    Sealed,
    /// Exiting.
    Closing,
}

impl Phase {
    fn accepting(self) -> bool {
        matches!(self, Phase::Starting | Phase::Serving)
    }
}

/// Tells every connection of one serving period that the period is over.
/// Raising it leaves a byte unread in the socket, so the read end stays
/// readable for every connection that polls it, now or later.
struct DrainSignal {
    rx: UnixStream,
    tx: UnixStream,
}

impl DrainSignal {
    fn new() -> io::Result<Arc<DrainSignal>> {
        let (rx, tx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        Ok(Arc::new(DrainSignal { rx, tx }))
    }

    fn raise(&self) {
        // A full buffer already holds a byte; nothing is lost.
        let _ = (&self.tx).write(&[1]);
    }
}

struct State {
    phase: Phase,
    store: Option<Arc<Store>>,
    /// Writes between their phase check and their answer from the store.
    in_flight: u32,
    /// Connections still taking requests.
    serving_conns: u32,
    /// Connections that got their `RETRY` and wait for the client to close.
    lingering_conns: u32,
    /// The accept loop is between seeing the phase accept and serving
    /// what it accepted.
    accepting: bool,
    /// Connections passed to the successor, untouched until the handoff
    /// ends: closed after a commit, served again after a resume.
    parked_conns: u32,
    /// How connections are passed in the handoff under way (unavailable
    /// outside one, or when a peer does not offer it).
    handover: Handover,
    /// Counts the serving periods: a resume starts a new one, which wakes
    /// the parked connections of the last.
    period: u64,
    /// The revision last sealed or opened, for reports while sealed.
    last_revision: u64,
    /// The store once sealed, kept (reads no longer use it) so that its
    /// memory is not freed in the seal hook, on the handoff's path.
    sealed: Option<Arc<Store>>,
    signal: Arc<DrainSignal>,
}

struct Daemon {
    /// `--fault`, for a successor.
    fault: Option<Fault>,
    version: String,
    data_dir: PathBuf,
    state: Mutex<State>,
    changed: Condvar,
    /// Wakes the accept loop to look at the phase again.
    acceptor_wake: UnixStream,
}

fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One answer: the bytes to write and whether the connection is done.
struct Answer {
    line: Vec<u8>,
    retry: bool,
}

impl Answer {
    fn text(s: impl Into<String>) -> Answer {
        let mut line = s.into().into_bytes();
        line.push(b'\n');
        Answer { line, retry: false }
    }

    fn retry() -> Answer {
        Answer {
            line: b"RETRY\n".to_vec(),
            retry: true,
        }
    }
}

impl Daemon {
    fn start(
        args: &ServeArgs,
        store: Store,
        phase: Phase,
        listener: TcpListener,
    ) -> io::Result<Arc<Daemon>> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let daemon = Arc::new(Daemon {
            fault: args.fault,
            version: args.version.clone(),
            data_dir: args.data_dir.clone(),
            state: Mutex::new(State {
                phase,
                last_revision: store.revision(),
                store: Some(Arc::new(store)),
                in_flight: 0,
                serving_conns: 0,
                lingering_conns: 0,
                accepting: false,
                parked_conns: 0,
                handover: Handover::unavailable(),
                period: 0,
                sealed: None,
                signal: DrainSignal::new()?,
            }),
            changed: Condvar::new(),
            acceptor_wake: wake_tx,
        });
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("kvd-accept".into())
            .spawn(move || d.accept_loop(&listener, &wake_rx))?;
        Ok(daemon)
    }

    fn set_phase(&self, phase: Phase) {
        let mut st = lock_state(&self.state);
        self.set_phase_locked(&mut st, phase);
    }

    fn set_phase_locked(&self, st: &mut State, phase: Phase) {
        if let (Phase::Starting, Phase::Serving, Some(Fault::CrashAfterReady(after))) =
            (st.phase, phase, self.fault)
        {
            // A successor serves from here (its Ready is out): the fault
            // is a crash while it is on probation, writes acknowledged.
            let _ = std::thread::Builder::new()
                .name("kvd-fault".into())
                .spawn(move || {
                    std::thread::sleep(after);
                    log(format_args!("--fault crash-after-ready: SIGKILL to itself"));
                    // SIGKILL, as the kernel's OOM killer or an operator's
                    // mistake would: nothing runs after it, no handler, no
                    // flush.
                    let _ = handoff_std::os::process::send_signal(
                        std::process::id(),
                        handoff_std::Signal::Kill,
                    );
                    std::process::abort();
                });
        }
        st.phase = phase;
        if !phase.accepting() {
            st.signal.raise();
        }
        self.changed.notify_all();
        let _ = (&self.acceptor_wake).write(&[1]);
    }

    /// Stops everything and waits (up to `bound`) for the connections to
    /// finish their linger.
    fn close(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut st = lock_state(&self.state);
        self.set_phase_locked(&mut st, Phase::Closing);
        while st.serving_conns + st.lingering_conns + st.parked_conns > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn accept_loop(self: Arc<Self>, listener: &TcpListener, wake: &UnixStream) {
        loop {
            let phase = lock_state(&self.state).phase;
            if phase == Phase::Closing {
                return;
            }
            // Not accepting: wait on the wake-up only, since the listener
            // stays readable while connections queue for the successor.
            let ready = if phase.accepting() {
                poll_readable(&[wake.as_fd(), listener.as_fd()], None)
            } else {
                poll_readable(&[wake.as_fd()], None)
            };
            let ready = match ready {
                Ok(r) => r,
                Err(e) => {
                    log(format_args!("accept loop: poll: {e}"));
                    return;
                }
            };
            if ready[0] {
                let mut sink = [0u8; 64];
                while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
            }
            if ready.get(1) != Some(&true) {
                continue;
            }
            {
                // Marked under the lock that says we accept: a drain waits
                // for this accept to end, so a connection taken as the
                // drain begins is passed with the others, not left behind.
                let mut st = lock_state(&self.state);
                if !st.phase.accepting() {
                    continue;
                }
                st.accepting = true;
            }
            // Blocking: only this process accepts until its drain is over
            // (a successor starts accepting after `Begin`), so the
            // connection the poll saw is still there.
            let accepted = listener.accept();
            let done = |d: &Self| {
                let mut st = lock_state(&d.state);
                st.accepting = false;
                d.changed.notify_all();
            };
            match accepted {
                Ok((stream, _)) => {
                    self.spawn_connection(stream, Vec::new());
                    done(&self);
                }
                Err(e) => {
                    done(&self);
                    if let Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) =
                        e.raw_os_error()
                    {
                        // Out of descriptors or memory: the listener stays
                        // readable, so polling again at once would spin.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Serves `stream` on a thread of its own, starting with the bytes in
    /// `pending` (those a predecessor had read from it and not answered).
    fn spawn_connection(self: &Arc<Self>, stream: TcpStream, pending: Vec<u8>) {
        let signal = {
            let mut st = lock_state(&self.state);
            st.serving_conns += 1;
            st.signal.clone()
        };
        let d = self.clone();
        // Small stacks: a connection's thread needs a few kilobytes, and
        // tens of thousands of idle clients are passed at a handoff.
        let spawned = std::thread::Builder::new()
            .name("kvd-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || d.connection(stream, signal, pending));
        if spawned.is_err() {
            let mut st = lock_state(&self.state);
            st.serving_conns -= 1;
            self.changed.notify_all();
        }
    }

    /// Serves the connections the incumbent passed, each from the state it
    /// passed (the bytes it had read and not answered). Call once `Ready`
    /// is out: until then the incumbent may take them back.
    fn serve_passed(self: &Arc<Self>, passed: Vec<PassedConnection>) {
        for conn in passed {
            match conn.into_tcp() {
                Ok((stream, pending)) => self.spawn_connection(stream, pending),
                // Closed here without a shutdown; whether the client
                // notices depends on the incumbent, which has closed its
                // copy by now only if it committed.
                Err(e) => log(format_args!("a passed connection: {e}")),
            }
        }
    }

    fn connection(&self, stream: TcpStream, signal: Arc<DrainSignal>, pending: Vec<u8>) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let mut conn = stream;
        let mut buf = pending;
        let mut signal = signal;
        loop {
            let end = self.serve_period(&mut conn, &mut buf, &signal);
            if end == PeriodEnd::Closed {
                let mut st = lock_state(&self.state);
                st.serving_conns -= 1;
                self.changed.notify_all();
                return;
            }
            // Passed: the successor answers what is in `buf`, and this
            // thread waits for the handoff's end without touching the
            // socket.
            let (handover, period) = {
                let st = lock_state(&self.state);
                (st.handover.clone(), st.period)
            };
            let parked = match handover.pass(conn.as_fd(), &buf) {
                Ok(()) => true,
                // The pass broke: the drain fails with it and the handoff
                // is undone, so this connection stays ours. It waits for
                // the resume like the passed ones rather than close.
                Err(PassError::Io(_)) => true,
                // No passing in this handoff (or the drain is over): the
                // client is told to reconnect.
                Err(_) => false,
            };
            if parked {
                let mut st = lock_state(&self.state);
                st.serving_conns -= 1;
                st.parked_conns += 1;
                self.changed.notify_all();
                while st.period == period && st.phase != Phase::Closing {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                st.parked_conns -= 1;
                if st.phase == Phase::Closing {
                    // Committed (or exiting): the successor has this socket.
                    // Dropping our descriptor closes nothing for the client.
                    self.changed.notify_all();
                    return;
                }
                // Resumed. If the successor served the connection, it
                // consumed what was passed; otherwise it is still ours.
                if handover.taken_by_successor() {
                    buf.clear();
                }
                st.serving_conns += 1;
                signal = st.signal.clone();
                continue;
            }
            // Not passed (a reference peer, or the pass broke): the client
            // reconnects.
            {
                let mut st = lock_state(&self.state);
                st.serving_conns -= 1;
                st.lingering_conns += 1;
                self.changed.notify_all();
            }
            self.linger(&mut conn);
            let mut st = lock_state(&self.state);
            st.lingering_conns -= 1;
            self.changed.notify_all();
            return;
        }
    }

    /// Answers requests until the client closes, the connection fails, or
    /// the daemon drains. A request that would be answered `RETRY` because
    /// of the drain stays in `buf`, unanswered, so that a successor the
    /// connection is passed to answers it instead.
    fn serve_period(
        &self,
        conn: &mut TcpStream,
        buf: &mut Vec<u8>,
        signal: &DrainSignal,
    ) -> PeriodEnd {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let answer = {
                    let line = &buf[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    self.handle(line)
                };
                if answer.retry {
                    return PeriodEnd::Drained;
                }
                buf.drain(..=nl);
                if conn.write_all(&answer.line).is_err() {
                    return PeriodEnd::Closed;
                }
                continue;
            }
            if buf.len() >= MAX_LINE {
                let _ = conn.write_all(b"ERR request line too long\n");
                return PeriodEnd::Closed;
            }
            let ready = match poll_readable(&[conn.as_fd(), signal.rx.as_fd()], None) {
                Ok(r) => r,
                Err(_) => return PeriodEnd::Closed,
            };
            if ready[1] {
                return PeriodEnd::Drained;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return PeriodEnd::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Without passing: writes `RETRY` (the answer to a request the drain
    /// stopped, or unprompted), then waits (up to the linger) for the
    /// client to close.
    fn linger(&self, conn: &mut TcpStream) {
        let mut chunk = [0u8; 4096];
        let _ = conn.write_all(b"RETRY\n");
        // FIN, not RST: closing with unread bytes would reset the
        // connection and could destroy the RETRY before the client reads
        // it. Read and discard until the client closes.
        let _ = conn.shutdown(Shutdown::Write);
        let deadline = Instant::now() + LINGER;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match poll_readable(&[conn.as_fd()], Some(left)) {
                Ok(r) if r[0] => {}
                _ => break,
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn handle(&self, line: &[u8]) -> Answer {
        let (command, rest) = match line.iter().position(|&b| b == b' ') {
            Some(i) => (&line[..i], Some(&line[i + 1..])),
            None => (line, None),
        };
        match (command, rest) {
            (b"SET", Some(rest)) => {
                let Some(space) = rest.iter().position(|&b| b == b' ') else {
                    return Answer::text("ERR usage: SET <key> <value>");
                };
                let (key, value) = (&rest[..space], &rest[space + 1..]);
                if value.is_empty() {
                    return Answer::text("ERR usage: SET <key> <value> (empty value)");
                }
                self.set(key, value)
            }
            (b"GET", Some(key)) => {
                let Some(store) = self.readable_store() else {
                    return Answer::retry();
                };
                if let Err(e) = crate::store::check_key(key) {
                    return Answer::text(format!("ERR {e}"));
                }
                match store.get(key) {
                    Some(v) => {
                        let mut line = b"VALUE ".to_vec();
                        line.extend_from_slice(&v);
                        line.push(b'\n');
                        Answer { line, retry: false }
                    }
                    None => Answer::text("NONE"),
                }
            }
            (b"VERSION", None) => {
                if self.readable_store().is_none() {
                    return Answer::retry();
                }
                Answer::text(format!("VERSION {} {}", self.version, std::process::id()))
            }
            _ => {
                if self.readable_store().is_none() {
                    return Answer::retry();
                }
                Answer::text(format!(
                    "ERR unknown request {:?}; expected SET <key> <value>, GET <key> or VERSION",
                    String::from_utf8_lossy(&line[..line.len().min(64)])
                ))
            }
        }
    }

    /// The store, if the phase allows reading now.
    fn readable_store(&self) -> Option<Arc<Store>> {
        let st = lock_state(&self.state);
        if st.phase.accepting() {
            st.store.clone()
        } else {
            None
        }
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Answer {
        let store = {
            let mut st = lock_state(&self.state);
            // A successor holds writes until its Ready is out: if the
            // handoff fails it must give the lock back having written
            // nothing.
            while st.phase == Phase::Starting {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.phase != Phase::Serving {
                return Answer::retry();
            }
            let Some(store) = st.store.clone() else {
                return Answer::retry();
            };
            st.in_flight += 1;
            store
        };
        let result = store.set(key, value);
        {
            let mut st = lock_state(&self.state);
            st.in_flight -= 1;
            self.changed.notify_all();
        }
        match result {
            Ok(revision) => Answer::text(format!("OK {revision}")),
            // Sealed under our feet cannot happen (the seal waits for
            // in-flight writes), but if it did the write was not done.
            Err(StoreError::Closed) => Answer::retry(),
            Err(e) => Answer::text(format!("ERR {e}")),
        }
    }

    /// Waits until no write is executing, up to `deadline`.
    fn wait_writes<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        deadline: Instant,
        conns_too: bool,
    ) -> (MutexGuard<'a, State>, bool) {
        loop {
            let busy = st.in_flight > 0 || (conns_too && (st.serving_conns > 0 || st.accepting));
            if !busy {
                return (st, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (st, false);
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drainable for Daemon {
    fn drain(&self, deadline: Instant, handover: Handover) -> Result<DrainReport, HookError> {
        let mut st = lock_state(&self.state);
        st.handover = handover;
        if st.phase.accepting() {
            self.set_phase_locked(&mut st, Phase::Draining);
        }
        // Every connection answers what it has read and is passed to the
        // successor with what it has not, or (without passing) writes its
        // RETRY and lingers; past the deadline we report what is left.
        let (st, _) = self.wait_writes(st, deadline, true);
        Ok(DrainReport {
            open_conns_remaining: st.serving_conns + st.lingering_conns,
            accept_closed: true,
        })
    }

    fn seal(&self, progress: &SealProgress) -> Result<SealReport, HookError> {
        let store = {
            let mut st = lock_state(&self.state);
            if st.phase != Phase::Sealed {
                self.set_phase_locked(&mut st, Phase::Sealed);
            }
            let (mut st, idle) = self.wait_writes(st, Instant::now() + SEAL_WAIT, false);
            if !idle {
                return Err("writes still executing after 10 s; not sealing".into());
            }
            st.store.take().ok_or("the store is already sealed")?
        };
        // O(1) in the state's size, and on a full disk too: no snapshot is
        // written (see `Store::seal`).
        let sealed = store.seal()?;
        if sealed.compaction_stopped {
            log(format_args!(
                "sealed while compacting: the compaction stopped, and the successor \
                 compacts the frozen log"
            ));
        }
        progress.report(1, 1, sealed.revision);
        {
            let mut st = lock_state(&self.state);
            st.last_revision = sealed.revision;
            st.sealed = Some(store);
        }
        Ok(SealReport {
            last_revision_per_shard: vec![sealed.revision],
            data_dir_fingerprint: sealed.fingerprint,
        })
    }

    fn resume_after_abort(&self) -> Result<(), HookError> {
        // Sealed (or the seal failed half-way): the state on disk is the
        // truth, so read it again. Only drained: the open store is intact.
        let sealed = lock_state(&self.state).store.is_none();
        let reopened = if sealed {
            Some(Arc::new(Store::open_with(&self.data_dir, store_config())?))
        } else {
            None
        };
        let signal = DrainSignal::new()?;
        let mut st = lock_state(&self.state);
        if let Some(store) = reopened {
            st.last_revision = store.revision();
            st.store = Some(store);
            st.sealed = None;
        }
        st.signal = signal;
        // The connections passed in the drain are served again.
        st.period += 1;
        st.handover = Handover::unavailable();
        self.set_phase_locked(&mut st, Phase::Serving);
        Ok(())
    }

    fn snapshot_state(&self) -> StateSnapshot {
        let st = lock_state(&self.state);
        let revision = st.store.as_ref().map_or(st.last_revision, |s| s.revision());
        StateSnapshot {
            shard_count: 1,
            open_conns: st.serving_conns + st.lingering_conns,
            last_revision_per_shard: vec![revision],
        }
    }
}

/// One handoff, as a supervisor process: the listener inherited as `kv`,
/// the successor `--binary` with the same control socket and data dir.
fn supervise(args: &SuperviseArgs) -> i32 {
    let mut listeners = match detect_role() {
        Ok(Role::ColdStart { listeners }) => listeners,
        Ok(Role::Successor(_)) => {
            log(format_args!(
                "supervise: started as a successor; run it cold with the listener {LISTENER_NAME:?}"
            ));
            return 2;
        }
        Err(e) => {
            log(format_args!("supervise: {e}"));
            return 2;
        }
    };
    let listener = match listeners.take_tcp(LISTENER_NAME, Mode::Blocking) {
        Ok(l) => l,
        Err(e) => {
            log(format_args!("supervise: {e}"));
            return 2;
        }
    };
    let mut sup = match Supervisor::new(&args.control_socket)
        .and_then(|s| s.with_listener(LISTENER_NAME, listener))
    {
        Ok(s) => s,
        Err(e) => {
            log(format_args!("supervise: {e}"));
            return 2;
        }
    };
    if let Some(journal) = &args.journal {
        sup = sup.with_journal(journal);
    }
    let mut spec = SpawnSpec::new(&args.binary)
        .arg("--control-socket")
        .arg(&args.control_socket)
        .arg("--data-dir")
        .arg(&args.data_dir);
    if let Some(v) = &args.version {
        spec = spec.arg("--version").arg(v);
    }
    match sup.perform_handoff(spec) {
        Ok(outcome) => {
            let reason = match &outcome.result {
                Ok(()) => "none".to_owned(),
                Err(r) => r.to_string(),
            };
            println!(
                "outcome committed={} abort_reason={reason} successor_pid={}",
                outcome.committed(),
                outcome.successor_pid.unwrap_or(0)
            );
            // The new incumbent outlives us (its parent becomes init or a
            // subreaper), as it would if a real supervisor restarted.
            if outcome.committed() { 0 } else { 1 }
        }
        Err(e) => {
            log(format_args!("supervise: {e}"));
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_command_line_is_strict() {
        let ok = parse_args(&args(
            "--control-socket /c --data-dir /d --listen 127.0.0.1:1",
        ));
        assert!(matches!(
            ok,
            Ok(Command::Serve(ServeArgs {
                listen: Some(_),
                ..
            }))
        ));
        assert!(parse_args(&args("--control-socket /c --data-dir /d --bogus 1")).is_err());
        assert!(parse_args(&args("--control-socket /c")).is_err());
        assert!(parse_args(&args("--control-socket /c --data-dir /d --listen nope")).is_err());
        assert!(parse_args(&args("--control-socket /c --data-dir /d --binary /b")).is_err());
        assert!(matches!(
            parse_args(&args(
                "supervise --control-socket /c --data-dir /d --binary /b"
            )),
            Ok(Command::Supervise(_))
        ));
        assert!(
            parse_args(&args(
                "--control-socket /c --control-socket /d --data-dir /d"
            ))
            .is_err()
        );
    }
}
