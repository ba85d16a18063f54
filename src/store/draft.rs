//! A draft: the uncommitted state of one file, shared by all its writable handles.
//!
//! It holds only the chunks it touched, each as a file in `staging/` (copied from the base
//! generation on first write, or new); untouched chunks still point at committed chunk files.
//! Nothing in `chunks/` or the index changes while a draft is written.

use super::chunks::ChunkStore;
use super::error::{StoreError, StoreResult};
use super::records::{ChunkId, Ino, Manifest, Timestamp};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest file genfs stores (as ext4 with 4 KiB blocks); writes past it get EFBIG.
pub const FILE_BYTES_MAX: u64 = 16 << 40;

pub(crate) struct Staged {
    pub file: File,
    pub path: PathBuf,
    /// Bytes in the staging file; the chunk reads as zeros after them.
    pub len: u64,
}

pub(crate) enum Slot {
    Committed(ChunkId),
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
    staging_dir: PathBuf,
}

static STAGING_SERIAL: AtomicU64 = AtomicU64::new(0);

impl Draft {
    pub(crate) fn new(ino: Ino, base_gen: u64, base: &Manifest, staging_dir: PathBuf) -> Draft {
        Draft {
            ino,
            base_gen,
            size: base.size,
            mtime: base.mtime,
            slots: base.chunks.iter().map(|(i, c)| (*i, Slot::Committed(*c))).collect(),
            dirty: false,
            failed: false,
            staging_dir,
        }
    }

    fn new_staged(&self, idx: u64) -> StoreResult<Staged> {
        let serial = STAGING_SERIAL.fetch_add(1, Ordering::Relaxed);
        let path = self.staging_dir.join(format!("{}-{}-{idx}-{serial}", std::process::id(), self.ino));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| StoreError::io(format!("create staging file {}", path.display()), e))?;
        Ok(Staged { file, path, len: 0 })
    }

    /// The staging file for chunk `idx`, copying the committed chunk on first touch.
    fn staged(&mut self, idx: u64, chunks: &ChunkStore) -> StoreResult<&mut Staged> {
        let needs_copy = match self.slots.get(&idx) {
            Some(Slot::Staged(_)) => None,
            Some(Slot::Committed(id)) => Some(Some(*id)),
            None => Some(None),
        };
        if let Some(base) = needs_copy {
            let mut staged = self.new_staged(idx)?;
            if let Some(id) = base {
                let bytes = chunks.read_chunk(&id)?;
                staged
                    .file
                    .write_all_at(&bytes, 0)
                    .map_err(|e| StoreError::io(format!("write {}", staged.path.display()), e))?;
                staged.len = bytes.len() as u64;
            }
            self.slots.insert(idx, Slot::Staged(staged));
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
                .file
                .write_all_at(piece, within)
                .map_err(|e| StoreError::io(format!("write {}", staged.path.display()), e))?;
            staged.len = staged.len.max(within + n);
            pos += n;
        }
        self.size = self.size.max(end);
        self.touch();
        Ok(())
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
                Some(Slot::Committed(id)) => chunks.read_into(id, within, dst)?,
                Some(Slot::Staged(s)) if within < s.len => {
                    let want = dst.len().min((s.len - within) as usize);
                    s.file
                        .read_exact_at(&mut dst[..want], within)
                        .map_err(|e| StoreError::io(format!("read {}", s.path.display()), e))?;
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
                Some(Slot::Committed(id)) => id.len as u64 > within,
                Some(Slot::Staged(s)) => s.len > within,
                None => false,
            };
            if within > 0 && longer {
                let staged = self.staged(idx, chunks)?;
                staged
                    .file
                    .set_len(within)
                    .map_err(|e| StoreError::io(format!("truncate {}", staged.path.display()), e))?;
                staged.len = within;
            }
        }
        self.size = new_size;
        self.touch();
        Ok(())
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
