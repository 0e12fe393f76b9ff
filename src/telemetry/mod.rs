//! Prometheus `/metrics` on `metrics_port` (5000), over plain HTTP as the Go DCA serves it,
//! for the Datadog `datadog_cluster_agent` check and any Prometheus scraper: the registry
//! every subsystem registered its series on at start-up, encoded on each scrape. And the
//! expvar-style JSON document at `/debug/vars` on `expvar_port` (also 5000 by default: one
//! listener then answers both, as one Go process could not bind the port twice either).

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

const SERVER: &str = "telemetry server";
/// A scrape is one small answer; nothing is worth waiting longer for at shutdown.
const DRAIN: Duration = Duration::from_secs(5);
/// A scraper that sends no request head within this is dropped (it holds a task).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");

/// What one listener answers: `/metrics`, `/debug/vars`, or both.
#[derive(Clone, Default)]
pub(crate) struct Routes {
    pub(crate) metrics: Option<Arc<Registry>>,
    pub(crate) expvar: Option<Arc<Expvar>>,
}

impl Routes {
    fn paths(&self) -> &'static str {
        match (self.metrics.is_some(), self.expvar.is_some()) {
            (true, true) => "/metrics, /debug/vars",
            (true, false) => "/metrics",
            (false, true) => "/debug/vars",
            (false, false) => "nothing",
        }
    }
}

/// The listeners `metrics_port` and `expvar_port` need (0 = off): one when they are equal.
pub(crate) fn plan(
    metrics_port: u16,
    expvar_port: u16,
    registry: Arc<Registry>,
    expvar: Arc<Expvar>,
) -> Vec<(u16, Routes)> {
    let metrics = (metrics_port != 0).then_some(registry);
    let expvar = (expvar_port != 0).then_some(expvar);
    if metrics_port == expvar_port {
        return match metrics_port {
            0 => Vec::new(),
            port => vec![(port, Routes { metrics, expvar })],
        };
    }
    let mut listeners = Vec::new();
    if metrics.is_some() {
        listeners.push((
            metrics_port,
            Routes {
                metrics,
                expvar: None,
            },
        ));
    }
    if expvar.is_some() {
        listeners.push((
            expvar_port,
            Routes {
                metrics: None,
                expvar,
            },
        ));
    }
    listeners
}

/// Serves `routes` on `addr` until `shutdown`.
pub(crate) async fn run(
    addr: SocketAddr,
    routes: Routes,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let listener = bind(SERVER, addr).await?;
    tracing::info!(%addr, paths = routes.paths(), "telemetry server listening");
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

/// `/metrics` in the OpenMetrics text format, `/debug/vars` as JSON; anything else as Go's
/// `net/http` mux answers.
fn answer(routes: &Routes, method: &Method, path: &str) -> Response<Body> {
    let head = method == Method::HEAD;
    let route = match path {
        "/metrics" => routes.metrics.as_deref().map(Ok),
        "/debug/vars" => routes.expvar.as_deref().map(Err),
        _ => None,
    };
    let Some(route) = route else {
        return plain(StatusCode::NOT_FOUND, "404 page not found\n", head);
    };
    if !(method == Method::GET || head) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n", head);
    }
    match route {
        Ok(registry) => metrics(registry, head),
        Err(expvar) => {
            let mut response = body_response(StatusCode::OK, expvar.document(), head);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
    }
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
            metrics: None,
            expvar: both().expvar,
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
        let plan_of = |metrics: u16, expvar: u16| -> Vec<(u16, bool, bool)> {
            plan(
                metrics,
                expvar,
                Arc::new(registry()),
                Arc::new(Expvar::new(Vec::new())),
            )
            .into_iter()
            .map(|(port, r)| (port, r.metrics.is_some(), r.expvar.is_some()))
            .collect()
        };
        // (metrics_port, expvar_port) → listeners (port, /metrics, /debug/vars)
        type Listener = (u16, bool, bool);
        let cases: &[(u16, u16, &[Listener])] = &[
            (5000, 5000, &[(5000, true, true)]),
            (5000, 5001, &[(5000, true, false), (5001, false, true)]),
            (0, 5000, &[(5000, false, true)]),
            (5000, 0, &[(5000, true, false)]),
            (0, 0, &[]),
        ];
        for (metrics, expvar, want) in cases {
            assert_eq!(plan_of(*metrics, *expvar), *want, "{metrics} {expvar}");
        }
    }
}
