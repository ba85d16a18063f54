//! W10 (issue 14): space under control, genfs only. What history costs per appended and per
//! edited byte, the index's size after a churn of creates, saves and deletes against what it
//! holds, gc's time over many generations, and how soon a full disk takes writes again after a
//! delete (a small loop-mounted ext4).

use crate::config::Sizes;
use crate::report::{Better, Report};
use crate::targets::{Kind, Mount};
use crate::util::{self, Rng};
use anyhow::{bail, ensure, Context};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn add(report: &mut Report, key: &str, label: &str, unit: &'static str, better: Better, v: f64) {
    eprintln!("  {label:<70} {:>12} {unit}", crate::report::fmt_value(v));
    report.add(key, label, unit, better, Kind::Genfs, v);
}

fn stat(mnt: &Path, key: &str) -> anyhow::Result<u64> {
    let text = String::from_utf8(util::getxattr(mnt, "user.genfs.stats")?)?;
    let value = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('\t'));
    value.with_context(|| format!("no {key} in the stats"))?.parse().context("stats value")
}

/// A fresh store mounted under `base`, kept until the returned guard drops.
fn fresh(genfs: &Path, base: &Path) -> anyhow::Result<(Mount, std::path::PathBuf)> {
    util::remove_tree(base)?;
    let (store, mnt) = (base.join("store"), base.join("mnt"));
    std::fs::create_dir_all(&mnt)?;
    util::run(Command::new(genfs).arg("mkfs").arg(&store))?;
    Ok((Mount::genfs(genfs, &store, &mnt)?.0, mnt))
}

pub fn w10_space(genfs: &Path, scratch: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let base = scratch.join("genfs-space");
    history_costs(genfs, &base, sizes, report)?;
    index_after_churn(genfs, &base, sizes, report)?;
    gc_time(genfs, &base, sizes, report)?;
    write_after_full_disk(genfs, &base, report)?;
    util::remove_tree(&base)
}

/// Stored bytes per byte appended (a 3.2 MB log appended to 200 times, 1 KiB each) and per
/// byte edited (100 random 4 KiB edits of a big file), each save a new generation.
fn history_costs(genfs: &Path, base: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let (mut mount, mnt) = fresh(genfs, base)?;
    let mut rng = Rng::new(14);
    let log = mnt.join("app.log");
    let mut block = vec![0u8; 3_200_000];
    rng.fill(&mut block);
    std::fs::write(&log, &block)?;
    let before = stat(&mnt, "stored_bytes")?;
    let mut line = vec![0u8; 1024];
    for _ in 0..200 {
        rng.fill(&mut line);
        OpenOptions::new().append(true).open(&log)?.write_all(&line)?;
    }
    let per_byte = (stat(&mnt, "stored_bytes")? - before) as f64 / (200.0 * 1024.0);
    add(
        report,
        "W10.append",
        "W10 stored bytes per appended byte (3.2 MB log, 200 appends of 1 KiB)",
        "B/B",
        Better::Lower,
        per_byte,
    );
    let big = mnt.join("big.dat");
    let bytes = sizes.space_edit_file_bytes;
    let mut chunk = vec![0u8; 1 << 20];
    {
        let f = std::fs::File::create(&big)?;
        for i in 0..bytes / chunk.len() as u64 {
            rng.fill(&mut chunk);
            f.write_all_at(&chunk, i * chunk.len() as u64)?;
        }
    }
    let before = stat(&mnt, "stored_bytes")?;
    let mut edit = vec![0u8; 4096];
    for _ in 0..100 {
        rng.fill(&mut edit);
        let at = rng.below(bytes / 4096) * 4096;
        OpenOptions::new().write(true).open(&big)?.write_all_at(&edit, at)?;
    }
    let per_byte = (stat(&mnt, "stored_bytes")? - before) as f64 / (100.0 * 4096.0);
    let label = format!("W10 stored bytes per edited byte (100 random 4 KiB edits of {} MiB)", bytes >> 20);
    add(report, "W10.edit", &label, "B/B", Better::Lower, per_byte);
    mount.unmount()
}

/// Creates, saves by rename, appends, symlinks and deletes for a while under a short
/// retention, with a gc every 10 s, then compares the index file with what it holds.
fn index_after_churn(genfs: &Path, base: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let (mut mount, mnt) = fresh(genfs, base)?;
    util::setxattr(&mnt, "user.genfs.retention", b"keep-last=1,keep-within=0s")?;
    let started = Instant::now();
    let mut last_gc = Instant::now();
    let mut rng = Rng::new(7);
    let mut payload = vec![0u8; 200];
    let mut i = 0usize;
    while started.elapsed() < Duration::from_secs_f64(sizes.churn_secs) {
        util::check_stop()?;
        let d = mnt.join(format!("d{i}"));
        std::fs::create_dir(&d)?;
        for j in 0..10 {
            let f = d.join(format!("f{j}"));
            rng.fill(&mut payload);
            std::fs::write(d.join("tmp"), &payload)?;
            std::fs::rename(d.join("tmp"), &f)?;
            OpenOptions::new().append(true).open(&f)?.write_all(b"appended line\n")?;
        }
        std::os::unix::fs::symlink("f0", d.join("link"))?;
        std::fs::create_dir(d.join("sub"))?;
        if i >= 50 {
            util::remove_tree(&mnt.join(format!("d{}", i - 50)))?;
        }
        i += 1;
        if last_gc.elapsed() > Duration::from_secs(10) {
            util::setxattr(&mnt, "user.genfs.gc", b"run")?;
            last_gc = Instant::now();
        }
    }
    util::setxattr(&mnt, "user.genfs.gc", b"run")?;
    let (live, file) = (stat(&mnt, "index_live_bytes")?, stat(&mnt, "index_file_bytes")?);
    let label =
        format!("W10 index file after a {:.0} s churn ({i} directories made and removed)", sizes.churn_secs);
    add(report, "W10.index.file", &label, "MiB", Better::Lower, file as f64 / f64::from(1 << 20));
    add(
        report,
        "W10.index.factor",
        "W10 index file / its keys and values after the churn",
        "×",
        Better::Lower,
        file as f64 / live.max(1) as f64,
    );
    mount.unmount()
}

/// gc of a store holding many generations (8 files rewritten in turn, keep-last=2).
fn gc_time(genfs: &Path, base: &Path, sizes: &Sizes, report: &mut Report) -> anyhow::Result<()> {
    let (mut mount, mnt) = fresh(genfs, base)?;
    util::setxattr(&mnt, "user.genfs.retention", b"keep-last=1000000")?;
    let n = sizes.gc_generations;
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let path = mnt.join(format!("f{t}"));
                s.spawn(move || -> anyhow::Result<()> {
                    for g in 0..n / 8 {
                        std::fs::write(&path, format!("{t} {g}\n"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??;
        }
        Ok(())
    })?;
    util::setxattr(&mnt, "user.genfs.retention", b"keep-last=2")?;
    let (_, d) = util::time(|| util::setxattr(&mnt, "user.genfs.gc", b"run"))?;
    let label = format!("W10 gc dropping {} generations", crate::report::fmt_value(n as f64));
    add(report, "W10.gc", &label, "s", Better::Lower, d.as_secs_f64());
    mount.unmount()
}

/// On a 256 MiB ext4 image: fill with files until ENOSPC, delete them all, and time until a
/// write succeeds again (history yields to live data, no policy touched).
fn write_after_full_disk(genfs: &Path, base: &Path, report: &mut Report) -> anyhow::Result<()> {
    util::remove_tree(base)?;
    std::fs::create_dir_all(base.join("fs"))?;
    let img = base.join("disk.img");
    let device = util::output(Command::new("sh").arg("-c").arg(format!(
        "truncate -s 256M '{i}' && mkfs.ext4 -q -F '{i}' && losetup -f --show '{i}'",
        i = img.display()
    )))?;
    let device = device.trim().to_string();
    let fs = base.join("fs");
    let mounted = util::run(Command::new("mount").arg(&device).arg(&fs));
    let result = mounted.and_then(|()| full_disk_rows(genfs, &fs, report));
    let _ = Command::new("umount").arg(&fs).status();
    let _ = Command::new("losetup").arg("-d").arg(&device).status();
    result
}

fn full_disk_rows(genfs: &Path, fs: &Path, report: &mut Report) -> anyhow::Result<()> {
    let (mut mount, mnt) = fresh(genfs, &fs.join("genfs"))?;
    let mut rng = Rng::new(3);
    let mut data = vec![0u8; 1 << 20];
    let mut written = vec![];
    loop {
        rng.fill(&mut data);
        let p = mnt.join(format!("f{}", written.len()));
        match std::fs::write(&p, &data) {
            Ok(()) => written.push(p),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => bail!("fill: {e}"),
        }
        ensure!(written.len() < 10_000, "256 MiB took 10 GB");
    }
    for p in &written {
        std::fs::remove_file(p)?;
    }
    let start = Instant::now();
    let again = mnt.join("again");
    while std::fs::write(&again, &data).is_err() {
        ensure!(start.elapsed() < Duration::from_secs(120), "no write succeeded within 120 s of the delete");
        std::thread::sleep(Duration::from_millis(10));
    }
    add(
        report,
        "W10.fulldisk",
        "W10 full disk: delete everything, time until a 1 MiB write succeeds",
        "s",
        Better::Lower,
        start.elapsed().as_secs_f64(),
    );
    mount.unmount()
}
