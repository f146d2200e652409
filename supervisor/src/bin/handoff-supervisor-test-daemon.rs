//! The daemon the supervisor's tests supervise: a real handoff-std
//! incumbent or successor that answers `PING` with `PONG <pid>` on the
//! inherited TCP listener, so a test can tell which process serves.
//!
//! `handoff-supervisor-test-daemon --control-socket P --data-dir D
//! [--listener NAME]` (the listener defaults to `main`). With
//! `SUPERVISOR_TEST_DAEMON_EXIT=1` in its environment it exits at once with
//! status 3, before anything else: a successor that fails. With
//! `SUPERVISOR_TEST_DAEMON_SEAL_ERROR=<text>` its seal fails with that text
//! (it keeps its lock and serves on).

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use handoff_std::os::listeners::Mode;
use handoff_std::os::process::poll_readable;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, ReadyReport, Role, SealProgress,
    SealReport, detect_role,
};

/// The variable that makes the daemon exit at once.
const EXIT_AT_ONCE: &str = "SUPERVISOR_TEST_DAEMON_EXIT";

/// The variable whose text the daemon's seal fails with.
const SEAL_ERROR: &str = "SUPERVISOR_TEST_DAEMON_SEAL_ERROR";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn die(what: &str, e: &dyn std::fmt::Display) -> ! {
    eprintln!("test-daemon {}: {what}: {e}", std::process::id());
    std::process::exit(2)
}

/// Whether new connections are taken; drain clears it, resume sets it.
struct Daemon {
    accepting: AtomicBool,
    wake: UnixStream,
}

impl Daemon {
    fn kick(&self) {
        let _ = (&self.wake).write(&[1]);
    }

    fn accept_loop(&self, listener: &TcpListener, wake: &UnixStream) {
        if let Err(e) = listener.set_nonblocking(true) {
            die("listener", &e);
        }
        loop {
            // While drained, only the wake-up is watched: a pending
            // connection (the successor's to take) must not spin this loop.
            let accepting = self.accepting.load(Ordering::SeqCst);
            let fds = if accepting {
                vec![wake.as_fd(), listener.as_fd()]
            } else {
                vec![wake.as_fd()]
            };
            let ready = poll_readable(&fds, None).unwrap_or_default();
            if ready.first() == Some(&true) {
                let mut sink = [0u8; 64];
                let _ = (&*wake).read(&mut sink);
            }
            if accepting
                && ready.get(1) == Some(&true)
                && let Ok((stream, _)) = listener.accept()
            {
                std::thread::spawn(move || serve_conn(stream));
            }
        }
    }
}

fn serve_conn(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let reply = match line.trim() {
            "PING" => format!("PONG {}", std::process::id()),
            other => format!("ERR unknown command {other:?}"),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
        line.clear();
    }
}

impl Drainable for Daemon {
    fn drain(
        &self,
        _deadline: std::time::Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        self.accepting.store(false, Ordering::SeqCst);
        self.kick();
        Ok(DrainReport {
            open_conns_remaining: 0,
            accept_closed: true,
        })
    }

    fn seal(&self, progress: &SealProgress) -> Result<SealReport, HookError> {
        if let Some(text) = std::env::var_os(SEAL_ERROR) {
            return Err(text.to_string_lossy().into_owned().into());
        }
        progress.report(1, 1, 0);
        Ok(SealReport {
            last_revision_per_shard: vec![0],
            data_dir_fingerprint: [0; 32],
        })
    }

    fn resume_after_abort(&self) -> Result<(), HookError> {
        self.accepting.store(true, Ordering::SeqCst);
        self.kick();
        Ok(())
    }
}

fn main() {
    if std::env::var_os(EXIT_AT_ONCE).is_some() {
        std::process::exit(3);
    }
    let args: Vec<String> = std::env::args().collect();
    let role = detect_role().unwrap_or_else(|e| die("role", &e));
    let ctl = PathBuf::from(arg(&args, "--control-socket").expect("--control-socket"));
    let data = PathBuf::from(arg(&args, "--data-dir").expect("--data-dir"));
    let name = arg(&args, "--listener").unwrap_or_else(|| "main".into());

    let (incumbent, listener): (Incumbent, TcpListener) = match role {
        Role::ColdStart { mut listeners } => {
            let listener = listeners
                .take_tcp(&name, Mode::Blocking)
                .unwrap_or_else(|e| die("listener", &e));
            let lock =
                DataDirLock::acquire_or_break_stale(&data).unwrap_or_else(|e| die("lock", &e));
            let incumbent =
                Incumbent::bind_cold_start(&ctl, lock).unwrap_or_else(|e| die("control", &e));
            (incumbent, listener)
        }
        Role::Successor(successor) => {
            let handshook = successor
                .handshake(b"supervisor-test-daemon")
                .unwrap_or_else(|e| die("handshake", &e));
            let mut begun = handshook
                .wait_for_begin(&data)
                .unwrap_or_else(|e| die("begin", &e));
            let listener = begun
                .listeners()
                .take_tcp(&name, Mode::Blocking)
                .unwrap_or_else(|e| die("listener", &e));
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let readiness = ReadyReport {
                listening_on: vec![addr],
                healthz_ok: true,
                advertised_revision_per_shard: vec![0],
            };
            let incumbent = begun
                .announce_and_bind(readiness, &ctl)
                .unwrap_or_else(|e| die("ready", &e));
            (incumbent, listener)
        }
    };
    let (wake_rx, wake_tx) = UnixStream::pair().unwrap_or_else(|e| die("wake", &e));
    let _ = wake_rx.set_nonblocking(true);
    let _ = wake_tx.set_nonblocking(true);
    let daemon = Arc::new(Daemon {
        accepting: AtomicBool::new(true),
        wake: wake_tx,
    });
    {
        let daemon = daemon.clone();
        std::thread::spawn(move || daemon.accept_loop(&listener, &wake_rx));
    }
    match incumbent.serve(&*daemon) {
        Ok(_) => std::process::exit(0),
        Err(e) => die("serve", &e),
    }
}
