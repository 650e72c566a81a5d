//! `uftpd [OPTIONS] ROOT`: checks the configuration, binds the service
//! sockets, starts one pinned shard per core, and waits for a signal.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use clap::Parser;

use uftpd::cache::{FileCache, Root};
use uftpd::config::{Args, sizes};
use uftpd::shard::{self, Shard, ShardSetup, net};
use uftpd::stats::{ShardCounters, Snapshot};

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("uftpd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let root = Root::open(&args.root).map_err(|e| format!("root {}: {e}", args.root.display()))?;

    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args.cores.map_or(online, usize::from);
    if shards > online {
        eprintln!(
            "uftpd: warning: {shards} shards on {online} CPUs; shards share CPUs round-robin"
        );
    }

    let ring_sizes = shard::choose_ring_sizes(shards)?;
    // Fail early, on the main thread, with the reason io_uring is missing.
    drop(io_uring::IoUring::new(4).map_err(|e| shard::describe_ring_error(&e))?);
    let sockets = bind_all(&args.listen_addrs(), shards)?;
    let per_shard_sessions = (args.max_sessions as usize).div_ceil(shards);
    let cache = Arc::new(FileCache::new(sizes::CACHE_ENTRIES_MAX));
    let root = Arc::new(root);
    let shutdown = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    // Shard threads inherit this mask, so only `wait_for_signal` sees them.
    let signals = block_shutdown_signals();
    // SAFETY: plain syscall; the result is checked.
    let wake_raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_SEMAPHORE) };
    if wake_raw < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor the kernel just gave us; owned here, and the
    // shards that read it are joined before it is dropped.
    let wake = unsafe { OwnedFd::from_raw_fd(wake_raw) };
    let mut threads = Vec::with_capacity(shards);
    let mut all_counters: Vec<Arc<ShardCounters>> = Vec::with_capacity(shards);
    let mut bound: Vec<SocketAddr> = Vec::new();
    for (index, service_sockets) in sockets.into_iter().enumerate() {
        if index == 0 {
            bound = service_sockets.iter().map(|(_, a)| *a).collect();
        }
        let counters = Arc::new(ShardCounters::default());
        all_counters.push(Arc::clone(&counters));
        let setup = ShardSetup {
            index,
            service_sockets,
            root: Arc::clone(&root),
            cache: Arc::clone(&cache),
            counters,
            shutdown: Arc::clone(&shutdown),
            server: args.server_config(),
            sessions_max: per_shard_sessions,
            sessions_per_client_max: args.max_sessions_per_client,
            allow_create: args.create,
            netascii_bytes_max: args.max_netascii_bytes,
            grace_ms: args.grace_ms,
            verbose: args.verbose,
            ring_sizes,
            wake_fd: wake.as_raw_fd(),
        };
        let core = cpus.get(index % cpus.len().max(1)).copied();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("uftpd-shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                match Shard::new(setup) {
                    Ok(shard) => {
                        let _ = ready.send(Ok(()));
                        shard.run().map_err(|e| format!("shard {index}: {e}"))
                    }
                    Err(e) => {
                        let message = e.to_string();
                        let _ = ready.send(Err(message.clone()));
                        Err(message)
                    }
                }
            })
            .map_err(|e| format!("cannot start shard thread: {e}"))?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                shutdown.store(true, Ordering::Relaxed);
                wake_shards(&wake, shards);
                return Err(message);
            }
            Err(_) => return Err("a shard failed to start".into()),
        }
    }
    for addr in &bound {
        eprintln!("uftpd: listening on {addr}");
    }
    eprintln!(
        "uftpd: serving {} with {shards} shards",
        args.root.display()
    );

    // Wait for SIGINT/SIGTERM (blocked in every thread, taken here), then
    // tell the shards.
    let mut result = Ok(());
    loop {
        if wait_for_signal(&signals, 1) {
            break;
        }
        if threads.iter().any(|t| t.is_finished()) {
            // A shard only returns on its own after an error; never exit 0 then.
            result = Err("a shard stopped unexpectedly; shutting down".to_string());
            break;
        }
    }
    if result.is_ok() {
        eprintln!(
            "uftpd: signal received: no new requests; running transfers have {} ms to finish",
            args.grace_ms
        );
    }
    shutdown.store(true, Ordering::Relaxed);
    wake_shards(&wake, shards);
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err("a shard panicked".into()),
        }
    }
    if args.verbose >= 1 {
        let mut total = Snapshot::default();
        for c in &all_counters {
            total.add(&c.snapshot());
        }
        let fields: Vec<String> = total.fields().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("uftpd: totals: {}", fields.join(" "));
    }
    result
}

/// One SO_REUSEPORT socket per shard per address. Port 0 is resolved once
/// so every shard shares the same ephemeral port.
fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<Vec<Vec<(OwnedFd, SocketAddr)>>, String> {
    let explicit = addrs.len() == 1 || !addrs.iter().all(|a| a.ip().is_unspecified());
    let mut per_shard: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..shards).map(|_| Vec::new()).collect();
    for &addr in addrs {
        if let Err(e) = net::probe_exclusive(addr) {
            // The default dual-stack listen tolerates a host without IPv6.
            if !explicit && addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                eprintln!("uftpd: warning: IPv6 unavailable, serving IPv4 only");
                continue;
            }
            return Err(bind_error(addr, &e));
        }
        let mut actual = addr;
        for sockets in per_shard.iter_mut() {
            let fd = net::service_socket(actual).map_err(|e| bind_error(actual, &e))?;
            actual = net::local_addr(&fd).map_err(|e| bind_error(actual, &e))?;
            sockets.push((fd, actual));
        }
    }
    if per_shard.first().is_none_or(|s| s.is_empty()) {
        return Err("no address to listen on".into());
    }
    Ok(per_shard)
}

fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            format!("cannot listen on {addr}: port in use by another program")
        }
        Some(libc::EACCES) => format!(
            "cannot listen on {addr}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        ),
        Some(libc::EADDRNOTAVAIL) => format!("cannot listen on {addr}: no such local address"),
        _ => format!("cannot listen on {addr}: {e}"),
    }
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; pthread_sigmask on ourselves.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// True if SIGINT or SIGTERM arrived within `seconds`.
fn wait_for_signal(set: &libc::sigset_t, seconds: i64) -> bool {
    let timeout = libc::timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    // SAFETY: valid set and timeout; no siginfo wanted.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &timeout) > 0 }
}

/// Wakes every shard's armed eventfd read (semaphore mode: one each).
fn wake_shards(wake: &OwnedFd, shards: usize) {
    let count = shards as u64;
    // SAFETY: writing 8 bytes from a local u64 to an eventfd.
    unsafe { libc::write(wake.as_raw_fd(), (&count as *const u64).cast(), 8) };
}
