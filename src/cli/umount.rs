//! `genfs umount`: unmounts and returns only after the daemon has made everything durable
//! (final journal sync and checkpoint) and exited.
//!
//! umount(2) returns as soon as the kernel has detached the mount; the daemon learns of it
//! afterwards and still has to finish. The daemon holds an exclusive flock on `STORE/lock`
//! (which also holds its pid) until the store is closed, so waiting for that lock, then for
//! the pid, is waiting for the end. `umount.genfs`/`umount.fuse.genfs` run this for umount(8).

use anyhow::{anyhow, bail, Context};
use clap::Args;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

pub const UMOUNT_EXAMPLES: &str = "\
Examples:
  genfs umount ~/genfs
  umount /projects            # the same for root: umount(8) runs umount.fuse.genfs
  genfs umount --lazy /projects";

#[derive(Args, Debug)]
#[command(after_help = UMOUNT_EXAMPLES)]
pub struct UmountArgs {
    /// The mount point of a genfs mount.
    mountpoint: PathBuf,
    /// Detach now and return without waiting: the daemon finishes once the last open file
    /// on the mount is closed (umount -l).
    #[arg(short = 'l', long)]
    lazy: bool,
    /// Abort the FUSE connection (umount -f): requests in flight fail, commits already
    /// acknowledged stay durable. Then wait for the daemon as usual.
    #[arg(short = 'f', long)]
    force: bool,
    /// Say what is being waited for.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Give up waiting for the daemon after this many seconds (default: wait as long as it takes).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Unmount other filesystems too, plainly (used by the umount(8) helper, which a stale
    /// utab entry may send a mount that is not genfs).
    #[arg(long, hide = true)]
    any: bool,
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub id: u64,
    pub mountpoint: PathBuf,
    /// The per-mount options (`rw,nosuid,relatime`), not the superblock's.
    pub options: String,
    pub fstype: String,
    pub source: PathBuf,
    /// The superblock's options (`rw,lazytime,user_id=0`).
    pub super_options: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let fields: Vec<&str> = head.split(' ').collect();
            let mut t = tail.split(' ');
            let (fstype, source) = (t.next()?, t.next()?);
            let super_options = t.next().unwrap_or("").to_string();
            Some(MountEntry {
                id: fields.first()?.parse().ok()?,
                mountpoint: unescape(fields.get(4)?),
                options: fields.get(5)?.to_string(),
                fstype: fstype.into(),
                source: unescape(source),
                super_options,
            })
        })
        .collect()
}

/// The mount on `mnt` (the topmost one), if any.
pub fn find_mount(mnt: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text).into_iter().rev().find(|m| m.mountpoint == mnt)
}

/// The absolute, symlink-free form of `p`; for a dead FUSE mount (which cannot be stat'ed) the
/// lexically normalised absolute path.
fn resolve(p: &Path) -> anyhow::Result<PathBuf> {
    match std::fs::canonicalize(p) {
        Ok(c) => Ok(c),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            let abs = std::path::absolute(p)?;
            let mut out = PathBuf::new();
            for c in abs.components() {
                match c {
                    Component::ParentDir => {
                        out.pop();
                    }
                    Component::CurDir => {}
                    c => out.push(c),
                }
            }
            Ok(out)
        }
        Err(e) => Err(anyhow!("{}: {}", p.display(), super::history::cause(&e))),
    }
}

/// The daemon serving a store, found through its lock.
struct Daemon {
    lock: std::fs::File,
    pid: i32,
    pidfd: Option<OwnedFd>,
}

fn flock(f: &std::fs::File, op: libc::c_int) -> bool {
    // SAFETY: flock on a valid descriptor.
    unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// The daemon holding `STORE/lock`, if one does (`Ok(None)`: nobody, e.g. a dead mount).
fn find_daemon(store: &Path) -> std::io::Result<Option<Daemon>> {
    let lock = std::fs::File::open(store.join("lock"))?;
    if flock(&lock, libc::LOCK_SH) {
        flock(&lock, libc::LOCK_UN);
        return Ok(None);
    }
    let pid: i32 = std::fs::read_to_string(store.join("lock"))?.trim().parse().unwrap_or(0);
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor pidfd_open just returned, owned by nobody else.
    let pidfd = (pid > 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) });
    Ok(Some(Daemon { lock, pid, pidfd }))
}

impl Daemon {
    /// Waits until the store is closed and the process has exited.
    fn wait(&self, store: &Path, timeout: Option<Duration>, verbose: bool) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut told = verbose;
        if verbose {
            eprintln!("genfs: waiting for the daemon (pid {}) to close {}", self.pid, store.display());
        }
        while !flock(&self.lock, libc::LOCK_EX) {
            if !told && start.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "genfs: waiting for the daemon (pid {}) to finish writing {}",
                    self.pid,
                    store.display()
                );
                told = true;
            }
            if timeout.is_some_and(|t| start.elapsed() > t) {
                bail!(
                    "the genfs daemon (pid {}) is still closing {} after {} s; it goes on in the background",
                    self.pid,
                    store.display(),
                    start.elapsed().as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        flock(&self.lock, libc::LOCK_UN);
        // The store is closed; the process exits right after. Wait for that too (bounded).
        if let Some(fd) = &self.pidfd {
            let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut p, 1, 10_000) };
        }
        if verbose {
            eprintln!("genfs: daemon {} exited after {:.1} s", self.pid, start.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

fn fusermount_unmount(mnt: &Path, lazy: bool) -> anyhow::Result<()> {
    let prog = ["fusermount3", "fusermount"]
        .into_iter()
        .find(|p| Command::new(p).arg("-V").output().is_ok())
        .ok_or_else(|| {
            anyhow!("{}: not allowed to unmount, and fusermount3 is not installed", mnt.display())
        })?;
    let mut cmd = Command::new(prog);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg("--").arg(mnt).output().with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.trim().trim_start_matches(&format!("{prog}: ")).to_string();
        if err.contains("Device or resource busy") {
            bail!("{}: target is busy: {}", mnt.display(), busy_hint(mnt));
        }
        bail!("{err}");
    }
    Ok(())
}

/// umount(8) without helpers (`-i`): as root it also drops the mount's utab entry. `None` if
/// umount(8) is not installed.
fn umount_internal(mnt: &Path, lazy: bool, force: bool) -> Option<anyhow::Result<()>> {
    let prog = ["/usr/bin/umount", "/bin/umount"].into_iter().find(|p| Path::new(p).is_file())?;
    let mut cmd = Command::new(prog);
    cmd.arg("-i");
    if lazy {
        cmd.arg("-l");
    }
    if force {
        cmd.arg("-f");
    }
    let out = match cmd.arg("--").arg(mnt).output() {
        Ok(out) => out,
        Err(_) => return None,
    };
    if out.status.success() {
        return Some(Ok(()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim().trim_start_matches("umount: ").trim_end_matches('.').to_string();
    Some(Err(if err.contains("target is busy") {
        anyhow!("{err}: {BUSY_HINT}", BUSY_HINT = busy_hint(mnt))
    } else {
        anyhow!("{err}")
    }))
}

fn busy_hint(mnt: &Path) -> String {
    format!(
        "a process has a file open or its working directory there (`fuser -vm {}` shows which); \
         `genfs umount --lazy` detaches it anyway",
        mnt.display()
    )
}

fn unmount(mnt: &Path, lazy: bool, force: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        if let Some(result) = umount_internal(mnt, lazy, force) {
            return result;
        }
    }
    let c = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())?;
    let mut flags = 0;
    if lazy {
        flags |= libc::MNT_DETACH;
    }
    if force {
        flags |= libc::MNT_FORCE;
    }
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EPERM) => fusermount_unmount(mnt, lazy),
        Some(libc::EBUSY) => bail!("{}: target is busy: {}", mnt.display(), busy_hint(mnt)),
        Some(libc::EINVAL) => bail!("{}: not mounted", mnt.display()),
        _ => bail!("{}: cannot unmount: {}", mnt.display(), super::history::cause(&e)),
    }
}

pub fn umount(args: UmountArgs) -> anyhow::Result<ExitCode> {
    let mnt = resolve(&args.mountpoint)?;
    let Some(entry) = find_mount(&mnt) else { bail!("{}: not mounted", mnt.display()) };
    if entry.fstype != "fuse.genfs" {
        if args.any {
            unmount(&mnt, args.lazy, args.force)?;
            return Ok(ExitCode::SUCCESS);
        }
        bail!("{}: not a genfs mount (type {}); use umount", mnt.display(), entry.fstype);
    }
    let daemon = match find_daemon(&entry.source) {
        Ok(d) => d,
        Err(e) => {
            if args.verbose {
                eprintln!(
                    "genfs: cannot find the daemon of {} ({}); not waiting for it",
                    entry.source.display(),
                    super::history::cause(&e)
                );
            }
            None
        }
    };
    unmount(&mnt, args.lazy, args.force)?;
    match daemon {
        Some(d) if !args.lazy => {
            d.wait(&entry.source, args.timeout.map(Duration::from_secs), args.verbose)?
        }
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                    98 29 0:52 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:1 - fuse.genfs /srv/st\\134ore rw,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(
            m[1],
            MountEntry {
                id: 98,
                mountpoint: "/tmp/a b".into(),
                options: "rw,nosuid,nodev,relatime".into(),
                fstype: "fuse.genfs".into(),
                source: "/srv/st\\ore".into(),
                super_options: "rw,user_id=0".into(),
            }
        );
        assert_eq!(unescape("a\\012b\\"), PathBuf::from("a\nb\\"));
    }
}
