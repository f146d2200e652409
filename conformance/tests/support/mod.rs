//! What the conformance suite needs: the runtimes, a supervisor in each of
//! them, and a rig of real processes (this test binary, re-executed as the
//! daemon).
#![allow(dead_code, unreachable_pub)]

pub mod daemon;
pub mod service;

use handoff_std::PerformHandoff;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use handoff_mio::{MioSupervisor, SupervisorEvent};
// Not every test binary that includes this module uses both.
#[allow(unused_imports)]
pub use handoff_std::os::process::{wait_exit, wait_gone};
use handoff_std::os::spawn::{Child, ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_std::{DataDirLock, HandoffOutcome, SpawnSpec, Supervisor};
use mio::{Events, Poll};

pub const BOUND: Duration = Duration::from_secs(20);

/// A runtime an adapter runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Std,
    Mio,
    Smol,
    /// tokio's multi-thread runtime, the role's future spawned on a worker.
    Tokio,
    /// tokio's current-thread runtime.
    TokioCt,
}

impl Runtime {
    pub fn parse(s: &str) -> Runtime {
        match s {
            "mio" => Runtime::Mio,
            "smol" => Runtime::Smol,
            "tokio" => Runtime::Tokio,
            "tokio-ct" => Runtime::TokioCt,
            _ => Runtime::Std,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Std => "std",
            Runtime::Mio => "mio",
            Runtime::Smol => "smol",
            Runtime::Tokio => "tokio",
            Runtime::TokioCt => "tokio-ct",
        }
    }

    /// Two letters, for the names of a test's files.
    pub fn code(self) -> &'static str {
        match self {
            Runtime::Std => "st",
            Runtime::Mio => "mi",
            Runtime::Smol => "sm",
            Runtime::Tokio => "tk",
            Runtime::TokioCt => "tc",
        }
    }

    /// A tokio runtime of this flavour (`Tokio` or `TokioCt`).
    pub fn tokio(self) -> tokio::runtime::Runtime {
        let mut b = match self {
            Runtime::TokioCt => tokio::runtime::Builder::new_current_thread(),
            _ => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(2);
                b
            }
        };
        b.enable_all().build().expect("a tokio runtime")
    }

    /// Runs `f` to its end on this tokio flavour: spawned on a worker
    /// (which needs it `Send`) on the multi-thread runtime, on this thread
    /// on the current-thread one.
    pub fn run_tokio<F>(self, f: F) -> F::Output
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let rt = self.tokio();
        match self {
            Runtime::TokioCt => rt.block_on(f),
            _ => rt
                .block_on(async { tokio::spawn(f).await })
                .expect("the spawned task ended"),
        }
    }
}

/// The arguments that make this test binary the daemon: run only the
/// `daemon_entry` test, which reads `HANDOFF_DAEMON_ARGS`.
pub fn daemon_command(args: &str) -> Launch {
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
        .env("HANDOFF_DAEMON_ARGS", args);
    launch
}

fn serve_args(runtime: Runtime, control: &Path, data: &Path) -> String {
    format!(
        "serve --runtime {} --control-socket {} --data-dir {}",
        runtime.name(),
        control.display(),
        data.display()
    )
}

/// This binary as a successor in `runtime`, with `flags` in `TEST_DAEMON`.
pub fn successor_spec(runtime: Runtime, control: &Path, data: &Path, flags: &str) -> SpawnSpec {
    SpawnSpec::new(std::env::current_exe().unwrap())
        .arg("daemon_entry")
        .arg("--exact")
        .arg("--ignored")
        .arg("--nocapture")
        .arg("--quiet")
        .arg("--test-threads=1")
        .env("HANDOFF_DAEMON_ARGS", serve_args(runtime, control, data))
        .env("TEST_DAEMON", flags)
}

/// One handoff with a supervisor of `runtime`.
pub fn run_handoff(runtime: Runtime, sup: &Arc<Supervisor>, spec: SpawnSpec) -> HandoffOutcome {
    match runtime {
        Runtime::Std => sup.perform_handoff(spec).unwrap(),
        Runtime::Smol => async_io::block_on(handoff_smol::perform_handoff(sup, spec)).unwrap(),
        Runtime::Tokio | Runtime::TokioCt => {
            let sup = sup.clone();
            runtime
                .run_tokio(async move { handoff_tokio::perform_handoff(&sup, spec).await })
                .unwrap()
        }
        Runtime::Mio => {
            let mut poll = Poll::new().unwrap();
            let mut events = Events::with_capacity(16);
            let mut ms = MioSupervisor::new(10, 1);
            let id = ms.add_service(sup.clone());
            ms.start_handoff(poll.registry(), id, spec).unwrap();
            loop {
                if let Some(SupervisorEvent::Finished(_, outcome)) = ms.poll_event() {
                    return *outcome;
                }
                let t = ms
                    .poll_timeout()
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()));
                if let Err(e) = poll.poll(&mut events, t) {
                    // epoll_wait is not restarted after a stop and continue.
                    assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
                }
                for event in &events {
                    ms.handle_event(poll.registry(), event);
                }
                ms.handle_timeout(poll.registry());
            }
        }
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from("/tmp").join(format!(
            "hc-{tag}-{}-{}",
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

/// A cold-started incumbent of one runtime, on a port the supervisor holds.
pub struct Rig {
    pub dir: TempDir,
    pub ctl: PathBuf,
    pub data: PathBuf,
    pub addr: SocketAddr,
    pub supervisor: Arc<Supervisor>,
    pub incumbent: Child,
    pub spawned: Vec<Child>,
}

impl Rig {
    pub fn start(tag: &str, runtime: Runtime, flags: &str) -> Rig {
        Rig::start_with_env(tag, runtime, flags, &[])
    }

    /// [`Rig::start`], the incumbent started with `env` too.
    pub fn start_with_env(
        tag: &str,
        runtime: Runtime,
        flags: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Rig {
        let dir = TempDir::new(tag);
        let ctl = dir.0.join("ctl.sock");
        let data = dir.0.join("data");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut cmd = daemon_command(&serve_args(runtime, &ctl, &data));
        cmd.env("TEST_DAEMON", flags)
            .envs(env.iter().copied())
            .stdout(ChildStdio::Piped);
        let mut incumbent = spawn_cold_vfork(
            cmd,
            &[PassedListener {
                name: "main",
                fd: listener.as_fd(),
            }],
        )
        .unwrap();
        let stdout = incumbent.stdout.take().unwrap();
        assert!(
            line_with(stdout, "ready ").is_some(),
            "the {} incumbent starts",
            runtime.name()
        );
        let supervisor = Arc::new(
            Supervisor::new(&ctl)
                .unwrap()
                .with_listener("main", listener)
                .unwrap()
                .with_journal(dir.0.join("journal")),
        );
        // As the supervisor binary does for the daemon it started.
        supervisor.set_incumbent_pid(Some(incumbent.id()));
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

    pub fn spec(&self, runtime: Runtime, flags: &str) -> SpawnSpec {
        successor_spec(runtime, &self.ctl, &self.data, flags)
    }

    pub fn request(&self, line: &str) -> String {
        let mut s = TcpStream::connect(self.addr).expect("the port never refuses");
        s.set_read_timeout(Some(BOUND)).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        reply.trim().to_owned()
    }

    pub fn serving_pid(&self) -> u32 {
        let reply = self.request("PING");
        reply
            .strip_prefix("PONG ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"))
    }

    pub fn lock_holder(&self) -> Option<u32> {
        DataDirLock::recorded_holder(&self.data)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in self
            .spawned
            .iter_mut()
            .chain(std::iter::once(&mut self.incumbent))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads a daemon's output (libtest prints its own first) until a line
/// holds `needle`; returns the line from `needle` on, within [`BOUND`].
pub fn line_with(stdout: std::process::ChildStdout, needle: &'static str) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // Keeps reading to the end, so the daemon never writes to a closed
        // pipe.
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            // libtest may have printed "test daemon_entry ... " before it.
            if let Some(i) = line.find(needle) {
                let _ = tx.send(line[i..].trim().to_owned());
            }
            line.clear();
        }
    });
    rx.recv_timeout(BOUND).ok()
}

/// Live processes (not zombies) started for this rig's daemon: their
/// environment names its control socket.
pub fn daemons_of(rig: &Rig) -> Vec<u32> {
    let needle = format!("--control-socket {}", rig.ctl.display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env);
        if !zombie && env.contains("HANDOFF_DAEMON_ARGS=serve") && env.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}
