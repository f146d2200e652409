//! A small real daemon for the process-level tests: it serves a counter over
//! TCP on the inherited listener `main`, keeps the counter in its data dir,
//! and does whatever `TEST_DAEMON` tells it to do wrong. Built only with the
//! `crash-points` feature (which the test build turns on).
//!
//! Protocol, one line each: `PING` → `PONG <pid>`; `INC` → `OK <n>` once
//! the new value is fsynced, or `RETRY` while draining or sealed.
//!
//! `TEST_DAEMON` is a comma list: `startup-ms=N`, `crash-before-hello`,
//! `exit-after-begin`, `hang-after-begin`, `ignore-term`, `seal-fails`,
//! `drain-ms=N`, `seal-ms=N`, `resume-fails`, `open-until-aborted` (after
//! `Begin`, poll `aborted()` for up to 20 s, then write `aborted-seen` in the
//! data dir's parent and exit 6).
//!
//! `handoff-test-daemon supervise …` runs one handoff as a supervisor
//! process instead (for the tests that kill the supervisor).

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

use handoff_std::PerformHandoff;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use handoff_std::os::listeners::Mode;
use handoff_std::os::process::poll_readable;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, ReadyReport, Role, SealProgress,
    SealReport, ServeEnd, SpawnSpec, StateSnapshot, Supervisor, detect_role,
};

fn flag(name: &str) -> bool {
    std::env::var("TEST_DAEMON")
        .unwrap_or_default()
        .split(',')
        .any(|f| f == name)
}

fn number(name: &str) -> Option<u64> {
    let prefix = format!("{name}=");
    std::env::var("TEST_DAEMON")
        .unwrap_or_default()
        .split(',')
        .find_map(|f| f.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let code = if args.get(1).map(String::as_str) == Some("supervise") {
        supervise(&args)
    } else {
        serve(&args)
    };
    std::process::exit(code);
}

/// The counter and whether it may be written.
struct State {
    file: Option<File>,
    value: u64,
    path: PathBuf,
}

struct Daemon {
    state: Mutex<State>,
    accepting: AtomicBool,
    in_flight: Mutex<u32>,
    idle: Condvar,
    wake: Mutex<Option<std::os::unix::net::UnixStream>>,
    open_conns: AtomicU32,
}

impl Daemon {
    fn open(data_dir: &Path) -> std::io::Result<Daemon> {
        let path = data_dir.join("counter");
        let mut state = State {
            file: None,
            value: 0,
            path,
        };
        reopen(&mut state)?;
        Ok(Daemon {
            state: Mutex::new(state),
            accepting: AtomicBool::new(true),
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            wake: Mutex::new(None),
            open_conns: AtomicU32::new(0),
        })
    }

    fn handle(&self, line: &str) -> String {
        match line.trim() {
            "PING" => format!("PONG {}", std::process::id()),
            "INC" => {
                let mut st = self.state.lock().unwrap();
                let next = st.value + 1;
                let Some(file) = st.file.as_mut() else {
                    return "RETRY".into();
                };
                let ok = file.seek(SeekFrom::Start(0)).is_ok()
                    && file.write_all(format!("{next:020}").as_bytes()).is_ok()
                    && file.sync_data().is_ok();
                if !ok {
                    return "ERR write failed".into();
                }
                st.value = next;
                format!("OK {next}")
            }
            other => format!("ERR unknown command {other:?}"),
        }
    }

    fn serve_conn(self: &Arc<Self>, stream: TcpStream) {
        self.open_conns.fetch_add(1, Ordering::SeqCst);
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut out = stream;
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            {
                *self.in_flight.lock().unwrap() += 1;
            }
            let reply = self.handle(&line);
            let ok = writeln!(out, "{reply}").is_ok();
            {
                let mut n = self.in_flight.lock().unwrap();
                *n -= 1;
                self.idle.notify_all();
            }
            if !ok {
                break;
            }
            line.clear();
        }
        self.open_conns.fetch_sub(1, Ordering::SeqCst);
    }

    /// Accepts while `accepting`; a drain stops it through the wake socket.
    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let (wake_rx, wake_tx) = std::os::unix::net::UnixStream::pair().unwrap();
        *self.wake.lock().unwrap() = Some(wake_tx);
        listener.set_nonblocking(true).unwrap();
        loop {
            let ready = poll_readable(&[listener.as_fd(), wake_rx.as_fd()], None).unwrap();
            if ready[1] {
                let mut b = [0u8; 16];
                let _ = (&wake_rx).read(&mut b);
            }
            if !self.accepting.load(Ordering::SeqCst) {
                continue;
            }
            if ready[0]
                && let Ok((s, _)) = listener.accept()
            {
                let _ = s.set_nonblocking(false);
                let d = self.clone();
                std::thread::spawn(move || d.serve_conn(s));
            }
        }
    }

    fn kick(&self) {
        if let Some(w) = self.wake.lock().unwrap().as_ref() {
            let _ = (&*w).write(&[1]);
        }
    }
}

fn reopen(st: &mut State) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&st.path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    st.value = text.trim().parse().unwrap_or(0);
    st.file = Some(file);
    Ok(())
}

fn fingerprint(value: u64) -> [u8; 32] {
    let mut fp = [0u8; 32];
    for (i, chunk) in fp.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(
            &(value ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1))).to_le_bytes(),
        );
    }
    fp
}

impl Drainable for Daemon {
    fn drain(
        &self,
        _deadline: std::time::Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        self.accepting.store(false, Ordering::SeqCst);
        self.kick();
        if let Some(ms) = number("drain-ms") {
            std::thread::sleep(Duration::from_millis(ms));
        }
        let mut n = self.in_flight.lock().unwrap();
        while *n > 0 {
            n = self.idle.wait(n).unwrap();
        }
        Ok(DrainReport {
            open_conns_remaining: self.open_conns.load(Ordering::SeqCst),
            accept_closed: true,
        })
    }

    fn seal(&self, progress: &SealProgress) -> Result<SealReport, HookError> {
        if let Some(ms) = number("seal-ms") {
            std::thread::sleep(Duration::from_millis(ms));
        }
        progress.report(1, 1, 0);
        if flag("seal-fails") {
            return Err("disk full (test)".into());
        }
        let mut st = self.state.lock().unwrap();
        if let Some(file) = st.file.take() {
            file.sync_all()?;
        }
        Ok(SealReport {
            last_revision_per_shard: vec![st.value],
            data_dir_fingerprint: fingerprint(st.value),
        })
    }

    fn resume_after_abort(&self) -> Result<(), HookError> {
        if flag("resume-fails") {
            return Err("cannot reopen (test)".into());
        }
        let mut st = self.state.lock().unwrap();
        if st.file.is_none() {
            reopen(&mut st)?;
        }
        drop(st);
        self.accepting.store(true, Ordering::SeqCst);
        self.kick();
        Ok(())
    }

    fn snapshot_state(&self) -> StateSnapshot {
        let st = self.state.lock().unwrap();
        StateSnapshot {
            shard_count: 1,
            open_conns: self.open_conns.load(Ordering::SeqCst),
            last_revision_per_shard: vec![st.value],
        }
    }
}

fn serve(args: &[String]) -> i32 {
    let role = match detect_role() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("test-daemon: {e}");
            return 2;
        }
    };
    if flag("ignore-term") {
        handoff_std::os::signals::ignore_terminate();
    }
    let ctl = PathBuf::from(arg(args, "--control-socket").expect("--control-socket"));
    let data = PathBuf::from(arg(args, "--data-dir").expect("--data-dir"));
    let cold = matches!(role, Role::ColdStart { .. });
    let (incumbent, listener): (Incumbent, TcpListener) = match role {
        Role::ColdStart { mut listeners } => {
            let listener = listeners
                .take_tcp("main", Mode::Blocking)
                .expect("listener main");
            let lock = DataDirLock::acquire_or_break_stale(&data).expect("data-dir lock");
            let incumbent = Incumbent::bind_cold_start(&ctl, lock).expect("control socket");
            (incumbent, listener)
        }
        Role::Successor(successor) => {
            if let Some(ms) = number("startup-ms") {
                std::thread::sleep(Duration::from_millis(ms));
            }
            if flag("crash-before-hello") {
                return 3;
            }
            let hs = match successor.handshake(b"test-daemon") {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("test-daemon successor: {e}");
                    return 5;
                }
            };
            let mut begun = match hs.wait_for_begin(&data) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("test-daemon successor: {e}");
                    return 5;
                }
            };
            if flag("exit-after-begin") {
                return 4;
            }
            if flag("open-until-aborted") {
                // A start-up that outlasts the supervisor's deadline: the
                // library's thread must notice the `Abort` meanwhile.
                let until = std::time::Instant::now() + Duration::from_secs(20);
                while !begun.aborted() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if begun.aborted() {
                    let marker = data.parent().unwrap_or(&data).join("aborted-seen");
                    let _ = std::fs::write(marker, b"");
                }
                return 6;
            }
            if flag("hang-after-begin") {
                loop {
                    std::thread::park();
                }
            }
            let listener = begun
                .listeners()
                .take_tcp("main", Mode::Blocking)
                .expect("main");
            let addr = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let value = Daemon::open(&data)
                .map(|d| d.state.lock().unwrap().value)
                .unwrap_or(0);
            let readiness = ReadyReport {
                listening_on: vec![addr],
                healthz_ok: true,
                advertised_revision_per_shard: vec![value],
            };
            match begun.announce_and_bind(readiness, &ctl) {
                Ok(i) => (i, listener),
                Err(e) => {
                    eprintln!("test-daemon successor: {e}");
                    return 5;
                }
            }
        }
    };
    let daemon = Arc::new(Daemon::open(&data).expect("state"));
    {
        let d = daemon.clone();
        std::thread::spawn(move || d.accept_loop(listener));
    }
    if cold {
        // Whoever started us cold waits for this line.
        println!("ready {}", std::process::id());
        let _ = std::io::stdout().flush();
    }
    match incumbent.serve(&*daemon) {
        Ok(ServeEnd::Committed { .. }) => 0,
        Ok(_) => 0,
        Err(e) => {
            eprintln!("test-daemon: {e}");
            10
        }
    }
}

/// `supervise --control-socket P --binary B --data-dir D [--journal J]`:
/// one handoff, with the listener `main` inherited systemd-style.
fn supervise(args: &[String]) -> i32 {
    let ctl = PathBuf::from(arg(args, "--control-socket").expect("--control-socket"));
    let data = arg(args, "--data-dir").expect("--data-dir");
    let binary = arg(args, "--binary").expect("--binary");
    let mut env = handoff_std::os::env::take_startup_env().expect("env");
    let listener = env
        .listeners
        .take_tcp("main", Mode::Blocking)
        .expect("main");
    let mut sup = Supervisor::new(&ctl)
        .and_then(|s| s.with_listener("main", listener))
        .expect("supervisor");
    if let Some(journal) = arg(args, "--journal") {
        sup = sup.with_journal(journal);
    }
    let spec = SpawnSpec::new(binary)
        .arg("--control-socket")
        .arg(&ctl)
        .arg("--data-dir")
        .arg(&data);
    match sup.perform_handoff(spec) {
        Ok(outcome) => {
            println!("outcome committed={}", outcome.committed());
            if let Some(mut child) = outcome.child {
                // Keep the new incumbent's parent alive, as a supervisor does.
                let _ = child.wait();
            }
            0
        }
        Err(e) => {
            eprintln!("supervise: {e}");
            1
        }
    }
}
