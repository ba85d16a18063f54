//! The version interface: the texts of the virtual `user.genfs.*` attributes (formats in
//! docs/xattrs.md) and the read-only views under `/.genfs/` (`views`). The FUSE layer calls
//! into this module; the store supplies the data.

pub mod time;
pub mod views;

use crate::store::chunks::hex;
use crate::store::index::Snapshot;
use crate::store::records::Ino;
use crate::store::{GcReport, LogEntry, SpaceStatus, Stats, StoreResult};
use std::fmt::Write;

pub const PREFIX: &[u8] = b"user.genfs.";
pub const GENERATION: &[u8] = b"user.genfs.generation";
pub const LOG: &[u8] = b"user.genfs.log";
pub const LOG_BEFORE: &[u8] = b"user.genfs.log.before.";
pub const RESTORE: &[u8] = b"user.genfs.restore";
pub const RETENTION: &[u8] = b"user.genfs.retention";
pub const SNAPSHOTS: &[u8] = b"user.genfs.snapshots";
pub const SNAPSHOT_CREATE: &[u8] = b"user.genfs.snapshot.create";
pub const SNAPSHOT_DELETE: &[u8] = b"user.genfs.snapshot.delete";
pub const SEQ: &[u8] = b"user.genfs.seq";
pub const DURABLE_SEQ: &[u8] = b"user.genfs.durable-seq";
pub const STATS: &[u8] = b"user.genfs.stats";
pub const GC: &[u8] = b"user.genfs.gc";
/// On the root: the free-space floor history yields to (`10%`, `2G`; empty: the default).
pub const FREE_FLOOR: &[u8] = b"user.genfs.free-floor";
/// Space drops a gc report lists (the newest); the daemon's log has every one.
const SPACE_DROPS_LISTED_MAX: usize = 256;
/// Room for the drops a gc report lists; what follows (totals, space drops) fits in the rest.
const GC_LISTING_BYTES_MAX: usize = 24 << 10;
/// On a view's file or directory: `MODE UID GID` as it was, write bits included (the view
/// itself shows none), so `restore --tree` can bring back what the view cannot show.
pub const MODE: &[u8] = b"user.genfs.mode";

/// The kernel's limit on an xattr value.
pub const VALUE_BYTES_MAX: usize = 64 << 10;

/// Name of the hidden directory at the mount root.
pub const VIEWS_DIR: &[u8] = b".genfs";

/// Where generation `gen` of inode `ino` can be read, relative to the mount root.
pub fn read_path(ino: Ino, gen: u64) -> String {
    format!(".genfs/gen/{ino}/{gen}")
}

fn log_line(file: Ino, e: &LogEntry) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\n",
        e.gen,
        time::format_rfc3339(e.manifest.committed.secs),
        e.manifest.size,
        hex(&e.manifest.digest()),
        read_path(file, e.gen)
    )
}

/// One page of the log (oldest first): the newest entries of `newest_first` (the log below
/// the page's bound) that fit in an xattr value, then `#more\tuser.genfs.log.before.G` if
/// older ones remain. Reads one entry past what fits, so a page costs its own length.
pub fn log_page(
    file: Ino,
    newest_first: impl Iterator<Item = StoreResult<LogEntry>>,
) -> StoreResult<Vec<u8>> {
    let continuation_room = 64;
    let mut lines: Vec<(u64, String)> = Vec::new();
    let mut size = 0;
    let mut more = false;
    for e in newest_first {
        let e = e?;
        let line = log_line(file, &e);
        // The first line always fits (lines are ~150 bytes): every page makes progress.
        if !lines.is_empty() && size + line.len() + continuation_room > VALUE_BYTES_MAX {
            more = true;
            break;
        }
        size += line.len();
        lines.push((e.gen, line));
    }
    let oldest_shown = lines.last().map(|(gen, _)| *gen);
    let mut out = String::with_capacity(size + continuation_room);
    for (_, line) in lines.iter().rev() {
        out.push_str(line);
    }
    if let (true, Some(oldest)) = (more, oldest_shown) {
        let _ = writeln!(out, "#more\t{}{oldest}", String::from_utf8_lossy(LOG_BEFORE));
    }
    Ok(out.into_bytes())
}

pub fn snapshots_text(snaps: &[(Vec<u8>, Snapshot)]) -> Vec<u8> {
    let mut out = String::new();
    for (name, s) in snaps {
        let _ = writeln!(
            out,
            "{}\t{}\t{}",
            String::from_utf8_lossy(name),
            s.seq,
            time::format_rfc3339(s.time.secs)
        );
    }
    out.into_bytes()
}

/// `user.genfs.stats`; `gc_would_free`: what a gc now would free, in bytes.
pub fn stats_text(s: &Stats, space: &SpaceStatus, gc_would_free: u64) -> Vec<u8> {
    let mut out = String::new();
    let rows: [(&str, String); 16] = [
        ("files", s.files.to_string()),
        ("generations", s.generations.to_string()),
        ("logical_bytes", s.logical_bytes.to_string()),
        ("stored_bytes", s.stored_bytes.to_string()),
        ("live_bytes", s.live_bytes.to_string()),
        ("history_bytes", s.history_bytes.to_string()),
        ("gc_would_free_bytes", gc_would_free.to_string()),
        ("chunks", s.chunks.to_string()),
        ("snapshots", s.snapshots.to_string()),
        ("fs_size_bytes", space.fs_bytes.to_string()),
        ("fs_free_bytes", space.free_bytes.to_string()),
        ("free_floor", space.floor.to_string()),
        ("free_floor_bytes", space.floor_bytes.to_string()),
        ("reserve_bytes", space.reserve_bytes.to_string()),
        ("index_live_bytes", s.index_live_bytes.to_string()),
        ("index_file_bytes", s.index_file_bytes.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "{k}\t{v}");
    }
    out.into_bytes()
}

/// A generation dropped for space, as the gc report lists it.
pub struct SpaceDropLine {
    pub time: i64,
    pub path: String,
    pub gen: u64,
    pub size: u64,
}

/// The report of a gc run; `name_of` gives a path (or the inode number) for a file; `hidden`
/// counts the dropped generations of files the reader may not see, which it does not list.
/// `space`: the generations dropped for space since the mount, oldest first (the newest are
/// listed, the rest counted).
pub fn gc_text(
    r: &GcReport,
    hidden: usize,
    space: &[SpaceDropLine],
    name_of: impl Fn(Ino) -> String,
) -> Vec<u8> {
    let mut out = String::new();
    // The value must fit in an attribute: the first drops are listed, the rest counted.
    let mut unlisted = 0;
    for (ino, gen, size) in &r.dropped {
        let line = format!("{}\t{gen}\t{size}\n", name_of(*ino));
        if out.len() + line.len() > GC_LISTING_BYTES_MAX {
            unlisted += 1;
            continue;
        }
        out += &line;
    }
    if unlisted > 0 {
        let _ = writeln!(out, "unlisted\t{unlisted}");
    }
    if hidden > 0 {
        let _ = writeln!(out, "hidden\t{hidden}");
    }
    let _ = writeln!(out, "freed_chunks\t{}\nfreed_bytes\t{}", r.freed_chunks, r.freed_bytes);
    let older = space.len().saturating_sub(SPACE_DROPS_LISTED_MAX);
    if older > 0 {
        let _ = writeln!(out, "space_older\t{older}");
    }
    for d in &space[older..] {
        let _ = writeln!(out, "space\t{}\t{}\t{}\t{}", time::format_rfc3339(d.time), d.path, d.gen, d.size);
    }
    out.into_bytes()
}

/// `/.genfs/at/NAME`: `@SEQ`, or an RFC 3339 time.
pub enum At {
    Seq(u64),
    Time(i64),
}

pub fn parse_at(name: &[u8]) -> Option<At> {
    let name = std::str::from_utf8(name).ok()?;
    match name.strip_prefix('@') {
        Some(seq) => seq.parse().ok().map(At::Seq),
        None => time::parse_rfc3339(name).map(At::Time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records::Manifest;
    use std::cell::Cell;

    /// A page reads one entry past what it shows (issue 12: a page costs its own length, not
    /// the log's), and its continuation names the oldest generation shown.
    #[test]
    fn a_log_page_reads_only_what_it_shows() {
        let pulled = Cell::new(0u64);
        let log = (1..=10_000u64).rev().map(|gen| {
            pulled.set(pulled.get() + 1);
            Ok(LogEntry { gen, owner: 7, manifest: Manifest::empty() })
        });
        let page = String::from_utf8(log_page(7, log).unwrap()).unwrap();
        let gens: Vec<u64> = page
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('\t').next().unwrap().parse().unwrap())
            .collect();
        assert!(page.len() <= VALUE_BYTES_MAX && gens.len() > 100, "{} lines", gens.len());
        assert_eq!(pulled.get(), gens.len() as u64 + 1);
        assert!(gens.windows(2).all(|w| w[0] + 1 == w[1]) && gens.last() == Some(&10_000));
        assert!(page.ends_with(&format!("#more\tuser.genfs.log.before.{}\n", gens[0])), "{page}");
        let short = (1..=3u64).rev().map(|gen| Ok(LogEntry { gen, owner: 7, manifest: Manifest::empty() }));
        let page = String::from_utf8(log_page(7, short).unwrap()).unwrap();
        assert_eq!(page.lines().count(), 3);
        assert!(!page.contains("#more"));
    }

    /// A gc that dropped thousands of generations still answers within an attribute's limit
    /// (it once failed with E2BIG), listing what fits and counting the rest.
    #[test]
    fn a_gc_report_fits_in_an_attribute() {
        let r =
            GcReport { dropped: (0..20_000).map(|i| (i, 1, 200)).collect(), freed_chunks: 3, freed_bytes: 4 };
        let space: Vec<SpaceDropLine> = (0..1000)
            .map(|i| SpaceDropLine { time: 0, path: format!("dir/file{i}"), gen: 1, size: 9 })
            .collect();
        let name = |ino: Ino| format!("some/rather/long/path/to/file-number-{ino}");
        let text = String::from_utf8(gc_text(&r, 5, &space, name)).unwrap();
        assert!(text.len() <= VALUE_BYTES_MAX, "{} bytes", text.len());
        let listed = text.lines().filter(|l| l.starts_with("some/")).count();
        assert!(text.contains(&format!("unlisted\t{}\n", 20_000 - listed)), "{listed} listed");
        assert!(text.contains("freed_bytes\t4\n") && text.contains("space_older\t744\n"));
    }
}
