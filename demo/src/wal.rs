//! The write-ahead log's format: an 8-byte magic, then records.
//!
//! ```text
//! record = len: u32 LE        bytes in body
//!          checksum: u64 LE   hash64(CHECKSUM_SEED, body)
//!          body = revision: u64 LE
//!                 key_len: u32 LE
//!                 key: [u8; key_len]
//!                 value: [u8; len - 12 - key_len]
//! ```
//!
//! Revisions are consecutive. A batch of records goes out in one write
//! followed by one `fdatasync`, and nothing in it is acknowledged before
//! that returns, so only the last batch can be damaged by a crash. [`scan`]
//! tells that torn tail (cut off at the first bad record and dropped) from
//! damage further back (an error: the log lost acknowledged writes, and
//! guessing past it would serve wrong data).
//!
//! The log of a data dir may be two files of this format (the frozen one a
//! compaction folds into the snapshot, then the live one; see
//! [`crate::store`]); revisions run on from one file into the next.
//! [`scan_continuing`] reads what was appended to a file since a reader
//! stopped in it.

use std::fmt;

use crate::hash::hash64;

/// The first bytes of every log file.
pub const MAGIC: &[u8; 8] = b"KVDWAL01";
/// Bytes before a record's body.
pub const HEADER_LEN: usize = 12;
/// Bytes of a body before its key.
const BODY_FIXED: usize = 12;
/// The longest key.
pub const MAX_KEY: usize = 1024;
/// The longest value.
pub const MAX_VALUE: usize = 60 * 1024;
/// The longest body: anything longer is damage, not a record.
const MAX_BODY: usize = BODY_FIXED + MAX_KEY + MAX_VALUE;
/// Seeds record checksums, so a snapshot's checksum never matches a record.
const CHECKSUM_SEED: u64 = 0x5741_4c5f_7265_6331;

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its revision.
    pub revision: u64,
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

/// Appends the encoding of one record to `out`; returns the body's range in
/// `out` (what the log fingerprint hashes).
pub fn encode(
    revision: u64,
    key: &[u8],
    value: &[u8],
    out: &mut Vec<u8>,
) -> std::ops::Range<usize> {
    let body_len = BODY_FIXED + key.len() + value.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]);
    let body = out.len();
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let sum = hash64(CHECKSUM_SEED, &out[body..]);
    out[start + 4..start + 12].copy_from_slice(&sum.to_le_bytes());
    body..out.len()
}

/// The log holds damage before its last batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corrupt {
    /// Where the first bad record starts, from the start of the file.
    pub offset: u64,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Corrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the write-ahead log is damaged at byte {}: {}; records after it follow, so this \
             is not a torn tail from a crash. Restore the data dir from a backup",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for Corrupt {}

/// What [`scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// The good records, in order, with revisions above the base.
    pub records: Vec<Record>,
    /// Each good record's body, for the fingerprint (same order).
    pub bodies: Vec<std::ops::Range<usize>>,
    /// Where the good part of the file ends: truncate the file here.
    pub valid_len: usize,
    /// Why the tail after `valid_len` was dropped, if it was.
    pub torn: Option<String>,
    /// The first revision in the file (including one at or below the
    /// base), if any record is there: where the file continues another.
    pub first_revision: Option<u64>,
    /// The last revision in the file (including those at or below the
    /// base), if any record is there.
    pub last_revision: Option<u64>,
}

/// Reads a whole log file. Records at or below `base` (the revision the
/// files before this one hold) are checked but skipped: a compaction that
/// stopped between renaming its snapshot in and removing the frozen log
/// leaves them behind, and so did a crash in the seal's compaction of
/// earlier versions, which emptied the log in place. The file must begin with
/// [`MAGIC`], except that an empty file, or one holding a prefix of it, is a
/// log whose creation was cut short.
pub fn scan(file: &[u8], base: u64) -> Result<Scan, Corrupt> {
    if file.len() < MAGIC.len() {
        if MAGIC.starts_with(file) || file.iter().all(|&b| b == 0) {
            return Ok(Scan {
                torn: (!file.is_empty()).then(|| "a partly written header".to_owned()),
                ..Scan::default()
            });
        }
        return Err(Corrupt {
            offset: 0,
            reason: "the file does not start with the log's magic bytes".into(),
        });
    }
    if &file[..MAGIC.len()] != MAGIC {
        return Err(Corrupt {
            offset: 0,
            reason: "the file does not start with the log's magic bytes".into(),
        });
    }
    scan_records(file, MAGIC.len(), 0, base, First::AtMost(base + 1))
}

/// Reads the records of a log file from byte `offset` on, `tail` being the
/// file's bytes from there: the part written since a reader stopped at
/// `offset`, at the end of a record. The first record must be `next`, with
/// no repeats allowed: the records before `offset` were already taken.
/// `valid_len` and the bodies are relative to `tail`; a corruption's offset
/// is from the start of the file.
pub fn scan_continuing(tail: &[u8], offset: u64, next: u64) -> Result<Scan, Corrupt> {
    scan_records(
        tail,
        0,
        offset,
        next.saturating_sub(1),
        First::Exactly(next),
    )
}

/// What the first record's revision may be.
#[derive(Clone, Copy)]
enum First {
    /// At most this (a file may begin with revisions a snapshot holds).
    AtMost(u64),
    /// This one and no other.
    Exactly(u64),
}

/// Reads records from `pos` in `file` to its end; `shift` is added to
/// offsets in errors. Records at or below `base` are checked and skipped.
fn scan_records(
    file: &[u8],
    mut pos: usize,
    shift: u64,
    base: u64,
    first: First,
) -> Result<Scan, Corrupt> {
    let mut scan = Scan {
        valid_len: pos,
        ..Scan::default()
    };
    while pos < file.len() {
        match record_at(file, pos) {
            Ok((record, body, end)) => {
                // The first record may repeat revisions the snapshot holds
                // (unless it must be exactly one); after it, every revision
                // is the one before plus one.
                let (in_order, expected) = match (scan.last_revision, first) {
                    (Some(last), _) => (record.revision == last + 1, last + 1),
                    (None, First::AtMost(at_most)) => (record.revision <= at_most, at_most),
                    (None, First::Exactly(next)) => (record.revision == next, next),
                };
                if !in_order || record.revision == 0 {
                    // The checksum holds, so these bytes were written as
                    // they are: a gap is lost records, not a torn write.
                    return Err(Corrupt {
                        offset: shift + pos as u64,
                        reason: format!(
                            "revision {} where {expected} was expected",
                            record.revision
                        ),
                    });
                }
                scan.first_revision.get_or_insert(record.revision);
                scan.last_revision = Some(record.revision);
                if record.revision > base {
                    scan.records.push(record);
                    scan.bodies.push(body);
                }
                pos = end;
                scan.valid_len = end;
            }
            Err(Bad::Truncated(why)) => {
                scan.torn = Some(why.into());
                return Ok(scan);
            }
            Err(Bad::Invalid { why, end }) => {
                // A record that fails its checks is a torn write if it is the
                // last thing in the file, or if everything from it on is
                // zeros (the file grew but its blocks were never written).
                let zeros = file[pos..].iter().all(|&b| b == 0);
                if end == Some(file.len()) || zeros {
                    scan.torn = Some(why.into());
                    return Ok(scan);
                }
                return Err(Corrupt {
                    offset: shift + pos as u64,
                    reason: why.into(),
                });
            }
        }
    }
    Ok(scan)
}

enum Bad {
    /// The file ends inside the record.
    Truncated(&'static str),
    /// The record is complete (or its length is nonsense) but wrong; `end`
    /// is where it would end if its length can be believed.
    Invalid {
        why: &'static str,
        end: Option<usize>,
    },
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn record_at(file: &[u8], pos: usize) -> Result<(Record, std::ops::Range<usize>, usize), Bad> {
    let rest = file.len() - pos;
    if rest < HEADER_LEN {
        return Err(Bad::Truncated("a partial record header"));
    }
    let len = u32_at(file, pos) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Err(Bad::Invalid {
            why: "a record length out of range",
            end: None,
        });
    }
    let body_start = pos + HEADER_LEN;
    let end = body_start + len;
    if end > file.len() {
        return Err(Bad::Truncated("a partial record"));
    }
    let body = &file[body_start..end];
    if hash64(CHECKSUM_SEED, body) != u64_at(file, pos + 4) {
        return Err(Bad::Invalid {
            why: "a record whose checksum does not match",
            end: Some(end),
        });
    }
    let revision = u64_at(body, 0);
    let key_len = u32_at(body, 8) as usize;
    if key_len == 0 || key_len > MAX_KEY || BODY_FIXED + key_len > len {
        return Err(Bad::Invalid {
            why: "a record whose key length does not fit",
            end: Some(end),
        });
    }
    let key = body[BODY_FIXED..BODY_FIXED + key_len].to_vec();
    let value = body[BODY_FIXED + key_len..].to_vec();
    Ok((
        Record {
            revision,
            key,
            value,
        },
        body_start..end,
        end,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(revs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for r in revs {
            encode(r, format!("k{r}").as_bytes(), b"value", &mut out);
        }
        out
    }

    #[test]
    fn a_clean_log_scans_whole() {
        let file = log(1..=5);
        let s = scan(&file, 0).unwrap();
        assert_eq!(s.records.len(), 5);
        assert_eq!(s.valid_len, file.len());
        assert!(s.torn.is_none());
        assert_eq!(s.records[4].key, b"k5");
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let whole = log(1..=3);
        let good = log(1..=2).len();
        for cut in good..whole.len() {
            let s = scan(&whole[..cut], 0).unwrap();
            assert_eq!(s.records.len(), 2, "cut at {cut}");
            assert_eq!(s.valid_len, good);
            assert_eq!(s.torn.is_some(), cut > good);
        }
    }

    #[test]
    fn a_flipped_byte_in_the_middle_is_an_error_and_at_the_end_is_torn() {
        let mut file = log(1..=3);
        let second = log(1..=1).len();
        file[second + HEADER_LEN + 2] ^= 0x40;
        assert_eq!(scan(&file, 0).unwrap_err().offset, second as u64);

        let mut file = log(1..=3);
        let last = file.len() - 1;
        file[last] ^= 0x40;
        let s = scan(&file, 0).unwrap();
        assert_eq!(s.records.len(), 2);
        assert!(s.torn.is_some());
    }

    #[test]
    fn zeros_after_the_good_part_are_torn() {
        let mut file = log(1..=2);
        let good = file.len();
        file.extend_from_slice(&[0u8; 300]);
        let s = scan(&file, 0).unwrap();
        assert_eq!(s.valid_len, good);
        assert!(s.torn.is_some());
    }

    #[test]
    fn records_the_snapshot_holds_are_skipped_and_gaps_are_errors() {
        let file = log(3..=6);
        let s = scan(&file, 4).unwrap();
        let revs: Vec<u64> = s.records.iter().map(|r| r.revision).collect();
        assert_eq!(revs, [5, 6]);
        assert!(scan(&file, 1).is_err(), "revisions 2 are missing");
        assert_eq!((s.first_revision, s.last_revision), (Some(3), Some(6)));
    }

    #[test]
    fn a_continuing_scan_takes_exactly_the_next_revision() {
        let file = log(1..=6);
        let at = log(1..=3).len();
        let s = scan_continuing(&file[at..], at as u64, 4).unwrap();
        let revs: Vec<u64> = s.records.iter().map(|r| r.revision).collect();
        assert_eq!(revs, [4, 5, 6]);
        assert_eq!(s.valid_len, file.len() - at);
        assert_eq!(&file[at..][s.bodies[0].clone()][..8], &4u64.to_le_bytes());
        // Nothing written since: nothing to read.
        let s = scan_continuing(&[], file.len() as u64, 7).unwrap();
        assert!(s.records.is_empty() && s.torn.is_none());
        // A repeat or a gap where the reader stopped is damage, reported
        // at its place in the file.
        let e = scan_continuing(&file[at..], at as u64, 3).unwrap_err();
        assert_eq!(e.offset, at as u64);
        assert!(scan_continuing(&file[at..], at as u64, 5).is_err());
        // A torn tail is reported as such.
        let s = scan_continuing(&file[at..file.len() - 3], at as u64, 4).unwrap();
        assert_eq!(s.records.len(), 2);
        assert!(s.torn.is_some());
    }
}
