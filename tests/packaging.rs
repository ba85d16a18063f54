//! genfs as the system sees it (issue 6): `mount -t genfs` and fstab through the helpers,
//! a `umount` that waits for the daemon, mount.fuse3, a normal user mounting through
//! fusermount3, logging, man pages and completions, and the Debian package.
//!
//! Tests that need the helpers in /sbin install them as symbolic links to this build's genfs
//! for their duration (never over files that are not such links), one test at a time.

use crate::util::genfs_bin;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tests here change /sbin, /etc/fuse.conf, /dev/fuse's mode and installed packages: one at a time.
static SYSTEM: Mutex<()> = Mutex::new(());

fn system() -> MutexGuard<'static, ()> {
    SYSTEM.lock().unwrap_or_else(|e| e.into_inner())
}

const HELPERS: [&str; 4] = ["mount.genfs", "mount.fuse.genfs", "umount.genfs", "umount.fuse.genfs"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    eprintln!(
        "+ {cmd:?} -> {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh_ok(script: &str) -> String {
    ok(Command::new("sh").arg("-c").arg(script))
}

fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// (type, source) of the mount on `mnt`, from /proc/self/mountinfo.
fn mount_of(mnt: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        (head.split(' ').nth(4)? == mnt.to_str()?).then(|| {
            let mut t = tail.split(' ');
            (t.next().unwrap_or("").to_string(), t.next().unwrap_or("").to_string())
        })
    })
}

fn in_utab(mnt: &Path) -> bool {
    let utab = std::fs::read_to_string("/run/mount/utab").unwrap_or_default();
    utab.lines().any(|l| l.split(' ').any(|f| f == format!("TARGET={}", mnt.display())))
}

/// A running, non-zombie process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The pid the daemon serving `store` wrote into its lock file.
fn daemon_pid(store: &Path) -> i32 {
    std::fs::read_to_string(store.join("lock")).unwrap().trim().parse().unwrap()
}

/// Unmounts whatever is still mounted under `dir` (lazily), so a failed test leaves nothing.
fn unmount_all_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in info.lines().rev() {
        if let Some(mp) = l.split(' ').nth(4) {
            if Path::new(mp).starts_with(dir) {
                let _ = Command::new("umount").arg("-l").arg(mp).stderr(Stdio::null()).status();
            }
        }
    }
}

/// A temporary directory with a store and mount points; unmounts everything under it on drop.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = tempfile::Builder::new().prefix(&format!("genfs-{test}-")).tempdir().unwrap();
        Scratch { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A new store at `rel` and an empty directory `mnt_rel`.
    fn store(&self, rel: &str, mnt_rel: &str) -> (PathBuf, PathBuf) {
        let (store, mnt) = (self.path(rel), self.path(mnt_rel));
        ok(Command::new(genfs_bin()).arg("mkfs").arg(&store));
        std::fs::create_dir_all(&mnt).unwrap();
        (store, mnt)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        unmount_all_under(self.dir.path());
    }
}

/// /sbin/{mount,umount}.{genfs,fuse.genfs} as links to `target` for the life of the guard.
/// `None` (and a message) when one of them is a file this test did not make.
struct Helpers {
    made: Vec<PathBuf>,
}

impl Helpers {
    fn install(target: &Path) -> Option<Helpers> {
        let mut made = Vec::new();
        for name in HELPERS {
            let path = Path::new("/sbin").join(name);
            match std::fs::read_link(&path) {
                Ok(old) if old.ends_with("release/genfs") || old.ends_with("debug/genfs") => {}
                Ok(_) | Err(_) if path.symlink_metadata().is_ok() => {
                    eprintln!("SKIPPED: {} exists and is not a link to a build of genfs", path.display());
                    return None;
                }
                _ => {}
            }
            let _ = std::fs::remove_file(&path);
            std::os::unix::fs::symlink(target, &path).unwrap();
            made.push(path);
        }
        Some(Helpers { made })
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for p in &self.made {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn mount_t_genfs_and_umount_waits_for_the_daemon() {
    let _system = system();
    let Some(_helpers) = Helpers::install(Path::new(genfs_bin())) else { return };
    let s = Scratch::new("mount-t");
    let (store, mnt) = s.store("store", "mnt");

    // Generic options mount(8) and fstab use are accepted; the mount is fuse.genfs.
    ok(Command::new("mount")
        .args(["-t", "genfs"])
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "nodev,nosuid,noexec,nofail,_netdev,x-test.option=1,noauto"]));
    let (fstype, source) = mount_of(&mnt).expect("mounted");
    assert_eq!((fstype.as_str(), Path::new(&source)), ("fuse.genfs", store.as_path()));
    assert!(in_utab(&mnt), "genfs mount records the mount in utab for umount's helper");
    std::fs::write(mnt.join("f"), b"kept").unwrap();

    // umount returns only when the daemon has exited: stop the daemon first, so it cannot
    // finish; umount must still be waiting a second later, and return once it may go on.
    for round in 0..3 {
        let pid = daemon_pid(&store);
        assert!(alive(pid));
        if round == 0 {
            // SAFETY: signalling the daemon of this test's own mount.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            let mut umount = Command::new("umount").arg(&mnt).spawn().unwrap();
            std::thread::sleep(Duration::from_secs(1));
            assert!(umount.try_wait().unwrap().is_none(), "umount returned while the daemon was stopped");
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            let status = umount.wait().unwrap();
            assert!(status.success(), "umount: {status}");
        } else {
            // Many small commits just before, so the final checkpoint has work to do.
            for i in 0..200 {
                std::fs::write(mnt.join(format!("g{i}")), format!("{round} {i}")).unwrap();
            }
            ok(Command::new("umount").arg(&mnt));
        }
        assert!(!alive(pid), "round {round}: umount returned before the daemon (pid {pid}) exited");
        assert!(mount_of(&mnt).is_none());
        assert!(!in_utab(&mnt), "umount left the utab entry behind");
        ok(Command::new("mount").args(["-t", "genfs"]).arg(&store).arg(&mnt));
        assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"kept");
    }
    ok(Command::new("umount").arg(&mnt));

    // Errors: on stderr, non-zero exit; -s ignores unknown options.
    let out = run(Command::new("mount").args(["-t", "genfs"]).arg(s.path("nostore")).arg(&mnt));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a genfs store"));
    let out = run(Command::new("mount").args(["-t", "genfs", "-o", "frobnicate"]).arg(&store).arg(&mnt));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option `frobnicate`"));
    assert!(mount_of(&mnt).is_none());
    ok(Command::new("mount").args(["-s", "-t", "genfs", "-o", "frobnicate"]).arg(&store).arg(&mnt));
    ok(Command::new("umount").arg(&mnt));
    // -f (fake) mounts nothing.
    ok(Command::new("mount").args(["-f", "-t", "genfs"]).arg(&store).arg(&mnt));
    assert!(mount_of(&mnt).is_none());
}

#[test]
fn fstab_lines_work_with_mount_and_mount_a() {
    let _system = system();
    let Some(_helpers) = Helpers::install(Path::new(genfs_bin())) else { return };
    let s = Scratch::new("fstab");
    let (store_a, mnt_a) = s.store("a", "mnt-a");
    let (store_b, mnt_b) = s.store("b", "mnt-b");
    let fstab = s.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab (mount -T), never /etc/fstab\n{} {} genfs defaults,nofail 0 0\n{} {} fuse.genfs defaults,nofail,nodev 0 0\n",
            store_a.display(),
            mnt_a.display(),
            store_b.display(),
            mnt_b.display()
        ),
    )
    .unwrap();
    // `mount MNT`: the line is found by mount point.
    ok(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt_a));
    assert_eq!(mount_of(&mnt_a).unwrap().0, "fuse.genfs");
    std::fs::write(mnt_a.join("x"), b"a").unwrap();
    ok(Command::new("umount").arg(&mnt_a));
    assert!(mount_of(&mnt_a).is_none());
    // `mount -a`: both lines; a second run is a no-op.
    ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(mount_of(&mnt_a).unwrap().0, "fuse.genfs");
    assert_eq!(mount_of(&mnt_b).unwrap().0, "fuse.genfs");
    ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(std::fs::read(mnt_a.join("x")).unwrap(), b"a");
    std::fs::write(mnt_b.join("y"), b"b").unwrap();
    let pid_b = daemon_pid(&store_b);
    ok(Command::new("umount").arg(&mnt_a));
    ok(Command::new("umount").arg(&mnt_b));
    assert!(!alive(pid_b));
    // nofail: a line whose store does not exist is skipped without an error (fstab(5)).
    std::fs::write(
        &fstab,
        format!("{} {} genfs defaults,nofail 0 0\n", s.path("missing").display(), mnt_a.display()),
    )
    .unwrap();
    let out = run(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert!(out.status.success(), "nofail lines do not fail mount -a");
    assert!(mount_of(&mnt_a).is_none());
}

/// Without the genfs helpers, fstab type fuse.genfs goes through mount.fuse3, which runs
/// `genfs STORE MNT -o OPTS`.
#[test]
fn mount_fuse3_runs_genfs_with_its_convention() {
    if Command::new("mount.fuse3").arg("-h").output().is_err() {
        eprintln!("SKIPPED: mount.fuse3 is not installed (package fuse3)");
        return;
    }
    let s = Scratch::new("mount-fuse3");
    let (store, mnt) = s.store("store", "mnt");
    let bin_dir = Path::new(genfs_bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    ok(Command::new("mount.fuse3")
        .arg(&store)
        .arg(&mnt)
        .args(["-t", "fuse.genfs", "-o", "rw,nofail,_netdev,x-systemd.after=foo"])
        .env("PATH", &path));
    assert_eq!(mount_of(&mnt).unwrap().0, "fuse.genfs");
    std::fs::write(mnt.join("f"), b"1").unwrap();
    ok(Command::new(genfs_bin()).arg("umount").arg(&mnt));
    // The old `genfs#STORE` source form.
    ok(Command::new("mount.fuse3").arg(format!("genfs#{}", store.display())).arg(&mnt).env("PATH", &path));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"1");
    let pid = daemon_pid(&store);
    ok(Command::new(genfs_bin()).arg("umount").arg(&mnt));
    assert!(!alive(pid), "genfs umount returned before the daemon exited");
}

/// Restores a file's contents (and /dev/fuse's mode) when dropped.
struct Restore {
    path: PathBuf,
    contents: Option<Vec<u8>>,
    mode: u32,
}

impl Restore {
    fn new(path: &str) -> Restore {
        let path = PathBuf::from(path);
        let contents = if path.is_file() { std::fs::read(&path).ok() } else { None };
        let mode = std::fs::metadata(&path).map(|m| m.mode() & 0o7777).unwrap_or(0o644);
        Restore { path, contents, mode }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        match &self.contents {
            Some(c) => {
                let _ = std::fs::write(&self.path, c);
            }
            None if self.path.is_file() => {
                let _ = std::fs::remove_file(&self.path);
            }
            None => {}
        }
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(self.mode));
    }
}

/// A user made for the test (`useradd -m`), removed with its home when dropped.
struct User {
    name: String,
    home: PathBuf,
}

impl User {
    fn create(name: &str) -> User {
        let _ = Command::new("userdel").args(["-r", name]).stderr(Stdio::null()).status();
        ok(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
        let home = PathBuf::from(sh_ok(&format!("getent passwd {name} | cut -d: -f6")).trim());
        User { name: name.into(), home }
    }

    /// Runs `script` with sh as this user, in their home.
    fn sh(&self, script: &str) -> Output {
        run(Command::new("runuser").args(["-u", &self.name, "--", "sh", "-c"]).arg(format!("cd && {script}")))
    }

    fn sh_ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "as {}: {script}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for User {
    fn drop(&mut self) {
        unmount_all_under(&self.home);
        let _ = Command::new("pkill").args(["-KILL", "-u", &self.name]).status();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("userdel").args(["-r", &self.name]).stderr(Stdio::null()).status();
    }
}

/// Acceptance 2: a normal user can mkfs, mount (through fusermount3), use and unmount a store;
/// allow_other only when /etc/fuse.conf allows it; permissions hold for other users.
#[test]
fn a_normal_user_mounts_through_fusermount3() {
    if Command::new("fusermount3").arg("-V").output().is_err()
        || Command::new("runuser").arg("-V").output().is_err()
    {
        eprintln!("SKIPPED: needs fusermount3 (fuse3) and runuser (util-linux)");
        return;
    }
    let _system = system();
    // This VM ships /dev/fuse as 0600; distributions ship 0666, which fusermount3 needs.
    let _dev_fuse = Restore::new("/dev/fuse");
    std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666)).unwrap();
    let fuse_conf = Restore::new("/etc/fuse.conf");
    let conf_without = String::from_utf8_lossy(fuse_conf.contents.as_deref().unwrap_or_default())
        .lines()
        .filter(|l| l.trim() != "user_allow_other")
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write("/etc/fuse.conf", &conf_without).unwrap();

    // The binary must be executable by the user: a copy in a directory they can reach.
    let bin_dir = tempfile::Builder::new().prefix("genfs-userbin-").tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("genfs");
    std::fs::copy(genfs_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let g = bin.display();

    let user = User::create("genfs-test-user");
    let home = user.home.clone();
    user.sh_ok(&format!("{g} mkfs store && mkdir mnt"));
    let meta = std::fs::metadata(home.join("store")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700, "a new store is private to its owner");
    assert_eq!(meta.uid(), std::fs::metadata(&home).unwrap().uid());

    user.sh_ok(&format!("{g} mount store mnt && echo hello > mnt/f && cat mnt/f && mkdir mnt/d"));
    let mnt = home.join("mnt");
    let (fstype, _) = mount_of(&mnt).expect("mounted by the user");
    assert_eq!(fstype, "fuse.genfs");
    assert!(std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!(" {} ", mnt.display())) && l.contains("user_id=")));
    let gen = user.sh_ok("getfattr -n user.genfs.generation --only-values mnt/f");
    assert_eq!(gen.trim(), "1");
    // Without allow_other, other users (even root) are kept out by the kernel.
    let other = run(Command::new("runuser").args(["-u", "nobody", "--", "ls"]).arg(&mnt));
    assert!(!other.status.success(), "another user entered a mount without allow_other");
    // allow_other is refused while /etc/fuse.conf does not allow it, with a clear message.
    user.sh_ok("mkdir mnt2");
    let out = user.sh(&format!("{g} mount store mnt2 -o allow_other"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("user_allow_other"));
    // suid and dev are root's to ask for.
    let out = user.sh(&format!("{g} mount store mnt2 -o suid"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("suid and dev are for root only"));
    // The store is locked by the running daemon: a second mount of it says so.
    let out = user.sh(&format!("{g} mount store mnt2"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another genfs daemon"));

    // genfs umount goes through fusermount3 -u and waits for the daemon.
    let pid = daemon_pid(&home.join("store"));
    user.sh_ok(&format!("{g} umount mnt"));
    assert!(!alive(pid), "genfs umount returned before the user's daemon exited");
    assert!(mount_of(&mnt).is_none());

    // With user_allow_other: other users get in, and file permissions are enforced for them.
    std::fs::write("/etc/fuse.conf", format!("{conf_without}user_allow_other\n")).unwrap();
    user.sh_ok(&format!(
        "{g} mount store mnt -o allow_other && echo secret > mnt/private && chmod 600 mnt/private && chmod 755 mnt/d"
    ));
    let ls = ok(Command::new("runuser").args(["-u", "nobody", "--", "ls"]).arg(&mnt));
    assert!(ls.contains('f') && ls.contains("private"));
    let read = run(Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(mnt.join("f")));
    assert_eq!(String::from_utf8_lossy(&read.stdout), "hello\n");
    let denied = run(Command::new("runuser").args(["-u", "nobody", "--", "cat"]).arg(mnt.join("private")));
    assert!(
        !denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Permission denied")
    );
    let denied = run(Command::new("runuser").args(["-u", "nobody", "--", "touch"]).arg(mnt.join("d/new")));
    assert!(!denied.status.success(), "nobody created a file in a 0755 directory of another user");
    // fusermount3 -u works too (it does not wait; genfs umount does).
    user.sh_ok("fusermount3 -u mnt");
    assert!(wait_until(Duration::from_secs(10), || mount_of(&mnt).is_none()));
    assert!(wait_until(Duration::from_secs(30), || !alive(daemon_pid(&home.join("store")))));
    // Everything survived.
    user.sh_ok(&format!("{g} mount store mnt && test \"$(cat mnt/f)\" = hello && {g} umount mnt"));
}

#[test]
fn daemon_logs_to_a_file_or_stderr_at_the_asked_level() {
    let s = Scratch::new("logs");
    let (store, mnt) = s.store("store", "mnt");
    let log = s.path("daemon.log");
    let g = genfs_bin();
    ok(Command::new(g).arg("mount").arg(&store).arg(&mnt).arg("-o").arg(format!("log={}", log.display())));
    std::fs::write(mnt.join("f"), b"x").unwrap();
    ok(Command::new(g).arg("umount").arg(&mnt));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("mounted {} on {}", store.display(), mnt.display())), "{text}");
    assert!(!text.contains("DEBUG"), "quiet by default: {text}");
    assert!(!text.contains("Failed to umount"), "{text}");
    assert!(
        !store.join("genfs.log").exists()
            || std::fs::read_to_string(store.join("genfs.log")).unwrap().is_empty()
    );
    // -o debug: detail.
    ok(Command::new(g)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .arg("-o")
        .arg(format!("debug,log={}", log.display())));
    std::fs::write(mnt.join("f"), b"y").unwrap();
    ok(Command::new(g).arg("umount").arg(&mnt));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG"), "-o debug logs at debug level: {text}");
    // A log file that cannot be opened fails the mount itself.
    let out =
        run(Command::new(g).arg("mount").arg(&store).arg(&mnt).args(["-o", "log=/nonexistent/dir/x.log"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open log file /nonexistent/dir/x.log"));
    // Foreground: stderr.
    let child = Command::new(g)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .arg("-f")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || mount_of(&mnt).is_some()));
    ok(Command::new(g).arg("umount").arg(&mnt));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mounted"));
}

/// The per-mount options mountinfo shows for `mnt` (`rw,nosuid,relatime`).
fn vfs_options_of(mnt: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().rev().find(|l| l.split(' ').nth(4) == mnt.to_str()).expect("mounted");
    line.split(' ').nth(5).unwrap().to_string()
}

/// Issue 13, item 2: VFS flags as mount(8) gives them, remount ro and rw, atime options.
#[test]
fn mount8_flags_and_remount() {
    let _system = system();
    let Some(_helpers) = Helpers::install(Path::new(genfs_bin())) else { return };
    let s = Scratch::new("remount");
    let (store, mnt) = s.store("store", "mnt");
    let mount =
        |opts: &str| ok(Command::new("mount").args(["-t", "genfs"]).arg(&store).arg(&mnt).args(["-o", opts]));
    let has = |opts: &str, word: &str| opts.split(',').any(|o| o == word);
    // Root through mount(8): suid and dev unless said otherwise, as for ext4.
    mount("strictatime,nodiratime");
    let opts = vfs_options_of(&mnt);
    assert!(!has(&opts, "nosuid") && !has(&opts, "nodev") && has(&opts, "nodiratime"), "{opts}");
    assert!(!has(&opts, "relatime") && !has(&opts, "noatime"), "strictatime: {opts}");
    ok(Command::new("umount").arg(&mnt));
    mount("nosuid,nodev,noatime,lazytime");
    let opts = vfs_options_of(&mnt);
    assert!(has(&opts, "nosuid") && has(&opts, "nodev") && has(&opts, "noatime"), "{opts}");

    // remount,ro: writes fail with EROFS, nothing is lost; remount,rw: they work again. The
    // other flags stay.
    std::fs::write(mnt.join("f"), b"before").unwrap();
    ok(Command::new("mount").args(["-o", "remount,ro"]).arg(&mnt));
    let opts = vfs_options_of(&mnt);
    assert!(has(&opts, "ro") && has(&opts, "nosuid") && has(&opts, "noatime"), "{opts}");
    let err = std::fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"before");
    ok(Command::new("mount").args(["-o", "remount,rw,relatime"]).arg(&mnt));
    let opts = vfs_options_of(&mnt);
    assert!(has(&opts, "rw") && has(&opts, "relatime") && has(&opts, "nosuid"), "{opts}");
    std::fs::write(mnt.join("g"), b"after").unwrap();
    // A file open for writing keeps the mount writable, and says why.
    let open = std::fs::OpenOptions::new().write(true).open(mnt.join("g")).unwrap();
    let out = run(Command::new("mount").args(["-o", "remount,ro"]).arg(&mnt));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("files are open for writing"));
    drop(open);
    // Unknown options, and genfs options that cannot change on a live mount, are refused.
    let out = run(Command::new("mount").args(["-o", "remount,frobnicate"]).arg(&mnt));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown mount option"));
    let out = run(Command::new("mount").args(["-o", "remount,log=/tmp/x"]).arg(&mnt));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("remount changes only"));
    ok(Command::new("umount").arg(&mnt));
}

#[test]
fn mount_options_reach_the_daemon() {
    let s = Scratch::new("options");
    let (store, mnt) = s.store("store", "mnt");
    let g = genfs_bin();
    ok(Command::new(g).arg("mount").arg(&store).arg(&mnt).args(["-o", "ro,noexec"]));
    let out = run(Command::new("touch").arg(mnt.join("f")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
    assert!(sh_ok(&format!("findmnt -no OPTIONS {}", mnt.display())).contains("ro,"));
    ok(Command::new(g).arg("umount").arg(&mnt));
    // retention= sets the root's policy (rules separated by `:`), inherited by every file.
    ok(Command::new(g)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .args(["-o", "retention=keep-last=3:keep-within=1h"]));
    std::fs::write(mnt.join("f"), b"1").unwrap();
    let policy = xattr::get(mnt.join("f"), "user.genfs.retention").unwrap().unwrap();
    let policy = String::from_utf8_lossy(&policy);
    assert!(policy.contains("keep-last=3") && policy.contains("keep-within=3600s"), "{policy}");
    ok(Command::new(g).arg("umount").arg(&mnt));
    let out =
        run(Command::new(g).arg("mount").arg(&store).arg(&mnt).args(["-o", "retention=keep-everything"]));
    assert!(!out.status.success() && mount_of(&mnt).is_none());
    // genfs umount refuses what is not genfs, and says what is not mounted.
    let out = run(Command::new(g).arg("umount").arg(&mnt));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not mounted"));
    let out = run(Command::new(g).args(["umount", "/proc"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a genfs mount (type proc)"));
}

#[test]
fn help_version_man_pages_and_completions() {
    let g = genfs_bin();
    let version = ok(Command::new(g).arg("--version"));
    assert_eq!(version.trim(), format!("genfs {}", env!("CARGO_PKG_VERSION")));
    let help = ok(Command::new(g).arg("--help"));
    assert!(help.contains("Examples:") && help.contains("genfs mkfs"), "{help}");
    for sub in
        ["mkfs", "mount", "umount", "log", "cat", "diff", "restore", "snapshot", "gc", "stats", "completions"]
    {
        let help = ok(Command::new(g).args([sub, "--help"]));
        assert!(help.contains("Example"), "genfs {sub} --help has no example:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    ok(Command::new(g).arg("man").arg(dir.path()));
    for page in
        ["genfs.1", "genfs-mount.1", "genfs-umount.1", "genfs-log.1", "mount.genfs.8", "genfs-xattr.7"]
    {
        let text =
            std::fs::read_to_string(dir.path().join(page)).unwrap_or_else(|_| panic!("{page} missing"));
        assert!(text.starts_with(".TH") || text.contains("\n.TH "), "{page} is not roff");
    }
    if Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success()) {
        for page in ["genfs.1", "mount.genfs.8", "genfs-xattr.7"] {
            let text = ok(Command::new("man").arg("-l").arg(dir.path().join(page)).env("MANWIDTH", "100"));
            assert!(text.contains("NAME") && text.contains("genfs"), "{page}:\n{text}");
            assert!(
                !text.contains("\\f") && !text.contains(".TP"),
                "{page} renders with stray roff:\n{text}"
            );
        }
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(Command::new(g).args(["completions", shell]));
        assert!(
            script.contains("snapshot") && script.contains("umount"),
            "{shell} completion lacks subcommands"
        );
    }
    if Command::new("bash").arg("--version").output().is_ok() {
        // The bash script loads and completes a subcommand.
        let script = dir.path().join("genfs.bash");
        std::fs::write(&script, ok(Command::new(g).args(["completions", "bash"]))).unwrap();
        let out = sh_ok(&format!(
            "bash -c 'source {}; COMP_WORDS=(genfs snap); COMP_CWORD=1; _genfs genfs snap genfs; echo \"${{COMPREPLY[@]}}\"'",
            script.display()
        ));
        assert!(out.contains("snapshot"), "{out}");
    }
}

/// Acceptance 1: build the .deb, install it, `mount -t genfs`, an fstab line with `mount MNT`,
/// `umount`, `man genfs`; then remove it. Needs cargo-deb (.ci/run installs it); skipped
/// loudly without it, or when a genfs package is already installed.
#[test]
fn debian_package_installs_mounts_and_removes() {
    if Command::new("cargo").args(["deb", "--version"]).output().map_or(true, |o| !o.status.success()) {
        eprintln!(
            "SKIPPED: cargo-deb is not installed (cargo install cargo-deb --locked); the .deb is not tested"
        );
        return;
    }
    if Command::new("dpkg").arg("--version").output().is_err() {
        eprintln!("SKIPPED: not a Debian system (no dpkg)");
        return;
    }
    if run(Command::new("dpkg-query").args(["-W", "-f=${Status}", "genfs"])).stdout.starts_with(b"install ok")
    {
        eprintln!("SKIPPED: a genfs package is already installed; not replacing it");
        return;
    }
    let _system = system();
    for name in HELPERS {
        let p = Path::new("/sbin").join(name);
        if p.symlink_metadata().is_ok() {
            eprintln!("SKIPPED: {} exists (installed by hand?); not overwriting it", p.display());
            return;
        }
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out_dir = tempfile::Builder::new().prefix("genfs-deb-").tempdir().unwrap();
    // The release binary this test suite runs was built by the same cargo; build-deb reuses it.
    let deb = ok(Command::new(repo.join("packaging/build-deb")).arg(out_dir.path()).current_dir(repo));
    let deb = PathBuf::from(deb.lines().last().expect("build-deb prints the .deb path").trim());
    assert!(deb.is_file(), "{}", deb.display());
    let contents = ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/genfs",
        "./sbin/mount.genfs -> /usr/bin/genfs",
        "./sbin/umount.fuse.genfs -> /usr/bin/genfs",
        "./usr/share/man/man1/genfs.1.gz",
        "./usr/share/man/man8/mount.genfs.8.gz",
        "./usr/share/man/man7/genfs-xattr.7.gz",
        "./usr/share/bash-completion/completions/genfs",
        "./lib/systemd/system/genfs@.service",
        "./usr/share/doc/genfs/guide.md",
    ] {
        assert!(contents.contains(want), "{want} missing from the package:\n{contents}");
    }

    struct Package;
    impl Drop for Package {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["-r", "genfs"]).status();
        }
    }
    ok(Command::new("dpkg").arg("-i").arg(&deb));
    let _package = Package;
    let s = Scratch::new("deb");
    let store = s.path("store");
    let mnt = s.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    ok(Command::new("/usr/bin/genfs").arg("mkfs").arg(&store));
    ok(Command::new("mount").args(["-t", "genfs"]).arg(&store).arg(&mnt));
    assert_eq!(mount_of(&mnt).unwrap().0, "fuse.genfs");
    std::fs::write(mnt.join("f"), b"from the package").unwrap();
    let pid = daemon_pid(&store);
    assert!(std::fs::read_link(format!("/proc/{pid}/exe")).unwrap().ends_with("usr/bin/genfs"));
    ok(Command::new("umount").arg(&mnt));
    assert!(!alive(pid));
    let fstab = s.path("fstab");
    std::fs::write(&fstab, format!("{} {} genfs defaults,nofail 0 0\n", store.display(), mnt.display()))
        .unwrap();
    ok(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"from the package");
    ok(Command::new("umount").arg(&mnt));
    let page = ok(Command::new("man").arg("genfs").env("MANWIDTH", "100").env("MANPAGER", "cat"));
    assert!(page.contains("genfs") && page.contains("SYNOPSIS"), "{page}");
    let page = ok(Command::new("man").args(["8", "mount.genfs"]).env("MANPAGER", "cat"));
    assert!(page.contains("fstab") || page.contains("FSTAB"), "{page}");
    ok(Command::new("man").args(["7", "genfs-xattr"]).env("MANPAGER", "cat"));
    drop(_package);
    assert!(!Path::new("/usr/bin/genfs").exists() && !Path::new("/sbin/mount.genfs").exists());
}
