//! A `Supervisor` shared between a mio loop and another adapter runs one
//! handoff at a time: the mio loop takes the supervisor's own in-flight
//! slot, not only its own bookkeeping (docs/PROTOCOL.md section 3.1, step 1: a second handoff is refused
//! with `HandoffInProgress`).

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use handoff_mio::MioSupervisor;
use handoff_std::{SpawnSpec, Supervisor, SupervisorError};
use mio::Poll;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn one_handoff_at_a_time_across_adapters() {
    let dir = TempDir(std::env::temp_dir().join(format!("hm-shared-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let ctl = dir.0.join("ctl.sock");
    // An incumbent that never answers: a handoff started stays in flight.
    let _silent = UnixListener::bind(&ctl).unwrap();
    let sup = Arc::new(Supervisor::new(&ctl).unwrap());
    let poll = Poll::new().unwrap();

    // Held elsewhere (the blocking adapter's perform_handoff takes it so):
    // the mio loop refuses.
    let elsewhere = sup.claim().unwrap();
    let mut ms = MioSupervisor::new(10, 2);
    let id = ms.add_service(sup.clone());
    let refused = ms.start_handoff(poll.registry(), id, SpawnSpec::new("/bin/true"));
    assert!(
        matches!(refused, Err(SupervisorError::HandoffInProgress)),
        "{refused:?}"
    );
    assert_eq!(ms.in_flight(), 0);
    drop(elsewhere);

    // In flight in the mio loop: the others are refused.
    ms.start_handoff(poll.registry(), id, SpawnSpec::new("/bin/true"))
        .unwrap();
    assert_eq!(ms.in_flight(), 1);
    assert!(matches!(
        sup.claim(),
        Err(SupervisorError::HandoffInProgress)
    ));
}
