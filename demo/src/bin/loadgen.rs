//! `loadgen --addr A --clients N --seconds S [--seed X]`: runs the load of
//! [`handoff_demo::loadgen`] against a kvd for S seconds, reads every
//! acknowledged write back, prints a report, and exits non-zero if a
//! request failed or a write was lost.

use std::net::SocketAddr;
use std::time::Duration;

use handoff_demo::loadgen::{self, LoadConfig};

const USAGE: &str = "usage: loadgen --addr HOST:PORT [--clients N] [--seconds S] [--seed X]";

fn parse(args: &[String]) -> Result<(LoadConfig, f64), String> {
    let mut addr: Option<SocketAddr> = None;
    let (mut clients, mut seconds, mut seed) = (8usize, 10.0f64, 1u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                addr = Some(v.parse().map_err(|e| format!("--addr {v:?}: {e}"))?);
            }
            "--clients" => {
                let v = value()?;
                clients = v.parse().map_err(|e| format!("--clients {v:?}: {e}"))?;
            }
            "--seconds" => {
                let v = value()?;
                seconds = v.parse().map_err(|e| format!("--seconds {v:?}: {e}"))?;
            }
            "--seed" => {
                let v = value()?;
                seed = v.parse().map_err(|e| format!("--seed {v:?}: {e}"))?;
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    let mut cfg = LoadConfig::new(addr.ok_or("--addr is required")?);
    cfg.clients = clients;
    cfg.seed = seed;
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err("--seconds must be a non-negative number".into());
    }
    Ok((cfg, seconds))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return;
    }
    let (cfg, seconds) = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let addr = cfg.addr;
    let load = loadgen::start(cfg);
    // The run's length is the point here, not a wait for an event.
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let report = load.stop();
    println!("load: {report}");
    let verified = loadgen::verify(addr, &report.acked);
    println!("verify: {verified}");
    for p in report.problems.iter().chain(&verified.problems) {
        println!("problem: {p}");
    }
    let ok = report.requests_failed == 0
        && report.get_mismatches == 0
        && verified.writes_lost == 0
        && verified.unanswered == 0;
    std::process::exit(if ok { 0 } else { 1 });
}
