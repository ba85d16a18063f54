//! The version interface on a real mount: log, READ_PATH views, restore, snapshots, time
//! travel, storage sharing, retention, and history across save-by-rename.

use crate::util::{du, getfattr, seed, sh, stat_value, write_file, Mounted, Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// (generation, READ_PATH) of every line of a file's log, following continuation pages.
fn log_of(path: &Path) -> Vec<(u64, String)> {
    log_page_lines(path).into_iter().rev().flatten().collect()
}

/// The lines of each page of a file's log as (generation, READ_PATH), newest page first
/// (following `#more`).
fn log_page_lines(path: &Path) -> Vec<Vec<(u64, String)>> {
    let mut pages = Vec::new();
    let mut attr = "user.genfs.log".to_string();
    loop {
        let text = getfattr(path, &attr).expect("log attribute");
        let mut next = None;
        let mut page = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f[0] == "#more" {
                next = Some(f[1].to_string());
            } else {
                assert_eq!(f.len(), 5, "log line {line:?}");
                page.push((f[0].parse().unwrap(), f[4].to_string()));
            }
        }
        pages.push(page);
        match next {
            Some(a) => attr = a,
            None => return pages,
        }
    }
}

fn seq(m: &Mounted) -> u64 {
    getfattr(&m.mnt, "user.genfs.seq").unwrap().parse().unwrap()
}

#[test]
fn each_close_is_a_log_line_readable_at_its_read_path() {
    let m = Mounted::new("log30");
    let p = m.path("f.txt");
    let versions: Vec<Vec<u8>> =
        (0..30).map(|i| format!("version {i}\n").repeat(i + 1).into_bytes()).collect();
    for v in &versions {
        write_file(&p, v).unwrap();
    }
    let log = log_of(&p);
    assert_eq!(log.len(), 30);
    for ((gen, read_path), v) in log.iter().zip(&versions) {
        assert_eq!(&std::fs::read(m.mnt.join(read_path)).unwrap(), v, "generation {gen}");
    }
    // Shell redirections keep one generation per save too.
    for i in 0..5 {
        assert!(sh(&format!("echo shell{i} > '{}'", p.display())).0);
    }
    assert_eq!(log_of(&p).len(), 35);
    // Writes into views fail with EROFS.
    let view = m.mnt.join(&log[0].1);
    let err = OpenOptions::new().write(true).open(&view).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
}

/// The generations of each page of a file's log, newest page first (following `#more`).
fn log_pages(path: &Path) -> Vec<Vec<u64>> {
    log_page_lines(path).into_iter().map(|page| page.into_iter().map(|(gen, _)| gen).collect()).collect()
}

/// Issue 12: a log page is read from the index by generation range (`before.G` downward),
/// not cut from the whole log. Pages that cross a save by rename (two inodes' generations)
/// must still show every generation once, in order, and the `.genfs/gen/INO` listing the same.
#[test]
fn a_long_log_is_paged_each_generation_once_in_order() {
    let m = Mounted::new("logpages");
    let p = m.path("many");
    for i in 0..900u32 {
        write_file(&p, &i.to_le_bytes()).unwrap();
    }
    // A save by rename: the new file's generations continue the old file's numbers.
    let tmp = m.path("many.tmp");
    for i in 0..700u32 {
        write_file(&tmp, &i.to_be_bytes()).unwrap();
    }
    std::fs::rename(&tmp, &p).unwrap();
    for i in 0..400u32 {
        write_file(&p, &(i + 7).to_le_bytes()).unwrap();
    }
    let pages = log_pages(&p);
    assert!(pages.len() >= 3, "2000 generations fit in {} pages", pages.len());
    let mut all: Vec<u64> = pages.iter().rev().flatten().copied().collect();
    assert_eq!(all, (1..=2000).collect::<Vec<u64>>(), "a generation missing, repeated or out of order");
    assert_eq!(log_of(&p).len(), 2000);
    // The same generations by name in the file's generation view, read in small pieces.
    let ino = std::fs::metadata(&p).unwrap().ino();
    let names = list_in_small_reads(&m.mnt.join(format!(".genfs/gen/{ino}")));
    let mut listed: Vec<u64> =
        names.iter().filter(|(_, n)| n != b"." && n != b"..").map(|(_, n)| parse_name(n)).collect();
    listed.sort_unstable();
    all.sort_unstable();
    assert_eq!(listed, all);
}

fn parse_name(n: &[u8]) -> u64 {
    std::str::from_utf8(n).unwrap().parse().unwrap()
}

/// (d_off, name) of every entry of `dir`, read with getdents64 into a 256-byte buffer, so that
/// a big directory takes hundreds of READDIRs at hundreds of offsets. Then checks offsets are
/// stable: a seek back to any entry's d_off goes on with the entries after it.
fn list_in_small_reads(dir: &Path) -> Vec<(i64, Vec<u8>)> {
    let f = std::fs::File::open(dir).unwrap();
    let fd = f.as_raw_fd();
    let read_all = || {
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        loop {
            // SAFETY: `fd` is an open directory and `buf` is writable for its length.
            let n = unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) };
            assert!(n >= 0, "getdents64 {}: {}", dir.display(), std::io::Error::last_os_error());
            if n == 0 {
                return out;
            }
            let mut at = 0;
            while at < n as usize {
                // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name.
                let d_off = i64::from_ne_bytes(buf[at + 8..at + 16].try_into().unwrap());
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                let name = &buf[at + 19..at + reclen];
                let len = name.iter().position(|b| *b == 0).unwrap();
                out.push((d_off, name[..len].to_vec()));
                at += reclen;
            }
        }
    };
    let seek = |off: i64| {
        // SAFETY: lseek on a descriptor we own.
        assert_eq!(unsafe { libc::lseek(fd, off, libc::SEEK_SET) }, off);
    };
    let entries = read_all();
    for k in [0, entries.len() / 3, entries.len() - 1] {
        seek(entries[k].0);
        assert_eq!(read_all(), entries[k + 1..], "after a seek to the d_off of entry {k}");
    }
    seek(0);
    assert_eq!(read_all(), entries, "a rewound listing differs");
    entries
}

/// Issue 12: a view directory's listing is built once per open handle and paged by offset.
/// Read in small pieces, every name of a 3,000-entry directory appears exactly once in its
/// `.genfs/at/@SEQ` view, with the entries made after SEQ absent, and in the live directory.
#[test]
fn a_big_view_directory_lists_every_name_once() {
    let m = Mounted::new("viewlist");
    let dir = m.path("big");
    std::fs::create_dir(&dir).unwrap();
    let count = 3000usize;
    std::thread::scope(|s| {
        for t in 0..4 {
            let dir = &dir;
            s.spawn(move || {
                for i in (t..count).step_by(4) {
                    std::fs::File::create(dir.join(format!("entry-{i:05}"))).unwrap();
                }
            });
        }
    });
    let then = seq(&m);
    std::fs::File::create(dir.join("later")).unwrap();
    let expected: BTreeSet<Vec<u8>> = (0..count).map(|i| format!("entry-{i:05}").into_bytes()).collect();
    for (path, extra) in [(m.mnt.join(format!(".genfs/at/@{then}/big")), None), (dir, Some("later"))] {
        let names = list_in_small_reads(&path);
        let mut seen = BTreeSet::new();
        for (_, n) in &names {
            assert!(
                seen.insert(n.clone()),
                "{} lists {:?} twice",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
        let mut want = expected.clone();
        want.extend([b".".to_vec(), b"..".to_vec()]);
        want.extend(extra.map(|e| e.as_bytes().to_vec()));
        assert_eq!(seen.len(), names.len());
        assert!(seen == want, "{}: {} names, expected {}", path.display(), seen.len(), want.len());
    }
}

#[test]
fn restore_commits_an_old_generation_and_spares_open_readers() {
    let m = Mounted::new("restore");
    let p = m.path("r");
    write_file(&p, b"first").unwrap();
    write_file(&p, b"second").unwrap();
    let mut reader = std::fs::File::open(&p).unwrap();
    let first_gen = log_of(&p)[0].0;
    xattr::set(&p, "user.genfs.restore", first_gen.to_string().as_bytes()).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"first");
    assert_eq!(log_of(&p).len(), 3);
    let mut held = String::new();
    std::io::Read::read_to_string(&mut reader, &mut held).unwrap();
    assert_eq!(held, "second");
    let err = xattr::set(&p, "user.genfs.restore", b"999").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

fn make_tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
}

fn time_snapshot(m: &Mounted, name: &str) -> f64 {
    let start = Instant::now();
    xattr::set(&m.mnt, "user.genfs.snapshot.create", name.as_bytes()).unwrap();
    start.elapsed().as_secs_f64() * 1000.0
}

#[test]
fn snapshots_are_constant_time_and_frozen() {
    let m = Mounted::new("snapshots");
    make_tree(&m.path("t"), 100);
    let small_ms = time_snapshot(&m, "small");
    make_tree(&m.path("t"), 10_000);
    let big_ms = time_snapshot(&m, "big");
    eprintln!("snapshot create: 100 files {small_ms:.2} ms, 10,000 files {big_ms:.2} ms");
    let copy = tempfile::tempdir().unwrap();
    assert!(sh(&format!("cp -a '{}' '{}/t'", m.path("t").display(), copy.path().display())).0);
    for i in (0..10_000).step_by(7) {
        let f = m.path(&format!("t/d{}/f{i}", i % 100));
        if i % 2 == 0 {
            std::fs::write(&f, b"changed").unwrap();
        } else {
            std::fs::remove_file(&f).unwrap();
        }
    }
    std::fs::remove_dir_all(m.path("t/d3")).unwrap();
    let view = m.mnt.join(".genfs/snapshots/big/t");
    let (same, out) = sh(&format!("diff -r '{}' '{}/t'", view.display(), copy.path().display()));
    assert!(same, "snapshot view differs from the copy:\n{out}");
    let err = std::fs::write(view.join("d0/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let list = getfattr(&m.mnt, "user.genfs.snapshots").unwrap();
    assert!(list.lines().any(|l| l.starts_with("big\t")), "{list}");
    xattr::set(&m.mnt, "user.genfs.snapshot.delete", b"small").unwrap();
    assert!(!m.mnt.join(".genfs/snapshots/small").exists());
}

/// The tree under `root`: relative path -> Some(content) for files, None for directories.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                stack.push(e.path());
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

#[test]
fn time_travel_matches_the_recorded_tree() {
    let m = Mounted::new("timetravel");
    let mut rng = Rng::new(seed("time_travel_matches_the_recorded_tree"));
    let root = m.path("w");
    std::fs::create_dir(&root).unwrap();
    let mut recorded = Vec::new();
    for step in 0..400 {
        let dirs: Vec<PathBuf> = std::iter::once(root.clone())
            .chain(tree(&root).into_iter().filter(|(_, c)| c.is_none()).map(|(p, _)| root.join(p)))
            .collect();
        let files: Vec<PathBuf> =
            tree(&root).into_iter().filter(|(_, c)| c.is_some()).map(|(p, _)| root.join(p)).collect();
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        match rng.below(10) {
            0 => std::fs::create_dir(dir.join(format!("d{step}"))).unwrap(),
            1 | 2 if !files.is_empty() => {
                let f = &files[rng.below(files.len() as u64) as usize];
                std::fs::rename(f, dir.join(format!("r{step}"))).unwrap();
            }
            3 if !files.is_empty() => {
                std::fs::remove_file(&files[rng.below(files.len() as u64) as usize]).unwrap()
            }
            4 | 5 if !files.is_empty() => {
                let f = &files[rng.below(files.len() as u64) as usize];
                write_file(f, format!("rewrite {step}").as_bytes()).unwrap();
            }
            _ => write_file(&dir.join(format!("f{step}")), format!("new {step}").as_bytes()).unwrap(),
        }
        if step % 20 == 19 {
            recorded.push((seq(&m), tree(&root)));
        }
    }
    assert_eq!(recorded.len(), 20);
    for (s, expected) in &recorded {
        let view = m.mnt.join(format!(".genfs/at/@{s}/w"));
        assert_eq!(&tree(&view), expected, "tree at @{s}");
    }
}

#[test]
fn versions_share_unchanged_chunks() {
    let m = Mounted::new("sharing");
    let p = m.path("big.img");
    let chunk: u64 = 1 << 20;
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&p).unwrap();
    let block: Vec<u8> = (0..chunk).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..256u64 {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&b).unwrap();
    }
    drop(f);
    let chunks = m.store.join("chunks");
    let before = du(&chunks);
    for i in 0..1000u32 {
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[i as u8; 100]).unwrap();
    }
    let grown = du(&chunks) - before;
    eprintln!("1,000 appends of 100 B to a 256 MiB file: chunks/ grew {grown} B");
    assert!(grown <= 1000 * (chunk + (64 << 10)), "appends copied whole files: {grown}");
    let before = du(&chunks);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[9u8; 4096], 100 << 20).unwrap();
    drop(f);
    let grown = du(&chunks) - before;
    eprintln!("4 KiB change inside a 256 MiB file: chunks/ grew {grown} B");
    assert!(grown <= 2 * chunk + (64 << 10), "{grown}");
    eprintln!(
        "stats: logical {} B, stored {} B",
        stat_value(&m.mnt, "logical_bytes"),
        stat_value(&m.mnt, "stored_bytes")
    );
}

#[test]
fn retention_keeps_what_the_policy_says_and_frees_chunks() {
    let m = Mounted::new("retention");
    let d = m.path("kept");
    std::fs::create_dir(&d).unwrap();
    xattr::set(&d, "user.genfs.retention", b"keep-last=5").unwrap();
    let p = d.join("f");
    for i in 0..50u32 {
        write_file(&p, &[i as u8 + 1; 5000]).unwrap();
    }
    assert_eq!(getfattr(&p, "user.genfs.retention").as_deref(), Some("keep-last=5"));
    let chunk_files = || sh(&format!("find '{}' -type f | wc -l", m.store.join("chunks").display())).1;
    let before: u64 = chunk_files().trim().parse().unwrap();
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    assert_eq!(log_of(&p).len(), 5);
    let after: u64 = chunk_files().trim().parse().unwrap();
    assert_eq!(before - after, 45, "chunks of dropped generations are still on disk");
    let report = getfattr(&m.mnt, "user.genfs.gc").unwrap();
    assert!(report.contains("freed_chunks\t45"), "{report}");
    // max-size below what the history takes: the oldest go first.
    xattr::set(&d, "user.genfs.retention", b"keep-last=5,max-size=12000").unwrap();
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let left = log_of(&p);
    assert_eq!(left.len(), 3, "current + 2 x 5000 B of history fit in 12000 B");
    assert!(getfattr(&m.mnt, "user.genfs.gc").unwrap().contains("/kept/f\t"));
    let err = xattr::set(&d, "user.genfs.retention", b"keep-forever").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn save_by_rename_keeps_one_history() {
    let m = Mounted::new("editor");
    let f = m.path("doc.txt");
    write_file(&f, b"v1\n").unwrap();
    let tmp = m.path("doc.txt.tmp");
    write_file(&tmp, b"v2\n").unwrap();
    std::fs::rename(&tmp, &f).unwrap();
    let log = log_of(&f);
    let contents: Vec<Vec<u8>> = log.iter().map(|(_, rp)| std::fs::read(m.mnt.join(rp)).unwrap()).collect();
    assert_eq!(contents, vec![b"v1\n".to_vec(), b"v2\n".to_vec()]);
    if Path::new("/usr/bin/vim").exists() {
        let cmd = format!(
            "vim -u NONE -i NONE -n -es -c 'set backupcopy=no' -c '%s/v2/v3/' -c wq '{}'",
            f.display()
        );
        assert!(sh(&cmd).0, "vim failed");
        assert_eq!(std::fs::read(&f).unwrap(), b"v3\n");
        assert_eq!(log_of(&f).len(), 3, "vim's save broke the history");
    } else {
        eprintln!("vim not installed: editor part skipped");
    }
}

/// Runs `cmd` in a shell as the user nobody: (exit ok, stdout and stderr).
fn as_nobody(cmd: &str) -> (bool, String) {
    let out =
        std::process::Command::new("runuser").args(["-u", "nobody", "--", "sh", "-c", cmd]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn history_is_as_private_as_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new("private");
    let chmod =
        |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    let d = m.path("home");
    std::fs::create_dir(&d).unwrap();
    let f = d.join("notes");
    write_file(&f, b"old secret\n").unwrap();
    write_file(&f, b"new secret\n").unwrap();
    chmod(&f, 0o644);
    let old = m.mnt.join(&log_of(&f)[0].1);
    let genfs = crate::util::genfs_bin();
    let cat = |p: &Path| as_nobody(&format!("cat '{}'", p.display()));

    // A 0700 directory keeps others out of the file and out of its history by number.
    chmod(&d, 0o700);
    let (ok, out) = cat(&f);
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = cat(&old);
    assert!(!ok && out.contains("Permission denied"), "history by number bypassed the directory: {out}");
    let (ok, out) = as_nobody(&format!("{genfs} cat '{}@1'", f.display()));
    assert!(!ok && out.contains("ermission denied"), "{out}");
    // Time travel walks the directories, whose current permissions apply.
    let (ok, out) = cat(&m.mnt.join(format!(".genfs/at/@{}/home/notes", seq(&m))));
    assert!(!ok && out.contains("Permission denied"), "{out}");

    // Who may read the file may read its old generations, through every interface.
    chmod(&d, 0o755);
    assert_eq!(cat(&old), (true, "old secret\n".to_string()));
    let (ok, out) = as_nobody(&format!("{genfs} cat '{}@1'", f.display()));
    assert!(ok && out == "old secret\n", "{out}");
    let (ok, out) = as_nobody(&format!("{genfs} log '{}'", f.display()));
    assert!(ok && out.lines().count() >= 2, "{out}");
    // Taking the permission back takes effect at once: the kernel cached no one's lookup.
    chmod(&d, 0o700);
    assert!(!cat(&old).0, "a cached lookup let nobody in after chmod 700");
    chmod(&d, 0o755);
    chmod(&f, 0o600);
    let (ok, out) = cat(&old);
    assert!(!ok && out.contains("Permission denied"), "{out}");

    // Control needs more: restore needs write permission, snapshots the root's owner.
    chmod(&f, 0o644);
    let (ok, out) = as_nobody(&format!("{genfs} restore '{}@1'", f.display()));
    assert!(!ok && out.contains("ermission denied"), "{out}");
    assert_eq!(std::fs::read(&f).unwrap(), b"new secret\n");
    let (ok, out) = as_nobody(&format!("{genfs} snapshot create x -C '{}'", m.mnt.display()));
    assert!(!ok, "nobody made a snapshot: {out}");
    let (ok, _) = as_nobody(&format!("setfattr -n user.genfs.snapshot.create -v x '{}'", m.mnt.display()));
    assert!(!ok, "nobody made a snapshot through the attribute");
    assert_eq!(getfattr(&m.mnt, "user.genfs.snapshots").unwrap_or_default(), "");
}

#[test]
fn gc_spares_open_snapshotted_and_unlinked_history_until_policy_drops_it() {
    let m = Mounted::new("pins");
    let d = m.path("kept");
    std::fs::create_dir(&d).unwrap();
    xattr::set(&d, "user.genfs.retention", b"keep-last=2").unwrap();
    let gc = || xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let gens = |p: &Path| log_of(p).iter().map(|(g, _)| *g).collect::<Vec<u64>>();
    let f = d.join("f");
    write_file(&f, b"g1").unwrap();
    let mut reader = std::fs::File::open(&f).unwrap();
    write_file(&f, b"g2").unwrap();
    xattr::set(&m.mnt, "user.genfs.snapshot.create", b"s").unwrap();
    for i in 3..=10 {
        write_file(&f, format!("g{i}").as_bytes()).unwrap();
    }
    // A deleted file: readable by time travel until retention drops it. Its directory keeps
    // an hour of history; counts (keep-last) do not keep a deleted file's generations.
    let trash = m.path("trash");
    std::fs::create_dir(&trash).unwrap();
    xattr::set(&trash, "user.genfs.retention", b"keep-within=1h").unwrap();
    let u = trash.join("u");
    write_file(&u, b"unlinked").unwrap();
    let before_unlink = seq(&m);
    std::fs::remove_file(&u).unwrap();
    let travelled = m.mnt.join(format!(".genfs/at/@{before_unlink}/trash/u"));

    gc();
    assert_eq!(gens(&f), [1, 2, 9, 10], "open (1), snapshot (2) and the last two");
    let mut held = String::new();
    std::io::Read::read_to_string(&mut reader, &mut held).unwrap();
    assert_eq!(held, "g1");
    assert_eq!(std::fs::read(m.mnt.join(".genfs/snapshots/s/kept/f")).unwrap(), b"g2");
    assert_eq!(std::fs::read(&travelled).unwrap(), b"unlinked");

    drop(reader);
    // The kernel sends a reader's RELEASE after close() returns: gc sees the pin go soon after.
    let unpinned = crate::util::wait_until(std::time::Duration::from_secs(10), || {
        gc();
        gens(&f) == [2, 9, 10]
    });
    assert!(unpinned, "closed: generation 1 is still pinned: {:?}", gens(&f));
    xattr::set(&m.mnt, "user.genfs.snapshot.delete", b"s").unwrap();
    gc();
    assert_eq!(gens(&f), [9, 10]);
    assert_eq!(std::fs::read(&travelled).unwrap(), b"unlinked", "keep-within=1h still keeps it");
    xattr::set(&d, "user.genfs.retention", b"keep-last=0").unwrap();
    xattr::set(&trash, "user.genfs.retention", b"keep-last=5").unwrap();
    write_file(&trash.join("v"), b"named").unwrap();
    gc();
    assert_eq!(gens(&f), [10], "the current generation is never dropped");
    let err = std::fs::read(&travelled).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    let listed: Vec<_> = std::fs::read_dir(m.mnt.join(format!(".genfs/at/@{}/trash", seq(&m))))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(listed, ["v"], "a file whose history is gone is still listed in time travel");
    let old_view: Vec<_> = std::fs::read_dir(travelled.parent().unwrap()).unwrap().collect();
    assert!(old_view.is_empty(), "the deleted file's name outlived its history");
}
