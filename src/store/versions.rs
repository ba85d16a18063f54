//! Versions: history that survives save-by-rename, time travel, snapshots, restore, retention
//! and garbage collection. Snapshots and time travel are sequence numbers: the index keeps
//! what every name pointed to from which record on (`h` keys), so reading the tree as of any
//! sequence number needs no copy, and creating a snapshot is one small record (O(1)).

use super::draft::Draft;
use super::error::{StoreError, StoreResult};
use super::index::{Snapshot, FIRST_SEQ_XATTR};
use super::records::{Hash, Ino, Inode, Kind, Manifest, Op, Timestamp};
use super::Store;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

/// One line of a file's log.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub gen: u64,
    /// The inode that holds the generation (a predecessor replaced by rename, or the file).
    pub owner: Ino,
    pub manifest: Manifest,
}

/// The (inode, generation) pairs gc and thinning must keep: open through a handle, a kernel
/// node or a view, or the base of a draft. A sorted vector rather than a hash set: with a
/// million files in the kernel's cache it costs 16 MiB where the sets cost several times that.
#[derive(Debug, Clone, Default)]
pub struct Pinned(Vec<(Ino, u64)>);

impl From<Vec<(Ino, u64)>> for Pinned {
    fn from(mut pairs: Vec<(Ino, u64)>) -> Self {
        pairs.sort_unstable(); // in place: no second copy of a million pairs
        pairs.dedup();
        Pinned(pairs)
    }
}

impl FromIterator<(Ino, u64)> for Pinned {
    fn from_iter<I: IntoIterator<Item = (Ino, u64)>>(pairs: I) -> Self {
        Pinned::from(pairs.into_iter().collect::<Vec<_>>())
    }
}

impl Pinned {
    pub fn holds(&self, ino: Ino, gen: u64) -> bool {
        self.0.binary_search(&(ino, gen)).is_ok()
    }

    /// Whether any generation of `ino` is in use: the kernel or a handle still holds the inode.
    pub fn holds_inode(&self, ino: Ino) -> bool {
        self.0.get(self.0.partition_point(|(i, _)| *i < ino)).is_some_and(|(i, _)| *i == ino)
    }
}

#[derive(Debug, Clone, Default)]
pub struct GcReport {
    /// (inode, generation, size) of every generation dropped (or that would be, dry run).
    pub dropped: Vec<(Ino, u64, u64)>,
    pub freed_chunks: u64,
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub files: u64,
    pub generations: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    /// Stored bytes the current generations of named files use.
    pub live_bytes: u64,
    /// Stored bytes only history uses (what thinning could free, at most).
    pub history_bytes: u64,
    pub chunks: u64,
    pub snapshots: u64,
    /// The index's keys and values, and the size of its file.
    pub index_live_bytes: u64,
    pub index_file_bytes: u64,
}

/// Cap on the space old generations may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxSize {
    Bytes(u64),
    Percent(f64),
}

/// A retention policy, in the vocabulary of restic, borg and snapper (docs/xattrs.md).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    pub keep_last: Option<u64>,
    pub keep_within_secs: Option<u64>,
    /// Generations this young are kept even when the disk runs short of space (and by
    /// max-size); nothing else in the policy holds against a full disk.
    pub keep_min_within_secs: Option<u64>,
    pub keep_hourly: Option<u64>,
    pub keep_daily: Option<u64>,
    pub keep_weekly: Option<u64>,
    pub keep_monthly: Option<u64>,
    pub max_size: Option<MaxSize>,
}

/// Where a file's own retention setting is kept (a hidden attribute of the inode).
const RETENTION_XATTR: &[u8] = b"user.genfs.retention";
/// Who set it, when not root: such a policy applies only to files its setter may write.
const RETENTION_SETTER_XATTR: &[u8] = b"user.genfs.retention-setter";
const DAY_SECS: i64 = 86_400;
/// Name-history entries gc drops per journal record (records stay small).
const PRUNE_OPS_PER_RECORD: usize = 1024;

impl Retention {
    pub fn default_policy() -> Retention {
        Retention {
            keep_last: Some(20),
            keep_within_secs: Some(DAY_SECS as u64),
            keep_hourly: Some(168),
            keep_daily: Some(90),
            ..Default::default()
        }
    }
}

impl Retention {
    /// How far back the policy keeps anything: deleted directories and fine-grained time
    /// travel are kept that long.
    fn horizon_secs(&self) -> u64 {
        let day = DAY_SECS as u64;
        [
            self.keep_within_secs,
            self.keep_min_within_secs,
            self.keep_hourly.map(|n| n.saturating_mul(3600)),
            self.keep_daily.map(|n| n.saturating_mul(day)),
            self.keep_weekly.map(|n| n.saturating_mul(7 * day)),
            self.keep_monthly.map(|n| n.saturating_mul(31 * day)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
    }
}

/// Bounds on policy values, far above any real need, so that arithmetic on times and counts
/// cannot overflow: 10,000 years, and a billion generations or periods.
const KEEP_SECS_MAX: u64 = 10_000 * 366 * DAY_SECS as u64;
const KEEP_COUNT_MAX: u64 = 1_000_000_000;

fn parse_duration(v: &str) -> Option<u64> {
    let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&s| s <= KEEP_SECS_MAX)
}

pub(super) fn parse_bytes(v: &str) -> Option<u64> {
    let (num, mult) = match v.char_indices().last()? {
        (i, 'K' | 'k') => (&v[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&v[..i], 1 << 20),
        (i, 'G' | 'g') => (&v[..i], 1 << 30),
        (i, 'T' | 't') => (&v[..i], 1 << 40),
        _ => (v, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

impl FromStr for Retention {
    type Err = String;

    fn from_str(s: &str) -> Result<Retention, String> {
        let mut r = Retention::default();
        let items: Vec<&str> = s.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
        if items.is_empty() {
            // Not "keep nothing": a stray comma must not drop history.
            return Err(format!(
                "`{s}`: no key=value in the policy (to keep nothing, say keep-last=0; to inherit, \
                 set an empty value)"
            ));
        }
        for item in items {
            let (k, v) = item.split_once('=').ok_or_else(|| format!("`{item}`: expected key=value"))?;
            let count = || {
                v.parse::<u64>()
                    .ok()
                    .filter(|&n| n <= KEEP_COUNT_MAX)
                    .ok_or_else(|| format!("`{item}`: {v} is not a count from 0 to {KEEP_COUNT_MAX}"))
            };
            match k {
                "keep-last" => r.keep_last = Some(count()?),
                "keep-hourly" => r.keep_hourly = Some(count()?),
                "keep-daily" => r.keep_daily = Some(count()?),
                "keep-weekly" => r.keep_weekly = Some(count()?),
                "keep-monthly" => r.keep_monthly = Some(count()?),
                "keep-within" | "keep-min-within" => {
                    let secs = Some(parse_duration(v).ok_or_else(|| {
                        format!("`{item}`: durations look like 90s, 30m, 24h, 7d, 2w (at most 10000 years)")
                    })?);
                    match k {
                        "keep-within" => r.keep_within_secs = secs,
                        _ => r.keep_min_within_secs = secs,
                    }
                }
                "max-size" => {
                    r.max_size = Some(match v.strip_suffix('%') {
                        Some(p) => MaxSize::Percent(
                            p.parse::<f64>()
                                .ok()
                                .filter(|p| (0.0..=100.0).contains(p))
                                .ok_or_else(|| format!("`{item}`: a percentage from 0 to 100"))?,
                        ),
                        None => MaxSize::Bytes(
                            parse_bytes(v)
                                .ok_or_else(|| format!("`{item}`: sizes look like 500M, 10G or 5%"))?,
                        ),
                    })
                }
                other => return Err(format!("unknown retention key `{other}`")),
            }
        }
        Ok(r)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let counts = [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
        ];
        for (k, v) in counts {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if let Some(s) = self.keep_within_secs {
            parts.push(format!("keep-within={s}s"));
        }
        if let Some(s) = self.keep_min_within_secs {
            parts.push(format!("keep-min-within={s}s"));
        }
        match self.max_size {
            Some(MaxSize::Bytes(b)) => parts.push(format!("max-size={b}")),
            Some(MaxSize::Percent(p)) => parts.push(format!("max-size={p}%")),
            None => {}
        }
        write!(f, "{}", parts.join(","))
    }
}

/// (year, month) of a day count since the epoch (proleptic Gregorian).
fn year_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month)
}

/// Indices (into `times`, newest first) that the keep rules keep.
/// The generations (indexes into `times`, newest first) a policy keeps. For a file with a
/// name, counts are counts of generations and of periods that have one (restic's meaning).
/// A deleted file gets no more generations, so counts would keep its last ones for ever:
/// for it, keep-last does not apply and keep-hourly=N etc. mean the last N periods before
/// `now`, which lets its history age out like a trash can's.
fn keep_set(policy: &Retention, times: &[Timestamp], now: Timestamp, named: bool) -> BTreeSet<usize> {
    let mut keep = BTreeSet::new();
    if let (Some(n), true) = (policy.keep_last, named) {
        keep.extend(0..(n as usize).min(times.len()));
    }
    for w in [policy.keep_within_secs, policy.keep_min_within_secs].into_iter().flatten() {
        let cutoff = now.secs - w as i64;
        keep.extend(times.iter().enumerate().filter(|(_, t)| t.secs >= cutoff).map(|(i, _)| i));
    }
    type Bucket = fn(i64) -> i64;
    let buckets: [(Option<u64>, Bucket); 4] = [
        (policy.keep_hourly, |s| s.div_euclid(3600)),
        (policy.keep_daily, |s| s.div_euclid(DAY_SECS)),
        (policy.keep_weekly, |s| (s.div_euclid(DAY_SECS) + 3).div_euclid(7)),
        (policy.keep_monthly, |s| {
            let (y, m) = year_month(s.div_euclid(DAY_SECS));
            y * 12 + m as i64
        }),
    ];
    for (limit, bucket) in buckets {
        let Some(limit) = limit else { continue };
        let mut seen = HashSet::new();
        let oldest_bucket = bucket(now.secs) - limit as i64;
        for (i, t) in times.iter().enumerate() {
            if seen.len() as u64 >= limit || (!named && bucket(t.secs) <= oldest_bucket) {
                break;
            }
            if seen.insert(bucket(t.secs)) {
                keep.insert(i);
            }
        }
    }
    keep
}

impl Store {
    /// Rename of file `src` over file `dst`: `dst`'s generations become `src`'s earlier
    /// history, and `src`'s own generations are renumbered to follow them. Returns the ops;
    /// updates `src_inode`.
    pub(crate) fn adopt_history(
        &self,
        src: Ino,
        src_inode: &mut Inode,
        dst: Ino,
        dst_inode: &Inode,
    ) -> StoreResult<Vec<Op>> {
        if src_inode.history.is_some() {
            return Ok(Vec::new());
        }
        let base = dst_inode.last_gen;
        let own = self.index.generations(src)?;
        // All drops first, then the puts: new numbers may collide with old ones.
        let mut ops: Vec<Op> = own.iter().map(|(g, _)| Op::DelGeneration { ino: src, gen: *g }).collect();
        for (g, m) in own {
            ops.push(Op::PutGeneration { ino: src, gen: base + g, manifest: m });
        }
        if src_inode.gen > 0 {
            src_inode.gen += base;
        }
        src_inode.last_gen += base;
        src_inode.history = Some(dst);
        Ok(ops)
    }

    /// Every kept generation of the file, its predecessors' first; oldest first.
    pub fn log(&self, ino: Ino) -> StoreResult<Vec<LogEntry>> {
        let mut out = Vec::new();
        for owner in self.history_chain(ino)?.into_iter().rev() {
            for (gen, manifest) in self.index.generations(owner)? {
                out.push(LogEntry { gen, owner, manifest });
            }
        }
        Ok(out)
    }

    /// The file's log entries numbered below `before` (all if None), newest first, read from
    /// the index lazily: one log page costs the entries it shows, not the whole log.
    pub fn log_newest_first(
        &self,
        ino: Ino,
        before: Option<u64>,
    ) -> StoreResult<impl Iterator<Item = StoreResult<LogEntry>> + '_> {
        let chain = self.history_chain(ino)?;
        Ok(chain.into_iter().flat_map(move |owner| {
            self.index
                .generations_newest_first(owner, before)
                .map(move |item| item.map(|(gen, manifest)| LogEntry { gen, owner, manifest }))
        }))
    }

    /// Whether generation `gen` of `ino` (its owner) is still kept; generation 0 (empty,
    /// never committed) always is.
    pub fn generation_kept(&self, ino: Ino, gen: u64) -> StoreResult<bool> {
        Ok(gen == 0 || self.index.generation(ino, gen)?.is_some())
    }

    /// Generation `gen` of the file's history (its own or a predecessor's).
    pub fn history_generation(&self, ino: Ino, gen: u64) -> StoreResult<Option<(Ino, Manifest)>> {
        let mut at = ino;
        let mut hops = 0;
        loop {
            if let Some(m) = self.index.generation(at, gen)? {
                return Ok(Some((at, m)));
            }
            match self.inode(at)?.history {
                Some(prev) if hops < 1024 => {
                    at = prev;
                    hops += 1;
                }
                _ => return Ok(None),
            }
        }
    }

    /// The generation of `ino` that was current at sequence number `seq` (0: none yet).
    /// NotFound when retention dropped it: the file had content then, which is gone.
    pub fn generation_at(&self, ino: Ino, seq: u64) -> StoreResult<(u64, Manifest)> {
        // Newest first, stopping at the answer: a listing of a view asks this for every file.
        let mut oldest_kept = None;
        for item in self.index.generations_newest_first(ino, None) {
            let (gen, manifest) = item?;
            if manifest.seq <= seq {
                return Ok((gen, manifest));
            }
            oldest_kept = Some(gen);
        }
        // Before its oldest kept generation the file was empty (created, not yet written)
        // if no generation of its own came before that one, or if gc recorded when the first
        // one came and that is after `seq`.
        let inode = self.inode(ino)?;
        let first_own = self.first_own_gen(&inode)?;
        let oldest_kept = oldest_kept.unwrap_or(inode.last_gen + 1);
        let empty_then =
            oldest_kept <= first_own || self.index.first_seq(ino)?.is_some_and(|first| seq < first);
        if !empty_then {
            return Err(StoreError::NotFound);
        }
        Ok((0, Manifest::empty()))
    }

    /// The number of a file's first own generation (after a save by rename, its own numbers
    /// follow its predecessor's).
    fn first_own_gen(&self, inode: &Inode) -> StoreResult<u64> {
        Ok(match inode.history {
            Some(predecessor) => self.inode(predecessor)?.last_gen + 1,
            None => 1,
        })
    }

    pub fn lookup_at(&self, parent: Ino, name: &[u8], seq: u64) -> StoreResult<(Ino, Inode)> {
        let (ino, _) = self.index.lookup_at(parent, name, seq)?.ok_or(StoreError::NotFound)?;
        Ok((ino, self.inode(ino)?))
    }

    pub fn readdir_at(&self, dir: Ino, seq: u64) -> StoreResult<Vec<(Vec<u8>, Ino, Kind)>> {
        self.index.readdir_at(dir, seq)
    }

    pub fn seq_at_time(&self, t: Timestamp) -> StoreResult<u64> {
        self.index.seq_at_time(t)
    }

    pub fn last_seq(&self) -> u64 {
        self.journal.last_seq()
    }

    /// The sequence number through which the journal is on stable storage.
    pub fn durable_seq(&self) -> u64 {
        self.journal.durable_seq()
    }

    pub fn snapshots(&self) -> StoreResult<Vec<(Vec<u8>, Snapshot)>> {
        self.index.snapshots()
    }

    /// A named snapshot of the whole tree: one record, whatever the size of the tree.
    pub fn snapshot_create(&self, name: &[u8]) -> StoreResult<u64> {
        super::validate_name(name)?;
        // Listings are one name a line, fields split by TAB: control characters would break them.
        if name.iter().any(|b| b.is_ascii_control()) {
            return Err(StoreError::InvalidName);
        }
        let _ns = self.ns_lock.lock();
        if self.index.snapshots()?.iter().any(|(n, _)| n == name) {
            return Err(StoreError::Exists);
        }
        drop(_ns);
        // The commit just before it must be durable as well: a snapshot is durable at once.
        let seq = self.mutate(vec![Op::PutSnapshot { name: name.to_vec() }])?;
        self.sync()?;
        Ok(seq)
    }

    pub fn snapshot_delete(&self, name: &[u8]) -> StoreResult<()> {
        if !self.index.snapshots()?.iter().any(|(n, _)| n == name) {
            return Err(StoreError::NotFound);
        }
        self.mutate(vec![Op::DelSnapshot { name: name.to_vec() }])?;
        self.sync()
    }

    /// Commits a new generation equal to generation `gen` (history is kept).
    pub fn restore(&self, ino: Ino, gen: u64) -> StoreResult<Inode> {
        let (_, manifest) = self.history_generation(ino, gen)?.ok_or(StoreError::NotFound)?;
        let mut draft = Draft::new(ino, gen, &manifest, self.root.join("staging"));
        draft.dirty = true;
        draft.mtime = Timestamp::now();
        self.commit(&mut draft)
    }

    /// The policy that applies to `ino`: its own, else the nearest ancestor's, else the default.
    /// A file or directory without a name inherits from the directory it was removed from. A
    /// policy set by a user other than root is passed over for files that user may not write
    /// (judged by owner and others' bits: the setter's groups are not known here), so no one
    /// shortens the history of others' files.
    pub fn retention_of(&self, ino: Ino) -> StoreResult<Retention> {
        let target = self.inode(ino)?;
        let mut at = ino;
        for _ in 0..4096 {
            let setter = self.index.xattr(at, RETENTION_SETTER_XATTR)?;
            let setter: Option<u32> = setter.and_then(|s| String::from_utf8_lossy(&s).parse().ok());
            let applies = setter.is_none_or(|uid| uid == target.uid || target.perm & 0o002 != 0);
            let own = if applies { self.index.xattr(at, RETENTION_XATTR)? } else { None };
            if let Some(text) = own {
                let text = String::from_utf8_lossy(&text);
                if text.trim().is_empty() {
                    // Stored by a build that took a policy of only commas as keep-nothing.
                    return Ok(Retention::default());
                }
                return text.parse().map_err(|e| StoreError::Corrupted(format!("retention of {at}: {e}")));
            }
            if at == super::records::ROOT_INO {
                break;
            }
            at = self.parent_of(at)?;
        }
        Ok(Retention::default_policy())
    }

    /// Sets (or with None clears) the policy of `ino` on behalf of user `setter`; `text` is
    /// checked first. Of the two attributes, the one that narrows the policy's reach is written
    /// first, so a crash between them never widens it.
    pub fn set_retention(&self, ino: Ino, text: Option<&str>, setter: u32) -> StoreResult<()> {
        let remove = |name: &[u8]| self.discard_xattr(ino, name);
        let Some(t) = text else {
            remove(RETENTION_XATTR)?;
            return remove(RETENTION_SETTER_XATTR);
        };
        let policy: Retention = t.parse().map_err(|_| StoreError::InvalidArgument)?;
        let canonical = policy.to_string();
        let set_policy = || self.set_xattr(ino, RETENTION_XATTR, canonical.as_bytes(), super::XattrMode::Any);
        if setter == 0 {
            set_policy()?;
            remove(RETENTION_SETTER_XATTR)
        } else {
            let uid = setter.to_string();
            self.set_xattr(ino, RETENTION_SETTER_XATTR, uid.as_bytes(), super::XattrMode::Any)?;
            set_policy()
        }
    }

    /// Applies retention to every file, then unlinks chunks nothing references any more.
    /// `pinned`: (inode, generation) pairs in use by open files and drafts.
    pub fn gc(&self, pinned: &Pinned, dry_run: bool) -> StoreResult<GcReport> {
        let mut report = GcReport::default();
        let predecessors = self.predecessors()?;
        let snapshot_seqs: Vec<u64> = self.index.snapshots()?.iter().map(|(_, s)| s.seq).collect();
        let capacity = self.statfs().map(|st| st.f_blocks * st.f_frsize).unwrap_or(0);
        let now = Timestamp::now();
        for item in self.index.each_inode() {
            let (ino, inode) = item?;
            if inode.kind != Kind::File || predecessors.contains(&ino) {
                continue;
            }
            let drops = self.gc_plan(ino, &inode, pinned, &snapshot_seqs, capacity, now)?;
            report.dropped.extend(drops.iter().map(|e| (e.owner, e.gen, e.manifest.size)));
            if dry_run {
                continue;
            }
            self.drop_generations(&drops)?;
            if inode.nlink == 0 || inode.history.is_some() {
                self.prune_history_chain(ino, pinned, &snapshot_seqs)?;
            }
        }
        if !dry_run {
            self.prune_removed_nodes(pinned, &snapshot_seqs, now)?;
            self.prune_name_history()?;
            self.thin_time_index(now)?;
        }
        let (chunks, bytes) = self.collect_chunks(dry_run, &report)?;
        report.freed_chunks = chunks;
        report.freed_bytes = bytes;
        if !dry_run {
            self.sync()?;
            self.index.compact_if_bloated(&self.root.join("index"))?;
            if self.index_base_due()? {
                self.checkpoint()?;
                self.write_index_base()?;
            }
        }
        Ok(report)
    }

    /// The inodes whose history another file continues (a rename over them): gc reaches
    /// their generations through that file's log.
    pub(super) fn predecessors(&self) -> StoreResult<HashSet<Ino>> {
        let mut out = HashSet::new();
        for item in self.index.each_inode() {
            out.extend(item?.1.history);
        }
        Ok(out)
    }

    /// `ino` and the files whose history it continues (rename over), newest first.
    fn history_chain(&self, ino: Ino) -> StoreResult<Vec<Ino>> {
        let mut chain = vec![ino];
        let mut seen = HashSet::from([ino]);
        let mut at = self.inode(ino)?;
        while let Some(prev) = at.history {
            if !seen.insert(prev) {
                break;
            }
            chain.push(prev);
            at = self.inode(prev)?;
        }
        Ok(chain)
    }

    /// After gc: removes the inodes at the old end of `ino`'s history chain that no longer
    /// hold a generation (and `ino` itself once it has neither a name nor a generation), so
    /// that deleted and replaced files do not stay in the index for ever.
    /// `in_use`: inodes open or held by the kernel. An inode a snapshot may show (it lost its
    /// last name after the snapshot) stays even without a generation: an empty file has none.
    pub(super) fn prune_history_chain(
        &self,
        ino: Ino,
        in_use: &Pinned,
        snapshot_seqs: &[u64],
    ) -> StoreResult<()> {
        let chain = self.history_chain(ino)?;
        let _locks = self.lock_inodes(&chain);
        if self.history_chain(ino)? != chain {
            return Ok(()); // renamed meanwhile: the next gc will see the new chain
        }
        let mut alive = Vec::with_capacity(chain.len());
        for i in &chain {
            // A predecessor that still has a name (stores of earlier builds adopted the history
            // of hard-linked files) is a file of its own: never removed here.
            let named = self.inode(*i)?.nlink > 0;
            let kept = named || in_use.holds_inode(*i) || !self.index.generations(*i)?.is_empty();
            alive.push(kept || self.a_snapshot_may_show(*i, snapshot_seqs)?);
        }
        let ends_at = alive.iter().rposition(|a| *a);
        let first_dead = ends_at.map_or(0, |k| k + 1);
        if first_dead == chain.len() {
            return Ok(());
        }
        let mut ops = Vec::new();
        if let Some(k) = ends_at {
            let mut last = self.inode(chain[k])?;
            last.history = None;
            ops.push(Op::PutInode { ino: chain[k], inode: last });
        }
        for dead in &chain[first_dead..] {
            ops.push(Op::DelInode { ino: *dead, xattrs: self.index.xattr_names(*dead)? });
        }
        self.mutate(ops).map(|_| ())
    }

    /// Whether a snapshot was taken while `ino`, which has no name now, had one: before it
    /// lost its last name (recorded when it happened; if not recorded, no snapshot is assumed
    /// to show it) and not before it was created (by its birth time, with a margin for the
    /// clock, erring towards keeping).
    fn a_snapshot_may_show(&self, ino: Ino, snapshot_seqs: &[u64]) -> StoreResult<bool> {
        const CLOCK_MARGIN_NANOS: i128 = 10_000_000;
        if snapshot_seqs.is_empty() {
            return Ok(false);
        }
        let nanos = |t: Timestamp| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
        let removed_at = self.index.last_name(ino)?.map_or(0, |(_, seq)| seq);
        let born = nanos(self.inode(ino)?.crtime) - CLOCK_MARGIN_NANOS;
        Ok(self.index.snapshots()?.iter().any(|(_, s)| s.seq < removed_at && nanos(s.time) >= born))
    }

    /// Removes directories, symbolic links and special files that lost their last name longer
    /// ago than their policy looks back, unless a snapshot may show them or the kernel holds
    /// them (`in_use`). Deleted files go through their history chain instead.
    fn prune_removed_nodes(&self, in_use: &Pinned, snapshot_seqs: &[u64], now: Timestamp) -> StoreResult<()> {
        let mut ops = Vec::new();
        for item in self.index.each_inode() {
            let (ino, inode) = item?;
            if inode.kind == Kind::File
                || inode.nlink > 0
                || ino == super::records::ROOT_INO
                || in_use.holds_inode(ino)
            {
                continue;
            }
            if self.a_snapshot_may_show(ino, snapshot_seqs)? {
                continue;
            }
            let removed_at = self.index.last_name(ino)?.map_or(0, |(_, seq)| seq);
            let horizon = self.retention_of(ino)?.horizon_secs() as i64;
            let cutoff =
                self.index.seq_at_time(Timestamp { secs: now.secs.saturating_sub(horizon), nanos: 0 })?;
            if removed_at > cutoff {
                continue;
            }
            ops.push(Op::DelInode { ino, xattrs: self.index.xattr_names(ino)? });
            if ops.len() >= PRUNE_OPS_PER_RECORD {
                self.mutate(std::mem::take(&mut ops))?;
            }
        }
        if !ops.is_empty() {
            self.mutate(ops)?;
        }
        Ok(())
    }

    /// Coarsens the time index where the root's policy no longer looks closely: every second
    /// within keep-within (an hour if none), the last instant of each hour within the policy's
    /// horizon, the last of each day beyond it.
    fn thin_time_index(&self, now: Timestamp) -> StoreResult<()> {
        let policy = self.retention_of(super::records::ROOT_INO)?;
        let fine = policy.keep_within_secs.unwrap_or(3600) as i64;
        let hourly = (policy.horizon_secs() as i64).max(fine);
        let granularity = |secs: u64| -> u64 {
            match now.secs.saturating_sub(secs as i64) {
                age if age <= fine => 1,
                age if age <= hourly => 3600,
                _ => DAY_SECS as u64,
            }
        };
        let secs = self.index.time_index_secs()?;
        let mut drop = Vec::new();
        for pair in secs.windows(2) {
            let g = granularity(pair[0]);
            if g > 1 && pair[0] / g == pair[1] / g {
                drop.push(pair[0]); // a later instant of the same bucket stays
            }
        }
        for batch in drop.chunks(PRUNE_OPS_PER_RECORD) {
            self.mutate(vec![Op::ThinTimeIndex { secs: batch.to_vec() }])?;
        }
        Ok(())
    }

    /// Drops the time-travel entries of names whose inode gc removed: an entry naming a gone
    /// inode becomes a gap ("no such name then"), or goes when the entry before it is a gap
    /// too (or there is none), so the history of a name shrinks with what it named.
    pub(super) fn prune_name_history(&self) -> StoreResult<()> {
        let mut ops = Vec::new();
        let mut previous: Option<(Ino, Vec<u8>, bool)> = None; // (parent, name, was a gap)
                                                               // Names come grouped by directory: one remembered parent saves most lookups, where a
                                                               // map of every inode seen would cost tens of MiB at a million files.
        let mut parent_seen: Option<(Ino, bool)> = None; // (parent, gone)
        let is_gone = |ino: Ino| -> StoreResult<bool> { Ok(self.index.inode(ino)?.is_none()) };
        for entry in self.index.each_name_history() {
            let (parent, name, seq, target) = entry?;
            let parent_gone = match parent_seen {
                Some((p, gone)) if p == parent => gone,
                _ => {
                    let gone = is_gone(parent)?;
                    parent_seen = Some((parent, gone));
                    gone
                }
            };
            if parent_gone {
                // The directory itself is gone: nothing can look up names in it any more.
                ops.push(Op::PruneNameHistory { parent, name, seq, gap: false });
                previous = None;
                if ops.len() >= PRUNE_OPS_PER_RECORD {
                    self.mutate(std::mem::take(&mut ops))?;
                }
                continue;
            }
            let dead = match target {
                Some((ino, _)) => is_gone(ino)?,
                None => false,
            };
            let same_name = previous.as_ref().is_some_and(|(p, n, _)| *p == parent && *n == name);
            let after_gap = !same_name || previous.as_ref().is_some_and(|(_, _, gap)| *gap);
            let gap = target.is_none() || dead;
            if gap && after_gap {
                ops.push(Op::PruneNameHistory { parent, name: name.clone(), seq, gap: false });
            } else if dead {
                ops.push(Op::PruneNameHistory { parent, name: name.clone(), seq, gap: true });
            }
            previous = Some((parent, name, gap));
            if ops.len() >= PRUNE_OPS_PER_RECORD {
                self.mutate(std::mem::take(&mut ops))?;
            }
        }
        if !ops.is_empty() {
            self.mutate(ops)?;
        }
        Ok(())
    }

    /// The file's log, newest first, and which of its entries nothing may drop: the current
    /// generation, generations in use (`pinned`), and the one each snapshot shows.
    pub(super) fn protected_log(
        &self,
        ino: Ino,
        inode: &Inode,
        pinned: &Pinned,
        snapshot_seqs: &[u64],
    ) -> StoreResult<(Vec<LogEntry>, BTreeSet<usize>)> {
        let mut log = self.log(ino)?;
        log.reverse();
        // Until which sequence number each inode of the chain had a name (snapshots after
        // that do not show it); unknown: for ever.
        let mut named_until: HashMap<Ino, u64> = HashMap::new();
        for e in &log {
            if let std::collections::hash_map::Entry::Vacant(slot) = named_until.entry(e.owner) {
                let lost = match self.inode(e.owner)?.nlink {
                    0 => self.index.last_name(e.owner)?.map(|(_, seq)| seq),
                    _ => None,
                };
                slot.insert(lost.unwrap_or(u64::MAX));
            }
        }
        let mut must: BTreeSet<usize> = BTreeSet::new();
        // The current generation of every inode of the chain that has a name: the file's own,
        // and a predecessor's that is still a file of its own (see `prune_history_chain`).
        let mut current_of: HashMap<Ino, Option<u64>> = HashMap::new();
        for e in &log {
            if let std::collections::hash_map::Entry::Vacant(slot) = current_of.entry(e.owner) {
                let owner = if e.owner == ino { inode.clone() } else { self.inode(e.owner)? };
                slot.insert((owner.nlink > 0).then_some(owner.gen));
            }
        }
        for (i, e) in log.iter().enumerate() {
            let current = current_of.get(&e.owner).copied().flatten() == Some(e.gen);
            let until = named_until.get(&e.owner).copied().unwrap_or(u64::MAX);
            let in_snapshot = snapshot_seqs.iter().any(|s| {
                e.manifest.seq <= *s
                    && *s < until
                    && log[..i].iter().all(|newer| newer.manifest.seq > *s || newer.owner != e.owner)
            });
            if current || pinned.holds(e.owner, e.gen) || in_snapshot {
                must.insert(i);
            }
        }
        Ok((log, must))
    }

    /// The generations of one file's log that its policy drops.
    fn gc_plan(
        &self,
        ino: Ino,
        inode: &Inode,
        pinned: &Pinned,
        snapshot_seqs: &[u64],
        capacity: u64,
        now: Timestamp,
    ) -> StoreResult<Vec<LogEntry>> {
        let policy = self.retention_of(ino)?;
        let (log, must) = self.protected_log(ino, inode, pinned, snapshot_seqs)?;
        let times: Vec<Timestamp> = log.iter().map(|e| e.manifest.committed).collect();
        let mut keep = keep_set(&policy, &times, now, inode.nlink > 0);
        if let Some(cap) = policy.max_size {
            let cap = match cap {
                MaxSize::Bytes(b) => b,
                MaxSize::Percent(p) => (capacity as f64 * p / 100.0) as u64,
            };
            // Oldest kept generations go first until the history fits; keep-min-within holds.
            let min_cutoff = policy.keep_min_within_secs.map(|w| now.secs - w as i64);
            let droppable = |i: &usize| !must.contains(i) && min_cutoff.is_none_or(|c| times[*i].secs < c);
            let history = |keep: &BTreeSet<usize>| -> u64 {
                keep.iter().filter(|i| !must.contains(i)).map(|i| log[*i].manifest.size).sum()
            };
            while history(&keep) > cap {
                let Some(oldest) = keep.iter().rev().find(|i| droppable(i)).copied() else { break };
                keep.remove(&oldest);
            }
        }
        keep.extend(must);
        Ok(log.into_iter().enumerate().filter(|(i, _)| !keep.contains(i)).map(|(_, e)| e).collect())
    }

    /// Drops generations of one file's log in one record.
    pub(super) fn drop_generations(&self, drops: &[LogEntry]) -> StoreResult<()> {
        if drops.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        for e in drops {
            ops.push(Op::DelGeneration { ino: e.owner, gen: e.gen });
            // Time travel must still tell "empty then" from "dropped since".
            if e.gen == self.first_own_gen(&self.inode(e.owner)?)? {
                let value = e.manifest.seq.to_le_bytes().to_vec();
                ops.push(Op::PutXattr { ino: e.owner, name: FIRST_SEQ_XATTR.to_vec(), value });
            }
        }
        self.mutate(ops).map(|_| ())
    }

    /// Unlinks chunk files whose reference count is zero. Commits hold the gc lock shared from
    /// sealing to applying, so no commit can be about to reference a chunk removed here.
    pub(super) fn collect_chunks(&self, dry_run: bool, report: &GcReport) -> StoreResult<(u64, u64)> {
        let _gc = self.chunk_gc.write();
        let mut counts: HashMap<Hash, (u64, u32)> =
            self.index.chunks()?.into_iter().map(|(h, c, l)| (h, (c, l))).collect();
        if dry_run {
            // What the planned drops would free.
            for (owner, gen, _) in &report.dropped {
                if let Some(m) = self.index.generation(*owner, *gen)? {
                    for c in m.chunk_refs() {
                        if let Some(entry) = counts.get_mut(&c.hash) {
                            entry.0 = entry.0.saturating_sub(1);
                        }
                    }
                }
            }
        }
        let garbage: Vec<(Hash, u32)> =
            counts.into_iter().filter(|(_, (c, _))| *c == 0).map(|(h, (_, l))| (h, l)).collect();
        let bytes = garbage.iter().map(|(_, l)| *l as u64).sum();
        if dry_run || garbage.is_empty() {
            return Ok((garbage.len() as u64, bytes));
        }
        // The records that dropped these chunks' last references must be durable before the
        // chunks go: otherwise a crash brings back generations whose data is gone.
        if !super::commit::sabotage::skip_gc_journal_sync() {
            self.sync()?;
        }
        for (hash, _) in &garbage {
            let path = self.chunks.path(hash);
            match self.io.unlink(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("remove chunk {}", path.display()), e)),
            }
            self.chunks.forget(hash);
        }
        self.mutate(garbage.iter().map(|(hash, _)| Op::DropChunk { hash: *hash }).collect())?;
        Ok((garbage.len() as u64, bytes))
    }

    pub fn stats(&self) -> StoreResult<Stats> {
        let mut s = Stats::default();
        let mut live = HashSet::new();
        for item in self.index.each_inode() {
            let (ino, inode) = item?;
            let named_file = inode.kind == Kind::File && inode.nlink > 0;
            if named_file {
                s.files += 1;
            }
            for (gen, m) in self.index.generations(ino)? {
                s.generations += 1;
                s.logical_bytes += m.size;
                if named_file && gen == inode.gen {
                    live.extend(m.chunk_refs().map(|c| c.hash));
                }
            }
        }
        for (hash, count, len) in self.index.chunks()? {
            if count > 0 {
                s.chunks += 1;
                s.stored_bytes += len as u64;
                if live.contains(&hash) {
                    s.live_bytes += len as u64;
                }
            }
        }
        s.history_bytes = s.stored_bytes - s.live_bytes;
        s.snapshots = self.index.snapshots()?.len() as u64;
        (s.index_live_bytes, s.index_file_bytes) = self.index.sizes(&self.root.join("index"))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_text_round_trips_and_rejects_nonsense() {
        let r: Retention =
            "keep-last=5,keep-within=24h,keep-daily=30,max-size=10%,keep-min-within=1h".parse().unwrap();
        assert_eq!(r.keep_last, Some(5));
        assert_eq!(r.keep_within_secs, Some(86_400));
        assert_eq!(r.keep_min_within_secs, Some(3600));
        assert_eq!(r.max_size, Some(MaxSize::Percent(10.0)));
        assert_eq!(r.to_string().parse::<Retention>().unwrap(), r);
        assert!("keep-forever=1".parse::<Retention>().is_err());
        assert!("keep-last=many".parse::<Retention>().is_err());
        assert!("max-size=120%".parse::<Retention>().is_err());
        assert_eq!("max-size=2G".parse::<Retention>().unwrap().max_size, Some(MaxSize::Bytes(2 << 30)));
        // Values whose arithmetic would overflow, and a policy of nothing but commas.
        for bad in [
            "keep-within=9223372036854775808s",
            "keep-within=99999999999w",
            "keep-monthly=9223372036854775808",
            ",",
            " , ,",
        ] {
            assert!(bad.parse::<Retention>().is_err(), "{bad}");
        }
        assert!("keep-within=100w,keep-monthly=1200".parse::<Retention>().is_ok());
    }

    #[test]
    fn keep_rules_pick_the_newest_per_bucket() {
        let now = Timestamp { secs: 10 * DAY_SECS + DAY_SECS / 2, nanos: 0 };
        // Newest first: 3 in the last hour, then one per day going back.
        let mut times = vec![
            now,
            Timestamp { secs: now.secs - 60, nanos: 0 },
            Timestamp { secs: now.secs - 120, nanos: 0 },
        ];
        times.extend((1..6).map(|d| Timestamp { secs: now.secs - d * DAY_SECS, nanos: 0 }));
        let last2 = Retention { keep_last: Some(2), ..Default::default() };
        assert_eq!(keep_set(&last2, &times, now, true), BTreeSet::from([0, 1]));
        let daily3 = Retention { keep_daily: Some(3), ..Default::default() };
        assert_eq!(keep_set(&daily3, &times, now, true), BTreeSet::from([0, 3, 4]));
        // Deleted: keep-last keeps nothing; keep-daily=3 keeps today, yesterday and the day
        // before (the newest of each), not the 3 newest days that have a generation.
        assert_eq!(keep_set(&last2, &times, now, false), BTreeSet::new());
        assert_eq!(keep_set(&daily3, &times, now, false), BTreeSet::from([0, 3, 4]));
        let later = Timestamp { secs: now.secs + 2 * DAY_SECS, nanos: 0 };
        assert_eq!(keep_set(&daily3, &times, later, true), BTreeSet::from([0, 3, 4]));
        assert_eq!(keep_set(&daily3, &times, later, false), BTreeSet::from([0]));
        assert_eq!(year_month(0), (1970, 1));
        assert_eq!(year_month(31), (1970, 2));
    }
}
