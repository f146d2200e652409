//! How long clients wait when a new binary dies on probation: from the
//! successor's death to the old process's first answer.
//!
//! `handoff-bench-ours` (a `handoff-std` daemon answering `PING` with
//! `PONG`) serves under `handoff_std::Supervisor`; each round hands it off
//! to a new copy with a 30 s probation window, and as soon as the
//! supervisor names the successor on probation (it serves alone then: the
//! old process is sealed), kills it with `SIGKILL` and times a client that
//! connects at once and retries until it is answered. The only process
//! that can answer is the old one, after the supervisor saw the exit
//! (pidfd), told it `ResumeAfterAbort`, and it took the lock back and
//! resumed accepting; a connection made meanwhile waits in the kernel's
//! queue, which never closed.
//!
//! The reference (`beyond-handoff` 0.1.4) has no probation: after its
//! `Ready` the old process is gone, and a successor that dies leaves
//! nothing to roll back to, so there is no figure of its to set beside
//! this one.
//!
//! Run with `cargo bench --bench rollback` (`HANDOFF_BENCH_ROUNDS=n` for
//! another number of rounds; 20 by default).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use handoff_benches::daemon::{Args, LISTENER, READY_LINE};
use handoff_benches::echo::ping;
use handoff_benches::machine::{Machine, filesystem_of};
use handoff_benches::stats::{Secs, Summary};
use handoff_std::os::process::{kill_and_reap, send_signal};
use handoff_std::os::spawn::{ChildStdio, Launch, PassedListener, spawn_cold_vfork};
use handoff_std::{PerformHandoff, Signal, SpawnSpec, Supervisor};

const OURS_BIN: &str = env!("CARGO_BIN_EXE_handoff-bench-ours");
const ROUNDS: usize = 20;
/// Far longer than a rollback takes: the window never ends first.
const WINDOW: Duration = Duration::from_secs(30);
/// Any single wait of the harness.
const PATIENCE: Duration = Duration::from_secs(10);

type Error = Box<dyn std::error::Error>;

fn rounds() -> usize {
    handoff_benches::stats::rounds(ROUNDS)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollback: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let machine = Machine::detect();
    let base = if filesystem_of(std::path::Path::new("/dev/shm")) == "tmpfs" {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("hbr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (waits, detected) = result?;
    let (Some(wait), Some(detect)) = (Summary::of(&waits), Summary::of(&detected)) else {
        return Err("nothing measured".into());
    };
    println!();
    println!("== rollback on probation: successor killed, old process answers again");
    println!("  machine: {machine}");
    println!("  data and control socket in {}", base.display());
    println!(
        "  {} rounds; the reference has no probation (nothing to compare)",
        waits.len()
    );
    println!(
        "  death to the old process's first answer   p50 {:>9}  p99 {:>9}  max {:>9}",
        Secs(wait.p50).to_string(),
        Secs(wait.p99).to_string(),
        Secs(wait.max).to_string()
    );
    println!(
        "  Ready to the rollback's outcome           p50 {:>9}  (the supervisor's probation phase)",
        Secs(detect.p50).to_string()
    );
    Ok(())
}

/// Each round's wait from the kill to the answer, and its probation phase.
fn measure(dir: &std::path::Path) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let args = Args {
        control_socket: dir.join("ctl.sock"),
        data_dir: dir.join("data"),
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut cmd = Launch::new(OURS_BIN);
    cmd.args(args.to_args()).stdout(ChildStdio::Piped);
    let mut incumbent = spawn_cold_vfork(
        cmd,
        &[PassedListener {
            name: LISTENER,
            fd: listener.as_fd(),
        }],
    )?;
    let mut line = String::new();
    BufReader::new(incumbent.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    if line.trim() != READY_LINE {
        kill_and_reap(incumbent);
        return Err(format!("the daemon did not start: {line:?}").into());
    }
    let sup = Supervisor::new(&args.control_socket)?.with_listener(LISTENER, listener)?;
    sup.set_incumbent_pid(Some(incumbent.id()));
    let result = (|| -> Result<(Vec<f64>, Vec<f64>), Error> {
        let (mut waits, mut detected) = (Vec::new(), Vec::new());
        for round in 0..rounds() {
            let mut spec = SpawnSpec::new(OURS_BIN);
            spec.args = args.to_args();
            spec.probation = WINDOW;
            let (outcome, wait) = std::thread::scope(|s| {
                let handoff = s.spawn(|| sup.perform_handoff(spec));
                let wait = kill_on_probation(&sup, addr);
                (handoff.join(), wait)
            });
            let outcome = outcome.map_err(|_| "the handoff thread panicked")??;
            let wait = wait?;
            if !outcome.rolled_back() {
                return Err(format!("round {round}: not rolled back: {:?}", outcome.result).into());
            }
            waits.push(wait.as_secs_f64());
            if let Some(p) = outcome.timings.probation {
                detected.push(p.as_secs_f64());
            }
        }
        Ok((waits, detected))
    })();
    kill_and_reap(incumbent);
    result
}

/// Waits for the successor to be on probation, kills it, and times the
/// first answer after that.
fn kill_on_probation(sup: &Supervisor, addr: std::net::SocketAddr) -> Result<Duration, Error> {
    let until = Instant::now() + PATIENCE;
    let pid = loop {
        if let Some(pid) = sup.successor_on_probation() {
            break pid;
        }
        if Instant::now() > until {
            return Err("the successor never went on probation".into());
        }
        std::thread::yield_now();
    };
    let killed = Instant::now();
    send_signal(pid, Signal::Kill)?;
    loop {
        // A connection the dying successor had accepted is reset: again.
        if ping(addr, PATIENCE).is_ok() {
            return Ok(killed.elapsed());
        }
        if killed.elapsed() > PATIENCE {
            return Err("the old process never answered again".into());
        }
    }
}
