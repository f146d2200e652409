//! A hundred handoffs in a row in one supervisor process, with its open
//! descriptors and its children counted before and after. Alone in its own
//! test binary, so that no other test's descriptors or children are counted.

mod common;

use common::*;
use handoff_std::PerformHandoff;

/// Live children of this process, zombies included.
fn child_count() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: comm may hold spaces; split after ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(|p| p == me))
                .unwrap_or(false)
        })
        .count()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_hundred_handoffs_in_a_row_leak_no_fd_and_no_child() {
    let mut rig = Rig::start("hundred");
    // Warm up once so lazily opened descriptors are counted in the baseline.
    let mut outcome = rig.supervisor.perform_handoff(rig.spec("")).unwrap();
    assert!(outcome.committed());
    rig.spawned.push(outcome.child.take().unwrap());
    assert!(wait_exit(&mut rig.incumbent, BOUND).is_some());
    // The journal's last removal may still hold a descriptor in the
    // background; counts are taken with it settled.
    assert!(rig.supervisor.flush_journal());
    let (fds, children) = (fd_count(), child_count());
    for i in 0..100 {
        let mut outcome = rig.supervisor.perform_handoff(rig.spec("")).unwrap();
        assert!(outcome.committed(), "handoff {i}: {:?}", outcome.result);
        // Every process stays with the rig until it exited, so that a
        // failure leaves none behind.
        rig.spawned.push(outcome.child.take().unwrap());
        let old = &mut rig.spawned[0];
        assert!(
            wait_exit(old, BOUND).is_some(),
            "handoff {i}: the old one exits"
        );
        let _reaped = rig.spawned.remove(0).wait();
        assert_eq!(rig.request("INC"), format!("OK {}", i + 1));
    }
    assert!(rig.supervisor.flush_journal());
    assert_eq!(fd_count(), fds, "open descriptors");
    assert_eq!(child_count(), children, "children");
}
