//! The FUSE side of the read-only views under `/.genfs/` (see `versions::views`): lookups,
//! attributes and directory listings. Every change inside a view fails with EROFS.

use super::attr::to_attr;
use super::listings::Entry;
use super::Core;
use crate::store::records::{Ino, Inode, Kind, Timestamp, ROOT_INO};
use crate::store::{StoreError, StoreResult};
use crate::versions::views::{View, AT_DIR, GENFS_DIR, GEN_DIR, SNAPSHOTS_DIR};
use crate::versions::{parse_at, At};
use fuser::{FileAttr, FileType, INodeNo, Request};
use std::sync::Arc;

/// Directories between a file and the root, at most (a loop in a damaged index ends here).
const DEPTH_MAX: usize = 4096;

/// Permission bits as a view shows them: no write bits.
/// Directory permission bits (r-x) for each class that may read a file of mode `perm`.
fn readable_as_searchable(perm: u16) -> u16 {
    [0o400, 0o040, 0o004].iter().filter(|&&r| perm & r != 0).map(|&r| r | (r >> 2)).sum()
}

fn read_only(mut inode: Inode) -> Inode {
    inode.perm &= !0o222;
    inode
}

impl Core {
    fn fixed_dir_attr(&self, nodeid: u64) -> FileAttr {
        let t = self.mounted_at.to_system();
        FileAttr {
            ino: INodeNo(nodeid),
            size: 4096,
            blocks: 8,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: super::attr::BLOCK_SIZE_HINT,
            flags: 0,
        }
    }

    pub(super) fn view_attr(&self, nodeid: u64, view: &View) -> StoreResult<FileAttr> {
        Ok(match view {
            View::Fixed(id) => self.fixed_dir_attr(*id),
            View::Generations { ino } => {
                let mut attr = self.fixed_dir_attr(nodeid);
                let inode = self.store.inode(*ino)?;
                (attr.uid, attr.gid) = (inode.uid, inode.gid);
                // Open to whoever may read the file, no one else: sizes, times and digests of
                // its generations tell about its contents.
                attr.perm = readable_as_searchable(inode.perm);
                attr
            }
            View::Dir { ino, .. } | View::Other { ino, .. } => {
                let inode = read_only(self.store.inode(*ino)?);
                to_attr(nodeid, &inode, inode.size, inode.mtime)
            }
            View::File { ino, manifest, .. } => {
                let inode = read_only(self.store.inode(*ino)?);
                to_attr(nodeid, &inode, manifest.size, manifest.mtime)
            }
        })
    }

    fn view_node(&self, view: View) -> StoreResult<FileAttr> {
        let nodeid = self.views.lookup(view.clone(), || self.view_ids.next());
        self.view_attr(nodeid, &view)
    }

    /// What `ino` (named in a directory as of `seq`) is in that view.
    fn view_of(&self, seq: u64, ino: Ino, kind: Kind) -> StoreResult<View> {
        Ok(match kind {
            Kind::Dir => View::Dir { seq, ino },
            Kind::File => {
                let (gen, manifest) = self.store.generation_at(ino, seq)?;
                View::File { ino, gen, manifest: Arc::new(manifest) }
            }
            _ => View::Other { seq, ino },
        })
    }

    /// Whether the caller may search every directory above some current name of `ino`.
    /// `.genfs/gen/INO` names a file by number, skipping the path walk in which the kernel
    /// checks those directories, so the view checks them itself: old generations are open to
    /// whoever may reach the file now. An unlinked file's history: its owner only.
    pub(super) fn may_reach(&self, ino: Ino, req: &Request) -> StoreResult<bool> {
        if req.uid() == 0 {
            return Ok(true);
        }
        let mut groups = super::handles::groups_of(req.pid());
        groups.push(req.gid());
        let may_search_by_acl = |ino: Ino| -> StoreResult<Option<bool>> {
            match self.store.xattr(ino, super::acl::ACCESS) {
                Ok(bytes) => {
                    let dir = self.store.inode(ino)?;
                    let acl = super::acl::Acl::parse(&bytes)?;
                    Ok(Some(acl.permits(req.uid(), &groups, (dir.uid, dir.gid), 1)))
                }
                Err(StoreError::NoAttribute) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let may_search = |dir: &Inode| {
            let bits = if dir.uid == req.uid() {
                0o100
            } else if dir.gid == req.gid() || groups.contains(&dir.gid) {
                0o010
            } else {
                0o001
            };
            dir.perm & bits != 0
        };
        let names = self.store.names_of(ino)?;
        if names.is_empty() {
            return Ok(self.store.inode(ino)?.uid == req.uid());
        }
        'names: for (parent, _) in names {
            let mut dir = parent;
            for _ in 0..DEPTH_MAX {
                // A directory's ACL decides as it does for the kernel's path walk.
                let allowed = match may_search_by_acl(dir)? {
                    Some(verdict) => verdict,
                    None => may_search(&self.store.inode(dir)?),
                };
                if !allowed {
                    continue 'names;
                }
                if dir == ROOT_INO {
                    return Ok(true);
                }
                match self.store.names_of(dir)?.first() {
                    Some(&(up, _)) => dir = up,
                    None => continue 'names,
                }
            }
        }
        Ok(false)
    }

    /// A view's entry for `name` in `parent`, looked up for `req`.
    pub(super) fn view_lookup(&self, parent: &View, name: &[u8], req: &Request) -> StoreResult<FileAttr> {
        let text = std::str::from_utf8(name).ok();
        let view = match parent {
            View::Fixed(GENFS_DIR) => match name {
                b"gen" => View::Fixed(GEN_DIR),
                b"snapshots" => View::Fixed(SNAPSHOTS_DIR),
                b"at" => View::Fixed(AT_DIR),
                _ => return Err(StoreError::NotFound),
            },
            View::Fixed(GEN_DIR) => {
                let ino: Ino = text.and_then(|t| t.parse().ok()).ok_or(StoreError::NotFound)?;
                if self.store.inode(ino)?.kind != Kind::File {
                    return Err(StoreError::NotFound);
                }
                if !self.may_reach(ino, req)? {
                    return Err(StoreError::PermissionDenied);
                }
                View::Generations { ino }
            }
            View::Fixed(SNAPSHOTS_DIR) => {
                let snaps = self.store.snapshots()?;
                let (_, snap) = snaps.iter().find(|(n, _)| n == name).ok_or(StoreError::NotFound)?;
                View::Dir { seq: snap.seq, ino: ROOT_INO }
            }
            View::Fixed(AT_DIR) => {
                let seq = match parse_at(name).ok_or(StoreError::NotFound)? {
                    At::Seq(seq) if seq <= self.store.last_seq() => seq,
                    At::Seq(_) => return Err(StoreError::NotFound),
                    At::Time(secs) => self.store.seq_at_time(Timestamp { secs, nanos: 0 })?,
                };
                View::Dir { seq, ino: ROOT_INO }
            }
            View::Fixed(_) => return Err(StoreError::NotFound),
            View::Generations { ino } => {
                let gen: u64 = text.and_then(|t| t.parse().ok()).ok_or(StoreError::NotFound)?;
                if !self.may_reach(*ino, req)? {
                    return Err(StoreError::PermissionDenied);
                }
                let (owner, manifest) =
                    self.store.history_generation(*ino, gen)?.ok_or(StoreError::NotFound)?;
                View::File { ino: owner, gen, manifest: Arc::new(manifest) }
            }
            View::Dir { seq, ino } => {
                let (child, inode) = self.store.lookup_at(*ino, name, *seq)?;
                // As private as it is now: moved into a 0700 directory, it is gone from others'
                // view of the past too (the old path's directories may still be open).
                if !self.may_reach(child, req)? {
                    return Err(StoreError::PermissionDenied);
                }
                self.view_of(*seq, child, inode.kind)?
            }
            View::File { .. } | View::Other { .. } => return Err(StoreError::NotDir),
        };
        self.view_node(view)
    }

    /// The whole listing of view directory `dir` (node id `nodeid`), `.` and `..` first.
    /// Positions are stable (a view never changes), so a handle builds it once and pages
    /// through it (`listings`).
    pub(super) fn view_listing(&self, nodeid: u64, dir: &View) -> StoreResult<Vec<Entry>> {
        let mut names: Vec<Entry> =
            vec![(nodeid, FileType::Directory, b".".to_vec()), (nodeid, FileType::Directory, b"..".to_vec())];
        match dir {
            View::Fixed(GENFS_DIR) => names.extend(
                [(GEN_DIR, "gen"), (SNAPSHOTS_DIR, "snapshots"), (AT_DIR, "at")]
                    .into_iter()
                    .map(|(id, n)| (id, FileType::Directory, n.as_bytes().to_vec())),
            ),
            View::Fixed(SNAPSHOTS_DIR) => names
                .extend(self.store.snapshots()?.into_iter().map(|(n, _)| (ROOT_INO, FileType::Directory, n))),
            View::Fixed(_) => {}
            View::Generations { ino } => names.extend(
                self.store
                    .log(*ino)?
                    .into_iter()
                    .map(|e| (e.owner, FileType::RegularFile, e.gen.to_string().into_bytes())),
            ),
            View::Dir { seq, ino } => {
                for (n, child, kind) in self.store.readdir_at(*ino, *seq)? {
                    // A file whose generation of then retention dropped is not in the view.
                    if kind == Kind::File {
                        match self.store.generation_at(child, *seq) {
                            Err(StoreError::NotFound) => continue,
                            Err(e) => return Err(e),
                            Ok(_) => {}
                        }
                    }
                    names.push((child, super::attr::file_type(kind), n));
                }
            }
            View::File { .. } | View::Other { .. } => return Err(StoreError::NotDir),
        }
        Ok(names)
    }
}
