//! Starting where a daemon already serves the control socket: what cannot be
//! adopted is an error that names the pid and what to do, and leaves that
//! daemon serving; what can is adopted with its listeners.

mod common;

use common::*;
use handoff_std::os::process::{ChildProcess, wait_exit};
use handoff_supervisor::client::{self, Reply};
use handoff_supervisor::{Config, ServiceError};

/// A daemon on the reference implementation (`beyond-handoff` 0.1.4), as a
/// thread of this process: it binds the control socket cold and serves the
/// protocol as published, which has no listener exchange.
fn reference_incumbent(layout: &Layout) {
    struct Hooks;
    impl handoff::Drainable for Hooks {
        fn drain(&self, _deadline: std::time::Instant) -> handoff::Result<handoff::DrainReport> {
            Ok(handoff::DrainReport {
                open_conns_remaining: 0,
                accept_closed: true,
            })
        }
        fn seal(&self) -> handoff::Result<handoff::SealReport> {
            Ok(handoff::SealReport {
                last_revision_per_shard: Vec::new(),
                data_dir_fingerprint: [0; 32],
            })
        }
        fn resume_after_abort(&self) -> handoff::Result<()> {
            Ok(())
        }
        fn snapshot_state(&self) -> handoff::StateSnapshot {
            handoff::StateSnapshot::default()
        }
    }
    std::fs::create_dir_all(&layout.data).unwrap();
    let lock = handoff::DataDirLock::acquire(&layout.data).unwrap();
    let incumbent = handoff::Incumbent::bind_cold_start(&layout.ctl, lock).unwrap();
    std::thread::spawn(move || {
        let _ = incumbent.serve(Hooks);
    });
}

#[test]
fn a_reference_daemon_is_named_with_what_to_do_and_left_serving() {
    let layout = Layout::new("adopt-ref");
    let config = layout.write_config("127.0.0.1:0", "");
    reference_incumbent(&layout);
    let me = std::process::id();

    let err = try_start(config.clone()).expect_err("a reference daemon cannot be adopted");
    match &err {
        ServiceError::Adopt { pid, .. } => assert_eq!(*pid, Some(me), "{err}"),
        other => panic!("expected Adopt, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("kill {me}")) && text.contains("does not offer its listeners"),
        "{text}"
    );
    assert!(
        !text.contains("  "),
        "a message with a run of spaces: {text}"
    );

    // It still answers as it did: the probe changed nothing.
    match handoff_std::adopt(&layout.ctl, BOUND) {
        Err(handoff_std::AdoptError::NotOffered { pid }) => assert_eq!(pid, me),
        other => panic!("the reference daemon no longer answers: {other:?}"),
    }
    // And a second start says the same again.
    assert!(matches!(try_start(config), Err(ServiceError::Adopt { .. })));
}

#[test]
fn a_daemon_on_other_listeners_is_named_and_left_serving_then_adopted_as_configured_and_restarted()
{
    let layout = Layout::new("adopt-mismatch");
    let (mut sup, _notify) = start_running(&layout, "");
    let status = |layout: &Layout| match Reply::parse(&client::status(&layout.trigger).unwrap()) {
        Ok(Reply::Status(s)) => s,
        other => panic!("status: {other:?}"),
    };
    let daemon = status(&layout).incumbent_pid.expect("a daemon serves");
    let addr = {
        // The port the supervisor chose for `127.0.0.1:0`, as the daemon
        // reports it: the listener's inode in /proc is not needed, the
        // daemon answers PING with its pid on it.
        let text = std::fs::read_to_string(&sup.log).unwrap();
        let at = text
            .find("addr=127.0.0.1:")
            .expect("the bound address is logged");
        text[at + 5..].split_whitespace().next().unwrap().to_owned()
    };
    assert_eq!(ping(&addr), daemon);
    sup.child.kill().unwrap();
    wait_exit(&mut sup.child, BOUND).expect("the supervisor is dead");

    // Another port than the daemon listens on.
    let wrong = Config::from_toml_str(&layout.config_text("127.0.0.1:1", "")).unwrap();
    let err = try_start(wrong).expect_err("a mismatch is no adoption");
    match &err {
        ServiceError::AdoptMismatch { pid, detail } => {
            assert_eq!(*pid, daemon, "{err}");
            assert!(detail.contains("127.0.0.1:1"), "{detail}");
        }
        other => panic!("expected AdoptMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("kill {daemon}")), "{text}");
    assert!(
        !text.contains("  "),
        "a message with a run of spaces: {text}"
    );
    assert_eq!(ping(&addr), daemon, "the daemon serves on, untouched");

    // With the configuration it was started with, it is adopted, and
    // stopping the service stops it.
    let config = Config::from_toml_str(&layout.config_text("127.0.0.1:0", "")).unwrap();
    let service = try_start(config).expect("adopted");
    assert_eq!(service.status().incumbent_pid, Some(daemon));
    assert_eq!(ping(&addr), daemon);

    // Its death is seen (a pidfd: it is not this process's child) and it
    // is restarted like a daemon the service started: the PING below waits
    // in the accept queue until the new daemon answers it.
    send(daemon, libc::SIGKILL);
    assert!(handoff_std::os::process::wait_gone(daemon, BOUND));
    let restarted = ping(&addr);
    assert_ne!(restarted, daemon, "the dead daemon answered");
    // The supervisor records it once it reported ready, which may come
    // after its first answer.
    assert_eq!(
        service.wait_for_incumbent(Some(daemon), BOUND),
        Some(restarted)
    );
    drop(service);
    assert!(
        handoff_std::os::process::wait_gone(restarted, BOUND),
        "the restarted daemon outlived the service"
    );
}
