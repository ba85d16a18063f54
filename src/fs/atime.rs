//! When reading updates atime. FUSE inodes never get an atime from the kernel (it marks them
//! S_NOATIME), so genfs applies the mount's atime mode itself, as the VFS does for ext4
//! (`relatime` by default). The mode follows remounts (the mount command reads mountinfo).

use crate::store::records::{Inode, Timestamp};
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimeMode {
    /// `relatime`: only when atime is not after mtime or ctime, or is a day old.
    #[default]
    Relative,
    /// `strictatime`: on every read.
    Strict,
    /// `noatime`: never.
    Never,
}

/// What the kernel says of the mount, for atime: its mode, `nodiratime`, and `ro` (no atime
/// updates on a read-only mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtimeOptions {
    pub mode: AtimeMode,
    pub no_dir_atime: bool,
    pub read_only: bool,
}

const MODE_BITS: u8 = 0b11;
const NO_DIR_ATIME: u8 = 1 << 2;
const READ_ONLY: u8 = 1 << 3;

/// The mount's current atime options, readable from every request thread.
#[derive(Default)]
pub struct AtimePolicy(AtomicU8);

impl AtimePolicy {
    pub fn set(&self, o: AtimeOptions) {
        let mode = match o.mode {
            AtimeMode::Relative => 0,
            AtimeMode::Strict => 1,
            AtimeMode::Never => 2,
        };
        let bits =
            mode | if o.no_dir_atime { NO_DIR_ATIME } else { 0 } | if o.read_only { READ_ONLY } else { 0 };
        self.0.store(bits, Ordering::Relaxed);
    }

    pub fn get(&self) -> AtimeOptions {
        let bits = self.0.load(Ordering::Relaxed);
        let mode = match bits & MODE_BITS {
            1 => AtimeMode::Strict,
            2 => AtimeMode::Never,
            _ => AtimeMode::Relative,
        };
        AtimeOptions { mode, no_dir_atime: bits & NO_DIR_ATIME != 0, read_only: bits & READ_ONLY != 0 }
    }

    /// The atime a read of `inode` at `now` gives it, if it changes.
    pub fn after_read(&self, inode: &Inode, is_dir: bool, now: Timestamp) -> Option<Timestamp> {
        let o = self.get();
        if o.read_only || (is_dir && o.no_dir_atime) {
            return None;
        }
        let update = match o.mode {
            AtimeMode::Never => false,
            AtimeMode::Strict => true,
            // The kernel's relatime_need_update.
            AtimeMode::Relative => {
                inode.atime <= inode.mtime
                    || inode.atime <= inode.ctime
                    || now.secs - inode.atime.secs >= 24 * 3600
            }
        };
        (update && inode.atime != now).then_some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(atime: i64, mtime: i64, ctime: i64) -> Inode {
        let t = |secs| Timestamp { secs, nanos: 0 };
        Inode {
            kind: crate::store::records::Kind::File,
            perm: 0o644,
            uid: 0,
            gid: 0,
            nlink: 1,
            rdev: 0,
            size: 0,
            atime: t(atime),
            mtime: t(mtime),
            ctime: t(ctime),
            crtime: t(0),
            gen: 0,
            last_gen: 0,
            target: Vec::new(),
            next_cookie: 0,
            history: None,
        }
    }

    #[test]
    fn relatime_strictatime_noatime_nodiratime_ro() {
        let p = AtimePolicy::default();
        let now = Timestamp { secs: 1_000, nanos: 0 };
        assert_eq!(p.after_read(&inode(50, 60, 60), false, now), Some(now), "atime before mtime");
        assert_eq!(p.after_read(&inode(70, 60, 60), false, now), None, "atime after mtime, recent");
        let a_day_later = Timestamp { secs: 70 + 86_400, nanos: 0 };
        assert_eq!(p.after_read(&inode(70, 60, 60), false, a_day_later), Some(a_day_later));
        p.set(AtimeOptions { mode: AtimeMode::Strict, ..Default::default() });
        assert_eq!(p.after_read(&inode(70, 60, 60), false, now), Some(now));
        p.set(AtimeOptions { mode: AtimeMode::Strict, no_dir_atime: true, read_only: false });
        assert_eq!(p.after_read(&inode(70, 60, 60), true, now), None);
        assert_eq!(p.get(), AtimeOptions { mode: AtimeMode::Strict, no_dir_atime: true, read_only: false });
        p.set(AtimeOptions { mode: AtimeMode::Never, ..Default::default() });
        assert_eq!(p.after_read(&inode(50, 60, 60), false, now), None);
        p.set(AtimeOptions { read_only: true, ..Default::default() });
        assert_eq!(p.after_read(&inode(50, 60, 60), false, now), None);
    }
}
