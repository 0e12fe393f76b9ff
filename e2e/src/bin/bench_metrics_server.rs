//! Load-test target for the external metrics route (see `bench/metrics_route.sh` and
//! BENCHMARKS.md). Not a test: it serves until its time limit, printing its address, and at
//! exit its peak memory and how often the auth fakes were reached.
//!
//! ```text
//! bench_metrics_server MODE [--port N] [--max-secs N]
//! ```
//!
//! Modes:
//! * `ours`: [`ExternalMetricsService`] over [`serve_on`] (what `external_metrics::run`
//!   does), backed by an [`InMemorySource`] holding one metric, with ready-made auth: the
//!   authenticator maps the bearer token to a user through a map built at start-up, the
//!   authorizer answers Allow from a map of (user, attributes) built at start-up. That is
//!   the cached path of delegated auth without the caches' own cost.
//! * `ours-cached-auth`: the same with the production caching layers
//!   (`authenticate_request`, [`CachedTokenReviewer`], [`CachingAuthorizer`]) in front of
//!   in-process reviewers standing in for the API server's TokenReview and
//!   SubjectAccessReview; after the first request, and once per cache TTL, every request
//!   is a cache hit, as an HPA's steady polling is.
//! * `serve-fixed`: [`serve_on`]'s serving loop (`tls::serve_connections`) around a service
//!   answering the captured response: isolates the loop's cost from the service's.
//! * `bare`: hyper 1 and tokio-rustls with the same rustls configuration (same builder,
//!   same certificate, ALPN h2 + http/1.1), answering every request with the status,
//!   headers and body that `ours` answers the benchmarked request with, captured at start-up.
//! * `service`: no server; the service called in a loop, per request cost of each auth
//!   variant.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use datadog_cluster_agent::apiserver::auth::requestheader::bearer_token;
use datadog_cluster_agent::apiserver::auth::{
    AccessReviewer, AuthConfig, CachedTokenReviewer, CachingAuthorizer, ReviewError, TokenOutcome,
    TokenReviewer, Verdict, authenticate_request,
};
use datadog_cluster_agent::apiserver::seams::{
    Answer, Authentication, Authenticator, Authorizer, Decision, RequestAttributes, UserInfo,
};
use datadog_cluster_agent::apiserver::server::serve_on;
use datadog_cluster_agent::external_metrics::memory::InMemorySource;
use datadog_cluster_agent::external_metrics::types::MetricValue;
use datadog_cluster_agent::external_metrics::{ExternalMetricsService, ServiceParts};
use datadog_cluster_agent::tls::{
    ConnectionInfo, PeerIdentity, ServeOptions, ServerCertResolver, ServerTls, serve_connections,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The request the load generators send; the bare server answers it (and anything else)
/// with what ours answers it.
pub const METRIC_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/nginx.net.request_per_s?labelSelector=app%3Dweb";
/// The bearer token the load generators send (the HPA controller's service account).
pub const TOKEN: &str = "bench-hpa-controller-token";

/// kube's delegating authenticator and authorizer defaults (`AuthOptions::default`).
const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_CAPACITY: u64 = 8192;

/// Answers TokenReviews for [`TOKEN`] with the HPA controller's identity.
#[derive(Default)]
struct InProcessTokenReviews {
    calls: Arc<AtomicU64>,
}

impl TokenReviewer for InProcessTokenReviews {
    fn review<'a>(&'a self, token: &'a str) -> Answer<'a, Result<TokenOutcome, ReviewError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = if token == TOKEN {
            TokenOutcome::Authenticated(Arc::new(UserInfo {
                name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
                uid: "0b4f6a52-7f8e-4c55-9d1e-2f4b8c7a9e10".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:kube-system".into(),
                ],
                extra: BTreeMap::new(),
            }))
        } else {
            TokenOutcome::Rejected("invalid bearer token".into())
        };
        Answer::ready(Ok(outcome))
    }
}

/// Allows everything, as the RBAC of a working install does for the HPA controller.
#[derive(Default)]
struct InProcessAccessReviews {
    calls: Arc<AtomicU64>,
}

impl AccessReviewer for InProcessAccessReviews {
    fn review<'a>(
        &'a self,
        _user: &'a UserInfo,
        _attributes: &'a RequestAttributes<'a>,
    ) -> BoxFuture<'a, Result<Verdict, ReviewError>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        futures::future::ready(Ok(Verdict::Allow)).boxed()
    }
}

/// `DelegatingAuth`'s authenticator chain with the ConfigMap already applied (no front
/// proxy: requests carry a bearer token, as load generators cannot present client
/// certificates).
struct BenchAuthenticator {
    tokens: CachedTokenReviewer<InProcessTokenReviews>,
    config: AuthConfig,
}

impl Authenticator for BenchAuthenticator {
    fn authenticate<'a>(
        &'a self,
        peer: &'a PeerIdentity,
        headers: &'a HeaderMap,
    ) -> Answer<'a, Authentication> {
        authenticate_request(peer, headers, &self.config, false, &self.tokens)
    }
}

/// The HPA controller's identity once authenticated.
fn hpa_controller() -> UserInfo {
    UserInfo {
        name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
        uid: "0b4f6a52-7f8e-4c55-9d1e-2f4b8c7a9e10".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:serviceaccounts:kube-system".into(),
            "system:authenticated".into(),
        ],
        extra: BTreeMap::new(),
    }
}

/// Bearer token → user, from a map filled at start-up: a token cache that always hits.
struct ReadyAuthenticator {
    users: HashMap<String, Arc<UserInfo>>,
}

impl Authenticator for ReadyAuthenticator {
    fn authenticate<'a>(
        &'a self,
        _peer: &'a PeerIdentity,
        headers: &'a HeaderMap,
    ) -> Answer<'a, Authentication> {
        let outcome = match bearer_token(headers) {
            None => Authentication::User(Arc::new(UserInfo::anonymous())),
            Some(token) => match self.users.get(token) {
                Some(user) => Authentication::User(Arc::clone(user)),
                None => Authentication::Rejected("invalid bearer token".into()),
            },
        };
        Answer::ready(outcome)
    }
}

/// Allow for the (user, attributes) pairs of a map filled at start-up: a decision cache
/// that always hits. Keyed by a SipHash of both, as a hash map of them would be.
struct ReadyAuthorizer {
    hasher: RandomState,
    allowed: HashMap<u64, Vec<(String, RequestAttributes<'static>)>>,
}

impl ReadyAuthorizer {
    fn new(allowed: impl IntoIterator<Item = (String, RequestAttributes<'static>)>) -> Self {
        let hasher = RandomState::new();
        let mut map: HashMap<u64, Vec<_>> = HashMap::new();
        for (user, attributes) in allowed {
            let key = hasher.hash_one((&user, &attributes));
            map.entry(key).or_default().push((user, attributes));
        }
        ReadyAuthorizer {
            hasher,
            allowed: map,
        }
    }
}

impl Authorizer for ReadyAuthorizer {
    fn authorize<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a RequestAttributes<'a>,
    ) -> Answer<'a, Decision> {
        let key = self.hasher.hash_one((&user.name, attributes));
        let allowed = self.allowed.get(&key).is_some_and(|pairs| {
            pairs
                .iter()
                .any(|(name, allowed)| *name == user.name && allowed == attributes)
        });
        let decision = if allowed {
            Decision::Allow
        } else {
            Decision::Deny("not in the ready map".into())
        };
        Answer::ready(decision)
    }
}

/// How often the caches let a request through to the stand-in reviewers.
struct Counters {
    token_reviews: Arc<AtomicU64>,
    access_reviews: Arc<AtomicU64>,
}

fn source() -> InMemorySource {
    let source = InMemorySource::new();
    let labels: BTreeMap<String, String> = [
        ("app", "web"),
        ("env", "prod"),
        ("kube_cluster_name", "bench"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    // 1.5 becomes "1500m" on the wire: the Quantity encoder is on the measured path.
    source.upsert(MetricValue {
        metric_name: "nginx.net.request_per_s".into(),
        metric_labels: labels,
        timestamp: 1_700_000_000,
        window_seconds: Some(30),
        value: 1.5,
    });
    source
}

/// Ours with the ready-made auth of mode `ours`.
fn service_with_ready_auth() -> ExternalMetricsService {
    let user = hpa_controller();
    let attributes = RequestAttributes::Resource {
        verb: "list".into(),
        group: "external.metrics.k8s.io".into(),
        version: "v1beta1".into(),
        resource: "nginx.net.request_per_s".into(),
        namespace: "default".into(),
    };
    let authorizer = ReadyAuthorizer::new([(user.name.clone(), attributes)]);
    ExternalMetricsService::new(ServiceParts {
        authenticator: Arc::new(ReadyAuthenticator {
            users: HashMap::from([(TOKEN.to_owned(), Arc::new(user))]),
        }),
        authorizer: Arc::new(authorizer),
        source: Arc::new(source()),
        readiness: Vec::new(),
    })
}

/// Ours with the production auth caches of mode `ours-cached-auth`.
fn service_with_cached_auth() -> (ExternalMetricsService, Counters) {
    let token_reviews = InProcessTokenReviews::default();
    let access_reviews = InProcessAccessReviews::default();
    let counters = Counters {
        token_reviews: Arc::clone(&token_reviews.calls),
        access_reviews: Arc::clone(&access_reviews.calls),
    };
    let parts = ServiceParts {
        authenticator: Arc::new(BenchAuthenticator {
            tokens: CachedTokenReviewer::new(token_reviews, CACHE_TTL, CACHE_CAPACITY),
            config: AuthConfig::default(),
        }),
        authorizer: Arc::new(CachingAuthorizer::new(
            access_reviews,
            CACHE_TTL,
            CACHE_TTL,
            CACHE_CAPACITY,
        )),
        source: Arc::new(source()),
        readiness: Vec::new(),
    };
    (ExternalMetricsService::new(parts), counters)
}

/// What ours answers the benchmarked request with.
struct Captured {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn capture(service: &ExternalMetricsService) -> Result<Captured> {
    let request = Request::get(METRIC_PATH)
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(http::header::ACCEPT, "application/json")
        .body(())?;
    let response = service.handle(request).await;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    if parts.status != StatusCode::OK {
        bail!(
            "the metric route answered {}: {}",
            parts.status,
            String::from_utf8_lossy(&body)
        );
    }
    Ok(Captured {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// A plain hyper server: one task per connection, HTTP version by ALPN, the captured
/// answer for every request. No timeouts, no draining, no per-request extensions.
async fn serve_bare(
    listener: TcpListener,
    tls: ServerTls,
    captured: Arc<Captured>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(Arc::clone(tls.config()));
    let service = FixedService {
        captured,
        connection: None,
    };
    loop {
        let (stream, _) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            // Same as ours: request/response traffic is latency-bound.
            let _ = stream.set_nodelay(true);
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                hyper::service::Service::call(&service, request)
            });
            let io = TokioIo::new(tls);
            let _ = if h2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
    }
}

/// The captured answer as a service, for `serve-fixed`: like ours, it takes the client's
/// identity from its connection for every request.
#[derive(Clone)]
struct FixedService {
    captured: Arc<Captured>,
    connection: Option<Arc<ConnectionInfo>>,
}

impl FixedService {
    fn respond(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.captured.body.clone()));
        *response.status_mut() = self.captured.status;
        // Inserted one by one, as ours builds them, rather than one map clone.
        let headers = response.headers_mut();
        for (name, value) in &self.captured.headers {
            headers.insert(name.clone(), value.clone());
        }
        response
    }
}

impl<B> hyper::service::Service<Request<B>> for FixedService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, _request: Request<B>) -> Self::Future {
        if let Some(connection) = &self.connection {
            std::hint::black_box(connection.peer_identity());
        }
        futures::future::ready(Ok(self.respond()))
    }
}

/// The service alone, called in a loop: what a request costs above hyper and TLS. The
/// fastest of many short rounds is reported, since it is the one least disturbed by other
/// processes on a shared machine.
async fn service_only() -> Result<()> {
    const ROUNDS: usize = 21;
    const REQUESTS: u32 = 50_000;
    let peer = Arc::new(PeerIdentity::Anonymous);
    let request = || {
        let mut request = Request::get(METRIC_PATH)
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(())
            .expect("request");
        // What tls::serve adds to every request.
        request.extensions_mut().insert(Arc::clone(&peer));
        request
    };
    let fastest = |mut rounds: Vec<Duration>| {
        rounds.sort_unstable();
        (rounds[0], rounds[rounds.len() / 2])
    };
    // Building the request is part of each loop: measured alone, to subtract it.
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        for _ in 0..REQUESTS {
            std::hint::black_box(request());
        }
        rounds.push(started.elapsed() / REQUESTS);
    }
    let (min, median) = fastest(rounds);
    println!("building a request: fastest round {min:?} per request, median {median:?}");
    let (cached, _counters) = service_with_cached_auth();
    // `BENCH_SERVICE=ours` (or `ours-cached-auth`) runs one variant only, for a profiler.
    let only = std::env::var("BENCH_SERVICE").ok();
    for (name, service) in [
        ("ours", service_with_ready_auth()),
        ("ours-cached-auth", cached),
    ] {
        if only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let started = std::time::Instant::now();
            for _ in 0..REQUESTS {
                let response = service.handle(request()).await;
                assert_eq!(response.status(), StatusCode::OK);
            }
            rounds.push(started.elapsed() / REQUESTS);
        }
        let (min, median) = fastest(rounds);
        println!(
            "{name}: fastest round {min:?} per request, median {median:?} ({ROUNDS} rounds of {REQUESTS}, building the request included)"
        );
    }
    Ok(())
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

const MODES: [&str; 5] = ["ours", "ours-cached-auth", "serve-fixed", "bare", "service"];

struct Args {
    mode: String,
    port: u16,
    max_secs: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().with_context(|| {
        format!(
            "usage: bench_metrics_server {} [--port N] [--max-secs N]",
            MODES.join("|")
        )
    })?;
    if !MODES.contains(&mode.as_str()) {
        bail!("mode must be one of {}, not {mode:?}", MODES.join(", "));
    }
    let mut out = Args {
        mode,
        port: 0,
        // Stops by itself even if the script that started it dies.
        max_secs: 600,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => out.port = value.parse().context("--port")?,
            "--max-secs" => out.max_secs = value.parse().context("--max-secs")?,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    if args.mode == "service" {
        return service_only().await;
    }
    let certs = ServerCertResolver::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let tls = ServerTls::new(certs, None)?;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let (cached, counters) = service_with_cached_auth();
    let service = if args.mode == "ours-cached-auth" {
        cached
    } else {
        service_with_ready_auth()
    };
    let captured = Arc::new(capture(&service).await?);
    eprintln!(
        "{} server on https://{addr}, answering {} bytes ({})",
        args.mode,
        captured.body.len(),
        captured
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
    );
    let server = {
        let shutdown = shutdown.clone();
        let mode = args.mode.clone();
        tokio::spawn(async move {
            match mode.as_str() {
                "bare" => serve_bare(listener, tls, captured, shutdown).await,
                "serve-fixed" => {
                    // The loop `serve_on` runs, with what it hands a connection's service.
                    let options = ServeOptions {
                        drain: Duration::from_secs(1),
                        ..ServeOptions::default()
                    };
                    let make = move |connection| FixedService {
                        captured: Arc::clone(&captured),
                        connection: Some(Arc::new(connection)),
                    };
                    serve_connections(listener, tls, make, shutdown, options).await;
                }
                _ => serve_on(listener, tls, service, shutdown).await,
            }
        })
    };
    // The script waits for this line before loading the server.
    println!("listening {addr}");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {
            eprintln!("time limit reached");
        }
    }
    shutdown.cancel();
    // Ours drains for up to 10 s; the load generators are gone by now.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    eprintln!(
        "{} exit: VmHWM {} KiB, token reviews {}, access reviews {}",
        args.mode,
        vm_hwm_kib().unwrap_or(0),
        counters.token_reviews.load(Ordering::Relaxed),
        counters.access_reviews.load(Ordering::Relaxed),
    );
    Ok(())
}
