//! The supervisor operators run (`handoff-supervisor`, here as
//! `handoff-demo supervisor`), killed with `SIGKILL` while idle and at each
//! of its crash points during a handoff, with kvd serving a load that
//! connects and writes throughout, on each of kvd's runtimes. Each time the
//! supervisor is started again with the same configuration and must adopt
//! whichever kvd serves (the incumbent that resumed, or the successor that
//! was `Ready`), never restart it, report it in `status`, commit the next
//! handoff, and on `SIGTERM` stop it and leave no process behind; the load
//! must see no refused connection and lose no acknowledged write.
//!
//! Waits are on events with a bound: the supervisor's `READY=1` on a notify
//! socket this test binds, its exit (a pidfd), the load generator's
//! progress.

mod common;

use common::deployment::{Deployment, assert_writes_flow};
use common::{BOUND, become_subreaper, serial};
use handoff_std::Signal;
use handoff_std::os::process::{send_signal, wait_exit};

/// The supervisor's crash points, in the order a handoff reaches them.
fn supervisor_points() -> Vec<&'static str> {
    handoff_std::crash::points_of("supervisor").collect()
}

/// Kills the supervisor at `point` (`None`: while idle) under load, starts
/// it again, and checks everything the module docs list.
fn crash_and_adopt(runtime: &str, point: Option<&str>) {
    let what = format!("{runtime} {}", point.unwrap_or("idle"));
    let mut d = Deployment::new("sup-crash", runtime);
    let marker = d.dir.0.join("marker");
    let marker_text = marker.to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = match point {
        Some(p) => vec![
            ("HANDOFF_CRASH_AT", p),
            ("HANDOFF_CRASH_MARKER", marker_text.as_str()),
        ],
        None => Vec::new(),
    };
    let (first, _) = d.start_supervisor(&env);
    let incumbent = d.status().incumbent_pid.expect("a daemon serves");
    let load = d.load(7);
    assert_writes_flow(&load, 50, &what);

    match point {
        None => send_signal(first, Signal::Kill).unwrap(),
        Some(p) => {
            // The handoff's answer never comes: the supervisor dies in it.
            assert!(d.trigger().is_err(), "{what}: a handoff answered");
            let status = wait_exit(&mut d.supervisors[0], BOUND).expect("it ends");
            assert_eq!(status.code(), Some(99), "{what}: it must crash there");
            assert_eq!(std::fs::read_to_string(&marker).unwrap(), p);
        }
    }
    let status = wait_exit(&mut d.supervisors[0], BOUND).expect("the supervisor is dead");
    assert!(!status.success(), "{what}: {status}");
    // The kvd processes alive right after the crash: the one serving after
    // the restart must be one of them (not restarted).
    // (After `Commit` the incumbent may be gone already.)
    let at_crash: Vec<u32> = d.live_daemons().into_iter().map(|(p, _)| p).collect();

    let (second, ready) = d.start_supervisor(&[]);
    assert!(ready.contains("(adopted)"), "{what}: READY says {ready:?}");
    let (survivor, parent) = d.settle_to_one();
    assert!(
        at_crash.contains(&survivor),
        "{what}: {survivor} serves, but only {at_crash:?} ran at the crash: it was restarted"
    );
    assert_ne!(parent, second, "{what}: the new supervisor started kvd");
    let st = d.status();
    assert_eq!(st.incumbent_pid, Some(survivor), "{what}: status {st:?}");
    assert_eq!(st.answering, Some(true), "{what}: status {st:?}");
    if matches!(
        point,
        Some("supervisor-after-ready-received" | "supervisor-after-commit-sent")
    ) {
        assert_ne!(
            survivor, incumbent,
            "{what}: the Ready successor must serve"
        );
    }
    assert_writes_flow(&load, 50, &what);

    // The adopted daemon is handed off like our own.
    assert_eq!(d.trigger(), Ok(true), "{what}: {}", d.log());
    let after = d.status().incumbent_pid.unwrap();
    assert_ne!(after, survivor, "{what}");
    assert_writes_flow(&load, 50, &what);
    let report = load.stop();
    d.assert_every_request_answered(&report, &what);
    d.assert_nothing_lost(&report, &what);

    // SIGTERM stops the service and everything it adopted.
    d.stop(1, &what);
    eprintln!(
        "{what}: survivor {survivor} ({}), {} writes acked",
        if survivor == incumbent {
            "the incumbent"
        } else {
            "the successor"
        },
        report.writes_acked
    );
}

fn every_step(runtime: &str) {
    let _serial = serial();
    become_subreaper();
    crash_and_adopt(runtime, None);
    for point in supervisor_points() {
        crash_and_adopt(runtime, Some(point));
    }
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_std_at_every_step() {
    every_step("std");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_mio_at_every_step() {
    every_step("mio");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_smol_at_every_step() {
    every_step("smol");
}

#[test]
fn a_killed_supervisor_adopts_kvd_on_tokio_at_every_step() {
    every_step("tokio");
}
