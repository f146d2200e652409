//! Probation on every adapter (docs/PROTOCOL.md section 10): the daemons
//! of each runtime, as incumbent and as successor, with a client writing
//! throughout. A successor that serves and then crashes or freezes within
//! the window is rolled back, and the old process, holding its lock again,
//! counts on from every write either of them acknowledged; one that does
//! not fail is committed after the window.
//!
//! The daemons are the conformance binary re-executed (`support::daemon`);
//! the faults are its `crash-after-ready` and `freeze-after-ready` flags.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use handoff_std::{AbortReason, HandoffOutcome, IncumbentFate, SupervisorStep};
use support::{BOUND, Rig, Runtime, run_handoff, wait_exit, wait_gone};

/// The entry point of every daemon process these tests start.
#[test]
#[ignore = "runs only as the daemon the suite starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
}

/// What the writer saw: the highest counter value acknowledged, and the
/// pids that answered.
struct Seen {
    max_acked: u64,
    answered_by: BTreeSet<u32>,
}

/// A client that writes (`INC`) and asks who serves (`PING`) in turns,
/// one connection per request, until stopped. A request that gets no
/// answer (a crashed process's connection) is not an acknowledgement.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

fn ask(addr: SocketAddr, line: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    writeln!(s, "{line}").ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    Some(reply.trim().to_owned())
}

impl Writer {
    fn start(addr: SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen {
                max_acked: 0,
                answered_by: BTreeSet::new(),
            };
            while !flag.load(Ordering::SeqCst) {
                if let Some(n) = ask(addr, "INC")
                    .and_then(|r| r.strip_prefix("OK ").and_then(|n| n.parse().ok()))
                {
                    seen.max_acked = seen.max_acked.max(n);
                }
                if let Some(pid) = ask(addr, "PING")
                    .and_then(|r| r.strip_prefix("PONG ").and_then(|p| p.parse().ok()))
                {
                    seen.answered_by.insert(pid);
                }
            }
            seen
        });
        Writer { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// One handoff to a successor on `successor` with `flags` and `window` of
/// probation, under the writer; the outcome and what the writer saw.
fn handoff_on_probation(
    rig: &Rig,
    supervisor: Runtime,
    successor: Runtime,
    flags: &str,
    window: Duration,
) -> (HandoffOutcome, Seen) {
    assert_eq!(rig.request("INC"), "OK 1");
    let writer = Writer::start(rig.addr);
    let mut spec = rig.spec(successor, flags);
    spec.probation = window;
    let outcome = run_handoff(supervisor, &rig.supervisor, spec);
    (outcome, writer.stop())
}

/// The old process serves again with its lock and counts on from every
/// write either process acknowledged; the successor is gone.
fn assert_rolled_back(rig: &Rig, outcome: &HandoffOutcome, seen: &Seen, what: &str) {
    assert!(outcome.rolled_back(), "{what}: {:?}", outcome.result);
    assert_eq!(
        outcome.incumbent_fate,
        IncumbentFate::ToldToResume,
        "{what}"
    );
    let successor = outcome.successor_pid.unwrap();
    assert!(
        seen.answered_by.contains(&successor),
        "{what}: the successor served before it failed: {:?}",
        seen.answered_by
    );
    assert!(wait_gone(successor, BOUND), "{what}: the successor is gone");
    let old = rig.incumbent.id();
    assert_eq!(rig.serving_pid(), old, "{what}: the old one serves");
    assert_eq!(rig.lock_holder(), Some(old), "{what}: with its lock");
    // Past every acknowledged write (a write the successor made durable
    // but died before answering counts too, unacknowledged).
    let next: u64 = rig
        .request("INC")
        .strip_prefix("OK ")
        .and_then(|n| n.parse().ok())
        .expect("the old one writes");
    assert!(
        next > seen.max_acked,
        "{what}: every acknowledged write is there: next {next}, acknowledged up to {}",
        seen.max_acked
    );
}

fn commits_after_the_window(sup: Runtime, inc: Runtime, succ: Runtime) {
    let what = format!("{} {} {}", sup.name(), inc.name(), succ.name());
    let mut rig = Rig::start("pc", inc, "");
    let window = Duration::from_millis(800);
    let started = Instant::now();
    let (mut outcome, seen) = handoff_on_probation(&rig, sup, succ, "", window);
    assert!(outcome.committed(), "{what}: {:?}", outcome.result);
    assert!(started.elapsed() >= window);
    assert_eq!(outcome.probation_window, Some(window), "{what}");
    assert!(outcome.timings.probation.unwrap() >= window, "{what}");
    let child = outcome.child.take().unwrap();
    let new = child.id();
    rig.spawned.push(child);
    assert!(wait_exit(&mut rig.incumbent, BOUND).is_some(), "{what}");
    assert_eq!(rig.serving_pid(), new);
    assert_eq!(rig.lock_holder(), Some(new));
    assert_eq!(rig.request("INC"), format!("OK {}", seen.max_acked + 1));
}

/// A successor with `fault` (a flag of the test daemon) after `Ready`,
/// rolled back for `reason` before its window ended.
fn fails_on_probation(sup: Runtime, inc: Runtime, succ: Runtime, fault: &str, reason: AbortReason) {
    let what = format!("{} {} {} {fault}", sup.name(), inc.name(), succ.name());
    let rig = Rig::start("pf", inc, "");
    let window = Duration::from_secs(10);
    let flags = format!("{fault},after-ready-ms=300");
    let (outcome, seen) = handoff_on_probation(&rig, sup, succ, &flags, window);
    assert_eq!(outcome.result, Err(reason), "{what}");
    assert!(
        outcome.timings.probation.unwrap() < window,
        "{what}: seen before the window ended"
    );
    assert_rolled_back(&rig, &outcome, &seen, &what);
}

fn crash_on_probation(sup: Runtime, inc: Runtime, succ: Runtime) {
    let exited = AbortReason::SuccessorExited {
        step: SupervisorStep::Probation,
    };
    fails_on_probation(sup, inc, succ, "crash-after-ready", exited);
}

fn freeze_on_probation(sup: Runtime, inc: Runtime, succ: Runtime) {
    let frozen = AbortReason::SuccessorUnresponsive;
    fails_on_probation(sup, inc, succ, "freeze-after-ready", frozen);
}

macro_rules! probation_suite {
    ($name:ident, $sup:ident, $inc:ident, $succ:ident) => {
        mod $name {
            use super::*;
            #[test]
            fn commits_after_the_window() {
                super::commits_after_the_window(Runtime::$sup, Runtime::$inc, Runtime::$succ)
            }
            #[test]
            fn a_crash_on_probation_is_rolled_back() {
                super::crash_on_probation(Runtime::$sup, Runtime::$inc, Runtime::$succ)
            }
            #[test]
            fn a_freeze_on_probation_is_rolled_back() {
                super::freeze_on_probation(Runtime::$sup, Runtime::$inc, Runtime::$succ)
            }
        }
    };
}

// Each adapter as supervisor, incumbent and successor, and across them.
probation_suite!(all_std, Std, Std, Std);
probation_suite!(all_mio, Mio, Mio, Mio);
probation_suite!(all_smol, Smol, Smol, Smol);
probation_suite!(all_tokio, Tokio, Tokio, Tokio);
probation_suite!(all_tokio_current_thread, TokioCt, TokioCt, TokioCt);
probation_suite!(mio_supervises_std_to_smol, Mio, Std, Smol);
