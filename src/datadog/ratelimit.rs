//! Rate-limit budget for `/api/v1/query` (dca-contract §3.4 "Rate limits", §11 item 3).
//!
//! Datadog limits metric queries per organisation (1600 calls an hour by default) and reports
//! the budget on every answer with `X-RateLimit-Limit`, `-Remaining`, `-Reset` (seconds until
//! the window ends) and `-Period`. The Go DCA only records those headers and keeps querying
//! until it gets 429s, which then invalidates whole batches. We plan instead:
//!
//! - no headers seen yet, or the last window has ended: every chunk runs (we know nothing
//!   better, and a fresh window is full);
//! - after a 429, no call at all until its `Reset` has passed ([`DEFAULT_PAUSE_AFTER_429`] if
//!   the 429 had no usable header);
//! - otherwise the last [`FLOOR`] calls of the window are never spent (the budget is shared
//!   with every other user of the organisation's API keys, and an exhausted budget turns their
//!   calls and our on-demand ones into 429s), [`NEW_QUERY_RESERVE`] more are kept for chunks
//!   holding a query that was never answered (a brand-new HPA should not wait for the next
//!   window), and the rest is paced over the refreshes left before `Reset` so that one refresh
//!   cannot starve the following ones;
//! - when not everything fits, the chunks whose queries were answered most recently are
//!   deferred: their served values are the freshest, so they can best afford to wait.
//!
//! Everything here is pure: time is passed in, nothing is logged.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use http::HeaderMap;

/// Calls of a window that are never spent, so that `Remaining` does not reach 0 before `Reset`.
pub(crate) const FLOOR: u64 = 1;
/// Calls kept, above [`FLOOR`], for chunks holding a query that was never answered.
pub(crate) const NEW_QUERY_RESERVE: u64 = 1;
/// How long to stop calling after a 429 that carries no usable `X-RateLimit-Reset`.
pub(crate) const DEFAULT_PAUSE_AFTER_429: Duration = Duration::from_secs(60);
/// Two observations whose computed window ends are this close belong to the same window:
/// `Reset` is whole seconds and responses take time to arrive.
const SAME_WINDOW_TOLERANCE: Duration = Duration::from_secs(2);
/// The longest `X-RateLimit-Reset` believed. Datadog's windows last an hour; a longer one is a
/// broken header, and trusting it would stop queries for that long (or, near `u64::MAX`,
/// overflow the clock and panic), so it is treated as absent.
pub(crate) const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

/// Header names, lower-case as `http` stores them.
pub(crate) const HEADER_LIMIT: &str = "x-ratelimit-limit";
pub(crate) const HEADER_REMAINING: &str = "x-ratelimit-remaining";
pub(crate) const HEADER_RESET: &str = "x-ratelimit-reset";
pub(crate) const HEADER_PERIOD: &str = "x-ratelimit-period";

/// The `X-RateLimit-*` headers of one response; a header that is absent or not a non-negative
/// integer is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitHeaders {
    /// Calls allowed per window.
    pub limit: Option<u64>,
    /// Calls left in the current window.
    pub remaining: Option<u64>,
    /// Seconds until the current window ends.
    pub reset_secs: Option<u64>,
    /// Length of a window, seconds.
    pub period_secs: Option<u64>,
}

impl RateLimitHeaders {
    /// Reads the headers; `None` when the response carries none of them.
    pub fn from_headers(headers: &HeaderMap) -> Option<RateLimitHeaders> {
        let get = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let parsed = RateLimitHeaders {
            limit: get(HEADER_LIMIT),
            remaining: get(HEADER_REMAINING),
            reset_secs: get(HEADER_RESET),
            period_secs: get(HEADER_PERIOD),
        };
        (parsed != RateLimitHeaders::default()).then_some(parsed)
    }
}

/// How urgently a chunk needs to run: derived from the queries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Staleness {
    /// Seconds since Datadog last answered the chunk's least recently answered query.
    Age(u64),
    /// The chunk holds a query Datadog never answered (typically a new HPA). Most urgent.
    NeverAnswered,
}

/// Why chunks were deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeferReason {
    /// Datadog answered 429; nothing is sent until the window resets.
    Paused { retry_after: Duration },
    /// The known budget does not allow every chunk now.
    Budget {
        /// `X-RateLimit-Remaining` as last observed (the lowest seen in this window).
        remaining: u64,
        /// `X-RateLimit-Limit`, if known.
        limit: Option<u64>,
        /// Time until the window resets.
        reset_in: Duration,
        /// Calls this plan allows (new-query chunks may use the reserve on top).
        allowed: u64,
    },
}

impl DeferReason {
    #[cfg(test)]
    /// When calling again makes sense.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            DeferReason::Paused { retry_after } => *retry_after,
            DeferReason::Budget { reset_in, .. } => *reset_in,
        }
    }
}

/// Which chunks to run now and which to defer, by index into the planned slice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct BudgetPlan {
    /// Chunks to run, most urgent first.
    pub run: Vec<usize>,
    /// Chunks to leave for a later refresh, in index order.
    pub deferred: Vec<usize>,
    /// Set when `deferred` is not empty.
    pub reason: Option<DeferReason>,
}

/// The budget as last observed, for telemetry and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BudgetView {
    pub limit: Option<u64>,
    pub remaining: u64,
    /// Seconds until the window resets (0 once it has).
    pub reset_in_secs: u64,
    pub period_secs: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    limit: Option<u64>,
    remaining: u64,
    reset_at: Instant,
    period_secs: Option<u64>,
}

/// The rate-limit state of one Datadog organisation (one API/app key pair).
#[derive(Debug, Clone, Default)]
pub(crate) struct RateBudget {
    window: Option<Window>,
    paused_until: Option<Instant>,
}

fn usable_reset(secs: u64) -> Option<Duration> {
    Some(Duration::from_secs(secs)).filter(|d| *d <= MAX_RESET)
}

fn abs_diff(a: Instant, b: Instant) -> Duration {
    if a >= b { a - b } else { b - a }
}

impl RateBudget {
    /// Records the headers of a response received at `at`. Only responses that carry both
    /// `Remaining` and `Reset` say where the window stands; others are ignored.
    ///
    /// Chunks run concurrently, so answers of one window arrive out of order: within a window
    /// the lowest `Remaining` wins. An answer from an older window (its end is earlier than the
    /// one we know) is ignored; one from a later window replaces it.
    pub(crate) fn observe(&mut self, headers: &RateLimitHeaders, at: Instant) {
        let (Some(remaining), Some(reset)) =
            (headers.remaining, headers.reset_secs.and_then(usable_reset))
        else {
            return;
        };
        let new = Window {
            limit: headers.limit,
            remaining,
            reset_at: at + reset,
            period_secs: headers.period_secs,
        };
        self.window = Some(match self.window {
            Some(old) if old.reset_at > at => {
                if abs_diff(old.reset_at, new.reset_at) <= SAME_WINDOW_TOLERANCE {
                    Window {
                        limit: new.limit.or(old.limit),
                        remaining: old.remaining.min(new.remaining),
                        reset_at: old.reset_at.max(new.reset_at),
                        period_secs: new.period_secs.or(old.period_secs),
                    }
                } else if new.reset_at > old.reset_at {
                    new
                } else {
                    old
                }
            }
            _ => new,
        });
    }

    /// Records a 429 received at `at`: no call until its window resets.
    pub(crate) fn observe_rate_limited(&mut self, headers: Option<&RateLimitHeaders>, at: Instant) {
        let pause = match headers.and_then(|h| h.reset_secs).and_then(usable_reset) {
            // A `Reset: 0` still means "now is too early": wait at least a second.
            Some(reset) => reset.max(Duration::from_secs(1)),
            None => DEFAULT_PAUSE_AFTER_429,
        };
        if let Some(h) = headers {
            // Whatever `Remaining` says, a 429 means none is left.
            let h = RateLimitHeaders {
                remaining: Some(0),
                reset_secs: Some(pause.as_secs()),
                ..*h
            };
            self.observe(&h, at);
        }
        let until = at + pause;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Time left before calls may resume after a 429, if still paused at `now`.
    pub(crate) fn paused_for(&self, now: Instant) -> Option<Duration> {
        self.paused_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// The budget as last observed, if a window is known.
    pub(crate) fn view(&self, now: Instant) -> Option<BudgetView> {
        self.window.map(|w| BudgetView {
            limit: w.limit,
            remaining: w.remaining,
            reset_in_secs: w.reset_at.saturating_duration_since(now).as_secs(),
            period_secs: w.period_secs,
        })
    }

    /// How long until a deferred or refused call is worth trying again (zero if now).
    pub(crate) fn retry_after(&self, now: Instant) -> Duration {
        if let Some(paused) = self.paused_for(now) {
            return paused;
        }
        self.window
            .map(|w| w.reset_at.saturating_duration_since(now))
            .unwrap_or_default()
    }

    /// Decides which of `chunks` run now (see the module docs). `refresh_period` is how often
    /// the caller plans, used to pace the budget over the rest of the window.
    pub(crate) fn plan(
        &self,
        now: Instant,
        chunks: &[Staleness],
        refresh_period: Duration,
    ) -> BudgetPlan {
        let all: Vec<usize> = (0..chunks.len()).collect();
        if let Some(retry_after) = self.paused_for(now) {
            return BudgetPlan {
                run: Vec::new(),
                reason: (!all.is_empty()).then_some(DeferReason::Paused { retry_after }),
                deferred: all,
            };
        }
        let Some(w) = self.window.filter(|w| w.reset_at > now) else {
            return BudgetPlan {
                run: all,
                ..BudgetPlan::default()
            };
        };

        let reset_in = w.reset_at - now;
        let spendable_new = w.remaining.saturating_sub(FLOOR);
        let spendable = spendable_new.saturating_sub(NEW_QUERY_RESERVE);
        let period_ms = refresh_period.as_millis().max(1);
        let refreshes_left = u64::try_from(reset_in.as_millis().div_ceil(period_ms))
            .unwrap_or(u64::MAX)
            .max(1);
        // Rounded up: a non-empty budget always allows at least one call per refresh.
        let paced = spendable.div_ceil(refreshes_left);

        let mut order = all;
        // Stable: equally urgent chunks keep their order.
        order.sort_by_key(|&i| Reverse(chunks[i]));
        let mut plan = BudgetPlan::default();
        let mut used = 0u64;
        for i in order {
            let cap = match chunks[i] {
                Staleness::NeverAnswered => spendable_new,
                Staleness::Age(_) => paced,
            };
            if used < cap {
                used += 1;
                plan.run.push(i);
            } else {
                plan.deferred.push(i);
            }
        }
        plan.deferred.sort_unstable();
        if !plan.deferred.is_empty() {
            plan.reason = Some(DeferReason::Budget {
                remaining: w.remaining,
                limit: w.limit,
                reset_in,
                allowed: paced,
            });
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const REFRESH: Duration = Duration::from_secs(30);

    fn hdr(remaining: u64, reset: u64) -> RateLimitHeaders {
        RateLimitHeaders {
            limit: Some(1600),
            remaining: Some(remaining),
            reset_secs: Some(reset),
            period_secs: Some(3600),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn header_parsing_vectors() {
        type Headers = &'static [(&'static str, &'static str)];
        let cases: &[(Headers, Option<RateLimitHeaders>)] = &[
            (&[], None),
            (&[("content-type", "application/json")], None),
            (
                &[
                    ("X-RateLimit-Limit", "1600"),
                    ("X-RateLimit-Remaining", "1599"),
                    ("X-RateLimit-Reset", "3599"),
                    ("X-RateLimit-Period", "3600"),
                ],
                Some(RateLimitHeaders {
                    limit: Some(1600),
                    remaining: Some(1599),
                    reset_secs: Some(3599),
                    period_secs: Some(3600),
                }),
            ),
            (
                &[("x-ratelimit-remaining", " 7 ")],
                Some(RateLimitHeaders {
                    remaining: Some(7),
                    ..RateLimitHeaders::default()
                }),
            ),
            // Garbage is ignored header by header.
            (
                &[("x-ratelimit-remaining", "-1"), ("x-ratelimit-reset", "10")],
                Some(RateLimitHeaders {
                    reset_secs: Some(10),
                    ..RateLimitHeaders::default()
                }),
            ),
            (
                &[("x-ratelimit-remaining", "1.5"), ("x-ratelimit-limit", "")],
                None,
            ),
        ];
        for (headers, want) in cases {
            let mut map = HeaderMap::new();
            for (k, v) in *headers {
                map.insert(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            assert_eq!(RateLimitHeaders::from_headers(&map), *want, "{headers:?}");
        }
    }

    #[test]
    fn unknown_budget_runs_everything() {
        let b = RateBudget::default();
        let now = Instant::now();
        let plan = b.plan(now, &[Staleness::Age(5), Staleness::NeverAnswered], REFRESH);
        assert_eq!(plan.run, [0, 1]);
        assert!(plan.deferred.is_empty());
        assert_eq!(plan.reason, None);
        assert_eq!(b.retry_after(now), Duration::ZERO);
        assert_eq!(b.view(now), None);
        // Headers without Remaining/Reset do not make the budget known.
        let mut b = RateBudget::default();
        b.observe(
            &RateLimitHeaders {
                limit: Some(10),
                ..RateLimitHeaders::default()
            },
            now,
        );
        assert_eq!(b.view(now), None);
    }

    #[test]
    fn expired_window_runs_everything() {
        let t0 = Instant::now();
        let mut b = RateBudget::default();
        b.observe(&hdr(1, 10), t0);
        let chunks = [Staleness::Age(1); 5];
        assert_eq!(b.plan(t0 + secs(5), &chunks, REFRESH).run.len(), 0);
        assert_eq!(b.plan(t0 + secs(10), &chunks, REFRESH).run.len(), 5);
    }

    /// (remaining, reset_secs, chunk staleness, expected run order, expected deferred)
    #[test]
    fn planning_vectors() {
        use Staleness::{Age, NeverAnswered as New};
        type Case = (
            u64,
            u64,
            &'static [Staleness],
            &'static [usize],
            &'static [usize],
        );
        let cases: &[Case] = &[
            // Plenty of budget: everything, most urgent first.
            (1000, 60, &[Age(30), New, Age(60)], &[1, 2, 0], &[]),
            // Remaining 3, floor 1, reserve 1: one regular call; the stalest runs.
            (3, 20, &[Age(10), Age(90), Age(30)], &[1], &[0, 2]),
            // Same budget: a new-query chunk may use the reserve, not the floor.
            (3, 20, &[Age(10), New, Age(30)], &[1], &[0, 2]),
            (3, 20, &[New, New, New], &[0, 1], &[2]),
            // Remaining 2: only new-query chunks may run.
            (2, 20, &[Age(100), New], &[1], &[0]),
            (2, 20, &[Age(100)], &[], &[0]),
            // Remaining 1 or 0: nothing at all.
            (1, 20, &[New, Age(500)], &[], &[0, 1]),
            (0, 20, &[New], &[], &[0]),
            // Ties keep their order.
            (4, 20, &[Age(7), Age(7), Age(7)], &[0, 1], &[2]),
            // Pacing: 100 spendable over ceil(3000/30) = 100 refreshes → 1 regular call now,
            // while new-query chunks still get the reserve-backed budget.
            (102, 3000, &[Age(5), Age(50), Age(20)], &[1], &[0, 2]),
            (102, 3000, &[Age(5), New, New], &[1, 2], &[0]),
            // 100 spendable over 10 refreshes → 10 per refresh.
            (
                102,
                300,
                &[Age(1); 12],
                &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                &[10, 11],
            ),
            // Window ends before the next refresh: spend everything but floor + reserve.
            (6, 5, &[Age(1); 6], &[0, 1, 2, 3], &[4, 5]),
            // No chunk: nothing to do.
            (0, 20, &[], &[], &[]),
        ];
        let now = Instant::now();
        for (remaining, reset, chunks, run, deferred) in cases {
            let mut b = RateBudget::default();
            b.observe(&hdr(*remaining, *reset), now);
            let plan = b.plan(now, chunks, REFRESH);
            let ctx = format!("remaining {remaining} reset {reset} chunks {chunks:?}");
            assert_eq!(plan.run, *run, "{ctx}");
            assert_eq!(plan.deferred, *deferred, "{ctx}");
            assert_eq!(plan.reason.is_some(), !deferred.is_empty(), "{ctx}");
            if let Some(reason) = plan.reason {
                assert!(matches!(reason, DeferReason::Budget { .. }), "{ctx}");
                assert_eq!(reason.retry_after(), secs(*reset), "{ctx}");
            }
        }
    }

    /// The whole point: following the plan never spends the floor before the window resets,
    /// whatever the refresh rate.
    #[test]
    fn following_plans_never_exhausts_the_window() {
        for (limit, period, n_chunks) in [(20u64, 600u64, 5usize), (7, 60, 3), (1600, 3600, 40)] {
            let t0 = Instant::now();
            let mut b = RateBudget::default();
            let mut remaining = limit;
            b.observe(&hdr(remaining, period), t0);
            let mut t = 0;
            let mut runs = 0;
            while t < period {
                let now = t0 + secs(t);
                let plan = b.plan(now, &vec![Staleness::Age(30); n_chunks], REFRESH);
                for _ in &plan.run {
                    remaining -= 1;
                    runs += 1;
                    b.observe(&hdr(remaining, period - t), now);
                }
                assert!(
                    remaining >= FLOOR,
                    "limit {limit}: spent the floor at t={t}"
                );
                t += REFRESH.as_secs();
            }
            assert!(runs > 0);
            // Demand exceeds the budget in every case, and pacing still spends all of it but
            // the floor and the reserve by the end of the window.
            assert_eq!(remaining, FLOOR + NEW_QUERY_RESERVE, "limit {limit}");
        }
    }

    #[test]
    fn concurrent_answers_keep_the_lowest_remaining() {
        let t0 = Instant::now();
        let mut b = RateBudget::default();
        b.observe(&hdr(10, 100), t0);
        b.observe(&hdr(12, 100), t0 + Duration::from_millis(300));
        b.observe(&hdr(11, 99), t0 + Duration::from_millis(600));
        let v = b.view(t0).unwrap();
        assert_eq!(v.remaining, 10);
        assert_eq!(v.limit, Some(1600));
        assert_eq!(v.period_secs, Some(3600));
        // A later window replaces the old one, even with a higher Remaining.
        b.observe(&hdr(1599, 3600), t0 + secs(100));
        assert_eq!(b.view(t0 + secs(100)).unwrap().remaining, 1599);
        // A late answer from the old window is ignored.
        b.observe(&hdr(3, 1), t0 + secs(99));
        assert_eq!(b.view(t0 + secs(100)).unwrap().remaining, 1599);
    }

    #[test]
    fn a_429_pauses_until_reset() {
        let t0 = Instant::now();
        let mut b = RateBudget::default();
        b.observe_rate_limited(Some(&hdr(5, 40)), t0);
        let chunks = [Staleness::NeverAnswered, Staleness::Age(1)];
        for t in [0, 1, 39] {
            let plan = b.plan(t0 + secs(t), &chunks, REFRESH);
            assert!(plan.run.is_empty(), "t={t}");
            assert_eq!(plan.deferred, [0, 1]);
            assert_eq!(
                plan.reason,
                Some(DeferReason::Paused {
                    retry_after: secs(40 - t)
                })
            );
            assert_eq!(b.retry_after(t0 + secs(t)), secs(40 - t));
        }
        // Remaining is taken as 0 whatever the header said.
        assert_eq!(b.view(t0).unwrap().remaining, 0);
        assert_eq!(b.plan(t0 + secs(40), &chunks, REFRESH).run, [0, 1]);
        assert_eq!(b.paused_for(t0 + secs(40)), None);
    }

    #[test]
    fn a_429_without_headers_pauses_for_the_default() {
        let t0 = Instant::now();
        let mut b = RateBudget::default();
        b.observe_rate_limited(None, t0);
        assert_eq!(b.paused_for(t0), Some(DEFAULT_PAUSE_AFTER_429));
        assert_eq!(b.view(t0), None);
        // Reset 0 still waits a second.
        let mut b = RateBudget::default();
        b.observe_rate_limited(Some(&hdr(0, 0)), t0);
        assert_eq!(b.paused_for(t0), Some(secs(1)));
        // A second, shorter 429 does not shorten the pause.
        let mut b = RateBudget::default();
        b.observe_rate_limited(Some(&hdr(0, 30)), t0);
        b.observe_rate_limited(Some(&hdr(0, 5)), t0 + secs(1));
        assert_eq!(b.paused_for(t0 + secs(1)), Some(secs(29)));
    }

    #[test]
    fn an_absurd_reset_is_ignored() {
        let t0 = Instant::now();
        let max = MAX_RESET.as_secs();
        for reset in [max + 1, u64::MAX / 2, u64::MAX] {
            // Used to overflow `Instant + Duration` and panic.
            let mut b = RateBudget::default();
            b.observe(&hdr(5, reset), t0);
            assert_eq!(b.view(t0), None, "{reset}");
            let mut b = RateBudget::default();
            b.observe_rate_limited(Some(&hdr(5, reset)), t0);
            assert_eq!(b.paused_for(t0), Some(DEFAULT_PAUSE_AFTER_429), "{reset}");
            assert_eq!(b.view(t0).map(|v| v.reset_in_secs), Some(60), "{reset}");
        }
        let mut b = RateBudget::default();
        b.observe(&hdr(5, max), t0);
        assert_eq!(b.view(t0).map(|v| v.reset_in_secs), Some(max));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn staleness() -> impl Strategy<Value = Staleness> {
            prop_oneof![
                1 => Just(Staleness::NeverAnswered),
                4 => (0u64..10_000).prop_map(Staleness::Age),
            ]
        }

        proptest! {
            #[test]
            fn plans_partition_and_respect_the_floor(
                remaining in 0u64..50,
                reset in 0u64..4000,
                refresh in 1u64..120,
                chunks in proptest::collection::vec(staleness(), 0..40),
            ) {
                let now = Instant::now();
                let mut b = RateBudget::default();
                b.observe(&RateLimitHeaders {
                    limit: None,
                    remaining: Some(remaining),
                    reset_secs: Some(reset),
                    period_secs: None,
                }, now);
                let plan = b.plan(now, &chunks, Duration::from_secs(refresh));
                let mut all: Vec<usize> = plan.run.iter().chain(&plan.deferred).copied().collect();
                all.sort_unstable();
                prop_assert_eq!(all, (0..chunks.len()).collect::<Vec<_>>());
                if reset > 0 {
                    prop_assert!(plan.run.len() as u64 <= remaining.saturating_sub(FLOOR));
                } else {
                    prop_assert!(plan.deferred.is_empty());
                }
                // Nothing deferred is more urgent than something that runs.
                for d in &plan.deferred {
                    for r in &plan.run {
                        prop_assert!(chunks[*r] >= chunks[*d]);
                    }
                }
            }
        }
    }
}
