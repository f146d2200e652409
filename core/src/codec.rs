//! The subset of postcard the protocol uses, by hand.
//!
//! Writing it out keeps the core free of serde and of allocation, lets the
//! decoder borrow strings and byte fields straight from the frame, and puts
//! the exact acceptance rules in one place: they are postcard 1.x's (varints
//! of at most 3/5/10 bytes for u16/u32/u64 whose last byte may not overflow
//! the type, booleans 0 or 1, option tags 0 or 1, UTF-8 strings), so every
//! byte string the reference accepts we accept, and vice versa, except that
//! bytes left over after a value are an error here.

use crate::error::{DecodeError, DecodeErrorKind};

/// Writes into a caller's slice; past its end it only counts, so one pass
/// gives both the bytes and, on overflow, the size that was needed.
pub(crate) struct Writer<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Self {
        Writer { out, pos: 0 }
    }

    /// Bytes written (or that would have been written).
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.pos > self.out.len()
    }

    pub(crate) fn byte(&mut self, b: u8) {
        if let Some(slot) = self.out.get_mut(self.pos) {
            *slot = b;
        }
        self.pos = self.pos.saturating_add(1);
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.out.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }

    #[inline]
    pub(crate) fn varint(&mut self, mut v: u64) {
        if v < 0x80 {
            return self.byte(v as u8);
        }
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.byte(low);
                return;
            }
            self.byte(low | 0x80);
        }
    }

    /// A byte sequence or string: varint length, then the bytes.
    pub(crate) fn len_prefixed(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.raw(bytes);
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.byte(u8::from(b));
    }
}

/// Reads from one message payload, naming the field being read so an error
/// says where the bytes went wrong.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    field: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            field: "message",
        }
    }

    /// Names the field the next reads belong to.
    pub(crate) fn field(&mut self, name: &'static str) -> &mut Self {
        self.field = name;
        self
    }

    /// The full error for `kind`, found while reading the current field.
    /// Reads report only the kind, which fits in registers; the field name
    /// is attached once, by the top-level decoder.
    pub(crate) fn error(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            message: None,
            field: self.field,
            kind,
        }
    }

    pub(crate) fn byte(&mut self) -> Result<u8, DecodeErrorKind> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(DecodeErrorKind::UnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeErrorKind> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or(DecodeErrorKind::UnexpectedEnd)?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// A varint of at most `max_bytes` bytes whose final byte is at most
    /// `max_last` (postcard's overflow rule).
    #[inline(always)]
    fn varint(&mut self, max_bytes: usize, max_last: u8) -> Result<u64, DecodeErrorKind> {
        // Most varints here (indexes, lengths, small counts) are one byte:
        // read where they are used, without a call.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        self.long_varint(max_bytes, max_last)
    }

    /// [`Reader::varint`] for two bytes or more.
    fn long_varint(&mut self, max_bytes: usize, max_last: u8) -> Result<u64, DecodeErrorKind> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let mut out: u64 = 0;
        for i in 0..max_bytes {
            let &b = rest.get(i).ok_or(DecodeErrorKind::UnexpectedEnd)?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == max_bytes - 1 && b > max_last {
                    return Err(DecodeErrorKind::BadVarint);
                }
                self.pos += i + 1;
                return Ok(out);
            }
        }
        Err(DecodeErrorKind::BadVarint)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeErrorKind> {
        // 3 bytes carry 21 bits; the last may hold only 16 - 14 = 2 bits.
        self.varint(3, 0b11).map(|v| v as u16)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeErrorKind> {
        // 5 bytes carry 35 bits; the last may hold only 32 - 28 = 4 bits.
        self.varint(5, 0b1111).map(|v| v as u32)
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeErrorKind> {
        // 10 bytes carry 70 bits; the last may hold only 64 - 63 = 1 bit.
        self.varint(10, 0b1)
    }

    /// Skips `n` varints, each checked exactly as [`Reader::u64`] would
    /// check it. Lists of revisions are validated this way when a frame
    /// arrives and read again only if the caller iterates them, so this
    /// loop, not the decoding of values, is what a receiver pays.
    pub(crate) fn skip_u64s(&mut self, n: usize) -> Result<(), DecodeErrorKind> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (mut at, mut left, mut run) = (0, n, 0u32);
        // Eight bytes at a time while the list certainly goes on past them:
        // a byte whose top bit is clear ends a varint, so counting those
        // counts varints without a branch per byte.
        while let Some(chunk) = rest.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let ends = !word & 0x8080_8080_8080_8080;
            let count = ends.count_ones() as usize;
            // Bytes before the first end continue the varint carried in; a
            // byte at position 9 or later of a varint needs the exact check
            // below, as does the chunk where the list ends.
            let lead = if ends == 0 {
                7
            } else {
                ends.trailing_zeros() / 8
            };
            if count >= left || run + lead > 8 {
                break;
            }
            run = if ends == 0 {
                run + 8
            } else {
                ends.leading_zeros() / 8
            };
            left -= count;
            at += 8;
        }
        while left > 0 {
            let &b = rest.get(at).ok_or(DecodeErrorKind::UnexpectedEnd)?;
            at += 1;
            if b < 0x80 {
                // The tenth byte of a u64 may carry only its top bit.
                if run == 9 && b > 1 {
                    return Err(DecodeErrorKind::BadVarint);
                }
                run = 0;
                left -= 1;
            } else {
                run += 1;
                if run == 10 {
                    return Err(DecodeErrorKind::BadVarint);
                }
            }
        }
        self.pos += at;
        Ok(())
    }

    pub(crate) fn bool(&mut self) -> Result<bool, DecodeErrorKind> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeErrorKind::BadBool(other)),
        }
    }

    /// A sequence length; it must not promise more elements than there are
    /// bytes left (every element takes at least one byte), which also keeps
    /// a hostile length from driving any loop beyond the frame.
    #[inline]
    pub(crate) fn seq_len(&mut self) -> Result<usize, DecodeErrorKind> {
        let len = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if len > left {
            return Err(DecodeErrorKind::UnexpectedEnd);
        }
        Ok(len as usize)
    }

    #[inline]
    pub(crate) fn len_prefixed(&mut self) -> Result<&'a [u8], DecodeErrorKind> {
        let len = self.seq_len()?;
        self.take(len)
    }

    #[inline]
    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeErrorKind> {
        let bytes = self.len_prefixed()?;
        core::str::from_utf8(bytes).map_err(|_| DecodeErrorKind::InvalidUtf8)
    }

    /// The next `N` bytes, borrowed: the caller copies them where they go,
    /// rather than through a temporary.
    #[inline]
    pub(crate) fn array_ref<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeErrorKind> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let (bytes, _) = rest
            .split_first_chunk::<N>()
            .ok_or(DecodeErrorKind::UnexpectedEnd)?;
        self.pos += N;
        Ok(bytes)
    }

    /// The bytes from `start` to the current position.
    pub(crate) fn since(&self, start: usize) -> &'a [u8] {
        &self.buf[start..self.pos]
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(&mut self) -> Result<(), DecodeErrorKind> {
        let extra = self.buf.len() - self.pos;
        if extra != 0 {
            self.field = "end of message";
            return Err(DecodeErrorKind::TrailingBytes(extra));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> ([u8; 10], usize) {
        let mut out = [0u8; 10];
        let mut w = Writer::new(&mut out);
        w.varint(v);
        let n = w.position();
        (out, n)
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let (buf, n) = enc(v);
            assert_eq!(Reader::new(&buf[..n]).u64().unwrap(), v);
        }
        assert_eq!(enc(u64::MAX).1, 10);
    }

    #[test]
    fn varints_that_overflow_their_type_are_rejected_as_postcard_does() {
        // u16::MAX + 1 needs a third byte of value 4 (> 0b11).
        assert!(Reader::new(&[0x80, 0x80, 0x04]).u16().is_err());
        assert_eq!(Reader::new(&[0xff, 0xff, 0x03]).u16().unwrap(), u16::MAX);
        assert!(Reader::new(&[0x80, 0x80, 0x80, 0x80, 0x10]).u32().is_err());
        // Eleven bytes is too long for a u64 whatever the values.
        assert!(Reader::new(&[0x80; 11]).u64().is_err());
        // A non-minimal encoding is accepted, as postcard accepts it.
        assert_eq!(Reader::new(&[0x81, 0x00]).u32().unwrap(), 1);
    }

    #[test]
    fn writer_counts_past_the_end_without_writing() {
        let mut out = [0u8; 2];
        let mut w = Writer::new(&mut out);
        w.raw(&[1, 2, 3]);
        assert!(w.overflowed());
        assert_eq!(w.position(), 3);
    }

    #[test]
    fn sequence_lengths_larger_than_the_rest_are_rejected_before_looping() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
        assert_eq!(r.seq_len().unwrap_err(), DecodeErrorKind::UnexpectedEnd);
    }

    #[test]
    fn skipping_varints_agrees_with_reading_them_one_by_one() {
        // Byte strings rich in continuation bytes, long runs and tenth
        // bytes of every value, so both the word-at-a-time path and the
        // exact tail see valid, overlong and truncated lists.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let len = (next() % 48) as usize;
            let mut bytes = [0u8; 48];
            for b in &mut bytes[..len] {
                let r = next();
                *b = match r % 8 {
                    0..=4 => 0x80 | (r >> 8) as u8,
                    5 => (r >> 8) as u8 & 0x01,
                    _ => (r >> 8) as u8 & 0x7f,
                };
            }
            let bytes = &bytes[..len];
            let n = (next() % 12) as usize;
            let mut one = Reader::new(bytes);
            let expected = (0..n).try_for_each(|_| one.u64().map(|_| ()));
            let mut all = Reader::new(bytes);
            let got = all.skip_u64s(n);
            assert_eq!(got, expected, "{bytes:02x?}, n = {n}");
            if got.is_ok() {
                assert_eq!(all.position(), one.position(), "{bytes:02x?}, n = {n}");
            }
        }
    }
}
