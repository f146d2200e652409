//! The trigger socket's client side, and its line protocol.
//!
//! One request line, one reply line, then the connection closes:
//!
//! | request | reply |
//! |---|---|
//! | `handoff` or `handoff BINARY` | `ok: handoff_id=<uuid> committed=<true\|false> rolled_back=<true\|false> phases_ms=<name:float,…\|none> abort_reason=<text\|none> duration_ms=<float>` |
//! | `status` | `ok: incumbent_pid=<pid\|none> handoffs=<n> in_flight=<true\|false> answering=<true\|false\|unknown> probation=<pid\|none>` |
//! | anything refused | `error: <text>` |
//!
//! `abort_reason` is free text and may hold spaces; it is always followed by
//! ` duration_ms=`, the last field, which is how a parser finds its end.
//! Between `committed` and `abort_reason` come `key=value` fields without
//! spaces; a parser skips those it does not know, so fields can be added.
//! `rolled_back` says the new binary served (it sent `Ready`) and was then
//! rolled back; `phases_ms` times each phase the handoff reached, in
//! order, `probation` among them if the new binary served on probation. `probation` in a status names the new
//! binary's pid while a handoff holds it on probation.
//! `answering` says whether the daemon answered its control socket just
//! now (`unknown` while a handoff or a restart runs, or none serves). A
//! request counts only with its newline.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use handoff_std::os::control::send_frame;

use crate::json::{self, Value};
use crate::state::Status;

/// The longest request or reply line, newline excluded.
pub const MAX_LINE: usize = 4096;

/// How long [`trigger`] waits for a handoff's reply: beyond the reference
/// deadline of 60 s, with room for the abort path's kill grace.
pub const DEFAULT_TRIGGER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`status`] waits for its reply.
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no usable reply.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// The trigger socket could not be reached.
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// Sending the request or reading the reply failed.
    Io(io::Error),
    /// No complete reply within the timeout.
    Timeout(Duration),
    /// The supervisor closed the connection without a reply.
    NoReply,
    /// The reply line is longer than [`MAX_LINE`].
    ReplyTooLong,
    /// The request cannot be written as one line.
    BadRequest(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, source } => {
                let s = socket.display();
                match source.kind() {
                    io::ErrorKind::NotFound => write!(
                        f,
                        "no trigger socket at {s}: is `handoff-supervisor run` running with \
                         this configuration?"
                    ),
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "permission denied connecting to the trigger socket {s}: it is \
                         private to the supervisor's user; run this as that user or as root"
                    ),
                    io::ErrorKind::ConnectionRefused => write!(
                        f,
                        "nothing listens on the trigger socket {s} (a file left by a \
                         supervisor that is no longer running)"
                    ),
                    _ => write!(f, "cannot connect to the trigger socket {s}: {source}"),
                }
            }
            ClientError::Io(e) => write!(f, "talking to the supervisor: {e}"),
            ClientError::Timeout(d) => write!(
                f,
                "no reply from the supervisor within {} s",
                d.as_secs_f64()
            ),
            ClientError::NoReply => f.write_str(
                "the supervisor closed the connection without a reply (see its log for why)",
            ),
            ClientError::ReplyTooLong => {
                write!(f, "the supervisor's reply is longer than {MAX_LINE} bytes")
            }
            ClientError::BadRequest(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io(source) => Some(source),
            _ => None,
        }
    }
}

/// Asks for a handoff (to `binary`, or to the configured binary) and returns
/// the reply line, `ok: …` or `error: …`, waiting up to
/// [`DEFAULT_TRIGGER_TIMEOUT`].
pub fn trigger(socket: &Path, binary: Option<&Path>) -> Result<String, ClientError> {
    trigger_with_timeout(socket, binary, DEFAULT_TRIGGER_TIMEOUT)
}

/// [`trigger`] with another timeout.
pub fn trigger_with_timeout(
    socket: &Path,
    binary: Option<&Path>,
    timeout: Duration,
) -> Result<String, ClientError> {
    request(socket, &handoff_request(binary)?, timeout)
}

/// The request line (without its newline) for a handoff.
pub fn handoff_request(binary: Option<&Path>) -> Result<Vec<u8>, ClientError> {
    let mut line = b"handoff".to_vec();
    if let Some(b) = binary {
        let bytes = b.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.contains(&b'\n') || bytes.contains(&b'\r') {
            return Err(ClientError::BadRequest(format!(
                "the binary path {:?} cannot be sent: it is empty or contains a line break",
                b.display()
            )));
        }
        line.push(b' ');
        line.extend_from_slice(bytes);
    }
    if line.len() > MAX_LINE {
        return Err(ClientError::BadRequest(format!(
            "the request would be longer than {MAX_LINE} bytes; use a shorter binary path"
        )));
    }
    Ok(line)
}

/// Asks for the supervisor's status and returns the reply line.
pub fn status(socket: &Path) -> Result<String, ClientError> {
    request(socket, b"status", DEFAULT_STATUS_TIMEOUT)
}

/// Sends one request line (`line`, without its newline) and returns the
/// reply line, without its newline, within `timeout`.
pub fn request(socket: &Path, line: &[u8], timeout: Duration) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    // Bounded too: a supervisor whose accept queue is full (stopped, or
    // flooded) must not hold the client without end.
    let mut stream =
        handoff_std::os::control::connect_within(socket, timeout).map_err(|source| {
            ClientError::Connect {
                socket: socket.to_path_buf(),
                source,
            }
        })?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let mut msg = line.to_vec();
    msg.push(b'\n');
    // MSG_NOSIGNAL: a library call must not kill a program that left
    // SIGPIPE at its default.
    match send_frame(&stream, &msg) {
        Ok(()) => {}
        // A refused client can find the connection closed before its
        // request went out; the line that says why is still there to read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(timeout_or(e, timeout)),
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout(timeout));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(ClientError::Io)?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // A refused peer gets its error line and then a close, which
            // may surface as a reset once the line has been read.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset && !reply.is_empty() => 0,
            Err(e) => return Err(timeout_or(e, timeout)),
        };
        if n == 0 {
            if reply.is_empty() {
                return Err(ClientError::NoReply);
            }
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(end) = reply.iter().position(|&b| b == b'\n') {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_LINE {
            return Err(ClientError::ReplyTooLong);
        }
    }
    if reply.last() == Some(&b'\r') {
        reply.pop();
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn timeout_or(e: io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
        _ => ClientError::Io(e),
    }
}

/// What a handoff reply says.
#[derive(Clone, Debug, PartialEq)]
pub struct HandoffReply {
    /// The handoff's id (a UUID).
    pub handoff_id: String,
    /// Whether the successor took over.
    pub committed: bool,
    /// Why not, if it did not.
    pub abort_reason: Option<String>,
    /// Whether the new binary served and was rolled back.
    pub rolled_back: bool,
    /// Each phase the handoff reached and its time in milliseconds, in
    /// order (`connect`, `incumbent_hello`, `spawn`, `successor_hello`,
    /// `drain`, `seal`, `begin_to_ready`, `probation`, `commit`).
    pub phases_ms: Vec<(String, f64)>,
    /// How many open connections the old binary passed to the new one
    /// (`None`: passing was not set up, because a binary does not offer it
    /// or `pass_connections` is off).
    pub connections_passed: Option<u32>,
    /// How long the handoff took, in milliseconds.
    pub duration_ms: f64,
}

impl HandoffReply {
    /// How long the new binary served on probation, in milliseconds, if it
    /// was put on probation (its phase among `phases_ms`).
    pub fn probation_ms(&self) -> Option<f64> {
        self.phases_ms
            .iter()
            .find_map(|(name, ms)| (name == "probation").then_some(*ms))
    }

    /// The reply line, without its newline.
    pub fn to_line(&self) -> String {
        let reason = match &self.abort_reason {
            Some(r) => crate::text::one_line(r).into_owned(),
            None => "none".to_owned(),
        };
        let phases = if self.phases_ms.is_empty() {
            "none".to_owned()
        } else {
            let parts: Vec<String> = self
                .phases_ms
                .iter()
                .map(|(name, ms)| format!("{name}:{ms:.3}"))
                .collect();
            parts.join(",")
        };
        let passed = self
            .connections_passed
            .map_or_else(|| "none".to_owned(), |n| n.to_string());
        format!(
            "ok: handoff_id={} committed={} rolled_back={} phases_ms={phases} \
             connections_passed={passed} abort_reason={reason} duration_ms={:.3}",
            self.handoff_id, self.committed, self.rolled_back, self.duration_ms
        )
    }

    /// As a JSON object.
    pub fn to_json(&self) -> String {
        let fields: Vec<(&str, Value<'_>)> = self
            .phases_ms
            .iter()
            .map(|(name, ms)| (name.as_str(), Value::Num(*ms)))
            .collect();
        let phases = json::object(&fields);
        json::object(&[
            ("handoff_id", Value::Str(&self.handoff_id)),
            ("committed", Value::Bool(self.committed)),
            ("rolled_back", Value::Bool(self.rolled_back)),
            (
                "abort_reason",
                self.abort_reason.as_deref().map_or(Value::Null, Value::Str),
            ),
            ("phases_ms", Value::Raw(&phases)),
            (
                "connections_passed",
                self.connections_passed
                    .map_or(Value::Null, |n| Value::UInt(u64::from(n))),
            ),
            ("duration_ms", Value::Num(self.duration_ms)),
        ])
    }
}

impl Status {
    /// The reply line, without its newline.
    pub fn to_line(&self) -> String {
        let pid = self
            .incumbent_pid
            .map_or_else(|| "none".to_owned(), |p| p.to_string());
        let answering = match self.answering {
            Some(a) => a.to_string(),
            None => "unknown".to_owned(),
        };
        let probation = self
            .on_probation
            .map_or_else(|| "none".to_owned(), |p| p.to_string());
        format!(
            "ok: incumbent_pid={pid} handoffs={} in_flight={} answering={answering} \
             probation={probation}",
            self.handoffs, self.in_flight
        )
    }

    /// As a JSON object.
    pub fn to_json(&self) -> String {
        json::object(&[
            (
                "incumbent_pid",
                self.incumbent_pid
                    .map_or(Value::Null, |p| Value::UInt(u64::from(p))),
            ),
            ("handoffs", Value::UInt(self.handoffs)),
            ("in_flight", Value::Bool(self.in_flight)),
            ("answering", self.answering.map_or(Value::Null, Value::Bool)),
            (
                "probation",
                self.on_probation
                    .map_or(Value::Null, |p| Value::UInt(u64::from(p))),
            ),
        ])
    }
}

/// A reply line, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `ok: handoff_id=…`
    Handoff(HandoffReply),
    /// `ok: incumbent_pid=…`
    Status(Status),
    /// `error: …`
    Error(String),
}

/// A reply line that does not follow the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The line.
    pub line: String,
    /// What is wrong with it.
    pub problem: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected reply from the supervisor ({}): {:?}",
            self.problem, self.line
        )
    }
}

impl std::error::Error for ParseError {}

impl Reply {
    /// Parses a reply line (with or without its newline).
    pub fn parse(line: &str) -> Result<Reply, ParseError> {
        let line = line.trim_end_matches(['\n', '\r']);
        let fail = |problem| ParseError {
            line: line.to_owned(),
            problem,
        };
        if let Some(text) = line.strip_prefix("error: ") {
            return Ok(Reply::Error(text.to_owned()));
        }
        let Some(body) = line.strip_prefix("ok: ") else {
            return Err(fail("it starts with neither `ok: ` nor `error: `"));
        };
        if body.starts_with("handoff_id=") {
            parse_handoff(body).map(Reply::Handoff).map_err(fail)
        } else if body.starts_with("incumbent_pid=") {
            parse_status(body).map(Reply::Status).map_err(fail)
        } else {
            Err(fail("it is neither a handoff nor a status reply"))
        }
    }

    /// As a JSON object; an error is `{"error":"…"}`.
    pub fn to_json(&self) -> String {
        match self {
            Reply::Handoff(h) => h.to_json(),
            Reply::Status(s) => s.to_json(),
            Reply::Error(e) => json::object(&[("error", Value::Str(e))]),
        }
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn parse_handoff(body: &str) -> Result<HandoffReply, &'static str> {
    let rest = body.strip_prefix("handoff_id=").ok_or("no handoff_id")?;
    let (id, rest) = rest.split_once(' ').ok_or("nothing after handoff_id")?;
    let rest = rest.strip_prefix("committed=").ok_or("no committed")?;
    let (committed, mut rest) = rest.split_once(' ').ok_or("nothing after committed")?;
    let committed = parse_bool(committed).ok_or("committed is neither true nor false")?;
    let (mut rolled_back, mut phases_ms, mut connections_passed) = (false, Vec::new(), None);
    // Fields without spaces up to the free-text reason; unknown ones are a
    // later version's, skipped.
    let rest = loop {
        if let Some(reason) = rest.strip_prefix("abort_reason=") {
            break reason;
        }
        let (field, more) = rest.split_once(' ').ok_or("no abort_reason")?;
        let (key, value) = field.split_once('=').ok_or("a field without `=`")?;
        match key {
            "rolled_back" => {
                rolled_back = parse_bool(value).ok_or("rolled_back is neither true nor false")?
            }
            "connections_passed" if value == "none" => {}
            "connections_passed" => {
                connections_passed = Some(
                    value
                        .parse()
                        .map_err(|_| "connections_passed is not a count")?,
                )
            }
            "phases_ms" if value == "none" => {}
            "phases_ms" => {
                for phase in value.split(',') {
                    let (name, ms) = phase.split_once(':').ok_or("a phase without `:`")?;
                    let ms = ms.parse().map_err(|_| "a phase's time is not a number")?;
                    phases_ms.push((name.to_owned(), ms));
                }
            }
            _ => {}
        }
        rest = more;
    };
    // The reason is free text: the last field marks where it ends.
    let (reason, duration) = rest
        .rsplit_once(" duration_ms=")
        .ok_or("no duration_ms after abort_reason")?;
    let duration_ms: f64 = duration
        .parse()
        .map_err(|_| "duration_ms is not a number")?;
    if id.is_empty() {
        return Err("handoff_id is empty");
    }
    Ok(HandoffReply {
        handoff_id: id.to_owned(),
        committed,
        abort_reason: (reason != "none").then(|| reason.to_owned()),
        rolled_back,
        phases_ms,
        connections_passed,
        duration_ms,
    })
}

fn parse_status(body: &str) -> Result<Status, &'static str> {
    let (mut pid, mut handoffs, mut in_flight, mut answering) = (None, None, None, None);
    let mut on_probation = None;
    for field in body.split(' ') {
        let (key, value) = field.split_once('=').ok_or("a field without `=`")?;
        match key {
            "incumbent_pid" => {
                pid = Some(match value {
                    "none" => None,
                    v => Some(v.parse().map_err(|_| "incumbent_pid is not a pid")?),
                })
            }
            "handoffs" => handoffs = Some(value.parse().map_err(|_| "handoffs is not a count")?),
            "in_flight" => {
                in_flight = Some(parse_bool(value).ok_or("in_flight is neither true nor false")?)
            }
            "answering" => {
                answering = match value {
                    "unknown" => None,
                    v => Some(parse_bool(v).ok_or("answering is not true, false or unknown")?),
                }
            }
            "probation" if value == "none" => {}
            "probation" => {
                on_probation = Some(value.parse().map_err(|_| "probation is not a pid")?)
            }
            // A later version may say more; what we know is still right.
            _ => {}
        }
    }
    Ok(Status {
        incumbent_pid: pid.ok_or("no incumbent_pid")?,
        handoffs: handoffs.ok_or("no handoffs")?,
        in_flight: in_flight.ok_or("no in_flight")?,
        // An older supervisor did not say.
        answering,
        on_probation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_reply_round_trips() {
        for reason in [None, Some("successor exited during probation")] {
            let reply = HandoffReply {
                handoff_id: "67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
                committed: reason.is_none(),
                abort_reason: reason.map(str::to_owned),
                rolled_back: reason.is_some(),
                phases_ms: vec![("connect".into(), 0.125), ("probation".into(), 5000.25)],
                connections_passed: reason.is_none().then_some(10_000),
                duration_ms: 12.5,
            };
            let line = reply.to_line();
            assert_eq!(reply.probation_ms(), Some(5000.25));
            assert_eq!(Reply::parse(&line).unwrap(), Reply::Handoff(reply.clone()));
            assert_eq!(
                Reply::parse(&format!("{line}\n")).unwrap(),
                Reply::Handoff(reply)
            );
        }
        assert_eq!(
            Reply::parse(
                "ok: handoff_id=x committed=false abort_reason=a duration_ms=b duration_ms=1.0"
            )
            .unwrap(),
            Reply::Handoff(HandoffReply {
                handoff_id: "x".into(),
                committed: false,
                abort_reason: Some("a duration_ms=b".into()),
                rolled_back: false,
                phases_ms: Vec::new(),
                connections_passed: None,
                duration_ms: 1.0,
            })
        );
        // Fields a later version adds are skipped.
        let Reply::Handoff(h) = Reply::parse(
            "ok: handoff_id=x committed=true future=1 phases_ms=none abort_reason=none \
             duration_ms=2",
        )
        .unwrap() else {
            panic!("not a handoff reply")
        };
        assert!(h.committed && h.probation_ms().is_none());
    }

    #[test]
    fn a_status_reply_round_trips() {
        for status in [
            Status {
                incumbent_pid: Some(4242),
                handoffs: 3,
                in_flight: false,
                answering: Some(false),
                on_probation: None,
            },
            Status {
                incumbent_pid: Some(4242),
                handoffs: 3,
                in_flight: true,
                answering: None,
                on_probation: Some(4343),
            },
            Status {
                incumbent_pid: None,
                handoffs: 0,
                in_flight: false,
                answering: None,
                on_probation: None,
            },
        ] {
            assert_eq!(
                Reply::parse(&status.to_line()).unwrap(),
                Reply::Status(status)
            );
        }
        assert_eq!(
            Status {
                incumbent_pid: None,
                handoffs: 2,
                in_flight: false,
                answering: None,
                on_probation: None,
            }
            .to_json(),
            r#"{"incumbent_pid":null,"handoffs":2,"in_flight":false,"answering":null,"probation":null}"#
        );
    }

    #[test]
    fn errors_and_garbage() {
        assert_eq!(
            Reply::parse("error: uid 65534 is not allowed").unwrap(),
            Reply::Error("uid 65534 is not allowed".into())
        );
        assert_eq!(
            Reply::Error("a \"quoted\"\nthing".into()).to_json(),
            r#"{"error":"a \"quoted\"\nthing"}"#
        );
        for bad in [
            "",
            "hello",
            "ok: what=1",
            "ok: handoff_id=x committed=maybe abort_reason=none duration_ms=1",
            "ok: handoff_id=x committed=true abort_reason=none",
            "ok: handoff_id=x committed=true abort_reason=none duration_ms=fast",
            "ok: incumbent_pid=1 handoffs=2",
            "ok: incumbent_pid=me handoffs=2 in_flight=false",
        ] {
            assert!(Reply::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn the_json_of_a_handoff() {
        let reply = HandoffReply {
            handoff_id: "id".into(),
            committed: false,
            abort_reason: Some("seal failed: \"disk\" full".into()),
            rolled_back: false,
            phases_ms: vec![("connect".into(), 0.5), ("seal".into(), 1.0)],
            connections_passed: Some(3),
            duration_ms: 3.25,
        };
        assert_eq!(
            reply.to_json(),
            r#"{"handoff_id":"id","committed":false,"rolled_back":false,"abort_reason":"seal failed: \"disk\" full","phases_ms":{"connect":0.5,"seal":1},"connections_passed":3,"duration_ms":3.25}"#
        );
    }

    #[test]
    fn handoff_requests() {
        assert_eq!(handoff_request(None).unwrap(), b"handoff");
        assert_eq!(
            handoff_request(Some(Path::new("/opt/app v2/bin"))).unwrap(),
            b"handoff /opt/app v2/bin"
        );
        assert!(handoff_request(Some(Path::new("/a\nb"))).is_err());
        assert!(handoff_request(Some(Path::new(""))).is_err());
        let long = "/".repeat(MAX_LINE);
        assert!(handoff_request(Some(Path::new(&long))).is_err());
    }
}
