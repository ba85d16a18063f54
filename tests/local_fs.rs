//! What a local filesystem does beyond pjdfstest: fallocate limits, copy_file_range, mount
//! options, atime, ACLs and file attributes (issue 13), each compared with what ext4 does.

use crate::util::{errno_of, sh, write_file, Mounted};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fallocate(f: &File, offset: u64, len: u64) -> Result<(), i32> {
    // SAFETY: fallocate on a valid descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(last_errno())
    }
}

fn copy_range(from: &File, off_in: u64, to: &File, off_out: u64, len: usize) -> Result<usize, i32> {
    let (mut off_in, mut off_out) = (off_in as i64, off_out as i64);
    // SAFETY: copy_file_range on valid descriptors with offsets we own.
    let n =
        unsafe { libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, len, 0) };
    if n < 0 {
        Err(last_errno())
    } else {
        Ok(n as usize)
    }
}

#[test]
fn fallocate_beyond_free_space_is_enospc() {
    let m = Mounted::new("fallocate");
    let p = m.path("f");
    write_file(&p, b"kept").unwrap();
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    // SAFETY: a zeroed statvfs is a valid value for statvfs to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let store = std::ffi::CString::new(m.store.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path and a struct we own.
    assert_eq!(unsafe { libc::statvfs(store.as_ptr(), &mut st) }, 0);
    let free = st.f_bavail * st.f_frsize;
    assert_eq!(fallocate(&f, 0, free + (1 << 40)), Err(libc::ENOSPC));
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 4, "a refused fallocate changed the size");
    // What fits is allocated (the size grows, the data stays).
    assert_eq!(fallocate(&f, 0, 1 << 20), Ok(()));
    drop(f);
    let data = std::fs::read(&p).unwrap();
    assert_eq!((data.len(), &data[..4]), (1 << 20, &b"kept"[..]));
}

#[test]
fn copy_file_range_within_a_file_refuses_overlap() {
    let m = Mounted::new("copyrange");
    let p = m.path("f");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&p, &data).unwrap();
    // A reader and a writer of one file: two descriptors, two kernel nodes, one file.
    let reader = File::open(&p).unwrap();
    let writer = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    assert_eq!(copy_range(&reader, 0, &writer, 1000, 5000), Err(libc::EINVAL));
    assert_eq!(copy_range(&writer, 1000, &writer, 0, 5000), Err(libc::EINVAL));
    // Disjoint ranges of one file copy.
    assert_eq!(copy_range(&reader, 0, &writer, 200_000, 100_000), Ok(100_000));
    // Across files, up to the end of the source.
    let q = m.path("g");
    let other = OpenOptions::new().write(true).create(true).truncate(true).open(&q).unwrap();
    assert_eq!(copy_range(&reader, 250_000, &other, 10, 1 << 20), Ok(50_000));
    drop((reader, writer, other));
    let mut expected = data.clone();
    expected.copy_within(0..100_000, 200_000);
    assert!(std::fs::read(&p).unwrap() == expected, "copy within the file went wrong");
    let copied = std::fs::read(&q).unwrap();
    assert_eq!(copied.len(), 50_010);
    assert!(copied[..10] == [0; 10] && copied[10..] == data[250_000..]);
    // cp of an old generation onto the file itself: a version view is another file.
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).unwrap());
    let view = m.mnt.join(format!(".genfs/gen/{ino}/1"));
    let (ok, _) = sh(&format!("cp '{}' '{}'", view.display(), p.display()));
    assert!(ok, "cp from a version view");
    assert!(std::fs::read(&p).unwrap() == data);
}

/// Chunk files in the store: what a copy by reference must not add to.
fn chunk_files(m: &Mounted) -> usize {
    let (ok, out) = sh(&format!("find '{}' -type f | wc -l", m.store.join("chunks").display()));
    assert!(ok);
    out.trim().parse().unwrap()
}

/// A copy shares the source's chunks (issue 15): `cp --reflink=auto` (which falls back to
/// copy_file_range here) and copy_file_range at slot boundaries add no chunk, even for a slot
/// an edit split into pieces (a byte copy would store that slot whole, as a new chunk). The
/// copy keeps its data when the source is rewritten and gc drops every old generation, also
/// while the copy is still open and uncommitted.
#[test]
fn copies_share_chunks_and_outlive_the_source() {
    const MIB: usize = 1 << 20;
    let mut m = Mounted::new("reflink");
    let src = m.path("src");
    let mut data: Vec<u8> = (0..3 * MIB + 100_000).map(|i| (i * 7 % 253) as u8).collect();
    write_file(&src, &data).unwrap();
    // An edit inside slot 1: that slot becomes pieces.
    let edit = OpenOptions::new().write(true).open(&src).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&edit, &[0xEE; 4096], (MIB + 8192) as u64).unwrap();
    drop(edit);
    data[MIB + 8192..MIB + 12288].fill(0xEE);
    let chunks = chunk_files(&m);

    let (ok, out) = sh(&format!("cp --reflink=auto '{}' '{}'", src.display(), m.path("cp").display()));
    assert!(ok, "cp: {out}");
    assert!(std::fs::read(m.path("cp")).unwrap() == data, "cp copied other bytes");
    assert_eq!(chunk_files(&m), chunks, "cp stored chunks of its own");

    // Into the middle of a bigger file: whole slots are shared, the source's last, partial
    // slot is copied byte by byte (the target's bytes after it stay).
    let big = m.path("big");
    write_file(&big, &vec![0x55; 5 * MIB]).unwrap();
    let reader = File::open(&src).unwrap();
    let target = OpenOptions::new().write(true).open(&big).unwrap();
    assert_eq!(copy_range(&reader, 0, &target, MIB as u64, data.len()), Ok(data.len()));
    drop(target);
    let mut expected = vec![0x55; 5 * MIB];
    expected[MIB..MIB + data.len()].copy_from_slice(&data);
    assert!(std::fs::read(&big).unwrap() == expected, "copy into a bigger file went wrong");
    drop(reader);

    // Copied but not yet closed when the source is rewritten and gc keeps only current
    // generations: the copy's chunks (which nothing else shares) are kept for it.
    let lone = m.path("lone");
    let lone_data: Vec<u8> = (0..2 * MIB).map(|i| (i * 13 % 251) as u8).collect();
    write_file(&lone, &lone_data).unwrap();
    let reader = File::open(&lone).unwrap();
    let open_copy = m.path("open-copy");
    let target = OpenOptions::new().write(true).create(true).truncate(true).open(&open_copy).unwrap();
    assert_eq!(copy_range(&reader, 0, &target, 0, lone_data.len()), Ok(lone_data.len()));
    drop(reader);
    xattr::set(&m.mnt, "user.genfs.retention", b"keep-last=0").unwrap();
    write_file(&lone, b"rewritten").unwrap();
    // The kernel forgets the source's old node, which would keep its generation too.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let report = crate::util::getfattr(&m.mnt, "user.genfs.gc").unwrap();
    assert!(!report.contains("dropped 0 generations"), "gc dropped nothing: {report}");
    drop(target);
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    m.unmount();
    let out = Command::new(crate::util::genfs_bin()).arg("fsck").arg(&m.store).output().unwrap();
    assert!(out.status.success(), "fsck after copies: {}", String::from_utf8_lossy(&out.stdout));
    m.mount();
    for (name, want) in [("src", &data), ("cp", &data), ("big", &expected), ("open-copy", &lone_data)] {
        assert!(std::fs::read(m.path(name)).unwrap() == *want, "{name} lost its data");
    }
    assert_eq!(std::fs::read(&lone).unwrap(), b"rewritten");
}

#[test]
fn mount_right_after_an_unmount_waits_for_the_old_daemon() {
    let mut m = Mounted::new("remount-at-once");
    write_file(&m.path("f"), b"one").unwrap();
    // A second mount while the store is mounted: refused at once, naming the mount.
    let second = tempfile::tempdir().unwrap();
    let out = Command::new(crate::util::genfs_bin())
        .arg("mount")
        .arg(&m.store)
        .arg(second.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("in use by another genfs daemon"), "{text}");
    assert!(text.contains(m.mnt.to_str().unwrap()), "{text}");

    // umount, then mount at once (the old daemon may still be closing the store).
    let mut old = m.take_daemon().unwrap();
    assert!(sh(&format!("umount '{}'", m.mnt.display())).0);
    m.mount();
    assert!(old.wait().unwrap().success());
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"one");

    // umount -l with a file still open: the old daemon serves it until it is closed; the new
    // mount waits for that.
    let held = File::open(m.path("f")).unwrap();
    let mut old = m.take_daemon().unwrap();
    assert!(sh(&format!("umount -l '{}'", m.mnt.display())).0);
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let mut buf = [0u8; 3];
        std::os::unix::fs::FileExt::read_exact_at(&held, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"one", "the lazily unmounted daemon stopped serving its open file");
    });
    m.mount();
    closer.join().unwrap();
    assert!(old.wait().unwrap().success());
    let log = std::fs::read_to_string(m.store.with_extension("log")).unwrap();
    assert!(log.contains("waiting for genfs daemon pid"), "{log}");
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"one");
}

/// `genfs mount -o remount,OPTS` of the test's mount; the daemon follows within a poll.
fn remount(m: &Mounted, opts: &str) {
    let out = Command::new(crate::util::genfs_bin())
        .arg("mount")
        .arg(&m.store)
        .arg(&m.mnt)
        .args(["-o", &format!("remount,{opts}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "remount,{opts}: {}", String::from_utf8_lossy(&out.stderr));
    // The daemon reads mountinfo five times a second.
    std::thread::sleep(Duration::from_millis(600));
}

fn atime_of(p: &std::path::Path) -> (i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.atime(), m.atime_nsec())
}

/// Sets atime an hour back (ctime becomes now).
fn age_atime(p: &std::path::Path) {
    assert!(sh(&format!("touch -a -d '-1 hour' '{}'", p.display())).0);
}

fn read_all(p: &std::path::Path) {
    std::fs::read(p).unwrap();
}

#[test]
fn reads_update_atime_as_the_mount_says() {
    let m = Mounted::new("atime");
    let (f, d) = (m.path("f"), m.path("d"));
    write_file(&f, b"content").unwrap();
    std::fs::create_dir(&d).unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;

    // relatime (the default): a read after a change of the file or its status sets atime; a
    // second read does not.
    age_atime(&f);
    let aged = atime_of(&f);
    read_all(&f);
    let read = atime_of(&f);
    assert!(read.0 >= now() - 5, "relatime: a read after a change left atime at {aged:?}");
    std::thread::sleep(Duration::from_millis(20));
    read_all(&f);
    assert_eq!(atime_of(&f), read, "relatime: a second read moved atime");
    age_atime(&d);
    std::fs::read_dir(&d).unwrap().for_each(drop);
    assert!(atime_of(&d).0 >= now() - 5, "relatime: listing a directory left its atime");

    // strictatime: every read.
    remount(&m, "strictatime");
    let before = atime_of(&f);
    std::thread::sleep(Duration::from_millis(20));
    read_all(&f);
    assert!(atime_of(&f) > before, "strictatime: a read left atime");

    // nodiratime: files yes, directories no.
    remount(&m, "nodiratime");
    age_atime(&d);
    let aged = atime_of(&d);
    std::fs::read_dir(&d).unwrap().for_each(drop);
    assert_eq!(atime_of(&d), aged, "nodiratime: listing moved the directory's atime");

    // noatime: never; reads never change ctime either.
    remount(&m, "noatime,diratime");
    age_atime(&f);
    let (aged, ctime) = (atime_of(&f), std::fs::metadata(&f).unwrap().ctime_nsec());
    read_all(&f);
    assert_eq!(atime_of(&f), aged, "noatime: a read moved atime");
    assert_eq!(std::fs::metadata(&f).unwrap().ctime_nsec(), ctime);

    // Back to relatime; and a read-only mount never writes atime.
    remount(&m, "relatime,ro");
    read_all(&f);
    assert_eq!(atime_of(&f), aged, "ro: a read moved atime");
    remount(&m, "rw");
    read_all(&f);
    assert!(atime_of(&f).0 >= now() - 5, "relatime after ro: no update");
}

/// Runs tests/data/acl-sequence.sh in `dir` (mode 755, so that nobody may enter); its output.
fn acl_sequence(dir: &std::path::Path) -> String {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/acl-sequence.sh");
    let out = Command::new("sh").arg(script).current_dir(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "acl sequence in {}:\n{text}", dir.display());
    text
}

/// POSIX ACLs behave as on ext4: the same setfacl, chmod, create and access steps give the
/// same modes, ACLs and verdicts on a genfs mount as in a directory of the host filesystem.
#[test]
fn posix_acls_behave_as_on_ext4() {
    if !sh("command -v setfacl && command -v runuser").0 {
        assert!(std::env::var_os("CI").is_none(), "setfacl is missing (.ci/run installs acl)");
        eprintln!("SKIPPED: setfacl (package acl) or runuser missing");
        return;
    }
    let host = tempfile::tempdir().unwrap();
    if !sh(&format!("touch '{0}/probe' && setfacl -m u:65534:r '{0}/probe'", host.path().display())).0 {
        eprintln!(
            "SKIPPED: the host filesystem of {} has no POSIX ACLs to compare with",
            host.path().display()
        );
        return;
    }
    std::fs::remove_file(host.path().join("probe")).unwrap();
    let expected = acl_sequence(host.path());
    let m = Mounted::new("acl");
    let got = acl_sequence(&m.mnt);
    if got != expected {
        let diff = got.lines().zip(expected.lines()).position(|(a, b)| a != b).unwrap_or(0);
        let around = |t: &str| t.lines().skip(diff.saturating_sub(8)).take(16).collect::<Vec<_>>().join("\n");
        panic!(
            "genfs differs from the host at line {}:\n--- host\n{}\n--- genfs\n{}",
            diff + 1,
            around(&expected),
            around(&got)
        );
    }
    // Only ACLs the mode cannot say are kept, and listed like any xattr.
    let names: Vec<_> = xattr::list(m.path("f")).unwrap().collect();
    assert!(names.is_empty(), "f after setfacl -b: {names:?}");
    let names: Vec<_> = xattr::list(m.path("d")).unwrap().collect();
    assert_eq!(names, ["system.posix_acl_default"]);
    // History is as private as the file, by its ACL too: who the ACL lets read the file reads
    // its old generations, and only they.
    let p = m.path("private");
    write_file(&p, b"old").unwrap();
    write_file(&p, b"new").unwrap();
    let ino = std::fs::metadata(&p).unwrap().ino();
    let old = m.mnt.join(format!(".genfs/gen/{ino}/1"));
    let as_nobody_cat = |f: &std::path::Path| sh(&format!("runuser -u nobody -- cat '{}'", f.display()));
    assert!(sh(&format!("chmod 600 '{0}' && setfacl -m u:nobody:r '{0}'", p.display())).0);
    assert_eq!(as_nobody_cat(&old), (true, "old".to_string()), "the ACL's reader cannot read history");
    assert!(sh(&format!("setfacl -m u:nobody:- '{}'", p.display())).0);
    assert!(!as_nobody_cat(&p).0 && !as_nobody_cat(&old).0, "history readable after the ACL took it back");
    // A directory whose ACL keeps nobody out keeps them out of its files' history by number.
    let shut = m.path("shut");
    std::fs::create_dir(&shut).unwrap();
    let inside = shut.join("f");
    write_file(&inside, b"old").unwrap();
    write_file(&inside, b"new").unwrap();
    let ino = std::fs::metadata(&inside).unwrap().ino();
    let by_number = m.mnt.join(format!(".genfs/gen/{ino}/1"));
    assert_eq!(as_nobody_cat(&by_number), (true, "old".to_string()));
    assert!(sh(&format!("chmod 755 '{0}' && setfacl -m u:nobody:- '{0}'", shut.display())).0);
    assert!(!as_nobody_cat(&inside).0, "the directory's ACL did not keep nobody out");
    assert!(!as_nobody_cat(&by_number).0, "history by number bypassed the directory's ACL");
}

/// chattr +i, +a and +d are kept and enforced as on ext4; lsattr shows them.
#[test]
fn immutable_append_only_and_nodump() {
    let m = Mounted::new("chattr");
    let (f, d) = (m.path("f"), m.path("d"));
    write_file(&f, b"one").unwrap();
    std::fs::create_dir(&d).unwrap();
    write_file(&d.join("inside"), b"x").unwrap();
    let chattr = |flags: &str, p: &std::path::Path| sh(&format!("chattr {flags} '{}'", p.display())).0;
    let lsattr = |p: &std::path::Path| sh(&format!("lsattr -d '{}'", p.display())).1;

    assert!(chattr("+i", &f));
    assert!(lsattr(&f).split_whitespace().next().unwrap().contains('i'), "{}", lsattr(&f));
    let eperm = libc::EPERM;
    assert_eq!(errno_of(OpenOptions::new().write(true).open(&f)), eperm, "open for writing");
    assert_eq!(errno_of(OpenOptions::new().append(true).open(&f)), eperm, "open for appending");
    assert_eq!(errno_of(std::fs::remove_file(&f)), eperm, "unlink");
    assert_eq!(errno_of(std::fs::rename(&f, m.path("g"))), eperm, "rename");
    assert_eq!(errno_of(std::fs::hard_link(&f, m.path("h"))), eperm, "link");
    let perms = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    assert_eq!(errno_of(std::fs::set_permissions(&f, perms)), eperm, "chmod");
    assert_eq!(errno_of(xattr::set(&f, "user.x", b"1")), eperm, "setxattr");
    assert!(!sh(&format!("touch '{}'", f.display())).0, "touch");
    // No new generation either, not even a restore of an old one.
    assert_eq!(errno_of(xattr::set(&f, "user.genfs.restore", b"1")), eperm, "restore");
    assert_eq!(std::fs::read(&f).unwrap(), b"one");
    // A writer opened before +i writes no more after it.
    assert!(chattr("-i", &f));
    let mut w = OpenOptions::new().write(true).open(&f).unwrap();
    assert!(chattr("+i", &f));
    assert_eq!(errno_of(std::io::Write::write_all(&mut w, b"two")), eperm, "write after +i");
    drop(w);
    assert!(chattr("-i", &f));
    assert!(!lsattr(&f).split_whitespace().next().unwrap().contains('i'));
    write_file(&f, b"two").unwrap();

    // Append-only: appends work, nothing else.
    assert!(chattr("+a", &f));
    let mut a = OpenOptions::new().append(true).open(&f).unwrap();
    std::io::Write::write_all(&mut a, b"+three").unwrap();
    drop(a);
    assert_eq!(std::fs::read(&f).unwrap(), b"two+three");
    assert_eq!(errno_of(OpenOptions::new().write(true).open(&f)), eperm, "open without O_APPEND");
    let append_trunc =
        std::os::unix::fs::OpenOptionsExt::custom_flags(OpenOptions::new().append(true), libc::O_TRUNC)
            .open(&f);
    assert_eq!(errno_of(append_trunc), eperm, "O_APPEND|O_TRUNC");
    assert_eq!(errno_of(File::open(&f).and_then(|_| OpenOptions::new().write(true).open(&f))), eperm);
    assert_eq!(errno_of(std::fs::remove_file(&f)), eperm, "unlink of append-only");
    assert!(sh(&format!("touch '{}'", f.display())).0, "touch (times to now) is allowed");
    assert!(chattr("-a", &f));

    // Directories: +i keeps entries from coming and going; +a lets them come only.
    assert!(chattr("+i", &d));
    assert_eq!(errno_of(File::create(d.join("new"))), eperm, "create in +i dir");
    assert_eq!(errno_of(std::fs::remove_file(d.join("inside"))), eperm, "unlink in +i dir");
    assert!(chattr("-i", &d) && chattr("+a", &d));
    write_file(&d.join("new"), b"y").unwrap();
    assert_eq!(errno_of(std::fs::remove_file(d.join("new"))), eperm, "unlink in +a dir");
    assert!(chattr("-a", &d));

    // nodump is kept; flags genfs has no use for are refused.
    assert!(chattr("+d", &f));
    assert!(lsattr(&f).split_whitespace().next().unwrap().contains('d'));
    assert!(!chattr("+c", &f), "chattr +c (compression) accepted");
    // The flags survive a remount and are nobody's xattr.
    let mut m = m;
    m.remount();
    assert!(lsattr(&f).split_whitespace().next().unwrap().contains('d'));
    let names: Vec<_> = xattr::list(&f).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
    assert!(xattr::get(&f, "genfs.fileattr").unwrap().is_none());
    assert!(xattr::set(&f, "genfs.fileattr", &[0; 4]).is_err());
}
