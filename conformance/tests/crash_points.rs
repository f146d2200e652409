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
//! A point that does not fire, or fires a step late, fails here. After each
//! of the supervisor's points, the one daemon left is adopted over the
//! control socket as a restarted supervisor adopts it, with the socket the
//! crashed one held, and handed off again.

mod support;

use std::ffi::OsStr;
use std::io::Read;

use std::os::fd::AsFd;

use handoff_std::os::crash::{POINTS, points_of};
use handoff_std::os::fdpass::identity;
use handoff_std::os::process::{ExitWatch, poll_readable};
use handoff_std::os::spawn::{ChildStdio, PassedListener, spawn_cold_vfork};
use support::{
    BOUND, Rig, Runtime, TempDir, daemon_command, daemons_of, line_with, wait_exit, wait_gone,
};

/// The entry point of every daemon process the test starts.
#[test]
#[ignore = "runs only as the daemon the test starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
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

/// One crash at `point`, with every role played by `runtime`.
fn crash_at(runtime: Runtime, point: &'static str) {
    let (role, frame) = parse_point(point);
    let files = Files::new();
    let (trace, marker) = (files.dir.0.join("trace"), files.dir.0.join("marker"));
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
    cmd.envs(sup_env.iter().copied()).stdout(ChildStdio::Piped);
    let mut sup = spawn_cold_vfork(
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
        let line = line_with(sup.stdout.take().unwrap(), "outcome ");
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
    // Created, then written: the name counts once it is there.
    files.until(&what, "the marker is written", || {
        std::fs::read(&marker).is_ok_and(|m| !m.is_empty())
    });
    until_one_daemon(&rig, &what);
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some(point),
        "{what}: the process did not crash there"
    );
    let own: Vec<&str> = points_of(role).collect();
    let i = own.iter().position(|p| *p == point).unwrap();
    let before = match frame {
        Some((msg, true)) => format!("{}-after-{msg}-received", peer_of(role, msg)),
        Some((msg, false)) => format!("{}-after-{msg}-sent", peer_of(role, msg)),
        None => own[i - 1].to_owned(),
    };
    files.until(&what, &format!("{before} is traced"), || {
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
    if role == "supervisor" {
        adopt_and_hand_off(runtime, &mut rig, &what);
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

/// After a supervisor crash: the one daemon left is adopted as a restarted
/// supervisor adopts it (`adopt_settled`: a `Ready` successor may still be
/// taking the control socket's path over), hands over the
/// very socket the crashed supervisor held, and a handoff from a new
/// supervisor on that socket commits.
fn adopt_and_hand_off(runtime: Runtime, rig: &mut Rig, what: &str) {
    let live = daemons_of(rig);
    assert_eq!(live.len(), 1, "{what}: {live:?}");
    let survivor = live[0];
    // As the supervisor does: the path may still be changing hands while
    // the survivor runs.
    let adopted = match handoff_std::adopt_settled(&rig.ctl, &[survivor], BOUND) {
        Ok(Some(a)) => a,
        Ok(None) => panic!("{what}: nothing answers the control socket"),
        Err(e) => panic!("{what}: adoption refused: {e}"),
    };
    assert_eq!(adopted.pid, survivor, "{what}: adopted another process");
    let names: Vec<&str> = adopted.listeners.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["main"], "{what}");
    let held = rig.supervisor.listeners().next().unwrap().fd;
    assert_eq!(
        identity(adopted.listeners[0].1.as_fd()).unwrap(),
        identity(held).unwrap(),
        "{what}: not the socket the supervisor held"
    );
    let (_, fd) = adopted.listeners.into_iter().next().unwrap();
    let sup = std::sync::Arc::new(
        handoff_std::Supervisor::new(&rig.ctl)
            .unwrap()
            .with_listener("main", fd)
            .unwrap(),
    );
    sup.set_incumbent_pid(Some(survivor));
    let outcome = support::run_handoff(runtime, &sup, rig.spec(runtime, ""));
    assert!(
        outcome.committed(),
        "{what}: the handoff after adoption: {:?} {:?}",
        outcome.result,
        outcome.detail
    );
    assert_eq!(Some(rig.serving_pid()), outcome.successor_pid, "{what}");
    assert!(wait_gone(survivor, BOUND), "{what}: the adopted one stays");
}

/// The directory of one run's marker and trace, watched with inotify so
/// that a wait for another process to write there is woken by the write.
struct Files {
    dir: TempDir,
    inotify: std::fs::File,
}

impl Files {
    fn new() -> Files {
        let dir = TempDir::new("cp-files");
        #[allow(unsafe_code)]
        // SAFETY: inotify_init1 takes flags only and returns a new
        // descriptor (checked below), which the OwnedFd then owns.
        let inotify = unsafe {
            let fd = libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK);
            assert!(fd >= 0, "inotify_init1");
            <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
        };
        let path = std::ffi::CString::new(dir.0.as_os_str().as_encoded_bytes()).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: a live inotify descriptor and a NUL-terminated path that
        // outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(
                std::os::fd::AsRawFd::as_raw_fd(&inotify),
                path.as_ptr(),
                libc::IN_CREATE | libc::IN_MODIFY | libc::IN_CLOSE_WRITE,
            )
        };
        assert!(wd >= 0, "inotify_add_watch");
        Files { dir, inotify }
    }

    /// Waits, within [`BOUND`], for `cond` about the files here: looked at
    /// again after each change to the directory (the watch is in place
    /// before any process of the run starts, so no change goes unseen).
    fn until(&self, what: &str, event: &str, mut cond: impl FnMut() -> bool) {
        let t0 = std::time::Instant::now();
        while !cond() {
            let left = BOUND.saturating_sub(t0.elapsed());
            assert!(!left.is_zero(), "{what}: not within {BOUND:?}: {event}");
            let _ = poll_readable(&[self.inotify.as_fd()], Some(left));
            // Drain what woke us; the condition is looked at anew.
            let mut buf = [0u8; 4096];
            while (&self.inotify).read(&mut buf).is_ok_and(|n| n > 0) {}
        }
    }
}

/// Waits, within [`BOUND`], until at most one daemon of `rig` runs: woken
/// by each exit.
fn until_one_daemon(rig: &Rig, what: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let live = daemons_of(rig);
        if live.len() <= 1 {
            return;
        }
        let left = BOUND.saturating_sub(t0.elapsed());
        assert!(!left.is_zero(), "{what}: still {live:?} after {BOUND:?}");
        let watches: Vec<ExitWatch> = live
            .iter()
            .filter_map(|p| ExitWatch::new(*p).ok())
            .collect();
        if watches.len() < live.len() {
            // One is gone already: look again.
            continue;
        }
        let fds: Vec<_> = watches.iter().map(|w| w.as_fd()).collect();
        let _ = poll_readable(&fds, Some(left));
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
