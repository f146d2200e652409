//! What the supervisor says about a daemon that is alive but does not run
//! (stopped with `SIGSTOP`, frozen), and how it paces restarts, with the
//! real `handoff-supervisor run` process.

mod common;

use std::fs;
use std::time::Instant;

use common::*;
use handoff_supervisor::Status;
use handoff_supervisor::client::{self, Reply};

fn status(layout: &Layout) -> Status {
    let line = client::status(&layout.trigger).unwrap();
    match Reply::parse(&line) {
        Ok(Reply::Status(s)) => s,
        other => panic!("{line:?}: {other:?}"),
    }
}

/// The listener's address, as the supervisor logged it.
fn main_addr_from_log(sup: &RunningSupervisor) -> String {
    let log = fs::read_to_string(&sup.log).unwrap();
    log.lines()
        .find_map(|l| {
            let rest = l.split_once("listener=main addr=")?.1;
            Some(rest.split(' ').next()?.to_owned())
        })
        .expect("the bound listener in the log")
}

/// Waits, within `BOUND`, until the status satisfies `pred`.
fn wait_status(layout: &Layout, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
    let t0 = Instant::now();
    loop {
        let s = status(layout);
        if pred(&s) {
            return s;
        }
        assert!(t0.elapsed() < BOUND, "never {what}: {s:?}");
        std::thread::yield_now();
    }
}

#[test]
fn a_stopped_daemon_is_reported_as_not_answering() {
    let layout = Layout::new("stopped");
    let (_sup, _notify) = start_running(&layout, "");
    let s = status(&layout);
    let pid = s.incumbent_pid.unwrap();
    assert_eq!(s.answering, Some(true));

    // Stopped, it is alive but answers nothing: `status` says so, and the
    // command fails as a liveness probe must.
    send(pid, libc::SIGSTOP);
    let out = run_cli(&["status", "--socket", layout.trigger.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    send(pid, libc::SIGCONT);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!("ok: incumbent_pid={pid} "))
            && stdout.contains("answering=false"),
        "{stdout}"
    );

    // Going on, it answers again.
    assert_eq!(status(&layout).answering, Some(true));
    let out = run_cli(&[
        "status",
        "--socket",
        layout.trigger.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"answering\":true"));
}

#[test]
fn an_incumbent_frozen_mid_handoff_is_not_taken_for_gone() {
    // Given a daemon that stops itself (as a frozen cgroup would stop it)
    // right after it reports Drained,
    let layout = Layout::new("frozen");
    let (sup, notify) = start_running(
        &layout,
        r#"env = [["HANDOFF_CRASH_AT", "incumbent-after-drained-sent"], ["HANDOFF_CRASH_MODE", "stop"]]"#,
    );
    let addr = main_addr_from_log(&sup);
    let pid = ping(&addr);

    // when a handoff finds it silent past the liveness limit,
    let reply = client::trigger(&layout.trigger, None).unwrap();
    assert!(reply.contains("committed=false"), "{reply}");
    assert!(reply.contains("liveness"), "{reply}");

    // then nothing says it is gone or being restarted: the log and
    // systemd's STATUS say it is alive and not answering, and `status`
    // agrees.
    let msg = notify.wait_for("READY=1");
    assert!(msg.contains("alive but not answering"), "{msg:?}");
    assert!(!msg.contains("restarting"), "{msg:?}");
    let s = status(&layout);
    assert_eq!(s.incumbent_pid, Some(pid));
    assert_eq!(s.answering, Some(false));
    let log = fs::read_to_string(&sup.log).unwrap();
    assert!(log.contains("incumbent_fate=Unresponsive"), "{log}");
    assert!(!log.contains("exited during the handoff"), "{log}");

    // Once it runs again it serves by itself, the same process, never
    // restarted.
    send(pid, libc::SIGCONT);
    wait_status(&layout, "answering again", |s| s.answering == Some(true));
    assert_eq!(ping(&addr), pid);
    assert_eq!(status(&layout).incumbent_pid, Some(pid));
    let log = fs::read_to_string(&sup.log).unwrap();
    assert!(!log.contains("restarted the daemon"), "{log}");
}

/// The restart pauses the log reports, in order.
fn pauses(sup: &RunningSupervisor) -> Vec<u64> {
    fs::read_to_string(&sup.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("pausing before the restart"))
        .filter_map(|l| {
            let v = l.split_once("pause_ms=")?.1;
            v.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn the_restart_pause_starts_over_after_a_committed_handoff() {
    let layout = Layout::new("backoff");
    let (sup, _notify) = start_running(&layout, "");
    for round in 1..=3 {
        // A handoff commits, and its new daemon dies at once (a build that
        // crashes soon after it took over),
        let before = status(&layout);
        let reply = client::trigger(&layout.trigger, None).unwrap();
        assert!(reply.contains("committed=true"), "{reply}");
        let new = wait_status(&layout, "the new daemon", |s| {
            s.incumbent_pid.is_some() && s.incumbent_pid != before.incumbent_pid
        });
        let new = new.incumbent_pid.unwrap();
        send(new, libc::SIGKILL);
        // and is restarted after a pause.
        wait_status(&layout, "restarted", |s| {
            s.incumbent_pid.is_some_and(|p| p != new) && s.answering == Some(true)
        });
        // Each death follows a commit and a healthy daemon: the pause is
        // the first one every time, never doubled from an earlier round.
        assert_eq!(pauses(&sup), vec![100; round], "round {round}");
    }
}
