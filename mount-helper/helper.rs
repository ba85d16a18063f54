//! The mount(8)/umount(8) helpers: `mount.genfs`, `mount.fuse.genfs`, `umount.genfs` and
//! `umount.fuse.genfs` are names of the `genfs` binary itself (symbolic links to it), which
//! looks at the name it was run by.
//!
//! * `mount -t genfs STORE MNT -o OPTS` runs `mount.genfs STORE MNT [-sfnv] [-o OPTS]`; fstab
//!   type `fuse.genfs` runs `mount.fuse.genfs` the same way. Both become
//!   `genfs mount STORE MNT -o OPTS`, which returns once the mount answers.
//! * `umount MNT` runs `umount.fuse.genfs MNT` (root) or `umount.genfs MNT` (a user, through
//!   the mount's `uhelper=genfs`) when the mount is in /run/mount/utab, which `genfs mount`
//!   arranges; both become `genfs umount MNT`, which waits for the daemon to exit.
//!
//! One binary rather than a script or a second program: the helpers can never be of another
//! version than the daemon, need no PATH (mount(8) may run them with a minimal environment),
//! and share genfs's option parser, so `mount -t genfs` and `genfs mount` accept the same.

use clap::{Arg, ArgAction, Command};
use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Helper {
    Mount,
    Umount,
}

/// Which helper `argv0` names, if any.
pub fn helper_for(argv0: &OsStr) -> Option<Helper> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    match name {
        "mount.genfs" | "mount.fuse.genfs" => Some(Helper::Mount),
        "umount.genfs" | "umount.fuse.genfs" => Some(Helper::Umount),
        _ => None,
    }
}

const MOUNT_ABOUT: &str =
    "Mount a genfs store: the helper mount(8) runs for `mount -t genfs` and fstab type genfs or fuse.genfs";

/// The command line of `mount.genfs`, as mount(8) calls it (also the source of mount.genfs(8)).
pub fn mount_command() -> Command {
    Command::new("mount.genfs")
        .about(MOUNT_ABOUT)
        .long_about(
            "mount(8) runs mount.genfs for `mount -t genfs STORE MOUNTPOINT` and for /etc/fstab lines of \
             type genfs (mount.fuse.genfs, the same program, for type fuse.genfs). It starts the genfs \
             daemon and returns once the mount answers; errors go to standard error with a non-zero \
             exit status. It is equivalent to `genfs mount STORE MOUNTPOINT -o OPTIONS`.",
        )
        .version(env!("CARGO_PKG_VERSION"))
        .disable_version_flag(true)
        .arg(
            Arg::new("store")
                .value_name("STORE")
                .required(true)
                .help("The store directory (made by `genfs mkfs`)"),
        )
        .arg(Arg::new("mountpoint").value_name("MOUNTPOINT").required(true).help("An existing directory"))
        .arg(
            Arg::new("options")
                .short('o')
                .value_name("OPTIONS")
                .action(ArgAction::Append)
                .help("Mount options, comma separated: as for `genfs mount -o` (see genfs-mount(1))"),
        )
        .arg(Arg::new("sloppy").short('s').action(ArgAction::SetTrue).help("Ignore unknown mount options"))
        .arg(
            Arg::new("fake")
                .short('f')
                .action(ArgAction::SetTrue)
                .help("Do everything except mounting (mount -f)"),
        )
        .arg(
            Arg::new("nomtab")
                .short('n')
                .action(ArgAction::SetTrue)
                .help("Do not record the mount in /run/mount/utab"),
        )
        .arg(Arg::new("verbose").short('v').action(ArgAction::SetTrue).help("Say what was mounted"))
        .arg(Arg::new("ro").short('r').action(ArgAction::SetTrue).help("Mount read-only (as -o ro)"))
        .arg(Arg::new("rw").short('w').action(ArgAction::SetTrue).help("Mount read-write (as -o rw)"))
        .arg(
            Arg::new("type")
                .short('t')
                .value_name("TYPE")
                .help("The type mount(8) was given (genfs or fuse.genfs); ignored"),
        )
        .arg(
            Arg::new("namespace")
                .short('N')
                .value_name("NS")
                .help("Mount in another mount namespace: not supported"),
        )
}

/// The command line of `umount.genfs`, as umount(8) calls it.
pub fn umount_command() -> Command {
    Command::new("umount.genfs")
        .about("Unmount a genfs mount and wait for its daemon: the helper umount(8) runs")
        .disable_version_flag(true)
        .arg(Arg::new("mountpoint").value_name("MOUNTPOINT").required(true))
        .arg(Arg::new("force").short('f').action(ArgAction::SetTrue))
        .arg(Arg::new("lazy").short('l').action(ArgAction::SetTrue))
        .arg(Arg::new("nomtab").short('n').action(ArgAction::SetTrue))
        .arg(Arg::new("remount").short('r').action(ArgAction::SetTrue))
        .arg(Arg::new("verbose").short('v').action(ArgAction::SetTrue))
        .arg(Arg::new("type").short('t').value_name("TYPE"))
        .arg(Arg::new("namespace").short('N').value_name("NS"))
}

/// The `genfs` command line a helper invocation stands for (`None`: nothing to do, `-f`).
pub fn translate(helper: Helper, args: &[OsString]) -> Result<Option<Vec<OsString>>, clap::Error> {
    let mut out: Vec<OsString> = vec!["genfs".into()];
    match helper {
        Helper::Mount => {
            let m = mount_command().try_get_matches_from(args)?;
            if m.get_one::<String>("namespace").is_some() {
                return Err(clap::Error::raw(
                    clap::error::ErrorKind::InvalidValue,
                    "mount.genfs: -N (another mount namespace) is not supported\n",
                ));
            }
            if m.get_flag("fake") {
                return Ok(None);
            }
            out.push("mount".into());
            out.push(required(&m, "store")?.into());
            out.push(required(&m, "mountpoint")?.into());
            let mut opts: Vec<String> =
                m.get_many::<String>("options").into_iter().flatten().cloned().collect();
            if m.get_flag("ro") {
                opts.push("ro".into());
            }
            if m.get_flag("rw") {
                opts.push("rw".into());
            }
            if !opts.is_empty() {
                out.push("-o".into());
                out.push(opts.join(",").into());
            }
            for (flag, long) in [("sloppy", "--sloppy"), ("nomtab", "--no-mtab"), ("verbose", "--verbose")] {
                if m.get_flag(flag) {
                    out.push(long.into());
                }
            }
            out.push("--mount8".into());
        }
        Helper::Umount => {
            let m = umount_command().try_get_matches_from(args)?;
            out.push("umount".into());
            out.push("--any".into());
            out.push(required(&m, "mountpoint")?.into());
            for (flag, long) in [("lazy", "--lazy"), ("force", "--force"), ("verbose", "--verbose")] {
                if m.get_flag(flag) {
                    out.push(long.into());
                }
            }
        }
    }
    Ok(Some(out))
}

/// Runs a helper: translates its arguments and becomes `genfs` with them (exec of this very
/// binary, so `ps` shows the daemon as `genfs mount ...`).
pub fn run(helper: Helper, args: Vec<OsString>) -> ExitCode {
    let argv = match translate(helper, &args) {
        Ok(Some(argv)) => argv,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let err = std::process::Command::new(&exe).arg0(&argv[0]).args(&argv[1..]).exec();
    // exec failed (the binary was replaced or removed meanwhile): run in this process.
    eprintln!("genfs: cannot run {}: {err}; continuing in this process", exe.display());
    super::main_with(argv)
}

/// A required argument (clap has checked it is there; an error, not a panic, if not).
fn required<'a>(m: &'a clap::ArgMatches, name: &str) -> Result<&'a String, clap::Error> {
    m.get_one::<String>(name).ok_or_else(|| {
        clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, format!("missing {name}\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(helper: Helper, args: &[&str]) -> Option<Vec<String>> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        translate(helper, &args).unwrap().map(|v| v.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    #[test]
    fn helper_names() {
        assert_eq!(helper_for(OsStr::new("/sbin/mount.genfs")), Some(Helper::Mount));
        assert_eq!(helper_for(OsStr::new("mount.fuse.genfs")), Some(Helper::Mount));
        assert_eq!(helper_for(OsStr::new("/usr/sbin/umount.fuse.genfs")), Some(Helper::Umount));
        assert_eq!(helper_for(OsStr::new("umount.genfs")), Some(Helper::Umount));
        assert_eq!(helper_for(OsStr::new("/usr/bin/genfs")), None);
    }

    #[test]
    fn mount_arguments_as_mount8_passes_them() {
        assert_eq!(
            t(Helper::Mount, &["mount.genfs", "/s", "/m", "-o", "rw,nofail"]).unwrap(),
            ["genfs", "mount", "/s", "/m", "-o", "rw,nofail", "--mount8"]
        );
        assert_eq!(
            t(Helper::Mount, &["mount.fuse.genfs", "/s", "/m", "-sv", "-n", "-o", "ro", "-t", "fuse.genfs"])
                .unwrap(),
            ["genfs", "mount", "/s", "/m", "-o", "ro", "--sloppy", "--no-mtab", "--verbose", "--mount8"]
        );
        assert_eq!(
            t(Helper::Mount, &["mount.genfs", "/s", "/m", "-r"]).unwrap(),
            ["genfs", "mount", "/s", "/m", "-o", "ro", "--mount8"]
        );
        assert_eq!(t(Helper::Mount, &["mount.genfs", "/s", "/m", "-f", "-o", "rw"]), None);
        assert!(translate(Helper::Mount, &["mount.genfs".into(), "/s".into()]).is_err());
        assert!(translate(
            Helper::Mount,
            &["mount.genfs".into(), "/s".into(), "/m".into(), "-N".into(), "1".into()]
        )
        .is_err());
    }

    #[test]
    fn umount_arguments_as_umount8_passes_them() {
        assert_eq!(
            t(Helper::Umount, &["umount.fuse.genfs", "/m"]).unwrap(),
            ["genfs", "umount", "--any", "/m"]
        );
        assert_eq!(
            t(Helper::Umount, &["umount.genfs", "/m", "-l", "-n", "-v", "-t", "fuse.genfs"]).unwrap(),
            ["genfs", "umount", "--any", "/m", "--lazy", "--verbose"]
        );
    }
}
