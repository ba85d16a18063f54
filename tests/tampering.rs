//! G7: chunk files damaged behind the daemon's back give readers EIO; the daemon survives and
//! keeps serving everything else.

use crate::util::{genfs_bin, write_file, Mounted};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

fn chunk_path(m: &Mounted, content: &[u8]) -> PathBuf {
    let hash = blake3::hash(content).to_hex().to_string();
    m.store.join("chunks").join(&hash[..2]).join(&hash)
}

fn make_writable(p: &PathBuf) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn read_errno(p: &PathBuf) -> Option<i32> {
    std::fs::read(p).err().and_then(|e| e.raw_os_error())
}

#[test]
fn damaged_chunks_give_eio_and_the_daemon_survives() {
    let mut m = Mounted::new("tamper");
    let victim: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let other = b"still fine".to_vec();
    write_file(&m.path("victim"), &victim).unwrap();
    write_file(&m.path("other"), &other).unwrap();
    assert_eq!(std::fs::read(m.path("victim")).unwrap(), victim);

    // Truncated while the daemon has it open (a mapping would have died of SIGBUS here).
    let chunk = chunk_path(&m, &victim);
    make_writable(&chunk);
    std::fs::OpenOptions::new().write(true).open(&chunk).unwrap().set_len(1000).unwrap();
    // The kernel may still have the pages cached; drop them.
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert_eq!(read_errno(&m.path("victim")), Some(libc::EIO));
    assert_eq!(std::fs::read(m.path("other")).unwrap(), other);

    // Overwritten with the right length: caught by the hash when the chunk is first opened.
    let victim2: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    write_file(&m.path("victim2"), &victim2).unwrap();
    m.remount();
    let chunk2 = chunk_path(&m, &victim2);
    make_writable(&chunk2);
    std::fs::write(&chunk2, vec![0x5a; victim2.len()]).unwrap();
    assert_eq!(read_errno(&m.path("victim2")), Some(libc::EIO));

    // Deleted outright.
    std::fs::remove_file(&chunk2).unwrap();
    assert_eq!(read_errno(&m.path("victim2")), Some(libc::EIO));
    assert_eq!(std::fs::read(m.path("other")).unwrap(), other);
    write_file(&m.path("after"), b"writes still work").unwrap();
    assert_eq!(std::fs::read(m.path("after")).unwrap(), b"writes still work");
}

/// `genfs fsck [--repair]` on the unmounted store.
fn fsck(m: &Mounted, args: &[&str]) -> (i32, String) {
    let out = Command::new(genfs_bin()).arg("fsck").args(args).arg(&m.store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn scrub_and_fsck_find_damage_and_repair_drops_only_what_is_lost() {
    let mut m = Mounted::new("fsck");
    let gens: Vec<Vec<u8>> =
        (1..=3u32).map(|g| (0..150_000u32).map(|i| (i * g % 251) as u8).collect()).collect();
    for g in &gens {
        write_file(&m.path("a"), g).unwrap();
    }
    write_file(&m.path("b"), b"untouched").unwrap();
    let (code, text) = fsck(&m, &[]);
    assert_eq!(code, 8, "fsck of a mounted store: {text}");
    assert!(text.contains("in use by another genfs daemon"), "{text}");
    m.unmount();
    let (code, text) = fsck(&m, &[]);
    assert_eq!((code, text.contains("clean")), (0, true), "{text}");

    // The current generation's chunk overwritten, the first one's deleted.
    let current = chunk_path(&m, &gens[2]);
    make_writable(&current);
    std::fs::write(&current, vec![0u8; gens[2].len()]).unwrap();
    std::fs::remove_file(chunk_path(&m, &gens[0])).unwrap();
    let out = Command::new(genfs_bin()).arg("scrub").arg(&m.store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("2 damaged"), "{text}");
    assert!(text.contains("damaged: /a generation 3 (current)"), "{text}");
    assert!(text.contains("damaged: /a generation 1\n"), "{text}");
    assert!(!text.contains("/b"), "{text}");
    let (code, text) = fsck(&m, &["--quick"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("No such file"), "{text}");

    let (code, text) = fsck(&m, &["--repair"]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("dropped: /a generation 1\n") && text.contains("dropped: /a generation 3\n"),
        "{text}"
    );
    assert!(text.contains("reverted: /a reads generation 2 again"), "{text}");
    let (code, text) = fsck(&m, &[]);
    assert_eq!(code, 0, "{text}");

    m.mount();
    assert_eq!(std::fs::read(m.path("a")).unwrap(), gens[1]);
    assert_eq!(std::fs::read(m.path("b")).unwrap(), b"untouched");
    // The damaged content can be written again: nothing dedups against the removed chunk.
    write_file(&m.path("c"), &gens[2]).unwrap();
    assert_eq!(std::fs::read(m.path("c")).unwrap(), gens[2]);

    let out = Command::new(genfs_bin()).args(["fsck", "/nonexistent/store"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{text}");
    assert!(text.starts_with("genfs: store /nonexistent/store: "), "{text}");
}

/// Issue 14: a deleted index directory costs nothing: the next mount rebuilds it from the
/// index base and the journal, and `fsck --rebuild-index` rebuilds one on demand.
#[test]
fn a_deleted_index_is_rebuilt_at_mount_and_on_demand() {
    let mut m = Mounted::new("rebuild-index");
    for i in 0..3u8 {
        write_file(&m.path("f"), &[i; 5000]).unwrap();
    }
    std::fs::create_dir(m.path("d")).unwrap();
    std::os::unix::fs::symlink("f", m.path("d/link")).unwrap();
    xattr::set(m.path("f"), "user.kept", b"yes").unwrap();
    let log = crate::util::getfattr(&m.path("f"), "user.genfs.log").unwrap();
    m.unmount();
    std::fs::remove_dir_all(m.store.join("index")).unwrap();
    m.mount();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), [2u8; 5000]);
    assert_eq!(std::fs::read_link(m.path("d/link")).unwrap(), std::path::Path::new("f"));
    assert_eq!(xattr::get(m.path("f"), "user.kept").unwrap().unwrap(), b"yes");
    assert_eq!(crate::util::getfattr(&m.path("f"), "user.genfs.log").unwrap(), log);
    m.unmount();
    let (code, text) = fsck(&m, &["--rebuild-index"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("the old index is in") && text.contains("rebuilt the index"), "{text}");
    m.mount();
    assert_eq!(std::fs::read(m.path("f")).unwrap(), [2u8; 5000]);
}
