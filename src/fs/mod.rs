//! The fuser `Filesystem`: unpacks requests, calls the store, replies. Node ids and kernel
//! caching live in `nodes`, open handles and shared drafts in `handles`, record locks in `locks`.
//!
//! Threading rule (fuse-mechanics §2.4): request threads never send kernel notifications. Work
//! that must invalidate kernel entries (every commit, a writable open) runs on a commit worker
//! that owns the reply: it commits durably, sends `inval_entry` for every name of the file, then
//! replies. Replies that wait only for other nodes' attributes to be invalidated (a chmod, link,
//! unlink or rename of a file with several nodes) go to a pool of their own: a commit worker can
//! wait in `inval_entry` for a directory lock that such a request holds.

mod acl;
pub mod atime;
mod attr;
mod fileattr;
mod handles;
mod listings;
mod locks;
pub mod nodes;
mod small_map;
mod space;
mod version_xattrs;
mod view_ops;

use crate::store::records::{Ino, Inode, Kind, Timestamp, ROOT_INO};
use crate::store::{Draft, NewNode, RenameMode, SetAttrs, Store, StoreError, StoreResult, XattrMode};
use crate::versions::views::{self, View, Views};
use attr::{kind_from_mode, to_attr};
use crossbeam_channel::{Receiver, Sender};
use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, Notifier, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use handles::{ChangedBy, Handle, HandleKind, Handles, OpenFiles, Writer};
use locks::{Lock, Locks};
use nodes::{FileNode, Nodes, Redirect};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// Kernel entry and attribute cache lifetime. Long, because genfs invalidates what changes.
const CACHE_TTL: Duration = Duration::from_secs(3600);
const COMMIT_WORKERS: usize = 8;
const ATTR_WORKERS: usize = 2;
const WRITE_BYTES_MAX: u32 = 1 << 20;
/// Namespace changes become durable within this interval even without an fsync.
const NAMESPACE_SYNC_INTERVAL: Duration = Duration::from_secs(1);
const CHECKPOINT_EVERY_SYNCS: u32 = 60;
/// Virtual attributes: answered by genfs, never stored, never listed.
const XATTR_PREFIX: &[u8] = crate::versions::PREFIX;
/// Retention is applied in the background this often.
const GC_EVERY_SYNCS: u32 = 600;

type Job = Box<dyn FnOnce(&Core) + Send>;

/// Everything the request threads and the workers share.
pub struct Core {
    store: Store,
    nodes: Nodes,
    handles: Handles,
    /// Listings of open view directories, per directory handle.
    listings: listings::Listings,
    files: OpenFiles,
    locks: Locks,
    notifier: OnceLock<Notifier>,
    stopping: AtomicBool,
    views: Views,
    view_ids: nodes::ViewIds,
    mounted_at: Timestamp,
    /// The mount's atime options (set by the mount command, which follows remounts).
    pub atime: atime::AtimePolicy,
    /// Invalidations left running after an fsync's reply, per file; closes wait for them.
    late_invalidations: parking_lot::Mutex<std::collections::HashMap<Ino, u32>>,
    late_invalidated: parking_lot::Condvar,
    /// Report of the last gc run (`user.genfs.gc`, shown to each caller as far as it may see).
    last_gc: parking_lot::Mutex<Option<crate::store::GcReport>>,
    /// Held shared by an open of a view while it checks its generation is still kept, and
    /// exclusively by gc: an open either pins the generation or sees it gone.
    gc_fence: parking_lot::RwLock<()>,
    thinning: space::Thinning,
    /// The last `user.genfs.stats` text: (journal sequence number, when, text).
    stats_cache: parking_lot::Mutex<Option<(u64, std::time::Instant, Vec<u8>)>>,
}

pub struct GenFs {
    core: Arc<Core>,
    jobs: Option<Sender<Job>>,
    /// Replies that wait only for attribute invalidations: a pool of their own, because commit
    /// workers can wait for a directory's lock (inval_entry) that the request behind such a
    /// reply holds (a rename, unlink or link).
    attr_jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

fn errno(e: &StoreError) -> Errno {
    if e.is_expected() {
        tracing::trace!("{e}");
    } else {
        tracing::error!("{e}");
    }
    Errno::from_i32(e.errno())
}

fn ts(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::Now => Timestamp::now(),
        TimeOrNow::SpecificTime(t) => Timestamp::from_system(t),
    }
}

impl GenFs {
    pub fn new(store: Store) -> GenFs {
        if store.chunks().uses_hard_links() {
            tracing::info!("{}: {}", store.path().display(), store.features());
        } else {
            tracing::warn!("{}: {}", store.path().display(), store.features());
        }
        let core = Arc::new(Core {
            store,
            nodes: Nodes::default(),
            handles: Handles::default(),
            listings: Default::default(),
            files: OpenFiles::default(),
            locks: Locks::default(),
            notifier: OnceLock::new(),
            stopping: AtomicBool::new(false),
            views: Views::default(),
            view_ids: Default::default(),
            mounted_at: Timestamp::now(),
            atime: Default::default(),
            late_invalidations: Default::default(),
            late_invalidated: Default::default(),
            last_gc: parking_lot::Mutex::new(None),
            gc_fence: parking_lot::RwLock::new(()),
            thinning: Default::default(),
            stats_cache: Default::default(),
        });
        let mut threads = Vec::new();
        let jobs = spawn_workers(&core, "genfs-commit", COMMIT_WORKERS, &mut threads);
        let attr_jobs = spawn_workers(&core, "genfs-attrs", ATTR_WORKERS, &mut threads);
        let sync_core = core.clone();
        match std::thread::Builder::new().name("genfs-sync".into()).spawn(move || sync_loop(&sync_core)) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("cannot start sync thread: {e}"),
        }
        let lock_core = core.clone();
        let watcher = move || lock_core.locks.watch(&lock_core.stopping);
        match std::thread::Builder::new().name("genfs-locks".into()).spawn(watcher) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("cannot start the lock waiters' watcher: {e}"),
        }
        GenFs { core, jobs: Some(jobs), attr_jobs: Some(attr_jobs), threads }
    }

    /// Where the session's notifier goes once the session exists (before requests run).
    pub fn notifier_slot(&self) -> Arc<Core> {
        self.core.clone()
    }

    fn submit(&self, job: impl FnOnce(&Core) + Send + 'static) {
        self.submit_to(&self.jobs, Box::new(job));
    }

    fn submit_to(&self, jobs: &Option<Sender<Job>>, job: Job) {
        match jobs {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    // Workers are gone (shutting down); run inline rather than drop the reply.
                    (e.into_inner())(&self.core);
                }
            }
            None => job(&self.core),
        }
    }

    /// Runs `finish` once the kernel has dropped the cached attributes of `stale` nodes: on a
    /// worker if there are any (request threads never notify), here if not.
    fn after_invalidating(&self, stale: Option<Vec<u64>>, finish: impl FnOnce(&Core) + Send + 'static) {
        match stale {
            None => finish(&self.core),
            Some(nodes) => self.submit_to(
                &self.attr_jobs,
                Box::new(move |c: &Core| {
                    c.invalidate_attrs(&nodes);
                    finish(c)
                }),
            ),
        }
    }

    /// Stops the workers and makes everything durable (unmount).
    pub fn shutdown(&mut self) {
        self.core.stopping.store(true, Ordering::SeqCst);
        self.core.locks.wake();
        self.jobs = None;
        self.attr_jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Err(e) = self.core.store.sync().and_then(|_| self.core.store.checkpoint()) {
            tracing::error!("final checkpoint failed (the journal still holds everything): {e}");
        }
    }
}

impl Core {
    pub fn set_notifier(&self, n: Notifier) {
        let _ = self.notifier.set(n);
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Entry attributes for a name that resolved to `ino`, looked up by thread `tid`; counts
    /// one lookup of its node. (fuser takes the entry's node id from `attr.ino`.)
    fn entry_attr(&self, ino: Ino, inode: Inode, tid: u32) -> StoreResult<FileAttr> {
        if inode.kind != Kind::File {
            return Ok(to_attr(ino, &inode, inode.size, inode.mtime));
        }
        let manifest = || self.store.generation(ino, inode.gen).map(Arc::new);
        let nodeid = self.nodes.lookup(ino, inode.gen, tid, manifest)?;
        let node = self.nodes.get(nodeid).ok_or(StoreError::Stale)?;
        Ok(self.file_node_attr(&node, inode, nodeid))
    }

    /// Attributes of a node as GETATTR and SETATTR answer them: st_ino is the store inode
    /// number whatever the node.
    fn node_attr(&self, nodeid: u64) -> StoreResult<FileAttr> {
        let Some(node) = self.nodes.get(nodeid) else {
            if nodes::is_secondary(nodeid) {
                return Err(StoreError::Stale);
            }
            let inode = self.store.inode(nodeid)?;
            return Ok(to_attr(nodeid, &inode, inode.size, inode.mtime));
        };
        let inode = self.store.inode(node.ino)?;
        Ok(self.file_node_attr(&node, inode, node.ino))
    }

    /// What a file node shows under `id` (its node id in an entry, st_ino elsewhere): size and
    /// mtime of its generation, or for the writer node of the shared draft. Every reply that
    /// carries a size sets the kernel inode's i_size, so a writer node's must never go below
    /// the draft's: pages the writers have mapped past it would fault with SIGBUS.
    fn file_node_attr(&self, node: &FileNode, mut inode: Inode, id: u64) -> FileAttr {
        if node.tainted {
            if let Some(file) = self.files.get(node.ino) {
                let slot = file.slot.lock();
                if !slot.draft.dirty {
                    return to_attr(id, &inode, slot.draft.size, inode.mtime);
                }
                // A change of the data changes the status too.
                inode.ctime = inode.ctime.max(slot.draft.mtime);
                return to_attr(id, &inode, slot.draft.size, slot.draft.mtime);
            }
        }
        if node.tainted || self.is_current(node, &inode) {
            // The current generation's times are the inode's (utimens after a commit).
            return to_attr(id, &inode, inode.size, inode.mtime);
        }
        to_attr(id, &inode, node.manifest.size, node.manifest.mtime)
    }

    /// Whether a node shows the file's current generation. A save by rename renumbers the
    /// incoming file's generations, so a node made before it can name the current one by its
    /// old number: the commit's sequence number tells.
    fn is_current(&self, node: &FileNode, inode: &Inode) -> bool {
        node.gen == inode.gen
            || self.store.generation(node.ino, inode.gen).is_ok_and(|m| m.seq == node.manifest.seq)
    }

    /// The store inode behind a node (for a view: the inode it shows).
    fn ino_of(&self, nodeid: u64) -> StoreResult<Ino> {
        if let Some(view) = self.views.get(nodeid) {
            return match view {
                View::Dir { ino, .. } | View::Other { ino, .. } | View::File { ino, .. } => Ok(ino),
                View::Generations { ino } => Ok(ino),
                View::Fixed(_) => Err(StoreError::NoAttribute),
            };
        }
        if nodes::is_secondary(nodeid) {
            return self.nodes.get(nodeid).map(|n| n.ino).ok_or(StoreError::Stale);
        }
        Ok(nodeid)
    }

    /// The store inode behind a node that is about to change: views are read-only.
    fn writable_ino_of(&self, nodeid: u64) -> StoreResult<Ino> {
        if views::is_fixed(nodeid) || self.views.get(nodeid).is_some() {
            return Err(StoreError::ReadOnly);
        }
        self.ino_of(nodeid)
    }

    /// A directory that is about to gain or lose entries. Real directories' node ids are their
    /// inode numbers; views are read-only.
    fn dir_ino(&self, nodeid: INodeNo) -> StoreResult<Ino> {
        if views::is_fixed(nodeid.0) || self.views.get(nodeid.0).is_some() {
            return Err(StoreError::ReadOnly);
        }
        if nodes::is_secondary(nodeid.0) {
            return Err(StoreError::NotDir);
        }
        Ok(nodeid.0)
    }

    /// EPERM if an entry of `parent` naming `victim` (if it exists) may not go (unlink, rmdir,
    /// rename): the file or the directory is immutable or append-only.
    fn check_removable(&self, parent: Ino, victim: Option<Ino>) -> StoreResult<()> {
        const PROTECTED: u32 = fileattr::IMMUTABLE | fileattr::APPEND;
        self.refuse_if(parent, PROTECTED)?;
        victim.map_or(Ok(()), |ino| self.refuse_if(ino, PROTECTED))
    }

    /// The inode `name` in `parent` names, if any.
    fn entry_ino(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.store.lookup(parent, name).ok().map(|(ino, _)| ino)
    }

    /// The hidden `.genfs` name at the root cannot be created, removed or renamed over.
    fn check_name(parent: Ino, name: &[u8]) -> StoreResult<()> {
        if parent == ROOT_INO && name == crate::versions::VIEWS_DIR {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    /// Invalidates every name of `ino` in the kernel, and the attributes of all its nodes (a
    /// commit changed them). Workers only.
    fn invalidate_file(&self, ino: Ino) {
        self.invalidate_names(ino);
        self.invalidate_attrs(&self.nodes.nodes_of(ino));
    }

    /// Invalidates every name of `ino`, so the next path walk looks it up. Workers only.
    fn invalidate_names(&self, ino: Ino) {
        let Some(notifier) = self.notifier.get() else { return };
        match self.store.names_of(ino) {
            Ok(names) => {
                for (parent, name) in names {
                    if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::from_bytes(&name)) {
                        tracing::debug!("inval_entry({parent}, {:?}): {e}", OsStr::from_bytes(&name));
                    }
                }
            }
            Err(e) => tracing::error!("cannot list names of inode {ino}: {e}"),
        }
    }

    /// Makes the kernel ask for the attributes of these nodes again. Workers only: the kernel
    /// looks the inode up, which can wait for its eviction, which can wait for a READ that
    /// only a request thread can answer.
    fn invalidate_attrs(&self, nodes: &[u64]) {
        let Some(notifier) = self.notifier.get() else { return };
        for &node in nodes {
            if let Err(e) = notifier.inval_inode(INodeNo(node), -1, 0) {
                tracing::debug!("inval_inode({node:#x}): {e}");
            }
        }
    }

    /// The nodes of `ino` whose cached attributes a change leaves stale: all of them but
    /// `updated`, the one the kernel updates itself from the reply. None when that is the only
    /// one, so the common case (one node per file) needs no worker.
    fn stale_nodes(&self, ino: Ino, updated: Option<u64>) -> Option<Vec<u64>> {
        let mut nodes = self.nodes.nodes_of(ino);
        match updated {
            Some(u) => nodes.retain(|&n| n != u),
            // The kernel updates the node of the dentry it changed; others are stale.
            None if nodes.len() <= 1 => nodes.clear(),
            None => {}
        }
        (!nodes.is_empty()).then_some(nodes)
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        node: NewNode,
        umask: u32,
    ) -> StoreResult<(Ino, FileAttr)> {
        let (ino, inode) = self.make_inode(req, parent, name, node, umask)?;
        Ok((ino, self.entry_attr(ino, inode, req.pid())?))
    }

    /// Creates the inode, owned by the caller (BSD group semantics in setgid directories).
    fn make_inode(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mut node: NewNode,
        umask: u32,
    ) -> StoreResult<(Ino, Inode)> {
        let parent = self.dir_ino(parent)?;
        Self::check_name(parent, name.as_bytes())?;
        self.refuse_if(parent, fileattr::IMMUTABLE)?;
        let dir = self.store.inode(parent)?;
        node.uid = req.uid();
        node.gid = req.gid();
        if dir.perm & libc::S_ISGID as u16 != 0 {
            // BSD group semantics of setgid directories.
            node.gid = dir.gid;
            if node.kind == Kind::Dir {
                node.perm |= libc::S_ISGID as u16;
            }
        }
        let (perm, acls) = self.acls_for_new(parent, node.kind, node.perm, (umask & 0o777) as u16)?;
        node.perm = perm;
        self.store.create_with_xattrs(parent, name.as_bytes(), &node, acls)
    }

    /// Commits the shared draft behind a writable handle. `force`: commit even if the
    /// change came through another handle (fsync).
    /// Commits the draft behind a handle; true if a generation was made (the caller then
    /// invalidates the file's names). A handle of a file its create made syncs the journal even
    /// with nothing to commit: the new name is durable when its close returns (G4).
    fn commit_handle(&self, handle: &Handle, force: bool) -> StoreResult<bool> {
        let Some(w) = handle.writer() else {
            return self.store.sync().map(|_| false);
        };
        let mut slot = w.file.slot.lock();
        if slot.epoch != w.epoch || slot.draft.failed {
            return Err(StoreError::io("commit", std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let changed = std::mem::take(&mut *w.changers.lock()).any();
        if !(changed || force) || !slot.draft.dirty {
            return match (handle.created, force) {
                (true, _) => self.store.close_created().map(|_| false),
                (false, true) => self.store.sync().map(|_| false),
                (false, false) => Ok(false),
            };
        }
        // Shells redirect with open(O_TRUNC), dup2, close, write, close: the first close commits
        // the truncation (close-to-open), and the next commit of this handle replaces it.
        let only_truncated = w.only_truncated.swap(false, Ordering::SeqCst);
        let superseded = w.superseded.lock().take();
        let inode = self.store.commit_superseding(&mut slot.draft, superseded)?;
        if only_truncated && inode.size == 0 {
            *w.superseded.lock() = Some(inode.gen);
        }
        Ok(true)
    }

    /// Notes an invalidation of `ino` that runs after its request was answered.
    fn late_invalidation_begins(&self, ino: Ino) {
        *self.late_invalidations.lock().entry(ino).or_default() += 1;
    }

    fn late_invalidation_ends(&self, ino: Ino) {
        let mut late = self.late_invalidations.lock();
        if let Some(n) = late.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                late.remove(&ino);
            }
        }
        self.late_invalidated.notify_all();
    }

    /// Waits until the invalidations of `ino` left by fsyncs are done: a close returns only
    /// once every later open reaches the newest generation (G1).
    fn wait_for_late_invalidations(&self, ino: Ino) {
        let mut late = self.late_invalidations.lock();
        while late.contains_key(&ino) {
            self.late_invalidated.wait(&mut late);
        }
    }

    /// Gives a file or directory that was read the atime the mount's atime mode asks for.
    /// Best effort: a read never fails for its atime.
    fn touch_atime(&self, ino: Ino, is_dir: bool) {
        let now = Timestamp::now();
        if let Err(e) = self.store.update_atime(ino, |inode| self.atime.after_read(inode, is_dir, now)) {
            tracing::debug!("atime of inode {ino} not updated: {e}");
        }
    }

    /// A truncate by path (no writable handle of the caller): commits a new generation.
    fn truncate_path(&self, ino: Ino, size: u64) -> StoreResult<()> {
        if let Some(file) = self.files.get(ino) {
            let mut slot = file.slot.lock();
            if slot.draft.size != size {
                slot.draft.truncate(size, self.store.chunks())?;
                self.store.commit(&mut slot.draft)?;
            }
        } else {
            let mut draft = self.store.new_draft(ino)?;
            if draft.size == size {
                return Ok(());
            }
            draft.truncate(size, self.store.chunks())?;
            self.store.commit(&mut draft)?;
        }
        self.invalidate_file(ino);
        Ok(())
    }

    fn write_handle(&self, fh: u64, offset: u64, data: &[u8], by: ChangedBy) -> StoreResult<u32> {
        self.change_draft(fh, data.len() as u64, by, |draft, w| {
            let offset = if w.append { draft.size } else { offset };
            draft.write(offset, data, self.store.chunks())?;
            Ok(data.len() as u32)
        })
    }

    /// Runs `change` on the draft behind writable handle `fh` with the checks every change of
    /// its bytes needs (a writable store, `space` bytes to spare, the handle's epoch still the
    /// draft's (G5), no chattr +i), and records who changed it.
    fn change_draft<T>(
        &self,
        fh: u64,
        space: u64,
        by: ChangedBy,
        change: impl FnOnce(&mut Draft, &Writer) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let handle = self.handles.get(fh).ok_or(StoreError::InvalidArgument)?;
        let w = handle.writer().ok_or(StoreError::InvalidArgument)?;
        self.store.check_writable()?;
        // Before the draft's lock: thinning for space reads every draft's base generation.
        self.ensure_space(space)?;
        let mut slot = w.file.slot.lock();
        if slot.epoch != w.epoch || slot.draft.failed {
            return Err(StoreError::io("write", std::io::Error::from_raw_os_error(libc::EIO)));
        }
        if w.file.immutable.load(Ordering::SeqCst) {
            return Err(StoreError::NotPermitted);
        }
        let out = change(&mut slot.draft, w)?;
        w.changers.lock().record(by);
        w.only_truncated.store(false, Ordering::SeqCst);
        Ok(out)
    }

    /// Drops setuid, and setgid when group-executable (the kernel's should_remove_suid), from
    /// the file written through `fh`. When the mode changed: every node of the file, the
    /// writer's own included, for the caller to invalidate (no reply tells the kernel).
    fn clear_setid_bits(&self, fh: u64) -> StoreResult<Option<Vec<u64>>> {
        let handle = self.handles.get(fh).ok_or(StoreError::InvalidArgument)?;
        let ino = handle.writer().ok_or(StoreError::InvalidArgument)?.file.ino;
        let perm = self.store.inode(ino)?.perm;
        let mut kill = perm & libc::S_ISUID as u16;
        if perm & (libc::S_ISGID | libc::S_IXGRP) as u16 == (libc::S_ISGID | libc::S_IXGRP) as u16 {
            kill |= libc::S_ISGID as u16;
        }
        if kill == 0 {
            return Ok(None);
        }
        self.store.set_attrs(ino, &SetAttrs { perm: Some(perm & !kill), ..Default::default() })?;
        let nodes = self.nodes.nodes_of(ino);
        Ok((!nodes.is_empty()).then_some(nodes))
    }

    /// copy_file_range: copies up to `len` bytes from (handle, offset) `from` to `to`, stopping
    /// at the end of the source. Overlapping ranges of one file are refused, as the VFS does.
    fn copy_range(&self, from: (u64, u64), to: (u64, u64), len: u64, tid: u32) -> StoreResult<u32> {
        const CHUNK: u64 = 1 << 20;
        let source = self.handles.get(from.0).ok_or(StoreError::InvalidArgument)?;
        let target = self.handles.get(to.0).ok_or(StoreError::InvalidArgument)?;
        let len = len.min(u64::from(u32::MAX) & !(CHUNK - 1));
        let overlap = from.1 < to.1.saturating_add(len) && to.1 < from.1.saturating_add(len);
        // A version view is another file to the user, though its inode number is the same.
        if source.ino == target.ino && overlap && self.views.get(source.nodeid).is_none() {
            return Err(StoreError::InvalidArgument);
        }
        let chunk_size = self.store.chunks().chunk_size;
        let mut copied = 0;
        while copied < len {
            let at = from.1 + copied;
            if let Some(n) = self.copy_by_reference(&source, at, (to.0, to.1 + copied), len - copied, tid)? {
                copied += n;
                continue;
            }
            // Up to the source's next slot boundary: ranges equally far from one align there.
            let want = (len - copied).min(CHUNK).min(chunk_size - at % chunk_size);
            let data = self.read_handle(&source, at, want as u32)?;
            if data.is_empty() {
                break;
            }
            copied += u64::from(self.write_handle(to.0, to.1 + copied, &data, ChangedBy::Thread(tid))?);
            if (data.len() as u64) < want {
                break;
            }
        }
        Ok(copied as u32)
    }

    /// Copies the committed slot that starts at `at` in the source by reference, as a reflink
    /// does: the target's slot at `to` then holds the same chunks and no byte is copied. Only
    /// where both offsets start a slot and the copy covers the slot (or the source's rest);
    /// returns the bytes copied so, or None to copy bytes.
    fn copy_by_reference(
        &self,
        source: &Handle,
        at: u64,
        to: (u64, u64),
        len: u64,
        tid: u32,
    ) -> StoreResult<Option<u64>> {
        let HandleKind::Reader { gen, manifest } = &source.kind else { return Ok(None) };
        let chunk_size = self.store.chunks().chunk_size;
        if at % chunk_size != 0 || to.1 % chunk_size != 0 || at >= manifest.size {
            return Ok(None);
        }
        let n = (manifest.size - at).min(chunk_size);
        if n > len {
            return Ok(None);
        }
        let content = manifest.slot(at / chunk_size);
        let shared = self.change_draft(to.0, 0, ChangedBy::Thread(tid), |draft, _| {
            draft.share_slot(to.1 / chunk_size, content, n, (source.ino, *gen), chunk_size)
        })?;
        Ok(shared.then_some(n))
    }

    fn read_handle(&self, handle: &Handle, offset: u64, size: u32) -> StoreResult<Vec<u8>> {
        match &handle.kind {
            HandleKind::Reader { manifest, .. } => self.store.read(manifest, offset, size),
            HandleKind::Writer(w) => w.file.slot.lock().draft.read(offset, size, self.store.chunks()),
        }
    }

    /// Opens a node for a handle; `created`: by the create that made the file.
    fn open_file(
        &self,
        req: &Request,
        nodeid: u64,
        flags: OpenFlags,
        created: bool,
    ) -> Result<(u64, FopenFlags), Errno> {
        if let Some(view) = self.views.get(nodeid) {
            let View::File { ino, gen, manifest } = view else { return Err(Errno::EISDIR) };
            if flags.acc_mode() != OpenAccMode::O_RDONLY {
                return Err(Errno::EROFS);
            }
            let _fence = self.gc_fence.read();
            if !self.store.generation_kept(ino, gen).map_err(|e| errno(&e))? {
                // Dropped by gc since the kernel cached this name: ESTALE makes it look again.
                return Err(Errno::ESTALE);
            }
            self.views.open(nodeid);
            let fh = self.handles.insert(Handle {
                nodeid,
                ino,
                kind: HandleKind::Reader { gen, manifest },
                created: false,
            });
            return Ok((fh, FopenFlags::FOPEN_KEEP_CACHE));
        }
        if flags.acc_mode() == OpenAccMode::O_RDONLY {
            let node = self.nodes.open_reader(nodeid, req.pid()).map_err(|Redirect| {
                tracing::debug!("read-only open of node {nodeid:#x} by {} redirected", req.pid());
                Errno::ESTALE
            })?;
            let fh = self.handles.insert(Handle {
                nodeid,
                ino: node.ino,
                kind: HandleKind::Reader { gen: node.gen, manifest: node.manifest },
                created,
            });
            // strictatime: every open's reads reach the daemon, which sets the atime.
            if self.atime.get().mode == atime::AtimeMode::Strict {
                return Ok((fh, FopenFlags::empty()));
            }
            return Ok((fh, FopenFlags::FOPEN_KEEP_CACHE));
        }
        self.store.check_writable().map_err(|e| errno(&e))?;
        if let Some(ino) = self.nodes.get(nodeid).map(|n| n.ino) {
            let attrs = self.fileattr(ino).map_err(|e| errno(&e))?;
            let appends = flags.0 & libc::O_APPEND != 0 && flags.0 & libc::O_TRUNC == 0;
            if attrs & fileattr::IMMUTABLE != 0 || (attrs & fileattr::APPEND != 0 && !appends) {
                return Err(Errno::EPERM);
            }
        }
        let node = self.nodes.open_writer(nodeid, req.pid()).map_err(|Redirect| {
            tracing::debug!("writable open of node {nodeid:#x} by {} redirected", req.pid());
            Errno::ESTALE
        })?;
        let joined = self.files.join(&self.store, node.ino);
        let (file, epoch) = match joined {
            Ok(j) => j,
            Err(e) => {
                self.nodes.close(nodeid, true);
                return Err(errno(&e));
            }
        };
        let writer = Writer {
            file,
            epoch,
            append: flags.0 & libc::O_APPEND != 0,
            changers: Default::default(),
            only_truncated: AtomicBool::new(false),
            superseded: parking_lot::Mutex::new(None),
            opener_tid: req.pid(),
        };
        let fh =
            self.handles.insert(Handle { nodeid, ino: node.ino, kind: HandleKind::Writer(writer), created });
        Ok((fh, FopenFlags::FOPEN_DIRECT_IO))
    }

    /// Drops a handle; returns the draft's file if this was its last writer and it holds
    /// changes that arrived after the last commit (mmap writeback).
    fn release_handle(&self, fh: u64) -> Option<Arc<handles::OpenFile>> {
        let handle = self.handles.remove(fh)?;
        self.locks.release_handle(self.lock_key(handle.nodeid, handle.ino), fh);
        let writer = handle.writer().is_some();
        self.nodes.close(handle.nodeid, writer);
        if !writer {
            self.views.close(handle.nodeid); // views are read-only
            return None;
        }
        let file = self.files.leave(handle.ino)?;
        let pending = {
            let slot = file.slot.lock();
            slot.draft.dirty && !slot.draft.failed
        };
        pending.then_some(file)
    }

    /// What locks on a node are keyed by: the file, whichever node it is opened through; a
    /// view's file is a file of its own.
    fn lock_key(&self, nodeid: u64, ino: Ino) -> u64 {
        if self.views.get(nodeid).is_some() {
            nodeid
        } else {
            ino
        }
    }

    /// LOOKUP of "." or ".." on a node: the kernel decoding a file handle whose inode it has
    /// dropped (`open_by_handle_at`, NFS export). "." is the node itself, bound to the file's
    /// current generation if it was forgotten; ".." is a directory's parent.
    fn lookup_handle(&self, nodeid: u64, dotdot: bool) -> StoreResult<FileAttr> {
        if views::is_fixed(nodeid) || self.views.get(nodeid).is_some() {
            return Err(StoreError::Stale);
        }
        let ino = nodes::file_of(nodeid);
        let inode = self.store.inode(ino).map_err(|_| StoreError::Stale)?;
        if dotdot {
            if inode.kind != Kind::Dir {
                return Err(StoreError::NotDir);
            }
            let parent = if ino == ROOT_INO { ROOT_INO } else { self.store.parent_of(ino)? };
            let dir = self.store.inode(parent)?;
            return Ok(to_attr(parent, &dir, dir.size, dir.mtime));
        }
        if inode.nlink == 0 {
            return Err(StoreError::Stale);
        }
        if inode.kind != Kind::File {
            return Ok(to_attr(ino, &inode, inode.size, inode.mtime));
        }
        let manifest = || self.store.generation(ino, inode.gen).map(Arc::new);
        let nodeid = self.nodes.rebind(nodeid, inode.gen, manifest)?;
        let node = self.nodes.get(nodeid).ok_or(StoreError::Stale)?;
        Ok(self.file_node_attr(&node, inode, nodeid))
    }

    fn xattr_get(&self, nodeid: u64, name: &[u8], req: &Request) -> StoreResult<Vec<u8>> {
        if name.starts_with(XATTR_PREFIX) {
            return self.version_attr(nodeid, name, req);
        }
        if name == fileattr::FLAGS_XATTR {
            return Err(StoreError::NoAttribute);
        }
        if let Some(View::Generations { ino }) = self.views.get(nodeid) {
            if name != acl::ACCESS {
                return Err(StoreError::NoAttribute);
            }
            let file_acl = acl::Acl::parse(&self.store.xattr(ino, name)?)?;
            return Ok(file_acl.readable_as_searchable().to_bytes());
        }
        self.store.xattr(self.ino_of(nodeid)?, name)
    }
}

/// Starts `count` threads named `name-N` that run jobs until the sender is dropped.
fn spawn_workers(
    core: &Arc<Core>,
    name: &str,
    count: usize,
    threads: &mut Vec<JoinHandle<()>>,
) -> Sender<Job> {
    let (tx, rx) = crossbeam_channel::unbounded::<Job>();
    for i in 0..count {
        let (core, rx) = (core.clone(), rx.clone());
        match std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || worker_loop(&core, &rx)) {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!("cannot start worker {name}-{i}: {e}"),
        }
    }
    tx
}

fn worker_loop(core: &Core, jobs: &Receiver<Job>) {
    while let Ok(job) = jobs.recv() {
        job(core);
    }
}

fn sync_loop(core: &Core) {
    let mut ticks = 0u32;
    let step = Duration::from_millis(100);
    let mut waited = Duration::ZERO;
    while !core.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(step);
        waited += step;
        if waited < NAMESPACE_SYNC_INTERVAL {
            continue;
        }
        waited = Duration::ZERO;
        if core.store.is_failed() {
            continue;
        }
        if let Err(e) = core.store.sync() {
            tracing::error!("periodic journal sync failed: {e}");
        }
        ticks += 1;
        if ticks % CHECKPOINT_EVERY_SYNCS == 0 || core.store.checkpoint_due() {
            if let Err(e) = core.store.checkpoint() {
                tracing::error!("checkpoint failed: {e}");
            }
            return_free_memory();
        }
        core.keep_free_floor();
        if ticks % GC_EVERY_SYNCS == 0 {
            if let Err(e) = core.run_gc(false) {
                tracing::error!("background gc failed: {e}");
            }
        }
    }
}

/// Gives the heap's free pages back to the system. glibc keeps what a burst freed (a gc's or
/// checkpoint's scans of the index, spread over per-thread arenas), so without this the
/// daemon's RSS stays at its high-water mark for good.
pub(crate) fn return_free_memory() {
    // SAFETY: malloc_trim only releases free memory; it is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn reply_entry(reply: ReplyEntry, result: StoreResult<FileAttr>) {
    reply_entry_for(reply, result, CACHE_TTL)
}

/// An entry the kernel keeps for `entry_ttl`; its attributes for CACHE_TTL, except a
/// secondary file node's, whose entry carries its node id where st_ino belongs (fuser sends
/// `attr.ino` as both): those expire at once, so the kernel asks GETATTR, which carries the
/// store inode number.
fn reply_entry_for(reply: ReplyEntry, result: StoreResult<FileAttr>, entry_ttl: Duration) {
    match result {
        Ok(attr) => reply.entry_with_ttls(&attr_ttl(attr.ino.0), &entry_ttl, &attr, Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn attr_ttl(nodeid: u64) -> Duration {
    if nodes::is_secondary(nodeid) {
        Duration::ZERO
    } else {
        CACHE_TTL
    }
}

fn reply_attr(reply: ReplyAttr, result: StoreResult<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&CACHE_TTL, &attr),
        Err(e) => reply.error(errno(&e)),
    }
}

pub(crate) fn reply_empty(reply: ReplyEmpty, result: StoreResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, result: StoreResult<Vec<u8>>) {
    match result {
        Ok(value) if size == 0 => reply.size(value.len() as u32),
        Ok(value) if value.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(value) => reply.data(&value),
        Err(e) => reply.error(errno(&e)),
    }
}

impl Filesystem for GenFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_POSIX_LOCKS,
            // flock goes to the daemon too: a file's descriptors sit on several kernel inodes.
            InitFlags::FUSE_FLOCK_LOCKS,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            // LOOKUP of "." and "..": file handles stay valid after the kernel drops an inode.
            InitFlags::FUSE_EXPORT_SUPPORT,
            // The kernel checks POSIX ACLs and leaves the umask to genfs (acl.rs).
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                tracing::warn!("kernel lacks {missing:?}");
            }
        }
        let _ = config.set_max_write(WRITE_BYTES_MAX);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn destroy(&mut self) {
        self.shutdown();
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let c = &self.core;
        let name = name.as_bytes();
        if let Some(view) = c.views.get(parent.0) {
            // Names under .genfs/gen are checked per caller (view_ops::may_reach), so the
            // kernel must ask again on every path walk instead of reusing another's dentry.
            let per_caller =
                matches!(view, View::Fixed(views::GEN_DIR) | View::Generations { .. } | View::Dir { .. });
            let entry_ttl = if per_caller { Duration::ZERO } else { CACHE_TTL };
            return reply_entry_for(reply, c.view_lookup(&view, name, req), entry_ttl);
        }
        if parent.0 == ROOT_INO && name == crate::versions::VIEWS_DIR {
            return reply_entry(reply, c.view_attr(views::GENFS_DIR, &View::Fixed(views::GENFS_DIR)));
        }
        if name == b"." || name == b".." {
            // Path walks never send these; the kernel does when it decodes a file handle.
            return reply_entry(reply, c.lookup_handle(parent.0, name == b".."));
        }
        reply_entry(
            reply,
            c.dir_ino(parent)
                .and_then(|p| c.store.lookup(p, name))
                .and_then(|(ino, inode)| c.entry_attr(ino, inode, req.pid())),
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.nodes.forget(ino.0, nlookup);
        self.core.views.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(view) = self.core.views.get(ino.0) {
            return match self.core.view_attr(ino.0, &view) {
                Ok(attr) => reply.attr(&CACHE_TTL, &attr),
                Err(e) => reply.error(errno(&e)),
            };
        }
        reply_attr(reply, self.core.node_attr(ino.0))
    }

    fn setattr(
        &self,
        req: &Request,
        nodeid: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = &self.core;
        let ino = match c.writable_ino_of(nodeid.0) {
            Ok(i) => i,
            Err(e) => return reply.error(errno(&e)),
        };
        // chattr +i: nothing changes; +a: only the times, and only to now (touch).
        let set_times = matches!(atime, Some(TimeOrNow::SpecificTime(_)))
            || matches!(mtime, Some(TimeOrNow::SpecificTime(_)));
        let forbidding = if mode.is_some() || uid.is_some() || gid.is_some() || size.is_some() || set_times {
            fileattr::IMMUTABLE | fileattr::APPEND
        } else {
            fileattr::IMMUTABLE
        };
        if let Err(e) = c.refuse_if(ino, forbidding) {
            return reply.error(errno(&e));
        }
        let mtime = mtime.map(ts);
        let change = SetAttrs {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            atime: atime.map(ts),
            mtime,
            ctime: ctime.map(Timestamp::from_system),
        };
        let has_attr_change = change.perm.is_some()
            || change.uid.is_some()
            || change.gid.is_some()
            || change.atime.is_some()
            || (change.mtime.is_some() && size.is_none());
        if has_attr_change {
            if let Err(e) = c.store.set_attrs(ino, &change) {
                return reply.error(errno(&e));
            }
            if let Some(perm) = change.perm {
                if let Err(e) = c.chmod_acl(ino, perm) {
                    return reply.error(errno(&e));
                }
            }
            if let (Some(t), Some(file)) = (mtime, c.files.get(ino)) {
                // A writer's explicit mtime (cp -p, tar) must survive its own commit.
                file.slot.lock().draft.mtime = t;
            }
        }
        // Every name and descriptor of the file shows the change when this returns.
        let stale = if has_attr_change { c.stale_nodes(ino, Some(nodeid.0)) } else { None };
        let nodeid = nodeid.0;
        let Some(size) = size else {
            return self.after_invalidating(stale, move |c| reply_attr(reply, c.node_attr(nodeid)));
        };
        if c.nodes.get(nodeid).is_none() {
            return reply.error(Errno::EISDIR);
        }
        let writer = fh
            .and_then(|fh| c.handles.get(fh.0))
            .filter(|h| h.writer().is_some())
            .or_else(|| c.handles.writer_opened_by(nodeid, req.pid()));
        if let Some(handle) = writer {
            // With a handle it is ftruncate; without, the O_TRUNC of the caller's own open. Either
            // way it changes the draft, and the handle's next close commits it.
            let truncated = truncate_draft(c, &handle, size, fh.is_none(), req.pid());
            let stale = c.stale_nodes(ino, Some(nodeid));
            return self.after_invalidating(stale, move |c| {
                reply_attr(reply, truncated.and_then(|_| c.node_attr(nodeid)))
            });
        }
        self.submit(move |c| reply_attr(reply, c.truncate_path(ino, size).and_then(|_| c.node_attr(nodeid))));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let target = self.core.ino_of(ino.0).and_then(|i| self.core.store.inode(i));
        match target {
            Ok(inode) if inode.kind == Kind::Symlink => reply.data(&inode.target),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_from_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let node = NewNode { kind, perm: (mode & 0o7777) as u16, uid: 0, gid: 0, rdev, target: vec![] };
        reply_entry(reply, self.core.make(req, parent, name, node, umask).map(|(_, a)| a));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let node = NewNode {
            kind: Kind::Dir,
            perm: (mode & 0o7777) as u16,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
        };
        reply_entry(reply, self.core.make(req, parent, name, node, umask).map(|(_, a)| a));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = &self.core;
        let name = name.as_bytes();
        let result = c.dir_ino(parent).and_then(|p| {
            Core::check_name(p, name)?;
            c.check_removable(p, c.entry_ino(p, name))?;
            c.store.unlink(p, name)
        });
        match result {
            // Other descriptors and names of the file show its new link count at once.
            Ok(victim) => self.after_invalidating(c.stale_nodes(victim, None), |_| reply.ok()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = &self.core;
        let name = name.as_bytes();
        let result = c.dir_ino(parent).and_then(|p| {
            Core::check_name(p, name)?;
            c.check_removable(p, c.entry_ino(p, name))?;
            c.store.rmdir(p, name)
        });
        reply_empty(reply, result.map(|_| ()));
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes().to_vec();
        let node = NewNode { kind: Kind::Symlink, perm: 0o777, uid: 0, gid: 0, rdev: 0, target };
        reply_entry(reply, self.core.make(req, parent, link_name, node, 0).map(|(_, a)| a));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            return reply.error(Errno::EINVAL);
        };
        let c = &self.core;
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        let result = c.dir_ino(parent).and_then(|p1| {
            let p2 = c.dir_ino(newparent)?;
            Core::check_name(p1, name)?;
            Core::check_name(p2, newname)?;
            // The files whose ctime (and for the one replaced, link count) the rename changes.
            let moved = c.store.lookup(p1, name).map(|(ino, _)| ino)?;
            let target = c.entry_ino(p2, newname);
            let exchanged = target.filter(|_| mode == RenameMode::Exchange);
            // As for an unlink of the old name and a link of the new one (and, for one
            // replaced, its unlink).
            c.check_removable(p1, Some(moved))?;
            c.refuse_if(p2, fileattr::IMMUTABLE)?;
            if target.is_some() {
                c.check_removable(p2, target)?;
            }
            let replaced = c.store.rename(p1, name, p2, newname, mode)?;
            Ok([Some(moved), exchanged.or(replaced)])
        });
        match result {
            Ok(changed) => {
                let stale: Vec<u64> = changed
                    .into_iter()
                    .flatten()
                    .filter_map(|ino| c.stale_nodes(ino, None))
                    .flatten()
                    .collect();
                self.after_invalidating((!stale.is_empty()).then_some(stale), |_| reply.ok())
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let c = &self.core;
        let result = c.writable_ino_of(ino.0).and_then(|ino| {
            let parent = c.dir_ino(newparent)?;
            Core::check_name(parent, newname.as_bytes())?;
            c.refuse_if(ino, fileattr::IMMUTABLE | fileattr::APPEND)?;
            c.refuse_if(parent, fileattr::IMMUTABLE)?;
            let inode = c.store.link(ino, parent, newname.as_bytes())?;
            Ok((ino, c.entry_attr(ino, inode, req.pid())?))
        });
        match result {
            // Every other node of the file shows the new link count and ctime at once.
            Ok((ino, attr)) => self.after_invalidating(c.stale_nodes(ino, Some(attr.ino.0)), move |_| {
                reply_entry(reply, Ok(attr))
            }),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.core.open_file(req, ino.0, flags, false) {
            Ok((fh, open_flags)) => {
                if open_flags.contains(FopenFlags::FOPEN_DIRECT_IO) {
                    // The node is the writers' now: later path walks go to a reader node, so
                    // a path lookup shows the committed generation, whoever wins the race
                    // (OPEN holds no directory lock, so the worker's inval_entry cannot wait
                    // for this request).
                    let ino = self.core.ino_of(ino.0).unwrap_or(0);
                    return self.submit(move |c| {
                        c.invalidate_names(ino);
                        reply.opened(FileHandle(fh), open_flags)
                    });
                }
                reply.opened(FileHandle(fh), open_flags)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let c = &self.core;
        let Some(handle) = c.handles.get(fh.0) else {
            return reply.error(Errno::EINVAL);
        };
        match c.read_handle(&handle, offset, size) {
            Ok(data) => {
                // Before the reply: a stat right after the read must see the new atime.
                if c.views.get(handle.nodeid).is_none() {
                    c.touch_atime(handle.ino, false);
                }
                reply.data(&data);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = &self.core;
        let by = lock_owner.map_or(ChangedBy::Writeback, |o| ChangedBy::LockOwner(o.0));
        let written = c.write_handle(fh.0, offset, data, by);
        // Writers are direct I/O, so the kernel leaves clearing setuid/setgid to the daemon: it
        // sets this flag when the writer lacks CAP_FSETID (what ext4 does in file_remove_privs).
        let stale = match written {
            Ok(_) if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) => {
                match c.clear_setid_bits(fh.0) {
                    Ok(stale) => stale,
                    Err(e) => return reply.error(errno(&e)),
                }
            }
            _ => None,
        };
        self.after_invalidating(stale, move |_| match written {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let Some(handle) = self.core.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // close() drops the closing process's record locks on the file.
        self.core.locks.release_owner(self.core.lock_key(handle.nodeid, handle.ino), lock_owner.0);
        // Only a changer's close commits (handles.rs, Changers); the rest wait for it, or for
        // the release of the last descriptor.
        let commits = handle.writer().is_some_and(|w| w.changers.lock().include(lock_owner.0, req.pid()));
        if !commits {
            // Not a changer's close: it commits nothing (another process may be halfway
            // through writing), but the file's name is durable when a close of its creating
            // handle returns.
            if handle.created {
                return self.submit(move |c| reply_empty(reply, c.store.close_created()));
            }
            return reply.ok();
        }
        self.submit(move |c| {
            let result = c.commit_handle(&handle, false).map(|committed| {
                if committed {
                    c.invalidate_file(handle.ino);
                }
            });
            c.wait_for_late_invalidations(handle.ino);
            reply_empty(reply, result)
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(file) = self.core.release_handle(fh.0) else {
            return reply.ok();
        };
        // Writes that reached the draft after the last flush (a shared mapping written back
        // after close): commit them rather than lose them. The error cannot reach anyone.
        self.submit(move |c| {
            let mut slot = file.slot.lock();
            match c.store.commit(&mut slot.draft) {
                Ok(_) => {
                    drop(slot);
                    c.invalidate_file(file.ino);
                }
                Err(e) => tracing::error!("commit at release of inode {} failed: {e}", file.ino),
            }
            reply.ok();
        });
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let Some(handle) = self.core.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // The kernel holds the file's inode lock until the reply, and an unlink or rename in its
        // directory holds the directory's lock while it waits for that one: the invalidation
        // (which takes the directory's lock) must come after the reply, or all three wait for
        // good. A close waits for it instead (G1 is about close).
        self.submit(move |c| match c.commit_handle(&handle, true) {
            Ok(true) => {
                c.late_invalidation_begins(handle.ino);
                reply.ok();
                c.invalidate_file(handle.ino);
                c.late_invalidation_ends(handle.ino);
            }
            other => reply_empty(reply, other.map(|_| ())),
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if let Some(view) = self.core.views.get(ino.0) {
            return match view {
                View::File { .. } | View::Other { .. } => reply.error(Errno::ENOTDIR),
                // A directory of the past never changes; the lists of snapshots and of a
                // file's generations do, and nothing would tell the kernel.
                View::Dir { .. } => reply.opened(
                    FileHandle(self.core.listings.open()),
                    FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
                ),
                View::Fixed(_) | View::Generations { .. } => {
                    reply.opened(FileHandle(self.core.listings.open()), FopenFlags::empty())
                }
            };
        }
        match self.core.store.inode(ino.0) {
            // The kernel keeps the listing and drops it itself when a change through this mount
            // bumps the directory's i_version (fuse_dir_changed); nothing else renames.
            Ok(inode) if inode.kind == Kind::Dir => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR)
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let c = &self.core;
        let dir = ino.0;
        if let Some(view) = c.views.get(dir) {
            let listing = match c.listings.get(fh.0, || c.view_listing(dir, &view)) {
                Ok(l) => l,
                Err(e) => return reply.error(errno(&e)),
            };
            // Entry i has offset i + 1 (the offset of the entry after it).
            let start = usize::try_from(offset).map_or(listing.len(), |o| o.min(listing.len()));
            for (pos, (id, kind, name)) in listing.iter().enumerate().skip(start) {
                if reply.add(INodeNo(*id), pos as u64 + 1, *kind, OsStr::from_bytes(name)) {
                    break;
                }
            }
            return reply.ok();
        }
        if offset == 0 {
            // Real directories' node ids are their inode numbers (views returned above).
            c.touch_atime(dir, true);
        }
        if offset < 1 && reply.add(INodeNo(dir), 1, fuser::FileType::Directory, ".") {
            return reply.ok();
        }
        if offset < 2 {
            let parent = if dir == ROOT_INO { ROOT_INO } else { c.store.parent_of(dir).unwrap_or(ROOT_INO) };
            if reply.add(INodeNo(parent), 2, fuser::FileType::Directory, "..") {
                return reply.ok();
            }
        }
        let mut after = offset.max(2);
        loop {
            let entries = match c.store.readdir(dir, after, 128) {
                Ok(e) => e,
                Err(e) => return reply.error(errno(&e)),
            };
            if entries.is_empty() {
                return reply.ok();
            }
            for e in entries {
                let name = OsStr::from_bytes(&e.name);
                if reply.add(INodeNo(e.ino), e.cookie, attr::file_type(e.kind), name) {
                    return reply.ok();
                }
                after = e.cookie;
            }
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.listings.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.submit(move |c| reply_empty(reply, c.store.sync()));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.core.store.statfs() {
            Ok(st) => {
                let used = self.core.store.inode_count();
                reply.statfs(
                    st.f_blocks,
                    st.f_bfree,
                    st.f_bavail,
                    used + st.f_favail,
                    st.f_favail,
                    st.f_bsize as u32,
                    crate::store::NAME_BYTES_MAX as u32,
                    st.f_frsize as u32,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name.as_bytes();
        if name.starts_with(XATTR_PREFIX) {
            return self.set_version_attr(req, ino.0, name, value, reply);
        }
        if name == fileattr::FLAGS_XATTR {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        let c = &self.core;
        let is_acl = name == acl::ACCESS || name == acl::DEFAULT;
        let set = c.writable_ino_of(ino.0).and_then(|i| {
            c.refuse_if(i, fileattr::IMMUTABLE | fileattr::APPEND)?;
            if is_acl {
                c.set_acl(i, name, value, mode, (req.uid(), req.gid(), req.pid()))?;
            } else {
                c.store.set_xattr(i, name, value, mode)?;
            }
            Ok(i)
        });
        match set {
            // The kernel forgets the ACL it cached for this node only; the file's other nodes
            // forget theirs (and the mode an access ACL changed) through an invalidation.
            Ok(file) if is_acl => self.after_invalidating(c.stale_nodes(file, Some(ino.0)), |_| reply.ok()),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 == ROOT_INO && name.as_bytes() == crate::versions::STATS {
            // A walk of the whole index: on a worker, not on a thread that serves requests.
            return self.submit(move |c| reply_xattr(reply, size, c.cached_stats_text()));
        }
        reply_xattr(reply, size, self.core.xattr_get(ino.0, name.as_bytes(), req));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let c = &self.core;
        let list = c.ino_of(ino.0).and_then(|i| c.store.xattr_names(i)).map(|names| {
            let mut out = Vec::new();
            let hidden = |n: &[u8]| n.starts_with(XATTR_PREFIX) || n == fileattr::FLAGS_XATTR;
            for n in names.iter().filter(|n| !hidden(n)) {
                out.extend_from_slice(n);
                out.push(0);
            }
            out
        });
        reply_xattr(reply, size, list);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes();
        if name.starts_with(XATTR_PREFIX) {
            return reply.error(Errno::EPERM);
        }
        let c = &self.core;
        let removed = c.writable_ino_of(ino.0).and_then(|i| {
            c.refuse_if(i, fileattr::IMMUTABLE | fileattr::APPEND)?;
            if name == fileattr::FLAGS_XATTR {
                return Err(StoreError::NoAttribute);
            }
            c.store.remove_xattr(i, name)
        });
        reply_empty(reply, removed);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = &self.core;
        let node = NewNode {
            kind: Kind::File,
            perm: (mode & 0o7777) as u16,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
        };
        let (ino, inode) = match c.make_inode(req, parent, name, node, umask) {
            Ok(made) => made,
            Err(e) => return reply.error(errno(&e)),
        };
        // A creator that writes gets the file's writer node at once (nodes.rs).
        let writable = OpenFlags(flags).acc_mode() != OpenAccMode::O_RDONLY;
        let nodeid = match c.nodes.created(ino, writable) {
            Ok(id) => id,
            Err(e) => return reply.error(errno(&e)),
        };
        let attr = to_attr(nodeid, &inode, 0, inode.mtime);
        match c.open_file(req, nodeid, OpenFlags(flags), true) {
            // A new file's first node is its primary one (node id = st_ino), so the entry and
            // its attributes can be cached alike (fuser's create reply has one TTL for both).
            Ok((fh, open_flags)) => {
                reply.created(&attr_ttl(nodeid), &attr, Generation(0), FileHandle(fh), open_flags)
            }
            Err(e) => {
                tracing::error!("open of new file inode {ino} failed: {e:?}");
                reply.error(e)
            }
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let c = &self.core;
        let file = match c.ino_of(ino.0) {
            Ok(i) => c.lock_key(ino.0, i),
            Err(e) => return reply.error(errno(&e)),
        };
        let want = Lock { owner: lock_owner.0, pid, start, end, typ };
        match c.locks.test(file, &want) {
            Some(l) => reply.locked(l.start, l.end, l.typ, l.pid),
            None => reply.locked(start, end, libc::F_UNLCK, pid),
        }
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let c = &self.core;
        let lock = Lock { owner: lock_owner.0, pid, start, end, typ };
        match c.ino_of(ino.0) {
            Ok(file) => {
                let request = locks::Request { lock, fh: fh.0, tid: req.pid() };
                c.locks.set(c.lock_key(ino.0, file), request, sleep, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    // File attributes (chattr/lsattr). Other commands get ENOTTY without a log line: an
    // unprivileged loop must not be able to grow the daemon's log (Python's open() sends an
    // ioctl on every call).
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let c = &self.core;
        let result = c.fileattr_ioctl(ino.0, cmd, in_data);
        if cmd == fileattr::FS_IOC_SETFLAGS || cmd == fileattr::FS_IOC_FSSETXATTR {
            // ctime changed: every node of the file shows it.
            if let (Ok(_), Ok(file)) = (&result, c.ino_of(ino.0)) {
                let stale = c.stale_nodes(file, None);
                return self.after_invalidating(stale, move |_| reply.ioctl(0, &[]));
            }
        }
        match result {
            Ok(data) => reply.ioctl(0, &data),
            Err(StoreError::NotTty) => reply.error(Errno::ENOTTY),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and reports files always ready, as for ext4.
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // ENOSYS: the kernel seeks itself (SEEK_DATA/SEEK_HOLE as one extent of data).
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // Served here rather than left to the kernel's read-and-write fallback, which cannot
        // see that two of genfs's nodes are one file (overlap within a file is EINVAL).
        let tid = req.pid();
        self.submit(move |c| match c.copy_range((fh_in.0, offset_in), (fh_out.0, offset_out), len, tid) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        });
    }

    fn bmap(&self, _req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: fuser::ReplyBmap) {
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let c = &self.core;
        let result = (|| {
            let handle = c.handles.get(fh.0).ok_or(StoreError::InvalidArgument)?;
            let end = offset.checked_add(length).ok_or(StoreError::FileTooBig)?;
            let w = handle.writer().ok_or(StoreError::InvalidArgument)?;
            // The space is not reserved (a new generation's blocks are written at close), but
            // a request for more than the store has left is refused now, as ext4 does.
            let grow = end.saturating_sub(w.file.slot.lock().draft.size);
            c.change_draft(fh.0, grow, ChangedBy::Thread(req.pid()), |draft, _| match end > draft.size {
                true => draft.truncate(end, c.store.chunks()),
                false => Ok(()),
            })
        })();
        reply_empty(reply, result);
    }
}

/// Truncates the shared draft: ftruncate, or (`at_open`) the O_TRUNC of an open.
fn truncate_draft(c: &Core, handle: &Handle, size: u64, at_open: bool, tid: u32) -> StoreResult<()> {
    let w = handle.writer().ok_or(StoreError::InvalidArgument)?;
    c.store.check_writable()?;
    let mut slot = w.file.slot.lock();
    if slot.epoch != w.epoch || slot.draft.failed {
        return Err(StoreError::io("truncate", std::io::Error::from_raw_os_error(libc::EIO)));
    }
    if slot.draft.size == size {
        // Nothing changes but the times (O_TRUNC of an empty file).
        drop(slot);
        let now = Some(Timestamp::now());
        c.store.set_attrs(handle.ino, &SetAttrs { mtime: now, ..Default::default() })?;
        return Ok(());
    }
    slot.draft.truncate(size, c.store.chunks())?;
    w.changers.lock().record(ChangedBy::Thread(tid));
    w.only_truncated.store(at_open, Ordering::SeqCst);
    Ok(())
}
