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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

/// Why a netascii conversion is not served.
#[derive(Debug)]
pub enum NetasciiError {
    /// The file is larger than a netascii transfer may be.
    TooLarge,
    /// The conversions held now use up the budget: try again later.
    OverBudget,
    Io(io::Error),
}

#[derive(Debug)]
pub struct FileCache {
    entries: RwLock<HashMap<FileKey, Arc<Source>>>,
    entries_max: usize,
    /// Netascii conversions, one per file version, shared by every session
    /// sending it; their total size is bounded by `netascii_budget_bytes`.
    netascii: Mutex<HashMap<FileKey, Arc<Source>>>,
    netascii_budget_bytes: u64,
    /// Bytes of the maps in `entries`, kept for the stats thread (which
    /// then never takes the lock the shards use).
    mapped_bytes: AtomicU64,
}

/// Whether [`FileCache::get`] found the file's map already held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

fn key_of(file: &File) -> io::Result<FileKey> {
    let meta = file.metadata()?;
    Ok(FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        size_bytes: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
    })
}

impl FileCache {
    pub fn new(entries_max: usize) -> FileCache {
        Self::with_netascii_budget(entries_max, 256 << 20)
    }

    pub fn with_netascii_budget(entries_max: usize, netascii_budget_bytes: u64) -> FileCache {
        FileCache {
            entries: RwLock::new(HashMap::with_capacity(entries_max)),
            entries_max: entries_max.max(1),
            netascii: Mutex::new(HashMap::new()),
            netascii_budget_bytes,
            mapped_bytes: AtomicU64::new(0),
        }
    }

    /// The netascii form (LF → CR LF, CR → CR NUL) of this open file's
    /// current version, converted once and shared while any session sends
    /// it. The file is read with `pread` (never through a map) on the
    /// calling thread: bounded by `max_file_bytes`, and by the budget for
    /// all conversions held at once (unused ones are dropped to make room).
    pub fn get_netascii(
        &self,
        file: &File,
        max_file_bytes: u64,
    ) -> Result<Arc<Source>, NetasciiError> {
        let key = key_of(file).map_err(NetasciiError::Io)?;
        if key.size_bytes > max_file_bytes {
            return Err(NetasciiError::TooLarge);
        }
        // At most every byte doubles.
        let worst = key.size_bytes.saturating_mul(2);
        {
            let mut held = self
                .netascii
                .lock()
                .map_err(|_| NetasciiError::OverBudget)?;
            if let Some(hit) = held.get(&key) {
                return Ok(Arc::clone(hit));
            }
            let in_use =
                |h: &HashMap<FileKey, Arc<Source>>| h.values().map(|s| s.len()).sum::<u64>();
            if in_use(&held) + worst > self.netascii_budget_bytes {
                held.retain(|_, s| Arc::strong_count(s) > 1);
                if in_use(&held) + worst > self.netascii_budget_bytes {
                    return Err(NetasciiError::OverBudget);
                }
            }
        }
        let host = read_bounded(file, max_file_bytes)
            .map_err(NetasciiError::Io)?
            .ok_or(NetasciiError::TooLarge)?;
        let mut converted = Vec::new();
        crate::proto::netascii::encode(&host, &mut converted);
        drop(host);
        let source = Arc::new(Source::Owned(converted));
        if let Ok(mut held) = self.netascii.lock() {
            // Older versions of this file are dead once unused.
            held.retain(|k, v| !(k.dev == key.dev && k.ino == key.ino) || Arc::strong_count(v) > 1);
            let kept = held.entry(key).or_insert_with(|| Arc::clone(&source));
            return Ok(Arc::clone(kept));
        }
        Ok(source)
    }

    /// Netascii conversions held now, and their bytes.
    pub fn netascii_held(&self) -> (usize, u64) {
        self.netascii
            .lock()
            .map(|h| (h.len(), h.values().map(|s| s.len()).sum()))
            .unwrap_or((0, 0))
    }

    /// The map of this open file's current version.
    pub fn get(&self, file: &File) -> io::Result<(Arc<Source>, Lookup)> {
        let key = key_of(file)?;
        if let Ok(entries) = self.entries.read()
            && let Some(hit) = entries.get(&key)
        {
            return Ok((Arc::clone(hit), Lookup::Hit));
        }
        let source = if key.size_bytes == 0 {
            Source::Owned(Vec::new())
        } else {
            // Never read by us, see the module comment.
            Source::Mapped(map_for_kernel(file)?)
        };
        let source = Arc::new(source);
        let Ok(mut entries) = self.entries.write() else {
            return Ok((source, Lookup::Miss)); // poisoned: serve uncached rather than fail
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
        self.mapped_bytes
            .store(entries.values().map(|s| s.len()).sum(), Ordering::Relaxed);
        Ok((source, Lookup::Miss))
    }

    /// Bytes of the file maps held now (what `uftpd_cache_mapped_bytes`
    /// reports); lock-free.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes.load(Ordering::Relaxed)
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
