//! The on-disk format is kept (issue 11): `tests/data/store-format-1.tar.gz` is a small store
//! made by genfs 0.1.0 at commit 2c68677 (format version 1: files with several generations, a
//! hard link, a symlink, an xattr, a snapshot, a save by rename, a deleted file, 64 KiB
//! chunks). Every later build must open it, read every generation, the snapshot and the tree at
//! several sequence numbers as that build did (`store-format-1.expected`, written by
//! `tests/data/describe-store.sh` on its mount), and find it fsck-clean. A store of a newer
//! format is refused with a message that says so.

use crate::util::{genfs_bin, Mounted};
use std::path::Path;
use std::process::Command;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn unpack_image(store: &Path) {
    let parent = store.parent().unwrap();
    let st = Command::new("tar")
        .args(["xzf", &format!("{DATA}/store-format-1.tar.gz"), "-C"])
        .arg(parent)
        .status()
        .unwrap();
    assert!(st.success(), "tar xzf failed");
}

fn fsck(store: &Path) -> (Option<i32>, String) {
    let out = Command::new(genfs_bin()).arg("fsck").arg(store).output().unwrap();
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_store_of_format_1_opens_reads_and_checks_clean() {
    let mut m = Mounted::of_store("format-1", &std::env::temp_dir(), |store| {
        unpack_image(store);
        let (code, out) = fsck(store);
        assert_eq!(code, Some(0), "fsck of the image before mounting:\n{out}");
    });
    let out = Command::new("bash").arg(format!("{DATA}/describe-store.sh")).arg(&m.mnt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = std::fs::read_to_string(format!("{DATA}/store-format-1.expected")).unwrap();
    let got = String::from_utf8_lossy(&out.stdout);
    if got != want {
        let diff = similar::TextDiff::from_lines(want.as_str(), &got);
        panic!(
            "the format-1 store reads differently:\n{}",
            diff.unified_diff().header("expected", "this build")
        );
    }
    m.unmount();
    let (code, out) = fsck(&m.store);
    assert_eq!(code, Some(0), "fsck after this build mounted it:\n{out}");
    // Opening moved the index from sled to redb, once: format 2 now, no sled files left.
    let config = std::fs::read_to_string(m.store.join("genfs.toml")).unwrap();
    assert!(config.contains("format = 3"), "{config}");
    let index: Vec<String> = std::fs::read_dir(m.store.join("index"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(index, ["genfs.redb"], "what the index directory holds");
}

#[test]
fn a_store_of_a_newer_format_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    unpack_image(&store);
    let config = store.join("genfs.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("format = 1", "format = 99");
    std::fs::write(&config, text).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = Command::new(genfs_bin()).arg("mount").arg(&store).arg(&mnt).output().unwrap();
    if out.status.success() {
        // Never leave the mount behind, even when this build wrongly accepts the store.
        let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        panic!("a store of format 99 was mounted");
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer genfs") && err.contains("format 99"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
