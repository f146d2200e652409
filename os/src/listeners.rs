//! Listeners inherited at start-up, adopted by name and type.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;

use super::sys::{cvt, getsockopt_int, set_cloexec, set_nonblocking};

/// Whether an adopted socket blocks.
///
/// The flag belongs to the socket, not to one process's descriptor: the
/// supervisor, the incumbent and the successor share each listener, so a
/// successor that takes a listener in another mode than the incumbent's
/// switches the incumbent's too. After an aborted handoff the incumbent
/// serves on with whatever the successor set; a daemon whose versions may
/// differ here (a threaded build upgraded to an event-loop one) sets its
/// listeners' mode again when it resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Calls block (for threads).
    Blocking,
    /// Calls return `WouldBlock` (for event loops).
    NonBlocking,
}

/// Why a listener could not be taken.
#[derive(Debug)]
#[non_exhaustive]
pub enum ListenerError {
    /// No inherited listener has this name (or it was taken already).
    NotFound {
        /// The name asked for.
        name: String,
        /// The names still available.
        available: Vec<String>,
    },
    /// The descriptor is not the kind of socket asked for; it stays
    /// available under its name.
    WrongType {
        /// The name.
        name: String,
        /// What was asked for ("a listening TCP socket", …).
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The system refused (fcntl, getsockopt).
    Io(io::Error),
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerError::NotFound { name, available } if available.is_empty() => write!(
                f,
                "no inherited listener named {name:?}: none is left (none was passed in \
                 LISTEN_FDS, or all were taken already); check that the supervisor is \
                 configured to pass a listener named {name:?}"
            ),
            ListenerError::NotFound { name, available } => write!(
                f,
                "no inherited listener named {name:?}; still available: {}; use one of \
                 these names or fix the names given to the supervisor (LISTEN_FDNAMES)",
                available.join(", ")
            ),
            ListenerError::WrongType {
                name,
                expected,
                found,
            } => write!(
                f,
                "the inherited listener {name:?} is {found}, not {expected}; take it with the \
                 method for its kind, or fix which socket the supervisor passes under this name \
                 (it is still available)"
            ),
            ListenerError::Io(e) => write!(f, "could not adopt an inherited listener: {e}"),
        }
    }
}

impl std::error::Error for ListenerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ListenerError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// What a typed `take_*` asks for: its description, and the test.
type Expectation = (&'static str, fn(Kind) -> bool);

/// What an inherited descriptor turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Not a socket; the file type, described.
    NotSocket(&'static str),
    Socket {
        domain: libc::c_int,
        ty: libc::c_int,
        protocol: libc::c_int,
        listening: bool,
    },
}

impl Kind {
    fn is_inet(self) -> bool {
        matches!(self, Kind::Socket { domain, .. } if domain == libc::AF_INET || domain == libc::AF_INET6)
    }

    fn is_tcp_listener(self) -> bool {
        self.is_inet()
            && matches!(
                self,
                Kind::Socket {
                    ty: libc::SOCK_STREAM,
                    protocol: libc::IPPROTO_TCP,
                    listening: true,
                    ..
                }
            )
    }

    fn is_unix_listener(self) -> bool {
        matches!(
            self,
            Kind::Socket {
                domain: libc::AF_UNIX,
                ty: libc::SOCK_STREAM,
                listening: true,
                ..
            }
        )
    }

    fn is_udp(self) -> bool {
        self.is_inet()
            && matches!(
                self,
                Kind::Socket {
                    ty: libc::SOCK_DGRAM,
                    protocol: libc::IPPROTO_UDP,
                    ..
                }
            )
    }
}

fn classify(fd: BorrowedFd<'_>) -> io::Result<Kind> {
    // SAFETY: all-zero is a valid `stat` (integers only).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is borrowed, so open; `st` is a live `stat` for the
    // kernel to fill.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    let file_type = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => None,
        libc::S_IFREG => Some("a regular file"),
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a pipe"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        _ => Some("some other kind of file"),
    };
    if let Some(t) = file_type {
        return Ok(Kind::NotSocket(t));
    }
    Ok(Kind::Socket {
        domain: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
        ty: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?,
        protocol: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
        listening: getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
    })
}

/// Whether a socket has a peer.
fn is_connected(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: all-zero is a valid `sockaddr_storage` (integers only).
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` is a live buffer of `len` bytes, the most the kernel
    // writes; `fd` is borrowed, so open.
    let ret = unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&raw mut addr).cast::<libc::sockaddr>(),
            &mut len,
        )
    };
    ret == 0
}

/// Says what `fd` is, in words for an error message.
fn describe(fd: BorrowedFd<'_>, kind: Kind) -> String {
    let (domain, ty, protocol, listening) = match kind {
        Kind::NotSocket(t) => return format!("not a socket but {t}"),
        Kind::Socket {
            domain,
            ty,
            protocol,
            listening,
        } => (domain, ty, protocol, listening),
    };
    let inet = kind.is_inet();
    let what = match (domain, ty) {
        _ if inet && protocol == libc::IPPROTO_TCP => "TCP".to_owned(),
        _ if inet && protocol == libc::IPPROTO_UDP => "UDP".to_owned(),
        _ if inet && protocol == libc::IPPROTO_SCTP => "SCTP".to_owned(),
        _ if inet && ty == libc::SOCK_RAW => "raw IP".to_owned(),
        _ if inet => format!("IP protocol {protocol}"),
        (libc::AF_UNIX, libc::SOCK_STREAM) => "Unix stream".to_owned(),
        (libc::AF_UNIX, libc::SOCK_DGRAM) => "Unix datagram".to_owned(),
        (libc::AF_UNIX, libc::SOCK_SEQPACKET) => "Unix seqpacket".to_owned(),
        (libc::AF_NETLINK, _) => "netlink".to_owned(),
        _ => format!("family {domain}, type {ty}"),
    };
    let family = match domain {
        libc::AF_INET6 => " (IPv6)",
        libc::AF_INET => " (IPv4)",
        _ => "",
    };
    let connection_oriented = ty == libc::SOCK_STREAM || ty == libc::SOCK_SEQPACKET;
    if !connection_oriented {
        format!("a {what} socket{family}")
    } else if listening {
        format!("a listening {what} socket{family}")
    } else if is_connected(fd) {
        format!("a connected {what} socket{family}")
    } else {
        format!("a {what} socket{family} that is neither listening nor connected")
    }
}

/// Named inherited descriptors, not yet taken.
#[derive(Debug, Default)]
pub struct InheritedListeners {
    entries: Vec<(String, OwnedFd)>,
}

impl InheritedListeners {
    /// Wraps descriptors already adopted (close-on-exec set).
    pub fn from_fds(entries: Vec<(String, OwnedFd)>) -> Self {
        InheritedListeners { entries }
    }

    /// The names not yet taken, in FD order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Whether every listener was taken (or none came).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Takes a listening TCP socket (IPv4 or IPv6).
    pub fn take_tcp(&mut self, name: &str, mode: Mode) -> Result<TcpListener, ListenerError> {
        self.take_checked(
            name,
            mode,
            Some(("a listening TCP socket", Kind::is_tcp_listener)),
        )
        .map(TcpListener::from)
    }

    /// Takes a listening Unix stream socket.
    pub fn take_unix(&mut self, name: &str, mode: Mode) -> Result<UnixListener, ListenerError> {
        self.take_checked(
            name,
            mode,
            Some(("a listening Unix stream socket", Kind::is_unix_listener)),
        )
        .map(UnixListener::from)
    }

    /// Takes a bound UDP socket (IPv4 or IPv6).
    pub fn take_udp(&mut self, name: &str, mode: Mode) -> Result<UdpSocket, ListenerError> {
        self.take_checked(name, mode, Some(("a UDP socket", Kind::is_udp)))
            .map(UdpSocket::from)
    }

    /// Takes the descriptor whatever it is.
    pub fn take_raw(&mut self, name: &str, mode: Mode) -> Result<OwnedFd, ListenerError> {
        self.take_checked(name, mode, None)
    }

    /// Removes the first entry named `name` if it passes `check`, after
    /// applying `mode` and close-on-exec. Any failure leaves it in place.
    fn take_checked(
        &mut self,
        name: &str,
        mode: Mode,
        check: Option<Expectation>,
    ) -> Result<OwnedFd, ListenerError> {
        let Some(index) = self.entries.iter().position(|(n, _)| n == name) else {
            return Err(ListenerError::NotFound {
                name: name.to_owned(),
                available: self.names().into_iter().map(str::to_owned).collect(),
            });
        };
        let fd = self.entries[index].1.as_fd();
        if let Some((expected, accepts)) = check {
            let kind = classify(fd).map_err(ListenerError::Io)?;
            if !accepts(kind) {
                return Err(ListenerError::WrongType {
                    name: name.to_owned(),
                    expected,
                    found: describe(fd, kind),
                });
            }
        }
        // O_NONBLOCK is shared with every other descriptor of this open file
        // description: the supervisor's copy, which only holds it, but also
        // the incumbent's while a handoff runs. See `take_tcp`.
        set_nonblocking(fd, mode == Mode::NonBlocking).map_err(ListenerError::Io)?;
        set_cloexec(fd).map_err(ListenerError::Io)?;
        Ok(self.entries.remove(index).1)
    }
}

/// Sets the accept queue length of the listening socket `sock`: std
/// listens with a backlog of 128, and a second `listen(2)` on a listening
/// socket only changes the queue's length.
pub fn set_backlog(sock: &impl AsRawFd, backlog: u32) -> io::Result<()> {
    let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
    // SAFETY: `sock` is a live listening socket borrowed for the call;
    // listen takes integers only.
    if unsafe { libc::listen(sock.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{is_cloexec, is_nonblocking};
    use crate::testutil::TempDir;
    use std::fs::File;
    use std::net::TcpStream;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    struct Fixture {
        _dir: TempDir,
        tcp_port: u16,
        udp_port: u16,
        _client_peer: TcpStream,
        inherited: InheritedListeners,
    }

    /// One of each kind, named after what it is.
    fn fixture() -> Fixture {
        let dir = TempDir::new("ls");
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let tcp6 = TcpListener::bind("[::1]:0").ok();
        let unix = UnixListener::bind(dir.path().join("l.sock")).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
        let (client_peer, _) = tcp.accept().unwrap();
        let file = File::open("/dev/null").unwrap();
        let unix_stream = UnixStream::pair().unwrap().0;
        let unix_dgram = UnixDatagram::unbound().unwrap();
        let mut entries: Vec<(String, OwnedFd)> = vec![
            ("tcp".into(), tcp.into()),
            ("unix".into(), unix.into()),
            ("udp".into(), udp.into()),
            ("client".into(), client.into()),
            ("file".into(), file.into()),
            ("unix-stream".into(), unix_stream.into()),
            ("unix-dgram".into(), unix_dgram.into()),
        ];
        if let Some(tcp6) = tcp6 {
            entries.push(("tcp6".into(), tcp6.into()));
        }
        Fixture {
            _dir: dir,
            tcp_port,
            udp_port,
            _client_peer: client_peer,
            inherited: InheritedListeners::from_fds(entries),
        }
    }

    fn wrong_type<T: fmt::Debug>(r: Result<T, ListenerError>) -> (&'static str, String) {
        match r {
            Err(ListenerError::WrongType {
                expected, found, ..
            }) => (expected, found),
            other => panic!("expected WrongType, got {other:?}"),
        }
    }

    #[test]
    fn each_kind_is_taken_by_its_own_method_only() {
        let mut f = fixture();
        let l = &mut f.inherited;

        let (expected, found) = wrong_type(l.take_tcp("unix", Mode::Blocking));
        assert_eq!(expected, "a listening TCP socket");
        assert_eq!(found, "a listening Unix stream socket");
        let (_, found) = wrong_type(l.take_tcp("udp", Mode::Blocking));
        assert_eq!(found, "a UDP socket (IPv4)");
        let (_, found) = wrong_type(l.take_tcp("client", Mode::Blocking));
        assert_eq!(found, "a connected TCP socket (IPv4)");
        let (_, found) = wrong_type(l.take_unix("file", Mode::Blocking));
        assert_eq!(found, "not a socket but a character device");
        let (_, found) = wrong_type(l.take_unix("unix-stream", Mode::Blocking));
        assert_eq!(found, "a connected Unix stream socket");
        let (_, found) = wrong_type(l.take_udp("unix-dgram", Mode::Blocking));
        assert_eq!(found, "a Unix datagram socket");
        let (expected, found) = wrong_type(l.take_udp("tcp", Mode::Blocking));
        assert_eq!(expected, "a UDP socket");
        assert_eq!(found, "a listening TCP socket (IPv4)");
        let (_, found) = wrong_type(l.take_unix("tcp", Mode::Blocking));
        assert_eq!(found, "a listening TCP socket (IPv4)");

        // Every refusal left its entry in place.
        assert_eq!(
            l.names().len(),
            7 + usize::from(l.names().contains(&"tcp6"))
        );

        let tcp = l.take_tcp("tcp", Mode::Blocking).unwrap();
        assert_eq!(tcp.local_addr().unwrap().port(), f.tcp_port);
        let udp = l.take_udp("udp", Mode::NonBlocking).unwrap();
        assert_eq!(udp.local_addr().unwrap().port(), f.udp_port);
        let unix = l.take_unix("unix", Mode::Blocking).unwrap();
        assert!(unix.local_addr().unwrap().as_pathname().is_some());
        if l.names().contains(&"tcp6") {
            let tcp6 = l.take_tcp("tcp6", Mode::Blocking).unwrap();
            assert!(tcp6.local_addr().unwrap().is_ipv6());
        }
        assert_eq!(
            l.names(),
            vec!["client", "file", "unix-stream", "unix-dgram"]
        );
        // take_raw takes anything.
        for name in ["client", "file", "unix-stream", "unix-dgram"] {
            l.take_raw(name, Mode::Blocking).unwrap();
        }
        assert!(l.is_empty());
    }

    #[test]
    fn a_taken_listener_is_gone_and_not_found_lists_the_rest() {
        let mut f = fixture();
        let l = &mut f.inherited;
        let _tcp = l.take_tcp("tcp", Mode::Blocking).unwrap();
        match l.take_tcp("tcp", Mode::Blocking) {
            Err(ListenerError::NotFound { name, available }) => {
                assert_eq!(name, "tcp");
                assert!(available.iter().any(|n| n == "unix"));
                assert!(!available.iter().any(|n| n == "tcp"));
                let text = ListenerError::NotFound { name, available }.to_string();
                assert!(text.contains("unix") && text.contains("udp"), "{text}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        let text = InheritedListeners::default()
            .take_raw("x", Mode::Blocking)
            .unwrap_err()
            .to_string();
        assert!(text.contains("none is left"), "{text}");
    }

    #[test]
    fn the_requested_mode_and_close_on_exec_are_applied() {
        let mut f = fixture();
        let l = &mut f.inherited;
        // Arrive the opposite way round from what is asked.
        let entries = std::mem::take(&mut l.entries);
        for (_, fd) in &entries {
            set_nonblocking(fd.as_fd(), true).unwrap();
            let dup = fd.try_clone().unwrap();
            // Clear close-on-exec as an exec'd child would find it.
            // SAFETY: `dup` is open and owned here; F_SETFD only changes
            // its flag word.
            assert_eq!(unsafe { libc::fcntl(dup.as_raw_fd(), libc::F_SETFD, 0) }, 0);
            assert!(!is_cloexec(dup.as_fd()));
            drop(dup);
        }
        l.entries = entries;
        let tcp = l.take_tcp("tcp", Mode::Blocking).unwrap();
        assert!(!is_nonblocking(tcp.as_fd()));
        assert!(is_cloexec(tcp.as_fd()));
        let udp = l.take_udp("udp", Mode::NonBlocking).unwrap();
        assert!(is_nonblocking(udp.as_fd()));
        let unix = l.take_unix("unix", Mode::NonBlocking).unwrap();
        assert!(is_nonblocking(unix.as_fd()));
        assert_eq!(unix.accept().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        let raw = l.take_raw("file", Mode::Blocking).unwrap();
        assert!(!is_nonblocking(raw.as_fd()));
    }

    #[test]
    fn a_descriptor_without_close_on_exec_gets_it() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        // dup(2) makes a copy without FD_CLOEXEC, as an inherited one is.
        // SAFETY: `tcp` is open; dup returns a new descriptor or -1.
        let raw = unsafe { libc::dup(tcp.as_raw_fd()) };
        assert!(raw >= 0);
        // SAFETY: `raw` was just created by dup and has no other owner.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        assert!(!is_cloexec(fd.as_fd()));
        let mut l = InheritedListeners::from_fds(vec![("web".into(), fd)]);
        let taken = l.take_tcp("web", Mode::Blocking).unwrap();
        assert!(is_cloexec(taken.as_fd()));
    }

    #[test]
    fn duplicate_names_are_taken_in_fd_order() {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pa, pb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut l =
            InheritedListeners::from_fds(vec![("web".into(), a.into()), ("web".into(), b.into())]);
        assert_eq!(
            l.take_tcp("web", Mode::Blocking)
                .unwrap()
                .local_addr()
                .unwrap(),
            pa
        );
        assert_eq!(
            l.take_tcp("web", Mode::Blocking)
                .unwrap()
                .local_addr()
                .unwrap(),
            pb
        );
    }

    #[test]
    fn wrong_type_text_says_what_to_do() {
        let text = ListenerError::WrongType {
            name: "web".into(),
            expected: "a listening TCP socket",
            found: "a UDP socket".into(),
        }
        .to_string();
        assert!(
            text.contains("\"web\"") && text.contains("a UDP socket"),
            "{text}"
        );
        assert!(text.contains("still available"), "{text}");
    }
}
