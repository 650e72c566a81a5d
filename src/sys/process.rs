//! Process-wide resources: resource limits, capabilities, the signals the
//! main thread takes synchronously, and the eventfd that wakes shards.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// A soft and hard resource limit; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

fn to_limit(v: libc::rlim_t) -> Option<u64> {
    (v != libc::RLIM_INFINITY).then_some(v)
}

fn get_limit(resource: libc::__rlimit_resource_t) -> io::Result<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer of the right type.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Limit {
        soft: to_limit(lim.rlim_cur),
        hard: to_limit(lim.rlim_max),
    })
}

/// RLIMIT_MEMLOCK: io_uring charges its rings and provided-buffer rings to it
/// unless the process has CAP_IPC_LOCK.
pub fn memlock_limit() -> io::Result<Limit> {
    get_limit(libc::RLIMIT_MEMLOCK)
}

/// RLIMIT_NOFILE.
pub fn nofile_limit() -> io::Result<Limit> {
    get_limit(libc::RLIMIT_NOFILE)
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (allowed without
/// privilege) and returns the soft limit now in force. A ring's fixed-file
/// table may not be larger than it, and every transfer holds one socket.
pub fn raise_nofile_to_hard() -> io::Result<u64> {
    let now = nofile_limit()?;
    if now.soft == now.hard {
        return Ok(now.soft.unwrap_or(u64::MAX));
    }
    let lim = libc::rlimit {
        rlim_cur: now.hard.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: now.hard.unwrap_or(libc::RLIM_INFINITY),
    };
    // SAFETY: a valid pointer to a limit that does not exceed the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Ok(now.soft.unwrap_or(u64::MAX));
    }
    Ok(now.hard.unwrap_or(u64::MAX))
}

/// Whose CPU time [`cpu_time`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuOf {
    /// Every thread of the process.
    Process,
    /// The calling thread only.
    Thread,
}

/// User plus system CPU time used so far (getrusage(2)).
pub fn cpu_time(of: CpuOf) -> io::Result<Duration> {
    let who = match of {
        CpuOf::Process => libc::RUSAGE_SELF,
        CpuOf::Thread => libc::RUSAGE_THREAD,
    };
    // SAFETY: zero is a valid rusage; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer of the right type.
    if unsafe { libc::getrusage(who, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Ok(Duration::from_micros(
        micros(usage.ru_utime) + micros(usage.ru_stime),
    ))
}

/// True if the effective capability set holds `bit` (see capabilities(7)).
pub fn has_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| bit < 64 && caps & (1 << bit) != 0)
}

pub const CAP_IPC_LOCK: u32 = 14;
pub const CAP_NET_BIND_SERVICE: u32 = 10;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread but `keep` (effective and
/// permitted; inheritable and ambient emptied), and sets no_new_privs.
/// Capabilities belong to threads: each thread that may hold some calls
/// this itself. Kept capabilities survive only while the uid stays.
pub fn drop_thread_capabilities(keep: &[u32]) -> io::Result<()> {
    // Only what is held can be kept: capset cannot raise a permitted set.
    let held = permitted_capabilities()?;
    let mut data = [CapData::default(); 2];
    for &bit in keep
        .iter()
        .filter(|&&bit| bit < 64 && held & (1 << bit) != 0)
    {
        let word = data
            .get_mut((bit / 32) as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        word.effective |= 1 << (bit % 32);
        word.permitted |= 1 << (bit % 32);
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: prctl with plain integer arguments; capset reads a v3 header
    // and two data words, both valid for the call.
    unsafe {
        // EINVAL on kernels without ambient capabilities (before 4.3): none to clear.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
        if libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let (one, zero) = (1 as libc::c_ulong, 0 as libc::c_ulong);
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, one, zero, zero, zero) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's permitted capabilities (capget), as a bit set.
pub fn permitted_capabilities() -> io::Result<u64> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data words for a v3 header, both valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32))
}

/// The effective capabilities of every thread of this process, from
/// /proc (a bit set per thread), to check that none was left behind.
pub fn thread_capabilities() -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let status = std::fs::read_to_string(entry?.path().join("status"))?;
        let caps = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .ok_or_else(|| io::Error::other("no CapEff line in /proc"))?;
        out.push(caps);
    }
    Ok(out)
}

/// A user to run as (`--user`): its ids, from the password database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: std::ffi::CString,
    pub uid: u32,
    pub gid: u32,
}

/// Largest buffer `getpwnam_r` is given: entries are a few hundred bytes,
/// but NSS modules (LDAP) may need more; ERANGE doubles it up to this.
const PASSWD_BUFFER_BYTES_MAX: usize = 1 << 20;

/// Looks a user up by name (`Ok(None)`: no such user).
pub fn lookup_user(name: &str) -> io::Result<Option<User>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the user name"))?;
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: plain data; getpwnam_r fills it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers to a NUL-terminated name, an entry, a
        // buffer of `size` bytes and the result pointer; the strings the
        // entry points to live in `buf`, which outlives their use here.
        let rc = unsafe {
            libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), size, &mut found)
        };
        if rc == libc::ERANGE && size < PASSWD_BUFFER_BYTES_MAX {
            size *= 2;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if found.is_null() {
            return Ok(None);
        }
        return Ok(Some(User {
            name: cname,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

/// Switches the whole process (glibc applies set*id to every thread) to
/// `user`, its primary group and its supplementary groups, for good: as
/// root, setuid to another user drops every capability too. Checked
/// afterwards, since a half-done switch must not go unnoticed.
pub fn become_user(user: &User) -> io::Result<()> {
    // SAFETY: a NUL-terminated name; these calls take plain values.
    unsafe {
        if libc::initgroups(user.name.as_ptr(), user.gid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setgid(user.gid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setuid(user.uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: these calls cannot fail and take nothing.
    let (uid, euid, gid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) };
    if uid != user.uid || euid != user.uid || gid != user.gid {
        return Err(io::Error::other("the user or group did not change"));
    }
    Ok(())
}

/// The effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the file-creation mask (`--umask`) and returns the old one.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: cannot fail; takes a plain value.
    unsafe { libc::umask(mask & 0o777) }
}

/// The signals the main thread takes with `sigtimedwait`. Blocked in every
/// thread (shards inherit the mask), so none of them kills the process.
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// Blocks `signals` in the calling thread and every thread it starts later.
    pub fn block(signals: &[i32]) -> SignalSet {
        // SAFETY: all-zero is a valid sigset_t, then initialised by sigemptyset.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: sigset operations on a local set; pthread_sigmask on ourselves.
        unsafe {
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
        SignalSet(set)
    }

    /// The next of these signals to arrive within `timeout`, if any.
    pub fn wait(&self, timeout: Duration) -> Option<i32> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a valid set and timeout; no siginfo wanted.
        let rc = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &ts) };
        (rc > 0).then_some(rc)
    }
}

/// An eventfd in semaphore mode: each `notify(n)` lets n reads complete.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor the kernel just gave us, owned from here on.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds `n` to the counter (wakes up to n readers).
    pub fn notify(&self, n: u64) -> io::Result<()> {
        // SAFETY: writes 8 bytes from a local u64 to an eventfd.
        let rc = unsafe { libc::write(self.0.as_raw_fd(), (&n as *const u64).cast(), 8) };
        if rc != 8 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn try_clone(&self) -> io::Result<EventFd> {
        Ok(EventFd(self.0.try_clone()?))
    }
}

impl From<EventFd> for OwnedFd {
    fn from(e: EventFd) -> OwnedFd {
        e.0
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up_by_name() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("no-such-user-uftpd").unwrap(), None);
        assert!(lookup_user("a\0b").is_err());
    }
}
