//! Shared test machinery: a real genfs mount per test, cleaned up even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn genfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_genfs")
}

/// Seed for randomized tests: GENFS_TEST_SEED or the clock; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("GENFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64 ^ now_nanos()
    });
    eprintln!("{test}: GENFS_TEST_SEED={seed}");
    seed
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// xorshift64*: small, seeded, good enough for workloads.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    mount_device(mnt).is_some()
}

/// The device (`major:minor`, field 3 of /proc/self/mountinfo) of the mount at `mnt`.
fn mount_device(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mnt.to_string_lossy();
    info.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        (fields.get(4) == Some(&&*mnt)).then(|| fields[2].to_string())
    })
}

/// Polls `f` every 10 ms until it holds or `deadline` passes; whether it held.
pub fn wait_until(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// A store and a mounted genfs daemon (foreground child, so we own its PID). Dropping it
/// unmounts and reaps the daemon; a dead mount is detached with `umount -l`.
pub struct Mounted {
    pub store: PathBuf,
    pub mnt: PathBuf,
    /// Environment of the daemon (besides the test's own).
    pub daemon_env: Vec<(String, String)>,
    daemon: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mounted {
    pub fn new(test: &str) -> Mounted {
        Self::with_mkfs_args(test, &[])
    }

    pub fn with_mkfs_args(test: &str, mkfs_args: &[&str]) -> Mounted {
        Self::in_dir(test, &std::env::temp_dir(), mkfs_args)
    }

    /// A store and mount point in a new directory under `parent` (e.g. a small filesystem).
    pub fn in_dir(test: &str, parent: &Path, mkfs_args: &[&str]) -> Mounted {
        Self::of_store(test, parent, |store| {
            let out =
                Command::new(genfs_bin()).arg("mkfs").arg(store).args(mkfs_args).output().expect("run mkfs");
            assert!(out.status.success(), "mkfs failed: {}", String::from_utf8_lossy(&out.stderr));
        })
    }

    /// A mount of the store that `make` puts at the path it is given (a new directory under
    /// `parent`).
    pub fn of_store(test: &str, parent: &Path, make: impl FnOnce(&Path)) -> Mounted {
        let dir =
            tempfile::Builder::new().prefix(&format!("genfs-{test}-")).tempdir_in(parent).expect("temp dir");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        make(&store);
        let mut m = Mounted { store, mnt, daemon_env: Vec::new(), daemon: None, _dir: dir };
        m.mount();
        m
    }

    /// The daemon, no longer this mount's to reap (a test that unmounts behind its back).
    pub fn take_daemon(&mut self) -> Option<Child> {
        self.daemon.take()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn mount(&mut self) {
        assert!(self.daemon.is_none(), "already mounted");
        let log = std::fs::File::create(self.store.with_extension("log")).expect("log file");
        let child = Command::new(genfs_bin())
            .arg("mount")
            .arg(&self.store)
            .arg(&self.mnt)
            .args(["-f", "-o", "allow_other"])
            .envs(self.daemon_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn genfs mount");
        self.daemon = Some(child);
        let mnt = self.mnt.clone();
        if !wait_until(Duration::from_secs(20), || is_mounted(&mnt)) {
            let log = std::fs::read_to_string(self.store.with_extension("log")).unwrap_or_default();
            self.cleanup();
            panic!("genfs did not mount within 20 s; daemon log:\n{log}");
        }
    }

    /// Clean unmount; waits for the daemon to exit and checks it exited 0.
    pub fn unmount(&mut self) {
        // The kernel drops a closed file's last reference asynchronously: retry EBUSY briefly.
        let unmounted = wait_until(Duration::from_secs(10), || {
            Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
        });
        assert!(unmounted, "umount {} failed", self.mnt.display());
        let mut child = self.daemon.take().expect("daemon");
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().expect("wait daemon") {
                assert!(st.success(), "daemon exited with {st}");
                return;
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit within 30 s of umount");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// SIGKILL the daemon (a crash of the process, not of the machine). The dead mount stays
    /// (every access fails with ENOTCONN) until [`Mounted::detach`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            // A killed daemon can fail to exit for good: a commit worker sending inval_entry
            // waits, uninterruptibly, for a directory's lock held by a request that only the
            // dead daemon could answer, and keeps /dev/fuse open. Abort the connection then,
            // as an administrator would.
            if !wait_until(Duration::from_secs(2), || matches!(child.try_wait(), Ok(Some(_)))) {
                eprintln!("daemon stuck after SIGKILL: aborting its FUSE connection");
                abort_connection(&self.mnt);
            }
            let _ = child.wait();
        }
    }

    /// SIGTERM the daemon: it must unmount and exit 0 on its own.
    pub fn terminate(&mut self) {
        let mut child = self.daemon.take().expect("daemon");
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let exited = wait_until(Duration::from_secs(30), || matches!(child.try_wait(), Ok(Some(_))));
        assert!(exited, "daemon did not exit after SIGTERM");
        let status = child.wait().expect("wait daemon");
        assert!(status.success(), "daemon exited with {status} after SIGTERM");
        assert!(!is_mounted(&self.mnt), "SIGTERM left the mount behind");
    }

    /// Detaches a dead mount.
    pub fn detach(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        assert!(wait_until(Duration::from_secs(10), || !is_mounted(&self.mnt)));
    }

    fn cleanup(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status();
        }
        if let Some(mut child) = self.daemon.take() {
            if !wait_until(Duration::from_secs(10), || matches!(child.try_wait(), Ok(Some(_)))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Aborts the FUSE connection of the mount at `mnt` through fusectl (mounted for the purpose
/// if it is not, and unmounted again).
pub fn abort_connection(mnt: &Path) {
    let device = mount_device(mnt);
    let Some(minor) = device.as_deref().and_then(|d| d.split(':').nth(1)) else { return };
    let connections = Path::new("/sys/fs/fuse/connections");
    let mounted_here = std::fs::read_dir(connections).is_ok_and(|mut d| d.next().is_none())
        && Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(connections)
            .status()
            .is_ok_and(|s| s.success());
    let _ = std::fs::write(connections.join(minor).join("abort"), "1");
    if mounted_here {
        let _ = Command::new("umount").arg(connections).status();
    }
}

/// The errno of a failed call; 0 if it succeeded.
pub fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

/// Runs a shell command, returns (exit ok, stdout).
pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bytes under `path` (`du -sb`).
pub fn du(path: &Path) -> u64 {
    let (ok, out) = sh(&format!("du -sb '{}'", path.display()));
    assert!(ok);
    out.split_whitespace().next().unwrap().parse().unwrap()
}

pub fn getfattr(path: &Path, name: &str) -> Option<String> {
    xattr::get(path, name).ok().flatten().map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Writes a whole file and closes it, reporting the error of close(2): that is where genfs
/// reports a failed commit (std's `File` drop ignores it).
/// A number of the mount's `user.genfs.stats`.
pub fn stat_value(mnt: &Path, key: &str) -> u64 {
    let text = getfattr(mnt, "user.genfs.stats").unwrap();
    let value = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('\t'));
    value.unwrap_or_else(|| panic!("no {key} in the stats:\n{text}")).parse().unwrap()
}

pub fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from into_raw_fd and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// fcntl(cmd) of a lock of `typ` on [start, start + len) (len 0: to the end of the file).
pub fn fcntl_lock(f: &std::fs::File, cmd: i32, typ: i32, start: i64, len: i64) -> bool {
    // SAFETY: a zeroed flock is a valid request once its fields are set (l_pid 0, as OFD
    // locks require).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: valid descriptor and flock pointer.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(f), cmd, &fl) == 0 }
}

/// Aborts the FUSE connection of `mnt` if not disarmed within `limit`, so that a hung daemon
/// fails the test instead of hanging it (processes waiting on the mount get ENOTCONN). The
/// limit guards liveness only: set it far above any normal run.
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl Watchdog {
    pub fn arm(mnt: &Path, limit: Duration) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, mnt) = (done.clone(), mnt.to_path_buf());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                if start.elapsed() > limit {
                    abort_connection(&mnt);
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            true
        });
        Watchdog { done, thread: Some(thread) }
    }

    /// Stops it; false if it had fired.
    pub fn disarm(mut self) -> bool {
        self.stop()
    }

    fn stop(&mut self) -> bool {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().is_none_or(|t| t.join().unwrap_or(false))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}
