//! Node ids: what the kernel keys its inodes by, and with them its page caches, attribute
//! caches and shared mappings (docs/design.md, "One file, one identity").
//!
//! A file is one identity to programs: every attribute reply carries its store inode number as
//! st_ino, and the daemon keeps its locks and its shared draft. But a file may have several
//! kernel inodes (*nodes*) at once, because a page cache must never mix generations (G2):
//! - **reader nodes**: one per generation being read. A lookup of the current generation returns
//!   its public node; a generation's bytes never change, so its cached pages stay valid
//!   (`FOPEN_KEEP_CACHE`) and readers of an old generation keep theirs after a commit.
//! - **one writer node**: every writable handle of the file sits on it while any is open, so
//!   writers share one address space (`MAP_SHARED` is coherent among them, mapped pages and
//!   `write(2)` go through one page cache) and readers never see a writer's i_size or pages.
//!
//! Routing: an open that would mix roles fails with ESTALE; the kernel walks the path again
//! with `LOOKUP_REVAL` and retries once, and the refused thread's lookups of that file (keyed by
//! file and `Request::pid`) return a node for its role: the writer node (made if there is none
//! yet), or a reader node reserved for it that refuses writers for life. Under `LOOKUP_REVAL`
//! the kernel revalidates every dentry the walk meets by asking us, so the retry opens only the
//! node our answer names. A node once opened for writing is *tainted*: it leaves the lookup
//! table and refuses readers. A writable open of a node without readers makes it the writer
//! node when the file has no active one, so a lone writer costs no retry.
//!
//! Node ids are a function of (file, slot). Slot 0, the *primary* node, uses the inode number
//! itself, so that in the common case of one node per file entry replies (which fuser 0.18 sends
//! with st_ino = node id) already carry the right st_ino. Other slots are
//! `FILE_NODE_BASE | ino << SLOT_BITS | slot`; their entry replies say "attributes expire at
//! once", so the kernel asks GETATTR, whose reply carries the store inode number. A slot is
//! reused only after the kernel forgot its node, which is what lets a file handle
//! (`name_to_handle_at`) name its file for the file's life: a LOOKUP of "." on a forgotten node
//! id binds that slot to the file's current generation again.
//!
//! Kernel contract: every entry reply adds one lookup; FORGET subtracts; a node is dropped when
//! it has no lookups and no open handles (the kernel has then evicted its inode).

use super::small_map::SmallMap;
use crate::store::records::{Ino, Manifest};
use crate::store::{StoreError, StoreResult};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Node ids of non-primary file nodes start here; view nodes start at `1 << 63`.
pub const FILE_NODE_BASE: u64 = 1 << 62;
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Inode numbers above this cannot have more than their primary node.
const INO_MAX: u64 = (1 << (62 - SLOT_BITS)) - 1;
const VIEW_NODE_BASE: u64 = 1 << 63;
const _: () = assert!(INO_MAX < FILE_NODE_BASE && FILE_NODE_BASE < VIEW_NODE_BASE);

/// The node id of `slot` of file `ino`.
fn node_id(ino: Ino, slot: u32) -> u64 {
    if slot == 0 {
        ino
    } else {
        FILE_NODE_BASE | ino << SLOT_BITS | slot as u64
    }
}

/// (file, slot) a node id names if it is a file node; ids below `FILE_NODE_BASE` are primary
/// nodes of files or the nodes of directories and other inodes, which use their inode number.
fn slot_of(nodeid: u64) -> (Ino, u32) {
    if (FILE_NODE_BASE..VIEW_NODE_BASE).contains(&nodeid) {
        ((nodeid - FILE_NODE_BASE) >> SLOT_BITS, (nodeid & SLOT_MASK) as u32)
    } else {
        (nodeid, 0)
    }
}

/// The inode a file node id names (for a primary node, or anything below `FILE_NODE_BASE`:
/// the id itself).
pub fn file_of(nodeid: u64) -> Ino {
    slot_of(nodeid).0
}

/// Whether `nodeid` can only be a (non-primary) file node.
pub fn is_secondary(nodeid: u64) -> bool {
    (FILE_NODE_BASE..VIEW_NODE_BASE).contains(&nodeid)
}

/// What a node shows: a generation of a file.
#[derive(Clone)]
pub struct FileNode {
    pub ino: Ino,
    pub gen: u64,
    pub manifest: Arc<Manifest>,
    /// Opened for writing once: its attributes show the writers' draft.
    pub tainted: bool,
}

struct Node {
    gen: u64,
    manifest: Arc<Manifest>,
    lookups: u64,
    readers: u32,
    writers: u32,
    tainted: bool,
    /// Made for a refused reader's retry: refuses writers.
    readers_only: bool,
    /// The public reader node of its generation (lookups of that generation return it).
    public: bool,
    /// The file's writer node.
    writer: bool,
}

impl Node {
    fn new(gen: u64, manifest: Arc<Manifest>) -> Node {
        Node {
            gen,
            manifest,
            lookups: 1,
            readers: 0,
            writers: 0,
            tainted: false,
            readers_only: false,
            public: false,
            writer: false,
        }
    }

    fn unused(&self) -> bool {
        self.lookups == 0 && self.readers == 0 && self.writers == 0
    }
}

/// The nodes of one file. Which is public or the writer is a flag of the node, not a table
/// of its own: one small vector per file the kernel caches, which at a million files is most
/// of the daemon's memory.
#[derive(Default)]
struct FileNodes {
    nodes: SmallMap<u32, Node>,
}

impl FileNodes {
    /// The public reader node of generation `gen`.
    fn current(&self, gen: u64) -> Option<u32> {
        self.nodes.find(|n| n.public && n.gen == gen)
    }

    fn set_current(&mut self, gen: u64, slot: u32) {
        for (s, n) in self.nodes.iter_mut().filter(|(_, n)| n.gen == gen) {
            n.public = *s == slot;
        }
    }

    /// The writer node, while it lives.
    fn writer(&self) -> Option<u32> {
        self.nodes.find(|n| n.writer)
    }

    /// Makes `slot` the writer node (tainted: it never serves readers again).
    fn set_writer(&mut self, slot: u32) {
        for (s, n) in self.nodes.iter_mut() {
            n.writer = *s == slot;
            if n.writer {
                n.tainted = true;
                n.public = false;
            }
        }
    }

    fn free_slot(&self) -> Option<u32> {
        if !self.nodes.contains_key(&0) {
            return Some(0);
        }
        // Slots are dense from 1 in practice; the first gap is free.
        let mut want = 1u32;
        for &slot in self.nodes.keys().filter(|&&s| s > 0) {
            if slot != want {
                break;
            }
            want += 1;
        }
        (want as u64 <= SLOT_MASK).then_some(want)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Reader,
    Writer,
}

/// A thread refused an open and sent back to look the name up again: its lookups of that file
/// get a node for `role` until it opens one.
struct Redirected {
    role: Role,
    /// The reader node reserved for it (made on its first lookup).
    node: Option<u32>,
    since: Instant,
}

/// The kernel retries at once. A redirect left over (the retry failed for another reason)
/// costs that thread at most one more refusal, so expiry only bounds the table.
const REDIRECT_LIFETIME: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Inner {
    files: HashMap<Ino, FileNodes>,
    /// Keyed by (file, thread), not generation: a rename-over renumbers generations between
    /// the refused open and its retry.
    redirected: HashMap<(Ino, u32), Redirected>,
}

#[derive(Default)]
pub struct Nodes {
    inner: Mutex<Inner>,
}

/// A node refused an open; the caller answers ESTALE so the kernel looks the name up again.
#[derive(Debug)]
pub struct Redirect;

fn exhausted(ino: Ino) -> StoreError {
    let cause = std::io::Error::from_raw_os_error(libc::ENFILE);
    StoreError::io(format!("inode {ino}: no free kernel node id (too many generations open at once)"), cause)
}

impl Nodes {
    /// The node of a file the caller just created and is opening: the writer node if it opens
    /// for writing, else the public node of the empty generation.
    pub fn created(&self, ino: Ino, writable: bool) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let file = inner.files.entry(ino).or_default();
        let slot = insert(file, ino, 0, Manifest::shared_empty())?;
        if writable {
            file.set_writer(slot);
        } else {
            file.set_current(0, slot);
        }
        Ok(node_id(ino, slot))
    }

    /// The node a lookup of generation `gen` by thread `tid` returns; counts one lookup.
    /// `manifest` is read only when a node has to be made.
    pub fn lookup(
        &self,
        ino: Ino,
        gen: u64,
        tid: u32,
        manifest: impl FnOnce() -> StoreResult<Arc<Manifest>>,
    ) -> StoreResult<u64> {
        let mut inner = self.inner.lock();
        let Inner { files, redirected } = &mut *inner;
        redirected.retain(|_, r| r.since.elapsed() < REDIRECT_LIFETIME);
        let file = files.entry(ino).or_default();
        let slot = match redirected.get_mut(&(ino, tid)) {
            Some(r) if r.role == Role::Writer => match file.writer() {
                Some(w) => {
                    r.node = Some(w);
                    bump(file, w)
                }
                None => {
                    let w = insert(file, ino, gen, manifest()?)?;
                    file.set_writer(w);
                    r.node = Some(w);
                    w
                }
            },
            Some(r) => {
                // Only a node of the generation asked for: a commit in between makes a new one.
                match r.node.filter(|s| file.nodes.get(s).is_some_and(|n| n.gen == gen)) {
                    Some(reserved) => bump(file, reserved),
                    None => {
                        let reserved = insert(file, ino, gen, manifest()?)?;
                        if let Some(node) = file.nodes.get_mut(&reserved) {
                            node.readers_only = true;
                        }
                        r.node = Some(reserved);
                        reserved
                    }
                }
            }
            None => match file.current(gen) {
                Some(c) => bump(file, c),
                None => {
                    let c = insert(file, ino, gen, manifest()?)?;
                    file.set_current(gen, c);
                    c
                }
            },
        };
        Ok(node_id(ino, slot))
    }

    /// A LOOKUP of "." on `nodeid` (a file handle whose node the kernel dropped): the node
    /// again, bound to generation `gen` if it was forgotten here too; counts one lookup.
    pub fn rebind(
        &self,
        nodeid: u64,
        gen: u64,
        manifest: impl FnOnce() -> StoreResult<Arc<Manifest>>,
    ) -> StoreResult<u64> {
        let (ino, slot) = slot_of(nodeid);
        let mut inner = self.inner.lock();
        let file = inner.files.entry(ino).or_default();
        match file.nodes.get_mut(&slot) {
            Some(node) => node.lookups += 1,
            None => {
                file.nodes.insert(slot, Node::new(gen, manifest()?));
                if file.current(gen).is_none() {
                    file.set_current(gen, slot);
                }
            }
        }
        Ok(nodeid)
    }

    pub fn get(&self, nodeid: u64) -> Option<FileNode> {
        let (ino, slot) = slot_of(nodeid);
        let inner = self.inner.lock();
        let node = inner.files.get(&ino)?.nodes.get(&slot)?;
        Some(FileNode { ino, gen: node.gen, manifest: node.manifest.clone(), tainted: node.tainted })
    }

    pub fn forget(&self, nodeid: u64, count: u64) {
        self.update(nodeid, |node| node.lookups = node.lookups.saturating_sub(count));
    }

    pub fn open_reader(&self, nodeid: u64, tid: u32) -> Result<FileNode, Redirect> {
        let (ino, slot) = slot_of(nodeid);
        let mut inner = self.inner.lock();
        let Inner { files, redirected } = &mut *inner;
        let node = files.get_mut(&ino).and_then(|f| f.nodes.get_mut(&slot)).ok_or(Redirect)?;
        if node.tainted {
            return Err(redirect(redirected, ino, tid, Role::Reader));
        }
        node.readers += 1;
        let opened = FileNode { ino, gen: node.gen, manifest: node.manifest.clone(), tainted: false };
        redirected.remove(&(ino, tid));
        Ok(opened)
    }

    pub fn open_writer(&self, nodeid: u64, tid: u32) -> Result<FileNode, Redirect> {
        let (ino, slot) = slot_of(nodeid);
        let mut inner = self.inner.lock();
        let Inner { files, redirected } = &mut *inner;
        let file = files.get_mut(&ino).ok_or(Redirect)?;
        // The writer node stays the writers' while one has it open or a redirected thread is
        // on its way to it; otherwise any node without readers may take over.
        let active_writer = file.writer().filter(|&w| {
            file.nodes.get(&w).is_some_and(|n| n.writers > 0)
                || redirected
                    .iter()
                    .any(|(&(i, _), r)| i == ino && r.role == Role::Writer && r.node == Some(w))
        });
        let node = file.nodes.get_mut(&slot).ok_or(Redirect)?;
        let joins = match active_writer {
            Some(w) => w == slot,
            None => node.readers == 0 && !node.readers_only,
        };
        if !joins {
            return Err(redirect(redirected, ino, tid, Role::Writer));
        }
        node.writers += 1;
        let opened = FileNode { ino, gen: node.gen, manifest: node.manifest.clone(), tainted: true };
        file.set_writer(slot);
        redirected.remove(&(ino, tid));
        Ok(opened)
    }

    /// Adds (file, generation) of every node the kernel or a handle still uses (gc keeps them)
    /// to `pinned`, grown once: at a million nodes a doubling vector peaks at three times this.
    pub fn add_pinned(&self, pinned: &mut Vec<(Ino, u64)>) {
        let inner = self.inner.lock();
        pinned.reserve_exact(inner.files.values().map(|f| f.nodes.len()).sum());
        pinned.extend(inner.files.iter().flat_map(|(ino, f)| f.nodes.values().map(|n| (*ino, n.gen))));
    }

    pub fn close(&self, nodeid: u64, writer: bool) {
        self.update(nodeid, |node| {
            if writer {
                node.writers = node.writers.saturating_sub(1);
            } else {
                node.readers = node.readers.saturating_sub(1);
            }
        });
    }

    /// Node ids the kernel may hold for `ino` (for invalidations).
    pub fn nodes_of(&self, ino: Ino) -> Vec<u64> {
        let inner = self.inner.lock();
        inner.files.get(&ino).map(|f| f.nodes.keys().map(|&s| node_id(ino, s)).collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().files.values().map(|f| f.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes one node's counts, then drops it (and its file's entry) if nothing uses it.
    fn update(&self, nodeid: u64, change: impl FnOnce(&mut Node)) {
        let (ino, slot) = slot_of(nodeid);
        let mut inner = self.inner.lock();
        let Inner { files, redirected } = &mut *inner;
        let Some(file) = files.get_mut(&ino) else { return };
        let Some(node) = file.nodes.get_mut(&slot) else { return };
        change(node);
        if !node.unused() {
            return;
        }
        // Nothing may name the slot any more (its flags go with it): it can be given to
        // another node at once.
        file.nodes.remove(&slot);
        for (_, r) in redirected.iter_mut().filter(|((i, _), r)| *i == ino && r.node == Some(slot)) {
            r.node = None;
        }
        if file.nodes.is_empty() {
            files.remove(&ino);
        }
    }
}

/// Refuses `tid`'s open; its retry's lookups of `ino` get a node for `role`.
fn redirect(redirected: &mut HashMap<(Ino, u32), Redirected>, ino: Ino, tid: u32, role: Role) -> Redirect {
    redirected.insert((ino, tid), Redirected { role, node: None, since: Instant::now() });
    tracing::debug!("open of file {ino} by thread {tid} as {role:?} refused: retry on a node for its role");
    Redirect
}

/// A new node of generation `gen` in the file's first free slot, with one lookup.
fn insert(file: &mut FileNodes, ino: Ino, gen: u64, manifest: Arc<Manifest>) -> StoreResult<u32> {
    let slot = file.free_slot().filter(|&s| s == 0 || ino <= INO_MAX).ok_or_else(|| exhausted(ino))?;
    file.nodes.insert(slot, Node::new(gen, manifest));
    Ok(slot)
}

fn bump(file: &mut FileNodes, slot: u32) -> u32 {
    if let Some(node) = file.nodes.get_mut(&slot) {
        node.lookups += 1;
    }
    slot
}

/// Node ids for views (`/.genfs/...`), from a range no file or directory uses.
pub struct ViewIds(std::sync::atomic::AtomicU64);

impl Default for ViewIds {
    fn default() -> Self {
        ViewIds(std::sync::atomic::AtomicU64::new(VIEW_NODE_BASE))
    }
}

impl ViewIds {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty() -> StoreResult<Arc<Manifest>> {
        Ok(Manifest::shared_empty())
    }

    #[test]
    fn the_first_node_of_a_file_is_its_inode_number_and_slots_are_reused_after_forget() {
        let nodes = Nodes::default();
        let a = nodes.lookup(7, 1, 100, empty).unwrap();
        assert_eq!(a, 7);
        assert_eq!(nodes.lookup(7, 1, 101, empty).unwrap(), 7, "one public node per generation");
        let b = nodes.lookup(7, 2, 100, empty).unwrap();
        assert!(is_secondary(b));
        assert_eq!(slot_of(b), (7, 1));
        nodes.forget(b, 1);
        assert_eq!(nodes.lookup(7, 3, 100, empty).unwrap(), b, "slot 1 is free again");
        nodes.forget(a, 2);
        assert!(nodes.get(a).is_none());
    }

    #[test]
    fn all_writers_share_one_node_and_readers_never_join_it() {
        let nodes = Nodes::default();
        let public = nodes.lookup(9, 1, 1, empty).unwrap();
        nodes.open_reader(public, 1).unwrap();
        // A writer cannot share the readers' node: it is sent to the writer node.
        assert!(nodes.open_writer(public, 2).is_err());
        let w = nodes.lookup(9, 1, 2, empty).unwrap();
        assert_ne!(w, public);
        nodes.open_writer(w, 2).unwrap();
        // A second writer, which looked up the public node, joins the same writer node.
        assert!(nodes.open_writer(public, 3).is_err());
        assert_eq!(nodes.lookup(9, 1, 3, empty).unwrap(), w);
        nodes.open_writer(w, 3).unwrap();
        // A reader reaching the writer node is sent to a node of its own.
        assert!(nodes.open_reader(w, 4).is_err());
        let r = nodes.lookup(9, 1, 4, empty).unwrap();
        assert!(r != w && r != public);
        nodes.open_reader(r, 4).unwrap();
        assert!(nodes.open_writer(r, 5).is_err(), "a reserved reader node refuses writers");
    }

    #[test]
    fn a_lone_writer_takes_the_node_it_looked_up() {
        let nodes = Nodes::default();
        let n = nodes.lookup(3, 1, 1, empty).unwrap();
        assert!(nodes.open_writer(n, 1).unwrap().tainted);
        nodes.close(n, true);
        // The next lookup of the committed generation gets a fresh public node.
        let fresh = nodes.lookup(3, 2, 1, empty).unwrap();
        assert_ne!(fresh, n);
        // The old writer node has no writers: a new writer may take the public node.
        nodes.open_writer(fresh, 1).unwrap();
    }

    #[test]
    fn a_reserved_slot_given_to_another_node_is_not_handed_to_the_redirected_thread() {
        let nodes = Nodes::default();
        let n = nodes.lookup(9, 1, 1, empty).unwrap();
        nodes.open_writer(n, 1).unwrap();
        assert!(nodes.open_reader(n, 2).is_err());
        let reserved = nodes.lookup(9, 1, 2, empty).unwrap();
        // The kernel drops that entry (a revalidation named another node) before the retry...
        nodes.forget(reserved, 1);
        nodes.close(n, true);
        // ...and the freed slot becomes another thread's writer node.
        let other = nodes.lookup(9, 1, 3, empty).unwrap();
        assert_eq!(other, reserved, "the slot is reused");
        nodes.open_writer(other, 3).unwrap();
        let retry = nodes.lookup(9, 1, 2, empty).unwrap();
        assert_ne!(retry, other);
        nodes.open_reader(retry, 2).expect("the retry reaches a reader's node");
    }

    #[test]
    fn a_handle_lookup_rebinds_a_forgotten_slot_to_the_current_generation() {
        let nodes = Nodes::default();
        let id = node_id(5, 3);
        assert_eq!(nodes.rebind(id, 4, empty).unwrap(), id);
        assert_eq!(nodes.get(id).map(|n| (n.ino, n.gen)), Some((5, 4)));
        assert_eq!(nodes.lookup(5, 4, 1, empty).unwrap(), id, "it became the public node");
    }
}
