//! POSIX behaviour and bad input on a real mount.

use crate::util::{errno_of, genfs_bin, getfattr, Mounted};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;

#[test]
fn generation_xattr_counts_changing_closes_only() {
    let m = Mounted::new("genxattr");
    let p = m.path("f");
    std::fs::write(&p, b"one").unwrap();
    assert_eq!(getfattr(&p, "user.genfs.generation").as_deref(), Some("1"));
    std::fs::write(&p, b"two").unwrap();
    assert_eq!(getfattr(&p, "user.genfs.generation").as_deref(), Some("2"));
    // Opened for writing, nothing changed: no commit.
    drop(OpenOptions::new().write(true).open(&p).unwrap());
    drop(File::open(&p).unwrap());
    assert_eq!(getfattr(&p, "user.genfs.generation").as_deref(), Some("2"));
    // fsync after a change commits; the close after it has nothing left to commit.
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(b"3").unwrap();
    f.sync_all().unwrap();
    assert_eq!(getfattr(&p, "user.genfs.generation").as_deref(), Some("3"));
    drop(f);
    assert_eq!(getfattr(&p, "user.genfs.generation").as_deref(), Some("3"));
    assert_eq!(std::fs::read(&p).unwrap(), b"3wo");
    // Virtual attributes are not listed (cp -a / rsync -X must not copy them).
    let names: Vec<_> = xattr::list(&p).unwrap().collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn append_sparse_truncate_and_holes() {
    let m = Mounted::new("sparse");
    let p = m.path("s");
    let mut f = OpenOptions::new().create(true).append(true).open(&p).unwrap();
    f.write_all(b"abc").unwrap();
    f.write_all(b"def").unwrap();
    drop(f);
    assert_eq!(std::fs::read(&p).unwrap(), b"abcdef");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"Z", 5 << 20).unwrap();
    f.set_len(3 << 20).unwrap();
    f.set_len(6 << 20).unwrap();
    drop(f);
    let data = std::fs::read(&p).unwrap();
    assert_eq!(data.len(), 6 << 20);
    assert_eq!(&data[..6], b"abcdef");
    assert!(data[6..].iter().all(|b| *b == 0), "stale bytes after shrink and regrow");
    // Path truncate commits a generation of its own.
    let before = getfattr(&p, "user.genfs.generation").unwrap();
    Command::new("truncate").args(["-s", "2"]).arg(&p).status().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"ab");
    assert_ne!(getfattr(&p, "user.genfs.generation").unwrap(), before);
}

#[test]
fn unlinked_open_file_stays_readable_and_writable() {
    let m = Mounted::new("unlinkopen");
    let p = m.path("u");
    std::fs::write(&p, b"hello").unwrap();
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    f.write_all_at(b"J", 0).unwrap();
    let mut buf = String::new();
    f.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "Jello");
    f.sync_all().unwrap();
    assert!(!p.exists());
}

#[test]
fn links_renames_and_nlink() {
    let m = Mounted::new("links");
    let a = m.path("a");
    std::fs::write(&a, b"data").unwrap();
    std::fs::hard_link(&a, m.path("b")).unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(&a).unwrap().ino(), std::fs::metadata(m.path("b")).unwrap().ino());
    std::fs::remove_file(m.path("b")).unwrap();
    assert_eq!(std::fs::metadata(&a).unwrap().nlink(), 1);
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::create_dir(m.path("d/sub")).unwrap();
    assert_eq!(std::fs::metadata(m.path("d")).unwrap().nlink(), 3);
    std::os::unix::fs::symlink("a", m.path("l")).unwrap();
    assert_eq!(std::fs::read_link(m.path("l")).unwrap().to_str(), Some("a"));
    assert_eq!(std::fs::read(m.path("l")).unwrap(), b"data");
    std::fs::rename(&a, m.path("d/moved")).unwrap();
    assert_eq!(std::fs::read(m.path("d/moved")).unwrap(), b"data");
    assert_eq!(errno_of(std::fs::rename(m.path("d"), m.path("l"))), libc::ENOTDIR);
    std::fs::write(m.path("x"), b"x").unwrap();
    assert_eq!(errno_of(std::fs::remove_dir(m.path("d"))), libc::ENOTEMPTY);
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    let cpath =
        |p: std::path::PathBuf| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
    let (x, moved) = (cpath(m.path("x")), cpath(m.path("d/moved")));
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, x.as_ptr(), libc::AT_FDCWD, moved.as_ptr(), libc::RENAME_NOREPLACE)
    };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EEXIST));
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, x.as_ptr(), libc::AT_FDCWD, moved.as_ptr(), libc::RENAME_EXCHANGE)
    };
    assert_eq!(rc, 0);
    assert_eq!(std::fs::read(m.path("x")).unwrap(), b"data");
    assert_eq!(std::fs::read(m.path("d/moved")).unwrap(), b"x");
}

#[test]
fn readdir_lists_every_entry_once_while_the_directory_changes() {
    let m = Mounted::new("readdir");
    let d = m.path("big");
    std::fs::create_dir(&d).unwrap();
    for i in 0..2000 {
        File::create(d.join(format!("n{i:05}"))).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    for (k, e) in std::fs::read_dir(&d).unwrap().enumerate() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{name} listed twice");
        if k % 100 == 0 {
            File::create(d.join(format!("late{k}"))).unwrap();
            let _ = std::fs::remove_file(d.join(format!("n{:05}", 1999usize.saturating_sub(k))));
        }
    }
    assert!(seen.len() >= 1900);
}

#[test]
fn bad_input_gets_clear_errors() {
    let m = Mounted::new("badinput");
    let long = "n".repeat(256);
    assert_eq!(errno_of(File::create(m.path(&long))), libc::ENAMETOOLONG);
    File::create(m.path(&"n".repeat(255))).unwrap();
    let p = m.path("x");
    std::fs::write(&p, b"x").unwrap();
    assert_eq!(errno_of(xattr::set(&p, "user.big", &vec![0u8; 65537])), libc::E2BIG);
    xattr::set(&p, "user.ok", &vec![7u8; 65536]).unwrap();
    assert_eq!(xattr::get(&p, "user.ok").unwrap().unwrap().len(), 65536);
    assert!(xattr::get(&p, "user.missing").unwrap().is_none());
    xattr::remove(&p, "user.ok").unwrap();
    assert_eq!(errno_of(xattr::remove(&p, "user.ok")), libc::ENODATA);
    assert_eq!(errno_of(xattr::set(&p, "user.genfs.generation", b"5")), libc::EPERM);
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    assert_eq!(errno_of(f.write_all_at(b"x", (16u64 << 40) + 1)), libc::EFBIG);
    drop(f);
    assert_eq!(std::fs::read(&p).unwrap(), b"x");
    // CLI: not a store, missing mount point, store in use.
    let out = Command::new(genfs_bin()).args(["mount", "/tmp", "/mnt"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a genfs store"), "{out:?}");
    let out = Command::new(genfs_bin()).arg("mount").arg(&m.store).arg("/nonexistent/mnt").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"), "{out:?}");
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(genfs_bin()).arg("mount").arg(&m.store).arg(other.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"), "{out:?}");
}

#[test]
fn fifo_statfs_chmod_and_mmap() {
    let m = Mounted::new("misc");
    let fifo = std::ffi::CString::new(m.path("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(m.path("fifo")).unwrap().file_type().is_fifo());
    let mnt = std::ffi::CString::new(m.mnt.clone().into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain data; all zeroes is a valid value of it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    assert_eq!(unsafe { libc::statvfs(mnt.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_namemax == 255);
    let p = m.path("m");
    std::fs::write(&p, vec![5u8; 10000]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    let f = File::open(&p).unwrap();
    // SAFETY: read-only mapping of an immutable generation.
    let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
    assert!(map.iter().all(|b| *b == 5));
    // A shared writable mapping of a writer works and commits at close.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    // SAFETY: the mapping is only used through this slice while `f` is open.
    let mut wmap = unsafe { memmap2::MmapMut::map_mut(&f).unwrap() };
    wmap[0] = 9;
    wmap.flush().unwrap();
    drop(wmap);
    drop(f);
    assert_eq!(std::fs::read(&p).unwrap()[0], 9);
}
