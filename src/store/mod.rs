//! The store: a directory holding immutable chunks, a journal that owns durability, and a sled
//! index brought up to date from the journal at open. No FUSE types here.
//!
//! Ordering rules: namespace changes are appended to the journal and applied to the index
//! under `ns_lock`, so they reach the index in sequence order. A commit holds the lock of its
//! inode from appending its record until the record is applied, and every change to an inode
//! takes that inode's lock, so each inode's image in the index changes in sequence order too.
//! That keeps replay (which applies records in sequence order) equal to what ran live.

/// Checks an invariant of the store in debug and test builds (the unit, fault and crash tests
/// run with them on); release builds leave the checking to fsck. A broken invariant is a bug:
/// it panics.
macro_rules! invariant {
    ($cond:expr, $($msg:tt)+) => {
        if cfg!(any(debug_assertions, test)) {
            assert!($cond, $($msg)+);
        }
    };
}

mod base;
pub mod chunks;
mod commit;
pub mod config;
pub mod draft;
pub mod error;
pub mod index;
pub mod io;
pub mod journal;
pub mod records;
mod repair;
mod space;
mod versions;

use chunks::ChunkStore;
use config::{StoreConfig, CONFIG_FILE};
pub use draft::Draft;
pub use error::{StoreError, StoreResult};
use index::{DirEntry, Index};
use io::StoreIo;
use journal::Journal;
use parking_lot::{Mutex, MutexGuard};
use records::{Ino, Inode, Kind, Manifest, Op, Record, Timestamp, ROOT_INO};
pub use repair::NamespaceRepair;
pub use space::{FreeFloor, SpaceStatus};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
pub use versions::{GcReport, LogEntry, Pinned, Retention, Stats};

pub const NAME_BYTES_MAX: usize = 255;
pub const XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
pub const XATTR_NAME_BYTES_MAX: usize = 255;
const INODE_LOCK_STRIPES: usize = 256;
/// Records after the last checkpoint that trigger a new one (a replay of 10,000 records takes
/// well under a second here).
const REPLAY_RECORDS_MAX: u64 = 10_000;
/// First readdir cookie of a directory's entries ("." and ".." take 1 and 2).
pub const FIRST_COOKIE: u64 = 3;

/// What a new node is.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Vec<u8>,
}

/// Attribute changes (None: unchanged).
#[derive(Debug, Clone, Default)]
pub struct SetAttrs {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrMode {
    Any,
    Create,
    Replace,
}

/// What happened when the store was opened.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub replayed_records: usize,
    /// Journal records after the checkpoint that the index held already (sled wrote ahead).
    pub skipped_records: usize,
    pub truncated_journal_bytes: u64,
    pub removed_staging_files: usize,
    /// Why the index was rebuilt from the index base and the journal, if it was.
    pub rebuilt_index: Option<String>,
}

pub struct Store {
    root: PathBuf,
    pub config: StoreConfig,
    io: Arc<dyn StoreIo>,
    index: Index,
    journal: Journal,
    chunks: ChunkStore,
    ns_lock: Mutex<()>,
    inode_locks: Vec<Mutex<()>>,
    /// Shared by commits from sealing to applying; exclusive while gc unlinks chunks.
    chunk_gc: parking_lot::RwLock<()>,
    /// Sequence number the index was last made durable through.
    checkpointed_seq: AtomicU64,
    /// Free bytes of the store's filesystem, and when that was measured.
    free_space: Mutex<(std::time::Instant, u64)>,
    next_ino: AtomicU64,
    /// The index refused a record the journal holds: memory and disk disagree until remount.
    index_failed: AtomicBool,
    pub recovery: RecoveryReport,
    _lock_file: File,
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(context, e)
}

pub fn validate_name(name: &[u8]) -> StoreResult<()> {
    if name.len() > NAME_BYTES_MAX {
        return Err(StoreError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(StoreError::InvalidName);
    }
    Ok(())
}

fn new_inode(n: &NewNode, now: Timestamp) -> Inode {
    Inode {
        kind: n.kind,
        perm: n.perm & 0o7777,
        uid: n.uid,
        gid: n.gid,
        nlink: if n.kind == Kind::Dir { 2 } else { 1 },
        rdev: n.rdev,
        size: if n.kind == Kind::Symlink { n.target.len() as u64 } else { 0 },
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        gen: 0,
        last_gen: 0,
        target: n.target.clone(),
        next_cookie: FIRST_COOKIE,
        history: None,
    }
}

impl Store {
    /// Creates a new store in `path` (missing or an empty directory).
    pub fn mkfs(path: &Path, chunk_size: u64, owner: (u32, u32)) -> StoreResult<()> {
        let config = StoreConfig::new(chunk_size)?;
        let io = io::RealIo;
        match std::fs::read_dir(path) {
            Ok(mut entries) => {
                if path.join(CONFIG_FILE).exists() {
                    return Err(StoreError::Exists);
                }
                if entries.next().is_some() {
                    return Err(StoreError::NotEmpty);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(path).map_err(io_err(format!("create {}", path.display())))?;
            }
            Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
        }
        // Others must not read the chunks (they hold every file's contents) nor change the tree.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io_err(format!("chmod 700 {}", path.display())))?;
        safety::check_store_files(path, euid())?;
        for sub in ["journal", "index", "chunks", "staging"] {
            let p = path.join(sub);
            io.create_dir(&p).map_err(io_err(format!("create {}", p.display())))?;
        }
        ChunkStore::create_shards(&path.join("chunks"), &io)?;
        Journal::create(&path.join("journal"), &io)?;
        let (journal, _) = Journal::open(&path.join("journal"), Arc::new(io::RealIo))?;
        let root =
            NewNode { kind: Kind::Dir, perm: 0o755, uid: owner.0, gid: owner.1, rdev: 0, target: vec![] };
        let record = journal
            .append(|_| vec![Op::PutInode { ino: ROOT_INO, inode: new_inode(&root, Timestamp::now()) }])?;
        journal.sync_to(record.seq)?;
        // The config file is written last: its presence marks a complete store.
        write_config(&io, path, &config)
    }

    pub fn open(path: &Path) -> StoreResult<Store> {
        Self::open_with_io(path, Arc::new(io::RealIo))
    }

    /// Opens a store: takes its lock, clears staging, replays the journal into the index.
    pub fn open_with_io(path: &Path, io: Arc<dyn StoreIo>) -> StoreResult<Store> {
        safety::check_store_files(path, euid())?;
        let mut config = StoreConfig::load(path)?;
        let lock_file = take_lock(path)?;
        let removed_staging_files = clear_dir(&path.join("staging"))?;
        let index_dir = path.join("index");
        let journal_dir = path.join("journal");
        let mut rebuilt_index = None;
        let index = match Index::open(&index_dir) {
            Ok(index) => index,
            Err(StoreError::Corrupted(why)) if can_rebuild_index(&journal_dir)? => {
                let moved = move_index_aside(path)?;
                rebuilt_index =
                    Some(format!("it could not be read ({why}); the damaged copy is in {}", moved.display()));
                Index::open(&index_dir)?
            }
            Err(e) => return Err(e),
        };
        if config.format < config::FORMAT_VERSION {
            // Format 1 differs only in its index, which `Index::open` has just moved; format 2
            // lacks only the pieces, which format 3 reads without them.
            config.format = config::FORMAT_VERSION;
            write_config(io.as_ref(), path, &config)?;
        }
        let (journal, replay) = Journal::open(&journal_dir, io.clone())?;
        let behind = index.checkpoint_seq()?.filter(|&seq| seq < replay.checkpoint_seq);
        if let Some(seq) = behind {
            // The index is older than the checkpoint said (its durable commit was lost): the
            // records between are still in the journal, which keeps all after the base.
            tracing::warn!(
                "{}: the index holds the records through {seq} only, the journal's checkpoint is                  at {}: replaying from {seq}",
                path.display(),
                replay.checkpoint_seq
            );
            journal::replay_after(&journal_dir, seq, |record| match index.is_applied(record.seq)? {
                true => Ok(()),
                false if record.seq <= replay.checkpoint_seq => index.apply(&record),
                false => Ok(()), // replayed below with the rest
            })?;
        }
        // No root although a checkpoint covered its record: the index was lost or replaced.
        let lost = index.inode(ROOT_INO)?.is_none() && replay.checkpoint_seq > 0;
        if rebuilt_index.is_some() || (lost && can_rebuild_index(&journal_dir)?) {
            let why = rebuilt_index.take().unwrap_or_else(|| "it had lost the root directory".into());
            tracing::warn!(
                "{}: rebuilding the index from the index base and the journal: {why}",
                path.display()
            );
            rebuild_index_into(&index, &journal_dir)?;
            rebuilt_index = Some(why);
        }
        // sled may have written records to disk before the journal made them durable: a record
        // the index holds is skipped, never applied again over what came after it.
        let mut replayed_records = 0;
        for record in &replay.records {
            if !index.is_applied(record.seq)? {
                index.apply(record)?;
                replayed_records += 1;
            }
        }
        let skipped_records = replay.records.len() - replayed_records;
        let index_ahead = index.last_applied()?.filter(|&seq| seq > journal.last_seq());
        if let Some(seq) = index_ahead {
            journal.resume_above(seq);
        }
        if index.inode(ROOT_INO)?.is_none() {
            // fsck opens the store the same way, so "run fsck" would send the user in a circle.
            let index = path.join("index");
            return Err(StoreError::IndexLost(format!(
                "the index {} has lost the root directory (deleted, emptied or replaced?), and the \
                 journal keeps only the changes since its last checkpoint (sequence {}), so genfs \
                 cannot rebuild it: put back a copy of {} taken while the store was not mounted; \
                 the files' contents are all still in {}",
                index.display(),
                replay.checkpoint_seq,
                index.display(),
                path.join("chunks").display()
            )));
        }
        let next_ino = index.next_ino()?;
        let hard_links = ChunkStore::probe_hard_links(&path.join("staging"));
        let chunks = ChunkStore::new(path.join("chunks"), io.clone(), config.chunk_size, hard_links);
        let store = Store {
            root: path.to_path_buf(),
            config,
            io,
            index,
            journal,
            chunks,
            ns_lock: Mutex::new(()),
            inode_locks: (0..INODE_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            chunk_gc: parking_lot::RwLock::new(()),
            free_space: Mutex::new((std::time::Instant::now(), 0)),
            checkpointed_seq: AtomicU64::new(replay.checkpoint_seq),
            next_ino: AtomicU64::new(next_ino),
            index_failed: AtomicBool::new(false),
            recovery: RecoveryReport {
                replayed_records,
                skipped_records,
                truncated_journal_bytes: replay.truncated_bytes,
                removed_staging_files,
                rebuilt_index,
            },
            _lock_file: lock_file,
        };
        let repaired = behind.is_some() || store.recovery.rebuilt_index.is_some();
        if replayed_records > 0 || index_ahead.is_some() || repaired {
            store.checkpoint()?;
        }
        if base::seq(&journal_dir)?.is_none() {
            // Without a base the index could not be rebuilt once the journal is trimmed.
            store.write_index_base()?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// What the store relies on from its filesystem, for the log at mount.
    pub fn features(&self) -> String {
        let publish =
            if self.chunks.uses_hard_links() { "hard links" } else { "rename (no hard links here)" };
        format!(
            "chunks published by {publish}; durability by fdatasync and directory fsync;              O_TMPFILE, reflink and fallocate not needed"
        )
    }

    /// Writes are refused after a journal or index failure (G5).
    pub fn check_writable(&self) -> StoreResult<()> {
        if self.journal.has_failed() || self.index_failed.load(Ordering::SeqCst) {
            return Err(StoreError::ReadOnlyAfterIoFailure);
        }
        Ok(())
    }

    pub fn is_failed(&self) -> bool {
        self.check_writable().is_err()
    }

    fn lock_inodes(&self, inos: &[Ino]) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = inos.iter().map(|i| (*i as usize) % INODE_LOCK_STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| self.inode_locks[s].lock()).collect()
    }

    /// Applies an appended record to the index. If that fails, the operation fails (its caller
    /// reports the error) and must stay failed: the record is marked abandoned before the error
    /// goes back, so it is not replayed at the next mount even once it is durable; and the
    /// store turns read-only.
    fn apply(&self, record: &Record) -> StoreResult<()> {
        let result = match commit::sabotage::fail_index_apply() {
            true => {
                Err(StoreError::io("index apply (injected)", std::io::Error::from_raw_os_error(libc::EIO)))
            }
            false => self.index.apply(record),
        };
        self.journal.applied(record.seq);
        result.map_err(|e| {
            if let Err(m) = self.journal.abandon(record.seq) {
                tracing::error!(
                    "cannot mark failed record {} abandoned; a remount may replay it: {m}",
                    record.seq
                );
            }
            self.index_failure(e)
        })
    }

    /// Latches a failed index update or flush: the store turns read-only until remount, which
    /// rebuilds the index from its files and the journal (a failed fsync is never retried into
    /// a success that lost pages).
    fn index_failure(&self, e: StoreError) -> StoreError {
        self.index_failed.store(true, Ordering::SeqCst);
        tracing::error!("index update failed, store is now read-only: {e}");
        e
    }

    /// Appends and applies a namespace record (durable at the next sync).
    fn mutate(&self, ops: Vec<Op>) -> StoreResult<u64> {
        self.check_writable()?;
        let _ns = self.ns_lock.lock();
        let record = self.journal.append(|_| ops)?;
        self.apply(&record)?;
        Ok(record.seq)
    }

    /// Makes every namespace change so far durable (fsync of a directory, periodic sync).
    /// The close of a descriptor whose create made the file, written or not: the file's name is
    /// durable when this returns (G4; programs rely on empty marker and lock files).
    pub fn close_created(&self) -> StoreResult<()> {
        if commit::sabotage::skip_created_sync() {
            return Ok(());
        }
        self.sync()
    }

    pub fn sync(&self) -> StoreResult<()> {
        if self.journal.last_seq() == self.journal.durable_seq() {
            return Ok(());
        }
        self.journal.sync_all()
    }

    /// Makes the index durable up to the applied watermark and trims the journal.
    pub fn checkpoint(&self) -> StoreResult<()> {
        if self.is_failed() {
            return Ok(());
        }
        let watermark = self.journal.applied_watermark();
        // The index must never be durable ahead of the journal it is replayed from.
        self.journal.sync_to(watermark)?;
        // The index's durable commit, then the directory's sync (which is also where the crash
        // simulator takes its image of the index).
        if !commit::sabotage::skip_checkpoint_index_sync() {
            self.index
                .flush_checkpoint(watermark)
                .and_then(|_| sync_tree(self.io.as_ref(), &self.root.join("index")))
                .map_err(|e| self.index_failure(e))?;
        }
        self.journal.checkpoint(watermark)?;
        self.checkpointed_seq.store(watermark, Ordering::SeqCst);
        // Replay starts above the watermark now: the marks below it are not needed any more.
        self.index.forget_applied_through(watermark).map_err(|e| self.index_failure(e))
    }

    /// Whether enough records piled up since the last checkpoint that recovery (which replays
    /// them) would get slow: checkpoints are taken by time and by this bound.
    pub fn checkpoint_due(&self) -> bool {
        self.journal.last_seq().saturating_sub(self.checkpointed_seq.load(Ordering::SeqCst))
            >= REPLAY_RECORDS_MAX
    }

    pub fn inode(&self, ino: Ino) -> StoreResult<Inode> {
        self.index.inode(ino)?.ok_or(StoreError::NotFound)
    }

    fn dir_inode(&self, ino: Ino) -> StoreResult<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::Dir {
            return Err(StoreError::NotDir);
        }
        Ok(inode)
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> StoreResult<(Ino, Inode)> {
        if name.len() > NAME_BYTES_MAX {
            return Err(StoreError::NameTooLong);
        }
        let (ino, _) = self.index.lookup(parent, name)?.ok_or(StoreError::NotFound)?;
        Ok((ino, self.inode(ino)?))
    }

    pub fn readdir(&self, dir: Ino, after: u64, limit: usize) -> StoreResult<Vec<DirEntry>> {
        self.index.readdir(dir, after, limit)
    }

    /// The directory holding `ino`'s first name; for an inode without names, the directory
    /// its last name was removed from (retention is inherited from there); else the root.
    pub fn parent_of(&self, ino: Ino) -> StoreResult<Ino> {
        if let Some((parent, _)) = self.index.names_of(ino)?.first() {
            return Ok(*parent);
        }
        Ok(self.index.last_name(ino)?.map_or(ROOT_INO, |(parent, _)| parent))
    }

    /// A path of `ino` from the store's root, or `#INO` if it has no name any more.
    pub fn path_of(&self, ino: Ino) -> String {
        let mut parts = Vec::new();
        let mut at = ino;
        while at != ROOT_INO && parts.len() < 4096 {
            match self.names_of(at).ok().and_then(|n| n.into_iter().next()) {
                Some((parent, name)) => {
                    parts.push(String::from_utf8_lossy(&name).into_owned());
                    at = parent;
                }
                None => return format!("#{ino}"),
            }
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    pub fn names_of(&self, ino: Ino) -> StoreResult<Vec<(Ino, Vec<u8>)>> {
        self.index.names_of(ino)
    }

    pub fn create(&self, parent: Ino, name: &[u8], node: &NewNode) -> StoreResult<(Ino, Inode)> {
        self.create_with_xattrs(parent, name, node, Vec::new())
    }

    /// Creates a node with extended attributes (inherited ACLs) in the same journal record.
    pub fn create_with_xattrs(
        &self,
        parent: Ino,
        name: &[u8],
        node: &NewNode,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> StoreResult<(Ino, Inode)> {
        validate_name(name)?;
        let ino = self.next_ino.fetch_add(1, Ordering::SeqCst);
        let _locks = self.lock_inodes(&[parent, ino]);
        let mut dir = self.dir_inode(parent)?;
        if self.index.lookup(parent, name)?.is_some() {
            return Err(StoreError::Exists);
        }
        let now = Timestamp::now();
        let inode = new_inode(node, now);
        let cookie = take_cookie(&mut dir);
        dir.mtime = now;
        dir.ctime = now;
        if node.kind == Kind::Dir {
            dir.nlink += 1;
        }
        let mut ops = vec![
            Op::PutInode { ino, inode: inode.clone() },
            Op::PutDirent { parent, name: name.to_vec(), ino, kind: node.kind, cookie },
            Op::PutInode { ino: parent, inode: dir },
        ];
        ops.extend(xattrs.into_iter().map(|(name, value)| Op::PutXattr { ino, name, value }));
        self.mutate(ops)?;
        Ok((ino, inode))
    }

    /// Removes a non-directory name; returns the inode it named.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> StoreResult<Ino> {
        let (ino, _) = self.index.lookup(parent, name)?.ok_or(StoreError::NotFound)?;
        let _locks = self.lock_inodes(&[parent, ino]);
        let (ino, mut child) = self.lookup(parent, name)?;
        if child.kind == Kind::Dir {
            return Err(StoreError::IsDir);
        }
        let mut dir = self.dir_inode(parent)?;
        let now = Timestamp::now();
        dir.mtime = now;
        dir.ctime = now;
        child.nlink = child.nlink.saturating_sub(1);
        child.ctime = now;
        let mut ops =
            vec![Op::DelDirent { parent, name: name.to_vec() }, Op::PutInode { ino: parent, inode: dir }];
        if child.nlink == 0 {
            ops.push(Op::LostLastName { ino, parent });
        }
        // The inode stays even without names: open descriptors, history and time travel use it.
        ops.push(Op::PutInode { ino, inode: child });
        self.mutate(ops)?;
        Ok(ino)
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> StoreResult<Ino> {
        let (ino, _) = self.index.lookup(parent, name)?.ok_or(StoreError::NotFound)?;
        let _locks = self.lock_inodes(&[parent, ino]);
        let (ino, mut child) = self.lookup(parent, name)?;
        if child.kind != Kind::Dir {
            return Err(StoreError::NotDir);
        }
        if !self.index.dir_is_empty(ino)? {
            return Err(StoreError::NotEmpty);
        }
        let mut dir = self.dir_inode(parent)?;
        let now = Timestamp::now();
        dir.mtime = now;
        dir.ctime = now;
        dir.nlink = dir.nlink.saturating_sub(1);
        // Kept, unnamed, for time travel and snapshots (gc may drop it later).
        child.nlink = 0;
        child.ctime = now;
        self.mutate(vec![
            Op::DelDirent { parent, name: name.to_vec() },
            Op::LostLastName { ino, parent },
            Op::PutInode { ino, inode: child },
            Op::PutInode { ino: parent, inode: dir },
        ])?;
        Ok(ino)
    }

    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> StoreResult<Inode> {
        validate_name(name)?;
        let _locks = self.lock_inodes(&[parent, ino]);
        let mut inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(StoreError::NotPermitted);
        }
        let mut dir = self.dir_inode(parent)?;
        if self.index.lookup(parent, name)?.is_some() {
            return Err(StoreError::Exists);
        }
        let now = Timestamp::now();
        inode.nlink += 1;
        inode.ctime = now;
        let cookie = take_cookie(&mut dir);
        dir.mtime = now;
        dir.ctime = now;
        self.mutate(vec![
            Op::PutDirent { parent, name: name.to_vec(), ino, kind: inode.kind, cookie },
            Op::PutInode { ino, inode: inode.clone() },
            Op::PutInode { ino: parent, inode: dir },
        ])?;
        Ok(inode)
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE. Returns the inode that was replaced.
    pub fn rename(
        &self,
        p1: Ino,
        n1: &[u8],
        p2: Ino,
        n2: &[u8],
        mode: RenameMode,
    ) -> StoreResult<Option<Ino>> {
        validate_name(n2)?;
        let (src, _) = self.index.lookup(p1, n1)?.ok_or(StoreError::NotFound)?;
        let dst = self.index.lookup(p2, n2)?.map(|(i, _)| i);
        let mut involved = vec![p1, p2, src];
        involved.extend(dst);
        let _locks = self.lock_inodes(&involved);
        // Re-read under the locks: the names may have changed meanwhile.
        let (src, mut src_inode) = self.lookup(p1, n1)?;
        let dst = match self.index.lookup(p2, n2)? {
            Some((d, _)) => Some((d, self.inode(d)?)),
            None => None,
        };
        if dst.as_ref().map(|(d, _)| *d) != involved.get(3).copied() {
            return Err(StoreError::Busy);
        }
        let now = Timestamp::now();
        let mut dir1 = self.dir_inode(p1)?;
        let mut dir2 = if p1 == p2 { dir1.clone() } else { self.dir_inode(p2)? };
        let mut ops = Vec::new();
        let mut replaced = None;
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(StoreError::NotFound),
            (RenameMode::Exchange, Some((d, mut d_inode))) => {
                if d == src {
                    return Ok(None);
                }
                // Both names keep their places in readdir order; only the inodes swap.
                let c1 = self.index.cookie(p1, n1)?.ok_or(StoreError::NotFound)?;
                let c2 = self.index.cookie(p2, n2)?.ok_or(StoreError::NotFound)?;
                ops.push(Op::PutDirent {
                    parent: p1,
                    name: n1.to_vec(),
                    ino: d,
                    kind: d_inode.kind,
                    cookie: c1,
                });
                ops.push(Op::PutDirent {
                    parent: p2,
                    name: n2.to_vec(),
                    ino: src,
                    kind: src_inode.kind,
                    cookie: c2,
                });
                if p1 != p2 {
                    let src_dir = (src_inode.kind == Kind::Dir) as i64;
                    let dst_dir = (d_inode.kind == Kind::Dir) as i64;
                    dir1.nlink = (dir1.nlink as i64 - src_dir + dst_dir) as u32;
                    dir2.nlink = (dir2.nlink as i64 - dst_dir + src_dir) as u32;
                }
                d_inode.ctime = now;
                ops.push(Op::PutInode { ino: d, inode: d_inode });
            }
            (RenameMode::NoReplace, Some(_)) => return Err(StoreError::Exists),
            (_, dst) => {
                if let Some((d, mut d_inode)) = dst {
                    if d == src {
                        return Ok(None);
                    }
                    match (src_inode.kind == Kind::Dir, d_inode.kind == Kind::Dir) {
                        (true, false) => return Err(StoreError::NotDir),
                        (false, true) => return Err(StoreError::IsDir),
                        (true, true) if !self.index.dir_is_empty(d)? => return Err(StoreError::NotEmpty),
                        _ => {}
                    }
                    if d_inode.kind == Kind::Dir {
                        dir2.nlink = dir2.nlink.saturating_sub(1);
                        d_inode.nlink = 0;
                    } else {
                        d_inode.nlink = d_inode.nlink.saturating_sub(1);
                        // Save by rename keeps one history; a file that keeps another name
                        // (a hard link) is not replaced, and keeps its own.
                        if src_inode.kind == Kind::File && d_inode.kind == Kind::File && d_inode.nlink == 0 {
                            ops.extend(self.adopt_history(src, &mut src_inode, d, &d_inode)?);
                        }
                    }
                    d_inode.ctime = now;
                    if d_inode.nlink == 0 {
                        ops.push(Op::LostLastName { ino: d, parent: p2 });
                    }
                    ops.push(Op::PutInode { ino: d, inode: d_inode });
                    replaced = Some(d);
                }
                // Names keep their places in readdir order, so a listing that runs while files
                // are renamed neither repeats nor skips a name that exists throughout: a name
                // that was there keeps its cookie, and a rename within a directory moves the
                // entry's cookie to its new name (xfstests generic/736 renames every entry it
                // reads away and back).
                let kept = if replaced.is_some() { self.index.cookie(p2, n2)? } else { None };
                let cookie = match kept {
                    Some(kept) => kept,
                    None if p1 == p2 => self.index.cookie(p1, n1)?.ok_or(StoreError::NotFound)?,
                    None => take_cookie(&mut dir2),
                };
                ops.insert(0, Op::DelDirent { parent: p1, name: n1.to_vec() });
                ops.insert(
                    1,
                    Op::PutDirent { parent: p2, name: n2.to_vec(), ino: src, kind: src_inode.kind, cookie },
                );
                if src_inode.kind == Kind::Dir && p1 != p2 {
                    dir1.nlink = dir1.nlink.saturating_sub(1);
                    dir2.nlink += 1;
                }
            }
        }
        src_inode.ctime = now;
        dir1.mtime = now;
        dir1.ctime = now;
        dir2.mtime = now;
        dir2.ctime = now;
        ops.push(Op::PutInode { ino: src, inode: src_inode });
        if p1 == p2 {
            // Both images describe the same directory; keep the one with all updates.
            dir1.nlink = dir2.nlink;
            dir1.next_cookie = dir1.next_cookie.max(dir2.next_cookie);
            ops.push(Op::PutInode { ino: p1, inode: dir1 });
        } else {
            ops.push(Op::PutInode { ino: p1, inode: dir1 });
            ops.push(Op::PutInode { ino: p2, inode: dir2 });
        }
        self.mutate(ops)?;
        Ok(replaced)
    }

    pub fn set_attrs(&self, ino: Ino, change: &SetAttrs) -> StoreResult<Inode> {
        let _locks = self.lock_inodes(&[ino]);
        let mut inode = self.inode(ino)?;
        if let Some(p) = change.perm {
            inode.perm = p & 0o7777;
        }
        if let Some(u) = change.uid {
            inode.uid = u;
        }
        if let Some(g) = change.gid {
            inode.gid = g;
        }
        if let Some(t) = change.atime {
            inode.atime = t;
        }
        if let Some(t) = change.mtime {
            inode.mtime = t;
        }
        inode.ctime = change.ctime.unwrap_or_else(Timestamp::now);
        self.mutate(vec![Op::PutInode { ino, inode: inode.clone() }])?;
        Ok(inode)
    }

    /// Sets the atime `decide` gives the inode, if any; ctime stays (a read changes no status).
    pub fn update_atime(&self, ino: Ino, decide: impl Fn(&Inode) -> Option<Timestamp>) -> StoreResult<()> {
        if decide(&self.inode(ino)?).is_none() {
            return Ok(());
        }
        let _locks = self.lock_inodes(&[ino]);
        let mut inode = self.inode(ino)?;
        if let Some(t) = decide(&inode) {
            inode.atime = t;
            self.mutate(vec![Op::PutInode { ino, inode }])?;
        }
        Ok(())
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> StoreResult<Vec<u8>> {
        self.inode(ino)?;
        self.index.xattr(ino, name)?.ok_or(StoreError::NoAttribute)
    }

    pub fn xattr_names(&self, ino: Ino) -> StoreResult<Vec<Vec<u8>>> {
        self.inode(ino)?;
        self.index.xattr_names(ino)
    }

    pub fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> StoreResult<()> {
        if name.is_empty() || name.len() > XATTR_NAME_BYTES_MAX {
            return Err(StoreError::InvalidArgument);
        }
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(StoreError::AttributeTooBig);
        }
        let _locks = self.lock_inodes(&[ino]);
        let mut inode = self.inode(ino)?;
        let exists = self.index.xattr(ino, name)?.is_some();
        match (mode, exists) {
            (XattrMode::Create, true) => return Err(StoreError::Exists),
            (XattrMode::Replace, false) => return Err(StoreError::NoAttribute),
            _ => {}
        }
        inode.ctime = Timestamp::now();
        self.mutate(vec![
            Op::PutXattr { ino, name: name.to_vec(), value: value.to_vec() },
            Op::PutInode { ino, inode },
        ])?;
        Ok(())
    }

    /// Removes an extended attribute if the inode has it.
    pub fn discard_xattr(&self, ino: Ino, name: &[u8]) -> StoreResult<()> {
        match self.remove_xattr(ino, name) {
            Ok(()) | Err(StoreError::NoAttribute) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8]) -> StoreResult<()> {
        let _locks = self.lock_inodes(&[ino]);
        let mut inode = self.inode(ino)?;
        if self.index.xattr(ino, name)?.is_none() {
            return Err(StoreError::NoAttribute);
        }
        inode.ctime = Timestamp::now();
        self.mutate(vec![Op::DelXattr { ino, name: name.to_vec() }, Op::PutInode { ino, inode }])?;
        Ok(())
    }

    /// The current generation of a regular file: its number and manifest (gen 0 is empty).
    pub fn current_generation(&self, ino: Ino) -> StoreResult<(u64, Arc<Manifest>)> {
        let inode = self.inode(ino)?;
        if inode.kind != Kind::File {
            return Err(StoreError::InvalidArgument);
        }
        if inode.gen == 0 {
            return Ok((0, Manifest::shared_empty()));
        }
        Ok((inode.gen, Arc::new(self.generation(ino, inode.gen)?)))
    }

    pub fn generation(&self, ino: Ino, gen: u64) -> StoreResult<Manifest> {
        if gen == 0 {
            return Ok(Manifest::empty());
        }
        self.index.generation(ino, gen)?.ok_or_else(|| {
            StoreError::Corrupted(format!("generation {gen} of inode {ino} is missing from the index"))
        })
    }

    pub fn generations(&self, ino: Ino) -> StoreResult<Vec<(u64, Manifest)>> {
        self.index.generations(ino)
    }

    pub fn read(&self, manifest: &Manifest, offset: u64, size: u32) -> StoreResult<Vec<u8>> {
        self.chunks.read(manifest, offset, size)
    }

    /// A new draft of `ino` on top of its current generation.
    pub fn new_draft(&self, ino: Ino) -> StoreResult<Draft> {
        let (gen, manifest) = self.current_generation(ino)?;
        Ok(Draft::new(ino, gen, &manifest, self.root.join("staging")))
    }

    pub fn inode_count(&self) -> u64 {
        self.next_ino.load(Ordering::SeqCst)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.sync().and_then(|_| self.checkpoint()) {
            tracing::error!("checkpoint at close failed (the journal still holds everything): {e}");
        }
    }
}

/// Allocates a new readdir cookie in a directory.
fn take_cookie(dir: &mut Inode) -> u64 {
    let c = dir.next_cookie;
    dir.next_cookie += 1;
    c
}

/// The daemon's effective user: root must not trust a store others can change (`safety`).
fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// The pid written in the store's lock by the daemon holding it; None if nobody holds it.
pub fn lock_holder(store: &Path) -> StoreResult<Option<String>> {
    match try_lock(store)? {
        Ok(_unlocked_on_drop) => Ok(None),
        Err(holder) => Ok(Some(holder)),
    }
}

/// Takes the store's lock: the open lock file, or (inner Err) the holder's pid.
fn try_lock(store: &Path) -> StoreResult<Result<File, String>> {
    let path = store.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a valid descriptor.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Ok(Err(holder.trim().to_string()));
        }
        return Err(StoreError::io(format!("lock {}", path.display()), err));
    }
    Ok(Ok(file))
}

fn take_lock(store: &Path) -> StoreResult<File> {
    let file = match try_lock(store)? {
        Ok(file) => file,
        Err(holder) => {
            let msg = format!("store {} is in use by another genfs daemon (pid {holder})", store.display());
            return Err(StoreError::io(msg, std::io::Error::from_raw_os_error(libc::EWOULDBLOCK)));
        }
    };
    let _ = file.set_len(0);
    let _ = std::os::unix::fs::FileExt::write_all_at(&file, std::process::id().to_string().as_bytes(), 0);
    Ok(file)
}

fn clear_dir(dir: &Path) -> StoreResult<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        std::fs::remove_file(entry.path()).map_err(io_err(format!("remove {}", entry.path().display())))?;
        n += 1;
    }
    Ok(n)
}

/// fsyncs every file and directory below `dir` (sled's files at a checkpoint).
/// A new index base is written by gc once the journal holds this many records after the old
/// one, or the old one is this old: each costs a pass over the index and its size in writes
/// (about 250 MB at a million files), while the journal must keep what came after it.
const BASE_RECORDS_MAX: u64 = 100_000;
const BASE_AGE_MAX: std::time::Duration = std::time::Duration::from_secs(3600);

impl Store {
    /// Whether gc should write a new index base (see [`BASE_RECORDS_MAX`]).
    pub(crate) fn index_base_due(&self) -> StoreResult<bool> {
        let journal_dir = self.root.join("journal");
        let Some(seq) = base::seq(&journal_dir)? else { return Ok(true) };
        let age = std::fs::metadata(base::path(&journal_dir))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or(BASE_AGE_MAX);
        Ok(self.journal.last_seq().saturating_sub(seq) >= BASE_RECORDS_MAX || age >= BASE_AGE_MAX)
    }

    /// Writes a new index base (a copy of the index as of the last checkpoint) and lets the
    /// journal drop what it covers. Costs one pass over the index; gc calls it.
    pub fn write_index_base(&self) -> StoreResult<()> {
        let journal_dir = self.root.join("journal");
        let seq = self.checkpointed_seq.load(Ordering::SeqCst);
        let mut writer = base::BaseWriter::create(self.io.as_ref(), &journal_dir, seq)?;
        self.index.each_entry(|k, v| writer.entry(k, v))?;
        writer.finish()?;
        self.journal.set_base(seq)
    }
}

/// Whether a lost index can be rebuilt: from the base and the records after it, or from a
/// journal that still starts at the first record.
fn can_rebuild_index(journal_dir: &Path) -> StoreResult<bool> {
    if base::seq(journal_dir)?.is_some() {
        return Ok(true);
    }
    let first = std::fs::read_dir(journal_dir)
        .map_err(io_err(format!("read {}", journal_dir.display())))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".log")?.parse::<u64>().ok())
        .min();
    Ok(first == Some(1))
}

/// Loads the base (if any) into an empty index and applies every journal record after it
/// that the index does not hold yet.
fn rebuild_index_into(index: &Index, journal_dir: &Path) -> StoreResult<()> {
    let mut entries = Vec::new();
    let after = match base::seq(journal_dir)? {
        Some(_) => base::read(journal_dir, |k, v| {
            entries.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?,
        None => 0,
    };
    index.load(&mut entries.into_iter())?;
    journal::replay_after(journal_dir, after, |record| match index.is_applied(record.seq)? {
        true => Ok(()),
        false => index.apply(&record),
    })?;
    index.flush()
}

/// Moves `index/` to `index.replaced-SECONDS` and leaves an empty one; returns where it went.
fn move_index_aside(path: &Path) -> StoreResult<PathBuf> {
    let secs = Timestamp::now().secs;
    let aside = path.join(format!("index.replaced-{secs}"));
    std::fs::rename(path.join("index"), &aside)
        .map_err(io_err(format!("rename {}", path.join("index").display())))?;
    std::fs::create_dir(path.join("index"))
        .map_err(io_err(format!("create {}", path.join("index").display())))?;
    Ok(aside)
}

/// `genfs fsck --rebuild-index`: moves the index aside (kept, not deleted) so that the next
/// open rebuilds it; refuses when nothing could rebuild it. Returns where the old one went.
pub fn rebuild_index(path: &Path) -> StoreResult<PathBuf> {
    StoreConfig::load(path)?;
    let _lock = take_lock(path)?;
    if !can_rebuild_index(&path.join("journal"))? {
        return Err(StoreError::IndexLost(format!(
            "{}: there is no index base and the journal no longer starts at its first record, so              the index cannot be rebuilt; it was left as it is",
            path.display()
        )));
    }
    move_index_aside(path)
}

/// Replaces `genfs.toml` atomically (written aside, synced, renamed, directory synced).
fn write_config(io: &dyn StoreIo, path: &Path, config: &StoreConfig) -> StoreResult<()> {
    let tmp = path.join("genfs.toml.tmp");
    let _ = io.unlink(&tmp);
    let f = io.create_new(&tmp, 0o600).map_err(io_err(format!("create {}", tmp.display())))?;
    io.write_all_at(&f, config.render().as_bytes(), 0).map_err(io_err(format!("write {}", tmp.display())))?;
    io.sync_data(&f).map_err(io_err(format!("fsync {}", tmp.display())))?;
    io.rename(&tmp, &path.join(CONFIG_FILE)).map_err(io_err(format!("rename {}", tmp.display())))?;
    io.sync_dir(path).map_err(io_err(format!("fsync {}", path.display())))
}

fn sync_tree(io: &dyn StoreIo, dir: &Path) -> StoreResult<()> {
    for entry in std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        let path = entry.path();
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_tree(io, &path)?;
        } else {
            io.sync_dir(&path).map_err(io_err(format!("fsync {}", path.display())))?;
        }
    }
    io.sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))
}

pub mod check;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
mod crashsim;
#[cfg(test)]
mod fault_tests;
pub mod safety;
#[cfg(test)]
mod tests;
