//! Record locks (fcntl POSIX and OFD) and flock, kept by the daemon per file, not per node:
//! a file's descriptors sit on several kernel inodes (nodes.rs), and the kernel's own lock
//! tables are per inode. Ranges are inclusive, as FUSE sends them.
//!
//! Who owns a lock: the kernel sends an owner id per request. For POSIX locks it names the
//! process's file table (the owner that FLUSH carries, so a close releases them); for OFD locks
//! and flock it names the open file description, so they live until its RELEASE. The daemon
//! cannot tell them apart (fuser 0.18 drops `FUSE_LK_FLOCK`), so flock and fcntl locks on one
//! file conflict with each other here, where Linux keeps them apart (README, limitations).
//! Every lock remembers the handle it was set through: at RELEASE of that handle, only OFD and
//! flock locks can still be there (the last close's FLUSH already dropped POSIX ones).
//!
//! Blocking requests park their reply and are answered when the lock is granted, so no session
//! thread ever waits. Two things a local filesystem does for a waiter the kernel cannot ask of
//! a FUSE daemon here (fuser answers INTERRUPT with ENOSYS, after which the kernel waits for the
//! reply uninterruptibly), so the daemon does them itself:
//! - a request that would close a cycle of waiters gets EDEADLK (as Linux does for POSIX
//!   locks; for OFD locks and flock, which Linux lets hang, it is the same answer);
//! - a waiter whose thread has a signal to take (a handled one, or a fatal one such as SIGKILL)
//!   gets EINTR: [`Locks::watch`] reads the thread's pending signals from /proc.

use crate::store::records::Ino;
use fuser::{Errno, ReplyEmpty};
use parking_lot::{Condvar, Mutex};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often parked waiters' threads are checked for signals.
const SIGNAL_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Owners a deadlock search visits at most (Linux stops after 10 hops).
const DEADLOCK_SEARCH_OWNERS_MAX: usize = 1024;

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

/// A request: the lock, the handle it came through, and the thread that asked.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub lock: Lock,
    pub fh: u64,
    pub tid: u32,
}

#[derive(Clone, Copy)]
struct Held {
    lock: Lock,
    fh: u64,
}

struct Waiter {
    request: Request,
    reply: ReplyEmpty,
}

#[derive(Default)]
struct FileLocks {
    held: Vec<Held>,
    waiting: Vec<Waiter>,
}

#[derive(Default)]
pub struct Locks {
    files: Mutex<HashMap<Ino, FileLocks>>,
    /// Signalled when a waiter is parked, so the watcher polls only while there are some.
    parked: Condvar,
}

impl Locks {
    /// The first lock that would block `want`, if any.
    pub fn test(&self, ino: Ino, want: &Lock) -> Option<Lock> {
        let files = self.files.lock();
        files.get(&ino)?.held.iter().map(|h| h.lock).find(|l| l.conflicts(want))
    }

    /// Sets or clears a lock. A blocking request that conflicts keeps its reply until granted,
    /// unless waiting would deadlock.
    pub fn set(&self, ino: Ino, request: Request, sleep: bool, reply: ReplyEmpty) {
        let mut files = self.files.lock();
        let want = request.lock;
        if want.typ == libc::F_UNLCK {
            let state = files.entry(ino).or_default();
            remove_range(&mut state.held, want.owner, want.start, want.end);
            reply.ok();
            grant_waiters(state);
            forget_if_idle(&mut files, ino);
            return;
        }
        let blocked = files.get(&ino).is_some_and(|s| s.held.iter().any(|h| h.lock.conflicts(&want)));
        if !blocked {
            insert(&mut files.entry(ino).or_default().held, Held { lock: want, fh: request.fh });
            return reply.ok();
        }
        if !sleep {
            return reply.error(Errno::EAGAIN);
        }
        if would_deadlock(&files, ino, &want) {
            tracing::debug!("lock of owner {:#x} on inode {ino} would deadlock", want.owner);
            return reply.error(Errno::EDEADLK);
        }
        files.entry(ino).or_default().waiting.push(Waiter { request, reply });
        self.parked.notify_all();
    }

    /// Drops every lock of `owner` on the file (a close of any of its descriptors).
    pub fn release_owner(&self, ino: Ino, owner: u64) {
        self.release(ino, |h| h.lock.owner == owner);
    }

    /// Drops the locks set through handle `fh` (its RELEASE: OFD locks and flock).
    pub fn release_handle(&self, ino: Ino, fh: u64) {
        self.release(ino, |h| h.fh == fh);
    }

    fn release(&self, ino: Ino, gone: impl Fn(&Held) -> bool) {
        let mut files = self.files.lock();
        if let Some(state) = files.get_mut(&ino) {
            let before = state.held.len();
            state.held.retain(|h| !gone(h));
            if state.held.len() != before {
                grant_waiters(state);
            }
            forget_if_idle(&mut files, ino);
        }
    }

    /// Answers EINTR to waiters whose thread has a signal to take; runs until `stop`.
    pub fn watch(&self, stop: &AtomicBool) {
        let mut files = self.files.lock();
        while !stop.load(Ordering::SeqCst) {
            if files.values().all(|s| s.waiting.is_empty()) {
                self.parked.wait_for(&mut files, SIGNAL_POLL_INTERVAL * 10);
                continue;
            }
            let tids: HashSet<u32> =
                files.values().flat_map(|s| s.waiting.iter().map(|w| w.request.tid)).collect();
            // /proc reads happen without the lock held.
            let interrupted: HashSet<u32> = parking_lot::MutexGuard::unlocked(&mut files, || {
                tids.into_iter().filter(|&t| has_signal_to_take(t)).collect()
            });
            for state in files.values_mut() {
                let (gone, still): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut state.waiting)
                    .into_iter()
                    .partition(|w| interrupted.contains(&w.request.tid));
                state.waiting = still;
                for w in gone {
                    tracing::debug!("lock waiter thread {} interrupted by a signal", w.request.tid);
                    w.reply.error(Errno::EINTR);
                }
            }
            self.parked.wait_for(&mut files, SIGNAL_POLL_INTERVAL);
        }
    }

    /// Wakes the watcher (at shutdown).
    pub fn wake(&self) {
        self.parked.notify_all();
    }
}

fn forget_if_idle(files: &mut HashMap<Ino, FileLocks>, ino: Ino) {
    if files.get(&ino).is_some_and(|s| s.held.is_empty() && s.waiting.is_empty()) {
        files.remove(&ino);
    }
}

/// Whether `want` waiting on `ino` closes a cycle: some holder it waits for is (through other
/// waiters) waiting for a lock of `want.owner`.
fn would_deadlock(files: &HashMap<Ino, FileLocks>, ino: Ino, want: &Lock) -> bool {
    let blockers = |state: &FileLocks, lock: &Lock| -> Vec<u64> {
        state.held.iter().filter(|h| h.lock.conflicts(lock)).map(|h| h.lock.owner).collect()
    };
    let mut stack = files.get(&ino).map(|s| blockers(s, want)).unwrap_or_default();
    let mut seen = HashSet::new();
    while let Some(owner) = stack.pop() {
        if owner == want.owner {
            return true;
        }
        if !seen.insert(owner) || seen.len() > DEADLOCK_SEARCH_OWNERS_MAX {
            continue;
        }
        for state in files.values() {
            for w in state.waiting.iter().filter(|w| w.request.lock.owner == owner) {
                stack.extend(blockers(state, &w.request.lock));
            }
        }
    }
    false
}

/// Whether thread `tid` has a pending signal that would interrupt a wait on a local
/// filesystem: not blocked, and caught, or fatal by default. A thread that is gone counts.
fn has_signal_to_take(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return true };
    let mask = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:");
    let bit = |sig: i32| 1u64 << (sig - 1);
    // Default action "stop" or "ignore": a local filesystem's wait would not end with EINTR.
    let harmless = [
        libc::SIGSTOP,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGCHLD,
        libc::SIGCONT,
        libc::SIGURG,
        libc::SIGWINCH,
    ]
    .into_iter()
    .fold(0u64, |m, s| m | bit(s));
    let takes = pending & (mask("SigCgt:") | !harmless) & !(mask("SigIgn:") & !bit(libc::SIGKILL));
    takes != 0
}

fn insert(held: &mut Vec<Held>, lock: Held) {
    remove_range(held, lock.lock.owner, lock.lock.start, lock.lock.end);
    held.push(lock);
}

/// Removes `[start, end]` from the owner's locks, splitting locks that straddle it.
fn remove_range(held: &mut Vec<Held>, owner: u64, start: u64, end: u64) {
    let mut kept = Vec::with_capacity(held.len());
    for h in held.drain(..) {
        let l = h.lock;
        if l.owner != owner || l.end < start || l.start > end {
            kept.push(h);
            continue;
        }
        if l.start < start {
            kept.push(Held { lock: Lock { end: start - 1, ..l }, ..h });
        }
        if l.end > end {
            kept.push(Held { lock: Lock { start: end + 1, ..l }, ..h });
        }
    }
    *held = kept;
}

fn grant_waiters(state: &mut FileLocks) {
    let mut still = Vec::new();
    for w in std::mem::take(&mut state.waiting) {
        if state.held.iter().any(|h| h.lock.conflicts(&w.request.lock)) {
            still.push(w);
        } else {
            insert(&mut state.held, Held { lock: w.request.lock, fh: w.request.fh });
            w.reply.ok();
        }
    }
    state.waiting = still;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_with_nothing_pending_is_left_waiting() {
        // This test's own thread has no pending signal.
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!has_signal_to_take(tid));
        assert!(has_signal_to_take(u32::MAX), "a thread that is gone ends its wait");
    }
}
