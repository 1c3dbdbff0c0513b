//! The capture worker's metrics, per source (the configured fleet: bounded):
//! segments and operations captured, gaps, failures, where the restorable
//! window ends, and for physical PostgreSQL sources how WAL archiving goes (from
//! `ferry wal-push`'s reports: see [`crate::archive`]), so an alert can fire when the recovery point falls behind
//! (`time() - ferry_capture_window_end_timestamp_seconds > 2 *
//! ferry_capture_segment_span_seconds`).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

type Seconds = Gauge<f64, AtomicU64>;

/// Capture metrics, registered once per process.
#[derive(Clone)]
pub struct CaptureMetrics {
    segments: Family<SourceLabel, Counter>,
    operations: Family<SourceLabel, Counter>,
    gaps: Family<SourceLabel, Counter>,
    failures: Family<SourceLabel, Counter>,
    window_start: Family<SourceLabel, Seconds>,
    window_end: Family<SourceLabel, Seconds>,
    lag: Family<SourceLabel, Seconds>,
    span: Family<SourceLabel, Seconds>,
    wal_last_archived: Family<SourceLabel, Seconds>,
    wal_files: Family<SourceLabel, Counter>,
    wal_failures: Family<SourceLabel, Counter>,
    wal_failing: Family<SourceLabel, Gauge>,
}

fn label(source: &str) -> SourceLabel {
    SourceLabel {
        source: source.to_string(),
    }
}

impl CaptureMetrics {
    /// Registers the capture metrics in the process's registry.
    pub fn register(metrics: &ferry_runtime::Metrics) -> CaptureMetrics {
        let m = CaptureMetrics {
            segments: Family::default(),
            operations: Family::default(),
            gaps: Family::default(),
            failures: Family::default(),
            window_start: Family::default(),
            window_end: Family::default(),
            lag: Family::default(),
            span: Family::default(),
            wal_last_archived: Family::default(),
            wal_files: Family::default(),
            wal_failures: Family::default(),
            wal_failing: Family::default(),
        };
        metrics.register(|r| {
            r.register(
                "capture_segments",
                "Segments of captured changes committed, by source",
                m.segments.clone(),
            );
            r.register(
                "capture_operations",
                "Changes captured into committed segments, by source",
                m.operations.clone(),
            );
            r.register(
                "capture_gaps",
                "Gaps recorded: changes lost because the resume point left the server's history",
                m.gaps.clone(),
            );
            r.register(
                "capture_failures",
                "Times a source's capture stopped with an error (it is tried again)",
                m.failures.clone(),
            );
            r.register(
                "capture_window_start_timestamp_seconds",
                "Start of the restorable window the capture is extending (cluster time)",
                m.window_start.clone(),
            );
            r.register(
                "capture_window_end_timestamp_seconds",
                "End of the newest committed segment (cluster time): restores reach this far",
                m.window_end.clone(),
            );
            r.register(
                "capture_lag_seconds",
                "How far the newest committed segment was behind the wall clock when it was committed",
                m.lag.clone(),
            );
            r.register(
                "capture_segment_span_seconds",
                "The source's segment_span, for alert rules on the recovery point",
                m.span.clone(),
            );
            r.register(
                "wal_last_archived_timestamp_seconds",
                "When ferry wal-push last archived a WAL file of the source (from its reports)",
                m.wal_last_archived.clone(),
            );
            r.register(
                "wal_files_archived",
                "WAL files archived by ferry wal-push, by source (as reported since this process started)",
                m.wal_files.clone(),
            );
            r.register(
                "wal_archive_failures",
                "Failed ferry wal-push attempts reported, by source",
                m.wal_failures.clone(),
            );
            r.register(
                "wal_archive_failing",
                "1 while the source's latest archiving report is a failure",
                m.wal_failing.clone(),
            );
        });
        m
    }

    /// A source's capture started (or resumed) its window at `start`.
    pub fn record_start(&self, source: &str, window_start: f64, span: f64) {
        self.window_start
            .get_or_create(&label(source))
            .set(window_start);
        self.span.get_or_create(&label(source)).set(span);
    }

    /// A segment of `operations` ending at `end` (seconds) was committed.
    pub fn record_segment(&self, source: &str, operations: u64, end: f64) {
        let l = label(source);
        self.segments.get_or_create(&l).inc();
        self.operations.get_or_create(&l).inc_by(operations);
        self.window_end.get_or_create(&l).set(end);
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        self.lag.get_or_create(&l).set((now - end).max(0.0));
    }

    /// A gap was recorded; the window starts again at `restart`.
    pub fn record_gap(&self, source: &str, restart: f64) {
        self.gaps.get_or_create(&label(source)).inc();
        self.window_start.get_or_create(&label(source)).set(restart);
    }

    /// A `WalArchived` report: `files` more, the newest at `last` (seconds);
    /// `live` is false for the report read back at start (counted already).
    pub fn record_wal_archived(&self, source: &str, files: u64, last: f64, live: bool) {
        let l = label(source);
        if live {
            self.wal_files.get_or_create(&l).inc_by(files);
        }
        self.wal_last_archived.get_or_create(&l).set(last);
        self.wal_failing.get_or_create(&l).set(0);
    }

    /// A failed push was reported.
    pub fn record_wal_failure(&self, source: &str) {
        let l = label(source);
        self.wal_failures.get_or_create(&l).inc();
        self.wal_failing.get_or_create(&l).set(1);
    }

    /// A source's capture stopped with an error.
    pub fn record_failure(&self, source: &str) {
        self.failures.get_or_create(&label(source)).inc();
    }
}
