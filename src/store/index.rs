//! The index: a sled tree brought up to date from the journal. No sled type leaves this module.
//!
//! One tree, keys prefixed by kind (all integers big-endian so ranges sort):
//! `i ino` inode · `d parent name` dirent · `c parent cookie` readdir order · `b ino parent name`
//! names of an inode · `g ino gen` manifest · `r hash` chunk references and length ·
//! `x ino name` xattr · `h parent len name seq` what a name pointed to from `seq` on (time
//! travel) · `t secs` last sequence number of that second · `s name` snapshot · `a seq` record
//! `seq` is applied (kept until a checkpoint covers it).
//!
//! Records are applied in one sled transaction each. Applying is idempotent: every op writes a
//! full image, and a generation's chunk references rise only when the generation is new.
//!
//! sled may write its files at any time (on its own, or when dropped), so the index can be on
//! disk ahead of the journal. The `a seq` marks make that safe: replay skips a record the index
//! already holds instead of writing its older images over newer ones, and the journal numbers
//! new records above every mark (see `Store::open_with_io`).

use super::error::{StoreError, StoreResult};
use super::records::{Hash, Ino, Inode, Kind, Manifest, Op, Record, Timestamp};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
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
    db: sled::Db,
    tree: sled::Tree,
    /// One writer into sled at a time. sled 0.34 can deadlock inside when several threads
    /// write at once: a writer holding its segment accountant waits for a file truncation
    /// queued on sled's I/O pool behind buffer writes that wait for that accountant (seen here
    /// under stress-ng's lock stressors; sled pull request #1269 fixed it after 0.34). With
    /// writes serialized, no stream of new buffers can fill the pool while one waits.
    writes: parking_lot::Mutex<()>,
}

/// Meta key (prefix `m`): the next inode number to hand out.
const NEXT_INO_KEY: &[u8] = b"mnext_ino";

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

fn sled_err(context: &str, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::io(format!("index: {context}"), io),
        other => StoreError::Corrupted(format!("index: {context}: {other}")),
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn tx_abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

impl From<StoreError> for ConflictableTransactionError<StoreError> {
    fn from(e: StoreError) -> Self {
        tx_abort(e)
    }
}

/// sled's page cache budget. sled counts cached pages at their on-disk size; in memory they
/// take several times that (measured here: 64 MiB let a 5-minute load run climb past 170 MiB
/// of RSS; 16 MiB levels off near 120 MiB; sled issue #1309 reports about 10x).
const INDEX_CACHE_BYTES: u64 = 16 << 20;

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

    /// Opens the index; the caller holds the store's lock.
    pub fn open(path: &Path) -> StoreResult<Index> {
        let open = || {
            sled::Config::new()
                .path(path)
                .cache_capacity(INDEX_CACHE_BYTES)
                // Write only when asked (checkpoints), so the index does not run ahead of the
                // journal on its own schedule.
                .flush_every_ms(None)
                .open()
        };
        // sled's background writes keep its lock file open briefly after a Db is dropped. The
        // store's lock is ours, so a holder can only be this process's previous instance
        // finishing its writes: wait for it, for a bounded time.
        let mut attempts = 0;
        let db = loop {
            match open() {
                Err(sled::Error::Io(e))
                    if attempts < 100 && e.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other.map_err(|e| sled_err(&format!("open {}", path.display()), e))?,
            }
        };
        let tree = db.open_tree("genfs").map_err(|e| sled_err("open tree", e))?;
        Ok(Index { db, tree, writes: parking_lot::Mutex::new(()) })
    }

    /// Makes everything applied so far durable in sled's files (the caller fsyncs them too:
    /// sled's own flush uses sync_file_range, which is not durability).
    pub fn flush(&self) -> StoreResult<()> {
        let _one_writer = self.writes.lock();
        self.db.flush().map_err(|e| sled_err("flush", e))?;
        Ok(())
    }

    pub fn apply(&self, record: &Record) -> StoreResult<()> {
        let _one_writer = self.writes.lock();
        let result = self.tree.transaction(|tx| {
            for op in &record.ops {
                apply_op(tx, record, op)?;
            }
            // The time index: the last sequence number applied in each second.
            let tk = time_key(record.time);
            let prev = match tx.get(&tk)? {
                Some(v) => le_u64(&v, "time index")?,
                None => 0,
            };
            if record.seq > prev {
                tx.insert(tk, &record.seq.to_le_bytes())?;
            }
            tx.insert(applied_key(record.seq), &[] as &[u8])?;
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(sled_err("apply", e)),
        }
    }

    /// Whether record `seq` is in the index already (it was applied after the last checkpoint).
    pub fn is_applied(&self, seq: u64) -> StoreResult<bool> {
        self.tree.contains_key(applied_key(seq)).map_err(|e| sled_err("get", e))
    }

    /// The highest sequence number applied since the last checkpoint, if any.
    pub fn last_applied(&self) -> StoreResult<Option<u64>> {
        self.highest_number(b'a', "last applied")
    }

    /// The number after `prefix` in the last key under it (keys `prefix u64-be …`).
    fn highest_number(&self, prefix: u8, what: &str) -> StoreResult<Option<u64>> {
        match self.tree.scan_prefix([prefix]).next_back() {
            Some(Ok((k, _))) => Ok(Some(be_u64_at(&k, 1, what)?)),
            Some(Err(e)) => Err(sled_err(what, e)),
            None => Ok(None),
        }
    }

    /// Drops the marks of records at or below `seq`: call only once a durable checkpoint covers
    /// them, since replay never goes back that far.
    pub fn forget_applied_through(&self, seq: u64) -> StoreResult<()> {
        let _one_writer = self.writes.lock();
        let mut batch = sled::Batch::default();
        for item in self.tree.range(applied_key(0)..=applied_key(seq)) {
            let (k, _) = item.map_err(|e| sled_err("scan marks", e))?;
            batch.remove(k);
        }
        self.tree.apply_batch(batch).map_err(|e| sled_err("drop marks", e))
    }

    fn get(&self, key: &[u8]) -> StoreResult<Option<sled::IVec>> {
        self.tree.get(key).map_err(|e| sled_err("get", e))
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
        let mut out = Vec::new();
        for item in self.tree.range(start..=end) {
            let (k, name) = item.map_err(|e| sled_err("readdir", e))?;
            let cookie = be_u64_at(&k, 9, "readdir cookie")?;
            if let Some((ino, kind)) = self.lookup(parent, &name)? {
                out.push(DirEntry { cookie, name: name.to_vec(), ino, kind });
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn dir_is_empty(&self, dir: Ino) -> StoreResult<bool> {
        let prefix = key(b'd', &[&dir.to_be_bytes()]);
        match self.tree.scan_prefix(prefix).next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(sled_err("scan dir", e)),
        }
    }

    /// Every (parent, name) that names `ino`.
    pub fn names_of(&self, ino: Ino) -> StoreResult<Vec<(Ino, Vec<u8>)>> {
        let prefix = key(b'b', &[&ino.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item.map_err(|e| sled_err("names", e))?;
            let parent = be_u64_at(&k, 9, "name of an inode")?;
            out.push((parent, k[17..].to_vec()));
        }
        Ok(out)
    }

    pub fn generation(&self, ino: Ino, gen: u64) -> StoreResult<Option<Manifest>> {
        match self.get(&gen_key(ino, gen))? {
            Some(v) => Ok(Some(decode(&v, "generation")?)),
            None => Ok(None),
        }
    }

    /// All kept generations of `ino`, oldest first.
    pub fn generations(&self, ino: Ino) -> StoreResult<Vec<(u64, Manifest)>> {
        let prefix = key(b'g', &[&ino.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| sled_err("generations", e))?;
            let gen = be_u64_at(&k, 9, "generation key")?;
            out.push((gen, decode(&v, "generation")?));
        }
        Ok(out)
    }

    /// Kept generations of `ino` numbered below `before` (all if None), newest first, read
    /// from the index as the caller goes: a log page or a time-travel lookup reads only what
    /// it uses.
    pub fn generations_newest_first(
        &self,
        ino: Ino,
        before: Option<u64>,
    ) -> impl Iterator<Item = StoreResult<(u64, Manifest)>> {
        let end = match before {
            Some(b) => Bound::Excluded(gen_key(ino, b)),
            None => Bound::Included(gen_key(ino, u64::MAX)),
        };
        self.tree.range::<Vec<u8>, _>((Bound::Included(gen_key(ino, 0)), end)).rev().map(|item| {
            let (k, v) = item.map_err(|e| sled_err("generations", e))?;
            let gen = be_u64_at(&k, 9, "generation key")?;
            Ok((gen, decode(&v, "generation")?))
        })
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
        for item in self.tree.scan_prefix([b'r']) {
            let (k, v) = item.map_err(|e| sled_err("chunks", e))?;
            let hash = Hash::try_from(&k[1..]).map_err(|_| short("chunk key", &k, 33))?;
            let (count, len) = read_ref(&v)?;
            out.push((hash, count, len));
        }
        Ok(out)
    }

    /// What `name` in `parent` pointed to as of sequence number `seq`.
    pub fn lookup_at(&self, parent: Ino, name: &[u8], seq: u64) -> StoreResult<Option<(Ino, Kind)>> {
        let start = history_prefix(parent, name);
        let end = history_key(parent, name, seq);
        match self.tree.range(start..=end).next_back() {
            Some(Ok((_, v))) => decode(&v, "history"),
            Some(Err(e)) => Err(sled_err("history", e)),
            None => Ok(None),
        }
    }

    /// Every name-history entry, each name's entries together and in order.
    pub fn name_history(&self) -> StoreResult<Vec<NameHistoryEntry>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([b'h']) {
            let (k, v) = item.map_err(|e| sled_err("history", e))?;
            let (parent, name, seq) = parse_history_key(&k)?;
            out.push((parent, name, seq, decode(&v, "history")?));
        }
        Ok(out)
    }

    /// The entries of `parent` as of `seq`, sorted by (name length, name).
    pub fn readdir_at(&self, parent: Ino, seq: u64) -> StoreResult<Vec<(Vec<u8>, Ino, Kind)>> {
        let prefix = key(b'h', &[&parent.to_be_bytes()]);
        let mut out: Vec<(Vec<u8>, Ino, Kind)> = Vec::new();
        let mut current: Option<(Vec<u8>, NameTarget)> = None;
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| sled_err("history", e))?;
            let (_, name, entry_seq) = parse_history_key(&k)?;
            if current.as_ref().is_some_and(|(n, _)| *n != name) {
                if let Some((n, Some((ino, kind)))) = current.take() {
                    out.push((n, ino, kind));
                }
            }
            if entry_seq <= seq {
                current = Some((name, decode(&v, "history")?));
            } else if current.as_ref().is_none_or(|(n, _)| *n != name) {
                current = Some((name, None));
            }
        }
        if let Some((n, Some((ino, kind)))) = current {
            out.push((n, ino, kind));
        }
        Ok(out)
    }

    /// The last sequence number applied at or before `t` (1 s resolution); 0 if none.
    pub fn seq_at_time(&self, t: Timestamp) -> StoreResult<u64> {
        match self.tree.range([b't'].to_vec()..=time_key(t)).next_back() {
            Some(Ok((k, v))) if k[0] == b't' => le_u64(&v, "time index"),
            Some(Err(e)) => Err(sled_err("time index", e)),
            _ => Ok(0),
        }
    }

    pub fn snapshots(&self) -> StoreResult<Vec<(Vec<u8>, Snapshot)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([b's']) {
            let (k, v) = item.map_err(|e| sled_err("snapshots", e))?;
            let snap: Snapshot = decode(&v, "snapshot")?;
            out.push((k[1..].to_vec(), snap));
        }
        out.sort_by_key(|(_, s)| s.seq);
        Ok(out)
    }

    /// All regular-file inodes that have generations (gc and statistics walk these).
    pub fn inodes(&self) -> StoreResult<Vec<(Ino, Inode)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix([b'i']) {
            let (k, v) = item.map_err(|e| sled_err("inodes", e))?;
            let ino = be_u64_at(&k, 1, "inode key")?;
            out.push((ino, decode(&v, "inode")?));
        }
        Ok(out)
    }

    pub fn xattr(&self, ino: Ino, name: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.get(&xattr_key(ino, name))?.map(|v| v.to_vec()))
    }

    pub fn xattr_names(&self, ino: Ino) -> StoreResult<Vec<Vec<u8>>> {
        let prefix = key(b'x', &[&ino.to_be_bytes()]);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item.map_err(|e| sled_err("xattrs", e))?;
            out.push(k[9..].to_vec());
        }
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
        let count = |p: u8| self.tree.scan_prefix([p]).count() as u64;
        Ok((count(b'i'), count(b'g'), count(b'r')))
    }
}

fn apply_op(tx: &TransactionalTree, record: &Record, op: &Op) -> TxResult<()> {
    match op {
        Op::PutInode { ino, inode } => {
            tx.insert(inode_key(*ino), encode(inode)?)?;
            // Inode numbers are never reused, even after the highest one is deleted.
            let next = match tx.get(NEXT_INO_KEY)? {
                Some(v) => le_u64(&v, "next inode number")?,
                None => 0,
            };
            if *ino >= next {
                tx.insert(NEXT_INO_KEY, &(ino + 1).to_le_bytes())?;
            }
        }
        Op::LostLastName { ino, parent } => {
            let mut value = parent.to_le_bytes().to_vec();
            value.extend_from_slice(&record.seq.to_le_bytes());
            tx.insert(xattr_key(*ino, LAST_NAME_XATTR), value)?;
        }
        Op::PruneNameHistory { parent, name, seq, gap } => {
            let k = history_key(*parent, name, *seq);
            if *gap {
                tx.insert(k, encode(&None::<(Ino, Kind)>)?)?;
            } else {
                tx.remove(k)?;
            }
        }
        Op::DelInode { ino, xattrs } => {
            tx.remove(inode_key(*ino))?;
            for name in xattrs {
                tx.remove(xattr_key(*ino, name))?;
            }
        }
        Op::PutDirent { parent, name, ino, kind, cookie } => {
            remove_dirent(tx, *parent, name)?;
            let value = DirentValue { ino: *ino, kind: *kind, cookie: *cookie };
            tx.insert(dirent_key(*parent, name), encode(&value)?)?;
            tx.insert(cookie_key(*parent, *cookie), name.as_slice())?;
            tx.insert(backlink_key(*ino, *parent, name), &[] as &[u8])?;
            tx.insert(history_key(*parent, name, record.seq), encode(&Some((*ino, *kind)))?)?;
        }
        Op::DelDirent { parent, name } => {
            remove_dirent(tx, *parent, name)?;
            tx.insert(history_key(*parent, name, record.seq), encode(&None::<(Ino, Kind)>)?)?;
        }
        Op::PutGeneration { ino, gen, manifest } => {
            let k = gen_key(*ino, *gen);
            if tx.get(&k)?.is_none() {
                for chunk in manifest.chunks.values() {
                    let rk = ref_key(&chunk.hash);
                    let n = match tx.get(&rk)? {
                        Some(v) => read_ref(&v)?.0,
                        None => 0,
                    };
                    tx.insert(rk, &ref_value(n + 1, chunk.len))?;
                }
                tx.insert(k, encode(manifest)?)?;
            }
        }
        Op::DelGeneration { ino, gen } => {
            if let Some(old) = tx.remove(gen_key(*ino, *gen))? {
                let manifest: Manifest = decode(&old, "generation")?;
                for chunk in manifest.chunks.values() {
                    let rk = ref_key(&chunk.hash);
                    // A generation holds one reference to each of its chunks: a count already
                    // at 0 (or none at all) means the index is damaged.
                    let (n, len) = match tx.get(&rk)? {
                        Some(v) => read_ref(&v)?,
                        None => (0, chunk.len),
                    };
                    if n == 0 {
                        return Err(tx_abort(StoreError::Corrupted(format!(
                            "inode {ino} generation {gen} held a chunk with no references"
                        ))));
                    }
                    tx.insert(rk, &ref_value(n - 1, len))?;
                }
            }
        }
        Op::PutSnapshot { name } => {
            let snap = Snapshot { seq: record.seq, time: record.time };
            tx.insert(snapshot_key(name), encode(&snap)?)?;
        }
        Op::DelSnapshot { name } => {
            tx.remove(snapshot_key(name))?;
        }
        Op::DropChunk { hash } => {
            let rk = ref_key(hash);
            if let Some(v) = tx.get(&rk)? {
                if read_ref(&v)?.0 == 0 {
                    tx.remove(rk)?;
                }
            }
        }
        Op::PutXattr { ino, name, value } => {
            tx.insert(xattr_key(*ino, name), value.as_slice())?;
        }
        Op::DelXattr { ino, name } => {
            tx.remove(xattr_key(*ino, name))?;
        }
    }
    Ok(())
}

fn remove_dirent(tx: &TransactionalTree, parent: Ino, name: &[u8]) -> TxResult<()> {
    if let Some(old) = tx.remove(dirent_key(parent, name))? {
        let old: DirentValue = decode(&old, "dirent")?;
        tx.remove(cookie_key(parent, old.cookie))?;
        tx.remove(backlink_key(old.ino, parent, name))?;
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
            let _ = decode::<Manifest>(&bytes, "generation");
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
