//! G7: chunk files damaged behind the daemon's back give readers EIO; the daemon survives and
//! keeps serving everything else.

use crate::util::{write_file, Mounted};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

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
