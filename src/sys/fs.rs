//! File-system calls the cache layer needs that std does not offer:
//! `openat2` with `RESOLVE_BENEATH`, `linkat` of an unnamed file, `renameat`,
//! `unlinkat`, and read-only memory maps. Each wraps one syscall and turns
//! its result into `io::Result`; policy (what to open, what to refuse) stays
//! in `crate::cache`.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use memmap2::Mmap;

/// `openat2(dir, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`:
/// the kernel refuses any resolution that leaves `dir` (`..`, absolute
/// symlinks, symlinks that climb out), so no string check can be raced.
pub fn open_beneath(dir: RawFd, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        how.mode = u64::from(mode);
    }
    // SAFETY: a NUL-terminated path and an `open_how` of the size we pass;
    // the kernel only reads both.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens the inode `fd` refers to (an `O_PATH` descriptor, typically) anew
/// with `flags`, through `/proc/self/fd`: the same inode, whatever has been
/// renamed since. Fails with ENOENT when /proc is not mounted.
pub fn reopen(fd: &impl AsRawFd, flags: i32) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path; the kernel only reads it.
    let raw = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// What `fstat` says of a file that matters here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `fstat` of an open descriptor (works on `O_PATH`).
pub fn stat(fd: &impl AsRawFd) -> io::Result<Stat> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer of the right size.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Stat {
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// `fchmod`: sets the permission bits of an open file.
pub fn set_mode(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor; the kernel only reads the mode.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fchown`: sets the owner and group of an open file (root only, in effect).
pub fn set_owner(fd: &impl AsRawFd, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: a valid descriptor and plain ids.
    if unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `renameat2(dir, from, dir, to, RENAME_NOREPLACE)`: fails with EEXIST
/// rather than replace `to`.
pub fn rename_noreplace_in(dir: RawFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor; the kernel only reads them.
    let rc =
        unsafe { libc::renameat2(dir, from.as_ptr(), dir, to.as_ptr(), libc::RENAME_NOREPLACE) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The effective user is root (it may give a file to another owner).
pub fn is_root() -> bool {
    // SAFETY: a plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// The file type bits (`S_IFMT`) of an open descriptor (works on `O_PATH`).
pub fn file_type(fd: &impl AsRawFd) -> io::Result<u32> {
    // SAFETY: all-zero is a valid `stat`, which fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a stat buffer of the right size.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

/// Gives the unnamed (`O_TMPFILE`) file `file` the name `name` in `dir`.
/// Goes through `/proc/self/fd`, which works for unprivileged processes
/// (`AT_EMPTY_PATH` needs CAP_DAC_READ_SEARCH).
pub fn link_unnamed(file: &File, dir: RawFd, name: &CStr) -> io::Result<()> {
    let proc_path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid C strings and descriptors; the kernel only reads them.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir,
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `renameat(dir, from, dir, to)`: atomically replaces `to`.
pub fn rename_in(dir: RawFd, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings and descriptor; the kernel only reads them.
    if unsafe { libc::renameat(dir, from.as_ptr(), dir, to.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unlinkat(dir, name, 0)`.
pub fn unlink_in(dir: RawFd, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C string and descriptor; the kernel only reads them.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A read-only shared map of a whole file that userspace cannot read: it
/// only gives out its address and length, for `sendmsg` iovecs. The file
/// can be truncated under the map, and a userspace read of the lost pages
/// would raise SIGBUS; a kernel copy of them fails with EFAULT instead,
/// which the shard turns into an ERROR for that one transfer (see
/// `crate::cache::filemap`).
#[derive(Debug)]
pub struct KernelMap(Mmap);

impl KernelMap {
    pub fn as_ptr(&self) -> *const u8 {
        self.0.as_ptr()
    }

    /// Whether every page of bytes `offset .. offset + len` is in the page
    /// cache now (`mincore`), so a send of them cannot wait on the disk.
    /// Out-of-range bytes count as resident (a send of them fails anyway).
    pub fn is_resident(&self, offset: u64, len: u64) -> bool {
        const PAGE: usize = 4096;
        const PAGES_PER_CALL: usize = 4096;
        let size = self.0.len();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(size);
        let end = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(size);
        // The map is page-aligned; mincore wants a page-aligned start.
        let mut page = start / PAGE * PAGE;
        let mut vec = [0u8; PAGES_PER_CALL];
        while page < end {
            let chunk = (end - page).min(PAGES_PER_CALL * PAGE);
            let pages = chunk.div_ceil(PAGE);
            // SAFETY: [base + page, + chunk) lies inside the map; `vec`
            // holds one byte per page of it. mincore reads no page data.
            let rc = unsafe {
                libc::mincore(
                    self.0.as_ptr().add(page) as *mut libc::c_void,
                    chunk,
                    vec.as_mut_ptr(),
                )
            };
            if rc != 0 {
                return true; // cannot tell: send inline as before
            }
            if vec[..pages].iter().any(|&b| b & 1 == 0) {
                return false;
            }
            page += chunk;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Maps the whole of `file` for the kernel's eyes only (see [`KernelMap`]).
pub fn map_for_kernel(file: &File) -> io::Result<KernelMap> {
    // SAFETY: memmap2's contract is that the file is not modified while the
    // map is *read*. A KernelMap cannot be read from safe code (it has no
    // Deref and no accessor for its bytes), so a concurrent truncation
    // cannot turn into undefined behaviour in this process.
    unsafe { Mmap::map(file) }.map(KernelMap)
}
