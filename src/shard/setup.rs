//! Start-up of a shard's ring: sizing it to the locked-memory budget and
//! the session limit, and explaining, in one line, why io_uring could not
//! be set up.

use std::io;

use crate::sys::process::{self, CAP_IPC_LOCK};
use crate::uring::{self, RingSizes, SetupError};

/// Why a shard could not start; `main` turns it into one line.
#[derive(Debug)]
pub enum StartError {
    Ring(io::Error),
    Files(io::Error),
    Buffers(io::Error),
    TooManyOwners(u32),
}

impl From<SetupError> for StartError {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::Ring(e) => StartError::Ring(e),
            SetupError::Files(e) => StartError::Files(e),
            SetupError::Buffers(e) => StartError::Buffers(e),
            SetupError::TooManyOwners(n) => StartError::TooManyOwners(n),
        }
    }
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
                memlock_limit_text()
            ),
            StartError::Buffers(e) => write!(f, "cannot register io_uring receive buffers: {e}"),
            StartError::Files(e) if e.raw_os_error() == Some(libc::EMFILE) => write!(
                f,
                "cannot register the transfer sockets with io_uring: RLIMIT_NOFILE is too low \
                 for --max-sessions; raise it (LimitNOFILE= in the systemd unit) or lower \
                 --max-sessions"
            ),
            StartError::Files(e) => write!(f, "cannot register sockets with io_uring: {e}"),
            StartError::TooManyOwners(n) => {
                write!(
                    f,
                    "{n} sessions per shard is more than one io_uring can track; use more --cores or fewer --max-sessions"
                )
            }
        }
    }
}

impl std::error::Error for StartError {}

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
            memlock_limit_text()
        ),
        _ => format!("cannot create an io_uring: {e}"),
    }
}

fn memlock_limit_text() -> String {
    match process::memlock_limit() {
        Ok(l) => match l.soft {
            None => "unlimited".into(),
            Some(bytes) => format!("{} KiB", bytes / 1024),
        },
        Err(_) => "unknown".into(),
    }
}

/// The locked-memory budget of this process: `None` when unlimited (no
/// limit, or CAP_IPC_LOCK, which exempts io_uring from it).
pub fn memlock_budget_bytes() -> Option<u64> {
    if process::has_capability(CAP_IPC_LOCK) {
        return None;
    }
    process::memlock_limit().ok().and_then(|l| l.soft)
}

/// The fewest sessions per shard worth starting with.
pub const SESSIONS_MIN: usize = 16;

/// Table slots for `sessions` live sessions: a retired session keeps its
/// slot until its socket's last operation completes (a turn or two), so a
/// few more slots let new requests in meanwhile.
pub fn capacity_for(sessions: usize) -> usize {
    sessions + (sessions / 16).max(8)
}

/// Ring owners (fixed-file slots) a shard with `sessions` sessions and
/// `services` service sockets needs: its table slots, the services, the
/// wake eventfd.
pub fn owners_for(sessions: usize, services: usize) -> u32 {
    (capacity_for(sessions) + services + 1) as u32
}

/// What the shards will run with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlan {
    pub sizes: RingSizes,
    pub sessions_per_shard: usize,
    /// Memlock forced reduced rings.
    pub reduced: bool,
}

/// Sizes `shards` rings for `sessions_per_shard` sessions each within the
/// locked-memory budget, lowering the sessions if it must (never below
/// [`SESSIONS_MIN`]); `Err` is the one line to print.
pub fn plan(
    shards: usize,
    sessions_per_shard: usize,
    services: usize,
) -> Result<ShardPlan, String> {
    let budget = memlock_budget_bytes();
    let wanted = owners_for(sessions_per_shard, services);
    let floor = owners_for(SESSIONS_MIN.min(sessions_per_shard), services);
    match uring::sizes::plan(shards as u32, wanted, floor, budget) {
        Ok(p) => {
            // The most sessions whose owners fit what the plan allows.
            let mut sessions = sessions_per_shard;
            while sessions > SESSIONS_MIN && owners_for(sessions, services) > p.owners {
                sessions = (sessions - 1).min(p.owners as usize);
            }
            Ok(ShardPlan {
                sizes: p.sizes,
                sessions_per_shard: sessions,
                reduced: p.reduced,
            })
        }
        Err(need) => Err(format!(
            "the locked-memory limit is too low for io_uring: RLIMIT_MEMLOCK is {}, {shards} \
             shard(s) need at least {} KiB; raise it with `ulimit -l unlimited` or \
             LimitMEMLOCK=infinity in the systemd unit, or use fewer --cores",
            memlock_limit_text(),
            need.div_ceil(1024)
        )),
    }
}
