//! The store on its own, then kvd as real processes: a supervisor in this
//! process holding the listener `kv`, kvd cold-started on it, handoffs
//! (committed, aborted, and with the supervisor killed mid-way) under load
//! from the loadgen library, and every acknowledged write read back. The
//! full-disk tests mount a small tmpfs as the data dir (they need root, and
//! say so and pass when they cannot mount) and fill it.
//!
//! Every wait is on an event with a bound (a line on a pipe, a pidfd, a
//! condition variable in the load generator); no test sleeps to let time
//! pass. Process tests run one at a time: they measure latencies, and the
//! killed-supervisor test makes this process a subreaper.

mod common;

use common::{
    BOUND, TempDir, become_subreaper, kill_daemons_of, processes_with, read_line_bounded, reap,
    serial,
};
use handoff_std::PerformHandoff;
use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handoff_demo::loadgen::{self, LoadConfig, LoadGen, LoadReport, VerifyReport};
use handoff_demo::store::{
    FROZEN_WAL_FILE, SEALED_FILE, SNAPSHOT_FILE, Store, StoreError, WAL_FILE,
};
use handoff_demo::wal;
use handoff_std::os::process::{ChildProcess, wait_exit, wait_gone};
use handoff_std::os::spawn::{ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_std::{DataDirLock, HandoffOutcome, SpawnSpec, Supervisor};

fn kvd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvd")
}

// ---------------------------------------------------------------- store --

fn map(pairs: &[(&str, &str)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn store_round_trip() {
    let dir = TempDir::new("st-rt");
    let fingerprint;
    {
        let s = Store::open(&dir.0).unwrap();
        assert_eq!(s.revision(), 0);
        assert_eq!(s.set(b"a", b"1").unwrap(), 1);
        assert_eq!(s.set(b"b", b"two words").unwrap(), 2);
        assert_eq!(s.set(b"a", b"3").unwrap(), 3);
        assert_eq!(s.get(b"a").as_deref(), Some(&b"3"[..]));
        assert_eq!(s.get(b"nope"), None);
        assert!(matches!(
            s.set(b"bad key", b"x"),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(s.set(b"k", b"a\nb"), Err(StoreError::Invalid(_))));
        assert_eq!(s.revision(), 3, "refused writes take no revision");
        fingerprint = s.fingerprint();
    }
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.revision(), 3);
    assert_eq!(s.open_report().replayed, 3);
    assert_eq!(s.to_map(), map(&[("a", "3"), ("b", "two words")]));
    assert_eq!(
        s.fingerprint(),
        fingerprint,
        "replay rebuilds the fingerprint"
    );
}

#[test]
fn store_torn_tail_is_truncated_and_damage_in_the_middle_is_an_error() {
    let dir = TempDir::new("st-torn");
    let wal_path = dir.0.join(WAL_FILE);
    let expected = {
        let s = Store::open(&dir.0).unwrap();
        for i in 1..=10 {
            s.set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes())
                .unwrap();
        }
        s.to_map()
    };
    let good_len = std::fs::metadata(&wal_path).unwrap().len();

    // A crash in the middle of the next record's write: half of it landed.
    let mut record = Vec::new();
    wal::encode(11, b"k11", b"never acknowledged", &mut record);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&wal_path)
        .unwrap();
    f.write_all(&record[..record.len() / 2]).unwrap();
    drop(f);
    {
        let s = Store::open(&dir.0).unwrap();
        assert_eq!(s.to_map(), expected);
        assert_eq!(s.revision(), 10);
        assert_eq!(
            s.open_report().torn_bytes_dropped,
            (record.len() / 2) as u64
        );
        assert_eq!(std::fs::metadata(&wal_path).unwrap().len(), good_len);
        // The log goes on from the cut.
        assert_eq!(s.set(b"k11", b"after").unwrap(), 11);
    }
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.revision(), 11);
    assert_eq!(s.open_report().torn_bytes_dropped, 0);
    drop(s);

    // The file grew but its blocks were never written: zeros are torn too.
    let len_before_zeros = std::fs::metadata(&wal_path).unwrap().len();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&wal_path)
        .unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.revision(), 11);
    assert_eq!(s.open_report().torn_bytes_dropped, 4096);
    drop(s);
    assert_eq!(
        std::fs::metadata(&wal_path).unwrap().len(),
        len_before_zeros
    );

    // A flipped byte in the third record, with good records after it, is
    // not a crash: opening refuses rather than serve a guess.
    let mut bytes = std::fs::read(&wal_path).unwrap();
    let mut offset = wal::MAGIC.len();
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += wal::HEADER_LEN + len;
    }
    bytes[offset + wal::HEADER_LEN + 3] ^= 0x20;
    std::fs::write(&wal_path, &bytes).unwrap();
    match Store::open(&dir.0) {
        Err(StoreError::Corrupt { detail, .. }) => {
            assert!(detail.contains(&format!("byte {offset}")), "{detail}");
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[test]
fn store_group_commit_acks_each_writer_its_own_revision() {
    let dir = TempDir::new("st-group");
    let s = Store::open(&dir.0).unwrap();
    // Many writes queued at once: they must share fsyncs.
    let pending: Vec<_> = (0..300)
        .map(|i| {
            let key = format!("q{i}");
            (key.clone(), s.submit(key.as_bytes(), b"queued").unwrap())
        })
        .collect();
    let mut revisions: BTreeMap<u64, String> = BTreeMap::new();
    for (key, p) in pending {
        let rev = p.wait().unwrap();
        assert!(revisions.insert(rev, key).is_none(), "revision {rev} twice");
    }
    // And from many threads at once, each waiting for its own answer.
    let per_thread: Vec<Vec<(u64, String)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let key = format!("t{t}-{i}");
                            (s.set(key.as_bytes(), key.as_bytes()).unwrap(), key)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for list in per_thread {
        // One thread's writes are acknowledged in the order it made them.
        assert!(list.windows(2).all(|w| w[0].0 < w[1].0));
        for (rev, key) in list {
            assert!(revisions.insert(rev, key).is_none(), "revision {rev} twice");
        }
    }
    let all: Vec<u64> = revisions.keys().copied().collect();
    assert_eq!(
        all,
        (1..=700).collect::<Vec<u64>>(),
        "one revision each, no gap"
    );
    let stats = s.stats();
    assert_eq!(stats.records, 700);
    assert!(
        stats.batches < stats.records,
        "group commit batched nothing: {stats:?}"
    );
    eprintln!(
        "group commit: {} records in {} fsyncs",
        stats.records, stats.batches
    );
    let expected = s.to_map();
    drop(s);
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.to_map(), expected);
    for (rev, key) in [(1, "q0"), (300, "q299")] {
        assert_eq!(revisions[&rev], key);
    }
}

#[test]
fn store_snapshot_plus_wal_replay_equals_the_state() {
    let dir = TempDir::new("st-snap");
    let wal_path = dir.0.join(WAL_FILE);
    let mut expected = BTreeMap::new();
    let sealed = {
        let s = Store::open(&dir.0).unwrap();
        for i in 0..100 {
            let (k, v) = (format!("k{}", i % 60), format!("v{i}"));
            s.set(k.as_bytes(), v.as_bytes()).unwrap();
            expected.insert(k.into_bytes(), v.into_bytes());
        }
        // The seal writes no snapshot; a compaction does.
        assert_eq!(s.compact().unwrap(), 100);
        let sealed = s.seal().unwrap();
        assert!(matches!(s.set(b"late", b"x"), Err(StoreError::Closed)));
        assert_eq!(s.to_map(), expected, "reads still work once sealed");
        sealed
    };
    assert_eq!(sealed.revision, 100);
    assert_eq!(
        std::fs::metadata(&wal_path).unwrap().len(),
        wal::MAGIC.len() as u64,
        "the compaction left an empty log"
    );
    let pre_crash_fingerprint;
    {
        let s = Store::open(&dir.0).unwrap();
        assert_eq!(s.open_report().snapshot_revision, 100);
        assert_eq!(s.open_report().replayed, 0);
        assert_eq!(s.to_map(), expected);
        assert_eq!(
            s.fingerprint(),
            sealed.fingerprint,
            "the opener computes the sealer's fingerprint"
        );
        for i in 100..150 {
            let (k, v) = (format!("k{}", i % 80), format!("w{i}"));
            s.set(k.as_bytes(), v.as_bytes()).unwrap();
            expected.insert(k.into_bytes(), v.into_bytes());
        }
        pre_crash_fingerprint = s.fingerprint();
        // Dropped without a seal, as a crash would leave it.
    }
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.open_report().snapshot_revision, 100);
    assert_eq!(s.open_report().replayed, 50);
    assert_eq!(s.revision(), 150);
    assert_eq!(s.to_map(), expected, "snapshot + log replay is the state");
    assert_eq!(s.fingerprint(), pre_crash_fingerprint);

    // A crash between the snapshot's rename and the frozen log's removal
    // leaves records the snapshot already holds: they are skipped, not
    // applied twice.
    let uncut = std::fs::read(&wal_path).unwrap();
    assert_eq!(s.compact().unwrap(), 150);
    let sealed = s.seal().unwrap();
    drop(s);
    std::fs::write(dir.0.join(FROZEN_WAL_FILE), &uncut).unwrap();
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.revision(), 150);
    assert_eq!(s.open_report().replayed, 0);
    assert_eq!(s.to_map(), expected);
    assert_eq!(s.fingerprint(), sealed.fingerprint);
    assert!(!dir.0.join(FROZEN_WAL_FILE).exists(), "the open removes it");
    assert_eq!(s.set(b"next", b"1").unwrap(), 151);
}

// ------------------------------------------------------------ processes --

/// A deployment in miniature: the listener held here by a real
/// `Supervisor`, kvd cold-started on it.
struct Rig {
    /// The data dir's own filesystem, if the test asked for one. Declared
    /// before `dir`: fields drop in order, after `Drop for Rig` has ended
    /// the processes that hold files in it, and it must be unmounted
    /// before `dir` is removed.
    _mount: Option<Tmpfs>,
    dir: TempDir,
    ctl: PathBuf,
    data: PathBuf,
    addr: SocketAddr,
    supervisor: Supervisor,
    /// A copy of the listener, for a reference supervisor to pass on.
    listener: TcpListener,
    /// The current incumbent, when it is our child.
    incumbent: Incumbent,
    /// Incumbents replaced by committed handoffs: each must exit by itself.
    retired: Vec<Incumbent>,
}

/// An incumbent of ours: the unforked spawn's child (the cold start, our
/// supervisor's handoffs) or std's (the reference supervisor's handoffs).
type Incumbent = Box<dyn ChildProcess + Send + Sync>;

impl Rig {
    fn start(tag: &str) -> Rig {
        Rig::launch(TempDir::new(tag), None)
    }

    /// A rig whose data dir is a tmpfs of `size` bytes of its own, so the
    /// test can fill it; `None` (the reason printed) if mounting is refused.
    fn start_on_tmpfs(tag: &str, size: usize) -> Option<Rig> {
        let dir = TempDir::new(tag);
        let mount = Tmpfs::mount(&dir.0.join("data"), size)?;
        Some(Rig::launch(dir, Some(mount)))
    }

    fn launch(dir: TempDir, mount: Option<Tmpfs>) -> Rig {
        let ctl = dir.0.join("ctl.sock");
        let data = dir.0.join("data");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut launch = Launch::new(kvd_bin());
        launch
            .arg("--control-socket")
            .arg(&ctl)
            .arg("--data-dir")
            .arg(&data)
            .arg("--version")
            .arg("v1")
            .stdout(ChildStdio::Piped);
        let mut incumbent = spawn_cold_vfork(
            launch,
            &[PassedListener {
                name: "kv",
                fd: listener.as_fd(),
            }],
        )
        .unwrap();
        let line = read_line_bounded(incumbent.stdout.take().unwrap());
        let line = line.expect("kvd says it is ready within the bound");
        assert!(
            line.starts_with(&format!("ready {} ", incumbent.id())),
            "{line}"
        );
        let copy = listener.try_clone().unwrap();
        let supervisor = Supervisor::new(&ctl)
            .unwrap()
            .with_listener("kv", listener)
            .unwrap();
        Rig {
            _mount: mount,
            dir,
            ctl,
            data,
            addr,
            supervisor,
            listener: copy,
            incumbent: Box::new(incumbent),
            retired: Vec::new(),
        }
    }

    /// kvd as the successor, announcing `version`.
    fn spec(&self, version: &str) -> SpawnSpec {
        SpawnSpec::new(kvd_bin())
            .arg("--control-socket")
            .arg(&self.ctl)
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--version")
            .arg(version)
    }

    /// A committed handoff to kvd `version`; the new incumbent becomes ours.
    fn handoff(&mut self, version: &str) -> HandoffOutcome {
        self.handoff_with(self.spec(version))
    }

    /// A handoff to `spec`; a new incumbent becomes ours.
    fn handoff_with(&mut self, spec: SpawnSpec) -> HandoffOutcome {
        let mut outcome = self.supervisor.perform_handoff(spec).unwrap();
        if let Some(child) = outcome.child.take() {
            let old = std::mem::replace(&mut self.incumbent, Box::new(child));
            self.retired.push(old);
        }
        outcome
    }

    fn load(&self, seed: u64) -> LoadGen {
        let mut cfg = LoadConfig::new(self.addr);
        cfg.clients = 8;
        cfg.seed = seed;
        loadgen::start(cfg)
    }

    /// One request on a new connection; the answer, within `BOUND`.
    fn request(&self, line: &str) -> String {
        let mut s = TcpStream::connect_timeout(&self.addr, BOUND).unwrap();
        s.set_read_timeout(Some(BOUND)).unwrap();
        s.set_write_timeout(Some(BOUND)).unwrap();
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        answer.trim_end().to_owned()
    }

    /// `(version, pid)` of the process answering on the port.
    fn version(&self) -> (String, u32) {
        let answer = self.request("VERSION");
        let mut parts = answer.split(' ');
        assert_eq!(parts.next(), Some("VERSION"), "{answer}");
        let v = parts.next().unwrap().to_owned();
        (v, parts.next().unwrap().parse().unwrap())
    }

    fn lock_holder(&self) -> Option<u32> {
        DataDirLock::recorded_holder(&self.data)
    }

    /// Every retired incumbent exits by itself, successfully.
    fn assert_retired_exit_cleanly(&mut self) {
        for child in &mut self.retired {
            let status = wait_exit(child, BOUND).expect("a retired incumbent exits");
            assert!(status.success(), "retired incumbent: {status}");
        }
    }

    /// Live kvd processes of this rig (by its control socket path).
    fn live_daemons(&self) -> Vec<u32> {
        let needle = self.ctl.to_string_lossy().into_owned();
        let me = std::process::id();
        let ours: Vec<u32> = std::iter::once(self.incumbent.id())
            .chain(self.retired.iter().map(|c| c.id()))
            .collect();
        let mut live = Vec::new();
        for (pid, ppid, zombie) in processes_with(&needle) {
            if !zombie {
                live.push(pid);
            } else if ppid == me && !ours.contains(&pid) {
                reap(pid);
            }
        }
        live
    }

    /// Waits until exactly one kvd of this rig is alive; returns its pid.
    fn settle_to_one(&self) -> u32 {
        let t0 = Instant::now();
        loop {
            let live = self.live_daemons();
            if live.len() == 1 {
                return live[0];
            }
            assert!(
                t0.elapsed() < BOUND,
                "{} daemons still alive after the bound: {live:?}",
                live.len()
            );
            for pid in live {
                if wait_gone(pid, Duration::from_millis(50)) {
                    break;
                }
            }
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in self
            .retired
            .iter_mut()
            .chain(std::iter::once(&mut self.incumbent))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Adopted orphans (a killed supervisor's successor) have no `Child`.
        kill_daemons_of(&self.ctl);
    }
}

/// Stops the load, reads every acknowledged write back, prints both
/// reports, and asserts nothing failed and nothing was lost.
fn finish_load(rig: &Rig, load: LoadGen, what: &str) -> (LoadReport, VerifyReport) {
    let report = load.stop();
    let verified = loadgen::verify(rig.addr, &report.acked);
    eprintln!("{what}: load {report}");
    eprintln!("{what}: verify {verified}");
    assert!(report.writes_acked > 0, "{what}: no write was acknowledged");
    assert_eq!(
        report.requests_failed, 0,
        "{what}: requests without an answer: {:?}",
        report.problems
    );
    assert_eq!(
        report.get_mismatches, 0,
        "{what}: reads lost writes: {:?}",
        report.problems
    );
    assert_eq!(verified.checked, report.writes_acked);
    assert_eq!(
        (verified.writes_lost, verified.unanswered),
        (0, 0),
        "{what}: {:?}",
        verified.problems
    );
    let revisions: HashSet<u64> = report.acked.values().map(|w| w.revision).collect();
    assert_eq!(
        revisions.len(),
        report.acked.len(),
        "{what}: two acknowledged writes share a revision"
    );
    (report, verified)
}

/// Waits until the load has `more` acknowledged writes than now: the
/// daemon answering on the port takes writes.
fn assert_writes_flow(load: &LoadGen, more: u64, what: &str) {
    let now = load.progress().writes_acked;
    assert!(
        load.wait_for_acks(now + more, BOUND),
        "{what}: writes stopped at {now}: {:?}",
        load.progress()
    );
}

#[test]
fn kvd_serves_the_line_protocol_and_survives_a_kill() {
    let _serial = serial();
    let dir = TempDir::new("proto");
    let start = || {
        let mut child = Command::new(kvd_bin())
            .arg("--control-socket")
            .arg(dir.0.join("ctl.sock"))
            .arg("--data-dir")
            .arg(dir.0.join("data"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = read_line_bounded(child.stdout.take().unwrap()).expect("ready");
        let addr: SocketAddr = line.split(' ').nth(2).unwrap().trim().parse().unwrap();
        (child, addr)
    };
    let talk = |addr: SocketAddr, lines: &[&str]| -> Vec<String> {
        let s = TcpStream::connect_timeout(&addr, BOUND).unwrap();
        s.set_read_timeout(Some(BOUND)).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut s = s;
        lines
            .iter()
            .map(|l| {
                s.write_all(format!("{l}\r\n").as_bytes()).unwrap();
                let mut a = String::new();
                reader.read_line(&mut a).unwrap();
                a.trim_end().to_owned()
            })
            .collect()
    };
    let (mut kvd, addr) = start();
    let pid = kvd.id();
    let answers = talk(
        addr,
        &[
            "SET a hello world",
            "GET a",
            "GET b",
            "SET b 2",
            "VERSION",
            "SET onlykey",
            "SET k \u{1}x",
            "FLY me",
            "get a",
        ],
    );
    assert_eq!(
        answers[..5],
        [
            "OK 1".to_owned(),
            "VALUE hello world".into(),
            "NONE".into(),
            "OK 2".into(),
            format!("VERSION kvd-{} {pid}", env!("CARGO_PKG_VERSION")),
        ]
    );
    for a in &answers[5..] {
        assert!(a.starts_with("ERR "), "{a}");
    }
    // kill -9: what was acknowledged is on disk; the next cold start takes
    // the dead holder's lock.
    kvd.kill().unwrap();
    kvd.wait().unwrap();
    let (mut kvd, addr) = start();
    assert_eq!(
        talk(addr, &["GET a", "GET b", "SET c 3"]),
        ["VALUE hello world", "VALUE 2", "OK 3"]
    );
    kvd.kill().unwrap();
    kvd.wait().unwrap();
}

#[test]
fn kvd_refuses_bad_command_lines() {
    let dir = TempDir::new("cli");
    let out = Command::new(kvd_bin())
        .args(["--control-socket", "/tmp/x.sock", "--data-dir"])
        .arg(&dir.0)
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--frobnicate") && err.contains("usage:"),
        "{err}"
    );

    // Cold, with neither an inherited listener nor --listen.
    let out = Command::new(kvd_bin())
        .arg("--control-socket")
        .arg(dir.0.join("ctl.sock"))
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
}

/// Without passing (a reference peer, or `pass_connections` off), kvd's
/// fallback: `RETRY` on every open connection, then a close.
#[test]
fn without_passing_a_drain_answers_retry_unprompted_on_open_connections() {
    let _serial = serial();
    let mut rig = Rig::start("retry");
    let connect = || {
        let s = TcpStream::connect_timeout(&rig.addr, BOUND).unwrap();
        s.set_read_timeout(Some(BOUND)).unwrap();
        (BufReader::new(s.try_clone().unwrap()), s)
    };
    let ask = |(r, s): &mut (BufReader<TcpStream>, TcpStream), line: &str| {
        // One write for the whole line: `writeln!` on an unbuffered stream
        // writes the text and the newline separately, and on a connection
        // the drain already closed, the first write draws a reset that makes
        // the second fail with EPIPE before the RETRY is read.
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut a = String::new();
        r.read_line(&mut a).unwrap();
        a.trim_end().to_owned()
    };
    let mut busy = connect();
    assert_eq!(ask(&mut busy, "SET a 1"), "OK 1");
    // Open, accepted, but silent until after the handoff.
    let mut idle = connect();
    assert_eq!(ask(&mut idle, "GET a"), "VALUE 1");

    let old = rig.incumbent.id();
    let mut spec = rig.spec("v2");
    spec.pass_connections = false;
    let outcome = rig.handoff_with(spec);
    assert!(outcome.committed(), "{:?}", outcome.result);
    assert_eq!(
        outcome.connections_passed, None,
        "nothing set up for passing"
    );
    assert_eq!(outcome.sealed_revisions, Some(vec![1]));
    assert_eq!(outcome.advertised_revisions, Some(vec![1]));

    // Each old connection's next request reads the RETRY written at the
    // drain, then EOF: the request was not executed, and it was answered.
    assert_eq!(ask(&mut busy, "SET a 2"), "RETRY");
    let mut rest = Vec::new();
    busy.0.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then EOF, not {rest:?}");
    assert_eq!(ask(&mut idle, "SET b 1"), "RETRY");
    drop((busy, idle));

    assert_eq!(rig.request("GET a"), "VALUE 1", "the RETRYed SET never ran");
    assert_eq!(rig.request("GET b"), "NONE");
    assert_eq!(rig.request("SET b 1"), "OK 2", "revisions go on");
    let (version, pid) = rig.version();
    assert_eq!((version.as_str(), pid), ("v2", rig.incumbent.id()));
    assert_ne!(pid, old);
    rig.assert_retired_exit_cleanly();
}

/// The reference supervisor (`beyond-handoff` 0.1.4) sends no
/// `PassChannel` (it knows no extension): kvd's handoff commits without
/// passing, and an open connection gets kvd's fallback, `RETRY` then a
/// close; nothing written is lost.
#[test]
fn a_handoff_by_the_reference_supervisor_commits_without_passing() {
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let mut rig = Rig::start("refsup");
    let s = TcpStream::connect_timeout(&rig.addr, BOUND).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut open = (BufReader::new(s.try_clone().unwrap()), s);
    let mut ask = |line: &str| {
        open.1.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut a = String::new();
        open.0.read_line(&mut a).unwrap();
        a.trim_end().to_owned()
    };
    assert_eq!(ask("SET r 1"), "OK 1");
    let reference = handoff::Supervisor::new(&rig.ctl)
        .unwrap()
        .with_listener("kv", rig.listener.as_raw_fd());
    let mut spec = handoff::SpawnSpec::new(kvd_bin());
    spec.args = ["--control-socket", path_str(&rig.ctl), "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .chain([
            path_str(&rig.data).to_owned(),
            "--version".into(),
            "v2".into(),
        ])
        .collect();
    let old = rig.incumbent.id();
    let mut outcome = reference.perform_handoff(spec).unwrap();
    assert!(outcome.committed, "{:?}", outcome.abort_reason);
    let child = outcome.child.take().expect("the new incumbent");
    rig.retired
        .push(std::mem::replace(&mut rig.incumbent, Box::new(child)));
    assert_eq!(ask("GET r"), "RETRY", "not passed: told to reconnect");
    let (version, pid) = rig.version();
    assert_eq!((version.as_str(), pid), ("v2", rig.incumbent.id()));
    assert_ne!(pid, old);
    assert_eq!(rig.request("GET r"), "VALUE 1");
    rig.assert_retired_exit_cleanly();
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

#[test]
fn no_acknowledged_write_is_lost_across_20_handoffs_under_load() {
    let _serial = serial();
    let mut rig = Rig::start("twenty");
    let load = rig.load(20);
    assert_writes_flow(&load, 100, "before the first handoff");
    let (mut durations, mut passed) = (Vec::new(), 0);
    for i in 0..20 {
        let version = if i % 2 == 0 { "v2" } else { "v1" };
        let t0 = Instant::now();
        let outcome = rig.handoff(version);
        durations.push(t0.elapsed().as_secs_f64() * 1000.0);
        assert!(
            outcome.committed(),
            "handoff {i}: {:?} {:?}",
            outcome.result,
            outcome.detail
        );
        assert_eq!(
            outcome.sealed_revisions, outcome.advertised_revisions,
            "handoff {i}: the successor opened exactly what was sealed"
        );
        let (v, pid) = rig.version();
        assert_eq!(v, version, "handoff {i}");
        assert_eq!(Some(pid), outcome.successor_pid, "handoff {i}");
        assert_eq!(rig.lock_holder(), Some(pid), "handoff {i}");
        assert!(
            outcome.connections_passed.is_some(),
            "handoff {i}: passing was set up"
        );
        passed += outcome.connections_passed.unwrap_or(0);
        assert_writes_flow(&load, 50, &format!("after handoff {i}"));
    }
    let (report, _) = finish_load(&rig, load, "20 handoffs");
    // The open connections were passed, not sent back to reconnect.
    assert!(passed > 0, "20 drains under load passed no connection");
    assert_eq!(
        report.requests_retried, 0,
        "RETRY with passing on: {:?}",
        report.problems
    );
    durations.sort_by(f64::total_cmp);
    eprintln!(
        "20 handoffs: p50 {:.1} ms, max {:.1} ms",
        durations[durations.len() / 2],
        durations[durations.len() - 1]
    );
    rig.assert_retired_exit_cleanly();
}

#[test]
fn no_acknowledged_write_is_lost_across_aborted_handoffs() {
    let _serial = serial();
    let mut rig = Rig::start("abort");
    let original = rig.incumbent.id();
    let load = rig.load(21);
    assert_writes_flow(&load, 100, "before the handoffs");

    // A successor that exits at once (bad flag), before saying Hello.
    let spec = rig.spec("v2").arg("--no-such-flag");
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    assert!(!outcome.committed());
    assert!(
        outcome.sealed_revisions.is_none(),
        "it failed before the seal"
    );
    assert_eq!(rig.version().1, original);
    assert_writes_flow(&load, 50, "after the first abort");

    // A successor that dies the moment it holds the lock: the incumbent had
    // sealed and released it, and must take it back and reopen its state.
    let marker = rig.dir.0.join("marker");
    let spec = rig
        .spec("v2")
        .env("HANDOFF_CRASH_AT", "successor-after-lock-acquired")
        .env("HANDOFF_CRASH_MARKER", &marker);
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    assert!(!outcome.committed());
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "successor-after-lock-acquired",
        "the successor crashed where intended (crash points compiled in)"
    );
    assert!(
        outcome.sealed_revisions.is_some(),
        "the incumbent had sealed"
    );
    assert_eq!(rig.version().1, original, "the incumbent serves on");
    assert_eq!(rig.lock_holder(), Some(original));
    assert_writes_flow(&load, 50, "after the second abort");

    // And the state it resumed with hands off cleanly afterwards.
    let outcome = rig.handoff("v2");
    assert!(outcome.committed(), "{:?}", outcome.result);
    assert_writes_flow(&load, 50, "after the final handoff");
    finish_load(&rig, load, "aborted handoffs");
    rig.assert_retired_exit_cleanly();
}

#[test]
fn no_acknowledged_write_is_lost_across_a_killed_supervisor() {
    let _serial = serial();
    become_subreaper();
    // Under load, the steps where the old binary stops writing and the
    // new one starts: after each frame sent there, and after each frame
    // received that decides what comes next.
    for point in [
        "supervisor-after-drained-received",
        "supervisor-after-seal-request-sent",
        "supervisor-after-seal-complete-received",
        "supervisor-after-begin-sent",
        "supervisor-after-ready-received",
    ] {
        let rig = Rig::start("s-kill");
        let load = rig.load(22);
        assert_writes_flow(&load, 100, point);

        let marker = rig.dir.0.join("marker");
        let listener = rig.supervisor.listeners().next().unwrap();
        let mut launch = Launch::new(kvd_bin());
        launch
            .arg("supervise")
            .arg("--control-socket")
            .arg(&rig.ctl)
            .arg("--data-dir")
            .arg(&rig.data)
            .arg("--binary")
            .arg(kvd_bin())
            .arg("--version")
            .arg("v2")
            .arg("--journal")
            .arg(rig.dir.0.join("journal"))
            .env("HANDOFF_CRASH_AT", point)
            .env("HANDOFF_CRASH_MARKER", &marker)
            .stdout(ChildStdio::Null);
        let mut supervisor = spawn_cold_vfork(
            launch,
            &[PassedListener {
                name: "kv",
                fd: listener.fd,
            }],
        )
        .unwrap();
        let status = wait_exit(&mut supervisor, BOUND).expect("the supervisor ends");
        assert_eq!(status.code(), Some(99), "{point}: it must crash there");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), point);

        // Exactly one kvd is left: it answers on the port, holds the lock,
        // and takes writes.
        let survivor = rig.settle_to_one();
        assert_eq!(rig.version().1, survivor, "{point}");
        assert_eq!(rig.lock_holder(), Some(survivor), "{point}");
        assert!(
            DataDirLock::acquire(&rig.data).is_err(),
            "{point}: lock held"
        );
        assert_writes_flow(&load, 50, point);
        let (report, _) = finish_load(&rig, load, point);
        eprintln!(
            "{point}: survivor {} ({}), {} writes acked",
            survivor,
            if survivor == rig.incumbent.id() {
                "the incumbent"
            } else {
                "the successor"
            },
            report.writes_acked
        );
    }
}

#[test]
fn the_fingerprint_is_a_hash_of_the_log_the_successor_reopens() {
    // The sealed fingerprint is a property of the log, not of the process:
    // two stores fed the same writes agree, and a different write differs.
    let (a, b) = (TempDir::new("fp-a"), TempDir::new("fp-b"));
    let fp = |dir: &Path, last: &[u8]| {
        let s = Store::open(dir).unwrap();
        s.set(b"x", b"1").unwrap();
        s.set(b"y", last).unwrap();
        s.seal().unwrap().fingerprint
    };
    let first = fp(&a.0, b"2");
    assert_eq!(first, fp(&b.0, b"2"));
    let c = TempDir::new("fp-c");
    assert_ne!(first, fp(&c.0, b"3"));
}

// ------------------------------------------------------------ full disk --

/// A small tmpfs mounted for one test and unmounted when dropped (also when
/// the test fails), so that the test can fill the data dir's filesystem.
struct Tmpfs(CString);

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes on `at` (created if missing); `None`,
    /// with the reason printed, if the system refuses (the test needs root
    /// or CAP_SYS_ADMIN).
    fn mount(at: &Path, size: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: every pointer is a NUL-terminated string that outlives
        // the call; tmpfs takes its options as such a string.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs on {}: {} (run the test as root to \
                 exercise a full disk)",
                at.display(),
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: umount2 on a NUL-terminated path we own.
        let rc = unsafe { libc::umount2(self.0.as_ptr(), 0) };
        if rc != 0 {
            // Busy: a kvd a failed test left behind still has its log open.
            // Detach it anyway so no mount outlives the test; the kernel
            // frees it when the last file in it closes.
            #[allow(unsafe_code)]
            // SAFETY: as above.
            unsafe {
                libc::umount2(self.0.as_ptr(), libc::MNT_DETACH)
            };
        }
    }
}

/// Fills the filesystem holding `dir` with the file `dir/filler` until it
/// reports ENOSPC; returns the file's path.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    // 64 MiB at most: a tmpfs of a few MiB is full long before that.
    for _ in 0..1024 {
        match file.write(&chunk) {
            Ok(n) if n > 0 => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return path,
            other => panic!("filling {}: {other:?}", path.display()),
        }
    }
    panic!(
        "{} never filled up: is it on the small tmpfs?",
        path.display()
    );
}

/// A value of about 8 KiB: appending it to the log needs new blocks, so on
/// a full disk its write fails (a short value can fit in the log's last,
/// partly used block and succeed, rightly).
fn big(i: u32) -> String {
    format!("{i}-{}", "x".repeat(8000))
}

/// Acknowledged writes: revision -> (key, value).
type Acked = BTreeMap<u64, (String, String)>;

impl Rig {
    /// `SET key value` must be acknowledged with the revision after the
    /// last one acknowledged (a refused write takes no revision).
    fn set_ok(&self, acked: &mut Acked, key: &str, value: &str) {
        let answer = self.request(&format!("SET {key} {value}"));
        let next = acked.keys().next_back().map_or(1, |r| r + 1);
        assert_eq!(answer, format!("OK {next}"), "SET {key}");
        acked.insert(next, (key.to_owned(), value.to_owned()));
    }

    /// `SET key value` on a full disk: refused, saying why and what to do.
    fn set_refused_for_space(&self, key: &str, value: &str) {
        let answer = self.request(&format!("SET {key} {value}"));
        assert!(
            answer.starts_with("ERR ")
                && answer.contains("No space left on device")
                && answer.contains("free space"),
            "SET {key} on a full disk: {answer}"
        );
    }

    /// Every key reads back its last acknowledged value.
    fn assert_reads(&self, acked: &Acked, what: &str) {
        let last: BTreeMap<&str, (u64, &str)> = acked
            .iter()
            .map(|(revision, (key, value))| (key.as_str(), (*revision, value.as_str())))
            .collect();
        for (key, (revision, value)) in last {
            let answer = self.request(&format!("GET {key}"));
            assert!(
                answer == format!("VALUE {value}"),
                "{what}: {key} (revision {revision}) reads {:?}",
                &answer[..answer.len().min(80)]
            );
        }
    }
}

#[test]
fn kvd_takes_writes_again_by_itself_once_a_full_disk_has_space() {
    let _serial = serial();
    let Some(rig) = Rig::start_on_tmpfs("enospc", 1 << 20) else {
        return;
    };
    let mut acked = Acked::new();
    for i in 0..5 {
        rig.set_ok(&mut acked, &format!("small{i}"), &format!("v{i}"));
    }
    rig.set_ok(&mut acked, "big0", &big(0));

    let filler = fill_up(&rig.data);
    for i in 1..=3 {
        rig.set_refused_for_space(&format!("big{i}"), &big(i));
    }
    rig.assert_reads(&acked, "disk full");
    assert_eq!(
        rig.request("GET big1"),
        "NONE",
        "a refused SET is not applied"
    );

    // Space is back: the same process takes writes again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    for i in 4..=6 {
        rig.set_ok(&mut acked, &format!("big{i}"), &big(i));
    }
    rig.set_ok(&mut acked, "small0", "after");
    assert_eq!(rig.version().1, rig.incumbent.id(), "no restart");
    rig.assert_reads(&acked, "space back");

    // What a restart or a successor replays: exactly the acknowledged writes
    // in revision order, and nothing torn or partial from the refused ones.
    let bytes = std::fs::read(rig.data.join(WAL_FILE)).unwrap();
    let scan = wal::scan(&bytes, 0).unwrap();
    assert_eq!(scan.torn, None, "a failed write left a torn tail");
    assert_eq!(scan.valid_len, bytes.len());
    let logged: Acked = scan
        .records
        .iter()
        .map(|r| {
            let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
            (r.revision, (text(&r.key), text(&r.value)))
        })
        .collect();
    assert_eq!(logged.len(), scan.records.len(), "a revision twice");
    assert!(
        logged == acked,
        "the log holds other writes than acknowledged"
    );
}

#[test]
fn a_handoff_while_the_disk_is_full_commits_and_writes_resume_once_space_returns() {
    let _serial = serial();
    let Some(mut rig) = Rig::start_on_tmpfs("enospc-ho", 1 << 20) else {
        return;
    };
    let mut acked = Acked::new();
    for i in 0..5 {
        rig.set_ok(&mut acked, &format!("small{i}"), &format!("v{i}"));
    }
    rig.set_ok(&mut acked, "big0", &big(0));
    let filler = fill_up(&rig.data);
    rig.set_refused_for_space("big1", &big(1));

    // The seal needs no new space (the log already holds every acknowledged
    // write durably, and the seal writes no snapshot; its seal record is only
    // a hint, and without it the successor reads the state whole), so the
    // handoff goes through.
    let old = rig.incumbent.id();
    let outcome = rig.handoff("v2");
    assert!(
        outcome.committed(),
        "a full disk aborted the handoff: {:?} {:?}",
        outcome.result,
        outcome.detail
    );
    assert_eq!(
        outcome.sealed_revisions, outcome.advertised_revisions,
        "the successor opened exactly what was sealed"
    );
    assert!(
        !rig.data.join(SNAPSHOT_FILE).exists(),
        "the seal compacted after all: this test did not cover a seal on a full disk"
    );
    let (version, pid) = rig.version();
    assert_eq!(version, "v2");
    assert_ne!(pid, old);
    rig.assert_reads(&acked, "successor, disk full");
    rig.set_refused_for_space("big2", &big(2));
    rig.assert_reads(&acked, "successor, disk still full");

    std::fs::remove_file(&filler).unwrap();
    for i in 3..=5 {
        rig.set_ok(&mut acked, &format!("big{i}"), &big(i));
    }
    assert_eq!(rig.version().1, pid, "no restart");
    rig.assert_reads(&acked, "successor, space back");

    // With space back the state still hands over whole.
    let outcome = rig.handoff("v1");
    assert!(outcome.committed(), "{:?}", outcome.result);
    assert!(rig.data.join(SEALED_FILE).exists(), "no seal record");
    rig.assert_reads(&acked, "after the second handoff");
    rig.set_ok(&mut acked, "big6", &big(6));
    rig.assert_retired_exit_cleanly();
}

/// Sets the process's umask for the life of the guard.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        #[allow(unsafe_code)]
        // SAFETY: umask only swaps the process's file-creation mask.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            libc::umask(self.0)
        };
    }
}

#[test]
fn kvd_creates_its_data_files_readable_by_its_owner_only() {
    let _serial = serial();
    // The usual umask, which lets a file created without a mode be 0644
    // (kvd and its successor inherit it): with a stricter one cargo may
    // have run under, this test would prove nothing.
    let _umask = Umask::set(0o022);
    let mut rig = Rig::start("modes");
    assert_eq!(rig.request("SET a 1"), "OK 1");
    // The seal writes its seal record, through a temporary file renamed
    // over it. (Snapshots are written by compactions while serving, which
    // this little state does not reach: tests/store.rs checks their mode.)
    let outcome = rig.handoff("v2");
    assert!(outcome.committed(), "{:?}", outcome.result);
    assert_eq!(rig.request("SET b 2"), "OK 2");
    for name in [WAL_FILE, SEALED_FILE, SNAPSHOT_FILE] {
        let path = rig.data.join(name);
        if name == SNAPSHOT_FILE && !path.exists() {
            continue;
        }
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{name} is readable by others than its owner"
        );
    }
    let temps: Vec<_> = std::fs::read_dir(&rig.data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "temp files are left: {temps:?}");
    rig.assert_retired_exit_cleanly();
}
