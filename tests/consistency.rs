//! G1 close-to-open, G2 isolation, G3 atomic commit, and cooperating writers under fcntl locks.

use crate::util::{fcntl_lock, seed, sh, Mounted, Rng};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// G1: each value written and closed by one process is what the next process reads.
#[test]
fn close_to_open_across_processes_1000_times() {
    let m = Mounted::new("g1");
    let file = m.path("g1.txt");
    let f = file.display();
    for i in 0..1000 {
        let value = format!("value-{i}-{}", "x".repeat(i % 37));
        let (ok, _) = sh(&format!("printf %s '{value}' > '{f}'"));
        assert!(ok, "writer {i} failed");
        let (ok, read) = sh(&format!("cat '{f}'"));
        assert!(ok, "reader {i} failed");
        assert_eq!(read, value, "iteration {i}: reader saw a stale generation");
    }
}

fn content(i: u64) -> Vec<u8> {
    let len = 1000 + (i * 7919) % 300_000;
    (0..len).map(|j| ((j * 31 + i * 17) % 251) as u8).collect()
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut buf = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut buf).unwrap();
    buf
}

/// G2: a descriptor keeps reading the generation it opened, through commits, unlink and
/// rename-over; fstat and a read-only mmap agree.
#[test]
fn open_descriptor_keeps_its_generation() {
    let m = Mounted::new("g2");
    let path = m.path("iso.bin");
    let original = content(0);
    std::fs::write(&path, &original).unwrap();
    let mut fd = File::open(&path).unwrap();
    // SAFETY: the test only reads the mapping; genfs never changes a generation's bytes.
    let map = unsafe { memmap2::Mmap::map(&fd).unwrap() };
    for i in 1..=50 {
        std::fs::write(&path, content(i)).unwrap();
        assert_eq!(read_all(&mut fd), original, "after commit {i}");
        assert_eq!(fd.metadata().unwrap().len(), original.len() as u64, "fstat after commit {i}");
        assert_eq!(&map[..], &original[..], "mmap after commit {i}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), content(50));
    let other = m.path("other.bin");
    std::fs::write(&other, b"replacement").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(read_all(&mut fd), original, "after rename over");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(read_all(&mut fd), original, "after unlink");
    assert_eq!(fd.metadata().unwrap().len(), original.len() as u64);
    assert_eq!(&map[..], &original[..]);
}

/// G3: readers hash whole files while a writer commits 200 generations; every read is exactly
/// one committed generation. Readers that opened before the writer keep seeing their own one.
#[test]
fn readers_see_whole_generations_only() {
    let m = Mounted::new("g3");
    let path = m.path("atomic.bin");
    std::fs::write(&path, content(0)).unwrap();
    let valid: Arc<HashSet<blake3::Hash>> = Arc::new((0..=200).map(|i| blake3::hash(&content(i))).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..4 {
        let (path, valid, stop, reads) = (path.clone(), valid.clone(), stop.clone(), reads.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let data = std::fs::read(&path).unwrap();
                assert!(
                    valid.contains(&blake3::hash(&data)),
                    "read {} bytes matching no generation",
                    data.len()
                );
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for _ in 0..2 {
        // Opened before the writer opens the file: the zero-bytes-past-EOF race of the notes.
        let (path, stop, reads) = (path.clone(), stop.clone(), reads.clone());
        let mut early = File::open(&path).unwrap();
        let first = content(0);
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(read_all(&mut early), first, "early reader saw another generation or zeros");
                let mut tail = [0u8; 4096];
                let n = early.read_at(&mut tail, first.len() as u64).unwrap();
                assert_eq!(n, 0, "early reader read past its generation's end");
                reads.fetch_add(1, Ordering::Relaxed);
            }
            let _ = path;
        }));
    }
    for i in 1..=200 {
        let mut f = OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        let data = content(i);
        for piece in data.chunks(65536) {
            f.write_all(piece).unwrap();
        }
        drop(f);
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().expect("reader failed");
    }
    assert_eq!(std::fs::read(&path).unwrap(), content(200));
    eprintln!("g3: {} whole-file reads checked", reads.load(Ordering::Relaxed));
}

/// G3: a child that inherits a half-written descriptor (fork, then exec closes it; or exits)
/// commits nothing; the writer's own close commits the whole file, a child's writes commit at
/// the child's close.
#[test]
fn an_inherited_descriptor_closed_by_a_child_commits_nothing() {
    use std::os::fd::AsRawFd;
    let m = Mounted::new("inherit");
    let path = m.path("half.txt");
    std::fs::write(&path, b"old").unwrap();
    let generation = || xattr::get(&path, "user.genfs.generation").unwrap().unwrap();
    let before = generation();
    let mut f = OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    f.write_all(b"first half, ").unwrap();
    // std opens with O_CLOEXEC: the child's exec closes its copy (a FLUSH from the child).
    assert!(Command::new("true").status().unwrap().success());
    // SAFETY: the child only calls _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: leaves the child at once; its exit closes the inherited descriptor.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert_eq!(std::fs::read(&path).unwrap(), b"old", "a child's close committed a half-written file");
    assert_eq!(generation(), before);
    f.write_all(b"second half").unwrap();
    drop(f);
    assert_eq!(std::fs::read(&path).unwrap(), b"first half, second half");

    // A child that writes through the inherited descriptor commits at its own close.
    let f = OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: clears close-on-exec of a descriptor this test owns.
    assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    let (ok, _) = sh(&format!("printf child >&{fd}"));
    assert!(ok);
    drop(f);
    assert_eq!(std::fs::read(&path).unwrap(), b"child");
}

const LOCK_HELPER_ENV: &str = "GENFS_LOCK_HELPER";

/// Not a test on its own: the body of the second process of `writers_take_turns_under_fcntl_locks`.
#[test]
#[ignore = "helper process for writers_take_turns_under_fcntl_locks"]
fn lock_helper_process() {
    let Ok(spec) = std::env::var(LOCK_HELPER_ENV) else { return };
    let (mode, path) = spec.split_once(':').unwrap();
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    match mode {
        "trylock" => {
            let got = set_lock(&f, libc::F_WRLCK, false);
            std::process::exit(if got { 10 } else { 11 });
        }
        _ => {
            increment_rounds(&f, mode.parse().unwrap());
            std::process::exit(0);
        }
    }
}

fn set_lock(f: &File, typ: i32, wait: bool) -> bool {
    fcntl_lock(f, if wait { libc::F_SETLKW } else { libc::F_SETLK }, typ, 0, 0)
}

/// Under the lock: read the counter, write counter + 1.
fn increment_rounds(f: &File, rounds: u32) {
    for _ in 0..rounds {
        assert!(set_lock(f, libc::F_WRLCK, true));
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        f.write_all_at(&(u64::from_le_bytes(buf) + 1).to_le_bytes(), 0).unwrap();
        assert!(set_lock(f, libc::F_UNLCK, false));
    }
}

fn helper(mode: &str, path: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "consistency::lock_helper_process", "--ignored", "--nocapture"])
        .env(LOCK_HELPER_ENV, format!("{mode}:{}", path.display()));
    cmd
}

/// Two processes with the file open for writing share one draft: under an fcntl lock each
/// sees the other's writes at once, and a lock held by one blocks the other.
#[test]
fn writers_take_turns_under_fcntl_locks() {
    let m = Mounted::new("locks");
    let path = m.path("counter");
    std::fs::write(&path, 0u64.to_le_bytes()).unwrap();
    let mine = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    assert!(set_lock(&mine, libc::F_WRLCK, false));
    let st = helper("trylock", &path).status().unwrap();
    assert_eq!(st.code(), Some(11), "the other process got a lock this one holds");
    assert!(set_lock(&mine, libc::F_UNLCK, false));
    let st = helper("trylock", &path).status().unwrap();
    assert_eq!(st.code(), Some(10), "the lock was not released");
    let mut other = helper("300", &path).spawn().unwrap();
    increment_rounds(&mine, 300);
    assert!(other.wait().unwrap().success());
    let mut buf = [0u8; 8];
    mine.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(u64::from_le_bytes(buf), 600, "a writer missed the other's writes");
    drop(mine);
    assert_eq!(std::fs::read(&path).unwrap(), 600u64.to_le_bytes());
}

/// Random seeded single-process workload checked against a model after remount.
#[test]
fn generations_survive_remount() {
    let mut m = Mounted::new("remount");
    let mut rng = Rng::new(seed("generations_survive_remount"));
    let mut model = std::collections::BTreeMap::new();
    for i in 0..200 {
        let name = format!("f{}", rng.below(20));
        let data: Vec<u8> = (0..rng.below(3 << 20)).map(|j| (j ^ i) as u8).collect();
        std::fs::write(m.path(&name), &data).unwrap();
        model.insert(name, data);
    }
    m.remount();
    for (name, data) in &model {
        assert_eq!(&std::fs::read(m.path(name)).unwrap(), data, "{name}");
    }
}
