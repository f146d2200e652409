//! Inherited listeners as tokio's socket types, already non-blocking and
//! registered. Handing tokio a listener in blocking mode is the bug every
//! earlier tokio handoff library had reported against it: the listener is
//! shared with the other binary, so a connection tokio saw as ready may
//! have been accepted over there, and the blocking `accept` then holds a
//! worker thread (on a current-thread runtime, the whole daemon). These
//! take the socket in non-blocking mode always, so the blocking form
//! cannot be asked for.

use handoff_os::listeners::{InheritedListeners, ListenerError, Mode};

use crate::reactor::no_runtime;

/// Takes inherited listeners (from [`crate::Role::ColdStart`] or a
/// successor's [`crate::BegunSuccessor::listeners`]) as tokio sockets. Call
/// on a tokio runtime; outside one the call fails and the listener stays
/// available under its name.
pub trait TokioListeners {
    /// The TCP listener named `name`.
    fn take_tokio_tcp(&mut self, name: &str) -> Result<tokio::net::TcpListener, ListenerError>;

    /// The Unix-domain listener named `name`.
    fn take_tokio_unix(&mut self, name: &str) -> Result<tokio::net::UnixListener, ListenerError>;

    /// The UDP socket named `name`.
    fn take_tokio_udp(&mut self, name: &str) -> Result<tokio::net::UdpSocket, ListenerError>;
}

/// Takes `name` with `take` in non-blocking mode and registers it with
/// `from_std`, after checking there is a runtime to register with (tokio
/// panics without one).
fn take<S, T>(
    listeners: &mut InheritedListeners,
    name: &str,
    take: impl FnOnce(&mut InheritedListeners, &str, Mode) -> Result<S, ListenerError>,
    from_std: impl FnOnce(S) -> std::io::Result<T>,
) -> Result<T, ListenerError> {
    tokio::runtime::Handle::try_current().map_err(|_| ListenerError::Io(no_runtime()))?;
    from_std(take(listeners, name, Mode::NonBlocking)?).map_err(ListenerError::Io)
}

impl TokioListeners for InheritedListeners {
    fn take_tokio_tcp(&mut self, name: &str) -> Result<tokio::net::TcpListener, ListenerError> {
        take(
            self,
            name,
            InheritedListeners::take_tcp,
            tokio::net::TcpListener::from_std,
        )
    }

    fn take_tokio_unix(&mut self, name: &str) -> Result<tokio::net::UnixListener, ListenerError> {
        take(
            self,
            name,
            InheritedListeners::take_unix,
            tokio::net::UnixListener::from_std,
        )
    }

    fn take_tokio_udp(&mut self, name: &str) -> Result<tokio::net::UdpSocket, ListenerError> {
        take(
            self,
            name,
            InheritedListeners::take_udp,
            tokio::net::UdpSocket::from_std,
        )
    }
}

/// A connection the incumbent passed (docs/PROTOCOL.md section 11), as
/// tokio's socket type.
pub trait PassedTokioTcp {
    /// The connection as a tokio `TcpStream` (non-blocking, registered),
    /// and the state the incumbent passed with it. Call on a tokio
    /// runtime; an error outside one, or if it is not a connected TCP
    /// socket (the descriptor is then closed, which its client does not
    /// see while the incumbent holds its own).
    fn into_tokio_tcp(self) -> std::io::Result<(tokio::net::TcpStream, Vec<u8>)>;
}

impl PassedTokioTcp for handoff_driver::PassedConnection {
    fn into_tokio_tcp(self) -> std::io::Result<(tokio::net::TcpStream, Vec<u8>)> {
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let (stream, state) = self.into_tcp()?;
        stream.set_nonblocking(true)?;
        Ok((tokio::net::TcpStream::from_std(stream)?, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, OwnedFd};
    use std::time::Duration;

    fn inherited(name: &str, fd: OwnedFd) -> InheritedListeners {
        InheritedListeners::from_fds(vec![(name.to_owned(), fd)])
    }

    #[test]
    fn a_listener_inherited_blocking_comes_out_non_blocking() {
        // Passed as a blocking socket, as a parent process may well pass
        // it; shared with "the other binary" through a duplicate (the
        // same open socket, as across the two processes of a handoff).
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_binary = std_listener.try_clone().unwrap();
        let mut ls = inherited("app", OwnedFd::from(std_listener));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let ours = ls.take_tokio_tcp("app").unwrap();
        // With no connection queued, an accept must come back at once
        // (WouldBlock) instead of holding the thread: the flag is the
        // open socket's, so the other binary's duplicate shows it. Run on
        // a thread, bounded, so that a blocking socket fails the test
        // rather than hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(other_binary.accept().map(|_| ()).map_err(|e| e.kind()));
        });
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(
            got,
            Ok(Err(std::io::ErrorKind::WouldBlock)),
            "accept blocked"
        );
        assert!(ours.local_addr().is_ok());
        let _ = ours.as_fd();
    }

    #[test]
    fn outside_a_runtime_the_listener_stays_available() {
        let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ls = inherited("dns", OwnedFd::from(l));
        let err = ls.take_tokio_udp("dns").unwrap_err();
        assert!(err.to_string().contains("no tokio runtime"), "{err}");
        assert_eq!(ls.names(), ["dns"]);
    }

    #[test]
    fn the_wrong_kind_of_socket_is_refused_and_kept() {
        let l = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ls = inherited("dns", OwnedFd::from(l));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        assert!(matches!(
            ls.take_tokio_tcp("dns"),
            Err(ListenerError::WrongType { .. })
        ));
        assert!(ls.take_tokio_udp("dns").is_ok());
    }
}
