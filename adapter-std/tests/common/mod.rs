//! A real deployment in miniature for the process tests: a TCP listener
//! held by the test (the supervisor), the test daemon cold-started on it,
//! and helpers that wait on events with a bound (never a sleep).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use handoff_std::os::process::{wait_exit, wait_gone};
use handoff_std::os::spawn::{Child, ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_std::{DataDirLock, SpawnSpec, Supervisor};

/// Long enough for a loaded CI machine, short enough to fail fast.
pub const BOUND: Duration = Duration::from_secs(20);

pub fn daemon_bin() -> &'static str {
    env!("CARGO_BIN_EXE_handoff-test-daemon")
}

/// A directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        // Short: Unix socket paths must fit in 108 bytes.
        let p = PathBuf::from("/tmp").join(format!(
            "ho-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads one line from a child's stdout within `BOUND`.
pub fn read_line_bounded(reader: BufReader<std::process::ChildStdout>) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(BOUND).ok().filter(|l| !l.is_empty())
}

/// The system under test.
pub struct Rig {
    pub dir: TempDir,
    pub ctl: PathBuf,
    pub data: PathBuf,
    pub addr: SocketAddr,
    pub supervisor: Supervisor,
    /// The cold-started incumbent (our child).
    pub incumbent: Child,
    /// Every child to stop at the end.
    pub spawned: Vec<Child>,
}

impl Rig {
    /// A cold-started incumbent serving on a fresh loopback port.
    pub fn start(tag: &str) -> Rig {
        Rig::start_with(tag, &[])
    }

    pub fn start_with(tag: &str, env: &[(&str, &str)]) -> Rig {
        Rig::start_configured(tag, env, handoff_std::SupervisorConfig::default())
    }

    /// With the supervisor's protocol timings set to `config`.
    pub fn start_configured(
        tag: &str,
        env: &[(&str, &str)],
        config: handoff_std::SupervisorConfig,
    ) -> Rig {
        let dir = TempDir::new(tag);
        let ctl = dir.0.join("ctl.sock");
        let data = dir.0.join("data");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let incumbent = cold_start(&ctl, &data, &listener, env);
        let supervisor = Supervisor::new(&ctl)
            .unwrap()
            .with_listener("main", listener)
            .unwrap()
            .with_journal(dir.0.join("journal"))
            .with_config(config);
        Rig {
            dir,
            ctl,
            data,
            addr,
            supervisor,
            incumbent,
            spawned: Vec::new(),
        }
    }

    /// The successor: the test daemon again, with `flags` in `TEST_DAEMON`.
    pub fn spec(&self, flags: &str) -> SpawnSpec {
        SpawnSpec::new(daemon_bin())
            .arg("--control-socket")
            .arg(&self.ctl)
            .arg("--data-dir")
            .arg(&self.data)
            .env("TEST_DAEMON", flags)
    }

    /// Sends one request on a new connection; the answer, within `BOUND`.
    pub fn request(&self, line: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("the port never refuses");
        s.set_read_timeout(Some(BOUND)).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }

    /// The pid of the process that answers on the port.
    pub fn serving_pid(&self) -> u32 {
        let reply = self.request("PING");
        reply
            .strip_prefix("PONG ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
    }

    /// The pid the data-dir pidfile names.
    pub fn lock_holder(&self) -> Option<u32> {
        DataDirLock::recorded_holder(&self.data)
    }

    /// Whether the data-dir lock is free right now (tried without waiting).
    pub fn lock_is_free(&self) -> bool {
        DataDirLock::acquire(&self.data).is_ok()
    }

    /// The incumbent's pid.
    pub fn incumbent_pid(&self) -> u32 {
        self.incumbent.id()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in self
            .spawned
            .iter_mut()
            .chain(std::iter::once(&mut self.incumbent))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the test daemon cold on `listener`, as a supervisor would, and
/// waits for it to say it serves.
pub fn cold_start(ctl: &Path, data: &Path, listener: &TcpListener, env: &[(&str, &str)]) -> Child {
    let mut launch = Launch::new(daemon_bin());
    launch
        .arg("--control-socket")
        .arg(ctl)
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().copied())
        .stdout(ChildStdio::Piped);
    let mut child = spawn_cold_vfork(
        launch,
        &[PassedListener {
            name: "main",
            fd: listener.as_fd(),
        }],
    )
    .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = read_line_bounded(stdout).expect("the daemon starts within the bound");
    assert!(line.starts_with("ready "), "{line}");
    child
}
