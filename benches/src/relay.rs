//! The accept gap's floor: what no implementation of the protocol can go
//! below between the same processes.
//!
//! From the old process's last accept to the new one's first, a handoff
//! carries five messages one after another (`PrepareHandoff` to the
//! incumbent, `Drained` back, `SealRequest`, `SealComplete` back, `Begin`
//! to the successor), and the data-dir lock passes from one process to the
//! other. The floor is exactly that and nothing else: the benchmark
//! process plays the supervisor, and two processes of the daemon binary
//! started in relay mode ([`RELAY_ENV`]) play the incumbent and the
//! successor. Each answers the frame it reads with the next one at once,
//! blocked in `read` in between as a daemon is blocked in `poll`. The
//! incumbent releases the lock before it answers `SealRequest`, the
//! successor takes it as soon as `Begin` is in, reads the clock
//! ([`monotonic_ns`], the same clock in every process) and reports the
//! time. The frames are a real handoff's ([`crate::frames`]); the lock is
//! `handoff-std`'s [`DataDirLock`], as the daemons take it.
//!
//! Each relay talks over its standard input, a socket the benchmark made.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::path::Path;

use handoff_std::DataDirLock;

use crate::frames;

/// Set to `incumbent` or `successor` in the daemon binary's environment:
/// it relays instead of serving (see the module's docs); the data
/// directory is the variable [`RELAY_DIR_ENV`].
pub const RELAY_ENV: &str = "HANDOFF_BENCH_RELAY";

/// The data directory whose lock the relays pass between them.
pub const RELAY_DIR_ENV: &str = "HANDOFF_BENCH_RELAY_DIR";

/// Indices in [`frames::encoded`] of the five frames on the accept gap's
/// path, in the order they travel.
const PREPARE: usize = 2;
const DRAINED: usize = 3;
const SEAL_REQUEST: usize = 4;
const SEAL_COMPLETE: usize = 5;
const BEGIN: usize = 6;

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the
/// machine, so the successor's reading can be set against the
/// supervisor's.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Runs the relay this process was started as, if it was; `None` if
/// [`RELAY_ENV`] is not set.
pub fn run_if_relay() -> Option<io::Result<()>> {
    let role = std::env::var(RELAY_ENV).ok()?;
    let Some(dir) = std::env::var_os(RELAY_DIR_ENV) else {
        return Some(Err(io::Error::other(format!("{RELAY_DIR_ENV} is not set"))));
    };
    let dir = Path::new(&dir);
    let (mut input, mut output) = (io::stdin().lock(), io::stdout().lock());
    Some(match role.as_str() {
        "incumbent" => incumbent(dir, &mut input, &mut output),
        "successor" => successor(dir, &mut input, &mut output),
        other => Err(io::Error::other(format!("unknown relay role {other:?}"))),
    })
}

/// Takes the lock, retrying while the successor of the last round still
/// holds it for a moment.
fn lock(dir: &Path) -> io::Result<DataDirLock> {
    let mut tries = 0u32;
    loop {
        match DataDirLock::acquire(dir) {
            Ok(lock) => return Ok(lock),
            Err(_) if tries < 100_000 => {
                tries += 1;
                std::thread::yield_now();
            }
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}

/// Reads exactly the frame `frame` is, and checks it is that frame.
fn expect(input: &mut impl Read, frame: &[u8]) -> io::Result<bool> {
    let mut buf = vec![0u8; frame.len()];
    match input.read_exact(&mut buf) {
        Ok(()) if buf == frame => Ok(true),
        Ok(()) => Err(io::Error::other("the relay read an unexpected frame")),
        // The benchmark closed the socket: no more rounds.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The incumbent: holds the lock, answers `PrepareHandoff` with `Drained`
/// and `SealRequest` with `SealComplete` (the lock released first), then
/// waits for one byte telling it to take the lock back for the next round.
fn incumbent(dir: &Path, input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    let frames = frames::encoded();
    let mut held = Some(lock(dir)?);
    output.write_all(&[1])?;
    output.flush()?;
    loop {
        if !expect(input, &frames[PREPARE])? {
            return Ok(());
        }
        output.write_all(&frames[DRAINED])?;
        output.flush()?;
        if !expect(input, &frames[SEAL_REQUEST])? {
            return Ok(());
        }
        drop(held.take());
        output.write_all(&frames[SEAL_COMPLETE])?;
        output.flush()?;
        let mut byte = [0u8; 1];
        if input.read(&mut byte)? == 0 {
            return Ok(());
        }
        held = Some(lock(dir)?);
        output.write_all(&[1])?;
        output.flush()?;
    }
}

/// The successor: on `Begin`, takes the lock, reads the clock, lets the
/// lock go for the next round and reports the reading.
fn successor(dir: &Path, input: &mut impl Read, output: &mut impl Write) -> io::Result<()> {
    let frames = frames::encoded();
    output.write_all(&[1])?;
    output.flush()?;
    loop {
        if !expect(input, &frames[BEGIN])? {
            return Ok(());
        }
        let held = lock(dir)?;
        let at = monotonic_ns();
        drop(held);
        output.write_all(&at.to_le_bytes())?;
        output.flush()?;
    }
}

/// The supervisor's side of one round, over the two relays' sockets:
/// returns the time from the first byte of `PrepareHandoff` until the
/// successor held the lock, in seconds. The incumbent holds the lock again
/// when this returns.
pub fn round(
    incumbent: &mut (impl Read + Write),
    successor: &mut (impl Read + Write),
) -> io::Result<f64> {
    let frames = frames::encoded();
    let start = monotonic_ns();
    incumbent.write_all(&frames[PREPARE])?;
    expect_some(incumbent, &frames[DRAINED])?;
    incumbent.write_all(&frames[SEAL_REQUEST])?;
    expect_some(incumbent, &frames[SEAL_COMPLETE])?;
    successor.write_all(&frames[BEGIN])?;
    let mut at = [0u8; 8];
    successor.read_exact(&mut at)?;
    let took = u64::from_le_bytes(at).saturating_sub(start);
    // Untimed: the lock back to the incumbent for the next round.
    incumbent.write_all(&[1])?;
    incumbent.read_exact(&mut [0u8; 1])?;
    Ok(took as f64 / 1e9)
}

fn expect_some(input: &mut impl Read, frame: &[u8]) -> io::Result<()> {
    if expect(input, frame)? {
        Ok(())
    } else {
        Err(io::Error::other("a relay closed its socket"))
    }
}
