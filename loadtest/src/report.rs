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
    /// A turn's stream ended with an `error` event that allows a retry, such as the one a replica sends when another
    /// took its thread over.
    Retryable,
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
            ErrorKind::Retryable => "retryable_error".into(),
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
        count_error(&mut self.errors, &mut self.first_error, kind.key(), detail);
    }

    pub fn merge(&mut self, other: &Stats) {
        self.ok += other.ok;
        merge_errors((&mut self.errors, &mut self.first_error), (&other.errors, &other.first_error));
        // Both histograms share the same bounds, so adding cannot fail.
        self.latency.add(&other.latency).expect("histograms with equal bounds add");
        self.ttfb.add(&other.ttfb).expect("histograms with equal bounds add");
    }
}

/// Counts one error under `key`, keeping the first explanation seen for it.
fn count_error(errors: &mut BTreeMap<String, u64>, first: &mut BTreeMap<String, String>, key: String, detail: &str) {
    if !first.contains_key(&key) {
        first.insert(key.clone(), detail.to_string());
    }
    *errors.entry(key).or_insert(0) += 1;
}

type ErrorTally<'a> = (&'a BTreeMap<String, u64>, &'a BTreeMap<String, String>);

fn merge_errors(into: (&mut BTreeMap<String, u64>, &mut BTreeMap<String, String>), from: ErrorTally<'_>) {
    for (key, count) in from.0 {
        *into.0.entry(key.clone()).or_insert(0) += count;
    }
    for (key, detail) in from.1 {
        into.1.entry(key.clone()).or_insert_with(|| detail.clone());
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
    /// CPU seconds the `--server-pid` processes used in the measured window.
    pub server_cpu: Option<f64>,
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
    /// The servers' CPU time in the measured window per successful request, in microseconds (`--server-pid`).
    pub server_cpu_us_per_op: Option<f64>,
    pub server_cpu_s: Option<f64>,
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
            server_cpu_us_per_op: run
                .server_cpu
                .filter(|_| stats.ok > 0)
                .map(|cpu| round(cpu * 1e6 / stats.ok as f64, 1)),
            server_cpu_s: run.server_cpu.map(|cpu| round(cpu, 2)),
            errors: stats.errors,
            first_error: stats.first_error,
        }
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers and strings serializes")
    }

    pub fn table(&self) -> String {
        let mut table = Table::default();
        table.row("scenario", self.scenario);
        table.row("concurrency", format_args!("{} ({} connections opened)", self.concurrency, self.connections));
        table.row("duration", format_args!("{:.2} s measured after {:.2} s warm-up", self.duration_s, self.warmup_s));
        table.row("requests", format_args!("{} ({} ok, {} errors)", self.requests, self.ok, self.errors_total));
        table.errors(&self.errors, &self.first_error);
        table.row("throughput", format_args!("{:.1} req/s", self.rps));
        let latency = [self.latency_p50_ms, self.latency_p90_ms, self.latency_p99_ms, self.latency_max_ms];
        table.row("latency ms", quantiles(&P50_P90_P99_MAX, &latency));
        if self.ttfb_p50_ms.is_some() {
            table.row("ttfb ms", quantiles(&["p50", "p99"], &[self.ttfb_p50_ms, self.ttfb_p99_ms]));
        }
        if let (Some(per_op), Some(cpu)) = (self.server_cpu_us_per_op, self.server_cpu_s) {
            table.row(
                "server CPU",
                format_args!("{per_op:.1} µs per successful request ({cpu:.2} s of CPU in {:.2} s)", self.duration_s),
            );
        }
        table.0
    }
}

/// What the viewers and the updater of a fanout run, or the viewers and writers of a mixed run, record; one shard of it.
#[derive(Debug)]
pub struct FanoutStats {
    /// Receipt time minus send time of every matched delivery (a `thread.updated`, or a turn's user message), in
    /// microseconds.
    pub fanout: Histogram<u64>,
    /// From sending an update or a turn to the end of its answer, for those answered 200.
    pub update: Histogram<u64>,
    /// Mixed only: from sending a turn to the first complete event of its stream, for turns answered 200.
    pub first_event: Histogram<u64>,
    /// Failures by kind: `open_*` for viewer streams that did not open, `update_*` for
    /// updates that failed, `stream_*` for open streams that ended before the run did.
    pub errors: BTreeMap<String, u64>,
    pub first_error: BTreeMap<String, String>,
    /// `resync` events by their reason.
    pub resyncs: BTreeMap<String, u64>,
    /// A viewer's second copy of one update.
    pub duplicates: u64,
    /// `thread.updated` events that match no update sent to their thread.
    pub unmatched: u64,
    /// Events of any other kind on a viewer stream.
    pub other_events: u64,
}

impl Default for FanoutStats {
    fn default() -> Self {
        FanoutStats {
            fanout: new_histogram(),
            update: new_histogram(),
            first_event: new_histogram(),
            errors: BTreeMap::new(),
            first_error: BTreeMap::new(),
            resyncs: BTreeMap::new(),
            duplicates: 0,
            unmatched: 0,
            other_events: 0,
        }
    }
}

impl FanoutStats {
    pub fn record_delivery(&mut self, latency_us: u64) {
        self.fanout.saturating_record(latency_us.max(1));
    }

    /// Records an update or a turn answered 200: its length, and the time to its first event when the answer was a
    /// stream that had one.
    pub fn record_answered(&mut self, latency: Duration, first_event: Option<Duration>) {
        self.update.saturating_record(micros(latency));
        if let Some(first_event) = first_event {
            self.first_event.saturating_record(micros(first_event));
        }
    }

    /// Counts an error under `<phase>_<kind>`, such as `open_timeout` or `update_http_500`.
    pub fn record_error(&mut self, phase: &str, kind: ErrorKind, detail: &str) {
        self.record_named_error(format!("{phase}_{}", kind.key()), detail);
    }

    pub fn record_named_error(&mut self, key: String, detail: &str) {
        count_error(&mut self.errors, &mut self.first_error, key, detail);
    }

    pub fn record_resync(&mut self, reason: &str) {
        *self.resyncs.entry(reason.to_string()).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &FanoutStats) {
        merge_errors((&mut self.errors, &mut self.first_error), (&other.errors, &other.first_error));
        for (reason, count) in &other.resyncs {
            *self.resyncs.entry(reason.clone()).or_insert(0) += count;
        }
        self.duplicates += other.duplicates;
        self.unmatched += other.unmatched;
        self.other_events += other.other_events;
        self.fanout.add(&other.fanout).expect("histograms with equal bounds add");
        self.update.add(&other.update).expect("histograms with equal bounds add");
        self.first_event.add(&other.first_event).expect("histograms with equal bounds add");
    }
}

/// The counts a fanout run ends with, taken from the updater's book of what it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutTally {
    pub viewers_open: u64,
    /// Updates the updater sent, whatever their answer.
    pub updates_sent: u64,
    pub updates_ok: u64,
    pub updates_failed: u64,
    /// For each update answered 200, the number of its thread's viewers that opened.
    pub expected: u64,
    /// Distinct (viewer, update) deliveries of updates answered 200.
    pub received: u64,
    /// Deliveries of updates whose request failed, which may or may not have applied.
    pub received_for_failed: u64,
}

/// What a fanout or mixed run was asked to spread over the replicas, and how its setup went.
#[derive(Clone, Copy, Debug)]
pub struct SpreadSummary {
    pub replicas: usize,
    pub threads: u32,
    pub viewers: u32,
    pub duration: Duration,
    pub drain: Duration,
    /// From the first viewer connect to the last viewer open (or failure).
    pub open_time: Duration,
    /// Connections opened over the whole run: setup, viewers and the send phase.
    pub connections: u64,
}

/// What a fanout run was asked to do and how its phases went, beside what it counted.
#[derive(Clone, Copy, Debug)]
pub struct FanoutShapeSummary {
    pub spread: SpreadSummary,
    pub rate: f64,
    /// From the first update to the start of the last, plus one interval of the schedule.
    pub send_time: Duration,
    /// How late the latest update started against its schedule.
    pub send_lag_max: Duration,
    /// CPU seconds the `--server-pid` processes used from the first update to the end of the drain.
    pub server_cpu: Option<f64>,
}

/// An update or turn answered 200 that some viewers never received.
///
/// Its keys, like those of `Second`, carry a prefix so that none of them repeats a top-level key of the JSON line,
/// which a script picks out with `sed`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lost {
    pub lost_n: u64,
    /// What was missed: `title`, `lock` or `unlock` for an update; `user_message` or `answer` for a turn.
    pub lost_kind: &'static str,
    pub lost_sent_us: u64,
    /// The replica it was sent through, counting from 1 in the order of `--url`.
    pub lost_via_replica: usize,
    /// Viewers that missed it, by the replica they watch through.
    pub lost_missing: Vec<u32>,
    /// Viewers of its thread, by replica.
    pub lost_viewers: Vec<u32>,
}

/// One second of the send phase, by the send time of its updates or turns.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Second {
    pub second: u64,
    /// Updates or turns sent in this second.
    pub second_sent: u64,
    pub second_deliveries: u64,
    pub second_lost: u64,
    /// Deliveries that took 100 ms or longer.
    pub second_slow: u64,
    pub second_max_ms: Option<f64>,
}

/// Where and when a fanout or mixed run lost or delayed deliveries.
#[derive(Clone, Debug, Default)]
pub struct LossDetail {
    /// When the send phase began, in unix microseconds.
    pub from_us: u64,
    /// Deliveries lost, by the replica the viewer watched through.
    pub lost_by_replica: Vec<u64>,
    /// The first lost updates or turns, in the order they were sent.
    pub lost: Vec<Lost>,
    pub timeline: Vec<Second>,
}

/// A unix time in microseconds as the UTC time of day, `hh:mm:ss.mmm`, to set beside server logs.
pub fn utc_time_of_day(unix_us: u64) -> String {
    let seconds = unix_us / 1_000_000;
    let day = seconds % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", day / 3600, day / 60 % 60, day % 60, unix_us / 1000 % 1000)
}

/// The result of a fanout run, in the shape of its JSON line; keys are flat and unique as in `Report`.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    pub scenario: &'static str,
    pub replicas: usize,
    pub threads: u32,
    pub viewers: u32,
    pub viewers_open: u64,
    pub open_s: f64,
    /// Connections opened over the whole run: setup, viewers and updates.
    pub connections: u64,
    pub rate_target: f64,
    pub duration_s: f64,
    pub drain_s: f64,
    pub updates_sent: u64,
    pub updates_ok: u64,
    pub updates_failed: u64,
    /// Updates sent per second of the send phase.
    pub update_rate: f64,
    pub send_lag_max_ms: f64,
    pub update_p50_ms: Option<f64>,
    pub update_p99_ms: Option<f64>,
    pub update_max_ms: Option<f64>,
    pub expected: u64,
    pub received: u64,
    /// `expected - received`: deliveries that never came, whatever the reason (a resync included).
    pub lost: u64,
    pub lost_pct: f64,
    pub resyncs: u64,
    pub resync_reasons: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub unmatched: u64,
    pub received_for_failed_updates: u64,
    pub other_events: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub fanout_p50_ms: Option<f64>,
    pub fanout_p90_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub fanout_max_ms: Option<f64>,
    /// CPU seconds of the `--server-pid` processes from the first update to the end of the drain.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per delivery received, in microseconds: updates included, so with many viewers per update it
    /// approaches the cost of one delivery.
    pub server_cpu_us_per_delivery: Option<f64>,
    pub updates_from_us: u64,
    pub lost_by_replica: Vec<u64>,
    pub lost_updates: Vec<Lost>,
    pub timeline: Vec<Second>,
    #[serde(skip)]
    pub first_error: BTreeMap<String, String>,
}

fn max_ms(histogram: &Histogram<u64>) -> Option<f64> {
    (!histogram.is_empty()).then(|| ms(histogram.max()))
}

impl FanoutReport {
    pub fn new(shape: FanoutShapeSummary, tally: FanoutTally, stats: FanoutStats, detail: LossDetail) -> Self {
        let lost = tally.expected.saturating_sub(tally.received);
        let send_seconds = shape.send_time.as_secs_f64();
        FanoutReport {
            scenario: "fanout",
            replicas: shape.spread.replicas,
            threads: shape.spread.threads,
            viewers: shape.spread.viewers,
            viewers_open: tally.viewers_open,
            open_s: round(shape.spread.open_time.as_secs_f64(), 3),
            connections: shape.spread.connections,
            rate_target: shape.rate,
            duration_s: shape.spread.duration.as_secs_f64(),
            drain_s: shape.spread.drain.as_secs_f64(),
            updates_sent: tally.updates_sent,
            updates_ok: tally.updates_ok,
            updates_failed: tally.updates_failed,
            update_rate: if send_seconds > 0.0 { round(tally.updates_sent as f64 / send_seconds, 1) } else { 0.0 },
            send_lag_max_ms: ms(micros(shape.send_lag_max)),
            update_p50_ms: quantile_ms(&stats.update, 0.50),
            update_p99_ms: quantile_ms(&stats.update, 0.99),
            update_max_ms: max_ms(&stats.update),
            expected: tally.expected,
            received: tally.received,
            lost,
            lost_pct: if tally.expected > 0 { round(lost as f64 * 100.0 / tally.expected as f64, 4) } else { 0.0 },
            resyncs: stats.resyncs.values().sum(),
            resync_reasons: stats.resyncs,
            duplicates: stats.duplicates,
            unmatched: stats.unmatched,
            received_for_failed_updates: tally.received_for_failed,
            other_events: stats.other_events,
            errors_total: stats.errors.values().sum(),
            errors: stats.errors,
            fanout_p50_ms: quantile_ms(&stats.fanout, 0.50),
            fanout_p90_ms: quantile_ms(&stats.fanout, 0.90),
            fanout_p99_ms: quantile_ms(&stats.fanout, 0.99),
            fanout_max_ms: max_ms(&stats.fanout),
            server_cpu_s: shape.server_cpu.map(|cpu| round(cpu, 3)),
            server_cpu_us_per_delivery: shape
                .server_cpu
                .filter(|_| tally.received > 0)
                .map(|cpu| round(cpu * 1e6 / tally.received as f64, 2)),
            updates_from_us: detail.from_us,
            lost_by_replica: detail.lost_by_replica,
            lost_updates: detail.lost,
            timeline: detail.timeline,
            first_error: stats.first_error,
        }
    }

    /// Whether the run measured anything: some viewer opened and some update went through.
    pub fn measured(&self) -> bool {
        self.viewers_open > 0 && self.updates_ok > 0
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers and strings serializes")
    }

    pub fn table(&self) -> String {
        let mut table = Table::default();
        table.row(
            "scenario",
            format_args!(
                "fanout: {} viewers on {} threads over {} replicas",
                self.viewers, self.threads, self.replicas
            ),
        );
        table.viewers(self.viewers_open, self.viewers, self.open_s, self.connections);
        table.row(
            "updates",
            format_args!(
                "{} sent at {:.1}/s (target {}/s for {:.2} s, latest start {:.1} ms behind schedule): {} ok, {} failed",
                self.updates_sent,
                self.update_rate,
                self.rate_target,
                self.duration_s,
                self.send_lag_max_ms,
                self.updates_ok,
                self.updates_failed
            ),
        );
        let update = [self.update_p50_ms, self.update_p99_ms, self.update_max_ms];
        table.row("update ms", format_args!("{}  (request to answer)", quantiles(&["p50", "p99", "max"], &update)));
        table.row(
            "deliveries",
            format_args!(
                "{} expected, {} received, {} lost ({:.4}%), counted {:.2} s after the last answer",
                self.expected, self.received, self.lost, self.lost_pct, self.drain_s
            ),
        );
        if self.lost > 0 {
            table.losses("lost update", &self.lost_by_replica, &self.lost_updates);
        }
        let fanout = [self.fanout_p50_ms, self.fanout_p90_ms, self.fanout_p99_ms, self.fanout_max_ms];
        table.row("fan-out ms", format_args!("{}  (send to receipt)", quantiles(&P50_P90_P99_MAX, &fanout)));
        if let Some(cpu) = self.server_cpu_s {
            let per = self.server_cpu_us_per_delivery.map_or_else(|| "n/a".to_string(), |per| format!("{per:.2}"));
            table.row("server CPU", format_args!("{cpu:.3} s, {per} µs per delivery (updates included)"));
        }
        table.timeline("updates", self.updates_from_us, &self.timeline);
        table.resyncs(self.resyncs, &self.resync_reasons);
        table.anomalies(
            self.duplicates,
            self.unmatched,
            ("updates", self.received_for_failed_updates),
            self.other_events,
        );
        table.errors(&self.errors, &self.first_error);
        table.0
    }
}

/// The table a report prints for people: one line a row, its label padded to a column of its own.
#[derive(Default)]
struct Table(String);

/// The quantiles most rows show, in this order.
const P50_P90_P99_MAX: [&str; 4] = ["p50", "p90", "p99", "max"];

/// Quantiles as the tables show them, `p50 1.234  p99 5.678`: milliseconds to the microsecond the histograms keep,
/// `n/a` where nothing was measured.
fn quantiles(names: &[&str], values: &[Option<f64>]) -> String {
    let shown: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(name, value)| value.map_or_else(|| format!("{name} n/a"), |v| format!("{name} {v:.3}")))
        .collect();
    shown.join("  ")
}

impl Table {
    /// Adds one row.
    fn row(&mut self, label: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{label:<13} {value}");
    }

    /// How many viewer streams opened, and how long that took.
    fn viewers(&mut self, open: u64, asked: u32, open_s: f64, connections: u64) {
        self.row(
            "viewers",
            format_args!("{open} of {asked} open after {open_s:.2} s ({connections} connections opened in all)"),
        );
    }

    /// Where deliveries were lost: by the viewer's replica, then the first few lost sends one by one, each in a row
    /// labelled `label`.
    fn losses(&mut self, label: &str, lost_by_replica: &[u64], lost: &[Lost]) {
        let by_replica: Vec<String> =
            lost_by_replica.iter().enumerate().map(|(i, n)| format!("replica {}: {n}", i + 1)).collect();
        self.row("lost where", format_args!("{} (by the viewer's replica)", by_replica.join(", ")));
        for lost in lost.iter().take(5) {
            let missed: Vec<String> = lost
                .lost_missing
                .iter()
                .zip(&lost.lost_viewers)
                .enumerate()
                .filter(|(_, (missing, _))| **missing > 0)
                .map(|(i, (missing, viewers))| format!("{missing} of {viewers} on replica {}", i + 1))
                .collect();
            self.row(
                label,
                format_args!(
                    "n={} ({}) sent {} UTC via replica {}: missed by {}",
                    lost.lost_n,
                    lost.lost_kind,
                    utc_time_of_day(lost.lost_sent_us),
                    lost.lost_via_replica,
                    missed.join(", ")
                ),
            );
        }
    }

    /// The worst fan-out latency of the `what` sent in each second of the send phase; nothing when nothing was sent.
    fn timeline(&mut self, what: &str, from_us: u64, timeline: &[Second]) {
        if timeline.is_empty() {
            return;
        }
        let worst: Vec<String> = timeline
            .iter()
            .map(|second| second.second_max_ms.map_or_else(|| "-".to_string(), |max| format!("{max:.0}")))
            .collect();
        self.row(
            "by second",
            format_args!(
                "max fan-out ms of the {what} sent in each second from {} UTC: {}",
                utc_time_of_day(from_us),
                worst.join(" ")
            ),
        );
    }

    fn resyncs(&mut self, resyncs: u64, reasons: &BTreeMap<String, u64>) {
        if resyncs == 0 {
            self.row("resyncs", "none");
        } else {
            let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r}: {n}")).collect();
            self.row("resyncs", format_args!("{resyncs} ({})", reasons.join(", ")));
        }
    }

    /// Deliveries that match nothing expected; `failed` names what was sent (`updates`, `turns`) and counts the
    /// deliveries of those whose request failed.
    fn anomalies(&mut self, duplicates: u64, unmatched: u64, failed: (&str, u64), other_events: u64) {
        let (what, received) = failed;
        self.row(
            "anomalies",
            format_args!(
                "{duplicates} duplicates, {unmatched} unmatched, {received} deliveries of failed {what}, \
                 {other_events} other events"
            ),
        );
    }

    /// Every error kind with its count and the first explanation seen for it, or `none`.
    fn errors(&mut self, errors: &BTreeMap<String, u64>, first_error: &BTreeMap<String, String>) {
        if errors.is_empty() {
            self.row("errors", "none");
        }
        for (key, count) in errors {
            let first = first_error.get(key).map(String::as_str).unwrap_or("");
            self.row("errors", format_args!("{key}: {count} (first: {first})"));
        }
    }
}

/// The counts a mixed run ends with, taken from the writers' books of the turns they sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MixedTally {
    pub viewers_open: u64,
    /// Turns the writers sent, whatever their answer.
    pub turns_sent: u64,
    /// Turns whose stream ended with an assistant answer and no error.
    pub turns_ok: u64,
    pub turns_failed: u64,
    /// For each turn answered 200, the number of its thread's viewers that opened.
    pub expected: u64,
    /// Distinct (viewer, turn) deliveries of the user message of turns answered 200.
    pub received: u64,
    /// Distinct (viewer, turn) deliveries of the finished assistant answer of turns answered 200.
    pub answers_received: u64,
    /// Deliveries of user messages whose turn failed, which may or may not have run.
    pub received_for_failed: u64,
}

/// What a mixed run was asked to do and how its phases went, beside what it counted.
#[derive(Clone, Copy, Debug)]
pub struct MixedShapeSummary {
    pub spread: SpreadSummary,
    pub writers: u32,
    /// From the writers' start to the end of the last turn.
    pub write_time: Duration,
    /// CPU time the load tester used over the whole run, setup included, and the run's wall time, to tell how much
    /// of the machine it took from the gateway.
    pub loadtest_cpu: Option<f64>,
    pub wall_time: Duration,
}

/// The result of a mixed run, in the shape of its JSON line; keys are flat and unique as in `Report`.
#[derive(Debug, Serialize)]
pub struct MixedReport {
    pub scenario: &'static str,
    pub replicas: usize,
    pub threads: u32,
    pub viewers: u32,
    pub writers: u32,
    pub viewers_open: u64,
    pub open_s: f64,
    /// Connections opened over the whole run: setup, viewers and writers.
    pub connections: u64,
    pub duration_s: f64,
    pub drain_s: f64,
    /// From the writers' start to the end of the last turn.
    pub write_s: f64,
    /// The run's wall time, setup included, and the CPU time the load tester used in it.
    pub wall_s: f64,
    pub loadtest_cpu_s: Option<f64>,
    pub turns_sent: u64,
    pub turns_ok: u64,
    pub turns_failed: u64,
    /// Turns answered 200 per second of `write_s`.
    pub turn_rate: f64,
    pub turn_p50_ms: Option<f64>,
    pub turn_p90_ms: Option<f64>,
    pub turn_p99_ms: Option<f64>,
    pub turn_max_ms: Option<f64>,
    pub first_event_p50_ms: Option<f64>,
    pub first_event_p99_ms: Option<f64>,
    /// User-message deliveries due: each turn answered 200 times the viewers of its thread.
    pub expected: u64,
    pub received: u64,
    /// `expected - received`: user messages that never reached a viewer, whatever the reason (a resync included).
    pub lost: u64,
    pub lost_pct: f64,
    /// Finished assistant answers due, as many as user messages.
    pub answers_expected: u64,
    pub answers_received: u64,
    pub answers_lost: u64,
    pub resyncs: u64,
    pub resync_reasons: BTreeMap<String, u64>,
    pub duplicates: u64,
    pub unmatched: u64,
    pub received_for_failed_turns: u64,
    pub other_events: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub fanout_p50_ms: Option<f64>,
    pub fanout_p90_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub fanout_max_ms: Option<f64>,
    pub writes_from_us: u64,
    pub lost_by_replica: Vec<u64>,
    pub lost_turns: Vec<Lost>,
    pub timeline: Vec<Second>,
    #[serde(skip)]
    pub first_error: BTreeMap<String, String>,
}

impl MixedReport {
    pub fn new(shape: MixedShapeSummary, tally: MixedTally, stats: FanoutStats, detail: LossDetail) -> Self {
        let lost = tally.expected.saturating_sub(tally.received);
        let write_seconds = shape.write_time.as_secs_f64();
        MixedReport {
            scenario: "mixed",
            replicas: shape.spread.replicas,
            threads: shape.spread.threads,
            viewers: shape.spread.viewers,
            writers: shape.writers,
            viewers_open: tally.viewers_open,
            open_s: round(shape.spread.open_time.as_secs_f64(), 3),
            connections: shape.spread.connections,
            duration_s: shape.spread.duration.as_secs_f64(),
            drain_s: shape.spread.drain.as_secs_f64(),
            write_s: round(write_seconds, 3),
            wall_s: round(shape.wall_time.as_secs_f64(), 3),
            loadtest_cpu_s: shape.loadtest_cpu.map(|cpu| round(cpu, 2)),
            turns_sent: tally.turns_sent,
            turns_ok: tally.turns_ok,
            turns_failed: tally.turns_failed,
            turn_rate: if write_seconds > 0.0 { round(tally.turns_ok as f64 / write_seconds, 1) } else { 0.0 },
            turn_p50_ms: quantile_ms(&stats.update, 0.50),
            turn_p90_ms: quantile_ms(&stats.update, 0.90),
            turn_p99_ms: quantile_ms(&stats.update, 0.99),
            turn_max_ms: max_ms(&stats.update),
            first_event_p50_ms: quantile_ms(&stats.first_event, 0.50),
            first_event_p99_ms: quantile_ms(&stats.first_event, 0.99),
            expected: tally.expected,
            received: tally.received,
            lost,
            lost_pct: if tally.expected > 0 { round(lost as f64 * 100.0 / tally.expected as f64, 4) } else { 0.0 },
            answers_expected: tally.expected,
            answers_received: tally.answers_received,
            answers_lost: tally.expected.saturating_sub(tally.answers_received),
            resyncs: stats.resyncs.values().sum(),
            resync_reasons: stats.resyncs,
            duplicates: stats.duplicates,
            unmatched: stats.unmatched,
            received_for_failed_turns: tally.received_for_failed,
            other_events: stats.other_events,
            errors_total: stats.errors.values().sum(),
            errors: stats.errors,
            fanout_p50_ms: quantile_ms(&stats.fanout, 0.50),
            fanout_p90_ms: quantile_ms(&stats.fanout, 0.90),
            fanout_p99_ms: quantile_ms(&stats.fanout, 0.99),
            fanout_max_ms: max_ms(&stats.fanout),
            writes_from_us: detail.from_us,
            lost_by_replica: detail.lost_by_replica,
            lost_turns: detail.lost,
            timeline: detail.timeline,
            first_error: stats.first_error,
        }
    }

    /// Whether the run measured anything: some viewer opened and some turn went through.
    pub fn measured(&self) -> bool {
        self.viewers_open > 0 && self.turns_ok > 0
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers and strings serializes")
    }

    pub fn table(&self) -> String {
        let mut table = Table::default();
        table.row(
            "scenario",
            format_args!(
                "mixed: {} viewers on {} threads over {} replicas, {} writers",
                self.viewers, self.threads, self.replicas, self.writers
            ),
        );
        table.viewers(self.viewers_open, self.viewers, self.open_s, self.connections);
        table.row(
            "turns",
            format_args!(
                "{} sent in {:.2} s ({:.2} s asked): {} ok, {} failed; {:.1} turns/s",
                self.turns_sent, self.write_s, self.duration_s, self.turns_ok, self.turns_failed, self.turn_rate
            ),
        );
        let turn = [self.turn_p50_ms, self.turn_p90_ms, self.turn_p99_ms, self.turn_max_ms];
        table.row("turn ms", format_args!("{}  (request to end of stream)", quantiles(&P50_P90_P99_MAX, &turn)));
        let first_event = quantiles(&["p50", "p99"], &[self.first_event_p50_ms, self.first_event_p99_ms]);
        table.row("first event", format_args!("{first_event} ms  (request to first event)"));
        table.row(
            "deliveries",
            format_args!(
                "{} expected, {} received, {} lost ({:.4}%) user messages; {} of {} answers, {} lost; \
                 counted {:.2} s after the last turn",
                self.expected,
                self.received,
                self.lost,
                self.lost_pct,
                self.answers_received,
                self.answers_expected,
                self.answers_lost,
                self.drain_s
            ),
        );
        if self.lost > 0 || self.answers_lost > 0 {
            table.losses("lost turn", &self.lost_by_replica, &self.lost_turns);
        }
        let fanout = [self.fanout_p50_ms, self.fanout_p90_ms, self.fanout_p99_ms, self.fanout_max_ms];
        let fanout = quantiles(&P50_P90_P99_MAX, &fanout);
        table.row("fan-out ms", format_args!("{fanout}  (user message sent to viewer receipt)"));
        table.timeline("turns", self.writes_from_us, &self.timeline);
        table.resyncs(self.resyncs, &self.resync_reasons);
        table.anomalies(self.duplicates, self.unmatched, ("turns", self.received_for_failed_turns), self.other_events);
        table.errors(&self.errors, &self.first_error);
        if let Some(cpu) = self.loadtest_cpu_s {
            let average = if self.wall_s > 0.0 { cpu / self.wall_s } else { 0.0 };
            table.row(
                "load tester",
                format_args!(
                    "{cpu:.2} s of CPU in {:.2} s of run (setup included): {average:.2} CPUs on average",
                    self.wall_s
                ),
            );
        }
        table.0
    }
}

/// The result of an idle run: viewer streams opened and then only held, and what the gateways spent on them.
#[derive(Debug, Serialize)]
pub struct IdleReport {
    pub scenario: &'static str,
    pub replicas: usize,
    pub threads: u32,
    pub viewers: u32,
    pub viewers_open: u64,
    pub open_s: f64,
    pub connections: u64,
    pub hold_s: f64,
    pub resyncs: u64,
    pub resync_reasons: BTreeMap<String, u64>,
    /// Events of any kind on streams that should carry only heartbeats.
    pub other_events: u64,
    pub errors_total: u64,
    pub errors: BTreeMap<String, u64>,
    /// CPU seconds of the `--server-pid` processes over the hold.
    pub server_cpu_s: Option<f64>,
    /// `server_cpu_s` per open viewer and second of the hold, in microseconds: what heartbeats cost.
    pub server_cpu_us_per_viewer_s: Option<f64>,
    #[serde(skip)]
    pub first_error: BTreeMap<String, String>,
}

impl IdleReport {
    pub fn new(spread: SpreadSummary, viewers_open: u64, stats: FanoutStats, server_cpu: Option<f64>) -> Self {
        let hold_s = spread.duration.as_secs_f64() + spread.drain.as_secs_f64();
        let viewer_seconds = viewers_open as f64 * hold_s;
        IdleReport {
            scenario: "idle",
            replicas: spread.replicas,
            threads: spread.threads,
            viewers: spread.viewers,
            viewers_open,
            open_s: round(spread.open_time.as_secs_f64(), 3),
            connections: spread.connections,
            hold_s,
            resyncs: stats.resyncs.values().sum(),
            resync_reasons: stats.resyncs,
            other_events: stats.other_events,
            errors_total: stats.errors.values().sum(),
            errors: stats.errors,
            server_cpu_s: server_cpu.map(|cpu| round(cpu, 3)),
            server_cpu_us_per_viewer_s: server_cpu
                .filter(|_| viewer_seconds > 0.0)
                .map(|cpu| round(cpu * 1e6 / viewer_seconds, 3)),
            first_error: stats.first_error,
        }
    }

    /// Whether the run measured anything: some viewer opened.
    pub fn measured(&self) -> bool {
        self.viewers_open > 0
    }

    pub fn json_line(&self) -> String {
        serde_json::to_string(self).expect("a report of numbers and strings serializes")
    }

    pub fn table(&self) -> String {
        let mut table = Table::default();
        table.row(
            "scenario",
            format_args!("idle: {} viewers on {} threads over {} replicas", self.viewers, self.threads, self.replicas),
        );
        table.viewers(self.viewers_open, self.viewers, self.open_s, self.connections);
        table.row("held", format_args!("{:.2} s, sending nothing", self.hold_s));
        if let Some(cpu) = self.server_cpu_s {
            let per = self.server_cpu_us_per_viewer_s.map_or_else(|| "n/a".to_string(), |per| format!("{per:.3}"));
            table.row("server CPU", format_args!("{cpu:.3} s, {per} µs per viewer and second"));
        }
        table.resyncs(self.resyncs, &self.resync_reasons);
        table.row("anomalies", format_args!("{} events on idle streams", self.other_events));
        table.errors(&self.errors, &self.first_error);
        table.0
    }
}

/// `value` rounded to `places` decimal places.
fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
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
            server_cpu: Some(0.5),
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
        // Half a second of server CPU over 100 successful requests.
        assert_eq!((report.server_cpu_us_per_op, report.server_cpu_s), (Some(5000.0), Some(0.5)));
        assert!(report.table().contains("5000.0 µs per successful request"), "{}", report.table());
    }

    #[test]
    fn leaves_ttfb_out_of_non_streaming_runs_and_empty_runs_blank() {
        let run = RunShape {
            scenario: Scenario::List,
            concurrency: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            connections: 1,
            server_cpu: Some(0.1),
        };
        let report = Report::new(run, Stats::default());
        assert_eq!(report.latency_p50_ms, None);
        assert_eq!(report.ttfb_p50_ms, None);
        assert_eq!(report.rps, 0.0);
        assert!(report.json_line().contains("\"ttfb_p50_ms\":null"));
        assert!(!report.table().contains("ttfb"));
        assert_eq!(report.server_cpu_us_per_op, None, "no request succeeded to share the CPU");
        assert!(!report.table().contains("server CPU"));
    }

    #[test]
    fn fanout_report_counts_losses_and_never_hides_them() {
        let mut a = FanoutStats::default();
        let mut b = FanoutStats::default();
        for i in 1..=90u64 {
            let target = if i % 2 == 0 { &mut a } else { &mut b };
            target.record_delivery(i * 1000);
        }
        a.record_answered(Duration::from_millis(4), None);
        b.record_resync("lagged");
        b.record_error("stream", ErrorKind::BadStream, "closed");
        a.record_named_error("stream_closed".into(), "the server ended the stream");
        a.merge(&b);
        let tally = FanoutTally {
            viewers_open: 10,
            updates_sent: 11,
            updates_ok: 10,
            updates_failed: 1,
            expected: 100,
            received: 90,
            received_for_failed: 3,
        };
        let shape = FanoutShapeSummary {
            spread: SpreadSummary {
                replicas: 3,
                threads: 2,
                viewers: 10,
                duration: Duration::from_secs(2),
                drain: Duration::from_secs(2),
                open_time: Duration::from_millis(20),
                connections: 13,
            },
            rate: 5.0,
            send_time: Duration::from_secs(2),
            send_lag_max: Duration::from_micros(1500),
            server_cpu: Some(0.009),
        };
        let lost = Lost {
            lost_n: 7,
            lost_kind: "lock",
            lost_sent_us: 1_764_000_000_123_456,
            lost_via_replica: 2,
            lost_missing: vec![0, 0, 3],
            lost_viewers: vec![3, 3, 4],
        };
        let detail = LossDetail {
            from_us: 1_764_000_000_000_000,
            lost_by_replica: vec![0, 0, 10],
            lost: vec![lost],
            timeline: vec![
                Second { second: 0, second_sent: 6, second_max_ms: Some(90.0), ..Second::default() },
                Second { second: 1, second_sent: 5, second_lost: 10, ..Second::default() },
            ],
        };
        let report = FanoutReport::new(shape, tally, a, detail);
        assert_eq!((report.lost, report.lost_pct, report.resyncs), (10, 10.0, 1));
        assert_eq!(report.errors_total, 2);
        assert_eq!(report.update_rate, 5.5);
        assert!(report.measured());
        let json: serde_json::Value = serde_json::from_str(&report.json_line()).unwrap();
        assert_eq!(json["lost"], 10);
        assert_eq!(json["resync_reasons"]["lagged"], 1);
        assert_eq!(json["errors"]["stream_bad_stream"], 1);
        assert!(json["fanout_p99_ms"].as_f64().unwrap() >= 89.0);
        assert_eq!(report.server_cpu_us_per_delivery, Some(100.0), "9 ms of server CPU over 90 deliveries");
        let table = report.table();
        assert!(table.contains("100.00 µs per delivery"), "{table}");
        assert!(table.contains("10 lost"), "{table}");
        assert!(table.contains("lagged: 1"), "{table}");
        assert!(
            table.contains("n=7 (lock) sent 16:00:00.123 UTC via replica 2: missed by 3 of 4 on replica 3"),
            "{table}"
        );
        assert!(table.contains("from 16:00:00.000 UTC: 90 -"), "{table}");
        // Top-level keys appear once, nested lists and all, so that a script can pick one out with sed.
        let line = report.json_line();
        for key in ["lost", "received", "errors_total", "fanout_p99_ms", "updates_sent"] {
            assert_eq!(line.matches(&format!("\"{key}\":")).count(), 1, "{key} in {line}");
        }
    }

    #[test]
    fn mixed_report_counts_user_messages_and_answers_apart() {
        let mut stats = FanoutStats::default();
        for i in 1..=10u64 {
            stats.record_delivery(i * 1000);
            stats.record_answered(Duration::from_millis(i), Some(Duration::from_micros(i * 500)));
        }
        stats.record_error("turn", ErrorKind::Http(429), "429 Too Many Requests: thread_busy");
        let tally = MixedTally {
            viewers_open: 4,
            turns_sent: 11,
            turns_ok: 10,
            turns_failed: 1,
            expected: 40,
            received: 38,
            answers_received: 39,
            received_for_failed: 2,
        };
        let shape = MixedShapeSummary {
            spread: SpreadSummary {
                replicas: 2,
                threads: 2,
                viewers: 4,
                duration: Duration::from_secs(5),
                drain: Duration::from_secs(2),
                open_time: Duration::from_millis(30),
                connections: 12,
            },
            writers: 2,
            write_time: Duration::from_secs(5),
            loadtest_cpu: Some(1.5),
            wall_time: Duration::from_secs(8),
        };
        let lost = Lost {
            lost_n: 3,
            lost_kind: "user_message",
            lost_sent_us: 1_764_000_000_500_000,
            lost_via_replica: 1,
            lost_missing: vec![0, 2],
            lost_viewers: vec![1, 2],
        };
        let detail = LossDetail {
            from_us: 1_764_000_000_000_000,
            lost_by_replica: vec![0, 3],
            lost: vec![lost],
            timeline: vec![Second { second: 0, second_sent: 11, second_lost: 3, ..Second::default() }],
        };
        let report = MixedReport::new(shape, tally, stats, detail);
        assert_eq!((report.lost, report.answers_lost, report.answers_expected), (2, 1, 40));
        assert_eq!((report.turn_rate, report.lost_pct, report.errors_total), (2.0, 5.0, 1));
        assert!(report.measured());
        let near = |got: Option<f64>, want: f64| (got.unwrap() - want).abs() <= want / 100.0;
        assert!(near(report.turn_p50_ms, 5.0), "{:?}", report.turn_p50_ms);
        assert!(near(report.first_event_p99_ms, 5.0), "{:?}", report.first_event_p99_ms);
        assert!(near(report.fanout_max_ms, 10.0), "{:?}", report.fanout_max_ms);
        let table = report.table();
        assert!(table.contains("38 received, 2 lost (5.0000%) user messages; 39 of 40 answers, 1 lost"), "{table}");
        assert!(
            table.contains("lost turn     n=3 (user_message) sent 16:00:00.500 UTC via replica 1: missed by 2 of 2"),
            "{table}"
        );
        assert!(
            table.contains("errors        turn_http_429: 1 (first: 429 Too Many Requests: thread_busy)"),
            "{table}"
        );
        assert!(table.contains("1.50 s of CPU in 8.00 s"), "{table}");
        let line = report.json_line();
        for key in ["lost", "received", "answers_lost", "errors_total", "fanout_p99_ms", "turn_rate", "turns_ok"] {
            assert_eq!(line.matches(&format!("\"{key}\":")).count(), 1, "{key} in {line}");
        }
    }

    /// Every table and JSON line a report prints, to the byte, for a busy run with errors, losses and resyncs and for a
    /// quiet one: people read the tables, and scripts pick values out of the JSON lines with `sed`, so neither changes
    /// unnoticed. After a change meant to alter them, `BLESS=1 cargo test -p chatkit-loadtest` rewrites the file.
    #[test]
    fn tables_and_json_lines_keep_their_format() {
        let mut rendered = String::new();
        let mut add = |name: &str, table: String, json_line: String| {
            let _ = write!(rendered, "== {name}: table\n{table}== {name}: json\n{json_line}\n");
        };

        let mut busy = Stats::default();
        for i in 1..=200u64 {
            busy.record_ok(Duration::from_micros(i * 731), Some(Duration::from_micros(i * 97)));
        }
        busy.record_error(ErrorKind::Http(503), "503 Service Unavailable");
        busy.record_error(ErrorKind::Timeout, "no answer in 10s");
        busy.record_error(ErrorKind::BadStream, "the stream ended without thread.item.done");
        let run = |scenario| RunShape {
            scenario,
            concurrency: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            connections: 33,
            server_cpu: (scenario == Scenario::Turn).then_some(1.234),
        };
        let report = Report::new(run(Scenario::Turn), busy);
        add("request, busy", report.table(), report.json_line());
        let report = Report::new(run(Scenario::List), Stats::default());
        add("request, quiet", report.table(), report.json_line());

        let busy = || {
            let mut busy = FanoutStats::default();
            for i in 1..=300u64 {
                busy.record_delivery(i * 417);
                busy.record_answered(
                    Duration::from_micros(i * 211),
                    (i % 3 != 0).then(|| Duration::from_micros(i * 29)),
                );
            }
            busy.record_resync("lagged");
            busy.record_resync("lagged");
            busy.record_resync("history_gap");
            busy.duplicates = 2;
            busy.unmatched = 1;
            busy.other_events = 17;
            busy.record_error("open", ErrorKind::Timeout, "no response head within 10s");
            busy.record_named_error("stream_closed".into(), "the gateway ended the stream");
            busy
        };
        let lost = |kind, n| Lost {
            lost_n: n,
            lost_kind: kind,
            lost_sent_us: 1_764_000_000_000_000 + n * 12_345,
            lost_via_replica: 1 + n as usize % 3,
            lost_missing: vec![0, 1, 2],
            lost_viewers: vec![3, 3, 4],
        };
        let detail = |kinds: [&'static str; 2]| LossDetail {
            from_us: 1_764_000_000_000_000,
            lost_by_replica: vec![0, 7, 14],
            lost: (0..7).map(|n| lost(kinds[n as usize % 2], n)).collect(),
            timeline: vec![
                Second {
                    second: 0,
                    second_sent: 6,
                    second_deliveries: 60,
                    second_max_ms: Some(90.4),
                    ..Second::default()
                },
                Second { second: 1, second_sent: 5, second_lost: 21, second_slow: 2, ..Second::default() },
                Second {
                    second: 2,
                    second_sent: 5,
                    second_deliveries: 50,
                    second_max_ms: Some(101.6),
                    ..Second::default()
                },
            ],
        };
        let spread = SpreadSummary {
            replicas: 3,
            threads: 10,
            viewers: 100,
            duration: Duration::from_secs(3),
            drain: Duration::from_secs(2),
            open_time: Duration::from_micros(123_456),
            connections: 113,
        };
        let fanout_shape = FanoutShapeSummary {
            spread,
            rate: 5.0,
            send_time: Duration::from_millis(3200),
            send_lag_max: Duration::from_micros(1_500),
            server_cpu: Some(0.25),
        };
        let fanout_tally = FanoutTally {
            viewers_open: 99,
            updates_sent: 16,
            updates_ok: 15,
            updates_failed: 1,
            expected: 150,
            received: 129,
            received_for_failed: 4,
        };
        let report = FanoutReport::new(fanout_shape, fanout_tally, busy(), detail(["title", "lock"]));
        add("fanout, busy", report.table(), report.json_line());
        let quiet = FanoutTally { viewers_open: 100, received: 150, received_for_failed: 0, ..fanout_tally };
        let quiet_shape = FanoutShapeSummary { server_cpu: None, ..fanout_shape };
        let report = FanoutReport::new(quiet_shape, quiet, FanoutStats::default(), LossDetail::default());
        add("fanout, quiet", report.table(), report.json_line());

        let mixed_shape = MixedShapeSummary {
            spread: SpreadSummary { connections: 116, ..spread },
            writers: 4,
            write_time: Duration::from_millis(3010),
            loadtest_cpu: Some(2.345),
            wall_time: Duration::from_millis(5678),
        };
        let mixed_tally = MixedTally {
            viewers_open: 99,
            turns_sent: 301,
            turns_ok: 300,
            turns_failed: 1,
            expected: 3000,
            received: 2979,
            answers_received: 2990,
            received_for_failed: 9,
        };
        let report = MixedReport::new(mixed_shape, mixed_tally, busy(), detail(["user_message", "answer"]));
        add("mixed, busy", report.table(), report.json_line());
        let quiet_shape = MixedShapeSummary { loadtest_cpu: None, ..mixed_shape };
        let quiet = MixedTally { received: 3000, answers_received: 3000, received_for_failed: 0, ..mixed_tally };
        let report = MixedReport::new(quiet_shape, quiet, FanoutStats::default(), LossDetail::default());
        add("mixed, quiet", report.table(), report.json_line());

        let idle_spread = SpreadSummary { threads: 2, viewers: 200, drain: Duration::ZERO, connections: 202, ..spread };
        let mut idle_stats = FanoutStats::default();
        idle_stats.record_named_error("stream_closed".into(), "the gateway ended the stream");
        let report = IdleReport::new(idle_spread, 199, idle_stats, Some(0.597));
        add("idle", report.table(), report.json_line());

        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/reports.txt");
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(path, &rendered).expect("the golden file can be written");
        }
        let golden = std::fs::read_to_string(path).unwrap_or_default();
        for (line, (got, want)) in rendered.lines().zip(golden.lines()).enumerate() {
            assert_eq!(got, want, "line {} of {path} differs", line + 1);
        }
        assert_eq!(rendered.lines().count(), golden.lines().count(), "{path} has another number of lines");
    }
}
