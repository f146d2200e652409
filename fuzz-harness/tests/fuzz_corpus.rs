//! The fuzz corpora, replayed on stable: every file under
//! `fuzz/corpus/<target>/` goes through the same body the cargo-fuzz target
//! runs (`handoff_fuzz_harness::<target>`), so `cargo test --workspace`
//! re-checks every input the fuzzer ever kept, crash reproducers included.
//!
//! The committed seeds are made by `fuzz_seeds`. After a change to the
//! machines or the scripts, write them again with
//! `FUZZ_WRITE_SEEDS=1 cargo test -p handoff-fuzz-harness --test fuzz_corpus`.

mod fuzz_seeds;

use std::path::PathBuf;

use handoff_fuzz_harness::{
    Chunk, DecoderChoice, FrameDecoderInput, FuzzClock, FuzzId, FuzzMessage, FuzzPeer, FuzzPid,
    IncumbentInput, SuccessorInput, SupervisorInput, TARGETS, parse_script, unparse_script,
};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_file_replays_through_its_target() {
    for (target, body) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        // A corpus that went missing must not pass as an empty one.
        assert!(
            files.len() >= 20,
            "{target}: only {} corpus files in {}",
            files.len(),
            dir.display()
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{target} fails on {}", file.display());
            }
        }
    }
}

#[test]
fn the_committed_seeds_are_the_generated_ones() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in fuzz_seeds::seeds() {
        let path = corpus_dir(target).join(&name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(format!("{target}/{name}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} seed files missing or out of date, e.g. {:?}; regenerate them with \
         FUZZ_WRITE_SEEDS=1 cargo test -p handoff-fuzz-harness --test fuzz_corpus",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
}

#[test]
fn recorded_scripts_read_back_unchanged() {
    let (supervisor, incumbent, successor) = fuzz_seeds::scripts();
    assert!(!supervisor.is_empty() && !incumbent.is_empty() && !successor.is_empty());
    assert_eq!(
        parse_script::<SupervisorInput>(&unparse_script(&supervisor)),
        supervisor
    );
    assert_eq!(
        parse_script::<IncumbentInput>(&unparse_script(&incumbent)),
        incumbent
    );
    assert_eq!(
        parse_script::<SuccessorInput>(&unparse_script(&successor)),
        successor
    );
}

/// One of each message the fuzzer writes, with every list and text
/// non-empty.
fn every_message() -> Vec<FuzzMessage> {
    let id = FuzzId::Other(3);
    let text = Chunk(b"t\xffxt".to_vec());
    vec![
        FuzzMessage::Hello {
            successor: true,
            pid: FuzzPid::Other(9),
            build_id: text.clone(),
            proto_min: 1,
            proto_max: 2,
            capabilities: 5,
        },
        FuzzMessage::HelloAck {
            proto_version_chosen: 1,
            handoff_id: FuzzId::Current,
        },
        FuzzMessage::PrepareHandoff {
            handoff_id: id,
            successor_pid: 1,
            deadline_ms: 2,
            drain_grace_ms: 3,
        },
        FuzzMessage::Drained {
            open_conns_remaining: 4,
            accept_closed: true,
        },
        FuzzMessage::SealRequest { handoff_id: id },
        FuzzMessage::SealProgress {
            shards_sealed: 1,
            shards_total: 2,
            last_revision: 3,
        },
        FuzzMessage::SealComplete {
            handoff_id: id,
            last_revision_per_shard: vec![1, u64::MAX],
            data_dir_fingerprint: 7,
        },
        FuzzMessage::SealFailed {
            handoff_id: id,
            error: text.clone(),
            partial_state: Chunk::default(),
        },
        FuzzMessage::Begin { handoff_id: id },
        FuzzMessage::Ready {
            handoff_id: id,
            listening_on: vec![text.clone(), Chunk::default()],
            healthz_ok: true,
            advertised_revision_per_shard: vec![0],
        },
        FuzzMessage::Commit { handoff_id: id },
        FuzzMessage::Abort {
            handoff_id: id,
            reason: text,
        },
        FuzzMessage::ResumeAfterAbort { handoff_id: id },
        FuzzMessage::Heartbeat { ts_ms: 1 << 40 },
        FuzzMessage::ListenersRequest { handoff_id: id },
        FuzzMessage::PassChannel {
            handoff_id: FuzzId::Current,
        },
        FuzzMessage::PassedConnection {
            handoff_id: id,
            state: Chunk(b"GET k\n".to_vec()),
        },
        FuzzMessage::PassDone {
            handoff_id: id,
            count: 2,
        },
        FuzzMessage::ConnectionsTaken { handoff_id: id },
        FuzzMessage::ConnectionsPassed {
            handoff_id: FuzzId::Current,
            count: u32::MAX,
        },
    ]
}

fn every_clock() -> Vec<FuzzClock> {
    vec![
        FuzzClock::Millis(7),
        FuzzClock::Seconds(8),
        FuzzClock::Nanos(u64::MAX),
        FuzzClock::Timeout,
        FuzzClock::TimeoutAtDeadline,
    ]
}

#[test]
fn every_input_variant_reads_back_unchanged() {
    let text = Chunk(b"x".to_vec());
    let mut incumbent = vec![
        IncumbentInput::Bytes(text.clone()),
        IncumbentInput::Closed,
        IncumbentInput::Drained {
            open_conns_remaining: 1,
            accept_closed: true,
        },
        IncumbentInput::DrainFailed,
        IncumbentInput::Sealed {
            revisions: vec![1, 2],
            fingerprint: 3,
        },
        IncumbentInput::SealFailed {
            error: text.clone(),
            partial_state: text.clone(),
        },
        IncumbentInput::SealProgress {
            shards_sealed: 1,
            shards_total: 2,
            last_revision: 3,
        },
        IncumbentInput::LockAcquired,
        IncumbentInput::LockBusy,
        IncumbentInput::Resumed,
        IncumbentInput::ResumeFailed,
        IncumbentInput::ConnectionsPassed { count: 5 },
    ];
    let mut successor = vec![
        SuccessorInput::Bytes(text.clone()),
        SuccessorInput::Closed,
        SuccessorInput::LockAcquired,
        SuccessorInput::LockBusy,
        SuccessorInput::Ready {
            listening_on: vec![text.clone()],
            healthz_ok: true,
            revisions: vec![4],
        },
        SuccessorInput::StartFailed,
    ];
    let mut supervisor = vec![
        SupervisorInput::Bytes(FuzzPeer::Successor, text),
        SupervisorInput::Closed(FuzzPeer::Incumbent),
        SupervisorInput::Connected,
        SupervisorInput::ConnectFailed,
        SupervisorInput::Spawned(77),
        SupervisorInput::SpawnFailed,
        SupervisorInput::SuccessorExited,
        SupervisorInput::JournalFailed,
    ];
    for m in every_message() {
        incumbent.push(IncumbentInput::Frame(m.clone()));
        incumbent.push(IncumbentInput::FrameWithVersion(2, m.clone()));
        successor.push(SuccessorInput::Frame(m.clone()));
        successor.push(SuccessorInput::FrameWithVersion(0, m.clone()));
        supervisor.push(SupervisorInput::Frame(FuzzPeer::Incumbent, m.clone()));
        supervisor.push(SupervisorInput::FrameWithVersion(FuzzPeer::Successor, 9, m));
    }
    for c in every_clock() {
        incumbent.push(IncumbentInput::Clock(c));
        successor.push(SuccessorInput::Clock(c));
        supervisor.push(SupervisorInput::Clock(c));
    }
    assert_eq!(
        parse_script::<IncumbentInput>(&unparse_script(&incumbent)),
        incumbent
    );
    assert_eq!(
        parse_script::<SuccessorInput>(&unparse_script(&successor)),
        successor
    );
    assert_eq!(
        parse_script::<SupervisorInput>(&unparse_script(&supervisor)),
        supervisor
    );
    // And they run: every variant reaches its driver.
    handoff_fuzz_harness::incumbent(&unparse_script(&incumbent));
    handoff_fuzz_harness::successor(&unparse_script(&successor));
    handoff_fuzz_harness::supervisor(&unparse_script(&supervisor));
    for decoder in [
        DecoderChoice::Default,
        DecoderChoice::Small,
        DecoderChoice::Growable,
        DecoderChoice::GrowableWithLimit(5),
        DecoderChoice::DefaultWithLimit(u32::MAX),
    ] {
        let header = FrameDecoderInput {
            decoder,
            pieces: vec![3, 0x8001],
        };
        let data = header.with_stream(b"\x04\x00\x00\x00\x01\x00\x0d\x01");
        let mut u = arbitrary::Unstructured::new(&data);
        assert_eq!(
            <FrameDecoderInput as arbitrary::Arbitrary>::arbitrary(&mut u).unwrap(),
            header
        );
        assert_eq!(u.take_rest(), b"\x04\x00\x00\x00\x01\x00\x0d\x01");
        handoff_fuzz_harness::frame_decoder(&data);
    }
}
