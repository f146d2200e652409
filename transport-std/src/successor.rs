//! How a daemon learns its role at start-up, and the successor's path to
//! becoming the incumbent, as typestates: [`Successor::handshake`] →
//! [`HandshookSuccessor::wait_for_begin`] → take listeners from the
//! [`BegunSuccessor`] → [`BegunSuccessor::announce_and_bind`], which returns
//! the [`Incumbent`] to serve with. Each step consumes the previous state, so
//! calling them out of order does not compile.
//!
//! Between `Begin` and `Ready` the daemon opens its state, which may take a
//! while; a thread of the library's own drives the protocol meanwhile
//! (heartbeats, an `Abort` from the supervisor), so a slow start is bounded
//! by the supervisor's deadline rather than cut at its liveness limit.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use handoff_core::{
    Buffer, HandoffId, Instant, ReadyReport, Revisions, Strings, SuccessorConfig, SuccessorEnd,
    SuccessorFailure, SuccessorOutput, SuccessorSession,
};

use crate::clock;
use crate::conn::{self, Inbox};
use crate::crash;
use crate::incumbent::Incumbent;
use crate::os::control::{self, send_frame, send_some};
use crate::os::env::{EnvError, take_startup_env};
use crate::os::listeners::InheritedListeners;
use crate::os::lock::{DataDirLock, LockError};

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
    Successor(Successor),
}

/// Reads, once, how this process was started, and removes the variables
/// that said so (see [`crate::os::env::take_startup_env`]). Call it first
/// thing in `main`, before starting threads.
pub fn detect_role() -> Result<Role, EnvError> {
    let env = take_startup_env()?;
    Ok(match env.control {
        Some(control) => Role::Successor(Successor {
            control,
            listeners: env.listeners,
            config: SuccessorConfig::default(),
        }),
        None => Role::ColdStart {
            listeners: env.listeners,
        },
    })
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

/// What the successor reports with `Ready`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Where it serves.
    pub listening_on: Vec<String>,
    /// Its own health check.
    pub healthz_ok: bool,
    /// The revision of each shard it opened.
    pub advertised_revision_per_shard: Vec<u64>,
}

impl Readiness {
    /// Reports this to a successor machine, which then queues `Ready` (for
    /// adapters that drive the machine themselves).
    pub fn report_to<B: Buffer>(&self, machine: &mut SuccessorSession<B>, now: Instant) {
        let listening: Vec<&str> = self.listening_on.iter().map(String::as_str).collect();
        machine.handle_ready(
            now,
            ReadyReport {
                listening_on: Strings::from_slice(&listening),
                healthz_ok: self.healthz_ok,
                advertised_revision_per_shard: Revisions::from_slice(
                    &self.advertised_revision_per_shard,
                ),
            },
        );
    }
}

/// Started by a supervisor; not yet announced.
#[derive(Debug)]
pub struct Successor {
    control: UnixStream,
    listeners: InheritedListeners,
    config: SuccessorConfig,
}

impl Successor {
    /// The listeners that came with the process.
    pub fn listener_names(&self) -> Vec<&str> {
        self.listeners.names()
    }

    /// The control socket and the listeners, for an adapter that drives the
    /// successor machine itself.
    pub fn into_parts(self) -> (UnixStream, InheritedListeners) {
        (self.control, self.listeners)
    }

    /// Overrides the protocol timings.
    pub fn with_config(mut self, config: SuccessorConfig) -> Self {
        self.config = config;
        self
    }

    /// Says `Hello` and waits for the supervisor's `HelloAck`. Do the
    /// start-up work that needs no lock before this: the old binary still
    /// serves meanwhile.
    pub fn handshake(self, build_id: &[u8]) -> Result<HandshookSuccessor, SuccessorError> {
        conn::configure(&self.control).map_err(SuccessorError::Io)?;
        let machine =
            SuccessorSession::new(clock::now(), self.config, std::process::id(), build_id);
        let mut driver = Driver {
            control: Some(self.control),
            machine,
            inbox: Inbox::new(),
            data_dir: None,
            lock: None,
            wake: None,
        };
        // `Hello` goes out first; the thread that will drive the machine
        // during start-up is created while the supervisor answers and the
        // incumbent drains, off the path to `Ready`.
        driver.run_until(Milestone::Flushed)?;
        let (pump, started) = Pump::spawn()?;
        match driver.run_until(Milestone::Acked)? {
            Milestone::Acked => Ok(HandshookSuccessor {
                driver,
                listeners: self.listeners,
                pump,
                started,
            }),
            _ => unreachable_milestone(),
        }
    }
}

/// `Hello` answered; waiting for `Begin`.
#[derive(Debug)]
pub struct HandshookSuccessor {
    driver: Driver,
    listeners: InheritedListeners,
    pump: Pump,
    started: Started,
}

impl HandshookSuccessor {
    /// The handoff's id.
    pub fn handoff_id(&self) -> HandoffId {
        self.driver
            .machine
            .handoff_id()
            .unwrap_or(HandoffId::from_bytes([0; 16]))
    }

    /// The listeners that came with the process.
    pub fn listener_names(&self) -> Vec<&str> {
        self.listeners.names()
    }

    /// Waits for `Begin`, then takes the data-dir lock of `data_dir` (the
    /// incumbent released it when it sealed). From the returned state on,
    /// the process may open the state and serve.
    pub fn wait_for_begin(mut self, data_dir: &Path) -> Result<BegunSuccessor, SuccessorError> {
        self.driver.data_dir = Some(data_dir.to_path_buf());
        let handoff_id = self.handoff_id();
        let mut pump = self.pump;
        pump.hand_over(self.driver)?;
        let lock = match self.started.recv() {
            Ok(Ok(lock)) => lock,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err(pump_died()),
        };
        Ok(BegunSuccessor {
            listeners: self.listeners,
            lock,
            handoff_id,
            pump,
        })
    }
}

/// `Begin` received and the lock held: open the state, take the listeners,
/// start serving, then announce.
#[derive(Debug)]
pub struct BegunSuccessor {
    listeners: InheritedListeners,
    lock: DataDirLock,
    handoff_id: HandoffId,
    pump: Pump,
}

impl BegunSuccessor {
    /// The inherited listeners, to take by name.
    pub fn listeners(&mut self) -> &mut InheritedListeners {
        &mut self.listeners
    }

    /// The data-dir lock this process now holds.
    pub fn lock(&self) -> &DataDirLock {
        &self.lock
    }

    /// The handoff's id.
    pub fn handoff_id(&self) -> HandoffId {
        self.handoff_id
    }

    /// Whether the supervisor has aborted the handoff meanwhile (the daemon
    /// may check during a long start-up and stop early).
    pub fn aborted(&self) -> bool {
        self.pump.finished.load(Ordering::Acquire)
    }

    /// Binds a new control socket beside `socket_path`, sends `Ready`, then
    /// takes over the path (renaming the socket over the old incumbent's),
    /// and returns the [`Incumbent`] to serve with. A path that cannot be
    /// bound fails here, before `Ready`, while the old binary can still
    /// resume. If the supervisor aborted the handoff
    /// meanwhile, nothing is sent and the error says why. The error still
    /// holds the data-dir lock: stop anything that may write, then drop it
    /// (or exit), so the old binary never writes while this one still does.
    pub fn announce_and_bind(
        self,
        readiness: Readiness,
        socket_path: &Path,
    ) -> Result<Incumbent, AnnounceError> {
        let lock = self.lock;
        match announce(self.pump, readiness, socket_path) {
            Ok(listener) => Ok(Incumbent::from_parts(listener, socket_path, lock)),
            Err(error) => Err(AnnounceError {
                error,
                lock: Some(lock),
            }),
        }
    }
}

/// `announce_and_bind` failed; the lock is still held here.
#[derive(Debug)]
pub struct AnnounceError {
    /// What failed.
    pub error: SuccessorError,
    /// The data-dir lock, released when this is dropped.
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

fn announce(
    pump: Pump,
    readiness: Readiness,
    socket_path: &Path,
) -> Result<std::os::unix::net::UnixListener, SuccessorError> {
    // Bound before `Ready`: a path that cannot be bound fails the handoff
    // while the old binary can still resume, not after it has been told to
    // exit.
    let staged = control::stage_control_socket(socket_path).map_err(SuccessorError::Io)?;
    pump.finish(readiness)?;
    staged.install_as_successor().map_err(SuccessorError::Io)
}

fn pump_died() -> SuccessorError {
    SuccessorError::Io(io::Error::other(
        "the thread driving the handoff during start-up panicked",
    ))
}

#[cold]
fn unreachable_milestone() -> ! {
    unreachable!("run_until returns only the milestone asked for")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Milestone {
    /// Every queued frame is on the wire.
    Flushed,
    Acked,
    Started,
    Authoritative,
    /// The owner of the wake socket asked for attention; see [`Pump`].
    Woken,
}

/// The successor machine and its socket, driven on whichever thread owns
/// them.
struct Driver {
    control: Option<UnixStream>,
    machine: SuccessorSession<Vec<u8>>,
    inbox: Inbox,
    data_dir: Option<PathBuf>,
    lock: Option<DataDirLock>,
    /// While pumped in the background: the socket the daemon's thread
    /// writes to when it has something for the pump (readiness, or stop).
    wake: Option<UnixStream>,
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("step", &self.machine.step())
            .finish_non_exhaustive()
    }
}

impl Driver {
    fn failed(&self, failure: SuccessorFailure) -> SuccessorError {
        SuccessorError::Failed {
            failure,
            abort_reason: self.machine.abort_reason().to_owned(),
        }
    }

    /// Turns the machine until `goal` (or its end). With a wake socket, also
    /// returns [`Milestone::Woken`] when it is written to: see [`Pump`].
    fn run_until(&mut self, goal: Milestone) -> Result<Milestone, SuccessorError> {
        loop {
            while let Some(out) = self.machine.poll_output() {
                let now = clock::now();
                match out {
                    SuccessorOutput::Transmit(frame) => {
                        let sent = self
                            .control
                            .as_ref()
                            .is_some_and(|s| send_frame(s, frame).is_ok());
                        if sent {
                            crash::frame('n', true, frame);
                        } else {
                            self.control = None;
                            self.machine.handle_closed(now);
                        }
                    }
                    SuccessorOutput::AcquireLock => {
                        let Some(dir) = self.data_dir.as_deref() else {
                            self.machine.handle_lock_busy(now);
                            continue;
                        };
                        match DataDirLock::acquire(dir) {
                            Ok(lock) => {
                                self.lock = Some(lock);
                                crash::at("n-after-lock-acquired");
                                self.machine.handle_lock_acquired(now);
                            }
                            Err(LockError::Busy { .. } | LockError::HolderAlive { .. }) => {
                                self.machine.handle_lock_busy(now)
                            }
                            Err(_) => self.machine.handle_lock_busy(now),
                        }
                    }
                    SuccessorOutput::Start => {
                        if goal == Milestone::Started {
                            return Ok(Milestone::Started);
                        }
                    }
                    SuccessorOutput::Finished(SuccessorEnd::Authoritative { .. }) => {
                        return Ok(Milestone::Authoritative);
                    }
                    SuccessorOutput::Finished(SuccessorEnd::Failed(failure)) => {
                        return Err(self.failed(failure));
                    }
                }
            }
            if goal == Milestone::Flushed {
                return Ok(Milestone::Flushed);
            }
            if goal == Milestone::Acked && self.machine.version().is_some() {
                return Ok(Milestone::Acked);
            }
            if !self.inbox.is_empty() {
                let used = self
                    .machine
                    .handle_input(clock::now(), self.inbox.pending());
                self.inbox.consume(used);
                continue;
            }
            if self.wait()? {
                return Ok(Milestone::Woken);
            }
        }
    }

    /// Waits for input, the machine's next deadline or the wake socket;
    /// `true` if woken (the byte is consumed).
    fn wait(&mut self) -> Result<bool, SuccessorError> {
        let deadline = self.machine.poll_timeout();
        let ready = conn::wait(
            &[
                self.control.as_ref().map(|s| s.as_fd()),
                self.wake.as_ref().map(|wake| wake.as_fd()),
            ],
            deadline,
        )
        .map_err(SuccessorError::Io)?;
        let now = clock::now();
        // The supervisor's bytes first: an `Abort` already queued must reach
        // the machine before a `Ready` the daemon asks for is sent.
        if ready[0]
            && let Some(s) = self.control.as_mut()
        {
            match self.inbox.fill(s) {
                Ok(n) if n > 0 => {}
                _ => {
                    self.control = None;
                    self.machine.handle_closed(now);
                }
            }
        }
        // Also when something was ready: a peer that never stops sending
        // must not hold off the deadlines (an early call does nothing).
        self.machine.handle_timeout(clock::now());
        if ready[1]
            && let Some(wake) = self.wake.as_mut()
        {
            // Readable: a byte, or the other end closed. Either way the
            // pump looks at its commands next, and the machine must have
            // seen what the supervisor sent by then (an `Abort` queued
            // before the daemon's `Ready` makes that `Ready` moot).
            let _ = wake.read(&mut [0u8; 8]);
            while !self.inbox.is_empty() {
                let used = self
                    .machine
                    .handle_input(clock::now(), self.inbox.pending());
                self.inbox.consume(used);
            }
            return Ok(true);
        }
        Ok(false)
    }
}

/// Drives the successor machine on a background thread (started during the
/// handshake) from `wait_for_begin` until the end of the handoff, so heartbeats go out and an
/// `Abort` is noticed however long the daemon takes to start.
///
/// The daemon's thread never joins it on the way to `Ready`: it learns of
/// `Begin` (and gets the lock) over a channel, and hands the readiness over
/// the same way. Spawning and joining a thread there would lengthen the
/// window in which no process accepts writes.
struct Pump {
    /// Takes the driver to the thread, once.
    hand: Option<mpsc::Sender<Driver>>,
    /// Written to after queueing a command, so the thread's wait ends.
    wake: UnixStream,
    commands: mpsc::Sender<Command>,
    /// The thread's result once it has ended.
    ended: mpsc::Receiver<Result<(), SuccessorError>>,
    /// Set when the handoff failed while the daemon was starting up.
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the daemon's thread asks of the pump.
enum Command {
    /// Send `Ready` with this, then drive the machine to its end.
    Ready(Readiness),
}

impl fmt::Debug for Pump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pump").finish_non_exhaustive()
    }
}

/// The lock once `Begin` was received and the lock taken, or why not.
type Started = mpsc::Receiver<Result<DataDirLock, SuccessorError>>;

impl Pump {
    /// Starts the thread, which waits for the driver (see
    /// [`Pump::hand_over`]).
    fn spawn() -> Result<(Pump, Started), SuccessorError> {
        let finished = Arc::new(AtomicBool::new(false));
        let (wake, theirs) = UnixStream::pair().map_err(SuccessorError::Io)?;
        theirs.set_nonblocking(true).map_err(SuccessorError::Io)?;
        let (hand, handed) = mpsc::channel::<Driver>();
        let (started_tx, started) = mpsc::channel();
        let (commands, inbox) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel();
        let done = finished.clone();
        let thread = std::thread::Builder::new()
            .name("handoff-successor".into())
            .spawn(move || {
                // No driver: the daemon gave up before waiting for `Begin`.
                let Ok(mut driver) = handed.recv() else {
                    return;
                };
                driver.wake = Some(theirs);
                let Some(lock) = pump_until_started(&mut driver, &inbox) else {
                    return;
                };
                let lock = lock.and_then(|()| {
                    driver.lock.take().ok_or_else(|| {
                        SuccessorError::Io(io::Error::other(
                            "the lock was reported held but is missing",
                        ))
                    })
                });
                let failed = lock.is_err();
                if started_tx.send(lock).is_err() || failed {
                    return;
                }
                let result = pump_to_the_end(&mut driver, &inbox);
                if result.is_err() {
                    done.store(true, Ordering::Release);
                }
                // The daemon may be gone (it dropped its state); then
                // nobody needs the result.
                let _ = ended_tx.send(result);
            })
            .map_err(SuccessorError::Io)?;
        Ok((
            Pump {
                hand: Some(hand),
                wake,
                commands,
                ended,
                finished,
                thread: Some(thread),
            },
            started,
        ))
    }

    /// Gives the thread the machine to drive, from waiting for `Begin` on.
    fn hand_over(&mut self, driver: Driver) -> Result<(), SuccessorError> {
        match self.hand.take() {
            Some(hand) if hand.send(driver).is_ok() => Ok(()),
            _ => Err(pump_died()),
        }
    }

    /// Hands the readiness to the thread, which first hands the machine
    /// what the supervisor already sent (an `Abort` there wins), then sends
    /// `Ready`; waits until it is written (the successor is authoritative
    /// from then on) or the handoff fails.
    fn finish(mut self, readiness: Readiness) -> Result<(), SuccessorError> {
        // If the handoff already failed, the thread has ended and its error
        // is waiting below; `Ready` is then never sent.
        let _ = self.commands.send(Command::Ready(readiness));
        let _ = send_some(self.wake.as_fd(), &[1]);
        let result = self.ended.recv().unwrap_or_else(|_| Err(pump_died()));
        // The thread has nothing left to do; it is not waited for.
        self.thread = None;
        result
    }
}

/// Runs the machine until `Begin` has been received and the lock taken.
/// `None` if the daemon gave up meanwhile (its side of the channel is gone).
fn pump_until_started(
    driver: &mut Driver,
    inbox: &mpsc::Receiver<Command>,
) -> Option<Result<(), SuccessorError>> {
    loop {
        match driver.run_until(Milestone::Started) {
            Ok(Milestone::Started) => return Some(Ok(())),
            Ok(_) => {
                // Woken before `Begin`: only a daemon that gave up does that.
                if let Err(mpsc::TryRecvError::Disconnected) = inbox.try_recv() {
                    return None;
                }
            }
            Err(e) => return Some(Err(e)),
        }
    }
}

/// Keeps the machine alive during the daemon's start-up, sends `Ready` when
/// told to, and runs to the end of the handoff.
fn pump_to_the_end(
    driver: &mut Driver,
    inbox: &mpsc::Receiver<Command>,
) -> Result<(), SuccessorError> {
    loop {
        match driver.run_until(Milestone::Authoritative)? {
            Milestone::Authoritative => return Ok(()),
            _ => match inbox.try_recv() {
                Ok(Command::Ready(readiness)) => {
                    readiness.report_to(&mut driver.machine, clock::now());
                }
                Err(mpsc::TryRecvError::Empty) => {}
                // The daemon dropped its state without announcing: close the
                // control socket (dropping the driver) so the supervisor
                // sees the successor give up.
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err(SuccessorError::Io(io::Error::other(
                        "the daemon gave up before announcing",
                    )));
                }
            },
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        // Only reached with the thread still set when the daemon gives up
        // before announcing (or before waiting for `Begin`): close the
        // channels, wake the thread so it notices, and wait, so the control
        // socket is closed by the time this returns.
        if let Some(t) = self.thread.take() {
            // A thread still waiting for the driver ends when this goes.
            self.hand = None;
            let (tx, _) = mpsc::channel();
            drop(std::mem::replace(&mut self.commands, tx));
            let _ = send_some(self.wake.as_fd(), &[1]);
            let _ = t.join();
        }
    }
}
