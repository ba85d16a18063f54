//! File attributes (chattr/lsattr): immutable, append-only and nodump, enforced as ext4 does.
//! They fit a versioned filesystem: an immutable file gets no new generation, an append-only
//! one only longer ones. The kernel asks through FUSE_IOCTL (FS_IOC_GETFLAGS and
//! FS_IOC_FSGETXATTR, and their SET forms); it checks ownership and CAP_LINUX_IMMUTABLE itself,
//! but enforces nothing, since FUSE inodes never carry S_IMMUTABLE or S_APPEND.

use super::Core;
use crate::store::records::Ino;
use crate::store::{StoreError, StoreResult, XattrMode};

pub const IMMUTABLE: u32 = 0x10;
pub const APPEND: u32 = 0x20;
pub const NODUMP: u32 = 0x40;
const SUPPORTED: u32 = IMMUTABLE | APPEND | NODUMP;

/// The struct fsxattr flags for the same three.
const XFLAG_IMMUTABLE: u32 = 0x08;
const XFLAG_APPEND: u32 = 0x10;
const XFLAG_NODUMP: u32 = 0x80;

pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
const FSXATTR_SIZE: usize = 28;

/// Where the flags are kept: an xattr name outside every namespace, which genfs refuses to
/// callers (FUSE passes any name through) and never lists.
pub const FLAGS_XATTR: &[u8] = b"genfs.fileattr";

fn to_xflags(flags: u32) -> u32 {
    [(IMMUTABLE, XFLAG_IMMUTABLE), (APPEND, XFLAG_APPEND), (NODUMP, XFLAG_NODUMP)]
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .fold(0, |x, (_, xf)| x | xf)
}

fn from_xflags(xflags: u32) -> StoreResult<u32> {
    if xflags & !(XFLAG_IMMUTABLE | XFLAG_APPEND | XFLAG_NODUMP) != 0 {
        return Err(StoreError::NotSupported);
    }
    Ok([(IMMUTABLE, XFLAG_IMMUTABLE), (APPEND, XFLAG_APPEND), (NODUMP, XFLAG_NODUMP)]
        .iter()
        .filter(|(_, xf)| xflags & xf != 0)
        .fold(0, |f, (fl, _)| f | fl))
}

fn u32_at(data: &[u8], at: usize) -> StoreResult<u32> {
    let bytes = data.get(at..at + 4).ok_or(StoreError::InvalidArgument)?;
    Ok(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Core {
    /// The file's attribute flags (0 for most files).
    pub(super) fn fileattr(&self, ino: Ino) -> StoreResult<u32> {
        match self.store.xattr(ino, FLAGS_XATTR) {
            Ok(v) => u32_at(&v, 0),
            Err(StoreError::NoAttribute) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// EPERM if the file has one of `forbidding` (IMMUTABLE, APPEND).
    pub(super) fn refuse_if(&self, ino: Ino, forbidding: u32) -> StoreResult<()> {
        if self.fileattr(ino)? & forbidding != 0 {
            return Err(StoreError::NotPermitted);
        }
        Ok(())
    }

    fn set_fileattr(&self, ino: Ino, flags: u32) -> StoreResult<()> {
        if flags & !SUPPORTED != 0 {
            return Err(StoreError::NotSupported);
        }
        if flags == 0 {
            self.store.discard_xattr(ino, FLAGS_XATTR)?;
        } else {
            self.store.set_xattr(ino, FLAGS_XATTR, &flags.to_ne_bytes(), XattrMode::Any)?;
        }
        if let Some(file) = self.files.get(ino) {
            file.immutable.store(flags & IMMUTABLE != 0, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// A FUSE_IOCTL: the answer's bytes for the fileattr commands, ENOTTY for the rest.
    pub(super) fn fileattr_ioctl(&self, nodeid: u64, cmd: u32, input: &[u8]) -> StoreResult<Vec<u8>> {
        match cmd {
            FS_IOC_GETFLAGS => Ok(self.fileattr(self.ino_of(nodeid)?)?.to_ne_bytes().to_vec()),
            FS_IOC_FSGETXATTR => {
                let mut out = vec![0u8; FSXATTR_SIZE];
                out[..4].copy_from_slice(&to_xflags(self.fileattr(self.ino_of(nodeid)?)?).to_ne_bytes());
                Ok(out)
            }
            FS_IOC_SETFLAGS => {
                self.set_fileattr(self.writable_ino_of(nodeid)?, u32_at(input, 0)?)?;
                Ok(Vec::new())
            }
            FS_IOC_FSSETXATTR => {
                self.set_fileattr(self.writable_ino_of(nodeid)?, from_xflags(u32_at(input, 0)?)?)?;
                Ok(Vec::new())
            }
            _ => Err(StoreError::NotTty),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_xflags_map_both_ways() {
        for flags in [0, IMMUTABLE, APPEND | NODUMP, SUPPORTED] {
            assert_eq!(from_xflags(to_xflags(flags)).ok(), Some(flags));
        }
        assert!(from_xflags(0x1).is_err(), "an xflag genfs does not keep");
    }
}
