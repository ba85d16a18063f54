//! Logging (tracing): quiet by default, `RUST_LOG` or `-o debug` for detail.
//!
//! Commands log to stderr. The mount daemon logs to stderr in the foreground; detached, to a
//! file (`STORE/genfs.log` unless `-o log=PATH`) or to syslog (`-o log=syslog`, which journald
//! collects on systemd machines). Lines in files carry a UTC timestamp; syslog adds its own.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// A log file past this size is renamed to `PATH.1` (replacing the one before) and started
/// anew, so the log of a long-running daemon holds at most twice this much.
pub const LOG_FILE_BYTES_MAX: u64 = 8 << 20;

/// Each place in the code that logs a warning or error may do so this many times a minute;
/// the rest are counted and reported in one line when the minute is over. Requests anyone
/// can send must not be able to flood the log.
const EVENTS_PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(60);

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
        LogTarget::Stderr => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(RateLimited::new(std::io::stderr))
            .try_init(),
        // The file is the daemon's stderr (dup2 at detach), so panics' own output lands there too.
        LogTarget::File(path) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(RateLimited::new(CappedLogFile::new(path)))
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
                .with_writer(RateLimited::new(Syslog))
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

/// Passes on at most [`EVENTS_PER_WINDOW`] warnings and errors per call site and window.
struct RateLimited<M> {
    inner: M,
    windows: Mutex<HashMap<tracing::callsite::Identifier, Window>>,
}

struct Window {
    start: Instant,
    passed: u32,
    dropped: u64,
}

impl<M> RateLimited<M> {
    fn new(inner: M) -> Self {
        RateLimited { inner, windows: Mutex::new(HashMap::new()) }
    }

    /// Whether an event from `meta` may be written; with it, how many from its call site were
    /// dropped in the window that just ended.
    fn admit(&self, meta: &tracing::Metadata<'_>) -> (bool, u64) {
        if *meta.level() > tracing::Level::WARN {
            return (true, 0);
        }
        let Ok(mut windows) = self.windows.lock() else { return (true, 0) };
        let now = Instant::now();
        let w = windows.entry(meta.callsite()).or_insert(Window { start: now, passed: 0, dropped: 0 });
        let mut dropped_before = 0;
        if now.duration_since(w.start) >= WINDOW {
            dropped_before = std::mem::take(&mut w.dropped);
            w.start = now;
            w.passed = 0;
        }
        if w.passed < EVENTS_PER_WINDOW {
            w.passed += 1;
            (true, dropped_before)
        } else {
            w.dropped += 1;
            (false, dropped_before)
        }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RateLimited<M> {
    type Writer = Limited<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Limited::Pass(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let (admitted, dropped_before) = self.admit(meta);
        if dropped_before > 0 {
            let mut w = self.inner.make_writer_for(meta);
            let _ = writeln!(
                w,
                "genfs: {dropped_before} more like the next line ({}:{}) were not logged",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or(0)
            );
        }
        if admitted {
            Limited::Pass(self.inner.make_writer_for(meta))
        } else {
            Limited::Drop
        }
    }
}

enum Limited<W> {
    Pass(W),
    Drop,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Limited::Pass(w) => w.write(buf),
            Limited::Drop => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Limited::Pass(w) => w.flush(),
            Limited::Drop => Ok(()),
        }
    }
}

/// The daemon's log file, which is its stderr: past [`LOG_FILE_BYTES_MAX`] it is renamed to
/// `PATH.1` and a new file takes stdout and stderr over.
struct CappedLogFile {
    path: PathBuf,
    written: Mutex<u64>,
}

impl CappedLogFile {
    fn new(path: &Path) -> Self {
        let size = std::fs::metadata("/proc/self/fd/2").map(|m| m.len()).unwrap_or(0);
        CappedLogFile { path: path.to_path_buf(), written: Mutex::new(size) }
    }

    fn rotate(&self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        let file = open_log_file(&self.path)?;
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        unsafe {
            libc::dup2(file.as_raw_fd(), 1);
            libc::dup2(file.as_raw_fd(), 2);
        }
        Ok(())
    }
}

/// Opens a log file for appending, owner-only, never through a symbolic link: a log inside
/// a store must not be redirectable by whoever can write there.
pub fn open_log_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// One event's text, written to stderr in one call when the event is complete.
struct LogLine<'a> {
    file: &'a CappedLogFile,
    buf: Vec<u8>,
}

impl Write for LogLine<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        let Ok(mut written) = self.file.written.lock() else { return };
        if *written >= LOG_FILE_BYTES_MAX {
            *written = 0;
            if let Err(e) = self.file.rotate() {
                let _ = writeln!(std::io::stderr(), "genfs: cannot rotate {}: {e}", self.file.path.display());
            }
        }
        *written += self.buf.len() as u64;
        let _ = std::io::stderr().write_all(&self.buf);
    }
}

impl<'a> MakeWriter<'a> for CappedLogFile {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine { file: self, buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A log sink the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn a_flood_of_warnings_from_one_place_is_cut_to_the_window_allowance() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(RateLimited::new(captured.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..1000 {
                tracing::warn!("flood {i}");
            }
            tracing::warn!("another place");
            for i in 0..30 {
                tracing::info!("info {i}");
            }
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("flood").count(), EVENTS_PER_WINDOW as usize);
        assert_eq!(text.matches("another place").count(), 1);
        assert_eq!(text.matches("info").count(), 30, "only warnings and errors are limited");
    }
}
