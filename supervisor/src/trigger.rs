//! The trigger socket's server: one thread accepts, and each connection gets
//! a thread of its own (at most [`MAX_CONNECTIONS`] at once), so a client
//! that connects and says nothing delays nobody else: a `status` is
//! answered while a handoff runs or a silent client waits out its timeout.
//!
//! Who may talk is decided by the peer's credentials as it is accepted,
//! before it takes a slot or a thread: a refused peer is told why and
//! closed at once by the accepting thread. The socket's mode is only the
//! first fence. Of the slots, uids other than root and the supervisor's
//! own share at most [`SHARED_BY_OTHER_UIDS`], each at most
//! [`PER_OTHER_UID`], so no other user, allowed or not, can keep root's
//! `status` or `trigger` out. Refusals are logged once per uid and reason,
//! then counted and summed up every [`REFUSAL_LOG_WINDOW`].

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use handoff_std::os::control::{
    AcceptRetry, PeerCredentials, accept_retry, bind_control_socket, peer_credentials, send_frame,
};
use handoff_std::os::process::poll_readable;

use crate::client::MAX_LINE;
use crate::listeners::{file_identity, remove_if_same};
use crate::state::{Inner, drain_wakes, lock};
use crate::text::one_line;

/// Connections served at once; more are answered with an error and closed.
pub(crate) const MAX_CONNECTIONS: usize = 16;

/// Of [`MAX_CONNECTIONS`], how many uids other than root and the
/// supervisor's own may hold together: the rest is kept for those two.
pub(crate) const SHARED_BY_OTHER_UIDS: usize = 8;

/// How many connections one uid other than root and the supervisor's own
/// may hold at once.
pub(crate) const PER_OTHER_UID: usize = 4;

/// Refusals after the first of each uid and reason are counted, and the
/// count is logged once per this window.
pub(crate) const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Distinct (uid, reason) pairs counted per window; further ones are
/// counted together, so the tally's memory stays bounded.
const REFUSAL_KINDS: usize = 64;

/// How long writing a reply may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound trigger socket, and which file it is (to remove only our own).
pub(crate) struct TriggerSocket {
    listener: UnixListener,
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl TriggerSocket {
    /// Binds `path` privately (mode 0600, swapped into place atomically). With
    /// `allowed_uids`, the mode becomes 0666: those users could never
    /// connect through 0600, and the peer check below the socket still
    /// admits only them, root and our own uid.
    /// Refuses a path that holds anything but a stale socket: a file is
    /// not ours to replace, and a live socket is most likely another
    /// supervisor's trigger socket, whose `trigger`s would then come here.
    pub(crate) fn bind(path: &Path, allowed_uids: &[u32]) -> io::Result<TriggerSocket> {
        crate::listeners::remove_stale_socket(path).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(
                    e.kind(),
                    format!(
                        "a running process (another handoff-supervisor?) listens on {}; \
                         give each service its own `trigger_socket`, or stop that process",
                        path.display()
                    ),
                )
            } else {
                e
            }
        })?;
        let listener = bind_control_socket(path)?;
        if !allowed_uids.is_empty() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
        }
        let identity = file_identity(path);
        Ok(TriggerSocket {
            listener,
            path: path.to_path_buf(),
            identity,
        })
    }

    /// Accepts until `stop` is readable and the service is stopping; the
    /// socket file goes with `self`.
    pub(crate) fn serve(self, inner: &Arc<Inner>, stop: &UnixStream) {
        let conns = Arc::new(Conns::default());
        let mut refusals = Refusals::default();
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "the trigger socket is unusable");
        }
        loop {
            let wake_at = refusals.summary_due();
            let timeout = wake_at.map(|t| t.saturating_duration_since(Instant::now()));
            let polled = poll_readable(&[self.listener.as_fd(), stop.as_fd()], timeout);
            refusals.summarize(Instant::now());
            let ready = match polled {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "waiting on the trigger socket failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if ready[1] {
                drain_wakes(stop);
                if inner.stopping() {
                    break;
                }
            }
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => accept_one(inner, stream, &conns, &mut refusals),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The rule every incumbent follows: a connection gone
                    // before it was taken is skipped; a shortage of
                    // descriptors is waited out, since the listener stays
                    // readable and polling again would spin.
                    Err(e) => match accept_retry(&e) {
                        AcceptRetry::Now => continue,
                        AcceptRetry::After(pause) => {
                            tracing::warn!(error = %e, "accepting a trigger connection failed; pausing");
                            std::thread::sleep(pause);
                            break;
                        }
                        AcceptRetry::Fatal => {
                            tracing::warn!(error = %e, "accepting a trigger connection failed");
                            break;
                        }
                    },
                }
            }
        }
        refusals.summarize(Instant::now() + REFUSAL_LOG_WINDOW);
        // A handoff in flight still owes its client the outcome: the
        // process must not end before that line is written. Clients yet to
        // send their request are let go at once.
        conns.finish(inner.config.deadline() + FINISH_SLACK);
    }
}

/// Beyond the handoff deadline, what a connection may still take to end:
/// the abort path's kill grace, and writing the reply.
const FINISH_SLACK: Duration = Duration::from_secs(30);

impl Drop for TriggerSocket {
    /// Removes the socket file if it is still ours (a newer supervisor may
    /// have bound the path since), whether or not it was ever served.
    fn drop(&mut self) {
        if let Some(id) = self.identity {
            remove_if_same(&self.path, id);
        }
    }
}

/// The connections being served, each with a copy of its socket so that a
/// stopping server can end the reads they wait in.
#[derive(Default)]
struct Conns {
    open: Mutex<Vec<Conn>>,
    ended: Condvar,
    next_id: AtomicU64,
}

struct Conn {
    id: u64,
    uid: u32,
    /// Without a copy the connection is served all the same; only a stop
    /// cannot cut its read short (the request timeout still does).
    stream: Option<UnixStream>,
}

/// Whether `uid` is one of the two the reserved slots are for.
fn privileged(uid: u32) -> bool {
    uid == 0 || uid == own_uid()
}

impl Conns {
    /// Registers a connection of `uid`, unless [`MAX_CONNECTIONS`] are open,
    /// or, for a uid other than root's and ours, its own share or the one
    /// all such uids have together is taken.
    fn register(&self, stream: &UnixStream, uid: u32) -> Option<u64> {
        let mut open = lock(&self.open);
        if open.len() >= MAX_CONNECTIONS {
            return None;
        }
        if !privileged(uid) {
            let others = open.iter().filter(|c| !privileged(c.uid)).count();
            let own = open.iter().filter(|c| c.uid == uid).count();
            if others >= SHARED_BY_OTHER_UIDS || own >= PER_OTHER_UID {
                return None;
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        open.push(Conn {
            id,
            uid,
            stream: stream.try_clone().ok(),
        });
        Some(id)
    }

    fn unregister(&self, id: u64) {
        lock(&self.open).retain(|c| c.id != id);
        self.ended.notify_all();
    }

    /// Ends every read still waiting for a request, then waits, at most
    /// `bound`, for every connection to end.
    fn finish(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut open = lock(&self.open);
        for s in open.iter().filter_map(|c| c.stream.as_ref()) {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
        while !open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    connections = open.len(),
                    "trigger connections still open at shutdown; leaving them"
                );
                return;
            }
            open = self
                .ended
                .wait_timeout(open, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Unregisters a connection when its thread ends, however it ends.
struct Registered {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.unregister(self.id);
    }
}

/// Why a connection was closed as soon as it was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Refused {
    /// Its credentials could not be read.
    NoCredentials,
    /// Its uid may not use the socket.
    NotAllowed,
    /// Its uid, or every uid like it, has all the slots it may have.
    Busy,
}

impl Refused {
    fn why(self) -> &'static str {
        match self {
            Refused::NoCredentials => "its credentials could not be read",
            Refused::NotAllowed => "its uid is not allowed",
            Refused::Busy => "too many connections at once",
        }
    }
}

/// The tally of refused connections: the first of each uid and reason is
/// logged at once, the rest are counted and logged as one line per
/// [`REFUSAL_LOG_WINDOW`], so a client that reconnects without pause
/// cannot fill the log.
#[derive(Default)]
struct Refusals {
    /// Counted since `since`, by uid (`None`: unknown) and reason.
    counts: std::collections::BTreeMap<(Option<u32>, Refused), u64>,
    /// Refusals of kinds beyond [`REFUSAL_KINDS`].
    overflow: u64,
    /// Seen before in this window: logged already.
    seen: std::collections::BTreeSet<(Option<u32>, Refused)>,
    since: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, uid: Option<u32>, pid: Option<u32>, why: Refused) {
        let key = (uid, why);
        self.since.get_or_insert_with(Instant::now);
        if self.seen.len() < REFUSAL_KINDS && self.seen.insert(key) {
            tracing::warn!(
                uid,
                pid,
                reason = why.why(),
                "refused a trigger connection; more like it are counted and logged every {} s",
                REFUSAL_LOG_WINDOW.as_secs()
            );
            return;
        }
        if self.counts.len() < REFUSAL_KINDS || self.counts.contains_key(&key) {
            *self.counts.entry(key).or_default() += 1;
        } else {
            self.overflow += 1;
        }
    }

    /// When the counted refusals are due to be logged.
    fn summary_due(&self) -> Option<Instant> {
        self.since.map(|t| t + REFUSAL_LOG_WINDOW)
    }

    /// Logs what was counted, if the window is over at `now`, and starts a
    /// new one.
    fn summarize(&mut self, now: Instant) {
        let Some(due) = self.summary_due() else {
            return;
        };
        if now < due {
            return;
        }
        for ((uid, why), n) in std::mem::take(&mut self.counts) {
            tracing::warn!(
                uid,
                count = n,
                reason = why.why(),
                "refused more trigger connections in the last {} s",
                REFUSAL_LOG_WINDOW.as_secs()
            );
        }
        if self.overflow > 0 {
            tracing::warn!(
                count = self.overflow,
                "refused more trigger connections of other uids in the last {} s",
                REFUSAL_LOG_WINDOW.as_secs()
            );
        }
        *self = Refusals::default();
    }
}

/// Tells a refused peer why and closes it, without blocking the accepting
/// thread on a peer that does not read.
fn refuse(stream: &UnixStream, line: &str) {
    let _ = stream.set_nonblocking(true);
    let mut msg = one_line(line).into_owned();
    msg.push('\n');
    let _ = send_frame(stream, msg.as_bytes());
}

fn accept_one(inner: &Arc<Inner>, stream: UnixStream, conns: &Arc<Conns>, refusals: &mut Refusals) {
    let peer = match peer_credentials(&stream) {
        Ok(c) => c,
        Err(_) => {
            refusals.note(None, None, Refused::NoCredentials);
            return;
        }
    };
    if !inner.policy.permits(peer.uid) {
        refusals.note(Some(peer.uid), Some(peer.pid), Refused::NotAllowed);
        refuse(
            &stream,
            &format!(
                "error: uid {} is not allowed to use this trigger socket (allowed: the \
                 supervisor's own uid {}, root, and allowed_uids)",
                peer.uid,
                own_uid()
            ),
        );
        return;
    }
    let Some(id) = conns.register(&stream, peer.uid) else {
        refusals.note(Some(peer.uid), Some(peer.pid), Refused::Busy);
        refuse(
            &stream,
            &format!(
                "error: too many trigger connections at once from uid {}; try again",
                peer.uid
            ),
        );
        return;
    };
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux;
    // this is for the other systems that do.
    let _ = stream.set_nonblocking(false);
    let registered = Registered {
        conns: conns.clone(),
        id,
    };
    let inner = inner.clone();
    let spawned = std::thread::Builder::new()
        .name("trigger-conn".into())
        .spawn(move || {
            let _registered = registered;
            handle(&inner, &stream, peer);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread for a trigger connection");
    }
}

/// A request line, understood.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Status,
    Handoff(Option<PathBuf>),
    Unknown(String),
}

pub(crate) fn parse_request(line: &[u8]) -> Request {
    let trimmed = line.trim_ascii();
    if trimmed == b"status" {
        return Request::Status;
    }
    if trimmed == b"handoff" {
        return Request::Handoff(None);
    }
    if let Some(rest) = trimmed.strip_prefix(b"handoff ") {
        let path = rest.trim_ascii();
        return Request::Handoff(
            (!path.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(path))),
        );
    }
    Request::Unknown(String::from_utf8_lossy(trimmed).into_owned())
}

/// Why no request line was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Nothing complete arrived within the timeout.
    Timeout,
    /// The line is longer than [`MAX_LINE`].
    TooLong,
    /// The client closed without sending anything.
    Closed,
    /// The client closed before the line's newline: the request may be cut
    /// short (a path missing its end), so it is not run.
    CutOff,
    Io(io::Error),
}

/// Reads one request line within `timeout` (a deadline for the whole line,
/// not per read, so a client trickling bytes is dropped just the same). A
/// request counts only with its newline: input that ends without one may
/// be a request cut short (`handoff /opt/kvd` of `/opt/kvd-next`), and
/// running it could hand off to another binary.
pub(crate) fn read_request(stream: &UnixStream, timeout: Duration) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(ReadError::Io)?;
        match (&*stream).read(&mut chunk) {
            Ok(0) if line.is_empty() => return Err(ReadError::Closed),
            Ok(0) => return Err(ReadError::CutOff),
            Ok(n) => {
                line.extend_from_slice(&chunk[..n]);
                if let Some(end) = line.iter().position(|&b| b == b'\n') {
                    line.truncate(end);
                    break;
                }
                if line.len() > MAX_LINE {
                    return Err(ReadError::TooLong);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::Timeout);
            }
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if line.len() > MAX_LINE {
        return Err(ReadError::TooLong);
    }
    Ok(line)
}

/// Writes one reply line; a client that went away is not an error worth
/// more than a debug line.
fn reply(stream: &UnixStream, line: &str) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut msg = one_line(line).into_owned();
    msg.push('\n');
    // MSG_NOSIGNAL: a client that hung up must not kill an embedding
    // program that left SIGPIPE at its default.
    if let Err(e) = send_frame(stream, msg.as_bytes()) {
        tracing::debug!(error = %e, "the trigger client left before its reply");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn handle(inner: &Inner, stream: &UnixStream, peer: PeerCredentials) {
    let line = match read_request(stream, inner.request_timeout) {
        Ok(line) => line,
        Err(ReadError::Timeout) => {
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                timeout_ms = inner.request_timeout.as_millis() as u64,
                "dropped a trigger client that sent no request in time"
            );
            reply(
                stream,
                &format!(
                    "error: no request within {} ms; closing",
                    inner.request_timeout.as_millis()
                ),
            );
            return;
        }
        Err(ReadError::TooLong) => {
            reply(
                stream,
                &format!("error: the request line is longer than {MAX_LINE} bytes"),
            );
            return;
        }
        Err(ReadError::Closed) => return,
        Err(ReadError::CutOff) => {
            tracing::info!(
                uid = peer.uid,
                pid = peer.pid,
                "ignored a trigger request that ended without a newline"
            );
            reply(
                stream,
                "error: the request ended without a newline, so it may be cut short; nothing \
                 was done (send the whole line, ending in \\n)",
            );
            return;
        }
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "reading a trigger request failed");
            return;
        }
    };
    let request = parse_request(&line);
    tracing::info!(uid = peer.uid, pid = peer.pid, ?request, "trigger request");
    let answer = match request {
        Request::Status => inner.status().to_line(),
        Request::Handoff(binary) => match inner.handoff(binary.as_deref()) {
            Ok(report) => report.reply_line(),
            Err(e) => format!("error: {e}"),
        },
        Request::Unknown(text) => {
            format!("error: unknown request {text:?}; send `handoff`, `handoff BINARY` or `status`")
        }
    };
    reply(stream, &answer);
}

fn own_uid() -> u32 {
    handoff_std::os::process::effective_uid()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn requests_are_parsed() {
        assert_eq!(parse_request(b"status"), Request::Status);
        assert_eq!(parse_request(b" status \r"), Request::Status);
        assert_eq!(parse_request(b"handoff"), Request::Handoff(None));
        assert_eq!(parse_request(b"handoff   "), Request::Handoff(None));
        assert_eq!(
            parse_request(b"handoff /opt/app v2/bin"),
            Request::Handoff(Some(PathBuf::from("/opt/app v2/bin")))
        );
        assert_eq!(parse_request(b"reboot"), Request::Unknown("reboot".into()));
        assert_eq!(
            parse_request(b"handoffx"),
            Request::Unknown("handoffx".into())
        );
    }

    #[test]
    fn a_line_counts_only_with_its_newline() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"status\r\nextra").unwrap();
        assert_eq!(read_request(&b, Duration::from_secs(5)).unwrap(), b"status");
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"handoff /opt/kvd").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(
            read_request(&b, Duration::from_secs(5)),
            Err(ReadError::CutOff)
        ));
        let (a, b) = UnixStream::pair().unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(matches!(
            read_request(&b, Duration::from_secs(5)),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn a_long_or_slow_line_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let long = vec![b'x'; MAX_LINE + 1];
        let writer = std::thread::spawn(move || {
            let _ = (&a).write_all(&long);
            a
        });
        assert!(matches!(
            read_request(&b, Duration::from_secs(5)),
            Err(ReadError::TooLong)
        ));
        drop(writer.join().unwrap());

        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"sta").unwrap();
        let start = Instant::now();
        assert!(matches!(
            read_request(&b, Duration::from_millis(100)),
            Err(ReadError::Timeout)
        ));
        assert!(start.elapsed() >= Duration::from_millis(100));
        drop(a);
    }
}
