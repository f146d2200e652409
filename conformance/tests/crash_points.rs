//! Every crash point fires where its name says, in every role, on every
//! adapter: for each point of `handoff_os::crash::POINTS`, a handoff is
//! run with the role's process set to crash there and every process
//! tracing the points it passes (`HANDOFF_CRASH_TRACE`). Then:
//! - the marker names the point (the process died there, and only there);
//! - the step before it happened: the frame a `…-sent` point names reached
//!   its reader, the frame a `…-received` point names came from its sender,
//!   and a role's own previous point preceded the others;
//! - the step after did not: the role passed no later point of its own,
//!   and its next frame never reached its peer.
//!
//! A point that does not fire, or fires a step late, fails here.

mod support;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;

use handoff_std::os::crash::POINTS;
use handoff_std::os::spawn::{PassedListener, spawn_cold};
use support::{BOUND, Rig, Runtime, TempDir, daemon_command, daemons_of, wait_exit, wait_gone};

/// The entry point of every daemon process the test starts.
#[test]
#[ignore = "runs only as the daemon the test starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
}

/// The points of one role, in the order a committed handoff reaches them.
fn points_of(role: &str) -> Vec<&'static str> {
    let prefix = format!("{role}-");
    POINTS
        .iter()
        .copied()
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

/// A point's role, and for a frame point its message and whether it was
/// sent.
fn parse_point(point: &str) -> (&str, Option<(&str, bool)>) {
    let (role, rest) = point.split_once('-').unwrap();
    let frame = rest.strip_prefix("after-").and_then(|m| {
        m.strip_suffix("-sent")
            .map(|m| (m, true))
            .or_else(|| m.strip_suffix("-received").map(|m| (m, false)))
    });
    // `after-spawn`, `after-lock-released`, … are not frames.
    let frame = frame.filter(|(m, _)| !m.starts_with("lock-") && *m != "spawn");
    (role, frame)
}

/// The other end of a frame `role` sends or receives as `msg`: the
/// supervisor's first peer is the incumbent; `Begin` and `Ready` are the
/// successor's.
fn peer_of(role: &str, msg: &str) -> &'static str {
    match role {
        "supervisor" if msg == "begin" || msg == "ready" => "successor",
        "supervisor" => "incumbent",
        _ => "supervisor",
    }
}

/// Waits, within [`BOUND`], for the supervisor's `outcome …` line.
fn outcome_line(stdout: std::process::ChildStdout) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // Read to the end, so nobody writes to a closed pipe.
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            if let Some(i) = line.find("outcome ") {
                let _ = tx.send(line[i..].trim().to_owned());
            }
            line.clear();
        }
    });
    rx.recv_timeout(BOUND).ok()
}

/// One crash at `point`, with every role played by `runtime`.
fn crash_at(runtime: Runtime, point: &'static str) {
    let (role, frame) = parse_point(point);
    let files = TempDir::new("cp-files");
    let (trace, marker) = (files.0.join("trace"), files.0.join("marker"));
    let tracing = [("HANDOFF_CRASH_TRACE", trace.as_os_str())];
    let crashing = [
        ("HANDOFF_CRASH_TRACE", trace.as_os_str()),
        ("HANDOFF_CRASH_AT", OsStr::new(point)),
        ("HANDOFF_CRASH_MARKER", marker.as_os_str()),
    ];
    let mut rig = Rig::start_with_env(
        &format!("cp-{}", runtime.code()),
        runtime,
        "",
        if role == "incumbent" {
            &crashing
        } else {
            &tracing
        },
    );
    // The supervisor process; its successor inherits its environment.
    let listener = rig.supervisor.listeners().next().unwrap();
    let mut cmd = daemon_command(&format!(
        "supervise --runtime {0} --successor-runtime {0} --control-socket {1} --data-dir {2}",
        runtime.name(),
        rig.ctl.display(),
        rig.data.display(),
    ));
    let sup_env: &[(&str, &OsStr)] = if role == "incumbent" {
        &tracing
    } else {
        &crashing
    };
    cmd.envs(sup_env.iter().copied()).stdout(Stdio::piped());
    let mut sup = spawn_cold(
        cmd,
        &[PassedListener {
            name: "main",
            fd: listener.fd,
        }],
    )
    .unwrap();
    let what = format!("{} {point}", runtime.name());
    if role == "supervisor" {
        let status = wait_exit(&mut sup, BOUND).unwrap_or_else(|| panic!("{what}: no end"));
        assert_eq!(status.code(), Some(99), "{what}: no crash");
    } else {
        let line = outcome_line(sup.stdout.take().unwrap());
        assert!(
            line.is_some(),
            "{what}: the supervisor's handoff did not end"
        );
    }
    if role == "incumbent" {
        let status = wait_exit(&mut rig.incumbent, BOUND).expect("the incumbent ends");
        assert_eq!(status.code(), Some(99), "{what}: no crash");
    }
    // A point after a send is reached once the frame is out, so the peer
    // may have acted (and the supervisor ended) before the marker is
    // written; and the peers react to the crash in their own time. What
    // is looked at below is looked at once it has all happened: the
    // marker written, at most one daemon left, the step before traced.
    until(&what, "the marker is written", || marker.exists());
    until(&what, "one daemon is left", || daemons_of(&rig).len() <= 1);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some(point),
        "{what}: the process did not crash there"
    );
    let own = points_of(role);
    let i = own.iter().position(|p| *p == point).unwrap();
    let before = match frame {
        Some((msg, true)) => format!("{}-after-{msg}-received", peer_of(role, msg)),
        Some((msg, false)) => format!("{}-after-{msg}-sent", peer_of(role, msg)),
        None => own[i - 1].to_owned(),
    };
    until(&what, &format!("{before} is traced"), || {
        std::fs::read_to_string(&trace).is_ok_and(|t| t.lines().any(|l| l == before))
    });
    let seen = std::fs::read_to_string(&trace).unwrap_or_default();
    let seen: Vec<&str> = seen.lines().collect();
    if let Some(next) = own.get(i + 1) {
        assert!(
            !seen.contains(next),
            "{what}: the process went on to {next}; seen: {seen:?}"
        );
    }
    let next_sent = own[i + 1..]
        .iter()
        .filter_map(|p| parse_point(p).1)
        .find(|(_, sent)| *sent);
    if let Some((msg, _)) = next_sent {
        let after = format!("{}-after-{msg}-received", peer_of(role, msg));
        assert!(
            !seen.contains(&after.as_str()),
            "{what}: the peer saw the next step, {after}; seen: {seen:?}"
        );
    }
    let _ = sup.kill();
    let _ = sup.wait();
    // Leave no process behind: the successor is not our child.
    for pid in daemons_of(&rig) {
        if pid != rig.incumbent.id() {
            #[allow(unsafe_code)]
            // SAFETY: kill takes integers only.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL)
            };
            assert!(wait_gone(pid, BOUND), "{what}");
        }
    }
}

/// Waits, within [`BOUND`], for `cond`, which a process makes true by
/// writing a file or exiting: looked at every few milliseconds, as
/// nothing wakes this test when another process writes a file.
fn until(what: &str, event: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < BOUND,
            "{what}: not within {BOUND:?}: {event}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn every_point(runtime: Runtime) {
    for &point in POINTS {
        crash_at(runtime, point);
    }
}

#[test]
fn std() {
    every_point(Runtime::Std)
}

#[test]
fn mio() {
    every_point(Runtime::Mio)
}

#[test]
fn smol() {
    every_point(Runtime::Smol)
}

#[test]
fn tokio() {
    every_point(Runtime::Tokio)
}
