#!/usr/bin/env bash
# Runs fsx (crates.io 0.3.2) against a fresh genfs mount: 100,000 operations as 5 chunks of
# 20,000, seeds 1..5, each chunk on its own file (fsx's mmap reads never unmap, so one long
# run slows down and dies near vm.max_map_count). Configuration: tests/conformance/fsx.toml
# (mmap reads and writes on; hole punching off: genfs supports fallocate mode 0 only).
#
# usage: tests/conformance/run-fsx.sh [STORE_PARENT_DIR]
#
# environment:
#   GENFS_BIN    genfs binary (default: <repo>/target/release/genfs); nothing is built here
#   FSX          fsx binary (default: from PATH, else ~/.cargo/bin/fsx)
#   FSX_OPS      total operations (default 100000)
#   FSX_CHUNK    operations per chunk (default 20000)
#   FSX_SEED     first seed (default 1); chunk i uses seed FSX_SEED+i-1
#   FSX_REPORT   directory for per-chunk logs and failure artifacts
#                (default: /tmp/fsx-report)
#   FSX_TIMEOUT  seconds allowed per chunk (default 900)
#   FSX_STORE_CHUNK  chunk size of the test store (genfs mkfs --chunk-size; default 64K, so
#                the 256 KiB file under test spans several store chunks and writes, reads
#                and truncates cross chunk boundaries; the genfs default is 1M)
#   FSX_KEEP     1: keep the temporary store after the run
#
# Prints `fsx: N passed, N failed` for each chunk and a total; exits 0 only if every chunk
# is clean, 1 if not, 2 on a setup error, 77 if it cannot mount (not root and no
# user_allow_other).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
parent=${1:-${TMPDIR:-/tmp}}

genfs=${GENFS_BIN:-$repo/target/release/genfs}
fsx=${FSX:-$(command -v fsx || echo "$HOME/.cargo/bin/fsx")}
total_ops=${FSX_OPS:-100000}
chunk=${FSX_CHUNK:-20000}
seed0=${FSX_SEED:-1}
outdir=${FSX_REPORT:-/tmp/fsx-report}
timeout_s=${FSX_TIMEOUT:-900}
store_chunk=${FSX_STORE_CHUNK:-64K}
config=$here/fsx.toml

log() { printf 'run-fsx: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=tests/conformance/lib.sh
. "$here/lib.sh"

[ -x "$genfs" ] || die "genfs binary not found at $genfs (build it: cargo build --release, or set GENFS_BIN)"
[ -x "$fsx" ] || die "fsx not found (cargo install fsx --version 0.3.2 --locked)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
[ "$chunk" -gt 0 ] || die "FSX_CHUNK must be positive"
mkdir -p "$parent" "$outdir"

work=$(mktemp -d "$parent/genfs-fsx.XXXXXX")
store=$work/store
mnt=$work/mnt
mkdir -p "$mnt"

cleanup() {
    local rc=$?
    set +e
    unmount_genfs "$mnt" "$store" || log "could not unmount $mnt"
    if [ "${FSX_KEEP:-0}" = 1 ]; then
        log "kept $work (store log: $store/genfs.log)"
    elif ! is_mounted "$mnt"; then
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "genfs: $genfs"
log "fsx: $fsx ($("$fsx" --version 2>/dev/null | head -n1 || echo unknown version)), config $config"
"$genfs" mkfs --chunk-size "$store_chunk" "$store" >/dev/null
if ! "$genfs" mount "$store" "$mnt"; then
    if [ "$(id -u)" -ne 0 ]; then
        log "skipped: cannot mount genfs as $(id -un)"
        exit 77
    fi
    die "genfs mount failed"
fi
is_mounted "$mnt" || die "genfs mount on $mnt did not appear in /proc/mounts"
log "mounted store $store (chunk size $store_chunk) on $mnt; logs in $outdir"

passed=0
failed=0
chunks=$(((total_ops + chunk - 1) / chunk))
for i in $(seq 1 "$chunks"); do
    seed=$((seed0 + i - 1))
    ops=$chunk
    left=$((total_ops - (i - 1) * chunk))
    [ "$left" -lt "$ops" ] && ops=$left
    file=$mnt/fsx-seed$seed
    clog=$outdir/fsx-seed$seed.log
    art=$outdir/fsx-seed$seed.artifacts
    rm -rf "$art"
    mkdir -p "$art"
    start=$(date +%s.%N)
    rc=0
    # -v logs every operation (one line each); the op counts below come from it.
    (cd "$outdir" && timeout --kill-after=30 "$timeout_s" "$fsx" -v -N "$ops" -S "$seed" -f "$config" -P "$art" "$file") \
        >"$clog" 2>&1 || rc=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    rate=$(awk -v n="$ops" -v s="$secs" 'BEGIN { printf "%d", (s > 0 ? n / s : 0) }')
    opcounts=$(grep -oE '^\[INFO +fsx\] +[0-9]+ [a-z_]+' "$clog" | awk '{ c[$NF]++ } END { for (k in c) printf "%s=%d ", k, c[k] }' || true)
    if [ "$rc" -eq 0 ] && grep -q 'All operations completed A-OK' "$clog"; then
        echo "fsx: chunk $i seed $seed: 1 passed, 0 failed ($ops ops, ${secs}s, $rate ops/s)"
        passed=$((passed + 1))
        rmdir "$art" 2>/dev/null || true
    else
        reason="exit $rc"
        [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && reason="timed out after ${timeout_s}s"
        echo "fsx: chunk $i seed $seed: 0 passed, 1 failed ($reason after ${secs}s; log $clog)"
        grep -vE '^\[INFO +fsx\] +[0-9]+ ' "$clog" | tail -n 15 | sed 's/^/    /' >&2 || true
        failed=$((failed + 1))
        # Keep the file under test next to the log for a replay (fsx -b / -m).
        if [ -f "$file" ]; then cp "$file" "$art/" 2>/dev/null || true; fi
    fi
    log "chunk $i ops: $opcounts"
done

echo "fsx: $passed passed, $failed failed (chunks of $chunk ops, seeds $seed0..$((seed0 + chunks - 1)))"
if [ -s "$store/genfs.log" ]; then
    cp "$store/genfs.log" "$outdir/genfs.log"
    log "genfs.log copied to $outdir/genfs.log"
fi
[ "$failed" -eq 0 ]
