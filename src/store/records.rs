//! The values the store keeps: inodes, generation manifests, and the journal's operations.
//! Every record is a *full image* of the keys it sets, so replaying a record twice, or over an
//! index that already holds some later records, ends in the same state (see `index.rs`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// A BLAKE3 digest.
pub type Hash = [u8; 32];

/// Seconds and nanoseconds since the epoch (negative for dates before 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                let (secs, nanos) = if d.subsec_nanos() == 0 {
                    (-(d.as_secs() as i64), 0)
                } else {
                    (-(d.as_secs() as i64) - 1, 1_000_000_000 - d.subsec_nanos())
                };
                Timestamp { secs, nanos }
            }
        }
    }

    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(self.nanos as u64)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// Everything about a file except its bytes. For regular files `gen` names the current
/// generation (0: the empty file before its first commit) and `size` is that generation's size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (the low 12 bits of st_mode).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    /// Current generation number of a regular file.
    pub gen: u64,
    /// Highest generation number ever used for this file (restores and failed drafts never
    /// reuse a number).
    pub last_gen: u64,
    /// Symlink target.
    pub target: Vec<u8>,
    /// Directories: the readdir cookie the next entry gets (stable offsets).
    pub next_cookie: u64,
    /// The file this one replaced by rename: its generations are this file's earlier history
    /// (this file's own generation numbers continue after the predecessor's).
    pub history: Option<Ino>,
}

/// One stored chunk: content hash and length (chunks at the end of a file may be short; a
/// chunk shorter than the chunk size reads as zeros past its end, up to the file size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkId {
    pub hash: Hash,
    pub len: u32,
}

/// A piece of a chunk slot: `len` bytes at offset `at` of the slot are the chunk's bytes from
/// `within` on. A slot of pieces reads as zeros between and after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub at: u32,
    pub len: u32,
    pub chunk: ChunkId,
    pub within: u32,
}

/// What one committed slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotContent {
    Whole(ChunkId),
    /// Sorted by `at`, not overlapping, none empty.
    Pieces(Vec<Piece>),
}

impl SlotContent {
    /// Bytes up to the end of the last stored byte (the slot reads as zeros after them).
    pub fn len(&self) -> u64 {
        match self {
            SlotContent::Whole(id) => id.len as u64,
            SlotContent::Pieces(p) => p.last().map_or(0, |p| p.at as u64 + p.len as u64),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot as pieces (a whole chunk is one piece).
    pub fn into_pieces(self) -> Vec<Piece> {
        match self {
            SlotContent::Whole(chunk) => vec![Piece { at: 0, len: chunk.len, chunk, within: 0 }],
            SlotContent::Pieces(p) => p,
        }
    }
}

/// A committed generation: the file's bytes, slot by slot of the chunk size (absent = hole).
/// A slot is either one whole chunk (`chunks`: a file written at once) or a list of pieces
/// (`pieces`: a slot partly rewritten keeps its unchanged bytes where they are stored and
/// stores only what changed; store format 3). No slot is in both.
///
/// Encoded, the fields are in this order so a format-3 value is a format-2 value followed by
/// the pieces: the index reads both (`decode_stored`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    pub mtime: Timestamp,
    pub chunks: BTreeMap<u64, ChunkId>,
    /// Journal sequence number of the commit.
    pub seq: u64,
    pub committed: Timestamp,
    pub pieces: BTreeMap<u64, Vec<Piece>>,
}

/// A manifest as store formats 1 and 2 encoded it (whole chunks only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyManifest {
    pub size: u64,
    pub mtime: Timestamp,
    pub chunks: BTreeMap<u64, ChunkId>,
    pub seq: u64,
    pub committed: Timestamp,
}

impl From<LegacyManifest> for Manifest {
    fn from(m: LegacyManifest) -> Manifest {
        Manifest {
            size: m.size,
            mtime: m.mtime,
            chunks: m.chunks,
            seq: m.seq,
            committed: m.committed,
            pieces: BTreeMap::new(),
        }
    }
}

impl Manifest {
    pub fn empty() -> Self {
        Manifest {
            size: 0,
            mtime: Timestamp::default(),
            chunks: BTreeMap::new(),
            seq: 0,
            committed: Timestamp::default(),
            pieces: BTreeMap::new(),
        }
    }

    /// One empty manifest shared by every holder: each node of a file never written (a
    /// million created files) would otherwise carry its own copy.
    pub fn shared_empty() -> std::sync::Arc<Manifest> {
        static EMPTY: std::sync::LazyLock<std::sync::Arc<Manifest>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(Manifest::empty()));
        EMPTY.clone()
    }

    /// Decodes an index value of any store format: format 3 appends the pieces to what
    /// formats 1 and 2 stored.
    pub fn decode_stored(bytes: &[u8]) -> Result<Manifest, postcard::Error> {
        let (legacy, rest) = postcard::take_from_bytes::<LegacyManifest>(bytes)?;
        let mut m = Manifest::from(legacy);
        if !rest.is_empty() {
            m.pieces = postcard::from_bytes(rest)?;
        }
        Ok(m)
    }

    /// What slot `idx` holds (None: a hole).
    pub fn slot(&self, idx: u64) -> Option<SlotContent> {
        match self.chunks.get(&idx) {
            Some(id) => Some(SlotContent::Whole(*id)),
            None => self.pieces.get(&idx).map(|p| SlotContent::Pieces(p.clone())),
        }
    }

    /// Every slot that is not a hole, in order.
    pub fn slots(&self) -> Vec<(u64, SlotContent)> {
        let mut out: Vec<(u64, SlotContent)> =
            self.chunks.iter().map(|(i, c)| (*i, SlotContent::Whole(*c))).collect();
        out.extend(self.pieces.iter().map(|(i, p)| (*i, SlotContent::Pieces(p.clone()))));
        out.sort_by_key(|(i, _)| *i);
        out
    }

    pub fn set_slot(&mut self, idx: u64, content: SlotContent) {
        match content {
            SlotContent::Whole(id) => {
                self.chunks.insert(idx, id);
            }
            SlotContent::Pieces(p) => {
                self.pieces.insert(idx, p);
            }
        }
    }

    /// Every chunk reference, once per whole slot and once per piece: each holds one count.
    pub fn chunk_refs(&self) -> impl Iterator<Item = &ChunkId> {
        self.chunks.values().chain(self.pieces.values().flatten().map(|p| &p.chunk))
    }

    /// Whole-file digest: BLAKE3 over the size and the slots' chunk hashes, so it is computed
    /// without reading data. Equal content in equal chunking gives equal digests.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&self.size.to_le_bytes());
        for (idx, c) in &self.chunks {
            h.update(&idx.to_le_bytes());
            h.update(&c.hash);
            h.update(&c.len.to_le_bytes());
        }
        for (idx, pieces) in &self.pieces {
            h.update(&idx.to_le_bytes());
            for p in pieces {
                for n in [p.at, p.len, p.within, p.chunk.len] {
                    h.update(&n.to_le_bytes());
                }
                h.update(&p.chunk.hash);
            }
        }
        *h.finalize().as_bytes()
    }
}

/// One change to the index. A journal record is a list of these, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    PutInode {
        ino: Ino,
        inode: Inode,
    },
    /// Removes the inode and the xattrs named (listed by the store, as a transaction cannot scan).
    DelInode {
        ino: Ino,
        xattrs: Vec<Vec<u8>>,
    },
    PutDirent {
        parent: Ino,
        name: Vec<u8>,
        ino: Ino,
        kind: Kind,
        cookie: u64,
    },
    DelDirent {
        parent: Ino,
        name: Vec<u8>,
    },
    /// A new generation as store formats 1 and 2 wrote it; decoded records carry
    /// [`Op::PutGeneration`] instead (`Record::upgraded`).
    PutLegacyGeneration {
        ino: Ino,
        gen: u64,
        manifest: LegacyManifest,
    },
    PutXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    DelXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Drops a generation; chunk references fall (a chunk at zero is garbage for gc).
    DelGeneration {
        ino: Ino,
        gen: u64,
    },
    /// A named snapshot: the tree as of this record's sequence number.
    PutSnapshot {
        name: Vec<u8>,
    },
    DelSnapshot {
        name: Vec<u8>,
    },
    /// Forgets a chunk whose reference count is zero (its file was unlinked by gc).
    DropChunk {
        hash: Hash,
    },
    /// The last name of `ino` (in `parent`) went, at this record's sequence number: kept
    /// for retention (inherited from `parent`) and snapshots (which saw it until then).
    LostLastName {
        ino: Ino,
        parent: Ino,
    },
    /// gc: the entry of `name` in `parent` made at `seq` named an inode that is gone. With
    /// `gap`, it becomes "no such name then"; without, it is removed (the entry before it
    /// says the same).
    PruneNameHistory {
        parent: Ino,
        name: Vec<u8>,
        seq: u64,
        gap: bool,
    },
    /// gc: forgets the time index's entries of these seconds (time travel to them lands on the
    /// last instant still kept before them). New in store format 2.
    ThinTimeIndex {
        secs: Vec<u64>,
    },
    /// fsck --repair: the chunk's reference count as recounted from the manifests. New in
    /// store format 2.
    SetChunkRefs {
        hash: Hash,
        count: u64,
        len: u32,
    },
    /// A new generation; chunk reference counts rise only the first time it is applied. New
    /// in store format 3 (its manifest may hold pieces).
    PutGeneration {
        ino: Ino,
        gen: u64,
        manifest: Manifest,
    },
}

/// A journal record: one atomic, ordered change of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: Timestamp,
    pub ops: Vec<Op>,
}

impl Record {
    /// The record with operations of older formats in their current form.
    pub fn upgraded(mut self) -> Record {
        for op in &mut self.ops {
            if let Op::PutLegacyGeneration { ino, gen, manifest } = op {
                let manifest = Manifest::from(manifest.clone());
                *op = Op::PutGeneration { ino: *ino, gen: *gen, manifest };
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8, len: u32) -> ChunkId {
        ChunkId { hash: [n; 32], len }
    }

    /// What formats 1 and 2 wrote still reads: an index value as the same manifest without
    /// pieces, a journal record's generation as the current op.
    #[test]
    fn manifests_and_records_of_formats_1_and_2_decode() {
        let legacy = LegacyManifest {
            size: 5000,
            mtime: Timestamp { secs: 7, nanos: 8 },
            chunks: [(0, chunk(1, 4096)), (1, chunk(2, 904))].into_iter().collect(),
            seq: 9,
            committed: Timestamp { secs: 10, nanos: 0 },
        };
        let bytes = postcard::to_stdvec(&legacy).unwrap();
        let read = Manifest::decode_stored(&bytes).unwrap();
        assert_eq!(read, Manifest::from(legacy.clone()));
        assert!(read.pieces.is_empty());

        let mut with_pieces = read.clone();
        let piece = Piece { at: 10, len: 20, chunk: chunk(3, 30), within: 5 };
        with_pieces.pieces.insert(2, vec![piece]);
        let bytes = postcard::to_stdvec(&with_pieces).unwrap();
        assert_eq!(Manifest::decode_stored(&bytes).unwrap(), with_pieces);
        assert_eq!(with_pieces.chunk_refs().count(), 3);
        assert_ne!(with_pieces.digest(), read.digest());

        let old = Record {
            seq: 3,
            time: Timestamp::default(),
            ops: vec![
                Op::PutLegacyGeneration { ino: 5, gen: 1, manifest: legacy.clone() },
                Op::DelGeneration { ino: 5, gen: 0 },
            ],
        };
        let decoded: Record = postcard::from_bytes(&postcard::to_stdvec(&old).unwrap()).unwrap();
        let upgraded = decoded.upgraded();
        assert_eq!(upgraded.ops[0], Op::PutGeneration { ino: 5, gen: 1, manifest: Manifest::from(legacy) });
        assert_eq!(upgraded.ops[1], Op::DelGeneration { ino: 5, gen: 0 });
    }
}
