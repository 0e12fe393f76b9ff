//! Prometheus `/metrics` on `metrics_port` (5000), over plain HTTP as the Go DCA serves it,
//! for the Datadog `datadog_cluster_agent` check and any Prometheus scraper: the registry
//! every subsystem registered its series on at start-up, encoded on each scrape. And the
//! expvar-style JSON document at `/debug/vars` on `expvar_port` (also 5000 by default: one
//! listener then answers both, as one Go process could not bind the port twice either). And
//! the Kubernetes probes `/live`, `/ready` and `/startup` on `health_port` ([`crate::health`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::apiserver::response::{Body, NOSNIFF, body_response};
use crate::apiserver::server::{ServerError, bind};
use crate::health::{Health, Status as HealthStatus};

const SERVER: &str = "telemetry server";
/// A scrape is one small answer; nothing is worth waiting longer for at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// A scraper that sends no request head within this is dropped (it holds a task).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");

/// What one listener answers: any of `/metrics`, `/debug/vars` and the probes.
#[derive(Clone, Default)]
pub(crate) struct Routes {
    pub(crate) metrics: Option<Arc<Registry>>,
    pub(crate) expvar: Option<Arc<Expvar>>,
    /// `/live`, `/ready`, `/startup`.
    pub(crate) health: Option<Arc<Health>>,
}

impl Routes {
    fn paths(&self) -> String {
        let paths: Vec<&str> = [
            (self.metrics.is_some(), "/metrics"),
            (self.expvar.is_some(), "/debug/vars"),
            (self.health.is_some(), "/live, /ready, /startup"),
        ]
        .into_iter()
        .filter_map(|(on, paths)| on.then_some(paths))
        .collect();
        if paths.is_empty() {
            "nothing".to_owned()
        } else {
            paths.join(", ")
        }
    }
}

/// `metrics_port`, `expvar_port` and `health_port` (0 = off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) metrics: u16,
    pub(crate) expvar: u16,
    pub(crate) health: u16,
}

/// The listeners the ports need, in the order of the ports: one per distinct port, serving
/// every route given that port (as one Go process could not bind a port twice either).
pub(crate) fn plan(ports: Ports, all: Routes) -> Vec<(u16, Routes)> {
    let mut listeners: Vec<(u16, Routes)> = Vec::new();
    if let Some(routes) = listener_on(&mut listeners, ports.metrics) {
        routes.metrics = all.metrics;
    }
    if let Some(routes) = listener_on(&mut listeners, ports.expvar) {
        routes.expvar = all.expvar;
    }
    if let Some(routes) = listener_on(&mut listeners, ports.health) {
        routes.health = all.health;
    }
    listeners
}

/// The listener planned on `port` (added if none is yet), none for 0.
fn listener_on(listeners: &mut Vec<(u16, Routes)>, port: u16) -> Option<&mut Routes> {
    if port == 0 {
        return None;
    }
    let at = match listeners.iter().position(|(p, _)| *p == port) {
        Some(at) => at,
        None => {
            listeners.push((port, Routes::default()));
            listeners.len() - 1
        }
    };
    Some(&mut listeners[at].1)
}

/// Serves `routes` on `addr` until `shutdown`.
pub(crate) async fn run(
    addr: SocketAddr,
    routes: Routes,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listener = bind(SERVER, addr).await?;
    tracing::info!(%addr, paths = %routes.paths(), "telemetry server listening");
    serve(listener, routes, shutdown).await;
    tracing::info!(%addr, "telemetry server stopped");
    Ok(())
}

/// Serves `routes` on an already-bound listener until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, routes: Routes, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "telemetry server cannot accept a connection");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let routes = routes.clone();
        let service = hyper::service::service_fn(move |request: http::Request<_>| {
            let response = answer(&routes, request.method(), request.uri().path());
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "telemetry connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("telemetry connections still open after the drain period");
    }
}

enum Route<'a> {
    Metrics(&'a Registry),
    Expvar(&'a Expvar),
    Probe(&'a Health, fn(&Health) -> HealthStatus),
}

/// `/metrics` in the OpenMetrics text format, `/debug/vars` as JSON, the probes as the Go
/// DCA's health probe server answers them (the status JSON, 500 when a component is
/// unhealthy); anything else as Go's `net/http` mux answers.
fn answer(routes: &Routes, method: &Method, path: &str) -> Response<Body> {
    let head = method == Method::HEAD;
    let health = routes.health.as_deref();
    let route = match path {
        "/metrics" => routes.metrics.as_deref().map(Route::Metrics),
        "/debug/vars" => routes.expvar.as_deref().map(Route::Expvar),
        "/live" => health.map(|h| Route::Probe(h, Health::live)),
        "/ready" => health.map(|h| Route::Probe(h, Health::ready)),
        "/startup" => health.map(|h| Route::Probe(h, Health::startup)),
        _ => None,
    };
    let Some(route) = route else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n", head);
    };
    if !(method == Method::GET || head) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n", head);
    }
    match route {
        Route::Metrics(registry) => metrics(registry, head),
        Route::Expvar(expvar) => json(StatusCode::OK, expvar.document(), head),
        Route::Probe(health, probe) => {
            let status = probe(health);
            let code = if status.is_healthy() {
                StatusCode::OK
            } else {
                tracing::info!(unhealthy = ?status.unhealthy, path, "health probe failed");
                StatusCode::INTERNAL_SERVER_ERROR
            };
            // A struct of strings always serialises; the fallback keeps this total.
            let body = serde_json::to_vec(&status).unwrap_or_else(|_| b"{}".to_vec());
            json(code, Bytes::from(body), head)
        }
    }
}

fn json(code: StatusCode, body: Bytes, head: bool) -> Response<Body> {
    let mut response = body_response(code, body, head);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

fn metrics(registry: &Registry, head: bool) -> Response<Body> {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode the metrics: {err}\n"),
            head,
        );
    }
    let mut response = body_response(StatusCode::OK, Bytes::from(text), head);
    response.headers_mut().insert(CONTENT_TYPE, OPENMETRICS);
    response
}

fn plain(code: StatusCode, body: &str, head: bool) -> Response<Body> {
    let mut response = body_response(code, Bytes::from(body.to_owned()), head);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(NOSNIFF, HeaderValue::from_static("nosniff"));
    response
}

mod expvar;
pub(crate) use expvar::Expvar;

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        counter.inc_by(3);
        registry.register("scrapes_seen", "A counter", counter);
        registry
    }

    fn both() -> Routes {
        Routes {
            metrics: Some(Arc::new(registry())),
            expvar: Some(Arc::new(Expvar::new(vec!["datadog-cluster-agent".into()]))),
            health: None,
        }
    }

    fn call(method: Method, path: &str) -> (StatusCode, String, String) {
        call_on(&both(), method, path)
    }

    fn call_on(routes: &Routes, method: Method, path: &str) -> (StatusCode, String, String) {
        let response = answer(routes, &method, path);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let status = response.status();
        let body = futures::executor::block_on(response.into_body().collect())
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        (status, content_type, body)
    }

    #[test]
    fn metrics_are_openmetrics_text_and_other_requests_are_refused() {
        let (status, content_type, body) = call(Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.lines().any(|l| l == "scrapes_seen_total 3"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // (method, path) → status, body
        let cases: &[(Method, &str, StatusCode, &str)] = &[
            (
                Method::GET,
                "/",
                StatusCode::NOT_FOUND,
                "404 page not found\n",
            ),
            (
                Method::GET,
                "/metrics/",
                StatusCode::NOT_FOUND,
                "404 page not found\n",
            ),
            (
                Method::POST,
                "/metrics",
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed\n",
            ),
            (Method::HEAD, "/metrics", StatusCode::OK, ""),
        ];
        for (method, path, want_status, want_body) in cases {
            let (status, _, body) = call(method.clone(), path);
            assert_eq!(
                (status, body.as_str()),
                (*want_status, *want_body),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn the_server_answers_scrapes_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, both(), shutdown.clone()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: dca\r\nConnection: close\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("\r\n\r\n# HELP scrapes_seen A counter."),
            "{answer}"
        );
        assert!(answer.contains("scrapes_seen_total 3"), "{answer}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("stops")
            .expect("no panic");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed after shutdown"
        );
    }

    #[test]
    fn debug_vars_is_a_json_document_with_the_process_figures() {
        let (status, content_type, body) = call(Method::GET, "/debug/vars");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json; charset=utf-8");
        let doc: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(doc["cmdline"], serde_json::json!(["datadog-cluster-agent"]));
        assert_eq!(doc["process"]["pid"], u64::from(std::process::id()));
        assert!(
            doc["process"]["rss_bytes"].as_u64().is_some_and(|b| b > 0),
            "{doc}"
        );
        assert!(doc["process"]["uptime_seconds"].is_u64(), "{doc}");
        assert_eq!(doc["version"]["version"], crate::version::VERSION);
        let (status, _, _) = call(Method::POST, "/debug/vars");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn a_listener_answers_only_its_own_paths() {
        let expvar_only = Routes {
            expvar: both().expvar,
            ..Routes::default()
        };
        assert_eq!(
            call_on(&expvar_only, Method::GET, "/metrics").0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call_on(&expvar_only, Method::GET, "/debug/vars").0,
            StatusCode::OK
        );
    }

    #[test]
    fn equal_ports_share_one_listener_and_zero_turns_a_route_off() {
        let plan_of = |metrics: u16, expvar: u16, health: u16| -> Vec<(u16, bool, bool, bool)> {
            let all = Routes {
                metrics: Some(Arc::new(registry())),
                expvar: Some(Arc::new(Expvar::new(Vec::new()))),
                health: Some(Health::new()),
            };
            plan(
                Ports {
                    metrics,
                    expvar,
                    health,
                },
                all,
            )
            .into_iter()
            .map(|(port, r)| {
                let on = (r.metrics.is_some(), r.expvar.is_some(), r.health.is_some());
                (port, on.0, on.1, on.2)
            })
            .collect()
        };
        // (metrics_port, expvar_port, health_port) → listeners (port, /metrics,
        // /debug/vars, probes)
        type Listener = (u16, bool, bool, bool);
        let cases: &[(u16, u16, u16, &[Listener])] = &[
            (5000, 5000, 0, &[(5000, true, true, false)]),
            (
                5000,
                5001,
                0,
                &[(5000, true, false, false), (5001, false, true, false)],
            ),
            (0, 5000, 0, &[(5000, false, true, false)]),
            (5000, 0, 0, &[(5000, true, false, false)]),
            (0, 0, 0, &[]),
            (
                5000,
                5000,
                5556,
                &[(5000, true, true, false), (5556, false, false, true)],
            ),
            (
                5000,
                5001,
                5001,
                &[(5000, true, false, false), (5001, false, true, true)],
            ),
            (0, 0, 5556, &[(5556, false, false, true)]),
        ];
        for (metrics, expvar, health, want) in cases {
            assert_eq!(
                plan_of(*metrics, *expvar, *health),
                *want,
                "{metrics} {expvar} {health}"
            );
        }
    }

    #[test]
    fn the_probes_answer_the_status_json_and_500_when_unhealthy() {
        let health = Health::new();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let read = Arc::clone(&ready);
        health.register(
            "metadata-store",
            crate::health::Gate::Readiness,
            Box::new(move || {
                if read.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("not synced".to_owned())
                }
            }),
        );
        let routes = Routes {
            health: Some(health),
            ..Routes::default()
        };
        // path → (status, body) before and after the store syncs
        let before: &[(&str, StatusCode, &str)] = &[
            ("/live", StatusCode::OK, r#"{"Healthy":[],"Unhealthy":[]}"#),
            (
                "/ready",
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"Healthy":[],"Unhealthy":["metadata-store"],"Reasons":{"metadata-store":"not synced"}}"#,
            ),
            (
                "/startup",
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"Healthy":[],"Unhealthy":["metadata-store"],"Reasons":{"metadata-store":"not synced"}}"#,
            ),
            ("/metrics", StatusCode::NOT_FOUND, "404 page not found\n"),
        ];
        let after: &[(&str, StatusCode, &str)] = &[
            (
                "/ready",
                StatusCode::OK,
                r#"{"Healthy":["metadata-store"],"Unhealthy":[]}"#,
            ),
            (
                "/startup",
                StatusCode::OK,
                r#"{"Healthy":["metadata-store"],"Unhealthy":[]}"#,
            ),
        ];
        for (step, cases) in [before, after].into_iter().enumerate() {
            ready.store(step == 1, std::sync::atomic::Ordering::Relaxed);
            for (path, want_status, want_body) in cases {
                let (status, content_type, body) = call_on(&routes, Method::GET, path);
                assert_eq!(
                    (status, body.as_str()),
                    (*want_status, *want_body),
                    "{path}"
                );
                if status != StatusCode::NOT_FOUND {
                    assert_eq!(content_type, "application/json; charset=utf-8", "{path}");
                }
            }
        }
        assert_eq!(
            call_on(&routes, Method::POST, "/ready").0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
