//! The configuration file: the reference schema, its defaults, and every
//! way it is refused (with the key or the listener named).

use std::path::{Path, PathBuf};

use handoff_supervisor::{Config, ConfigError, ListenerConfig, ListenerKind};

const MINIMAL: &str = r#"
control_socket = "/run/kv/ctl.sock"
trigger_socket = "/run/kv/trigger.sock"
binary = "/usr/local/bin/kvd"
"#;

fn with_listener(listener: &str) -> String {
    format!("{MINIMAL}\n[[listeners]]\n{listener}\n")
}

#[track_caller]
fn refused(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn given_only_the_required_keys_then_every_default_applies() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.control_socket, Path::new("/run/kv/ctl.sock"));
    assert_eq!(c.trigger_socket, Path::new("/run/kv/trigger.sock"));
    assert_eq!(c.binary, Path::new("/usr/local/bin/kvd"));
    assert!(c.args.is_empty());
    assert!(c.env.is_empty());
    assert_eq!(c.journal, None);
    assert_eq!(c.drain_grace_secs, 25);
    assert_eq!(c.deadline_secs, 60);
    assert!(c.allowed_uids.is_empty());
    assert!(c.allowed_binaries.is_empty());
    // Zero listeners are allowed: a daemon may bind nothing it must keep.
    assert!(c.listeners.is_empty());

    let c =
        Config::from_toml_str(&with_listener("name = \"kv\"\naddr = \"0.0.0.0:7070\"")).unwrap();
    assert_eq!(
        c.listeners,
        vec![ListenerConfig {
            name: "kv".into(),
            addr: "0.0.0.0:7070".into(),
            kind: ListenerKind::Tcp,
            backlog: 1024,
        }]
    );
}

#[test]
fn given_every_key_then_each_is_read() {
    let text = r#"
control_socket = "/run/kv/ctl.sock"
trigger_socket = "/run/kv/trigger.sock"
binary = "/usr/local/bin/kvd"
args = ["--data-dir", "/var/lib/kv", "--verbose"]
env = [["RUST_LOG", "info"], ["KV_MODE", "a=b"]]
journal = "/var/lib/kv/handoff.journal"
drain_grace_secs = 5
deadline_secs = 30
allowed_uids = [1000, 1001]
allowed_binaries = ["/usr/local/bin/kvd-v2", "/opt/kv/kvd"]

[[listeners]]
name = "kv"
addr = "[::1]:7070"
backlog = 64

[[listeners]]
name = "admin"
addr = "/run/kv/admin.sock"
kind = "unix"

[[listeners]]
name = "stats"
addr = "127.0.0.1:8125"
kind = "udp"
"#;
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.args, ["--data-dir", "/var/lib/kv", "--verbose"]);
    assert_eq!(
        c.env,
        [
            ("RUST_LOG".to_owned(), "info".to_owned()),
            ("KV_MODE".to_owned(), "a=b".to_owned())
        ]
    );
    assert_eq!(
        c.journal.as_deref(),
        Some(Path::new("/var/lib/kv/handoff.journal"))
    );
    assert_eq!((c.drain_grace_secs, c.deadline_secs), (5, 30));
    assert_eq!(c.allowed_uids, [1000, 1001]);
    assert_eq!(
        c.allowed_binaries,
        [
            PathBuf::from("/usr/local/bin/kvd-v2"),
            PathBuf::from("/opt/kv/kvd")
        ]
    );
    let kinds: Vec<(&str, ListenerKind, u32)> = c
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.kind, l.backlog))
        .collect();
    assert_eq!(
        kinds,
        [
            ("kv", ListenerKind::Tcp, 64),
            ("admin", ListenerKind::Unix, 1024),
            ("stats", ListenerKind::Udp, 1024)
        ]
    );
    assert!(c.binary_allowed(Path::new("/usr/local/bin/kvd")));
    assert!(c.binary_allowed(Path::new("/opt/kv/kvd")));
    assert!(c.binary_allowed(Path::new("/opt//kv/kvd")));
    assert!(!c.binary_allowed(Path::new("/opt/kv/../kv/kvd")));
    assert!(!c.binary_allowed(Path::new("/bin/sh")));
}

#[test]
fn an_unknown_top_level_key_is_refused_by_name() {
    let text = format!("{MINIMAL}\ndrain_grace = 5\n");
    let e = refused(&text);
    assert!(e.contains("drain_grace"), "{e}");
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn an_unknown_listener_key_is_refused_by_name() {
    let e = refused(&with_listener(
        "name = \"kv\"\naddr = \"0.0.0.0:7070\"\nreuse_port = true",
    ));
    assert!(e.contains("reuse_port"), "{e}");
}

#[test]
fn a_missing_required_key_is_named() {
    let e = refused("control_socket = \"/a\"\nbinary = \"/b\"\n");
    assert!(e.contains("trigger_socket"), "{e}");
}

#[test]
fn listener_names_must_be_unique_non_empty_and_colon_free() {
    let two = |a: &str, b: &str| {
        format!(
            "{MINIMAL}\n[[listeners]]\nname = \"{a}\"\naddr = \"127.0.0.1:1\"\n\
             [[listeners]]\nname = \"{b}\"\naddr = \"127.0.0.1:2\"\n"
        )
    };
    let e = refused(&two("web", "web"));
    assert!(e.contains("\"web\"") && e.contains("unique"), "{e}");
    let e = refused(&two("web", "a:b"));
    assert!(e.contains("\"a:b\"") && e.contains("':'"), "{e}");
    let e = refused(&two("web", ""));
    assert!(e.contains("empty"), "{e}");
}

#[test]
fn an_unknown_listener_kind_is_refused() {
    let e = refused(&with_listener(
        "name = \"kv\"\naddr = \"0.0.0.0:7070\"\nkind = \"sctp\"",
    ));
    assert!(e.contains("sctp"), "{e}");
    assert!(
        e.contains("tcp") && e.contains("unix") && e.contains("udp"),
        "{e}"
    );
}

#[test]
fn addresses_must_parse_for_their_kind() {
    for (addr, kind) in [
        ("localhost:80", "tcp"),
        ("0.0.0.0", "tcp"),
        ("/run/kv.sock", "udp"),
        ("", "unix"),
        ("@abstract", "unix"),
    ] {
        let e = refused(&with_listener(&format!(
            "name = \"kv\"\naddr = \"{addr}\"\nkind = \"{kind}\""
        )));
        assert!(e.contains("\"kv\""), "{addr} {kind}: {e}");
    }
    let long = format!("/{}", "x".repeat(120));
    let e = refused(&with_listener(&format!(
        "name = \"kv\"\naddr = \"{long}\"\nkind = \"unix\""
    )));
    assert!(e.contains("107"), "{e}");
    // A listener is bound in place, not under a temporary name beside its
    // path: a deep directory is fine as long as the whole path fits.
    let deep = format!("/{}/l.sock", "d".repeat(96));
    Config::from_toml_str(&with_listener(&format!(
        "name = \"kv\"\naddr = \"{deep}\"\nkind = \"unix\""
    )))
    .expect("a deep listener path that fits");
    let e = refused(&with_listener(
        "name = \"kv\"\naddr = \"0.0.0.0:1\"\nbacklog = 0",
    ));
    assert!(e.contains("backlog"), "{e}");
}

#[test]
fn values_that_cannot_work_are_refused() {
    let e = refused("control_socket = \"/a\"\ntrigger_socket = \"/b\"\nbinary = \"\"\n");
    assert!(e.contains("`binary` is empty"), "{e}");
    let e = refused("control_socket = \"/a\"\ntrigger_socket = \"/a\"\nbinary = \"/b\"\n");
    assert!(e.contains("same path"), "{e}");
    let e = refused(&format!("{MINIMAL}\ndeadline_secs = 0\n"));
    assert!(e.contains("deadline_secs"), "{e}");
    let e = refused(&format!(
        "{MINIMAL}\ndeadline_secs = 10\ndrain_grace_secs = 20\n"
    ));
    assert!(e.contains("drain_grace_secs"), "{e}");
    let e = refused(&format!("{MINIMAL}\nenv = [[\"A=B\", \"c\"]]\n"));
    assert!(e.contains("\"A=B\""), "{e}");
    let e = refused(&format!("{MINIMAL}\nenv = [[\"A\"]]\n"));
    assert!(e.contains("env"), "{e}");
    let e = refused(&format!("{MINIMAL}\nallowed_uids = [-1]\n"));
    assert!(e.contains("allowed_uids"), "{e}");
    // Short enough itself, but its directory leaves no room for the
    // temporary name the socket is bound under first.
    let deep = format!("/{}/t.sock", "d".repeat(96));
    let e = refused(&format!(
        "control_socket = \"/a\"\ntrigger_socket = \"{deep}\"\nbinary = \"/b\"\n"
    ));
    assert!(
        e.contains("`trigger_socket`") && e.contains("temporary name"),
        "{e}"
    );
    for (key, path) in [
        ("trigger_socket", "/run/kv/trigger.sock"),
        ("control_socket", "/run/kv/ctl.sock"),
    ] {
        let e = refused(&with_listener(&format!(
            "name = \"api\"\nkind = \"unix\"\naddr = \"{path}\""
        )));
        assert!(e.contains(key) && e.contains("\"api\""), "{e}");
    }
}

#[test]
fn errors_from_a_file_name_the_file() {
    let dir = std::env::temp_dir().join(format!("hsup-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, format!("{MINIMAL}\nbogus = 1\n")).unwrap();
    let e = Config::load(&file).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&*file.to_string_lossy()) && text.contains("bogus"),
        "{text}"
    );

    std::fs::write(&file, format!("{MINIMAL}\ndeadline_secs = 0\n")).unwrap();
    let text = Config::load(&file).unwrap_err().to_string();
    assert!(text.contains(&*file.to_string_lossy()), "{text}");

    let missing = dir.join("missing.toml");
    let e = Config::load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn probation_and_the_health_probe_are_read() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.probation_ms, 5000);
    assert_eq!(c.health_probe, None);
    assert_eq!(c.probe(), None);
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}\nprobation_ms = 2500\n[health_probe]\ntcp = \"127.0.0.1:7070\"\n\
         send = \"PING\\n\"\nexpect = \"PONG\"\ninterval_ms = 500\ntimeout_ms = 250\n\
         failure_threshold = 4\n"
    ))
    .unwrap();
    assert_eq!(c.probation(), std::time::Duration::from_millis(2500));
    let probe = c.probe().unwrap();
    assert_eq!(
        probe.check,
        handoff_std::ProbeCheck::Tcp {
            address: "127.0.0.1:7070".parse().unwrap(),
            send: b"PING\n".to_vec(),
            expect: b"PONG".to_vec(),
        }
    );
    assert_eq!(probe.failure_threshold, 4);
}

#[test]
fn a_health_probe_that_cannot_work_is_refused() {
    let probe = |table: &str| format!("{MINIMAL}\n[health_probe]\n{table}\n");
    for (text, wanted) in [
        (
            format!("{MINIMAL}\nprobation_ms = 0\n[health_probe]\ntcp = \"127.0.0.1:1\"\n"),
            "the probe runs only during probation",
        ),
        (
            // Defaults: 1000 × (3 − 1) + 1000 = 3000 ms.
            format!("{MINIMAL}\nprobation_ms = 2999\n[health_probe]\ntcp = \"127.0.0.1:1\"\n"),
            "needs to fail (3000 ms: interval_ms",
        ),
        (probe(""), "exactly one of"),
        (
            probe("tcp = \"127.0.0.1:1\"\nhttp = \"127.0.0.1:1\""),
            "exactly one of",
        ),
        (probe("exec = [\"check\"]"), "absolute path"),
        (probe("exec = []"), "`exec` is empty"),
        (
            probe("tcp = \"localhost:1\""),
            "host names are not resolved",
        ),
        (
            probe("http = \"127.0.0.1:1\"\nsend = \"x\""),
            "`send` and `expect` go with `tcp` only",
        ),
        (
            probe("tcp = \"127.0.0.1:1\"\npath = \"/\""),
            "`path` goes with `http`",
        ),
        (
            probe("http = \"127.0.0.1:1\"\npath = \"healthz\""),
            "must start with /",
        ),
        (
            probe("tcp = \"127.0.0.1:1\"\nfailure_threshold = 0"),
            "at least 1",
        ),
        (probe("tcp = \"127.0.0.1:1\"\nbogus = 1"), "bogus"),
    ] {
        let e = refused(&text);
        assert!(e.contains(wanted), "{wanted:?} not in {e:?}");
        // One line a person reads: no run of spaces left by a broken
        // continuation.
        assert!(!e.contains("   "), "{e:?}");
    }
}
