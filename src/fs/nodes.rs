//! Node ids: what the kernel's inodes (and their page caches) are keyed by.
//!
//! Directories, symlinks and special files use their store inode number as node id. A regular
//! file gets one node id per (file, generation), never reused, numbered from
//! [`FILE_NODE_BASE`]: a generation's bytes never change, so its cached pages stay valid
//! (`FOPEN_KEEP_CACHE`) and a lookup after a commit gets a fresh node.
//!
//! Writers get nodes of their own. The kernel inode of a node is shared by everyone who opens
//! it, and a writer moves that inode's i_size (direct-I/O writes, O_TRUNC), so a node never
//! has readers and writers at once (fuse-mechanics §3.2):
//! - a writable open of a node that has open readers fails with ESTALE, which makes the kernel
//!   look the name up again and retry the open once. The retry's lookups come from the same
//!   thread, and are answered with a node private to that writer, which no other lookup
//!   returns; a new file's node (from create) is private from the start;
//! - a node once opened for writing is *tainted*: it leaves the lookup table, and read-only
//!   opens of it fail with ESTALE the same way; the reader's retry lookups get a private node
//!   too, so no writer can taint it between the reader's lookup and its open. A tainted node's
//!   attributes show the writers' draft.
//!
//! A writer without readers keeps the node its lookup returned, so `fstat` of its descriptor
//! and `stat` of the path agree on st_ino (vim and secure-open idioms compare them).
//!
//! Kernel contract: every entry reply adds one lookup; FORGET subtracts; a node is dropped
//! when it has no lookups and no open handles.

use crate::store::records::{Ino, Manifest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

/// A writer sent back to look the name up again: its thread's lookups of that generation get
/// `node` (made on the first of them) until it opens it or the redirect expires.
struct Redirected {
    node: Option<u64>,
    since: Instant,
}

/// The kernel retries at once; anything older is stale.
const REDIRECT_LIFETIME: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// The node a lookup of (file, generation) returns, while there is one.
    current: HashMap<(Ino, u64), u64>,
    /// Keyed by (file, thread), not generation: a rename-over renumbers generations between
    /// the refused open and its retry.
    redirected: HashMap<(Ino, u32), Redirected>,
    next: u64,
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

    /// A node for a file the caller just created and opens for writing: private at once.
    pub fn created(&self, ino: Ino, manifest: Arc<Manifest>) -> u64 {
        self.inner.lock().insert(ino, 0, manifest)
    }

    /// The node a lookup of this generation by thread `tid` returns; counts one lookup.
    pub fn lookup(&self, ino: Ino, gen: u64, tid: u32, manifest: Arc<Manifest>) -> u64 {
        let mut inner = self.inner.lock();
        inner.redirected.retain(|_, r| r.since.elapsed() < REDIRECT_LIFETIME);
        if let Some(r) = inner.redirected.get(&(ino, tid)) {
            if let Some(id) = r.node.filter(|id| inner.nodes.contains_key(id)) {
                inner.bump(id);
                return id;
            }
            let id = inner.insert(ino, gen, manifest);
            if let Some(r) = inner.redirected.get_mut(&(ino, tid)) {
                r.node = Some(id);
            }
            return id;
        }
        if let Some(&id) = inner.current.get(&(ino, gen)) {
            if inner.nodes.contains_key(&id) {
                inner.bump(id);
                return id;
            }
        }
        let id = inner.insert(ino, gen, manifest);
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

    pub fn open_reader(&self, nodeid: u64, tid: u32) -> Result<FileNode, Redirect> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get_mut(&nodeid).ok_or(Redirect)?;
        let ino = node.file.ino;
        if node.file.tainted {
            // The retry's lookups get a private node, which no writer's lookup can reach.
            inner.redirected.insert((ino, tid), Redirected { node: None, since: Instant::now() });
            return Err(Redirect);
        }
        node.readers += 1;
        let file = node.file.clone();
        inner.redirected.remove(&(ino, tid));
        Ok(file)
    }

    pub fn open_writer(&self, nodeid: u64, tid: u32) -> Result<FileNode, Redirect> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get(&nodeid).ok_or(Redirect)?;
        let (ino, gen, readers) = (node.file.ino, node.file.gen, node.readers);
        let retry = inner.redirected.contains_key(&(ino, tid));
        if readers > 0 && !node.file.tainted && !retry {
            let since = Instant::now();
            inner.redirected.insert((ino, tid), Redirected { node: None, since });
            return Err(Redirect);
        }
        // On the retry a reader may still have reached this node (the kernel shares a lookup
        // in flight between threads and retries only once): the writer is let in, and the node
        // reports its generation's attributes while readers remain.
        let node = inner.nodes.get_mut(&nodeid).ok_or(Redirect)?;
        node.writers += 1;
        node.file.tainted = true;
        let file = node.file.clone();
        if inner.current.get(&(ino, gen)) == Some(&nodeid) {
            inner.current.remove(&(ino, gen));
        }
        inner.redirected.remove(&(ino, tid));
        Ok(file)
    }

    /// A fresh node id from the same never-reused counter (for view nodes).
    pub fn alloc_id(&self) -> u64 {
        let mut inner = self.inner.lock();
        let id = inner.next;
        inner.next += 1;
        id
    }

    /// (file, generation) of every node the kernel or a handle still uses (gc keeps them).
    pub fn pinned(&self) -> Vec<(Ino, u64)> {
        self.inner.lock().nodes.values().map(|n| (n.file.ino, n.file.gen)).collect()
    }

    pub fn has_readers(&self, nodeid: u64) -> bool {
        self.inner.lock().nodes.get(&nodeid).is_some_and(|n| n.readers > 0)
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
    fn insert(&mut self, ino: Ino, gen: u64, manifest: Arc<Manifest>) -> u64 {
        let id = self.next;
        self.next += 1;
        let file = FileNode { ino, gen, manifest, tainted: false };
        self.nodes.insert(id, Node { file, lookups: 1, readers: 0, writers: 0 });
        id
    }

    fn bump(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&id) {
            node.lookups += 1;
        }
    }

    fn drop_if_unused(&mut self, nodeid: u64) {
        let unused =
            matches!(self.nodes.get(&nodeid), Some(n) if n.lookups == 0 && n.readers == 0 && n.writers == 0);
        if unused {
            if let Some(node) = self.nodes.remove(&nodeid) {
                let key = (node.file.ino, node.file.gen);
                if self.current.get(&key) == Some(&nodeid) {
                    self.current.remove(&key);
                }
            }
        }
    }
}
