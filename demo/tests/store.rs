//! The store's handoff path and its compaction, on real files with real
//! fsyncs: the seal writes no snapshot at any size; a successor's preload
//! sees what was written after it, and is not trusted when the files it
//! read were replaced or records it read were taken back; compaction while
//! serving loses nothing, and a crash at any of its steps (a copy of the
//! data dir taken there) reopens to the acknowledged state; a seal stops a
//! running compaction and leaves no temp file; a full disk during a
//! compaction changes nothing and is reported (on a tmpfs of its own, which
//! needs root; without it the test says so and passes).
//!
//! Every wait is on a condition with a bound: a compaction is held at a
//! chosen event by its callback until the test lets it go.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use common::{BOUND, TempDir};
use handoff_demo::store::{
    CompactionEvent, FROZEN_WAL_FILE, SEALED_FILE, SNAPSHOT_FILE, SNAPSHOT_TEMP_FILE, Store,
    StoreConfig, StoreError, WAL_FILE,
};
use handoff_demo::wal;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An acknowledged write: its revision, key and value.
type Acked = (u64, Vec<u8>, Vec<u8>);

/// What says a file was rewritten or replaced: its inode, its mtime (ns)
/// and its size.
type Ident = (u64, i64, i64, u64);

fn ident(path: &Path) -> Option<Ident> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// Every file in `dir`, by name.
fn listing(dir: &Path) -> BTreeMap<String, Ident> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = ident(&e.path()).unwrap();
            (name, id)
        })
        .collect()
}

/// Copies every file of `from` into a new `to`: the data dir as a
/// `SIGKILL` at this moment would leave it (every byte here was written,
/// and what was acknowledged was also fsynced).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `n` writes of `key<tag>-<i % keys>` submitted together (so they share
/// fsyncs), each waited for; what they set.
fn fill(s: &Store, tag: &str, n: usize, keys: usize, value_len: usize) -> Map {
    let mut set = Map::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8192) {
        let pending: Vec<_> = chunk
            .iter()
            .map(|i| {
                let key = format!("key{tag}-{}", i % keys).into_bytes();
                let mut value = format!("{tag}{i}-").into_bytes();
                value.resize(value_len.max(value.len()), b'v');
                let p = s.submit(&key, &value).unwrap();
                (key, value, p)
            })
            .collect();
        for (key, value, p) in pending {
            p.wait().unwrap();
            set.insert(key, value);
        }
    }
    set
}

/// A compaction callback that records every event and can hold the
/// compaction at the first event of a kind until released.
#[derive(Default)]
struct Recorder {
    state: Mutex<Recorded>,
    changed: Condvar,
}

#[derive(Default)]
struct Recorded {
    events: Vec<CompactionEvent>,
    /// Hold at the next event this says yes to.
    hold: Option<fn(&CompactionEvent) -> bool>,
    held: bool,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn config(self: &Arc<Self>, min_bytes: u64, chunk: usize) -> StoreConfig {
        let r = self.clone();
        StoreConfig {
            compact_min_bytes: min_bytes,
            compaction_chunk: chunk,
            on_compaction: Some(Arc::new(move |e: &CompactionEvent| r.on(e))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on(&self, event: &CompactionEvent) {
        let mut st = self.lock();
        st.events.push(event.clone());
        self.changed.notify_all();
        if st.hold.is_some_and(|f| f(event)) {
            st.held = true;
            self.changed.notify_all();
            let t0 = Instant::now();
            // Bounded: a test that failed before releasing must not hang.
            while st.held && t0.elapsed() < BOUND {
                st = self
                    .changed
                    .wait_timeout(st, BOUND)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            st.held = false;
        }
    }

    /// Holds the compaction at the next event `at` says yes to.
    fn hold_at(&self, at: fn(&CompactionEvent) -> bool) {
        self.lock().hold = Some(at);
    }

    /// Waits (bounded) until `what` holds of the record.
    fn wait_for(&self, what: impl Fn(&Recorded) -> bool) -> bool {
        let t0 = Instant::now();
        let mut st = self.lock();
        while !what(&st) {
            let left = BOUND.saturating_sub(t0.elapsed());
            if left.is_zero() {
                return false;
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn wait_held(&self) {
        assert!(
            self.wait_for(|st| st.held),
            "the compaction never came to the event it is held at: {:?}",
            self.lock().events
        );
    }

    fn release(&self) {
        let mut st = self.lock();
        st.hold = None;
        st.held = false;
        self.changed.notify_all();
    }

    fn count(&self, what: fn(&CompactionEvent) -> bool) -> usize {
        self.lock().events.iter().filter(|e| what(e)).count()
    }
}

fn progress(e: &CompactionEvent) -> bool {
    matches!(e, CompactionEvent::Progress { .. })
}

fn started(e: &CompactionEvent) -> bool {
    matches!(e, CompactionEvent::Started { .. })
}

fn finished(e: &CompactionEvent) -> bool {
    matches!(e, CompactionEvent::Finished { .. })
}

fn failed(e: &CompactionEvent) -> bool {
    matches!(e, CompactionEvent::Failed { .. })
}

/// Opens `dir` whole and checks it holds `expected` at `revision` with
/// `fingerprint`.
fn assert_opens_to(dir: &Path, expected: &Map, revision: u64, fingerprint: [u8; 32], what: &str) {
    let s = Store::open(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(s.revision(), revision, "{what}");
    assert!(s.to_map() == *expected, "{what}: another state");
    assert_eq!(s.fingerprint(), fingerprint, "{what}");
}

#[test]
fn the_seal_writes_no_snapshot_and_touches_the_same_files_at_any_size() {
    for keys in [1_000, 200_000] {
        let dir = TempDir::new("st-seal");
        let s = Store::open(&dir.0).unwrap();
        fill(&s, "a", keys, keys, 16);
        s.compact().unwrap();
        fill(&s, "b", 100, 100, 16);
        let before = listing(&dir.0);
        assert!(before.contains_key(SNAPSHOT_FILE), "{keys}: no snapshot");

        let sealed = s.seal().unwrap();
        let after = listing(&dir.0);
        // The snapshot and the log are the same files, not written: the
        // seal did nothing whose cost grows with the state.
        for name in [SNAPSHOT_FILE, WAL_FILE] {
            assert_eq!(
                before[name], after[name],
                "{keys} keys: the seal changed {name}"
            );
        }
        let new: BTreeSet<&String> = after
            .keys()
            .filter(|n| before.get(*n) != after.get(*n))
            .collect();
        assert_eq!(
            new.into_iter().collect::<Vec<_>>(),
            [SEALED_FILE],
            "{keys} keys: the seal wrote more than its seal record"
        );
        assert!(!sealed.compaction_stopped);
        let expected = s.to_map();
        drop(s);

        // Still in the log: the opener replays what the snapshot lacks.
        let s = Store::open(&dir.0).unwrap();
        assert_eq!(s.open_report().replayed, 100, "{keys} keys");
        assert_eq!(s.revision(), sealed.revision);
        assert_eq!(s.fingerprint(), sealed.fingerprint);
        assert!(s.to_map() == expected);
    }
}

#[test]
fn a_preloaded_successor_reads_only_what_was_written_after_its_preload() {
    let dir = TempDir::new("st-pre");
    let old = Store::open(&dir.0).unwrap();
    fill(&old, "s", 5_000, 5_000, 20);
    old.compact().unwrap();
    fill(&old, "l", 300, 300, 20);

    let on_disk = listing(&dir.0);
    let preloaded = Store::preload(&dir.0, StoreConfig::default()).unwrap();
    assert_eq!(
        listing(&dir.0),
        on_disk,
        "the preload wrote to the data dir"
    );
    assert_eq!(preloaded.revision(), old.revision());
    assert_eq!(preloaded.keys(), 5_300);

    // After the preload: new keys, and keys overwritten that the snapshot
    // holds and that the log holds.
    let mut after = 0;
    for (key, value) in [("keys-7", "new"), ("keyl-3", "new"), ("fresh", "1")] {
        old.set(key.as_bytes(), value.as_bytes()).unwrap();
        after += 1;
    }
    after += fill(&old, "n", 400, 400, 20).len();
    let sealed = old.seal().unwrap();

    let new = preloaded.open().unwrap();
    let report = new.open_report().clone();
    assert_eq!(report.preload_fallback, None);
    assert_eq!(report.caught_up, Some(after), "only the tail was read");
    assert_eq!(new.revision(), sealed.revision);
    assert_eq!(new.fingerprint(), sealed.fingerprint);
    assert!(new.to_map() == old.to_map());
    assert_eq!(new.get(b"keys-7").as_deref(), Some(&b"new"[..]));

    // It writes on from there, and what it wrote reopens.
    assert_eq!(new.set(b"next", b"x").unwrap(), sealed.revision + 1);
    let expected = new.to_map();
    let fingerprint = new.fingerprint();
    drop(new);
    assert_opens_to(
        &dir.0,
        &expected,
        sealed.revision + 1,
        fingerprint,
        "after the successor",
    );
}

#[test]
fn a_preload_is_read_again_whole_when_a_compaction_replaced_the_files_it_read() {
    let dir = TempDir::new("st-pre-c");
    let old = Store::open(&dir.0).unwrap();
    fill(&old, "a", 2_000, 2_000, 20);
    let preloaded = Store::preload(&dir.0, StoreConfig::default()).unwrap();
    // Frozen and compacted between the preload and the seal.
    old.compact().unwrap();
    fill(&old, "b", 100, 100, 20);
    let sealed = old.seal().unwrap();

    let new = preloaded.open().unwrap();
    let why = new.open_report().preload_fallback.clone();
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("not the file read")),
        "{why:?}"
    );
    assert_eq!(new.revision(), sealed.revision);
    assert_eq!(new.fingerprint(), sealed.fingerprint);
    assert!(new.to_map() == old.to_map());
}

#[test]
fn a_preload_is_not_trusted_over_records_a_failed_batch_took_back() {
    let dir = TempDir::new("st-pre-t");
    let wal_path = dir.0.join(WAL_FILE);
    {
        let s = Store::open(&dir.0).unwrap();
        for i in 1..=8 {
            s.set(format!("k{i}").as_bytes(), b"v").unwrap();
        }
    }
    let good = std::fs::metadata(&wal_path).unwrap().len();
    // A batch written but not yet fsynced when the preload reads it...
    let mut batch = Vec::new();
    wal::encode(9, b"k9", b"lost", &mut batch);
    wal::encode(10, b"k10", b"lost", &mut batch);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&wal_path)
        .unwrap();
    f.write_all(&batch).unwrap();
    drop(f);
    let preloaded = Store::preload(&dir.0, StoreConfig::default()).unwrap();
    assert_eq!(preloaded.revision(), 10, "the preload read the batch");

    // ...then its fsync fails and the writer cuts it off, and the next
    // batch takes the same revisions, at the same place, with the same
    // lengths: the same file, grown to the same size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal_path)
        .unwrap()
        .set_len(good)
        .unwrap();
    let old = Store::open(&dir.0).unwrap();
    assert_eq!(old.set(b"k9", b"kept").unwrap(), 9);
    assert_eq!(old.set(b"k10", b"kept").unwrap(), 10);
    let sealed = old.seal().unwrap();

    let new = preloaded.open().unwrap();
    let why = new.open_report().preload_fallback.clone();
    assert!(
        why.as_deref()
            .is_some_and(|w| w.contains("not the sealed one")),
        "{why:?}"
    );
    assert_eq!(new.get(b"k9").as_deref(), Some(&b"kept"[..]));
    assert_eq!(new.get(b"k10").as_deref(), Some(&b"kept"[..]));
    assert_eq!(new.fingerprint(), sealed.fingerprint);
}

#[test]
fn compaction_while_serving_loses_nothing_and_what_is_left_unsealed_reopens_whole() {
    let dir = TempDir::new("st-serve");
    let rec = Recorder::new();
    let s = Store::open_with(&dir.0, rec.config(32 << 10, 8 << 10)).unwrap();
    // Eight writers at once, overwriting keys as they go, far past the
    // threshold: the log is frozen and compacted under them, repeatedly.
    let acked: Vec<Vec<Acked>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    (0..800)
                        .map(|i| {
                            let key = format!("t{t}-{}", i % 400).into_bytes();
                            let value = format!("{i:0>60}").into_bytes();
                            (s.set(&key, &value).unwrap(), key, value)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        rec.wait_for(|st| st.events.iter().any(finished)),
        "no compaction while serving: {:?}",
        rec.lock().events
    );
    // By revision, the last write of each key is the state.
    let mut by_revision: BTreeMap<u64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    for (rev, key, value) in acked.into_iter().flatten() {
        assert!(by_revision.insert(rev, (key, value)).is_none());
    }
    assert_eq!(by_revision.len(), 6_400);
    let expected: Map = by_revision.into_values().collect();
    assert!(s.to_map() == expected, "a write was lost while compacting");
    assert_eq!(rec.count(failed), 0, "{:?}", rec.lock().events);

    // Dropped unsealed, with the last of it maybe still in the log: as a
    // crash would leave it.
    let (revision, fingerprint) = (s.revision(), s.fingerprint());
    let compactions = s.stats().compactions;
    drop(s);
    assert!(compactions >= 1);
    assert_opens_to(&dir.0, &expected, revision, fingerprint, "reopened");
    let s = Store::open(&dir.0).unwrap();
    assert!(
        s.open_report().snapshot_revision > 0,
        "the snapshot holds what was compacted"
    );
    // And compacted to the end, the snapshot alone is the state.
    assert_eq!(s.compact().unwrap(), revision);
    drop(s);
    let s = Store::open(&dir.0).unwrap();
    assert_eq!(s.open_report().replayed, 0);
    assert!(s.to_map() == expected);
    assert!(!dir.0.join(FROZEN_WAL_FILE).exists());
}

#[test]
fn a_crash_at_any_step_of_a_freeze_or_a_compaction_reopens_to_the_acknowledged_state() {
    // The usual umask, under which a file created without a mode is 0644:
    // every file of the store must still be 0600.
    let _umask = Umask::set(0o022);
    let dir = TempDir::new("st-crash");
    let data = dir.0.join("data");
    let rec = Recorder::new();
    let s = Store::open_with(&data, rec.config(16 << 10, 4 << 10)).unwrap();
    fill(&s, "a", 600, 600, 40);
    s.compact().unwrap();
    // Held at its first chunk: the temp snapshot is partly written.
    rec.hold_at(progress);
    fill(&s, "b", 600, 300, 40);
    rec.wait_held();
    let expected = s.to_map();
    let (revision, fingerprint) = (s.revision(), s.fingerprint());

    let mid = dir.0.join("mid-compaction");
    copy_dir(&data, &mid);
    for name in [SNAPSHOT_TEMP_FILE, FROZEN_WAL_FILE, SNAPSHOT_FILE, WAL_FILE] {
        assert!(mid.join(name).exists(), "mid-compaction: no {name}");
        let mode = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is readable by others");
    }
    let frozen = std::fs::read(data.join(FROZEN_WAL_FILE)).unwrap();
    let done = rec.count(finished);
    rec.release();
    assert!(rec.wait_for(|st| st.events.iter().filter(|e| finished(e)).count() > done));
    assert!(!data.join(FROZEN_WAL_FILE).exists());

    // After the snapshot's rename, before the frozen log's removal.
    let renamed = dir.0.join("renamed");
    copy_dir(&data, &renamed);
    std::fs::write(renamed.join(FROZEN_WAL_FILE), &frozen).unwrap();
    // A freeze between its link and its rename: one file under both names,
    // and the new log prepared beside it.
    let linked = dir.0.join("linked");
    copy_dir(&data, &linked);
    std::fs::hard_link(linked.join(WAL_FILE), linked.join(FROZEN_WAL_FILE)).unwrap();
    std::fs::write(linked.join("wal.next"), wal::MAGIC).unwrap();
    // A temp file of an older compaction that died, full of garbage.
    std::fs::write(linked.join(SNAPSHOT_TEMP_FILE), [7u8; 999]).unwrap();

    for (what, at) in [
        ("killed mid-compaction", &mid),
        ("killed after the rename", &renamed),
        ("killed between the freeze's link and rename", &linked),
    ] {
        assert_opens_to(at, &expected, revision, fingerprint, what);
        assert!(!at.join(SNAPSHOT_TEMP_FILE).exists(), "{what}: temp left");
        assert!(!at.join("wal.next").exists(), "{what}: wal.next left");
    }
    // Where the snapshot did not hold it yet, the frozen log waits to be
    // compacted, and it is.
    assert!(mid.join(FROZEN_WAL_FILE).exists());
    let again = Store::open(&mid).unwrap();
    assert_eq!(again.compact().unwrap(), revision);
    assert!(!mid.join(FROZEN_WAL_FILE).exists());
    assert!(again.to_map() == expected);
    for at in [&renamed, &linked] {
        assert!(!at.join(FROZEN_WAL_FILE).exists(), "{}", at.display());
    }
    let sealed = s.seal().unwrap();
    let mode = std::fs::metadata(data.join(SEALED_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(sealed.fingerprint, fingerprint);
}

#[test]
fn a_seal_stops_a_running_compaction_and_leaves_no_temp_file() {
    let dir = TempDir::new("st-stop");
    let rec = Recorder::new();
    let s = Arc::new(Store::open_with(&dir.0, rec.config(16 << 10, 4 << 10)).unwrap());
    fill(&s, "a", 2_000, 2_000, 30);
    s.compact().unwrap();
    let snapshot = ident(&dir.0.join(SNAPSHOT_FILE));
    rec.hold_at(progress);
    fill(&s, "b", 2_500, 500, 30);
    rec.wait_held();
    assert!(
        dir.0.join(SNAPSHOT_TEMP_FILE).exists(),
        "not mid-compaction"
    );

    let sealer = {
        let s = s.clone();
        std::thread::spawn(move || s.seal())
    };
    // The seal closes the store only once it has told the compaction to
    // stop; only then is the compaction let go.
    let t0 = Instant::now();
    loop {
        match s.submit(b"probe", b"x") {
            Err(StoreError::Closed) => break,
            Ok(_) => assert!(t0.elapsed() < BOUND, "the seal never closed the store"),
            Err(e) => panic!("{e}"),
        }
        std::thread::yield_now();
    }
    rec.release();
    let sealed = sealer.join().unwrap().unwrap();
    assert!(sealed.compaction_stopped);
    assert_eq!(rec.count(|e| matches!(e, CompactionEvent::Stopped)), 1);
    assert!(
        !dir.0.join(SNAPSHOT_TEMP_FILE).exists(),
        "the temp file is left"
    );
    assert_eq!(
        ident(&dir.0.join(SNAPSHOT_FILE)),
        snapshot,
        "a snapshot went in"
    );
    assert!(
        dir.0.join(FROZEN_WAL_FILE).exists(),
        "the frozen log is kept"
    );

    // The next process has everything, and compacts the frozen log.
    let expected = s.to_map();
    drop(s);
    assert_opens_to(
        &dir.0,
        &expected,
        sealed.revision,
        sealed.fingerprint,
        "after the stopped compaction",
    );
    let next = Store::open(&dir.0).unwrap();
    assert_eq!(next.compact().unwrap(), sealed.revision);
    assert!(!dir.0.join(FROZEN_WAL_FILE).exists());
}

#[test]
fn a_preload_over_a_frozen_log_catches_up_and_the_successor_compacts_it() {
    let dir = TempDir::new("st-pre-f");
    let rec = Recorder::new();
    let old = Store::open_with(&dir.0, rec.config(16 << 10, 4 << 10)).unwrap();
    fill(&old, "a", 1_000, 1_000, 30);
    old.compact().unwrap();
    // A compaction under way when the successor reads, and when it seals.
    rec.hold_at(progress);
    fill(&old, "b", 1_000, 500, 30);
    rec.wait_held();
    let preloaded = Store::preload(&dir.0, StoreConfig::default()).unwrap();
    fill(&old, "c", 10, 10, 30);
    let sealed = {
        let old = &old;
        std::thread::scope(|scope| {
            let sealer = scope.spawn(move || old.seal());
            let t0 = Instant::now();
            while !matches!(old.submit(b"p", b"x"), Err(StoreError::Closed)) {
                assert!(t0.elapsed() < BOUND);
                std::thread::yield_now();
            }
            rec.release();
            sealer.join().unwrap().unwrap()
        })
    };
    assert!(sealed.compaction_stopped);
    let new = preloaded.open().unwrap();
    assert_eq!(new.open_report().preload_fallback, None);
    assert_eq!(new.fingerprint(), sealed.fingerprint);
    assert!(new.to_map() == old.to_map());
    assert_eq!(new.compact().unwrap(), sealed.revision);
    assert!(!dir.0.join(FROZEN_WAL_FILE).exists());
}

#[test]
fn a_full_disk_during_a_compaction_changes_nothing_and_is_reported() {
    let dir = TempDir::new("st-full");
    let data = dir.0.join("data");
    let Some(_mount) = Tmpfs::mount(&data, 4 << 20) else {
        return;
    };
    let rec = Recorder::new();
    let s = Store::open_with(&data, rec.config(64 << 10, 16 << 10)).unwrap();
    // Held once the log is frozen, before a byte of the snapshot.
    rec.hold_at(started);
    let mut expected = fill(&s, "a", 300, 300, 1000);
    rec.wait_held();
    let before = listing(&data);
    let filler = fill_up(&data);
    rec.release();
    assert!(
        rec.wait_for(|st| st.events.iter().any(failed)),
        "{:?}",
        rec.lock().events
    );
    let error = s.last_compaction_error().unwrap_or_default();
    assert!(error.contains("No space left on device"), "{error}");
    let mut after = listing(&data);
    after.remove("filler");
    assert_eq!(after, before, "a failed compaction changed the data dir");
    assert!(s.to_map() == expected, "reads go on");

    // Space back: compacting works, and nothing was lost.
    std::fs::remove_file(&filler).unwrap();
    expected.extend(fill(&s, "b", 10, 10, 10));
    let revision = s.revision();
    assert_eq!(s.compact().unwrap(), revision);
    assert!(data.join(SNAPSHOT_FILE).exists());
    let fingerprint = s.fingerprint();
    drop(s);
    assert_opens_to(
        &data,
        &expected,
        revision,
        fingerprint,
        "after the full disk",
    );
}

/// Fills the filesystem holding `dir` with `dir/filler` until ENOSPC.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..1024 {
        match file.write(&chunk) {
            Ok(n) if n > 0 => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return path,
            other => panic!("filling {}: {other:?}", path.display()),
        }
    }
    panic!("{} never filled up", path.display());
}

/// A small tmpfs on a directory for one test, unmounted when dropped.
struct Tmpfs(CString);

impl Tmpfs {
    /// `None`, with the reason printed, where mounting is refused (it
    /// needs root or CAP_SYS_ADMIN).
    fn mount(at: &Path, size: usize) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let fstype = CString::new("tmpfs").unwrap();
        let options = CString::new(format!("size={size},mode=0700")).unwrap();
        #[allow(unsafe_code)]
        // SAFETY: each pointer is a NUL-terminated string alive for the
        // call; tmpfs reads its options as such a string.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if rc != 0 {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs on {}: {} (run as root to fill a disk)",
                at.display(),
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Tmpfs(target))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: umount2 of a NUL-terminated path we own; detached, so a
        // file still open in it cannot keep it mounted after the test.
        unsafe {
            libc::umount2(self.0.as_ptr(), libc::MNT_DETACH)
        };
    }
}

/// The process's umask for the life of the guard.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        #[allow(unsafe_code)]
        // SAFETY: umask only swaps the process's file-creation mask.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            libc::umask(self.0)
        };
    }
}
