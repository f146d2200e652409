//! The supervisor's journal record: where a handoff stood, on disk.
//!
//! The supervisor machine emits a [`JournalRecord`] after each acknowledged
//! step; the adapter writes it atomically. The encoding is the one the
//! reference crate's `StateJournal` gets from postcard, field for field, so a
//! journal left by a reference supervisor is readable here, and the reverse.

use core::fmt;

use crate::codec::{Reader, Writer};
use crate::error::{DecodeError, DecodeErrorKind};
use crate::wire::HandoffId;

/// The last acknowledged step of an in-flight handoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JournalPhase {
    /// Both peers answered `Hello`; nothing else has happened.
    Negotiating,
    /// The incumbent reported `Drained`; `SealRequest` is next.
    Draining,
    /// The incumbent reported `SealComplete` and released the lock; `Begin`
    /// is next.
    Sealing,
    /// `Begin` was sent to the successor; `Ready` is awaited.
    AwaitingReady,
    /// `Commit` was sent; only clean-up remains.
    Committed,
    /// The handoff aborted after the seal; the incumbent was told to resume.
    ResumingAfterAbort,
}

impl JournalPhase {
    const ALL: [JournalPhase; 6] = [
        JournalPhase::Negotiating,
        JournalPhase::Draining,
        JournalPhase::Sealing,
        JournalPhase::AwaitingReady,
        JournalPhase::Committed,
        JournalPhase::ResumingAfterAbort,
    ];

    /// Whether the incumbent may have released the data-dir lock by now, so
    /// a restarted supervisor must not assume the old binary still writes.
    /// `Draining` counts: it is the last record before `SealRequest` goes
    /// out (no `Sealing` record is written), and records are written behind
    /// the protocol, so a journal left at `Draining` may follow a seal.
    pub fn after_seal(self) -> bool {
        matches!(
            self,
            JournalPhase::Draining
                | JournalPhase::Sealing
                | JournalPhase::AwaitingReady
                | JournalPhase::Committed
                | JournalPhase::ResumingAfterAbort
        )
    }
}

impl fmt::Display for JournalPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JournalPhase::Negotiating => "negotiating",
            JournalPhase::Draining => "draining",
            JournalPhase::Sealing => "sealing",
            JournalPhase::AwaitingReady => "awaiting-ready",
            JournalPhase::Committed => "committed",
            JournalPhase::ResumingAfterAbort => "resuming-after-abort",
        })
    }
}

/// One journal entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalRecord {
    /// The handoff in flight.
    pub handoff_id: HandoffId,
    /// How far it got.
    pub phase: JournalPhase,
    /// The incumbent's pid, as it announced in `Hello`.
    pub incumbent_pid: u32,
    /// The successor's pid, once spawned.
    pub successor_pid: Option<u32>,
    /// Wall-clock start of the handoff, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
}

impl JournalRecord {
    /// The longest encoding: id 17, phase 1, pid 5, option 6, time 10.
    pub const MAX_LEN: usize = 39;

    /// Encodes into `out`, returning the length used.
    pub fn encode(&self, out: &mut [u8; Self::MAX_LEN]) -> usize {
        let mut w = Writer::new(out);
        w.len_prefixed(self.handoff_id.as_bytes());
        w.varint(self.phase as u64);
        w.varint(u64::from(self.incumbent_pid));
        match self.successor_pid {
            None => w.byte(0),
            Some(pid) => {
                w.byte(1);
                w.varint(u64::from(pid));
            }
        }
        w.varint(self.started_at_unix_ms);
        w.position()
    }

    /// Decodes a whole journal file; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, DecodeError> {
        let mut r = Reader::new(bytes);
        Self::read(&mut r).map_err(|e| r.error(e))
    }

    fn read(r: &mut Reader<'_>) -> Result<JournalRecord, DecodeErrorKind> {
        let len = r.field("handoff_id").u64()?;
        if len != 16 {
            return Err(DecodeErrorKind::BadHandoffIdLength(len));
        }
        let handoff_id = HandoffId::from_bytes(*r.array_ref::<16>()?);
        let index = r.field("phase").u32()?;
        let phase = *JournalPhase::ALL
            .get(index as usize)
            .ok_or(DecodeErrorKind::UnknownPhase(index))?;
        let incumbent_pid = r.field("incumbent_pid").u32()?;
        let successor_pid = match r.field("successor_pid").byte()? {
            0 => None,
            1 => Some(r.u32()?),
            tag => return Err(DecodeErrorKind::BadOption(tag)),
        };
        let started_at_unix_ms = r.field("started_at_unix_ms").u64()?;
        r.finish()?;
        Ok(JournalRecord {
            handoff_id,
            phase,
            incumbent_pid,
            successor_pid,
            started_at_unix_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_at_their_longest() {
        let rec = JournalRecord {
            handoff_id: HandoffId::from_bytes([9; 16]),
            phase: JournalPhase::ResumingAfterAbort,
            incumbent_pid: u32::MAX,
            successor_pid: Some(u32::MAX),
            started_at_unix_ms: u64::MAX,
        };
        let mut buf = [0u8; JournalRecord::MAX_LEN];
        let n = rec.encode(&mut buf);
        assert_eq!(n, JournalRecord::MAX_LEN);
        assert_eq!(JournalRecord::decode(&buf[..n]), Ok(rec));
    }

    #[test]
    fn only_a_journal_left_before_the_drain_record_rules_out_a_seal() {
        // `Draining` is the last record before `SealRequest` goes out, and
        // records are written behind the protocol: it may follow a seal.
        for phase in JournalPhase::ALL {
            assert_eq!(
                phase.after_seal(),
                phase != JournalPhase::Negotiating,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn a_truncated_or_padded_journal_is_rejected() {
        let rec = JournalRecord {
            handoff_id: HandoffId::from_bytes([1; 16]),
            phase: JournalPhase::Sealing,
            incumbent_pid: 7,
            successor_pid: None,
            started_at_unix_ms: 1,
        };
        let mut buf = [0u8; JournalRecord::MAX_LEN];
        let n = rec.encode(&mut buf);
        assert!(JournalRecord::decode(&buf[..n - 1]).is_err());
        assert!(JournalRecord::decode(&buf[..n + 1]).is_err());
    }
}
