//! The commit protocol (DESIGN.md §4), top to bottom:
//!
//! 1. seal: each staged slot is stored whole or, when little of it changed, as its changed
//!    ranges (pieces) beside its unchanged stored bytes; each new chunk is hashed,
//!    fdatasync'd, made read-only and linked into `chunks/`;
//! 2. every chunk directory that gained an entry is fsynced;
//! 3. the commit record (new generation + inode image) is appended to the journal and
//!    fdatasync'd — shared with concurrent commits (group commit);
//! 4. the record is applied to the index: the generation becomes current.
//!
//! A failure in 1–3 fails the commit and the draft (never published later, G5); the previous
//! generation stays current. A failure in 4, after the record is durable, fails the commit
//! too: the record is marked abandoned (so a remount does not replay it) and the store turns
//! read-only, as after a failed journal sync. Data reaches stable storage before the directory entry that names
//! it, and both before the journal record that points at them.

use super::draft::{create_staging_file, join_gap, Draft, Slot, Staged};
use super::error::{StoreError, StoreResult};
use super::records::{ChunkId, Inode, Manifest, Op, Piece, SlotContent, Timestamp};
use super::Store;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A slot may hold this many pieces; past it, a commit merges neighbouring pieces into one.
/// The bound keeps a read of a slot to a few dozen chunk reads. Which neighbours: those that
/// re-store the fewest bytes per piece they remove (`cheapest_merge`), so a log's run of small
/// appended pieces merges long before the big piece it follows is touched.
const PIECES_MAX: usize = 48;

impl Store {
    /// Commits the draft as the file's next generation and returns the new inode image.
    pub fn commit(&self, draft: &mut Draft) -> StoreResult<Inode> {
        self.commit_superseding(draft, None)
    }

    /// Commits, and in the same record drops generation `superseded` (an empty generation
    /// that only an O_TRUNC at open made, replaced by the same open file's next commit).
    pub fn commit_superseding(&self, draft: &mut Draft, superseded: Option<u64>) -> StoreResult<Inode> {
        if draft.failed {
            return Err(StoreError::io("commit", std::io::Error::from_raw_os_error(libc::EIO)));
        }
        self.check_writable()?;
        let result = self.commit_inner(draft, superseded);
        if result.is_err() {
            draft.failed = true;
            draft.discard_staged();
        }
        result
    }

    fn commit_inner(&self, draft: &mut Draft, superseded: Option<u64>) -> StoreResult<Inode> {
        // gc must not unlink a chunk this commit links to (dedup) before the commit counts it.
        let _gc = self.chunk_gc.read();
        let dirs = self.seal_chunks(draft)?;
        for dir in dirs.iter().filter(|_| !sabotage::skip_chunk_dir_fsync()) {
            self.io.sync_dir(dir).map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))?;
        }
        let mut layout = Manifest::empty();
        for (idx, slot) in &draft.slots {
            if let Slot::Committed(content) = slot {
                layout.set_slot(*idx, content.clone());
            }
        }
        let _inode_lock = self.lock_inodes(&[draft.ino]);
        let mut inode = self.index.inode(draft.ino)?.ok_or(StoreError::Stale)?;
        let gen = inode.last_gen + 1;
        invariant!(gen > inode.gen, "inode {}: generation {gen} after {}", draft.ino, inode.gen);
        let now = Timestamp::now();
        inode.gen = gen;
        inode.last_gen = gen;
        inode.size = draft.size;
        inode.mtime = draft.mtime;
        inode.ctime = now;
        let record = self.journal.append(|seq| {
            let manifest = Manifest { size: draft.size, mtime: draft.mtime, seq, committed: now, ..layout };
            let mut ops = vec![
                Op::PutGeneration { ino: draft.ino, gen, manifest },
                Op::PutInode { ino: draft.ino, inode: inode.clone() },
            ];
            ops.extend(superseded.filter(|g| *g < gen).map(|g| Op::DelGeneration { ino: draft.ino, gen: g }));
            ops
        })?;
        if let Err(e) = self.journal.sync_to(record.seq) {
            self.journal.applied(record.seq);
            return Err(e);
        }
        // Past this point the record is durable. If the index update fails, the record is
        // abandoned (never replayed) and the commit fails: nothing reported failed is published.
        self.apply(&record)?;
        draft.base_gen = gen;
        draft.dirty = false;
        draft.borrowed.clear(); // the new generation references those chunks itself
        Ok(inode)
    }

    /// Step 1: turns every staged slot into published chunks; returns the chunk directories
    /// that gained an entry.
    fn seal_chunks(&self, draft: &mut Draft) -> StoreResult<BTreeSet<PathBuf>> {
        let staged: Vec<u64> =
            draft.slots.iter().filter(|(_, s)| matches!(s, Slot::Staged(_))).map(|(i, _)| *i).collect();
        let mut dirs = BTreeSet::new();
        for idx in staged {
            let Some(Slot::Staged(s)) = draft.slots.remove(&idx) else {
                continue;
            };
            let path = s.path.clone();
            let sealed = self.seal_slot(s, &mut dirs);
            // Published or not, the staging file has served: chunks are links or copies.
            let _ = std::fs::remove_file(&path);
            if let Some(content) = sealed? {
                draft.slots.insert(idx, Slot::Committed(content));
            }
        }
        Ok(dirs)
    }

    /// Stores one staged slot: whole when it is new or little of it is unchanged, else as
    /// pieces. None for a slot that is all zeros (a hole).
    fn seal_slot(&self, mut s: Staged, dirs: &mut BTreeSet<PathBuf>) -> StoreResult<Option<SlotContent>> {
        let changed: u64 = s.changed.iter().map(|&(lo, hi)| hi.min(s.len).saturating_sub(lo)).sum();
        let Some(base) =
            s.base.take().filter(|_| s.len - changed.min(s.len) > join_gap(self.chunks.chunk_size))
        else {
            let mut content = vec![0u8; s.len as usize];
            s.read_exact_at(&mut content, 0)?;
            let path = s.path.clone();
            let id = self.store_chunk(s.file()?, &path, &content, dirs)?;
            return Ok(id.map(SlotContent::Whole));
        };
        let mut pieces = base.into_pieces();
        for &(lo, hi) in &s.changed {
            pieces = without(pieces, lo, hi);
        }
        pieces = without(pieces, s.len, u64::MAX);
        for &(lo, hi) in &s.changed {
            let hi = hi.min(s.len);
            if lo < hi {
                pieces.extend(self.store_range(&s, lo, hi, dirs)?);
            }
        }
        pieces.sort_by_key(|p| p.at);
        while pieces.len() > PIECES_MAX {
            let (first, last) = cheapest_merge(&pieces);
            let (lo, hi) = (pieces[first].at as u64, piece_end(&pieces[last]));
            let merged = self.store_range(&s, lo, hi, dirs)?;
            pieces.splice(first..=last, merged);
        }
        Ok((!pieces.is_empty()).then_some(SlotContent::Pieces(pieces)))
    }

    /// Stores bytes `lo..hi` of a staged slot as a chunk of their own: the piece that shows
    /// it there (None if they are all zeros).
    fn store_range(
        &self,
        s: &Staged,
        lo: u64,
        hi: u64,
        dirs: &mut BTreeSet<PathBuf>,
    ) -> StoreResult<Option<Piece>> {
        let mut bytes = vec![0u8; (hi - lo) as usize];
        s.read_exact_at(&mut bytes, lo)?;
        if bytes.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let staging = self.root.join("staging");
        let (file, path) = create_staging_file(&staging, "piece")?;
        let stored = file
            .write_all_at(&bytes, 0)
            .map_err(|e| StoreError::io(format!("write {}", path.display()), e))
            .and_then(|()| self.store_chunk(&file, &path, &bytes, dirs));
        let _ = std::fs::remove_file(&path);
        Ok(stored?.map(|chunk| Piece { at: lo as u32, len: chunk.len, chunk, within: 0 }))
    }

    /// Hashes, syncs and publishes a staging file holding `content`, and notes its chunk
    /// directory; None for all zeros (a hole: nothing to store).
    fn store_chunk(
        &self,
        file: &File,
        path: &Path,
        content: &[u8],
        dirs: &mut BTreeSet<PathBuf>,
    ) -> StoreResult<Option<ChunkId>> {
        if content.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let hash = *blake3::hash(content).as_bytes();
        if !sabotage::skip_data_fsync() {
            self.io
                .sync_data(file)
                .map_err(|e| StoreError::io(format!("fdatasync {}", path.display()), e))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(0o400))
            .map_err(|e| StoreError::io(format!("chmod {}", path.display()), e))?;
        // The shard is synced even when the chunk was already there: its entry may come
        // from a concurrent commit whose directory fsync has not happened yet.
        self.chunks.publish(path, &hash)?;
        dirs.insert(self.chunks.shard_dir(&hash));
        Ok(Some(ChunkId { hash, len: content.len() as u32 }))
    }
}

fn piece_end(p: &Piece) -> u64 {
    p.at as u64 + p.len as u64
}

/// The run of neighbouring pieces (first, last) whose merge re-stores the fewest bytes per
/// piece it removes (span / (pieces - 1)); of equal ones, the shortest.
fn cheapest_merge(pieces: &[Piece]) -> (usize, usize) {
    let mut best = (0, 1);
    let mut best_cost = u64::MAX;
    for first in 0..pieces.len() {
        for last in first + 1..pieces.len() {
            let span = piece_end(&pieces[last]) - pieces[first].at as u64;
            let cost = span / (last - first) as u64;
            if cost < best_cost {
                (best, best_cost) = ((first, last), cost);
            }
        }
    }
    best
}

/// The pieces with bytes `lo..hi` of the slot cut out.
fn without(pieces: Vec<Piece>, lo: u64, hi: u64) -> Vec<Piece> {
    let mut out = Vec::with_capacity(pieces.len() + 1);
    for p in pieces {
        let (at, end) = (p.at as u64, piece_end(&p));
        if end <= lo || at >= hi {
            out.push(p);
            continue;
        }
        if at < lo {
            out.push(Piece { len: (lo - at) as u32, ..p });
        }
        if end > hi {
            out.push(Piece {
                at: hi as u32,
                len: (end - hi) as u32,
                within: p.within + (hi - at) as u32,
                ..p
            });
        }
    }
    out
}

/// Test-only sabotage of the commit protocol, to prove the crash simulator catches the bugs
/// it exists for (`crash_tests::canary_*`). Thread-local: only commits made by the thread
/// that turned a switch on are affected, so other tests running in parallel are not.
#[cfg(test)]
pub(crate) mod sabotage {
    use std::cell::Cell;

    thread_local! {
        /// Skip the fsync of each chunk directory that gained an entry (step 2).
        pub(crate) static SKIP_CHUNK_DIR_FSYNC: Cell<bool> = const { Cell::new(false) };
        /// Skip the fdatasync of each chunk's data before it is linked (step 1).
        pub(crate) static SKIP_DATA_FSYNC_BEFORE_JOURNAL: Cell<bool> = const { Cell::new(false) };
        /// Fail the next index update (after the record is appended, and for a commit, after
        /// it is durable).
        pub(crate) static FAIL_INDEX_APPLY: Cell<bool> = const { Cell::new(false) };
        /// Count journal records durable without their fdatasync (step 3).
        pub(crate) static SKIP_JOURNAL_SYNC: Cell<bool> = const { Cell::new(false) };
        /// gc unlinks chunks before the records that dropped their references are durable.
        pub(crate) static SKIP_GC_JOURNAL_SYNC: Cell<bool> = const { Cell::new(false) };
        /// A checkpoint records the index durable without its durable commit.
        pub(crate) static SKIP_CHECKPOINT_INDEX_SYNC: Cell<bool> = const { Cell::new(false) };
        /// The close of a created file returns without syncing the journal.
        pub(crate) static SKIP_CREATED_SYNC: Cell<bool> = const { Cell::new(false) };
    }

    pub(crate) fn skip_created_sync() -> bool {
        SKIP_CREATED_SYNC.with(Cell::get)
    }

    pub(crate) fn skip_journal_sync() -> bool {
        SKIP_JOURNAL_SYNC.with(Cell::get)
    }

    pub(crate) fn skip_gc_journal_sync() -> bool {
        SKIP_GC_JOURNAL_SYNC.with(Cell::get)
    }

    pub(crate) fn skip_checkpoint_index_sync() -> bool {
        SKIP_CHECKPOINT_INDEX_SYNC.with(Cell::get)
    }

    pub(crate) fn fail_index_apply() -> bool {
        FAIL_INDEX_APPLY.with(|f| f.replace(false))
    }

    pub(crate) fn skip_chunk_dir_fsync() -> bool {
        SKIP_CHUNK_DIR_FSYNC.with(Cell::get)
    }

    pub(crate) fn skip_data_fsync() -> bool {
        SKIP_DATA_FSYNC_BEFORE_JOURNAL.with(Cell::get)
    }
}

#[cfg(not(test))]
pub(crate) mod sabotage {
    pub(crate) fn fail_index_apply() -> bool {
        false
    }

    pub(crate) fn skip_created_sync() -> bool {
        false
    }

    pub(crate) fn skip_journal_sync() -> bool {
        false
    }

    pub(crate) fn skip_gc_journal_sync() -> bool {
        false
    }

    pub(crate) fn skip_checkpoint_index_sync() -> bool {
        false
    }

    pub(crate) fn skip_chunk_dir_fsync() -> bool {
        false
    }

    pub(crate) fn skip_data_fsync() -> bool {
        false
    }
}
