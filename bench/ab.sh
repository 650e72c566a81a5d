#!/usr/bin/env bash
# A/B of two uftpd binaries, side by side in one run, on loopback:
#   bash bench/ab.sh BEFORE_BINARY AFTER_BINARY [REPS]
# Build a "before" binary with e.g.
#   git worktree add /tmp/before HEAD~1 &&
#   (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release)
# Both servers run at once (--cores 2). Per repetition, each binary in turn
# (the order alternates between repetitions):
#   lockstep  one 32 MiB download, curl, blksize 1468 (one ACK per block)
#   window    one 32 MiB download, atftp, blksize 1468, windowsize 16
#   fifty     50 concurrent 1 MiB downloads, curl, blksize 1468
# It prints each run's client wall time and the server's CPU (the sum over
# its threads of /proc/PID/task/*/schedstat, time on CPU in ns: the 10 ms
# ticks of /proc/PID/stat are too coarse for a 0.4 s run), then per scenario the
# medians, server CPU in ms per GiB served, and the after/before ratio
# (< 1: the after binary is cheaper). Bytes are compared; a mismatch aborts.
set -euo pipefail
before=${1:?before binary}; after=${2:?after binary}; reps=${3:-5}
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
    # The service port, from "listening on ...": other lines (a stats port
    # that was taken) name addresses too.
    port[$1]=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$work/$1.log" | head -1 | cut -d: -f2)
}
cpu() { cat /proc/"$1"/task/*/schedstat | awk '{ns += $1} END {printf "%d", ns / 1000000}'; }
start before "$before"
start after "$after"
results="$work/results"
: > "$results"
run() { # who scenario
    local who=$1 p=${port[$1]} c0 c1 t0 t1 bytes
    c0=$(cpu "${pid[$who]}"); t0=$EPOCHREALTIME
    case $2 in
    lockstep)
        timeout 120 curl -s --tftp-blksize 1468 "tftp://127.0.0.1:$p/f32.bin" -o "$work/out.$who"
        cmp -s "$work/out.$who" "$work/root/f32.bin" || { echo "MISMATCH ($who $2)"; exit 1; }
        bytes=33554432 ;;
    window)
        timeout 120 atftp --option "blksize 1468" --option "windowsize 16" \
            -g -r f32.bin -l "$work/out.$who" 127.0.0.1 "$p" >/dev/null 2>&1
        cmp -s "$work/out.$who" "$work/root/f32.bin" || { echo "MISMATCH ($who $2)"; exit 1; }
        bytes=33554432 ;;
    fifty)
        local clients=()
        for i in $(seq 50); do
            timeout 120 curl -s --tftp-blksize 1468 "tftp://127.0.0.1:$p/f1.bin" -o "$work/o$who$i" &
            clients+=($!)
        done
        wait "${clients[@]}"
        for i in $(seq 50); do cmp -s "$work/o$who$i" "$work/root/f1.bin" || { echo "MISMATCH ($who $2)"; exit 1; }; done
        bytes=$((50 * 1048576)) ;;
    esac
    t1=$EPOCHREALTIME; c1=$(cpu "${pid[$who]}")
    local wall ms
    wall=$(echo "$t1 - $t0" | bc)
    ms=$(( c1 - c0 ))
    printf '%-8s %-6s wall %.3f s  server cpu %5d ms  %.0f ms/GiB\n' "$2" "$who" "$wall" "$ms" \
        "$(echo "$ms * 1073741824 / $bytes" | bc -l)"
    echo "$2 $who $wall $(echo "$ms * 1073741824 / $bytes" | bc -l)" >> "$results"
}
for rep in $(seq "$reps"); do
    for scenario in lockstep window fifty; do
        if (( rep % 2 )); then order="before after"; else order="after before"; fi
        for who in $order; do run "$who" "$scenario"; done
    done
done
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
echo "medians of $reps repetitions (ratio after/before; < 1 means the after binary is cheaper or faster)"
for scenario in lockstep window fifty; do
    bw=$(awk -v s=$scenario '$1==s && $2=="before" {print $3}' "$results" | median)
    aw=$(awk -v s=$scenario '$1==s && $2=="after" {print $3}' "$results" | median)
    bc_=$(awk -v s=$scenario '$1==s && $2=="before" {print $4}' "$results" | median)
    ac=$(awk -v s=$scenario '$1==s && $2=="after" {print $4}' "$results" | median)
    printf '%-8s wall %.3f -> %.3f s (%.2f)   server CPU %.0f -> %.0f ms/GiB (%.2f)\n' \
        "$scenario" "$bw" "$aw" "$(echo "$aw / $bw" | bc -l)" "$bc_" "$ac" "$(echo "$ac / $bc_" | bc -l)"
done
