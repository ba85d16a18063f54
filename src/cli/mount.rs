//! `genfs mount`: checks, then (unless `-f`) forks a daemon that opens the store, mounts, and
//! reports readiness or its error back through a pipe, so the command returns only when the
//! mount answers and fails with the daemon's own message.
//!
//! The mount shows in /proc/mounts as type `fuse.genfs` with the store as its source. As root
//! it is also recorded in /run/mount/utab with `uhelper=genfs`: that makes `umount MNT` look
//! the mount up in mountinfo, see the type and run `umount.fuse.genfs` (root) or
//! `umount.genfs` (users), which wait for the daemon to finish (`genfs umount`).

use super::logging::{self, LogTarget};
use super::mount_flags::{self, VfsFlags};
use crate::fs::GenFs;
use crate::store::records::ROOT_INO;
use crate::store::{Retention, Store};
use anyhow::{bail, Context};
use clap::Args;
use fuser::{Config, MountOption, Session, SessionACL};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const MOUNT_EXAMPLES: &str = "\
Examples:
  genfs mount ~/.local/share/genfs/default ~/genfs
  genfs mount /srv/genfs/projects /projects -o allow_other,log=syslog
  genfs mount /srv/genfs/scratch /scratch -o 'retention=keep-last=5:keep-within=2d'
  mount -t genfs /srv/genfs/projects /projects -o nodev,nosuid   # the same, through mount(8)

/etc/fstab:
  /srv/genfs/projects  /projects  genfs  defaults,nofail  0  0";

#[derive(Args, Debug)]
#[command(after_help = MOUNT_EXAMPLES)]
pub struct MountArgs {
    /// The store (made by `genfs mkfs`); mount.fuse's `genfs#STORE` form is accepted too.
    store: PathBuf,
    /// An existing directory to mount on.
    mountpoint: PathBuf,
    /// Mount options, comma separated (repeatable).
    ///
    /// Generic: ro, rw, nodev, nosuid, noexec, dev, suid, exec, relatime (default),
    /// strictatime, noatime, atime, nodiratime, diratime, lazytime, sync, async, dirsync,
    /// allow_other (other users may enter; for non-root users only if /etc/fuse.conf has
    /// user_allow_other), allow_root, default_permissions (always on). suid and dev are for
    /// root only (the default through mount(8); `genfs mount` defaults to nosuid,nodev).
    /// remount (root): new generic flags for a mounted store, `-o remount,ro`. Ignored, as
    /// mount(8) and fstab use them: defaults, auto, noauto, user, nouser, users, owner, group,
    /// nofail, _netdev, silent, loud, comment=…, x-…, uhelper=…, helper=…, fsname=…, subtype=….
    ///
    /// genfs: debug (log at debug level), log=PATH (daemon log file; default STORE/genfs.log),
    /// log=syslog (syslog, which journald collects), retention=POLICY (set the retention policy
    /// of the root, inherited by every file without its own; separate its rules with `:` or
    /// quote it, e.g. retention=keep-last=5:keep-within=2d; see genfs-xattr(7)).
    #[arg(short = 'o', value_name = "OPTIONS", verbatim_doc_comment)]
    options: Vec<String>,
    /// Stay in the foreground (logs to stderr unless log= says otherwise).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Ignore unknown mount options (with a warning) instead of refusing to mount (mount -s).
    #[arg(short = 's', long)]
    sloppy: bool,
    /// Do not record the mount in /run/mount/utab (mount -n); `umount` then returns without
    /// waiting for the daemon.
    #[arg(short = 'n', long = "no-mtab")]
    no_mtab: bool,
    /// Say what was mounted where.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// The options come from mount(8) (the helper says so): unsaid suid and dev are on for
    /// root, as mount(8) says nosuid and nodev when they are wanted.
    #[arg(long, hide = true)]
    mount8: bool,
}

#[derive(Debug, Default)]
pub(super) struct Options {
    /// ro, nosuid, the atime mode and the other flags the kernel keeps for the mount.
    vfs: VfsFlags,
    /// The options came through mount(8), which says nosuid and nodev when they are wanted:
    /// for root, unsaid means suid,dev, as for a local filesystem.
    local_defaults: bool,
    /// `-o remount`: change the flags of the existing mount, start no daemon.
    remount: bool,
    acl: Acl,
    debug: bool,
    log: Option<LogTarget>,
    retention: Option<String>,
    /// fstab's nofail: a store that does not exist is not an error.
    nofail: bool,
    /// Unknown options ignored because of `-s`.
    ignored: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Acl {
    #[default]
    Owner,
    Root,
    All,
}

/// Options that mount(8), fstab and mount.fuse use for themselves; they mean nothing to genfs.
fn is_ignored(opt: &str) -> bool {
    const WORDS: &[&str] = &[
        "default_permissions",
        "defaults",
        "auto",
        "noauto",
        "user",
        "nouser",
        "users",
        "owner",
        "group",
        "_netdev",
        "silent",
        "loud",
    ];
    const PREFIXES: &[&str] = &["x-", "X-", "comment=", "uhelper=", "helper=", "fsname=", "subtype="];
    WORDS.contains(&opt) || PREFIXES.iter().any(|p| opt.starts_with(p))
}

/// The options of a FUSE superblock the kernel shows in mountinfo.
fn is_fuse_kernel_option(opt: &str) -> bool {
    const PREFIXES: &[&str] = &["user_id=", "group_id=", "rootmode=", "fd=", "max_read=", "blksize="];
    opt == "allow_other" || PREFIXES.iter().any(|p| opt.starts_with(p))
}

/// Splits an option string at commas outside double quotes (`retention="a=1,b=2",ro`).
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect()
}

pub(super) fn parse_options(raw: &[String], sloppy: bool) -> anyhow::Result<Options> {
    let mut opts = Options::default();
    let words: Vec<String> = raw.iter().flat_map(|o| split_options(o)).collect();
    opts.remount = words.iter().any(|w| w == "remount");
    for opt in &words {
        match opt.as_str() {
            "nofail" => opts.nofail = true,
            o if is_ignored(o) => {}
            // mount(8) passes a remount the mount's FUSE options, which stay as they are.
            o if opts.remount && is_fuse_kernel_option(o) => {}
            o if opts.vfs.apply(o) => {}
            "remount" => {}
            "allow_other" => opts.acl = Acl::All,
            "allow_root" => opts.acl = opts.acl.max_with(Acl::Root),
            "debug" => opts.debug = true,
            o if o.starts_with("log=") => {
                opts.log = Some(match &o[4..] {
                    "" => bail!("log=: expected log=PATH or log=syslog"),
                    "syslog" => LogTarget::Syslog,
                    path => LogTarget::File(PathBuf::from(path)),
                });
            }
            o if o.starts_with("retention=") => {
                let policy = o["retention=".len()..].replace(':', ",");
                policy.parse::<Retention>().map_err(|e| anyhow::anyhow!("retention={policy}: {e}"))?;
                opts.retention = Some(policy);
            }
            o if o.starts_with("commit=") || o.starts_with("cache=") => bail!(
                "mount option `{o}` is not supported by this genfs: every close already commits \
                 durably, and the kernel cache is managed per generation"
            ),
            other if sloppy => opts.ignored.push(other.to_string()),
            other => {
                bail!("unknown mount option `{other}` (see `genfs mount --help`; -s ignores unknown options)")
            }
        }
    }
    if opts.remount && (opts.retention.is_some() || opts.log.is_some()) {
        bail!("remount changes only ro, rw, suid, dev, exec and the atime options; unmount and mount again for the others");
    }
    if opts.vfs.read_only && opts.retention.is_some() {
        bail!("retention= changes the store: it cannot be combined with ro");
    }
    Ok(opts)
}

impl Acl {
    fn max_with(self, other: Acl) -> Acl {
        if self == Acl::All || other == Acl::All {
            Acl::All
        } else if self == Acl::Root || other == Acl::Root {
            Acl::Root
        } else {
            Acl::Owner
        }
    }
}

fn check_mountpoint(mnt: &Path) -> anyhow::Result<()> {
    // stat may be answered from the kernel's attribute cache even on a dead FUSE mount;
    // opening the directory is not.
    match std::fs::metadata(mnt).and_then(|m| std::fs::read_dir(mnt).map(|_| m)) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("mount point {} is not a directory", mnt.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mount point {} is a dead FUSE mount (its daemon is gone): run `genfs umount {0}` first",
            mnt.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("mount point {} does not exist", mnt.display())
        }
        Err(e) => Err(e).with_context(|| format!("mount point {}", mnt.display())),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether /etc/fuse.conf lets users other than root use allow_other.
fn fuse_conf_allows_other(conf: &str) -> bool {
    conf.lines().any(|l| l.trim() == "user_allow_other")
}

/// What a user needs before fusermount3 can mount for them; checked here so the error says why.
fn check_unprivileged(opts: &Options) -> anyhow::Result<()> {
    if euid() == 0 {
        return Ok(());
    }
    if opts.vfs.asks_privilege() {
        bail!(
            "suid and dev are for root only: a mount by another user is always nosuid,nodev \
             (fusermount3), or a user could plant setuid programs and device nodes"
        );
    }
    // SAFETY: access(2) on a constant path.
    if unsafe { libc::access(c"/dev/fuse".as_ptr(), libc::R_OK | libc::W_OK) } != 0 {
        let e = super::history::cause(&std::io::Error::last_os_error());
        bail!(
            "cannot use /dev/fuse: {e}. Mounting as a normal user needs /dev/fuse to be readable and \
             writable by everyone (mode 0666, the default of Debian's fuse3 package; `sudo chmod 0666 \
             /dev/fuse` or a udev rule fixes it) and fusermount3 (package fuse3)"
        );
    }
    if opts.acl != Acl::Owner {
        let conf = std::fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
        if !fuse_conf_allows_other(&conf) {
            bail!(
                "allow_other and allow_root are only allowed for users other than root if /etc/fuse.conf \
                 contains a line `user_allow_other` (ask your administrator), or mount without them"
            );
        }
    }
    Ok(())
}

/// `genfs#STORE` (mount.fuse's convention for naming the program in the source) is STORE.
fn strip_program(store: &Path) -> PathBuf {
    let s = store.as_os_str().as_encoded_bytes();
    match s.strip_prefix(b"genfs#") {
        // SAFETY: a suffix after an ASCII prefix of a valid OsStr is a valid OsStr.
        Some(rest) => PathBuf::from(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(rest) }),
        None => store.to_path_buf(),
    }
}

pub fn mount(args: MountArgs) -> anyhow::Result<ExitCode> {
    let mut opts = parse_options(&args.options, args.sloppy)?;
    if opts.remount {
        remount(&args.mountpoint, &args.options)?;
        return Ok(ExitCode::SUCCESS);
    }
    opts.local_defaults = args.mount8 && euid() == 0;
    for o in &opts.ignored {
        eprintln!("genfs: ignoring unknown mount option `{o}` (sloppy mode)");
    }
    let store = strip_program(&args.store);
    if opts.nofail && std::fs::symlink_metadata(&store).is_err() {
        // fstab(5): "do not report errors for this device if it does not exist".
        if args.verbose {
            eprintln!("genfs: {} does not exist; not mounted (nofail)", store.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    check_mountpoint(&args.mountpoint)?;
    crate::store::config::StoreConfig::load(&store)
        .with_context(|| format!("cannot mount {}", store.display()))?;
    check_unprivileged(&opts)?;
    let store = std::fs::canonicalize(&store).with_context(|| format!("store {}", store.display()))?;
    if let Some(warning) = crate::store::safety::readable_by_others(&store) {
        eprintln!("genfs: warning: {warning}");
    }
    let mnt = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mount point {}", args.mountpoint.display()))?;
    wait_for_store(&store)?;
    let register = euid() == 0 && !args.no_mtab;
    let log = match &opts.log {
        Some(LogTarget::File(p)) => LogTarget::File(std::path::absolute(p).context("log=")?),
        Some(t) => t.clone(),
        None if args.foreground => LogTarget::Stderr,
        None => LogTarget::File(store.join("genfs.log")),
    };
    if args.foreground {
        let log_file = open_log(&log)?;
        if let Some(f) = &log_file {
            redirect_output(f.as_raw_fd(), false);
        }
        logging::init_daemon(&log, opts.debug);
        let daemon = Daemon { store, mnt, opts, register, ready: Arc::new(Mutex::new(None)) };
        daemon.serve()?;
        return Ok(ExitCode::SUCCESS);
    }
    let log_file = open_log(&log)?;
    let (read_end, write_end) = pipe()?;
    // SAFETY: the process is single-threaded here (no thread has been started yet), so the
    // child may run arbitrary code after fork.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(read_end);
            detach(log_file.as_ref().map(|f| f.as_raw_fd()));
            drop(log_file);
            logging::init_daemon(&log, opts.debug);
            let ready = Arc::new(Mutex::new(Some(std::fs::File::from(write_end))));
            let daemon = Daemon { store, mnt, opts, register, ready };
            let code = match daemon.serve() {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{}", super::error_chain(&e));
                    1
                }
            };
            std::process::exit(code);
        }
        _child => {
            drop(write_end);
            drop(log_file);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            match msg.strip_prefix("ready") {
                Some(_) => {
                    if args.verbose {
                        println!("genfs: mounted {} on {}", store.display(), mnt.display());
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None if msg.is_empty() => bail!(
                    "the genfs daemon exited before the mount was ready (see {})",
                    match &log {
                        LogTarget::File(p) => p.display().to_string(),
                        LogTarget::Syslog => "the system log".into(),
                        LogTarget::Stderr => "its standard error".into(),
                    }
                ),
                None => bail!("{}", msg.trim_end()),
            }
        }
    }
}

/// Opens the daemon's log file (append), so a bad path fails the mount command itself.
fn open_log(target: &LogTarget) -> anyhow::Result<Option<std::fs::File>> {
    match target {
        LogTarget::File(path) => logging::open_log_file(path)
            .map(Some)
            .with_context(|| format!("cannot open log file {}", path.display())),
        _ => Ok(None),
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

/// Points stdout and stderr at `fd` (or /dev/null) and, when `stdin`, stdin at /dev/null.
fn redirect_output(fd: libc::c_int, stdin: bool) {
    // SAFETY: plain syscalls on descriptors this process owns.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if stdin && null >= 0 {
            libc::dup2(null, 0);
        }
        let out = if fd >= 0 { fd } else { null };
        if out >= 0 {
            libc::dup2(out, 1);
            libc::dup2(out, 2);
        }
        if null >= 0 {
            libc::close(null);
        }
    }
}

/// New session, working directory `/` (so the daemon keeps no other mount busy), stdin from
/// /dev/null, stdout and stderr to the log file (or /dev/null for syslog).
fn detach(log: Option<libc::c_int>) {
    // SAFETY: setsid and chdir have no memory-safety preconditions.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
    }
    redirect_output(log.unwrap_or(-1), true);
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

/// glibc gives threads heap arenas of their own, up to 8 per CPU, and each keeps what it freed:
/// after gc walked a million inodes the daemon's peak was 293 MiB, with at most 2 arenas 248
/// MiB, creating files no slower. Up to 4 here; MALLOC_ARENA_MAX, if set, decides instead.
#[cfg(target_env = "gnu")]
fn limit_heap_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let arenas = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    // SAFETY: mallopt only sets a parameter of the allocator.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas as libc::c_int);
    }
}

#[cfg(not(target_env = "gnu"))]
fn limit_heap_arenas() {}

/// The serving process (the forked daemon, or `genfs mount -f` itself).
struct Daemon {
    store: PathBuf,
    mnt: PathBuf,
    opts: Options,
    /// Record the mount in utab (root, not `-n`).
    register: bool,
    /// Where "ready" or the error goes (the parent's pipe); taken by whoever reports first.
    ready: Arc<Mutex<Option<std::fs::File>>>,
}

fn tell_parent(ready: &Mutex<Option<std::fs::File>>, msg: &str) {
    if let Some(mut f) = ready.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = f.write_all(msg.as_bytes());
    }
}

impl Daemon {
    fn serve(self) -> anyhow::Result<()> {
        let registered = Arc::new(AtomicBool::new(false));
        let session = match self.start(&registered) {
            Ok(s) => s,
            Err(e) => {
                tell_parent(&self.ready, &super::error_chain(&e));
                return Err(e);
            }
        };
        tracing::info!("mounted {} on {}", self.store.display(), self.mnt.display());
        let result = session.run();
        tell_parent(&self.ready, "the FUSE session ended before the mount was ready");
        result.context("FUSE session ended with an error")?;
        tracing::info!("unmounted {}; store closed", self.mnt.display());
        Ok(())
    }

    fn start(&self, registered: &Arc<AtomicBool>) -> anyhow::Result<Session<GenFs>> {
        let sigset = block_signals();
        raise_fd_limit();
        limit_heap_arenas();
        let store = Store::open(&self.store)
            .with_context(|| format!("cannot open store {}", self.store.display()))?;
        if let Some(warning) = crate::store::safety::readable_by_others(&self.store) {
            tracing::warn!("{warning}");
        }
        let report = store.recovery.clone();
        if let Some(why) = &report.rebuilt_index {
            tracing::warn!(
                "{}: rebuilt the index from the index base and the journal: {why}",
                self.store.display()
            );
        }
        if report.replayed_records + report.skipped_records > 0 || report.truncated_journal_bytes > 0 {
            tracing::info!(
                "recovered {}: replayed {} journal records ({} more were in the index already), \
                 cut {} torn bytes, removed {} drafts",
                self.store.display(),
                report.replayed_records,
                report.skipped_records,
                report.truncated_journal_bytes,
                report.removed_staging_files
            );
        }
        if let Some(policy) = &self.opts.retention {
            store
                .set_retention(ROOT_INO, Some(policy), euid())
                .with_context(|| format!("cannot set retention={policy} on the root"))?;
        }
        let fs = GenFs::new(store);
        let core = fs.notifier_slot();
        let mut cfg = Config::default();
        let vfs = self.opts.vfs.resolved(self.opts.local_defaults);
        cfg.mount_options = vec![MountOption::DefaultPermissions];
        cfg.mount_options.extend(vfs.fuser_options());
        if vfs.lazytime && euid() == 0 {
            // A superblock flag the kernel takes among the mount data.
            cfg.mount_options.push(MountOption::CUSTOM("lazytime".into()));
        }
        cfg.mount_options.push(MountOption::FSName(self.store.display().to_string()));
        // fuser's Subtype is only passed to fusermount; as a kernel option `subtype=` names the
        // type `fuse.genfs` on the direct mount(2) path too (and fusermount3 understands it).
        cfg.mount_options.push(MountOption::CUSTOM("subtype=genfs".into()));
        cfg.acl = match self.opts.acl {
            Acl::Owner => SessionACL::Owner,
            Acl::Root => SessionACL::RootAndOwner,
            Acl::All => SessionACL::All,
        };
        cfg.n_threads = Some(4);
        cfg.clone_fd = true;
        let mut session = Session::new(fs, &self.mnt, &cfg)
            .map_err(|e| explain_mount_error(e, &self.mnt))
            .with_context(|| format!("cannot mount on {}", self.mnt.display()))?;
        core.set_notifier(session.notifier());
        raise_readahead(&self.mnt);
        if vfs.beyond_fuser() && euid() == 0 {
            // strictatime and nodiratime, which fuser cannot pass: per-mount flags, set by a
            // bind remount (no superblock change, so no request to this daemon, not serving yet).
            mount_flags::remount(&self.mnt, &vfs, true)
                .with_context(|| format!("cannot set the atime options of {}", self.mnt.display()))?;
        }
        core.atime.set(vfs.atime_options());
        follow_remounts(&self.mnt, core.clone())?;
        let mut unmounter = session.unmount_callable();
        let (mnt, reg) = (self.mnt.clone(), registered.clone());
        std::thread::Builder::new()
            .name("genfs-signals".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: waiting on a valid, blocked signal set.
                unsafe { libc::sigwait(&sigset, &mut sig) };
                tracing::info!("signal {sig}: unmounting");
                // Through umount(8) when the mount is in utab, so the entry goes with it.
                if reg.load(Ordering::SeqCst) && run_quietly("umount", &["-i".as_ref(), mnt.as_os_str()]) {
                    return;
                }
                if let Err(e) = unmounter.unmount() {
                    tracing::error!("unmount after signal {sig} failed: {e}");
                }
            })
            .context("cannot start signal thread")?;
        // Ready once the kernel has our answer to INIT: a stat of the root goes through it.
        let (mnt, ready, register, reg) =
            (self.mnt.clone(), self.ready.clone(), self.register, registered.clone());
        let store_path = self.store.clone();
        std::thread::Builder::new()
            .name("genfs-ready".into())
            .spawn(move || {
                if let Err(e) = std::fs::metadata(&mnt) {
                    tell_parent(&ready, &format!("the new mount on {} does not answer: {e}", mnt.display()));
                    return;
                }
                if register {
                    reg.store(register_in_utab(&store_path, &mnt), Ordering::SeqCst);
                }
                tell_parent(&ready, "ready");
                notify_systemd();
            })
            .context("cannot start readiness thread")?;
        Ok(session)
    }
}

/// Tells systemd the service is ready (`Type=notify` units, e.g. genfs@.service), when
/// NOTIFY_SOCKET is set.
fn notify_systemd() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &path)
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// Adds the mount to /run/mount/utab with `uhelper=genfs`, through mount(8) itself (which
/// knows the file's format and lock): `mount --fake` records without mounting.
fn register_in_utab(store: &Path, mnt: &Path) -> bool {
    if !Path::new("/run/mount").is_dir() && std::fs::create_dir_all("/run/mount").is_err() {
        return false;
    }
    let args = [
        "--fake".as_ref(),
        "--internal-only".as_ref(),
        "--no-canonicalize".as_ref(),
        "-t".as_ref(),
        "fuse.genfs".as_ref(),
        "-o".as_ref(),
        "uhelper=genfs".as_ref(),
        store.as_os_str(),
        mnt.as_os_str(),
    ];
    let ok = run_quietly("mount", &args);
    if !ok {
        tracing::debug!("could not record {} in /run/mount/utab; umount will not wait", mnt.display());
    }
    ok
}

/// Runs a util-linux tool (from /usr/bin, /bin or PATH) with its output discarded.
fn run_quietly(tool: &str, args: &[&std::ffi::OsStr]) -> bool {
    let candidates = [format!("/usr/bin/{tool}"), format!("/bin/{tool}"), tool.to_string()];
    let prog = candidates.iter().find(|c| Path::new(c).is_file()).cloned().unwrap_or(tool.to_string());
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// fuser's errors for the common refusals, said in the user's terms.
fn explain_mount_error(e: std::io::Error, mnt: &Path) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("user_allow_other") {
        anyhow::anyhow!("allow_other needs `user_allow_other` in /etc/fuse.conf for users other than root")
    } else if e.kind() == std::io::ErrorKind::PermissionDenied && text.contains("fuse") {
        anyhow::anyhow!("{text} (is /dev/fuse readable and writable by this user?)")
    } else if text.contains("fusermount") && text.contains("not found") {
        anyhow::anyhow!("{text}: mounting as a normal user needs fusermount3 (package fuse3)")
    } else if text.is_empty() {
        anyhow::anyhow!("fusermount3 refused to mount on {}", mnt.display())
    } else {
        anyhow::Error::new(e)
    }
}

/// Keeps the daemon's atime options those of its mount as remounts change them (mountinfo is
/// polled: the kernel tells a FUSE daemon nothing of a remount).
fn follow_remounts(mnt: &Path, core: Arc<crate::fs::Core>) -> anyhow::Result<()> {
    let Some(mount) = super::umount::find_mount(mnt) else { return Ok(()) };
    std::thread::Builder::new()
        .name("genfs-remounts".into())
        .spawn(move || {
            let mut last = (mount.options, mount.super_options);
            loop {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
                let Some(now) = super::umount::parse_mountinfo(&text).into_iter().find(|m| m.id == mount.id)
                else {
                    return;
                };
                if (&now.options, &now.super_options) != (&last.0, &last.1) {
                    let options = VfsFlags::of_mount(&now).atime_options();
                    tracing::info!("remounted {}: atime options now {options:?}", now.mountpoint.display());
                    core.atime.set(options);
                    last = (now.options, now.super_options);
                }
            }
        })
        .context("cannot start the remount thread")?;
    Ok(())
}

/// `mount -o remount,…`: new flags for the mount on `mnt` (root only: fusermount3 cannot
/// remount). Options not said keep the mount's current value.
fn remount(mnt: &Path, raw: &[String]) -> anyhow::Result<()> {
    let mnt = std::fs::canonicalize(mnt).with_context(|| format!("mount point {}", mnt.display()))?;
    let Some(mount) = super::umount::find_mount(&mnt).filter(|m| m.fstype == "fuse.genfs") else {
        bail!("{}: not a genfs mount, nothing to remount", mnt.display());
    };
    if euid() != 0 {
        bail!(
            "{}: remount needs root (fusermount3 cannot remount); unmount and mount again with the \
             new options",
            mnt.display()
        );
    }
    let mut flags = VfsFlags::of_mount(&mount);
    for opt in raw.iter().flat_map(|o| split_options(o)) {
        flags.apply(&opt);
    }
    mount_flags::remount(&mnt, &flags, false).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => anyhow::anyhow!(
            "cannot remount {} read-only: files are open for writing there (`fuser -vm {0}` shows which)",
            mnt.display()
        ),
        _ => anyhow::Error::new(e).context(format!("cannot remount {}", mnt.display())),
    })
}

/// How long a mount waits for the daemon of an unmounted mount of the same store to exit.
const STORE_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Returns once no daemon holds the store. One whose mount is gone (`umount -l`, or a `umount`
/// whose daemon is still closing the store) gets a bounded wait; a mounted one is an error now.
fn wait_for_store(store: &Path) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut told = false;
    while let Some(pid) = crate::store::lock_holder(store)? {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted = super::umount::parse_mountinfo(&text)
            .into_iter()
            .find(|m| m.fstype == "fuse.genfs" && m.source == store);
        if let Some(m) = mounted {
            bail!(
                "store {} is in use by another genfs daemon (pid {pid}), mounted on {}; a store is \
                 mounted once at a time",
                store.display(),
                m.mountpoint.display()
            );
        }
        if started.elapsed() > STORE_RELEASE_WAIT {
            bail!(
                "store {} is still held by genfs daemon pid {pid}, {} s after its mount went away \
                 (files still open under a lazy unmount keep it serving them)",
                store.display(),
                STORE_RELEASE_WAIT.as_secs()
            );
        }
        if !told {
            eprintln!("genfs: waiting for genfs daemon pid {pid} to finish unmounting {}", store.display());
            told = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> anyhow::Result<Options> {
        parse_options(&[s.to_string()], false)
    }

    /// Any option string a caller (or fstab) can pass parses or fails with a message; never a
    /// panic. A fixed number of seeded cases.
    #[test]
    fn random_option_strings_parse_or_fail_cleanly() {
        const PIECES: &[&str] = &[
            "ro",
            "rw",
            "retention=",
            "keep-last=",
            "log=",
            "syslog",
            "debug",
            "allow_other",
            ",",
            ":",
            "=",
            "\\",
            "'",
            "\"",
            "99999999999999999999",
            "-",
            "x-",
            "uhelper=",
            "é",
            " ",
            "%",
            "fsname=",
            "subtype=",
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut s = String::new();
            for _ in 0..(state % 6) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            for sloppy in [false, true] {
                let _ = parse_options(&[s.clone()], sloppy);
            }
        }
    }

    #[test]
    fn generic_and_ignored_options() {
        let o =
            parse("defaults,nofail,_netdev,x-systemd.automount,noauto,user,rw,nodev,nosuid,noexec").unwrap();
        assert_eq!(
            o.vfs.fuser_options(),
            vec![MountOption::RW, MountOption::NoSuid, MountOption::NoDev, MountOption::NoExec]
        );
        assert_eq!(o.acl, Acl::Owner);
        let o = parse("ro,allow_other,default_permissions,dev,suid,uhelper=genfs,comment=x").unwrap();
        assert!(o.vfs.read_only);
        assert_eq!(o.acl, Acl::All);
        assert!(o.vfs.fuser_options().contains(&MountOption::Dev) && o.vfs.asks_privilege());
        let o = parse("strictatime,nodiratime,lazytime").unwrap();
        assert!(o.vfs.beyond_fuser() && !o.vfs.asks_privilege());
        assert!(parse("remount,ro").unwrap().remount);
        assert!(parse("remount,retention=keep-last=2").is_err());
    }

    #[test]
    fn genfs_options() {
        let o = parse("debug,log=syslog").unwrap();
        assert!(o.debug);
        assert_eq!(o.log, Some(LogTarget::Syslog));
        let o = parse("log=/var/log/genfs.log").unwrap();
        assert_eq!(o.log, Some(LogTarget::File("/var/log/genfs.log".into())));
        let o = parse("retention=keep-last=5:keep-within=2d,rw").unwrap();
        assert_eq!(o.retention.as_deref(), Some("keep-last=5,keep-within=2d"));
        let o = parse("retention=\"keep-last=5,keep-daily=7\",noatime").unwrap();
        assert_eq!(o.retention.as_deref(), Some("keep-last=5,keep-daily=7"));
        assert!(o.vfs.fuser_options().contains(&MountOption::NoAtime));
    }

    #[test]
    fn bad_options_are_refused_with_a_reason() {
        let err = |s: &str| format!("{:#}", parse(s).unwrap_err());
        assert!(err("frobnicate").contains("unknown mount option `frobnicate`"));
        assert!(err("retention=keep-forever").contains("retention=keep-forever"));
        assert!(err("commit=5").contains("not supported"));
        assert!(err("cache=none").contains("not supported"));
        assert!(err("ro,retention=keep-last=3").contains("cannot be combined with ro"));
        assert!(err("log=").contains("log=PATH"));
        let o = parse_options(&["frobnicate,ro".into()], true).unwrap();
        assert_eq!(o.ignored, vec!["frobnicate".to_string()]);
        assert!(o.vfs.read_only);
    }

    #[test]
    fn mount_fuse_source_form() {
        assert_eq!(strip_program(Path::new("genfs#/srv/store")), PathBuf::from("/srv/store"));
        assert_eq!(strip_program(Path::new("/srv/store")), PathBuf::from("/srv/store"));
    }

    #[test]
    fn fuse_conf() {
        assert!(!fuse_conf_allows_other("# user_allow_other\n#user_allow_other\n"));
        assert!(fuse_conf_allows_other("mount_max = 1000\nuser_allow_other\n"));
    }
}
