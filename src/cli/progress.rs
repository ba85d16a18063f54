//! Progress on a terminal (indicatif): a spinner with a message, the elapsed time and a count,
//! for commands that may take a while (`restore --tree`, `gc`). Nothing is drawn when stderr
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

    /// Prints a line above the spinner (or just prints it).
    pub fn println(&self, line: std::fmt::Arguments) {
        match &self.0 {
            Some(bar) => bar.println(line.to_string()),
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
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
