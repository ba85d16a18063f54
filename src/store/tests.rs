//! Store unit tests: no FUSE; faults injected through `io::FaultyIo`.
//!
//! Crash images are copies of a store directory taken while the store is open. After
//! `Store::sync` the journal holds everything acknowledged, so a copy is what a crash at that
//! instant leaves behind; to prove that replay (and not sled) brought the index up to date,
//! some images get the index as it was at an earlier checkpoint.
//!
//! Tests marked `` document store bugs that are not fixed yet.

use super::config::CHUNK_BYTES_MIN;
use super::index::DirEntry;
use super::io::{FaultyIo, RealIo, StoreIo};
use super::journal::{encode_frame, Journal};
use super::records::{Ino, Kind, Manifest, Op, Record, ROOT_INO};
use super::{Draft, NewNode, Pinned, RenameMode, SetAttrs, Store, StoreError, XattrMode};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
/// The smallest chunk size: multi-chunk files stay small and tests stay fast.
const CS: u64 = CHUNK_BYTES_MIN;
const OWNER: (u32, u32) = (1000, 1000);

/// Asserts that a store call failed with the given error variant.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            Err(e) => panic!("expected {}, got {e:?}", stringify!($pattern)),
            Ok(_) => panic!("expected {}, got Ok", stringify!($pattern)),
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh store in a temporary directory (the store lives in `TMP/store`).
fn mkfs(chunk_size: u64) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    Store::mkfs(&path, chunk_size, OWNER).unwrap();
    (tmp, path)
}

/// A fresh, open store. Bind all three: the store must be dropped before the directory.
fn new_store(chunk_size: u64) -> (TempDir, PathBuf, Store) {
    let (tmp, path) = mkfs(chunk_size);
    let store = Store::open(&path).unwrap();
    (tmp, path, store)
}

fn open_err(path: &Path) -> StoreError {
    match Store::open(path) {
        Ok(_) => panic!("opening {} succeeded", path.display()),
        Err(e) => e,
    }
}

fn node(kind: Kind, target: &[u8]) -> NewNode {
    let perm = if kind == Kind::Dir { 0o755 } else { 0o644 };
    NewNode { kind, perm, uid: OWNER.0, gid: OWNER.1, rdev: 0, target: target.to_vec() }
}

fn create_file(store: &Store, parent: Ino, name: &str) -> Ino {
    store.create(parent, name.as_bytes(), &node(Kind::File, b"")).unwrap().0
}

fn mkdir(store: &Store, parent: Ino, name: &str) -> Ino {
    store.create(parent, name.as_bytes(), &node(Kind::Dir, b"")).unwrap().0
}

fn symlink(store: &Store, parent: Ino, name: &str, target: &str) -> Ino {
    let n = node(Kind::Symlink, target.as_bytes());
    store.create(parent, name.as_bytes(), &n).unwrap().0
}

fn lookup(store: &Store, parent: Ino, name: &str) -> Ino {
    store.lookup(parent, name.as_bytes()).unwrap().0
}

/// Writes `data` at `offset` through a new draft and commits it; returns the new generation.
fn write_and_commit(store: &Store, ino: Ino, offset: u64, data: &[u8]) -> u64 {
    let mut draft = store.new_draft(ino).unwrap();
    draft.write(offset, data, store.chunks()).unwrap();
    store.commit(&mut draft).unwrap().gen
}

fn read_manifest(store: &Store, manifest: &Manifest) -> Vec<u8> {
    let len = u32::try_from(manifest.size).unwrap();
    store.read(manifest, 0, len).unwrap()
}

/// The bytes of the file's current generation.
fn content(store: &Store, ino: Ino) -> Vec<u8> {
    let (_, manifest) = store.current_generation(ino).unwrap();
    read_manifest(store, &manifest)
}

fn generation_content(store: &Store, ino: Ino, gen: u64) -> Vec<u8> {
    read_manifest(store, &store.generation(ino, gen).unwrap())
}

fn current_gen(store: &Store, ino: Ino) -> u64 {
    store.current_generation(ino).unwrap().0
}

fn draft_content(store: &Store, draft: &Draft) -> Vec<u8> {
    let len = u32::try_from(draft.size).unwrap();
    draft.read(0, len, store.chunks()).unwrap()
}

/// Deterministic bytes, never zero (so no chunk of them is a hole).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| (rng.next() as u8) | 1).collect()
}

/// xorshift64: reproducible pseudo-random numbers for the model test.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn chunk_files(store_path: &Path) -> usize {
    files_in(&store_path.join("chunks")).len()
}

fn staging_files(store_path: &Path) -> usize {
    files_in(&store_path.join("staging")).len()
}

/// All entries of a directory, read a few at a time (exercises cookie paging).
fn list_dir(store: &Store, dir: Ino) -> Vec<DirEntry> {
    let mut out: Vec<DirEntry> = Vec::new();
    loop {
        let after = out.last().map(|e| e.cookie).unwrap_or(0);
        let page = store.readdir(dir, after, 3).unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

fn names(store: &Store, dir: Ino) -> Vec<String> {
    let entries = list_dir(store, dir);
    entries.iter().map(|e| String::from_utf8_lossy(&e.name).into_owned()).collect()
}

/// Everything a reader can observe, one line per name, for comparing two stores.
fn describe(store: &Store) -> Vec<String> {
    let mut out = vec![describe_node(store, ROOT_INO, "/")];
    describe_dir(store, ROOT_INO, "", &mut out);
    out
}

fn describe_dir(store: &Store, dir: Ino, path: &str, out: &mut Vec<String>) {
    for e in list_dir(store, dir) {
        let path = format!("{path}/{}", String::from_utf8_lossy(&e.name));
        out.push(format!("{} cookie={}", describe_node(store, e.ino, &path), e.cookie));
        if e.kind == Kind::Dir {
            describe_dir(store, e.ino, &path, out);
        }
    }
}

fn describe_node(store: &Store, ino: Ino, path: &str) -> String {
    let inode = store.inode(ino).unwrap();
    let xattrs: Vec<(Vec<u8>, Vec<u8>)> = store
        .xattr_names(ino)
        .unwrap()
        .into_iter()
        .map(|name| {
            let value = store.xattr(ino, &name).unwrap();
            (name, value)
        })
        .collect();
    let mut gens = Vec::new();
    if inode.kind == Kind::File {
        for (gen, manifest) in store.generations(ino).unwrap() {
            let bytes = blake3::hash(&read_manifest(store, &manifest));
            gens.push(format!("{gen}:{}:{manifest:?}", bytes.to_hex()));
        }
    }
    format!("{path} ino={ino} {inode:?} xattrs={xattrs:?} gens={gens:?}")
}

/// fsck in miniature: readdir, lookup and backlinks agree; cookies are unique; every link
/// count is right (directories: 2 + subdirectories; others: number of names).
fn assert_consistent(store: &Store) {
    let mut links: HashMap<Ino, u32> = HashMap::new();
    let mut dirs = vec![ROOT_INO];
    while let Some(dir) = dirs.pop() {
        let dir_inode = store.inode(dir).unwrap();
        let mut cookies = HashSet::new();
        let mut seen = HashSet::new();
        let mut subdirs = 0;
        for e in list_dir(store, dir) {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            assert!(cookies.insert(e.cookie), "dir {dir}: cookie {} used twice", e.cookie);
            assert!(seen.insert(name.clone()), "dir {dir}: {name} listed twice");
            assert!(e.cookie < dir_inode.next_cookie, "dir {dir}: cookie of {name} not issued");
            let (ino, inode) = store.lookup(dir, &e.name).unwrap();
            assert_eq!((ino, inode.kind), (e.ino, e.kind), "dir {dir}: {name}");
            assert!(store.names_of(ino).unwrap().contains(&(dir, e.name.clone())));
            *links.entry(ino).or_default() += 1;
            if inode.kind == Kind::Dir {
                subdirs += 1;
                dirs.push(ino);
            }
        }
        assert_eq!(dir_inode.nlink, 2 + subdirs, "nlink of directory {dir}");
    }
    for (ino, n) in links {
        let inode = store.inode(ino).unwrap();
        let names = store.names_of(ino).unwrap().len() as u32;
        assert_eq!(names, n, "inode {ino}: backlinks vs readdir");
        if inode.kind != Kind::Dir {
            assert_eq!(inode.nlink, n, "nlink of inode {ino}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// What a crash right now leaves on disk: everything synced is in the journal. sled is
/// flushed first only so that the copy of its files is self-consistent.
fn crash_image(store: &Store, image: &Path) {
    store.sync().unwrap();
    store.index.flush().unwrap();
    copy_dir(store.path(), image);
}

/// Checkpoints and saves a copy of the index: what sled holds if it loses all later writes.
fn save_index(store: &Store, to: &Path) {
    store.checkpoint().unwrap();
    copy_dir(&store.path().join("index"), to);
}

/// A crash image whose index is the one saved by [`save_index`]: only the journal can bring
/// it up to date.
fn crash_image_with_index(store: &Store, image: &Path, saved_index: &Path) {
    crash_image(store, image);
    std::fs::remove_dir_all(image.join("index")).unwrap();
    copy_dir(saved_index, &image.join("index"));
}

fn only_segment(journal_dir: &Path) -> PathBuf {
    let segments: Vec<PathBuf> =
        files_in(journal_dir).into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.into_iter().next().unwrap()
}

/// The frames of a journal segment: (offset, frame length, record).
fn frames(segment: &Path) -> Vec<(usize, usize, Record)> {
    let buf = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 8 <= buf.len() {
        let len = u32::from_le_bytes(buf[pos..pos + 4].try_into().unwrap()) as usize;
        let record: Record = postcard::from_bytes(&buf[pos + 8..pos + 8 + len]).unwrap();
        out.push((pos, 8 + len, record));
        pos += 8 + len;
    }
    assert_eq!(pos, buf.len(), "{} ends in a partial frame", segment.display());
    out
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xFF;
    std::fs::write(path, bytes).unwrap();
}

fn creates_name(record: &Record, name: &[u8]) -> bool {
    record.ops.iter().any(|op| matches!(op, Op::PutDirent { name: n, .. } if n == name))
}

// ---------------------------------------------------------------------------------------------
// 1. Basic data path
// ---------------------------------------------------------------------------------------------

#[test]
fn committed_bytes_read_back() {
    let (_tmp, _path, store) = new_store(MIB);
    let ino = create_file(&store, ROOT_INO, "f");
    assert_eq!(current_gen(&store, ino), 0);
    assert!(content(&store, ino).is_empty());
    let data = pattern(1, (2 * MIB + 123) as usize);
    assert_eq!(write_and_commit(&store, ino, 0, &data), 1);
    assert_eq!(content(&store, ino), data);
    assert_eq!(store.inode(ino).unwrap().size, data.len() as u64);
    let (_, manifest) = store.current_generation(ino).unwrap();
    assert_eq!(store.read(&manifest, MIB - 10, 20).unwrap(), &data[(MIB - 10) as usize..][..20]);
    assert!(store.read(&manifest, data.len() as u64, 10).unwrap().is_empty());
}

#[test]
fn generations_are_numbered_from_one_and_old_ones_stay_readable() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let versions = [pattern(1, 100), pattern(2, 3 * CS as usize), pattern(3, 10)];
    let mut draft = store.new_draft(ino).unwrap();
    for (i, v) in versions.iter().enumerate() {
        draft.truncate(0, store.chunks()).unwrap();
        draft.write(0, v, store.chunks()).unwrap();
        let inode = store.commit(&mut draft).unwrap();
        assert_eq!(inode.gen, i as u64 + 1);
        assert_eq!(current_gen(&store, ino), i as u64 + 1);
    }
    let gens = store.generations(ino).unwrap();
    assert_eq!(gens.iter().map(|(g, _)| *g).collect::<Vec<_>>(), [1, 2, 3]);
    for (i, v) in versions.iter().enumerate() {
        assert_eq!(&generation_content(&store, ino, i as u64 + 1), v);
    }
}

#[test]
fn commit_of_an_unchanged_draft_keeps_the_content() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let data = pattern(4, 5000);
    write_and_commit(&store, ino, 0, &data);
    let mut draft = store.new_draft(ino).unwrap();
    assert!(!draft.dirty);
    let gen = store.commit(&mut draft).unwrap().gen;
    assert_eq!(content(&store, ino), data);
    let digest = |g| store.generation(ino, g).unwrap().digest();
    assert_eq!(digest(gen), digest(1));
}

#[test]
fn draft_writes_are_invisible_until_commit() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"committed");
    let mut draft = store.new_draft(ino).unwrap();
    draft.write(0, b"UNCOMMITTED", store.chunks()).unwrap();
    assert_eq!(draft_content(&store, &draft), b"UNCOMMITTED");
    assert_eq!(content(&store, ino), b"committed");
    assert_eq!(store.inode(ino).unwrap().size, 9);
    store.commit(&mut draft).unwrap();
    assert_eq!(content(&store, ino), b"UNCOMMITTED");
}

#[test]
fn sparse_write_stores_only_the_written_chunk() {
    let (_tmp, path, store) = new_store(MIB);
    let ino = create_file(&store, ROOT_INO, "sparse");
    write_and_commit(&store, ino, 5 * MIB, b"tail");
    let (_, manifest) = store.current_generation(ino).unwrap();
    assert_eq!(manifest.size, 5 * MIB + 4);
    assert_eq!(manifest.chunks.keys().copied().collect::<Vec<_>>(), [5]);
    assert_eq!(chunk_files(&path), 1);
    let bytes = content(&store, ino);
    assert_eq!(bytes.len() as u64, 5 * MIB + 4);
    assert!(bytes[..(5 * MIB) as usize].iter().all(|b| *b == 0));
    assert_eq!(&bytes[(5 * MIB) as usize..], b"tail");
}

#[test]
fn truncate_then_grow_reads_zeros_not_stale_bytes() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let old = vec![0xAB; (3 * CS - 100) as usize];
    let grown = 3 * CS + 50;
    for cut in [0, 1, CS / 2, CS, CS + 7, 2 * CS, 3 * CS - 101] {
        write_and_commit(&store, ino, 0, &old);
        let mut draft = store.new_draft(ino).unwrap();
        draft.truncate(cut, store.chunks()).unwrap();
        draft.truncate(grown, store.chunks()).unwrap();
        let mut expected = old[..cut as usize].to_vec();
        expected.resize(grown as usize, 0);
        assert_eq!(draft_content(&store, &draft), expected, "draft, cut at {cut}");
        store.commit(&mut draft).unwrap();
        assert_eq!(content(&store, ino), expected, "committed, cut at {cut}");
    }
}

#[test]
fn write_past_a_truncated_end_leaves_zeros_in_between() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, &[0xCD; 3000]);
    let mut draft = store.new_draft(ino).unwrap();
    draft.truncate(1000, store.chunks()).unwrap();
    draft.write(2000, b"x", store.chunks()).unwrap();
    let mut expected = vec![0xCD; 1000];
    expected.resize(2000, 0);
    expected.push(b'x');
    assert_eq!(draft_content(&store, &draft), expected);
    store.commit(&mut draft).unwrap();
    assert_eq!(content(&store, ino), expected);
    assert_eq!(generation_content(&store, ino, 1), [0xCD; 3000]);
}

#[test]
fn all_zero_chunks_are_stored_as_holes() {
    let (_tmp, path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let mut data = vec![0u8; CS as usize];
    data.extend(pattern(5, CS as usize));
    write_and_commit(&store, ino, 0, &data);
    let (_, manifest) = store.current_generation(ino).unwrap();
    assert_eq!(manifest.chunks.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(chunk_files(&path), 1);
    // Overwriting the data chunk with zeros turns it into a hole too.
    write_and_commit(&store, ino, CS, &vec![0u8; CS as usize]);
    let (_, manifest) = store.current_generation(ino).unwrap();
    assert!(manifest.chunks.is_empty());
    assert_eq!(manifest.size, 2 * CS);
    assert_eq!(content(&store, ino), vec![0u8; 2 * CS as usize]);
    assert_eq!(generation_content(&store, ino, 1), data);
}

#[test]
fn random_writes_and_truncates_match_a_model() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let mut rng = Rng::new(42);
    let mut model: Vec<u8> = Vec::new();
    let mut committed: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut draft = store.new_draft(ino).unwrap();
    for step in 0..400 {
        match rng.below(10) {
            0..=4 => {
                let offset = rng.below(10 * CS) as usize;
                let len = 1 + rng.below(2 * CS) as usize;
                let data = if rng.below(4) == 0 { vec![0; len] } else { pattern(step, len) };
                draft.write(offset as u64, &data, store.chunks()).unwrap();
                if model.len() < offset + len {
                    model.resize(offset + len, 0);
                }
                model[offset..offset + len].copy_from_slice(&data);
            }
            5 | 6 => {
                let size = rng.below(12 * CS) as usize;
                draft.truncate(size as u64, store.chunks()).unwrap();
                model.resize(size, 0);
            }
            7 => {
                let gen = store.commit(&mut draft).unwrap().gen;
                assert_eq!(content(&store, ino), model, "step {step}");
                committed.push((gen, model.clone()));
            }
            8 => assert_eq!(draft_content(&store, &draft), model, "step {step}"),
            _ => {
                // Abandon uncommitted changes and start over from the current generation.
                draft = store.new_draft(ino).unwrap();
                model = committed.last().map(|(_, m)| m.clone()).unwrap_or_default();
            }
        }
    }
    assert!(committed.len() > 10);
    for (gen, bytes) in &committed {
        assert_eq!(&generation_content(&store, ino, *gen), bytes, "generation {gen}");
    }
}

/// Bytes in `chunks/` (what the store keeps of file data).
fn chunk_bytes(store_path: &Path) -> u64 {
    files_in(&store_path.join("chunks")).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

/// Most pieces any slot of any generation of `ino` holds.
fn most_pieces(store: &Store, ino: Ino) -> usize {
    let gens = store.generations(ino).unwrap();
    gens.iter().flat_map(|(_, m)| m.pieces.values().map(Vec::len)).max().unwrap_or(0)
}

#[test]
fn small_edits_are_stored_as_pieces_and_match_a_model() {
    const BIG: u64 = 64 << 10;
    let (_tmp, path, store) = new_store(BIG);
    let ino = create_file(&store, ROOT_INO, "f");
    let mut rng = Rng::new(7);
    let mut model = pattern(1, 4 * BIG as usize);
    write_and_commit(&store, ino, 0, &model);
    let mut committed: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut draft = store.new_draft(ino).unwrap();
    for step in 0..1500 {
        match rng.below(12) {
            0..=8 => {
                // Mostly small writes near one another: slots fill with pieces and merge.
                let offset = rng.below(model.len() as u64 + 3000) as usize;
                let len = 1 + rng.below(3000) as usize;
                let data = if rng.below(8) == 0 { vec![0; len] } else { pattern(step, len) };
                draft.write(offset as u64, &data, store.chunks()).unwrap();
                if model.len() < offset + len {
                    model.resize(offset + len, 0);
                }
                model[offset..offset + len].copy_from_slice(&data);
            }
            9 if rng.below(8) == 0 => {
                let size = rng.below(5 * BIG) as usize;
                draft.truncate(size as u64, store.chunks()).unwrap();
                model.resize(size, 0);
            }
            _ => {
                let gen = store.commit(&mut draft).unwrap().gen;
                assert_eq!(content(&store, ino), model, "step {step}");
                committed.push((gen, model.clone()));
            }
        }
    }
    assert!(committed.len() > 100);
    assert!(most_pieces(&store, ino) <= 48, "a slot holds {} pieces", most_pieces(&store, ino));
    assert!(store.generations(ino).unwrap().iter().any(|(_, m)| !m.pieces.is_empty()));
    drop(draft);
    drop(store);
    let store = Store::open(&path).unwrap();
    for (gen, bytes) in &committed {
        assert_eq!(&generation_content(&store, ino, *gen), bytes, "generation {gen} after reopen");
    }
    assert!(store.check().unwrap().is_clean(), "{:?}", store.check().unwrap());
}

#[test]
fn an_append_stores_what_was_appended_not_the_chunk() {
    // The case: a 3.2 MB log appended to 200 times, 1 KiB each, in 1 MiB chunks.
    const MIB: u64 = 1 << 20;
    let (_tmp, path, store) = new_store(MIB);
    let ino = create_file(&store, ROOT_INO, "log");
    let mut model = pattern(1, 3_200_000);
    write_and_commit(&store, ino, 0, &model);
    let before = chunk_bytes(&path);
    for i in 0..200u64 {
        let line = pattern(100 + i, 1024);
        let at = model.len() as u64;
        let stored = chunk_bytes(&path);
        write_and_commit(&store, ino, at, &line);
        model.extend_from_slice(&line);
        // No append re-stores its chunk; a merge of small pieces now and then re-stores those.
        assert!(
            chunk_bytes(&path) - stored <= 128 << 10,
            "append {i} stored {}",
            chunk_bytes(&path) - stored
        );
    }
    let per_byte = (chunk_bytes(&path) - before) as f64 / (200 * 1024) as f64;
    eprintln!("200 appends of 1 KiB: {per_byte:.2} stored bytes per appended byte");
    assert!(per_byte <= 5.0, "{per_byte} stored bytes per appended byte");
    assert_eq!(content(&store, ino), model);
}

#[test]
fn a_small_edit_stores_a_piece_not_the_chunk() {
    const MIB: u64 = 1 << 20;
    let (_tmp, path, store) = new_store(MIB);
    let ino = create_file(&store, ROOT_INO, "big");
    let mut model = pattern(1, 4 * MIB as usize);
    write_and_commit(&store, ino, 0, &model);
    let before = chunk_bytes(&path);
    let mut rng = Rng::new(3);
    const EDITS: u64 = 300;
    let mut history = Vec::new();
    for i in 0..EDITS {
        let at = rng.below(4 * MIB - 4096) as usize;
        let edit = pattern(1000 + i, 4096);
        let gen = write_and_commit(&store, ino, at as u64, &edit);
        model[at..at + 4096].copy_from_slice(&edit);
        history.push((gen, model.clone()));
    }
    // 75 edits per chunk: pieces pile up past the bound and merge, and still cost about
    // what changed.
    let per_edit = (chunk_bytes(&path) - before) / EDITS;
    eprintln!("{EDITS} edits of 4 KiB in 4 MiB: {} KiB stored per edit", per_edit >> 10);
    assert!(per_edit <= 64 << 10, "{per_edit} bytes stored per 4 KiB edit");
    assert_eq!(content(&store, ino), model);
    for (gen, bytes) in history.iter().step_by(17) {
        assert_eq!(&generation_content(&store, ino, *gen), bytes, "generation {gen}");
    }
}

#[test]
fn writes_past_the_size_limit_are_efbig() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let mut draft = store.new_draft(ino).unwrap();
    assert_err!(draft.write(super::draft::FILE_BYTES_MAX, b"x", store.chunks()), StoreError::FileTooBig);
    assert_err!(draft.write(u64::MAX, b"x", store.chunks()), StoreError::FileTooBig);
    assert_err!(draft.truncate(super::draft::FILE_BYTES_MAX + 1, store.chunks()), StoreError::FileTooBig);
}

// ---------------------------------------------------------------------------------------------
// 2. Recovery
// ---------------------------------------------------------------------------------------------

/// Builds a tree with generations and every kind of namespace change. Returns the inode of a
/// file whose last name was replaced by a rename (nlink 0, history kept).
fn populate(store: &Store) -> Ino {
    let docs = mkdir(store, ROOT_INO, "docs");
    let f = create_file(store, docs, "f");
    for (i, v) in [&b"one"[..], b"two, longer", b"3"].iter().enumerate() {
        let mut draft = store.new_draft(f).unwrap();
        draft.truncate(0, store.chunks()).unwrap();
        draft.write(0, v, store.chunks()).unwrap();
        assert_eq!(store.commit(&mut draft).unwrap().gen, i as u64 + 1);
    }
    let g = create_file(store, ROOT_INO, "g");
    write_and_commit(store, g, 0, &pattern(9, 3 * CS as usize + 5));
    assert_eq!(store.rename(ROOT_INO, b"g", docs, b"f", RenameMode::Replace).unwrap(), Some(f));
    let h = create_file(store, ROOT_INO, "h");
    write_and_commit(store, h, 0, b"hard");
    store.link(h, docs, b"h2").unwrap();
    store.unlink(ROOT_INO, b"h").unwrap();
    symlink(store, ROOT_INO, "s", "docs/f");
    store.set_xattr(g, b"user.k", b"v", XattrMode::Create).unwrap();
    store.set_xattr(docs, b"user.d", b"dir", XattrMode::Any).unwrap();
    let perm = SetAttrs { perm: Some(0o700), ..SetAttrs::default() };
    store.set_attrs(docs, &perm).unwrap();
    mkdir(store, ROOT_INO, "empty");
    store.rmdir(ROOT_INO, b"empty").unwrap();
    let a = mkdir(store, ROOT_INO, "a");
    mkdir(store, a, "b");
    store.rename(a, b"b", docs, b"b", RenameMode::Replace).unwrap();
    create_file(store, a, "last");
    f
}

fn assert_populated(store: &Store, orphan: Ino) {
    let docs = lookup(store, ROOT_INO, "docs");
    assert_eq!(names(store, ROOT_INO), ["docs", "s", "a"]);
    assert_eq!(names(store, docs), ["f", "h2", "b"]);
    assert_eq!(content(store, lookup(store, docs, "f")), pattern(9, 3 * CS as usize + 5));
    assert_eq!(content(store, lookup(store, docs, "h2")), b"hard");
    let orphan_inode = store.inode(orphan).unwrap();
    assert_eq!((orphan_inode.nlink, orphan_inode.gen), (0, 3));
    assert_eq!(generation_content(store, orphan, 1), b"one");
    assert_eq!(content(store, orphan), b"3");
    assert_consistent(store);
}

#[test]
fn namespace_and_generations_survive_reopen() {
    let (_tmp, path, store) = new_store(CS);
    let orphan = populate(&store);
    assert_populated(&store, orphan);
    let before = describe(&store);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.recovery.replayed_records, 0, "drop checkpoints everything");
    assert_eq!(describe(&store), before);
    assert_populated(&store, orphan);
    let next = create_file(&store, ROOT_INO, "new");
    assert!(next > orphan);
}

#[test]
fn journal_replay_brings_a_stale_index_up_to_date() {
    let (tmp, _path, store) = new_store(CS);
    let saved_index = tmp.path().join("saved-index");
    save_index(&store, &saved_index);
    let orphan = populate(&store);
    let expected = describe(&store);
    let image = tmp.path().join("image");
    crash_image_with_index(&store, &image, &saved_index);
    let recovered = Store::open(&image).unwrap();
    assert!(recovered.recovery.replayed_records > 20, "{:?}", recovered.recovery);
    assert_eq!(recovered.recovery.truncated_journal_bytes, 0);
    assert_eq!(describe(&recovered), expected);
    assert_populated(&recovered, orphan);
}

#[test]
fn copy_of_an_open_store_after_sync_recovers_everything() {
    let (tmp, _path, store) = new_store(CS);
    store.checkpoint().unwrap();
    let orphan = populate(&store);
    let expected = describe(&store);
    let image = tmp.path().join("image");
    // The journal tail after the checkpoint meets an index that may hold some of it already.
    crash_image(&store, &image);
    let recovered = Store::open(&image).unwrap();
    let r = &recovered.recovery;
    assert!(r.replayed_records + r.skipped_records > 0, "{r:?}");
    assert_eq!(describe(&recovered), expected);
    assert_populated(&recovered, orphan);
    // Recovery checkpointed: the next open has nothing to replay.
    drop(recovered);
    let reopened = Store::open(&image).unwrap();
    assert_eq!(reopened.recovery.replayed_records, 0);
    assert_eq!(describe(&reopened), expected);
}

#[test]
fn open_removes_abandoned_staging_files() {
    let (tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"committed");
    let mut draft = store.new_draft(ino).unwrap();
    draft.write(0, &pattern(1, 2 * CS as usize), store.chunks()).unwrap();
    let image = tmp.path().join("image");
    crash_image(&store, &image);
    assert_eq!(staging_files(&image), 2);
    let recovered = Store::open(&image).unwrap();
    assert_eq!(recovered.recovery.removed_staging_files, 2);
    assert_eq!(staging_files(&image), 0);
    assert_eq!(content(&recovered, ino), b"committed");
}

#[test]
fn namespace_after_a_crash_is_a_prefix_even_if_sled_wrote_ahead() {
    let (tmp, path, store) = new_store(CS);
    create_file(&store, ROOT_INO, "a");
    store.sync().unwrap();
    let durable = describe(&store);
    let segment = only_segment(&path.join("journal"));
    let durable_len = std::fs::metadata(&segment).unwrap().len();
    create_file(&store, ROOT_INO, "b");
    mkdir(&store, ROOT_INO, "d");
    // sled writes its state out by itself (every 500 ms by default, and when buffers fill).
    store.index.flush().unwrap();
    let ahead = describe(&store);
    let image = tmp.path().join("image");
    copy_dir(&path, &image);
    // The crash loses the journal tail that was never synced.
    let image_segment = image.join("journal").join(segment.file_name().unwrap());
    File::options().write(true).open(image_segment).unwrap().set_len(durable_len).unwrap();
    let recovered = Store::open(&image).unwrap();
    // Either prefix is allowed: the durable one, or the one sled wrote ahead (this one).
    assert_ne!(describe(&recovered), durable);
    assert_eq!(names(&recovered, ROOT_INO), ["a", "b", "d"]);
    assert_consistent(&recovered);
    assert_eq!(describe(&recovered), ahead);
    // Numbering resumed above what the index holds: a new change survives another reopen.
    create_file(&recovered, ROOT_INO, "e");
    drop(recovered);
    let reopened = Store::open(&image).unwrap();
    assert_eq!(names(&reopened, ROOT_INO), ["a", "b", "d", "e"]);
    assert_consistent(&reopened);
}

#[test]
fn a_reused_inode_number_has_no_xattrs_of_its_previous_owner() {
    let (_tmp, path, store) = new_store(CS);
    let dir = mkdir(&store, ROOT_INO, "d");
    store.set_xattr(dir, b"user.secret", b"old owner", XattrMode::Create).unwrap();
    store.rmdir(ROOT_INO, b"d").unwrap();
    let link = symlink(&store, ROOT_INO, "s", "target");
    store.set_xattr(link, b"user.secret", b"old owner", XattrMode::Create).unwrap();
    store.unlink(ROOT_INO, b"s").unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    for name in ["x", "y"] {
        let ino = create_file(&store, ROOT_INO, name);
        let inherited = store.xattr_names(ino).unwrap();
        assert!(inherited.is_empty(), "{name} (inode {ino}) has {inherited:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Dedup
// ---------------------------------------------------------------------------------------------

#[test]
fn identical_content_shares_chunk_files() {
    let (_tmp, path, store) = new_store(CS);
    let data = pattern(7, 3 * CS as usize);
    let a = create_file(&store, ROOT_INO, "a");
    let b = create_file(&store, ROOT_INO, "b");
    write_and_commit(&store, a, 0, &data);
    write_and_commit(&store, b, 0, &data);
    assert_eq!(chunk_files(&path), 3);
    let (_, ma) = store.current_generation(a).unwrap();
    let (_, mb) = store.current_generation(b).unwrap();
    assert_eq!(ma.digest(), mb.digest());
    for chunk in ma.chunks.values() {
        assert_eq!(store.index.chunk_refs(&chunk.hash).unwrap(), 2);
    }
    assert_eq!(content(&store, b), data);
}

#[test]
fn a_new_generation_shares_unchanged_chunks() {
    let (_tmp, path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, &pattern(8, 3 * CS as usize));
    write_and_commit(&store, ino, CS + 10, b"edit");
    assert_eq!(chunk_files(&path), 4);
    let (one, two) = (store.generation(ino, 1).unwrap(), store.generation(ino, 2).unwrap());
    assert_eq!(one.chunks[&0], two.chunks[&0]);
    assert_eq!(one.chunks[&2], two.chunks[&2]);
    // The edited slot keeps its stored bytes around the edit, and stores only the edit.
    assert!(!two.chunks.contains_key(&1));
    let pieces = &two.pieces[&1];
    let layout: Vec<(u32, u32, u32)> = pieces.iter().map(|p| (p.at, p.len, p.within)).collect();
    assert_eq!(layout, [(0, 10, 0), (10, 4, 0), (14, CS as u32 - 14, 14)]);
    assert_eq!((pieces[0].chunk, pieces[2].chunk), (one.chunks[&1], one.chunks[&1]));
    assert_eq!(pieces[1].chunk.len, 4);
    assert_eq!(store.index.chunk_refs(&one.chunks[&1].hash).unwrap(), 3);
}

// ---------------------------------------------------------------------------------------------
// 4. Namespace: rename, links, readdir
// ---------------------------------------------------------------------------------------------

#[test]
fn rename_over_a_file_replaces_it_and_keeps_its_history() {
    let (_tmp, _path, store) = new_store(CS);
    let old = create_file(&store, ROOT_INO, "target");
    write_and_commit(&store, old, 0, b"old");
    let new = create_file(&store, ROOT_INO, "tmp");
    write_and_commit(&store, new, 0, b"new");
    let replaced = store.rename(ROOT_INO, b"tmp", ROOT_INO, b"target", RenameMode::Replace);
    assert_eq!(replaced.unwrap(), Some(old));
    assert_eq!(names(&store, ROOT_INO), ["target"]);
    assert_eq!(lookup(&store, ROOT_INO, "target"), new);
    assert_eq!(content(&store, new), b"new");
    assert_eq!(store.inode(old).unwrap().nlink, 0);
    assert_eq!(content(&store, old), b"old");
    assert_consistent(&store);
}

#[test]
fn rename_noreplace_onto_an_existing_name_is_exists() {
    let (_tmp, _path, store) = new_store(CS);
    let a = create_file(&store, ROOT_INO, "a");
    let b = create_file(&store, ROOT_INO, "b");
    assert_err!(store.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::NoReplace), StoreError::Exists);
    assert_eq!((lookup(&store, ROOT_INO, "a"), lookup(&store, ROOT_INO, "b")), (a, b));
    store.rename(ROOT_INO, b"a", ROOT_INO, b"c", RenameMode::NoReplace).unwrap();
    assert_eq!(lookup(&store, ROOT_INO, "c"), a);
}

#[test]
fn rename_exchange_swaps_two_names() {
    let (_tmp, _path, store) = new_store(CS);
    let a = create_file(&store, ROOT_INO, "a");
    let b = create_file(&store, ROOT_INO, "b");
    store.rename(ROOT_INO, b"a", ROOT_INO, b"b", RenameMode::Exchange).unwrap();
    assert_eq!((lookup(&store, ROOT_INO, "a"), lookup(&store, ROOT_INO, "b")), (b, a));
    assert_consistent(&store);
    // Across directories, a directory and a file: link counts of both parents follow.
    let p1 = mkdir(&store, ROOT_INO, "p1");
    let p2 = mkdir(&store, ROOT_INO, "p2");
    let sub = mkdir(&store, p1, "sub");
    let file = create_file(&store, p2, "file");
    store.rename(p1, b"sub", p2, b"file", RenameMode::Exchange).unwrap();
    assert_eq!((lookup(&store, p1, "sub"), lookup(&store, p2, "file")), (file, sub));
    assert_eq!((store.inode(p1).unwrap().nlink, store.inode(p2).unwrap().nlink), (2, 3));
    assert_eq!(store.parent_of(sub).unwrap(), p2);
    assert_consistent(&store);
    let missing = store.rename(ROOT_INO, b"a", ROOT_INO, b"nope", RenameMode::Exchange);
    assert_err!(missing, StoreError::NotFound);
}

#[test]
fn rename_type_and_emptiness_rules() {
    let (_tmp, _path, store) = new_store(CS);
    let dir = mkdir(&store, ROOT_INO, "dir");
    let full = mkdir(&store, ROOT_INO, "full");
    create_file(&store, full, "x");
    mkdir(&store, ROOT_INO, "empty");
    create_file(&store, ROOT_INO, "file");
    let r = |from: &[u8], to: &[u8]| store.rename(ROOT_INO, from, ROOT_INO, to, RenameMode::Replace);
    assert_err!(r(b"dir", b"full"), StoreError::NotEmpty);
    assert_err!(r(b"file", b"dir"), StoreError::IsDir);
    assert_err!(r(b"dir", b"file"), StoreError::NotDir);
    assert_err!(r(b"missing", b"file"), StoreError::NotFound);
    assert_err!(r(b"file", b"a/b"), StoreError::InvalidName);
    let empty = lookup(&store, ROOT_INO, "empty");
    assert_eq!(r(b"dir", b"empty").unwrap(), Some(empty));
    // Kept without a name, for time travel and snapshots.
    assert_eq!(store.inode(empty).unwrap().nlink, 0);
    assert_eq!(lookup(&store, ROOT_INO, "empty"), dir);
    assert_eq!(store.inode(ROOT_INO).unwrap().nlink, 4);
    assert_consistent(&store);
}

#[test]
fn directory_nlink_counts_subdirectories() {
    let (_tmp, _path, store) = new_store(CS);
    let nlink = |ino| store.inode(ino).unwrap().nlink;
    assert_eq!(nlink(ROOT_INO), 2);
    let a = mkdir(&store, ROOT_INO, "a");
    let b = mkdir(&store, ROOT_INO, "b");
    create_file(&store, a, "file");
    mkdir(&store, a, "x");
    mkdir(&store, a, "y");
    assert_eq!((nlink(ROOT_INO), nlink(a), nlink(b)), (4, 4, 2));
    store.rename(a, b"x", b, b"x", RenameMode::Replace).unwrap();
    assert_eq!((nlink(a), nlink(b)), (3, 3));
    // A directory replacing an empty directory in another parent.
    mkdir(&store, b, "target");
    assert_eq!(nlink(b), 4);
    store.rename(a, b"y", b, b"target", RenameMode::Replace).unwrap();
    assert_eq!((nlink(a), nlink(b)), (2, 4));
    // ... and in the same parent.
    store.rename(b, b"target", b, b"x", RenameMode::Replace).unwrap();
    assert_eq!(nlink(b), 3);
    store.rmdir(b, b"x").unwrap();
    assert_eq!(nlink(b), 2);
    assert_err!(store.rmdir(ROOT_INO, b"a"), StoreError::NotEmpty);
    assert_err!(store.rmdir(a, b"file"), StoreError::NotDir);
    store.unlink(a, b"file").unwrap();
    store.rmdir(ROOT_INO, b"a").unwrap();
    assert_eq!(nlink(ROOT_INO), 3);
    assert_consistent(&store);
}

#[test]
fn hard_links_share_an_inode_and_count_names() {
    let (_tmp, _path, store) = new_store(CS);
    let dir = mkdir(&store, ROOT_INO, "dir");
    let f = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, f, 0, b"shared");
    assert_eq!(store.link(f, dir, b"g").unwrap().nlink, 2);
    assert_err!(store.link(f, dir, b"g"), StoreError::Exists);
    assert_err!(store.link(dir, ROOT_INO, b"dirlink"), StoreError::NotPermitted);
    assert_err!(store.unlink(ROOT_INO, b"dir"), StoreError::IsDir);
    store.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(store.inode(f).unwrap().nlink, 1);
    assert_eq!(content(&store, lookup(&store, dir, "g")), b"shared");
    assert_eq!(store.names_of(f).unwrap(), [(dir, b"g".to_vec())]);
    assert_consistent(&store);
}

#[test]
fn readdir_cookies_stay_valid_across_changes() {
    let (_tmp, _path, store) = new_store(CS);
    for i in 0..10 {
        create_file(&store, ROOT_INO, &format!("e{i}"));
    }
    let first = store.readdir(ROOT_INO, 0, 4).unwrap();
    let mut seen: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    assert_eq!(seen, [b"e0", b"e1", b"e2", b"e3"]);
    // Between two readdir calls: remove a listed entry (the last one returned, whose cookie
    // the caller holds), remove an unlisted one, add one, rename an unlisted one.
    store.unlink(ROOT_INO, b"e3").unwrap();
    store.unlink(ROOT_INO, b"e1").unwrap();
    store.unlink(ROOT_INO, b"e5").unwrap();
    create_file(&store, ROOT_INO, "new");
    store.rename(ROOT_INO, b"e7", ROOT_INO, b"e7b", RenameMode::Replace).unwrap();
    let mut after = first.last().unwrap().cookie;
    loop {
        let page = store.readdir(ROOT_INO, after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = last.cookie;
        seen.extend(page.into_iter().map(|e| e.name));
    }
    let unique: BTreeSet<&Vec<u8>> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an entry was returned twice");
    for name in ["e4", "e6", "e8", "e9", "new", "e7b"] {
        assert!(seen.contains(&name.as_bytes().to_vec()), "{name} missing");
    }
    assert!(!seen.contains(&b"e5".to_vec()));
}

#[test]
fn names_are_validated() {
    let (_tmp, _path, store) = new_store(CS);
    let file = node(Kind::File, b"");
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_err!(store.create(ROOT_INO, bad, &file), StoreError::InvalidName);
    }
    assert_err!(store.create(ROOT_INO, &[b'n'; 256], &file), StoreError::NameTooLong);
    store.create(ROOT_INO, &[b'n'; 255], &file).unwrap();
    assert_err!(store.create(ROOT_INO, &[b'n'; 255], &file), StoreError::Exists);
}

#[test]
fn xattrs_follow_create_and_replace_rules() {
    let (_tmp, path, store) = new_store(CS);
    let f = create_file(&store, ROOT_INO, "f");
    assert_err!(store.xattr(f, b"user.a"), StoreError::NoAttribute);
    assert_err!(store.set_xattr(f, b"user.a", b"1", XattrMode::Replace), StoreError::NoAttribute);
    store.set_xattr(f, b"user.a", b"1", XattrMode::Create).unwrap();
    assert_err!(store.set_xattr(f, b"user.a", b"2", XattrMode::Create), StoreError::Exists);
    store.set_xattr(f, b"user.a", b"2", XattrMode::Replace).unwrap();
    store.set_xattr(f, b"user.b", b"", XattrMode::Any).unwrap();
    assert_eq!(store.xattr_names(f).unwrap(), [b"user.a".to_vec(), b"user.b".to_vec()]);
    store.remove_xattr(f, b"user.b").unwrap();
    assert_err!(store.remove_xattr(f, b"user.b"), StoreError::NoAttribute);
    let big = vec![0; super::XATTR_VALUE_BYTES_MAX + 1];
    assert_err!(store.set_xattr(f, b"user.big", &big, XattrMode::Any), StoreError::AttributeTooBig);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.xattr(f, b"user.a").unwrap(), b"2");
    assert_eq!(store.xattr_names(f).unwrap(), [b"user.a".to_vec()]);
}

#[test]
fn concurrent_commits_and_namespace_ops_survive_reopen() {
    let (_tmp, path, store) = new_store(CS);
    const THREADS: u64 = 6;
    const ROUNDS: u64 = 12;
    // Each write to `shared` is a draft of its own, and a draft commits whole (the daemon gives
    // all writers of a file one draft): those drafts take turns, so that none starts from a
    // generation another is replacing. Commits of different files and namespace changes race.
    let shared_turn = Mutex::new(());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = &store;
            let shared_turn = &shared_turn;
            s.spawn(move || {
                let dir = mkdir(store, ROOT_INO, &format!("t{t}"));
                let shared = lookup_or_create(store, "shared");
                let own = create_file(store, dir, "own");
                for i in 0..ROUNDS {
                    write_and_commit(store, own, 0, &pattern(t * 100 + i, (i * 1000) as usize));
                    let turn = shared_turn.lock();
                    write_and_commit(store, shared, t * CS, &pattern(t, 100));
                    drop(turn);
                    create_file(store, dir, &format!("n{i}"));
                }
            });
        }
    });
    assert_consistent(&store);
    for t in 0..THREADS {
        let own = lookup(&store, lookup(&store, ROOT_INO, &format!("t{t}")), "own");
        assert_eq!(current_gen(&store, own), ROUNDS);
        assert_eq!(content(&store, own), pattern(t * 100 + ROUNDS - 1, ((ROUNDS - 1) * 1000) as usize));
    }
    let shared = lookup(&store, ROOT_INO, "shared");
    assert_eq!(current_gen(&store, shared), THREADS * ROUNDS);
    let bytes = content(&store, shared);
    for t in 0..THREADS {
        assert_eq!(&bytes[(t * CS) as usize..][..100], pattern(t, 100), "thread {t}");
    }
    let before = describe(&store);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(describe(&store), before);
}

/// Races with other threads calling it: exactly one creates the file.
fn lookup_or_create(store: &Store, name: &str) -> Ino {
    match store.create(ROOT_INO, name.as_bytes(), &node(Kind::File, b"")) {
        Ok((ino, _)) => ino,
        Err(StoreError::Exists) => lookup(store, ROOT_INO, name),
        Err(e) => panic!("create {name}: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Fault injection (G5)
// ---------------------------------------------------------------------------------------------

/// One call through [`StoreIo`], with the path it touched.
#[derive(Debug, Clone)]
struct Call {
    op: &'static str,
    path: PathBuf,
    to: Option<PathBuf>,
}

impl Call {
    fn under(&self, dir: &str) -> bool {
        self.path.components().any(|c| c.as_os_str() == dir)
    }

    fn is_journal(&self) -> bool {
        self.under("journal")
    }
}

/// A pass-through [`StoreIo`] that records every call, so a fault index can be named.
#[derive(Default)]
struct TraceIo {
    calls: Mutex<Vec<Call>>,
}

impl TraceIo {
    fn note(&self, op: &'static str, path: &Path, to: Option<&Path>) {
        let call = Call { op, path: path.to_path_buf(), to: to.map(Path::to_path_buf) };
        self.calls.lock().push(call);
    }

    fn note_file(&self, op: &'static str, file: &File) {
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        self.note(op, &std::fs::read_link(fd_path).unwrap_or_default(), None);
    }

    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock())
    }
}

impl StoreIo for TraceIo {
    fn create_new(&self, path: &Path, mode: u32) -> std::io::Result<File> {
        self.note("create_new", path, None);
        RealIo.create_new(path, mode)
    }
    fn open_rw(&self, path: &Path) -> std::io::Result<File> {
        self.note("open_rw", path, None);
        RealIo.open_rw(path)
    }
    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.note_file("write_all_at", file);
        RealIo.write_all_at(file, buf, offset)
    }
    fn set_len(&self, file: &File, len: u64) -> std::io::Result<()> {
        self.note_file("set_len", file);
        RealIo.set_len(file, len)
    }
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        self.note_file("sync_data", file);
        RealIo.sync_data(file)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.note("sync_dir", dir, None);
        RealIo.sync_dir(dir)
    }
    fn link(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.note("link", from, Some(to));
        RealIo.link(from, to)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.note("rename", from, Some(to));
        RealIo.rename(from, to)
    }
    fn unlink(&self, path: &Path) -> std::io::Result<()> {
        self.note("unlink", path, None);
        RealIo.unlink(path)
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        self.note("create_dir", path, None);
        RealIo.create_dir(path)
    }
}

/// A store opened through `FaultyIo(TraceIo(RealIo))` holding file `f` at generation 1.
struct FaultCase {
    store: Store,
    faulty: Arc<FaultyIo>,
    trace: Arc<TraceIo>,
    ino: Ino,
    path: PathBuf,
    _tmp: TempDir,
}

fn gen1_bytes() -> Vec<u8> {
    pattern(100, 3 * CS as usize)
}

/// Generation 1 with 10 bytes changed in each of its 3 chunks.
fn gen2_bytes() -> Vec<u8> {
    let mut bytes = gen1_bytes();
    for i in 0..3 {
        let at = (i * CS + 500) as usize;
        bytes[at..at + 10].copy_from_slice(&pattern(200 + i, 10));
    }
    bytes
}

fn fault_case(errno: i32) -> FaultCase {
    let (tmp, path) = mkfs(CS);
    let trace = Arc::new(TraceIo::default());
    let faulty = Arc::new(FaultyIo::new(trace.clone(), errno, false));
    let store = Store::open_with_io(&path, faulty.clone()).unwrap();
    let ino = create_file(&store, ROOT_INO, "f");
    assert_eq!(write_and_commit(&store, ino, 0, &gen1_bytes()), 1);
    FaultCase { store, faulty, trace, ino, path, _tmp: tmp }
}

/// A draft that touches all 3 chunks of generation 1, making it `gen2_bytes()`.
fn three_chunk_draft(case: &FaultCase) -> Draft {
    let mut draft = case.store.new_draft(case.ino).unwrap();
    for i in 0..3 {
        draft.write(i * CS + 500, &pattern(200 + i, 10), case.store.chunks()).unwrap();
    }
    draft
}

/// The I/O calls a successful commit of [`three_chunk_draft`] makes, in order.
fn commit_calls() -> Vec<Call> {
    let case = fault_case(libc::EIO);
    let mut draft = three_chunk_draft(&case);
    case.trace.take();
    let before = case.faulty.calls();
    case.store.commit(&mut draft).unwrap();
    let calls = case.trace.take();
    assert_eq!(case.faulty.calls() - before, calls.len() as u64, "{calls:#?}");
    assert_eq!(content(&case.store, case.ino), gen2_bytes());
    calls
}

/// Removing a chunk's staging name after it is linked into `chunks/` is best-effort cleanup
/// (whatever is left is removed at the next open): its failure does not fail the commit.
fn is_staging_cleanup(call: &Call) -> bool {
    call.op == "unlink" && call.under("staging")
}

fn assert_still_generation_one(store: &Store, ino: Ino, context: &str) {
    assert_eq!(current_gen(store, ino), 1, "{context}");
    assert_eq!(content(store, ino), gen1_bytes(), "{context}");
    assert_eq!(store.inode(ino).unwrap().size, gen1_bytes().len() as u64, "{context}");
    assert_eq!(store.generations(ino).unwrap().len(), 1, "{context}");
}

#[test]
fn commit_syncs_data_then_directories_then_journal() {
    let calls = commit_calls();
    let pos = |pred: &dyn Fn(&Call) -> bool| calls.iter().position(pred).unwrap();
    let journal_write = pos(&|c| c.is_journal() && c.op == "write_all_at");
    let journal_sync = pos(&|c| c.is_journal() && c.op == "sync_data");
    assert_eq!(journal_sync, journal_write + 1);
    assert_eq!(journal_sync, calls.len() - 1, "{calls:#?}");
    let mut linked_dirs = BTreeSet::new();
    for (i, call) in calls.iter().enumerate().filter(|(_, c)| c.op == "link") {
        let synced_before = calls[..i].iter().any(|c| c.op == "sync_data" && c.path == call.path);
        assert!(synced_before, "chunk linked before its data was synced: {calls:#?}");
        linked_dirs.insert(call.to.as_ref().unwrap().parent().unwrap().to_path_buf());
    }
    assert_eq!(calls.iter().filter(|c| c.op == "link").count(), 3, "{calls:#?}");
    let synced_dirs: BTreeSet<PathBuf> =
        calls[..journal_write].iter().filter(|c| c.op == "sync_dir").map(|c| c.path.clone()).collect();
    assert_eq!(synced_dirs, linked_dirs, "every chunk directory that gained an entry is synced");
    let last_link = calls.iter().rposition(|c| c.op == "link").unwrap();
    let first_dir_sync = pos(&|c| c.op == "sync_dir");
    assert!(last_link < first_dir_sync && first_dir_sync < journal_write, "{calls:#?}");
}

fn failed_commit_keeps_the_previous_generation(errno: i32) {
    let calls = commit_calls();
    assert!(calls.len() >= 3 * 3 + 1 + 2, "{calls:#?}");
    for (i, call) in calls.iter().enumerate() {
        let k = i as u64 + 1;
        let context = format!("fault at call {k} of {} ({call:?})", calls.len());
        let case = fault_case(errno);
        let mut draft = three_chunk_draft(&case);
        case.faulty.fail_after(k);
        let result = case.store.commit(&mut draft);
        case.faulty.disarm();
        if is_staging_cleanup(call) {
            assert!(result.is_ok(), "{context}");
            assert_eq!(content(&case.store, case.ino), gen2_bytes(), "{context}");
            continue;
        }
        let err = match result {
            Ok(_) => panic!("{context}: commit succeeded"),
            Err(e) => e,
        };
        assert_eq!(err.errno(), errno, "{context}: {err}");
        assert_still_generation_one(&case.store, case.ino, &context);
        assert!(draft.failed, "{context}");
        assert!(case.store.commit(&mut draft).is_err(), "{context}: failed draft recommitted");
        assert_still_generation_one(&case.store, case.ino, &context);
        if call.is_journal() {
            let ro = case.store.check_writable().err();
            assert_eq!(ro.map(|e| e.errno()), Some(libc::EROFS), "{context}");
            let create = case.store.create(ROOT_INO, b"after", &node(Kind::File, b""));
            assert_eq!(create.err().map(|e| e.errno()), Some(libc::EROFS), "{context}");
            let mut next = case.store.new_draft(case.ino).unwrap();
            next.write(0, b"retry", case.store.chunks()).unwrap();
            assert_eq!(case.store.commit(&mut next).err().map(|e| e.errno()), Some(libc::EROFS));
        } else {
            case.store.check_writable().unwrap();
            create_file(&case.store, ROOT_INO, "after");
        }
        let FaultCase { store, ino, path, _tmp, .. } = case;
        drop(draft);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(generation_content(&store, ino, 1), gen1_bytes(), "{context}");
        // A failed journal fdatasync is covered by
        // `commit_whose_journal_sync_failed_is_not_published_after_reopen` (a known bug).
        if !(call.is_journal() && call.op == "sync_data") {
            assert_still_generation_one(&store, ino, &format!("{context}, after reopen"));
        }
        store.check_writable().unwrap();
        write_and_commit(&store, ino, 0, b"after reopen");
        assert!(content(&store, ino).starts_with(b"after reopen"), "{context}");
    }
}

#[test]
fn failed_commit_keeps_the_previous_generation_eio() {
    failed_commit_keeps_the_previous_generation(libc::EIO);
}

#[test]
fn failed_commit_keeps_the_previous_generation_enospc() {
    failed_commit_keeps_the_previous_generation(libc::ENOSPC);
}

#[test]
fn a_new_draft_commits_after_a_transient_chunk_failure() {
    let calls = commit_calls();
    let chunk_dir_sync = calls.iter().position(|c| c.op == "sync_dir").unwrap() as u64 + 1;
    let case = fault_case(libc::EIO);
    let mut draft = three_chunk_draft(&case);
    case.faulty.fail_after(chunk_dir_sync);
    assert!(case.store.commit(&mut draft).is_err());
    let mut retry = three_chunk_draft(&case);
    assert_eq!(case.store.commit(&mut retry).unwrap().gen, 2);
    assert_eq!(content(&case.store, case.ino), gen2_bytes());
}

#[test]
fn commit_whose_journal_sync_failed_is_not_published_after_reopen() {
    let calls = commit_calls();
    let k = calls.iter().position(|c| c.is_journal() && c.op == "sync_data").unwrap() + 1;
    let case = fault_case(libc::EIO);
    let mut draft = three_chunk_draft(&case);
    case.faulty.fail_after(k as u64);
    assert!(case.store.commit(&mut draft).is_err());
    assert_still_generation_one(&case.store, case.ino, "before reopen");
    let FaultCase { store, ino, path, _tmp, .. } = case;
    drop(draft);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_still_generation_one(&store, ino, "after reopen");
}

/// Time travel to before a file's first generation shows it empty, also after gc dropped that
/// generation (found by the model test once gc joined its workload).
#[test]
fn time_travel_before_a_dropped_first_generation_shows_the_file_empty() {
    let (_tmp, _path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    let empty_then = store.last_seq();
    write_and_commit(&store, ino, 0, b"one");
    write_and_commit(&store, ino, 0, b"two");
    store.set_retention(ROOT_INO, Some("keep-last=1"), 0).unwrap();
    store.gc(&Pinned::default(), false).unwrap();
    assert_eq!(store.generations(ino).unwrap().len(), 1);
    let (gen, manifest) = store.generation_at(ino, empty_then).unwrap();
    assert_eq!((gen, manifest.size), (0, 0));
    let after_first = store.generations(ino).unwrap()[0].1.seq - 1;
    assert_err!(store.generation_at(ino, after_first), StoreError::NotFound);
}

/// An index update that fails after the commit record is durable (issue 11): the commit
/// reports the error, the previous generation stays current, the store turns read-only, and a
/// remount does not publish the failed commit. Likewise for a namespace change.
#[test]
fn an_index_update_that_fails_after_the_durable_point_is_never_published() {
    let (_tmp, path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"one");
    let mut draft = store.new_draft(ino).unwrap();
    draft.write(0, b"two", store.chunks()).unwrap();
    super::commit::sabotage::FAIL_INDEX_APPLY.with(|f| f.set(true));
    assert!(store.commit(&mut draft).is_err(), "a commit whose index update failed reported success");
    assert_eq!(content(&store, ino), b"one");
    assert_err!(store.check_writable(), StoreError::ReadOnlyAfterIoFailure);
    drop(draft);
    // The failed record is durable: make sure by syncing what the journal holds.
    store.sync().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(content(&store, ino), b"one", "a failed commit was published after the remount");
    assert_eq!(store.generations(ino).unwrap().len(), 1);

    super::commit::sabotage::FAIL_INDEX_APPLY.with(|f| f.set(true));
    assert!(store.create(ROOT_INO, b"new", &node(Kind::File, b"")).is_err());
    store.sync().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_err!(store.lookup(ROOT_INO, b"new"), StoreError::NotFound);
    write_and_commit(&store, ino, 0, b"three");
    assert_eq!(store.check().unwrap().problems, Vec::<String>::new());
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(content(&store, ino), b"three");
}

#[test]
fn failed_commit_leaves_no_staging_files() {
    let calls = commit_calls();
    for (i, call) in calls.iter().enumerate() {
        if !call.under("staging") || is_staging_cleanup(call) {
            continue;
        }
        let case = fault_case(libc::ENOSPC);
        let mut draft = three_chunk_draft(&case);
        case.faulty.fail_after(i as u64 + 1);
        assert!(case.store.commit(&mut draft).is_err());
        drop(draft);
        assert_eq!(staging_files(&case.path), 0, "fault at {call:?}");
    }
}

#[test]
fn failed_namespace_append_makes_the_store_read_only() {
    let case = fault_case(libc::EIO);
    case.faulty.fail_after(1);
    let err = case.store.create(ROOT_INO, b"x", &node(Kind::File, b"")).err().unwrap();
    assert_eq!(err.errno(), libc::EIO);
    assert_err!(case.store.lookup(ROOT_INO, b"x"), StoreError::NotFound);
    assert_err!(case.store.check_writable(), StoreError::ReadOnlyAfterIoFailure);
    assert_err!(case.store.unlink(ROOT_INO, b"f"), StoreError::ReadOnlyAfterIoFailure);
    assert_eq!(content(&case.store, case.ino), gen1_bytes(), "reads still work");
    let FaultCase { store, path, ino, _tmp, .. } = case;
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_err!(store.lookup(ROOT_INO, b"x"), StoreError::NotFound);
    assert_eq!(content(&store, ino), gen1_bytes());
    create_file(&store, ROOT_INO, "x");
}

#[test]
fn failed_journal_sync_makes_the_store_read_only() {
    let case = fault_case(libc::ENOSPC);
    create_file(&case.store, ROOT_INO, "x");
    case.faulty.fail_after(1);
    assert_eq!(case.store.sync().err().map(|e| e.errno()), Some(libc::ENOSPC));
    // A retry must not report success: the kernel may have dropped the dirty pages.
    case.faulty.disarm();
    assert!(case.store.sync().is_err());
    assert_err!(case.store.check_writable(), StoreError::ReadOnlyAfterIoFailure);
    let FaultCase { store, path, _tmp, .. } = case;
    drop(store);
    let store = Store::open(&path).unwrap();
    store.check_writable().unwrap();
    create_file(&store, ROOT_INO, "y");
}

// ---------------------------------------------------------------------------------------------
// 6. Journal
// ---------------------------------------------------------------------------------------------

fn marker(i: u8) -> Vec<Op> {
    vec![Op::PutXattr { ino: ROOT_INO, name: b"user.marker".to_vec(), value: vec![i] }]
}

#[test]
fn corrupt_frame_in_the_last_segment_cuts_the_tail() {
    // Damage in the payload, the length field and the checksum of the 4th of 6 frames.
    for (what, at) in [("payload", 12), ("length", 3), ("checksum", 5)] {
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn StoreIo> = Arc::new(RealIo);
        Journal::create(dir.path(), io.as_ref()).unwrap();
        let (journal, _) = Journal::open(dir.path(), io.clone()).unwrap();
        let records: Vec<Record> = (0..6).map(|i| journal.append(|_| marker(i)).unwrap()).collect();
        journal.sync_all().unwrap();
        drop(journal);
        let segment = only_segment(dir.path());
        let total = std::fs::metadata(&segment).unwrap().len();
        let cut: usize = records[..3].iter().map(|r| encode_frame(r).unwrap().len()).sum();
        flip_byte(&segment, cut + at);
        let (journal, replay) = Journal::open(dir.path(), io.clone()).unwrap();
        assert_eq!(replay.records, records[..3], "{what}: replayed in order");
        assert_eq!(replay.truncated_bytes, total - cut as u64, "{what}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), cut as u64, "{what}");
        let next = journal.append(|_| marker(99)).unwrap();
        assert_eq!(next.seq, 4, "{what}: numbering continues after the valid prefix");
        journal.sync_all().unwrap();
        drop(journal);
        let (_, replay) = Journal::open(dir.path(), io).unwrap();
        let seqs: Vec<u64> = replay.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4], "{what}");
        assert_eq!(replay.records[3], next);
        assert_eq!(replay.truncated_bytes, 0);
    }
}

#[test]
fn store_replay_stops_at_a_corrupt_record_and_keeps_a_prefix() {
    let (tmp, _path, store) = new_store(CS);
    let saved_index = tmp.path().join("saved-index");
    save_index(&store, &saved_index);
    create_file(&store, ROOT_INO, "a");
    create_file(&store, ROOT_INO, "b");
    mkdir(&store, ROOT_INO, "c");
    let image = tmp.path().join("image");
    crash_image_with_index(&store, &image, &saved_index);
    let segment = only_segment(&image.join("journal"));
    let (offset, len, _) = frames(&segment).into_iter().find(|(_, _, r)| creates_name(r, b"b")).unwrap();
    flip_byte(&segment, offset + len / 2);
    let recovered = Store::open(&image).unwrap();
    assert_eq!(recovered.recovery.replayed_records, 1, "{:?}", recovered.recovery);
    assert!(recovered.recovery.truncated_journal_bytes > 0);
    assert_eq!(names(&recovered, ROOT_INO), ["a"]);
    assert_consistent(&recovered);
    create_file(&recovered, ROOT_INO, "d");
    assert_eq!(names(&recovered, ROOT_INO), ["a", "d"]);
}

#[test]
fn damaged_checkpointed_record_never_loses_later_commits() {
    let (tmp, path, store) = new_store(CS);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"one");
    drop(store);
    // Media damage under a record the checkpoint already covers.
    let segment = only_segment(&path.join("journal"));
    let (offset, len, record) = frames(&segment).swap_remove(1);
    assert!(creates_name(&record, b"f"));
    flip_byte(&segment, offset + len / 2);
    let store = match Store::open(&path) {
        Err(e) => {
            // Refusing to open is a fine answer too.
            assert!(matches!(e, StoreError::Corrupted(_)), "{e:?}");
            return;
        }
        Ok(store) => store,
    };
    // Nothing was replayed, so nothing was checkpointed: the index is the one flushed at the
    // last drop. A crash before the next checkpoint leaves exactly this index behind.
    assert_eq!(store.recovery.replayed_records, 0);
    let saved_index = tmp.path().join("saved-index");
    copy_dir(&path.join("index"), &saved_index);
    let gen1_seq = store.generation(ino, 1).unwrap().seq;
    write_and_commit(&store, ino, 0, b"two");
    let image = tmp.path().join("image");
    crash_image_with_index(&store, &image, &saved_index);
    let recovered = Store::open(&image).unwrap();
    assert_eq!(content(&recovered, ino), b"two", "an acknowledged commit was lost");
    let gen2_seq = store.generation(ino, 2).unwrap().seq;
    assert!(gen2_seq > gen1_seq, "sequence number {gen2_seq} reused");
}

// ---------------------------------------------------------------------------------------------
// 7. Lock
// ---------------------------------------------------------------------------------------------

#[test]
fn a_store_in_use_cannot_be_opened_twice() {
    let (_tmp, path, store) = new_store(CS);
    let err = open_err(&path);
    let message = err.to_string();
    assert!(message.contains("in use"), "{message}");
    assert!(message.contains(&std::process::id().to_string()), "{message}");
    drop(store);
    Store::open(&path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// 8. Config and mkfs
// ---------------------------------------------------------------------------------------------

/// Issue 14: a deleted index is rebuilt at open from the index base and the journal after it;
/// so is one that cannot be read (moved aside, not deleted).
#[test]
fn a_lost_or_unreadable_index_is_rebuilt_from_the_base_and_the_journal() {
    let (_tmp, path, store) = new_store(4096);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"kept in chunks");
    store.snapshot_create(b"snap").unwrap();
    store.checkpoint().unwrap();
    store.write_index_base().unwrap();
    write_and_commit(&store, ino, 0, b"after the base");
    mkdir(&store, ROOT_INO, "d");
    store.set_xattr(ino, b"user.note", b"v", super::XattrMode::Any).unwrap();
    store.checkpoint().unwrap();
    let before = describe(&store);
    let log_before: Vec<u64> = store.log(ino).unwrap().iter().map(|e| e.gen).collect();
    drop(store);
    std::fs::remove_dir_all(path.join("index")).unwrap();
    let store = Store::open(&path).unwrap();
    assert!(store.recovery.rebuilt_index.is_some());
    assert_eq!(describe(&store), before);
    assert_eq!(store.log(ino).unwrap().iter().map(|e| e.gen).collect::<Vec<_>>(), log_before);
    assert_eq!(store.snapshots().unwrap().len(), 1);
    assert_consistent(&store);
    assert!(store.check().unwrap().problems.is_empty());
    drop(store);
    std::fs::write(path.join("index/genfs.redb"), b"not an index at all").unwrap();
    let store = Store::open(&path).unwrap();
    let why = store.recovery.rebuilt_index.clone().unwrap();
    assert!(why.contains("could not be read") && why.contains("index.replaced-"), "{why}");
    assert_eq!(describe(&store), before);
}

/// An index older than the journal's checkpoint (its durable commit was lost) is brought up
/// to date from the records the journal kept, not trusted as it is.
#[test]
fn an_index_behind_the_checkpoint_is_replayed_from_its_own() {
    let (tmp, path, store) = new_store(4096);
    let ino = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, ino, 0, b"one");
    store.checkpoint().unwrap();
    let saved = tmp.path().join("saved-index");
    copy_dir(&path.join("index"), &saved);
    write_and_commit(&store, ino, 0, b"two");
    mkdir(&store, ROOT_INO, "later");
    store.checkpoint().unwrap();
    let before = describe(&store);
    drop(store);
    std::fs::remove_dir_all(path.join("index")).unwrap();
    copy_dir(&saved, &path.join("index"));
    let store = Store::open(&path).unwrap();
    assert_eq!(describe(&store), before);
    assert_eq!(content(&store, ino), b"two");
}

/// Without a base and with the journal trimmed, nothing can rebuild the index: the message
/// says what can be done instead of sending the user to fsck.
#[test]
fn a_lost_index_that_cannot_be_rebuilt_says_what_can_be_done() {
    let (_tmp, path, store) = new_store(4096);
    store.journal.set_segment_bytes_target(256);
    let ino = create_file(&store, ROOT_INO, "f");
    for i in 0..20 {
        write_and_commit(&store, ino, 0, format!("kept in chunks {i}").as_bytes());
    }
    store.checkpoint().unwrap();
    store.write_index_base().unwrap(); // a base far along lets the journal be trimmed
    store.checkpoint().unwrap();
    drop(store);
    std::fs::remove_file(path.join("journal").join(super::base::BASE_FILE)).unwrap();
    std::fs::remove_dir_all(path.join("index")).unwrap();
    let err = open_err(&path);
    let message = err.to_string();
    assert!(matches!(err, StoreError::IndexLost(_)), "{message}");
    assert!(message.contains("cannot rebuild") && message.contains("chunks"), "{message}");
    assert!(!message.contains("fsck"), "{message}");
    assert!(super::rebuild_index(&path).is_err(), "rebuild_index must refuse, and move nothing");
    assert!(path.join("index").exists());
}

#[test]
fn opening_a_plain_directory_says_it_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let message = open_err(tmp.path()).to_string();
    assert!(message.contains("not a genfs store"), "{message}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "open left files behind");
    let message = open_err(&tmp.path().join("missing")).to_string();
    assert!(message.contains("not a genfs store"), "{message}");
}

#[test]
fn mkfs_refuses_a_non_empty_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious"), b"data").unwrap();
    assert_err!(Store::mkfs(tmp.path(), MIB, OWNER), StoreError::NotEmpty);
    assert_eq!(std::fs::read(tmp.path().join("precious")).unwrap(), b"data");
}

#[test]
fn mkfs_refuses_an_existing_store() {
    let (_tmp, path) = mkfs(MIB);
    assert_err!(Store::mkfs(&path, MIB, OWNER), StoreError::Exists);
    Store::open(&path).unwrap();
}

#[test]
fn mkfs_rejects_bad_chunk_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    for size in [0, 1, 1000, CS / 2, 3 * MIB, 128 * MIB, u64::MAX] {
        assert_err!(Store::mkfs(&path, size, OWNER), StoreError::InvalidArgument);
        assert!(!path.exists(), "chunk size {size} left a directory behind");
    }
}

#[test]
fn mkfs_records_chunk_size_and_owner() {
    let (_tmp, path) = mkfs(64 << 10);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.config.chunk_size, 64 << 10);
    assert_eq!(store.chunks().chunk_size, 64 << 10);
    let root = store.inode(ROOT_INO).unwrap();
    assert_eq!((root.kind, root.uid, root.gid, root.nlink), (Kind::Dir, OWNER.0, OWNER.1, 2));
    assert_eq!(root.perm, 0o755);
}

#[test]
fn gc_removes_inodes_whose_history_is_gone() {
    let (_tmp, _path, store) = new_store(CS);
    let dir = mkdir(&store, ROOT_INO, "d");
    store.set_retention(dir, Some("keep-last=2"), 0).unwrap();
    // Ten saves by rename: a chain of ten inodes behind "f".
    let first = create_file(&store, dir, "f");
    write_and_commit(&store, first, 0, b"v0");
    for i in 1..10 {
        let tmp = create_file(&store, dir, "f.tmp");
        write_and_commit(&store, tmp, 0, format!("v{i}").as_bytes());
        store.rename(dir, b"f.tmp", dir, b"f", RenameMode::Replace).unwrap();
    }
    // A deleted file: counts keep none of a deleted file's generations.
    let gone = create_file(&store, dir, "scratch");
    write_and_commit(&store, gone, 0, b"scratch");
    store.unlink(dir, b"scratch").unwrap();
    let inodes_before = store.index.inodes().unwrap().len();
    store.gc(&Pinned::default(), false).unwrap();
    let f = lookup(&store, dir, "f");
    let log: Vec<u64> = store.log(f).unwrap().iter().map(|e| e.gen).collect();
    assert_eq!(log, [9, 10], "keep-last=2");
    assert_eq!(content(&store, f), b"v9");
    assert_eq!(store.inode(gone).unwrap_err().errno(), libc::ENOENT);
    assert_eq!(store.inode(first).unwrap_err().errno(), libc::ENOENT);
    // Left: root, d, f and the one predecessor holding generation 9.
    assert_eq!(store.index.inodes().unwrap().len(), 4, "{inodes_before} inodes before gc");
    // Time travel forgets the names of what is gone: "scratch" and all but the last saves.
    let history = store.index.name_history().unwrap();
    let entries = |n: &[u8]| history.iter().filter(|e| e.1 == n).count();
    assert_eq!(entries(b"scratch"), 0);
    assert!(entries(b"f") <= 3 && entries(b"f.tmp") <= 4, "{history:?}");
    assert_consistent(&store);
    // Pinned (open) inodes stay.
    let held = create_file(&store, dir, "held");
    let gen = write_and_commit(&store, held, 0, b"held");
    store.unlink(dir, b"held").unwrap();
    store.gc(&Pinned::from_iter([(held, gen)]), false).unwrap();
    assert_eq!(content(&store, held), b"held");
    store.gc(&Pinned::default(), false).unwrap();
    assert!(store.inode(held).is_err());
    assert_consistent(&store);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}

#[test]
fn a_snapshot_pins_only_what_its_tree_showed() {
    let (_tmp, _path, store) = new_store(CS);
    store.set_retention(ROOT_INO, Some("keep-last=1"), 0).unwrap();
    let first = create_file(&store, ROOT_INO, "f");
    write_and_commit(&store, first, 0, b"v1");
    store.snapshot_create(b"s").unwrap();
    // Past the clock margin gc allows between a snapshot and a file's birth.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let scratch = create_file(&store, ROOT_INO, "scratch");
    write_and_commit(&store, scratch, 0, b"after the snapshot");
    store.unlink(ROOT_INO, b"scratch").unwrap();
    for i in 2..=4 {
        let tmp = create_file(&store, ROOT_INO, "f.tmp");
        write_and_commit(&store, tmp, 0, format!("v{i}").as_bytes());
        store.rename(ROOT_INO, b"f.tmp", ROOT_INO, b"f", RenameMode::Replace).unwrap();
    }
    store.gc(&Pinned::default(), false).unwrap();
    let f = lookup(&store, ROOT_INO, "f");
    let log: Vec<u64> = store.log(f).unwrap().iter().map(|e| e.gen).collect();
    assert_eq!(log, [1, 4], "the snapshot's generation and the current one");
    assert!(store.inode(scratch).is_err(), "created and deleted after the snapshot: not in it");
    store.snapshot_delete(b"s").unwrap();
    store.gc(&Pinned::default(), false).unwrap();
    assert_eq!(store.log(f).unwrap().len(), 1);
    assert!(store.inode(first).is_err());
    assert_consistent(&store);
}

/// Issue 12: log pages read a range of generations, newest first, across a save by rename;
/// the result is the whole log's order, cut at the bound.
#[test]
fn the_log_read_by_range_matches_the_whole_log() {
    let (_tmp, _path, store) = new_store(CS);
    let old = create_file(&store, ROOT_INO, "f");
    for i in 0..5 {
        write_and_commit(&store, old, 0, format!("old {i}").as_bytes());
    }
    let tmp = create_file(&store, ROOT_INO, "f.tmp");
    for i in 0..4 {
        write_and_commit(&store, tmp, 0, format!("new {i}").as_bytes());
    }
    store.rename(ROOT_INO, b"f.tmp", ROOT_INO, b"f", RenameMode::Replace).unwrap();
    let whole: Vec<(u64, Ino)> = store.log(tmp).unwrap().iter().rev().map(|e| (e.gen, e.owner)).collect();
    assert_eq!(whole.iter().map(|(g, _)| *g).collect::<Vec<_>>(), (1..=9).rev().collect::<Vec<_>>());
    for before in [None, Some(10), Some(9), Some(6), Some(5), Some(1), Some(0)] {
        let range: Vec<(u64, Ino)> = store
            .log_newest_first(tmp, before)
            .unwrap()
            .map(|e| e.map(|e| (e.gen, e.owner)))
            .collect::<super::StoreResult<_>>()
            .unwrap();
        let want: Vec<(u64, Ino)> =
            whole.iter().copied().filter(|(g, _)| before.is_none_or(|b| *g < b)).collect();
        assert_eq!(range, want, "before {before:?}");
    }
    assert_eq!(store.log_newest_first(tmp, Some(6)).unwrap().next().unwrap().unwrap().owner, old);
}

/// Issue 14: thinning for space drops the oldest unprotected history first, only as much as
/// asked, and never a current, pinned or snapshotted generation, whatever the policy keeps.
#[test]
fn thinning_for_space_drops_oldest_unprotected_history_only() {
    let (_tmp, _path, store) = new_store(CS);
    let f = create_file(&store, ROOT_INO, "f");
    for i in 1..=6u64 {
        write_and_commit(&store, f, 0, &pattern(i, CS as usize));
        if i == 2 {
            store.snapshot_create(b"s").unwrap();
        }
    }
    let pinned = Pinned::from_iter([(f, 3)]);
    // One chunk's worth: exactly the oldest droppable generation goes (1: not in the snapshot).
    let report = store.thin_for_space(&pinned, 1).unwrap();
    assert_eq!(report.dropped.iter().map(|d| d.1).collect::<Vec<_>>(), [1]);
    assert_eq!(report.freed_bytes, CS);
    let log = |s: &Store| s.log(f).unwrap().iter().map(|e| e.gen).collect::<Vec<_>>();
    assert_eq!(log(&store), [2, 3, 4, 5, 6]);
    // Everything: 2 is the snapshot's, 3 is pinned, 6 is current.
    store.thin_for_space(&pinned, u64::MAX).unwrap();
    assert_eq!(log(&store), [2, 3, 6]);
    assert_eq!(generation_content(&store, f, 3), pattern(3, CS as usize));
    // keep-min-within protects the young.
    let young = create_file(&store, ROOT_INO, "young");
    store.set_retention(young, Some("keep-last=0,keep-min-within=1h"), 0).unwrap();
    write_and_commit(&store, young, 0, b"a");
    write_and_commit(&store, young, 0, b"b");
    assert!(store.thin_for_space(&Pinned::default(), u64::MAX).unwrap().dropped.iter().all(|d| d.0 != young));
    assert_eq!(store.log(young).unwrap().len(), 2);
    assert_consistent(&store);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}

/// Issue 14: gc removes directories and symbolic links that lost their names once their
/// policy no longer looks back that far, the name history under them, and coarsens the time
/// index the policy no longer needs second by second.
#[test]
fn gc_removes_deleted_directories_symlinks_and_old_instants() {
    let (_tmp, _path, store) = new_store(CS);
    store.set_retention(ROOT_INO, Some("keep-last=0,keep-within=0s"), 0).unwrap();
    let dir = mkdir(&store, ROOT_INO, "d");
    let sub = mkdir(&store, dir, "sub");
    let link = symlink(&store, dir, "l", "target");
    let kept = mkdir(&store, ROOT_INO, "kept");
    store.unlink(dir, b"l").unwrap();
    store.rmdir(dir, b"sub").unwrap();
    store.rmdir(ROOT_INO, b"d").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let snap_dir = mkdir(&store, ROOT_INO, "in-a-snapshot");
    store.snapshot_create(b"s").unwrap();
    store.rmdir(ROOT_INO, b"in-a-snapshot").unwrap();
    assert!(store.index.time_index_secs().unwrap().len() >= 2);
    store.gc(&Pinned::default(), false).unwrap();
    for gone in [dir, sub, link] {
        assert!(store.index.inode(gone).unwrap().is_none(), "inode {gone} is still in the index");
    }
    assert!(store.index.inode(kept).unwrap().is_some());
    assert!(store.index.inode(snap_dir).unwrap().is_some(), "a snapshot shows it");
    let history = store.index.name_history().unwrap();
    assert!(history.iter().all(|e| e.0 != dir), "names under a removed directory: {history:?}");
    assert!(store.index.time_index_secs().unwrap().len() <= 2, "one instant per day is enough here");
    assert_consistent(&store);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "fsck: {:?}", report.problems);
}

/// Issue 14: fsck --repair sets right each kind of namespace and reference-count damage, made
/// on purpose one per kind, and keeps every committed generation it can prove.
#[test]
fn namespace_repair_fixes_each_kind_of_damage_and_keeps_the_generations() {
    let (_tmp, _path, store) = new_store(CS);
    let kept = create_file(&store, ROOT_INO, "kept");
    write_and_commit(&store, kept, 0, b"one");
    write_and_commit(&store, kept, 0, b"two");
    let orphan = create_file(&store, ROOT_INO, "orphan");
    write_and_commit(&store, orphan, 0, b"orphaned data");
    let counted = create_file(&store, ROOT_INO, "counted");
    write_and_commit(&store, counted, 0, b"counted data");
    let reverted = create_file(&store, ROOT_INO, "reverted");
    write_and_commit(&store, reverted, 0, b"older");
    let current = write_and_commit(&store, reverted, 0, b"newer");
    assert_consistent(&store);
    // Damage, one of each kind, written as records so that only the index's meaning is wrong.
    let mut root = store.inode(ROOT_INO).unwrap();
    let cookie = root.next_cookie;
    root.next_cookie += 1;
    let chunk = store.current_generation(counted).unwrap().1.chunks.values().next().copied().unwrap();
    let mut wrong_links = store.inode(kept).unwrap();
    wrong_links.nlink = 5;
    store
        .mutate(vec![
            Op::PutInode { ino: ROOT_INO, inode: root },
            Op::PutDirent {
                parent: ROOT_INO,
                name: b"ghost".to_vec(),
                ino: 999_999,
                kind: Kind::File,
                cookie,
            },
            Op::PutInode { ino: kept, inode: wrong_links },
            Op::DelDirent { parent: ROOT_INO, name: b"orphan".to_vec() },
            Op::SetChunkRefs { hash: chunk.hash, count: 7, len: chunk.len },
            Op::DelGeneration { ino: reverted, gen: current },
        ])
        .unwrap();
    let problems = store.check().unwrap().problems;
    assert!(problems.len() >= 5, "{problems:?}");
    let log_kept: Vec<u64> = store.log(kept).unwrap().iter().map(|e| e.gen).collect();
    let repair = store.repair_namespace().unwrap();
    assert!(repair.changes.len() >= 5, "{:?}", repair.changes);
    let report = store.check().unwrap();
    assert!(report.problems.is_empty(), "after repair: {:?}\nchanges: {:?}", report.problems, repair.changes);
    assert_consistent(&store);
    assert!(store.lookup(ROOT_INO, b"ghost").is_err());
    assert_eq!(store.inode(kept).unwrap().nlink, 1);
    assert_eq!(store.log(kept).unwrap().iter().map(|e| e.gen).collect::<Vec<_>>(), log_kept);
    assert_eq!(content(&store, kept), b"two");
    let lost = lookup(&store, ROOT_INO, "lost+found");
    assert_eq!(lookup(&store, lost, &format!("#{orphan}")), orphan);
    assert_eq!(content(&store, orphan), b"orphaned data");
    assert_eq!(store.index.chunk_refs(&chunk.hash).unwrap(), 1);
    assert_eq!(content(&store, reverted), b"older", "the newest kept generation is current again");
    assert_eq!(content(&store, counted), b"counted data");
}

/// A save by rename over a file that has another name (a hard link) does not take that
/// file's history: gc once removed the linked file's inode, and its data, through the new
/// file's history chain (found by the 100,000-state crash exploration).
#[test]
fn renaming_over_a_hard_linked_file_keeps_the_other_name_whole() {
    let (_tmp, _path, store) = new_store(CS);
    store.set_retention(ROOT_INO, Some("keep-last=1"), 0).unwrap();
    let linked = create_file(&store, ROOT_INO, "target");
    write_and_commit(&store, linked, 0, b"still mine");
    store.link(linked, ROOT_INO, b"other-name").unwrap();
    let new = create_file(&store, ROOT_INO, "tmp");
    write_and_commit(&store, new, 0, b"replacement");
    store.rename(ROOT_INO, b"tmp", ROOT_INO, b"target", RenameMode::Replace).unwrap();
    assert_eq!(store.inode(new).unwrap().history, None);
    store.gc(&Pinned::default(), false).unwrap();
    assert_eq!(content(&store, lookup(&store, ROOT_INO, "other-name")), b"still mine");
    assert_eq!(content(&store, lookup(&store, ROOT_INO, "target")), b"replacement");
    assert_consistent(&store);
    assert!(store.check().unwrap().problems.is_empty());
}

/// A copy by reference (`Draft::share_slot`) points at another file's chunks before it is
/// committed: the generation it copied from is pinned through `Draft::borrowed`, and gc keeps
/// its chunks even when nothing else does. Without that pin they go.
#[test]
fn chunks_shared_by_an_uncommitted_copy_survive_gc() {
    const CS: u64 = CHUNK_BYTES_MIN;
    let (_tmp, path, store) = new_store(CS);
    store.set_retention(ROOT_INO, Some("keep-last=0"), 0).unwrap();
    // A file, and a draft of another one that shares all its slots.
    let copy_of = |name: &str, seed: u64| {
        let source = create_file(&store, ROOT_INO, name);
        let bytes = pattern(seed, (2 * CS + 100) as usize);
        write_and_commit(&store, source, 0, &bytes);
        let (gen, manifest) = store.current_generation(source).unwrap();
        let target = create_file(&store, ROOT_INO, &format!("{name}.copy"));
        let mut draft = store.new_draft(target).unwrap();
        for k in 0..3 {
            let len = (bytes.len() as u64 - k * CS).min(CS);
            assert!(draft.share_slot(k, manifest.slot(k), len, (source, gen), CS).unwrap());
        }
        assert_eq!(draft.borrowed, [(source, gen)]);
        assert_eq!(draft_content(&store, &draft), bytes);
        // Rewritten whole: the copied generation is history no other generation shares.
        let mut rewrite = store.new_draft(source).unwrap();
        rewrite.truncate(0, store.chunks()).unwrap();
        rewrite.write(0, b"rewritten", store.chunks()).unwrap();
        store.commit(&mut rewrite).unwrap();
        (target, draft, bytes)
    };
    let (target, mut draft, bytes) = copy_of("kept", 7);
    let chunks = chunk_files(&path);
    let pinned: Pinned = std::iter::once((target, draft.base_gen)).chain(draft.borrowed.clone()).collect();
    assert!(store.gc(&pinned, false).unwrap().dropped.is_empty(), "the copied generation stays");
    assert_eq!(chunk_files(&path), chunks, "gc unlinked chunks a copy shares");
    store.commit(&mut draft).unwrap();
    assert!(draft.borrowed.is_empty(), "a commit makes the chunks the copy's own");
    assert_eq!(store.gc(&Pinned::default(), false).unwrap().dropped.len(), 1);
    assert_eq!(content(&store, target), bytes);
    assert_consistent(&store);

    let (_, unpinned, _) = copy_of("lost", 8);
    store.gc(&Pinned::default(), false).unwrap();
    assert!(unpinned.read(0, CS as u32, store.chunks()).is_err(), "the pin is what keeps them");
}
