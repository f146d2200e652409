//! The machine a run happened on, for the report.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// What BENCHMARKS.md records about the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// Logical CPUs this process may use (`nproc`).
    pub cpus: usize,
    /// The first `model name` of /proc/cpuinfo.
    pub model: String,
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// `rustc --version` of the toolchain on the PATH.
    pub rustc: String,
}

impl Machine {
    /// Looks at this machine; unknown parts read "unknown".
    pub fn detect() -> Machine {
        let unknown = || "unknown".to_owned();
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(unknown);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| unknown());
        // Cargo runs benches with the toolchain's bin directory first on
        // the PATH, so this is the compiler that built them.
        let rustc = Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(unknown);
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            model,
            kernel,
            rustc,
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nproc {}, {}, kernel {}, {}",
            self.cpus, self.model, self.kernel, self.rustc
        )
    }
}

/// The type of the file system holding `path` (`ext4`, `tmpfs`, …), from
/// the longest mount point in /proc/self/mountinfo that contains it.
pub fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            // `id parent dev root MOUNT_POINT options… - FSTYPE source …`
            let mount_point = line.split(' ').nth(4)?;
            let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
            Some((Path::new(mount_point), fstype))
        })
        .filter(|(mount_point, _)| path.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.as_os_str().len())
        .map_or_else(|| "unknown".to_owned(), |(_, fstype)| fstype.to_owned())
}

/// Raises `RLIMIT_NOFILE`'s soft limit to `need` if it is lower (up to the
/// hard limit); returns the limits then in force.
#[allow(unsafe_code)]
pub fn raise_nofile(
    need: libc::rlim_t,
) -> Result<(libc::rlim_t, libc::rlim_t), Box<dyn std::error::Error>> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a pointer to a live,
    // properly aligned local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()).into());
    }
    if lim.rlim_cur < need {
        lim.rlim_cur = need.min(lim.rlim_max);
        // SAFETY: setrlimit reads one `rlimit` through a pointer to a live
        // local; a soft limit no higher than the hard one needs no
        // privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()).into());
        }
    }
    if lim.rlim_cur < need {
        return Err(format!(
            "RLIMIT_NOFILE's hard limit {} is below the {need} descriptors needed",
            lim.rlim_max
        )
        .into());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_file_system_has_a_type() {
        let fstype = filesystem_of(Path::new("/"));
        assert!(!fstype.is_empty() && fstype != "unknown", "{fstype}");
        assert_eq!(filesystem_of(Path::new("/proc/self")), "proc");
    }
}
