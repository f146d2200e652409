//! Whether a binary is safe to run: the file, not only its name.
//!
//! The supervisor runs as root in production, and the daemon it spawns runs
//! as the supervisor's user. Anyone who can change the program behind a
//! configured path (write the file, or rename another file into its place
//! through a directory on its way) chooses what runs as that user. So a
//! binary is run only if every object the kernel goes through to reach it
//! is beyond the reach of other users, by the rules sshd's `StrictModes`
//! and sudo apply to their own files:
//!
//! - the path is absolute and names a file: it does not end in `/`, `/.`
//!   or `/..` (which would pass a check of the file and then fail at exec
//!   with "Not a directory");
//! - the path is resolved component by component from `/`, following
//!   symbolic links (to any depth, at most 40 of them, as the kernel does)
//!   so that the directories of each link's target are checked too;
//! - every directory reached, `/` included, and the file itself, is owned
//!   by root or by the supervisor's effective uid and is neither group- nor
//!   world-writable, with one exception: a directory with the sticky bit
//!   (`/tmp`, `/var/tmp`) may be writable by others, since there only an
//!   entry's owner may rename or remove it. Every entry found in such a
//!   directory (the next directory, a link, the file) must then itself be
//!   owned by root or the supervisor: a name another user created there
//!   ahead of the install, or a link of theirs, is refused;
//! - the file is a regular file with at least one execute bit.
//!
//! Modes are read as the kernel reports them: with a POSIX ACL, the group
//! bits are the ACL's mask, so a named user or group granted write shows as
//! group-writable and is refused too.
//!
//! Elsewhere a symbolic link's own owner and mode do not matter: a link
//! cannot be changed, only replaced, and replacing it takes write access to
//! its directory, which is checked.

use std::ffi::OsString;
use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The most symbolic links one resolution follows (Linux's `MAXSYMLINKS`).
const MAX_LINKS: u32 = 40;

/// Group- and world-writable.
const WRITABLE_BY_OTHERS: u32 = 0o022;
const STICKY: u32 = 0o1000;
const ANY_EXECUTE: u32 = 0o111;

/// Why a binary may not be run; its `Display` names the binary, the
/// offending file or directory with its owner and mode, and the fix.
#[derive(Debug)]
pub(crate) struct Untrusted {
    /// The path as configured or requested.
    binary: PathBuf,
    /// The uid the check accepted besides root (the supervisor's).
    euid: u32,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    NotAbsolute,
    NulByte,
    /// The last component is empty (a trailing `/`), `.` or `..`.
    NotAFileName {
        last: String,
    },
    /// A component does not exist.
    Missing {
        path: PathBuf,
    },
    /// A component that is not a directory has more path below it.
    NotADirectory {
        path: PathBuf,
    },
    /// A component could not be inspected (other than missing).
    Inaccessible {
        path: PathBuf,
        source: io::Error,
    },
    TooManyLinks,
    /// What the path resolves to is not a regular file.
    NotRegularFile {
        path: PathBuf,
        what: &'static str,
        uid: u32,
        mode: u32,
    },
    NotExecutable {
        path: PathBuf,
        uid: u32,
        mode: u32,
    },
    /// A file or directory that users other than root and the supervisor's
    /// could change.
    Unsafe {
        path: PathBuf,
        dir: bool,
        uid: u32,
        mode: u32,
        foreign_owner: bool,
        writable: bool,
    },
}

impl Untrusted {
    /// Whether the check stopped only because this process could not see
    /// the file: it (or a directory on its way) does not exist, or looking
    /// was not permitted. The configuration tolerates that when it is read
    /// (a binary may be installed later, and a program reading the file for
    /// another reason may not be allowed to look); a start or a handoff
    /// does not.
    pub(crate) fn is_unseen(&self) -> bool {
        match &self.problem {
            Problem::Missing { .. } => true,
            Problem::Inaccessible { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// Checks that `binary` may be run by this process (see the module's
/// documentation for the rule). What passes is exactly what the caller then
/// hands to exec, unchanged: the kernel resolves the path again, but
/// nothing on it can change in between except by root or by the
/// supervisor's own user, whom the check trusts anyway.
pub(crate) fn check_binary(binary: &Path) -> Result<(), Untrusted> {
    check_binary_as(binary, effective_uid())
}

/// [`check_binary`] for a supervisor of effective uid `euid`.
fn check_binary_as(binary: &Path, euid: u32) -> Result<(), Untrusted> {
    resolve(binary, euid).map_err(|problem| Untrusted {
        binary: binary.to_path_buf(),
        euid,
        problem,
    })
}

fn effective_uid() -> u32 {
    handoff_std::os::process::effective_uid()
}

/// The components of a path as the kernel splits it: on `/`, empty ones
/// (from `//` and a leading `/`) kept so that a trailing `/` stays visible.
fn components(bytes: &[u8]) -> Vec<OsString> {
    bytes
        .split(|&b| b == b'/')
        .map(|c| OsString::from_vec(c.to_vec()))
        .collect()
}

fn resolve(binary: &Path, euid: u32) -> Result<(), Problem> {
    let bytes = binary.as_os_str().as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Problem::NotAbsolute);
    }
    if bytes.contains(&0) {
        return Err(Problem::NulByte);
    }
    // Checked on the text, before any resolution: `Path` itself drops a
    // trailing `/` and `.` when it compares or iterates.
    let last = bytes.rsplit(|&b| b == b'/').next().unwrap_or_default();
    if matches!(last, b"" | b"." | b"..") {
        return Err(Problem::NotAFileName {
            last: String::from_utf8_lossy(last).into_owned(),
        });
    }

    let root = Path::new("/");
    let root_sticky = check_dir(root, &lstat(root)?, euid)?;
    // The directory reached so far, with no link in it: every prefix of it
    // has been checked. `..` goes up from here, as the kernel's does.
    let mut at = PathBuf::from("/");
    // For `at` and each directory above it: whether it is sticky and
    // writable by others, so that what is found in it must be trusted-owned.
    let mut sticky: Vec<bool> = vec![root_sticky];
    // What is left to resolve, next component last.
    let mut pending: Vec<OsString> = components(bytes);
    pending.reverse();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if at.pop() {
                    sticky.pop();
                }
                continue;
            }
            _ => {}
        }
        let path = at.join(&name);
        let meta = lstat(&path)?;
        let kind = meta.file_type();
        if sticky.last() == Some(&true) {
            // Anyone may create names in a sticky shared directory, but
            // only an entry's owner may rename or remove one there.
            judge_owner(&path, &meta, kind.is_dir(), euid)?;
        }
        if kind.is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(Problem::TooManyLinks);
            }
            let target = std::fs::read_link(&path).map_err(|source| inaccessible(&path, source))?;
            let target = target.as_os_str().as_bytes();
            if target.first() == Some(&b'/') {
                at = PathBuf::from("/");
                sticky = vec![root_sticky];
            }
            // The link's components come next, then the rest of the path.
            pending.extend(components(target).into_iter().rev());
            continue;
        }
        let more = !pending.is_empty();
        if kind.is_dir() {
            if !more {
                return Err(not_regular(path, &meta));
            }
            sticky.push(check_dir(&path, &meta, euid)?);
            at = path;
            continue;
        }
        if more {
            // Exec would fail with ENOTDIR: refused here rather than there.
            return Err(Problem::NotADirectory { path });
        }
        if !kind.is_file() {
            return Err(not_regular(path, &meta));
        }
        check_owner_and_mode(&path, &meta, false, euid)?;
        let mode = meta.mode() & 0o7777;
        if mode & ANY_EXECUTE == 0 {
            return Err(Problem::NotExecutable {
                path,
                uid: meta.uid(),
                mode,
            });
        }
        return Ok(());
    }
    // The last component came from a link whose target ends in `/`, `.` or
    // `..`: what the path names is the directory reached.
    let meta = lstat(&at)?;
    Err(not_regular(at, &meta))
}

fn lstat(path: &Path) -> Result<Metadata, Problem> {
    std::fs::symlink_metadata(path).map_err(|source| inaccessible(path, source))
}

fn inaccessible(path: &Path, source: io::Error) -> Problem {
    if source.kind() == io::ErrorKind::NotFound {
        Problem::Missing {
            path: path.to_path_buf(),
        }
    } else {
        Problem::Inaccessible {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn not_regular(path: PathBuf, meta: &Metadata) -> Problem {
    let kind = meta.file_type();
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a named pipe"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Problem::NotRegularFile {
        path,
        what,
        uid: meta.uid(),
        mode: meta.mode() & 0o7777,
    }
}

fn check_owner_and_mode(path: &Path, meta: &Metadata, dir: bool, euid: u32) -> Result<(), Problem> {
    judge(path, meta.uid(), meta.mode() & 0o7777, dir, euid)
}

/// The owner half of the rule, for an entry of a sticky shared directory
/// (a link's owner counts there too).
fn judge_owner(path: &Path, meta: &Metadata, dir: bool, euid: u32) -> Result<(), Problem> {
    let uid = meta.uid();
    if uid != 0 && uid != euid {
        return Err(Problem::Unsafe {
            path: path.to_path_buf(),
            dir,
            uid,
            mode: meta.mode() & 0o7777,
            foreign_owner: true,
            writable: false,
        });
    }
    Ok(())
}

/// Checks a directory on the way; `true` if it is a sticky directory that
/// others may write (`/tmp`), whose entries must then be trusted-owned.
fn check_dir(path: &Path, meta: &Metadata, euid: u32) -> Result<bool, Problem> {
    let mode = meta.mode() & 0o7777;
    let shared = mode & STICKY != 0 && mode & WRITABLE_BY_OTHERS != 0;
    if shared {
        // Its owner could still rename what is in it.
        judge_owner(path, meta, true, euid)?;
    } else {
        judge(path, meta.uid(), mode, true, euid)?;
    }
    Ok(shared)
}

/// The rule for one file or directory of owner `uid` and permission bits
/// `mode`, for a supervisor of effective uid `euid`.
fn judge(path: &Path, uid: u32, mode: u32, dir: bool, euid: u32) -> Result<(), Problem> {
    let foreign_owner = uid != 0 && uid != euid;
    let writable = mode & WRITABLE_BY_OTHERS != 0;
    if foreign_owner || writable {
        return Err(Problem::Unsafe {
            path: path.to_path_buf(),
            dir,
            uid,
            mode,
            foreign_owner,
            writable,
        });
    }
    Ok(())
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let binary = self.binary.display();
        match &self.problem {
            Problem::NotAbsolute => write!(
                f,
                "{binary:?} is not an absolute path: it would be looked up relative to the \
                 supervisor's working directory (or in PATH) at each start, and could name \
                 another file each time; write the full path, from /"
            ),
            Problem::NulByte => write!(f, "{binary:?} contains a NUL byte, which no path can hold"),
            Problem::NotAFileName { last } if last.is_empty() => write!(
                f,
                "{binary} ends in '/', so it names a directory, not a program (exec would fail \
                 with \"Not a directory\"); remove the trailing '/'"
            ),
            Problem::NotAFileName { last } => write!(
                f,
                "{binary} ends in '/{last}', so it names a directory, not a program; name the \
                 program file itself"
            ),
            Problem::Missing { path } if path == &self.binary => {
                write!(f, "{binary} does not exist")
            }
            Problem::Missing { path } => write!(
                f,
                "{binary} does not exist: there is no {} on its way",
                path.display()
            ),
            Problem::NotADirectory { path } => write!(
                f,
                "{binary} cannot be run: {} is not a directory, but the path goes on below it",
                path.display()
            ),
            Problem::Inaccessible { path, source } => {
                write!(f, "cannot check {binary}: {}: {source}", path.display())
            }
            Problem::TooManyLinks => write!(
                f,
                "{binary} cannot be run: more than {MAX_LINKS} symbolic links on its way (a \
                 loop?)"
            ),
            Problem::NotRegularFile {
                path,
                what,
                uid,
                mode,
            } => write!(
                f,
                "{binary} is not a program file: {} (owner uid {uid}, mode {mode:04o}) is \
                 {what}; name a regular executable file",
                path.display()
            ),
            Problem::NotExecutable { path, uid, mode } => write!(
                f,
                "{binary} is not executable: {} (owner uid {uid}, mode {mode:04o}) has no \
                 execute bit; run `chmod u+x {}`",
                path.display(),
                path.display()
            ),
            Problem::Unsafe {
                path,
                dir,
                uid,
                mode,
                foreign_owner,
                writable,
            } => {
                let (user, trusted) = if self.euid == 0 {
                    ("root".to_owned(), "root".to_owned())
                } else {
                    (
                        format!("uid {}", self.euid),
                        format!("root and uid {}", self.euid),
                    )
                };
                let p = path.display();
                write!(f, "{binary} is not safe to run as {user}: ")?;
                if *dir {
                    write!(f, "directory {p} on its way")?;
                } else if path == &self.binary {
                    f.write_str("the file")?;
                } else {
                    write!(f, "it resolves to {p}, which")?;
                }
                write!(f, " (owner uid {uid}, mode {mode:04o}) ")?;
                let whom = match mode & WRITABLE_BY_OTHERS {
                    0o020 => "its group",
                    0o002 => "all users",
                    _ => "its group and all users",
                };
                match (foreign_owner, writable) {
                    (true, true) => write!(f, "belongs to another user and is writable by {whom}")?,
                    (true, false) => f.write_str("belongs to another user")?,
                    _ => write!(f, "is writable by {whom}")?,
                }
                let change = if *dir {
                    "put another program in the binary's place"
                } else {
                    "change the program"
                };
                write!(f, ", so users other than {trusted} could {change}; ")?;
                let mut fixes = Vec::new();
                if *foreign_owner {
                    fixes.push(format!("chown root {p}"));
                }
                if *writable {
                    fixes.push(format!("chmod go-w {p}"));
                }
                write!(f, "run `{}`", fixes.join(" && "))
            }
        }
    }
}

impl std::error::Error for Untrusted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Inaccessible { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused(path: &str) -> String {
        match check_binary(Path::new(path)) {
            Ok(()) => panic!("{path} passed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_system_binary_passes() {
        // Root-owned and 0755 on every system; on a merged /usr, /bin is a
        // link to usr/bin, whose directories are then checked too.
        check_binary(Path::new("/bin/sh")).unwrap();
        check_binary(Path::new("/usr/bin//env")).unwrap();
        check_binary(Path::new("/usr/./bin/../bin/env")).unwrap();
    }

    #[test]
    fn a_path_that_names_no_file_is_refused_before_the_filesystem_is_asked() {
        for path in ["sh", "./sh", "bin/sh", ""] {
            let e = refused(path);
            assert!(e.contains("not an absolute path"), "{path}: {e}");
        }
        let e = refused("/bin/sh/");
        assert!(
            e.contains("/bin/sh/ ends in '/'") && e.contains("Not a directory"),
            "{e}"
        );
        assert!(refused("/bin/sh/.").contains("ends in '/.'"));
        assert!(refused("/bin/..").contains("ends in '/..'"));
        assert!(refused("/").contains("ends in '/'"));
        assert!(refused("/bin/s\0h").contains("NUL"));
    }

    #[test]
    fn what_is_not_an_executable_file_is_refused() {
        let e = refused("/usr/bin");
        assert!(
            e.contains("/usr/bin (owner uid 0, mode 0755) is a directory"),
            "{e}"
        );
        let e = refused("/dev/null");
        assert!(e.contains("a character device"), "{e}");
        let e = refused("/bin/sh/x");
        assert!(
            e.contains("is not a directory, but the path goes on"),
            "{e}"
        );
        let e = refused("/nonexistent-hsup/kvd");
        assert!(
            e.contains("there is no /nonexistent-hsup on its way"),
            "{e}"
        );
        assert!(
            check_binary(Path::new("/nonexistent-hsup"))
                .unwrap_err()
                .is_unseen()
        );
        assert!(
            !check_binary(Path::new("/dev/null"))
                .unwrap_err()
                .is_unseen()
        );
    }

    #[test]
    fn the_owner_must_be_root_or_the_supervisor_and_no_one_else_may_write() {
        // /bin/sh is root's: it passes whoever the supervisor is.
        check_binary_as(Path::new("/bin/sh"), 4242).unwrap();
        let (file, dir) = (Path::new("/opt/kv/kvd"), Path::new("/opt"));
        for (uid, mode, euid) in [(0, 0o755, 0), (0, 0o4711, 4242), (4242, 0o700, 4242)] {
            judge(file, uid, mode, false, euid).unwrap();
            judge(dir, uid, mode, true, euid).unwrap();
        }
        // Another owner, a group or world write bit (sticky or not).
        for (uid, mode, euid) in [
            (12345, 0o755, 0),
            (12345, 0o755, 4242),
            (0, 0o775, 0),
            (0, 0o757, 4242),
            (0, 0o1777, 0),
            (4242, 0o720, 4242),
        ] {
            assert!(
                judge(file, uid, mode, false, euid).is_err(),
                "{uid} {mode:o} {euid}"
            );
            assert!(
                judge(dir, uid, mode, true, euid).is_err(),
                "{uid} {mode:o} {euid}"
            );
        }

        let shown = |path: &Path, uid, mode, dir| {
            Untrusted {
                binary: file.into(),
                euid: 0,
                problem: judge(path, uid, mode, dir, 0).unwrap_err(),
            }
            .to_string()
        };
        let e = shown(file, 12345, 0o777, false);
        assert_eq!(
            e,
            "/opt/kv/kvd is not safe to run as root: the file (owner uid 12345, mode 0777) \
             belongs to another user and is writable by its group and all users, so users \
             other than root could change the program; run `chown root /opt/kv/kvd && chmod \
             go-w /opt/kv/kvd`"
        );
        let e = shown(dir, 0, 0o775, true);
        assert_eq!(
            e,
            "/opt/kv/kvd is not safe to run as root: directory /opt on its way (owner uid 0, \
             mode 0775) is writable by its group, so users other than root could put another \
             program in the binary's place; run `chmod go-w /opt`"
        );
    }
}
