//! The service: one supervised daemon with its listeners, its trigger
//! socket and the threads that keep it alive.
//!
//! This module is its public face and its lifecycle: [`ServiceBuilder`]
//! and [`Service`], the cold start that binds the listeners, starts the
//! daemon and the threads, and the shutdown that stops them all. What the
//! threads share is in `state`, the handoff itself in `handoff`.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use handoff_std::Supervisor;
use handoff_std::os::control::PeerPolicy;
use handoff_std::os::listeners::InheritedListeners;

use crate::config::Config;
use crate::daemon::{self, Proc};
use crate::error::ServiceError;
use crate::handoff::HandoffReport;
use crate::listeners;
use crate::notify::Notifier;
use crate::state::{Inner, LoopWaker, State, Status, lock};
use crate::trigger;

/// How long a new daemon may take to answer on its control socket, by
/// default.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a trigger client may take to send its request line, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Between `SIGTERM` and `SIGKILL` when the supervisor stops, by default.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The Unix listeners' socket files this service created, removed when it
/// ends (or fails to start), if they are still the same files.
#[derive(Debug)]
struct SocketFiles(Vec<(PathBuf, (u64, u64))>);

impl Drop for SocketFiles {
    fn drop(&mut self) {
        for (path, id) in &self.0 {
            listeners::remove_if_same(path, *id);
        }
    }
}

/// Options of a [`Service`] that are not in the configuration file.
#[derive(Debug)]
pub struct ServiceBuilder {
    config: Config,
    request_timeout: Duration,
    startup_timeout: Duration,
    stop_grace: Duration,
    inherited: Option<InheritedListeners>,
    notifier: Option<Notifier>,
}

impl ServiceBuilder {
    /// How long a trigger client may take to send its request line before
    /// it is dropped (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a cold-started daemon may take to answer on its control
    /// socket (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Between `SIGTERM` and `SIGKILL` when stopping daemons (default
    /// 10 s).
    pub fn stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// Listeners passed by the service manager, already taken from the
    /// environment (see [`handoff_std::os::env::take_startup_env`]); each
    /// configured listener of the same name is adopted instead of bound.
    pub fn inherited_listeners(mut self, listeners: InheritedListeners) -> Self {
        self.inherited = Some(listeners);
        self
    }

    /// Where to report readiness (default: [`Notifier::from_env`]).
    pub fn notifier(mut self, notifier: Notifier) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Binds the listeners, starts the daemon and the service's threads.
    ///
    /// Without [`ServiceBuilder::inherited_listeners`], a process started
    /// with `LISTEN_FDS` takes its listeners from the environment here,
    /// which edits the environment: in a program with other threads, take
    /// them first thing in `main` and pass them in instead.
    pub fn start(self) -> Result<Service, ServiceError> {
        Service::start_with(self)
    }
}

/// One supervised daemon, kept running and handed off on request.
#[derive(Debug)]
pub struct Service {
    inner: Arc<Inner>,
    listener_addrs: Vec<(String, String)>,
    trigger_wake: LoopWaker,
    threads: Vec<JoinHandle<()>>,
    stopped: bool,
    /// Dropped after `Drop::drop` has stopped the daemons.
    _socket_files: SocketFiles,
}

impl Service {
    /// Options beyond the configuration file.
    pub fn builder(config: Config) -> ServiceBuilder {
        ServiceBuilder {
            config,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            inherited: None,
            notifier: None,
        }
    }

    /// Starts with the default options: binds (or adopts) the listeners,
    /// cold-starts the daemon, waits until it serves, binds the trigger
    /// socket and starts the trigger server and the monitor.
    pub fn start(config: Config) -> Result<Service, ServiceError> {
        Service::builder(config).start()
    }

    fn start_with(b: ServiceBuilder) -> Result<Service, ServiceError> {
        let config = b.config;
        let inherited = match b.inherited {
            Some(l) => Some(l),
            None if std::env::var_os(handoff_std::os::env::LISTEN_FDS).is_some() => {
                let env = handoff_std::os::env::take_startup_env().map_err(ServiceError::Env)?;
                if env.control.is_some() {
                    tracing::warn!(
                        "started as a handoff successor (HANDOFF_ROLE is set); a supervisor \
                         is not handed off, ignoring its control socket"
                    );
                }
                Some(env.listeners)
            }
            None => None,
        };
        // The journal first: an interrupted handoff's processes tell an
        // empty control socket in transition from one nobody serves.
        let mut supervisor =
            Supervisor::new(&config.control_socket).map_err(ServiceError::Supervisor)?;
        let mut record = None;
        if let Some(journal) = &config.journal {
            supervisor = supervisor.with_journal(journal);
            match supervisor.resume_from_journal() {
                Ok(None) => tracing::debug!(journal = %journal.display(), "no unfinished handoff"),
                Ok(Some(r)) => record = Some(r),
                Err(e) => tracing::warn!(
                    error = %e,
                    journal = %journal.display(),
                    "cannot read the journal (if it holds a record, it was left in place); \
                     handoffs go on, but a journal that cannot be written is not kept"
                ),
            }
        }
        // A daemon left serving by a supervisor that crashed is adopted
        // with its listeners, not fought for the addresses.
        let adopted = crate::adopt::find(&config, record.as_ref(), b.startup_timeout)?;
        let (bound, adopted) = match adopted {
            Some(a) => {
                if inherited.as_ref().is_some_and(|i| !i.is_empty()) {
                    tracing::debug!(
                        "the service manager passed listeners too; the adopted daemon's are \
                         used (the same sockets, if the manager kept them)"
                    );
                }
                let bound = listeners::from_daemon(&config.listeners, a.listeners, a.pid)?;
                crate::adopt::reconcile(record.as_ref(), a.pid);
                (bound, Some((a.pid, a.exit)))
            }
            None => {
                if let Some(r) = &record {
                    tracing::warn!(
                        handoff_id = %r.handoff_id,
                        phase = %r.phase,
                        incumbent_pid = r.incumbent_pid,
                        successor_pid = r.successor_pid,
                        "the last supervisor stopped during a handoff, and no daemon of it \
                         serves the control socket; starting one"
                    );
                }
                (listeners::open_all(&config.listeners, inherited)?, None)
            }
        };
        let listener_addrs: Vec<(String, String)> = bound
            .iter()
            .map(|l| (l.name.clone(), l.local_addr.clone()))
            .collect();
        let socket_files = SocketFiles(
            bound
                .iter()
                .filter_map(|l| l.created_file.clone())
                .collect(),
        );
        // Into the service manager's fd store before anything can crash,
        // so that a restart of the unit gets these very sockets back.
        // (Those it passed are kept by it already.)
        let notifier = b.notifier.unwrap_or_else(Notifier::from_env);
        let stored = notifier.store_listeners(
            &bound
                .iter()
                .filter(|l| !l.from_manager)
                .map(|l| (l.name.as_str(), l.fd.as_fd()))
                .collect::<Vec<(&str, BorrowedFd<'_>)>>(),
        );
        tracing::debug!(stored, "listeners sent to the service manager's fd store");
        for l in bound {
            let fd: OwnedFd = l.fd;
            supervisor = supervisor
                .with_listener(l.name, fd)
                .map_err(ServiceError::Supervisor)?;
        }

        let (monitor_wake, monitor_rx) = LoopWaker::pair().map_err(ServiceError::Io)?;
        let (trigger_wake, trigger_rx) = LoopWaker::pair().map_err(ServiceError::Io)?;
        let trigger = trigger::TriggerSocket::bind(&config.trigger_socket, &config.allowed_uids)
            .map_err(|source| ServiceError::TriggerSocket {
                path: config.trigger_socket.clone(),
                source,
            })?;
        let policy = PeerPolicy::with_allowed_uids(config.allowed_uids.clone());
        let binary = config.binary.clone();
        let inner = Arc::new(Inner {
            config,
            supervisor,
            state: Mutex::new(State {
                incumbent: None,
                retired: Vec::new(),
                restarting: false,
                binary: binary.clone(),
                restart_backoff: Duration::ZERO,
            }),
            changed: Condvar::new(),
            handoff_lock: Mutex::new(()),
            in_flight: AtomicBool::new(false),
            handoffs: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            notifier,
            policy,
            request_timeout: b.request_timeout,
            startup_timeout: b.startup_timeout,
            stop_grace: b.stop_grace,
            monitor_wake,
        });

        let proc = match adopted {
            Some((pid, exit)) => {
                let binary = crate::adopt::binary_of(&inner.config, pid);
                lock(&inner.state).binary = binary;
                crate::daemon::Proc::adopted(pid, exit)
            }
            None => inner
                .start_daemon(&binary)
                .map_err(|e| ServiceError::DaemonStart {
                    binary: binary.clone(),
                    reason: e.to_string(),
                })?,
        };
        let pid = proc.pid();
        let adopted = proc.is_adopted();
        if adopted {
            tracing::info!(pid, "the adopted daemon serves");
        } else {
            tracing::info!(pid, binary = %binary.display(), "the daemon serves");
        }
        lock(&inner.state).incumbent = Some(proc);

        let mut service = Service {
            inner: inner.clone(),
            listener_addrs,
            _socket_files: socket_files,
            trigger_wake,
            threads: Vec::new(),
            stopped: false,
        };
        // From here on, dropping `service` on an error stops the daemon.
        let monitor = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("handoff-monitor".into())
                .spawn(move || crate::monitor::run(&inner, &monitor_rx))
                .map_err(ServiceError::Io)?
        };
        service.threads.push(monitor);
        let server = std::thread::Builder::new()
            .name("trigger-accept".into())
            .spawn(move || trigger.serve(&inner, &trigger_rx))
            .map_err(ServiceError::Io)?;
        service.threads.push(server);

        let serving = if adopted {
            format!("serving: pid {pid} (adopted)")
        } else {
            format!("serving: {} pid {pid}", binary.display())
        };
        service.inner.notifier.ready(&serving);
        Ok(service)
    }

    /// Runs one handoff to `binary` (default: the configured binary) and
    /// waits for its outcome. Refused at once if another handoff or a
    /// restart is running, or if `binary` is neither the configured binary
    /// nor in `allowed_binaries`.
    pub fn handoff(&self, binary: Option<&Path>) -> Result<HandoffReport, ServiceError> {
        self.inner.handoff(binary)
    }

    /// The serving pid, the handoff count, whether one runs, and whether
    /// the daemon answers its control socket: this asks it, for up to
    /// [`STATUS_PROBE`](crate::STATUS_PROBE).
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Tells systemd that a reload (`SIGHUP`) was refused, with `why`:
    /// `RELOADING=1` at once followed by `READY=1`. Under
    /// `Type=notify-reload` systemd waits for a `RELOADING=1` after each
    /// `SIGHUP` it sends, and would otherwise wait out its timeout.
    pub fn reload_refused(&self, why: &str) {
        let notifier = &self.inner.notifier;
        notifier.reloading(&format!("reload refused: {why}"));
        let serving = match self.inner.incumbent_pid() {
            Some(pid) => format!("serving: pid {pid}"),
            None => "no daemon running".to_owned(),
        };
        notifier.ready(&format!("{serving}; reload refused: {why}"));
    }

    /// Each listener's name and the address it is bound to, as the kernel
    /// reports it (with the port it chose for `:0`), in configuration order.
    pub fn listener_addrs(&self) -> Vec<(String, String)> {
        self.listener_addrs.clone()
    }

    /// The configuration the service runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Waits until a daemon other than `not` serves, at most `timeout`;
    /// returns its pid. With `not = None`, waits for any serving daemon.
    pub fn wait_for_incumbent(&self, not: Option<u32>, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.inner.state);
        loop {
            let pid = st.incumbent.as_ref().map(Proc::pid);
            if pid.is_some() && pid != not {
                return pid;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self
                .inner
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops the service: no more triggers, waits for a handoff in flight
    /// (bounded by its deadline), `SIGTERM` to every daemon (`SIGKILL` after
    /// the stop grace), reaps them, stops the threads and removes the
    /// trigger socket. Dropping the service does the same.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let inner = &self.inner;
        tracing::info!("stopping");
        inner.stopping.store(true, Ordering::SeqCst);
        inner.notifier.stopping("stopping the daemon");
        self.trigger_wake.wake();
        inner.monitor_wake.wake();
        // The monitor may be waiting for a handoff to end before it acts;
        // it sees `stopping` once it gets its turn, and returns.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let _turn = lock(&inner.handoff_lock);
        let mut procs: Vec<Proc> = {
            let mut st = lock(&inner.state);
            let mut all: Vec<Proc> = st.incumbent.take().into_iter().collect();
            all.append(&mut st.retired);
            all
        };
        inner.changed.notify_all();
        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        let statuses = daemon::stop_all(&mut procs, inner.stop_grace);
        for (pid, status) in pids.iter().zip(statuses) {
            match status {
                Some(s) => tracing::info!(pid, status = %s, "the daemon stopped"),
                None => tracing::error!(pid, "the daemon did not die even from SIGKILL"),
            }
        }
        tracing::info!("stopped");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}
