//! The supervisor's journal file.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use handoff_core::{DecodeError, JournalRecord};

use super::sys::{fsync_dir, parent_dir};

/// Why the journal could not be read.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// It did not decode; it was renamed to `moved_to` so the next start
    /// is clean, and is kept there for diagnosis.
    Corrupt {
        /// What was wrong.
        error: DecodeError,
        /// Where it is now.
        moved_to: PathBuf,
    },
    /// The system refused.
    Io(io::Error),
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalError::Corrupt { error, moved_to } => write!(
                f,
                "the handoff journal was corrupt ({error}); it was moved to {} for \
                 diagnosis and the supervisor continues as if no handoff were in flight",
                moved_to.display()
            ),
            JournalError::Io(e) => write!(
                f,
                "could not read the handoff journal: {e}; check that the journal \
                 directory exists and is readable and writable by this user"
            ),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Corrupt { error, .. } => Some(error),
            JournalError::Io(e) => Some(e),
        }
    }
}

/// The journal at one path.
#[derive(Clone, Debug)]
pub struct Journal {
    path: PathBuf,
}

/// `path` with `suffix` appended to its last component.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

impl Journal {
    /// The journal at `path` (its directory is created on first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Journal { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the record atomically: temp file, fsync, rename, fsync the
    /// directory.
    pub fn write(&self, record: &JournalRecord) -> io::Result<()> {
        let dir = parent_dir(&self.path);
        fs::create_dir_all(dir)?;
        let mut buf = [0; JournalRecord::MAX_LEN];
        let len = record.encode(&mut buf);
        // One supervisor owns a journal, so a fixed temp name cannot be
        // shared by two writers; it also means a crash leaves at most one
        // stray temp file, which the next write truncates.
        let tmp = with_suffix(&self.path, ".tmp");
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&buf[..len])?;
            // The contents must be on disk before the rename can expose them.
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(dir)
    }

    /// The record, `None` if there is none. A corrupt file is set aside.
    pub fn read(&self) -> Result<Option<JournalRecord>, JournalError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(JournalError::Io(e)),
        };
        // A record is at most MAX_LEN bytes; reading one byte more is enough
        // to tell an oversized file is corrupt without loading all of it.
        let mut bytes = Vec::with_capacity(JournalRecord::MAX_LEN + 1);
        file.take(JournalRecord::MAX_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(JournalError::Io)?;
        match JournalRecord::decode(&bytes) {
            Ok(record) => Ok(Some(record)),
            Err(error) => {
                let moved_to = self.set_aside().map_err(JournalError::Io)?;
                Err(JournalError::Corrupt { error, moved_to })
            }
        }
    }

    /// Renames the journal to `<path>.corrupt-<unix millis>` (with a counter
    /// if that exists already, so no earlier evidence is overwritten).
    fn set_aside(&self) -> io::Result<PathBuf> {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let base = format!(".corrupt-{millis}");
        let mut target = with_suffix(&self.path, &base);
        let mut n = 1;
        while target.symlink_metadata().is_ok() {
            target = with_suffix(&self.path, &format!("{base}.{n}"));
            n += 1;
        }
        fs::rename(&self.path, &target)?;
        fsync_dir(parent_dir(&self.path))?;
        Ok(target)
    }

    /// Removes the record (and fsyncs the directory); no record is fine.
    pub fn delete(&self) -> io::Result<()> {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Synced even when the file was already gone: an earlier delete may
        // have crashed between its unlink and its fsync.
        match fsync_dir(parent_dir(&self.path)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// One journal operation for a [`JournalWriter`].
enum JournalOp {
    Write(JournalRecord),
    Clear,
}

/// Writes a handoff's journal records on a thread of its own, in order, so
/// that their fsyncs are off the handoff's critical path: the protocol goes
/// on while the disk catches up. Operations that pile up while one is being
/// written are coalesced into the last, since only the latest record
/// matters to whoever reads the journal after a crash.
#[derive(Debug)]
pub struct JournalWriter {
    tx: Option<std::sync::mpsc::Sender<JournalOp>>,
    thread: Option<std::thread::JoinHandle<bool>>,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl JournalWriter {
    /// Starts the writer thread for `journal`.
    pub fn start(journal: Journal) -> io::Result<JournalWriter> {
        let (tx, rx) = std::sync::mpsc::channel::<JournalOp>();
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = failed.clone();
        let thread = std::thread::Builder::new()
            .name("handoff-journal".into())
            .spawn(move || {
                let mut ok = true;
                while let Ok(first) = rx.recv() {
                    let last = rx.try_iter().last().unwrap_or(first);
                    ok &= match last {
                        JournalOp::Write(record) => journal.write(&record).is_ok(),
                        JournalOp::Clear => journal.delete().is_ok(),
                    };
                    if !ok {
                        seen.store(true, std::sync::atomic::Ordering::Release);
                    }
                }
                ok
            })?;
        Ok(JournalWriter {
            tx: Some(tx),
            thread: Some(thread),
            failed,
        })
    }

    /// Queues `record` to replace the journal.
    pub fn write(&self, record: JournalRecord) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(JournalOp::Write(record));
        }
    }

    /// Queues the journal's removal.
    pub fn clear(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(JournalOp::Clear);
        }
    }

    /// Whether a write or removal has failed so far (without waiting for
    /// those still queued).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until everything queued is on disk; `false` if any write or
    /// removal failed.
    pub fn finish(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        drop(self.tx.take());
        self.thread.take().is_none_or(|t| t.join().unwrap_or(false))
    }
}

impl Drop for JournalWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use handoff_core::{HandoffId, JournalPhase};

    fn record(phase: JournalPhase, successor_pid: Option<u32>) -> JournalRecord {
        JournalRecord {
            handoff_id: HandoffId::from_bytes([7; 16]),
            phase,
            incumbent_pid: 4242,
            successor_pid,
            started_at_unix_ms: 1_700_000_000_000,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_record_round_trips_and_creates_its_directory() {
        let tmp = TempDir::new("jrt");
        let journal = Journal::new(tmp.path().join("a/b/journal"));
        assert!(journal.read().unwrap().is_none());
        let rec = record(JournalPhase::AwaitingReady, Some(99));
        journal.write(&rec).unwrap();
        assert_eq!(journal.read().unwrap(), Some(rec));
        // No temp file is left beside it.
        assert_eq!(entries(&tmp.path().join("a/b")), vec!["journal"]);
    }

    #[test]
    fn a_write_replaces_the_previous_record_whole() {
        let tmp = TempDir::new("jrep");
        let journal = Journal::new(tmp.path().join("journal"));
        journal
            .write(&record(JournalPhase::AwaitingReady, Some(u32::MAX)))
            .unwrap();
        // The longer record is replaced by a shorter one: no tail of the old
        // one may survive (which a write in place without truncation would
        // leave, and decode would reject).
        let short = record(JournalPhase::Negotiating, None);
        journal.write(&short).unwrap();
        assert_eq!(journal.read().unwrap(), Some(short));
        assert_eq!(entries(tmp.path()), vec!["journal"]);
    }

    #[test]
    fn a_stray_temp_file_from_a_crash_does_not_disturb_a_write() {
        let tmp = TempDir::new("jtmp");
        let journal = Journal::new(tmp.path().join("journal"));
        fs::write(tmp.path().join("journal.tmp"), [0xff; 100]).unwrap();
        let rec = record(JournalPhase::Sealing, Some(5));
        journal.write(&rec).unwrap();
        assert_eq!(journal.read().unwrap(), Some(rec));
        assert_eq!(entries(tmp.path()), vec!["journal"]);
    }

    #[test]
    fn a_corrupt_journal_is_set_aside_and_the_next_read_is_empty() {
        let tmp = TempDir::new("jcor");
        let journal = Journal::new(tmp.path().join("journal"));
        fs::write(journal.path(), b"\x10garbage").unwrap();
        let (error, moved_to) = match journal.read() {
            Err(JournalError::Corrupt { error, moved_to }) => (error, moved_to),
            other => panic!("expected Corrupt, got {other:?}"),
        };
        assert!(!journal.path().exists());
        assert_eq!(fs::read(&moved_to).unwrap(), b"\x10garbage");
        let name = moved_to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("journal.corrupt-"), "{name}");
        let text = JournalError::Corrupt {
            error,
            moved_to: moved_to.clone(),
        }
        .to_string();
        assert!(text.contains(&*moved_to.to_string_lossy()), "{text}");
        assert!(journal.read().unwrap().is_none());

        // A second corrupt file in the same millisecond keeps the first.
        fs::write(journal.path(), b"").unwrap();
        let Err(JournalError::Corrupt {
            moved_to: second, ..
        }) = journal.read()
        else {
            panic!("an empty journal is corrupt");
        };
        assert_ne!(second, moved_to);
        assert!(moved_to.exists() && second.exists());
    }

    #[test]
    fn an_oversized_journal_is_corrupt_not_loaded() {
        let tmp = TempDir::new("jbig");
        let journal = Journal::new(tmp.path().join("journal"));
        let mut bytes = [0u8; JournalRecord::MAX_LEN];
        let n = record(JournalPhase::Committed, None).encode(&mut bytes);
        let mut big = bytes[..n].to_vec();
        big.resize(1 << 20, 0);
        fs::write(journal.path(), &big).unwrap();
        assert!(matches!(journal.read(), Err(JournalError::Corrupt { .. })));
    }

    #[test]
    fn delete_removes_the_record_and_is_idempotent() {
        let tmp = TempDir::new("jdel");
        let journal = Journal::new(tmp.path().join("journal"));
        journal
            .write(&record(JournalPhase::Draining, None))
            .unwrap();
        journal.delete().unwrap();
        assert!(journal.read().unwrap().is_none());
        journal.delete().unwrap();
        // Even with no directory at all.
        Journal::new(tmp.path().join("missing/journal"))
            .delete()
            .unwrap();
    }

    #[test]
    fn read_errors_other_than_absence_are_reported() {
        let tmp = TempDir::new("jerr");
        // A directory where the file should be.
        let journal = Journal::new(tmp.path());
        assert!(matches!(journal.read(), Err(JournalError::Io(_))));
        assert!(journal.delete().is_err());
    }
}
