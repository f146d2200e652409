//! The successor in the caller's mio loop: it says `Hello`, waits for
//! `Begin`, takes the data-dir lock, and then tells the daemon to start
//! ([`SuccessorEvent::Begun`]); the daemon calls [`MioSuccessor::ready`]
//! once it serves, and turns into a [`MioIncumbent`] with
//! [`MioSuccessor::into_incumbent`]. Heartbeats during the start-up come
//! from the loop's own timeouts, so no thread is needed.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};

use handoff_core::{
    SuccessorConfig, SuccessorEnd, SuccessorFailure, SuccessorOutput, SuccessorSession,
};
use handoff_std::os::control::{StagedControlSocket, stage_control_socket};
use handoff_std::os::listeners::InheritedListeners;
use handoff_std::os::lock::DataDirLock;
use handoff_std::{Incumbent, Readiness, Successor, clock, crash};
use mio::event::Event;
use mio::{Registry, Token};

use crate::conn::{Conn, Read};
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
    /// The handoff is off: exit without writing anything.
    Failed {
        /// Why.
        failure: SuccessorFailure,
        /// The supervisor's reason, if it aborted.
        abort_reason: String,
    },
}

/// A successor driven from a mio loop.
pub struct MioSuccessor {
    conn: Option<Conn>,
    machine: SuccessorSession<Vec<u8>>,
    token: Token,
    data_dir: PathBuf,
    lock: Option<DataDirLock>,
    listeners: InheritedListeners,
    events: VecDeque<SuccessorEvent>,
    /// The machine ended with this process authoritative.
    authoritative: bool,
    /// The control socket bound under a temporary name before `Ready`,
    /// renamed over its path by `into_incumbent`.
    staged: Option<StagedControlSocket>,
}

impl std::fmt::Debug for MioSuccessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MioSuccessor")
            .field("step", &self.machine.step())
            .finish_non_exhaustive()
    }
}

impl MioSuccessor {
    /// Registers the control socket under `token` and says `Hello`. Do the
    /// start-up work that needs no lock before this. `config` is the one
    /// used, in place of any given to `Successor::with_config`.
    pub fn start(
        successor: Successor,
        registry: &Registry,
        token: Token,
        build_id: &[u8],
        data_dir: &Path,
        config: SuccessorConfig,
    ) -> io::Result<MioSuccessor> {
        let (control, listeners) = successor.into_parts();
        control.set_nonblocking(true)?;
        let conn = Conn::register(mio::net::UnixStream::from_std(control), registry, token)?;
        let mut s = MioSuccessor {
            conn: Some(conn),
            machine: SuccessorSession::new(clock::now(), config, std::process::id(), build_id),
            token,
            data_dir: data_dir.to_path_buf(),
            lock: None,
            listeners,
            events: VecDeque::new(),
            authoritative: false,
            staged: None,
        };
        s.pump(registry);
        Ok(s)
    }

    /// The listeners that came with the process.
    pub fn listeners(&mut self) -> &mut InheritedListeners {
        &mut self.listeners
    }

    /// The next thing for the daemon to do or know.
    pub fn poll_event(&mut self) -> Option<SuccessorEvent> {
        self.events.pop_front()
    }

    /// When [`MioSuccessor::handle_timeout`] must be called next.
    pub fn timeout(&self) -> Option<std::time::Instant> {
        self.machine.poll_timeout().map(clock::to_std)
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, registry: &Registry) {
        self.machine.handle_timeout(clock::now());
        self.pump(registry);
    }

    /// Handles `event` if it is ours.
    pub fn handle_event(&mut self, registry: &Registry, event: &Event) -> bool {
        if event.token() != self.token {
            return false;
        }
        if event.is_writable()
            && let Some(c) = self.conn.as_mut()
            && c.flush(registry).is_err()
        {
            self.closed(registry);
        }
        self.read_queued(registry);
        // After every wake-up, as every adapter does: a peer that never
        // stops sending must not hold off the deadlines, whatever the
        // caller's loop does (an early call does nothing).
        self.machine.handle_timeout(clock::now());
        self.pump(registry);
        true
    }

    /// Reads what the supervisor sent, until nothing more is there, and
    /// hands it to the machine frame by frame.
    fn read_queued(&mut self, registry: &Registry) {
        while let Some(c) = self.conn.as_mut() {
            if c.inbox.is_empty() {
                match c.read() {
                    Read::Data => {}
                    Read::WouldBlock => break,
                    Read::Closed => {
                        self.closed(registry);
                        break;
                    }
                }
            }
            let used = self.machine.handle_input(clock::now(), c.inbox.pending());
            c.inbox.consume(used);
            self.pump(registry);
        }
        self.pump(registry);
    }

    /// The daemon serves: binds the control socket it will serve on under
    /// a temporary name beside `socket_path`, then sends `Ready`.
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
        readiness: &Readiness,
        socket_path: &Path,
    ) -> io::Result<()> {
        match stage_control_socket(socket_path) {
            Ok(staged) => {
                self.staged = Some(staged);
                // What the supervisor already sent goes first: an `Abort`
                // queued while the daemon started up ends the handoff, and
                // the `Ready` below is then moot (it is not sent).
                self.read_queued(registry);
                readiness.report_to(&mut self.machine, clock::now());
                self.pump(registry);
                Ok(())
            }
            Err(e) => {
                self.start_failed(registry);
                Err(e)
            }
        }
    }

    /// The daemon could not start: the handoff is off (exit afterwards).
    pub fn start_failed(&mut self, registry: &Registry) {
        self.machine.handle_start_failed(clock::now());
        self.pump(registry);
    }

    /// After `Authoritative`: renames the control socket bound by
    /// [`MioSuccessor::ready`] over its path and becomes the incumbent.
    /// Refused before it (after `Failed`, the old incumbent serves on and
    /// keeps its control socket).
    pub fn into_incumbent(mut self, registry: &Registry) -> io::Result<MioIncumbent> {
        if !self.authoritative {
            return Err(io::Error::other(
                "into_incumbent before SuccessorEvent::Authoritative: this process did not \
                 take over (after Failed, stop whatever may write and exit)",
            ));
        }
        if let Some(c) = self.conn.take() {
            // `Ready` is a few dozen bytes into an empty socket buffer; what
            // did not go out now would have nowhere to go later anyway.
            c.deregister(registry);
        }
        let lock = self
            .lock
            .take()
            .ok_or_else(|| io::Error::other("into_incumbent before the lock was taken"))?;
        let staged = self.staged.take().ok_or_else(|| {
            io::Error::other("into_incumbent without a control socket staged by ready")
        })?;
        let socket_path = staged.path().to_path_buf();
        let listener = staged.install_as_successor()?;
        MioIncumbent::from_std(Incumbent::from_parts(listener, &socket_path, lock))
    }

    fn closed(&mut self, registry: &Registry) {
        if let Some(c) = self.conn.take() {
            c.deregister(registry);
        }
        self.machine.handle_closed(clock::now());
    }

    fn pump(&mut self, registry: &Registry) {
        while let Some(out) = self.machine.poll_output() {
            let now = clock::now();
            match out {
                SuccessorOutput::Transmit(frame) => {
                    let failed = match self.conn.as_mut() {
                        Some(c) => c.send(registry, frame).is_err(),
                        None => true,
                    };
                    if failed {
                        if let Some(c) = self.conn.take() {
                            c.deregister(registry);
                        }
                        self.machine.handle_closed(now);
                    } else {
                        crash::frame('n', true, frame);
                    }
                }
                SuccessorOutput::AcquireLock => match DataDirLock::acquire(&self.data_dir) {
                    Ok(lock) => {
                        self.lock = Some(lock);
                        crash::at("n-after-lock-acquired");
                        self.machine.handle_lock_acquired(now);
                    }
                    Err(_) => self.machine.handle_lock_busy(now),
                },
                SuccessorOutput::Start => self.events.push_back(SuccessorEvent::Begun),
                SuccessorOutput::Finished(SuccessorEnd::Authoritative { supervisor_gone }) => {
                    self.authoritative = true;
                    self.events
                        .push_back(SuccessorEvent::Authoritative { supervisor_gone });
                }
                SuccessorOutput::Finished(SuccessorEnd::Failed(failure)) => {
                    // The lock stays held until this successor is dropped:
                    // the daemon stops whatever may write first (or exits).
                    self.events.push_back(SuccessorEvent::Failed {
                        failure,
                        abort_reason: self.machine.abort_reason().to_owned(),
                    });
                }
            }
        }
    }
}
