//! Node ids: what the kernel's inodes (and their page caches) are keyed by.
//!
//! Directories, symlinks and special files use their store inode number as node id. A regular
//! file gets one node id per (file, generation), never reused, numbered from
//! [`FILE_NODE_BASE`]: a generation's bytes never change, so its cached pages stay valid
//! (`FOPEN_KEEP_CACHE`) and a lookup after a commit gets a fresh node.
//!
//! Readers and writers never share a node. The kernel inode of a node is shared by everyone
//! who opens it, and a writer moves that inode's i_size (direct-I/O writes, O_TRUNC), which a
//! reader of the same inode would see (fuse-mechanics §3.2). An open that would mix them fails
//! with ESTALE; the kernel then walks the path again with `LOOKUP_REVAL` and retries once:
//! - a writable open of a node that has readers, or of a node reserved for a reader, is refused;
//! - a node once opened for writing is *tainted*: it leaves the lookup table and refuses
//!   read-only opens; its attributes show the writers' draft;
//! - the refused thread's lookups of that file then return a node reserved for its role, made
//!   for it and in no lookup table: a writer's is tainted from birth, a reader's refuses writers
//!   for life. Another thread can still reach it through the dentry, but only in a role it
//!   accepts, so it stays good for the retry. The retry always reaches it: under
//!   `LOOKUP_REVAL` the kernel revalidates every dentry the walk meets by asking us, even one
//!   another thread's lookup filled in, and takes a dentry only when our answer names its node.
//!   A new file's node comes straight from create, opened by its creator.
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
    /// Made for a refused reader's retry: refuses writers.
    readers_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Reader,
    Writer,
}

/// A thread refused an open and sent back to look the name up again: its lookups of that file
/// get `node`, reserved for `role` (made on the first of them), until it opens it.
struct Redirected {
    role: Role,
    node: Option<u64>,
    since: Instant,
}

/// The kernel retries at once. A redirect left over (the retry failed for another reason)
/// costs that thread at most one more refusal, so expiry only bounds the table.
const REDIRECT_LIFETIME: Duration = Duration::from_secs(10);

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
            let role = r.role;
            // Only a node of the generation asked for: a commit in between makes a new one.
            let reserved = r.node.filter(|id| inner.nodes.get(id).is_some_and(|n| n.file.gen == gen));
            if let Some(id) = reserved {
                inner.bump(id);
                return id;
            }
            let id = inner.insert(ino, gen, manifest);
            if let Some(node) = inner.nodes.get_mut(&id) {
                node.file.tainted = role == Role::Writer;
                node.readers_only = role == Role::Reader;
            }
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
            return Err(inner.redirect(ino, tid, Role::Reader));
        }
        node.readers += 1;
        let file = node.file.clone();
        inner.redirected.remove(&(ino, tid));
        Ok(file)
    }

    pub fn open_writer(&self, nodeid: u64, tid: u32) -> Result<FileNode, Redirect> {
        let mut inner = self.inner.lock();
        let node = inner.nodes.get_mut(&nodeid).ok_or(Redirect)?;
        let (ino, gen) = (node.file.ino, node.file.gen);
        if node.readers > 0 || node.readers_only {
            return Err(inner.redirect(ino, tid, Role::Writer));
        }
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
        self.nodes.insert(id, Node { file, lookups: 1, readers: 0, writers: 0, readers_only: false });
        id
    }

    /// Refuses `tid`'s open; its retry's lookups of `ino` get a node reserved for `role`.
    fn redirect(&mut self, ino: Ino, tid: u32, role: Role) -> Redirect {
        let since = Instant::now();
        self.redirected.insert((ino, tid), Redirected { role, node: None, since });
        tracing::debug!("open of file {ino} by thread {tid} as {role:?} refused: retry on a reserved node");
        Redirect
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
