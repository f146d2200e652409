//! Crash points for tests: with the `crash-points` feature, a process whose
//! `HANDOFF_CRASH_AT` names a point exits with status 99 the moment it gets
//! there, without running destructors, as a `kill -9` at that instant would.
//! Without the feature every call compiles to nothing.
//!
//! Points are named after protocol events: `<role>-after-<message>-sent`
//! and `<role>-after-<message>-received` for every frame (role `supervisor`,
//! `incumbent` or `successor`, message in kebab case, e.g. `supervisor-after-prepare-handoff-sent`), plus
//! `incumbent-after-lock-released`, `successor-after-lock-acquired` and
//! `successor-before-control-path-taken` (a successor past `Ready`, about to rename
//! its control socket over the path). If
//! `HANDOFF_CRASH_MARKER` names a file, the point's name is written there
//! first, so a test can tell the crash happened where it meant it to.

/// The process is at `point`.
#[inline]
pub fn at(point: &str) {
    #[cfg(feature = "crash-points")]
    enabled::at(point);
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}

/// `role` just wrote (`sent == true`) or read this frame.
#[inline]
pub fn frame(role: &str, sent: bool, frame: &[u8]) {
    #[cfg(feature = "crash-points")]
    enabled::frame(role, sent, frame);
    #[cfg(not(feature = "crash-points"))]
    let _ = (role, sent, frame);
}

#[cfg(feature = "crash-points")]
mod enabled {
    use std::sync::OnceLock;

    use handoff_core::{Message, MessageKind};

    fn wanted() -> Option<&'static str> {
        static WANTED: OnceLock<Option<String>> = OnceLock::new();
        WANTED
            .get_or_init(|| std::env::var("HANDOFF_CRASH_AT").ok())
            .as_deref()
    }

    pub(super) fn at(point: &str) {
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

    pub(super) fn frame(role: &str, sent: bool, frame: &[u8]) {
        let Some(wanted) = wanted() else { return };
        let Some(kind) = frame
            .get(6..)
            .and_then(|p| Message::decode(p).ok())
            .map(|m| m.kind())
        else {
            return;
        };
        let point = format!(
            "{role}-after-{}-{}",
            kebab(kind),
            if sent { "sent" } else { "received" }
        );
        if point == wanted {
            at(&point);
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
}
