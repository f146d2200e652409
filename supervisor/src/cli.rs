//! The `handoff-supervisor` command line: `run` supervises a daemon;
//! `trigger` and `status` talk to a running supervisor through its trigger
//! socket, found in the configuration (`--config`) or named (`--socket`).
//! The binary is [`main`]; a program that carries the supervisor as a
//! subcommand calls [`main_from`].
//!
//! Exit status: `run` exits 0 after a clean stop (SIGTERM, SIGINT) and 1 if
//! it could not start; `trigger` exits 0 only for a committed handoff, 1 for
//! an aborted one and 2 for any error; `status` exits 0, 1 if the daemon
//! does not answer its control socket, or 2.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::field::MakeExt;

use crate::client::{self, Reply};
use crate::notify::Notifier;
use crate::{Config, Service};
use handoff_std::os::signals::SignalSet;

/// Zero-downtime binary handoffs for a daemon: holds its listeners, keeps
/// it running, and swaps in a new binary on request.
#[derive(Debug, Parser)]
#[command(name = "handoff-supervisor", version)]
struct Cli {
    /// Log level of `run` on stderr: off, error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Supervise the daemon the configuration describes, until SIGTERM or
    /// SIGINT. SIGHUP hands it off to the configured binary.
    Run {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the running supervisor for a handoff and wait for its outcome.
    /// Exits 0 if it committed, 1 if it was aborted, 2 on any error.
    Trigger {
        /// The configuration file of the running supervisor (read for its
        /// `trigger_socket` and `deadline_secs`).
        #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The running supervisor's trigger socket, instead of `--config`
        /// (for a user who may not read the configuration).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// How long to wait for the outcome [default: the configuration's
        /// `deadline_secs` + 30, or 90 with `--socket`].
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// The successor's binary: the configured `binary` (the default) or
        /// one of `allowed_binaries`.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Print the outcome as a JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Show the running supervisor's status.
    Status {
        /// The configuration file of the running supervisor (read for its
        /// `trigger_socket`).
        #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The running supervisor's trigger socket, instead of `--config`.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Print the status as a JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// The `handoff-supervisor` command line, from this process's arguments:
/// what the binary's `main` is.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// The command line from `args` (the first is the program's name). A
/// program that embeds the supervisor as a subcommand of its own passes
/// what follows the subcommand's name here.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Command::Run { config } => run(&config, cli.log_level),
        Command::Trigger {
            config,
            socket,
            timeout_secs,
            binary,
            json,
        } => match target(config.as_deref(), socket) {
            Ok((socket, deadline)) => {
                // The whole handoff is bounded by the deadline; an abort adds
                // the successor's kill grace and the incumbent's resume.
                let timeout = timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(deadline + Duration::from_secs(30));
                trigger(&socket, timeout, binary.as_deref(), json)
            }
            Err(code) => code,
        },
        Command::Status {
            config,
            socket,
            json,
        } => match target(config.as_deref(), socket) {
            Ok((socket, _)) => status(&socket, json),
            Err(code) => code,
        },
    }
}

/// The signals `run` handles, blocked in every thread and taken with
/// `sigwait` by the main thread: no handler runs in an arbitrary thread's
/// context, and nothing but the main loop reacts to them.
fn handled_signals() -> SignalSet {
    SignalSet::new(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT])
        .expect("SIGHUP, SIGTERM and SIGINT are valid signals")
}

fn run(config_path: &Path, level: LevelFilter) -> ExitCode {
    // Both edit the environment, which is safe only while this is the one
    // thread: before the logger, the signal mask and the service.
    let startup = handoff_std::os::env::take_startup_env();
    let notifier = Notifier::take_from_env();
    let signals = handled_signals();
    let blocked = signals.block();

    // Every field value is escaped, messages included: a value may carry a
    // peer's text (a requested path, a daemon's error), and a raw CR, ESC
    // or newline in it could forge a log line. Levels and timestamps keep
    // their colours on a terminal.
    let fields = tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::text::one_line(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ");
    tracing_subscriber::fmt()
        .fmt_fields(fields)
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    if let Err(e) = blocked {
        tracing::error!(error = %e, "cannot set up SIGHUP, SIGTERM and SIGINT");
        return ExitCode::from(1);
    }
    let startup = match startup {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("socket activation: {e}");
            return ExitCode::from(1);
        }
    };
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    if startup.control.is_some() {
        tracing::warn!(
            "started as a handoff successor (HANDOFF_ROLE is set); a supervisor is not \
             handed off, ignoring its control socket"
        );
    }
    let mut builder = Service::builder(config).notifier(notifier);
    if !startup.listeners.is_empty() {
        builder = builder.inherited_listeners(startup.listeners);
    }
    let service = match builder.start() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };

    // SIGHUP's handoff runs on a thread of its own, so that a SIGTERM
    // arriving meanwhile is taken at once; the scope then waits for that
    // handoff (bounded by its deadline) before the daemon is stopped.
    std::thread::scope(|scope| {
        loop {
            let sig = signals.wait();
            if sig == libc::SIGHUP {
                tracing::info!("SIGHUP: handing off to the configured binary");
                let service = &service;
                let spawned = std::thread::Builder::new()
                    .name("handoff-sighup".into())
                    .spawn_scoped(scope, move || match service.handoff(None) {
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!("SIGHUP: {e}");
                            if e.is_refusal() {
                                service.reload_refused(&e.to_string());
                            }
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "SIGHUP: cannot start the handoff");
                }
            } else {
                let name = if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                tracing::info!("{name}: shutting down");
                break;
            }
        }
    });
    service.shutdown();
    ExitCode::SUCCESS
}

/// Prints an error of the tool itself (not a reply) and the exit status
/// for it.
fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("handoff-supervisor: {e}");
    ExitCode::from(2)
}

/// The trigger socket to talk to and the handoff deadline: from the
/// configuration file, or `socket` as given with the default deadline.
fn target(config: Option<&Path>, socket: Option<PathBuf>) -> Result<(PathBuf, Duration), ExitCode> {
    match (config, socket) {
        (_, Some(socket)) => Ok((
            socket,
            Duration::from_secs(crate::config::DEFAULT_DEADLINE_SECS)
                + Duration::from_millis(crate::config::DEFAULT_PROBATION_MS),
        )),
        (Some(path), None) => match Config::load_for_client(path) {
            // The reply comes after probation too.
            Ok(c) => Ok((c.trigger_socket.clone(), c.deadline() + c.probation())),
            Err(e) => Err(fail(&format!(
                "{e} (a user who may not read it can pass --socket instead)"
            ))),
        },
        // clap requires one of the two.
        (None, None) => Err(fail(&"--config or --socket is required")),
    }
}

fn trigger(socket: &Path, timeout: Duration, binary: Option<&Path>, json: bool) -> ExitCode {
    // The supervisor compares paths as written, and it does not share our
    // working directory: a relative path is made absolute here.
    let binary = match binary.map(std::path::absolute).transpose() {
        Ok(b) => b,
        Err(e) => return fail(&format!("--binary: {e}")),
    };
    let line = match client::trigger_with_timeout(socket, binary.as_deref(), timeout) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    match Reply::parse(&line) {
        Ok(reply @ Reply::Handoff(_)) | Ok(reply @ Reply::Error(_)) => {
            println!("{}", if json { reply.to_json() } else { line });
            match reply {
                Reply::Handoff(h) if h.committed => ExitCode::SUCCESS,
                Reply::Handoff(_) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
        Ok(Reply::Status(_)) => fail(&format!("a status reply to a handoff request: {line}")),
        Err(e) => fail(&e),
    }
}

fn status(socket: &Path, json: bool) -> ExitCode {
    let line = match client::status(socket) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    match Reply::parse(&line) {
        Ok(reply @ Reply::Status(_)) | Ok(reply @ Reply::Error(_)) => {
            println!("{}", if json { reply.to_json() } else { line });
            match reply {
                // Alive but not answering (stopped, frozen, hung): a
                // liveness probe built on `status` must see it fail.
                Reply::Status(s) if s.answering == Some(false) => ExitCode::from(1),
                Reply::Status(_) => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            }
        }
        Ok(Reply::Handoff(_)) => fail(&format!("a handoff reply to a status request: {line}")),
        Err(e) => fail(&e),
    }
}
