//! The daemon's life cycle: clean exits, dead mounts, restarts.

use crate::util::{genfs_bin, Mounted};
use std::process::Command;

#[test]
fn sigterm_unmounts_and_keeps_every_commit() {
    let mut m = Mounted::new("sigterm");
    std::fs::write(m.path("kept"), b"before the signal").unwrap();
    m.terminate();
    m.mount();
    assert_eq!(std::fs::read(m.path("kept")).unwrap(), b"before the signal");
}

#[test]
fn mounting_on_a_dead_mount_says_so() {
    let mut m = Mounted::new("deadmount");
    std::fs::write(m.path("f"), b"x").unwrap();
    m.kill9();
    let out = Command::new(genfs_bin()).arg("mount").arg(&m.store).arg(&m.mnt).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dead FUSE mount") && err.contains("umount"), "{err}");
    m.detach();
    m.mount();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"x");
}

#[test]
fn bad_cli_arguments_get_one_line_errors() {
    let run = |args: &[&str]| Command::new(genfs_bin()).args(args).output().unwrap();
    let out = run(&["mkfs", "/tmp/genfs-never-made", "--chunk-size", "3M"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
    let out = run(&["mkfs", "/tmp", "--chunk-size", "banana"]);
    assert!(!out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["mount", dir.path().to_str().unwrap(), "/tmp", "-o", "frobnicate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mount option `frobnicate`"));
}

/// On a filesystem without hard links chunks are published by rename; the same workload,
/// dedup included, must come out the same, and the log says which way the store works.
#[test]
fn the_store_works_without_hard_links() {
    let mut m = Mounted::new("nohardlinks");
    m.daemon_env.push(("GENFS_NO_HARDLINKS".into(), "1".into()));
    m.daemon_env.push(("RUST_LOG".into(), "genfs=info".into()));
    m.remount();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for name in ["a", "b", "c"] {
        crate::util::write_file(&m.path(name), &data).unwrap();
    }
    crate::util::write_file(&m.path("a"), b"changed").unwrap();
    m.remount();
    assert_eq!(std::fs::read(m.path("a")).unwrap(), b"changed");
    assert_eq!(std::fs::read(m.path("c")).unwrap(), data);
    let log = std::fs::read_to_string(m.store.with_extension("log")).unwrap();
    assert!(log.contains("chunks published by rename"), "{log}");
}
