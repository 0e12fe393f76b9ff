//! The Datadog client and resolver against the Datadog API double: what goes on the wire
//! (one call per chunk, query parameter, headers), how answers map back to queries, and how
//! faults are handled (retries, 4xx, malformed JSON, 403, 429 and the rate-limit budget,
//! per-query backoff), plus HTTPS with an extra CA.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datadog_cluster_agent::config::Secret;
use datadog_cluster_agent::datadog::client::{ClientConfig, ClientError, DatadogClient};
use datadog_cluster_agent::datadog::resolver::{DatadogResolver, ResolverConfig};
use datadog_cluster_agent::datadog::{QueryOutcome, ResolveError, Resolver};
use e2e::datadog_double::{
    DatadogDouble, Fault, Route, points_ending_now, points_ending_now_with_gaps,
};
use http::StatusCode;

/// Generous: the machine is shared. Only used as a deadline, never as an expectation.
const PATIENCE: Duration = Duration::from_secs(30);

fn setup() {
    e2e::controlplane::ensure_crypto_provider();
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn client_config(base_url: String, api_key: &str, app_key: &str) -> ClientConfig {
    let mut config = ClientConfig::new(base_url, Secret::new(api_key), Secret::new(app_key));
    // The double is on loopback; a proxy from the environment must not get in the way.
    config.use_env_proxy = false;
    config
}

fn resolver_with(config: ClientConfig, chunk_size: usize) -> DatadogResolver {
    DatadogResolver::new(
        DatadogClient::new(config).expect("client"),
        ResolverConfig {
            chunk_size,
            bucket_size: Duration::from_secs(300),
            max_age: Duration::from_secs(120),
            rollup: Duration::from_secs(30),
            refresh_period: Duration::from_secs(30),
            concurrency: 4,
        },
    )
}

fn resolver(dd: &DatadogDouble, chunk_size: usize) -> DatadogResolver {
    resolver_with(
        client_config(dd.base_url(), dd.api_key(), dd.app_key()),
        chunk_size,
    )
}

fn query(i: usize) -> String {
    format!("avg:nginx.net.request_per_s{{app:web-{i},env:prod}}.rollup(30)")
}

/// Queries 0..n, each answered with points whose penultimate value is `i`.
fn queries_with_series(dd: &DatadogDouble, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let q = query(i);
            dd.set_series(&q, points_ending_now(&[-1.0, i as f64, -2.0], 30));
            q
        })
        .collect()
}

fn value(outcome: &QueryOutcome) -> f64 {
    match outcome {
        QueryOutcome::Valid { value, .. } => *value,
        other => panic!("expected a valid outcome, got {other:?}"),
    }
}

fn reason(outcome: &QueryOutcome) -> &str {
    match outcome {
        QueryOutcome::Invalid { reason, .. } => reason,
        other => panic!("expected an invalid outcome, got {other:?}"),
    }
}

fn sets(calls: Vec<Vec<String>>) -> BTreeSet<BTreeSet<String>> {
    calls.into_iter().map(|c| c.into_iter().collect()).collect()
}

#[tokio::test]
async fn one_call_per_chunk_with_the_query_and_headers() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 3);
    let r = resolver(&dd, 35);
    let now = now_s();
    // Through the trait, as the refresher uses it; duplicates are sent once.
    let mut asked = queries.clone();
    asked.push(queries[0].clone());
    let got = Resolver::resolve(&r, &asked, now).await.unwrap();

    let calls = dd.requests_to("/api/v1/query");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, http::Method::GET);
    assert_eq!(call.status, Some(StatusCode::OK));
    assert_eq!(call.query_param("query"), Some(queries.join(",").as_str()));
    assert_eq!(
        call.query_param("from"),
        Some((now - 300).to_string().as_str())
    );
    assert_eq!(call.query_param("to"), Some(now.to_string().as_str()));
    assert_eq!(call.header("dd-api-key"), Some(dd.api_key()));
    assert_eq!(call.header("dd-application-key"), Some(dd.app_key()));
    assert_eq!(call.header("accept"), Some("application/json"));
    let ua = call.header("user-agent").unwrap();
    assert!(ua.starts_with("Datadog-Cluster-Agent/"), "{ua}");
    // Keys travel in headers only, never in the URL.
    let raw = call.raw_query.as_deref().unwrap();
    assert!(
        !raw.contains(dd.api_key()) && !raw.contains(dd.app_key()),
        "{raw}"
    );

    assert_eq!(got.len(), 3);
    for (i, q) in queries.iter().enumerate() {
        // The penultimate point, not the last (possibly partial) bucket.
        assert_eq!(value(&got[q]), i as f64, "{q}");
        let QueryOutcome::Valid { timestamp, .. } = got[q] else {
            unreachable!()
        };
        assert!(now - timestamp <= 120, "{q}: {timestamp} vs {now}");
    }
    let t = r.telemetry().snapshot();
    assert_eq!(t.requests_success, 1);
    assert_eq!(
        (t.requests_error, t.requests_rate_limited, t.retries),
        (0, 0, 0)
    );
    assert_eq!(t.rate_limit_limit, Some(1600));
    assert_eq!(t.rate_limit_remaining, Some(1599));
    assert_eq!(t.rate_limit_period, Some(3600));
    assert!(t.rate_limit_reset.is_some_and(|r| r <= 3600));
}

#[tokio::test]
async fn thirty_six_queries_make_two_calls_mapped_by_query_index() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 36);
    let r = resolver(&dd, 35);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();

    let calls = dd.query_calls();
    let mut sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 35]);
    assert_eq!(
        sets(calls),
        BTreeSet::from([
            queries[..35].iter().cloned().collect(),
            queries[35..].iter().cloned().collect(),
        ])
    );
    assert_eq!(got.len(), 36);
    for (i, q) in queries.iter().enumerate() {
        assert_eq!(value(&got[q]), i as f64, "{q}");
    }
    assert_eq!(r.telemetry().snapshot().requests_success, 2);
}

/// Two faulty calls, then a normal one: the resolution succeeds on the third attempt, and the
/// double recorded `statuses` (`None`: a connection dropped without an answer).
async fn retried_until_success(faults: [Fault; 2], statuses: [Option<StatusCode>; 3]) {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    dd.push_faults(Route::Query, faults);
    let r = resolver(&dd, 35);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(value(&got[&queries[0]]), 0.0);
    assert_eq!(value(&got[&queries[1]]), 1.0);
    let seen: Vec<Option<StatusCode>> = dd
        .requests_to("/api/v1/query")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(seen, statuses);
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_success, t.requests_error, t.retries), (1, 0, 2));
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    retried_until_success(
        [
            Fault::Status(StatusCode::SERVICE_UNAVAILABLE),
            Fault::Status(StatusCode::BAD_GATEWAY),
        ],
        [
            Some(StatusCode::SERVICE_UNAVAILABLE),
            Some(StatusCode::BAD_GATEWAY),
            Some(StatusCode::OK),
        ],
    )
    .await;
}

#[tokio::test]
async fn network_errors_are_retried_until_success() {
    retried_until_success(
        [Fault::Disconnect, Fault::Disconnect],
        [None, None, Some(StatusCode::OK)],
    )
    .await;
}

/// A fault on every call: the chunk is retried for ~3 s (exponential backoff from 250 ms
/// holds a handful of attempts), then every query fails with `reason_prefix`. The fault is
/// not the queries' doing, so none is put in backoff: they are asked again next time.
async fn a_lasting_fault_fails_the_chunk_after_retries(fault: Fault, reason_prefix: &str) {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    dd.set_sticky_fault(Route::Query, Some(fault.clone()));
    let r = resolver(&dd, 35);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    for q in &queries {
        let why = reason(&got[q]);
        assert!(why.starts_with(reason_prefix), "{fault:?}: {why}");
    }
    let attempts = dd.requests_to("/api/v1/query").len();
    assert!(
        (2..=6).contains(&attempts),
        "{fault:?} must be retried for ~3 s: {attempts} attempt(s)"
    );
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_success, t.requests_error), (0, 1));
    assert_eq!(t.retries, attempts as u64 - 1);
    dd.clear_faults();
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(value(&got[&queries[0]]), 0.0);
    assert_eq!(value(&got[&queries[1]]), 1.0);
    assert_eq!(r.telemetry().snapshot().queries_in_backoff, 0);
}

#[tokio::test]
async fn network_errors_past_the_retry_budget_fail_the_chunk_without_backoff() {
    a_lasting_fault_fails_the_chunk_after_retries(Fault::Disconnect, "request to Datadog failed")
        .await;
}

#[tokio::test]
async fn server_errors_past_the_retry_budget_fail_the_chunk() {
    a_lasting_fault_fails_the_chunk_after_retries(
        Fault::Status(StatusCode::INTERNAL_SERVER_ERROR),
        "API error 500 Internal Server Error",
    )
    .await;
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    dd.push_fault(Route::Query, Fault::Status(StatusCode::NOT_FOUND), 1);
    let r = resolver(&dd, 35);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(dd.requests_to("/api/v1/query").len(), 1);
    for q in &queries {
        assert!(
            reason(&got[q]).starts_with("API error 404 Not Found"),
            "{:?}",
            got[q]
        );
    }
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_error, t.retries), (1, 0));
}

#[tokio::test]
async fn malformed_json_fails_only_its_chunk() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 4);
    dd.push_fault(Route::Query, Fault::MalformedJson, 1);
    let r = resolver(&dd, 2);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(dd.query_calls().len(), 2);
    assert_eq!(got.len(), 4);
    let invalid: BTreeSet<String> = got
        .iter()
        .filter(|(_, o)| !o.is_valid())
        .map(|(q, _)| q.clone())
        .collect();
    // Chunks are [q0, q1] and [q2, q3]; whichever got the broken body is the invalid one.
    let first: BTreeSet<String> = queries[..2].iter().cloned().collect();
    let second: BTreeSet<String> = queries[2..].iter().cloned().collect();
    assert!(invalid == first || invalid == second, "{invalid:?}");
    for q in &invalid {
        let why = reason(&got[q]);
        assert!(why.contains("could not decode"), "{why}");
    }
    for (i, q) in queries.iter().enumerate() {
        if !invalid.contains(q) {
            assert_eq!(value(&got[q]), i as f64);
        }
    }
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_success, t.requests_error), (1, 1));
}

#[tokio::test]
async fn missing_and_null_only_series_are_invalid_never_zero() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 4);
    dd.set_series(
        &queries[1],
        points_ending_now_with_gaps(&[None, None, None], 30),
    );
    dd.clear_series(&queries[2]);
    dd.push_fault(Route::Query, Fault::DropSeries(queries[3].clone()), 1);
    let r = resolver(&dd, 35);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(value(&got[&queries[0]]), 0.0);
    let QueryOutcome::Invalid { reason, value } = &got[&queries[1]] else {
        panic!("null-only series must be invalid: {:?}", got[&queries[1]]);
    };
    assert_eq!(*value, None);
    assert!(
        reason.starts_with(
            "only null values found in API response (3 points), check data is available in the last 300 seconds"
        ),
        "{reason}"
    );
    for q in &queries[2..] {
        assert_eq!(
            got[q],
            QueryOutcome::invalid(
                "no serie returned for this query, check data is available in the last 300 seconds"
            ),
            "{q}"
        );
    }
    // No data is not the query's fault: nothing backs off.
    assert_eq!(r.telemetry().snapshot().queries_in_backoff, 0);
}

#[tokio::test]
async fn forbidden_stops_the_resolution() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    let r = resolver_with(
        client_config(
            dd.base_url(),
            dd.api_key(),
            "0000000000wrongappkey0000000000000000000",
        ),
        35,
    );
    let err = r.resolve_at(&queries, now_s()).await.unwrap_err();
    let ResolveError::Forbidden(msg) = &err else {
        panic!("expected Forbidden, got {err:?}");
    };
    assert!(msg.contains("403 Forbidden"), "{msg}");
    assert!(msg.contains("DD_SITE"), "{msg}");
    assert!(!msg.contains("wrongappkey"), "{msg}");
    // 4xx: no retry.
    assert_eq!(dd.requests_to("/api/v1/query").len(), 1);
    assert_eq!(r.telemetry().snapshot().requests_error, 1);
}

#[tokio::test]
async fn a_429_stops_every_call_until_the_window_resets() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    // A 2 s window keeps the wait short; the 429 says when it ends.
    dd.set_rate_limit(1600, 2);
    dd.push_fault(Route::Query, Fault::too_many_requests(), 1);
    let r = resolver(&dd, 35);

    let err = r.resolve_at(&queries, now_s()).await.unwrap_err();
    let ResolveError::RateLimited { retry_after_secs } = err else {
        panic!("expected RateLimited, got {err:?}");
    };
    assert!((1..=2).contains(&retry_after_secs), "{retry_after_secs}");
    assert_eq!(dd.requests_to("/api/v1/query").len(), 1);
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_rate_limited, t.retries), (1, 0));
    assert_eq!(t.rate_limit_remaining, Some(0));

    // Until Reset, resolutions are refused without calling Datadog; then one call succeeds.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut refused = 0;
    let got = loop {
        match r.resolve_at(&queries, now_s()).await {
            Ok(got) => break got,
            Err(ResolveError::RateLimited { .. }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "still rate limited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused >= 1);
    assert_eq!(value(&got[&queries[1]]), 1.0);
    // The refused resolutions made no call: only the 429 and the final success reached it.
    let statuses: Vec<Option<StatusCode>> = dd
        .requests_to("/api/v1/query")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        [Some(StatusCode::TOO_MANY_REQUESTS), Some(StatusCode::OK)]
    );
    let t = r.telemetry().snapshot();
    assert!(t.deferred_chunks_total >= refused);
}

fn one_query_per_chunk(dd: &DatadogDouble, concurrency: usize) -> DatadogResolver {
    DatadogResolver::new(
        DatadogClient::new(client_config(dd.base_url(), dd.api_key(), dd.app_key())).unwrap(),
        ResolverConfig {
            chunk_size: 1,
            bucket_size: Duration::from_secs(300),
            max_age: Duration::from_secs(120),
            rollup: Duration::from_secs(30),
            refresh_period: Duration::from_secs(30),
            concurrency,
        },
    )
}

#[tokio::test]
async fn a_429_stops_the_chunks_not_started_yet() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    dd.push_fault(Route::Query, Fault::too_many_requests(), 1);
    // One chunk in flight at a time: the second would start after the 429, so it must not.
    let r = one_query_per_chunk(&dd, 1);
    let err = r.resolve_at(&queries, now_s()).await.unwrap_err();
    assert!(matches!(err, ResolveError::RateLimited { .. }), "{err:?}");
    assert_eq!(dd.requests_to("/api/v1/query").len(), 1);
    let t = r.telemetry().snapshot();
    assert_eq!(t.deferred_chunks_last, 1);
    assert_eq!(t.requests_rate_limited, 1);
}

#[tokio::test]
async fn a_429_keeps_the_results_of_chunks_already_in_flight() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 2);
    dd.push_fault(Route::Query, Fault::too_many_requests(), 1);
    // Both chunks start together; one of them gets the 429.
    let r = one_query_per_chunk(&dd, 2);
    let got = r.resolve_at(&queries, now_s()).await.unwrap();
    assert_eq!(dd.requests_to("/api/v1/query").len(), 2);
    // The rate-limited query is absent (it keeps its last value), the other one resolved.
    assert_eq!(got.len(), 1, "{got:?}");
    let (q, outcome) = got.iter().next().unwrap();
    let i = queries.iter().position(|x| x == q).unwrap();
    assert_eq!(value(outcome), i as f64);
    let t = r.telemetry().snapshot();
    assert_eq!((t.requests_success, t.requests_rate_limited), (1, 1));
}

#[tokio::test]
async fn a_low_budget_defers_the_freshest_chunks() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 3);
    // 6 calls an hour.
    dd.set_rate_limit(6, 3600);
    let r = resolver(&dd, 1);
    let t0 = now_s();
    // q1 answered 20 s before the others: it is the stalest afterwards.
    let got = r.resolve_at(&queries[1..2], t0 - 20).await.unwrap();
    assert!(got[&queries[1]].is_valid());
    let got = r
        .resolve_at(&[queries[0].clone(), queries[2].clone()], t0 - 10)
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(dd.query_calls().len(), 3);
    assert_eq!(r.telemetry().snapshot().rate_limit_remaining, Some(3));

    // Remaining 3: 1 is never spent, 1 is kept for new queries, so one chunk runs: the stalest.
    let got = r.resolve_at(&queries, t0).await.unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), [&queries[1]]);
    assert_eq!(value(&got[&queries[1]]), 1.0);
    let calls = dd.query_calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3], [queries[1].clone()]);
    let t = r.telemetry().snapshot();
    assert_eq!(t.deferred_chunks_last, 2);
    assert_eq!(t.rate_limit_remaining, Some(2));

    // A brand-new query may use the reserve; the known ones still wait.
    let new_query = query(99);
    dd.set_series(&new_query, points_ending_now(&[5.0, 6.0, 7.0], 30));
    let mut with_new = queries.clone();
    with_new.push(new_query.clone());
    let got = r.resolve_at(&with_new, t0 + 1).await.unwrap();
    assert_eq!(got.keys().collect::<Vec<_>>(), [&new_query]);
    assert_eq!(value(&got[&new_query]), 6.0);
    assert_eq!(dd.query_calls().len(), 5);

    // Remaining 1: nothing more this window, without a call and without a 429.
    let err = r.resolve_at(&with_new, t0 + 2).await.unwrap_err();
    let ResolveError::RateLimited { retry_after_secs } = err else {
        panic!("{err:?}");
    };
    assert!(retry_after_secs > 3000, "{retry_after_secs}");
    assert_eq!(dd.query_calls().len(), 5);
    let t = r.telemetry().snapshot();
    assert_eq!(t.requests_rate_limited, 0);
    assert_eq!(t.deferred_chunks_last, 4);
}

#[tokio::test]
async fn a_rejected_batch_is_split_and_the_culprit_backs_off() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    let queries = queries_with_series(&dd, 3);
    let r = resolver(&dd, 35);
    let t0 = now_s();

    // The batch is rejected once; asked alone, every query is fine.
    dd.push_fault(
        Route::Query,
        Fault::QueryError("Error parsing query: unable to parse".to_owned()),
        1,
    );
    let got = r.resolve_at(&queries, t0 - 100).await.unwrap();
    for (i, q) in queries.iter().enumerate() {
        assert_eq!(value(&got[q]), i as f64, "{q}");
    }
    let calls = dd.query_calls();
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0], queries);
    assert_eq!(
        sets(calls[1..].to_vec()),
        queries
            .iter()
            .map(|q| BTreeSet::from([q.clone()]))
            .collect()
    );
    // Cleared: batched again.
    dd.clear_requests();
    r.resolve_at(&queries, t0 - 90).await.unwrap();
    assert_eq!(dd.query_calls(), std::slice::from_ref(&queries));

    // A query Datadog rejects even alone backs off: 30 s, then 60 s.
    let bad = "avg:broken{app:web}.rollup(30)".to_owned();
    dd.set_sticky_fault(
        Route::Query,
        Some(Fault::QueryError("bad query".to_owned())),
    );
    dd.clear_requests();
    let got = r
        .resolve_at(std::slice::from_ref(&bad), t0 - 80)
        .await
        .unwrap();
    assert_eq!(
        reason(&got[&bad]),
        format!("Invalid metric error: API returned error: bad query, query was: {bad}")
    );
    assert_eq!(dd.query_calls().len(), 1);
    assert_eq!(r.telemetry().snapshot().queries_in_backoff, 1);
    // In backoff: not sent, absent from the result.
    let got = r
        .resolve_at(std::slice::from_ref(&bad), t0 - 51)
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(dd.query_calls().len(), 1);
    // Due again after 30 s: fails, next delay 60 s.
    r.resolve_at(std::slice::from_ref(&bad), t0 - 50)
        .await
        .unwrap();
    assert_eq!(dd.query_calls().len(), 2);
    r.resolve_at(std::slice::from_ref(&bad), t0 - 1)
        .await
        .unwrap();
    assert_eq!(dd.query_calls().len(), 2);
    // Fixed: due at t0 + 10, succeeds, backoff cleared.
    dd.clear_faults();
    dd.set_series(&bad, points_ending_now(&[3.0, 4.0, 5.0], 30));
    let got = r
        .resolve_at(std::slice::from_ref(&bad), t0 + 10)
        .await
        .unwrap();
    assert_eq!(value(&got[&bad]), 4.0);
    assert_eq!(r.telemetry().snapshot().queries_in_backoff, 0);
}

/// A TLS server with its own self-signed certificate, answering every request with an empty
/// but valid query response.
async fn tls_server() -> (String, String, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let ca_pem = cert.cert.pem();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        cert.signing_key.serialize_der(),
    ));
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that rejects the certificate ends the handshake: nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"status":"ok","series":[]}"#,
                        )),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (base, ca_pem, task)
}

#[tokio::test]
async fn https_with_an_extra_ca_and_only_with_it() {
    setup();
    let (base, ca_pem, server) = tls_server().await;
    let q = vec![query(0)];

    let mut config = client_config(base.clone(), "k", "a");
    config.extra_root_certs_pem = Some(ca_pem.into_bytes());
    let client = DatadogClient::new(config).unwrap();
    let reply = client.query(0, 300, &q).await;
    assert!(reply.result.is_ok(), "{:?}", reply.result);
    assert!(reply.result.unwrap().series.is_empty());

    // Without the CA, the self-signed certificate is refused, and that is not retried into
    // success.
    let mut config = client_config(base, "k", "a");
    config.retry_budget = Duration::ZERO;
    let client = DatadogClient::new(config).unwrap();
    let reply = client.query(0, 300, &q).await;
    let Err(ClientError::Transport(msg)) = &reply.result else {
        panic!("expected a TLS failure, got {:?}", reply.result);
    };
    assert!(msg.chain().to_lowercase().contains("certificate"), "{msg}");
    server.abort();
}

#[tokio::test]
async fn client_reply_carries_rate_limit_headers_even_on_429() {
    setup();
    let dd = DatadogDouble::start().await.unwrap();
    dd.set_rate_limit(10, 600);
    dd.push_fault(Route::Query, Fault::too_many_requests(), 1);
    let client =
        DatadogClient::new(client_config(dd.base_url(), dd.api_key(), dd.app_key())).unwrap();
    let now = now_s();
    let reply = client.query(now - 300, now, &[query(0)]).await;
    assert!(
        matches!(reply.result, Err(ClientError::RateLimited { .. })),
        "{:?}",
        reply.result
    );
    assert_eq!(reply.attempts, 1);
    let h = reply.rate_limit.expect("429 headers").headers;
    assert_eq!(
        (h.limit, h.remaining, h.period_secs),
        (Some(10), Some(0), Some(600))
    );
    assert!(h.reset_secs.is_some_and(|r| (1..=600).contains(&r)));

    let reply = client.query(now - 300, now, &[query(0)]).await;
    let h = reply.rate_limit.expect("200 headers").headers;
    assert_eq!(h.remaining, Some(9));
    assert!(reply.result.is_ok());

    // Every response carried the same key headers and no key in the URL.
    let seen: BTreeMap<u64, Option<String>> = dd
        .requests_to("/api/v1/query")
        .iter()
        .map(|r| (r.seq, r.header("dd-api-key").map(str::to_owned)))
        .collect();
    assert!(seen.values().all(|k| k.as_deref() == Some(dd.api_key())));
}
