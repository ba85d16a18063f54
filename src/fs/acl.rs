//! POSIX ACLs as the kernel expects of a FUSE filesystem with `FUSE_POSIX_ACL`: the kernel
//! checks them (fetching `system.posix_acl_access` through getxattr and caching it), genfs
//! stores them and keeps them and the mode in step, as ext4 does: a set ACL sets the mode, a
//! chmod sets the ACL, and new files and directories inherit their directory's default ACL.

use super::Core;
use crate::store::records::{Ino, Kind};
use crate::store::{SetAttrs, StoreError, StoreResult, XattrMode};

/// Extended attributes to store with a new node: (name, value).
pub type NewXattrs = Vec<(Vec<u8>, Vec<u8>)>;

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL in the kernel's xattr form: a version word, then (tag, perm, id) entries, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    pub fn parse(bytes: &[u8]) -> StoreResult<Acl> {
        let word = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if word(0) != Some(VERSION) || (bytes.len() - 4) % 8 != 0 {
            return Err(StoreError::InvalidArgument);
        }
        let entries = bytes[4..]
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect::<Vec<_>>();
        let has = |tag| entries.iter().any(|e| e.tag == tag);
        if !has(USER_OBJ) || !has(GROUP_OBJ) || !has(OTHER) {
            return Err(StoreError::InvalidArgument);
        }
        Ok(Acl(entries))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Says no more than the mode does (owner, group and other only): ext4 then keeps no ACL.
    pub fn is_mode_only(&self) -> bool {
        self.0.iter().all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    fn perm_of(&self, tag: u16) -> Option<u16> {
        self.0.iter().find(|e| e.tag == tag).map(|e| e.perm & 7)
    }

    /// The rwx bits of the mode this ACL gives (the mask stands for the group: the kernel's
    /// posix_acl_equiv_mode).
    pub fn mode_bits(&self) -> u16 {
        let group = self.perm_of(MASK).or(self.perm_of(GROUP_OBJ)).unwrap_or(0);
        (self.perm_of(USER_OBJ).unwrap_or(0) << 6) | (group << 3) | self.perm_of(OTHER).unwrap_or(0)
    }

    /// chmod of a file with this ACL: the owner, mask (or group) and other entries take the
    /// new mode's bits (posix_acl_chmod).
    pub fn chmod(&mut self, perm: u16) {
        let group_tag = if self.perm_of(MASK).is_some() { MASK } else { GROUP_OBJ };
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = (perm >> 6) & 7,
                OTHER => e.perm = perm & 7,
                t if t == group_tag => e.perm = (perm >> 3) & 7,
                _ => {}
            }
        }
    }

    /// Whether this ACL grants `want` (rwx bits, 0..=7) to a caller, as the kernel's
    /// posix_acl_permission decides: the owner entry, else a named user (under the mask), else
    /// any matching group entry (under the mask), else other.
    pub fn permits(&self, caller: u32, groups: &[u32], owner: (u32, u32), want: u16) -> bool {
        let mask = self.perm_of(MASK).unwrap_or(7);
        if caller == owner.0 {
            return self.perm_of(USER_OBJ).unwrap_or(0) & want == want;
        }
        if let Some(e) = self.0.iter().find(|e| e.tag == USER && e.id == caller) {
            return e.perm & mask & want == want;
        }
        let in_group = |e: &&Entry| match e.tag {
            GROUP_OBJ => groups.contains(&owner.1),
            GROUP => groups.contains(&e.id),
            _ => false,
        };
        let mut matched = false;
        for e in self.0.iter().filter(in_group) {
            if e.perm & mask & want == want {
                return true;
            }
            matched = true;
        }
        !matched && self.perm_of(OTHER).unwrap_or(0) & want == want
    }

    /// The ACL of a file's generations directory (`.genfs/gen/INO`): searchable and listable
    /// by each entry that may read the file, nothing more (as its mode is).
    pub fn readable_as_searchable(&self) -> Acl {
        Acl(self.0.iter().map(|e| Entry { perm: if e.perm & 4 != 0 { 5 } else { 0 }, ..*e }).collect())
    }

    /// A new file's access ACL from its directory's default ACL and the mode it asked for
    /// (posix_acl_create_masq): each side limits the other. Returns the ACL to store (none
    /// if the mode says it all) and the new mode's rwx bits.
    pub fn for_new_file(&self, mode: u16) -> (Option<Acl>, u16) {
        let mut acl = self.clone();
        let mut mode = mode & 0o777;
        let mut extended = false;
        for e in &mut acl.0 {
            match e.tag {
                USER_OBJ => {
                    e.perm &= (mode >> 6) & 7;
                    mode &= (e.perm << 6) | !0o700;
                }
                USER | GROUP | MASK => extended = true,
                OTHER => {
                    e.perm &= mode & 7;
                    mode &= e.perm | !0o007;
                }
                _ => {}
            }
        }
        let group_tag = if acl.perm_of(MASK).is_some() { MASK } else { GROUP_OBJ };
        if let Some(e) = acl.0.iter_mut().find(|e| e.tag == group_tag) {
            e.perm &= (mode >> 3) & 7;
            mode &= (e.perm << 3) | !0o070;
        }
        (extended.then_some(acl), mode & 0o777)
    }
}

impl Core {
    /// setxattr of an ACL (the kernel has checked the caller owns the file, and the ACL's
    /// form). An access ACL sets the mode, and is kept only if the mode cannot say it; it drops
    /// setgid when the caller is not in the file's group (the kernel leaves that to genfs, as
    /// fuser lacks FUSE_SETXATTR_EXT, which would carry its verdict).
    pub(super) fn set_acl(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        caller: (u32, u32, u32),
    ) -> StoreResult<()> {
        let acl = Acl::parse(value)?;
        if name == DEFAULT {
            return self.store.set_xattr(ino, name, value, mode);
        }
        let inode = self.store.inode(ino)?;
        let mut perm = (inode.perm & !0o777) | acl.mode_bits();
        let (uid, gid, tid) = caller;
        if uid != 0 && gid != inode.gid && !super::handles::groups_of(tid).contains(&inode.gid) {
            perm &= !(libc::S_ISGID as u16);
        }
        if acl.is_mode_only() {
            self.store.discard_xattr(ino, name)?;
        } else {
            self.store.set_xattr(ino, name, value, mode)?;
        }
        if perm != inode.perm {
            self.store.set_attrs(ino, &SetAttrs { perm: Some(perm), ..Default::default() })?;
        }
        Ok(())
    }

    /// A chmod of a file with an access ACL: its owner, mask and other entries follow.
    pub(super) fn chmod_acl(&self, ino: Ino, perm: u16) -> StoreResult<()> {
        let bytes = match self.store.xattr(ino, ACCESS) {
            Ok(bytes) => bytes,
            Err(StoreError::NoAttribute) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut acl = Acl::parse(&bytes)?;
        acl.chmod(perm);
        self.store.set_xattr(ino, ACCESS, &acl.to_bytes(), XattrMode::Any)
    }

    /// What a new node in `dir` gets: its rwx bits (the umask applies only without a default
    /// ACL, as the kernel does for local filesystems) and the ACLs to store with it.
    pub(super) fn acls_for_new(
        &self,
        dir: Ino,
        kind: Kind,
        perm: u16,
        umask: u16,
    ) -> StoreResult<(u16, NewXattrs)> {
        let default = match self.store.xattr(dir, DEFAULT) {
            Ok(bytes) => Acl::parse(&bytes)?,
            Err(StoreError::NoAttribute) => return Ok(((perm & !umask) & 0o7777, Vec::new())),
            Err(e) => return Err(e),
        };
        if kind == Kind::Symlink {
            return Ok((perm, Vec::new()));
        }
        let (access, bits) = default.for_new_file(perm);
        let mut acls = Vec::new();
        if let Some(access) = access {
            acls.push((ACCESS.to_vec(), access.to_bytes()));
        }
        if kind == Kind::Dir {
            acls.push((DEFAULT.to_vec(), default.to_bytes()));
        }
        Ok(((perm & !0o777) | bits, acls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries.iter().map(|&(tag, perm, id)| Entry { tag, perm, id }).collect())
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn parse_mode_chmod_and_inheritance() {
        let named = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 6, 65534),
            (GROUP_OBJ, 4, ANY),
            (MASK, 6, ANY),
            (OTHER, 0, ANY),
        ]);
        assert_eq!(Acl::parse(&named.to_bytes()).unwrap(), named);
        assert!(Acl::parse(&[2, 0, 0, 0, 1]).is_err());
        assert!(!named.is_mode_only());
        // The mask is the group's part of the mode.
        assert_eq!(named.mode_bits(), 0o660);
        let mut c = named.clone();
        c.chmod(0o640);
        assert_eq!(c.perm_of(MASK), Some(4));
        assert_eq!(c.perm_of(GROUP_OBJ), Some(4));
        assert_eq!(c.mode_bits(), 0o640);
        // A default ACL with a named user and a mask of rwx, a file asking for 0666.
        let default = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 65534),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        let (access, mode) = default.for_new_file(0o666);
        assert_eq!(mode, 0o664);
        let access = access.unwrap();
        assert_eq!(
            (access.perm_of(USER_OBJ), access.perm_of(MASK), access.perm_of(OTHER)),
            (Some(6), Some(6), Some(4))
        );
        assert_eq!(access.perm_of(USER), Some(7), "named entries stay; the mask limits them");
        // Checks in the kernel's order: a named user's entry wins over other, under the mask.
        let dir = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 0, 65534),
            (GROUP_OBJ, 5, ANY),
            (MASK, 5, ANY),
            (OTHER, 5, ANY),
        ]);
        assert!(!dir.permits(65534, &[65534], (0, 0), 1), "named user without x");
        assert!(dir.permits(1000, &[1000], (0, 0), 1), "other has x");
        assert!(dir.permits(1000, &[0], (0, 0), 5), "the owning group");
        assert!(!named.permits(65534, &[], (0, 0), 7), "the mask limits a named user");
        // Only the three base entries: no ACL, just the mode.
        let plain = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)]);
        assert_eq!(plain.for_new_file(0o777), (None, 0o750));
    }
}
