//! The trigger socket: who may use it, what it refuses, and that no client
//! can hold it up.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use handoff_supervisor::client::{self, Reply};
use handoff_supervisor::{ServiceError, Status};

/// Reads what the server sends until it closes, within `BOUND`. A close
/// with our bytes unread shows as a reset after its reply.
fn read_to_close(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(BOUND)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !out.is_empty() => break,
            // Not restarted after a stop and continue, as it has a timeout.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("no close within the bound: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn another_uid_cannot_even_connect_to_the_private_socket() {
    let setpriv = match can_switch_user() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Given a running service, whose trigger socket is mode 0600,
    let layout = Layout::new("uid-a");
    let service = start_service(&layout, "");
    let mode = fs::metadata(&layout.trigger).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let before = service.status();

    // when nobody runs the trigger command,
    let config = layout.config_file.to_str().unwrap();
    let out = run_command(&mut as_nobody(
        &setpriv,
        layout.dir.path(),
        &["trigger", "--config", config],
    ));

    // then it fails as an error (2), saying why, and nothing happened.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(service.status(), before);
}

#[test]
fn another_uid_is_refused_by_its_credentials_below_the_socket() {
    let setpriv = match can_switch_user() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Given a service whose trigger socket was opened to everyone,
    let layout = Layout::new("uid-b");
    let service = start_service(&layout, "");
    fs::set_permissions(&layout.trigger, fs::Permissions::from_mode(0o777)).unwrap();
    let pid = service.status().incumbent_pid;

    // when nobody connects and asks for the status, and for a handoff,
    let config = layout.config_file.to_str().unwrap();
    let dir = layout.dir.path();
    let out = run_command(&mut as_nobody(
        &setpriv,
        dir,
        &["status", "--config", config],
    ));
    let handoff = run_command(&mut as_nobody(
        &setpriv,
        dir,
        &["trigger", "--config", config],
    ));

    // then the server answers with an error naming the uid, and does
    // nothing.
    for out in [out, handoff] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(2),
            "stdout: {stdout} stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.starts_with("error: uid 65534 is not allowed"),
            "{stdout}"
        );
    }
    assert_eq!(
        service.status(),
        Status {
            incumbent_pid: pid,
            handoffs: 0,
            in_flight: false,
            answering: Some(true),
            on_probation: None,
        }
    );
}

#[test]
fn a_uid_in_allowed_uids_may_use_the_trigger_socket() {
    let setpriv = match can_switch_user() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Given nobody in allowed_uids, the socket is open to every user (the
    // mode alone would keep nobody out), and the credentials decide:
    let layout = Layout::new("uid-ok");
    let service = start_service(&layout, "allowed_uids = [65534]");
    let mode = fs::metadata(&layout.trigger).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o666);
    let config = layout.config_file.to_str().unwrap();
    let out = run_command(&mut as_nobody(
        &setpriv,
        layout.dir.path(),
        &["status", "--config", config, "--json"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let json = parse_json_object(&stdout);
    let pid = service.status().incumbent_pid.unwrap();
    assert_eq!(
        member(&json, "incumbent_pid").as_u64(),
        Some(u64::from(pid))
    );
}

#[test]
fn an_unlisted_binary_is_refused() {
    let layout = Layout::new("unlisted");
    let listed = layout.failing_successor();
    let service = start_service(
        &layout,
        &format!("allowed_binaries = [\"{}\"]", listed.display()),
    );
    let pid = service.status().incumbent_pid;

    // Through the socket,
    let reply = client::trigger(&layout.trigger, Some(Path::new("/bin/sh"))).unwrap();
    assert!(
        reply.starts_with("error: binary /bin/sh is not allowed"),
        "{reply}"
    );
    // through the command (exit status 2),
    let out = run_cli(&[
        "trigger",
        "--config",
        layout.config_file.to_str().unwrap(),
        "--binary",
        "/usr/bin/env",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("error: binary /usr/bin/env"));
    // and through the API.
    assert!(matches!(
        service.handoff(Some(Path::new("/bin/sh"))),
        Err(ServiceError::BinaryNotAllowed { .. })
    ));
    // Nothing was run.
    assert_eq!(service.status().incumbent_pid, pid);
    assert_eq!(service.status().handoffs, 0);
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout() {
    let layout = Layout::new("silent");
    let _service = start_service(&layout, "");
    let start = Instant::now();
    let mut silent = UnixStream::connect(&layout.trigger).unwrap();
    let said = read_to_close(&mut silent);
    let waited = start.elapsed();
    assert!(
        said.starts_with("error: no request within 300 ms"),
        "{said:?}"
    );
    assert!(waited >= REQUEST_TIMEOUT, "dropped after {waited:?}");
    assert!(waited < BOUND, "held for {waited:?}");
}

#[test]
fn status_answers_while_other_clients_are_silent() {
    let layout = Layout::new("busy");
    // A long request timeout: a status that waited behind a silent client
    // would take that long.
    let service = start_service_with(
        &layout,
        "",
        Duration::from_secs(30),
        handoff_supervisor::notify::Notifier::disabled(),
    );
    let _silent: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&layout.trigger).unwrap())
        .collect();
    let start = Instant::now();
    let line = client::status(&layout.trigger).unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        Reply::parse(&line).unwrap(),
        Reply::Status(service.status()),
        "{line}"
    );
}

#[test]
fn an_overlong_or_unknown_request_is_refused() {
    let layout = Layout::new("long");
    let _service = start_service(&layout, "");
    let mut s = UnixStream::connect(&layout.trigger).unwrap();
    let long = vec![b'a'; 5000];
    // The server may close before all of it is written.
    let _ = s.write_all(&long);
    let said = read_to_close(&mut s);
    assert!(said.contains("longer than 4096 bytes"), "{said:?}");

    let reply = client::request(&layout.trigger, b"reboot", BOUND).unwrap();
    assert!(
        reply.starts_with("error: unknown request \"reboot\""),
        "{reply}"
    );
}

#[test]
fn a_second_handoff_while_one_runs_is_refused_at_once() {
    let layout = Layout::new("second");
    // Its Hello comes 2 s late: the window in which the test asks again.
    let slow = layout.slow_successor(2);
    let notify = NotifySocket::at_path(layout.dir.path());
    let service = start_service_with(
        &layout,
        &format!("allowed_binaries = [\"{}\"]", slow.display()),
        REQUEST_TIMEOUT,
        notify.notifier(),
    );
    notify.wait_for("READY=1");
    std::thread::scope(|s| {
        let first = s.spawn(|| service.handoff(Some(&slow)));
        // The handoff has begun once the service manager hears RELOADING.
        notify.wait_for("RELOADING=1");
        assert!(service.status().in_flight);
        // Refused without waiting for the first one to end,
        assert!(matches!(
            service.handoff(None),
            Err(ServiceError::HandoffInProgress)
        ));
        let reply = client::trigger(&layout.trigger, None).unwrap();
        assert!(
            reply.starts_with("error: a handoff is already in progress"),
            "{reply}"
        );
        assert!(service.status().in_flight);
        // and the first one is not disturbed.
        let report = first.join().unwrap().unwrap();
        assert!(report.committed, "{report:?}");
    });
    assert!(!service.status().in_flight);
    assert_eq!(service.status().handoffs, 1);
}

#[test]
fn start_errors_say_what_to_do() {
    // A port another process holds.
    let layout = Layout::new("portbusy");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let config = layout.write_config(&addr, "");
    let e = handoff_supervisor::Service::start(config).unwrap_err();
    assert!(matches!(e, ServiceError::Listener { .. }), "{e:?}");
    assert!(e.to_string().contains("stop it first"), "{e}");

    // A trigger socket whose directory does not exist.
    let layout = Layout::new("nodir");
    let mut config = layout.write_config("127.0.0.1:0", "");
    config.trigger_socket = layout.dir.path().join("missing").join("trigger.sock");
    let e = handoff_supervisor::Service::start(config).unwrap_err();
    assert!(matches!(e, ServiceError::TriggerSocket { .. }), "{e:?}");
    assert!(e.to_string().contains("create its directory"), "{e}");
}

#[test]
fn status_and_trigger_can_name_the_socket_instead_of_the_configuration() {
    let layout = Layout::new("bysocket");
    let service = start_service(&layout, "");
    let socket = layout.trigger.to_str().unwrap();

    let out = run_cli(&["status", "--socket", socket, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = service.status().incumbent_pid.unwrap();
    assert!(
        stdout.contains(&format!("\"incumbent_pid\":{pid}")),
        "{stdout}"
    );

    let out = run_cli(&["trigger", "--socket", socket, "--timeout-secs", "60"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("committed=true"));

    // One of the two, not both.
    let config = layout.config_file.to_str().unwrap();
    let out = run_cli(&["status", "--socket", socket, "--config", config]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    service.shutdown();
}
