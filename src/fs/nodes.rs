//! Node ids: what the kernel's inodes (and their page caches) are keyed by.
//!
//! Directories, symlinks and special files use their store inode number as node id. A regular
//! file gets one node id per (file, generation), never reused, numbered from
//! [`FILE_NODE_BASE`]: a generation's bytes never change, so its cached pages stay valid
//! (`FOPEN_KEEP_CACHE`) and a lookup after a commit gets a fresh node.
//!
//! Writers get nodes of their own. The kernel inode of a node is shared by everyone who opens
//! it, and a writer's direct-I/O writes move that inode's i_size (fuse-mechanics §3.2), so a
//! node never has readers and writers at once:
//! - a writable open of a node that has open readers retires the node (later lookups get a
//!   fresh one) and fails with ESTALE, which makes the kernel redo the lookup and the open;
//! - a node once opened for writing is *tainted*: it is retired, and read-only opens of it fail
//!   with ESTALE the same way. Its attributes show the writers' draft.
//!
//! Kernel contract: every entry reply adds one lookup; FORGET subtracts; a node is dropped
//! when it has no lookups and no open handles.

use crate::store::records::{Ino, Manifest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

pub const FILE_NODE_BASE: u64 = 1 << 62;

#[derive(Clone)]
pub struct FileNode {
    pub ino: Ino,
    pub gen: u64,
    pub manifest: Arc<Manifest>,
    pub tainted: bool,
}

struct Node {
    file: FileNode,
    lookups: u64,
    readers: u32,
    writers: u32,
    /// Made because an earlier node of this generation was retired for a writer: a writer is
    /// let in even if a reader raced in first (the kernel retries an ESTALE open only once).
    second_chance: bool,
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// The node a lookup of (file, generation) returns, while there is one.
    current: HashMap<(Ino, u64), u64>,
    next: u64,
    retired: std::collections::HashSet<(Ino, u64)>,
}

pub struct Nodes {
    inner: Mutex<Inner>,
}

/// A node refused an open; the caller answers ESTALE so the kernel looks the name up again.
#[derive(Debug)]
pub struct Redirect;

impl Default for Nodes {
    fn default() -> Self {
        Nodes { inner: Mutex::new(Inner { next: FILE_NODE_BASE, ..Default::default() }) }
    }
}

impl Nodes {
    pub fn is_file_node(nodeid: u64) -> bool {
        nodeid >= FILE_NODE_BASE
    }

    /// The node a lookup of this generation returns; counts one lookup.
    pub fn lookup(&self, ino: Ino, gen: u64, manifest: impl FnOnce() -> Arc<Manifest>) -> u64 {
        let mut inner = self.inner.lock();
        if let Some(&id) = inner.current.get(&(ino, gen)) {
            if let Some(node) = inner.nodes.get_mut(&id) {
                node.lookups += 1;
                return id;
            }
        }
        let id = inner.next;
        inner.next += 1;
        let second_chance = inner.retired.remove(&(ino, gen));
        let file = FileNode { ino, gen, manifest: manifest(), tainted: false };
        inner.nodes.insert(id, Node { file, lookups: 1, readers: 0, writers: 0, second_chance });
        inner.current.insert((ino, gen), id);
        id
    }

    pub fn get(&self, nodeid: u64) -> Option<FileNode> {
        self.inner.lock().nodes.get(&nodeid).map(|n| n.file.clone())
    }

    pub fn forget(&self, nodeid: u64, count: u64) {
        let mut inner = self.inner.lock();
        if let Some(node) = inner.nodes.get_mut(&nodeid) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        inner.drop_if_unused(nodeid);
    }

    pub fn open_reader(&self, nodeid: u64) -> Result<FileNode, Redirect> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get_mut(&nodeid).ok_or(Redirect)?;
        if node.file.tainted {
            return Err(Redirect);
        }
        node.readers += 1;
        Ok(node.file.clone())
    }

    pub fn open_writer(&self, nodeid: u64) -> Result<FileNode, Redirect> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get_mut(&nodeid).ok_or(Redirect)?;
        let key = (node.file.ino, node.file.gen);
        if node.readers > 0 && !node.second_chance && !node.file.tainted {
            inner.retire(nodeid, key);
            return Err(Redirect);
        }
        node.writers += 1;
        node.file.tainted = true;
        let file = node.file.clone();
        inner.retire(nodeid, key);
        Ok(file)
    }

    pub fn close(&self, nodeid: u64, writer: bool) {
        let mut inner = self.inner.lock();
        if let Some(node) = inner.nodes.get_mut(&nodeid) {
            if writer {
                node.writers = node.writers.saturating_sub(1);
            } else {
                node.readers = node.readers.saturating_sub(1);
            }
        }
        inner.drop_if_unused(nodeid);
    }

    /// Node ids the kernel may hold for `ino` (for invalidations).
    pub fn nodes_of(&self, ino: Ino) -> Vec<u64> {
        let inner = self.inner.lock();
        inner.nodes.iter().filter(|(_, n)| n.file.ino == ino).map(|(id, _)| *id).collect()
    }

    /// The node a lookup would return right now, if any (readdir's d_ino).
    pub fn peek(&self, ino: Ino, gen: u64) -> Option<u64> {
        self.inner.lock().current.get(&(ino, gen)).copied()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn retire(&mut self, nodeid: u64, key: (Ino, u64)) {
        if self.current.get(&key) == Some(&nodeid) {
            self.current.remove(&key);
            self.retired.insert(key);
        }
    }

    fn drop_if_unused(&mut self, nodeid: u64) {
        let unused = matches!(self.nodes.get(&nodeid), Some(n) if n.lookups == 0 && n.readers == 0 && n.writers == 0);
        if unused {
            if let Some(node) = self.nodes.remove(&nodeid) {
                let key = (node.file.ino, node.file.gen);
                if self.current.get(&key) == Some(&nodeid) {
                    self.current.remove(&key);
                } else if node.file.tainted || node.writers > 0 {
                    // Its retry (if any) is long done.
                    self.retired.remove(&key);
                }
            }
        }
    }
}
