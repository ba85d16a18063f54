//! `genfs snapshot`, `genfs gc` and `genfs stats`: commands on the mount root's attributes.

use super::history::OnMount;
use super::time::{format_age, format_rfc3339, now, parse_rfc3339};
use super::versions::{emit, json_str, stdout_is_terminal, table};
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;

const SNAPSHOTS: &str = "user.genfs.snapshots";
const SNAPSHOT_CREATE: &str = "user.genfs.snapshot.create";
const SNAPSHOT_DELETE: &str = "user.genfs.snapshot.delete";
const GC: &str = "user.genfs.gc";
const STATS: &str = "user.genfs.stats";
const FREE_FLOOR: &str = "user.genfs.free-floor";

/// Which mount a command is about.
#[derive(Args, Debug)]
pub struct MountArg {
    /// Any path on the genfs mount (default: the current directory).
    #[arg(short = 'C', long = "mount", value_name = "PATH", default_value = ".")]
    mount: PathBuf,
}

impl MountArg {
    fn locate(&self) -> anyhow::Result<OnMount> {
        OnMount::locate(&self.mount)
    }
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Snapshot the whole mount as NAME (instant, whatever the size of the tree: it records a
    /// journal sequence number). Needs ownership of the mount root, or root.
    ///
    /// Example: genfs snapshot create before-upgrade -C /tmp/genfs
    Create {
        /// A name: not empty, no `/`, tab or newline, not `.` or `..`.
        name: String,
        #[command(flatten)]
        at: MountArg,
    },
    /// List the snapshots, oldest first: name, sequence number, time, age.
    ///
    /// Example: genfs snapshot list --json
    List {
        /// A JSON array of objects: name, seq, time, path (where the snapshot can be browsed).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: MountArg,
    },
    /// Delete snapshot NAME; the generations only it kept become subject to retention again.
    ///
    /// Example: genfs snapshot delete before-upgrade
    Delete {
        name: String,
        #[command(flatten)]
        at: MountArg,
    },
}

/// One line of `user.genfs.snapshots`.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    name: String,
    seq: u64,
    time: i64,
}

fn parse_snapshots(text: &str) -> Result<Vec<Snapshot>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || format!("line {}: expected NAME<TAB>SEQ<TAB>TIME, got `{line}`", i + 1);
        let mut f = line.split('\t');
        let (Some(name), Some(seq), Some(time), None) = (f.next(), f.next(), f.next(), f.next()) else {
            return Err(bad());
        };
        let seq = seq.parse().map_err(|_| bad())?;
        let time = parse_rfc3339(time).ok_or_else(bad)?;
        out.push(Snapshot { name: name.to_string(), seq, time });
    }
    Ok(out)
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\t', '\n', '\0']) {
        bail!("{name:?}: not a snapshot name (it may not be empty, `.` or `..`, or contain `/`, tab or newline)");
    }
    Ok(())
}

fn read_snapshots(m: &OnMount) -> anyhow::Result<Vec<Snapshot>> {
    parse_snapshots(&m.root_attr(SNAPSHOTS)?)
        .map_err(|e| anyhow!("{}: malformed {SNAPSHOTS}: {e}", m.root.display()))
}

pub fn snapshot(cmd: SnapshotCommand) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create { name, at } => {
            check_name(&name)?;
            let m = at.locate()?;
            m.set_root_attr(
                SNAPSHOT_CREATE,
                &name,
                &format!("create snapshot {name}"),
                |errno| match errno {
                    libc::EEXIST => Some(format!("snapshot {name} already exists")),
                    libc::EPERM | libc::EACCES => Some(format!(
                        "cannot create snapshot {name}: only the owner of the mount root (or root) may"
                    )),
                    _ => None,
                },
            )?;
            let seq = read_snapshots(&m)?.into_iter().find(|s| s.name == name).map(|s| s.seq);
            let seq = seq.map(|s| format!(" at sequence {s}")).unwrap_or_default();
            let view = m.root.join(".genfs/snapshots").join(&name);
            emit(format!("created snapshot {name}{seq}; browse it in {}\n", view.display()).as_bytes())
        }
        SnapshotCommand::List { json, at } => {
            let m = at.locate()?;
            let snaps = read_snapshots(&m)?;
            let out = if json {
                snapshots_json(&snaps, &m)
            } else {
                snapshots_table(&snaps, now(), stdout_is_terminal())
            };
            emit(out.as_bytes())
        }
        SnapshotCommand::Delete { name, at } => {
            check_name(&name)?;
            let m = at.locate()?;
            m.set_root_attr(SNAPSHOT_DELETE, &name, &format!("delete snapshot {name}"), |errno| {
                (errno == libc::ENOENT || errno == libc::ENODATA).then(|| format!("no snapshot named {name}"))
            })?;
            emit(format!("deleted snapshot {name}\n").as_bytes())
        }
    }
}

fn snapshots_table(snaps: &[Snapshot], now: i64, header: bool) -> String {
    let mut rows = Vec::new();
    if header {
        rows.push(["NAME", "SEQ", "TIME", "AGE"].map(String::from).to_vec());
    }
    for s in snaps {
        rows.push(vec![s.name.clone(), s.seq.to_string(), format_rfc3339(s.time), format_age(now - s.time)]);
    }
    table(&rows, &[false, true, false, true])
}

fn snapshots_json(snaps: &[Snapshot], m: &OnMount) -> String {
    let items: Vec<String> = snaps
        .iter()
        .map(|s| {
            let path = m.root.join(".genfs/snapshots").join(&s.name);
            format!(
                "{{\"name\":{},\"seq\":{},\"time\":{},\"path\":{}}}",
                json_str(&s.name),
                s.seq,
                json_str(&format_rfc3339(s.time)),
                json_str(&path.to_string_lossy())
            )
        })
        .collect();
    if items.is_empty() {
        "[]\n".into()
    } else {
        format!("[\n  {}\n]\n", items.join(",\n  "))
    }
}

/// Bytes for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `KEY\tVALUE` lines, in order.
fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| match l.split_once('\t') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// The gc report: the dropped generations (path or inode, generation, size) and the totals.
#[derive(Debug, Default, PartialEq, Eq)]
struct GcReport {
    dropped: Vec<(String, u64, u64)>,
    freed_chunks: Option<u64>,
    freed_bytes: Option<u64>,
    /// Dropped generations of files the caller may not see (not listed).
    hidden: u64,
    /// Dropped generations the report had no room to list.
    unlisted: u64,
    /// Generations dropped for space since the mount: (time, path, generation, size).
    space: Vec<(String, String, u64, u64)>,
    /// Older space drops, only counted.
    space_older: u64,
}

fn parse_gc_report(text: &str) -> Result<GcReport, String> {
    let mut r = GcReport::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let bad = || format!("line {}: `{line}`", i + 1);
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        if let Some(rest) = line.strip_prefix("space\t") {
            // TIME, then the path (which may hold a tab), then the two numbers.
            let (time, rest) = rest.split_once('\t').ok_or_else(bad)?;
            let fields: Vec<&str> = rest.rsplitn(3, '\t').collect();
            let [size, gen, path] = fields[..] else { return Err(bad()) };
            r.space.push((time.to_string(), path.to_string(), num(gen)?, num(size)?));
            continue;
        }
        // The path may itself hold a tab: the last two fields are the numbers.
        let fields: Vec<&str> = line.rsplitn(3, '\t').collect();
        match fields[..] {
            [n, "freed_chunks"] => r.freed_chunks = Some(num(n)?),
            [n, "freed_bytes"] => r.freed_bytes = Some(num(n)?),
            [n, "hidden"] => r.hidden = num(n)?,
            [n, "unlisted"] => r.unlisted = num(n)?,
            [n, "space_older"] => r.space_older = num(n)?,
            [size, gen, path] => r.dropped.push((path.to_string(), num(gen)?, num(size)?)),
            _ => return Err(bad()),
        }
    }
    Ok(r)
}

fn gc_text(r: &GcReport, dry_run: bool) -> String {
    let verb = if dry_run { "would drop" } else { "dropped" };
    let mut out = String::new();
    for (path, gen, size) in &r.dropped {
        out += &format!("{verb} {path} generation {gen} ({})\n", human(*size));
    }
    let total: u64 = r.dropped.iter().map(|d| d.2).sum();
    let n = r.dropped.len();
    let plural = if n == 1 { "" } else { "s" };
    out += &format!("{verb} {n} generation{plural} ({} of file data)", human(total));
    if r.unlisted > 0 {
        out += &format!(", and {} more not listed", r.unlisted);
    }
    if r.hidden > 0 {
        out += &format!(", and {} of files you may not read", r.hidden);
    }
    let freed = if dry_run { "would free" } else { "freed" };
    match (r.freed_chunks, r.freed_bytes) {
        (Some(c), Some(b)) => out += &format!("; {freed} {c} chunks, {} ({b} bytes)\n", human(b)),
        (Some(c), None) => out += &format!("; {freed} {c} chunks\n"),
        (None, Some(b)) => out += &format!("; {freed} {} ({b} bytes)\n", human(b)),
        (None, None) => out += "\n",
    }
    if !r.space.is_empty() || r.space_older > 0 {
        let total: u64 = r.space.iter().map(|d| d.3).sum();
        out += &format!(
            "dropped for space since the mount: {} generations ({} of file data)",
            r.space.len() as u64 + r.space_older,
            human(total)
        );
        if r.space_older > 0 {
            out += &format!(", {} older ones only in the daemon's log", r.space_older);
        }
        out += "\n";
        for (time, path, gen, size) in &r.space {
            out += &format!("  {time} {path} generation {gen} ({})\n", human(*size));
        }
    }
    out
}

/// What `genfs gc` is asked to do.
pub enum GcAction {
    Run {
        dry_run: bool,
    },
    /// Show the last report and the drops for space, running nothing.
    Report,
    /// Set the free-space floor (empty: back to the default).
    SetFreeFloor(String),
}

pub fn gc(action: GcAction, at: &MountArg) -> anyhow::Result<()> {
    let m = at.locate()?;
    let dry_run = match action {
        GcAction::SetFreeFloor(floor) => {
            m.set_root_attr(FREE_FLOOR, floor.trim(), "set the free-space floor", |errno| match errno {
                libc::EINVAL => {
                    Some(format!("`{floor}` is not a floor (say 10%, 500M or 2G; empty: the default)"))
                }
                libc::EPERM | libc::EACCES => {
                    Some("only the owner of the mount root (or root) may set the free-space floor".into())
                }
                _ => None,
            })?;
            let now = m.root_attr(FREE_FLOOR)?;
            return emit(format!("free-space floor: {}\n", now.trim()).as_bytes());
        }
        GcAction::Report => false,
        GcAction::Run { dry_run } => {
            let spinner = super::progress::Progress::start("applying the retention policy");
            m.set_root_attr(GC, if dry_run { "dry-run" } else { "run" }, "run gc", |_| None)?;
            drop(spinner);
            dry_run
        }
    };
    let text = m.root_attr(GC)?;
    if text.is_empty() {
        return emit(b"no gc has run since the mount, and nothing was dropped for space\n");
    }
    let report = parse_gc_report(&text).map_err(|e| anyhow!("{}: malformed {GC}: {e}", m.root.display()))?;
    emit(gc_text(&report, dry_run).as_bytes())
}

/// Logical / stored bytes, if anything is stored.
fn dedup_ratio(pairs: &[(String, String)]) -> Option<f64> {
    let get = |k: &str| pairs.iter().find(|(key, _)| key == k).and_then(|(_, v)| v.parse::<u64>().ok());
    match (get("logical_bytes"), get("stored_bytes")) {
        (Some(l), Some(s)) if s > 0 => Some(l as f64 / s as f64),
        _ => None,
    }
}

fn stats_text(pairs: &[(String, String)]) -> String {
    let mut rows: Vec<Vec<String>> = pairs
        .iter()
        .map(|(k, v)| {
            let shown = match v.parse::<u64>() {
                Ok(n) if k.ends_with("_bytes") => format!("{n} ({})", human(n)),
                _ => v.clone(),
            };
            vec![k.replace('_', " "), shown]
        })
        .collect();
    let ratio = match dedup_ratio(pairs) {
        Some(r) => format!("{r:.2} (logical / stored bytes)"),
        None => "- (nothing stored)".into(),
    };
    rows.push(vec!["dedup ratio".into(), ratio]);
    table(&rows, &[])
}

fn stats_json(pairs: &[(String, String)]) -> String {
    let mut fields: Vec<String> = pairs
        .iter()
        .map(|(k, v)| match v.parse::<u64>() {
            Ok(n) => format!("{}:{n}", json_str(k)),
            Err(_) => format!("{}:{}", json_str(k), json_str(v)),
        })
        .collect();
    let ratio = dedup_ratio(pairs).map(|r| format!("{r:.4}")).unwrap_or_else(|| "null".into());
    fields.push(format!("\"dedup_ratio\":{ratio}"));
    format!("{{{}}}\n", fields.join(","))
}

pub fn stats(json: bool, at: &MountArg) -> anyhow::Result<()> {
    let m = at.locate()?;
    let pairs = parse_pairs(&m.root_attr(STATS)?);
    emit(if json { stats_json(&pairs) } else { stats_text(&pairs) }.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_lines() {
        let s = parse_snapshots("a\t12\t2026-11-22T05:30:00Z\nb c\t40\t2026-11-22T06:00:00Z\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            Snapshot { name: "b c".into(), seq: 40, time: parse_rfc3339("2026-11-22T06:00:00Z").unwrap() }
        );
        assert_eq!(parse_snapshots("").unwrap(), vec![]);
        assert!(parse_snapshots("a\t12\n").is_err());
        assert!(parse_snapshots("a\tx\t2026-11-22T05:30:00Z\n").is_err());
        assert!(parse_snapshots("a\t1\t2026-11-22T05:30:00Z\textra\n").is_err());
        let now = parse_rfc3339("2026-11-22T07:00:00Z").unwrap();
        assert_eq!(
            snapshots_table(&s, now, false),
            "a    12  2026-11-22T05:30:00Z  1h\nb c  40  2026-11-22T06:00:00Z  1h\n"
        );
    }

    #[test]
    fn snapshot_names() {
        assert!(check_name("before-upgrade").is_ok());
        assert!(check_name("with space").is_ok());
        for bad in ["", ".", "..", "a/b", "a\tb", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gc_reports() {
        let text = "docs/a.txt\t3\t1024\n17\t4\t5\nfreed_chunks\t2\nfreed_bytes\t2048\n";
        let r = parse_gc_report(text).unwrap();
        assert_eq!(r.dropped, vec![("docs/a.txt".into(), 3, 1024), ("17".into(), 4, 5)]);
        assert_eq!((r.freed_chunks, r.freed_bytes), (Some(2), Some(2048)));
        let out = gc_text(&r, false);
        assert_eq!(
            out,
            "dropped docs/a.txt generation 3 (1.0 KiB)\ndropped 17 generation 4 (5 B)\n\
             dropped 2 generations (1.0 KiB of file data); freed 2 chunks, 2.0 KiB (2048 bytes)\n"
        );
        assert!(gc_text(&r, true).starts_with("would drop docs/a.txt"));
        let empty = parse_gc_report("freed_chunks\t0\nfreed_bytes\t0\n").unwrap();
        assert_eq!(
            gc_text(&empty, false),
            "dropped 0 generations (0 B of file data); freed 0 chunks, 0 B (0 bytes)\n"
        );
        assert!(parse_gc_report("a\tb\tc\n").is_err());
        assert!(parse_gc_report("freed_chunks\tmany\n").is_err());
        assert_eq!(
            parse_gc_report("tab\tin name\t2\t9\n").unwrap().dropped,
            vec![("tab\tin name".into(), 2, 9)]
        );
        let many = parse_gc_report("a\t1\t5\nunlisted\t9\nfreed_chunks\t1\nfreed_bytes\t5\n").unwrap();
        assert!(
            gc_text(&many, false).contains("dropped 1 generation (5 B of file data), and 9 more not listed")
        );
        let space = "freed_chunks\t0\nfreed_bytes\t0\nspace_older\t3\n\
                     space\t2026-12-04T02:00:00Z\tlog\tfile\t7\t2048\n";
        let r = parse_gc_report(space).unwrap();
        assert_eq!(r.space, vec![("2026-12-04T02:00:00Z".into(), "log\tfile".into(), 7, 2048)]);
        assert!(gc_text(&r, false).ends_with(
            "dropped for space since the mount: 4 generations (2.0 KiB of file data), 3 older ones \
             only in the daemon's log\n  2026-12-04T02:00:00Z log\tfile generation 7 (2.0 KiB)\n"
        ));
    }

    #[test]
    fn stats_show_the_dedup_ratio() {
        let pairs = parse_pairs(
            "files\t3\ngenerations\t10\nlogical_bytes\t3072\nstored_bytes\t1024\nchunks\t4\nsnapshots\t0\n",
        );
        assert_eq!(dedup_ratio(&pairs), Some(3.0));
        let text = stats_text(&pairs);
        assert!(text.contains("logical bytes  3072 (3.0 KiB)\n"), "{text}");
        assert!(text.ends_with("dedup ratio    3.00 (logical / stored bytes)\n"), "{text}");
        assert_eq!(
            stats_json(&pairs),
            "{\"files\":3,\"generations\":10,\"logical_bytes\":3072,\"stored_bytes\":1024,\"chunks\":4,\"snapshots\":0,\"dedup_ratio\":3.0000}\n"
        );
        let none = parse_pairs("logical_bytes\t0\nstored_bytes\t0\n");
        assert!(stats_json(&none).ends_with("\"dedup_ratio\":null}\n"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(256 << 20), "256.0 MiB");
        assert_eq!(human(u64::MAX), "16.0 EiB");
    }
}
