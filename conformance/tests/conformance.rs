//! The conformance suite: the process-level scenarios of handoff-std,
//! written once and run with every adapter in every role, and across them
//! (a std incumbent handing off to a smol successor, a mio incumbent to a
//! std successor under a mio supervisor, …). The daemons are this test
//! binary re-executed (see `support::daemon`), so every runtime's daemon is
//! real code driven by real processes, sockets, locks and signals.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use handoff_core::{HandoffId, Message, encode_frame};
use handoff_std::os::spawn::{Child, ChildStdio, PassedListener, spawn_cold_vfork};
use handoff_std::{AbortReason, IncumbentFate, SuccessorFate};
use support::{BOUND, Rig, Runtime, daemon_command, run_handoff, wait_exit, wait_gone};

/// The entry point of every daemon process the suite starts.
#[test]
#[ignore = "runs only as the daemon the suite starts"]
fn daemon_entry() {
    if let Ok(args) = std::env::var("HANDOFF_DAEMON_ARGS") {
        std::process::exit(support::daemon::main(&args));
    }
}

/// Which runtime plays which role.
#[derive(Clone, Copy, Debug)]
struct Combo {
    supervisor: Runtime,
    incumbent: Runtime,
    successor: Runtime,
}

impl Combo {
    fn tag(&self) -> String {
        format!(
            "{}{}{}",
            self.supervisor.code(),
            self.incumbent.code(),
            self.successor.code()
        )
    }
}

fn happy_path(c: Combo) {
    let mut rig = Rig::start(&c.tag(), c.incumbent, "");
    let old = rig.incumbent.id();
    assert_eq!(rig.serving_pid(), old);
    assert_eq!(rig.request("INC"), "OK 1");
    let mut outcome = run_handoff(c.supervisor, &rig.supervisor, rig.spec(c.successor, ""));
    assert!(
        outcome.committed(),
        "{c:?}: {:?} {:?}",
        outcome.result,
        outcome.detail
    );
    let child = outcome.child.take().unwrap();
    let new = child.id();
    rig.spawned.push(child);
    assert!(
        wait_exit(&mut rig.incumbent, BOUND).is_some(),
        "{c:?}: the old one exits"
    );
    assert_eq!(rig.serving_pid(), new);
    assert_eq!(rig.lock_holder(), Some(new));
    assert_eq!(rig.request("INC"), "OK 2", "{c:?}: state carried over");
    assert_eq!(outcome.sealed_revisions, Some(vec![1]));
    assert_eq!(outcome.advertised_revisions, Some(vec![1]));
}

fn assert_rolled_back(rig: &Rig, c: Combo) {
    assert_eq!(
        rig.serving_pid(),
        rig.incumbent.id(),
        "{c:?}: the old one serves"
    );
    assert_eq!(
        rig.lock_holder(),
        Some(rig.incumbent.id()),
        "{c:?}: with its lock"
    );
    assert!(rig.request("INC").starts_with("OK "), "{c:?}: and writes");
}

fn successor_crashes_before_hello(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    let outcome = run_handoff(
        c.supervisor,
        &rig.supervisor,
        rig.spec(c.successor, "crash-before-hello"),
    );
    assert!(!outcome.committed(), "{c:?}");
    assert_eq!(outcome.successor_fate, SuccessorFate::Exited);
    assert_rolled_back(&rig, c);
}

fn successor_exits_after_begin(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    let outcome = run_handoff(
        c.supervisor,
        &rig.supervisor,
        rig.spec(c.successor, "exit-after-begin"),
    );
    assert!(!outcome.committed(), "{c:?}");
    assert_eq!(outcome.incumbent_fate, IncumbentFate::ToldToResume);
    assert_rolled_back(&rig, c);
    assert_eq!(rig.request("INC"), "OK 3");
}

fn successor_hangs_past_the_deadline(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    let mut spec = rig.spec(c.successor, "hang-after-begin,ignore-term");
    spec.deadline = Duration::from_secs(2);
    let outcome = run_handoff(c.supervisor, &rig.supervisor, spec);
    assert_eq!(outcome.result, Err(AbortReason::ReadyTimeout), "{c:?}");
    assert!(wait_gone(outcome.successor_pid.unwrap(), BOUND));
    assert_rolled_back(&rig, c);
}

fn seal_fails(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "seal-fails");
    let outcome = run_handoff(c.supervisor, &rig.supervisor, rig.spec(c.successor, ""));
    assert_eq!(outcome.result, Err(AbortReason::SealFailed), "{c:?}");
    assert_eq!(outcome.seal_error.as_deref(), Some("disk full (test)"));
    assert_rolled_back(&rig, c);
}

fn successor_cannot_bind_the_control_path(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    // The successor's control socket path lies in a directory that does
    // not exist: it must fail before `Ready`, while the old binary can
    // still resume, not once it is authoritative and the old one is gone.
    let ctl = rig.dir.0.join("missing").join("ctl.sock");
    let spec = support::successor_spec(c.successor, &ctl, &rig.data, "");
    let outcome = run_handoff(c.supervisor, &rig.supervisor, spec);
    assert!(!outcome.committed(), "{c:?}: {:?}", outcome.result);
    assert_rolled_back(&rig, c);
    assert_eq!(rig.request("INC"), "OK 3", "{c:?}");
}

/// Starts this binary as a supervisor process for one handoff of `rig`'s
/// daemon, in `c`'s runtimes, with `extra` arguments and `env`; `stdout`
/// is where its outcome line goes.
fn start_supervise(
    rig: &Rig,
    c: Combo,
    extra: &str,
    env: &[(&str, &str)],
    stdout: ChildStdio,
) -> Child {
    let listener = rig.supervisor.listeners().next().unwrap();
    let mut cmd = daemon_command(&format!(
        "supervise --runtime {} --successor-runtime {} --control-socket {} --data-dir {} {extra}",
        c.supervisor.name(),
        c.successor.name(),
        rig.ctl.display(),
        rig.data.display(),
    ));
    cmd.envs(env.iter().copied()).stdout(stdout);
    spawn_cold_vfork(
        cmd,
        &[PassedListener {
            name: "main",
            fd: listener.fd,
        }],
    )
    .unwrap()
}

fn supervisor_killed(c: Combo) {
    for point in [
        "supervisor-after-seal-request-sent",
        "supervisor-after-begin-sent",
    ] {
        let rig = Rig::start(&c.tag(), c.incumbent, "");
        let journal = format!("--journal {}", rig.dir.0.join("journal").display());
        let crash = [("HANDOFF_CRASH_AT", point)];
        let mut sup = start_supervise(&rig, c, &journal, &crash, ChildStdio::Null);
        let status = wait_exit(&mut sup, BOUND).expect("the supervisor ends");
        assert_eq!(status.code(), Some(99), "{c:?} {point}: crashed there");
        // The crashed supervisor's successor is the daemon of this rig that
        // is not ours, unless it already exited. Exactly one survives.
        let _ = rig.supervisor.resume_from_journal();
        let incumbent = rig.incumbent.id();
        let successor = support::daemons_of(&rig)
            .into_iter()
            .find(|p| *p != incumbent);
        let t0 = std::time::Instant::now();
        let survivor = loop {
            let o_gone = wait_gone(incumbent, Duration::from_millis(20));
            let n_gone = successor.is_none_or(|n| wait_gone(n, Duration::from_millis(20)));
            match (o_gone, n_gone, successor) {
                (false, true, _) => break incumbent,
                (true, false, Some(n)) => break n,
                (true, _, _) => panic!("{c:?} {point}: the incumbent died and nobody serves"),
                (false, false, _) => assert!(t0.elapsed() < BOUND, "{c:?} {point}: both alive"),
            }
        };
        assert_eq!(rig.serving_pid(), survivor, "{c:?} {point}");
        assert_eq!(rig.lock_holder(), Some(survivor), "{c:?} {point}");
        if survivor != incumbent {
            // Not our child: stop it ourselves.
            #[allow(unsafe_code)]
            // SAFETY: kill takes integers only.
            unsafe {
                libc::kill(survivor as i32, libc::SIGKILL)
            };
        }
    }
}

/// Whether `pid` is stopped (state `T` in its stat line).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

fn supervisor_frozen_past_the_deadline(c: Combo) {
    // The supervisor process stops (SIGSTOP, as a debugger or a frozen
    // cgroup would) right after asking for the seal, and stays stopped past
    // the handoff's deadline. The incumbent must take its lock back and
    // serve by itself; once the supervisor goes on, nothing it does may
    // give the data to a second writer.
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    let stop = [
        ("HANDOFF_CRASH_AT", "supervisor-after-seal-request-sent"),
        ("HANDOFF_CRASH_MODE", "stop"),
    ];
    let sup = start_supervise(&rig, c, "--deadline-ms 1500", &stop, ChildStdio::Piped);
    // A failed assertion must not leave it stopped for good.
    struct KillOnDrop(Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(None) = self.0.try_wait() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let mut guard = KillOnDrop(sup);
    let sup = &mut guard.0;
    let t0 = std::time::Instant::now();
    while !is_stopped(sup.id()) {
        assert!(t0.elapsed() < BOUND, "{c:?}: the supervisor never stopped");
        assert!(
            sup.try_wait().unwrap().is_none(),
            "{c:?}: it exited instead"
        );
        std::thread::yield_now();
    }
    // The incumbent drained before the seal request: it stopped accepting,
    // so a request waits in the kernel's queue. It is answered once the
    // incumbent has resumed by itself, at its own deadline (the handoff's
    // plus its slack), with the lock taken back and writes accepted.
    assert_eq!(rig.request("INC"), "OK 2", "{c:?}");
    assert_eq!(rig.lock_holder(), Some(rig.incumbent.id()), "{c:?}");

    // SAFETY: kill takes integers only; the pid is our child's.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(sup.id() as i32, libc::SIGCONT)
    };
    let status = wait_exit(sup, BOUND).expect("the supervisor ends");
    assert_eq!(status.code(), Some(0), "{c:?}");
    let mut said = String::new();
    sup.stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(said.contains("committed=false"), "{c:?}: {said:?}");
    // One writer: the incumbent, with its lock and every write so far.
    let t1 = std::time::Instant::now();
    while support::daemons_of(&rig) != [rig.incumbent.id()] {
        assert!(t1.elapsed() < BOUND, "{c:?}: a successor is left");
        std::thread::yield_now();
    }
    assert_eq!(rig.lock_holder(), Some(rig.incumbent.id()), "{c:?}");
    assert_eq!(rig.serving_pid(), rig.incumbent.id(), "{c:?}");
    assert_eq!(rig.request("INC"), "OK 3", "{c:?}");
}

fn a_full_accept_queue_bounds_the_connect(c: Combo) {
    // The incumbent is stopped (a debugger, a frozen cgroup) and its
    // control socket's accept queue is full: a connect would wait without
    // end. Every supervisor adapter gives up within the hello timeout and
    // says why, and the incumbent, thawed, serves on untouched.
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    let pid = rig.incumbent.id();
    // SAFETY: kill takes integers only; the pid is our child's.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGSTOP)
    };
    struct Thaw(u32);
    impl Drop for Thaw {
        fn drop(&mut self) {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.0 as i32, libc::SIGCONT)
            };
        }
    }
    let thaw = Thaw(pid);
    let mut queued = Vec::new();
    loop {
        match mio::net::UnixStream::connect(&rig.ctl) {
            Ok(s) => queued.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{c:?}: filling the queue: {e}"),
        }
        assert!(queued.len() < 100_000, "{c:?}: the queue never filled");
    }
    let started = std::time::Instant::now();
    let outcome = run_handoff(c.supervisor, &rig.supervisor, rig.spec(c.successor, ""));
    assert!(started.elapsed() < BOUND, "{c:?}: {:?}", started.elapsed());
    assert_eq!(
        outcome.result,
        Err(AbortReason::IncumbentUnreachable),
        "{c:?}"
    );
    assert_eq!(outcome.successor_pid, None, "{c:?}: nothing was spawned");
    drop(queued);
    drop(thaw);
    assert_eq!(rig.request("INC"), "OK 2", "{c:?}");
    assert_eq!(rig.lock_holder(), Some(pid), "{c:?}");
}

fn an_abort_queued_before_ready_wins(c: Combo) {
    // The successor gets `Begin`, and the daemon asks for `Ready` only once
    // the supervisor has written again: its `Abort`, at the deadline. The
    // `Abort` is queued on the successor's socket when the daemon's `Ready`
    // comes; the adapter must read it first, fail, and never take over.
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    let marker = rig.dir.0.join("authoritative");
    let mut spec = rig
        .spec(c.successor, "ready-after-abort,ignore-term")
        .env("AUTHORITATIVE_MARKER", &marker);
    spec.deadline = Duration::from_secs(1);
    let outcome = run_handoff(c.supervisor, &rig.supervisor, spec);
    assert_eq!(outcome.result, Err(AbortReason::ReadyTimeout), "{c:?}");
    assert!(wait_gone(outcome.successor_pid.unwrap(), BOUND), "{c:?}");
    assert!(
        !marker.exists(),
        "{c:?}: the successor took over after it was told to abort"
    );
    assert_rolled_back(&rig, c);
    assert_eq!(rig.request("INC"), "OK 3", "{c:?}");
}

fn back_to_back_handoff_waits_for_the_path(c: Combo) {
    // The first handoff's successor is held (stopped) after `Ready`, just
    // before it renames its control socket over the path. The supervisor
    // is done with that handoff at `Commit` and a second one starts at
    // once: while the path names a socket of another process (here one of
    // this test's own, as the exiting old incumbent's would be) or a socket
    // nobody listens on, it must keep trying within the hello timeout, not
    // abort, and commit once the new incumbent has taken the path over.
    let mut rig = Rig::start(&c.tag(), c.incumbent, "");
    assert_eq!(rig.request("INC"), "OK 1");
    let held = rig
        .spec(c.successor, "")
        .env("HANDOFF_CRASH_AT", "successor-before-control-path-taken")
        .env("HANDOFF_CRASH_MODE", "stop");
    let mut first = run_handoff(c.supervisor, &rig.supervisor, held);
    assert!(
        first.committed(),
        "{c:?}: {:?} {:?}",
        first.result,
        first.detail
    );
    let n1 = first.child.take().unwrap();
    let n1_pid = n1.id();
    rig.spawned.push(n1);
    // A failed assertion must not leave it stopped for good.
    struct ContinueOnDrop(u32);
    impl Drop for ContinueOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill takes integers only.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.0 as i32, libc::SIGCONT)
            };
        }
    }
    let thaw = ContinueOnDrop(n1_pid);
    let t0 = std::time::Instant::now();
    while !is_stopped(n1_pid) {
        assert!(
            t0.elapsed() < BOUND,
            "{c:?}: the successor never got to the point"
        );
        std::thread::yield_now();
    }
    assert_eq!(rig.supervisor.incumbent_pid(), Some(n1_pid), "{c:?}");
    assert!(
        wait_exit(&mut rig.incumbent, BOUND).is_some(),
        "{c:?}: the old one exits on Commit"
    );

    // The path names a live socket of another process.
    let decoy_path = rig.dir.0.join("decoy.sock");
    let decoy = std::os::unix::net::UnixListener::bind(&decoy_path).unwrap();
    std::fs::rename(&decoy_path, &rig.ctl).unwrap();
    decoy.set_nonblocking(true).unwrap();
    let outcome = std::thread::scope(|s| {
        let second =
            s.spawn(|| run_handoff(c.supervisor, &rig.supervisor, rig.spec(c.successor, "")));
        // The supervisor connects to it, sees from the kernel whose socket
        // it is, and hangs up without waiting for a `Hello`.
        let t1 = std::time::Instant::now();
        let mut conn = loop {
            match decoy.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        !second.is_finished(),
                        "{c:?}: the second handoff ended without trying the path again"
                    );
                    assert!(t1.elapsed() < BOUND, "{c:?}: nobody connected");
                    std::thread::yield_now();
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(BOUND)).unwrap();
        let mut sink = [0u8; 64];
        let got = loop {
            match conn.read(&mut sink) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        assert!(
            matches!(got, Ok(0)),
            "{c:?}: the supervisor hangs up on a socket that is not the incumbent's: {got:?}"
        );
        // Now the path names a socket nobody listens on (refused).
        drop(decoy);
        drop(thaw);
        second.join().unwrap()
    });
    {
        let mut outcome = outcome;
        assert!(
            outcome.committed(),
            "{c:?}: {:?} {:?}",
            outcome.result,
            outcome.detail
        );
        assert_eq!(outcome.incumbent_pid, Some(n1_pid), "{c:?}");
        assert!(
            outcome.connect_attempts > 1,
            "{c:?}: {}",
            outcome.connect_attempts
        );
        let n2 = outcome.child.take().unwrap();
        let n2_pid = n2.id();
        rig.spawned.push(n2);
        assert_eq!(rig.serving_pid(), n2_pid, "{c:?}");
        assert_eq!(rig.lock_holder(), Some(n2_pid), "{c:?}");
        assert_eq!(
            rig.request("INC"),
            "OK 2",
            "{c:?}: state carried over twice"
        );
    }
}

fn hostile_control_peers(c: Combo) {
    let rig = Rig::start(&c.tag(), c.incumbent, "");
    let id = HandoffId::from_bytes([7; 16]);
    let mut frame = vec![0u8; 64];
    let n = encode_frame(
        1,
        &Message::HelloAck {
            proto_version_chosen: 1,
            handoff_id: id,
        },
        &mut frame,
    )
    .unwrap();
    let mut wrong_id = frame[..n].to_vec();
    let m = encode_frame(1, &Message::SealRequest { handoff_id: id }, &mut frame).unwrap();
    wrong_id.extend(&frame[..m]);
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (2u32 << 20).to_le_bytes().to_vec(),
        wrong_id,
    ] {
        let mut s = UnixStream::connect(&rig.ctl).unwrap();
        s.set_read_timeout(Some(BOUND)).unwrap();
        // Reads with a timeout are not restarted after this process is
        // stopped and continued (a frozen cgroup): `Interrupted` is retried.
        let mut hello = [0u8; 256];
        let n = loop {
            match s.read(&mut hello) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.unwrap(),
            }
        };
        assert!(n > 6, "{c:?}: Hello first");
        let _ = s.write_all(&bytes);
        let mut sink = [0u8; 256];
        loop {
            match s.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("{c:?}: the session must close, got {e}"),
            }
        }
        assert_rolled_back(&rig, c);
    }
}

/// Waits until a handoff of `rig` has its successor running and a journal
/// record written; the successor's pid.
fn successor_starting(rig: &Rig) -> u32 {
    let journal = rig.dir.0.join("journal");
    let t0 = std::time::Instant::now();
    loop {
        let others: Vec<u32> = support::daemons_of(rig)
            .into_iter()
            .filter(|&p| p != rig.incumbent.id())
            .collect();
        if journal.exists()
            && let [successor] = others[..]
        {
            return successor;
        }
        assert!(t0.elapsed() < BOUND, "the handoff never got going");
        std::thread::yield_now();
    }
}

/// After a handoff abandoned midway: no successor left, no journal record
/// (once written out), and the incumbent serves with its lock.
fn assert_abandoned_cleanly(rig: &Rig, successor: u32) {
    assert!(
        wait_gone(successor, BOUND),
        "the successor was left running"
    );
    assert!(rig.supervisor.flush_journal());
    assert!(
        !rig.dir.0.join("journal").exists(),
        "the journal still holds the abandoned handoff"
    );
    assert_eq!(rig.serving_pid(), rig.incumbent.id());
    assert_eq!(rig.lock_holder(), Some(rig.incumbent.id()));
    assert!(rig.request("INC").starts_with("OK "));
}

#[test]
fn a_cancelled_smol_handoff_stops_its_successor_and_clears_its_journal() {
    let rig = Rig::start("cancel", Runtime::Std, "");
    // A successor that never gets ready: the handoff is still in flight
    // whenever the watcher looks.
    let spec = rig.spec(Runtime::Std, "hang-after-begin");
    let (seen_tx, seen_rx) = UnixStream::pair().unwrap();
    let successor = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let pid = successor_starting(&rig);
            (&seen_tx).write_all(b"!").unwrap();
            pid
        });
        async_io::block_on(async {
            let handoff = async {
                let outcome = handoff_smol::perform_handoff(&rig.supervisor, spec).await;
                panic!("the handoff ended: {outcome:?}");
            };
            let seen = async {
                let seen = async_io::Async::new(seen_rx).unwrap();
                seen.readable().await.unwrap();
            };
            futures_lite::FutureExt::or(handoff, seen).await;
            // The handoff future is dropped here, mid-handoff.
        });
        watcher.join().unwrap()
    });
    assert_abandoned_cleanly(&rig, successor);
}

#[test]
fn a_mio_loop_dropped_with_a_handoff_in_flight_stops_its_successor_and_clears_its_journal() {
    use handoff_mio::MioSupervisor;
    let rig = Rig::start("dropped", Runtime::Std, "");
    let spec = rig.spec(Runtime::Std, "hang-after-begin");
    let mut poll = mio::Poll::new().unwrap();
    let mut ms = MioSupervisor::new(10, 1);
    let id = ms.add_service(rig.supervisor.clone());
    ms.start_handoff(poll.registry(), id, spec).unwrap();
    // Run the loop until the successor is spawned and the journal written.
    let journal = rig.dir.0.join("journal");
    let mut events = mio::Events::with_capacity(16);
    let t0 = std::time::Instant::now();
    while !journal.exists() || support::daemons_of(&rig).len() < 2 {
        assert!(t0.elapsed() < BOUND, "the handoff never got going");
        let t = ms
            .poll_timeout()
            .map(|t| t.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or(std::time::Duration::from_millis(10))
            .min(std::time::Duration::from_millis(10));
        if let Err(e) = poll.poll(&mut events, Some(t)) {
            assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
        }
        for event in &events {
            ms.handle_event(poll.registry(), event);
        }
        ms.handle_timeout(poll.registry());
    }
    let successor = successor_starting(&rig);
    drop(ms);
    assert_abandoned_cleanly(&rig, successor);
}

macro_rules! suite {
    ($name:ident, $sup:ident, $inc:ident, $succ:ident) => {
        mod $name {
            use super::*;
            const C: Combo = Combo {
                supervisor: Runtime::$sup,
                incumbent: Runtime::$inc,
                successor: Runtime::$succ,
            };
            #[test]
            fn happy_path() {
                super::happy_path(C)
            }
            #[test]
            fn successor_crashes_before_hello() {
                super::successor_crashes_before_hello(C)
            }
            #[test]
            fn successor_exits_after_begin() {
                super::successor_exits_after_begin(C)
            }
            #[test]
            fn successor_hangs_past_the_deadline() {
                super::successor_hangs_past_the_deadline(C)
            }
            #[test]
            fn seal_fails() {
                super::seal_fails(C)
            }
            #[test]
            fn successor_cannot_bind_the_control_path() {
                super::successor_cannot_bind_the_control_path(C)
            }
            #[test]
            fn supervisor_killed() {
                super::supervisor_killed(C)
            }
            #[test]
            fn supervisor_frozen_past_the_deadline() {
                super::supervisor_frozen_past_the_deadline(C)
            }
            #[test]
            fn hostile_control_peers() {
                super::hostile_control_peers(C)
            }
            #[test]
            fn a_full_accept_queue_bounds_the_connect() {
                super::a_full_accept_queue_bounds_the_connect(C)
            }
            #[test]
            fn an_abort_queued_before_ready_wins() {
                super::an_abort_queued_before_ready_wins(C)
            }
            #[test]
            fn back_to_back_handoff_waits_for_the_path() {
                super::back_to_back_handoff_waits_for_the_path(C)
            }
        }
    };
}

suite!(all_std, Std, Std, Std);
suite!(all_mio, Mio, Mio, Mio);
suite!(all_smol, Smol, Smol, Smol);
// Across adapters: the wire is the contract, not the runtime.
suite!(mio_supervises_std_to_smol, Mio, Std, Smol);
suite!(mio_supervises_mio_to_std, Mio, Mio, Std);
suite!(smol_supervises_smol_to_mio, Smol, Smol, Mio);
suite!(all_tokio, Tokio, Tokio, Tokio);
suite!(all_tokio_current_thread, TokioCt, TokioCt, TokioCt);
suite!(tokio_supervises_std_to_smol, Tokio, Std, Smol);
suite!(std_supervises_tokio_to_mio, Std, TokioCt, Mio);
suite!(mio_supervises_smol_to_tokio, Mio, Smol, Tokio);
