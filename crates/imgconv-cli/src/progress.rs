//! Progress on stderr: an indicatif bar for people, JSON lines for services.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use imgconv::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a JSON line is emitted at most.
const JSON_INTERVAL: Duration = Duration::from_millis(200);

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A hidden bar until `start`; colours follow `NO_COLOR`.
    pub(crate) fn new() -> Bar {
        let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        let template = if colour {
            "{spinner:.green} {prefix} [{elapsed_precise}] [{wide_bar:.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        } else {
            "{spinner} {prefix} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(style);
        Bar { bar }
    }
}

impl Progress for Bar {
    fn planning(&self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_prefix("planning");
        self.bar.set_position(done);
    }

    fn start(&self, total: u64) {
        self.bar.set_prefix("");
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// JSON lines on stderr: `{"event":"progress","done":..,"total":..,"percent":..,"rate":..}`,
/// at most every 200 ms, plus one at the start and one at the end; while a writer plans,
/// `{"event":"planning","done":..,"total":..}` at most every 200 ms.
pub(crate) struct JsonLines {
    done: AtomicU64,
    total: AtomicU64,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl JsonLines {
    /// A reporter that has emitted nothing yet.
    pub(crate) fn new() -> JsonLines {
        JsonLines {
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    fn emit(&self, force: bool) {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if !force && last.is_some_and(|t| now.duration_since(t) < JSON_INTERVAL) {
            return;
        }
        *last = Some(now);
        let done = self.done.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = now.duration_since(self.started).as_secs_f64();
        let rate = if secs > 0.0 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        let percent = if total == 0 {
            100.0
        } else {
            (done as f64 * 1000.0 / total as f64).floor() / 10.0
        };
        let line = serde_json::json!({
            "event": "progress",
            "done": done,
            "total": total,
            "percent": percent,
            "rate": rate,
        });
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }
}

impl Progress for JsonLines {
    fn planning(&self, done: u64, total: u64) {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if done < total && last.is_some_and(|t| now.duration_since(t) < JSON_INTERVAL) {
            return;
        }
        *last = Some(now);
        let line = serde_json::json!({ "event": "planning", "done": done, "total": total });
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
        self.emit(true);
    }

    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
        self.emit(false);
    }

    fn finish(&self) {
        self.emit(true);
    }
}
