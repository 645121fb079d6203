//! Counting results while the load runs, and printing them as a table or one JSON line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Scenario;

/// Why a request did not count as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The gateway answered with a status other than 200.
    Http(u16),
    /// The request did not finish within `--timeout`.
    Timeout,
    /// The request could not be sent or its headers not read.
    Transport,
    /// A streaming answer broke off or lacked an event the scenario needs.
    BadStream,
    /// A JSON answer was not what the scenario expects.
    BadBody,
}

impl ErrorKind {
    /// The name used in both the table and the JSON line.
    pub fn key(self) -> String {
        match self {
            ErrorKind::Http(status) => format!("http_{status}"),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Transport => "transport".into(),
            ErrorKind::BadStream => "bad_stream".into(),
            ErrorKind::BadBody => "bad_body".into(),
        }
    }
}

/// Highest latency the histograms hold, in microseconds; longer ones are clamped to it.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("the bounds are constants that hdrhistogram accepts")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Results of the measured part of a run.
#[derive(Debug)]
pub struct Stats {
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// The first explanation seen for each error kind, to tell the operator what went wrong.
    pub first_error: BTreeMap<String, String>,
    pub latency: Histogram<u64>,
    pub ttfb: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            ok: 0,
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
            latency: new_histogram(),
            ttfb: new_histogram(),
        }
    }
}

impl Stats {
    pub fn record_ok(&mut self, latency: Duration, ttfb: Option<Duration>) {
        self.ok += 1;
        self.latency.saturating_record(micros(latency));
        if let Some(ttfb) = ttfb {
            self.ttfb.saturating_record(micros(ttfb));
        }
    }

    pub fn record_error(&mut self, kind: ErrorKind, detail: &str) {
        let key = kind.key();
        if !self.first_error.contains_key(&key) {
            self.first_error.insert(key.clone(), detail.to_string());
        }
        *self.errors.entry(key).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        for (key, count) in &other.errors {
            *self.errors.entry(key.clone()).or_insert(0) += count;
        }
        for (key, detail) in &other.first_error {
            self.first_error.entry(key.clone()).or_insert_with(|| detail.clone());
        }
        // Both histograms share the same bounds, so adding cannot fail.
        self.latency.add(&other.latency).expect("histograms with equal bounds add");
        self.ttfb.add(&other.ttfb).expect("histograms with equal bounds add");
    }
}

/// What was run, as opposed to what was measured.
#[derive(Clone, Copy, Debug)]
pub struct RunShape {
    pub scenario: Scenario,
    pub concurrency: u32,
    pub duration: Duration,
    pub warmup: Duration,
    /// Connections opened over the whole run, setup included.
    pub connections: u64,
}

/// The numbers printed at the end, in the shape of the JSON line.
///
/// Keys are flat and unique so that a shell script can pick one out with `sed`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub concurrency: u32,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Connections opened, setup included; more than `concurrency` means some were lost and reopened.
    pub connections: u64,
    /// Requests that finished in the measured window, successful or not.
    pub requests: u64,
    pub ok: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// Successful requests per second of the measured window.
    pub rps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p90_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p99_ms: Option<f64>,
    #[serde(skip)]
    pub first_error: BTreeMap<String, String>,
}

/// Milliseconds with microsecond precision, the resolution the histograms record.
fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn quantile_ms(histogram: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!histogram.is_empty()).then(|| ms(histogram.value_at_quantile(quantile)))
}

impl Report {
    pub fn new(run: RunShape, stats: Stats) -> Self {
        let errors_total: u64 = stats.errors.values().sum();
        let seconds = run.duration.as_secs_f64();
        let ttfb = |q| if run.scenario.is_streaming() { quantile_ms(&stats.ttfb, q) } else { None };
        Report {
            scenario: run.scenario.name(),
            concurrency: run.concurrency,
            duration_s: seconds,
            warmup_s: run.warmup.as_secs_f64(),
            connections: run.connections,
            requests: stats.ok + errors_total,
            ok: stats.ok,
            errors_total,
            rps: if seconds > 0.0 { (stats.ok as f64 / seconds * 10.0).round() / 10.0 } else { 0.0 },
            latency_p50_ms: quantile_ms(&stats.latency, 0.50),
            latency_p90_ms: quantile_ms(&stats.latency, 0.90),
            latency_p99_ms: quantile_ms(&stats.latency, 0.99),
            latency_max_ms: (!stats.latency.is_empty()).then(|| ms(stats.latency.max())),
            ttfb_p50_ms: ttfb(0.50),
            ttfb_p99_ms: ttfb(0.99),
            errors: stats.errors,
            first_error: stats.first_error,
        }
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers and strings serializes")
    }

    pub fn table(&self) -> String {
        let show = |value: Option<f64>| value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
        let mut out = String::new();
        let _ = writeln!(out, "scenario      {}", self.scenario);
        let _ = writeln!(out, "concurrency   {} ({} connections opened)", self.concurrency, self.connections);
        let _ = writeln!(out, "duration      {:.2} s measured after {:.2} s warm-up", self.duration_s, self.warmup_s);
        let _ = writeln!(out, "requests      {} ({} ok, {} errors)", self.requests, self.ok, self.errors_total);
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors        none");
        } else {
            for (key, count) in &self.errors {
                let first = self.first_error.get(key).map(String::as_str).unwrap_or("");
                let _ = writeln!(out, "errors        {key}: {count} (first: {first})");
            }
        }
        let _ = writeln!(out, "throughput    {:.1} req/s", self.rps);
        let _ = writeln!(
            out,
            "latency ms    p50 {}  p90 {}  p99 {}  max {}",
            show(self.latency_p50_ms),
            show(self.latency_p90_ms),
            show(self.latency_p99_ms),
            show(self.latency_max_ms)
        );
        if self.ttfb_p50_ms.is_some() {
            let _ = writeln!(out, "ttfb ms       p50 {}  p99 {}", show(self.ttfb_p50_ms), show(self.ttfb_p99_ms));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_reports_percentiles() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 1..=100u64 {
            let target = if i % 2 == 0 { &mut a } else { &mut b };
            target.record_ok(Duration::from_micros(i * 1000), Some(Duration::from_micros(i * 100)));
        }
        a.record_error(ErrorKind::Http(503), "503 Service Unavailable");
        b.record_error(ErrorKind::Http(503), "later");
        b.record_error(ErrorKind::Timeout, "no answer in 10s");
        a.merge(&b);

        let run = RunShape {
            scenario: Scenario::Turn,
            concurrency: 2,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections: 2,
        };
        let report = Report::new(run, a);
        assert_eq!(report.ok, 100);
        assert_eq!(report.requests, 103);
        assert_eq!(report.errors_total, 3);
        assert_eq!(report.rps, 10.0);
        // hdrhistogram keeps three significant digits, so values come back within 0.1%.
        let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= want / 1000.0;
        assert!(near(report.latency_p50_ms, 50.0), "{:?}", report.latency_p50_ms);
        assert!(near(report.latency_p99_ms, 99.0), "{:?}", report.latency_p99_ms);
        assert!(near(report.latency_max_ms, 100.0), "{:?}", report.latency_max_ms);
        assert!(near(report.ttfb_p50_ms, 5.0), "{:?}", report.ttfb_p50_ms);
        assert_eq!(report.first_error["http_503"], "503 Service Unavailable");

        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["errors"]["http_503"], 2);
        assert_eq!(json["errors"]["timeout"], 1);
        assert!(json["latency_p90_ms"].as_f64().is_some());
        assert!(!report.json_line().contains('\n'));
        assert!(report.table().contains("http_503: 2"));
    }

    #[test]
    fn leaves_ttfb_out_of_non_streaming_runs_and_empty_runs_blank() {
        let run = RunShape {
            scenario: Scenario::List,
            concurrency: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connections: 1,
        };
        let report = Report::new(run, Stats::default());
        assert_eq!(report.latency_p50_ms, None);
        assert_eq!(report.ttfb_p50_ms, None);
        assert_eq!(report.rps, 0.0);
        assert!(report.json_line().contains("\"ttfb_p50_ms\":null"));
        assert!(!report.table().contains("ttfb"));
    }
}
