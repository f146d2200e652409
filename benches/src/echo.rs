//! The service both benchmark daemons run, so that the only difference
//! between them is the handoff library: a TCP listener that answers
//! `PING\n` with `PONG\n` on each connection, then closes it.
//!
//! One thread accepts and answers in turn, which is plenty for one client
//! and keeps the daemon's own cost out of the figures. Draining stops it
//! from accepting (connections then wait in the kernel's queue for the
//! successor) without closing the listener, which the supervisor and the
//! successor share.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// The request a client sends.
pub const REQUEST: &[u8] = b"PING\n";
/// The answer it gets.
pub const ANSWER: &[u8] = b"PONG\n";

/// A client that stalls mid-request must not hold up the accept loop (and
/// with it the next handoff) for long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the accept thread and the handoff hooks share.
#[derive(Debug)]
pub struct EchoState {
    accepting: AtomicBool,
    quit: AtomicBool,
    answered: AtomicU64,
    /// Turns of the accept loop, so a test can tell that the loop looked at
    /// the listener after a connection queued.
    turns: AtomicU64,
    wake: UnixStream,
}

impl EchoState {
    /// Stops accepting; returns at once. Queued connections stay in the
    /// kernel's backlog for whoever accepts next.
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.kick();
    }

    /// Accepts again (after an aborted handoff).
    pub fn resume_accepting(&self) {
        self.accepting.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Connections answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn kick(&self) {
        // A full socket buffer already holds a wake-up; nothing is lost.
        let _ = (&self.wake).write(&[1]);
    }
}

/// The running server: its shared state and its accept thread.
#[derive(Debug)]
pub struct EchoServer {
    state: Arc<EchoState>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts answering on `listener` (made non-blocking: the descriptor is
    /// shared with other processes, so readiness may be stale by the time
    /// this one accepts).
    pub fn start(listener: TcpListener) -> io::Result<EchoServer> {
        listener.set_nonblocking(true)?;
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let state = Arc::new(EchoState {
            accepting: AtomicBool::new(true),
            quit: AtomicBool::new(false),
            answered: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            wake: wake_tx,
        });
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("echo-accept".into())
            .spawn(move || accept_loop(&shared, &listener, &wake_rx))?;
        Ok(EchoServer {
            state,
            thread: Some(thread),
        })
    }

    /// The state the handoff hooks act on.
    pub fn state(&self) -> Arc<EchoState> {
        self.state.clone()
    }

    /// Stops the accept thread once it has answered the connection it is
    /// on, if any, and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.state.quit.store(true, Ordering::SeqCst);
        self.state.kick();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(state: &EchoState, listener: &TcpListener, wake: &UnixStream) {
    let listener_fd = listener.as_fd();
    let wake_fd = wake.as_fd();
    loop {
        if state.quit.load(Ordering::SeqCst) {
            return;
        }
        // While drained, the listener is not watched at all: it stays
        // readable with queued connections, which would spin this loop.
        let accepting = state.accepting.load(Ordering::SeqCst);
        let ready = if accepting {
            poll_readable(&[wake_fd, listener_fd])
        } else {
            poll_readable(&[wake_fd])
        };
        let Ok(ready) = ready else { continue };
        if ready[0] {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        if state.quit.load(Ordering::SeqCst) {
            return;
        }
        if ready.get(1) == Some(&true) && state.accepting.load(Ordering::SeqCst) {
            // `WouldBlock` means another process took it; anything else is
            // that one connection's problem.
            if let Ok((stream, _)) = listener.accept()
                && answer(stream).is_ok()
            {
                state.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.turns.fetch_add(1, Ordering::SeqCst);
    }
}

fn answer(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let mut have = 0;
    while !buf[..have].contains(&b'\n') {
        match read_some(&mut stream, &mut buf[have..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
        if have == buf.len() {
            return Err(io::ErrorKind::InvalidData.into());
        }
    }
    if &buf[..have] != REQUEST {
        return Err(io::ErrorKind::InvalidData.into());
    }
    stream.write_all(ANSWER)
}

/// One `read`, again after an `EINTR`: a socket with a read timeout is
/// not restarted after the process is stopped and continued.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `poll(2)` without a timeout over `fds`; which are readable (or hung up).
fn poll_readable(fds: &[BorrowedFd<'_>]) -> io::Result<[bool; 2]> {
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 2];
    for (p, fd) in pollfds.iter_mut().zip(fds) {
        p.fd = fd.as_raw_fd();
    }
    let n = fds.len().min(2);
    loop {
        // SAFETY: `pollfds` is a live array of which the first `n` entries
        // are initialised and name descriptors borrowed for this call.
        let ret = unsafe { libc::poll(pollfds.as_mut_ptr(), n as libc::nfds_t, -1) };
        if ret >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    let ready = libc::POLLIN | libc::POLLHUP | libc::POLLERR;
    Ok([
        pollfds[0].revents & ready != 0,
        n > 1 && pollfds[1].revents & ready != 0,
    ])
}

/// One request on a new connection to `addr`: connect, `PING`, read the
/// `PONG`. Returns the time from the start of `connect` to the answer's
/// last byte.
pub fn ping(addr: std::net::SocketAddr, timeout: Duration) -> io::Result<Duration> {
    let start = std::time::Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(REQUEST)?;
    let mut buf = [0u8; 8];
    let mut have = 0;
    while have < ANSWER.len() {
        match read_some(&mut stream, &mut buf[have..])? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => have += n,
        }
    }
    let took = start.elapsed();
    if &buf[..have] != ANSWER {
        return Err(io::ErrorKind::InvalidData.into());
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_while_accepting_and_queues_while_drained() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = listener.try_clone().unwrap();
        let server = EchoServer::start(listener).unwrap();
        let state = server.state();
        ping(addr, Duration::from_secs(5)).unwrap();
        // Counted just after the answer is written, so possibly after the
        // client has read it.
        wait_for(|| state.answered() == 1, "the first answer counted");

        state.stop_accepting();
        // Connected by the kernel, but left in its queue while drained: the
        // client cannot have its answer.
        let waiting = std::thread::spawn(move || ping(addr, Duration::from_secs(20)));
        wait_for(|| accept_queue(&probe) == 1, "the connection queued");
        // Two full turns of the accept loop begun after that: a loop that
        // still watched the listener would have accepted it by then.
        let turn = state.turns.load(Ordering::SeqCst);
        wait_for(
            || {
                state.kick();
                state.turns.load(Ordering::SeqCst) >= turn + 2
            },
            "two turns of the accept loop",
        );
        assert_eq!(accept_queue(&probe), 1, "accepted while drained");
        assert!(!waiting.is_finished());
        assert_eq!(state.answered(), 1);
        state.resume_accepting();
        waiting.join().unwrap().unwrap();
        wait_for(|| state.answered() == 2, "the second answer counted");
        assert_eq!(accept_queue(&probe), 0);
        server.shutdown();
    }

    /// Waits (within 20 s) until `done` holds.
    fn wait_for(done: impl Fn() -> bool, what: &str) {
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < give_up, "never: {what}");
            std::thread::yield_now();
        }
    }

    /// The connections waiting in a listening socket's accept queue, which
    /// Linux reports as `tcpi_unacked` for a socket in the LISTEN state.
    fn accept_queue(listener: &TcpListener) -> u32 {
        // SAFETY: all zeroes is a valid `tcp_info`, and getsockopt writes
        // at most `len` bytes into it.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let r = libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            );
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            info.tcpi_unacked
        }
    }
}
