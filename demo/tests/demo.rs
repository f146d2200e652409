//! The demo command end to end, in every runtime: it must exit 0 and its
//! last line must be the summary with every handoff committed, no failed
//! request and no lost write.

use std::process::Command;

fn run_demo(runtime: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-demo"))
        .args(["--handoffs", "5", "--clients", "4", "--runtime", runtime])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{runtime}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.starts_with("summary: "), "{summary}");
    for field in [
        "handoffs=5 ",
        "committed=5 ",
        "aborted=0 ",
        "requests_failed=0 ",
        "writes_lost=0 ",
    ] {
        assert!(summary.contains(field), "{runtime}: {field} in {summary}");
    }
    let acked: u64 = summary
        .split_whitespace()
        .find_map(|f| f.strip_prefix("writes_acked="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(acked > 0, "{runtime}: the load wrote something: {summary}");
}

#[test]
fn the_demo_upgrades_kvd_on_std_without_a_failed_request_or_a_lost_write() {
    run_demo("std");
}

#[test]
fn the_demo_upgrades_kvd_on_mio_without_a_failed_request_or_a_lost_write() {
    run_demo("mio");
}

#[test]
fn the_demo_upgrades_kvd_on_smol_without_a_failed_request_or_a_lost_write() {
    run_demo("smol");
}

#[test]
fn the_demo_upgrades_kvd_on_tokio_without_a_failed_request_or_a_lost_write() {
    run_demo("tokio");
}

#[test]
fn an_unknown_runtime_is_refused_with_the_choices() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-demo"))
        .args(["--runtime", "glommio"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected std, mio, smol or tokio"));
}

#[test]
fn the_demo_rolls_back_every_broken_build_without_a_lost_write() {
    let out = Command::new(env!("CARGO_BIN_EXE_handoff-demo"))
        .args(["--handoffs", "2", "--clients", "4", "--broken-builds", "2"])
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", out.status);
    let summary = stdout.lines().last().unwrap_or_default();
    for field in ["committed=2 ", "rolled_back=2 ", "writes_lost=0 "] {
        assert!(summary.contains(field), "{field} in {summary}");
    }
    assert_eq!(
        stdout.matches("rolled back after").count(),
        2,
        "each broken handoff is reported: {stdout}"
    );
}
