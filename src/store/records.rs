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

/// A committed generation: the file's bytes as a map chunk index -> chunk (absent = hole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    pub mtime: Timestamp,
    pub chunks: BTreeMap<u64, ChunkId>,
    /// Journal sequence number of the commit.
    pub seq: u64,
    pub committed: Timestamp,
}

impl Manifest {
    pub fn empty() -> Self {
        Manifest {
            size: 0,
            mtime: Timestamp::default(),
            chunks: BTreeMap::new(),
            seq: 0,
            committed: Timestamp::default(),
        }
    }

    /// Whole-file digest: BLAKE3 over the size and the (index, chunk hash) list, so it is
    /// computed without reading data. Equal content in equal chunking gives equal digests.
    pub fn digest(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&self.size.to_le_bytes());
        for (idx, c) in &self.chunks {
            h.update(&idx.to_le_bytes());
            h.update(&c.hash);
            h.update(&c.len.to_le_bytes());
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
    /// A new generation; chunk reference counts rise only the first time it is applied.
    PutGeneration {
        ino: Ino,
        gen: u64,
        manifest: Manifest,
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
}

/// A journal record: one atomic, ordered change of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub time: Timestamp,
    pub ops: Vec<Op>,
}
