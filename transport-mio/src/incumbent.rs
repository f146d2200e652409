//! The incumbent in the caller's mio loop: its control listener and the
//! current session are registered under the caller's two tokens, timers
//! come out through [`MioIncumbent::timeout`], and the drain, seal and
//! resume the protocol asks for come out as [`IncumbentEvent`]s that the
//! daemon completes whenever it is ready. Nothing here blocks or spawns a
//! thread.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use handoff_core::{
    DrainReport, IncumbentConfig, IncumbentOutput, IncumbentSession, Revisions, SealFailure,
    SealReport, SessionEnd,
};
use handoff_std::os::control::{
    AcceptRetry, PeerPolicy, accept_retry, bind_control_socket, path_identity, peer_credentials,
    reclaim_control_path,
};
use handoff_std::os::lock::DataDirLock;
use handoff_std::{Incumbent, SealOutput};
use handoff_std::{clock, crash};
use mio::event::Event;
use mio::net::UnixListener;
use mio::{Interest, Registry, Token};

use crate::conn::{Conn, Read};

/// Something the daemon must do, or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IncumbentEvent {
    /// Stop accepting, finish in-flight requests, make acknowledged work
    /// durable; then call [`MioIncumbent::drained`] (or `drain_failed`).
    /// Keep the listeners open: they are shared.
    Drain {
        /// When the drain grace ends.
        deadline: std::time::Instant,
    },
    /// Flush and close the writer state; then call [`MioIncumbent::sealed`]
    /// (or `seal_failed`). The lock is released after a successful seal.
    Seal,
    /// Reopen the writer state and accept again (the lock is held); then
    /// call [`MioIncumbent::resumed`] (or `resume_failed`).
    Resume,
    /// A control session ended. After [`SessionEnd::Committed`] the
    /// successor serves: finish the open connections and exit. After
    /// `Superseded` or `ResumeFailed`, exit. After `Serving`, go on.
    SessionEnded(SessionEnd),
    /// `accept` on the control socket failed in a way that does not pass
    /// (the text says how): no supervisor can reach this incumbent any more.
    /// The lock is still held, so serving on is safe, but no handoff can
    /// happen until the daemon is restarted.
    ControlSocketFailed(String),
}

struct Session {
    conn: Option<Conn>,
    machine: IncumbentSession<Vec<u8>>,
}

/// The control side of a daemon served from a mio loop.
pub struct MioIncumbent {
    listener: UnixListener,
    socket_path: PathBuf,
    data_dir: PathBuf,
    lock: Option<DataDirLock>,
    build_id: Vec<u8>,
    policy: PeerPolicy,
    config: IncumbentConfig,
    tokens: Option<(Token, Token)>,
    session: Option<Session>,
    events: VecDeque<IncumbentEvent>,
    done: bool,
    /// When to try `accept` again after a shortage of descriptors: mio
    /// reports readiness once, so a connection left in the backlog would
    /// otherwise wait for the next one.
    accept_retry_at: Option<std::time::Instant>,
    /// The identity of the control socket file this incumbent listens on.
    bound: Option<(u64, u64)>,
}

impl std::fmt::Debug for MioIncumbent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MioIncumbent")
            .field("socket_path", &self.socket_path)
            .field("holds_lock", &self.lock.is_some())
            .field("in_session", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl MioIncumbent {
    /// Binds the control socket at `socket_path` for a daemon started cold
    /// that holds `lock`.
    pub fn bind_cold_start(socket_path: &Path, lock: DataDirLock) -> io::Result<MioIncumbent> {
        let listener = bind_control_socket(socket_path)?;
        MioIncumbent::from_std(Incumbent::from_parts(listener, socket_path, lock))
    }

    /// Takes over a blocking-adapter incumbent (for example the one a
    /// successor's `announce_and_bind` returned), with the timings, build
    /// id and allowed uids set on it.
    pub fn from_std(incumbent: Incumbent) -> io::Result<MioIncumbent> {
        let (config, policy) = (incumbent.config(), incumbent.peer_policy().clone());
        let build_id = incumbent.build_id().to_vec();
        let (listener, socket_path, lock) = incumbent.into_parts();
        listener.set_nonblocking(true)?;
        let data_dir = lock
            .as_ref()
            .map(|l| l.data_dir().to_path_buf())
            .ok_or_else(|| io::Error::other("an incumbent must hold the data-dir lock"))?;
        let bound = path_identity(&socket_path);
        Ok(MioIncumbent {
            listener: UnixListener::from_std(listener),
            socket_path,
            data_dir,
            lock,
            build_id,
            policy,
            config,
            tokens: None,
            session: None,
            events: VecDeque::new(),
            done: false,
            accept_retry_at: None,
            bound,
        })
    }

    /// The build id announced in `Hello`.
    pub fn with_build_id(mut self, build_id: impl Into<Vec<u8>>) -> Self {
        self.build_id = build_id.into();
        self
    }

    /// Also accept supervisors running as these uids.
    pub fn with_allowed_uids(mut self, uids: Vec<u32>) -> Self {
        self.policy = PeerPolicy::with_allowed_uids(uids);
        self
    }

    /// Overrides the session timings.
    pub fn with_config(mut self, config: IncumbentConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers the control listener under `listener` and (later) each
    /// session under `session`.
    pub fn register(
        &mut self,
        registry: &Registry,
        listener: Token,
        session: Token,
    ) -> io::Result<()> {
        registry.register(&mut self.listener, listener, Interest::READABLE)?;
        self.tokens = Some((listener, session));
        // Connections may have queued before registration.
        self.accept(registry);
        Ok(())
    }

    /// Whether this process holds the data-dir lock.
    pub fn holds_lock(&self) -> bool {
        self.lock.is_some()
    }

    /// Whether the incumbent is over (committed, superseded, unable to
    /// resume, or its control socket failed): it accepts no more sessions.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handles `event` if it is one of ours; returns whether it was.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        let Some((listener, session)) = self.tokens else {
            return false;
        };
        if event.token() == listener {
            self.accept(registry);
            true
        } else if event.token() == session {
            if event.is_writable()
                && let Some(s) = self.session.as_mut()
                && let Some(conn) = s.conn.as_mut()
                && conn.flush(registry).is_err()
            {
                s.conn = None;
                s.machine.handle_closed(clock::now());
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                self.read(registry);
            }
            // After every wake-up, as every adapter does: a peer that never
            // stops sending must not hold off the deadlines, whatever the
            // caller's loop does (an early call does nothing).
            if let Some(s) = self.session.as_mut() {
                s.machine.handle_timeout(clock::now());
            }
            self.settle(registry);
            true
        } else {
            false
        }
    }

    /// The next instant at which [`MioIncumbent::handle_timeout`] must be
    /// called (use it for the `Poll::poll` timeout).
    pub fn timeout(&self) -> Option<std::time::Instant> {
        self.session
            .as_ref()
            .and_then(|s| s.machine.poll_timeout())
            .map(clock::to_std)
            .into_iter()
            .chain(self.accept_retry_at)
            .min()
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        if let Some(s) = self.session.as_mut() {
            s.machine.handle_timeout(clock::now());
        }
        if self
            .accept_retry_at
            .is_some_and(|t| t <= std::time::Instant::now())
        {
            self.accept_retry_at = None;
            self.accept(registry);
        }
        self.settle(registry);
    }

    /// The next thing for the daemon to do or know.
    pub fn poll_event(&mut self) -> Option<IncumbentEvent> {
        self.events.pop_front()
    }

    /// The drain finished.
    pub fn drained(&mut self, registry: &Registry, report: DrainReport) {
        self.complete(registry, |m, now| m.handle_drained(now, report));
    }

    /// The drain failed; a `Resume` follows.
    pub fn drain_failed(&mut self, registry: &Registry) {
        self.complete(registry, |m, now| m.handle_drain_failed(now));
    }

    /// The seal finished: the writer state is closed.
    pub fn sealed(&mut self, registry: &Registry, output: &SealOutput) {
        self.complete(registry, |m, now| {
            m.handle_sealed(
                now,
                SealReport {
                    last_revision_per_shard: Revisions::from_slice(&output.last_revision_per_shard),
                    data_dir_fingerprint: output.data_dir_fingerprint,
                },
            )
        });
    }

    /// The seal failed (the lock is kept); a `Resume` follows.
    pub fn seal_failed(&mut self, registry: &Registry, error: &str) {
        self.complete(registry, |m, now| {
            m.handle_seal_failed(
                now,
                SealFailure {
                    error,
                    partial_state: "",
                },
            )
        });
    }

    /// Progress of a long seal (also a heartbeat).
    pub fn seal_progress(&mut self, registry: &Registry, sealed: u32, total: u32, revision: u64) {
        self.complete(registry, |m, now| {
            m.handle_seal_progress(now, sealed, total, revision)
        });
    }

    /// The resume finished: the daemon serves again.
    pub fn resumed(&mut self, registry: &Registry) {
        self.complete(registry, |m, now| m.handle_resumed(now));
    }

    /// The resume failed: the daemon cannot serve (a `SessionEnded` with
    /// `ResumeFailed` follows).
    pub fn resume_failed(&mut self, registry: &Registry) {
        self.complete(registry, |m, now| m.handle_resume_failed(now));
    }

    fn complete(
        &mut self,
        registry: &Registry,
        f: impl FnOnce(&mut IncumbentSession<Vec<u8>>, handoff_core::Instant),
    ) {
        if let Some(s) = self.session.as_mut() {
            f(&mut s.machine, clock::now());
        }
        self.settle(registry);
    }

    fn accept(&mut self, registry: &Registry) {
        let Some((_, session_token)) = self.tokens else {
            return;
        };
        // One session at a time: the others wait in the backlog, and the
        // listener is tried again when this session ends.
        while self.session.is_none() && !self.done {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => match accept_retry(&e) {
                    AcceptRetry::Now => continue,
                    AcceptRetry::After(pause) => {
                        self.accept_retry_at = Some(std::time::Instant::now() + pause);
                        return;
                    }
                    AcceptRetry::Fatal => {
                        self.events
                            .push_back(IncumbentEvent::ControlSocketFailed(format!(
                                "accept on the control socket {}: {e}",
                                self.socket_path.display()
                            )));
                        self.done = true;
                        return;
                    }
                },
            };
            let permitted =
                peer_credentials_of(&stream).is_some_and(|uid| self.policy.permits(uid));
            if !permitted {
                continue;
            }
            let Ok(conn) = Conn::register(stream, registry, session_token) else {
                continue;
            };
            let machine = IncumbentSession::new(
                clock::now(),
                self.config,
                std::process::id(),
                &self.build_id,
            );
            self.session = Some(Session {
                conn: Some(conn),
                machine,
            });
            self.pump(registry);
        }
    }

    /// Reads until the socket would block, feeding the machine one frame
    /// at a time (mio readiness is edge-triggered).
    fn read(&mut self, registry: &Registry) {
        loop {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let Some(conn) = s.conn.as_mut() else { return };
            if conn.inbox.is_empty() {
                match conn.read() {
                    Read::Data => {}
                    Read::WouldBlock => return,
                    Read::Closed => {
                        if let Some(c) = s.conn.take() {
                            c.deregister(registry);
                        }
                        s.machine.handle_closed(clock::now());
                        self.settle(registry);
                        return;
                    }
                }
            }
            let used = s.machine.handle_input(clock::now(), conn.inbox.pending());
            conn.inbox.consume(used);
            self.settle(registry);
        }
    }

    /// Carries out the machine's outputs and, once a session has ended,
    /// accepts the next.
    fn settle(&mut self, registry: &Registry) {
        self.pump(registry);
        if self.session.is_none() {
            self.accept(registry);
        }
    }

    /// Carries out the machine's outputs.
    fn pump(&mut self, registry: &Registry) {
        loop {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let Some(out) = s.machine.poll_output() else {
                return;
            };
            match out {
                IncumbentOutput::Transmit(frame) => {
                    let failed = match s.conn.as_mut() {
                        Some(c) => c.send(registry, frame).is_err(),
                        None => true,
                    };
                    if failed {
                        if let Some(c) = s.conn.take() {
                            c.deregister(registry);
                        }
                        s.machine.handle_closed(clock::now());
                    } else {
                        crash::frame('o', true, frame);
                    }
                }
                IncumbentOutput::Drain { deadline } => {
                    self.events.push_back(IncumbentEvent::Drain {
                        deadline: clock::to_std(deadline),
                    })
                }
                IncumbentOutput::Seal => self.events.push_back(IncumbentEvent::Seal),
                IncumbentOutput::Resume => self.events.push_back(IncumbentEvent::Resume),
                IncumbentOutput::ReleaseLock => {
                    self.lock = None;
                    crash::at("o-after-lock-released");
                }
                IncumbentOutput::AcquireLock => match DataDirLock::acquire(&self.data_dir) {
                    Ok(lock) => {
                        self.lock = Some(lock);
                        // Taken back (the machine asks only after a seal
                        // released it): the successor is gone, and may have
                        // taken the path over first.
                        reclaim_path(
                            &mut self.listener,
                            &self.socket_path,
                            &mut self.bound,
                            self.tokens.map(|(listener, _)| listener),
                            registry,
                        );
                        s.machine.handle_lock_acquired(clock::now());
                    }
                    Err(_) => s.machine.handle_lock_busy(clock::now()),
                },
                IncumbentOutput::Close => {
                    if let Some(c) = s.conn.take() {
                        c.deregister(registry);
                    }
                }
                IncumbentOutput::Finished(end) => {
                    if end == SessionEnd::Committed {
                        crash::at("o-after-commit-received");
                    }
                    if let Some(c) = s.conn.take() {
                        c.deregister(registry);
                    }
                    self.session = None;
                    self.done = !end.keeps_serving();
                    self.events.push_back(IncumbentEvent::SessionEnded(end));
                    // The next session is accepted by the caller
                    // (`settle`, or the loop in `accept`), not from here: a
                    // backlog of connections that close at once would
                    // otherwise recurse once per connection and overflow
                    // the stack.
                    return;
                }
            }
        }
    }
}

/// After the lock was taken back following a seal: takes the control
/// socket path back if a successor took it before it was stopped (see
/// [`reclaim_control_path`]), registering the new listener under `token`.
/// Should that fail, the old listener still serves whoever has it.
fn reclaim_path(
    current: &mut UnixListener,
    path: &Path,
    bound: &mut Option<(u64, u64)>,
    token: Option<Token>,
    registry: &Registry,
) {
    let Some(Ok(listener)) = reclaim_control_path(path, bound) else {
        return;
    };
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut listener = UnixListener::from_std(listener);
    if let Some(token) = token {
        if registry
            .register(&mut listener, token, Interest::READABLE)
            .is_err()
        {
            return;
        }
        let _ = registry.deregister(current);
    }
    *current = listener;
}

fn peer_credentials_of(stream: &mio::net::UnixStream) -> Option<u32> {
    peer_credentials(stream).ok().map(|c| c.uid)
}
