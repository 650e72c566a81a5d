#!/usr/bin/env bash
# A/B of two uftpd binaries, side by side in one run, on loopback:
#   bash bench/ab.sh BEFORE_BINARY AFTER_BINARY [REPS]
# Build a "before" binary with e.g.
#   git worktree add /tmp/before HEAD~1 &&
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release)
# Per repetition and binary: one 32 MiB lock-step download (curl, blksize
# 1468) and 50 concurrent 1 MiB downloads; prints client wall time and the
# server's CPU (utime+stime clock ticks from /proc/PID/stat). Bytes are
# compared; a mismatch aborts.
set -euo pipefail
before=${1:?before binary}; after=${2:?after binary}; reps=${3:-4}
work=$(mktemp -d /dev/shm/uftpd-ab.XXXXXX)
declare -A port pid
cleanup() { for p in "${pid[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/root"
head -c 33554432 /dev/urandom > "$work/root/f32.bin"
head -c 1048576 /dev/urandom > "$work/root/f1.bin"
start() {
    "$2" --listen 127.0.0.1:0 --cores 2 "$work/root" 2> "$work/$1.log" &
    pid[$1]=$!
    for _ in $(seq 100); do grep -q listening "$work/$1.log" && break; sleep 0.05; done
    port[$1]=$(grep -o '127.0.0.1:[0-9]*' "$work/$1.log" | head -1 | cut -d: -f2)
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
start before "$before"
start after "$after"
for rep in $(seq "$reps"); do
    for who in before after; do
        c0=$(cpu "${pid[$who]}"); t0=$EPOCHREALTIME
        timeout 60 curl -s --tftp-blksize 1468 "tftp://127.0.0.1:${port[$who]}/f32.bin" -o "$work/out"
        t1=$EPOCHREALTIME; c1=$(cpu "${pid[$who]}")
        cmp -s "$work/out" "$work/root/f32.bin" || { echo "MISMATCH ($who)"; exit 1; }
        clients=()
        for i in $(seq 50); do
            timeout 60 curl -s --tftp-blksize 1468 "tftp://127.0.0.1:${port[$who]}/f1.bin" -o "$work/o$i" &
            clients+=($!)
        done
        wait "${clients[@]}"
        t2=$EPOCHREALTIME; c2=$(cpu "${pid[$who]}")
        for i in $(seq 50); do cmp -s "$work/o$i" "$work/root/f1.bin" || { echo "MISMATCH ($who)"; exit 1; }; done
        printf '%s rep %d: lockstep 32 MiB wall %.3f s cpu %d ticks | 50 x 1 MiB wall %.3f s cpu %d ticks\n' \
            "$who" "$rep" "$(echo "$t1 - $t0" | bc)" $((c1 - c0)) "$(echo "$t2 - $t1" | bc)" $((c2 - c1))
    done
done
