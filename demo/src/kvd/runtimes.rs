//! kvd's side of a handoff on handoff-mio, handoff-smol and handoff-tokio.
//! The data plane (connection threads, the store, what drain and seal do)
//! is the same in every runtime; only the control plane changes. The hooks
//! are blocking calls into the daemon, so each runs off the loop and
//! reports back: on a thread of its own through a `mio::Waker` to the mio
//! loop, on a thread of its own through a socket the smol future awaits,
//! on tokio's blocking pool through the task's `JoinHandle`. No loop ever
//! blocks on a hook.
//!
//! smol and tokio share everything but that offloading ([`Offload`]): one
//! hooks wrapper ([`Threaded`]) and one successor start-up
//! ([`become_incumbent`]), generic over it and over the adapter's reactor.

use std::future::Future;
use std::io::Write;
use std::marker::PhantomData;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff_driver::reactor::{HandshookSuccessor, Reactor};
use handoff_mio::{IncumbentEvent, MioIncumbent, MioSuccessor, SuccessorEvent};
use handoff_std::os::listeners::Mode;
use handoff_std::{
    Capabilities, DataDirLock, DrainReport, Drainable, Endpoint, Handover, HookError, Incumbent,
    IncumbentEnd, ReadyReport, SealProgress, SealReport, ServeEnd, ServeError, StateSnapshot,
    SuccessorConfig, SuccessorError,
};
use mio::{Events, Poll, Token, Waker};

use super::{
    Daemon, Fault, LINGER, LISTENER_NAME, Phase, Preloaded, ServeArgs, Store, finish, log,
    store_config,
};

const CONTROL: Token = Token(0);
const SESSION: Token = Token(1);
const WAKE: Token = Token(2);
const SUCCESSOR: Token = Token(3);

/// A hook's result, from its thread.
enum Done {
    Drained(Result<DrainReport, String>),
    Sealed(Result<SealReport, String>),
    Resumed(Result<(), String>),
    Progress(u32, u32, u64),
}

fn wait(poll: &mut Poll, events: &mut Events, deadline: Option<std::time::Instant>) {
    let timeout = deadline.map(|t| t.saturating_duration_since(std::time::Instant::now()));
    if let Err(e) = poll.poll(events, timeout)
        && e.kind() != std::io::ErrorKind::Interrupted
    {
        log(format_args!("poll: {e}"));
    }
}

/// Serves the control socket from a mio loop, with the build id set on
/// `incumbent`.
pub(super) fn serve_mio(
    daemon: &Arc<Daemon>,
    incumbent: Incumbent,
) -> Result<ServeEnd, ServeError> {
    let control = MioIncumbent::new(incumbent).map_err(ServeError::Io)?;
    serve_mio_control(daemon, control)
}

fn serve_mio_control(
    daemon: &Arc<Daemon>,
    mut control: MioIncumbent,
) -> Result<ServeEnd, ServeError> {
    let mut poll = Poll::new().map_err(ServeError::Io)?;
    let mut events = Events::with_capacity(64);
    control
        .register(poll.registry(), CONTROL, SESSION)
        .map_err(ServeError::Io)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).map_err(ServeError::Io)?);
    let (tx, rx) = mpsc::channel::<Done>();
    let hook = |f: Box<dyn FnOnce() -> Done + Send>| {
        let (tx, waker) = (tx.clone(), waker.clone());
        std::thread::spawn(move || {
            let _ = tx.send(f());
            let _ = waker.wake();
        });
    };
    loop {
        wait(&mut poll, &mut events, control.poll_timeout());
        for event in &events {
            control.handle_event(poll.registry(), event);
        }
        control.handle_timeout(poll.registry());
        while let Ok(done) = rx.try_recv() {
            let r = poll.registry();
            match done {
                Done::Drained(Ok(report)) => control.drained(r, report),
                Done::Drained(Err(_)) => control.drain_failed(r),
                Done::Sealed(Ok(out)) => control.sealed(r, &out),
                Done::Sealed(Err(e)) => control.seal_failed(r, &e),
                Done::Resumed(Ok(())) => control.resumed(r),
                Done::Resumed(Err(e)) => {
                    log(format_args!("resume: {e}"));
                    control.resume_failed(r);
                }
                Done::Progress(sealed, total, rev) => control.seal_progress(r, sealed, total, rev),
            }
        }
        while let Some(event) = control.poll_event() {
            match event {
                IncumbentEvent::Drain { deadline, handover } => {
                    let d = daemon.clone();
                    hook(Box::new(move || {
                        Done::Drained(d.drain(deadline, handover).map_err(|e| e.to_string()))
                    }));
                }
                IncumbentEvent::Seal => {
                    let d = daemon.clone();
                    let (ptx, pwaker) = (tx.clone(), waker.clone());
                    hook(Box::new(move || {
                        let (progress_tx, progress_rx) = mpsc::channel();
                        let progress = SealProgress::new(progress_tx, Box::new(|| {}));
                        let sealed = d.seal(&progress).map_err(|e| e.to_string());
                        for (a, b, c) in progress_rx.try_iter() {
                            let _ = ptx.send(Done::Progress(a, b, c));
                        }
                        let _ = pwaker.wake();
                        Done::Sealed(sealed)
                    }));
                }
                IncumbentEvent::Resume => {
                    let d = daemon.clone();
                    hook(Box::new(move || {
                        Done::Resumed(d.resume_after_abort().map_err(|e| e.to_string()))
                    }));
                }
                IncumbentEvent::SessionEnded(IncumbentEnd::Serving(_)) => {}
                IncumbentEvent::SessionEnded(IncumbentEnd::Committed) => {
                    return Ok(ServeEnd::Committed {
                        snapshot: daemon.snapshot_state(),
                    });
                }
                IncumbentEvent::SessionEnded(IncumbentEnd::Superseded(cause)) => {
                    return Err(ServeError::Superseded {
                        cause,
                        holder_pid: DataDirLock::recorded_holder(&daemon.data_dir),
                    });
                }
                IncumbentEvent::SessionEnded(IncumbentEnd::ResumeFailed(cause)) => {
                    return Err(ServeError::ResumeFailed {
                        cause,
                        error: "the resume hook failed".into(),
                    });
                }
                // As the blocking adapter's `serve` would end.
                IncumbentEvent::ControlSocketFailed(error) => {
                    return Err(ServeError::Io(std::io::Error::other(error)));
                }
                _ => {}
            }
        }
    }
}

/// The successor's side on a mio loop.
pub(super) fn take_over_mio(
    args: &ServeArgs,
    successor: handoff_std::Successor,
    preloaded: Option<Preloaded>,
) -> i32 {
    let mut preloaded = preloaded;
    let mut poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            log(format_args!("successor: {e}"));
            return 4;
        }
    };
    let mut events = Events::with_capacity(64);
    let mut s = match MioSuccessor::start(
        successor,
        poll.registry(),
        SUCCESSOR,
        args.version.as_bytes(),
        &args.data_dir,
        // kvd serves the connections the incumbent passes.
        SuccessorConfig {
            capabilities: Capabilities::PASS_CONNECTIONS,
            ..SuccessorConfig::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            log(format_args!("successor: {e}"));
            return 4;
        }
    };
    let mut daemon: Option<Arc<Daemon>> = None;
    let mut passed = Vec::new();
    loop {
        wait(&mut poll, &mut events, s.poll_timeout());
        for event in &events {
            s.handle_event(poll.registry(), event);
        }
        s.handle_timeout(poll.registry());
        while let Some(event) = s.poll_event() {
            match event {
                SuccessorEvent::Begun => {
                    match start_successor(args, s.listeners(), preloaded.take()) {
                        Ok((d, readiness)) => {
                            // Served once `Ready` is out; dropped (closed, never
                            // shut down) if the handoff fails before.
                            passed = s.take_connections();
                            if let Err(e) =
                                s.ready(poll.registry(), &readiness, &args.control_socket)
                            {
                                // The supervisor hears the handoff failed, and the
                                // old binary resumes: stop before writing.
                                log(format_args!("successor: control socket: {e}"));
                                d.close(LINGER);
                                return 4;
                            }
                            daemon = Some(d);
                        }
                        Err(code) => {
                            s.start_failed(poll.registry());
                            return code;
                        }
                    }
                }
                SuccessorEvent::Authoritative { .. } => {
                    let Some(d) = daemon.take() else { return 4 };
                    d.set_phase(Phase::Serving);
                    d.serve_passed(std::mem::take(&mut passed));
                    let control = match s.into_incumbent(poll.registry()) {
                        Ok(c) => c.with_build_id(args.version.as_bytes()),
                        Err(e) => {
                            log(format_args!("successor: control socket: {e}"));
                            d.close(LINGER);
                            return 4;
                        }
                    };
                    drop(poll);
                    return finish(&d, serve_mio_control(&d, control));
                }
                SuccessorEvent::Failed {
                    failure,
                    abort_reason,
                } => {
                    log(format_args!("successor: {failure} {abort_reason}"));
                    if let Some(d) = daemon.take() {
                        // Nothing was written (writes wait for `Serving`);
                        // send the clients back to the listener.
                        d.close(LINGER);
                    }
                    return 4;
                }
                _ => {}
            }
        }
    }
}

/// The successor's start-up work that needs no lock, on every runtime:
/// reads the state while the old process still serves (and may still
/// write, freeze or compact), writing nothing. Called before `Hello`, so
/// the whole of it falls before the drain; after `Begin`,
/// [`start_successor`] reads only what was logged since. `None` if it
/// could not be read (said in a log line): then the state is read whole
/// once the lock is ours, which reports a real problem properly.
pub(super) fn preload(args: &ServeArgs) -> Option<Preloaded> {
    match Store::preload(&args.data_dir, store_config()) {
        Ok(p) => Some(p),
        Err(e) => {
            log(format_args!(
                "successor: reading the state before Begin failed ({e}); it is read whole \
                 once the lock is ours"
            ));
            None
        }
    }
}

/// With the lock held: takes the listener, opens the sealed state (the
/// tail since `preloaded`, or all of it), starts serving reads. Returns
/// the daemon and what `Ready` reports.
pub(super) fn start_successor(
    args: &ServeArgs,
    listeners: &mut handoff_std::os::listeners::InheritedListeners,
    preloaded: Option<Preloaded>,
) -> Result<(Arc<Daemon>, ReadyReport), i32> {
    let listener = listeners
        .take_tcp(LISTENER_NAME, Mode::Blocking)
        .map_err(|e| {
            log(format_args!("successor: listener: {e}"));
            4
        })?;
    let store = match preloaded {
        Some(p) => p.open(),
        None => Store::open_with(&args.data_dir, store_config()),
    }
    .map_err(|e| {
        log(format_args!("successor: opening the sealed state: {e}"));
        4
    })?;
    if let Some(why) = &store.open_report().preload_fallback {
        log(format_args!(
            "successor: the state read before Begin could not be used ({why}); read it whole"
        ));
    }
    let revision = store.revision();
    let advertised = match args.fault {
        Some(Fault::RevisionsBehind) => revision.saturating_sub(1),
        _ => revision,
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let daemon = Daemon::start(args, store, Phase::Starting, listener).map_err(|e| {
        log(format_args!("successor: starting: {e}"));
        4
    })?;
    Ok((
        daemon,
        ReadyReport {
            listening_on: vec![addr],
            healthz_ok: args.fault != Some(Fault::Unhealthy),
            advertised_revision_per_shard: vec![advertised],
        },
    ))
}

/// A blocking call running off the executor, as [`Offload::offload`]
/// returns it. Boxed, not an `impl Future`, for a rustc limitation
/// (rust-lang/rust#110338): an async fn awaiting the unboxed future is
/// checked for `Send` with its lifetimes erased, so `offload`'s `'static`
/// bound on a closure returning a `HookError` cannot be shown, and
/// `tokio::spawn` refuses `serve`'s future. One allocation per call is
/// nothing next to handing the call to another thread.
type Offloaded<T> = Pin<Box<dyn Future<Output = Result<T, HookError>> + Send>>;

/// How an async runtime runs one of kvd's blocking calls (a hook, the
/// start-up, the close) without blocking the threads that poll its
/// futures, and awaits the result.
trait Offload {
    /// Runs `f` where it may block and resolves to what it returns, or to
    /// an error if it panicked. Nothing starts until the future is first
    /// polled; dropping the future leaves `f` running to its end.
    fn offload<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Offloaded<T>;
}

/// smol's way: a thread of its own per call, which wakes the future through
/// a socket pair registered with async-io.
struct AsyncIoThread;

impl Offload for AsyncIoThread {
    fn offload<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Offloaded<T> {
        Box::pin(async move {
            let (done_rx, done_tx) = UnixStream::pair()?;
            let done_rx = async_io::Async::new(done_rx)?;
            let slot: Arc<Mutex<Option<std::thread::Result<T>>>> = Arc::new(Mutex::new(None));
            let filled = slot.clone();
            std::thread::Builder::new()
                .name("kvd-hook".into())
                .spawn(move || {
                    // Caught, so the slot is always filled before the wake-up:
                    // a thread that unwound would close the socket with the
                    // slot empty, and the loop below would spin on the EOF.
                    let v = panic::catch_unwind(AssertUnwindSafe(f));
                    *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                    let _ = (&done_tx).write_all(&[1]);
                })?;
            loop {
                if let Some(v) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    return v.map_err(|_| "the blocking call panicked".into());
                }
                let _ = done_rx.readable().await;
            }
        })
    }
}

/// tokio's way: its blocking pool, awaited through the task's `JoinHandle`.
struct TokioBlockingPool;

impl Offload for TokioBlockingPool {
    fn offload<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Offloaded<T> {
        // Spawned when first polled, not when called, so the call needs no
        // runtime context of its own. A `JoinError` means `f` panicked (or
        // the runtime shut down under it); its text says which.
        Box::pin(async move {
            tokio::task::spawn_blocking(f)
                .await
                .map_err(HookError::from)
        })
    }
}

/// kvd's blocking hooks as async ones, each offloaded the runtime's way.
struct Threaded<O> {
    daemon: Arc<Daemon>,
    offload: PhantomData<O>,
}

impl<O> Threaded<O> {
    fn new(daemon: &Arc<Daemon>) -> Threaded<O> {
        Threaded {
            daemon: daemon.clone(),
            offload: PhantomData,
        }
    }
}

impl<O: Offload> handoff_driver::reactor::AsyncDrainable for Threaded<O> {
    async fn drain(
        &self,
        deadline: std::time::Instant,
        handover: Handover,
    ) -> Result<DrainReport, HookError> {
        let d = self.daemon.clone();
        O::offload(move || d.drain(deadline, handover)).await?
    }

    async fn seal(&self) -> Result<SealReport, HookError> {
        let d = self.daemon.clone();
        O::offload(move || {
            // The async adapters take no progress reports: they go nowhere.
            let (tx, _rx) = mpsc::channel();
            d.seal(&SealProgress::new(tx, Box::new(|| {})))
        })
        .await?
    }

    async fn resume_after_abort(&self) -> Result<(), HookError> {
        let d = self.daemon.clone();
        O::offload(move || d.resume_after_abort()).await?
    }

    fn snapshot_state(&self) -> StateSnapshot {
        self.daemon.snapshot_state()
    }
}

/// The successor's side on an async adapter, up to the moment it is the
/// incumbent: awaits `handshake` (the adapter's, already called), waits for
/// `Begin`, starts the daemon with the lock held (offloaded, while the
/// protocol goes on; `preloaded` is what was read before `Hello`),
/// announces it and takes over the control socket.
/// Returns the daemon, serving, and the endpoint to serve with; or the exit
/// status, everything already stopped.
async fn become_incumbent<R: Reactor, O: Offload>(
    args: &ServeArgs,
    handshake: impl Future<Output = Result<HandshookSuccessor<R>, SuccessorError>>,
    preloaded: Option<Preloaded>,
) -> Result<(Arc<Daemon>, Endpoint), i32> {
    let failed = |e: &dyn std::fmt::Display| {
        log(format_args!("successor: {e}"));
        4
    };
    let handshook = handshake.await.map_err(|e| failed(&e))?;
    // The lock is ours from here: only now may the sealed state be opened
    // (what the preload read is caught up).
    let mut begun = handshook
        .wait_for_begin(&args.data_dir)
        .await
        .map_err(|e| failed(&e))?;
    let owned = args.clone();
    let passed = begun.take_connections();
    let mut listeners = std::mem::take(begun.listeners());
    let started = begun
        .start_up(O::offload(move || {
            start_successor(&owned, &mut listeners, preloaded)
        }))
        .await;
    let (daemon, readiness) = match started {
        Ok(Ok(started)) => started?,
        // `start_successor` panicked: what it had opened went with it.
        Ok(Err(e)) => return Err(failed(&format_args!("starting: {e}"))),
        Err(e) => return Err(failed(&e)),
    };
    match begun
        .announce_and_bind(readiness, &args.control_socket)
        .await
    {
        Ok(endpoint) => {
            daemon.set_phase(Phase::Serving);
            daemon.serve_passed(passed);
            Ok((daemon, endpoint.with_build_id(args.version.as_bytes())))
        }
        Err(e) => {
            // Nothing was written (writes wait for `Serving`): stop, and
            // only then let the lock go (it is dropped with `e`). Closing
            // lingers, so it is offloaded like the hooks.
            let code = failed(&e);
            let d = daemon.clone();
            if let Err(panicked) = O::offload(move || d.close(LINGER)).await {
                log(format_args!("successor: closing: {panicked}"));
            }
            drop(e);
            Err(code)
        }
    }
}

/// Serves the control socket as an async fn on async-io, with the build id
/// set on `incumbent`.
pub(super) fn serve_smol(
    daemon: &Arc<Daemon>,
    incumbent: impl Into<Endpoint>,
) -> Result<ServeEnd, ServeError> {
    let hooks = Threaded::<AsyncIoThread>::new(daemon);
    async_io::block_on(handoff_smol::serve(incumbent, &hooks))
}

/// The successor's side as async fns on async-io.
pub(super) fn take_over_smol(
    args: &ServeArgs,
    successor: handoff_std::Successor,
    preloaded: Option<Preloaded>,
) -> i32 {
    let handshake = handoff_smol::handshake(successor, args.version.as_bytes());
    match async_io::block_on(become_incumbent::<_, AsyncIoThread>(
        args, handshake, preloaded,
    )) {
        Ok((daemon, endpoint)) => finish(&daemon, serve_smol(&daemon, endpoint)),
        Err(code) => code,
    }
}

/// The runtime kvd's tokio side runs on: two workers (the control session
/// is one task; the hooks block on the blocking pool, not on a worker), the
/// I/O and time drivers the adapter needs.
fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kvd-tokio")
        .enable_all()
        .build()
}

/// Blocks on `task` and returns its output. A panic in it goes on
/// unwinding here, as it would on a runtime that polls the future on this
/// thread (the std, mio and smol paths).
fn join<T>(rt: &tokio::runtime::Runtime, task: tokio::task::JoinHandle<T>) -> T {
    match rt.block_on(task) {
        Ok(v) => v,
        Err(e) if e.is_panic() => panic::resume_unwind(e.into_panic()),
        // Only an aborted task or a runtime shut down is cancelled, and
        // neither happens while this thread blocks on it.
        Err(e) => panic!("kvd's tokio task was cancelled: {e}"),
    }
}

/// Serves `endpoint` on `rt`: spawned, so the serve future runs on a
/// worker thread (it is `Send`, hooks included), and blocked on.
fn serve_on(
    rt: &tokio::runtime::Runtime,
    daemon: &Arc<Daemon>,
    endpoint: Endpoint,
) -> Result<ServeEnd, ServeError> {
    let hooks = Threaded::<TokioBlockingPool>::new(daemon);
    join(
        rt,
        rt.spawn(async move { handoff_tokio::serve(endpoint, &hooks).await }),
    )
}

/// Serves the control socket as a task on a multi-thread tokio runtime,
/// with the build id set on `incumbent`.
pub(super) fn serve_tokio(
    daemon: &Arc<Daemon>,
    incumbent: impl Into<Endpoint>,
) -> Result<ServeEnd, ServeError> {
    let rt = tokio_runtime().map_err(ServeError::Io)?;
    serve_on(&rt, daemon, incumbent.into())
}

/// The successor's side as tasks on a multi-thread tokio runtime: the
/// start-up, then serving on the same runtime.
pub(super) fn take_over_tokio(
    args: &ServeArgs,
    successor: handoff_std::Successor,
    preloaded: Option<Preloaded>,
) -> i32 {
    let rt = match tokio_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            // Dropping `successor` closes the control socket: the
            // supervisor sees us give up, and the old binary resumes.
            log(format_args!("successor: tokio runtime: {e}"));
            return 4;
        }
    };
    // A spawned task must own what it uses.
    let args = args.clone();
    let task = rt.spawn(async move {
        let handshake = handoff_tokio::handshake(successor, args.version.as_bytes());
        become_incumbent::<_, TokioBlockingPool>(&args, handshake, preloaded).await
    });
    match join(&rt, task) {
        // The daemon is closed here, off the runtime: closing blocks while
        // the connections linger.
        Ok((daemon, endpoint)) => finish(&daemon, serve_on(&rt, &daemon, endpoint)),
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offloaded_call_returns_its_value_or_an_error_if_it_panicked() {
        assert_eq!(async_io::block_on(AsyncIoThread::offload(|| 7)).unwrap(), 7);
        // Before the panic was caught on the thread, this wait spun forever
        // on the closed socket.
        let panicked = async_io::block_on(AsyncIoThread::offload(|| panic!("in a hook")));
        assert!(panicked.is_err());

        let rt = tokio_runtime().unwrap();
        assert_eq!(rt.block_on(TokioBlockingPool::offload(|| 7)).unwrap(), 7);
        let panicked = rt.block_on(TokioBlockingPool::offload(|| panic!("in a hook")));
        let e = panicked.unwrap_err().to_string();
        assert!(e.contains("panicked") && e.contains("in a hook"), "{e}");
    }
}
