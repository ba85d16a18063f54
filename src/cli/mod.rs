//! The `genfs` command line. Each subcommand is a function returning `anyhow::Result`; main
//! prints the error chain once as `genfs: <context>: <cause>`.

mod admin;
mod docs;
mod fsck;
#[path = "../../mount-helper/helper.rs"]
mod helper;
mod history;
mod logging;
mod mount;
mod mount_flags;
mod progress;
mod time;
mod tree;
mod umount;
mod versions;

use crate::store::config::CONFIG_FILE;
use crate::store::{Store, StoreError};
use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// genfs: a versioned filesystem. Every close of a written file keeps a durable generation.
#[derive(Parser, Debug)]
#[command(name = "genfs", version, about, long_about = LONG_ABOUT, after_help = EXAMPLES)]
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
    /// Unmount MOUNTPOINT and wait until the daemon has made everything durable and exited.
    ///
    /// Works for root and for the user who mounted (through fusermount3). `umount MOUNTPOINT`
    /// does the same for root when the mount helpers are installed.
    ///
    /// Example: genfs umount /tmp/genfs
    Umount(umount::UmountArgs),
    /// Check an unmounted STORE: journal, index, namespace, generations, reference counts and
    /// every chunk file (read and hashed unless --quick). Exit 0 clean, 1 repaired, 2 damage
    /// left, 8 could not check.
    ///
    /// Example: genfs fsck --repair ~/.local/share/genfs/default
    Fsck(fsck::FsckArgs),
    /// Read every chunk of an unmounted STORE and verify it against its hash, with progress;
    /// list each damaged chunk and the files and generations that need it. Exit 0 clean, 2
    /// damage found, 8 could not check.
    ///
    /// Example: genfs scrub ~/.local/share/genfs/default
    Scrub(fsck::ScrubArgs),
    #[command(flatten)]
    Versions(versions::VersionCommand),
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// Example: genfs completions bash > ~/.local/share/bash-completion/completions/genfs
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages genfs(1), genfs-SUBCOMMAND(1), mount.genfs(8) and genfs-xattr(7)
    /// into DIR (packaging uses this).
    ///
    /// Example: genfs man target/man && man -l target/man/genfs.1
    #[command(hide = true)]
    Man { dir: PathBuf },
}

const LONG_ABOUT: &str = "genfs: a versioned filesystem (FUSE). Every close of a written file \
commits a durable, immutable generation; older generations stay readable and restorable through \
extended attributes (genfs-xattr(7)), the read-only views under MOUNT/.genfs, and these commands.";

const EXAMPLES: &str = "\
Examples:
  genfs mkfs ~/.local/share/genfs/default          # create a store
  genfs mount ~/.local/share/genfs/default ~/gfs   # mount it
  genfs log ~/gfs/notes.txt                        # every kept generation of a file
  genfs cat ~/gfs/notes.txt@-1                     # the one before the current one
  genfs restore ~/gfs/notes.txt@3                  # make generation 3 current again
  genfs snapshot create before-upgrade -C ~/gfs    # name the whole tree as it is now
  genfs umount ~/gfs                               # unmount; returns once all is on disk

See genfs(1), mount.genfs(8) and genfs-xattr(7), and the user guide (docs/guide.md).";

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

/// The `genfs` program: parses the command line and runs it; errors are printed once, as
/// `genfs: <context>: <cause>`.
///
/// mount.fuse3 (fstab type `fuse.genfs` without the genfs helpers installed) runs
/// `genfs STORE MOUNTPOINT -o OPTIONS`: that form is read as `genfs mount ...`.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(h) = args.first().and_then(|a| helper::helper_for(a)) {
        return helper::run(h, args);
    }
    main_with(args)
}

/// `genfs` with these arguments (`args[0]` is the program name).
fn main_with(mut args: Vec<std::ffi::OsString>) -> ExitCode {
    if is_mount_fuse_form(&args) {
        args.insert(1, "mount".into());
    }
    let cli = Cli::parse_from(args);
    if !matches!(cli.command, Command::Mount(_)) {
        logging::init_cli();
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("genfs: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `context: cause: cause`, leaving out a cause whose text the line already holds (some
/// errors repeat their source in their own message).
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `genfs STORE MOUNTPOINT [-o OPTIONS]`: two leading arguments that are not subcommands.
fn is_mount_fuse_form(args: &[std::ffi::OsString]) -> bool {
    use clap::CommandFactory;
    let (Some(first), Some(second)) = (args.get(1), args.get(2)) else { return false };
    let first = first.to_string_lossy();
    let cmd = Cli::command();
    let known =
        cmd.get_subcommands().any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first));
    !known && first != "help" && !first.starts_with('-') && !second.to_string_lossy().starts_with('-')
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(cli.command, Command::Mkfs { .. } | Command::Mount(_) | Command::Fsck(_) | Command::Scrub(_))
    {
        // What these create inside a store (sled's files among them) is private to its owner.
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(0o077) };
    }
    match cli.command {
        Command::Mkfs { store, chunk_size } => mkfs(&store, chunk_size),
        Command::Mount(args) => mount::mount(args),
        Command::Umount(args) => umount::umount(args),
        Command::Fsck(args) => fsck::fsck(args),
        Command::Scrub(args) => fsck::scrub(args),
        Command::Versions(cmd) => versions::run(cmd),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "genfs", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => docs::write_man_pages(&dir).map(|()| ExitCode::SUCCESS),
    }
}

/// The clap definition of `genfs` (for man pages and completions).
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

fn mkfs(store: &std::path::Path, chunk_size: u64) -> anyhow::Result<ExitCode> {
    // SAFETY: geteuid/getegid cannot fail.
    let owner = unsafe { (libc::geteuid(), libc::getegid()) };
    // A store is private to its owner (0700), a new directory or an existing empty one: it
    // holds every version of every file. The parents are made as usual.
    if crate::store::config::StoreConfig::new(chunk_size).is_err() {
        bail!("--chunk-size {chunk_size}: must be a power of two between 4K and 64M");
    }
    if !store.exists() {
        if let Some(parent) = store.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(store) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create store {}", store.display())),
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn error_chains_say_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(libc::EAGAIN);
        let e = anyhow::Error::new(io)
            .context(format!("store x is in use: {}", std::io::Error::from_raw_os_error(libc::EAGAIN)));
        let e = e.context("cannot open store x");
        assert_eq!(
            super::error_chain(&e),
            "cannot open store x: store x is in use: Resource temporarily unavailable (os error 11)"
        );
    }
}
