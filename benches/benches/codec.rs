//! Encoding and decoding the ten frames of one handoff, ours against the
//! reference, both directions, interleaved frame by frame in one process.
//!
//! - ours: `handoff_core::encode_frame` into a reused array, and a reused
//!   `FrameDecoder` (which copies the frame into its own buffer and borrows
//!   strings and lists from it);
//! - reference: `handoff::frame::write_message` into a reused `Vec`, and
//!   `handoff::frame::read_message` from a `Cursor` (which builds an owned
//!   `Message`, dropped each iteration).
//!
//! Criterion runs each pair (`encode/<frame>/ours`, then
//! `encode/<frame>/reference`, then the same for decode) and prints its own
//! estimates; the table at the end is computed from the same samples
//! (recorded through `iter_custom`): the median over Criterion's
//! measurement samples of nanoseconds per frame, and ours / reference.
//!
//! Run with `cargo bench --bench codec`; Criterion's options and filters
//! (`cargo bench --bench codec -- Ready`) work as usual.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Cursor;
use std::time::{Duration, Instant};

use criterion::Criterion;
use handoff_benches::frames::{self, NAMES, VERSION};
use handoff_benches::stats::{Ratio, quantile, verdict};
use handoff_core::{FrameDecoder, encode_frame};

/// Criterion's settings: short, since each routine takes well under a
/// microsecond and 40 of them must fit in the run's time budget.
const WARM_UP: Duration = Duration::from_millis(250);
const MEASUREMENT: Duration = Duration::from_millis(500);
const SAMPLES: usize = 30;

/// The target: ours at most this fraction of the reference.
const TARGET: f64 = 0.25;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Encode,
    Decode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Ours,
    Reference,
}

/// Nanoseconds per frame of every sample Criterion took, per routine;
/// warm-up samples come first, the measurement's `SAMPLES` last.
type Samples = RefCell<BTreeMap<(Dir, usize, Side), Vec<f64>>>;

fn record(samples: &Samples, key: (Dir, usize, Side), iters: u64, took: Duration) -> Duration {
    samples
        .borrow_mut()
        .entry(key)
        .or_default()
        .push(took.as_nanos() as f64 / iters.max(1) as f64);
    took
}

fn main() {
    let ours = frames::ours();
    let theirs = frames::reference();
    // Also checks that both encode the very same bytes.
    let wire = frames::encoded();
    let samples: Samples = RefCell::default();

    let mut c = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLES)
        .nresamples(20_000)
        .configure_from_args();

    let mut buf = [0u8; 4096];
    let mut decoder: FrameDecoder = FrameDecoder::new();
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    for (i, name) in NAMES.iter().enumerate() {
        let mut g = c.benchmark_group(format!("encode/{name}"));
        g.bench_function("ours", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let n = encode_frame(VERSION, black_box(&ours[i]), black_box(&mut buf[..]))
                        .unwrap_or(0);
                    black_box(&buf[..n]);
                }
                record(
                    &samples,
                    (Dir::Encode, i, Side::Ours),
                    iters,
                    start.elapsed(),
                )
            })
        });
        g.bench_function("reference", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    out.clear();
                    handoff::frame::write_message(&mut out, VERSION, black_box(&theirs[i])).ok();
                    black_box(&out);
                }
                record(
                    &samples,
                    (Dir::Encode, i, Side::Reference),
                    iters,
                    start.elapsed(),
                )
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("decode/{name}"));
        g.bench_function("ours", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    // By reference: moving the frame into `black_box` would
                    // time a copy of it that no caller makes.
                    let decoded = decoder.decode(black_box(&wire[i]));
                    black_box(&decoded);
                }
                record(
                    &samples,
                    (Dir::Decode, i, Side::Ours),
                    iters,
                    start.elapsed(),
                )
            })
        });
        g.bench_function("reference", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut cursor = Cursor::new(black_box(&wire[i][..]));
                    let decoded = handoff::frame::read_message(&mut cursor);
                    black_box(&decoded);
                }
                record(
                    &samples,
                    (Dir::Decode, i, Side::Reference),
                    iters,
                    start.elapsed(),
                )
            })
        });
        g.finish();
    }
    c.final_summary();
    report(&samples.into_inner(), &wire);
}

/// The median ns per frame over the measurement samples of one routine.
fn median(
    samples: &BTreeMap<(Dir, usize, Side), Vec<f64>>,
    key: (Dir, usize, Side),
) -> Option<f64> {
    let all = samples.get(&key)?;
    let measured = &all[all.len().saturating_sub(SAMPLES)..];
    quantile(measured, 0.5)
}

fn report(samples: &BTreeMap<(Dir, usize, Side), Vec<f64>>, wire: &[Vec<u8>]) {
    println!();
    println!(
        "codec: ns per frame (median of Criterion's {SAMPLES} measurement samples), ours / reference"
    );
    println!(
        "  {:<16} {:>6}   {:>9} {:>9} {:>8}   {:>9} {:>9} {:>8}",
        "frame", "bytes", "enc ours", "enc ref", "ratio", "dec ours", "dec ref", "ratio"
    );
    // Totals over the frames measured in both directions by both sides: the
    // codec's cost for one whole handoff.
    let mut totals = [[0.0f64; 2]; 2];
    let mut complete = 0;
    let mut worst: Option<(f64, String)> = None;
    for (i, name) in NAMES.iter().enumerate() {
        let get = |d, s| median(samples, (d, i, s));
        let cells = [
            get(Dir::Encode, Side::Ours),
            get(Dir::Encode, Side::Reference),
            get(Dir::Decode, Side::Ours),
            get(Dir::Decode, Side::Reference),
        ];
        let fmt_ns = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let fmt_ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Ratio::of(a, b).to_string(),
            _ => "-".to_owned(),
        };
        println!(
            "  {:<16} {:>6}   {:>9} {:>9} {:>8}   {:>9} {:>9} {:>8}",
            name,
            wire[i].len(),
            fmt_ns(cells[0]),
            fmt_ns(cells[1]),
            fmt_ratio(cells[0], cells[1]),
            fmt_ns(cells[2]),
            fmt_ns(cells[3]),
            fmt_ratio(cells[2], cells[3]),
        );
        if let [Some(eo), Some(er), Some(do_), Some(dr)] = cells {
            totals[0][0] += eo;
            totals[0][1] += er;
            totals[1][0] += do_;
            totals[1][1] += dr;
            complete += 1;
            for (ratio, dir) in [(eo / er, "encode"), (do_ / dr, "decode")] {
                if worst.as_ref().is_none_or(|(w, _)| ratio > *w) {
                    worst = Some((ratio, format!("{name} {dir}")));
                }
            }
        }
    }
    if complete == 0 {
        println!("  (no frame was measured on both sides: a filter excluded them)");
        return;
    }
    let n = complete as f64;
    let enc = Ratio::of(totals[0][0], totals[0][1]);
    let dec = Ratio::of(totals[1][0], totals[1][1]);
    let both = Ratio::of(totals[0][0] + totals[1][0], totals[0][1] + totals[1][1]);
    println!(
        "  {:<16} {:>6}   {:>9.1} {:>9.1} {:>8}   {:>9.1} {:>9.1} {:>8}",
        "mean per frame",
        "",
        totals[0][0] / n,
        totals[0][1] / n,
        enc.to_string(),
        totals[1][0] / n,
        totals[1][1] / n,
        dec.to_string(),
    );
    println!(
        "  overall (encode + decode of the {complete} frames): ours {:.0} ns, reference {:.0} ns, ratio {both}",
        totals[0][0] + totals[1][0],
        totals[0][1] + totals[1][1],
    );
    if let Some((w, which)) = &worst {
        println!("  worst single ratio: {} ({which})", Ratio(*w));
    }
    // The target reads per frame; it is reported both over all the
    // frames and for the worst single one, which is the stricter reading.
    println!(
        "  target: codec ≤ {TARGET} × the reference's time per frame: overall {} — {}; every frame and direction: worst {} — {}",
        both,
        verdict(both.0 <= TARGET),
        worst.as_ref().map_or(Ratio(f64::NAN), |(w, _)| Ratio(*w)),
        verdict(worst.as_ref().is_none_or(|(w, _)| *w <= TARGET)),
    );
}
