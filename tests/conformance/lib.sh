# shellcheck shell=bash
# Shared by run-pjdfstest.sh and run-fsx.sh (sourced, not run).

# is_mounted DIR: DIR is a mount point in /proc/mounts (no stat: a hung mount must not hang us).
is_mounted() { grep -q " $1 " /proc/mounts; }

# daemon_pids STORE: the genfs daemons serving STORE (its argv still reads `genfs mount STORE ...`).
daemon_pids() {
    local store=$1 p args
    for p in /proc/[0-9]*; do
        args=$(tr '\0' '\n' <"$p/cmdline" 2>/dev/null) || continue
        if printf '%s\n' "$args" | grep -qxF mount && printf '%s\n' "$args" | grep -qxF "$store"; then
            echo "${p#/proc/}"
        fi
    done
}

# unmount_genfs MNT STORE: umount (retrying while busy), else detach lazily and stop the
# daemon of this store; returns non-zero if MNT is still mounted.
unmount_genfs() {
    local mnt=$1 store=$2 pids
    is_mounted "$mnt" || return 0
    for _ in 1 2 3 4 5; do
        umount "$mnt" 2>/dev/null && return 0
        sleep 1
    done
    echo "umount $mnt failed; detaching it lazily and stopping its daemon" >&2
    umount -l "$mnt" || true
    pids=$(daemon_pids "$store")
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        sleep 2
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
    fi
    ! is_mounted "$mnt"
}
