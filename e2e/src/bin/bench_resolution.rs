//! How many Datadog calls metric resolution costs (see `bench/resolution.sh` and
//! BENCHMARKS.md). Not a test: it prints figures and exits non-zero only if the setup is
//! broken (a value that should resolve did not).
//!
//! 1. Refresh: 1,000 synthetic HPAs whose external metrics make 700 distinct queries go
//!    through the leader's path (`HpaCatalog` snapshot → `refresher::plan` → the
//!    `DatadogResolver` → `Plan::apply`) against the Datadog double, several refreshes in a
//!    row, counting `/api/v1/query` calls per refresh.
//! 2. Burst: 10,000 concurrent requests, on the leader, for a metric the HPA catalog knows
//!    and the store does not have yet (`DatadogMetricSource::get_at`), counting the calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use datadog_cluster_agent::apimachinery::selector::Selector;
use datadog_cluster_agent::autoscaling::hpa::HpaCatalog;
use datadog_cluster_agent::autoscaling::refresher::{Resolution, plan};
use datadog_cluster_agent::autoscaling::source::{SourceSettings, outcome_cache};
use datadog_cluster_agent::autoscaling::store::{StoreSnapshot, StoredMetric};
use datadog_cluster_agent::autoscaling::{DatadogMetricSource, Telemetry};
use datadog_cluster_agent::config::Aggregator;
use datadog_cluster_agent::config::Secret;
use datadog_cluster_agent::datadog::Resolver;
use datadog_cluster_agent::datadog::client::{ClientConfig, DatadogClient};
use datadog_cluster_agent::datadog::query::build_query;
use datadog_cluster_agent::datadog::resolver::{
    DEFAULT_CONCURRENCY, DatadogResolver, ResolverConfig,
};
use e2e::datadog_double::{DatadogDouble, Fault, Route, points_ending_now};
use kube::api::DynamicObject;
use serde_json::json;

const HPAS: usize = 1_000;
const DISTINCT_QUERIES: usize = 700;
const REFRESHES: usize = 3;
const BURST: usize = 10_000;
const ROLLUP_SECS: u32 = 30;
/// What Datadog takes to answer one call, for the burst: long enough that every request of
/// the burst arrives while the one query is in flight.
const DATADOG_LATENCY: Duration = Duration::from_millis(250);

/// Metric names as HPAs write them (mixed case included: queries keep the spelling).
const METRICS: [&str; 7] = [
    "nginx.net.request_per_s",
    "rabbitmq.queue.messages",
    "kafka.consumer_lag",
    "aws.sqs.approximate_number_of_messages_visible",
    "redis.net.clients",
    "postgresql.connections",
    "Trace.http.request.hits",
];

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The metric and `matchLabels` of distinct query `q`.
fn metric_of(q: usize) -> (&'static str, BTreeMap<String, String>) {
    let labels = [
        ("kube_service", format!("svc-{q}")),
        ("env", "prod".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    (METRICS[q % METRICS.len()], labels)
}

fn hpa(
    namespace: &str,
    name: &str,
    metric: &str,
    labels: &BTreeMap<String, String>,
) -> Result<DynamicObject> {
    serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"), "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": 2, "maxReplicas": 20,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": metric, "selector": {"matchLabels": labels}},
                "target": {"type": "AverageValue", "averageValue": "100"}}}]}
    }))
    .context("building a synthetic HPA")
}

/// HPA `i` wants distinct query `i % 700`: 300 queries are shared by two HPAs (in other
/// namespaces), as when one service is scaled in several environments.
fn synthetic_hpas() -> Result<Vec<DynamicObject>> {
    (0..HPAS)
        .map(|i| {
            let (metric, labels) = metric_of(i % DISTINCT_QUERIES);
            hpa(
                &format!("team-{}", i % 40),
                &format!("app-{i}"),
                metric,
                &labels,
            )
        })
        .collect()
}

fn resolver(dd: &DatadogDouble) -> Result<DatadogResolver> {
    let mut config = ClientConfig::new(
        dd.base_url(),
        Secret::new(dd.api_key()),
        Secret::new(dd.app_key()),
    );
    config.use_env_proxy = false;
    // The defaults of external_metrics_provider.*.
    Ok(DatadogResolver::new(
        DatadogClient::new(config)?,
        ResolverConfig {
            chunk_size: 35,
            bucket_size: Duration::from_secs(300),
            max_age: Duration::from_secs(120),
            rollup: Duration::from_secs(u64::from(ROLLUP_SECS)),
            refresh_period: Duration::from_secs(30),
            concurrency: DEFAULT_CONCURRENCY,
        },
    ))
}

/// Peak resident memory of this process so far, KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Runs [`REFRESHES`] refreshes with the double allowing `rate_limit` calls an hour.
async fn refreshes(rate_limit: u64) -> Result<()> {
    let dd = DatadogDouble::start().await?;
    dd.set_rate_limit(rate_limit, 3600);
    for q in 0..DISTINCT_QUERIES {
        let (metric, labels) = metric_of(q);
        let query = build_query(Aggregator::Avg, metric, &labels, ROLLUP_SECS);
        dd.set_series(
            &query,
            points_ending_now(&[1.0, q as f64, 2.0], ROLLUP_SECS),
        );
    }
    let catalog = HpaCatalog::from_objects(synthetic_hpas()?);
    let resolver = resolver(&dd)?;
    let mut previous = StoreSnapshot::absent();
    println!("refresh: {HPAS} HPAs, Datadog double allowing {rate_limit} calls/h");
    println!(
        "| refresh | wanted | distinct queries | /api/v1/query calls | queries per call (max) | valid entries | time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for refresh in 1..=REFRESHES {
        let before = dd.query_calls().len();
        let now = now_s();
        let started = Instant::now();
        let snapshot = catalog.snapshot();
        let mut next = plan(
            &snapshot.wanted,
            &previous,
            Aggregator::Avg,
            ROLLUP_SECS,
            now,
        );
        let resolved = Resolver::resolve(&resolver, &next.queries, now).await;
        match &resolved {
            Ok(outcomes) => next.apply(Resolution::Resolved(outcomes), now),
            Err(e) => next.apply(Resolution::Failed(&e.to_string()), now),
        }
        let elapsed = started.elapsed();
        let calls = &dd.query_calls()[before..];
        let valid = next.entries.values().filter(|e| e.valid).count();
        println!(
            "| {refresh} | {} | {} | {} | {} | {valid} | {} |",
            snapshot.wanted.len(),
            next.queries.len(),
            calls.len(),
            calls.iter().map(Vec::len).max().unwrap_or(0),
            ms(elapsed),
        );
        ensure!(
            snapshot.wanted.len() == HPAS && next.queries.len() == DISTINCT_QUERIES,
            "the synthetic cluster is not what it should be"
        );
        if refresh == 1 && valid != HPAS {
            bail!("only {valid} of {HPAS} entries resolved on the first refresh");
        }
        let entries = next
            .entries
            .iter()
            .map(|(key, value)| StoredMetric {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        previous = StoreSnapshot::from_parts(entries, next.reasons.clone(), Some(now));
    }
    println!("peak RSS so far: {} KiB", peak_rss_kib());
    println!();
    Ok(())
}

/// Fires [`BURST`] concurrent requests for a metric the store does not have, on the leader,
/// with `other_hpas` unrelated HPAs in the catalog besides the one that wants it.
async fn burst(other_hpas: usize) -> Result<()> {
    let dd = DatadogDouble::start().await?;
    let labels: BTreeMap<String, String> = [("queue".to_owned(), "orders".to_owned())].into();
    let metric = "rabbitmq.queue.messages";
    let query = build_query(Aggregator::Avg, metric, &labels, ROLLUP_SECS);
    dd.set_series(&query, points_ending_now(&[3.0, 42.0, 5.0], ROLLUP_SECS));
    dd.set_sticky_fault(Route::Query, Some(Fault::Delay(DATADOG_LATENCY)));

    let mut hpas = vec![hpa("shop", "orders-worker", metric, &labels)?];
    for i in 0..other_hpas {
        let (m, l) = metric_of(i % DISTINCT_QUERIES);
        hpas.push(hpa(
            &format!("team-{}", i % 40),
            &format!("app-{i}"),
            m,
            &l,
        )?);
    }
    let (_store_tx, store) = tokio::sync::watch::channel(Arc::new(StoreSnapshot::absent()));
    let (_leader_tx, leader) = tokio::sync::watch::channel(true);
    let source = Arc::new(DatadogMetricSource::new(
        store,
        HpaCatalog::from_objects(hpas),
        leader,
        Arc::new(resolver(&dd)?),
        outcome_cache(Duration::from_secs(30)),
        Arc::new(Telemetry::default()),
        SourceSettings {
            aggregator: Aggregator::Avg,
            rollup_secs: ROLLUP_SECS,
            staleness_limit_secs: 150,
            configmap: "datadog/datadog-custom-metrics".into(),
        },
    ));
    let selector = Arc::new(Selector::parse("queue=orders")?);
    let now = now_s();
    let started = Instant::now();
    let tasks: Vec<_> = (0..BURST)
        .map(|_| {
            let source = Arc::clone(&source);
            let selector = Arc::clone(&selector);
            // Client-go lower-cases the name; the namespace is the HPA's.
            tokio::spawn(async move {
                let t = Instant::now();
                let result = source
                    .get_at("shop", "rabbitmq.queue.messages", &selector, now)
                    .await;
                (t.elapsed(), result)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(BURST);
    let mut failures = 0;
    for task in tasks {
        let (latency, result) = task.await?;
        match result {
            Ok(values) if values.len() == 1 && values[0].value == 42.0 => {}
            _ => failures += 1,
        }
        latencies.push(latency);
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    let calls = dd.query_calls();
    println!(
        "| {} | {BURST} | {} | {failures} | {} | {} | {} | {} | {} |",
        other_hpas + 1,
        calls.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(wall),
        peak_rss_kib(),
    );
    ensure!(failures == 0, "{failures} requests of the burst failed");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    e2e::controlplane::ensure_crypto_provider();
    println!(
        "machine: {} CPUs available to this process",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!();
    // A raised organisation limit: every chunk of every refresh runs.
    refreshes(100_000).await?;
    // Datadog's default (1,600 calls/h): 20 calls every 30 s would exhaust it, so the
    // budget paces the later refreshes.
    refreshes(1_600).await?;

    println!(
        "burst: {BURST} concurrent requests for a metric not yet stored, on the leader; Datadog double answering in {} ms",
        DATADOG_LATENCY.as_millis()
    );
    println!(
        "| HPAs in catalog | requests | /api/v1/query calls | failed | p50 | p99 | max | wall | peak RSS so far (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    burst(0).await?;
    burst(HPAS - 1).await?;
    Ok(())
}
