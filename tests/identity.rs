//! One file, one identity (issue 10): whichever kernel node a name or a descriptor of a file
//! sits on (genfs gives each generation being read and the writers their own), the file shows
//! one inode number, one set of attributes at once, one set of locks and one shared mapping.

use crate::util::{fcntl_lock, sh, write_file, Mounted};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn nlink(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().nlink()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn rw(path: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(path).unwrap()
}

/// d_ino of `name` in a listing of `dir`.
fn d_ino(dir: &Path, name: &str) -> u64 {
    use std::os::unix::fs::DirEntryExt;
    let entry = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).find(|e| e.file_name() == name);
    entry.expect("listed").ino()
}

/// st_ino is the file's for its whole life: on every name, descriptor (reader of an old
/// generation, writer) and listing, through commits, renames, restores and remounts, and a
/// number is never given to another file.
#[test]
fn a_file_keeps_one_inode_number_for_life() {
    let mut m = Mounted::new("ino-life");
    let path = m.path("f");
    write_file(&path, b"one").unwrap();
    let first = ino(&path);
    let reader = File::open(&path).unwrap();
    let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all(b"two, longer").unwrap();
    assert_eq!(writer.metadata().unwrap().ino(), first, "a writer's descriptor");
    assert_eq!(ino(&path), first, "the path while a writer has a draft");
    drop(writer);
    assert_eq!(ino(&path), first, "after a commit");
    assert_eq!(reader.metadata().unwrap().ino(), first, "a descriptor of an older generation");
    assert_eq!(reader.metadata().unwrap().len(), 3, "which keeps its generation's size (G2)");
    assert_eq!(d_ino(&m.mnt, "f"), first, "readdir");
    let (ok, out) = sh(&format!("stat -c %i '{}'", path.display()));
    assert!(ok);
    assert_eq!(out.trim(), first.to_string(), "stat(1)");
    std::fs::rename(&path, m.path("g")).unwrap();
    let path = m.path("g");
    assert_eq!(ino(&path), first, "after a rename");
    xattr::set(&path, "user.genfs.restore", b"1").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"one");
    assert_eq!(ino(&path), first, "after a restore");
    drop(reader);
    let mut seen = HashSet::from([first]);
    for i in 0..20 {
        let other = m.path(&format!("other{i}"));
        write_file(&other, b"x").unwrap();
        assert!(seen.insert(ino(&other)), "a number given twice");
        std::fs::remove_file(&other).unwrap();
    }
    m.remount();
    assert_eq!(ino(&path), first, "after a remount");
    for i in 0..5 {
        let fresh = m.path(&format!("fresh{i}"));
        write_file(&fresh, b"y").unwrap();
        assert!(seen.insert(ino(&fresh)), "a deleted file's number given again after a remount");
    }
}

/// Hard links of a never-written file, of a file with an open writer, and across a rename:
/// one inode, one link count, one mode, through every name and descriptor, at once.
#[test]
fn hard_links_show_one_file_at_once() {
    let m = Mounted::new("hardlinks");
    let (a, b, c, d) = (m.path("a"), m.path("b"), m.path("c"), m.path("d"));
    File::create(&a).unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    assert_eq!(ino(&a), ino(&b));
    assert_eq!((nlink(&a), nlink(&b)), (2, 2));
    chmod(&b, 0o600);
    assert_eq!(mode(&a), 0o600, "chmod through one name, seen through the other");

    let mut writer = rw(&a);
    writer.write_all(b"draft").unwrap();
    let reader = File::open(&b).unwrap();
    std::fs::hard_link(&b, &c).unwrap();
    for (what, n) in [("a", nlink(&a)), ("c", nlink(&c))] {
        assert_eq!(n, 3, "{what}");
    }
    assert_eq!(writer.metadata().unwrap().nlink(), 3, "the writer's descriptor");
    assert_eq!(reader.metadata().unwrap().nlink(), 3, "a reader's descriptor");
    chmod(&c, 0o640);
    assert_eq!(writer.metadata().unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(reader.metadata().unwrap().permissions().mode() & 0o7777, 0o640);
    assert_eq!(mode(&a), 0o640);

    std::fs::rename(&b, &d).unwrap();
    assert_eq!((ino(&d), nlink(&d)), (ino(&a), 3), "across a rename");
    std::fs::remove_file(&c).unwrap();
    assert_eq!(writer.metadata().unwrap().nlink(), 2);
    assert_eq!(reader.metadata().unwrap().nlink(), 2);
    assert_eq!((nlink(&a), nlink(&d)), (2, 2));
    drop(writer);
    assert_eq!(std::fs::read(&d).unwrap(), b"draft");
    assert_eq!(reader.metadata().unwrap().ino(), ino(&d));
}

/// ctime moves on link and unlink, and the descriptor of a file whose last name went (by
/// unlink, or by a rename over it) says nlink 0.
#[test]
fn link_unlink_and_rename_over_show_on_open_descriptors() {
    let m = Mounted::new("ctime");
    let (a, b) = (m.path("a"), m.path("b"));
    write_file(&a, b"a").unwrap();
    let ctime = |f: &File| {
        let md = f.metadata().unwrap();
        (md.ctime(), md.ctime_nsec())
    };
    let reader = File::open(&a).unwrap();
    let before = ctime(&reader);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::hard_link(&a, &b).unwrap();
    let linked = ctime(&reader);
    assert!(linked > before, "link did not move ctime: {before:?} {linked:?}");
    std::thread::sleep(Duration::from_millis(20));
    std::fs::remove_file(&b).unwrap();
    assert!(ctime(&reader) > linked, "unlink did not move ctime");

    let writer = rw(&a);
    write_file(&b, b"replacement").unwrap();
    std::fs::rename(&b, &a).unwrap();
    assert_eq!(reader.metadata().unwrap().nlink(), 0, "reader of a file renamed over");
    assert_eq!(writer.metadata().unwrap().nlink(), 0, "writer of a file renamed over");
    let victim = m.path("victim");
    write_file(&victim, b"v").unwrap();
    let open = File::open(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    assert_eq!(open.metadata().unwrap().nlink(), 0, "unlinked while open");
}

/// A handle from name_to_handle_at names the file for its life: after its generations
/// changed, after the kernel dropped its inodes, and after a remount, open_by_handle_at opens
/// it (its current generation); once the file is gone, ESTALE.
#[test]
fn file_handles_stay_valid_for_the_files_life() {
    let mut m = Mounted::new("handles");
    let path = m.path("h");
    write_file(&path, b"v1").unwrap();
    let handle = FileHandle::of(&path);
    for v in 2..=4 {
        write_file(&path, format!("v{v}").as_bytes()).unwrap();
    }
    drop_kernel_caches();
    assert_eq!(handle.read(&m.mnt).unwrap(), b"v4");
    m.remount();
    drop_kernel_caches();
    assert_eq!(handle.read(&m.mnt).unwrap(), b"v4", "after a remount");
    std::fs::remove_file(&path).unwrap();
    drop_kernel_caches();
    let gone = handle.read(&m.mnt).unwrap_err();
    assert_eq!(gone.raw_os_error(), Some(libc::ESTALE), "{gone}");
}

fn drop_kernel_caches() {
    // Unused dentries and inodes, so the kernel must ask the daemon to decode the handle.
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// struct file_handle with room for any handle.
struct FileHandle {
    buf: Vec<u64>,
}

impl FileHandle {
    const BYTES_MAX: usize = 128;

    fn of(path: &Path) -> FileHandle {
        let mut buf = vec![0u64; 1 + Self::BYTES_MAX / 8];
        let header = buf.as_mut_ptr() as *mut libc::c_uint;
        // SAFETY: the buffer starts with file_handle's handle_bytes field, and has room for
        // BYTES_MAX bytes of f_handle after the 8-byte header.
        unsafe { *header = Self::BYTES_MAX as libc::c_uint };
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut mount_id: libc::c_int = 0;
        // SAFETY: valid path string, handle buffer as above, and mount id out pointer.
        let rc = unsafe {
            libc::name_to_handle_at(libc::AT_FDCWD, c.as_ptr(), buf.as_mut_ptr().cast(), &mut mount_id, 0)
        };
        assert_eq!(rc, 0, "name_to_handle_at: {}", std::io::Error::last_os_error());
        FileHandle { buf }
    }

    fn read(&self, mnt: &Path) -> std::io::Result<Vec<u8>> {
        let mount = File::open(mnt)?;
        // SAFETY: the buffer holds a handle filled in by name_to_handle_at.
        let fd = unsafe {
            libc::open_by_handle_at(mount.as_raw_fd(), self.buf.as_ptr() as *mut _, libc::O_RDONLY)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor we own from here on.
        let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        Ok(data)
    }
}

/// xfstests generic/736: every entry read is renamed away and back while the listing goes on.
/// Names keep their place in readdir order, so each comes back exactly once (as on ext4).
#[test]
fn a_listing_during_renames_returns_each_entry_once() {
    let m = Mounted::new("readdir-renames");
    let dir = m.path("d");
    std::fs::create_dir(&dir).unwrap();
    const FILES: usize = 2000;
    for i in 0..FILES {
        File::create(dir.join(i.to_string())).unwrap();
    }
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name();
        let from = dir.join(&name);
        std::fs::rename(&from, dir.join("TEMPFILE")).unwrap();
        std::fs::rename(dir.join("TEMPFILE"), &from).unwrap();
        seen.push(name);
        assert!(seen.len() <= 3 * FILES, "the listing does not end");
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), FILES, "names missing");
    assert_eq!(seen.len(), FILES, "names listed more than once");
}

/// Threads write one file at once, half through shared mappings and half with pwrite(2), each
/// into slots of its own that share pages with the others' slots: no byte is lost to a stale
/// page of another writer (all writers share one node, so one page cache).
#[test]
fn mapped_and_written_bytes_of_concurrent_writers_all_land() {
    let m = Mounted::new("mmap-write");
    let path = m.path("shared");
    const SLOT: usize = 512;
    const SLOTS: usize = 512;
    const WRITERS: usize = 4;
    const ROUNDS: u8 = 20;
    std::fs::write(&path, vec![0u8; SLOT * SLOTS]).unwrap();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let file = rw(&path);
            s.spawn(move || {
                let mut map = (w % 2 == 0).then(|| {
                    // SAFETY: the file is not truncated while mapped (this test owns it).
                    unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap()
                });
                for round in 1..=ROUNDS {
                    for slot in (w..SLOTS).step_by(WRITERS) {
                        let bytes = [round.wrapping_mul(16) | w as u8; SLOT];
                        match map.as_mut() {
                            Some(map) => map[slot * SLOT..][..SLOT].copy_from_slice(&bytes),
                            None => file.write_all_at(&bytes, (slot * SLOT) as u64).unwrap(),
                        }
                    }
                }
                if let Some(map) = map {
                    map.flush().unwrap();
                }
            });
        }
    });
    let data = std::fs::read(&path).unwrap();
    for slot in 0..SLOTS {
        let want = ROUNDS.wrapping_mul(16) | (slot % WRITERS) as u8;
        let got = &data[slot * SLOT..][..SLOT];
        assert!(got.iter().all(|&b| b == want), "slot {slot}: {:?} instead of {want}", &got[..8]);
    }
}

const HELPER_ENV: &str = "GENFS_IDENTITY_HELPER";

/// Not a test on its own: the second process of the tests below, told what to do by
/// `GENFS_IDENTITY_HELPER=mode:path`.
#[test]
#[ignore = "helper process for the identity tests"]
fn identity_helper_process() {
    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let (mode, path) = spec.split_once(':').unwrap();
    let path = Path::new(path);
    match mode {
        // Map the file, store a marker, wait to see the other process's marker.
        "map" => {
            let file = rw(path);
            // SAFETY: the file is not truncated while mapped.
            let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
            map[..5].copy_from_slice(b"child");
            let seen = wait_for(|| &map[100..106] == b"parent");
            std::process::exit(if seen { 0 } else { 1 });
        }
        // Try a lock of each kind on an fd of our own: 10 if all three conflict.
        "trylocks" => {
            let f = rw(path);
            let posix = !fcntl_lock(&f, libc::F_SETLK, libc::F_WRLCK, 0, 0);
            let ofd = !fcntl_lock(&f, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0);
            // SAFETY: valid descriptor.
            let flock = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0;
            std::process::exit(if posix && ofd && flock { 10 } else { 11 });
        }
        // Hold byte 1, wait a moment, then ask for byte 0 (which the parent holds while waiting
        // for byte 1): exit with the errno.
        "deadlock" => {
            let f = rw(path);
            assert!(fcntl_lock(&f, libc::F_SETLK, libc::F_WRLCK, 1, 1));
            std::fs::write(path.with_extension("ready"), b"").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let got = fcntl_lock(&f, libc::F_SETLKW, libc::F_WRLCK, 0, 1);
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            std::process::exit(if got { 0 } else { errno });
        }
        // Block on a lock the parent holds, in the way named by the suffix.
        wait => {
            let f = rw(path);
            let interrupted = |r: bool| {
                if !r && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    4
                } else {
                    3
                }
            };
            if wait.ends_with("handled") {
                // Without SA_RESTART (which signal(3) sets), the wait ends with EINTR, as on a
                // local filesystem; with it, the kernel restarts the wait.
                // SAFETY: a zeroed sigaction with a handler that does nothing, flags 0.
                unsafe {
                    let mut action: libc::sigaction = std::mem::zeroed();
                    action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
                    libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut());
                }
            }
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            std::fs::write(path.with_extension("ready"), tid.to_string()).unwrap();
            let code = match wait.trim_end_matches("-handled") {
                "posix" => interrupted(fcntl_lock(&f, libc::F_SETLKW, libc::F_WRLCK, 0, 0)),
                "ofd" => interrupted(fcntl_lock(&f, libc::F_OFD_SETLKW, libc::F_WRLCK, 0, 0)),
                // SAFETY: valid descriptor.
                _ => interrupted(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0),
            };
            std::process::exit(code);
        }
    }
}

extern "C" fn on_signal(_: libc::c_int) {}

fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn helper(mode: &str, path: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "identity::identity_helper_process", "--ignored", "--nocapture", "-q"])
        .env(HELPER_ENV, format!("{mode}:{}", path.display()));
    cmd
}

/// Two processes mapping one file MAP_SHARED through descriptors of their own see each other's
/// stores at once, and write(2) through a third descriptor shows in the mappings.
#[test]
fn shared_mappings_are_one_among_all_writers() {
    let m = Mounted::new("map-shared");
    let path = m.path("map");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let file = rw(&path);
    // SAFETY: the file is not truncated while mapped.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let mut child = helper("map", &path).spawn().unwrap();
    assert!(wait_for(|| &map[..5] == b"child"), "the other process's store never showed");
    map[100..106].copy_from_slice(b"parent");
    assert!(child.wait().unwrap().success(), "the other process never saw this one's store");
    rw(&path).write_all_at(b"write(2)", 200).unwrap();
    assert_eq!(&map[200..208], b"write(2)", "a write through another descriptor");
    map.flush().unwrap();
    drop(map);
    drop(file);
    let data = std::fs::read(&path).unwrap();
    assert_eq!(
        (&data[..5], &data[100..106], &data[200..208]),
        (&b"child"[..], &b"parent"[..], &b"write(2)"[..])
    );
}

/// fcntl, OFD and flock locks held through a read-only descriptor (a reader node) conflict
/// with another process's requests through a writable one (the writer node).
#[test]
fn locks_conflict_across_every_descriptor_of_a_file() {
    let m = Mounted::new("lock-nodes");
    let path = m.path("lk");
    write_file(&path, b"locked").unwrap();
    let reader = File::open(&path).unwrap();
    // A read lock suffices to conflict with the other process's write locks.
    assert!(fcntl_lock(&reader, libc::F_SETLK, libc::F_RDLCK, 0, 0));
    let ofd = File::open(&path).unwrap();
    assert!(fcntl_lock(&ofd, libc::F_OFD_SETLK, libc::F_RDLCK, 0, 0));
    let flocked = File::open(&path).unwrap();
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::flock(flocked.as_raw_fd(), libc::LOCK_SH) }, 0);
    let st = helper("trylocks", &path).status().unwrap();
    assert_eq!(st.code(), Some(10), "a lock did not conflict");
    // Releasing them: POSIX by closing any descriptor, OFD and flock with their descriptions.
    drop((reader, ofd, flocked));
    let st = helper("trylocks", &path).status().unwrap();
    assert_eq!(st.code(), Some(11), "a lock outlived its descriptor");
}

/// Two processes each waiting for the other's record lock: one of them gets EDEADLK, as on a
/// local filesystem, instead of both hanging for good.
#[test]
fn a_lock_deadlock_gets_edeadlk() {
    let m = Mounted::new("deadlock");
    let path = m.path("lk");
    write_file(&path, b"xx").unwrap();
    let f = rw(&path);
    assert!(fcntl_lock(&f, libc::F_SETLK, libc::F_WRLCK, 0, 1));
    let mut child = helper("deadlock", &path).spawn().unwrap();
    assert!(wait_for(|| path.with_extension("ready").exists()));
    // Wait for byte 1; the child, waiting for byte 0, closes the cycle.
    let got = fcntl_lock(&f, libc::F_SETLKW, libc::F_WRLCK, 1, 1);
    let mine = std::io::Error::last_os_error().raw_os_error();
    assert!(fcntl_lock(&f, libc::F_SETLK, libc::F_UNLCK, 0, 0));
    let theirs = child.wait().unwrap().code();
    // Whoever asked last closed the cycle; the other got its lock.
    assert!(
        (got && theirs == Some(libc::EDEADLK)) || (!got && mine == Some(libc::EDEADLK) && theirs == Some(0)),
        "mine: {got} {mine:?}, theirs: {theirs:?}"
    );
}

/// A process blocked on a lock (fcntl, OFD, flock) ends when a signal comes: SIGKILL and
/// SIGTERM kill it, a handled signal makes the wait fail with EINTR. (The kernel waits for
/// the daemon's answer uninterruptibly; the daemon sees the pending signal and answers.)
#[test]
fn signals_end_lock_waits() {
    let m = Mounted::new("lock-signals");
    for wait in ["posix", "ofd", "flock"] {
        // A file per kind: OFD and POSIX locks of one process conflict, as on ext4.
        let path = m.path(wait);
        write_file(&path, b"held").unwrap();
        let holder = rw(&path);
        let held = match wait {
            "posix" => fcntl_lock(&holder, libc::F_SETLK, libc::F_WRLCK, 0, 0),
            "ofd" => fcntl_lock(&holder, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0),
            // SAFETY: valid descriptor.
            _ => (unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }) == 0,
        };
        assert!(held, "{wait}");
        for (signal, handled) in [(libc::SIGKILL, false), (libc::SIGTERM, false), (libc::SIGUSR1, true)] {
            let _ = std::fs::remove_file(path.with_extension("ready"));
            let mode = if handled { format!("{wait}-handled") } else { wait.to_string() };
            let mut child = helper(&mode, &path).spawn().unwrap();
            let ready = path.with_extension("ready");
            assert!(wait_for(|| std::fs::read_to_string(&ready).is_ok_and(|t| !t.is_empty())));
            let tid: i32 = std::fs::read_to_string(&ready).unwrap().parse().unwrap();
            std::thread::sleep(Duration::from_millis(200)); // let it block
            let start = Instant::now();
            // The signal goes to the waiting thread: sent to the process, a handled one would
            // be taken by another thread of the test harness (so on ext4 too).
            // SAFETY: signalling a thread of our own child.
            unsafe { libc::syscall(libc::SYS_tgkill, child.id() as i32, tid, signal) };
            let ended = wait_for(|| matches!(child.try_wait(), Ok(Some(_))));
            if !ended {
                let _ = child.kill();
            }
            let status = child.wait().unwrap();
            eprintln!("{wait} waiter, signal {signal}: ended after {:?} ({status})", start.elapsed());
            assert!(ended, "{wait} waiter survived signal {signal}");
            if handled {
                assert_eq!(
                    status.code(),
                    Some(4),
                    "{wait}: the handled signal did not end the wait with EINTR"
                );
            } else {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(status.signal(), Some(signal), "{wait}");
            }
        }
    }
}

/// stress-ng's lock stressors with verification, 10 s each: all pass and end on time.
#[test]
fn stress_ng_lock_stressors_pass() {
    if !Command::new("stress-ng").arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert!(std::env::var_os("CI").is_none(), "stress-ng is missing (.ci/run installs it)");
        eprintln!("SKIPPED: stress-ng not installed");
        return;
    }
    let m = Mounted::new("stress-locks");
    for stressor in ["lockf", "fcntl", "flock", "lockofd", "locka"] {
        // timeout(1) ends stress-ng, not its workers should they wait on a hung daemon.
        let watchdog = crate::util::Watchdog::arm(&m.mnt, Duration::from_secs(180));
        let out = Command::new("timeout")
            .args([
                "-k",
                "10",
                "120",
                "stress-ng",
                &format!("--{stressor}"),
                "2",
                "--timeout",
                "10s",
                "--verify",
            ])
            .arg("--temp-path")
            .arg(&m.mnt)
            .output()
            .unwrap();
        assert!(watchdog.disarm(), "stress-ng --{stressor}: the daemon hung; its connection was aborted");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "stress-ng --{stressor} failed ({}):\n{log}", out.status);
    }
}

/// fsync holds the file's inode lock until its reply; an unlink or rename of that file holds
/// its directory's lock and waits for the file's; so the commit worker must not wait for the
/// directory's lock (`inval_entry`) before replying to the fsync. A hang fails the test: the
/// watchdog aborts the connection.
#[test]
fn fsync_racing_unlink_and_rename_in_its_directory_never_hangs() {
    let m = Mounted::new("fsync-unlink");
    let dir = m.path("d");
    std::fs::create_dir(&dir).unwrap();
    let watchdog = crate::util::Watchdog::arm(&m.mnt, Duration::from_secs(120));
    std::thread::scope(|s| {
        for t in 0..2 {
            let writer_dir = dir.clone();
            s.spawn(move || {
                let dir = writer_dir;
                for i in 0..300 {
                    let path = dir.join(format!("f{t}"));
                    let Ok(mut f) = OpenOptions::new().write(true).create(true).truncate(true).open(&path)
                    else {
                        continue;
                    };
                    let _ = f.write_all(format!("{i}").as_bytes());
                    let _ = f.sync_all();
                }
            });
            let remover_dir = dir.clone();
            s.spawn(move || {
                let dir = remover_dir;
                for _ in 0..300 {
                    let path = dir.join(format!("f{t}"));
                    let _ = std::fs::rename(&path, dir.join(format!("g{t}")));
                    let _ = std::fs::remove_file(dir.join(format!("g{t}")));
                }
            });
        }
    });
    assert!(watchdog.disarm(), "fsync, rename and unlink in one directory hung");
}

/// A save by rename after `utimensat` (rsync -a, cp -p into a temp file): every descriptor
/// shows the time that was set, also one opened before the rename, whose generation the
/// rename renumbered (rsync's incremental run once saw the commit time instead).
#[test]
fn times_set_before_a_save_by_rename_show_on_every_descriptor() {
    let m = Mounted::new("rename-mtime");
    let (tmp, target) = (m.path(".f.tmp"), m.path("f"));
    write_file(&target, b"old").unwrap();
    write_file(&tmp, b"new contents").unwrap();
    let reader = File::open(&tmp).unwrap();
    let set = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    File::options().write(true).open(&tmp).unwrap().set_modified(set).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
    // A writer gives the file a second node; the chmod then invalidates the reader's.
    let _writer = rw(&target);
    chmod(&target, 0o640);
    assert_eq!(reader.metadata().unwrap().modified().unwrap(), set, "the reader's descriptor");
    assert_eq!(std::fs::metadata(&target).unwrap().modified().unwrap(), set, "the path");
}
