//! Counters for `GET /metrics`, in Prometheus's text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use crate::{Provider, Service};

/// Upper bounds of the export duration histogram, seconds.
const BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(Option<Provider>, u16), u64>,
    bytes: u64,
    /// Exports that ended, by outcome.
    exports: BTreeMap<&'static str, u64>,
    /// Cumulative counts per bucket, then +Inf.
    buckets: [u64; BUCKETS.len() + 1],
    seconds: f64,
}

/// The service's counters.
#[derive(Default)]
pub(crate) struct Metrics(Mutex<Inner>);

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        match self.0.lock() {
            Ok(mut g) => f(&mut g),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// A request answered (`None`: one of the service's own routes).
    pub(crate) fn request(&self, provider: Option<Provider>, status: u16) {
        self.with(|m| *m.requests.entry((provider, status)).or_default() += 1);
    }

    /// An export ended (`outcome` is the job's state) after `took`, writing `bytes`.
    pub(crate) fn export(&self, outcome: &'static str, took: Duration, bytes: u64) {
        let s = took.as_secs_f64();
        self.with(|m| {
            *m.exports.entry(outcome).or_default() += 1;
            m.bytes += bytes;
            m.seconds += s;
            for (i, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    m.buckets[i] += 1;
                }
            }
            m.buckets[BUCKETS.len()] += 1;
        });
    }

    /// The text a scrape gets.
    pub(crate) fn render(&self, svc: &Service) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP imgconv_jobs Export jobs in the store, by provider and state."
        );
        let _ = writeln!(out, "# TYPE imgconv_jobs gauge");
        if let Ok(counts) = svc.with_store(|s| s.counts()) {
            for (provider, state, n) in counts {
                let _ = writeln!(
                    out,
                    "imgconv_jobs{{provider=\"{provider}\",state=\"{}\"}} {n}",
                    state.name()
                );
            }
        }
        self.with(|m| {
            let _ = writeln!(
                out,
                "# HELP imgconv_http_requests_total Requests answered, by provider and status."
            );
            let _ = writeln!(out, "# TYPE imgconv_http_requests_total counter");
            for ((p, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "imgconv_http_requests_total{{provider=\"{}\",status=\"{status}\"}} {n}",
                    p.map_or("service", Provider::name)
                );
            }
            let _ = writeln!(
                out,
                "# HELP imgconv_exported_bytes_total Bytes of completed exports."
            );
            let _ = writeln!(out, "# TYPE imgconv_exported_bytes_total counter");
            let _ = writeln!(out, "imgconv_exported_bytes_total {}", m.bytes);
            let _ = writeln!(
                out,
                "# HELP imgconv_exports_total Exports run by this process, by outcome."
            );
            let _ = writeln!(out, "# TYPE imgconv_exports_total counter");
            for (outcome, n) in &m.exports {
                let _ = writeln!(out, "imgconv_exports_total{{outcome=\"{outcome}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP imgconv_export_duration_seconds How long exports ran."
            );
            let _ = writeln!(out, "# TYPE imgconv_export_duration_seconds histogram");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "imgconv_export_duration_seconds_bucket{{le=\"{b}\"}} {}",
                    m.buckets[i]
                );
            }
            let total = m.buckets[BUCKETS.len()];
            let _ = writeln!(
                out,
                "imgconv_export_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
            );
            let _ = writeln!(out, "imgconv_export_duration_seconds_sum {}", m.seconds);
            let _ = writeln!(out, "imgconv_export_duration_seconds_count {total}");
        });
        out
    }
}
