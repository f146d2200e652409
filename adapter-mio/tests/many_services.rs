//! One mio supervisor loop supervising 200 daemons and handing each of them
//! off, 25 at a time. The daemons are this test binary re-executed as a
//! minimal mio incumbent. Prints the supervisor's memory per service and the
//! time of the whole round (the figures in the project's notes come from
//! `cargo test -p handoff-mio --release --test many_services -- --nocapture`).

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use handoff_mio::{
    IncumbentEvent, MioIncumbent, MioSuccessor, MioSupervisor, ServiceId, SuccessorEvent,
    SupervisorEvent,
};
use handoff_std::os::process::poll_readable;
use handoff_std::os::spawn::{Child, ChildStdio, Launch, spawn_cold_vfork};
use handoff_std::{
    DataDirLock, DrainReport, ReadyReport, Role, SealReport, SpawnSpec, SuccessorConfig, Supervisor,
};
use mio::{Events, Poll, Token};

const SERVICES: usize = 200;
const CONCURRENT: usize = 25;
const BOUND: Duration = Duration::from_secs(60);

/// One `Poll::poll`. epoll_wait is not restarted after the process is
/// stopped and continued (a frozen cgroup): that `EINTR` is a wake-up with
/// no events, anything else fails the test.
fn wait(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) {
    if let Err(e) = poll.poll(events, timeout) {
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
    }
}

/// The entry point of the daemon processes.
#[test]
#[ignore = "runs only as a daemon the test starts"]
fn daemon_entry() {
    if let Ok(dir) = std::env::var("MIO_DAEMON_DIR") {
        std::process::exit(daemon(Path::new(&dir)));
    }
}

fn daemon(dir: &Path) -> i32 {
    let ctl = dir.join("ctl.sock");
    let data = dir.join("data");
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut control = match handoff_std::detect_role().unwrap() {
        Role::ColdStart { .. } => {
            let lock = DataDirLock::acquire(&data).unwrap();
            let c = MioIncumbent::bind_cold_start(&ctl, lock).unwrap();
            println!("ready");
            c
        }
        Role::Successor(successor) => {
            let mut s = MioSuccessor::start(
                successor,
                poll.registry(),
                Token(9),
                b"many",
                &data,
                SuccessorConfig::default(),
            )
            .unwrap();
            loop {
                let t = s
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(Instant::now()));
                wait(&mut poll, &mut events, t);
                for e in &events {
                    s.handle_event(poll.registry(), e);
                }
                s.handle_timeout(poll.registry());
                match s.poll_event() {
                    Some(SuccessorEvent::Begun) => {
                        s.ready(poll.registry(), &healthy(), &ctl).unwrap()
                    }
                    Some(SuccessorEvent::Authoritative { .. }) => {
                        break s.into_incumbent(poll.registry()).unwrap();
                    }
                    Some(SuccessorEvent::Failed { .. }) => return 4,
                    _ => {}
                }
            }
        }
    };
    control
        .register(poll.registry(), Token(1), Token(2))
        .unwrap();
    loop {
        let t = control
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        wait(&mut poll, &mut events, t);
        for e in &events {
            control.handle_event(poll.registry(), e);
        }
        control.handle_timeout(poll.registry());
        while let Some(event) = control.poll_event() {
            let r = poll.registry();
            match event {
                IncumbentEvent::Drain { .. } => control.drained(r, DrainReport::default()),
                IncumbentEvent::Seal => control.sealed(r, &SealReport::default()),
                IncumbentEvent::Resume => control.resumed(r),
                IncumbentEvent::SessionEnded(end) if !end.keeps_serving() => return 0,
                _ => {}
            }
        }
    }
}

/// Starts a daemon in `dir` cold, as a supervisor would (with no listeners
/// to pass: the daemon needs only its control socket), its standard output
/// piped to say when it is ready.
fn start_daemon(dir: &Path) -> Child {
    let mut launch = Launch::new(std::env::current_exe().unwrap());
    launch
        .args([
            "daemon_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--quiet",
            "--test-threads=1",
        ])
        .env("MIO_DAEMON_DIR", dir)
        .stdout(ChildStdio::Piped);
    spawn_cold_vfork(launch, &[]).unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Fleet {
    root: PathBuf,
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn one_loop_hands_off_200_daemons_25_at_a_time() {
    let root = PathBuf::from(format!("/tmp/hm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut fleet = Fleet {
        root: root.clone(),
        children: Vec::new(),
    };

    // Given 200 daemons, cold-started,
    let dirs: Vec<PathBuf> = (0..SERVICES).map(|i| root.join(i.to_string())).collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap();
        let child = start_daemon(dir);
        fleet.children.push(child);
    }
    for child in &mut fleet.children {
        let stdout = child.stdout.take().unwrap();
        let ready = poll_readable(&[stdout.as_fd()], Some(BOUND)).unwrap();
        assert!(ready[0], "a daemon did not start within the bound");
        // libtest prints its own lines first; an exit ends the read at EOF.
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "a daemon exited");
        }
    }

    // and one mio loop supervising them all,
    let rss_before = rss_kib();
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut sup = MioSupervisor::new(100, CONCURRENT);
    let ids: Vec<ServiceId> = dirs
        .iter()
        .map(|d| sup.add_service(Arc::new(Supervisor::new(d.join("ctl.sock")).unwrap())))
        .collect();
    let spec = |dir: &Path| {
        SpawnSpec::new(std::env::current_exe().unwrap())
            .arg("daemon_entry")
            .arg("--exact")
            .arg("--ignored")
            .arg("--nocapture")
            .arg("--quiet")
            .arg("--test-threads=1")
            .env("MIO_DAEMON_DIR", dir)
    };

    // when each is handed off, 25 in flight at a time,
    let started = Instant::now();
    let mut next = 0;
    let mut committed = 0;
    let mut peak_rss = rss_kib();
    let mut max_in_flight = 0;
    while committed < SERVICES {
        while next < SERVICES && sup.in_flight() < CONCURRENT {
            sup.start_handoff(poll.registry(), ids[next], spec(&dirs[next]))
                .unwrap();
            next += 1;
        }
        max_in_flight = max_in_flight.max(sup.in_flight());
        peak_rss = peak_rss.max(rss_kib());
        let t = sup
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        wait(&mut poll, &mut events, t);
        for e in &events {
            sup.handle_event(poll.registry(), e);
        }
        sup.handle_timeout(poll.registry());
        while let Some(event) = sup.poll_event() {
            match event {
                SupervisorEvent::Finished(id, mut outcome) => {
                    assert!(
                        outcome.committed(),
                        "service {}: {:?}",
                        id.0,
                        outcome.result
                    );
                    fleet.children.push(outcome.child.take().unwrap());
                    committed += 1;
                }
                SupervisorEvent::Rejected(id, e) => panic!("service {}: {e}", id.0),
                _ => {}
            }
        }
        assert!(
            started.elapsed() < BOUND,
            "the round did not finish in time"
        );
    }
    let round = started.elapsed();

    // then every one committed, the old daemons exited, and the loop's
    // memory per service stays small.
    assert_eq!(max_in_flight, CONCURRENT, "handoffs ran concurrently");
    for old in fleet.children.iter_mut().take(SERVICES) {
        let status = old.wait().unwrap();
        assert!(status.success(), "an old incumbent exits after Commit");
    }
    let per_service = peak_rss.saturating_sub(rss_before) as f64 / SERVICES as f64;
    eprintln!(
        "many_services: {SERVICES} services, {CONCURRENT} concurrent: round {:.0} ms ({:.2} ms per handoff), \
         supervisor RSS {rss_before} KiB before, peak {peak_rss} KiB, {per_service:.1} KiB per service",
        round.as_secs_f64() * 1000.0,
        round.as_secs_f64() * 1000.0 / SERVICES as f64,
    );
    assert!(per_service < 256.0, "{per_service} KiB per service");
}

#[test]
fn a_remote_starts_handoffs_from_another_thread_and_hears_refusals() {
    let root = PathBuf::from(format!("/tmp/hmr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut fleet = Fleet {
        root: root.clone(),
        children: Vec::new(),
    };
    let dir = root.join("0");
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = start_daemon(&dir);
    let stdout = child.stdout.take().unwrap();
    fleet.children.push(child);
    assert!(poll_readable(&[stdout.as_fd()], Some(BOUND)).unwrap()[0]);
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    while !line.contains("ready") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the daemon exited"
        );
    }

    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut sup = MioSupervisor::new(10, 4);
    let id = sup.add_service(Arc::new(Supervisor::new(dir.join("ctl.sock")).unwrap()));
    let remote = sup.remote(poll.registry(), Token(1)).unwrap();
    let spec = SpawnSpec::new(std::env::current_exe().unwrap())
        .arg("daemon_entry")
        .arg("--exact")
        .arg("--ignored")
        .arg("--nocapture")
        .arg("--quiet")
        .arg("--test-threads=1")
        .env("MIO_DAEMON_DIR", &dir);
    // Two requests for the same service from another thread: one runs, the
    // other is refused (one handoff per service at a time).
    let sender = {
        let spec = spec.clone();
        std::thread::spawn(move || {
            remote.handoff(id, spec.clone()).unwrap();
            remote.handoff(id, spec).unwrap();
        })
    };
    sender.join().unwrap();
    let (mut finished, mut rejected) = (0, 0);
    let started = Instant::now();
    while finished + rejected < 2 {
        let t = sup
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        wait(&mut poll, &mut events, t.or(Some(BOUND)));
        for e in &events {
            sup.handle_event(poll.registry(), e);
        }
        sup.handle_timeout(poll.registry());
        while let Some(event) = sup.poll_event() {
            match event {
                SupervisorEvent::Finished(_, mut outcome) => {
                    assert!(outcome.committed(), "{:?}", outcome.result);
                    fleet.children.push(outcome.child.take().unwrap());
                    finished += 1;
                }
                SupervisorEvent::Rejected(_, handoff_std::SupervisorError::HandoffInProgress) => {
                    rejected += 1
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(started.elapsed() < BOUND);
    }
    assert_eq!((finished, rejected), (1, 1));
}

/// A `Ready` that says the daemon is healthy (one that says otherwise is
/// rolled back at the gate).
fn healthy() -> ReadyReport {
    ReadyReport {
        healthz_ok: true,
        ..ReadyReport::default()
    }
}
