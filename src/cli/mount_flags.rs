//! A mount's VFS flags (ro, nosuid, nodev, noexec, the atime mode, sync, dirsync), as mount(8)
//! options name them: for a new mount from its options, for `-o remount` from the mount's
//! mountinfo line with the new options over it (a remount replaces every flag at once).

use super::umount::MountEntry;
use crate::fs::atime::{AtimeMode, AtimeOptions};
use fuser::MountOption;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfsFlags {
    pub read_only: bool,
    /// None: not said (a new mount's default decides).
    pub nosuid: Option<bool>,
    pub nodev: Option<bool>,
    pub noexec: bool,
    pub atime: AtimeMode,
    pub no_dir_atime: bool,
    pub sync: bool,
    pub dirsync: bool,
    pub lazytime: bool,
}

impl VfsFlags {
    /// Applies one option, the last one winning as for mount(8); false if it is not a VFS flag.
    pub fn apply(&mut self, opt: &str) -> bool {
        match opt {
            "ro" => self.read_only = true,
            "rw" => self.read_only = false,
            "suid" => self.nosuid = Some(false),
            "nosuid" => self.nosuid = Some(true),
            "dev" => self.nodev = Some(false),
            "nodev" => self.nodev = Some(true),
            "exec" => self.noexec = false,
            "noexec" => self.noexec = true,
            "relatime" | "atime" | "nostrictatime" => self.atime = AtimeMode::Relative,
            "strictatime" | "norelatime" => self.atime = AtimeMode::Strict,
            "noatime" => self.atime = AtimeMode::Never,
            "nodiratime" => self.no_dir_atime = true,
            "diratime" => self.no_dir_atime = false,
            "sync" => self.sync = true,
            "async" => self.sync = false,
            "dirsync" => self.dirsync = true,
            "lazytime" => self.lazytime = true,
            "nolazytime" => self.lazytime = false,
            _ => return false,
        }
        true
    }

    /// The flags a mount has now, from its mountinfo line.
    pub fn of_mount(m: &MountEntry) -> VfsFlags {
        let mut f = VfsFlags {
            nosuid: Some(false),
            nodev: Some(false),
            atime: AtimeMode::Strict,
            ..Default::default()
        };
        for opt in m.options.split(',').chain(m.super_options.split(',')) {
            f.apply(opt);
        }
        f
    }

    /// Whether suid or dev was asked for (only root may).
    pub fn asks_privilege(&self) -> bool {
        self.nosuid == Some(false) || self.nodev == Some(false)
    }

    /// With the defaults filled in: suid,dev if `local_defaults` (root through mount(8), as
    /// for a local filesystem), else nosuid,nodev (FUSE's default).
    pub fn resolved(&self, local_defaults: bool) -> VfsFlags {
        VfsFlags {
            nosuid: Some(self.nosuid.unwrap_or(!local_defaults)),
            nodev: Some(self.nodev.unwrap_or(!local_defaults)),
            ..self.clone()
        }
    }

    pub fn atime_options(&self) -> AtimeOptions {
        AtimeOptions { mode: self.atime, no_dir_atime: self.no_dir_atime, read_only: self.read_only }
    }

    /// What fuser's mount can say; the atime mode beyond noatime takes a remount after it.
    pub fn fuser_options(&self) -> Vec<MountOption> {
        let mut out = vec![if self.read_only { MountOption::RO } else { MountOption::RW }];
        out.push(if self.nosuid == Some(false) { MountOption::Suid } else { MountOption::NoSuid });
        out.push(if self.nodev == Some(false) { MountOption::Dev } else { MountOption::NoDev });
        out.push(if self.noexec { MountOption::NoExec } else { MountOption::Exec });
        if self.atime == AtimeMode::Never {
            out.push(MountOption::NoAtime);
        }
        if self.sync {
            out.push(MountOption::Sync);
        }
        if self.dirsync {
            out.push(MountOption::DirSync);
        }
        out
    }

    /// Whether the new mount needs a [`remount`] to get what fuser cannot say.
    pub fn beyond_fuser(&self) -> bool {
        self.atime == AtimeMode::Strict || self.no_dir_atime || self.lazytime
    }

    fn ms_flags(&self) -> libc::c_ulong {
        let mut f = 0;
        for (on, flag) in [
            (self.read_only, libc::MS_RDONLY),
            (self.nosuid != Some(false), libc::MS_NOSUID),
            (self.nodev != Some(false), libc::MS_NODEV),
            (self.noexec, libc::MS_NOEXEC),
            (self.no_dir_atime, libc::MS_NODIRATIME),
            (self.sync, libc::MS_SYNCHRONOUS),
            (self.dirsync, libc::MS_DIRSYNC),
            (self.lazytime, libc::MS_LAZYTIME),
        ] {
            if on {
                f |= flag;
            }
        }
        f | match self.atime {
            AtimeMode::Relative => libc::MS_RELATIME,
            AtimeMode::Strict => libc::MS_STRICTATIME,
            AtimeMode::Never => libc::MS_NOATIME,
        }
    }
}

/// mount(2) MS_REMOUNT of `mnt` with every flag of `flags`. `bind_only`: only the mount's own
/// flags (ro, nosuid, nodev, noexec, atime). Else the superblock's too (ro, sync, lazytime):
/// the kernel then syncs the mount first, so its daemon must be serving.
pub fn remount(mnt: &Path, flags: &VfsFlags, bind_only: bool) -> std::io::Result<()> {
    let path = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes())?;
    let ms_flags = if bind_only {
        libc::MS_BIND | (flags.ms_flags() & !(libc::MS_SYNCHRONOUS | libc::MS_DIRSYNC | libc::MS_LAZYTIME))
    } else {
        flags.ms_flags()
    };
    // SAFETY: a NUL-terminated path; source, type and data may be null for a remount.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | ms_flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_over_a_mounts_flags() {
        let m = MountEntry {
            id: 1,
            mountpoint: "/m".into(),
            options: "rw,nosuid,nodev,noatime".into(),
            fstype: "fuse.genfs".into(),
            source: "/s".into(),
            super_options: "rw,user_id=0".into(),
        };
        let mut f = VfsFlags::of_mount(&m);
        assert_eq!(
            (f.nosuid, f.nodev, f.atime, f.read_only),
            (Some(true), Some(true), AtimeMode::Never, false)
        );
        for o in ["remount", "ro", "strictatime", "nodiratime"] {
            f.apply(o);
        }
        assert_eq!(
            f.ms_flags(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NODIRATIME | libc::MS_STRICTATIME
        );
        let m = MountEntry { options: "ro,relatime".into(), super_options: "ro,sync,lazytime".into(), ..m };
        let f = VfsFlags::of_mount(&m);
        assert_eq!(
            (f.read_only, f.atime, f.sync, f.lazytime, f.nosuid),
            (true, AtimeMode::Relative, true, true, Some(false))
        );
        // Mount's order: the last word wins; unsaid suid/dev follow who mounts.
        let mut f = VfsFlags::default();
        for o in ["nosuid", "suid", "nodev"] {
            f.apply(o);
        }
        assert_eq!((f.nosuid, f.nodev), (Some(false), Some(true)));
        assert_eq!(VfsFlags::default().resolved(true).nosuid, Some(false));
        assert_eq!(VfsFlags::default().resolved(false).nodev, Some(true));
    }
}
