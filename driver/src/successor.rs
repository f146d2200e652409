//! The successor's side: how a process learns its role ([`detect_role`]),
//! what a supervisor started it with ([`Launch`]), and [`SuccessorDriver`],
//! which takes it from `Hello` to authoritative for every adapter.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use handoff_core::{
    Capabilities, HandoffId, ReadyReportRef, Revisions, Strings, SuccessorConfig, SuccessorEnd,
    SuccessorFailure, SuccessorOutput, SuccessorSession,
};
use handoff_os::control::{StagedControlSocket, stage_control_socket};
use handoff_os::crash;
use handoff_os::env::{EnvError, take_startup_env};
use handoff_os::listeners::InheritedListeners;
use handoff_os::lock::DataDirLock;
use handoff_os::process::poll_readable;

use crate::clock;
use crate::link::{Io, Link, READ_BUDGET, Read, Source};
use crate::passing::{PassedConnection, Receiver};

/// How this process was started.
#[derive(Debug)]
pub enum Role {
    /// By hand, by systemd or by a supervisor's cold start: take the lock
    /// and serve. Listeners passed systemd-style are here.
    ColdStart {
        /// Listeners passed at FDs 3.. (possibly none).
        listeners: InheritedListeners,
    },
    /// By a supervisor, to take over from the running binary.
    Successor(Launch),
}

/// Reads, once, how this process was started, and removes the variables
/// that said so (see [`handoff_os::env::take_startup_env`]). Call it first
/// thing in `main`, before starting threads.
pub fn detect_role() -> Result<Role, EnvError> {
    let env = take_startup_env()?;
    Ok(match env.control {
        Some(control) => Role::Successor(Launch {
            control,
            listeners: env.listeners,
            config: SuccessorConfig::default(),
            control_socket: None,
        }),
        None => Role::ColdStart {
            listeners: env.listeners,
        },
    })
}

/// What a supervisor started this process with: its end of the control
/// socketpair and the listeners. Every adapter's successor starts from one.
#[derive(Debug)]
pub struct Launch {
    control: UnixStream,
    listeners: InheritedListeners,
    config: SuccessorConfig,
    control_socket: Option<PathBuf>,
}

impl Launch {
    /// The listeners that came with the process.
    pub fn listener_names(&self) -> Vec<&str> {
        self.listeners.names()
    }

    /// Overrides the protocol timings.
    pub fn with_config(mut self, config: SuccessorConfig) -> Self {
        self.config = config;
        self
    }

    /// The protocol timings.
    pub fn config(&self) -> SuccessorConfig {
        self.config
    }

    /// Offers to take the incumbent's open connections
    /// ([`Capabilities::PASS_CONNECTIONS`], docs/PROTOCOL.md section 11):
    /// when the supervisor and the incumbent offer it too, they are passed
    /// during the drain, and after `Begin` the daemon must take every one
    /// (`take_connections`) and serve it once its `Ready` is out. A daemon
    /// that cannot serve them must not offer this: the incumbent closes its
    /// own copies at `Commit`.
    pub fn accepting_connections(mut self) -> Self {
        self.config.capabilities = self
            .config
            .capabilities
            .union(Capabilities::PASS_CONNECTIONS);
        self
    }

    /// Where the daemon will serve its control socket, known before the
    /// handshake: the socket is then bound under a temporary name while
    /// the supervisor answers `Hello` and the incumbent drains, instead of
    /// between `Begin` and `Ready`. Give the same path when announcing
    /// (another path is bound then, as without this).
    pub fn with_control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Says `Hello` (see [`SuccessorDriver::new`]) with this launch's
    /// timings and capabilities, stages the control socket if its path is
    /// known ([`Launch::with_control_socket`]), and returns the driver and
    /// the listeners. How every adapter's successor starts.
    pub fn start_driver(
        self,
        io: &mut impl Io,
        build_id: &[u8],
    ) -> io::Result<(SuccessorDriver, InheritedListeners)> {
        let mut driver = SuccessorDriver::new(io, self.control, self.config, build_id)?;
        if let Some(path) = &self.control_socket {
            // A path that cannot be bound now is tried again, and its error
            // reported, when the daemon announces.
            driver.staged = stage_control_socket(path).ok();
        }
        Ok((driver, self.listeners))
    }

    /// The control socket and the listeners.
    pub fn into_parts(self) -> (UnixStream, InheritedListeners) {
        (self.control, self.listeners)
    }
}

/// Why the successor cannot take over. In every case the process should
/// exit without having written anything; the old binary keeps serving.
#[derive(Debug)]
#[non_exhaustive]
pub enum SuccessorError {
    /// The protocol ended it (the supervisor aborted, went away, broke the
    /// protocol, or the lock stayed busy).
    Failed {
        /// Why.
        failure: SuccessorFailure,
        /// The supervisor's reason, if it sent `Abort`.
        abort_reason: String,
    },
    /// The control socket failed.
    Io(io::Error),
}

impl fmt::Display for SuccessorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuccessorError::Failed {
                failure,
                abort_reason,
            } if !abort_reason.is_empty() => write!(f, "{failure}: {abort_reason}"),
            SuccessorError::Failed { failure, .. } => write!(f, "{failure}"),
            SuccessorError::Io(e) => write!(f, "control socket: {e}"),
        }
        .and_then(|()| f.write_str("; exit without touching the data"))
    }
}

impl std::error::Error for SuccessorError {}

/// An adapter's `announce_and_bind` failed; the lock is still held here.
#[derive(Debug)]
pub struct AnnounceError {
    /// What failed.
    pub error: SuccessorError,
    /// The data-dir lock, released when this is dropped: stop whatever
    /// may write first.
    pub lock: Option<DataDirLock>,
}

impl fmt::Display for AnnounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl std::error::Error for AnnounceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What the successor reports with `Ready`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadyReport {
    /// Where it serves.
    pub listening_on: Vec<String>,
    /// Its own health check. `false` (the default) makes the supervisor
    /// roll the handoff back at `Ready` (docs/PROTOCOL.md section 10.2).
    pub healthz_ok: bool,
    /// The revision of each shard it opened.
    pub advertised_revision_per_shard: Vec<u64>,
}

/// Something a [`SuccessorDriver`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SuccessorReport {
    /// `Begin` came and the lock is held: take the listeners, open the
    /// sealed state, start serving, then call [`SuccessorDriver::ready`].
    Begun,
    /// `Ready` went out (or the supervisor vanished after we took the
    /// lock): [`SuccessorDriver::install`] the control socket and serve.
    Authoritative {
        /// Nobody received `Ready`.
        supervisor_gone: bool,
    },
    /// The handoff is off: stop whatever may write, drop the lock, exit.
    Failed {
        /// Why.
        failure: SuccessorFailure,
        /// The supervisor's reason, if it aborted.
        abort_reason: String,
    },
}

/// The successor, from its `Hello` to authoritative, for every adapter.
///
/// Rules every adapter follows because they are here:
///
/// - what the supervisor already sent is read and handed to the machine
///   before the daemon's `Ready` is: an `Abort` queued while the daemon
///   started up wins, and `Ready` is then never sent
///   ([`SuccessorDriver::ready`]);
/// - the control socket the successor will serve on is bound before
///   `Ready` (a path that cannot be bound fails the handoff while the old
///   binary can still resume) and renamed over the path only after it;
/// - writes are queued and bounded, as for every role;
/// - the lock the machine asks for is taken once the data directory is
///   known ([`SuccessorDriver::set_data_dir`]); a lock error other than
///   "busy" is retried like "busy", within the machine's bound;
/// - it offers [`Capabilities::PROBATION`]: after `Ready`, a thread of the
///   driver's own keeps the session with the supervisor and heartbeats on
///   it until the supervisor closes it (docs/PROTOCOL.md section 10), so a
///   frozen process is told from one that serves whatever the adapter's
///   loop does.
pub struct SuccessorDriver {
    link: Option<Link>,
    machine: SuccessorSession<Vec<u8>>,
    data_dir: Option<PathBuf>,
    /// The machine asked for the lock before the data directory was known.
    lock_wanted: bool,
    lock: Option<DataDirLock>,
    end: Option<SuccessorEnd>,
    reports: VecDeque<SuccessorReport>,
    staged: Option<StagedControlSocket>,
    unread: bool,
    /// The handoff's id, kept when the machine moves to the probation
    /// thread.
    handoff_id: Option<HandoffId>,
    /// The pass channel's reader, once `PassChannel` came.
    receiver: Option<Receiver>,
    /// The connections passed, from `Begin` until the daemon takes them.
    passed: Vec<PassedConnection>,
    /// Why the pass broke, which failed the start.
    pass_error: Option<String>,
}

impl fmt::Debug for SuccessorDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuccessorDriver")
            .field("step", &self.machine.step())
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl SuccessorDriver {
    /// Has `io` watch `control` and says `Hello` with `build_id` (at most
    /// [`handoff_core::MAX_BUILD_ID_LEN`] bytes: a longer one is
    /// `InvalidInput`, and nothing is sent). Do the
    /// start-up work that needs no lock before this: the old binary still
    /// serves meanwhile.
    pub fn new(
        io: &mut impl Io,
        control: UnixStream,
        config: SuccessorConfig,
        build_id: &[u8],
    ) -> io::Result<SuccessorDriver> {
        // A test's misspelt crash point stops the process here, not never.
        crash::check();
        crate::link::check_build_id(build_id)?;
        let mut link = Link::open(io, Source::Control, control)?;
        link.accept_fd();
        // The driver carries out probation itself, for every adapter.
        let config = SuccessorConfig {
            capabilities: config.capabilities.union(Capabilities::PROBATION),
            ..config
        };
        let mut d = SuccessorDriver {
            link: Some(link),
            machine: SuccessorSession::new(clock::now(), config, std::process::id(), build_id),
            data_dir: None,
            lock_wanted: false,
            lock: None,
            end: None,
            reports: VecDeque::new(),
            staged: None,
            unread: false,
            handoff_id: None,
            receiver: None,
            passed: Vec::new(),
            pass_error: None,
        };
        d.settle(io);
        Ok(d)
    }

    /// The data directory whose lock `Begin` lets this process take; a lock
    /// the machine asked for meanwhile is taken now.
    pub fn set_data_dir(&mut self, io: &mut impl Io, data_dir: &Path) {
        self.data_dir = Some(data_dir.to_path_buf());
        if std::mem::take(&mut self.lock_wanted) {
            self.acquire_lock();
        }
        self.settle(io);
    }

    /// Whether the supervisor answered `Hello`.
    pub fn acked(&self) -> bool {
        self.machine.version().is_some()
    }

    /// The handoff's id, once acknowledged.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.machine.handoff_id().or(self.handoff_id)
    }

    /// How the machine ended, once it has.
    pub fn end(&self) -> Option<SuccessorEnd> {
        self.end
    }

    /// The error for a machine that ended failed.
    pub fn error(&self) -> Option<SuccessorError> {
        match self.end? {
            SuccessorEnd::Failed(failure) => Some(SuccessorError::Failed {
                failure,
                abort_reason: self.reason(),
            }),
            SuccessorEnd::Authoritative { .. } => None,
        }
    }

    /// The supervisor's reason for an abort, or why the pass of the
    /// connections broke.
    fn reason(&self) -> String {
        match &self.pass_error {
            Some(e) => format!("the incumbent's connections were not passed whole: {e}"),
            None => self.machine.abort_reason().to_owned(),
        }
    }

    /// The connections the incumbent passed (docs/PROTOCOL.md section 11),
    /// once `Begun` was reported; each only once. Empty when nothing was
    /// passed (a peer did not offer it). Do not read or write them before
    /// [`SuccessorDriver::ready`] has sent `Ready`: until then the
    /// incumbent may still take them back. If the handoff fails, close
    /// them (drop them) without `shutdown`, and the clients see nothing.
    pub fn take_connections(&mut self) -> Vec<PassedConnection> {
        std::mem::take(&mut self.passed)
    }

    /// The next thing to report.
    pub fn poll_report(&mut self) -> Option<SuccessorReport> {
        self.reports.pop_front()
    }

    /// The data-dir lock, once taken.
    pub fn lock(&self) -> Option<&DataDirLock> {
        self.lock.as_ref()
    }

    /// Takes the data-dir lock out of the driver (for an adapter that
    /// keeps it with the daemon's state).
    pub fn take_lock(&mut self) -> Option<DataDirLock> {
        self.lock.take()
    }

    /// When [`SuccessorDriver::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if self.end.is_some() {
            return None;
        }
        if self.unread {
            return Some(std::time::Instant::now());
        }
        let stall = self.link.as_ref().and_then(Link::stall_deadline);
        match (self.machine.poll_timeout(), stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(clock::to_std)
    }

    /// `source` is readable (or hung up).
    pub fn handle_readable(&mut self, io: &mut impl Io, source: Source) {
        if source == Source::Control {
            self.read(io, READ_BUDGET);
        }
        self.after_wake(io);
    }

    /// `source` has room to write.
    pub fn handle_writable(&mut self, io: &mut impl Io, source: Source) {
        if source != Source::Control {
            return;
        }
        let now = clock::now();
        if let Some(l) = self.link.as_mut()
            && l.flush(io, now).is_err()
        {
            self.hang_up(io);
        }
        self.after_wake(io);
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, io: &mut impl Io) {
        let now = clock::now();
        if self.link.as_ref().is_some_and(|l| l.stalled(now)) {
            self.hang_up(io);
        }
        if std::mem::take(&mut self.unread) {
            self.read(io, READ_BUDGET);
        }
        self.after_wake(io);
    }

    /// The daemon serves: binds the control socket it will serve on under
    /// a temporary name beside `socket_path`, hands the machine what the
    /// supervisor already sent (an `Abort` there ends the handoff, and
    /// `Ready` is then not sent), then sends `Ready`.
    ///
    /// A path that cannot be bound fails here, before `Ready`, while the
    /// old binary can still resume: the handoff is reported failed to the
    /// supervisor and the error says why.
    pub fn ready(
        &mut self,
        io: &mut impl Io,
        readiness: &ReadyReport,
        socket_path: &Path,
    ) -> io::Result<()> {
        let staged = match self.staged.take() {
            // Staged at the handshake (`Launch::with_control_socket`).
            Some(staged) if staged.path() == socket_path => staged,
            _ => match stage_control_socket(socket_path) {
                Ok(staged) => staged,
                Err(e) => {
                    self.start_failed(io);
                    return Err(e);
                }
            },
        };
        self.staged = Some(staged);
        // Everything queued now, however much: this is the rule, not a
        // turn in a loop.
        self.read(io, usize::MAX);
        if self.end.is_none() {
            // Before `Ready`, and so before the daemon reads a passed
            // connection: an incumbent rolled back after this must not
            // replay the state it passed.
            if let Some(r) = &self.receiver {
                r.taken();
            }
            let listening: Vec<&str> = readiness.listening_on.iter().map(String::as_str).collect();
            self.machine.handle_ready(
                clock::now(),
                ReadyReportRef {
                    listening_on: Strings::from_slice(&listening),
                    healthz_ok: readiness.healthz_ok,
                    advertised_revision_per_shard: Revisions::from_slice(
                        &readiness.advertised_revision_per_shard,
                    ),
                },
            );
        }
        self.settle(io);
        Ok(())
    }

    /// The daemon could not start: the handoff is off (exit afterwards).
    pub fn start_failed(&mut self, io: &mut impl Io) {
        self.machine.handle_start_failed(clock::now());
        self.settle(io);
    }

    /// After `Authoritative`: closes the connection to the supervisor and
    /// renames the control socket bound by [`SuccessorDriver::ready`] over
    /// its path; returns the listener and the path. Refused before (after
    /// `Failed`, the old incumbent serves on and keeps its control socket).
    pub fn install(&mut self, io: &mut impl Io) -> io::Result<(UnixListener, PathBuf)> {
        if !matches!(self.end, Some(SuccessorEnd::Authoritative { .. })) {
            return Err(io::Error::other(
                "the control socket is installed only once this process is authoritative \
                 (after a failed handoff, stop whatever may write and exit)",
            ));
        }
        if let Some(l) = self.link.take() {
            if self.machine.on_probation() {
                self.keep_probation(l.detach(io));
            } else {
                // `Ready` went into an empty socket buffer; what did not go
                // out now would have nowhere to go later anyway.
                l.close(io);
            }
        }
        let staged = self
            .staged
            .take()
            .ok_or_else(|| io::Error::other("no control socket was staged: call ready first"))?;
        let path = staged.path().to_path_buf();
        let listener = staged.install_as_successor()?;
        Ok((listener, path))
    }

    /// [`SuccessorDriver::install`] for an adapter that left the lock in
    /// the driver: the endpoint to serve on, made from the installed
    /// listener and the lock. A lock that is not held fails before the
    /// rename, so the path is never taken over by a process that could not
    /// serve on it.
    pub fn into_endpoint(&mut self, io: &mut impl Io) -> io::Result<crate::Endpoint> {
        if self.lock.is_none() {
            return Err(io::Error::other(
                "the lock was reported held but is missing",
            ));
        }
        let (listener, path) = self.install(io)?;
        let lock = self.lock.take().expect("checked above");
        Ok(crate::Endpoint::from_parts(listener, &path, lock))
    }

    /// Hands the session, on probation, to a thread that heartbeats on
    /// `link` until the supervisor closes it. The driver's part is over
    /// (the machine finished at `Ready`); what stays here answers only
    /// [`SuccessorDriver::end`] and [`SuccessorDriver::handoff_id`].
    fn keep_probation(&mut self, link: Link) {
        self.handoff_id = self.machine.handoff_id();
        let spent = SuccessorSession::new(clock::now(), SuccessorConfig::default(), 0, b"");
        let machine = std::mem::replace(&mut self.machine, spent);
        let spawned = std::thread::Builder::new()
            .name("handoff-probation".into())
            .spawn(move || probation_loop(link, machine));
        // Without the thread the session closes here (the link drops with
        // the closure), which a supervisor holding us to probation takes
        // for a failure: the handoff is rolled back, never left unwatched.
        drop(spawned);
    }

    fn after_wake(&mut self, io: &mut impl Io) {
        // After every wake-up: a peer that never stops sending must not
        // hold off the deadlines (an early call does nothing).
        if self.end.is_none() {
            self.machine.handle_timeout(clock::now());
        }
        self.settle(io);
    }

    fn hang_up(&mut self, io: &mut impl Io) {
        if let Some(l) = self.link.take() {
            l.close(io);
        }
        self.machine.handle_closed(clock::now());
    }

    /// Reads what the supervisor sent, up to `budget` bytes, and hands it
    /// to the machine frame by frame.
    fn read(&mut self, io: &mut impl Io, mut budget: usize) {
        loop {
            if self.end.is_some() {
                return;
            }
            let Some(link) = self.link.as_mut() else {
                return;
            };
            if link.inbox.is_empty() {
                if budget == 0 {
                    self.unread = true;
                    return;
                }
                match link.read() {
                    Read::Data(n) => budget = budget.saturating_sub(n),
                    Read::WouldBlock => return,
                    Read::Closed => {
                        self.hang_up(io);
                        self.settle(io);
                        return;
                    }
                }
            }
            self.settle(io);
        }
    }

    fn acquire_lock(&mut self) {
        let now = clock::now();
        let Some(dir) = self.data_dir.as_deref() else {
            self.lock_wanted = true;
            return;
        };
        match DataDirLock::acquire(dir) {
            Ok(lock) => {
                self.lock = Some(lock);
                crash::at("successor-after-lock-acquired");
                self.machine.handle_lock_acquired(now);
            }
            Err(_) => self.machine.handle_lock_busy(now),
        }
    }

    /// Carries out every output, feeding bytes already read one frame at a
    /// time, until the machine waits for something.
    fn settle(&mut self, io: &mut impl Io) {
        loop {
            while let Some(out) = self.machine.poll_output() {
                let now = clock::now();
                match out {
                    SuccessorOutput::Transmit(frame) => {
                        let sent = match self.link.as_mut() {
                            Some(l) => l.send(io, now, frame).is_ok(),
                            None => false,
                        };
                        if sent {
                            crash::sent("successor", frame);
                        } else {
                            self.hang_up(io);
                        }
                    }
                    SuccessorOutput::AcquireLock => self.acquire_lock(),
                    SuccessorOutput::Start => {
                        // Every connection must be here before the daemon
                        // starts: the incumbent closes its copies at
                        // `Commit`, so one left behind would be lost.
                        if self.pass_error.is_none()
                            && let Some(r) = &self.receiver
                        {
                            match r.wait() {
                                Ok(passed) => self.passed = passed,
                                Err(e) => self.pass_error = Some(e),
                            }
                        }
                        if self.pass_error.is_some() {
                            self.machine.handle_start_failed(now);
                        } else {
                            self.reports.push_back(SuccessorReport::Begun);
                        }
                    }
                    SuccessorOutput::PassChannel {
                        handoff_id,
                        version,
                    } => {
                        let end = self.link.as_mut().and_then(Link::take_fd);
                        match end.filter(|fd| handoff_os::fdpass::is_socket(fd.as_fd())) {
                            Some(fd) => {
                                match Receiver::start(UnixStream::from(fd), handoff_id, version) {
                                    Ok(r) => self.receiver = Some(r),
                                    Err(e) => self.pass_error = Some(e.to_string()),
                                }
                            }
                            None => {
                                self.pass_error =
                                    Some("PassChannel came without a socket beside it".into())
                            }
                        }
                    }
                    SuccessorOutput::Finished(end) => {
                        self.end = Some(end);
                        self.reports.push_back(match end {
                            SuccessorEnd::Authoritative { supervisor_gone } => {
                                SuccessorReport::Authoritative { supervisor_gone }
                            }
                            // The lock stays held until the daemon drops it,
                            // after whatever may write has stopped.
                            SuccessorEnd::Failed(failure) => SuccessorReport::Failed {
                                failure,
                                abort_reason: self.reason(),
                            },
                        });
                    }
                }
            }
            if self.end.is_some() {
                return;
            }
            match self.link.as_mut() {
                Some(l) if !l.inbox.is_empty() => {
                    l.feed("successor", |b| self.machine.handle_input(clock::now(), b));
                }
                _ => return,
            }
        }
    }
}

/// Watches nothing: the probation thread waits on its one descriptor
/// itself.
struct Unwatched;

impl Io for Unwatched {
    fn watch(&mut self, _: Source, _: std::os::fd::BorrowedFd<'_>, _: bool) -> io::Result<()> {
        Ok(())
    }

    fn unwatch(&mut self, _: Source, _: std::os::fd::BorrowedFd<'_>) {}
}

/// The successor's session after `Ready`, on a thread of its own: sends
/// what the machine outputs (its probation heartbeats), reads (and drops)
/// what the supervisor sends, and ends when the supervisor closes the
/// socket, the socket fails, or the supervisor stops reading.
fn probation_loop(mut link: Link, mut machine: SuccessorSession<Vec<u8>>) {
    let mut io = Unwatched;
    while machine.on_probation() {
        let now = clock::now();
        while let Some(out) = machine.poll_output() {
            if let SuccessorOutput::Transmit(frame) = out
                && link.send(&mut io, now, frame).is_err()
            {
                machine.handle_closed(now);
                break;
            }
        }
        if !machine.on_probation() {
            break;
        }
        let _ = link.flush(&mut io, now);
        if link.stalled(now) {
            machine.handle_closed(now);
            break;
        }
        let next = [machine.poll_timeout(), link.stall_deadline()]
            .into_iter()
            .flatten()
            .min();
        let wait = next.map(clock::until);
        match poll_readable(&[link.fd()], wait) {
            Ok(ready) if ready.first() == Some(&true) => read_on_probation(&mut link, &mut machine),
            Ok(_) => {}
            // A signal for the process interrupted the wait: wait again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => machine.handle_closed(clock::now()),
        }
        machine.handle_timeout(clock::now());
    }
}

/// Everything the supervisor sent, handed to the machine (which drops it),
/// or its close.
fn read_on_probation(link: &mut Link, machine: &mut SuccessorSession<Vec<u8>>) {
    loop {
        match link.read() {
            Read::Data(_) => {
                while !link.inbox.is_empty() {
                    link.feed("successor", |b| machine.handle_input(clock::now(), b));
                }
            }
            Read::WouldBlock => return,
            Read::Closed => return machine.handle_closed(clock::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A launch as a supervisor would give it, and the supervisor's end.
    fn launch(path: Option<PathBuf>) -> (Launch, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let launch = Launch {
            control: ours,
            listeners: InheritedListeners::default(),
            config: SuccessorConfig::default(),
            control_socket: path,
        };
        (launch, theirs)
    }

    fn staging_dirs(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("s").exists())
            .collect()
    }

    #[test]
    fn a_control_socket_known_at_launch_is_bound_before_begin() {
        let dir = std::env::temp_dir().join(format!("hd-stage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");

        // Without the path, nothing is bound until the daemon announces.
        let (plain, _sup) = launch(None);
        let (driver, _) = plain.start_driver(&mut Unwatched, b"t").unwrap();
        assert!(staging_dirs(&dir).is_empty());
        drop(driver);

        // With it, the socket is bound under its temporary name at once,
        // and kept for the announce to the same path.
        let (early, _sup) = launch(Some(path.clone()));
        let (driver, _) = early.start_driver(&mut Unwatched, b"t").unwrap();
        assert_eq!(staging_dirs(&dir).len(), 1, "staged at the handshake");
        assert_eq!(
            driver.staged.as_ref().map(|s| s.path()),
            Some(path.as_path())
        );
        assert!(!path.exists(), "the path itself is taken only after Commit");
        drop(driver);
        assert!(
            staging_dirs(&dir).is_empty(),
            "a dropped driver leaves nothing"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
