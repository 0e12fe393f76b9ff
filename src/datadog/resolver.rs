//! [`DatadogResolver`]: the [`Resolver`] that asks Datadog (dca-contract §3.4).
//!
//! One resolution: dedup → validate (a query that cannot share a batch is invalid at once) →
//! drop queries in backoff → chunk → rate-limit plan → run the planned chunks concurrently
//! (at most [`DEFAULT_CONCURRENCY`] at a time) over `[now - bucket_size, now]` → evaluate
//! each chunk's answer on its own → merge.
//!
//! - A chunk that fails (5xx after retries, timeout, malformed JSON, …) makes only its own
//!   queries invalid, with the error as reason; the other chunks' results stand.
//! - Deferred chunks (budget, or not started because of a 429) are absent from the result: the
//!   caller keeps serving their last values until those go stale. If nothing at all could be
//!   asked, the result is [`ResolveError::RateLimited`].
//! - 401/403 stops the resolution: the keys or the site are wrong for every chunk alike.
//! - A batch Datadog rejects (400, or `"status": "error"`) cannot say which of its queries is
//!   at fault, so each of its queries is asked alone, in the same resolution if the budget
//!   allows, otherwise in the next ones; a query rejected alone goes into backoff
//!   ([`super::backoff`]) and stops poisoning batches.
//! - Deferral priority: a chunk is as urgent as its least recently answered query ("answered"
//!   meaning Datadog returned a result for it, valid or not, so that a query without data does
//!   not stay first in line forever). Queries are sorted by that before chunking, so chunks
//!   group queries of similar age and brand-new ones (new HPAs) ride together in front.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;

use super::backoff::Backoffs;
use super::batch::{Chunk, make_chunks, query_cost};
use super::client::{ClientConfig, ClientError, DatadogClient, QueryReply};
use super::query::{dedup_queries, validate_batch_query};
use super::ratelimit::{BudgetView, DeferReason, RateBudget, Staleness};
use super::response::{EvalParams, QueryOutcome, effective_max_age, evaluate_response};
use super::{ResolveError, Resolver};
use crate::config::{ExternalMetricsSettings, Settings};

/// Chunks in flight at once. Datadog answers a 35-query call in about a second; 4 keeps a
/// large cluster's refresh short without bursting through the organisation's budget.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// A query nobody asked about for this long is forgotten (with its backoff).
const FORGET_AFTER_SECS: i64 = 3600;

/// What the resolver needs from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// `external_metrics_provider.chunk_size` (clamped to 1..=35 when chunking).
    pub chunk_size: usize,
    /// `external_metrics_provider.bucket_size`: the queried window.
    pub bucket_size: Duration,
    /// `external_metrics_provider.max_age`.
    pub max_age: Duration,
    /// `external_metrics_provider.rollup`.
    pub rollup: Duration,
    /// `external_metrics_provider.refresh_period`: paces the rate-limit budget.
    pub refresh_period: Duration,
    /// Chunks in flight at once (at least 1).
    pub concurrency: usize,
}

impl ResolverConfig {
    pub fn from_settings(em: &ExternalMetricsSettings) -> ResolverConfig {
        ResolverConfig {
            chunk_size: em.chunk_size,
            bucket_size: em.bucket_size,
            max_age: em.max_age,
            rollup: em.rollup,
            refresh_period: em.refresh_period,
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

const UNKNOWN: u64 = u64::MAX;

/// Counters and gauges of the Datadog query path, for `/metrics` and status.
#[derive(Debug)]
pub struct DatadogTelemetry {
    requests_success: AtomicU64,
    requests_error: AtomicU64,
    requests_rate_limited: AtomicU64,
    retries: AtomicU64,
    rate_limit_limit: AtomicU64,
    rate_limit_remaining: AtomicU64,
    rate_limit_reset: AtomicU64,
    rate_limit_period: AtomicU64,
    deferred_chunks_total: AtomicU64,
    deferred_chunks_last: AtomicU64,
    queries_in_backoff: AtomicU64,
    /// Calls that failed in a row (a 429 neither counts nor breaks the run: Datadog
    /// answered).
    consecutive_failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The last `/api/v1/validate` of the API key.
    api_key: Mutex<KeyCheck>,
}

/// What Datadog said of the API key the last time it was asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyCheck {
    /// Unix seconds; `None`: not asked yet.
    pub checked_at: Option<i64>,
    /// `None` when Datadog could not be asked (the error says why).
    pub valid: Option<bool>,
    pub error: Option<String>,
}

/// The record of a validation: a 401/403 is a verdict on the key, anything else is no
/// verdict at all.
pub fn key_check(result: &Result<(), ClientError>, now: i64) -> KeyCheck {
    let (valid, error) = match result {
        Ok(()) => (Some(true), None),
        Err(e @ ClientError::Forbidden { .. }) => (Some(false), Some(e.to_string())),
        Err(e) => (None, Some(e.to_string())),
    };
    KeyCheck {
        checked_at: Some(now),
        valid,
        error,
    }
}

/// Failed calls in a row that make the Datadog API unhealthy: one failure may be a blip
/// retries did not cover; three, a refresh period apart, are an outage or wrong keys.
pub const FAILING_AFTER: u64 = 3;

/// The `datadog-api` health check, from the failures in a row and the last error.
pub fn failing(consecutive: u64, last_error: Option<&str>) -> Result<(), String> {
    if consecutive < FAILING_AFTER {
        return Ok(());
    }
    Err(format!(
        "the last {consecutive} calls to the Datadog API failed, the last with: {}",
        last_error.unwrap_or("an unknown error")
    ))
}

impl Default for DatadogTelemetry {
    fn default() -> Self {
        DatadogTelemetry {
            requests_success: AtomicU64::new(0),
            requests_error: AtomicU64::new(0),
            requests_rate_limited: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            rate_limit_limit: AtomicU64::new(UNKNOWN),
            rate_limit_remaining: AtomicU64::new(UNKNOWN),
            rate_limit_reset: AtomicU64::new(UNKNOWN),
            rate_limit_period: AtomicU64::new(UNKNOWN),
            deferred_chunks_total: AtomicU64::new(0),
            deferred_chunks_last: AtomicU64::new(0),
            queries_in_backoff: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            api_key: Mutex::new(KeyCheck::default()),
        }
    }
}

/// A point-in-time copy of [`DatadogTelemetry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TelemetrySnapshot {
    /// `/api/v1/query` calls answered with a usable response.
    pub requests_success: u64,
    /// Calls that failed otherwise (after retries), 401/403 included.
    pub requests_error: u64,
    /// Calls answered 429.
    pub requests_rate_limited: u64,
    /// Extra HTTP attempts made by retries.
    pub retries: u64,
    /// Last known `X-RateLimit-*` values (`None` before the first response carrying them).
    pub rate_limit_limit: Option<u64>,
    pub rate_limit_remaining: Option<u64>,
    /// Seconds until the window resets, as of the last resolution.
    pub rate_limit_reset: Option<u64>,
    pub rate_limit_period: Option<u64>,
    /// Chunks deferred by the budget or a 429, since start.
    pub deferred_chunks_total: u64,
    /// Chunks deferred by the last resolution.
    pub deferred_chunks_last: u64,
    /// Queries not sent because of their backoff, as of the last resolution.
    pub queries_in_backoff: u64,
}

fn known(v: &AtomicU64) -> Option<u64> {
    Some(v.load(Ordering::Relaxed)).filter(|v| *v != UNKNOWN)
}

impl DatadogTelemetry {
    pub fn snapshot(&self) -> TelemetrySnapshot {
        let get = |v: &AtomicU64| v.load(Ordering::Relaxed);
        TelemetrySnapshot {
            requests_success: get(&self.requests_success),
            requests_error: get(&self.requests_error),
            requests_rate_limited: get(&self.requests_rate_limited),
            retries: get(&self.retries),
            rate_limit_limit: known(&self.rate_limit_limit),
            rate_limit_remaining: known(&self.rate_limit_remaining),
            rate_limit_reset: known(&self.rate_limit_reset),
            rate_limit_period: known(&self.rate_limit_period),
            deferred_chunks_total: get(&self.deferred_chunks_total),
            deferred_chunks_last: get(&self.deferred_chunks_last),
            queries_in_backoff: get(&self.queries_in_backoff),
        }
    }

    fn record_reply(&self, reply: &QueryReply) {
        let counter = match &reply.result {
            Ok(_) => &self.requests_success,
            Err(ClientError::RateLimited { .. }) => &self.requests_rate_limited,
            Err(_) => &self.requests_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match &reply.result {
            Ok(_) => self.consecutive_failures.store(0, Ordering::Relaxed),
            Err(ClientError::RateLimited { .. }) => {}
            Err(e) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.retries.fetch_add(
            u64::from(reply.attempts.saturating_sub(1)),
            Ordering::Relaxed,
        );
    }

    pub fn record_key_check(&self, check: KeyCheck) {
        *self.api_key.lock().unwrap_or_else(PoisonError::into_inner) = check;
    }

    pub fn key_check(&self) -> KeyCheck {
        self.api_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Calls failed in a row now, and the last error (for `status`).
    pub fn failures(&self) -> (u64, Option<String>) {
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (self.consecutive_failures.load(Ordering::Relaxed), last)
    }

    /// Whether the calls to Datadog keep failing ([`failing`]).
    pub fn health(&self) -> Result<(), String> {
        let (consecutive, last) = self.failures();
        failing(consecutive, last.as_deref())
    }

    fn record_budget(&self, view: Option<BudgetView>) {
        let set = |gauge: &AtomicU64, v: Option<u64>| {
            gauge.store(v.unwrap_or(UNKNOWN), Ordering::Relaxed)
        };
        set(&self.rate_limit_limit, view.and_then(|v| v.limit));
        set(&self.rate_limit_remaining, view.map(|v| v.remaining));
        set(&self.rate_limit_reset, view.map(|v| v.reset_in_secs));
        set(&self.rate_limit_period, view.and_then(|v| v.period_secs));
    }
}

#[derive(Debug, Clone, Copy)]
struct QueryMemory {
    /// Unix seconds of the last call that returned a result for the query.
    last_answered: Option<i64>,
    last_asked: i64,
    /// Part of a batch Datadog rejected: asked alone until it is cleared or backs off.
    suspect: bool,
}

#[derive(Debug, Default)]
struct State {
    queries: HashMap<String, QueryMemory>,
    backoffs: Backoffs,
    budget: RateBudget,
}

impl State {
    fn staleness(&self, chunk: &Chunk, now: i64) -> Staleness {
        let mut oldest = None::<i64>;
        for q in &chunk.queries {
            match self.queries.get(q).and_then(|m| m.last_answered) {
                None => return Staleness::NeverAnswered,
                Some(t) => oldest = Some(oldest.map_or(t, |o| o.min(t))),
            }
        }
        let age = oldest.map_or(0, |t| now.saturating_sub(t).max(0));
        Staleness::Age(u64::try_from(age).unwrap_or(0))
    }
}

/// What one round of calls produced.
#[derive(Debug, Default)]
struct Round {
    outcomes: BTreeMap<String, QueryOutcome>,
    /// Queries of rejected batches, to ask alone.
    suspects: Vec<String>,
    deferred: usize,
    defer_reason: Option<DeferReason>,
    rate_limited: bool,
    forbidden: Option<String>,
}

/// Resolves queries against Datadog's `/api/v1/query`.
#[derive(Debug)]
pub struct DatadogResolver {
    client: DatadogClient,
    config: ResolverConfig,
    state: Mutex<State>,
    telemetry: Arc<DatadogTelemetry>,
}

fn single(query: String) -> Chunk {
    let cost = query_cost(&query);
    Chunk {
        queries: vec![query],
        cost,
    }
}

fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl DatadogResolver {
    pub fn new(client: DatadogClient, config: ResolverConfig) -> DatadogResolver {
        DatadogResolver {
            client,
            config,
            state: Mutex::new(State::default()),
            telemetry: Arc::new(DatadogTelemetry::default()),
        }
    }

    /// Client and resolver from the settings (and env `DATADOG_HOST`).
    pub fn from_settings(settings: &Settings) -> Result<DatadogResolver, ClientError> {
        let client = DatadogClient::new(ClientConfig::from_settings(settings)?)?;
        Ok(DatadogResolver::new(
            client,
            ResolverConfig::from_settings(&settings.external_metrics),
        ))
    }

    /// Shared handle on the counters, for the telemetry endpoint.
    pub fn telemetry(&self) -> Arc<DatadogTelemetry> {
        self.telemetry.clone()
    }

    pub fn client(&self) -> &DatadogClient {
        &self.client
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after any partial update: a panic elsewhere
        // must not stop metric resolution.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chunks to plan for `queries` at `now`: queries in backoff are left out; suspects
    /// go alone, first; the rest are batched, least recently answered first. Returns the
    /// chunks and the number of queries left out.
    fn prepare(&self, queries: Vec<String>, now: i64) -> (Vec<Chunk>, usize) {
        let mut st = self.lock();
        let mut singles = Vec::new();
        let mut batched = Vec::new();
        let mut backing_off = 0;
        for q in queries {
            let memory = st.queries.entry(q.clone()).or_insert(QueryMemory {
                last_answered: None,
                last_asked: now,
                suspect: false,
            });
            memory.last_asked = memory.last_asked.max(now);
            let (suspect, last_answered) = (memory.suspect, memory.last_answered);
            if st.backoffs.is_backing_off(&q, now) {
                backing_off += 1;
            } else if suspect {
                singles.push(q);
            } else {
                batched.push((last_answered, q));
            }
        }
        let State {
            queries, backoffs, ..
        } = &mut *st;
        queries.retain(|_, m| m.last_asked >= now.saturating_sub(FORGET_AFTER_SECS));
        backoffs.retain(|q| queries.contains_key(q));
        // Stable: never answered (None) first, then oldest answers first, input order within.
        batched.sort_by_key(|(last, _)| *last);
        let batched: Vec<String> = batched.into_iter().map(|(_, q)| q).collect();
        let mut chunks: Vec<Chunk> = singles.into_iter().map(single).collect();
        chunks.extend(make_chunks(&batched, self.config.chunk_size));
        (chunks, backing_off)
    }

    /// Resolves `queries` as of `now` (Unix seconds); see the module docs.
    pub async fn resolve_at(
        &self,
        queries: &[String],
        now: i64,
    ) -> Result<BTreeMap<String, QueryOutcome>, ResolveError> {
        let mut out = BTreeMap::new();
        let mut sendable = Vec::new();
        for q in dedup_queries(queries.iter().map(String::as_str)) {
            match validate_batch_query(&q) {
                Ok(()) => sendable.push(q),
                Err(e) => {
                    out.insert(q, QueryOutcome::invalid(e.to_string()));
                }
            }
        }
        let (mut chunks, backing_off) = self.prepare(sendable, now);
        let planned = chunks.len();
        let mut deferred = 0;
        let mut defer_reason = None;
        let mut rate_limited = false;
        // Round 2 asks alone each query of a batch rejected in round 1.
        for _round in 0..2 {
            if chunks.is_empty() {
                break;
            }
            let round = self.run_round(chunks, now).await;
            out.extend(round.outcomes);
            deferred += round.deferred;
            defer_reason = defer_reason.or(round.defer_reason);
            rate_limited |= round.rate_limited;
            if let Some(msg) = round.forbidden {
                self.finish(now, deferred);
                return Err(ResolveError::Forbidden(msg));
            }
            if rate_limited {
                break;
            }
            chunks = round.suspects.into_iter().map(single).collect();
        }
        self.finish(now, deferred);

        let retry_after = self.lock().budget.retry_after(Instant::now());
        if deferred > 0 {
            let (remaining, limit) = match defer_reason {
                Some(DeferReason::Budget {
                    remaining, limit, ..
                }) => (Some(remaining), limit),
                _ => (None, None),
            };
            tracing::warn!(
                deferred,
                planned,
                remaining,
                limit,
                retry_after_secs = retry_after.as_secs(),
                "Datadog rate limit: deferred query calls to a later refresh; their metrics keep \
                 their last values until those go stale"
            );
        }
        if backing_off > 0 {
            tracing::debug!(backing_off, "queries skipped while in backoff");
        }
        if out.is_empty() && (rate_limited || deferred > 0) {
            return Err(ResolveError::RateLimited {
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        Ok(out)
    }

    fn finish(&self, now: i64, deferred: usize) {
        let t = &self.telemetry;
        let deferred = u64::try_from(deferred).unwrap_or(u64::MAX);
        t.deferred_chunks_total
            .fetch_add(deferred, Ordering::Relaxed);
        t.deferred_chunks_last.store(deferred, Ordering::Relaxed);
        let st = self.lock();
        t.queries_in_backoff.store(
            u64::try_from(st.backoffs.backing_off_count(now)).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        t.record_budget(st.budget.view(Instant::now()));
    }

    async fn run_round(&self, chunks: Vec<Chunk>, now: i64) -> Round {
        let plan = {
            let st = self.lock();
            let staleness: Vec<Staleness> = chunks.iter().map(|c| st.staleness(c, now)).collect();
            st.budget
                .plan(Instant::now(), &staleness, self.config.refresh_period)
        };
        let mut round = Round {
            deferred: plan.deferred.len(),
            defer_reason: plan.reason,
            ..Round::default()
        };
        let mut slots: Vec<Option<Chunk>> = chunks.into_iter().map(Some).collect();
        let to_run: Vec<Chunk> = plan
            .run
            .iter()
            .filter_map(|&i| slots.get_mut(i).and_then(Option::take))
            .collect();

        let window = secs_i64(self.config.bucket_size);
        let (from, to) = (now.saturating_sub(window), now);
        let halt = AtomicBool::new(false);
        let halt = &halt;
        let results: Vec<(Chunk, Option<QueryReply>)> = futures::stream::iter(to_run)
            .map(|chunk| async move {
                let paused = self.lock().budget.paused_for(Instant::now()).is_some();
                if paused || halt.load(Ordering::Acquire) {
                    return (chunk, None);
                }
                let reply = self.client.query(from, to, &chunk.queries).await;
                self.observe(&reply);
                if matches!(
                    reply.result,
                    Err(ClientError::RateLimited { .. } | ClientError::Forbidden { .. })
                ) {
                    halt.store(true, Ordering::Release);
                }
                (chunk, Some(reply))
            })
            .buffer_unordered(self.config.concurrency.max(1))
            .collect()
            .await;

        let params = EvalParams {
            now,
            time_window_secs: window,
            max_age_secs: effective_max_age(
                secs_i64(self.config.max_age),
                secs_i64(self.config.rollup),
            ),
        };
        let mut st = self.lock();
        for (chunk, reply) in results {
            let Some(reply) = reply else {
                round.deferred += 1;
                continue;
            };
            match reply.result {
                Ok(response) => {
                    for q in &chunk.queries {
                        if let Some(m) = st.queries.get_mut(q) {
                            m.last_answered = Some(now);
                            m.suspect = false;
                        }
                        if st.backoffs.record_success(q) {
                            tracing::info!(query = %q, "Datadog accepts the query again; backoff cleared");
                        }
                    }
                    round
                        .outcomes
                        .extend(evaluate_response(&chunk.queries, &response, &params));
                }
                Err(ClientError::RateLimited { .. }) => round.rate_limited = true,
                Err(e @ ClientError::Forbidden { .. }) => {
                    round.forbidden = Some(format!(
                        "{e} (check the application key and that DD_SITE is your organisation's site)"
                    ));
                }
                Err(e) if e.blames_queries() && chunk.len() == 1 => {
                    for q in chunk.queries {
                        let delay = st.backoffs.record_failure(&q, now);
                        if let Some(m) = st.queries.get_mut(&q) {
                            m.suspect = false;
                        }
                        tracing::warn!(
                            query = %q,
                            error = %e,
                            backoff_secs = delay.as_secs(),
                            "Datadog rejected the query; not asking again before the backoff ends"
                        );
                        let reason = format!("Invalid metric error: {e}, query was: {q}");
                        round.outcomes.insert(q, QueryOutcome::invalid(reason));
                    }
                }
                Err(e) if e.blames_queries() => {
                    let n = chunk.len();
                    tracing::warn!(
                        queries = n,
                        error = %e,
                        "Datadog rejected a batch of queries; asking each alone to find the culprit"
                    );
                    for q in chunk.queries {
                        if let Some(m) = st.queries.get_mut(&q) {
                            m.suspect = true;
                        }
                        let reason = format!(
                            "Datadog rejected the batch of {n} queries holding this one ({e}); each is being retried alone"
                        );
                        round
                            .outcomes
                            .insert(q.clone(), QueryOutcome::invalid(reason));
                        round.suspects.push(q);
                    }
                }
                Err(e) => {
                    tracing::warn!(queries = chunk.len(), error = %e, "Datadog query call failed");
                    let reason = e.to_string();
                    for q in chunk.queries {
                        round
                            .outcomes
                            .insert(q, QueryOutcome::invalid(reason.clone()));
                    }
                }
            }
        }
        round
    }

    /// Feeds one reply to the budget and the counters, as soon as it arrives so that chunks
    /// not started yet see a 429.
    fn observe(&self, reply: &QueryReply) {
        self.telemetry.record_reply(reply);
        let mut st = self.lock();
        match (&reply.result, reply.rate_limit) {
            (Err(ClientError::RateLimited { .. }), obs) => {
                let at = obs.map_or_else(Instant::now, |o| o.at);
                st.budget
                    .observe_rate_limited(obs.as_ref().map(|o| &o.headers), at);
                let pause = st.budget.paused_for(Instant::now()).unwrap_or_default();
                tracing::warn!(
                    pause_secs = pause.as_secs(),
                    "Datadog answered 429 Too Many Requests: no metric query until the rate-limit window resets"
                );
            }
            (_, Some(obs)) => st.budget.observe(&obs.headers, obs.at),
            (_, None) => {}
        }
    }
}

impl Resolver for DatadogResolver {
    fn resolve<'a>(
        &'a self,
        queries: &'a [String],
        now: i64,
    ) -> BoxFuture<'a, Result<BTreeMap<String, QueryOutcome>, ResolveError>> {
        Box::pin(self.resolve_at(queries, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const NOW: i64 = 1_700_000_000;

    fn resolver(chunk_size: usize) -> DatadogResolver {
        // Port 1 on loopback: nothing listens, and these tests make no call.
        let mut config =
            ClientConfig::new("http://127.0.0.1:1", Secret::new("api"), Secret::new("app"));
        // The only call these tests make fails to connect; no need to retry it.
        config.retry_budget = Duration::ZERO;
        config.use_env_proxy = false;
        let client = DatadogClient::new(config).unwrap();
        DatadogResolver::new(
            client,
            ResolverConfig {
                chunk_size,
                bucket_size: Duration::from_secs(300),
                max_age: Duration::from_secs(120),
                rollup: Duration::from_secs(30),
                refresh_period: Duration::from_secs(30),
                concurrency: DEFAULT_CONCURRENCY,
            },
        )
    }

    fn qs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn layout(chunks: &[Chunk]) -> Vec<Vec<&str>> {
        chunks
            .iter()
            .map(|c| c.queries.iter().map(String::as_str).collect())
            .collect()
    }

    fn answered(r: &DatadogResolver, q: &str, at: i64) {
        r.lock().queries.get_mut(q).unwrap().last_answered = Some(at);
    }

    #[test]
    fn prepare_orders_chunks_by_last_answer() {
        let r = resolver(2);
        let all = qs(&["a", "b", "c", "d", "e"]);
        let (chunks, skipped) = r.prepare(all.clone(), NOW);
        assert_eq!(layout(&chunks), [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
        assert_eq!(skipped, 0);

        answered(&r, "a", NOW - 10);
        answered(&r, "b", NOW - 90);
        answered(&r, "c", NOW - 30);
        answered(&r, "d", NOW - 30);
        // "e" never answered: first; then b (90 s), c and d (30 s, input order), a.
        let (chunks, _) = r.prepare(all, NOW);
        assert_eq!(layout(&chunks), [vec!["e", "b"], vec!["c", "d"], vec!["a"]]);
        let st = r.lock();
        let staleness: Vec<Staleness> = chunks.iter().map(|c| st.staleness(c, NOW)).collect();
        assert_eq!(
            staleness,
            [
                Staleness::NeverAnswered,
                Staleness::Age(30),
                Staleness::Age(10)
            ]
        );
    }

    #[test]
    fn prepare_skips_backoff_and_isolates_suspects() {
        let r = resolver(35);
        let all = qs(&["a", "b", "c", "d"]);
        r.prepare(all.clone(), NOW);
        {
            let mut st = r.lock();
            st.backoffs.record_failure("b", NOW);
            st.queries.get_mut("d").unwrap().suspect = true;
        }
        let (chunks, skipped) = r.prepare(all.clone(), NOW + 10);
        assert_eq!(skipped, 1);
        assert_eq!(layout(&chunks), [vec!["d"], vec!["a", "c"]]);
        // Once the backoff is due, "b" is batched again.
        let (chunks, skipped) = r.prepare(all, NOW + 30);
        assert_eq!(skipped, 0);
        assert_eq!(layout(&chunks), [vec!["d"], vec!["a", "b", "c"]]);
    }

    #[test]
    fn prepare_forgets_queries_nobody_asks_for() {
        let r = resolver(35);
        r.prepare(qs(&["old", "kept"]), NOW);
        r.lock().backoffs.record_failure("old", NOW);
        r.prepare(qs(&["kept"]), NOW + FORGET_AFTER_SECS);
        assert_eq!(r.lock().queries.len(), 2);
        r.prepare(qs(&["kept"]), NOW + FORGET_AFTER_SECS + 1);
        let st = r.lock();
        assert_eq!(st.queries.keys().collect::<Vec<_>>(), ["kept"]);
        assert!(st.backoffs.is_empty());
    }

    #[tokio::test]
    async fn invalid_queries_are_answered_without_a_call() {
        let r = resolver(35);
        let got = r
            .resolve_at(&qs(&["avg:a{x:y,z}", "", "avg:b{x:y", "avg:a{x:y,z}"]), NOW)
            .await
            .unwrap();
        // "avg:a{x:y,z}" holds its comma inside braces, so it is a valid batch member and
        // was sent to a closed port: invalid with a transport error.
        assert_eq!(got.len(), 3);
        for (q, o) in &got {
            assert!(!o.is_valid(), "{q}");
        }
        let QueryOutcome::Invalid { reason, .. } = &got[""] else {
            unreachable!()
        };
        assert!(reason.contains("empty"), "{reason}");
        let QueryOutcome::Invalid { reason, .. } = &got["avg:b{x:y"] else {
            unreachable!()
        };
        assert!(reason.contains("avg:b{x:y"), "{reason}");
        let QueryOutcome::Invalid { reason, .. } = &got["avg:a{x:y,z}"] else {
            unreachable!()
        };
        assert!(reason.starts_with("request to Datadog failed"), "{reason}");
        let t = r.telemetry().snapshot();
        assert_eq!(t.requests_error, 1);
        assert_eq!(t.requests_success, 0);
        assert_eq!(t.rate_limit_remaining, None);
    }

    /// Only a 401/403 says the key is bad; a timeout or a 5xx says nothing about it.
    #[test]
    fn a_key_check_is_a_verdict_only_when_datadog_judged_the_key() {
        use http::StatusCode;
        let forbidden = Err(ClientError::Forbidden {
            status: StatusCode::FORBIDDEN,
            body: "{\"errors\":[\"Forbidden\"]}".into(),
        });
        let down = Err(ClientError::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
        });
        let cases = [
            (Ok(()), Some(true), false),
            (forbidden, Some(false), true),
            (down, None, true),
        ];
        for (result, valid, has_error) in cases {
            let check = key_check(&result, 7);
            assert_eq!(check.checked_at, Some(7));
            assert_eq!(check.valid, valid, "{result:?}");
            assert_eq!(check.error.is_some(), has_error, "{result:?}");
        }
        let t = DatadogTelemetry::default();
        assert_eq!(t.key_check(), KeyCheck::default());
        t.record_key_check(key_check(&Ok(()), 9));
        assert_eq!(t.key_check().valid, Some(true));
    }

    /// Failures in a row make the API unhealthy; a success ends the run, a 429 does not.
    #[test]
    fn the_datadog_api_is_unhealthy_after_failures_in_a_row() {
        use super::super::client::QueryReply;
        use super::super::response::QueryResponse;
        use http::StatusCode;
        let reply = |outcome: &str| QueryReply {
            result: match outcome {
                "ok" => Ok(QueryResponse::default()),
                "429" => Err(ClientError::RateLimited {
                    body: String::new(),
                }),
                _ => Err(ClientError::Forbidden {
                    status: StatusCode::FORBIDDEN,
                    body: format!("{{\"errors\":[\"{outcome}\"]}}"),
                }),
            },
            rate_limit: None,
            attempts: 1,
        };
        // replies → healthy afterwards
        let cases: &[(&[&str], bool)] = &[
            (&[], true),
            (&["e1", "e2"], true),
            (&["e1", "e2", "e3"], false),
            (&["e1", "e2", "429", "e3"], false),
            (&["e1", "e2", "ok", "e3"], true),
            (&["e1", "e2", "e3", "ok"], true),
        ];
        for (replies, healthy) in cases {
            let t = DatadogTelemetry::default();
            for r in *replies {
                t.record_reply(&reply(r));
            }
            assert_eq!(t.health().is_ok(), *healthy, "{replies:?}");
        }
        let t = DatadogTelemetry::default();
        for r in ["e1", "e2", "e3"] {
            t.record_reply(&reply(r));
        }
        let reason = t.health().unwrap_err();
        assert_eq!(
            reason,
            "the last 3 calls to the Datadog API failed, the last with: API error 403 Forbidden: {\"errors\":[\"e3\"]}"
        );
        assert!(failing(5, None).unwrap_err().ends_with("an unknown error"));
    }

    #[test]
    fn config_from_settings() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::load_from(None, dir.path(), &|_| None).unwrap();
        let c = ResolverConfig::from_settings(&settings.external_metrics);
        assert_eq!(c.chunk_size, 35);
        assert_eq!(c.bucket_size, Duration::from_secs(300));
        assert_eq!(c.max_age, Duration::from_secs(120));
        assert_eq!(c.rollup, Duration::from_secs(30));
        assert_eq!(c.refresh_period, Duration::from_secs(30));
        assert_eq!(c.concurrency, DEFAULT_CONCURRENCY);

        let env = |name: &str| match name {
            "DD_EXTERNAL_METRICS_PROVIDER_CHUNK_SIZE" => Some("3".to_owned()),
            "DD_EXTERNAL_METRICS_PROVIDER_BUCKET_SIZE" => Some("600".to_owned()),
            _ => None,
        };
        let settings = Settings::load_from(None, dir.path(), &env).unwrap();
        let c = ResolverConfig::from_settings(&settings.external_metrics);
        assert_eq!(c.chunk_size, 3);
        assert_eq!(c.bucket_size, Duration::from_secs(600));
    }
}
