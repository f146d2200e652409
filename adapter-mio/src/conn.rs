//! What the mio adapter does for a driver: register the descriptors the
//! driver asks it to watch in the caller's `Registry`, each under the
//! caller's token for its [`Source`]. Everything else (reads, bounded
//! writes, the rule for a peer that stops reading) is the driver's.
//!
//! A [`MioIo`] is made for each call into a driver, because the registry
//! is lent by the caller only for that call; what is registered is kept
//! between calls in a [`Registered`] beside the driver.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use handoff_driver::{Io, Source};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// The descriptors registered for one driver, by source, with the
/// descriptor each was registered with.
#[derive(Debug, Default)]
pub(crate) struct Registered(Vec<(Source, RawFd)>);

impl Registered {
    fn fd(&self, source: Source) -> Option<RawFd> {
        self.0.iter().find(|(s, _)| *s == source).map(|&(_, fd)| fd)
    }

    fn set(&mut self, source: Source, fd: RawFd) {
        self.forget(source);
        self.0.push((source, fd));
    }

    fn forget(&mut self, source: Source) {
        self.0.retain(|(s, _)| *s != source);
    }
}

/// A driver's [`Io`] for one call: the caller's registry, the tokens of
/// the sources this driver may watch, and what is registered already.
pub(crate) struct MioIo<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) tokens: &'a [(Source, Token)],
    pub(crate) registered: &'a mut Registered,
}

impl MioIo<'_> {
    fn token(&self, source: Source) -> io::Result<Token> {
        self.tokens
            .iter()
            .find(|(s, _)| *s == source)
            .map(|&(_, t)| t)
            .ok_or_else(|| io::Error::other(format!("no token was given for {source:?}")))
    }
}

impl Io for MioIo<'_> {
    fn watch(&mut self, source: Source, fd: BorrowedFd<'_>, write: bool) -> io::Result<()> {
        let token = self.token(source)?;
        let raw = fd.as_raw_fd();
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let mut sfd = SourceFd(&raw);
        // The same descriptor again only changes its interest. Should the
        // kernel disagree with our record (the descriptor was closed and
        // its number reused without an unwatch, which drops it from epoll;
        // or a new one was watched under a source still recorded), the
        // other call is the right one.
        let result = if self.registered.fd(source) == Some(raw) {
            match self.registry.reregister(&mut sfd, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.registry.register(&mut sfd, token, interest)
                }
                r => r,
            }
        } else {
            match self.registry.register(&mut sfd, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    self.registry.reregister(&mut sfd, token, interest)
                }
                r => r,
            }
        };
        result?;
        self.registered.set(source, raw);
        Ok(())
    }

    fn unwatch(&mut self, source: Source, fd: BorrowedFd<'_>) {
        if self.registered.fd(source).is_some() {
            // Fails only if the descriptor is not registered, which is
            // what was wanted.
            let _ = self.registry.deregister(&mut SourceFd(&fd.as_raw_fd()));
            self.registered.forget(source);
        }
    }
}

/// What a mio event means for a driver: `(writable, readable)`. A
/// hang-up or an error counts as readable, since a read is what finds out
/// about it.
pub(crate) fn readiness(event: &mio::event::Event) -> (bool, bool) {
    (
        event.is_writable(),
        event.is_readable() || event.is_read_closed() || event.is_error(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn watching_again_changes_the_interest_and_unwatch_deregisters() {
        let poll = mio::Poll::new().unwrap();
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let tokens = [(Source::Control, Token(7))];
        let mut registered = Registered::default();
        let mut io = MioIo {
            registry: poll.registry(),
            tokens: &tokens,
            registered: &mut registered,
        };
        io.watch(Source::Control, ours.as_fd(), false).unwrap();
        io.watch(Source::Control, ours.as_fd(), true).unwrap();
        io.watch(Source::Control, ours.as_fd(), false).unwrap();
        assert!(
            io.watch(Source::Listener, ours.as_fd(), false).is_err(),
            "a source without a token"
        );
        io.unwatch(Source::Control, ours.as_fd());
        assert_eq!(registered.fd(Source::Control), None);
        // Deregistered: registering it afresh works.
        poll.registry()
            .register(
                &mut SourceFd(&ours.as_raw_fd()),
                Token(8),
                Interest::READABLE,
            )
            .unwrap();
    }
}
