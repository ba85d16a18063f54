//! Crash simulator: a [`StoreIo`] that records every durability-relevant operation of a store
//! and materializes, for any point of the recording, the on-disk states a power cut could
//! leave behind (ALICE / CrashMonkey / LazyFS style). `crash_tests.rs` opens a store from
//! each such state and checks the invariants of DESIGN.md G4–G7.
//!
//! # Fault model
//!
//! The store runs on the real filesystem through [`CrashSim`], which performs every call and
//! appends it to a trace. Replaying the trace through an [`FsModel`] tracks, for every file
//! and directory of the store, what is *durable* and what is still *pending* (in the page
//! cache). A power cut at a point of the trace keeps:
//!
//! - **everything durable**: file data and size covered by a completed `fdatasync`/`fsync`
//!   of that file; directory entries (create, link, rename, unlink, mkdir) covered by a
//!   completed `fsync` of their directory. An fsync of a directory makes durable every earlier
//!   pending change of the same names too (a rename over `x` is never durable while an older
//!   create of `x` is lost).
//! - **any subset of what is pending**, each operation chosen independently:
//!   - a pending directory change is kept or dropped as a whole (rename is atomic: both of
//!     its names or neither); kept changes apply in their original order. A name can thus be
//!     durable while its file's data is not (and the reverse).
//!   - a pending `write` is kept, dropped, or **torn**: an arbitrary subset of its 512-byte
//!     sectors reaches the disk (a sector is atomic, a page is not). A pending `set_len` is
//!     kept or dropped.
//!   - the file size may have been persisted ahead of the data (`ext4 data=writeback`, delayed
//!     allocation): the file is then extended with **zeros** up to the size a lost write
//!     would have given it. Stale bytes of *other* files never appear (no data=writeback
//!     garbage): genfs relies on that no more than ext4 `data=ordered` provides.
//!   - Nothing is ordered between pending operations of different files or directories, nor
//!     between a file's data and its directory entry. This is weaker (allows more states)
//!     than ext4's ordered journaling, i.e. POSIX as written.
//! - **sled** (files under `index/`, written by sled itself, not through `StoreIo`) is a black
//!   box whose durable state is one of its flushed states: by default the state at the last
//!   completed checkpoint (`Store::checkpoint` flushes sled and fsyncs its files; the
//!   simulator snapshots `index/` when the checkpoint fsyncs the directory). With
//!   [`CrashSim::snapshot_index_ahead`] the driver also snapshots sled after any operation, to
//!   model sled having written ahead of the journal on its own (it writes a 512 KiB segment
//!   whenever one fills, and the kernel may write those pages back at any time).
//! - `staging/` is recreated empty: staging files are removed at open and never part of a
//!   commit. Its files matter only as the source of chunk links: a chunk's data is what was
//!   synced before it was linked.
//!
//! Out of scope: a lying disk (a completed fsync that did not persist, reordered or misdirected
//! writes, bit rot — that is `scrub`/`fsck` territory), damage to durable data, crashes during
//! `mkfs` (the store is valid only once `genfs.toml` is durable), and crashes of concurrent
//! workloads (the recorded workloads are single-threaded so that they are reproducible).
//! An I/O error is not a crash: `FaultyIo` covers it.

use super::io::{RealIo, StoreIo};
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Torn writes keep or lose whole sectors.
pub const SECTOR_BYTES: u64 = 512;

/// A file (an inode) of the simulated filesystem; hard links share it.
pub type FileId = u64;

/// Workload marks interleaved with the I/O events: what a crash point may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Workload operation `op` (1-based) starts.
    Begin(usize),
    /// Operation `op` returned; `durable`: everything up to it is now durable (a commit, a
    /// sync, a checkpoint, a reopen).
    End { op: usize, durable: bool },
}

/// One recorded operation. Paths are relative to the store root.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new, empty file got a name.
    Create {
        path: PathBuf,
        file: FileId,
    },
    /// A file written outside `StoreIo` (a staging chunk), first seen: its bytes are pending.
    Discovered {
        file: FileId,
        content: Arc<Vec<u8>>,
    },
    Write {
        file: FileId,
        offset: u64,
        data: Arc<Vec<u8>>,
    },
    SetLen {
        file: FileId,
        len: u64,
    },
    /// fdatasync / fsync of a file: its data and size are durable.
    SyncFile {
        file: FileId,
    },
    /// fsync of a directory: its entries are durable.
    SyncDir {
        dir: PathBuf,
    },
    Link {
        to: PathBuf,
        file: FileId,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        file: FileId,
    },
    Unlink {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    /// sled's files as of a completed checkpoint: index image number `image`.
    IndexCheckpoint {
        image: usize,
    },
    /// sled's files flushed (not synced) after an operation: what sled may have written ahead.
    IndexAhead {
        image: usize,
    },
    Mark(Mark),
}

impl Event {
    /// A one-line description (without the data).
    pub fn summary(&self) -> String {
        match self {
            Event::Discovered { file, content } => {
                format!("discovered file {file} ({} bytes)", content.len())
            }
            Event::Write { file, offset, data } => {
                format!("write file {file} at {offset}, {} bytes", data.len())
            }
            other => format!("{other:?}"),
        }
    }
}

/// The files under `index/` at one instant.
#[derive(Debug)]
pub struct IndexImage {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    pub dirs: Vec<PathBuf>,
    digest: [u8; 32],
}

impl IndexImage {
    pub fn read(dir: &Path) -> io::Result<IndexImage> {
        let mut image = IndexImage { files: Vec::new(), dirs: Vec::new(), digest: [0; 32] };
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))?.collect::<io::Result<_>>()?;
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let r = rel.join(e.file_name());
                if e.file_type()?.is_dir() {
                    image.dirs.push(r.clone());
                    stack.push(r);
                } else {
                    image.files.push((r, std::fs::read(e.path())?));
                }
            }
        }
        let mut h = blake3::Hasher::new();
        for (f, bytes) in &image.files {
            h.update(f.as_os_str().as_encoded_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        image.digest = *h.finalize().as_bytes();
        Ok(image)
    }

    fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for d in &self.dirs {
            std::fs::create_dir_all(dir.join(d))?;
        }
        for (f, bytes) in &self.files {
            std::fs::write(dir.join(f), bytes)?;
        }
        Ok(())
    }

    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// Everything a run recorded: the durable state it started from, and the events.
#[derive(Clone)]
pub struct Trace {
    pub base: FsModel,
    pub events: Vec<Event>,
    pub images: Vec<Arc<IndexImage>>,
}

struct Recorder {
    events: Vec<Event>,
    /// (device, inode) of every live file the simulator knows, to its id.
    ids: HashMap<(u64, u64), FileId>,
    /// Ids first seen under `staging/`, with that path (staging names are never reused, so an
    /// inode number seen again under another staging name is a new file).
    staged_at: HashMap<FileId, PathBuf>,
    next_id: FileId,
    images: Vec<Arc<IndexImage>>,
    /// The simulated process is dead: every call fails and nothing is recorded.
    dead: bool,
    base: FsModel,
}

/// The recording [`StoreIo`]. Create it on a closed store (after mkfs), then open the store
/// with it: `Store::open_with_io(path, sim.clone())`.
pub struct CrashSim {
    root: PathBuf,
    rec: Mutex<Recorder>,
}

fn dead() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

impl CrashSim {
    /// Starts recording on the store at `root`; everything on disk now counts as durable.
    pub fn new(root: &Path) -> io::Result<Arc<CrashSim>> {
        let mut base = FsModel::default();
        let mut ids = HashMap::new();
        let mut next_id = 0;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for e in std::fs::read_dir(root.join(&rel))? {
                let e = e?;
                let r = rel.join(e.file_name());
                let meta = std::fs::symlink_metadata(e.path())?;
                if meta.is_dir() {
                    base.durable.insert(name(&r), Node::Dir);
                    if r != Path::new("index") && r != Path::new("staging") {
                        stack.push(r);
                    }
                } else if rel.as_os_str().is_empty() && r == Path::new("lock") {
                    // The daemon's lock file: not part of the store's state.
                } else {
                    next_id += 1;
                    ids.insert((meta.dev(), meta.ino()), next_id);
                    base.durable.insert(name(&r), Node::File(next_id));
                    let content = Arc::new(std::fs::read(e.path())?);
                    base.files.insert(next_id, SimFile { durable: content, pending: Vec::new() });
                }
            }
        }
        let image = Arc::new(IndexImage::read(&root.join("index"))?);
        Ok(Arc::new(CrashSim {
            root: root.to_path_buf(),
            rec: Mutex::new(Recorder {
                events: Vec::new(),
                ids,
                staged_at: HashMap::new(),
                next_id,
                images: vec![image],
                dead: false,
                base,
            }),
        }))
    }

    /// Appends a workload mark.
    pub fn mark(&self, mark: Mark) {
        self.rec.lock().events.push(Event::Mark(mark));
    }

    /// Simulates the death of the process (kill -9): from now on every call fails with EIO and
    /// does nothing, until [`CrashSim::revive`]. The page cache survives a process death, so
    /// nothing pending is lost.
    pub fn kill(&self) {
        self.rec.lock().dead = true;
    }

    pub fn revive(&self) {
        self.rec.lock().dead = false;
    }

    /// Records sled's files as they are now (the caller has flushed sled): a state sled may
    /// have written ahead of the journal.
    pub fn snapshot_index_ahead(&self) -> io::Result<()> {
        let image = Arc::new(IndexImage::read(&self.root.join("index"))?);
        let mut rec = self.rec.lock();
        rec.images.push(image);
        let image = rec.images.len() - 1;
        rec.events.push(Event::IndexAhead { image });
        Ok(())
    }

    /// A copy of everything recorded so far.
    pub fn trace(&self) -> Trace {
        let rec = self.rec.lock();
        Trace { base: rec.base.clone(), events: rec.events.clone(), images: rec.images.clone() }
    }

    fn rel(&self, path: &Path) -> Option<PathBuf> {
        path.strip_prefix(&self.root).ok().map(Path::to_path_buf)
    }

    fn new_id(rec: &mut Recorder, key: (u64, u64)) -> FileId {
        rec.next_id += 1;
        rec.ids.insert(key, rec.next_id);
        rec.next_id
    }

    /// The id of an open file the store writes or syncs; a file never seen before (written
    /// outside `StoreIo`) is discovered with its current bytes pending.
    fn file_id(&self, rec: &mut Recorder, file: &File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        let key = (meta.dev(), meta.ino());
        let fd_path = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file)))
            .ok()
            .and_then(|p| self.rel(&p));
        self.identify(rec, key, fd_path, || read_all(file))
    }

    fn path_id(&self, rec: &mut Recorder, path: &Path) -> io::Result<FileId> {
        let meta = std::fs::symlink_metadata(path)?;
        let rel = self.rel(path);
        self.identify(rec, (meta.dev(), meta.ino()), rel, || std::fs::read(path))
    }

    fn identify(
        &self,
        rec: &mut Recorder,
        key: (u64, u64),
        rel: Option<PathBuf>,
        content: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<FileId> {
        let staging = rel.as_ref().filter(|r| r.starts_with("staging"));
        if let Some(&id) = rec.ids.get(&key) {
            // Under staging/, only the very file first seen at that name is the same file.
            match (staging, rec.staged_at.get(&id)) {
                (None, _) => return Ok(id),
                (Some(r), Some(at)) if r == at => return Ok(id),
                _ => {}
            }
        }
        let id = Self::new_id(rec, key);
        if let Some(r) = staging {
            rec.staged_at.insert(id, r.clone());
        }
        rec.events.push(Event::Discovered { file: id, content: Arc::new(content()?) });
        Ok(id)
    }

    fn tracked(rel: &Path) -> bool {
        !rel.starts_with("index") && !rel.starts_with("staging") && rel != Path::new("lock")
    }
}

impl CrashSim {
    /// The recorder, unless the simulated process is dead.
    fn alive(&self) -> io::Result<MutexGuard<'_, Recorder>> {
        let rec = self.rec.lock();
        if rec.dead {
            return Err(dead());
        }
        Ok(rec)
    }

    /// Records `event(rel)` if `path` is a tracked path of the store.
    fn note_path(&self, rec: &mut Recorder, path: &Path, event: impl FnOnce(PathBuf) -> Event) {
        if let Some(rel) = self.rel(path).filter(|r| Self::tracked(r)) {
            rec.events.push(event(rel));
        }
    }

    /// Runs `op` on an open file and records `event(id)` once it succeeded.
    fn on_file(
        &self,
        file: &File,
        op: impl FnOnce() -> io::Result<()>,
        event: impl FnOnce(FileId) -> Event,
    ) -> io::Result<()> {
        let mut rec = self.alive()?;
        let id = self.file_id(&mut rec, file)?;
        op()?;
        rec.events.push(event(id));
        Ok(())
    }
}

impl StoreIo for CrashSim {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        let mut rec = self.alive()?;
        let file = RealIo.create_new(path, mode)?;
        if self.rel(path).is_some_and(|r| Self::tracked(&r)) {
            let meta = file.metadata()?;
            let id = Self::new_id(&mut rec, (meta.dev(), meta.ino()));
            self.note_path(&mut rec, path, |path| Event::Create { path, file: id });
        }
        Ok(file)
    }

    fn open_rw(&self, path: &Path) -> io::Result<File> {
        let mut rec = self.alive()?;
        let file = RealIo.open_rw(path)?;
        if self.rel(path).is_some_and(|r| Self::tracked(&r)) {
            self.file_id(&mut rec, &file)?;
        }
        Ok(file)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        let data = Arc::new(buf.to_vec());
        self.on_file(
            file,
            || RealIo.write_all_at(file, buf, offset),
            |file| Event::Write { file, offset, data },
        )
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        self.on_file(file, || RealIo.set_len(file, len), |file| Event::SetLen { file, len })
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        self.on_file(file, || RealIo.sync_data(file), |file| Event::SyncFile { file })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut rec = self.alive()?;
        RealIo.sync_dir(dir)?;
        let Some(rel) = self.rel(dir) else { return Ok(()) };
        if rel == Path::new("index") {
            // The last call of a checkpoint's sync of sled's files: sled is durable as it is.
            let image = Arc::new(IndexImage::read(dir)?);
            rec.images.push(image);
            let image = rec.images.len() - 1;
            rec.events.push(Event::IndexCheckpoint { image });
        } else if Self::tracked(&rel) {
            if std::fs::symlink_metadata(dir)?.is_dir() {
                rec.events.push(Event::SyncDir { dir: rel });
            } else {
                let id = self.path_id(&mut rec, dir)?;
                rec.events.push(Event::SyncFile { file: id });
            }
        }
        Ok(())
    }

    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut rec = self.alive()?;
        RealIo.link(from, to)?;
        if self.rel(to).is_some_and(|r| Self::tracked(&r)) {
            let id = self.path_id(&mut rec, from)?;
            self.note_path(&mut rec, to, |to| Event::Link { to, file: id });
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut rec = self.alive()?;
        let id = match self.rel(to).filter(|r| Self::tracked(r)) {
            Some(_) => Some(self.path_id(&mut rec, from)?),
            None => None,
        };
        RealIo.rename(from, to)?;
        let (Some(id), Some(t)) = (id, self.rel(to)) else { return Ok(()) };
        match self.rel(from).filter(|r| Self::tracked(r)) {
            Some(f) => rec.events.push(Event::Rename { from: f, to: t, file: id }),
            // From staging (chunks published by rename): only the new name is modelled.
            None => rec.events.push(Event::Link { to: t, file: id }),
        }
        Ok(())
    }

    fn unlink(&self, path: &Path) -> io::Result<()> {
        let mut rec = self.alive()?;
        RealIo.unlink(path)?;
        self.note_path(&mut rec, path, |path| Event::Unlink { path });
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut rec = self.alive()?;
        RealIo.create_dir(path)?;
        self.note_path(&mut rec, path, |path| Event::Mkdir { path });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The model of durable and pending state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Dir,
    File(FileId),
}

#[derive(Debug, Clone)]
enum DataOp {
    Write { offset: u64, data: Arc<Vec<u8>> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct SimFile {
    durable: Arc<Vec<u8>>,
    pending: Vec<DataOp>,
}

/// A path of the store, cheap to clone.
type Name = Arc<Path>;

fn name(p: &Path) -> Name {
    Arc::from(p)
}

/// One atomic directory change: names set (Some) or removed (None).
#[derive(Debug, Clone)]
struct NsChange {
    names: Vec<(Name, Option<Node>)>,
}

impl NsChange {
    fn touches_dir(&self, dir: &Path) -> bool {
        self.names.iter().any(|(p, _)| p.parent() == Some(dir))
    }

    fn shares_name(&self, names: &BTreeSet<Name>) -> bool {
        self.names.iter().any(|(p, _)| names.contains(p))
    }
}

/// Durable and pending state of the store's files at one point of a trace.
#[derive(Debug, Clone, Default)]
pub struct FsModel {
    durable: BTreeMap<Name, Node>,
    pending_ns: Vec<NsChange>,
    files: HashMap<FileId, SimFile>,
    /// Index image of the last completed checkpoint.
    pub index_checkpoint: usize,
    /// Index images sled may have written ahead since that checkpoint.
    pub index_ahead: Vec<usize>,
}

fn apply_data(content: &mut Vec<u8>, op: &DataOp) {
    match op {
        DataOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if content.len() < end {
                content.resize(end, 0);
            }
            content[*offset as usize..end].copy_from_slice(data);
        }
        DataOp::SetLen(len) => content.resize(*len as usize, 0),
    }
}

/// How a crash state treats what is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Nothing pending survives (the strictest state).
    DropAll,
    /// Everything pending survives (the page cache was written back just in time).
    KeepAll,
    /// Each pending operation is kept, dropped or torn at random.
    Random,
}

/// splitmix64: the crash-state choices (seeded, reproducible).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

impl FsModel {
    /// Advances the model by one event.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Create { path, file } => {
                self.files.insert(*file, SimFile::default());
                self.pending_ns.push(NsChange { names: vec![(name(path), Some(Node::File(*file)))] });
            }
            Event::Discovered { file, content } => {
                let pending = vec![DataOp::Write { offset: 0, data: content.clone() }];
                self.files.insert(*file, SimFile { durable: Arc::default(), pending });
            }
            Event::Write { file, offset, data } => {
                let op = DataOp::Write { offset: *offset, data: data.clone() };
                self.files.entry(*file).or_default().pending.push(op);
            }
            Event::SetLen { file, len } => {
                self.files.entry(*file).or_default().pending.push(DataOp::SetLen(*len));
            }
            Event::SyncFile { file } => {
                if let Some(f) = self.files.get_mut(file) {
                    if !f.pending.is_empty() {
                        let mut content = f.durable.to_vec();
                        for op in f.pending.drain(..) {
                            apply_data(&mut content, &op);
                        }
                        f.durable = Arc::new(content);
                    }
                }
            }
            Event::SyncDir { dir } => self.sync_dir(dir),
            Event::Link { to, file } => {
                self.pending_ns.push(NsChange { names: vec![(name(to), Some(Node::File(*file)))] });
            }
            Event::Rename { from, to, file } => {
                let names = vec![(name(from), None), (name(to), Some(Node::File(*file)))];
                self.pending_ns.push(NsChange { names });
            }
            Event::Unlink { path } => self.pending_ns.push(NsChange { names: vec![(name(path), None)] }),
            Event::Mkdir { path } => {
                self.pending_ns.push(NsChange { names: vec![(name(path), Some(Node::Dir))] })
            }
            Event::IndexCheckpoint { image } => {
                self.index_checkpoint = *image;
                self.index_ahead.clear();
            }
            Event::IndexAhead { image } => self.index_ahead.push(*image),
            Event::Mark(_) => {}
        }
    }

    /// fsync of `dir`: its pending changes, and every earlier change of the same names, become
    /// durable, in order.
    fn sync_dir(&mut self, dir: &Path) {
        let mut names = BTreeSet::new();
        let mut durable = vec![false; self.pending_ns.len()];
        for (i, change) in self.pending_ns.iter().enumerate().rev() {
            if change.touches_dir(dir) || change.shares_name(&names) {
                durable[i] = true;
                names.extend(change.names.iter().map(|(p, _)| p.clone()));
            }
        }
        let mut kept = Vec::new();
        for (change, d) in std::mem::take(&mut self.pending_ns).into_iter().zip(durable) {
            if d {
                apply_ns(&mut self.durable, &change);
            } else {
                kept.push(change);
            }
        }
        self.pending_ns = kept;
    }

    /// Number of pending operations (directory changes and file data operations).
    pub fn pending(&self) -> usize {
        self.pending_ns.len() + self.files.values().map(|f| f.pending.len()).sum::<usize>()
    }

    /// One state a power cut at this point could leave.
    pub fn crash_state(&self, pick: Pick, rng: &mut Rng, sled_ahead: bool) -> CrashState {
        let mut ns = self.durable.clone();
        for change in &self.pending_ns {
            let keep = match pick {
                Pick::DropAll => false,
                Pick::KeepAll => true,
                Pick::Random => rng.chance(1, 2),
            };
            if keep {
                apply_ns(&mut ns, change);
            }
        }
        let mut contents: HashMap<FileId, Arc<Vec<u8>>> = HashMap::new();
        let mut entries = Vec::with_capacity(ns.len());
        let mut dirs: HashSet<Name> = HashSet::new();
        // Sorted: a directory comes before everything in it.
        for (path, node) in ns {
            // A name whose directory did not survive is unreachable.
            if path.parent().is_some_and(|p| !p.as_os_str().is_empty() && !dirs.contains(p)) {
                continue;
            }
            let entry = match node {
                Node::Dir => {
                    dirs.insert(path.clone());
                    Entry::Dir
                }
                Node::File(id) => {
                    let content =
                        contents.entry(id).or_insert_with(|| self.crash_content(id, pick, rng)).clone();
                    Entry::File { id, content }
                }
            };
            entries.push((path, entry));
        }
        let index = if sled_ahead && !self.index_ahead.is_empty() {
            // sled wrote some (any) of its later states ahead; the newest most often.
            match pick {
                Pick::Random if rng.chance(1, 2) => {
                    self.index_ahead[rng.below(self.index_ahead.len() as u64) as usize]
                }
                _ => self.index_ahead[self.index_ahead.len() - 1],
            }
        } else {
            self.index_checkpoint
        };
        CrashState { entries, index }
    }

    fn crash_content(&self, id: FileId, pick: Pick, rng: &mut Rng) -> Arc<Vec<u8>> {
        let Some(f) = self.files.get(&id) else { return Arc::default() };
        if f.pending.is_empty() || pick == Pick::DropAll {
            return f.durable.clone();
        }
        let mut content = f.durable.to_vec();
        if pick == Pick::KeepAll {
            for op in &f.pending {
                apply_data(&mut content, op);
            }
            return Arc::new(content);
        }
        // The size the file would have if every pending operation had reached the disk.
        let mut full = f.durable.len();
        for op in &f.pending {
            full = match op {
                DataOp::Write { offset, data } => full.max(*offset as usize + data.len()),
                DataOp::SetLen(len) => *len as usize,
            };
        }
        for op in &f.pending {
            match (op, rng.below(8)) {
                (_, 0..=2) => {}
                (DataOp::Write { offset, data }, 6..=7) => {
                    // Torn: an arbitrary subset of its sectors (aligned to the file).
                    let mut pos = *offset;
                    let end = offset + data.len() as u64;
                    while pos < end {
                        let next = ((pos / SECTOR_BYTES) + 1) * SECTOR_BYTES;
                        let stop = next.min(end);
                        if rng.chance(1, 2) {
                            let slice = &data[(pos - offset) as usize..(stop - offset) as usize];
                            let piece = DataOp::Write { offset: pos, data: Arc::new(slice.to_vec()) };
                            apply_data(&mut content, &piece);
                        }
                        pos = stop;
                    }
                }
                (op, _) => apply_data(&mut content, op),
            }
        }
        if content.len() < full && rng.chance(1, 4) {
            // The size reached the disk, the data did not.
            content.resize(full, 0);
        }
        Arc::new(content)
    }
}

fn apply_ns(ns: &mut BTreeMap<Name, Node>, change: &NsChange) {
    for (path, node) in &change.names {
        match node {
            Some(n) => {
                ns.insert(path.clone(), *n);
            }
            None => {
                ns.remove(path);
            }
        }
    }
}

#[derive(Debug, Clone)]
pub enum Entry {
    Dir,
    File { id: FileId, content: Arc<Vec<u8>> },
}

/// A materializable on-disk state after a simulated power cut.
#[derive(Debug, Clone)]
pub struct CrashState {
    /// Every name of the store except `index/`'s contents, sorted (parents before children).
    pub entries: Vec<(Name, Entry)>,
    /// The index image sled's files hold.
    pub index: usize,
}

impl CrashState {
    /// Identifies the state: equal fingerprints, equal bytes on disk.
    pub fn fingerprint(&self, images: &[Arc<IndexImage>]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(images[self.index].digest());
        let mut first_name: HashMap<FileId, &Path> = HashMap::new();
        for (path, entry) in &self.entries {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update(&[0]);
            match entry {
                Entry::Dir => {
                    h.update(b"d");
                }
                Entry::File { id, content } => {
                    // Hard links: the structure counts, not the file ids.
                    let first = *first_name.entry(*id).or_insert(path);
                    h.update(b"f");
                    h.update(first.as_os_str().as_encoded_bytes());
                    h.update(&[0]);
                    h.update(blake3::hash(content).as_bytes());
                }
            }
        }
        *h.finalize().as_bytes()
    }

    /// Writes the state into `dir` (which must not exist). With `reuse = (name, prepared)`, the
    /// directory `name` of the state (e.g. `chunks`, with its 256 shards) is not created but
    /// moved from `prepared`, which holds exactly the state's subdirectories of it, empty;
    /// [`CrashState::unmaterialize`] moves it back. Saves most of the cost of a state.
    pub fn materialize(
        &self,
        dir: &Path,
        images: &[Arc<IndexImage>],
        reuse: Option<(&Path, &Path)>,
    ) -> io::Result<()> {
        std::fs::create_dir(dir)?;
        let mut written: HashMap<FileId, PathBuf> = HashMap::new();
        for (path, entry) in &self.entries {
            let target = dir.join(path);
            match entry {
                Entry::Dir => match reuse {
                    Some((name, prepared)) if **path == *name => std::fs::rename(prepared, &target)?,
                    Some((name, _)) if path.starts_with(name) => {}
                    _ => std::fs::create_dir(&target)?,
                },
                Entry::File { id, content } => match written.get(id) {
                    Some(first) => std::fs::hard_link(first, &target)?,
                    None => {
                        std::fs::write(&target, content.as_slice())?;
                        written.insert(*id, target);
                    }
                },
            }
        }
        let index = dir.join("index");
        if self.entries.iter().any(|(p, e)| **p == *Path::new("index") && matches!(e, Entry::File { .. })) {
            return Err(io::Error::other("index is a file"));
        }
        images[self.index].write(&index)?;
        std::fs::create_dir_all(dir.join("staging"))?;
        Ok(())
    }

    /// Removes a state written with `reuse`: the files the state put under `name` and the
    /// `extra` ones (relative to `dir`) are removed, `name` goes back to `prepared`, the rest is
    /// deleted.
    pub fn unmaterialize(
        &self,
        dir: &Path,
        (name, prepared): (&Path, &Path),
        extra: &[PathBuf],
    ) -> io::Result<()> {
        let files =
            self.entries.iter().filter(|(p, e)| p.starts_with(name) && matches!(e, Entry::File { .. }));
        for path in files.map(|(p, _)| &**p).chain(extra.iter().map(PathBuf::as_path)) {
            match std::fs::remove_file(dir.join(path)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(dir.join(name), prepared)?;
        std::fs::remove_dir_all(dir)
    }

    /// The subdirectories the state has under `name`.
    pub fn dirs_under<'a>(&'a self, name: &'a Path) -> impl Iterator<Item = &'a Path> + 'a {
        self.entries
            .iter()
            .filter(move |(p, e)| p.starts_with(name) && **p != *name && matches!(e, Entry::Dir))
            .map(|(p, _)| &**p)
    }
}
