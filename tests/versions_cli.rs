//! The version commands of the `genfs` CLI (issue 4) against a real mount: log, cat, diff,
//! restore, restore --tree, snapshot, gc, stats, and their errors.

use crate::util::{genfs_bin, getfattr, write_file, Mounted};
use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn genfs<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(genfs_bin()).args(args).stdin(Stdio::null()).output().expect("run genfs")
}

/// Runs a command that must succeed; returns its stdout.
fn ok<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let out = genfs(&args);
    assert!(out.status.success(), "genfs {shown:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn ok_text<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    String::from_utf8(ok(args)).expect("utf-8 output")
}

/// Runs a command that must fail with one line `genfs: ...`; returns that line.
fn fails<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let out = genfs(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "genfs {shown:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.starts_with("genfs: ") && err.lines().count() == 1, "genfs {shown:?}: not one line: {err:?}");
    err.trim_end().to_string()
}

fn at(path: &Path, gen: impl std::fmt::Display) -> String {
    format!("{}@{gen}", path.display())
}

/// One line of the log xattr, all pages followed.
struct Line {
    gen: u64,
    time: String,
    size: u64,
    hash: String,
    read_path: String,
}

fn xattr_log(path: &Path) -> Vec<Line> {
    let mut pages = Vec::new();
    let mut attr = "user.genfs.log".to_string();
    loop {
        let text = getfattr(path, &attr).unwrap_or_else(|| panic!("{}: no {attr}", path.display()));
        let mut next = None;
        let mut page = Vec::new();
        for l in text.lines() {
            if let Some(more) = l.strip_prefix("#more\t") {
                next = Some(more.to_string());
                continue;
            }
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 5, "log line {l:?}");
            page.push(Line {
                gen: f[0].parse().unwrap(),
                time: f[1].into(),
                size: f[2].parse().unwrap(),
                hash: f[3].into(),
                read_path: f[4].into(),
            });
        }
        pages.push(page);
        match next {
            Some(n) => attr = n,
            None => break,
        }
    }
    pages.into_iter().rev().flatten().collect()
}

fn current_gen(path: &Path) -> u64 {
    getfattr(path, "user.genfs.generation").expect("generation").trim().parse().unwrap()
}

/// Ten lines, line `i % 10` changed: every pair of versions differs in one or two lines.
fn text_version(i: usize) -> String {
    (0..10)
        .map(|k| if k == i % 10 { format!("changed in version {i}\n") } else { format!("line {k}\n") })
        .collect()
}

#[test]
fn log_cat_and_diff_agree_with_the_read_paths() {
    let m = Mounted::new("vcli-log");
    let f = m.path("notes.txt");
    let versions: Vec<String> = (1..=30).map(text_version).collect();
    for v in &versions {
        write_file(&f, v.as_bytes()).unwrap();
    }

    // The log: 30 lines, each READ_PATH reads back that generation's bytes.
    let log = xattr_log(&f);
    assert_eq!(log.len(), 30, "a file closed 30 times has 30 log lines");
    for (line, v) in log.iter().zip(&versions) {
        assert_eq!(std::fs::read(m.mnt.join(&line.read_path)).unwrap(), v.as_bytes(), "gen {}", line.gen);
        assert_eq!(line.size, v.len() as u64);
        assert_eq!(line.hash.len(), 64);
    }
    assert_eq!(log.last().unwrap().gen, current_gen(&f));

    // genfs log: one row per generation (no header into a pipe), the same numbers.
    let table = ok_text([OsStr::new("log"), f.as_os_str()]);
    let rows: Vec<Vec<&str>> = table.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 30, "{table}");
    for (row, line) in rows.iter().zip(&log) {
        assert_eq!(row.len(), 5, "{row:?}");
        assert_eq!(row[0], line.gen.to_string());
        assert_eq!(row[1], line.time);
        assert_eq!(row[2], line.size.to_string());
        assert_eq!(row[3], &line.hash[..12]);
        assert!(row[4].ends_with('s') || row[4].ends_with('m'), "age {}", row[4]);
    }
    let json = ok_text([OsStr::new("log"), OsStr::new("--json"), f.as_os_str()]);
    assert!(json.trim_start().starts_with('[') && json.trim_end().ends_with(']'), "{json}");
    assert_eq!(json.matches("\"gen\":").count(), 30);
    assert_eq!(json.matches("\"current\":true").count(), 1);

    // genfs cat: every generation by number, the current one, @-1, @-K and @TIME.
    for (line, v) in log.iter().zip(&versions) {
        assert_eq!(ok(["cat".to_string(), at(&f, line.gen)]), v.as_bytes(), "cat gen {}", line.gen);
    }
    assert_eq!(ok([OsStr::new("cat"), f.as_os_str()]), versions[29].as_bytes());
    assert_eq!(ok(["cat".to_string(), at(&f, -1)]), versions[28].as_bytes());
    assert_eq!(ok(["cat".to_string(), at(&f, -29)]), versions[0].as_bytes());
    let newest = &log.last().unwrap().time;
    assert_eq!(ok(["cat".to_string(), at(&f, newest)]), versions[29].as_bytes());

    // genfs diff: a unified diff whose lines are those of the two read paths.
    let (a, b) = (&log[3], &log[17]);
    let diff = ok_text(["diff".to_string(), at(&f, a.gen), at(&f, b.gen)]);
    let removed: Vec<&str> = diff.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).collect();
    let added: Vec<&str> = diff.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).collect();
    let old: Vec<String> = versions[3].lines().map(String::from).collect();
    let new: Vec<String> = versions[17].lines().map(String::from).collect();
    let only_old: Vec<String> = old.iter().filter(|l| !new.contains(l)).map(|l| format!("-{l}")).collect();
    let only_new: Vec<String> = new.iter().filter(|l| !old.contains(l)).map(|l| format!("+{l}")).collect();
    assert_eq!(removed, only_old, "{diff}");
    assert_eq!(added, only_new, "{diff}");
    assert!(diff.starts_with(&format!("--- {}", at(&f, a.gen))), "{diff}");
    assert!(diff.contains(&format!("\n+++ {}", at(&f, b.gen))), "{diff}");
    assert!(diff.contains("\n@@ -"), "{diff}");
    // FILE alone is the current generation; identical sides print nothing.
    let diff = ok_text(["diff".to_string(), at(&f, -1), f.display().to_string()]);
    assert!(diff.contains("-changed in version 29") && diff.contains("+changed in version 30"), "{diff}");
    assert_eq!(ok_text(["diff".to_string(), at(&f, log[29].gen), f.display().to_string()]), "");
}

#[test]
fn binary_diffs_are_summarised() {
    let m = Mounted::new("vcli-bindiff");
    let f = m.path("blob.bin");
    let mut data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    data[7] = 0;
    write_file(&f, &data).unwrap();
    data[4321] ^= 0xff;
    data.extend_from_slice(b"tail");
    write_file(&f, &data).unwrap();
    let out = ok_text(["diff".to_string(), at(&f, -1), f.display().to_string()]);
    assert!(out.starts_with("Binary files "), "{out}");
    assert!(out.contains("5000 bytes") && out.contains("5004 bytes"), "{out}");
    assert!(out.contains("first difference at byte offset 4321"), "{out}");
}

#[test]
fn restore_makes_a_new_generation_and_spares_open_readers() {
    let m = Mounted::new("vcli-restore");
    let f = m.path("r.txt");
    for i in 1..=5 {
        write_file(&f, format!("version {i}\n").as_bytes()).unwrap();
    }
    let log = xattr_log(&f);
    assert_eq!(log.len(), 5);
    let mut reader = std::fs::File::open(&f).unwrap();

    let out = ok_text(["restore".to_string(), at(&f, log[1].gen)]);
    assert!(out.contains(&format!("restored generation {}", log[1].gen)), "{out}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version 2\n");
    let after = xattr_log(&f);
    assert_eq!(after.len(), 6, "the log grows by one");
    assert_eq!(after[5].gen, current_gen(&f));
    assert_eq!(after[5].hash, log[1].hash, "same content, same digest");
    assert_eq!(ok(["cat".to_string(), at(&f, after[5].gen)]), b"version 2\n");

    // The descriptor opened before the restore still reads its generation.
    let mut seen = String::new();
    reader.rewind().unwrap();
    reader.read_to_string(&mut seen).unwrap();
    assert_eq!(seen, "version 5\n");
    assert_eq!(reader.metadata().unwrap().len(), 10);

    // @-1 is the generation before the current one: version 5 again.
    ok(["restore".to_string(), at(&f, -1)]);
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "version 5\n");
    assert_eq!(xattr_log(&f).len(), 7);
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// An RFC 3339 time (UTC) for whole seconds since the epoch, computed independently of the CLI
/// with date(1).
pub(crate) fn rfc3339(secs: u64) -> String {
    let out =
        Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A whole second T such that everything committed so far is before T and everything committed
/// after this returns is after T (commit times have second resolution).
pub(crate) fn instant_between() -> u64 {
    std::thread::sleep(Duration::from_millis(1100));
    let t = unix_now().floor() as u64;
    while unix_now() < (t + 1) as f64 + 0.05 {
        std::thread::sleep(Duration::from_millis(50));
    }
    t
}

#[test]
fn restore_tree_brings_back_a_directory_as_of_a_time() {
    let m = Mounted::new("vcli-tree");
    let d = m.path("proj");
    std::fs::create_dir_all(d.join("sub")).unwrap();
    write_file(&d.join("a"), b"a at T\n").unwrap();
    write_file(&d.join("b"), b"b at T\n").unwrap();
    write_file(&d.join("same"), b"unchanged\n").unwrap();
    write_file(&d.join("sub/c"), b"c at T\n").unwrap();
    let t = rfc3339(instant_between());

    write_file(&d.join("a"), b"a later\n").unwrap();
    std::fs::remove_file(d.join("b")).unwrap();
    write_file(&d.join("sub/c"), b"c later, longer\n").unwrap();
    write_file(&d.join("new"), b"created after T\n").unwrap();
    let a_gens = xattr_log(&d.join("a")).len();
    let same_gens = xattr_log(&d.join("same")).len();

    // The file forms agree with the view.
    assert_eq!(ok(["cat".to_string(), format!("{}@{t}", d.join("a").display())]), b"a at T\n");
    assert_eq!(std::fs::read(m.mnt.join(".genfs/at").join(&t).join("proj/a")).unwrap(), b"a at T\n");

    let out = genfs(["restore".to_string(), "--tree".into(), format!("{}@{t}", d.display())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rewrote") && err.contains("recreated"), "progress on stderr: {err}");
    assert_eq!(std::fs::read(d.join("a")).unwrap(), b"a at T\n");
    assert_eq!(std::fs::read(d.join("b")).unwrap(), b"b at T\n");
    assert_eq!(std::fs::read(d.join("sub/c")).unwrap(), b"c at T\n");
    assert_eq!(std::fs::read(d.join("new")).unwrap(), b"created after T\n", "files made after T stay");
    assert_eq!(xattr_log(&d.join("a")).len(), a_gens + 1, "a restore is a new generation");
    assert_eq!(xattr_log(&d.join("same")).len(), same_gens, "identical files are not rewritten");

    // A directory that did not exist then, and a TIME that is not one.
    std::fs::create_dir(m.path("later")).unwrap();
    let err = fails(["restore".to_string(), "--tree".into(), format!("{}@{t}", m.path("later").display())]);
    assert!(err.contains("did not exist at"), "{err}");
    let err = fails(["restore".to_string(), "--tree".into(), format!("{}@3", d.display())]);
    assert!(err.contains("--tree needs DIR@TIME"), "{err}");
}

#[test]
fn errors_name_the_path_and_the_cause() {
    let m = Mounted::new("vcli-errors");
    let f = m.path("e.txt");
    for i in 0..3 {
        write_file(&f, format!("{i}").as_bytes()).unwrap();
    }
    let log = xattr_log(&f);
    let (first, last) = (log[0].gen, log[2].gen);

    let err = fails(["cat".to_string(), at(&f, 99)]);
    assert_eq!(err, format!("genfs: {}: has no generation 99 (kept: {first}..{last})", f.display()));
    let err = fails(["cat".to_string(), at(&f, -3)]);
    assert!(err.contains("has no generation @-3"), "{err}");
    let err = fails(["restore".to_string(), f.display().to_string()]);
    assert!(err.contains("which generation?"), "{err}");
    let err = fails(["cat".to_string(), at(&f, "yesterday")]);
    assert!(err.contains("e.txt@yesterday") && err.contains("No such file or directory"), "{err}");
    let err = fails(["log".to_string(), m.path("missing").display().to_string()]);
    assert!(err.ends_with("missing: No such file or directory"), "{err}");
    let err = fails([OsStr::new("log"), m.mnt.as_os_str()]);
    assert!(err.contains("is a directory"), "{err}");

    // Not on a genfs mount: a file and a directory elsewhere.
    let outside = tempfile::tempdir().unwrap();
    let plain = outside.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    let err = fails([OsStr::new("log"), plain.as_os_str()]);
    assert_eq!(err, format!("genfs: {}: not on a genfs mount", plain.display()));
    let err = fails([OsStr::new("stats"), OsStr::new("-C"), outside.path().as_os_str()]);
    assert!(err.ends_with("not on a genfs mount"), "{err}");

    // A name with `@` in it: taken whole when the part before the `@` does not exist.
    let odd = m.path("mail@2");
    write_file(&odd, b"odd name").unwrap();
    assert_eq!(ok([OsStr::new("cat"), odd.as_os_str()]), b"odd name");
    let odd2 = m.path("user@host");
    write_file(&odd2, b"one").unwrap();
    write_file(&odd2, b"two").unwrap();
    assert_eq!(ok(["cat".to_string(), format!("{}@-1", odd2.display())]), b"one");
}

#[test]
fn log_into_a_closed_pipe_is_quiet() {
    let m = Mounted::new("vcli-pipe");
    let f = m.path("p");
    for i in 0..5 {
        write_file(&f, &[i]).unwrap();
    }
    for cmd in [vec!["log".to_string()], vec!["cat".to_string()]] {
        let mut child = Command::new(genfs_bin())
            .args(&cmd)
            .arg(&f)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{cmd:?}");
    }
    let (okay, head) = crate::util::sh(&format!("{} log {} | head -n 2", genfs_bin(), f.display()));
    assert!(okay);
    assert_eq!(head.lines().count(), 2);
}

#[test]
fn long_logs_are_paged_and_listed_whole() {
    let m = Mounted::new("vcli-paged");
    let f = m.path("many");
    let n = 800; // ~100 bytes a line: more than one 64 KiB page
    for i in 0..n {
        write_file(&f, format!("{i}").as_bytes()).unwrap();
    }
    let first_page = getfattr(&f, "user.genfs.log").unwrap();
    assert!(first_page.len() <= 65536);
    assert!(first_page.lines().last().unwrap().starts_with("#more\tuser.genfs.log.before."), "not paged");
    let log = xattr_log(&f);
    assert_eq!(log.len(), n);
    assert!(log.windows(2).all(|w| w[0].gen < w[1].gen), "oldest first, no overlap");
    let table = ok_text([OsStr::new("log"), f.as_os_str()]);
    let gens: Vec<u64> =
        table.lines().map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(gens, log.iter().map(|l| l.gen).collect::<Vec<_>>());
    assert_eq!(ok(["cat".to_string(), at(&f, log[0].gen)]), b"0");
}

#[test]
fn snapshots_gc_and_stats() {
    let m = Mounted::new("vcli-snap");
    let f = m.path("s.txt");
    write_file(&f, b"in the snapshot").unwrap();
    let mnt = m.mnt.display().to_string();

    let out = ok_text(["snapshot", "create", "first", "-C", &mnt]);
    assert!(out.contains("created snapshot first"), "{out}");
    write_file(&f, b"after the snapshot").unwrap();
    assert_eq!(std::fs::read(m.path(".genfs/snapshots/first/s.txt")).unwrap(), b"in the snapshot");
    let list = ok_text(["snapshot", "list", "-C", &mnt]);
    let row: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(list.lines().count(), 1, "{list}");
    assert_eq!(row[0], "first");
    assert!(row[1].parse::<u64>().is_ok() && row[2].ends_with('Z'), "{list}");
    let json = ok_text(["snapshot", "list", "--json", "-C", &mnt]);
    assert!(json.contains("\"name\":\"first\"") && json.contains(".genfs/snapshots/first"), "{json}");
    let err = fails(["snapshot", "create", "first", "-C", &mnt]);
    assert_eq!(err, format!("genfs: {mnt}: snapshot first already exists"));
    let err = fails(["snapshot", "create", "a/b", "-C", &mnt]);
    assert!(err.contains("not a snapshot name"), "{err}");
    ok(["snapshot", "delete", "first", "-C", &mnt]);
    assert_eq!(ok_text(["snapshot", "list", "-C", &mnt]), "");
    let err = fails(["snapshot", "delete", "first", "-C", &mnt]);
    assert_eq!(err, format!("genfs: {mnt}: no snapshot named first"));

    let stats = ok_text(["stats", "-C", &mnt]);
    let keys = [
        "files",
        "generations",
        "logical bytes",
        "stored bytes",
        "live bytes",
        "history bytes",
        "gc would free bytes",
        "chunks",
        "snapshots",
        "fs free bytes",
        "free floor bytes",
        "dedup ratio",
    ];
    for key in keys {
        assert!(stats.contains(key), "{key}: {stats}");
    }
    // The floor: set, shown, refused when nonsense, back to the default.
    assert_eq!(ok_text(["gc", "--free-floor", "2048M", "-C", &mnt]), "free-space floor: 2G\n");
    assert!(ok_text(["stats", "--json", "-C", &mnt]).contains("\"free_floor\":\"2G\""));
    let err = fails(["gc", "--free-floor", "lots", "-C", &mnt]);
    assert!(err.contains("`lots` is not a floor"), "{err}");
    assert_eq!(ok_text(["gc", "--free-floor", "", "-C", &mnt]), "free-space floor: 10%\n");
    let json = ok_text(["stats", "--json", "-C", &mnt]);
    assert!(
        json.starts_with('{') && json.contains("\"generations\":") && json.contains("\"dedup_ratio\":"),
        "{json}"
    );

    // gc from a path inside the mount, not the root.
    let out = ok_text([OsStr::new("gc"), OsStr::new("--dry-run"), OsStr::new("-C"), f.as_os_str()]);
    assert!(out.contains("would drop"), "{out}");
    let out = ok_text(["gc", "-C", &mnt]);
    assert!(out.contains("dropped") && out.contains("freed"), "{out}");
    assert_eq!(ok_text(["gc", "--report", "-C", &mnt]), out, "the report of the last run");
}
