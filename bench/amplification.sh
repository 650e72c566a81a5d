#!/usr/bin/env bash
# Amplification to spoofed sources, uftpd beside tftpd-hpa in one run:
#   bash bench/amplification.sh
# Both servers serve the same root on 127.0.0.1 (uftpd --cores 1 at its
# defaults, in.tftpd -L at its defaults). For each, 20 sockets that never
# answer send an option-less RRQ (the classic reflection) once, then ten
# times a second apart, then an RRQ with blksize and tsize (an OACK); every
# byte the server sends back within its whole hold is counted by
# bench/amplify.py. tftpd-hpa retries for about 63 s, so a run takes about
# 4 minutes. Appends a section to bench/RESULTS.md.
# Needs: python3; tftpd-hpa is unpacked (apt-get download + dpkg -x, no
# daemon started) with its libwrap0 dependency installed.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${RESULTS:-bench/RESULTS.md}
work=$(mktemp -d /tmp/uftpd-amp.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

hpa=${HPA_BIN:-}
if [ -z "$hpa" ]; then
    if [ -x /usr/sbin/in.tftpd ]; then
        hpa=/usr/sbin/in.tftpd
    else
        (cd "$work" && apt-get download -q tftpd-hpa >/dev/null 2>&1 && dpkg -x tftpd-hpa_*.deb hpa)
        dpkg -s libwrap0 >/dev/null 2>&1 || apt-get install -y -q libwrap0 >/dev/null
        hpa=$work/hpa/usr/sbin/in.tftpd
    fi
fi
cargo build --release -q
mkdir -p "$work/root"
head -c 100000 /dev/urandom > "$work/root/pxelinux.0"
chmod -R a+rX "$work/root"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(free_port); hp=$(free_port)
target/release/uftpd --listen "127.0.0.1:$up" --cores 1 "$work/root" 2> "$work/uftpd.log" &
pids+=($!)
"$hpa" -L -s -u nobody -a "127.0.0.1:$hp" "$work/root" &
pids+=($!)
sleep 0.5

run() { # server port listen_s repeats opts
    python3 bench/amplify.py "127.0.0.1:$2" pxelinux.0 --peers 20 --listen "$3" --repeats "$4" ${5:+--opts "$5"}
}
declare -A r
for server in uftpd hpa; do
    if [ "$server" = uftpd ]; then p=$up; hold=18; else p=$hp; hold=70; fi
    r[$server,once]=$(run $server "$p" "$hold" 1 "")
    r[$server,ten]=$(run $server "$p" "$hold" 10 "")
    r[$server,oack]=$(run $server "$p" "$hold" 1 "blksize=1468,tsize=0")
done
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
row() { # label key
    local u=${r[uftpd,$2]} h=${r[hpa,$2]}
    printf '| %s | %s B -> %s B in %s datagrams (**%sx**) | %s B -> %s B in %s datagrams (**%sx**) |\n' "$1" \
        "$(field "$u" request_bytes)" "$(field "$u" reply_bytes)" "$(field "$u" replies)" "$(field "$u" factor)" \
        "$(field "$h" request_bytes)" "$(field "$h" reply_bytes)" "$(field "$h" replies)" "$(field "$h" factor)"
}
{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): amplification to peers that never answer"
    echo
    echo "- command: \`bash bench/amplification.sh\` at $(git rev-parse --short HEAD)"
    echo "- machine: nproc $(nproc), kernel $(uname -r)"
    echo "- uftpd: \`uftpd --listen 127.0.0.1:PORT --cores 1 ROOT\` (defaults); tftpd-hpa: \`$("$hpa" -V 2>&1 | head -1 | cut -d, -f1)\`, \`in.tftpd -L -s -u nobody -a 127.0.0.1:PORT ROOT\` (defaults)"
    echo "- method: 20 sockets on 127.0.0.1 that never answer request a 100,000-byte file; every byte sent back within the hold (uftpd 18 s, tftpd-hpa 70 s) is counted (bench/amplify.py). Factor = reply bytes / request bytes."
    echo
    echo "| requests | uftpd | tftpd-hpa |"
    echo "|---|---|---|"
    row "RRQ, no options, once" once
    row "RRQ, no options, 10 times 1 s apart" ten
    row "RRQ blksize 1468 tsize 0, once" oack
} | tee -a "$results"
