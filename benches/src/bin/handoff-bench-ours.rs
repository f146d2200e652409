//! The benchmark's daemon on our implementation (`handoff-std`): answers
//! `PING` on the inherited listener `main`, and hands itself off with
//! hooks that return at once. See `handoff_benches::daemon` for the command
//! line; the twin on the reference crate is `handoff-bench-reference`.
//!
//! Two modes only this one has: with `HANDOFF_BENCH_HOLD` it keeps its
//! connections open and passes them to its successor
//! (`handoff_benches::held`); with `HANDOFF_BENCH_RELAY` it is one of the
//! two processes that measure the accept gap's floor
//! (`handoff_benches::relay`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;

use handoff_benches::daemon::{self, Args, LISTENER, READY_LINE, SEALED_REVISIONS};
use handoff_benches::echo::EchoServer;
use handoff_benches::held::{HOLD_ENV, HeldServer};
use handoff_benches::relay;
use handoff_std::os::listeners::Mode;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, ReadyReport, Role, SealProgress,
    SealReport, detect_role,
};

/// The server the daemon runs: one connection per request, or (with
/// [`HOLD_ENV`]) connections kept open and passed at a drain.
enum Server {
    Echo(EchoServer),
    Held(HeldServer),
}

impl Server {
    fn start(listener: std::net::TcpListener, hold: bool) -> std::io::Result<Arc<Server>> {
        Ok(Arc::new(if hold {
            Server::Held(HeldServer::start(listener)?)
        } else {
            Server::Echo(EchoServer::start(listener)?)
        }))
    }
}

/// The hooks: stop or resume accepting (passing the connections held), and
/// nothing to seal.
struct Hooks(Arc<Server>);

impl Drainable for Hooks {
    fn drain(
        &self,
        _deadline: std::time::Instant,
        handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        match &*self.0 {
            Server::Echo(echo) => echo.state().stop_accepting(),
            Server::Held(held) => {
                held.pass(handover).map_err(HookError::from)?;
            }
        }
        Ok(DrainReport {
            open_conns_remaining: 0,
            accept_closed: true,
        })
    }

    fn seal(&self, _progress: &SealProgress) -> Result<SealReport, HookError> {
        Ok(SealReport {
            last_revision_per_shard: SEALED_REVISIONS.to_vec(),
            data_dir_fingerprint: [0; 32],
        })
    }

    fn resume_after_abort(&self) -> Result<(), HookError> {
        match &*self.0 {
            Server::Echo(echo) => echo.state().resume_accepting(),
            Server::Held(held) => held.resume(),
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-bench-ours: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // The accept gap's floor runs this binary without a role.
    if let Some(relayed) = relay::run_if_relay() {
        return Ok(relayed?);
    }
    // First thing, before any thread: it edits the environment.
    let role = detect_role()?;
    if daemon::floor_probe() {
        return probe(role);
    }
    let hold = std::env::var_os(HOLD_ENV).is_some();
    let args = Args::parse(std::env::args_os().skip(1))?;
    let (incumbent, server) = match role {
        Role::ColdStart { mut listeners } => {
            let listener = listeners.take_tcp(LISTENER, Mode::Blocking)?;
            let lock = DataDirLock::acquire(&args.data_dir)?;
            let incumbent = Incumbent::bind_cold_start(&args.control_socket, lock)?;
            let server = Server::start(listener, hold)?;
            println!("{READY_LINE}");
            std::io::stdout().flush()?;
            (incumbent, server)
        }
        Role::Successor(successor) => {
            // Bound while the incumbent drains, not after `Begin`.
            let successor = successor.with_control_socket(&args.control_socket);
            let successor = if hold {
                successor.accepting_connections()
            } else {
                successor
            };
            let mut begun = successor
                .handshake(b"handoff-bench-ours")?
                .wait_for_begin(&args.data_dir)?;
            let listener = begun.listeners().take_tcp(LISTENER, Mode::Blocking)?;
            let passed = begun.take_connections();
            let addr = listener.local_addr()?.to_string();
            // Accepting before `Ready`, as the protocol has it: the
            // supervisor commits on `Ready`, and from then on nobody else
            // will answer.
            let server = Server::start(listener, hold)?;
            let readiness = ReadyReport {
                listening_on: vec![addr],
                healthz_ok: true,
                advertised_revision_per_shard: SEALED_REVISIONS.to_vec(),
            };
            let started = std::time::Instant::now();
            let incumbent = begun
                .announce_and_bind(readiness, &args.control_socket)
                .map_err(|e| e.error)?;
            daemon::trace("ours", "announce", started.elapsed());
            // Passed connections are touched only once `Ready` is out.
            if let Server::Held(held) = &*server {
                let conns = passed
                    .into_iter()
                    .map(|p| p.into_tcp())
                    .collect::<Result<Vec<_>, _>>()?;
                held.adopt(conns);
            }
            (incumbent, server)
        }
    };
    incumbent.serve(&Hooks(server.clone()))?;
    // Committed: answer the connection in hand, if any, then go.
    match Arc::try_unwrap(server) {
        Ok(Server::Echo(echo)) => echo.shutdown(),
        Ok(Server::Held(held)) => held.shutdown(),
        Err(_) => {}
    }
    Ok(())
}

/// The floor probe: tell whoever started us that we are running, and exit.
fn probe(role: Role) -> Result<(), Box<dyn std::error::Error>> {
    match role {
        Role::Successor(successor) => {
            let (control, _listeners): (UnixStream, _) = successor.into_parts();
            (&control).write_all(&[1])?;
        }
        Role::ColdStart { .. } => {
            let mut out = std::io::stdout().lock();
            out.write_all(&[1])?;
            out.flush()?;
        }
    }
    Ok(())
}
