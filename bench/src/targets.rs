//! The four targets and their mounts. Every mount is owned by a [`Mount`] guard that unmounts
//! it in `Drop` (also on error, panic, or a stop requested by a signal) and waits for the
//! daemon it started to exit. The only processes the benchmark ever signals are daemons it
//! started itself, found by their exact mount point argument right after mounting.

use crate::util;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Native,
    Bindfs,
    Overlay,
    Genfs,
}

impl Kind {
    /// Column order of the table; also the interleaving order of every run.
    pub const ALL: [Kind; 4] = [Kind::Native, Kind::Bindfs, Kind::Overlay, Kind::Genfs];
    pub const PEERS: [Kind; 2] = [Kind::Bindfs, Kind::Overlay];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Bindfs => "bindfs",
            Kind::Overlay => "fuse-overlayfs",
            Kind::Genfs => "genfs",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

pub struct Target {
    pub kind: Kind,
    /// Where the workloads run: the native directory or the mount point.
    pub root: PathBuf,
    pub mount: Option<Mount>,
}

impl Target {
    /// Durability by `fsync` (native and peers); genfs makes every close durable by itself.
    pub fn needs_fsync(&self) -> bool {
        self.kind != Kind::Genfs
    }
}

/// Creates the target's directories under `scratch` and mounts it.
pub fn setup(kind: Kind, scratch: &Path, genfs: &Path) -> anyhow::Result<Target> {
    let dir = scratch.join(kind.name());
    util::remove_tree(&dir)?;
    let mk = |p: &Path| std::fs::create_dir_all(p).with_context(|| format!("mkdir {}", p.display()));
    let mnt = dir.join("mnt");
    mk(&mnt)?;
    let mount = match kind {
        Kind::Native => None,
        Kind::Bindfs => {
            let back = dir.join("back");
            mk(&back)?;
            let mut cmd = Command::new("bindfs");
            cmd.args(["-o", "big_writes"]).arg(&back).arg(&mnt);
            Some(Mount::start(cmd, &mnt, "bindfs")?)
        }
        Kind::Overlay => {
            let (lower, upper, work) = (dir.join("lower"), dir.join("upper"), dir.join("work"));
            for p in [&lower, &upper, &work] {
                mk(p)?;
            }
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            let mut cmd = Command::new("fuse-overlayfs");
            cmd.args(["-o", &opts]).arg(&mnt);
            Some(Mount::start(cmd, &mnt, "fuse-overlayfs")?)
        }
        Kind::Genfs => {
            let store = dir.join("store");
            util::run(Command::new(genfs).arg("mkfs").arg(&store))?;
            Some(Mount::genfs(genfs, &store, &mnt)?.0)
        }
    };
    Ok(Target { kind, root: mnt, mount })
}

pub struct Mount {
    pub point: PathBuf,
    /// Daemons this mount started (each found by its exact mount point argument).
    pub pids: Vec<i32>,
    label: String,
    mounted: bool,
}

impl Mount {
    /// Runs a mount command that returns once the mount is ready (bindfs, fuse-overlayfs and
    /// `genfs mount` all daemonize after mounting).
    fn start(mut cmd: Command, point: &Path, label: &str) -> anyhow::Result<Mount> {
        util::run(&mut cmd).with_context(|| format!("cannot mount {label} on {}", point.display()))?;
        let mut m = Mount { point: point.to_path_buf(), pids: vec![], label: label.into(), mounted: true };
        if !is_mounted(point) {
            m.mounted = false;
            bail!("{label}: {} is not in /proc/self/mountinfo after mounting", point.display());
        }
        m.pids = daemons_with_arg(point);
        Ok(m)
    }

    /// Mounts a genfs store; also returns how long `genfs mount` took (open, recovery, mount).
    pub fn genfs(genfs: &Path, store: &Path, point: &Path) -> anyhow::Result<(Mount, Duration)> {
        let mut cmd = Command::new(genfs);
        cmd.arg("mount").arg(store).arg(point);
        let start = Instant::now();
        let m = Mount::start(cmd, point, "genfs")?;
        Ok((m, start.elapsed()))
    }

    /// Kills the daemons of this mount with SIGKILL (they are ours), then detaches the dead
    /// mount. Used to measure recovery.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        for &pid in &self.pids {
            // SAFETY: sending a signal to a process we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        self.wait_for_daemons(Duration::from_secs(30))?;
        self.unmount()
    }

    /// `umount`, retried while busy, lazily as a last resort; then waits for the daemons.
    pub fn unmount(&mut self) -> anyhow::Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("umount").arg(&self.point).output().context("cannot run umount")?;
            if out.status.success() || !is_mounted(&self.point) {
                self.mounted = false;
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.mounted {
            eprintln!("warning: umount {} keeps failing ({last}); detaching it lazily", self.point.display());
            util::run(Command::new("umount").arg("-l").arg(&self.point))?;
            self.mounted = false;
        }
        // genfs writes its final checkpoint after the unmount: wait, or its store is still busy.
        self.wait_for_daemons(Duration::from_secs(300))
    }

    fn wait_for_daemons(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists()) {
            if start.elapsed() > limit {
                bail!("{} daemon {:?} still running {limit:?} after unmount", self.label, self.pids);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Resident and peak resident memory of the daemon, in KiB.
    pub fn daemon_rss_kib(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pids.first()?)).ok()?;
        let field = |name: &str| {
            status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("warning: cleanup of {} on {}: {e:#}", self.label, self.point.display());
        }
    }
}

/// Whether `point` is a mount point (exact match in /proc/self/mountinfo).
pub fn is_mounted(point: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = point.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&want))
}

/// Processes (other than this one) with `arg` as one of their command line arguments.
fn daemons_with_arg(arg: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let want = arg.as_os_str().as_encoded_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else { return vec![] };
    let mut pids = vec![];
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|a| a == want) {
            pids.push(pid);
        }
    }
    pids
}
