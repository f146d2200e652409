//! One deployment of kvd under the supervisor operators run
//! (`handoff-supervisor`, here as `handoff-demo supervisor`), with the
//! notify socket a test binds in systemd's place: the supervisor's state
//! changes and its fd store, kept as systemd keeps it and passed back at a
//! restart as systemd passes it.

use std::ffi::OsString;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{BOUND, TempDir, processes_with, reap};
use handoff_demo::loadgen::{self, LoadConfig, LoadGen};
use handoff_std::Signal;
use handoff_std::os::fdpass::{MAX_FDS, identity, recv_with_fds};
use handoff_std::os::process::{
    ChildProcess, ExitWatch, poll_readable, send_signal, wait_exit, wait_gone,
};
use handoff_std::os::spawn::{ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_supervisor::HandoffReply;
use handoff_supervisor::client::{self, Reply};

/// One deployment: a configuration, kvd on `runtime`, a notify socket.
pub(crate) struct Deployment {
    pub(crate) dir: TempDir,
    pub(crate) config: PathBuf,
    pub(crate) trigger: PathBuf,
    pub(crate) ctl: PathBuf,
    pub(crate) addr: SocketAddr,
    pub(crate) runtime: String,
    pub(crate) notify: UnixDatagram,
    pub(crate) notify_path: PathBuf,
    /// Every supervisor started, to be killed if the test fails midway: a
    /// plain `Command`'s child, or the unforked spawn's when it was passed
    /// the store.
    pub(crate) supervisors: Vec<Box<dyn ChildProcess + Send + Sync>>,
    /// The service manager's file-descriptor store, as systemd keeps it:
    /// what the supervisors sent with `FDSTORE=1`, by `FDNAME=`, one entry
    /// per socket.
    pub(crate) store: Vec<(String, OwnedFd)>,
}

impl Deployment {
    /// A deployment whose handoffs go through 200 ms of probation.
    pub(crate) fn new(tag: &str, runtime: &str) -> Deployment {
        Deployment::with_config(tag, runtime, "probation_ms = 200\n")
    }

    /// A deployment with `extra` added to its configuration's top level
    /// (it must set `probation_ms`).
    pub(crate) fn with_config(tag: &str, runtime: &str, extra: &str) -> Deployment {
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
        let notify_path = dir.0.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        let d = Deployment {
            dir,
            config,
            trigger,
            ctl,
            addr,
            runtime: runtime.to_owned(),
            notify,
            notify_path,
            supervisors: Vec::new(),
            store: Vec::new(),
        };
        d.rewrite_config(extra);
        d
    }

    /// Writes the configuration again with `extra` (top-level keys, then
    /// tables; `{addr}` in it becomes kvd's address), for the next
    /// supervisor started.
    pub(crate) fn rewrite_config(&self, extra: &str) {
        let text = format!(
            "control_socket = {ctl:?}\n\
             trigger_socket = {trigger:?}\n\
             binary = {bin:?}\n\
             args = [\"--control-socket\", {ctl:?}, \"--data-dir\", {data:?}, \
                     \"--version\", \"v1\", \"--runtime\", {runtime:?}]\n\
             journal = {journal:?}\n\
             deadline_secs = 20\n\
             drain_grace_secs = 10\n\
             {extra}\n\
             [[listeners]]\n\
             name = \"kv\"\n\
             addr = \"{addr}\"\n",
            ctl = self.ctl,
            trigger = self.trigger,
            bin = env!("CARGO_BIN_EXE_kvd"),
            data = self.dir.0.join("data"),
            journal = self.dir.0.join("journal"),
            runtime = self.runtime,
            addr = self.addr,
            extra = extra.replace("{addr}", &self.addr.to_string()),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts the supervisor with `env` added, and waits for its
    /// `READY=1`; returns its pid and the status line it sent with it.
    pub(crate) fn start_supervisor(&mut self, env: &[(&str, &str)]) -> (u32, String) {
        let argv = [
            env!("CARGO_BIN_EXE_handoff-demo"),
            "supervisor",
            "run",
            "--config",
        ]
        .map(OsString::from)
        .into_iter()
        .chain([self.config.clone().into_os_string()])
        .collect();
        self.spawn_supervisor(argv, env, false)
    }

    /// Starts the supervisor as systemd restarts a unit whose fd store
    /// holds sockets: each at 3.. with `LISTEN_FDS`, `LISTEN_FDNAMES` (the
    /// `FDNAME=`s) and `LISTEN_PID` set to the supervisor's own pid (by a
    /// shell that then execs it, keeping its pid); then waits for its
    /// `READY=1`.
    pub(crate) fn start_supervisor_from_store(&mut self) -> (u32, String) {
        assert!(!self.store.is_empty(), "nothing in the fd store to pass");
        let argv = [
            "/bin/sh",
            "-c",
            "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_handoff-demo"),
            "supervisor",
            "run",
            "--config",
        ]
        .map(OsString::from)
        .into_iter()
        .chain([self.config.clone().into_os_string()])
        .collect();
        self.spawn_supervisor(argv, &[], true)
    }

    /// Runs `argv` (the program first) with `env` and the notification
    /// socket, its log in the deployment's directory: with the store's
    /// sockets passed if `pass_store`, else as a plain command (no
    /// `LISTEN_FDS` at all).
    fn spawn_supervisor(
        &mut self,
        argv: Vec<OsString>,
        env: &[(&str, &str)],
        pass_store: bool,
    ) -> (u32, String) {
        let log = std::fs::File::create(
            self.dir
                .0
                .join(format!("supervisor-{}.log", self.supervisors.len())),
        )
        .unwrap();
        let (program, args) = argv.split_first().expect("a program");
        let child: Box<dyn ChildProcess + Send + Sync> = if pass_store {
            let mut launch = Launch::new(program);
            launch
                .args(args)
                .env("NOTIFY_SOCKET", &self.notify_path)
                .envs(env.iter().copied())
                .stdin(ChildStdio::Null)
                .stdout(ChildStdio::Null)
                .stderr(log);
            let passed: Vec<PassedListener<'_>> = self
                .store
                .iter()
                .map(|(name, fd)| PassedListener {
                    name,
                    fd: fd.as_fd(),
                })
                .collect();
            // spawn_cold_vfork sets LISTEN_FDS and LISTEN_FDNAMES, and never
            // LISTEN_PID (the shell does).
            Box::new(spawn_cold_vfork(launch, &passed).unwrap())
        } else {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env("NOTIFY_SOCKET", &self.notify_path)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            Box::new(cmd.spawn().unwrap())
        };
        let pid = child.id();
        self.supervisors.push(child);
        let status = self.wait_notification("READY=1", pid);
        (pid, status)
    }

    /// The next notification holding `what` from supervisor `pid`; its
    /// `STATUS=` text. Fails at once if the supervisor exits first.
    pub(crate) fn wait_notification(&mut self, what: &str, pid: u32) -> String {
        self.wait_for_notification(what, pid, |text| text.lines().any(|l| l == what))
    }

    /// The next notification from supervisor `pid` whose `STATUS=` text
    /// holds `needle`; that text.
    pub(crate) fn wait_status(&mut self, needle: &str, pid: u32) -> String {
        self.wait_for_notification(needle, pid, |text| {
            text.lines().any(|l| {
                l.strip_prefix("STATUS=")
                    .is_some_and(|s| s.contains(needle))
            })
        })
    }

    fn wait_for_notification(
        &mut self,
        what: &str,
        pid: u32,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
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
            let Ok(got) = recv_with_fds(self.notify.as_fd(), &mut buf, MAX_FDS) else {
                assert!(
                    !ready[1],
                    "supervisor {pid} exited before {what}; its log: {}",
                    self.log()
                );
                continue;
            };
            assert!(!got.truncated, "a notification's descriptors were cut off");
            let text = String::from_utf8_lossy(&buf[..got.len]).into_owned();
            self.keep(&text, got.fds);
            if wanted(&text) {
                let status = text
                    .lines()
                    .find_map(|l| l.strip_prefix("STATUS="))
                    .unwrap_or_default();
                return status.to_owned();
            }
        }
    }

    /// What systemd does with a notification's fd-store assignments:
    /// `FDSTOREREMOVE=1` drops the entries named `FDNAME=`, `FDSTORE=1`
    /// keeps the descriptors sent with it under that name (`stored` when
    /// none is given), a socket already kept being kept once. Descriptors
    /// sent without `FDSTORE=1` are closed.
    fn keep(&mut self, text: &str, fds: Vec<OwnedFd>) {
        let has = |a: &str| text.lines().any(|l| l == a);
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("FDNAME="))
            .unwrap_or("stored")
            .to_owned();
        if has("FDSTOREREMOVE=1") {
            self.store.retain(|(n, _)| *n != name);
        }
        if !has("FDSTORE=1") {
            return;
        }
        for fd in fds {
            let id = identity(fd.as_fd()).unwrap();
            if !self
                .store
                .iter()
                .any(|(_, kept)| identity(kept.as_fd()).unwrap() == id)
            {
                self.store.push((name.clone(), fd));
            }
        }
    }

    /// The names in the fd store, with the identity of each socket.
    pub(crate) fn stored(&self) -> Vec<(String, (u64, u64))> {
        self.store
            .iter()
            .map(|(n, fd)| (n.clone(), identity(fd.as_fd()).unwrap()))
            .collect()
    }

    /// Every supervisor log so far, for a failure message.
    pub(crate) fn log(&self) -> String {
        let mut all = String::new();
        for i in 0..self.supervisors.len() {
            let path = self.dir.0.join(format!("supervisor-{i}.log"));
            let mut text = String::new();
            let _ = std::fs::File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
            all.push_str(&format!("\n--- supervisor {i} ---\n{text}"));
        }
        all
    }

    pub(crate) fn status(&self) -> handoff_supervisor::Status {
        let line = client::status(&self.trigger).unwrap();
        match Reply::parse(&line) {
            Ok(Reply::Status(s)) => s,
            other => panic!("status: {other:?} from {line}"),
        }
    }

    /// A build of kvd run with `env` (shell assignments) set and `flags`
    /// added, as a script in the deployment's directory: how a test names
    /// a faulty build in `allowed_binaries`, as an operator names a build.
    pub(crate) fn build(&self, name: &str, env: &str, flags: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.0.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n{env} exec {:?} \"$@\" {flags}\n",
                env!("CARGO_BIN_EXE_kvd")
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Asks for a handoff to `binary` (the configured one if `None`) and
    /// returns the parsed reply.
    pub(crate) fn handoff_to(&self, binary: Option<&std::path::Path>) -> HandoffReply {
        let line = client::trigger_with_timeout(&self.trigger, binary, BOUND).unwrap();
        match Reply::parse(&line) {
            Ok(Reply::Handoff(h)) => h,
            other => panic!("{other:?} from {line}; {}", self.log()),
        }
    }

    /// Waits until `status` names a successor on probation; returns its
    /// pid. Nothing announces the start of probation, so `status` is
    /// asked again and again (a round trip is the pause), within the bound.
    pub(crate) fn on_probation(&self) -> u32 {
        let until = Instant::now() + BOUND;
        loop {
            if let Some(pid) = self.status().on_probation {
                return pid;
            }
            assert!(
                Instant::now() < until,
                "no successor on probation; {}",
                self.log()
            );
        }
    }

    pub(crate) fn trigger(&self) -> Result<bool, String> {
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
    pub(crate) fn live_daemons(&self) -> Vec<(u32, u32)> {
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
    pub(crate) fn settle_to_one(&self) -> (u32, u32) {
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

    pub(crate) fn load(&self, seed: u64) -> LoadGen {
        let mut cfg = LoadConfig::new(self.addr);
        cfg.clients = LOAD_CLIENTS;
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
        super::kill_daemons_of(&self.ctl);
    }
}

impl Deployment {
    /// The load's writes checked against kvd: no wrong `GET` answer, no
    /// acknowledged write lost or left unanswered.
    pub(crate) fn assert_nothing_lost(&self, report: &loadgen::LoadReport, what: &str) {
        let verified = loadgen::verify(self.addr, &report.acked);
        assert!(report.writes_acked > 0, "{what}");
        assert_eq!(report.get_mismatches, 0, "{what}: {:?}", report.problems);
        assert_eq!(
            (verified.writes_lost, verified.unanswered),
            (0, 0),
            "{what}: {:?}",
            verified.problems
        );
    }

    /// Every request of the load answered (a refused connect is a failed
    /// request).
    pub(crate) fn assert_every_request_answered(&self, report: &loadgen::LoadReport, what: &str) {
        assert_eq!(
            report.requests_failed, 0,
            "{what}: requests without an answer (a refused connect counts): {:?}",
            report.problems
        );
    }

    /// `SIGTERM` to supervisor `i`: it exits 0 and leaves no kvd behind.
    pub(crate) fn stop(&mut self, i: usize, what: &str) {
        send_signal(self.supervisors[i].id(), Signal::Terminate).unwrap();
        let status = wait_exit(&mut self.supervisors[i], BOUND).expect("it stops");
        assert!(status.success(), "{what}: {status}; {}", self.log());
        let until = Instant::now() + BOUND;
        while let Some(&(pid, _)) = self.live_daemons().first() {
            assert!(Instant::now() < until, "{what}: kvd {pid} left behind");
            wait_gone(pid, Duration::from_millis(100));
        }
    }
}

/// How many clients [`Deployment::load`] runs: at most this many requests
/// are in flight at any moment.
pub(crate) const LOAD_CLIENTS: usize = 4;

pub(crate) fn assert_writes_flow(load: &LoadGen, more: u64, what: &str) {
    let now = load.progress().writes_acked;
    assert!(
        load.wait_for_acks(now + more, BOUND),
        "{what}: writes stopped at {now}: {:?}",
        load.progress()
    );
}
