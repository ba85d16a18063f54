//! fsck as an API: [`Store::check`] verifies that the index, the journal and the chunk files
//! agree, without changing anything.
//!
//! Checked: the journal decodes completely and in order (`Journal::verify`); every inode
//! decodes; every directory entry names an existing inode of its kind, has a unique readdir
//! cookie below the directory's next cookie, and a backlink; every backlink has its entry;
//! every named inode is reachable from the root and no directory is reachable twice; link
//! counts (directories: 2 + subdirectories, 0 once removed; others: their number of names);
//! every file's current generation exists and gives its size, every manifest fits its size
//! and chunk size; the chunk reference counts equal the references of all manifests; every
//! referenced chunk file exists with its recorded length and hash; inode numbers stay below
//! the next one handed out.
//!
//! [`Store::repair`] is `fsck --repair`: it drops what damaged chunks made unrecoverable, and
//! nothing else.
//!
//! Not problems, but reported: chunk files no manifest references (a commit that never
//! reached the journal, e.g. cut by a crash; harmless, `unreferenced_chunk_files`) and
//! chunks whose count fell to zero (waiting for gc).

use super::error::{StoreError, StoreResult};
use super::records::{Hash, Ino, Inode, Kind, Manifest, Op, ROOT_INO};
use super::{Store, FIRST_COOKIE};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

/// Every name of each inode: (parent, name).
type Names = HashMap<Ino, Vec<(Ino, Vec<u8>)>>;

/// What [`Store::check`] found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub inodes: u64,
    pub directories: u64,
    pub files: u64,
    pub generations: u64,
    pub journal_records: u64,
    /// Distinct chunks referenced by some manifest, and their bytes.
    pub chunks: u64,
    pub chunk_bytes: u64,
    /// Chunk files nothing references and the index does not count (harmless leftovers).
    pub unreferenced_chunk_files: Vec<PathBuf>,
    /// Chunks with a reference count of zero (gc removes them).
    pub garbage_chunks: u64,
    /// The store refuses changes after an I/O failure (until remount).
    pub read_only: bool,
    /// Inconsistencies: empty when the store is clean.
    pub problems: Vec<String>,
    /// Referenced chunks that are missing, of the wrong size or (when hashed) the wrong content.
    pub damaged_chunks: Vec<Hash>,
}

/// A generation that needs a damaged chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedGeneration {
    /// The inode holding it (a file, or a predecessor it replaced by rename).
    pub owner: Ino,
    pub gen: u64,
    /// It is what the file reads now.
    pub current: bool,
    /// A path of the file (or of the file that inherited the history), `#INO` if unnamed.
    pub path: String,
}

/// What [`Store::repair`] did.
#[derive(Debug, Clone, Default)]
pub struct RepairReport {
    /// Generations dropped because a chunk they need is damaged.
    pub dropped: Vec<DamagedGeneration>,
    /// Files whose current generation was damaged: (path, the generation now current, or None
    /// when no intact one was left and the file is now empty).
    pub reverted: Vec<(String, Option<u64>)>,
    /// Damaged chunk files removed.
    pub removed_chunks: u64,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`Store::check_with`] covers beyond the index and the journal.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// Read every referenced chunk and verify its hash (else: only that it exists, and its size).
    pub chunk_hashes: bool,
    /// List `chunks/` for files nothing references and files that do not belong there.
    pub chunk_dir_scan: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { chunk_hashes: true, chunk_dir_scan: true }
    }
}

impl Store {
    /// Checks the whole store (reads every chunk once). Changes wait while it runs; meant for
    /// an unmounted store (`genfs fsck`) and for tests.
    pub fn check(&self) -> StoreResult<CheckReport> {
        self.check_with(CheckOptions::default())
    }

    /// [`Store::check`] with some of the costly parts left out.
    pub fn check_with(&self, opts: CheckOptions) -> StoreResult<CheckReport> {
        // Commits hold the gc lock shared from sealing to applying, namespace changes take
        // ns_lock: holding both gives one consistent view.
        let _gc = self.chunk_gc.write();
        let _ns = self.ns_lock.lock();
        let mut r = CheckReport { read_only: self.is_failed(), ..CheckReport::default() };
        let journal = self.journal.verify()?;
        r.journal_records = journal.records as u64;
        r.problems.extend(journal.problems);

        let inodes: BTreeMap<Ino, Inode> = self.index.inodes()?.into_iter().collect();
        r.inodes = inodes.len() as u64;
        match inodes.get(&ROOT_INO) {
            Some(root) if root.kind == Kind::Dir => {}
            _ => r.problems.push("the root directory is missing".into()),
        }
        let names = self.check_names(&inodes, &mut r)?;
        let refs = self.check_files(&inodes, &names, &mut r)?;
        self.check_chunks(&refs, opts, &mut r)?;

        let highest = inodes.keys().next_back().copied().unwrap_or(0);
        let next = self.next_ino.load(std::sync::atomic::Ordering::SeqCst).min(self.index.next_ino()?);
        if next <= highest {
            r.problems.push(format!("inode {highest} exists, but {next} is the next number handed out"));
        }
        let last_seq = self.journal.last_seq();
        for (name, snap) in self.index.snapshots()? {
            if snap.seq > last_seq {
                let name = String::from_utf8_lossy(&name);
                r.problems
                    .push(format!("snapshot {name} is at {}, past the last record {last_seq}", snap.seq));
            }
        }
        Ok(r)
    }

    /// Directory entries, backlinks, reachability and link counts. Returns each inode's names.
    fn check_names(&self, inodes: &BTreeMap<Ino, Inode>, r: &mut CheckReport) -> StoreResult<Names> {
        let mut listed: Names = HashMap::new();
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        for (&dir, inode) in inodes.iter().filter(|(_, i)| i.kind == Kind::Dir) {
            r.directories += 1;
            let mut cookies = HashSet::new();
            for e in self.index.readdir(dir, 0, usize::MAX)? {
                let name = String::from_utf8_lossy(&e.name).into_owned();
                if !cookies.insert(e.cookie) || e.cookie < FIRST_COOKIE || e.cookie >= inode.next_cookie {
                    r.problems
                        .push(format!("directory {dir}: bad or repeated cookie {} of {name}", e.cookie));
                }
                match inodes.get(&e.ino) {
                    None => r.problems.push(format!("directory {dir}: {name} names missing inode {}", e.ino)),
                    Some(child) if child.kind != e.kind => r.problems.push(format!(
                        "directory {dir}: {name} is a {:?}, its entry says {:?}",
                        child.kind, e.kind
                    )),
                    Some(child) => {
                        if child.kind == Kind::Dir {
                            *subdirs.entry(dir).or_default() += 1;
                        }
                    }
                }
                listed.entry(e.ino).or_default().push((dir, e.name));
            }
        }
        let mut names: Names = HashMap::new();
        for &ino in inodes.keys() {
            let mut backlinks = self.index.names_of(ino)?;
            for (parent, name) in &backlinks {
                let shown = String::from_utf8_lossy(name);
                match self.index.lookup(*parent, name)? {
                    Some((i, _)) if i == ino => {}
                    other => r
                        .problems
                        .push(format!("inode {ino}: backlink {parent}/{shown} but the entry is {other:?}")),
                }
            }
            let mut shown = listed.remove(&ino).unwrap_or_default();
            backlinks.sort();
            shown.sort();
            if backlinks != shown {
                r.problems.push(format!("inode {ino}: backlinks {backlinks:?}, listed as {shown:?}"));
            }
            names.insert(ino, backlinks);
        }
        for (ino, entries) in listed {
            r.problems.push(format!("entries {entries:?} name inode {ino}, which does not exist"));
        }
        for (&ino, inode) in inodes {
            let n = names.get(&ino).map_or(0, Vec::len) as u32;
            let expected = expected_nlink(ino, inode.kind, n, subdirs.get(&ino).copied().unwrap_or(0));
            if inode.nlink != expected {
                r.problems.push(format!(
                    "inode {ino} ({:?}): nlink {}, expected {expected}",
                    inode.kind, inode.nlink
                ));
            }
            if inode.kind == Kind::Dir && (n > 1 || (ino == ROOT_INO && n > 0)) {
                r.problems.push(format!("directory {ino} has {n} names"));
            }
            if inode.kind == Kind::Dir && n == 0 && ino != ROOT_INO && subdirs.contains_key(&ino) {
                r.problems.push(format!("removed directory {ino} still has subdirectories"));
            }
        }
        // Reachability: every named inode hangs off the root, and no directory is met twice.
        let mut seen = HashSet::from([ROOT_INO]);
        let mut stack = vec![ROOT_INO];
        while let Some(dir) = stack.pop() {
            for e in self.index.readdir(dir, 0, usize::MAX)? {
                if e.kind == Kind::Dir {
                    if !seen.insert(e.ino) {
                        r.problems.push(format!("directory {} is reachable twice (a cycle?)", e.ino));
                    } else {
                        stack.push(e.ino);
                    }
                } else {
                    seen.insert(e.ino);
                }
            }
        }
        for (ino, n) in &names {
            if !n.is_empty() && !seen.contains(ino) {
                r.problems.push(format!("inode {ino} has names {n:?} but is not reachable from the root"));
            }
        }
        Ok(names)
    }

    /// Generations and manifests; returns every referenced chunk with its count and length.
    fn check_files(
        &self,
        inodes: &BTreeMap<Ino, Inode>,
        names: &Names,
        r: &mut CheckReport,
    ) -> StoreResult<HashMap<Hash, (u64, u32)>> {
        let cs = self.config.chunk_size;
        let mut refs: HashMap<Hash, (u64, u32)> = HashMap::new();
        for (&ino, inode) in inodes {
            if inode.kind == Kind::Symlink && inode.size != inode.target.len() as u64 {
                r.problems.push(format!(
                    "symlink {ino}: size {} for a {}-byte target",
                    inode.size,
                    inode.target.len()
                ));
            }
            if inode.kind != Kind::File {
                continue;
            }
            if names.get(&ino).is_some_and(|n| !n.is_empty()) {
                r.files += 1;
            }
            if inode.gen > inode.last_gen {
                r.problems.push(format!(
                    "file {ino}: current generation {} above the last {}",
                    inode.gen, inode.last_gen
                ));
            }
            if let Some(prev) = inode.history {
                if inodes.get(&prev).map(|i| i.kind) != Some(Kind::File) {
                    r.problems.push(format!("file {ino}: history inode {prev} is not a file"));
                }
            }
            let gens = self.index.generations(ino)?;
            r.generations += gens.len() as u64;
            let current = gens.iter().find(|(g, _)| *g == inode.gen).map(|(_, m)| m);
            match current {
                Some(m) if m.size != inode.size => r.problems.push(format!(
                    "file {ino}: size {}, its generation {} has {}",
                    inode.size, inode.gen, m.size
                )),
                // A deleted file's current generation may go by retention (gc then removes
                // the inode once its last generation is gone).
                None if inode.nlink == 0 => {}
                None if inode.gen != 0 => {
                    r.problems.push(format!("file {ino}: current generation {} is missing", inode.gen))
                }
                None if inode.size != 0 => {
                    r.problems.push(format!("file {ino}: no generation, size {}", inode.size))
                }
                _ => {}
            }
            for (gen, m) in &gens {
                if *gen > inode.last_gen || *gen == 0 {
                    r.problems.push(format!("file {ino}: generation {gen} outside 1..={}", inode.last_gen));
                }
                for (idx, c) in &m.chunks {
                    let start = idx.saturating_mul(cs);
                    if c.len == 0 || c.len as u64 > cs || start + c.len as u64 > m.size {
                        r.problems.push(format!(
                            "file {ino} generation {gen}: chunk {idx} of {} bytes does not fit size {}",
                            c.len, m.size
                        ));
                    }
                }
                for (idx, pieces) in &m.pieces {
                    if let Some(why) = misfit_pieces(pieces, idx.saturating_mul(cs), cs, m.size) {
                        r.problems.push(format!("file {ino} generation {gen}: slot {idx}: {why}"));
                    }
                    if m.chunks.contains_key(idx) {
                        r.problems
                            .push(format!("file {ino} generation {gen}: slot {idx} is whole and pieces"));
                    }
                }
                for c in m.chunk_refs() {
                    let entry = refs.entry(c.hash).or_insert((0, c.len));
                    entry.0 += 1;
                    if entry.1 != c.len {
                        let hex = super::chunks::hex(&c.hash);
                        r.problems.push(format!("chunk {hex} recorded as {} and {} bytes", entry.1, c.len));
                    }
                }
            }
        }
        Ok(refs)
    }

    /// Reference counts against manifests, and the chunk files themselves.
    fn check_chunks(
        &self,
        refs: &HashMap<Hash, (u64, u32)>,
        opts: CheckOptions,
        r: &mut CheckReport,
    ) -> StoreResult<()> {
        let counted: HashMap<Hash, (u64, u32)> =
            self.index.chunks()?.into_iter().map(|(h, c, l)| (h, (c, l))).collect();
        for (hash, (count, len)) in &counted {
            let hex = super::chunks::hex(hash);
            let expected = refs.get(hash).map_or(0, |(n, _)| *n);
            if *count != expected {
                r.problems.push(format!(
                    "chunk {hex}: reference count {count}, manifests reference it {expected} times"
                ));
            }
            if *count == 0 {
                r.garbage_chunks += 1;
            }
            if let Some((_, l)) = refs.get(hash) {
                if l != len {
                    r.problems.push(format!("chunk {hex}: index says {len} bytes, manifests {l}"));
                }
            }
        }
        for (hash, (n, len)) in refs {
            let hex = super::chunks::hex(hash);
            if !counted.contains_key(hash) {
                r.problems.push(format!("chunk {hex}: referenced {n} times, not counted"));
            }
            r.chunks += 1;
            r.chunk_bytes += *len as u64;
            if let Err(why) = self.verify_chunk(hash, *len, opts.chunk_hashes) {
                r.problems.push(format!("chunk {hex}: {why}"));
                r.damaged_chunks.push(*hash);
            }
        }
        r.damaged_chunks.sort();
        if !opts.chunk_dir_scan {
            return Ok(());
        }
        let chunks_dir = self.root.join("chunks");
        let shards = std::fs::read_dir(&chunks_dir)
            .map_err(|e| StoreError::io(format!("read {}", chunks_dir.display()), e))?;
        for shard in shards {
            let shard = shard.map_err(|e| StoreError::io("read chunks", e))?;
            if !shard.file_type().is_ok_and(|t| t.is_dir()) {
                r.problems.push(format!("stray file {}", shard.path().display()));
                continue;
            }
            let files = std::fs::read_dir(shard.path()).map_err(|e| StoreError::io("read chunk shard", e))?;
            for f in files {
                let f = f.map_err(|e| StoreError::io("read chunk shard", e))?;
                let name = f.file_name().to_string_lossy().into_owned();
                let shard_byte = parse_hash_prefix(&shard.file_name().to_string_lossy());
                match parse_hash(&name) {
                    Some(h) if shard_byte == Some(h[0]) => {
                        if !refs.contains_key(&h) && !counted.contains_key(&h) {
                            r.unreferenced_chunk_files.push(f.path());
                        }
                    }
                    _ => r.problems.push(format!("stray file {}", f.path().display())),
                }
            }
        }
        r.unreferenced_chunk_files.sort();
        Ok(())
    }
}

impl Store {
    /// Every chunk the index counts a reference to, with its length (what scrub reads).
    pub fn referenced_chunks(&self) -> StoreResult<Vec<(Hash, u32)>> {
        let mut chunks: Vec<(Hash, u32)> =
            self.index.chunks()?.into_iter().filter(|(_, n, _)| *n > 0).map(|(h, _, l)| (h, l)).collect();
        chunks.sort();
        Ok(chunks)
    }

    /// Whether a chunk file exists with `len` bytes and (with `hash_it`) the content its name
    /// promises; the error says what is wrong.
    pub fn verify_chunk(&self, hash: &Hash, len: u32, hash_it: bool) -> Result<(), String> {
        let path = self.chunks.path(hash);
        if !hash_it {
            return match std::fs::metadata(&path) {
                Err(e) => Err(e.to_string()),
                Ok(m) if m.len() != len as u64 => Err(format!("{} bytes, expected {len}", m.len())),
                Ok(_) => Ok(()),
            };
        }
        match std::fs::read(&path) {
            Err(e) => Err(e.to_string()),
            Ok(bytes) if bytes.len() != len as usize => Err(format!("{} bytes, expected {len}", bytes.len())),
            Ok(bytes) if blake3::hash(&bytes).as_bytes() != hash => Err("content fails its hash".into()),
            Ok(_) => Ok(()),
        }
    }

    /// Every generation that needs one of the `damaged` chunks, by file.
    pub fn damaged_generations(&self, damaged: &HashSet<Hash>) -> StoreResult<Vec<DamagedGeneration>> {
        let inodes: HashMap<Ino, Inode> = self.index.inodes()?.into_iter().collect();
        let heirs: HashMap<Ino, Ino> =
            inodes.iter().filter_map(|(i, n)| n.history.map(|h| (h, *i))).collect();
        let mut out = Vec::new();
        for (ino, inode) in inodes.iter().filter(|(_, i)| i.kind == Kind::File) {
            for (gen, m) in self.index.generations(*ino)? {
                if !uses_any(&m, damaged) {
                    continue;
                }
                // A predecessor replaced by rename is read through the file that replaced it.
                let mut named = *ino;
                for _ in 0..inodes.len() {
                    match heirs.get(&named) {
                        Some(heir) if inodes.get(&named).is_some_and(|i| i.nlink == 0) => named = *heir,
                        _ => break,
                    }
                }
                let current = gen == inode.gen && inode.nlink > 0;
                out.push(DamagedGeneration { owner: *ino, gen, current, path: self.path_of(named) });
            }
        }
        out.sort_by(|a, b| (&a.path, a.gen).cmp(&(&b.path, b.gen)));
        Ok(out)
    }

    /// Drops every generation that needs a damaged chunk; a file whose current generation is
    /// among them gets its newest intact generation back as a new one (or, with none left,
    /// becomes empty); the damaged chunk files go. Nothing intact is touched.
    pub fn repair(&self, damaged: &HashSet<Hash>) -> StoreResult<RepairReport> {
        let mut report = RepairReport { dropped: self.damaged_generations(damaged)?, ..Default::default() };
        for d in report.dropped.iter().filter(|d| d.current) {
            let intact =
                self.log(d.owner)?.into_iter().rev().find(|e| !uses_any(&e.manifest, damaged)).map(|e| e.gen);
            match intact {
                Some(gen) => {
                    self.restore(d.owner, gen)?;
                }
                None => {
                    let mut draft = self.new_draft(d.owner)?;
                    draft.truncate(0, &self.chunks)?;
                    draft.dirty = true;
                    self.commit(&mut draft)?;
                }
            }
            report.reverted.push((d.path.clone(), intact));
        }
        let ops: Vec<Op> =
            report.dropped.iter().map(|d| Op::DelGeneration { ino: d.owner, gen: d.gen }).collect();
        if !ops.is_empty() {
            self.mutate(ops)?;
        }
        let freed = self.collect_chunks(false, &Default::default())?;
        report.removed_chunks = freed.0;
        self.sync()?;
        Ok(report)
    }
}

/// The link count the names say an inode has: a directory 2 plus its subdirectories (0 once
/// removed; the root has no name), anything else its number of names.
pub(super) fn expected_nlink(ino: Ino, kind: Kind, names: u32, subdirs: u32) -> u32 {
    match kind {
        Kind::Dir if ino != ROOT_INO && names == 0 => 0,
        Kind::Dir => 2 + subdirs,
        _ => names,
    }
}

fn uses_any(m: &Manifest, chunks: &HashSet<Hash>) -> bool {
    m.chunk_refs().any(|c| chunks.contains(&c.hash))
}

fn parse_hash(name: &str) -> Option<Hash> {
    if name.len() != 64 {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(h)
}

fn parse_hash_prefix(name: &str) -> Option<u8> {
    if name.len() != 2 {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// What is wrong with a slot's pieces (at byte `start` of a file of `size`), if anything:
/// they must be sorted, disjoint, non-empty, inside the slot and the file, and inside their
/// chunks.
fn misfit_pieces(pieces: &[super::records::Piece], start: u64, cs: u64, size: u64) -> Option<String> {
    let mut end_of_last = 0u64;
    if pieces.is_empty() {
        return Some("no pieces".into());
    }
    for p in pieces {
        let (at, end) = (p.at as u64, p.at as u64 + p.len as u64);
        if p.len == 0 || at < end_of_last || end > cs || start + end > size {
            return Some(format!("piece of {} bytes at {at} does not fit after {end_of_last}", p.len));
        }
        if p.within as u64 + p.len as u64 > p.chunk.len as u64 {
            return Some(format!("piece at {at} reads past its chunk of {} bytes", p.chunk.len));
        }
        end_of_last = end;
    }
    None
}
