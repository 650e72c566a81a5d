//! The shared cache of mapped files. One map per file version, keyed by
//! (device, inode, size, mtime): a replaced or rewritten file gets a new map,
//! and a transfer keeps the `Arc` of the map it started with.
//!
//! SIGBUS policy: no code of ours ever reads mapped bytes. The maps are only
//! handed to the kernel as `sendmsg` iovecs; if the file is truncated in place
//! under a running transfer, the kernel's copy faults and the send fails with
//! EFAULT, which aborts that one transfer with an ERROR. Netascii, which must
//! read the bytes to convert them, reads through `pread` instead.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, RwLock};

use crate::sys::fs::{KernelMap, map_for_kernel};
use crate::uring::Payload;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    size_bytes: u64,
    mtime_ns: i128,
}

/// Bytes a transfer sends from. Only ever read by the kernel (see above).
#[derive(Debug)]
pub enum Source {
    Mapped(KernelMap),
    /// Empty files cannot be mapped; netascii conversions live here too.
    Owned(Vec<u8>),
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Mapped(m) => m.len() as u64,
            Source::Owned(v) => v.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Base pointer for iovecs; the kernel reads `[ptr, ptr + len)`.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Source::Mapped(m) => m.as_ptr(),
            Source::Owned(v) => v.as_ptr(),
        }
    }
}

// SAFETY: a Source owns its bytes (a map or a Vec) for as long as it
// lives, neither moves nor changes them, and reports their real address and
// length; a map that loses pages to a truncation makes the kernel's copy
// fail with EFAULT, never a read of freed memory.
#[allow(unsafe_code)]
unsafe impl Payload for Source {
    fn base(&self) -> *const u8 {
        self.as_ptr()
    }

    fn len_bytes(&self) -> u64 {
        self.len()
    }

    fn is_resident(&self, offset: u64, len: u64) -> bool {
        match self {
            Source::Mapped(m) => m.is_resident(offset, len),
            Source::Owned(_) => true,
        }
    }
}

#[derive(Debug)]
pub struct FileCache {
    entries: RwLock<HashMap<FileKey, Arc<Source>>>,
    entries_max: usize,
}

impl FileCache {
    pub fn new(entries_max: usize) -> FileCache {
        FileCache {
            entries: RwLock::new(HashMap::with_capacity(entries_max)),
            entries_max: entries_max.max(1),
        }
    }

    /// The map of this open file's current version.
    pub fn get(&self, file: &File) -> io::Result<Arc<Source>> {
        let meta = file.metadata()?;
        let key = FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
            size_bytes: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        };
        if let Ok(entries) = self.entries.read()
            && let Some(hit) = entries.get(&key)
        {
            return Ok(Arc::clone(hit));
        }
        let source = if key.size_bytes == 0 {
            Source::Owned(Vec::new())
        } else {
            // Never read by us, see the module comment.
            Source::Mapped(map_for_kernel(file)?)
        };
        let source = Arc::new(source);
        let Ok(mut entries) = self.entries.write() else {
            return Ok(source); // poisoned: serve uncached rather than fail
        };
        if entries.len() >= self.entries_max {
            // Drop versions no transfer holds any more.
            entries.retain(|_, v| Arc::strong_count(v) > 1);
        }
        // Older versions of the same inode are dead once unused.
        entries.retain(|k, v| !(k.dev == key.dev && k.ino == key.ino) || Arc::strong_count(v) > 1);
        if entries.len() < self.entries_max {
            entries.insert(key, Arc::clone(&source));
        }
        Ok(source)
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a whole file with `pread` (never through a map), up to `max_bytes`.
pub fn read_bounded(file: &File, max_bytes: u64) -> io::Result<Option<Vec<u8>>> {
    let size = file.metadata()?.len();
    if size > max_bytes {
        return Ok(None);
    }
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0usize;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        match file.read_at(rest, filled as u64) {
            Ok(0) => break, // truncated meanwhile: serve what is there
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(Some(buf))
}
