#!/usr/bin/env bash
# Prints what a mounted genfs tree holds, in a stable text form (tests/format.rs): every path
# with its kind, mode, link count, size, content digest and user xattrs; every kept generation
# of every file; each snapshot's files; and the tree at a few journal sequence numbers.
# usage: describe-store.sh MOUNTPOINT
set -euo pipefail
cd "$1"
digest() { sha256sum | cut -c1-16; }
find . -path ./.genfs -prune -o -print | LC_ALL=C sort | while IFS= read -r p; do
    if [ -L "$p" ]; then
        echo "link $p -> $(readlink "$p")"
    elif [ -d "$p" ]; then
        echo "dir $p $(stat -c %a "$p")"
    else
        xattrs=$(getfattr -d --absolute-names -m 'user\.' "$p" 2>/dev/null | grep -v '^#' | grep . | tr '\n' ' ' || true)
        echo "file $p $(stat -c '%a %h %s' "$p") $(digest <"$p") $xattrs"
        # Every kept generation, through the read path the log gives for it.
        getfattr -n user.genfs.log --only-values "$p" | while IFS=$'\t' read -r gen _time size _hash path; do
            echo "  generation $gen $size $(digest <"$path")"
        done
    fi
done
for s in $(ls .genfs/snapshots | LC_ALL=C sort); do
    (cd ".genfs/snapshots/$s" && find . -type f | LC_ALL=C sort | while IFS= read -r f; do
        echo "snapshot $s $f $(digest <"$f")"
    done)
done
for seq in 5 10 15 20 25; do
    (cd ".genfs/at/@$seq" && find . | LC_ALL=C sort | while IFS= read -r f; do
        if [ -f "$f" ] && [ ! -L "$f" ]; then echo "at @$seq $f $(digest <"$f")"; else echo "at @$seq $f"; fi
    done)
done
