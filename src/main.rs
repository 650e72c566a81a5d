//! `uftpd [OPTIONS] ROOT`: checks the configuration, binds the service
//! sockets, starts one shard per core (pinned with --pin), and waits for a signal.

#![deny(unsafe_code)]

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use clap::Parser;

use uftpd::cache::resolve::ABSOLUTE_DIRS_MAX;
use uftpd::cache::{FileCache, Root, Roots, UploadLocks};
use uftpd::config::{self, Args, hpa, sizes};
use uftpd::log::{Logger, Style, sink};
use uftpd::remap::{self, NameMap, Rules, SharedNames};
use uftpd::shard::{self, Control, Shard, ShardSetup};
use uftpd::stats::server::{self as stats_server, StatsConfig};
use uftpd::stats::view::History;
use uftpd::stats::{ShardCounters, Snapshot};
use uftpd::sys::process::{self, EventFd, SignalSet};
use uftpd::sys::{activation, net};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let native = match config::hpa_arguments(&argv) {
        None => argv,
        Some(hpa) => match hpa_command_line(hpa) {
            Ok(native) => native,
            Err(line) => {
                uftpd::log_error!("{}: {line}", config::HPA_PROGRAM);
                return ExitCode::from(2);
            }
        },
    };
    let args = match Args::try_parse_from(native) {
        Ok(args) => args,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other start-up error (clap's own tips
            // can mislead: "use '-- --secure'" would make it the ROOT).
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            uftpd::log_error!(
                "{} (see uftpd --help)",
                first.join(" ").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if args.compat.is_some() {
        uftpd::log_error!("--compat hpa must come first, before the tftpd-hpa flags");
        return ExitCode::from(2);
    }
    if let Some(map) = &args.map_test {
        return map_test(&args, map);
    }
    if let Some(dir) = &args.generate_man {
        return generate_man(dir);
    }
    if let Some(shell) = args.generate_completions {
        let script = config::manual::completions(shell);
        return match std::io::stdout().lock().write_all(&script) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                uftpd::log_error!("--generate-completions: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // Before any thread exists (it clears LISTEN_FDS from the environment).
    let passed = match take_passed_sockets(&args) {
        Ok(passed) => passed,
        Err(line) => {
            uftpd::log_error!("{line}");
            return ExitCode::from(2);
        }
    };
    // Under inetd standard error is the service socket as well (and
    // standard output): log to syslog, as tftpd-hpa always does.
    let stderr_is_socket = args.inetd && activation::is_udp_socket(2);
    if args.inetd {
        for fd in [1, 2] {
            if activation::is_udp_socket(fd) {
                activation::detach_from(fd);
            }
        }
    }
    // Configuration errors exit 2, as a bad flag does.
    let names = match name_map(&args) {
        Ok(names) => names,
        Err(lines) => {
            for line in lines {
                uftpd::log_error!("{line}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(line) = args.listen_refusal() {
        uftpd::log_error!("{line}");
        return ExitCode::from(2);
    }
    if let Some(line) = args.root_upload_refusal(process::effective_uid()) {
        uftpd::log_error!("{line}");
        return ExitCode::from(2);
    }
    let user = match switch_to(&args) {
        Ok(user) => user,
        Err(line) => {
            uftpd::log_error!("{line}");
            return ExitCode::from(2);
        }
    };
    // Before any thread starts: threads inherit this mask, so only the
    // main thread takes these signals, and none of them can kill the server
    // mid-transfer (a thread without the mask would take SIGTERM's default
    // action: exit on the spot).
    let signals = SignalSet::block(&[
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ]);
    // From here every line goes through the logging thread; the shards
    // never wait for it (README "Logs").
    let style = Style::detect(args.log_format, args.log_level());
    let (logger, records) = Logger::channel(style.level, args.log_queue_records as usize);
    // Syslog implied by inetd is best effort: without a /dev/log the lines
    // are lost, as they would be on the socket, but the server serves.
    let syslog = args.syslog || (stderr_is_socket && Path::new(sink::SYSLOG_SOCKET).exists());
    let sink = match sink::spawn(style, records, syslog) {
        Ok(sink) => sink,
        Err(e) => {
            uftpd::log_error!("--syslog: cannot reach {}: {e}", sink::SYSLOG_SOCKET);
            return ExitCode::FAILURE;
        }
    };
    uftpd::log::set_global(logger.clone());
    let code = match run(args, passed, names, user, &logger, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            uftpd::log_error!("{message}");
            ExitCode::FAILURE
        }
    };
    // The last lines (totals, the reason for a failure) are written before
    // exit, unless stderr is stuck.
    sink.flush(&logger, Duration::from_secs(2));
    code
}

fn run(
    args: Args,
    (passed, origin): (Vec<(OwnedFd, SocketAddr)>, Origin),
    names: Option<Arc<NameMap>>,
    user: Option<process::User>,
    logger: &Logger,
    signals: &SignalSet,
) -> Result<(), String> {
    if let Some(mask) = args.umask {
        process::set_umask(mask);
    }
    let shared_names = Arc::new(SharedNames::new(names.clone()));
    let (root, serving) = open_roots(&args)?;

    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = args
        .cores
        .map_or_else(|| uftpd::config::default_shards(online), usize::from);
    if shards > online {
        uftpd::log_warn!("{shards} shards on {online} CPUs; shards share CPUs round-robin");
    }

    // No probe ring here: one created and dropped now would still hold its
    // locked memory (freed asynchronously) when the shards build theirs.
    // A shard that cannot build its ring says why, in one line.
    let sockets = if origin != Origin::Bound {
        adopt_all(passed, shards)?
    } else {
        bind_all(&args.listen_addrs(), shards, args.takeover)?
    };
    let services = sockets.first().map_or(0, |s| s.len());
    let per_shard_sessions = sessions_per_shard(&args, shards)?;
    let plan = shard::plan(shards, per_shard_sessions, services)?;
    if plan.reduced || plan.sessions_per_shard < per_shard_sessions {
        let limit = process::memlock_limit()
            .ok()
            .and_then(|l| l.soft)
            .map_or("unlimited".to_string(), |b| format!("{} KiB", b / 1024));
        uftpd::log_warn!(
            "RLIMIT_MEMLOCK is {limit}, too little for full-size rings with \
             {per_shard_sessions} sessions per shard; running with {} and at most {} sessions \
             per shard (raise the limit, see tuning.md)",
            if plan.reduced {
                "reduced batching"
            } else {
                "full batching"
            },
            plan.sessions_per_shard
        );
    }
    let cache = Arc::new(FileCache::with_netascii_budget(
        sizes::CACHE_ENTRIES_MAX,
        args.max_netascii_total_bytes,
    ));
    let upload = args.upload_policy()?;
    let upload_locks = Arc::new(UploadLocks::default());
    let root = Arc::new(root);
    let control = Arc::new(Control::default());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let kept = capabilities_kept(&args);
    // One eventfd per shard: a shard re-arms its read after a wake, and a
    // shared counter would let one shard take another's wake-up.
    let mut wakes: Vec<EventFd> = Vec::with_capacity(shards);
    let mut threads = Vec::with_capacity(shards);
    let all_counters: Vec<Arc<ShardCounters>> = (0..shards)
        .map(|_| Arc::new(ShardCounters::default()))
        .collect();
    let stats = start_stats(&args, &all_counters, &cache)?;
    let mut bound: Vec<SocketAddr> = Vec::new();
    for (index, service_sockets) in sockets.into_iter().enumerate() {
        if index == 0 {
            bound = service_sockets.iter().map(|(_, a)| *a).collect();
        }
        let counters = Arc::clone(&all_counters[index]);
        let setup = ShardSetup {
            index,
            service_sockets,
            root: Arc::clone(&root),
            cache: Arc::clone(&cache),
            counters,
            control: Arc::clone(&control),
            server: args.server_config(),
            endpoint: args.endpoint_config(shards, plan.sessions_per_shard),
            upload: upload.clone(),
            upload_locks: Arc::clone(&upload_locks),
            names: Arc::clone(&shared_names),
            permissive: args.permissive,
            gso: !args.no_gso,
            connect_transfers: !args.stray_errors,
            mtu_cap: args.blksize_max.is_none(),
            per_client_root: args.per_client_root,
            port_range: args.port_range,
            netascii_bytes_max: args.max_netascii_bytes,
            grace_ms: args.grace_ms,
            logger: logger.clone(),
            ring_sizes: plan.sizes,
            wake: {
                let wake = EventFd::new().map_err(|e| format!("eventfd: {e}"))?;
                let ours = wake.try_clone().map_err(|e| format!("eventfd: {e}"))?;
                wakes.push(ours);
                wake
            },
            faults: Default::default(),
        };
        let core = args
            .pin
            .then(|| cpus.get(index % cpus.len().max(1)).copied())
            .flatten();
        let ready = ready_tx.clone();
        let capabilities = kept.clone();
        let thread = std::thread::Builder::new()
            .name(format!("uftpd-shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                match Shard::new(setup) {
                    Ok(shard) => {
                        // Its ring and buffers are registered: what the
                        // shard does from here needs no privilege.
                        if let Some(keep) = &capabilities
                            && let Err(e) = process::drop_thread_capabilities(keep)
                        {
                            let message = format!("shard {index}: cannot drop capabilities: {e}");
                            let _ = ready.send(Err(message.clone()));
                            return Err(message);
                        }
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
                control.hurry();
                wake_shards(&wakes);
                return Err(message);
            }
            Err(_) => return Err("a shard failed to start".into()),
        }
    }
    // Everything that needs root is done: the pid file (where only root
    // may write), then the switch to --user.
    let _pidfile = match args.pidfile.as_deref().map(PidFile::write).transpose() {
        Ok(p) => p,
        Err(message) => {
            control.hurry();
            wake_shards(&wakes);
            return Err(message);
        }
    };
    if let Some(user) = &user {
        if let Err(e) = process::become_user(user) {
            control.hurry();
            wake_shards(&wakes);
            return Err(format!(
                "--user {}: cannot switch: {e}",
                user.name.to_string_lossy()
            ));
        }
        uftpd::log_info!(
            "running as user {} (uid {})",
            user.name.to_string_lossy(),
            user.uid
        );
    }
    // Without root, and as the --user it switched to: none but `kept`.
    let check = match (&kept, &user) {
        (Some(keep), _) => Some(keep.as_slice()),
        (None, Some(_)) => Some(&[][..]),
        (None, None) => None,
    };
    if let Some(keep) = check
        && let Err(message) = check_capabilities(keep)
    {
        control.hurry();
        wake_shards(&wakes);
        return Err(message);
    }
    for addr in &bound {
        match origin {
            Origin::Bound => uftpd::log_info!("listening on {addr}"),
            Origin::Systemd => uftpd::log_info!("listening on {addr} (socket from systemd)"),
            Origin::Inetd => uftpd::log_info!("listening on {addr} (socket from inetd)"),
        }
    }
    let idle_exit = args.idle_exit();
    if let Some(idle) = idle_exit {
        uftpd::log_info!(
            "exiting after {} s without a transfer or a request (--idle-exit-secs)",
            idle.as_secs()
        );
    }
    let mut idle = IdleWatch::new(std::time::Instant::now());
    if let Some(addr) = stats {
        uftpd::log_info!("stats on {addr} (uftpd-stat {addr}, http://{addr}/)");
    }
    if let (Some(path), Some(rules)) = (
        &args.map_file,
        names.as_ref().and_then(|n| n.rules.as_ref()),
    ) {
        uftpd::log_info!(
            "remapping names with {} rules from {}",
            rules.len(),
            path.display()
        );
    }
    uftpd::log_info!("serving {serving} with {shards} shards");

    // Signals are blocked in every thread and taken here. SIGINT/SIGTERM:
    // drain (a second one ends the grace period); SIGHUP: reload; SIGUSR1:
    // print the counters; SIGUSR2: nothing (it must not kill the server).
    let mut result = Ok(());
    let mut draining = false;
    while !threads.iter().all(|t| t.is_finished()) {
        match signals.wait(Duration::from_secs(1)) {
            Some(libc::SIGINT | libc::SIGTERM) if draining => {
                uftpd::log_info!("second signal: ending running transfers now");
                control.hurry();
                wake_shards(&wakes);
            }
            Some(libc::SIGINT | libc::SIGTERM) => {
                uftpd::log_info!(
                    "signal received: no new requests; running transfers have {} ms \
                     to finish (signal again to end them now)",
                    args.grace_ms
                );
                draining = true;
                control.drain();
                wake_shards(&wakes);
            }
            Some(libc::SIGHUP) => reload_names(&args, &shared_names),
            Some(libc::SIGUSR1) => print_totals(&all_counters),
            Some(other) => uftpd::log_info!("signal {other} ignored"),
            None => {}
        }
        if let Some(after) = idle_exit
            && !draining
            && idle.idle_for(&all_counters, std::time::Instant::now()) >= after
        {
            uftpd::log_info!(
                "idle for {} s: exiting (the next request starts uftpd again under \
                 inetd or systemd)",
                after.as_secs()
            );
            draining = true;
            control.drain();
            wake_shards(&wakes);
        }
        if !draining && threads.iter().any(|t| t.is_finished()) {
            // A shard only returns on its own after an error; never exit 0 then.
            result = Err("a shard stopped unexpectedly; shutting down".to_string());
            draining = true;
            control.hurry();
            wake_shards(&wakes);
        }
    }
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(_) => result = Err("a shard panicked".into()),
        }
    }
    print_totals(&all_counters);
    result
}

/// One SO_REUSEPORT socket per shard per address. Port 0 is resolved once
/// so every shard shares the same ephemeral port.
fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
    takeover: bool,
) -> Result<Vec<Vec<(OwnedFd, SocketAddr)>>, String> {
    let explicit = addrs.len() == 1 || !addrs.iter().all(|a| a.ip().is_unspecified());
    let mut per_shard: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..shards).map(|_| Vec::new()).collect();
    // The address bound before this one, as asked, and the port it got.
    let mut paired: Option<(SocketAddr, u16)> = None;
    for &addr in addrs {
        let mut made_pair = false;
        // With --takeover the port is expected to be busy (the instance we
        // replace): join its SO_REUSEPORT group instead of waiting it out.
        let probed = if takeover {
            Ok(())
        } else {
            probe_exclusive_retrying(addr)
        };
        if let Err(e) = probed {
            // The default dual-stack listen tolerates a host without IPv6.
            if !explicit && addr.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) {
                uftpd::log_warn!("IPv6 unavailable, serving IPv4 only");
                continue;
            }
            return Err(bind_error(addr, &e));
        }
        // `[::]:0` (and `:0`) stands for an IPv4 and an IPv6 socket: both
        // get the port the first one was given.
        let mut actual = match paired.take() {
            Some((first, port)) if addr.port() == 0 && pairs_with(first, addr) => {
                // The port was free for the first family only: check this one.
                let half = SocketAddr::new(addr.ip(), port);
                net::probe_exclusive(half).map_err(|e| bind_error(half, &e))?;
                made_pair = true;
                half
            }
            _ => addr,
        };
        for sockets in per_shard.iter_mut() {
            let fd = net::service_socket(actual, false).map_err(|e| bind_error(actual, &e))?;
            actual = net::local_addr(&fd).map_err(|e| bind_error(actual, &e))?;
            sockets.push((fd, actual));
        }
        // A pair is made once: `:0 :0` is two pairs, on two free ports.
        paired = (!made_pair).then_some((addr, actual.port()));
    }
    if per_shard.first().is_none_or(|s| s.is_empty()) {
        return Err("no address to listen on".into());
    }
    Ok(per_shard)
}

/// Whether `second` is the other family's half of the wildcard pair
/// `first` began (`0.0.0.0:0` then `[::]:0`, as `:0` and `[::]:0` expand).
fn pairs_with(first: SocketAddr, second: SocketAddr) -> bool {
    first.port() == 0
        && first.ip().is_unspecified()
        && second.ip().is_unspecified()
        && first.is_ipv4() != second.is_ipv4()
}

/// Where the service sockets came from, for the `listening on` lines.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Bound,
    Systemd,
    Inetd,
}

/// The sockets systemd passed, or with --inetd the one on standard input,
/// if any; `Err` is a configuration error.
fn take_passed_sockets(args: &Args) -> Result<(Vec<(OwnedFd, SocketAddr)>, Origin), String> {
    let passed = activation::take_passed()?;
    if args.inetd {
        if !passed.is_empty() {
            // systemd's StandardInput=socket: the same socket is on 0 too.
            activation::detach_from(0);
            return Ok((passed, Origin::Systemd));
        }
        return Ok((vec![activation::take_stdin()?], Origin::Inetd));
    }
    if !passed.is_empty() && !args.listen.is_empty() {
        return Err(format!(
            "--listen and socket activation together: systemd passed {} socket(s) \
             (LISTEN_FDS); set the addresses in the .socket unit and drop --listen",
            passed.len()
        ));
    }
    if !passed.is_empty() && args.takeover {
        return Err(
            "--takeover with socket activation: systemd keeps the sockets open \
                    across restarts, so there is nothing to take over; drop --takeover"
                .into(),
        );
    }
    let origin = if passed.is_empty() {
        Origin::Bound
    } else {
        Origin::Systemd
    };
    Ok((passed, origin))
}

/// The passed sockets as service sockets: each serves the first shard,
/// and every other shard binds a socket of its own to the same address
/// (SO_REUSEPORT, so the kernel keeps spreading clients by their address
/// and port, and a client's repeats reach the shard holding its session).
/// When the kernel refuses that (the passed socket belongs to another
/// user: SO_REUSEPORT groups need one owner), the other shards receive on
/// duplicates of the passed socket instead, with a warning.
fn adopt_all(
    passed: Vec<(OwnedFd, SocketAddr)>,
    shards: usize,
) -> Result<Vec<Vec<(OwnedFd, SocketAddr)>>, String> {
    let mut per_shard: Vec<Vec<(OwnedFd, SocketAddr)>> = (0..shards).map(|_| Vec::new()).collect();
    for (fd, addr) in passed {
        activation::adopt(&fd, addr).map_err(|e| format!("passed socket {addr}: {e}"))?;
        let mut shared = false;
        for sockets in per_shard.iter_mut().skip(1) {
            let own = if shared {
                None
            } else {
                match net::service_socket(addr, net::is_dual_stack(&fd)) {
                    Ok(s) => Some(s),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                        uftpd::log_warn!(
                            "cannot open more sockets on {addr} beside the one passed by \
                             systemd or inetd (it belongs to another user, or lacks \
                             ReusePort=yes): all shards share it, and a client's repeated \
                             request may reach another shard"
                        );
                        shared = true;
                        None
                    }
                    Err(e) => return Err(bind_error(addr, &e)),
                }
            };
            let fd = match own {
                Some(s) => s,
                None => fd
                    .try_clone()
                    .map_err(|e| format!("passed socket {addr}: {e}"))?,
            };
            sockets.push((fd, addr));
        }
        per_shard[0].push((fd, addr));
    }
    Ok(per_shard)
}

/// How long a port that is still in use is retried: the previous instance
/// of this server, stopped a moment ago, may not have closed its sockets.
const BIND_RETRY_MS: u64 = 2000;

fn probe_exclusive_retrying(addr: SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_millis(BIND_RETRY_MS);
    loop {
        match net::probe_exclusive(addr) {
            Err(e)
                if e.raw_os_error() == Some(libc::EADDRINUSE)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn bind_error(addr: SocketAddr, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => format!(
            "cannot listen on {addr}: port in use by another program (to restart uftpd \
             without a gap, start the new one with --takeover, then stop the old one)"
        ),
        Some(libc::EACCES) => format!(
            "cannot listen on {addr}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        ),
        Some(libc::EADDRNOTAVAIL) => format!("cannot listen on {addr}: no such local address"),
        _ => format!("cannot listen on {addr}: {e}"),
    }
}

/// One line with every counter, summed over the shards.
fn print_totals(counters: &[Arc<ShardCounters>]) {
    let mut total = Snapshot::default();
    for c in counters {
        total.add(&c.snapshot());
    }
    let fields: Vec<String> = total.fields().map(|(k, v, _)| format!("{k}={v}")).collect();
    uftpd::log_info!("totals: {}", fields.join(" "));
}

/// The capabilities every thread keeps once serving when uftpd runs
/// without root (systemd's AmbientCapabilities=, setcap): only binding
/// transfer ports below 1024 (--port-range) needs one. `None` as root:
/// with --user the switch clears every thread's capabilities (a thread that
/// had dropped CAP_SETUID first would make glibc abort the switch), and
/// without --user root keeps what root has.
fn capabilities_kept(args: &Args) -> Option<Vec<u32>> {
    if process::effective_uid() == 0 {
        return None;
    }
    let low_ports = args.port_range.is_some_and(|r| r.lo < 1024);
    Some(if low_ports {
        vec![process::CAP_NET_BIND_SERVICE]
    } else {
        Vec::new()
    })
}

/// Looks at the threads' capabilities, 10 ms apart, before one that kept
/// some is an error.
const CAPABILITY_CHECKS_MAX: u32 = 50;

/// Drops the main thread's capabilities but `keep`, then checks that no
/// thread of the process holds more (a thread spawned with them and never
/// dropped would be a hole), and says what is kept.
fn check_capabilities(keep: &[u32]) -> Result<(), String> {
    // A capability never held cannot be kept (capset may only lower).
    let held_before = process::permitted_capabilities().unwrap_or(0);
    let keep: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&bit| bit < 64 && held_before & (1 << bit) != 0)
        .collect();
    process::drop_thread_capabilities(&keep)
        .map_err(|e| format!("cannot drop capabilities: {e}"))?;
    let allowed: u64 = keep.iter().fold(0, |m, &bit| m | (1u64 << bit));
    // The log and stats threads drop theirs as they start: give them a
    // moment (a bounded number of looks) before calling one a hole.
    let mut looks = 0;
    loop {
        looks += 1;
        match process::thread_capabilities() {
            Ok(threads) => match threads.iter().find(|&&caps| caps & !allowed != 0) {
                None => break,
                Some(_) if looks < CAPABILITY_CHECKS_MAX => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(extra) => {
                    return Err(format!(
                        "a thread still holds capabilities {extra:#x} after dropping them"
                    ));
                }
            },
            Err(e) => {
                uftpd::log_warn!("cannot check the threads' capabilities: {e}");
                break;
            }
        }
    }
    if allowed == 0 {
        uftpd::log_info!("no capabilities kept");
    } else {
        uftpd::log_info!("keeping CAP_NET_BIND_SERVICE only (--port-range below 1024)");
    }
    Ok(())
}

/// ROOT, or the --absolute-dir directories, opened; and how to name them
/// in the log.
fn open_roots(args: &Args) -> Result<(Roots, String), String> {
    if args.absolute_dir.is_empty() {
        // clap requires ROOT unless --absolute-dir or --map-test (which
        // never gets here).
        let path = args
            .root
            .clone()
            .ok_or("no ROOT given (see uftpd --help)")?;
        let root = Root::open(&path).map_err(|e| format!("root {}: {e}", path.display()))?;
        return Ok((Roots::One(root), path.display().to_string()));
    }
    if args.absolute_dir.len() > ABSOLUTE_DIRS_MAX {
        return Err(format!(
            "--absolute-dir given {} times; at most {ABSOLUTE_DIRS_MAX}",
            args.absolute_dir.len()
        ));
    }
    let mut dirs = Vec::with_capacity(args.absolute_dir.len());
    for path in &args.absolute_dir {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if !bytes.starts_with(b"/") {
            return Err(format!(
                "--absolute-dir {}: not an absolute path (requests are matched against it)",
                path.display()
            ));
        }
        let root =
            Root::open(path).map_err(|e| format!("--absolute-dir {}: {e}", path.display()))?;
        // `/srv/tftp/` matches as `/srv/tftp`; `/` as every absolute name.
        let mut prefix = bytes.to_vec();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        dirs.push((prefix, root));
    }
    let names: Vec<String> = args
        .absolute_dir
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok((
        Roots::Absolute(dirs),
        format!("absolute names under {}", names.join(", ")),
    ))
}

/// How long the server has had no session and received no packet, from
/// the shards' counters, read once a second by the main thread.
struct IdleWatch {
    packets: u64,
    since: std::time::Instant,
}

impl IdleWatch {
    fn new(now: std::time::Instant) -> IdleWatch {
        IdleWatch {
            packets: 0,
            since: now,
        }
    }

    fn idle_for(&mut self, counters: &[Arc<ShardCounters>], now: std::time::Instant) -> Duration {
        let mut total = Snapshot::default();
        for c in counters {
            total.add(&c.snapshot());
        }
        if total.sessions_active > 0 || total.packets_received != self.packets {
            self.packets = total.packets_received;
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

/// Wakes every shard through its own eventfd.
fn wake_shards(wakes: &[EventFd]) {
    for wake in wakes {
        let _ = wake.notify(1);
    }
}

/// `--max-sessions` split over the shards, within what RLIMIT_NOFILE allows:
/// every session holds a socket, and a ring's fixed-file table may not be
/// larger than the limit. The soft limit is raised to the hard one first.
fn sessions_per_shard(args: &Args, shards: usize) -> Result<usize, String> {
    let wanted = (args.max_sessions as usize).div_ceil(shards);
    let nofile = process::raise_nofile_to_hard().unwrap_or(1024);
    let for_sessions = nofile.saturating_sub(sizes::DESCRIPTORS_RESERVED) / shards as u64;
    // Table slots, services and the wake descriptor must fit one table.
    let mut fit = wanted;
    while fit > shard::SESSIONS_MIN
        && (shard::capacity_for(fit) as u64 > for_sessions
            || u64::from(shard::owners_for(fit, 1)) > nofile)
    {
        fit -= (fit / 8).max(1);
    }
    if fit < wanted {
        uftpd::log_warn!(
            "RLIMIT_NOFILE is {nofile}: serving at most {} sessions (not {}); \
             raise it (LimitNOFILE= in the systemd unit) for more",
            fit * shards,
            args.max_sessions
        );
    }
    Ok(fit.max(1))
}

/// Binds the stats endpoint and starts its threads (unless --no-stats).
/// A port that is in use is fatal when --stats was given, and only a
/// warning for the default one: serving boots matters more than stats.
fn start_stats(
    args: &Args,
    counters: &[Arc<ShardCounters>],
    cache: &Arc<FileCache>,
) -> Result<Option<SocketAddr>, String> {
    if args.no_stats {
        return Ok(None);
    }
    let addr = args.stats.unwrap_or(uftpd::config::STATS_DEFAULT);
    let secret = match &args.stats_secret_file {
        Some(path) => Some(stats_server::read_secret(path)?),
        None => None,
    };
    stats_server::check_exposure(addr, secret.is_some())?;
    let listener = match stats_server::bind(addr, args.takeover) {
        Ok(l) => l,
        Err(e) if args.stats.is_none() => {
            uftpd::log_warn!(
                "no stats endpoint: cannot listen on {addr}: {e} (give --stats ADDR:PORT, \
                 or --no-stats)"
            );
            return Ok(None);
        }
        Err(e) => return Err(format!("--stats {addr}: {e}")),
    };
    let bound = listener
        .local_addr()
        .map_err(|e| format!("--stats {addr}: {e}"))?;
    let cache = Arc::clone(cache);
    let history = Arc::new(History::new(
        counters.to_vec(),
        Box::new(move || cache.mapped_bytes()),
        std::time::Instant::now(),
    ));
    let config = StatsConfig {
        secret,
        allow: args.stats_allow.clone(),
        connections_max: args.stats_connections_max,
        idle_timeout_ms: args.stats_idle_ms,
        server_name: hostname(),
    };
    stats_server::spawn(listener, config, history).map_err(|e| format!("stats thread: {e}"))?;
    Ok(Some(bound))
}

/// This host's name, for the eAS0 welcome.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "uftpd".to_string())
}

/// The name map the flags ask for, or `None` for none; `Err` holds the
/// lines to print (one per problem in the map file).
/// SIGHUP: re-reads `--map-file` and puts its rules in force for the next
/// requests; a file that no longer parses leaves the old rules in force.
/// Every other setting is read at start only.
fn reload_names(args: &Args, shared: &SharedNames) {
    let Some(path) = &args.map_file else {
        uftpd::log_info!("SIGHUP: no --map-file to re-read (other settings are read at start)");
        return;
    };
    match name_map(args) {
        Ok(names) => {
            let rules = names
                .as_ref()
                .and_then(|n| n.rules.as_ref())
                .map_or(0, |r| r.len());
            shared.replace(names);
            uftpd::log_info!(
                "SIGHUP: remapping names with {rules} rules from {}",
                path.display()
            );
        }
        Err(problems) => {
            for line in problems {
                uftpd::log_warn!("SIGHUP: {line}; the rules in force stay");
            }
        }
    }
}

fn name_map(args: &Args) -> Result<Option<Arc<NameMap>>, Vec<String>> {
    let rules = match &args.map_file {
        Some(path) => Some(read_map_file("--map-file", path)?),
        None => None,
    };
    let names = NameMap {
        strip_trailing_garbage: args.strip_trailing_garbage,
        lowercase: args.lowercase,
        rules,
    };
    Ok((!names.is_identity()).then(|| Arc::new(names)))
}

/// Reads and parses a map file, at most [`remap::FILE_BYTES_MAX`] of it
/// (one byte more, so that the parser reports a file over the limit).
fn read_map_file(flag: &str, path: &Path) -> Result<Rules, Vec<String>> {
    let shown = path.display();
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(remap::FILE_BYTES_MAX as u64 + 1)
                .read_to_end(&mut text)
        })
        .map_err(|e| vec![format!("{flag} {shown}: {e}")])?;
    Rules::parse(&text).map_err(|problems| {
        let mut lines: Vec<String> = problems
            .errors
            .iter()
            .map(|e| match e.line {
                0 => format!("{flag} {shown}: {}", e.message),
                n => format!("{flag} {shown}: line {n}: {}", e.message),
            })
            .collect();
        if problems.unchecked > 0 {
            lines.push(format!(
                "{flag} {shown}: {} more rule lines not checked (stopped after {} problems)",
                problems.unchecked,
                problems.errors.len()
            ));
        }
        lines
    })
}

/// `uftpd --generate-man DIR`: writes DIR/uftpd.8.
fn generate_man(dir: &Path) -> ExitCode {
    let path = dir.join(config::manual::MAN_FILE);
    match config::manual::man_page().and_then(|page| std::fs::write(&path, page)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            uftpd::log_error!("--generate-man {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

/// Longest test line `--map-test` reads: a name (at most 1020 bytes), a
/// TAB, GET/PUT and an address, with room to spare.
const MAP_TEST_LINE_BYTES_MAX: usize = 4096;

/// `uftpd --map-test FILE`: one result line per line of standard input,
/// written as each line arrives (so it works interactively too).
fn map_test(args: &Args, path: &Path) -> ExitCode {
    let rules = match read_map_file("--map-test", path) {
        Ok(rules) => rules,
        Err(lines) => {
            for line in lines {
                uftpd::log_error!("{line}");
            }
            return ExitCode::from(2);
        }
    };
    let names = NameMap {
        strip_trailing_garbage: args.strip_trailing_garbage,
        lowercase: args.lowercase,
        rules: Some(rules),
    };
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    match map_test_lines(&names, &mut input, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        // `uftpd --map-test x | head`: not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            uftpd::log_error!("--map-test: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The loop of [`map_test`]: it ends at the end of the input, and reads
/// at most [`MAP_TEST_LINE_BYTES_MAX`] bytes of a line at once.
fn map_test_lines(
    names: &NameMap,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(MAP_TEST_LINE_BYTES_MAX + 1);
    loop {
        line.clear();
        let limit = MAP_TEST_LINE_BYTES_MAX as u64 + 1;
        if input.take(limit).read_until(b'\n', &mut line)? == 0 {
            return out.flush();
        }
        if line.len() > MAP_TEST_LINE_BYTES_MAX && !line.ends_with(b"\n") {
            // Skip the rest of the overlong line, a bounded piece at a time.
            loop {
                line.clear();
                let n = input.take(limit).read_until(b'\n', &mut line)?;
                if n == 0 || line.ends_with(b"\n") {
                    break;
                }
            }
            writeln!(
                out,
                "INVALID: the line is over {MAP_TEST_LINE_BYTES_MAX} bytes long"
            )?;
        } else {
            out.write_all(&names.test_line(&line))?;
        }
        out.flush()?;
    }
}

/// The user `--user` asks to switch to, or `None` when there is nothing
/// to do (no --user, or already running as that user).
fn switch_to(args: &Args) -> Result<Option<process::User>, String> {
    let Some(name) = &args.user else {
        return Ok(None);
    };
    let user = process::lookup_user(name)
        .map_err(|e| format!("--user {name}: cannot look it up: {e}"))?
        .ok_or_else(|| format!("--user {name}: no such user"))?;
    let euid = process::effective_uid();
    if euid == user.uid {
        return Ok(None);
    }
    if euid != 0 {
        return Err(format!(
            "--user {name}: only root can switch to another user (uftpd runs as uid {euid})"
        ));
    }
    Ok(Some(user))
}

/// `--pidfile`: written once serving, removed on drop (best effort: after
/// --user the directory may no longer be writable, as with tftpd-hpa).
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn write(path: &Path) -> Result<PidFile, String> {
        std::fs::write(path, format!("{}\n", std::process::id()))
            .map_err(|e| format!("--pidfile {}: {e}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// tftpd-hpa's flags as uftpd's, with what [`hpa::translate`] leaves to
/// the caller: tftpd-hpa's default user.
fn hpa_command_line(args: &[std::ffi::OsString]) -> Result<Vec<std::ffi::OsString>, String> {
    let hpa = hpa::translate(args)?;
    let passes_through = hpa.argv.iter().any(|a| a == "--help" || a == "--version");
    let mut argv = hpa.argv;
    // As tftpd-hpa: started as root without -u, run as nobody.
    if hpa.default_user && !passes_through && process::effective_uid() == 0 {
        argv.splice(1..1, ["--user".into(), hpa::DEFAULT_USER.into()]);
    }
    Ok(argv)
}
