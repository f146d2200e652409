//! The supervisor operators run (`handoff-supervisor`, here as
//! `handoff-demo supervisor`), killed with `SIGKILL` while idle and at each
//! of its crash points during a handoff, with kvd serving a load that
//! connects and writes throughout, on each of kvd's runtimes. Each time the
//! supervisor is started again with the same configuration and must adopt
//! whichever kvd serves (the incumbent that resumed, or the successor that
//! was `Ready`), never restart it, report it in `status`, commit the next
//! handoff, and on `SIGTERM` stop it and leave no process behind; the load
//! must see no refused connection and lose no acknowledged write.
//!
//! Waits are on events with a bound: the supervisor's `READY=1` on a notify
//! socket this test binds, its exit (a pidfd), the load generator's
//! progress.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BOUND, TempDir, become_subreaper, processes_with, reap, serial};
use handoff_demo::loadgen::{self, LoadConfig, LoadGen};
use handoff_std::Signal;
use handoff_std::os::process::{ExitWatch, poll_readable, send_signal, wait_exit, wait_gone};
use handoff_supervisor::client::{self, Reply};
use std::os::fd::AsFd;

/// The supervisor's crash points, in the order a handoff reaches them.
fn supervisor_points() -> Vec<&'static str> {
    handoff_std::crash::points_of("supervisor").collect()
}

/// One deployment: a configuration, kvd on `runtime`, a notify socket.
struct Deployment {
    dir: TempDir,
    config: PathBuf,
    trigger: PathBuf,
    ctl: PathBuf,
    addr: SocketAddr,
    notify: UnixDatagram,
    notify_path: PathBuf,
    /// Every supervisor started, to be killed if the test fails midway.
    supervisors: Vec<Child>,
}

impl Deployment {
    fn new(tag: &str, runtime: &str) -> Deployment {
        let dir = TempDir::new(tag);
        let ctl = dir.0.join("ctl.sock");
        let trigger = dir.0.join("trigger.sock");
        // A port free now; the supervisor binds it (nothing else on this
        // machine races for loopback ports while the tests run one at a
        // time).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = dir.0.join("handoff.toml");
        let text = format!(
            "control_socket = {ctl:?}\n\
             trigger_socket = {trigger:?}\n\
             binary = {bin:?}\n\
             args = [\"--control-socket\", {ctl:?}, \"--data-dir\", {data:?}, \
                     \"--version\", \"v1\", \"--runtime\", {runtime:?}]\n\
             journal = {journal:?}\n\
             deadline_secs = 20\n\
             drain_grace_secs = 10\n\
             [[listeners]]\n\
             name = \"kv\"\n\
             addr = \"{addr}\"\n",
            bin = env!("CARGO_BIN_EXE_kvd"),
            data = dir.0.join("data"),
            journal = dir.0.join("journal"),
        );
        std::fs::write(&config, text).unwrap();
        let notify_path = dir.0.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        Deployment {
            dir,
            config,
            trigger,
            ctl,
            addr,
            notify,
            notify_path,
            supervisors: Vec::new(),
        }
    }

    /// Starts the supervisor with `env` added, and waits for its
    /// `READY=1`; returns its pid and the status line it sent with it.
    fn start_supervisor(&mut self, env: &[(&str, &str)]) -> (u32, String) {
        let log = std::fs::File::create(
            self.dir
                .0
                .join(format!("supervisor-{}.log", self.supervisors.len())),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_handoff-demo"))
            .args(["supervisor", "run", "--config"])
            .arg(&self.config)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.supervisors.push(child);
        let status = self.wait_notification("READY=1", pid);
        (pid, status)
    }

    /// The next notification holding `what` from supervisor `pid`; its
    /// `STATUS=` text. Fails at once if the supervisor exits first.
    fn wait_notification(&mut self, what: &str, pid: u32) -> String {
        let until = Instant::now() + BOUND;
        let exit = ExitWatch::new(pid).unwrap();
        self.notify.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what} from supervisor {pid} within {BOUND:?}; its log: {}",
                self.log()
            );
            let ready = poll_readable(&[self.notify.as_fd(), exit.as_fd()], Some(left)).unwrap();
            let Ok(n) = self.notify.recv(&mut buf) else {
                assert!(
                    !ready[1],
                    "supervisor {pid} exited before {what}; its log: {}",
                    self.log()
                );
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if text.lines().any(|l| l == what) {
                let status = text
                    .lines()
                    .find_map(|l| l.strip_prefix("STATUS="))
                    .unwrap_or_default();
                return status.to_owned();
            }
        }
    }

    /// Every supervisor log so far, for a failure message.
    fn log(&self) -> String {
        let mut all = String::new();
        for i in 0..self.supervisors.len() {
            let path = self.dir.0.join(format!("supervisor-{i}.log"));
            let mut text = String::new();
            let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
            all.push_str(&format!("\n--- supervisor {i} ---\n{text}"));
        }
        all
    }

    fn status(&self) -> handoff_supervisor::Status {
        let line = client::status(&self.trigger).unwrap();
        match Reply::parse(&line) {
            Ok(Reply::Status(s)) => s,
            other => panic!("status: {other:?} from {line}"),
        }
    }

    fn trigger(&self) -> Result<bool, String> {
        let line =
            client::trigger_with_timeout(&self.trigger, None, BOUND).map_err(|e| e.to_string())?;
        match Reply::parse(&line) {
            Ok(Reply::Handoff(h)) => Ok(h.committed),
            other => Err(format!("{other:?} from {line}")),
        }
    }

    /// The live kvd processes of this deployment, reaping the zombies
    /// among them (orphans of a killed supervisor come back to this
    /// process, a subreaper); `(pid, ppid)`.
    fn live_daemons(&self) -> Vec<(u32, u32)> {
        let needle = self.ctl.to_string_lossy().into_owned();
        let me = std::process::id();
        let mut live = Vec::new();
        for (pid, ppid, zombie) in processes_with(&needle) {
            if !zombie {
                live.push((pid, ppid));
            } else if ppid == me {
                reap(pid);
            }
        }
        // The supervisors' own command lines do not name the control
        // socket (they name the configuration), so these are kvd's.
        live
    }

    /// Waits until exactly one kvd is alive; returns it.
    fn settle_to_one(&self) -> (u32, u32) {
        let until = Instant::now() + BOUND;
        loop {
            let live = self.live_daemons();
            if live.len() == 1 {
                return live[0];
            }
            assert!(
                Instant::now() < until,
                "kvd processes still alive after the bound: {live:?}; {}",
                self.log()
            );
            for (pid, _) in live {
                if wait_gone(pid, Duration::from_millis(50)) {
                    break;
                }
            }
        }
    }

    fn load(&self, seed: u64) -> LoadGen {
        let mut cfg = LoadConfig::new(self.addr);
        cfg.clients = 4;
        cfg.seed = seed;
        loadgen::start(cfg)
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        for c in &mut self.supervisors {
            let _ = c.kill();
            let _ = c.wait();
        }
        let needle = self.ctl.to_string_lossy().into_owned();
        for (pid, _, _) in processes_with(&needle) {
            let _ = send_signal(pid, Signal::Kill);
            wait_gone(pid, BOUND);
            reap(pid);
        }
    }
}

fn assert_writes_flow(load: &LoadGen, more: u64, what: &str) {
    let now = load.progress().writes_acked;
    assert!(
        load.wait_for_acks(now + more, BOUND),
        "{what}: writes stopped at {now}: {:?}",
        load.progress()
    );
}

/// Kills the supervisor at `point` (`None`: while idle) under load, starts
/// it again, and checks everything the module docs list.
fn crash_and_adopt(runtime: &str, point: Option<&str>) {
    let what = format!("{runtime} {}", point.unwrap_or("idle"));
    let mut d = Deployment::new("sup-crash", runtime);
    let marker = d.dir.0.join("marker");
    let marker_text = marker.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = match point {
        Some(p) => vec![
            ("HANDOFF_CRASH_AT", p),
            ("HANDOFF_CRASH_MARKER", marker_text.as_str()),
        ],
        None => Vec::new(),
    };
    let (first, _) = d.start_supervisor(&env);
    let incumbent = d.status().incumbent_pid.expect("a daemon serves");
    let load = d.load(7);
    assert_writes_flow(&load, 50, &what);

    match point {
        None => send_signal(first, Signal::Kill).unwrap(),
        Some(p) => {
            // The handoff's answer never comes: the supervisor dies in it.
            assert!(d.trigger().is_err(), "{what}: a handoff answered");
            let status = wait_exit(&mut d.supervisors[0], BOUND).expect("it ends");
            assert_eq!(status.code(), Some(99), "{what}: it must crash there");
            assert_eq!(std::fs::read_to_string(&marker).unwrap(), p);
        }
    }
    let status = wait_exit(&mut d.supervisors[0], BOUND).expect("the supervisor is dead");
    assert!(!status.success(), "{what}: {status}");
    // The kvd processes alive right after the crash: the one serving after
    // the restart must be one of them (not restarted).
    // (After `Commit` the incumbent may be gone already.)
    let at_crash: Vec<u32> = d.live_daemons().into_iter().map(|(p, _)| p).collect();

    let (second, ready) = d.start_supervisor(&[]);
    assert!(ready.contains("(adopted)"), "{what}: READY says {ready:?}");
    let (survivor, parent) = d.settle_to_one();
    assert!(
        at_crash.contains(&survivor),
        "{what}: {survivor} serves, but only {at_crash:?} ran at the crash: it was restarted"
    );
    assert_ne!(parent, second, "{what}: the new supervisor started kvd");
    let st = d.status();
    assert_eq!(st.incumbent_pid, Some(survivor), "{what}: status {st:?}");
    assert_eq!(st.answering, Some(true), "{what}: status {st:?}");
    if matches!(
        point,
        Some("supervisor-after-ready-received" | "supervisor-after-commit-sent")
    ) {
        assert_ne!(
            survivor, incumbent,
            "{what}: the Ready successor must serve"
        );
    }
    assert_writes_flow(&load, 50, &what);

    // The adopted daemon is handed off like our own.
    assert_eq!(d.trigger(), Ok(true), "{what}: {}", d.log());
    let after = d.status().incumbent_pid.unwrap();
    assert_ne!(after, survivor, "{what}");
    assert_writes_flow(&load, 50, &what);
    let report = load.stop();
    let verified = loadgen::verify(d.addr, &report.acked);
    assert!(report.writes_acked > 0, "{what}");
    assert_eq!(
        report.requests_failed, 0,
        "{what}: requests without an answer (a refused connect counts): {:?}",
        report.problems
    );
    assert_eq!(report.get_mismatches, 0, "{what}: {:?}", report.problems);
    assert_eq!(
        (verified.writes_lost, verified.unanswered),
        (0, 0),
        "{what}: {:?}",
        verified.problems
    );

    // SIGTERM stops the service and everything it adopted.
    send_signal(second, Signal::Terminate).unwrap();
    let status = wait_exit(&mut d.supervisors[1], BOUND).expect("it stops");
    assert!(status.success(), "{what}: {status}; {}", d.log());
    let until = Instant::now() + BOUND;
    while !d.live_daemons().is_empty() {
        let left: Vec<(u32, u32)> = d.live_daemons();
        assert!(Instant::now() < until, "{what}: left behind: {left:?}");
        wait_gone(left[0].0, Duration::from_millis(100));
    }
    eprintln!(
        "{what}: survivor {survivor} ({}), {} writes acked",
        if survivor == incumbent {
            "the incumbent"
        } else {
            "the successor"
        },
        report.writes_acked
    );
}

fn every_step(runtime: &str) {
    let _serial = serial();
    become_subreaper();
    crash_and_adopt(runtime, None);
    for point in supervisor_points() {
        crash_and_adopt(runtime, Some(point));
    }
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_std_at_every_step() {
    every_step("std");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_mio_at_every_step() {
    every_step("mio");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_smol_at_every_step() {
    every_step("smol");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_tokio_at_every_step() {
    every_step("tokio");
}
