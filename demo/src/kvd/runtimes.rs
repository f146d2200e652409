//! kvd's side of a handoff on handoff-mio and on handoff-smol. The data
//! plane (connection threads, the store, what drain and seal do) is the
//! same in every runtime; only the control plane changes. The hooks are
//! blocking calls into the daemon, so each runs on a thread of its own that
//! reports back: through a `mio::Waker` to the mio loop, through a socket
//! the smol future awaits. Neither loop ever blocks on a hook.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use handoff_mio::{IncumbentEvent, MioIncumbent, MioSuccessor, SuccessorEvent};
use handoff_std::os::listeners::Mode;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, IncumbentEnd, ReadyReport,
    SealProgress, SealReport, ServeEnd, ServeError, StateSnapshot, SuccessorConfig,
};
use mio::{Events, Poll, Token, Waker};

use super::{Daemon, LINGER, LISTENER_NAME, Phase, ServeArgs, Store, finish, log};

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
                IncumbentEvent::Drain { deadline } => {
                    let d = daemon.clone();
                    hook(Box::new(move || {
                        Done::Drained(d.drain(deadline).map_err(|e| e.to_string()))
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
pub(super) fn take_over_mio(args: &ServeArgs, successor: handoff_std::Successor) -> i32 {
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
        SuccessorConfig::default(),
    ) {
        Ok(s) => s,
        Err(e) => {
            log(format_args!("successor: {e}"));
            return 4;
        }
    };
    let mut daemon: Option<Arc<Daemon>> = None;
    loop {
        wait(&mut poll, &mut events, s.poll_timeout());
        for event in &events {
            s.handle_event(poll.registry(), event);
        }
        s.handle_timeout(poll.registry());
        while let Some(event) = s.poll_event() {
            match event {
                SuccessorEvent::Begun => match start_successor(args, s.listeners()) {
                    Ok((d, readiness)) => {
                        if let Err(e) = s.ready(poll.registry(), &readiness, &args.control_socket) {
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
                },
                SuccessorEvent::Authoritative { .. } => {
                    let Some(d) = daemon.take() else { return 4 };
                    d.set_phase(Phase::Serving);
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

/// With the lock held: takes the listener, opens the sealed state, starts
/// serving reads. Returns the daemon and what `Ready` reports.
pub(super) fn start_successor(
    args: &ServeArgs,
    listeners: &mut handoff_std::os::listeners::InheritedListeners,
) -> Result<(Arc<Daemon>, ReadyReport), i32> {
    let listener = listeners
        .take_tcp(LISTENER_NAME, Mode::Blocking)
        .map_err(|e| {
            log(format_args!("successor: listener: {e}"));
            4
        })?;
    let store = Store::open(&args.data_dir).map_err(|e| {
        log(format_args!("successor: opening the sealed state: {e}"));
        4
    })?;
    let revision = store.revision();
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
            healthz_ok: true,
            advertised_revision_per_shard: vec![revision],
        },
    ))
}

/// Runs a blocking call on a thread of its own and awaits its result on
/// async-io, so the executor is never blocked by a hook.
async fn unblock<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let slot: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let (done_rx, done_tx) = UnixStream::pair().expect("socketpair");
    let filled = slot.clone();
    std::thread::spawn(move || {
        let v = f();
        *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        let _ = (&done_tx).write_all(&[1]);
    });
    let done_rx = async_io::Async::new(done_rx).expect("async socket");
    loop {
        if let Some(v) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return v;
        }
        let _ = done_rx.readable().await;
    }
}

/// kvd's blocking hooks as async ones.
struct Threaded(Arc<Daemon>);

impl handoff_smol::AsyncDrainable for Threaded {
    async fn drain(&self, deadline: std::time::Instant) -> Result<DrainReport, HookError> {
        let d = self.0.clone();
        unblock(move || d.drain(deadline)).await
    }

    async fn seal(&self) -> Result<SealReport, HookError> {
        let d = self.0.clone();
        unblock(move || {
            let (tx, _rx) = mpsc::channel();
            d.seal(&SealProgress::new(tx, Box::new(|| {})))
        })
        .await
    }

    async fn resume_after_abort(&self) -> Result<(), HookError> {
        let d = self.0.clone();
        unblock(move || d.resume_after_abort()).await
    }

    fn snapshot_state(&self) -> StateSnapshot {
        self.0.snapshot_state()
    }
}

/// Serves the control socket as an async fn on async-io, with the build id
/// set on `incumbent`.
pub(super) fn serve_smol(
    daemon: &Arc<Daemon>,
    incumbent: Incumbent,
) -> Result<ServeEnd, ServeError> {
    async_io::block_on(handoff_smol::serve(incumbent, &Threaded(daemon.clone())))
}

/// The successor's side as async fns.
pub(super) fn take_over_smol(args: &ServeArgs, successor: handoff_std::Successor) -> i32 {
    async_io::block_on(async {
        let handshook = match handoff_smol::handshake(successor, args.version.as_bytes()).await {
            Ok(h) => h,
            Err(e) => {
                log(format_args!("successor: {e}"));
                return 4;
            }
        };
        let mut begun = match handshook.wait_for_begin(&args.data_dir).await {
            Ok(b) => b,
            Err(e) => {
                log(format_args!("successor: {e}"));
                return 4;
            }
        };
        let args_owned = args.clone();
        let mut listeners = std::mem::take(begun.listeners());
        let started = begun
            .start_up(unblock(move || {
                start_successor(&args_owned, &mut listeners)
            }))
            .await;
        let (daemon, readiness) = match started {
            Ok(Ok(x)) => x,
            Ok(Err(code)) => return code,
            Err(e) => {
                log(format_args!("successor: {e}"));
                return 4;
            }
        };
        match begun
            .announce_and_bind(readiness, &args.control_socket)
            .await
        {
            Ok(incumbent) => {
                daemon.set_phase(Phase::Serving);
                let incumbent = incumbent.with_build_id(args.version.as_bytes());
                let served = handoff_smol::serve(incumbent, &Threaded(daemon.clone())).await;
                finish(&daemon, served)
            }
            Err(e) => {
                // Nothing was written (writes wait for `Serving`): stop, and
                // only then let the lock go (it is dropped with `e`).
                log(format_args!("successor: {e}"));
                daemon.close(LINGER);
                drop(e);
                4
            }
        }
    })
}
