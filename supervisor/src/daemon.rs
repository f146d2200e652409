//! Starting the daemon cold and knowing when it serves; stopping daemons.
//!
//! "Serves" means its control socket answers with the incumbent's `Hello`
//! and that `Hello` carries the pid we spawned: a socket file merely
//! present could be left over, and one that answers could belong to an
//! orphaned daemon of an earlier supervisor.

use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use handoff_core::{FrameDecoder, Message, Side};
use handoff_std::Signal;
use handoff_std::os::process::{ExitWatch, poll_readable, send_signal};
use handoff_std::os::spawn::{
    Child, ChildStdio, Launch, PassedListener, SpawnError, spawn_cold_vfork,
};

use crate::config::Config;
use crate::trust::{self, Untrusted};

/// How often the control socket is tried while the daemon starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);

/// How long one probe waits for the `Hello`: a daemon binds its control
/// socket before it starts answering it.
const HELLO_WAIT: Duration = Duration::from_secs(1);

/// A daemon process we watch: one we started (our child, reaped here), or
/// one a crashed supervisor left serving that we adopted (not our child:
/// its exit is watched through the pidfd taken when it was adopted, and
/// its parent reaps it).
#[derive(Debug)]
pub(crate) struct Proc {
    handle: Handle,
    /// When it began to serve (its first `Hello`, its commit, or its
    /// adoption).
    pub(crate) started: Instant,
}

#[derive(Debug)]
enum Handle {
    Child(Child),
    Adopted { pid: u32, exit: ExitWatch },
}

/// How a daemon ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ended {
    /// Our child, with its status.
    Status(ExitStatus),
    /// An adopted daemon: its status goes to its parent, not to us.
    Adopted,
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Status(s) => write!(f, "{s}"),
            Ended::Adopted => f.write_str("status unknown: an adopted daemon is not our child"),
        }
    }
}

impl Proc {
    /// A child of ours that serves from now on.
    pub(crate) fn child(child: Child) -> Proc {
        Proc {
            handle: Handle::Child(child),
            started: Instant::now(),
        }
    }

    /// A daemon we did not start, watched through `exit`.
    pub(crate) fn adopted(pid: u32, exit: ExitWatch) -> Proc {
        Proc {
            handle: Handle::Adopted { pid, exit },
            started: Instant::now(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        match &self.handle {
            Handle::Child(c) => c.id(),
            Handle::Adopted { pid, .. } => *pid,
        }
    }

    /// Whether we adopted it rather than started it.
    pub(crate) fn is_adopted(&self) -> bool {
        matches!(self.handle, Handle::Adopted { .. })
    }

    /// A watch on its exit that names this process and no other: a child's
    /// pid cannot be reused while we have not reaped it, and an adopted
    /// daemon's watch is a copy of the pidfd taken at its adoption.
    pub(crate) fn exit_watch(&self) -> Option<ExitWatch> {
        match &self.handle {
            Handle::Child(c) => ExitWatch::new(c.id()).ok(),
            Handle::Adopted { exit, .. } => exit.try_clone().ok(),
        }
    }

    /// How it ended, if it has (a child is reaped here).
    pub(crate) fn try_ended(&mut self) -> io::Result<Option<Ended>> {
        match &mut self.handle {
            Handle::Child(c) => Ok(c.try_wait()?.map(Ended::Status)),
            Handle::Adopted { exit, .. } => Ok(exit.has_exited().then_some(Ended::Adopted)),
        }
    }

    /// Sends `signal` to it, and to no other process.
    pub(crate) fn signal(&self, signal: Signal) {
        let _ = match &self.handle {
            Handle::Child(c) => send_signal(c.id(), signal),
            Handle::Adopted { exit, .. } => exit.signal(signal),
        };
    }

    /// Waits for it to end until `deadline`.
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> Option<Ended> {
        let watch = self.exit_watch();
        loop {
            if let Ok(Some(ended)) = self.try_ended() {
                return Some(ended);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match &watch {
                Some(w) => {
                    if poll_readable(&[w.as_fd()], Some(left)).is_err() {
                        std::thread::sleep(PROBE_INTERVAL.min(left));
                    }
                }
                None => std::thread::sleep(PROBE_INTERVAL.min(left)),
            }
        }
    }
}

/// Why a cold start did not end with a serving daemon.
#[derive(Debug)]
pub(crate) enum StartError {
    /// Its binary is not safe to run (nothing was spawned).
    Untrusted(Untrusted),
    /// It could not be spawned.
    Spawn(SpawnError),
    /// It exited before serving.
    Exited(ExitStatus),
    /// It did not serve in time (and was stopped).
    Timeout(Duration),
    /// The supervisor is stopping (and the daemon was stopped).
    Stopping,
    /// Waiting on it failed.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Untrusted(e) => write!(f, "{e}"),
            StartError::Spawn(e) => write!(f, "{e}"),
            StartError::Exited(status) => write!(
                f,
                "it exited ({status}) before its control socket answered; see its own log \
                 for why"
            ),
            StartError::Timeout(waited) => write!(
                f,
                "its control socket did not answer within {} s (it was stopped); check \
                 that the daemon binds the configured control_socket",
                waited.as_secs_f64()
            ),
            StartError::Stopping => f.write_str("the supervisor is stopping"),
            StartError::Io(e) => write!(f, "waiting for it: {e}"),
        }
    }
}

/// Spawns `binary` cold with the listeners and waits until it serves.
/// Whatever fails, no process is left behind. `binary` is checked first
/// (the cold start and every restart come here): the configuration was
/// checked when it was read, but the file may have changed since.
pub(crate) fn start(
    config: &Config,
    binary: &Path,
    listeners: &[PassedListener<'_>],
    timeout: Duration,
    stop_grace: Duration,
    stopping: &AtomicBool,
) -> Result<Proc, StartError> {
    // What is checked is exactly what is executed: the same path, unchanged.
    // The kernel resolves it again at exec, and that cannot be avoided at
    // this level (no exec by descriptor for a program that may be a
    // script), but the check leaves no one except root and our own user
    // able to change anything on that path in between.
    trust::check_binary(binary).map_err(StartError::Untrusted)?;
    let mut launch = Launch::new(binary);
    launch
        .args(&config.args)
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        // A daemon has no business reading the supervisor's terminal.
        .stdin(ChildStdio::Null);
    // Unforked, as the handoff's successor is: a restart after a crash
    // should not cost more the more the supervisor holds.
    let mut child = spawn_cold_vfork(launch, listeners).map_err(StartError::Spawn)?;
    match wait_until_serving(&config.control_socket, &mut child, timeout, stopping) {
        Ok(()) => Ok(Proc::child(child)),
        Err(e) => {
            let mut proc = Proc::child(child);
            if !matches!(e, StartError::Exited(_)) {
                stop_all(std::slice::from_mut(&mut proc), stop_grace);
            }
            Err(e)
        }
    }
}

fn wait_until_serving(
    control_socket: &Path,
    child: &mut Child,
    timeout: Duration,
    stopping: &AtomicBool,
) -> Result<(), StartError> {
    let pid = child.id();
    let deadline = Instant::now() + timeout;
    // Sleeping on the child's exit rather than on nothing: a daemon that
    // fails at start is reported at once.
    let watch = ExitWatch::new(pid).ok();
    loop {
        if let Some(status) = child.try_wait().map_err(StartError::Io)? {
            return Err(StartError::Exited(status));
        }
        if stopping.load(Ordering::SeqCst) {
            return Err(StartError::Stopping);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(StartError::Timeout(timeout));
        }
        match probe(control_socket, deadline) {
            Some(p) if p == pid => return Ok(()),
            Some(other) => tracing::debug!(
                pid = other,
                "the control socket is answered by another process; waiting for ours"
            ),
            None => {}
        }
        let pause = PROBE_INTERVAL.min(deadline.saturating_duration_since(Instant::now()));
        match &watch {
            Some(w) => {
                poll_readable(&[w.as_fd()], Some(pause)).map_err(StartError::Io)?;
            }
            None => std::thread::sleep(pause),
        }
    }
}

/// Connects to the control socket and reads the incumbent's `Hello`;
/// returns the pid it announces. The session then ends at once (our close),
/// which the incumbent treats as a supervisor that went away before asking
/// for anything: it serves on.
pub(crate) fn probe(control_socket: &Path, deadline: Instant) -> Option<u32> {
    // Bounded: a stopped daemon's full accept queue would hold a plain
    // connect without end.
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    let mut stream = handoff_std::os::control::connect_within(control_socket, left).ok()?;
    let wait = HELLO_WAIT.min(deadline.saturating_duration_since(Instant::now()));
    if wait.is_zero() {
        return None;
    }
    stream.set_read_timeout(Some(wait)).ok()?;
    read_hello_pid(&mut stream)
}

/// Reads one frame and, if it is an incumbent's `Hello` (docs/PROTOCOL.md section 2),
/// returns the pid it announces. Framing and decoding are handoff-core's
/// `FrameDecoder`, in a fixed buffer: a hostile peer's length prefix costs
/// no allocation.
fn read_hello_pid(r: &mut impl Read) -> Option<u32> {
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut buf = [0u8; 256];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        let mut input = &buf[..n];
        while !input.is_empty() {
            let (used, frame) = decoder.decode(input);
            if let Some(frame) = frame.ok()? {
                return match frame.message {
                    Message::Hello {
                        role: Side::Incumbent,
                        pid,
                        ..
                    } if pid != 0 => Some(pid),
                    _ => None,
                };
            }
            input = &input[used..];
        }
    }
}

/// Stops every process in `procs`: `SIGTERM`, then `SIGKILL` for those
/// still running after `grace`; reaps those that are our children. Returns
/// how each ended (`None` if even `SIGKILL` was not reported within a
/// further bound).
pub(crate) fn stop_all(procs: &mut [Proc], grace: Duration) -> Vec<Option<Ended>> {
    for p in procs.iter() {
        p.signal(Signal::Terminate);
    }
    let deadline = Instant::now() + grace;
    let mut ended: Vec<Option<Ended>> = procs.iter_mut().map(|p| p.wait_until(deadline)).collect();
    let kill_deadline = Instant::now() + KILL_WAIT;
    for (p, ended) in procs.iter_mut().zip(ended.iter_mut()) {
        if ended.is_none() {
            tracing::warn!(
                pid = p.pid(),
                grace_s = grace.as_secs_f64(),
                "the daemon ignored SIGTERM; sending SIGKILL"
            );
            p.signal(Signal::Kill);
            *ended = p.wait_until(kill_deadline);
        }
    }
    ended
}

/// How long a `SIGKILL`ed process may take to be reported dead.
const KILL_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    use handoff_core::{Capabilities, LEN_PREFIX, VERSION_FIELD, encode_frame};

    /// The whole frame of a `Hello` from `role` announcing `pid`.
    fn hello(role: Side, pid: u32) -> Vec<u8> {
        let msg = Message::Hello {
            role,
            pid,
            build_id: b"test",
            proto_min: 1,
            proto_max: 1,
            capabilities: Capabilities::NONE,
        };
        let mut out = vec![0u8; 64];
        let n = encode_frame(1, &msg, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn pid_of(frame: &[u8]) -> Option<u32> {
        read_hello_pid(&mut &frame[..])
    }

    #[test]
    fn the_pid_is_read_from_an_incumbent_hello() {
        assert_eq!(pid_of(&hello(Side::Incumbent, 300)), Some(300));
        assert_eq!(pid_of(&hello(Side::Incumbent, 7)), Some(7));
        // The largest pid fits in five bytes.
        assert_eq!(pid_of(&hello(Side::Incumbent, u32::MAX)), Some(u32::MAX));
    }

    #[test]
    fn anything_else_is_not_a_pid() {
        // A successor's Hello, another message, a truncated frame, a bad
        // frame length, pid 0, a pid past u32.
        assert_eq!(pid_of(&hello(Side::Successor, 7)), None);
        let mut heartbeat = [0u8; 16];
        let n = encode_frame(1, &Message::Heartbeat { ts_ms: 1 }, &mut heartbeat).unwrap();
        assert_eq!(pid_of(&heartbeat[..n]), None);
        let whole = hello(Side::Incumbent, 7);
        assert_eq!(pid_of(&whole[..whole.len() - 1]), None);
        for bad_len in [1u32, (1 << 20) + 1] {
            let mut frame = whole.clone();
            frame[..LEN_PREFIX].copy_from_slice(&bad_len.to_le_bytes());
            assert_eq!(pid_of(&frame), None, "frame_len {bad_len}");
        }
        assert_eq!(pid_of(&hello(Side::Incumbent, 0)), None);
        // The pid varint starts after the prefix, version, variant and role;
        // a fifth byte of 0x1f carries bits past 32.
        let mut past = hello(Side::Incumbent, u32::MAX);
        let at = LEN_PREFIX + VERSION_FIELD + 2 + 4;
        assert_eq!(past[at], 0x0f);
        past[at] = 0x1f;
        assert_eq!(pid_of(&past), None);
    }

    #[test]
    fn stop_all_escalates_to_sigkill() {
        use std::os::unix::process::ExitStatusExt;
        let mut sleep = Launch::new("/bin/sleep");
        sleep.arg("30");
        let mut children = vec![Proc::child(spawn_cold_vfork(sleep, &[]).unwrap())];
        // Ignores SIGTERM.
        let mut trap = Launch::new("/bin/sh");
        trap.args(["-c", "trap '' TERM; echo; read x"])
            .stdin(ChildStdio::Piped)
            .stdout(ChildStdio::Piped);
        let mut shell = spawn_cold_vfork(trap, &[]).unwrap();
        // Wait until the shell has installed its trap (it printed a line).
        let mut out = shell.stdout.take().unwrap();
        let mut b = [0u8; 1];
        out.read_exact(&mut b).unwrap();
        children.push(Proc::child(shell));
        let statuses = stop_all(&mut children, Duration::from_millis(200));
        let signal = |e: Option<Ended>| match e {
            Some(Ended::Status(s)) => s.signal(),
            other => panic!("{other:?}"),
        };
        assert_eq!(signal(statuses[0]), Some(libc::SIGTERM));
        assert_eq!(signal(statuses[1]), Some(libc::SIGKILL));
    }
}
