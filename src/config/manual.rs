//! `uftpd.8` and the shell completions, generated from the clap
//! definitions so that neither can drift from `--help`
//! (`uftpd --generate-man DIR`, `uftpd --generate-completions SHELL`).
//! dist/ holds the generated copies; tests/manual.rs fails when they are
//! stale.

use clap::CommandFactory;
use clap_mangen::roff::{Roff, bold, roman};

use super::Args;

/// The man page's file name (section 8: a system daemon).
pub const MAN_FILE: &str = "uftpd.8";

const DESCRIPTION: &str = "\
uftpd serves files under ROOT over TFTP (RFC 1350, with option negotiation: \
RFC 2347 blksize, tsize, timeout and RFC 7440 windowsize), for PXE and \
netboot farms. Each CPU runs one shard: a pinned thread with its own \
io_uring and its own SO_REUSEPORT socket on the service port; every \
transfer gets its own socket.

Nothing outside ROOT is ever read or written: every open goes through \
openat2(2) with RESOLVE_BENEATH. Uploads (--create) are written to an \
unnamed temporary file and linked into place only once complete.

Invoked as in.tftpd (a symlink), or with --compat hpa as its first \
argument, uftpd reads tftpd-hpa's command line instead; see TFTPD-HPA \
COMMAND LINE below.";

const USAGE: &str = "\
uftpd [OPTIONS] ROOT
uftpd [OPTIONS] --absolute-dir DIR...
uftpd --map-test FILE
in.tftpd [tftpd-hpa options] -s DIR
in.tftpd [tftpd-hpa options] DIR...";

/// Sections after OPTIONS: (heading, paragraphs). Plain text; the roff
/// crate escapes it.
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "TFTPD-HPA COMMAND LINE",
        &[
            "As in.tftpd, or after --compat hpa, uftpd accepts tftpd-hpa 5.2's flags: \
             -l, -L, -a [ADDR][:PORT], -4, -6, -s DIR, -c, -u USER, -U UMASK, -p, \
             -P FILE, -t, -T USEC, -B SIZE, -r OPTION, -R LO:HI, -m FILE, -v, \
             --verbosity N, -V. Each is translated to the uftpd flag of the same \
             meaning or refused with one line naming what to use instead; none is \
             silently ignored. Started as root without -u, uftpd runs as nobody, as \
             tftpd-hpa does.",
            "Debian's in.tftpd --listen --user tftp --address :69 --secure /srv/tftp \
             runs unchanged. Without -l (or -L) the socket comes on standard input \
             (--inetd), as inetd and RHEL's tftp.socket pass it, and uftpd exits after \
             -t seconds (900) without a request; so RHEL's in.tftpd -s \
             /var/lib/tftpboot runs unchanged too. Without -s the directories become \
             --absolute-dir: names must be absolute and lie under one of them.",
        ],
    ),
    (
        "SOCKET ACTIVATION",
        &[
            "Started by systemd with LISTEN_FDS and LISTEN_PID set (a .socket unit \
             with ListenDatagram=), uftpd serves the UDP sockets it is given instead \
             of binding --listen addresses; see the README's Running under systemd. \
             With --inetd (inetd's wait mode, systemd's StandardInput=socket) it \
             serves the socket on standard input, and --idle-exit-secs ends it once \
             nothing has happened for that long.",
        ],
    ),
    (
        "SIGNALS",
        &[
            "SIGINT and SIGTERM stop new requests at once and let running transfers \
             finish within --grace-ms; a second one ends them. SIGUSR1 logs the \
             counters. SIGHUP re-reads --map-file (a file that no longer parses \
             leaves the rules in force); other settings are read at start. \
             SIGHUP and SIGUSR2 never stop the server.",
        ],
    ),
    (
        "EXIT STATUS",
        &[
            "0 after a clean shutdown; 2 for a bad command line or configuration \
             (one line on standard error); 1 for any other failure to start or run.",
        ],
    ),
    (
        "FILES",
        &[
            "/lib/systemd/system/uftpd.service, /lib/systemd/system/uftpd.socket: \
             the systemd units shipped with uftpd.",
        ],
    ),
    (
        "SEE ALSO",
        &[
            "in.tftpd(8), systemd.socket(5), setcap(8); README.md and tuning.md in the uftpd sources",
        ],
    ),
];

/// The clap command as the man page presents it.
fn command() -> clap::Command {
    Args::command()
        .long_about(DESCRIPTION)
        .override_usage(USAGE)
}

/// The whole man page, in roff.
pub fn man_page() -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(command())
        .section("8")
        .manual("System Administration");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::default();
    for (heading, paragraphs) in SECTIONS {
        roff.control("SH", [*heading]);
        for (i, text) in paragraphs.iter().enumerate() {
            if i > 0 {
                roff.control("PP", []);
            }
            roff.text([roman(*text)]);
        }
    }
    roff.control("SH", ["VERSION"]);
    roff.text([bold(format!("uftpd {}", env!("CARGO_PKG_VERSION")))]);
    roff.to_writer(&mut out)?;
    Ok(out)
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Args::command(), "uftpd", &mut out);
    out
}
