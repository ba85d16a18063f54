//! Command line and the sizes of each preset.

use anyhow::{bail, Context};
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: genfs-bench --genfs PATH [--quick | --medium] [options]

Runs workloads W1-W8 of issue 5 and W9 of issue 12, interleaved, against a native directory,
bindfs -o big_writes, fuse-overlayfs and genfs (W7-W9: genfs only), all on the disk that holds
--dir; prints a markdown table and writes results.md and results.json. Needs root (drop_caches, mounts). Usually started by bench/run.

options:
  --genfs PATH       the genfs binary (target/release/genfs)
  --quick            CI smoke sizes (well under 3 minutes)
  --medium           between --quick and the full sizes (for a busy machine)
  --runs N           runs per workload, medians reported (default 3)
  --dir PATH         scratch directory on the disk under test (default /var/tmp/genfs-bench)
  --out PATH         where results.md and results.json go (default DIR/results)
  --only LIST        comma-separated workloads to run, e.g. W1,W4,W9 (default all)
  --cargo-lock PATH  Cargo.lock whose crates make the W6 source tree (default ./Cargo.lock)
  --keep             keep the scratch data (default: removed at the end)
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Quick,
    Medium,
    Full,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Quick => "quick",
            Preset::Medium => "medium",
            Preset::Full => "full",
        }
    }
}

pub struct Sizes {
    /// W1 write, W2 read, W3 random reads over it.
    pub big_file_bytes: u64,
    /// W3: seconds per random-read case.
    pub random_secs: f64,
    /// W4: files per case.
    pub small_files: usize,
    /// W4: a case stops early after this many seconds (keeps a smoke run short on a slow disk;
    /// the rate is taken over the files made).
    pub small_files_secs_max: f64,
    /// W5: files in the flat directory.
    pub meta_files: usize,
    /// W6 (and the W5 `find` tree): at most this many files of crate sources.
    pub source_files_max: usize,
    /// W7: generations of the logged file.
    pub log_generations: usize,
    /// W7: size of the file read at an old and at the current generation.
    pub old_gen_bytes: u64,
    /// W7: snapshots taken at each tree size.
    pub snapshot_reps: usize,
    /// W9: entries of the directory whose `.genfs/at` view is listed.
    pub view_entries: usize,
    /// W9: generations of the file whose whole log is read.
    pub view_log_generations: usize,
    /// W8: files in the store at each stage (W7 snapshots use the first two).
    pub scale_stages: Vec<usize>,
    /// W8: commits timed at each stage.
    pub commit_samples: usize,
    /// W10: the file edited in place 100 times.
    pub space_edit_file_bytes: u64,
    /// W10: how long the index churn runs.
    pub churn_secs: f64,
    /// W10: generations gc goes through.
    pub gc_generations: usize,
}

impl Sizes {
    pub fn of(p: Preset) -> Sizes {
        match p {
            Preset::Quick => Sizes {
                big_file_bytes: 64 << 20,
                random_secs: 0.2,
                small_files: 200,
                small_files_secs_max: 0.5,
                meta_files: 1000,
                source_files_max: 60,
                log_generations: 200,
                old_gen_bytes: 16 << 20,
                snapshot_reps: 3,
                view_entries: 8_000,
                view_log_generations: 2_000,
                scale_stages: vec![1000, 5000, 10_000],
                commit_samples: 30,
                space_edit_file_bytes: 32 << 20,
                churn_secs: 15.0,
                gc_generations: 10_000,
            },
            Preset::Medium => Sizes {
                big_file_bytes: 256 << 20,
                random_secs: 2.0,
                small_files: 2000,
                small_files_secs_max: 30.0,
                meta_files: 10_000,
                source_files_max: usize::MAX,
                log_generations: 10_000,
                old_gen_bytes: 64 << 20,
                snapshot_reps: 5,
                view_entries: 40_000,
                view_log_generations: 20_000,
                scale_stages: vec![1000, 100_000, 300_000],
                commit_samples: 200,
                space_edit_file_bytes: 256 << 20,
                churn_secs: 60.0,
                gc_generations: 100_000,
            },
            Preset::Full => Sizes {
                big_file_bytes: 1 << 30,
                random_secs: 5.0,
                small_files: 10_000,
                small_files_secs_max: 120.0,
                meta_files: 10_000,
                source_files_max: usize::MAX,
                log_generations: 10_000,
                old_gen_bytes: 256 << 20,
                snapshot_reps: 5,
                view_entries: 100_000,
                view_log_generations: 100_000,
                scale_stages: vec![1000, 100_000, 1_000_000],
                commit_samples: 300,
                space_edit_file_bytes: 256 << 20,
                churn_secs: 300.0,
                gc_generations: 1_000_000,
            },
        }
    }
}

pub struct Options {
    pub genfs: PathBuf,
    pub preset: Preset,
    pub runs: usize,
    pub dir: PathBuf,
    pub out: Option<PathBuf>,
    pub only: Option<Vec<String>>,
    pub cargo_lock: PathBuf,
    pub keep: bool,
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Options> {
        let mut o = Options {
            genfs: PathBuf::new(),
            preset: Preset::Full,
            runs: 3,
            dir: PathBuf::from("/var/tmp/genfs-bench"),
            out: None,
            only: None,
            cargo_lock: PathBuf::from("Cargo.lock"),
            keep: false,
        };
        let mut args = args.into_iter();
        while let Some(a) = args.next() {
            let mut value = || args.next().with_context(|| format!("{a} needs a value\n\n{USAGE}"));
            match a.as_str() {
                "--genfs" => o.genfs = value()?.into(),
                "--quick" => o.preset = Preset::Quick,
                "--medium" => o.preset = Preset::Medium,
                "--runs" => o.runs = value()?.parse().context("--runs takes a number")?,
                "--dir" => o.dir = value()?.into(),
                "--out" => o.out = Some(value()?.into()),
                "--only" => o.only = Some(value()?.split(',').map(|s| s.trim().to_uppercase()).collect()),
                "--cargo-lock" => o.cargo_lock = value()?.into(),
                "--keep" => o.keep = true,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        if o.genfs.as_os_str().is_empty() {
            bail!("--genfs PATH is required\n\n{USAGE}");
        }
        if o.runs < 1 {
            bail!("--runs must be at least 1");
        }
        Ok(o)
    }

    pub fn wants(&self, workload: &str) -> bool {
        self.only.as_ref().is_none_or(|list| list.iter().any(|w| w == workload))
    }
}
