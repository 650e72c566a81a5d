//! Command line and the limits it sets. Every limit has a name, a default,
//! and (where an operator needs one) a flag.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;

use crate::cache::{Overwrite, UploadPolicy};
use crate::log::{Format, Level};
use crate::proto::budget::SourceLimits;
use crate::proto::endpoint::EndpointConfig;
use crate::proto::options::{NegotiationLimits, Refused, WINDOWSIZE_MAX};
use crate::proto::server::ServerConfig;
use crate::proto::transfer::TimerConfig;
use crate::proto::wire::{BLKSIZE_MAX, BLKSIZE_MIN};
pub use crate::stats::allow::{Cidr, parse_cidr};
pub use crate::sys::net::PortRange;

pub mod hpa;
pub mod manual;

pub const TFTP_PORT: u16 = 69;

/// Shards when `--cores` is not given: every online CPU but one, which is
/// left to the rest of the machine (the OS, DHCP, HTTP: a PXE server is
/// rarely alone on its CPUs), and at least one. A shard that has to wait
/// for a CPU delays every session it holds: on 2 CPUs shared with a busy
/// client, one shard beat two on every storm scenario (tuning.md, "Cores
/// and shards").
pub fn default_shards(online_cpus: usize) -> usize {
    online_cpus.saturating_sub(1).max(1)
}

/// How long an inetd-started server waits for another request before it
/// exits (tftpd-hpa's -t default: 15 minutes).
pub const INETD_IDLE_EXIT_SECS: u64 = 900;

/// Where the stats endpoint listens unless told otherwise.
pub const STATS_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 6969);

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
    #[arg(required_unless_present_any = ["map_test", "generate_man", "generate_completions", "absolute_dir"])]
    pub root: Option<PathBuf>,

    /// Instead of ROOT: serve absolute names under DIR, a request for
    /// DIR/x being x in DIR (tftpd-hpa without -s); repeat for several
    /// directories, tried in order. Relative names are refused.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["root", "per_client_root"])]
    pub absolute_dir: Vec<PathBuf>,

    /// Write the man page (uftpd.8) into DIR and exit (for packaging).
    #[arg(long, value_name = "DIR", hide = true, exclusive = true)]
    pub generate_man: Option<PathBuf>,

    /// Print the completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell) and exit (for packaging).
    #[arg(long, value_name = "SHELL", hide = true, exclusive = true)]
    pub generate_completions: Option<clap_complete::Shell>,

    /// Read the rest of the command line as tftpd-hpa's (`in.tftpd`'s);
    /// must come first. Invoking uftpd as `in.tftpd` does the same.
    #[arg(long, value_enum, value_name = "hpa")]
    pub compat: Option<Compat>,

    /// Shards (threads, one io_uring each) [default: online CPUs but one,
    /// at least 1]. More shards than CPUs share them, with a warning.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub cores: Option<u16>,

    /// Pin shard N to CPU N (round-robin). Off by default: measured on
    /// CPUs shared with clients and other work, the scheduler placing the
    /// shards did better in every scenario (tuning.md, "Cores and shards").
    #[arg(long)]
    pub pin: bool,

    /// Send each DATA block as its own datagram instead of a window per
    /// `sendmsg` with UDP segmentation offload (GSO). For paths that
    /// mishandle GSO; uftpd already falls back per transfer when the
    /// kernel refuses a GSO send.
    #[arg(long)]
    pub no_gso: bool,

    /// Leave transfer sockets unconnected, so that a packet from another
    /// port gets ERROR 5 "Unknown transfer ID" (RFC 1350 section 4). By
    /// default each transfer socket is connected to its client, as
    /// tftpd-hpa and atftpd do: the kernel caches the route instead of
    /// looking one up per datagram (measured 0.83x the CPU per GiB on S1,
    /// bench/RESULTS.md), and a stray gets an ICMP port unreachable.
    #[arg(long)]
    pub stray_errors: bool,

    /// Address to serve on; repeat for several. `ADDR:PORT`, `[IPV6]:PORT`,
    /// an address alone (port 69), `:PORT` or `PORT` alone (0.0.0.0 and
    /// [::]), `localhost[:PORT]` (127.0.0.1). Port 0 picks a free port.
    /// `[::]` is dual-stack: it serves IPv4 clients too (0.0.0.0 beside an
    /// IPv6-only [::]); any other IPv6 address serves IPv6 only. A
    /// link-local address names its interface: `[fe80::1%eth0]:69`. Not with
    /// socket activation (LISTEN_FDS), which uses systemd's sockets.
    /// [default: 0.0.0.0:69 and [::]:69]
    // `[::]` is an address for --help, not a rustdoc link.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long = "listen", value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub listen: Vec<Listen>,

    /// Serve IPv6 clients only: `[::]`, `:PORT` and the default listen
    /// open no IPv4 socket (tftpd-hpa's -6). An IPv4 --listen address is
    /// then an error.
    #[arg(long)]
    pub ipv6_only: bool,

    /// Start beside a uftpd that is serving the same addresses (they share
    /// the ports through SO_REUSEPORT), for a restart without a gap: start
    /// the new one with --takeover, then SIGTERM the old one, which stops
    /// taking requests at once and drains. Without it a busy port is refused.
    #[arg(long)]
    pub takeover: bool,

    /// Serve the UDP socket on standard input, as inetd (`wait` mode) and
    /// systemd's `StandardInput=socket` pass it (tftpd-hpa without -l).
    /// When standard error is that socket too, logs go to syslog instead.
    /// Sockets systemd passes in LISTEN_FDS, if any, are taken instead.
    #[arg(long, conflicts_with_all = ["listen", "takeover"])]
    pub inetd: bool,

    /// Exit after this many seconds with no transfer running and no
    /// request received, so that inetd or systemd start uftpd again on the
    /// next request (tftpd-hpa's -t). 0 never exits.
    /// [default: 900 with --inetd, else 0]
    #[arg(long, value_name = "SECS")]
    pub idle_exit_secs: Option<u64>,

    /// Allow WRQ uploads to create new files; an existing file is replaced
    /// only if it is world-writable (tftpd-hpa's rule). Without it every
    /// WRQ gets ERROR 2.
    #[arg(long)]
    pub create: bool,

    /// Let uploads replace any existing regular file, which keeps its mode
    /// (and owner, when running as root). Implies --create.
    #[arg(long)]
    pub overwrite: bool,

    /// Accept uploads (--create, --overwrite) while running as root. Without
    /// it uftpd refuses to start with uploads enabled as root unless --user
    /// drops privileges: every client could write files owned by root.
    #[arg(long)]
    pub allow_root_uploads: bool,

    /// Accept uploads only under this directory of the root (e.g.
    /// `incoming`); other WRQs get ERROR 2.
    #[arg(long, value_name = "DIR")]
    pub upload_dir: Option<PathBuf>,

    /// Also serve files that others may not read (no o+r bit). Without it
    /// such a file gets ERROR 2, as tftpd-hpa does without -p: a file
    /// someone made private is not published by accident.
    #[arg(long)]
    pub permissive: bool,

    /// Rewrite or refuse requested names with tftpd-hpa's remap rules
    /// (its `-m` file; docs/remap.md), read once at start. A file with an
    /// error stops the start, with a line per problem.
    #[arg(long, value_name = "FILE")]
    pub map_file: Option<PathBuf>,

    /// Print what each name read from standard input maps to under the map
    /// FILE (with --lowercase and --strip-trailing-garbage applied first, if
    /// given), one line each, then exit; no ROOT needed (docs/remap.md).
    #[arg(long, value_name = "FILE", conflicts_with = "map_file")]
    pub map_test: Option<PathBuf>,

    /// Lower-case ASCII letters in requested names before anything else
    /// looks at them (dnsmasq's --tftp-lowercase), for ROMs that shout.
    #[arg(long)]
    pub lowercase: bool,

    /// Serve each client from ROOT/ADDRESS/ (`10.0.0.7`, `fe80::1`) when
    /// that directory exists, else from ROOT (dnsmasq's --tftp-unique-root):
    /// per-machine configurations without remap rules. Applies after
    /// remapping, to downloads only. Not isolation: a client without a
    /// directory of its own reads all of ROOT.
    #[arg(long)]
    pub per_client_root: bool,

    /// Drop trailing NUL bytes and trailing bytes that are not UTF-8 from
    /// requested names (0xFF padding some boot ROMs send). Leave it off for
    /// names in 8-bit encodings such as Latin-1.
    #[arg(long)]
    pub strip_trailing_garbage: bool,

    /// Once serving (sockets bound, rings and buffers registered, limits
    /// raised, the pid file written), switch to this user, its group and
    /// its supplementary groups for good, with no capabilities left. Needs
    /// root (or already being that user).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// File-creation mask for uploads, in octal (new files are 0644 before
    /// it) [default: inherited].
    #[arg(long, value_name = "OCTAL", value_parser = parse_umask)]
    pub umask: Option<u32>,

    /// Write the process id to this file once serving; removed at exit
    /// (when still permitted after --user).
    #[arg(long, value_name = "FILE")]
    pub pidfile: Option<PathBuf>,

    /// Largest blksize granted (RFC 2348), on every interface. Without it
    /// the cap is the MTU of the interface each request came in on minus 32
    /// (IPv4) / 52 (IPv6), so that no DATA is fragmented (many PXE ROMs
    /// cannot reassemble fragments), at most 65464.
    /// [default: 65464, capped to each interface's MTU − 32 / − 52]
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(i64::from(BLKSIZE_MIN)..=i64::from(BLKSIZE_MAX)))]
    pub blksize_max: Option<u16>,

    /// Largest windowsize granted (RFC 7440), at most 32768 (16-bit block
    /// numbers cannot tell a larger window's ACKs apart).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=i64::from(WINDOWSIZE_MAX)))]
    pub windowsize_max: u16,

    /// Never negotiate this option (blksize, tsize, timeout, windowsize):
    /// requests that carry it are served as if it were not there (tftpd-hpa's
    /// -r), for clients that mishandle it. Repeat for several.
    #[arg(long, value_enum, value_name = "OPTION", ignore_case = true)]
    pub refuse: Vec<TftpOption>,

    /// Bind transfer sockets to ports from LO to HI (for a firewall that
    /// opens a fixed range); each port is tried at most once per request,
    /// and when none is free the request gets ERROR 0 "No free transfer
    /// port". Keep it above 1023 with --user. [default: the kernel's
    /// ephemeral ports, net.ipv4.ip_local_port_range]
    #[arg(long, value_name = "LO:HI", value_parser = PortRange::parse)]
    pub port_range: Option<PortRange>,

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

    /// Concurrent transfers from one client address, per shard (a NAT or
    /// a relay in front of a farm is one address) [default: no limit but
    /// --max-sessions].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_client: Option<u32>,

    /// Transfers from one client address whose client has not answered
    /// yet, per shard: what a spoofed source can hold (a client that
    /// answers is not limited by it).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_unverified_per_client: u32,

    /// New transfers one client address (an IPv6 /64) may start per second,
    /// after a burst of --client-burst; over it, requests get no answer (the
    /// client retries: an ERROR would end a ROM's boot).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_rate: u64,

    /// New transfers one client address may start at once, before
    /// --client-rate applies (a PXE client's lookups, a NAT's storm).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_burst: u64,

    /// Bytes per second that may go to one client address before it has
    /// answered (first replies and their one resend; 4 seconds' worth at
    /// once), per shard. Bounds what a spoofed request can reflect.
    #[arg(long, default_value = "256K", value_parser = parse_size)]
    pub unverified_client_bytes_per_s: u64,

    /// Bytes per second that may go to clients that have not answered, all
    /// of them together, all shards together (2 seconds' worth at once).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub unverified_bytes_per_s: u64,

    /// Largest upload accepted (a bigger tsize gets ERROR 3); bytes, or
    /// with a unit: 512K, 64M, 4G.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    pub max_upload_bytes: u64,

    /// Largest file served in netascii mode (it is converted in memory);
    /// bytes, or with a unit.
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub max_netascii_bytes: u64,

    /// Memory all netascii conversions held at once may use (each file
    /// version is converted once and shared); over it, a netascii request
    /// gets "Server busy". Bytes, or with a unit.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub max_netascii_total_bytes: u64,

    /// How long a finished upload keeps re-ACKing a repeated last block, in
    /// milliseconds: several of a client's retransmit timeouts (curl and
    /// atftp resend every 5-6 s), so a lost final ACK and a lost re-ACK do
    /// not fail a client whose file is stored.
    #[arg(long, default_value_t = 30_000)]
    pub dally_ms: u64,

    /// On SIGINT/SIGTERM, how long running transfers may finish, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub grace_ms: u64,

    /// Log more: -v adds each request as it arrives and UEFI size probes
    /// (debug). By default every finished transfer and every refusal is
    /// logged (info).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log only warnings and errors (no line per transfer).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log lines as text or as one JSON object per line (README "Logs").
    #[arg(long, value_enum, default_value_t = Format::Text, value_name = "FORMAT")]
    pub log_format: Format,

    /// Also send every log line to the local syslog (/dev/log, facility
    /// daemon).
    #[arg(long)]
    pub syslog: bool,

    /// Log records waiting for the logging thread, at most; beyond it the
    /// shards drop records (counted as log_events_dropped) rather than wait.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub log_queue_records: u32,

    /// Where the stats endpoint listens: eAS0 sessions (uftpd-stat) and HTTP
    /// (/metrics, /stats.json, the status page /) on one TCP port.
    /// Anything but a loopback address needs --stats-secret-file.
    /// [default: 127.0.0.1:6969]
    #[arg(long, value_name = "ADDR:PORT")]
    pub stats: Option<SocketAddr>,

    /// No stats endpoint.
    #[arg(long, conflicts_with_all = ["stats_secret_file", "stats_allow"])]
    pub no_stats: bool,

    /// The shared secret eAS0 clients must prove they know (HMAC-SHA256
    /// challenge-response; the secret never crosses the network). The file
    /// holds it on its first line; it must not be readable by others.
    #[arg(long, value_name = "FILE")]
    pub stats_secret_file: Option<PathBuf>,

    /// Networks whose HTTP clients may read /metrics, /stats.json and the
    /// status page (loopback always may); repeat for several.
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub stats_allow: Vec<Cidr>,

    /// Stats connections open at once; more are closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub stats_connections_max: u32,

    /// How long a stats connection may stay silent, or leave our writes
    /// unread, before it is closed, in milliseconds.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub stats_idle_ms: u64,
}

impl Args {
    /// The log level the flags ask for.
    pub fn log_level(&self) -> Level {
        match (self.quiet, self.verbose) {
            (true, _) => Level::Warn,
            (false, 0) => Level::Info,
            (false, _) => Level::Debug,
        }
    }
}

/// Sizes that are fixed at compile time, named. Ring, buffer and send-pool
/// sizes are in [`crate::uring::sizes`].
pub mod sizes {
    /// Mapped files kept in the shared cache.
    pub const CACHE_ENTRIES_MAX: usize = 4096;
    /// Descriptors kept back from RLIMIT_NOFILE for everything but transfer
    /// sockets (service sockets, uploads' files, the cache's opens, std).
    pub const DESCRIPTORS_RESERVED: u64 = 64;
    /// Client addresses whose rates a shard tracks at once (about 48 bytes
    /// each); beyond it, idle ones are forgotten, or new ones pass untracked.
    pub const SOURCES_TRACKED_MAX: usize = 65_536;
}

/// A size in bytes: a number, optionally followed by K, M, G or T (powers
/// of 1024; a trailing `B` or `iB` is accepted too: 4G, 4GiB, 512K, 300).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown unit in {text:?} (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (a number, optionally with K, M, G or T)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The options `--refuse` can take out of negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TftpOption {
    /// RFC 2348: clients then get 512-byte blocks.
    Blksize,
    /// RFC 2349: no size is announced, and an upload's size is not checked
    /// before it starts (--max-upload-bytes still applies as bytes arrive).
    Tsize,
    /// RFC 2349: the server keeps --retransmit-ms.
    Timeout,
    /// RFC 7440: one block per ACK.
    Windowsize,
}

/// Command lines of other servers that uftpd reads ([`hpa`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compat {
    /// tftpd-hpa 5.2's `in.tftpd`.
    Hpa,
}

/// The program name that selects tftpd-hpa's command line.
pub const HPA_PROGRAM: &str = "in.tftpd";

/// The tftpd-hpa arguments in `argv`, if it asks for tftpd-hpa's command
/// line: invoked as `in.tftpd`, or with `--compat hpa` first.
pub fn hpa_arguments(argv: &[std::ffi::OsString]) -> Option<&[std::ffi::OsString]> {
    let program = argv.first().map(std::path::Path::new)?;
    if program.file_name().is_some_and(|n| n == HPA_PROGRAM) {
        return argv.get(1..);
    }
    match argv.get(1).and_then(|a| a.to_str()) {
        Some("--compat=hpa") => argv.get(2..),
        Some("--compat") if argv.get(2).is_some_and(|a| a == "hpa") => argv.get(3..),
        _ => None,
    }
}

/// One `--listen` value: the addresses it stands for (`:69` is two).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen(pub Vec<SocketAddr>);

/// `--listen` as operators write it (the forms tftpd-hpa's `-a` takes,
/// and a port alone): see [`hpa::address_list`].
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty address (give ADDR:PORT, :PORT or PORT)".into());
    }
    // `69`: a port (tftpd-hpa would take it for a host name).
    let spec = if t.bytes().all(|b| b.is_ascii_digit()) {
        format!(":{t}")
    } else {
        t.to_string()
    };
    hpa::address_list(&spec, false, false)
        .map(Listen)
        .map_err(|why| format!("{text:?}: {why}"))
}

/// A umask: octal digits, at most 0777 (`022`, `0o027`, `0007`).
pub fn parse_umask(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(mask) if mask <= 0o777 && !digits.is_empty() => Ok(mask),
        _ => Err(format!("{text:?} is not a umask (octal, at most 0777)")),
    }
}

impl Args {
    /// What uploads may do, or `None` when they are off; `Err` is the one
    /// line to print for an --upload-dir that cannot be a directory name.
    /// Why uploads may not be served by a process with effective uid
    /// `euid`, if they may not: root writes only with --user or
    /// --allow-root-uploads.
    pub fn root_upload_refusal(&self, euid: u32) -> Option<String> {
        let uploads = self.create || self.overwrite;
        (uploads && euid == 0 && self.user.is_none() && !self.allow_root_uploads).then(|| {
            "uploads (--create/--overwrite) as root would write files owned by root: \
             add --user NAME to drop privileges, or --allow-root-uploads"
                .to_string()
        })
    }

    pub fn upload_policy(&self) -> Result<Option<UploadPolicy>, String> {
        if !self.create && !self.overwrite {
            return Ok(None);
        }
        let dir = match &self.upload_dir {
            None => None,
            Some(path) => {
                use std::os::unix::ffi::OsStrExt;
                let mut rel = Vec::new();
                crate::cache::resolve::relative_name(path.as_os_str().as_bytes(), &mut rel)
                    .map_err(|_| {
                        format!(
                            "--upload-dir {}: not a directory under the root",
                            path.display()
                        )
                    })?;
                Some(rel)
            }
        };
        Ok(Some(UploadPolicy {
            overwrite: if self.overwrite {
                Overwrite::Any
            } else {
                Overwrite::WorldWritable
            },
            dir,
            max_bytes: self.max_upload_bytes,
        }))
    }

    /// The options `--refuse` named.
    pub fn refused(&self) -> Refused {
        let mut r = Refused::NONE;
        for option in &self.refuse {
            match option {
                TftpOption::Blksize => r.blksize = true,
                TftpOption::Tsize => r.tsize = true,
                TftpOption::Timeout => r.timeout = true,
                TftpOption::Windowsize => r.windowsize = true,
            }
        }
        r
    }

    /// The addresses to serve on, each once, in the order given.
    /// The configuration error in the addresses and ports, if any: an
    /// IPv4 address with --ipv6-only (the wildcard pairs `[::]` and `:PORT`
    /// stand for just drop their IPv4 half), or transfer ports below 1024
    /// with --user (the switch leaves no capability to bind them).
    pub fn listen_refusal(&self) -> Option<String> {
        if let (Some(user), Some(range)) = (&self.user, self.port_range)
            && range.lo < 1024
        {
            return Some(format!(
                "--port-range {range} with --user {user}: once it is {user}, uftpd can no \
                 longer bind transfer ports below 1024; use ports from 1024 up"
            ));
        }
        if !self.ipv6_only {
            return None;
        }
        let v4 = self
            .listen
            .iter()
            .filter(|l| !l.0.iter().any(|a| a.is_ipv6()))
            .flat_map(|l| l.0.iter())
            .next()?;
        Some(format!(
            "--listen {v4} with --ipv6-only: an IPv4 address; drop one of the two"
        ))
    }

    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        if self.listen.is_empty() && self.ipv6_only {
            return vec![SocketAddr::from((Ipv6Addr::UNSPECIFIED, TFTP_PORT))];
        }
        if self.listen.is_empty() {
            return vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, TFTP_PORT)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, TFTP_PORT)),
            ];
        }
        let mut out: Vec<SocketAddr> = Vec::new();
        let wanted = |a: &&SocketAddr| !(self.ipv6_only && a.is_ipv4());
        for addr in self.listen.iter().flat_map(|l| l.0.iter()).filter(wanted) {
            // A port-0 address twice means two free ports: keep both.
            if addr.port() == 0 || !out.contains(addr) {
                out.push(*addr);
            }
        }
        out
    }

    /// `--idle-exit-secs` with its default; `None` never exits.
    pub fn idle_exit(&self) -> Option<std::time::Duration> {
        let secs = self
            .idle_exit_secs
            .unwrap_or(if self.inetd { INETD_IDLE_EXIT_SECS } else { 0 });
        (secs > 0).then(|| std::time::Duration::from_secs(secs))
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            negotiation: NegotiationLimits {
                blksize_max: self.blksize_max.unwrap_or(BLKSIZE_MAX),
                windowsize_max: self.windowsize_max,
                upload_bytes_max: self.max_upload_bytes,
                refused: self.refused(),
            },
            timer: TimerConfig {
                retransmit_ms: self.retransmit_ms,
                retries_max: self.retries,
                backoff: true,
                unverified_resends_max: Some(1),
                unverified_quiet_waits: UNVERIFIED_QUIET_WAITS,
                unverified_retransmit_ms: self.retransmit_ms,
            },
            dally_ms: self.dally_ms,
        }
    }

    /// The admission policy of one of `shards` shards holding
    /// `sessions_per_shard` sessions: per-client limits apply per shard (a
    /// client's ports may hash to different shards), global budgets are
    /// split between the shards.
    pub fn endpoint_config(&self, shards: usize, sessions_per_shard: usize) -> EndpointConfig {
        let shards = shards.max(1) as u64;
        let client_bytes = self.unverified_client_bytes_per_s;
        let all_bytes = self.unverified_bytes_per_s.div_ceil(shards);
        EndpointConfig {
            sessions_max: sessions_per_shard.max(1),
            sessions_per_client_max: self.max_sessions_per_client.unwrap_or(u32::MAX),
            unverified_per_client_max: self.max_unverified_per_client,
            restart_after_silence_ms: self.retransmit_ms,
            sources: SourceLimits {
                sessions_per_s: self.client_rate,
                sessions_burst: self.client_burst,
                unverified_bytes_per_s: client_bytes,
                unverified_bytes_burst: client_bytes.saturating_mul(4),
            },
            sources_max: sizes::SOURCES_TRACKED_MAX,
            unverified_bytes_per_s: all_bytes,
            unverified_bytes_burst: all_bytes.saturating_mul(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_one_cpu_to_the_rest_of_the_machine() {
        assert_eq!(default_shards(0), 1);
        assert_eq!(default_shards(1), 1);
        assert_eq!(default_shards(2), 1);
        assert_eq!(default_shards(8), 7);
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("300"), Ok(300));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn listen_addresses_as_operators_write_them() {
        let both = |port: u16| {
            vec![
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ]
        };
        let one = |a: &str| vec![a.parse::<SocketAddr>().unwrap()];
        assert_eq!(parse_listen(":69").unwrap().0, both(69));
        assert_eq!(parse_listen("69").unwrap().0, both(69));
        assert_eq!(parse_listen("6969").unwrap().0, both(6969));
        assert_eq!(parse_listen("localhost:69").unwrap().0, one("127.0.0.1:69"));
        assert_eq!(parse_listen("localhost").unwrap().0, one("127.0.0.1:69"));
        // Dual-stack: IPv4 clients are served too.
        assert_eq!(parse_listen("[::]:69").unwrap().0, both(69));
        assert_eq!(parse_listen("[::]:0").unwrap().0, both(0));
        assert_eq!(parse_listen("[::1]").unwrap().0, one("[::1]:69"));
        assert_eq!(parse_listen("::1").unwrap().0, one("[::1]:69"));
        assert_eq!(parse_listen("10.0.0.1").unwrap().0, one("10.0.0.1:69"));
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().0, one("127.0.0.1:0"));
        for bad in [
            "",
            "tftp.example:69",
            "1.2.3.4:99999",
            "[::1",
            "99999",
            "1.2.3.4:x",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(!e.contains('\n') && !e.contains("-a/"), "{bad}: {e}");
        }
        // Repeats collapse, except free ports.
        let args = Args::try_parse_from([
            "uftpd",
            "--listen",
            ":69",
            "--listen",
            "0.0.0.0",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "/srv",
        ])
        .unwrap();
        let mut want = both(69);
        want.extend(one("127.0.0.1:0"));
        want.extend(one("127.0.0.1:0"));
        assert_eq!(args.listen_addrs(), want);
    }

    #[test]
    fn ipv6_only_drops_the_ipv4_half_of_wildcards() {
        let args = |line: &str| {
            let mut argv = vec!["uftpd"];
            argv.extend(line.split_whitespace());
            argv.push("/srv");
            Args::try_parse_from(argv).unwrap()
        };
        let v6 = |a: &str| vec![a.parse::<SocketAddr>().unwrap()];
        assert_eq!(args("--ipv6-only").listen_addrs(), v6("[::]:69"));
        let a = args("--ipv6-only --listen [::]:70 --listen :71");
        assert_eq!(a.listen_addrs(), [v6("[::]:70"), v6("[::]:71")].concat());
        assert_eq!(a.listen_refusal(), None);
        let a = args("--ipv6-only --listen [::1]:70 --listen 127.0.0.1:70");
        assert!(a.listen_refusal().unwrap().contains("127.0.0.1:70"));
        assert_eq!(args("--listen 127.0.0.1:70").listen_refusal(), None);
        let a = args("--user tftp --port-range 69:2000");
        assert!(a.listen_refusal().unwrap().contains("below 1024"));
        assert_eq!(
            args("--user tftp --port-range 1024:2000").listen_refusal(),
            None
        );
    }

    #[test]
    fn umasks_are_octal() {
        assert_eq!(parse_umask("022"), Ok(0o022));
        assert_eq!(parse_umask("0o027"), Ok(0o027));
        assert_eq!(parse_umask("7"), Ok(0o007));
        assert!(parse_umask("8").is_err());
        assert!(parse_umask("1777").is_err());
        assert!(parse_umask("").is_err());
    }
}
