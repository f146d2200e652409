//! `handoff-demo`: the whole mission in one command.
//!
//! It starts the supervisor (the real `handoff-supervisor` service, in this
//! process) over a kernel-chosen loopback port and a temporary data
//! directory, cold-starts `kvd` under it, runs the load generator against
//! it, and performs handoffs under that load between two builds of `kvd`
//! (two copies of this binary, which runs as `kvd` when asked to), each
//! through the supervisor's trigger socket as an operator would. Every
//! handoff goes through probation (`--probation-ms`, 500 by default here).
//! With `--broken-builds N` it then hands off N times to a third build that
//! crashes 100 ms after it took over (kvd's `--fault`), each of which must
//! be rolled back to the build that served. At the end it reads every
//! acknowledged write back, prints a short report and one `summary:` line,
//! and exits non-zero if any write was lost, any handoff did not commit,
//! any broken one was not rolled back, or a request failed other than on
//! the connections of a build that crashed.
//!
//! The supervisor passes kvd's open connections to the new process at each
//! handoff, and a quarter of the clients (rounded up) keep one connection
//! for the whole run, so connections span the handoffs. When the handoffs
//! pass connections (a committed one reports `connections_passed`), the
//! demo also fails if the server closed any client's connection, except
//! while the broken builds are rolled back (a connection a crashed build
//! accepted dies with it; one passed to it goes back to the old process
//! open, but a request the crashed build had read from it is never
//! answered, and its client gives up at its timeout), and, when every
//! committed handoff passed them, if any request was answered `RETRY` (kvd
//! answers `RETRY` and closes only when it cannot pass a connection).
//!
//! ```text
//! handoff-demo [--handoffs N] [--clients N] [--runtime std|mio|smol|tokio]
//!              [--probation-ms MS] [--broken-builds N]
//! handoff-demo kvd …      (the daemon; see `kvd --help`)
//! handoff-demo supervisor …   (the `handoff-supervisor` command line)
//! ```

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use handoff_demo::{kvd, loadgen};
use handoff_supervisor::client::{self, Reply};
use handoff_supervisor::{Config, ListenerConfig, ListenerKind, Service};

const USAGE: &str = "usage: handoff-demo [--handoffs N] [--clients N] \
                     [--runtime std|mio|smol|tokio] [--probation-ms MS] [--broken-builds N]";

struct Options {
    handoffs: usize,
    clients: usize,
    runtime: String,
    probation_ms: u64,
    broken: usize,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        handoffs: 20,
        clients: 8,
        runtime: "std".into(),
        probation_ms: 500,
        broken: 0,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--handoffs" => {
                o.handoffs = value()?
                    .parse()
                    .map_err(|_| "--handoffs takes a number".to_string())?
            }
            "--clients" => {
                o.clients = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or("--clients takes a positive number")?
            }
            "--runtime" => o.runtime = value()?,
            "--probation-ms" => {
                o.probation_ms = value()?
                    .parse()
                    .map_err(|_| "--probation-ms takes a number".to_string())?
            }
            "--broken-builds" => {
                o.broken = value()?
                    .parse()
                    .map_err(|_| "--broken-builds takes a number".to_string())?
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !["std", "mio", "smol", "tokio"].contains(&o.runtime.as_str()) {
        return Err(format!(
            "--runtime {}: expected std, mio, smol or tokio",
            o.runtime
        ));
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("kvd") {
        return ExitCode::from(kvd_from_demo(&args) as u8);
    }
    // The operators' supervisor itself, so that a test (or a reader) can
    // run the real command line against kvd from this one binary.
    if args.get(1).map(String::as_str) == Some("supervisor") {
        let rest = std::env::args_os().skip(2);
        return handoff_supervisor::cli::main_from(
            std::iter::once(std::ffi::OsString::from("handoff-supervisor")).chain(rest),
        );
    }
    let options = match parse(&args[1..]) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("handoff-demo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("handoff-demo: {e}");
            ExitCode::from(2)
        }
    }
}

/// `handoff-demo kvd …` runs the daemon; without `--version`, the build is
/// named after the binary's file name (`kvd-v1`, `kvd-v2`).
fn kvd_from_demo(args: &[String]) -> i32 {
    let mut kvd_args: Vec<String> = args[1..].to_vec();
    if !kvd_args.iter().any(|a| a == "--version") && !kvd_args.iter().any(|a| a == "supervise") {
        let name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "kvd".into());
        kvd_args.push("--version".into());
        kvd_args.push(name);
    }
    kvd::main_with_args(kvd_args)
}

/// A temporary directory, removed at the end.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn run(o: &Options) -> Result<bool, String> {
    // Short paths: Unix socket paths must fit in 108 bytes.
    let dir = Scratch(std::env::temp_dir().join(format!("hdemo-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(dir.0.join("bin")).map_err(|e| format!("temp dir: {e}"))?;
    let me = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
    // Two builds: the same program under two names, so every handoff swaps
    // the binary file as a real upgrade does.
    let builds = [dir.0.join("bin/kvd-v1"), dir.0.join("bin/kvd-v2")];
    for b in &builds {
        std::fs::copy(&me, b).map_err(|e| format!("copying {}: {e}", b.display()))?;
    }
    // A build that crashes on probation: v2 with kvd's fault flag, as a
    // script the supervisor runs like any build.
    let broken = dir.0.join("bin/kvd-v3-broken");
    std::fs::write(
        &broken,
        format!(
            "#!/bin/sh\nexec {:?} \"$@\" --fault crash-after-ready=100\n",
            builds[1]
        ),
    )
    .and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755))
    })
    .map_err(|e| format!("writing {}: {e}", broken.display()))?;
    let data = dir.0.join("data");
    let trigger = dir.0.join("trigger.sock");
    let control = dir.0.join("kvd.sock");
    let config = Config {
        control_socket: control.clone(),
        trigger_socket: trigger.clone(),
        binary: builds[0].clone(),
        args: vec![
            "kvd".into(),
            "--control-socket".into(),
            control.display().to_string(),
            "--data-dir".into(),
            data.display().to_string(),
            "--runtime".into(),
            o.runtime.clone(),
        ],
        env: Vec::new(),
        journal: Some(dir.0.join("journal")),
        drain_grace_secs: 25,
        deadline_secs: 60,
        allowed_uids: Vec::new(),
        allowed_binaries: vec![builds[1].clone(), broken.clone()],
        listeners: vec![ListenerConfig {
            name: "kv".into(),
            addr: "127.0.0.1:0".into(),
            kind: ListenerKind::Tcp,
            backlog: 1024,
        }],
        probation_ms: o.probation_ms,
        health_probe: None,
        pass_connections: true,
    };
    println!(
        "handoff-demo: {} handoffs under load from {} clients",
        o.handoffs, o.clients
    );
    let service = Service::start(config).map_err(|e| format!("starting the supervisor: {e}"))?;
    let addr: SocketAddr = service
        .listener_addrs()
        .into_iter()
        .find(|(name, _)| name == "kv")
        .and_then(|(_, a)| a.parse().ok())
        .ok_or("the supervisor did not report the kv address")?;
    println!(
        "  supervisor up, kvd-v1 serving on {addr} (pid {})",
        service.status().incumbent_pid.unwrap_or(0)
    );

    let mut load_cfg = loadgen::LoadConfig::new(addr);
    load_cfg.clients = o.clients;
    load_cfg.seed = u64::from(std::process::id());
    load_cfg.long_lived_clients = o.clients.div_ceil(4);
    let request_timeout = load_cfg.request_timeout;
    let load = loadgen::start(load_cfg);
    if !load.wait_for_acks(50, Duration::from_secs(30)) {
        return Err("the load never got going: no acknowledged writes in 30 s".into());
    }

    let mut durations = Vec::new();
    let (mut committed, mut aborted) = (0, 0);
    // Connections passed in the committed handoffs, and how many of those
    // handoffs had passing set up at all.
    let (mut passed, mut passing_handoffs) = (0u64, 0);
    for i in 0..o.handoffs {
        let target = &builds[(i + 1) % 2];
        let before = load.progress().writes_acked;
        let reply = client::trigger(&trigger, Some(target))
            .map_err(|e| format!("trigger: {e}"))
            .and_then(|line| Reply::parse(&line).map_err(|e| e.to_string()));
        let label = target.file_name().unwrap_or_default().to_string_lossy();
        match reply {
            Ok(Reply::Handoff(h)) if h.committed => {
                committed += 1;
                durations.push(h.duration_ms);
                if let Some(n) = h.connections_passed {
                    passing_handoffs += 1;
                    passed += u64::from(n);
                }
                println!(
                    "  handoff {:>2}/{}: → {label:<6} committed in {:>7.2} ms (pid {}), {} connections passed",
                    i + 1,
                    o.handoffs,
                    h.duration_ms,
                    service.status().incumbent_pid.unwrap_or(0),
                    h.connections_passed
                        .map_or_else(|| "no".to_owned(), |n| n.to_string())
                );
            }
            Ok(Reply::Handoff(h)) => {
                aborted += 1;
                println!(
                    "  handoff {:>2}/{}: → {label:<6} ABORTED: {}",
                    i + 1,
                    o.handoffs,
                    h.abort_reason.unwrap_or_default()
                );
            }
            Ok(other) => {
                aborted += 1;
                println!("  handoff {:>2}/{}: refused: {other:?}", i + 1, o.handoffs);
            }
            Err(e) => {
                aborted += 1;
                println!("  handoff {:>2}/{}: {e}", i + 1, o.handoffs);
            }
        }
        // Keep every handoff under load: wait for fresh acknowledged writes
        // before the next one (bounded, so a stall shows up as a failure).
        let _ = load.wait_for_acks(before + 20, Duration::from_secs(10));
    }

    // The broken build: each handoff to it must be rolled back.
    let mut rolled_back = 0;
    let before_broken = load.progress();
    for i in 0..o.broken {
        let before = load.progress().writes_acked;
        let serving = service.status().incumbent_pid.unwrap_or(0);
        let reply = client::trigger(&trigger, Some(&broken))
            .map_err(|e| format!("trigger: {e}"))
            .and_then(|line| Reply::parse(&line).map_err(|e| e.to_string()));
        let now = service.status().incumbent_pid.unwrap_or(0);
        match reply {
            Ok(Reply::Handoff(h)) if h.rolled_back && now == serving => {
                rolled_back += 1;
                println!(
                    "  broken {:>2}/{}: → kvd-v3-broken rolled back after {:.0} ms on probation: {} (pid {now} serves again)",
                    i + 1,
                    o.broken,
                    h.probation_ms().unwrap_or_default(),
                    h.abort_reason.unwrap_or_default()
                );
            }
            other => println!(
                "  broken {:>2}/{}: NOT rolled back: {other:?} (pid {now} serves)",
                i + 1,
                o.broken
            ),
        }
        let _ = load.wait_for_acks(before + 20, Duration::from_secs(10));
    }
    // Requests on the crashed builds' own connections get no answer (a
    // crash closes them); none of them was acknowledged, so none is lost.
    // Those connections are closed by the server, and counted here too. A
    // request a crashed build had read from a connection passed to it stays
    // unanswered until the client's timeout (the old process gets the
    // connection back, open, without the request): wait for every request
    // in flight now to end, so that it counts here.
    if o.broken > 0 {
        let _ = load.wait_for_requests_in_flight(request_timeout + Duration::from_secs(5));
    }
    let after_broken = load.progress();
    let failed_on_crashes = after_broken.requests_failed - before_broken.requests_failed;
    let closed_on_crashes = after_broken.connections_closed - before_broken.connections_closed;

    let report = load.stop();
    let verified = loadgen::verify(addr, &report.acked);
    service.shutdown();

    durations.sort_by(f64::total_cmp);
    let lost = verified.writes_lost + report.get_mismatches;
    // Passing was on if any committed handoff passed connections; then no
    // connection may be closed by the server outside the broken builds.
    let passing = passing_handoffs > 0;
    let closed_elsewhere = report.connections_closed.saturating_sub(closed_on_crashes);
    let mut why_failed = Vec::new();
    if committed != o.handoffs {
        why_failed.push(format!(
            "{} of {} handoffs did not commit",
            o.handoffs - committed,
            o.handoffs
        ));
    }
    if rolled_back != o.broken {
        why_failed.push(format!(
            "{} of {} broken builds were not rolled back",
            o.broken - rolled_back,
            o.broken
        ));
    }
    if report.requests_failed != failed_on_crashes {
        why_failed.push(format!(
            "{} requests got no answer other than on a crashed build's connections",
            report.requests_failed - failed_on_crashes
        ));
    }
    if lost > 0 {
        why_failed.push(format!("{lost} acknowledged writes lost"));
    }
    if verified.unanswered > 0 {
        why_failed.push(format!(
            "{} acknowledged writes could not be read back",
            verified.unanswered
        ));
    }
    if passing && closed_elsewhere > 0 {
        why_failed.push(format!(
            "{closed_elsewhere} client connections closed by the server although the handoffs \
             passed connections"
        ));
    }
    if passing && passing_handoffs == committed && report.requests_retried > 0 {
        why_failed.push(format!(
            "{} requests answered RETRY although every handoff passed its connections",
            report.requests_retried
        ));
    }
    let ok = why_failed.is_empty();
    println!();
    println!("  load:     {report}");
    println!(
        "  verified: {} acknowledged writes read back, {} lost, {} unanswered",
        verified.checked, verified.writes_lost, verified.unanswered
    );
    for p in report.problems.iter().chain(&verified.problems).take(5) {
        println!("  problem:  {p}");
    }
    let connections = if passing {
        format!(
            ", {passed} connections passed to the new processes, none closed by the server{}",
            if o.broken > 0 {
                format!(" but on the broken builds ({closed_on_crashes})")
            } else {
                String::new()
            }
        )
    } else {
        String::new()
    };
    println!(
        "  result:   {}",
        match (ok, o.broken) {
            (true, 0) => format!(
                "every handoff committed, no request failed, no acknowledged write \
                 lost{connections}"
            ),
            (true, _) => format!(
                "every handoff committed, every broken build was rolled back, no acknowledged \
                 write lost ({failed_on_crashes} requests in flight on a crashed build's \
                 connections got no answer){connections}"
            ),
            (false, _) => format!("FAILED: {}", why_failed.join("; ")),
        }
    );
    println!(
        "summary: handoffs={} committed={committed} aborted={aborted} rolled_back={rolled_back} \
         requests_ok={} requests_retried={} requests_failed={} connections_passed={passed} \
         connections_closed={} writes_acked={} writes_lost={lost} handoff_p50_ms={:.2} \
         handoff_p99_ms={:.2} max_request_ms={:.2}",
        o.handoffs,
        report.requests_ok,
        report.requests_retried,
        report.requests_failed,
        report.connections_closed,
        report.writes_acked,
        percentile(&durations, 50.0),
        percentile(&durations, 99.0),
        report.max_request_ms,
    );
    Ok(ok)
}
