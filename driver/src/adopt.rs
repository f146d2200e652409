//! The supervisor's side of listener reclaim (docs/PROTOCOL.md section 9):
//! a supervisor that starts and finds a daemon already answering its
//! control socket (its predecessor crashed) asks that daemon for the
//! listening sockets instead of binding them again, and from then on
//! watches and hands it off as if it had started it.
//!
//! One short session, blocking and bounded:
//!
//! 1. connect to the control socket and read the listener's pid
//!    (`SO_PEERCRED`);
//! 2. read the incumbent's `Hello`: it must come from that pid, as an
//!    incumbent, and offer [`Capabilities::RECLAIM_LISTENERS`] (a reference
//!    daemon offers nothing, and is never sent anything it would not know);
//! 3. watch the pid's exit (a pidfd: the daemon is not our child);
//! 4. send `HelloAck` and `ListenersRequest`; read `Listeners`, whose
//!    descriptors come with its first byte (`SCM_RIGHTS`, received
//!    close-on-exec), one per name;
//! 5. hang up: the daemon's session ends `Serving` and it serves on.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use handoff_core::{
    Capabilities, FrameDecoder, HandoffId, Message, MessageKind, PROTO_MAX, PROTO_MIN, Side,
    encode_frame, negotiate_version,
};
use handoff_os::control::{connect_within, is_not_listening, peer_credentials};
use handoff_os::fdpass::{MAX_FDS, recv_with_fds};
use handoff_os::process::ExitWatch;

/// A daemon found serving, with its listeners: watched, not ours to reap.
#[derive(Debug)]
pub struct Adopted {
    /// Its pid, as the kernel and its `Hello` both say.
    pub pid: u32,
    /// The build id its `Hello` announced (untrusted text: escape it before
    /// logging).
    pub build_id: Vec<u8>,
    /// Its listening sockets, by name, in the order it sent them. Each is a
    /// new descriptor of this process, close-on-exec, for the same socket
    /// the daemon listens on.
    pub listeners: Vec<(String, OwnedFd)>,
    /// Its exit, watched through a pidfd opened before the listeners were
    /// asked for (so while it was answering): it names that process and no
    /// later one with the same pid.
    pub exit: ExitWatch,
}

/// Why no daemon was adopted.
#[derive(Debug)]
#[non_exhaustive]
pub enum AdoptError {
    /// Nothing listens on the control socket (no file, a stale one, or a
    /// refused connection): there is no daemon to adopt; start one.
    NoDaemon(io::Error),
    /// The control socket could not be reached for another reason (no
    /// permission, not a socket).
    Unreachable(io::Error),
    /// A process answers but did not send an incumbent's `Hello` in time.
    NoHello {
        /// The listener's pid, if the kernel said.
        pid: Option<u32>,
        /// What happened instead.
        detail: String,
    },
    /// The daemon does not offer listener reclaim (a reference peer, or a
    /// build older than the capability).
    NotOffered {
        /// Its pid.
        pid: u32,
    },
    /// The daemon broke the exchange (a wrong message, id, or a names and
    /// descriptors count that differ), or closed before its answer.
    Protocol {
        /// Its pid.
        pid: u32,
        /// What went wrong.
        detail: String,
    },
    /// The daemon exited during the exchange.
    Exited {
        /// Its pid.
        pid: u32,
    },
    /// Reading or writing the connection failed.
    Io {
        /// The daemon's pid, if known.
        pid: Option<u32>,
        /// The failure.
        error: io::Error,
    },
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdoptError::NoDaemon(e) => write!(f, "no daemon answers the control socket ({e})"),
            AdoptError::Unreachable(e) => write!(f, "cannot reach the control socket: {e}"),
            AdoptError::NoHello { pid, detail } => {
                match pid {
                    Some(p) => write!(f, "pid {p} holds the control socket but ")?,
                    None => f.write_str("a process holds the control socket but ")?,
                }
                write!(f, "sent no incumbent Hello ({detail})")
            }
            AdoptError::NotOffered { pid } => write!(
                f,
                "pid {pid} answers the control socket but does not offer its listeners \
                 (a daemon built on another handoff implementation, or an older build)"
            ),
            AdoptError::Protocol { pid, detail } => {
                write!(f, "pid {pid} broke the listener exchange: {detail}")
            }
            AdoptError::Exited { pid } => write!(f, "pid {pid} exited while it was adopted"),
            AdoptError::Io { pid, error } => match pid {
                Some(p) => write!(f, "talking to pid {p}: {error}"),
                None => write!(f, "talking to the control socket: {error}"),
            },
        }
    }
}

impl std::error::Error for AdoptError {}

impl AdoptError {
    /// The pid of the daemon that answered, if one did.
    pub fn pid(&self) -> Option<u32> {
        match self {
            AdoptError::NoDaemon(_) | AdoptError::Unreachable(_) => None,
            AdoptError::NoHello { pid, .. } | AdoptError::Io { pid, .. } => *pid,
            AdoptError::NotOffered { pid }
            | AdoptError::Protocol { pid, .. }
            | AdoptError::Exited { pid } => Some(*pid),
        }
    }
}

/// Between two looks at a control socket in transition, unless the exit of
/// a process being waited for comes first: a process there is finishing
/// its session with the dead supervisor (connections wait in its backlog
/// meanwhile), or has just exited and its successor is about to rename its
/// own socket over the path (section 6.3).
const SETTLE_RETRY: Duration = Duration::from_millis(20);

/// [`adopt`], after a crash in the middle of a handoff: while one of
/// `settling` (the processes the journal names) still runs, a control
/// socket nobody answers is taken for the moment in which the path changes
/// hands, and is looked at again; so is an answer that is not yet a
/// `Hello` from a live incumbent. `Ok(None)` when nothing answers and none
/// of `settling` runs (start a daemon); an error for a daemon that cannot
/// be adopted (it does not offer its listeners, breaks the exchange, or
/// the socket cannot be reached), at once, or for the last transitional
/// answer once `bound` is over.
pub fn adopt_settled(
    path: &Path,
    settling: &[u32],
    bound: Duration,
) -> Result<Option<Adopted>, AdoptError> {
    let deadline = Instant::now() + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = match adopt(path, left.max(Duration::from_millis(1))) {
            Ok(a) => return Ok(Some(a)),
            Err(e) => e,
        };
        // A zombie is no process to wait for: its pidfd is readable at once.
        let live: Vec<ExitWatch> = settling
            .iter()
            .filter(|&&p| handoff_os::process::pid_alive(p))
            .filter_map(|&p| ExitWatch::new(p).ok())
            .filter(|w| !w.has_exited())
            .collect();
        match e {
            AdoptError::NoDaemon(_) if live.is_empty() => return Ok(None),
            AdoptError::NotOffered { .. }
            | AdoptError::Protocol { .. }
            | AdoptError::Unreachable(_) => {
                return Err(e);
            }
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(e);
        }
        // Woken early by an exit among `settling`: the path may have just
        // changed hands, or nobody is left to take it.
        let fds: Vec<_> = live.iter().map(|w| w.as_fd()).collect();
        let _ = handoff_os::process::poll_readable(&fds, Some(SETTLE_RETRY.min(left)));
    }
}

/// The largest `Listeners` frame read: the names of [`MAX_FDS`] listeners
/// fit many times over, and a hostile length prefix costs no more.
const MAX_ANSWER: usize = 64 * 1024;

/// Adopts the daemon answering the control socket at `path`, within
/// `timeout` for the whole exchange. See the module docs.
pub fn adopt(path: &Path, timeout: Duration) -> Result<Adopted, AdoptError> {
    let deadline = Instant::now() + timeout;
    let stream = connect_within(path, timeout).map_err(|e| {
        if is_not_listening(&e) {
            AdoptError::NoDaemon(e)
        } else {
            AdoptError::Unreachable(e)
        }
    })?;
    let listener_pid = peer_credentials(&stream).ok().map(|c| c.pid);
    let mut conn = Conn {
        stream,
        decoder: FrameDecoder::new(),
        deadline,
        pending: Vec::new(),
        fds: Vec::new(),
    };
    let no_hello = |detail: String| AdoptError::NoHello {
        pid: listener_pid,
        detail,
    };
    let (pid, build_id, caps, their) = match conn
        .next(false)
        .map_err(|e| no_hello(e.to_string()))?
    {
        Got::Hello {
            role: Side::Incumbent,
            pid,
            build_id,
            range,
            capabilities,
        } => (pid, build_id, capabilities, range),
        Got::Hello { role, .. } => return Err(no_hello(format!("its Hello says it is a {role}"))),
        other => return Err(no_hello(format!("its first message was {other}"))),
    };
    if listener_pid.is_some_and(|l| l != pid) {
        return Err(no_hello(format!("its Hello names pid {pid}")));
    }
    if !caps.contains(Capabilities::RECLAIM_LISTENERS) {
        return Err(AdoptError::NotOffered { pid });
    }
    let version = negotiate_version(PROTO_MIN, PROTO_MAX, their.0, their.1).map_err(|e| {
        AdoptError::Protocol {
            pid,
            detail: e.to_string(),
        }
    })?;
    let exit = ExitWatch::new(pid).map_err(|error| AdoptError::Io {
        pid: Some(pid),
        error,
    })?;
    let id = HandoffId::from_random_bytes(crate::supervisor::random_bytes());
    let io_err = |error| AdoptError::Io {
        pid: Some(pid),
        error,
    };
    conn.send(
        version,
        &Message::HelloAck {
            proto_version_chosen: version,
            handoff_id: id,
        },
    )
    .map_err(io_err)?;
    conn.send(version, &Message::ListenersRequest { handoff_id: id })
        .map_err(io_err)?;
    let protocol = |detail: String| AdoptError::Protocol { pid, detail };
    let names = loop {
        let got = conn.next(true).map_err(|e| {
            if exit.has_exited() {
                AdoptError::Exited { pid }
            } else {
                protocol(format!("no answer to ListenersRequest: {e}"))
            }
        })?;
        match got {
            // It may heartbeat meanwhile.
            Got::Other(MessageKind::Heartbeat) => continue,
            Got::Listeners { handoff_id, names } if handoff_id == id => break names,
            Got::Listeners { handoff_id, .. } => {
                return Err(protocol(format!(
                    "its answer carries handoff id {handoff_id}, not {id}"
                )));
            }
            other => {
                return Err(protocol(format!(
                    "it answered ListenersRequest with {other}"
                )));
            }
        }
    };
    if names.len() != conn.fds.len() {
        return Err(protocol(format!(
            "it named {} listeners and passed {} descriptors",
            names.len(),
            conn.fds.len()
        )));
    }
    // Hung up here: its session ends `Serving`, and it serves on.
    drop(conn.stream);
    if exit.has_exited() {
        return Err(AdoptError::Exited { pid });
    }
    Ok(Adopted {
        pid,
        build_id,
        listeners: names.into_iter().zip(conn.fds).collect(),
        exit,
    })
}

/// What one frame of the daemon's said, owned.
enum Got {
    Hello {
        role: Side,
        pid: u32,
        build_id: Vec<u8>,
        range: (u16, u16),
        capabilities: Capabilities,
    },
    Listeners {
        handoff_id: HandoffId,
        names: Vec<String>,
    },
    Other(MessageKind),
    /// A frame whose payload does not decode.
    Bad(String),
}

impl fmt::Display for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Hello { .. } => f.write_str("Hello"),
            Got::Listeners { .. } => f.write_str("Listeners"),
            Got::Other(k) => write!(f, "{k}"),
            Got::Bad(e) => write!(f, "a frame that does not decode ({e})"),
        }
    }
}

impl Got {
    fn of(message: &Message<'_>) -> Got {
        match *message {
            Message::Hello {
                role,
                pid,
                build_id,
                proto_min,
                proto_max,
                capabilities,
            } => Got::Hello {
                role,
                pid,
                build_id: build_id.to_vec(),
                range: (proto_min, proto_max),
                capabilities,
            },
            Message::Listeners { handoff_id, names } => Got::Listeners {
                handoff_id,
                names: names.iter().map(str::to_owned).collect(),
            },
            ref other => Got::Other(other.kind()),
        }
    }
}

/// The connection of one adoption, with what arrived on it.
struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder<Vec<u8>>,
    deadline: Instant,
    /// Bytes read and not yet given to the decoder.
    pending: Vec<u8>,
    /// Every descriptor received so far, in order.
    fds: Vec<OwnedFd>,
}

impl Conn {
    fn send(&mut self, version: u16, msg: &Message<'_>) -> io::Result<()> {
        let mut buf = [0u8; 64];
        let n = encode_frame(version, msg, &mut buf)
            .map_err(|e| io::Error::other(format!("encoding {}: {e:?}", msg.kind())))?;
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write_all(&buf[..n])
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }

    /// The next frame's message. With `take_fds`, descriptors that come
    /// with the bytes are kept (in `fds`); without, bytes that bring any
    /// are refused, and the descriptors closed.
    fn next(&mut self, take_fds: bool) -> io::Result<Got> {
        let mut buf = vec![0u8; 4096];
        let mut read = 0usize;
        loop {
            while !self.pending.is_empty() {
                let (used, frame) = self.decoder.decode(&self.pending);
                let got = match frame {
                    Ok(Some(f)) => Some(Got::of(&f.message)),
                    Ok(None) => None,
                    Err(handoff_core::FrameError::Malformed(e)) => Some(Got::Bad(e.to_string())),
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("a bad frame: {e}"),
                        ));
                    }
                };
                self.pending.drain(..used);
                if let Some(got) = got {
                    return Ok(got);
                }
            }
            self.stream.set_read_timeout(Some(self.left()?))?;
            let room = if take_fds {
                MAX_FDS - self.fds.len()
            } else {
                0
            };
            let got = recv_with_fds(self.stream.as_fd(), &mut buf, room)?;
            if got.truncated || (!take_fds && !got.fds.is_empty()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "descriptors came where none belong, or more than one message carries",
                ));
            }
            if got.len == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.fds.extend(got.fds);
            read += got.len;
            if read > MAX_ANSWER {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "more bytes than any listener list takes",
                ));
            }
            self.pending.extend_from_slice(&buf[..got.len]);
        }
    }
}
