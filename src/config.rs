//! Command line and the limits it sets. Every limit has a name, a default,
//! and (where an operator needs one) a flag.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::proto::options::{NegotiationLimits, WINDOWSIZE_MAX};
use crate::proto::server::ServerConfig;
use crate::proto::transfer::TimerConfig;
use crate::proto::wire::{BLKSIZE_MAX, BLKSIZE_MIN};

pub const TFTP_PORT: u16 = 69;

/// Timeouts a transfer keeps listening, silently, for a peer that has not
/// answered its first reply and its one resend (1 + 2 + 4 + 8 s at the
/// default timeout). Longer costs session slots under a spoofed flood.
pub const UNVERIFIED_QUIET_WAITS: u32 = 2;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "uftpd",
    version,
    about = "TFTP server for PXE/netboot farms, on per-core io_uring shards",
    after_help = "Serves files under ROOT only. See tuning.md for cores, memlock, io_uring and MTU."
)]
pub struct Args {
    /// Directory to serve; nothing outside it is ever read or written.
    pub root: PathBuf,

    /// Shards (pinned threads, one io_uring each) [default: online CPUs].
    /// More shards than CPUs run pinned round-robin, with a warning.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub cores: Option<u16>,

    /// Address to serve on; repeat for several. Port 0 picks a free port.
    /// [default: 0.0.0.0:69 and [::]:69]
    // `[::]` is an address for --help, not a rustdoc link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,

    /// Start beside a uftpd that is serving the same addresses (they share
    /// the ports through SO_REUSEPORT), for a restart without a gap: start
    /// the new one with --takeover, then SIGTERM the old one, which stops
    /// taking requests at once and drains. Without it a busy port is refused.
    #[arg(long)]
    pub takeover: bool,

    /// Allow WRQ uploads (create or replace files). Without it every WRQ
    /// gets ERROR 2.
    #[arg(long)]
    pub create: bool,

    /// Largest blksize granted (RFC 2348); keep it under the path MTU minus
    /// 32 (IPv4) / 52 (IPv6) for ROMs that cannot reassemble fragments.
    #[arg(long, default_value_t = BLKSIZE_MAX, value_parser = clap::value_parser!(u16).range(i64::from(BLKSIZE_MIN)..=i64::from(BLKSIZE_MAX)))]
    pub blksize_max: u16,

    /// Largest windowsize granted (RFC 7440), at most 32768 (16-bit block
    /// numbers cannot tell a larger window's ACKs apart).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=i64::from(WINDOWSIZE_MAX)))]
    pub windowsize_max: u16,

    /// First retransmit timeout in milliseconds; doubles on each retry
    /// (a client's `timeout` option replaces it, without doubling).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=255_000))]
    pub retransmit_ms: u64,

    /// Retransmits in a row before a transfer is abandoned. A peer that has
    /// never answered gets its first reply resent only once.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub retries: u32,

    /// Concurrent transfers, all shards together (lowered at start, with a
    /// warning, if RLIMIT_NOFILE or RLIMIT_MEMLOCK cannot hold them).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_sessions: u32,

    /// Concurrent transfers from one client address, per shard.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_client: u32,

    /// Largest upload accepted, in bytes (a bigger tsize gets ERROR 3).
    #[arg(long, default_value_t = 4 << 30)]
    pub max_upload_bytes: u64,

    /// Largest file served in netascii mode, in bytes (it is converted in memory).
    #[arg(long, default_value_t = 64 << 20)]
    pub max_netascii_bytes: u64,

    /// How long a finished upload keeps re-ACKing a repeated last block, in
    /// milliseconds (longer than clients' retransmit timeouts).
    #[arg(long, default_value_t = 10_000)]
    pub dally_ms: u64,

    /// On SIGINT/SIGTERM, how long running transfers may finish, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub grace_ms: u64,

    /// Log each transfer (-v) and each refusal (-vv) to stderr.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Sizes that are fixed at compile time, named. Ring, buffer and send-pool
/// sizes are in [`crate::uring::sizes`].
pub mod sizes {
    /// Mapped files kept in the shared cache.
    pub const CACHE_ENTRIES_MAX: usize = 4096;
    /// Descriptors kept back from RLIMIT_NOFILE for everything but transfer
    /// sockets (service sockets, uploads' files, the cache's opens, std).
    pub const DESCRIPTORS_RESERVED: u64 = 64;
}

impl Args {
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() {
            vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, TFTP_PORT)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, TFTP_PORT)),
            ]
        } else {
            self.listen.clone()
        }
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: self.blksize_max,
                windowsize_max: self.windowsize_max,
                upload_bytes_max: self.max_upload_bytes,
            },
            timer: TimerConfig {
                retransmit_ms: self.retransmit_ms,
                retries_max: self.retries,
                backoff: true,
                unverified_resends_max: Some(1),
                unverified_quiet_waits: UNVERIFIED_QUIET_WAITS,
            },
            dally_ms: self.dally_ms,
        }
    }
}
