//! tftpd-hpa's command line, for `in.tftpd` (a symlink to uftpd) and
//! `uftpd --compat hpa`: pure code that turns tftpd-hpa 5.2's arguments
//! into uftpd's own command line, or into one line saying what is not
//! supported and what to use instead. Nothing is silently dropped: every
//! flag is translated, accepted because uftpd already behaves that way
//! (`-L`: uftpd never forks), or refused.
//!
//! Parsing follows GNU `getopt_long` as tftpd-hpa uses it: short flags may
//! be grouped (`-lsc`), a value may be attached (`-u tftp`, `-utftp`,
//! `--user=tftp`), long names may be abbreviated when unambiguous, options
//! and directories may come in any order, and `--` ends the options.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;

use super::TFTP_PORT;

/// The user tftpd-hpa switches to, when started as root, without `-u`.
pub const DEFAULT_USER: &str = "nobody";

/// tftpd-hpa's command line in uftpd's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hpa {
    /// The native command line, program name first, for clap.
    pub argv: Vec<OsString>,
    /// `-l`/`--listen` was given. Without it tftpd-hpa serves the socket
    /// inetd (or systemd's tftp.socket) hands it on standard input.
    pub standalone: bool,
    /// No `-u`: tftpd-hpa then runs as [`DEFAULT_USER`] when started as
    /// root, which the caller adds (whether we are root is not pure).
    pub default_user: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    Ipv4,
    Ipv6,
    Create,
    Secure,
    Permissive,
    Verbose,
    Verbosity,
    Version,
    Help,
    Listen,
    Foreground,
    Address,
    Blocksize,
    User,
    Umask,
    Refuse,
    Timeout,
    Retransmit,
    PortRange,
    MapFile,
    Pidfile,
}

/// tftpd-hpa 5.2's options: short letter, long name, whether it takes a value.
const OPTIONS: &[(Option<char>, &str, bool, Flag)] = &[
    (Some('4'), "ipv4", false, Flag::Ipv4),
    (Some('6'), "ipv6", false, Flag::Ipv6),
    (Some('c'), "create", false, Flag::Create),
    (Some('s'), "secure", false, Flag::Secure),
    (Some('p'), "permissive", false, Flag::Permissive),
    (Some('v'), "verbose", false, Flag::Verbose),
    (None, "verbosity", true, Flag::Verbosity),
    (Some('V'), "version", false, Flag::Version),
    (Some('h'), "help", false, Flag::Help),
    (Some('l'), "listen", false, Flag::Listen),
    (Some('L'), "foreground", false, Flag::Foreground),
    (Some('a'), "address", true, Flag::Address),
    (Some('B'), "blocksize", true, Flag::Blocksize),
    (Some('u'), "user", true, Flag::User),
    (Some('U'), "umask", true, Flag::Umask),
    (Some('r'), "refuse", true, Flag::Refuse),
    (Some('t'), "timeout", true, Flag::Timeout),
    (Some('T'), "retransmit", true, Flag::Retransmit),
    (Some('R'), "port-range", true, Flag::PortRange),
    (Some('m'), "map-file", true, Flag::MapFile),
    (Some('P'), "pidfile", true, Flag::Pidfile),
];

/// What the flags said, before translation.
#[derive(Default)]
struct Seen {
    ipv4: bool,
    ipv6: bool,
    create: bool,
    secure: bool,
    permissive: bool,
    verbose: u32,
    version: bool,
    help: bool,
    listen: bool,
    address: Option<OsString>,
    timeout_secs: Option<u64>,
    blocksize: Option<OsString>,
    user: Option<OsString>,
    umask: Option<OsString>,
    retransmit: Option<OsString>,
    map_file: Option<OsString>,
    pidfile: Option<OsString>,
    /// `--refuse` values for uftpd, from `-r` (validated).
    refuse: Vec<&'static str>,
    port_range: Option<OsString>,
    dirs: Vec<OsString>,
}

/// What `-r NAME` means here: the options uftpd negotiates become
/// `--refuse NAME`; those of tftpd-hpa that uftpd never negotiates need
/// nothing (`None`). Names are matched without case, as tftpd-hpa does.
const REFUSABLE: &[(&str, Option<&str>)] = &[
    ("blksize", Some("blksize")),
    ("tsize", Some("tsize")),
    ("timeout", Some("timeout")),
    // Not in tftpd-hpa 5.2, but uftpd negotiates it.
    ("windowsize", Some("windowsize")),
    ("blksize2", None),
    ("utimeout", None),
    ("rollover", None),
];

/// Translates tftpd-hpa's arguments (without the program name).
pub fn translate(args: &[OsString]) -> Result<Hpa, String> {
    let mut seen = Seen::default();
    let mut i = 0;
    let mut options_done = false;
    // Each turn consumes at least one argument.
    while let Some(arg) = args.get(i) {
        i += 1;
        let bytes = arg.as_bytes();
        if options_done || bytes == b"-" || !bytes.starts_with(b"-") {
            seen.dirs.push(arg.clone());
            continue;
        }
        if bytes == b"--" {
            options_done = true;
            continue;
        }
        if let Some(long) = bytes.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (&long[..eq], Some(OsStr::from_bytes(&long[eq + 1..]))),
                None => (long, None),
            };
            let (flag, takes, full) = lookup_long(name)?;
            let value = match (takes, inline) {
                (true, Some(v)) => Some(v.to_os_string()),
                (true, None) => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("--{full} needs a value"))?;
                    i += 1;
                    Some(v.clone())
                }
                (false, Some(_)) => return Err(format!("--{full} takes no value")),
                (false, None) => None,
            };
            apply(&mut seen, flag, value)?;
            continue;
        }
        // A group of short flags; one that takes a value takes the rest.
        let group = &bytes[1..];
        for (at, &b) in group.iter().enumerate() {
            let c = char::from(b);
            let &(_, _, takes, flag) = OPTIONS
                .iter()
                .find(|o| o.0 == Some(c))
                .ok_or_else(|| unknown(&format!("-{}", show(&[b]))))?;
            if !takes {
                apply(&mut seen, flag, None)?;
                continue;
            }
            let rest = &group[at + 1..];
            let value = if rest.is_empty() {
                let v = args.get(i).ok_or_else(|| format!("-{c} needs a value"))?;
                i += 1;
                v.clone()
            } else {
                OsStr::from_bytes(rest).to_os_string()
            };
            apply(&mut seen, flag, Some(value))?;
            break;
        }
    }
    native(seen)
}

fn unknown(flag: &str) -> String {
    format!("{flag}: not a tftpd-hpa option (see uftpd --help for uftpd's own flags)")
}

/// A long name, or an unambiguous abbreviation of one.
fn lookup_long(name: &[u8]) -> Result<(Flag, bool, &'static str), String> {
    let shown = format!("--{}", show(name));
    if let Some(o) = OPTIONS.iter().find(|o| o.1.as_bytes() == name) {
        return Ok((o.3, o.2, o.1));
    }
    let mut matches = OPTIONS
        .iter()
        .filter(|o| !name.is_empty() && o.1.as_bytes().starts_with(name));
    match (matches.next(), matches.next()) {
        (Some(o), None) => Ok((o.3, o.2, o.1)),
        (Some(_), Some(_)) => Err(format!("{shown}: ambiguous (tftpd-hpa option)")),
        _ => Err(unknown(&shown)),
    }
}

fn apply(seen: &mut Seen, flag: Flag, value: Option<OsString>) -> Result<(), String> {
    let text = || value.as_deref().map(|v| v.to_string_lossy().into_owned());
    match flag {
        Flag::Ipv4 => seen.ipv4 = true,
        Flag::Ipv6 => seen.ipv6 = true,
        Flag::Create => seen.create = true,
        Flag::Secure => seen.secure = true,
        Flag::Permissive => seen.permissive = true,
        Flag::Verbose => seen.verbose = seen.verbose.saturating_add(1),
        Flag::Verbosity => {
            let v = text().unwrap_or_default();
            seen.verbose = v
                .trim()
                .parse()
                .map_err(|_| format!("--verbosity {v}: not a number"))?;
        }
        Flag::Version => seen.version = true,
        Flag::Help => seen.help = true,
        Flag::Listen => seen.listen = true,
        // -L is -l that stays in the foreground; uftpd never forks.
        Flag::Foreground => seen.listen = true,
        Flag::Address => seen.address = value,
        Flag::Blocksize => seen.blocksize = value,
        Flag::User => seen.user = value,
        Flag::Umask => seen.umask = value,
        Flag::Retransmit => seen.retransmit = value,
        Flag::MapFile => seen.map_file = value,
        Flag::Pidfile => seen.pidfile = value,
        Flag::Timeout => {
            // How long an inetd-started server waits for more requests; a
            // standalone one (-l) ignores it, as tftpd-hpa does.
            let v = text().unwrap_or_default();
            let secs = v
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("-t/--timeout {v}: not a number of seconds"))?;
            seen.timeout_secs = Some(secs);
        }
        Flag::Refuse => {
            let v = text().unwrap_or_default();
            let (_, native) = REFUSABLE
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(v.trim()))
                .ok_or_else(|| {
                    format!(
                        "-r/--refuse {v}: not an option tftpd-hpa or uftpd negotiates \
                         (blksize, tsize, timeout, windowsize, blksize2, utimeout, rollover)"
                    )
                })?;
            // uftpd never negotiates the others, so refusing them is a no-op.
            if let Some(native) = native
                && !seen.refuse.contains(native)
            {
                seen.refuse.push(native);
            }
        }
        Flag::PortRange => {
            let v = text().unwrap_or_default();
            crate::sys::net::PortRange::parse(&v).map_err(|e| format!("-R/--port-range {e}"))?;
            seen.port_range = value;
        }
    }
    Ok(())
}

/// The native command line for what the flags said.
fn native(seen: Seen) -> Result<Hpa, String> {
    let mut argv: Vec<OsString> = vec!["uftpd".into()];
    if seen.help || seen.version {
        argv.push(if seen.help { "--help" } else { "--version" }.into());
        return Ok(Hpa {
            argv,
            standalone: seen.listen,
            default_user: false,
        });
    }
    if seen.ipv4 && seen.ipv6 {
        return Err("-4 and -6 together: give neither to serve both".into());
    }
    // With -s, the one directory is the root names are relative to;
    // without it, names are absolute and must lie under one of the
    // directories (--absolute-dir each).
    let root = match (seen.secure, seen.dirs.as_slice()) {
        (true, [dir]) => Some(dir.clone()),
        (true, []) => return Err("-s/--secure needs a directory".into()),
        (true, _) => {
            return Err("-s/--secure takes one directory (uftpd serves one root)".into());
        }
        (false, []) => {
            return Err("no directory to serve: give -s DIR, or the directories \
                        absolute names may lie under"
                .into());
        }
        (false, dirs) => {
            for dir in dirs {
                if !dir.as_bytes().starts_with(b"/") {
                    return Err(format!(
                        "{}: without -s/--secure every directory must be absolute \
                         (names are matched against it)",
                        show(dir.as_bytes())
                    ));
                }
                argv.push("--absolute-dir".into());
                argv.push(dir.clone());
            }
            None
        }
    };
    if seen.listen {
        let address = seen.address.as_deref().map(|a| a.to_string_lossy());
        for addr in listen_addrs(address.as_deref().unwrap_or(""), seen.ipv4, seen.ipv6)? {
            argv.push("--listen".into());
            argv.push(addr.to_string().into());
        }
        if seen.ipv6 {
            argv.push("--ipv6-only".into());
        }
    } else {
        // Without -l the socket comes on standard input (inetd, or
        // systemd's tftp.socket), and -a is not used, as in tftpd-hpa.
        let secs = seen
            .timeout_secs
            .unwrap_or(crate::config::INETD_IDLE_EXIT_SECS);
        argv.push("--inetd".into());
        argv.push("--idle-exit-secs".into());
        argv.push(secs.to_string().into());
    }
    if seen.create {
        argv.push("--create".into());
    }
    if seen.permissive {
        argv.push("--permissive".into());
    }
    for _ in 0..seen.verbose.min(1) {
        argv.push("-v".into());
    }
    let mut pass = |flag: &str, value: Option<OsString>| {
        if let Some(v) = value {
            argv.push(flag.into());
            argv.push(v);
        }
    };
    pass("--blksize-max", seen.blocksize);
    pass("--user", seen.user.clone());
    pass("--umask", seen.umask);
    pass("--map-file", seen.map_file);
    pass("--pidfile", seen.pidfile);
    pass("--port-range", seen.port_range);
    for option in &seen.refuse {
        pass("--refuse", Some((*option).into()));
    }
    if let Some(us) = seen.retransmit {
        pass(
            "--retransmit-ms",
            Some(retransmit_ms(&us.to_string_lossy())?.into()),
        );
    }
    // The root last, after `--`, so that a directory named `-x` stays one.
    if let Some(root) = root {
        argv.push("--".into());
        argv.push(root);
    }
    Ok(Hpa {
        argv,
        standalone: seen.listen,
        default_user: seen.user.is_none(),
    })
}

/// `-T` is in microseconds; uftpd counts milliseconds, from 10 ms.
fn retransmit_ms(us: &str) -> Result<String, String> {
    let n: u64 = us
        .trim()
        .parse()
        .map_err(|_| format!("-T/--retransmit {us}: not a number of microseconds"))?;
    if n < 10_000 {
        return Err(format!(
            "-T/--retransmit {us}: uftpd's shortest retransmit timeout is 10000 µs \
             (--retransmit-ms 10)"
        ));
    }
    Ok(n.div_ceil(1000).to_string())
}

/// `-a [address][:port]` as tftpd-hpa reads it: `:69`, `69` is a host
/// name there too (so refused here), `0.0.0.0:69`, `[::]:69`, `[::1]`, an
/// address without a port (69), `localhost`. No address: both families,
/// as tftpd-hpa opens both, unless -4 or -6.
pub fn listen_addrs(text: &str, ipv4: bool, ipv6: bool) -> Result<Vec<SocketAddr>, String> {
    address_list(text, ipv4, ipv6).map_err(|why| format!("-a/--address {text}: {why}"))
}

/// [`listen_addrs`] without the flag's name in the message (native
/// `--listen` shares it).
pub fn address_list(text: &str, ipv4: bool, ipv6: bool) -> Result<Vec<SocketAddr>, String> {
    let bad = |why: &str| why.to_string();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("no ']' after an IPv6 address"))?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(bad("text after ']' that is not :PORT")),
            },
        }
    } else if text.matches(':').count() > 1 {
        (text, None) // a bare IPv6 address
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None | Some("") | Some("tftp") => TFTP_PORT,
        Some(p) => p
            .parse()
            .map_err(|_| bad("the port is not a number from 0 to 65535"))?,
    };
    // A link-local address names its interface: `fe80::1%eth0`, `%2`.
    let (host, scope) = match host.split_once('%') {
        Some((h, zone)) => (h, Some(zone)),
        None => (host, None),
    };
    let ips: Vec<IpAddr> = match host {
        "" if ipv4 => vec![Ipv4Addr::UNSPECIFIED.into()],
        "" if ipv6 => vec![Ipv6Addr::UNSPECIFIED.into()],
        "" => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
        "localhost" if ipv6 => vec![Ipv6Addr::LOCALHOST.into()],
        "localhost" => vec![Ipv4Addr::LOCALHOST.into()],
        h => match h.parse::<IpAddr>() {
            // `[::]` is dual-stack, as on most systems: IPv4 clients are
            // served too (by an IPv4 socket beside the IPv6-only one), unless
            // -6 asks for IPv6 alone.
            Ok(IpAddr::V6(ip)) if ip.is_unspecified() && !ipv6 => {
                vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()]
            }
            Ok(ip) => vec![ip],
            Err(_) => {
                return Err(bad(
                    "uftpd needs an IP address here (it resolves no host names), e.g. 0.0.0.0:69",
                ));
            }
        },
    };
    for ip in &ips {
        if (ipv4 && ip.is_ipv6()) || (ipv6 && ip.is_ipv4()) {
            return Err(bad("the address is of the other family than -4/-6 asks"));
        }
    }
    let scope_id = match (scope, ips.as_slice()) {
        (None, _) => 0,
        (Some(zone), [IpAddr::V6(ip)]) if ip.is_unicast_link_local() => scope_id(zone)?,
        (Some(_), _) => {
            return Err(bad(
                "a %INTERFACE scope belongs only to an IPv6 link-local address (fe80::/10)",
            ));
        }
    };
    Ok(ips
        .into_iter()
        .map(|ip| match ip {
            IpAddr::V6(v6) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, scope_id)),
            IpAddr::V4(_) => SocketAddr::new(ip, port),
        })
        .collect())
}

/// The interface index a `%ZONE` names: a number, or an interface name
/// looked up in the system (the only lookup this parser makes).
fn scope_id(zone: &str) -> Result<u32, String> {
    if let Ok(n) = zone.parse::<u32>()
        && n > 0
    {
        return Ok(n);
    }
    crate::sys::net::interface_index(zone)
        .map_err(|_| format!("%{zone}: no such network interface"))
}

/// Bytes of an argument for a message.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Args, PortRange};
    use clap::Parser;
    use std::path::PathBuf;

    fn hpa(line: &str) -> Result<Hpa, String> {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        translate(&args)
    }

    fn parsed(line: &str) -> (Args, Hpa) {
        let h = hpa(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let args = Args::try_parse_from(&h.argv).unwrap_or_else(|e| panic!("{line}: {e}"));
        (args, h)
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn debian_invocation() {
        let (args, h) = parsed("--listen --user tftp --address :69 --secure /srv/tftp");
        assert!(h.standalone);
        assert!(!h.default_user);
        assert_eq!(args.root, Some(PathBuf::from("/srv/tftp")));
        assert_eq!(args.listen_addrs(), addrs(&["0.0.0.0:69", "[::]:69"]));
        assert_eq!(args.user.as_deref(), Some("tftp"));
        assert!(!args.create);
        assert!(!args.permissive);
        assert_eq!(args.map_file, None);
    }

    #[test]
    fn rhel_invocation() {
        let (args, h) = parsed("-s /var/lib/tftpboot");
        // Socket-activated: no -l, so the socket comes on standard input,
        // and the server exits after 15 idle minutes.
        assert!(!h.standalone);
        assert!(h.default_user);
        assert_eq!(args.root, Some(PathBuf::from("/var/lib/tftpboot")));
        assert!(args.inetd && args.listen.is_empty());
        assert_eq!(args.idle_exit(), Some(std::time::Duration::from_secs(900)));
        assert_eq!(args.user, None);
        let (args, _) = parsed("-t 60 -a 10.0.0.1 -s /srv");
        assert!(args.inetd && args.listen.is_empty());
        assert_eq!(args.idle_exit(), Some(std::time::Duration::from_secs(60)));
        // -L is -l in the foreground; -t is then ignored, as by tftpd-hpa.
        let (args, h) = parsed("-L -t 60 -s /srv");
        assert!(h.standalone && !args.inetd);
        assert_eq!(args.idle_exit(), None);
    }

    #[test]
    fn every_flag_is_translated_or_accepted() {
        let (args, h) = parsed(
            "-lL -4 -a 127.0.0.1:6969 -c -p -u nobody -U 027 -P /run/x.pid -t 900 -T 250000 \
             -B 1468 -m /etc/map -v --verbosity 3 -s /srv",
        );
        assert!(h.standalone);
        assert_eq!(args.listen_addrs(), addrs(&["127.0.0.1:6969"]));
        assert!(args.create && args.permissive);
        assert_eq!(args.user.as_deref(), Some("nobody"));
        assert_eq!(args.umask, Some(0o027));
        assert_eq!(args.pidfile, Some(PathBuf::from("/run/x.pid")));
        assert_eq!(args.retransmit_ms, 250);
        assert_eq!(args.blksize_max, Some(1468));
        assert_eq!(args.map_file, Some(PathBuf::from("/etc/map")));
        assert_eq!(args.verbose, 1);
        // Attached values, long forms with '=', abbreviations, -- and order.
        let (args, _) = parsed("-lsc -utftp --addr=[::1]:1069 --retrans=1000000 -6 -- /srv");
        assert_eq!(args.listen_addrs(), addrs(&["[::1]:1069"]));
        assert_eq!(args.user.as_deref(), Some("tftp"));
        assert_eq!(args.retransmit_ms, 1000);
        assert!(args.create);
        let (args, _) = parsed("/srv -l --secure");
        assert_eq!(args.root, Some(PathBuf::from("/srv")));
        let (args, _) = parsed("-l -s -a 10.1.2.3 /srv");
        assert_eq!(args.listen_addrs(), addrs(&["10.1.2.3:69"]));
        let (args, _) = parsed("-l -s -6 -a :70 /srv");
        assert_eq!(args.listen_addrs(), addrs(&["[::]:70"]));
    }

    #[test]
    fn directories_without_secure_serve_absolute_names() {
        let (args, _) = parsed("-l /srv/tftp /var/lib/tftpboot");
        assert_eq!(args.root, None);
        assert_eq!(
            args.absolute_dir,
            vec![
                PathBuf::from("/srv/tftp"),
                PathBuf::from("/var/lib/tftpboot")
            ]
        );
    }

    #[test]
    fn refuse_and_port_range_are_translated() {
        let (args, _) = parsed("-l -r tsize -r BLKSIZE --refuse=tsize -R 4096:32767 -s /srv");
        assert_eq!(
            args.port_range,
            Some(PortRange {
                lo: 4096,
                hi: 32767
            })
        );
        let r = args.refused();
        assert!(r.tsize && r.blksize && !r.timeout && !r.windowsize);
        // Options uftpd never negotiates need nothing.
        let (args, h) = parsed("-l -r rollover -r utimeout -r blksize2 -s /srv");
        assert_eq!(args.refused(), crate::proto::options::Refused::NONE);
        assert!(!h.argv.iter().any(|a| a == "--refuse"));
        let (args, _) = parsed("-l --port-range=69:69 -r timeout -r windowsize -s /srv");
        assert_eq!(args.port_range, Some(PortRange { lo: 69, hi: 69 }));
        assert!(args.refused().timeout && args.refused().windowsize);
    }

    #[test]
    fn version_and_help_pass_through() {
        assert_eq!(hpa("-V").unwrap().argv, vec!["uftpd", "--version"]);
        assert_eq!(hpa("--help").unwrap().argv, vec!["uftpd", "--help"]);
    }

    /// Every refusal is one line naming what to use instead.
    #[test]
    fn unsupported_flags_are_refused_with_a_pointer() {
        for (line, says) in [
            ("-l -r mtu -s /srv", "not an option"),
            ("-l -R 4096 -s /srv", "-R/--port-range"),
            ("-l -R 9:8 -s /srv", "LO <= HI"),
            ("-l srv", "must be absolute"),
            ("-l", "no directory"),
            ("-l -s /a /b", "one root"),
            ("-l -s", "needs a directory"),
            ("-l -x -s /srv", "uftpd --help"),
            ("-l --frobnicate -s /srv", "not a tftpd-hpa option"),
            ("-l -s /srv -a", "needs a value"),
            ("-l --listen=yes -s /srv", "takes no value"),
            ("-l -4 -6 -s /srv", "neither"),
            ("-l -T 500 -s /srv", "--retransmit-ms 10"),
            ("-l -a tftp.example:69 -s /srv", "IP address"),
            ("-l -4 -a [::1]:69 -s /srv", "other family"),
            ("-l -a 1.2.3.4:99999 -s /srv", "port"),
            ("-l -t soon -s /srv", "seconds"),
            ("-l --ver -s /srv", "ambiguous"),
        ] {
            let e = hpa(line)
                .err()
                .unwrap_or_else(|| panic!("{line} was accepted"));
            assert!(e.contains(says), "{line}: {e}");
            assert!(!e.contains('\n'), "{line}: {e}");
        }
    }

    #[test]
    fn addresses_as_operators_write_them() {
        assert_eq!(
            listen_addrs("", false, false).unwrap(),
            addrs(&["0.0.0.0:69", "[::]:69"])
        );
        assert_eq!(
            listen_addrs(":69", true, false).unwrap(),
            addrs(&["0.0.0.0:69"])
        );
        assert_eq!(
            listen_addrs("localhost:1069", false, false).unwrap(),
            addrs(&["127.0.0.1:1069"])
        );
        // Dual-stack, unless -6.
        assert_eq!(
            listen_addrs("[::]", false, false).unwrap(),
            addrs(&["0.0.0.0:69", "[::]:69"])
        );
        assert_eq!(
            listen_addrs("[::]:70", false, true).unwrap(),
            addrs(&["[::]:70"])
        );
        assert!(listen_addrs("[::]", true, false).is_err());
        assert_eq!(
            listen_addrs("::1", false, false).unwrap(),
            addrs(&["[::1]:69"])
        );
        assert_eq!(
            listen_addrs("0.0.0.0:tftp", false, false).unwrap(),
            addrs(&["0.0.0.0:69"])
        );
        // Link-local, with the interface as a number or a name (lo is 1
        // in every network namespace).
        assert_eq!(
            listen_addrs("[fe80::1%1]:70", false, false).unwrap(),
            vec![SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                70,
                0,
                1
            ))]
        );
        assert_eq!(
            listen_addrs("fe80::1%lo", false, false).unwrap(),
            listen_addrs("[fe80::1%1]:69", false, false).unwrap()
        );
        assert!(listen_addrs("[fe80::1%nosuch0]:69", false, false).is_err());
        assert!(listen_addrs("[::1%1]:69", false, false).is_err());
        assert!(listen_addrs("127.0.0.1%1", false, false).is_err());
        assert!(listen_addrs("[::1", false, false).is_err());
        assert!(listen_addrs("[::1]x", false, false).is_err());
    }
}
