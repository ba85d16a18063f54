//! `genfs log`, `cat`, `diff`, `restore`, `snapshot`, `gc` and `stats`: the version commands,
//! built only on the virtual xattrs and read-only views of docs/xattrs.md.

use super::admin::{self, MountArg, SnapshotCommand};
use super::history::{cause, file_spec, Entry, GenSpec, History, GEN_FORMS};
use super::time::{format_age, format_rfc3339, now};
use super::tree;
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum VersionCommand {
    /// List every kept generation of FILE, oldest first: generation, commit time (UTC), size,
    /// short hash, age.
    ///
    /// All pages of the log are followed. A header line is printed only when stdout is a
    /// terminal, so `genfs log FILE | wc -l` counts generations.
    ///
    /// Example: genfs log notes.txt --json
    Log(LogArgs),
    /// Write one generation of FILE to stdout.
    ///
    /// FILE@N is generation N, FILE@-1 the one before the current one, FILE@-K the K-th before
    /// it, FILE@TIME the newest generation committed at or before TIME (RFC 3339, UTC or with an
    /// offset). FILE alone is the current generation. A name that itself contains `@` is split
    /// at its last `@` only when what follows is one of these forms.
    ///
    /// Example: genfs cat notes.txt@-1 > notes.previous
    Cat(CatArgs),
    /// Compare two generations: a unified diff for text, a summary for binary files.
    ///
    /// Each side is FILE@N, FILE@-K, FILE@TIME or FILE alone (the current generation); the two
    /// sides may name different files. Prints nothing when they are identical; exits 0 either way.
    ///
    /// Example: genfs diff notes.txt@-1 notes.txt
    Diff(DiffArgs),
    /// Make an old generation current again, as a new generation (history is kept).
    ///
    /// FILE@GEN: sets user.genfs.restore (needs write permission on FILE).
    ///
    /// --tree DIR@TIME: every regular file under DIR whose content at TIME differs from its
    /// content now is rewritten with the old content (a new generation each), and files deleted
    /// since TIME are created again; files created after TIME are left alone (nothing is
    /// deleted), and so are symlinks and other non-regular files. Progress goes to stderr.
    ///
    /// Example: genfs restore notes.txt@-1
    ///
    /// Example: genfs restore --tree project@2026-11-22T05:30:00Z
    Restore(RestoreArgs),
    /// Create, list or delete named snapshots of the whole mount.
    ///
    /// A snapshot is browsable read-only at MOUNT/.genfs/snapshots/NAME, and keeps every
    /// generation it covers from garbage collection until it is deleted.
    ///
    /// Example: genfs snapshot create before-upgrade
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Apply the retention policy now: drop the generations it no longer keeps and free their
    /// chunks; prints what was dropped.
    ///
    /// Current generations, generations open in some descriptor and generations in a snapshot
    /// are never dropped. --dry-run only reports what would go; --report shows the last run and
    /// what was dropped for space. Below the free-space floor (--free-floor) genfs drops the
    /// oldest unprotected history by itself, before any write is refused.
    ///
    /// Example: genfs gc --dry-run
    Gc(GcArgs),
    /// Store statistics: files, generations, logical, stored, live and history bytes, what a gc
    /// would free, chunks, snapshots, the store filesystem's size and free space, the free-space
    /// floor, and the dedup ratio (logical / stored bytes).
    ///
    /// Example: genfs stats -C /tmp/genfs --json
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// A regular file on a genfs mount.
    file: PathBuf,
    /// A JSON array of objects: gen, time, size, hash (all 64 digits), read_path (relative to the
    /// mount root), age_seconds, current.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    /// FILE, FILE@N, FILE@-K or FILE@TIME.
    #[arg(value_name = "FILE@GEN")]
    file: OsString,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The old side: FILE, FILE@N, FILE@-K or FILE@TIME.
    #[arg(value_name = "FILE@A")]
    a: OsString,
    /// The new side, in the same forms.
    #[arg(value_name = "FILE@B")]
    b: OsString,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// FILE@N, FILE@-K or FILE@TIME; with --tree, DIR@TIME.
    #[arg(value_name = "FILE@GEN")]
    target: OsString,
    /// Restore the whole tree under DIR as of TIME (see above).
    #[arg(long)]
    tree: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    /// Report what would be dropped, drop nothing.
    #[arg(long, conflicts_with_all = ["report", "free_floor"])]
    dry_run: bool,
    /// Show the last gc's report and what was dropped for space since the mount; run nothing.
    #[arg(long, conflicts_with = "free_floor")]
    report: bool,
    /// Set the free space history yields to: below it, the oldest history no rule protects is
    /// dropped (10% by default; e.g. 10%, 500M, 2G; an empty value restores the default).
    #[arg(long, value_name = "FLOOR")]
    free_floor: Option<String>,
    #[command(flatten)]
    at: MountArg,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One JSON object; numbers stay numbers, plus dedup_ratio (null when nothing is stored).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    at: MountArg,
}

pub fn run(cmd: VersionCommand) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        VersionCommand::Log(a) => log(&a),
        VersionCommand::Cat(a) => cat(&a),
        VersionCommand::Diff(a) => diff(&a),
        VersionCommand::Restore(a) if a.tree => tree::restore_tree(&a.target),
        VersionCommand::Restore(a) => restore(&a.target),
        VersionCommand::Snapshot(c) => admin::snapshot(c),
        VersionCommand::Gc(a) => {
            let action = match (a.free_floor, a.report) {
                (Some(floor), _) => admin::GcAction::SetFreeFloor(floor),
                (None, true) => admin::GcAction::Report,
                (None, false) => admin::GcAction::Run { dry_run: a.dry_run },
            };
            admin::gc(action, &a.at)
        }
        VersionCommand::Stats(a) => admin::stats(a.json, &a.at),
    };
    match result {
        // `genfs log FILE | head`: the reader went away; that is not an error.
        Err(e) if is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// Writes to stdout: a broken pipe stays an `io::Error` (so [`run`] can end quietly), anything
/// else becomes `stdout: <cause>`.
pub fn emit(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(stdout_error)
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        anyhow::Error::new(e)
    } else {
        anyhow!("stdout: {}", cause(&e))
    }
}

/// Whether tables get a header line.
pub fn stdout_is_terminal() -> bool {
    io::stdout().is_terminal()
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lays out rows as left- or right-aligned columns (`right[i]` for column i), two spaces apart,
/// with trailing spaces trimmed.
pub fn table(rows: &[Vec<String>], right: &[bool]) -> String {
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if right.get(c).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn log(args: &LogArgs) -> anyhow::Result<()> {
    let h = History::read(&args.file)?;
    let now = now();
    let out = if args.json {
        log_json(&h.entries, h.current, now)
    } else {
        log_table(&h.entries, now, stdout_is_terminal())
    };
    emit(out.as_bytes())
}

fn log_table(entries: &[Entry], now: i64, header: bool) -> String {
    let mut rows = Vec::with_capacity(entries.len() + 1);
    if header {
        rows.push(["GEN", "TIME", "SIZE", "HASH", "AGE"].map(String::from).to_vec());
    }
    for e in entries {
        rows.push(vec![
            e.gen.to_string(),
            format_rfc3339(e.time),
            e.size.to_string(),
            e.hash[..12].to_string(),
            format_age(now - e.time),
        ]);
    }
    table(&rows, &[true, false, true, false, true])
}

fn log_json(entries: &[Entry], current: u64, now: i64) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "{{\"gen\":{},\"time\":{},\"size\":{},\"hash\":{},\"read_path\":{},\"age_seconds\":{},\"current\":{}}}",
                e.gen,
                json_str(&format_rfc3339(e.time)),
                e.size,
                json_str(&e.hash),
                json_str(&e.read_path),
                (now - e.time).max(0),
                e.gen == current
            )
        })
        .collect();
    if items.is_empty() {
        "[]\n".into()
    } else {
        format!("[\n  {}\n]\n", items.join(",\n  "))
    }
}

/// One side of `cat`/`diff`: a resolved generation and where to read it.
struct Version {
    label: String,
    time: Option<i64>,
    size: u64,
    hash: Option<String>,
    source: PathBuf,
}

impl Version {
    fn open(arg: &OsString) -> anyhow::Result<Version> {
        let (path, spec) = file_spec(arg);
        let h = History::read(&path)?;
        let shown = path.display();
        let version = match h.resolve(spec) {
            Ok(e) => Version {
                label: format!("{shown}@{}", e.gen),
                time: Some(e.time),
                size: e.size,
                hash: Some(e.hash.clone()),
                source: h.read_path(e),
            },
            // The log should always hold the current generation; if not, the file is it.
            Err(_) if spec == GenSpec::Current => Version {
                label: format!("{shown}@{}", h.current),
                time: None,
                size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                hash: None,
                source: path.clone(),
            },
            Err(e) => return Err(e),
        };
        Ok(version)
    }

    fn reader(&self) -> anyhow::Result<std::fs::File> {
        std::fs::File::open(&self.source)
            .map_err(|e| anyhow!("{}: cannot open {}: {}", self.label, self.source.display(), cause(&e)))
    }

    fn read_all(&self) -> anyhow::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(self.size.min(1 << 30) as usize);
        self.reader()?
            .read_to_end(&mut data)
            .map_err(|e| anyhow!("{}: cannot read {}: {}", self.label, self.source.display(), cause(&e)))?;
        Ok(data)
    }

    fn header(&self) -> String {
        match self.time {
            Some(t) => format!("{}\t{}", self.label, format_rfc3339(t)),
            None => self.label.clone(),
        }
    }
}

fn cat(args: &CatArgs) -> anyhow::Result<()> {
    let v = Version::open(&args.file)?;
    let mut f = v.reader()?;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("{}: cannot read {}: {}", v.label, v.source.display(), cause(&e)),
        };
        out.write_all(&buf[..n]).map_err(stdout_error)?;
    }
    out.flush().map_err(stdout_error)
}

/// Files larger than this are compared as binary (a line diff of them would not be read).
const TEXT_DIFF_LIMIT: u64 = 64 << 20;

fn is_text(data: &[u8]) -> bool {
    !data.contains(&0) && std::str::from_utf8(data).is_ok()
}

fn diff(args: &DiffArgs) -> anyhow::Result<()> {
    let a = Version::open(&args.a)?;
    let b = Version::open(&args.b)?;
    if a.size == b.size && a.hash.is_some() && a.hash == b.hash {
        return Ok(()); // same digest: same content, nothing to read
    }
    if a.size <= TEXT_DIFF_LIMIT && b.size <= TEXT_DIFF_LIMIT {
        let (da, db) = (a.read_all()?, b.read_all()?);
        if is_text(&da) && is_text(&db) {
            let out = text_diff(&a, &b, &da, &db);
            return emit(out.as_bytes());
        }
        let out = binary_summary(&a, &b, da.len() as u64, db.len() as u64, first_difference(&da, &db));
        return emit(out.as_bytes());
    }
    let (mut ra, mut rb) = (a.reader()?, b.reader()?);
    let (first, la, lb) = stream_compare(&mut ra, &mut rb)
        .map_err(|e| anyhow!("{} / {}: cannot read: {}", a.label, b.label, cause(&e)))?;
    emit(binary_summary(&a, &b, la, lb, first).as_bytes())
}

fn text_diff(a: &Version, b: &Version, da: &[u8], db: &[u8]) -> String {
    let (ta, tb) = (std::str::from_utf8(da).unwrap_or(""), std::str::from_utf8(db).unwrap_or(""));
    let diff = similar::TextDiff::configure().timeout(std::time::Duration::from_secs(10)).diff_lines(ta, tb);
    diff.unified_diff().context_radius(3).header(&a.header(), &b.header()).to_string()
}

/// The offset of the first byte where `a` and `b` differ (the shorter length if one is a
/// prefix of the other); `None` if they are equal.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => Some(i as u64),
        None if a.len() == b.len() => None,
        None => Some(a.len().min(b.len()) as u64),
    }
}

/// Compares two readers block by block: (first difference, length of a, length of b).
pub(super) fn stream_compare(a: &mut impl Read, b: &mut impl Read) -> io::Result<(Option<u64>, u64, u64)> {
    const BLOCK: usize = 1 << 20;
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let (mut la, mut lb, mut first) = (0u64, 0u64, None);
    loop {
        let na = read_full(a, &mut ba)?;
        let nb = read_full(b, &mut bb)?;
        if first.is_none() {
            first = first_difference(&ba[..na], &bb[..nb]).map(|i| la + i);
        }
        la += na as u64;
        lb += nb as u64;
        if na < BLOCK && nb < BLOCK {
            return Ok((first, la, lb));
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn binary_summary(a: &Version, b: &Version, la: u64, lb: u64, first: Option<u64>) -> String {
    let Some(first) = first else { return String::new() };
    let side = |v: &Version, len: u64| match v.time {
        Some(t) => format!("  {}: {len} bytes, committed {}\n", v.label, format_rfc3339(t)),
        None => format!("  {}: {len} bytes\n", v.label),
    };
    let mut out = format!("Binary files {} and {} differ\n", a.label, b.label);
    out += &side(a, la);
    out += &side(b, lb);
    if first == la.min(lb) && la != lb {
        let (short, long) = if la < lb { (a, b) } else { (b, a) };
        out +=
            &format!("  {} is a prefix of {}: they differ from offset {first} on\n", short.label, long.label);
    } else {
        out += &format!("  first difference at byte offset {first} (0x{first:x})\n");
    }
    out
}

fn restore(target: &OsString) -> anyhow::Result<()> {
    let (path, spec) = file_spec(target);
    let shown = path.display();
    if spec == GenSpec::Current {
        super::history::OnMount::locate(&path)?; // a missing file says so first
        bail!("{shown}: which generation? use {GEN_FORMS}");
    }
    let h = History::read(&path)?;
    let gen = h.resolve(spec)?.gen;
    if gen == h.current {
        eprintln!("{shown}: generation {gen} is already the current one; nothing to restore");
        return Ok(());
    }
    restore_generation(&path, gen)?;
    let now_gen = super::history::get_text(&path, super::history::GENERATION).ok().flatten();
    let now_gen = now_gen.as_deref().map(str::trim).unwrap_or("?");
    emit(format!("{shown}: restored generation {gen} as generation {now_gen}\n").as_bytes())
}

/// Sets `user.genfs.restore` on `path`.
pub fn restore_generation(path: &Path, gen: u64) -> anyhow::Result<()> {
    xattr::set(path, "user.genfs.restore", gen.to_string().as_bytes())
        .map_err(|e| anyhow!("{}: cannot restore generation {gen}: {}", path.display(), cause(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::time::parse_rfc3339;

    fn entry(gen: u64, time: &str, size: u64) -> Entry {
        Entry {
            gen,
            time: parse_rfc3339(time).unwrap(),
            size,
            hash: format!("{:0<64}", format!("{:x}", gen * 0x1111)),
            read_path: format!(".genfs/gen/9/{gen}"),
        }
    }

    #[test]
    fn log_table_has_one_line_per_generation() {
        let now = parse_rfc3339("2026-11-22T08:00:00Z").unwrap();
        let entries = [entry(1, "2026-11-17T07:00:00Z", 5), entry(12, "2026-11-22T07:57:00Z", 123_456)];
        let out = log_table(&entries, now, false);
        assert_eq!(
            out,
            " 1  2026-11-17T07:00:00Z       5  111100000000  5d\n\
             12  2026-11-22T07:57:00Z  123456  cccc00000000  3m\n"
        );
        let with_header = log_table(&entries, now, true);
        assert!(
            with_header.starts_with("GEN  TIME                    SIZE  HASH          AGE\n"),
            "{with_header}"
        );
        assert_eq!(with_header.lines().count(), 3);
    }

    #[test]
    fn log_json_is_an_array_of_objects() {
        let now = parse_rfc3339("2026-11-22T08:00:00Z").unwrap();
        assert_eq!(log_json(&[], 0, now), "[]\n");
        let out =
            log_json(&[entry(1, "2026-11-22T07:00:00Z", 5), entry(2, "2026-11-22T07:59:00Z", 6)], 2, now);
        assert!(out.starts_with("[\n  {\"gen\":1,\"time\":\"2026-11-22T07:00:00Z\",\"size\":5,"), "{out}");
        assert!(
            out.contains("\"read_path\":\".genfs/gen/9/2\",\"age_seconds\":60,\"current\":true}\n]\n"),
            "{out}"
        );
        assert!(out.contains("\"current\":false},\n"), "{out}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\te\u{1}é"), "\"a\\\"b\\\\c\\nd\\te\\u0001é\"");
    }

    #[test]
    fn tables_align() {
        let rows = vec![vec!["a".into(), "1".into(), "x".into()], vec!["bbb".into(), "22".into(), "".into()]];
        assert_eq!(table(&rows, &[false, true]), "a     1  x\nbbb  22\n");
    }

    #[test]
    fn finds_the_first_difference() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"abcd"), Some(3));
        assert_eq!(first_difference(b"", b"x"), Some(0));
        let a = vec![7u8; 3 << 20];
        let mut b = a.clone();
        b[(2 << 20) + 5] = 8;
        assert_eq!(
            stream_compare(&mut &a[..], &mut &b[..]).unwrap(),
            (Some((2 << 20) + 5), 3 << 20, 3 << 20)
        );
        assert_eq!(
            stream_compare(&mut &a[..], &mut &a[..1 << 20]).unwrap(),
            (Some(1 << 20), 3 << 20, 1 << 20)
        );
        assert_eq!(stream_compare(&mut &a[..], &mut &a[..]).unwrap(), (None, 3 << 20, 3 << 20));
    }

    fn version(label: &str, size: u64) -> Version {
        Version { label: label.into(), time: None, size, hash: None, source: PathBuf::new() }
    }

    #[test]
    fn text_diffs_are_unified() {
        let (a, b) = (version("f@1", 8), version("f@2", 8));
        let out = text_diff(&a, &b, b"one\ntwo\n", b"one\n2\n");
        assert_eq!(out, "--- f@1\n+++ f@2\n@@ -1,2 +1,2 @@\n one\n-two\n+2\n");
        assert!(is_text(b"plain\n") && !is_text(b"nul\0") && !is_text(b"\xff\xfe"));
    }

    #[test]
    fn binary_summaries_say_where() {
        let (a, b) = (version("f@1", 4), version("f@2", 6));
        let out = binary_summary(&a, &b, 4, 6, Some(4));
        assert!(
            out.starts_with("Binary files f@1 and f@2 differ\n  f@1: 4 bytes\n  f@2: 6 bytes\n"),
            "{out}"
        );
        assert!(out.contains("f@1 is a prefix of f@2"), "{out}");
        let out = binary_summary(&a, &b, 4, 6, Some(1));
        assert!(out.ends_with("first difference at byte offset 1 (0x1)\n"), "{out}");
        assert_eq!(binary_summary(&a, &b, 4, 4, None), "");
    }

    #[test]
    fn broken_pipes_are_recognised_through_context() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow!("stdout: No space left on device")));
    }
}
