//! The conformance daemon: the test binary re-executed with
//! `HANDOFF_DAEMON_ARGS`, serving the counter [`Service`] with the handoff
//! plumbing of one runtime (std, mio, smol or tokio), or supervising one handoff.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use handoff_driver::reactor::{self as roles, HandshookSuccessor, Reactor};
use handoff_mio::{IncumbentEvent, MioIncumbent, MioSuccessor, SuccessorEvent};
use handoff_std::os::listeners::{InheritedListeners, Mode};
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, IncumbentConfig, IncumbentEnd,
    ReadyReport, Role, SealProgress, SealReport, Successor, SuccessorConfig, SuccessorError,
    Supervisor, detect_role,
};
use mio::{Events, Poll, Token, Waker};

use super::Runtime;
use super::service::{Service, flag};

struct Args {
    mode: String,
    runtime: Runtime,
    successor_runtime: Runtime,
    control: PathBuf,
    data: PathBuf,
    journal: Option<PathBuf>,
    /// `supervise`: the handoff's deadline, if not the default.
    deadline_ms: Option<u64>,
}

fn parse(raw: &str) -> Args {
    let words: Vec<&str> = raw.split_whitespace().collect();
    let get = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .map(|s| s.to_string())
    };
    Args {
        mode: words.first().map(|s| s.to_string()).unwrap_or_default(),
        runtime: Runtime::parse(&get("--runtime").unwrap_or_default()),
        successor_runtime: Runtime::parse(
            &get("--successor-runtime").unwrap_or_else(|| "std".into()),
        ),
        control: PathBuf::from(get("--control-socket").expect("--control-socket")),
        data: PathBuf::from(get("--data-dir").expect("--data-dir")),
        journal: get("--journal").map(PathBuf::from),
        deadline_ms: get("--deadline-ms").map(|v| v.parse().expect("--deadline-ms")),
    }
}

/// The daemon's `main`; returns the exit status.
pub fn main(raw: &str) -> i32 {
    let args = parse(raw);
    if args.mode == "supervise" {
        return supervise(&args);
    }
    if args.mode == "probe" {
        return probe(&args);
    }
    // Read before detect_role takes it: `ready-after-abort` watches it.
    let sock_fd: Option<i32> = std::env::var("HANDOFF_SOCK_FD")
        .ok()
        .and_then(|v| v.parse().ok());
    let role = detect_role().expect("start-up environment");
    if flag("ignore-term") {
        handoff_std::os::signals::ignore_terminate();
    }
    match role {
        Role::ColdStart { mut listeners } => {
            let listener = listeners.take_tcp("main", Mode::Blocking).expect("main");
            let lock = DataDirLock::acquire_or_break_stale(&args.data).expect("lock");
            let incumbent = Incumbent::bind_cold_start(&args.control, lock)
                .expect("control")
                .with_config(incumbent_config());
            let service = Service::open(&args.data);
            service.start(listener);
            println!("ready {}", std::process::id());
            serve(args.runtime, incumbent, service)
        }
        Role::Successor(successor) => {
            if let Some(ms) = super::service::number("startup-ms") {
                std::thread::sleep(Duration::from_millis(ms));
            }
            if flag("crash-before-hello") {
                return 3;
            }
            SOCK_FD.store(sock_fd.unwrap_or(-1), std::sync::atomic::Ordering::Relaxed);
            let successor = successor.with_config(successor_config());
            match args.runtime {
                Runtime::Std => successor_std(successor, &args),
                Runtime::Mio => successor_mio(successor, &args),
                Runtime::Smol => async_io::block_on(successor_async(
                    handoff_smol::handshake(successor, b"conformance-smol"),
                    args.data.clone(),
                    args.control.clone(),
                    "smol",
                )),
                Runtime::Tokio | Runtime::TokioCt => {
                    let (data, control) = (args.data.clone(), args.control.clone());
                    args.runtime.run_tokio(successor_async(
                        handoff_tokio::handshake(successor, b"conformance-tokio"),
                        data,
                        control,
                        "tokio",
                    ))
                }
            }
        }
    }
}

/// The incumbent's timings: `heartbeat-ms=N` sets how often it heartbeats
/// while a hook runs.
fn incumbent_config() -> IncumbentConfig {
    let mut c = IncumbentConfig::default();
    if let Some(ms) = super::service::number("heartbeat-ms") {
        c.heartbeat_interval = Duration::from_millis(ms);
    }
    c
}

/// The successor's timings: `heartbeat-ms=N` as for the incumbent.
fn successor_config() -> SuccessorConfig {
    let mut c = SuccessorConfig::default();
    if let Some(ms) = super::service::number("heartbeat-ms") {
        c.heartbeat_interval = Duration::from_millis(ms);
    }
    c
}

/// `open-ms=N`: opening the state after `Begin` takes this long, while the
/// protocol goes on (unlike `hang-after-begin`, which stops the daemon).
fn open_delay() -> Option<Duration> {
    super::service::number("open-ms").map(Duration::from_millis)
}

/// The successor's end of its control socketpair, for `ready-after-abort`.
static SOCK_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// With `AUTHORITATIVE_MARKER` set, writes this process's pid there: it
/// took over (its `Ready` went out and it became the incumbent).
///
/// With `crash-after-ready` it exits `after-ready-ms` later, with
/// `freeze-after-ready` it stops itself (`SIGSTOP`) then: a new binary
/// that fails while on probation.
fn mark_authoritative() {
    if let Some(path) = std::env::var_os("AUTHORITATIVE_MARKER") {
        let _ = std::fs::write(path, std::process::id().to_string());
    }
    let after = Duration::from_millis(super::service::number("after-ready-ms").unwrap_or(100));
    if flag("crash-after-ready") {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            std::process::exit(7);
        });
    }
    if flag("freeze-after-ready") {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
        });
    }
}

fn after_begin() -> Option<i32> {
    if flag("exit-after-begin") {
        return Some(4);
    }
    if let Some(path) = std::env::var_os("RENDEZVOUS") {
        // Checks in with the test and waits for its word, which it gives
        // only once every successor it expects has checked in: a closed
        // connection instead means they never were all there at once.
        let word = UnixStream::connect(&path).and_then(|mut s| {
            s.set_read_timeout(Some(super::BOUND))?;
            let mut b = [0u8; 1];
            std::io::Read::read(&mut s, &mut b)
        });
        if !matches!(word, Ok(1)) {
            eprintln!("rendezvous: no word from the test: {word:?}");
            return Some(6);
        }
    }
    if flag("ready-after-abort") {
        // Holds `Ready` back until the supervisor has written again (its
        // `Abort` at the deadline) or hung up, without reading: the bytes
        // stay queued for the adapter's `Ready` to meet.
        let fd = SOCK_FD.load(std::sync::atomic::Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: the descriptor is this process's control socket,
            // open for its whole life; it is only borrowed for the poll.
            #[allow(unsafe_code)]
            let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = handoff_std::os::process::poll_readable(&[sock], Some(Duration::from_secs(30)));
        }
    }
    if flag("hang-after-begin") {
        loop {
            std::thread::park();
        }
    }
    None
}

fn take_main(listeners: &mut InheritedListeners) -> TcpListener {
    listeners.take_tcp("main", Mode::Blocking).expect("main")
}

fn readiness(listener: &TcpListener, service: &Service) -> ReadyReport {
    ReadyReport {
        listening_on: vec![listener.local_addr().unwrap().to_string()],
        healthz_ok: true,
        advertised_revision_per_shard: vec![service.value()],
    }
}

fn serve(runtime: Runtime, incumbent: Incumbent, service: Arc<Service>) -> i32 {
    match runtime {
        Runtime::Std => match incumbent.serve(&StdHooks(service)) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("std incumbent: {e}");
                10
            }
        },
        Runtime::Mio => serve_mio(MioIncumbent::new(incumbent).unwrap(), service),
        Runtime::Smol => {
            let served = async_io::block_on(handoff_smol::serve(incumbent, &AsyncHooks(service)));
            served_status("smol", served)
        }
        rt @ (Runtime::Tokio | Runtime::TokioCt) => {
            let served =
                rt.run_tokio(
                    async move { handoff_tokio::serve(incumbent, &AsyncHooks(service)).await },
                );
            served_status("tokio", served)
        }
    }
}

/// An async incumbent's exit status.
fn served_status(who: &str, served: Result<handoff_std::ServeEnd, handoff_std::ServeError>) -> i32 {
    match served {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("{who} incumbent: {e}");
            10
        }
    }
}

// ------------------------------------------------------------------- std

struct StdHooks(Arc<Service>);

impl Drainable for StdHooks {
    fn drain(
        &self,
        _deadline: std::time::Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        self.0.drain_blocking();
        Ok(DrainReport {
            open_conns_remaining: 0,
            accept_closed: true,
        })
    }

    fn seal(&self, _progress: &SealProgress) -> Result<SealReport, HookError> {
        self.0.seal().map_err(Into::into)
    }

    fn resume_after_abort(&self) -> Result<(), HookError> {
        self.0.resume();
        Ok(())
    }
}

fn successor_std(successor: Successor, args: &Args) -> i32 {
    let begun = successor
        .handshake(b"conformance-std")
        .and_then(|h| h.wait_for_begin(&args.data));
    let mut begun = match begun {
        Ok(b) => b,
        Err(e) => {
            eprintln!("std successor: {e}");
            return 5;
        }
    };
    if let Some(code) = after_begin() {
        return code;
    }
    let listener = take_main(begun.listeners());
    if let Some(d) = open_delay() {
        std::thread::sleep(d);
    }
    let service = Service::open(&args.data);
    let ready = readiness(&listener, &service);
    service.start(listener);
    match begun.announce_and_bind(ready, &args.control) {
        Ok(incumbent) => {
            mark_authoritative();
            serve(Runtime::Std, incumbent, service)
        }
        Err(e) => {
            eprintln!("std successor: {e}");
            5
        }
    }
}

// ------------------------------------------------------------------- mio

const CONTROL: Token = Token(1);
const SESSION: Token = Token(2);
const WAKE: Token = Token(3);
const SUCCESSOR: Token = Token(4);

enum Done {
    Drained,
    Sealed(Result<SealReport, String>),
}

fn wait(poll: &mut Poll, events: &mut Events, timeout: Option<std::time::Instant>) {
    let t = timeout.map(|t| t.saturating_duration_since(std::time::Instant::now()));
    if let Err(e) = poll.poll(events, t) {
        // epoll_wait is not restarted after a stop and continue (a frozen
        // cgroup): a wake-up with no events.
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
    }
}

fn serve_mio(mut control: MioIncumbent, service: Arc<Service>) -> i32 {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    control.register(poll.registry(), CONTROL, SESSION).unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let (tx, rx) = mpsc::channel::<Done>();
    loop {
        wait(&mut poll, &mut events, control.poll_timeout());
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        control.handle_timeout(poll.registry());
        while let Ok(done) = rx.try_recv() {
            match done {
                Done::Drained => control.drained(poll.registry(), DrainReport::default()),
                Done::Sealed(Ok(out)) => control.sealed(poll.registry(), &out),
                Done::Sealed(Err(e)) => control.seal_failed(poll.registry(), &e),
            }
        }
        while let Some(event) = control.poll_event() {
            match event {
                // The daemon finishes drains and seals off the loop and
                // reports back through the waker: nothing blocks the loop.
                IncumbentEvent::Drain { .. } => {
                    let (s, tx, w) = (service.clone(), tx.clone(), waker.clone());
                    std::thread::spawn(move || {
                        s.drain_blocking();
                        let _ = tx.send(Done::Drained);
                        let _ = w.wake();
                    });
                }
                IncumbentEvent::Seal => {
                    let (s, tx, w) = (service.clone(), tx.clone(), waker.clone());
                    std::thread::spawn(move || {
                        let _ = tx.send(Done::Sealed(s.seal()));
                        let _ = w.wake();
                    });
                }
                IncumbentEvent::Resume => {
                    service.resume();
                    control.resumed(poll.registry());
                }
                IncumbentEvent::SessionEnded(IncumbentEnd::Serving(_)) => {}
                IncumbentEvent::SessionEnded(IncumbentEnd::Committed) => return 0,
                IncumbentEvent::SessionEnded(other) => {
                    eprintln!("mio incumbent: {other}");
                    return 10;
                }
                _ => {}
            }
        }
    }
}

fn successor_mio(successor: Successor, args: &Args) -> i32 {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(64);
    let mut s = MioSuccessor::start(
        successor,
        poll.registry(),
        SUCCESSOR,
        b"conformance-mio",
        &args.data,
        successor_config(),
    )
    .unwrap();
    let mut service: Option<Arc<Service>> = None;
    // With `open-ms`, when the state is open and `ready` may be called.
    let mut open_at: Option<std::time::Instant> = None;
    loop {
        let t = [s.poll_timeout(), open_at].into_iter().flatten().min();
        wait(&mut poll, &mut events, t);
        for event in &events {
            s.handle_event(poll.registry(), event);
        }
        s.handle_timeout(poll.registry());
        if open_at.is_some_and(|t| t <= std::time::Instant::now()) {
            open_at = None;
            let listener = take_main(s.listeners());
            let svc = Service::open(&args.data);
            let ready = readiness(&listener, &svc);
            svc.start(listener);
            service = Some(svc);
            if let Err(e) = s.ready(poll.registry(), &ready, &args.control) {
                eprintln!("mio successor: control socket: {e}");
                return 4;
            }
        }
        while let Some(event) = s.poll_event() {
            match event {
                SuccessorEvent::Begun => {
                    if let Some(code) = after_begin() {
                        return code;
                    }
                    if let Some(d) = open_delay() {
                        open_at = Some(std::time::Instant::now() + d);
                        continue;
                    }
                    let listener = take_main(s.listeners());
                    let svc = Service::open(&args.data);
                    let ready = readiness(&listener, &svc);
                    svc.start(listener);
                    service = Some(svc);
                    if let Err(e) = s.ready(poll.registry(), &ready, &args.control) {
                        eprintln!("mio successor: control socket: {e}");
                        return 4;
                    }
                }
                SuccessorEvent::Authoritative { .. } => {
                    let control = s.into_incumbent(poll.registry()).unwrap();
                    mark_authoritative();
                    drop(poll);
                    return serve_mio(control, service.expect("started"));
                }
                SuccessorEvent::Failed {
                    failure,
                    abort_reason,
                } => {
                    eprintln!("mio successor: {failure} {abort_reason}");
                    return 5;
                }
                _ => {}
            }
        }
    }
}

// ----------------------------------------------------------- smol, tokio

/// Runs `f` on a thread of its own and waits for it without blocking the
/// executor, on any runtime: the thread wakes the task when it is done.
fn on_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = T> + Send {
    type Slot<T> = Arc<std::sync::Mutex<(Option<T>, Option<std::task::Waker>)>>;
    let slot: Slot<T> = Arc::default();
    let theirs = slot.clone();
    std::thread::spawn(move || {
        let v = f();
        let mut s = theirs.lock().unwrap();
        s.0 = Some(v);
        if let Some(w) = s.1.take() {
            w.wake();
        }
    });
    std::future::poll_fn(move |cx| {
        let mut s = slot.lock().unwrap();
        match s.0.take() {
            Some(v) => std::task::Poll::Ready(v),
            None => {
                s.1 = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    })
}

/// The service's hooks as async fns, for smol and tokio alike (the trait
/// is the driver's, re-exported by both).
struct AsyncHooks(Arc<Service>);

impl handoff_smol::AsyncDrainable for AsyncHooks {
    async fn drain(
        &self,
        _deadline: std::time::Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        // The blocking drain waits on the service's idle condvar.
        let service = self.0.clone();
        on_thread(move || service.drain_blocking()).await;
        Ok(DrainReport {
            open_conns_remaining: 0,
            accept_closed: true,
        })
    }

    async fn seal(&self) -> Result<SealReport, HookError> {
        self.0.seal().map_err(Into::into)
    }

    async fn resume_after_abort(&self) -> Result<(), HookError> {
        self.0.resume();
        Ok(())
    }
}

/// The successor's side on an async adapter, from its `handshake`.
async fn successor_async<R: Reactor + Default>(
    handshake: impl std::future::Future<Output = Result<HandshookSuccessor<R>, SuccessorError>>,
    data: PathBuf,
    control: PathBuf,
    who: &'static str,
) -> i32 {
    let handshook = match handshake.await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{who} successor: {e}");
            return 5;
        }
    };
    let mut begun = match handshook.wait_for_begin(&data).await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{who} successor: {e}");
            return 5;
        }
    };
    if let Some(code) = after_begin() {
        return code;
    }
    let listener = take_main(begun.listeners());
    let opened = data.clone();
    let open = on_thread(move || {
        if let Some(d) = open_delay() {
            std::thread::sleep(d);
        }
        Service::open(&opened)
    });
    let service = match begun.start_up(open).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{who} successor: {e}");
            return 5;
        }
    };
    let ready = readiness(&listener, &service);
    service.start(listener);
    match begun.announce_and_bind(ready, &control).await {
        Ok(incumbent) => {
            mark_authoritative();
            // What the adapter's `serve` is: the driver's, with its reactor.
            let served = roles::serve(R::default(), incumbent, &AsyncHooks(service)).await;
            served_status(who, served)
        }
        Err(e) => {
            eprintln!("{who} successor: {e}");
            5
        }
    }
}

// ---------------------------------------------------------------- probe

/// Connects to the control socket as whoever runs this, and says how many
/// bytes came before the incumbent hung up (or the first read, if it did
/// not): a supervisor it does not permit reads 0.
fn probe(args: &Args) -> i32 {
    let mut s = match UnixStream::connect(&args.control) {
        Ok(s) => s,
        Err(e) => {
            println!("probe connect failed: {e}");
            return 1;
        }
    };
    s.set_read_timeout(Some(super::BOUND)).unwrap();
    let mut buf = [0u8; 256];
    let n = loop {
        match std::io::Read::read(&mut s, &mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(n) => break n,
            Err(e) => {
                println!("probe read failed: {e}");
                return 1;
            }
        }
    };
    println!("probe read {n} bytes");
    0
}

// ------------------------------------------------------------ supervise

/// One handoff in the given runtime, the listener `main` inherited; the
/// successor is this binary in `--successor-runtime`.
fn supervise(args: &Args) -> i32 {
    let mut env = handoff_std::os::env::take_startup_env().expect("env");
    let listener = env
        .listeners
        .take_tcp("main", Mode::Blocking)
        .expect("main");
    let mut sup = Supervisor::new(&args.control)
        .and_then(|s| s.with_listener("main", listener))
        .expect("supervisor");
    if let Some(j) = &args.journal {
        sup = sup.with_journal(j);
    }
    let mut spec = super::successor_spec(args.successor_runtime, &args.control, &args.data, "");
    if let Some(ms) = args.deadline_ms {
        spec.deadline = Duration::from_millis(ms);
    }
    let outcome = super::run_handoff(args.runtime, &Arc::new(sup), spec);
    println!("outcome committed={}", outcome.committed());
    0
}
