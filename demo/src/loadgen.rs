//! A load generator for [`crate::kvd`]: client threads that mix new and
//! persistent connections, SETs and GETs, retry on `RETRY`, count every
//! request that got no answer and every connection the server closed, and
//! remember every acknowledged write so that [`verify`] can read each one
//! back.
//!
//! Most clients open connections that carry one request, or a few
//! ([`LoadConfig::persistent_fraction`]), and close them themselves. The
//! first [`LoadConfig::long_lived_clients`] clients instead keep one
//! connection for the whole run, so that their connections span every
//! handoff; they open a new one only when the server closed theirs (or a
//! request on it failed).
//!
//! A connection counts as closed by the server
//! ([`LoadReport::connections_closed`]) when the client finds it closed
//! while it had not closed it itself: an EOF, a partial answer or a reset
//! on read, a write that fails (other than by the client's timeout), or a
//! `RETRY` answer (kvd closes a connection after its `RETRY`). The client
//! drops the connection when it finds it closed, so each counts once. A
//! connection the client closes (at the end of its requests, after a
//! timeout, or when the load stops) does not count, nor does a connect that
//! fails (no connection was open).
//!
//! Each SET writes a key never used before (`k<seed>-<client>-<n>`) with a
//! random value, so an acknowledged write has exactly one right answer
//! forever after; each GET reads a key the same client had acknowledged,
//! and any other answer is a lost write.
//!
//! A request's latency runs from its first send to its final answer,
//! retries included.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the load looks.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The daemon.
    pub addr: SocketAddr,
    /// Client threads, each with at most one connection at a time.
    pub clients: usize,
    /// Seeds the random choices and tags the keys, so two runs with
    /// different seeds never write the same key.
    pub seed: u64,
    /// The share of connections that carry several requests (the others
    /// carry one request each).
    pub persistent_fraction: f64,
    /// A persistent connection carries 2 to this many requests.
    pub max_requests_per_connection: u32,
    /// The share of requests that are GETs (of keys the client wrote
    /// before; a client with nothing acknowledged yet writes).
    pub get_fraction: f64,
    /// The longest a request may take, retries included, before it counts
    /// as failed.
    pub request_timeout: Duration,
    /// Values are 1 to this many random letters and digits.
    pub max_value_len: usize,
    /// How many of the clients (the first ones; at most `clients`) keep
    /// one connection for the whole run instead of opening new ones, and
    /// reconnect only after the server closed it or a request on it
    /// failed.
    pub long_lived_clients: usize,
}

impl LoadConfig {
    /// Defaults: 8 clients, 2 of which keep one connection for the whole
    /// run; of the other clients' connections, half persistent (up to 20
    /// requests each); 30 % GETs, 10 s per request, values up to 32 bytes.
    pub fn new(addr: SocketAddr) -> Self {
        LoadConfig {
            addr,
            clients: 8,
            seed: 1,
            persistent_fraction: 0.5,
            max_requests_per_connection: 20,
            get_fraction: 0.3,
            request_timeout: Duration::from_secs(10),
            max_value_len: 32,
            long_lived_clients: 2,
        }
    }
}

/// An acknowledged SET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedWrite {
    /// The value written.
    pub value: String,
    /// The revision the daemon acknowledged it with.
    pub revision: u64,
}

/// Counters while the load runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests answered (after retries, if any).
    pub requests_ok: u64,
    /// Requests that got at least one `RETRY` before their answer (or
    /// their failure).
    pub requests_retried: u64,
    /// Requests with no answer: EOF, reset, timeout, connect error, or an
    /// `ERR`.
    pub requests_failed: u64,
    /// SETs acknowledged.
    pub writes_acked: u64,
    /// Connections the server closed while the client had not closed them
    /// (see [`LoadReport::connections_closed`]).
    pub connections_closed: u64,
}

/// What a run did, once stopped.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// Requests answered (after retries, if any).
    pub requests_ok: u64,
    /// Requests that got at least one `RETRY` and were sent again on a new
    /// connection; they are counted in `requests_ok` (or `requests_failed`)
    /// by their final outcome.
    pub requests_retried: u64,
    /// `RETRY` answers in all (a request may get several).
    pub retries: u64,
    /// Requests with no answer: EOF, reset, timeout, connect error, or an
    /// `ERR` or unexpected answer.
    pub requests_failed: u64,
    /// SETs acknowledged.
    pub writes_acked: u64,
    /// GETs of an acknowledged key that returned another value or `NONE`:
    /// lost writes, seen while the load ran.
    pub get_mismatches: u64,
    /// Connections opened.
    pub connections: u64,
    /// Connections the client found closed by the server while it had not
    /// closed them itself: an EOF, a partial answer or a reset on read, a
    /// failed write (not a timeout), or a `RETRY` answer (kvd closes the
    /// connection after it). Each connection counts once.
    pub connections_closed: u64,
    /// The slowest request, from its first send to its final answer.
    pub max_request_ms: f64,
    /// How long the load ran.
    pub elapsed: Duration,
    /// Every acknowledged SET: key → value and revision.
    pub acked: BTreeMap<String, AckedWrite>,
    /// The first few failures and mismatches, described, for diagnosis.
    pub problems: Vec<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "requests_ok={} requests_retried={} retries={} requests_failed={} writes_acked={} \
             get_mismatches={} connections={} connections_closed={} max_request_ms={:.1} \
             elapsed_s={:.1}",
            self.requests_ok,
            self.requests_retried,
            self.retries,
            self.requests_failed,
            self.writes_acked,
            self.get_mismatches,
            self.connections,
            self.connections_closed,
            self.max_request_ms,
            self.elapsed.as_secs_f64()
        )
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read back.
    pub checked: u64,
    /// Keys whose value is missing or not the acknowledged one.
    pub writes_lost: u64,
    /// Keys whose read got no answer (not counted as lost: unknown).
    pub unanswered: u64,
    /// The first few lost or unanswered keys, for diagnosis.
    pub problems: Vec<String>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checked={} writes_lost={} unanswered={}",
            self.checked, self.writes_lost, self.unanswered
        )
    }
}

/// How many problem descriptions a report keeps.
const MAX_PROBLEMS: usize = 10;

/// SplitMix64: small, fast, and good enough to pick operations and values.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the bias of the modulo is negligible for
    /// the small `n` used here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

struct Shared {
    stop: AtomicBool,
    progress: Mutex<Counters>,
    changed: Condvar,
}

/// What the clients update after each request.
struct Counters {
    totals: Progress,
    /// Requests ended (answered or failed), by client.
    ended: Vec<u64>,
}

/// A running load; [`LoadGen::stop`] ends it and reports.
pub struct LoadGen {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

impl fmt::Debug for LoadGen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadGen")
            .field("clients", &self.threads.len())
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

/// Starts `cfg.clients` client threads; they run until [`LoadGen::stop`].
pub fn start(cfg: LoadConfig) -> LoadGen {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        progress: Mutex::new(Counters {
            totals: Progress::default(),
            ended: vec![0; cfg.clients],
        }),
        changed: Condvar::new(),
    });
    let threads = (0..cfg.clients)
        .map(|id| {
            let mut client = Client {
                id,
                rng: Rng(cfg.seed ^ (id as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93)),
                cfg: cfg.clone(),
                counter: 0,
                keys: Vec::new(),
                report: LoadReport::default(),
                shared: shared.clone(),
            };
            std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || {
                    client.run();
                    client.report
                })
                .expect("spawning a load client thread")
        })
        .collect();
    LoadGen {
        shared,
        threads,
        started: Instant::now(),
    }
}

impl LoadGen {
    /// The counters so far.
    pub fn progress(&self) -> Progress {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .totals
    }

    /// Waits until every client has ended (answered or failed) the request
    /// it was in when called, or one begun since, up to `timeout`; returns
    /// whether they all did. A request in flight now thus counts in
    /// [`LoadGen::progress`] once this returns `true`, even one that only
    /// ends at its own timeout.
    pub fn wait_for_requests_in_flight(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut c = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let start = c.ended.clone();
        while c.ended.iter().zip(&start).any(|(now, then)| now == then) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            c = self
                .shared
                .changed
                .wait_timeout(c, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Waits until at least `writes` SETs are acknowledged in all, up to
    /// `timeout`; returns whether they were.
    pub fn wait_for_acks(&self, writes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while p.totals.writes_acked < writes {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            p = self
                .shared
                .changed
                .wait_timeout(p, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Stops the clients (each finishes the request it is in) and merges
    /// their reports.
    pub fn stop(mut self) -> LoadReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for t in std::mem::take(&mut self.threads) {
            match t.join() {
                Ok(r) => {
                    total.requests_ok += r.requests_ok;
                    total.requests_retried += r.requests_retried;
                    total.retries += r.retries;
                    total.requests_failed += r.requests_failed;
                    total.writes_acked += r.writes_acked;
                    total.get_mismatches += r.get_mismatches;
                    total.connections += r.connections;
                    total.connections_closed += r.connections_closed;
                    total.max_request_ms = total.max_request_ms.max(r.max_request_ms);
                    total.acked.extend(r.acked);
                    for p in r.problems {
                        if total.problems.len() < MAX_PROBLEMS {
                            total.problems.push(p);
                        }
                    }
                }
                Err(_) => {
                    total.requests_failed += 1;
                    total.problems.push("a client thread panicked".into());
                }
            }
        }
        total.elapsed = self.started.elapsed();
        total
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        // Dropped without `stop`: let the threads end by themselves.
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// A connection with its read buffer.
struct Conn {
    reader: BufReader<TcpStream>,
}

/// The end of one request.
enum Outcome {
    /// The final answer (never `RETRY`).
    Answer(String),
    /// No answer; why.
    Failed(String),
}

/// What [`exchange`] did for one request.
struct Exchanged {
    outcome: Outcome,
    /// `RETRY` answers seen.
    retries: u64,
    /// Connections opened.
    opened: u64,
    /// Connections found closed by the server (each then dropped, so each
    /// counts once).
    closed: u64,
}

/// Whether an I/O error is the socket's own timeout (the client gives up)
/// rather than the server closing or resetting the connection.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One request to its final answer: on `RETRY`, the connection is dropped
/// and the request sent again on a new one, until `timeout` runs out. A
/// connection that fails is dropped too (`conn` is `None` after a failure):
/// counted in `closed` when the server closed it, not when the client
/// gives up on it (a timeout).
fn exchange(addr: SocketAddr, conn: &mut Option<Conn>, line: &str, timeout: Duration) -> Exchanged {
    let deadline = Instant::now() + timeout;
    let mut x = Exchanged {
        outcome: Outcome::Failed(String::new()),
        retries: 0,
        opened: 0,
        closed: 0,
    };
    // A failure: the connection is dropped; `by_server` says whether the
    // server had closed it.
    let fail = |conn: &mut Option<Conn>, mut x: Exchanged, why: String, by_server: bool| {
        if by_server && conn.is_some() {
            x.closed += 1;
        }
        *conn = None;
        x.outcome = Outcome::Failed(why);
        x
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = format!(
                "{line:?}: no answer within {timeout:?} ({} RETRY)",
                x.retries
            );
            return fail(conn, x, why, false);
        }
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    x.opened += 1;
                    *conn = Some(Conn {
                        reader: BufReader::new(s),
                    });
                }
                Err(e) => return fail(conn, x, format!("{line:?}: connect: {e}"), false),
            }
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let stream = c.reader.get_mut();
        let timeouts = stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)));
        if let Err(e) = timeouts {
            return fail(conn, x, format!("{line:?}: socket: {e}"), false);
        }
        let mut request = Vec::with_capacity(line.len() + 1);
        request.extend_from_slice(line.as_bytes());
        request.push(b'\n');
        if let Err(e) = stream.write_all(&request) {
            let by_server = !timed_out(&e);
            return fail(conn, x, format!("{line:?}: write: {e}"), by_server);
        }
        let mut answer = String::new();
        match c.reader.read_line(&mut answer) {
            Ok(0) => {
                let why = format!("{line:?}: connection closed without an answer");
                return fail(conn, x, why, true);
            }
            Ok(_) if !answer.ends_with('\n') => {
                return fail(conn, x, format!("{line:?}: a partial answer"), true);
            }
            Ok(_) => {}
            Err(e) => {
                let by_server = !timed_out(&e);
                return fail(conn, x, format!("{line:?}: read: {e}"), by_server);
            }
        }
        let answer = answer.trim_end_matches(['\n', '\r']);
        if answer == "RETRY" {
            // Not executed: send it again, on a new connection (the server
            // closes this one after its RETRY).
            x.retries += 1;
            x.closed += 1;
            *conn = None;
            if x.retries >= 3 {
                // A daemon answering RETRY again and again is not handing
                // off any more; do not hammer it while it sorts itself out.
                let pause = Duration::from_millis(1 << (x.retries - 3).min(6));
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            }
            continue;
        }
        x.outcome = Outcome::Answer(answer.to_owned());
        return x;
    }
}

struct Client {
    id: usize,
    rng: Rng,
    cfg: LoadConfig,
    counter: u64,
    /// Keys acknowledged, to pick GETs from.
    keys: Vec<String>,
    report: LoadReport,
    shared: Arc<Shared>,
}

impl Client {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        if self.id < self.cfg.long_lived_clients {
            // One connection for the whole run: `exchange` replaces it only
            // once the server closed it or a request on it failed.
            let mut conn = None;
            while !self.stopped() {
                self.one_request(&mut conn);
            }
            return;
        }
        while !self.stopped() {
            let requests = if self.rng.chance(self.cfg.persistent_fraction) {
                2 + self
                    .rng
                    .below(u64::from(self.cfg.max_requests_per_connection.max(2) - 1))
            } else {
                1
            };
            let mut conn = None;
            for _ in 0..requests {
                if self.stopped() {
                    break;
                }
                self.one_request(&mut conn);
            }
        }
    }

    fn problem(&mut self, what: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report
                .problems
                .push(format!("client {}: {what}", self.id));
        }
    }

    fn one_request(&mut self, conn: &mut Option<Conn>) {
        let get = !self.keys.is_empty() && self.rng.chance(self.cfg.get_fraction);
        let (line, key, value) = if get {
            let key = self.keys[self.rng.below(self.keys.len() as u64) as usize].clone();
            (format!("GET {key}"), key, None)
        } else {
            // A fresh key even after a failure: a SET without an answer may
            // or may not have been executed, so its key is never reused.
            self.counter += 1;
            let key = format!("k{:x}-{}-{}", self.cfg.seed, self.id, self.counter);
            let len = 1 + self.rng.below(self.cfg.max_value_len.max(1) as u64) as usize;
            const ALPHABET: &[u8] =
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            let value: String = (0..len)
                .map(|_| ALPHABET[self.rng.below(ALPHABET.len() as u64) as usize] as char)
                .collect();
            (format!("SET {key} {value}"), key, Some(value))
        };
        let before = Progress {
            requests_ok: self.report.requests_ok,
            requests_retried: self.report.requests_retried,
            requests_failed: self.report.requests_failed,
            writes_acked: self.report.writes_acked,
            connections_closed: self.report.connections_closed,
        };
        let t0 = Instant::now();
        let Exchanged {
            outcome,
            retries,
            opened,
            closed,
        } = exchange(self.cfg.addr, conn, &line, self.cfg.request_timeout);
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.report.max_request_ms = self.report.max_request_ms.max(ms);
        self.report.retries += retries;
        self.report.connections += opened;
        self.report.connections_closed += closed;
        if retries > 0 {
            self.report.requests_retried += 1;
        }
        match outcome {
            Outcome::Failed(why) => {
                self.report.requests_failed += 1;
                self.problem(why);
            }
            Outcome::Answer(answer) => match value {
                Some(value) => {
                    match answer
                        .strip_prefix("OK ")
                        .and_then(|r| r.parse::<u64>().ok())
                    {
                        Some(revision) => {
                            self.report.requests_ok += 1;
                            self.report.writes_acked += 1;
                            self.keys.push(key.clone());
                            self.report
                                .acked
                                .insert(key, AckedWrite { value, revision });
                        }
                        None => {
                            self.report.requests_failed += 1;
                            self.problem(format!("{line:?}: answered {answer:?}"));
                        }
                    }
                }
                None => {
                    let expected = self.report.acked.get(&key).map(|w| w.value.as_str());
                    if answer == "NONE" || answer.starts_with("VALUE ") {
                        self.report.requests_ok += 1;
                        let got = answer.strip_prefix("VALUE ");
                        if got != expected {
                            self.report.get_mismatches += 1;
                            self.problem(format!(
                                "GET {key}: got {answer:?}, acknowledged {expected:?} (lost)"
                            ));
                        }
                    } else {
                        self.report.requests_failed += 1;
                        self.problem(format!("{line:?}: answered {answer:?}"));
                    }
                }
            },
        }
        let mut c = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.ended[self.id] += 1;
        let p = &mut c.totals;
        p.requests_ok += self.report.requests_ok - before.requests_ok;
        p.requests_retried += self.report.requests_retried - before.requests_retried;
        p.requests_failed += self.report.requests_failed - before.requests_failed;
        p.writes_acked += self.report.writes_acked - before.writes_acked;
        p.connections_closed += self.report.connections_closed - before.connections_closed;
        drop(c);
        self.shared.changed.notify_all();
    }
}

/// Reads every key of `acked` back from `addr` (a few connections in
/// parallel, `RETRY` retried): a key whose value is missing or differs is a
/// lost write.
pub fn verify(addr: SocketAddr, acked: &BTreeMap<String, AckedWrite>) -> VerifyReport {
    const READERS: usize = 4;
    let entries: Vec<(&String, &AckedWrite)> = acked.iter().collect();
    let chunk = entries.len().div_ceil(READERS).max(1);
    let reports: Vec<VerifyReport> = std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut r = VerifyReport::default();
                    let mut conn = None;
                    for (key, write) in part {
                        r.checked += 1;
                        let line = format!("GET {key}");
                        let outcome =
                            exchange(addr, &mut conn, &line, Duration::from_secs(10)).outcome;
                        let problem = match outcome {
                            Outcome::Answer(a)
                                if a.strip_prefix("VALUE ") == Some(&write.value) =>
                            {
                                None
                            }
                            Outcome::Answer(a) if a == "NONE" || a.starts_with("VALUE ") => {
                                r.writes_lost += 1;
                                Some(format!(
                                    "{key}: got {a:?}, acknowledged {:?} at revision {} (lost)",
                                    write.value, write.revision
                                ))
                            }
                            Outcome::Answer(a) => {
                                r.unanswered += 1;
                                Some(format!("{key}: answered {a:?}"))
                            }
                            Outcome::Failed(why) => {
                                r.unanswered += 1;
                                Some(why)
                            }
                        };
                        if let Some(p) = problem
                            && r.problems.len() < MAX_PROBLEMS
                        {
                            r.problems.push(p);
                        }
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| VerifyReport {
                    unanswered: 1,
                    problems: vec!["a verify thread panicked".into()],
                    ..VerifyReport::default()
                })
            })
            .collect()
    });
    let mut total = VerifyReport::default();
    for r in reports {
        total.checked += r.checked;
        total.writes_lost += r.writes_lost;
        total.unanswered += r.unanswered;
        for p in r.problems {
            if total.problems.len() < MAX_PROBLEMS {
                total.problems.push(p);
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// What the test server does on each connection it accepts, by the
    /// connection's index (0 for the first).
    #[derive(Clone, Copy)]
    enum Serve {
        /// Answers every request `OK <n>` until the client closes.
        All,
        /// Answers one request `OK <n>`, then closes.
        OneThenClose,
        /// Answers its first request `RETRY`, then closes (as kvd without
        /// passing does).
        RetryThenClose,
        /// Reads and never answers.
        Silent,
    }

    /// A line server on a kernel-chosen loopback port: connection `i` is
    /// served as `plan(i)`. Its threads end with the test process.
    fn server(plan: fn(usize) -> Serve) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (i, s) in listener.incoming().enumerate() {
                let Ok(s) = s else { return };
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let mut n = 0u64;
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|got| got > 0) {
                        line.clear();
                        n += 1;
                        if matches!(plan(i), Serve::Silent) {
                            continue;
                        }
                        let answer = match plan(i) {
                            Serve::RetryThenClose => "RETRY\n".to_owned(),
                            _ => format!("OK {n}\n"),
                        };
                        if w.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                        if !matches!(plan(i), Serve::All) {
                            // Dropping both halves closes the connection.
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A run of `clients` clients (`long_lived` of them long-lived) until
    /// `acks` writes are acknowledged.
    fn run(addr: SocketAddr, clients: usize, long_lived: usize, acks: u64) -> LoadReport {
        let mut cfg = LoadConfig::new(addr);
        cfg.clients = clients;
        cfg.long_lived_clients = long_lived;
        cfg.get_fraction = 0.0;
        cfg.request_timeout = Duration::from_secs(5);
        let load = start(cfg);
        assert!(
            load.wait_for_acks(acks, Duration::from_secs(20)),
            "{:?}",
            load.progress()
        );
        let progress = load.progress();
        let report = load.stop();
        assert!(report.connections_closed >= progress.connections_closed);
        report
    }

    #[test]
    fn a_server_close_of_a_long_lived_connection_counts_once() {
        // The first connection is answered once and closed by the server;
        // the second is served until the client stops.
        let addr = server(|i| {
            if i == 0 {
                Serve::OneThenClose
            } else {
                Serve::All
            }
        });
        let report = run(addr, 1, 1, 50);
        assert_eq!(report.connections_closed, 1, "{report}");
        // The client reconnected once, and only once: it kept the second
        // connection for the rest of the run.
        assert_eq!(report.connections, 2, "{report}");
        // The request that found the first connection closed got no
        // answer (a reset, or an EOF).
        assert_eq!(report.requests_failed, 1, "{report}: {:?}", report.problems);
        assert_eq!(report.requests_retried, 0, "{report}");
    }

    #[test]
    fn a_retry_answer_counts_as_a_server_close() {
        let addr = server(|i| {
            if i == 0 {
                Serve::RetryThenClose
            } else {
                Serve::All
            }
        });
        let report = run(addr, 1, 1, 50);
        assert_eq!(report.connections_closed, 1, "{report}");
        assert_eq!(report.connections, 2, "{report}");
        assert_eq!(
            (report.requests_retried, report.retries),
            (1, 1),
            "{report}"
        );
        assert_eq!(report.requests_failed, 0, "{report}: {:?}", report.problems);
    }

    #[test]
    fn a_request_in_flight_counts_once_waited_for() {
        // The first connection is never answered: its request fails at the
        // client's timeout, which the client does not count as a close.
        let addr = server(|i| if i == 0 { Serve::Silent } else { Serve::All });
        let mut cfg = LoadConfig::new(addr);
        cfg.clients = 1;
        cfg.long_lived_clients = 1;
        cfg.get_fraction = 0.0;
        cfg.request_timeout = Duration::from_millis(300);
        let load = start(cfg);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(load.progress().requests_failed, 0);
        assert!(load.wait_for_requests_in_flight(Duration::from_secs(5)));
        assert_eq!(load.progress().requests_failed, 1);
        assert!(load.wait_for_acks(20, Duration::from_secs(5)));
        let report = load.stop();
        assert_eq!(report.requests_failed, 1, "{report}");
        assert_eq!(report.connections_closed, 0, "{report}");
        assert_eq!(report.connections, 2, "{report}");
    }

    #[test]
    fn connections_the_clients_close_do_not_count() {
        // Short and persistent connections, each closed by its client; the
        // server never closes one.
        let addr = server(|_| Serve::All);
        let report = run(addr, 3, 0, 200);
        assert!(report.connections > 10, "{report}");
        assert_eq!(report.connections_closed, 0, "{report}");
        assert_eq!(report.requests_failed, 0, "{report}: {:?}", report.problems);
    }

    #[test]
    fn a_short_connection_is_closed_by_its_client_not_counted() {
        // One request per connection: the client closes each after its
        // answer, and the server would have served more.
        let addr = server(|_| Serve::All);
        let mut cfg = LoadConfig::new(addr);
        cfg.clients = 1;
        cfg.long_lived_clients = 0;
        cfg.persistent_fraction = 0.0;
        cfg.get_fraction = 0.0;
        let load = start(cfg);
        assert!(load.wait_for_acks(30, Duration::from_secs(20)));
        let report = load.stop();
        assert_eq!(report.connections, report.requests_ok, "{report}");
        assert_eq!(report.connections_closed, 0, "{report}");
    }
}
