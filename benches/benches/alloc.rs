//! Heap allocations of the core, counted by a global allocator: over a whole
//! handoff of the three core machines driven against each other in memory
//! (with the default array buffers), and per frame encoded and decoded.
//! Ours must be zero; the process exits non-zero otherwise. The reference's
//! counts per frame are printed beside ours for scale.
//!
//! Run with `cargo bench --bench alloc`.

use std::hint::black_box;
use std::io::Cursor;
use std::process::ExitCode;
use std::time::Instant as StdInstant;

use handoff_benches::counting::{CountingAlloc, thread_allocations};
use handoff_benches::frames::{self, ADDRESS, FINGERPRINT, NAMES, REVISIONS, VERSION};
use handoff_core::{
    DrainReport, FrameDecoder, IncumbentConfig, IncumbentEnd, IncumbentOutput, IncumbentSession,
    Instant, ReadyReportRef, Revisions, SealReportRef, Side, Strings, SuccessorConfig,
    SuccessorEnd, SuccessorOutput, SuccessorSession, SupervisorConfig, SupervisorHandoff,
    SupervisorOutput, encode_frame,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

const HANDOFFS: u64 = 1_000;
const FRAME_ROUNDS: u64 = 1_000;
const O_PID: u32 = 1_000;
const N_PID: u32 = 2_000;
const ADDRESSES: [&str; 1] = [ADDRESS];

/// One direction of a control connection, in a fixed array: the driver
/// must not allocate either, or it would be counted.
struct Pipe {
    buf: [u8; 8192],
    start: usize,
    end: usize,
}

impl Pipe {
    fn new() -> Pipe {
        Pipe {
            buf: [0; 8192],
            start: 0,
            end: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), &'static str> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let end = self.end + bytes.len();
        let room = self.buf.get_mut(self.end..end).ok_or("a pipe overflowed")?;
        room.copy_from_slice(bytes);
        self.end = end;
        Ok(())
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
}

/// How the three machines ended.
struct Ends {
    committed: bool,
    incumbent: Option<IncumbentEnd>,
    successor: Option<SuccessorEnd>,
}

/// One whole handoff, supervisor, incumbent and successor exchanging their
/// frames through in-memory pipes; the daemon's hooks succeed at once and
/// the virtual clock moves a microsecond per round.
fn full_handoff() -> Result<(), &'static str> {
    let mut now = Instant::from_millis(1_000);
    let mut sup: SupervisorHandoff = SupervisorHandoff::new(
        now,
        SupervisorConfig::default(),
        [0x5a; 16],
        1_767_225_600_000,
    );
    let mut inc: Option<IncumbentSession> = None;
    let mut suc: Option<SuccessorSession> = None;
    let (mut s_to_o, mut o_to_s, mut s_to_n, mut n_to_s) =
        (Pipe::new(), Pipe::new(), Pipe::new(), Pipe::new());
    let mut ends = Ends {
        committed: false,
        incumbent: None,
        successor: None,
    };
    let mut sup_done = false;
    for _ in 0..1_000 {
        let mut moved = false;
        while let Some(out) = sup.poll_output() {
            moved = true;
            match out {
                SupervisorOutput::ConnectIncumbent => {
                    inc = Some(IncumbentSession::new(
                        now,
                        IncumbentConfig::default(),
                        O_PID,
                        b"old-build",
                    ));
                    sup.handle_connected(now);
                }
                // No peer here offers PASS_CONNECTIONS, so no channel end
                // is ever asked for; the frame is all the pipe carries.
                SupervisorOutput::Transmit { to, frame }
                | SupervisorOutput::TransmitWithChannelEnd { to, frame } => match to {
                    Side::Incumbent => s_to_o.push(frame)?,
                    Side::Successor => s_to_n.push(frame)?,
                },
                SupervisorOutput::SpawnSuccessor => {
                    suc = Some(SuccessorSession::new(
                        now,
                        SuccessorConfig::default(),
                        N_PID,
                        b"new-build",
                    ));
                    sup.handle_spawned(now, N_PID);
                }
                SupervisorOutput::Signal(_) => return Err("the supervisor signalled"),
                SupervisorOutput::Disconnect(_)
                | SupervisorOutput::WriteJournal(_)
                | SupervisorOutput::ClearJournal => {}
                SupervisorOutput::Finished(outcome) => {
                    ends.committed = outcome.committed();
                    sup_done = true;
                }
            }
        }
        if let Some(inc) = inc.as_mut() {
            while let Some(out) = inc.poll_output() {
                moved = true;
                match out {
                    IncumbentOutput::Transmit(frame) => o_to_s.push(frame)?,
                    IncumbentOutput::Drain { .. } => inc.handle_drained(
                        now,
                        DrainReport {
                            open_conns_remaining: 0,
                            accept_closed: true,
                        },
                    ),
                    IncumbentOutput::Seal => inc.handle_sealed(
                        now,
                        SealReportRef {
                            last_revision_per_shard: Revisions::from_slice(&REVISIONS),
                            data_dir_fingerprint: FINGERPRINT,
                        },
                    ),
                    IncumbentOutput::AcquireLock => inc.handle_lock_acquired(now),
                    IncumbentOutput::Resume => inc.handle_resumed(now),
                    IncumbentOutput::ReleaseLock
                    | IncumbentOutput::Close
                    | IncumbentOutput::SendListeners { .. }
                    | IncumbentOutput::PassChannel { .. } => {}
                    IncumbentOutput::Finished(end) => ends.incumbent = Some(end),
                }
            }
        }
        if let Some(suc) = suc.as_mut() {
            while let Some(out) = suc.poll_output() {
                moved = true;
                match out {
                    SuccessorOutput::Transmit(frame) => n_to_s.push(frame)?,
                    SuccessorOutput::AcquireLock => suc.handle_lock_acquired(now),
                    SuccessorOutput::Start => suc.handle_ready(
                        now,
                        ReadyReportRef {
                            listening_on: Strings::from_slice(&ADDRESSES),
                            healthz_ok: true,
                            advertised_revision_per_shard: Revisions::from_slice(&REVISIONS),
                        },
                    ),
                    SuccessorOutput::PassChannel { .. } => {}
                    SuccessorOutput::Finished(end) => ends.successor = Some(end),
                }
            }
        }
        if sup_done && ends.incumbent.is_some() && ends.successor.is_some() {
            return check(&ends);
        }
        // One frame per call and per pipe, then the outputs again.
        if let Some(inc) = inc.as_mut()
            && !s_to_o.pending().is_empty()
        {
            let n = inc.handle_input(now, s_to_o.pending());
            s_to_o.consume(n);
            moved = true;
        }
        if let Some(suc) = suc.as_mut()
            && !s_to_n.pending().is_empty()
        {
            let n = suc.handle_input(now, s_to_n.pending());
            s_to_n.consume(n);
            moved = true;
        }
        if !o_to_s.pending().is_empty() {
            let n = sup.handle_input(now, Side::Incumbent, o_to_s.pending());
            o_to_s.consume(n);
            moved = true;
        }
        if !n_to_s.pending().is_empty() {
            let n = sup.handle_input(now, Side::Successor, n_to_s.pending());
            n_to_s.consume(n);
            moved = true;
        }
        if !moved {
            return Err("the machines stalled before the end of the handoff");
        }
        now = now.saturating_add(std::time::Duration::from_micros(1));
    }
    Err("the handoff did not finish within 1000 rounds")
}

fn check(ends: &Ends) -> Result<(), &'static str> {
    if !ends.committed {
        return Err("the supervisor did not commit");
    }
    if ends.incumbent != Some(IncumbentEnd::Committed) {
        return Err("the incumbent did not end committed");
    }
    if !matches!(ends.successor, Some(SuccessorEnd::Authoritative { .. })) {
        return Err("the successor did not become authoritative");
    }
    Ok(())
}

/// Allocations of `rounds` calls of `f`, per call.
fn allocations_per_call(rounds: u64, mut f: impl FnMut()) -> f64 {
    // Once first: lazily initialised state (in the reference, say) is not
    // a per-call cost.
    f();
    let before = thread_allocations();
    for _ in 0..rounds {
        f();
    }
    (thread_allocations() - before) as f64 / rounds as f64
}

fn main() -> ExitCode {
    println!("alloc: heap allocations counted by a global allocator (this thread only)");
    let mut failures = Vec::new();

    // A whole handoff of the core machines.
    if let Err(e) = full_handoff() {
        eprintln!("alloc: FAILED: the in-memory handoff went wrong: {e}");
        return ExitCode::FAILURE;
    }
    let before = thread_allocations();
    let started = StdInstant::now();
    for _ in 0..HANDOFFS {
        black_box(full_handoff()).ok();
    }
    let took = started.elapsed();
    let per_handoff = (thread_allocations() - before) as f64 / HANDOFFS as f64;
    println!(
        "  core machines, one whole handoff in memory (SupervisorHandoff + IncumbentSession + \
         SuccessorSession, DefaultBuffer = [u8; 4096], {HANDOFFS} handoffs):"
    );
    println!(
        "    ours: {per_handoff} allocations per handoff ({:.1} µs of CPU per handoff, all three machines)",
        took.as_secs_f64() * 1e6 / HANDOFFS as f64
    );
    if per_handoff != 0.0 {
        failures.push(format!(
            "the core machines allocate {per_handoff} times per handoff"
        ));
    }

    // Per frame.
    let ours = frames::ours();
    let theirs = frames::reference();
    let wire = frames::encoded();
    println!(
        "  per frame ({FRAME_ROUNDS} rounds each):\n    {:<16} {:>12} {:>12}   {:>16} {:>16}",
        "frame", "ours encode", "ours decode", "reference encode", "reference decode"
    );
    let mut buf = [0u8; 4096];
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut out = Vec::with_capacity(4096);
    for (i, name) in NAMES.iter().enumerate() {
        let encode = allocations_per_call(FRAME_ROUNDS, || {
            let n = encode_frame(VERSION, black_box(&ours[i]), &mut buf).unwrap_or(0);
            black_box(&buf[..n]);
        });
        let decode = allocations_per_call(FRAME_ROUNDS, || {
            let (used, frame) = decoder.decode(black_box(&wire[i]));
            black_box((used, frame.ok().flatten()));
        });
        let ref_encode = allocations_per_call(FRAME_ROUNDS, || {
            out.clear();
            handoff::frame::write_message(&mut out, VERSION, black_box(&theirs[i])).ok();
            black_box(&out);
        });
        let ref_decode = allocations_per_call(FRAME_ROUNDS, || {
            let mut cursor = Cursor::new(black_box(&wire[i][..]));
            black_box(handoff::frame::read_message(&mut cursor).ok());
        });
        println!("    {name:<16} {encode:>12} {decode:>12}   {ref_encode:>16} {ref_decode:>16}");
        if encode != 0.0 || decode != 0.0 {
            failures.push(format!(
                "{name}: {encode} allocations per encode, {decode} per decode"
            ));
        }
    }

    if failures.is_empty() {
        println!("alloc: PASS: the core allocates nothing (0 per handoff, 0 per frame)");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("alloc: FAILED: {f}");
        }
        eprintln!("alloc: FAILED: the core must not allocate");
        ExitCode::FAILURE
    }
}
