//! The index: a redb table brought up to date from the journal. No redb type leaves this module.
//!
//! One table, keys prefixed by kind (all integers big-endian so ranges sort):
//! `i ino` inode · `d parent name` dirent · `c parent cookie` readdir order · `b ino parent name`
//! names of an inode · `g ino gen` manifest · `r hash` chunk references and length ·
//! `x ino name` xattr · `h parent len name seq` what a name pointed to from `seq` on (time
//! travel) · `t secs` last sequence number of that second · `s name` snapshot · `a seq` record
//! `seq` is applied (kept until a checkpoint covers it).
//!
//! Records are applied in one write transaction each, committed without durability: only a
//! checkpoint's commit (`flush`) is durable, so after a crash the index is what the last
//! checkpoint left, and replay of the journal brings it up to date. Applying is idempotent:
//! every op writes a full image, and a generation's chunk references rise only when the
//! generation is new. The `a seq` marks let replay skip a record the index already holds (an
//! index restored from a copy may be ahead of the journal; see `Store::open_with_io`).
//!
//! Stores of format 1 kept the index in sled; `open` moves such an index into redb once
//! (sled wrote up to 6 times the live data to disk, and far more under churn).

use super::error::{StoreError, StoreResult};
use super::records::{Hash, Ino, Inode, Kind, Manifest, Op, Record, Timestamp};
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::ops::Bound;
use std::path::Path;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct DirentValue {
    ino: Ino,
    kind: Kind,
    cookie: u64,
}

/// What a name pointed to at some point (None: nothing).
type NameTarget = Option<(Ino, Kind)>;
/// (parent, name, seq, what the name pointed to from `seq` on).
pub type NameHistoryEntry = (Ino, Vec<u8>, u64, NameTarget);

/// A directory entry as readdir returns it.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: Kind,
}

pub struct Index {
    /// Shared by every transaction; exclusive only for a compaction, which needs none open.
    db: parking_lot::RwLock<redb::Database>,
}

/// Meta key (prefix `m`): the next inode number to hand out.
const NEXT_INO_KEY: &[u8] = b"mnext_ino";
/// Meta key: the checkpoint the index last made durable.
const CHECKPOINT_KEY: &[u8] = b"mcheckpoint";

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

fn inode_key(ino: Ino) -> Vec<u8> {
    key(b'i', &[&ino.to_be_bytes()])
}
fn dirent_key(parent: Ino, name: &[u8]) -> Vec<u8> {
    key(b'd', &[&parent.to_be_bytes(), name])
}
fn cookie_key(parent: Ino, cookie: u64) -> Vec<u8> {
    key(b'c', &[&parent.to_be_bytes(), &cookie.to_be_bytes()])
}
fn backlink_key(ino: Ino, parent: Ino, name: &[u8]) -> Vec<u8> {
    key(b'b', &[&ino.to_be_bytes(), &parent.to_be_bytes(), name])
}
fn gen_key(ino: Ino, gen: u64) -> Vec<u8> {
    key(b'g', &[&ino.to_be_bytes(), &gen.to_be_bytes()])
}
fn ref_key(hash: &Hash) -> Vec<u8> {
    key(b'r', &[hash])
}
fn xattr_key(ino: Ino, name: &[u8]) -> Vec<u8> {
    key(b'x', &[&ino.to_be_bytes(), name])
}
/// Names are length-prefixed so that one name's history is a prefix of no other name's.
fn history_prefix(parent: Ino, name: &[u8]) -> Vec<u8> {
    key(b'h', &[&parent.to_be_bytes(), &[name.len() as u8], name])
}
fn history_key(parent: Ino, name: &[u8], seq: u64) -> Vec<u8> {
    let mut k = history_prefix(parent, name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
/// (parent, name, seq) of a `history_key`.
fn parse_history_key(k: &[u8]) -> StoreResult<(Ino, Vec<u8>, u64)> {
    let parent = be_u64_at(k, 1, "history key")?;
    let len = *k.get(9).ok_or_else(|| short("history key", k, 10))? as usize;
    let name = k.get(10..10 + len).ok_or_else(|| short("history key", k, 10 + len))?;
    let seq = be_u64_at(k, 10 + len, "history key")?;
    if k.len() != 18 + len {
        return Err(short("history key", k, 18 + len));
    }
    Ok((parent, name.to_vec(), seq))
}

/// A key or value shorter (or longer) than its layout: the index is damaged.
fn short(what: &str, bytes: &[u8], want: usize) -> StoreError {
    StoreError::Corrupted(format!("index {what}: {} bytes, layout needs {want}", bytes.len()))
}

/// The big-endian u64 at `at` (key fields).
fn be_u64_at(bytes: &[u8], at: usize, what: &str) -> StoreResult<u64> {
    let field = bytes.get(at..at + 8).ok_or_else(|| short(what, bytes, at + 8))?;
    Ok(u64::from_be_bytes(field.try_into().map_err(|_| short(what, bytes, at + 8))?))
}

/// A value that is exactly one little-endian u64.
fn le_u64(v: &[u8], what: &str) -> StoreResult<u64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| short(what, v, 8))?;
    Ok(u64::from_le_bytes(bytes))
}
fn time_key(t: Timestamp) -> Vec<u8> {
    key(b't', &[&(t.secs.max(0) as u64).to_be_bytes()])
}
fn snapshot_key(name: &[u8]) -> Vec<u8> {
    key(b's', &[name])
}
fn applied_key(seq: u64) -> Vec<u8> {
    key(b'a', &[&seq.to_be_bytes()])
}

/// Chunk reference count and the chunk's length (for stored-bytes statistics).
fn ref_value(count: u64, len: u32) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..8].copy_from_slice(&count.to_le_bytes());
    v[8..].copy_from_slice(&len.to_le_bytes());
    v
}
/// A malformed count is an error, never 0: gc unlinks chunks whose count is 0.
fn read_ref(v: &[u8]) -> StoreResult<(u64, u32)> {
    let bytes: [u8; 12] = v.try_into().map_err(|_| short("chunk reference", v, 12))?;
    let (count, len) = bytes.split_at(8);
    let count = u64::from_le_bytes(count.try_into().map_err(|_| short("chunk reference", v, 12))?);
    let len = u32::from_le_bytes(len.try_into().map_err(|_| short("chunk reference", v, 12))?);
    Ok((count, len))
}

/// A named snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub seq: u64,
    pub time: Timestamp,
}

fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| StoreError::Corrupted(format!("cannot encode an index value: {e}")))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> StoreResult<T> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupted(format!("index {what}: {e}")))
}

/// A generation's manifest, as any store format wrote it.
fn decode_manifest(bytes: &[u8]) -> StoreResult<Manifest> {
    Manifest::decode_stored(bytes).map_err(|e| StoreError::Corrupted(format!("index generation: {e}")))
}

/// An error of the index database: I/O as I/O, anything else as damage.
fn db_err(context: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        // redb reports a file that is not one of its databases as invalid data.
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupted(format!("index: {context}: {io}"))
        }
        redb::Error::Io(io) => StoreError::io(format!("index: {context}"), io),
        other => StoreError::Corrupted(format!("index: {context}: {other}")),
    }
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;
type ReadTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// The one table of the index.
const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("genfs");
/// The index file inside `index/`.
const DB_FILE: &str = "genfs.redb";
/// Log pages and time travel read generations newest first in batches of this many.
const GENERATIONS_BATCH: usize = 32;
/// The index file is compacted once it exceeds this many times its data, plus the slack.
const COMPACT_ABOVE_FACTOR: u64 = 3;
const COMPACT_SLACK_BYTES: u64 = 1 << 20;
/// Whole-index walks read inodes in batches of this many.
const INODES_BATCH: usize = 1024;

/// The index's page cache: what the daemon's memory holds of the index, whatever its size
/// (redb's default is 1 GiB). `GENFS_INDEX_CACHE_MIB` overrides it.
const INDEX_CACHE_BYTES_DEFAULT: usize = 32 << 20;

fn index_cache_bytes() -> usize {
    std::env::var("GENFS_INDEX_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&mib| (1..=1 << 20).contains(&mib))
        .map_or(INDEX_CACHE_BYTES_DEFAULT, |mib| mib << 20)
}

/// Where an inode without names keeps (directory, sequence number) of its last name's removal
/// (an 8+8-byte value; hidden like every `user.genfs.` name).
pub(super) const LAST_NAME_XATTR: &[u8] = b"user.genfs.last-name";

/// The sequence number of a file's first generation (8 bytes, little-endian), kept once gc has
/// dropped that generation: time travel to before it shows the file empty, not gone.
pub(super) const FIRST_SEQ_XATTR: &[u8] = b"user.genfs.first-seq";

impl Index {
    /// Where the last name of `ino` was removed: (directory, sequence number); None if it
    /// has a name or lost it before this was recorded.
    pub fn last_name(&self, ino: Ino) -> StoreResult<Option<(Ino, u64)>> {
        let Some(v) = self.xattr(ino, LAST_NAME_XATTR)? else { return Ok(None) };
        if v.len() != 16 {
            return Err(short("last name", &v, 16));
        }
        Ok(Some((le_u64(&v[..8], "last name")?, le_u64(&v[8..], "last name")?)))
    }

    /// The sequence number of the file's first generation, if gc dropped that generation.
    pub fn first_seq(&self, ino: Ino) -> StoreResult<Option<u64>> {
        match self.xattr(ino, FIRST_SEQ_XATTR)? {
            Some(v) => Ok(Some(le_u64(&v, "first generation's sequence number")?)),
            None => Ok(None),
        }
    }

    /// Opens the index in directory `path` (moving a format-1 sled index into it first); the
    /// caller holds the store's lock.
    pub fn open(path: &Path) -> StoreResult<Index> {
        let file = path.join(DB_FILE);
        // A deleted index directory opens empty; the store then says what was lost.
        std::fs::create_dir_all(path).map_err(|e| StoreError::io(format!("create {}", path.display()), e))?;
        if !file.exists() && path.join("db").exists() {
            migrate_sled_index(path, &file)?;
        }
        remove_sled_files(path)?;
        let db = redb::Database::builder()
            .set_cache_size(index_cache_bytes())
            .create(&file)
            .map_err(|e| db_err(&format!("open {}", file.display()), e))?;
        let index = Index { db: parking_lot::RwLock::new(db) };
        // The table exists from the start, so readers never meet a missing one.
        index.write(Durability::Immediate, |_| Ok(()))?;
        Ok(index)
    }

    /// Runs `f` in a write transaction committed with `durability`; an error aborts it.
    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut Table) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let db = self.db.read();
        let mut tx = db.begin_write().map_err(|e| db_err("begin write", e))?;
        tx.set_durability(durability).map_err(|e| db_err("set durability", e))?;
        if matches!(durability, Durability::Immediate) {
            // The allocator state is saved with durable commits: reopening after a crash needs
            // no walk of the whole file.
            tx.set_quick_repair(true);
        }
        {
            let mut table = tx.open_table(TABLE).map_err(|e| db_err("open table", e))?;
            f(&mut table)?;
        }
        tx.commit().map_err(|e| db_err("commit", e))
    }

    /// Runs `f` on a consistent read-only view.
    fn read<T>(&self, f: impl FnOnce(&ReadTable) -> StoreResult<T>) -> StoreResult<T> {
        let db = self.db.read();
        let tx = db.begin_read().map_err(|e| db_err("begin read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| db_err("open table", e))?;
        f(&table)
    }

    /// Calls `f` with each (key, value) whose key starts with `prefix`, in key order, until it
    /// returns false.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> StoreResult<bool>,
    ) -> StoreResult<()> {
        self.read(|t| {
            for item in t.range(prefix..).map_err(|e| db_err("scan", e))? {
                let (k, v) = item.map_err(|e| db_err("scan", e))?;
                if !k.value().starts_with(prefix) || !f(k.value(), v.value())? {
                    break;
                }
            }
            Ok(())
        })
    }

    /// The last (key, value) in `range`, if any.
    fn last_in(&self, range: (Bound<&[u8]>, Bound<&[u8]>)) -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        self.read(|t| match t.range(range).map_err(|e| db_err("scan", e))?.next_back() {
            Some(item) => {
                let (k, v) = item.map_err(|e| db_err("scan", e))?;
                Ok(Some((k.value().to_vec(), v.value().to_vec())))
            }
            None => Ok(None),
        })
    }

    /// Makes everything applied so far durable (one durable commit; the caller fsyncs the
    /// directory too).
    pub fn flush(&self) -> StoreResult<()> {
        self.write(Durability::Immediate, |_| Ok(()))
    }

    /// The checkpoint's durable commit: with it the index records that it holds every record
    /// through `seq`. If a crash ever left the index behind the journal's checkpoint marker,
    /// open replays from this number instead (see `Store::open_with_io`).
    pub fn flush_checkpoint(&self, seq: u64) -> StoreResult<()> {
        self.write(Durability::Immediate, |t| put(t, CHECKPOINT_KEY, &seq.to_le_bytes()))
    }

    /// The sequence number of the last checkpoint the index itself made durable (None: made
    /// by a build that did not record it).
    pub fn checkpoint_seq(&self) -> StoreResult<Option<u64>> {
        self.get(CHECKPOINT_KEY)?.map(|v| le_u64(&v, "checkpoint")).transpose()
    }

    pub fn apply(&self, record: &Record) -> StoreResult<()> {
        self.write(Durability::None, |t| {
            for op in &record.ops {
                apply_op(t, record, op)?;
            }
            // The time index: the last sequence number applied in each second.
            let tk = time_key(record.time);
            let prev = match get_in(t, &tk)? {
                Some(v) => le_u64(&v, "time index")?,
                None => 0,
            };
            if record.seq > prev {
                put(t, &tk, &record.seq.to_le_bytes())?;
            }
            put(t, &applied_key(record.seq), &[])
        })
    }

    /// Whether record `seq` is in the index already (it was applied after the last checkpoint).
    pub fn is_applied(&self, seq: u64) -> StoreResult<bool> {
        Ok(self.get(&applied_key(seq))?.is_some())
    }

    /// The highest sequence number applied since the last checkpoint, if any.
    pub fn last_applied(&self) -> StoreResult<Option<u64>> {
        self.highest_number(b'a', "last applied")
    }

    /// The number after `prefix` in the last key under it (keys `prefix u64-be …`).
    fn highest_number(&self, prefix: u8, what: &str) -> StoreResult<Option<u64>> {
        let (start, end) = ([prefix], [prefix + 1]);
        match self.last_in((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
            Some((k, _)) => Ok(Some(be_u64_at(&k, 1, what)?)),
            None => Ok(None),
        }
    }

    /// Drops the marks of records at or below `seq`: call only once a durable checkpoint covers
    /// them, since replay never goes back that far.
    pub fn forget_applied_through(&self, seq: u64) -> StoreResult<()> {
        let (start, end) = (applied_key(0), applied_key(seq));
        self.write(Durability::None, |t| {
            t.retain_in(start.as_slice()..=end.as_slice(), |_, _| false).map_err(|e| db_err("drop marks", e))
        })
    }

    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.read(|t| Ok(t.get(key).map_err(|e| db_err("get", e))?.map(|v| v.value().to_vec())))
    }

    pub fn inode(&self, ino: Ino) -> StoreResult<Option<Inode>> {
        match self.get(&inode_key(ino))? {
            Some(v) => Ok(Some(decode(&v, "inode")?)),
            None => Ok(None),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> StoreResult<Option<(Ino, Kind)>> {
        match self.get(&dirent_key(parent, name))? {
            Some(v) => {
                let d: DirentValue = decode(&v, "dirent")?;
                Ok(Some((d.ino, d.kind)))
            }
            None => Ok(None),
        }
    }

    /// The readdir cookie of an entry.
    pub fn cookie(&self, parent: Ino, name: &[u8]) -> StoreResult<Option<u64>> {
        match self.get(&dirent_key(parent, name))? {
            Some(v) => Ok(Some(decode::<DirentValue>(&v, "dirent")?.cookie)),
            None => Ok(None),
        }
    }

    /// Entries of `parent` with cookie greater than `after`, in cookie order, at most `limit`.
    pub fn readdir(&self, parent: Ino, after: u64, limit: usize) -> StoreResult<Vec<DirEntry>> {
        let start = cookie_key(parent, after.saturating_add(1));
        let end = cookie_key(parent, u64::MAX);
        self.read(|t| {
            let mut out = Vec::new();
            for item in t.range(start.as_slice()..=end.as_slice()).map_err(|e| db_err("readdir", e))? {
                let (k, name) = item.map_err(|e| db_err("readdir", e))?;
                let cookie = be_u64_at(k.value(), 9, "readdir cookie")?;
                let name = name.value();
                if let Some(v) = t.get(dirent_key(parent, name).as_slice()).map_err(|e| db_err("get", e))? {
                    let d: DirentValue = decode(v.value(), "dirent")?;
                    out.push(DirEntry { cookie, name: name.to_vec(), ino: d.ino, kind: d.kind });
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    pub fn dir_is_empty(&self, dir: Ino) -> StoreResult<bool> {
        let mut empty = true;
        self.scan_prefix(&key(b'd', &[&dir.to_be_bytes()]), |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    /// Every (parent, name) that names `ino`.
    pub fn names_of(&self, ino: Ino) -> StoreResult<Vec<(Ino, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_prefix(&key(b'b', &[&ino.to_be_bytes()]), |k, _| {
            let parent = be_u64_at(k, 9, "name of an inode")?;
            out.push((parent, k[17..].to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn generation(&self, ino: Ino, gen: u64) -> StoreResult<Option<Manifest>> {
        match self.get(&gen_key(ino, gen))? {
            Some(v) => Ok(Some(decode_manifest(&v)?)),
            None => Ok(None),
        }
    }

    /// All kept generations of `ino`, oldest first.
    pub fn generations(&self, ino: Ino) -> StoreResult<Vec<(u64, Manifest)>> {
        let mut out = Vec::new();
        self.scan_prefix(&key(b'g', &[&ino.to_be_bytes()]), |k, v| {
            let gen = be_u64_at(k, 9, "generation key")?;
            out.push((gen, decode_manifest(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Up to `limit` kept generations of `ino` numbered below `before`, newest first.
    fn generations_below(&self, ino: Ino, before: u64, limit: usize) -> StoreResult<Vec<(u64, Manifest)>> {
        let (start, end) = (gen_key(ino, 0), gen_key(ino, before));
        self.read(|t| {
            let mut out = Vec::new();
            let range = t.range(start.as_slice()..end.as_slice()).map_err(|e| db_err("generations", e))?;
            for item in range.rev().take(limit) {
                let (k, v) = item.map_err(|e| db_err("generations", e))?;
                out.push((be_u64_at(k.value(), 9, "generation key")?, decode_manifest(v.value())?));
            }
            Ok(out)
        })
    }

    /// Kept generations of `ino` numbered below `before` (all if None), newest first, read
    /// from the index as the caller goes, a batch at a time: a log page or a time-travel
    /// lookup reads only about what it uses.
    pub fn generations_newest_first(
        &self,
        ino: Ino,
        before: Option<u64>,
    ) -> impl Iterator<Item = StoreResult<(u64, Manifest)>> + '_ {
        let below = before.unwrap_or(u64::MAX);
        paged(
            below,
            GENERATIONS_BATCH,
            move |&b| self.generations_below(ino, b, GENERATIONS_BATCH),
            |(gen, _)| Some(*gen),
        )
    }

    pub fn chunk_refs(&self, hash: &Hash) -> StoreResult<u64> {
        match self.get(&ref_key(hash))? {
            Some(v) => Ok(read_ref(&v)?.0),
            None => Ok(0),
        }
    }

    /// Every chunk the index knows: (hash, references, length).
    pub fn chunks(&self) -> StoreResult<Vec<(Hash, u64, u32)>> {
        let mut out = Vec::new();
        self.scan_prefix(b"r", |k, v| {
            let hash = Hash::try_from(&k[1..]).map_err(|_| short("chunk key", k, 33))?;
            let (count, len) = read_ref(v)?;
            out.push((hash, count, len));
            Ok(true)
        })?;
        Ok(out)
    }

    /// What `name` in `parent` pointed to as of sequence number `seq`.
    pub fn lookup_at(&self, parent: Ino, name: &[u8], seq: u64) -> StoreResult<Option<(Ino, Kind)>> {
        let start = history_prefix(parent, name);
        let end = history_key(parent, name, seq);
        match self.last_in((Bound::Included(&start[..]), Bound::Included(&end[..])))? {
            Some((_, v)) => decode(&v, "history"),
            None => Ok(None),
        }
    }

    /// Up to `limit` name-history entries after key `after` (from the first if None), with
    /// their keys.
    fn name_history_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, NameHistoryEntry)>> {
        let end = [b'h' + 1];
        let start = match after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Included(&b"h"[..]),
        };
        self.read(|t| {
            let mut out = Vec::new();
            for item in
                t.range((start, Bound::Excluded(&end[..]))).map_err(|e| db_err("history", e))?.take(limit)
            {
                let (k, v) = item.map_err(|e| db_err("history", e))?;
                let (parent, name, seq) = parse_history_key(k.value())?;
                out.push((k.value().to_vec(), (parent, name, seq, decode(v.value(), "history")?)));
            }
            Ok(out)
        })
    }

    /// Every name-history entry, each name's entries together and in order, read a batch at
    /// a time (gc walks them all in flat memory, and may change them between batches).
    pub fn each_name_history(&self) -> impl Iterator<Item = StoreResult<NameHistoryEntry>> + '_ {
        let first: Option<Vec<u8>> = None;
        let fetch = move |after: &Option<Vec<u8>>| self.name_history_after(after.as_deref(), INODES_BATCH);
        paged(first, INODES_BATCH, fetch, |(k, _)| Some(Some(k.clone()))).map(|item| item.map(|(_, e)| e))
    }

    /// Every name-history entry, each name's entries together and in order (tests).
    #[cfg(test)]
    pub fn name_history(&self) -> StoreResult<Vec<NameHistoryEntry>> {
        self.each_name_history().collect()
    }

    /// The entries of `parent` as of `seq`, sorted by (name length, name).
    pub fn readdir_at(&self, parent: Ino, seq: u64) -> StoreResult<Vec<(Vec<u8>, Ino, Kind)>> {
        let mut out: Vec<(Vec<u8>, Ino, Kind)> = Vec::new();
        let mut current: Option<(Vec<u8>, NameTarget)> = None;
        self.scan_prefix(&key(b'h', &[&parent.to_be_bytes()]), |k, v| {
            let (_, name, entry_seq) = parse_history_key(k)?;
            if current.as_ref().is_some_and(|(n, _)| *n != name) {
                if let Some((n, Some((ino, kind)))) = current.take() {
                    out.push((n, ino, kind));
                }
            }
            if entry_seq <= seq {
                current = Some((name, decode(v, "history")?));
            } else if current.as_ref().is_none_or(|(n, _)| *n != name) {
                current = Some((name, None));
            }
            Ok(true)
        })?;
        if let Some((n, Some((ino, kind)))) = current {
            out.push((n, ino, kind));
        }
        Ok(out)
    }

    /// Every second the time index holds, oldest first.
    pub fn time_index_secs(&self) -> StoreResult<Vec<u64>> {
        let mut out = Vec::new();
        self.scan_prefix(b"t", |k, _| {
            out.push(be_u64_at(k, 1, "time key")?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The last sequence number applied at or before `t` (1 s resolution); 0 if none.
    pub fn seq_at_time(&self, t: Timestamp) -> StoreResult<u64> {
        let end = time_key(t);
        match self.last_in((Bound::Included(&b"t"[..]), Bound::Included(&end[..])))? {
            Some((k, v)) if k[0] == b't' => le_u64(&v, "time index"),
            _ => Ok(0),
        }
    }

    pub fn snapshots(&self) -> StoreResult<Vec<(Vec<u8>, Snapshot)>> {
        let mut out = Vec::new();
        self.scan_prefix(b"s", |k, v| {
            out.push((k[1..].to_vec(), decode::<Snapshot>(v, "snapshot")?));
            Ok(true)
        })?;
        out.sort_by_key(|(_, s)| s.seq);
        Ok(out)
    }

    /// Up to `limit` inodes numbered `from` or above, in number order.
    fn inodes_from(&self, from: Ino, limit: usize) -> StoreResult<Vec<(Ino, Inode)>> {
        let (start, end) = (inode_key(from), [b'i' + 1]);
        self.read(|t| {
            let mut out = Vec::new();
            for item in t.range(start.as_slice()..&end[..]).map_err(|e| db_err("inodes", e))?.take(limit) {
                let (k, v) = item.map_err(|e| db_err("inodes", e))?;
                out.push((be_u64_at(k.value(), 1, "inode key")?, decode(v.value(), "inode")?));
            }
            Ok(out)
        })
    }

    /// Every inode in number order, read a batch at a time: gc and statistics walk the whole
    /// index in flat memory, and no read transaction stays open across their writes.
    pub fn each_inode(&self) -> impl Iterator<Item = StoreResult<(Ino, Inode)>> + '_ {
        paged(
            0,
            INODES_BATCH,
            move |&from| self.inodes_from(from, INODES_BATCH),
            |(ino, _)| ino.checked_add(1),
        )
    }

    /// Every inode at once (fsck, which holds the whole tree anyway).
    pub fn inodes(&self) -> StoreResult<Vec<(Ino, Inode)>> {
        let mut out = Vec::new();
        self.scan_prefix(b"i", |k, v| {
            out.push((be_u64_at(k, 1, "inode key")?, decode(v, "inode")?));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.get(&xattr_key(ino, name))
    }

    pub fn xattr_names(&self, ino: Ino) -> StoreResult<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.scan_prefix(&key(b'x', &[&ino.to_be_bytes()]), |k, _| {
            out.push(k[9..].to_vec());
            Ok(true)
        })?;
        Ok(out)
    }

    /// The next inode number to hand out: above every number ever used.
    pub fn next_ino(&self) -> StoreResult<Ino> {
        let highest = self.highest_number(b'i', "max ino")?.unwrap_or(0);
        let recorded = match self.get(NEXT_INO_KEY)? {
            Some(v) => le_u64(&v, "next inode number")?,
            None => 0,
        };
        Ok(recorded.max(highest + 1))
    }

    /// Counts of (inodes, generations, chunks) for statistics; walks the index.
    pub fn counts(&self) -> StoreResult<(u64, u64, u64)> {
        let count = |p: u8| -> StoreResult<u64> {
            let mut n = 0;
            self.scan_prefix(&[p], |_, _| {
                n += 1;
                Ok(true)
            })?;
            Ok(n)
        };
        Ok((count(b'i')?, count(b'g')?, count(b'r')?))
    }

    /// Every entry in key order, from one consistent view (the index base is written so).
    pub fn each_entry(&self, mut f: impl FnMut(&[u8], &[u8]) -> StoreResult<()>) -> StoreResult<()> {
        self.read(|t| {
            for item in t.iter().map_err(|e| db_err("scan", e))? {
                let (k, v) = item.map_err(|e| db_err("scan", e))?;
                f(k.value(), v.value())?;
            }
            Ok(())
        })
    }

    /// Writes entries as they come, in transactions of many (an index being rebuilt).
    pub fn load(&self, entries: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>) -> StoreResult<()> {
        loop {
            let mut any = false;
            self.write(Durability::None, |t| {
                for (k, v) in entries.take(10_000) {
                    put(t, &k, &v)?;
                    any = true;
                }
                Ok(())
            })?;
            if !any {
                return Ok(());
            }
        }
    }

    /// Shrinks the index file when it has grown well past its data (freed pages are reused,
    /// but the file keeps its high-water mark): churn would otherwise leave it many times the
    /// size of what it holds. Blocks every index access meanwhile; the compaction commits
    /// durably, which is as safe as a checkpoint (the index may be ahead of the journal).
    pub fn compact_if_bloated(&self, path: &Path) -> StoreResult<bool> {
        let (live, file) = self.sizes(path)?;
        if file <= COMPACT_ABOVE_FACTOR * live + COMPACT_SLACK_BYTES {
            return Ok(false);
        }
        let mut db = self.db.write();
        for _ in 0..4 {
            if !db.compact(redb::CompactionMode::Balanced).map_err(|e| db_err("compact", e))? {
                break;
            }
        }
        drop(db);
        let (_, after) = self.sizes(path)?;
        tracing::info!(
            "{}: index compacted from {file} to {after} bytes ({live} bytes of data)",
            path.display()
        );
        Ok(true)
    }

    /// (bytes of keys and values, bytes of the index file): how far the file is from its data.
    pub fn sizes(&self, path: &Path) -> StoreResult<(u64, u64)> {
        let live = self.read(|t| {
            let stats = t.stats().map_err(|e| db_err("stats", e))?;
            Ok(stats.stored_bytes())
        })?;
        let file = path.join(DB_FILE);
        let on_disk =
            std::fs::metadata(&file).map_err(|e| StoreError::io(format!("stat {}", file.display()), e))?;
        Ok((live, on_disk.len()))
    }
}

/// Items read a batch at a time: `fetch(cursor)` gives up to `limit` of them from `cursor` on,
/// `cursor_after(item)` where the next batch starts after the last one. A short batch, or an
/// error (handed out once), ends it. Each batch is its own read: no transaction stays open
/// while the caller works, writes included.
fn paged<C, T>(
    start: C,
    limit: usize,
    mut fetch: impl FnMut(&C) -> StoreResult<Vec<T>>,
    cursor_after: impl Fn(&T) -> Option<C>,
) -> impl Iterator<Item = StoreResult<T>> {
    let mut cursor = Some(start);
    let mut batch: std::vec::IntoIter<T> = Vec::new().into_iter();
    std::iter::from_fn(move || loop {
        if let Some(item) = batch.next() {
            return Some(Ok(item));
        }
        let at = cursor.take()?;
        match fetch(&at) {
            Ok(found) => {
                if found.len() == limit {
                    cursor = found.last().and_then(&cursor_after);
                }
                if found.is_empty() {
                    return None;
                }
                batch = found.into_iter();
            }
            Err(e) => return Some(Err(e)),
        }
    })
}

fn get_in(t: &Table, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    Ok(t.get(key).map_err(|e| db_err("get", e))?.map(|v| v.value().to_vec()))
}

fn put(t: &mut Table, key: &[u8], value: &[u8]) -> StoreResult<()> {
    t.insert(key, value).map_err(|e| db_err("insert", e)).map(|_| ())
}

/// Removes `key`; its old value, if any.
fn take(t: &mut Table, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    Ok(t.remove(key).map_err(|e| db_err("remove", e))?.map(|v| v.value().to_vec()))
}

fn apply_op(t: &mut Table, record: &Record, op: &Op) -> StoreResult<()> {
    match op {
        // Decoded records are upgraded (`Record::upgraded`); applied as the new form anyway.
        Op::PutLegacyGeneration { ino, gen, manifest } => {
            let manifest = Manifest::from(manifest.clone());
            apply_op(t, record, &Op::PutGeneration { ino: *ino, gen: *gen, manifest })?;
        }
        Op::PutInode { ino, inode } => {
            put(t, &inode_key(*ino), &encode(inode)?)?;
            // Inode numbers are never reused, even after the highest one is deleted.
            let next = match get_in(t, NEXT_INO_KEY)? {
                Some(v) => le_u64(&v, "next inode number")?,
                None => 0,
            };
            if *ino >= next {
                put(t, NEXT_INO_KEY, &(ino + 1).to_le_bytes())?;
            }
        }
        Op::LostLastName { ino, parent } => {
            let mut value = parent.to_le_bytes().to_vec();
            value.extend_from_slice(&record.seq.to_le_bytes());
            put(t, &xattr_key(*ino, LAST_NAME_XATTR), &value)?;
        }
        Op::PruneNameHistory { parent, name, seq, gap } => {
            let k = history_key(*parent, name, *seq);
            if *gap {
                put(t, &k, &encode(&None::<(Ino, Kind)>)?)?;
            } else {
                take(t, &k)?;
            }
        }
        Op::DelInode { ino, xattrs } => {
            take(t, &inode_key(*ino))?;
            for name in xattrs {
                take(t, &xattr_key(*ino, name))?;
            }
        }
        Op::PutDirent { parent, name, ino, kind, cookie } => {
            remove_dirent(t, *parent, name)?;
            let value = DirentValue { ino: *ino, kind: *kind, cookie: *cookie };
            put(t, &dirent_key(*parent, name), &encode(&value)?)?;
            put(t, &cookie_key(*parent, *cookie), name)?;
            put(t, &backlink_key(*ino, *parent, name), &[])?;
            put(t, &history_key(*parent, name, record.seq), &encode(&Some((*ino, *kind)))?)?;
        }
        Op::DelDirent { parent, name } => {
            remove_dirent(t, *parent, name)?;
            put(t, &history_key(*parent, name, record.seq), &encode(&None::<(Ino, Kind)>)?)?;
        }
        Op::PutGeneration { ino, gen, manifest } => {
            let k = gen_key(*ino, *gen);
            if get_in(t, &k)?.is_none() {
                for chunk in manifest.chunk_refs() {
                    let rk = ref_key(&chunk.hash);
                    let n = match get_in(t, &rk)? {
                        Some(v) => read_ref(&v)?.0,
                        None => 0,
                    };
                    put(t, &rk, &ref_value(n + 1, chunk.len))?;
                }
                put(t, &k, &encode(manifest)?)?;
            }
        }
        Op::DelGeneration { ino, gen } => {
            if let Some(old) = take(t, &gen_key(*ino, *gen))? {
                let manifest = decode_manifest(&old)?;
                for chunk in manifest.chunk_refs() {
                    let rk = ref_key(&chunk.hash);
                    // A generation holds one reference to each of its chunks: a count already
                    // at 0 (or none at all) means the index is damaged.
                    let (n, len) = match get_in(t, &rk)? {
                        Some(v) => read_ref(&v)?,
                        None => (0, chunk.len),
                    };
                    if n == 0 {
                        return Err(StoreError::Corrupted(format!(
                            "inode {ino} generation {gen} held a chunk with no references"
                        )));
                    }
                    put(t, &rk, &ref_value(n - 1, len))?;
                }
            }
        }
        Op::PutSnapshot { name } => {
            let snap = Snapshot { seq: record.seq, time: record.time };
            put(t, &snapshot_key(name), &encode(&snap)?)?;
        }
        Op::DelSnapshot { name } => {
            take(t, &snapshot_key(name))?;
        }
        Op::DropChunk { hash } => {
            let rk = ref_key(hash);
            if let Some(v) = get_in(t, &rk)? {
                if read_ref(&v)?.0 == 0 {
                    take(t, &rk)?;
                }
            }
        }
        Op::PutXattr { ino, name, value } => {
            put(t, &xattr_key(*ino, name), value)?;
        }
        Op::DelXattr { ino, name } => {
            take(t, &xattr_key(*ino, name))?;
        }
        Op::SetChunkRefs { hash, count, len } => {
            put(t, &ref_key(hash), &ref_value(*count, *len))?;
        }
        Op::ThinTimeIndex { secs } => {
            for s in secs {
                take(t, &key(b't', &[&s.to_be_bytes()]))?;
            }
        }
    }
    Ok(())
}

fn remove_dirent(t: &mut Table, parent: Ino, name: &[u8]) -> StoreResult<()> {
    if let Some(old) = take(t, &dirent_key(parent, name))? {
        let old: DirentValue = decode(&old, "dirent")?;
        take(t, &cookie_key(parent, old.cookie))?;
        take(t, &backlink_key(old.ino, parent, name))?;
    }
    Ok(())
}

/// sled's files in a format-1 index directory.
const SLED_FILES: [&str; 3] = ["db", "conf", "blobs"];

/// Copies a format-1 (sled) index into a new redb file, made durable under a temporary name
/// and then renamed into place: a crash at any point leaves one of the two whole.
fn migrate_sled_index(dir: &Path, file: &Path) -> StoreResult<()> {
    let sled_err = |what: &str, e: sled::Error| match e {
        sled::Error::Io(io) => StoreError::io(format!("index {}: {what}", dir.display()), io),
        other => StoreError::Corrupted(format!("index {}: {what}: {other}", dir.display())),
    };
    tracing::info!("{}: moving the index from sled (store format 1) to redb", dir.display());
    let old = sled::Config::new().path(dir).open().map_err(|e| sled_err("open the format-1 index", e))?;
    let tree = old.open_tree("genfs").map_err(|e| sled_err("open tree", e))?;
    let tmp = dir.join(format!("{DB_FILE}.new"));
    let _ = std::fs::remove_file(&tmp);
    let db = redb::Database::builder()
        .set_cache_size(index_cache_bytes())
        .create(&tmp)
        .map_err(|e| db_err(&format!("create {}", tmp.display()), e))?;
    let new = Index { db: parking_lot::RwLock::new(db) };
    let mut failed = None;
    let mut items = tree.iter().map_while(|item| match item {
        Ok((k, v)) => Some((k.to_vec(), v.to_vec())),
        Err(e) => {
            failed = Some(e);
            None
        }
    });
    new.load(&mut items)?;
    if let Some(e) = failed {
        return Err(sled_err("read", e));
    }
    new.flush()?;
    drop(new);
    drop(tree);
    drop(old);
    std::fs::rename(&tmp, file).map_err(|e| StoreError::io(format!("rename {}", tmp.display()), e))?;
    let d = std::fs::File::open(dir).map_err(|e| StoreError::io(format!("open {}", dir.display()), e))?;
    d.sync_all().map_err(|e| StoreError::io(format!("fsync {}", dir.display()), e))
}

/// Removes what a format-1 index left once its redb copy is in place.
fn remove_sled_files(dir: &Path) -> StoreResult<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("read {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("read {}", dir.display()), e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let sled_file = SLED_FILES.contains(&name.as_ref()) || name.starts_with("snap.");
        if !sled_file {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        removed.map_err(|e| StoreError::io(format!("remove {}", path.display()), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::crashsim::Rng;

    /// Arbitrary bytes into every decoder of index keys and values: an error or a value, never
    /// a panic, and never a default for a malformed fixed-width field.
    #[test]
    fn decoders_never_panic_and_never_default_on_arbitrary_bytes() {
        let seed = std::env::var("GENFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(11);
        eprintln!("decoder fuzz: GENFS_TEST_SEED={seed}");
        let mut rng = Rng::new(seed);
        for _ in 0..20_000 {
            let len = rng.below(48) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let _ = decode::<Inode>(&bytes, "inode");
            let _ = decode_manifest(&bytes);
            let _ = decode::<DirentValue>(&bytes, "dirent");
            let _ = decode::<NameTarget>(&bytes, "history");
            let _ = decode::<Snapshot>(&bytes, "snapshot");
            let _ = parse_history_key(&bytes);
            let _ = be_u64_at(&bytes, 1, "key");
            assert_eq!(read_ref(&bytes).is_ok(), len == 12, "{bytes:?}");
            assert_eq!(le_u64(&bytes, "value").is_ok(), len == 8, "{bytes:?}");
        }
        let key = history_key(7, b"name", 9);
        assert_eq!(parse_history_key(&key).unwrap(), (7, b"name".to_vec(), 9));
        for cut in 0..key.len() {
            assert!(parse_history_key(&key[..cut]).is_err(), "a key cut at {cut} decoded");
        }
        assert_eq!(read_ref(&ref_value(3, 17)).unwrap(), (3, 17));
    }
}
