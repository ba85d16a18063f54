//! Manual pages: genfs(1) and one page per subcommand (genfs-log(1), ...) from the clap
//! definitions with clap_mangen, mount.genfs(8) from the helper's clap definition, and the
//! hand-written genfs-xattr(7) (packaging/man/genfs-xattr.7, kept in step with docs/xattrs.md
//! by a test). `genfs man DIR` writes them; packaging/build-deb installs them.

use super::helper;
use anyhow::Context;
use std::path::Path;

pub const XATTR_PAGE: &str = include_str!("../../packaging/man/genfs-xattr.7");

const GENFS_EXTRA: &str = r#".SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter (for example \fBgenfs=debug\fR). Commands log warnings and errors to standard error;
the daemon also logs mounts, recoveries and unmounts. \fBgenfs mount \-o debug\fR logs everything.
.SH FILES
.TP
\fISTORE\fB/genfs.log\fR
The daemon's log when it runs in the background, unless \fB\-o log=\fR\fIPATH\fR or \fB\-o log=syslog\fR.
.TP
\fISTORE\fB/lock\fR
Held by the daemon serving the store; contains its process id.
.TP
\fB/run/mount/utab\fR
Where \fBgenfs mount\fR (as root) records \fBuhelper=genfs\fR so that \fBumount\fR waits for the daemon.
.SH EXIT STATUS
0 on success, 1 on any error (one line on standard error, \fBgenfs: \fR\fIcontext\fR\fB: \fR\fIcause\fR).
.SH "SEE ALSO"
\fBmount.genfs\fR(8), \fBgenfs\-xattr\fR(7), \fBgenfs\-mount\fR(1), \fBgenfs\-umount\fR(1),
\fBgenfs\-log\fR(1), \fBgenfs\-restore\fR(1), \fBgenfs\-snapshot\fR(1),
\fBfusermount3\fR(1), \fBmount\fR(8), \fBfstab\fR(5); the user guide in
/usr/share/doc/genfs/guide.md.
"#;

const MOUNT_EXTRA: &str = r#".SH OPTIONS FOR GENFS
Generic options: \fBro\fR, \fBrw\fR, \fBnodev\fR, \fBnosuid\fR, \fBnoexec\fR, \fBdev\fR, \fBsuid\fR,
\fBexec\fR, \fBrelatime\fR (the default), \fBstrictatime\fR, \fBnoatime\fR, \fBatime\fR,
\fBnodiratime\fR, \fBdiratime\fR, \fBlazytime\fR, \fBsync\fR, \fBasync\fR, \fBdirsync\fR,
\fBallow_other\fR, \fBallow_root\fR, \fBdefault_permissions\fR (always on). \fBsuid\fR and
\fBdev\fR are for root only; through mount(8) they are root's default, as for a local
filesystem, while \fBgenfs mount\fR defaults to \fBnosuid,nodev\fR. \fBremount\fR (root only)
changes the generic flags of a mounted store: \fBmount \-o remount,ro\fR \fIMOUNTPOINT\fR.
Ignored, because mount(8) and fstab use them for themselves: \fBdefaults\fR, \fBauto\fR,
\fBnoauto\fR, \fBuser\fR, \fBnouser\fR, \fBusers\fR, \fBowner\fR, \fBgroup\fR, \fBnofail\fR,
\fB_netdev\fR, \fBcomment=\fR, \fBx\-\fR*, \fBuhelper=\fR, \fBhelper=\fR.
.PP
genfs's own: \fBdebug\fR (log at debug level), \fBlog=\fR\fIPATH\fR (the daemon's log file; default
\fISTORE\fR/genfs.log), \fBlog=syslog\fR (to syslog, which journald collects),
\fBretention=\fR\fIPOLICY\fR (the retention policy of the root, inherited by files without their
own; separate its rules with \fB:\fR, e.g. \fBretention=keep\-last=5:keep\-within=2d\fR; see
\fBgenfs\-xattr\fR(7)). \fBcommit=\fR and \fBcache=\fR are refused: every close already commits
durably.
.SH FSTAB
.nf
/srv/genfs/projects  /projects  genfs       defaults,nofail  0  0
/srv/genfs/scratch   /scratch   fuse.genfs  noauto,nodev     0  0
.fi
.PP
Both types work: \fBgenfs\fR runs \fBmount.genfs\fR, \fBfuse.genfs\fR runs \fBmount.fuse.genfs\fR
(or, where only \fBmount.fuse3\fR is installed, \fBgenfs \fISTORE MOUNTPOINT\fB \-o \fIOPTIONS\fR,
which genfs also accepts). \fBmount \fIMOUNTPOINT\fR and \fBmount \-a\fR use the line; so does
systemd's fstab generator, which makes a \fIescaped\-path\fR.mount unit.
.SH UNMOUNTING
\fBumount \fIMOUNTPOINT\fR returns only after the daemon has made everything durable and exited:
the mount is recorded in /run/mount/utab with \fBuhelper=genfs\fR, so umount(8) runs
\fBumount.fuse.genfs\fR (as root) or \fBumount.genfs\fR, which is \fBgenfs umount\fR.
\fBumount \-l\fR detaches at once and does not wait. A normal user unmounts with
\fBgenfs umount \fIMOUNTPOINT\fR (which waits) or \fBfusermount3 \-u \fIMOUNTPOINT\fR (which does not).
.SH NORMAL USERS
A user mounts a store they own with \fBgenfs mount\fR, which goes through \fBfusermount3\fR(1):
\fB/dev/fuse\fR must be readable and writable by the user (mode 0666, Debian's default), and
\fBallow_other\fR needs \fBuser_allow_other\fR in /etc/fuse.conf.
.SH EXIT STATUS
0 when the mount is ready, 1 with a message on standard error otherwise.
.SH "SEE ALSO"
\fBgenfs\fR(1), \fBgenfs\-mount\fR(1), \fBgenfs\-xattr\fR(7), \fBmount\fR(8), \fBumount\fR(8),
\fBfstab\fR(5), \fBsystemd.mount\fR(5), \fBfusermount3\fR(1)
"#;

fn render(cmd: clap::Command, section: &str, extra: &str) -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd)
        .section(section)
        .manual("genfs manual")
        .source(format!("genfs {}", env!("CARGO_PKG_VERSION")));
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    buf.extend_from_slice(extra.as_bytes());
    Ok(buf)
}

/// Every page, as (file name, roff text).
pub fn man_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = super::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![("genfs.1".to_string(), render(cmd.clone(), "1", GENFS_EXTRA)?)];
    fn subpages(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = sub.get_display_name().unwrap_or(sub.get_name()).to_string();
            let see_also = ".SH \"SEE ALSO\"\n\\fBgenfs\\fR(1), \\fBgenfs\\-xattr\\fR(7)\n";
            pages.push((format!("{name}.1"), render(sub.clone(), "1", see_also)?));
            subpages(sub, pages)?;
        }
        Ok(())
    }
    subpages(&cmd, &mut pages)?;
    pages.push(("mount.genfs.8".into(), render(helper::mount_command(), "8", MOUNT_EXTRA)?));
    pages.push(("genfs-xattr.7".into(), XATTR_PAGE.as_bytes().to_vec()));
    Ok(pages)
}

pub fn write_man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, text) in man_pages()? {
        let path = dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_exist_for_every_visible_subcommand() {
        let pages = man_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "genfs.1",
            "genfs-mount.1",
            "genfs-umount.1",
            "genfs-log.1",
            "genfs-snapshot-create.1",
            "mount.genfs.8",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.starts_with("genfs-man")), "hidden commands get no page");
        let genfs = String::from_utf8(pages[0].1.clone()).unwrap();
        assert!(genfs.contains(".TH genfs 1") && genfs.contains("SEE ALSO"), "{genfs}");
    }

    /// genfs-xattr(7) names every attribute docs/xattrs.md lists.
    #[test]
    fn xattr_page_covers_the_reference() {
        let reference = include_str!("../../docs/xattrs.md");
        for line in reference.lines().filter(|l| l.starts_with("| `user.genfs.")) {
            let name = line.split('`').nth(1).unwrap();
            // `user.genfs.log.before.G`: G is a placeholder, set in italics in the page.
            let name = name.trim_end_matches(|c: char| c.is_ascii_uppercase());
            let roff_name = name.replace('-', "\\-");
            assert!(XATTR_PAGE.contains(&roff_name), "genfs-xattr.7 lacks {name}");
        }
    }
}
