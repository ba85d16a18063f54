//! Store inodes as the kernel sees them.

use crate::store::records::{Inode, Kind, Timestamp};
use fuser::{FileAttr, FileType, INodeNo};

/// st_blksize: large, so cp and stdio move data in big pieces (each write is a FUSE request).
pub const BLOCK_SIZE_HINT: u32 = 128 << 10;

pub fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

pub fn kind_from_mode(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Some(Kind::File),
        libc::S_IFDIR => Some(Kind::Dir),
        libc::S_IFLNK => Some(Kind::Symlink),
        libc::S_IFIFO => Some(Kind::Fifo),
        libc::S_IFSOCK => Some(Kind::Socket),
        libc::S_IFCHR => Some(Kind::CharDev),
        libc::S_IFBLK => Some(Kind::BlockDev),
        _ => None,
    }
}

/// Attributes of `inode` under node id `nodeid`, with a generation's size and mtime.
pub fn to_attr(nodeid: u64, inode: &Inode, size: u64, mtime: Timestamp) -> FileAttr {
    let size = if inode.kind == Kind::Dir { 4096 } else { size };
    FileAttr {
        ino: INodeNo(nodeid),
        size,
        blocks: size.div_ceil(512),
        atime: inode.atime.to_system(),
        mtime: mtime.to_system(),
        ctime: inode.ctime.to_system(),
        crtime: inode.crtime.to_system(),
        kind: file_type(inode.kind),
        perm: inode.perm,
        nlink: inode.nlink,
        uid: inode.uid,
        gid: inode.gid,
        rdev: inode.rdev,
        blksize: BLOCK_SIZE_HINT,
        flags: 0,
    }
}
