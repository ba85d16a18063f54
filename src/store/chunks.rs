//! Immutable, content-addressed chunk files under `chunks/XX/HASH`.
//!
//! A chunk file is written once in `staging/`, fsynced, made read-only and hard-linked into
//! place (EEXIST means an identical chunk is already stored: dedup). It is never written,
//! truncated or renamed over afterwards (G7).
//!
//! Reads use `pread` on cached descriptors, not mmap: a chunk truncated behind the daemon's
//! back, or a disk error under it, then shows up as a short read or EIO for that reader,
//! where a mapping would kill the daemon with SIGBUS. A chunk is checked against its recorded
//! length and hash when its descriptor is first opened; later damage that keeps the length is
//! found by `genfs scrub`.

use super::error::{StoreError, StoreResult};
use super::io::StoreIo;
use super::records::{ChunkId, Hash, Manifest, Piece, SlotContent};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Open chunk descriptors kept (each costs one fd; the daemon raises RLIMIT_NOFILE).
const OPEN_CHUNKS_MAX: usize = 2048;

pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

struct Cached {
    file: Arc<File>,
    last_used: u64,
}

pub struct ChunkStore {
    dir: PathBuf,
    io: Arc<dyn StoreIo>,
    pub chunk_size: u64,
    cache: Mutex<(HashMap<Hash, Cached>, u64)>,
    /// Publish by hard link (EEXIST: already stored); false: rename under `rename_lock`.
    hard_links: bool,
    rename_lock: Mutex<()>,
}

impl ChunkStore {
    pub fn new(dir: PathBuf, io: Arc<dyn StoreIo>, chunk_size: u64, hard_links: bool) -> Self {
        ChunkStore {
            dir,
            io,
            chunk_size,
            cache: Mutex::new((HashMap::new(), 0)),
            hard_links,
            rename_lock: Mutex::new(()),
        }
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
        if !self.hard_links {
            return self.publish_by_rename(staged, &target);
        }
        match self.io.link(staged, &target) {
            Ok(()) => {}
            // Deduplicated: the chunk there must be these very bytes, never rewritten (G7).
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => invariant!(
                std::fs::read(&target).ok() == std::fs::read(staged).ok(),
                "published chunk {} differs from the staged copy with its hash",
                target.display()
            ),
            Err(e) => return Err(StoreError::io(format!("link chunk {}", target.display()), e)),
        }
        if let Err(e) = self.io.unlink(staged) {
            tracing::warn!("cannot remove staging file {}: {e}", staged.display());
        }
        Ok(())
    }

    /// For filesystems without hard links: rename into place unless the chunk exists. The lock
    /// makes check-and-rename atomic among publishers, so a chunk is never renamed over.
    fn publish_by_rename(&self, staged: &Path, target: &Path) -> StoreResult<()> {
        let _one_at_a_time = self.rename_lock.lock();
        if target.exists() {
            let _ = self.io.unlink(staged);
            return Ok(());
        }
        self.io
            .rename(staged, target)
            .map_err(|e| StoreError::io(format!("rename chunk {}", target.display()), e))
    }

    /// Whether this filesystem has hard links; `GENFS_NO_HARDLINKS=1` forces the fallback
    /// (tests of it run on filesystems that have them).
    pub fn probe_hard_links(staging: &Path) -> bool {
        if std::env::var_os("GENFS_NO_HARDLINKS").is_some_and(|v| v == "1") {
            return false;
        }
        let a = staging.join(".probe-link-a");
        let b = staging.join(".probe-link-b");
        let ok = std::fs::write(&a, b"").is_ok() && std::fs::hard_link(&a, &b).is_ok();
        let _ = std::fs::remove_file(&a);
        let _ = std::fs::remove_file(&b);
        ok
    }

    pub fn uses_hard_links(&self) -> bool {
        self.hard_links
    }

    /// An open, verified descriptor of the chunk.
    fn open(&self, id: &ChunkId) -> StoreResult<Arc<File>> {
        {
            let mut guard = self.cache.lock();
            let (cache, clock) = &mut *guard;
            *clock += 1;
            if let Some(c) = cache.get_mut(&id.hash) {
                c.last_used = *clock;
                return Ok(c.file.clone());
            }
        }
        let (file, _) = self.open_verified(id)?;
        let file = Arc::new(file);
        let mut guard = self.cache.lock();
        let (cache, clock) = &mut *guard;
        if cache.len() >= OPEN_CHUNKS_MAX {
            evict_oldest_quarter(cache);
        }
        cache.insert(id.hash, Cached { file: file.clone(), last_used: *clock });
        Ok(file)
    }

    /// Opens the chunk and checks its length and hash; returns it with its bytes.
    fn open_verified(&self, id: &ChunkId) -> StoreResult<(File, Vec<u8>)> {
        let path = self.path(&id.hash);
        let file = open_no_follow(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Corrupted(format!("chunk {} is missing", path.display()))
            } else {
                StoreError::io(format!("open chunk {}", path.display()), e)
            }
        })?;
        let mut bytes = vec![0u8; id.len as usize];
        self.read_exact_at(&file, &id.hash, 0, &mut bytes)?;
        let len =
            file.metadata().map_err(|e| StoreError::io(format!("stat chunk {}", path.display()), e))?.len();
        if len != id.len as u64 {
            return Err(StoreError::Corrupted(format!(
                "chunk {} is {len} bytes, expected {}",
                path.display(),
                id.len
            )));
        }
        if blake3::hash(&bytes).as_bytes() != &id.hash {
            return Err(StoreError::Corrupted(format!("chunk {} fails its hash", path.display())));
        }
        Ok((file, bytes))
    }

    /// Fills `buf` from `offset` of a chunk's descriptor; `hash` names the chunk in an error
    /// (its path is only made then: reads are the hot path).
    fn read_exact_at(&self, file: &File, hash: &Hash, offset: u64, buf: &mut [u8]) -> StoreResult<()> {
        file.read_exact_at(buf, offset).map_err(|e| {
            let path = self.path(hash);
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                StoreError::Corrupted(format!("chunk {} is shorter than recorded", path.display()))
            } else {
                StoreError::io(format!("read chunk {}", path.display()), e)
            }
        })
    }

    /// The whole chunk (verified).
    pub fn read_chunk(&self, id: &ChunkId) -> StoreResult<Vec<u8>> {
        let file = self.open(id)?;
        let mut bytes = vec![0u8; id.len as usize];
        self.read_exact_at(&file, &id.hash, 0, &mut bytes)?;
        Ok(bytes)
    }

    /// Copies the chunk's bytes from `within` into `dst`, zeros past the chunk's end.
    pub fn read_into(&self, id: &ChunkId, within: u64, dst: &mut [u8]) -> StoreResult<()> {
        let len = id.len as u64;
        if within >= len {
            return Ok(());
        }
        let n = dst.len().min((len - within) as usize);
        let file = self.open(id)?;
        self.read_exact_at(&file, &id.hash, within, &mut dst[..n])
    }

    /// Copies a slot's bytes from `within` into `dst`, which holds zeros: holes stay zeros.
    pub fn read_slot(&self, content: &SlotContent, within: u64, dst: &mut [u8]) -> StoreResult<()> {
        match content {
            SlotContent::Whole(id) => self.read_into(id, within, dst),
            SlotContent::Pieces(pieces) => self.read_pieces(pieces, within, dst),
        }
    }

    fn read_pieces(&self, pieces: &[Piece], within: u64, dst: &mut [u8]) -> StoreResult<()> {
        let end = within + dst.len() as u64;
        // Pieces are sorted and disjoint: skip those ending before the range.
        let first = pieces.partition_point(|p| p.at as u64 + p.len as u64 <= within);
        for p in pieces[first..].iter().take_while(|p| (p.at as u64) < end) {
            let (lo, hi) = ((p.at as u64).max(within), (p.at as u64 + p.len as u64).min(end));
            let out = &mut dst[(lo - within) as usize..(hi - within) as usize];
            self.read_into(&p.chunk, p.within as u64 + (lo - p.at as u64), out)?;
        }
        Ok(())
    }

    /// Drops a cached descriptor (gc unlinked the chunk; open descriptors stay valid).
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
            let dst = &mut out[(pos - offset) as usize..][..n as usize];
            if let Some(id) = m.chunks.get(&idx) {
                self.read_into(id, within, dst)?;
            } else if let Some(pieces) = m.pieces.get(&idx) {
                self.read_pieces(pieces, within, dst)?;
            }
            pos += n;
        }
        Ok(out)
    }
}

fn evict_oldest_quarter(cache: &mut HashMap<Hash, Cached>) {
    let mut ages: Vec<u64> = cache.values().map(|c| c.last_used).collect();
    ages.sort_unstable();
    let cutoff = ages[ages.len() / 4];
    cache.retain(|_, c| c.last_used > cutoff);
}

/// Opens a store file for reading; a symbolic link in its place fails (ELOOP), never followed.
pub(crate) fn open_no_follow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
}
