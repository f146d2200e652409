//! The key-value state in a data dir: a snapshot (`snapshot`) and a
//! write-ahead log (`wal`, format in [`crate::wal`]).
//!
//! Writes go through one writer thread that commits in groups: whatever
//! `set` calls are waiting when it comes round go out in one `write` and one
//! `fdatasync`, and each caller then gets its own revision. The in-memory
//! map changes only after the `fdatasync`, so a read never sees a value that
//! a crash could take back.
//!
//! [`Store::seal`] stops the writer, writes a snapshot atomically and empties
//! the log; [`Store::open`] reads the snapshot, replays the log over it and
//! cuts off a torn tail. The fingerprint is a running hash of every record
//! ever logged (the snapshot carries its state), so it survives compaction:
//! the process that opens a sealed dir computes the fingerprint the sealer
//! reported.
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
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use crate::hash::{LogHash, hash64};
use crate::wal::{self, MAX_KEY, MAX_VALUE};

/// The log's file name in the data dir.
pub const WAL_FILE: &str = "wal";
/// The snapshot's file name in the data dir.
pub const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TEMP: &str = "snapshot.tmp";
const SNAPSHOT_MAGIC: &[u8; 8] = b"KVDSNAP1";
const SNAPSHOT_SEED: u64 = 0x534e_4150_5f73_756d;
/// A batch stops growing here, so one slow fsync does not hold a huge
/// buffer and a huge list of waiters.
const MAX_BATCH_RECORDS: usize = 4096;

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
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "store I/O: {e}"),
            StoreError::Corrupt { file, detail } => write!(f, "{}: {detail}", file.display()),
            StoreError::Closed => f.write_str("the store is sealed"),
            StoreError::WriteFailed(e) => write!(f, "write not saved: {e}"),
            StoreError::Invalid(why) => f.write_str(why),
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

/// What [`Store::open`] found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The revision after replay.
    pub revision: u64,
    /// The snapshot's revision (0 without a snapshot).
    pub snapshot_revision: u64,
    /// Log records replayed over the snapshot.
    pub replayed: usize,
    /// Bytes of torn tail cut off the log.
    pub torn_bytes_dropped: u64,
}

/// What [`Store::seal`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The last revision written.
    pub revision: u64,
    /// The log's fingerprint at that revision.
    pub fingerprint: [u8; 32],
    /// Why the log could not be compacted into a snapshot (e.g. the disk is
    /// full), if it could not. The seal holds all the same: the log on disk
    /// is complete, and the next opener replays it.
    pub compaction_error: Option<String>,
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
    closing: bool,
}

struct Data {
    map: HashMap<Vec<u8>, Vec<u8>>,
    revision: u64,
    log_hash: LogHash,
    batches: u64,
    records: u64,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    data: RwLock<Data>,
}

/// A poisoned lock means a thread panicked mid-update of plain counters and
/// maps; the data is still the best we have, so keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Opens the state in `dir` (created if missing): reads the snapshot,
    /// replays the log, cuts off a torn tail, and starts the writer. The
    /// caller must hold the data-dir lock: opening may write (the cut).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir)?;
        // A temp snapshot is never part of the state (its rename is what
        // commits it); one a crash left behind only holds space.
        let _ = fs::remove_file(dir.join(SNAPSHOT_TEMP));
        let (mut map, snapshot_revision, lanes) = read_snapshot(dir)?;
        let mut log_hash = LogHash::from_lanes(lanes);
        let mut revision = snapshot_revision;

        let wal_path = dir.join(WAL_FILE);
        let created = !wal_path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&wal_path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let scan = wal::scan(&bytes, snapshot_revision).map_err(|c| StoreError::Corrupt {
            file: wal_path.clone(),
            detail: c.to_string(),
        })?;
        for (record, body) in scan.records.iter().zip(&scan.bodies) {
            log_hash.update(&bytes[body.clone()]);
            map.insert(record.key.clone(), record.value.clone());
            revision = record.revision;
        }
        let mut torn_bytes_dropped = 0;
        if bytes.len() < wal::MAGIC.len() {
            // New, or its creation was cut short: start it properly.
            torn_bytes_dropped = bytes.len() as u64;
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(wal::MAGIC)?;
            file.sync_all()?;
        } else if scan.valid_len < bytes.len() {
            torn_bytes_dropped = (bytes.len() - scan.valid_len) as u64;
            file.set_len(scan.valid_len as u64)?;
            file.sync_all()?;
        }
        if created {
            sync_dir(dir)?;
        }
        let good_len = file.seek(SeekFrom::End(0))?;
        let log = Log {
            file,
            good_len,
            dirty: false,
        };

        let opened = OpenReport {
            revision,
            snapshot_revision,
            replayed: scan.records.len(),
            torn_bytes_dropped,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            data: RwLock::new(Data {
                map: std::mem::take(&mut map),
                revision,
                log_hash,
                batches: 0,
                records: 0,
            }),
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
        let d = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        StoreStats {
            batches: d.batches,
            records: d.records,
            revision: d.revision,
            keys: d.map.len(),
        }
    }

    /// A copy of every key and value, sorted.
    pub fn to_map(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let d = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        d.map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Stops the writer once it has answered what is queued (after this no
    /// write is accepted); returns its log.
    fn stop_writer(&self) -> Result<Log, StoreError> {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_all();
        let handle = lock(&self.writer).take().ok_or(StoreError::Closed)?;
        handle
            .join()
            .map_err(|_| StoreError::WriteFailed("the writer thread panicked; restart kvd".into()))
    }

    /// Finishes the queued writes, makes sure the log holds exactly what was
    /// acknowledged and is on disk, then compacts it: writes a snapshot
    /// atomically and empties the log. After this the store accepts no
    /// writes (reads still work) and another process may open the dir. On
    /// error the log on disk is still complete: opening it again recovers
    /// everything acknowledged.
    ///
    /// The seal needs no new space. The log replayed over the snapshot
    /// already on disk is the whole state and reproduces the fingerprint, so
    /// the new snapshot is only compaction; but it needs as much new space
    /// as the state, which a full disk does not have. Failing the seal for
    /// it would abort every handoff until someone frees space, so a
    /// compaction that fails is reported in [`Sealed::compaction_error`]
    /// and the sealed state is the complete log; the next seal with space
    /// compacts it.
    pub fn seal(&self) -> Result<Sealed, StoreError> {
        let mut log = self.stop_writer()?;
        // Cutting a failed write's leftovers frees space rather than taking
        // it; only an I/O error fails here (and the handoff aborts).
        log.repair()?;
        log.file.sync_all()?;
        let data = self.shared.data.read().unwrap_or_else(|e| e.into_inner());
        let compaction_error = compact(&self.dir, &data, &log.file)
            .err()
            .map(|e| e.to_string());
        Ok(Sealed {
            revision: data.revision,
            fingerprint: data.log_hash.digest(),
            compaction_error,
        })
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // What was acknowledged is already fsynced; this only ends the
        // thread (after it answers whatever is queued).
        let _ = self.stop_writer();
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
}

fn writer_loop(shared: &Shared, mut log: Log) -> Log {
    let mut buf = Vec::new();
    let mut bodies = Vec::new();
    loop {
        let batch: Vec<Pending> = {
            let mut q = lock(&shared.queue);
            while q.pending.is_empty() && !q.closing {
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.pending.is_empty() {
                return log;
            }
            let n = q.pending.len().min(MAX_BATCH_RECORDS);
            q.pending.drain(..n).collect()
        };
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
            bodies.push(wal::encode(base + 1 + i as u64, &p.key, &p.value, &mut buf));
        }
        match log.append(&buf) {
            Ok(()) => {
                {
                    let mut d = shared.data.write().unwrap_or_else(|e| e.into_inner());
                    for (p, body) in batch.iter().zip(&bodies) {
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
}

/// Makes a rename or a new file in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a snapshot of `data`, then empties the log. Whatever step fails,
/// the files open to `data`: the old snapshot and the whole log, the new
/// snapshot and the whole log (opening skips the records it holds), or the
/// new snapshot and an empty log.
fn compact(dir: &Path, data: &Data, log: &File) -> io::Result<()> {
    write_snapshot(dir, data)?;
    // The snapshot holds every record now; a crash before this cut only
    // leaves records the next open skips.
    log.set_len(wal::MAGIC.len() as u64)?;
    log.sync_all()
}

/// `magic, revision u64, 4 lanes u64, count u64, (klen u32, vlen u32, key,
/// value)*, checksum u64` (little-endian; entries sorted by key).
fn write_snapshot(dir: &Path, data: &Data) -> io::Result<()> {
    let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = data.map.iter().collect();
    entries.sort_unstable();
    let size: usize = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(64 + size);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&data.revision.to_le_bytes());
    for lane in data.log_hash.lanes() {
        out.extend_from_slice(&lane.to_le_bytes());
    }
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (k, v) in entries {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(v);
    }
    let sum = hash64(SNAPSHOT_SEED, &out);
    out.extend_from_slice(&sum.to_le_bytes());

    let temp = dir.join(SNAPSHOT_TEMP);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut f| {
            f.write_all(&out)?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&temp, dir.join(SNAPSHOT_FILE)));
    if let Err(e) = written {
        // A partly written temp file holds space a full disk needs back.
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir)
}

type SnapshotContents = (HashMap<Vec<u8>, Vec<u8>>, u64, [u64; 4]);

fn read_snapshot(dir: &Path) -> Result<SnapshotContents, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((HashMap::new(), 0, LogHash::new().lanes()));
        }
        Err(e) => return Err(e.into()),
    };
    // Written to a temp file and renamed, a snapshot is whole or absent; any
    // damage is real damage.
    let corrupt = |detail: &str| StoreError::Corrupt {
        file: path.clone(),
        detail: format!("{detail}; restore the data dir from a backup"),
    };
    let fixed = 8 + 8 + 32 + 8;
    if bytes.len() < fixed + 8 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a snapshot (bad magic or too short)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    let mut reader = Cursor { bytes: sum, at: 0 };
    if reader.u64() != Some(hash64(SNAPSHOT_SEED, body)) {
        return Err(corrupt("the checksum does not match"));
    }
    let mut r = Cursor { bytes: body, at: 8 };
    let parse = |r: &mut Cursor<'_>| -> Option<SnapshotContents> {
        let revision = r.u64()?;
        let lanes = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
        let count = r.u64()?;
        let mut map = HashMap::with_capacity(usize::try_from(count).ok()?.min(1 << 20));
        for _ in 0..count {
            let klen = r.u32()? as usize;
            let vlen = r.u32()? as usize;
            let key = r.take(klen)?.to_vec();
            let value = r.take(vlen)?.to_vec();
            map.insert(key, value);
        }
        (r.at == r.bytes.len()).then_some((map, revision, lanes))
    };
    parse(&mut r).ok_or_else(|| corrupt("the entries do not fit the file"))
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
