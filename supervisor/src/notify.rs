//! `sd_notify(3)` without libsystemd: state changes sent as datagrams to the
//! Unix socket that `NOTIFY_SOCKET` names, so that a `Type=notify` unit
//! knows when the supervisor is ready, reloading (a handoff) or stopping,
//! and `systemctl status` shows a one-line `STATUS=`.
//!
//! Without `NOTIFY_SOCKET` every call does nothing, and a failed send is
//! only logged: the service manager's bookkeeping must never stop a
//! handoff.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

// A newline in STATUS= would start a new assignment, and an escape
// sequence would reach `systemctl status`'s terminal.
use crate::text::one_line;
use handoff_std::os::fdpass::send_with_fds;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A connection to the service manager, or nothing.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier that never sends anything.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// A notifier for the socket in `NOTIFY_SOCKET`, if set (read, left in
    /// the environment).
    pub fn from_env() -> Notifier {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(value) => Notifier::for_socket(&value),
            None => Notifier::disabled(),
        }
    }

    /// Like [`Notifier::from_env`], and removes the variable so that no
    /// process started from here on inherits it: the daemons report to the
    /// supervisor, not to the service manager, and a `READY=1` of theirs
    /// must not be taken for the supervisor's. Call it first thing in
    /// `main`, before any thread starts (it edits the environment).
    pub fn take_from_env() -> Notifier {
        match handoff_std::os::env::take_var(NOTIFY_SOCKET) {
            Some(value) => Notifier::for_socket(&value),
            None => Notifier::disabled(),
        }
    }

    /// A notifier for `socket`: a filesystem path, or an abstract name with
    /// a leading `@`. An unusable value gives a disabled notifier (logged).
    pub fn for_socket(socket: &std::ffi::OsStr) -> Notifier {
        match Notifier::connect(socket) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(e) => {
                tracing::warn!(
                    socket = %socket.to_string_lossy(),
                    error = %e,
                    "NOTIFY_SOCKET is unusable; the service manager will not hear from us"
                );
                Notifier::disabled()
            }
        }
    }

    fn connect(socket: &std::ffi::OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
        let bytes = socket.as_bytes();
        let addr = match bytes.split_first() {
            None => return Err(io::Error::new(io::ErrorKind::InvalidInput, "it is empty")),
            Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
            Some((b'/', _)) => SocketAddr::from_pathname(OsString::from(socket))?,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is neither an absolute path nor an abstract name (@…)",
                ));
            }
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// Whether messages go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) as one
    /// datagram.
    pub fn notify(&self, state: &str) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        if let Err(e) = sock.send_to_addr(state.as_bytes(), addr) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic timestamp systemd requires of it,
    /// and a status line. A `READY=1` must follow once the reload is over.
    pub fn reloading(&self, status: &str) {
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={}",
            monotonic_usec(),
            one_line(status)
        ));
    }

    /// A status line alone.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Keeps `listeners` in the service manager's file-descriptor store,
    /// each under its name: `FDSTOREREMOVE=1` for the name first (a socket
    /// stored under it by an earlier start, for an address the
    /// configuration no longer has, must not come back beside the new one),
    /// then `FDSTORE=1` with the socket attached (`SCM_RIGHTS`). A restart
    /// of the unit then receives them as `LISTEN_FDS`/`LISTEN_FDNAMES`, even
    /// when the daemon died too, and the accept queue is never closed.
    ///
    /// systemd keeps them only with `FileDescriptorStoreMax=` set; without
    /// it, it logs that it closed them. Returns how many were sent; a name
    /// systemd would refuse, or a failed send, is logged and skipped: the
    /// store is a safety net, not a reason to stop serving.
    pub fn store_listeners(&self, listeners: &[(&str, BorrowedFd<'_>)]) -> usize {
        let Some((_, addr)) = &self.target else {
            return 0;
        };
        if let Some(max) =
            std::env::var_os(FDSTORE).and_then(|v| v.to_str().and_then(|v| v.parse::<usize>().ok()))
            && max < listeners.len()
        {
            tracing::warn!(
                max,
                listeners = listeners.len(),
                "the unit's FileDescriptorStoreMax= is lower than the number of listeners; \
                 systemd keeps only some of them across a restart: raise it"
            );
        }
        let mut stored = 0;
        for (name, fd) in listeners {
            if !fdname_is_valid(name) {
                tracing::warn!(
                    listener = %one_line(name),
                    "not kept in the service manager's fd store: systemd takes names of at \
                     most 255 printable ASCII characters without ':'"
                );
                continue;
            }
            let sent = UnixDatagram::unbound().and_then(|sock| {
                // Connected, so that the descriptor goes with a plain
                // sendmsg to the manager and nowhere else.
                sock.connect_addr(addr)?;
                sock.send(format!("FDSTOREREMOVE=1\nFDNAME={name}").as_bytes())?;
                send_with_fds(
                    sock.as_fd(),
                    format!("FDSTORE=1\nFDNAME={name}").as_bytes(),
                    &[*fd],
                )
            });
            match sent {
                Ok(_) => stored += 1,
                Err(e) => tracing::warn!(
                    listener = %name,
                    error = %e,
                    "cannot keep the listener in the service manager's fd store; a restart \
                     of the unit after a crash of the daemon too would bind it anew"
                ),
            }
        }
        stored
    }
}

/// The variable systemd (254 and later) sets to the unit's
/// `FileDescriptorStoreMax=` when it is not zero.
pub const FDSTORE: &str = "FDSTORE";

/// Whether systemd accepts `name` as an `FDNAME=`: 1 to 255 printable ASCII
/// characters, no `:` (the separator of `LISTEN_FDNAMES`). The check keeps
/// a newline in a name from starting another assignment in the datagram.
fn fdname_is_valid(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b':')
}

pub use handoff_std::os::process::monotonic_usec;

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::time::Duration;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            // A receive with a timeout is not restarted after the process
            // is stopped and continued.
            match sock.recv(&mut buf) {
                Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("no notification: {e}"),
            }
        }
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("handoff-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::for_socket(OsStr::new(&format!("@{name}")));
        assert!(n.is_enabled());
        n.ready("serving\nnow");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=serving\\nnow");
        n.reloading("handing off");
        let msg = receive(&listener);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
        assert_eq!(lines[2], "STATUS=handing off");
        n.stopping("bye");
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn listeners_go_to_the_fd_store_by_name() {
        use handoff_std::os::fdpass::{identity, recv_with_fds};
        let name = format!("handoff-fdstore-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&addr).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::for_socket(OsStr::new(&format!("@{name}")));
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stored = n.store_listeners(&[
            ("kv", tcp.as_fd()),
            ("bad\nREADY=1", tcp.as_fd()),
            ("a:b", tcp.as_fd()),
        ]);
        assert_eq!(stored, 1, "only the name systemd accepts");
        let mut buf = [0u8; 512];
        let got = recv_with_fds(manager.as_fd(), &mut buf, 4).unwrap();
        assert_eq!(&buf[..got.len], b"FDSTOREREMOVE=1\nFDNAME=kv");
        assert!(got.fds.is_empty());
        let got = recv_with_fds(manager.as_fd(), &mut buf, 4).unwrap();
        assert_eq!(&buf[..got.len], b"FDSTORE=1\nFDNAME=kv");
        assert_eq!(got.fds.len(), 1);
        // The very socket, not another bound to the same address.
        assert_eq!(
            identity(got.fds[0].as_fd()).unwrap(),
            identity(tcp.as_fd()).unwrap()
        );
        // Nothing more was sent: the refused names went nowhere.
        manager.set_nonblocking(true).unwrap();
        assert!(manager.recv(&mut buf).is_err());
    }

    #[test]
    fn unusable_values_disable_it() {
        assert!(!Notifier::for_socket(OsStr::new("")).is_enabled());
        assert!(!Notifier::for_socket(OsStr::new("relative/path")).is_enabled());
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        // Nothing to send to, nothing to fail.
        n.ready("x");
    }
}
