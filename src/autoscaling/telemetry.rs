//! In-process counters of the autoscaling subsystem: cheap atomics on the hot paths and a
//! snapshot for the status page and the Prometheus exporter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counters shared by the watcher, the refresher and the metric source.
#[derive(Debug, Default)]
pub struct Telemetry {
    /// Requests answered from the ConfigMap copy.
    store_hits: AtomicU64,
    /// On-demand lookups answered by the cache (a value computed earlier, or by a concurrent
    /// request).
    cache_hits: AtomicU64,
    /// On-demand lookups that had to query Datadog.
    cache_misses: AtomicU64,
    store_writes: AtomicU64,
    store_write_errors: AtomicU64,
    refreshes: AtomicU64,
    resolve_errors: AtomicU64,
    /// Unix seconds of the last completed refresh (0 = never).
    last_refresh: AtomicI64,
    hpa_watch_errors: AtomicU64,
    store_watch_errors: AtomicU64,
    events_emitted: AtomicU64,
}

/// Age of one stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricAge {
    pub metric_name: String,
    pub labels: BTreeMap<String, String>,
    pub valid: bool,
    /// `now - ts`, seconds.
    pub age_secs: i64,
}

/// A consistent-enough copy of the counters (each is read atomically, not all together).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetrySnapshot {
    pub store_hits: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub store_writes: u64,
    pub store_write_errors: u64,
    pub refreshes: u64,
    pub resolve_errors: u64,
    /// Unix seconds of the last completed refresh on this replica (leader only).
    pub last_refresh: Option<i64>,
    pub hpa_watch_errors: u64,
    pub store_watch_errors: u64,
    pub events_emitted: u64,
    /// Seconds since this replica's ConfigMap copy last changed.
    pub store_copy_age_secs: Option<i64>,
    /// Per store key.
    pub metrics: BTreeMap<String, MetricAge>,
}

impl Telemetry {
    pub fn store_hit(&self) {
        self.store_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_written(&self) {
        self.store_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_write_error(&self) {
        self.store_write_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn resolve_error(&self) {
        self.resolve_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refreshed(&self, now: i64) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        self.last_refresh.store(now, Ordering::Relaxed);
    }

    pub fn hpa_watch_error(&self) {
        self.hpa_watch_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn store_watch_error(&self) {
        self.store_watch_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn event_emitted(&self) {
        self.events_emitted.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, with what the store copy reports of itself (see
    /// `StoreSnapshot::telemetry`).
    pub fn snapshot(
        &self,
        store_copy_age_secs: Option<i64>,
        metrics: BTreeMap<String, MetricAge>,
    ) -> TelemetrySnapshot {
        let last_refresh = self.last_refresh.load(Ordering::Relaxed);
        TelemetrySnapshot {
            store_hits: self.store_hits.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.cache_misses.load(Ordering::Relaxed),
            store_writes: self.store_writes.load(Ordering::Relaxed),
            store_write_errors: self.store_write_errors.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            resolve_errors: self.resolve_errors.load(Ordering::Relaxed),
            last_refresh: (last_refresh != 0).then_some(last_refresh),
            hpa_watch_errors: self.hpa_watch_errors.load(Ordering::Relaxed),
            store_watch_errors: self.store_watch_errors.load(Ordering::Relaxed),
            events_emitted: self.events_emitted.load(Ordering::Relaxed),
            store_copy_age_secs,
            metrics,
        }
    }
}
