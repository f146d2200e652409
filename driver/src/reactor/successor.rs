//! The successor's typestates as futures: [`handshake`] →
//! [`HandshookSuccessor::wait_for_begin`] → (take listeners, open the state inside
//! [`BegunSuccessor::start_up`]) → [`BegunSuccessor::announce_and_bind`], which returns the
//! [`Endpoint`] to serve. A [`SuccessorDriver`] speaks the protocol; this
//! waits on the reactor for its control socket and its deadlines.
//! `start_up` runs the daemon's start-up future concurrently with the
//! protocol in the same task, so heartbeats go out and an abort stops the
//! wait.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Instant;

use futures_lite::future;
use handoff_core::{HandoffId, SuccessorEnd};
use handoff_os::listeners::InheritedListeners;
use handoff_os::lock::DataDirLock;

use super::{Driven, Reactor, Watching, turn};
use crate::incumbent::Endpoint;
use crate::link::{Io, Source};
use crate::successor::{
    AnnounceError, Launch, ReadyReport, SuccessorDriver, SuccessorError, SuccessorReport,
};

impl<I: Io> Driven<I> for SuccessorDriver {
    fn poll_timeout(&self) -> Option<Instant> {
        SuccessorDriver::poll_timeout(self)
    }
    fn handle_readable(&mut self, io: &mut I, source: Source) {
        SuccessorDriver::handle_readable(self, io, source)
    }
    fn handle_writable(&mut self, io: &mut I, source: Source) {
        SuccessorDriver::handle_writable(self, io, source)
    }
    fn handle_timeout(&mut self, io: &mut I) {
        SuccessorDriver::handle_timeout(self, io)
    }
}

/// Says `Hello` for `launch` (from [`crate::detect_role`]) with `build_id`
/// on `reactor`, and waits for the supervisor's answer. The protocol
/// timings are the launch's (see [`Launch::with_config`]). Do the start-up
/// work that needs no lock before this: the old binary still serves
/// meanwhile.
pub async fn handshake<R: Reactor>(
    reactor: R,
    launch: Launch,
    build_id: &[u8],
) -> Result<HandshookSuccessor<R>, SuccessorError> {
    let mut io = Watching::new(reactor);
    let (driver, listeners) = launch
        .start_driver(&mut io, build_id)
        .map_err(SuccessorError::Io)?;
    let mut session = Session {
        driver,
        io,
        begun: false,
    };
    while !session.driver.acked() {
        session.check()?;
        session.turn().await;
    }
    Ok(HandshookSuccessor { session, listeners })
}

/// `Hello` answered; waiting for `Begin`.
pub struct HandshookSuccessor<R: Reactor> {
    session: Session<R>,
    listeners: InheritedListeners,
}

impl<R: Reactor> fmt::Debug for HandshookSuccessor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshookSuccessor")
            .field("driver", &self.session.driver)
            .finish_non_exhaustive()
    }
}

impl<R: Reactor> HandshookSuccessor<R> {
    /// The handoff's id.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.session.driver.handoff_id()
    }

    /// The listeners that came with the process.
    pub fn listener_names(&self) -> Vec<&str> {
        self.listeners.names()
    }

    /// Waits for `Begin`, then takes the data-dir lock of `data_dir` (the
    /// incumbent released it when it sealed). From the returned state on,
    /// the process may open the state and serve.
    pub async fn wait_for_begin(
        mut self,
        data_dir: &Path,
    ) -> Result<BegunSuccessor<R>, SuccessorError> {
        let s = &mut self.session;
        s.driver.set_data_dir(&mut s.io, data_dir);
        s.take_reports();
        loop {
            s.check()?;
            if s.begun {
                break;
            }
            s.turn().await;
        }
        Ok(BegunSuccessor {
            session: self.session,
            listeners: self.listeners,
        })
    }
}

/// `Begin` received and the lock held: take the listeners, open the state
/// (inside [`BegunSuccessor::start_up`]), start serving, then announce.
///
/// Dropped without announcing, it closes the control socket: the
/// supervisor sees the successor give up, and the old binary resumes.
pub struct BegunSuccessor<R: Reactor> {
    session: Session<R>,
    listeners: InheritedListeners,
}

impl<R: Reactor> fmt::Debug for BegunSuccessor<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BegunSuccessor")
            .field("driver", &self.session.driver)
            .finish_non_exhaustive()
    }
}

impl<R: Reactor> BegunSuccessor<R> {
    /// The inherited listeners, to take by name.
    pub fn listeners(&mut self) -> &mut InheritedListeners {
        &mut self.listeners
    }

    /// The data-dir lock this process now holds.
    pub fn lock(&self) -> Option<&DataDirLock> {
        self.session.driver.lock()
    }

    /// The handoff's id.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.session.driver.handoff_id()
    }

    /// The connections the incumbent passed (docs/PROTOCOL.md section 11),
    /// each once: empty unless this process offered it
    /// ([`crate::Launch::accepting_connections`]) and both peers did too.
    /// Serve them only once [`BegunSuccessor::announce_and_bind`]
    /// returned; if the handoff fails, drop them (never shut them down).
    pub fn take_connections(&mut self) -> Vec<crate::PassedConnection> {
        self.session.driver.take_connections()
    }

    /// Runs the daemon's start-up (open the state, start serving) while the
    /// protocol goes on: heartbeats to the supervisor, and an `Abort`, which
    /// ends the wait with an error (drop the half-started state, then this,
    /// and exit).
    pub async fn start_up<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, SuccessorError> {
        let s = &mut self.session;
        let protocol = async {
            loop {
                s.check()?;
                if s.driver.end().is_some() {
                    // Authoritative needs a `Ready`, which only
                    // `announce_and_bind` sends.
                    return Err(SuccessorError::Io(io::Error::other(
                        "the handoff ended during start-up",
                    )));
                }
                s.turn().await;
            }
        };
        // The daemon's work first: once it is done, it is not dropped for
        // a protocol step that came at the same moment.
        future::or(async { Ok(work.await) }, protocol).await
    }

    /// Binds a new control socket beside `socket_path`, sends `Ready`, then
    /// takes over the path (renaming the socket over the old incumbent's),
    /// and returns the [`Endpoint`] to serve with. A path that cannot be
    /// bound fails here, before `Ready`, while the old binary can still
    /// resume. If the supervisor aborted the handoff meanwhile (even with
    /// an `Abort` not yet read), nothing is sent and the error says why.
    /// The error still holds the data-dir lock: stop anything that may
    /// write, then drop it (or exit), so the old binary never writes while
    /// this one still does.
    pub async fn announce_and_bind(
        mut self,
        readiness: ReadyReport,
        socket_path: &Path,
    ) -> Result<Endpoint, AnnounceError> {
        match self.announce(&readiness, socket_path).await {
            Ok(ep) => Ok(ep),
            Err(error) => Err(AnnounceError {
                error,
                lock: self.session.driver.take_lock(),
            }),
        }
    }

    async fn announce(
        &mut self,
        readiness: &ReadyReport,
        socket_path: &Path,
    ) -> Result<Endpoint, SuccessorError> {
        let s = &mut self.session;
        s.check()?;
        s.driver
            .ready(&mut s.io, readiness, socket_path)
            .map_err(SuccessorError::Io)?;
        s.take_reports();
        loop {
            s.check()?;
            if let Some(SuccessorEnd::Authoritative { .. }) = s.driver.end() {
                break;
            }
            s.turn().await;
        }
        s.driver
            .into_endpoint(&mut s.io)
            .map_err(SuccessorError::Io)
    }
}

/// The driver and what this adapter watches for it, from `Hello` to the
/// end of the handoff.
struct Session<R: Reactor> {
    driver: SuccessorDriver,
    io: Watching<R>,
    /// `Begin` came and the lock is held.
    begun: bool,
}

impl<R: Reactor> Session<R> {
    /// The error of a handoff that failed.
    fn check(&self) -> Result<(), SuccessorError> {
        match self.driver.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Notes what the driver reported. Its ends are read back from it
    /// ([`SuccessorDriver::end`], [`SuccessorDriver::error`]); only
    /// `BegunSuccessor` is kept here.
    fn take_reports(&mut self) {
        while let Some(report) = self.driver.poll_report() {
            if report == SuccessorReport::Begun {
                self.begun = true;
            }
        }
    }

    /// One wait on the control socket, until it is ready or the driver's
    /// next deadline; passes on what was found. Cancel-safe: only the wait
    /// is awaited.
    async fn turn(&mut self) {
        turn(&mut self.driver, &mut self.io).await;
        self.take_reports();
    }
}
