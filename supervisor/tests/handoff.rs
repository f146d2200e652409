//! Handoffs through the trigger socket and the `trigger` command, an
//! aborted one, and the restart of a dead incumbent.

mod common;

use std::path::Path;

use common::*;
use handoff_std::Signal;
use handoff_std::os::process::send_signal;
use handoff_supervisor::client::{self, Reply};

#[test]
fn a_handoff_through_the_trigger_socket_commits() {
    // Given a service whose daemon serves,
    let layout = Layout::new("commit");
    let service = start_service(&layout, "");
    let addr = main_addr(&service);
    let old = ping(&addr);
    assert_eq!(service.status().incumbent_pid, Some(old));

    // when the trigger command asks for a handoff, as JSON,
    let out = run_cli(&[
        "trigger",
        "--config",
        layout.config_file.to_str().unwrap(),
        "--json",
    ]);

    // then it exits 0 with a JSON object that says so,
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = parse_json_object(&stdout);
    assert_eq!(member(&json, "committed"), &serde_json::Value::Bool(true));
    assert_eq!(
        member(&json, "rolled_back"),
        &serde_json::Value::Bool(false)
    );
    assert!(member(&json, "abort_reason").is_null());
    let Some(id) = member(&json, "handoff_id").as_str() else {
        panic!("handoff_id is not a string: {stdout}");
    };
    assert!(is_uuid(id), "{id}");
    assert!(
        member(&json, "duration_ms")
            .as_f64()
            .is_some_and(|ms| ms > 0.0)
    );
    // The default configuration of the tests: 200 ms of probation, timed
    // with the other phases.
    let phases = member(&json, "phases_ms").as_object().unwrap();
    let probation = phases["probation"].as_f64().unwrap();
    assert!(probation >= 200.0, "{stdout}");
    let names: Vec<&str> = phases.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "connect",
            "incumbent_hello",
            "spawn",
            "successor_hello",
            "drain",
            "seal",
            "begin_to_ready",
            "probation",
            "commit"
        ],
        "{stdout}"
    );

    // and the successor serves, on the same port, while the old binary
    // exits by itself and is reaped.
    let new = ping(&addr);
    assert_ne!(new, old);
    assert!(wait_gone(old, BOUND), "the old incumbent is still there");
    let status = service.status();
    assert_eq!(status.incumbent_pid, Some(new));
    assert_eq!(status.handoffs, 1);
    assert!(!status.in_flight);

    // A second handoff, through the socket directly, commits too.
    let line = client::trigger(&layout.trigger, None).unwrap();
    match Reply::parse(&line).unwrap() {
        Reply::Handoff(h) => assert!(h.committed && h.abort_reason.is_none(), "{line}"),
        other => panic!("{other:?}"),
    }
    assert_ne!(ping(&addr), new);
    assert_eq!(service.status().handoffs, 2);
    // Nothing is left in the journal once a handoff is over.
    assert!(!layout.journal.exists());
}

#[test]
fn a_successor_that_exits_at_once_is_aborted_and_the_incumbent_serves_on() {
    let layout = Layout::new("abort");
    let failing = layout.failing_successor();
    let service = start_service(
        &layout,
        &format!("allowed_binaries = [\"{}\"]", failing.display()),
    );
    let addr = main_addr(&service);
    let old = ping(&addr);

    let out = run_cli(&[
        "trigger",
        "--config",
        layout.config_file.to_str().unwrap(),
        "--binary",
        failing.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    match Reply::parse(stdout.trim()).unwrap() {
        Reply::Handoff(h) => {
            assert!(!h.committed);
            let reason = h.abort_reason.expect("a reason");
            assert!(reason.contains("successor"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The incumbent serves on, and the monitor did not mistake anything
    // for a death.
    assert_eq!(ping(&addr), old);
    let status = service.status();
    assert_eq!(status.incumbent_pid, Some(old));
    assert_eq!(status.handoffs, 1);

    // And a good handoff still commits afterwards.
    let report = service.handoff(None).unwrap();
    assert!(report.committed, "{report:?}");
    assert_eq!(report.incumbent_pid, Some(old));
    assert_eq!(ping(&addr), report.successor_pid.unwrap());
}

#[test]
fn the_supervisor_restarts_a_dead_incumbent() {
    let layout = Layout::new("restart");
    let service = start_service(&layout, "");
    let addr = main_addr(&service);
    let old = ping(&addr);

    // When the incumbent is killed outside any handoff,
    send_signal(old, Signal::Kill).unwrap();

    // then a new one serves, on the same listener, within the bound.
    let new = service
        .wait_for_incumbent(Some(old), BOUND)
        .expect("a new incumbent within the bound");
    assert_ne!(new, old);
    assert_eq!(ping(&addr), new);
    assert_eq!(service.status().incumbent_pid, Some(new));
    assert_eq!(service.status().handoffs, 0);

    // It keeps doing so, each time with the same listener.
    send_signal(new, Signal::Kill).unwrap();
    let third = service.wait_for_incumbent(Some(new), BOUND).unwrap();
    assert_eq!(ping(&addr), third);
    // And a handoff from a restarted incumbent works as any other.
    let report = service.handoff(None).unwrap();
    assert!(report.committed, "{report:?}");
}

#[test]
fn shutdown_stops_every_daemon_and_removes_the_trigger_socket() {
    let layout = Layout::new("shutdown");
    let service = start_service(&layout, "");
    let first = service.status().incumbent_pid.unwrap();
    let report = service.handoff(None).unwrap();
    let second = report.successor_pid.unwrap();
    assert!(layout.trigger.exists());

    service.shutdown();

    assert!(wait_gone(first, BOUND) && wait_gone(second, BOUND));
    assert!(!layout.trigger.exists());
    assert!(client::status(&layout.trigger).is_err());
    assert!(!Path::new(&layout.journal).exists());
}
