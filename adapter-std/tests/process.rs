//! handoff-std with real processes: the test daemon as incumbent and
//! successor, real sockets, real flock, real signals. Each test is one
//! scenario of issue "handoff-std" and ends by itself within its bounds.

mod common;

use handoff_std::PerformHandoff;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use handoff_core::{HandoffId, Message, encode_frame};
use handoff_std::{AbortReason, IncumbentFate, SuccessorFate, SupervisorError};

fn frame(msg: Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 256];
    let n = encode_frame(1, &msg, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn happy_path_the_successor_takes_over_and_the_old_binary_exits() {
    let mut rig = Rig::start("happy");
    let old = rig.incumbent_pid();
    assert_eq!(rig.serving_pid(), old);
    assert_eq!(rig.request("INC"), "OK 1");

    let outcome = rig.supervisor.perform_handoff(rig.spec("")).unwrap();
    assert!(
        outcome.committed(),
        "{:?} {:?}",
        outcome.result,
        outcome.detail
    );
    let child = outcome.child.expect("the new incumbent is ours to keep");
    let new = child.id();
    rig.spawned.push(child);

    assert!(wait_exit(&mut rig.incumbent, BOUND).is_some_and(|s| s.success()));
    assert_eq!(rig.serving_pid(), new);
    assert_eq!(rig.lock_holder(), Some(new));
    assert!(!rig.lock_is_free());
    // The sealed state carried over: the counter goes on.
    assert_eq!(rig.request("INC"), "OK 2");

    assert_eq!(outcome.incumbent_pid, Some(old));
    assert_eq!(outcome.successor_pid, Some(new));
    assert_eq!(outcome.incumbent_fate, IncumbentFate::Committed);
    assert_eq!(outcome.sealed_revisions, Some(vec![1]));
    assert_eq!(outcome.advertised_revisions, Some(vec![1]));
    assert_eq!(outcome.healthz_ok, Some(true));
    assert_eq!(outcome.listening_on, Some(vec![rig.addr.to_string()]));
    assert!(outcome.timings.drain.is_some() && outcome.timings.begin_to_ready.is_some());
    // The record's removal finishes in the background; once waited for,
    // nothing is left.
    assert!(rig.supervisor.flush_journal(), "the journal never failed");
    assert!(
        !rig.dir.0.join("journal").exists(),
        "the journal is cleared"
    );
}

#[test]
fn successor_crashing_before_hello_rolls_back() {
    let rig = Rig::start("crash-hello");
    let outcome = rig
        .supervisor
        .perform_handoff(rig.spec("crash-before-hello"))
        .unwrap();
    assert!(matches!(
        outcome.result,
        Err(AbortReason::SuccessorExited { .. } | AbortReason::SuccessorClosed { .. })
    ));
    assert_eq!(outcome.successor_fate, SuccessorFate::Exited);
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 1");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent_pid()));
}

#[test]
fn successor_exiting_after_begin_rolls_back_and_the_incumbent_retakes_the_lock() {
    let rig = Rig::start("crash-begin");
    assert_eq!(rig.request("INC"), "OK 1");
    let outcome = rig
        .supervisor
        .perform_handoff(rig.spec("exit-after-begin"))
        .unwrap();
    assert!(!outcome.committed());
    assert_eq!(outcome.incumbent_fate, IncumbentFate::ToldToResume);
    assert_eq!(outcome.sealed_revisions, Some(vec![1]), "it had sealed");
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 2", "the writer reopened");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent_pid()));
}

#[test]
fn successor_hanging_past_the_deadline_is_killed_and_the_incumbent_serves_on() {
    let rig = Rig::start("hang");
    let mut spec = rig.spec("hang-after-begin,ignore-term");
    spec.deadline = Duration::from_secs(2);
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    assert_eq!(outcome.result, Err(AbortReason::ReadyTimeout));
    assert_eq!(
        outcome.successor_fate,
        SuccessorFate::Exited,
        "killed and reaped"
    );
    let pid = outcome.successor_pid.unwrap();
    assert!(wait_gone(pid, BOUND), "no zombie, no survivor");
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 1");
}

#[test]
fn a_successor_still_starting_up_learns_of_the_abort() {
    // The successor ignores SIGTERM, so SIGKILL follows after the kill
    // grace: that grace is made long, so that a successor stalled for a
    // while (a loaded or frozen machine) still gets to show what it saw
    // rather than be killed first. It normally exits within milliseconds.
    let config = handoff_std::SupervisorConfig {
        kill_grace: BOUND,
        ..Default::default()
    };
    let rig = Rig::start_configured("abort-seen", &[], config);
    let mut spec = rig.spec("open-until-aborted,ignore-term");
    // Long enough for the successor to reach Begin on a loaded machine (a
    // shorter one made the abort come earlier, at a different step), and
    // what the test takes: the abort it waits for comes at the deadline.
    spec.deadline = Duration::from_secs(3);
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    assert_eq!(outcome.result, Err(AbortReason::ReadyTimeout));
    // The handoff returns once the successor is reaped. It ignores TERM
    // and was busy opening its state, never reading the control socket
    // itself: it exited before the KILL only if the library's thread
    // received the `Abort` and told it.
    assert_eq!(outcome.successor_fate, SuccessorFate::Exited);
    assert!(
        rig.dir.0.join("aborted-seen").exists(),
        "the successor never saw the abort: {:?}",
        outcome.detail
    );
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 1");
}

#[test]
fn a_failed_seal_keeps_the_lock_with_the_incumbent() {
    let rig = Rig::start_with("seal", &[("TEST_DAEMON", "seal-fails")]);
    let outcome = rig.supervisor.perform_handoff(rig.spec("")).unwrap();
    assert_eq!(outcome.result, Err(AbortReason::SealFailed));
    assert_eq!(outcome.seal_error.as_deref(), Some("disk full (test)"));
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 1");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent_pid()));
}

#[test]
fn a_drain_past_its_grace_aborts_and_the_incumbent_serves_on() {
    let rig = Rig::start_with("grace", &[("TEST_DAEMON", "drain-ms=2500")]);
    let mut spec = rig.spec("");
    spec.drain_grace = Duration::from_millis(300);
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    assert_eq!(outcome.result, Err(AbortReason::DrainTimeout));
    assert_eq!(outcome.incumbent_fate, IncumbentFate::ToldToResume);
    // The drain hook ends 2.5 s in; then the incumbent resumes and answers.
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 1");
}

#[test]
fn a_concurrent_trigger_gets_handoff_in_progress_at_once() {
    // The first handoff's drain takes 3 s, so it is in flight all along.
    let rig = Rig::start_with("concurrent", &[("TEST_DAEMON", "drain-ms=3000")]);
    std::thread::scope(|s| {
        let first = s.spawn(|| rig.supervisor.perform_handoff(rig.spec("exit-after-begin")));
        // Wait until the first handoff holds the slot: the incumbent stops
        // accepting when it drains, which a raw control connection would
        // not show; the journal file appears once both peers said Hello.
        let journal = rig.dir.0.join("journal");
        let t0 = std::time::Instant::now();
        while !journal.exists() {
            assert!(t0.elapsed() < BOUND, "the first handoff never started");
            std::thread::yield_now();
        }
        let second = rig.supervisor.perform_handoff(rig.spec(""));
        assert!(matches!(second, Err(SupervisorError::HandoffInProgress)));
        // Refused at once: not after waiting for the first to end (a bound
        // on the time taken would fail on a stalled machine instead).
        assert!(!first.is_finished(), "the second waited for the first");
        assert!(!first.join().unwrap().unwrap().committed());
    });
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
}

/// Connects to the incumbent's control socket as a hostile peer, sends
/// `bytes` after reading its `Hello`, and returns whether the incumbent
/// closed the session.
fn hostile_session(rig: &Rig, bytes: &[u8]) -> bool {
    let mut s = UnixStream::connect(&rig.ctl).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    // A read with a timeout is not restarted after this process is stopped
    // and continued (a frozen cgroup): `Interrupted` is retried below.
    let mut hello = [0u8; 256];
    let n = loop {
        match s.read(&mut hello) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r.unwrap(),
        }
    };
    assert!(n > 6, "the incumbent speaks first");
    let _ = s.write_all(bytes);
    // The incumbent closes: reads drain to EOF (or a reset) within the bound.
    let mut sink = [0u8; 256];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn hostile_control_peers_get_the_session_closed_and_the_incumbent_serves_on() {
    let rig = Rig::start("hostile");
    let id = HandoffId::from_bytes([7; 16]);
    let ack = frame(Message::HelloAck {
        proto_version_chosen: 1,
        handoff_id: id,
    });
    let mut wrong_id = ack.clone();
    wrong_id.extend(frame(Message::PrepareHandoff {
        handoff_id: HandoffId::from_bytes([8; 16]),
        successor_pid: 1,
        deadline_ms: 1000,
        drain_grace_ms: 1000,
    }));
    let mut wrong_direction = ack.clone();
    wrong_direction.extend(frame(Message::Ready {
        handoff_id: id,
        listening_on: handoff_core::Strings::EMPTY,
        healthz_ok: true,
        advertised_revision_per_shard: handoff_core::Revisions::EMPTY,
    }));
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("2 MiB length", (2u32 << 20).to_le_bytes().to_vec()),
        ("wrong handoff id", wrong_id),
        ("wrong direction", wrong_direction),
    ];
    for (name, bytes) in cases {
        assert!(
            hostile_session(&rig, &bytes),
            "{name}: the session must close"
        );
        assert_eq!(rig.serving_pid(), rig.incumbent_pid(), "{name}");
        assert_eq!(rig.lock_holder(), Some(rig.incumbent_pid()), "{name}");
    }
    assert_eq!(rig.request("INC"), "OK 1", "still writing");
    // And a real handoff still works afterwards.
    let outcome = rig
        .supervisor
        .perform_handoff(rig.spec("exit-after-begin"))
        .unwrap();
    assert!(outcome.incumbent_pid.is_some());
}

#[test]
fn a_successor_that_cannot_bind_the_control_path_fails_before_ready() {
    let rig = Rig::start("nobind");
    assert_eq!(rig.request("INC"), "OK 1");
    // Its control socket path lies in a directory that does not exist.
    let spec = handoff_std::SpawnSpec::new(daemon_bin())
        .arg("--control-socket")
        .arg(rig.dir.0.join("missing").join("ctl.sock"))
        .arg("--data-dir")
        .arg(&rig.data)
        .env("TEST_DAEMON", "");
    let outcome = rig.supervisor.perform_handoff(spec).unwrap();
    // Not told Ready, the supervisor aborts, and the old binary serves on:
    // before, the successor sent Ready, the old binary exited on Commit, and
    // the successor then failed to bind and exited, leaving nobody.
    assert!(!outcome.committed(), "{:?}", outcome.result);
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
    assert_eq!(rig.request("INC"), "OK 2");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent_pid()));
}
