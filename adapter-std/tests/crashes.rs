//! Kill each process at each protocol step (the `crash-points` feature,
//! driven by `HANDOFF_CRASH_AT`) and check invariant 7 of docs/PROTOCOL.md section 7: the system
//! recovers to exactly one serving incumbent, the only lock holder. Where
//! nobody is left (the incumbent died before sealing), recovery is what the
//! supervisor binary does: start the daemon again, cold, which must find
//! the lock free.

mod common;

use handoff_std::PerformHandoff;
use std::io::BufReader;
use std::sync::Once;

use common::*;
use handoff_std::os::crash::points_of;
use handoff_std::os::spawn::{Child, ChildStdio, Launch, PassedListener, spawn_cold_vfork};

/// Orphans of a killed supervisor come back to this process, so the test
/// can reap them and tell a live process from a zombie.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag, no pointer.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0);
    });
}

/// Processes (not zombies) whose command line mentions `needle`.
fn live_processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Reaps the orphans that came back to us (a killed supervisor's
/// successor) once they exit; our own `Child` handles reap theirs.
fn reap_orphans(rig: &Rig) {
    let me = std::process::id().to_string();
    let ours: Vec<u32> = std::iter::once(rig.incumbent.id())
        .chain(rig.spawned.iter().map(|c| c.id()))
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, ppid) = (fields.next(), fields.next());
        if state == Some("Z") && ppid == Some(me.as_str()) && !ours.contains(&pid) {
            #[allow(unsafe_code)]
            // SAFETY: waitpid on one exited child, null status, no blocking.
            unsafe {
                libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG)
            };
        }
    }
}

/// The crash tests make this process a subreaper and scan `/proc`: one at a
/// time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until exactly one daemon of this rig runs, and returns its pid.
fn settle_to_one(rig: &Rig) -> u32 {
    let needle = rig.ctl.to_string_lossy().into_owned();
    let t0 = std::time::Instant::now();
    loop {
        reap_orphans(rig);
        let live = live_processes_with(&needle);
        if live.len() == 1 {
            return live[0];
        }
        assert!(
            t0.elapsed() < BOUND,
            "still {} processes after the bound: {live:?}",
            live.len()
        );
        // Each remaining process is waited on, not slept on.
        for pid in live {
            if wait_gone(pid, std::time::Duration::from_millis(50)) {
                break;
            }
        }
    }
}

fn assert_one_serving_incumbent(rig: &Rig, pid: u32) {
    assert_eq!(rig.serving_pid(), pid, "the survivor serves the port");
    assert_eq!(rig.lock_holder(), Some(pid), "and holds the lock");
    assert!(!rig.lock_is_free());
    assert!(rig.request("INC").starts_with("OK "), "and writes");
}

/// Starts a fresh incumbent, as the supervisor binary does when none is
/// left; it must find the lock free (or free it from a dead holder).
fn restart_cold(rig: &mut Rig) -> u32 {
    let listener = rig.supervisor.listeners().next().unwrap();
    let mut launch = Launch::new(daemon_bin());
    launch
        .arg("--control-socket")
        .arg(&rig.ctl)
        .arg("--data-dir")
        .arg(&rig.data)
        .stdout(ChildStdio::Piped);
    let mut child = spawn_cold_vfork(
        launch,
        &[PassedListener {
            name: "main",
            fd: listener.fd,
        }],
    )
    .unwrap();
    let line = read_line_bounded(BufReader::new(child.stdout.take().unwrap()))
        .expect("the restarted daemon serves");
    assert!(line.starts_with("ready "));
    let pid = child.id();
    rig.spawned.push(child);
    pid
}

/// The test daemon as a supervisor process running one handoff of `rig`'s
/// daemon (its successor inherits `env` too).
fn supervise(rig: &Rig, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    supervise_with(rig, env, ChildStdio::Null, ChildStdio::Inherit)
}

/// [`supervise`], its standard output and error sent to `stdout` and
/// `stderr`. It prints `outcome committed=…` when the handoff ends, then
/// (if it committed) stays, as the new incumbent's parent.
fn supervise_with(
    rig: &Rig,
    env: &[(&str, &std::ffi::OsStr)],
    stdout: ChildStdio,
    stderr: ChildStdio,
) -> Child {
    let listener = rig.supervisor.listeners().next().unwrap();
    let mut launch = Launch::new(daemon_bin());
    launch
        .arg("supervise")
        .arg("--control-socket")
        .arg(&rig.ctl)
        .arg("--data-dir")
        .arg(&rig.data)
        .arg("--binary")
        .arg(daemon_bin())
        .arg("--journal")
        .arg(rig.dir.0.join("journal"))
        .envs(env.iter().copied())
        .stdout(stdout)
        .stderr(stderr);
    spawn_cold_vfork(
        launch,
        &[PassedListener {
            name: "main",
            fd: listener.fd,
        }],
    )
    .unwrap()
}

#[test]
fn a_name_that_is_not_a_crash_point_is_refused_with_the_list() {
    let rig = Rig::start("walk-refused");
    // Sent, not received: the supervisor never receives `Begin`.
    let wrong = std::ffi::OsStr::new("supervisor-after-begin-received");
    let mut sup = supervise_with(
        &rig,
        &[("HANDOFF_CRASH_AT", wrong)],
        ChildStdio::Null,
        ChildStdio::Piped,
    );
    let status = wait_exit(&mut sup, BOUND).expect("the supervisor stops");
    assert_eq!(status.code(), Some(98), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut sup.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("\"supervisor-after-begin-received\" is not a crash point")
            && err.contains("supervisor-after-begin-sent"),
        "{err}"
    );
    // Nothing of the handoff happened: the old daemon serves on.
    assert_eq!(rig.serving_pid(), rig.incumbent_pid());
}

#[test]
fn supervisor_killed_at_every_step_recovers_to_one_incumbent() {
    let _serial = serial();
    become_subreaper();
    // Nothing is journaled before the successor's `Hello`.
    let early = [
        "supervisor-after-hello-received",
        "supervisor-after-hello-ack-sent",
        "supervisor-after-heartbeat-sent",
        "supervisor-after-spawn",
    ];
    for point in points_of("supervisor") {
        let mut rig = Rig::start("s-crash");
        let marker = rig.dir.0.join("marker");
        let mut supervisor = supervise(
            &rig,
            &[
                ("HANDOFF_CRASH_AT", std::ffi::OsStr::new(point)),
                ("HANDOFF_CRASH_MARKER", marker.as_os_str()),
            ],
        );
        let status = wait_exit(&mut supervisor, BOUND).expect("the supervisor ends");
        assert_eq!(status.code(), Some(99), "{point}: it must crash there");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), point);

        let survivor = settle_to_one(&rig);
        assert_one_serving_incumbent(&rig, survivor);
        // A restarted supervisor finds where the handoff stood (as far as
        // the journal, written behind the protocol, had got), once.
        let record = rig.supervisor.resume_from_journal().unwrap();
        if let Some(r) = record {
            assert!(
                !early.contains(&point),
                "{point}: nothing is journaled before both Hellos: {r:?}"
            );
            assert_eq!(r.incumbent_pid, rig.incumbent_pid(), "{point}");
            assert!(r.successor_pid.is_some(), "{point}");
        }
        assert!(rig.supervisor.resume_from_journal().unwrap().is_none());
        // The crashed supervisor's successor is the survivor or is gone.
        if survivor != rig.incumbent_pid() {
            assert!(wait_exit(&mut rig.incumbent, BOUND).is_some(), "{point}");
        }
        // Leave no process behind.
        #[allow(unsafe_code)]
        // SAFETY: kill takes integers only.
        unsafe {
            libc::kill(survivor as i32, libc::SIGKILL)
        };
        assert!(wait_gone(survivor, BOUND));
        reap_orphans(&rig);
    }
}

#[test]
fn incumbent_killed_at_every_step_recovers_to_one_incumbent() {
    let _serial = serial();
    become_subreaper();
    for point in points_of("incumbent") {
        let mut rig = Rig::start_with("o-crash", &[("HANDOFF_CRASH_AT", point)]);
        let outcome = rig.supervisor.perform_handoff(rig.spec("")).unwrap();
        let status = wait_exit(&mut rig.incumbent, BOUND).expect("the incumbent ends");
        assert_eq!(status.code(), Some(99), "{point}: it must crash there");
        let committed = outcome.committed();
        if let Some(child) = outcome.child {
            rig.spawned.push(child);
        }
        if !committed {
            // Nobody serves; the supervisor binary starts the daemon again.
            restart_cold(&mut rig);
        }
        let survivor = settle_to_one(&rig);
        assert_one_serving_incumbent(&rig, survivor);
    }
}

#[test]
fn successor_killed_at_every_step_recovers_to_one_incumbent() {
    let _serial = serial();
    become_subreaper();
    for point in points_of("successor") {
        let mut rig = Rig::start("n-crash");
        let marker = rig.dir.0.join("marker");
        let spec = rig
            .spec("")
            .env("HANDOFF_CRASH_AT", point)
            .env("HANDOFF_CRASH_MARKER", &marker);
        let outcome = rig.supervisor.perform_handoff(spec).unwrap();
        if let Some(mut child) = outcome.child {
            let status = wait_exit(&mut child, BOUND).expect("the successor ends");
            assert_eq!(status.code(), Some(99), "{point}");
            // It died after `Ready`: the old binary committed and exits;
            // the supervisor binary starts the daemon again.
            assert!(wait_exit(&mut rig.incumbent, BOUND).is_some());
            restart_cold(&mut rig);
        } else {
            assert!(!outcome.committed(), "{point}");
        }
        assert_eq!(
            std::fs::read_to_string(&marker).ok().as_deref(),
            Some(point),
            "{point}: the successor did not crash there"
        );
        let survivor = settle_to_one(&rig);
        assert_one_serving_incumbent(&rig, survivor);
    }
}
