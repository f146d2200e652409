//! Signals taken synchronously: a set blocked in every thread and waited
//! for with `sigwait` by one, so no handler ever runs in an arbitrary
//! thread's context (the supervisor binary's `SIGHUP`, `SIGTERM` and
//! `SIGINT`). Children do not inherit the mask: [`crate::spawn`] empties it
//! in every process it starts.

#![allow(unsafe_code)]

use std::io;

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl std::fmt::Debug for SignalSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignalSet")
    }
}

impl SignalSet {
    /// The set of `signals` (`libc::SIGHUP`, …). An invalid number is an
    /// error.
    pub fn new(signals: &[libc::c_int]) -> io::Result<SignalSet> {
        // SAFETY: an all-zero sigset_t is a valid value to initialise.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live sigset_t; sigemptyset only writes into it.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: as above; sigaddset rejects an invalid number with -1.
            if unsafe { libc::sigaddset(&mut set, sig) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }

    /// Blocks the set in the calling thread. Threads started afterwards
    /// inherit the mask, so the signals stay pending for [`SignalSet::wait`]
    /// whichever thread the kernel picks: call it before any thread starts.
    pub fn block(&self) -> io::Result<()> {
        // SAFETY: `self.0` is a live, initialised sigset_t; the old mask is
        // not asked for.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    /// Waits until one of the set is pending and takes it; its number.
    pub fn wait(&self) -> libc::c_int {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `self.0` is a live sigset_t and `sig` a live int for
            // the result.
            if unsafe { libc::sigwait(&self.0, &mut sig) } == 0 {
                return sig;
            }
        }
    }
}

/// Makes this process ignore `SIGTERM` (a test daemon that must be killed
/// with `SIGKILL`). The disposition survives `exec`.
pub fn ignore_terminate() {
    // SAFETY: installs the "ignore" disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        // Blocked in this thread only (the test harness's other threads
        // keep their masks), then raised at this thread.
        let set = SignalSet::new(&[libc::SIGUSR2]).unwrap();
        set.block().unwrap();
        // SAFETY: raise takes an integer only; the signal is blocked, so it
        // stays pending for sigwait.
        unsafe { libc::raise(libc::SIGUSR2) };
        assert_eq!(set.wait(), libc::SIGUSR2);
        assert!(SignalSet::new(&[10_000]).is_err());
    }
}
