//! Storage for frames, chosen by the caller.
//!
//! The core allocates nothing, yet a frame may legally be up to 1 MiB and a
//! supervisor must accept whatever a reference peer sends. So every byte
//! area a machine needs (its receive buffer, its queue of outgoing frames, the
//! reports it keeps for the outcome) is a [`Buffer`] the caller picks: a fixed
//! array on a bare-metal target, or, with the `alloc` feature, a `Vec<u8>`
//! that grows only as far as the largest frame actually seen. A fixed buffer
//! also caps what a hostile peer can make the machine hold: a frame longer
//! than the buffer is rejected from its length prefix, before any body byte
//! is stored.

/// A byte area a machine can grow up to a limit and write into.
pub trait Buffer {
    /// A new, empty buffer.
    fn empty() -> Self
    where
        Self: Sized;

    /// The bytes currently available (at least the last length granted by
    /// [`Buffer::grow`]).
    fn bytes(&self) -> &[u8];

    /// The bytes currently available, writable.
    fn bytes_mut(&mut self) -> &mut [u8];

    /// Makes at least `len` bytes available; `false` if this buffer cannot
    /// hold that many (the caller then reports the frame as too large).
    fn grow(&mut self, len: usize) -> bool;

    /// The most bytes [`Buffer::grow`] can ever make available.
    fn max_len(&self) -> usize {
        usize::MAX
    }
}

impl<const N: usize> Buffer for [u8; N] {
    fn empty() -> Self {
        [0; N]
    }

    fn bytes(&self) -> &[u8] {
        self
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }

    fn grow(&mut self, len: usize) -> bool {
        len <= N
    }

    fn max_len(&self) -> usize {
        N
    }
}

#[cfg(feature = "alloc")]
impl Buffer for alloc::vec::Vec<u8> {
    fn empty() -> Self {
        alloc::vec::Vec::new()
    }

    fn bytes(&self) -> &[u8] {
        self
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }

    fn grow(&mut self, len: usize) -> bool {
        if self.len() < len {
            // `try_reserve` turns an impossible request into "too large"
            // instead of an abort; the decoder never asks for more than
            // its frame limit anyway.
            if self.try_reserve(len - self.len()).is_err() {
                return false;
            }
            self.resize(len, 0);
        }
        true
    }
}

/// The default buffer of the machines: 4 KiB is room for every message the
/// protocol's own peers send (revision lists of a few hundred shards, error
/// texts of a few kilobytes); use a `Vec<u8>` (feature `alloc`) to accept
/// anything up to the 1 MiB frame limit.
pub type DefaultBuffer = [u8; 4096];
