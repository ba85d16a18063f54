//! What a store's files must be before the daemon opens any of them (docs/design.md, "Security
//! model").
//!
//! The daemon opens its files by path, so whoever can change the store's tree could point those
//! paths elsewhere: a `lock` that is a link to `/etc/shadow` would be truncated, a `staging`
//! that is a link to a directory would have that directory emptied. Two rules close this:
//! no symbolic link anywhere in the store (checked here, and `O_NOFOLLOW` where files are
//! opened), and, when the daemon runs as root, every directory from `/` down to the store's
//! files belongs to root and is writable by nobody else (a sticky directory such as `/tmp`
//! counts: others cannot move what root owns in it). Then only root can change the tree between
//! this check and the daemon's use of it. A store owned by an ordinary user is served by that
//! user's own daemon, which it cannot turn against anyone but itself.

use super::error::{StoreError, StoreResult};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Top-level entries of a store and whether each is a directory whose own entries must be
/// checked too (chunk files are not listed: there may be millions, and only whoever can
/// write their shard directory, checked here, can replace one).
const STORE_ENTRIES: &[(&str, Depth)] = &[
    ("genfs.toml", Depth::Entry),
    ("lock", Depth::Entry),
    ("genfs.log", Depth::Entry),
    ("genfs.log.1", Depth::Entry),
    ("journal", Depth::Tree),
    ("index", Depth::Tree),
    ("staging", Depth::Entry),
    ("chunks", Depth::Children),
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Only the entry itself.
    Entry,
    /// The directory and its immediate entries.
    Children,
    /// The directory and everything below it.
    Tree,
}

/// Refuses a store the daemon could be tricked through: any symbolic link inside it, and when
/// running as root (`euid` 0), anything another user owns or may write, the directories above
/// the store included.
pub fn check_store_files(root: &Path, euid: u32) -> StoreResult<()> {
    let root = match std::fs::canonicalize(root) {
        Ok(root) => root,
        // Nothing there: opening it says it is not a store.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(format!("store {}", root.display()), e)),
    };
    if euid == 0 {
        for dir in root.ancestors().skip(1) {
            check_entry(dir, euid, true)?;
        }
    }
    check_entry(&root, euid, false)?;
    for (name, depth) in STORE_ENTRIES {
        let path = root.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            continue; // Missing entries are the caller's to report (or create).
        }
        check_entry(&path, euid, false)?;
        match depth {
            Depth::Entry => {}
            Depth::Children => check_children(&path, euid, false)?,
            Depth::Tree => check_children(&path, euid, true)?,
        }
    }
    Ok(())
}

fn check_children(dir: &Path, euid: u32, recursive: bool) -> StoreResult<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| StoreError::io(format!("read {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("read {}", dir.display()), e))?;
        let path = entry.path();
        let meta = check_entry(&path, euid, false)?;
        if recursive && meta.is_dir() {
            check_children(&path, euid, true)?;
        }
    }
    Ok(())
}

/// One entry: never a symbolic link; as root, owned by root and not writable by group or
/// others (`above`: a directory above the store, where a sticky bit makes others' write
/// permission harmless).
fn check_entry(path: &Path, euid: u32, above: bool) -> StoreResult<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| StoreError::io(format!("inspect {}", path.display()), e))?;
    if meta.file_type().is_symlink() && !above {
        return Err(StoreError::Unsafe(format!(
            "{} is a symbolic link; a store holds none, and genfs does not follow one there \
             (was the store tampered with?)",
            path.display()
        )));
    }
    if euid != 0 {
        return Ok(meta);
    }
    if meta.uid() != 0 {
        let whose = if above { "a directory above the store" } else { "part of the store" };
        return Err(StoreError::Unsafe(format!(
            "{} ({whose}) belongs to uid {}, and genfs runs as root: another user could redirect \
             the daemon's writes; mount the store as its owner, or make root own it \
             (chown -R root: STORE)",
            path.display(),
            meta.uid()
        )));
    }
    let others_may_write = meta.mode() & 0o022 != 0;
    let sticky = meta.mode() & libc::S_ISVTX != 0;
    if others_may_write && !(above && sticky) {
        return Err(StoreError::Unsafe(format!(
            "{} is writable by group or others (mode {:o}), and genfs runs as root: \
             chmod go-w it",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(meta)
}

/// A warning for a store other users may read (files' contents sit in its chunks), if it is.
pub fn readable_by_others(root: &Path) -> Option<String> {
    let meta = std::fs::metadata(root).ok()?;
    (meta.mode() & 0o077 != 0).then(|| {
        format!(
            "store {} is open to other users (mode {:o}): they can read every file's contents \
             in its chunks; chmod 700 {}",
            root.display(),
            meta.mode() & 0o777,
            root.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["journal", "index", "chunks", "staging"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("lock"), b"").unwrap();
        dir
    }

    #[test]
    fn a_link_anywhere_inside_is_refused_for_every_user() {
        for (victim, link) in
            [("lock", "/etc/passwd"), ("staging", "/tmp"), ("journal/00000001", "/etc/hosts")]
        {
            let dir = store_dir();
            let path = dir.path().join(victim);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&path);
            std::os::unix::fs::symlink(link, &path).unwrap();
            for euid in [0, 1000] {
                let err = check_store_files(dir.path(), euid).unwrap_err();
                assert!(err.to_string().contains("symbolic link"), "{victim} as {euid}: {err}");
                assert!(err.to_string().contains(victim), "{err}");
            }
        }
    }

    #[test]
    fn as_root_others_files_and_writable_directories_are_refused() {
        let dir = store_dir();
        check_store_files(dir.path(), 0).unwrap();
        let chunks = dir.path().join("chunks");
        std::os::unix::fs::chown(&chunks, Some(1000), None).unwrap();
        let err = check_store_files(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains("uid 1000"), "{err}");
        check_store_files(dir.path(), 1000).unwrap();
        std::os::unix::fs::chown(&chunks, Some(0), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&chunks, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_store_files(dir.path(), 0).unwrap_err();
        assert!(err.to_string().contains("writable by group or others"), "{err}");
    }
}
