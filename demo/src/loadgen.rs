//! A load generator for [`crate::kvd`]: client threads that mix new and
//! persistent connections, SETs and GETs, retry on `RETRY`, count every
//! request that got no answer, and remember every acknowledged write so
//! that [`verify`] can read each one back.
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
use std::io::{BufRead, BufReader, Write};
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
}

impl LoadConfig {
    /// Defaults: 8 clients, half the connections persistent (up to 20
    /// requests each), 30 % GETs, 10 s per request, values up to 32 bytes.
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
             get_mismatches={} connections={} max_request_ms={:.1} elapsed_s={:.1}",
            self.requests_ok,
            self.requests_retried,
            self.retries,
            self.requests_failed,
            self.writes_acked,
            self.get_mismatches,
            self.connections,
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
    progress: Mutex<Progress>,
    changed: Condvar,
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
        progress: Mutex::new(Progress::default()),
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
        *self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
        while p.writes_acked < writes {
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

/// One request to its final answer: on `RETRY`, the connection is dropped
/// and the request sent again on a new one, until `timeout` runs out.
/// Returns the outcome, the `RETRY`s seen and how many connections were
/// opened.
fn exchange(
    addr: SocketAddr,
    conn: &mut Option<Conn>,
    line: &str,
    timeout: Duration,
) -> (Outcome, u64, u64) {
    let deadline = Instant::now() + timeout;
    let (mut retries, mut opened) = (0, 0);
    let fail = |conn: &mut Option<Conn>, why: String, retries, opened| {
        *conn = None;
        (Outcome::Failed(why), retries, opened)
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let why = format!("{line:?}: no answer within {timeout:?} ({retries} RETRY)");
            return fail(conn, why, retries, opened);
        }
        if conn.is_none() {
            match TcpStream::connect_timeout(&addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    opened += 1;
                    *conn = Some(Conn {
                        reader: BufReader::new(s),
                    });
                }
                Err(e) => return fail(conn, format!("{line:?}: connect: {e}"), retries, opened),
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
            return fail(conn, format!("{line:?}: socket: {e}"), retries, opened);
        }
        let mut request = Vec::with_capacity(line.len() + 1);
        request.extend_from_slice(line.as_bytes());
        request.push(b'\n');
        if let Err(e) = stream.write_all(&request) {
            return fail(conn, format!("{line:?}: write: {e}"), retries, opened);
        }
        let mut answer = String::new();
        match c.reader.read_line(&mut answer) {
            Ok(0) => {
                return fail(
                    conn,
                    format!("{line:?}: connection closed without an answer"),
                    retries,
                    opened,
                );
            }
            Ok(_) if !answer.ends_with('\n') => {
                return fail(conn, format!("{line:?}: a partial answer"), retries, opened);
            }
            Ok(_) => {}
            Err(e) => return fail(conn, format!("{line:?}: read: {e}"), retries, opened),
        }
        let answer = answer.trim_end_matches(['\n', '\r']);
        if answer == "RETRY" {
            // Not executed: send it again, on a new connection (this one
            // is closing).
            retries += 1;
            *conn = None;
            if retries >= 3 {
                // A daemon answering RETRY again and again is not handing
                // off any more; do not hammer it while it sorts itself out.
                let pause = Duration::from_millis(1 << (retries - 3).min(6));
                std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            }
            continue;
        }
        return (Outcome::Answer(answer.to_owned()), retries, opened);
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
        };
        let t0 = Instant::now();
        let (outcome, retries, opened) =
            exchange(self.cfg.addr, conn, &line, self.cfg.request_timeout);
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        self.report.max_request_ms = self.report.max_request_ms.max(ms);
        self.report.retries += retries;
        self.report.connections += opened;
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
        let mut p = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.requests_ok += self.report.requests_ok - before.requests_ok;
        p.requests_retried += self.report.requests_retried - before.requests_retried;
        p.requests_failed += self.report.requests_failed - before.requests_failed;
        p.writes_acked += self.report.writes_acked - before.writes_acked;
        drop(p);
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
                        let (outcome, _, _) =
                            exchange(addr, &mut conn, &line, Duration::from_secs(10));
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
