//! The listeners: bound once here (or adopted from the service manager)
//! and then only ever passed on, so their accept queues outlive every
//! daemon that serves them.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use handoff_std::os::listeners::{InheritedListeners, ListenerError, Mode};

use crate::config::{ListenerConfig, ListenerKind};
use crate::error::ServiceError;

/// A listener ready to pass on.
#[derive(Debug)]
pub(crate) struct Bound {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    /// Where it listens, as the kernel says (the port it chose for `:0`).
    pub(crate) local_addr: String,
    /// The socket file this process created, and which file it is, to
    /// remove at the end only if it is still that one.
    pub(crate) created_file: Option<(PathBuf, (u64, u64))>,
    /// Passed by the service manager (`LISTEN_FDS`), which keeps it: it
    /// need not be put in the manager's fd store.
    pub(crate) from_manager: bool,
}

/// Binds or adopts every configured listener, in configuration order.
/// Inherited descriptors the configuration does not name are closed, with
/// a warning: nothing here would pass them on.
pub(crate) fn open_all(
    configs: &[ListenerConfig],
    mut inherited: Option<InheritedListeners>,
) -> Result<Vec<Bound>, ServiceError> {
    let mut bound = Vec::with_capacity(configs.len());
    for config in configs {
        let adopted = match inherited.as_mut() {
            Some(inh) if inh.names().contains(&config.name.as_str()) => Some(
                adopt(inh, config).map_err(|source| ServiceError::Inherited {
                    name: config.name.clone(),
                    source,
                })?,
            ),
            _ => None,
        };
        let b = match adopted {
            Some(mut b) => {
                tracing::info!(
                    listener = %config.name,
                    addr = %b.local_addr,
                    "adopted the listener passed by the service manager"
                );
                if !same_address(config, &b.local_addr) {
                    // Kept, not rebound: a socket unit's `ListenStream=7070`
                    // is `[::]:7070` for a configured `0.0.0.0:7070`, and
                    // binding beside it would fail where this serves.
                    tracing::warn!(
                        listener = %config.name,
                        passed = %b.local_addr,
                        configured = %config.addr,
                        "the service manager passed this listener on another address than \
                         the configuration's; serving on the passed one. If the configuration \
                         changed, `systemctl restart` empties the fd store; otherwise fix the \
                         socket unit"
                    );
                }
                b.from_manager = true;
                b
            }
            None => {
                let b = bind(config).map_err(|source| ServiceError::Listener {
                    name: config.name.clone(),
                    addr: config.addr.clone(),
                    kind: config.kind,
                    source,
                })?;
                tracing::info!(listener = %config.name, addr = %b.local_addr, kind = %config.kind, "bound");
                b
            }
        };
        bound.push(b);
    }
    if let Some(inh) = inherited
        && !inh.is_empty()
    {
        tracing::warn!(
            names = %inh.names().join(","),
            "the service manager passed listeners the configuration does not name; closing them"
        );
    }
    Ok(bound)
}

/// The listeners an adopted daemon (`pid`) passed over, checked against the
/// configuration: every configured name present, of its kind, listening
/// on its address (any port for a configured `:0`), and nothing more.
pub(crate) fn from_daemon(
    configs: &[ListenerConfig],
    passed: Vec<(String, OwnedFd)>,
    pid: u32,
) -> Result<Vec<Bound>, ServiceError> {
    let mismatch = |detail: String| ServiceError::AdoptMismatch { pid, detail };
    let mut inh = InheritedListeners::from_fds(passed);
    let mut bound = Vec::with_capacity(configs.len());
    for config in configs {
        if !inh.names().contains(&config.name.as_str()) {
            return Err(mismatch(format!(
                "it has no listener {:?} (it has: {})",
                config.name,
                inh.names().join(", ")
            )));
        }
        let mut b = adopt(&mut inh, config)
            .map_err(|e| mismatch(format!("listener {:?}: {e}", config.name)))?;
        if !same_address(config, &b.local_addr) {
            return Err(mismatch(format!(
                "listener {:?} is on {}, the configuration says {}",
                config.name, b.local_addr, config.addr
            )));
        }
        if config.kind == ListenerKind::Unix {
            // Bound by the supervisor that crashed: ours to remove at the
            // end now, if it is still that file.
            let path = Path::new(&config.addr);
            b.created_file = file_identity(path).map(|id| (path.to_path_buf(), id));
        }
        tracing::info!(listener = %config.name, addr = %b.local_addr, pid, "took the listener over from the adopted daemon");
        bound.push(b);
    }
    if !inh.is_empty() {
        return Err(mismatch(format!(
            "it has listeners the configuration does not name: {}",
            inh.names().join(", ")
        )));
    }
    Ok(bound)
}

/// Whether a socket bound to `actual` (as the kernel reports it) is the
/// one `config` describes.
fn same_address(config: &ListenerConfig, actual: &str) -> bool {
    match config.kind {
        ListenerKind::Unix => Path::new(actual) == Path::new(&config.addr),
        ListenerKind::Tcp | ListenerKind::Udp => {
            match (
                config.addr.parse::<SocketAddr>(),
                actual.parse::<SocketAddr>(),
            ) {
                (Ok(want), Ok(got)) => {
                    want.ip() == got.ip() && (want.port() == 0 || want.port() == got.port())
                }
                _ => false,
            }
        }
    }
}

fn adopt(inh: &mut InheritedListeners, config: &ListenerConfig) -> Result<Bound, ListenerError> {
    let (fd, local_addr): (OwnedFd, String) = match config.kind {
        ListenerKind::Tcp => {
            let l = inh.take_tcp(&config.name, Mode::Blocking)?;
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            (l.into(), addr)
        }
        ListenerKind::Udp => {
            let s = inh.take_udp(&config.name, Mode::Blocking)?;
            let addr = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            (s.into(), addr)
        }
        ListenerKind::Unix => {
            let l = inh.take_unix(&config.name, Mode::Blocking)?;
            let addr = l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
                .unwrap_or_default();
            (l.into(), addr)
        }
    };
    Ok(Bound {
        name: config.name.clone(),
        fd,
        local_addr,
        // The service manager's socket file is its own to remove.
        created_file: None,
        from_manager: false,
    })
}

fn bind(config: &ListenerConfig) -> io::Result<Bound> {
    let mut created = None;
    let (fd, local_addr): (OwnedFd, String) = match config.kind {
        ListenerKind::Tcp => {
            let addr: SocketAddr = parse_addr(&config.addr)?;
            let l = TcpListener::bind(addr)?;
            handoff_std::os::listeners::set_backlog(&l, config.backlog)?;
            let local = l.local_addr()?.to_string();
            (l.into(), local)
        }
        ListenerKind::Udp => {
            let addr: SocketAddr = parse_addr(&config.addr)?;
            let s = UdpSocket::bind(addr)?;
            let local = s.local_addr()?.to_string();
            (s.into(), local)
        }
        ListenerKind::Unix => {
            let path = Path::new(&config.addr);
            remove_stale_socket(path)?;
            let l = UnixListener::bind(path)?;
            handoff_std::os::listeners::set_backlog(&l, config.backlog)?;
            created = file_identity(path).map(|id| (path.to_path_buf(), id));
            (l.into(), path.display().to_string())
        }
    };
    Ok(Bound {
        name: config.name.clone(),
        fd,
        local_addr,
        created_file: created,
        from_manager: false,
    })
}

fn parse_addr(addr: &str) -> io::Result<SocketAddr> {
    // The configuration was validated; this only guards a caller that
    // built a `Config` by hand.
    addr.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:?} is not an IP address and port"),
        )
    })
}

/// Which file `path` names: its device and inode.
pub(crate) fn file_identity(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Removes `path` if it is still the file `identity` names: another
/// process may have bound the path since.
pub(crate) fn remove_if_same(path: &Path, identity: (u64, u64)) {
    if file_identity(path) == Some(identity) {
        let _ = fs::remove_file(path);
    }
}

/// A socket file left by an earlier run would make `bind` fail with
/// `EADDRINUSE`. It is removed only if it is a socket nobody listens on:
/// a live one belongs to a running process (perhaps an orphaned daemon of
/// ours), and anything else is not ours to delete.
pub(crate) fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; not removing it",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "a running process listens on {}; stop it first",
                path.display()
            ),
        )),
        Err(_) => fs::remove_file(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::fd::AsRawFd;

    fn config(name: &str, addr: &str, kind: ListenerKind) -> ListenerConfig {
        ListenerConfig {
            name: name.into(),
            addr: addr.into(),
            kind,
            backlog: 7,
        }
    }

    #[allow(unsafe_code)]
    fn getsockopt(fd: &OwnedFd, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are live locals; `len` is `v`'s size.
        let r = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw mut v).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn each_kind_binds_and_reports_its_address() {
        let dir = std::env::temp_dir().join(format!("hsup-l-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("u.sock");
        // A stale socket file from an earlier run.
        drop(UnixListener::bind(&sock).unwrap());
        let bound = open_all(
            &[
                config("t", "127.0.0.1:0", ListenerKind::Tcp),
                config("d", "127.0.0.1:0", ListenerKind::Udp),
                config("u", sock.to_str().unwrap(), ListenerKind::Unix),
            ],
            None,
        )
        .unwrap();
        assert_eq!(bound.len(), 3);
        let tcp: SocketAddr = bound[0].local_addr.parse().unwrap();
        assert_ne!(tcp.port(), 0);
        assert_eq!(getsockopt(&bound[0].fd, libc::SO_ACCEPTCONN), 1);
        assert_eq!(getsockopt(&bound[1].fd, libc::SO_TYPE), libc::SOCK_DGRAM);
        assert_eq!(bound[2].local_addr, sock.display().to_string());
        let (created, id) = bound[2].created_file.clone().unwrap();
        assert_eq!(created, sock);
        assert_eq!(getsockopt(&bound[2].fd, libc::SO_ACCEPTCONN), 1);

        // A live socket is not removed, and neither is a regular file.
        let err = open_all(
            &[config("u", sock.to_str().unwrap(), ListenerKind::Unix)],
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("stop it first"), "{err}");
        let file = dir.join("file");
        fs::write(&file, b"keep").unwrap();
        let err = open_all(
            &[config("f", file.to_str().unwrap(), ListenerKind::Unix)],
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"keep");
        drop(bound);
        remove_if_same(&sock, id);
        assert!(!sock.exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_address_in_use_names_the_listener() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = open_all(&[config("web", &addr, ListenerKind::Tcp)], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"web\"") && text.contains(&addr), "{text}");
    }
}
