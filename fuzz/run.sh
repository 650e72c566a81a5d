#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after the other, and prints
# the executions and coverage each reached. Exits non-zero as soon as a
# target crashes (the input is left in fuzz/artifacts/<target>/).
#
#   bash fuzz/run.sh SECONDS [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). Builds with debug assertions and overflow checks (the
# sessions table checks its invariants in debug assertions) and without a
# sanitizer: the protocol core forbids `unsafe`, so AddressSanitizer would
# only halve the executions. Each target starts from the checked-in seeds
# in fuzz/corpus/<target>/ plus what earlier runs found, kept in
# fuzz/work/<target>/ (not checked in). CARGO_TARGET_DIR is honoured.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

seconds="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(wire negotiate session endpoint stats)
fi
target_dir="${CARGO_TARGET_DIR:-$here/target}"
build=(cargo +nightly fuzz build --debug-assertions --sanitizer none --target-dir "$target_dir")

# Build everything first, so a build error is not mistaken for a crash.
log="$(mktemp)"
if ! "${build[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"

for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    log="$(mktemp)"
    set +e
    cargo +nightly fuzz run --debug-assertions --sanitizer none --target-dir "$target_dir" \
        "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -max_len=4096 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    # (A crash on a seed leaves no status line: no match is not an error.)
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true)"
    corpus="$(grep -oE 'corp: [0-9]+/[0-9]+[bKM]' "$log" | tail -1 || true)"
    if [ "$rc" -ne 0 ]; then
        echo "fuzz: $t CRASHED after ${execs:-?} executions (exit $rc):" >&2
        grep -A4 'panicked at' "$log" >&2 || tail -40 "$log" >&2
        grep -A2 '^Reproduce with' "$log" >&2 || true
        echo "fuzz: the input is in fuzz/artifacts/$t/; the full log is $log" >&2
        exit 1
    fi
    printf 'fuzz: %-10s %12s executions in %ss  %s  %s\n' \
        "$t" "${execs:-?}" "$seconds" "${cov:-}" "${corpus:-}"
    rm -f "$log"
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
