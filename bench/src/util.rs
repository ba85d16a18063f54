//! Small helpers: stop requests (signals), cache dropping, syncs, random data, statistics,
//! external commands and a few raw syscalls the standard library does not offer.

use anyhow::{bail, Context};
use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP ask the run to stop at the next check, so that every mount
/// guard still runs its `Drop` (a signal's default action would leave mounts behind).
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Fails once a stop was requested; called between steps and inside long loops.
pub fn check_stop() -> anyhow::Result<()> {
    if stop_requested() {
        bail!("interrupted");
    }
    Ok(())
}

/// Writes back everything, then drops the page cache, dentries and inodes (cold runs).
pub fn drop_caches() -> anyhow::Result<()> {
    sync_all();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("echo 3 > /proc/sys/vm/drop_caches (needs root)")
}

pub fn sync_all() {
    // SAFETY: sync has no arguments and cannot fail.
    unsafe { libc::sync() };
}

pub fn fsync_dir(dir: &Path) -> anyhow::Result<()> {
    let f = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    f.sync_all().with_context(|| format!("fsync {}", dir.display()))
}

/// xorshift64*: fast, seeded, good enough to make data incompressible and unique.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Puts a unique stamp at the start of a buffer, so no two written blocks are equal (genfs
/// deduplicates equal chunks; the benchmark must not profit from that).
pub fn stamp(buf: &mut [u8], a: u64, b: u64) {
    buf[..8].copy_from_slice(&a.to_le_bytes());
    buf[8..16].copy_from_slice(&b.to_le_bytes());
}

pub fn time<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let start = Instant::now();
    let value = f()?;
    Ok((value, start.elapsed()))
}

pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs a command to completion; its stderr becomes part of the error.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cpath(path: &Path) -> anyhow::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).with_context(|| format!("NUL in {}", path.display()))
}

pub fn getxattr(path: &Path, name: &str) -> anyhow::Result<Vec<u8>> {
    let p = cpath(path)?;
    let n = CString::new(name)?;
    let mut buf = vec![0u8; 1 << 17];
    // SAFETY: valid NUL-terminated strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        let e = std::io::Error::last_os_error();
        return Err(e).with_context(|| format!("getxattr {name} on {}", path.display()));
    }
    buf.truncate(len as usize);
    Ok(buf)
}

pub fn setxattr(path: &Path, name: &str, value: &[u8]) -> anyhow::Result<()> {
    let p = cpath(path)?;
    let n = CString::new(name)?;
    // SAFETY: valid NUL-terminated strings and a value of the stated length.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Err(e).with_context(|| format!("setxattr {name} on {}", path.display()));
    }
    Ok(())
}

/// Tells the kernel the descriptor is read at random (no readahead), as fio does by default.
pub fn fadvise_random(f: &File) {
    // SAFETY: a valid descriptor; advice only.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// Reads `f` from the start to the end in `buf`-sized reads; returns the bytes read.
pub fn read_all(f: &File, buf: &mut [u8]) -> anyhow::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut pos = 0u64;
    loop {
        let n = f.read_at(buf, pos).context("read")?;
        if n == 0 {
            return Ok(pos);
        }
        pos += n as u64;
    }
}

pub fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

pub fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Removes a tree if it exists (outside any timed region unless the caller times it).
pub fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("rm -rf {}", path.display())),
    }
}

/// The first line of `/proc/loadavg`'s three load figures.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn stamped_buffers_differ() {
        let mut a = vec![0u8; 64];
        Rng::new(1).fill(&mut a);
        let mut b = a.clone();
        stamp(&mut a, 1, 2);
        stamp(&mut b, 1, 3);
        assert_ne!(a, b);
    }
}
