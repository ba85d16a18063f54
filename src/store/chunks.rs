//! Immutable, content-addressed chunk files under `chunks/XX/HASH`, read through mmap.
//!
//! A chunk file is written once in `staging/`, fsynced, made read-only and hard-linked into
//! place (EEXIST means an identical chunk is already stored: dedup). It is never written,
//! truncated or renamed over afterwards (G7). Mapped chunks are checked against their recorded
//! length and hash when first mapped; a mismatch is reported as corruption (EIO to readers).

use super::error::{StoreError, StoreResult};
use super::io::StoreIo;
use super::records::{ChunkId, Hash, Manifest};
use memmap2::Mmap;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAPPINGS_MAX: usize = 4096;

pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

struct Cached {
    map: Arc<Mmap>,
    last_used: u64,
}

pub struct ChunkStore {
    dir: PathBuf,
    io: Arc<dyn StoreIo>,
    pub chunk_size: u64,
    cache: Mutex<(HashMap<Hash, Cached>, u64)>,
}

impl ChunkStore {
    pub fn new(dir: PathBuf, io: Arc<dyn StoreIo>, chunk_size: u64) -> Self {
        ChunkStore { dir, io, chunk_size, cache: Mutex::new((HashMap::new(), 0)) }
    }

    pub fn shard_dir(&self, hash: &Hash) -> PathBuf {
        self.dir.join(format!("{:02x}", hash[0]))
    }

    pub fn path(&self, hash: &Hash) -> PathBuf {
        self.shard_dir(hash).join(hex(hash))
    }

    /// Creates the 256 shard directories (mkfs).
    pub fn create_shards(dir: &Path, io: &dyn StoreIo) -> StoreResult<()> {
        for i in 0..=255u8 {
            let shard = dir.join(format!("{i:02x}"));
            io.create_dir(&shard).map_err(|e| StoreError::io(format!("mkdir {}", shard.display()), e))?;
        }
        io.sync_dir(dir).map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))
    }

    /// Links a synced staging file into place; an existing chunk of that hash is kept (dedup).
    pub fn publish(&self, staged: &Path, hash: &Hash) -> StoreResult<()> {
        let target = self.path(hash);
        match self.io.link(staged, &target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(StoreError::io(format!("link chunk {}", target.display()), e)),
        }
        if let Err(e) = self.io.unlink(staged) {
            tracing::warn!("cannot remove staging file {}: {e}", staged.display());
        }
        Ok(())
    }

    /// A verified mapping of the chunk.
    pub fn map(&self, id: &ChunkId) -> StoreResult<Arc<Mmap>> {
        {
            let mut guard = self.cache.lock();
            let (cache, clock) = &mut *guard;
            *clock += 1;
            if let Some(c) = cache.get_mut(&id.hash) {
                c.last_used = *clock;
                return Ok(c.map.clone());
            }
        }
        let map = Arc::new(self.map_verified(id)?);
        let mut guard = self.cache.lock();
        let (cache, clock) = &mut *guard;
        if cache.len() >= MAPPINGS_MAX {
            evict_oldest_quarter(cache);
        }
        cache.insert(id.hash, Cached { map: map.clone(), last_used: *clock });
        Ok(map)
    }

    fn map_verified(&self, id: &ChunkId) -> StoreResult<Mmap> {
        let path = self.path(&id.hash);
        let file =
            File::open(&path).map_err(|e| StoreError::io(format!("open chunk {}", path.display()), e))?;
        let len =
            file.metadata().map_err(|e| StoreError::io(format!("stat chunk {}", path.display()), e))?.len();
        if len != id.len as u64 {
            return Err(StoreError::Corrupted(format!(
                "chunk {} is {len} bytes, expected {}",
                path.display(),
                id.len
            )));
        }
        // SAFETY: chunk files are never written or truncated after they are linked (G7); the
        // size was checked just above. Damage by another process is detected by the hash below.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| StoreError::io(format!("mmap chunk {}", path.display()), e))?;
        if blake3::hash(&map).as_bytes() != &id.hash {
            return Err(StoreError::Corrupted(format!("chunk {} fails its hash", path.display())));
        }
        Ok(map)
    }

    /// Drops a cached mapping (gc unlinked the chunk; existing mappings stay valid).
    pub fn forget(&self, hash: &Hash) {
        self.cache.lock().0.remove(hash);
    }

    /// Copies `size` bytes at `offset` of a generation (clipped to its size) into a buffer.
    pub fn read(&self, m: &Manifest, offset: u64, size: u32) -> StoreResult<Vec<u8>> {
        let end = m.size.min(offset.saturating_add(size as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let cs = self.chunk_size;
        let mut pos = offset;
        while pos < end {
            let idx = pos / cs;
            let within = pos % cs;
            let n = (cs - within).min(end - pos);
            if let Some(id) = m.chunks.get(&idx) {
                let map = self.map(id)?;
                copy_clipped(&map, within, &mut out[(pos - offset) as usize..][..n as usize]);
            }
            pos += n;
        }
        Ok(out)
    }
}

/// Copies from `src[from..]` into `dst`, leaving zeros past the end of `src`.
pub fn copy_clipped(src: &[u8], from: u64, dst: &mut [u8]) {
    let from = from as usize;
    if from < src.len() {
        let n = dst.len().min(src.len() - from);
        dst[..n].copy_from_slice(&src[from..from + n]);
    }
}

fn evict_oldest_quarter(cache: &mut HashMap<Hash, Cached>) {
    let mut ages: Vec<u64> = cache.values().map(|c| c.last_used).collect();
    ages.sort_unstable();
    let cutoff = ages[ages.len() / 4];
    cache.retain(|_, c| c.last_used > cutoff);
}
