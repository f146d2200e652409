//! How a daemon learns its role at start-up, and the successor's path to
//! becoming the incumbent, as typestates: [`Successor::handshake`] →
//! [`HandshookSuccessor::wait_for_begin`] → take listeners from the
//! [`BegunSuccessor`] → [`BegunSuccessor::announce_and_bind`], which returns
//! the [`Incumbent`] to serve with. Each step consumes the previous state, so
//! calling them out of order does not compile.
//!
//! Between `Begin` and `Ready` the daemon opens its state, which may take a
//! while; a thread of the library's own runs the [`SuccessorDriver`]
//! meanwhile (heartbeats, an `Abort` from the supervisor), so a slow start
//! is bounded by the supervisor's deadline rather than cut at its liveness
//! limit.

use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use handoff_core::{HandoffId, SuccessorConfig, SuccessorEnd};
use handoff_driver::{Launch, PassedConnection, SuccessorDriver, SuccessorReport};
use handoff_os::control::send_some;
use handoff_os::env::EnvError;
use handoff_os::listeners::InheritedListeners;
use handoff_os::lock::DataDirLock;

pub use handoff_driver::{AnnounceError, ReadyReport, SuccessorError};

use crate::conn::Watched;
use crate::incumbent::Incumbent;

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
/// that said so (see [`handoff_os::env::take_startup_env`]). Call it first
/// thing in `main`, before starting threads.
pub fn detect_role() -> Result<Role, EnvError> {
    Ok(match handoff_driver::detect_role()? {
        handoff_driver::Role::ColdStart { listeners } => Role::ColdStart { listeners },
        handoff_driver::Role::Successor(launch) => Role::Successor(Successor { launch }),
    })
}

/// Started by a supervisor; not yet announced.
#[derive(Debug)]
pub struct Successor {
    launch: Launch,
}

impl From<Successor> for Launch {
    fn from(s: Successor) -> Launch {
        s.launch
    }
}

impl Successor {
    /// The listeners that came with the process.
    pub fn listener_names(&self) -> Vec<&str> {
        self.launch.listener_names()
    }

    /// The control socket and the listeners, for a caller that speaks the
    /// protocol itself.
    pub fn into_parts(self) -> (UnixStream, InheritedListeners) {
        self.launch.into_parts()
    }

    /// Overrides the protocol timings.
    pub fn with_config(self, config: SuccessorConfig) -> Self {
        Successor {
            launch: self.launch.with_config(config),
        }
    }

    /// Offers to take the incumbent's open connections (see
    /// [`Launch::accepting_connections`]): after `Begin`,
    /// [`BegunSuccessor::take_connections`] has them, and the daemon must
    /// serve every one once [`BegunSuccessor::announce_and_bind`] returned.
    pub fn accepting_connections(self) -> Self {
        Successor {
            launch: self.launch.accepting_connections(),
        }
    }

    /// Where the daemon will serve its control socket (the path it will
    /// give [`BegunSuccessor::announce_and_bind`]): bound under a temporary
    /// name during the handshake rather than between `Begin` and `Ready`
    /// (see [`Launch::with_control_socket`]).
    pub fn with_control_socket(self, path: impl Into<std::path::PathBuf>) -> Self {
        Successor {
            launch: self.launch.with_control_socket(path),
        }
    }

    /// Says `Hello` and waits for the supervisor's `HelloAck`. Do the
    /// start-up work that needs no lock before this: the old binary still
    /// serves meanwhile.
    pub fn handshake(self, build_id: &[u8]) -> Result<HandshookSuccessor, SuccessorError> {
        let mut io = Watched::default();
        // `Hello` goes out here; the thread that will drive the machine
        // during start-up is created while the supervisor answers and the
        // incumbent drains, off the path to `Ready`.
        let (driver, listeners) = self
            .launch
            .start_driver(&mut io, build_id)
            .map_err(SuccessorError::Io)?;
        let mut driven = Driven {
            driver,
            io,
            begun: false,
        };
        let pump = Pump::spawn()?;
        while !driven.driver.acked() {
            if let Some(e) = driven.driver.error() {
                return Err(e);
            }
            driven.turn(&[]).map_err(SuccessorError::Io)?;
        }
        Ok(HandshookSuccessor {
            driven: Box::new(driven),
            listeners,
            pump,
        })
    }
}

/// `Hello` answered; waiting for `Begin`.
#[derive(Debug)]
pub struct HandshookSuccessor {
    driven: Box<Driven>,
    listeners: InheritedListeners,
    pump: Pump,
}

impl HandshookSuccessor {
    /// The handoff's id.
    pub fn handoff_id(&self) -> HandoffId {
        self.driven
            .driver
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
    pub fn wait_for_begin(self, data_dir: &Path) -> Result<BegunSuccessor, SuccessorError> {
        let handoff_id = self.handoff_id();
        let mut pump = self.pump;
        let mut driven = self.driven;
        // Driven on this thread up to `Begin`: the daemon waits here
        // anyway, and learning of `Begin` from another thread would add a
        // wake-up to the time in which nobody accepts.
        let d = &mut *driven;
        d.driver.set_data_dir(&mut d.io, data_dir);
        // `Begin` may have come with `HelloAck`: the lock is then taken
        // right here, and `Begun` reported.
        d.collect();
        let (lock, passed) = until_started(d)?;
        // From here the pump keeps the session while the daemon starts.
        pump.hand_over(driven)?;
        Ok(BegunSuccessor {
            listeners: self.listeners,
            lock,
            handoff_id,
            pump,
            passed,
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
    passed: Vec<PassedConnection>,
}

impl BegunSuccessor {
    /// The connections the incumbent passed, each with its state, once:
    /// empty if none was (this process did not offer it with
    /// [`Successor::accepting_connections`], or a peer did not). Read or
    /// write them only after [`BegunSuccessor::announce_and_bind`]
    /// returned; until `Ready` is out the incumbent may take them back.
    /// If the handoff fails, drop them (close, never `shutdown`): the
    /// incumbent serves them on and their clients see nothing.
    pub fn take_connections(&mut self) -> Vec<PassedConnection> {
        std::mem::take(&mut self.passed)
    }

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
    /// resume. If the supervisor aborted the handoff meanwhile, nothing is
    /// sent and the error says why. The error still holds the data-dir
    /// lock: stop anything that may write, then drop it (or exit), so the
    /// old binary never writes while this one still does.
    pub fn announce_and_bind(
        self,
        readiness: ReadyReport,
        socket_path: &Path,
    ) -> Result<Incumbent, AnnounceError> {
        let lock = self.lock;
        match self.pump.finish(readiness, socket_path.to_path_buf()) {
            Ok((listener, path)) => Ok(Incumbent::from_parts(listener, &path, lock)),
            Err(error) => Err(AnnounceError {
                error,
                lock: Some(lock),
            }),
        }
    }
}

fn pump_died() -> SuccessorError {
    SuccessorError::Io(io::Error::other(
        "the thread driving the handoff during start-up panicked",
    ))
}

/// The driver and what the blocking adapter watches for it, moved from the
/// daemon's thread to the pump's.
struct Driven {
    driver: SuccessorDriver,
    io: Watched,
    /// `Begin` came and the lock is held.
    begun: bool,
}

impl fmt::Debug for Driven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driven")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Driven {
    /// One wait on the driver's descriptors and `extra` (read only), with
    /// the driver's next deadline; passes on what was ready. Returns which
    /// of `extra` were readable.
    fn turn(&mut self, extra: &[RawFd]) -> io::Result<Vec<bool>> {
        let (ready, woken) = self.io.wait(extra, self.driver.poll_timeout())?;
        for (source, r) in ready {
            if r.writable {
                self.driver.handle_writable(&mut self.io, source);
            }
            if r.readable {
                self.driver.handle_readable(&mut self.io, source);
            }
        }
        self.driver.handle_timeout(&mut self.io);
        self.collect();
        Ok(woken)
    }

    /// Takes what the driver reported. Called after every call into the
    /// driver: a report left unread would only be seen after the next
    /// wake-up, which may be a heartbeat's seconds away.
    fn collect(&mut self) {
        while let Some(report) = self.driver.poll_report() {
            if report == SuccessorReport::Begun {
                self.begun = true;
            }
        }
    }
}

/// Drives the successor on a background thread (started during the
/// handshake) from `Begin` until the end of the handoff, so heartbeats go
/// out and an `Abort` is noticed however long the daemon takes to start.
///
/// The daemon's thread never waits for it on the way to accepting: it
/// drives the machine itself until `Begin` (it waits in `wait_for_begin`
/// anyway), hands the driver over without waiting, and hands the
/// readiness over the same way. Spawning a thread there, or learning of
/// `Begin` from another thread, would lengthen the window in which no
/// process accepts.
struct Pump {
    /// Takes the driver to the thread, once.
    hand: Option<mpsc::Sender<Box<Driven>>>,
    /// Written to after queueing a command, so the thread's wait ends.
    wake: UnixStream,
    commands: mpsc::Sender<Command>,
    /// The thread's result once it has ended.
    ended: mpsc::Receiver<Result<(UnixListener, PathBuf), SuccessorError>>,
    /// Set when the handoff failed while the daemon was starting up.
    finished: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the daemon's thread asks of the pump.
enum Command {
    /// Send `Ready` with this and bind the control socket at the path,
    /// then drive the machine to its end.
    Ready(ReadyReport, PathBuf),
}

impl fmt::Debug for Pump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pump").finish_non_exhaustive()
    }
}

impl Pump {
    /// Starts the thread, which waits for the driver (see
    /// [`Pump::hand_over`]).
    fn spawn() -> Result<Pump, SuccessorError> {
        let finished = Arc::new(AtomicBool::new(false));
        let (wake, theirs) = UnixStream::pair().map_err(SuccessorError::Io)?;
        theirs.set_nonblocking(true).map_err(SuccessorError::Io)?;
        let (hand, handed) = mpsc::channel::<Box<Driven>>();
        let (commands, inbox) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel();
        let done = finished.clone();
        let thread = std::thread::Builder::new()
            .name("handoff-successor".into())
            .spawn(move || {
                // No driver: the daemon gave up before `Begin`.
                let Ok(mut driven) = handed.recv() else {
                    return;
                };
                let d = &mut *driven;
                let result = pump_to_the_end(d, &theirs, &inbox, &done);
                if result.is_err() {
                    done.store(true, Ordering::Release);
                }
                // The daemon may be gone (it dropped its state); then
                // nobody needs the result.
                let _ = ended_tx.send(result);
            })
            .map_err(SuccessorError::Io)?;
        Ok(Pump {
            hand: Some(hand),
            wake,
            commands,
            ended,
            finished,
            thread: Some(thread),
        })
    }

    /// Gives the thread the driver, from `Begin` on.
    fn hand_over(&mut self, driven: Box<Driven>) -> Result<(), SuccessorError> {
        match self.hand.take() {
            Some(hand) if hand.send(driven).is_ok() => Ok(()),
            _ => Err(pump_died()),
        }
    }

    /// Hands the readiness to the thread, which binds the control socket,
    /// hands the machine what the supervisor already sent (an `Abort` there
    /// wins), then sends `Ready`; waits until it is written and the socket
    /// took the path over (the successor is authoritative from then on) or
    /// the handoff fails.
    fn finish(
        mut self,
        readiness: ReadyReport,
        socket_path: PathBuf,
    ) -> Result<(UnixListener, PathBuf), SuccessorError> {
        // If the handoff already failed, the thread has ended and its error
        // is waiting below; `Ready` is then never sent.
        let _ = self.commands.send(Command::Ready(readiness, socket_path));
        let _ = send_some(self.wake.as_fd(), &[1]);
        let result = self.ended.recv().unwrap_or_else(|_| Err(pump_died()));
        // The thread has nothing left to do; it is not waited for.
        self.thread = None;
        result
    }
}

/// Empties the wake socket.
fn drain_wake(wake: &UnixStream) {
    let mut sink = [0u8; 8];
    while matches!((&mut &*wake).read(&mut sink), Ok(n) if n > 0) {}
}

/// Runs the driver until `Begin` has been received and the lock taken;
/// the lock and the connections passed, or why the start failed.
fn until_started(d: &mut Driven) -> Result<(DataDirLock, Vec<PassedConnection>), SuccessorError> {
    loop {
        if let Some(e) = d.driver.error() {
            return Err(e);
        }
        if d.begun {
            let passed = d.driver.take_connections();
            return d
                .driver
                .take_lock()
                .map(|lock| (lock, passed))
                .ok_or_else(|| {
                    SuccessorError::Io(io::Error::other(
                        "the lock was reported held but is missing",
                    ))
                });
        }
        d.turn(&[]).map_err(SuccessorError::Io)?;
    }
}

/// Keeps the machine alive during the daemon's start-up, sends `Ready` when
/// told to, and runs to the end of the handoff.
fn pump_to_the_end(
    d: &mut Driven,
    wake: &UnixStream,
    inbox: &mpsc::Receiver<Command>,
    failed: &AtomicBool,
) -> Result<(UnixListener, PathBuf), SuccessorError> {
    loop {
        if let Some(e) = d.driver.error() {
            // Seen by `aborted` before the daemon announces.
            failed.store(true, Ordering::Release);
            return Err(e);
        }
        if let Some(SuccessorEnd::Authoritative { .. }) = d.driver.end() {
            return d.driver.install(&mut d.io).map_err(SuccessorError::Io);
        }
        let woken = d.turn(&[wake.as_raw_fd()]).map_err(SuccessorError::Io)?;
        if woken.first() != Some(&true) {
            continue;
        }
        drain_wake(wake);
        match inbox.try_recv() {
            Ok(Command::Ready(readiness, path)) => {
                d.driver
                    .ready(&mut d.io, &readiness, &path)
                    .map_err(SuccessorError::Io)?;
            }
            Err(mpsc::TryRecvError::Empty) => {}
            // The daemon dropped its state without announcing: close the
            // control socket (dropping the driver) so the supervisor sees
            // the successor give up.
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(SuccessorError::Io(io::Error::other(
                    "the daemon gave up before announcing",
                )));
            }
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
