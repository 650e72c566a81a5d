//! Upload staging: a WRQ writes into an unnamed file (`O_TMPFILE`) in the
//! target's directory, and only a complete, fsynced upload is linked and
//! renamed over the target name (then the directory is fsynced). An interrupted upload leaves nothing
//! behind, not even after a crash. Where the file system lacks O_TMPFILE a
//! named temporary file is used and removed on failure.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::resolve::{PathRefusal, Root, open_beneath, refusal_for, relative_name};

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
        let dir = open_beneath(root.fd(), dir_path, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| UploadError::Refused(refusal_for(&e)))?;
        let name =
            CString::new(leaf).map_err(|_| UploadError::Refused(PathRefusal::AccessViolation))?;
        // The target must not be a directory or a symlink pointing anywhere.
        if let Ok(existing) =
            open_beneath(dir.as_raw_fd(), leaf, libc::O_PATH | libc::O_NOFOLLOW, 0)
        {
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: valid fd and stat buffer.
            let rc = unsafe { libc::fstat(existing.as_raw_fd(), &mut st) };
            if rc != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFREG {
                return Err(UploadError::Refused(PathRefusal::AccessViolation));
            }
        }
        let (file, temp_name) = match open_beneath(
            dir.as_raw_fd(),
            b".",
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
                    temp.as_bytes(),
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
    pub fn file_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The target's directory, to fsync after [`Upload::publish`] so the
    /// new name is durable too.
    pub fn dir_fd(&self) -> RawFd {
        self.dir.as_raw_fd()
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
                if let Err(e) = rename(dir, &temp, &self.name) {
                    self.temp_name = Some(temp); // still ours to remove
                    return Err(e.into());
                }
            }
            None => {
                // Give the unnamed file a name, then rename it over the target.
                let temp = temp_name_for(self.name.as_bytes());
                let proc_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: valid C strings and descriptors.
                let rc = unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        proc_path.as_ptr(),
                        dir,
                        temp.as_ptr(),
                        libc::AT_SYMLINK_FOLLOW,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error().into());
                }
                if let Err(e) = rename(dir, &temp, &self.name) {
                    // SAFETY: valid descriptor and name.
                    unsafe { libc::unlinkat(dir, temp.as_ptr(), 0) };
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
            // SAFETY: valid descriptor and name.
            unsafe { libc::unlinkat(self.dir.as_raw_fd(), temp.as_ptr(), 0) };
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

fn rename(dir: i32, from: &CString, to: &CString) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor.
    let rc = unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
