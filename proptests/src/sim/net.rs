//! Stream sockets with delay: a connection is two one-way pipes, each an
//! ordered queue of written chunks that become readable at their own instant.
//!
//! A write becomes readable no earlier than any write before it, so the
//! stream stays ordered however the delays are drawn; a close travels the
//! same way and is seen as EOF only after every byte written before it. A
//! reader takes whatever prefix is readable, in pieces of any size the
//! scheduler picks, which is how a machine gets its frames split at every
//! possible point.

use std::collections::VecDeque;
use std::time::Duration;

use handoff_core::Instant;

/// Index of a connection in the world.
pub(crate) type ConnId = usize;

/// What a reader finds in a pipe right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readable {
    /// This many bytes can be read.
    Bytes(usize),
    /// The writer closed and every byte was read: deliver EOF.
    Eof,
    /// Nothing yet.
    Nothing,
}

/// One direction of a connection.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    /// Written chunks and when each becomes readable (non-decreasing).
    segs: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes of the front chunk already read.
    front_used: usize,
    /// When the last write (or the close) becomes readable.
    last_ready: Instant,
    /// The writer closed; EOF is readable from this instant.
    eof_at: Option<Instant>,
    eof_seen: bool,
    /// The reader closed its end: nothing is read, writes vanish.
    reader_gone: bool,
}

impl Pipe {
    /// Queues `bytes`, readable after `delay` (and after every earlier write).
    pub(crate) fn write(&mut self, now: Instant, delay: Duration, bytes: &[u8]) {
        if self.reader_gone || self.eof_at.is_some() {
            return;
        }
        let ready = (now + delay).max(self.last_ready);
        self.last_ready = ready;
        self.segs.push_back((ready, bytes.to_vec()));
    }

    /// The writer closes: the reader sees EOF after the bytes already sent.
    pub(crate) fn close_writer(&mut self, now: Instant, delay: Duration) {
        if self.eof_at.is_none() {
            let at = (now + delay).max(self.last_ready);
            self.last_ready = at;
            self.eof_at = Some(at);
        }
    }

    /// The reader closes its end; what was in flight is dropped.
    pub(crate) fn close_reader(&mut self) {
        self.reader_gone = true;
        self.segs.clear();
        self.front_used = 0;
    }

    /// What the reader can take at `now`.
    pub(crate) fn readable(&self, now: Instant) -> Readable {
        if self.reader_gone {
            return Readable::Nothing;
        }
        let n: usize = self
            .segs
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, b)| b.len())
            .sum::<usize>()
            - if self.segs.front().is_some_and(|(t, _)| *t <= now) {
                self.front_used
            } else {
                0
            };
        if n > 0 {
            Readable::Bytes(n)
        } else if self.segs.is_empty() && !self.eof_seen && self.eof_at.is_some_and(|t| t <= now) {
            Readable::Eof
        } else {
            Readable::Nothing
        }
    }

    /// The first `max` readable bytes, without consuming them.
    pub(crate) fn peek(&self, now: Instant, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(max.min(4096));
        let mut skip = self.front_used;
        for (t, b) in &self.segs {
            if *t > now || out.len() >= max {
                break;
            }
            let take = (b.len() - skip).min(max - out.len());
            out.extend_from_slice(&b[skip..skip + take]);
            skip = 0;
        }
        out
    }

    /// Removes `n` bytes that were read.
    pub(crate) fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some((_, front)) = self.segs.front() else {
                return;
            };
            let left = front.len() - self.front_used;
            if n < left {
                self.front_used += n;
                return;
            }
            n -= left;
            self.front_used = 0;
            self.segs.pop_front();
        }
    }

    /// Records that EOF was delivered.
    pub(crate) fn take_eof(&mut self) {
        self.eof_seen = true;
    }

    /// When something next becomes readable, if later than `now`.
    pub(crate) fn next_at(&self, now: Instant) -> Option<Instant> {
        if self.reader_gone {
            return None;
        }
        match self.segs.front() {
            Some((t, _)) => (*t > now).then_some(*t),
            None if !self.eof_seen => self.eof_at.filter(|t| *t > now),
            None => None,
        }
    }
}

/// A stream socket between the supervisor (`s`) and a daemon (`d`).
#[derive(Debug)]
pub(crate) struct Conn {
    /// The daemon's pid.
    pub(crate) d_pid: u32,
    /// Supervisor to daemon.
    pub(crate) to_d: Pipe,
    /// Daemon to supervisor.
    pub(crate) to_s: Pipe,
    /// The supervisor's end is open.
    pub(crate) s_open: bool,
    /// The daemon's end is open.
    pub(crate) d_open: bool,
}

impl Conn {
    pub(crate) fn new(d_pid: u32) -> Self {
        Conn {
            d_pid,
            to_d: Pipe::default(),
            to_s: Pipe::default(),
            s_open: true,
            d_open: true,
        }
    }

    /// The supervisor closes its end (or its process died).
    pub(crate) fn close_s(&mut self, now: Instant, delay: Duration) {
        if self.s_open {
            self.s_open = false;
            self.to_d.close_writer(now, delay);
            self.to_s.close_reader();
        }
    }

    /// The daemon closes its end (or its process died).
    pub(crate) fn close_d(&mut self, now: Instant, delay: Duration) {
        if self.d_open {
            self.d_open = false;
            self.to_s.close_writer(now, delay);
            self.to_d.close_reader();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn a_later_write_never_overtakes_an_earlier_one() {
        let mut p = Pipe::default();
        p.write(ms(0), Duration::from_millis(50), b"ab");
        p.write(ms(1), Duration::ZERO, b"cd");
        assert_eq!(p.readable(ms(10)), Readable::Nothing);
        assert_eq!(p.next_at(ms(10)), Some(ms(50)));
        assert_eq!(p.readable(ms(50)), Readable::Bytes(4));
        assert_eq!(p.peek(ms(50), 3), b"abc");
        p.consume(3);
        assert_eq!(p.peek(ms(50), 9), b"d");
    }

    #[test]
    fn eof_comes_after_the_bytes_written_before_the_close() {
        let mut p = Pipe::default();
        p.write(ms(0), Duration::from_millis(5), b"x");
        p.close_writer(ms(0), Duration::ZERO);
        assert_eq!(p.readable(ms(5)), Readable::Bytes(1));
        p.consume(1);
        assert_eq!(p.readable(ms(5)), Readable::Eof);
        p.take_eof();
        assert_eq!(p.readable(ms(6)), Readable::Nothing);
        assert_eq!(p.next_at(ms(6)), None);
    }

    #[test]
    fn a_closed_reader_drops_what_was_in_flight() {
        let mut c = Conn::new(7);
        c.to_s.write(ms(0), Duration::ZERO, b"hello");
        c.close_s(ms(0), Duration::ZERO);
        assert_eq!(c.to_s.readable(ms(1)), Readable::Nothing);
        c.to_s.write(ms(1), Duration::ZERO, b"more");
        assert_eq!(c.to_s.readable(ms(1)), Readable::Nothing);
        assert_eq!(c.to_d.readable(ms(1)), Readable::Eof);
    }
}
