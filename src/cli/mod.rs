//! The `genfs` command line. Each subcommand is a function returning `anyhow::Result`; main
//! prints the error chain once as `genfs: <context>: <cause>`.

mod admin;
mod history;
mod mount;
mod time;
mod tree;
mod versions;

use crate::store::config::CONFIG_FILE;
use crate::store::{Store, StoreError};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// genfs: a versioned filesystem. Every close of a written file keeps a durable generation.
#[derive(Parser, Debug)]
#[command(name = "genfs", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new, empty store in STORE (a missing or empty directory).
    ///
    /// Example: genfs mkfs ~/.local/share/genfs/default
    Mkfs {
        store: PathBuf,
        /// Chunk size: a power of two from 4K to 64M (suffixes K, M). Versions share unchanged chunks.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        chunk_size: u64,
    },
    /// Mount STORE on MOUNTPOINT. Returns once the mount is ready; the daemon keeps serving
    /// in the background until `umount MOUNTPOINT` (or SIGTERM).
    ///
    /// Example: genfs mount ~/.local/share/genfs/default /tmp/genfs
    Mount(mount::MountArgs),
    #[command(flatten)]
    Versions(versions::VersionCommand),
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size (examples: 65536, 64K, 1M)"))
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Mkfs { store, chunk_size } => mkfs(&store, chunk_size),
        Command::Mount(args) => mount::mount(args),
        Command::Versions(cmd) => versions::run(cmd),
    }
}

fn mkfs(store: &std::path::Path, chunk_size: u64) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid/getegid cannot fail.
    let owner = unsafe { (libc::geteuid(), libc::getegid()) };
    match Store::mkfs(store, chunk_size, owner) {
        Ok(()) => {
            println!("created genfs store {} (chunk size {chunk_size} bytes)", store.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Exists) => bail!("{}: already a genfs store ({CONFIG_FILE} exists)", store.display()),
        Err(StoreError::NotEmpty) => {
            bail!("{}: directory is not empty; a store needs an empty or missing directory", store.display())
        }
        Err(StoreError::InvalidArgument) => {
            bail!("--chunk-size {chunk_size}: must be a power of two between 4K and 64M")
        }
        Err(e) => Err(e).with_context(|| format!("cannot create store {}", store.display())),
    }
}

/// Logs go to stderr, quiet unless RUST_LOG asks for more (`RUST_LOG=genfs=debug`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
