//! Probation and the health gate end to end (docs/PROTOCOL.md section 10):
//! the supervisor operators run (`handoff-supervisor`, here as
//! `handoff-demo supervisor`) hands kvd off to a new binary under a load
//! that writes throughout, and the new binary fails after it took over:
//! killed 50 ms after `Ready`, frozen with `SIGSTOP`, failing an exec
//! probe or a TCP probe, reporting `healthz_ok=false`, advertising a
//! revision behind the seal. Each case must end with the old process
//! serving and holding the data-dir lock, every write either process
//! acknowledged readable, no other kvd left, and a trigger reply that says
//! it was rolled back and why; the same handoff without a fault commits
//! after the window.
//!
//! The new binary with a fault is a two-line script that runs kvd with its
//! `--fault` flag, named in `allowed_binaries` as an operator would name a
//! build. Waits are on events with a bound: the supervisor's `READY=1`,
//! the load generator's progress, `status` naming a successor on
//! probation, processes' exits (pidfds).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::deployment::{Deployment, assert_writes_flow};
use common::{BOUND, become_subreaper, serial};
use handoff_demo::loadgen::LoadReport;
use handoff_std::os::process::wait_gone;
use handoff_supervisor::HandoffReply;

/// A build of kvd that runs with `fault` (`--fault`).
fn faulty_build(d: &Deployment, name: &str, fault: &str) -> PathBuf {
    d.build(name, "", &format!("--fault {fault}"))
}

/// The configuration lines of a case: the window, the builds a trigger
/// may name, then `table` (a `[health_probe]`, or nothing).
fn extra(probation_ms: u64, builds: &[&Path], table: &str) -> String {
    let names: Vec<String> = builds.iter().map(|b| format!("{b:?}")).collect();
    format!(
        "probation_ms = {probation_ms}\nallowed_binaries = [{}]\n{table}\n",
        names.join(", ")
    )
}

/// `SIGSTOP` to `pid`, by the system's `kill`.
fn stop(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The pid in the data directory's pidfile: the process that took the
/// data-dir lock last.
fn lock_holder(d: &Deployment) -> u32 {
    let text = std::fs::read_to_string(d.dir.0.join("data/.handoff.pid")).unwrap();
    text.trim().parse().unwrap()
}

/// What a case does to the new binary once it serves on probation, with
/// writes acknowledged by it.
enum Act {
    /// Nothing: its own fault (or its probe) does the rest.
    Nothing,
    /// `SIGSTOP`.
    Freeze,
}

/// One handoff to `build` under load, `act` done to the successor once it
/// serves on probation and has acknowledged writes; returns the reply, the
/// old pid and what the load saw.
fn handoff_under_load(
    d: &mut Deployment,
    build: Option<PathBuf>,
    act: Act,
    what: &str,
) -> (HandoffReply, u32, LoadReport) {
    d.start_supervisor(&[]);
    let old = d.status().incumbent_pid.expect("kvd serves");
    let load = d.load(7);
    assert_writes_flow(&load, 20, what);
    let reply = std::thread::scope(|s| {
        let trig = s.spawn(|| d.handoff_to(build.as_deref()));
        if let Act::Freeze = act {
            let pid = d.on_probation();
            // Only the successor serves on probation: these writes are
            // acknowledged by it.
            assert_writes_flow(&load, 20, what);
            stop(pid);
        }
        trig.join().unwrap()
    });
    // Writes go on after the outcome, to the process that serves.
    assert_writes_flow(&load, 20, what);
    (reply, old, load.stop())
}

/// The end state of every rolled-back case.
fn assert_rolled_back(
    d: &mut Deployment,
    reply: &HandoffReply,
    old: u32,
    report: &LoadReport,
    reason: &str,
    what: &str,
) {
    assert!(!reply.committed, "{what}: {reply:?}");
    let got = reply.abort_reason.as_deref().unwrap_or("");
    assert!(
        got.contains(reason),
        "{what}: reason {got:?}, wanted {reason:?}"
    );
    assert_eq!(d.status().incumbent_pid, Some(old), "{what}: {}", d.log());
    assert_eq!(d.status().on_probation, None, "{what}");
    // No other kvd left: the successor was stopped and reaped.
    assert_eq!(d.settle_to_one().0, old, "{what}");
    assert_eq!(
        lock_holder(d),
        old,
        "{what}: the old process holds the lock"
    );
    d.assert_nothing_lost(report, what);
}

/// Runs one rolled-back case with kvd on `runtime` and returns its
/// deployment, still running, and the old pid.
fn rolled_back(
    runtime: &str,
    fault: Option<&str>,
    act: Act,
    table: &str,
    reason: &str,
    what: &str,
) -> (Deployment, u32) {
    become_subreaper();
    // The configuration is written again once the build's path (inside
    // the deployment's directory) is known.
    let mut d = Deployment::with_config("probation", runtime, "probation_ms = 0\n");
    let build = fault.map(|f| faulty_build(&d, "kvd-new", f));
    let builds: Vec<&Path> = build.iter().map(PathBuf::as_path).collect();
    let text = extra(6_000, &builds, table);
    d.rewrite_config(&text);
    let (reply, old, report) = handoff_under_load(&mut d, build.clone(), act, what);
    assert!(reply.rolled_back, "{what}: {reply:?}");
    assert_rolled_back(&mut d, &reply, old, &report, reason, what);
    (d, old)
}

fn rolled_back_case(fault: Option<&str>, act: Act, table: &str, reason: &str, what: &str) {
    let _serial = serial();
    let (mut d, _) = rolled_back("std", fault, act, table, reason, what);
    d.stop(0, what);
}

#[test]
fn after_a_rollback_a_restart_runs_the_binary_that_served() {
    let _serial = serial();
    let what = "restart after a rollback";
    let (mut d, old) = rolled_back(
        "std",
        Some("crash-after-ready=50"),
        Act::Nothing,
        "",
        "during probation",
        what,
    );
    let status = std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(wait_gone(old, BOUND));
    // The supervisor's status says "(restarted)" once the restart serves;
    // the notifications of the handoff before are skipped.
    let supervisor = d.supervisors[0].id();
    d.wait_status("(restarted)", supervisor);
    let restarted = d.status().incumbent_pid.expect("the restart serves");
    assert_ne!(restarted, old);
    let cmdline = std::fs::read(format!("/proc/{restarted}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        !cmdline.contains("--fault"),
        "the rolled-back build was restarted: {cmdline}"
    );
    d.stop(0, what);
}

#[test]
fn a_successor_that_crashes_50ms_after_ready_is_rolled_back() {
    rolled_back_case(
        Some("crash-after-ready=50"),
        Act::Nothing,
        "",
        "during probation",
        "crash 50 ms after Ready",
    );
}

#[test]
fn a_successor_frozen_on_probation_is_killed_and_rolled_back() {
    rolled_back_case(
        None,
        Act::Freeze,
        "",
        "stopped heartbeating during probation",
        "SIGSTOP on probation",
    );
}

#[test]
fn a_failing_exec_probe_rolls_back_and_says_why() {
    rolled_back_case(
        None,
        Act::Nothing,
        "[health_probe]\nexec = [\"/bin/sh\", \"-c\", \"echo not serving >&2; exit 3\"]\n\
         interval_ms = 200\ntimeout_ms = 1000\nfailure_threshold = 2\n",
        "health probe failed: exec `/bin/sh -c echo not serving >&2; exit 3`: exit status: 3: \
         not serving (2 in a row)",
        "exec probe",
    );
}

#[test]
fn a_failing_tcp_probe_rolls_back_and_says_why() {
    rolled_back_case(
        None,
        Act::Nothing,
        "[health_probe]\ntcp = \"{addr}\"\nsend = \"VERSION\\n\"\nexpect = \"v9\"\n\
         interval_ms = 200\ntimeout_ms = 500\nfailure_threshold = 2\n",
        "health probe failed: tcp 127.0.0.1:",
        "tcp probe",
    );
}

#[test]
fn ready_with_healthz_false_is_rolled_back() {
    rolled_back_case(
        Some("unhealthy"),
        Act::Nothing,
        "",
        "healthz_ok=false",
        "unhealthy",
    );
}

#[test]
fn ready_advertising_a_revision_behind_the_seal_is_rolled_back() {
    rolled_back_case(
        Some("revisions-behind"),
        Act::Nothing,
        "",
        "revisions behind: shard 0 advertised",
        "revisions behind",
    );
}

#[test]
fn the_same_handoff_without_a_fault_commits_after_the_window() {
    let _serial = serial();
    become_subreaper();
    let mut d = Deployment::with_config("probation", "std", "probation_ms = 0\n");
    // A probe that passes: the successor answers its version.
    let table = "[health_probe]\ntcp = \"{addr}\"\nsend = \"VERSION\\n\"\nexpect = \"v1\"\n\
                 interval_ms = 200\ntimeout_ms = 500\nfailure_threshold = 2\n";
    d.rewrite_config(&extra(1_500, &[], table));
    let started = Instant::now();
    let (reply, old, report) = handoff_under_load(&mut d, None, Act::Nothing, "no fault");
    assert!(reply.committed, "{reply:?}; {}", d.log());
    assert!(!reply.rolled_back);
    let probation = reply.probation_ms().expect("it served on probation");
    assert!(probation >= 1_500.0, "{reply:?}");
    assert!(started.elapsed() >= Duration::from_millis(1_500));
    assert!(reply.phases_ms.iter().any(|(p, _)| p == "probation"));
    let new = d.settle_to_one().0;
    assert_ne!(new, old);
    assert!(wait_gone(old, BOUND));
    assert_eq!(d.status().incumbent_pid, Some(new));
    assert_eq!(lock_holder(&d), new);
    d.assert_nothing_lost(&report, "no fault");
    d.assert_every_request_answered(&report, "no fault");
    d.stop(0, "no fault");
}

#[test]
fn a_crash_during_probation_is_rolled_back_on_every_runtime() {
    for runtime in ["mio", "smol", "tokio"] {
        let _serial = serial();
        let (mut d, _) = rolled_back(
            runtime,
            Some("crash-after-ready=50"),
            Act::Nothing,
            "",
            "during probation",
            runtime,
        );
        d.stop(0, runtime);
    }
}
