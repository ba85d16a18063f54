//! Open handles, and the per-file state writers share.
//!
//! A read-only handle pins one generation's manifest for its whole life (G2). All writable
//! handles of a file share one [`OpenFile`] and its draft, so cooperating writers see each
//! other's writes at once. A draft whose commit failed is never committed again (G5): a new
//! writer gets a fresh draft (a new epoch) and the handles of the failed epoch answer EIO.

use crate::store::records::{Ino, Manifest};
use crate::store::{Draft, Store, StoreResult};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct DraftSlot {
    pub draft: Draft,
    pub epoch: u64,
}

pub struct OpenFile {
    pub ino: Ino,
    pub slot: Mutex<DraftSlot>,
    writers: AtomicU64,
    /// chattr +i since it was opened: writes are refused from then on (fileattr.rs).
    pub immutable: AtomicBool,
}

pub struct Writer {
    pub file: Arc<OpenFile>,
    pub epoch: u64,
    pub append: bool,
    /// Who changed the draft through this handle since its last commit.
    pub changers: Mutex<Changers>,
    /// The only change since the last commit is the O_TRUNC of this handle's open.
    pub only_truncated: AtomicBool,
    /// The empty generation such a change committed: this handle's next commit replaces it.
    pub superseded: Mutex<Option<u64>>,
    /// Thread that opened it: an O_TRUNC arrives later as a handle-less SETATTR from it.
    pub opener_tid: u32,
}

/// What a change to a draft names as its author.
pub enum ChangedBy {
    /// A write(2): the file table it came through.
    LockOwner(u64),
    /// A truncate, fallocate or copy_file_range, which name only the calling thread.
    Thread(u32),
    /// Mapped pages written back, which name nobody.
    Writeback,
}

/// Who changed a draft through one handle since its last commit. A close commits only for one
/// of them: a process that merely inherited the descriptor (a fork whose exec closes it) must
/// not commit a file another process is halfway through writing.
#[derive(Default)]
pub struct Changers {
    /// File tables (FUSE lock owners) whose write(2)s reached the draft.
    owners: Vec<u64>,
    /// Threads that truncated or allocated: SETATTR and FALLOCATE name no lock owner.
    threads: Vec<u32>,
    /// Mapped pages written back: the kernel names no owner, so any close commits them.
    unattributed: bool,
}

impl Changers {
    pub fn any(&self) -> bool {
        self.unattributed || !self.owners.is_empty() || !self.threads.is_empty()
    }

    pub fn record(&mut self, by: ChangedBy) {
        match by {
            ChangedBy::LockOwner(o) if !self.owners.contains(&o) => self.owners.push(o),
            ChangedBy::Thread(t) if !self.threads.contains(&t) => self.threads.push(t),
            ChangedBy::Writeback => self.unattributed = true,
            _ => {}
        }
    }

    /// Whether a close by lock owner `owner` on thread `tid` is a changer's own close. A
    /// changing thread counts for its whole process; when either thread is gone that cannot be
    /// told, and the answer is yes: a commit too many is harmless, a close that commits nothing
    /// is not.
    pub fn include(&self, owner: u64, tid: u32) -> bool {
        if self.unattributed || self.owners.contains(&owner) || self.threads.contains(&tid) {
            return true;
        }
        if self.threads.is_empty() {
            return false;
        }
        let closer = thread_group(tid);
        self.threads.iter().any(|&t| match (thread_group(t), closer) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        })
    }
}

/// A field of /proc/TID/status (e.g. "Tgid:"), trimmed; None if the thread is gone.
fn proc_status(tid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string())
}

fn thread_group(tid: u32) -> Option<u32> {
    proc_status(tid, "Tgid:").and_then(|v| v.parse().ok())
}

/// The supplementary groups of a thread (empty if it is gone: permission checks then fall
/// back to its uid and gid).
pub(super) fn groups_of(tid: u32) -> Vec<u32> {
    proc_status(tid, "Groups:")
        .map(|v| v.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default()
}

pub enum HandleKind {
    /// Generation `gen` of the handle's file (or of a view's), read from `manifest`.
    Reader {
        gen: u64,
        manifest: Arc<Manifest>,
    },
    Writer(Writer),
}

pub struct Handle {
    pub nodeid: u64,
    pub ino: Ino,
    pub kind: HandleKind,
    /// Opened by the create that made the file: its close makes the new name durable (G4).
    pub created: bool,
}

impl Handle {
    pub fn writer(&self) -> Option<&Writer> {
        match &self.kind {
            HandleKind::Writer(w) => Some(w),
            HandleKind::Reader { .. } => None,
        }
    }
}

pub struct Handles {
    next: AtomicU64,
    map: RwLock<HashMap<u64, Arc<Handle>>>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles { next: AtomicU64::new(1), map: RwLock::new(HashMap::new()) }
    }
}

impl Handles {
    pub fn insert(&self, handle: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map.write().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.read().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<Handle>> {
        self.map.write().remove(&fh)
    }

    /// The newest writable handle on `nodeid` opened by thread `tid`.
    pub fn writer_opened_by(&self, nodeid: u64, tid: u32) -> Option<Arc<Handle>> {
        let map = self.map.read();
        map.iter()
            .filter(|(_, h)| h.nodeid == nodeid && h.writer().is_some_and(|w| w.opener_tid == tid))
            .max_by_key(|(fh, _)| **fh)
            .map(|(_, h)| h.clone())
    }
}

#[derive(Default)]
pub struct OpenFiles {
    map: Mutex<HashMap<Ino, Arc<OpenFile>>>,
}

impl OpenFiles {
    /// Joins (or starts) the file's shared draft; returns it and the epoch joined.
    pub fn join(&self, store: &Store, ino: Ino) -> StoreResult<(Arc<OpenFile>, u64)> {
        let mut map = self.map.lock();
        if let Some(file) = map.get(&ino) {
            let mut slot = file.slot.lock();
            if slot.draft.failed {
                slot.draft = store.new_draft(ino)?;
                slot.epoch += 1;
            }
            file.writers.fetch_add(1, Ordering::SeqCst);
            return Ok((file.clone(), slot.epoch));
        }
        let file = Arc::new(OpenFile {
            ino,
            slot: Mutex::new(DraftSlot { draft: store.new_draft(ino)?, epoch: 1 }),
            writers: AtomicU64::new(1),
            immutable: AtomicBool::new(false),
        });
        map.insert(ino, file.clone());
        Ok((file, 1))
    }

    /// A writer left; returns the file if it was the last one (its draft is then dropped).
    pub fn leave(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        let mut map = self.map.lock();
        let last = map.get(&ino).is_some_and(|f| f.writers.fetch_sub(1, Ordering::SeqCst) == 1);
        if last {
            map.remove(&ino)
        } else {
            None
        }
    }

    pub fn get(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.map.lock().get(&ino).cloned()
    }

    /// (file, base generation) of every open draft, where its untouched chunks come from,
    /// and the generations whose chunks it shares by a copy not yet committed.
    pub fn pinned(&self) -> Vec<(Ino, u64)> {
        let files: Vec<Arc<OpenFile>> = self.map.lock().values().cloned().collect();
        let mut pinned = Vec::with_capacity(files.len());
        for f in &files {
            let slot = f.slot.lock();
            pinned.push((f.ino, slot.draft.base_gen));
            pinned.extend_from_slice(&slot.draft.borrowed);
        }
        pinned
    }
}
