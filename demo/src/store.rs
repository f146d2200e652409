//! The key-value state in a data dir: a snapshot, a write-ahead log (format
//! in [`crate::wal`]), and while a compaction runs, the part of the log it
//! is folding into the next snapshot.
//!
//! | file | what |
//! |---|---|
//! | `snapshot` | every key up to a revision, and the fingerprint's state there; replaced only by a rename |
//! | `wal.frozen` | the log a compaction is folding into the next snapshot; never written again |
//! | `wal` | the live log, appended to by the writer |
//! | `sealed` | the revision and fingerprint of the last seal, for a successor that read the rest before |
//! | `snapshot.tmp`, `wal.next`, `sealed.tmp` | being written; never part of the state |
//!
//! The state is the snapshot, then the frozen log, then the live log, each
//! record applied in revision order and those a file before already holds
//! skipped.
//!
//! **Writes** go through one writer thread that commits in groups: whatever
//! `set` calls are waiting when it comes round go out in one `write` and one
//! `fdatasync`, and each caller then gets its own revision. The in-memory
//! map changes only after the `fdatasync`, so a read never sees a value that
//! a crash could take back.
//!
//! **Compaction runs while serving**, never in the seal. Once the live log
//! holds more than [`StoreConfig::compact_min_bytes`] and more than the
//! snapshot, the writer freezes it between two batches: it links it as
//! `wal.frozen` and renames a prepared empty log over `wal` (a few fsyncs,
//! independent of the state's size). A background thread then builds the
//! next snapshot from the files (the snapshot and the frozen log, merged in
//! key order), not from the live map, so neither reads nor writes wait for
//! it. It writes the snapshot in chunks, fsyncing each and checking between
//! them whether to stop, renames it in, and only then removes the frozen
//! log. A failure (a full disk) changes nothing on disk but a removed temp
//! file; it is reported through [`StoreConfig::on_compaction`] and tried
//! again once the log has grown by another `compact_min_bytes`.
//!
//! **[`Store::seal`] is O(1) in the state's size**: every acknowledged write
//! is already fsynced, so it only stops the writer, stops a running
//! compaction at its next chunk and waits for it (its temp file removed),
//! and writes the seal record. After it returns this process touches the
//! data dir no more.
//!
//! **A successor reads the state before `Begin`** ([`Store::preload`]),
//! while the old process still holds the lock and serves: the files as they
//! are, writing nothing, remembering which files it read (kept open, so
//! their inodes cannot be reused) and where it stopped in the live log.
//! Once the lock is its own, [`Preloaded::open`] reads only what was
//! appended since. It falls back to a full [`Store::open`] when any file it
//! read is no longer the current one (a compaction or a freeze came in
//! between), when the log's end is torn (the full open cuts it), or when
//! the state it computes is not the one in the seal record: that last
//! check also catches records it read that a failed batch's cut took back
//! and another batch wrote over.
//!
//! **The fingerprint** is a running hash of every record ever logged (the
//! snapshot carries its state), so it survives compaction: the process that
//! opens a sealed dir, whole or from a preload, computes the fingerprint the
//! sealer reported.
//!
//! A failed write or fsync (a full disk, an I/O error) fails its batch and
//! nothing else: the batch is not acknowledged, not applied, and cut off the
//! log again, and the next batch retries the log, so once space is back
//! writes succeed without a restart. Reads never touch the disk.
//!
//! Data files are created `0600`: they hold every value ever written.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::hash::{LogHash, hash64};
use crate::wal::{self, MAX_KEY, MAX_VALUE};

/// The live log's file name in the data dir.
pub const WAL_FILE: &str = "wal";
/// The frozen log's file name: the part of the log a compaction folds into
/// the next snapshot, present from the freeze until the snapshot is in.
pub const FROZEN_WAL_FILE: &str = "wal.frozen";
/// The snapshot's file name in the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The snapshot a compaction is writing; renaming it is what commits it.
pub const SNAPSHOT_TEMP_FILE: &str = "snapshot.tmp";
/// The seal record's file name: what the last seal reported.
pub const SEALED_FILE: &str = "sealed";
/// The empty log a freeze prepares before it renames it over the live one.
const WAL_NEXT: &str = "wal.next";
const SEALED_TEMP: &str = "sealed.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVDSNAP1";
const SNAPSHOT_SEED: u64 = 0x534e_4150_5f73_756d;
/// Where a snapshot's entry count sits: after the magic, the revision and
/// the four lanes.
const SNAPSHOT_COUNT_AT: usize = 8 + 8 + 32;
const SEALED_MAGIC: &[u8; 8] = b"KVDSEAL1";
const SEALED_SEED: u64 = 0x5345_414c_5f72_6563;
/// A batch stops growing here, so one slow fsync does not hold a huge
/// buffer and a huge list of waiters.
const MAX_BATCH_RECORDS: usize = 4096;
/// Entries the compaction merges between two checks of whether to stop.
const MERGE_STEP: u64 = 1 << 16;

/// Why the store refused or failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// A file could not be read or written.
    Io(io::Error),
    /// A file holds damage that is not a torn tail.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The store was sealed or dropped; nothing more can be written.
    Closed,
    /// This write could not be made durable (the log's write or fsync
    /// failed, e.g. the disk is full). It was not applied and the log does
    /// not keep it; later writes retry the log, so once the cause is fixed
    /// they succeed without a restart.
    WriteFailed(String),
    /// The key or value is not acceptable.
    Invalid(&'static str),
    /// A compaction [`Store::compact`] waited for failed or was stopped;
    /// the files are as they were before it.
    CompactionFailed(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "store I/O: {e}"),
            StoreError::Corrupt { file, detail } => write!(f, "{}: {detail}", file.display()),
            StoreError::Closed => f.write_str("the store is sealed"),
            StoreError::WriteFailed(e) => write!(f, "write not saved: {e}"),
            StoreError::Invalid(why) => f.write_str(why),
            StoreError::CompactionFailed(e) => write!(f, "compaction failed: {e}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        StoreError::Io(e)
    }
}

/// Checks a key: 1 to [`MAX_KEY`] bytes, none of them a space or a control
/// character (bytes above 0x7f are allowed, so UTF-8 keys work).
pub fn check_key(key: &[u8]) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("empty key"));
    }
    if key.len() > MAX_KEY {
        return Err(StoreError::Invalid("key longer than 1024 bytes"));
    }
    if key.iter().any(|&b| b <= b' ' || b == 0x7f) {
        return Err(StoreError::Invalid(
            "key contains a space or a control character",
        ));
    }
    Ok(())
}

/// Checks a value: at most [`MAX_VALUE`] bytes, no control characters
/// (spaces are allowed: a value is the rest of the request line).
pub fn check_value(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE {
        return Err(StoreError::Invalid("value longer than 61440 bytes"));
    }
    if value.iter().any(|&b| b < b' ' || b == 0x7f) {
        return Err(StoreError::Invalid("value contains a control character"));
    }
    Ok(())
}

/// What a compaction did, as [`StoreConfig::on_compaction`] hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompactionEvent {
    /// The log up to `revision` is frozen; the new snapshot is being built.
    Started {
        /// The last revision the new snapshot will hold.
        revision: u64,
    },
    /// Part of the new snapshot is written and fsynced (between chunks).
    Progress {
        /// Bytes written so far.
        written: u64,
        /// Bytes in all.
        total: u64,
    },
    /// The snapshot holds everything up to `revision` and the frozen log is
    /// gone (or, if `leftover` says why, still there and skipped by every
    /// reader: the next compaction removes it).
    Finished {
        /// The snapshot's revision.
        revision: u64,
        /// The snapshot's size.
        snapshot_bytes: u64,
        /// From the freeze (or the retry) to the rename.
        took: Duration,
        /// Why the frozen log could not be removed, if it could not.
        leftover: Option<String>,
    },
    /// Stopped by a seal or a drop; the temp file is removed and the frozen
    /// log stays for the next process to compact.
    Stopped,
    /// Failed (e.g. the disk is full): nothing changed but a removed temp
    /// file. Tried again once the log has grown by
    /// [`StoreConfig::compact_min_bytes`] (or on [`Store::compact`]).
    Failed {
        /// What failed.
        error: String,
    },
}

/// A callback for [`CompactionEvent`]s. It runs on the store's threads
/// (the writer's for a freeze that failed, else the compaction's), so it
/// must return soon and must not call into the store that calls it.
pub type CompactionHook = Arc<dyn Fn(&CompactionEvent) + Send + Sync>;

/// How a store compacts.
#[derive(Clone)]
pub struct StoreConfig {
    /// The live log is frozen and compacted once it holds at least this
    /// many bytes and more than the snapshot: each byte logged is then
    /// rewritten into snapshots a bounded number of times on average.
    pub compact_min_bytes: u64,
    /// Bytes of snapshot written (and fsynced) between two checks of
    /// whether to stop: what bounds a seal's wait for a running compaction.
    pub compaction_chunk: usize,
    /// Told what each compaction did (for logs, and for tests).
    pub on_compaction: Option<CompactionHook>,
}

impl Default for StoreConfig {
    /// 4 MiB before a compaction, 1 MiB chunks, no callback.
    fn default() -> Self {
        StoreConfig {
            compact_min_bytes: 4 << 20,
            compaction_chunk: 1 << 20,
            on_compaction: None,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("compact_min_bytes", &self.compact_min_bytes)
            .field("compaction_chunk", &self.compaction_chunk)
            .field("on_compaction", &self.on_compaction.is_some())
            .finish()
    }
}

/// What opening found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The revision after replay.
    pub revision: u64,
    /// The snapshot's revision (0 without a snapshot).
    pub snapshot_revision: u64,
    /// Log records replayed over the snapshot (frozen and live logs).
    pub replayed: usize,
    /// Bytes of torn tail cut off the log.
    pub torn_bytes_dropped: u64,
    /// Opened from a preload: how many records were read after the lock was
    /// taken (those written since the preload). `None` if read whole.
    pub caught_up: Option<usize>,
    /// Why a preload could not be used, so the state was read whole.
    pub preload_fallback: Option<String>,
}

/// What [`Store::seal`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The last revision written.
    pub revision: u64,
    /// The log's fingerprint at that revision.
    pub fingerprint: [u8; 32],
    /// A compaction was running and was stopped (its temp file removed).
    /// Nothing is lost: the frozen log it was folding stays on disk, and
    /// the next process compacts it.
    pub compaction_stopped: bool,
}

/// Counters, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group commits (one write and one fsync each) since open.
    pub batches: u64,
    /// Records written since open.
    pub records: u64,
    /// The current revision.
    pub revision: u64,
    /// Keys held.
    pub keys: usize,
    /// Compactions finished since open.
    pub compactions: u64,
    /// Compactions (or freezes) that failed since open.
    pub compaction_failures: u64,
    /// The revision the snapshot on disk holds.
    pub snapshot_revision: u64,
}

/// A write handed to the writer thread; [`PendingWrite::wait`] blocks until
/// it is durable.
#[derive(Debug)]
pub struct PendingWrite {
    rx: mpsc::Receiver<Result<u64, String>>,
}

impl PendingWrite {
    /// Waits until the write is fsynced; returns its revision.
    pub fn wait(self) -> Result<u64, StoreError> {
        match self.rx.recv() {
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(e)) => Err(StoreError::WriteFailed(e)),
            // The writer went away without answering: only a panic does that.
            Err(_) => Err(StoreError::WriteFailed(
                "the writer thread stopped (it panicked); restart kvd".into(),
            )),
        }
    }
}

struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    done: mpsc::SyncSender<Result<u64, String>>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// [`Store::compact`] calls waiting for the writer to freeze the log
    /// (or start the compaction of one frozen before): each is answered
    /// whether a compaction now runs.
    compact_requests: Vec<mpsc::SyncSender<Result<bool, String>>>,
    closing: bool,
}

struct Data {
    map: HashMap<Vec<u8>, Vec<u8>>,
    revision: u64,
    log_hash: LogHash,
    batches: u64,
    records: u64,
}

/// Where compaction stands; the writer and the compaction thread share it.
#[derive(Default)]
struct Compaction {
    /// `wal.frozen` is on disk (being compacted, or waiting to be).
    frozen: bool,
    /// A compaction thread is between its start and its outcome.
    running: bool,
    thread: Option<JoinHandle<()>>,
    /// The snapshot on disk: its revision and size.
    snapshot_revision: u64,
    snapshot_len: u64,
    /// The live log's length after the last batch.
    live_len: u64,
    /// After a failure: not again before the live log is this long.
    retry_at: u64,
    finished: u64,
    failed: u64,
    stopped: u64,
    last_error: Option<String>,
}

struct Shared {
    dir: PathBuf,
    config: StoreConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    data: RwLock<Data>,
    compaction: Mutex<Compaction>,
    compaction_changed: Condvar,
    /// Set by the seal and the drop: the writer freezes nothing more, and a
    /// running compaction stops at its next check.
    stop: AtomicBool,
}

impl Shared {
    fn report(&self, event: &CompactionEvent) {
        if let Some(hook) = &self.config.on_compaction {
            hook(event);
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

/// A poisoned lock means a thread panicked mid-update of plain counters and
/// maps; the data is still the best we have, so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// A file's identity: the same while it exists under any name, and not
/// reused for another while a descriptor of it is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    fn of_file(file: &File) -> io::Result<FileId> {
        Ok(FileId::of(&file.metadata()?))
    }

    /// The identity of what `path` names now; `None` if nothing.
    fn of_path(path: &Path) -> io::Result<Option<FileId>> {
        match fs::metadata(path) {
            Ok(m) => Ok(Some(FileId::of(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens `path` to read, `None` if it does not exist.
fn open_if_exists(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn read_all(mut file: &File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn corrupt(file: &Path, detail: impl fmt::Display) -> StoreError {
    StoreError::Corrupt {
        file: file.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// The state as the files are read into it, in order.
struct Replay {
    map: HashMap<Vec<u8>, Vec<u8>>,
    revision: u64,
    log_hash: LogHash,
    snapshot_revision: u64,
    snapshot_len: u64,
    replayed: usize,
}

impl Replay {
    /// The state a snapshot holds (`None`: there is none, the empty state).
    fn of_snapshot(path: &Path, bytes: Option<&[u8]>) -> Result<Replay, StoreError> {
        let Some(bytes) = bytes else {
            return Ok(Replay {
                map: HashMap::new(),
                revision: 0,
                log_hash: LogHash::new(),
                snapshot_revision: 0,
                snapshot_len: 0,
                replayed: 0,
            });
        };
        let mut view = SnapshotView::parse(path, bytes)?;
        // Bounded by what the file can hold, not by the count it claims.
        let capacity = usize::try_from(view.left)
            .unwrap_or(usize::MAX)
            .min(bytes.len() / 8);
        let mut map = HashMap::with_capacity(capacity);
        while let Some((key, value)) = view.next_entry(path)? {
            map.insert(key.to_vec(), value.to_vec());
        }
        Ok(Replay {
            map,
            revision: view.revision,
            log_hash: LogHash::from_lanes(view.lanes),
            snapshot_revision: view.revision,
            snapshot_len: bytes.len() as u64,
            replayed: 0,
        })
    }

    /// Applies the records of `scan`, made of `bytes`.
    fn apply(&mut self, bytes: &[u8], scan: wal::Scan) {
        self.replayed += scan.records.len();
        for (record, body) in scan.records.into_iter().zip(scan.bodies) {
            self.log_hash.update(&bytes[body]);
            self.revision = record.revision;
            self.map.insert(record.key, record.value);
        }
    }
}

/// Scans a frozen log over a state at `base`. It was complete when it was
/// frozen (the writer freezes only between two durable batches) and is
/// never written again, so a torn end is damage.
fn scan_frozen(path: &Path, bytes: &[u8], base: u64) -> Result<wal::Scan, StoreError> {
    let scan = wal::scan(bytes, base).map_err(|c| corrupt(path, c))?;
    if scan.torn.is_some() {
        return Err(corrupt(
            path,
            "the frozen log ends in a partial record, but it was complete when it was frozen; \
             restore the data dir from a backup",
        ));
    }
    Ok(scan)
}

/// The live log must go on from the frozen one: it was created empty when
/// the frozen one had just taken its last record.
fn check_continues(
    path: &Path,
    frozen_last: Option<u64>,
    live: &wal::Scan,
) -> Result<(), StoreError> {
    match (frozen_last, live.first_revision) {
        (Some(last), Some(first)) if first != last + 1 => Err(corrupt(
            path,
            format!(
                "the log starts at revision {first}, but the frozen log before it ends at \
                 {last}; restore the data dir from a backup"
            ),
        )),
        _ => Ok(()),
    }
}

impl Store {
    /// Opens the state in `dir` (created if missing) with the default
    /// [`StoreConfig`]; see [`Store::open_with`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(dir, StoreConfig::default())
    }

    /// Opens the state in `dir` (created if missing): reads the snapshot,
    /// replays the frozen and the live log, cuts off a torn tail, tidies
    /// what a crash left, and starts the writer. A frozen log left to
    /// compact is compacted in the background from the first write on.
    /// The caller must hold the data-dir lock: opening may write.
    pub fn open_with(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        fs::create_dir_all(dir)?;
        // Temp files are never part of the state (a rename is what commits
        // each); one a crash left behind only holds space.
        for leftover in [SNAPSHOT_TEMP_FILE, WAL_NEXT, SEALED_TEMP] {
            let _ = fs::remove_file(dir.join(leftover));
        }
        let wal_path = dir.join(WAL_FILE);
        let frozen_path = dir.join(FROZEN_WAL_FILE);
        // A freeze stopped between its link and its rename: both names are
        // the live log, and the freeze never happened.
        if let (Some(frozen), Some(live)) =
            (FileId::of_path(&frozen_path)?, FileId::of_path(&wal_path)?)
            && frozen == live
        {
            fs::remove_file(&frozen_path)?;
            sync_dir(dir)?;
        }

        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match fs::read(&snapshot_path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut state = Replay::of_snapshot(&snapshot_path, snapshot.as_deref())?;
        drop(snapshot);

        let mut frozen = false;
        let mut frozen_last = None;
        match fs::read(&frozen_path) {
            Ok(bytes) => {
                let scan = scan_frozen(&frozen_path, &bytes, state.revision)?;
                frozen_last = scan.last_revision;
                if scan.records.is_empty() {
                    // The snapshot holds it all: a compaction stopped
                    // between its rename and this removal.
                    fs::remove_file(&frozen_path)?;
                    sync_dir(dir)?;
                } else {
                    frozen = true;
                    state.apply(&bytes, scan);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }

        let created = !wal_path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&wal_path)?;
        let bytes = read_all(&file)?;
        let scan = wal::scan(&bytes, state.revision).map_err(|c| corrupt(&wal_path, c))?;
        check_continues(&wal_path, frozen_last, &scan)?;
        let valid_len = scan.valid_len;
        state.apply(&bytes, scan);
        let mut torn_bytes_dropped = 0;
        if bytes.len() < wal::MAGIC.len() {
            // New, or its creation was cut short: start it properly.
            torn_bytes_dropped = bytes.len() as u64;
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(wal::MAGIC)?;
            file.sync_all()?;
        } else if valid_len < bytes.len() {
            torn_bytes_dropped = (bytes.len() - valid_len) as u64;
            file.set_len(valid_len as u64)?;
            file.sync_all()?;
        }
        if created {
            sync_dir(dir)?;
        }
        let good_len = file.seek(SeekFrom::End(0))?;
        let opened = OpenReport {
            revision: state.revision,
            snapshot_revision: state.snapshot_revision,
            replayed: state.replayed,
            torn_bytes_dropped,
            caught_up: None,
            preload_fallback: None,
        };
        Store::start(dir, config, state, frozen, Log::new(file, good_len), opened)
    }

    /// Reads the state in `dir` without writing anything, for a successor
    /// before `Begin`: the old process still holds the lock and may write,
    /// freeze or compact meanwhile. Finish with [`Preloaded::open`] once the
    /// lock is held. An error here only means the preload cannot be used:
    /// open the store whole after the lock instead.
    pub fn preload(dir: &Path, config: StoreConfig) -> Result<Preloaded, StoreError> {
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let frozen_path = dir.join(FROZEN_WAL_FILE);
        let wal_path = dir.join(WAL_FILE);
        // In replay order. Each file is kept open: an inode cannot be
        // reused while it is, so comparing identities after `Begin` tells
        // whether a name still holds what was read.
        let snapshot = open_if_exists(&snapshot_path)?;
        let snapshot_id = snapshot.as_ref().map(FileId::of_file).transpose()?;
        let bytes = snapshot.as_ref().map(read_all).transpose()?;
        let mut state = Replay::of_snapshot(&snapshot_path, bytes.as_deref())?;
        drop(bytes);

        let frozen = open_if_exists(&frozen_path)?;
        let frozen_id = frozen.as_ref().map(FileId::of_file).transpose()?;
        let frozen_bytes = frozen.as_ref().map(read_all).transpose()?;

        let live = File::open(&wal_path)?;
        let live_id = FileId::of_file(&live)?;
        let mut frozen_last = None;
        // The same file under both names is a freeze between its link and
        // its rename: it is the live log, read below.
        if let Some(bytes) = frozen_bytes
            && frozen_id != Some(live_id)
        {
            let scan = scan_frozen(&frozen_path, &bytes, state.revision)?;
            frozen_last = scan.last_revision;
            state.apply(&bytes, scan);
        }
        let bytes = read_all(&live)?;
        if bytes.len() < wal::MAGIC.len() {
            return Err(corrupt(&wal_path, "the log has no header yet"));
        }
        let scan = wal::scan(&bytes, state.revision).map_err(|c| corrupt(&wal_path, c))?;
        check_continues(&wal_path, frozen_last, &scan)?;
        // A torn end is a batch being written: it is read after `Begin`.
        let offset = scan.valid_len as u64;
        state.apply(&bytes, scan);
        Ok(Preloaded {
            dir: dir.to_path_buf(),
            config,
            state,
            snapshot_id,
            frozen_id,
            live,
            live_id,
            offset,
            _pinned: [snapshot, frozen],
        })
    }

    /// Starts the writer over `log`, with `state` read.
    fn start(
        dir: &Path,
        config: StoreConfig,
        state: Replay,
        frozen: bool,
        log: Log,
        opened: OpenReport,
    ) -> Result<Store, StoreError> {
        let compaction = Compaction {
            frozen,
            snapshot_revision: state.snapshot_revision,
            snapshot_len: state.snapshot_len,
            live_len: log.good_len,
            ..Compaction::default()
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            data: RwLock::new(Data {
                map: state.map,
                revision: state.revision,
                log_hash: state.log_hash,
                batches: 0,
                records: 0,
            }),
            compaction: Mutex::new(compaction),
            compaction_changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("kvd-wal-writer".into())
                .spawn(move || writer_loop(&shared, log))?
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            shared,
            writer: Mutex::new(Some(writer)),
            opened,
        })
    }
}

/// The state of a data dir as [`Store::preload`] read it, before the lock.
pub struct Preloaded {
    dir: PathBuf,
    config: StoreConfig,
    state: Replay,
    snapshot_id: Option<FileId>,
    frozen_id: Option<FileId>,
    /// The live log, open to read, and where the preload stopped in it.
    live: File,
    live_id: FileId,
    offset: u64,
    /// The snapshot and the frozen log read, kept open for their identity.
    _pinned: [Option<File>; 2],
}

impl fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Preloaded")
            .field("dir", &self.dir)
            .field("revision", &self.state.revision)
            .field("keys", &self.state.map.len())
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl Preloaded {
    /// The revision the preload read up to.
    pub fn revision(&self) -> u64 {
        self.state.revision
    }

    /// Keys the preload read.
    pub fn keys(&self) -> usize {
        self.state.map.len()
    }

    /// Opens the store, with the data-dir lock held and the old process
    /// sealed: reads only what was appended to the live log since the
    /// preload, if the files are still the ones it read and the result is
    /// the state the seal recorded; else reads the whole state like
    /// [`Store::open_with`] (which also cuts a torn tail). The report says
    /// which ([`OpenReport::caught_up`], [`OpenReport::preload_fallback`]).
    pub fn open(self) -> Result<Store, StoreError> {
        let dir = self.dir.clone();
        let config = self.config.clone();
        match self.catch_up() {
            Ok(store) => Ok(store),
            Err(reason) => {
                // The preloaded map is gone with `catch_up`'s `self`.
                let mut store = Store::open_with(&dir, config)?;
                store.opened.preload_fallback = Some(reason);
                Ok(store)
            }
        }
    }

    /// The fast way, or why not.
    fn catch_up(self) -> Result<Store, String> {
        let io = |what: &str, e: io::Error| format!("{what}: {e}");
        let dir = &self.dir;
        let same = |name: &str, read: Option<FileId>| -> Result<(), String> {
            let now = FileId::of_path(&dir.join(name)).map_err(|e| io(name, e))?;
            if now == read {
                Ok(())
            } else {
                Err(format!(
                    "{name} is not the file read before Begin (a compaction or a freeze came \
                     in between)"
                ))
            }
        };
        if self.frozen_id == Some(self.live_id) {
            // The old process's freeze stopped half-way; the full open
            // tidies that.
            return Err("the log is also named as the frozen log".into());
        }
        same(SNAPSHOT_FILE, self.snapshot_id)?;
        same(FROZEN_WAL_FILE, self.frozen_id)?;
        same(WAL_FILE, Some(self.live_id))?;
        let seal = read_seal_record(dir).ok_or("no readable seal record")?;

        let mut live = &self.live;
        live.seek(SeekFrom::Start(self.offset))
            .map_err(|e| io("the log", e))?;
        let mut tail = Vec::new();
        live.read_to_end(&mut tail).map_err(|e| io("the log", e))?;
        let mut state = self.state;
        let scan = wal::scan_continuing(&tail, self.offset, state.revision + 1)
            .map_err(|c| c.to_string())?;
        if let Some(torn) = &scan.torn {
            return Err(format!("the log ends in a torn record ({torn})"));
        }
        let valid_len = scan.valid_len as u64;
        let caught_up = scan.records.len();
        state.apply(&tail, scan);
        if (state.revision, state.log_hash.lanes()) != (seal.revision, seal.lanes) {
            // Records read before `Begin` were taken back (a failed batch
            // cut off and written over), or the record is an older seal's.
            return Err(format!(
                "the log read is not the sealed one (revision {} and its fingerprint, sealed {})",
                state.revision, seal.revision
            ));
        }

        let wal_path = dir.join(WAL_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(|e| io("the log", e))?;
        if FileId::of_file(&file).map_err(|e| io("the log", e))? != self.live_id {
            return Err("the log was replaced after the lock was taken".into());
        }
        let good_len = file.seek(SeekFrom::End(0)).map_err(|e| io("the log", e))?;
        if good_len != self.offset + valid_len {
            return Err("the log grew while it was read".into());
        }
        let opened = OpenReport {
            revision: state.revision,
            snapshot_revision: state.snapshot_revision,
            replayed: state.replayed,
            torn_bytes_dropped: 0,
            caught_up: Some(caught_up),
            preload_fallback: None,
        };
        // A frozen log on disk (its compaction stopped by the seal, or one
        // the snapshot already holds) is compacted from the first write on.
        let frozen = self.frozen_id.is_some();
        Store::start(
            dir,
            self.config,
            state,
            frozen,
            Log::new(file, good_len),
            opened,
        )
        .map_err(|e| format!("starting the writer: {e}"))
    }
}

/// The open state of one data dir. Share it (`&Store` or `Arc<Store>`)
/// between threads: `set` from many threads is what group commit batches.
pub struct Store {
    dir: PathBuf,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<Log>>>,
    opened: OpenReport,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// What opening found.
    pub fn open_report(&self) -> &OpenReport {
        &self.opened
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands a write to the writer without waiting for it.
    pub fn submit(&self, key: &[u8], value: &[u8]) -> Result<PendingWrite, StoreError> {
        check_key(key)?;
        check_value(value)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let mut q = lock(&self.shared.queue);
        if q.closing {
            return Err(StoreError::Closed);
        }
        q.pending.push(Pending {
            key: key.to_vec(),
            value: value.to_vec(),
            done: tx,
        });
        drop(q);
        self.shared.wake.notify_one();
        Ok(PendingWrite { rx })
    }

    /// Writes `key` = `value` and returns its revision once it is in the log
    /// and fsynced.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        self.submit(key, value)?.wait()
    }

    /// The value of `key`, as last acknowledged.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let data = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        data.map.get(key).cloned()
    }

    /// The last durable revision.
    pub fn revision(&self) -> u64 {
        self.shared
            .data
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .revision
    }

    /// The log's fingerprint up to [`Store::revision`].
    pub fn fingerprint(&self) -> [u8; 32] {
        self.shared
            .data
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .log_hash
            .digest()
    }

    /// Counters.
    pub fn stats(&self) -> StoreStats {
        let (compactions, compaction_failures, snapshot_revision) = {
            let c = lock(&self.shared.compaction);
            (c.finished, c.failed, c.snapshot_revision)
        };
        let d = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        StoreStats {
            batches: d.batches,
            records: d.records,
            revision: d.revision,
            keys: d.map.len(),
            compactions,
            compaction_failures,
            snapshot_revision,
        }
    }

    /// Why the last compaction (or freeze) failed, if one did since open.
    pub fn last_compaction_error(&self) -> Option<String> {
        lock(&self.shared.compaction).last_error.clone()
    }

    /// A copy of every key and value, sorted.
    pub fn to_map(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let d = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        d.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Compacts everything logged up to now into the snapshot and waits for
    /// it, whatever the log's size: freezes the live log (after a compaction
    /// already running, if one is) and compacts it in the background as a
    /// threshold would. Returns the snapshot's revision. Writes go on
    /// meanwhile. For tests, tools and a quiet moment; kvd never waits for
    /// a compaction.
    pub fn compact(&self) -> Result<u64, StoreError> {
        let target = self.revision();
        loop {
            let tried = {
                let mut c = lock(&self.shared.compaction);
                while c.running {
                    c = wait(&self.shared.compaction_changed, c);
                }
                if c.snapshot_revision >= target && !c.frozen {
                    return Ok(c.snapshot_revision);
                }
                c.failed + c.stopped
            };
            let (tx, rx) = mpsc::sync_channel(1);
            {
                let mut q = lock(&self.shared.queue);
                if q.closing {
                    return Err(StoreError::Closed);
                }
                q.compact_requests.push(tx);
            }
            self.shared.wake.notify_one();
            match rx.recv() {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    return Err(StoreError::CompactionFailed(
                        "the log cannot be frozen now (a failed write is not cut off yet)".into(),
                    ));
                }
                Ok(Err(e)) => return Err(StoreError::CompactionFailed(e)),
                Err(_) => return Err(StoreError::Closed),
            }
            let mut c = lock(&self.shared.compaction);
            while c.running {
                c = wait(&self.shared.compaction_changed, c);
            }
            if c.failed + c.stopped > tried {
                let why = c.last_error.clone();
                return Err(StoreError::CompactionFailed(
                    why.unwrap_or_else(|| "stopped by a seal".into()),
                ));
            }
        }
    }

    /// Stops the writer once it has answered what is queued (after this no
    /// write is accepted); returns its log.
    fn stop_writer(&self) -> Result<Log, StoreError> {
        let requests = {
            let mut q = lock(&self.shared.queue);
            q.closing = true;
            std::mem::take(&mut q.compact_requests)
        };
        for r in requests {
            let _ = r.send(Err("the store is sealed".into()));
        }
        self.shared.wake.notify_all();
        let handle = lock(&self.writer).take().ok_or(StoreError::Closed)?;
        handle
            .join()
            .map_err(|_| StoreError::WriteFailed("the writer thread panicked; restart kvd".into()))
    }

    /// Waits for the compaction thread, if there is one: with `stop` set
    /// it ends at its next check. Call with the writer stopped, so that no
    /// new one starts.
    fn join_compaction(&self) {
        let handle = lock(&self.shared.compaction).thread.take();
        if let Some(h) = handle {
            // A panic in it left the files as a crash would: readable.
            let _ = h.join();
        }
    }

    /// Finishes the queued writes, makes sure the log holds exactly what
    /// was acknowledged and is on disk, stops a running compaction (its
    /// temp file removed, the frozen log it was folding left for the next
    /// process), and writes the seal record. After this the store accepts
    /// no writes (reads still work), this process no longer touches the
    /// data dir, and another process may open it. On error the log on
    /// disk is still complete: opening it again recovers everything
    /// acknowledged.
    ///
    /// Nothing here depends on the state's size, and nothing needs new
    /// space but the seal record, which is only a hint: a successor that
    /// finds none (a full disk) reads the state whole.
    pub fn seal(&self) -> Result<Sealed, StoreError> {
        // First: from here the writer freezes nothing more, and a running
        // compaction stops at its next chunk.
        let stopped_before = lock(&self.shared.compaction).stopped;
        self.shared.stop.store(true, Ordering::Release);
        let mut log = self.stop_writer()?;
        self.join_compaction();
        let stopped = lock(&self.shared.compaction).stopped > stopped_before;
        // Cutting a failed write's leftovers frees space rather than taking
        // it; only an I/O error fails here (and the handoff aborts).
        log.repair()?;
        log.file.sync_all()?;
        let data = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        write_seal_record(&self.dir, data.revision, data.log_hash.lanes());
        Ok(Sealed {
            revision: data.revision,
            fingerprint: data.log_hash.digest(),
            compaction_stopped: stopped,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // What was acknowledged is already fsynced; this only ends the
        // threads (the writer after it answers whatever is queued, a
        // compaction at its next chunk, its temp file removed).
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.stop_writer();
        self.join_compaction();
    }
}

/// The log file as the writer holds it.
struct Log {
    file: File,
    /// Where the last durable batch ends: everything before it was
    /// acknowledged (or replayed at open) and fsynced, and the file offset
    /// is here whenever `dirty` is false.
    good_len: u64,
    /// Bytes past `good_len` may be in the file: a write or fsync failed
    /// and cutting them off has not succeeded yet.
    dirty: bool,
}

impl Log {
    fn new(file: File, good_len: u64) -> Log {
        Log {
            file,
            good_len,
            dirty: false,
        }
    }

    /// Cuts what a failed write left past `good_len` off the file. This
    /// frees space rather than taking it, so it works on a full disk.
    fn repair(&mut self) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.good_len)?;
            self.file.seek(SeekFrom::Start(self.good_len))?;
            self.file.sync_all()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Writes one batch and fsyncs it; on error says what failed and what
    /// to do, for the writers of the batch.
    ///
    /// A failed write can leave part of the batch in the file: whole
    /// records that replay would take as acknowledged, then a torn one.
    /// They are cut off before the error is returned, and if that fails too
    /// the next append cuts first, so no record is ever appended after
    /// them. Retrying after a failed fsync is safe too: the pages such an
    /// fsync may drop hold only this batch (every earlier one was fsynced
    /// before it was acknowledged), which is cut off and never
    /// acknowledged, and a later batch counts only once its own fsync
    /// succeeds.
    fn append(&mut self, buf: &[u8]) -> Result<(), String> {
        const ADVICE: &str = "free space on the data dir's filesystem (or fix the I/O error) \
                              and send the write again: kvd retries the log by itself";
        if let Err(e) = self.repair() {
            return Err(format!(
                "cutting the log back after an earlier failed write failed: {e}; {ADVICE}"
            ));
        }
        self.dirty = true;
        let result = match self.file.write_all(buf) {
            Ok(()) => self.file.sync_data().map_err(|e| ("fsyncing", e)),
            Err(e) => Err(("writing", e)),
        };
        match result {
            Ok(()) => {
                self.good_len += buf.len() as u64;
                self.dirty = false;
                Ok(())
            }
            Err((what, e)) => {
                let cut = match self.repair() {
                    Ok(()) => String::new(),
                    Err(c) => format!(" (cutting it back failed too, {c}: the next write tries)"),
                };
                Err(format!("{what} the log failed: {e}{cut}; {ADVICE}"))
            }
        }
    }

    /// Freezes the log: from here it is `wal.frozen`, never written again,
    /// and the writer appends to a new, empty `wal`. Call between two
    /// batches with the log clean and no frozen log on disk.
    ///
    /// The new log is prepared (header fsynced) before any name changes.
    /// Then the live log gets its second name by a link, made durable
    /// before the rename that puts the new log in its place: a crash
    /// between the two leaves one file under both names, which opening
    /// takes as no freeze; the other order could lose the frozen log's
    /// only name. On any error the names are put back and the writer goes
    /// on with the old file, so nothing was acknowledged into a file a
    /// crash could leave unnamed.
    fn freeze(&mut self, dir: &Path) -> io::Result<()> {
        let live = dir.join(WAL_FILE);
        let frozen = dir.join(FROZEN_WAL_FILE);
        let next_path = dir.join(WAL_NEXT);
        let prepared = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&next_path)
            .and_then(|mut f| {
                f.write_all(wal::MAGIC)?;
                f.sync_all()?;
                Ok(f)
            });
        let next = match prepared {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&next_path);
                return Err(e);
            }
        };
        if let Err(e) = fs::hard_link(&live, &frozen) {
            // Not ours to remove, whatever is there.
            let _ = fs::remove_file(&next_path);
            return Err(e);
        }
        let renamed = sync_dir(dir)
            .and_then(|()| fs::rename(&next_path, &live))
            .map_err(|e| (e, false))
            .and_then(|()| sync_dir(dir).map_err(|e| (e, true)));
        if let Err((e, renamed)) = renamed {
            if renamed {
                // The frozen name goes back over the live one (the new log
                // held nothing but its header).
                let _ = fs::rename(&frozen, &live);
            } else {
                let _ = fs::remove_file(&frozen);
                let _ = fs::remove_file(&next_path);
            }
            let _ = sync_dir(dir);
            return Err(e);
        }
        self.file = next;
        self.good_len = wal::MAGIC.len() as u64;
        self.dirty = false;
        Ok(())
    }
}

fn writer_loop(shared: &Arc<Shared>, mut log: Log) -> Log {
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    loop {
        let (batch, requests): (Vec<Pending>, _) = {
            let mut q = lock(&shared.queue);
            while q.pending.is_empty() && q.compact_requests.is_empty() && !q.closing {
                q = wait(&shared.wake, q);
            }
            if q.pending.is_empty() && q.closing {
                for r in q.compact_requests.drain(..) {
                    let _ = r.send(Err("the store is sealed".into()));
                }
                return log;
            }
            let n = q.pending.len().min(MAX_BATCH_RECORDS);
            (
                q.pending.drain(..n).collect(),
                std::mem::take(&mut q.compact_requests),
            )
        };
        if !batch.is_empty() {
            write_batch(shared, &mut log, batch, &mut buf, &mut bodies);
            // A failure is reported where it happens and retried later.
            let _ = maybe_compact(shared, &mut log, false);
        }
        for r in requests {
            let _ = r.send(maybe_compact(shared, &mut log, true));
        }
    }
}

fn write_batch(
    shared: &Shared,
    log: &mut Log,
    batch: Vec<Pending>,
    buf: &mut Vec<u8>,
    bodies: &mut Vec<std::ops::Range<usize>>,
) {
    // Only this thread changes the revision, so reading it unlocked
    // between batches is exact.
    let base = shared
        .data
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .revision;
    buf.clear();
    bodies.clear();
    buf.reserve(
        batch
            .iter()
            .map(|p| wal::HEADER_LEN + 12 + p.key.len() + p.value.len())
            .sum(),
    );
    for (i, p) in batch.iter().enumerate() {
        bodies.push(wal::encode(base + 1 + i as u64, &p.key, &p.value, buf));
    }
    match log.append(buf) {
        Ok(()) => {
            {
                let mut d = shared.data.write().unwrap_or_else(|e| e.into_inner());
                for (p, body) in batch.iter().zip(bodies.iter()) {
                    d.log_hash.update(&buf[body.clone()]);
                    d.map.insert(p.key.clone(), p.value.clone());
                }
                d.revision = base + batch.len() as u64;
                d.batches += 1;
                d.records += batch.len() as u64;
            }
            for (i, p) in batch.into_iter().enumerate() {
                let _ = p.done.send(Ok(base + 1 + i as u64));
            }
        }
        Err(why) => {
            // Only this batch fails: the revision, the map and the
            // fingerprint did not move, and what is queued behind it
            // tries the log again.
            for p in batch {
                let _ = p.done.send(Err(why.clone()));
            }
        }
    }
}

/// After a batch (or asked, `force`): freezes the live log and starts a
/// compaction when one is due. Returns whether a compaction runs now.
/// Runs on the writer thread, so a freeze falls between two batches.
fn maybe_compact(shared: &Arc<Shared>, log: &mut Log, force: bool) -> Result<bool, String> {
    let mut c = lock(&shared.compaction);
    c.live_len = log.good_len;
    if c.running {
        return Ok(true);
    }
    if shared.stopping() {
        return Err("the store is sealed".into());
    }
    if !force && log.good_len < c.retry_at {
        return Ok(false);
    }
    if !c.frozen {
        let has_records = log.good_len > wal::MAGIC.len() as u64;
        let due = log.good_len >= shared.config.compact_min_bytes.max(c.snapshot_len);
        if !has_records || !(due || force) {
            return Ok(false);
        }
        if log.dirty {
            // A failed write is not cut off yet: nothing may be frozen
            // behind it. The next batch cuts it first.
            return Ok(false);
        }
        let t0 = Instant::now();
        if let Err(e) = log.freeze(&shared.dir) {
            let error = format!("freezing the log: {e}");
            c.failed += 1;
            c.last_error = Some(error.clone());
            c.retry_at = log.good_len + shared.config.compact_min_bytes;
            shared.compaction_changed.notify_all();
            drop(c);
            shared.report(&CompactionEvent::Failed {
                error: error.clone(),
            });
            return Err(error);
        }
        c.frozen = true;
        c.live_len = log.good_len;
        c.retry_at = 0;
        return Ok(start_compaction(shared, &mut c, t0));
    }
    Ok(start_compaction(shared, &mut c, Instant::now()))
}

/// Starts the thread that compacts the frozen log (`c` says there is one
/// and nothing runs).
fn start_compaction(shared: &Arc<Shared>, c: &mut Compaction, t0: Instant) -> bool {
    // An earlier thread has passed its outcome and touches no file again
    // (it may still be telling the callback): let it end on its own.
    drop(c.thread.take());
    let base = c.snapshot_revision;
    let s = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("kvd-compaction".into())
        .spawn(move || compaction_thread(&s, base, t0));
    match spawned {
        Ok(h) => {
            c.running = true;
            c.thread = Some(h);
            true
        }
        Err(e) => {
            c.failed += 1;
            c.last_error = Some(format!("starting the compaction thread: {e}"));
            c.retry_at = c.live_len + shared.config.compact_min_bytes;
            false
        }
    }
}

/// How a compaction ended early.
enum Halt {
    /// The store is sealing or closing.
    Stopped,
    /// Something failed; the files are as before.
    Failed(String),
}

impl From<io::Error> for Halt {
    fn from(e: io::Error) -> Self {
        Halt::Failed(e.to_string())
    }
}

/// A compaction that finished.
struct Compacted {
    revision: u64,
    /// The new snapshot's size; `None` if none was needed (the snapshot
    /// already held the frozen log).
    snapshot_len: Option<u64>,
    /// Why the frozen log is still on disk, if it is.
    leftover: Option<String>,
}

fn compaction_thread(shared: &Shared, base: u64, t0: Instant) {
    let outcome = compact_frozen(shared, base);
    let event = {
        let mut c = lock(&shared.compaction);
        c.running = false;
        let event = match outcome {
            Ok(done) => {
                c.finished += 1;
                c.frozen = done.leftover.is_some();
                c.snapshot_revision = done.revision;
                if let Some(len) = done.snapshot_len {
                    c.snapshot_len = len;
                }
                c.retry_at = 0;
                CompactionEvent::Finished {
                    revision: done.revision,
                    snapshot_bytes: c.snapshot_len,
                    took: t0.elapsed(),
                    leftover: done.leftover,
                }
            }
            Err(Halt::Stopped) => {
                c.stopped += 1;
                CompactionEvent::Stopped
            }
            Err(Halt::Failed(error)) => {
                c.failed += 1;
                c.last_error = Some(error.clone());
                c.retry_at = c.live_len + shared.config.compact_min_bytes;
                CompactionEvent::Failed { error }
            }
        };
        shared.compaction_changed.notify_all();
        event
    };
    shared.report(&event);
}

/// Folds the frozen log into a new snapshot, from the files: the snapshot
/// at `base` and the frozen log, merged in key order (the snapshot's
/// entries are sorted, the frozen log's newest value of each key is taken).
/// Stops at the next check once the store stops; on any early end, the
/// temp file is removed and nothing else changed.
fn compact_frozen(shared: &Shared, base: u64) -> Result<Compacted, Halt> {
    let dir = &shared.dir;
    let frozen_path = dir.join(FROZEN_WAL_FILE);
    let frozen = fs::read(&frozen_path)?;
    let scan = scan_frozen(&frozen_path, &frozen, base).map_err(|e| Halt::Failed(e.to_string()))?;
    let Some(last) = scan.records.last().map(|r| r.revision) else {
        // The snapshot holds it all already: only the removal is left.
        fs::remove_file(&frozen_path)?;
        sync_dir(dir)?;
        return Ok(Compacted {
            revision: base,
            snapshot_len: None,
            leftover: None,
        });
    };
    shared.report(&CompactionEvent::Started { revision: last });
    if shared.stopping() {
        return Err(Halt::Stopped);
    }
    let snapshot_path = dir.join(SNAPSHOT_FILE);
    let old = match fs::read(&snapshot_path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    let out = merge(shared, &snapshot_path, old.as_deref(), base, &frozen, &scan)?;
    drop(old);

    let temp = dir.join(SNAPSHOT_TEMP_FILE);
    let written = write_in_chunks(shared, &temp, &out)
        .and_then(|()| fs::rename(&temp, &snapshot_path).map_err(Halt::from))
        .and_then(|()| sync_dir(dir).map_err(Halt::from));
    if let Err(e) = written {
        // A partly written temp file holds space a full disk needs back.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    // The snapshot is in and durable; only now may the frozen log go. A
    // seal waiting here leaves it: every reader skips what it holds.
    let leftover = if shared.stopping() {
        Some("the store was sealed before the frozen log was removed".to_owned())
    } else {
        fs::remove_file(&frozen_path)
            .and_then(|()| sync_dir(dir))
            .err()
            .map(|e| format!("removing the frozen log: {e}"))
    };
    Ok(Compacted {
        revision: last,
        snapshot_len: Some(out.len() as u64),
        leftover,
    })
}

/// The new snapshot's bytes: the old one's entries (`old`, at `base`) with
/// the frozen log's records over them.
fn merge(
    shared: &Shared,
    snapshot_path: &Path,
    old: Option<&[u8]>,
    base: u64,
    frozen: &[u8],
    scan: &wal::Scan,
) -> Result<Vec<u8>, Halt> {
    let failed = |e: StoreError| Halt::Failed(e.to_string());
    let mut view = match old {
        Some(bytes) => SnapshotView::parse(snapshot_path, bytes).map_err(failed)?,
        None => SnapshotView::empty(),
    };
    if view.revision != base {
        return Err(Halt::Failed(format!(
            "the snapshot holds revision {}, not {base}: it changed under the compaction",
            view.revision
        )));
    }
    let mut hash = LogHash::from_lanes(view.lanes);
    for body in &scan.bodies {
        hash.update(&frozen[body.clone()]);
    }
    let revision = scan.records.last().map_or(base, |r| r.revision);
    // The newest value of each key the frozen log wrote, in key order.
    let newer: BTreeMap<&[u8], &[u8]> = scan
        .records
        .iter()
        .map(|r| (r.key.as_slice(), r.value.as_slice()))
        .collect();

    let mut out = Vec::with_capacity(old.map_or(0, <[u8]>::len) + frozen.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&revision.to_le_bytes());
    for lane in hash.lanes() {
        out.extend_from_slice(&lane.to_le_bytes());
    }
    out.extend_from_slice(&0u64.to_le_bytes());
    let push = |out: &mut Vec<u8>, k: &[u8], v: &[u8]| {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    };
    let mut newer = newer.into_iter().peekable();
    let mut older = view.next_entry(snapshot_path).map_err(failed)?;
    let mut count = 0u64;
    let mut previous: Option<&[u8]> = None;
    loop {
        if count % MERGE_STEP == 0 && shared.stopping() {
            return Err(Halt::Stopped);
        }
        let (key, value, take_old, take_new) = match (older, newer.peek()) {
            (None, None) => break,
            (Some((k, v)), None) => (k, v, true, false),
            (None, Some(&(k, v))) => (k, v, false, true),
            (Some((ok, ov)), Some(&(nk, nv))) => match ok.cmp(nk) {
                std::cmp::Ordering::Less => (ok, ov, true, false),
                std::cmp::Ordering::Greater => (nk, nv, false, true),
                std::cmp::Ordering::Equal => (nk, nv, true, true),
            },
        };
        if take_old {
            // Merging needs the order the snapshot promises; a snapshot
            // out of order would come out with a key twice.
            if let (Some(p), Some((k, _))) = (previous, older)
                && p >= k
            {
                return Err(Halt::Failed(
                    "the snapshot's entries are not in key order".into(),
                ));
            }
            previous = older.map(|(k, _)| k);
            older = view.next_entry(snapshot_path).map_err(failed)?;
        }
        if take_new {
            newer.next();
        }
        push(&mut out, key, value);
        count += 1;
    }
    out[SNAPSHOT_COUNT_AT..SNAPSHOT_COUNT_AT + 8].copy_from_slice(&count.to_le_bytes());
    let sum = hash64(SNAPSHOT_SEED, &out);
    out.extend_from_slice(&sum.to_le_bytes());
    Ok(out)
}

/// Writes `bytes` to `path` (created `0600`) in chunks, each fsynced, so
/// that a stop waits for one chunk at most, never for the whole file.
fn write_in_chunks(shared: &Shared, path: &Path, bytes: &[u8]) -> Result<(), Halt> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let mut written = 0u64;
    for chunk in bytes.chunks(shared.config.compaction_chunk.max(1)) {
        if shared.stopping() {
            return Err(Halt::Stopped);
        }
        file.write_all(chunk)?;
        file.sync_data()?;
        written += chunk.len() as u64;
        shared.report(&CompactionEvent::Progress {
            written,
            total: bytes.len() as u64,
        });
    }
    if shared.stopping() {
        return Err(Halt::Stopped);
    }
    file.sync_all()?;
    Ok(())
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a seal record says.
struct SealRecord {
    revision: u64,
    lanes: [u64; 4],
}

/// `magic, revision u64, 4 lanes u64, checksum u64` (little-endian).
///
/// Written through a temp file and a rename, and not fsynced: only a
/// successor that is running now reads it (the page cache shows it the
/// bytes), and it is only a hint, checked against the state read. After
/// a crash nobody uses it: a cold start reads the state whole. On a
/// failure (a full disk) a record of an older seal is removed rather
/// than left, which frees space; even left, it would fail the check and
/// cost the successor only a full read.
fn write_seal_record(dir: &Path, revision: u64, lanes: [u64; 4]) {
    let mut out = Vec::with_capacity(56);
    out.extend_from_slice(SEALED_MAGIC);
    out.extend_from_slice(&revision.to_le_bytes());
    for lane in lanes {
        out.extend_from_slice(&lane.to_le_bytes());
    }
    let sum = hash64(SEALED_SEED, &out);
    out.extend_from_slice(&sum.to_le_bytes());
    let temp = dir.join(SEALED_TEMP);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| f.write_all(&out))
        .and_then(|()| fs::rename(&temp, dir.join(SEALED_FILE)));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
        let _ = fs::remove_file(dir.join(SEALED_FILE));
    }
}

fn read_seal_record(dir: &Path) -> Option<SealRecord> {
    let bytes = fs::read(dir.join(SEALED_FILE)).ok()?;
    if bytes.len() != 56 || &bytes[..8] != SEALED_MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(48);
    let mut r = Cursor { bytes: sum, at: 0 };
    if r.u64()? != hash64(SEALED_SEED, body) {
        return None;
    }
    let mut r = Cursor { bytes: body, at: 8 };
    Some(SealRecord {
        revision: r.u64()?,
        lanes: [r.u64()?, r.u64()?, r.u64()?, r.u64()?],
    })
}

/// A key and its value, borrowed from a snapshot's bytes.
type Entry<'a> = (&'a [u8], &'a [u8]);

/// A snapshot's header, its checksum checked, and its entries to read in
/// order:
/// `magic, revision u64, 4 lanes u64, count u64, (klen u32, vlen u32, key,
/// value)*, checksum u64` (little-endian; entries sorted by key).
struct SnapshotView<'a> {
    revision: u64,
    lanes: [u64; 4],
    /// Entries not read yet.
    left: u64,
    entries: Cursor<'a>,
}

impl<'a> SnapshotView<'a> {
    /// The state without a snapshot.
    fn empty() -> SnapshotView<'static> {
        SnapshotView {
            revision: 0,
            lanes: LogHash::new().lanes(),
            left: 0,
            entries: Cursor { bytes: &[], at: 0 },
        }
    }

    fn parse(path: &Path, bytes: &'a [u8]) -> Result<SnapshotView<'a>, StoreError> {
        // Written to a temp file and renamed, a snapshot is whole or
        // absent; any damage is real damage.
        let fixed = SNAPSHOT_COUNT_AT + 8;
        if bytes.len() < fixed + 8 || &bytes[..8] != SNAPSHOT_MAGIC {
            return Err(damaged(path, "not a snapshot (bad magic or too short)"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let mut reader = Cursor { bytes: sum, at: 0 };
        if reader.u64() != Some(hash64(SNAPSHOT_SEED, body)) {
            return Err(damaged(path, "the checksum does not match"));
        }
        let mut r = Cursor { bytes: body, at: 8 };
        let header = (|| {
            let revision = r.u64()?;
            let lanes = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
            Some((revision, lanes, r.u64()?))
        })();
        let (revision, lanes, left) =
            header.ok_or_else(|| damaged(path, "the entries do not fit the file"))?;
        Ok(SnapshotView {
            revision,
            lanes,
            left,
            entries: r,
        })
    }

    /// The next entry; `None` after the last, once the file is seen to end
    /// there.
    fn next_entry(&mut self, path: &Path) -> Result<Option<Entry<'a>>, StoreError> {
        let r = &mut self.entries;
        if self.left == 0 {
            return if r.at == r.bytes.len() {
                Ok(None)
            } else {
                Err(damaged(path, "the entries do not fit the file"))
            };
        }
        self.left -= 1;
        let entry = (|| {
            let klen = r.u32()? as usize;
            let vlen = r.u32()? as usize;
            Some((r.take(klen)?, r.take(vlen)?))
        })();
        entry
            .map(Some)
            .ok_or_else(|| damaged(path, "the entries do not fit the file"))
    }
}

fn damaged(path: &Path, detail: &str) -> StoreError {
    corrupt(
        path,
        format!("{detail}; restore the data dir from a backup"),
    )
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(b))
    }
}
