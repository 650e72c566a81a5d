#!/usr/bin/env bash
# bench/compare.sh: uftpd vs tftpd-hpa, side by side in one run, on loopback.
#
# Both servers run at the same time on 127.0.0.1; every scenario is run
# against each of them in turn (the order alternates from one repetition to
# the next), REPS times, and the medians and their RATIOS are reported, so
# the noise of a small shared machine hits both servers alike.
#
# Server CPU time: each server is started inside its own cgroup (v2) and the
# cgroup's cpu.stat usage_usec is read before and after every trial. That
# counts every thread and every process of the server's tree, including
# tftpd-hpa's per-transfer children. (Reading cutime/cstime of in.tftpd does
# NOT work: it sets SIGCHLD to SIG_IGN, its children are reaped by the kernel
# and their CPU time is never added to the parent.) Without a writable
# cgroup v2 the script falls back to /proc/PID/stat (utime+stime+cutime+
# cstime), which is right for uftpd (one process) but undercounts tftpd-hpa,
# whose CPU is then reported as n/a.
#
# Writes a dated section to bench/RESULTS.md. Run as root:  bash bench/compare.sh
# Knobs (environment): REPS (5), CLIENTS (50), BUDGET_S (240: no new trial
# starts after that many seconds of measuring), UFTPD_BIN (skip cargo build),
# RESULTS (output file).
set -uo pipefail

REPS=${REPS:-5}
CLIENTS=${CLIENTS:-50}
BUDGET_S=${BUDGET_S:-240}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RESULTS=${RESULTS:-$HERE/RESULTS.md}
CLIENT_TIMEOUT=90          # seconds, per client process

log() { printf '[compare %5.1fs] %s\n' "$(awk -v a="$EPOCHREALTIME" -v b="${START_TS:-$EPOCHREALTIME}" 'BEGIN{print a-b}')" "$*" >&2; }
START_TS=$EPOCHREALTIME

# ---------------------------------------------------------------- cleanup
WORK=""
UFTPD_PID=""
HPA_PID=""
CG_UFTPD=""
CG_HPA=""
CLIENT_PIDS=()
FAILED=0

kill_wait() { # pid [seconds]: TERM, bounded wait, then KILL
    local pid=$1 secs=${2:-5} i
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${CLIENT_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if [ "$FAILED" = 1 ] || [ "$rc" != 0 ]; then
        for f in uftpd.log hpa.log; do
            [ -n "$WORK" ] && [ -s "$WORK/$f" ] && { echo "---- last lines of $f ----" >&2; tail -n 20 "$WORK/$f" >&2; }
        done
    fi
    kill_wait "$UFTPD_PID" 5
    kill_wait "$HPA_PID" 5
    # tftpd-hpa transfer children left over (only processes this script started)
    if [ -n "$CG_HPA" ] && [ -r "$CG_HPA/cgroup.procs" ]; then
        while read -r p; do kill -KILL "$p" 2>/dev/null || true; done <"$CG_HPA/cgroup.procs"
    fi
    for cg in "$CG_UFTPD" "$CG_HPA"; do
        [ -n "$cg" ] && [ -d "$cg" ] && { for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$cg" 2>/dev/null && break; sleep 0.2; done; }
    done
    [ -n "$WORK" ] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { FAILED=1; echo "compare.sh: FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- setup
[ "$(id -u)" = 0 ] || echo "compare.sh: warning: not root; installs and cgroups may fail" >&2

need_install=0
for c in in.tftpd tftp atftp curl; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || need_install=1
done
if [ "$need_install" = 1 ]; then
    log "installing tftpd-hpa tftp-hpa atftp curl"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update"
    apt-get install -y -qq tftpd-hpa tftp-hpa atftp curl >/dev/null || die "apt-get install"
fi
IN_TFTPD=$(command -v in.tftpd || echo /usr/sbin/in.tftpd)

# The package's own daemon (port 69) is not used; stop it if it runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet tftpd-hpa 2>/dev/null; then
    log "stopping the tftpd-hpa service"
    systemctl stop tftpd-hpa || true
fi
if [ -r /run/tftpd-hpa.pid ]; then
    p=$(cat /run/tftpd-hpa.pid 2>/dev/null)
    if [ -n "$p" ] && grep -qx in.tftpd "/proc/$p/comm" 2>/dev/null; then
        log "stopping the tftpd-hpa daemon (pid $p)"
        service tftpd-hpa stop >/dev/null 2>&1 || kill "$p" 2>/dev/null || true
    fi
fi

if [ -n "${UFTPD_BIN:-}" ]; then
    UFTPD=$UFTPD_BIN
else
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install a Rust toolchain, or set UFTPD_BIN)"
    log "cargo build --release"
    (cd "$REPO" && cargo build --release --quiet) || die "cargo build"
    UFTPD=$REPO/target/release/uftpd
fi
[ -x "$UFTPD" ] || die "no uftpd binary at $UFTPD"

if [ -d /dev/shm ] && [ -w /dev/shm ]; then base=/dev/shm; else base=${TMPDIR:-/tmp}; fi
WORK=$(mktemp -d "$base/uftpd-bench.XXXXXX") || die "mktemp"
ROOT=$WORK/root
OUT=$WORK/out
mkdir -p "$ROOT" "$OUT"
chmod 755 "$WORK" "$ROOT"

declare -A FILE_SIZE FILE_SHA
mkfile() { # name MiB
    head -c $(($2 * 1048576)) /dev/urandom >"$ROOT/$1" || die "creating $1"
    chmod 644 "$ROOT/$1"
    FILE_SIZE[$1]=$(($2 * 1048576))
    FILE_SHA[$1]=$(sha256sum "$ROOT/$1" | cut -d' ' -f1)
}
log "creating test files in $ROOT"
mkfile small.bin 1
mkfile mid.bin 16
mkfile big.bin 64

# ---------------------------------------------------------------- cgroups
CPU_METHOD=proc
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
if [ -n "$CG2" ] && mkdir "$CG2/uftpd-bench-$$-uftpd" 2>/dev/null; then
    CG_UFTPD=$CG2/uftpd-bench-$$-uftpd
    if mkdir "$CG2/uftpd-bench-$$-hpa" 2>/dev/null && [ -r "$CG_UFTPD/cpu.stat" ]; then
        CG_HPA=$CG2/uftpd-bench-$$-hpa
        CPU_METHOD=cgroup
    fi
fi
[ "$CPU_METHOD" = cgroup ] || log "warning: no writable cgroup v2: tftpd-hpa CPU cannot be measured (n/a)"

# Start "$@" inside cgroup $1 (if any); sets LAST_PID.
start_in_cgroup() {
    local cg=$1 logf=$2
    shift 2
    if [ -n "$cg" ]; then
        (echo "$BASHPID" >"$cg/cgroup.procs" || exit 97; exec "$@") >>"$logf" 2>&1 &
    else
        "$@" >>"$logf" 2>&1 &
    fi
    LAST_PID=$!
}

# ---------------------------------------------------------------- servers
log "starting uftpd"
# -v: one log line per transfer (negligible here) and the counters at exit
start_in_cgroup "$CG_UFTPD" "$WORK/uftpd.log" "$UFTPD" -v --listen 127.0.0.1:0 --cores 2 "$ROOT"
UFTPD_PID=$LAST_PID
UFTPD_PORT=""
for ((i = 0; i < 100; i++)); do
    UFTPD_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/uftpd.log" | head -n1)
    [ -n "$UFTPD_PORT" ] && break
    kill -0 "$UFTPD_PID" 2>/dev/null || break
    sleep 0.1
done
[ -n "$UFTPD_PORT" ] || die "uftpd did not start: $(cat "$WORK/uftpd.log")"

log "starting tftpd-hpa"
if id tftp >/dev/null 2>&1; then HPA_USER=tftp; else HPA_USER=root; fi
HPA_PORT=""
for ((try = 0; try < 10; try++)); do
    port=$((20000 + (RANDOM % 20000)))
    [ "$port" = "$UFTPD_PORT" ] && continue
    start_in_cgroup "$CG_HPA" "$WORK/hpa.log" "$IN_TFTPD" -L -u "$HPA_USER" -s "$ROOT" -a "127.0.0.1:$port"
    HPA_PID=$LAST_PID
    sleep 0.5
    if kill -0 "$HPA_PID" 2>/dev/null; then HPA_PORT=$port; break; fi
    wait "$HPA_PID" 2>/dev/null
    HPA_PID=""
done
[ -n "$HPA_PORT" ] || die "in.tftpd did not start: $(cat "$WORK/hpa.log")"
log "uftpd pid $UFTPD_PID port $UFTPD_PORT; in.tftpd pid $HPA_PID port $HPA_PORT (user $HPA_USER); cpu method $CPU_METHOD"

port_of() { if [ "$1" = uftpd ]; then echo "$UFTPD_PORT"; else echo "$HPA_PORT"; fi; }

# CPU time of a server's whole tree, microseconds: "total user" ("" if unknown).
server_cpu_us() {
    local cg pid
    if [ "$1" = uftpd ]; then cg=$CG_UFTPD pid=$UFTPD_PID; else cg=$CG_HPA pid=$HPA_PID; fi
    if [ "$CPU_METHOD" = cgroup ]; then
        awk '$1 == "usage_usec" { t = $2 } $1 == "user_usec" { u = $2 } END { print t, u }' "$cg/cpu.stat"
    elif [ "$1" = uftpd ]; then
        # fields 14..17 after the "(comm)" field; comm has no spaces here
        awk -v hz="$(getconf CLK_TCK)" '{ printf "%d %d\n", ($14 + $15 + $16 + $17) * 1000000 / hz, ($14 + $16) * 1000000 / hz }' "/proc/$pid/stat"
    else
        echo ""
    fi
}

# Wait (bounded) until a server has no transfer left: tftpd-hpa's children
# have exited; then a short settle so the final ACK is processed.
wait_idle() {
    local i n
    if [ "$1" = hpa ]; then
        for ((i = 0; i < 100; i++)); do
            if [ "$CPU_METHOD" = cgroup ]; then
                n=$(wc -l <"$CG_HPA/cgroup.procs")
            else
                n=$(($(wc -w <"/proc/$HPA_PID/task/$HPA_PID/children" 2>/dev/null || echo 0) + 1))
            fi
            [ "$n" -le 1 ] && break
            sleep 0.1
        done
        [ "$n" -le 1 ] || log "warning: tftpd-hpa still has $((n - 1)) child(ren) after 10 s"
    fi
    sleep 0.2
}

check_alive() {
    kill -0 "$UFTPD_PID" 2>/dev/null || die "uftpd died"
    kill -0 "$HPA_PID" 2>/dev/null || die "in.tftpd died"
}

# ---------------------------------------------------------------- scenarios
SCEN_IDS=(s1 s2 s3 s4)
declare -A SCEN_NAME SCEN_MIB
SCEN_NAME[s1]="1. ${CLIENTS} concurrent clients x 1 MiB (curl, blksize 1468)"
SCEN_NAME[s2]="2. 64 MiB lock-step (curl, blksize 1468)"
SCEN_NAME[s3]="3. 64 MiB windowsize 16 (atftp, blksize 1468) [tftpd-hpa: lock-step]"
SCEN_NAME[s4]="4. 16 MiB lock-step 512-byte blocks (tftp-hpa, no options)"
SCEN_MIB[s1]=$CLIENTS
SCEN_MIB[s2]=64
SCEN_MIB[s3]=64
SCEN_MIB[s4]=16

# run_clients scenario port: runs the client(s), writes into $OUT, returns
# non-zero if any client failed. Files are checked afterwards.
run_clients() {
    local s=$1 port=$2 i rc=0 p
    CLIENT_PIDS=()
    case $s in
    s1)
        for ((i = 0; i < CLIENTS; i++)); do
            timeout "$CLIENT_TIMEOUT" curl -sS --tftp-blksize 1468 -o "$OUT/small.$i" \
                "tftp://127.0.0.1:$port/small.bin" 2>>"$WORK/client.log" &
            CLIENT_PIDS+=($!)
        done
        ;;
    s2)
        timeout "$CLIENT_TIMEOUT" curl -sS --tftp-blksize 1468 -o "$OUT/big.0" \
            "tftp://127.0.0.1:$port/big.bin" 2>>"$WORK/client.log" &
        CLIENT_PIDS+=($!)
        ;;
    s3)
        timeout "$CLIENT_TIMEOUT" atftp --option "blksize 1468" --option "windowsize 16" \
            -g -r big.bin -l "$OUT/big.0" 127.0.0.1 "$port" >>"$WORK/client.log" 2>&1 &
        CLIENT_PIDS+=($!)
        ;;
    s4)
        timeout "$CLIENT_TIMEOUT" tftp -m octet 127.0.0.1 "$port" -c get mid.bin "$OUT/mid.0" \
            >>"$WORK/client.log" 2>&1 &
        CLIENT_PIDS+=($!)
        ;;
    esac
    for p in "${CLIENT_PIDS[@]}"; do
        wait "$p" || rc=$?
    done
    CLIENT_PIDS=()
    return "$rc"
}

verify_outputs() { # scenario server
    local s=$1 srv=$2 want f n=0 expect name
    case $s in s1) name=small.bin expect=$CLIENTS ;; s2 | s3) name=big.bin expect=1 ;; s4) name=mid.bin expect=1 ;; esac
    want=${FILE_SHA[$name]}
    for f in "$OUT"/*; do
        [ -f "$f" ] || continue
        n=$((n + 1))
        got=$(sha256sum "$f" | cut -d' ' -f1)
        if [ "$got" != "$want" ]; then
            die "WRONG BYTES from $srv in ${SCEN_NAME[$s]}: $(basename "$f") is $(stat -c %s "$f") bytes sha256 $got, expected ${FILE_SIZE[$name]} bytes sha256 $want"
        fi
    done
    [ "$n" = "$expect" ] || die "$srv in ${SCEN_NAME[$s]}: $n of $expect files downloaded"
}

RAW=$(mktemp "$WORK/raw.XXXXXX")
trial() { # scenario server rep
    local s=$1 srv=$2 rep=$3 port c0 c1 t0 t1 rc=0 wall cpu user
    port=$(port_of "$srv")
    rm -f "$OUT"/*
    check_alive
    c0=$(server_cpu_us "$srv")
    t0=$EPOCHREALTIME
    run_clients "$s" "$port" || rc=$?
    t1=$EPOCHREALTIME
    wait_idle "$srv"
    c1=$(server_cpu_us "$srv")
    [ "$rc" = 0 ] || { tail -n 5 "$WORK/client.log" >&2; die "$srv: a client failed (exit $rc) in ${SCEN_NAME[$s]}, rep $rep"; }
    verify_outputs "$s" "$srv"
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')
    if [ -n "$c0" ] && [ -n "$c1" ]; then
        cpu=$((${c1% *} - ${c0% *}))
        user=$((${c1#* } - ${c0#* }))
    else
        cpu=NA user=NA
    fi
    echo "$s $srv $rep $wall $cpu $user" >>"$RAW"
    log "$s rep $rep $srv: wall ${wall}s server-cpu ${cpu}us (user ${user}us)"
}

# Warm-up (not measured): one small fetch from each server, checked.
for srv in uftpd hpa; do
    rm -f "$OUT"/*
    timeout 30 curl -sS --tftp-blksize 1468 -o "$OUT/small.0" "tftp://127.0.0.1:$(port_of $srv)/small.bin" ||
        die "warm-up fetch from $srv failed"
    [ "$(sha256sum "$OUT/small.0" | cut -d' ' -f1)" = "${FILE_SHA[small.bin]}" ] || die "warm-up: wrong bytes from $srv"
done

# ---------------------------------------------------------------- measure
MEASURE_T0=$SECONDS
DONE_REPS=0
PARTIAL=""
for ((rep = 1; rep <= REPS; rep++)); do
    if ((SECONDS - MEASURE_T0 > BUDGET_S)); then
        PARTIAL="time budget (${BUDGET_S}s) reached after $DONE_REPS of $REPS repetitions"
        log "$PARTIAL"
        break
    fi
    if ((rep % 2)); then order=(uftpd hpa); else order=(hpa uftpd); fi
    for s in "${SCEN_IDS[@]}"; do
        for srv in "${order[@]}"; do trial "$s" "$srv" "$rep"; done
    done
    DONE_REPS=$rep
done
((DONE_REPS > 0)) || die "no repetition completed"
check_alive

# Stop uftpd now to get its counters (resends, timeouts) for the report.
kill_wait "$UFTPD_PID" 15
UFTPD_PID=""
UFTPD_TOTALS=$(sed -n 's/^uftpd: totals: //p' "$WORK/uftpd.log" | tr ' ' '\n' | grep -v '=0$' | paste -sd' ')
UFTPD_FAILS=$(grep -c '^uftpd: .*: failed' "$WORK/uftpd.log")

# ---------------------------------------------------------------- report
median() { # values on stdin ("NA" ignored) -> median or NA
    sort -g | awk '$1 != "NA" { v[n++] = $1 } END { if (!n) { print "NA"; exit } if (n % 2) print v[(n-1)/2]; else print (v[n/2-1] + v[n/2]) / 2 }'
}
col() { awk -v s="$1" -v v="$2" -v c="$3" '$1 == s && $2 == v { print $c }' "$RAW"; }
fmt() { awk -v x="$1" -v f="$2" 'BEGIN { if (x == "NA" || x == "") print "n/a"; else printf f, x }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "NA" || b == "NA" || a == "" || b == "" || b == 0) print "NA"; else print a / b }'; }

TABLE="| Scenario | uftpd wall s | tftpd-hpa wall s | wall ratio hpa/uftpd | uftpd MiB/s | tftpd-hpa MiB/s | uftpd CPU ms/MiB | tftpd-hpa CPU ms/MiB | CPU ratio hpa/uftpd |
|---|---:|---:|---:|---:|---:|---:|---:|---:|"
RAWTXT=""
for s in "${SCEN_IDS[@]}"; do
    mib=${SCEN_MIB[$s]}
    wu=$(col "$s" uftpd 4 | median)
    wh=$(col "$s" hpa 4 | median)
    cu=$(col "$s" uftpd 5 | median)
    ch=$(col "$s" hpa 5 | median)
    cpu_u=$(div "$cu" "$((mib * 1000))") # usec / MiB / 1000 = ms/MiB
    cpu_h=$(div "$ch" "$((mib * 1000))")
    TABLE+="
| ${SCEN_NAME[$s]} | $(fmt "$wu" %.3f) | $(fmt "$wh" %.3f) | **$(fmt "$(div "$wh" "$wu")" %.2f)** | $(fmt "$(div "$mib" "$wu")" %.1f) | $(fmt "$(div "$mib" "$wh")" %.1f) | $(fmt "$cpu_u" %.2f) | $(fmt "$cpu_h" %.2f) | **$(fmt "$(div "$cpu_h" "$cpu_u")" %.2f)** |"
    for srv in uftpd hpa; do
        RAWTXT+="- $s $srv: wall s [$(col "$s" $srv 4 | paste -sd' ')], server CPU ms [$(col "$s" $srv 5 | awk '{ if ($1 == "NA") printf "n/a "; else printf "%.0f ", $1 / 1000 }' | sed 's/ $//')], of which user ms [$(col "$s" $srv 6 | awk '{ if ($1 == "NA") printf "n/a "; else printf "%.0f ", $1 / 1000 }' | sed 's/ $//')]
"
    done
done

CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
UFTPD_DESC=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)
UFTPD_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)
HPA_VER=$(dpkg-query -W tftpd-hpa 2>/dev/null | cut -f2)
CLIENT_VERS="curl $(dpkg-query -W -f='${Version}' curl 2>/dev/null), tftp-hpa $(dpkg-query -W -f='${Version}' tftp-hpa 2>/dev/null), atftp $(dpkg-query -W -f='${Version}' atftp 2>/dev/null)"
if [ "$CPU_METHOD" = cgroup ]; then
    CPU_NOTE="cgroup v2 cpu.stat usage_usec of each server's own cgroup (whole process tree), delta per trial"
else
    CPU_NOTE="/proc/PID/stat utime+stime+cutime+cstime (no writable cgroup v2): tftpd-hpa's children are auto-reaped (SIGCHLD ignored), so its CPU is n/a"
fi

if [ ! -s "$RESULTS" ]; then
    cat >"$RESULTS" <<'EOF'
# uftpd vs tftpd-hpa: benchmark results

Produced by `bash bench/compare.sh` (see bench/README.md). Each section below
is one run of the script, appended by the script itself.

Method: both servers run at the same time on 127.0.0.1 of the same machine
(uftpd `--cores 2`, tftpd-hpa `in.tftpd -L` forking one child per transfer);
every scenario is run against each server in turn, the order alternating
between repetitions; the table shows medians. Ratios are tftpd-hpa / uftpd,
so **> 1 means uftpd is faster or cheaper**. Wall time is the client side
(start of the client(s) to exit of the last one). Server CPU is user+sys of
the server's whole process tree during the trial, read from a cgroup v2 made
for each server (`cpu.stat` usage_usec): tftpd-hpa ignores SIGCHLD, so its
children's CPU never reaches the parent's cutime/cstime. Every downloaded
file is checked against the source's sha256; a mismatch aborts the run.
Clients and servers share the machine's 2 cores, so these are loopback
numbers on a busy box, not network numbers: read the ratios, not the
absolutes.
EOF
fi

{
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo
    echo "- command: \`bash bench/compare.sh\` (REPS=$REPS, CLIENTS=$CLIENTS; $DONE_REPS repetitions done${PARTIAL:+; $PARTIAL})"
    echo "- machine: nproc $(nproc), kernel $(uname -r), CPU $CPU_MODEL"
    echo "- date: $(date -u)"
    echo "- uftpd: $UFTPD_DESC (commit $UFTPD_COMMIT), \`uftpd --listen 127.0.0.1:PORT --cores 2 ROOT\`"
    echo "- tftpd-hpa: $HPA_VER, \`in.tftpd -L -u $HPA_USER -s ROOT -a 127.0.0.1:PORT\`"
    echo "- clients: $CLIENT_VERS"
    echo "- server CPU: $CPU_NOTE"
    echo "- uftpd counters at exit (non-zero; include warm-up): ${UFTPD_TOTALS:-none printed}; failed transfers logged: $UFTPD_FAILS"
    echo
    echo "$TABLE"
    echo
    echo "Scenario 3: tftpd-hpa does not implement windowsize (RFC 7440), so atftp falls back to lock-step with it."
    echo
    echo "<details><summary>raw samples (in repetition order)</summary>"
    echo
    printf '%s' "$RAWTXT"
    echo
    echo "</details>"
} >>"$RESULTS"

echo
echo "$TABLE"
echo
log "appended to $RESULTS"
