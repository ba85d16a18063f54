//! `fsck --repair` of the namespace and the reference counts ([`Store::repair_namespace`]):
//! what `check` finds wrong there is set right through journal records, so the repair is as
//! crash-safe as any change. Committed generations are never dropped here.
//!
//! Repaired: entries naming a missing inode (dropped) or giving the wrong kind (corrected);
//! names without their backlink, and backlinks without their name; link counts; named files
//! whose current generation is missing (the newest kept one becomes current, else empty);
//! inodes that should have a name but have none or hang off no path from the root (moved to
//! `/lost+found` as `#INO`); chunk reference counts (recounted from the manifests).

use super::error::StoreResult;
use super::records::{Hash, Ino, Inode, Kind, Op, Timestamp, ROOT_INO};
use super::NewNode;
use super::Store;
use std::collections::{BTreeMap, HashMap, HashSet};

const LOST_AND_FOUND: &[u8] = b"lost+found";

/// What [`Store::repair_namespace`] did, one line per change.
#[derive(Debug, Clone, Default)]
pub struct NamespaceRepair {
    pub changes: Vec<String>,
}

impl Store {
    /// Sets right the namespace and reference-count problems `check` reports (module docs).
    pub fn repair_namespace(&self) -> StoreResult<NamespaceRepair> {
        let mut report = NamespaceRepair::default();
        self.repair_entries(&mut report)?;
        self.reattach_orphans(&mut report)?;
        self.repair_link_counts(&mut report)?;
        self.repair_current_generations(&mut report)?;
        self.recount_chunk_references(&mut report)?;
        self.sync()?;
        Ok(report)
    }

    fn all_inodes(&self) -> StoreResult<BTreeMap<Ino, Inode>> {
        self.index.each_inode().collect()
    }

    /// Entries against inodes, and backlinks against entries.
    fn repair_entries(&self, report: &mut NamespaceRepair) -> StoreResult<()> {
        let inodes = self.all_inodes()?;
        for (&dir, _) in inodes.iter().filter(|(_, i)| i.kind == Kind::Dir) {
            for e in self.index.readdir(dir, 0, usize::MAX)? {
                let name = String::from_utf8_lossy(&e.name).into_owned();
                let entry = |kind| Op::PutDirent {
                    parent: dir,
                    name: e.name.clone(),
                    ino: e.ino,
                    kind,
                    cookie: e.cookie,
                };
                match inodes.get(&e.ino) {
                    None => {
                        self.mutate(vec![Op::DelDirent { parent: dir, name: e.name.clone() }])?;
                        report
                            .changes
                            .push(format!("dropped entry {dir}/{name}: inode {} does not exist", e.ino));
                    }
                    Some(child) if child.kind != e.kind => {
                        self.mutate(vec![entry(child.kind)])?;
                        report.changes.push(format!("entry {dir}/{name}: kind set to {:?}", child.kind));
                    }
                    Some(_)
                        if !self.index.names_of(e.ino)?.iter().any(|(p, n)| *p == dir && *n == e.name) =>
                    {
                        // Putting the entry again puts its backlink with it.
                        self.mutate(vec![entry(e.kind)])?;
                        report.changes.push(format!("entry {dir}/{name}: backlink restored"));
                    }
                    Some(_) => {}
                }
            }
        }
        for &ino in inodes.keys() {
            for (parent, name) in self.index.names_of(ino)? {
                if self.index.lookup(parent, &name)?.is_some_and(|(i, _)| i == ino) {
                    continue;
                }
                // A backlink alone: an entry put and removed in one record takes it away.
                let kind = inodes[&ino].kind;
                let mut ops = Vec::new();
                if let Some(other) = self.index.lookup(parent, &name)? {
                    ops.push(Op::PutDirent { parent, name: name.clone(), ino, kind, cookie: u64::MAX });
                    ops.push(Op::PutDirent {
                        parent,
                        name: name.clone(),
                        ino: other.0,
                        kind: other.1,
                        cookie: self.index.cookie(parent, &name)?.unwrap_or(u64::MAX),
                    });
                } else {
                    ops.push(Op::PutDirent { parent, name: name.clone(), ino, kind, cookie: u64::MAX });
                    ops.push(Op::DelDirent { parent, name: name.clone() });
                }
                self.mutate(ops)?;
                let shown = String::from_utf8_lossy(&name);
                report
                    .changes
                    .push(format!("inode {ino}: dropped backlink {parent}/{shown}, which no entry has"));
            }
        }
        Ok(())
    }

    /// Inodes with a link count but no name, and directories no path from the root reaches,
    /// get a name in `/lost+found`.
    fn reattach_orphans(&self, report: &mut NamespaceRepair) -> StoreResult<()> {
        let inodes = self.all_inodes()?;
        let mut reachable = HashSet::from([ROOT_INO]);
        let mut stack = vec![ROOT_INO];
        while let Some(dir) = stack.pop() {
            for e in self.index.readdir(dir, 0, usize::MAX)? {
                if reachable.insert(e.ino) && e.kind == Kind::Dir {
                    stack.push(e.ino);
                }
            }
        }
        let orphans: Vec<(Ino, Kind)> = inodes
            .iter()
            .filter(|(ino, i)| **ino != ROOT_INO && i.nlink > 0 && !reachable.contains(ino))
            .map(|(ino, i)| (*ino, i.kind))
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        let lost = self.lost_and_found()?;
        for (ino, kind) in orphans {
            // An unreachable directory keeps no other name: a directory has one.
            let mut ops: Vec<Op> = Vec::new();
            if kind == Kind::Dir {
                for (parent, name) in self.index.names_of(ino)? {
                    ops.push(Op::DelDirent { parent, name });
                }
            }
            let name = format!("#{ino}").into_bytes();
            let mut dir = self.inode(lost)?;
            let cookie = super::take_cookie(&mut dir);
            if kind == Kind::Dir {
                dir.nlink += 1;
            }
            dir.mtime = Timestamp::now();
            ops.push(Op::PutDirent { parent: lost, name, ino, kind, cookie });
            ops.push(Op::PutInode { ino: lost, inode: dir });
            self.mutate(ops)?;
            report
                .changes
                .push(format!("inode {ino} ({kind:?}) had no path from the root: now /lost+found/#{ino}"));
        }
        Ok(())
    }

    fn lost_and_found(&self) -> StoreResult<Ino> {
        if let Some((ino, Kind::Dir)) = self.index.lookup(ROOT_INO, LOST_AND_FOUND)? {
            return Ok(ino);
        }
        let node = NewNode { kind: Kind::Dir, perm: 0o700, uid: 0, gid: 0, rdev: 0, target: vec![] };
        Ok(self.create(ROOT_INO, LOST_AND_FOUND, &node)?.0)
    }

    /// Link counts as the names say: directories 2 + subdirectories (0 once removed), others
    /// their number of names. A file losing its last count this way keeps its generations.
    fn repair_link_counts(&self, report: &mut NamespaceRepair) -> StoreResult<()> {
        let inodes = self.all_inodes()?;
        let mut subdirs: HashMap<Ino, u32> = HashMap::new();
        for (&dir, _) in inodes.iter().filter(|(_, i)| i.kind == Kind::Dir) {
            let n = self.index.readdir(dir, 0, usize::MAX)?.iter().filter(|e| e.kind == Kind::Dir).count();
            subdirs.insert(dir, n as u32);
        }
        for (&ino, inode) in &inodes {
            let names = self.index.names_of(ino)?.len() as u32;
            let expected =
                super::check::expected_nlink(ino, inode.kind, names, subdirs.get(&ino).copied().unwrap_or(0));
            if inode.nlink != expected {
                let _lock = self.lock_inodes(&[ino]);
                let mut fixed = self.inode(ino)?;
                fixed.nlink = expected;
                self.mutate(vec![Op::PutInode { ino, inode: fixed }])?;
                report.changes.push(format!("inode {ino}: link count {} set to {expected}", inode.nlink));
            }
        }
        Ok(())
    }

    /// A named file whose current generation is missing reads its newest kept one (as a new
    /// generation), or is empty if none is kept.
    fn repair_current_generations(&self, report: &mut NamespaceRepair) -> StoreResult<()> {
        for (ino, inode) in self.all_inodes()? {
            if inode.kind != Kind::File || inode.nlink == 0 || inode.gen == 0 {
                continue;
            }
            if self.index.generation(ino, inode.gen)?.is_some() {
                continue;
            }
            let newest = self.log(ino)?.last().map(|e| e.gen);
            match newest {
                Some(gen) => {
                    self.restore(ino, gen)?;
                    report.changes.push(format!(
                        "file {ino}: current generation {} missing, reads {gen} again",
                        inode.gen
                    ));
                }
                None => {
                    let mut draft = self.new_draft_from_nothing(ino)?;
                    draft.dirty = true;
                    self.commit(&mut draft)?;
                    report.changes.push(format!(
                        "file {ino}: current generation {} missing and none kept: empty",
                        inode.gen
                    ));
                }
            }
        }
        Ok(())
    }

    fn new_draft_from_nothing(&self, ino: Ino) -> StoreResult<super::Draft> {
        let inode = self.inode(ino)?;
        Ok(super::Draft::new(ino, inode.gen, &super::records::Manifest::empty(), self.root.join("staging")))
    }

    /// Every chunk's reference count recounted from all manifests.
    fn recount_chunk_references(&self, report: &mut NamespaceRepair) -> StoreResult<()> {
        let _gc = self.chunk_gc.write();
        let mut counted: HashMap<Hash, (u64, u32)> = HashMap::new();
        for (ino, inode) in self.all_inodes()? {
            if inode.kind != Kind::File {
                continue;
            }
            for (_, m) in self.index.generations(ino)? {
                for c in m.chunk_refs() {
                    counted.entry(c.hash).or_insert((0, c.len)).0 += 1;
                }
            }
        }
        let recorded: HashMap<Hash, (u64, u32)> =
            self.index.chunks()?.into_iter().map(|(h, c, l)| (h, (c, l))).collect();
        let mut ops = Vec::new();
        for (hash, (count, len)) in &counted {
            if recorded.get(hash).map(|r| r.0) != Some(*count) {
                ops.push(Op::SetChunkRefs { hash: *hash, count: *count, len: *len });
            }
        }
        for (hash, (count, len)) in &recorded {
            if *count > 0 && !counted.contains_key(hash) {
                // Nothing uses it: at zero, gc removes it.
                ops.push(Op::SetChunkRefs { hash: *hash, count: 0, len: *len });
            }
        }
        if !ops.is_empty() {
            report.changes.push(format!("{} chunk reference counts recounted from the manifests", ops.len()));
            for batch in ops.chunks(1024) {
                self.mutate(batch.to_vec())?;
            }
        }
        Ok(())
    }
}
