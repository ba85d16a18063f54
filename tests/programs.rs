//! Real programs inside a genfs mount (issues 6 and 10): git, cargo, sqlite3 in every journal
//! mode and with several processes, tar and rsync round trips, and programs executed (and
//! libraries mapped) from the mount. Each test is skipped, with a message, when its program is
//! not installed (.ci/run installs them).

use crate::util::Mounted;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

fn have(program: &str) -> bool {
    let found =
        Command::new(program).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !found {
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}

/// Runs a shell script (with `set -e`) in `dir`; panics with its output if it fails.
fn script(dir: &Path, text: &str) -> String {
    let start = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{text}"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "script failed ({}):\n{text}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
        out.status
    );
    eprintln!("script done in {:.1} s: {}", start.elapsed().as_secs_f64(), text.lines().next().unwrap_or(""));
    stdout.into_owned()
}

#[test]
fn git_init_add_commit_log_gc_on_thousands_of_files() {
    if !have("git") {
        return;
    }
    let m = Mounted::new("git");
    let repo = m.path("repo");
    std::fs::create_dir(&repo).unwrap();
    // 3,000 files in 60 directories, then history on top.
    for d in 0..60 {
        let dir = repo.join(format!("src/mod{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            std::fs::write(
                dir.join(format!("file{f:02}.rs")),
                format!("// module {d} file {f}\npub fn f{f}() -> u32 {{ {} }}\n", d * f),
            )
            .unwrap();
        }
    }
    let git = "git -c user.name=genfs -c user.email=genfs@localhost -c init.defaultBranch=main";
    script(
        &repo,
        &format!(
            "{git} init -q .
             {git} add -A
             {git} commit -q -m 'three thousand files'
             for i in 1 2 3 4 5; do
               sed -i \"s/module 1 /module 1 (edit $i) /\" src/mod01/file0$i.rs
               echo \"change $i\" >> CHANGES
               {git} add -A && {git} commit -q -m \"change $i\"
             done
             git mv src/mod59 src/renamed && {git} commit -q -m rename
             {git} gc -q --aggressive
             {git} fsck --full --strict"
        ),
    );
    let log =
        script(&repo, "git log --oneline | wc -l; git ls-files | wc -l; git status --porcelain | wc -l");
    let counts: Vec<u64> = log.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts, [7, 3001, 0], "commits, tracked files, dirty files");
    // The repository survives a remount byte for byte.
    let head = script(&repo, "git rev-parse HEAD");
    let mut m = m;
    m.remount();
    let again = script(
        &m.path("repo"),
        "git fsck --full --strict && git rev-parse HEAD && git status --porcelain | wc -l",
    );
    assert_eq!(again, format!("{head}0\n"));
    // Clone out of the mount and back into it.
    script(&m.mnt, "git clone -q repo clone && cd clone && git log --oneline | wc -l | grep -qx 7");
}

#[test]
fn cargo_builds_a_crate_with_its_target_dir_on_genfs_and_runs_it() {
    if !have("cargo") {
        return;
    }
    let m = Mounted::new("cargo");
    let krate = m.path("hello");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n",
    )
    .unwrap();
    std::fs::write(krate.join("src/lib.rs"), "pub fn greet(who: &str) -> String { format!(\"hello, {who}\") }\n#[test]\nfn greets() { assert_eq!(greet(\"x\"), \"hello, x\"); }\n").unwrap();
    std::fs::write(krate.join("src/main.rs"), "fn main() { println!(\"{}\", hello::greet(\"genfs\")); }\n")
        .unwrap();
    // Target dir on genfs; offline, no dependencies: nothing is fetched.
    let out = script(
        &krate,
        "export CARGO_TARGET_DIR=$PWD/target CARGO_TERM_COLOR=never
         cargo build --offline --release -q
         cargo test --offline -q > test.out 2>&1 && grep -q 'test result: ok' test.out
         ./target/release/hello
         echo 'fn main() { println!(\"{}\", hello::greet(\"again\")); }' > src/main.rs
         cargo build --offline --release -q
         ./target/release/hello",
    );
    assert_eq!(out, "hello, genfs\nhello, again\n");
}

#[test]
fn sqlite3_in_wal_mode_a_thousand_transactions() {
    if !have("sqlite3") {
        return;
    }
    let m = Mounted::new("sqlite");
    let mut sql = String::from(
        "PRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, n INTEGER);\n",
    );
    for i in 0..1000 {
        sql.push_str(&format!(
            "BEGIN; INSERT INTO t(v, n) VALUES ('row {i}', {i}); UPDATE t SET n = n + 1 WHERE id % 7 = {}; COMMIT;\n",
            i % 7
        ));
    }
    sql.push_str("PRAGMA wal_checkpoint(TRUNCATE);\n");
    std::fs::write(m.path("load.sql"), sql).unwrap();
    let out = script(
        &m.mnt,
        "sqlite3 db.sqlite < load.sql > /dev/null
         sqlite3 db.sqlite 'PRAGMA journal_mode; PRAGMA integrity_check; SELECT count(*), sum(n) FROM t;'",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "wal");
    assert_eq!(lines[1], "ok");
    assert!(lines[2].starts_with("1000|"), "{out}");
    let mut m = m;
    m.remount();
    let out = script(&m.mnt, "sqlite3 db.sqlite 'PRAGMA integrity_check; SELECT count(*) FROM t;'");
    assert_eq!(out, "ok\n1000\n");
}

/// Several sqlite3 processes on one WAL database: 3 readers and a writer making 100 inserts.
/// Every connection maps `db.sqlite-shm` MAP_SHARED and needs it to be one memory: all
/// writable descriptors of a file share its writer node (issue 10).
#[test]
fn sqlite3_wal_with_concurrent_processes() {
    if !have("sqlite3") {
        return;
    }
    let m = Mounted::new("sqlite-shared");
    let out = script(
        &m.mnt,
        "sql() { sqlite3 -cmd '.timeout 10000' db.sqlite \"$@\"; }  # wait for locks, as applications do
         sql 'PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);' > /dev/null
         for r in 1 2 3; do (for i in $(seq 50); do sql 'SELECT count(*) FROM t' > /dev/null; done) & done
         for i in $(seq 100); do sql \"INSERT INTO t(v) VALUES ('row $i')\"; done
         wait
         sql 'PRAGMA integrity_check; SELECT count(*) FROM t;'",
    );
    assert_eq!(out, "ok\n100\n", "committed transactions were lost");
}

/// SQLite in every journal mode: create, insert, reopen, insert, integrity check. The rollback
/// modes compare `stat(path).st_ino` with `fstat(fd).st_ino` before they write ("attempt to
/// write a readonly database" when the two differ).
#[test]
fn sqlite3_in_every_journal_mode() {
    if !have("sqlite3") {
        return;
    }
    let mut m = Mounted::new("sqlite-modes");
    for mode in ["DELETE", "TRUNCATE", "PERSIST", "WAL", "MEMORY"] {
        let out = script(
            &m.mnt,
            &format!(
                "sqlite3 {mode}.db 'PRAGMA journal_mode={mode}; CREATE TABLE t(a); INSERT INTO t VALUES(1);' > /dev/null
                 sqlite3 {mode}.db 'INSERT INTO t VALUES(2);'
                 sqlite3 {mode}.db 'PRAGMA integrity_check; SELECT count(*) FROM t;'"
            ),
        );
        assert_eq!(out, "ok\n2\n", "journal mode {mode}");
    }
    m.remount();
    for mode in ["DELETE", "TRUNCATE", "PERSIST", "WAL", "MEMORY"] {
        let out = script(&m.mnt, &format!("sqlite3 {mode}.db 'INSERT INTO t VALUES(3); PRAGMA integrity_check; SELECT count(*) FROM t;'"));
        assert_eq!(out, "ok\n3\n", "journal mode {mode} after a remount");
    }
}

/// Four sqlite3 processes at once, each inserting 1,000 rows in transactions of 10, in WAL and
/// in rollback-journal mode: every row arrives and the database is intact.
#[test]
fn four_sqlite3_processes_insert_at_once() {
    if !have("sqlite3") {
        return;
    }
    let m = Mounted::new("sqlite-four");
    for mode in ["WAL", "DELETE"] {
        let mut batch = String::from(".timeout 20000\n");
        for t in 0..100 {
            batch.push_str("BEGIN IMMEDIATE;\n");
            for r in 0..10 {
                batch.push_str(&format!("INSERT INTO t(p, n) VALUES ($P, {});\n", t * 10 + r));
            }
            batch.push_str("COMMIT;\n");
        }
        std::fs::write(m.path(&format!("{mode}.sql")), batch).unwrap();
        let out = script(
            &m.mnt,
            &format!(
                "sqlite3 {mode}.db 'PRAGMA journal_mode={mode}; CREATE TABLE t(p, n);' > /dev/null
                 for p in 1 2 3 4; do sed \"s/\\$P/$p/\" {mode}.sql | sqlite3 {mode}.db & done
                 wait
                 sqlite3 {mode}.db 'PRAGMA integrity_check; SELECT count(*), count(DISTINCT p), sum(n) FROM t;'"
            ),
        );
        assert_eq!(out, format!("ok\n4000|4|{}\n", 4 * 999 * 1000 / 2), "journal mode {mode}");
    }
}

/// A read-only connection (`?mode=ro`: the database opened O_RDONLY) reads a consistent
/// database while another process writes, in the rollback-journal modes: its descriptor keeps
/// the generation it opened (G2), which SQLite's locks make a consistent snapshot. (In WAL
/// mode such a connection shares the live WAL index but reads the database file of its
/// generation: README, limitations. A read-write connection is live, as the WAL test shows.)
#[test]
fn a_read_only_sqlite3_connection_is_consistent_while_another_writes() {
    if !have("sqlite3") {
        return;
    }
    let m = Mounted::new("sqlite-ro");
    let out = script(
        &m.mnt,
        "sqlite3 db 'CREATE TABLE t(n, pad);'
         (for i in $(seq 300); do echo \"INSERT INTO t VALUES($i, randomblob(3000));\"; done |
          sqlite3 -cmd '.timeout 20000' db) &
         writer=$!
         reads=0 bad=0
         while kill -0 $writer 2>/dev/null || [ $reads -lt 5 ]; do
             r=$(sqlite3 -cmd '.timeout 20000' 'file:db?mode=ro' 'PRAGMA integrity_check; SELECT count(*) = max(n) OR count(*) = 0 FROM t;' | tr '\\n' ' ')
             [ \"$r\" = 'ok 1 ' ] || { bad=$((bad + 1)); echo \"bad read: $r\" >&2; }
             reads=$((reads + 1))
         done
         wait $writer
         echo \"$bad $(sqlite3 db 'SELECT count(*) FROM t')\"",
    );
    assert_eq!(out, "0 300\n", "a read-only connection read an inconsistent database");
}

/// What a tree holds, comparable across copies: per relative path, the kind, mode, owner,
/// content digest, symlink target, user.* xattrs, file mtime, and which other paths are the
/// same inode (hard links).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    size: u64,
    digest: u64,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, Vec<u8>>,
    mtime: Option<i64>,
    link_group: Option<PathBuf>,
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for path in names {
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            let mut digest = 0;
            if ft.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                digest = h.finish();
            }
            let xattrs = if ft.is_symlink() {
                BTreeMap::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .filter_map(|n| n.into_string().ok())
                    .filter(|n| n.starts_with("user."))
                    .map(|n| (n.clone(), xattr::get(&path, &n).unwrap().unwrap_or_default()))
                    .collect()
            };
            let link_group = (ft.is_file() && md.nlink() > 1)
                .then(|| inodes.entry((md.dev(), md.ino())).or_insert_with(|| rel.clone()).clone());
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: if ft.is_symlink() { 0 } else { md.mode() & 0o7777 },
                    owner: (md.uid(), md.gid()),
                    size: if ft.is_dir() { 0 } else { md.len() },
                    digest,
                    target: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                    xattrs,
                    mtime: ft.is_file().then(|| md.mtime()),
                    link_group,
                },
            );
            if ft.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    let paths_a: Vec<_> = ta.keys().collect();
    let paths_b: Vec<_> = tb.keys().collect();
    assert_eq!(paths_a, paths_b, "{} and {} hold different paths", a.display(), b.display());
    for (p, ea) in &ta {
        assert_eq!(ea, &tb[p], "{} differs between {} and {}", p.display(), a.display(), b.display());
    }
}

/// A tree with what archivers must carry: hard links, user xattrs, symlinks (dangling too),
/// a sparse file, odd permissions and owners, a FIFO, deep and empty directories.
fn make_source_tree(root: &Path) {
    script(
        root,
        "mkdir -p src/a/b/c src/empty src/deep/1/2/3/4/5/6/7/8
         cd src
         for i in $(seq 200); do printf 'file %d\\n' $i > a/f$i; done
         head -c 3000000 /dev/urandom > a/b/random.bin
         echo linked > a/hard1 && ln a/hard1 a/b/hard2 && ln a/hard1 c_hard3
         ln -s a/f1 rel-link && ln -s /nonexistent/target dangling && ln -s ../a a/b/c/up
         printf start > sparse && truncate -s 64M sparse && printf end >> sparse
         echo secret > private && chmod 600 private
         echo tool > tool && chmod 4755 tool
         echo shared > a/group-writable && chmod 664 a/group-writable && chown 1234:5678 a/group-writable
         chmod 1777 empty && chmod 750 a/b
         mkfifo a/fifo
         setfattr -n user.note -v 'hello xattr' a/f1
         setfattr -n user.bin -v 0x00ff00ff a/b/random.bin
         setfattr -n user.dir -v tagged a/b/c
         echo deep > deep/1/2/3/4/5/6/7/8/leaf
         touch -d '2020-02-29 12:34:56' a/f2 deep/1/2/3/4/5/6/7/8/leaf",
    );
}

#[test]
fn tar_round_trip_is_identical() {
    if !have("tar") || !have("setfattr") {
        return;
    }
    let m = Mounted::new("tar");
    let local = tempfile::tempdir().unwrap();
    make_source_tree(local.path());
    let opts = "--xattrs --xattrs-include='user.*' --sparse --numeric-owner -p";
    // Local tree -> archive -> extracted into genfs -> archive made on genfs -> extracted locally.
    script(
        local.path(),
        &format!(
            "tar -C src {opts} -cf in.tar .
             mkdir {mnt}/x && tar -C {mnt}/x {opts} -xf in.tar
             tar -C {mnt}/x {opts} -cf {mnt}/out.tar .
             mkdir back && tar -C back {opts} -xf {mnt}/out.tar",
            mnt = m.mnt.display()
        ),
    );
    assert_same_tree(&local.path().join("src"), &m.path("x"));
    assert_same_tree(&local.path().join("src"), &local.path().join("back"));
}

#[test]
fn rsync_a_h_a_x_round_trip_is_identical() {
    if !have("rsync") || !have("setfattr") {
        return;
    }
    let m = Mounted::new("rsync");
    let local = tempfile::tempdir().unwrap();
    make_source_tree(local.path());
    script(
        local.path(),
        &format!(
            "rsync -aHAX src/ {mnt}/x/
             rsync -aHAX {mnt}/x/ back/
             # A second run finds nothing to do.
             test -z \"$(rsync -aHAXi src/ {mnt}/x/)\"",
            mnt = m.mnt.display()
        ),
    );
    assert_same_tree(&local.path().join("src"), &m.path("x"));
    assert_same_tree(&local.path().join("src"), &local.path().join("back"));
    // Incremental: change, delete, add; then the trees agree again.
    script(
        local.path(),
        &format!(
            "echo changed >> src/a/f3 && rm src/a/f4 && echo new > src/new && setfattr -n user.note -v again src/a/f1
             rsync -aHAX --delete src/ {mnt}/x/",
            mnt = m.mnt.display()
        ),
    );
    assert_same_tree(&local.path().join("src"), &m.path("x"));
}

#[test]
fn programs_and_libraries_run_from_the_mount() {
    if !have("cc") {
        return;
    }
    let m = Mounted::new("exec");
    std::fs::write(m.path("lib.c"), "int answer(void) { return 42; }\n").unwrap();
    std::fs::write(
        m.path("main.c"),
        "#include <stdio.h>\nint answer(void);\nint main(int argc, char **argv) { printf(\"%s %d\\n\", argc > 1 ? argv[1] : \"answer\", answer()); return 0; }\n",
    )
    .unwrap();
    // Compiled on genfs, linked against a shared library on genfs (mmap'ed by ld.so at exec).
    let out = script(
        &m.mnt,
        "cc -shared -fPIC -o libanswer.so lib.c
         cc -o main main.c -L. -lanswer -Wl,-rpath,'$ORIGIN'
         ./main
         cp /bin/ls ./ls-copy && ./ls-copy main > /dev/null && echo ls-ok
         cp main main.tmp && mv main.tmp main2 && ./main2 renamed",
    );
    assert_eq!(out, "answer 42\nls-ok\nrenamed 42\n");
    // Writing to a binary while it runs: a local filesystem says ETXTBSY; genfs may instead
    // commit a new generation, which the running program never sees (it keeps the generation
    // it was started from). Either way the program finishes normally; replacing it by rename
    // is the usual way and works.
    let out = script(
        &m.mnt,
        "cp /bin/sleep ./sleeper && ./sleeper 1 & pid=$!
         sleep 0.3
         if echo x > sleeper 2>/dev/null; then echo 'write: committed' >&2; else echo 'write: refused' >&2; fi
         wait $pid && echo survived
         cp /bin/true t.new && mv t.new sleeper && ./sleeper && echo replaced",
    );
    assert_eq!(out, "survived\nreplaced\n");
}
