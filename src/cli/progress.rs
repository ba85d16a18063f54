//! Progress on a terminal (indicatif): a spinner with a message, the elapsed time and a count,
//! for commands that may take a while (`restore --tree`, `gc`), or a bar of bytes when the total
//! is known (`scrub`). Nothing is drawn when stderr
//! is not a terminal; then lines are printed as they come, for logs and scripts.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// A spinner on stderr, if stderr is a terminal.
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn start(msg: &str) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {pos} done") {
            bar.set_style(style);
        }
        bar.set_message(msg.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// A bar of `total` bytes with throughput and time left, if stderr is a terminal.
    pub fn with_total(msg: &str, total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = ProgressBar::new(total);
        let template = "{msg} [{elapsed}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}, {eta} left";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(msg.to_string());
        Progress(Some(bar))
    }

    /// Prints a line above the spinner (or just prints it).
    pub fn println(&self, line: std::fmt::Arguments) {
        match &self.0 {
            Some(bar) => bar.println(line.to_string()),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    /// `n` more done (bytes, for a bar).
    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// One more item done.
    pub fn inc(&self) {
        if let Some(bar) = &self.0 {
            bar.inc(1);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}
