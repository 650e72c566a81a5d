complete -c uftpd -l absolute-dir -d 'Instead of ROOT: serve absolute names under DIR, a request for DIR/x being x in DIR (tftpd-hpa without -s); repeat for several directories, tried in order. Relative names are refused' -r -F
complete -c uftpd -l generate-man -d 'Write the man page (uftpd.8) into DIR and exit (for packaging)' -r -F
complete -c uftpd -l generate-completions -d 'Print the completion script for SHELL (bash, zsh, fish, elvish, powershell) and exit (for packaging)' -r -f -a "bash\t''
elvish\t''
fish\t''
powershell\t''
zsh\t''"
complete -c uftpd -l compat -d 'Read the rest of the command line as tftpd-hpa\'s (`in.tftpd`\'s); must come first. Invoking uftpd as `in.tftpd` does the same' -r -f -a "hpa\t'tftpd-hpa 5.2\'s `in.tftpd`'"
complete -c uftpd -l cores -d 'Shards (threads, one io_uring each) [default: online CPUs but one, at least 1]. More shards than CPUs share them, with a warning' -r
complete -c uftpd -l listen -d 'Address to serve on; repeat for several. `ADDR:PORT`, `[IPV6]:PORT`, an address alone (port 69), `:PORT` or `PORT` alone (0.0.0.0 and [::]), `localhost[:PORT]` (127.0.0.1). Port 0 picks a free port. `[::]` is dual-stack: it serves IPv4 clients too (0.0.0.0 beside an IPv6-only [::]); any other IPv6 address serves IPv6 only. A link-local address names its interface: `[fe80::1%eth0]:69`. Not with socket activation (LISTEN_FDS), which uses systemd\'s sockets. [default: 0.0.0.0:69 and [::]:69]' -r
complete -c uftpd -l idle-exit-secs -d 'Exit after this many seconds with no transfer running and no request received, so that inetd or systemd start uftpd again on the next request (tftpd-hpa\'s -t). 0 never exits. [default: 900 with --inetd, else 0]' -r
complete -c uftpd -l upload-dir -d 'Accept uploads only under this directory of the root (e.g. `incoming`); other WRQs get ERROR 2' -r -F
complete -c uftpd -l map-file -d 'Rewrite or refuse requested names with tftpd-hpa\'s remap rules (its `-m` file; docs/remap.md), read once at start. A file with an error stops the start, with a line per problem' -r -F
complete -c uftpd -l map-test -d 'Print what each name read from standard input maps to under the map FILE (with --lowercase and --strip-trailing-garbage applied first, if given), one line each, then exit; no ROOT needed (docs/remap.md)' -r -F
complete -c uftpd -l user -d 'Once serving (sockets bound, rings and buffers registered, limits raised, the pid file written), switch to this user, its group and its supplementary groups for good, with no capabilities left. Needs root (or already being that user)' -r
complete -c uftpd -l umask -d 'File-creation mask for uploads, in octal (new files are 0644 before it) [default: inherited]' -r
complete -c uftpd -l pidfile -d 'Write the process id to this file once serving; removed at exit (when still permitted after --user)' -r -F
complete -c uftpd -l blksize-max -d 'Largest blksize granted (RFC 2348), on every interface. Without it the cap is the MTU of the interface each request came in on minus 32 (IPv4) / 52 (IPv6), so that no DATA is fragmented (many PXE ROMs cannot reassemble fragments), at most 65464. [default: 65464, capped to each interface\'s MTU − 32 / − 52]' -r
complete -c uftpd -l windowsize-max -d 'Largest windowsize granted (RFC 7440), at most 32768 (16-bit block numbers cannot tell a larger window\'s ACKs apart)' -r
complete -c uftpd -l refuse -d 'Never negotiate this option (blksize, tsize, timeout, windowsize): requests that carry it are served as if it were not there (tftpd-hpa\'s -r), for clients that mishandle it. Repeat for several' -r -f -a "blksize\t'RFC 2348: clients then get 512-byte blocks'
tsize\t'RFC 2349: no size is announced, and an upload\'s size is not checked before it starts (--max-upload-bytes still applies as bytes arrive)'
timeout\t'RFC 2349: the server keeps --retransmit-ms'
windowsize\t'RFC 7440: one block per ACK'"
complete -c uftpd -l port-range -d 'Bind transfer sockets to ports from LO to HI (for a firewall that opens a fixed range); each port is tried at most once per request, and when none is free the request gets ERROR 0 "No free transfer port". Keep it above 1023 with --user. [default: the kernel\'s ephemeral ports, net.ipv4.ip_local_port_range]' -r
complete -c uftpd -l retransmit-ms -d 'First retransmit timeout in milliseconds; doubles on each retry (a client\'s `timeout` option replaces it, without doubling)' -r
complete -c uftpd -l retries -d 'Retransmits in a row before a transfer is abandoned. A peer that has never answered gets its first reply resent only once' -r
complete -c uftpd -l max-sessions -d 'Concurrent transfers, all shards together (lowered at start, with a warning, if RLIMIT_NOFILE or RLIMIT_MEMLOCK cannot hold them)' -r
complete -c uftpd -l max-sessions-per-client -d 'Concurrent transfers from one client address, per shard (a NAT or a relay in front of a farm is one address) [default: no limit but --max-sessions]' -r
complete -c uftpd -l max-unverified-per-client -d 'Transfers from one client address whose client has not answered yet, per shard: what a spoofed source can hold (a client that answers is not limited by it)' -r
complete -c uftpd -l client-rate -d 'New transfers one client address (an IPv6 /64) may start per second, after a burst of --client-burst; over it, requests get no answer (the client retries: an ERROR would end a ROM\'s boot)' -r
complete -c uftpd -l client-burst -d 'New transfers one client address may start at once, before --client-rate applies (a PXE client\'s lookups, a NAT\'s storm)' -r
complete -c uftpd -l unverified-client-bytes-per-s -d 'Bytes per second that may go to one client address before it has answered (first replies and their one resend; 4 seconds\' worth at once), per shard. Bounds what a spoofed request can reflect' -r
complete -c uftpd -l unverified-bytes-per-s -d 'Bytes per second that may go to clients that have not answered, all of them together, all shards together (2 seconds\' worth at once)' -r
complete -c uftpd -l max-upload-bytes -d 'Largest upload accepted (a bigger tsize gets ERROR 3); bytes, or with a unit: 512K, 64M, 4G' -r
complete -c uftpd -l max-netascii-bytes -d 'Largest file served in netascii mode (it is converted in memory); bytes, or with a unit' -r
complete -c uftpd -l max-netascii-total-bytes -d 'Memory all netascii conversions held at once may use (each file version is converted once and shared); over it, a netascii request gets "Server busy". Bytes, or with a unit' -r
complete -c uftpd -l dally-ms -d 'How long a finished upload keeps re-ACKing a repeated last block, in milliseconds: several of a client\'s retransmit timeouts (curl and atftp resend every 5-6 s), so a lost final ACK and a lost re-ACK do not fail a client whose file is stored' -r
complete -c uftpd -l grace-ms -d 'On SIGINT/SIGTERM, how long running transfers may finish, in milliseconds' -r
complete -c uftpd -l log-format -d 'Log lines as text or as one JSON object per line (README "Logs")' -r -f -a "text\t'One line of text per event (documented in README "Logs")'
json\t'One JSON object per line (fields documented in README "Logs")'"
complete -c uftpd -l log-queue-records -d 'Log records waiting for the logging thread, at most; beyond it the shards drop records (counted as log_events_dropped) rather than wait' -r
complete -c uftpd -l stats -d 'Where the stats endpoint listens: eAS0 sessions (uftpd-stat) and HTTP (/metrics, /stats.json, the status page /) on one TCP port. Anything but a loopback address needs --stats-secret-file. [default: 127.0.0.1:6969]' -r
complete -c uftpd -l stats-secret-file -d 'The shared secret eAS0 clients must prove they know (HMAC-SHA256 challenge-response; the secret never crosses the network). The file holds it on its first line; it must not be readable by others' -r -F
complete -c uftpd -l stats-allow -d 'Networks whose HTTP clients may read /metrics, /stats.json and the status page (loopback always may); repeat for several' -r
complete -c uftpd -l stats-connections-max -d 'Stats connections open at once; more are closed at once' -r
complete -c uftpd -l stats-idle-ms -d 'How long a stats connection may stay silent, or leave our writes unread, before it is closed, in milliseconds' -r
complete -c uftpd -l pin -d 'Pin shard N to CPU N (round-robin). Off by default: measured on CPUs shared with clients and other work, the scheduler placing the shards did better in every scenario (tuning.md, "Cores and shards")'
complete -c uftpd -l no-gso -d 'Send each DATA block as its own datagram instead of a window per `sendmsg` with UDP segmentation offload (GSO). For paths that mishandle GSO; uftpd already falls back per transfer when the kernel refuses a GSO send'
complete -c uftpd -l stray-errors -d 'Leave transfer sockets unconnected, so that a packet from another port gets ERROR 5 "Unknown transfer ID" (RFC 1350 section 4). By default each transfer socket is connected to its client, as tftpd-hpa and atftpd do: the kernel caches the route instead of looking one up per datagram (measured 0.83x the CPU per GiB on S1, bench/RESULTS.md), and a stray gets an ICMP port unreachable'
complete -c uftpd -l ipv6-only -d 'Serve IPv6 clients only: `[::]`, `:PORT` and the default listen open no IPv4 socket (tftpd-hpa\'s -6). An IPv4 --listen address is then an error'
complete -c uftpd -l takeover -d 'Start beside a uftpd that is serving the same addresses (they share the ports through SO_REUSEPORT), for a restart without a gap: start the new one with --takeover, then SIGTERM the old one, which stops taking requests at once and drains. Without it a busy port is refused'
complete -c uftpd -l inetd -d 'Serve the UDP socket on standard input, as inetd (`wait` mode) and systemd\'s `StandardInput=socket` pass it (tftpd-hpa without -l). When standard error is that socket too, logs go to syslog instead. Sockets systemd passes in LISTEN_FDS, if any, are taken instead'
complete -c uftpd -l create -d 'Allow WRQ uploads to create new files; an existing file is replaced only if it is world-writable (tftpd-hpa\'s rule). Without it every WRQ gets ERROR 2'
complete -c uftpd -l overwrite -d 'Let uploads replace any existing regular file, which keeps its mode (and owner, when running as root). Implies --create'
complete -c uftpd -l allow-root-uploads -d 'Accept uploads (--create, --overwrite) while running as root. Without it uftpd refuses to start with uploads enabled as root unless --user drops privileges: every client could write files owned by root'
complete -c uftpd -l permissive -d 'Also serve files that others may not read (no o+r bit). Without it such a file gets ERROR 2, as tftpd-hpa does without -p: a file someone made private is not published by accident'
complete -c uftpd -l lowercase -d 'Lower-case ASCII letters in requested names before anything else looks at them (dnsmasq\'s --tftp-lowercase), for ROMs that shout'
complete -c uftpd -l per-client-root -d 'Serve each client from ROOT/ADDRESS/ (`10.0.0.7`, `fe80::1`) when that directory exists, else from ROOT (dnsmasq\'s --tftp-unique-root): per-machine configurations without remap rules. Applies after remapping, to downloads only. Not isolation: a client without a directory of its own reads all of ROOT'
complete -c uftpd -l strip-trailing-garbage -d 'Drop trailing NUL bytes and trailing bytes that are not UTF-8 from requested names (0xFF padding some boot ROMs send). Leave it off for names in 8-bit encodings such as Latin-1'
complete -c uftpd -s v -l verbose -d 'Log more: -v adds each request as it arrives and UEFI size probes (debug). By default every finished transfer and every refusal is logged (info)'
complete -c uftpd -s q -l quiet -d 'Log only warnings and errors (no line per transfer)'
complete -c uftpd -l syslog -d 'Also send every log line to the local syslog (/dev/log, facility daemon)'
complete -c uftpd -l no-stats -d 'No stats endpoint'
complete -c uftpd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c uftpd -s V -l version -d 'Print version'
