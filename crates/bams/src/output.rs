//! Human and JSON output, and progress bars on a TTY.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// How to talk to the user.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// JSON on stdout.
    pub json: bool,
    /// Suppress progress and informational lines.
    pub quiet: bool,
}

impl Out {
    /// Progress bars only on a terminal, never with --json/--quiet.
    pub fn progress_enabled(&self) -> bool {
        !self.json && !self.quiet && std::io::stderr().is_terminal()
    }

    /// An informational line on stderr (suppressed by --quiet and --json).
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet && !self.json {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Print a value as JSON.
    pub fn json<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

/// `1.5 GiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Progress for backup/restore: bytes with rate and ETA, plus a file count.
pub struct Bar {
    bar: Option<ProgressBar>,
    files: AtomicU64,
    warnings: AtomicU64,
    quiet: bool,
}

impl Bar {
    /// A bar (hidden when not on a TTY); `total` may be set later.
    pub fn new(out: Out, verb: &str) -> Arc<Self> {
        let bar = out.progress_enabled().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{verb} {{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}} {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Arc::new(Self { bar, files: AtomicU64::new(0), warnings: AtomicU64::new(0), quiet: out.quiet || out.json })
    }

    /// Set the expected total bytes.
    pub fn set_total(&self, total: u64) {
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    /// Clear the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl bams_store::archiver::Progress for Bar {
    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn file_done(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(b) = &self.bar {
            if n.is_multiple_of(64) {
                b.set_message(format!("{n} files"));
            }
        }
    }
    fn file(&self, _path: &Path) {}
    fn warn(&self, msg: &str) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("warning: {msg}")),
            None => eprintln!("warning: {msg}"),
        }
    }
}

/// Sum of file sizes below `paths` (for the ETA), computed on a helper thread.
pub fn scan_total(paths: Vec<std::path::PathBuf>, bar: Arc<Bar>) {
    if bar.bar.is_none() {
        return;
    }
    std::thread::spawn(move || {
        let mut total = 0u64;
        let mut stack = paths;
        while let Some(p) = stack.pop() {
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                if let Ok(rd) = std::fs::read_dir(&p) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
            } else if meta.is_file() {
                total += meta.len();
                bar.set_total(total);
            }
        }
        bar.set_total(total);
    });
}
