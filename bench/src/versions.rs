//! W7 (versions), W8 (scale) and W9 (listings of views and logs at scale): genfs only, so these rows have a genfs column and nothing to
//! compare against; the targets of issue 5 judge them on their own (see `checks`).

use crate::config::Sizes;
use crate::report::{Better, Report};
use crate::targets::{Kind, Mount, Target};
use crate::util::{self, Rng};
use crate::workloads::{close, create_empty_files, random_block, size_name, write_file};
use anyhow::{ensure, Context};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const FILES_PER_DIR: usize = 1000;

fn add(report: &mut Report, key: &str, label: &str, unit: &'static str, better: Better, v: f64) {
    eprintln!("  {label:<60} {:>12} {unit}", crate::report::fmt_value(v));
    report.add(key, label, unit, better, Kind::Genfs, v);
}

/// W7: `genfs log` of a file with many generations, and reads of an old generation against
/// the current one, on the main genfs mount.
pub fn w7_history(
    genfs: &Path,
    t: &Target,
    sizes: &Sizes,
    runs: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dir = t.root.join("w7");
    std::fs::create_dir_all(&dir)?;
    let logged = dir.join("logged.txt");
    let g = sizes.log_generations;
    let start = Instant::now();
    make_generations(&logged, g)?;
    let label = "W7 building the log: open, 25-byte write, close (1 thread)";
    add(report, "W7.log.build", label, "commits/s", Better::Higher, util::per_s(g, start.elapsed()));
    let reps = runs.max(5);
    for _ in 0..reps {
        let (text, d) = util::time(|| util::output(Command::new(genfs).arg("log").arg(&logged)))?;
        let lines = text.lines().count();
        ensure!(lines >= g, "`genfs log` listed {lines} generations, expected at least {g}");
        add(
            report,
            "W7.log.cli",
            &format!("W7 `genfs log` of a file with {g} generations"),
            "ms",
            Better::Lower,
            util::ms(d),
        );
        let (_, d) = util::time(|| util::getxattr(&logged, "user.genfs.log"))?;
        add(
            report,
            "W7.log.xattr",
            "W7 getxattr user.genfs.log (first 64 KiB page)",
            "ms",
            Better::Lower,
            util::ms(d),
        );
    }
    old_generation_reads(t, &dir, sizes, runs, report)
}

fn old_generation_reads(
    t: &Target,
    dir: &Path,
    sizes: &Sizes,
    runs: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bytes = sizes.old_gen_bytes;
    let big = dir.join("two-generations.dat");
    let mut block = random_block(7);
    write_file(&big, bytes, false, &mut block, 700)?;
    write_file(&big, bytes, false, &mut block, 701)?;
    let log = String::from_utf8(util::getxattr(&big, "user.genfs.log")?)?;
    let entries: Vec<Vec<&str>> =
        log.lines().map(|l| l.split('\t').collect()).filter(|f: &Vec<&str>| f.len() == 5).collect();
    ensure!(
        entries.len() >= 2,
        "log of {} has {} generations, expected 2:\n{log}",
        big.display(),
        entries.len()
    );
    let old = &entries[entries.len() - 2];
    ensure!(old[2] == bytes.to_string(), "old generation has size {}, expected {bytes}", old[2]);
    let old_path = t.root.join(old[4]);
    let name = size_name(bytes);
    let mut buf = vec![0u8; 1 << 20];
    for rep in 0..runs {
        for (which, path) in [("old", &old_path), ("current", &big)] {
            util::check_stop()?;
            let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
            util::drop_caches()?;
            let (n, cold) = util::time(|| util::read_all(&f, &mut buf))?;
            let (_, warm) = util::time(|| util::read_all(&f, &mut buf))?;
            ensure!(n == bytes, "{} has {n} bytes, expected {bytes}", path.display());
            eprint!("  run {}/{runs} ", rep + 1);
            let label = format!("W7 read {name} at the {which} generation, cold");
            add(
                report,
                &format!("W7.read.{which}.cold"),
                &label,
                "MiB/s",
                Better::Higher,
                util::mib_per_s(n, cold),
            );
            eprint!("  run {}/{runs} ", rep + 1);
            let label = format!("W7 read {name} at the {which} generation, warm");
            add(
                report,
                &format!("W7.read.{which}.warm"),
                &label,
                "MiB/s",
                Better::Higher,
                util::mib_per_s(n, warm),
            );
        }
    }
    Ok(())
}

/// Commits `g` generations of `path`: open, a 25-byte write, close.
fn make_generations(path: &Path, g: usize) -> anyhow::Result<()> {
    for i in 0..g {
        if i % 256 == 0 {
            util::check_stop()?;
        }
        let f = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
        f.write_all_at(format!("generation {i:>12}\n").as_bytes(), 0)?;
        close(f).with_context(|| format!("close {} (commit {i})", path.display()))?;
    }
    Ok(())
}

/// Reads every page of `path`'s `user.genfs.log` (following `#more` lines); returns the
/// number of generations and of pages.
fn read_log_pages(path: &Path) -> anyhow::Result<(usize, usize)> {
    let (mut gens, mut pages) = (0, 0);
    let mut attr = "user.genfs.log".to_string();
    loop {
        let text = String::from_utf8(util::getxattr(path, &attr)?)?;
        pages += 1;
        let mut next = None;
        for line in text.lines() {
            match line.strip_prefix("#more\t") {
                Some(a) => next = Some(a.to_string()),
                None => gens += 1,
            }
        }
        match next {
            Some(a) => attr = a,
            None => return Ok((gens, pages)),
        }
    }
}

/// W9 (issue 12): listing a `.genfs/at/@SEQ` view of a big directory, and reading the whole
/// log of a file with many generations (`genfs log`, and every page by getxattr). Each at a
/// quarter of the size and at the whole: linear cost makes the second row about 4× the first.
pub fn w9_listings(
    genfs: &Path,
    t: &Target,
    sizes: &Sizes,
    runs: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let dir = t.root.join("w9");
    std::fs::create_dir_all(&dir)?;
    for (part, n) in [("quarter", sizes.view_entries / 4), ("whole", sizes.view_entries)] {
        let flat = dir.join(format!("flat-{n}"));
        std::fs::create_dir_all(&flat)?;
        create_empty_files(0..n, |i| flat.join(format!("entry-{i:07}")))?;
        for r in 0..runs {
            util::check_stop()?;
            // A record of its own for each run: a view the kernel has not listed (cached) yet.
            close(File::create(dir.join(format!("bump-{n}-{r}")))?)?;
            let seq = String::from_utf8(util::getxattr(&t.root, "user.genfs.seq")?)?;
            let view = t.root.join(format!(".genfs/at/@{}/w9/flat-{n}", seq.trim()));
            let (listed, d) = util::time(|| Ok(std::fs::read_dir(&view)?.count()))?;
            ensure!(listed == n, "{} lists {listed} entries, expected {n}", view.display());
            let label = format!("W9 list a .genfs/at view of a {}-entry directory", count_name(n));
            add(report, &format!("W9.view.{part}"), &label, "ms", Better::Lower, util::ms(d));
        }
    }
    for (part, g) in [("quarter", sizes.view_log_generations / 4), ("whole", sizes.view_log_generations)] {
        let logged = dir.join(format!("logged-{g}"));
        let (_, d) = util::time(|| make_generations(&logged, g))?;
        eprintln!("  made {g} generations in {:.1} s", d.as_secs_f64());
        for _ in 0..runs {
            let (text, d) = util::time(|| util::output(Command::new(genfs).arg("log").arg(&logged)))?;
            let lines = text.lines().count();
            ensure!(lines == g, "`genfs log` listed {lines} generations, expected {g}");
            let label = format!("W9 `genfs log` of a file with {} generations", count_name(g));
            add(report, &format!("W9.log.cli.{part}"), &label, "ms", Better::Lower, util::ms(d));
            let ((gens, pages), d) = util::time(|| read_log_pages(&logged))?;
            ensure!(gens == g, "the log pages list {gens} generations, expected {g}");
            let label = format!("W9 getxattr of every log page ({pages}), {} generations", count_name(g));
            add(report, &format!("W9.log.pages.{part}"), &label, "ms", Better::Lower, util::ms(d));
        }
    }
    Ok(())
}

/// W8 (and the W7 snapshot rows): a store grown through `scale_stages` file counts; at each
/// stage, commit latency and snapshot creation; at the last, mount time (after a clean
/// unmount and after kill -9) and the daemon's memory.
pub fn w8_scale(
    genfs: &Path,
    scratch: &Path,
    sizes: &Sizes,
    report: &mut Report,
) -> anyhow::Result<Vec<String>> {
    let base = scratch.join("genfs-scale");
    util::remove_tree(&base)?;
    let (store, mnt) = (base.join("store"), base.join("mnt"));
    std::fs::create_dir_all(&mnt)?;
    util::run(Command::new(genfs).arg("mkfs").arg(&store))?;
    let mut mount = Mount::genfs(genfs, &store, &mnt)?.0;
    let mut facts = vec![];
    let mut have = 0usize;
    let last = sizes.scale_stages.len() - 1;
    for (si, &n) in sizes.scale_stages.iter().enumerate() {
        let files = count_name(n);
        let (_, d) = util::time(|| grow(&mnt, have, n))?;
        add(
            report,
            &format!("W8.fill.s{si}"),
            &format!("W8 fill to {files} files (8 threads, empty files)"),
            "files/s",
            Better::Higher,
            util::per_s(n - have, d),
        );
        have = n;
        facts.push(format!("stage {si}: {}", stats_line(&mnt)?));
        let lat = commit_latencies(&mnt, n, sizes.commit_samples, si as u64)?;
        add(
            report,
            &format!("W8.commit.p50.s{si}"),
            &format!("W8 commit latency p50 with {files} files"),
            "ms",
            Better::Lower,
            util::percentile(&lat, 50.0),
        );
        add(
            report,
            &format!("W8.commit.p99.s{si}"),
            &format!("W8 commit latency p99 with {files} files"),
            "ms",
            Better::Lower,
            util::percentile(&lat, 99.0),
        );
        for r in 0..sizes.snapshot_reps {
            let (_, d) = util::time(|| {
                util::setxattr(&mnt, "user.genfs.snapshot.create", format!("bench-{si}-{r}").as_bytes())
            })?;
            add(
                report,
                &format!("W7.snapshot.s{si}"),
                &format!("W7 snapshot create with {files} files"),
                "ms",
                Better::Lower,
                util::ms(d),
            );
        }
        if si == last {
            if let Some((_, hwm)) = mount.daemon_rss_kib() {
                add(
                    report,
                    "W8.rss.peak",
                    &format!("W8 daemon peak RSS after growing to {files} files"),
                    "MiB",
                    Better::Lower,
                    hwm as f64 / 1024.0,
                );
            }
        }
    }
    let files = count_name(have);
    let mut timed_mount = |key: &str, label: String| -> anyhow::Result<Mount> {
        let (m, d) = Mount::genfs(genfs, &store, &mnt)?;
        add(report, key, &label, "s", Better::Lower, d.as_secs_f64());
        Ok(m)
    };
    // Recovery: the daemon dies without a checkpoint; the next mount replays the journal.
    mount.kill()?;
    mount = timed_mount("W8.mount.recovery", format!("W8 mount after kill -9 with {files} files"))?;
    mount.unmount()?;
    mount = timed_mount("W8.mount.clean", format!("W8 mount after a clean unmount with {files} files"))?;
    if let Some((rss, _)) = mount.daemon_rss_kib() {
        add(
            report,
            "W8.rss.mount",
            &format!("W8 daemon RSS after mount with {files} files"),
            "MiB",
            Better::Lower,
            rss as f64 / 1024.0,
        );
    }
    // Touch a sample of the tree, then report the memory the daemon holds for it.
    let mut rng = Rng::new(88);
    for _ in 0..1000.min(have) {
        let i = rng.below(have as u64) as usize;
        std::fs::symlink_metadata(scale_path(&mnt, i))?;
    }
    let lat = commit_latencies(&mnt, have, sizes.commit_samples.min(50), 99)?;
    add(
        report,
        "W8.commit.p50.remount",
        &format!("W8 commit latency p50 after remount, {files} files"),
        "ms",
        Better::Lower,
        util::percentile(&lat, 50.0),
    );
    if let Some((_, hwm)) = mount.daemon_rss_kib() {
        add(
            report,
            "W8.rss.remount",
            &format!("W8 daemon peak RSS after remount + 1,000 stats + commits ({files} files)"),
            "MiB",
            Better::Lower,
            hwm as f64 / 1024.0,
        );
    }
    facts.push(format!("after remount: {}", stats_line(&mnt)?));
    mount.unmount()?;
    drop(mount);
    Ok(facts)
}

fn scale_path(mnt: &Path, i: usize) -> PathBuf {
    mnt.join(format!("d{}", i / FILES_PER_DIR)).join(format!("f{}", i % FILES_PER_DIR))
}

/// Adds files `have..n` in directories of 1,000.
fn grow(mnt: &Path, have: usize, n: usize) -> anyhow::Result<()> {
    for d in have / FILES_PER_DIR..n.div_ceil(FILES_PER_DIR) {
        let dir = mnt.join(format!("d{d}"));
        if !dir.exists() {
            std::fs::create_dir(&dir)?;
        }
    }
    create_empty_files(have..n, |i| scale_path(mnt, i))
}

/// Durations of `close()` (the commit) after a 4 KiB write to random existing files, in ms.
fn commit_latencies(mnt: &Path, n: usize, samples: usize, seed: u64) -> anyhow::Result<Vec<f64>> {
    let mut rng = Rng::new(1000 + seed);
    let mut block = vec![0u8; 4096];
    rng.fill(&mut block);
    let mut out = Vec::with_capacity(samples);
    for s in 0..samples {
        util::check_stop()?;
        let path = scale_path(mnt, rng.below(n as u64) as usize);
        let f =
            OpenOptions::new().write(true).open(&path).with_context(|| format!("open {}", path.display()))?;
        util::stamp(&mut block, seed, s as u64);
        f.write_all_at(&block, 0)?;
        let start = Instant::now();
        close(f).with_context(|| format!("close {}", path.display()))?;
        out.push(util::ms(start.elapsed()));
    }
    Ok(out)
}

fn stats_line(mnt: &Path) -> anyhow::Result<String> {
    let stats = String::from_utf8(util::getxattr(mnt, "user.genfs.stats")?)?;
    Ok(stats.lines().map(|l| l.replace('\t', "=")).collect::<Vec<_>>().join(", "))
}

fn count_name(n: usize) -> String {
    crate::report::fmt_value(n as f64)
}
