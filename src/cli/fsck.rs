//! `genfs fsck` and `genfs scrub`: check an unmounted store ([`Store::check_with`],
//! [`Store::verify_chunk`]) and, with `--repair`, drop what damage made unrecoverable
//! ([`Store::repair`]) and set the namespace right ([`Store::repair_namespace`]).
//!
//! Exit codes (as e2fsck's, where they overlap): 0 clean, 1 damage found and repaired,
//! 2 damage left, 8 the check could not run (the store is mounted, missing, unreadable).

use super::error_chain;
use super::progress::Progress;
use crate::store::check::{CheckOptions, DamagedGeneration};
use crate::store::records::Hash;
use crate::store::Store;
use anyhow::Context;
use clap::Args;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

const CLEAN: u8 = 0;
const REPAIRED: u8 = 1;
const DAMAGE_LEFT: u8 = 2;
const COULD_NOT_RUN: u8 = 8;

#[derive(Args, Debug)]
pub struct FsckArgs {
    /// The store (unmounted).
    store: PathBuf,
    /// Drop the generations that need a damaged chunk (a file whose current generation is one
    /// of them gets its newest intact generation back), then set right the namespace and the
    /// reference counts (dangling entries dropped, orphans moved to /lost+found, link and
    /// reference counts recounted); every change is listed.
    #[arg(long)]
    repair: bool,
    /// Check chunk files by size only, without reading them (`genfs scrub` reads them all).
    #[arg(long)]
    quick: bool,
    /// Rebuild the index from the index base and the journal (the old one is moved aside to
    /// index.replaced-SECONDS, not deleted), then check. A lost or unreadable index is rebuilt
    /// at open anyway; this is for one that opens but is wrong.
    #[arg(long)]
    rebuild_index: bool,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// The store (unmounted).
    store: PathBuf,
}

pub fn fsck(args: FsckArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(or_could_not_run(run_fsck(&args))))
}

pub fn scrub(args: ScrubArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(or_could_not_run(run_scrub(&args.store))))
}

/// The exit code, or 8 after printing why the check could not run (1 means "repaired").
fn or_could_not_run(result: anyhow::Result<u8>) -> u8 {
    result.unwrap_or_else(|e| {
        eprintln!("genfs: {}", error_chain(&e));
        COULD_NOT_RUN
    })
}

/// Opens a store no daemon serves (the store's lock says "in use by another genfs daemon").
fn open_unmounted(store: &Path) -> anyhow::Result<Store> {
    let path = std::fs::canonicalize(store).with_context(|| format!("store {}", store.display()))?;
    let opened = Store::open(&path).with_context(|| format!("cannot open store {}", path.display()))?;
    let r = &opened.recovery;
    if let Some(why) = &r.rebuilt_index {
        println!("{}: rebuilt the index from the index base and the journal: {why}", path.display());
    }
    if r.replayed_records > 0 || r.truncated_journal_bytes > 0 {
        println!(
            "{}: recovery replayed {} journal records and cut {} torn bytes",
            path.display(),
            r.replayed_records,
            r.truncated_journal_bytes
        );
    }
    Ok(opened)
}

fn run_fsck(args: &FsckArgs) -> anyhow::Result<u8> {
    if args.rebuild_index {
        let path =
            std::fs::canonicalize(&args.store).with_context(|| format!("store {}", args.store.display()))?;
        let aside = crate::store::rebuild_index(&path)
            .with_context(|| format!("cannot rebuild the index of {}", path.display()))?;
        println!("{}: the old index is in {}", path.display(), aside.display());
    }
    let store = open_unmounted(&args.store)?;
    let name = args.store.display();
    let opts = CheckOptions { chunk_hashes: !args.quick, chunk_dir_scan: true };
    let report = {
        let _progress =
            Progress::start(if args.quick { "checking" } else { "checking (reading every chunk)" });
        store.check_with(opts).with_context(|| format!("cannot check {name}"))?
    };
    println!(
        "{name}: {} files, {} directories, {} generations, {} chunks ({}), {} journal records",
        report.files,
        report.directories,
        report.generations,
        report.chunks,
        super::admin::human(report.chunk_bytes),
        report.journal_records
    );
    if !report.unreferenced_chunk_files.is_empty() {
        println!(
            "note: {} chunk files nothing references (left by commits a crash cut short; harmless)",
            report.unreferenced_chunk_files.len()
        );
    }
    if report.garbage_chunks > 0 {
        println!("note: {} chunks no generation uses any more wait for `genfs gc`", report.garbage_chunks);
    }
    if report.is_clean() {
        println!("{name}: clean");
        return Ok(CLEAN);
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    let damaged: HashSet<Hash> = report.damaged_chunks.iter().copied().collect();
    let affected = store.damaged_generations(&damaged)?;
    print_affected(&affected);
    if !args.repair {
        println!(
            "{name}: {} problems; `genfs fsck --repair {name}` drops what cannot be recovered",
            report.problems.len()
        );
        return Ok(DAMAGE_LEFT);
    }
    let repaired = store.repair(&damaged).with_context(|| format!("cannot repair {name}"))?;
    for d in &repaired.dropped {
        println!("dropped: {} generation {}", d.path, d.gen);
    }
    for (path, now) in &repaired.reverted {
        match now {
            Some(gen) => println!("reverted: {path} reads generation {gen} again (as a new generation)"),
            None => println!("emptied: {path} had no intact generation left"),
        }
    }
    println!("removed {} damaged chunk files", repaired.removed_chunks);
    let namespace = store.repair_namespace().with_context(|| format!("cannot repair {name}"))?;
    for change in &namespace.changes {
        println!("repaired: {change}");
    }
    let after = store.check_with(opts).with_context(|| format!("cannot check {name} again"))?;
    if after.is_clean() {
        println!("{name}: repaired, clean now");
        return Ok(REPAIRED);
    }
    for problem in &after.problems {
        println!("left: {problem}");
    }
    println!("{name}: {} problems left that repair does not touch", after.problems.len());
    Ok(DAMAGE_LEFT)
}

fn print_affected(affected: &[DamagedGeneration]) {
    for d in affected {
        let current = if d.current { " (current)" } else { "" };
        println!("damaged: {} generation {}{current}", d.path, d.gen);
    }
}

fn run_scrub(store_path: &Path) -> anyhow::Result<u8> {
    let store = open_unmounted(store_path)?;
    let name = store_path.display();
    let chunks = store.referenced_chunks().with_context(|| format!("cannot list the chunks of {name}"))?;
    let total: u64 = chunks.iter().map(|(_, len)| *len as u64).sum();
    let started = Instant::now();
    let mut damaged = Vec::new();
    {
        let progress = Progress::with_total("scrubbing", total);
        for (hash, len) in &chunks {
            if let Err(why) = store.verify_chunk(hash, *len, true) {
                damaged.push((*hash, why));
            }
            progress.add(*len as u64);
        }
    }
    for (hash, why) in &damaged {
        println!("damaged chunk {}: {why}", crate::store::chunks::hex(hash));
    }
    println!(
        "{name}: scrubbed {} chunks ({}) in {:.1} s: {} damaged",
        chunks.len(),
        super::admin::human(total),
        started.elapsed().as_secs_f64(),
        damaged.len()
    );
    if damaged.is_empty() {
        return Ok(CLEAN);
    }
    let damaged: HashSet<Hash> = damaged.into_iter().map(|(hash, _)| hash).collect();
    print_affected(&store.damaged_generations(&damaged)?);
    println!("`genfs fsck --repair {name}` drops what cannot be recovered");
    Ok(DAMAGE_LEFT)
}
