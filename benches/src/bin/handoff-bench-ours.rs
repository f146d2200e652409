//! The benchmark's daemon on our implementation (`handoff-std`): answers
//! `PING` on the inherited listener `main`, and hands itself off with
//! hooks that return at once. See `handoff_benches::daemon` for the command
//! line; the twin on the reference crate is `handoff-bench-reference`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;

use handoff_benches::daemon::{self, Args, LISTENER, READY_LINE, SEALED_REVISIONS};
use handoff_benches::echo::{EchoServer, EchoState};
use handoff_std::os::listeners::Mode;
use handoff_std::{
    DataDirLock, DrainReport, Drainable, HookError, Incumbent, ReadyReport, Role, SealProgress,
    SealReport, detect_role,
};

/// The hooks: stop or resume accepting, and nothing to seal.
struct Hooks(Arc<EchoState>);

impl Drainable for Hooks {
    fn drain(
        &self,
        _deadline: std::time::Instant,
        _handover: handoff_std::Handover,
    ) -> Result<DrainReport, HookError> {
        self.0.stop_accepting();
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
        self.0.resume_accepting();
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
    // First thing, before any thread: it edits the environment.
    let role = detect_role()?;
    if daemon::floor_probe() {
        return probe(role);
    }
    let args = Args::parse(std::env::args_os().skip(1))?;
    let (incumbent, server) = match role {
        Role::ColdStart { mut listeners } => {
            let listener = listeners.take_tcp(LISTENER, Mode::Blocking)?;
            let lock = DataDirLock::acquire(&args.data_dir)?;
            let incumbent = Incumbent::bind_cold_start(&args.control_socket, lock)?;
            let server = EchoServer::start(listener)?;
            println!("{READY_LINE}");
            std::io::stdout().flush()?;
            (incumbent, server)
        }
        Role::Successor(successor) => {
            let mut begun = successor
                .handshake(b"handoff-bench-ours")?
                .wait_for_begin(&args.data_dir)?;
            let listener = begun.listeners().take_tcp(LISTENER, Mode::Blocking)?;
            let addr = listener.local_addr()?.to_string();
            // Accepting before `Ready`, as the protocol has it: the
            // supervisor commits on `Ready`, and from then on nobody else
            // will answer.
            let server = EchoServer::start(listener)?;
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
            (incumbent, server)
        }
    };
    incumbent.serve(&Hooks(server.state()))?;
    // Committed: answer the connection in hand, if any, then go.
    server.shutdown();
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
