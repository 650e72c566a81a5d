//! Upload staging: a WRQ writes into an unnamed file (`O_TMPFILE`) in the
//! target's directory, and only a complete, fsynced upload is linked and
//! renamed over the target name (then the directory is fsynced). An interrupted upload leaves nothing
//! behind, not even after a crash. Where the file system lacks O_TMPFILE a
//! named temporary file is used and removed on failure.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::resolve::{PathRefusal, Root, refusal_for, relative_name};
use crate::sys::fs::{file_type, link_unnamed, open_beneath, rename_in, unlink_in};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    file: File,
    /// The final name inside `dir`.
    name: CString,
    /// Set when the fallback named temp file is used.
    temp_name: Option<CString>,
    written_bytes: u64,
    max_bytes: u64,
    /// The file has its final name (nothing left to clean up).
    published: bool,
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
            _ => UploadError::Io(e),
        }
    }
}

impl Upload {
    /// Starts staging an upload of `name` under `root`.
    pub fn begin(root: &Root, name: &[u8], max_bytes: u64) -> Result<Upload, UploadError> {
        let mut rel = Vec::new();
        relative_name(name, &mut rel).map_err(UploadError::Refused)?;
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
        // The target must not be a directory, a special file, or a symlink
        // pointing anywhere.
        if let Ok(existing) =
            open_beneath(dir.as_raw_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
        {
            let refusal = match file_type(&existing) {
                Ok(libc::S_IFREG) => None,
                Ok(libc::S_IFDIR) => Some(PathRefusal::IsDirectory),
                Ok(libc::S_IFLNK) | Err(_) => Some(PathRefusal::AccessViolation),
                Ok(_) => Some(PathRefusal::NotRegular),
            };
            if let Some(r) = refusal {
                return Err(UploadError::Refused(r));
            }
        }
        let (file, temp_name) = match open_beneath(
            dir.as_raw_fd(),
            c".",
            libc::O_TMPFILE | libc::O_WRONLY,
            0o644,
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
                    0o644,
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
            written_bytes: 0,
            max_bytes,
            published: false,
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

    /// Puts the staged file in place under its name, atomically replacing
    /// any old file. The caller has fsynced [`Upload::file_fd`] first (the
    /// shard does it through io_uring so no thread blocks on the disk).
    pub fn publish(&mut self) -> Result<(), UploadError> {
        if self.published {
            return Ok(());
        }
        let dir = self.dir.as_raw_fd();
        match self.temp_name.take() {
            Some(temp) => {
                if let Err(e) = rename_in(dir, &temp, &self.name) {
                    self.temp_name = Some(temp); // still ours to remove
                    return Err(e.into());
                }
            }
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
