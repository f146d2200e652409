//! Health probes the supervisor runs against a successor on probation
//! (docs/PROTOCOL.md section 10), in the spirit of Kubernetes' probes: a
//! check, how often it runs, how long one attempt may take, and how many
//! failures in a row roll the successor back.
//!
//! The probe runs on a thread of its own, started when the machine puts the
//! successor on probation and stopped when the handoff finishes, so a slow
//! check never holds up the protocol; the [`crate::SupervisorDriver`] reads
//! its verdict on every wake-up and tells the machine
//! (`handle_probe_failed`) once the threshold is reached.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use handoff_os::process::{kill_and_reap, poll_readable, wait_exit};

/// What one probe attempt checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeCheck {
    /// Runs `argv[0]` with the rest as arguments, standard input from
    /// `/dev/null`, and `HANDOFF_SUCCESSOR_PID` set to the successor's pid;
    /// exit status 0 is healthy. A command still running at the timeout is
    /// killed and counts as a failure.
    Exec {
        /// The command and its arguments.
        argv: Vec<OsString>,
    },
    /// Connects to `address`; with `send`, writes it, and with `expect`,
    /// reads until those bytes have arrived. Healthy if all of that happens
    /// within the timeout.
    Tcp {
        /// Where to connect.
        address: SocketAddr,
        /// Bytes to write once connected (may be empty).
        send: Vec<u8>,
        /// Bytes the answer must contain (empty: the connect is enough).
        expect: Vec<u8>,
    },
    /// `GET path` over HTTP/1.1 to `address`; a 2xx or 3xx status is
    /// healthy.
    Http {
        /// Where to connect.
        address: SocketAddr,
        /// The request's path, `/healthz` for instance.
        path: String,
    },
}

impl fmt::Display for ProbeCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeCheck::Exec { argv } => {
                let words: Vec<String> = argv
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                write!(f, "exec `{}`", words.join(" "))
            }
            ProbeCheck::Tcp { address, .. } => write!(f, "tcp {address}"),
            ProbeCheck::Http { address, path } => write!(f, "http://{address}{path}"),
        }
    }
}

/// A health probe: its check and its schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthProbe {
    /// What is checked.
    pub check: ProbeCheck,
    /// From the start of one attempt to the start of the next; the first
    /// runs as soon as the successor is on probation.
    pub interval: Duration,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// Failures in a row that roll the successor back (at least 1).
    pub failure_threshold: u32,
}

/// The most bytes of a probe's answer or output kept for the failure's
/// description.
const KEPT: usize = 512;

impl HealthProbe {
    /// The default interval: an attempt a second.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// The default time one attempt may take.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
    /// The default number of failures in a row that fail the probe.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

    /// A probe with Kubernetes-like defaults: every second, one second per
    /// attempt, three failures in a row.
    pub fn new(check: ProbeCheck) -> HealthProbe {
        HealthProbe {
            check,
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
            failure_threshold: Self::DEFAULT_FAILURE_THRESHOLD,
        }
    }

    /// The longest a failing successor takes to be rolled back by this
    /// probe: the window must be longer for the probe to matter.
    pub fn time_to_fail(&self) -> Duration {
        self.interval * self.failure_threshold.saturating_sub(1) + self.timeout
    }

    /// Runs one attempt against the successor `pid`; `Err` says what
    /// failed, in words for the operator (text from the successor is not
    /// escaped here: the caller escapes before logging).
    pub fn run_once(&self, pid: u32) -> Result<(), String> {
        match &self.check {
            ProbeCheck::Exec { argv } => self.exec(argv, pid),
            ProbeCheck::Tcp {
                address,
                send,
                expect,
            } => self.tcp(*address, send, expect),
            ProbeCheck::Http { address, path } => self.http(*address, path),
        }
    }

    fn exec(&self, argv: &[OsString], pid: u32) -> Result<(), String> {
        let Some((program, args)) = argv.split_first() else {
            return Err("the exec probe has no command".into());
        };
        let mut child = Command::new(program)
            .args(args)
            .env("HANDOFF_SUCCESSOR_PID", pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?;
        let Some(status) = wait_exit(&mut child, self.timeout) else {
            kill_and_reap(child);
            return Err(format!("no exit within {:?}; killed", self.timeout));
        };
        if status.success() {
            return Ok(());
        }
        let mut said = String::new();
        if let Some(mut err) = child.stderr.take() {
            let mut buf = vec![0; KEPT];
            // The command has exited, so what it wrote is in the pipe; it
            // is read only if there is something (or EOF), so a grandchild
            // holding the pipe open cannot stall the probe.
            let ready = poll_readable(&[err.as_fd()], Some(Duration::ZERO));
            if ready.is_ok_and(|r| r[0])
                && let Ok(n) = err.read(&mut buf)
            {
                said = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
            }
        }
        if said.is_empty() {
            Err(status.to_string())
        } else {
            Err(format!("{status}: {said}"))
        }
    }

    fn connect(&self, address: SocketAddr, deadline: Instant) -> Result<TcpStream, String> {
        let stream = TcpStream::connect_timeout(&address, self.timeout)
            .map_err(|e| format!("connect to {address}: {e}"))?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|e| format!("{address}: {e}"))?;
        Ok(stream)
    }

    fn tcp(&self, address: SocketAddr, send: &[u8], expect: &[u8]) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(address, deadline)?;
        if !send.is_empty() {
            stream
                .write_all(send)
                .map_err(|e| format!("write to {address}: {e}"))?;
        }
        if expect.is_empty() {
            return Ok(());
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !contains(&got, expect) {
            if got.len() > 64 * 1024 {
                return Err(format!(
                    "{address} answered 64 KiB without the expected bytes"
                ));
            }
            match stream.read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "{address} closed before answering as expected; it sent {:?}",
                        String::from_utf8_lossy(&got[..got.len().min(KEPT)])
                    ));
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read from {address}: {e}")),
            }
        }
        Ok(())
    }

    fn http(&self, address: SocketAddr, path: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(address, deadline)?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("write to {address}: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&got) {
                Ok(httparse::Status::Complete(_)) => {
                    let code = response.code.unwrap_or(0);
                    return if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!(
                            "http://{address}{path} answered {code} {}",
                            response.reason.unwrap_or("")
                        ))
                    };
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => return Err(format!("http://{address}{path}: bad response: {e}")),
            }
            if got.len() > 64 * 1024 {
                return Err(format!("http://{address}{path}: headers over 64 KiB"));
            }
            match stream.read(&mut buf) {
                Ok(0) => {
                    return Err(format!(
                        "http://{address}{path}: closed before a status line"
                    ));
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("read from {address}: {e}")),
            }
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the probe thread tells the driver.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// One attempt passed.
    Passed,
    /// The threshold was reached; the thread has stopped.
    Failed(String),
}

/// A probe running on its thread against one successor; stopped when
/// dropped.
pub(crate) struct ProbeRunner {
    verdicts: mpsc::Receiver<Verdict>,
    /// Dropped to stop the thread at once, even mid-interval.
    _stop: mpsc::Sender<()>,
}

impl ProbeRunner {
    /// Starts `probe` against `pid`.
    pub(crate) fn start(probe: HealthProbe, pid: u32) -> io::Result<ProbeRunner> {
        let (tell, verdicts) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("handoff-probe".into())
            .spawn(move || {
                let threshold = probe.failure_threshold.max(1);
                let mut failures = 0;
                loop {
                    let started = Instant::now();
                    match probe.run_once(pid) {
                        Ok(()) => {
                            failures = 0;
                            if tell.send(Verdict::Passed).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            failures += 1;
                            if failures >= threshold {
                                let _ = tell.send(Verdict::Failed(format!(
                                    "{}: {e} ({failures} in a row)",
                                    probe.check
                                )));
                                return;
                            }
                        }
                    }
                    let next = started + probe.interval;
                    let wait = next.saturating_duration_since(Instant::now());
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })?;
        Ok(ProbeRunner {
            verdicts,
            _stop: stop,
        })
    }

    /// The next verdict, if one came.
    pub(crate) fn poll(&self) -> Option<Verdict> {
        self.verdicts.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn exec(script: &str) -> HealthProbe {
        HealthProbe {
            timeout: Duration::from_secs(5),
            ..HealthProbe::new(ProbeCheck::Exec {
                argv: vec!["sh".into(), "-c".into(), script.into()],
            })
        }
    }

    #[test]
    fn an_exec_probe_passes_on_status_zero_and_sees_the_successor_pid() {
        assert_eq!(
            exec(r#"test "$HANDOFF_SUCCESSOR_PID" = 4242"#).run_once(4242),
            Ok(())
        );
        let e = exec("echo 'not ready' >&2; exit 3")
            .run_once(1)
            .unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("not ready"),
            "{e}"
        );
    }

    #[test]
    fn an_exec_probe_past_its_timeout_is_killed_and_fails() {
        let mut p = exec("exec sleep 30");
        p.timeout = Duration::from_millis(100);
        let t = Instant::now();
        let e = p.run_once(1).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_tcp_probe_checks_the_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [&b"+PONG\r\n"[..], b"-ERR\r\n"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer).unwrap();
            }
        });
        let p = HealthProbe::new(ProbeCheck::Tcp {
            address,
            send: b"PING\r\n".to_vec(),
            expect: b"PONG".to_vec(),
        });
        assert_eq!(p.run_once(1), Ok(()));
        let e = p.run_once(1).unwrap_err();
        assert!(
            e.contains("closed before answering") && e.contains("ERR"),
            "{e}"
        );
        server.join().unwrap();
    }

    #[test]
    fn an_http_probe_wants_a_2xx_or_3xx_status() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for status in ["204 No Content", "503 Service Unavailable"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"GET /healthz HTTP/1.1\r\n"));
                write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").unwrap();
            }
        });
        let p = HealthProbe::new(ProbeCheck::Http {
            address,
            path: "/healthz".into(),
        });
        assert_eq!(p.run_once(1), Ok(()));
        let e = p.run_once(1).unwrap_err();
        assert!(e.contains("503 Service Unavailable"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn the_runner_reports_failure_only_after_the_threshold() {
        let mut p = exec("exit 1");
        p.interval = Duration::from_millis(10);
        p.failure_threshold = 3;
        let runner = ProbeRunner::start(p, 1).unwrap();
        let verdict = runner
            .verdicts
            .recv_timeout(Duration::from_secs(10))
            .unwrap();
        match verdict {
            Verdict::Failed(e) => assert!(e.contains("3 in a row"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
