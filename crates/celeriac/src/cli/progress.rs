//! Progress of long operations: a bar on a terminal, plain lines (at every tenth) when
//! stderr is a pipe or a file, so logs stay readable.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub(super) struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    next_line: u64,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Progress of `total` steps of `what` ("sent", "finished", ...).
    pub(super) fn new(what: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{msg:>9} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(what);
            bar
        });
        Self {
            what,
            total,
            done: 0,
            next_line: total.div_ceil(10).max(1),
            bar,
        }
    }

    pub(super) fn add(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                if self.done >= self.next_line || self.done == self.total {
                    eprintln!("{} {}/{}", self.what, self.done, self.total);
                    while self.next_line <= self.done {
                        self.next_line += self.total.div_ceil(10).max(1);
                    }
                }
            }
        }
    }

    pub(super) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish();
        }
    }
}
