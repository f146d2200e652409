//! The incumbent's side: its [`Endpoint`] (control listener, path, lock and
//! settings) and [`IncumbentDriver`], which answers supervisors on it one
//! session at a time for every adapter.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use handoff_core::{
    Capabilities, EndCause, HandoffId, IncumbentConfig, IncumbentEnd, IncumbentOutput,
    IncumbentSession, Message, ProtoVersion, Revisions, SealFailure, SealReportRef, Strings,
};
use handoff_os::control::{self, AcceptRetry, PeerPolicy, peer_credentials};
use handoff_os::crash;
use handoff_os::lock::{DataDirLock, LockError};

use crate::clock;
use crate::hooks::{Hook, HookDone};
use crate::link::{Io, Link, READ_BUDGET, Read, Source};
use crate::passing::Handover;

/// The control side of a serving daemon, before any adapter serves it: its
/// control listener and path, its data-dir lock, and the settings its
/// sessions use. Every adapter's incumbent is made from one.
pub struct Endpoint {
    listener: UnixListener,
    socket_path: PathBuf,
    data_dir: PathBuf,
    lock: Option<DataDirLock>,
    build_id: Vec<u8>,
    policy: PeerPolicy,
    config: IncumbentConfig,
    /// The identity of the control socket file this incumbent listens on.
    bound: Option<(u64, u64)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("socket_path", &self.socket_path)
            .field("data_dir", &self.data_dir)
            .field("holds_lock", &self.lock.is_some())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds the control socket at `socket_path` for a daemon that holds
    /// `lock` and started cold (no predecessor to take over from). Replaces
    /// a stale socket left at the path.
    pub fn bind_cold_start(socket_path: &Path, lock: DataDirLock) -> io::Result<Endpoint> {
        let listener = control::bind_control_socket(socket_path)?;
        Ok(Endpoint::from_parts(listener, socket_path, lock))
    }

    /// An endpoint from a control listener already bound at `socket_path`
    /// and the lock, e.g. after a successor took the path over.
    pub fn from_parts(listener: UnixListener, socket_path: &Path, lock: DataDirLock) -> Self {
        Endpoint {
            listener,
            socket_path: socket_path.to_path_buf(),
            data_dir: lock.data_dir().to_path_buf(),
            lock: Some(lock),
            build_id: Vec::new(),
            policy: PeerPolicy::same_user(),
            config: IncumbentConfig::default(),
            bound: control::path_identity(socket_path),
        }
    }

    /// The build id announced in `Hello`.
    pub fn with_build_id(mut self, build_id: impl Into<Vec<u8>>) -> Self {
        self.build_id = build_id.into();
        self
    }

    /// Also accept supervisors running as these uids (besides ours and
    /// root).
    pub fn with_allowed_uids(mut self, uids: Vec<u32>) -> Self {
        self.policy = PeerPolicy::with_allowed_uids(uids);
        self
    }

    /// Which supervisors may connect.
    pub fn with_peer_policy(mut self, policy: PeerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Overrides the session timings.
    pub fn with_config(mut self, config: IncumbentConfig) -> Self {
        self.config = config;
        self
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The data directory whose lock this endpoint holds.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Whether this process holds the data-dir lock now.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// The session timings.
    pub fn config(&self) -> IncumbentConfig {
        self.config
    }

    /// The build id announced in `Hello`.
    pub fn build_id(&self) -> &[u8] {
        &self.build_id
    }

    /// Which supervisors may connect.
    pub fn peer_policy(&self) -> &PeerPolicy {
        &self.policy
    }
}

/// What an incumbent's adapter does besides watching descriptors: run
/// the daemon's hooks.
pub trait IncumbentIo: Io {
    /// Starts `hook` and returns at once; report its end with
    /// [`IncumbentDriver::hook_done`]. The driver keeps answering the
    /// supervisor meanwhile (heartbeats, deadlines), and never asks for a
    /// second hook before the first is done. A session does not end while
    /// a hook runs: the machine waits for it, however the session went.
    fn run_hook(&mut self, hook: Hook);
}

/// Something an [`IncumbentDriver`] reports.
#[derive(Debug)]
pub enum SessionReport {
    /// A control session ended. After `Committed` the successor serves:
    /// finish the open connections and exit. After `Superseded` or
    /// `ResumeFailed`, exit. After `Serving`, go on: the next supervisor is
    /// accepted.
    Ended(IncumbentEnd),
    /// `accept` on the control socket failed in a way that does not pass:
    /// no supervisor can reach this incumbent any more. The lock is still
    /// held, so serving on is safe, but no handoff can happen until the
    /// daemon is restarted.
    ControlSocketFailed(io::Error),
}

/// How serving ended without an error: the handoff committed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeEnd {
    /// The successor serves now. Finish the connections still open and exit.
    Committed {
        /// The daemon's state at the end, as its hooks report it.
        snapshot: crate::StateSnapshot,
    },
}

/// Why serving stopped without a commit.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The data-dir lock could not be taken back after a sealed handoff
    /// failed: another process holds it (the successor won). Stop serving
    /// writes and exit.
    Superseded {
        /// What ended the session.
        cause: EndCause,
        /// Who holds the lock, if its pidfile says.
        holder_pid: Option<u32>,
    },
    /// The resume hook failed after an aborted handoff; the daemon cannot
    /// serve. Exit, so that the supervisor starts it again.
    ResumeFailed {
        /// What ended the session.
        cause: EndCause,
        /// The hook's error.
        error: String,
    },
    /// The control socket failed for good: no supervisor can reach this
    /// daemon. Stop writing and exit (the supervisor starts the daemon
    /// again), or a cold start elsewhere could take the lock while this
    /// process still writes.
    Io(io::Error),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Superseded { cause, holder_pid } => {
                write!(f, "superseded after {cause}: the data-dir lock is held by ")?;
                match holder_pid {
                    Some(pid) => write!(f, "pid {pid}"),
                    None => f.write_str("another process"),
                }?;
                f.write_str("; stop serving and exit")
            }
            ServeError::ResumeFailed { cause, error } => write!(
                f,
                "could not resume after {cause}: {error}; exit so the supervisor restarts the daemon"
            ),
            ServeError::Io(e) => write!(f, "control socket: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

struct Session {
    link: Option<Link>,
    machine: IncumbentSession<Vec<u8>>,
    /// The pass channel's end, once `PassChannel` came.
    handover: Handover,
}

/// Answers supervisors on an [`Endpoint`], for every adapter: accepts one
/// session at a time from a permitted uid, carries out the machine's
/// outputs (writes, the lock, the control path, the hooks through
/// [`IncumbentIo`]), and reports each session's end.
///
/// Rules every adapter follows because they are here:
///
/// - a connection from a uid the peer policy does not permit is closed at
///   once, before any byte is read or written;
/// - one session at a time: the others wait in the listener's backlog,
///   which is watched only between sessions;
/// - writes are queued and bounded ([`crate::link::WRITE_TIMEOUT`],
///   [`crate::link::MAX_UNSENT`]): a supervisor that stops reading ends
///   the session, which undoes the handoff;
/// - a lock taken back after a failed seal also takes the control path
///   back if a successor had renamed its socket over it (its `Ready`
///   crossed the abort);
/// - a lock error other than "busy" (the directory vanished, no
///   permission) is retried like "busy": it will not clear, but the
///   machine bounds the retries and then ends the session `Superseded`,
///   which stops the daemon rather than letting it write without the lock;
/// - the deadlines are looked at after every wake-up.
pub struct IncumbentDriver {
    ep: Endpoint,
    session: Option<Session>,
    /// Whether the listener is watched (between sessions).
    listening: bool,
    done: bool,
    accept_retry_at: Option<std::time::Instant>,
    reports: VecDeque<SessionReport>,
    resume_error: Option<String>,
    last_end: Option<IncumbentEnd>,
    /// The session's read budget ran out with bytes still waiting.
    unread: bool,
}

impl fmt::Debug for IncumbentDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncumbentDriver")
            .field("endpoint", &self.ep)
            .field("in_session", &self.session.is_some())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl IncumbentDriver {
    /// A driver for `ep`, which must hold the data-dir lock and have a
    /// build id of at most [`handoff_core::MAX_BUILD_ID_LEN`] bytes.
    /// Nothing is accepted until [`IncumbentDriver::start`].
    pub fn new(ep: Endpoint) -> io::Result<IncumbentDriver> {
        // A test's misspelt crash point stops the process here, not never.
        crash::check();
        crate::link::check_build_id(&ep.build_id)?;
        if ep.lock.is_none() {
            return Err(io::Error::other("an incumbent must hold the data-dir lock"));
        }
        ep.listener.set_nonblocking(true)?;
        let mut ep = ep;
        // The driver answers `ListenersRequest` (`SendListeners` below) for
        // every adapter, so every incumbent offers it. Probation needs
        // nothing of the driver beyond the resume it already carries out
        // (the hook reopens the state from disk), so every incumbent offers
        // that too. Passing connections is the drain hook's choice: a hook
        // that passes none leaves the drain as it was, so it is offered
        // too.
        ep.config.capabilities = ep
            .config
            .capabilities
            .union(Capabilities::RECLAIM_LISTENERS)
            .union(Capabilities::PROBATION)
            .union(Capabilities::PASS_CONNECTIONS);
        Ok(IncumbentDriver {
            ep,
            session: None,
            listening: false,
            done: false,
            accept_retry_at: None,
            reports: VecDeque::new(),
            resume_error: None,
            last_end: None,
            unread: false,
        })
    }

    /// Watches the listener and accepts what already waits there.
    pub fn start(&mut self, io: &mut impl IncumbentIo) {
        self.settle(io);
    }

    /// The endpoint served.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Whether this process holds the data-dir lock.
    pub fn holds_lock(&self) -> bool {
        self.ep.lock.is_some()
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.session.is_some()
    }

    /// Whether serving is over (committed, superseded, unable to resume,
    /// or the control socket failed): no more sessions are accepted.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// How the last session ended, for logs.
    pub fn last_session_end(&self) -> Option<IncumbentEnd> {
        self.last_end
    }

    /// The next thing to report.
    pub fn poll_report(&mut self) -> Option<SessionReport> {
        self.reports.pop_front()
    }

    /// What a report means for a `serve` loop: `None` to serve on,
    /// `Some(Ok(()))` once a handoff committed, `Some(Err(_))` for an end
    /// that stops serving.
    pub fn verdict(&mut self, report: SessionReport) -> Option<Result<(), ServeError>> {
        match report {
            SessionReport::Ended(IncumbentEnd::Serving(_)) => None,
            SessionReport::Ended(IncumbentEnd::Committed) => Some(Ok(())),
            SessionReport::Ended(IncumbentEnd::Superseded(cause)) => {
                Some(Err(ServeError::Superseded {
                    cause,
                    holder_pid: DataDirLock::recorded_holder(&self.ep.data_dir),
                }))
            }
            SessionReport::Ended(IncumbentEnd::ResumeFailed(cause)) => {
                Some(Err(ServeError::ResumeFailed {
                    cause,
                    error: self.resume_error.take().unwrap_or_default(),
                }))
            }
            SessionReport::ControlSocketFailed(e) => Some(Err(ServeError::Io(e))),
        }
    }

    /// When [`IncumbentDriver::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if self.unread {
            return Some(std::time::Instant::now());
        }
        let session = self.session.as_ref().and_then(|s| {
            let stall = s.link.as_ref().and_then(Link::stall_deadline);
            match (s.machine.poll_timeout(), stall) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        });
        session
            .map(clock::to_std)
            .into_iter()
            .chain(self.accept_retry_at)
            .min()
    }

    /// `source` is readable (or hung up).
    pub fn handle_readable(&mut self, io: &mut impl IncumbentIo, source: Source) {
        match source {
            Source::Listener => {}
            Source::Control => self.read(io),
            _ => return,
        }
        self.after_wake(io);
    }

    /// `source` has room to write.
    pub fn handle_writable(&mut self, io: &mut impl IncumbentIo, source: Source) {
        if source != Source::Control {
            return;
        }
        let now = clock::now();
        if let Some(s) = self.session.as_mut()
            && let Some(link) = s.link.as_mut()
            && link.flush(io, now).is_err()
        {
            hang_up(s, io);
        }
        self.after_wake(io);
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, io: &mut impl IncumbentIo) {
        let now = clock::now();
        if let Some(s) = self.session.as_mut()
            && s.link.as_ref().is_some_and(|l| l.stalled(now))
        {
            hang_up(s, io);
        }
        if self
            .accept_retry_at
            .is_some_and(|t| t <= std::time::Instant::now())
        {
            self.accept_retry_at = None;
        }
        if std::mem::take(&mut self.unread) {
            self.read(io);
        }
        self.after_wake(io);
    }

    /// The hook the driver asked for through [`IncumbentIo::run_hook`]
    /// ended.
    pub fn hook_done(&mut self, io: &mut impl IncumbentIo, done: HookDone) {
        if let Some(s) = self.session.as_mut() {
            let (m, now) = (&mut s.machine, clock::now());
            match done {
                HookDone::Drained(Ok(report)) => match s.handover.finish() {
                    Ok(passed) => {
                        m.handle_connections_passed(now, passed);
                        m.handle_drained(now, report);
                    }
                    // A broken pass fails the drain: the handoff is undone
                    // and the daemon serves every connection again.
                    Err(_) => m.handle_drain_failed(now),
                },
                HookDone::Drained(Err(_)) => m.handle_drain_failed(now),
                HookDone::Sealed(Ok(sealed)) => m.handle_sealed(
                    now,
                    SealReportRef {
                        last_revision_per_shard: Revisions::from_slice(
                            &sealed.last_revision_per_shard,
                        ),
                        data_dir_fingerprint: sealed.data_dir_fingerprint,
                    },
                ),
                HookDone::Sealed(Err(error)) => m.handle_seal_failed(
                    now,
                    SealFailure {
                        error: &error,
                        partial_state: "",
                    },
                ),
                HookDone::Resumed(Ok(())) => m.handle_resumed(now),
                HookDone::Resumed(Err(error)) => {
                    self.resume_error = Some(error);
                    m.handle_resume_failed(now);
                }
            }
        }
        self.settle(io);
    }

    /// Progress of a long seal (each report is also a heartbeat).
    pub fn seal_progress(
        &mut self,
        io: &mut impl IncumbentIo,
        sealed: u32,
        total: u32,
        last_revision: u64,
    ) {
        if let Some(s) = self.session.as_mut() {
            s.machine
                .handle_seal_progress(clock::now(), sealed, total, last_revision);
        }
        self.settle(io);
    }

    fn after_wake(&mut self, io: &mut impl IncumbentIo) {
        // After every wake-up, not only the timer's: a peer that never
        // stops sending must not hold off the deadlines (an early call does
        // nothing).
        if let Some(s) = self.session.as_mut() {
            s.machine.handle_timeout(clock::now());
        }
        self.settle(io);
    }

    /// Reads what the supervisor sent, up to the read budget, and hands it
    /// to the machine frame by frame.
    fn read(&mut self, io: &mut impl IncumbentIo) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let Some(link) = s.link.as_mut() else { return };
            if link.inbox.is_empty() {
                if budget == 0 {
                    self.unread = true;
                    return;
                }
                match link.read() {
                    Read::Data(n) => budget = budget.saturating_sub(n),
                    Read::WouldBlock => return,
                    Read::Closed => {
                        hang_up(s, io);
                        self.pump(io);
                        return;
                    }
                }
            }
            self.pump(io);
        }
    }

    /// Carries out the session's outputs and, between sessions, accepts
    /// the next one.
    fn settle(&mut self, io: &mut impl IncumbentIo) {
        self.pump(io);
        self.accept(io);
    }

    /// Accepts sessions while none is open: each is set going at once, and
    /// one that ends at once makes way for the next.
    fn accept(&mut self, io: &mut impl IncumbentIo) {
        while self.session.is_none() && !self.done {
            if self.accept_retry_at.is_some() {
                return;
            }
            if !self.listening {
                if let Err(e) = io.watch(Source::Listener, self.ep.listener.as_fd(), false) {
                    self.fail_control_socket(e);
                    return;
                }
                self.listening = true;
            }
            let stream = match self.ep.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match control::accept_retry(&e) {
                    AcceptRetry::Now => continue,
                    AcceptRetry::After(pause) => {
                        // Not watched meanwhile: the waiting connection
                        // keeps the listener readable, and a level-triggered
                        // loop would spin on it until the pause is over.
                        io.unwatch(Source::Listener, self.ep.listener.as_fd());
                        self.listening = false;
                        self.accept_retry_at = Some(std::time::Instant::now() + pause);
                        return;
                    }
                    AcceptRetry::Fatal => {
                        self.fail_control_socket(io::Error::new(
                            e.kind(),
                            format!(
                                "accept on the control socket {}: {e}",
                                self.ep.socket_path.display()
                            ),
                        ));
                        return;
                    }
                },
            };
            // Before anything is read or written: a uid the policy does not
            // permit gets nothing, not even our `Hello`.
            let permitted = peer_credentials(&stream).is_ok_and(|c| self.ep.policy.permits(c.uid));
            if !permitted {
                continue;
            }
            // One session at a time: the rest wait in the backlog.
            io.unwatch(Source::Listener, self.ep.listener.as_fd());
            self.listening = false;
            let Ok(mut link) = Link::open(io, Source::Control, stream) else {
                continue;
            };
            link.accept_fd();
            let machine = IncumbentSession::new(
                clock::now(),
                self.ep.config,
                std::process::id(),
                &self.ep.build_id,
            );
            self.session = Some(Session {
                link: Some(link),
                machine,
                handover: Handover::unavailable(),
            });
            self.pump(io);
        }
    }

    fn fail_control_socket(&mut self, e: io::Error) {
        self.done = true;
        self.reports
            .push_back(SessionReport::ControlSocketFailed(e));
    }

    /// Carries out the session's outputs, feeding bytes already read one
    /// frame at a time, until the machine waits for something.
    fn pump(&mut self, io: &mut impl IncumbentIo) {
        loop {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            if let Some(out) = s.machine.poll_output() {
                let now = clock::now();
                match out {
                    IncumbentOutput::Transmit(frame) => {
                        let sent = match s.link.as_mut() {
                            Some(l) => l.send(io, now, frame).is_ok(),
                            None => false,
                        };
                        if sent {
                            crash::sent("incumbent", frame);
                        } else {
                            hang_up(s, io);
                        }
                    }
                    IncumbentOutput::Drain { deadline } => io.run_hook(Hook::Drain {
                        deadline: clock::to_std(deadline),
                        handover: s.handover.clone(),
                    }),
                    IncumbentOutput::Seal => io.run_hook(Hook::Seal),
                    IncumbentOutput::Resume => {
                        // The successor, if it got that far, has exited: what
                        // it said about the connections is in the socket.
                        s.handover.look_for_taken();
                        io.run_hook(Hook::Resume)
                    }
                    IncumbentOutput::PassChannel {
                        handoff_id,
                        version,
                    } => {
                        // Without a usable end nothing is passed, and the
                        // successor, never sent `PassDone`, fails its start:
                        // the handoff is undone with everything still ours.
                        let end = s.link.as_mut().and_then(Link::take_fd);
                        if let Some(fd) = end
                            && handoff_os::fdpass::is_socket(fd.as_fd())
                            && let Ok(h) = Handover::open(UnixStream::from(fd), handoff_id, version)
                        {
                            s.handover = h;
                        }
                    }
                    IncumbentOutput::ReleaseLock => {
                        self.ep.lock = None;
                        crash::at("incumbent-after-lock-released");
                    }
                    IncumbentOutput::AcquireLock => match DataDirLock::acquire(&self.ep.data_dir) {
                        Ok(lock) => {
                            self.ep.lock = Some(lock);
                            // Taken back (the machine asks only after a seal
                            // released it): the successor is gone, and may
                            // have taken the path over first. The listener
                            // is not watched during a session, so it is
                            // swapped here and watched when the session
                            // ends. Should the rebind fail, the old listener
                            // still serves whoever has it.
                            if let Some(Ok(new)) = control::reclaim_control_path(
                                &self.ep.socket_path,
                                &mut self.ep.bound,
                            ) && new.set_nonblocking(true).is_ok()
                            {
                                self.ep.listener = new;
                            }
                            s.machine.handle_lock_acquired(now);
                        }
                        // Anything else will not clear by retrying, but the
                        // machine bounds the retries anyway.
                        Err(LockError::Busy { .. } | LockError::HolderAlive { .. }) | Err(_) => {
                            s.machine.handle_lock_busy(now)
                        }
                    },
                    IncumbentOutput::SendListeners {
                        handoff_id,
                        version,
                    } => {
                        let sent = match (listeners_frame(handoff_id, version), s.link.as_mut()) {
                            (Ok((frame, fds)), Some(l)) => {
                                l.send_with_fds(io, now, &frame, fds).is_ok()
                            }
                            _ => false,
                        };
                        if !sent {
                            hang_up(s, io);
                        }
                    }
                    IncumbentOutput::Close => {
                        if let Some(l) = s.link.take() {
                            l.close(io);
                        }
                    }
                    IncumbentOutput::Finished(end) => {
                        if let Some(l) = s.link.take() {
                            l.close(io);
                        }
                        self.session = None;
                        self.unread = false;
                        self.last_end = Some(end);
                        self.done = !end.keeps_serving();
                        self.reports.push_back(SessionReport::Ended(end));
                        // The next session is accepted by `settle` or the
                        // loop in `accept`, never from here: a backlog of
                        // connections that close at once would otherwise
                        // recurse once per connection.
                        return;
                    }
                }
                continue;
            }
            match s.link.as_mut() {
                Some(l) if !l.inbox.is_empty() => {
                    l.feed("incumbent", |b| s.machine.handle_input(clock::now(), b));
                }
                _ => return,
            }
        }
    }
}

/// The `Listeners` frame answering a restarted supervisor, and a duplicate
/// of each listener this process was started with to pass beside it
/// (docs/PROTOCOL.md section 9). More than one message can carry
/// ([`handoff_os::fdpass::MAX_FDS`]) are not offered at all: the
/// supervisor finds none of them and says so, which beats a silent part.
fn listeners_frame(
    handoff_id: HandoffId,
    version: ProtoVersion,
) -> io::Result<(Vec<u8>, Vec<std::os::fd::OwnedFd>)> {
    let mut passed = handoff_os::fdpass::passed_listeners();
    if passed.len() > handoff_os::fdpass::MAX_FDS {
        passed = &[];
    }
    let names: Vec<&str> = passed.iter().map(|(n, _)| n.as_str()).collect();
    let fds = passed
        .iter()
        .map(|(_, fd)| fd.try_clone())
        .collect::<io::Result<Vec<_>>>()?;
    let msg = Message::Listeners {
        handoff_id,
        names: Strings::from_slice(&names),
    };
    let frame = crate::passing::frame_of(version, &msg)
        .map_err(|e| io::Error::other(format!("cannot encode the listeners' names: {e:?}")))?;
    Ok((frame, fds))
}

/// The supervisor's connection failed or it stopped reading: close it and
/// tell the machine, which undoes the handoff.
fn hang_up(s: &mut Session, io: &mut impl Io) {
    if let Some(l) = s.link.take() {
        l.close(io);
    }
    s.machine.handle_closed(clock::now());
}
