//! Spawns from several threads at once, in a binary of its own so that no
//! other test opens or closes descriptors meanwhile.
//!
//! Each spawn opens and closes descriptors of its own (copies of its
//! listeners and streams, lifted above the numbers they take in the child)
//! while the others run, and the numbers the listeners take are free in the
//! parent: every exec failure must still come back to the spawn it belongs
//! to, none reported as a started child.

use std::net::TcpListener;
use std::os::fd::AsFd;

use handoff_std::os::spawn::{Launch, PassedListener, SpawnError, spawn_cold_vfork};

const THREADS: usize = 4;
const SPAWNS: usize = 150;

#[test]
fn concurrent_spawns_of_a_missing_binary_all_report_the_exec_failure() {
    // The listeners sit above the numbers they take in the child, which
    // are left free, as in a supervisor with many descriptors open.
    let low: Vec<std::fs::File> = (0..8)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    drop(low);
    let names = ["a", "b", "c"];
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    let passed: Vec<PassedListener<'_>> = listeners
                        .iter()
                        .zip(names)
                        .map(|(l, name)| PassedListener {
                            name,
                            fd: l.as_fd(),
                        })
                        .collect();
                    let mut unreported = 0;
                    for _ in 0..SPAWNS {
                        let launch = Launch::new("/nonexistent/handoff-successor");
                        match spawn_cold_vfork(launch, &passed) {
                            Err(SpawnError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                            Err(e) => panic!("unexpected error: {e}"),
                            Ok(mut child) => {
                                let _ = child.wait();
                                unreported += 1;
                            }
                        }
                    }
                    unreported
                })
            })
            .collect();
        let unreported: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
        assert_eq!(
            unreported,
            0,
            "{unreported} of {} exec failures were reported as a started child",
            THREADS * SPAWNS
        );
    });
}
