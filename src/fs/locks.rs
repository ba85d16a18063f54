//! POSIX record locks, kept by the daemon per file (not per node: writers of one file may sit
//! on different nodes). Blocking requests park their reply and are answered when the lock is
//! granted, so no session thread ever waits. Ranges are inclusive, as FUSE sends them.

use crate::store::records::Ino;
use fuser::{Errno, ReplyEmpty};
use parking_lot::Mutex;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

impl Lock {
    fn overlaps(&self, other: &Lock) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    fn conflicts(&self, other: &Lock) -> bool {
        self.owner != other.owner
            && self.overlaps(other)
            && (self.typ == libc::F_WRLCK || other.typ == libc::F_WRLCK)
    }
}

struct Waiter {
    lock: Lock,
    reply: ReplyEmpty,
}

#[derive(Default)]
struct FileLocks {
    held: Vec<Lock>,
    waiting: Vec<Waiter>,
}

#[derive(Default)]
pub struct Locks {
    files: Mutex<HashMap<Ino, FileLocks>>,
}

impl Locks {
    /// The first lock that would block `want`, if any.
    pub fn test(&self, ino: Ino, want: &Lock) -> Option<Lock> {
        let files = self.files.lock();
        files.get(&ino)?.held.iter().find(|l| l.conflicts(want)).copied()
    }

    /// Sets or clears a lock. A blocking request that conflicts keeps its reply until granted.
    pub fn set(&self, ino: Ino, want: Lock, sleep: bool, reply: ReplyEmpty) {
        let mut files = self.files.lock();
        let state = files.entry(ino).or_default();
        if want.typ == libc::F_UNLCK {
            remove_range(&mut state.held, want.owner, want.start, want.end);
            reply.ok();
            grant_waiters(state);
            return;
        }
        if state.held.iter().any(|l| l.conflicts(&want)) {
            if sleep {
                state.waiting.push(Waiter { lock: want, reply });
            } else {
                reply.error(Errno::EAGAIN);
            }
            return;
        }
        insert(&mut state.held, want);
        reply.ok();
    }

    /// Drops every lock of `owner` on the file (close of any of its descriptors).
    pub fn release_owner(&self, ino: Ino, owner: u64) {
        let mut files = self.files.lock();
        if let Some(state) = files.get_mut(&ino) {
            let before = state.held.len();
            state.held.retain(|l| l.owner != owner);
            if state.held.len() != before {
                grant_waiters(state);
            }
            if state.held.is_empty() && state.waiting.is_empty() {
                files.remove(&ino);
            }
        }
    }
}

fn insert(held: &mut Vec<Lock>, lock: Lock) {
    remove_range(held, lock.owner, lock.start, lock.end);
    held.push(lock);
}

/// Removes `[start, end]` from the owner's locks, splitting locks that straddle it.
fn remove_range(held: &mut Vec<Lock>, owner: u64, start: u64, end: u64) {
    let mut kept = Vec::with_capacity(held.len());
    for l in held.drain(..) {
        if l.owner != owner || l.end < start || l.start > end {
            kept.push(l);
            continue;
        }
        if l.start < start {
            kept.push(Lock { end: start - 1, ..l });
        }
        if l.end > end {
            kept.push(Lock { start: end + 1, ..l });
        }
    }
    *held = kept;
}

fn grant_waiters(state: &mut FileLocks) {
    let mut still = Vec::new();
    for w in std::mem::take(&mut state.waiting) {
        if state.held.iter().any(|l| l.conflicts(&w.lock)) {
            still.push(w);
        } else {
            insert(&mut state.held, w.lock);
            w.reply.ok();
        }
    }
    state.waiting = still;
}
