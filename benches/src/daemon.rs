//! What the two benchmark daemons share: their command line, and the
//! start-up probe the handoff benchmark uses to measure the floor.
//!
//! `handoff-bench-ours --control-socket PATH --data-dir DIR` (and the same
//! for `handoff-bench-reference`). Started cold, a daemon takes the
//! listener `main` from FD 3, the data-dir lock and the control socket,
//! starts answering, and prints [`READY_LINE`]. Started by a supervisor, it
//! takes over from the running one. Either way it serves until a handoff
//! commits and then exits.

use std::ffi::OsString;
use std::path::PathBuf;

/// Set (to anything) in a daemon's environment: it exits right after
/// learning its role, having written one byte to its control socket (or to
/// stdout when started cold). The time until that byte arrives is the
/// cost of spawning and starting the process: the handoff's floor.
pub const FLOOR_ENV: &str = "HANDOFF_BENCH_FLOOR";

/// Set to a file path in a successor's environment: the daemon appends one
/// line there, `<daemon> announce_us <n>`, with how long its call to
/// `announce_and_bind` took (send `Ready`, bind the control socket), a step
/// the supervisor's timings cannot separate from the rest of begin → ready.
pub const TRACE_ENV: &str = "HANDOFF_BENCH_TRACE";

/// The line a cold-started daemon prints once it serves.
pub const READY_LINE: &str = "ready";

/// The listener's name, as the supervisor passes it.
pub const LISTENER: &str = "main";

/// A daemon's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    /// `--control-socket`.
    pub control_socket: PathBuf,
    /// `--data-dir`.
    pub data_dir: PathBuf,
}

impl Args {
    /// Parses `--control-socket PATH --data-dir DIR`, in any order.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
        let mut control_socket = None;
        let mut data_dir = None;
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let slot = match arg.to_str() {
                Some("--control-socket") => &mut control_socket,
                Some("--data-dir") => &mut data_dir,
                _ => return Err(format!("unexpected argument {arg:?}")),
            };
            let value = it.next().ok_or_else(|| format!("{arg:?} needs a value"))?;
            *slot = Some(PathBuf::from(value));
        }
        Ok(Args {
            control_socket: control_socket.ok_or("--control-socket PATH is required")?,
            data_dir: data_dir.ok_or("--data-dir DIR is required")?,
        })
    }

    /// The arguments that reproduce this command line.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--control-socket".into(),
            self.control_socket.clone().into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
        ]
    }
}

/// Whether this process runs only to be timed starting up ([`FLOOR_ENV`]).
pub fn floor_probe() -> bool {
    std::env::var_os(FLOOR_ENV).is_some()
}

/// Appends `<daemon> <what>_us <n>` to the [`TRACE_ENV`] file, if set; a
/// failure to write is ignored (the trace is diagnostic).
pub fn trace(daemon: &str, what: &str, took: std::time::Duration) {
    use std::io::Write;
    let Some(path) = std::env::var_os(TRACE_ENV) else {
        return;
    };
    let line = format!("{daemon} {what}_us {}\n", took.as_micros());
    // One `write` of a short line to an `O_APPEND` file: lines from several
    // processes never interleave.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// What the sealing incumbent reports: one shard at revision 0, and a fixed
/// fingerprint (the daemons keep no state).
pub const SEALED_REVISIONS: [u64; 1] = [0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_round_trips() {
        let args = Args {
            control_socket: "/tmp/x/ctl.sock".into(),
            data_dir: "/tmp/x/data".into(),
        };
        assert_eq!(Args::parse(args.to_args()).unwrap(), args);
        assert!(Args::parse(vec![OsString::from("--data-dir")]).is_err());
        assert!(Args::parse(vec![OsString::from("--bogus")]).is_err());
    }
}
