//! The incumbent's blocking adapter: [`Incumbent::serve`] runs the
//! [`IncumbentDriver`] on the calling thread with `poll(2)` until a handoff
//! commits. The daemon's hooks run on a thread of the library's own, so the
//! session keeps answering, heartbeating and watching its deadlines however
//! long a drain or a seal takes; the daemon itself needs no thread for the
//! handoff beyond the one that calls `serve`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, mpsc};

use handoff_core::IncumbentConfig;
use handoff_driver::{
    Endpoint, Hook, HookDone, IncumbentDriver, IncumbentIo, Io, ServeEnd, ServeError, Source,
};
use handoff_os::control::{self, PeerPolicy};
use handoff_os::lock::DataDirLock;

use crate::conn::Watched;
use crate::drainable::{Drainable, HookError, SealProgress};

/// The control side of a serving daemon: its control socket and its lock.
pub struct Incumbent {
    ep: Endpoint,
}

impl fmt::Debug for Incumbent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Incumbent").field(&self.ep).finish()
    }
}

impl From<Endpoint> for Incumbent {
    fn from(ep: Endpoint) -> Self {
        Incumbent { ep }
    }
}

impl From<Incumbent> for Endpoint {
    fn from(incumbent: Incumbent) -> Self {
        incumbent.ep
    }
}

impl Incumbent {
    /// Binds the control socket at `socket_path` for a daemon that holds
    /// `lock` and started cold (no predecessor to take over from). Replaces
    /// a stale socket left at the path.
    pub fn bind_cold_start(socket_path: &Path, lock: DataDirLock) -> io::Result<Incumbent> {
        Endpoint::bind_cold_start(socket_path, lock).map(Incumbent::from)
    }

    /// An incumbent from a control listener already bound at `socket_path`
    /// and the lock, e.g. after a successor bound the path.
    pub fn from_parts(listener: UnixListener, socket_path: &Path, lock: DataDirLock) -> Self {
        Endpoint::from_parts(listener, socket_path, lock).into()
    }

    /// The build id announced in `Hello`.
    pub fn with_build_id(self, build_id: impl Into<Vec<u8>>) -> Self {
        self.ep.with_build_id(build_id).into()
    }

    /// Also accept supervisors running as these uids (besides ours and
    /// root).
    pub fn with_allowed_uids(self, uids: Vec<u32>) -> Self {
        self.ep.with_allowed_uids(uids).into()
    }

    /// Overrides the session timings.
    pub fn with_config(self, config: IncumbentConfig) -> Self {
        self.ep.with_config(config).into()
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        self.ep.socket_path()
    }

    /// Whether this process holds the data-dir lock now.
    pub fn holds_lock(&self) -> bool {
        self.ep.holds_lock()
    }

    /// The session timings: those given to [`Incumbent::with_config`], or
    /// the defaults.
    pub fn config(&self) -> IncumbentConfig {
        self.ep.config()
    }

    /// The build id announced in `Hello` (empty unless set with
    /// [`Incumbent::with_build_id`]).
    pub fn build_id(&self) -> &[u8] {
        self.ep.build_id()
    }

    /// Which supervisors may connect (see [`Incumbent::with_allowed_uids`]).
    pub fn peer_policy(&self) -> &PeerPolicy {
        self.ep.peer_policy()
    }

    /// Answers supervisors until a handoff commits. Sessions that end any
    /// other way leave the daemon serving (lock held, writer open) and the
    /// next connection is accepted. A connection from a uid the policy does
    /// not permit is closed at once.
    ///
    /// On an error `serve` has consumed the incumbent, and the data-dir
    /// lock with it: stop writing and exit.
    pub fn serve<D: Drainable>(self, daemon: &D) -> Result<ServeEnd, ServeError> {
        let mut driver = IncumbentDriver::new(self.ep).map_err(ServeError::Io)?;
        // Hook threads wake the loop through this pair.
        let (wake_rx, wake_tx) = UnixStream::pair().map_err(ServeError::Io)?;
        wake_rx.set_nonblocking(true).map_err(ServeError::Io)?;
        wake_tx.set_nonblocking(true).map_err(ServeError::Io)?;
        let waker = HookWaker(Arc::new(wake_tx));
        let (done_tx, done_rx) = mpsc::channel::<HookDone>();
        let (progress_tx, progress_rx) = mpsc::channel::<(u32, u32, u64)>();
        std::thread::scope(|scope| {
            let hooks = HookContext {
                daemon,
                done: done_tx,
                progress: progress_tx,
                waker,
            };
            // Started before any session, so that no thread is started
            // during a handoff; `None` if none could be.
            let worker = start_worker(scope, &hooks);
            let mut io = Glue {
                watched: Watched::default(),
                hooks: &hooks,
                worker,
                inline: VecDeque::new(),
                dispatched: false,
            };
            driver.start(&mut io);
            loop {
                if let Some(done) = io.inline.pop_front() {
                    driver.hook_done(&mut io, done);
                    continue;
                }
                if std::mem::take(&mut io.dispatched)
                    && let Some(done) = spin_for(&done_rx)
                {
                    driver.hook_done(&mut io, done);
                    continue;
                }
                while let Some(report) = driver.poll_report() {
                    if let Some(verdict) = driver.verdict(report) {
                        return verdict.map(|()| ServeEnd::Committed {
                            snapshot: daemon.snapshot_state(),
                        });
                    }
                }
                let (ready, extra) = io
                    .watched
                    .wait(&[wake_rx.as_raw_fd()], driver.poll_timeout())
                    .map_err(ServeError::Io)?;
                for (source, r) in ready {
                    if r.writable {
                        driver.handle_writable(&mut io, source);
                    }
                    if r.readable {
                        driver.handle_readable(&mut io, source);
                    }
                }
                if extra.first() == Some(&true) {
                    let mut sink = [0u8; 64];
                    while matches!(io::Read::read(&mut (&wake_rx), &mut sink), Ok(n) if n > 0) {}
                    while let Ok((sealed, total, last)) = progress_rx.try_recv() {
                        driver.seal_progress(&mut io, sealed, total, last);
                    }
                    while let Ok(done) = done_rx.try_recv() {
                        driver.hook_done(&mut io, done);
                    }
                }
                driver.handle_timeout(&mut io);
            }
        })
    }
}

/// How long the loop waits, awake, for a hook it just handed to the
/// worker. Most drains and seals of a daemon with nothing in flight return
/// within tens of microseconds; seen at once, their reply goes out
/// without a wake-up of this thread in between, which on a virtual machine
/// costs as much as the hook itself, on the path where no process accepts.
/// A longer hook costs this much processor time once.
const HOOK_SPIN: std::time::Duration = std::time::Duration::from_micros(200);

/// The hook's result if the worker reports it within [`HOOK_SPIN`].
fn spin_for(done: &mpsc::Receiver<HookDone>) -> Option<HookDone> {
    let until = std::time::Instant::now() + HOOK_SPIN;
    loop {
        match done.try_recv() {
            Ok(d) => return Some(d),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        // Yielding rather than spinning: on a busy machine the worker may
        // be waiting for this very processor.
        std::thread::yield_now();
    }
}

/// Runs a hook, turning a panic into an error: a panicking hook must not
/// leave the session waiting forever with the daemon drained.
fn run_hook<T>(f: impl FnOnce() -> Result<T, HookError>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the hook panicked".to_owned()),
    }
}

/// Wakes the serve loop from a hook thread.
#[derive(Clone)]
struct HookWaker(Arc<UnixStream>);

impl HookWaker {
    fn wake(&self) {
        // A full pipe already holds a wake-up; nothing is lost.
        let _ = control::send_some(self.0.as_fd(), &[1]);
    }
}

/// What the worker thread needs to run hooks and report back.
struct HookContext<'d, D> {
    daemon: &'d D,
    done: mpsc::Sender<HookDone>,
    progress: mpsc::Sender<(u32, u32, u64)>,
    waker: HookWaker,
}

/// Runs one hook of `daemon`; seal progress goes to `progress`, `wake`
/// rung after each report.
fn run_job<D: Drainable>(
    daemon: &D,
    hook: Hook,
    progress: &mpsc::Sender<(u32, u32, u64)>,
    wake: &HookWaker,
) -> HookDone {
    match hook {
        Hook::Drain { deadline, handover } => {
            HookDone::Drained(run_hook(|| daemon.drain(deadline, handover)))
        }
        Hook::Seal => {
            let progress = SealProgress::new(
                progress.clone(),
                Box::new({
                    let w = wake.clone();
                    move || w.wake()
                }),
            );
            HookDone::Sealed(run_hook(|| daemon.seal(&progress)))
        }
        Hook::Resume => HookDone::Resumed(run_hook(|| daemon.resume_after_abort())),
    }
}

/// Starts the thread that runs the hooks one after another (the machine
/// never asks for two at once); `None` if it could not start.
fn start_worker<'scope, D: Drainable>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    hooks: &HookContext<'scope, D>,
) -> Option<mpsc::Sender<Hook>> {
    let (jobs, inbox) = mpsc::channel::<Hook>();
    let daemon = hooks.daemon;
    let (tx, w, progress_tx) = (
        hooks.done.clone(),
        hooks.waker.clone(),
        hooks.progress.clone(),
    );
    std::thread::Builder::new()
        .name("handoff-hooks".into())
        .spawn_scoped(scope, move || {
            // Ends when the serve loop drops its sender.
            for job in inbox {
                let done = run_job(daemon, job, &progress_tx, &w);
                let _ = tx.send(done);
                w.wake();
            }
        })
        .ok()
        .map(|_| jobs)
}

/// The blocking adapter's side of the driver: `poll(2)` over what it
/// watches, and the hooks on the worker thread.
struct Glue<'h, 'd, D> {
    watched: Watched,
    hooks: &'h HookContext<'d, D>,
    worker: Option<mpsc::Sender<Hook>>,
    /// Hooks that ran on the loop's own thread, waiting to be reported.
    inline: VecDeque<HookDone>,
    /// A hook was just handed to the worker.
    dispatched: bool,
}

impl<D> Io for Glue<'_, '_, D> {
    fn watch(
        &mut self,
        source: Source,
        fd: std::os::fd::BorrowedFd<'_>,
        write: bool,
    ) -> io::Result<()> {
        self.watched.watch(source, fd, write)
    }

    fn unwatch(&mut self, source: Source, fd: std::os::fd::BorrowedFd<'_>) {
        self.watched.unwatch(source, fd)
    }
}

impl<D: Drainable> IncumbentIo for Glue<'_, '_, D> {
    /// Hands `hook` to the worker. Without a worker (no thread to be had)
    /// the hook runs here, on the loop's thread: the session cannot
    /// heartbeat meanwhile, but failing the hook instead would fail the
    /// resume too and tell a healthy daemon to exit.
    fn run_hook(&mut self, hook: Hook) {
        let hook = match &self.worker {
            Some(jobs) => match jobs.send(hook) {
                Ok(()) => {
                    self.dispatched = true;
                    return;
                }
                Err(mpsc::SendError(hook)) => hook,
            },
            None => hook,
        };
        let h = self.hooks;
        let done = run_job(h.daemon, hook, &h.progress, &h.waker);
        self.inline.push_back(done);
    }
}
