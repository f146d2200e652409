//! The supervisor under a service manager that keeps its listeners in a
//! file-descriptor store, as systemd does for a unit with
//! `FileDescriptorStoreMax=`. No systemd runs on the test machines, so this
//! test plays it: it binds the notify socket, keeps what the supervisor
//! sends with `FDSTORE=1` (by `FDNAME=`, one entry per socket, dropped by
//! `FDSTOREREMOVE=1`), and restarts the supervisor with those sockets at
//! descriptors 3.. and `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`, the
//! datagram and `SCM_RIGHTS` protocol systemd speaks.
//!
//! With the daemon killed together with the supervisor, only the store
//! holds the listening socket: its accept queue stays open, clients'
//! connections wait there, and the restarted supervisor cold-starts kvd on
//! it. (The requests in flight on the killed kvd's own connections die with
//! it; no new connection is refused.) With only the supervisor killed, the restarted one adopts kvd and
//! the store ends as it was, one entry for the one socket.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use common::deployment::{Deployment, LOAD_CLIENTS, assert_writes_flow};
use common::{BOUND, become_subreaper, reap, serial};
use handoff_std::Signal;
use handoff_std::os::process::{send_signal, wait_exit, wait_gone};

/// The store after the first start: the one configured listener, the
/// socket listening on the deployment's address.
fn stored_listener(d: &Deployment, what: &str) -> (u64, u64) {
    let stored = d.stored();
    assert_eq!(
        stored.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["kv"],
        "{what}: the store holds {stored:?}"
    );
    let l = TcpListener::from(d.store[0].1.try_clone().unwrap());
    assert_eq!(l.local_addr().unwrap(), d.addr, "{what}");
    stored[0].1
}

/// Kills the supervisor (and with `daemon_too` the daemon) under load,
/// restarts it from the store, and checks the service came back on the
/// same socket with nothing refused or lost.
fn restart_from_store(runtime: &str, daemon_too: bool) {
    let what = format!(
        "{runtime}, {}",
        if daemon_too {
            "supervisor and daemon killed"
        } else {
            "supervisor killed"
        }
    );
    let mut d = Deployment::new("fdstore", runtime);
    let (first, _) = d.start_supervisor(&[]);
    let socket = stored_listener(&d, &what);
    let daemon = d.status().incumbent_pid.expect("a daemon serves");
    let load = d.load(11);
    assert_writes_flow(&load, 50, &what);

    send_signal(first, Signal::Kill).unwrap();
    if daemon_too {
        send_signal(daemon, Signal::Kill).unwrap();
    }
    wait_exit(&mut d.supervisors[0], BOUND).expect("the supervisor is dead");
    if daemon_too {
        assert!(wait_gone(daemon, BOUND), "{what}: kvd {daemon} lives on");
        reap(daemon);
        assert!(d.live_daemons().is_empty(), "{what}");
    }
    // Nothing of the service runs now (with `daemon_too`), yet a client
    // connects: only the store holds the socket, and its accept queue
    // takes the connection and the request until a daemon reads them.
    let mut waiting = TcpStream::connect_timeout(&d.addr, BOUND)
        .unwrap_or_else(|e| panic!("{what}: connect while restarting: {e}"));
    waiting.set_read_timeout(Some(BOUND)).unwrap();
    waiting.write_all(b"SET waited 1\n").unwrap();

    let (second, ready) = d.start_supervisor_from_store();
    let mut answer = String::new();
    BufReader::new(&waiting).read_line(&mut answer).unwrap();
    assert!(answer.starts_with("OK "), "{what}: {answer:?}");
    drop(waiting);
    let (serving, parent) = d.settle_to_one();
    if daemon_too {
        assert!(!ready.contains("(adopted)"), "{what}: READY says {ready:?}");
        assert_ne!(serving, daemon, "{what}");
        assert_eq!(
            parent, second,
            "{what}: kvd was not started by the supervisor"
        );
    } else {
        assert!(ready.contains("(adopted)"), "{what}: READY says {ready:?}");
        assert_eq!(serving, daemon, "{what}: kvd was restarted");
    }
    assert_eq!(d.status().incumbent_pid, Some(serving), "{what}");
    // The same socket throughout, kept once.
    assert_eq!(stored_listener(&d, &what), socket, "{what}");
    assert_writes_flow(&load, 50, &what);

    assert_eq!(d.trigger(), Ok(true), "{what}: {}", d.log());
    assert_writes_flow(&load, 50, &what);
    let report = load.stop();
    if daemon_too {
        // A daemon killed with SIGKILL takes its open connections with it:
        // the request each client had in flight there is lost (and, not
        // acknowledged, is no lost write). Every connection attempt must
        // succeed, though, before and after the restart.
        assert!(
            report.problems.iter().all(|p| !p.contains(": connect:")),
            "{what}: a connection was refused: {:?}",
            report.problems
        );
        assert!(
            report.requests_failed <= LOAD_CLIENTS as u64,
            "{what}: more failures than requests in flight at the kill: {:?}",
            report.problems
        );
    } else {
        d.assert_every_request_answered(&report, &what);
    }
    d.assert_nothing_lost(&report, &what);
    d.stop(1, &what);
    eprintln!("{what}: {} writes acked, none lost", report.writes_acked);
}

#[test]
fn a_unit_restarted_after_both_died_cold_starts_kvd_on_the_stored_listener() {
    let _serial = serial();
    become_subreaper();
    for runtime in ["std", "mio", "smol", "tokio"] {
        restart_from_store(runtime, true);
    }
}

#[test]
fn a_unit_restarted_after_the_supervisor_died_adopts_kvd_and_keeps_one_entry() {
    let _serial = serial();
    become_subreaper();
    restart_from_store("std", false);
}
