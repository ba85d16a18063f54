//! Space: the reserve that keeps the journal writable, and the free-space floor that history
//! yields to. Below the floor, the oldest history nothing protects is dropped (thinning), in
//! the background and, when a write would get ENOSPC, before that write is refused.

use super::error::{StoreError, StoreResult};
use super::records::{Ino, Kind, Timestamp, ROOT_INO};
use super::versions::{GcReport, LogEntry, Pinned};
use super::Store;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Where the store's floor is kept when set (a hidden attribute of the root).
const FREE_FLOOR_XATTR: &[u8] = b"user.genfs.free-floor";
/// How often a write's check of the free space asks the filesystem again.
const FREE_SPACE_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The free space history yields to: thinning keeps at least this much of the store's
/// filesystem free while history can be dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FreeFloor {
    Bytes(u64),
    Percent(f64),
}

impl FreeFloor {
    /// 10 % of the filesystem, as snapper's FREE_LIMIT (20 %) but leaving more for history.
    pub const DEFAULT: FreeFloor = FreeFloor::Percent(10.0);

    fn bytes(self, fs_size: u64) -> u64 {
        match self {
            FreeFloor::Bytes(b) => b,
            FreeFloor::Percent(p) => (fs_size as f64 * p / 100.0) as u64,
        }
    }
}

impl FromStr for FreeFloor {
    type Err = String;

    fn from_str(s: &str) -> Result<FreeFloor, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return p
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=90.0).contains(p))
                .map(FreeFloor::Percent)
                .ok_or_else(|| format!("`{s}`: a percentage from 0 to 90"));
        }
        super::versions::parse_bytes(s)
            .map(FreeFloor::Bytes)
            .ok_or_else(|| format!("`{s}`: a floor looks like 10%, 500M or 2G"))
    }
}

impl fmt::Display for FreeFloor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // In the unit it was most likely given in: 2G, not 2147483648.
            FreeFloor::Bytes(b) => match [(40, 'T'), (30, 'G'), (20, 'M'), (10, 'K')]
                .into_iter()
                .find(|(shift, _)| *b > 0 && b % (1u64 << shift) == 0)
            {
                Some((shift, unit)) => write!(f, "{}{unit}", b >> shift),
                None => write!(f, "{b}"),
            },
            FreeFloor::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The store's filesystem as thinning sees it.
#[derive(Debug, Clone, Copy)]
pub struct SpaceStatus {
    pub fs_bytes: u64,
    /// Free to unprivileged writers (f_bavail).
    pub free_bytes: u64,
    pub floor: FreeFloor,
    /// The floor in bytes; never below the reserve.
    pub floor_bytes: u64,
    /// Kept for journal records and index updates: new data is refused below it.
    pub reserve_bytes: u64,
}

impl SpaceStatus {
    /// Bytes to free so that `extra` more still leaves the floor free.
    pub fn shortfall(&self, extra: u64) -> u64 {
        (self.floor_bytes + extra).saturating_sub(self.free_bytes)
    }
}

/// 5 % of the filesystem, 4 MiB to 256 MiB: enough for the records that cannot be refused.
fn reserve_bytes(fs_bytes: u64) -> u64 {
    (fs_bytes / 20).clamp(4 << 20, 256 << 20)
}

impl Store {
    /// statvfs of the filesystem that holds the store.
    pub fn statfs(&self) -> StoreResult<libc::statvfs> {
        let path = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())
            .map_err(|_| StoreError::InvalidArgument)?;
        // SAFETY: statvfs is plain data; all zeroes is a valid value of it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a valid C string and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(StoreError::io("statvfs", std::io::Error::last_os_error()));
        }
        Ok(st)
    }

    /// Refuses new data (ENOSPC) once the store's filesystem is down to its reserve, so that
    /// journal records and index updates, which cannot be refused without turning the store
    /// read-only (G5), still fit. The caller thins history and asks again before it gives up.
    pub fn ensure_space(&self, bytes: u64) -> StoreResult<()> {
        let mut cached = self.free_space.lock();
        let (measured, free) = *cached;
        if measured.elapsed() > FREE_SPACE_RECHECK || free < bytes + (64 << 20) {
            let st = self.statfs()?;
            let fs_bytes = st.f_blocks * st.f_frsize;
            *cached = (
                std::time::Instant::now(),
                (st.f_bavail * st.f_frsize).saturating_sub(reserve_bytes(fs_bytes)),
            );
        }
        if cached.1 < bytes {
            return Err(StoreError::io("store full", std::io::Error::from_raw_os_error(libc::ENOSPC)));
        }
        cached.1 -= bytes;
        Ok(())
    }

    /// The store's floor: its own setting, else the default.
    pub fn free_floor(&self) -> StoreResult<FreeFloor> {
        match self.index.xattr(ROOT_INO, FREE_FLOOR_XATTR)? {
            Some(text) => String::from_utf8_lossy(&text)
                .parse()
                .map_err(|e| StoreError::Corrupted(format!("free-space floor: {e}"))),
            None => Ok(FreeFloor::DEFAULT),
        }
    }

    /// Sets the floor (checked first), or with None goes back to the default.
    pub fn set_free_floor(&self, text: Option<&str>) -> StoreResult<()> {
        match text {
            None => self.discard_xattr(ROOT_INO, FREE_FLOOR_XATTR),
            Some(t) => {
                let floor: FreeFloor = t.parse().map_err(|_| StoreError::InvalidArgument)?;
                let canonical = floor.to_string();
                self.set_xattr(ROOT_INO, FREE_FLOOR_XATTR, canonical.as_bytes(), super::XattrMode::Any)
            }
        }
    }

    pub fn space_status(&self) -> StoreResult<SpaceStatus> {
        let st = self.statfs()?;
        let fs_bytes = st.f_blocks * st.f_frsize;
        let floor = self.free_floor()?;
        let reserve = reserve_bytes(fs_bytes);
        Ok(SpaceStatus {
            fs_bytes,
            free_bytes: st.f_bavail * st.f_frsize,
            floor,
            floor_bytes: floor.bytes(fs_bytes).max(reserve),
            reserve_bytes: reserve,
        })
    }

    /// Drops the oldest history nothing protects until `need` bytes of chunks are freed, or
    /// nothing droppable is left. Protected: current generations, those in use (`pinned`),
    /// those a snapshot shows, and those younger than their policy's keep-min-within.
    pub fn thin_for_space(&self, pinned: &Pinned, need: u64) -> StoreResult<GcReport> {
        let mut report = GcReport::default();
        let predecessors = self.predecessors()?;
        let snapshot_seqs: Vec<u64> = self.index.snapshots()?.iter().map(|(_, s)| s.seq).collect();
        let now = Timestamp::now();
        // (committed, file, entry) of every generation thinning may drop.
        let mut candidates: Vec<(Timestamp, Ino, LogEntry)> = Vec::new();
        for item in self.index.each_inode() {
            let (ino, inode) = item?;
            if inode.kind != Kind::File || predecessors.contains(&ino) {
                continue;
            }
            let min_cutoff = self.retention_of(ino)?.keep_min_within_secs.map(|w| now.secs - w as i64);
            let (log, must) = self.protected_log(ino, &inode, pinned, &snapshot_seqs)?;
            for (i, e) in log.into_iter().enumerate() {
                let young = min_cutoff.is_some_and(|c| e.manifest.committed.secs >= c);
                if !must.contains(&i) && !young {
                    candidates.push((e.manifest.committed, ino, e));
                }
            }
        }
        candidates.sort_by_key(|(t, _, e)| (*t, e.gen));
        // Oldest first, until the chunks whose last reference goes add up to `need`.
        let mut counts: HashMap<_, (u64, u32)> =
            self.index.chunks()?.into_iter().map(|(h, c, l)| (h, (c, l))).collect();
        let mut freed = 0u64;
        let mut chosen: HashMap<Ino, Vec<LogEntry>> = HashMap::new();
        for (_, ino, e) in candidates {
            if freed >= need {
                break;
            }
            for c in e.manifest.chunk_refs() {
                if let Some(entry) = counts.get_mut(&c.hash) {
                    entry.0 = entry.0.saturating_sub(1);
                    if entry.0 == 0 {
                        freed += u64::from(entry.1);
                    }
                }
            }
            report.dropped.push((e.owner, e.gen, e.manifest.size));
            chosen.entry(ino).or_default().push(e);
        }
        for (ino, drops) in &chosen {
            self.drop_generations(drops)?;
            let inode = self.inode(*ino)?;
            if inode.nlink == 0 || inode.history.is_some() {
                self.prune_history_chain(*ino, pinned, &snapshot_seqs)?;
            }
        }
        if !chosen.is_empty() {
            self.prune_name_history()?;
        }
        let (chunks, bytes) = self.collect_chunks(false, &report)?;
        report.freed_chunks = chunks;
        report.freed_bytes = bytes;
        if !chosen.is_empty() {
            self.sync()?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_parse_and_print() {
        assert_eq!("10%".parse::<FreeFloor>().unwrap(), FreeFloor::Percent(10.0));
        assert_eq!("2G".parse::<FreeFloor>().unwrap(), FreeFloor::Bytes(2 << 30));
        assert_eq!(
            FreeFloor::Percent(2.5).to_string().parse::<FreeFloor>().unwrap(),
            FreeFloor::Percent(2.5)
        );
        for bad in ["", "95%", "-1%", "lots", "5X"] {
            assert!(bad.parse::<FreeFloor>().is_err(), "{bad}");
        }
        assert_eq!(FreeFloor::Percent(10.0).bytes(1000), 100);
        assert_eq!(FreeFloor::Bytes(2 << 30).to_string(), "2G");
        assert_eq!(FreeFloor::Bytes(1000).to_string(), "1000");
    }
}
