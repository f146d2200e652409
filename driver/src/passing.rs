//! Open client connections passed from the incumbent to the successor
//! during the drain (docs/PROTOCOL.md section 11), for every adapter.
//!
//! The supervisor gives each process one end of a socketpair
//! (`PassChannel`). On its end the incumbent writes one `PassedConnection`
//! frame per connection, the connection's descriptor passed beside it and
//! up to [`MAX_FDS`] descriptors per message, then `PassDone` with the
//! count; all of it is written before `Drained`. The successor reads the
//! channel on a thread of its own from the moment it has it, so a pass of
//! any size never waits on a full socket buffer, and hands the daemon the
//! connections after `Begin`, once every one has arrived. Just before its
//! `Ready` it writes `ConnectionsTaken` back: an incumbent rolled back
//! after that serves the connections again without the state it passed,
//! which the successor has consumed.
//!
//! Neither side ever shuts a passed connection down: each closes only its
//! own descriptor, so the client sees nothing while the other process
//! still holds one.

use std::fmt;
use std::io::{self, Read as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::Duration;

use handoff_core::{
    FrameDecoder, HandoffId, LEN_PREFIX, MAX_CONNECTION_STATE, Message, ProtoVersion,
    VERSION_FIELD, encode_frame,
};
use handoff_os::control::send_some;
use handoff_os::fdpass::{MAX_FDS, recv_with_fds, send_with_fds};
use handoff_os::process::poll_ready;

/// How long the incumbent waits for room on the pass channel, for each
/// write. The successor reads the channel on a thread that does nothing
/// else, so only a successor that stopped (frozen, or not reading at all)
/// makes a write wait this long; the pass then fails, and the drain with
/// it, so the handoff is undone with every connection still the
/// incumbent's.
pub const PASS_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the successor waits, after `Begin`, for the rest of the
/// connections. The incumbent wrote all of them before `Drained`, so they
/// are in the socket by then; only a broken pass waits this long.
pub const PASS_ARRIVAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of `PassedConnection` frames sent in one message: enough
/// for a full batch of [`MAX_FDS`] small states, and a bound on what a
/// batch holds in memory.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Why a connection could not be passed. After any error but
/// [`PassError::NotNegotiated`] and [`PassError::StateTooLarge`], the pass
/// is broken: the drain fails, the handoff is undone, and every connection
/// passed so far is the incumbent's to serve again when it resumes.
#[derive(Debug)]
#[non_exhaustive]
pub enum PassError {
    /// This handoff passes no connections: the supervisor or the successor
    /// did not offer it (a reference peer, or `pass_connections = false`).
    /// Serve the connection as before a handoff without passing (close it
    /// at the drain, or tell the client to reconnect).
    NotNegotiated,
    /// The state is over [`MAX_CONNECTION_STATE`] bytes. Nothing was sent;
    /// serve this connection as without passing.
    StateTooLarge {
        /// Its length.
        len: usize,
    },
    /// The drain is over: connections are passed only while it runs.
    Closed,
    /// The channel failed (the successor stopped reading or exited), or
    /// the descriptor could not be duplicated.
    Io(String),
}

impl fmt::Display for PassError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassError::NotNegotiated => f.write_str(
                "this handoff passes no connections (a peer did not offer PASS_CONNECTIONS)",
            ),
            PassError::StateTooLarge { len } => write!(
                f,
                "a connection's state is {len} bytes; at most {MAX_CONNECTION_STATE} are passed"
            ),
            PassError::Closed => f.write_str("the drain is over; nothing more is passed"),
            PassError::Io(e) => write!(f, "the pass channel failed: {e}"),
        }
    }
}

impl std::error::Error for PassError {}

/// The incumbent's way to hand connections to the successor during one
/// handoff's drain, given to the drain hook of every adapter. Cheap to
/// clone and shared between threads: each connection's own thread or task
/// may pass it.
///
/// After [`Handover::pass`] returned `Ok`, stop reading and writing that
/// connection but keep its descriptor open: when the session ends
/// `Committed`, close it (never `shutdown`: the successor serves the same
/// socket); after any other end the resume hook runs, and the daemon serves
/// it again, with the state it passed unless
/// [`Handover::taken_by_successor`] says the successor served it meanwhile.
#[derive(Clone, Default)]
pub struct Handover {
    channel: Option<Arc<Sender>>,
}

impl fmt::Debug for Handover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handover")
            .field("available", &self.is_available())
            .field("passed", &self.passed())
            .finish()
    }
}

struct Sender {
    id: HandoffId,
    version: ProtoVersion,
    stream: UnixStream,
    state: Mutex<Sending>,
}

#[derive(Default)]
struct Sending {
    /// Duplicates of the batch's connections, in frame order.
    fds: Vec<OwnedFd>,
    /// The batch's `PassedConnection` frames.
    frames: Vec<u8>,
    passed: u32,
    failed: Option<String>,
    done: bool,
    taken: bool,
}

/// The same handover (one handoff's channel), not equal contents.
impl PartialEq for Handover {
    fn eq(&self, other: &Self) -> bool {
        match (&self.channel, &other.channel) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

impl Eq for Handover {}

impl Handover {
    /// A handover for a handoff without passing: [`Handover::pass`] says
    /// [`PassError::NotNegotiated`].
    pub fn unavailable() -> Handover {
        Handover::default()
    }

    /// A handover on the incumbent's end of the pass channel.
    pub(crate) fn open(
        stream: UnixStream,
        id: HandoffId,
        version: ProtoVersion,
    ) -> io::Result<Handover> {
        stream.set_nonblocking(true)?;
        Ok(Handover {
            channel: Some(Arc::new(Sender {
                id,
                version,
                stream,
                state: Mutex::new(Sending::default()),
            })),
        })
    }

    /// Whether connections can be passed in this handoff.
    pub fn is_available(&self) -> bool {
        self.channel
            .as_ref()
            .is_some_and(|c| lock(&c.state).failed.is_none())
    }

    /// Passes `conn` with `state` (at most [`MAX_CONNECTION_STATE`] bytes:
    /// at least the bytes read from it and not yet answered). The daemon
    /// keeps its own descriptor. May wait, up to [`PASS_WRITE_TIMEOUT`],
    /// for the successor to read earlier ones.
    pub fn pass(&self, conn: BorrowedFd<'_>, state: &[u8]) -> Result<(), PassError> {
        let Some(c) = &self.channel else {
            return Err(PassError::NotNegotiated);
        };
        if state.len() > MAX_CONNECTION_STATE {
            return Err(PassError::StateTooLarge { len: state.len() });
        }
        let mut st = lock(&c.state);
        if let Some(e) = &st.failed {
            return Err(PassError::Io(e.clone()));
        }
        if st.done {
            return Err(PassError::Closed);
        }
        let msg = Message::PassedConnection {
            handoff_id: c.id,
            state,
        };
        let len = LEN_PREFIX + VERSION_FIELD + msg.encoded_len();
        if st.fds.len() == MAX_FDS || st.frames.len() + len > MAX_BATCH_BYTES {
            c.flush(&mut st).map_err(PassError::Io)?;
        }
        // A duplicate, so the batch can wait for its message whatever the
        // daemon does with its own descriptor meanwhile; at most one
        // batch's worth exists at a time.
        let fd = match conn.try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                // Out of descriptors, most likely: the successor would miss
                // this one, so the pass is broken like any other failure.
                let e = format!("duplicating the connection: {e}");
                st.failed = Some(e.clone());
                return Err(PassError::Io(e));
            }
        };
        // Encoded in place at the batch's end: one buffer for the whole
        // batch, not one per connection.
        let at = st.frames.len();
        st.frames.resize(at + len, 0);
        match encode_frame(c.version, &msg, &mut st.frames[at..]) {
            Ok(n) => st.frames.truncate(at + n),
            Err(e) => {
                // A state within the bound always fits a frame; a failure
                // here would be a bug, and the pass cannot go on.
                st.frames.truncate(at);
                let e = format!("encoding a passed connection: {e:?}");
                st.failed = Some(e.clone());
                return Err(PassError::Io(e));
            }
        }
        st.fds.push(fd);
        st.passed += 1;
        if st.fds.len() == MAX_FDS {
            c.flush(&mut st).map_err(PassError::Io)?;
        }
        Ok(())
    }

    /// How many connections were passed so far.
    pub fn passed(&self) -> u32 {
        self.channel.as_ref().map_or(0, |c| lock(&c.state).passed)
    }

    /// After a rollback, in the resume hook: whether the successor took
    /// the passed connections (it sent `ConnectionsTaken` before its
    /// `Ready`) and so may have read from them. If it did, the state that
    /// was passed is stale: go on from what the socket delivers next. If
    /// not, nothing was read since the pass: go on from the state.
    pub fn taken_by_successor(&self) -> bool {
        self.channel.as_ref().is_some_and(|c| lock(&c.state).taken)
    }

    /// The drain hook returned: sends the last batch and `PassDone`.
    /// Returns the count, or why the pass broke.
    pub(crate) fn finish(&self) -> Result<u32, String> {
        let Some(c) = &self.channel else {
            return Ok(0);
        };
        let mut st = lock(&c.state);
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        if st.done {
            return Ok(st.passed);
        }
        let done = c.frame(&Message::PassDone {
            handoff_id: c.id,
            count: st.passed,
        });
        st.frames.extend_from_slice(&done);
        c.flush(&mut st)?;
        st.done = true;
        Ok(st.passed)
    }

    /// Before the resume hook: reads what the successor wrote back, if
    /// anything. The successor has exited by then (the supervisor tells a
    /// sealed incumbent to resume only after that), so whatever it wrote
    /// is in the socket.
    pub(crate) fn look_for_taken(&self) {
        let Some(c) = &self.channel else { return };
        let mut st = lock(&c.state);
        st.done = true;
        let mut buf = [0u8; 256];
        let mut rx: FrameDecoder = FrameDecoder::with_limit(64);
        // A few frames at most; what is not a ConnectionsTaken for this
        // handoff is ignored.
        for _ in 0..16 {
            let n = match (&c.stream).read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => return,
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                let (used, frame) = rx.decode(input);
                input = &input[used..];
                match frame {
                    Ok(Some(f)) => {
                        if let Message::ConnectionsTaken { handoff_id } = f.message
                            && handoff_id == c.id
                        {
                            st.taken = true;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
                if used == 0 {
                    break;
                }
            }
        }
    }
}

impl Sender {
    fn frame(&self, msg: &Message<'_>) -> Vec<u8> {
        channel_frame(self.version, msg)
    }

    /// Writes the batch: its descriptors beside the first byte, waiting for
    /// room up to [`PASS_WRITE_TIMEOUT`] each time. A failure breaks the
    /// pass for good.
    fn flush(&self, st: &mut Sending) -> Result<(), String> {
        let result = self.write_batch(st);
        st.fds.clear();
        st.frames.clear();
        if let Err(e) = &result {
            st.failed = Some(e.clone());
        }
        result
    }

    fn write_batch(&self, st: &Sending) -> Result<(), String> {
        let fd = self.stream.as_fd();
        let mut sent = 0;
        while sent < st.frames.len() {
            let rest = &st.frames[sent..];
            let wrote = if sent == 0 && !st.fds.is_empty() {
                let fds: Vec<BorrowedFd<'_>> = st.fds.iter().map(AsFd::as_fd).collect();
                send_with_fds(fd, rest, &fds)
            } else {
                send_some(fd, rest)
            };
            match wrote {
                Ok(0) => return Err("the successor's end of the pass channel is closed".into()),
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable(fd)?,
                Err(e) => return Err(format!("writing to the successor: {e}")),
            }
        }
        Ok(())
    }
}

fn wait_writable(fd: BorrowedFd<'_>) -> Result<(), String> {
    let ready = poll_ready(&[(fd.as_raw_fd(), true)], Some(PASS_WRITE_TIMEOUT))
        .map_err(|e| format!("waiting to write to the successor: {e}"))?;
    if ready.first().is_some_and(|r| r.writable) {
        Ok(())
    } else {
        Err(format!(
            "the successor read nothing from the pass channel for {} s",
            PASS_WRITE_TIMEOUT.as_secs()
        ))
    }
}

/// `msg` as one whole frame of `version`, in a buffer of its exact size.
pub(crate) fn frame_of(
    version: ProtoVersion,
    msg: &Message<'_>,
) -> Result<Vec<u8>, handoff_core::EncodeError> {
    let mut frame = vec![0u8; LEN_PREFIX + VERSION_FIELD + msg.encoded_len()];
    let n = encode_frame(version, msg, &mut frame)?;
    frame.truncate(n);
    Ok(frame)
}

/// A frame of the pass channel: its messages are small (a state is bounded
/// far below the frame limit), so encoding them cannot fail.
fn channel_frame(version: ProtoVersion, msg: &Message<'_>) -> Vec<u8> {
    frame_of(version, msg).unwrap_or_default()
}

fn lock(m: &Mutex<Sending>) -> MutexGuard<'_, Sending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection the incumbent passed, as the successor receives it: its
/// descriptor (close-on-exec, and already this process's) and the state
/// the incumbent sent with it.
pub struct PassedConnection {
    fd: OwnedFd,
    state: Vec<u8>,
}

impl fmt::Debug for PassedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassedConnection")
            .field("fd", &self.fd.as_raw_fd())
            .field("state_len", &self.state.len())
            .finish()
    }
}

impl PassedConnection {
    /// What the incumbent passed with it (the bytes it had read and not
    /// answered come first in kvd's; the format is the daemon's own).
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// The descriptor and the state.
    pub fn into_parts(self) -> (OwnedFd, Vec<u8>) {
        (self.fd, self.state)
    }

    /// The connection as a blocking std `TcpStream`, and its state; an
    /// error (nothing is closed but this descriptor) if it is not a
    /// connected TCP socket.
    pub fn into_tcp(self) -> io::Result<(std::net::TcpStream, Vec<u8>)> {
        if !handoff_os::fdpass::is_tcp_stream(self.fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a passed connection is not a TCP stream socket",
            ));
        }
        let stream = std::net::TcpStream::from(self.fd);
        stream.set_nonblocking(false)?;
        Ok((stream, self.state))
    }
}

/// The successor's side of the pass channel: a thread that reads it from
/// `PassChannel` until `PassDone`, and the way to write `ConnectionsTaken`
/// back.
pub(crate) struct Receiver {
    result: mpsc::Receiver<Result<Vec<PassedConnection>, String>>,
    back: UnixStream,
    id: HandoffId,
    version: ProtoVersion,
}

impl Receiver {
    /// Starts reading `stream`, this handoff's channel.
    pub(crate) fn start(
        stream: UnixStream,
        id: HandoffId,
        version: ProtoVersion,
    ) -> io::Result<Receiver> {
        stream.set_nonblocking(false)?;
        let back = stream.try_clone()?;
        let (tx, result) = mpsc::channel();
        std::thread::Builder::new()
            .name("handoff-pass".into())
            .spawn(move || {
                let _ = tx.send(receive(&stream, id, version));
            })?;
        Ok(Receiver {
            result,
            back,
            id,
            version,
        })
    }

    /// Every connection passed, once `PassDone` came (waiting up to
    /// [`PASS_ARRIVAL_TIMEOUT`]), or why the pass is broken.
    pub(crate) fn wait(&self) -> Result<Vec<PassedConnection>, String> {
        match self.result.recv_timeout(PASS_ARRIVAL_TIMEOUT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(format!(
                "the incumbent's connections had not all arrived {} s after Begin",
                PASS_ARRIVAL_TIMEOUT.as_secs()
            )),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err("the thread reading the pass channel stopped".into())
            }
        }
    }

    /// Tells the incumbent this process serves the connections from now
    /// on. A failed write means the incumbent is gone, and nobody else
    /// could serve them.
    pub(crate) fn taken(&self) {
        let frame = channel_frame(
            self.version,
            &Message::ConnectionsTaken {
                handoff_id: self.id,
            },
        );
        let _ = self.back.set_write_timeout(Some(PASS_WRITE_TIMEOUT));
        let _ = std::io::Write::write_all(&mut (&self.back), &frame);
    }
}

/// Reads the channel until `PassDone`: each `PassedConnection` takes the
/// oldest descriptor not yet claimed (descriptors arrive with the first
/// byte of their batch, so never after their frame). Anything out of order,
/// a lost descriptor (`MSG_CTRUNC`), a wrong id or count, or the channel's
/// end before `PassDone` is an error; what arrived is then closed, which
/// the client does not see (the incumbent still holds each connection).
fn receive(
    stream: &UnixStream,
    id: HandoffId,
    version: ProtoVersion,
) -> Result<Vec<PassedConnection>, String> {
    let mut rx: FrameDecoder<Vec<u8>> = FrameDecoder::new();
    let mut fds = std::collections::VecDeque::new();
    let mut conns = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = match recv_with_fds(stream.as_fd(), &mut buf, MAX_FDS) {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the pass channel: {e}")),
        };
        if got.truncated {
            return Err(
                "descriptors passed with the connections were lost (MSG_CTRUNC): is this \
                 process's descriptor limit (RLIMIT_NOFILE) too low for them?"
                    .into(),
            );
        }
        if got.len == 0 {
            return Err("the incumbent closed the pass channel before PassDone".into());
        }
        let batch = !got.fds.is_empty();
        fds.extend(got.fds);
        let mut input = &buf[..got.len];
        while !input.is_empty() {
            let (used, frame) = rx.decode(input);
            input = &input[used..];
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => continue,
                Err(e) => return Err(format!("a malformed frame on the pass channel: {e}")),
            };
            if frame.version != version {
                return Err(format!(
                    "a frame of version {} on a pass channel of version {version}",
                    frame.version
                ));
            }
            match frame.message {
                Message::PassedConnection { handoff_id, state } if handoff_id == id => {
                    if state.len() > MAX_CONNECTION_STATE {
                        return Err(format!(
                            "a passed connection's state is {} bytes, over the {MAX_CONNECTION_STATE} allowed",
                            state.len()
                        ));
                    }
                    let Some(fd) = fds.pop_front() else {
                        return Err("a passed connection came without its descriptor".into());
                    };
                    conns.push(PassedConnection {
                        fd,
                        state: state.to_vec(),
                    });
                    if batch && fds.is_empty() {
                        // A test's successor dies (or stops) here, some of
                        // the connections received and the rest not.
                        handoff_os::crash::at("successor-after-passed-batch-received");
                    }
                }
                Message::PassDone { handoff_id, count } if handoff_id == id => {
                    if count as usize != conns.len() || !fds.is_empty() || !input.is_empty() {
                        return Err(format!(
                            "PassDone counts {count} connections; {} came, with {} descriptors left over",
                            conns.len(),
                            fds.len()
                        ));
                    }
                    return Ok(conns);
                }
                other => {
                    return Err(format!(
                        "{} on the pass channel, for handoff {:?}, where a connection of \
                         handoff {id} was expected",
                        other.kind(),
                        other.handoff_id()
                    ));
                }
            }
        }
    }
}
