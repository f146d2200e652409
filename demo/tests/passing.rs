//! Open connections passed to the new binary (docs/PROTOCOL.md section 11)
//! end to end: the supervisor operators run (`handoff-supervisor`, here as
//! `handoff-demo supervisor`) hands kvd off while clients hold connections
//! open, some with half a request sent. After a commit every connection is
//! answered by the new process; after a successor that died halfway
//! through the pass, or one rolled back during probation, every one is
//! answered by the old process again, none closed, and a half-sent request
//! completed afterwards is read as one request (the passed state was
//! replayed exactly when, and only when, nobody else had read it).
//!
//! The builds with a fault are two-line scripts around kvd, named in
//! `allowed_binaries` as an operator would name a build. Waits are on
//! events with a bound: the supervisor's `READY=1`, answers, `status`
//! naming a successor on probation.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use common::deployment::Deployment;
use common::{BOUND, become_subreaper, serial};

/// Idle clients, each on a connection of its own that it never closes.
struct Clients {
    conns: Vec<BufReader<TcpStream>>,
}

impl Clients {
    /// `n` connections, each answered once (`VERSION`) so that kvd has
    /// accepted it and serves it; all by `pid`.
    fn open(addr: SocketAddr, n: usize, pid: u32) -> Clients {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(BOUND)).unwrap();
            s.set_write_timeout(Some(BOUND)).unwrap();
            s.set_nodelay(true).unwrap();
            conns.push(BufReader::new(s));
        }
        let mut c = Clients { conns };
        c.expect_pid(0..n, b"VERSION\n", pid, "before the handoff");
        c
    }

    /// Writes `bytes` on each connection of `which`, without reading.
    fn send(&mut self, which: std::ops::Range<usize>, bytes: &[u8]) {
        for i in which {
            self.conns[i]
                .get_mut()
                .write_all(bytes)
                .unwrap_or_else(|e| panic!("connection {i}: write: {e}"));
        }
    }

    /// Sends `bytes` on each of `which` (all first, then reads): each must
    /// be answered `VERSION v1 <pid>`, nothing closed.
    fn expect_pid(&mut self, which: std::ops::Range<usize>, bytes: &[u8], pid: u32, what: &str) {
        self.send(which.clone(), bytes);
        let (mut closed, mut wrong) = (0, Vec::new());
        for i in which {
            let mut line = String::new();
            match self.conns[i].read_line(&mut line) {
                Ok(0) | Err(_) => closed += 1,
                Ok(_) => {
                    let got: Option<u32> = line
                        .strip_prefix("VERSION v1 ")
                        .and_then(|p| p.trim_end().parse().ok());
                    if got != Some(pid) && wrong.len() < 5 {
                        wrong.push(format!("connection {i}: {line:?}"));
                    }
                }
            }
        }
        assert_eq!(closed, 0, "{what}: connections closed by the server");
        assert!(wrong.is_empty(), "{what}: not answered by {pid}: {wrong:?}");
    }
}

/// A deployment of kvd on std under the supervisor, with `extra` in its
/// configuration and the builds `builds` allowed.
fn deployment(tag: &str, probation_ms: u64, builds: &[&str]) -> Deployment {
    let mut d = Deployment::with_config(tag, "std", "probation_ms = 0\n");
    let names: Vec<String> = builds
        .iter()
        .map(|b| format!("{:?}", d.dir.0.join(b)))
        .collect();
    d.rewrite_config(&format!(
        "probation_ms = {probation_ms}\nallowed_binaries = [{}]\n",
        names.join(", ")
    ));
    d.start_supervisor(&[]);
    d
}

#[test]
fn ten_thousand_idle_connections_are_answered_by_the_new_process() {
    let _serial = serial();
    become_subreaper();
    const N: usize = 10_000;
    // A handful with half a request sent: their state crosses over.
    const HALF: usize = 100;
    let d = deployment("pass10k", 200, &[]);
    let old = d.status().incumbent_pid.expect("kvd serves");
    let mut clients = Clients::open(d.addr, N, old);
    clients.send(0..HALF, b"VERS");
    let started = Instant::now();
    let reply = d.handoff_to(None);
    let took = started.elapsed();
    assert!(reply.committed, "{reply:?}; {}", d.log());
    let new = d.status().incumbent_pid.expect("kvd serves");
    assert_ne!(new, old);
    assert_eq!(
        reply.connections_passed,
        Some(N as u32),
        "every open connection passed"
    );
    let drain = reply
        .phases_ms
        .iter()
        .find_map(|(p, ms)| (p == "drain").then_some(*ms))
        .unwrap_or_default();
    println!(
        "{N} idle connections passed: drain (the pass included) {drain:.1} ms, whole handoff \
         {:.1} ms ({:.1} ms with the trigger round trip, {} ms of probation)",
        reply.duration_ms,
        took.as_secs_f64() * 1e3,
        200
    );
    clients.expect_pid(0..HALF, b"ION\n", new, "the half-sent requests");
    clients.expect_pid(HALF..N, b"VERSION\n", new, "after the handoff");
    // And again: every connection still answers.
    clients.expect_pid(0..N, b"VERSION\n", new, "a second request");
}

#[test]
fn a_successor_killed_halfway_through_the_pass_leaves_every_connection_with_the_incumbent() {
    let _serial = serial();
    become_subreaper();
    // Three messages' worth of descriptors (253 each): the successor dies
    // once it has the first.
    const N: usize = 600;
    const HALF: usize = 50;
    let mut d = deployment("passkill", 200, &["kvd-dies"]);
    let marker = d.dir.0.join("crashed-at");
    let dies = d.build(
        "kvd-dies",
        &format!(
            "HANDOFF_CRASH_AT=successor-after-passed-batch-received HANDOFF_CRASH_MARKER={marker:?}"
        ),
        "",
    );
    let old = d.status().incumbent_pid.expect("kvd serves");
    let mut clients = Clients::open(d.addr, N, old);
    clients.send(0..HALF, b"VERS");
    let reply = d.handoff_to(Some(&dies));
    assert!(!reply.committed, "{reply:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).ok().as_deref(),
        Some("successor-after-passed-batch-received"),
        "the successor died where the test meant it to; {}",
        d.log()
    );
    assert_eq!(d.status().incumbent_pid, Some(old));
    // Nobody had read the passed state: the old process goes on from it,
    // so `VERS` + `ION\n` is one request.
    clients.expect_pid(0..HALF, b"ION\n", old, "the half-sent requests");
    clients.expect_pid(HALF..N, b"VERSION\n", old, "after the failed handoff");
    assert_eq!(d.settle_to_one().0, old);
    d.stop(0, "after the killed pass");
}

#[test]
fn a_successor_rolled_back_on_probation_gives_every_connection_back_unclosed() {
    let _serial = serial();
    become_subreaper();
    const N: usize = 300;
    // On these the successor answers a request that was half sent when
    // the connection was passed; on those, a whole one.
    const HALF: usize = 50;
    const ASKED: std::ops::Range<usize> = 50..100;
    let mut d = deployment("passroll", 4_000, &["kvd-crashes"]);
    let crashes = d.build("kvd-crashes", "", "--fault crash-after-ready=1500");
    let old = d.status().incumbent_pid.expect("kvd serves");
    let mut clients = Clients::open(d.addr, N, old);
    clients.send(0..HALF, b"VERSION");
    let reply = std::thread::scope(|s| {
        let trig = s.spawn(|| d.handoff_to(Some(&crashes)));
        let successor = d.on_probation();
        // The successor serves the passed connections: the half-sent
        // requests completed, and new ones.
        clients.expect_pid(0..HALF, b"\n", successor, "on probation");
        clients.expect_pid(ASKED, b"VERSION\n", successor, "on probation");
        trig.join().unwrap()
    });
    assert!(reply.rolled_back, "{reply:?}; {}", d.log());
    assert_eq!(d.status().incumbent_pid, Some(old));
    // The successor consumed what was passed: the old process must not
    // answer `VERSION` again, nor prefix it to the next request.
    clients.expect_pid(0..N, b"VERSION\n", old, "after the rollback");
    assert_eq!(d.settle_to_one().0, old);
    d.stop(0, "after the rollback");
}
