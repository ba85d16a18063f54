//! `genfs mount`: checks, then (unless `-f`) forks a daemon that opens the store, mounts and
//! reports readiness or its error back through a pipe, so the command returns only when the
//! mount is usable and fails with the daemon's own message.

use crate::fs::GenFs;
use crate::store::Store;
use anyhow::{bail, Context};
use clap::Args;
use fuser::{Config, MountOption, Session, SessionACL};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The store (made by `genfs mkfs`).
    store: PathBuf,
    /// An existing directory to mount on.
    mountpoint: PathBuf,
    /// Mount options, comma separated: allow_other, ro, rw, nodev, nosuid, noexec, dev, suid,
    /// exec, default_permissions (always on); `_netdev`, `nofail` and `x-*` are ignored.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (logs to stderr).
    #[arg(short = 'f', long)]
    foreground: bool,
}

struct Options {
    mount: Vec<MountOption>,
    allow_other: bool,
}

fn parse_options(raw: &[String]) -> anyhow::Result<Options> {
    let mut opts = Options { mount: vec![MountOption::DefaultPermissions], allow_other: false };
    for opt in raw.iter().flat_map(|o| o.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        let m = match opt {
            "allow_other" => {
                opts.allow_other = true;
                continue;
            }
            "default_permissions"
            | "_netdev"
            | "nofail"
            | "defaults"
            | "auto"
            | "noauto"
            | "user"
            | "nouser" => continue,
            o if o.starts_with("x-") => continue,
            "ro" => MountOption::RO,
            "rw" => MountOption::RW,
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            other => bail!("unknown mount option `{other}` (see `genfs mount --help`)"),
        };
        opts.mount.push(m);
    }
    Ok(opts)
}

fn check_mountpoint(mnt: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mnt) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("mount point {} is not a directory", mnt.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mount point {} is a dead FUSE mount (its daemon is gone): run `umount {0}` first",
            mnt.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {} does not exist", mnt.display())
        }
        Err(e) => Err(e).with_context(|| format!("mount point {}", mnt.display())),
    }
}

pub fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let opts = parse_options(&args.options)?;
    check_mountpoint(&args.mountpoint)?;
    crate::store::config::StoreConfig::load(&args.store)
        .with_context(|| format!("cannot mount {}", args.store.display()))?;
    let store =
        std::fs::canonicalize(&args.store).with_context(|| format!("store {}", args.store.display()))?;
    let mnt = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    if args.foreground {
        serve(&store, &mnt, opts, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (read_end, write_end) = pipe()?;
    // SAFETY: the process is single-threaded here (no thread has been started yet), so the
    // child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read_end);
            detach(&store);
            let code = match serve(&store, &mnt, opts, Some(write_end)) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    1
                }
            };
            std::process::exit(code);
        }
        _child => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            match msg.strip_prefix("ready") {
                Some(_) => Ok(ExitCode::SUCCESS),
                None if msg.is_empty() => bail!("the genfs daemon exited before the mount was ready"),
                None => bail!("{}", msg.trim_end()),
            }
        }
    }
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// New session, stdin from /dev/null, stdout and stderr to the store's log file.
fn detach(store: &Path) {
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::close(null);
        }
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(store.join("genfs.log"));
    if let Ok(log) = log {
        // SAFETY: dup2 onto stdout/stderr of a descriptor we own.
        unsafe {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in every thread and returns the set for sigwait.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn serve(store_path: &Path, mnt: &Path, opts: Options, ready: Option<OwnedFd>) -> anyhow::Result<()> {
    let mut ready = ready.map(std::fs::File::from);
    let result = start(store_path, mnt, opts);
    let session = match result {
        Ok(s) => s,
        Err(e) => {
            if let Some(r) = ready.as_mut() {
                let _ = write!(r, "{e:#}");
            }
            return Err(e);
        }
    };
    if let Some(mut r) = ready.take() {
        let _ = r.write_all(b"ready");
    }
    session.run().context("FUSE session ended with an error")?;
    Ok(())
}

/// Cached chunk descriptors and open handles need more than the default 1,024 descriptors.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn start(store_path: &Path, mnt: &Path, opts: Options) -> anyhow::Result<Session<GenFs>> {
    let sigset = block_signals();
    raise_fd_limit();
    let store =
        Store::open(store_path).with_context(|| format!("cannot open store {}", store_path.display()))?;
    let report = store.recovery.clone();
    if report.replayed_records > 0 || report.truncated_journal_bytes > 0 {
        tracing::info!(
            "recovered {}: replayed {} journal records, cut {} torn bytes, removed {} drafts",
            store_path.display(),
            report.replayed_records,
            report.truncated_journal_bytes,
            report.removed_staging_files
        );
    }
    let fs = GenFs::new(store);
    let core = fs.notifier_slot();
    let mut cfg = Config::default();
    cfg.mount_options = opts.mount;
    cfg.mount_options.push(MountOption::FSName(store_path.display().to_string()));
    cfg.mount_options.push(MountOption::Subtype("genfs".into()));
    cfg.acl = if opts.allow_other { SessionACL::All } else { SessionACL::Owner };
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    let mut session =
        Session::new(fs, mnt, &cfg).with_context(|| format!("cannot mount on {}", mnt.display()))?;
    core.set_notifier(session.notifier());
    raise_readahead(mnt);
    let mut unmounter = session.unmount_callable();
    std::thread::Builder::new()
        .name("genfs-signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: waiting on a valid, blocked signal set.
            unsafe { libc::sigwait(&sigset, &mut sig) };
            tracing::info!("signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                tracing::error!("unmount after signal {sig} failed: {e}");
            }
        })
        .context("cannot start signal thread")?;
    Ok(session)
}

/// Large cached reads need a readahead window as big as a FUSE read (1 MiB); best effort.
fn raise_readahead(mnt: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    let mnt = mnt.to_string_lossy();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() > 4 && fields[4] == mnt {
            let path = format!("/sys/class/bdi/{}/read_ahead_kb", fields[2]);
            if let Err(e) = std::fs::write(&path, "1024") {
                tracing::debug!("cannot raise readahead ({path}): {e}");
            }
        }
    }
}
