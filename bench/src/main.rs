//! genfs-bench: the side-by-side benchmark of issue 5. Runs W1–W10 (W9: issue 12, W10: issue 14) against a native directory,
//! `bindfs -o big_writes`, `fuse-overlayfs` and genfs, all on the disk that holds `--dir`,
//! interleaved run by run; prints a markdown table with medians and the genfs ratios, judges the
//! targets of the issue, and writes `results.md` and `results.json`.
//!
//! Every mount is held by a guard that unmounts it on every path out (see `targets`); a
//! SIGINT/SIGTERM/SIGHUP only sets a flag that the workloads check, so the guards still run.

mod checks;
mod config;
mod report;
mod space;
mod targets;
mod util;
mod versions;
mod workloads;

use anyhow::{bail, Context};
use config::{Options, Sizes};
use report::Report;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use targets::{Kind, Target};

fn main() -> ExitCode {
    util::install_signal_handlers();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("genfs-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ok(false): results were written but a workload failed.
fn run() -> anyhow::Result<bool> {
    let opts = Options::parse(std::env::args().skip(1))?;
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (mounts, /proc/sys/vm/drop_caches)");
    }
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("mkdir {}", opts.dir.display()))?;
    let scratch = std::fs::canonicalize(&opts.dir)?;
    let genfs = std::fs::canonicalize(&opts.genfs)
        .with_context(|| format!("genfs binary {}", opts.genfs.display()))?;
    let out = opts.out.clone().unwrap_or_else(|| scratch.join("results"));
    let sizes = Sizes::of(opts.preset);
    let mut report = Report::default();
    facts(&mut report, &opts, &scratch, &genfs);
    eprintln!(
        "genfs-bench: {} run, {} runs per workload, scratch {}",
        opts.preset.name(),
        opts.runs,
        scratch.display()
    );

    let result = workloads(&opts, &sizes, &scratch, &genfs, &mut report);
    report.facts.push(("load average at the end".into(), util::loadavg()));
    if let Err(e) = &result {
        eprintln!("genfs-bench: stopped early: {e:#}");
        report.facts.push(("stopped early".into(), format!("{e:#}")));
    }
    checks::judge(&mut report, &sizes);
    write_results(&report, &out)?;
    if !opts.keep {
        cleanup(&scratch)?;
    }
    Ok(result.is_ok())
}

fn workloads(
    opts: &Options,
    sizes: &Sizes,
    scratch: &Path,
    genfs: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let needs_source = opts.wants("W5") || opts.wants("W6");
    let source = if needs_source {
        let (tar, files, what) =
            workloads::build_source_tar(scratch, &opts.cargo_lock, sizes.source_files_max)?;
        report.facts.push(("W6 source tree".into(), what));
        Some((tar, files))
    } else {
        None
    };
    let mut targets: Vec<Target> = vec![];
    for k in Kind::ALL {
        eprintln!("setting up {}", k.name());
        targets.push(targets::setup(k, scratch, genfs)?);
    }
    let runs = opts.runs;
    let mut timed = |name: &str, f: &mut dyn FnMut(&mut Report) -> anyhow::Result<()>| {
        eprintln!("{name}");
        let start = std::time::Instant::now();
        let result = f(report);
        let took = start.elapsed().as_secs_f64();
        eprintln!("{name}: {took:.1} s");
        report.facts.push((format!("time: {name}"), format!("{took:.1} s")));
        result
    };
    if opts.wants("W1") {
        timed("W1 sequential write", &mut |r| workloads::w1(&targets, sizes, runs, r))?;
    }
    if opts.wants("W2") || opts.wants("W3") {
        timed("W2/W3 setup: the file to read", &mut |_| workloads::prepare_big_files(&targets, sizes))?;
    }
    if opts.wants("W2") {
        timed("W2 sequential read", &mut |r| workloads::w2(&targets, sizes, runs, r))?;
        timed("W2 copy", &mut |r| workloads::w2_copy(&targets, sizes, runs, r))?;
    }
    if opts.wants("W3") {
        timed("W3 random reads", &mut |r| workloads::w3(&targets, sizes, runs, r))?;
    }
    if opts.wants("W4") {
        timed("W4 small files", &mut |r| workloads::w4(&targets, sizes, runs, r))?;
    }
    if let Some((tar, files)) = &source {
        if opts.wants("W5") {
            timed("W5 setup: flat directory and source tree", &mut |_| {
                workloads::prepare_w5(&targets, sizes, tar)
            })?;
            timed("W5 metadata", &mut |r| workloads::w5(&targets, sizes, runs, r))?;
        }
        if opts.wants("W6") {
            timed("W6 extract and remove", &mut |r| workloads::w6(&targets, runs, r, tar, *files))?;
        }
    }
    if opts.wants("W7") {
        let genfs_target = workloads::genfs_target(&targets)?;
        timed("W7 log and old generations", &mut |r| {
            versions::w7_history(genfs, genfs_target, sizes, runs, r)
        })?;
    }
    if opts.wants("W9") {
        let genfs_target = workloads::genfs_target(&targets)?;
        timed("W9 listings of views and logs at scale", &mut |r| {
            versions::w9_listings(genfs, genfs_target, sizes, runs, r)
        })?;
    }
    // The peers are done: unmount them before the long genfs-only part.
    for mut t in targets {
        if let Some(m) = t.mount.as_mut() {
            m.unmount()?;
        }
    }
    if opts.wants("W10") {
        timed("W10 space: history costs, index churn, gc, full disk", &mut |r| {
            space::w10_space(genfs, scratch, sizes, r)
        })?;
    }
    if opts.wants("W8") || opts.wants("W7") {
        let name = format!("W8 (and W7 snapshots): a store grown through {:?} files", sizes.scale_stages);
        timed(&name, &mut |r| {
            for (i, f) in versions::w8_scale(genfs, scratch, sizes, r)?.into_iter().enumerate() {
                r.facts.push((format!("W8 store {}", i + 1), f));
            }
            Ok(())
        })?;
    }
    Ok(())
}

fn facts(report: &mut Report, opts: &Options, scratch: &Path, genfs: &Path) {
    let first_line = |cmd: &mut Command| {
        util::output(cmd)
            .map(|s| s.lines().next().unwrap_or("").trim().to_string())
            .unwrap_or_else(|e| format!("{e:#}"))
    };
    let mut f = |k: &str, v: String| report.facts.push((k.into(), v));
    f("date (UTC)", first_line(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])));
    f("kernel", first_line(Command::new("uname").arg("-r")));
    f("CPUs", std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_default());
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    f(
        "CPU model",
        cpu.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .into(),
    );
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    f("memory", mem.lines().next().unwrap_or("?").split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
    let disk = first_line(
        Command::new("findmnt").args(["-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--target"]).arg(scratch),
    );
    f("scratch (all stores and directories)", format!("{} on {disk}", scratch.display()));
    f("preset", format!("{} ({} runs per workload, medians)", opts.preset.name(), opts.runs));
    f("genfs", format!("{} ({})", first_line(Command::new(genfs).arg("--version")), genfs.display()));
    if let Ok(rev) = std::env::var("GENFS_BENCH_REV") {
        f("genfs commit", rev);
    }
    f("bindfs", first_line(Command::new("bindfs").arg("--version")) + " (-o big_writes; libfuse 2)");
    f("fuse-overlayfs", first_line(Command::new("fuse-overlayfs").arg("--version")) + " (libfuse 3)");
    f("load average at the start", util::loadavg());
}

fn write_results(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("mkdir {}", out.display()))?;
    let md = format!(
        "## Machine and run\n\n{}\n## Results (medians)\n\n{}\n## Targets\n\n{}",
        report.facts_markdown(),
        report.markdown(),
        report.checks_markdown()
    );
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(out.join("results.json"), report.json())?;
    println!("{md}");
    eprintln!(
        "genfs-bench: wrote {} and {}",
        out.join("results.md").display(),
        out.join("results.json").display()
    );
    Ok(())
}

/// Removes the targets' data, never through a mount that is still there.
fn cleanup(scratch: &Path) -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = scratch.to_string_lossy().to_string() + "/";
    if let Some(m) = info.lines().filter_map(|l| l.split(' ').nth(4)).find(|p| p.starts_with(&prefix)) {
        bail!("{m} is still mounted; leaving {} in place", scratch.display());
    }
    let dirs: Vec<PathBuf> = Kind::ALL
        .iter()
        .map(|k| scratch.join(k.name()))
        .chain(["genfs-scale", "genfs-space", "w6-source", "w6-source.tar"].iter().map(|d| scratch.join(d)))
        .collect();
    for d in dirs {
        if d.is_dir() {
            util::remove_tree(&d)?;
        } else if d.exists() {
            std::fs::remove_file(&d)?;
        }
    }
    Ok(())
}
