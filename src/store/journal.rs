//! The commit journal: append-only segments of checksummed records. It owns durability: a
//! change is acknowledged only after its record is fdatasync'd, and concurrent committers share
//! one fdatasync (group commit). After a failed write or sync the journal refuses all further
//! appends (G5): the kernel may have dropped the dirty pages, so a retried sync could lie.
//!
//! Frame: `len u32 LE | crc32 u32 LE | postcard(Record)`. Segments are named by the sequence
//! number of their first record. `checkpoint` holds the sequence number up to which the index
//! is durable; segments entirely at or below it are deleted.
//!
//! Lock order: `sync_lock` before `state`, everywhere; nothing takes `sync_lock` while it
//! holds `state`. (An append that rotated took `sync_lock` under `state` while a group sync
//! held `sync_lock` and waited for `state`: both, and every later commit, waited for good.)
//! Rotation needs no `sync_lock`: it syncs the old segment itself before switching, and
//! `durable_seq` only ever rises (`fetch_max`), whichever sync finishes first.

use super::error::{StoreError, StoreResult};
use super::io::StoreIo;
use super::records::{Op, Record};
use parking_lot::Mutex;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const FRAME_HEADER_BYTES: usize = 8;
pub const RECORD_BYTES_MAX: usize = 256 << 20;
const SEGMENT_BYTES_TARGET: u64 = 64 << 20;
const CHECKPOINT_FILE: &str = "checkpoint";
/// Written when a journal write or sync fails: records after this sequence number were never
/// acknowledged as durable and may belong to failed commits, so open discards them (G5).
const VALID_THROUGH_FILE: &str = "valid-through";
/// Records appended whose index update then failed: their operation reported an error, so open
/// never replays them (G5). Removed once a checkpoint covers them.
const ABANDONED_FILE: &str = "abandoned";

struct Segment {
    start_seq: u64,
    path: PathBuf,
}

struct AppendState {
    file: Arc<File>,
    offset: u64,
    next_seq: u64,
    segments: Vec<Segment>,
    /// Appended records not yet applied to the index; bounds the checkpoint.
    unapplied: BTreeSet<u64>,
}

pub struct Journal {
    dir: PathBuf,
    io: Arc<dyn StoreIo>,
    state: Mutex<AppendState>,
    sync_lock: Mutex<()>,
    durable_seq: AtomicU64,
    /// Where a segment ends and the next begins (tests make it small to rotate often).
    segment_bytes_target: AtomicU64,
    /// What `ABANDONED_FILE` holds.
    abandoned: Mutex<BTreeSet<u64>>,
    failed: AtomicBool,
    /// The index base's sequence number: records after it stay, checkpointed or not, so the
    /// index can be rebuilt (u64::MAX: no base, records go once a checkpoint covers them).
    base_seq: AtomicU64,
}

/// What opening the journal found: records to replay and where the index checkpoint was.
pub struct Replay {
    pub checkpoint_seq: u64,
    pub records: Vec<Record>,
    /// Bytes of a torn or corrupt tail that were cut off (0 after a clean shutdown).
    pub truncated_bytes: u64,
}

fn segment_name(start_seq: u64) -> String {
    format!("{start_seq:020}.log")
}

/// A record as it goes to disk. An encoding failure is an error, never an empty frame: a
/// zero length reads as the end of the journal and would cut every later record.
pub fn encode_frame(record: &Record) -> StoreResult<Vec<u8>> {
    let payload = postcard::to_stdvec(record)
        .map_err(|e| StoreError::Corrupted(format!("cannot encode journal record {}: {e}", record.seq)))?;
    if payload.is_empty() || payload.len() > RECORD_BYTES_MAX {
        return Err(StoreError::FileTooBig);
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Every record of `buf` with the offset just past it, and the length of the valid prefix.
#[cfg(test)]
fn decode_frames(buf: &[u8]) -> StoreResult<(Vec<(Record, usize)>, usize)> {
    let mut records = Vec::new();
    let valid = each_frame(buf, |r, end| {
        records.push((r, end));
        Ok(true)
    })?;
    Ok((records, valid))
}

/// Decodes the frames of `buf` one at a time, handing each record and the offset after it to
/// `each` until it returns false; returns where the valid frames end. A torn or unwritten tail
/// (short, zero length, bad checksum) ends them; a frame whose checksum holds but whose record
/// does not decode is damage, not a torn write, and an error: cutting there would drop every
/// record after it. A record is decoded, used and dropped in turn: reading a segment costs one
/// record's memory, not the segment's.
fn each_frame(buf: &[u8], mut each: impl FnMut(Record, usize) -> StoreResult<bool>) -> StoreResult<usize> {
    let mut pos = 0;
    while pos + FRAME_HEADER_BYTES <= buf.len() {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        let start = pos + FRAME_HEADER_BYTES;
        if len == 0 || len > RECORD_BYTES_MAX || start + len > buf.len() {
            break;
        }
        let payload = &buf[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match postcard::from_bytes::<Record>(payload) {
            Ok(r) => {
                if !each(r.upgraded(), start + len)? {
                    return Ok(pos);
                }
            }
            Err(e) => return Err(StoreError::Corrupted(format!("journal frame at byte {pos}: {e}"))),
        }
        pos = start + len;
    }
    Ok(pos)
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::io(context, e)
}

impl Journal {
    /// Creates an empty journal directory (mkfs).
    pub fn create(dir: &Path, io: &dyn StoreIo) -> StoreResult<()> {
        let path = dir.join(segment_name(1));
        let f = io.create_new(&path, 0o600).map_err(io_err(format!("create {}", path.display())))?;
        io.sync_data(&f).map_err(io_err(format!("fsync {}", path.display())))?;
        write_marker(dir, io, CHECKPOINT_FILE, 0)?;
        Ok(())
    }

    /// Opens the journal, reads every record after the checkpoint and cuts a torn tail (and
    /// whatever a recorded failure left in doubt).
    pub fn open(dir: &Path, io: Arc<dyn StoreIo>) -> StoreResult<(Journal, Replay)> {
        let checkpoint_seq = read_marker(&dir.join(CHECKPOINT_FILE))?.unwrap_or(0);
        let valid_through = read_marker(&dir.join(VALID_THROUGH_FILE))?.unwrap_or(u64::MAX);
        let abandoned: BTreeSet<u64> =
            read_seqs(&dir.join(ABANDONED_FILE))?.unwrap_or_default().into_iter().collect();
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            return Err(StoreError::Corrupted(format!("no journal segment in {}", dir.display())));
        }
        let mut records = Vec::new();
        let mut truncated_bytes = 0;
        let mut next_seq = segments[0].start_seq;
        let mut cut: Option<(usize, u64)> = None;
        for (i, seg) in segments.iter().enumerate() {
            let buf = std::fs::read(&seg.path).map_err(io_err(format!("read {}", seg.path.display())))?;
            let mut start_of_record = 0;
            let mut past_valid_through = false;
            let frames_end = each_frame(&buf, |r, end| {
                // Gaps are allowed only below the checkpoint (after damage there, numbering
                // resumed above it).
                if r.seq != next_seq && !(r.seq > next_seq && r.seq <= checkpoint_seq + 1) {
                    return Err(StoreError::Corrupted(format!(
                        "expected record {next_seq}, found {}",
                        r.seq
                    )));
                }
                if r.seq > valid_through {
                    past_valid_through = true;
                    return Ok(false);
                }
                next_seq = r.seq + 1;
                if r.seq > checkpoint_seq && !abandoned.contains(&r.seq) {
                    records.push(r);
                }
                start_of_record = end;
                Ok(true)
            })
            .map_err(|e| match e {
                StoreError::Corrupted(what) => {
                    StoreError::Corrupted(format!("journal {}: {what}", seg.path.display()))
                }
                other => other,
            })?;
            let valid = if past_valid_through { start_of_record } else { frames_end };
            if valid < buf.len() {
                truncated_bytes += (buf.len() - valid) as u64;
                cut = Some((i, valid as u64));
                break;
            }
        }
        if let Some((i, offset)) = cut {
            for seg in segments.drain(i + 1..) {
                io.unlink(&seg.path).map_err(io_err(format!("remove {}", seg.path.display())))?;
            }
            let tail = &segments[i].path;
            let file = io.open_rw(tail).map_err(io_err(format!("open {}", tail.display())))?;
            io.set_len(&file, offset).map_err(io_err(format!("truncate {}", tail.display())))?;
            io.sync_data(&file).map_err(io_err(format!("fsync {}", tail.display())))?;
            io.sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))?;
        }
        if valid_through != u64::MAX {
            let marker = dir.join(VALID_THROUGH_FILE);
            io.unlink(&marker).map_err(io_err(format!("remove {}", marker.display())))?;
            io.sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))?;
        }
        // Never number a new record at or below the checkpoint.
        next_seq = next_seq.max(checkpoint_seq + 1);
        let tail = &segments[segments.len() - 1].path;
        let file = io.open_rw(tail).map_err(io_err(format!("open {}", tail.display())))?;
        let tail_offset = file.metadata().map_err(io_err(format!("stat {}", tail.display())))?.len();
        // What was read may still be only in the page cache (the daemon was killed before it
        // synced): make it durable before counting it as durable, or the checkpoint that
        // follows replay would make the index durable ahead of the journal.
        io.sync_data(&file).map_err(io_err(format!("fdatasync {}", tail.display())))?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            io,
            state: Mutex::new(AppendState {
                file: Arc::new(file),
                offset: tail_offset,
                next_seq,
                segments,
                unapplied: BTreeSet::new(),
            }),
            sync_lock: Mutex::new(()),
            durable_seq: AtomicU64::new(next_seq - 1),
            segment_bytes_target: AtomicU64::new(SEGMENT_BYTES_TARGET),
            abandoned: Mutex::new(abandoned),
            failed: AtomicBool::new(false),
            base_seq: AtomicU64::new(super::base::seq(dir)?.unwrap_or(u64::MAX)),
        };
        Ok((journal, Replay { checkpoint_seq, records, truncated_bytes }))
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Latches the failure (the store turns read-only) and records which records are in
    /// doubt, so that a remount never publishes a commit whose close got the error.
    fn fail(&self, e: StoreError) -> StoreError {
        if !self.failed.swap(true, Ordering::SeqCst) {
            let durable = self.durable_seq.load(Ordering::SeqCst);
            if let Err(m) = write_marker(&self.dir, self.io.as_ref(), VALID_THROUGH_FILE, durable) {
                tracing::error!("cannot record the journal failure point: {m}");
            }
        }
        tracing::error!("journal failed, store is now read-only: {e}");
        e
    }

    /// Appends a record (not yet durable) and returns it with its sequence number. The record
    /// counts as unapplied until [`Journal::applied`] is called for it.
    /// `build` gets the record's sequence number (commits store it in the manifest).
    pub fn append(&self, build: impl FnOnce(u64) -> Vec<Op>) -> StoreResult<Record> {
        if self.has_failed() {
            return Err(StoreError::ReadOnlyAfterIoFailure);
        }
        let mut st = self.state.lock();
        let record =
            Record { seq: st.next_seq, time: super::records::Timestamp::now(), ops: build(st.next_seq) };
        let frame = encode_frame(&record)?;
        if st.offset > 0 && st.offset + frame.len() as u64 > self.segment_bytes_target.load(Ordering::Relaxed)
        {
            self.rotate(&mut st)?;
        }
        let path = self.tail_path(&st);
        if let Err(e) = self.io.write_all_at(&st.file, &frame, st.offset) {
            // A partial frame may be on disk; recovery cuts it (checksum), we stop writing.
            return Err(self.fail(StoreError::io(format!("append to {}", path.display()), e)));
        }
        st.offset += frame.len() as u64;
        st.next_seq += 1;
        invariant!(record.seq > self.durable_seq(), "record {} appended below the durable point", record.seq);
        let fresh = st.unapplied.insert(record.seq);
        invariant!(fresh, "record {} numbered twice", record.seq);
        Ok(record)
    }

    fn tail_path(&self, st: &AppendState) -> PathBuf {
        st.segments.last().map(|s| s.path.clone()).unwrap_or_else(|| self.dir.clone())
    }

    /// Starts a new segment. The old one is synced first, so `durable_seq` stays truthful.
    /// Runs under `state` only (see the lock order above).
    fn rotate(&self, st: &mut AppendState) -> StoreResult<()> {
        let old = self.tail_path(st);
        self.io
            .sync_data(&st.file)
            .map_err(|e| self.fail(StoreError::io(format!("fsync {}", old.display()), e)))?;
        self.durable_seq.fetch_max(st.next_seq - 1, Ordering::SeqCst);
        let path = self.dir.join(segment_name(st.next_seq));
        let file = self
            .io
            .create_new(&path, 0o600)
            .map_err(|e| self.fail(StoreError::io(format!("create {}", path.display()), e)))?;
        self.io
            .sync_dir(&self.dir)
            .map_err(|e| self.fail(StoreError::io(format!("fsync {}", self.dir.display()), e)))?;
        st.file = Arc::new(file);
        st.offset = 0;
        st.segments.push(Segment { start_seq: st.next_seq, path });
        Ok(())
    }

    /// Makes every record up to `seq` durable; concurrent callers share one fdatasync.
    pub fn sync_to(&self, seq: u64) -> StoreResult<()> {
        if self.durable_seq.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        let _sync = self.sync_lock.lock();
        if self.durable_seq.load(Ordering::SeqCst) >= seq {
            return Ok(());
        }
        if self.has_failed() {
            return Err(StoreError::ReadOnlyAfterIoFailure);
        }
        let (file, target, path) = {
            let st = self.state.lock();
            (st.file.clone(), st.next_seq - 1, self.tail_path(&st))
        };
        let synced = match super::commit::sabotage::skip_journal_sync() {
            true => Ok(()),
            false => self.io.sync_data(&file),
        };
        match synced {
            Ok(()) => {
                // A rotation meanwhile may have made more durable already.
                self.durable_seq.fetch_max(target, Ordering::SeqCst);
                Ok(())
            }
            Err(e) => Err(self.fail(StoreError::io(format!("fdatasync {}", path.display()), e))),
        }
    }

    /// Syncs everything appended so far (the periodic namespace sync and fsync of a directory).
    pub fn sync_all(&self) -> StoreResult<()> {
        let last = self.state.lock().next_seq - 1;
        self.sync_to(last)
    }

    pub fn last_seq(&self) -> u64 {
        self.state.lock().next_seq - 1
    }

    /// Numbers new records above `seq`: the index holds records up to it that the journal lost
    /// (in doubt after a failed sync, or never synced before a crash), and a number is never
    /// given twice. The caller checkpoints at `seq` before appending, so that the gap this
    /// leaves in the numbering is below the checkpoint, where replay allows gaps.
    pub fn resume_above(&self, seq: u64) {
        let mut st = self.state.lock();
        if st.next_seq <= seq {
            st.next_seq = seq + 1;
            self.durable_seq.store(seq, Ordering::SeqCst);
        }
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq.load(Ordering::SeqCst)
    }

    /// Segments end after about `bytes` (tests rotate often with a small value).
    #[cfg(test)]
    pub fn set_segment_bytes_target(&self, bytes: u64) {
        self.segment_bytes_target.store(bytes, Ordering::Relaxed);
    }

    /// Record `seq` will never be in the index: its operation failed after it was appended
    /// (the index update failed). Durably noted before the caller reports the error, so a
    /// remount does not publish what failed.
    pub fn abandon(&self, seq: u64) -> StoreResult<()> {
        let mut abandoned = self.abandoned.lock();
        abandoned.insert(seq);
        let seqs: Vec<u64> = abandoned.iter().copied().collect();
        write_seqs(&self.dir, self.io.as_ref(), ABANDONED_FILE, &seqs)
    }

    /// The record is in the index now (or was abandoned after a journal failure).
    pub fn applied(&self, seq: u64) {
        self.state.lock().unapplied.remove(&seq);
    }

    /// Highest sequence number such that it and every earlier record are in the index.
    pub fn applied_watermark(&self) -> u64 {
        let st = self.state.lock();
        match st.unapplied.iter().next() {
            Some(first) => first - 1,
            None => st.next_seq - 1,
        }
    }

    /// Records that the index is durable through `seq` and deletes segments it covers.
    /// The caller has flushed and fsynced the index first.
    pub fn checkpoint(&self, seq: u64) -> StoreResult<()> {
        self.sync_to(seq)?;
        write_marker(&self.dir, self.io.as_ref(), CHECKPOINT_FILE, seq)?;
        {
            // Abandoned records at or below the checkpoint are never replayed anyway.
            let mut abandoned = self.abandoned.lock();
            if !abandoned.is_empty() && abandoned.iter().all(|&a| a <= seq) {
                let path = self.dir.join(ABANDONED_FILE);
                self.io.unlink(&path).map_err(io_err(format!("remove {}", path.display())))?;
                abandoned.clear();
            }
        }
        self.trim(seq)
    }

    /// A new index base holds every record through `seq`: the ones before it may go.
    pub fn set_base(&self, seq: u64) -> StoreResult<()> {
        self.base_seq.store(seq, Ordering::SeqCst);
        self.trim(read_marker(&self.dir.join(CHECKPOINT_FILE))?.unwrap_or(0))
    }

    /// Removes the segments that hold only records at or below both `checkpointed` and the
    /// index base.
    fn trim(&self, checkpointed: u64) -> StoreResult<()> {
        let seq = checkpointed.min(self.base_seq.load(Ordering::SeqCst));
        let doomed: Vec<PathBuf> = {
            let mut st = self.state.lock();
            let mut doomed = Vec::new();
            while st.segments.len() > 1 && st.segments[1].start_seq <= seq + 1 {
                doomed.push(st.segments.remove(0).path);
            }
            doomed
        };
        for path in &doomed {
            self.io.unlink(path).map_err(io_err(format!("remove {}", path.display())))?;
        }
        if !doomed.is_empty() {
            self.io.sync_dir(&self.dir).map_err(io_err(format!("fsync {}", self.dir.display())))?;
        }
        Ok(())
    }
}

/// Hands every record after `after` in the journal at `dir` to `each`, in order, up to a torn
/// tail or a gap (what rebuilding the index replays on top of the base). Returns the last
/// sequence number handed over.
pub fn replay_after(
    dir: &Path,
    after: u64,
    mut each: impl FnMut(Record) -> StoreResult<()>,
) -> StoreResult<u64> {
    let abandoned: BTreeSet<u64> =
        read_seqs(&dir.join(ABANDONED_FILE))?.unwrap_or_default().into_iter().collect();
    let mut last = after;
    let segments = list_segments(dir)?;
    if segments.first().is_none_or(|s| s.start_seq > after + 1) {
        return Err(StoreError::Corrupted(format!(
            "the journal in {} no longer holds the records after {after}",
            dir.display()
        )));
    }
    for seg in segments {
        let buf = std::fs::read(&seg.path).map_err(io_err(format!("read {}", seg.path.display())))?;
        let mut gap = false;
        let end = each_frame(&buf, |r, _| {
            if r.seq <= last {
                return Ok(true);
            }
            if r.seq != last + 1 {
                gap = true;
                return Ok(false);
            }
            last = r.seq;
            if !abandoned.contains(&r.seq) {
                each(r)?;
            }
            Ok(true)
        })?;
        if gap || end < buf.len() {
            break;
        }
    }
    Ok(last)
}

/// What [`Journal::verify`] found on disk.
#[derive(Debug, Clone, Default)]
pub struct JournalCheck {
    pub segments: usize,
    pub records: usize,
    pub checkpoint_seq: u64,
    pub last_seq: u64,
    pub problems: Vec<String>,
}

impl Journal {
    /// fsck of the journal, read-only: every segment decodes completely, sequence numbers
    /// follow each other (gaps only at or below the checkpoint, as `open` allows), the tail
    /// ends where the next append goes, and the markers are sound. Appends wait meanwhile.
    pub fn verify(&self) -> StoreResult<JournalCheck> {
        let st = self.state.lock();
        let mut check = JournalCheck { segments: st.segments.len(), ..JournalCheck::default() };
        let problem = |c: &mut JournalCheck, p: String| c.problems.push(p);
        check.checkpoint_seq = match read_marker(&self.dir.join(CHECKPOINT_FILE)) {
            Ok(Some(seq)) => seq,
            Ok(None) => {
                problem(&mut check, "journal: the checkpoint marker is missing".into());
                0
            }
            Err(e) => {
                problem(&mut check, format!("journal: {e}"));
                0
            }
        };
        check.last_seq = st.next_seq - 1;
        if check.checkpoint_seq > check.last_seq {
            let p = format!(
                "journal: checkpoint {} is past the last record {}",
                check.checkpoint_seq, check.last_seq
            );
            problem(&mut check, p);
        }
        if !self.has_failed() && self.dir.join(VALID_THROUGH_FILE).exists() {
            problem(&mut check, "journal: a failure marker is left while the journal works".into());
        }
        let on_disk: Vec<PathBuf> = list_segments(&self.dir)?.into_iter().map(|s| s.path).collect();
        let listed: Vec<PathBuf> = st.segments.iter().map(|s| s.path.clone()).collect();
        if on_disk != listed {
            problem(&mut check, format!("journal: segments on disk {on_disk:?}, in use {listed:?}"));
        }
        let mut expected: Option<u64> = None;
        for (i, seg) in st.segments.iter().enumerate() {
            let buf = std::fs::read(&seg.path).map_err(io_err(format!("read {}", seg.path.display())))?;
            // Records are checked as they are decoded; their problems are noted after the
            // walk, in the order found.
            let mut found = Vec::new();
            let mut first = true;
            let checkpoint_seq = check.checkpoint_seq;
            let decoded = each_frame(&buf, |r, _| {
                if first && r.seq < seg.start_seq {
                    found.push(format!(
                        "journal {}: first record {} below its name",
                        seg.path.display(),
                        r.seq
                    ));
                }
                first = false;
                let in_order = match expected {
                    None => true,
                    Some(e) => r.seq == e || (r.seq > e && r.seq <= checkpoint_seq + 1),
                };
                if !in_order {
                    found.push(format!(
                        "journal {}: record {} follows {:?}",
                        seg.path.display(),
                        r.seq,
                        expected.map(|e| e - 1)
                    ));
                }
                expected = Some(r.seq + 1);
                check.records += 1;
                Ok(true)
            });
            let valid = match decoded {
                Ok(valid) => valid,
                Err(e) => {
                    problem(&mut check, format!("journal {}: {e}", seg.path.display()));
                    continue;
                }
            };
            if valid != buf.len() {
                let p = format!(
                    "journal {}: {} bytes after the last valid record",
                    seg.path.display(),
                    buf.len() - valid
                );
                problem(&mut check, p);
            }
            if i + 1 == st.segments.len() && buf.len() as u64 != st.offset {
                let p = format!(
                    "journal {}: {} bytes on disk, appends at {}",
                    seg.path.display(),
                    buf.len(),
                    st.offset
                );
                problem(&mut check, p);
            }
            for p in found {
                problem(&mut check, p);
            }
        }
        if let Some(e) = expected {
            // After a crash lost records the checkpoint covers, numbering resumes above it.
            if e - 1 != check.last_seq && check.last_seq > check.checkpoint_seq {
                let p =
                    format!("journal: last record on disk {}, numbered through {}", e - 1, check.last_seq);
                problem(&mut check, p);
            }
        }
        Ok(check)
    }
}

fn list_segments(dir: &Path) -> StoreResult<Vec<Segment>> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_suffix(".log") {
            if let Ok(start_seq) = num.parse::<u64>() {
                segments.push(Segment { start_seq, path: entry.path() });
            }
        }
    }
    segments.sort_by_key(|s| s.start_seq);
    Ok(segments)
}

/// Reads a marker file (`SEQ CRC`); None if it does not exist.
fn read_marker(path: &Path) -> StoreResult<Option<u64>> {
    match read_seqs(path)?.as_deref() {
        None => Ok(None),
        Some([seq]) => Ok(Some(*seq)),
        Some(_) => Err(StoreError::Corrupted(format!("{} is malformed", path.display()))),
    }
}

/// Reads a file of sequence numbers (`SEQ SEQ … CRC`, the checksum over the numbers' text);
/// None if it does not exist.
fn read_seqs(path: &Path) -> StoreResult<Option<Vec<u64>>> {
    let text = match super::chunks::open_no_follow(path).and_then(std::io::read_to_string) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(format!("read {}", path.display()), e)),
    };
    let malformed = || StoreError::Corrupted(format!("{} is malformed", path.display()));
    let (seqs, crc) = text.trim_end().rsplit_once(' ').ok_or_else(malformed)?;
    if crc.parse::<u32>().ok() != Some(crc32fast::hash(seqs.as_bytes())) {
        return Err(StoreError::Corrupted(format!("{} fails its checksum", path.display())));
    }
    seqs.split(' ').map(|n| n.parse::<u64>().map_err(|_| malformed())).collect::<StoreResult<_>>().map(Some)
}

/// Replaces a marker file atomically and durably (temp, fsync, rename, dir fsync).
fn write_marker(dir: &Path, io: &dyn StoreIo, name: &str, seq: u64) -> StoreResult<()> {
    write_seqs(dir, io, name, &[seq])
}

fn write_seqs(dir: &Path, io: &dyn StoreIo, name: &str, seqs: &[u64]) -> StoreResult<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let numbers = seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    let text = format!("{numbers} {}\n", crc32fast::hash(numbers.as_bytes()));
    let f = io.create_new(&tmp, 0o600).map_err(io_err(format!("create {}", tmp.display())))?;
    io.write_all_at(&f, text.as_bytes(), 0).map_err(io_err(format!("write {}", tmp.display())))?;
    io.sync_data(&f).map_err(io_err(format!("fsync {}", tmp.display())))?;
    io.rename(&tmp, &path).map_err(io_err(format!("rename {}", path.display())))?;
    io.sync_dir(dir).map_err(io_err(format!("fsync {}", dir.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::io::RealIo;

    fn ops(n: u8) -> Vec<Op> {
        vec![Op::DelXattr { ino: n as u64, name: vec![n] }]
    }

    /// Appends that rotate segments race group syncs from many threads: it must finish (the
    /// two locks were once taken in opposite orders), and every record must replay.
    #[test]
    fn rotations_under_concurrent_syncs_never_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn StoreIo> = Arc::new(RealIo);
        Journal::create(dir.path(), io.as_ref()).unwrap();
        let (j, _) = Journal::open(dir.path(), io.clone()).unwrap();
        j.set_segment_bytes_target(64);
        const THREADS: u64 = 8;
        const APPENDS: u64 = 500;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let j = Arc::new(j);
        for t in 0..THREADS {
            let (j, done) = (j.clone(), done_tx.clone());
            std::thread::spawn(move || {
                for i in 0..APPENDS {
                    let r = j.append(|_| ops((t * APPENDS + i) as u8)).unwrap();
                    j.applied(r.seq);
                    j.sync_to(r.seq).unwrap();
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..THREADS {
            // A deadlock fails the test instead of hanging it.
            done_rx.recv_timeout(std::time::Duration::from_secs(300)).expect("appends and syncs deadlocked");
        }
        let segments = list_segments(dir.path()).unwrap().len() as u64;
        assert!(segments >= THREADS * APPENDS / 4, "only {segments} segments: too few rotations");
        drop(j);
        let (_, replay) = Journal::open(dir.path(), io).unwrap();
        assert_eq!(replay.records.len() as u64, THREADS * APPENDS);
    }

    #[test]
    fn a_frame_whose_checksum_holds_but_does_not_decode_is_damage_not_a_tail() {
        let mut buf = encode_frame(&Record { seq: 1, time: Default::default(), ops: ops(1) }).unwrap();
        let payload = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff";
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        buf.extend_from_slice(payload);
        assert!(matches!(decode_frames(&buf), Err(StoreError::Corrupted(_))));
        // A torn tail (bad checksum) still just ends the valid prefix.
        let n = buf.len();
        buf[n - 1] ^= 1;
        let (records, valid) = decode_frames(&buf).unwrap();
        assert_eq!((records.len(), valid), (1, n - payload.len() - FRAME_HEADER_BYTES));
    }

    /// Arbitrary bytes, and valid frames with bytes flipped, into the frame decoder: records or
    /// an error, never a panic.
    #[test]
    fn the_frame_decoder_never_panics_on_arbitrary_bytes() {
        let seed = std::env::var("GENFS_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
        eprintln!("frame fuzz: GENFS_TEST_SEED={seed}");
        let mut rng = crate::store::crashsim::Rng::new(seed);
        let mut valid = Vec::new();
        for seq in 1..=5 {
            valid.extend(
                encode_frame(&Record { seq, time: Default::default(), ops: ops(seq as u8) }).unwrap(),
            );
        }
        for _ in 0..20_000 {
            let mut buf = if rng.chance(1, 2) {
                (0..rng.below(96)).map(|_| rng.next() as u8).collect::<Vec<u8>>()
            } else {
                valid.clone()
            };
            for _ in 0..rng.below(4) {
                if !buf.is_empty() {
                    let at = rng.below(buf.len() as u64) as usize;
                    buf[at] ^= 1 << rng.below(8);
                }
            }
            if let Ok((records, end)) = decode_frames(&buf) {
                assert!(end <= buf.len());
                assert!(records.iter().all(|(_, e)| *e <= end));
            }
        }
    }

    #[test]
    fn records_survive_reopen_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let io: Arc<dyn StoreIo> = Arc::new(RealIo);
        Journal::create(dir.path(), io.as_ref()).unwrap();
        let (j, replay) = Journal::open(dir.path(), io.clone()).unwrap();
        assert!(replay.records.is_empty());
        for i in 0..10 {
            let r = j.append(|_| ops(i)).unwrap();
            j.sync_to(r.seq).unwrap();
        }
        drop(j);
        // Append garbage: a torn frame.
        let seg = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        std::fs::write(&seg, &bytes).unwrap();
        let (j, replay) = Journal::open(dir.path(), io.clone()).unwrap();
        assert_eq!(replay.records.len(), 10);
        assert_eq!(replay.truncated_bytes, 6);
        assert_eq!(j.append(|_| ops(1)).unwrap().seq, 11);
        j.checkpoint(5).unwrap();
        drop(j);
        let (_, replay) = Journal::open(dir.path(), io).unwrap();
        assert_eq!(replay.checkpoint_seq, 5);
        assert_eq!(replay.records.first().map(|r| r.seq), Some(6));
    }
}
