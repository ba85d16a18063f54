#!/usr/bin/env bash
# Runs pjdfstest (crates.io 0.2.2) against a fresh genfs mount.
#
# usage: tests/conformance/run-pjdfstest.sh [STORE_PARENT_DIR]
#
#   STORE_PARENT_DIR  where the temporary store is created (default: $TMPDIR or /tmp).
#                     The mount point always goes in /tmp, chmod 755, so that the dummy
#                     users of the uid-switching tests can reach it.
# environment:
#   GENFS_BIN     genfs binary (default: <repo>/target/release/genfs); nothing is built here
#   PJDFSTEST     pjdfstest binary (default: from PATH, else ~/.cargo/bin/pjdfstest)
#   PJD_REPORT    report file: every failed and skipped test with its reason
#                 (default: /tmp/pjdfstest-report.txt); the raw output goes to
#                 PJD_REPORT with .log instead of .txt
#   PJD_THRESHOLD minimum passed/(passed+failed) for exit 0 (default: 0.95)
#   PJD_TIMEOUT   seconds allowed for each pjdfstest invocation (default: 1800)
#   PJD_EROFS     1 (default): also run the 13 read-only-remount tests in a second
#                 invocation; 0: leave them skipped
#   PJD_NAPTIME   seconds pjdfstest sleeps before checking that a time changed (default: the
#                 config's); 0 asks that metadata be coherent at once
#   PJD_KEEP      1: keep the temporary store (and its genfs.log) after the run
#   extra arguments after STORE_PARENT_DIR are passed to pjdfstest as test-name filters
#
# Prints `pjdfstest: N passed, N failed, N skipped` and exits 0 if the pass ratio is at least
# PJD_THRESHOLD, 1 if not, 2 on a setup error, 77 if not run as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
parent=${1:-${TMPDIR:-/tmp}}
[ $# -gt 0 ] && shift
filters=("$@")

genfs=${GENFS_BIN:-$repo/target/release/genfs}
pjd=${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}
report=${PJD_REPORT:-/tmp/pjdfstest-report.txt}
rawlog=${report%.txt}.log
[ "$rawlog" = "$report" ] && rawlog=$report.log
threshold=${PJD_THRESHOLD:-0.95}
timeout_s=${PJD_TIMEOUT:-1800}
run_erofs=${PJD_EROFS:-1}
config=$here/pjdfstest.toml
naptime=${PJD_NAPTIME:-}

log() { printf 'run-pjdfstest: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 2; }
# shellcheck source=tests/conformance/lib.sh
. "$here/lib.sh"

if [ "$(id -u)" -ne 0 ]; then
    log "skipped: pjdfstest needs root (uid switching, chown, mknod); run as root"
    exit 77
fi
[ -x "$genfs" ] || die "genfs binary not found at $genfs (build it: cargo build --release, or set GENFS_BIN)"
[ -x "$pjd" ] || die "pjdfstest not found (cargo install pjdfstest --version 0.2.2 --locked)"
[ -e /dev/fuse ] || die "/dev/fuse is missing"
mkdir -p "$parent"

work=$(mktemp -d "$parent/genfs-pjd.XXXXXX")
mnt=$(mktemp -d /tmp/genfs-pjd-mnt.XXXXXX)
chmod 755 "$mnt"
store=$work/store
second=$work/secondary-fs   # any directory outside the genfs mount (EXDEV tests)
mkdir -p "$second"
chmod 755 "$work" "$second"

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    unmount_genfs "$mnt" "$store" || log "could not unmount $mnt"
    # Remove the mount point and the store only once nothing is mounted on it.
    is_mounted "$mnt" || rmdir "$mnt" 2>/dev/null
    if [ "${PJD_KEEP:-0}" = 1 ]; then
        log "kept $work (store log: $store/genfs.log)"
    elif ! is_mounted "$mnt"; then
        rm -rf "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "genfs: $genfs"
log "pjdfstest: $pjd ($("$pjd" --version 2>/dev/null | head -n1 || echo unknown version))"
if [ -n "$naptime" ]; then
    sed "s/^naptime *=.*/naptime = $naptime/" "$here/pjdfstest.toml" >"$work/pjdfstest.toml"
    config=$work/pjdfstest.toml
    log "naptime $naptime"
fi
"$genfs" mkfs "$store" >/dev/null
"$genfs" mount "$store" "$mnt" -o allow_other
is_mounted "$mnt" || die "genfs mount on $mnt did not appear in /proc/mounts"
log "mounted store $store on $mnt"

: >"$rawlog"
export NO_COLOR=1
run_pjd() { # run_pjd CONFIG [PATTERN...]; output appended to $rawlog
    local cfg=$1
    shift
    local rc=0
    (cd "$mnt" && RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0 timeout --kill-after=30 "$timeout_s" "$pjd" -c "$cfg" -p "$mnt" -s "$second" "$@") \
        >>"$rawlog" 2>&1 || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "TIMEOUT after ${timeout_s}s (pjdfstest killed)" >>"$rawlog"
        log "pjdfstest timed out after ${timeout_s}s"
    fi
    return 0
}

# 1. The main run. allow_remount = false, so the 13 read-only-remount tests skip here: inside
#    a full run their remount fails with EBUSY.
log "main run (log: $rawlog)"
echo "### main run: $pjd -c $config -p $mnt -s $second ${filters[*]}" >>"$rawlog"
run_pjd "$config" "${filters[@]}"

# 2. The EROFS tests, alone. pjdfstest remounts with `mount -o remount,ro MNT`, which runs the
#    FUSE mount helper and fails on a FUSE mount; a `mount` wrapper first on PATH adds -i
#    (do not call /sbin/mount.<type>), so the kernel remounts the FUSE superblock directly.
if [ "$run_erofs" = 1 ] && { [ ${#filters[@]} -eq 0 ] || printf '%s\n' "${filters[@]}" | grep -q erofs; }; then
    realmount=$(command -v mount) || die "mount(8) not found"
    mkdir -p "$work/bin"
    cat >"$work/bin/mount" <<EOF
#!/bin/sh
case " \$* " in
    *remount*) exec "$realmount" -i "\$@" ;;
    *) exec "$realmount" "\$@" ;;
esac
EOF
    chmod 755 "$work/bin/mount"
    sed 's/^allow_remount *= *false/allow_remount = true/' "$config" >"$work/pjdfstest-erofs.toml"
    log "read-only-remount (erofs) run"
    echo "### erofs run: allow_remount = true, mount wrapper adds -i" >>"$rawlog"
    PATH="$work/bin:$PATH" run_pjd "$work/pjdfstest-erofs.toml" erofs
    # A failed erofs test may leave the mount read-only.
    if grep " $mnt " /proc/mounts | awk '{print $4}' | grep -qE '(^|,)ro(,|$)'; then
        "$realmount" -i -o remount,rw "$mnt" || log "could not remount $mnt read-write"
    fi
fi

# Results. pjdfstest prints one line per test: `NAME<spaces>ok|FAILED|skipped|...`, then
# tab-indented reason lines. The erofs tests skipped in the main run and run in the second
# are counted once, with their second result.
sed -e 's/\x1b\[[0-9;]*m//g' "$rawlog" | awk -v report="$report" '
    /^### erofs run/ { erofs = 1; next }
    /^### / { next }
    /^TIMEOUT/ { timeout = timeout $0 "\n"; next }
    /^[A-Za-z_][A-Za-z0-9_:]* +(ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY)$/ {
        name = $1
        st = $0; sub(/^[^ ]+ +/, "", st)
        if (!(name in status)) order[++n] = name
        if (erofs || !(name in status) || status[name] != "skipped" || st != "skipped") {
            status[name] = st; reason[name] = ""
        }
        cur = name; curst = st
        next
    }
    /^Summary:/ { cur = ""; next }
    cur != "" && NF > 0 {
        # Reason lines: a skip reason, or a panic message (possibly several lines).
        if (status[cur] == curst) {
            line = $0; sub(/^[ \t]+/, "", line)
            reason[cur] = reason[cur] (reason[cur] == "" ? "" : " | ") line
        }
        next
    }
    END {
        p = f = s = 0
        for (i = 1; i <= n; i++) {
            st = status[order[i]]
            if (st == "ok" || st == "failed as expected") p++
            else if (st == "skipped") s++
            else f++
        }
        printf "pjdfstest: %d passed, %d failed, %d skipped\n", p, f, s > report
        if (timeout != "") printf "%s", timeout > report
        printf "\n# FAILED\n" > report
        for (i = 1; i <= n; i++) { nm = order[i]; st = status[nm]
            if (st != "ok" && st != "failed as expected" && st != "skipped") printf "%s\t%s\t%s\n", nm, st, reason[nm] > report }
        printf "\n# SKIPPED\n" > report
        for (i = 1; i <= n; i++) { nm = order[i]
            if (status[nm] == "skipped") printf "%s\tskipped\t%s\n", nm, reason[nm] > report }
        printf "%d %d %d %d\n", p, f, s, (timeout != "")
    }' >"$work/counts"

read -r passed failed skipped timedout <"$work/counts"
total=$((passed + failed + skipped))
if [ "$total" -eq 0 ]; then
    log "no test results found in $rawlog"
    tail -n 20 "$rawlog" >&2 || true
    echo "pjdfstest: 0 passed, 0 failed, 0 skipped"
    exit 1
fi
# Anything the daemon logged (warnings, errors) is worth keeping with the report.
if [ -s "$store/genfs.log" ]; then
    {
        echo
        echo "# genfs.log (last 50 lines)"
        sed -e 's/\x1b\[[0-9;]*m//g' "$store/genfs.log" | tail -n 50
    } >>"$report"
fi

sed -n '/^# FAILED/,/^# genfs.log/p' "$report" | grep -v '^# genfs.log' >&2 || true
echo "pjdfstest: $passed passed, $failed failed, $skipped skipped"
log "report: $report, raw output: $rawlog"
if [ "$timedout" = 1 ]; then
    log "a pjdfstest invocation timed out"
    exit 1
fi
if awk -v p="$passed" -v f="$failed" -v t="$threshold" 'BEGIN { exit !((p + f) > 0 && p / (p + f) >= t) }'; then
    exit 0
fi
log "pass ratio below $threshold"
exit 1
