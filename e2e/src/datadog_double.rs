//! A double of the Datadog API, the only SaaS the cluster agent talks to.
//!
//! Everything else in the e2e harness is a real component, so this double has to behave like
//! Datadog's published v1 API (our copy of the operations we use: `e2e/spec/`) plus the agent
//! intake and flare routes of the DCA contract (§4, §7): the same status codes, bodies, auth rules
//! and rate-limit headers. `tests/datadog_double_spec.rs` validates its responses against the spec
//! so that it cannot drift.
//!
//! Routes:
//! - `GET /api/v1/query` (API + application key): answers from the series set by the test;
//! - `GET /api/v1/validate` (API key);
//! - `POST /api/v1/check_run`, `POST /api/v1/series`, `POST /api/v2/series`, `POST /intake/`
//!   (API key; bodies may be deflate, gzip or zstd encoded);
//! - `HEAD`/`POST /support/flare[/<case id>]` (API key; multipart upload).
//!
//! Every request is recorded, and faults can be injected per route.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

/// A key in the shape of a real Datadog API key (32 hex digits), so that scrubbing code sees
/// what it would see in production.
pub const DEFAULT_API_KEY: &str = "0123456789abcdef0123456789abcdef";
/// A key in the shape of a real Datadog application key (40 hex digits).
pub const DEFAULT_APP_KEY: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// Datadog's documented default for metric retrieval: 1600 queries per hour.
const DEFAULT_RATE_LIMIT: u64 = 1600;
const DEFAULT_RATE_PERIOD_S: u64 = 3600;

/// The published limit for a decompressed metrics payload is 62 MiB; flares are smaller than
/// that in practice, so one cap serves every route.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

const APPLICATION_JSON: &str = "application/json";
/// The spec declares `text/json` for the intake-style v1 routes (`check_run`, `series`).
const TEXT_JSON: &str = "text/json";

/// The routes of the double, used to aim faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /api/v1/query`
    Query,
    /// `GET /api/v1/validate`
    Validate,
    /// `POST /api/v1/check_run`
    CheckRun,
    /// `POST /api/v1/series`
    SeriesV1,
    /// `POST /api/v2/series` (protobuf; recorded, not interpreted)
    SeriesV2,
    /// `POST /intake/` (agent events payload)
    Intake,
    /// `HEAD`/`POST /support/flare[/<case id>]`
    Flare,
}

impl Route {
    /// The route serving `path`, if any.
    pub fn of_path(path: &str) -> Option<Route> {
        match path {
            "/api/v1/query" => Some(Route::Query),
            "/api/v1/validate" => Some(Route::Validate),
            "/api/v1/check_run" => Some(Route::CheckRun),
            "/api/v1/series" => Some(Route::SeriesV1),
            "/api/v2/series" => Some(Route::SeriesV2),
            // The agent forwarder always posts to `/intake/`; a client that drops the slash
            // has a bug we want to see as a 404.
            "/intake/" => Some(Route::Intake),
            p if p == "/support/flare" || p.starts_with("/support/flare/") => Some(Route::Flare),
            _ => None,
        }
    }
}

/// A fault injected into the answer of a route.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Answer with this status and an `APIErrorResponse` body. A 429 also carries the
    /// `X-RateLimit-*` headers, with `Remaining: 0`.
    Status(StatusCode),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer with the route's success status and a truncated JSON body.
    MalformedJson,
    /// `/api/v1/query` only: leave out the series of this query from a batch that contains it
    /// (Datadog does that when one query of a batch fails). A queued `DropSeries` waits for a call
    /// whose batch contains the query.
    DropSeries(String),
    /// `/api/v1/query` only: a 200 whose body has `"status":"error"` and this `error` message.
    QueryError(String),
    /// Close the connection without answering (a network failure: reset, proxy drop).
    Disconnect,
}

impl Fault {
    /// A 429 Too Many Requests, with rate-limit headers.
    pub fn too_many_requests() -> Fault {
        Fault::Status(StatusCode::TOO_MANY_REQUESTS)
    }

    fn applies_to(&self, route: Route, queries: &[String]) -> bool {
        match self {
            Fault::DropSeries(query) => route == Route::Query && queries.contains(query),
            Fault::QueryError(_) => route == Route::Query,
            Fault::Status(_) | Fault::Delay(_) | Fault::MalformedJson | Fault::Disconnect => true,
        }
    }
}

/// Points of a series, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub enum Points {
    /// Fixed timestamps (ms).
    Absolute(Vec<(i64, Option<f64>)>),
    /// Values whose last point is "now", resolved when a query is answered so that a series set
    /// at the start of a long test stays fresh. Points are `step_s` apart and aligned on
    /// multiples of the step, like Datadog's rollup buckets.
    EndingNow {
        /// Oldest first; `None` is a null point.
        values: Vec<Option<f64>>,
        /// Seconds between points (at least 1).
        step_s: u32,
    },
}

impl From<Vec<(i64, Option<f64>)>> for Points {
    fn from(points: Vec<(i64, Option<f64>)>) -> Points {
        Points::Absolute(points)
    }
}

impl From<Vec<(i64, f64)>> for Points {
    fn from(points: Vec<(i64, f64)>) -> Points {
        Points::Absolute(points.into_iter().map(|(t, v)| (t, Some(v))).collect())
    }
}

/// Values ending at the time of each query, `step_s` seconds apart (oldest first).
pub fn points_ending_now(values: &[f64], step_s: u32) -> Points {
    Points::EndingNow {
        values: values.iter().copied().map(Some).collect(),
        step_s,
    }
}

/// Like [`points_ending_now`], with null points where `None`.
pub fn points_ending_now_with_gaps(values: &[Option<f64>], step_s: u32) -> Points {
    Points::EndingNow {
        values: values.to_vec(),
        step_s,
    }
}

/// One unit of a series (`MetricsQueryUnit`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricUnit {
    pub family: String,
    pub name: String,
    pub plural: String,
    pub scale_factor: f64,
    pub short_name: String,
}

/// A series the double returns for a query; fields left `None` are derived from the query.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSpec {
    pub points: Points,
    pub metric: Option<String>,
    pub scope: Option<String>,
    pub tag_set: Vec<String>,
    /// `[primary unit, per unit]`; `None` answers `[null, null]`.
    pub unit: Option<[Option<MetricUnit>; 2]>,
}

impl SeriesSpec {
    pub fn new(points: impl Into<Points>) -> SeriesSpec {
        SeriesSpec {
            points: points.into(),
            metric: None,
            scope: None,
            tag_set: Vec::new(),
            unit: None,
        }
    }

    pub fn with_scope(mut self, scope: &str) -> SeriesSpec {
        self.scope = Some(scope.to_owned());
        self
    }

    pub fn with_tag_set(mut self, tags: &[&str]) -> SeriesSpec {
        self.tag_set = tags.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    pub fn with_metric(mut self, metric: &str) -> SeriesSpec {
        self.metric = Some(metric.to_owned());
        self
    }

    pub fn with_unit(mut self, unit: [Option<MetricUnit>; 2]) -> SeriesSpec {
        self.unit = Some(unit);
        self
    }
}

/// One part of a recorded multipart body.
#[derive(Debug, Clone, PartialEq)]
pub struct MultipartPart {
    pub name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    pub size: usize,
    /// The value of a plain (non-file) field, when it is UTF-8.
    pub text: Option<String>,
}

/// A request as the double received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Arrival order, starting at 0 for the double's lifetime (not reset by `clear_requests`).
    pub seq: u64,
    pub method: Method,
    pub path: String,
    pub raw_query: Option<String>,
    /// Query parameters, percent- and `+`-decoded, in order.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub content_encoding: Option<String>,
    /// Size of the body on the wire.
    pub raw_body_len: usize,
    /// The body after `Content-Encoding` was undone (empty if that failed).
    pub body: Bytes,
    pub decode_error: Option<String>,
    /// The decoded body, when it is JSON.
    pub json: Option<Value>,
    pub multipart: Vec<MultipartPart>,
    /// The status the double answered; `None` while the answer is pending (e.g. a delay fault)
    /// or when the client went away before it.
    pub status: Option<StatusCode>,
    pub received_at: SystemTime,
}

impl RecordedRequest {
    /// The first value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A header value, when it is visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The individual queries of a `/api/v1/query` call (split at top-level commas).
    pub fn metric_queries(&self) -> Vec<String> {
        self.query_param("query")
            .map(split_top_level_queries)
            .unwrap_or_default()
    }

    /// A multipart field by name.
    pub fn multipart_field(&self, name: &str) -> Option<&MultipartPart> {
        self.multipart.iter().find(|p| p.name == name)
    }
}

#[derive(Debug, Default)]
struct FaultPlan {
    queue: VecDeque<Fault>,
    sticky: Option<Fault>,
}

impl FaultPlan {
    fn take(&mut self, route: Route, queries: &[String]) -> Option<Fault> {
        if let Some(i) = self.queue.iter().position(|f| f.applies_to(route, queries)) {
            return self.queue.remove(i);
        }
        self.sticky
            .as_ref()
            .filter(|f| f.applies_to(route, queries))
            .cloned()
    }
}

/// Datadog's rate-limit budget for `/api/v1/query`. Datadog aligns periods on the calendar; the
/// double starts them when the budget is set so that a test's arithmetic never straddles a
/// period boundary by accident.
#[derive(Debug)]
struct RateBudget {
    limit: u64,
    period_s: u64,
    started: Instant,
    window: u64,
    used: u64,
}

impl RateBudget {
    fn new(limit: u64, period_s: u64) -> RateBudget {
        RateBudget {
            limit,
            period_s: period_s.max(1),
            started: Instant::now(),
            window: 0,
            used: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let window = now.duration_since(self.started).as_secs() / self.period_s;
        if window != self.window {
            self.window = window;
            self.used = 0;
        }
    }

    /// Counts one call; false when the budget of the current period is spent.
    fn try_take(&mut self, now: Instant) -> bool {
        self.roll(now);
        if self.used >= self.limit {
            return false;
        }
        self.used += 1;
        true
    }

    fn remaining(&mut self, now: Instant) -> u64 {
        self.roll(now);
        self.limit.saturating_sub(self.used)
    }

    /// Whole seconds until the current period ends (at least 1, like Datadog's header).
    fn reset_in(&self, now: Instant) -> u64 {
        let elapsed_ms = now.duration_since(self.started).as_millis();
        let period_ms = u128::from(self.period_s) * 1000;
        let left_ms = period_ms - elapsed_ms % period_ms;
        u64::try_from(left_ms.div_ceil(1000)).unwrap_or(self.period_s)
    }

    fn headers(
        &mut self,
        now: Instant,
        remaining_override: Option<u64>,
    ) -> [(&'static str, u64); 4] {
        let remaining = match remaining_override {
            Some(r) => r,
            None => self.remaining(now),
        };
        [
            ("x-ratelimit-limit", self.limit),
            ("x-ratelimit-period", self.period_s),
            ("x-ratelimit-remaining", remaining),
            ("x-ratelimit-reset", self.reset_in(now)),
        ]
    }
}

#[derive(Debug)]
struct State {
    series: HashMap<String, Vec<SeriesSpec>>,
    faults: HashMap<Route, FaultPlan>,
    rate: RateBudget,
    requests: Vec<RecordedRequest>,
    next_seq: u64,
    next_case_id: u64,
}

#[derive(Debug)]
struct Inner {
    api_key: String,
    app_key: String,
    state: Mutex<State>,
    recorded: Notify,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not hide every later assertion behind a PoisonError:
        // the state is plain data, valid after any partial update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Datadog API double. It serves on `127.0.0.1:<random port>` until dropped.
#[derive(Debug)]
pub struct DatadogDouble {
    inner: Arc<Inner>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for DatadogDouble {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        self.server.abort();
    }
}

impl DatadogDouble {
    /// Starts a double accepting [`DEFAULT_API_KEY`] and [`DEFAULT_APP_KEY`].
    pub async fn start() -> Result<DatadogDouble> {
        DatadogDouble::start_with_keys(DEFAULT_API_KEY, DEFAULT_APP_KEY).await
    }

    /// Starts a double accepting these keys.
    pub async fn start_with_keys(api_key: &str, app_key: &str) -> Result<DatadogDouble> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Datadog double on 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the Datadog double's address")?;
        let inner = Arc::new(Inner {
            api_key: api_key.to_owned(),
            app_key: app_key.to_owned(),
            state: Mutex::new(State {
                series: HashMap::new(),
                faults: HashMap::new(),
                rate: RateBudget::new(DEFAULT_RATE_LIMIT, DEFAULT_RATE_PERIOD_S),
                requests: Vec::new(),
                next_seq: 0,
                next_case_id: 1,
            }),
            recorded: Notify::new(),
        });
        let server = tokio::spawn(serve(listener, inner.clone()));
        Ok(DatadogDouble {
            inner,
            addr,
            server,
        })
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn api_key(&self) -> &str {
        &self.inner.api_key
    }

    pub fn app_key(&self) -> &str {
        &self.inner.app_key
    }

    /// Answers `query` with one series of these points.
    pub fn set_series(&self, query: &str, points: impl Into<Points>) {
        self.set_multiple_series(query, vec![SeriesSpec::new(points)]);
    }

    /// Answers `query` with these series (several series for one query is what a `by {tag}`
    /// query returns; the DCA must reject it).
    pub fn set_multiple_series(&self, query: &str, series: Vec<SeriesSpec>) {
        self.inner
            .state()
            .series
            .insert(query.trim().to_owned(), series);
    }

    /// Answers `query` with no series again.
    pub fn clear_series(&self, query: &str) {
        self.inner.state().series.remove(query.trim());
    }

    pub fn clear_all_series(&self) {
        self.inner.state().series.clear();
    }

    /// Sets the `/api/v1/query` budget: `limit` calls per `period_s` seconds, starting now with
    /// the whole budget available.
    pub fn set_rate_limit(&self, limit: u64, period_s: u64) {
        self.inner.state().rate = RateBudget::new(limit, period_s);
    }

    /// Queues `fault` for the next `times` calls to `route` it applies to.
    pub fn push_fault(&self, route: Route, fault: Fault, times: usize) {
        let mut state = self.inner.state();
        let plan = state.faults.entry(route).or_default();
        plan.queue.extend(std::iter::repeat_n(fault, times));
    }

    /// Queues these faults, one per call, in order.
    pub fn push_faults(&self, route: Route, faults: impl IntoIterator<Item = Fault>) {
        let mut state = self.inner.state();
        state.faults.entry(route).or_default().queue.extend(faults);
    }

    /// A fault applied to every call of `route` once the queue is empty (`None` removes it).
    pub fn set_sticky_fault(&self, route: Route, fault: Option<Fault>) {
        self.inner.state().faults.entry(route).or_default().sticky = fault;
    }

    /// Removes every queued and sticky fault.
    pub fn clear_faults(&self) {
        self.inner.state().faults.clear();
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.state().requests.clone()
    }

    /// The requests whose path starts with `path_prefix`.
    pub fn requests_to(&self, path_prefix: &str) -> Vec<RecordedRequest> {
        self.inner
            .state()
            .requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// The queries of each `/api/v1/query` call, in call order.
    pub fn query_calls(&self) -> Vec<Vec<String>> {
        self.inner
            .state()
            .requests
            .iter()
            .filter(|r| r.path == "/api/v1/query")
            .map(RecordedRequest::metric_queries)
            .collect()
    }

    pub fn clear_requests(&self) {
        self.inner.state().requests.clear();
    }

    /// Waits until at least `n` requests to `path_prefix` were received, and returns them.
    pub async fn wait_for_requests(
        &self,
        path_prefix: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<RecordedRequest>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registering before looking closes the window where a request lands between the
            // check and the wait.
            let notified = self.inner.recorded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = self.requests_to(path_prefix);
            if seen.len() >= n {
                return Ok(seen);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let all: Vec<String> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect();
                bail!(
                    "waited {timeout:?} for {n} request(s) to {path_prefix}, saw {}; all requests: {all:?}",
                    seen.len()
                );
            }
        }
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let inner = inner.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(inner.clone(), req));
                        if let Err(err) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(%err, "Datadog double connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    // Typically EMFILE under load: back off instead of spinning.
                    tracing::warn!(%err, "Datadog double accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type HttpResponse = Response<Full<Bytes>>;

/// Set on a response that must not be sent: the connection is closed instead.
#[derive(Debug, Clone, Copy)]
struct Disconnect;

impl std::fmt::Display for Disconnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a Disconnect fault")
    }
}

impl std::error::Error for Disconnect {}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<HttpResponse, Disconnect> {
    let (parts, body) = req.into_parts();
    let raw_body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => {
            tracing::debug!(%err, "Datadog double could not read a request body");
            return Ok(api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                APPLICATION_JSON,
                &format!("Payload too large or unreadable: {err}"),
            ));
        }
    };
    let query = parse_query_string(parts.uri.query());
    let content_encoding = header_str(&parts.headers, CONTENT_ENCODING.as_str()).map(str::to_owned);
    let (body, decode_error) = match decode_body(content_encoding.as_deref(), &raw_body) {
        Ok(decoded) => (Bytes::from(decoded), None),
        Err(err) => (Bytes::new(), Some(err)),
    };
    let json = serde_json::from_slice::<Value>(&body).ok();
    let multipart = match header_str(&parts.headers, CONTENT_TYPE.as_str()) {
        Some(ct) if ct.to_ascii_lowercase().starts_with("multipart/") => {
            parse_multipart(ct, body.clone()).await
        }
        _ => Ok(Vec::new()),
    };
    let (multipart, multipart_error) = match multipart {
        Ok(parts) => (parts, None),
        Err(err) => (Vec::new(), Some(err)),
    };

    let mut recorded = RecordedRequest {
        seq: 0,
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        raw_query: parts.uri.query().map(str::to_owned),
        query,
        headers: parts.headers.clone(),
        content_encoding,
        raw_body_len: raw_body.len(),
        body,
        decode_error,
        json,
        multipart,
        status: None,
        received_at: SystemTime::now(),
    };
    {
        let mut state = inner.state();
        recorded.seq = state.next_seq;
        state.next_seq += 1;
        state.requests.push(recorded.clone());
    }
    inner.recorded.notify_waiters();

    let response = respond(&inner, &recorded, multipart_error).await;
    if response.extensions().get::<Disconnect>().is_some() {
        // hyper closes the connection when the service fails; the record keeps no status.
        return Err(Disconnect);
    }

    {
        // `clear_requests` may have run meanwhile, so look the record up rather than index it.
        let mut state = inner.state();
        if let Some(r) = state
            .requests
            .iter_mut()
            .rev()
            .find(|r| r.seq == recorded.seq)
        {
            r.status = Some(response.status());
        }
    }
    Ok(response)
}

async fn respond(
    inner: &Inner,
    req: &RecordedRequest,
    multipart_error: Option<String>,
) -> HttpResponse {
    let Some(route) = Route::of_path(&req.path) else {
        return api_error(StatusCode::NOT_FOUND, APPLICATION_JSON, "Not found");
    };
    let allowed: &[Method] = match route {
        Route::Query | Route::Validate => &[Method::GET],
        Route::Flare => &[Method::POST, Method::HEAD],
        Route::CheckRun | Route::SeriesV1 | Route::SeriesV2 | Route::Intake => &[Method::POST],
    };
    let content_type = match route {
        Route::CheckRun | Route::SeriesV1 => TEXT_JSON,
        _ => APPLICATION_JSON,
    };
    if !allowed.contains(&req.method) {
        return api_error(
            StatusCode::METHOD_NOT_ALLOWED,
            content_type,
            "Method Not Allowed",
        );
    }

    // Auth first, like Datadog: a bad key never reaches faults or the rate limiter.
    let api_ok = credential(req, "dd-api-key", "api_key") == Some(inner.api_key.as_str());
    let app_ok =
        credential(req, "dd-application-key", "application_key") == Some(inner.app_key.as_str());
    let authorized = match route {
        Route::Query => api_ok && app_ok,
        _ => api_ok,
    };
    if !authorized {
        return api_error(StatusCode::FORBIDDEN, content_type, "Forbidden");
    }

    let queries = req.metric_queries();
    let fault = inner
        .state()
        .faults
        .get_mut(&route)
        .and_then(|plan| plan.take(route, &queries));
    let fault = match fault {
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            None
        }
        other => other,
    };

    match (route, fault) {
        (_, Some(Fault::Disconnect)) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            response.extensions_mut().insert(Disconnect);
            response
        }
        (_, Some(Fault::Status(status))) => {
            let mut response = api_error(status, content_type, status_text(status));
            if status == StatusCode::TOO_MANY_REQUESTS {
                let headers = inner.state().rate.headers(Instant::now(), Some(0));
                add_headers(&mut response, &headers);
            }
            response
        }
        (Route::Query, fault) => answer_query(inner, req, &queries, fault),
        (_, Some(Fault::MalformedJson)) => {
            let status = success_status(route);
            raw_response(status, content_type, Bytes::from_static(b"{\"status\":\"o"))
        }
        (Route::Validate, _) => {
            json_response(StatusCode::OK, content_type, &json!({"valid": true}))
        }
        (Route::CheckRun, _) => answer_check_run(req, content_type),
        (Route::SeriesV1, _) => answer_series_v1(req, content_type),
        (Route::SeriesV2, _) => answer_decoded_only(req, content_type, json!({"errors": []})),
        (Route::Intake, _) => answer_intake(req, content_type),
        (Route::Flare, _) => answer_flare(inner, req, multipart_error),
    }
}

fn success_status(route: Route) -> StatusCode {
    match route {
        Route::Query | Route::Validate | Route::Flare => StatusCode::OK,
        Route::CheckRun | Route::SeriesV1 | Route::SeriesV2 | Route::Intake => StatusCode::ACCEPTED,
    }
}

fn status_text(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// The key from its header, else from its (deprecated) query parameter, as the spec's security
/// schemes allow.
fn credential<'a>(req: &'a RecordedRequest, header: &str, param: &str) -> Option<&'a str> {
    req.header(header).or_else(|| req.query_param(param))
}

#[derive(Debug)]
struct QueryWindow {
    from_s: i64,
    to_s: i64,
    text: String,
}

fn query_window(req: &RecordedRequest) -> Result<QueryWindow, String> {
    let int_param = |name: &str| -> Result<i64, String> {
        let raw = req
            .query_param(name)
            .ok_or_else(|| format!("Missing required parameter '{name}'"))?;
        raw.trim().parse::<i64>().map_err(|_| {
            format!("Parameter '{name}' must be an integer number of seconds, got {raw:?}")
        })
    };
    let from_s = int_param("from")?;
    let to_s = int_param("to")?;
    let text = req
        .query_param("query")
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| "Missing required parameter 'query'".to_owned())?
        .to_owned();
    if from_s > to_s {
        return Err(format!("'from' ({from_s}) must not be after 'to' ({to_s})"));
    }
    Ok(QueryWindow { from_s, to_s, text })
}

fn answer_query(
    inner: &Inner,
    req: &RecordedRequest,
    queries: &[String],
    fault: Option<Fault>,
) -> HttpResponse {
    let window = match query_window(req) {
        Ok(w) => w,
        Err(msg) => return api_error(StatusCode::BAD_REQUEST, APPLICATION_JSON, &msg),
    };
    if queries.is_empty() {
        return api_error(StatusCode::BAD_REQUEST, APPLICATION_JSON, "Empty query");
    }

    let now = Instant::now();
    let mut state = inner.state();
    if !state.rate.try_take(now) {
        let headers = state.rate.headers(now, None);
        drop(state);
        let mut response = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            APPLICATION_JSON,
            "Too Many Requests",
        );
        add_headers(&mut response, &headers);
        return response;
    }
    let rate_headers = state.rate.headers(now, None);

    let from_ms = window.from_s.saturating_mul(1000);
    let to_ms = window.to_s.saturating_mul(1000);
    let mut response = match fault {
        Some(Fault::MalformedJson) => raw_response(
            StatusCode::OK,
            APPLICATION_JSON,
            Bytes::from_static(
                b"{\"status\":\"ok\",\"res_type\":\"time_series\",\"series\":[{\"metric\":",
            ),
        ),
        Some(Fault::QueryError(message)) => json_response(
            StatusCode::OK,
            APPLICATION_JSON,
            &json!({
                "status": "error",
                "res_type": "time_series",
                "error": message,
                "series": [],
                "from_date": from_ms,
                "to_date": to_ms,
                "query": window.text,
                "group_by": [],
                "message": "",
            }),
        ),
        other => {
            let dropped = match &other {
                Some(Fault::DropSeries(q)) => Some(q.as_str()),
                _ => None,
            };
            let now_ms = unix_now_ms();
            let mut series = Vec::new();
            for (index, query) in queries.iter().enumerate() {
                if dropped == Some(query.as_str()) {
                    continue;
                }
                for spec in state
                    .series
                    .get(query)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    if let Some(s) = render_series(query, index, spec, from_ms, to_ms, now_ms) {
                        series.push(s);
                    }
                }
            }
            json_response(
                StatusCode::OK,
                APPLICATION_JSON,
                &json!({
                    "status": "ok",
                    "res_type": "time_series",
                    "series": series,
                    "from_date": from_ms,
                    "to_date": to_ms,
                    "query": window.text,
                    "group_by": [],
                    "message": "",
                }),
            )
        }
    };
    drop(state);
    add_headers(&mut response, &rate_headers);
    response
}

/// One `MetricsQueryMetadata` object, or `None` when no point falls in the window (Datadog then
/// returns no series for the query).
fn render_series(
    query: &str,
    index: usize,
    spec: &SeriesSpec,
    from_ms: i64,
    to_ms: i64,
    now_ms: i64,
) -> Option<Value> {
    let points = resolve_points(&spec.points, to_ms, now_ms);
    let in_window: Vec<(i64, Option<f64>)> = points
        .into_iter()
        .filter(|(t, _)| (from_ms..=to_ms).contains(t))
        .collect();
    let (first, last) = (in_window.first()?.0, in_window.last()?.0);
    let shape = QueryShape::parse(query);
    let interval_ms = match (shape.rollup_s, in_window.as_slice()) {
        (Some(rollup), _) => rollup.saturating_mul(1000),
        (None, [a, b, ..]) => b.0 - a.0,
        (None, _) => 1000,
    };
    let unit = match &spec.unit {
        Some([primary, per]) => json!([unit_json(primary.as_ref()), unit_json(per.as_ref())]),
        None => json!([null, null]),
    };
    let metric = spec.metric.clone().unwrap_or(shape.metric);
    // Timestamps go out as floats, as Datadog sends them (`1681683300000.0`).
    let pointlist: Vec<Value> = in_window
        .iter()
        .map(|(t, v)| json!([*t as f64, v]))
        .collect();
    Some(json!({
        "metric": metric,
        "display_name": metric,
        "pointlist": pointlist,
        "scope": spec.scope.clone().unwrap_or(shape.scope),
        "expression": shape.expression,
        "query_index": index,
        "start": first,
        "end": last,
        "interval": interval_ms,
        "length": in_window.len(),
        "aggr": shape.aggr,
        "unit": unit,
        "tag_set": spec.tag_set,
    }))
}

fn unit_json(unit: Option<&MetricUnit>) -> Value {
    match unit {
        None => Value::Null,
        Some(u) => json!({
            "family": u.family,
            "name": u.name,
            "plural": u.plural,
            "scale_factor": u.scale_factor,
            "short_name": u.short_name,
        }),
    }
}

/// Absolute timestamps for the points. Relative points end at the query's `to` when that is in
/// the past, else at now, so they always fall inside a window ending now.
fn resolve_points(points: &Points, to_ms: i64, now_ms: i64) -> Vec<(i64, Option<f64>)> {
    match points {
        Points::Absolute(p) => p.clone(),
        Points::EndingNow { values, step_s } => {
            let step_ms = i64::from((*step_s).max(1)) * 1000;
            let anchor = now_ms.min(to_ms);
            let last = anchor - anchor.rem_euclid(step_ms);
            let n = i64::try_from(values.len()).unwrap_or(i64::MAX);
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let i = i64::try_from(i).unwrap_or(i64::MAX);
                    (last - (n - 1 - i) * step_ms, *v)
                })
                .collect()
        }
    }
}

/// What a Datadog query string says about the series it yields.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryShape {
    pub aggr: Option<String>,
    pub metric: String,
    pub scope: String,
    pub rollup_s: Option<i64>,
    pub expression: String,
}

impl QueryShape {
    /// Parses the `<aggr>:<metric>{<scope>}<functions>` form the DCA builds
    /// (e.g. `avg:nginx.net.request_per_s{app:web,env:prod}.rollup(30)`).
    pub fn parse(query: &str) -> QueryShape {
        let query = query.trim();
        let (aggr, rest) = match query.split_once(':') {
            Some((prefix, rest))
                if matches!(prefix, "avg" | "sum" | "min" | "max")
                    && !prefix.contains(['{', '(']) =>
            {
                (Some(prefix.to_owned()), rest)
            }
            _ => (None, query),
        };
        let (metric, scope) = match rest.find('{') {
            Some(open) => {
                let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
                let scope = rest[open + 1..close].trim();
                (
                    rest[..open].to_owned(),
                    if scope.is_empty() {
                        "*".to_owned()
                    } else {
                        scope.to_owned()
                    },
                )
            }
            None => {
                let end = rest
                    .find(".rollup(")
                    .or_else(|| rest.find('('))
                    .unwrap_or(rest.len());
                (rest[..end].to_owned(), "*".to_owned())
            }
        };
        let rollup_s = rest.find(".rollup(").and_then(|start| {
            let args = &rest[start + ".rollup(".len()..];
            let args = &args[..args.find(')')?];
            // `.rollup(30)` or `.rollup(avg, 30)`: the interval is the last argument.
            args.split(',')
                .rev()
                .find_map(|a| a.trim().parse::<i64>().ok())
        });
        QueryShape {
            aggr,
            metric: metric.trim().to_owned(),
            scope,
            rollup_s,
            expression: rest.to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ServiceCheckIn {
    check: String,
    host_name: String,
    status: i64,
    tags: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    message: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    timestamp: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct MetricsPayloadIn {
    series: Vec<SeriesIn>,
}

#[derive(Debug, Deserialize)]
struct SeriesIn {
    metric: String,
    points: Vec<Vec<Option<f64>>>,
    #[serde(default)]
    #[allow(dead_code)]
    host: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    interval: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    tags: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    #[allow(dead_code)]
    kind: Option<String>,
}

fn decoded_body<'a>(
    req: &'a RecordedRequest,
    content_type: &str,
) -> Result<&'a Bytes, Box<HttpResponse>> {
    match &req.decode_error {
        Some(err) => Err(Box::new(api_error(
            StatusCode::BAD_REQUEST,
            content_type,
            &format!("Could not decode the payload: {err}"),
        ))),
        None => Ok(&req.body),
    }
}

/// `ServiceChecks`: an array of checks with `check`, `host_name`, `status` (0..=3) and `tags`.
fn answer_check_run(req: &RecordedRequest, content_type: &str) -> HttpResponse {
    let body = match decoded_body(req, content_type) {
        Ok(b) => b,
        Err(response) => return *response,
    };
    let checks: Vec<ServiceCheckIn> = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(err) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                content_type,
                &format!("Invalid service checks payload: {err}"),
            );
        }
    };
    if let Some(bad) = checks.iter().find(|c| !(0..=3).contains(&c.status)) {
        return api_error(
            StatusCode::BAD_REQUEST,
            content_type,
            &format!(
                "Invalid status {} for check {:?} on {:?}: must be 0, 1, 2 or 3",
                bad.status, bad.check, bad.host_name
            ),
        );
    }
    if checks.iter().any(|c| c.tags.iter().any(String::is_empty)) {
        return api_error(
            StatusCode::BAD_REQUEST,
            content_type,
            "Empty tag in service check",
        );
    }
    json_response(StatusCode::ACCEPTED, content_type, &json!({"status": "ok"}))
}

/// `MetricsPayload`: `series[]` with `metric` and two-element `points`.
fn answer_series_v1(req: &RecordedRequest, content_type: &str) -> HttpResponse {
    let body = match decoded_body(req, content_type) {
        Ok(b) => b,
        Err(response) => return *response,
    };
    let payload: MetricsPayloadIn = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(err) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                content_type,
                &format!("Invalid metrics payload: {err}"),
            );
        }
    };
    for series in &payload.series {
        if series.points.iter().any(|p| p.len() != 2) {
            return api_error(
                StatusCode::BAD_REQUEST,
                content_type,
                &format!(
                    "Series {:?}: every point must be [timestamp, value]",
                    series.metric
                ),
            );
        }
    }
    json_response(StatusCode::ACCEPTED, content_type, &json!({"status": "ok"}))
}

fn answer_decoded_only(req: &RecordedRequest, content_type: &str, ok: Value) -> HttpResponse {
    match decoded_body(req, content_type) {
        Ok(_) => json_response(StatusCode::ACCEPTED, content_type, &ok),
        Err(response) => *response,
    }
}

/// The v1 intake the agent forwarder posts events to:
/// `{"apiKey":"","events":{"<source>":[...]},"internalHostname":"..."}`.
fn answer_intake(req: &RecordedRequest, content_type: &str) -> HttpResponse {
    if let Err(response) = decoded_body(req, content_type) {
        return *response;
    }
    let Some(payload) = req.json.as_ref().and_then(Value::as_object) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            content_type,
            "Payload is not a JSON object",
        );
    };
    if let Some(events) = payload.get("events") {
        let well_formed = events
            .as_object()
            .is_some_and(|by_source| by_source.values().all(Value::is_array));
        if !well_formed {
            return api_error(
                StatusCode::BAD_REQUEST,
                content_type,
                "'events' must map source type names to arrays of events",
            );
        }
    }
    json_response(StatusCode::ACCEPTED, content_type, &json!({"status": "ok"}))
}

/// The flare backend: a HEAD (the agent resolves redirects with it first) and the multipart POST.
/// Answers `{"case_id": N}` like the backend the agent's `analyzeResponse` expects.
fn answer_flare(
    inner: &Inner,
    req: &RecordedRequest,
    multipart_error: Option<String>,
) -> HttpResponse {
    if req.method == Method::HEAD {
        return raw_response(StatusCode::OK, APPLICATION_JSON, Bytes::new());
    }
    if let Some(err) = multipart_error {
        return json_response(
            StatusCode::BAD_REQUEST,
            APPLICATION_JSON,
            &json!({"error": format!("invalid multipart body: {err}")}),
        );
    }
    if req
        .multipart_field("flare_file")
        .and_then(|p| p.file_name.as_ref())
        .is_none()
    {
        return json_response(
            StatusCode::BAD_REQUEST,
            APPLICATION_JSON,
            &json!({"error": "missing flare_file"}),
        );
    }
    let from_path = req
        .path
        .strip_prefix("/support/flare/")
        .and_then(|c| c.parse::<u64>().ok());
    let from_field = req
        .multipart_field("case_id")
        .and_then(|p| p.text.as_deref())
        .and_then(|c| c.trim().parse::<u64>().ok());
    let case_id = match from_path.or(from_field) {
        Some(id) => id,
        None => {
            let mut state = inner.state();
            let id = state.next_case_id;
            state.next_case_id += 1;
            id
        }
    };
    json_response(
        StatusCode::OK,
        APPLICATION_JSON,
        &json!({"case_id": case_id}),
    )
}

fn add_headers(response: &mut HttpResponse, headers: &[(&'static str, u64)]) {
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(*name, HeaderValue::from(*value));
    }
}

fn raw_response(status: StatusCode, content_type: &str, body: Bytes) -> HttpResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(value) = HeaderValue::from_str(content_type) {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn json_response(status: StatusCode, content_type: &str, body: &Value) -> HttpResponse {
    raw_response(status, content_type, Bytes::from(body.to_string()))
}

/// `APIErrorResponse`: `{"errors": ["..."]}`.
fn api_error(status: StatusCode, content_type: &str, message: &str) -> HttpResponse {
    json_response(status, content_type, &json!({"errors": [message]}))
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Splits `application/x-www-form-urlencoded` pairs (`+` is a space), as Go's `url.Values`
/// encodes them.
pub fn parse_query_string(query: Option<&str>) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Splits the comma-joined queries of one `/api/v1/query` call. Commas inside `{}`, `()` or `[]`
/// belong to a query (`avg:m{a:b,c:d}.rollup(avg, 30)`), so only top-level ones separate queries.
pub fn split_top_level_queries(joined: &str) -> Vec<String> {
    let mut queries = Vec::new();
    let mut depth = 0usize;
    let mut current = String::new();
    for c in joined.chars() {
        match c {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                queries.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    queries.push(current);
    queries
        .into_iter()
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty())
        .collect()
}

/// Undoes `Content-Encoding`. `deflate` is zlib-wrapped on the wire (what Go's agent sends), but
/// raw deflate streams are accepted too since some clients send those.
pub fn decode_body(encoding: Option<&str>, raw: &[u8]) -> Result<Vec<u8>, String> {
    let encoding = encoding.map(|e| e.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw.to_vec()),
        Some("gzip") | Some("x-gzip") => read_capped(flate2::read::MultiGzDecoder::new(raw)),
        Some("deflate") => read_capped(flate2::read::ZlibDecoder::new(raw))
            .or_else(|_| read_capped(flate2::read::DeflateDecoder::new(raw))),
        Some("zstd") => decode_zstd(raw),
        Some(other) => Err(format!("unsupported Content-Encoding {other:?}")),
    }
}

fn read_capped(reader: impl Read) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    if out.len() > MAX_BODY_BYTES {
        return Err(format!("decoded payload exceeds {MAX_BODY_BYTES} bytes"));
    }
    Ok(out)
}

/// A zstd body may hold several frames back to back; each is decoded in turn.
fn decode_zstd(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut input = raw;
    let mut out = Vec::new();
    while !input.is_empty() {
        let before = input.len();
        let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input)
            .map_err(|e| format!("zstd: {e}"))?;
        let frame = read_capped(decoder).map_err(|e| format!("zstd: {e}"))?;
        out.extend_from_slice(&frame);
        if out.len() > MAX_BODY_BYTES {
            return Err(format!("decoded payload exceeds {MAX_BODY_BYTES} bytes"));
        }
        if input.len() == before {
            return Err("zstd: decoder made no progress".to_owned());
        }
    }
    Ok(out)
}

async fn parse_multipart(content_type: &str, body: Bytes) -> Result<Vec<MultipartPart>, String> {
    let boundary = multer::parse_boundary(content_type).map_err(|e| e.to_string())?;
    let stream = futures::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(|e| e.to_string())? {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(ToString::to_string);
        let data = field.bytes().await.map_err(|e| e.to_string())?;
        let text = if file_name.is_none() {
            std::str::from_utf8(&data).ok().map(str::to_owned)
        } else {
            None
        };
        parts.push(MultipartPart {
            name,
            file_name,
            content_type,
            size: data.len(),
            text,
        });
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn splits_only_top_level_commas() {
        let cases: &[(&str, &[&str])] = &[
            ("avg:a{*}", &["avg:a{*}"]),
            (
                "avg:m{a:b,c:d}.rollup(30),sum:n{x:y}",
                &["avg:m{a:b,c:d}.rollup(30)", "sum:n{x:y}"],
            ),
            (
                "avg:m{a:b}.rollup(avg, 30), max:k{*}.fill(null, 10)",
                &["avg:m{a:b}.rollup(avg, 30)", "max:k{*}.fill(null, 10)"],
            ),
            ("a,,b,", &["a", "b"]),
            ("", &[]),
            ("avg:m{a:b,c:[1,2]}", &["avg:m{a:b,c:[1,2]}"]),
            // Unbalanced closers must not make later commas look nested.
            ("a}),b", &["a})", "b"]),
        ];
        for (input, want) in cases {
            assert_eq!(split_top_level_queries(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn parses_form_encoded_query_strings() {
        let got = parse_query_string(Some(
            "from=1&to=2&query=avg%3Am%7Ba%3Ab%2Cc%3Ad%7D.rollup%2830%29%2Csum%3An%7B%2A%7D&x=a+b%2B",
        ));
        assert_eq!(got[0], ("from".into(), "1".into()));
        assert_eq!(got[2].1, "avg:m{a:b,c:d}.rollup(30),sum:n{*}");
        assert_eq!(got[3], ("x".into(), "a b+".into()));
        assert!(parse_query_string(None).is_empty());
    }

    #[test]
    fn query_shape_of_dca_queries() {
        let s = QueryShape::parse("avg:nginx.net.request_per_s{app:web,env:prod}.rollup(30)");
        assert_eq!(s.aggr.as_deref(), Some("avg"));
        assert_eq!(s.metric, "nginx.net.request_per_s");
        assert_eq!(s.scope, "app:web,env:prod");
        assert_eq!(s.rollup_s, Some(30));
        assert_eq!(
            s.expression,
            "nginx.net.request_per_s{app:web,env:prod}.rollup(30)"
        );

        let s = QueryShape::parse("system.cpu.idle");
        assert_eq!(
            (s.aggr, s.metric.as_str(), s.scope.as_str(), s.rollup_s),
            (None, "system.cpu.idle", "*", None)
        );

        let s = QueryShape::parse("max:a.b{}.rollup(max, 60)");
        assert_eq!((s.scope.as_str(), s.rollup_s), ("*", Some(60)));
    }

    #[test]
    fn relative_points_end_at_an_aligned_now_or_at_to() {
        let p = points_ending_now(&[1.0, 2.0, 3.0], 30);
        let now = 1_700_000_012_345;
        let got = resolve_points(&p, now + 60_000, now);
        let last = 1_700_000_010_000;
        assert_eq!(
            got,
            vec![
                (last - 60_000, Some(1.0)),
                (last - 30_000, Some(2.0)),
                (last, Some(3.0))
            ]
        );
        // A window ending in the past pulls the points back into it.
        let got = resolve_points(&p, now - 100_000, now);
        assert!(got.iter().all(|(t, _)| *t <= now - 100_000));
    }

    #[test]
    fn rate_budget_counts_down_and_resets_with_the_period() {
        let mut b = RateBudget::new(2, 10);
        let t0 = b.started;
        assert!(b.try_take(t0));
        assert_eq!(b.remaining(t0), 1);
        assert!(b.try_take(t0 + Duration::from_secs(1)));
        assert!(!b.try_take(t0 + Duration::from_secs(2)));
        assert_eq!(b.reset_in(t0 + Duration::from_millis(2500)), 8);
        assert!(b.try_take(t0 + Duration::from_secs(10)));
        assert_eq!(b.remaining(t0 + Duration::from_secs(11)), 1);
    }

    #[test]
    fn decodes_every_supported_encoding() {
        let payload = br#"{"series":[]}"#.repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&payload).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zl.write_all(&payload).expect("zlib");
        let zl = zl.finish().expect("zlib");
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&payload).expect("deflate");
        let raw = raw.finish().expect("deflate");
        let zs = ruzstd::encoding::compress_to_vec(
            &payload[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let mut two_frames = zs.clone();
        two_frames.extend_from_slice(&zs);

        assert_eq!(decode_body(None, &payload).expect("none"), payload);
        assert_eq!(decode_body(Some("gzip"), &gz).expect("gzip"), payload);
        assert_eq!(decode_body(Some("deflate"), &zl).expect("zlib"), payload);
        assert_eq!(
            decode_body(Some("deflate"), &raw).expect("raw deflate"),
            payload
        );
        assert_eq!(decode_body(Some("zstd"), &zs).expect("zstd"), payload);
        assert_eq!(
            decode_body(Some("ZSTD"), &two_frames).expect("zstd x2"),
            [payload.clone(), payload.clone()].concat()
        );
        assert!(decode_body(Some("br"), &payload).is_err());
        assert!(decode_body(Some("zstd"), b"not zstd").is_err());
        assert!(decode_body(Some("gzip"), b"not gzip").is_err());
    }

    #[test]
    fn queued_drop_series_waits_for_its_query() {
        let mut plan = FaultPlan::default();
        plan.queue.push_back(Fault::DropSeries("b".into()));
        plan.queue.push_back(Fault::MalformedJson);
        let a = vec!["a".to_owned()];
        assert_eq!(plan.take(Route::Query, &a), Some(Fault::MalformedJson));
        assert_eq!(plan.take(Route::Query, &a), None);
        let ab = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            plan.take(Route::Query, &ab),
            Some(Fault::DropSeries("b".into()))
        );
        plan.sticky = Some(Fault::Status(StatusCode::BAD_GATEWAY));
        assert_eq!(
            plan.take(Route::Validate, &[]),
            Some(Fault::Status(StatusCode::BAD_GATEWAY))
        );
        assert_eq!(
            plan.take(Route::Validate, &[]),
            Some(Fault::Status(StatusCode::BAD_GATEWAY))
        );
    }
}
