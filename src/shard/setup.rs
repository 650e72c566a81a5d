//! Start-up of a shard's ring: sizing it to the locked-memory budget and
//! explaining, in one line, why io_uring could not be set up.

use std::io;

use io_uring::IoUring;

use crate::config::sizes;

use super::ring::BufferRing;
use super::{GROUP_LARGE, GROUP_SMALL, LARGE_BUFFER_BYTES};

/// Why a shard could not start; `main` turns it into one line.
#[derive(Debug)]
pub enum StartError {
    Ring(io::Error),
    Buffers(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Ring(e) => write!(f, "{}", describe_ring_error(e)),
            StartError::Buffers(e) if e.raw_os_error() == Some(libc::ENOMEM) => write!(
                f,
                "cannot register io_uring receive buffers: the locked-memory limit is too low \
                 (RLIMIT_MEMLOCK is {}); raise it with `ulimit -l unlimited`, \
                 LimitMEMLOCK=infinity in the systemd unit, or fewer --cores",
                memlock_limit()
            ),
            StartError::Buffers(e) => write!(f, "cannot register io_uring receive buffers: {e}"),
        }
    }
}

/// The one-line explanation for a failed io_uring setup.
pub fn describe_ring_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring is not permitted ({e}): check `sysctl kernel.io_uring_disabled` \
             (must be 0, or 1 with this user in kernel.io_uring_group) and the container's \
             seccomp profile, which blocks io_uring by default in Docker and Podman"
        ),
        Some(libc::ENOSYS) => {
            format!("this kernel has no io_uring ({e}): Linux 6.1 or later is needed")
        }
        Some(libc::ENOMEM) => format!(
            "cannot create an io_uring ({e}): the locked-memory limit (RLIMIT_MEMLOCK is {}) \
             may be too low; raise it with `ulimit -l unlimited` or LimitMEMLOCK=infinity",
            memlock_limit()
        ),
        _ => format!("cannot create an io_uring: {e}"),
    }
}

pub(super) fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// Ring and receive-buffer sizes. io_uring pins these pages and charges
/// them to RLIMIT_MEMLOCK (unless CAP_IPC_LOCK): about 120 KiB per shard at
/// full size, about 20 KiB reduced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSizes {
    sq_entries: u32,
    small_buffers: u16,
    large_buffers: u16,
    /// Locked memory one shard needs at these sizes (measured, rounded up).
    pub memlock_bytes: u64,
}

pub const RING_FULL: RingSizes = RingSizes {
    sq_entries: 512,
    small_buffers: sizes::SMALL_BUFFERS,
    large_buffers: sizes::LARGE_BUFFERS,
    memlock_bytes: 128 << 10,
};
/// What a shard falls back to under a low memlock limit: less batching,
/// same behaviour.
pub const RING_REDUCED: RingSizes = RingSizes {
    sq_entries: 64,
    small_buffers: 128,
    large_buffers: 16,
    memlock_bytes: 32 << 10,
};

/// The locked-memory budget of this process: `None` when unlimited (no
/// limit, or CAP_IPC_LOCK, which exempts io_uring from it).
pub fn memlock_budget_bytes() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
        || has_cap_ipc_lock()
    {
        return None;
    }
    Some(lim.rlim_cur)
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Picks ring sizes that fit `shards` shards in the memlock budget, or
/// explains what to raise.
pub fn choose_ring_sizes(shards: usize) -> Result<RingSizes, String> {
    let Some(budget) = memlock_budget_bytes() else {
        return Ok(RING_FULL);
    };
    let shards = shards.max(1) as u64;
    if budget / shards >= RING_FULL.memlock_bytes {
        return Ok(RING_FULL);
    }
    if budget / shards >= RING_REDUCED.memlock_bytes {
        eprintln!(
            "uftpd: warning: RLIMIT_MEMLOCK is {} KiB, below the {} KiB that {shards} shard(s) \
             need for full-size rings; running with reduced batching (see tuning.md)",
            budget / 1024,
            RING_FULL.memlock_bytes * shards / 1024
        );
        return Ok(RING_REDUCED);
    }
    Err(format!(
        "the locked-memory limit is too low for io_uring: RLIMIT_MEMLOCK is {} KiB, {shards} \
         shard(s) need at least {} KiB ({} KiB for full speed); raise it with `ulimit -l \
         unlimited` or LimitMEMLOCK=infinity in the systemd unit, or use fewer --cores",
        budget / 1024,
        RING_REDUCED.memlock_bytes * shards / 1024,
        RING_FULL.memlock_bytes * shards / 1024
    ))
}

fn new_ring(sq_entries: u32) -> io::Result<IoUring> {
    let cq_entries = sq_entries * 4;
    let mut builder = IoUring::builder();
    // One thread submits and reaps: the kernel can skip cross-thread work
    // (measured 15-20 % less CPU per packet). Fall back for older kernels.
    builder
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(cq_entries);
    match builder.build(sq_entries) {
        Ok(r) => Ok(r),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(cq_entries)
            .build(sq_entries),
        Err(e) => Err(e),
    }
}

pub(super) fn build_rings(
    sizes: RingSizes,
) -> Result<(IoUring, BufferRing, BufferRing), StartError> {
    let ring = new_ring(sizes.sq_entries).map_err(StartError::Ring)?;
    let small = BufferRing::new(
        &ring,
        GROUP_SMALL,
        sizes.small_buffers,
        sizes::SMALL_BUFFER_BYTES,
    )
    .map_err(StartError::Buffers)?;
    let large = BufferRing::new(&ring, GROUP_LARGE, sizes.large_buffers, LARGE_BUFFER_BYTES)
        .map_err(StartError::Buffers)?;
    Ok((ring, small, large))
}
