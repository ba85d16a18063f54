//! Load: 16 writer and 16 reader processes on one mount for GENFS_LOAD_SECS seconds (30 by
//! default; 300 for the long run), with whole-file writes, save-by-rename, unlinks, xattrs,
//! snapshots and gc. Every read must be one whole generation (files carry a header that determines
//! their body); at the end every file holds its writer's last acknowledged content, and the
//! daemon's memory and descriptor count stay flat.

use crate::util::{write_file, Mounted, Rng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE_ENV: &str = "GENFS_LOAD_ROLE";
/// How often writer 1 runs gc; the test directory keeps only a few generations per file.
const GC_INTERVAL: Duration = Duration::from_secs(5);
const RETENTION: &[u8] = b"keep-last=3";
const WRITERS: u64 = 16;
const READERS: u64 = 16;
const FILES_PER_WRITER: u64 = 6;

fn body(writer: u64, k: u64, iter: u64) -> Vec<u8> {
    let len = 100 + (iter * 7919 + writer * 131 + k) % 150_000;
    let mut out = format!("{writer} {k} {iter}\n").into_bytes();
    let seed = blake3::hash(&out);
    let mut xof = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    let start = out.len();
    out.resize(start + len as usize, 0);
    xof.fill(&mut out[start..]);
    out
}

fn file(dir: &Path, writer: u64, k: u64) -> PathBuf {
    dir.join(format!("w{writer}-{k}"))
}

fn run_writer(dir: &Path, writer: u64, deadline: Instant) {
    let mut rng = Rng::new(writer + 1);
    let mut last = vec![None; FILES_PER_WRITER as usize];
    let mut snapshots = std::collections::VecDeque::new();
    let mut last_gc = Instant::now();
    let mut iter = 0;
    while Instant::now() < deadline {
        iter += 1;
        let k = rng.below(FILES_PER_WRITER);
        let data = body(writer, k, iter);
        let target = file(dir, writer, k);
        let result = match rng.below(10) {
            0 => {
                // Save by rename, as editors do.
                let tmp = dir.join(format!("w{writer}-tmp"));
                write_file(&tmp, &data)
                    .and_then(|_| std::fs::rename(&tmp, &target))
                    .map_err(|e| ("save by rename", e))
            }
            1 => {
                let scratch = dir.join(format!("w{writer}-scratch"));
                write_file(&scratch, b"scratch")
                    .and_then(|_| std::fs::remove_file(&scratch))
                    .and_then(|_| write_file(&target, &data))
                    .and_then(|_| xattr::set(&target, "user.iter", iter.to_string().as_bytes()))
                    .map_err(|e| ("scratch, write, xattr", e))
            }
            2 if writer == 0 => {
                let root = dir.parent().unwrap();
                let mut r = xattr::set(root, "user.genfs.snapshot.create", format!("s{iter}").as_bytes());
                snapshots.push_back(iter);
                if snapshots.len() > 3 && r.is_ok() {
                    let oldest = snapshots.pop_front().unwrap_or(0);
                    r = xattr::set(root, "user.genfs.snapshot.delete", format!("s{oldest}").as_bytes());
                }
                r.and_then(|_| write_file(&target, &data)).map_err(|e| ("snapshot", e))
            }
            // gc every few seconds drops generations under the readers' feet.
            3 if writer == 1 && last_gc.elapsed() > GC_INTERVAL => {
                last_gc = Instant::now();
                xattr::set(dir.parent().unwrap(), "user.genfs.gc", b"run")
                    .and_then(|_| write_file(&target, &data))
                    .map_err(|e| ("gc", e))
            }
            _ => write_file(&target, &data).map_err(|e| ("write", e)),
        };
        if let Err((what, e)) = result {
            panic!("writer {writer}, iteration {iter}: {what}: {e}");
        }
        last[k as usize] = Some(iter);
    }
    for (k, it) in last.iter().enumerate() {
        if let Some(it) = it {
            println!("final {k} {it}");
        }
    }
}

fn run_reader(dir: &Path, reader: u64, deadline: Instant) {
    let mut rng = Rng::new(1000 + reader);
    let mut reads = 0u64;
    while Instant::now() < deadline {
        let p = file(dir, rng.below(WRITERS), rng.below(FILES_PER_WRITER));
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("reader {reader}: {}: {e}", p.display()),
        };
        if data.is_empty() {
            // A file just created and not yet closed by its writer.
            continue;
        }
        let header_end = data.iter().position(|b| *b == b'\n').expect("no header: torn or foreign bytes");
        let fields: Vec<u64> = std::str::from_utf8(&data[..header_end])
            .unwrap()
            .split(' ')
            .map(|f| f.parse().unwrap())
            .collect();
        assert!(data == body(fields[0], fields[1], fields[2]), "{} is not one whole generation", p.display());
        reads += 1;
    }
    println!("reads {reads}");
}

/// Not a test on its own: the body of the load test's child processes.
#[test]
#[ignore = "child process of many_writers_and_readers_for_a_while"]
fn load_role() {
    let Ok(spec) = std::env::var(ROLE_ENV) else { return };
    let f: Vec<&str> = spec.splitn(4, ':').collect();
    let (role, n, secs, dir) = (f[0], f[1].parse().unwrap(), f[2].parse().unwrap(), Path::new(f[3]));
    let deadline = Instant::now() + Duration::from_secs(secs);
    match role {
        "writer" => run_writer(dir, n, deadline),
        _ => run_reader(dir, n, deadline),
    }
}

/// (RSS in KiB, open descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

#[test]
fn many_writers_and_readers_for_a_while() {
    let secs: u64 = std::env::var("GENFS_LOAD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let m = Mounted::new("load");
    let dir = m.path("load");
    std::fs::create_dir(&dir).unwrap();
    xattr::set(&dir, "user.genfs.retention", RETENTION).unwrap();
    let pid = m.daemon_pid().unwrap();
    let spawn = |role: &str, n: u64| {
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "load::load_role", "--ignored", "--nocapture", "--quiet"])
            .env(ROLE_ENV, format!("{role}:{n}:{secs}:{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let writers: Vec<_> = (0..WRITERS).map(|n| spawn("writer", n)).collect();
    let readers: Vec<_> = (0..READERS).map(|n| spawn("reader", n)).collect();
    std::thread::sleep(Duration::from_secs(secs.min(5)));
    let start_usage = usage(pid);
    // The curve, for the report: a leak climbs steadily, a cache fills and levels off.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (sampling, index) = (sampling.clone(), m.store.join("index"));
        std::thread::spawn(move || {
            let started = Instant::now();
            // The highest RSS of the run's first half (the caches' warm size), and the lowest of
            // the second: RSS swings by tens of MiB as gc runs and memory is trimmed, so a leak
            // shows as a floor that rises, not as one high sample.
            let (mut warm_rss, mut late_floor) = (0, u64::MAX);
            while sampling.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_secs((secs / 10).max(1)));
                let (rss, fds) = usage(pid);
                let index_kib = crate::util::du(&index) / 1024;
                let t = started.elapsed().as_secs();
                if t <= secs / 2 {
                    warm_rss = warm_rss.max(rss);
                } else {
                    late_floor = late_floor.min(rss);
                }
                eprintln!("load t={t:>4} s: daemon RSS {rss} KiB, fds {fds}, index {index_kib} KiB");
            }
            (warm_rss, late_floor)
        })
    };
    let mut finals = Vec::new();
    for (n, w) in writers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "writer {n} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("final ")) {
            let f: Vec<u64> = line[6..].split(' ').map(|x| x.parse().unwrap()).collect();
            finals.push((n as u64, f[0], f[1]));
        }
    }
    let mut reads = 0u64;
    for (n, r) in readers.into_iter().enumerate() {
        let out = r.wait_with_output().unwrap();
        assert!(out.status.success(), "reader {n} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        reads += text
            .lines()
            .find_map(|l| l.strip_prefix("reads "))
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let end_usage = usage(pid);
    sampling.store(false, std::sync::atomic::Ordering::SeqCst);
    let (warm_rss, late_floor) = sampler.join().unwrap_or((0, 0));
    let late_floor = late_floor.min(end_usage.0);
    for (w, k, iter) in &finals {
        assert!(
            std::fs::read(file(&dir, *w, *k)).unwrap() == body(*w, *k, *iter),
            "w{w}-{k} lost its last write"
        );
    }
    eprintln!(
        "load {secs} s: {} files verified, {reads} whole-file reads; daemon RSS {} -> {} KiB, fds {} -> {}",
        finals.len(),
        start_usage.0,
        end_usage.0,
        start_usage.1,
        end_usage.1
    );
    // The daemon caches up to 2,048 chunk descriptors (store/chunks.rs); beyond that, growth
    // would be a leak.
    assert!(end_usage.1 <= start_usage.1 + 2048 + 64, "descriptors grew: {start_usage:?} -> {end_usage:?}");
    // Memory: the index cache and the kernel's requests fill up in the first half of the run;
    // in the second half, which commits as much again, the floor may not keep climbing (a
    // leak's does), and nothing may come near the machine's memory.
    assert!(
        late_floor <= warm_rss + warm_rss / 4 + 16_384,
        "memory kept growing: {warm_rss} KiB at most in the first half, at least {late_floor} KiB in the second"
    );
    assert!(end_usage.0 <= 256 << 10, "daemon RSS {} KiB", end_usage.0);
}
