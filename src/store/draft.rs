//! A draft: the uncommitted state of one file, shared by all its writable handles.
//!
//! It holds only the chunk slots it touched, each as a file in `staging/` (copied from the base
//! generation on first write, or new), with the byte ranges written since; untouched slots
//! still point at committed chunks. Nothing in `chunks/` or the index changes while a draft is
//! written. The commit stores a touched slot whole, or only its written ranges as pieces
//! (`commit.rs`).

use super::chunks::ChunkStore;
use super::error::{StoreError, StoreResult};
use super::records::{Ino, Manifest, SlotContent, Timestamp};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Largest file genfs stores (as ext4 with 4 KiB blocks); writes past it get EFBIG.
pub const FILE_BYTES_MAX: u64 = 16 << 40;

/// Staging descriptors one draft keeps open; the others are closed and reopened by path when
/// touched again. Without a bound, one writer touching a byte in each of 20,000 chunks held
/// 20,000 descriptors, and every other user's opens failed with EMFILE.
const STAGED_OPEN_MAX: usize = 16;
/// Staging descriptors all drafts together keep open between writes. Past it, a draft closes
/// all of its own after each write, so many writers of many files cannot starve the daemon
/// either: what stays open is bounded by this plus the writes in flight.
const STAGED_OPEN_TOTAL_MAX: usize = 1024;

/// Staging descriptors open in this process.
static STAGED_OPEN: AtomicUsize = AtomicUsize::new(0);

pub(crate) struct Staged {
    /// None while closed to stay within [`STAGED_OPEN_MAX`]; the file itself stays in place.
    file: Option<File>,
    pub path: PathBuf,
    /// Bytes in the staging file; the chunk reads as zeros after them.
    pub len: u64,
    /// What the slot held before this draft touched it (None: a hole or past the end).
    pub base: Option<SlotContent>,
    /// Ranges of the slot changed since `base` (written, or zeroed by a truncation), sorted
    /// and disjoint; ranges less than [`join_gap`] apart are joined.
    pub changed: Vec<(u64, u64)>,
}

/// Changed ranges closer than this are stored as one: re-storing up to 4 KiB of unchanged
/// bytes between them costs less than one more piece (a chunk file) to read and keep. Small
/// slots (tests use 4 KiB) get a proportionally smaller gap, so pieces happen there too.
pub fn join_gap(chunk_size: u64) -> u64 {
    (chunk_size / 16).min(4096)
}

impl Staged {
    /// Records that `lo..hi` of the slot changed.
    fn mark_changed(&mut self, lo: u64, hi: u64, chunk_size: u64) {
        if lo >= hi {
            return;
        }
        let (mut lo, mut hi, gap) = (lo, hi, join_gap(chunk_size));
        // Ranges that overlap or come within the gap of lo..hi merge with it.
        let first = self.changed.partition_point(|r| r.1 + gap < lo);
        let mut last = first;
        while last < self.changed.len() && self.changed[last].0 <= hi + gap {
            lo = lo.min(self.changed[last].0);
            hi = hi.max(self.changed[last].1);
            last += 1;
        }
        self.changed.splice(first..last, [(lo, hi)]);
    }
}

impl Staged {
    /// The staging file's descriptor, reopened if it was closed. (Closing loses nothing: the
    /// data is in the page cache, a later fsync of any descriptor writes it, and a writeback
    /// error nobody has seen yet is reported to descriptors opened after it.)
    pub fn file(&mut self) -> StoreResult<&File> {
        if self.file.is_none() {
            self.file = Some(open_staging(&self.path, false)?);
            STAGED_OPEN.fetch_add(1, Ordering::Relaxed);
        }
        self.file.as_ref().ok_or(StoreError::InvalidArgument)
    }

    fn close(&mut self) {
        if self.file.take().is_some() {
            STAGED_OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> StoreResult<()> {
        let mut read = |f: &File| {
            f.read_exact_at(buf, offset)
                .map_err(|e| StoreError::io(format!("read {}", self.path.display()), e))
        };
        match &self.file {
            Some(f) => read(f),
            None => read(&open_staging(&self.path, false)?),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.close();
    }
}

/// Creates a new staging file named after `what`, unique in this process.
pub(crate) fn create_staging_file(dir: &std::path::Path, what: &str) -> StoreResult<(File, PathBuf)> {
    let serial = STAGING_SERIAL.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}-{what}-{serial}", std::process::id()));
    Ok((open_staging(&path, true)?, path))
}

/// Opens (or with `create`, creates) a staging file; never through a symbolic link.
fn open_staging(path: &std::path::Path, create: bool) -> StoreResult<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW);
    if create {
        options.create_new(true).mode(0o600);
    }
    options.open(path).map_err(|e| {
        let what = if create { "create" } else { "reopen" };
        StoreError::io(format!("{what} staging file {}", path.display()), e)
    })
}

pub(crate) enum Slot {
    Committed(SlotContent),
    Staged(Staged),
}

pub struct Draft {
    pub ino: Ino,
    /// Generation the draft started from (or was last committed as).
    pub base_gen: u64,
    pub size: u64,
    pub mtime: Timestamp,
    pub(crate) slots: BTreeMap<u64, Slot>,
    /// Changed since the base generation.
    pub dirty: bool,
    /// A commit of this draft failed: it must never be published (G5).
    pub failed: bool,
    /// Generations whose chunks some slot shares since a copy by reference: gc keeps them
    /// until a commit makes those chunks this file's own references.
    pub borrowed: Vec<(Ino, u64)>,
    staging_dir: PathBuf,
    /// Chunks whose staging descriptor is open, oldest first.
    open_staged: VecDeque<u64>,
}

static STAGING_SERIAL: AtomicU64 = AtomicU64::new(0);

impl Draft {
    pub(crate) fn new(ino: Ino, base_gen: u64, base: &Manifest, staging_dir: PathBuf) -> Draft {
        Draft {
            ino,
            base_gen,
            size: base.size,
            mtime: base.mtime,
            slots: base.slots().into_iter().map(|(i, c)| (i, Slot::Committed(c))).collect(),
            dirty: false,
            failed: false,
            borrowed: Vec::new(),
            staging_dir,
            open_staged: VecDeque::new(),
        }
    }

    fn new_staged(&self, idx: u64, base: Option<SlotContent>) -> StoreResult<Staged> {
        let (file, path) = create_staging_file(&self.staging_dir, &format!("{}-{idx}", self.ino))?;
        STAGED_OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Staged { file: Some(file), path, len: 0, base, changed: Vec::new() })
    }

    /// Records that chunk `idx`'s descriptor is open, closing the oldest beyond the bound.
    fn opened(&mut self, idx: u64) {
        self.open_staged.retain(|&i| i != idx);
        self.open_staged.push_back(idx);
        while self.open_staged.len() > STAGED_OPEN_MAX {
            let Some(oldest) = self.open_staged.pop_front() else { break };
            if let Some(Slot::Staged(s)) = self.slots.get_mut(&oldest) {
                s.close();
            }
        }
    }

    /// The staging file for chunk `idx`, copying the committed slot on first touch.
    fn staged(&mut self, idx: u64, chunks: &ChunkStore) -> StoreResult<&mut Staged> {
        let needs_copy = match self.slots.get(&idx) {
            Some(Slot::Staged(_)) => None,
            Some(Slot::Committed(content)) => Some(Some(content.clone())),
            None => Some(None),
        };
        let copied = needs_copy.is_some();
        if let Some(base) = needs_copy {
            let mut staged = self.new_staged(idx, base.clone())?;
            if let Some(content) = base {
                let mut bytes = vec![0u8; content.len() as usize];
                chunks.read_slot(&content, 0, &mut bytes)?;
                staged
                    .file()?
                    .write_all_at(&bytes, 0)
                    .map_err(|e| StoreError::io(format!("write {}", staged.path.display()), e))?;
                staged.len = bytes.len() as u64;
            }
            self.slots.insert(idx, Slot::Staged(staged));
        }
        let was_open = matches!(self.slots.get(&idx), Some(Slot::Staged(s)) if s.file.is_some());
        if !was_open || copied {
            self.opened(idx);
        }
        match self.slots.get_mut(&idx) {
            Some(Slot::Staged(s)) => Ok(s),
            _ => Err(StoreError::InvalidArgument),
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8], chunks: &ChunkStore) -> StoreResult<()> {
        let end = offset.checked_add(data.len() as u64).ok_or(StoreError::FileTooBig)?;
        if end > FILE_BYTES_MAX {
            return Err(StoreError::FileTooBig);
        }
        let cs = chunks.chunk_size;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = pos % cs;
            let n = (cs - within).min(end - pos);
            let piece = &data[(pos - offset) as usize..][..n as usize];
            let staged = self.staged(idx, chunks)?;
            staged
                .file()?
                .write_all_at(piece, within)
                .map_err(|e| StoreError::io(format!("write {}", staged.path.display()), e))?;
            staged.len = staged.len.max(within + n);
            staged.mark_changed(within, within + n, cs);
            pos += n;
        }
        self.size = self.size.max(end);
        self.touch();
        if STAGED_OPEN.load(Ordering::Relaxed) > STAGED_OPEN_TOTAL_MAX {
            self.close_staged();
        }
        Ok(())
    }

    /// Closes every staging descriptor of this draft (the files stay).
    fn close_staged(&mut self) {
        for idx in std::mem::take(&mut self.open_staged) {
            if let Some(Slot::Staged(s)) = self.slots.get_mut(&idx) {
                s.close();
            }
        }
    }

    pub fn read(&self, offset: u64, size: u32, chunks: &ChunkStore) -> StoreResult<Vec<u8>> {
        let end = self.size.min(offset.saturating_add(size as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let cs = chunks.chunk_size;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = pos % cs;
            let n = (cs - within).min(end - pos);
            let dst = &mut out[(pos - offset) as usize..][..n as usize];
            match self.slots.get(&idx) {
                Some(Slot::Committed(content)) => chunks.read_slot(content, within, dst)?,
                Some(Slot::Staged(s)) if within < s.len => {
                    let want = dst.len().min((s.len - within) as usize);
                    s.read_exact_at(&mut dst[..want], within)?;
                }
                _ => {}
            }
            pos += n;
        }
        Ok(out)
    }

    pub fn truncate(&mut self, new_size: u64, chunks: &ChunkStore) -> StoreResult<()> {
        if new_size > FILE_BYTES_MAX {
            return Err(StoreError::FileTooBig);
        }
        if new_size < self.size {
            let cs = chunks.chunk_size;
            let keep = new_size.div_ceil(cs);
            for (_, slot) in self.slots.split_off(&keep) {
                discard(slot);
            }
            let within = new_size % cs;
            let idx = new_size / cs;
            let longer = match self.slots.get(&idx) {
                Some(Slot::Committed(content)) => content.len() > within,
                Some(Slot::Staged(s)) => s.len > within,
                None => false,
            };
            if within > 0 && longer {
                let staged = self.staged(idx, chunks)?;
                staged
                    .file()?
                    .set_len(within)
                    .map_err(|e| StoreError::io(format!("truncate {}", staged.path.display()), e))?;
                // The bytes cut off read as zeros if the file grows again: changed too.
                staged.mark_changed(within, staged.len, cs);
                staged.len = within;
            }
        }
        self.size = new_size;
        self.touch();
        Ok(())
    }

    /// Makes slot `idx` hold what a slot of generation `from` holds (`content`; None: a hole)
    /// without copying a byte: the commit references the same chunks, as a reflink would.
    /// `len`: the bytes it stands for, a whole slot or the source's slot up to its end. False
    /// (and nothing changed) where a byte of this draft past `len` in the slot would be lost.
    pub fn share_slot(
        &mut self,
        idx: u64,
        content: Option<SlotContent>,
        len: u64,
        from: (Ino, u64),
        chunk_size: u64,
    ) -> StoreResult<bool> {
        let start = idx.checked_mul(chunk_size).ok_or(StoreError::FileTooBig)?;
        if start.saturating_add(len) > FILE_BYTES_MAX {
            return Err(StoreError::FileTooBig);
        }
        let overwrites_all = len == chunk_size || self.size <= start + len;
        if !overwrites_all || content.as_ref().is_some_and(|c| c.len() > len) {
            return Ok(false);
        }
        if let Some(old) = self.slots.remove(&idx) {
            discard(old);
        }
        self.open_staged.retain(|&i| i != idx);
        if let Some(content) = content {
            self.slots.insert(idx, Slot::Committed(content));
        }
        if !self.borrowed.contains(&from) {
            self.borrowed.push(from);
        }
        self.size = self.size.max(start + len);
        self.touch();
        Ok(true)
    }

    fn touch(&mut self) {
        self.dirty = true;
        self.mtime = Timestamp::now();
    }

    /// Drops every staging file (after a failed commit, or when the last writer leaves).
    pub fn discard_staged(&mut self) {
        let staged: Vec<u64> =
            self.slots.iter().filter(|(_, s)| matches!(s, Slot::Staged(_))).map(|(i, _)| *i).collect();
        for idx in staged {
            if let Some(slot) = self.slots.remove(&idx) {
                discard(slot);
            }
        }
    }
}

fn discard(slot: Slot) {
    if let Slot::Staged(s) = slot {
        if let Err(e) = std::fs::remove_file(&s.path) {
            tracing::warn!("cannot remove staging file {}: {e}", s.path.display());
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        self.discard_staged();
    }
}
