//! `genfs restore --tree DIR@TIME`: brings every regular file under DIR back to its content at
//! TIME, read from the time-travel view `/.genfs/at/TIME/<DIR>`, by writing that content to the
//! live path where it differs (each such write is a new generation; nothing is deleted).

use super::history::{cause, file_spec, GenSpec, OnMount};
use super::progress::Progress;
use super::time::format_rfc3339;
use super::versions::stream_compare;
use anyhow::{anyhow, bail};
use std::ffi::OsString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Default)]
struct Tally {
    rewritten: u64,
    recreated: u64,
    unchanged: u64,
    skipped: u64,
    failed: u64,
}

thread_local! {
    /// The spinner of the running `restore --tree` (lines are printed above it).
    static PROGRESS: std::cell::RefCell<Option<Progress>> = const { std::cell::RefCell::new(None) };
}

fn progress(msg: std::fmt::Arguments) {
    PROGRESS.with(|p| match &*p.borrow() {
        Some(p) => p.println(msg),
        None => {
            let _ = writeln!(io::stderr(), "{msg}");
        }
    });
}

/// Counts one file examined, on the spinner.
fn tick() {
    PROGRESS.with(|p| {
        if let Some(p) = &*p.borrow() {
            p.inc();
        }
    });
}

pub fn restore_tree(target: &OsString) -> anyhow::Result<()> {
    let (dir, spec) = file_spec(target);
    let GenSpec::At(t) = spec else {
        bail!(
            "{}: --tree needs DIR@TIME, TIME in RFC 3339 (e.g. 2026-11-22T05:30:00Z)",
            Path::new(target).display()
        );
    };
    let m = OnMount::locate(&dir)?;
    if !m.is_dir {
        bail!("{}: not a directory (restore --tree takes DIR@TIME; for one file, FILE@TIME)", dir.display());
    }
    let abs = fs::canonicalize(&dir).map_err(|e| anyhow!("{}: {}", dir.display(), cause(&e)))?;
    let rel = abs.strip_prefix(&m.root).unwrap_or(Path::new(""));
    let time = format_rfc3339(t);
    let mut view = m.root.join(".genfs/at").join(&time);
    if !rel.as_os_str().is_empty() {
        view.push(rel);
    }
    match fs::symlink_metadata(&view) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => bail!("{}: was not a directory at {time}", dir.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!("{}: did not exist at {time}", dir.display()),
        Err(e) => bail!("{}: cannot open {}: {}", dir.display(), view.display(), cause(&e)),
    }
    progress(format_args!("restoring {} as of {time} from {}", dir.display(), view.display()));
    let mut tally = Tally::default();
    PROGRESS.with(|p| *p.borrow_mut() = Some(Progress::start(&format!("restoring {}", dir.display()))));
    walk(&view, &dir, &mut tally);
    PROGRESS.with(|p| p.borrow_mut().take());
    progress(format_args!(
        "{}: {} rewritten, {} recreated, {} unchanged, {} skipped, {} failed",
        dir.display(),
        tally.rewritten,
        tally.recreated,
        tally.unchanged,
        tally.skipped,
        tally.failed
    ));
    if tally.failed > 0 {
        bail!("{}: {} files could not be restored (see above)", dir.display(), tally.failed);
    }
    Ok(())
}

/// Restores what `view` (a directory of the time-travel view) holds into `live`.
fn walk(view: &Path, live: &Path, tally: &mut Tally) {
    let names: io::Result<Vec<OsString>> =
        fs::read_dir(view).and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect());
    let mut names = match names {
        Ok(names) => names,
        Err(e) => {
            progress(format_args!(
                "genfs: {}: cannot list {}: {}",
                live.display(),
                view.display(),
                cause(&e)
            ));
            tally.failed += 1;
            return;
        }
    };
    names.sort();
    for name in names {
        let (v, l) = (view.join(&name), live.join(&name));
        let meta = match fs::symlink_metadata(&v) {
            Ok(m) => m,
            Err(e) => {
                progress(format_args!("genfs: {}: cannot read {}: {}", l.display(), v.display(), cause(&e)));
                tally.failed += 1;
                continue;
            }
        };
        if meta.is_dir() {
            match fs::symlink_metadata(&l) {
                Ok(lm) if !lm.is_dir() => {
                    progress(format_args!("skipped {}: no longer a directory", l.display()));
                    tally.skipped += 1;
                }
                _ => walk(&v, &l, tally),
            }
        } else if meta.is_file() {
            match restore_file(&v, &meta, &l, tally) {
                Ok(()) => {}
                Err(e) => {
                    progress(format_args!("genfs: {e:#}"));
                    tally.failed += 1;
                }
            }
        } else {
            tally.skipped += 1; // symlinks, devices, fifos, sockets: not versioned content
        }
    }
}

fn restore_file(view: &Path, meta: &Metadata, live: &Path, tally: &mut Tally) -> anyhow::Result<()> {
    tick();
    let shown = live.display();
    match fs::symlink_metadata(live) {
        Ok(lm) if lm.is_file() => {
            if lm.len() == meta.len() && same_content(view, live)? {
                tally.unchanged += 1;
                return Ok(());
            }
            let out = OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(live)
                .map_err(|e| anyhow!("{shown}: cannot open for writing: {}", cause(&e)))?;
            copy_and_close(view, out, live)?;
            tally.rewritten += 1;
            progress(format_args!("rewrote {shown}"));
        }
        Ok(_) => {
            progress(format_args!("skipped {shown}: no longer a regular file"));
            tally.skipped += 1;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = live.parent() {
                ensure_dir(parent, view.parent().unwrap_or(Path::new("/")))?;
            }
            // Private until it has its rights back; create_new never follows a link.
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(live)
                .map_err(|e| anyhow!("{shown}: cannot create: {}", cause(&e)))?;
            let mut out = out;
            copy_into(view, &mut out, live)?;
            // After the data: a write by a user without CAP_FSETID would drop setuid again.
            restore_rights(&out, live, &rights_of(view, meta))?;
            close_committing(out, live)?;
            tally.recreated += 1;
            progress(format_args!("recreated {shown}"));
        }
        Err(e) => bail!("{shown}: {}", cause(&e)),
    }
    Ok(())
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let open = |p: &Path| File::open(p).map_err(|e| anyhow!("{}: cannot open: {}", p.display(), cause(&e)));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (first, la, lb) = stream_compare(&mut fa, &mut fb)
        .map_err(|e| anyhow!("{}: cannot compare: {}", b.display(), cause(&e)))?;
    Ok(first.is_none() && la == lb)
}

/// Copies `from` into `out` and closes it, reporting the error of close(2): genfs commits the
/// new generation there.
fn copy_and_close(from: &Path, mut out: File, live: &Path) -> anyhow::Result<()> {
    copy_into(from, &mut out, live)?;
    close_committing(out, live)
}

fn copy_into(from: &Path, out: &mut File, live: &Path) -> anyhow::Result<()> {
    let mut src = File::open(from)
        .map_err(|e| anyhow!("{}: cannot open {}: {}", live.display(), from.display(), cause(&e)))?;
    io::copy(&mut src, out).map_err(|e| anyhow!("{}: cannot write: {}", live.display(), cause(&e)))?;
    Ok(())
}

/// Closes `out`, reporting the error of close(2), where genfs commits the new generation.
fn close_committing(out: File, live: &Path) -> anyhow::Result<()> {
    let fd = out.into_raw_fd();
    // SAFETY: `fd` came from into_raw_fd and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        let e = io::Error::last_os_error();
        bail!("{}: commit failed at close: {}", live.display(), cause(&e));
    }
    Ok(())
}

/// Creates `live` (and missing parents) as a directory, with the mode the view shows for it.
fn ensure_dir(live: &Path, view: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(live).is_ok() {
        return Ok(());
    }
    let parents: Vec<(PathBuf, PathBuf)> = live
        .ancestors()
        .zip(view.ancestors())
        .take_while(|(l, _)| fs::symlink_metadata(l).is_err())
        .map(|(l, v)| (l.to_path_buf(), v.to_path_buf()))
        .collect();
    for (l, v) in parents.iter().rev() {
        let meta = fs::metadata(v)
            .map_err(|e| anyhow!("{}: cannot read {}: {}", l.display(), v.display(), cause(&e)))?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(l)
            .map_err(|e| anyhow!("{}: cannot create directory: {}", l.display(), cause(&e)))?;
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(l)
            .map_err(|e| anyhow!("{}: cannot open directory: {}", l.display(), cause(&e)))?;
        restore_rights(&dir, l, &rights_of(v, &meta))?;
        progress(format_args!("recreated directory {}", l.display()));
    }
    Ok(())
}

/// Mode (write bits included), owner and group of a view's entry as it was.
struct Rights {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// From `user.genfs.mode` (the view's own mode lacks write bits); from the view's attributes
/// with a daemon that does not have it.
fn rights_of(view: &Path, meta: &Metadata) -> Rights {
    let from_daemon = xattr::get(view, "user.genfs.mode").ok().flatten().and_then(|v| {
        let text = String::from_utf8(v).ok()?;
        let mut fields = text.split_whitespace();
        let mode = u32::from_str_radix(fields.next()?, 8).ok()?;
        Some(Rights {
            mode: mode & 0o7777,
            uid: fields.next()?.parse().ok()?,
            gid: fields.next()?.parse().ok()?,
        })
    });
    from_daemon.unwrap_or(Rights { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() })
}

/// Gives a file or directory this process just created the rights it had: its owner and
/// group where this process may set them (root), then its mode, never wider than it was, and
/// with setuid only if the owner is the one it had (setgid: the group). A root restoring
/// another user's setuid file must not make it a root-owned setuid file.
fn restore_rights(file: &File, live: &Path, was: &Rights) -> anyhow::Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::fchown(file, Some(was.uid), Some(was.gid)).map_err(|e| {
            anyhow!("{}: cannot give it back to {}:{}: {}", live.display(), was.uid, was.gid, cause(&e))
        })?;
    }
    let now = file.metadata().map_err(|e| anyhow!("{}: {}", live.display(), cause(&e)))?;
    let mut mode = was.mode;
    if now.uid() != was.uid {
        mode &= !libc::S_ISUID;
    }
    if now.gid() != was.gid {
        mode &= !libc::S_ISGID;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| anyhow!("{}: cannot set mode {mode:o}: {}", live.display(), cause(&e)))
}
