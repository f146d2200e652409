//! One async supervisor running the handoffs of several services at once,
//! each its own task on one runtime: on tokio's multi-thread runtime and on
//! its current-thread runtime (where the two interleave on one thread), and
//! on smol's executor-less `block_on`.
//!
//! The proof is not a timing. Each successor, once it has `Begin`, checks
//! in with the test and waits; the test lets them go on only when both
//! have checked in. Handoffs run one after the other would leave the first
//! successor waiting alone (the test then hangs up and it fails), so both
//! commit only if the two were in flight at the same time.

mod support;

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use handoff_std::os::process::poll_readable;
use handoff_std::{HandoffOutcome, SpawnSpec, Supervisor};
use support::{BOUND, Rig, Runtime, TempDir, wait_exit};

/// The entry point of every daemon process this test starts.
#[test]
#[ignore = "runs only as the daemon the test starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
}

/// Accepts `n` successors on `listener`, each within [`BOUND`], then
/// gives each its word. Returns how many checked in.
fn gate(listener: UnixListener, n: usize) -> usize {
    let mut arrived = Vec::new();
    while arrived.len() < n {
        match poll_readable(&[listener.as_fd()], Some(BOUND)) {
            Ok(ready) if ready[0] => {}
            // Timed out (or failed): the others are not coming; hanging
            // up on those here tells them.
            _ => return arrived.len(),
        }
        match listener.accept() {
            Ok((s, _)) => arrived.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("accept: {e}"),
        }
    }
    for mut s in arrived {
        s.write_all(&[1]).unwrap();
    }
    n
}

type Handoffs = fn(Vec<(Arc<Supervisor>, SpawnSpec)>) -> Vec<HandoffOutcome>;

fn two_services_hand_off_at_once(tag: &str, successor: Runtime, run: Handoffs) {
    let mut rigs = [
        Rig::start(&format!("{tag}-a"), Runtime::Std, ""),
        Rig::start(&format!("{tag}-b"), Runtime::Std, ""),
    ];
    let meeting = TempDir::new(&format!("{tag}-rv"));
    let rv = meeting.0.join("rv.sock");
    let listener = UnixListener::bind(&rv).unwrap();
    let gate = std::thread::spawn(move || gate(listener, 2));
    let jobs = rigs
        .iter()
        .map(|r| {
            let spec = r.spec(successor, "").env("RENDEZVOUS", &rv);
            (r.supervisor.clone(), spec)
        })
        .collect();
    let outcomes = run(jobs);
    assert_eq!(
        gate.join().unwrap(),
        2,
        "both successors were waiting at the same time"
    );
    for (rig, mut outcome) in rigs.iter_mut().zip(outcomes) {
        assert!(
            outcome.committed(),
            "{tag}: {:?} {:?}",
            outcome.result,
            outcome.detail
        );
        let child = outcome.child.take().unwrap();
        let new = child.id();
        rig.spawned.push(child);
        assert!(wait_exit(&mut rig.incumbent, BOUND).is_some(), "{tag}");
        assert_eq!(rig.serving_pid(), new, "{tag}");
    }
}

/// Every handoff its own tokio task, awaited together.
async fn tokio_tasks(jobs: Vec<(Arc<Supervisor>, SpawnSpec)>) -> Vec<HandoffOutcome> {
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|(sup, spec)| {
            tokio::spawn(async move { handoff_tokio::perform_handoff(&sup, spec).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("the task ran").expect("the handoff started"));
    }
    outcomes
}

#[test]
fn a_tokio_supervisor_on_the_multi_thread_runtime() {
    two_services_hand_off_at_once("cc-mt", Runtime::Tokio, |jobs| {
        Runtime::Tokio.tokio().block_on(tokio_tasks(jobs))
    });
}

#[test]
fn a_tokio_supervisor_on_the_current_thread_runtime() {
    two_services_hand_off_at_once("cc-ct", Runtime::TokioCt, |jobs| {
        Runtime::TokioCt.tokio().block_on(tokio_tasks(jobs))
    });
}

#[test]
fn a_smol_supervisor() {
    two_services_hand_off_at_once("cc-smol", Runtime::Smol, |jobs| {
        async_io::block_on(async {
            let [(sa, a), (sb, b)]: [_; 2] = jobs.try_into().ok().unwrap();
            let (oa, ob) = futures_lite::future::zip(
                handoff_smol::perform_handoff(&sa, a),
                handoff_smol::perform_handoff(&sb, b),
            )
            .await;
            vec![oa.unwrap(), ob.unwrap()]
        })
    });
}
