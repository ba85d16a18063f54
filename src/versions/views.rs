//! Node ids of the read-only views under `/.genfs/`. The four fixed directories have fixed
//! ids; everything below them gets ids from the file-node counter, kept in this table with
//! lookup counts like file nodes. Views never change, so the kernel may cache them freely.
//! A cached view pins nothing: gc keeps only the generations of views open in a descriptor.

use crate::store::records::{Ino, Manifest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

const FIXED_BASE: u64 = 1 << 61;
pub const GENFS_DIR: u64 = FIXED_BASE + 1;
pub const GEN_DIR: u64 = FIXED_BASE + 2;
pub const SNAPSHOTS_DIR: u64 = FIXED_BASE + 3;
pub const AT_DIR: u64 = FIXED_BASE + 4;

#[derive(Clone)]
pub enum View {
    /// One of the four fixed directories.
    Fixed(u64),
    /// `.genfs/gen/INO`: the generations of one file.
    Generations { ino: Ino },
    /// A directory as of sequence number `seq`.
    Dir { seq: u64, ino: Ino },
    /// A generation of a file, read-only.
    File { ino: Ino, gen: u64, manifest: Arc<Manifest> },
    /// A symlink or special file as of `seq`.
    Other { seq: u64, ino: Ino },
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Generations(Ino),
    Dir(u64, Ino),
    File(Ino, u64),
    Other(u64, Ino),
}

fn key(v: &View) -> Option<Key> {
    match v {
        View::Fixed(_) => None,
        View::Generations { ino } => Some(Key::Generations(*ino)),
        View::Dir { seq, ino } => Some(Key::Dir(*seq, *ino)),
        View::File { ino, gen, .. } => Some(Key::File(*ino, *gen)),
        View::Other { seq, ino } => Some(Key::Other(*seq, *ino)),
    }
}

pub fn is_fixed(nodeid: u64) -> bool {
    (GENFS_DIR..=AT_DIR).contains(&nodeid)
}

struct Entry {
    view: View,
    lookups: u64,
    opens: u64,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Entry>,
    ids: HashMap<Key, u64>,
}

#[derive(Default)]
pub struct Views {
    inner: Mutex<Inner>,
}

impl Views {
    /// The node id for `view` (allocated with `alloc` if new); counts one lookup.
    pub fn lookup(&self, view: View, alloc: impl FnOnce() -> u64) -> u64 {
        let Some(k) = key(&view) else {
            return match view {
                View::Fixed(id) => id,
                _ => 0,
            };
        };
        let mut inner = self.inner.lock();
        if let Some(&id) = inner.ids.get(&k) {
            if let Some(entry) = inner.nodes.get_mut(&id) {
                entry.lookups += 1;
                return id;
            }
        }
        let id = alloc();
        inner.nodes.insert(id, Entry { view, lookups: 1, opens: 0 });
        inner.ids.insert(k, id);
        id
    }

    pub fn get(&self, nodeid: u64) -> Option<View> {
        if is_fixed(nodeid) {
            return Some(View::Fixed(nodeid));
        }
        self.inner.lock().nodes.get(&nodeid).map(|e| e.view.clone())
    }

    /// Counts an open descriptor of a view node (it pins its generation until `close`).
    pub fn open(&self, nodeid: u64) {
        if let Some(entry) = self.inner.lock().nodes.get_mut(&nodeid) {
            entry.opens += 1;
        }
    }

    pub fn close(&self, nodeid: u64) {
        if let Some(entry) = self.inner.lock().nodes.get_mut(&nodeid) {
            entry.opens = entry.opens.saturating_sub(1);
        }
    }

    pub fn forget(&self, nodeid: u64, count: u64) {
        let mut inner = self.inner.lock();
        let gone = match inner.nodes.get_mut(&nodeid) {
            Some(entry) => {
                entry.lookups = entry.lookups.saturating_sub(count);
                entry.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(entry) = inner.nodes.remove(&nodeid) {
                if let Some(k) = key(&entry.view) {
                    inner.ids.remove(&k);
                }
            }
        }
    }

    /// (inode, generation) of every generation open through a view (gc must keep them).
    pub fn pinned(&self) -> Vec<(Ino, u64)> {
        let inner = self.inner.lock();
        inner
            .nodes
            .values()
            .filter_map(|e| match e.view {
                View::File { ino, gen, .. } if e.opens > 0 => Some((ino, gen)),
                _ => None,
            })
            .collect()
    }
}
