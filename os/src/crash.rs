//! Crash points for tests: with the `crash-points` feature, a process whose
//! `HANDOFF_CRASH_AT` names a point exits with status 99 the moment it gets
//! there, without running destructors, as a `kill -9` at that instant would.
//! Without the feature every call compiles to nothing and the variable is
//! never read.
//!
//! The points are [`POINTS`], and only those: a name that is not one of
//! them is refused when the variable is first read (the process says so,
//! with the list, and exits with status 98), so a misspelt point cannot
//! quietly test a handoff that never crashed. They are:
//!
//! - `<role>-after-<message>-sent` for every frame that role writes in a
//!   handoff that commits, the moment the frame is in the socket;
//! - `<role>-after-<message>-received` for every frame it reads in one, the
//!   moment its machine has taken the frame in and before anything that
//!   follows from it is done (no answer is sent, no lock taken);
//! - `supervisor-after-spawn`, `incumbent-after-lock-released`,
//!   `successor-after-lock-acquired` and `successor-before-control-path-taken`
//!   (a successor past `Ready`, about to rename its control socket over the
//!   path).
//!
//! A name covers the first time its role gets there (the supervisor sends
//! `HelloAck` to the incumbent, then to the successor: the point is the
//! first). If `HANDOFF_CRASH_MARKER` names a file, the point's name is
//! written there first, so a test can tell the crash happened where it
//! meant it to. With `HANDOFF_CRASH_MODE=stop` the process stops
//! (`SIGSTOP`) instead of exiting. If `HANDOFF_CRASH_TRACE` names a file,
//! every point the process passes is appended to it, one line each, so a
//! test can see what each peer had done when one of them crashed.

/// Every crash point, in the order a committed handoff reaches them.
pub const POINTS: &[&str] = &[
    "incumbent-after-hello-sent",
    "supervisor-after-hello-received",
    "supervisor-after-hello-ack-sent",
    "supervisor-after-heartbeat-sent",
    "incumbent-after-hello-ack-received",
    "incumbent-after-heartbeat-received",
    "supervisor-after-spawn",
    "successor-after-hello-sent",
    "successor-after-hello-ack-received",
    "successor-after-heartbeat-received",
    "supervisor-after-prepare-handoff-sent",
    "incumbent-after-prepare-handoff-received",
    "incumbent-after-drained-sent",
    "supervisor-after-drained-received",
    "supervisor-after-seal-request-sent",
    "incumbent-after-seal-request-received",
    "incumbent-after-lock-released",
    "incumbent-after-seal-complete-sent",
    "supervisor-after-seal-complete-received",
    "supervisor-after-begin-sent",
    "successor-after-begin-received",
    "successor-after-lock-acquired",
    "successor-after-ready-sent",
    "successor-before-control-path-taken",
    "supervisor-after-ready-received",
    "supervisor-after-commit-sent",
    "incumbent-after-commit-received",
];

/// Points reached only in a handoff that passes connections
/// (docs/PROTOCOL.md section 11), so not in [`POINTS`]:
/// `successor-after-passed-batch-received`, once the successor has taken
/// every connection of a message of passed descriptors, each time (a test
/// passing more than one message's worth crashes it with the rest still
/// to come).
pub const PASS_POINTS: &[&str] = &["successor-after-passed-batch-received"];

/// The points of `role` (`supervisor`, `incumbent`, `successor`), in the
/// order a committed handoff reaches them.
pub fn points_of(role: &str) -> impl Iterator<Item = &'static str> + '_ {
    POINTS
        .iter()
        .copied()
        .filter(move |p| p.strip_prefix(role).is_some_and(|r| r.starts_with('-')))
}

/// Reads `HANDOFF_CRASH_AT` now, so that a name that is not a crash point
/// stops the process at start, not at the first point it passes. The
/// drivers call it when they are made.
#[inline]
pub fn check() {
    #[cfg(feature = "crash-points")]
    let _ = enabled::wanted();
}

/// The process is at `point` (one of [`POINTS`]).
#[inline]
pub fn at(point: &str) {
    #[cfg(feature = "crash-points")]
    enabled::at(point);
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}

/// `role` just wrote this frame (whole, length prefix included).
#[inline]
pub fn sent(role: &str, frame: &[u8]) {
    #[cfg(feature = "crash-points")]
    enabled::sent(role, frame);
    #[cfg(not(feature = "crash-points"))]
    let _ = (role, frame);
}

/// Follows what a role's machine takes from one connection, to find where
/// each frame it reads ends: the `…-received` points are reached there.
/// Without the feature it holds nothing and does nothing.
#[derive(Debug, Default)]
pub struct Received {
    #[cfg(feature = "crash-points")]
    frames: enabled::Frames,
}

impl Received {
    /// `role`'s machine took `bytes`, the next bytes of the connection.
    #[inline]
    pub fn took(&mut self, role: &str, bytes: &[u8]) {
        #[cfg(feature = "crash-points")]
        self.frames.took(role, bytes);
        #[cfg(not(feature = "crash-points"))]
        let _ = (role, bytes);
    }
}

#[cfg(feature = "crash-points")]
mod enabled {
    use std::sync::OnceLock;

    use handoff_core::{FrameDecoder, Message, MessageKind};

    /// The point asked for, once read and checked.
    pub(super) fn wanted() -> Option<&'static str> {
        static WANTED: OnceLock<Option<String>> = OnceLock::new();
        WANTED
            .get_or_init(|| {
                let wanted = std::env::var("HANDOFF_CRASH_AT").ok()?;
                let known = super::POINTS.iter().chain(super::PASS_POINTS);
                if !known.clone().any(|p| *p == wanted) {
                    let all: Vec<&str> = known.copied().collect();
                    eprintln!(
                        "HANDOFF_CRASH_AT={wanted:?} is not a crash point; the points are: {}",
                        all.join(", ")
                    );
                    // SAFETY: `_exit` takes no pointers and never returns.
                    #[allow(unsafe_code)]
                    unsafe {
                        libc::_exit(98)
                    };
                }
                Some(wanted)
            })
            .as_deref()
    }

    /// The trace file asked for, if any.
    fn trace() -> Option<&'static std::path::Path> {
        static TRACE: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
        TRACE
            .get_or_init(|| std::env::var_os("HANDOFF_CRASH_TRACE").map(Into::into))
            .as_deref()
    }

    /// Whether any point is looked for (naming frames costs a decode).
    fn active() -> bool {
        wanted().is_some() || trace().is_some()
    }

    pub(super) fn at(point: &str) {
        if let Some(path) = trace() {
            use std::io::Write as _;
            // One short write in append mode: lines from several processes
            // do not interleave.
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
            {
                let _ = f.write_all(format!("{point}\n").as_bytes());
            }
        }
        if wanted() != Some(point) {
            return;
        }
        if let Ok(marker) = std::env::var("HANDOFF_CRASH_MARKER") {
            let _ = std::fs::write(marker, point);
        }
        if std::env::var_os("HANDOFF_CRASH_MODE").is_some_and(|m| m == "stop") {
            // Frozen rather than dead, as under a debugger or a frozen
            // cgroup: the whole process stops here, and goes on from here
            // once a SIGCONT comes. Sent to this thread (raise), so that it
            // stops before it returns; sent to the process, another thread
            // might take it while this one runs on.
            #[allow(unsafe_code)]
            // SAFETY: raise takes an integer only.
            unsafe {
                libc::raise(libc::SIGSTOP)
            };
            return;
        }
        // `_exit`: no destructors, no flushing, no unlocking beyond what the
        // kernel does for a dead process.
        #[allow(unsafe_code)]
        // SAFETY: `_exit` takes no pointers and never returns.
        unsafe {
            libc::_exit(99)
        };
    }

    /// The point for `role` and a frame of `kind`, if one is asked for.
    fn frame_point(role: &str, kind: MessageKind, sent: bool) {
        if !active() {
            return;
        }
        let point = format!(
            "{role}-after-{}-{}",
            kebab(kind),
            if sent { "sent" } else { "received" }
        );
        at(&point);
    }

    pub(super) fn sent(role: &str, frame: &[u8]) {
        if !active() {
            return;
        }
        if let Some(m) = frame.get(6..).and_then(|p| Message::decode(p).ok()) {
            frame_point(role, m.kind(), true);
        }
    }

    /// A decoder beside the machine's, fed the same bytes, to see where
    /// frames end. One that fails (garbage from the peer, which the
    /// machine refuses on its own) stays quiet from then on.
    #[derive(Default)]
    pub(super) struct Frames {
        decoder: FrameDecoder<Vec<u8>>,
    }

    impl std::fmt::Debug for Frames {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Frames")
                .field("partial", &self.decoder.has_partial())
                .finish()
        }
    }

    impl Frames {
        pub(super) fn took(&mut self, role: &str, mut bytes: &[u8]) {
            if !active() {
                return;
            }
            while !bytes.is_empty() && !self.decoder.is_failed() {
                let (used, found) = self.decoder.decode(bytes);
                if let Ok(Some(frame)) = found {
                    let kind = frame.message.kind();
                    frame_point(role, kind, false);
                }
                bytes = &bytes[used.min(bytes.len())..];
                if used == 0 {
                    break;
                }
            }
        }
    }

    fn kebab(kind: MessageKind) -> String {
        let mut out = String::new();
        for (i, c) in kind.name().chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('-');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_frame_point_names_a_message_in_kebab_case() {
            let names: Vec<String> = MessageKind::ALL.iter().map(|k| kebab(*k)).collect();
            for p in super::super::POINTS {
                let Some(rest) = p.split_once("-after-").map(|(_, r)| r) else {
                    continue;
                };
                let Some(msg) = rest
                    .strip_suffix("-sent")
                    .or_else(|| rest.strip_suffix("-received"))
                else {
                    continue;
                };
                assert!(
                    names.iter().any(|n| n == msg)
                        || ["spawn", "lock-released", "lock-acquired"].contains(&msg),
                    "{p}"
                );
            }
        }
    }
}
