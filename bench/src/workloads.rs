//! W1–W6: the same workload against every target, interleaved (native, bindfs,
//! fuse-overlayfs, genfs, native, …), so slow drifts of the machine hit all targets alike.

use crate::config::Sizes;
use crate::report::{Better, Report};
use crate::targets::{Kind, Target};
use crate::util::{self, Rng};
use anyhow::{bail, ensure, Context};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::IntoRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SMALL_FILE_BYTES: usize = 4096;
const RANDOM_READ_BYTES: u64 = 4096;

pub struct Sample {
    pub key: String,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    pub value: f64,
}

fn sample(
    key: impl Into<String>,
    label: impl Into<String>,
    unit: &'static str,
    better: Better,
    value: f64,
) -> Sample {
    Sample { key: key.into(), label: label.into(), unit, better, value }
}

/// Runs `f` for every run and every target, in interleaved order, and records its samples.
pub fn interleave(
    targets: &[Target],
    runs: usize,
    report: &mut Report,
    name: &str,
    mut f: impl FnMut(&Target, usize) -> anyhow::Result<Vec<Sample>>,
) -> anyhow::Result<()> {
    for rep in 0..runs {
        for t in targets {
            util::check_stop()?;
            let samples =
                f(t, rep).with_context(|| format!("{name} on {} (run {})", t.kind.name(), rep + 1))?;
            for s in samples {
                eprintln!(
                    "  {name} run {}/{runs} {:<15} {:<40} {:>12} {}",
                    rep + 1,
                    t.kind.name(),
                    s.label,
                    crate::report::fmt_value(s.value),
                    s.unit
                );
                report.add(&s.key, &s.label, s.unit, s.better, t.kind, s.value);
            }
        }
    }
    Ok(())
}

/// close(2) with its result: genfs reports the outcome of the commit there.
pub fn close(f: File) -> anyhow::Result<()> {
    let fd = f.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd`, so nothing else closes it.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error()).context("close");
    }
    Ok(())
}

/// A random 1 MiB block; every write stamps it so no two written chunks are equal.
pub fn random_block(seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MIB as usize];
    Rng::new(seed).fill(&mut buf);
    buf
}

/// Writes `bytes` in 1 MiB writes; `fsync` before close when asked. Times open to close.
pub fn write_file(
    path: &Path,
    bytes: u64,
    fsync: bool,
    block: &mut [u8],
    seed: u64,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let mut done = 0u64;
    let mut i = 0u64;
    while done < bytes {
        util::stamp(block, seed, i);
        let n = (bytes - done).min(block.len() as u64) as usize;
        f.write_all(&block[..n]).with_context(|| format!("write {}", path.display()))?;
        done += n as u64;
        i += 1;
    }
    if fsync {
        f.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    }
    close(f).with_context(|| format!("close {}", path.display()))?;
    Ok(start.elapsed())
}

pub fn w1(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let bytes = sizes.big_file_bytes;
    let label = format!("W1 sequential write {}, 1 MiB writes (+fsync; genfs: close)", size_name(bytes));
    let mut block = random_block(1);
    interleave(targets, runs, report, "W1", |t, rep| {
        let path = t.root.join(format!("w1-{rep}.dat"));
        util::sync_all();
        let d = write_file(&path, bytes, t.needs_fsync(), &mut block, 100 + rep as u64 * 8 + t.kind as u64)?;
        std::fs::remove_file(&path).with_context(|| format!("rm {}", path.display()))?;
        util::sync_all();
        Ok(vec![sample("W1.write", label.as_str(), "MiB/s", Better::Higher, util::mib_per_s(bytes, d))])
    })
}

/// The file W2 and W3 read: written once per target, synced.
fn big_file(t: &Target) -> PathBuf {
    t.root.join("w2.dat")
}

pub fn prepare_big_files(targets: &[Target], sizes: &Sizes) -> anyhow::Result<()> {
    let mut block = random_block(2);
    for t in targets {
        util::check_stop()?;
        write_file(&big_file(t), sizes.big_file_bytes, t.needs_fsync(), &mut block, 200 + t.kind as u64)?;
    }
    util::sync_all();
    Ok(())
}

pub fn w2(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let bytes = sizes.big_file_bytes;
    let name = size_name(bytes);
    let mut buf = vec![0u8; MIB as usize];
    interleave(targets, runs, report, "W2", |t, _| {
        let f = File::open(big_file(t))?;
        util::drop_caches()?;
        let (cold, dc) = util::time(|| util::read_all(&f, &mut buf))?;
        let (warm, dw) = util::time(|| util::read_all(&f, &mut buf))?;
        ensure!(cold == bytes && warm == bytes, "read {cold} and {warm} bytes, expected {bytes}");
        Ok(vec![
            sample(
                "W2.cold",
                format!("W2 sequential read {name}, cold"),
                "MiB/s",
                Better::Higher,
                util::mib_per_s(bytes, dc),
            ),
            sample(
                "W2.warm",
                format!("W2 sequential read {name}, warm"),
                "MiB/s",
                Better::Higher,
                util::mib_per_s(bytes, dw),
            ),
        ])
    })
}

/// W2 copy: `cp --reflink=auto` of the W2 file within its filesystem, durable (the peers: cp,
/// then fsync of the copy; genfs: cp, whose close commits). genfs shares the chunks.
pub fn w2_copy(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let label = format!(
        "W2 cp --reflink=auto of the {} file (+fsync; genfs: close)",
        size_name(sizes.big_file_bytes)
    );
    interleave(targets, runs, report, "W2 copy", |t, rep| {
        let copy = t.root.join(format!("w2-copy-{rep}.dat"));
        util::sync_all();
        let ((), d) = util::time(|| {
            let status = Command::new("cp").arg("--reflink=auto").arg(big_file(t)).arg(&copy).status()?;
            ensure!(status.success(), "cp {} {}: {status}", big_file(t).display(), copy.display());
            if t.needs_fsync() {
                File::open(&copy)?.sync_all()?;
            }
            Ok(())
        })?;
        ensure!(std::fs::metadata(&copy)?.len() == sizes.big_file_bytes, "the copy has another size");
        std::fs::remove_file(&copy).with_context(|| format!("rm {}", copy.display()))?;
        Ok(vec![sample("W2.copy", label.as_str(), "ms", Better::Lower, util::ms(d))])
    })
}

pub fn w3(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let cases = [(1usize, false), (1, true), (4, false), (4, true)];
    let name = size_name(sizes.big_file_bytes);
    interleave(targets, runs, report, "W3", |t, rep| {
        let mut out = vec![];
        for (threads, warm) in cases {
            let iops = random_reads(&big_file(t), sizes, threads, warm, rep as u64)?;
            let temp = if warm { "warm" } else { "cold" };
            out.push(sample(
                format!("W3.{temp}.t{threads}"),
                format!("W3 random 4 KiB reads over {name}, {threads} thread{}, {temp}", plural(threads)),
                "reads/s",
                Better::Higher,
                iops,
            ));
        }
        Ok(out)
    })
}

/// Random aligned 4 KiB preads for `random_secs`; returns reads per second over all threads.
fn random_reads(path: &Path, sizes: &Sizes, threads: usize, warm: bool, seed: u64) -> anyhow::Result<f64> {
    // All descriptors are opened first: bindfs (libfuse 2 without kernel_cache) drops the
    // file's page cache at every open, which would undo the warm-up.
    let files: Vec<File> = (0..threads).map(|_| File::open(path)).collect::<Result<_, _>>()?;
    if warm {
        util::read_all(&files[0], &mut vec![0u8; MIB as usize])?;
    } else {
        util::drop_caches()?;
    }
    for f in &files {
        util::fadvise_random(f);
    }
    let blocks = sizes.big_file_bytes / RANDOM_READ_BYTES;
    let limit = Duration::from_secs_f64(sizes.random_secs);
    let barrier = Barrier::new(threads + 1);
    let (total, elapsed) = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let barrier = &barrier;
                s.spawn(move || -> std::io::Result<u64> {
                    let mut rng = Rng::new(seed * 64 + i as u64 + 1);
                    let mut buf = vec![0u8; RANDOM_READ_BYTES as usize];
                    barrier.wait();
                    let start = Instant::now();
                    let mut n = 0u64;
                    while n % 32 != 0 || start.elapsed() < limit {
                        f.read_exact_at(&mut buf, rng.below(blocks) * RANDOM_READ_BYTES)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let counts: Vec<_> = handles.into_iter().map(|h| h.join().expect("reader thread panicked")).collect();
        (counts, start.elapsed())
    });
    let mut reads = 0;
    for c in total {
        reads += c.context("random read")?;
    }
    Ok(reads as f64 / elapsed.as_secs_f64())
}

pub fn w4(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let cases = [(1usize, false), (1, true), (8, false), (8, true)];
    let n = sizes.small_files;
    interleave(targets, runs, report, "W4", |t, rep| {
        let mut out = vec![];
        for (threads, safe) in cases {
            let dir = t.root.join(format!("w4-{rep}-{threads}-{safe}"));
            util::remove_tree(&dir)?;
            std::fs::create_dir(&dir)?;
            util::fsync_dir(&t.root)?;
            util::sync_all();
            let limit = Duration::from_secs_f64(sizes.small_files_secs_max);
            let (made, d) = small_files(&dir, n, threads, safe && t.needs_fsync(), rep as u64, limit)?;
            util::remove_tree(&dir)?;
            util::sync_all();
            let mode = if safe { "safe: fsync file + dir (genfs: close)" } else { "no fsync (genfs: close)" };
            out.push(sample(
                format!("W4.{}.t{threads}", if safe { "safe" } else { "nosync" }),
                format!("W4 4 KiB files (≤ {n} per case), {threads} thread{}, {mode}", plural(threads)),
                "files/s",
                Better::Higher,
                util::per_s(made, d),
            ));
        }
        Ok(out)
    })
}

/// Creates `n` 4 KiB files in `dir` from `threads` threads: create, write, [fsync file], close,
/// [fsync dir]. Stops early after `limit`; returns the files made and the time taken.
fn small_files(
    dir: &Path,
    n: usize,
    threads: usize,
    fsync: bool,
    seed: u64,
    limit: Duration,
) -> anyhow::Result<(usize, Duration)> {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|tid| {
                let barrier = &barrier;
                s.spawn(move || -> anyhow::Result<usize> {
                    let dirf = File::open(dir)?;
                    let mut block = vec![0u8; SMALL_FILE_BYTES];
                    Rng::new(seed * 1000 + tid as u64).fill(&mut block);
                    barrier.wait();
                    let start = Instant::now();
                    let mut made = 0;
                    for i in (tid..n).step_by(threads) {
                        if start.elapsed() > limit {
                            break;
                        }
                        let path = dir.join(format!("f{i}"));
                        let mut f = OpenOptions::new().write(true).create_new(true).open(&path)?;
                        util::stamp(&mut block, seed, i as u64);
                        f.write_all(&block)?;
                        if fsync {
                            f.sync_all()?;
                        }
                        close(f)?;
                        if fsync {
                            dirf.sync_all()?;
                        }
                        made += 1;
                    }
                    Ok(made)
                })
            })
            .collect();
        barrier.wait();
        let begun = Instant::now();
        let mut made = 0;
        for h in handles {
            made += h.join().expect("writer thread panicked")?;
        }
        Ok((made, begun.elapsed()))
    })
}

/// Creates the empty files `name(i)` for `i` in `range` from 8 threads (setup, not timed).
pub fn create_empty_files(
    range: std::ops::Range<usize>,
    name: impl Fn(usize) -> PathBuf + Sync,
) -> anyhow::Result<()> {
    const THREADS: usize = 8;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|tid| {
                let (range, name) = (range.clone(), &name);
                s.spawn(move || -> anyhow::Result<()> {
                    for i in range.skip(tid).step_by(THREADS) {
                        if i % 1024 == 0 {
                            util::check_stop()?;
                        }
                        let path = name(i);
                        let f = OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(&path)
                            .with_context(|| format!("create {}", path.display()))?;
                        close(f)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("create thread panicked")?;
        }
        Ok(())
    })
}

fn w5_flat(t: &Target) -> PathBuf {
    t.root.join("w5-flat")
}

fn w5_tree(t: &Target) -> PathBuf {
    t.root.join("w5-tree")
}

pub fn prepare_w5(targets: &[Target], sizes: &Sizes, source_tar: &Path) -> anyhow::Result<()> {
    for t in targets {
        util::check_stop()?;
        let flat = w5_flat(t);
        std::fs::create_dir_all(&flat)?;
        create_empty_files(0..sizes.meta_files, |i| flat.join(format!("f{i}")))?;
        let tree = w5_tree(t);
        std::fs::create_dir_all(&tree)?;
        util::run(Command::new("tar").arg("-xf").arg(source_tar).arg("-C").arg(&tree))?;
    }
    util::sync_all();
    Ok(())
}

pub fn w5(targets: &[Target], sizes: &Sizes, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let n = sizes.meta_files;
    interleave(targets, runs, report, "W5", |t, _| {
        let flat = w5_flat(t);
        let names: Vec<PathBuf> = (0..n).map(|i| flat.join(format!("f{i}"))).collect();
        let mut out = vec![];
        for warm in [false, true] {
            let temp = if warm { "warm" } else { "cold" };
            if !warm {
                util::drop_caches()?;
            }
            let (_, d) = util::time(|| {
                for p in &names {
                    std::fs::symlink_metadata(p).with_context(|| format!("stat {}", p.display()))?;
                }
                Ok(())
            })?;
            let label = format!("W5 stat {n} files, {temp}");
            out.push(sample(format!("W5.stat.{temp}"), label, "stats/s", Better::Higher, util::per_s(n, d)));
        }
        for warm in [false, true] {
            let temp = if warm { "warm" } else { "cold" };
            if !warm {
                util::drop_caches()?;
            }
            let (count, d) = util::time(|| Ok(std::fs::read_dir(&flat)?.count()))?;
            ensure!(count == n, "readdir of {} gave {count} entries, expected {n}", flat.display());
            let label = format!("W5 readdir of a {n}-entry directory, {temp}");
            out.push(sample(
                format!("W5.readdir.{temp}"),
                label,
                "entries/s",
                Better::Higher,
                util::per_s(n, d),
            ));
        }
        for warm in [false, true] {
            let temp = if warm { "warm" } else { "cold" };
            if !warm {
                util::drop_caches()?;
            }
            let tree = w5_tree(t);
            let (_, d) =
                util::time(|| util::output(Command::new("find").arg(&tree).args(["-name", "*.rs"])))?;
            let label = format!("W5 find -name '*.rs' over the W6 tree, {temp}");
            out.push(sample(format!("W5.find.{temp}"), label, "ms", Better::Lower, util::ms(d)));
        }
        Ok(out)
    })
}

pub fn w6(
    targets: &[Target],
    runs: usize,
    report: &mut Report,
    source_tar: &Path,
    files: usize,
) -> anyhow::Result<()> {
    interleave(targets, runs, report, "W6", |t, rep| {
        let dir = t.root.join(format!("w6-{rep}"));
        util::remove_tree(&dir)?;
        std::fs::create_dir(&dir)?;
        util::sync_all();
        let (_, dx) =
            util::time(|| util::run(Command::new("tar").arg("-xf").arg(source_tar).arg("-C").arg(&dir)))?;
        util::sync_all();
        let (_, drm) = util::time(|| util::run(Command::new("rm").arg("-rf").arg(&dir)))?;
        util::sync_all();
        Ok(vec![
            sample(
                "W6.extract",
                format!("W6 tar -xf of {files} files"),
                "s",
                Better::Lower,
                dx.as_secs_f64(),
            ),
            sample("W6.rm", "W6 rm -rf of the extracted tree", "s", Better::Lower, drm.as_secs_f64()),
        ])
    })
}

/// Builds the W6 source tarball from the `.crate` files of the crates named in a Cargo.lock
/// (alphabetical, as the lock lists them), up to `max_files` files. The crates of Windows import
/// libraries (`winapi-*-gnu`) are skipped: they are binaries, not a source tree.
/// Returns the tarball, its file count and a description.
pub fn build_source_tar(
    scratch: &Path,
    cargo_lock: &Path,
    max_files: usize,
) -> anyhow::Result<(PathBuf, usize, String)> {
    let lock = std::fs::read_to_string(cargo_lock)
        .with_context(|| format!("read {} (W6 takes its source tree from it)", cargo_lock.display()))?;
    let mut crates = vec![];
    let mut name = None;
    for line in lock.lines() {
        if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take()) {
            crates.push((n, v.trim_matches('"').to_string()));
        }
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let caches: Vec<PathBuf> = std::fs::read_dir(home.join("registry/cache"))
        .with_context(|| format!("no {}/registry/cache: run `cargo fetch` first", home.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    let src = scratch.join("w6-source");
    util::remove_tree(&src)?;
    std::fs::create_dir_all(&src)?;
    let (mut files, mut used) = (0usize, 0usize);
    for (n, v) in &crates {
        if files >= max_files {
            break;
        }
        if n.starts_with("winapi-") && n.ends_with("-gnu") {
            continue;
        }
        let Some(file) = caches.iter().map(|c| c.join(format!("{n}-{v}.crate"))).find(|p| p.exists()) else {
            continue;
        };
        util::run(Command::new("tar").arg("-xzf").arg(&file).arg("-C").arg(&src))?;
        files = count_files(&src)?;
        used += 1;
    }
    if used == 0 {
        bail!(
            "none of the crates in {} is in the cargo cache: run `cargo fetch` first",
            cargo_lock.display()
        );
    }
    let tar = scratch.join("w6-source.tar");
    util::run(Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&src).arg("."))?;
    let bytes = std::fs::metadata(&tar)?.len();
    util::remove_tree(&src)?;
    let what = format!(
        "{files} files from {used} crates of {} ({} MiB as an uncompressed tar)",
        cargo_lock.display(),
        bytes / MIB
    );
    Ok((tar, files, what))
}

fn count_files(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            n += count_files(&e.path())?;
        } else {
            n += 1;
        }
    }
    Ok(n)
}

pub fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Which target a workload is being measured on, for callers that skip peers.
pub fn genfs_target(targets: &[Target]) -> anyhow::Result<&Target> {
    targets.iter().find(|t| t.kind == Kind::Genfs).context("no genfs target")
}
