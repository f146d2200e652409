//! Events that a mio type queues before the daemon's loop first waits are
//! not slept on: `poll_timeout` is "now" while any waits. A successor whose
//! supervisor is already gone ends its handoff inside `MioSuccessor::start`
//! (its `Hello` finds nobody); a loop that waits before it looks, as most
//! mio loops do, must still get the `Failed` event.

use std::time::{Duration, Instant};

use handoff_mio::{MioSuccessor, SuccessorEvent};
use handoff_std::os::process::wait_exit;
use handoff_std::{SpawnSpec, SuccessorConfig, spawn_for_handoff};
use mio::{Events, Poll, Token};

/// The successor: this test binary again, started by the test below.
#[test]
#[ignore = "runs only as the successor the test below starts"]
fn successor_entry() {
    let Ok(handoff_std::Role::Successor(launch)) = handoff_std::detect_role() else {
        return;
    };
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(8);
    let data = std::env::temp_dir().join(format!("hm-start-{}", std::process::id()));
    let mut s = MioSuccessor::start(
        launch,
        poll.registry(),
        Token(0),
        b"v2",
        &data,
        SuccessorConfig::default(),
    )
    .unwrap();
    // Wait first, look after: the order the bug needed.
    loop {
        let timeout = s
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let _ = poll.poll(&mut events, timeout);
        for event in &events {
            s.handle_event(poll.registry(), event);
        }
        s.handle_timeout(poll.registry());
        while let Some(event) = s.poll_event() {
            if let SuccessorEvent::Failed { .. } = event {
                std::process::exit(7);
            }
        }
    }
}

#[test]
fn a_handoff_that_ended_in_start_reaches_a_loop_that_waits_first() {
    let spec = SpawnSpec::new(std::env::current_exe().unwrap())
        .arg("successor_entry")
        .arg("--exact")
        .arg("--ignored")
        .arg("--quiet");
    let (ours, mut child) = spawn_for_handoff(&spec, &[]).unwrap();
    // The supervisor is gone before the successor says a word.
    drop(ours);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "the successor's loop slept on its Failed event"
    );
}
