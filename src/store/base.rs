//! The index base: a copy of the whole index as of a checkpoint, kept in the journal
//! directory. With it, the journal keeps every record after the base, so a lost or damaged
//! index is rebuilt from the base and the records after it (`Store::rebuild_index`).
//!
//! File `journal/index-base`: a header (magic, the sequence number every record up to which
//! the copy holds), then entries as frames (`u32` key length, `u32` value length, key, value),
//! then a trailer (entry count, BLAKE3 of everything before the trailer). It is written aside,
//! synced and renamed into place, so a crash leaves the old base or the new one, whole; the
//! trailer's hash rejects any other damage.

use super::error::{StoreError, StoreResult};
use super::io::StoreIo;
use std::path::{Path, PathBuf};

pub const BASE_FILE: &str = "index-base";
const MAGIC: &[u8; 18] = b"genfs index base 1";
const HEADER_BYTES: usize = MAGIC.len() + 8;
const TRAILER_BYTES: usize = 8 + 32;
/// Entries are written out in pieces of about this size.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

pub fn path(journal_dir: &Path) -> PathBuf {
    journal_dir.join(BASE_FILE)
}

/// Streams entries into a new base file; `finish` makes it the base.
pub struct BaseWriter<'a> {
    io: &'a dyn StoreIo,
    dir: PathBuf,
    tmp: PathBuf,
    file: std::fs::File,
    buf: Vec<u8>,
    offset: u64,
    hasher: blake3::Hasher,
    count: u64,
}

impl<'a> BaseWriter<'a> {
    pub fn create(io: &'a dyn StoreIo, journal_dir: &Path, seq: u64) -> StoreResult<BaseWriter<'a>> {
        let tmp = journal_dir.join(format!("{BASE_FILE}.tmp"));
        let _ = io.unlink(&tmp);
        let file =
            io.create_new(&tmp, 0o600).map_err(|e| StoreError::io(format!("create {}", tmp.display()), e))?;
        let mut w = BaseWriter {
            io,
            dir: journal_dir.to_path_buf(),
            tmp,
            file,
            buf: Vec::with_capacity(WRITE_BUFFER_BYTES + 4096),
            offset: 0,
            hasher: blake3::Hasher::new(),
            count: 0,
        };
        w.put_bytes(MAGIC)?;
        w.put_bytes(&seq.to_le_bytes())?;
        Ok(w)
    }

    fn put_bytes(&mut self, bytes: &[u8]) -> StoreResult<()> {
        self.hasher.update(bytes);
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> StoreResult<()> {
        self.io
            .write_all_at(&self.file, &self.buf, self.offset)
            .map_err(|e| StoreError::io(format!("write {}", self.tmp.display()), e))?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.put_bytes(&(key.len() as u32).to_le_bytes())?;
        self.put_bytes(&(value.len() as u32).to_le_bytes())?;
        self.put_bytes(key)?;
        self.put_bytes(value)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the trailer, syncs, and renames the file into place.
    pub fn finish(mut self) -> StoreResult<()> {
        let digest = *self.hasher.finalize().as_bytes();
        self.buf.extend_from_slice(&self.count.to_le_bytes());
        self.buf.extend_from_slice(&digest);
        self.flush_buf()?;
        let target = self.dir.join(BASE_FILE);
        let fail = |what: &str, p: &Path| {
            let p = p.display().to_string();
            let what = what.to_string();
            move |e| StoreError::io(format!("{what} {p}"), e)
        };
        self.io.sync_data(&self.file).map_err(fail("fsync", &self.tmp))?;
        self.io.rename(&self.tmp, &target).map_err(fail("rename", &self.tmp))?;
        self.io.sync_dir(&self.dir).map_err(fail("fsync", &self.dir))
    }
}

/// The sequence number of the base in `journal_dir`, if there is one (only its header read).
pub fn seq(journal_dir: &Path) -> StoreResult<Option<u64>> {
    use std::io::Read;
    let p = path(journal_dir);
    let mut f = match super::chunks::open_no_follow(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("open {}", p.display()), e)),
    };
    let mut header = [0u8; HEADER_BYTES];
    f.read_exact(&mut header).map_err(|e| StoreError::io(format!("read {}", p.display()), e))?;
    parse_header(&header, &p).map(Some)
}

fn parse_header(header: &[u8], p: &Path) -> StoreResult<u64> {
    if header.len() < HEADER_BYTES || &header[..MAGIC.len()] != MAGIC {
        return Err(StoreError::Corrupted(format!("{} is not an index base", p.display())));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&header[MAGIC.len()..HEADER_BYTES]);
    Ok(u64::from_le_bytes(seq))
}

/// Reads and verifies the base; hands each entry to `each`; returns its sequence number.
pub fn read(journal_dir: &Path, mut each: impl FnMut(&[u8], &[u8]) -> StoreResult<()>) -> StoreResult<u64> {
    let p = path(journal_dir);
    let bytes = std::fs::read(&p).map_err(|e| StoreError::io(format!("read {}", p.display()), e))?;
    let bad = |what: &str| StoreError::Corrupted(format!("{}: {what}", p.display()));
    if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
        return Err(bad("too short"));
    }
    let seq = parse_header(&bytes, &p)?;
    let body_end = bytes.len() - TRAILER_BYTES;
    if blake3::hash(&bytes[..body_end]).as_bytes()[..] != bytes[body_end + 8..] {
        return Err(bad("fails its checksum"));
    }
    let mut count_bytes = [0u8; 8];
    count_bytes.copy_from_slice(&bytes[body_end..body_end + 8]);
    let count = u64::from_le_bytes(count_bytes);
    let mut pos = HEADER_BYTES;
    let mut read = 0u64;
    let u32_at = |at: usize| -> StoreResult<usize> {
        let field = bytes.get(at..at + 4).ok_or_else(|| bad("entry cut short"))?;
        Ok(u32::from_le_bytes([field[0], field[1], field[2], field[3]]) as usize)
    };
    while pos < body_end {
        let (klen, vlen) = (u32_at(pos)?, u32_at(pos + 4)?);
        let start = pos + 8;
        let end = start
            .checked_add(klen + vlen)
            .filter(|&e| e <= body_end)
            .ok_or_else(|| bad("entry past the end"))?;
        each(&bytes[start..start + klen], &bytes[start + klen..end])?;
        read += 1;
        pos = end;
    }
    if read != count {
        return Err(bad("entry count differs from the trailer's"));
    }
    Ok(seq)
}
