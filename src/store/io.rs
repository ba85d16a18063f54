//! The one door through which the store's durability-relevant file operations pass.
//!
//! Everything on the commit path (staging sync, chunk link, directory sync, journal append and
//! sync) calls [`StoreIo`], so tests can wrap it: `FaultyIo` (test builds only) fails the Nth
//! call with a chosen errno. Reads of committed chunks (pread) are not part of this trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// File operations whose failure or loss matters for durability.
pub trait StoreIo: Send + Sync {
    /// Creates a new file (fails if it exists), open for reading and writing.
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File>;
    /// Opens an existing file for reading and writing (journal segments).
    fn open_rw(&self, path: &Path) -> io::Result<File>;
    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    fn set_len(&self, file: &File, len: u64) -> io::Result<()>;
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// fsync by path: of a directory (entries created or removed in it become durable) or of
    /// a file written by someone else (sled's files at a checkpoint).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Hard link; fails with EEXIST if `to` exists (never replaces a committed file).
    fn link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn unlink(&self, path: &Path) -> io::Result<()>;
    fn create_dir(&self, path: &Path) -> io::Result<()>;
}

/// The real thing: plain syscalls.
#[derive(Debug, Default)]
pub struct RealIo;

impl StoreIo for RealIo {
    fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
    }

    fn open_rw(&self, path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).open(path)
    }

    fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn unlink(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(path)
    }
}

#[cfg(test)]
pub use faulty::FaultyIo;

/// Test builds only: the release daemon has no fault injection in it.
#[cfg(test)]
mod faulty {
    use super::StoreIo;
    use std::fs::File;
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Fault model: every call counts as one step; the call whose number equals `fail_at` (and,
    /// with `sticky`, every later one) fails with `errno` before doing anything — except a
    /// `write_all_at` with [`FaultyIo::short_writes`] on: it writes the first half of its buffer,
    /// then fails (a short write). Crash simulation (losing unsynced data) is `crashsim.rs`.
    pub struct FaultyIo {
        inner: Arc<dyn StoreIo>,
        calls: AtomicU64,
        fail_at: AtomicU64,
        errno: i32,
        sticky: bool,
        short_writes: std::sync::atomic::AtomicBool,
    }

    impl FaultyIo {
        pub fn new(inner: Arc<dyn StoreIo>, errno: i32, sticky: bool) -> Self {
            FaultyIo {
                inner,
                calls: AtomicU64::new(0),
                fail_at: AtomicU64::new(u64::MAX),
                errno,
                sticky,
                short_writes: std::sync::atomic::AtomicBool::new(false),
            }
        }

        /// A failing `write_all_at` writes half of its buffer before it fails.
        pub fn short_writes(&self, on: bool) {
            self.short_writes.store(on, Ordering::SeqCst);
        }

        /// Arms the fault: the `n`th call from now (1-based) fails.
        pub fn fail_after(&self, n: u64) {
            let now = self.calls.load(Ordering::SeqCst);
            self.fail_at.store(now + n, Ordering::SeqCst);
        }

        pub fn disarm(&self) {
            self.fail_at.store(u64::MAX, Ordering::SeqCst);
        }

        /// Number of calls made so far.
        pub fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }

        fn step(&self) -> io::Result<()> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let at = self.fail_at.load(Ordering::SeqCst);
            if n == at || (self.sticky && n > at) {
                return Err(io::Error::from_raw_os_error(self.errno));
            }
            Ok(())
        }
    }

    impl StoreIo for FaultyIo {
        fn create_new(&self, path: &Path, mode: u32) -> io::Result<File> {
            self.step()?;
            self.inner.create_new(path, mode)
        }
        fn open_rw(&self, path: &Path) -> io::Result<File> {
            self.step()?;
            self.inner.open_rw(path)
        }
        fn write_all_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
            if let Err(e) = self.step() {
                if self.short_writes.load(Ordering::SeqCst) && buf.len() > 1 {
                    self.inner.write_all_at(file, &buf[..buf.len() / 2], offset)?;
                }
                return Err(e);
            }
            self.inner.write_all_at(file, buf, offset)
        }
        fn set_len(&self, file: &File, len: u64) -> io::Result<()> {
            self.step()?;
            self.inner.set_len(file, len)
        }
        fn sync_data(&self, file: &File) -> io::Result<()> {
            self.step()?;
            self.inner.sync_data(file)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.step()?;
            self.inner.sync_dir(dir)
        }
        fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.step()?;
            self.inner.link(from, to)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.step()?;
            self.inner.rename(from, to)
        }
        fn unlink(&self, path: &Path) -> io::Result<()> {
            self.step()?;
            self.inner.unlink(path)
        }
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.step()?;
            self.inner.create_dir(path)
        }
    }
}
