//! Spawns with the test process's own descriptor 0 swapped out for a moment.
//! In a test binary of their own: FD 0 is the whole process's, and the
//! other tests spawn children meanwhile. A lock keeps these two apart too.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use handoff_std::os::spawn::{ChildStdio, Launch};

const BOUND: Duration = Duration::from_secs(20);

/// Held while FD 0 is not the process's own.
static FD0: Mutex<()> = Mutex::new(());

/// Runs `f` with `fd` copied onto this process's FD 0, which is put back
/// before anything else can use it.
fn with_fd0<T>(fd: &impl std::os::fd::AsRawFd, f: impl FnOnce() -> T) -> T {
    let _fd0 = FD0.lock().unwrap();
    #[allow(unsafe_code)]
    // SAFETY: plain descriptor calls on descriptors the caller owns; FD 0 is
    // restored from its saved copy, which is then closed.
    unsafe {
        let saved = libc::dup(0);
        assert!(saved >= 0);
        assert_eq!(libc::dup2(fd.as_raw_fd(), 0), 0);
        let out = f();
        assert_eq!(libc::dup2(saved, 0), 0);
        libc::close(saved);
        out
    }
}

#[test]
fn a_successor_reads_its_standard_input_from_dev_null() {
    // With no listeners the control socket is FD 3: the child reports there
    // what its FD 0 is.
    let spec = handoff_std::SpawnSpec::new("/bin/sh")
        .arg("-c")
        .arg("readlink /proc/self/fd/0 >&3");
    // Our own FD 0 is a pipe while the successor is spawned, so that one
    // inherited would show (the test runner's may well be /dev/null).
    let (pipe_in, _pipe_out) = UnixStream::pair().unwrap();
    let spawned = with_fd0(&pipe_in, || handoff_std::spawn_for_handoff(&spec, &[]));
    let (mut ours, mut child) = spawned.unwrap();
    ours.set_read_timeout(Some(BOUND)).unwrap();
    let mut said = String::new();
    ours.read_to_string(&mut said).unwrap();
    assert_eq!(said.trim(), "/dev/null");
    assert!(child.wait().unwrap().success());
}

#[test]
fn a_listener_at_descriptor_0_reaches_the_child_at_3() {
    // A process started with its standard input closed binds its first
    // socket at FD 0; the child's stdio setup (stdin from /dev/null here)
    // must not replace it before it is moved to 3.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let want = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&listener)
    ))
    .unwrap();
    let mut launch = Launch::new("/bin/sh");
    launch
        .args(["-c", "readlink /proc/self/fd/3"])
        .stdin(ChildStdio::Null)
        .stdout(ChildStdio::Piped);
    let spawned = with_fd0(&listener, || {
        #[allow(unsafe_code)]
        // SAFETY: FD 0 is the listener's copy for the whole closure.
        let at_0 = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
        handoff_std::os::spawn::spawn_cold_vfork(
            launch,
            &[handoff_std::os::spawn::PassedListener {
                name: "main",
                fd: at_0,
            }],
        )
    });
    let out = spawned.unwrap().wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        want.to_string_lossy()
    );
}
