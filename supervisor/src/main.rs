//! `handoff-supervisor`: see [`handoff_supervisor::cli`] for the commands
//! and their exit statuses.

// Every unsafe block of the project's libraries and binaries is in
// handoff-os (the benchmarks' allocator and echo server aside).
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    handoff_supervisor::cli::main()
}
