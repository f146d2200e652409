//! The successor in the caller's mio loop: a [`SuccessorDriver`] whose
//! control socket is registered under the caller's token. It says
//! `Hello`, waits for `Begin`, takes the data-dir lock, and then tells the
//! daemon to start ([`SuccessorEvent::Begun`]); the daemon calls
//! [`MioSuccessor::ready`] once it serves, and turns into a
//! [`MioIncumbent`] with [`MioSuccessor::into_incumbent`]. Heartbeats
//! during the start-up come from the loop's own timeouts, so no thread is
//! needed.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::path::Path;

use handoff_core::{SuccessorConfig, SuccessorFailure};
use handoff_driver::{
    Launch, PassedConnection, ReadyReport, Source, SuccessorDriver, SuccessorReport,
};
use handoff_os::listeners::InheritedListeners;
use mio::event::Event;
use mio::{Registry, Token};

use crate::conn::{MioIo, Registered, readiness};
use crate::incumbent::MioIncumbent;

/// What the daemon must do, or learn.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SuccessorEvent {
    /// `Begin` came and the lock is held: take the listeners, open the
    /// sealed state, start serving, then call [`MioSuccessor::ready`].
    Begun,
    /// `Ready` went out (or the supervisor vanished after we took the
    /// lock): call [`MioSuccessor::into_incumbent`] and serve on.
    Authoritative {
        /// Nobody received `Ready`.
        supervisor_gone: bool,
    },
    /// The handoff is off: exit without writing anything. The lock, if it
    /// was taken, is held until the [`MioSuccessor`] is dropped, so stop
    /// whatever may write first.
    Failed {
        /// Why.
        failure: SuccessorFailure,
        /// The supervisor's reason, if it aborted.
        abort_reason: String,
    },
}

impl From<SuccessorReport> for SuccessorEvent {
    fn from(report: SuccessorReport) -> Self {
        match report {
            SuccessorReport::Begun => SuccessorEvent::Begun,
            SuccessorReport::Authoritative { supervisor_gone } => {
                SuccessorEvent::Authoritative { supervisor_gone }
            }
            SuccessorReport::Failed {
                failure,
                abort_reason,
            } => SuccessorEvent::Failed {
                failure,
                abort_reason,
            },
        }
    }
}

/// A successor driven from a mio loop.
pub struct MioSuccessor {
    driver: SuccessorDriver,
    tokens: [(Source, Token); 1],
    /// What the driver has registered, kept between calls.
    registered: Registered,
    listeners: InheritedListeners,
    events: VecDeque<SuccessorEvent>,
}

impl fmt::Debug for MioSuccessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MioSuccessor")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl MioSuccessor {
    /// Registers the control socket under `token` and says `Hello`. Do the
    /// start-up work that needs no lock before this. `successor` is what
    /// the supervisor started this process with (a
    /// [`handoff_driver::Launch`], or a `handoff_std::Successor`); `config`
    /// is the one used, in place of any set on it before. The lock of
    /// `data_dir` is taken once `Begin` comes.
    pub fn start(
        successor: impl Into<Launch>,
        registry: &Registry,
        token: Token,
        build_id: &[u8],
        data_dir: &Path,
        config: SuccessorConfig,
    ) -> io::Result<MioSuccessor> {
        let launch = successor.into().with_config(config);
        let tokens = [(Source::Control, token)];
        let mut registered = Registered::default();
        let mut io = MioIo {
            registry,
            tokens: &tokens,
            registered: &mut registered,
        };
        let (mut driver, listeners) = launch.start_driver(&mut io, build_id)?;
        driver.set_data_dir(&mut io, data_dir);
        let mut s = MioSuccessor {
            driver,
            tokens,
            registered,
            listeners,
            events: VecDeque::new(),
        };
        s.collect();
        Ok(s)
    }

    /// Runs `f` on the driver with this call's [`MioIo`], then moves what
    /// the driver reports to the event queue.
    fn drive<T>(
        &mut self,
        registry: &Registry,
        f: impl FnOnce(&mut SuccessorDriver, &mut MioIo<'_>) -> T,
    ) -> T {
        let mut io = MioIo {
            registry,
            tokens: &self.tokens,
            registered: &mut self.registered,
        };
        let result = f(&mut self.driver, &mut io);
        self.collect();
        result
    }

    fn collect(&mut self) {
        while let Some(report) = self.driver.poll_report() {
            self.events.push_back(report.into());
        }
    }

    /// The listeners that came with the process.
    pub fn listeners(&mut self) -> &mut InheritedListeners {
        &mut self.listeners
    }

    /// The connections the incumbent passed (docs/PROTOCOL.md section 11),
    /// once [`SuccessorEvent::Begun`] came; each only once. Register and
    /// serve them only after [`MioSuccessor::ready`] sent `Ready`; if the
    /// handoff fails, drop them (never shut them down). Make each a mio
    /// `TcpStream` with [`PassedTcp::into_mio_tcp`].
    pub fn take_connections(&mut self) -> Vec<PassedConnection> {
        self.driver.take_connections()
    }

    /// The next thing for the daemon to do or know.
    pub fn poll_event(&mut self) -> Option<SuccessorEvent> {
        self.events.pop_front()
    }

    /// When [`MioSuccessor::handle_timeout`] must be called next; now
    /// while events wait in [`MioSuccessor::poll_event`], so that a loop
    /// that waits before it looks (events can come from `start`: a
    /// supervisor already gone ends the handoff there) does not sleep on
    /// a handoff that is over.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        if !self.events.is_empty() {
            return Some(std::time::Instant::now());
        }
        self.driver.poll_timeout()
    }

    /// Time passed; early or repeated calls do nothing.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        self.drive(registry, |driver, io| driver.handle_timeout(io));
    }

    /// Handles `event` if it is ours; returns whether it was.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        if event.token() != self.tokens[0].1 {
            return false;
        }
        let (writable, readable) = readiness(event);
        self.drive(registry, |driver, io| {
            if writable {
                driver.handle_writable(io, Source::Control);
            }
            if readable {
                driver.handle_readable(io, Source::Control);
            }
        });
        true
    }

    /// The daemon serves: binds the control socket it will serve on under
    /// a temporary name beside `socket_path`, then sends `Ready`. What the
    /// supervisor already sent goes first: an `Abort` queued while the
    /// daemon started up ends the handoff, and `Ready` is then not sent
    /// (a [`SuccessorEvent::Failed`] follows).
    ///
    /// A path that cannot be bound (a bad or too long path, no room, no
    /// permission) fails here, before `Ready`, while the old binary can
    /// still resume: the handoff is reported failed to the supervisor, a
    /// [`SuccessorEvent::Failed`] follows, and the error says why. Once
    /// authoritative, only a rename is left for
    /// [`MioSuccessor::into_incumbent`].
    pub fn ready(
        &mut self,
        registry: &Registry,
        readiness: &ReadyReport,
        socket_path: &Path,
    ) -> io::Result<()> {
        self.drive(registry, |driver, io| {
            driver.ready(io, readiness, socket_path)
        })
    }

    /// The daemon could not start: the handoff is off (exit afterwards).
    pub fn start_failed(&mut self, registry: &Registry) {
        self.drive(registry, |driver, io| driver.start_failed(io));
    }

    /// After `Authoritative`: renames the control socket bound by
    /// [`MioSuccessor::ready`] over its path and becomes the incumbent
    /// (not registered yet: call [`MioIncumbent::register`]). Refused
    /// before it (after `Failed`, the old incumbent serves on and keeps its
    /// control socket).
    pub fn into_incumbent(mut self, registry: &Registry) -> io::Result<MioIncumbent> {
        let endpoint = self.drive(registry, |driver, io| driver.into_endpoint(io))?;
        MioIncumbent::new(endpoint)
    }
}

/// A passed connection as mio's socket type.
pub trait PassedTcp {
    /// The connection as a non-blocking mio `TcpStream`, and the state the
    /// incumbent passed with it; an error if it is not a connected TCP
    /// socket (the descriptor is closed then, which the client does not
    /// see while the incumbent holds its own).
    fn into_mio_tcp(self) -> io::Result<(mio::net::TcpStream, Vec<u8>)>;
}

impl PassedTcp for PassedConnection {
    fn into_mio_tcp(self) -> io::Result<(mio::net::TcpStream, Vec<u8>)> {
        let (stream, state) = self.into_tcp()?;
        stream.set_nonblocking(true)?;
        Ok((mio::net::TcpStream::from_std(stream), state))
    }
}
