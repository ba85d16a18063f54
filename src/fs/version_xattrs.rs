//! The virtual `user.genfs.*` attributes (docs/xattrs.md): reads answer from the store;
//! changes that commit (restore) or take long (gc, snapshots) run on a worker.

use super::{Core, GenFs};
use crate::store::records::{Kind, ROOT_INO};
use crate::store::{StoreError, StoreResult};
use crate::versions::{self as v, views::View};
use fuser::{Errno, ReplyEmpty, Request};

impl Core {
    /// A `user.genfs.*` attribute of a node.
    pub(super) fn version_attr(&self, nodeid: u64, name: &[u8], req: &Request) -> StoreResult<Vec<u8>> {
        match (self.views.get(nodeid), name) {
            (Some(View::File { gen, .. }), v::GENERATION) => return Ok(gen.to_string().into_bytes()),
            (Some(View::File { ino, .. } | View::Dir { ino, .. } | View::Other { ino, .. }), v::MODE) => {
                let inode = self.store.inode(ino)?;
                return Ok(format!("{:04o} {} {}", inode.perm, inode.uid, inode.gid).into_bytes());
            }
            _ => {}
        }
        let ino = self.ino_of(nodeid)?;
        let inode = self.store.inode(ino)?;
        let file = inode.kind == Kind::File;
        let root = nodeid == ROOT_INO;
        match name {
            v::GENERATION if file => Ok(inode.gen.to_string().into_bytes()),
            v::LOG if file => v::log_page(ino, self.store.log_newest_first(ino, None)?),
            v::RETENTION => Ok(self.store.retention_of(ino)?.to_string().into_bytes()),
            v::SNAPSHOTS if root => Ok(v::snapshots_text(&self.store.snapshots()?)),
            v::SEQ if root => Ok(self.store.last_seq().to_string().into_bytes()),
            v::DURABLE_SEQ if root => Ok(self.store.durable_seq().to_string().into_bytes()),
            v::STATS if root => self.cached_stats_text(),
            v::FREE_FLOOR if root => Ok(self.store.free_floor()?.to_string().into_bytes()),
            v::GC if root => self.gc_report_for(req),
            n if file && n.starts_with(v::LOG_BEFORE) => {
                let before = std::str::from_utf8(&n[v::LOG_BEFORE.len()..])
                    .ok()
                    .and_then(|g| g.parse::<u64>().ok())
                    .ok_or(StoreError::NoAttribute)?;
                v::log_page(ino, self.store.log_newest_first(ino, Some(before))?)
            }
            _ => Err(StoreError::NoAttribute),
        }
    }

    /// Runs gc, keeping every generation a node, view or draft still uses.
    pub(super) fn run_gc(&self, dry_run: bool) -> StoreResult<()> {
        let _fence = self.gc_fence.write();
        let pinned = self.pinned_generations();
        let report = self.store.gc(&pinned, dry_run);
        super::return_free_memory();
        *self.last_gc.lock() = Some(report?);
        Ok(())
    }

    /// `user.genfs.stats`, computed again only when something changed or it is a few seconds
    /// old: it walks the whole index (26 s at a million files), and `getfattr` asks twice,
    /// for the size and then the value.
    pub(super) fn cached_stats_text(&self) -> StoreResult<Vec<u8>> {
        const FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(5);
        let seq = self.store.last_seq();
        if let Some((at, when, text)) = &*self.stats_cache.lock() {
            if *at == seq && when.elapsed() < FRESH_FOR {
                return Ok(text.clone());
            }
        }
        let text = self.stats_text()?;
        *self.stats_cache.lock() = Some((seq, std::time::Instant::now(), text.clone()));
        Ok(text)
    }

    /// `user.genfs.stats`: the store's counts, its space, and what a gc now would free.
    fn stats_text(&self) -> StoreResult<Vec<u8>> {
        let stats = self.store.stats()?;
        let space = self.store.space_status()?;
        let would_free = {
            let _fence = self.gc_fence.write();
            self.store.gc(&self.pinned_generations(), true)?.freed_bytes
        };
        super::return_free_memory();
        Ok(v::stats_text(&stats, &space, would_free))
    }

    /// The last gc report and the drops for space as `req`'s caller may see them: generations
    /// of files it may not reach (by the rule of `.genfs/gen`) are only counted; their names
    /// stay private.
    fn gc_report_for(&self, req: &Request) -> StoreResult<Vec<u8>> {
        let space = self.space_drops();
        let last = self.last_gc.lock().clone();
        if last.is_none() && space.is_empty() {
            return Ok(Vec::new());
        }
        let mut report = last.unwrap_or_default();
        let before = report.dropped.len() + space.len();
        let mut visible = Vec::with_capacity(report.dropped.len());
        for entry in report.dropped {
            if self.may_reach(entry.0, req)? {
                visible.push(entry);
            }
        }
        report.dropped = visible;
        let mut space_lines = Vec::with_capacity(space.len());
        for d in space {
            if self.may_reach(d.ino, req)? {
                let path = self.store.path_of(d.ino);
                space_lines.push(v::SpaceDropLine { time: d.at.secs, path, gen: d.gen, size: d.size });
            }
        }
        let hidden = before - report.dropped.len() - space_lines.len();
        Ok(v::gc_text(&report, hidden, &space_lines, |ino| self.store.path_of(ino)))
    }
}

/// Work a version attribute leaves for a worker.
type VersionJob = Box<dyn FnOnce(&Core) -> StoreResult<()> + Send>;

fn text_value(value: &[u8]) -> StoreResult<&str> {
    std::str::from_utf8(value).map(str::trim).map_err(|_| StoreError::InvalidArgument)
}

impl GenFs {
    /// setxattr of a `user.genfs.*` name.
    pub(super) fn set_version_attr(
        &self,
        req: &Request,
        nodeid: u64,
        name: &[u8],
        value: &[u8],
        reply: ReplyEmpty,
    ) {
        let c = &self.core;
        let result = (|| -> StoreResult<Option<VersionJob>> {
            let ino = c.writable_ino_of(nodeid)?;
            let text = text_value(value)?.to_string();
            let root_only = || -> StoreResult<()> {
                let root = c.store.inode(ROOT_INO)?;
                if nodeid != ROOT_INO {
                    return Err(StoreError::InvalidArgument);
                }
                if req.uid() != 0 && req.uid() != root.uid {
                    return Err(StoreError::NotPermitted);
                }
                Ok(())
            };
            match name {
                v::RESTORE => {
                    // An immutable or append-only file gets no generation but its own.
                    c.refuse_if(ino, super::fileattr::IMMUTABLE | super::fileattr::APPEND)?;
                    let gen: u64 = text.parse().map_err(|_| StoreError::InvalidArgument)?;
                    if c.store.inode(ino)?.kind != Kind::File {
                        return Err(StoreError::InvalidArgument);
                    }
                    Ok(Some(Box::new(move |c: &Core| {
                        c.store.restore(ino, gen)?;
                        c.invalidate_file(ino);
                        Ok(())
                    })))
                }
                v::RETENTION => {
                    // Write permission on a shared directory is not enough: a policy decides how
                    // long others' files keep their history.
                    if req.uid() != 0 && req.uid() != c.store.inode(ino)?.uid {
                        return Err(StoreError::NotPermitted);
                    }
                    c.store.set_retention(ino, (!text.is_empty()).then_some(text.as_str()), req.uid())?;
                    Ok(None)
                }
                v::SNAPSHOT_CREATE => {
                    root_only()?;
                    Ok(Some(Box::new(move |c: &Core| c.store.snapshot_create(text.as_bytes()).map(|_| ()))))
                }
                v::SNAPSHOT_DELETE => {
                    root_only()?;
                    Ok(Some(Box::new(move |c: &Core| c.store.snapshot_delete(text.as_bytes()))))
                }
                v::FREE_FLOOR => {
                    root_only()?;
                    c.store.set_free_floor((!text.is_empty()).then_some(text.as_str()))?;
                    Ok(None)
                }
                v::GC => {
                    root_only()?;
                    let dry_run = match text.as_str() {
                        "run" => false,
                        "dry-run" => true,
                        _ => return Err(StoreError::InvalidArgument),
                    };
                    Ok(Some(Box::new(move |c: &Core| c.run_gc(dry_run))))
                }
                _ => Err(StoreError::NotPermitted),
            }
        })();
        match result {
            Ok(None) => reply.ok(),
            Ok(Some(job)) => self.submit(move |c| super::reply_empty(reply, job(c))),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }
}
