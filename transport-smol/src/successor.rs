//! The successor's typestates as async fns: [`handshake`] →
//! [`Handshook::wait_for_begin`] → (take listeners, open the state inside
//! [`Begun::start_up`]) → [`Begun::announce_and_bind`]. `start_up` runs the
//! daemon's start-up future concurrently with the protocol in the same
//! task, so heartbeats go out and an abort stops the wait.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use futures_lite::future;
use handoff_core::{HandoffId, SuccessorConfig, SuccessorEnd, SuccessorOutput, SuccessorSession};
use handoff_std::os::control::stage_control_socket;
use handoff_std::os::listeners::InheritedListeners;
use handoff_std::os::lock::DataDirLock;
use handoff_std::{AnnounceError, Incumbent, Readiness, Successor, SuccessorError, clock, crash};

use crate::conn::{AsyncConn, Read, readable, timer};

/// Says `Hello` for `successor` and waits for the supervisor's answer.
/// `config` is the one used, in place of any given to
/// `Successor::with_config`.
pub async fn handshake(
    successor: Successor,
    build_id: &[u8],
    config: SuccessorConfig,
) -> Result<Handshook, SuccessorError> {
    let (control, listeners) = successor.into_parts();
    let conn = AsyncConn::new(control).map_err(SuccessorError::Io)?;
    let mut driver = Driver {
        conn: Some(conn),
        machine: SuccessorSession::new(clock::now(), config, std::process::id(), build_id),
        data_dir: None,
        lock: None,
        ended: None,
    };
    driver.run(Goal::Acked).await?;
    Ok(Handshook { driver, listeners })
}

/// `Hello` answered; waiting for `Begin`.
pub struct Handshook {
    driver: Driver,
    listeners: InheritedListeners,
}

impl std::fmt::Debug for Handshook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshook").finish_non_exhaustive()
    }
}

impl Handshook {
    /// The handoff's id.
    pub fn handoff_id(&self) -> Option<HandoffId> {
        self.driver.machine.handoff_id()
    }

    /// Waits for `Begin` and takes the data-dir lock of `data_dir`.
    pub async fn wait_for_begin(mut self, data_dir: &Path) -> Result<Begun, SuccessorError> {
        self.driver.data_dir = Some(data_dir.to_path_buf());
        self.driver.run(Goal::Started).await?;
        Ok(Begun {
            driver: self.driver,
            listeners: self.listeners,
        })
    }
}

/// `Begin` received and the lock held.
pub struct Begun {
    driver: Driver,
    listeners: InheritedListeners,
}

impl std::fmt::Debug for Begun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Begun").finish_non_exhaustive()
    }
}

impl Begun {
    /// The inherited listeners, to take by name.
    pub fn listeners(&mut self) -> &mut InheritedListeners {
        &mut self.listeners
    }

    /// The data-dir lock this process now holds.
    pub fn lock(&self) -> Option<&DataDirLock> {
        self.driver.lock.as_ref()
    }

    /// Runs the daemon's start-up (open the state, start serving) while the
    /// protocol goes on: heartbeats to the supervisor, and an `Abort`, which
    /// ends the wait with an error (drop the half-started state and exit).
    pub async fn start_up<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, SuccessorError> {
        let protocol = async {
            // Only the machine's end (an abort) finishes this.
            Err(match self.driver.run(Goal::Authoritative).await {
                Err(e) => e,
                Ok(()) => SuccessorError::Io(io::Error::other("the handoff ended during start-up")),
            })
        };
        future::or(async { Ok(work.await) }, protocol).await
    }

    /// Sends `Ready`, takes over the control socket path, and returns the
    /// incumbent to serve with. On failure the error still holds the lock:
    /// stop anything that may write before dropping it.
    pub async fn announce_and_bind(
        mut self,
        readiness: Readiness,
        socket_path: &Path,
    ) -> Result<Incumbent, AnnounceError> {
        match self.announce(readiness, socket_path).await {
            Ok(incumbent) => Ok(incumbent),
            Err(error) => Err(AnnounceError {
                error,
                lock: self.driver.lock.take(),
            }),
        }
    }

    async fn announce(
        &mut self,
        readiness: Readiness,
        socket_path: &Path,
    ) -> Result<Incumbent, SuccessorError> {
        // Bound before `Ready`: a path that cannot be bound fails the
        // handoff while the old binary can still resume.
        let staged = stage_control_socket(socket_path).map_err(SuccessorError::Io)?;
        // What the supervisor already sent goes first: an `Abort` queued
        // while the daemon started up ends the handoff here, before a
        // `Ready` goes out.
        self.driver.run(Goal::Settled).await?;
        readiness.report_to(&mut self.driver.machine, clock::now());
        self.driver.run(Goal::Authoritative).await?;
        let lock = self.driver.lock.take().ok_or_else(|| {
            SuccessorError::Io(io::Error::other(
                "the lock was reported held but is missing",
            ))
        })?;
        let listener = staged.install_as_successor().map_err(SuccessorError::Io)?;
        Ok(Incumbent::from_parts(listener, socket_path, lock))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    Acked,
    Started,
    Authoritative,
    /// Everything the supervisor sent so far handed to the machine,
    /// nothing waited for.
    Settled,
}

struct Driver {
    conn: Option<AsyncConn>,
    machine: SuccessorSession<Vec<u8>>,
    data_dir: Option<PathBuf>,
    lock: Option<DataDirLock>,
    /// How the machine ended, once it has: a later `run` reports it again
    /// instead of waiting on a session that is over.
    ended: Option<SuccessorEnd>,
}

impl Driver {
    fn failed(&self, failure: handoff_core::SuccessorFailure) -> SuccessorError {
        SuccessorError::Failed {
            failure,
            abort_reason: self.machine.abort_reason().to_owned(),
        }
    }

    async fn run(&mut self, goal: Goal) -> Result<(), SuccessorError> {
        'run: loop {
            match self.ended {
                Some(SuccessorEnd::Authoritative { .. }) => return Ok(()),
                Some(SuccessorEnd::Failed(failure)) => return Err(self.failed(failure)),
                None => {}
            }
            while let Some(out) = self.machine.poll_output() {
                let now = clock::now();
                match out {
                    SuccessorOutput::Transmit(frame) => {
                        let sent = match self.conn.as_ref() {
                            Some(c) => c.send(frame).await.is_ok(),
                            None => false,
                        };
                        if sent {
                            crash::frame('n', true, frame);
                        } else {
                            self.conn = None;
                            self.machine.handle_closed(now);
                        }
                    }
                    SuccessorOutput::AcquireLock => {
                        let lock = self.data_dir.as_deref().map(DataDirLock::acquire);
                        match lock {
                            Some(Ok(lock)) => {
                                self.lock = Some(lock);
                                crash::at("n-after-lock-acquired");
                                self.machine.handle_lock_acquired(now);
                            }
                            _ => self.machine.handle_lock_busy(now),
                        }
                    }
                    SuccessorOutput::Start => {
                        if goal == Goal::Started {
                            return Ok(());
                        }
                    }
                    // The lock stays with the caller's state until it is
                    // dropped, after whatever may write has stopped.
                    SuccessorOutput::Finished(end) => {
                        self.ended = Some(end);
                        continue 'run;
                    }
                }
            }
            if goal == Goal::Acked && self.machine.version().is_some() {
                return Ok(());
            }
            if let Some(c) = self.conn.as_mut()
                && !c.inbox.is_empty()
            {
                let used = self.machine.handle_input(clock::now(), c.inbox.pending());
                c.inbox.consume(used);
                continue;
            }
            if goal == Goal::Settled {
                // Whatever is readable now, without waiting for more.
                let Some(c) = self.conn.as_mut() else {
                    return Ok(());
                };
                match c.read() {
                    Read::Data => continue,
                    Read::WouldBlock => return Ok(()),
                    Read::Closed => {
                        self.conn = None;
                        self.machine.handle_closed(clock::now());
                        continue;
                    }
                }
            }
            let deadline = self.machine.poll_timeout();
            let input = future::or(
                async {
                    readable(self.conn.as_ref()).await;
                    true
                },
                async {
                    timer(deadline).await;
                    false
                },
            )
            .await;
            let now = clock::now();
            if input {
                if let Some(c) = self.conn.as_mut() {
                    match c.read() {
                        Read::Data | Read::WouldBlock => {}
                        Read::Closed => {
                            self.conn = None;
                            self.machine.handle_closed(now);
                        }
                    }
                }
            }
            // Also after input: a peer that never stops sending must not
            // hold off the deadlines (an early call does nothing).
            self.machine.handle_timeout(clock::now());
        }
    }
}
