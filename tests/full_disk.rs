//! A real full disk: the store lives on a 64 MiB ext4 image on a loop device.

use crate::util::{getfattr, sh, stat_value, write_file, Mounted};
use std::path::{Path, PathBuf};

/// A loop-mounted ext4 image, unmounted and detached on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
    device: String,
}

impl SmallDisk {
    fn new(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).ok()?;
        let setup = format!(
            "truncate -s {size} '{img}' && mkfs.ext4 -q -F '{img}' && losetup -f --show '{img}'",
            img = img.display()
        );
        let (ok, device) = sh(&setup);
        if !ok {
            eprintln!("SKIPPED: cannot make a loop-mounted ext4 (losetup/mkfs.ext4 missing or not root)");
            return None;
        }
        let device = device.trim().to_string();
        let disk = SmallDisk { dir, device };
        assert!(sh(&format!("mount '{}' '{}'", disk.device, mnt.display())).0, "mount loop device");
        Some(disk)
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("fs")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let mnt = self.path();
        if !sh(&format!("umount '{}'", mnt.display())).0 {
            sh(&format!("umount -l '{}'", mnt.display()));
        }
        sh(&format!("losetup -d '{}'", self.device));
    }
}

/// Distinct content per file (identical files would be stored once).
fn content(name: &str) -> Vec<u8> {
    let seed = blake3::hash(name.as_bytes());
    let mut out = Vec::with_capacity(1_000_000);
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.finalize_xof().fill({
        out.resize(1_000_000, 0);
        &mut out
    });
    out
}

fn fill(dir: &Path, prefix: &str) -> (Vec<PathBuf>, std::io::Error) {
    let mut written = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("{prefix}{i}"));
        match write_file(&p, &content(&format!("{prefix}{i}"))) {
            Ok(()) => written.push(p),
            Err(e) => return (written, e),
        }
    }
    unreachable!()
}

fn check(p: &Path) {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(std::fs::read(p).unwrap() == content(&name), "{} lost its content", p.display());
}

#[test]
fn a_full_disk_refuses_new_data_and_loses_nothing() {
    let Some(disk) = SmallDisk::new("64M") else { return };
    let mut m = Mounted::in_dir("fulldisk", &disk.path(), &["--chunk-size", "256K"]);
    // Keep no history beyond current generations, so deleting files frees space at gc.
    xattr::set(&m.mnt, "user.genfs.retention", b"keep-last=0").unwrap();
    let (written, err) = fill(&m.mnt, "f");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written.len() >= 20, "only {} files fit", written.len());
    written.iter().for_each(|p| check(p));
    // Namespace changes still work at full disk (the reserve), and the store is not read-only.
    std::fs::create_dir(m.path("still-writable")).unwrap();
    for p in written.iter().step_by(2) {
        std::fs::remove_file(p).unwrap();
    }
    xattr::set(&m.mnt, "user.genfs.gc", b"run").unwrap();
    let report = getfattr(&m.mnt, "user.genfs.gc").unwrap();
    assert!(!report.contains("freed_chunks\t0\n"), "gc freed nothing:\n{report}");
    let (again, err) = fill(&m.mnt, "g");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(again.len() >= written.len() / 3, "little space came back after gc: {} files", again.len());
    // Unmount at full disk and mount again: everything committed is there.
    m.remount();
    written.iter().skip(1).step_by(2).chain(&again).for_each(|p| check(p));
}

/// A new user's way: fill the disk, delete, write again, with no policy touched. The deleted
/// files' history (kept as trash by the default policy) yields to the new data.
#[test]
fn deleting_on_a_full_store_lets_writes_go_on_under_the_default_policy() {
    let Some(disk) = SmallDisk::new("64M") else { return };
    let m = Mounted::in_dir("fulldisk-default", &disk.path(), &["--chunk-size", "256K"]);
    let (written, err) = fill(&m.mnt, "f");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written.len() >= 20, "only {} files fit", written.len());
    for p in &written {
        std::fs::remove_file(p).unwrap();
    }
    // The kernel forgets the deleted files' nodes asynchronously; within seconds, writes go on.
    let first = m.path("after-delete");
    let back = crate::util::wait_until(std::time::Duration::from_secs(10), || {
        write_file(&first, &content("after-delete")).is_ok()
    });
    assert!(back, "no write succeeded within 10 s of deleting every file");
    let (again, err) = fill(&m.mnt, "g");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(again.len() + 1 >= written.len() * 2 / 3, "{} of {} files fit again", again.len(), written.len());
    again.iter().chain([&first]).for_each(|p| check(p));
    let report = getfattr(&m.mnt, "user.genfs.gc").unwrap();
    assert!(report.lines().any(|l| l.starts_with("space\t")), "no space drops reported:\n{report}");
    let (ok, out) = sh(&format!("{} gc --report -C '{}'", crate::util::genfs_bin(), m.mnt.display()));
    assert!(ok && out.contains("dropped for space since the mount"), "{out}");
}

/// Where generation `gen` of `file` is read.
fn generation_path(m: &Mounted, file: &Path, gen: u64) -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(file).unwrap().ino();
    m.mnt.join(format!(".genfs/gen/{ino}/{gen}"))
}

/// One file rewritten until the disk would be full three times over: every save succeeds, the
/// newest generations survive, the oldest go.
#[test]
fn a_file_rewritten_past_the_disk_size_keeps_its_newest_generations() {
    let Some(disk) = SmallDisk::new("64M") else { return };
    let m = Mounted::in_dir("fulldisk-history", &disk.path(), &["--chunk-size", "256K"]);
    let file = m.path("log");
    let saves = 3 * 64;
    for i in 0..saves {
        write_file(&file, &content(&format!("log{i}"))).unwrap_or_else(|e| panic!("save {i}: {e}"));
    }
    assert!(std::fs::read(&file).unwrap() == content(&format!("log{}", saves - 1)));
    let current: u64 = getfattr(&file, "user.genfs.generation").unwrap().parse().unwrap();
    assert_eq!(current, saves as u64);
    // The three before the current one are still there, as they were saved.
    for gen in current - 3..current {
        let saved = std::fs::read(generation_path(&m, &file, gen))
            .unwrap_or_else(|e| panic!("generation {gen}: {e}"));
        assert!(saved == content(&format!("log{}", gen - 1)), "generation {gen} changed");
    }
    let oldest = generation_path(&m, &file, 1);
    assert!(
        std::fs::metadata(oldest).is_err(),
        "the oldest generation survived a disk three times too small"
    );
    let free = stat_value(&m.mnt, "fs_free_bytes");
    let reserve = stat_value(&m.mnt, "reserve_bytes");
    assert!(free >= reserve, "{free} bytes free, under the reserve of {reserve}");
}

/// keep-min-within protects young history even against a full disk: saves are refused, no
/// generation of the last hour is dropped.
#[test]
fn keep_min_within_holds_against_a_full_disk() {
    let Some(disk) = SmallDisk::new("64M") else { return };
    let m = Mounted::in_dir("fulldisk-min", &disk.path(), &["--chunk-size", "256K"]);
    xattr::set(&m.mnt, "user.genfs.retention", b"keep-last=0,keep-min-within=1h").unwrap();
    let file = m.path("log");
    let mut saved = 0;
    let err = loop {
        match write_file(&file, &content(&format!("log{saved}"))) {
            Ok(()) => saved += 1,
            Err(e) => break e,
        }
        assert!(saved < 200, "64 MiB took 200 MB of protected history");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(saved >= 20, "only {saved} saves fit");
    for gen in 1..=saved as u64 {
        let kept = std::fs::read(generation_path(&m, &file, gen))
            .unwrap_or_else(|e| panic!("generation {gen}: {e}"));
        assert!(kept == content(&format!("log{}", gen - 1)), "generation {gen} changed");
    }
}
