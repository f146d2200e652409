//! `handoff-supervisor run` as a process: signals, systemd's socket
//! activation and readiness notification.

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::*;
use handoff_supervisor::Status;
use handoff_supervisor::client::{self, Reply};

/// The supervisor's status, through its trigger socket.
fn status(layout: &Layout) -> Status {
    let line = client::status(&layout.trigger).unwrap();
    match Reply::parse(&line).unwrap() {
        Reply::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

#[test]
fn sigterm_stops_the_supervisor_and_everything_it_started() {
    // Given a supervisor that has handed off once (so it has started a
    // cold daemon and a successor), reporting to an abstract socket,
    let layout = Layout::new("term");
    layout.write_config("127.0.0.1:0", "");
    let notify = NotifySocket::abstract_named("term");
    let mut sup = RunningSupervisor::start(&layout, &notify, None);
    notify.wait_for("READY=1");
    let cold = status(&layout).incumbent_pid.unwrap();
    // The daemon starts with nothing blocked, though the supervisor blocks
    // the signals it takes with sigwait.
    assert_eq!(sigblk(cold), "0000000000000000");
    let out = run_cli(&["trigger", "--config", layout.config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let successor = status(&layout).incumbent_pid.unwrap();
    assert_ne!(successor, cold);

    // when it gets SIGTERM,
    sup.signal(libc::SIGTERM);

    // then it says it is stopping, exits 0, and leaves no process, no
    // trigger socket and no journal behind.
    notify.wait_for("STOPPING=1");
    let exit = wait_exit(&mut sup.child, BOUND).expect("the supervisor exits");
    assert_eq!(exit.code(), Some(0), "{exit}");
    for pid in [cold, successor] {
        assert!(
            wait_gone(pid, std::time::Duration::ZERO),
            "pid {pid} is left"
        );
    }
    assert!(!layout.trigger.exists());
    assert!(!layout.journal.exists());
    let log = std::fs::read_to_string(&sup.log).unwrap();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
}

#[test]
fn sighup_hands_off_to_the_configured_binary() {
    let layout = Layout::new("hup");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    layout.write_config(&addr, "");
    let notify = NotifySocket::at_path(layout.dir.path());
    let mut sup = RunningSupervisor::start(&layout, &notify, Some(&listener));
    notify.wait_for("READY=1");
    let old = ping(&addr);

    sup.signal(libc::SIGHUP);
    notify.wait_for("RELOADING=1");
    notify.wait_for("READY=1");

    let new = ping(&addr);
    assert_ne!(new, old);
    let s = status(&layout);
    assert_eq!(s.incumbent_pid, Some(new));
    assert_eq!(s.handoffs, 1);
    // The successor, spawned while the handoff ran, starts with nothing
    // blocked either.
    assert_eq!(sigblk(new), "0000000000000000");
    assert!(wait_gone(old, BOUND));
    sup.signal(libc::SIGTERM);
    assert_eq!(wait_exit(&mut sup.child, BOUND).unwrap().code(), Some(0));
    assert!(wait_gone(new, BOUND));
}

#[test]
fn socket_activation_listeners_are_adopted_by_name() {
    // Given a listener bound by "systemd" and passed as `main`, at the very
    // address the configuration names (binding it again would fail),
    let layout = Layout::new("activation");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    layout.write_config(&addr, "");
    let notify = NotifySocket::at_path(layout.dir.path());
    let mut sup = RunningSupervisor::start(&layout, &notify, Some(&listener));

    // then the supervisor starts, and its daemon serves on that socket.
    notify.wait_for("READY=1");
    let pid = ping(&addr);
    assert_eq!(status(&layout).incumbent_pid, Some(pid));
    let log = std::fs::read_to_string(&sup.log).unwrap();
    assert!(log.contains("adopted the listener"), "{log}");

    // The adopted listener is passed on in a handoff like a bound one.
    let out = run_cli(&["trigger", "--config", layout.config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_ne!(ping(&addr), pid);
    sup.signal(libc::SIGINT);
    assert_eq!(wait_exit(&mut sup.child, BOUND).unwrap().code(), Some(0));
}

#[test]
fn notify_socket_hears_ready_reloading_ready_and_stopping() {
    let layout = Layout::new("notify");
    layout.write_config("127.0.0.1:0", "");
    let notify = NotifySocket::at_path(layout.dir.path());
    let mut sup = RunningSupervisor::start(&layout, &notify, None);

    // First the listener goes to the fd store (the descriptor itself is
    // closed by this plain receive; demo/tests/fdstore.rs keeps it), then
    // READY=1, with a status naming the daemon.
    assert_eq!(notify.next(), "FDSTOREREMOVE=1\nFDNAME=main");
    assert_eq!(notify.next(), "FDSTORE=1\nFDNAME=main");
    let first = notify.next();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    let pid = status(&layout).incumbent_pid.unwrap();
    assert!(
        first.contains(&format!("STATUS=serving: {} pid {pid}", daemon_bin())),
        "{first:?}"
    );

    // A SIGHUP handoff is RELOADING=1 with a monotonic timestamp, then
    // READY=1 again.
    sup.signal(libc::SIGHUP);
    let reloading = notify.next();
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{reloading:?}");
    assert!(lines[1].starts_with("MONOTONIC_USEC="), "{reloading:?}");
    assert!(
        lines[2].starts_with("STATUS=handing off to"),
        "{reloading:?}"
    );
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("committed"), "{ready:?}");

    sup.signal(libc::SIGTERM);
    assert!(notify.next().starts_with("STOPPING=1"));
    assert_eq!(wait_exit(&mut sup.child, BOUND).unwrap().code(), Some(0));
}

/// `run` under a notify socket, ready, with a successor that takes 2 s to
/// start allowed (its path is returned).
fn running_with_a_slow_successor(
    tag: &str,
) -> (Layout, std::path::PathBuf, NotifySocket, RunningSupervisor) {
    let layout = Layout::new(tag);
    let slow = layout.slow_successor(2);
    layout.write_config(
        "127.0.0.1:0",
        &format!("allowed_binaries = [\"{}\"]", slow.display()),
    );
    let notify = NotifySocket::at_path(layout.dir.path());
    let sup = RunningSupervisor::start(&layout, &notify, None);
    notify.wait_for("READY=1");
    (layout, slow, notify, sup)
}

#[test]
fn a_refused_sighup_still_answers_systemd() {
    let (layout, slow, notify, mut sup) = running_with_a_slow_successor("notifyrefused");

    // A triggered handoff to a slow successor is in flight …
    let config = layout.config_file.to_str().unwrap().to_owned();
    let slow_arg = slow.to_str().unwrap().to_owned();
    let trigger = std::thread::spawn(move || {
        run_cli(&["trigger", "--config", &config, "--binary", &slow_arg])
    });
    let started = notify.next();
    assert!(started.starts_with("RELOADING=1"), "{started:?}");

    // … so a SIGHUP is refused, and says so to systemd rather than leave
    // a notify-reload unit waiting for RELOADING=1.
    sup.signal(libc::SIGHUP);
    let refused = notify.next();
    assert!(refused.starts_with("RELOADING=1"), "{refused:?}");
    assert!(refused.contains("STATUS=reload refused"), "{refused:?}");
    let ready = notify.next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("reload refused"), "{ready:?}");

    let out = trigger.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    sup.signal(libc::SIGTERM);
    assert_eq!(wait_exit(&mut sup.child, BOUND).unwrap().code(), Some(0));
}

#[test]
fn a_bad_configuration_stops_run_with_a_message() {
    let layout = Layout::new("badcfg");
    std::fs::write(
        &layout.config_file,
        layout.config_text("127.0.0.1:0", "no_such_key = 1"),
    )
    .unwrap();
    let out = run_cli(&["run", "--config", layout.config_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no_such_key"), "{stderr}");
    assert!(!layout.trigger.exists());
}

#[test]
fn run_refuses_a_trigger_socket_path_that_holds_a_file_or_a_live_socket() {
    let layout = Layout::new("trigbusy");
    std::fs::write(&layout.config_file, layout.config_text("127.0.0.1:0", "")).unwrap();
    let run = || run_cli(&["run", "--config", layout.config_file.to_str().unwrap()]);

    // Someone's file: left as it was.
    std::fs::write(&layout.trigger, "not ours").unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&layout.trigger).unwrap(),
        "not ours"
    );
    std::fs::remove_file(&layout.trigger).unwrap();

    // Another process's live socket (another supervisor's trigger socket,
    // say): still its own afterwards.
    let other = std::os::unix::net::UnixListener::bind(&layout.trigger).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trigger_socket"), "{stderr}");
    std::os::unix::net::UnixStream::connect(&layout.trigger)
        .expect("the other process still owns its socket");
    drop(other);
}

/// The threads of `pid` named `name`, with their blocked signals.
fn threads_named(pid: u32, name: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let name_line = status.lines().next()?;
            (name_line == format!("Name:\t{name}")).then(|| {
                let blocked = status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigBlk:\t"))
                    .unwrap_or_default()
                    .to_owned();
                (tid, blocked)
            })
        })
        .collect()
}

#[test]
fn a_sigterm_during_a_handoff_lets_it_finish_then_stops_cleanly() {
    // Given a handoff in flight through the trigger socket,
    let (layout, slow, notify, mut sup) = running_with_a_slow_successor("midterm");
    let cold = status(&layout).incumbent_pid.unwrap();
    let config = layout.config_file.to_str().unwrap().to_owned();
    let slow_arg = slow.to_str().unwrap().to_owned();
    let trigger = std::thread::spawn(move || {
        run_cli(&["trigger", "--config", &config, "--binary", &slow_arg])
    });
    notify.wait_for("RELOADING=1");
    // whose threads all keep SIGTERM blocked (so the kernel can only leave
    // it pending for the main thread's sigwait, never kill the process),
    for (tid, blocked) in threads_named(sup.pid(), "trigger-conn") {
        let mask = u64::from_str_radix(&blocked, 16).unwrap_or(0);
        assert_ne!(
            mask & (1 << (libc::SIGTERM - 1)),
            0,
            "thread {tid}: {blocked}"
        );
    }

    // when the supervisor gets a SIGTERM,
    // SAFETY: kill takes integers only.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(sup.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(r, 0);

    // then the supervisor is not killed by it: the handoff finishes
    // (committed), and the supervisor then stops cleanly.
    let out = trigger.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    notify.wait_for("STOPPING=1");
    let exit = wait_exit(&mut sup.child, BOUND).expect("the supervisor exits");
    assert_eq!(exit.code(), Some(0), "{exit}");
    assert!(wait_gone(cold, BOUND));
    let log = std::fs::read_to_string(&sup.log).unwrap();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
}

/// Stops `pid` with SIGSTOP, waits (within `BOUND`) until the kernel shows
/// it stopped, then continues it: what a debugger or `systemctl freeze`
/// does. Every timed blocking call of every thread then ends in `EINTR`.
fn freeze_and_thaw(pid: u32) {
    let kill = |signal| {
        // SAFETY: kill takes integers only, and the pid is positive (a
        // child's). It may have exited meanwhile: that shows in the
        // test's own assertions, not here.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as libc::pid_t, signal)
        }
    };
    if kill(libc::SIGSTOP) != 0 {
        return;
    }
    let stat = format!("/proc/{pid}/stat");
    let until = std::time::Instant::now() + BOUND;
    // A process gone meanwhile (it exited) has nothing to thaw.
    while let Ok(text) = std::fs::read_to_string(&stat) {
        // The state follows the parenthesised command name.
        let state = text
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state == Some("T") {
            break;
        }
        assert!(std::time::Instant::now() < until, "{pid} never stopped");
        std::thread::yield_now();
    }
    kill(libc::SIGCONT);
}

/// The children of `pid`, from every thread's `children` list.
fn children_of(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        all.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    all
}

#[test]
fn stopping_and_continuing_every_process_mid_handoff_changes_nothing() {
    let layout = Layout::new("freeze");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let slow = layout.slow_successor(1);
    layout.write_config(
        &addr,
        &format!("allowed_binaries = [\"{}\"]", slow.display()),
    );
    let notify = NotifySocket::at_path(layout.dir.path());
    let mut sup = RunningSupervisor::start(&layout, &notify, Some(&listener));
    notify.wait_for("READY=1");
    let old = ping(&addr);

    let trigger = Command::new(supervisor_bin())
        .args(["trigger", "--timeout-secs", "60", "--config"])
        .arg(&layout.config_file)
        .arg("--binary")
        .arg(&slow)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = trigger.id();
    let waiting = std::thread::spawn(move || trigger.wait_with_output().unwrap());
    assert!(notify.wait_for("RELOADING=1").contains("handing off"));

    // From the successor's start (a second) until the client has its
    // answer, through the drain, seal, Ready and Commit, freeze and thaw the
    // trigger client, the supervisor, the incumbent and the successor, over
    // and over (ten rounds at least).
    let until = std::time::Instant::now() + BOUND;
    let mut rounds = 0;
    while rounds < 10 || !waiting.is_finished() {
        assert!(std::time::Instant::now() < until, "the handoff never ended");
        rounds += 1;
        let mut pids = vec![client, sup.pid(), old];
        pids.extend(children_of(sup.pid()).into_iter().filter(|&p| p != old));
        for pid in pids {
            freeze_and_thaw(pid);
        }
    }

    let out = waiting.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    notify.wait_for("READY=1");
    let new = ping(&addr);
    assert_ne!(new, old);
    assert_eq!(status(&layout).handoffs, 1);
    assert!(wait_gone(old, BOUND));
    sup.signal(libc::SIGTERM);
    assert_eq!(wait_exit(&mut sup.child, BOUND).unwrap().code(), Some(0));
}
