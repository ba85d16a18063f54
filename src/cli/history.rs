//! A file's history as the version xattrs show it (docs/xattrs.md): finding the genfs mount a
//! path is on, reading the paged `user.genfs.log`, and the `FILE@GEN` argument syntax.

use super::time::{format_rfc3339, parse_rfc3339, parse_user_time};
use anyhow::{anyhow, bail, Context};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const GENERATION: &str = "user.genfs.generation";
pub const LOG: &str = "user.genfs.log";
pub const LOG_BEFORE: &str = "user.genfs.log.before.";
pub const SEQ: &str = "user.genfs.seq";

/// The shape of a `FILE@GEN` suffix, for error messages.
pub const GEN_FORMS: &str =
    "FILE@N, FILE@-K (K before the current one) or FILE@TIME (RFC 3339, e.g. 2026-11-22T05:30:00Z)";

/// An `io::Error` as a cause: `No such file or directory`, without Rust's ` (os error 2)`.
pub fn cause(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// One line of the log: one kept generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub gen: u64,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
    pub size: u64,
    /// BLAKE3 digest, 64 lowercase hex digits.
    pub hash: String,
    /// Where this generation can be read, relative to the mount root.
    pub read_path: String,
}

/// One value of `user.genfs.log` or `user.genfs.log.before.G`.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// The `G` of the continuation line: older generations are in `user.genfs.log.before.G`.
    pub before: Option<u64>,
}

fn parse_entry(line: &str) -> Result<Entry, String> {
    let fields: Vec<&str> = line.splitn(5, '\t').collect();
    let [gen, time, size, hash, read_path] = fields[..] else {
        return Err(format!("expected 5 tab-separated fields, got {}", fields.len()));
    };
    let gen = gen.parse().map_err(|_| format!("`{gen}` is not a generation number"))?;
    let time = parse_rfc3339(time).ok_or_else(|| format!("`{time}` is not an RFC 3339 time"))?;
    let size = size.parse().map_err(|_| format!("`{size}` is not a size"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{hash}` is not a 64-digit hex digest"));
    }
    let read_path = read_path.trim_start_matches('/');
    if read_path.is_empty() || read_path.split('/').any(|c| c == "..") {
        return Err(format!("`{read_path}` is not a path under the mount root"));
    }
    Ok(Entry { gen, time, size, hash: hash.to_ascii_lowercase(), read_path: read_path.to_string() })
}

/// Parses one page of the log; the continuation line may only come last.
pub fn parse_log_page(text: &str) -> Result<Page, String> {
    let mut page = Page { entries: Vec::new(), before: None };
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(text).split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.is_empty() && lines.len() == 1 {
            break; // an empty log
        }
        let at = |e: String| format!("line {}: {e}", i + 1);
        if let Some(rest) = line.strip_prefix("#more\t") {
            if i + 1 != lines.len() {
                return Err(at("the continuation line is not the last one".into()));
            }
            let g = rest.strip_prefix(LOG_BEFORE).and_then(|g| g.parse().ok());
            page.before = Some(g.ok_or_else(|| at(format!("bad continuation `{rest}`")))?);
        } else {
            let entry = parse_entry(line).map_err(at)?;
            if page.entries.last().is_some_and(|prev: &Entry| prev.gen >= entry.gen) {
                return Err(at(format!("generation {} is not newer than the line before", entry.gen)));
            }
            page.entries.push(entry);
        }
    }
    Ok(page)
}

/// Reads every page of a file's log, following the continuation lines: all kept generations,
/// oldest first. `get` reads one attribute (a seam for tests).
pub fn read_log(mut get: impl FnMut(&str) -> anyhow::Result<String>) -> anyhow::Result<Vec<Entry>> {
    let mut pages = Vec::new();
    let mut attr = LOG.to_string();
    let mut bound: Option<u64> = None;
    loop {
        let text = get(&attr)?;
        let page = parse_log_page(&text).map_err(|e| anyhow!("malformed {attr}: {e}"))?;
        if let (Some(b), Some(last)) = (bound, page.entries.last()) {
            if last.gen >= b {
                bail!("malformed {attr}: it lists generation {}", last.gen);
            }
        }
        let next = page.before;
        pages.push(page.entries);
        match next {
            None => break,
            Some(g) if bound.is_some_and(|b| g >= b) => {
                bail!("malformed {attr}: its continuation does not go back (before.{g})")
            }
            Some(g) => {
                bound = Some(g);
                attr = format!("{LOG_BEFORE}{g}");
            }
        }
    }
    Ok(pages.into_iter().rev().flatten().collect())
}

/// Which generation a `FILE@...` argument names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenSpec {
    /// No suffix: the current generation.
    Current,
    /// `@N`.
    Number(u64),
    /// `@-K`: K generations before the current one (`@-1` is the previous one).
    Back(u64),
    /// `@TIME`: the newest generation committed at or before TIME (seconds since the epoch).
    At(i64),
}

impl GenSpec {
    /// What follows an `@`, if it is one of the forms.
    pub fn parse(s: &str) -> Option<GenSpec> {
        let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
        if digits(s) {
            return s.parse().ok().map(GenSpec::Number);
        }
        if let Some(k) = s.strip_prefix('-').filter(|k| digits(k)) {
            return k.parse().ok().filter(|&k| k > 0).map(GenSpec::Back);
        }
        parse_user_time(s).map(GenSpec::At)
    }
}

/// Splits `FILE@GEN` at its last `@` when what follows is a generation form; otherwise the whole
/// argument is the path (file names may contain `@`). If the part before the `@` does not exist
/// but the whole argument does, the whole argument is the path.
pub fn split_spec(arg: &OsStr, exists: impl Fn(&Path) -> bool) -> (PathBuf, GenSpec) {
    let bytes = arg.as_bytes();
    let whole = || (PathBuf::from(arg), GenSpec::Current);
    let Some(at) = bytes.iter().rposition(|&b| b == b'@') else { return whole() };
    let (base, suffix) = (&bytes[..at], &bytes[at + 1..]);
    let Some(spec) = std::str::from_utf8(suffix).ok().and_then(GenSpec::parse) else { return whole() };
    if base.is_empty() {
        return whole();
    }
    let base = PathBuf::from(OsString::from_vec(base.to_vec()));
    if !exists(&base) && exists(Path::new(arg)) {
        return whole();
    }
    (base, spec)
}

/// The entry a spec names among `entries` (oldest first), given the current generation; the
/// error is a cause to put after the file's name.
pub fn resolve(entries: &[Entry], current: u64, spec: GenSpec) -> Result<&Entry, String> {
    let kept = || match (entries.first(), entries.last()) {
        (Some(a), Some(b)) if a.gen == b.gen => format!("kept: {}", a.gen),
        (Some(a), Some(b)) => format!("kept: {}..{}", a.gen, b.gen),
        _ => "none kept".to_string(),
    };
    let cur = entries.iter().rposition(|e| e.gen == current);
    match spec {
        GenSpec::Current => cur
            .map(|i| &entries[i])
            .ok_or_else(|| format!("its current generation {current} is not in its log ({})", kept())),
        GenSpec::Number(n) => entries
            .binary_search_by_key(&n, |e| e.gen)
            .map(|i| &entries[i])
            .map_err(|_| format!("has no generation {n} ({})", kept())),
        GenSpec::Back(k) => {
            let cur = cur.unwrap_or(entries.len().saturating_sub(1));
            usize::try_from(k).ok().and_then(|k| cur.checked_sub(k)).map(|i| &entries[i]).ok_or_else(|| {
                format!("has no generation @-{k}: {cur} kept before the current one ({})", kept())
            })
        }
        GenSpec::At(t) => entries.iter().rev().find(|e| e.time <= t).ok_or_else(|| match entries.first() {
            Some(first) => format!(
                "has no generation at or before {} (oldest kept: generation {}, {})",
                format_rfc3339(t),
                first.gen,
                format_rfc3339(first.time)
            ),
            None => format!("has no generation at or before {} (none kept)", format_rfc3339(t)),
        }),
    }
}

/// Reads a virtual attribute as text: `None` if the file does not have it (ENODATA).
///
/// One call with room for the largest value the kernel passes (64 KiB): the usual probe for
/// the size first costs two more requests, and each makes the daemon build the value (a log
/// page is built from the whole log).
pub fn get_text(path: &Path, name: &str) -> io::Result<Option<String>> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let c_name = std::ffi::CString::new(name)?;
    let mut buf = vec![0u8; crate::versions::VALUE_BYTES_MAX];
    // SAFETY: NUL-terminated strings and a buffer of the length passed.
    let n = unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(e) };
    }
    buf.truncate(n as usize);
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

/// A path on a genfs mount: as the user wrote it (for messages), and the mount root.
#[derive(Debug, Clone)]
pub struct OnMount {
    pub path: PathBuf,
    pub root: PathBuf,
    pub is_dir: bool,
    pub is_file: bool,
}

impl OnMount {
    /// Finds the mount `path` is on (walking up from its canonical path while `st_dev` stays the
    /// same) and checks that it is genfs.
    pub fn locate(path: &Path) -> anyhow::Result<OnMount> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::NotFound if path.as_os_str().as_bytes().contains(&b'@') => {
                    format!("; to name a generation, use {GEN_FORMS}")
                }
                _ => String::new(),
            };
            anyhow!("{shown}: {}{hint}", cause(&e))
        })?;
        let abs = std::fs::canonicalize(path).map_err(|e| anyhow!("{shown}: {}", cause(&e)))?;
        let mut root = abs.as_path();
        while let Some(parent) = root.parent() {
            match std::fs::metadata(parent) {
                Ok(m) if m.dev() == meta.dev() => root = parent,
                _ => break,
            }
        }
        let not_genfs = || anyhow!("{shown}: not on a genfs mount");
        if meta.is_file() {
            match xattr::get(path, GENERATION) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(not_genfs()),
                Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Err(not_genfs()),
                Err(e) => bail!("{shown}: cannot read {GENERATION}: {}", cause(&e)),
            }
        }
        match xattr::get(root, SEQ) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(not_genfs()),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Err(not_genfs()),
            Err(e) => bail!("{shown}: cannot read {SEQ} on {}: {}", root.display(), cause(&e)),
        }
        Ok(OnMount {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
            is_dir: meta.is_dir(),
            is_file: meta.is_file(),
        })
    }

    /// A root attribute as text; a missing one is an error.
    pub fn root_attr(&self, name: &str) -> anyhow::Result<String> {
        get_text(&self.root, name)
            .map_err(|e| anyhow!("{}: cannot read {name}: {}", self.root.display(), cause(&e)))?
            .ok_or_else(|| {
                anyhow!("{}: has no {name} (is the daemon older than this CLI?)", self.root.display())
            })
    }

    /// Sets a control attribute on the mount root; `what` names the action for errors, and
    /// `explain` may say what an errno means for it.
    pub fn set_root_attr(
        &self,
        name: &str,
        value: &str,
        what: &str,
        explain: impl Fn(i32) -> Option<String>,
    ) -> anyhow::Result<()> {
        xattr::set(&self.root, name, value.as_bytes()).map_err(|e| {
            let why = e
                .raw_os_error()
                .and_then(&explain)
                .unwrap_or_else(|| format!("cannot {what}: {}", cause(&e)));
            anyhow!("{}: {why}", self.root.display())
        })
    }
}

/// A regular file's history: the current generation and every kept one.
#[derive(Debug)]
pub struct History {
    pub file: OnMount,
    pub current: u64,
    pub entries: Vec<Entry>,
}

impl History {
    pub fn read(path: &Path) -> anyhow::Result<History> {
        let file = OnMount::locate(path)?;
        let shown = path.display();
        if !file.is_file {
            let what = if file.is_dir { "a directory" } else { "not a regular file" };
            bail!("{shown}: is {what} (only regular files have generations)");
        }
        let attr = |name: &str| -> anyhow::Result<String> {
            get_text(path, name)
                .map_err(|e| anyhow!("cannot read {name}: {}", cause(&e)))?
                .ok_or_else(|| anyhow!("has no {name}"))
        };
        let current = attr(GENERATION).with_context(|| shown.to_string())?;
        let current = current
            .trim()
            .parse()
            .map_err(|_| anyhow!("{shown}: {GENERATION} is `{}`, not a number", current.trim()))?;
        let entries = read_log(attr).with_context(|| shown.to_string())?;
        Ok(History { file, current, entries })
    }

    pub fn resolve(&self, spec: GenSpec) -> anyhow::Result<&Entry> {
        resolve(&self.entries, self.current, spec).map_err(|e| anyhow!("{}: {e}", self.file.path.display()))
    }

    /// The absolute path at which `entry` can be read.
    pub fn read_path(&self, entry: &Entry) -> PathBuf {
        self.file.root.join(&entry.read_path)
    }
}

/// Parses a `FILE@GEN` argument against the file system (see [`split_spec`]).
pub fn file_spec(arg: &OsStr) -> (PathBuf, GenSpec) {
    split_spec(arg, |p| std::fs::symlink_metadata(p).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn line(gen: u64, time: &str, size: u64) -> String {
        format!("{gen}\t{time}\t{size}\t{H1}\t.genfs/gen/17/{gen}\n")
    }

    fn entry(gen: u64, time: &str) -> Entry {
        Entry {
            gen,
            time: parse_rfc3339(time).unwrap(),
            size: gen * 10,
            hash: H1.into(),
            read_path: format!(".genfs/gen/17/{gen}"),
        }
    }

    #[test]
    fn parses_a_page() {
        let text = line(3, "2026-11-22T05:30:00Z", 5) + &line(4, "2026-11-22T05:31:00Z", 0);
        let page = parse_log_page(&text).unwrap();
        assert_eq!(page.before, None);
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.entries[0].gen, 3);
        assert_eq!(page.entries[0].size, 5);
        assert_eq!(page.entries[0].time, parse_rfc3339("2026-11-22T05:30:00Z").unwrap());
        assert_eq!(page.entries[1].read_path, ".genfs/gen/17/4");
        assert_eq!(parse_log_page("").unwrap(), Page { entries: vec![], before: None });
        // Without the final newline too.
        assert_eq!(parse_log_page(text.trim_end()).unwrap().entries.len(), 2);
    }

    #[test]
    fn parses_a_continuation() {
        let text = line(40, "2026-11-22T05:30:00Z", 5) + "#more\tuser.genfs.log.before.40\n";
        let page = parse_log_page(&text).unwrap();
        assert_eq!(page.before, Some(40));
        assert_eq!(page.entries.len(), 1);
    }

    #[test]
    fn rejects_malformed_pages() {
        let ok = line(1, "2026-11-22T05:30:00Z", 5);
        for bad in [
            "1\t2026-11-22T05:30:00Z\t5\n".to_string(),
            format!("x\t2026-11-22T05:30:00Z\t5\t{H1}\tp\n"),
            format!("1\tyesterday\t5\t{H1}\tp\n"),
            format!("1\t2026-11-22T05:30:00Z\t-5\t{H1}\tp\n"),
            "1\t2026-11-22T05:30:00Z\t5\tabc\tp\n".to_string(),
            format!("1\t2026-11-22T05:30:00Z\t5\t{H1}\t../../etc/passwd\n"),
            format!("1\t2026-11-22T05:30:00Z\t5\t{H1}\t\n"),
            "#more\tuser.genfs.log.before.1\n".to_string() + &ok,
            ok.clone() + "#more\tuser.genfs.gc\n",
            ok.clone() + &ok,
            ok.clone() + "\n" + &ok,
        ] {
            assert!(parse_log_page(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn follows_pages_oldest_first() {
        let newest = line(5, "2026-11-22T05:35:00Z", 1)
            + &line(6, "2026-11-22T05:36:00Z", 1)
            + "#more\tuser.genfs.log.before.5\n";
        let middle = line(3, "2026-11-22T05:33:00Z", 1)
            + &line(4, "2026-11-22T05:34:00Z", 1)
            + "#more\tuser.genfs.log.before.3\n";
        let oldest = line(1, "2026-11-22T05:31:00Z", 1);
        let mut asked = Vec::new();
        let entries = read_log(|attr| {
            asked.push(attr.to_string());
            Ok(match attr {
                "user.genfs.log" => newest.clone(),
                "user.genfs.log.before.5" => middle.clone(),
                "user.genfs.log.before.3" => oldest.clone(),
                _ => panic!("{attr}"),
            })
        })
        .unwrap();
        assert_eq!(entries.iter().map(|e| e.gen).collect::<Vec<_>>(), [1, 3, 4, 5, 6]);
        assert_eq!(asked, ["user.genfs.log", "user.genfs.log.before.5", "user.genfs.log.before.3"]);
    }

    #[test]
    fn a_log_that_does_not_go_back_is_an_error() {
        let looping = line(5, "2026-11-22T05:35:00Z", 1) + "#more\tuser.genfs.log.before.5\n";
        let err = read_log(|_| Ok(looping.clone())).unwrap_err();
        assert!(err.to_string().contains("user.genfs.log.before.5"), "{err}");
        let overlapping = line(7, "2026-11-22T05:35:00Z", 1);
        let err = read_log(|attr| Ok(if attr == LOG { looping.clone() } else { overlapping.clone() }));
        assert!(err.is_err());
    }

    #[test]
    fn generation_forms() {
        assert_eq!(GenSpec::parse("7"), Some(GenSpec::Number(7)));
        assert_eq!(GenSpec::parse("0"), Some(GenSpec::Number(0)));
        assert_eq!(GenSpec::parse("-1"), Some(GenSpec::Back(1)));
        assert_eq!(GenSpec::parse("-12"), Some(GenSpec::Back(12)));
        assert_eq!(GenSpec::parse("2026-11-22T05:30:00Z"), Some(GenSpec::At(1_795_325_400)));
        for bad in ["", "-", "-0", "+1", "1.5", "x", "home", "2026-11-22", "99999999999999999999999", "- 1"] {
            assert_eq!(GenSpec::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn splits_at_the_last_at_sign_only_when_it_names_a_generation() {
        let none = |_: &Path| false;
        let split = |s: &str| split_spec(OsStr::new(s), none);
        assert_eq!(split("notes.txt"), (PathBuf::from("notes.txt"), GenSpec::Current));
        assert_eq!(split("notes.txt@3"), (PathBuf::from("notes.txt"), GenSpec::Number(3)));
        assert_eq!(split("notes.txt@-1"), (PathBuf::from("notes.txt"), GenSpec::Back(1)));
        assert_eq!(split("a@b@2"), (PathBuf::from("a@b"), GenSpec::Number(2)));
        assert_eq!(split("user@host.txt"), (PathBuf::from("user@host.txt"), GenSpec::Current));
        assert_eq!(split("a@2/b"), (PathBuf::from("a@2/b"), GenSpec::Current));
        assert_eq!(split("f@"), (PathBuf::from("f@"), GenSpec::Current));
        assert_eq!(split("@3"), (PathBuf::from("@3"), GenSpec::Current));
        assert_eq!(split("dir/f@-0"), (PathBuf::from("dir/f@-0"), GenSpec::Current));
        assert_eq!(split("d/f@2026-11-22T05:30:00Z"), (PathBuf::from("d/f"), GenSpec::At(1_795_325_400)));
        // A file really named `v@2` is taken whole when `v` does not exist.
        let only_whole = |p: &Path| p == Path::new("v@2");
        assert_eq!(split_spec(OsStr::new("v@2"), only_whole), (PathBuf::from("v@2"), GenSpec::Current));
        let both = |_: &Path| true;
        assert_eq!(split_spec(OsStr::new("v@2"), both), (PathBuf::from("v"), GenSpec::Number(2)));
        // Not UTF-8 before the `@` is fine.
        let raw = OsStr::from_bytes(b"caf\xe9@4");
        assert_eq!(split_spec(raw, none), (PathBuf::from(OsStr::from_bytes(b"caf\xe9")), GenSpec::Number(4)));
    }

    #[test]
    fn resolves_specs() {
        let log: Vec<Entry> = [
            (3, "2026-11-22T05:00:00Z"),
            (5, "2026-11-22T05:10:00Z"),
            (6, "2026-11-22T05:10:00Z"),
            (9, "2026-11-22T06:00:00Z"),
        ]
        .iter()
        .map(|&(g, t)| entry(g, t))
        .collect();
        let gen = |spec| resolve(&log, 9, spec).map(|e| e.gen);
        assert_eq!(gen(GenSpec::Current), Ok(9));
        assert_eq!(gen(GenSpec::Number(5)), Ok(5));
        assert_eq!(gen(GenSpec::Back(1)), Ok(6));
        assert_eq!(gen(GenSpec::Back(3)), Ok(3));
        let t = |s| GenSpec::At(parse_rfc3339(s).unwrap());
        assert_eq!(gen(t("2026-11-22T05:10:00Z")), Ok(6));
        assert_eq!(gen(t("2026-11-22T05:59:59Z")), Ok(6));
        assert_eq!(gen(t("2026-11-22T05:00:00Z")), Ok(3));
        assert_eq!(gen(t("2030-01-01T00:00:00Z")), Ok(9));
        assert_eq!(gen(GenSpec::Number(99)), Err("has no generation 99 (kept: 3..9)".into()));
        assert_eq!(gen(GenSpec::Number(4)), Err("has no generation 4 (kept: 3..9)".into()));
        let err = gen(GenSpec::Back(4)).unwrap_err();
        assert!(err.starts_with("has no generation @-4: 3 kept before"), "{err}");
        let err = gen(t("2026-11-22T04:59:59Z")).unwrap_err();
        assert!(err.contains("oldest kept: generation 3, 2026-11-22T05:00:00Z"), "{err}");
        assert_eq!(resolve(&[], 0, GenSpec::Number(1)), Err("has no generation 1 (none kept)".into()));
        assert_eq!(resolve(&log[..1], 3, GenSpec::Number(1)).unwrap_err(), "has no generation 1 (kept: 3)");
        // After a restore the current generation is still the newest; @-1 counts from it.
        assert_eq!(resolve(&log, 6, GenSpec::Back(1)).map(|e| e.gen), Ok(5));
    }

    #[test]
    fn causes_drop_the_os_error_number() {
        assert_eq!(cause(&io::Error::from_raw_os_error(libc::ENOENT)), "No such file or directory");
        assert_eq!(cause(&io::Error::other("plain")), "plain");
    }
}
