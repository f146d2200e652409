//! The trigger socket's server: one thread accepts, and each connection gets
//! a thread of its own (at most [`MAX_CONNECTIONS`] at once), so a client
//! that connects and says nothing delays nobody else: a `status` is
//! answered while a handoff runs or a silent client waits out its timeout.
//!
//! Who may talk is decided by the peer's credentials before a byte is
//! read; the socket's mode is only the first fence.

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

use handoff_std::os::control::{bind_control_socket, peer_credentials, send_frame};
use handoff_std::os::process::poll_readable;

use crate::client::{MAX_LINE, one_line};
use crate::listeners::{file_identity, remove_if_same};
use crate::service::{Inner, drain_wakes, lock};

/// Connections served at once; more are answered with an error and closed.
pub(crate) const MAX_CONNECTIONS: usize = 16;

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
        if let Err(e) = self.listener.set_nonblocking(true) {
            tracing::error!(error = %e, "the trigger socket is unusable");
        }
        loop {
            let ready = match poll_readable(&[self.listener.as_fd(), stop.as_fd()], None) {
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
                    Ok((stream, _)) => accept_one(inner, stream, &conns),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // ECONNABORTED, EMFILE and friends pass; the next
                        // readiness tries again.
                        tracing::warn!(error = %e, "accepting a trigger connection failed");
                        break;
                    }
                }
            }
        }
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
    open: Mutex<Vec<(u64, Option<UnixStream>)>>,
    ended: Condvar,
    next_id: AtomicU64,
}

impl Conns {
    /// Registers a connection, unless [`MAX_CONNECTIONS`] are open.
    fn register(&self, stream: &UnixStream) -> Option<u64> {
        let mut open = lock(&self.open);
        if open.len() >= MAX_CONNECTIONS {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Without a copy the connection is served all the same; only a stop
        // cannot cut its read short (the request timeout still does).
        open.push((id, stream.try_clone().ok()));
        Some(id)
    }

    fn unregister(&self, id: u64) {
        lock(&self.open).retain(|(i, _)| *i != id);
        self.ended.notify_all();
    }

    /// Ends every read still waiting for a request, then waits, at most
    /// `bound`, for every connection to end.
    fn finish(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        let mut open = lock(&self.open);
        for s in open.iter().filter_map(|(_, s)| s.as_ref()) {
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

fn accept_one(inner: &Arc<Inner>, stream: UnixStream, conns: &Arc<Conns>) {
    // Accepted sockets do not inherit the listener's O_NONBLOCK on Linux;
    // this is for the other systems that do.
    let _ = stream.set_nonblocking(false);
    let Some(id) = conns.register(&stream) else {
        reply(
            &stream,
            "error: too many trigger connections at once; try again",
        );
        return;
    };
    let registered = Registered {
        conns: conns.clone(),
        id,
    };
    let inner = inner.clone();
    let spawned = std::thread::Builder::new()
        .name("trigger-conn".into())
        .spawn(move || {
            let _registered = registered;
            handle(&inner, &stream);
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
    Io(io::Error),
}

/// Reads one request line within `timeout` (a deadline for the whole line,
/// not per read, so a client trickling bytes is dropped just the same). End
/// of input also ends the line, for clients that send no newline.
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
            Ok(0) => break,
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
    let mut msg = one_line(line);
    msg.push('\n');
    // MSG_NOSIGNAL: a client that hung up must not kill an embedding
    // program that left SIGPIPE at its default.
    if let Err(e) = send_frame(stream, msg.as_bytes()) {
        tracing::debug!(error = %e, "the trigger client left before its reply");
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn handle(inner: &Inner, stream: &UnixStream) {
    let peer = match peer_credentials(stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a trigger client's credentials; closing");
            return;
        }
    };
    if !inner.policy.permits(peer.uid) {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            "refused a trigger connection from a uid that is not allowed"
        );
        reply(
            stream,
            &format!(
                "error: uid {} is not allowed to use this trigger socket (allowed: the \
                 supervisor's own uid {}, root, and allowed_uids)",
                peer.uid,
                own_uid()
            ),
        );
        return;
    }
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
    #[allow(unsafe_code)]
    // SAFETY: geteuid takes nothing, touches no memory and cannot fail.
    unsafe {
        libc::geteuid()
    }
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
    fn a_line_ends_at_newline_or_end_of_input() {
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"status\r\nextra").unwrap();
        assert_eq!(read_request(&b, Duration::from_secs(5)).unwrap(), b"status");
        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(b"status").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_request(&b, Duration::from_secs(5)).unwrap(), b"status");
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
