//! Logging (tracing): quiet by default, `RUST_LOG` or `-o debug` for detail.
//!
//! Commands log to stderr. The mount daemon logs to stderr in the foreground; detached, to a
//! file (`STORE/genfs.log` unless `-o log=PATH`) or to syslog (`-o log=syslog`, which journald
//! collects on systemd machines). Lines in files carry a UTC timestamp; syslog adds its own.

use std::ffi::CString;
use std::io::Write;
use std::path::PathBuf;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where the daemon's log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
    Syslog,
}

/// The filter: `-o debug` makes genfs (and fuser) log at debug level; otherwise `RUST_LOG`,
/// else `default`.
fn filter(debug: bool, default: &str) -> EnvFilter {
    if debug {
        return EnvFilter::new("warn,genfs=debug,fuser=debug");
    }
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Commands other than the daemon: warnings and errors on stderr (`RUST_LOG` for more).
pub fn init_cli() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(false, "warn"))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The daemon's logging. Errors and warnings by default, plus a line at mount, recovery and
/// unmount. Panics are logged too (a detached daemon's stderr may go nowhere).
pub fn init_daemon(target: &LogTarget, debug: bool) {
    // fuser 0.18 warns "Failed to umount filesystem: Invalid argument" at every clean unmount
    // (its is_mounted check reads POLLERR as "still mounted"): keep that noise out of the log.
    let filter = filter(debug, "warn,genfs=info,fuser::session=error");
    let result = match target {
        LogTarget::Stderr => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init()
        }
        // The file is the daemon's stderr (dup2 at detach), so panics' own output lands there too.
        LogTarget::File(_) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init(),
        LogTarget::Syslog => {
            // SAFETY: the identifier is a static C string, as openlog requires.
            unsafe { libc::openlog(c"genfs".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_DAEMON) };
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_target(false)
                .with_writer(Syslog)
                .try_init()
        }
    };
    drop(result);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("daemon panic: {info}");
        default_hook(info);
    }));
}

/// Writes each tracing event as one syslog message at the event's level.
struct Syslog;

struct SyslogEvent {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogEvent {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogEvent {
    fn drop(&mut self) {
        for line in self.buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line: Vec<u8> = line.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
            if let Ok(msg) = CString::new(line) {
                // SAFETY: a constant format string and a NUL-terminated argument.
                unsafe { libc::syslog(self.priority, c"%s".as_ptr(), msg.as_ptr()) };
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogEvent;

    fn make_writer(&'a self) -> SyslogEvent {
        SyslogEvent { priority: libc::LOG_INFO, buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogEvent {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogEvent { priority, buf: Vec::new() }
    }
}
