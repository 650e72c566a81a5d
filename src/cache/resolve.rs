//! Turning a request's file name into a file under the root, and nothing
//! else: every open goes through `openat2(RESOLVE_BENEATH)`, so `..`,
//! absolute symlinks and symlinks that climb out of the root are refused by
//! the kernel, not by string checks that can be raced or fooled.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use crate::sys::fs::{file_type, open_beneath, reopen};

/// Longest file name accepted from a request, in bytes.
pub const FILENAME_BYTES_MAX: usize = 255 * 4;

/// Why a name was refused (the shard maps it to a TFTP ERROR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRefusal {
    NotFound,
    AccessViolation,
    /// The file system said no (EACCES/EPERM): modes, or --user.
    PermissionDenied,
    IsDirectory,
    /// A FIFO, socket or device node: never opened for reading (a FIFO
    /// would block until a writer came, a device open can have effects).
    NotRegular,
    NameTooLong,
    /// A `..` that climbs above the root, or a symlink that points out of
    /// it (openat2's EXDEV), or an absolute name under none of the
    /// `--absolute-dir` directories.
    OutsideRoot,
    /// A relative name where only absolute ones are served
    /// (`--absolute-dir`).
    NotAbsolute,
    /// The process is out of file descriptors (EMFILE/ENFILE): not the
    /// client's fault, and worth retrying.
    NoDescriptors,
    /// An upload may not replace this existing file.
    Exists,
    /// An upload outside the directory uploads are confined to.
    OutsideUploadDir,
    /// Another upload of the same name is under way.
    BeingWritten,
    /// Something the server shares is unavailable (a poisoned lock).
    Busy,
}

/// Cleans a request's name into a path relative to the root: `/x` and `x`
/// mean the same file, Windows clients' `\` separators become `/`, and a
/// `..` takes the component before it away (`pxelinux.cfg/../pxelinux.0`
/// is `pxelinux.0`, as PXELINUX path-prefix layouts ask and tftpd-hpa
/// serves). Refuses a `..` that would leave the root, control characters
/// and overlong names. `..` is resolved here, by name, so that what follows
/// (openat2 with RESOLVE_BENEATH, the upload directory check) only ever
/// sees a name without one.
pub fn relative_name(name: &[u8], out: &mut Vec<u8>) -> Result<(), PathRefusal> {
    out.clear();
    if name.len() > FILENAME_BYTES_MAX {
        return Err(PathRefusal::NameTooLong);
    }
    for component in name.split(|&b| b == b'/' || b == b'\\') {
        match component {
            b"" | b"." => continue,
            b".." => {
                if out.is_empty() {
                    return Err(PathRefusal::OutsideRoot);
                }
                let keep = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(keep);
            }
            c if c.iter().any(|&b| b < 0x20 || b == 0x7f) => {
                return Err(PathRefusal::AccessViolation);
            }
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    if out.is_empty() {
        return Err(PathRefusal::AccessViolation);
    }
    Ok(())
}

/// Whether `name` has a `..` component (either separator).
pub fn has_dot_dot(name: &[u8]) -> bool {
    name.split(|&b| b == b'/' || b == b'\\').any(|c| c == b"..")
}

/// Maps an errno from opening a name to the refusal a client sees.
pub fn refusal_for(err: &io::Error) -> PathRefusal {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => PathRefusal::NotFound,
        Some(libc::EMFILE) | Some(libc::ENFILE) => PathRefusal::NoDescriptors,
        Some(libc::EISDIR) => PathRefusal::IsDirectory,
        Some(libc::ENAMETOOLONG) => PathRefusal::NameTooLong,
        Some(libc::EACCES) | Some(libc::EPERM) => PathRefusal::PermissionDenied,
        // RESOLVE_BENEATH: the path would leave the root (a symlink out).
        Some(libc::EXDEV) => PathRefusal::OutsideRoot,
        _ => PathRefusal::AccessViolation,
    }
}

/// `scratch` (a name from [`relative_name`]) NUL-terminated for a syscall.
/// `relative_name` refuses control characters, so there is no inner NUL.
pub fn as_c_path(scratch: &mut Vec<u8>) -> Result<&CStr, PathRefusal> {
    scratch.push(0);
    CStr::from_bytes_with_nul(scratch).map_err(|_| PathRefusal::AccessViolation)
}

/// The served directory, held open so a rename of its path cannot redirect us.
#[derive(Debug)]
pub struct Root {
    dir: File,
}

impl Root {
    pub fn open(path: &std::path::Path) -> io::Result<Root> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_directory()
            .open(path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let root = Root { dir };
        // openat2 appeared in Linux 5.6; refuse to run without it rather than
        // fall back to a weaker check.
        match open_beneath(root.fd(), c".", libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2 is not available (Linux 5.6 or later is required)",
            )),
            Err(e) => Err(e),
            Ok(_) => Ok(root),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.dir.as_raw_fd()
    }

    /// Whether `name` (one component: no `/`, no `..`) is a directory
    /// right under the root. Symlinks are followed only within the root.
    /// Only "no such directory" is `Ok(false)`: running out of descriptors
    /// must not quietly serve another directory's files.
    pub fn has_directory(&self, name: &[u8], scratch: &mut Vec<u8>) -> Result<bool, PathRefusal> {
        if name.is_empty() || name.contains(&b'/') || name == b".." || name == b"." {
            return Ok(false);
        }
        relative_name(name, scratch)?;
        let path = as_c_path(scratch)?;
        match open_beneath(self.fd(), path, libc::O_PATH | libc::O_DIRECTORY, 0) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(false),
            Err(e) => Err(refusal_for(&e)),
        }
    }

    /// Opens a regular file for reading, without ever blocking or touching
    /// anything else: the name is resolved with `O_PATH` (which opens
    /// nothing: no FIFO waits for a writer, no device runs its open), the
    /// type is checked, and only a regular file is then opened for reading,
    /// the same inode through `/proc/self/fd`, non-blocking.
    pub fn open_read(&self, name: &[u8], scratch: &mut Vec<u8>) -> Result<File, PathRefusal> {
        relative_name(name, scratch)?;
        let path = as_c_path(scratch)?;
        let handle = open_beneath(self.fd(), path, libc::O_PATH, 0).map_err(|e| refusal_for(&e))?;
        check_regular(&handle)?;
        let read = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = match reopen(&handle, read) {
            Ok(fd) => fd,
            // No /proc: open the name again; the type check below catches a
            // swap in between, and O_NONBLOCK keeps a FIFO from blocking.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                open_beneath(self.fd(), path, read, 0).map_err(|e| refusal_for(&e))?
            }
            Err(e) => return Err(refusal_for(&e)),
        };
        check_regular(&fd)?;
        Ok(File::from(fd))
    }
}

/// Where requested names are served from: one root that every name is
/// relative to (ROOT, as tftpd-hpa's -s), or directories that absolute
/// names must start with (`--absolute-dir`, tftpd-hpa without -s: a
/// request for `/srv/tftp/x` is `x` under `/srv/tftp`).
#[derive(Debug)]
pub enum Roots {
    One(Root),
    Absolute(Vec<(Vec<u8>, Root)>),
}

/// Directories `--absolute-dir` may list, at most.
pub const ABSOLUTE_DIRS_MAX: usize = 64;

impl Roots {
    /// The single root, if names are relative to one (`--per-client-root`
    /// needs it).
    pub fn one(&self) -> Option<&Root> {
        match self {
            Roots::One(root) => Some(root),
            Roots::Absolute(_) => None,
        }
    }

    /// The root `name` is served from, and the name below it. With
    /// absolute directories a relative name is refused, as tftpd-hpa
    /// refuses it without -s, and so is one under none of them.
    pub fn select<'n>(&self, name: &'n [u8]) -> Result<(&Root, &'n [u8]), PathRefusal> {
        let dirs = match self {
            Roots::One(root) => return Ok((root, name)),
            Roots::Absolute(dirs) => dirs,
        };
        if !name.starts_with(b"/") {
            return Err(PathRefusal::NotAbsolute);
        }
        for (prefix, root) in dirs {
            if let Some(rest) = name.strip_prefix(prefix.as_slice())
                && (rest.is_empty() || rest.starts_with(b"/"))
            {
                return Ok((root, rest));
            }
        }
        Err(PathRefusal::OutsideRoot)
    }
}

fn check_regular(fd: &impl AsRawFd) -> Result<(), PathRefusal> {
    match file_type(fd).map_err(|e| refusal_for(&e))? {
        libc::S_IFREG => Ok(()),
        libc::S_IFDIR => Err(PathRefusal::IsDirectory),
        _ => Err(PathRefusal::NotRegular),
    }
}

trait DirectoryFlag {
    fn custom_flags_directory(&mut self) -> &mut Self;
}

impl DirectoryFlag for std::fs::OpenOptions {
    fn custom_flags_directory(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &[u8]) -> Result<Vec<u8>, PathRefusal> {
        let mut out = Vec::new();
        relative_name(name, &mut out).map(|()| out)
    }

    #[test]
    fn absolute_dirs_take_their_prefix_off() {
        let open = || Root::open(std::path::Path::new("/")).unwrap();
        let roots = Roots::Absolute(vec![
            (b"/srv/tftp".to_vec(), open()),
            (b"/var/lib/tftpboot".to_vec(), open()),
        ]);
        let rest = |name: &[u8]| roots.select(name).map(|(_, rest)| rest.to_vec());
        assert_eq!(rest(b"/srv/tftp/pxelinux.0").unwrap(), b"/pxelinux.0");
        assert_eq!(rest(b"/var/lib/tftpboot/a/b").unwrap(), b"/a/b");
        assert_eq!(rest(b"pxelinux.0"), Err(PathRefusal::NotAbsolute));
        assert_eq!(rest(b"/srv/tftpx/y"), Err(PathRefusal::OutsideRoot));
        assert_eq!(rest(b"/etc/passwd"), Err(PathRefusal::OutsideRoot));
        // What is left is cleaned like any name: its .. cannot climb out.
        let mut out = Vec::new();
        let climbing = rest(b"/srv/tftp/../../etc/passwd").unwrap();
        assert_eq!(
            relative_name(&climbing, &mut out),
            Err(PathRefusal::OutsideRoot)
        );
    }

    #[test]
    fn names() {
        assert_eq!(rel(b"/boot/x").unwrap(), b"boot/x");
        assert_eq!(rel(b"boot//x").unwrap(), b"boot/x");
        assert_eq!(rel(b"\\Boot\\BCD").unwrap(), b"Boot/BCD");
        assert_eq!(rel(b"./a/./b").unwrap(), b"a/b");
        // A `..` that stays inside the root takes a component away.
        assert_eq!(rel(b"pxelinux.cfg/../pxelinux.0").unwrap(), b"pxelinux.0");
        assert_eq!(rel(b"bios/../images/vmlinuz").unwrap(), b"images/vmlinuz");
        assert_eq!(rel(b"a\\..\\b").unwrap(), b"b");
        assert_eq!(rel(b"a/b/c/../../d").unwrap(), b"a/d");
        assert_eq!(rel(b"a/./../b/").unwrap(), b"b");
        // One that leaves it is refused, wherever it is.
        assert_eq!(rel(b"../etc/passwd"), Err(PathRefusal::OutsideRoot));
        assert_eq!(rel(b"/../etc/passwd"), Err(PathRefusal::OutsideRoot));
        assert_eq!(rel(b"a/../../b"), Err(PathRefusal::OutsideRoot));
        assert_eq!(rel(b".."), Err(PathRefusal::OutsideRoot));
        assert_eq!(rel(b"a/.."), Err(PathRefusal::AccessViolation));
        assert_eq!(rel(b"a\nb"), Err(PathRefusal::AccessViolation));
        assert_eq!(rel(b"/"), Err(PathRefusal::AccessViolation));
        assert_eq!(
            rel(&[b'a'; FILENAME_BYTES_MAX + 1]),
            Err(PathRefusal::NameTooLong)
        );
    }
}
