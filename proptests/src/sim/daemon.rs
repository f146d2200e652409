//! The daemon processes: a successor driving handoff-core's
//! `SuccessorSession`, which then serves as the incumbent driving an
//! `IncumbentSession` for each control connection; or an incumbent from a
//! cold start.
//!
//! The daemon is deliberately simple and correct: it acknowledges a client
//! write only while it holds the lock, accepts and has its writer open, and
//! an acknowledged write is durable (as with a write-ahead log); sealing
//! flushes and closes the writer; a successor and a restarted daemon open
//! the state on disk; an incumbent that resumes after a seal reopens it
//! (after a rollback during probation the successor wrote to it). So any
//! lost write, second writer or early lock release is the machines' doing,
//! or a planted [`Sabotage`].
//!
//! Each offers `Capabilities::PROBATION` as its plan says. A successor that
//! offered it keeps its session after `Finished(Authoritative)` while
//! `on_probation()`: it reads, times out and heartbeats as before, until
//! the supervisor closes the socket.

use std::collections::VecDeque;
use std::time::Duration;

use handoff_core::{
    Capabilities, DrainReport, IncumbentConfig, IncumbentEnd, IncumbentOutput, IncumbentSession,
    Instant, ReadyReportRef, Revisions, SealFailure, SealReportRef, Strings, SuccessorConfig,
    SuccessorEnd, SuccessorOutput, SuccessorSession,
};

use super::net::{ConnId, Readable};
use super::plan::{IncumbentBehaviour, SuccessorBehaviour};
use super::scheduler::earliest;
use super::world::{Pid, Res, SAME_INSTANT_TIMEOUTS, World, frame_name};
use super::{Role, Sabotage};

type Inc = IncumbentSession<Vec<u8>>;
type Suc = SuccessorSession<Vec<u8>>;

/// A lying successor announces its pid plus this.
const LIE_OFFSET: u32 = 50_000;
/// A cold-started daemon's start-up before it tries the lock.
pub(super) const COLD_STARTUP_MAX_MS: u64 = 300;
/// A cold-started daemon refuses a lock held by a live process at once, and
/// waits this long for one held by a dead process to be freed, trying this
/// often (`DataDirLock::acquire_or_break_stale` in `handoff-std`).
pub(super) const COLD_LOCK_WINDOW: Duration = Duration::from_secs(1);
const COLD_LOCK_RETRY: Duration = Duration::from_millis(100);
/// A committed incumbent finishes its last connections within this.
const RETIRE_MAX_MS: u64 = 2_000;

/// A daemon hook that takes time: when it comes due, the daemon tells its
/// incumbent machine the result (or, for `Progress`, how the seal goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hook {
    Drain,
    Seal,
    Progress,
    Resume,
}

/// A daemon process: a successor first (if spawned for a handoff), then an
/// incumbent serving the control socket; or an incumbent from a cold start.
pub(super) struct Daemon {
    pub(super) pid: Pid,
    pub(super) alive: bool,
    /// The supervisor generation that spawned it.
    pub(super) parent: u32,
    pub(super) started: Instant,
    pub(super) died: Option<Instant>,
    pub(super) ib: IncumbentBehaviour,
    pub(super) sb: SuccessorBehaviour,
    pub(super) holds_lock: bool,
    /// The open writer state: the ids of the writes it holds.
    pub(super) writer: Option<Vec<u32>>,
    pub(super) accepting: bool,
    /// It serves the control socket.
    pub(super) control: bool,
    /// Its machine may have outputs queued.
    pub(super) dirty: bool,
    pub(super) inc: Option<(ConnId, Inc)>,
    pub(super) backlog: VecDeque<ConnId>,
    pub(super) hooks: Vec<(Instant, Hook)>,
    /// The seal hook of the current session succeeded.
    sealed_ok: bool,
    pub(super) suc: Option<Suc>,
    pub(super) suc_conn: Option<ConnId>,
    pub(super) hello_at: Option<Instant>,
    pub(super) serve_at: Option<Instant>,
    pub(super) hung: bool,
    /// Stopped (as by `SIGSTOP`) until this instant: `hung` meanwhile.
    pub(super) stopped_until: Option<Instant>,
    /// A `SIGTERM` came while it was stopped: it acts on it when continued.
    pub(super) term_pending: bool,
    /// What its writer held when it sealed: only a sabotaged incumbent
    /// resumes with it.
    sealed_state: Option<Vec<u32>>,
    /// The state it would open if it opened it now: only a sabotaged
    /// successor keeps a stale copy.
    pub(super) stale_disk: Option<Vec<u32>>,
    pub(super) cold_at: Option<Instant>,
    pub(super) cold_give_up: Instant,
    pub(super) retire_at: Option<Instant>,
    pub(super) exit_report_at: Option<Instant>,
    pub(super) exit_reported: bool,
    same_instant_timeouts: (Instant, u32),
}

impl Daemon {
    pub(super) fn new(pid: Pid, parent: u32, now: Instant) -> Self {
        Daemon {
            pid,
            alive: true,
            parent,
            started: now,
            died: None,
            ib: IncumbentBehaviour::healthy(),
            sb: SuccessorBehaviour::healthy(),
            holds_lock: false,
            writer: None,
            accepting: false,
            control: false,
            dirty: false,
            inc: None,
            backlog: VecDeque::new(),
            hooks: Vec::new(),
            sealed_ok: false,
            suc: None,
            suc_conn: None,
            hello_at: None,
            serve_at: None,
            hung: false,
            stopped_until: None,
            term_pending: false,
            sealed_state: None,
            stale_disk: None,
            cold_at: None,
            cold_give_up: now,
            retire_at: None,
            exit_report_at: None,
            exit_reported: false,
            same_instant_timeouts: (Instant::ZERO, 0),
        }
    }

    /// Serving as the incumbent: lock, writer, accepting, not retiring.
    pub(super) fn serving(&self) -> bool {
        self.alive
            && self.holds_lock
            && self.writer.is_some()
            && self.accepting
            && self.retire_at.is_none()
    }

    pub(super) fn timer(&self) -> Option<Instant> {
        let inc = self.inc.as_ref().and_then(|(_, m)| m.poll_timeout());
        let suc = if self.hung {
            None
        } else {
            self.suc.as_ref().and_then(Suc::poll_timeout)
        };
        earliest(inc, suc)
    }

    pub(super) fn next_hook(&self) -> Option<Instant> {
        self.hooks.iter().map(|h| h.0).min()
    }

    /// What it is doing, for crash points.
    pub(super) fn step_name(&self) -> String {
        if let Some((_, m)) = &self.inc {
            return format!("{:?}", m.step());
        }
        if let Some(m) = &self.suc {
            return format!("{:?}", m.step());
        }
        if self.hello_at.is_some() {
            "StartingUp".into()
        } else if self.sb.never_hello && !self.control {
            "StartUpNeverEnds".into()
        } else if self.retire_at.is_some() {
            "Retiring".into()
        } else if self.serving() {
            "ServingWithoutSession".into()
        } else {
            "Other".into()
        }
    }
}

// Outputs copied out of the machines: an output borrows its machine, and
// carrying it out needs the whole world.
enum IncOut {
    Transmit(Vec<u8>),
    Drain,
    Seal,
    ReleaseLock,
    AcquireLock,
    Resume,
    Close,
    Finished(IncumbentEnd),
}

enum SucOut {
    Transmit(Vec<u8>),
    AcquireLock,
    Start,
    Finished(SuccessorEnd),
}

impl World {
    pub(super) fn accept(&mut self, pid: Pid) {
        let now = self.now;
        let d = self.dm(pid);
        let c = d.backlog.pop_front().expect("a queued connection");
        let cfg = IncumbentConfig {
            capabilities: offered(d.ib.offers_probation),
            ..IncumbentConfig::default()
        };
        let m = Inc::new(now, cfg, pid, b"old-build");
        d.inc = Some((c, m));
        d.sealed_ok = false;
        d.dirty = true;
        self.log(|| format!("pid {pid} accepts a control session"));
    }

    pub(super) fn daemon_read(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let d = self.d(pid);
        let c = match (&d.inc, d.suc_conn) {
            (Some((c, _)), _) => *c,
            (None, Some(c)) => c,
            (None, None) => return Err("a daemon reads with no connection".into()),
        };
        match self.conns[c].to_d.readable(now) {
            Readable::Bytes(n) => {
                let take = self.chunk(n);
                let bytes = self.conns[c].to_d.peek(now, take);
                let d = self.dm(pid);
                let used = match (&mut d.inc, &mut d.suc) {
                    (Some((_, m)), _) => m.handle_input(now, &bytes),
                    (None, Some(m)) => m.handle_input(now, &bytes),
                    _ => return Err("no machine".into()),
                };
                d.dirty = true;
                if used == 0 || used > bytes.len() {
                    return Err(format!(
                        "pid {pid} consumed {used} of {} bytes",
                        bytes.len()
                    ));
                }
                self.conns[c].to_d.consume(used);
            }
            Readable::Eof => {
                self.conns[c].to_d.take_eof();
                let d = self.dm(pid);
                let was_on_probation =
                    d.inc.is_none() && d.suc.as_ref().is_some_and(Suc::on_probation);
                match (&mut d.inc, &mut d.suc) {
                    (Some((_, m)), _) => m.handle_closed(now),
                    (None, Some(m)) => m.handle_closed(now),
                    _ => {}
                }
                d.dirty = true;
                self.log(|| format!("pid {pid} reads EOF from S"));
                if was_on_probation {
                    self.end_probation_session(pid);
                }
            }
            Readable::Nothing => {}
        }
        Ok(())
    }

    pub(super) fn daemon_timeout(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let d = self.dm(pid);
        d.same_instant_timeouts = match d.same_instant_timeouts {
            (t, n) if t == now => (t, n + 1),
            _ => (now, 1),
        };
        if d.same_instant_timeouts.1 > SAME_INSTANT_TIMEOUTS {
            return Err(format!(
                "pid {pid} keeps asking for a timeout at {now:?} that does not clear"
            ));
        }
        let was_on_probation = d.inc.is_none() && d.suc.as_ref().is_some_and(Suc::on_probation);
        match (&mut d.inc, &mut d.suc) {
            (Some((_, m)), _) => m.handle_timeout(now),
            (None, Some(m)) => m.handle_timeout(now),
            _ => {}
        }
        d.dirty = true;
        if was_on_probation {
            // A supervisor silent past the liveness limit ends the session
            // as its close does.
            self.end_probation_session(pid);
        }
        Ok(())
    }

    pub(super) fn daemon_hook(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let disk_len = self.disk.len() as u64;
        let disk = self.disk.clone();
        let sabotage = self.options.sabotage;
        let d = self.dm(pid);
        let i = (0..d.hooks.len())
            .min_by_key(|&i| d.hooks[i].0)
            .expect("a due hook");
        let (_, hook) = d.hooks.remove(i);
        let b = d.ib;
        let Some((_, m)) = d.inc.as_mut() else {
            return Ok(());
        };
        d.dirty = true;
        let line = match hook {
            Hook::Drain if b.drain_fails => {
                m.handle_drain_failed(now);
                "the drain hook fails"
            }
            Hook::Drain => {
                m.handle_drained(
                    now,
                    DrainReport {
                        open_conns_remaining: 0,
                        accept_closed: true,
                    },
                );
                "the drain hook is done"
            }
            Hook::Seal => {
                d.hooks.retain(|h| h.1 != Hook::Progress);
                if b.seal_fails {
                    m.handle_seal_failed(
                        now,
                        SealFailure {
                            error: "disk full",
                            partial_state: "shard 2 of 4",
                        },
                    );
                    "the seal hook fails"
                } else {
                    // Every acknowledged write is durable already; sealing
                    // closes the writer so that no more are taken.
                    d.sealed_state = d.writer.take();
                    d.sealed_ok = true;
                    m.handle_sealed(
                        now,
                        SealReportRef {
                            last_revision_per_shard: Revisions::from_slice(&[disk_len]),
                            data_dir_fingerprint: [0x5e; 32],
                        },
                    );
                    "the seal hook is done: the writer is closed"
                }
            }
            Hook::Progress => {
                m.handle_seal_progress(now, 1, 4, disk_len);
                if let Some(every) = b.seal_progress_every {
                    d.hooks.push((now + every, Hook::Progress));
                }
                "the seal hook reports progress"
            }
            Hook::Resume if b.resume_fails => {
                m.handle_resume_failed(now);
                "the resume hook fails"
            }
            Hook::Resume => {
                if !d.holds_lock {
                    return Err(format!(
                        "invariant 1: pid {pid} resumes serving without the data-dir lock"
                    ));
                }
                // After a seal the writer is closed, and the successor may
                // have served since (probation): the state is reopened from
                // disk, unless the sabotage keeps what it sealed.
                let sealed = d.sealed_state.take();
                if d.writer.is_none() {
                    d.writer = Some(match sealed {
                        Some(state) if sabotage == Sabotage::IncumbentResumesSealedState => state,
                        _ => disk,
                    });
                }
                d.accepting = true;
                m.handle_resumed(now);
                "the resume hook is done: serving again"
            }
        };
        self.log(|| format!("pid {pid}: {line}"));
        Ok(())
    }

    pub(super) fn daemon_pump(&mut self, pid: Pid) -> Res {
        let d = self.dm(pid);
        if let Some((_, m)) = d.inc.as_mut() {
            let out = match m.poll_output() {
                None => {
                    d.dirty = false;
                    return Ok(());
                }
                Some(IncumbentOutput::Transmit(f)) => IncOut::Transmit(f.to_vec()),
                Some(IncumbentOutput::Drain { .. }) => IncOut::Drain,
                Some(IncumbentOutput::Seal) => IncOut::Seal,
                Some(IncumbentOutput::ReleaseLock) => IncOut::ReleaseLock,
                Some(IncumbentOutput::AcquireLock) => IncOut::AcquireLock,
                Some(IncumbentOutput::Resume) => IncOut::Resume,
                Some(IncumbentOutput::Close) => IncOut::Close,
                // The simulated daemons offer no capability but
                // `PROBATION`.
                Some(IncumbentOutput::SendListeners { .. }) => {
                    return Err(format!("pid {pid}: SendListeners without the capability"));
                }
                Some(IncumbentOutput::PassChannel { .. }) => {
                    return Err(format!("pid {pid}: PassChannel without the capability"));
                }
                Some(IncumbentOutput::Finished(end)) => IncOut::Finished(end),
            };
            return self.incumbent_output(pid, out);
        }
        if let Some(m) = d.suc.as_mut() {
            let out = match m.poll_output() {
                None => {
                    d.dirty = false;
                    return Ok(());
                }
                Some(SuccessorOutput::Transmit(f)) => SucOut::Transmit(f.to_vec()),
                Some(SuccessorOutput::AcquireLock) => SucOut::AcquireLock,
                Some(SuccessorOutput::Start) => SucOut::Start,
                // As above: `PASS_CONNECTIONS` is never offered.
                Some(SuccessorOutput::PassChannel { .. }) => {
                    return Err(format!("pid {pid}: PassChannel without the capability"));
                }
                Some(SuccessorOutput::Finished(end)) => SucOut::Finished(end),
            };
            return self.successor_output(pid, out);
        }
        d.dirty = false;
        Ok(())
    }

    /// A daemon's adapter answering its machine's `AcquireLock`: one try
    /// of the lock, or none at all when `sabotaged` (it claims the lock
    /// without taking it). Returns whether it reports the lock taken.
    fn lock_attempt(&mut self, pid: Pid, sabotaged: bool) -> bool {
        let got = sabotaged || self.try_lock(pid);
        self.log(|| {
            format!(
                "pid {pid} tries the lock: {}",
                if got { "taken" } else { "busy" }
            )
        });
        got
    }

    fn incumbent_output(&mut self, pid: Pid, out: IncOut) -> Res {
        let now = self.now;
        let is_o = self.ctx.as_ref().is_some_and(|c| c.o_pid == pid);
        match out {
            IncOut::Transmit(frame) => {
                let (c, _) = self.d(pid).inc.as_ref().expect("a session");
                let c = *c;
                if self.conns[c].d_open {
                    let delay = self.net_delay();
                    self.conns[c].to_s.write(now, delay, &frame);
                }
                self.log(|| format!("pid {pid} -> S: {}", frame_name(&frame)));
                if is_o {
                    self.count_frame(Role::Incumbent);
                }
            }
            IncOut::Drain => {
                let d = self.dm(pid);
                d.accepting = false;
                d.hooks.push((now + d.ib.drain_time, Hook::Drain));
                self.log(|| format!("pid {pid} stops accepting and drains"));
            }
            IncOut::Seal => {
                let d = self.dm(pid);
                d.hooks.push((now + d.ib.seal_time, Hook::Seal));
                if let Some(every) = d.ib.seal_progress_every {
                    d.hooks.push((now + every, Hook::Progress));
                }
                self.log(|| format!("pid {pid} seals"));
            }
            IncOut::ReleaseLock => {
                let d = self.d(pid);
                if !d.sealed_ok || d.writer.is_some() {
                    return Err(format!(
                        "invariant 2: pid {pid} releases the lock without a successful seal"
                    ));
                }
                if !d.holds_lock || self.lock.holder != Some(pid) {
                    return Err(format!("pid {pid} releases a lock it does not hold"));
                }
                self.dm(pid).holds_lock = false;
                self.lock.holder = None;
                self.log(|| format!("pid {pid} releases the lock"));
            }
            IncOut::AcquireLock => {
                let got =
                    self.lock_attempt(pid, self.options.sabotage == Sabotage::IncumbentSkipsRelock);
                if got && self.control_owner != Some(pid) {
                    // As `IncumbentDriver` does: the lock is taken back
                    // only after a seal, and a successor that served
                    // (probation, or a `Ready` that crossed the abort) had
                    // renamed its control socket over the path; the
                    // incumbent binds it again.
                    self.control_owner = Some(pid);
                    self.log(|| format!("pid {pid} takes the control socket path back"));
                }
                let (_, m) = self.dm(pid).inc.as_mut().expect("a session");
                if got {
                    m.handle_lock_acquired(now);
                } else {
                    m.handle_lock_busy(now);
                }
            }
            IncOut::Resume => {
                let d = self.dm(pid);
                d.hooks.push((now + d.ib.resume_time, Hook::Resume));
                self.log(|| format!("pid {pid} resumes"));
            }
            IncOut::Close => {
                let (c, _) = self.d(pid).inc.as_ref().expect("a session");
                let c = *c;
                self.close_d(c);
                self.log(|| format!("pid {pid} closes its control connection"));
            }
            IncOut::Finished(end) => {
                let d = self.dm(pid);
                let (c, _) = d.inc.take().expect("a session");
                d.hooks.clear();
                d.sealed_ok = false;
                d.sealed_state = None;
                self.close_d(c);
                self.log(|| format!("pid {pid}'s session ends: {end:?}"));
                let d = self.dm(pid);
                match end {
                    IncumbentEnd::Serving(_) => {
                        if !d.serving() {
                            return Err(format!(
                                "pid {pid}'s session ended {end:?} but it does not serve \
                                 (lock {}, writer {}, accepting {})",
                                d.holds_lock,
                                d.writer.is_some(),
                                d.accepting
                            ));
                        }
                    }
                    IncumbentEnd::Committed => {
                        if d.holds_lock || d.writer.is_some() {
                            return Err(format!(
                                "pid {pid} committed still holding the lock or its writer"
                            ));
                        }
                        d.accepting = false;
                        d.control = false;
                        let retire = self.rng.millis(0, RETIRE_MAX_MS);
                        self.dm(pid).retire_at = Some(now + retire);
                    }
                    IncumbentEnd::Superseded(_) | IncumbentEnd::ResumeFailed(_) => {
                        self.kill(pid, "exits after its session");
                    }
                }
            }
        }
        if self.alive(pid) && self.d(pid).inc.is_some() {
            self.dm(pid).dirty = true;
        }
        Ok(())
    }

    pub(super) fn successor_hello(&mut self, pid: Pid) {
        let now = self.now;
        let d = self.dm(pid);
        d.hello_at = None;
        if d.sb.never_hello {
            self.log(|| format!("pid {pid}'s start-up never ends"));
            return;
        }
        let announced = if d.sb.lie_about_pid {
            pid + LIE_OFFSET
        } else {
            pid
        };
        let cfg = SuccessorConfig {
            capabilities: offered(d.sb.offers_probation),
            ..SuccessorConfig::default()
        };
        d.suc = Some(Suc::new(now, cfg, announced, b"new-build"));
        d.dirty = true;
        self.log(|| format!("pid {pid} is started up and says Hello"));
    }

    fn successor_output(&mut self, pid: Pid, out: SucOut) -> Res {
        let now = self.now;
        let is_n = self.ctx.as_ref().is_some_and(|c| c.n_pid == Some(pid));
        match out {
            SucOut::Transmit(frame) => {
                let c = self.d(pid).suc_conn.expect("a socketpair");
                if self.conns[c].d_open {
                    let delay = self.net_delay();
                    self.conns[c].to_s.write(now, delay, &frame);
                }
                self.log(|| format!("pid {pid} -> S: {}", frame_name(&frame)));
                if is_n {
                    self.count_frame(Role::Successor);
                }
            }
            SucOut::AcquireLock => {
                let got =
                    self.lock_attempt(pid, self.options.sabotage == Sabotage::SuccessorSkipsLock);
                let m = self.dm(pid).suc.as_mut().expect("a session");
                if got {
                    m.handle_lock_acquired(now);
                } else {
                    m.handle_lock_busy(now);
                }
            }
            SucOut::Start => {
                let d = self.dm(pid);
                if !d.holds_lock {
                    return Err(format!(
                        "invariant 5: successor pid {pid} is told to open the state without the lock"
                    ));
                }
                if d.sb.hang_after_begin {
                    d.hung = true;
                    self.log(|| format!("pid {pid} hangs while starting"));
                } else {
                    d.serve_at = Some(now + d.sb.after_begin);
                    self.log(|| format!("pid {pid} opens the sealed state"));
                }
            }
            SucOut::Finished(end) => {
                let d = self.dm(pid);
                let c = d.suc_conn.expect("a socketpair");
                // On probation the session lives on, heartbeating, until
                // the supervisor closes the socket.
                let probation = d.suc.as_ref().is_some_and(Suc::on_probation);
                if !probation {
                    d.suc = None;
                    self.close_d(c);
                }
                self.log(|| {
                    format!(
                        "pid {pid} as successor ends: {end:?}{}",
                        if probation {
                            "; its session heartbeats on probation"
                        } else {
                            ""
                        }
                    )
                });
                match end {
                    SuccessorEnd::Authoritative { .. } => {
                        let d = self.dm(pid);
                        if !d.serving() {
                            return Err(format!("pid {pid} is authoritative but does not serve"));
                        }
                        d.control = true;
                        self.control_owner = Some(pid);
                    }
                    SuccessorEnd::Failed(_) => self.kill(pid, "exits without serving"),
                }
            }
        }
        if self.alive(pid) && self.d(pid).suc.is_some() {
            self.dm(pid).dirty = true;
        }
        Ok(())
    }

    pub(super) fn successor_serve(&mut self, pid: Pid) -> Res {
        let now = self.now;
        let disk = self.disk.clone();
        let d = self.dm(pid);
        d.serve_at = None;
        let Some(m) = d.suc.as_mut() else {
            return Ok(());
        };
        d.dirty = true;
        if d.sb.start_fails {
            m.handle_start_failed(now);
            self.log(|| format!("pid {pid} cannot start"));
            return Ok(());
        }
        if !d.holds_lock {
            return Err(format!(
                "invariant 5: successor pid {pid} opens the state without the lock"
            ));
        }
        let opened = d.stale_disk.take().unwrap_or(disk);
        // The revision of the one shard is the number of writes in it, as
        // the incumbent's seal reports it.
        let revision = opened.len() as u64;
        d.writer = Some(opened);
        d.accepting = true;
        let listening = ["127.0.0.1:7000"];
        m.handle_ready(
            now,
            ReadyReportRef {
                listening_on: Strings::from_slice(&listening),
                healthz_ok: !d.sb.unhealthy,
                advertised_revision_per_shard: Revisions::from_slice(&[revision]),
            },
        );
        self.log(|| format!("pid {pid} serves and reports Ready"));
        Ok(())
    }

    /// A successor's session that was on probation is over once the
    /// supervisor closed the socket (its `Finished` was carried out at
    /// `Ready`): the daemon drops it and closes its end.
    fn end_probation_session(&mut self, pid: Pid) {
        let d = self.dm(pid);
        if d.suc.as_ref().is_none_or(Suc::on_probation) {
            return;
        }
        d.suc = None;
        let c = d.suc_conn.expect("a socketpair");
        self.close_d(c);
        self.log(|| format!("pid {pid}'s probation session is over: it serves on"));
    }

    /// A stopped successor is continued: it acts on a `SIGTERM` that came
    /// meanwhile, or goes on where it was.
    pub(super) fn successor_continues(&mut self, pid: Pid) {
        let d = self.dm(pid);
        d.stopped_until = None;
        d.hung = false;
        d.dirty = true;
        if std::mem::take(&mut d.term_pending) {
            self.kill(pid, "is continued and acts on its pending SIGTERM");
        } else {
            self.log(|| format!("pid {pid} is continued"));
        }
    }

    pub(super) fn cold_try(&mut self, pid: Pid) {
        let now = self.now;
        self.dm(pid).cold_at = None;
        if self.try_lock(pid) {
            let disk = self.disk.clone();
            let d = self.dm(pid);
            d.writer = Some(disk);
            d.accepting = true;
            d.control = true;
            self.control_owner = Some(pid);
            self.log(|| format!("cold pid {pid} takes the lock and serves"));
        } else if self.lock.holder.is_some_and(|h| self.alive(h)) {
            self.kill(pid, "refuses to start: a live process holds the lock");
        } else if now >= self.d(pid).cold_give_up {
            self.kill(
                pid,
                "gives up its cold start: a dead holder's lock stays busy",
            );
        } else {
            self.dm(pid).cold_at = Some(now + COLD_LOCK_RETRY);
        }
    }
}

/// The capabilities a simulated daemon offers.
fn offered(probation: bool) -> Capabilities {
    if probation {
        Capabilities::PROBATION
    } else {
        Capabilities::NONE
    }
}
