//! Safe to run as root and to share (issue 12; docs/design.md, "Security model"): a store
//! another user could change is refused before the daemon opens anything in it, the store is
//! private, and on a root-served `allow_other` mount another user (`nobody`) cannot read a
//! file's history without read permission, keep setuid bits by writing, shorten the history
//! of others' files or grow the daemon's log.

use crate::util::{genfs_bin, getfattr, write_file, Mounted};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const OTHER_USER: &str = "nobody";

/// Runs `sh -c script` as [`OTHER_USER`]: (exit ok, stdout and stderr).
fn as_other(script: &str) -> (bool, String) {
    let out = Command::new("runuser").args(["-u", OTHER_USER, "--", "sh", "-c", script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A mount whose mount point other users can reach (the test's directory is 0700).
fn shared_mount(test: &str) -> Mounted {
    let m = Mounted::new(test);
    chmod(m.mnt.parent().unwrap(), 0o755);
    m
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

fn genfs(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(genfs_bin()).args(args).output().unwrap()
}

fn mkfs(store: &Path) {
    let out = genfs(&["mkfs".as_ref(), store.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A new store and an empty mount point, not mounted: (their directory, store, mount point).
fn unmounted_store() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    mkfs(&store);
    (dir, store, mnt)
}

/// `genfs mount -f STORE MNT` that must fail before mounting: its message. Should it mount
/// after all, the daemon is stopped and the test fails (it must not hang).
fn refused_mount(store: &Path, mnt: &Path) -> String {
    let mut child = Command::new(genfs_bin())
        .args(["mount".as_ref(), "-f".as_ref(), store.as_os_str(), mnt.as_os_str()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = crate::util::wait_until(std::time::Duration::from_secs(60), || {
        crate::util::is_mounted(mnt) || child.try_wait().unwrap().is_some()
    });
    if crate::util::is_mounted(mnt) || !ended {
        let _ = child.kill();
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
        let _ = child.wait();
        panic!("mounted {} although it must refuse it", store.display());
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn links_planted_in_a_store_are_never_followed() {
    let (dir, store, mnt) = unmounted_store();
    let victim_file = dir.path().join("precious");
    let victim_dir = dir.path().join("drafts");
    std::fs::write(&victim_file, b"precious").unwrap();
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("a"), b"a").unwrap();
    for (entry, target) in [("lock", &victim_file), ("staging", &victim_dir), ("genfs.log", &victim_file)] {
        let path = store.join(entry);
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            let _ = std::fs::remove_file(&path);
        }
        std::os::unix::fs::symlink(target, &path).unwrap();
        let msg = refused_mount(&store, &mnt);
        assert!(msg.contains("symbolic link") && msg.contains(entry), "{entry}: {msg}");
        // The detached mount opens its log first: that must not follow the link either.
        let out = genfs(&["mount".as_ref(), store.as_os_str(), mnt.as_os_str()]);
        assert!(!out.status.success() && !crate::util::is_mounted(&mnt), "{entry}");
        for check in ["fsck", "scrub"] {
            let out = genfs(&[check.as_ref(), store.as_os_str()]);
            let msg = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && msg.contains("symbolic link"), "{check} with {entry}: {msg}");
        }
        assert_eq!(std::fs::read(&victim_file).unwrap(), b"precious", "{entry}");
        assert_eq!(std::fs::read(victim_dir.join("a")).unwrap(), b"a", "{entry}");
        std::fs::remove_file(&path).unwrap();
        if entry == "staging" {
            std::fs::create_dir(&path).unwrap();
        }
    }
}

#[test]
fn as_root_a_store_another_user_owns_or_may_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let users = dir.path().join("users");
    std::fs::create_dir(&users).unwrap();
    std::os::unix::fs::chown(&users, Some(65534), Some(65534)).unwrap();
    let theirs = users.join("store");
    let (ok, out) = as_other(&format!("{} mkfs {}", genfs_bin(), theirs.display()));
    assert!(ok, "{out}");
    let msg = refused_mount(&theirs, &mnt);
    assert!(msg.contains("belongs to uid 65534"), "{msg}");

    mkfs(&store);
    check_refused_then_fixed(&store, &mnt, &store.join("chunks"), "writable by group or others");
    check_refused_then_fixed(&store, &mnt, &store.join("index"), "writable by group or others");
    // A directory above the store that others may write (and is not sticky).
    check_refused_then_fixed(&store, &mnt, dir.path(), "writable by group or others");
    std::os::unix::fs::chown(store.join("journal"), Some(65534), None).unwrap();
    let msg = refused_mount(&store, &mnt);
    assert!(msg.contains("journal") && msg.contains("uid 65534"), "{msg}");
}

/// Makes `path` writable by others: the mount is refused naming it; then fixes it.
fn check_refused_then_fixed(store: &Path, mnt: &Path, path: &Path, why: &str) {
    let before = mode(path);
    chmod(path, 0o777);
    let msg = refused_mount(store, mnt);
    assert!(msg.contains(why) && msg.contains(&path.display().to_string()), "{msg}");
    chmod(path, before);
}

#[test]
fn the_store_is_private_inside_and_out_and_mount_warns_when_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    chmod(&store, 0o755);
    mkfs(&store);
    assert_eq!(mode(&store), 0o700);
    let mut m = Mounted::of_store("private", dir.path(), |s| {
        std::fs::rename(&store, s).unwrap();
    });
    write_file(&m.path("secret"), b"the contents of a 0600 file").unwrap();
    chmod(&m.path("secret"), 0o600);
    m.unmount();
    let (ok, listing) = crate::util::sh(&format!("find {} -perm /077", m.store.display()));
    assert!(ok);
    assert_eq!(listing, "", "store entries open to others");

    chmod(&m.store, 0o755);
    m.mount();
    let log = std::fs::read_to_string(m.store.with_extension("log")).unwrap();
    assert!(log.contains("open to other users") && log.contains("chmod 700"), "{log}");
}

#[test]
fn history_of_a_file_needs_read_permission_on_it() {
    let m = shared_mount("history-perm");
    write_file(&m.path("private"), b"one").unwrap();
    write_file(&m.path("private"), b"two").unwrap();
    chmod(&m.path("private"), 0o600);
    write_file(&m.path("public"), b"open").unwrap();
    chmod(&m.path("public"), 0o644);
    let ino = |p: &str| std::fs::metadata(m.path(p)).unwrap().ino();
    let (private, public) = (m.path(&format!(".genfs/gen/{}", ino("private"))), ino("public"));
    for attempt in [
        format!("getfattr -n user.genfs.log {}", private.display()),
        format!("getfattr -n user.genfs.generation {}", private.display()),
        format!("ls {}", private.display()),
        format!("stat {}/1", private.display()),
        format!("cat {}/1", private.display()),
        format!("getfattr -n user.genfs.log {}", m.path("private").display()),
    ] {
        let (ok, out) = as_other(&attempt);
        assert!(!ok && out.contains("denied"), "{attempt}: {out}");
    }
    let public = m.path(&format!(".genfs/gen/{public}"));
    let (ok, out) = as_other(&format!("ls {} && cat {}/1", public.display(), public.display()));
    assert!(ok && out.contains("open"), "{out}");
    // The owner and root still see everything.
    assert!(getfattr(&private, "user.genfs.log").unwrap().contains('2'));
}

#[test]
fn setuid_and_setgid_fall_when_another_user_writes() {
    let m = shared_mount("setid");
    for (name, before, after) in
        [("both", 0o6777, 0o0777), ("sgid-no-gx", 0o2767, 0o2767), ("suid", 0o4766, 0o0766)]
    {
        let path = m.path(name);
        write_file(&path, b"#!/bin/sh\n").unwrap();
        chmod(&path, before);
        let (ok, out) = as_other(&format!("echo more >> {}", path.display()));
        assert!(ok, "{name}: {out}");
        assert_eq!(mode(&path), after, "{name}");
        assert!(std::fs::read(&path).unwrap().ends_with(b"more\n"));
    }
    // Root keeps them (CAP_FSETID), as on ext4.
    let path = m.path("root-writes");
    write_file(&path, b"x").unwrap();
    chmod(&path, 0o6777);
    std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    write_file(&path, b"y").unwrap();
    assert_eq!(mode(&path), 0o6777);
}

#[test]
fn only_the_owner_sets_a_retention_policy() {
    let m = shared_mount("retention-owner");
    let shared = m.path("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    let (ok, out) = as_other(&format!(
        "setfattr -n user.genfs.retention -v keep-last=0,keep-within=0s {}",
        shared.display()
    ));
    assert!(!ok && out.contains("not permitted"), "{out}");
    let mine = shared.join("mine");
    let (ok, out) = as_other(&format!(
        "mkdir {} && setfattr -n user.genfs.retention -v keep-last=3 {}",
        mine.display(),
        mine.display()
    ));
    assert!(ok, "{out}");
    // In their own directory, their policy shortens their files' history, not root's files'.
    let (ok, out) = as_other(&format!("cd {} && for i in 1 2 3; do echo $i > theirs; done", mine.display()));
    assert!(ok, "{out}");
    for i in 0..3 {
        write_file(&mine.join("roots"), format!("{i}").as_bytes()).unwrap();
    }
    let (ok, out) = as_other(&format!("setfattr -n user.genfs.retention -v keep-last=1 {}", mine.display()));
    assert!(ok, "{out}");
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let generations = |name: &str| getfattr(&mine.join(name), "user.genfs.log").unwrap().lines().count();
    assert_eq!(generations("theirs"), 1);
    assert_eq!(generations("roots"), 3, "a user's policy dropped history of root's file");
    assert_eq!(
        getfattr(&mine.join("roots"), "user.genfs.retention").unwrap(),
        getfattr(&m.mnt, "user.genfs.retention").unwrap()
    );
    xattr::set(&shared, "user.genfs.retention", b"keep-last=4").unwrap();
    // A policy of nothing but commas is an error, not "keep nothing".
    assert_eq!(
        xattr::set(&shared, "user.genfs.retention", b",").unwrap_err().raw_os_error(),
        Some(libc::EINVAL)
    );
}

#[test]
fn snapshot_names_with_control_characters_are_refused() {
    let m = Mounted::new("snapshot-names");
    for bad in ["a\tb", "a\nb", "bell\x07"] {
        let err = xattr::set(&m.mnt, "user.genfs.snapshot.create", bad.as_bytes()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
    }
    xattr::set(&m.mnt, "user.genfs.snapshot.create", b"fine name").unwrap();
}

#[test]
fn requests_genfs_does_not_serve_leave_no_trace_in_its_log() {
    let m = shared_mount("quiet");
    write_file(&m.path("f"), b"x").unwrap();
    let log = m.store.with_extension("log");
    let before = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::File::open(m.path("f")).unwrap();
    for _ in 0..2000 {
        // What Python's open() sends (isatty): one ioctl each.
        // SAFETY: a zeroed termios is a valid value of this plain C struct.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: TCGETS into that termios, on a valid descriptor.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::TCGETS, &mut t) };
        assert_eq!(rc, -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENOTTY));
    }
    let out = std::fs::File::create(m.path("copy")).unwrap();
    // SAFETY: two valid descriptors; null offsets use theirs.
    let copied = unsafe {
        libc::copy_file_range(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            std::ptr::null_mut(),
            std::os::fd::AsRawFd::as_raw_fd(&out),
            std::ptr::null_mut(),
            1,
            0,
        )
    };
    assert_eq!(copied, 1, "copy_file_range falls back to a copy");
    let grew = std::fs::metadata(&log).unwrap().len() - before;
    assert!(grew < 200, "the log grew by {grew} bytes: {}", std::fs::read_to_string(&log).unwrap());
}

#[test]
fn writers_touching_many_chunks_hold_few_descriptors() {
    let m = shared_mount("staging-fds");
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", m.daemon_pid().unwrap())).unwrap().count();
    std::fs::create_dir(m.path("pub")).unwrap();
    chmod(&m.path("pub"), 0o777);
    let before = fds();
    let chunk = 1u64 << 20;
    let mut f = std::fs::File::create(m.path("sparse")).unwrap();
    for i in 0..1000u64 {
        std::os::unix::fs::FileExt::write_all_at(&f, b"x", i * chunk + 7).unwrap();
    }
    let during = fds();
    assert!(during < before + 64, "the daemon holds {during} descriptors (was {before})");
    // Others still get descriptors, and the draft still reads back what was written.
    let (ok, out) = as_other(&format!("echo fine > {0}/x && cat {0}/x", m.path("pub").display()));
    assert!(ok && out == "fine\n", "{out}");
    std::io::Write::flush(&mut f).unwrap();
    drop(f);
    let data = std::fs::read(m.path("sparse")).unwrap();
    assert_eq!(data.len() as u64, 999 * chunk + 8);
    assert!((0..1000u64).all(|i| data[(i * chunk + 7) as usize] == b'x'));
    assert_eq!(data.iter().filter(|&&b| b == b'x').count(), 1000);

    // Many writers of many files: the daemon's staging descriptors stay bounded in total.
    let before = fds();
    let files: Vec<std::fs::File> =
        (0..100).map(|i| std::fs::File::create(m.path(&format!("w{i}"))).unwrap()).collect();
    for f in &files {
        for c in 0..20u64 {
            std::os::unix::fs::FileExt::write_all_at(f, b"y", c * chunk).unwrap();
        }
    }
    let during = fds();
    assert!(
        during < before + 1024 + 64,
        "the daemon holds {during} descriptors for 100 writers (was {before})"
    );
    drop(files);
    assert_eq!(std::fs::read(m.path("w99")).unwrap().iter().filter(|&&b| b == b'y').count(), 20);
}

#[test]
fn the_past_of_a_file_is_as_private_as_the_file_is_now() {
    let m = shared_mount("at-private");
    std::fs::create_dir(m.path("pub")).unwrap();
    write_file(&m.path("pub/f"), b"was public").unwrap();
    chmod(&m.path("pub/f"), 0o644);
    let seq = getfattr(&m.mnt, "user.genfs.seq").unwrap();
    let old_path = m.path(&format!(".genfs/at/@{seq}/pub/f"));
    let (ok, out) = as_other(&format!("cat {}", old_path.display()));
    assert!(ok && out == "was public", "{out}");
    std::fs::create_dir(m.path("private")).unwrap();
    chmod(&m.path("private"), 0o700);
    std::fs::rename(m.path("pub/f"), m.path("private/f")).unwrap();
    let (ok, out) = as_other(&format!("cat {}", old_path.display()));
    assert!(!ok && out.contains("denied"), "{out}");
    assert_eq!(std::fs::read(&old_path).unwrap(), b"was public", "root still reads it");
}

#[test]
fn the_gc_report_names_only_files_the_reader_may_see() {
    let m = shared_mount("gc-report");
    std::fs::create_dir(m.path("private")).unwrap();
    chmod(&m.path("private"), 0o700);
    std::fs::create_dir(m.path("pub")).unwrap();
    for name in ["private/secret-name", "pub/open-name"] {
        for i in 0..3 {
            write_file(&m.path(name), format!("version {i}").as_bytes()).unwrap();
        }
    }
    xattr::set(&m.mnt, "user.genfs.retention", b"keep-last=1").unwrap();
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let all = getfattr(&m.mnt, "user.genfs.gc").unwrap();
    assert!(all.contains("secret-name") && all.contains("open-name"), "{all}");
    let (ok, theirs) = as_other(&format!("getfattr --only-values -n user.genfs.gc {}", m.mnt.display()));
    assert!(ok, "{theirs}");
    assert!(!theirs.contains("secret-name") && theirs.contains("open-name"), "{theirs}");
    assert!(theirs.contains("hidden\t2"), "{theirs}");
}

#[test]
fn restore_tree_gives_back_rights_without_widening_them() {
    use crate::versions_cli::{instant_between, rfc3339};
    let m = shared_mount("restore-rights");
    let theirs = m.path("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (ok, out) = as_other(&format!(
        "cd {} && echo prog > prog && chmod 4755 prog && echo notes > notes && chmod 640 notes \
         && mkdir sub && chmod 750 sub && echo deep > sub/deep",
        theirs.display()
    ));
    assert!(ok, "{out}");
    let shared = m.path("shared");
    std::fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o777);
    write_file(&shared.join("rootprog"), b"root's\n").unwrap();
    chmod(&shared.join("rootprog"), 0o4755);
    let t = rfc3339(instant_between());
    let (ok, out) = as_other(&format!("rm -r {0}/prog {0}/notes {0}/sub", theirs.display()));
    assert!(ok, "{out}");
    // Moved, not deleted: a file without a name shows its past to its owner only.
    std::fs::rename(shared.join("rootprog"), shared.join("moved")).unwrap();

    // root brings back another user's files as theirs, setuid included, write bits included.
    let out = genfs(&["restore".as_ref(), "--tree".as_ref(), format!("{}@{t}", theirs.display()).as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (name, want) in [("prog", 0o4755), ("notes", 0o640), ("sub", 0o750), ("sub/deep", 0o644)] {
        let meta = std::fs::symlink_metadata(theirs.join(name)).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (want, 65534, 65534), "{name}");
    }
    // A user bringing back root's setuid file gets it as their own, without setuid.
    let (ok, out) = as_other(&format!("{} restore --tree {}@{t}", genfs_bin(), shared.display()));
    assert!(ok, "{out}");
    let meta = std::fs::metadata(shared.join("rootprog")).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, 65534));
    assert_eq!(std::fs::read(shared.join("rootprog")).unwrap(), b"root's\n");
}

/// Unmounts (lazily if need be) when dropped: for the tests that start a detached daemon.
struct DetachedMount<'a>(&'a Path);

impl Drop for DetachedMount<'_> {
    fn drop(&mut self) {
        if crate::util::is_mounted(self.0) {
            let out = Command::new(genfs_bin()).arg("umount").arg(self.0).output();
            if !out.is_ok_and(|o| o.status.success()) {
                let _ = Command::new("umount").arg("-l").arg(self.0).status();
            }
        }
    }
}

#[test]
fn the_daemon_log_file_is_rotated_when_full() {
    let (_dir, store, mnt) = unmounted_store();
    let log = store.join("genfs.log");
    let old = vec![b'#'; 8 << 20];
    std::fs::write(&log, &old).unwrap();
    chmod(&log, 0o600);
    let out = genfs(&["mount".as_ref(), store.as_os_str(), mnt.as_os_str()]);
    let _mounted = DetachedMount(&mnt);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = store.join("genfs.log.1");
    assert!(crate::util::wait_until(std::time::Duration::from_secs(30), || rotated.exists()));
    assert_eq!(std::fs::read(&rotated).unwrap(), old);
    let fresh = std::fs::read_to_string(&log).unwrap();
    assert!(fresh.contains("mounted") && fresh.len() < 4096, "{fresh}");
    assert_eq!(mode(&log), 0o600);
}

/// Random inputs of every kind a caller controls: what they get back is a clear errno, the
/// daemon stays up, and what was committed stays. Seeded (GENFS_TEST_SEED replays a run).
#[test]
fn what_callers_control_cannot_hurt_the_daemon() {
    let seed = crate::util::seed("caller-fuzz");
    let mut rng = crate::util::Rng::new(seed);
    let m = shared_mount("caller-fuzz");
    std::fs::create_dir(m.path("d")).unwrap();
    write_file(&m.path("d/f"), b"committed").unwrap();
    let ino = std::fs::metadata(m.path("d/f")).unwrap().ino();
    const TOKENS: &[&str] = &[
        "keep-last",
        "keep-within",
        "keep-daily",
        "keep-monthly",
        "max-size",
        "=",
        ",",
        ":",
        "0",
        "1",
        "99999999999999999999",
        "9223372036854775808",
        "s",
        "w",
        "d",
        "%",
        "G",
        "-1",
        " ",
        "\t",
        "\n",
        "é",
        "\0",
        "run",
        "dry-run",
        "@",
        "/",
        "..",
        ".",
        "2026-12-03T10:00:00Z",
        "1970-01-01T00:00:00Z",
    ];
    let random_text = |rng: &mut crate::util::Rng| -> Vec<u8> {
        let n = rng.below(8);
        let mut out: Vec<u8> =
            (0..n).flat_map(|_| TOKENS[rng.below(TOKENS.len() as u64) as usize].bytes()).collect();
        if rng.below(20) == 0 {
            out.extend((0..rng.below(80_000)).map(|_| rng.next() as u8));
        }
        out
    };
    const NAMES: &[&str] = &[
        "retention",
        "restore",
        "snapshot.create",
        "snapshot.delete",
        "gc",
        "log",
        "log.before.",
        "generation",
        "mode",
        "seq",
        "stats",
        "snapshots",
        "",
    ];
    let allowed = [
        libc::EINVAL,
        libc::ENOENT,
        libc::EPERM,
        libc::EACCES,
        libc::ENODATA,
        libc::E2BIG,
        libc::ERANGE,
        libc::EOPNOTSUPP,
        libc::EEXIST,
        libc::ENAMETOOLONG,
        libc::ENOTDIR,
        libc::EROFS,
        libc::EILSEQ,
    ];
    let check = |what: &str, result: std::io::Result<()>| {
        if let Err(e) = result {
            let errno = e.raw_os_error().unwrap_or(0);
            assert!(allowed.contains(&errno), "seed {seed}: {what}: {e}");
        }
    };
    for _ in 0..1500 {
        let target = [m.mnt.clone(), m.path("d"), m.path("d/f")][rng.below(3) as usize].clone();
        let mut name = format!("user.genfs.{}", NAMES[rng.below(NAMES.len() as u64) as usize]).into_bytes();
        if rng.below(4) == 0 {
            name.extend(random_text(&mut rng).into_iter().filter(|&b| b != 0));
        }
        let name = std::ffi::OsStr::from_bytes(&name).to_owned();
        let value = random_text(&mut rng);
        match rng.below(4) {
            // gc with a real value is a run; keep most runs away from it so history stays.
            0 | 1 if value != b"run" => check(&format!("set {name:?}"), xattr::set(&target, &name, &value)),
            2 => check(&format!("get {name:?}"), xattr::get(&target, &name).map(|_| ())),
            _ => {
                let junk = String::from_utf8_lossy(&random_text(&mut rng)).replace(['/', '\0'], "_");
                let view = match rng.below(3) {
                    0 => format!(".genfs/at/{junk}"),
                    1 => format!(".genfs/gen/{ino}/{junk}"),
                    _ => format!(".genfs/snapshots/{junk}/d/f"),
                };
                if !junk.is_empty() && junk.len() < 255 {
                    check(&format!("stat {view}"), std::fs::metadata(m.path(&view)).map(|_| ()));
                }
            }
        }
    }
    assert_eq!(std::fs::read(m.path("d/f")).unwrap(), b"committed", "seed {seed}");
    write_file(&m.path("d/after"), b"still serving").unwrap();
    assert_eq!(std::fs::read(m.path("d/after")).unwrap(), b"still serving");
}

#[test]
fn the_list_of_snapshots_shows_each_new_one_at_once() {
    let m = Mounted::new("snapshot-list");
    let listing = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(m.path(".genfs/snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert!(listing().is_empty());
    for (i, name) in ["first", "second", "third"].iter().enumerate() {
        xattr::set(&m.mnt, "user.genfs.snapshot.create", name.as_bytes()).unwrap();
        assert_eq!(listing().len(), i + 1, "after {name}: {:?}", listing());
    }
    xattr::set(&m.mnt, "user.genfs.snapshot.delete", b"second").unwrap();
    assert_eq!(listing(), ["first", "third"]);
}
