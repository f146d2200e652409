//! The allow-list trusts the file, not only its path: a `binary` or an
//! `allowed_binaries` entry that a user other than root (and the
//! supervisor's own) could change is refused when the configuration is
//! read, before the cold start and each restart, and before each handoff,
//! with an error that names the file or directory, its owner, its mode and
//! the fix.
//!
//! Every binary here is a copy of the test daemon in a directory of the
//! test's own (see `TempDir`), whose modes each test sets.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use handoff_supervisor::client::{self, Reply};
use handoff_supervisor::{Config, ServiceError};

/// A uid no account has, for the files "another user" owns.
const STRANGER: u32 = 12345;

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Our effective uid: the owner of what we create, and the supervisor's.
fn own_uid() -> u32 {
    fs::metadata("/proc/self").unwrap().uid()
}

/// Whom the supervisor runs binaries as, in its messages: this process's
/// user, as the supervisors these tests start run as it.
fn as_user() -> String {
    match own_uid() {
        0 => "root".to_owned(),
        uid => format!("uid {uid}"),
    }
}

/// Whether this test can change a file's owner; says why not otherwise.
fn is_root() -> bool {
    let root = own_uid() == 0;
    if !root {
        eprintln!("skipped: chown to another uid needs root");
    }
    root
}

/// `dir` (created mode 0755) with a copy of the test daemon in it as
/// `name`, mode 0755.
fn install(dir: &Path, name: &str) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    chmod(dir, 0o755);
    let path = dir.join(name);
    copy_program(Path::new(daemon_bin()), &path);
    path
}

/// The layout's configuration with `binary` in place of the test daemon's
/// path (written as given: it may end in `/`), and `extra` lines.
fn config_text(layout: &Layout, binary: &str, extra: &str) -> String {
    let text = layout.config_text("127.0.0.1:0", extra);
    let line = format!("binary = \"{}\"", daemon_bin());
    assert!(text.contains(&line));
    text.replace(&line, &format!("binary = \"{binary}\""))
}

/// Writes `text` as the configuration file, runs `handoff-supervisor run`
/// with it and returns its log, after checking that it refused to start
/// (exit 1) and started nothing.
#[track_caller]
fn run_refused(layout: &Layout, text: &str) -> String {
    fs::write(&layout.config_file, text).unwrap();
    let out = run_cli(&["run", "--config", layout.config_file.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        !layout.trigger.exists(),
        "it got as far as the trigger socket"
    );
    assert!(!log.contains("the daemon serves"), "{log}");
    log
}

/// The status through the trigger socket.
fn incumbent(layout: &Layout) -> Option<u32> {
    let line = client::status(&layout.trigger).unwrap();
    match Reply::parse(&line).unwrap() {
        Reply::Status(s) => s.incumbent_pid,
        other => panic!("{other:?}"),
    }
}

/// Polls `ready` every 20 ms until it holds, at most `BOUND`.
#[track_caller]
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + BOUND;
    while !ready() {
        assert!(Instant::now() < until, "not within {BOUND:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn run_refuses_a_binary_anyone_can_write() {
    // Given a configuration whose binary is mode 0777,
    let layout = Layout::new("al-0777");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    chmod(&bin, 0o777);

    // when `run` reads it,
    let log = run_refused(
        &layout,
        &config_text(&layout, &bin.display().to_string(), ""),
    );

    // then it refuses to start, naming the key, the file, its owner and
    // mode, and the command that fixes it.
    let b = bin.display();
    for part in [
        format!("config file {}", layout.config_file.display()),
        format!("`binary`: {b} is not safe to run as"),
        format!("the file (owner uid {}, mode 0777)", own_uid()),
        "is writable by its group and all users".to_owned(),
        format!("run `chmod go-w {b}`"),
    ] {
        assert!(log.contains(&part), "no {part:?} in {log}");
    }

    // Writable by the group alone is refused too; once fixed, the
    // configuration is read.
    chmod(&bin, 0o775);
    let text = config_text(&layout, &b.to_string(), "");
    let e = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(e.contains("mode 0775) is writable by its group,"), "{e}");
    chmod(&bin, 0o755);
    Config::from_toml_str(&text).unwrap();
}

#[test]
fn run_refuses_a_binary_in_a_group_or_world_writable_directory() {
    let layout = Layout::new("al-dir");
    let dir = layout.dir.path().join("bin");
    let bin = install(&dir, "kvd");
    let text = config_text(&layout, &bin.display().to_string(), "");
    let d = dir.display();
    for (mode, whom) in [
        (0o775, "its group"),
        (0o757, "all users"),
        (0o777, "its group and all users"),
    ] {
        // Given a configuration whose binary lies in a directory that is
        // group- or world-writable,
        chmod(&dir, mode);

        // when `run` reads it, it refuses to start, naming the directory,
        // its owner and mode, and the fix.
        let log = run_refused(&layout, &text);
        for part in [
            format!("`binary`: {} is not safe to run as", bin.display()),
            format!(
                "directory {d} on its way (owner uid {}, mode {mode:04o}) is writable by {whom},",
                own_uid()
            ),
            "could put another program in the binary's place".to_owned(),
            format!("run `chmod go-w {d}`"),
        ] {
            assert!(log.contains(&part), "{mode:o}: no {part:?} in {log}");
        }
    }

    // A sticky world-writable directory, as /tmp, lets only an entry's
    // owner rename or remove it: a binary of ours in it passes, one that
    // another user put there (or their link to a program) does not.
    chmod(&dir, 0o1777);
    Config::from_toml_str(&text).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&bin, Some(STRANGER), None).unwrap();
        let log = run_refused(&layout, &text);
        assert!(
            log.contains(&format!(
                "the file (owner uid {STRANGER}, mode 0755) belongs to another user"
            )),
            "{log}"
        );
        std::os::unix::fs::chown(&bin, Some(0), None).unwrap();
        let link = dir.join("kvd-link");
        std::os::unix::fs::symlink(&bin, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(STRANGER), None).unwrap();
        let linked = config_text(&layout, &link.display().to_string(), "");
        let log = run_refused(&layout, &linked);
        assert!(
            log.contains(&format!("{} is not safe", link.display())),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "owner uid {STRANGER}, mode 0777) belongs to another user"
            )),
            "{log}"
        );
    }

    chmod(&dir, 0o755);
    Config::from_toml_str(&text).unwrap();
}

#[test]
fn run_refuses_a_binary_owned_by_another_user() {
    if !is_root() {
        return;
    }
    // Given a configuration whose binary, mode 0755, belongs to another
    // uid,
    let layout = Layout::new("al-owner");
    let dir = layout.dir.path().join("bin");
    let bin = install(&dir, "kvd");
    std::os::unix::fs::chown(&bin, Some(STRANGER), None).unwrap();
    let text = config_text(&layout, &bin.display().to_string(), "");

    // when `run` reads it, it refuses to start, naming the file, its owner
    // and mode, and the fix;
    let log = run_refused(&layout, &text);
    let b = bin.display();
    for part in [
        format!("`binary`: {b} is not safe to run as root"),
        format!("the file (owner uid {STRANGER}, mode 0755) belongs to another user"),
        "users other than root could change the program".to_owned(),
        format!("run `chown root {b}`"),
    ] {
        assert!(log.contains(&part), "no {part:?} in {log}");
    }

    // and so for a directory on the way that belongs to another uid.
    std::os::unix::fs::chown(&bin, Some(0), None).unwrap();
    std::os::unix::fs::chown(&dir, Some(STRANGER), None).unwrap();
    let log = run_refused(&layout, &text);
    let d = dir.display();
    for part in [
        format!(
            "directory {d} on its way (owner uid {STRANGER}, mode 0755) belongs to another user"
        ),
        format!("run `chown root {d}`"),
    ] {
        assert!(log.contains(&part), "no {part:?} in {log}");
    }
    std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
    Config::from_toml_str(&text).unwrap();
}

#[test]
fn run_refuses_a_binary_path_with_a_trailing_slash() {
    // Given a configuration whose binary is a safe file, written with a
    // trailing `/` (which names a directory: exec would fail with ENOTDIR),
    let layout = Layout::new("al-slash");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    let slashed = format!("{}/", bin.display());

    // when `run` reads it, it refuses the configuration, saying why, rather
    // than trying the start.
    let log = run_refused(&layout, &config_text(&layout, &slashed, ""));
    assert!(
        log.contains(&format!("`binary`: {slashed} ends in '/'")),
        "{log}"
    );
    assert!(log.contains("remove the trailing '/'"), "{log}");
    assert!(!log.contains("os error 20"), "{log}");

    // The same in `allowed_binaries`.
    let extra = format!("allowed_binaries = [\"{slashed}\"]");
    let text = config_text(&layout, &bin.display().to_string(), &extra);
    let e = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(
        e.contains(&format!("`allowed_binaries`: {slashed} ends in '/'")),
        "{e}"
    );
}

#[test]
fn an_unsafe_allowed_binary_is_refused_at_load_and_a_missing_one_is_not() {
    let layout = Layout::new("al-allowed");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    let v2 = install(&layout.dir.path().join("v2"), "kvd");
    chmod(&v2, 0o777);
    let missing = layout.dir.path().join("v3/kvd");
    let extra = format!(
        "allowed_binaries = [\"{}\", \"{}\"]",
        missing.display(),
        v2.display()
    );

    // An unsafe one stops `run`, named under its key;
    let log = run_refused(
        &layout,
        &config_text(&layout, &bin.display().to_string(), &extra),
    );
    assert!(
        log.contains(&format!("`allowed_binaries`: {} is not safe", v2.display())),
        "{log}"
    );
    assert!(log.contains("mode 0777"), "{log}");

    // one not installed yet passes the load, as before (a handoff to it
    // is checked when it is asked for).
    chmod(&v2, 0o755);
    Config::from_toml_str(&config_text(&layout, &bin.display().to_string(), &extra)).unwrap();
}

#[test]
fn the_rule_follows_links_and_wants_an_absolute_path_to_an_executable_file() {
    let layout = Layout::new("al-rule");
    let root = layout.dir.path();
    let bin = install(&root.join("bin"), "kvd");
    let load = |binary: &str| Config::from_toml_str(&config_text(&layout, binary, ""));
    let refused = |binary: &str| load(binary).unwrap_err().to_string();

    // A link in a safe directory to a safe file passes; the same link to a
    // file in an unsafe directory is refused, naming the link's target's
    // directory (the link's own is fine).
    let links = root.join("links");
    fs::create_dir(&links).unwrap();
    chmod(&links, 0o755);
    let link = links.join("kvd");
    std::os::unix::fs::symlink("../bin/kvd", &link).unwrap();
    load(&link.display().to_string()).unwrap();
    let shared = install(&root.join("shared"), "kvd");
    chmod(&root.join("shared"), 0o777);
    let to_shared = links.join("to-shared");
    std::os::unix::fs::symlink(&shared, &to_shared).unwrap();
    let e = refused(&to_shared.display().to_string());
    assert!(
        e.contains(&format!(
            "directory {} on its way (owner uid {}, mode 0777)",
            root.join("shared").display(),
            own_uid()
        )),
        "{e}"
    );

    // A link loop, a relative path, a file with no execute bit, a
    // directory.
    let looped = links.join("loop");
    std::os::unix::fs::symlink("loop", &looped).unwrap();
    assert!(refused(&looped.display().to_string()).contains("symbolic links"));
    let e = refused("bin/kvd");
    assert!(e.contains("not an absolute path"), "{e}");
    chmod(&bin, 0o644);
    let e = refused(&bin.display().to_string());
    assert!(
        e.contains("mode 0644) has no execute bit") && e.contains("chmod u+x"),
        "{e}"
    );
    chmod(&bin, 0o755);
    let e = refused(&root.join("bin").display().to_string());
    assert!(e.contains("is a directory"), "{e}");
}

/// The configuration text for a service of `layout` running `bin`, with
/// `extra` lines.
fn service_config(layout: &Layout, bin: &Path, extra: &str) -> Config {
    let text = config_text(layout, &bin.display().to_string(), extra);
    fs::write(&layout.config_file, &text).unwrap();
    Config::from_toml_str(&text).unwrap()
}

#[test]
fn the_cold_start_checks_the_binary_again() {
    // Given a configuration read while its binary was safe,
    let layout = Layout::new("al-cold");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    let config = service_config(&layout, &bin, "");

    // when the binary becomes world-writable before the service starts,
    chmod(&bin, 0o777);

    // then the start is refused, saying why, and nothing runs.
    let e = try_start(config.clone()).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, ServiceError::DaemonStart { .. }), "{e:?}");
    assert!(
        text.contains(&format!(
            "{} is not safe to run as {}: the file (owner uid {}, mode 0777)",
            bin.display(),
            as_user(),
            own_uid()
        )),
        "{text}"
    );
    assert!(text.contains("chmod go-w"), "{text}");
    chmod(&bin, 0o755);
    let service = try_start(config).unwrap();
    assert!(service.status().incumbent_pid.is_some());
}

#[test]
fn a_running_supervisor_refuses_a_handoff_to_a_binary_made_unsafe_after_load() {
    // Given `run` with an allowed second binary, both safe when it started,
    let layout = Layout::new("al-trig");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    let v2 = install(&layout.dir.path().join("v2"), "kvd");
    service_config(
        &layout,
        &bin,
        &format!("allowed_binaries = [\"{}\"]", v2.display()),
    );
    let notify = NotifySocket::abstract_named("al-trig");
    let sup = RunningSupervisor::start(&layout, &notify, None);
    notify.wait_for("READY=1");
    let pid = incumbent(&layout).unwrap();
    // By `--socket`, as a user who may not read the configuration would.
    let socket = layout.trigger.to_str().unwrap();
    let trigger = |binary: Option<&Path>| {
        let mut args = vec!["trigger", "--socket", socket];
        if let Some(b) = binary {
            args.extend(["--binary", b.to_str().unwrap()]);
        }
        run_cli(&args)
    };

    // when the allowed binary becomes world-writable and a trigger names
    // it,
    chmod(&v2, 0o777);
    let out = trigger(Some(&v2));

    // then the handoff is refused (exit 2) with the file, its owner and
    // mode and the fix, and the daemon serves on;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let expected = format!(
        "error: {} is not safe to run as {}: the file (owner uid {}, mode 0777)",
        v2.display(),
        as_user(),
        own_uid()
    );
    assert!(stdout.starts_with(&expected), "{stdout}");
    assert!(
        stdout.contains(&format!("chmod go-w {}", v2.display())),
        "{stdout}"
    );
    assert_eq!(incumbent(&layout), Some(pid));

    // and so for the configured binary, whose directory became
    // group-writable, and for a path written with a trailing `/` (equal
    // to the listed one as a path, but naming a directory).
    let bin_dir = bin.parent().unwrap();
    chmod(bin_dir, 0o775);
    let out = trigger(None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("directory {} on its way", bin_dir.display()))
            && stdout.contains("mode 0775"),
        "{stdout}"
    );
    chmod(&v2, 0o755);
    let slashed = PathBuf::from(format!("{}/", v2.display()));
    let line = client::trigger(&layout.trigger, Some(&slashed)).unwrap();
    assert!(line.contains("ends in '/'"), "{line}");
    assert_eq!(incumbent(&layout), Some(pid));
    let log = fs::read_to_string(&sup.log).unwrap();
    assert!(
        log.contains("refused a handoff to an untrusted binary"),
        "{log}"
    );
    assert!(!log.contains("handoff starting"), "{log}");

    // Once fixed, the handoff runs and commits.
    let out = trigger(Some(&v2));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(incumbent(&layout), Some(pid));
    chmod(bin_dir, 0o755);
}

#[test]
fn a_dead_daemon_is_not_restarted_from_an_unsafe_binary_until_it_is_fixed() {
    // Given `run` with a daemon serving from a safe binary,
    let layout = Layout::new("al-restart");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    service_config(&layout, &bin, "");
    let notify = NotifySocket::abstract_named("al-restart");
    let sup = RunningSupervisor::start(&layout, &notify, None);
    notify.wait_for("READY=1");
    let old = incumbent(&layout).unwrap();

    // when the binary becomes world-writable and the daemon is killed,
    chmod(&bin, 0o777);
    send(old, libc::SIGKILL);
    assert!(wait_gone(old, BOUND));

    // then every restart is refused, logged with the file, its owner, mode
    // and fix, and no daemon runs (the supervisor keeps trying, with its
    // usual pause between attempts);
    let log = || fs::read_to_string(&sup.log).unwrap();
    let refusal = format!(
        "{} is not safe to run as {}: the file (owner uid {}, mode 0777)",
        bin.display(),
        as_user(),
        own_uid()
    );
    wait_until("two refused restarts", || {
        let log = log();
        log.matches("the restart failed").count() >= 2 && log.contains(&refusal)
    });
    assert!(log().contains(&format!("chmod go-w {}", bin.display())));
    assert_eq!(incumbent(&layout), None);
    assert!(!log().contains("restarted the daemon"), "{}", log());

    // and once the file is fixed, the next restart runs it.
    chmod(&bin, 0o755);
    wait_until("a restarted daemon", || incumbent(&layout).is_some());
    let new = incumbent(&layout).unwrap();
    assert_ne!(new, old);
    assert!(log().contains("restarted the daemon"));
}

#[test]
fn a_handoff_through_the_api_to_a_slashed_path_is_a_refusal() {
    // Given a service with an allowed second binary,
    let layout = Layout::new("al-api");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    let v2 = install(&layout.dir.path().join("v2"), "kvd");
    let config = service_config(
        &layout,
        &bin,
        &format!("allowed_binaries = [\"{}\"]", v2.display()),
    );
    let service = try_start(config).unwrap();
    let pid = service.status().incumbent_pid;

    // a handoff to the listed path with a `/` appended is refused before
    // anything runs (a refusal: `SIGHUP` answers systemd for it),
    let slashed = PathBuf::from(format!("{}/", v2.display()));
    let e = service.handoff(Some(&slashed)).unwrap_err();
    assert!(matches!(e, ServiceError::UntrustedBinary { .. }), "{e:?}");
    assert!(e.is_refusal());
    assert!(e.to_string().contains("ends in '/'"), "{e}");
    assert_eq!(service.status().incumbent_pid, pid);
    assert_eq!(service.status().handoffs, 0);

    // and the path as listed runs.
    let report = service.handoff(Some(&v2)).unwrap();
    assert!(report.committed, "{report:?}");
}

#[test]
fn trigger_and_status_find_the_socket_in_a_configuration_whose_binary_is_unsafe() {
    // The running supervisor judges the binaries, as its own user, at each
    // start and handoff; a client only needs the trigger socket's path.
    let layout = Layout::new("al-client");
    let bin = install(&layout.dir.path().join("bin"), "kvd");
    chmod(&bin, 0o777);
    fs::write(
        &layout.config_file,
        config_text(&layout, &bin.display().to_string(), ""),
    )
    .unwrap();
    assert!(Config::load(&layout.config_file).is_err());
    let out = run_cli(&["status", "--config", layout.config_file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Nothing runs there: the command gets as far as connecting.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("not safe to run"), "{stderr}");
    assert!(
        stderr.contains(&layout.trigger.display().to_string()),
        "{stderr}"
    );
}
