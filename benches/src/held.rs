//! The benchmark daemon's server when connections are passed
//! ([`HOLD_ENV`]): connections stay open, each answering `PING\n` with
//! `PONG\n` as often as the client asks, and a drain passes every one of
//! them to the successor with the bytes read and not yet answered.
//!
//! One thread serves them all with `poll(2)`, so that passing 10,000
//! connections costs what the library spends on them, not 10,000 threads
//! waking. Only `handoff-bench-ours` has this mode: the reference cannot
//! pass connections.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;

use handoff_std::Handover;

use crate::echo::{ANSWER, REQUEST};

/// Set (to anything) in `handoff-bench-ours`'s environment: it holds its
/// connections and passes them at a drain (this module).
pub const HOLD_ENV: &str = "HANDOFF_BENCH_HOLD";

/// A request longer than this is not one; the connection is dropped.
const MAX_PENDING: usize = 64;

/// What the handoff hooks ask of the serving thread.
enum Command {
    /// Stop accepting, pass every connection, stop serving them; answer
    /// how many were passed, or why the pass broke.
    Pass(Handover, mpsc::Sender<Result<usize, String>>),
    /// Accept and serve again (the handoff was undone).
    Resume,
    /// Serve these too: connections passed to this process.
    Adopt(Vec<(TcpStream, Vec<u8>)>),
    Quit,
}

/// One open connection and the bytes of a request not yet complete.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

/// The running server.
pub struct HeldServer {
    commands: Arc<Mutex<Vec<Command>>>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HeldServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldServer").finish_non_exhaustive()
    }
}

impl HeldServer {
    /// Starts accepting and serving on `listener`.
    pub fn start(listener: TcpListener) -> io::Result<HeldServer> {
        listener.set_nonblocking(true)?;
        let (wake_rx, wake) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let commands = Arc::new(Mutex::new(Vec::new()));
        let inbox = commands.clone();
        let thread = std::thread::Builder::new()
            .name("held-serve".into())
            .spawn(move || serve(&listener, &wake_rx, &inbox))?;
        Ok(HeldServer {
            commands,
            wake,
            thread: Some(thread),
        })
    }

    fn send(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(command);
        // A full socket already holds a wake-up.
        let _ = (&self.wake).write(&[1]);
    }

    /// The drain: stops accepting and passes every connection through
    /// `handover` (none if passing was not negotiated); returns how many
    /// were passed.
    pub fn pass(&self, handover: Handover) -> Result<usize, String> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Pass(handover, tx));
        rx.recv()
            .unwrap_or_else(|_| Err("the serving thread is gone".into()))
    }

    /// Accepts and serves again after an undone handoff.
    pub fn resume(&self) {
        self.send(Command::Resume);
    }

    /// Serves connections passed to this process, each with the bytes its
    /// predecessor had read.
    pub fn adopt(&self, conns: Vec<(TcpStream, Vec<u8>)>) {
        self.send(Command::Adopt(conns));
    }

    /// Stops serving and waits for the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.send(Command::Quit);
            let _ = t.join();
        }
    }
}

impl Drop for HeldServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Answers every whole request in `conn.pending`; `false` if the
/// connection is to be dropped.
fn answer(conn: &mut Conn) -> bool {
    while conn.pending.len() >= REQUEST.len() {
        if &conn.pending[..REQUEST.len()] != REQUEST {
            return false;
        }
        conn.pending.drain(..REQUEST.len());
        // Four bytes to a socket that has room: a client that does not
        // read its answers is dropped rather than waited for.
        if (&conn.stream).write(ANSWER).ok() != Some(ANSWER.len()) {
            return false;
        }
    }
    conn.pending.len() < MAX_PENDING
}

/// Reads what `conn` sent and answers it; `false` if it is closed or to be
/// dropped.
fn serve_one(conn: &mut Conn) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match (&conn.stream).read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                conn.pending.extend_from_slice(&buf[..n]);
                if !answer(conn) {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn serve(listener: &TcpListener, wake: &UnixStream, inbox: &Mutex<Vec<Command>>) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut accepting = true;
    // Passed and not to be touched until the handoff ends one way or the
    // other; kept with the handover that took them.
    let mut parked: Option<Handover> = None;
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        let watch = |fd: i32| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(watch(wake.as_raw_fd()));
        // While drained, the listener is not watched: its queue is for
        // the successor, and readable it would spin this loop.
        fds.push(watch(if accepting { listener.as_raw_fd() } else { -1 }));
        if parked.is_none() {
            fds.extend(conns.iter().map(|c| watch(c.stream.as_raw_fd())));
        }
        // SAFETY: `fds` is a live, initialised array of pollfd whose
        // descriptors stay open for the call (or are -1, which poll skips).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            continue;
        }
        let ready = |p: &libc::pollfd| p.revents != 0;
        if ready(&fds[0]) {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
            let commands =
                std::mem::take(&mut *inbox.lock().unwrap_or_else(PoisonError::into_inner));
            for command in commands {
                match command {
                    Command::Quit => return,
                    Command::Pass(handover, reply) => {
                        accepting = false;
                        let result = if handover.is_available() {
                            conns
                                .iter()
                                .try_for_each(|c| {
                                    handover
                                        .pass(c.stream.as_fd(), &c.pending)
                                        .map_err(|e| e.to_string())
                                })
                                .map(|()| conns.len())
                        } else {
                            Ok(0)
                        };
                        if handover.is_available() {
                            parked = Some(handover);
                        }
                        let _ = reply.send(result);
                    }
                    Command::Resume => {
                        accepting = true;
                        if let Some(handover) = parked.take()
                            && handover.taken_by_successor()
                        {
                            // The successor read what was pending; it
                            // must not be answered twice.
                            conns.iter_mut().for_each(|c| c.pending.clear());
                        }
                    }
                    Command::Adopt(adopted) => {
                        for (stream, pending) in adopted {
                            if stream.set_nonblocking(true).is_err() {
                                continue;
                            }
                            let mut conn = Conn { stream, pending };
                            if answer(&mut conn) {
                                conns.push(conn);
                            }
                        }
                    }
                }
            }
            // The list changed: poll again before looking at the others.
            continue;
        }
        if ready(&fds[1]) && accepting {
            // `WouldBlock` once the queue is empty or another process
            // took the connection.
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() && stream.set_nodelay(true).is_ok() {
                    conns.push(Conn {
                        stream,
                        pending: Vec::new(),
                    });
                }
            }
        }
        if parked.is_none() {
            let mut drop_these = Vec::new();
            for (i, p) in fds[2..].iter().enumerate() {
                if ready(p) && !serve_one(&mut conns[i]) {
                    drop_these.push(i);
                }
            }
            for i in drop_these.into_iter().rev() {
                conns.swap_remove(i);
            }
        }
    }
}
