//! The trigger socket against a hostile local user and a careless client,
//! with the real `handoff-supervisor run` process: another uid hammering
//! the socket or holding connections open cannot lock root out or flood the
//! log; a request cut off before its newline runs nothing; text a peer
//! sends (a requested path, a daemon's seal error) reaches the log, the
//! reply and systemd's STATUS with its control characters escaped.
//!
//! The other uid is this test binary, copied where nobody can run it and
//! started as nobody (65534) through `setpriv`, in `hammer_entry`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use handoff_supervisor::client::{self, Reply};

/// The entry point of the hammer process (`TRIGGER_HAMMER` set).
#[test]
#[ignore = "runs only as the hammer the tests start"]
fn hammer_entry() {
    if let Ok(args) = std::env::var("TRIGGER_HAMMER") {
        let args: Vec<&str> = args.split(' ').collect();
        std::process::exit(match args[..] {
            ["flood", socket, n, dir] => flood(Path::new(socket), n.parse().unwrap(), dir),
            ["hold", socket, n, dir] => hold(Path::new(socket), n.parse().unwrap(), dir),
            _ => 2,
        });
    }
}

/// `n` threads connect, read to the close, and connect again, until
/// `dir/stop` exists (at most `BOUND`). Writes `dir/started` after the
/// first `n` connects, and the number of connects to `dir/report`.
fn flood(socket: &Path, n: usize, dir: &str) -> i32 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = PathBuf::from(dir);
    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (stop, connects, socket) = (stop.clone(), connects.clone(), socket.to_owned());
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut sink = [0u8; 512];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = UnixStream::connect(&socket) else {
                            continue;
                        };
                        connects.fetch_add(1, Ordering::Relaxed);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                        while matches!(s.read(&mut sink), Ok(k) if k > 0) {}
                    }
                })
                .unwrap()
        })
        .collect();
    let until = Instant::now() + BOUND;
    let mut started = false;
    while Instant::now() < until && !dir.join("stop").exists() {
        if !started && connects.load(Ordering::Relaxed) >= n as u64 {
            fs::write(dir.join("started"), "").unwrap();
            started = true;
        }
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    fs::write(
        dir.join("report"),
        connects.load(Ordering::Relaxed).to_string(),
    )
    .unwrap();
    0
}

/// Opens `n` connections and says nothing on them until `dir/stop` exists
/// (at most `BOUND`); writes `dir/started` once all are open.
fn hold(socket: &Path, n: usize, dir: &str) -> i32 {
    let dir = PathBuf::from(dir);
    let held: Vec<UnixStream> = (0..n)
        .filter_map(|_| UnixStream::connect(socket).ok())
        .collect();
    fs::write(dir.join("started"), held.len().to_string()).unwrap();
    let until = Instant::now() + BOUND;
    while Instant::now() < until && !dir.join("stop").exists() {
        std::thread::yield_now();
    }
    drop(held);
    0
}

/// The hammer process, as nobody; stopped and reaped when dropped.
struct Hammer {
    child: Child,
    dir: PathBuf,
}

impl Hammer {
    fn start(setpriv: &Path, layout: &Layout, mode: &str, n: usize) -> Hammer {
        let dir = layout.dir.path().join("hammer");
        fs::create_dir(&dir).unwrap();
        // Nobody writes its markers here.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let copy = layout.dir.path().join("hammer-bin");
        copy_program(&std::env::current_exe().unwrap(), &copy);
        let child = Command::new(setpriv)
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&copy)
            .args(["hammer_entry", "--exact", "--ignored", "--quiet"])
            .env(
                "TRIGGER_HAMMER",
                format!("{mode} {} {n} {}", layout.trigger.display(), dir.display()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut hammer = Hammer { child, dir };
        let t0 = Instant::now();
        while !hammer.dir.join("started").exists() {
            assert!(t0.elapsed() < BOUND, "the hammer never got going");
            assert!(
                hammer.child.try_wait().unwrap().is_none(),
                "the hammer exited"
            );
            std::thread::yield_now();
        }
        hammer
    }

    /// Stops it; what it wrote to its report.
    fn stop(mut self) -> String {
        fs::write(self.dir.join("stop"), "").unwrap();
        let status = wait_exit(&mut self.child, BOUND).expect("the hammer stops");
        assert!(status.success(), "{status:?}");
        fs::read_to_string(self.dir.join("report")).unwrap_or_default()
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        let _ = fs::write(self.dir.join("stop"), "");
        if wait_exit(&mut self.child, BOUND).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Root's `status`, which must be answered within a second.
fn status_within_a_second(layout: &Layout) -> handoff_supervisor::Status {
    let line = client::request(&layout.trigger, b"status", Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("root's status got no answer within a second: {e}"));
    match Reply::parse(&line) {
        Ok(Reply::Status(s)) => s,
        other => panic!("root's status was answered {line:?} ({other:?})"),
    }
}

#[test]
fn root_is_answered_while_a_uid_that_is_not_allowed_hammers_the_socket() {
    let setpriv = match can_switch_user() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Given a supervisor whose trigger socket is open to every user (some
    // uid is allowed), and nobody, who is not allowed, reconnecting on 500
    // connections as fast as the server closes them,
    let layout = Layout::new("flood");
    let (sup, _notify) = start_running(&layout, "allowed_uids = [12345]");
    let hammer = Hammer::start(&setpriv, &layout, "flood", 500);

    // root's status is answered within a second, every time, and a
    // handoff commits,
    let pid = status_within_a_second(&layout).incumbent_pid;
    assert!(pid.is_some());
    for _ in 0..20 {
        assert_eq!(status_within_a_second(&layout).incumbent_pid, pid);
    }
    let reply = client::trigger(&layout.trigger, None).unwrap();
    assert!(reply.contains("committed=true"), "{reply}");
    assert_eq!(status_within_a_second(&layout).handoffs, 1);

    // and the refusals take a line or two of the log, not one each.
    let connects: u64 = hammer.stop().trim().parse().unwrap();
    assert!(connects >= 1000, "only {connects} connects: no flood");
    let log = fs::read_to_string(&sup.log).unwrap();
    let refusal_lines = log.lines().filter(|l| l.contains("refused")).count();
    assert!(
        (1..=4).contains(&refusal_lines),
        "{refusal_lines} log lines for {connects} refused connections:\n{}",
        log.lines().take(20).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn silent_connections_of_an_allowed_uid_cannot_keep_root_out() {
    let setpriv = match can_switch_user() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Given nobody allowed, holding 20 connections open without a word
    // (more than all the slots there are),
    let layout = Layout::new("hold");
    let (_sup, _notify) = start_running(&layout, "allowed_uids = [65534]");
    let hammer = Hammer::start(&setpriv, &layout, "hold", 20);

    // nobody itself is told it has too many at once (asked first: the
    // held connections are let go at the request timeout, 5 s),
    let out = run_command(&mut as_nobody(
        &setpriv,
        layout.dir.path(),
        &["status", "--socket", layout.trigger.to_str().unwrap()],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.starts_with("error: too many trigger connections at once from uid 65534"),
        "{stdout}"
    );
    // and root is still answered within a second, and a handoff commits.
    for _ in 0..5 {
        assert!(status_within_a_second(&layout).incumbent_pid.is_some());
    }
    let reply = client::trigger(&layout.trigger, None).unwrap();
    assert!(reply.contains("committed=true"), "{reply}");

    hammer.stop();
}

#[test]
fn a_request_cut_off_before_its_newline_runs_nothing() {
    // Given a supervisor that allows a second binary,
    let layout = Layout::new("cutoff");
    let next = layout.slow_successor(0);
    let (_sup, _notify) = start_running(
        &layout,
        &format!("allowed_binaries = [\"{}\"]", next.display()),
    );
    let before = status_within_a_second(&layout);

    // when a client sends a handoff request without its newline and closes
    // its side (a request cut short),
    let mut s = UnixStream::connect(&layout.trigger).unwrap();
    s.write_all(format!("handoff {}", next.display()).as_bytes())
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut said = String::new();
    loop {
        match s.read_to_string(&mut said) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => {
                r.unwrap();
                break;
            }
        }
    }

    // then it is told so, and nothing ran.
    assert!(
        said.starts_with("error: the request ended without a newline"),
        "{said:?}"
    );
    assert_eq!(status_within_a_second(&layout), before);
    // The same request with its newline runs.
    let reply = client::trigger(&layout.trigger, Some(&next)).unwrap();
    assert!(reply.contains("committed=true"), "{reply}");
}

/// Whether `bytes` hold a control character other than the newlines that
/// end lines.
fn has_raw_control(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes)
        .chars()
        .any(|c| c.is_control() && c != '\n')
}

#[test]
fn peer_text_reaches_logs_replies_and_status_escaped() {
    // Given a daemon whose seal fails with a message built to forge a log
    // line and rewrite a terminal,
    let layout = Layout::new("forge");
    let (sup, notify) = start_running(
        &layout,
        r#"env = [["SUPERVISOR_TEST_DAEMON_SEAL_ERROR", "disk\r\n2026-12-02T00:00:00Z  INFO handoff committed\u001b[2K"]]"#,
    );

    // a request for a binary whose path carries CR, ESC and NUL,
    let forged = b"handoff /x\r2026-12-02T00:00:00Z  INFO handoff committed\x1b[1A\x00y";
    let reply = client::request(&layout.trigger, forged, BOUND).unwrap();
    assert!(reply.starts_with("error: binary /x"), "{reply:?}");
    assert!(!has_raw_control(reply.as_bytes()), "{reply:?}");
    assert!(reply.contains("\\r2026"), "{reply:?}");

    // and a handoff whose seal fails with that message,
    let reply = client::trigger(&layout.trigger, None).unwrap();
    assert!(reply.contains("committed=false"), "{reply}");
    assert!(!has_raw_control(reply.as_bytes()), "{reply:?}");
    assert!(reply.contains("disk\\r\\n2026"), "{reply:?}");
    let status = notify.wait_for("READY=1");
    let status_line = status
        .lines()
        .find(|l| l.starts_with("STATUS="))
        .expect("a STATUS line");
    assert!(status_line.contains("disk\\r\\n2026"), "{status:?}");
    assert!(!has_raw_control(status_line.as_bytes()), "{status:?}");

    // then the log holds both, escaped: every line is one the supervisor
    // wrote, and none of them is a forged "handoff committed".
    let log = fs::read(&sup.log).unwrap();
    assert!(!has_raw_control(&log), "a raw control character in the log");
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("\\r2026-12-02T00:00:00Z  INFO handoff committed\\u{1b}[1A\\u{0}y"));
    assert!(
        log.lines()
            .any(|l| l.contains("handoff aborted") && l.contains("disk\\")),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-12-02T00:00:00Z")),
        "{log}"
    );
}
