//! A real full disk: the store lives on a 64 MiB ext4 image on a loop device.

use crate::util::{getfattr, sh, write_file, Mounted};
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
