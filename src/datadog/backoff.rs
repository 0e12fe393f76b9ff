//! Per-query backoff for queries Datadog rejects (dca-contract §3.3 "Retry behaviour",
//! §11 item 5).
//!
//! A query in backoff is not sent at all, so it can no longer make the batch it would share
//! with healthy queries fail. The delay starts at [`INITIAL_BACKOFF`] (one refresh) and doubles
//! with each consecutive failure up to [`MAX_BACKOFF`]; one success clears it.
//!
//! Which failures count is decided by the caller ([`super::client::ClientError::blames_queries`]):
//! only Datadog refusing the query itself (HTTP 400/413/414/422, or a 200 whose body says
//! `"status": "error"`) for a call that held that query alone. Not counted:
//! - "no data" (no series, only nulls, outdated point): the query is fine, the data may come
//!   (a Deployment scaled from zero, a new tag), and it costs nothing to keep it in its batch;
//! - several series for one query: same, it does not hurt the other queries of its batch;
//! - 5xx, timeouts, connection errors, malformed bodies, 429: those are Datadog's or the
//!   network's problems, shared by every query; backing every query off for up to 30 minutes
//!   after an outage would delay recovery far past the outage itself;
//! - a rejection of a batch of several queries: the culprit is unknown, so the resolver
//!   retries each query of that batch alone first, and only the ones rejected alone back off.
//!
//! Unlike the Go DCA (random delay in `[30·2^(n-1), 30·2^n]`), the delay has no jitter: queries
//! are only sent at refresh ticks, which already spreads retries, and a fixed schedule keeps
//! the behaviour predictable in status output and tests.
//!
//! Pure: time is Unix seconds passed in by the caller.

use std::collections::HashMap;
use std::time::Duration;

/// Delay after the first failure.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_secs(30);
/// Longest delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// Delay after `consecutive_failures` failures: 0 → none, 1 → 30 s, 2 → 60 s, …, capped at
/// 30 min.
pub(crate) fn backoff_delay(consecutive_failures: u32) -> Duration {
    if consecutive_failures == 0 {
        return Duration::ZERO;
    }
    // 2^6 × 30 s already exceeds the cap, so larger shifts are never needed.
    let doublings = (consecutive_failures - 1).min(6);
    INITIAL_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_BACKOFF)
}

/// The backoff of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BackoffEntry {
    /// Consecutive failures so far.
    pub failures: u32,
    /// Unix seconds before which the query is not sent.
    pub retry_at: i64,
}

/// Backoff state of every failing query.
#[derive(Debug, Clone, Default)]
pub(crate) struct Backoffs {
    entries: HashMap<String, BackoffEntry>,
}

impl Backoffs {
    /// `true` if `query` must not be sent at `now`.
    pub(crate) fn is_backing_off(&self, query: &str, now: i64) -> bool {
        self.entries.get(query).is_some_and(|e| now < e.retry_at)
    }

    #[cfg(test)]
    /// The backoff of `query`, if it failed last time.
    pub(crate) fn get(&self, query: &str) -> Option<BackoffEntry> {
        self.entries.get(query).copied()
    }

    /// Records a failure at `now`; returns the delay before the next attempt.
    pub(crate) fn record_failure(&mut self, query: &str, now: i64) -> Duration {
        let entry = self
            .entries
            .entry(query.to_owned())
            .or_insert(BackoffEntry {
                failures: 0,
                retry_at: now,
            });
        entry.failures = entry.failures.saturating_add(1);
        let delay = backoff_delay(entry.failures);
        // The delay is at most 1800 s, so the conversion cannot fail.
        entry.retry_at = now.saturating_add(i64::try_from(delay.as_secs()).unwrap_or(i64::MAX));
        delay
    }

    /// Records a success: the query leaves backoff. Returns `true` if it was in it.
    pub(crate) fn record_success(&mut self, query: &str) -> bool {
        self.entries.remove(query).is_some()
    }

    #[cfg(test)]
    /// Queries with a backoff entry (due or not).
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    /// `true` if no query has a backoff entry.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queries not sent at `now`.
    pub(crate) fn backing_off_count(&self, now: i64) -> usize {
        self.entries.values().filter(|e| now < e.retry_at).count()
    }

    /// Keeps only the entries for which `keep(query)` is true (to forget queries nobody asks
    /// for any more).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|q, _| keep(q));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_vectors() {
        let cases: &[(u32, u64)] = &[
            (0, 0),
            (1, 30),
            (2, 60),
            (3, 120),
            (4, 240),
            (5, 480),
            (6, 960),
            (7, 1800),
            (8, 1800),
            (100, 1800),
            (u32::MAX, 1800),
        ];
        for (failures, secs) in cases {
            assert_eq!(
                backoff_delay(*failures),
                Duration::from_secs(*secs),
                "{failures}"
            );
        }
    }

    #[test]
    fn failures_double_and_success_resets() {
        let mut b = Backoffs::default();
        let q = "avg:bad{*}";
        let t = 1_700_000_000;
        assert!(!b.is_backing_off(q, t));

        assert_eq!(b.record_failure(q, t), Duration::from_secs(30));
        // (time, backing off?)
        for (at, blocked) in [(t, true), (t + 29, true), (t + 30, false), (t + 31, false)] {
            assert_eq!(b.is_backing_off(q, at), blocked, "t+{}", at - t);
        }
        assert_eq!(b.backing_off_count(t), 1);
        assert_eq!(b.backing_off_count(t + 30), 0);
        // Still recorded when due: the next failure doubles.
        assert_eq!(b.len(), 1);
        assert_eq!(b.record_failure(q, t + 30), Duration::from_secs(60));
        assert_eq!(
            b.get(q),
            Some(BackoffEntry {
                failures: 2,
                retry_at: t + 90
            })
        );
        assert!(b.is_backing_off(q, t + 89));
        assert!(!b.is_backing_off(q, t + 90));
        assert_eq!(b.record_failure(q, t + 90), Duration::from_secs(120));

        assert!(b.record_success(q));
        assert!(!b.record_success(q));
        assert!(!b.is_backing_off(q, t + 91));
        assert!(b.is_empty());
        // After a success the schedule starts over.
        assert_eq!(b.record_failure(q, t + 100), Duration::from_secs(30));
    }

    #[test]
    fn queries_are_independent() {
        let mut b = Backoffs::default();
        b.record_failure("a", 0);
        b.record_failure("a", 30);
        b.record_failure("b", 30);
        assert_eq!(b.get("a").map(|e| e.failures), Some(2));
        assert_eq!(b.get("b").map(|e| e.failures), Some(1));
        assert!(b.is_backing_off("a", 60));
        assert!(!b.is_backing_off("b", 60));
        assert!(!b.is_backing_off("c", 60));
        b.retain(|q| q != "a");
        assert_eq!(b.get("a"), None);
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn cap_holds_for_long_failure_streaks() {
        let mut b = Backoffs::default();
        let mut now = 0;
        for _ in 0..50 {
            let d = b.record_failure("q", now);
            assert!(d <= MAX_BACKOFF);
            now += d.as_secs() as i64;
        }
        assert_eq!(b.get("q").map(|e| e.retry_at - now), Some(0));
        assert_eq!(b.record_failure("q", now), MAX_BACKOFF);
    }
}
