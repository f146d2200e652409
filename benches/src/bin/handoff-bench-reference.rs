//! The benchmark's daemon on the reference implementation, `beyond-handoff`
//! 0.1.4 (lib `handoff`): the same service and hooks as
//! `handoff-bench-ours`, driven by the reference's `detect_role`, successor
//! typestates and `Incumbent::serve`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use handoff::{
    DataDirLock, DrainReport, Drainable, Incumbent, ReadinessSnapshot, Role, SealReport,
    StateSnapshot, detect_role,
};
use handoff_benches::daemon::{self, Args, LISTENER, READY_LINE, SEALED_REVISIONS};
use handoff_benches::echo::{EchoServer, EchoState};

/// The hooks: stop or resume accepting, and nothing to seal.
struct Hooks(Arc<EchoState>);

impl Drainable for Hooks {
    fn drain(&self, _deadline: std::time::Instant) -> handoff::Result<DrainReport> {
        self.0.stop_accepting();
        Ok(DrainReport {
            open_conns_remaining: 0,
            accept_closed: true,
        })
    }

    fn seal(&self) -> handoff::Result<SealReport> {
        Ok(SealReport {
            last_revision_per_shard: SEALED_REVISIONS.to_vec(),
            data_dir_fingerprint: [0; 32],
        })
    }

    fn resume_after_abort(&self) -> handoff::Result<()> {
        self.0.resume_accepting();
        Ok(())
    }

    fn snapshot_state(&self) -> StateSnapshot {
        StateSnapshot::default()
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handoff-bench-reference: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    // First thing, before any thread: it edits the environment.
    let role = detect_role()?;
    let args = Args::parse(std::env::args_os().skip(1))?;
    let (incumbent, server) = match role {
        Role::ColdStart { mut inherited } => {
            let listener = inherited
                .take(LISTENER)
                .ok_or("no inherited listener named main")?;
            let lock = DataDirLock::acquire(&args.data_dir)?;
            let incumbent = Incumbent::bind_cold_start(&args.control_socket, lock)?;
            let server = EchoServer::start(listener)?;
            println!("{READY_LINE}");
            std::io::stdout().flush()?;
            (incumbent, server)
        }
        Role::Successor(successor) => {
            let mut begun = successor
                .handshake(b"handoff-bench-reference".to_vec())?
                .wait_for_begin()?;
            // The same order as ours, where the library takes the lock
            // before `wait_for_begin` returns: lock, listener, accept, Ready.
            let lock = DataDirLock::acquire(&args.data_dir)?;
            let listener = begun
                .take_listener(LISTENER)
                .ok_or("no inherited listener named main")?;
            let addr = listener.local_addr()?.to_string();
            let server = EchoServer::start(listener)?;
            let readiness = ReadinessSnapshot {
                listening_on: vec![addr],
                healthz_ok: true,
                advertised_revision_per_shard: SEALED_REVISIONS.to_vec(),
            };
            let started = std::time::Instant::now();
            let incumbent = begun.announce_and_bind(readiness, &args.control_socket, lock)?;
            daemon::trace("reference", "announce", started.elapsed());
            (incumbent, server)
        }
    };
    incumbent.serve(Hooks(server.state()))?;
    // Committed: answer the connection in hand, if any, then go.
    server.shutdown();
    Ok(())
}
