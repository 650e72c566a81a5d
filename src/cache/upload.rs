//! Upload staging: a WRQ writes into an unnamed file (`O_TMPFILE`) in the
//! target's directory, and only a complete, fsynced upload is given its
//! name (then the directory is fsynced). An interrupted upload leaves
//! nothing behind, not even after a crash. Where the file system lacks
//! O_TMPFILE a named temporary file is used and removed on failure.
//!
//! What an upload may do is the [`UploadPolicy`]'s: create new files;
//! replace an existing one only if it is world-writable (tftpd-hpa's rule)
//! or the operator allows any; only under one directory if so configured.
//! A replaced file keeps its mode (and, when we are root, its owner). A new
//! file is linked into place with a call that fails rather than replace a
//! file that appeared meanwhile. Two uploads of one name never run at once
//! ([`UploadLocks`]): the second is refused, so one wins whole.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::resolve::{PathRefusal, Root, refusal_for, relative_name};
use crate::sys::fs::{
    Stat, is_root, link_unnamed, open_beneath, rename_in, rename_noreplace_in, set_mode, set_owner,
    stat, unlink_in,
};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Mode of a new upload (before the umask).
const NEW_FILE_MODE: u32 = 0o644;

/// Which existing files an upload may replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Only world-writable ones (tftpd-hpa's rule for `-c`).
    WorldWritable,
    /// Any regular file (`--overwrite`).
    Any,
}

/// What uploads may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadPolicy {
    pub overwrite: Overwrite,
    /// Uploads only to names under this directory (relative to the root,
    /// cleaned like a request's name), when set.
    pub dir: Option<Vec<u8>>,
    pub max_bytes: u64,
}

/// The names being uploaded now, across all shards: (directory's device
/// and inode, leaf name). Touched only when an upload starts and ends.
#[derive(Debug, Default)]
pub struct UploadLocks(Mutex<HashSet<(u64, u64, Vec<u8>)>>);

struct Lock {
    locks: Arc<UploadLocks>,
    key: (u64, u64, Vec<u8>),
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Ok(mut set) = self.locks.0.lock() {
            set.remove(&self.key);
        }
    }
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lock")
    }
}

#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    file: File,
    /// The final name inside `dir`.
    name: CString,
    /// Set when the fallback named temp file is used.
    temp_name: Option<CString>,
    /// The file being replaced (its mode and owner carry over), if any.
    replacing: Option<Stat>,
    written_bytes: u64,
    max_bytes: u64,
    /// The file has its final name (nothing left to clean up).
    published: bool,
    _lock: Lock,
}

#[derive(Debug)]
pub enum UploadError {
    Refused(PathRefusal),
    /// Over the size limit or out of space: ERROR 3.
    DiskFull,
    Io(io::Error),
}

impl From<io::Error> for UploadError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => UploadError::DiskFull,
            Some(libc::EEXIST) => UploadError::Refused(PathRefusal::Exists),
            _ => UploadError::Io(e),
        }
    }
}

/// Whether `rel` (a cleaned relative name) lies under directory `dir`.
fn is_under(rel: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || rel
            .strip_prefix(dir)
            .is_some_and(|rest| rest.first() == Some(&b'/'))
}

impl Upload {
    /// Starts staging an upload of `name` under `root`, as `policy` allows.
    pub fn begin(
        root: &Root,
        name: &[u8],
        policy: &UploadPolicy,
        locks: &Arc<UploadLocks>,
    ) -> Result<Upload, UploadError> {
        let mut rel = Vec::new();
        relative_name(name, &mut rel).map_err(UploadError::Refused)?;
        if let Some(dir) = &policy.dir
            && !is_under(&rel, dir)
        {
            return Err(UploadError::Refused(PathRefusal::OutsideUploadDir));
        }
        let (dir_path, leaf): (&[u8], &[u8]) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (
                rel.get(..i).unwrap_or(b"."),
                rel.get(i + 1..).unwrap_or(b""),
            ),
            None => (b".", &rel[..]),
        };
        let refused = |_| UploadError::Refused(PathRefusal::AccessViolation);
        let dir_path = CString::new(dir_path).map_err(refused)?;
        let dir = open_beneath(root.fd(), &dir_path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| UploadError::Refused(refusal_for(&e)))?;
        let name = CString::new(leaf).map_err(refused)?;
        let dir_stat = stat(&dir)?;
        let key = (dir_stat.dev, dir_stat.ino, leaf.to_vec());
        let lock = {
            let mut set = locks
                .0
                .lock()
                .map_err(|_| UploadError::Refused(PathRefusal::Busy))?;
            if !set.insert(key.clone()) {
                return Err(UploadError::Refused(PathRefusal::BeingWritten));
            }
            Lock {
                locks: Arc::clone(locks),
                key,
            }
        };
        // The target must not be a directory, a special file, or a symlink
        // pointing anywhere; an existing file only if the policy allows.
        let replacing =
            match open_beneath(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
                Err(e) => return Err(UploadError::Refused(refusal_for(&e))),
                Ok(existing) => {
                    let st = stat(&existing)?;
                    match st.mode & libc::S_IFMT {
                        libc::S_IFREG => {}
                        libc::S_IFDIR => {
                            return Err(UploadError::Refused(PathRefusal::IsDirectory));
                        }
                        libc::S_IFLNK => {
                            return Err(UploadError::Refused(PathRefusal::AccessViolation));
                        }
                        _ => return Err(UploadError::Refused(PathRefusal::NotRegular)),
                    }
                    if policy.overwrite == Overwrite::WorldWritable && st.mode & 0o002 == 0 {
                        return Err(UploadError::Refused(PathRefusal::Exists));
                    }
                    Some(st)
                }
            };
        let (file, temp_name) = match open_beneath(
            dir.as_raw_fd(),
            c".",
            libc::O_TMPFILE | libc::O_WRONLY,
            NEW_FILE_MODE,
        ) {
            Ok(fd) => (File::from(fd), None),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EISDIR)
                ) =>
            {
                let temp = temp_name_for(leaf);
                let fd = open_beneath(
                    dir.as_raw_fd(),
                    &temp,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    NEW_FILE_MODE,
                )?;
                (File::from(fd), Some(temp))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Upload {
            dir,
            file,
            name,
            temp_name,
            replacing,
            written_bytes: 0,
            max_bytes: policy.max_bytes,
            published: false,
            _lock: lock,
        })
    }

    /// Appends `bytes` at the end of what was written.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), UploadError> {
        let end = self.written_bytes.saturating_add(bytes.len() as u64);
        if end > self.max_bytes {
            return Err(UploadError::DiskFull);
        }
        self.file.write_all_at(bytes, self.written_bytes)?;
        self.written_bytes = end;
        Ok(())
    }

    pub fn written_bytes(&self) -> u64 {
        self.written_bytes
    }

    /// Whether this upload replaces an existing file (or creates one).
    pub fn replaces(&self) -> bool {
        self.replacing.is_some()
    }

    /// The staged file, to fsync before [`Upload::publish`].
    pub fn file_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The target's directory, to fsync after [`Upload::publish`] so the
    /// new name is durable too.
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    pub fn is_published(&self) -> bool {
        self.published
    }

    /// Puts the staged file in place under its name: atomically replacing
    /// the old file (whose mode, and owner when we are root, it takes), or
    /// creating the name, failing (EEXIST: ERROR 6) if a file appeared
    /// there meanwhile. The caller has fsynced [`Upload::file_fd`] first
    /// (the shard does it through io_uring so no thread blocks on the disk).
    pub fn publish(&mut self) -> Result<(), UploadError> {
        if self.published {
            return Ok(());
        }
        if let Some(old) = self.replacing {
            set_mode(&self.file, old.mode)?;
            if is_root() {
                // Best effort: a file system may refuse (and mode is kept).
                let _ = set_owner(&self.file, old.uid, old.gid);
            }
        }
        let dir = self.dir.as_raw_fd();
        match self.temp_name.take() {
            Some(temp) => {
                let moved = if self.replacing.is_some() {
                    rename_in(dir, &temp, &self.name)
                } else {
                    rename_noreplace_in(dir, &temp, &self.name)
                };
                if let Err(e) = moved {
                    self.temp_name = Some(temp); // still ours to remove
                    return Err(e.into());
                }
            }
            // A new file: link the unnamed file to its name (fails if the
            // name exists).
            None if self.replacing.is_none() => link_unnamed(&self.file, dir, &self.name)?,
            None => {
                // Give the unnamed file a name, then rename it over the target.
                let temp = temp_name_for(self.name.as_bytes());
                link_unnamed(&self.file, dir, &temp)?;
                if let Err(e) = rename_in(dir, &temp, &self.name) {
                    let _ = unlink_in(dir, &temp);
                    return Err(e.into());
                }
            }
        }
        self.published = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Only a named fallback temp file can be left; an O_TMPFILE vanishes.
        if let Some(temp) = self.temp_name.take() {
            let _ = unlink_in(self.dir.as_raw_fd(), &temp);
        }
    }
}

fn temp_name_for(leaf: &[u8]) -> CString {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = Vec::with_capacity(leaf.len().min(64) + 40);
    name.push(b'.');
    name.extend_from_slice(leaf.get(..leaf.len().min(64)).unwrap_or(leaf));
    name.extend_from_slice(format!(".uftpd-{}-{n}.tmp", std::process::id()).as_bytes());
    // `leaf` came from a CString, so it has no NUL.
    CString::new(name).unwrap_or_else(|_| c".uftpd.tmp".to_owned())
}

#[cfg(test)]
mod tests {
    use super::is_under;

    #[test]
    fn upload_dirs_match_whole_components() {
        assert!(is_under(b"incoming/a.bin", b"incoming"));
        assert!(is_under(b"incoming/sub/a.bin", b"incoming"));
        assert!(!is_under(b"incomingx/a.bin", b"incoming"));
        assert!(!is_under(b"incoming", b"incoming"));
        assert!(!is_under(b"a.bin", b"incoming"));
        assert!(is_under(b"a.bin", b""));
    }
}
